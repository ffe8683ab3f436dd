//! Deterministic network simulator for sans-IO protocol cores.
//!
//! [`Sim`] drives many [`Actor`]s (membership, election, replication cores)
//! with virtual time, one seeded RNG and a virtual network that has latency,
//! jitter, loss, duplication, partitions, one-way blocks and slow nodes. Nodes
//! can crash, restart, pause (like `SIGSTOP`) and run on drifting clocks.
//!
//! ```text
//!  test ──commands──► with_node(id, |core, now| core.propose(..))
//!                                   │
//!   ┌───────────────── Sim ─────────┼─────────────────────────────────────┐
//!   │  heap of pending things, keyed (virtual time, insertion sequence)   │
//!   │    Deliver{from,to,msg} ──► cut? crashed? paused? ──► handle_message│
//!   │    Timer{node,generation} ──► stale? skip : handle_timeout          │
//!   │  after every call into a core, in this order:                       │
//!   │    poll_transmit* ──► loss, duplication, latency ──► heap           │
//!   │    poll_event*    ──► event log (elapsed, node, event)              │
//!   │    poll_timeout   ──► local→true time ──► heap (one live timer)     │
//!   └─────────────────────────────────────────────────────────────────────┘
//!  test ◄──take_events / node(id) / stats(id)── run_for(d, check invariants)
//! ```
//!
//! # Determinism
//!
//! Everything that happens is a function of the seed and of the sequence of
//! calls made on the [`Sim`]: the heap orders by (virtual time, insertion
//! sequence number), nodes live in a `Vec`, addresses in sorted tables, and
//! every random choice comes from the one [`fastrand::Rng`] in a fixed order
//! (per transmit: loss, then latency, then duplication and the copy's
//! latency; a draw is skipped when its probability is zero or the latency
//! range is a single value). The epoch [`Sim::start`] is a real `Instant`, so a core that compares instants only
//! with each other behaves identically in every run; the event log records
//! elapsed durations, not instants, so logs of two runs compare equal.
//!
//! # What the network does
//!
//! - **Latency**: uniform in `[latency_min, latency_max]`, plus the extra
//!   delay of the sender and of the receiver ([`Sim::set_extra_delay`]).
//!   Jitter reorders messages, reliable ones included: like the transport,
//!   which opens a stream per message, the simulator does not keep streams in
//!   order between messages.
//! - **Loss and duplication** apply to unreliable messages only, at send time.
//! - **Partitions, blocks and crashes** are checked when a message arrives, and
//!   drop reliable and unreliable messages alike. A reliable message also dies
//!   if the receiver crashed and restarted while it was in flight (the stream
//!   belonged to the old process); an unreliable one reaches the new process.
//!   Messages sent by a node that has since crashed are still delivered: they
//!   were already on the wire.
//! - **Paused** nodes queue what arrives and handle it, in arrival order, on
//!   [`Sim::resume`], before any overdue timer.
//!
//! # Time
//!
//! [`Sim::now`] is true time. Each node sees its own local time
//! ([`Sim::local_now`]), which runs at the rate set by [`Sim::set_drift`];
//! every `now` passed to a core is local, and its `poll_timeout` is read as a
//! local instant and converted back exactly (integer nanoseconds, rates in
//! parts per billion), so a timer never fires before its local deadline.
//!
//! A deadline already in the past fires at the current time. A core that
//! keeps returning a past deadline from `poll_timeout` after
//! `handle_timeout` would spin at one instant forever; the simulator panics
//! after [`MAX_TIMEOUTS_AT_ONE_INSTANT`] timeouts of one node at one instant,
//! naming the node.

mod clock;
mod queue;
mod seeds;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use self::clock::DriftClock;
use self::queue::TimeQueue;
pub use self::seeds::{
    replay_hint, run_seeds, run_seeds_within, seeds, seeds_from, SeedsRun, BUDGET_VAR,
    SEED_COUNT_VAR, SEED_VAR,
};

