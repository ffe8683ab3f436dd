//! Snapshots with real processes (release binaries, as the other process
//! tests): nodes snapshot every few hundred entries and forget the log
//! before it; a node killed while the others wrote past its log restarts,
//! pulls a snapshot and catches up; `kill -9` of every node while writes
//! (and so snapshots) go on loses no acknowledged write, and every node
//! restarts from snapshot plus tail; a learner started late, with an empty
//! data directory, on an idle cluster, catches up from a snapshot.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clustron_client::Client;
use clustron_tests::procs::{dkv, eventually, eventually_within, metric, NodeSpec, ProcCluster};
use clustron_transport::TlsIdentity;

/// Entries between snapshots: small, so a short test takes many.
const EVERY: &str = "200";

fn connect(cluster: &ProcCluster, endpoints: Vec<std::net::SocketAddr>) -> Client {
    let dir = cluster.dir();
    let identity = TlsIdentity::from_files(
        &dir.join("ca.pem"),
        &dir.join("admin.pem"),
        &dir.join("admin.key"),
    )
    .unwrap();
    Client::new(endpoints, identity)
        .unwrap()
        .with_retry_for(Duration::from_secs(20))
}

/// `count` puts from 8 tasks, keys `{prefix}{task}-{i}`; every acknowledged
/// one goes into `acked`. Stops early (without failing) when `stop` is set.
async fn write(
    client: &Client,
    prefix: &str,
    count: usize,
    acked: &Arc<Mutex<BTreeMap<String, String>>>,
    stop: Option<Arc<std::sync::atomic::AtomicBool>>,
) {
    let tasks: Vec<_> = (0..8)
        .map(|task| {
            let (client, acked, stop, prefix) = (
                client.clone(),
                acked.clone(),
                stop.clone(),
                prefix.to_owned(),
            );
            tokio::spawn(async move {
                for i in 0..count / 8 {
                    if stop
                        .as_ref()
                        .is_some_and(|s| s.load(std::sync::atomic::Ordering::Relaxed))
                    {
                        return;
                    }
                    let (key, value) = (format!("{prefix}{task}-{i}"), format!("v{i}"));
                    match client.put(key.as_bytes(), value.as_bytes()).await {
                        Ok(_) => {
                            acked.lock().unwrap().insert(key, value);
                        }
                        Err(e) if stop.is_some() => {
                            // Killed under it: an unknown outcome is fine,
                            // only acknowledged writes must survive.
                            let _ = e;
                            return;
                        }
                        Err(e) => panic!("put {key}: {e}"),
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
}

async fn check_all(client: &Client, acked: &Arc<Mutex<BTreeMap<String, String>>>) {
    let acked = acked.lock().unwrap().clone();
    for (key, value) in &acked {
        let got = client.get(key.as_bytes()).await.unwrap();
        assert_eq!(
            got.map(|kv| String::from_utf8(kv.value).unwrap())
                .as_deref(),
            Some(value.as_str()),
            "acknowledged {key}={value} is gone"
        );
    }
}

fn wait_for_leader(cluster: &ProcCluster) {
    eventually("a leader is elected", || cluster.leader().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_snapshot_and_compact_a_node_behind_catches_up_from_a_snapshot_and_kill_9_loses_nothing(
) {
    let mut cluster = ProcCluster::start_with(3, false, &["--snapshot-entries", EVERY]).unwrap();
    wait_for_leader(&cluster);
    let endpoints = cluster.endpoints();
    let client = connect(&cluster, endpoints.clone());
    let acked = Arc::new(Mutex::new(BTreeMap::new()));

    tracing::info!("1000 writes: every node snapshots and keeps only the log after it");
    write(&client, "a", 1000, &acked, None).await;
    for i in 0..3 {
        let admin = cluster.admin(i);
        eventually("every node took a snapshot", || {
            metric(admin, "clustron_kv_snapshot_index").is_some_and(|s| s >= 200)
        });
        let entries = metric(admin, "clustron_kv_log_entries").unwrap();
        assert!(
            entries < 1000,
            "n{} holds {entries} log entries after 1000 writes",
            i + 1
        );
    }

    tracing::info!("n3 is killed; 1000 more writes move the others' logs past where it stopped");
    let n3_applied = metric(cluster.admin(2), "clustron_kv_applied_index").unwrap();
    cluster.kill(2);
    write(&client, "b", 1000, &acked, None).await;
    let leader = cluster.leader().unwrap().0;
    eventually("the leader compacted past n3", || {
        metric(cluster.admin(leader), "clustron_kv_snapshot_index").is_some_and(|s| s > n3_applied)
    });
    cluster.restart(2);
    let (n3, lead) = (cluster.admin(2), cluster.admin(leader));
    eventually_within("n3 caught up", Duration::from_secs(60), || {
        let mine = metric(n3, "clustron_kv_applied_index");
        let theirs = metric(lead, "clustron_kv_applied_index");
        mine.is_some() && mine >= theirs
    });
    assert!(
        metric(n3, "clustron_kv_snapshot_index").unwrap() > n3_applied,
        "n3 caught up without a snapshot"
    );
    let log = std::fs::read_to_string(cluster.dir().join("n3.log")).unwrap();
    assert!(
        log.contains("installed a snapshot from a peer"),
        "n3 never pulled a snapshot"
    );
    let only_n3 = connect(&cluster, vec![endpoints[2]]);
    let (read, _) = only_n3
        .range(
            clustron_client::kv::RangeRequest {
                range: clustron_client::kv::KeyRange::Key(b"b0-0".to_vec()),
                revision: 0,
                limit: 0,
                keys_only: false,
                count_only: false,
            },
            false,
        )
        .await
        .unwrap();
    assert_eq!(
        read.kvs.len(),
        1,
        "n3 does not hold a write made while it was down"
    );

    tracing::info!("kill -9 of every node while writes (and snapshots) go on");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (client, acked, stop) = (client.clone(), acked.clone(), stop.clone());
        tokio::spawn(async move { write(&client, "c", 100_000, &acked, Some(stop)).await })
    };
    let before = acked.lock().unwrap().len();
    eventually("writes go on", || {
        acked.lock().unwrap().len() > before + 500
    });
    for i in 0..3 {
        cluster.kill(i);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.await.unwrap();
    for i in 0..3 {
        cluster.restart(i);
    }
    wait_for_leader(&cluster);
    for i in 0..3 {
        let admin = cluster.admin(i);
        eventually("every node restarted from its snapshot", || {
            metric(admin, "clustron_kv_snapshot_index").is_some_and(|s| s > 0)
        });
    }
    check_all(&client, &acked).await;
    cluster.clean_up_on_drop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_started_late_on_an_idle_cluster_catches_up_from_a_snapshot() {
    // The leader used to check a new learner's log only where it had
    // acknowledged (nothing: index 0, which always matches), so an idle
    // cluster sent it nothing; it caught up only when some later proposal
    // (a client session expiring, a minute on) revealed what it lacked.
    let mut cluster = ProcCluster::start_with(3, false, &["--snapshot-entries", EVERY]).unwrap();
    wait_for_leader(&cluster);
    let client = connect(&cluster, cluster.endpoints());
    let acked = Arc::new(Mutex::new(BTreeMap::new()));
    write(&client, "a", 1000, &acked, None).await;
    let leader = cluster.leader().unwrap().0;
    let lead = cluster.admin(leader);
    eventually("the leader took a snapshot", || {
        metric(lead, "clustron_kv_snapshot_index").is_some_and(|s| s > 0)
    });
    // Idle from here on: the client stays connected (its session alive),
    // so nothing is proposed while the learner catches up.
    let target = metric(lead, "clustron_kv_applied_index").unwrap();

    let dir = cluster.dir().to_owned();
    let status = dkv()
        .args(["certs", "node", "n4", "--ip", "127.0.0.1", "--ca"])
        .arg(&dir)
        .arg("--out")
        .arg(&dir)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "the learner's certificate");
    let admin =
        std::net::SocketAddr::from(([127, 0, 0, 1], clustron_tests::procs::free_port_tcp()));
    let learner = NodeSpec {
        name: "n4".to_owned(),
        priority: 0,
        voters: "n1,n2,n3".to_owned(),
        listen: std::net::SocketAddr::from((
            [127, 0, 0, 1],
            clustron_tests::procs::free_port_udp(),
        )),
        admin,
        seeds: cluster.endpoints(),
        netns: None,
        args: Vec::new(),
    };
    let started = std::time::Instant::now();
    let _n4 = learner.spawn(&dir);
    eventually_within(
        "the late learner caught up",
        Duration::from_secs(30),
        || metric(admin, "clustron_kv_applied_index").is_some_and(|a| a >= target),
    );
    let took = started.elapsed();
    tracing::info!(?took, "the late learner caught up");
    println!("late learner: applied index >= {target} after {took:?}");
    assert!(
        metric(admin, "clustron_kv_snapshot_index").is_some_and(|s| s > 0),
        "the learner caught up without a snapshot"
    );
    let log = std::fs::read_to_string(dir.join("n4.log")).unwrap();
    assert!(
        log.contains("installed a snapshot from a peer"),
        "the learner never pulled a snapshot"
    );
    // The cluster is not idle any more once the learner joins: the cache's
    // leader writes a new partition table for the new member. That a late
    // learner catches up on an idle leader without any proposal is shown by
    // `a_learner_added_to_an_idle_leader_catches_up_without_new_proposals`
    // in clustron-log's replica tests.
    drop(client);
    cluster.clean_up_on_drop();
}
