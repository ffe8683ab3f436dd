//! The tokio driver of the key-value server: one task owns the sans-IO
//! [`Server`], performs its outputs in order (the write-ahead log, fsync,
//! the `DKV` transport channel, replies, watch streams) and feeds it the
//! election's decisions, replication messages, client requests and time.
//!
//! The fence shared with the election ([`Fence`], a
//! [`clustron_election::PromiseHook`]) is what makes a new leader's view
//! change safe on real threads: the election task sets the fence and reads
//! the durable summary under one lock, and this task updates the summary
//! after each fsync and checks the fence under the same lock before any
//! acknowledgement leaves.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clustron_election::{Election, Epoch, LeadershipEvent, NodeName, PromiseHook};
use clustron_membership::{MemberState, Membership, Notification};
use clustron_transport::{Channel, ChannelId, Endpoint, Inbound, Inbox, Protocol};
use tokio::sync::{mpsc, oneshot};

use crate::core::server::{
    ClientOp, Divergence, MachineState, Reply, RequestId, Server, ServerConfig, ServerError,
    ServerOutput,
};
use crate::core::watch::{WatchId, WatchRequest};
use crate::core::{Entry, Message, Output as LogOutput, Recovered, SnapshotMeta, Summary};
use crate::kv::{Event, KvError};
use crate::snapshot::Snapshots;
use crate::wal::{HighWaterMark, Wal, WalOptions};

/// The replication protocol on the transport's `DKV` channel.
#[derive(Debug)]
pub struct Replication;

impl Protocol for Replication {
    const CHANNEL: ChannelId = ChannelId::DKV;
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
/// [`PromiseHook`]) and the key-value driver.
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

/// What a watcher's stream receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchItem {
    /// Changes, whole revisions, in order.
    Events(Vec<Event>),
    /// The watch ended (its next revision was compacted).
    Cancelled(KvError),
}

/// Figures of a node's key-value server, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KvStats {
    /// Store revision applied here.
    pub revision: u64,
    /// Store compaction point.
    pub compacted: u64,
    /// Log index applied.
    pub applied: u64,
    /// Log commit index known here.
    pub commit: u64,
    /// Last log index held here.
    pub log_last: u64,
    /// Bytes of keys and values, all versions.
    pub store_bytes: u64,
    /// Watchers on this node.
    pub watchers: u64,
    /// Of which fed from history.
    pub watchers_behind: u64,
    /// Write-ahead log fsyncs since start.
    pub syncs: u64,
    /// Write-ahead log segment files.
    pub wal_segments: u64,
    /// Set when this replica found its state differs from the leader's.
    pub diverged: Option<Divergence>,
    /// The log index the newest snapshot covers.
    pub snapshot_index: u64,
    /// Log entries held in memory and on disk (those after the snapshot).
    pub log_entries: u64,
}

/// Snapshot work done off the driver's task.
enum Background {
    /// A snapshot was written (or not).
    Saved(Result<SnapshotMeta, String>),
    /// A snapshot was pulled from a peer and saved (or not).
    Pulled(Result<(SnapshotMeta, MachineState), String>),
}

/// Most queued inputs taken before acting on them at once.
const BATCH: usize = 512;

/// How deep a watcher's queue is before it falls back to history (and is
/// fed from it only once the queue is empty again): what a reader that
/// stops reading can hold on the node is this many revisions, or one
/// catch-up chunk.
const WATCH_QUEUE: usize = 16;

enum Command {
    Request(ClientOp, oneshot::Sender<Result<Reply, ServerError>>),
    Watch(WatchRequest, oneshot::Sender<mpsc::Receiver<WatchItem>>),
}

/// Handle to a node's key-value server. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Kv {
    commands: mpsc::Sender<Command>,
    stats: tokio::sync::watch::Receiver<KvStats>,
    stopped: tokio::sync::watch::Receiver<Option<String>>,
}

