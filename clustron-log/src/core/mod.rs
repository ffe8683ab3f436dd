//! The replicated log's sans-IO protocol logic: deterministic, no clock
//! reads, no I/O, no randomness; time comes in as arguments, and a run
//! replays exactly.
//!
//! - [`replication`]: the replica, which replicates opaque entries from the
//!   election's leader and decides when they are committed.
//! - [`machine`]: a replica and a product's [`StateMachine`](machine::StateMachine)
//!   as one core: proposals answered with the result of applying them.
//! - [`ReplicatedCore`]: what the shared driver parts ([`crate::io`]) drive,
//!   implemented by [`machine::Machine`] and by a product's own server
//!   (DKV's key-value server).
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
//!        PullSnapshot / ResetLog                     ▼
//!  Summary(bytes) ──► election.set_summary(bytes);  CannotLead ──► election.step_down(now)
//! ```
//!
//! The crate documentation (`clustron_log`) has a doc-tested example of the
//! replicated log: three replicas driven by hand, one proposal committed
//! everywhere. (It lives there because a core file may not mention the
//! clock, even in a doc example.)

use std::net::SocketAddr;
use std::time::Instant;

use clustron_election::NodeName;

pub mod machine;
pub mod replication;

pub use replication::{
    Config, ConfigError, Entry, EntryKind, Message, Output, ProposeError, Recovered, Replica,
    SnapshotMeta, Summary,
};

/// A snapshot's state, serialised off the write path: the core hands a
/// consistent copy (taken between two inputs) to the driver, which turns
/// it into bytes on a blocking thread. A small state is simply its bytes
/// (`Vec<u8>`); a large one is a cheap copy (a persistent map, an `Arc`)
/// whose `into_bytes` does the expensive part.
pub trait SnapshotData: Send + 'static {
    /// The bytes to write into the snapshot file.
    fn into_bytes(self) -> Vec<u8>;

    /// Writes the same bytes into a snapshot file as they are produced. The
    /// default writes [`SnapshotData::into_bytes`]; a large state encodes
    /// straight into `out` instead, so that its encoding is never held
    /// whole in memory (nor paid for in fresh pages on every snapshot).
    fn write_into(self, out: &mut crate::snapshot::StateWriter)
    where
        Self: Sized,
    {
        out.extend(&self.into_bytes());
    }
}

impl SnapshotData for Vec<u8> {
    fn into_bytes(self) -> Vec<u8> {
        self
    }
}

/// A sans-IO core built on a [`Replica`]: what the driver parts in
/// [`crate::io`] feed with the election's decisions, replication messages,
/// time and snapshots. [`machine::Machine`] is the generic one; a product
/// with more to do per entry (DKV's server: watches, leases, sessions)
/// implements it on its own core and reuses the whole driver side.
///
/// Every method is a plain input as on [`Replica`]; outputs are drained by
/// the core's owner, which passes the replica's [`Output`]s to
/// [`crate::io::LogIo::perform`] in order.
pub trait ReplicatedCore {
    /// A consistent copy of the state machine for a snapshot.
    type Snapshot: SnapshotData;
    /// A snapshot's state decoded (off the driver's task) and ready to install.
    type State: Send + 'static;

    /// The replica inside.
    fn replica(&self) -> &Replica;
    /// Highest log index applied to the state machine.
    fn applied(&self) -> u64;
    /// The election persisted a promise for `epoch` ([`Replica::fence`]).
    fn fence(&mut self, epoch: u64);
    /// This node won `epoch` with the granting majority's summaries; its
    /// election lease runs until `lease_until`.
    fn elected(
        &mut self,
        now: Instant,
        epoch: u64,
        summaries: Vec<(NodeName, Vec<u8>)>,
        lease_until: Instant,
    );
    /// Another node leads `epoch` ([`Replica::follow`]).
    fn follow(&mut self, now: Instant, leader: NodeName, addr: SocketAddr, epoch: u64);
    /// This node stopped leading `epoch` ([`Replica::step_down`]).
    fn step_down(&mut self, epoch: u64);
    /// No leader is known ([`Replica::forget_leader`]).
    fn forget_leader(&mut self);
    /// Voter `name` is at `addr` ([`Replica::set_voter_addr`]).
    fn set_voter_addr(&mut self, name: &NodeName, addr: SocketAddr);
    /// The non-voters that should receive the log (alive ones).
    fn set_learners(&mut self, learners: Vec<(NodeName, SocketAddr)>);
    /// The election decided a new voter set ([`Replica::set_voters`]).
    fn set_voters(&mut self, voters: Vec<(NodeName, SocketAddr)>);
    /// A replication message from a peer.
    fn handle_message(&mut self, now: Instant, from: SocketAddr, msg: Message);
    /// The deadline from [`ReplicatedCore::poll_timeout`] passed.
    fn handle_timeout(&mut self, now: Instant);
    /// When to call [`ReplicatedCore::handle_timeout`].
    fn poll_timeout(&self) -> Option<Instant>;
    /// The state machine at the applied index and what it covers.
    fn snapshot(&self) -> (SnapshotMeta, Self::Snapshot);
    /// A snapshot covering `upto` is durable: forget the log it covers.
    fn compact_log(&mut self, upto: u64);
    /// A snapshot file of `file_len` bytes covering `index` is durable and
    /// served to peers ([`Replica::snapshot_saved`]).
    fn snapshot_saved(&mut self, index: u64, file_len: u64);
    /// Decodes a snapshot's bytes (called off the driver's task).
    fn decode_state(bytes: &[u8]) -> Result<Self::State, String>;
    /// At start, before any input: the state machine is `state`, the one
    /// the recovered log continues after.
    fn restore(&mut self, state: Self::State);
    /// A snapshot pulled from a peer (after [`Output::PullSnapshot`]) is
    /// durable: install it. False if nothing changed (not ahead).
    fn install_snapshot(&mut self, now: Instant, meta: SnapshotMeta, state: Self::State) -> bool;
    /// The pull asked for by the last [`Output::PullSnapshot`] failed
    /// ([`Replica::pull_failed`]).
    fn pull_failed(&mut self);
}
