//! One simulated DKV node: the election [`Core`] and the key-value
//! [`Server`], wired as `clustron-dkv`'s two tokio drivers wire them
//! (`clustron_election::Election` with the key-value store's promise hook,
//! and `kv_driver`), on a log disk that loses what was not synced.
//!
//! ```text
//!  election Core ── Persist(promise) ──► promise store (synced) ──► hook: fence = max(fence, epoch),
//!                │                                                  grant carries the durable summary
//!                ── Send ──► network (a Grant of that epoch gets the hook's summary)
//!                ── Elected / Leader / SteppedDown / LeaderLost ──► leadership event queue
//!  leadership event ──► apply_fence; server.elected(lease) / follow / step_down / forget_leader
//!  Server ── SaveEpoch ──► epoch file (durable at once)
//!         ── Truncate / Append ──► LogDisk (unsynced) ── Sync ──► durable; summary := written;
//!                                                                 server.fence(fence) if raised
//!         ── Send ──► network, unless its epoch is below the fence
//!         ── Reply ──► the client that asked (after the Sync before it: outputs run in order)
//!         ── CannotLead ──► election.step_down
//! ```
//!
//! The two drivers are separate tasks joined by a lock (the fence) and a
//! broadcast channel (leadership events); here both run in one actor. The
//! key-value side usually handles the election's leadership events at
//! once, but a quarter of the time leaves them queued while it handles
//! other inputs, as its `select!` may: up to 2 ms, and one time in ten up
//! to 60 ms, as after a slow fsync (longer than the election's 20 ms lease
//! margin, so the server's own lease check is what keeps reads safe). The
//! order is drawn from the node's seeded RNG. The fence reaches the server
//! only where the key-value driver passes it on (`apply_fence`: before an
//! inbound replication message, a timeout or a leadership event, and after
//! each sync), never directly from a promise, exactly as in `kv_driver.rs`.
//!
//! Two ways a node steps aside, as the driver does them:
//!
//! - **High-water mark** (`wal::mark`): raised to the written position after
//!   every sync, lowered (before the cut) by a truncation, and kept across
//!   crashes. A node whose log reopens below it lost entries it may have
//!   acknowledged: its election starts withdrawn (no votes, no campaign)
//!   and rejoins once a sync takes the log back to the mark.
//! - **Disk failure** ([`KvNode::fail_disk`]): the next log write fails; the
//!   outputs after it are never performed, waiting requests and every later
//!   one get `NotReady`, replication stops, and the election withdraws.
//!
//! Snapshots, as `LogIo` takes and installs them: once
//! `ServerConfig::snapshot_entries` entries were applied since the last
//! one, the server's state is copied ([`Server::snapshot`]), written
//! durably at once (temp file, fsync, rename: all or nothing), and the log
//! before it compacted, in memory and on disk. A replica told to
//! `PullSnapshot` asks [`crate::kv_sim::Cluster`], which copies the source
//! node's durable snapshot to it when the two can reach each other (the
//! transfer takes no virtual time); the replica saves it durably, installs
//! it, and its log is reset after it (`ResetLog`). A restart loads the
//! snapshot and the log after it, as `OpenLog` does.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clustron_dkv::core::server::{
    ClientOp, MachineState, RequestId, Server, ServerError, ServerOutput,
};
use clustron_election::{
    Core, Epoch, MemStorage, Message as ElectionMessage, NodeName, Output as ElectionOutput,
    Storage,
};
use clustron_log::core::{Entry, Output as LogOutput, Recovered, SnapshotMeta, Summary};

use super::{Event, KvSetup, Msg};
use crate::election::{addr, name, priority};
use crate::replication::{LogDisk, LogWrite};
use crate::sim::{NodeId, Transmit};

/// The fence and durable summary the election's promise hook and the
/// key-value driver share (`kv_driver::Fence`).
#[derive(Debug, Clone, Default)]
struct Fence {
    /// Newest epoch the election promised (or the log saved).
    epoch: u64,
    /// Summary of the durable log, encoded.
    summary: Vec<u8>,
}

