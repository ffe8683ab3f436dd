//! Self-tests of the network simulator (`clustron_tests::sim`), driving a toy
//! pinger core: determinism, loss, duplication, partitions, blocks, crashes,
//! pauses, clock drift, slow nodes and the seed helpers.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clustron_tests::sim::{
    replay_hint, run_seeds, run_seeds_within, seeds, seeds_from, Actor, NetConfig, NodeId,
    NodeStats, Sim, Transmit, BUDGET_VAR,
};

const INTERVAL: Duration = Duration::from_millis(100);

#[derive(Debug, Clone)]
enum Msg {
    Ping { seq: u64, sent: Instant },
    Pong { seq: u64, sent: Instant },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Ev {
    Tick,
    GotPing {
        from: SocketAddr,
        seq: u64,
    },
    GotPong {
        from: SocketAddr,
        seq: u64,
        rtt: Duration,
    },
}

/// Every `INTERVAL` of local time, pings every peer; answers pings with pongs
/// (same reliability as its own pings) and reports what it sees.
struct Pinger {
    peers: Vec<SocketAddr>,
    next_tick: Instant,
    seq: u64,
    reliable: bool,
    /// Report no events (for the long run, whose log would be huge).
    quiet: bool,
    pongs: u64,
    out: VecDeque<Transmit<Msg>>,
    events: VecDeque<Ev>,
}

impl Pinger {
    fn new(now: Instant, peers: Vec<SocketAddr>) -> Self {
        Self {
            peers,
            next_tick: now + INTERVAL,
            seq: 0,
            reliable: false,
            quiet: false,
            pongs: 0,
            out: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    fn reliable(mut self) -> Self {
        self.reliable = true;
        self
    }

    /// A command: ping `to` once, now.
    fn ping(&mut self, now: Instant, to: SocketAddr) {
        self.seq += 1;
        let msg = Msg::Ping {
            seq: self.seq,
            sent: now,
        };
        self.out.push_back(Transmit {
            to,
            msg,
            reliable: self.reliable,
        });
    }

    fn report(&mut self, event: Ev) {
        if !self.quiet {
            self.events.push_back(event);
        }
    }
}

impl Actor for Pinger {
    type Message = Msg;
    type Event = Ev;

    fn handle_message(&mut self, now: Instant, from: SocketAddr, msg: Msg) {
        match msg {
            Msg::Ping { seq, sent } => {
                self.report(Ev::GotPing { from, seq });
                let reply = Msg::Pong { seq, sent };
                self.out.push_back(Transmit {
                    to: from,
                    msg: reply,
                    reliable: self.reliable,
                });
            }
            Msg::Pong { seq, sent } => {
                self.pongs += 1;
                let rtt = now.saturating_duration_since(sent);
                self.report(Ev::GotPong { from, seq, rtt });
            }
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        assert!(
            now >= self.next_tick,
            "timeout {:?} early",
            self.next_tick - now
        );
        self.report(Ev::Tick);
        for index in 0..self.peers.len() {
            self.ping(now, self.peers[index]);
        }
        self.next_tick += INTERVAL;
        if self.next_tick <= now {
            // Overdue after a pause: skip the missed ticks.
            self.next_tick = now + INTERVAL;
        }
    }

    fn poll_transmit(&mut self) -> Option<Transmit<Msg>> {
        self.out.pop_front()
    }

    fn poll_event(&mut self) -> Option<Ev> {
        self.events.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        Some(self.next_tick)
    }

    fn wire_size(_msg: &Msg) -> usize {
        24
    }
}

fn addr(index: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, (index / 250) as u8, (index % 250) as u8 + 1], 7000))
}

fn peers_of(index: usize, n: usize) -> Vec<SocketAddr> {
    (0..n).filter(|&i| i != index).map(addr).collect()
}

/// `n` pingers, each pinging all the others.
fn cluster(seed: u64, n: usize, net: NetConfig) -> Sim<Pinger> {
    let mut sim = Sim::new(seed, net);
    for index in 0..n {
        let pinger = Pinger::new(sim.start(), peers_of(index, n));
        sim.add_node(addr(index), pinger);
    }
    sim
}

type Log = Vec<(Duration, NodeId, Ev)>;

/// Messages (pings and pongs) node `to` received from node `from`.
fn received(log: &Log, to: NodeId, from: NodeId) -> usize {
    log.iter()
        .filter(|(_, node, event)| {
            *node == to
                && matches!(event,
                    Ev::GotPing { from: f, .. } | Ev::GotPong { from: f, .. } if *f == addr(from))
        })
        .count()
}

/// Pings node `to` received from node `from`.
fn pings(log: &Log, to: NodeId, from: NodeId) -> usize {
    log.iter()
        .filter(|(_, node, event)| {
            *node == to && matches!(event, Ev::GotPing { from: f, .. } if *f == addr(from))
        })
        .count()
}

/// The events after what was on the wire at `at` has landed.
fn landed_after(log: &Log, at: Duration) -> Log {
    let landed = at + NetConfig::lan().latency_max;
    log.iter().filter(|(t, ..)| *t > landed).cloned().collect()
}

fn ticks(log: &Log, node: NodeId) -> usize {
    log.iter()
        .filter(|(_, n, event)| *n == node && *event == Ev::Tick)
        .count()
}

fn total(sim: &Sim<Pinger>) -> NodeStats {
    (0..sim.len())
        .map(|id| sim.stats(id))
        .fold(NodeStats::default(), |a, b| NodeStats {
            msgs_sent: a.msgs_sent + b.msgs_sent,
            bytes_sent: a.bytes_sent + b.bytes_sent,
            msgs_received: a.msgs_received + b.msgs_received,
            bytes_received: a.bytes_received + b.bytes_received,
        })
}

/// A run exercising every fault, for the determinism tests.
fn eventful_run(seed: u64) -> (Log, Vec<NodeStats>, String) {
    let net = NetConfig {
        latency_min: Duration::from_millis(1),
        latency_max: Duration::from_millis(30),
        loss: 0.1,
        duplicate: 0.1,
    };
    let mut sim = cluster(seed, 5, net);
    sim.set_extra_delay(3, Duration::from_millis(7));
    sim.run_for(Duration::from_secs(2), |_| {});
    sim.partition(&[&[0, 1]]);
    sim.crash(2);
    sim.pause(3);
    sim.set_drift(4, 1.001);
    sim.run_for(Duration::from_secs(1), |_| {});
    sim.heal();
    sim.block(1, 4);
    let offset = Duration::from_millis(sim.rng().u64(0..100));
    let now = sim.local_now(2) + offset;
    sim.restart(2, Pinger::new(now, peers_of(2, 5)).reliable());
    sim.resume(3);
    sim.run_for(Duration::from_secs(2), |_| {});
    let stats = (0..sim.len()).map(|id| sim.stats(id)).collect();
    let net = format!("{:?}", sim.net_stats());
    (sim.take_events(), stats, net)
}

#[test]
fn the_same_seed_gives_an_identical_event_log() {
    let first = eventful_run(42);
    let second = eventful_run(42);
    assert!(
        first.0.len() > 500,
        "too few events to compare: {}",
        first.0.len()
    );
    assert_eq!(first, second);
}

#[test]
fn a_different_seed_gives_a_different_event_log() {
    assert_ne!(eventful_run(1).0, eventful_run(2).0);
}

#[test]
fn loss_drops_about_that_fraction_of_unreliable_messages() {
    run_seeds(
        "loss_drops_about_that_fraction_of_unreliable_messages",
        3,
        |seed| {
            let net = NetConfig {
                loss: 0.3,
                ..NetConfig::lan()
            };
            let mut sim = cluster(seed, 10, net);
            sim.run_for(Duration::from_secs(5), |_| {});
            let total = total(&sim);
            let net = sim.net_stats();
            assert!(total.msgs_sent > 5_000, "{total:?}");
            assert_eq!(net.sent, total.msgs_sent);
            assert_eq!(total.bytes_sent, 24 * total.msgs_sent);
            let lost = net.lost as f64 / net.sent as f64;
            assert!((0.2..0.4).contains(&lost), "lost fraction {lost} ({net:?})");
            // Only messages still in flight at the end are neither lost nor received.
            let in_flight = total.msgs_sent - net.lost - total.msgs_received;
            assert!(in_flight < 200, "{total:?} {net:?}");
        },
    );
}

#[test]
fn duplication_delivers_about_that_fraction_twice() {
    let net = NetConfig {
        duplicate: 0.5,
        ..NetConfig::lan()
    };
    let mut sim = cluster(9, 10, net);
    sim.run_for(Duration::from_secs(5), |_| {});
    let total = total(&sim);
    let ratio = total.msgs_received as f64 / total.msgs_sent as f64;
    assert!(
        (1.4..1.6).contains(&ratio),
        "received/sent {ratio} ({total:?})"
    );
}

#[test]
fn reliable_messages_are_never_lost_or_duplicated() {
    let net = NetConfig {
        loss: 1.0,
        duplicate: 1.0,
        ..NetConfig::lan()
    };
    let mut sim = Sim::new(3, net);
    for index in 0..3 {
        let pinger = Pinger::new(sim.start(), peers_of(index, 3)).reliable();
        sim.add_node(addr(index), pinger);
    }
    sim.run_for(Duration::from_secs(1), |_| {});
    let log = sim.take_events();
    // Ticks at 0.1 s .. 1.0 s, each a ping to 2 peers answered by a pong; the
    // pings and pongs of the tick at 1.0 s are still in flight.
    assert_eq!(received(&log, 0, 1), 18);
    assert_eq!(sim.net_stats().lost, 0);
    assert_eq!(sim.net_stats().duplicated, 0);
    assert_eq!(sim.node(0).map(|p| p.pongs), Some(18));
}

#[test]
fn a_partition_stops_delivery_between_groups_and_heal_restores_it() {
    let mut sim = cluster(5, 4, NetConfig::lan());
    sim.run_for(Duration::from_secs(1), |_| {});
    assert!(received(&sim.take_events(), 0, 2) > 0);

    sim.partition(&[&[0, 1], &[2, 3]]);
    sim.run_for(Duration::from_millis(10), |_| {}); // let in-flight messages land
    sim.take_events();
    sim.run_for(Duration::from_secs(2), |_| {});
    let log = sim.take_events();
    for (a, b) in [(0, 2), (0, 3), (1, 2), (1, 3)] {
        assert_eq!(
            received(&log, a, b),
            0,
            "{b} reached {a} across the partition"
        );
        assert_eq!(
            received(&log, b, a),
            0,
            "{a} reached {b} across the partition"
        );
    }
    assert!(received(&log, 0, 1) > 0 && received(&log, 2, 3) > 0);
    assert!(sim.net_stats().cut > 0);

    sim.heal();
    sim.run_for(Duration::from_secs(1), |_| {});
    let log = sim.take_events();
    assert!(received(&log, 0, 2) > 0 && received(&log, 3, 1) > 0);
}

#[test]
fn nodes_not_listed_in_a_partition_form_one_group() {
    let mut sim = cluster(6, 4, NetConfig::lan());
    sim.isolate(0);
    sim.run_for(Duration::from_secs(1), |_| {});
    let log = sim.take_events();
    for other in 1..4 {
        assert_eq!(received(&log, 0, other), 0);
        assert_eq!(received(&log, other, 0), 0);
    }
    assert!(received(&log, 1, 2) > 0 && received(&log, 3, 1) > 0);
}

#[test]
fn a_block_cuts_one_direction_only() {
    let mut sim = cluster(7, 2, NetConfig::lan());
    sim.block(0, 1);
    sim.run_for(Duration::from_secs(1), |_| {});
    let log = sim.take_events();
    assert_eq!(received(&log, 1, 0), 0);
    // 1 pings 0 (the ping of the tick at 1.0 s is in flight), and 0's pongs
    // are blocked too.
    assert_eq!(received(&log, 0, 1), 9);
    assert_eq!(sim.node(1).map(|p| p.pongs), Some(0));
}

#[test]
fn a_crashed_node_receives_nothing_and_a_restarted_one_works_again() {
    let mut sim = cluster(8, 3, NetConfig::lan());
    sim.run_for(Duration::from_secs(1), |_| {});
    sim.take_events();
    let salvaged = sim.crash(2).expect("node 2 was running");
    assert!(salvaged.pongs > 0);
    assert!(!sim.is_up(2) && sim.node(2).is_none());
    assert!(sim.crash(2).is_none());
    let before = sim.stats(2);
    let sent_to_it = sim.stats(0).msgs_sent;
    sim.run_for(Duration::from_secs(1), |_| {});
    assert!(sim.stats(0).msgs_sent > sent_to_it);
    assert_eq!(
        sim.stats(2),
        before,
        "a crashed node sends and receives nothing"
    );
    let log = sim.take_events();
    assert!(log.iter().all(|(_, node, _)| *node != 2));
    let crashed_at = Duration::from_secs(1);
    assert_eq!(received(&landed_after(&log, crashed_at), 0, 2), 0);

    let now = sim.local_now(2);
    sim.restart(2, Pinger::new(now, peers_of(2, 3)));
    assert!(sim.is_up(2));
    sim.run_for(Duration::from_secs(1), |_| {});
    let log = sim.take_events();
    assert!(received(&log, 2, 0) > 0 && received(&log, 0, 2) > 0);
    // 10 ticks to 2 peers; the last tick's pongs are in flight.
    assert_eq!(sim.node(2).map(|p| p.pongs), Some(18), "a fresh core");
}

#[test]
fn messages_a_node_sent_before_crashing_are_still_delivered() {
    let net = NetConfig {
        latency_min: Duration::from_millis(50),
        latency_max: Duration::from_millis(50),
        ..NetConfig::lan()
    };
    let mut sim = cluster(10, 2, net);
    sim.run_for(INTERVAL, |_| {}); // both tick and send a ping
    sim.crash(0);
    sim.run_for(Duration::from_millis(60), |_| {});
    let log = sim.take_events();
    assert_eq!(received(&log, 1, 0), 1, "0's ping was on the wire");
    assert_eq!(sim.net_stats().to_crashed, 1, "1's ping to 0 died");
}

#[test]
fn reliable_messages_to_a_process_that_restarted_meanwhile_are_dropped() {
    let net = NetConfig {
        latency_min: Duration::from_millis(50),
        latency_max: Duration::from_millis(50),
        ..NetConfig::lan()
    };
    let mut sim: Sim<Pinger> = Sim::new(11, net);
    for index in 0..2 {
        let mut pinger = Pinger::new(sim.start(), Vec::new());
        pinger.reliable = index == 0;
        sim.add_node(addr(index), pinger);
    }
    let (a, b) = (addr(0), addr(1));
    sim.with_node(0, |p, now| p.ping(now, b)); // reliable
    sim.with_node(1, |p, now| p.ping(now, a)); // unreliable
    sim.run_for(Duration::from_millis(10), |_| {});
    for id in [0, 1] {
        sim.crash(id);
        let now = sim.local_now(id);
        sim.restart(id, Pinger::new(now, Vec::new()));
    }
    sim.run_for(Duration::from_millis(100), |_| {});
    let log = sim.take_events();
    assert_eq!(pings(&log, 1, 0), 0, "the stream died with the old process");
    assert_eq!(pings(&log, 0, 1), 1, "a datagram reaches the new process");
}

#[test]
fn a_paused_node_gets_its_queued_messages_on_resume_and_no_timers_while_paused() {
    let mut sim = cluster(12, 3, NetConfig::lan());
    sim.run_for(Duration::from_secs(1), |_| {});
    sim.take_events();
    sim.pause(1);
    assert!(!sim.is_up(1) && sim.node(1).is_some());
    let received_before = sim.stats(1).msgs_received;
    sim.run_for(Duration::from_secs(2), |_| {});
    let log = sim.take_events();
    assert!(
        log.iter().all(|(_, node, _)| *node != 1),
        "a paused node does nothing"
    );
    assert_eq!(sim.stats(1).msgs_received, received_before);
    let paused_at = Duration::from_secs(1);
    assert_eq!(received(&landed_after(&log, paused_at), 0, 1), 0);

    let resumed_at = sim.elapsed();
    sim.resume(1);
    assert!(sim.is_up(1));
    sim.run_for(Duration::from_micros(1), |_| {});
    let log = sim.take_events();
    let at_resume: Vec<_> = log
        .iter()
        .filter(|(at, node, _)| *node == 1 && *at == resumed_at)
        .map(|(_, _, event)| event.clone())
        .collect();
    // Pings of the ticks at 1.0 s .. 2.9 s from each of the two peers (plus
    // the pongs to node 1's own last pings before the pause).
    let pings = at_resume
        .iter()
        .filter(|event| matches!(event, Ev::GotPing { .. }))
        .count();
    assert_eq!(pings, 40, "{at_resume:?}");
    assert_eq!(
        at_resume.last(),
        Some(&Ev::Tick),
        "overdue timer fires after the queue"
    );
    for peer in [addr(0), addr(2)] {
        let seqs: Vec<u64> = at_resume
            .iter()
            .filter_map(|event| match event {
                Ev::GotPing { from, seq } if *from == peer => Some(*seq),
                _ => None,
            })
            .collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "arrival order: {seqs:?}"
        );
    }
}

