//! The tokio driver of the key-value server: one task owns the sans-IO
//! [`Server`] and a `clustron_log::io::LogIo`, which performs the log's
//! outputs (the write-ahead log, fsync, the `LOG` transport channel,
//! snapshots) and feeds the server the election's decisions, replication
//! messages and time; this file adds what is the store's own: client
//! requests, replies and watch streams, and the store's figures.
//!
//! The fence shared with the election is the log's
//! ([`clustron_log::io::Fence`], from [`OpenStore::fence`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use clustron_election::{Election, NodeName};
use clustron_log::core::ReplicatedCore;
use clustron_log::io::{check_state, Fence, LogIo, OpenLog, SnapshotSchedule};
use clustron_log::voters::{ReplicaStatus, VoterChange, VoterChangeError};
use clustron_log::wal::WalError;
use clustron_membership::Membership;
use clustron_transport::Endpoint;
use tokio::sync::{mpsc, oneshot};

pub use clustron_log::StartError;

use crate::core::server::{
    ClientOp, Divergence, MachineState, Reply, RequestId, Server, ServerConfig, ServerError,
    ServerOutput,
};
use crate::core::watch::{WatchId, WatchRequest};
use crate::kv::{Event, KvError};

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
    /// Bytes of keys and values of the live versions only (what a read of
    /// everything returns; what no compaction frees).
    pub live_bytes: u64,
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
    /// Log entries held in memory: those after the newest snapshot, and the
    /// catch-up tail before it.
    pub log_entries: u64,
}

/// Most queued commands taken before acting on them at once.
const BATCH: usize = 512;

/// How deep a watcher's queue is before it falls back to history (and is
/// fed from it only once the queue is empty again): what a reader that
/// stops reading can hold on the node is this many revisions, or one
/// catch-up chunk.
const WATCH_QUEUE: usize = 16;

enum Command {
    Request(ClientOp, oneshot::Sender<Result<Reply, ServerError>>),
    Watch(WatchRequest, oneshot::Sender<mpsc::Receiver<WatchItem>>),
    Replicas(oneshot::Sender<Result<Vec<ReplicaStatus>, VoterChangeError>>),
    ChangeVoters(VoterChange, oneshot::Sender<Result<u64, VoterChangeError>>),
}