/// Why the key-value server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The write-ahead log or the epoch file.
    #[error(transparent)]
    Wal(#[from] crate::wal::WalError),
    /// The epoch file.
    #[error("log epoch file {path}: {source}")]
    Epoch {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The transport channel.
    #[error(transparent)]
    Transport(#[from] clustron_transport::Error),
    /// Bad replication settings.
    #[error(transparent)]
    Config(#[from] crate::core::ConfigError),
    /// The snapshots could not be read.
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::SnapshotError),
}

impl Kv {
    /// Starts the server: recovers the log from `data_dir`, then replicates
    /// among `voters` (and the alive non-voters of `membership`, as
    /// learners), led by `election`'s leader. `fence` must be the hook the
    /// election was started with.
    pub async fn start(
        endpoint: &Endpoint,
        membership: &Membership,
        election: &Election,
        store: OpenStore,
        voters: Vec<(NodeName, SocketAddr)>,
        config: ServerConfig,
    ) -> Result<Kv, StartError> {
        let OpenStore {
            wal,
            snapshots,
            restored,
            mark,
            lost,
            entries,
            epoch,
            epoch_path,
            written,
            fence,
        } = store;
        let me = membership.name().clone();
        let inbox = endpoint.register::<Replication>()?;
        let snapshot_entries = config.snapshot_entries;
        let base = restored
            .as_ref()
            .map_or(SnapshotMeta::default(), |(m, _)| *m);
        let mut server = Server::new(
            config,
            me.clone(),
            voters.clone(),
            [],
            Recovered {
                epoch,
                snapshot: base,
                entries,
            },
            Instant::now(),
        )?;
        if let Some((meta, state)) = restored {
            tracing::info!(index = meta.index, "restored the store from its snapshot");
            server.restore(state);
        }
        let (background_tx, background) = mpsc::unbounded_channel();
        let (commands, command_rx) = mpsc::channel(1024);
        let (stats_tx, stats) = tokio::sync::watch::channel(KvStats::default());
        let (stopped_tx, stopped) = tokio::sync::watch::channel(None);
        let driver = Driver {
            server,
            wal,
            snapshots,
            snapshot_entries,
            last_snapshot: base.index,
            snapshotting: false,
            pulling: false,
            background,
            background_tx,
            mark,
            lost,
            caught_up: false,
            epoch_path,
            fence,
            fenced: epoch,
            written,
            me,
            voters,
            inbox,
            channel: endpoint.channel::<Replication>(),
            election: election.clone(),
            leadership: election.subscribe(),
            membership: membership.clone(),
            changes: membership.subscribe(),
            commands: command_rx,
            pending: HashMap::new(),
            next_id: 0,
            watchers: HashMap::new(),
            stats: stats_tx,
            stopped: stopped_tx,
            syncs: 0,
            elected: None,
            syncing: None,
        };
        tokio::spawn(driver.run());
        Ok(Kv {
            commands,
            stats,
            stopped,
        })
    }

    /// The server's current figures.
    pub fn stats(&self) -> KvStats {
        *self.stats.borrow()
    }

    /// Why the server stopped (its write-ahead log failed), if it did. A
    /// stopped server has withdrawn this node from the election: it neither
    /// leads nor votes, and every request fails as unavailable, which sends
    /// clients to another node.
    pub fn stopped(&self) -> Option<String> {
        self.stopped.borrow().clone()
    }

    /// Runs one client operation.
    pub async fn request(&self, op: ClientOp) -> Result<Reply, ServerError> {
        let (tx, rx) = oneshot::channel();
        let stopped = || {
            ServerError::NotReady(
                "this node's key-value store has stopped (see its /readyz); try another node",
            )
        };
        self.commands
            .send(Command::Request(op, tx))
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Starts a watch; its changes arrive on the receiver until it is
    /// dropped.
    pub async fn watch(&self, request: WatchRequest) -> Option<mpsc::Receiver<WatchItem>> {
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::Watch(request, tx)).await.ok()?;
        rx.await.ok()
    }
}

/// A node's key-value storage, opened before the election starts: the
/// election's grants must carry the log's durable summary from the very
/// first promise (an empty one would hide this voter's entries from a new
/// leader), and its fence starts at the saved epoch.
#[derive(Debug)]
pub struct OpenStore {
    wal: Wal,
    snapshots: Snapshots,
    /// The newest valid snapshot, to restore the state machine from.
    restored: Option<(SnapshotMeta, MachineState)>,
    mark: HighWaterMark,
    /// The high-water mark, when the log opened below it.
    lost: Option<Summary>,
    entries: Vec<Entry>,
    epoch: u64,
    epoch_path: PathBuf,
    written: Summary,
    fence: Fence,
}

impl OpenStore {
    /// Opens (or creates) the write-ahead log, its high-water mark and the
    /// epoch file in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<OpenStore, StartError> {
        let snapshots = Snapshots::open(&data_dir.join("snapshots"))?;
        let restored = match snapshots.load()? {
            Some(loaded) => {
                for (path, why) in &loaded.skipped {
                    tracing::error!(
                        file = %path.display(),
                        %why,
                        "skipped a damaged snapshot; starting from an older one"
                    );
                }
                let state = MachineState::decode(&loaded.state).map_err(|e| {
                    StartError::Snapshot(crate::snapshot::SnapshotError::Damaged {
                        path: data_dir.join("snapshots"),
                        why: format!(
                            "the state of snapshot {} does not decode: {e}",
                            loaded.meta.index
                        ),
                    })
                })?;
                Some((loaded.meta, state))
            }
            None => None,
        };
        let base = restored
            .as_ref()
            .map_or(SnapshotMeta::default(), |(m, _)| *m);
        let wal_dir = data_dir.join("wal");
        let (mut wal, recovered) = Wal::open(&wal_dir, WalOptions::default())?;
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
            return Err(StartError::Wal(crate::wal::WalError::Corrupt {
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
        Ok(OpenStore {
            wal,
            snapshots,
            restored,
            mark,
            lost,
            entries,
            epoch,
            epoch_path,
            written,
            fence,
        })
    }

    /// The hook to start the election with.
    pub fn fence(&self) -> Fence {
        self.fence.clone()
    }

    /// Why this node must start withdrawn from the election, if it must:
    /// its log opened below its high-water mark, so it lost entries it had
    /// acknowledged, and a grant would understate what it promised (a new
    /// leader could then miss a committed entry). The key-value server
    /// rejoins the election once it has caught up past the mark.
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

/// The result of the fsync in progress (never called without one).
async fn wait_sync(
    syncing: &mut Option<tokio::task::JoinHandle<Result<(), crate::wal::WalError>>>,
) -> Result<(), crate::wal::WalError> {
    match syncing.as_mut() {
        Some(handle) => handle.await.unwrap_or_else(|e| {
            Err(crate::wal::WalError::Io {
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

struct Watcher {
    tx: mpsc::Sender<WatchItem>,
}

struct Driver {
    server: Server,
    wal: Wal,
    snapshots: Snapshots,
    /// Snapshot every this many applied entries (0: never).
    snapshot_entries: u64,
    /// The index the newest snapshot covers.
    last_snapshot: u64,
    /// A snapshot is being written.
    snapshotting: bool,
    /// A snapshot is being pulled from a peer.
    pulling: bool,
    /// Results of the snapshot work done off this task.
    background: mpsc::UnboundedReceiver<Background>,
    background_tx: mpsc::UnboundedSender<Background>,
    /// Raised after every sync; see [`crate::wal::mark`].
    mark: HighWaterMark,
    /// The mark this node must catch up to before it votes again.
    lost: Option<Summary>,
    /// Caught up past the mark: rejoin the election (from the loop, in
    /// order with a later withdrawal, never after it).
    caught_up: bool,
    epoch_path: PathBuf,
    fence: Fence,
    /// The fence last passed to the server.
    fenced: u64,
    /// The log as written (durable after the next sync).
    written: Summary,
    me: NodeName,
    voters: Vec<(NodeName, SocketAddr)>,
    inbox: Inbox<Replication>,
    channel: Channel<Replication>,
    election: Election,
    leadership: clustron_election::Subscription,
    membership: Membership,
    changes: clustron_membership::Subscription,
    commands: mpsc::Receiver<Command>,
    pending: HashMap<RequestId, oneshot::Sender<Result<Reply, ServerError>>>,
    next_id: RequestId,
    watchers: HashMap<WatchId, Watcher>,
    stats: tokio::sync::watch::Sender<KvStats>,
    stopped: tokio::sync::watch::Sender<Option<String>>,
    syncs: u64,
    /// The epoch the server was last told this node won.
    elected: Option<u64>,
    /// The write-ahead log's fsync in progress on a blocking thread: the
    /// server's later outputs wait for it (they are performed in order),
    /// while this task goes on taking inputs.
    syncing: Option<tokio::task::JoinHandle<Result<(), crate::wal::WalError>>>,
}

impl Driver {
    async fn run(mut self) {
        self.refresh_learners().await;
        self.sync_leadership();
        let mut catch_up = tokio::time::interval(Duration::from_millis(20));
        let mut sweep = tokio::time::interval(Duration::from_secs(1));
        loop {
            if let Err(e) = self.drain() {
                self.stop(e).await;
                return;
            }
            self.maybe_snapshot();
            if std::mem::take(&mut self.caught_up) {
                if let Err(e) = self.election.rejoin().await {
                    tracing::error!(error = %e, "cannot rejoin the election");
                }
            }
            let deadline = self
                .server
                .poll_timeout()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
            tokio::select! {
                item = self.inbox.recv() => match item {
                    Some(item) => {
                        self.apply_fence();
                        self.inbound(item);
                        // Everything already queued shares one write and
                        // one fsync (group commit).
                        for _ in 0..BATCH {
                            let Some(item) = self.inbox.try_recv() else { break };
                            self.inbound(item);
                        }
                    }
                    None => return,
                },
                event = self.leadership.recv() => match event {
                    Some(clustron_election::Notification::Event(event)) => self.leadership_event(event),
                    Some(clustron_election::Notification::Lagged(_)) => self.sync_leadership(),
                    None => return,
                },
                change = self.changes.recv() => match change {
                    Some(Notification::Event(_) | Notification::Lagged(_)) => self.refresh_learners().await,
                    None => return,
                },
                command = self.commands.recv() => match command {
                    Some(command) => {
                        self.command(command);
                        for _ in 0..BATCH {
                            let Ok(command) = self.commands.try_recv() else { break };
                            self.command(command);
                        }
                    }
                    None => return,
                },
                () = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)) => {
                    self.apply_fence();
                    self.server.handle_timeout(Instant::now());
                }
                synced = wait_sync(&mut self.syncing), if self.syncing.is_some() => {
                    self.syncing = None;
                    if let Err(e) = synced.and_then(|()| self.synced()) {
                        self.stop(e).await;
                        return;
                    }
                }
                Some(done) = self.background.recv() => {
                    if let Err(e) = self.background_done(done) {
                        self.stop(e).await;
                        return;
                    }
                }
                _ = catch_up.tick(), if self.server.watch_counts().1 > 0 => {
                    self.catch_up_watchers();
                }
                _ = sweep.tick() => {
                    self.drop_closed_watchers();
                    // The mark's fsync, at most once a second.
                    if let Err(e) = self.mark.sync() {
                        self.stop(e).await;
                        return;
                    }
                }
            }
        }
    }

    /// The write-ahead log failed: nothing more can be made durable, so
    /// this node may neither acknowledge, nor lead, nor vote (its grants
    /// would promise a log it cannot keep). It withdraws from the election
    /// (a leader hands over at once, so another node takes over within
    /// about one lease), says why on `/readyz` and `/metrics`, and every
    /// request from now on fails as unavailable (clients move to another
    /// node). Whatever the failed output was followed by (replies, sends)
    /// was never performed: nothing undurable was acknowledged.
    async fn stop(&mut self, error: crate::wal::WalError) {
        let reason = format!("the key-value store stopped: write-ahead log failed: {error}");
        tracing::error!(%reason, "stepping down, no longer voting or serving on this node");
        self.stopped.send_replace(Some(reason.clone()));
        for (_, tx) in self.pending.drain() {
            let _ = tx.send(Err(ServerError::NotReady(
                "this node's write-ahead log failed; try another node",
            )));
        }
        if let Err(e) = self.election.withdraw(reason).await {
            tracing::error!(error = %e, "cannot withdraw from the election");
        }
    }

    fn inbound(&mut self, item: Inbound<Replication>) {
        match item {
            Inbound::Message { from, message, .. } => {
                self.server
                    .handle_message(Instant::now(), from.addr, message);
            }
            Inbound::Request { reply, .. } => reply.reject("replication takes no requests"),
            // Streams on this channel are snapshot pulls from peers.
            Inbound::Stream { stream, .. } => {
                tokio::spawn(crate::transfer::serve(self.snapshots.clone(), stream));
            }
        }
    }

    /// Snapshots the state machine once `snapshot_entries` entries were
    /// applied since the last one. The store is encoded here, between two
    /// inputs (a consistent point; encoding in place costs a third of
    /// copying the store and freeing the copy); writing and syncing it, the
    /// slow part, run on a blocking thread while this task goes on serving.
    fn maybe_snapshot(&mut self) {
        let every = self.snapshot_entries;
        if every == 0 || self.snapshotting || self.server.applied() < self.last_snapshot + every {
            return;
        }
        self.snapshotting = true;
        let (meta, state) = self.server.snapshot_encoded();
        let snapshots = self.snapshots.clone();
        let done = self.background_tx.clone();
        tokio::task::spawn_blocking(move || {
            let result = snapshots
                .save(meta, &state)
                .map(|_| meta)
                .map_err(|e| e.to_string());
            let _ = done.send(Background::Saved(result));
        });
    }

    /// Snapshot work finished off this task.
    fn background_done(&mut self, done: Background) -> Result<(), crate::wal::WalError> {
        match done {
            Background::Saved(Ok(meta)) => {
                self.snapshotting = false;
                self.last_snapshot = meta.index;
                // The log before the snapshot is no longer needed: not in
                // memory, not on disk.
                self.server.compact_log(meta.index);
                self.wal.compact_to(meta.index)?;
                tracing::debug!(index = meta.index, "snapshot taken, log compacted");
            }
            Background::Saved(Err(why)) => {
                self.snapshotting = false;
                // Try again after as many entries again, not at once.
                self.last_snapshot = self.server.applied();
                tracing::error!(%why, "cannot write a snapshot; the log keeps growing");
            }
            Background::Pulled(result) => {
                self.pulling = false;
                match result {
                    Ok((meta, state)) => {
                        if self.server.install_snapshot(Instant::now(), meta, state) {
                            self.last_snapshot = meta.index;
                            tracing::info!(index = meta.index, "installed a snapshot from a peer");
                        }
                    }
                    Err(why) => tracing::warn!(%why, "snapshot pull failed; asked again later"),
                }
            }
        }
        Ok(())
    }

    /// Pulls a snapshot from `from` off this task.
    fn pull_snapshot(&mut self, from: SocketAddr, index: u64) {
        if self.pulling {
            return;
        }
        self.pulling = true;
        let channel = self.channel.clone();
        let snapshots = self.snapshots.clone();
        let done = self.background_tx.clone();
        tokio::spawn(async move {
            let result = crate::transfer::pull(&channel, &snapshots, from, index)
                .await
                .and_then(|(meta, state)| {
                    MachineState::decode(&state)
                        .map(|state| (meta, state))
                        .map_err(|e| format!("the snapshot's state does not decode: {e}"))
                });
            let _ = done.send(Background::Pulled(result));
        });
    }

    /// Feeds watchers behind their next chunk of history, with bounded
    /// work per call (writes go on between calls), and only those whose
    /// queue is empty: a reader that does not read is given nothing more.
    fn catch_up_watchers(&mut self) {
        let watchers = &self.watchers;
        self.server.catch_up_watchers(Instant::now(), |id| {
            watchers
                .get(&id)
                .is_some_and(|w| w.tx.capacity() == WATCH_QUEUE)
        });
    }

    /// Forgets watchers whose stream has gone (a quiet key would otherwise
    /// keep them until its next change).
    fn drop_closed_watchers(&mut self) {
        let closed: Vec<WatchId> = self
            .watchers
            .iter()
            .filter(|(_, w)| w.tx.is_closed())
            .map(|(id, _)| *id)
            .collect();
        for id in closed {
            self.watchers.remove(&id);
            self.server.cancel_watch(id);
        }
    }

    /// Passes a fence the election raised on to the server.
    fn apply_fence(&mut self) {
        let epoch = self.fence.epoch();
        if epoch > self.fenced {
            self.fenced = epoch;
            self.server.fence(epoch);
        }
    }

    fn renew_lease(&mut self) {
        if let Some((epoch, until)) = self.election.lease() {
            self.server.lease_renewed(epoch.0, until);
        }
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Request(op, reply) => {
                self.renew_lease();
                self.next_id += 1;
                let id = self.next_id;
                self.pending.insert(id, reply);
                self.server.request(Instant::now(), id, op);
            }
            Command::Watch(request, reply) => {
                let (tx, rx) = mpsc::channel(WATCH_QUEUE);
                let id = self.server.watch(request);
                self.watchers.insert(id, Watcher { tx });
                let _ = reply.send(rx);
                self.catch_up_watchers();
            }
        }
    }

    fn address_of(&self, name: &NodeName) -> Option<SocketAddr> {
        self.voters.iter().find(|(n, _)| n == name).map(|(_, a)| *a)
    }

    fn leadership_event(&mut self, event: LeadershipEvent) {
        let now = Instant::now();
        self.apply_fence();
        match event {
            LeadershipEvent::Elected { epoch, summaries } => {
                let until = self
                    .election
                    .lease()
                    .filter(|(e, _)| *e == epoch)
                    .map_or(now, |(_, until)| until);
                self.server.elected(now, epoch.0, summaries, until);
                self.elected = Some(epoch.0);
            }
            LeadershipEvent::Leader { name, epoch } if name != self.me => {
                if let Some(addr) = self.address_of(&name) {
                    self.server.follow(now, name, addr, epoch.0);
                }
            }
            LeadershipEvent::Leader { .. } | LeadershipEvent::VotersChanged(_) => {}
            LeadershipEvent::SteppedDown { epoch } => self.server.step_down(epoch.0),
            LeadershipEvent::LeaderLost => self.server.forget_leader(),
        }
    }

    /// Catches up with the election after missed events.
    fn sync_leadership(&mut self) {
        match self.election.leader() {
            Some((name, epoch)) if name != self.me => {
                if let Some(addr) = self.address_of(&name) {
                    self.server.follow(Instant::now(), name, addr, epoch.0);
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
            None => self.server.forget_leader(),
        }
    }

    /// Alive non-voters receive the log as learners; voters are sent to at
    /// the address membership gives (a voter that was down when this node
    /// started had none).
    async fn refresh_learners(&mut self) {
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
                self.server.set_voter_addr(&member.name, member.addr);
                // The leader's address is the clients' redirect hint.
                if let Some((leader, epoch)) = self.election.leader() {
                    if leader == member.name {
                        self.server
                            .follow(Instant::now(), leader, member.addr, epoch.0);
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
        self.server.set_learners(learners);
    }

    /// What follows a completed fsync of the write-ahead log: the
    /// high-water mark, the election's durable summary and fence.
    fn synced(&mut self) -> Result<(), crate::wal::WalError> {
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
            self.server.fence(fence);
        }
        Ok(())
    }

    /// Performs the server's outputs in order, up to the next fsync: that
    /// runs on a blocking thread (see [`Driver::syncing`]) and the outputs
    /// after it are performed once it is done.
    fn drain(&mut self) -> Result<(), crate::wal::WalError> {
        if self.syncing.is_some() {
            return Ok(());
        }
        while let Some(output) = self.server.poll_output() {
            match output {
                ServerOutput::Log(LogOutput::SaveEpoch(epoch)) => {
                    write_epoch(&self.epoch_path, epoch).map_err(|source| {
                        crate::wal::WalError::Io {
                            path: self.epoch_path.clone(),
                            source,
                        }
                    })?;
                }
                ServerOutput::Log(LogOutput::Truncate { from }) => {
                    let last = from.saturating_sub(1);
                    let kept = Summary {
                        last_epoch: self.server.replica().entry(last).map_or(0, |e| e.epoch),
                        last_index: last,
                    };
                    // The cut entries were never committed (a leader
                    // replaces only those): the mark comes down first,
                    // durably, unless it still guards entries lost earlier.
                    if self.lost.is_none() {
                        self.mark.lower(kept)?;
                    }
                    self.wal.truncate_from(from)?;
                    self.written = kept;
                }
                ServerOutput::Log(LogOutput::Append(entries)) => {
                    self.wal.append(&entries)?;
                    if let Some(Entry { epoch, index, .. }) = entries.last() {
                        self.written = Summary {
                            last_epoch: *epoch,
                            last_index: *index,
                        };
                    }
                }
                // The fsync blocks for milliseconds: off this task, which
                // also serves membership's and the election's neighbours
                // on the node's runtime (issue 13). Nothing after it is
                // performed before it is done.
                ServerOutput::Log(LogOutput::Sync) => match self.wal.begin_sync()? {
                    None => self.synced()?,
                    Some(pending) => {
                        self.syncing = Some(tokio::task::spawn_blocking(move || pending.run()));
                        break;
                    }
                },
                ServerOutput::Log(LogOutput::Send { to, msg }) => {
                    // Nothing from an epoch the election has since promised
                    // away leaves (see the module docs).
                    if msg.epoch() < self.fence.epoch() {
                        continue;
                    }
                    // A voter not heard of yet: nowhere to send.
                    if to.ip().is_unspecified() || to.port() == 0 {
                        continue;
                    }
                    let channel = self.channel.clone();
                    tokio::spawn(async move {
                        if let Err(e) = channel.send(to, &msg).await {
                            tracing::debug!(%to, error = %e, "replication send failed");
                        }
                    });
                }
                // The election gets the summary from the fence at each
                // promise (always current); an asynchronous `set_summary`
                // could arrive after a newer one and regress it.
                ServerOutput::Log(LogOutput::Summary(_)) => {}
                ServerOutput::Log(LogOutput::CannotLead { epoch }) => {
                    tracing::warn!(epoch, "cannot fetch the up-to-date log; stepping down");
                    let election = self.election.clone();
                    tokio::spawn(async move {
                        let _ = election.step_down().await;
                    });
                }
                ServerOutput::Log(LogOutput::Committed { .. }) => {}
                ServerOutput::Log(LogOutput::PullSnapshot { from, index }) => {
                    self.pull_snapshot(from, index);
                }
                ServerOutput::Log(LogOutput::ResetLog { base }) => {
                    // An installed snapshot (already durable) replaces the
                    // log: entries it does not cover were not committed.
                    let kept = Summary {
                        last_epoch: base.epoch,
                        last_index: base.index,
                    };
                    if self.lost.is_none() {
                        self.mark.lower(kept.min(self.written))?;
                    }
                    self.wal.reset_after(base.index)?;
                    self.written = kept;
                }
                ServerOutput::Reply { id, result } => {
                    if let Some(tx) = self.pending.remove(&id) {
                        let _ = tx.send(result);
                    }
                }
                ServerOutput::Watch(delivery) => {
                    let Some(w) = self.watchers.get(&delivery.id) else {
                        self.server.cancel_watch(delivery.id);
                        continue;
                    };
                    let first = delivery.events.first().map_or(0, |e| e.kv.mod_revision);
                    match w.tx.try_send(WatchItem::Events(delivery.events)) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            self.server.watch_fell_behind(delivery.id, first);
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => {
                            self.watchers.remove(&delivery.id);
                            self.server.cancel_watch(delivery.id);
                        }
                    }
                }
                ServerOutput::WatchCancelled(cancelled) => {
                    if let Some(w) = self.watchers.remove(&cancelled.id) {
                        // The reason must reach the client even behind a
                        // full queue: it is what tells it to watch again.
                        let item = WatchItem::Cancelled(cancelled.reason);
                        if let Err(mpsc::error::TrySendError::Full(item)) = w.tx.try_send(item) {
                            tokio::spawn(async move {
                                let _ = w.tx.send(item).await;
                            });
                        }
                    }
                }
            }
        }
        let diverged = self.server.diverged();
        if diverged.is_some() && self.stats.borrow().diverged.is_none() {
            tracing::error!(
                divergence = ?diverged,
                "this replica's state differs from the leader's at the same log index; it refuses to serve: restore its data from its peers"
            );
        }
        let store = self.server.store();
        let (watchers, behind) = self.server.watch_counts();
        self.stats.send_replace(KvStats {
            revision: store.revision(),
            compacted: store.compacted(),
            applied: self.server.applied(),
            commit: self.server.replica().commit_index(),
            log_last: self.server.replica().last_index(),
            store_bytes: store.size_bytes(),
            watchers: watchers as u64,
            watchers_behind: behind as u64,
            syncs: self.syncs,
            wal_segments: self.wal.segment_count() as u64,
            diverged,
            snapshot_index: self.server.replica().snapshot().index,
            log_entries: self.server.replica().last_index()
                - self.server.replica().snapshot().index,
        });
        Ok(())
    }
}
