//! Runnable examples of products built on the Clustron platform crates
//! (`clustron-node` and the layers it re-exports, and `clustron-log`), one file each in this
//! folder:
//!
//! - `membership.rs`: three nodes, membership only; prints joins, a
//!   graceful leave and a failure.
//! - `leader_service.rs`: membership + election; a service only the leader
//!   runs, reached through `ToLeader`, surviving the leader's death.
//! - `user_events.rs`: membership + event bus; cluster-wide user events.
//! - `work_queue.rs`: a small replicated work queue on membership +
//!   election (best effort: not durable).
//! - `replicated_counter.rs`: a counter as a `clustron-log` state machine;
//!   nothing acknowledged is lost when the leader dies.
//!
//! Run one with `cargo run -p clustron-examples --example NAME`; each exits
//! by itself. `tests/smoke.rs` runs every one once with a deadline. This
//! library is empty: a package needs a target besides its examples.
