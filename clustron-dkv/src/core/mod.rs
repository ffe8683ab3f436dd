//! The node's sans-IO protocol logic: deterministic, no clock, no I/O, no
//! randomness; the driver feeds it time and messages and performs its
//! outputs.
//!
//! - [`leases`]: the leader's lease clock: expiry becomes a proposed revoke.
//! - [`mvcc`]: the replicated state machine, a multi-version key-value store.
//! - [`watch`]: which watchers get which changes, from which revision.

pub mod leases;
pub mod mvcc;
pub mod watch;
