//! Election over real transports and membership on 127.0.0.1: five nodes
//! (three voters), a killed leader, a frozen leader, a transfer, and a
//! withdrawn leader.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clustron_election::{Config, DriverError, Error, FileStorage, Storage};
use clustron_tests::local::{eventually, name, LocalCluster};

const DEADLINE: Duration = Duration::from_secs(30);

/// Samples every node's lease each millisecond and counts the instants at
/// which two nodes both held a valid lease (all nodes share this clock).
fn watch_leases(cluster: &LocalCluster) -> (Arc<AtomicBool>, Arc<AtomicUsize>) {
    let elections: Vec<_> = cluster.nodes.iter().map(|n| n.election.clone()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let overlaps = Arc::new(AtomicUsize::new(0));
    let (stop2, overlaps2) = (stop.clone(), overlaps.clone());
    tokio::spawn(async move {
        while !stop2.load(Ordering::Relaxed) {
            if elections.iter().filter(|e| e.lease().is_some()).count() > 1 {
                overlaps2.fetch_add(1, Ordering::Relaxed);
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    (stop, overlaps)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_highest_priority_voter_leads_and_a_killed_leader_is_replaced() {
    let cluster = LocalCluster::start(5, 3, Config::lan()).await.unwrap();
    let all: Vec<usize> = (0..5).collect();
    let first_epoch = cluster.follow(&all, &name(1)).unwrap();
    assert_eq!(cluster.lease_holders(), vec![0]);

    tracing::info!("n1 dies without a word: n2 takes over with a higher epoch");
    cluster.nodes[0].kill().await;
    let rest: Vec<usize> = (1..5).collect();
    eventually(DEADLINE, || async {
        cluster
            .follow(&rest, &name(2))
            .is_some_and(|epoch| epoch > first_epoch)
    })
    .await
    .unwrap();
    assert_eq!(cluster.lease_holders(), vec![1]);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_leader_steps_down_without_ever_overlapping_its_successor() {
    let cluster = LocalCluster::start(5, 3, Config::lan()).await.unwrap();
    let all: Vec<usize> = (0..5).collect();
    let first_epoch = cluster.follow(&all, &name(1)).unwrap();
    let (stop, overlaps) = watch_leases(&cluster);

    tracing::info!("n1's election task stops for three lease durations");
    let lease = Config::lan().lease_duration;
    cluster.nodes[0]
        .election
        .freeze_for(lease * 3)
        .await
        .unwrap();
    let others: Vec<usize> = (1..5).collect();
    eventually(DEADLINE, || async {
        cluster
            .follow(&others, &name(2))
            .is_some_and(|epoch| epoch > first_epoch)
    })
    .await
    .unwrap();

    tracing::info!("n1 wakes up as a follower, then takes its place back by handover");
    eventually(DEADLINE, || async {
        cluster
            .follow(&all, &name(1))
            .is_some_and(|epoch| epoch > first_epoch)
    })
    .await
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    assert_eq!(
        overlaps.load(Ordering::Relaxed),
        0,
        "two nodes held a valid lease at once"
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_moves_leadership_without_waiting_for_a_timeout() {
    let cluster = LocalCluster::start(5, 3, Config::lan()).await.unwrap();
    let (stop, overlaps) = watch_leases(&cluster);
    clustron_tests::local::handover(&cluster, 2).await.unwrap();
    let all: Vec<usize> = (0..5).collect();
    eventually(DEADLINE, || async {
        cluster.follow(&all, &name(3)).is_some()
    })
    .await
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    assert_eq!(
        overlaps.load(Ordering::Relaxed),
        0,
        "two nodes held a valid lease at once"
    );
    assert!(matches!(
        cluster.nodes[1].election.step_down().await,
        Err(DriverError::Refused(Error::NotLeader { .. }))
    ));
    cluster.stop().await;
}

/// Records the epochs it was called for, and answers "nI@EPOCH".
struct RecordingHook {
    node: usize,
    promised: std::sync::Mutex<Vec<u64>>,
}

impl clustron_election::PromiseHook for RecordingHook {
    fn promised(&self, epoch: clustron_election::Epoch) -> Vec<u8> {
        self.promised.lock().unwrap().push(epoch.0);
        format!("n{}@{}", self.node, epoch.0).into_bytes()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_carry_the_summary_the_promise_hook_returns() {
    let hooks: Vec<Arc<RecordingHook>> = (1..=3)
        .map(|node| {
            Arc::new(RecordingHook {
                node,
                promised: Default::default(),
            })
        })
        .collect();
    let cluster = LocalCluster::start_with_hooks(3, 3, Config::lan(), |i| {
        Some(hooks[i - 1].clone() as Arc<dyn clustron_election::PromiseHook>)
    })
    .await
    .unwrap();
    let mut events = cluster.nodes[1].election.subscribe();
    cluster.nodes[0].kill().await;
    let (epoch, summaries) = tokio::time::timeout(DEADLINE, async {
        loop {
            match events.recv().await {
                Some(clustron_election::Notification::Event(
                    clustron_election::LeadershipEvent::Elected { epoch, summaries },
                )) => return (epoch, summaries),
                Some(_) => {}
                None => panic!("the election stopped"),
            }
        }
    })
    .await
    .unwrap();
    // n3's grant carries what n3's hook answered for this very epoch, and
    // the hook ran for it.
    let from_n3 = summaries
        .iter()
        .find(|(name, _)| name.as_str() == "n3")
        .map(|(_, s)| String::from_utf8(s.clone()).unwrap());
    assert_eq!(from_n3, Some(format!("n3@{}", epoch.0)));
    assert!(hooks[2].promised.lock().unwrap().contains(&epoch.0));
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withdrawn_leader_hands_over_never_votes_and_others_see_it_withdrawn() {
    let cluster = LocalCluster::start(3, 3, Config::lan()).await.unwrap();
    let all: Vec<usize> = (0..3).collect();
    let first_epoch = cluster.follow(&all, &name(1)).unwrap();
    let (stop, overlaps) = watch_leases(&cluster);

    tracing::info!("n1 withdraws (as when its store fails): n2 takes over");
    cluster.nodes[0]
        .election
        .withdraw("store failed")
        .await
        .unwrap();
    assert_eq!(
        cluster.nodes[0].election.withdrawn().as_deref(),
        Some("store failed")
    );
    eventually(DEADLINE, || async {
        cluster
            .follow(&all, &name(2))
            .is_some_and(|epoch| epoch > first_epoch)
    })
    .await
    .unwrap();
    eventually(DEADLINE, || async {
        cluster.nodes[1]
            .membership
            .member(&name(1))
            .await
            .ok()
            .flatten()
            .is_some_and(|n1| {
                n1.tags
                    .get(clustron_election::WITHDRAWN_TAG)
                    .map(String::as_str)
                    == Some("store failed")
            })
    })
    .await
    .unwrap();

    tracing::info!("n3 dies: n2 cannot renew without n1's vote and steps down");
    cluster.nodes[2].kill().await;
    eventually(DEADLINE, || async { cluster.lease_holders().is_empty() })
        .await
        .unwrap();

    tracing::info!("n1 rejoins: n1 and n2 are a majority again");
    cluster.nodes[0].election.rejoin().await.unwrap();
    eventually(DEADLINE, || async { !cluster.lease_holders().is_empty() })
        .await
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    assert_eq!(overlaps.load(Ordering::Relaxed), 0);
    cluster.stop().await;
}

/// A lease renewal promises what a voter's storage already holds: it must
/// not rewrite the promise file each time (it did: two fsyncs and a rename
/// on the node's runtime every 150 ms on every voter, a ~1 ms stall each),
/// only once a second, as a check that storage still takes writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_renewals_rewrite_the_promise_files_at_most_once_a_second() {
    use std::os::unix::fs::MetadataExt;
    let cluster = LocalCluster::start(3, 3, Config::lan()).await.unwrap();
    let all: Vec<usize> = (0..3).collect();
    let epoch = cluster.follow(&all, &name(1)).unwrap();
    let promised = |i: usize| {
        FileStorage::open(cluster.data_dir(i))
            .and_then(|s| s.load())
            .ok()
            .and_then(|p| p.promise)
            .map(|p| (p.epoch, p.holder))
    };
    // Every voter has granted this epoch.
    eventually(DEADLINE, || async {
        (0..3).all(|i| promised(i) == Some((epoch, name(1))))
    })
    .await
    .unwrap();
    // Each replacement is a new file: count the inodes seen while the
    // leader renews twenty times.
    let inode = |i: usize| {
        std::fs::metadata(cluster.data_dir(i).join("promise"))
            .map(|m| m.ino())
            .ok()
    };
    let mut seen: Vec<Vec<Option<u64>>> = (0..3).map(|i| vec![inode(i)]).collect();
    let (_, first_end) = cluster.nodes[0].election.lease().unwrap();
    let renewals = Config::lan().renew_interval * 20;
    let started = std::time::Instant::now();
    let deadline = started + DEADLINE;
    while cluster.nodes[0]
        .election
        .lease()
        .is_none_or(|(_, end)| end <= first_end + renewals)
    {
        assert!(std::time::Instant::now() < deadline, "no twenty renewals");
        for (i, seen) in seen.iter_mut().enumerate() {
            let now = inode(i);
            if seen.last() != Some(&now) {
                seen.push(now);
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(cluster.follow(&all, &name(1)), Some(epoch));
    let allowed = started.elapsed().as_secs() as usize + 1;
    for (i, seen) in seen.iter().enumerate() {
        assert!(
            seen.len() - 1 <= allowed,
            "n{} rewrote its promise {} times in {:?}",
            i + 1,
            seen.len() - 1,
            started.elapsed()
        );
    }
    cluster.stop().await;
}
