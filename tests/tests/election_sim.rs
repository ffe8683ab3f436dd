//! Leader-election scenarios on the deterministic simulator, over many seeds.
//! Safety invariants (no overlapping leases in true time, one leader per
//! epoch, epochs only grow) are checked after every step by
//! [`clustron_tests::election::Cluster`].
//!
//! Seeds: `CLUSTRON_SEED=s` replays one; `CLUSTRON_SEEDS=n` runs n per test.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use clustron_election::{Config, Output, Voter};
use clustron_tests::election::{addr, name, Cluster, Disk};
use clustron_tests::sim::{run_seeds, NetConfig};
use clustron_tests::swim::percentile;

fn lossy(loss: f64) -> NetConfig {
    NetConfig {
        loss,
        ..NetConfig::lan()
    }
}

fn lease(config: &Config) -> Duration {
    config.lease_duration
}

fn elected_count(cluster: &mut Cluster) -> usize {
    cluster
        .sim
        .take_events()
        .iter()
        .filter(|(_, _, o)| matches!(o, Output::Elected { .. }))
        .count()
}

#[test]
fn a_healthy_cluster_elects_the_highest_priority_voter_once_and_never_flaps() {
    run_seeds(
        "a_healthy_cluster_elects_the_highest_priority_voter_once_and_never_flaps",
        8,
        |seed| {
            let config = Config::lan();
            let mut cluster = Cluster::new(seed, 5, 5, config.clone(), lossy(0.01));
            tracing::info!("a fresh cluster elects node 0 within a few round trips");
            assert!(cluster.run_until(lease(&config), |c| c.settled_leader() == Some(0)));
            tracing::info!("ten quiet seconds at 1% loss: no new election");
            cluster.run_for(Duration::from_secs(10));
            assert_eq!(cluster.leader().map(|l| l.0), Some(0));
            assert_eq!(elected_count(&mut cluster), 1, "leadership moved");
        },
    );
}

#[test]
fn a_crashed_leader_is_replaced_within_two_lease_durations() {
    let failovers = std::cell::RefCell::new(Vec::new());
    let config = Config::lan();
    run_seeds(
        "a_crashed_leader_is_replaced_within_two_lease_durations",
        100,
        |seed| {
            let mut cluster = Cluster::new(seed, 5, 5, config.clone(), NetConfig::lan());
            assert!(cluster.run_until(lease(&config), |c| c.settled_leader() == Some(0)));
            // Crash at a random point of the renewal cycle.
            let offset = Duration::from_micros(cluster.sim.rng().u64(0..1_000_000));
            cluster.run_for(Duration::from_secs(1) + offset);
            tracing::info!("the leader crashes; views are not told (membership lags)");
            cluster.crash(0);
            let crashed = cluster.sim.elapsed();
            assert!(
                cluster.run_until(lease(&config) * 2, |c| c.leader().is_some()),
                "no new leader within 2 L"
            );
            let failover = cluster.sim.elapsed() - crashed;
            assert_eq!(cluster.leader().map(|l| l.0), Some(1));
            cluster.run_for(Duration::from_secs(2));
            assert_eq!(
                cluster.leader().map(|l| l.0),
                Some(1),
                "the successor held on"
            );
            failovers.borrow_mut().push(failover);
        },
    );
    let mut failovers = failovers.into_inner();
    failovers.sort();
    eprintln!(
        "failover (crash -> new leader with a valid lease) over {} seeds: median {:?}, p99 {:?}, max {:?}",
        failovers.len(),
        percentile(&failovers, 0.5),
        percentile(&failovers, 0.99),
        failovers.last().copied().unwrap_or_default()
    );
}