/// A sans-IO protocol core as the simulator sees it.
///
/// After every call into the core the simulator drains [`Actor::poll_transmit`]
/// until `None`, then [`Actor::poll_event`] until `None`, then reads
/// [`Actor::poll_timeout`] once.
pub trait Actor {
    /// A protocol message, as the core sends and receives it.
    type Message: Clone + std::fmt::Debug;
    /// Something the core reports to its user (became leader, member down, ...).
    type Event: Clone + std::fmt::Debug;
    /// A message from `from` arrived at local time `now`.
    fn handle_message(&mut self, now: Instant, from: SocketAddr, msg: Self::Message);
    /// The deadline last returned by [`Actor::poll_timeout`] has passed; `now`
    /// is local time, never earlier than that deadline.
    fn handle_timeout(&mut self, now: Instant);
    /// The next message to send, if any.
    fn poll_transmit(&mut self) -> Option<Transmit<Self::Message>>;
    /// The next event to report, if any.
    fn poll_event(&mut self) -> Option<Self::Event>;
    /// When [`Actor::handle_timeout`] should next be called, in local time.
    fn poll_timeout(&self) -> Option<Instant>;
    /// Bytes this message takes on the wire (for bandwidth accounting).
    fn wire_size(msg: &Self::Message) -> usize;
}

/// A message a core wants sent.
#[derive(Debug, Clone)]
pub struct Transmit<M> {
    /// The receiver's address.
    pub to: SocketAddr,
    /// The message.
    pub msg: M,
    /// Stream (`true`: never lost or duplicated by the network, only dropped
    /// by partitions and crashes) or datagram (`false`).
    pub reliable: bool,
}

/// A node's index, in the order nodes were added (0, 1, 2, ...).
pub type NodeId = usize;

/// How the virtual network behaves. Applies to messages sent after it is set.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Smallest one-way latency. Each message's latency is drawn uniformly in
    /// `[latency_min, latency_max]`; the spread (jitter) reorders messages.
    pub latency_min: Duration,
    /// Largest one-way latency; must not be below `latency_min`.
    pub latency_max: Duration,
    /// Probability in `[0, 1]` that an unreliable message is dropped. Reliable
    /// messages are never dropped by loss, only by partitions and crashes.
    pub loss: f64,
    /// Probability in `[0, 1]` that an unreliable message that was not lost is
    /// delivered twice; the copy gets its own latency.
    pub duplicate: f64,
}

impl NetConfig {
    /// A local network: 200 µs to 2 ms one way, no loss, no duplication.
    pub fn lan() -> Self {
        Self {
            latency_min: Duration::from_micros(200),
            latency_max: Duration::from_millis(2),
            loss: 0.0,
            duplicate: 0.0,
        }
    }

    /// Panics with the bad value if the configuration is unusable.
    fn check(&self) {
        assert!(
            self.latency_min <= self.latency_max,
            "latency_min {:?} is above latency_max {:?}",
            self.latency_min,
            self.latency_max
        );
        assert!(
            (0.0..=1.0).contains(&self.loss),
            "loss {} is not in [0, 1]",
            self.loss
        );
        assert!(
            (0.0..=1.0).contains(&self.duplicate),
            "duplicate {} is not in [0, 1]",
            self.duplicate
        );
    }
}

impl Default for NetConfig {
    /// [`NetConfig::lan`]: the common case for cluster tests.
    fn default() -> Self {
        Self::lan()
    }
}

/// Traffic of one node, summed over all its incarnations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeStats {
    /// Messages the node sent (counted at send time, lost or not).
    pub msgs_sent: u64,
    /// Wire bytes of the messages it sent ([`Actor::wire_size`]).
    pub bytes_sent: u64,
    /// Messages handed to the node's core.
    pub msgs_received: u64,
    /// Wire bytes of the messages handed to its core.
    pub bytes_received: u64,
}

/// What happened to messages on the whole network (an addition to the
/// per-node [`NodeStats`], for tests of the simulator and of loss tolerance).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Messages cores sent.
    pub sent: u64,
    /// Messages handed to a core (a duplicate counts twice).
    pub delivered: u64,
    /// Unreliable messages dropped by [`NetConfig::loss`].
    pub lost: u64,
    /// Extra copies made by [`NetConfig::duplicate`].
    pub duplicated: u64,
    /// Messages dropped on arrival by a partition or a block.
    pub cut: u64,
    /// Messages dropped on arrival because the receiver was down (crashed, or
    /// a reliable message to a process that has since restarted).
    pub to_crashed: u64,
    /// Messages sent to an address no node has.
    pub unknown_address: u64,
}