#[test]
fn a_drifting_clock_runs_faster_by_its_rate() {
    let mut sim = cluster(13, 3, NetConfig::lan());
    sim.set_drift(1, 2.0);
    sim.set_drift(2, 1.0 + 1e-4);
    sim.run_for(Duration::from_secs(10), |_| {});
    let local = |sim: &Sim<Pinger>, id| sim.local_now(id) - sim.start();
    assert_eq!(sim.now() - sim.start(), Duration::from_secs(10));
    assert_eq!(local(&sim, 0), Duration::from_secs(10));
    assert_eq!(local(&sim, 1), Duration::from_secs(20));
    assert_eq!(local(&sim, 2), Duration::from_nanos(10_001_000_000));
    let log = sim.take_events();
    assert_eq!(ticks(&log, 0), 100);
    assert_eq!(ticks(&log, 1), 200);
    // 100 ticks take 9.999 s of true time at 100 ppm fast.
    assert_eq!(ticks(&log, 2), 100);

    sim.set_drift(1, 0.5);
    sim.run_for(Duration::from_secs(2), |_| {});
    assert_eq!(
        local(&sim, 1),
        Duration::from_secs(21),
        "continuous after a change"
    );
    assert_eq!(ticks(&sim.take_events(), 1), 10);
}

#[test]
fn extra_delay_slows_every_message_to_and_from_a_node() {
    let mut sim = cluster(14, 3, NetConfig::lan());
    sim.set_extra_delay(2, Duration::from_millis(40));
    sim.run_for(Duration::from_secs(1), |_| {});
    for (_, node, event) in sim.take_events() {
        if let Ev::GotPong { from, rtt, .. } = event {
            let slow = node == 2 || from == addr(2);
            let (low, high) = if slow { (80, 84) } else { (0, 4) };
            let range = Duration::from_millis(low)..=Duration::from_millis(high);
            assert!(range.contains(&rtt), "{node} <- {from}: {rtt:?}");
        }
    }
}

