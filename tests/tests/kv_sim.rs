//! The whole DKV server on the deterministic simulator: election and
//! key-value server on every node, simulated clients retrying like the real
//! one, faults, and every history checked for linearizability.
//!
//! After every step [`clustron_tests::kv_sim::Cluster`] checks the log's
//! invariants (one leader per epoch, committed entries never change, commit
//! within the durable log) and the store's (applied within commit, replicas
//! agree at every applied index, no replica finds itself diverged). Each
//! run ends by stopping the clients and the faults, waiting for
//! convergence, and checking that every node holds the same store, every
//! acknowledged write is in it at its revision, every serializable read saw
//! a state that existed, no value was applied twice (with sessions), and
//! the history is linearizable.
//!
//! Seeds: `CLUSTRON_SEED=s` replays one; `CLUSTRON_SEEDS=n` runs n per
//! test; `CLUSTRON_SIM_BUDGET_SECS=s` bounds each test's wall time (no new
//! seed starts after it). Each test prints seeds run, time, operations
//! checked and the fraction of writes whose outcome stayed unknown.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::Duration;

use clustron_election::Config as ElectionConfig;
use clustron_tests::kv_sim::{Cluster, Finished, KvSetup, Planned, Retry};
use clustron_tests::linearizability::Violation;
use clustron_tests::replication::LogLoss;
use clustron_tests::sim::{replay_hint, run_seeds_within, NetConfig, NodeId, SeedsRun};

/// Each test stops starting seeds after this much wall time (the file runs
/// its tests two at a time on a 2-core CI machine).
const BUDGET: Duration = Duration::from_secs(12);

/// Loss, duplication, and jitter wide enough to reorder most messages.
fn rough() -> NetConfig {
    NetConfig {
        latency_min: Duration::from_micros(200),
        latency_max: Duration::from_millis(8),
        loss: 0.03,
        duplicate: 0.03,
    }
}

fn lease() -> Duration {
    ElectionConfig::lan().lease_duration
}

/// Long enough for a handover back to node 0, a full catch-up, and every
/// client's last operation to run out of retries.
fn finish_limit() -> Duration {
    ElectionConfig::lan().handover_delay + lease() * 10 + Duration::from_secs(10)
}

fn elect(cluster: &mut Cluster) -> NodeId {
    assert!(
        cluster.run_until(lease() * 4, |c| c.leader().is_some()),
        "no leader (seed {})\n{}",
        cluster.sim.seed(),
        cluster.describe()
    );
    cluster.leader().unwrap()
}

/// Panics with the violation unless the history is linearizable.
fn assert_linearizable(cluster: &Cluster, finished: &Finished) {
    if let Err(violation) = &finished.verdict {
        panic!(
            "the history is not linearizable (seed {}): {violation}",
            cluster.sim.seed()
        );
    }
}

/// What a test's seeds did, printed at its end.
#[derive(Debug, Default)]
struct Totals {
    ops: u64,
    attempts: u64,
    timeouts: u64,
    sessions_expired: u64,
    writes: u64,
    unknown_writes: u64,
    failed: u64,
    acked: usize,
    reads_at: usize,
    elections: usize,
    not_linearizable: usize,
}

impl Totals {
    fn add(&mut self, finished: &Finished) {
        self.ops += finished.clients.ops;
        self.attempts += finished.clients.attempts;
        self.timeouts += finished.clients.timeouts;
        self.sessions_expired += finished.clients.sessions_expired;
        self.writes += finished.clients.writes;
        self.unknown_writes += finished.clients.unknown_writes;
        self.failed += finished.clients.failed;
        self.acked += finished.acked;
        self.reads_at += finished.reads_at;
        self.elections += finished.elections;
        self.not_linearizable += usize::from(finished.verdict.is_err());
    }

