//! Leader election on the simulator: the adapter from the election core to
//! [`crate::sim::Actor`] (with [`MemStorage`] that can lose unsynced writes),
//! a cluster wrapper with a membership oracle for views, and the safety
//! invariants checked after every step.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clustron_election::{
    Config, Core, Epoch, MemStorage, Message, NodeName, Output, Peer, Storage, Voter, VoterSet,
};

use crate::sim::{Actor, NetConfig, NodeId, Sim, Transmit};

/// What a restarted node finds on its disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disk {
    /// Everything written, synced or not (the OS flushed it).
    Kept,
    /// Only what was synced.
    UnsyncedLost,
    /// Nothing: the classic mistake of a voter that forgets its promise.
    Wiped,
}

/// An election core as a simulator actor. Performs outputs in order, as a
/// driver must: `Persist` writes to storage, and the next `Send` syncs first.
#[derive(Debug)]
pub struct ElectionNode {
    core: Core,
    storage: MemStorage,
    transmits: VecDeque<Transmit<Message>>,
    events: VecDeque<Output>,
}

impl ElectionNode {
    /// A node built from what `storage` kept.
    pub fn new(
        config: Config,
        name: NodeName,
        priority: u32,
        voters: VoterSet,
        storage: MemStorage,
        seed: u64,
        now: Instant,
    ) -> Self {
        let recovered = match storage.load() {
            Ok(recovered) => recovered,
            Err(never) => match never {},
        };
        Self {
            core: Core::new(config, name, priority, voters, recovered, seed, now),
            storage,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// The core, to inspect.
    pub fn core(&self) -> &Core {
        &self.core
    }

    /// The core, to call commands (through [`Sim::with_node`]).
    pub fn core_mut(&mut self) -> &mut Core {
        &mut self.core
    }

    /// The node's storage.
    pub fn storage(&self) -> &MemStorage {
        &self.storage
    }

    fn fill(&mut self) {
        while let Some(output) = self.core.poll_output() {
            match output {
                Output::Persist(promise) => self.storage.write_promise(&promise),
                Output::PersistVoters(record) => self.storage.write_voters(&record),
                Output::Send { to, msg } => {
                    // Durable before anything leaves: the grant is a promise.
                    self.storage.sync();
                    self.transmits.push_back(Transmit {
                        to,
                        msg,
                        reliable: false,
                    });
                }
                event => self.events.push_back(event),
            }
        }
    }
}

impl Actor for ElectionNode {
    type Message = Message;
    type Event = Output;

    fn handle_message(&mut self, now: Instant, from: SocketAddr, msg: Message) {
        self.core.handle_message(now, from, msg);
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.core.handle_timeout(now);
    }

    fn poll_transmit(&mut self) -> Option<Transmit<Message>> {
        self.fill();
        self.transmits.pop_front()
    }

    fn poll_event(&mut self) -> Option<Output> {
        self.fill();
        self.events.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.core.poll_timeout()
    }

    fn wire_size(msg: &Message) -> usize {
        msg.encoded_len() + crate::swim::DATAGRAM_OVERHEAD
    }
}

/// The name of node `i`: `e0`, `e1`, ...
pub fn name(i: usize) -> NodeName {
    // Invariant: "e" followed by digits is a valid name.
    NodeName::new(format!("e{i}")).expect("valid name")
}

/// The address of node `i`.
pub fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 1, (i / 250) as u8, (i % 250) as u8 + 1], 7000))
}

/// The priority of node `i`: node 0 is preferred, then 1, ...
pub fn priority(i: usize) -> u32 {
    1000 - i as u32
}

/// One lease belief, in true (simulator) time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseInterval {
    /// The believer.
    pub node: NodeId,
    /// Its epoch.
    pub epoch: Epoch,
    /// When it first held it.
    pub start: Duration,
    /// When its belief ends (its lease end, converted through its clock).
    pub end: Duration,
}

/// The safety invariants, checked after every step, one function each.
#[derive(Debug, Default)]
pub struct Invariants {
    /// Every lease belief seen so far.
    pub leases: Vec<LeaseInterval>,
    leaders: BTreeMap<Epoch, NodeId>,
    epochs: BTreeMap<NodeId, Epoch>,
}

