//! The DKV replicated log on the simulator, combined with the election core
//! on each node: the adapter [`DkvNode`] (election [`Core`] + log
//! [`Replica`], with disks that lose unsynced writes), a cluster wrapper with
//! a membership oracle and a client that proposes unique values, and the
//! safety invariants checked after every step.
//!
//! ```text
//!  election Core ── Persist(promise) ──► replica.fence(epoch)      (promise synced before any send)
//!                ── Elected{epoch, summaries} ──► replica.become_leader
//!                ── Leader{name, epoch} ──► replica.follow;  SteppedDown ──► replica.step_down
//!  Replica ── Summary(bytes) ──► election.set_summary;  CannotLead ──► election.step_down
//!          ── SaveEpoch/Truncate/Append ──► LogDisk (unsynced) ── Sync ──► durable
//! ```

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clustron_election::{
    Config as ElectionConfig, Core, Epoch, MemStorage, Message as ElectionMessage, NodeName,
    Output as ElectionOutput, Peer, Storage, Voter, VoterSet,
};
use clustron_log::core::{
    Config as LogConfig, Entry, EntryKind, Message as LogMessage, Output as LogOutput,
};
use clustron_log::core::{Recovered, Replica, SnapshotMeta};

use crate::election::{addr, name, priority};
use crate::sim::{Actor, NetConfig, NodeId, Sim, Transmit};

/// A message of either protocol.
#[derive(Debug, Clone)]
pub enum Msg {
    /// Election traffic.
    Election(ElectionMessage),
    /// Replication traffic.
    Log(LogMessage),
}

/// What a [`DkvNode`] reports.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// An election output other than persist and send.
    Election(ElectionOutput),
    /// The replica reported entries committed: `entries` are the newly
    /// committed ones, read from its log at that moment.
    Committed {
        /// The node's incarnation (restarts start again from 0).
        incarnation: u64,
        /// The previous commit index reported by this incarnation.
        previous: u64,
        /// Entries `previous + 1 ..= upto`.
        entries: Vec<Entry>,
    },
    /// The replica gave up catching up as a new leader.
    CannotLead(u64),
}

/// One write to the log's disk.
#[derive(Debug, Clone, PartialEq)]
pub enum LogWrite {
    /// The fence.
    SaveEpoch(u64),
    /// Remove entries from this index on.
    Truncate(u64),
    /// Entries after the last one.
    Append(Vec<Entry>),
}

/// The log's disk: writes land in an unsynced list, a sync applies them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogDisk {
    synced: Recovered,
    unsynced: Vec<LogWrite>,
}

/// What survives a crash of the log's disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLoss {
    /// Every write, synced or not, reached the disk.
    Kept,
    /// Only synced writes.
    UnsyncedLost,
    /// The synced writes and a random prefix of the unsynced ones (the OS
    /// flushed some of them, in order).
    Torn,
    /// Only synced writes, and the last one to three synced entries are gone
    /// too (a damaged or deleted last segment): the node lost entries it
    /// may have acknowledged. Only a node that guards against it (the
    /// key-value driver's high-water mark, see [`crate::kv_sim`]) may
    /// restart from such a disk without breaking safety.
    TailDamaged,
}

impl LogDisk {
    /// Records a write, not yet durable.
    pub fn write(&mut self, write: LogWrite) {
        self.unsynced.push(write);
    }

    /// Makes every write so far durable.
    pub fn sync(&mut self) {
        for write in std::mem::take(&mut self.unsynced) {
            apply(&mut self.synced, write);
        }
    }

    /// What is durable.
    pub fn synced(&self) -> &Recovered {
        &self.synced
    }

    /// The disk a restarted process finds, keeping the first `keep` unsynced
    /// writes.
    pub fn after_crash(&self, keep: usize) -> LogDisk {
        let mut state = self.synced.clone();
        for write in self.unsynced.iter().take(keep) {
            apply(&mut state, write.clone());
        }
        LogDisk {
            synced: state,
            unsynced: Vec::new(),
        }
    }

    /// How many writes are not synced.
    pub fn unsynced_len(&self) -> usize {
        self.unsynced.len()
    }

    /// A disk holding exactly `recovered`, all of it durable: what a
    /// restarted node's log folder holds once it has reopened (and, after a
    /// snapshot install that a crash interrupted, reset) its log.
    pub fn from_recovered(recovered: Recovered) -> LogDisk {
        LogDisk {
            synced: recovered,
            unsynced: Vec::new(),
        }
    }

    /// The index of the last durable entry (the snapshot point if the log
    /// after it is empty).
    pub fn durable_last(&self) -> u64 {
        self.synced.snapshot.index + self.synced.entries.len() as u64
    }

    /// A durable snapshot covers `meta`: the segments below it are deleted
    /// (`Wal::compact_to`), at once. Only committed, synced entries are ever
    /// compacted, so no unsynced write touches them.
    pub fn compact(&mut self, meta: SnapshotMeta) {
        if meta.index <= self.synced.snapshot.index {
            return;
        }
        self.synced.entries.retain(|e| e.index > meta.index);
        self.synced.snapshot = meta;
    }

    /// A snapshot covering `base` was installed (and made durable first):
    /// every entry goes, the log continues after `base` (`Wal::reset_after`:
    /// the segments are deleted and the folder synced at once).
    pub fn reset_after(&mut self, base: SnapshotMeta) {
        self.synced.entries.clear();
        self.synced.snapshot = base;
        self.unsynced.clear();
    }