/// After this many timeouts of one node at one virtual instant, the simulator
/// assumes the core's `poll_timeout` is stuck in the past and panics.
pub const MAX_TIMEOUTS_AT_ONE_INSTANT: u32 = 10_000;

/// The simulator: nodes, the virtual network, virtual time and the event log.
///
/// Calls into cores happen only inside [`Sim::step`] (and the `run_*` loops
/// built on it), [`Sim::add_node`], [`Sim::restart`], [`Sim::with_node`] and
/// [`Sim::set_drift`].
pub struct Sim<A: Actor> {
    seed: u64,
    rng: fastrand::Rng,
    net: NetConfig,
    /// Virtual epoch: `now() == start + elapsed`.
    start: Instant,
    /// True time, nanoseconds since `start`.
    now: u64,
    /// Pending timers and deliveries by (true time, insertion order).
    queue: TimeQueue<What<A::Message>>,
    nodes: Vec<Node<A>>,
    by_addr: AddressBook,
    /// One-way blocks, (from, to).
    blocked: BTreeSet<(NodeId, NodeId)>,
    /// Nodes handed out by `node_mut` whose outputs are not yet collected.
    touched: Vec<NodeId>,
    events: Vec<(Duration, NodeId, A::Event)>,
    net_stats: NetStats,
    steps: u64,
}

/// One simulated machine: a process slot (the actor), its clock and inbox.
struct Node<A: Actor> {
    addr: SocketAddr,
    /// `None` while crashed.
    actor: Option<A>,
    paused: bool,
    /// Bumped by every crash; reliable messages carry the receiver's
    /// incarnation at send time.
    incarnation: u64,
    /// Bumped whenever the scheduled timer changes or dies; heap entries with
    /// an older generation are stale.
    timer_generation: u64,
    /// True time of the live timer entry, if one is in the heap.
    timer_at: Option<u64>,
    /// (true time, count) of timeouts at one instant, to catch a stuck core.
    timeouts_at: (u64, u32),
    /// Messages that arrived while paused, in arrival order.
    inbox: VecDeque<(NodeId, A::Message)>,
    extra_delay: u64,
    clock: DriftClock,
    /// Partition group; 0 is the group of nodes not listed in any group.
    group: usize,
    stats: NodeStats,
}

/// Something that happens at a given true time.
enum What<M> {
    Timer {
        node: NodeId,
        generation: u64,
    },
    Deliver {
        from: NodeId,
        to: NodeId,
        /// Receiver incarnation at send time; checked for reliable messages
        /// and for messages already queued at the receiver.
        incarnation: u64,
        reliable: bool,
        /// Already arrived earlier (queued while paused): skip the network
        /// checks, only the process must still be the same.
        arrived: bool,
        msg: M,
    },
}

impl<A: Actor> Sim<A> {
    /// An empty simulation at elapsed zero, seeded with `seed`.
    ///
    /// # Panics
    ///
    /// If `net` is invalid (`latency_min > latency_max`, a probability outside
    /// `[0, 1]`).
    pub fn new(seed: u64, net: NetConfig) -> Self {
        net.check();
        Self {
            seed,
            rng: fastrand::Rng::with_seed(seed),
            net,
            start: Instant::now(),
            now: 0,
            queue: TimeQueue::new(),
            nodes: Vec::new(),
            by_addr: AddressBook::default(),
            blocked: BTreeSet::new(),
            touched: Vec::new(),
            events: Vec::new(),
            net_stats: NetStats::default(),
            steps: 0,
        }
    }

    /// The seed this simulation was created with.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Adds a running node at `addr` and collects the core's initial outputs.
    ///
    /// # Panics
    ///
    /// If a node already has `addr`.
    pub fn add_node(&mut self, addr: SocketAddr, actor: A) -> NodeId {
        let id = self.nodes.len();
        let previous = self.by_addr.insert(addr, id);
        assert!(
            previous.is_none(),
            "address {addr} is already node {previous:?}"
        );
        self.nodes.push(Node {
            addr,
            actor: Some(actor),
            paused: false,
            incarnation: 0,
            timer_generation: 0,
            timer_at: None,
            timeouts_at: (0, 0),
            inbox: VecDeque::new(),
            extra_delay: 0,
            clock: DriftClock::exact(),
            group: 0,
            stats: NodeStats::default(),
        });
        self.collect(id);
        id
    }