    fn print(&self, test_name: &str, run: SeedsRun) {
        let unknown = if self.writes == 0 {
            0.0
        } else {
            self.unknown_writes as f64 / self.writes as f64
        };
        eprintln!(
            "{test_name}: {} of {} seeds in {:.1?}; {} operations checked ({} writes, {} \
             acknowledged writes found in the store, {} failed), unknown writes {} ({:.3}%); \
             {} serializable reads matched the store; {} requests, {} timed out, {} sessions \
             expired, {} elections; {} histories not linearizable",
            run.run,
            run.planned,
            run.elapsed,
            self.ops,
            self.writes,
            self.acked,
            self.failed,
            self.unknown_writes,
            unknown * 100.0,
            self.reads_at,
            self.attempts,
            self.timeouts,
            self.sessions_expired,
            self.elections,
            self.not_linearizable
        );
    }
}

/// Runs `scenario` over the test's seeds within the time budget, checks
/// every history is linearizable, and prints the totals.
fn run_linearizable(test_name: &str, default_count: u64, scenario: impl Fn(u64) -> Cluster) {
    let totals = RefCell::new(Totals::default());
    let run = run_seeds_within(test_name, default_count, BUDGET, |seed| {
        let mut cluster = scenario(seed);
        let finished = cluster.finish(finish_limit(), LogLoss::UnsyncedLost);
        assert_linearizable(&cluster, &finished);
        totals.borrow_mut().add(&finished);
    });
    let totals = totals.into_inner();
    totals.print(test_name, run);
    assert!(totals.ops > 0, "no operation was checked");
}

#[test]
fn a_healthy_cluster_answers_every_operation_and_its_history_is_linearizable() {
    let test_name = "a_healthy_cluster_answers_every_operation_and_its_history_is_linearizable";
    let totals = RefCell::new(Totals::default());
    let run = run_seeds_within(test_name, 8, BUDGET, |seed| {
        let mut cluster = Cluster::new(seed, KvSetup::new(3, 4, Retry::Session), rough());
        tracing::info!("three nodes elect node 0");
        assert_eq!(elect(&mut cluster), 0);
        tracing::info!("four clients run for five seconds on a rough network");
        cluster.run_for(Duration::from_secs(5));
        let finished = cluster.finish(finish_limit(), LogLoss::Kept);
        assert_linearizable(&cluster, &finished);
        assert_eq!(finished.elections, 1, "leadership moved (seed {seed})");
        assert_eq!(finished.clients.unknown_writes, 0, "seed {seed}");
        assert_eq!(finished.clients.failed, 0, "seed {seed}");
        totals.borrow_mut().add(&finished);
    });
    let totals = totals.into_inner();
    totals.print(test_name, run);
    assert!(totals.ops > 1000);
}