    /// Saves the fence durably at once, apart from the log's unsynced
    /// writes: the key-value driver keeps it in a file of its own, written,
    /// fsynced and renamed into place before it goes on (`kv_driver`'s
    /// `write_epoch`).
    pub fn save_epoch(&mut self, epoch: u64) {
        self.synced.epoch = epoch;
    }

    /// The disk a restarted process finds after a crash with `loss` (a torn
    /// crash keeps a random prefix of the unsynced writes, drawn from `rng`).
    pub fn after_loss(&self, loss: LogLoss, rng: &mut fastrand::Rng) -> LogDisk {
        let keep = match loss {
            LogLoss::Kept => usize::MAX,
            LogLoss::UnsyncedLost | LogLoss::TailDamaged => 0,
            LogLoss::Torn => rng.usize(..=self.unsynced_len()),
        };
        let mut disk = self.after_crash(keep);
        if loss == LogLoss::TailDamaged {
            let entries = &mut disk.synced.entries;
            let lost = rng.usize(1..=3).min(entries.len());
            entries.truncate(entries.len() - lost);
        }
        disk
    }
}

/// Applies one write; panics if the core asked for an impossible one (an
/// append that does not follow the last entry).
fn apply(state: &mut Recovered, write: LogWrite) {
    match write {
        LogWrite::SaveEpoch(epoch) => state.epoch = epoch,
        LogWrite::Truncate(from) => {
            let keep = from.saturating_sub(1).saturating_sub(state.snapshot.index);
            state.entries.truncate(keep as usize);
        }
        LogWrite::Append(entries) => {
            for entry in entries {
                assert_eq!(
                    entry.index,
                    state.snapshot.index + state.entries.len() as u64 + 1,
                    "an append that does not follow the last stored entry"
                );
                state.entries.push(entry);
            }
        }
    }
}

/// One node: the election core and the log replica, wired as a driver
/// would, with a promise store and a log disk that can lose unsynced data.
#[derive(Debug)]
pub struct DkvNode {
    me: NodeName,
    incarnation: u64,
    election: Core,
    promises: MemStorage,
    replica: Replica,
    disk: LogDisk,
    peers: BTreeMap<NodeName, SocketAddr>,
    reported_commit: u64,
    now: Instant,
    transmits: VecDeque<Transmit<Msg>>,
    events: VecDeque<Event>,
}

/// Everything a node is built from.
#[derive(Debug, Clone)]
pub struct NodeSetup {
    /// Election tuning.
    pub election: ElectionConfig,
    /// Log tuning.
    pub log: LogConfig,
    /// Voters (indices `0..voters`).
    pub voters: usize,
    /// All nodes; those from `voters` on are learners.
    pub nodes: usize,
}

impl NodeSetup {
    /// The configured voter set.
    pub fn voter_set(&self) -> VoterSet {
        VoterSet::new((0..self.voters).map(|i| Voter {
            name: name(i),
            addr: addr(i),
        }))
    }

    /// (name, address) of every voter.
    pub fn voter_addrs(&self) -> impl Iterator<Item = (NodeName, SocketAddr)> {
        (0..self.voters).map(|i| (name(i), addr(i)))
    }

    /// (name, address) of every learner.
    pub fn learner_addrs(&self) -> impl Iterator<Item = (NodeName, SocketAddr)> {
        (self.voters..self.nodes).map(|i| (name(i), addr(i)))
    }
}

/// What the shared log invariants and the membership oracle read from a
/// simulated actor. Actors that are not cluster nodes (simulated clients)
/// return `None` / 0.
pub trait LogNode {
    /// The election core.
    fn log_election(&self) -> Option<&Core>;
    /// The election core, to give it a view.
    fn log_election_mut(&mut self) -> Option<&mut Core>;
    /// The replicated log.
    fn log_replica(&self) -> Option<&Replica>;
    /// The log's disk.
    fn log_disk(&self) -> Option<&LogDisk>;
    /// The highest commit index this incarnation reported.
    fn log_reported_commit(&self) -> u64;
    /// The index its newest durable snapshot covers (0: none): committed
    /// state kept apart from the log's disk.
    fn log_durable_snapshot(&self) -> u64 {
        0
    }
}

/// Gives every running node among the first `setup.nodes` the view
/// membership would settle on: the other running nodes it can reach both
/// ways, a withdrawn one as no voter (its membership tag). `is_up` says
/// which nodes run (not crashed, not paused).
pub fn refresh_views<A: Actor + LogNode>(
    sim: &mut Sim<A>,
    setup: &NodeSetup,
    is_up: impl Fn(&Sim<A>, NodeId) -> bool,
) {
    for id in 0..setup.nodes {
        if !is_up(sim, id) {
            continue;
        }
        let live: Vec<Peer> = (0..setup.nodes)
            .filter(|&j| j != id && is_up(sim, j) && sim.reachable(id, j))
            .map(|j| Peer {
                name: name(j),
                addr: addr(j),
                priority: priority(j),
                // Who votes is the voter set's business (it changes):
                // membership only says who withdrew.
                voter: !sim
                    .node(j)
                    .and_then(|n| n.log_election())
                    .is_some_and(Core::is_withdrawn),
                behind: sim
                    .node(j)
                    .and_then(|n| n.log_election())
                    .is_some_and(Core::is_behind),
                // Unreachable nodes are out of the view instead.
                suspect: false,
            })
            .collect();
        sim.with_node(id, |node, now| {
            if let Some(election) = node.log_election_mut() {
                election.set_view(now, live);
            }
        });
    }
}