/// Handle to a node's key-value server. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Kv {
    commands: mpsc::Sender<Command>,
    election: Election,
    stats: tokio::sync::watch::Receiver<KvStats>,
    stopped: tokio::sync::watch::Receiver<Option<String>>,
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
        let OpenStore { mut log, restored } = store;
        let me = membership.name().clone();
        // By entries (`--snapshot-entries`) and by bytes of log, which
        // bounds memory, disk and restart replay when values are large.
        let schedule = SnapshotSchedule {
            entries: config.snapshot_entries,
            ..SnapshotSchedule::default()
        };
        let mut server = Server::new(
            config,
            me,
            voters.clone(),
            [],
            log.take_recovered(),
            Instant::now(),
        )?;
        if let Some(state) = restored {
            tracing::info!(
                index = log.snapshot_meta().index,
                "restored the store from its snapshot"
            );
            server.restore(state);
        }
        let io = LogIo::new(endpoint, membership, election, log, voters, schedule)?;
        let (commands, command_rx) = mpsc::channel(1024);
        let (stats_tx, stats) = tokio::sync::watch::channel(KvStats::default());
        let (stopped_tx, stopped) = tokio::sync::watch::channel(None);
        let driver = Driver {
            server,
            io,
            election: election.clone(),
            commands: command_rx,
            pending: HashMap::new(),
            next_id: 0,
            watchers: HashMap::new(),
            stats: stats_tx,
            stopped: stopped_tx,
        };
        tokio::spawn(driver.run());
        Ok(Kv {
            commands,
            election: election.clone(),
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

    /// The log's replicas as this node sees them, if it leads
    /// ([`LogIo::replicas`]).
    pub async fn replicas(&self) -> Result<Vec<ReplicaStatus>, VoterChangeError> {
        let (tx, rx) = oneshot::channel();
        let stopped =
            || VoterChangeError::Election("this node's key-value store has stopped".into());
        self.commands
            .send(Command::Replicas(tx))
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Makes one voter change on the leader ([`LogIo::change_voters`]) and
    /// waits up to `timeout` for the election to decide it; answers the
    /// replicas then. [`VoterChangeError::Timeout`] when it was asked for
    /// but not seen decided in time (it may still be).
    pub async fn change_voters(
        &self,
        change: VoterChange,
        timeout: Duration,
    ) -> Result<Vec<ReplicaStatus>, VoterChangeError> {
        // Subscribed before asking: the decision cannot slip past.
        let mut events = self.election.subscribe();
        let (tx, rx) = oneshot::channel();
        let stopped =
            || VoterChangeError::Election("this node's key-value store has stopped".into());
        self.commands
            .send(Command::ChangeVoters(change, tx))
            .await
            .map_err(|_| stopped())?;
        let version = rx.await.map_err(|_| stopped())??;
        let decided = tokio::time::timeout(timeout, async {
            while self.election.voters().version < version {
                if events.recv().await.is_none() {
                    return false;
                }
            }
            true
        })
        .await;
        match decided {
            Ok(true) => self.replicas().await,
            Ok(false) => Err(stopped()),
            Err(_) => Err(VoterChangeError::Timeout { version }),
        }
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
/// log ([`OpenLog`]: its grants must carry the durable summary from the
/// very first promise) and the store restored from the newest snapshot,
/// checked here so a snapshot that does not decode fails the start before
/// the node joins.
#[derive(Debug)]
pub struct OpenStore {
    log: OpenLog,
    restored: Option<MachineState>,
}

impl OpenStore {
    /// Opens (or creates) the log in `data_dir` ([`OpenLog::open`]) and
    /// decodes the store of its newest snapshot.
    pub fn open(data_dir: &Path) -> Result<OpenStore, StartError> {
        let mut log = OpenLog::open(data_dir)?;
        let restored = match log.take_snapshot() {
            Some(bytes) => Some(check_state(&log, &bytes, Server::decode_state)?),
            None => None,
        };
        Ok(OpenStore { log, restored })
    }

    /// The hook to start the election with.
    pub fn fence(&self) -> Fence {
        self.log.fence()
    }

    /// Why this node must start withdrawn from the election, if it must
    /// ([`OpenLog::lost_tail`]). The key-value server rejoins the election
    /// once it has caught up past its high-water mark.
    pub fn lost_tail(&self) -> Option<String> {
        self.log.lost_tail()
    }
}

struct Watcher {
    tx: mpsc::Sender<WatchItem>,
}

struct Driver {
    server: Server,
    io: LogIo<Server>,
    election: Election,
    commands: mpsc::Receiver<Command>,
    pending: HashMap<RequestId, oneshot::Sender<Result<Reply, ServerError>>>,
    next_id: RequestId,
    watchers: HashMap<WatchId, Watcher>,
    stats: tokio::sync::watch::Sender<KvStats>,
    stopped: tokio::sync::watch::Sender<Option<String>>,
}

impl Driver {
    async fn run(mut self) {
        self.io.prepare(&mut self.server).await;
        let mut catch_up = tokio::time::interval(Duration::from_millis(20));
        let mut sweep = tokio::time::interval(Duration::from_secs(1));
        loop {
            if let Err(e) = self.drain() {
                self.stop(e).await;
                return;
            }
            self.io.after_drain(&mut self.server).await;
            let deadline = self.server.poll_timeout();
            tokio::select! {
                event = self.io.next(deadline) => match self.io.handle(&mut self.server, event).await {
                    Ok(true) => {}
                    Ok(false) => return,
                    Err(e) => {
                        self.stop(e).await;
                        return;
                    }
                },
                // While a voter that kept up is too far behind, requests
                // wait (back-pressure) so a failover stays quick.
                command = self.commands.recv(), if self.server.replica().admits() => match command {
                    Some(command) => {
                        self.command(command).await;
                        // Everything already queued shares one write and
                        // one fsync (group commit).
                        for _ in 0..BATCH {
                            let Ok(command) = self.commands.try_recv() else { break };
                            self.command(command).await;
                        }
                    }
                    None => return,
                },
                _ = catch_up.tick(), if self.server.watch_counts().1 > 0 => {
                    self.catch_up_watchers();
                }
                _ = sweep.tick() => self.drop_closed_watchers(),
            }
        }
    }

    /// The write-ahead log failed: the log withdraws this node from the
    /// election ([`LogIo::stop`]: a leader hands over at once, so another
    /// node takes over within about one lease); the store says why on
    /// `/readyz` and `/metrics`, and every request from now on fails as
    /// unavailable (clients move to another node). Whatever the failed
    /// output was followed by (replies, sends) was never performed:
    /// nothing undurable was acknowledged.
    async fn stop(&mut self, error: WalError) {
        let reason = self.io.stop(&error).await;
        self.stopped
            .send_replace(Some(format!("the key-value store stopped: {reason}")));
        for (_, tx) in self.pending.drain() {
            let _ = tx.send(Err(ServerError::NotReady(
                "this node's write-ahead log failed; try another node",
            )));
        }
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

    fn renew_lease(&mut self) {
        if let Some((epoch, until)) = self.election.lease() {
            self.server.lease_renewed(epoch.0, until);
        }
    }

    async fn command(&mut self, command: Command) {
        match command {
            Command::Replicas(reply) => {
                let _ = reply.send(self.io.replicas(&mut self.server));
            }
            Command::ChangeVoters(change, reply) => {
                let _ = reply.send(self.io.change_voters(&self.server, change).await);
            }
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

    /// Performs the server's outputs in order.
    fn drain(&mut self) -> Result<(), WalError> {
        // Outputs after an fsync wait for it (performed in order).
        while !self.io.syncing() {
            let Some(output) = self.server.poll_output() else {
                break;
            };
            match output {
                ServerOutput::Log(output) => self.io.perform(&mut self.server, output)?,
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
            live_bytes: store.size_bytes() - store.history_bytes(),
            watchers: watchers as u64,
            watchers_behind: behind as u64,
            syncs: self.io.stats().syncs,
            wal_segments: self.io.stats().wal_segments,
            diverged,
            snapshot_index: self.io.last_snapshot(),
            log_entries: self.server.replica().last_index()
                - self.server.replica().snapshot().index,
        });
        Ok(())
    }
}
