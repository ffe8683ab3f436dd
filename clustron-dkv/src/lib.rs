//! Clustron DKV node: the `clustron-dkv` binary's building blocks.
//!
//! Today a node runs the platform layers (transport, membership, election,
//! event bus) with an admin HTTP port; the replicated key-value store comes
//! next. What it owns: configuration (TOML + `CLUSTRON_*` + flags), starting
//! and stopping a node, the admin endpoints, and `dev` clusters. The store's
//! first piece is [`core::replication`]: the sans-IO replicated log (not yet
//! wired into the node), which follows the election's leader, adopts the
//! most up-to-date log at each new epoch, replicates pipelined batches to
//! voters and learners, and commits on a majority of voters.
//!
//! Without the default `server` feature the crate is just [`proto`], the
//! client protocol types that `clustron-client` builds on.
//!
//! # Example
//!
//! ```
//! # #[cfg(feature = "server")] {
//! use clustron_dkv::config::{FileConfig, NodeConfig};
//!
//! let file: FileConfig = toml::from_str(r#"
//!     name = "n1"
//!     listen = "127.0.0.1:7401"
//!     data_dir = "/var/lib/clustron"
//!     ca_file = "ca.pem"
//!     cert_file = "n1.pem"
//!     key_file = "n1.key"
//! "#).unwrap();
//! let flags = FileConfig { priority: Some(10), ..FileConfig::default() };
//! let config = NodeConfig::resolve(flags, file).unwrap();
//! assert_eq!((config.name.as_str(), config.priority), ("n1", 10));
//! # }
//! ```
//!
//! # Example: the replicated log
//!
//! Three replicas on a perfect network, driven by hand: `n0` is told it won
//! epoch 1 (by the election, in a real node), a proposal is replicated, and
//! every replica reports it committed.
//!
//! ```
//! # #[cfg(feature = "server")] {
//! use std::net::SocketAddr;
//! use std::time::Instant;
//!
//! use clustron_dkv::core::{Config, Output, Recovered, Replica};
//! use clustron_election::NodeName;
//!
//! let name = |i: usize| NodeName::new(format!("n{i}")).unwrap();
//! let addr = |i: usize| SocketAddr::from(([127, 0, 0, 1], 7000 + i as u16));
//! let voters: Vec<_> = (0..3).map(|i| (name(i), addr(i))).collect();
//! let now = Instant::now();
//! let mut replicas: Vec<Replica> = (0..3)
//!     .map(|i| Replica::new(Config::lan(), name(i), voters.clone(), [], Recovered::default(), now))
//!     .collect();
//! replicas[0].fence(1); // the election persisted its own promise for epoch 1
//! replicas[0].become_leader(now, 1, vec![]);
//! let index = replicas[0].propose(now, b"hello".to_vec()).unwrap();
//!
//! let mut committed = [0u64; 3];
//! loop {
//!     let mut sent = Vec::new();
//!     for (i, replica) in replicas.iter_mut().enumerate() {
//!         while let Some(output) = replica.poll_output() {
//!             match output {
//!                 // A real driver writes these to its log and fsyncs at `Sync`,
//!                 // before performing any later output.
//!                 Output::SaveEpoch(_) | Output::Truncate { .. } | Output::Append(_) | Output::Sync => {}
//!                 Output::Send { to, msg } => sent.push((addr(i), to, msg)),
//!                 Output::Committed { upto } => committed[i] = upto,
//!                 // Hand summaries to the election; step it down on CannotLead.
//!                 Output::Summary(_) | Output::CannotLead { .. } => {}
//!                 // Only after a compaction: fetch a peer's snapshot, reset the log.
//!                 Output::PullSnapshot { .. } | Output::ResetLog { .. } => {}
//!             }
//!         }
//!     }
//!     if sent.is_empty() {
//!         break;
//!     }
//!     for (from, to, msg) in sent {
//!         replicas[(to.port() - 7000) as usize].handle_message(now, from, msg);
//!     }
//! }
//! assert_eq!(committed, [index; 3]);
//! assert_eq!(replicas[2].entry(index).unwrap().payload, b"hello");
//! # }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "server")]
pub mod access;
#[cfg(feature = "server")]
mod admin;
#[cfg(feature = "server")]
pub mod config;
#[cfg(feature = "server")]
pub mod core;
pub mod kv;
#[cfg(feature = "server")]
pub mod kv_driver;
#[cfg(feature = "server")]
pub mod node;
pub mod proto;
#[cfg(feature = "server")]
mod serve;
#[cfg(feature = "server")]
pub mod snapshot;
#[cfg(feature = "server")]
pub mod transfer;
#[cfg(feature = "server")]
pub mod wal;