impl DkvNode {
    /// Node `id` starting from `promises` and `disk` at local time `now`.
    pub fn new(
        setup: &NodeSetup,
        id: NodeId,
        incarnation: u64,
        promises: MemStorage,
        disk: LogDisk,
        seed: u64,
        now: Instant,
    ) -> Self {
        let recovered = match promises.load() {
            Ok(recovered) => recovered,
            Err(never) => match never {},
        };
        let fence = recovered.promise.as_ref().map(|p| p.epoch.0).unwrap_or(0);
        let election = Core::new(
            setup.election.clone(),
            name(id),
            priority(id),
            setup.voter_set(),
            recovered,
            seed,
            now,
        );
        // The log's voters are the election's decided set, recovered.
        let peers: BTreeMap<NodeName, SocketAddr> =
            (0..setup.nodes).map(|i| (name(i), addr(i))).collect();
        let (voters, learners) = split_by(&peers, election.voters());
        let mut replica = Replica::new(
            setup.log.clone(),
            name(id),
            voters,
            learners,
            disk.synced().clone(),
            now,
        );
        // The promise store is the election's; what it promised fences the
        // log too after a restart.
        replica.fence(fence);
        let mut node = Self {
            me: name(id),
            incarnation,
            election,
            promises,
            replica,
            disk,
            peers,
            reported_commit: 0,
            now,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        };
        node.pump();
        node
    }

    /// The election core.
    pub fn election(&self) -> &Core {
        &self.election
    }

    /// The election core, for commands.
    pub fn election_mut(&mut self) -> &mut Core {
        &mut self.election
    }

    /// The log replica.
    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    /// Proposes `payload` at local time `now`.
    pub fn propose(
        &mut self,
        now: Instant,
        payload: Vec<u8>,
    ) -> Result<u64, clustron_log::core::ProposeError> {
        self.now = now;
        let result = self.replica.propose(now, payload);
        self.pump();
        result
    }

    /// Runs a voter-change command on the election core (then performs
    /// its outputs); whether the core took it.
    pub fn change_voters(
        &mut self,
        command: impl FnOnce(&mut Core) -> Result<(), clustron_election::Error>,
    ) -> bool {
        let taken = command(&mut self.election).is_ok();
        self.pump();
        taken
    }

    /// The log disk.
    pub fn disk(&self) -> &LogDisk {
        &self.disk
    }

    /// The highest commit index this incarnation reported.
    pub fn reported_commit(&self) -> u64 {
        self.reported_commit
    }

    /// Performs both cores' outputs, in order, until neither has any: the
    /// driver's loop.
    fn pump(&mut self) {
        let now = self.now;
        loop {
            let mut busy = false;
            while let Some(output) = self.election.poll_output() {
                busy = true;
                match output {
                    ElectionOutput::Persist(promise) => {
                        self.promises.write_promise(&promise);
                        // Fence at once: nothing this node does from here on
                        // may serve an older epoch.
                        self.replica.fence(promise.epoch.0);
                    }
                    ElectionOutput::PersistVoters(record) => self.promises.write_voters(&record),
                    ElectionOutput::Send { to, msg } => {
                        self.promises.sync();
                        self.transmits.push_back(Transmit {
                            to,
                            msg: Msg::Election(msg),
                            reliable: false,
                        });
                    }
                    ElectionOutput::Elected { epoch, summaries } => {
                        self.replica.become_leader(now, epoch.0, summaries.clone());
                        self.events
                            .push_back(Event::Election(ElectionOutput::Elected {
                                epoch,
                                summaries,
                            }));
                    }
                    ElectionOutput::SteppedDown { epoch } => {
                        self.replica.step_down(epoch.0);
                        self.events
                            .push_back(Event::Election(ElectionOutput::SteppedDown { epoch }));
                    }
                    ElectionOutput::Leader { name, epoch } => {
                        if let Some(&at) = self.peers.get(&name) {
                            self.replica.follow(now, name.clone(), at, epoch.0);
                        }
                        self.events
                            .push_back(Event::Election(ElectionOutput::Leader { name, epoch }));
                    }
                    ElectionOutput::LeaderLost => {
                        self.replica.forget_leader();
                        self.events
                            .push_back(Event::Election(ElectionOutput::LeaderLost));
                    }
                    ElectionOutput::VotersChanged(set) => {
                        // In step with the election, as the driver's
                        // `LogIo` does; the others stay learners.
                        let (voters, learners) = split_by(&self.peers, &set);
                        self.replica.set_voters(voters);
                        self.replica.set_learners(learners);
                        self.events
                            .push_back(Event::Election(ElectionOutput::VotersChanged(set)));
                    }
                }
            }
            while let Some(output) = self.replica.poll_output() {
                busy = true;
                match output {
                    LogOutput::SaveEpoch(epoch) => self.disk.write(LogWrite::SaveEpoch(epoch)),
                    LogOutput::Truncate { from } => self.disk.write(LogWrite::Truncate(from)),
                    LogOutput::Append(entries) => self.disk.write(LogWrite::Append(entries)),
                    LogOutput::Sync => self.disk.sync(),
                    LogOutput::Send { to, msg } => {
                        // The core sends what describes its disk (acks,
                        // nacks, fetch replies) only after a Sync; a write
                        // still pending here would be a core bug. A
                        // leader's appends may go first.
                        let append = matches!(
                            msg,
                            LogMessage::Append { .. } | LogMessage::SnapshotNeeded { .. }
                        );
                        assert!(
                            append || self.disk.unsynced_len() == 0,
                            "{} sends {msg:?} before syncing its log",
                            self.me
                        );
                        self.transmits.push_back(Transmit {
                            to,
                            msg: Msg::Log(msg),
                            reliable: false,
                        });
                    }
                    LogOutput::Committed { upto } => {
                        assert!(
                            upto > self.reported_commit,
                            "{} reported commit {upto} after {}",
                            self.me,
                            self.reported_commit
                        );
                        let entries = self
                            .replica
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
                    LogOutput::Summary(bytes) => self.election.set_summary(bytes),
                    // These nodes never compact their logs, so nobody is
                    // ever told to pull a snapshot.
                    LogOutput::PullSnapshot { .. } | LogOutput::ResetLog { .. } => {
                        panic!("{} got a snapshot output without compaction", self.me)
                    }
                    LogOutput::CannotLead { epoch } => {
                        // Not leading any more is fine: nothing to hand over.
                        let _ = self.election.step_down(now);
                        self.events.push_back(Event::CannotLead(epoch));
                    }
                }
            }
            if !busy {
                break;
            }
        }
        // As the driver's `LogIo` does after each drain.
        self.election.set_behind(self.replica.behind());
    }
}

/// `peers` split into the members of `set` and the others.
#[allow(clippy::type_complexity)]
fn split_by(
    peers: &BTreeMap<NodeName, SocketAddr>,
    set: &VoterSet,
) -> (Vec<(NodeName, SocketAddr)>, Vec<(NodeName, SocketAddr)>) {
    peers
        .iter()
        .map(|(n, a)| (n.clone(), *a))
        .partition(|(n, _)| set.contains(n))
}

impl Actor for DkvNode {
    type Message = Msg;
    type Event = Event;