    /// The virtual epoch: an `Instant` captured once in [`Sim::new`].
    pub fn start(&self) -> Instant {
        self.start
    }

    /// True (simulator) time: `start() + elapsed()`.
    pub fn now(&self) -> Instant {
        self.start + self.elapsed()
    }

    /// True time since the epoch.
    pub fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.now)
    }

    /// The one seeded RNG. Tests derive actor seeds from it, so that the
    /// whole run follows from [`Sim::seed`].
    pub fn rng(&mut self) -> &mut fastrand::Rng {
        &mut self.rng
    }

    /// The address of node `id`.
    ///
    /// # Panics
    ///
    /// If there is no node `id` (as for every method taking a [`NodeId`]).
    pub fn addr(&self, id: NodeId) -> SocketAddr {
        self.nodes[id].addr
    }

    /// The node with address `addr`.
    pub fn id_of(&self, addr: SocketAddr) -> Option<NodeId> {
        self.by_addr.get(addr)
    }

    /// Number of nodes ever added (crashed ones included).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether no node was added yet.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The core of node `id`; `None` while crashed. Works while paused, to
    /// inspect state.
    pub fn node(&self, id: NodeId) -> Option<&A> {
        self.nodes[id].actor.as_ref()
    }

    /// Mutable access to the core of node `id`; `None` while crashed.
    ///
    /// Prefer [`Sim::with_node`]: it passes the node's local time and collects
    /// the core's new transmits, events and timeout at once. After `node_mut`
    /// they are collected only at the next [`Sim::step`] (or `run_*`,
    /// [`Sim::take_events`]), still at the current time unless time moved.
    pub fn node_mut(&mut self, id: NodeId) -> Option<&mut A> {
        let actor = self.nodes[id].actor.as_mut()?;
        if !self.touched.contains(&id) {
            self.touched.push(id);
        }
        Some(actor)
    }

    /// Calls `f` with the core of node `id` and its local time, then collects
    /// the core's transmits, events and timeout. `None` (and `f` is not
    /// called) while crashed. Works while paused: the call acts as if the
    /// process ran briefly, and its transmits leave at once.
    pub fn with_node<R>(&mut self, id: NodeId, f: impl FnOnce(&mut A, Instant) -> R) -> Option<R> {
        let now = self.local_now(id);
        let result = f(self.nodes[id].actor.as_mut()?, now);
        self.collect(id);
        Some(result)
    }

    /// Whether node `id` runs: not crashed and not paused.
    pub fn is_up(&self, id: NodeId) -> bool {
        let node = &self.nodes[id];
        node.actor.is_some() && !node.paused
    }

    /// Kills node `id`'s process and returns its core, so a test can salvage
    /// what it had persisted. Its timers die, messages it queued while paused
    /// are lost, messages arriving for it are dropped until [`Sim::restart`],
    /// and reliable messages in flight to it are dropped even after a restart.
    /// Messages it already sent are still delivered. `None` if already
    /// crashed.
    pub fn crash(&mut self, id: NodeId) -> Option<A> {
        tracing::debug!(node = id, elapsed = ?self.elapsed(), "crash");
        let node = &mut self.nodes[id];
        let actor = node.actor.take()?;
        node.paused = false;
        node.incarnation += 1;
        node.inbox.clear();
        Self::cancel_timer(node);
        Some(actor)
    }

    /// Starts a fresh core on node `id` (same address, same clock) and
    /// collects its initial outputs. A node that is still running is crashed
    /// first, and its old core dropped.
    pub fn restart(&mut self, id: NodeId, actor: A) {
        if self.nodes[id].actor.is_some() {
            self.crash(id);
        }
        tracing::debug!(node = id, elapsed = ?self.elapsed(), "restart");
        self.nodes[id].actor = Some(actor);
        self.collect(id);
    }

    /// Freezes node `id`, like `SIGSTOP`: no timeouts and no message handling;
    /// arriving messages queue up until [`Sim::resume`]. No effect on a
    /// crashed node.
    pub fn pause(&mut self, id: NodeId) {
        tracing::debug!(node = id, elapsed = ?self.elapsed(), "pause");
        let node = &mut self.nodes[id];
        if node.actor.is_some() {
            node.paused = true;
        }
    }

    /// Unfreezes node `id`: the messages that arrived while it was paused are
    /// handled now, in arrival order (one step each), then any overdue timer
    /// fires. No effect on a node that is not paused.
    pub fn resume(&mut self, id: NodeId) {
        tracing::debug!(node = id, elapsed = ?self.elapsed(), "resume");
        let node = &mut self.nodes[id];
        if !node.paused {
            return;
        }
        node.paused = false;
        let incarnation = node.incarnation;
        let mut inbox = std::mem::take(&mut node.inbox);
        for (from, msg) in inbox.drain(..) {
            let what = What::Deliver {
                from,
                to: id,
                incarnation,
                reliable: false,
                arrived: true,
                msg,
            };
            self.push(self.now, what);
        }
        // Give the (now empty) buffer back so the next pause does not allocate.
        self.nodes[id].inbox = inbox;
        self.schedule_timer(id);
    }

    /// Splits the network: nodes in different groups cannot exchange messages
    /// (dropped on arrival, reliable or not). Nodes not listed in any group
    /// form one extra group together. Replaces any previous partition; blocks
    /// stay.
    ///
    /// # Panics
    ///
    /// If a node is listed in two groups.
    pub fn partition(&mut self, groups: &[&[NodeId]]) {
        tracing::debug!(?groups, elapsed = ?self.elapsed(), "partition");
        for node in &mut self.nodes {
            node.group = 0;
        }
        for (index, group) in groups.iter().enumerate() {
            for &id in group.iter() {
                let node = &mut self.nodes[id];
                assert!(node.group == 0, "node {id} is in two partition groups");
                node.group = index + 1;
            }
        }
    }

    /// Cuts node `id` off from every other node (a partition with `id` alone
    /// on one side). Replaces any previous partition.
    pub fn isolate(&mut self, id: NodeId) {
        self.partition(&[&[id]]);
    }

    /// Drops every message from `from` to `to` from now on (one way).
    pub fn block(&mut self, from: NodeId, to: NodeId) {
        tracing::debug!(from, to, elapsed = ?self.elapsed(), "block");
        assert!(
            from < self.nodes.len() && to < self.nodes.len(),
            "no such node"
        );
        self.blocked.insert((from, to));
    }

    /// Whether messages pass both ways between `a` and `b` (same partition
    /// group, no block either way): what a membership view would settle on.
    pub fn reachable(&self, a: NodeId, b: NodeId) -> bool {
        self.nodes[a].group == self.nodes[b].group
            && !self.blocked.contains(&(a, b))
            && !self.blocked.contains(&(b, a))
    }

    /// Removes all partitions and blocks.
    pub fn heal(&mut self) {
        tracing::debug!(elapsed = ?self.elapsed(), "heal");
        for node in &mut self.nodes {
            node.group = 0;
        }
        self.blocked.clear();
    }

    /// Changes the network for messages sent from now on.
    ///
    /// # Panics
    ///
    /// If `net` is invalid, as in [`Sim::new`].
    pub fn set_net(&mut self, net: NetConfig) {
        net.check();
        self.net = net;
    }

    /// Adds `delay` to every message to and from node `id` sent from now on
    /// (a slow node or a slow link to it).
    pub fn set_extra_delay(&mut self, id: NodeId, delay: Duration) {
        self.nodes[id].extra_delay = nanos(delay);
    }

    /// Makes node `id`'s clock run at `rate` (e.g. `1.0 + 1e-4` is 100 ppm
    /// fast) from now on. Local time stays continuous: from a drift set at
    /// elapsed zero, `local = start + elapsed * rate`. The rate is kept in
    /// parts per billion and all conversions are integer arithmetic.
    ///
    /// # Panics
    ///
    /// If `rate` is not finite or not in `(0, 1000]`.
    pub fn set_drift(&mut self, id: NodeId, rate: f64) {
        let rate_ppb = DriftClock::rate_to_ppb(rate);
        self.nodes[id].clock.set_rate(self.now, rate_ppb);
        self.schedule_timer(id);
    }

    /// Node `id`'s local time now.
    pub fn local_now(&self, id: NodeId) -> Instant {
        self.start + Duration::from_nanos(self.nodes[id].clock.local(self.now))
    }

    /// Processes the single earliest pending thing (a message arrival or a
    /// timer) and moves time to it. Returns `false`, leaving time unchanged,
    /// if nothing is pending.
    ///
    /// # Panics
    ///
    /// If a core keeps asking for a timeout in the past (see the module docs).
    pub fn step(&mut self) -> bool {
        if self.next_time().is_none() {
            return false;
        }
        // Invariant: `next_time` returned `Some`, so the queue is not empty.
        let Some((at, what)) = self.queue.pop() else {
            return false;
        };
        debug_assert!(at >= self.now, "time went back from {} to {at}", self.now);
        self.now = at;
        self.steps += 1;
        match what {
            What::Timer { node, .. } => self.fire_timer(node),
            What::Deliver {
                from,
                to,
                incarnation,
                reliable,
                arrived,
                msg,
            } => self.arrive(from, to, incarnation, reliable, arrived, msg),
        }
        true
    }

    /// Steps until `d` of virtual time has passed, calling `check` after every
    /// step (the place to check invariants), then sets time to exactly the
    /// target.
    pub fn run_for<F: FnMut(&mut Self)>(&mut self, d: Duration, mut check: F) {
        let target = self.now.saturating_add(nanos(d));
        while self.next_time().is_some_and(|at| at <= target) {
            self.step();
            check(self);
        }
        self.now = self.now.max(target);
    }

    /// Steps until `cond` holds (checked once at the start and after every
    /// step) or `limit` of virtual time has passed. Returns whether `cond`
    /// became true; time stays where it did, or is set to exactly the limit.
    pub fn run_until<F: FnMut(&mut Self) -> bool>(&mut self, limit: Duration, mut cond: F) -> bool {
        let target = self.now.saturating_add(nanos(limit));
        if cond(self) {
            return true;
        }
        while self.next_time().is_some_and(|at| at <= target) {
            self.step();
            if cond(self) {
                return true;
            }
        }
        self.now = self.now.max(target);
        false
    }

    /// Drains the event log: (elapsed true time, node, event), in the order
    /// the cores emitted them.
    pub fn take_events(&mut self) -> Vec<(Duration, NodeId, A::Event)> {
        self.collect_touched();
        std::mem::take(&mut self.events)
    }

    /// Traffic counters of node `id`.
    pub fn stats(&self, id: NodeId) -> NodeStats {
        self.nodes[id].stats
    }

    /// Network-wide counters.
    pub fn net_stats(&self) -> NetStats {
        self.net_stats
    }

    /// Steps taken so far (stale timer entries not counted).
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// True time of the earliest live pending thing, after discarding stale
    /// timer entries from the top of the heap and collecting the outputs of
    /// nodes handed out by `node_mut`.
    fn next_time(&mut self) -> Option<u64> {
        self.collect_touched();
        while let Some((at, what)) = self.queue.peek() {
            if let What::Timer { node, generation } = *what {
                if self.nodes[node].timer_generation != generation {
                    self.queue.pop();
                    continue;
                }
            }
            return Some(at);
        }
        None
    }

    /// Collects the outputs of nodes handed out by `node_mut`, in the order
    /// they were handed out.
    fn collect_touched(&mut self) {
        for index in 0..self.touched.len() {
            let id = self.touched[index];
            self.collect(id);
        }
        self.touched.clear();
    }

    fn push(&mut self, at: u64, what: What<A::Message>) {
        self.queue.push(at, what);
    }

    /// Drains transmits and events of node `id`, then (re)schedules its timer.
    fn collect(&mut self, id: NodeId) {
        while let Some(transmit) = self.nodes[id].actor.as_mut().and_then(A::poll_transmit) {
            self.send(id, transmit);
        }
        let elapsed = self.elapsed();
        let node = &mut self.nodes[id];
        if let Some(actor) = node.actor.as_mut() {
            while let Some(event) = actor.poll_event() {
                tracing::trace!(node = id, ?elapsed, ?event, "event");
                self.events.push((elapsed, id, event));
            }
        }
        self.schedule_timer(id);
    }

    fn send(&mut self, from: NodeId, transmit: Transmit<A::Message>) {
        let Transmit { to, msg, reliable } = transmit;
        let size = A::wire_size(&msg) as u64;
        let stats = &mut self.nodes[from].stats;
        stats.msgs_sent += 1;
        stats.bytes_sent += size;
        self.net_stats.sent += 1;
        let Some(to_id) = self.by_addr.get(to) else {
            tracing::trace!(from, %to, ?msg, "sent to an unknown address");
            self.net_stats.unknown_address += 1;
            return;
        };
        if !reliable && self.net.loss > 0.0 && self.rng.f64() < self.net.loss {
            tracing::trace!(from, to = to_id, ?msg, "lost");
            self.net_stats.lost += 1;
            return;
        }
        let incarnation = self.nodes[to_id].incarnation;
        let extra = self.nodes[from]
            .extra_delay
            .saturating_add(self.nodes[to_id].extra_delay);
        // Draw order is part of determinism: latency, duplicate?, copy latency.
        let at = self
            .now
            .saturating_add(self.latency())
            .saturating_add(extra);
        let copy = (!reliable && self.net.duplicate > 0.0 && self.rng.f64() < self.net.duplicate)
            .then(|| msg.clone());
        let deliver = |msg| What::Deliver {
            from,
            to: to_id,
            incarnation,
            reliable,
            arrived: false,
            msg,
        };
        self.push(at, deliver(msg));
        if let Some(copy) = copy {
            self.net_stats.duplicated += 1;
            let at = self
                .now
                .saturating_add(self.latency())
                .saturating_add(extra);
            self.push(at, deliver(copy));
        }
    }

    /// One latency draw from the current network configuration.
    fn latency(&mut self) -> u64 {
        let min = nanos(self.net.latency_min);
        let max = nanos(self.net.latency_max);
        if min == max {
            min
        } else {
            self.rng.u64(min..=max)
        }
    }

    fn arrive(
        &mut self,
        from: NodeId,
        to: NodeId,
        incarnation: u64,
        reliable: bool,
        arrived: bool,
        msg: A::Message,
    ) {
        let node = &self.nodes[to];
        let stale_process = (reliable || arrived) && incarnation != node.incarnation;
        if node.actor.is_none() || stale_process {
            tracing::trace!(from, to, ?msg, "dropped: receiver down");
            self.net_stats.to_crashed += 1;
            return;
        }
        if !arrived && (node.group != self.nodes[from].group || self.blocked.contains(&(from, to)))
        {
            tracing::trace!(from, to, ?msg, "dropped: partition");
            self.net_stats.cut += 1;
            return;
        }
        let node = &mut self.nodes[to];
        if node.paused {
            node.inbox.push_back((from, msg));
            return;
        }
        let size = A::wire_size(&msg) as u64;
        node.stats.msgs_received += 1;
        node.stats.bytes_received += size;
        self.net_stats.delivered += 1;
        let now = self.start + Duration::from_nanos(node.clock.local(self.now));
        let from_addr = self.nodes[from].addr;
        tracing::trace!(from, to, ?msg, "deliver");
        let node = &mut self.nodes[to];
        // Invariant: checked `actor.is_some()` above and nothing since removed it.
        if let Some(actor) = node.actor.as_mut() {
            actor.handle_message(now, from_addr, msg);
        }
        self.collect(to);
    }

    fn fire_timer(&mut self, id: NodeId) {
        let now = self.now;
        let node = &mut self.nodes[id];
        node.timer_at = None;
        if node.paused {
            // `resume` reschedules from `poll_timeout`.
            return;
        }
        let (at, count) = &mut node.timeouts_at;
        if *at == now {
            *count += 1;
            assert!(
                *count <= MAX_TIMEOUTS_AT_ONE_INSTANT,
                "node {id} ({}) timed out {count} times at elapsed {:?}: its poll_timeout \
                 stays in the past after handle_timeout (seed {})",
                node.addr,
                Duration::from_nanos(now),
                self.seed
            );
        } else {
            *at = now;
            *count = 1;
        }
        let local = self.start + Duration::from_nanos(node.clock.local(now));
        // Invariant: a crash bumps the generation, so a live timer entry means
        // the actor is present; `if let` only avoids an unwrap.
        if let Some(actor) = node.actor.as_mut() {
            tracing::trace!(node = id, elapsed = ?Duration::from_nanos(now), "timeout");
            actor.handle_timeout(local);
        }
        self.collect(id);
    }

    /// Reads node `id`'s `poll_timeout` and makes the heap hold exactly one
    /// live entry for it, at the earliest true time its local clock reaches the
    /// deadline, and never before now.
    fn schedule_timer(&mut self, id: NodeId) {
        let now = self.now;
        let start = self.start;
        let node = &mut self.nodes[id];
        let deadline = node.actor.as_ref().and_then(A::poll_timeout);
        let at = deadline.map(|deadline| match deadline.checked_duration_since(start) {
            Some(local) => node.clock.true_time_reaching(nanos(local)).max(now),
            None => now,
        });
        if at == node.timer_at {
            return;
        }
        Self::cancel_timer(node);
        if let Some(at) = at {
            node.timer_at = Some(at);
            let generation = node.timer_generation;
            self.push(
                at,
                What::Timer {
                    node: id,
                    generation,
                },
            );
        }
    }

    fn cancel_timer(node: &mut Node<A>) {
        node.timer_generation += 1;
        node.timer_at = None;
    }
}