/// The exact scenario outside testers found. Three nodes, node 0 leads;
/// both followers are paused; client A puts to node 0, which appends the
/// put but cannot commit it; node 0 is paused and the followers resume, so
/// node 1 is elected and commits A's put from its log; client B reads A's
/// value, overwrites it and reads its own; A's request to node 0 times out
/// and A retries at node 1; B reads again. Returns the cluster, finished,
/// and the values A and B wrote.
fn outside_testers_scenario(seed: u64, retry: Retry) -> (Cluster, Finished, u64, u64) {
    const A: usize = 0;
    const B: usize = 1;
    const KEY: usize = 0;
    let (first_a, first_b, value_a, value_b) = (1, 2, 3, 4);
    let mut setup = KvSetup::new(3, 2, retry);
    setup.random_clients = false;
    setup.client.lease_ops = false;
    // As in the testers' run, A learns of the failover only by its timeout
    // (the client did not follow the topology then).
    setup.client.follow_leader = false;
    let mut cluster = Cluster::new(seed, setup, NetConfig::lan());
    // A's attempt must outlast the failover under it.
    cluster.with_client(A, |c, _| {
        c.config_mut().request_timeout = Duration::from_secs(3);
        c.config_mut().retry_for = Duration::from_secs(10);
    });

    tracing::info!("node 0 leads; both clients write once (A opens its session)");
    assert_eq!(elect(&mut cluster), 0);
    cluster.submit(A, Planned::Put(KEY, first_a));
    cluster.submit(B, Planned::Put(KEY, first_b));
    assert!(cluster.run_until(lease(), |c| c.clients_idle()));

    tracing::info!("both followers are paused; A puts to node 0, which appends it");
    cluster.pause(1);
    cluster.pause(2);
    let last = cluster.node(0).unwrap().server().replica().last_index();
    cluster.with_client(A, |c, _| c.prefer(0));
    cluster.submit(A, Planned::Put(KEY, value_a));
    let appended = cluster.run_until_step(lease(), |sim| {
        sim.node(0)
            .and_then(|a| a.node())
            .is_some_and(|n| n.server().replica().last_index() > last)
    });
    assert!(appended, "node 0 did not append A's put");
    let index_a = last + 1;
    cluster.run_for(Duration::from_millis(5));

    tracing::info!("node 0 is paused and the followers resume: node 1 is elected");
    cluster.pause(0);
    cluster.resume(1);
    cluster.resume(2);
    cluster.refresh_views();
    let failed_over = cluster.run_until(lease() * 6, |c| {
        c.leader() == Some(1) && c.node(1).unwrap().server().applied() >= index_a
    });
    assert!(
        failed_over,
        "node 1 did not take over\n{}",
        cluster.describe()
    );
    assert!(!cluster.client(A).is_idle(), "A's attempt ended too early");

    tracing::info!("B reads A's value, overwrites it and reads its own");
    cluster.with_client(B, |c, _| c.prefer(1));
    cluster.submit(B, Planned::Get(KEY));
    cluster.submit(B, Planned::Put(KEY, value_b));
    cluster.submit(B, Planned::Get(KEY));
    assert!(cluster.run_until(lease(), |c| c.client(B).is_idle()));
    assert!(!cluster.client(A).is_idle(), "A's attempt ended too early");

    tracing::info!("A's request to node 0 times out and A retries at node 1");
    assert!(cluster.run_until(Duration::from_secs(5), |c| c.client(A).is_idle()));
    assert_eq!(cluster.client(A).stats().timeouts, 1);
    cluster.submit(B, Planned::Get(KEY));
    assert!(cluster.run_until(lease(), |c| c.client(B).is_idle()));

    tracing::info!("node 0 resumes; everything settles");
    let finished = cluster.finish(finish_limit(), LogLoss::Kept);
    (cluster, finished, value_a, value_b)
}

#[test]
fn without_sessions_the_outside_testers_scenario_applies_the_retried_put_twice() {
    let test_name = "without_sessions_the_outside_testers_scenario_applies_the_retried_put_twice";
    let run = run_seeds_within(test_name, 3, BUDGET, |seed| {
        let (cluster, finished, value_a, _) = outside_testers_scenario(seed, Retry::WithoutSession);
        assert_eq!(
            finished.applied_twice,
            [("k0".to_owned(), value_a)],
            "seed {seed}"
        );
        match &finished.verdict {
            Err(Violation::NotLinearizable { key, explanation }) => {
                assert_eq!(key, "k0");
                eprintln!("{test_name}: the checker caught it (seed {seed}):\n{explanation}");
            }
            other => panic!(
                "the checker missed the doubled put (seed {}): {other:?}",
                cluster.sim.seed()
            ),
        }
    });
    assert!(run.run > 0);
}

#[test]
fn with_sessions_the_outside_testers_scenario_applies_the_retried_put_once() {
    let test_name = "with_sessions_the_outside_testers_scenario_applies_the_retried_put_once";
    let run = run_seeds_within(test_name, 3, BUDGET, |seed| {
        let (cluster, finished, _, value_b) = outside_testers_scenario(seed, Retry::Session);
        assert_linearizable(&cluster, &finished);
        assert!(finished.applied_twice.is_empty(), "seed {seed}");
        let leader = cluster.leader().unwrap();
        let store = cluster.node(leader).unwrap().server().store();
        let latest = store
            .range(&clustron_dkv::kv::RangeRequest {
                range: clustron_dkv::kv::KeyRange::Key(b"k0".to_vec()),
                revision: 0,
                limit: 0,
                keys_only: false,
                count_only: false,
            })
            .unwrap();
        assert_eq!(
            latest.kvs[0].value,
            value_b.to_string().into_bytes(),
            "A's retry overwrote B's later put (seed {seed})"
        );
    });
    assert!(run.run > 0);
}