    fn handle_message(&mut self, now: Instant, from: SocketAddr, msg: Msg) {
        self.now = now;
        match msg {
            Msg::Election(msg) => self.election.handle_message(now, from, msg),
            Msg::Log(msg) => self.replica.handle_message(now, from, msg),
        }
        self.pump();
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        if self.election.poll_timeout().is_some_and(|t| t <= now) {
            self.election.handle_timeout(now);
        }
        if self.replica.poll_timeout().is_some_and(|t| t <= now) {
            self.replica.handle_timeout(now);
        }
        self.pump();
    }

    fn poll_transmit(&mut self) -> Option<Transmit<Msg>> {
        self.transmits.pop_front()
    }

    fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        match (self.election.poll_timeout(), self.replica.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn wire_size(msg: &Msg) -> usize {
        let body = match msg {
            Msg::Election(m) => m.encoded_len(),
            Msg::Log(m) => postcard::to_allocvec(m).map(|b| b.len()).unwrap_or(0),
        };
        body + crate::swim::DATAGRAM_OVERHEAD
    }
}

/// Steps one cluster may take: about 80 times what the largest scenario
/// needs (about 60 000), so a livelock or a message storm fails the test
/// instead of hanging it.
pub const MAX_STEPS: u64 = 5_000_000;

/// The safety invariants of the log, checked after every step, one function
/// each. They read nodes through [`LogNode`], so the key-value simulation
/// ([`crate::kv_sim`]) checks its logs with the same functions.
#[derive(Debug, Default)]
pub struct Invariants {
    /// Every entry any node reported committed, by index.
    pub committed: BTreeMap<u64, Entry>,
    /// Highest commit reported per node and incarnation.
    reported: BTreeMap<NodeId, (u64, u64)>,
    /// Which node led (served proposals in) each epoch.
    leaders: BTreeMap<u64, NodeId>,
    /// Elections won, over the run.
    pub elections: usize,
    /// `CannotLead` reports, over the run.
    pub gave_up: usize,
    /// Voter sets adopted (by any node), over the run.
    pub voter_changes: usize,
    checks: u64,
}

impl Invariants {
    /// Runs every check on the current state.
    pub fn check(&mut self, sim: &mut Sim<DkvNode>) {
        let seed = sim.seed();
        for (_, id, event) in sim.take_events() {
            match event {
                Event::Committed {
                    incarnation,
                    previous,
                    entries,
                } => self.record_commits_and_check_they_never_change(
                    id,
                    incarnation,
                    previous,
                    entries,
                    seed,
                ),
                Event::Election(ElectionOutput::Elected { .. }) => self.elections += 1,
                Event::Election(ElectionOutput::VotersChanged(_)) => self.voter_changes += 1,
                Event::CannotLead(_) => self.gave_up += 1,
                Event::Election(_) => {}
            }
        }
        self.check_after_step(sim);
    }

    /// The checks that read the nodes' state (their events recorded
    /// before): one leader per epoch, commit within the durable log, the
    /// step budget, and every 256 steps the committed prefixes.
    pub fn check_after_step<A: Actor + LogNode>(&mut self, sim: &Sim<A>) {
        self.check_the_log_counts_the_election_voters(sim);
        self.check_one_leader_per_epoch(sim);
        self.check_commit_never_exceeds_the_durable_log(sim);
        self.checks += 1;
        assert!(
            self.checks <= MAX_STEPS,
            "more than {MAX_STEPS} steps: a message storm or a livelock (seed {})",
            sim.seed()
        );
        if self.checks % 256 == 0 {
            self.check_committed_prefixes_agree(sim);
        }
    }