#[test]
fn with_node_collects_new_transmits_at_once_and_node_mut_at_the_next_step() {
    let net = NetConfig {
        latency_min: Duration::from_millis(1),
        latency_max: Duration::from_millis(1),
        ..NetConfig::lan()
    };
    let mut sim: Sim<Pinger> = Sim::new(15, net);
    sim.add_node(addr(0), Pinger::new(sim.start(), Vec::new()));
    sim.add_node(addr(1), Pinger::new(sim.start(), Vec::new()));
    let b = addr(1);
    sim.with_node(0, |p, now| p.ping(now, b));
    assert_eq!(sim.stats(0).msgs_sent, 1);
    let now = sim.local_now(0);
    sim.node_mut(0).expect("running").ping(now, b);
    assert_eq!(sim.stats(0).msgs_sent, 1, "collected lazily");
    assert!(sim.step());
    assert_eq!(sim.stats(0).msgs_sent, 2);
    sim.run_for(Duration::from_millis(5), |_| {});
    assert_eq!(sim.node(0).map(|p| p.pongs), Some(2));
}

#[test]
fn run_for_checks_after_every_step_and_ends_at_exactly_the_target() {
    let mut sim = cluster(16, 3, NetConfig::lan());
    let mut checks = 0;
    sim.run_for(Duration::from_millis(1_234), |_| checks += 1);
    assert_eq!(checks, sim.steps());
    assert_eq!(sim.elapsed(), Duration::from_millis(1_234));
}