/// Four clients on a cluster of `nodes` voters with drifting clocks (within
/// the election's bound), after the first election.
fn busy_cluster(seed: u64, nodes: usize, net: NetConfig) -> Cluster {
    let mut cluster = Cluster::new(seed, KvSetup::new(nodes, 4, Retry::Session), net);
    let rho = ElectionConfig::lan().max_drift;
    for id in 0..nodes {
        let rate = 1.0 + rho * (2.0 * cluster.sim.rng().f64() - 1.0);
        cluster.set_drift(id, rate);
    }
    elect(&mut cluster);
    cluster
}

#[test]
fn crashes_that_lose_or_tear_unsynced_writes_keep_histories_linearizable() {
    run_linearizable(
        "crashes_that_lose_or_tear_unsynced_writes_keep_histories_linearizable",
        20,
        |seed| {
            let mut cluster = busy_cluster(seed, 5, rough());
            for round in 0..6 {
                let victim = match cluster.sim.rng().bool() {
                    true => cluster.leader().unwrap_or(0),
                    false => cluster.sim.rng().usize(..5),
                };
                tracing::info!(round, victim, "a node crashes mid-traffic");
                cluster.crash(victim);
                cluster.refresh_views();
                let wait = cluster.sim.rng().u64(100..1500);
                cluster.run_for(Duration::from_millis(wait));
                let loss = match cluster.sim.rng().bool() {
                    true => LogLoss::UnsyncedLost,
                    false => LogLoss::Torn,
                };
                tracing::info!(?loss, "it restarts from what its disk kept");
                cluster.restart(victim, loss);
                cluster.refresh_views();
                cluster.run_for(Duration::from_millis(wait));
            }
            cluster
        },
    );
}

/// Snapshots every 50 entries (`KvSetup::new`): a node crashed while the
/// others write well past their last snapshot restarts from its own
/// snapshot and the log after it, finds the leader's log compacted past
/// its end, pulls the leader's snapshot and installs it; its state then
/// equals the one a node that replayed every entry had at that index, and
/// no install ever takes an applied index back (checked at every step).
#[test]
fn a_node_behind_the_leaders_snapshot_installs_it_and_its_state_equals_a_full_replay() {
    run_linearizable(
        "a_node_behind_the_leaders_snapshot_installs_it_and_its_state_equals_a_full_replay",
        10,
        |seed| {
            let mut cluster = busy_cluster(seed, 3, rough());
            let leader = cluster.leader().unwrap_or(0);
            let victim = (leader + 1) % 3;
            cluster.run_for(Duration::from_millis(1500));
            cluster.crash(victim);
            cluster.refresh_views();
            let applied = |c: &Cluster| c.node(leader).map_or(0, |n| n.server().applied());
            let target = applied(&cluster) + 150;
            assert!(
                cluster.run_until(Duration::from_secs(30), |c| applied(c) >= target),
                "the two others never wrote 150 entries more (seed {seed})"
            );
            cluster.restart(victim, LogLoss::UnsyncedLost);
            cluster.refresh_views();
            cluster.run_for(Duration::from_millis(1500));
            assert!(
                cluster.checks.stores.snapshots > 0,
                "no node restored or installed a snapshot (seed {seed})"
            );
            assert!(
                cluster.checks.stores.compared_with_replay > 0,
                "no state from a snapshot was compared with a full replay (seed {seed})"
            );
            cluster
        },
    );
}

