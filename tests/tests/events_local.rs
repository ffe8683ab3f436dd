//! The event bus over real transports on 127.0.0.1: user events reach every
//! other node's subscribers; the topology stream gives a snapshot, then
//! versioned deltas, and resumes by version.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::time::Duration;

use clustron_election::Config;
use clustron_events::{Event, Filter, Received, TopologyChange, TopologyUpdate};
use clustron_membership::MemberState;
use clustron_tests::local::{name, LocalCluster};
use tokio::time::timeout;

const DEADLINE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_event_published_on_one_node_reaches_subscribers_on_all_others() {
    let cluster = LocalCluster::start(4, 3, Config::lan()).await.unwrap();
    let mut subscriptions: Vec<_> = cluster.nodes[1..]
        .iter()
        .map(|n| n.bus.subscribe(Filter::Topic("deploys".into())))
        .collect();
    let mut other_topic = cluster.nodes[1]
        .bus
        .subscribe(Filter::Topic("other".into()));
    let published = cluster.nodes[0]
        .bus
        .publish("deploys", b"v42".to_vec())
        .await
        .unwrap();
    for subscription in &mut subscriptions {
        match timeout(DEADLINE, subscription.recv()).await.unwrap() {
            Some(Received::Event(Event::User(event))) => assert_eq!(event, published),
            other => panic!("expected the user event, got {other:?}"),
        }
    }
    assert!(
        timeout(Duration::from_millis(200), other_topic.recv())
            .await
            .is_err(),
        "a subscriber to another topic got the event"
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_topology_stream_gives_a_snapshot_then_versioned_deltas_and_resumes() {
    let cluster = LocalCluster::start(4, 3, Config::lan()).await.unwrap();
    let bus = &cluster.nodes[0].bus;
    let mut watch = bus.watch_topology(None).await.unwrap();
    let snapshot = match watch.next().await.unwrap() {
        TopologyUpdate::Snapshot { topology, fresh } => {
            assert!(!fresh);
            topology
        }
        other => panic!("expected a snapshot first, got {other:?}"),
    };
    assert_eq!(snapshot.members.len(), 4);
    assert_eq!(snapshot.leader.as_ref().map(|l| &l.0), Some(&name(1)));

    tracing::info!("n4 leaves: its departure comes as deltas with growing versions");
    cluster.nodes[3].membership.leave().await.unwrap();
    let mut version = snapshot.version;
    let left = loop {
        match timeout(DEADLINE, watch.next()).await.unwrap().unwrap() {
            TopologyUpdate::Delta { version: v, change } => {
                assert!(v > version, "versions must grow: {v} after {version}");
                version = v;
                if let TopologyChange::Member(m) = change {
                    if m.name == name(4) && m.state == MemberState::Left {
                        break v;
                    }
                }
            }
            other => panic!("expected deltas, got {other:?}"),
        }
    };

    tracing::info!("a client resuming from the snapshot's version gets the same deltas");
    let mut resumed = bus.watch_topology(Some(snapshot.version)).await.unwrap();
    loop {
        match timeout(DEADLINE, resumed.next()).await.unwrap().unwrap() {
            TopologyUpdate::Delta { version: v, .. } if v == left => break,
            TopologyUpdate::Delta { .. } => {}
            other => panic!("expected deltas when resuming, got {other:?}"),
        }
    }
    tracing::info!("resuming from a version the node never had gives a fresh snapshot");
    let mut unknown = bus.watch_topology(Some(10_000_000)).await.unwrap();
    assert!(matches!(
        unknown.next().await.unwrap(),
        TopologyUpdate::Snapshot { fresh: true, .. }
    ));
    cluster.stop().await;
}