#[test]
fn run_until_stops_when_the_condition_holds_or_at_the_limit() {
    let mut sim = cluster(17, 3, NetConfig::lan());
    assert!(sim.run_until(Duration::from_secs(10), |_| true));
    assert_eq!(
        sim.elapsed(),
        Duration::ZERO,
        "checked once before any step"
    );
    let got_pong = sim.run_until(Duration::from_secs(10), |sim| {
        sim.node(0).is_some_and(|p| p.pongs > 0)
    });
    assert!(got_pong);
    let at = sim.elapsed();
    assert!(
        at > INTERVAL && at < INTERVAL + Duration::from_millis(5),
        "{at:?}"
    );
    assert!(!sim.run_until(Duration::from_secs(1), |_| false));
    assert_eq!(sim.elapsed(), at + Duration::from_secs(1));
}

#[test]
fn step_reports_when_nothing_is_pending() {
    let mut sim: Sim<Pinger> = Sim::new(18, NetConfig::lan());
    assert!(!sim.step());
    assert!(sim.is_empty());
    let id = sim.add_node(addr(0), Pinger::new(sim.start(), Vec::new()));
    assert_eq!(sim.id_of(addr(0)), Some(id));
    assert!(sim.step());
    assert_eq!(sim.elapsed(), INTERVAL);
    sim.crash(id);
    assert!(!sim.step(), "a crashed node's timer is gone");
}

