//! The replicated log: a sans-IO state machine that replicates opaque
//! entries from the election's leader to the voters and learners, and
//! decides when an entry is committed.
//!
//! What it owns: the log (`(epoch, index)`-tagged entries), the view change
//! of a new leader (adopt the most up-to-date log among the granting
//! majority before serving), pipelined and batched replication with
//! retransmission, the commit rule, and fencing by epoch. What it does not:
//! choosing the leader (the election core does, and the driver passes its
//! outputs in: [`Replica::fence`], [`Replica::become_leader`],
//! [`Replica::follow`], [`Replica::step_down`]), the disk (it asks for
//! writes and syncs as [`Output`]s), networking and clocks.
//!
//! # Calling protocol
//!
//! After any input (a message, a timeout, a command), drain
//! [`Replica::poll_output`] until `None` and perform each output **in
//! order**: `SaveEpoch`, `Truncate` and `Append` write to the log's storage,
//! `Sync` makes every write before it durable (fsync), and only then may the
//! `Send`s after it leave. An ack, a fetch reply and a summary therefore
//! only ever describe durable entries. (A leader's appends to its
//! followers come *before* its `Sync`: they claim nothing about its disk,
//! and the followers' fsyncs then overlap its own.) Then sleep until
//! [`Replica::poll_timeout`] and call [`Replica::handle_timeout`].
//!
//! Proposals and messages that arrive between two drains share one write
//! and one `Sync` (group commit): outputs are built when the queue is
//! drained, not when the input arrives.
//!
//! # Rules and why they are safe
//!
//! 1. **Fencing.** The replica keeps the newest epoch it has seen
//!    ([`Replica::epoch`]), raised by [`Replica::fence`] (the election
//!    persisted a promise for that epoch), by leaders' messages and by
//!    [`Replica::follow`], and persisted (`SaveEpoch`) before any ack that
//!    follows. Appends from an older epoch are ignored. So once a voter
//!    granted epoch `e`, no leader of an older epoch can count its ack
//!    again, even across a restart.
//! 2. **View change.** Each grant of the election carries the voter's
//!    [`Summary`] (`(last_epoch, last_index)` of its *durable* log). An entry
//!    committed in an older epoch is durable on a majority that acked before
//!    fencing, and every granting majority intersects it, so the most
//!    up-to-date log among the grants (by `(last_epoch, last_index)`, as in
//!    Raft's election restriction) holds every committed entry. A new leader
//!    whose own log is behind fetches the missing suffix from that voter
//!    (truncating its own conflicting entries), then appends a no-op entry of
//!    its epoch; only then does it accept [`Replica::propose`]. If the
//!    voter's log now ends before the summary it granted with (it lost
//!    entries since), the new leader truncates nothing and gives up
//!    ([`Output::CannotLead`]).
//! 3. **Log matching.** An append carries `(prev_index, prev_epoch)`; a
//!    replica accepts it only if its entry at `prev_index` has that epoch,
//!    and drops its suffix from the first entry whose epoch differs. A
//!    leader's log only grows within its epoch, so entries with the same
//!    `(epoch, index)` are identical everywhere, with identical prefixes.
//! 4. **Commit.** The leader commits index `n` once a majority of the
//!    **voters** (itself included, after its own `Sync`) hold `n` durably
//!    and the entry at `n` is of the leader's own epoch (Raft §5.4.2: an
//!    older entry is committed only indirectly). Learners receive the log
//!    but never count. Followers learn the commit index from the leader,
//!    capped by what they verified to match it.
//! 5. **Voter changes.** The voter set is the election's: it decides a
//!    change (one voter more or less, accepted durably by a majority of the
//!    old set) and the driver passes every decided set in with
//!    [`Replica::set_voters`], in order with the leadership events. Any
//!    majority of a set and any majority of the set one change away
//!    intersect, and the election never lets sets further apart count at
//!    the same time, so an entry committed under one set is held by a
//!    member of every later leader's granting majority (rule 2 still holds).
//!    A promoted learner keeps its replication progress; a removed voter
//!    stops counting at once.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use clustron_election::NodeName;
use serde::{Deserialize, Serialize};

/// How many replication windows of committed entries a follower must lack
/// to count as behind ([`Replica::behind`]). A follower a window behind is
/// only the pipeline at work: the leader's commit index runs ahead of the
/// batches still in flight. At one window, followers under 1,000 requests
/// in flight flipped behind and back about every two seconds, each flip a
/// membership update gossiped and sent to every client following the
/// topology (issue 13).
pub const BEHIND_WINDOWS: u64 = 4;

/// What an entry carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EntryKind {
    /// A new leader's first entry of its epoch: it lets the leader commit
    /// the entries it adopted (rule 4). Carries no payload; the state
    /// machine skips it.
    Noop,
    /// A proposal: the payload is the layer above's, opaque here.
    Data,
}

/// One log entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Entry {
    /// The epoch of the leader that created it.
    pub epoch: u64,
    /// Its position, from 1.
    pub index: u64,
    /// No-op or data.
    pub kind: EntryKind,
    /// Opaque bytes of the layer above (empty for a no-op).
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

impl Entry {
    /// Rough wire size, for batching.
    fn size(&self) -> usize {
        self.payload.len() + 24
    }
}

/// The point a snapshot of the state machine covers: every entry up to
/// `index` (whose epoch was `epoch`) is in it, and the log continues after
/// it. `(0, 0)` for none.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct SnapshotMeta {
    /// The last log index the snapshot covers.
    pub index: u64,
    /// That entry's epoch.
    pub epoch: u64,
}

/// The position of a log's last entry, as the election's grants carry it
/// (rule 2). Ordered by `(last_epoch, last_index)`: the greater is the more
/// up-to-date log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Summary {
    /// Epoch of the last entry (0 for an empty log).
    pub last_epoch: u64,
    /// Index of the last entry (0 for an empty log).
    pub last_index: u64,
}

impl Summary {
    /// Encoded length: two big-endian `u64`s.
    pub const LEN: usize = 16;

    /// The bytes to hand to the election's `set_summary`.
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(Self::LEN);
        bytes.extend_from_slice(&self.last_epoch.to_be_bytes());
        bytes.extend_from_slice(&self.last_index.to_be_bytes());
        bytes
    }

    /// Reads bytes from [`Summary::encode`]; `None` if they are not exactly
    /// that (a summary from another layer or a corrupt one counts as absent).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let epoch: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
        let index: [u8; 8] = bytes.get(8..16)?.try_into().ok()?;
        (bytes.len() == Self::LEN).then(|| Self {
            last_epoch: u64::from_be_bytes(epoch),
            last_index: u64::from_be_bytes(index),
        })
    }
}

/// The replication protocol's messages. Every message carries the sender's
/// view of the epoch; the sender's identity is the transport's (the `from`
/// address of [`Replica::handle_message`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Leader → replica: entries after `prev_index` (none for a heartbeat)
    /// and the leader's commit index.
    Append {
        /// The leader's epoch.
        epoch: u64,
        /// Index of the entry just before `entries`.
        prev_index: u64,
        /// Epoch of that entry (0 if `prev_index` is 0).
        prev_epoch: u64,
        /// At most [`Config::max_batch_entries`] consecutive entries.
        entries: Vec<Entry>,
        /// The leader's commit index.
        commit: u64,
    },
    /// Replica → leader: "my durable log matches yours up to `match_index`".
    Ack {
        /// The leader's epoch being acknowledged.
        epoch: u64,
        /// Highest index known to match the leader's log, durably.
        match_index: u64,
    },
    /// Replica → leader: "my entry at `prev_index` is missing or of another
    /// epoch"; `hint` is an index below which the leader should retry.
    Nack {
        /// The leader's epoch.
        epoch: u64,
        /// The rejected `prev_index`.
        prev_index: u64,
        /// Retry from `hint + 1`: the replica's last index if its log is
        /// shorter, else the index before its first entry of the
        /// conflicting epoch.
        hint: u64,
    },
    /// New leader → the voter with the most up-to-date log: "send me your
    /// entries from `from_index` to `upto`".
    Fetch {
        /// The new leader's epoch.
        epoch: u64,
        /// First index wanted.
        from_index: u64,
        /// Last index wanted (the voter's summary).
        upto: u64,
    },
    /// Leader → replica (or source → fetching leader): "the entries you
    /// need are compacted into my snapshot at `index`: pull it".
    SnapshotNeeded {
        /// The sender's view of the epoch (the leader's, or the fetch's).
        epoch: u64,
        /// The index the sender's snapshot covers.
        index: u64,
    },
    /// Answer to [`Message::Fetch`].
    FetchReply {
        /// The epoch of the fetch.
        epoch: u64,
        /// Index of the first entry in `entries`.
        from_index: u64,
        /// At most [`Config::max_batch_bytes`] of entries.
        entries: Vec<Entry>,
        /// The sender's last index, capped at the fetch's `upto`.
        last_index: u64,
    },
}

impl Message {
    /// A one-line description for traces: the kind and its indexes,
    /// without the entries.
    pub fn brief(&self) -> String {
        match self {
            Self::Append {
                epoch,
                prev_index,
                entries,
                commit,
                ..
            } => format!(
                "append e{epoch} prev {prev_index} +{} commit {commit}",
                entries.len()
            ),
            Self::Ack { epoch, match_index } => format!("ack e{epoch} {match_index}"),
            Self::Nack {
                epoch,
                prev_index,
                hint,
            } => format!("nack e{epoch} prev {prev_index} hint {hint}"),
            Self::Fetch {
                epoch,
                from_index,
                upto,
            } => format!("fetch e{epoch} {from_index}..={upto}"),
            Self::FetchReply {
                epoch,
                from_index,
                entries,
                last_index,
            } => format!(
                "fetch reply e{epoch} from {from_index} +{} last {last_index}",
                entries.len()
            ),
            Self::SnapshotNeeded { epoch, index } => format!("snapshot needed e{epoch} {index}"),
        }
    }

