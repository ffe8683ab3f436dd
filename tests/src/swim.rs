//! Membership on the simulator: the adapter from the SWIM core to
//! [`crate::sim::Actor`], cluster builders, and the measurements shared by
//! the scenario tests and `cargo xtask bench membership`.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clustron_membership::core::{Core, Message, Output};
use clustron_membership::{Config, Member, MemberEvent, MemberState, NodeName};

use crate::sim::{Actor, NetConfig, NodeId, Sim, Transmit};

/// Bytes a datagram costs beyond its postcard payload: our 3-byte header,
/// QUIC (short header with an 8-byte connection ID, packet number, DATAGRAM
/// frame, 16-byte AEAD tag: about 30 bytes) and IPv4 + UDP (28 bytes).
/// Acknowledgement packets are not modelled.
pub const DATAGRAM_OVERHEAD: usize = 3 + 30 + 28;

/// A SWIM core as a simulator actor.
#[derive(Debug)]
pub struct SwimNode {
    core: Core,
    transmits: VecDeque<Transmit<Message>>,
    events: VecDeque<Output>,
}

impl SwimNode {
    /// A node named `name` at `addr`, with `seed` for its RNG.
    pub fn new(config: Config, name: NodeName, addr: SocketAddr, seed: u64, now: Instant) -> Self {
        Self {
            core: Core::new(config, Member::new(name, addr), seed, now),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// The core, to inspect.
    pub fn core(&self) -> &Core {
        &self.core
    }

    /// The core, to call API commands (through [`Sim::with_node`]).
    pub fn core_mut(&mut self) -> &mut Core {
        &mut self.core
    }

    fn fill(&mut self) {
        while let Some(output) = self.core.poll_output() {
            match output {
                Output::Send { to, msg, reliable } => {
                    self.transmits.push_back(Transmit { to, msg, reliable })
                }
                other => self.events.push_back(other),
            }
        }
    }
}

impl Actor for SwimNode {
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
        msg.encoded_len() + DATAGRAM_OVERHEAD
    }
}

/// The name of node `i`: `n0`, `n1`, ...
pub fn name(i: usize) -> NodeName {
    // Invariant: "n" followed by digits is a valid name.
    NodeName::new(format!("n{i}")).expect("valid name")
}

/// The address of node `i` (never bound: the simulator only uses it as a key).
pub fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, (i / 250) as u8, (i % 250) as u8 + 1], 7000))
}

/// A simulated cluster of SWIM nodes.
pub type Cluster = Sim<SwimNode>;

/// Adds node `i` (a fresh core, seeded from the simulator) and makes it join
/// through `seeds` (empty: form a cluster).
pub fn add_node(sim: &mut Cluster, config: &Config, i: usize, seeds: &[SocketAddr]) -> NodeId {
    let seed = sim.rng().u64(..);
    let node = SwimNode::new(config.clone(), name(i), addr(i), seed, sim.now());
    let id = sim.add_node(addr(i), node);
    let seeds = seeds.to_vec();
    sim.with_node(id, move |node, now| node.core_mut().join(now, &seeds));
    id
}

/// `n` nodes; node 0 forms the cluster and the others join through it,
/// one every `stagger`.
pub fn start(seed: u64, n: usize, config: &Config, net: NetConfig, stagger: Duration) -> Cluster {
    let mut sim = Sim::new(seed, net);
    add_node(&mut sim, config, 0, &[]);
    for i in 1..n {
        sim.run_for(stagger, |_| {});
        add_node(&mut sim, config, i, &[addr(0)]);
    }
    sim
}

/// The state `observer` has for node `subject`.
pub fn state(sim: &Cluster, observer: NodeId, subject: usize) -> Option<MemberState> {
    sim.node(observer)?
        .core()
        .member(&name(subject))
        .map(|m| m.state)
}

/// True when every up node sees exactly the nodes in `alive` as alive, and
/// every other node it knows as not alive.
pub fn converged(sim: &Cluster, alive: &[usize]) -> bool {
    (0..sim.len()).filter(|id| sim.is_up(*id)).all(|observer| {
        let Some(node) = sim.node(observer) else {
            return true;
        };
        let seen: Vec<&NodeName> = node
            .core()
            .members()
            .filter(|m| m.state == MemberState::Alive)
            .map(|m| &m.name)
            .collect();
        seen.len() == alive.len() && alive.iter().all(|i| seen.contains(&&name(*i)))
    })
}

/// Every `Failed` verdict in `events`: (time, observer, subject name).
pub fn failed_verdicts(events: &[(Duration, NodeId, Output)]) -> Vec<(Duration, NodeId, NodeName)> {
    events
        .iter()
        .filter_map(|(at, node, output)| match output {
            Output::Member(MemberEvent::Failed(m)) => Some((*at, *node, m.name.clone())),
            _ => None,
        })
        .collect()
}