    /// Every committed entry any node reports agrees with what every other
    /// node reported at that index (no committed entry is lost or changed),
    /// and a node's commit index never regresses within an incarnation.
    /// `entries` are the ones node `id` (in `incarnation`) newly reported
    /// committed after `previous`.
    pub fn record_commits_and_check_they_never_change(
        &mut self,
        id: NodeId,
        incarnation: u64,
        previous: u64,
        entries: Vec<Entry>,
        seed: u64,
    ) {
        let last = self.reported.entry(id).or_insert((incarnation, 0));
        if last.0 != incarnation {
            *last = (incarnation, 0);
        }
        assert_eq!(
            last.1, previous,
            "node {id} commit went from {} to {previous}.. (seed {seed})",
            last.1
        );
        for entry in entries {
            last.1 = entry.index;
            match self.committed.get(&entry.index) {
                Some(known) => assert_eq!(
                    known, &entry,
                    "node {id} committed a different entry at index {} (seed {seed})",
                    entry.index
                ),
                None => {
                    self.committed.insert(entry.index, entry);
                }
            }
        }
    }

    /// Node `id` (in `incarnation`) holds everything up to `index` in a
    /// snapshot (restored at start or installed from a peer): it reports
    /// commits after it from now on, never the entries the snapshot covers.
    pub fn record_snapshot_base(&mut self, id: NodeId, incarnation: u64, index: u64) {
        let last = self.reported.entry(id).or_insert((incarnation, 0));
        if last.0 != incarnation {
            *last = (incarnation, 0);
        }
        last.1 = last.1.max(index);
    }

    /// Every node's log counts exactly the voters its election decided
    /// (the log adopts each decided set in step): so the commit rule and
    /// the grant counting use the same set.
    pub fn check_the_log_counts_the_election_voters<A: Actor + LogNode>(&self, sim: &Sim<A>) {
        for id in 0..sim.len() {
            let Some(node) = sim.node(id) else { continue };
            let (Some(election), Some(replica)) = (node.log_election(), node.log_replica()) else {
                continue;
            };
            let counted: BTreeSet<&NodeName> = replica.voters().collect();
            let decided: BTreeSet<&NodeName> =
                election.voters().voters().iter().map(|v| &v.name).collect();
            assert_eq!(
                counted,
                decided,
                "node {id}'s log counts other voters than its election (seed {})",
                sim.seed()
            );
        }
    }

    /// Never two nodes serving proposals in the same epoch.
    pub fn check_one_leader_per_epoch<A: Actor + LogNode>(&mut self, sim: &Sim<A>) {
        for id in 0..sim.len() {
            let Some(epoch) = sim
                .node(id)
                .and_then(|n| n.log_replica())
                .and_then(|r| r.leading())
            else {
                continue;
            };
            let first = *self.leaders.entry(epoch).or_insert(id);
            assert_eq!(
                first,
                id,
                "nodes {first} and {id} both led epoch {epoch} (seed {})",
                sim.seed()
            );
        }
    }

    /// A node's reported commit index never exceeds what it holds durably:
    /// its log, or a snapshot file covering more (a node whose log write
    /// failed right after it installed a pulled snapshot stops before it
    /// resets its log to continue after it).
    pub fn check_commit_never_exceeds_the_durable_log<A: Actor + LogNode>(&mut self, sim: &Sim<A>) {
        for id in 0..sim.len() {
            let Some(node) = sim.node(id) else { continue };
            let Some(disk) = node.log_disk() else {
                continue;
            };
            let durable = disk.durable_last().max(node.log_durable_snapshot());
            assert!(
                node.log_reported_commit() <= durable,
                "node {id} reported commit {} with {durable} durable entries (seed {})",
                node.log_reported_commit(),
                sim.seed()
            );
        }
    }

    /// Every running node's log, up to its commit index, and its durable
    /// log, up to its reported commit, hold exactly the committed entries.
    pub fn check_committed_prefixes_agree<A: Actor + LogNode>(&self, sim: &Sim<A>) {
        for id in 0..sim.len() {
            let Some(node) = sim.node(id) else { continue };
            let (Some(replica), Some(disk)) = (node.log_replica(), node.log_disk()) else {
                continue;
            };
            for entry in replica.entries(1, replica.commit_index()) {
                if let Some(known) = self.committed.get(&entry.index) {
                    assert_eq!(
                        known,
                        entry,
                        "node {id}'s committed prefix differs at {} (seed {})",
                        entry.index,
                        sim.seed()
                    );
                }
            }
            let durable = &disk.synced().entries;
            let reported = node.log_reported_commit();
            // Entries a durable snapshot covers are not the log's any more:
            // a node whose disk failed right after it installed a pulled
            // snapshot stopped before resetting its log, and a restart
            // resets a log that does not continue the snapshot (`OpenLog`).
            let covered = node.log_durable_snapshot();
            for entry in durable
                .iter()
                .skip_while(|e| e.index <= covered)
                .take_while(|e| e.index <= reported)
            {
                assert_eq!(
                    self.committed.get(&entry.index),
                    Some(entry),
                    "node {id}'s durable committed prefix differs at {} (seed {})",
                    entry.index,
                    sim.seed()
                );
            }
        }
    }

