//! Membership scenarios on the deterministic simulator, over many seeds.
//!
//! Seeds: `CLUSTRON_SEED=s` replays one; `CLUSTRON_SEEDS=n` runs n per test
//! (the defaults keep CI fast). A failing run prints its seed.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::time::Duration;

use clustron_membership::core::Output;
use clustron_membership::{Config, MemberEvent, MemberState};
use clustron_tests::sim::{run_seeds, NetConfig};
use clustron_tests::swim::{self, addr, failed_verdicts, name};

fn lossy(loss: f64) -> NetConfig {
    NetConfig {
        loss,
        ..NetConfig::lan()
    }
}

/// `n` nodes joined through node 0 and converged (every node sees all alive).
fn converged_cluster(seed: u64, n: usize, net: NetConfig) -> (swim::Cluster, Vec<usize>) {
    let mut sim = swim::start(seed, n, &Config::lan(), net, Duration::from_millis(5));
    let all: Vec<usize> = (0..n).collect();
    assert!(
        sim.run_until(Duration::from_secs(45), |sim| swim::converged(sim, &all)),
        "{n} nodes did not converge"
    );
    (sim, all)
}

#[test]
fn a_hundred_nodes_join_through_one_seed_and_converge() {
    run_seeds(
        "a_hundred_nodes_join_through_one_seed_and_converge",
        2,
        |seed| {
            let config = Config::lan();
            let mut sim = swim::start(
                seed,
                100,
                &config,
                NetConfig::lan(),
                Duration::from_millis(10),
            );
            let all: Vec<usize> = (0..100).collect();
            assert!(
                sim.run_until(Duration::from_secs(30), |sim| swim::converged(sim, &all)),
                "100 nodes did not converge within 30 virtual seconds"
            );
            assert!(
                failed_verdicts(&sim.take_events()).is_empty(),
                "a node was declared dead while joining"
            );
        },
    );
}

#[test]
fn a_crashed_node_is_declared_dead_by_every_live_node() {
    run_seeds(
        "a_crashed_node_is_declared_dead_by_every_live_node",
        6,
        |seed| {
            let (mut sim, all) = converged_cluster(seed, 20, lossy(0.01));
            let victim = 1 + sim.rng().usize(..19);
            let times = swim::detection_times(&mut sim, victim, Duration::from_secs(30))
                .unwrap_or_else(|| panic!("n{victim} was not declared dead by every live node"));
            assert_eq!(times.len(), 19);
            // Nobody else was declared dead.
            sim.run_for(Duration::from_secs(5), |_| {});
            let live: Vec<usize> = all.iter().copied().filter(|i| *i != victim).collect();
            assert!(swim::converged(&sim, &live));
            for observer in &live {
                assert_eq!(
                    swim::state(&sim, *observer, victim),
                    Some(MemberState::Dead)
                );
            }
        },
    );
}

#[test]
fn ten_virtual_minutes_at_ten_percent_loss_give_no_dead_verdict() {
    run_seeds(
        "ten_virtual_minutes_at_ten_percent_loss_give_no_dead_verdict",
        2,
        |seed| {
            let n = 30;
            let (mut sim, _) = converged_cluster(seed, n, NetConfig::lan());
            sim.take_events();
            sim.set_net(lossy(0.10));
            let mut false_verdicts = Vec::new();
            sim.run_for(Duration::from_secs(600), |sim| {
                false_verdicts.extend(failed_verdicts(&sim.take_events()));
            });
            assert!(
                false_verdicts.is_empty(),
                "false dead verdicts at 10% loss: {false_verdicts:?}"
            );
        },
    );
}

#[test]
fn a_slow_node_does_not_get_healthy_nodes_declared_dead() {
    run_seeds(
        "a_slow_node_does_not_get_healthy_nodes_declared_dead",
        4,
        |seed| {
            let config = Config::lan();
            let n = 12;
            let (mut sim, _) = converged_cluster(seed, n, NetConfig::lan());
            sim.take_events();
            let slow = 3;
            // Every message to and from the slow node takes 2× the probe timeout.
            sim.set_extra_delay(slow, config.probe_timeout * 2);
            let mut wrong = Vec::new();
            sim.run_for(Duration::from_secs(180), |sim| {
                for verdict in failed_verdicts(&sim.take_events()) {
                    if verdict.2 != name(slow) {
                        wrong.push(verdict);
                    }
                }
            });
            assert!(wrong.is_empty(), "healthy nodes declared dead: {wrong:?}");
            let health = sim.node(slow).map(|n| n.core().health().local_health);
            assert!(
                health > Some(0),
                "the slow node's local health score never rose: {health:?}"
            );
        },
    );
}

#[test]
fn a_partition_heals_and_views_converge() {
    run_seeds("a_partition_heals_and_views_converge", 4, |seed| {
        let n = 10;
        let (mut sim, all) = converged_cluster(seed, n, NetConfig::lan());
        let (left, right): (Vec<usize>, Vec<usize>) = all.iter().partition(|i| **i < 4);
        sim.partition(&[&left, &right]);
        assert!(
            sim.run_until(Duration::from_secs(60), |sim| {
                left.iter().all(|o| {
                    right
                        .iter()
                        .all(|s| swim::state(sim, *o, *s) == Some(MemberState::Dead))
                }) && right.iter().all(|o| {
                    left.iter()
                        .all(|s| swim::state(sim, *o, *s) == Some(MemberState::Dead))
                })
            }),
            "the two sides did not declare each other dead"
        );
        sim.heal();
        // Simulated time: a healed cut is crossed by the next attempt to reach
        // a dead member (every 500 ms on a LAN), then gossip spreads it. The
        // election counts a member only once it is back in the view, so this
        // bounds how long a healed cluster can stay without a leader.
        assert!(
            sim.run_until(Duration::from_secs(3), |sim| swim::converged(sim, &all)),
            "views did not converge within 3 s (simulated) after the partition healed"
        );
    });
}

#[test]
fn a_graceful_leave_is_seen_as_left_not_failed() {
    run_seeds("a_graceful_leave_is_seen_as_left_not_failed", 4, |seed| {
        let n = 10;
        let (mut sim, all) = converged_cluster(seed, n, lossy(0.05));
        sim.take_events();
        let leaver = 5;
        sim.with_node(leaver, |node, now| node.core_mut().leave(now));
        let done = sim.run_until(Duration::from_secs(5), |sim| {
            sim.take_events()
                .iter()
                .any(|(_, id, o)| *id == leaver && *o == Output::LeaveDone)
        });
        assert!(done, "the leave never completed");
        sim.crash(leaver);
        let others: Vec<usize> = all.iter().copied().filter(|i| *i != leaver).collect();
        assert!(sim.run_until(Duration::from_secs(10), |sim| {
            others
                .iter()
                .all(|o| swim::state(sim, *o, leaver) == Some(MemberState::Left))
        }));
        let failed: Vec<_> = sim
            .take_events()
            .into_iter()
            .filter(|(_, _, o)| matches!(o, Output::Member(MemberEvent::Failed(m)) if m.name == name(leaver)))
            .collect();
        assert!(
            failed.is_empty(),
            "the leaver was declared failed: {failed:?}"
        );
        let _ = addr(0);
    });
}