/// Only leaders lose their tails here: a follower that comes back short
/// while the same leader leads never catches up, because the leader's
/// progress for it stays at what it had acknowledged and every nack is
/// clamped above that (`Replica::on_nack`); a new leader starts with fresh
/// progress. Reported; the follower case waits for a fix.
#[test]
fn a_node_that_lost_acknowledged_log_entries_votes_again_only_once_caught_up() {
    run_linearizable(
        "a_node_that_lost_acknowledged_log_entries_votes_again_only_once_caught_up",
        12,
        lost_tails,
    );
}

/// Seeds of the lost-tail scenario that once failed, replayed on every run.
///
/// - `3915814470415633408`: e1 handed over to e0, whose log lacked the
///   durable copy of committed entry 303, so e0 fetched from e2; e2 crashed
///   meanwhile and reopened with its last three entries damaged (log ending
///   at 301), and answered the fetch from there. e0 took that end for the
///   end of everything committed, cut its own 303 and wrote its no-op over
///   it. A fetch that ends before the summary its source promised with now
///   makes the new leader give up (`Replica::on_fetch_reply`).
#[test]
fn lost_tail_seeds_that_once_failed_stay_linearizable() {
    const SEEDS: &[u64] = &[3_915_814_470_415_633_408];
    for &seed in SEEDS {
        let mut cluster = lost_tails(seed);
        let finished = cluster.finish(finish_limit(), LogLoss::UnsyncedLost);
        assert_linearizable(&cluster, &finished);
    }
}

/// Four rounds: one node at a time crashes and reopens with its last
/// synced entries damaged, once the previous one has caught up.
fn lost_tails(seed: u64) -> Cluster {
    let mut cluster = busy_cluster(seed, 3, rough());
    for round in 0..4 {
        tracing::info!(round, "one node at a time: the last one has caught up");
        let caught_up = cluster.run_until(lease() * 10, |c| {
            (0..3).all(|id| c.node(id).is_some_and(|n| n.lost().is_none()))
        });
        assert!(
            caught_up,
            "a node never caught up (seed {seed})\n{}",
            cluster.describe()
        );
        // The leader or a follower: a follower that comes back short must
        // be sent what it lost by a leader that still counts it as holding
        // it.
        let victim = match cluster.sim.rng().bool() {
            true => cluster.leader().unwrap_or(0),
            false => (cluster.leader().unwrap_or(0) + 1 + round % 2) % 3,
        };
        tracing::info!(
            victim,
            "a node crashes; its log's last synced entries are damaged"
        );
        cluster.crash(victim);
        cluster.refresh_views();
        let down = cluster.sim.rng().u64(50..800);
        cluster.run_for(Duration::from_millis(down));
        cluster.restart(victim, LogLoss::TailDamaged);
        cluster.refresh_views();
        let wait = cluster.sim.rng().u64(300..1500);
        cluster.run_for(Duration::from_millis(wait));
    }
    assert!(
        cluster.lost_tails() > 0,
        "no restart found its log below the mark (seed {seed})"
    );
    cluster
}

#[test]
fn a_node_whose_disk_fails_steps_aside_and_the_others_serve() {
    run_linearizable(
        "a_node_whose_disk_fails_steps_aside_and_the_others_serve",
        12,
        |seed| {
            let mut cluster = busy_cluster(seed, 3, rough());
            for round in 0..3 {
                let victim = match cluster.sim.rng().bool() {
                    true => cluster.leader().unwrap_or(0),
                    false => cluster.sim.rng().usize(..3),
                };
                tracing::info!(
                    round,
                    victim,
                    "its log disk fails; it stops at its next write"
                );
                cluster.fail_disk(victim);
                let stopped = cluster.run_until(lease() * 10, |c| c.is_stopped(victim));
                assert!(
                    stopped,
                    "node {victim} never wrote (seed {seed})\n{}",
                    cluster.describe()
                );
                cluster.refresh_views();
                tracing::info!("another node leads");
                let moved =
                    cluster.run_until(lease() * 6, |c| c.leader().is_some_and(|l| l != victim));
                assert!(
                    moved,
                    "no other leader (seed {seed})\n{}",
                    cluster.describe()
                );
                let wait = cluster.sim.rng().u64(300..1500);
                cluster.run_for(Duration::from_millis(wait));
                tracing::info!("the disk is replaced: it restarts from what was durable");
                cluster.restart(victim, LogLoss::UnsyncedLost);
                cluster.refresh_views();
                let wait = cluster.sim.rng().u64(300..1500);
                cluster.run_for(Duration::from_millis(wait));
            }
            cluster
        },
    );
}