/// Address to node lookup, once per message sent.
///
/// IPv4 addresses, the usual case in tests, are keyed by one integer in a
/// sorted `Vec` searched by hand: far faster than a `BTreeMap<SocketAddr, _>`
/// in the unoptimised builds tests run in. Other addresses use a plain map.
#[derive(Default)]
struct AddressBook {
    /// Sorted by key, keys unique.
    v4: Vec<(u64, NodeId)>,
    other: BTreeMap<SocketAddr, NodeId>,
}

impl AddressBook {
    /// Adds `addr` unless present; returns the node that already had it.
    fn insert(&mut self, addr: SocketAddr, id: NodeId) -> Option<NodeId> {
        match addr {
            SocketAddr::V4(v4) => {
                let key = Self::v4_key(v4);
                match self.v4.binary_search_by_key(&key, |&(k, _)| k) {
                    Ok(found) => Some(self.v4[found].1),
                    Err(at) => {
                        self.v4.insert(at, (key, id));
                        None
                    }
                }
            }
            SocketAddr::V6(_) => match self.other.get(&addr) {
                Some(&existing) => Some(existing),
                None => self.other.insert(addr, id),
            },
        }
    }

    fn get(&self, addr: SocketAddr) -> Option<NodeId> {
        match addr {
            SocketAddr::V4(v4) => {
                let key = Self::v4_key(v4);
                let entries = &self.v4[..];
                let (mut low, mut high) = (0, entries.len());
                while low < high {
                    let middle = low + (high - low) / 2;
                    let (k, id) = entries[middle];
                    if k == key {
                        return Some(id);
                    }
                    if k < key {
                        low = middle + 1;
                    } else {
                        high = middle;
                    }
                }
                None
            }
            SocketAddr::V6(_) => self.other.get(&addr).copied(),
        }
    }

