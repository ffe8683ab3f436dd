//! The driver side of the log, shared by every product: the storage the
//! log is opened from ([`OpenLog`]), the fence shared with the election
//! ([`Fence`]), and [`LogIo`], which performs a replica's outputs against
//! the write-ahead log, fsync and the network, feeds the core the
//! election's decisions, replication messages and time, and schedules,
//! writes, serves and pulls snapshots.
//!
//! The generic driver ([`crate::driver`]) and DKV's key-value driver both
//! run on it: a product's driver owns its core (anything implementing
//! [`ReplicatedCore`]) and a `LogIo`, and loops:
//!
//! ```text
//!  loop {
//!      while let Some(out) = core.poll_output() { log outputs ─► io.perform(&mut core, out)?; product outputs ─► … }
//!      io.after_drain(&mut core).await;                       (snapshot schedule, rejoin the election)
//!      select! { event = io.next(core.poll_timeout()) ─► io.handle(&mut core, event)?,
//!                product commands ─► core }
//!  }
//! ```
//!
//! The fence shared with the election ([`Fence`], a
//! [`clustron_election::PromiseHook`]) is what makes a new leader's view
//! change safe on real threads: the election task sets the fence and reads
//! the durable summary under one lock, and `perform` updates the summary
//! after each fsync and checks the fence under the same lock before any
//! acknowledgement leaves.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clustron_election::{
    DriverError, Election, Epoch, LeadershipEvent, NodeName, PromiseHook, Voter, VoterSet,
    WITHDRAWN_TAG,
};
use clustron_membership::{MemberState, Membership, Notification};
use clustron_node::Elect;
use clustron_transport::{Channel, ChannelId, Endpoint, Inbound, Inbox, Protocol};
use tokio::sync::mpsc;

use crate::core::{
    Entry, Message, Output, Recovered, ReplicatedCore, SnapshotData, SnapshotMeta, Summary,
};
use crate::error::StartError;
use crate::snapshot::{SnapshotError, Snapshots};
use crate::voters::{Context, Plan, ReplicaRole, ReplicaStatus, VoterChange, VoterChangeError};
use crate::wal::{HighWaterMark, Wal, WalError, WalOptions};

/// The most committed entries a learner may be behind to be made a voter:
/// about one snapshot interval (a new voter far behind would hold up
/// commits while it catches up).
pub const MAX_PROMOTION_LAG: u64 = 10_000;

/// The replication protocol on the transport's `LOG` channel (messages
/// between replicas; streams carry snapshot transfers).
#[derive(Debug)]
pub struct Replication;

impl Protocol for Replication {
    const CHANNEL: ChannelId = ChannelId::LOG;
    type Request = ();
    type Response = ();
    type Message = Message;
}

#[derive(Debug, Default)]
struct FenceState {
    /// Newest epoch the election promised.
    epoch: u64,
    /// Summary of the durable log, encoded.
    summary: Vec<u8>,
}

/// The fence and durable summary shared by the election (through
/// [`PromiseHook`]) and the log's driver.
#[derive(Debug, Default, Clone)]
pub struct Fence(Arc<Mutex<FenceState>>);

impl PromiseHook for Fence {
    fn promised(&self, epoch: Epoch) -> Vec<u8> {
        let mut state = self.0.lock().unwrap_or_else(|e| e.into_inner());
        state.epoch = state.epoch.max(epoch.0);
        state.summary.clone()
    }
}

impl Fence {
    /// Records the durable summary and returns the fence, atomically.
    fn durable(&self, summary: &Summary) -> u64 {
        let mut state = self.0.lock().unwrap_or_else(|e| e.into_inner());
        state.summary = summary.encode();
        state.epoch
    }

    fn epoch(&self) -> u64 {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).epoch
    }
}

/// A node's log storage, opened before the election starts: the election's
/// grants must carry the log's durable summary from the very first promise
/// (an empty one would hide this voter's entries from a new leader), and
/// its fence starts at the saved epoch. Give the election its hook with
/// [`OpenLog::elect`].
///
/// In the data folder: `wal/` (segments), `wal-mark` (high-water mark),
/// `log-epoch` (the fence), `snapshots/`.
#[derive(Debug)]
pub struct OpenLog {
    wal: Wal,
    snapshots: Snapshots,
    /// The newest valid snapshot's bytes, until taken.
    snapshot: Option<Vec<u8>>,
    base: SnapshotMeta,
    mark: HighWaterMark,
    /// The high-water mark, when the log opened below it.
    lost: Option<Summary>,
    entries: Vec<Entry>,
    epoch: u64,
    epoch_path: PathBuf,
    written: Summary,
    fence: Fence,
}