/// What a node's disks hold across a crash.
#[derive(Debug, Clone, Default)]
pub struct NodeStorage {
    /// The election's promises.
    pub promises: MemStorage,
    /// The log (and its epoch file).
    pub disk: LogDisk,
    /// The log's high-water mark; `None` for a node that never had one (it
    /// is created at the log's end, as `HighWaterMark::open` does).
    pub mark: Option<Summary>,
    /// The newest durable snapshot, if any: what it covers and the state.
    pub snapshot: Option<(SnapshotMeta, MachineState)>,
}

/// One node: election, key-value server, promise store and log disk.
#[derive(Debug)]
pub struct KvNode {
    me: NodeName,
    addr: SocketAddr,
    /// The clients, told when this node is elected (the topology stream).
    clients: Vec<SocketAddr>,
    incarnation: u64,
    election: Core,
    promises: MemStorage,
    server: Server,
    disk: LogDisk,
    fence: Fence,
    /// The fence last passed to the server.
    fenced: u64,
    /// The log as written (durable after the next sync).
    written: Summary,
    /// The high-water mark: the newest position ever made durable.
    mark: Summary,
    /// The mark this node must catch up to before it votes again.
    lost: Option<Summary>,
    /// Caught up past the mark: rejoin the election.
    caught_up: bool,
    /// The next log write fails ([`KvNode::fail_disk`]).
    disk_failing: bool,
    /// The key-value side stopped: its write-ahead log failed.
    stopped: bool,
    /// The newest durable snapshot.
    snapshot: Option<(SnapshotMeta, MachineState)>,
    /// Applied entries between snapshots (0: never).
    snapshot_every: u64,
    /// The applied index of the last snapshot taken, restored or installed.
    last_snapshot: u64,
    /// A snapshot the replica asked to pull: from whom, covering at least
    /// which index.
    pull: Option<(SocketAddr, u64)>,
    /// Whether this incarnation's state came from a snapshot (restored at
    /// start or installed), rather than from applying every entry.
    from_snapshot: bool,
    /// The epoch the server was last told this node won.
    elected: Option<u64>,
    voters: BTreeMap<NodeName, SocketAddr>,
    /// Leadership events the election reported and the key-value side has
    /// not handled yet (the broadcast channel between the two drivers).
    leadership: VecDeque<ElectionOutput>,
    /// When the key-value side handles the queued leadership events, if it
    /// put them off.
    leadership_at: Option<Instant>,
    /// Draws the key-value side's order of work.
    rng: fastrand::Rng,
    /// Client requests waiting for their reply: server id → (client,
    /// client's request id).
    pending: BTreeMap<RequestId, (SocketAddr, u64)>,
    next_id: RequestId,
    reported_commit: u64,
    now: Instant,
    transmits: VecDeque<Transmit<Msg>>,
    events: VecDeque<Event>,
}