/// A core whose deadline never moves: a bug the simulator must report.
struct Stuck {
    deadline: Instant,
}

impl Actor for Stuck {
    type Message = ();
    type Event = ();
    fn handle_message(&mut self, _: Instant, _: SocketAddr, _: ()) {}
    fn handle_timeout(&mut self, _: Instant) {}
    fn poll_transmit(&mut self) -> Option<Transmit<()>> {
        None
    }
    fn poll_event(&mut self) -> Option<()> {
        None
    }
    fn poll_timeout(&self) -> Option<Instant> {
        Some(self.deadline)
    }
    fn wire_size(_: &()) -> usize {
        0
    }
}

#[test]
#[should_panic(expected = "stays in the past")]
fn a_core_whose_timeout_stays_in_the_past_is_reported() {
    let mut sim = Sim::new(19, NetConfig::lan());
    let deadline = sim.start();
    sim.add_node(addr(0), Stuck { deadline });
    sim.run_for(Duration::from_secs(1), |_| {});
}

#[test]
fn seeds_honour_an_explicit_seed() {
    assert_eq!(
        seeds_from("any_test", 8, Some("12345"), Some("3")),
        vec![12345]
    );
    assert_eq!(seeds_from("any_test", 8, Some("0xff"), None), vec![255]);
}