    /// The epoch the message carries.
    pub fn epoch(&self) -> u64 {
        match self {
            Self::Append { epoch, .. }
            | Self::Ack { epoch, .. }
            | Self::Nack { epoch, .. }
            | Self::Fetch { epoch, .. }
            | Self::SnapshotNeeded { epoch, .. }
            | Self::FetchReply { epoch, .. } => *epoch,
        }
    }
}

/// What the replica asks of its driver, drained with
/// [`Replica::poll_output`] and performed in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Write the newest epoch seen (the fence) to storage.
    SaveEpoch(u64),
    /// Remove every stored entry with index `from` or above.
    Truncate {
        /// First index removed.
        from: u64,
    },
    /// Write these entries after the last stored one (they are consecutive
    /// and follow it).
    Append(Vec<Entry>),
    /// Make every write above durable before performing any later output.
    Sync,
    /// Send `msg` to `to` (loss, duplication and reordering are tolerated).
    Send {
        /// Destination.
        to: SocketAddr,
        /// The message.
        msg: Message,
    },
    /// Entries up to `upto` are committed: apply them in order (read them
    /// with [`Replica::entries`]). Only grows, and never exceeds the durable
    /// log.
    Committed {
        /// Highest committed index.
        upto: u64,
    },
    /// The durable log's [`Summary`] changed: pass these bytes to the
    /// election's `set_summary` so the next grants carry them.
    Summary(Vec<u8>),
    /// The entries this node needs are compacted at `from`: fetch its
    /// newest snapshot (covering at least `index`), restore the state
    /// machine from it, make it durable, then call
    /// [`Replica::install_snapshot`]. Asked again after
    /// [`Config::snapshot_retry`] until installed.
    PullSnapshot {
        /// Who has it.
        from: SocketAddr,
        /// The least index it must cover.
        index: u64,
    },
    /// A snapshot was installed: the stored log must now continue after
    /// `base` (discard every stored entry); the entries to keep follow as
    /// an [`Output::Append`].
    ResetLog {
        /// The snapshot the log continues after.
        base: SnapshotMeta,
    },
    /// This new leader could not fetch the up-to-date log from the voter
    /// that has it for [`Config::fetch_timeout`] (it may be down), or must
    /// first install that voter's snapshot (too slow for a failover): the
    /// driver should step the election down, so another leader (or this
    /// one, with fresh summaries) can take over. The replica keeps trying
    /// meanwhile. Reported at most once per election.
    CannotLead {
        /// The epoch given up.
        epoch: u64,
    },
}

/// What storage kept for a restarting replica.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovered {
    /// The last epoch saved with [`Output::SaveEpoch`] (0 if none).
    pub epoch: u64,
    /// The newest durable snapshot (the state machine is restored from it
    /// by the caller).
    pub snapshot: SnapshotMeta,
    /// The stored entries after the snapshot, consecutive from
    /// `snapshot.index + 1` (entries at or below it are skipped).
    pub entries: Vec<Entry>,
}

/// Why [`Replica::propose`] refused. A refusal changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProposeError {
    /// This node does not lead: propose at `leader` (if known) instead.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The leader this node knows of: its name and address.
        leader: Option<(NodeName, SocketAddr)>,
    },
    /// This node was elected for `epoch` but is still catching up on the log
    /// (rule 2): retry shortly.
    #[error("leader of epoch {epoch} is catching up")]
    NotReady {
        /// The epoch it leads.
        epoch: u64,
    },
    /// The payload is larger than [`Config::max_payload_len`].
    #[error("payload of {len} bytes is above the limit of {max}")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// A configuration the replica cannot run with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The in-flight window must hold at least one batch.
    #[error("max_inflight_entries {inflight} is below max_batch_entries {batch}")]
    WindowBelowBatch {
        /// The window.
        inflight: usize,
        /// The batch.
        batch: usize,
    },
    /// Timers must be positive.
    #[error("{name} must be positive")]
    ZeroDuration {
        /// Which one.
        name: &'static str,
    },
    /// A payload must fit in a batch.
    #[error("max_payload_len {payload} is above max_batch_bytes {batch}")]
    PayloadAboveBatch {
        /// The payload limit.
        payload: usize,
        /// The batch limit.
        batch: usize,
    },
}

/// How the replica is tuned. [`Config::lan`] gives the defaults and why.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// Most entries in one append. Bigger batches mean fewer messages and
    /// syncs per entry under load. (A fetch reply is bounded by
    /// `max_batch_bytes` only: it is not pipelined.)
    pub max_batch_entries: NonZeroUsize,
    /// Most bytes in one append or fetch reply (one entry is always
    /// sent even if larger). Keep it well below the transport's frame limit.
    pub max_batch_bytes: usize,
    /// Pipelining bound: most entries sent to one replica and not yet
    /// acknowledged. At least `max_batch_entries`.
    pub max_inflight_entries: NonZeroUsize,
    /// The leader sends every replica something (entries or a heartbeat
    /// carrying the commit index) at least this often.
    pub heartbeat_interval: Duration,
    /// Entries unacknowledged for this long are sent again, from the first
    /// one the replica has not acknowledged. Also the fetch retry interval.
    pub retransmit_timeout: Duration,
    /// A new leader that cannot fetch the up-to-date log for this long
    /// reports [`Output::CannotLead`].
    pub fetch_timeout: Duration,
    /// Largest payload [`Replica::propose`] accepts, in bytes.
    pub max_payload_len: usize,
    /// A snapshot pull not installed after this long is asked for again.
    pub snapshot_retry: Duration,
    /// Failover bound: how far (in bytes of entries) a voter that kept up
    /// may fall behind the leader before the leader stops taking proposals
    /// ([`Replica::admits`]) until it catches up. After the leader dies, the
    /// next one commits only once a majority holds its log, so this is what
    /// the survivors may have to send each other first.
    pub max_lag_bytes: u64,
    /// Entries kept in memory before a new snapshot's index when the log
    /// is compacted ([`Replica::compaction_point`]), so a replica back after
    /// a short absence catches up from entries instead of a snapshot
    /// transfer (etcd keeps 5,000).
    pub catch_up_entries: u64,
    /// At most this many bytes of them.
    pub catch_up_bytes: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self::lan()
    }
}

impl Config {
    /// LAN defaults:
    ///
    /// - batches of 256 entries or 1 MiB: one fsync covers a whole batch
    ///   (group commit), and 1 MiB is a quarter of the transport's 4 MiB
    ///   frame limit;
    /// - 1024 entries in flight per replica: four batches pipelined, enough
    ///   to cover a LAN round trip plus a follower fsync at high rates while
    ///   bounding what a slow follower costs the leader;
    /// - heartbeat 50 ms: a follower learns the commit index within one
    ///   heartbeat when traffic stops (an idle leader sends 20 small
    ///   messages per second per replica);
    /// - retransmit after 100 ms: far above a LAN round trip plus an fsync
    ///   (a few ms), so it fires on loss, not on slowness;
    /// - fetch timeout 1 s: ten fetch retries; the voter with the up-to-date
    ///   log is then presumed down (election failover is ~0.6 s);
    /// - payloads up to 512 KiB;
    /// - a snapshot pull asked again after 5 s (a transfer that has not
    ///   finished by then has most likely failed);
    /// - voters kept within 4 MiB of the leader: a loaded two-core machine
    ///   moves 10–15 MB/s of log between nodes, so the survivors of a
    ///   leader's death agree within a few hundred milliseconds of being
    ///   elected (without the bound, a voter thousands of large entries
    ///   behind made failover take 2–3 s);
    /// - 5,000 entries (at most 32 MiB) kept before each snapshot's index:
    ///   a replica away for a few seconds (a restart, a pause, a partition)
    ///   catches up from them at the rate its acks allow, instead of
    ///   pulling a whole snapshot first (with large values, a snapshot pull
    ///   plus its tail made a returning voter needed for a majority take
    ///   seconds).
    pub fn lan() -> Self {
        Self {
            max_batch_entries: NonZeroUsize::new(256).unwrap_or(NonZeroUsize::MIN),
            max_batch_bytes: 1 << 20,
            max_inflight_entries: NonZeroUsize::new(1024).unwrap_or(NonZeroUsize::MIN),
            heartbeat_interval: Duration::from_millis(50),
            retransmit_timeout: Duration::from_millis(100),
            fetch_timeout: Duration::from_secs(1),
            max_payload_len: 512 << 10,
            snapshot_retry: Duration::from_secs(5),
            max_lag_bytes: 4 << 20,
            catch_up_entries: 5_000,
            catch_up_bytes: 32 << 20,
        }
    }

    /// Checks the values, returning the configuration or the first problem.
    pub fn validate(self) -> Result<Self, ConfigError> {
        if self.max_inflight_entries < self.max_batch_entries {
            return Err(ConfigError::WindowBelowBatch {
                inflight: self.max_inflight_entries.get(),
                batch: self.max_batch_entries.get(),
            });
        }
        for (name, d) in [
            ("heartbeat_interval", self.heartbeat_interval),
            ("retransmit_timeout", self.retransmit_timeout),
            ("fetch_timeout", self.fetch_timeout),
            ("snapshot_retry", self.snapshot_retry),
        ] {
            if d.is_zero() {
                return Err(ConfigError::ZeroDuration { name });
            }
        }
        if self.max_payload_len > self.max_batch_bytes {
            return Err(ConfigError::PayloadAboveBatch {
                payload: self.max_payload_len,
                batch: self.max_batch_bytes,
            });
        }
        Ok(self)
    }
}