impl Invariants {
    /// Runs every check on the current state.
    pub fn check(&mut self, sim: &Sim<ElectionNode>, drift: &[f64]) {
        self.record_leases_and_check_no_overlap(sim, drift);
        self.check_one_leader_per_epoch(sim);
        self.check_epochs_only_grow(sim);
    }

    /// Never two nodes that each believe they hold a valid lease at the same
    /// true instant.
    pub fn record_leases_and_check_no_overlap(&mut self, sim: &Sim<ElectionNode>, drift: &[f64]) {
        let now = sim.elapsed();
        for (id, &rate) in drift.iter().enumerate().take(sim.len()) {
            let Some(node) = sim.node(id) else {
                continue; // crashed: its last belief stays recorded in full
            };
            let Some((epoch, end)) = node.core().lease() else {
                // It stopped believing (stepped down, handed over): close
                // its open interval now.
                for lease in self.leases.iter_mut().filter(|l| l.node == id) {
                    lease.end = lease.end.min(now);
                }
                continue;
            };
            let end = to_true(sim, id, rate, end);
            let open = self
                .leases
                .iter()
                .rposition(|l| l.node == id && l.epoch == epoch);
            let index = match open {
                Some(index) => {
                    self.leases[index].end = end;
                    index
                }
                None => {
                    self.leases.push(LeaseInterval {
                        node: id,
                        epoch,
                        start: now,
                        end,
                    });
                    self.leases.len() - 1
                }
            };
            let mine = self.leases[index];
            if mine.end <= mine.start {
                continue;
            }
            for other in &self.leases {
                if other.node != id && other.start < mine.end && mine.start < other.end {
                    panic!(
                        "two nodes believe they hold a valid lease at once: {mine:?} and {other:?} \
                         (seed {})",
                        sim.seed()
                    );
                }
            }
        }
    }

