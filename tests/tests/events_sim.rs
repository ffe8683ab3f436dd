//! User-event scenarios on the simulator: at-least-once delivery in
//! per-origin order without duplicates, and catch-up after a partition.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::time::Duration;

use clustron_tests::events::{cluster, name, Deliveries};
use clustron_tests::sim::{run_seeds, NetConfig};

#[test]
fn every_event_reaches_every_member_once_in_origin_order() {
    run_seeds(
        "every_event_reaches_every_member_once_in_origin_order",
        8,
        |seed| {
            let n = 8;
            let net = NetConfig {
                loss: 0.1,
                duplicate: 0.05,
                ..NetConfig::lan()
            };
            let mut sim = cluster(seed, n, net);
            let mut deliveries = Deliveries::default();
            for round in 0..40 {
                let origin = sim.rng().usize(..n);
                sim.with_node(origin, |node, _| {
                    node.core_mut()
                        .publish(format!("t{round}"), vec![round as u8])
                        .unwrap()
                });
                let pause = Duration::from_millis(sim.rng().u64(0..50));
                sim.run_for(pause, |_| {});
                deliveries.record(&mut sim);
            }
            sim.run_for(Duration::from_secs(3), |_| {});
            deliveries.record(&mut sim);
            assert!(
                deliveries.violations.is_empty(),
                "{:?}",
                deliveries.violations
            );
            let total: usize = (0..n).map(|o| deliveries.count(o, &name(o))).sum();
            assert_eq!(total, 40);
            for node in 0..n {
                let got: usize = (0..n).map(|o| deliveries.count(node, &name(o))).sum();
                assert_eq!(got, 40, "node {node} delivered {got} of 40 events");
            }
        },
    );
}

#[test]
fn a_partitioned_member_catches_up_after_healing() {
    run_seeds("a_partitioned_member_catches_up_after_healing", 8, |seed| {
        let n = 6;
        let mut sim = cluster(seed, n, NetConfig::lan());
        let mut deliveries = Deliveries::default();
        let away = n - 1;
        let rest: Vec<usize> = (0..away).collect();
        sim.partition(&[&rest, &[away]]);
        for round in 0..30 {
            let origin = round % away;
            sim.with_node(origin, |node, _| {
                node.core_mut().publish("t".into(), vec![]).unwrap()
            });
            sim.run_for(Duration::from_millis(100), |_| {});
        }
        deliveries.record(&mut sim);
        let seen: usize = (0..n).map(|o| deliveries.count(away, &name(o))).sum();
        assert_eq!(seen, 0, "the partitioned node received events");
        sim.heal();
        let caught_up = sim.run_until(Duration::from_secs(10), |sim| {
            deliveries.record(sim);
            (0..n)
                .map(|o| deliveries.count(away, &name(o)))
                .sum::<usize>()
                == 30
        });
        assert!(
            caught_up,
            "the healed node did not catch up from the buffers"
        );
        assert!(
            deliveries.violations.is_empty(),
            "{:?}",
            deliveries.violations
        );
        assert!(deliveries.gaps.is_empty(), "{:?}", deliveries.gaps);
    });
}