impl KvNode {
    /// Node `id` of `cluster` starting from `storage` (its promise store and
    /// log disk) at local time `now`.
    ///
    /// # Panics
    ///
    /// If the server configuration is invalid (a test bug).
    pub fn new(
        cluster: &KvSetup,
        id: NodeId,
        incarnation: u64,
        storage: NodeStorage,
        seed: u64,
        now: Instant,
    ) -> Self {
        let NodeStorage {
            promises,
            disk,
            mark,
            snapshot,
        } = storage;
        let setup = &cluster.nodes;
        let persisted = match promises.load() {
            Ok(persisted) => persisted,
            Err(never) => match never {},
        };
        let mut election = Core::new(
            setup.election.clone(),
            name(id),
            priority(id),
            setup.voter_set(),
            persisted,
            seed,
            now,
        );
        // `OpenLog`: the newest snapshot, then the log after it (a log
        // that does not continue it, as after a crash between a pulled
        // snapshot's save and the log's reset, is reset after it).
        let recovered = recover(disk.synced(), snapshot.as_ref().map(|(meta, _)| *meta));
        let disk = LogDisk::from_recovered(recovered.clone());
        // `OpenStore::open`: the fence starts at the saved log epoch and
        // the summary at the recovered log's last entry.
        let written = recovered.entries.last().map_or(
            Summary {
                last_epoch: recovered.snapshot.epoch,
                last_index: recovered.snapshot.index,
            },
            |e| Summary {
                last_epoch: e.epoch,
                last_index: e.index,
            },
        );
        let base = recovered.snapshot.index;
        let fence = Fence {
            epoch: recovered.epoch,
            summary: written.encode(),
        };
        let fenced = recovered.epoch;
        // `OpenStore::lost_tail`: below the mark, start withdrawn.
        let mark = mark.unwrap_or(written);
        let lost = (written < mark).then_some(mark);
        if lost.is_some() {
            election.withdraw(now);
        }
        let mut server = Server::new(
            cluster.server_config(),
            name(id),
            setup.voter_addrs(),
            setup.learner_addrs(),
            recovered,
            now,
        )
        .expect("a valid server configuration");
        if let Some((_, state)) = &snapshot {
            server.restore(state.clone());
        }
        let mut events = VecDeque::new();
        if base > 0 {
            events.push_back(Event::SnapshotBase {
                incarnation,
                index: base,
            });
        }
        let mut node = Self {
            me: name(id),
            addr: addr(id),
            clients: (0..cluster.clients)
                .map(|c| addr(setup.nodes + c))
                .collect(),
            incarnation,
            election,
            promises,
            server,
            disk,
            fence,
            fenced,
            written,
            mark,
            lost,
            caught_up: false,
            disk_failing: false,
            stopped: false,
            snapshot,
            snapshot_every: cluster.server.snapshot_entries,
            last_snapshot: base,
            pull: None,
            from_snapshot: base > 0,
            elected: None,
            voters: setup.voter_addrs().collect(),
            leadership: VecDeque::new(),
            leadership_at: None,
            rng: fastrand::Rng::with_seed(seed ^ 0x6b76_5f64_7269_7665),
            pending: BTreeMap::new(),
            next_id: 0,
            reported_commit: base,
            now,
            transmits: VecDeque::new(),
            events,
        };
        node.pump();
        node
    }

    /// The election core.
    pub fn election(&self) -> &Core {
        &self.election
    }

    /// The election core, for commands and views.
    pub fn election_mut(&mut self) -> &mut Core {
        &mut self.election
    }

    /// The key-value server.
    pub fn server(&self) -> &Server {
        &self.server
    }

    /// The log disk.
    pub fn disk(&self) -> &LogDisk {
        &self.disk
    }

    /// The promise store.
    pub fn promises(&self) -> &MemStorage {
        &self.promises
    }

    /// Takes the node apart after a crash: what its disks hold.
    pub fn into_storage(self) -> NodeStorage {
        NodeStorage {
            promises: self.promises,
            disk: self.disk,
            mark: Some(self.mark),
            snapshot: self.snapshot,
        }
    }

    /// Its incarnation (restarts so far).
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// The newest durable snapshot, if any.
    pub fn snapshot(&self) -> Option<&(SnapshotMeta, MachineState)> {
        self.snapshot.as_ref()
    }

    /// Whether this incarnation's state came from a snapshot (restored at
    /// start or installed from a peer) rather than from applying every
    /// entry from the first.
    pub fn state_from_snapshot(&self) -> bool {
        self.from_snapshot
    }

    /// The snapshot pull the replica asked for and nobody served yet: the
    /// source's address and the index it must cover. Taken: the replica
    /// asks again later if it still needs one.
    pub fn take_pull(&mut self) -> Option<(SocketAddr, u64)> {
        self.pull.take()
    }

