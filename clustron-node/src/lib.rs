//! Assembles a Clustron node from the platform layers a product needs, in
//! the one order that works, and stops it in the one order that is
//! graceful.
//!
//! ```text
//!  product: open its own storage (a node that cannot must exit here, before joining)
//!  NodeBuilder::bind ──► Endpoint (one UDP port, mutual TLS)
//!      Bound::endpoint().register::<Product>()   ◄── the product's channels, before anyone can call
//!  Bound::start ──► Membership::start (join through the seeds)
//!               ──► Election::start   (if .elect(..): voters by name, addresses from membership;
//!               │                      priority and voter flag set in membership first;
//!               │                      the product's PromiseHook from the first grant)
//!               └─► EventBus::start   (if .events(..): leaders from the election's feed)
//!  Node::leave  ──► step down + wait for the successor ──► stop election ──► stop bus
//!               ──► leave membership (others see "left") ──► close the port
//!  Node::kill   ──► everything stops at once (tests of failure)
//! ```
//!
//! What it owns: that order, and nothing else. Each layer keeps its own
//! API ([`Node::endpoint`], [`Node::membership`], [`Node::election`],
//! [`Node::events`]); this crate re-exports the layer crates
//! ([`transport`], [`membership`], [`election`], [`events`]), so a product
//! can depend on it alone. What it does not: run the product's own state
//! machine, or a replicated log (that is `clustron-log`, one layer up).
//!
//! Features: `election` and `events` (both on by default) compile those
//! layers in; `certs` enables the transport's certificate generation
//! (`CertificateAuthority`, for examples, tests and dev tools).
//!
//! # Example
//!
//! Two nodes on loopback; `a` is the only voter and leads.
//!
//! ```
//! use std::time::Duration;
//!
//! use clustron_node::{Elect, Node};
//! use clustron_transport::CertificateAuthority;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
//! runtime.block_on(async {
//!     let ca = CertificateAuthority::generate("example")?;
//!     let a = Node::builder(ca.node_identity("a")?)
//!         .elect(Elect::voters(["a"])?)
//!         .start()
//!         .await?;
//!     let b = Node::builder(ca.node_identity("b")?)
//!         .seeds([a.local_addr()])
//!         .elect(Elect::voters(["a"])?)
//!         .start()
//!         .await?;
//!     let election = b.election().ok_or("b runs the election")?;
//!     let leader = election.wait_for_leader(Duration::from_secs(10)).await.ok_or("no leader")?;
//!     assert_eq!(leader.name.as_str(), "a");
//!     assert_eq!(leader.addr, Some(a.local_addr()));
//!     b.leave().await;
//!     a.leave().await;
//!     Ok(())
//! })
//! # }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod builder;
mod error;
mod node;

#[cfg(feature = "election")]
pub use builder::Elect;
pub use builder::{Bound, NodeBuilder};
pub use error::NodeError;
pub use node::{Node, HANDOVER_WAIT, LEAVE_WAIT};

#[cfg(feature = "election")]
pub use clustron_election as election;
#[cfg(feature = "events")]
pub use clustron_events as events;
pub use clustron_membership as membership;
pub use clustron_membership::NodeName;
pub use clustron_transport as transport;
