//! The cluster event bus for Clustron.
//!
//! What it owns: cluster-wide **user events** (topic + payload) published on
//! any node and delivered to every live member at least once, in per-origin
//! order, without duplicates, with a Lamport time, and caught up from a
//! bounded buffer after a partition ([`core`], sans-IO); typed [`Event`]s
//! (membership, leadership, user) with filtered local subscriptions that are
//! told when they lag; and the **topology stream** for clients: a snapshot
//! with a version, then deltas with increasing versions, resumable by version
//! ([`EventBus::watch_topology`]). [`EventBus`] drives it all in one tokio task.
//!
//! It depends on membership, not on the election: leaders come in through a
//! [`LeaderFeed`] (`clustron_election::Election::leader_feed`), so a product
//! that runs no election does not compile one. `clustron-node` wires the
//! two together.
//!
//! # Example
//!
//! Two nodes driven by hand: `a` publishes, `b` delivers.
//!
//! ```
//! use std::net::SocketAddr;
//! use std::time::Instant;
//!
//! use clustron_events::core::{Config, Core, Output};
//! use clustron_membership::NodeName;
//!
//! let now = Instant::now();
//! let (a_name, b_name) = (NodeName::new("a").unwrap(), NodeName::new("b").unwrap());
//! let (a_addr, b_addr): (SocketAddr, SocketAddr) = ("127.0.0.1:1".parse().unwrap(), "127.0.0.1:2".parse().unwrap());
//! let mut a = Core::new(Config::default(), a_name.clone(), 1, now);
//! let mut b = Core::new(Config::default(), b_name.clone(), 2, now);
//! a.set_members([(a_name, a_addr), (b_name, b_addr)]);
//!
//! a.publish("deploys".into(), b"v42".to_vec()).unwrap();
//! while let Some(output) = a.poll_output() {
//!     if let Output::Send { to, msg } = output {
//!         assert_eq!(to, b_addr);
//!         b.handle_message(now, a_addr, msg);
//!     }
//! }
//! match b.poll_output() {
//!     Some(Output::Deliver(event)) => assert_eq!((event.topic.as_str(), event.payload.as_slice()), ("deploys", &b"v42"[..])),
//!     other => panic!("expected a delivery, got {other:?}"),
//! }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod bus;
pub mod core;

pub use bus::{
    BusError, Event, EventBus, Events, Filter, LeaderFeed, Received, Subscription, Topology,
    TopologyChange, TopologyUpdate, TopologyWatch,
};
pub use clustron_membership::{Epoch, NodeName};