#[test]
fn a_paused_leader_resumes_with_late_timers_and_histories_stay_linearizable() {
    run_linearizable(
        "a_paused_leader_resumes_with_late_timers_and_histories_stay_linearizable",
        20,
        |seed| {
            let mut cluster = busy_cluster(seed, 3, NetConfig::lan());
            for round in 0..5 {
                let leader = cluster.leader().unwrap_or(0);
                let pause = cluster.sim.rng().u64(200..3000);
                tracing::info!(round, leader, pause, "SIGSTOP the leader mid-traffic");
                cluster.pause(leader);
                if cluster.sim.rng().bool() {
                    cluster.refresh_views();
                }
                cluster.run_for(Duration::from_millis(pause));
                tracing::info!("SIGCONT: queued messages first, then its overdue timers");
                cluster.resume(leader);
                cluster.refresh_views();
                let wait = cluster.sim.rng().u64(100..1500);
                cluster.run_for(Duration::from_millis(wait));
            }
            cluster
        },
    );
}

#[test]
fn a_leader_cut_off_in_a_minority_then_healed_keeps_histories_linearizable() {
    run_linearizable(
        "a_leader_cut_off_in_a_minority_then_healed_keeps_histories_linearizable",
        20,
        |seed| {
            let mut cluster = busy_cluster(seed, 5, NetConfig::lan());
            for round in 0..4 {
                let leader = cluster.leader().unwrap_or(0);
                let buddy = (leader + 1 + cluster.sim.rng().usize(..4)) % 5;
                tracing::info!(
                    round,
                    leader,
                    buddy,
                    "the leader and one follower are cut off"
                );
                cluster.partition(&[&[leader, buddy]]);
                if cluster.sim.rng().bool() {
                    cluster.refresh_views();
                }
                let cut = cluster.sim.rng().u64(300..3000);
                cluster.run_for(Duration::from_millis(cut));
                tracing::info!("healed");
                cluster.heal();
                cluster.refresh_views();
                let wait = cluster.sim.rng().u64(200..1500);
                cluster.run_for(Duration::from_millis(wait));
            }
            cluster
        },
    );
}

#[test]
fn heavy_loss_duplication_and_reordering_keep_histories_linearizable() {
    run_linearizable(
        "heavy_loss_duplication_and_reordering_keep_histories_linearizable",
        15,
        |seed| {
            let net = NetConfig {
                latency_min: Duration::from_micros(100),
                latency_max: Duration::from_millis(25),
                loss: 0.15,
                duplicate: 0.15,
            };
            let mut cluster = busy_cluster(seed, 5, net);
            tracing::info!("six seconds of traffic on a lossy, duplicating, reordering network");
            cluster.run_for(Duration::from_secs(6));
            cluster
        },
    );
}

#[test]
fn clocks_drifting_within_the_bound_keep_linearizable_reads_safe_across_failovers() {
    run_linearizable(
        "clocks_drifting_within_the_bound_keep_linearizable_reads_safe_across_failovers",
        15,
        |seed| {
            let mut cluster = busy_cluster(seed, 3, rough());
            let rho = ElectionConfig::lan().max_drift;
            for round in 0..5 {
                tracing::info!(round, "the clocks drift apart as far as the bound allows");
                for id in 0..3 {
                    let rate = if cluster.sim.rng().bool() {
                        1.0 + rho
                    } else {
                        1.0 - rho
                    };
                    cluster.set_drift(id, rate);
                }
                let leader = cluster.leader().unwrap_or(0);
                tracing::info!(leader, "the leader stalls just past its lease");
                cluster.pause(leader);
                let stall = lease() + Duration::from_millis(cluster.sim.rng().u64(0..200));
                cluster.run_for(stall);
                cluster.resume(leader);
                let wait = cluster.sim.rng().u64(300..1500);
                cluster.run_for(Duration::from_millis(wait));
            }
            cluster
        },
    );
}