/// Percentile `q` (0..=1) of sorted durations.
pub fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// One crash: the time from the crash to each live node's `dead` verdict,
/// or `None` if some live node had not reached it within `limit`.
pub fn detection_times(
    sim: &mut Cluster,
    victim: NodeId,
    limit: Duration,
) -> Option<Vec<Duration>> {
    sim.take_events();
    let crashed_at = sim.elapsed();
    sim.crash(victim);
    let live: Vec<NodeId> = (0..sim.len()).filter(|id| sim.is_up(*id)).collect();
    let mut verdicts: BTreeMap<NodeId, Duration> = BTreeMap::new();
    let victim_name = name(victim);
    let done = sim.run_until(limit, |sim| {
        for (at, node, subject) in failed_verdicts(&sim.take_events()) {
            if subject == victim_name {
                verdicts.entry(node).or_insert(at - crashed_at);
            }
        }
        live.iter().all(|id| verdicts.contains_key(id))
    });
    done.then(|| verdicts.into_values().collect())
}

/// A new node joins through node 0; the time until every up node has it alive.
pub fn join_time(
    sim: &mut Cluster,
    config: &Config,
    i: usize,
    limit: Duration,
) -> Option<Duration> {
    let started = sim.elapsed();
    let id = add_node(sim, config, i, &[addr(0)]);
    let joined = sim.run_until(limit, |sim| {
        (0..sim.len())
            .filter(|o| sim.is_up(*o) && *o != id)
            .all(|o| state(sim, o, i) == Some(MemberState::Alive))
    });
    joined.then(|| sim.elapsed() - started)
}

/// Mean bytes sent per node per second over `window`, for the up nodes.
pub fn bytes_per_node_per_second(sim: &mut Cluster, window: Duration) -> f64 {
    let up: Vec<NodeId> = (0..sim.len()).filter(|id| sim.is_up(*id)).collect();
    let before: u64 = up.iter().map(|id| sim.stats(*id).bytes_sent).sum();
    sim.run_for(window, |_| {});
    let after: u64 = up.iter().map(|id| sim.stats(*id).bytes_sent).sum();
    (after - before) as f64 / up.len() as f64 / window.as_secs_f64()
}

/// Figures for one cluster size, as `cargo xtask bench membership` prints them.
#[derive(Debug, Clone)]
pub struct Figures {
    /// Cluster size.
    pub n: usize,
    /// Crash → `dead` verdict, over every live member's verdict in every trial.
    pub detection_p50: Duration,
    /// 99th percentile of the same.
    pub detection_p99: Duration,
    /// Crashes not detected by every live node within 30 s.
    pub undetected: usize,
    /// False `dead` verdicts over 10 virtual minutes at 5% loss.
    pub false_dead_5: usize,
    /// False `dead` verdicts over 10 virtual minutes at 10% loss.
    pub false_dead_10: usize,
    /// Join → known alive by every member: median over trials.
    pub join_p50: Duration,
    /// Join: slowest trial.
    pub join_max: Duration,
    /// Mean bytes sent per node per second, steady state, no loss.
    pub bytes_per_node_per_second: f64,
}

/// Measures one cluster size with default settings over `trials` seeds.
pub fn measure(n: usize, trials: u64, base_seed: u64) -> Figures {
    let config = Config::lan();
    let mut detections = Vec::new();
    let mut joins = Vec::new();
    let mut undetected = 0;
    let mut bytes = Vec::new();
    let all: Vec<usize> = (0..n).collect();
    for trial in 0..trials {
        let seed = base_seed.wrapping_add(trial);
        let mut sim = start(
            seed,
            n,
            &config,
            NetConfig::lan(),
            Duration::from_millis(10),
        );
        sim.run_until(Duration::from_secs(60), |sim| converged(sim, &all));
        sim.run_for(Duration::from_secs(5), |_| {});
        if trial == 0 {
            bytes.push(bytes_per_node_per_second(&mut sim, Duration::from_secs(60)));
        }
        match join_time(&mut sim, &config, n, Duration::from_secs(30)) {
            Some(t) => joins.push(t),
            None => joins.push(Duration::from_secs(30)),
        }
        sim.run_for(Duration::from_secs(3), |_| {});
        let victim = 1 + sim.rng().usize(..n - 1);
        match detection_times(&mut sim, victim, Duration::from_secs(30)) {
            Some(times) => detections.extend(times),
            None => undetected += 1,
        }
    }
    detections.sort();
    joins.sort();
    let false_dead = |loss: f64| {
        let mut sim = start(
            base_seed ^ 0x5eed,
            n,
            &config,
            NetConfig::lan(),
            Duration::from_millis(10),
        );
        sim.run_until(Duration::from_secs(60), |sim| converged(sim, &all));
        sim.take_events();
        sim.set_net(NetConfig {
            loss,
            ..NetConfig::lan()
        });
        let mut verdicts = 0;
        sim.run_for(Duration::from_secs(600), |sim| {
            verdicts += failed_verdicts(&sim.take_events()).len();
        });
        verdicts
    };
    Figures {
        n,
        detection_p50: percentile(&detections, 0.5),
        detection_p99: percentile(&detections, 0.99),
        undetected,
        false_dead_5: false_dead(0.05),
        false_dead_10: false_dead(0.10),
        join_p50: percentile(&joins, 0.5),
        join_max: joins.last().copied().unwrap_or_default(),
        bytes_per_node_per_second: bytes.iter().sum::<f64>() / bytes.len().max(1) as f64,
    }
}