#[test]
fn a_minority_partition_never_elects_a_leader() {
    run_seeds("a_minority_partition_never_elects_a_leader", 8, |seed| {
        let config = Config::lan();
        let mut cluster = Cluster::new(seed, 5, 5, config.clone(), NetConfig::lan());
        assert!(cluster.run_until(lease(&config), |c| c.settled_leader() == Some(0)));
        tracing::info!("the leader and one voter are cut off from the other three");
        cluster.partition(&[&[0, 1], &[2, 3, 4]]);
        cluster.refresh_views();
        cluster.run_for(lease(&config));
        assert!(cluster.run_until(lease(&config) * 2, |c| c.leader().map(|l| l.0) == Some(2)));
        tracing::info!("the minority side never gets a lease");
        for _ in 0..50 {
            cluster.run_for(Duration::from_millis(100));
            for minority in [0, 1] {
                let lease = cluster.sim.node(minority).unwrap().core().lease();
                assert!(lease.is_none(), "minority node {minority} leads: {lease:?}");
            }
        }
        tracing::info!("healed: node 0 claims and gets leadership back by handover");
        cluster.heal();
        cluster.refresh_views();
        let limit = config.handover_delay + lease(&config) * 3;
        assert!(cluster.run_until(limit, |c| c.settled_leader() == Some(0)));
    });
}

#[test]
fn any_majority_elects_with_a_voter_never_started_and_after_a_full_restart_with_one_down() {
    run_seeds(
        "any_majority_elects_with_a_voter_never_started_and_after_a_full_restart_with_one_down",
        16,
        |seed| {
            let config = Config::lan();
            let mut cluster = Cluster::new(seed, 3, 3, config.clone(), lossy(0.01));
            tracing::info!("voter 2 never starts: 0 and 1 are a majority and elect 0");
            cluster.crash(2);
            cluster.refresh_views();
            assert!(cluster.run_until(lease(&config) * 2, |c| c.settled_leader() == Some(0)));
            tracing::info!("2 starts late and follows");
            cluster.restart(2, Disk::Wiped);
            cluster.refresh_views();
            assert!(cluster.run_until(lease(&config) * 2, |c| {
                c.sim.node(2).and_then(|n| n.core().leader()).map(|l| l.0) == Some(name(0))
            }));
            tracing::info!("everyone stops; 1 and 2 come back, 0 stays down: 1 leads");
            for id in 0..3 {
                cluster.crash(id);
            }
            cluster.run_for(lease(&config));
            cluster.restart(1, Disk::Kept);
            cluster.restart(2, Disk::Kept);
            cluster.refresh_views();
            // A restarted voter honours its recovered promise for a full L.
            assert!(cluster.run_until(lease(&config) * 4, |c| c.settled_leader() == Some(1)));
        },
    );
}

#[test]
fn a_leader_paused_beyond_its_lease_wakes_up_as_a_follower() {
    run_seeds(
        "a_leader_paused_beyond_its_lease_wakes_up_as_a_follower",
        8,
        |seed| {
            let config = Config::lan();
            let mut cluster = Cluster::new(seed, 3, 3, config.clone(), NetConfig::lan());
            assert!(cluster.run_until(lease(&config), |c| c.settled_leader() == Some(0)));
            tracing::info!("SIGSTOP the leader for 3 L; views still list it");
            cluster.pause(0);
            assert!(cluster.run_until(lease(&config) * 3, |c| c.leader().is_some_and(|l| l.0 != 0)));
            cluster.run_for(lease(&config));
            tracing::info!("SIGCONT: its lease has run out; the invariants catch any overlap");
            cluster.resume(0);
            cluster.run_for(Duration::from_millis(50));
            assert_ne!(cluster.leader().map(|l| l.0), Some(0));
            assert!(
                cluster.run_until(config.handover_delay + lease(&config) * 3, |c| {
                    c.settled_leader() == Some(0)
                })
            );
        },
    );
}

#[test]
fn one_way_blocks_and_drifting_clocks_never_overlap_leases() {
    run_seeds(
        "one_way_blocks_and_drifting_clocks_never_overlap_leases",
        8,
        |seed| {
            let config = Config::lan();
            let mut cluster = Cluster::new(seed, 5, 5, config.clone(), NetConfig::lan());
            for id in 0..5 {
                let rate = if id % 2 == 0 {
                    1.0 - config.max_drift
                } else {
                    1.0 + config.max_drift
                };
                cluster.set_drift(id, rate);
            }
            assert!(cluster.run_until(lease(&config), |c| c.leader().is_some()));
            tracing::info!("the leader can send but not hear: its renewals fail");
            for other in 1..5 {
                cluster.block(other, 0);
            }
            cluster.refresh_views();
            cluster.run_for(lease(&config) * 4);
            assert_ne!(cluster.leader().map(|l| l.0), Some(0));
            assert!(cluster.leader().is_some(), "the majority elected nobody");
        },
    );
}

