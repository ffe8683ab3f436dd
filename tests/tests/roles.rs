//! Authorisation by certificate role on the client protocol, end to end: a
//! one-voter node in this process and a client per role, as an attacker
//! holding a `readonly` certificate would try it.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use clustron_client::kv::{KeyRange, KvFailure, PutRequest, Txn};
use clustron_client::{Client, ClientError};
use clustron_dkv::config::{LogFormat, NodeConfig};
use clustron_transport::{CertRequest, CertificateAuthority, ClientRole, TlsIdentity};

const DEADLINE: Duration = Duration::from_secs(30);

fn client(dir: &Path, name: &str, node: SocketAddr) -> Client {
    let identity = TlsIdentity::from_files(
        &dir.join("ca.pem"),
        &dir.join(format!("{name}.pem")),
        &dir.join(format!("{name}.key")),
    )
    .unwrap();
    Client::new(vec![node], identity)
        .unwrap()
        .with_retry_for(Duration::from_secs(5))
}

fn denied<T: std::fmt::Debug>(result: Result<T, ClientError>, role: &str) -> String {
    match result {
        Err(ClientError::Kv(KvFailure::PermissionDenied { role: r, operation })) => {
            assert_eq!(r, role);
            operation
        }
        Err(ClientError::Refused(reason)) if reason.starts_with("permission denied") => {
            assert!(reason.contains(role), "{reason}");
            reason
        }
        other => panic!("a {role} client was not refused: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_readonly_certificate_reads_and_watches_but_changes_nothing_and_only_admin_compacts() {
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::generate("roles test").unwrap();
    ca.save(dir.path()).unwrap();
    let node = CertRequest::node("n1")
        .unwrap()
        .ip("127.0.0.1".parse().unwrap());
    ca.issue(&node).unwrap().save(dir.path(), "n1").unwrap();
    for (name, role) in [
        ("ro", ClientRole::ReadOnly),
        ("rw", ClientRole::ReadWrite),
        ("admin", ClientRole::Admin),
    ] {
        let request = CertRequest::client(name, role).unwrap();
        ca.issue(&request).unwrap().save(dir.path(), name).unwrap();
    }
    let listen: SocketAddr = {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.local_addr().unwrap()
    };
    let config = NodeConfig {
        name: "n1".into(),
        listen,
        seeds: vec![],
        voters: vec!["n1".into()],
        priority: 100,
        data_dir: dir.path().join("n1"),
        ca_file: dir.path().join("ca.pem"),
        cert_file: dir.path().join("n1.pem"),
        key_file: dir.path().join("n1.key"),
        admin_listen: None,
        log_format: LogFormat::Text,
        watch_stall_timeout: Duration::from_secs(30),
        retain_revisions: 0,
        retain_bytes: 0,
        snapshot_entries: 10_000,
        max_value_bytes: 1024,
        resp_listen: None,
        resp_insecure: false,
        resp_namespace: "default".into(),
    };
    let node = clustron_dkv::node::start(&config).await.unwrap();
    let (ro, rw, admin) = (
        client(dir.path(), "ro", listen),
        client(dir.path(), "rw", listen),
        client(dir.path(), "admin", listen),
    );

    tracing::info!("a readwrite client writes once the node leads");
    let start = Instant::now();
    while rw.put(b"app/x", b"kept").await.is_err() {
        assert!(start.elapsed() < DEADLINE, "the node never served a write");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    tracing::info!("readonly: reads, read-only transactions and watches work");
    assert_eq!(ro.get(b"app/x").await.unwrap().unwrap().value, b"kept");
    let read_txn = Txn {
        compare: vec![],
        success: vec![clustron_client::kv::RequestOp::get(b"app/x")],
        failure: vec![],
    };
    assert!(ro.txn(read_txn).await.unwrap().succeeded);
    ro.watch(clustron_client::kv::WatchRequest::new(KeyRange::Prefix(
        b"app/".to_vec(),
    )))
    .await
    .unwrap();
    ro.topology().await.unwrap();

    tracing::info!("readonly: every change is refused, naming the role and the operation");
    assert_eq!(
        denied(ro.put(b"app/x", b"hacked").await, "readonly"),
        "write keys"
    );
    assert_eq!(
        denied(ro.delete(KeyRange::Prefix(Vec::new())).await, "readonly"),
        "delete keys"
    );
    denied(ro.grant(Duration::from_secs(10)).await, "readonly");
    denied(
        ro.txn(Txn {
            compare: vec![],
            success: vec![clustron_client::kv::RequestOp::put(b"app/x", b"hacked")],
            failure: vec![],
        })
        .await,
        "readonly",
    );
    denied(ro.lock("deploy", Duration::from_secs(10)).await, "readonly");
    denied(ro.compact(1).await, "readonly");
    denied(ro.publish("deploys", b"v1".to_vec()).await, "readonly");
    denied(
        ro.put_with(PutRequest {
            key: b"app/y".to_vec(),
            value: b"hacked".to_vec(),
            lease: None,
            prev_kv: true,
        })
        .await,
        "readonly",
    );
    assert_eq!(rw.get(b"app/x").await.unwrap().unwrap().value, b"kept");
    assert!(rw.get(b"app/y").await.unwrap().is_none());

    tracing::info!("readwrite: writes, leases and events work; compaction is admin's");
    rw.grant(Duration::from_secs(10)).await.unwrap();
    rw.publish("deploys", b"v1".to_vec()).await.unwrap();
    denied(rw.compact(1).await, "readwrite");
    admin.compact(1).await.unwrap();
    node.stop().await;
}