impl OpenLog {
    /// Opens (or creates) the log in `data_dir`: the newest valid snapshot
    /// (damaged newer ones are skipped and logged; none valid while some
    /// exist is an error), the write-ahead log after it (a torn tail cut),
    /// its high-water mark and the epoch file.
    pub fn open(data_dir: &Path) -> Result<OpenLog, StartError> {
        let snapshots = Snapshots::open(&data_dir.join("snapshots"))?;
        let (base, snapshot) = match snapshots.load()? {
            Some(loaded) => {
                for (path, why) in &loaded.skipped {
                    tracing::error!(
                        file = %path.display(),
                        %why,
                        "skipped a damaged snapshot; starting from an older one"
                    );
                }
                (loaded.meta, Some(loaded.state))
            }
            None => (SnapshotMeta::default(), None),
        };
        let wal_dir = data_dir.join("wal");
        let (mut wal, recovered) = Wal::open_after(&wal_dir, WalOptions::default(), base.index)?;
        if recovered.torn_tail_bytes > 0 {
            tracing::warn!(
                bytes = recovered.torn_tail_bytes,
                "cut a torn tail off the write-ahead log"
            );
        }
        // The log continues after the snapshot: entries it covers are
        // skipped; a log that ends before it (compacted, or reset by an
        // install that a crash interrupted) starts again after it; a gap
        // between the snapshot and the log is lost data.
        if wal.first_index() > base.index + 1 {
            return Err(StartError::Wal(WalError::Corrupt {
                path: wal_dir.clone(),
                offset: 0,
                reason: format!(
                    "the log starts at index {} but the newest snapshot covers only up to {}",
                    wal.first_index(),
                    base.index
                ),
            }));
        }
        if wal.last_index() < base.index {
            wal.reset_after(base.index)?;
        }
        // What the snapshot covers is never truncated: its offsets go now,
        // and any segment it covers whole (a crash between the snapshot
        // and the compaction) is deleted.
        wal.compact_to(base.index)?;
        let entries: Vec<Entry> = recovered
            .entries
            .into_iter()
            .filter(|e| e.index > base.index)
            .collect();
        let epoch_path = data_dir.join("log-epoch");
        let epoch = read_epoch(&epoch_path)?;
        let written = entries.last().map_or(
            Summary {
                last_epoch: base.epoch,
                last_index: base.index,
            },
            |e| Summary {
                last_epoch: e.epoch,
                last_index: e.index,
            },
        );
        let mark_path = data_dir.join("wal-mark");
        let mark = HighWaterMark::open(&mark_path, written)?;
        let lost = mark.lost(written).then(|| mark.mark());
        if let Some(mark) = lost {
            tracing::error!(
                log_epoch = written.last_epoch,
                log_index = written.last_index,
                mark_epoch = mark.last_epoch,
                mark_index = mark.last_index,
                wal = %wal_dir.display(),
                "the write-ahead log lost entries this node had acknowledged; not voting or \
                 leading until caught up from the other nodes (if every node lost them, delete \
                 {} to accept the loss)",
                mark_path.display()
            );
        }
        let fence = Fence::default();
        {
            let mut state = fence.0.lock().unwrap_or_else(|e| e.into_inner());
            state.epoch = epoch;
            state.summary = written.encode();
        }
        Ok(OpenLog {
            wal,
            snapshots,
            snapshot,
            base,
            mark,
            lost,
            entries,
            epoch,
            epoch_path,
            written,
            fence,
        })
    }

    /// The election settings `elect` with this log's promise hook and, if
    /// the log lost acknowledged entries, started withdrawn
    /// ([`OpenLog::lost_tail`]).
    pub fn elect(&self, elect: Elect) -> Elect {
        elect
            .promise_hook(Arc::new(self.fence()))
            .withdrawn(self.lost_tail())
    }

    /// The hook to start the election with.
    pub fn fence(&self) -> Fence {
        self.fence.clone()
    }

    /// What the newest snapshot covers (`(0, 0)` for none).
    pub fn snapshot_meta(&self) -> SnapshotMeta {
        self.base
    }

    /// The newest valid snapshot's state bytes, once (the state machine is
    /// restored from them before the recovered log is replayed).
    pub fn take_snapshot(&mut self) -> Option<Vec<u8>> {
        self.snapshot.take()
    }

    /// What the replica starts from: the saved epoch, the snapshot and the
    /// entries after it (taken: a second call has no entries).
    pub fn take_recovered(&mut self) -> Recovered {
        Recovered {
            epoch: self.epoch,
            snapshot: self.base,
            entries: std::mem::take(&mut self.entries),
        }
    }

    /// Why this node must start withdrawn from the election, if it must:
    /// its log opened below its high-water mark, so it lost entries it had
    /// acknowledged, and a grant would understate what it promised (a new
    /// leader could then miss a committed entry). The driver rejoins the
    /// election once it has caught up past the mark.
    pub fn lost_tail(&self) -> Option<String> {
        let mark = self.lost?;
        Some(format!(
            "lost acknowledged log entries: the write-ahead log ends at epoch {} index {} but \
             this node had made epoch {} index {} durable; not voting or leading until caught \
             up from the other nodes",
            self.written.last_epoch, self.written.last_index, mark.last_epoch, mark.last_index
        ))
    }
}

/// The result of the fsync in progress (pending when there is none).
async fn wait_sync(
    syncing: &mut Option<tokio::task::JoinHandle<Result<(), WalError>>>,
) -> Result<(), WalError> {
    match syncing.as_mut() {
        Some(handle) => handle.await.unwrap_or_else(|e| {
            Err(WalError::Io {
                path: PathBuf::from("wal"),
                source: std::io::Error::other(format!("the fsync thread failed: {e}")),
            })
        }),
        None => std::future::pending().await,
    }
}