/// The leader's view of one replica.
#[derive(Debug, Clone)]
struct Progress {
    addr: SocketAddr,
    /// Next index to send.
    next: u64,
    /// Highest index the replica acknowledged as durable and matching.
    matched: u64,
    /// Entries up to here are assumed present (not in flight) without an
    /// ack: a new leader's optimistic start, or a nack's hint. The window
    /// counts entries sent after `max(matched, assumed)`.
    assumed: u64,
    /// The commit index last sent to it.
    commit_sent: u64,
    /// When anything was last sent to it.
    last_send: Option<Instant>,
    /// Since when entries sent to it have been waiting for an ack.
    waiting_since: Option<Instant>,
    /// When it last answered (an ack or a nack).
    heard: Option<Instant>,
    /// It came within [`Config::max_lag_bytes`] of the leader and has
    /// answered since: the leader keeps it there ([`Replica::admits`]).
    in_sync: bool,
    /// Not in sync (back from a pause, a partition, a restart): bytes the
    /// leader may still take in while it catches up. A share of what it
    /// acknowledges is added ([`credit_for`]: the further behind, the
    /// smaller), every proposal is taken off, so its lag shrinks while
    /// writes go on.
    credit: u64,
}

#[derive(Debug, Clone)]
enum Role {
    /// Replicates whatever the leader of `epoch` sends.
    Follower {
        leader: Option<(NodeName, SocketAddr)>,
        /// The epoch `matched` refers to.
        epoch: u64,
        /// Highest index verified to match that leader's log.
        matched: u64,
    },
    /// Elected, fetching the up-to-date log from `source` (rule 2).
    Fetching {
        epoch: u64,
        source: SocketAddr,
        next_from: u64,
        upto: u64,
        retry_at: Instant,
        give_up_at: Option<Instant>,
    },
    /// Elected and serving.
    Leader {
        epoch: u64,
        peers: BTreeMap<NodeName, Progress>,
    },
}

/// The replicated log of one node. See the module docs for the calling
/// protocol and the rules.
#[derive(Debug)]
pub struct Replica {
    config: Config,
    me: NodeName,
    voters: BTreeMap<NodeName, SocketAddr>,
    learners: BTreeMap<NodeName, SocketAddr>,
    /// What the newest snapshot covers: the log continues after it.
    base: SnapshotMeta,
    /// Entry `i` is at `log[i - base.index - 1]`.
    log: Vec<Entry>,
    /// The sizes of `log`'s entries (kept in step with it).
    sizes: Sizes,
    /// The newest snapshot this node has durably (it serves it to pulls)
    /// and its file's size: a replica further behind it than a transfer of
    /// the file costs is sent there ([`Replica::snapshot_saved`]).
    served: Option<(u64, u64)>,
    /// A snapshot pull asked for: (index, when, from whom).
    pulling: Option<(u64, Instant, SocketAddr)>,
    /// The stored log must be reset to continue after `base` at the next
    /// flush (a snapshot was installed).
    reset_pending: bool,
    /// The newest epoch seen: the fence (rule 1).
    epoch: u64,
    saved_epoch: u64,
    commit: u64,
    reported_commit: u64,
    /// The last index written to storage (synced at the end of each flush).
    persisted_last: u64,
    /// First index changed in memory since the last flush.
    dirty_from: Option<u64>,
    reported_summary: Option<Summary>,
    role: Role,
    now: Instant,
    /// Follower: the leader to acknowledge at the next flush.
    pending_ack: Option<SocketAddr>,
    /// Sends that must wait for the next sync.
    pending_sends: Vec<(SocketAddr, Message)>,
    /// Follower: appends that arrived before the ones they continue, keyed
    /// by `prev_index` (see [`Replica::hold`]).
    held: BTreeMap<u64, Held>,
    /// Follower holding appends: the gap before them (its end, the first
    /// held `prev_index`), when to ask the leader for it next, and how many
    /// times it was asked already.
    gap: Option<Gap>,
    /// Follower: the newest epoch whose leader we told where our log ends
    /// (an ack or a nack): from then on its appends start where we said.
    reported_epoch: u64,
    /// The highest commit index a leader sent us (whether or not we hold
    /// the entries yet).
    seen_commit: u64,
    /// See [`Replica::behind`].
    behind: bool,
    outputs: VecDeque<Output>,
}

/// The gap before the held appends, and when to ask for it.
#[derive(Debug, Clone, Copy)]
struct Gap {
    end: u64,
    ask_at: Instant,
    asked: u32,
}

/// An append held back until the entries before it arrive.
#[derive(Debug, Clone)]
struct Held {
    from: SocketAddr,
    epoch: u64,
    prev_epoch: u64,
    entries: Vec<Entry>,
    commit: u64,
}

impl Replica {
    /// A replica named `me` among `voters` (every voter, `me` included if it
    /// is one) and `learners`, starting from what storage kept.
    ///
    /// Recovered entries are trusted to be consecutive from index 1 (the
    /// storage layer checks its own integrity); anything after the first gap
    /// is dropped. The commit index starts at 0 and is learned again from
    /// the leader.
    pub fn new(
        config: Config,
        me: NodeName,
        voters: impl IntoIterator<Item = (NodeName, SocketAddr)>,
        learners: impl IntoIterator<Item = (NodeName, SocketAddr)>,
        recovered: Recovered,
        now: Instant,
    ) -> Self {
        let base = recovered.snapshot;
        let mut log: Vec<Entry> = recovered
            .entries
            .into_iter()
            .filter(|e| e.index > base.index)
            .collect();
        let gap = log
            .iter()
            .enumerate()
            .position(|(i, e)| e.index != base.index + i as u64 + 1);
        if let Some(gap) = gap {
            log.truncate(gap);
        }
        let last = base.index + log.len() as u64;
        let epoch = recovered
            .epoch
            .max(base.epoch)
            .max(log.last().map(|e| e.epoch).unwrap_or(0));
        Self {
            config,
            me,
            voters: voters.into_iter().collect(),
            learners: learners.into_iter().collect(),
            base,
            sizes: Sizes::of(&log),
            log,
            served: None,
            pulling: None,
            reset_pending: false,
            epoch,
            saved_epoch: recovered.epoch,
            // What a snapshot covers was committed.
            commit: base.index,
            reported_commit: base.index,
            persisted_last: last,
            dirty_from: None,
            reported_summary: None,
            role: Role::Follower {
                leader: None,
                epoch,
                matched: 0,
            },
            now,
            pending_ack: None,
            pending_sends: Vec::new(),
            held: BTreeMap::new(),
            gap: None,
            reported_epoch: 0,
            seen_commit: 0,
            behind: false,
            outputs: VecDeque::new(),
        }
    }

    // ----- queries ---------------------------------------------------------

    /// This node's name.
    pub fn name(&self) -> &NodeName {
        &self.me
    }

    /// The newest epoch seen (the fence).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The epoch this node leads and serves proposals in, if it does (a
    /// leader still catching up is not counted).
    pub fn leading(&self) -> Option<u64> {
        match self.role {
            Role::Leader { epoch, .. } => Some(epoch),
            _ => None,
        }
    }

    /// The leader this node knows of (`None` when it leads itself or knows
    /// none).
    pub fn leader(&self) -> Option<(NodeName, SocketAddr)> {
        match &self.role {
            Role::Follower { leader, .. } => leader.clone(),
            _ => None,
        }
    }

    /// A one-line account of this replica for diagnostics (a failing
    /// simulation seed prints it): its role and, leading, every replica's
    /// progress; following, the appends it holds past a gap.
    pub fn describe(&self) -> String {
        let held: Vec<(u64, usize)> = self
            .held
            .iter()
            .map(|(prev, h)| (*prev, h.entries.len()))
            .collect();
        format!(
            "{:?} base {} held {held:?} gap {:?}",
            self.role, self.base.index, self.gap
        )
    }

    /// The commit index (reported or about to be reported).
    pub fn commit_index(&self) -> u64 {
        self.commit
    }

    /// The index of the last entry in memory (durable once the pending
    /// outputs are performed).
    pub fn last_index(&self) -> u64 {
        self.base.index + self.log.len() as u64
    }

    /// What the newest snapshot covers: entries up to it are no longer in
    /// the log.
    pub fn snapshot(&self) -> SnapshotMeta {
        self.base
    }

    /// What a snapshot of the state machine applied up to `index` covers:
    /// `index` and its entry's epoch (`index` must be the snapshot point or
    /// a kept entry: one the state machine applied).
    pub fn snapshot_point(&self, index: u64) -> SnapshotMeta {
        SnapshotMeta {
            index,
            epoch: self.epoch_at(index),
        }
    }

    /// The entry at `index`, if present (not compacted into the snapshot).
    pub fn entry(&self, index: u64) -> Option<&Entry> {
        index
            .checked_sub(self.base.index + 1)
            .and_then(|i| self.log.get(usize::try_from(i).ok()?))
    }

    /// The entries from `from` to `to`, both included, as far as present.
    pub fn entries(&self, from: u64, to: u64) -> &[Entry] {
        let len = self.log.len() as u64;
        let start = from.max(self.base.index + 1) - self.base.index - 1;
        let start = start.min(len) as usize;
        let end = to.saturating_sub(self.base.index).min(len) as usize;
        self.log.get(start..end.max(start)).unwrap_or(&[])
    }