/// Random faults for a while, then quiet: the safety invariants hold
/// throughout, and afterwards node 0 leads within the liveness bound.
fn chaos(seed: u64, disk_after_crash: Disk) {
    let config = Config::lan();
    let n = 5;
    let mut cluster = Cluster::new(seed, n, n, config.clone(), lossy(0.02));
    for id in 0..n {
        let rate = 1.0 + config.max_drift * (2.0 * cluster.sim.rng().f64() - 1.0);
        cluster.set_drift(id, rate);
    }
    tracing::info!("30 virtual seconds of random faults");
    for _ in 0..60 {
        let pick = cluster.sim.rng().usize(..n);
        match cluster.sim.rng().u8(..8) {
            0 => cluster.crash(pick),
            1 => cluster.restart(pick, disk_after_crash),
            2 => {
                if cluster.is_up(pick) {
                    cluster.pause(pick);
                } else {
                    cluster.resume(pick);
                }
            }
            3 => {
                let mut nodes: Vec<usize> = (0..n).collect();
                cluster.sim.rng().shuffle(&mut nodes);
                let cut = cluster.sim.rng().usize(1..n);
                let (left, right) = nodes.split_at(cut);
                cluster.partition(&[left, right]);
            }
            4 => {
                if let Some((leader, _)) = cluster.leader() {
                    cluster.partition(&[&[leader]]);
                }
            }
            5 => {
                let other = cluster.sim.rng().usize(..n);
                if other != pick {
                    cluster.block(pick, other);
                }
            }
            6 => cluster.heal(),
            _ => {}
        }
        if cluster.sim.rng().bool() {
            cluster.refresh_views();
        }
        let wait = Duration::from_millis(cluster.sim.rng().u64(50..1000));
        cluster.run_for(wait);
    }
    tracing::info!("faults stop: heal, resume and restart everything");
    cluster.heal();
    for id in 0..n {
        if cluster.sim.node(id).is_none() {
            cluster.restart(id, disk_after_crash);
        }
        cluster.resume(id);
    }
    cluster.sim.take_events();
    cluster.refresh_views();
    let bound = config.handover_delay + lease(&config) * 3;
    let led = cluster.run_until(bound, |c| c.settled_leader() == Some(0));
    if !led {
        let events: Vec<String> = cluster
            .sim
            .take_events()
            .iter()
            .map(|e| format!("{e:?}"))
            .collect();
        panic!(
            "node 0 did not lead within {bound:?} of the faults stopping (leader: {:?}); events:\n{}",
            cluster.leader(),
            events.join("\n")
        );
    }
}

#[test]
fn random_crashes_pauses_partitions_and_drift_never_break_safety_and_node_0_leads_after() {
    run_seeds(
        "random_crashes_pauses_partitions_and_drift_never_break_safety_and_node_0_leads_after",
        30,
        |seed| chaos(seed, Disk::Kept),
    );
}

#[test]
fn restarts_that_lose_unsynced_writes_never_break_safety() {
    run_seeds(
        "restarts_that_lose_unsynced_writes_never_break_safety",
        30,
        |seed| chaos(seed, Disk::UnsyncedLost),
    );
}

/// Three voters elect node 0; two of them restart with `disk`, node 0 is cut
/// off, and the others (views updated) elect among themselves.
fn restart_followers_and_isolate_leader(seed: u64, disk: Disk) {
    let config = Config::lan();
    let mut cluster = Cluster::new(seed, 3, 3, config.clone(), NetConfig::lan());
    assert!(cluster.run_until(lease(&config), |c| c.settled_leader() == Some(0)));
    cluster.run_for(Duration::from_millis(300));
    cluster.restart(1, disk);
    cluster.restart(2, disk);
    cluster.partition(&[&[0], &[1, 2]]);
    cluster.refresh_views();
    cluster.run_for(lease(&config) * 3);
}

