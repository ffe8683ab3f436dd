//! Gossip membership and failure detection for Clustron: SWIM with the
//! Lifeguard extensions, as a sans-IO core ([`core::Core`]) and a tokio
//! driver ([`Membership`]) over `clustron-transport`.
//!
//! What it owns: who is in the cluster (name, address, priority, voter role,
//! tags, incarnation, state), failure detection, join through seeds, graceful
//! leave, and a stream of changes. What it does not: deciding anything on
//! behalf of the cluster. Gossip may suggest, never decide; leader election
//! and voter sets live in `clustron-election`.
//!
//! Timing defaults and the reasoning behind them are on [`Config::lan`];
//! the protocol is summarised in [`core`].
//!
//! # Example
//!
//! ```
//! use clustron_membership::{Membership, Options};
//! use clustron_transport::{CertRequest, CertificateAuthority, Endpoint, TlsIdentity, TransportConfig};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
//! runtime.block_on(async {
//!     let ca = CertificateAuthority::generate("example")?;
//!     let endpoint = |name: &str| -> Result<Endpoint, Box<dyn std::error::Error>> {
//!         let cert = ca.issue(&CertRequest::node(name)?)?;
//!         let identity = TlsIdentity::from_certified(ca.cert_pem(), &cert)?;
//!         Ok(Endpoint::bind(TransportConfig::new("127.0.0.1:0".parse()?), identity)?)
//!     };
//!     let (a, b) = (endpoint("a")?, endpoint("b")?);
//!     // `a` forms a cluster; `b` joins through it.
//!     let first = Membership::start(&a, Options::default()).await?;
//!     let options = Options { seeds: vec![a.local_addr()], ..Options::default() };
//!     let second = Membership::start(&b, options).await?;
//!     assert_eq!(second.members().await?.len(), 2);
//!     second.leave().await?;
//!     first.shutdown().await;
//!     Ok(())
//! })
//! # }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod core;
mod driver;
pub mod error;
pub mod member;

pub use self::core::{Health, Output};
pub use config::{Config, ConfigError};
pub use driver::{Membership, Notification, Options, Subscription, Swim, Verdicts};
pub use error::Error;
pub use member::{Epoch, Incarnation, Member, MemberEvent, MemberState, NodeName};