    /// A pulled snapshot arrived (`LogIo`'s `Background::Pulled`): saved
    /// durably first (as `transfer::pull` does), then installed if it is
    /// ahead of what this node applied.
    ///
    /// # Panics
    ///
    /// If the install moved the applied index backwards.
    pub fn snapshot_pulled(&mut self, now: Instant, meta: SnapshotMeta, state: MachineState) {
        self.now = now;
        if self.stopped {
            return;
        }
        if self
            .snapshot
            .as_ref()
            .is_none_or(|(m, _)| m.index < meta.index)
        {
            self.snapshot = Some((meta, state.clone()));
        }
        let before = self.server.applied();
        self.apply_fence();
        if self.server.install_snapshot(now, meta, state) {
            assert!(
                self.server.applied() >= before,
                "{}: installing the snapshot at {} moved the applied index back from {before}",
                self.me,
                meta.index
            );
            self.last_snapshot = meta.index;
            self.from_snapshot = true;
            self.reported_commit = self.reported_commit.max(meta.index);
            self.events.push_back(Event::SnapshotBase {
                incarnation: self.incarnation,
                index: meta.index,
            });
        }
        self.pump();
    }

    /// The mark this node lost entries below and must catch up to before
    /// it votes again, if it lost any.
    pub fn lost(&self) -> Option<Summary> {
        self.lost
    }

    /// Whether the key-value side stopped (its log write failed).
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Whether its log disk fails or has failed.
    pub fn disk_failed(&self) -> bool {
        self.disk_failing
    }

    /// The log disk fails: the next write to it (append, truncate, sync,
    /// epoch) fails, and the key-value side stops there.
    pub fn fail_disk(&mut self) {
        self.disk_failing = true;
    }

    /// The highest commit index this incarnation reported.
    pub fn reported_commit(&self) -> u64 {
        self.reported_commit
    }

    /// An election message arrived.
    pub(super) fn election_message(
        &mut self,
        now: Instant,
        from: SocketAddr,
        msg: ElectionMessage,
    ) {
        self.now = now;
        self.election.handle_message(now, from, msg);
        self.pump();
    }

    /// A replication message arrived (the key-value driver's `inbound`).
    pub(super) fn log_message(
        &mut self,
        now: Instant,
        from: SocketAddr,
        msg: clustron_log::core::Message,
    ) {
        self.now = now;
        if self.stopped {
            // Its task ended: nothing reads the replication channel.
            return;
        }
        self.apply_fence();
        self.server.handle_message(now, from, msg);
        self.pump();
    }

    /// A client request arrived (the driver's `command`: the lease as the
    /// election holds it now, then the request).
    pub(super) fn client_request(&mut self, now: Instant, from: SocketAddr, id: u64, op: ClientOp) {
        self.now = now;
        if self.stopped {
            self.transmits.push_back(Transmit {
                to: from,
                msg: Msg::Reply {
                    id,
                    result: Err(ServerError::NotReady(
                        "this node's key-value store has stopped (see its /readyz); try another node",
                    )),
                },
                reliable: true,
            });
            return;
        }
        if let Some((epoch, until)) = self.election.lease() {
            self.server.lease_renewed(epoch.0, until);
        }
        self.next_id += 1;
        let request = self.next_id;
        self.pending.insert(request, (from, id));
        self.server.request(now, request, op);
        self.pump();
    }

    /// Timers: each driver handles its own deadline.
    pub(super) fn timeout(&mut self, now: Instant) {
        self.now = now;
        if self.election.poll_timeout().is_some_and(|t| t <= now) {
            self.election.handle_timeout(now);
        }
        if !self.stopped && self.server.poll_timeout().is_some_and(|t| t <= now) {
            self.apply_fence();
            self.server.handle_timeout(now);
        }
        self.pump();
    }