    /// Never two different leaders with the same epoch.
    pub fn check_one_leader_per_epoch(&mut self, sim: &Sim<ElectionNode>) {
        for id in 0..sim.len() {
            let Some((epoch, _)) = sim.node(id).and_then(|n| n.core().lease()) else {
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

    /// The newest epoch a running node has seen never goes back.
    pub fn check_epochs_only_grow(&mut self, sim: &Sim<ElectionNode>) {
        for id in 0..sim.len() {
            let Some(epoch) = sim.node(id).map(|n| n.core().epoch()) else {
                continue;
            };
            let last = self.epochs.entry(id).or_insert(epoch);
            assert!(
                epoch >= *last,
                "node {id} went back from epoch {last} to {epoch} (seed {})",
                sim.seed()
            );
            *last = epoch;
        }
    }

    /// A node restarted: its in-memory epoch starts again from storage.
    pub fn forget_node(&mut self, id: NodeId) {
        self.epochs.remove(&id);
    }
}

/// A local instant of node `id` as true elapsed time, rounded up (so a
/// belief is never shortened by rounding), through its current drift.
fn to_true(sim: &Sim<ElectionNode>, id: NodeId, rate: f64, local: Instant) -> Duration {
    let local_now = sim.local_now(id);
    let now = sim.elapsed();
    if local >= local_now {
        now + Duration::from_secs_f64((local - local_now).as_secs_f64() / rate)
            + Duration::from_nanos(1)
    } else {
        now.saturating_sub(Duration::from_secs_f64(
            (local_now - local).as_secs_f64() / rate,
        ))
    }
}

/// A simulated election cluster: `n` nodes, all voters unless told
/// otherwise, node `i` with priority [`priority`]`(i)`. Views come from an
/// oracle: [`Cluster::refresh_views`] gives each running node the running
/// nodes it can exchange messages with both ways.
pub struct Cluster {
    /// The simulator.
    pub sim: Sim<ElectionNode>,
    /// The configuration every node runs.
    pub config: Config,
    /// The initial voter set.
    pub voters: VoterSet,
    /// Invariants, checked after every step of `run_*`.
    pub invariants: Invariants,
    drift: Vec<f64>,
    paused: BTreeSet<NodeId>,
    crashed_storage: BTreeMap<NodeId, MemStorage>,
}

impl Cluster {
    /// `n` nodes, the first `voters` of them voters, views refreshed once.
    pub fn new(seed: u64, n: usize, voters: usize, config: Config, net: NetConfig) -> Self {
        let mut sim = Sim::new(seed, net);
        let set = VoterSet::new((0..voters).map(|i| Voter {
            name: name(i),
            addr: addr(i),
        }));
        for i in 0..n {
            let seed = sim.rng().u64(..);
            let node = ElectionNode::new(
                config.clone(),
                name(i),
                priority(i),
                set.clone(),
                MemStorage::new(),
                seed,
                sim.now(),
            );
            sim.add_node(addr(i), node);
        }
        let mut cluster = Self {
            sim,
            config,
            voters: set,
            invariants: Invariants::default(),
            drift: vec![1.0; n],
            paused: BTreeSet::new(),
            crashed_storage: BTreeMap::new(),
        };
        cluster.refresh_views();
        cluster
    }

    /// Whether node `id` runs (not crashed, not paused).
    pub fn is_up(&self, id: NodeId) -> bool {
        self.sim.is_up(id) && !self.paused.contains(&id)
    }

    /// Gives every running node the view membership would settle on: the
    /// running nodes it can reach both ways.
    pub fn refresh_views(&mut self) {
        for id in 0..self.sim.len() {
            if !self.is_up(id) {
                continue;
            }
            let live: Vec<Peer> = (0..self.sim.len())
                .filter(|&j| j != id && self.is_up(j) && self.sim.reachable(id, j))
                .map(|j| Peer {
                    name: name(j),
                    addr: addr(j),
                    priority: priority(j),
                    voter: self.voters.contains(&name(j)),
                    behind: false,
                    suspect: false,
                })
                .collect();
            self.sim
                .with_node(id, |node, now| node.core_mut().set_view(now, live));
        }
    }

    /// Splits the network (as [`Sim::partition`]); views are not refreshed.
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

    /// Kills node `id`.
    pub fn crash(&mut self, id: NodeId) {
        self.paused.remove(&id);
        if let Some(node) = self.sim.crash(id) {
            self.crashed_storage.insert(id, node.storage);
        }
    }

    /// Restarts node `id` from what its disk kept, then refreshes views.
    pub fn restart(&mut self, id: NodeId, disk: Disk) {
        if self.sim.node(id).is_some() {
            self.crash(id);
        }
        let storage = match (self.crashed_storage.remove(&id), disk) {
            (Some(storage), Disk::Kept) => storage.after_crash(true),
            (Some(storage), Disk::UnsyncedLost) => storage.after_crash(false),
            _ => MemStorage::new(),
        };
        let seed = self.sim.rng().u64(..);
        let node = ElectionNode::new(
            self.config.clone(),
            name(id),
            priority(id),
            self.voters.clone(),
            storage,
            seed,
            self.sim.local_now(id),
        );
        self.invariants.forget_node(id);
        self.sim.restart(id, node);
    }

    /// Freezes node `id` (like SIGSTOP).
    pub fn pause(&mut self, id: NodeId) {
        self.paused.insert(id);
        self.sim.pause(id);
    }

    /// Unfreezes node `id`.
    pub fn resume(&mut self, id: NodeId) {
        self.paused.remove(&id);
        self.sim.resume(id);
    }

    /// Sets node `id`'s clock rate, remembered for the invariants.
    pub fn set_drift(&mut self, id: NodeId, rate: f64) {
        self.drift[id] = rate;
        self.sim.set_drift(id, rate);
    }

    /// Runs for `d`, checking the invariants after every step.
    pub fn run_for(&mut self, d: Duration) {
        let (invariants, drift) = (&mut self.invariants, &self.drift);
        self.sim.run_for(d, |sim| invariants.check(sim, drift));
    }

    /// Runs until `cond` or `limit`, checking the invariants after every step.
    pub fn run_until(&mut self, limit: Duration, mut cond: impl FnMut(&Self) -> bool) -> bool {
        let deadline = self.sim.elapsed() + limit;
        loop {
            if cond(self) {
                return true;
            }
            if self.sim.elapsed() >= deadline {
                return false;
            }
            // One step at a time, checked; time ends exactly at the limit.
            let before = self.sim.steps();
            let (invariants, drift) = (&mut self.invariants, &self.drift);
            let remaining = deadline - self.sim.elapsed();
            self.sim.run_until(remaining, |sim| {
                let stepped = sim.steps() > before;
                if stepped {
                    invariants.check(sim, drift);
                }
                stepped
            });
        }
    }

    /// The running node that holds a valid lease now, by its own clock.
    pub fn leader(&self) -> Option<(NodeId, Epoch)> {
        (0..self.sim.len()).find_map(|id| {
            let core = self.sim.node(id)?.core();
            let now = self.sim.local_now(id);
            core.is_leader(now)
                .then(|| core.lease().map(|(epoch, _)| (id, epoch)))
                .flatten()
        })
    }

    /// A leader that every running node reachable from it knows.
    pub fn settled_leader(&self) -> Option<NodeId> {
        let (leader, epoch) = self.leader()?;
        let known = (0..self.sim.len())
            .filter(|&j| self.is_up(j) && self.sim.reachable(leader, j))
            .all(|j| {
                self.sim.node(j).and_then(|n| n.core().leader()) == Some((name(leader), epoch))
            });
        known.then_some(leader)
    }
}

/// Figures for `cargo xtask bench election` (simulator part).
#[derive(Debug, Clone)]
pub struct Figures {
    /// Leader crash → a new leader holding a valid lease, over the trials.
    pub failover: Vec<Duration>,
    /// `transfer_to` → the successor holds a valid lease.
    pub handover: Vec<Duration>,
    /// Leaders elected (any node, any epoch) over `quiet` at 10% loss after
    /// the first settled, with no crash; the goal is zero.
    pub elections_under_loss: usize,
    /// Of those, how many moved leadership to another node.
    pub changes_under_loss: usize,
    /// Virtual time of the lossy run.
    pub quiet: Duration,
}

/// Measures failover, handover and stability under loss with defaults, five
/// voters, over `trials` seeds from `base_seed`.
pub fn measure(trials: u64, base_seed: u64) -> Figures {
    let config = Config::lan();
    let lease = config.lease_duration;
    let mut figures = Figures {
        failover: Vec::new(),
        handover: Vec::new(),
        elections_under_loss: 0,
        changes_under_loss: 0,
        quiet: Duration::from_secs(600),
    };
    for trial in 0..trials {
        let seed = base_seed.wrapping_add(trial);
        let mut cluster = Cluster::new(seed, 5, 5, config.clone(), NetConfig::lan());
        if !cluster.run_until(lease * 4, |c| c.settled_leader() == Some(0)) {
            continue;
        }
        let offset = Duration::from_micros(cluster.sim.rng().u64(0..1_000_000));
        cluster.run_for(Duration::from_secs(1) + offset);
        cluster.crash(0);
        let crashed = cluster.sim.elapsed();
        if cluster.run_until(lease * 4, |c| c.leader().is_some()) {
            figures.failover.push(cluster.sim.elapsed() - crashed);
        }

        let mut cluster = Cluster::new(seed ^ 0x4a4d, 5, 5, config.clone(), NetConfig::lan());
        if !cluster.run_until(lease * 4, |c| c.settled_leader() == Some(0)) {
            continue;
        }
        cluster.run_for(Duration::from_millis(500) + offset);
        let target = name(1 + (trial as usize % 4));
        let transferred = cluster
            .sim
            .with_node(0, |node, now| node.core_mut().transfer_to(now, &target));
        if matches!(transferred, Some(Ok(()))) {
            let started = cluster.sim.elapsed();
            let want = 1 + (trial as usize % 4);
            if cluster.run_until(lease * 4, |c| c.leader().map(|l| l.0) == Some(want)) {
                figures.handover.push(cluster.sim.elapsed() - started);
            }
        }
    }
    let lossy = NetConfig {
        loss: 0.10,
        ..NetConfig::lan()
    };
    let mut cluster = Cluster::new(base_seed ^ 0x10, 5, 5, config, lossy);
    cluster.run_until(lease * 10, |c| c.settled_leader() == Some(0));
    cluster.sim.take_events();
    let mut last = Some(0);
    let quiet = figures.quiet;
    let (mut elections, mut changes) = (0, 0);
    let step = Duration::from_secs(1);
    let mut run = Duration::ZERO;
    while run < quiet {
        cluster.run_for(step);
        run += step;
        for (_, node, output) in cluster.sim.take_events() {
            if matches!(output, Output::Elected { .. }) {
                elections += 1;
                if last != Some(node) {
                    changes += 1;
                    last = Some(node);
                }
            }
        }
    }
    figures.elections_under_loss = elections;
    figures.changes_under_loss = changes;
    figures.failover.sort();
    figures.handover.sort();
    figures
}