    /// The summary of the current log.
    pub fn summary(&self) -> Summary {
        Summary {
            last_epoch: self.log.last().map_or(self.base.epoch, |e| e.epoch),
            last_index: self.last_index(),
        }
    }

    // ----- snapshots ----------------------------------------------------------

    /// The state machine's snapshot covering every entry up to `upto` is
    /// durable: drop those entries from memory. Only committed, durable
    /// entries can be compacted; a larger `upto` is capped. Replicas that
    /// still need them will be told to pull the snapshot.
    pub fn compact(&mut self, upto: u64) {
        let upto = upto.min(self.commit).min(self.persisted_last);
        if upto <= self.base.index {
            return;
        }
        let epoch = self.epoch_at(upto);
        let drop = (upto - self.base.index) as usize;
        self.log.drain(..drop.min(self.log.len()));
        self.sizes.drain_front(drop);
        self.base = SnapshotMeta { index: upto, epoch };
    }

    /// Where to compact to once a snapshot covering `upto` is durable: the
    /// newest [`Config::catch_up_entries`] entries up to it (at most
    /// [`Config::catch_up_bytes`] of them) stay in memory for replicas that
    /// are a little behind. Never below what is compacted already.
    pub fn compaction_point(&self, upto: u64) -> u64 {
        let upto = upto.min(self.last_index());
        let mut point = upto
            .saturating_sub(self.config.catch_up_entries)
            .max(self.base.index);
        let tail = self.bytes_after(upto).unwrap_or(0);
        while point < upto
            && self
                .bytes_after(point)
                .is_some_and(|b| b - tail > self.config.catch_up_bytes)
        {
            point += 1;
        }
        point
    }

    /// A snapshot file of `file_len` bytes covering `index` is durable here
    /// (taken, or pulled and installed) and served to peers' pulls. A
    /// replica that lacks more than twice its size of the entries before
    /// `index` (and more than [`Config::max_lag_bytes`]) is asked to pull it
    /// instead: a compressed snapshot moves many times faster than the
    /// entries it replaces (a voter back from a pause, 40 MB of large
    /// entries behind, caught up from a 5.5 MB snapshot in 0.25 s instead
    /// of seconds of appends). Then the entries after it follow.
    pub fn snapshot_saved(&mut self, index: u64, file_len: u64) {
        if self.served.is_none_or(|(newest, _)| index >= newest) {
            self.served = Some((index, file_len));
        }
    }

    /// Leader: the snapshot `p` must pull before entries reach it, if any:
    /// the newest one when what it needs next is compacted away, or the one
    /// served when the entries up to it cost more to send than its file.
    fn snapshot_for(&self, p: &Progress) -> Option<u64> {
        if p.next <= self.base.index {
            return Some(self.base.index);
        }
        let (index, file_len) = self.served?;
        // From what it holds: entries sent but not acknowledged yet may be
        // a window of megabytes still on their way.
        let holds = p.matched.max(p.assumed);
        if holds >= index {
            return None;
        }
        let missing = self.bytes_after(holds)? - self.bytes_after(index)?;
        (missing > self.config.max_lag_bytes && missing > 2 * file_len).then_some(index)
    }

    /// Leader: whether a fresh snapshot would spare a replica a long
    /// catch-up: one that answers lacks more than four times
    /// [`Config::max_lag_bytes`] of entries (and more than twice the newest
    /// snapshot file), and no snapshot it could pull covers them yet. The
    /// driver then snapshots now (at most so often); the replica is sent
    /// there once it is saved ([`Replica::snapshot_saved`]). A voter 25 MB
    /// behind after a partition took 2.2 s to catch up from entries, and
    /// the next failover waited for it.
    pub fn wants_snapshot(&self) -> bool {
        let Role::Leader { peers, .. } = &self.role else {
            return false;
        };
        let silent_after = 2 * self.config.retransmit_timeout;
        let file_len = self.served.map_or(0, |(_, len)| len);
        let threshold = (4 * self.config.max_lag_bytes).max(2 * file_len);
        peers.values().any(|p| {
            p.heard.is_some_and(|t| self.now < t + silent_after)
                && self.snapshot_for(p).is_none()
                && self
                    .bytes_after(p.matched.max(p.assumed))
                    .is_some_and(|missing| missing > threshold)
        })
    }

    /// A snapshot covering `meta` was pulled, the state machine restored
    /// from it and the snapshot made durable: the log now continues after
    /// it. Entries after it are kept if the log agrees with it at
    /// `meta.index`, else dropped. Returns false (changing nothing) when the
    /// snapshot is not ahead of what this replica has committed.
    pub fn install_snapshot(&mut self, now: Instant, meta: SnapshotMeta) -> bool {
        self.now = now;
        if meta.index <= self.commit || meta.index <= self.base.index {
            return false;
        }
        let keep: Vec<Entry> = match self.entry(meta.index) {
            Some(e) if e.epoch == meta.epoch => self.entries(meta.index + 1, u64::MAX).to_vec(),
            _ => Vec::new(),
        };
        self.base = meta;
        self.sizes = Sizes::of(&keep);
        self.log = keep;
        self.raise_epoch(meta.epoch);
        self.commit = meta.index;
        self.reported_commit = meta.index;
        self.pulling = None;
        self.reset_pending = true;
        self.dirty_from = None;
        match &mut self.role {
            Role::Follower {
                leader, matched, ..
            } => {
                // The snapshot came from the leader and holds committed
                // entries only: they match its log.
                *matched = (*matched).max(meta.index);
                if let Some((_, addr)) = leader {
                    self.pending_ack = Some(*addr);
                }
            }
            Role::Fetching {
                next_from,
                retry_at,
                ..
            } => {
                *next_from = (*next_from).max(meta.index + 1);
                *retry_at = now;
            }
            Role::Leader { .. } => {}
        }
        true
    }

    // ----- commands from the election --------------------------------------

    /// This node persisted a promise for `epoch`: from now on, refuse
    /// appends and acks from older epochs. A leader of an older epoch stops
    /// leading.
    pub fn fence(&mut self, epoch: u64) {
        self.raise_epoch(epoch);
    }

    /// The election made this node leader of `epoch`; `summaries` are the
    /// granting voters' summaries. Ignored if `epoch` is older than the
    /// fence or already led.
    ///
    /// If a granting voter has a more up-to-date log than this node, the
    /// replica first fetches it from that voter; otherwise it appends its
    /// no-op and serves at once ([`Replica::leading`]).
    pub fn become_leader(&mut self, now: Instant, epoch: u64, summaries: Vec<(NodeName, Vec<u8>)>) {
        self.now = now;
        if epoch < self.epoch {
            return;
        }
        match self.role {
            Role::Leader { epoch: e, .. } | Role::Fetching { epoch: e, .. } if e == epoch => return,
            _ => {}
        }
        self.raise_epoch(epoch);
        let mine = self.summary();
        let best = summaries
            .iter()
            .filter(|(name, _)| *name != self.me)
            .filter_map(|(name, bytes)| {
                let addr = self.voters.get(name).or_else(|| self.learners.get(name))?;
                Some((Summary::decode(bytes)?, addr))
            })
            .max_by_key(|(summary, _)| *summary);
        match best {
            Some((summary, &source)) if summary > mine => {
                self.role = Role::Fetching {
                    epoch,
                    source,
                    next_from: self.commit + 1,
                    upto: summary.last_index,
                    retry_at: now,
                    give_up_at: Some(now + self.config.fetch_timeout),
                };
            }
            _ => self.start_leading(epoch),
        }
    }

    /// The election says `leader` (at `addr`) leads `epoch`. Raises the
    /// fence to `epoch`; a node that led an older epoch stops.
    pub fn follow(&mut self, now: Instant, leader: NodeName, addr: SocketAddr, epoch: u64) {
        self.now = now;
        if leader == self.me || epoch < self.epoch {
            return;
        }
        self.raise_epoch(epoch);
        // Leading `epoch` ourselves while the election names another leader
        // of it cannot happen; a leader keeps leading until told to stop.
        if let Role::Follower {
            leader: known,
            epoch: followed,
            matched,
        } = &mut self.role
        {
            if *followed != epoch {
                *followed = epoch;
                *matched = 0;
            }
            *known = Some((leader, addr));
        }
    }

    /// The election stopped this node leading `epoch`: stop leading it (or
    /// any older epoch). Proposals not yet committed may still commit under
    /// the next leader, or be dropped.
    pub fn step_down(&mut self, epoch: u64) {
        let led = match self.role {
            Role::Leader { epoch: e, .. } | Role::Fetching { epoch: e, .. } => e,
            Role::Follower { .. } => return,
        };
        if led <= epoch {
            self.role = Role::Follower {
                leader: None,
                epoch: led,
                matched: 0,
            };
        }
    }

    /// The election no longer knows a leader: forget the hint.
    pub fn forget_leader(&mut self) {
        if let Role::Follower { leader, .. } = &mut self.role {
            *leader = None;
        }
    }

    /// Voter `name` is at `addr` (membership learned where it is: a voter
    /// that was down when this node started has no address until then).
    /// Only where to send changes, not who votes.
    pub fn set_voter_addr(&mut self, name: &NodeName, addr: SocketAddr) {
        let Some(known) = self.voters.get_mut(name) else {
            return;
        };
        let old = std::mem::replace(known, addr);
        match &mut self.role {
            Role::Leader { peers, .. } => {
                if let Some(progress) = peers.get_mut(name) {
                    progress.addr = addr;
                }
            }
            Role::Fetching { source, .. } if *source == old => *source = addr,
            _ => {}
        }
    }