#[test]
fn seeds_are_stable_per_test_and_differ_between_tests() {
    let a = seeds_from("test_a", 4, None, None);
    assert_eq!(a.len(), 4);
    assert_eq!(a, seeds_from("test_a", 4, None, Some("")));
    assert_ne!(a, seeds_from("test_b", 4, None, None));
    assert_eq!(seeds_from("test_a", 4, None, Some("2")), a[..2].to_vec());
    assert_eq!(seeds_from("test_a", 4, Some(""), Some("6"))[..4], a[..]);
}

#[test]
#[should_panic(expected = "CLUSTRON_SEED=\"12x\" is not a u64")]
fn a_malformed_seed_is_refused_rather_than_ignored() {
    seeds_from("any_test", 1, Some("12x"), None);
}

#[test]
fn run_seeds_re_raises_the_panic_of_a_failing_seed_and_names_it() {
    let name = "run_seeds_re_raises_the_panic_of_a_failing_seed_and_names_it";
    // Reads the environment like any user of `run_seeds`, so it also holds
    // under CLUSTRON_SEED / CLUSTRON_SEEDS.
    let expected = seeds(name, 3);
    let ran = std::cell::RefCell::new(Vec::new());
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run_seeds(name, 3, |seed| {
            ran.borrow_mut().push(seed);
            panic!("seed {seed} fails on purpose");
        });
    }));
    let panic = result.expect_err("the first seed panics");
    let message = panic
        .downcast_ref::<String>()
        .expect("a formatted panic message");
    assert!(message.contains("fails on purpose"), "{message}");
    assert_eq!(ran.into_inner(), expected[..1], "stops at the failing seed");
    assert_eq!(
        replay_hint(name, 77),
        format!("{name} failed with seed 77; replay with CLUSTRON_SEED=77")
    );
}