    /// The earliest of the two drivers' deadlines and the put-off
    /// leadership events.
    pub(super) fn next_timeout(&self) -> Option<Instant> {
        [
            self.election.poll_timeout(),
            self.server.poll_timeout().filter(|_| !self.stopped),
            self.leadership_at,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    pub(super) fn poll_transmit(&mut self) -> Option<Transmit<Msg>> {
        self.transmits.pop_front()
    }

    pub(super) fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Performs both drivers' work until neither has any.
    fn pump(&mut self) {
        loop {
            let mut busy = self.drain_election();
            if self.leadership_due() {
                self.leadership_at = None;
                while let Some(event) = self.leadership.pop_front() {
                    busy = true;
                    self.leadership_event(event);
                    self.drain_server();
                }
            }
            busy |= self.drain_server();
            if std::mem::take(&mut self.caught_up) {
                busy = true;
                self.election.rejoin(self.now);
            }
            busy |= self.maybe_snapshot();
            if !busy {
                break;
            }
        }
    }

    /// `LogIo::maybe_snapshot` and, the write done, `background_done`: a
    /// snapshot at the applied index once enough entries were applied,
    /// durable at once, then the log compacted up to it.
    fn maybe_snapshot(&mut self) -> bool {
        let applied = self.server.applied();
        if self.stopped
            || self.snapshot_every == 0
            || applied < self.last_snapshot + self.snapshot_every
        {
            return false;
        }
        let (meta, state) = self.server.snapshot();
        self.last_snapshot = meta.index;
        self.snapshot = Some((meta, state));
        self.server.compact_log(meta.index);
        self.disk.compact(self.server.replica().snapshot());
        true
    }

    /// Whether the key-value side handles the queued leadership events now:
    /// when their put-off time has come, or (if not put off yet) three
    /// times in four (see the module docs).
    fn leadership_due(&mut self) -> bool {
        if self.leadership.is_empty() {
            return false;
        }
        match self.leadership_at {
            Some(at) => at <= self.now,
            None if self.rng.u8(..4) != 0 => true,
            None => {
                let longest = if self.rng.u8(..10) == 0 { 60_000 } else { 2000 };
                let delay = Duration::from_micros(self.rng.u64(20..=longest));
                self.leadership_at = Some(self.now + delay);
                false
            }
        }
    }

    /// The election driver's `drain`: persist, call the hook, send, and
    /// publish leadership events.
    fn drain_election(&mut self) -> bool {
        let mut busy = false;
        // The hook's summary for the promise just made durable.
        let mut fresh: Option<(Epoch, Vec<u8>)> = None;
        while let Some(output) = self.election.poll_output() {
            busy = true;
            match output {
                ElectionOutput::Persist(promise) => {
                    self.promises.write_promise(&promise);
                    self.promises.sync();
                    // `Fence::promised`: raise the fence, read the summary.
                    self.fence.epoch = self.fence.epoch.max(promise.epoch.0);
                    let summary = self.fence.summary.clone();
                    self.election.set_summary(summary.clone());
                    fresh = Some((promise.epoch, summary));
                }
                ElectionOutput::PersistVoters(record) => {
                    self.promises.write_voters(&record);
                    self.promises.sync();
                }
                ElectionOutput::Send { to, mut msg } => {
                    if let (ElectionMessage::Grant { epoch, summary, .. }, Some((promised, now))) =
                        (&mut msg, &fresh)
                    {
                        if epoch == promised {
                            summary.clone_from(now);
                        }
                    }
                    self.transmits.push_back(Transmit {
                        to,
                        msg: Msg::Election(msg),
                        reliable: false,
                    });
                }
                other => {
                    if let ElectionOutput::Elected { .. } = other {
                        // The event bus's topology stream carries the new
                        // leader to the clients.
                        for &to in &self.clients {
                            self.transmits.push_back(Transmit {
                                to,
                                msg: Msg::Leader { leader: self.addr },
                                reliable: true,
                            });
                        }
                    }
                    self.events.push_back(Event::Election(other.clone()));
                    self.leadership.push_back(other);
                }
            }
        }
        busy
    }

    /// The key-value driver's `leadership_event`.
    fn leadership_event(&mut self, event: ElectionOutput) {
        let now = self.now;
        if self.stopped {
            return;
        }
        self.apply_fence();
        match event {
            ElectionOutput::Elected { epoch, summaries } => {
                let until = self
                    .election
                    .lease()
                    .filter(|(e, _)| *e == epoch)
                    .map_or(now, |(_, until)| until);
                self.server.elected(now, epoch.0, summaries, until);
                self.elected = Some(epoch.0);
            }
            ElectionOutput::Leader { name, epoch } if name != self.me => {
                if let Some(&addr) = self.voters.get(&name) {
                    self.server.follow(now, name, addr, epoch.0);
                }
            }
            ElectionOutput::SteppedDown { epoch } => self.server.step_down(epoch.0),
            ElectionOutput::LeaderLost => self.server.forget_leader(),
            _ => {}
        }
    }

    /// The key-value driver's `apply_fence`: passes a fence the election
    /// raised on to the server.
    fn apply_fence(&mut self) {
        if self.fence.epoch > self.fenced {
            self.fenced = self.fence.epoch;
            self.server.fence(self.fenced);
        }
    }

    /// The key-value driver's `drain`: performs the server's outputs in
    /// order.
    fn drain_server(&mut self) -> bool {
        let mut busy = false;
        let now = self.now;
        while !self.stopped {
            let Some(output) = self.server.poll_output() else {
                break;
            };
            busy = true;
            if self.disk_failing && output_writes_the_log(&output) {
                self.stop();
                break;
            }
            match output {
                ServerOutput::Log(LogOutput::SaveEpoch(epoch)) => self.disk.save_epoch(epoch),
                ServerOutput::Log(LogOutput::Truncate { from }) => {
                    let last = from.saturating_sub(1);
                    let kept = Summary {
                        last_epoch: self.server.replica().snapshot_point(last).epoch,
                        last_index: last,
                    };
                    // The cut entries were never committed: the mark comes
                    // down first, unless it still guards entries lost
                    // earlier.
                    if self.lost.is_none() {
                        self.mark = self.mark.min(kept);
                    }
                    self.disk.write(LogWrite::Truncate(from));
                    self.written = kept;
                }
                ServerOutput::Log(LogOutput::Append(entries)) => {
                    if let Some(Entry { epoch, index, .. }) = entries.last() {
                        self.written = Summary {
                            last_epoch: *epoch,
                            last_index: *index,
                        };
                    }
                    self.disk.write(LogWrite::Append(entries));
                }
                ServerOutput::Log(LogOutput::Sync) => {
                    self.disk.sync();
                    self.mark = self.mark.max(self.written);
                    if self.lost.is_some_and(|mark| self.written >= mark) {
                        self.lost = None;
                        self.caught_up = true;
                    }
                    // `Fence::durable`: record the summary, read the fence.
                    self.fence.summary = self.written.encode();
                    if self.fence.epoch > self.fenced {
                        self.fenced = self.fence.epoch;
                        self.server.fence(self.fenced);
                    }
                }
                ServerOutput::Log(LogOutput::Send { to, msg }) => {
                    // The core sends what describes its disk (acks, nacks,
                    // fetch replies) only after a Sync; a write still
                    // pending here would be a core bug. A leader's appends
                    // and its "pull my snapshot" (a durable snapshot) may go
                    // first.
                    assert!(
                        matches!(
                            msg,
                            clustron_log::core::Message::Append { .. }
                                | clustron_log::core::Message::SnapshotNeeded { .. }
                        ) || self.disk.unsynced_len() == 0,
                        "{} sends {msg:?} before syncing its log",
                        self.me
                    );
                    // Nothing from an epoch the election has since promised
                    // away leaves.
                    if msg.epoch() < self.fence.epoch {
                        continue;
                    }
                    self.transmits.push_back(Transmit {
                        to,
                        msg: Msg::Log(msg),
                        reliable: false,
                    });
                }
                // The election reads the summary from the fence at each
                // promise.
                ServerOutput::Log(LogOutput::Summary(_)) => {}
                ServerOutput::Log(LogOutput::CannotLead { epoch }) => {
                    // Not leading any more is fine: nothing to hand over.
                    let _ = self.election.step_down(now);
                    self.events.push_back(Event::CannotLead(epoch));
                }
                ServerOutput::Log(LogOutput::Committed { upto }) => self.committed(upto),
                ServerOutput::Log(LogOutput::PullSnapshot { from, index }) => {
                    self.pull.get_or_insert((from, index));
                }
                ServerOutput::Log(LogOutput::ResetLog { base }) => {
                    // An installed snapshot (already durable) replaces the
                    // log: entries it does not cover were not committed.
                    let kept = Summary {
                        last_epoch: base.epoch,
                        last_index: base.index,
                    };
                    if self.lost.is_none() {
                        self.mark = self.mark.min(kept.min(self.written));
                    }
                    self.disk.reset_after(base);
                    self.written = kept;
                }
                ServerOutput::Reply { id, result } => {
                    if let Some((to, id)) = self.pending.remove(&id) {
                        self.transmits.push_back(Transmit {
                            to,
                            msg: Msg::Reply { id, result },
                            reliable: true,
                        });
                    }
                }
                // No watchers in this simulation.
                ServerOutput::Watch(_) | ServerOutput::WatchCancelled(_) => {}
            }
        }
        busy
    }

    /// The driver's `stop`: the write-ahead log failed. Nothing after the
    /// failed output is performed; waiting requests are refused; the
    /// election withdraws (a leader hands over).
    fn stop(&mut self) {
        self.stopped = true;
        while self.server.poll_output().is_some() {}
        for (_, (to, id)) in std::mem::take(&mut self.pending) {
            self.transmits.push_back(Transmit {
                to,
                msg: Msg::Reply {
                    id,
                    result: Err(ServerError::NotReady(
                        "this node's write-ahead log failed; try another node",
                    )),
                },
                reliable: true,
            });
        }
        self.election.withdraw(self.now);
    }

    fn committed(&mut self, upto: u64) {
        assert!(
            upto > self.reported_commit,
            "{} reported commit {upto} after {}",
            self.me,
            self.reported_commit
        );
        let entries = self
            .server
            .replica()
            .entries(self.reported_commit + 1, upto)
            .to_vec();
        assert_eq!(entries.len() as u64, upto - self.reported_commit);
        self.events.push_back(Event::Committed {
            incarnation: self.incarnation,
            previous: self.reported_commit,
            entries,
        });
        self.reported_commit = upto;
    }
}

/// Whether performing `output` writes to the log's disk.
fn output_writes_the_log(output: &ServerOutput) -> bool {
    matches!(
        output,
        ServerOutput::Log(
            LogOutput::SaveEpoch(_)
                | LogOutput::Truncate { .. }
                | LogOutput::Append(_)
                | LogOutput::Sync
        )
    )
}

/// What `OpenLog` recovers from a log disk and the newest snapshot: the
/// log after the snapshot if it continues it (its entry at the snapshot
/// point, if still there, of the snapshot's epoch), else nothing after it.
fn recover(disk: &Recovered, snapshot: Option<SnapshotMeta>) -> Recovered {
    let Some(meta) = snapshot.filter(|m| m.index > disk.snapshot.index) else {
        return disk.clone();
    };
    let at = |index: u64| {
        index
            .checked_sub(disk.snapshot.index + 1)
            .and_then(|i| disk.entries.get(usize::try_from(i).ok()?))
    };
    let continues = match at(meta.index) {
        Some(entry) => entry.epoch == meta.epoch,
        None => meta.index == disk.snapshot.index + disk.entries.len() as u64,
    };
    let entries = if continues {
        disk.entries
            .iter()
            .filter(|e| e.index > meta.index)
            .cloned()
            .collect()
    } else {
        Vec::new()
    };
    Recovered {
        epoch: disk.epoch,
        snapshot: meta,
        entries,
    }
}