#[test]
fn voters_that_forget_their_promise_on_restart_let_two_leaders_overlap() {
    // The invariant checker must catch the classic mistake.
    let caught = catch_unwind(AssertUnwindSafe(|| {
        restart_followers_and_isolate_leader(1, Disk::Wiped)
    }));
    let message = caught
        .err()
        .and_then(|p| p.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    assert!(
        message.contains("lease") || message.contains("epoch"),
        "no violation caught: {message:?}"
    );
}

#[test]
fn voters_that_keep_their_promise_on_restart_wait_out_the_old_lease() {
    run_seeds(
        "voters_that_keep_their_promise_on_restart_wait_out_the_old_lease",
        8,
        |seed| restart_followers_and_isolate_leader(seed, Disk::Kept),
    );
}

#[test]
fn a_transfer_hands_over_without_waiting_for_a_timeout() {
    run_seeds(
        "a_transfer_hands_over_without_waiting_for_a_timeout",
        8,
        |seed| {
            let config = Config::lan();
            let mut cluster = Cluster::new(seed, 5, 5, config.clone(), NetConfig::lan());
            assert!(cluster.run_until(lease(&config), |c| c.settled_leader() == Some(0)));
            cluster.run_for(Duration::from_millis(500));
            tracing::info!("node 0 transfers to node 3");
            cluster
                .sim
                .with_node(0, |node, now| node.core_mut().transfer_to(now, &name(3)))
                .unwrap()
                .unwrap();
            let started = cluster.sim.elapsed();
            assert!(cluster.run_until(lease(&config), |c| c.leader().map(|l| l.0) == Some(3)));
            let took = cluster.sim.elapsed() - started;
            assert!(took < config.lease_duration / 4, "handover took {took:?}");
            tracing::info!("node 0 does not claim leadership back from its successor");
            cluster.run_for(config.handover_delay * 3);
            assert_eq!(cluster.leader().map(|l| l.0), Some(3));
        },
    );
}

#[test]
fn a_returning_higher_priority_voter_takes_over_by_handover_without_a_gap() {
    run_seeds(
        "a_returning_higher_priority_voter_takes_over_by_handover_without_a_gap",
        8,
        |seed| {
            let config = Config::lan();
            let mut cluster = Cluster::new(seed, 5, 5, config.clone(), NetConfig::lan());
            cluster.crash(0);
            cluster.refresh_views();
            assert!(cluster.run_until(lease(&config) * 2, |c| c.settled_leader() == Some(1)));
            tracing::info!("node 0 comes back");
            cluster.restart(0, Disk::Kept);
            cluster.refresh_views();
            cluster.sim.take_events();
            let mut leaderless = Duration::ZERO;
            let limit = config.handover_delay + lease(&config) * 3;
            let step = Duration::from_millis(5);
            let mut waited = Duration::ZERO;
            while cluster.leader().map(|l| l.0) != Some(0) && waited < limit {
                cluster.run_for(step);
                waited += step;
                if cluster.leader().is_none() {
                    leaderless += step;
                }
            }
            assert_eq!(cluster.leader().map(|l| l.0), Some(0), "no takeover");
            assert!(
                waited >= config.handover_delay,
                "took over before the hysteresis"
            );
            assert!(
                leaderless <= Duration::from_millis(100),
                "leaderless for {leaderless:?}"
            );
        },
    );
}

/// Five nodes, three voters (nodes 3 and 4 learn), node 0 leading and just
/// asked to add node 3 as a voter.
fn learner_3_being_added(seed: u64) -> (Config, Cluster) {
    let config = Config::lan();
    let mut cluster = Cluster::new(seed, 5, 3, config.clone(), NetConfig::lan());
    assert!(cluster.run_until(lease(&config), |c| c.settled_leader() == Some(0)));
    let voter = Voter {
        name: name(3),
        addr: addr(3),
    };
    cluster
        .sim
        .with_node(0, |node, now| node.core_mut().add_voter(now, voter))
        .unwrap()
        .unwrap();
    (config, cluster)
}

#[test]
fn a_voter_added_by_the_leader_votes_after_a_majority_accepted_it() {
    run_seeds(
        "a_voter_added_by_the_leader_votes_after_a_majority_accepted_it",
        4,
        |seed| {
            let (config, mut cluster) = learner_3_being_added(seed);
            assert!(cluster.run_until(Duration::from_secs(1), |c| {
                (0..5).all(|id| {
                    c.sim
                        .node(id)
                        .is_some_and(|n| n.core().voters().contains(&name(3)))
                })
            }));
            tracing::info!("two old voters crash: the new set of four still has a majority");
            cluster.crash(0);
            cluster.crash(1);
            cluster.refresh_views();
            assert!(
                !cluster.run_until(lease(&config) * 3, |c| c.leader().is_some()),
                "2 of 4 voters elected a leader"
            );
            cluster.restart(1, Disk::Kept);
            cluster.refresh_views();
            assert!(cluster.run_until(lease(&config) * 3, |c| c.leader().map(|l| l.0) == Some(1)));
            let voters = cluster.sim.node(1).unwrap().core().voters().clone();
            assert_eq!(voters.len(), 4);
            assert!(cluster.sim.node(4).unwrap().core().lease().is_none());
        },
    );
}

#[test]
fn a_removed_voter_no_longer_counts_towards_a_majority() {
    run_seeds(
        "a_removed_voter_no_longer_counts_towards_a_majority",
        4,
        |seed| {
            let config = Config::lan();
            let mut cluster = Cluster::new(seed, 5, 5, config.clone(), NetConfig::lan());
            assert!(cluster.run_until(lease(&config), |c| c.settled_leader() == Some(0)));
            cluster
                .sim
                .with_node(0, |node, now| node.core_mut().remove_voter(now, &name(4)))
                .unwrap()
                .unwrap();
            assert!(
                cluster.run_until(Duration::from_secs(1), |c| {
                    (0..5).all(|id| {
                        c.sim
                            .node(id)
                            .is_some_and(|n| !n.core().voters().contains(&name(4)))
                    })
                }),
                "not every node learnt of the removal"
            );
            tracing::info!("n0 and n3 crash: n1, n2 (and the ex-voter n4) are 2 of 4 voters");
            cluster.crash(0);
            cluster.crash(3);
            cluster.refresh_views();
            assert!(
                !cluster.run_until(lease(&config) * 3, |c| c.leader().is_some()),
                "a removed voter still counted towards a majority"
            );
            cluster.restart(3, Disk::Kept);
            cluster.refresh_views();
            assert!(cluster.run_until(lease(&config) * 4, |c| c.leader().map(|l| l.0) == Some(1)));
        },
    );
}

#[test]
fn a_leader_that_crashes_during_a_voter_change_leaves_one_agreed_set() {
    run_seeds(
        "a_leader_that_crashes_during_a_voter_change_leaves_one_agreed_set",
        8,
        |seed| {
            let (config, mut cluster) = learner_3_being_added(seed);
            // Crash somewhere between "proposed" and "everyone knows".
            let delay = Duration::from_micros(cluster.sim.rng().u64(0..3_000));
            cluster.run_for(delay);
            cluster.crash(0);
            cluster.refresh_views();
            assert!(
                cluster.run_until(lease(&config) * 4, |c| c.leader().is_some()),
                "no leader after the crash"
            );
            cluster.run_for(Duration::from_secs(2));
            let sets: Vec<_> = (1..5)
                .filter_map(|id| cluster.sim.node(id).map(|n| n.core().voters().clone()))
                .collect();
            assert!(
                sets.windows(2).all(|w| w[0] == w[1]),
                "the surviving nodes disagree on the voter set: {sets:?}"
            );
        },
    );
}
