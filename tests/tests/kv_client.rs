//! The client library against a one-node cluster in this process (the real
//! node: transport, membership, election, key-value server): large answers
//! come back whole, in pages; many watches share one connection; and what
//! cannot be done fails at once, definitely.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::collections::BTreeSet;
use std::time::Duration;

use clustron_client::kv::{
    DeleteRequest, KeyRange, KvError, KvFailure, RangeRequest, RequestOp, Txn, WatchRequest,
};
use clustron_client::{Client, ClientError};
use clustron_dkv::config::{LogFormat, NodeConfig};
use clustron_dkv::node::Node;
use clustron_transport::{CertRequest, CertificateAuthority, ClientRole, TlsIdentity};

/// Bounds every scenario: a hang is a failure, not a stuck CI job.
const DEADLINE: Duration = Duration::from_secs(120);

struct OneNode {
    node: Node,
    client: Client,
    /// Holds `ca.pem` and the client's `app.pem` / `app.key`.
    dir: tempfile::TempDir,
}

impl OneNode {
    /// `clustron ARGS` against the node, as the client `app`; its stdout.
    async fn cli(&self, args: &[&str]) -> String {
        let output = tokio::process::Command::new(clustron_tests::binary("clustron"))
            .arg("--endpoints")
            .arg(self.node.endpoint.local_addr().to_string())
            .arg("--ca-file")
            .arg(self.dir.path().join("ca.pem"))
            .arg("--cert-file")
            .arg(self.dir.path().join("app.pem"))
            .arg("--key-file")
            .arg(self.dir.path().join("app.key"))
            .args(args)
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "clustron {args:?}: {stderr}");
        String::from_utf8(output.stdout).unwrap()
    }
}

/// Starts node `n1`, sole voter, and a read-write client of it; returns
/// once the node leads.
async fn one_node() -> OneNode {
    one_node_with(Duration::from_secs(30)).await
}