    /// The voter set is now `voters` (a change the election decided; every
    /// voter, `me` included if it is one). From now on commit counts a
    /// majority of these, and only they may lead. A leader keeps what it
    /// knows of a promoted learner's log (it goes on from there), starts
    /// replicating to a new voter it did not know, and stops replicating to
    /// a removed one unless it is also a learner. Other nodes' addresses
    /// already known are kept (membership's are newer than the set's).
    pub fn set_voters(&mut self, voters: impl IntoIterator<Item = (NodeName, SocketAddr)>) {
        let mut voters: BTreeMap<NodeName, SocketAddr> = voters.into_iter().collect();
        for (name, addr) in voters.iter_mut() {
            if let Some(known) = self.voters.get(name).or_else(|| self.learners.get(name)) {
                *addr = *known;
            }
        }
        for name in voters.keys() {
            self.learners.remove(name);
        }
        let next = self.last_index() + 1;
        if let Role::Leader { peers, .. } = &mut self.role {
            peers.retain(|name, _| voters.contains_key(name) || self.learners.contains_key(name));
            for (name, addr) in &voters {
                if *name != self.me && !peers.contains_key(name) {
                    peers.insert(name.clone(), Progress::new(*addr, next));
                }
            }
        }
        self.voters = voters;
    }

    /// The voters' names (this node's included if it is one).
    pub fn voters(&self) -> impl Iterator<Item = &NodeName> {
        self.voters.keys()
    }

    /// The learners' names.
    pub fn learners(&self) -> impl Iterator<Item = &NodeName> {
        self.learners.keys()
    }

