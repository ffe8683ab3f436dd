//! Leader election for Clustron: the bully rule chooses the candidate (the
//! highest-priority live voter), majority leases make it safe.
//!
//! What it owns: epochs, voters' promises, the leader's lease, fencing,
//! handover to a returning higher-priority voter, and one-at-a-time changes
//! of the voter set. What it does not: failure detection (it takes the
//! membership view as an input, [`Core::set_view`]), networking, clocks and
//! disks: [`Core`] is a sans-IO state machine; a driver performs its
//! [`Output`]s in order (persist, then send) and feeds it time.
//!
//! [`Election`] is that driver for a node: one tokio task owning the core,
//! fed by the node's [`clustron_membership::Membership`] view and the
//! transport's `ELECTION` channel, persisting promises with any [`Storage`]
//! ([`FileStorage`]: fsync + atomic replace; [`MemStorage`] when no
//! directory is given) before any grant leaves. Its handle gives
//! `leader()` / `leader_info()` (with the leader's address), `lease()`,
//! `leads(epoch)`, `subscribe()` (a lag-reporting [`Subscription`]),
//! `step_down()`, `transfer_to()`, `set_summary()`, voter changes, and
//! `withdraw()` / `rejoin()` for a node that cannot do its job (it then
//! neither votes nor leads, and says so in membership).
//!
//! [`ToLeader`] sends a product's requests to whichever node leads, stamped
//! with its epoch, with a per-attempt timeout, an overall deadline and
//! retries of what provably never left; [`route`] states the rules a
//! product follows (fencing by epoch, refusing only what was not done,
//! idempotence for anything retried after a timeout).
//!
//! A node's election **priority** is set in membership
//! ([`clustron_membership::Options::priority`]), because every node must
//! see it; `clustron-node`'s builder takes it with the election settings.
//!
//! To run it on a real node, `clustron-node` assembles transport,
//! membership, election and event bus in the right order; the example
//! below drives the sans-IO core by hand instead.
//!
//! The rules and their safety argument are in [`core`]; the lease arithmetic
//! is in [`core::lease`]; timing defaults and their reasoning on
//! [`Config::lan`].
//!
//! # Example
//!
//! Three voters driven by hand: `a` (highest priority) campaigns, `b` and `c`
//! grant, and `a` is elected with the majority's summaries.
//!
//! ```
//! use std::net::SocketAddr;
//! use std::time::{Duration, Instant};
//!
//! use clustron_election::{Config, Core, Message, NodeName, Output, Peer, Persisted, Voter, VoterSet};
//!
//! let names = ["a", "b", "c"];
//! let addr = |i: usize| SocketAddr::from(([127, 0, 0, 1], 7000 + i as u16));
//! let name = |i: usize| NodeName::new(names[i]).unwrap();
//! let voters = VoterSet::new((0..3).map(|i| Voter { name: name(i), addr: addr(i) }));
//! let peers: Vec<Peer> = (0..3)
//!     .map(|i| Peer { name: name(i), addr: addr(i), priority: 10 - i as u32, voter: true, behind: false, suspect: false })
//!     .collect();
//! let now = Instant::now();
//! let mut cores: Vec<Core> = (0..3)
//!     .map(|i| {
//!         let mut core = Core::new(Config::lan(), name(i), 10 - i as u32, voters.clone(),
//!             Persisted::default(), i as u64, now);
//!         core.set_summary(vec![i as u8]);
//!         core
//!     })
//!     .collect();
//! for core in &mut cores {
//!     core.set_view(now, peers.clone());
//! }
//! // A node listens for one renewal interval after its first view.
//! let now = now + Config::lan().renew_interval;
//! for core in &mut cores {
//!     core.handle_timeout(now);
//! }
//! // Deliver messages until nothing is left (a perfect network).
//! let mut elected = None;
//! let mut queue: Vec<(usize, SocketAddr, Message)> = Vec::new();
//! loop {
//!     for (i, core) in cores.iter_mut().enumerate() {
//!         while let Some(output) = core.poll_output() {
//!             match output {
//!                 // A real driver fsyncs here, before the sends that follow.
//!                 Output::Persist(_) | Output::PersistVoters(_) => {}
//!                 Output::Send { to, msg } => queue.push((i, to, msg)),
//!                 Output::Elected { epoch, summaries } => elected = Some((i, epoch, summaries)),
//!                 _ => {}
//!             }
//!         }
//!     }
//!     let Some((from, to, msg)) = queue.pop() else { break };
//!     let to = (to.port() - 7000) as usize;
//!     cores[to].handle_message(now + Duration::from_millis(1), addr(from), msg);
//! }
//! let (winner, epoch, summaries) = elected.expect("a is elected");
//! assert_eq!(winner, 0);
//! assert!(summaries.len() >= 2);
//! assert_eq!(cores[0].lease().map(|(e, _)| e), Some(epoch));
//! assert_eq!(cores[1].leader(), Some((name(0), epoch)));
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod core;
mod driver;
pub mod error;
pub mod route;
pub mod storage;
pub mod voters;

pub use self::core::{Core, Message, Output, Peer, BEHIND_TAG, WITHDRAWN_TAG};
pub use clustron_membership::NodeName;
pub use config::{Config, ConfigError};
pub use driver::{
    DriverError, Elect, Election, FileStorage, Leader, LeadershipEvent, Notification, Options,
    PromiseHook, Subscription,
};
pub use error::Error;
pub use route::{RetryPolicy, RouteError, Routed, ToLeader};
pub use storage::{MemStorage, Persisted, Promise, Storage, VoterRecord};
pub use voters::{Epoch, Voter, VoterSet};
