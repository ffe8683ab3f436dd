//! Sans-IO protocol cores of the DKV node. Today: [`replication`], the
//! replicated log that the key-value state machine will sit on.
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
//! Nothing here does I/O, reads a clock or draws randomness: time comes in
//! as arguments, and a run replays exactly.
//!
//! The crate documentation (`clustron_dkv`) has a doc-tested example: three
//! replicas driven by hand, one proposal committed everywhere. (It lives
//! there because a core file may not mention the clock, even in a doc
//! example.)

pub mod replication;

pub use replication::{
    Config, ConfigError, Entry, EntryKind, Message, Output, ProposeError, Recovered, Replica,
    Summary,
};