    /// On the leader: how far each other replica's log is known to reach
    /// (the highest index it acknowledged as durable and matching ours).
    /// Empty on other nodes, which do not track it.
    pub fn progress(&self) -> Vec<(NodeName, u64)> {
        match &self.role {
            Role::Leader { peers, .. } => peers
                .iter()
                .map(|(name, p)| (name.clone(), p.matched))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Adds (or moves) a learner: it receives the log but never counts for
    /// commit. Every node should be told, so a future leader knows it.
    pub fn add_learner(&mut self, name: NodeName, addr: SocketAddr) {
        if self.voters.contains_key(&name) || name == self.me {
            return;
        }
        self.learners.insert(name.clone(), addr);
        let next = self.last_index() + 1;
        if let Role::Leader { peers, .. } = &mut self.role {
            peers.insert(name, Progress::new(addr, next));
        }
    }

    /// Removes a learner: the leader stops replicating to it.
    pub fn remove_learner(&mut self, name: &NodeName) {
        self.learners.remove(name);
        if let Role::Leader { peers, .. } = &mut self.role {
            if !self.voters.contains_key(name) {
                peers.remove(name);
            }
        }
    }

    /// The snapshot pull asked for by the last [`Output::PullSnapshot`]
    /// failed (the source died or was cut off mid-transfer): the next
    /// `SnapshotNeeded`, from whichever node leads by then, asks for a pull
    /// again at once rather than after [`Config::snapshot_retry`]. Behind
    /// a snapshot, this node can acknowledge nothing, and a two-node
    /// majority waits on it.
    pub fn pull_failed(&mut self) {
        self.pulling = None;
    }

    /// The non-voters that should receive the log (alive ones, as
    /// membership sees them): starts or stops replicating to the
    /// difference with the current learners ([`Replica::add_learner`],
    /// [`Replica::remove_learner`]). Voters and this node are left out.
    pub fn set_learners(&mut self, learners: impl IntoIterator<Item = (NodeName, SocketAddr)>) {
        let wanted: BTreeMap<NodeName, SocketAddr> = learners
            .into_iter()
            .filter(|(name, _)| !self.voters.contains_key(name) && *name != self.me)
            .collect();
        let gone: Vec<NodeName> = self
            .learners
            .iter()
            .filter(|(name, addr)| wanted.get(*name) != Some(*addr))
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            self.remove_learner(&name);
        }
        for (name, addr) in wanted {
            if !self.learners.contains_key(&name) {
                self.add_learner(name, addr);
            }
        }
    }

    /// Appends `payload` as a new entry and returns its index. It is
    /// committed once [`Output::Committed`] reaches that index *and* the
    /// entry there is still this one (a leader that loses its epoch may see
    /// it replaced).
    ///
    /// Fails, changing nothing, with [`ProposeError::NotLeader`],
    /// [`ProposeError::NotReady`] or [`ProposeError::TooLarge`].
    pub fn propose(&mut self, now: Instant, payload: Vec<u8>) -> Result<u64, ProposeError> {
        self.now = now;
        let epoch = match &self.role {
            Role::Leader { epoch, .. } => *epoch,
            Role::Fetching { epoch, .. } => return Err(ProposeError::NotReady { epoch: *epoch }),
            Role::Follower { leader, .. } => {
                return Err(ProposeError::NotLeader {
                    leader: leader.clone(),
                })
            }
        };
        if payload.len() > self.config.max_payload_len {
            return Err(ProposeError::TooLarge {
                len: payload.len(),
                max: self.config.max_payload_len,
            });
        }
        Ok(self.append_local(epoch, EntryKind::Data, payload))
    }

    // ----- sans-IO plumbing -------------------------------------------------

    /// The next output, if any. Drain after every input and perform in
    /// order (see the module docs).
    pub fn poll_output(&mut self) -> Option<Output> {
        if self.outputs.is_empty() {
            self.flush();
        }
        self.outputs.pop_front()
    }

    /// When [`Replica::handle_timeout`] wants to be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.role {
            Role::Follower { .. } => self.gap.map(|g| g.ask_at),
            Role::Fetching {
                retry_at,
                give_up_at,
                ..
            } => Some(give_up_at.map_or(*retry_at, |g| g.min(*retry_at))),
            Role::Leader { peers, .. } => peers
                .values()
                .flat_map(|p| {
                    [
                        p.last_send.map(|t| t + self.config.heartbeat_interval),
                        p.waiting_since.map(|t| t + self.config.retransmit_timeout),
                    ]
                })
                .flatten()
                .min(),
        }
    }

    /// Handles every deadline that has passed: heartbeats, retransmissions,
    /// fetch retries.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        let retransmit = self.config.retransmit_timeout;
        match &mut self.role {
            Role::Follower { .. } => {
                if self.gap.is_some_and(|g| now >= g.ask_at) {
                    self.ask_for_the_gap();
                }
            }
            Role::Fetching {
                epoch, give_up_at, ..
            } => {
                if give_up_at.is_some_and(|t| now >= t) {
                    *give_up_at = None;
                    self.outputs.push_back(Output::CannotLead { epoch: *epoch });
                }
            }
            Role::Leader { peers, .. } => {
                for p in peers.values_mut() {
                    if p.heard.is_some_and(|t| now >= t + 2 * retransmit) {
                        p.in_sync = false;
                    }
                    if p.waiting_since.is_some_and(|t| now >= t + retransmit) {
                        // Something was lost: resend what we sent after the
                        // last acknowledged (or assumed) entry.
                        p.next = p.matched.max(p.assumed) + 1;
                        p.waiting_since = None;
                    }
                }
            }
        }
    }

    /// Handles one message from `from` (the transport's authenticated
    /// address of the sender).
    pub fn handle_message(&mut self, now: Instant, from: SocketAddr, msg: Message) {
        self.now = now;
        tracing::trace!(me = %self.me, %from, msg = %msg.brief(), "log message");
        match msg {
            Message::Append {
                epoch,
                prev_index,
                prev_epoch,
                entries,
                commit,
            } => {
                self.on_append(from, epoch, prev_index, prev_epoch, entries, commit);
                self.release_held();
                self.track_gap();
            }
            Message::Ack { epoch, match_index } => self.on_ack(from, epoch, match_index),
            Message::Nack {
                epoch,
                prev_index,
                hint,
            } => self.on_nack(from, epoch, prev_index, hint),
            Message::Fetch {
                epoch,
                from_index,
                upto,
            } => self.on_fetch(from, epoch, from_index, upto),
            Message::FetchReply {
                epoch,
                from_index,
                entries,
                last_index,
            } => self.on_fetch_reply(from, epoch, from_index, entries, last_index),
            Message::SnapshotNeeded { epoch, index } => self.on_snapshot_needed(from, epoch, index),
        }
    }

    // ----- message handlers --------------------------------------------------

    fn on_append(
        &mut self,
        from: SocketAddr,
        epoch: u64,
        prev_index: u64,
        prev_epoch: u64,
        entries: Vec<Entry>,
        commit: u64,
    ) {
        // Only a voter leads, and never with an epoch below the fence.
        let Some(leader) = self.voter_at(from) else {
            return;
        };
        if epoch < self.epoch || leader == self.me || !well_formed(epoch, prev_index, &entries) {
            return;
        }
        self.raise_epoch(epoch);
        self.seen_commit = self.seen_commit.max(commit);
        let Role::Follower {
            leader: known,
            epoch: followed,
            matched,
        } = &mut self.role
        else {
            // We lead `epoch` ourselves: no other node can.
            return;
        };
        if *followed != epoch {
            *followed = epoch;
            *matched = 0;
        }
        *known = Some((leader, from));
        let verified = *matched;
        // At or below the snapshot everything is committed, so it matches
        // any leader's log.
        let prev_ok = prev_index <= self.base.index
            || self
                .entry(prev_index)
                .is_some_and(|e| e.epoch == prev_epoch);
        if !prev_ok {
            if verified == self.last_index()
                && self.reported_epoch == epoch
                && self.hold(
                    prev_index,
                    Held {
                        from,
                        epoch,
                        prev_epoch,
                        entries,
                        commit,
                    },
                )
            {
                return;
            }
            let hint = self.backup_hint(prev_index);
            self.reported_epoch = epoch;
            self.pending_sends.push((
                from,
                Message::Nack {
                    epoch,
                    prev_index,
                    hint,
                },
            ));
            return;
        }
        let count = entries.len() as u64;
        if !self.splice(prev_index + 1, entries) {
            return;
        }
        let Role::Follower { matched, .. } = &mut self.role else {
            return;
        };
        *matched = (*matched).max(prev_index + count);
        self.commit = self.commit.max(commit.min(*matched));
        self.pending_ack = Some(from);
    }

    /// Keeps an append that starts past our last entry, if the entries
    /// before it are most likely in flight: the leader pipelines appends,
    /// each on its own stream, so they can arrive out of order. Called only
    /// when our whole log is verified to match this leader's (so the gap
    /// can only be entries it sent and we have not received yet), and only
    /// within the pipelining window, and only once we told this leader where
    /// our log ends (before that, its appends follow its optimistic guess
    /// that we have everything, and a nack corrects it at once). Nacking
    /// instead made the leader send everything again from our end, and the
    /// reordering repeated with each window: a follower 10,000 entries behind caught up at ~1,000
    /// entries/s on real processes, holding up the only majority after a
    /// leader died (issue 9). A gap that is a real loss is filled by the
    /// leader's retransmission; held appends are re-checked in full when
    /// released, and dropped at a new epoch.
    fn hold(&mut self, prev_index: u64, append: Held) -> bool {
        let window = self.config.max_inflight_entries.get();
        let last = self.last_index();
        let held: usize = self.held.values().map(|h| h.entries.len()).sum();
        if append.entries.is_empty()
            || prev_index <= last
            || prev_index - last > window as u64
            || held + append.entries.len() > window
        {
            return false;
        }
        self.held.insert(prev_index, append);
        self.track_gap();
        true
    }

    /// Follower: starts timing the gap before the held appends when it
    /// changes (a new first held append), stops when nothing is held.
    fn track_gap(&mut self) {
        let Some(&end) = self.held.keys().next() else {
            self.gap = None;
            return;
        };
        if self.gap.is_none_or(|g| g.end != end) {
            self.gap = Some(Gap {
                end,
                ask_at: self.now + self.gap_wait(),
                asked: 0,
            });
        }
    }

    /// How long a gap before held appends may stay open before the
    /// follower first asks for it: overtaking streams arrive within a
    /// millisecond or so; a lost append should cost about a round trip, not
    /// the leader's retransmission timeout (with a full window nothing else
    /// arrives to fill the gap).
    fn gap_wait(&self) -> Duration {
        self.config.heartbeat_interval / 5
    }

    /// Follower holding appends past a gap: asks their leader for it (a nack
    /// at the first held append, which backs the leader up to our end), then
    /// waits longer before asking for the same gap again: the retransmission
    /// timeout, doubling up to a second. Each ask makes the leader send its
    /// whole window again; asked every 10 ms while megabyte appends crawled
    /// over a new connection, a follower catching up after a partition
    /// buried the leader in resends (5 s without a commit, issue 9).
    fn ask_for_the_gap(&mut self) {
        let now = self.now;
        let hint = self.last_index();
        let retransmit = self.config.retransmit_timeout;
        let Some(first) = self.held.first_entry() else {
            self.gap = None;
            return;
        };
        let prev_index = *first.key();
        let (to, epoch) = (first.get().from, first.get().epoch);
        let Some(gap) = self.gap.as_mut() else {
            return;
        };
        let backoff = retransmit.saturating_mul(1 << gap.asked.min(4));
        gap.asked += 1;
        gap.ask_at = now + backoff.min(Duration::from_secs(1));
        self.pending_sends.push((
            to,
            Message::Nack {
                epoch,
                prev_index,
                hint,
            },
        ));
    }

    /// Follower: applies held appends that now continue the log.
    fn release_held(&mut self) {
        loop {
            let last = self.last_index();
            let Some(entry) = self.held.first_entry() else {
                return;
            };
            if *entry.key() > last {
                return;
            }
            let prev_index = *entry.key();
            let Held {
                from,
                epoch,
                prev_epoch,
                entries,
                commit,
            } = entry.remove();
            self.on_append(from, epoch, prev_index, prev_epoch, entries, commit);
        }
    }

    fn on_ack(&mut self, from: SocketAddr, epoch: u64, match_index: u64) {
        let now = self.now;
        let last = self.last_index();
        let close = self.close(match_index);
        let cap = self.config.max_lag_bytes;
        let lag_after = self.bytes_after(match_index);
        let Some(before) = self.progress_at(from, epoch).map(|p| p.matched) else {
            return;
        };
        let gained = match (self.bytes_after(before), lag_after) {
            (Some(old), Some(new)) => old.saturating_sub(new),
            _ => 0,
        };
        let Some(p) = self.progress_at(from, epoch) else {
            return;
        };
        p.heard = Some(now);
        if match_index <= p.matched || match_index > last {
            return;
        }
        p.matched = match_index;
        p.next = p.next.max(match_index + 1);
        p.waiting_since = (p.matched + 1 < p.next).then_some(now);
        p.in_sync |= close;
        p.credit = match (p.in_sync, lag_after) {
            (false, Some(lag)) => (p.credit + credit_for(gained, lag, cap)).min(cap),
            _ => 0,
        };
    }

    /// Whether a replica holding the log up to `index` lacks at most
    /// [`Config::max_lag_bytes`] of ours.
    fn close(&self, index: u64) -> bool {
        self.bytes_after(index)
            .is_some_and(|bytes| bytes <= self.config.max_lag_bytes)
    }

    /// Bytes of our entries after `index`; `None` when some are only in
    /// our snapshot.
    fn bytes_after(&self, index: u64) -> Option<u64> {
        let k = index.checked_sub(self.base.index)?;
        Some(self.sizes.from(usize::try_from(k).unwrap_or(usize::MAX)))
    }

    /// Leader: whether to take new proposals now (drivers stop reading
    /// requests while not, which pushes back on clients). Were the leader
    /// to die, its successor commits nothing before a majority of voters
    /// holds its log, so the answering voters other than the leader are
    /// kept able to form one quickly: false while they could form a
    /// majority but fewer than a majority are ready, where ready means
    /// within [`Config::max_lag_bytes`], or, for one catching up (never in
    /// sync since it answered again), holding `Progress::credit`: the
    /// leader then takes in a share of what such a voter catches up (half
    /// at the bound, less the further behind it is), so writes slow down
    /// but never stop for it. A voter silent for two
    /// retransmission timeouts, or one that needs a snapshot, does not
    /// count: a dead, cut-off or restoring one never holds writes up.
    /// Always true when not leading.
    pub fn admits(&self) -> bool {
        let Role::Leader { peers, .. } = &self.role else {
            return true;
        };
        let silent_after = 2 * self.config.retransmit_timeout;
        let (mut answering, mut ready) = (0, 0);
        for (name, p) in peers {
            if !self.voters.contains_key(name)
                || p.heard.is_none_or(|t| self.now >= t + silent_after)
                || self.snapshot_for(p).is_some()
            {
                continue;
            }
            let Some(lag) = self.bytes_after(p.matched) else {
                continue;
            };
            answering += 1;
            if lag <= self.config.max_lag_bytes || (!p.in_sync && p.credit > 0) {
                ready += 1;
            }
        }
        let majority = self.voters.len() / 2 + 1;
        ready >= majority || answering < majority
    }

    fn on_nack(&mut self, from: SocketAddr, epoch: u64, prev_index: u64, hint: u64) {
        let now = self.now;
        let Some(p) = self.progress_at(from, epoch) else {
            return;
        };
        p.heard = Some(now);
        if prev_index == p.matched && hint < p.matched {
            // It lacks the very entry it acknowledged as durable: it lost
            // its log's tail (a damaged disk; it knows from its high-water
            // mark and votes for nobody until caught up). Start again from
            // what it still has; the commit index never goes back.
            p.matched = hint;
            p.next = hint + 1;
            p.assumed = hint;
            p.waiting_since = None;
            return;
        }
        if prev_index < p.matched || prev_index >= p.next {
            return; // stale: a later ack or nack already moved past it
        }
        if hint == p.assumed && p.next > hint + 1 {
            // We already went back to where it ends and are sending from
            // there: this nack answers an append sent before. Going back
            // again would resend the whole window once per append in
            // flight (seen after a partition healed: a follower nacking
            // every new proposal kept the leader resending megabytes and
            // nothing committed for 3.5 s). A loss is covered by the
            // retransmission timeout.
            return;
        }
        p.next = (p.matched + 1).max(p.next.min(hint + 1).min(prev_index));
        p.assumed = p.next - 1;
        p.waiting_since = None;
    }

    fn on_fetch(&mut self, from: SocketAddr, epoch: u64, from_index: u64, upto: u64) {
        if epoch < self.epoch || from_index == 0 {
            return;
        }
        if from_index <= self.base.index {
            let index = self.base.index;
            self.pending_sends
                .push((from, Message::SnapshotNeeded { epoch, index }));
            return;
        }
        let last_index = upto.min(self.last_index());
        // A fetch is one round trip per reply, not pipelined: bound it by
        // bytes only, so a new leader far behind catches up in few trips.
        let entries = self.batch(from_index, last_index, usize::MAX);
        self.pending_sends.push((
            from,
            Message::FetchReply {
                epoch,
                from_index,
                entries,
                last_index,
            },
        ));
    }

    fn on_fetch_reply(
        &mut self,
        from: SocketAddr,
        epoch: u64,
        from_index: u64,
        entries: Vec<Entry>,
        last_index: u64,
    ) {
        let fetch_timeout = self.config.fetch_timeout;
        let Role::Fetching {
            epoch: fetching,
            source,
            next_from,
            upto,
            retry_at,
            give_up_at,
        } = &mut self.role
        else {
            return;
        };
        if epoch != *fetching || from != *source || from_index != *next_from {
            return; // stale or duplicate
        }
        if !well_formed(epoch, from_index - 1, &entries) {
            return;
        }
        let count = entries.len() as u64;
        let end = last_index.min(*upto);
        // The source's log now ends before the summary it promised with:
        // it lost entries since (a damaged disk, reopened below its
        // high-water mark), some maybe committed. Its end says nothing of
        // what is committed, so nothing past it may be cut: keep what it
        // sent and give the leadership up, as after a fetch timeout. (A
        // source restarted short answered a new leader, which cut its own
        // copy of a committed entry and wrote its no-op there.)
        let short = last_index < *upto;
        *next_from += count;
        *retry_at = self.now;
        if give_up_at.is_some() {
            *give_up_at = Some(self.now + fetch_timeout);
        }
        let done = count == 0 || *next_from > end;
        let next_from = *next_from;
        let gave_up = short && done && give_up_at.take().is_some();
        if !self.splice(from_index, entries) {
            return;
        }
        if gave_up {
            self.outputs.push_back(Output::CannotLead { epoch });
        }
        if done && short {
            return;
        }
        if done {
            // The source's log ends at `next_from - 1`; anything we hold past
            // it is not committed (the source holds every committed entry).
            let end = next_from - 1;
            if self.last_index() > end && end >= self.commit {
                self.truncate_from(end + 1);
            }
            self.start_leading(epoch);
        }
    }

    /// A leader (or the source of a fetch) says the entries we need are in
    /// its snapshot.
    fn on_snapshot_needed(&mut self, from: SocketAddr, epoch: u64, index: u64) {
        if epoch < self.epoch {
            return;
        }
        if index <= self.commit {
            // We hold everything its snapshot covers, committed (so as the
            // leader has it): say so, or it asks again forever. A replica
            // restarted from a snapshot acknowledges nothing until an append
            // matches, and the leader sends none below its snapshot.
            if let Role::Follower {
                leader: Some((_, leader)),
                epoch: followed,
                matched,
            } = &mut self.role
            {
                if *leader == from && *followed == epoch {
                    *matched = (*matched).max(self.commit);
                    self.pending_ack = Some(from);
                }
            }
            return;
        }
        match &mut self.role {
            Role::Fetching {
                epoch: fetching,
                source,
                give_up_at,
                ..
            } if *fetching == epoch && *source == from => {
                // Catching up takes a snapshot transfer: seconds, not the
                // round trip an election's failover budget allows. Give the
                // leadership up now, so the next candidate (if its log is
                // closer) serves at once; keep pulling meanwhile, as after a
                // fetch timeout, so this node catches up either way.
                if give_up_at.take().is_some() {
                    self.outputs.push_back(Output::CannotLead { epoch });
                }
            }
            Role::Follower {
                leader: known,
                epoch: followed,
                matched,
            } => {
                let Some(leader) = self
                    .voters
                    .iter()
                    .find(|(_, &a)| a == from)
                    .map(|(n, _)| n.clone())
                else {
                    return;
                };
                if leader == self.me {
                    return;
                }
                if *followed != epoch {
                    *followed = epoch;
                    *matched = 0;
                }
                *known = Some((leader, from));
                self.raise_epoch(epoch);
            }
            _ => return,
        }
        // Pulled again when a newer snapshot is named, when another node
        // asks (a new leader: the old source may be dead or cut off, and a
        // transfer from it would only fail after the transport's idle
        // timeout), or after `snapshot_retry`.
        let due = self.pulling.is_none_or(|(i, at, source)| {
            i < index || source != from || self.now >= at + self.config.snapshot_retry
        });
        if due {
            self.pulling = Some((index, self.now, from));
            self.outputs.push_back(Output::PullSnapshot { from, index });
        }
    }

    // ----- internals ---------------------------------------------------------

    fn raise_epoch(&mut self, epoch: u64) {
        if epoch <= self.epoch {
            return;
        }
        self.epoch = epoch;
        self.held.clear();
        self.gap = None;
        match self.role {
            Role::Leader { epoch: led, .. } | Role::Fetching { epoch: led, .. } if led < epoch => {
                self.role = Role::Follower {
                    leader: None,
                    epoch,
                    matched: 0,
                };
            }
            _ => {}
        }
    }

    fn start_leading(&mut self, epoch: u64) {
        let next = self.last_index() + 1;
        let peers = self
            .voters
            .iter()
            .chain(&self.learners)
            .filter(|(name, _)| **name != self.me)
            .map(|(name, &addr)| (name.clone(), Progress::new(addr, next)))
            .collect();
        self.role = Role::Leader { epoch, peers };
        self.append_local(epoch, EntryKind::Noop, Vec::new());
    }

    fn append_local(&mut self, epoch: u64, kind: EntryKind, payload: Vec<u8>) -> u64 {
        let index = self.last_index() + 1;
        let entry = Entry {
            epoch,
            index,
            kind,
            payload,
        };
        if let Role::Leader { peers, .. } = &mut self.role {
            for p in peers.values_mut().filter(|p| !p.in_sync) {
                p.credit = p.credit.saturating_sub(entry.size() as u64);
            }
        }
        self.sizes.push(&entry);
        self.log.push(entry);
        self.mark_dirty(index);
        index
    }

    fn mark_dirty(&mut self, index: u64) {
        self.dirty_from = Some(self.dirty_from.map_or(index, |d| d.min(index)));
    }

    fn truncate_from(&mut self, index: u64) {
        // Never at or below the snapshot: that is all committed.
        let index = index.max(self.base.index + 1);
        let len = (index - self.base.index - 1) as usize;
        self.log.truncate(len);
        self.sizes.truncate(len);
        self.mark_dirty(index);
    }

    /// Writes `entries` (numbered from `first`) into the log, dropping our
    /// suffix from the first entry whose epoch differs. Refuses (returns
    /// false) rather than drop a committed entry: that would be a protocol
    /// violation by the sender.
    fn splice(&mut self, first: u64, entries: Vec<Entry>) -> bool {
        for entry in entries {
            let index = entry.index;
            debug_assert!(index >= first);
            if index <= self.base.index {
                continue; // in our snapshot already
            }
            if let Some(mine) = self.entry(index) {
                if mine.epoch == entry.epoch {
                    continue;
                }
                if index <= self.commit {
                    return false;
                }
                self.truncate_from(index);
            }
            self.sizes.push(&entry);
            self.log.push(entry);
            self.mark_dirty(index);
        }
        true
    }

    /// Where a leader should retry after our entry at `prev_index` did not
    /// match: our last index if we are shorter, else the index before our
    /// first entry of the conflicting epoch (never below the commit index).
    fn backup_hint(&self, prev_index: u64) -> u64 {
        let last = self.last_index();
        if prev_index > last {
            return last;
        }
        let Some(conflict) = self.entry(prev_index).map(|e| e.epoch) else {
            return last;
        };
        let mut first = prev_index;
        while first > 1 && self.entry(first - 1).is_some_and(|e| e.epoch == conflict) {
            first -= 1;
        }
        (first - 1).max(self.commit)
    }

    /// Entries from `from` to at most `to`, within the batch limits (at least
    /// one entry if any is in range).
    fn batch(&self, from: u64, to: u64, max_entries: usize) -> Vec<Entry> {
        let mut bytes = 0;
        let mut out = Vec::new();
        for entry in self.entries(from, to) {
            if out.len() >= max_entries
                || (!out.is_empty() && bytes + entry.size() > self.config.max_batch_bytes)
            {
                break;
            }
            bytes += entry.size();
            out.push(entry.clone());
        }
        out
    }

    fn voter_at(&self, addr: SocketAddr) -> Option<NodeName> {
        self.voters
            .iter()
            .find(|(_, &a)| a == addr)
            .map(|(name, _)| name.clone())
    }

    fn progress_at(&mut self, from: SocketAddr, epoch: u64) -> Option<&mut Progress> {
        match &mut self.role {
            Role::Leader { epoch: led, peers } if *led == epoch => {
                peers.values_mut().find(|p| p.addr == from)
            }
            _ => None,
        }
    }

    /// Follower: whether our log is far behind the leader's: we are pulling
    /// a snapshot, or lack more than [`BEHIND_WINDOWS`] windows
    /// ([`Config::max_inflight_entries`]) of committed entries (and until we
    /// hold every entry a leader said was committed). Elected now, this node would have to catch up before
    /// serving: drivers tell the election ([`clustron_election::Core::set_behind`]),
    /// which then prefers another candidate.
    pub fn behind(&self) -> bool {
        self.behind
    }

    fn update_behind(&mut self) {
        let lacking = self.seen_commit.saturating_sub(self.last_index());
        let threshold = match self.behind {
            true => 0,
            false => self.config.max_inflight_entries.get() as u64 * BEHIND_WINDOWS,
        };
        self.behind = matches!(self.role, Role::Follower { .. })
            && (self.pulling.is_some() || lacking > threshold);
    }

    /// Builds the outputs for everything that changed since the last drain:
    /// writes, one sync, then what depends on durability (summary, commit,
    /// acks, replies, replication).
    fn flush(&mut self) {
        self.update_behind();
        let mut wrote = false;
        if self.epoch > self.saved_epoch {
            self.saved_epoch = self.epoch;
            self.outputs.push_back(Output::SaveEpoch(self.epoch));
            wrote = true;
        }
        if self.reset_pending {
            self.reset_pending = false;
            self.outputs.push_back(Output::ResetLog { base: self.base });
            if !self.log.is_empty() {
                self.outputs.push_back(Output::Append(self.log.clone()));
            }
            self.persisted_last = self.last_index();
            self.dirty_from = None;
            wrote = true;
        }
        if let Some(from) = self.dirty_from.take() {
            if from <= self.persisted_last {
                self.outputs.push_back(Output::Truncate { from });
            }
            let start = (from - self.base.index - 1) as usize;
            if let Some(new) = self.log.get(start..).filter(|n| !n.is_empty()) {
                self.outputs.push_back(Output::Append(new.to_vec()));
            }
            self.persisted_last = self.last_index();
            wrote = true;
        }
        if wrote {
            if matches!(self.role, Role::Leader { .. }) {
                // A leader sends its new entries before its own sync, so
                // that the followers write and sync them while it syncs
                // (Raft thesis §10.2.1): one fsync on the commit path, not
                // two in a row. An append claims nothing about the sender's
                // disk; the leader counts itself towards commit through
                // `persisted_last`, and every output that depends on that
                // (commits, acks, summaries) comes after the `Sync`.
                self.replicate();
            }
            self.outputs.push_back(Output::Sync);
        }
        // Everything in memory is durable from here on.
        let summary = self.summary();
        if self.reported_summary != Some(summary) {
            self.reported_summary = Some(summary);
            self.outputs.push_back(Output::Summary(summary.encode()));
        }
        self.advance_commit();
        let commit = self.commit.min(self.persisted_last);
        if commit > self.reported_commit {
            self.reported_commit = commit;
            self.outputs.push_back(Output::Committed { upto: commit });
        }
        if let Some(to) = self.pending_ack.take() {
            if let Role::Follower { epoch, matched, .. } = self.role {
                self.reported_epoch = epoch;
                self.pending_sends.push((
                    to,
                    Message::Ack {
                        epoch,
                        match_index: matched,
                    },
                ));
            }
        }
        for (to, msg) in std::mem::take(&mut self.pending_sends) {
            self.outputs.push_back(Output::Send { to, msg });
        }
        self.fetch();
        self.replicate();
    }

    /// Leader: the highest index held durably by a majority of the voters,
    /// if its entry is of our epoch (rule 4).
    fn advance_commit(&mut self) {
        let Role::Leader { epoch, peers } = &self.role else {
            return;
        };
        let mut held: Vec<u64> = peers
            .iter()
            .filter(|(name, _)| self.voters.contains_key(*name))
            .map(|(_, p)| p.matched)
            .collect();
        if self.voters.contains_key(&self.me) {
            held.push(self.persisted_last);
        }
        held.sort_unstable_by(|a, b| b.cmp(a));
        let majority = self.voters.len() / 2 + 1;
        let Some(&n) = held.get(majority - 1) else {
            return;
        };
        if n > self.commit && self.entry(n).is_some_and(|e| e.epoch == *epoch) {
            self.commit = n;
        }
    }

    /// New leader catching up: (re)send the fetch when due.
    fn fetch(&mut self) {
        let now = self.now;
        let retransmit = self.config.retransmit_timeout;
        if let Role::Fetching {
            epoch,
            source,
            next_from,
            upto,
            retry_at,
            ..
        } = &mut self.role
        {
            if now >= *retry_at {
                *retry_at = now + retransmit;
                self.outputs.push_back(Output::Send {
                    to: *source,
                    msg: Message::Fetch {
                        epoch: *epoch,
                        from_index: *next_from,
                        upto: *upto,
                    },
                });
            }
        }
    }

    /// Leader: send every replica what it lacks, within its window, and a
    /// heartbeat to those that are due one.
    fn replicate(&mut self) {
        let now = self.now;
        let last = self.last_index();
        let commit = self.commit;
        let window = self.config.max_inflight_entries.get() as u64;
        let heartbeat = self.config.heartbeat_interval;
        let Role::Leader { epoch, peers } = &self.role else {
            return;
        };
        let epoch = *epoch;
        let mut sends = Vec::new();
        let mut updated = Vec::new();
        for (name, p) in peers {
            let mut p = p.clone();
            let mut sent = false;
            // What it needs next is compacted, or cheaper to send as the
            // snapshot: it must pull the snapshot (asked at the heartbeat's
            // pace until it acks past it).
            if let Some(index) = self.snapshot_for(&p) {
                if p.last_send.is_none_or(|t| now >= t + heartbeat) {
                    sends.push((p.addr, Message::SnapshotNeeded { epoch, index }));
                    p.last_send = Some(now);
                    updated.push((name.clone(), p));
                }
                continue;
            }
            while p.next <= last {
                let inflight = (p.next - 1).saturating_sub(p.matched.max(p.assumed));
                if inflight >= window {
                    break;
                }
                let upto = last.min(p.next - 1 + (window - inflight));
                let entries = self.batch(p.next, upto, self.config.max_batch_entries.get());
                if entries.is_empty() {
                    break;
                }
                let prev_index = p.next - 1;
                p.next += entries.len() as u64;
                sends.push((
                    p.addr,
                    Message::Append {
                        epoch,
                        prev_index,
                        prev_epoch: self.epoch_at(prev_index),
                        entries,
                        commit,
                    },
                ));
                sent = true;
                p.waiting_since.get_or_insert(now);
            }
            let due = p.last_send.is_none_or(|t| now >= t + heartbeat);
            if !sent && (p.commit_sent < commit || due) {
                // A heartbeat checks the replica's log where the leader
                // believes it is: at what it acknowledged, or higher at
                // what is only assumed (a new leader's or a new learner's
                // optimistic start). Checked only at `matched`, an assumed
                // prefix the replica lacks (a learner joining with an empty
                // log) would be found out by the next proposal only: an idle
                // cluster never sent it the log (a late learner waited for a
                // client session to expire, ~60 s). Its ack raises `matched`;
                // its nack backs the leader up (or says "pull my snapshot").
                let probe = if p.assumed > p.matched && p.assumed >= self.base.index {
                    p.assumed
                } else {
                    p.matched
                };
                sends.push((
                    p.addr,
                    Message::Append {
                        epoch,
                        prev_index: probe,
                        prev_epoch: self.epoch_at(probe),
                        entries: Vec::new(),
                        commit,
                    },
                ));
                sent = true;
            }
            if sent {
                p.last_send = Some(now);
                p.commit_sent = commit;
                updated.push((name.clone(), p));
            }
        }
        if let Role::Leader { peers, .. } = &mut self.role {
            for (name, p) in updated {
                peers.insert(name, p);
            }
        }
        for (to, msg) in sends {
            self.outputs.push_back(Output::Send { to, msg });
        }
    }

    fn epoch_at(&self, index: u64) -> u64 {
        if index == self.base.index {
            return self.base.epoch;
        }
        self.entry(index).map(|e| e.epoch).unwrap_or(0)
    }
}