    /// A crash never loses a committed entry the node had synced: `before`
    /// is node `id`'s disk when it crashed, `after` what it restarts from.
    pub fn check_a_crash_keeps_synced_committed_entries(
        &self,
        id: NodeId,
        before: &LogDisk,
        after: &LogDisk,
        seed: u64,
    ) {
        let kept = after.synced();
        for entry in &before.synced().entries {
            // What a snapshot covers is kept in the snapshot.
            if entry.index <= kept.snapshot.index {
                continue;
            }
            if self.committed.get(&entry.index) == Some(entry) {
                let i = (entry.index - kept.snapshot.index - 1) as usize;
                assert_eq!(
                    kept.entries.get(i),
                    Some(entry),
                    "node {id} lost committed entry {} it had synced, in a crash (seed {seed})",
                    entry.index
                );
            }
        }
    }

    /// The final log of a converged cluster holds every entry ever reported
    /// committed, at its index.
    pub fn check_the_final_log_holds_every_committed_entry(&self, log: &[Entry], seed: u64) {
        self.check_the_final_log_after_a_snapshot_holds_every_committed_entry(0, log, seed);
    }

    /// The final log of a converged cluster, which continues after a
    /// snapshot at `base` (the entries up to it are in the snapshot, whose
    /// state the stores' checks compare), holds every entry reported
    /// committed after `base`, at its index.
    pub fn check_the_final_log_after_a_snapshot_holds_every_committed_entry(
        &self,
        base: u64,
        log: &[Entry],
        seed: u64,
    ) {
        for (index, entry) in self.committed.range(base + 1..) {
            assert_eq!(
                log.get((*index - base) as usize - 1),
                Some(entry),
                "committed entry {index} is not in the final log (seed {seed})"
            );
        }
    }
}

impl LogNode for DkvNode {
    fn log_election(&self) -> Option<&Core> {
        Some(&self.election)
    }

    fn log_election_mut(&mut self) -> Option<&mut Core> {
        Some(&mut self.election)
    }

    fn log_replica(&self) -> Option<&Replica> {
        Some(&self.replica)
    }

    fn log_disk(&self) -> Option<&LogDisk> {
        Some(&self.disk)
    }

    fn log_reported_commit(&self) -> u64 {
        self.reported_commit
    }
}

/// The client: proposes unique values at whichever node leads.
#[derive(Debug, Default)]
pub struct Client {
    next_id: u64,
    /// Value id → (node, epoch, index) of each accepted proposal.
    pub proposed: BTreeMap<u64, (NodeId, u64, u64)>,
    /// Proposals refused (no leader, leader catching up).
    pub refused: u64,
    /// Proposals not made because the leader held requests back
    /// ([`Replica::admits`]).
    pub held: u64,
}

/// The value id a payload carries.
pub fn value_id(payload: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(payload.try_into().ok()?))
}

/// A simulated DKV cluster: election and log on every node, the first
/// `voters` nodes voters and the rest learners. Views come from an oracle,
/// as in [`crate::election::Cluster`].
pub struct Cluster {
    /// The simulator.
    pub sim: Sim<DkvNode>,
    /// How nodes are built.
    pub setup: NodeSetup,
    /// Invariants, checked after every step.
    pub invariants: Invariants,
    /// The client and what it proposed.
    pub client: Client,
    drift: Vec<f64>,
    paused: BTreeSet<NodeId>,
    crashed: BTreeMap<NodeId, (MemStorage, LogDisk)>,
    incarnations: Vec<u64>,
}

impl Cluster {
    /// `nodes` nodes, the first `voters` of them voters.
    /// The log keeps voters within 1 KiB (about 30 of the client's
    /// entries) so that the simulation exercises the leader's admission
    /// bound ([`Replica::admits`]) under every fault.
    pub fn new(seed: u64, nodes: usize, voters: usize, net: NetConfig) -> Self {
        let mut log = LogConfig::lan();
        log.max_lag_bytes = 1 << 10;
        Self::with_config(
            seed,
            NodeSetup {
                election: ElectionConfig::lan(),
                log,
                voters,
                nodes,
            },
            net,
        )
    }

    /// A cluster built from `setup`.
    pub fn with_config(seed: u64, setup: NodeSetup, net: NetConfig) -> Self {
        let mut sim = Sim::new(seed, net);
        for id in 0..setup.nodes {
            let seed = sim.rng().u64(..);
            let node = DkvNode::new(
                &setup,
                id,
                0,
                MemStorage::new(),
                LogDisk::default(),
                seed,
                sim.now(),
            );
            sim.add_node(addr(id), node);
        }
        let n = setup.nodes;
        let mut cluster = Self {
            sim,
            setup,
            invariants: Invariants::default(),
            client: Client::default(),
            drift: vec![1.0; n],
            paused: BTreeSet::new(),
            crashed: BTreeMap::new(),
            incarnations: vec![0; n],
        };
        cluster.refresh_views();
        cluster
    }

    /// Whether node `id` runs (not crashed, not paused).
    pub fn is_up(&self, id: NodeId) -> bool {
        self.sim.is_up(id) && !self.paused.contains(&id)
    }

    /// Gives every running node the view membership would settle on.
    pub fn refresh_views(&mut self) {
        let paused = &self.paused;
        refresh_views(&mut self.sim, &self.setup, |sim, id| {
            sim.is_up(id) && !paused.contains(&id)
        });
    }

    /// Splits the network; views are not refreshed.
    pub fn partition(&mut self, groups: &[&[NodeId]]) {
        self.sim.partition(groups);
    }