fn read_epoch(path: &Path) -> Result<u64, StartError> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let bytes: [u8; 8] = bytes.try_into().map_err(|_| StartError::Epoch {
                path: path.to_owned(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not 8 bytes"),
            })?;
            Ok(u64::from_le_bytes(bytes))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(source) => Err(StartError::Epoch {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Writes the epoch durably: temporary file, fsync, rename, fsync folder.
fn write_epoch(path: &Path, epoch: u64) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(&epoch.to_le_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// When to snapshot the state machine. Zero turns a bound off; all zero:
/// only on demand ([`LogIo::snapshot_now`]). See [`SnapshotSchedule::due`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotSchedule {
    /// Entries applied since the last snapshot.
    pub entries: u64,
    /// Bytes of entries appended to the log since the last snapshot.
    pub bytes: u64,
    /// Neither bound fires before the log appended since the last snapshot
    /// reaches this per cent of that snapshot's state (uncompressed: what
    /// encoding it costs). A snapshot rewrites
    /// the whole state: at 100,000 keys of 256 bytes, one every 10,000
    /// entries wrote a 29 MB file per 3.3 MB of log and took a fifth of
    /// the servers' CPU under writes. At 50 a node writes at most two
    /// bytes of snapshot per byte of log, and the log it keeps (in memory
    /// and in the WAL) stays under half the state.
    pub percent_of_last: u64,
}

impl Default for SnapshotSchedule {
    /// etcd's `--snapshot-count` default (v3.6): 10,000 entries; 64 MiB of
    /// log, which bounds restart replay and memory when entries are large;
    /// and either only once the log is half the last snapshot.
    fn default() -> Self {
        Self {
            entries: 10_000,
            bytes: 64 << 20,
            percent_of_last: 50,
        }
    }
}

impl SnapshotSchedule {
    /// Whether a snapshot is due with `entries_since` entries applied and
    /// `bytes_since` bytes appended since the last one, whose state was
    /// `last_state` bytes (0 if unknown): by entries, or by bytes, once the
    /// log is also [`SnapshotSchedule::percent_of_last`] of that state.
    ///
    /// ```
    /// use clustron_log::SnapshotSchedule;
    /// let schedule = SnapshotSchedule::default();
    /// // 10,000 small entries since a small snapshot: due.
    /// assert!(schedule.due(10_000, 3 << 20, 4 << 20));
    /// // The same entries since a 100 MB snapshot: not yet.
    /// assert!(!schedule.due(10_000, 3 << 20, 100 << 20));
    /// ```
    pub fn due(&self, entries_since: u64, bytes_since: u64, last_state: u64) -> bool {
        let proportional = last_state.saturating_mul(self.percent_of_last) / 100;
        (self.entries > 0 && entries_since >= self.entries && bytes_since >= proportional)
            || (self.bytes > 0 && bytes_since >= self.bytes.max(proportional))
    }
}

/// Figures of the log's storage, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoStats {
    /// Write-ahead log fsyncs since start.
    pub syncs: u64,
    /// Write-ahead log segment files.
    pub wal_segments: u64,
}

/// Snapshot work done off the driver's task.
enum Background<S> {
    /// A snapshot was written (or not): its file's and its state's length.
    Saved(Result<(SnapshotMeta, u64, u64), String>),
    /// A snapshot was pulled from a peer and saved (or not), with its
    /// file's size.
    Pulled(SocketAddr, Result<(SnapshotMeta, S, u64), String>),
}

/// Something for [`LogIo::handle`], from [`LogIo::next`].
pub struct IoEvent<S>(Event<S>);

enum Event<S> {
    Inbound(Vec<Inbound<Replication>>),
    Leadership(clustron_election::Notification),
    Members,
    Timeout,
    Background(Background<S>),
    SyncMark,
    /// The write-ahead log's fsync on the blocking thread finished.
    Synced(Result<(), WalError>),
    /// Nothing to do (the election's leader feed moved: its events say how).
    Idle,
    Closed,
}

/// Most queued messages taken before acting on them at once.
const BATCH: usize = 512;

/// Least time between two snapshots taken for a replica far behind.
const WANTED_SNAPSHOT_EVERY: Duration = Duration::from_secs(2);

/// The log's I/O for one node: storage, network, election wiring and
/// snapshots, around a core the product's driver owns. See the module docs
/// for the loop.
pub struct LogIo<C: ReplicatedCore> {
    wal: Wal,
    snapshots: Snapshots,
    schedule: SnapshotSchedule,
    /// The index the newest snapshot covers.
    last_snapshot: u64,
    /// Bytes appended since the newest snapshot.
    bytes_since: u64,
    /// The length of the newest snapshot's state (0: none, or unknown).
    last_state_len: u64,
    /// A snapshot was asked for on demand.
    snapshot_asked: bool,
    /// When the replica last wanted a snapshot for a replica far behind
    /// ([`crate::core::Replica::wants_snapshot`]) and got one.
    wanted_at: Option<Instant>,
    /// A snapshot is being written.
    snapshotting: bool,
    /// A snapshot is being pulled: from whom, and the task doing it.
    pulling: Option<(SocketAddr, tokio::task::AbortHandle)>,
    background: mpsc::UnboundedReceiver<Background<C::State>>,
    background_tx: mpsc::UnboundedSender<Background<C::State>>,
    /// Raised after every sync; see [`crate::wal::mark`].
    mark: HighWaterMark,
    /// The mark this node must catch up to before it votes again.
    lost: Option<Summary>,
    /// Caught up past the mark: rejoin the election (from the loop, in
    /// order with a later withdrawal, never after it).
    caught_up: bool,
    epoch_path: PathBuf,
    fence: Fence,
    /// The fence last passed to the core.
    fenced: u64,
    /// The log as written (durable after the next sync).
    written: Summary,
    me: NodeName,
    voters: Vec<(NodeName, SocketAddr)>,
    /// The version of the election's voter set the core was last given.
    voters_version: u64,
    inbox: Inbox<Replication>,
    channel: Channel<Replication>,
    election: Election,
    leadership: clustron_election::Subscription,
    membership: Membership,
    changes: clustron_membership::Subscription,
    /// Closed when the election's task ends (the node was killed or left):
    /// the log stops with it.
    election_alive: tokio::sync::watch::Receiver<Option<(NodeName, Epoch)>>,
    syncs: u64,
    /// The write-ahead log's fsync in progress on a blocking thread: the
    /// core's later outputs wait for it (they are performed in order; see
    /// [`LogIo::syncing`]), while the driver goes on taking inputs.
    syncing: Option<tokio::task::JoinHandle<Result<(), WalError>>>,
    /// The epoch the core was last told this node won.
    elected: Option<u64>,
    mark_sync: tokio::time::Interval,
    /// What the election was last told of [`crate::core::Replica::behind`].
    behind: bool,
}

impl<C: ReplicatedCore> LogIo<C> {
    /// The log's I/O over `open` (what [`OpenLog::take_recovered`] and
    /// [`OpenLog::take_snapshot`] left), replicating among `voters` (and
    /// the alive non-voters of `membership`, as learners), led by
    /// `election`'s leader, which must have been started with
    /// [`OpenLog::elect`]. Registers the `LOG` channel.
    pub fn new(
        endpoint: &Endpoint,
        membership: &Membership,
        election: &Election,
        open: OpenLog,
        voters: Vec<(NodeName, SocketAddr)>,
        schedule: SnapshotSchedule,
    ) -> Result<Self, StartError> {
        let inbox = endpoint.register::<Replication>()?;
        let last_state_len = open.snapshots.newest_state_len();
        let (background_tx, background) = mpsc::unbounded_channel();
        let mut mark_sync = tokio::time::interval(Duration::from_secs(1));
        mark_sync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ok(Self {
            wal: open.wal,
            snapshots: open.snapshots,
            schedule,
            last_snapshot: open.base.index,
            bytes_since: 0,
            last_state_len,
            snapshot_asked: false,
            wanted_at: None,
            snapshotting: false,
            pulling: None,
            background,
            background_tx,
            mark: open.mark,
            lost: open.lost,
            caught_up: false,
            epoch_path: open.epoch_path,
            fence: open.fence,
            fenced: open.epoch,
            written: open.written,
            me: membership.name().clone(),
            voters,
            voters_version: election.voters().version,
            inbox,
            channel: endpoint.channel::<Replication>(),
            election: election.clone(),
            leadership: election.subscribe(),
            membership: membership.clone(),
            changes: membership.subscribe(),
            election_alive: election.leader_feed(),
            syncs: 0,
            syncing: None,
            elected: None,
            mark_sync,
            behind: false,
        })
    }

    /// The index the newest snapshot covers (the log in memory may reach
    /// further back: see [`crate::core::Replica::compaction_point`]).
    pub fn last_snapshot(&self) -> u64 {
        self.last_snapshot
    }

    /// The storage's figures.
    pub fn stats(&self) -> IoStats {
        IoStats {
            syncs: self.syncs,
            wal_segments: self.wal.segment_count() as u64,
        }
    }

    /// The election this log follows.
    pub fn election(&self) -> &Election {
        &self.election
    }

    /// Before the first input: learn the learners and voters' addresses
    /// and the current leader.
    pub async fn prepare(&mut self, core: &mut C) {
        self.refresh_learners(core).await;
        self.sync_leadership(core);
    }

    /// Snapshots at the next [`LogIo::after_drain`], whatever the schedule.
    pub fn snapshot_now(&mut self) {
        self.snapshot_asked = true;
    }

    /// After a drain: start a snapshot if one is due, rejoin the election
    /// if this node caught up past its high-water mark.
    pub async fn after_drain(&mut self, core: &mut C) {
        self.maybe_snapshot(core);
        let behind = core.replica().behind();
        if behind != self.behind {
            self.behind = behind;
            if let Err(e) = self.election.set_behind(behind).await {
                tracing::debug!(error = %e, "cannot tell the election the log is behind");
            }
        }
        if std::mem::take(&mut self.caught_up) {
            if let Err(e) = self.election.rejoin().await {
                tracing::error!(error = %e, "cannot rejoin the election");
            }
        }
    }

    /// The next thing to handle: replication messages (everything queued,
    /// so they share one write and one fsync: group commit), a leadership
    /// change, a membership change, the core's `deadline`, snapshot work
    /// done, the end of the node (its election stopped: the driver ends,
    /// closing the log's files). Cancel-safe: use it in a `select!` beside
    /// the product's inputs.
    pub async fn next(&mut self, deadline: Option<Instant>) -> IoEvent<C::State> {
        let deadline = deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
        let event = tokio::select! {
            item = self.inbox.recv() => match item {
                Some(item) => {
                    let mut items = vec![item];
                    while items.len() < BATCH {
                        let Some(item) = self.inbox.try_recv() else { break };
                        items.push(item);
                    }
                    Event::Inbound(items)
                }
                None => Event::Closed,
            },
            note = self.leadership.recv() => match note {
                Some(note) => Event::Leadership(note),
                None => Event::Closed,
            },
            change = self.changes.recv() => match change {
                Some(Notification::Event(_) | Notification::Lagged(_)) => Event::Members,
                None => Event::Closed,
            },
            () = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)) => Event::Timeout,
            Some(done) = self.background.recv() => Event::Background(done),
            synced = wait_sync(&mut self.syncing), if self.syncing.is_some() => Event::Synced(synced),
            _ = self.mark_sync.tick() => Event::SyncMark,
            alive = self.election_alive.changed() => match alive {
                Ok(()) => Event::Idle,
                Err(_) => Event::Closed,
            },
        };
        IoEvent(event)
    }

    /// Handles what [`LogIo::next`] returned. `Ok(false)`: the node shut
    /// down (the driver ends). An error is a failed write-ahead log: call
    /// [`LogIo::stop`].
    pub async fn handle(
        &mut self,
        core: &mut C,
        event: IoEvent<C::State>,
    ) -> Result<bool, WalError> {
        match event.0 {
            Event::Inbound(items) => {
                self.apply_fence(core);
                for item in items {
                    self.inbound(core, item);
                }
            }
            Event::Leadership(clustron_election::Notification::Event(event)) => {
                let voters_changed = matches!(event, LeadershipEvent::VotersChanged(_));
                self.leadership_event(core, event);
                if voters_changed {
                    self.refresh_learners(core).await;
                }
            }
            Event::Leadership(clustron_election::Notification::Lagged(_)) => {
                self.sync_leadership(core);
                self.refresh_learners(core).await;
            }
            Event::Members => self.refresh_learners(core).await,
            Event::Timeout => {
                self.apply_fence(core);
                core.handle_timeout(Instant::now());
            }
            Event::Background(done) => self.background_done(core, done)?,
            // The mark's fsync, at most once a second.
            Event::SyncMark => self.mark.sync()?,
            Event::Synced(result) => {
                self.syncing = None;
                result?;
                self.synced(core)?;
            }
            Event::Idle => {}
            Event::Closed => return Ok(false),
        }
        Ok(true)
    }

    /// The write-ahead log failed: nothing more can be made durable, so
    /// this node may neither acknowledge, nor lead, nor vote (its grants
    /// would promise a log it cannot keep). It withdraws from the election
    /// (a leader hands over at once). Returns the reason, for the product
    /// to report and to fail its requests with. Whatever the failed output
    /// was followed by (replies, sends) must not be performed.
    pub async fn stop(&mut self, error: &WalError) -> String {
        let reason = format!("the replicated log stopped: write-ahead log failed: {error}");
        tracing::error!(%reason, "stepping down, no longer voting or serving on this node");
        if let Err(e) = self.election.withdraw(reason.clone()).await {
            tracing::error!(error = %e, "cannot withdraw from the election");
        }
        reason
    }

    /// Performs one of the replica's outputs (drained in order from the
    /// core): writes and fsyncs the log, keeps the high-water mark and the
    /// fence's summary, sends (unless fenced), starts snapshot pulls, steps
    /// the election down when the core cannot lead.
    pub fn perform(&mut self, core: &mut C, output: Output) -> Result<(), WalError> {
        match output {
            Output::SaveEpoch(epoch) => {
                write_epoch(&self.epoch_path, epoch).map_err(|source| WalError::Io {
                    path: self.epoch_path.clone(),
                    source,
                })?;
            }
            Output::Truncate { from } => {
                let last = from.saturating_sub(1);
                let kept = Summary {
                    last_epoch: core.replica().entry(last).map_or(0, |e| e.epoch),
                    last_index: last,
                };
                // The cut entries were never committed (a leader replaces
                // only those): the mark comes down first, durably, unless
                // it still guards entries lost earlier.
                if self.lost.is_none() {
                    self.mark.lower(kept)?;
                }
                self.wal.truncate_from(from)?;
                self.written = kept;
            }
            Output::Append(entries) => {
                self.wal.append(&entries)?;
                self.bytes_since += entries
                    .iter()
                    .map(|e| e.payload.len() as u64 + 24)
                    .sum::<u64>();
                if let Some(Entry { epoch, index, .. }) = entries.last() {
                    self.written = Summary {
                        last_epoch: *epoch,
                        last_index: *index,
                    };
                }
            }
            // The fsync blocks for milliseconds: it runs off the driver's
            // task, which shares the node's runtime with membership, the
            // election and the transport (issue 13). Nothing after it is
            // performed before it is done: the driver stops draining while
            // [`LogIo::syncing`].
            Output::Sync => match self.wal.begin_sync()? {
                None => self.synced(core)?,
                Some(pending) => {
                    self.syncing = Some(tokio::task::spawn_blocking(move || pending.run()));
                }
            },
            Output::Send { to, msg } => {
                // Nothing from an epoch the election has since promised
                // away leaves (see the module docs).
                if msg.epoch() < self.fence.epoch() {
                    return Ok(());
                }
                // A voter not heard of yet: nowhere to send.
                if to.ip().is_unspecified() || to.port() == 0 {
                    return Ok(());
                }
                tracing::trace!(%to, msg = %msg.brief(), "replication out");
                // Onto the open stream at once when it has room; else a
                // task waits for it (the first message to a peer dials).
                if let Some(sent) = self.channel.send_now(to, &msg) {
                    if let Err(e) = sent {
                        tracing::debug!(%to, error = %e, "replication send failed");
                    }
                    return Ok(());
                }
                let channel = self.channel.clone();
                tokio::spawn(async move {
                    if let Err(e) = channel.send(to, &msg).await {
                        tracing::debug!(%to, error = %e, "replication send failed");
                    }
                });
            }
            // The election gets the summary from the fence at each promise
            // (always current); an asynchronous `set_summary` could arrive
            // after a newer one and regress it.
            Output::Summary(_) => {}
            Output::CannotLead { epoch } => {
                tracing::warn!(epoch, "cannot fetch the up-to-date log; stepping down");
                let election = self.election.clone();
                tokio::spawn(async move {
                    let _ = election.step_down().await;
                });
            }
            Output::Committed { .. } => {}
            Output::PullSnapshot { from, index } => self.pull_snapshot(from, index),
            Output::ResetLog { base } => {
                // An installed snapshot (already durable) replaces the log:
                // entries it does not cover were not committed.
                let kept = Summary {
                    last_epoch: base.epoch,
                    last_index: base.index,
                };
                if self.lost.is_none() {
                    self.mark.lower(kept.min(self.written))?;
                }
                self.wal.reset_after(base.index)?;
                self.written = kept;
                self.bytes_since = 0;
            }
        }
        Ok(())
    }

    /// Whether an fsync is in progress: the driver must stop draining the
    /// core's outputs (they are performed in order, and the ones after a
    /// sync wait for it) until [`LogIo::handle`] has seen it finish.
    pub fn syncing(&self) -> bool {
        self.syncing.is_some()
    }

    /// What follows a completed fsync of the write-ahead log: the
    /// high-water mark, the election's durable summary and fence.
    fn synced(&mut self, core: &mut C) -> Result<(), WalError> {
        self.syncs += 1;
        self.mark.advance(self.written)?;
        if self.lost.is_some_and(|mark| self.written >= mark) {
            self.lost = None;
            tracing::info!(
                epoch = self.written.last_epoch,
                index = self.written.last_index,
                "caught up past the high-water mark; voting again"
            );
            self.caught_up = true;
        }
        let fence = self.fence.durable(&self.written);
        if fence > self.fenced {
            self.fenced = fence;
            core.fence(fence);
        }
        Ok(())
    }

    fn inbound(&mut self, core: &mut C, item: Inbound<Replication>) {
        match item {
            Inbound::Message { from, message, .. } => {
                tracing::trace!(from = %from.addr, msg = %message.brief(), "replication in");
                core.handle_message(Instant::now(), from.addr, message);
            }
            Inbound::Request { reply, .. } => reply.reject("replication takes no requests"),
            // Streams on this channel are snapshot pulls from peers.
            Inbound::Stream { stream, .. } => {
                tokio::spawn(crate::transfer::serve(self.snapshots.clone(), stream));
            }
        }
    }

    /// Snapshots the state machine once the schedule says so. The core
    /// takes its state here, between two inputs (a consistent point): a
    /// copy, or (DKV) the encoded bytes; what remains (encoding a copy,
    /// writing, syncing) runs on a blocking thread while the driver goes on
    /// serving.
    fn maybe_snapshot(&mut self, core: &mut C) {
        let applied = core.applied();
        // For a replica far behind: at most every few seconds, so one that
        // cannot keep up at all does not keep the leader snapshotting.
        let wanted = !self.snapshotting
            && self
                .wanted_at
                .is_none_or(|t| t.elapsed() >= WANTED_SNAPSHOT_EVERY)
            && core.replica().wants_snapshot();
        if wanted && applied > self.last_snapshot {
            self.wanted_at = Some(Instant::now());
            tracing::info!(applied, "snapshot for a replica far behind");
        }
        let due = wanted
            || self.snapshot_asked
            || self.schedule.due(
                applied.saturating_sub(self.last_snapshot),
                self.bytes_since,
                self.last_state_len,
            );
        if !due || self.snapshotting || applied <= self.last_snapshot {
            return;
        }
        self.snapshot_asked = false;
        self.snapshotting = true;
        self.bytes_since = 0;
        let taken = Instant::now();
        let (meta, state) = core.snapshot();
        tracing::debug!(
            index = meta.index,
            micros = taken.elapsed().as_micros() as u64,
            "snapshot state taken on the driver's task"
        );
        let snapshots = self.snapshots.clone();
        let done = self.background_tx.clone();
        tokio::task::spawn_blocking(move || {
            let result = snapshots
                .save_with(meta, |out| state.write_into(out))
                .map(|saved| (meta, saved.file_len, saved.state_len))
                .map_err(|e| e.to_string());
            let _ = done.send(Background::Saved(result));
        });
    }

    /// Snapshot work finished off this task.
    fn background_done(
        &mut self,
        core: &mut C,
        done: Background<C::State>,
    ) -> Result<(), WalError> {
        match done {
            Background::Saved(Ok((meta, file_len, state_len))) => {
                self.snapshotting = false;
                self.last_snapshot = meta.index;
                self.last_state_len = state_len;
                core.snapshot_saved(meta.index, file_len);
                // The log before the snapshot is no longer needed on disk;
                // in memory, a catch-up tail stays for replicas a little
                // behind.
                core.compact_log(core.replica().compaction_point(meta.index));
                self.wal.compact_to(meta.index)?;
                tracing::debug!(index = meta.index, "snapshot taken, log compacted");
            }
            Background::Saved(Err(why)) => {
                self.snapshotting = false;
                // Try again after as many entries again, not at once.
                self.last_snapshot = core.applied();
                tracing::error!(%why, "cannot write a snapshot; the log keeps growing");
            }
            // An abandoned pull that finished as it was abandoned.
            Background::Pulled(from, _)
                if self
                    .pulling
                    .as_ref()
                    .is_none_or(|(source, _)| *source != from) => {}
            Background::Pulled(_, result) => {
                self.pulling = None;
                match result {
                    Ok((meta, state, file_len)) => {
                        let started = Instant::now();
                        if core.install_snapshot(started, meta, state) {
                            self.last_snapshot = meta.index;
                            self.last_state_len = self.snapshots.newest_state_len();
                            core.snapshot_saved(meta.index, file_len);
                            tracing::info!(
                                index = meta.index,
                                took_ms = started.elapsed().as_millis() as u64,
                                "installed a snapshot from a peer"
                            );
                        }
                    }
                    Err(why) => {
                        tracing::warn!(%why, "snapshot pull failed; asked again at the next request");
                        core.pull_failed();
                    }
                }
            }
        }
        Ok(())
    }

    /// Pulls a snapshot from `from` off this task.
    ///
    /// One pull at a time: asked to pull from another node (a new leader;
    /// the old source may be dead or cut off, which its transfer would only
    /// show after the transport's idle timeout), the running pull is
    /// abandoned for the new one.
    fn pull_snapshot(&mut self, from: SocketAddr, index: u64) {
        match &self.pulling {
            Some((source, _)) if *source == from => return,
            Some((source, task)) => {
                tracing::info!(%source, %from, index, "snapshot pull abandoned for another source");
                task.abort();
            }
            None => tracing::info!(%from, index, "pulling a snapshot"),
        }
        let channel = self.channel.clone();
        let snapshots = self.snapshots.clone();
        let done = self.background_tx.clone();
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let pulled = crate::transfer::pull(&channel, &snapshots, from, index).await;
            let fetched = started.elapsed();
            // Decoding a large state takes a while: off the runtime's
            // workers, which serve the replication meanwhile.
            let state_bytes = pulled.as_ref().map_or(0, |(_, state, _)| state.len());
            let result = match pulled {
                Ok((meta, state, file_len)) => tokio::task::spawn_blocking(move || {
                    C::decode_state(&state)
                        .map(|state| (meta, state, file_len))
                        .map_err(|e| format!("the snapshot's state does not decode: {e}"))
                })
                .await
                .unwrap_or_else(|e| Err(format!("decoding the snapshot's state failed: {e}"))),
                Err(why) => Err(why),
            };
            tracing::info!(
                %from,
                fetched_ms = fetched.as_millis() as u64,
                decoded_ms = (started.elapsed() - fetched).as_millis() as u64,
                state_bytes,
                ok = result.is_ok(),
                "snapshot pulled"
            );
            let _ = done.send(Background::Pulled(from, result));
        });
        self.pulling = Some((from, task.abort_handle()));
    }

    /// Passes a fence the election raised on to the core.
    fn apply_fence(&mut self, core: &mut C) {
        let epoch = self.fence.epoch();
        if epoch > self.fenced {
            self.fenced = epoch;
            core.fence(epoch);
        }
    }

    fn address_of(&self, name: &NodeName) -> Option<SocketAddr> {
        self.voters.iter().find(|(n, _)| n == name).map(|(_, a)| *a)
    }

    fn leadership_event(&mut self, core: &mut C, event: LeadershipEvent) {
        let now = Instant::now();
        self.apply_fence(core);
        match event {
            LeadershipEvent::Elected { epoch, summaries } => {
                let until = self
                    .election
                    .lease()
                    .filter(|(e, _)| *e == epoch)
                    .map_or(now, |(_, until)| until);
                core.elected(now, epoch.0, summaries, until);
                self.elected = Some(epoch.0);
            }
            LeadershipEvent::Leader { name, epoch } if name != self.me => {
                if let Some(addr) = self.address_of(&name) {
                    core.follow(now, name, addr, epoch.0);
                }
            }
            LeadershipEvent::VotersChanged(set) => self.adopt_voters(core, &set),
            LeadershipEvent::Leader { .. } => {}
            LeadershipEvent::SteppedDown { epoch } => core.step_down(epoch.0),
            LeadershipEvent::LeaderLost => core.forget_leader(),
        }
    }

    /// The election decided `set`: the log counts it from now on. Voters
    /// keep the address membership gave them (newer than the set's).
    fn adopt_voters(&mut self, core: &mut C, set: &VoterSet) {
        if set.version <= self.voters_version {
            return;
        }
        let voters: Vec<(NodeName, SocketAddr)> = set
            .voters()
            .iter()
            .map(|v| {
                let addr = self.address_of(&v.name).unwrap_or(v.addr);
                (v.name.clone(), addr)
            })
            .collect();
        tracing::info!(
            version = set.version,
            voters = ?voters.iter().map(|(n, _)| n.to_string()).collect::<Vec<_>>(),
            "the log adopts the election's voter set"
        );
        core.set_voters(voters.clone());
        self.voters = voters;
        self.voters_version = set.version;
    }

    /// The replicas as the leader sees them: voters, then learners, each
    /// with how far its log is known to reach. Fails with
    /// [`VoterChangeError::NotLeader`] elsewhere (only the leader tracks
    /// the others).
    ///
    /// The log first adopts the voter set the election has decided by now:
    /// the event that reports it may still be on its way, and a caller that
    /// saw a change decided ([`LogIo::change_voters`]) must see it here
    /// (without this, removing the leader sometimes answered the set from
    /// before the removal).
    pub fn replicas(&mut self, core: &mut C) -> Result<Vec<ReplicaStatus>, VoterChangeError> {
        let decided = self.election.voters();
        self.adopt_voters(core, &decided);
        let replica = core.replica();
        if replica.leading().is_none() {
            return Err(VoterChangeError::NotLeader {
                leader: replica.leader(),
            });
        }
        let commit = replica.commit_index();
        let progress = replica.progress();
        let status = |name: &NodeName, role| {
            let applied_index = if *name == self.me {
                core.applied()
            } else {
                progress
                    .iter()
                    .find(|(n, _)| n == name)
                    .map_or(0, |(_, matched)| (*matched).min(commit))
            };
            ReplicaStatus {
                name: name.clone(),
                role,
                applied_index,
                lag: commit.saturating_sub(applied_index),
            }
        };
        let mut all: Vec<ReplicaStatus> = replica
            .voters()
            .map(|n| status(n, ReplicaRole::Voter))
            .collect();
        all.extend(replica.learners().map(|n| status(n, ReplicaRole::Learner)));
        Ok(all)
    }

    /// Asks the election for `change` after checking it
    /// ([`crate::voters::check`]) against what this leader knows: the
    /// decided set, membership, each learner's progress. Returns the voter
    /// set version the change gives once decided (the election reports it
    /// as [`LeadershipEvent::VotersChanged`]). The leader asked to remove
    /// itself hands leadership over instead and answers
    /// [`VoterChangeError::SteppedDown`]. A refusal changes nothing.
    ///
    /// What it needs of `core` is read before the returned future first
    /// waits, so the core is free again at once.
    pub fn change_voters(
        &mut self,
        core: &C,
        change: VoterChange,
    ) -> impl std::future::Future<Output = Result<u64, VoterChangeError>> + Send + '_ {
        let leader = core.replica().leader();
        let led = core.replica().leading();
        let commit = core.replica().commit_index();
        let progress = core.replica().progress();
        self.change_voters_as(change, leader, led, commit, progress)
    }

    async fn change_voters_as(
        &mut self,
        change: VoterChange,
        leader: Option<(NodeName, SocketAddr)>,
        led: Option<u64>,
        commit: u64,
        progress: Vec<(NodeName, u64)>,
    ) -> Result<u64, VoterChangeError> {
        let not_leader = || VoterChangeError::NotLeader {
            leader: leader.clone(),
        };
        let led = led.ok_or_else(not_leader)?;
        if !self.election.leads(Epoch(led)) {
            return Err(not_leader());
        }
        let decided = self.election.voters();
        let members = self
            .membership
            .members()
            .await
            .map_err(|e| VoterChangeError::Election(format!("membership: {e}")))?;
        let mut known: BTreeSet<NodeName> = members.iter().map(|m| m.name.clone()).collect();
        known.insert(self.me.clone());
        let mut live: BTreeSet<NodeName> = members
            .iter()
            .filter(|m| m.state == MemberState::Alive && !m.tags.contains_key(WITHDRAWN_TAG))
            .map(|m| m.name.clone())
            .collect();
        if self.election.withdrawn().is_none() {
            live.insert(self.me.clone());
        }
        let voters: BTreeSet<NodeName> = decided.voters().iter().map(|v| v.name.clone()).collect();
        let learner_lag = progress
            .into_iter()
            .find(|(n, _)| n == change.name())
            .map(|(_, matched)| commit.saturating_sub(matched));
        let plan = crate::voters::check(
            &change,
            &Context {
                me: &self.me,
                voters: &voters,
                live: &live,
                members: &known,
                pending: decided.version != self.voters_version,
                learner_lag,
                max_lag: MAX_PROMOTION_LAG,
            },
        )?;
        let refused = |e: DriverError| match e {
            DriverError::Refused(clustron_election::Error::ChangeInProgress) => {
                VoterChangeError::InProgress
            }
            DriverError::Refused(clustron_election::Error::NotLeader { .. }) => not_leader(),
            other => VoterChangeError::Election(other.to_string()),
        };
        match (plan, change) {
            (Plan::StepDownFirst, _) => {
                tracing::info!("asked to remove this leader from the voters: handing over first");
                self.election.step_down().await.map_err(refused)?;
                Err(VoterChangeError::SteppedDown(self.me.clone()))
            }
            (Plan::Change, VoterChange::Add(name)) => {
                let addr = members
                    .iter()
                    .find(|m| m.name == name)
                    .map_or(Voter::UNKNOWN_ADDR, |m| m.addr);
                tracing::info!(%name, "adding a voter");
                self.election
                    .add_voter(Voter { name, addr })
                    .await
                    .map_err(refused)?;
                Ok(decided.version + 1)
            }
            (Plan::Change, VoterChange::Remove(name)) => {
                tracing::info!(%name, "removing a voter");
                self.election.remove_voter(&name).await.map_err(refused)?;
                Ok(decided.version + 1)
            }
        }
    }

    /// Catches up with the election after missed events.
    fn sync_leadership(&mut self, core: &mut C) {
        let decided = self.election.voters();
        self.adopt_voters(core, &decided);
        match self.election.leader() {
            Some((name, epoch)) if name != self.me => {
                if let Some(addr) = self.address_of(&name) {
                    core.follow(Instant::now(), name, addr, epoch.0);
                }
            }
            // This node leads, but the grants' summaries that a new leader
            // must adopt are gone with the missed event: lead again through
            // a fresh election rather than guess.
            Some((_, epoch)) if self.elected != Some(epoch.0) => {
                tracing::info!("leading without the log's view change; stepping down to redo it");
                let election = self.election.clone();
                tokio::spawn(async move {
                    let _ = election.step_down().await;
                });
            }
            Some(_) => {}
            None => core.forget_leader(),
        }
    }

    /// Alive non-voters receive the log as learners; voters are sent to at
    /// the address membership gives (a voter that was down when this node
    /// started had none).
    async fn refresh_learners(&mut self, core: &mut C) {
        let Ok(members) = self.membership.members().await else {
            return;
        };
        for member in members.iter().filter(|m| m.name != self.me) {
            let Some(known) = self
                .voters
                .iter_mut()
                .find(|(name, _)| *name == member.name)
            else {
                continue;
            };
            if known.1 != member.addr {
                known.1 = member.addr;
                core.set_voter_addr(&member.name, member.addr);
                // The leader's address is the clients' redirect hint.
                if let Some((leader, epoch)) = self.election.leader() {
                    if leader == member.name {
                        core.follow(Instant::now(), leader, member.addr, epoch.0);
                    }
                }
            }
        }
        let learners: Vec<(NodeName, SocketAddr)> = members
            .into_iter()
            .filter(|m| m.state == MemberState::Alive && m.name != self.me)
            .filter(|m| self.voters.iter().all(|(v, _)| *v != m.name))
            .map(|m| (m.name, m.addr))
            .collect();
        core.set_learners(learners);
    }
}