impl Progress {
    fn new(addr: SocketAddr, next: u64) -> Self {
        Self {
            addr,
            next,
            matched: 0,
            assumed: next - 1,
            commit_sent: 0,
            last_send: None,
            waiting_since: None,
            heard: None,
            in_sync: false,
            credit: 0,
        }
    }
}

/// The credit a voter catching up earns for acknowledging `gained` bytes
/// while still `lag` bytes behind: `gained · bound / (bound + lag)`, half
/// at the bound, a tenth at nine times it. Writes then go on at that share
/// of its catch-up rate, so a voter far behind (a long pause, a restart)
/// closes most of its gap quickly, and the leader's successor, should the
/// leader die meanwhile, waits for little.
fn credit_for(gained: u64, lag: u64, bound: u64) -> u64 {
    let share =
        u128::from(gained) * u128::from(bound) / (u128::from(bound) + u128::from(lag)).max(1);
    u64::try_from(share).unwrap_or(u64::MAX)
}

/// Cumulative sizes of the entries in memory, so that what a replica lacks
/// is known in bytes at once ([`Replica::bytes_after`]).
#[derive(Debug, Clone, Default)]
struct Sizes {
    /// The running total before the first entry.
    before: u64,
    /// The running total up to and including each entry.
    ends: Vec<u64>,
}