    /// Drops messages from `from` to `to`.
    pub fn block(&mut self, from: NodeId, to: NodeId) {
        self.sim.block(from, to);
    }

    /// Removes partitions and blocks.
    pub fn heal(&mut self) {
        self.sim.heal();
    }

    /// Kills node `id`, keeping its disks.
    pub fn crash(&mut self, id: NodeId) {
        self.paused.remove(&id);
        if let Some(node) = self.sim.crash(id) {
            self.crashed.insert(id, (node.promises, node.disk));
        }
    }

    /// Restarts node `id` from what its disks kept after `loss`, and checks
    /// that the log it recovers still holds every committed entry its synced
    /// log held.
    pub fn restart(&mut self, id: NodeId, loss: LogLoss) {
        if self.sim.node(id).is_some() {
            self.crash(id);
        }
        let (promises, disk) = self
            .crashed
            .remove(&id)
            .unwrap_or((MemStorage::new(), LogDisk::default()));
        let promises = promises.after_crash(loss == LogLoss::Kept);
        let recovered = disk.after_loss(loss, self.sim.rng());
        self.invariants
            .check_a_crash_keeps_synced_committed_entries(id, &disk, &recovered, self.sim.seed());
        self.incarnations[id] += 1;
        let seed = self.sim.rng().u64(..);
        let node = DkvNode::new(
            &self.setup,
            id,
            self.incarnations[id],
            promises,
            recovered,
            seed,
            self.sim.local_now(id),
        );
        self.sim.restart(id, node);
    }

    /// Freezes node `id` (like SIGSTOP).
    pub fn pause(&mut self, id: NodeId) {
        if self.sim.node(id).is_some() {
            self.paused.insert(id);
            self.sim.pause(id);
        }
    }

    /// Unfreezes node `id`.
    pub fn resume(&mut self, id: NodeId) {
        self.paused.remove(&id);
        self.sim.resume(id);
    }

    /// Sets node `id`'s clock rate.
    pub fn set_drift(&mut self, id: NodeId, rate: f64) {
        self.drift[id] = rate;
        self.sim.set_drift(id, rate);
    }

    /// Runs for `d`, checking the invariants after every step.
    pub fn run_for(&mut self, d: Duration) {
        let invariants = &mut self.invariants;
        self.sim.run_for(d, |sim| invariants.check(sim));
    }

    /// Runs for `d` while the client proposes a value every 1 to `gap_ms`
    /// milliseconds at whichever running node leads.
    pub fn run_with_client(&mut self, d: Duration, gap_ms: u64) {
        let end = self.sim.elapsed() + d;
        while self.sim.elapsed() < end {
            let gap = Duration::from_micros(self.sim.rng().u64(1000..=gap_ms.max(1) * 1000));
            let gap = gap.min(end - self.sim.elapsed());
            self.run_for(gap);
            self.propose();
        }
    }

    /// Proposes the next value at the running node that leads the newest
    /// epoch, if any.
    pub fn propose(&mut self) -> Option<u64> {
        let leader = (0..self.sim.len())
            .filter(|&id| self.is_up(id))
            .filter_map(|id| Some((self.sim.node(id)?.replica().leading()?, id)))
            .max()
            .map(|(_, id)| id);
        let Some(leader) = leader else {
            self.client.refused += 1;
            return None;
        };
        // A leader holding requests back (a voter that kept up is too far
        // behind): the client waits, as a driver's queue makes it.
        if !self.sim.node(leader)?.replica().admits() {
            self.client.held += 1;
            return None;
        }
        let id = self.client.next_id;
        self.client.next_id += 1;
        let result = self.sim.with_node(leader, |node, now| {
            let epoch = node.replica().leading().unwrap_or(0);
            node.propose(now, id.to_le_bytes().to_vec())
                .map(|index| (epoch, index))
        });
        match result {
            Some(Ok((epoch, index))) => {
                self.client.proposed.insert(id, (leader, epoch, index));
                Some(id)
            }
            _ => {
                self.client.refused += 1;
                None
            }
        }
    }

    /// Runs until `cond` or `limit`, checking the invariants after every
    /// step.
    pub fn run_until(&mut self, limit: Duration, mut cond: impl FnMut(&Self) -> bool) -> bool {
        let deadline = self.sim.elapsed() + limit;
        let step = Duration::from_millis(5);
        loop {
            if cond(self) {
                return true;
            }
            let now = self.sim.elapsed();
            if now >= deadline {
                return false;
            }
            self.run_for(step.min(deadline - now));
        }
    }

    /// Runs until `cond` holds, checked (with the invariants) after every
    /// single step, or `limit`: for faults that must strike at an exact
    /// moment.
    pub fn run_until_step(
        &mut self,
        limit: Duration,
        mut cond: impl FnMut(&Sim<DkvNode>) -> bool,
    ) -> bool {
        let invariants = &mut self.invariants;
        self.sim.run_until(limit, |sim| {
            invariants.check(sim);
            cond(sim)
        })
    }

    /// Proposes `value` at node `id` directly; its index if accepted.
    pub fn propose_at(&mut self, id: NodeId) -> Option<u64> {
        let value = self.client.next_id;
        self.client.next_id += 1;
        let result = self.sim.with_node(id, |node, now| {
            let epoch = node.replica().leading().unwrap_or(0);
            node.propose(now, value.to_le_bytes().to_vec())
                .map(|index| (epoch, index))
        });
        match result {
            Some(Ok((epoch, index))) => {
                self.client.proposed.insert(value, (id, epoch, index));
                Some(index)
            }
            _ => {
                self.client.refused += 1;
                None
            }
        }
    }