/// Random faults while the clients run: crashes and restarts with lossy
/// disks (a damaged synced tail too, one node at a time), failed disks,
/// pauses that end later, partitions (random splits, a leader cut off with
/// one follower, one-way blocks), answers lost on the way to a client,
/// heals, changes of loss, duplication and jitter, all on drifting clocks.
fn chaos(seed: u64, retry: Retry) -> Cluster {
    let n = 5;
    let mut cluster = Cluster::new(seed, KvSetup::new(n, 4, retry), rough());
    let rho = ElectionConfig::lan().max_drift;
    for id in 0..n {
        let rate = 1.0 + rho * (2.0 * cluster.sim.rng().f64() - 1.0);
        cluster.set_drift(id, rate);
    }
    elect(&mut cluster);
    let pick_loss = |cluster: &mut Cluster| match cluster.sim.rng().u8(..3) {
        0 => LogLoss::Kept,
        1 => LogLoss::UnsyncedLost,
        _ => LogLoss::Torn,
    };
    let mut resume_at: BTreeMap<NodeId, Duration> = BTreeMap::new();
    tracing::info!("random faults for a while, the clients running throughout");
    for _ in 0..20 {
        let now = cluster.sim.elapsed();
        resume_at.retain(|&id, at| {
            let over = *at <= now;
            if over {
                cluster.resume(id);
            }
            !over
        });
        let pick = cluster.sim.rng().usize(..n);
        match cluster.sim.rng().u8(..14) {
            0 => cluster.crash(pick),
            1 => {
                let loss = pick_loss(&mut cluster);
                cluster.restart(pick, loss);
            }
            2 | 3 => {
                // The leader half of the time: the outside testers' shape.
                let victim = match cluster.sim.rng().bool() {
                    true => cluster.leader().unwrap_or(pick),
                    false => pick,
                };
                if cluster.is_up(victim) {
                    cluster.pause(victim);
                    let pause = Duration::from_millis(cluster.sim.rng().u64(100..3000));
                    resume_at.insert(victim, now + pause);
                }
            }
            4 => {
                let mut nodes: Vec<usize> = (0..n).collect();
                cluster.sim.rng().shuffle(&mut nodes);
                let cut = cluster.sim.rng().usize(1..n);
                let (left, right) = nodes.split_at(cut);
                cluster.partition(&[left, right]);
            }
            5 => {
                if let Some(leader) = cluster.leader() {
                    let other = (leader + 1) % n;
                    cluster.partition(&[&[leader, other]]);
                }
            }
            6 => {
                let other = cluster.sim.rng().usize(..n);
                if other != pick {
                    cluster.sim.block(pick, other);
                }
            }
            7 => cluster.heal(),
            9 => {
                // The request is processed, the answer never arrives: a
                // connection lost after the write was sent.
                let client = cluster.sim.rng().usize(..4);
                cluster.drop_replies(pick, client);
            }
            10 => {
                // One node below its mark at a time (a majority losing the
                // same entries loses them for good), and only the leader:
                // see a_leader_that_lost_acknowledged_log_entries_... for
                // why a follower would never catch up.
                let lost = (0..n).any(|id| cluster.node(id).is_some_and(|n| n.lost().is_some()));
                if let Some(leader) = cluster.leader().filter(|_| !lost) {
                    cluster.restart(leader, LogLoss::TailDamaged);
                }
            }
            11 if !(0..n).any(|id| cluster.is_stopped(id)) => cluster.fail_disk(pick),
            8 => {
                let net = NetConfig {
                    latency_min: Duration::from_micros(200),
                    latency_max: Duration::from_millis(cluster.sim.rng().u64(1..=20)),
                    loss: cluster.sim.rng().f64() * 0.15,
                    duplicate: cluster.sim.rng().f64() * 0.1,
                };
                cluster.sim.set_net(net);
            }
            _ => {}
        }
        if cluster.sim.rng().bool() {
            cluster.refresh_views();
        }
        let wait = Duration::from_millis(cluster.sim.rng().u64(50..800));
        cluster.run_for(wait);
    }
    tracing::info!("faults stop");
    cluster
}