    /// IP in the high 32 bits, port in the low 16: one-to-one.
    fn v4_key(addr: std::net::SocketAddrV4) -> u64 {
        (u64::from(u32::from(*addr.ip())) << 16) | u64::from(addr.port())
    }
}

/// A duration in nanoseconds, saturating at `u64::MAX` (about 584 years).
fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_book_finds_every_address_it_holds_and_no_other() {
        let mut book = AddressBook::default();
        let addrs: Vec<SocketAddr> = [
            "10.0.0.3:7000",
            "10.0.0.1:7000",
            "10.0.0.1:7001",
            "[::1]:7000",
            "192.168.1.1:1",
            "[fe80::1]:9",
        ]
        .iter()
        .map(|a| a.parse().expect("literal address"))
        .collect();
        for (id, addr) in addrs.iter().enumerate() {
            assert_eq!(book.insert(*addr, id), None);
        }
        for (id, addr) in addrs.iter().enumerate() {
            assert_eq!(book.get(*addr), Some(id), "{addr}");
            assert_eq!(book.insert(*addr, 99), Some(id), "{addr}");
        }
        for missing in ["10.0.0.2:7000", "10.0.0.1:7002", "[::2]:7000"] {
            let addr: SocketAddr = missing.parse().expect("literal address");
            assert_eq!(book.get(addr), None, "{addr}");
        }
    }
}
