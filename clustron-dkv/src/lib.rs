//! Clustron DKV node: the `clustron-dkv` binary's building blocks.
//!
//! Today a node runs the platform layers (transport, membership, election,
//! event bus) with an admin HTTP port; the replicated key-value store comes
//! next. What it owns: configuration (TOML + `CLUSTRON_*` + flags), starting
//! and stopping a node, the admin endpoints, and `dev` clusters. The store
//! is a product of `clustron-log`: its sans-IO server ([`core::server`])
//! is a `clustron_log::core::ReplicatedCore` over the log's replica, and its
//! driver ([`kv_driver`]) runs on the log's shared I/O (`clustron_log::io`).
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
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "server")]
pub mod access;
#[cfg(feature = "server")]
mod admin;
pub mod cache;
#[cfg(feature = "server")]
pub mod config;
#[cfg(feature = "server")]
pub mod core;
pub mod kv;
#[cfg(feature = "server")]
pub mod kv_driver;
mod nesting;
#[cfg(feature = "server")]
pub mod node;
pub mod proto;
#[cfg(feature = "server")]
mod serve;