/// The main test: with sessions, every history under random faults is
/// linearizable and no acknowledged write is lost.
#[test]
fn with_sessions_every_history_under_random_faults_is_linearizable_and_no_acknowledged_write_is_lost(
) {
    run_linearizable(
        "with_sessions_every_history_under_random_faults_is_linearizable_and_no_acknowledged_write_is_lost",
        200,
        |seed| chaos(seed, Retry::Session),
    );
}

/// Seeds of the random-fault scenario that once failed, replayed on every
/// run (the seed list of the main test is fixed by its name, so a seed found
/// with `CLUSTRON_SEEDS=2000` is not among the ones CI runs).
///
/// - `7551124117615829467`: node 2 installed a pulled snapshot at 150 and
///   its disk failed at the next log write, before the log was reset to
///   continue after it; it had 57 entries on disk. The simulation's check
///   "commit never exceeds the durable log" did not count the durable
///   snapshot file and failed; the node itself was right (on a restart it
///   loads that snapshot and ignores the log below it).
/// - `9113568281136089362`: the same, in the other check: node 1 installed
///   a pulled snapshot at 352 and its disk failed before the log reset; the
///   entries 151–190 of an old epoch still on its disk were compared with
///   the committed ones up to 352. The check now skips what a durable
///   snapshot covers.
#[test]
fn random_fault_seeds_that_once_failed_stay_linearizable() {
    const SEEDS: &[u64] = &[7_551_124_117_615_829_467, 9_113_568_281_136_089_362];
    for &seed in SEEDS {
        let mut cluster = chaos(seed, Retry::Session);
        let finished = cluster.finish(finish_limit(), LogLoss::UnsyncedLost);
        assert_linearizable(&cluster, &finished);
    }
}

/// The bug the sessions fix, shown to be caught: retrying timed-out writes
/// as plain writes applies some twice, and among the first 40 seeds at least
/// one history is not linearizable.
#[test]
fn without_sessions_some_history_under_random_faults_is_not_linearizable() {
    let test_name = "without_sessions_some_history_under_random_faults_is_not_linearizable";
    // About a third of the seeds caught a doubled write when this was
    // written (32 of the first 100); with snapshots in the simulation about
    // a sixth do (17 of the first 100, none of the first 10; 18 after
    // heartbeats started checking assumed prefixes, none of the first 46,
    // as schedules shift with any change to the messages): 100 seeds, the
    // run stops at the first caught.
    let seeds = clustron_tests::sim::seeds(test_name, 100);
    let mut totals = Totals::default();
    let started = std::time::Instant::now();
    let mut found = None;
    let mut run = 0;
    for &seed in &seeds {
        run += 1;
        let mut cluster = chaos(seed, Retry::WithoutSession);
        let finished = cluster.finish(finish_limit(), LogLoss::UnsyncedLost);
        totals.add(&finished);
        if let Err(violation) = &finished.verdict {
            eprintln!(
                "{test_name}: seed {seed} (the {}th) is not linearizable, as expected; values \
                 applied twice: {:?}\n{violation}\n(replay with CLUSTRON_SEED={seed})",
                run, finished.applied_twice
            );
            found = Some(seed);
            break;
        }
    }
    let run = SeedsRun {
        run,
        planned: seeds.len(),
        elapsed: started.elapsed(),
    };
    totals.print(test_name, run);
    assert!(
        found.is_some(),
        "none of {} seeds caught a doubled write; {}",
        seeds.len(),
        replay_hint(test_name, seeds[0])
    );
}