/// As [`one_node`], cancelling watches whose reader stalls for `stall`.
async fn one_node_with(stall: Duration) -> OneNode {
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::generate("test").unwrap();
    ca.save(dir.path()).unwrap();
    ca.issue(&CertRequest::node("n1").unwrap())
        .unwrap()
        .save(dir.path(), "n1")
        .unwrap();
    let config = NodeConfig {
        name: "n1".into(),
        listen: "127.0.0.1:0".parse().unwrap(),
        seeds: vec![],
        voters: vec!["n1".into()],
        priority: 100,
        data_dir: dir.path().join("data"),
        ca_file: dir.path().join("ca.pem"),
        cert_file: dir.path().join("n1.pem"),
        key_file: dir.path().join("n1.key"),
        admin_listen: None,
        log_format: LogFormat::Text,
        watch_stall_timeout: stall,
        retain_revisions: 100_000,
        retain_bytes: 64 << 20,
        snapshot_entries: 10_000,
        max_value_bytes: 500 * 1024,
        resp_listen: None,
        resp_insecure: false,
        resp_namespace: "default".into(),
    };
    let node = clustron_dkv::node::start(&config).await.unwrap();
    let cert = ca
        .issue(&CertRequest::client("app", ClientRole::ReadWrite).unwrap())
        .unwrap();
    cert.save(dir.path(), "app").unwrap();
    let identity = TlsIdentity::from_certified(ca.cert_pem(), &cert).unwrap();
    let client = Client::new(vec![node.endpoint.local_addr()], identity).unwrap();
    let started = tokio::time::Instant::now();
    while node
        .election
        .borrow()
        .as_ref()
        .and_then(|e| e.lease())
        .is_none()
    {
        assert!(started.elapsed() < DEADLINE, "n1 never led");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    OneNode { node, client, dir }
}

fn prefix(p: &str) -> RangeRequest {
    RangeRequest {
        range: KeyRange::Prefix(p.as_bytes().to_vec()),
        revision: 0,
        limit: 0,
        keys_only: false,
        count_only: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_larger_than_a_frame_comes_back_whole_through_the_client() {
    tokio::time::timeout(DEADLINE, async {
        let one = one_node().await;
        let (client, node) = (&one.client, &one.node);
        // 48 values of 100 KiB: about 4.7 MiB, over the 4 MiB frame limit.
        let value = vec![b'v'; 100 * 1024];
        let keys: BTreeSet<String> = (0..48).map(|i| format!("big/{i:03}")).collect();
        for key in &keys {
            client.put(key.as_bytes(), &value).await.unwrap();
        }
        client.put(b"big0", b"outside the prefix").await.unwrap();
        for linearizable in [true, false] {
            let (response, _) = client.range(prefix("big/"), linearizable).await.unwrap();
            let got: Vec<String> = response
                .kvs
                .iter()
                .map(|kv| String::from_utf8(kv.key.clone()).unwrap())
                .collect();
            // Every key exactly once, in order, each with its whole value.
            assert_eq!(got, keys.iter().cloned().collect::<Vec<_>>());
            assert!(response.kvs.iter().all(|kv| kv.value == value));
            assert_eq!(response.count, 48);
            assert!(!response.more);
        }
        // The CLI pages by default and prints every key once; --limit cuts.
        let rows: serde_json::Value =
            serde_json::from_str(&one.cli(&["kv", "get", "big/", "--prefix", "--json"]).await)
                .unwrap();
        let printed: Vec<&str> = rows
            .as_array()
            .unwrap()
            .iter()
            .map(|row| row["key"].as_str().unwrap())
            .collect();
        assert_eq!(printed, keys.iter().map(String::as_str).collect::<Vec<_>>());
        let lines = one
            .cli(&["kv", "get", "big/", "--prefix", "--limit", "3"])
            .await;
        assert_eq!(lines.lines().count(), 3);
        assert!(lines.starts_with("big/000=vvv"));
        // A write whose answer could not be sent is refused before it is
        // proposed: nothing applied, and the client is told so.
        let delete_all = clustron_client::kv::KvRequest::Delete(DeleteRequest {
            range: KeyRange::Prefix(b"big/".to_vec()),
            prev_kv: true,
        });
        match client.kv(delete_all).await {
            Err(ClientError::Kv(KvFailure::Refused(KvError::AnswerTooLarge { .. }))) => {}
            other => panic!("{other:?}"),
        }
        let read_all = Txn {
            success: vec![RequestOp::Range(prefix("big/"))],
            ..Txn::default()
        };
        match client.txn(read_all).await {
            Err(ClientError::Kv(KvFailure::Refused(KvError::AnswerTooLarge { .. }))) => {}
            other => panic!("{other:?}"),
        }
        let (still, _) = client.range(prefix("big/"), true).await.unwrap();
        assert_eq!(still.kvs.len(), 48);
        // One the leader cannot foresee (it reads the past, which it does
        // not estimate) fails definitely, saying it was applied and where.
        let (_, before) = client.range(prefix("big/"), true).await.unwrap();
        // A watch with previous values sees the delete of all 48 keys, one
        // revision of about 4.7 MiB, whole.
        let mut watch = client
            .watch(WatchRequest {
                prev_kv: true,
                ..WatchRequest::new(KeyRange::Prefix(b"big/".to_vec()))
            })
            .await
            .unwrap();
        client
            .delete(KeyRange::Prefix(b"big/".to_vec()))
            .await
            .unwrap();
        let deleted = watch.next().await.unwrap();
        assert_eq!(deleted.len(), 48);
        assert!(deleted
            .iter()
            .all(|e| e.prev_kv.as_ref().is_some_and(|kv| kv.value == value)));
        drop(watch);
        let read_past = Txn {
            success: vec![RequestOp::Range(RangeRequest {
                revision: before,
                ..prefix("big/")
            })],
            ..Txn::default()
        };
        match client.txn(read_past).await {
            Err(ClientError::Kv(KvFailure::AnswerTooLarge {
                revision: Some(_), ..
            })) => {}
            other => panic!("{other:?}"),
        }
        // A limit still limits, across pages (read in the past, too).
        let (limited, _) = client
            .range(
                RangeRequest {
                    limit: 45,
                    revision: before,
                    ..prefix("big/")
                },
                true,
            )
            .await
            .unwrap();
        assert_eq!(limited.kvs.len(), 45);
        assert!(limited.more);
        assert_eq!(limited.count, 48);
        node.stop().await;
    })
    .await
    .expect("timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_watches_share_one_client_and_a_put_afterwards_succeeds() {
    tokio::time::timeout(DEADLINE, async {
        let OneNode {
            client,
            node,
            dir: _dir,
        } = one_node().await;
        let mut watches = Vec::new();
        for i in 0..200 {
            let request = WatchRequest::new(KeyRange::Key(format!("w/{i}").into_bytes()));
            watches.push(client.watch(request).await.unwrap());
        }
        let revision = client.put(b"w/7", b"seen").await.unwrap();
        let events = watches[7].next().await.unwrap();
        assert_eq!(events[0].kv.mod_revision, revision);
        assert_eq!(events[0].kv.value, b"seen");
        node.stop().await;
    })
    .await
    .expect("timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_that_never_read_are_cancelled_and_writes_go_on_meanwhile() {
    tokio::time::timeout(DEADLINE, async {
        let OneNode {
            client,
            node,
            dir: _dir,
        } = one_node_with(Duration::from_secs(1)).await;
        let kv = node.kv.borrow().clone().unwrap();
        // 12 MB of history under s/: more than a connection buffers.
        let value = vec![b'h'; 100 * 1024];
        let mut revisions = Vec::new();
        for i in 0..120 {
            revisions.push(
                client
                    .put(format!("s/{i:03}").as_bytes(), &value)
                    .await
                    .unwrap(),
            );
        }
        // Ten watches from the start that never read (issue 10: they made
        // the leader lose its leadership and puts take 44 s).
        let from_start = |start_revision| WatchRequest {
            start_revision,
            ..WatchRequest::new(KeyRange::Prefix(b"s/".to_vec()))
        };
        let mut stalled = Vec::new();
        for _ in 0..10 {
            stalled.push(client.watch(from_start(1)).await.unwrap());
        }
        // Writes go on meanwhile.
        for i in 0..20 {
            client.put(format!("w/{i}").as_bytes(), b"x").await.unwrap();
        }
        // The node cancels them once their readers have taken nothing for
        // the stall timeout.
        while kv.stats().watchers > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        client.put(b"w/after", b"x").await.unwrap();
        // A reader that wakes up gets what was sent, in order, then the
        // reason; it resumes after the last revision it got and misses
        // nothing.
        let mut got = Vec::new();
        let reason = loop {
            match stalled[0].next().await {
                Ok(events) => got.extend(events.into_iter().map(|e| e.kv.mod_revision)),
                Err(e) => break e,
            }
        };
        assert!(
            matches!(
                reason,
                ClientError::Kv(KvFailure::Refused(KvError::WatchTooSlow { .. }))
            ),
            "{reason}"
        );
        assert!(got.len() < revisions.len(), "nothing was held back");
        let next = got.last().map_or(1, |r| r + 1);
        let mut resumed = client.watch(from_start(next)).await.unwrap();
        while got.len() < revisions.len() {
            got.extend(
                resumed
                    .next()
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|e| e.kv.mod_revision),
            );
        }
        assert_eq!(got, revisions);
        node.stop().await;
    })
    .await
    .expect("timed out");
}

/// A client that can reach only the leader (its other endpoint silent: a
/// node dead or frozen, or its dials backing off) follows the topology
/// through the leader on one stream, and looks for another node in the
/// background. It used to drop that stream at each item naming the leader
/// and reopen it, the other endpoints failing at once while their dials
/// backed off: thousands of streams a second on the new leader of a
/// failover, which slowed the failover itself (issue 9).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reaches_only_the_leader_follows_the_topology_on_one_stream() {
    let n = one_node().await;
    // Bound and silent: a dial to it times out, then backs off.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let dir = n.dir.path();
    let identity = TlsIdentity::from_files(
        &dir.join("ca.pem"),
        &dir.join("app.pem"),
        &dir.join("app.key"),
    )
    .unwrap();
    let endpoints = vec![n.node.endpoint.local_addr(), silent.local_addr().unwrap()];
    let client = Client::new(endpoints, identity).unwrap();
    tokio::time::timeout(DEADLINE, client.put(b"k", b"v"))
        .await
        .unwrap()
        .unwrap();
    // The follower started with that put; its first stream opens once the
    // dial to the silent endpoint has failed (2 s). An observation window
    // over a few dial cycles: nothing here waits for a condition, it counts
    // the streams the node accepts meanwhile (the one-node cluster has no
    // peers, so they are the client's).
    let before = n.node.endpoint.stats().streams_accepted;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let accepted = n.node.endpoint.stats().streams_accepted - before;
    assert!(
        accepted <= 10,
        "the node accepted {accepted} streams from an idle client in 6 s: \
         its topology stream is being reopened in a loop"
    );
    // And it still serves.
    tokio::time::timeout(DEADLINE, client.put(b"k", b"w"))
        .await
        .unwrap()
        .unwrap();
    n.node.stop().await;
}