impl Sizes {
    fn of(entries: &[Entry]) -> Self {
        let mut sizes = Self::default();
        for e in entries {
            sizes.push(e);
        }
        sizes
    }

    fn push(&mut self, entry: &Entry) {
        let end = self.ends.last().copied().unwrap_or(self.before);
        self.ends.push(end + entry.size() as u64);
    }

    fn truncate(&mut self, len: usize) {
        self.ends.truncate(len);
    }

    fn drain_front(&mut self, n: usize) {
        let n = n.min(self.ends.len());
        if n > 0 {
            self.before = self.ends[n - 1];
            self.ends.drain(..n);
        }
    }

    /// Bytes of the entries from position `k` on.
    fn from(&self, k: usize) -> u64 {
        let end = self.ends.last().copied().unwrap_or(self.before);
        let start = match k {
            0 => self.before,
            k => self.ends.get(k - 1).copied().unwrap_or(end),
        };
        end - start
    }
}

/// Entries of a message are consecutive from `prev_index + 1` and none is
/// newer than the message's epoch (bytes from the network are checked, never
/// trusted).
fn well_formed(epoch: u64, prev_index: u64, entries: &[Entry]) -> bool {
    entries
        .iter()
        .enumerate()
        .all(|(i, e)| e.index == prev_index + 1 + i as u64 && e.epoch <= epoch && e.epoch > 0)
}

#[cfg(test)]
mod tests;