/// Checks a snapshot's state bytes with `decode` at open, so a snapshot
/// that does not restore the state machine fails the start (before the
/// node joins), naming the snapshot folder.
pub fn check_state<T>(
    open: &OpenLog,
    bytes: &[u8],
    decode: impl FnOnce(&[u8]) -> Result<T, String>,
) -> Result<T, StartError> {
    decode(bytes).map_err(|why| {
        StartError::Snapshot(SnapshotError::Damaged {
            path: open.snapshots.dir().to_owned(),
            why: format!(
                "the state of snapshot {} does not restore: {why}",
                open.base.index
            ),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::SnapshotSchedule;

    const MIB: u64 = 1 << 20;

    #[test]
    fn a_snapshot_waits_for_the_log_to_reach_half_the_last_one() {
        let schedule = SnapshotSchedule::default();
        // No snapshot yet (or its length unknown): entries alone decide.
        assert!(!schedule.due(9_999, MIB, 0));
        assert!(schedule.due(10_000, MIB, 0));
        // A 30 MB state after 10,000 entries of 3.3 MB: not yet; at 15 MB of log: due.
        assert!(!schedule.due(10_000, 3 * MIB, 30 * MIB));
        assert!(schedule.due(45_000, 15 * MIB, 30 * MIB));
        // The byte bound scales with the state: 64 MiB of log after a 1 GiB snapshot is not enough.
        assert!(schedule.due(100, 64 * MIB, 10 * MIB));
        assert!(!schedule.due(100, 64 * MIB, 1024 * MIB));
        assert!(schedule.due(100, 512 * MIB, 1024 * MIB));
    }

    #[test]
    fn zero_turns_each_bound_off() {
        let by_entries = SnapshotSchedule {
            entries: 10,
            bytes: 0,
            percent_of_last: 0,
        };
        assert!(by_entries.due(10, 0, 100 * MIB));
        assert!(!by_entries.due(9, u64::MAX, 100 * MIB));
        let on_demand = SnapshotSchedule {
            entries: 0,
            bytes: 0,
            percent_of_last: 50,
        };
        assert!(!on_demand.due(u64::MAX, u64::MAX, 0));
    }
}