    /// Asks the leader's election for one voter change: with three voters,
    /// add a non-voter (the `pick`-th, wrapping); with more, remove a
    /// voter other than the leader (likewise). True if the election took
    /// it (it is decided once a majority of the current set accepted it).
    pub fn change_voter(&mut self, pick: usize) -> bool {
        let Some(leader) = self.leader() else {
            return false;
        };
        let nodes = self.setup.nodes;
        self.sim
            .with_node(leader, |node, now| {
                let set = node.election().voters().clone();
                let me = node.election().name().clone();
                if set.len() <= 3 {
                    let outside: Vec<usize> =
                        (0..nodes).filter(|&i| !set.contains(&name(i))).collect();
                    let Some(&id) = outside.get(pick % outside.len().max(1)) else {
                        return false;
                    };
                    let voter = Voter {
                        name: name(id),
                        addr: addr(id),
                    };
                    node.change_voters(|e| e.add_voter(now, voter))
                } else {
                    let inside: Vec<NodeName> = set
                        .voters()
                        .iter()
                        .map(|v| v.name.clone())
                        .filter(|n| *n != me)
                        .collect();
                    let who = inside[pick % inside.len()].clone();
                    node.change_voters(|e| e.remove_voter(now, &who))
                }
            })
            .unwrap_or(false)
    }

    /// The running node serving proposals in the newest epoch.
    pub fn leader(&self) -> Option<NodeId> {
        (0..self.sim.len())
            .filter(|&id| self.is_up(id))
            .filter_map(|id| Some((self.sim.node(id)?.replica().leading()?, id)))
            .max()
            .map(|(_, id)| id)
    }

    /// Every node runs, a leader serves, and every node's log equals the
    /// leader's, all of it committed everywhere.
    pub fn converged(&self) -> bool {
        let Some(leader) = self.leader() else {
            return false;
        };
        let Some(reference) = self.sim.node(leader).map(|n| n.replica()) else {
            return false;
        };
        let last = reference.last_index();
        reference.commit_index() == last
            && (0..self.sim.len()).all(|id| {
                self.is_up(id)
                    && self.sim.node(id).is_some_and(|n| {
                        let r = n.replica();
                        r.commit_index() == last
                            && r.last_index() == last
                            && r.entries(1, last) == reference.entries(1, last)
                    })
            })
    }

    /// Stops every fault (heal, resume, restart what crashed with `loss`),
    /// waits for convergence within `limit`, and checks the final log: it
    /// holds every entry ever reported committed, at its index, and no value
    /// twice. Returns (values committed, values proposed).
    pub fn heal_and_check_convergence(&mut self, limit: Duration, loss: LogLoss) -> (usize, usize) {
        self.heal();
        for id in 0..self.sim.len() {
            if self.sim.node(id).is_none() {
                self.restart(id, loss);
            }
            self.resume(id);
        }
        self.refresh_views();
        let converged = self.run_until(limit, |c| c.converged());
        if !converged {
            let states: Vec<String> = (0..self.sim.len())
                .map(|id| match self.sim.node(id) {
                    Some(n) => format!(
                        "node {id}: leading {:?} epoch {} last {} commit {} election leader {:?} voters v{} {:?} campaigning {} withdrawn {} behind {} candidate {:?}\n  {}",
                        n.replica().leading(),
                        n.replica().epoch(),
                        n.replica().last_index(),
                        n.replica().commit_index(),
                        n.election().leader(),
                        n.election().voters().version,
                        n.election().voters().voters().iter().map(|v| v.name.to_string()).collect::<Vec<_>>(),
                        n.election().is_campaigning(),
                        n.election().is_withdrawn(),
                        n.election().is_behind(),
                        n.election().candidate(),
                        n.replica().describe(),
                    ),
                    None => format!("node {id}: down"),
                })
                .collect();
            panic!(
                "no convergence within {limit:?} of the faults stopping (seed {}):\n{}",
                self.sim.seed(),
                states.join("\n")
            );
        }
        self.run_for(Duration::from_millis(1));
        self.invariants.check_committed_prefixes_agree(&self.sim);
        let leader = self.leader().unwrap_or(0);
        let Some(node) = self.sim.node(leader) else {
            panic!("the leader vanished");
        };
        let log = node.replica().entries(1, node.replica().last_index());
        self.invariants
            .check_the_final_log_holds_every_committed_entry(log, self.sim.seed());
        let mut values = BTreeSet::new();
        for entry in log.iter().filter(|e| e.kind == EntryKind::Data) {
            let id = value_id(&entry.payload).unwrap_or(u64::MAX);
            assert!(
                values.insert(id),
                "value {id} is in the log twice (seed {})",
                self.sim.seed()
            );
            assert!(
                self.client.proposed.contains_key(&id),
                "value {id} was never proposed (seed {})",
                self.sim.seed()
            );
        }
        (values.len(), self.client.proposed.len())
    }

    /// The epoch the election core of node `id` leads, if any.
    pub fn lease_epoch(&self, id: NodeId) -> Option<Epoch> {
        self.sim
            .node(id)?
            .election()
            .lease()
            .map(|(epoch, _)| epoch)
    }
}
