//! The DKV node's sans-IO protocol logic: deterministic, no clock reads, no
//! I/O, no randomness; time comes in as arguments, and a run replays
//! exactly.
//!
//! - [`replication`]: the replicated log under the store.
//! - [`mvcc`]: the replicated state machine, a multi-version key-value store.
//! - [`watch`]: which watchers get which changes, from which revision.
//! - [`server`]: all of the above as one node's key-value server.
//! - [`leases`]: the leader's lease clock: expiry becomes a proposed revoke.
//! - [`session`]: client sessions, so a retried write applies exactly once.
//!
//! How the replica sits between the election core and its driver:
//!
//! ```text
//!  election core (outside)                       driver (async task, or the simulator)
//!  ───────────────────────                       ────────────────────────────────
//!  Persist(promise)        ──► replica.fence(epoch)
//!  Elected{epoch, summaries}──► replica.become_leader(now, epoch, summaries)
//!  Leader{name, epoch}     ──► replica.follow(now, name, addr, epoch)
//!  SteppedDown{epoch}      ──► replica.step_down(epoch)
//!  LeaderLost              ──► replica.forget_leader()
//!                                  │
//!  handle_message(now, from, msg) ─┤          ┌──────────────┐
//!  handle_timeout(now) ────────────┼────────► │   Replica    │── poll_timeout()
//!  propose(now, payload) ──────────┘          └──────────────┘
//!                                                    │ poll_output(), in order
//!        SaveEpoch / Truncate / Append (write) ◄─────┤
//!        Sync (fsync everything written above) ◄─────┤
//!        Send { to, msg }  (only after the Sync) ◄───┤
//!        Committed { upto } / Summary(bytes) / CannotLead
//!                                                    ▼
//!  Summary(bytes) ──► election.set_summary(bytes);  CannotLead ──► election.step_down(now)
//! ```
//!
//! The crate documentation (`clustron_dkv`) has a doc-tested example of the
//! replicated log: three replicas driven by hand, one proposal committed
//! everywhere. (It lives there because a core file may not mention the
//! clock, even in a doc example.)

pub mod leases;
pub mod mvcc;
pub mod replication;
pub mod server;
pub mod session;
pub mod watch;

pub use replication::{
    Config, ConfigError, Entry, EntryKind, Message, Output, ProposeError, Recovered, Replica,
    SnapshotMeta, Summary,
};