#[test]
fn run_seeds_within_starts_no_seed_after_its_budget_but_always_runs_one() {
    let name = "run_seeds_within_starts_no_seed_after_its_budget_but_always_runs_one";
    // Reads the environment like any user, so it also holds under
    // CLUSTRON_SEED / CLUSTRON_SEEDS / CLUSTRON_SIM_BUDGET_SECS.
    let expected = seeds(name, 5);
    let ran = std::cell::RefCell::new(Vec::new());
    let run = run_seeds_within(name, 5, Duration::ZERO, |seed| ran.borrow_mut().push(seed));
    let ran = ran.into_inner();
    assert_eq!(run.run, ran.len());
    assert_eq!(run.planned, expected.len());
    assert_eq!(ran, expected[..ran.len()], "seeds in order");
    assert!(!ran.is_empty(), "the first seed always runs");
    if std::env::var(BUDGET_VAR).is_err() {
        assert_eq!(ran.len(), 1, "a zero budget starts no second seed");
    }
}

#[test]
fn a_hundred_nodes_run_ten_virtual_minutes() {
    // 100 nodes, each pinging 3 neighbours every 100 ms: about 3.6 million
    // steps. Figures are not asserted (see ARCHITECTURE.md); `steps` is.
    let n = 100;
    let mut sim = Sim::new(20, NetConfig::lan());
    for index in 0..n {
        let peers = (1..=3).map(|k| addr((index + k) % n)).collect();
        let mut pinger = Pinger::new(sim.start(), peers);
        pinger.quiet = true;
        sim.add_node(addr(index), pinger);
    }
    let wall = Instant::now();
    let mut max_pongs = 0;
    sim.run_for(Duration::from_secs(600), |sim| {
        max_pongs = max_pongs.max(sim.node(0).map_or(0, |p| p.pongs));
    });
    eprintln!("{} steps in {:?}", sim.steps(), wall.elapsed());
    assert!(sim.steps() > 3_500_000, "{}", sim.steps());
    // 6000 ticks to 3 peers; the last tick's pongs are in flight.
    assert_eq!(max_pongs, 3 * 5_999);
}

#[test]
fn reachable_means_both_ways_through_partitions_and_blocks() {
    let mut sim = cluster(11, 4, NetConfig::lan());
    assert!(sim.reachable(0, 3));
    sim.partition(&[&[0, 1]]);
    assert!(sim.reachable(0, 1) && sim.reachable(2, 3));
    assert!(!sim.reachable(1, 2));
    sim.heal();
    sim.block(2, 3);
    assert!(!sim.reachable(2, 3) && !sim.reachable(3, 2));
    assert!(sim.reachable(0, 2));
    sim.heal();
    assert!(sim.reachable(2, 3));
}
