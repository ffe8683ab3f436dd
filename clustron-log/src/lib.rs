//! Clustron's replicated log: a durable, replicated state machine that any
//! product can run on the platform's election.
//!
//! The product writes a [`StateMachine`] (apply a committed entry, take a
//! snapshot, restore from one); the log replicates its entries from the
//! election's leader to the voters, commits each on a majority's fsyncs,
//! applies it on every node in the same order, and answers the proposer
//! with the result. What it owns:
//!
//! - [`core::replication`]: the sans-IO replica (view change of a new
//!   leader, pipelined batches, the commit rule, fencing by epoch);
//! - [`core::machine`]: the replica and the state machine as one sans-IO
//!   core;
//! - [`wal`]: the segmented, checksummed write-ahead log and its
//!   high-water mark; [`snapshot`]: snapshot files; [`transfer`]: snapshots
//!   pulled by replicas too far behind;
//! - [`io`]: the driver side shared by every product (performing the
//!   replica's outputs with group commit, the election's promise hook and
//!   events, the `LOG` transport channel, the snapshot schedule);
//! - [`driver`]: the generic tokio driver and its handle, [`Log`].
//!
//! - [`voters`]: voter changes as an operator asks for them (what is
//!   refused, replica status); the change itself is the election's, and
//!   the log adopts every decided set in step.
//!
//! What it does not (yet): serve linearizable reads without a
//! proposal, forward proposals to the leader (the product routes them,
//! e.g. with `clustron_node::ToLeader`), run more than one log per node
//! (one `LOG` channel).
//!
//! # Calling protocol
//!
//! 1. [`Log::open`] the data folder before the node starts, and give the
//!    node's election its hook ([`OpenLog::elect`]): every grant then
//!    carries the durable log's summary and fences the log.
//! 2. Start the node, then [`Log::start`] with the state machine.
//! 3. [`Log::propose`] on the leader: the answer is the result of applying
//!    the entry, after it is committed. Anywhere else the error is
//!    [`Error::NotLeader`] with the leader to use.
//!
//! # Example: a replicated counter on one node
//!
//! ```
//! use clustron_log::{Log, LogConfig, StateMachine};
//! use clustron_node::{transport::CertificateAuthority, Elect, Node};
//!
//! #[derive(Default)]
//! struct Counter(u64);
//!
//! impl StateMachine for Counter {
//!     type Output = u64;
//!     type Snapshot = Vec<u8>;
//!     fn apply(&mut self, _index: u64, entry: &[u8]) -> u64 {
//!         self.0 += u64::from(entry[0]); // entries come only from `propose` below
//!         self.0
//!     }
//!     fn snapshot(&self) -> Vec<u8> {
//!         self.0.to_le_bytes().to_vec()
//!     }
//!     fn restore(&mut self, bytes: &[u8]) -> Result<(), String> {
//!         self.0 = u64::from_le_bytes(bytes.try_into().map_err(|_| "not 8 bytes")?);
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let ca = CertificateAuthority::generate("counter")?;
//! let dir = tempfile::tempdir()?;
//! let open = Log::<Counter>::open(dir.path())?;
//! let node = Node::builder(ca.node_identity("n1")?)
//!     .elect(open.elect(Elect::voters(["n1"])?))
//!     .start()
//!     .await?;
//! let log = Log::start(&node, open, Counter::default(), LogConfig::default()).await?;
//! log.wait_for(|s| s.leading).await?;
//! assert_eq!(log.propose(vec![2]).await?, 2);
//! assert_eq!(log.propose(vec![3]).await?, 5);
//! assert_eq!(log.read(|c| c.0).await?, 5);
//! node.kill().await;
//! # Ok(())
//! # }
//! ```
//!
//! # Example: the replica driven by hand
//!
//! Three replicas on a perfect network: `n0` is told it won epoch 1 (by
//! the election, in a real node), a proposal is replicated, and every
//! replica reports it committed.
//!
//! ```
//! use std::net::SocketAddr;
//! use std::time::Instant;
//!
//! use clustron_log::core::{Config, Output, Recovered, Replica};
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
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod core;
pub mod driver;
mod error;
pub mod io;
pub mod snapshot;
pub mod transfer;
pub mod voters;
pub mod wal;

pub use crate::core::machine::StateMachine;
pub use crate::core::SnapshotData;
pub use driver::{Log, LogConfig, Status};
pub use error::{Error, StartError};
pub use io::{OpenLog, SnapshotSchedule};
