//! The distributed cache on real `clustron-dkv` processes, through Debian's
//! `redis-cli` over TLS (client certificates from the cluster CA), the
//! `clustron` CLI and the Rust client:
//!
//! - any node serves any key, and the Redis commands answer as
//!   Redis does with their keys spread over three owners;
//! - a readonly certificate reads but may not write, on the RESP port and
//!   on the native protocol, and no client may write the cluster's
//!   reserved keys; namespaces are created, used, listed and dropped;
//! - entry events of writes through any node reach a watcher;
//! - `kill -9` of a node with one backup per partition loses no
//!   acknowledged key; when the node comes back empty it is handed its
//!   share again (copies in several chunks, then cut-over) while writes go
//!   on, without losing any; a node restarted at once pulls its
//!   partitions back from their backups;
//! - get-many/put-many, and a near cache that sees an update made through
//!   another node;
//! - SIGTERM hands a node's partitions over before it leaves.
//!
//! Each scenario starts its own three-node cluster; conditions are awaited
//! with deadlines.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use clustron_tests::procs::{
    clustron, dkv, eventually, free_port_tcp, metric, spawn_line_reader, ProcCluster, DEADLINE,
};

/// Three nodes, each with a RESP port (TLS) on 127.0.0.1; their RESP ports.
fn cluster_with_resp() -> (ProcCluster, Vec<u16>) {
    let ports: Vec<u16> = (0..3).map(|_| free_port_tcp()).collect();
    let cluster = ProcCluster::start_with_each(3, false, |i| {
        vec![
            "--resp-listen".to_owned(),
            SocketAddr::from(([127, 0, 0, 1], ports[i])).to_string(),
        ]
    })
    .expect("no lab was asked for");
    (cluster, ports)
}

/// A client certificate `name` with `role` in the cluster's directory.
fn client_cert(dir: &Path, name: &str, role: &str) {
    let status = dkv()
        .args(["certs", "client", name, "--role", role, "--ca"])
        .arg(dir)
        .arg("--out")
        .arg(dir)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "certs client {name}");
}

/// `redis-cli` over TLS to `port` as client `cert`, human output
/// (`--no-raw`), with `stdin` as its input.
fn redis(dir: &Path, port: u16, cert: &str, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new("redis-cli")
        .args([
            "--tls",
            "--no-raw",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .arg("--cacert")
        .arg(dir.join("ca.pem"))
        .arg("--cert")
        .arg(dir.join(format!("{cert}.pem")))
        .arg("--key")
        .arg(dir.join(format!("{cert}.key")))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("redis-cli runs (Debian's redis-tools; .ci/run installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// One command's reply, as `redis-cli --no-raw` prints it.
fn reply(dir: &Path, port: u16, cert: &str, command: &[&str]) -> String {
    let output = redis(dir, port, cert, command, "");
    String::from_utf8_lossy(&output.stdout)
        .trim_end()
        .to_owned()
}

/// What a reply must be.
enum Expect {
    /// Exactly this text.
    Is(&'static str),
    /// `(integer) N` with N in this range (times: the clock runs).
    IntegerIn(i64, i64),
    /// Contains this text.
    Has(&'static str),
}

#[test]
fn redis_cli_on_any_node_serves_every_key_and_a_readonly_certificate_may_not_write() {
    let (mut cluster, ports) = cluster_with_resp();
    let dir = cluster.dir().to_owned();
    client_cert(&dir, "reader", "readonly");

    tracing::info!("a key written through n1 is read through n2 and n3");
    eventually("n1's RESP port takes a write", || {
        reply(&dir, ports[0], "admin", &["SET", "greeting", "hello"]) == "OK"
    });
    for port in &ports[1..] {
        assert_eq!(
            reply(&dir, *port, "admin", &["GET", "greeting"]),
            "\"hello\""
        );
    }

    tracing::info!("the issue's commands, each through the next node");
    use Expect::*;
    let steps: Vec<(Vec<&str>, Expect)> = vec![
        (vec!["PING"], Is("PONG")),
        (vec!["FLUSHDB"], Is("OK")),
        (vec!["DBSIZE"], Is("(integer) 0")),
        (vec!["SET", "a", "1"], Is("OK")),
        (vec!["GET", "a"], Is("\"1\"")),
        (vec!["SET", "a", "2", "NX"], Is("(nil)")),
        (vec!["SET", "a", "2", "XX", "GET"], Is("\"1\"")),
        (vec!["GET", "a"], Is("\"2\"")),
        (vec!["SET", "b", "x", "EX", "100"], Is("OK")),
        (vec!["TTL", "b"], IntegerIn(90, 100)),
        (vec!["PEXPIRE", "b", "50000"], Is("(integer) 1")),
        (vec!["PTTL", "b"], IntegerIn(40_000, 50_000)),
        (vec!["PERSIST", "b"], Is("(integer) 1")),
        (vec!["TTL", "b"], Is("(integer) -1")),
        (vec!["SETEX", "c", "100", "v"], Is("OK")),
        (vec!["EXPIRE", "c", "200"], Is("(integer) 1")),
        (vec!["TTL", "c"], IntegerIn(190, 200)),
        (vec!["SET", "d", "v", "PX", "100000"], Is("OK")),
        (vec!["EXISTS", "a", "b", "c", "d", "e"], Is("(integer) 4")),
        (vec!["DEL", "c", "d", "e"], Is("(integer) 2")),
        (vec!["INCR", "n"], Is("(integer) 1")),
        (vec!["INCRBY", "n", "10"], Is("(integer) 11")),
        (vec!["DECR", "n"], Is("(integer) 10")),
        (vec!["DECRBY", "n", "5"], Is("(integer) 5")),
        (vec!["INCR", "a2"], Is("(integer) 1")),
        (vec!["APPEND", "a", "34"], Is("(integer) 3")),
        (vec!["STRLEN", "a"], Is("(integer) 3")),
        (vec!["MSET", "m1", "x", "m2", "y"], Is("OK")),
        (
            vec!["MGET", "m1", "m2", "nothing"],
            Is("1) \"x\"\n2) \"y\"\n3) (nil)"),
        ),
        // a, a2, b, n, m1, m2
        (vec!["DBSIZE"], Is("(integer) 6")),
        (vec!["SELECT", "0"], Is("OK")),
        (vec!["CLIENT", "SETNAME", "test"], Is("OK")),
        (vec!["COMMAND", "COUNT"], IntegerIn(20, 1000)),
        (vec!["INFO"], Has("redis_version:")),
        (vec!["GETSET", "unknown-to-us", "x", "y"], Has("ERR")),
        (vec!["FLUSHDB"], Is("OK")),
        (vec!["DBSIZE"], Is("(integer) 0")),
    ];
    for (i, (command, expect)) in steps.iter().enumerate() {
        let port = ports[i % ports.len()];
        let got = reply(&dir, port, "admin", command);
        let ok = match expect {
            Is(text) => got == *text,
            IntegerIn(low, high) => got
                .strip_prefix("(integer) ")
                .and_then(|n| n.parse::<i64>().ok())
                .is_some_and(|n| (*low..=*high).contains(&n)),
            Has(text) => got.contains(text),
        };
        assert!(ok, "{command:?} on port {port}: got {got:?}");
    }

    tracing::info!("a readonly certificate reads but may not write, on RESP and natively");
    assert_eq!(reply(&dir, ports[0], "admin", &["SET", "k", "v"]), "OK");
    for port in &ports {
        assert_eq!(reply(&dir, *port, "reader", &["GET", "k"]), "\"v\"");
        for write in [
            vec!["SET", "k", "w"],
            vec!["DEL", "k"],
            vec!["INCR", "k2"],
            vec!["MSET", "k", "w"],
            vec!["FLUSHDB"],
        ] {
            let got = reply(&dir, *port, "reader", &write);
            assert!(got.contains("NOPERM"), "{write:?}: {got:?}");
        }
    }
    assert_eq!(reply(&dir, ports[2], "admin", &["GET", "k"]), "\"v\"");
    let endpoints = cluster.endpoints();
    let as_reader = |args: &[&str]| {
        let mut command = Command::new(clustron_tests::binary("clustron"));
        let list: Vec<String> = endpoints.iter().map(|e| e.to_string()).collect();
        command
            .args(["--endpoints", &list.join(","), "--timeout", "2"])
            .arg("--ca-file")
            .arg(dir.join("ca.pem"))
            .arg("--cert-file")
            .arg(dir.join("reader.pem"))
            .arg("--key-file")
            .arg(dir.join("reader.key"))
            .args(args)
            .env("RUST_BACKTRACE", "0");
        command.output().unwrap()
    };
    let read = as_reader(&["cache", "get", "k"]);
    assert!(read.status.success(), "{read:?}");
    assert_eq!(String::from_utf8_lossy(&read.stdout).trim(), "v");
    for write in [
        vec!["cache", "put", "k", "w"],
        vec!["cache", "del", "k"],
        vec!["cache", "incr", "k3"],
    ] {
        let out = as_reader(&write);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains("may not change the cache"),
            "{write:?}: {stderr}"
        );
    }
    let out = as_reader(&["cache", "create", "mine"]);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("permission denied"),
        "{out:?}"
    );
    assert_eq!(reply(&dir, ports[1], "admin", &["GET", "k"]), "\"v\"");

    tracing::info!("no client, even admin, writes the cluster's reserved keys");
    for args in [
        vec!["kv", "put", "__clustron/cache/table", "x"],
        vec!["kv", "del", "__clustron/cache/ns/default"],
        vec!["kv", "del", "--prefix", ""],
    ] {
        let out = clustron(&dir, &endpoints)
            .args(&args)
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains("reserved for the cluster"),
            "{args:?}: {stderr}"
        );
    }

    tracing::info!("entry events of writes through any node reach a watcher of every node");
    let mut watcher = clustron(&dir, &endpoints)
        .args(["cache", "watch"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = spawn_line_reader(watcher.stdout.take().unwrap());
    let seen = |want: &str, lines: &std::sync::mpsc::Receiver<String>| {
        let deadline = std::time::Instant::now() + DEADLINE;
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match lines.recv_timeout(left) {
                Ok(line) if line == want => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
        false
    };
    // The watcher subscribes in the background: write until it sees one.
    eventually("the watcher sees a write", || {
        assert_eq!(
            reply(&dir, ports[0], "admin", &["SET", "ev:probe", "x"]),
            "OK"
        );
        let until = std::time::Instant::now() + std::time::Duration::from_millis(300);
        while let Some(left) = until.checked_duration_since(std::time::Instant::now()) {
            match lines.recv_timeout(left) {
                Ok(line) if line.contains("ev:probe") => return true,
                _ => {}
            }
        }
        false
    });
    assert_eq!(reply(&dir, ports[0], "admin", &["SET", "ev:a", "1"]), "OK");
    assert!(seen("put ev:a version 1", &lines));
    assert_eq!(reply(&dir, ports[1], "admin", &["SET", "ev:a", "2"]), "OK");
    assert!(seen("update ev:a version 2", &lines));
    assert_eq!(
        reply(&dir, ports[2], "admin", &["DEL", "ev:a"]),
        "(integer) 1"
    );
    assert!(seen("remove ev:a version 2", &lines));
    assert_eq!(
        reply(&dir, ports[1], "admin", &["SET", "ev:t", "x", "PX", "100"]),
        "OK"
    );
    assert!(seen("put ev:t version 1", &lines));
    assert!(seen("expire ev:t version 1", &lines), "the owner's sweep");
    let _ = watcher.kill();
    let _ = watcher.wait();

    tracing::info!("namespaces: create, use, list and drop with the admin certificate");
    let admin = |args: &[&str]| {
        clustron(&dir, &endpoints)
            .args(args)
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap()
    };
    let created = admin(&[
        "cache",
        "create",
        "sessions",
        "--max-entries",
        "1000",
        "--max-memory",
        "16MiB",
        "--eviction",
        "lfu",
        "--ttl",
        "1h",
        "--backups",
        "2",
    ]);
    assert!(created.status.success(), "{created:?}");
    let again = admin(&["cache", "create", "sessions"]);
    assert!(!again.status.success(), "a second create is refused");
    eventually("the new namespace takes a write", || {
        admin(&["cache", "put", "-n", "sessions", "u1", "ada"])
            .status
            .success()
    });
    let got = admin(&["cache", "get", "-n", "sessions", "u1"]);
    assert_eq!(String::from_utf8_lossy(&got.stdout).trim(), "ada");
    let ttl = admin(&["cache", "ttl", "-n", "sessions", "u1"]);
    let ms: u64 = String::from_utf8_lossy(&ttl.stdout)
        .trim()
        .trim_end_matches(" ms")
        .parse()
        .unwrap();
    assert!(
        (3_000_000..=3_600_000).contains(&ms),
        "the namespace's TTL: {ms}"
    );
    eventually("list shows both namespaces", || {
        let listed = admin(&["cache", "list", "--json"]);
        let text = String::from_utf8_lossy(&listed.stdout);
        text.contains("\"sessions\"") && text.contains("\"default\"")
    });
    assert!(admin(&["cache", "drop", "sessions"]).status.success());
    eventually("the dropped namespace is gone", || {
        let got = admin(&["--timeout", "0", "cache", "get", "-n", "sessions", "u1"]);
        String::from_utf8_lossy(&got.stderr).contains("no cache namespace")
    });
    cluster.clean_up_on_drop();
}

#[test]
fn kill_9_of_a_node_with_one_backup_loses_no_acknowledged_key() {
    let (mut cluster, ports) = cluster_with_resp();
    let dir = cluster.dir().to_owned();
    eventually("n1's RESP port takes a write", || {
        reply(&dir, ports[0], "admin", &["SET", "probe", "1"]) == "OK"
    });

    tracing::info!("300 keys of 40 kB written through n1, each acknowledged");
    const KEYS: usize = 300;
    // Large enough that copies of the fuller partitions take several chunks.
    let pad = "x".repeat(40_000);
    let sets: String = (0..KEYS)
        .map(|i| format!("SET key:{i} value-{i}-{pad}\n"))
        .collect();
    let output = redis(&dir, ports[0], "admin", &[], &sets);
    let acked = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| *l == "OK")
        .count();
    assert_eq!(acked, KEYS, "{output:?}");

    tracing::info!("kill -9 of n3, which owns about a third of the partitions");
    cluster.kill(2);
    let gets: String = (0..KEYS).map(|i| format!("GET key:{i}\n")).collect();
    let expected: Vec<String> = (0..KEYS).map(|i| format!("\"value-{i}-{pad}\"")).collect();
    for port in &ports[..2] {
        eventually("every acknowledged key is read from the survivors", || {
            all_values_read(&dir, *port, &gets, &expected)
        });
    }
    assert_eq!(
        reply(&dir, ports[1], "admin", &["DBSIZE"]),
        format!("(integer) {}", KEYS + 1)
    );

    tracing::info!("n3 restarts empty and is handed its share back while n1 takes writes");
    // Batches of writes until the move is over, and one more after it.
    let moved = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = spawn_writer(&dir, ports[0], "live", moved.clone());
    cluster.restart(2);
    let owned = |i: usize| {
        metric(
            cluster.admin(i),
            "clustron_cache_owned_partitions{namespace=\"default\"}",
        )
        .unwrap_or(0)
    };
    eventually("n3 owns its share of the partitions again", || {
        owned(2) >= 80
    });
    eventually("the owners add up to every partition", || {
        owned(0) + owned(1) + owned(2) == 271
    });
    moved.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = writer.join().unwrap();
    let sum = |name: &str| -> u64 {
        (0..2)
            .map(|i| metric(cluster.admin(i), name).unwrap_or(0))
            .sum()
    };
    let (copies, chunks) = (
        sum("clustron_cache_partition_copies_total"),
        sum("clustron_cache_partition_copy_chunks_total"),
    );
    assert!(
        chunks > copies && copies >= 80,
        "n3's share copied, the fuller partitions in several chunks: {copies} copies, {chunks} chunks"
    );
    for port in &ports {
        eventually("every key is read through every node", || {
            all_values_read(&dir, *port, &gets, &expected)
        });
    }
    assert_eq!(written.len() % 200, 0, "one reply per write");
    let acked: Vec<usize> = (0..written.len()).filter(|i| written[*i] == "OK").collect();
    for (i, got) in written.iter().enumerate() {
        assert!(got == "OK" || got.contains("TRYAGAIN"), "write {i}: {got}");
    }
    eprintln!(
        "writes during the hand-over: {} acknowledged of {}",
        acked.len(),
        written.len()
    );
    assert!(
        acked.len() * 2 > written.len(),
        "most writes go on during the move: {} of {}",
        acked.len(),
        written.len()
    );
    let gets: String = acked.iter().map(|i| format!("GET live:{i}\n")).collect();
    let expected: Vec<String> = acked.iter().map(|i| format!("\"live-{i}\"")).collect();
    for port in &ports {
        eventually("every write acknowledged during the move is read", || {
            all_values_read(&dir, *port, &gets, &expected)
        });
    }
    cluster.clean_up_on_drop();
}

/// `redis-cli`'s reply lines, without the times it notes for slow replies
/// (`(1.51s)` on a line of its own).
/// Writes `SET PREFIX:i PREFIX-i` through `port` in batches of 200 until
/// `stop` is set, then one batch more; the thread returns every reply.
fn spawn_writer(
    dir: &Path,
    port: u16,
    prefix: &'static str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Vec<String>> {
    let dir = dir.to_owned();
    std::thread::spawn(move || {
        let mut written = Vec::new();
        loop {
            let last = stop.load(std::sync::atomic::Ordering::Relaxed);
            let first = written.len();
            let sets: String = (first..first + 200)
                .map(|i| format!("SET {prefix}:{i} {prefix}-{i}\n"))
                .collect();
            written.extend(replies(&redis(&dir, port, "admin", &[], &sets)));
            if last {
                return written;
            }
        }
    })
}

fn replies(output: &Output) -> Vec<String> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| !(l.starts_with('(') && l.ends_with("s)")))
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_node_restarted_at_once_after_kill_9_gets_its_partitions_back_from_its_backups() {
    let (mut cluster, ports) = cluster_with_resp();
    let dir = cluster.dir().to_owned();
    eventually("n1's RESP port takes a write", || {
        reply(&dir, ports[0], "admin", &["SET", "probe", "1"]) == "OK"
    });
    const KEYS: usize = 300;
    let sets: String = (0..KEYS)
        .map(|i| format!("SET key:{i} value-{i}\n"))
        .collect();
    let output = redis(&dir, ports[0], "admin", &[], &sets);
    let acked = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| *l == "OK")
        .count();
    assert_eq!(acked, KEYS, "{output:?}");

    tracing::info!("kill -9 of n3 and a restart at once, empty, under the same name");
    cluster.kill(2);
    cluster.restart(2);
    let gets: String = (0..KEYS).map(|i| format!("GET key:{i}\n")).collect();
    let expected: Vec<String> = (0..KEYS).map(|i| format!("\"value-{i}\"")).collect();
    for port in &ports {
        eventually("every key is read through every node", || {
            all_values_read(&dir, *port, &gets, &expected)
        });
    }
    eventually("n3 owns partitions again", || {
        metric(
            cluster.admin(2),
            "clustron_cache_owned_partitions{namespace=\"default\"}",
        )
        .is_some_and(|owned| owned >= 80)
    });
    for port in &ports {
        assert!(all_values_read(&dir, *port, &gets, &expected));
    }
    cluster.clean_up_on_drop();
}

/// Whether `gets` through `port` read exactly `expected`; a reply that is
/// neither the value nor a "not yet" (`TRYAGAIN`) fails the test: the key
/// lost its value.
fn all_values_read(dir: &Path, port: u16, gets: &str, expected: &[String]) -> bool {
    let lines = replies(&redis(dir, port, "admin", &[], gets));
    let mut complete = lines.len() == expected.len();
    let mut waiting = Vec::new();
    for (i, (got, want)) in lines.iter().zip(expected).enumerate() {
        if got != want {
            assert!(got.contains("TRYAGAIN"), "a key lost its value: {got:?}");
            complete = false;
            waiting.push((i, got));
        }
    }
    // What is still missing, each time it changes (shown if the test
    // fails: which keys, through which port, with which answer).
    thread_local! {
        static LAST: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
    }
    let summary = match (complete, waiting.first()) {
        (true, _) => String::new(),
        (false, Some((i, got))) => format!(
            "port {port}: {} of {} replies; {} not read yet, the first (get #{i}): {got}",
            lines.len(),
            expected.len(),
            waiting.len()
        ),
        (false, None) => format!("port {port}: {} of {} replies", lines.len(), expected.len()),
    };
    LAST.with(|last| {
        if *last.borrow() != summary {
            if !summary.is_empty() {
                eprintln!("{summary}");
            }
            *last.borrow_mut() = summary;
        }
    });
    complete
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_keys_at_once_and_a_near_cache_that_sees_an_update_made_through_another_node() {
    let (mut cluster, ports) = cluster_with_resp();
    let dir = cluster.dir().to_owned();
    let ready = {
        let (dir, port) = (dir.clone(), ports[0]);
        tokio::task::spawn_blocking(move || {
            eventually("n1's RESP port takes a write", || {
                reply(&dir, port, "admin", &["SET", "near", "v1"]) == "OK"
            })
        })
    };
    ready.await.unwrap();
    let identity = clustron_transport::TlsIdentity::from_files(
        &dir.join("ca.pem"),
        &dir.join("admin.pem"),
        &dir.join("admin.key"),
    )
    .unwrap();
    let client = clustron_client::Client::new(cluster.endpoints(), identity).unwrap();
    tracing::info!("get-many and put-many across partitions");
    let entries: Vec<(Vec<u8>, Vec<u8>)> = (0..20)
        .map(|i| {
            (
                format!("many:{i}").into_bytes(),
                format!("m{i}").into_bytes(),
            )
        })
        .collect();
    let versions = client
        .cache_put_many("default", &entries, None)
        .await
        .unwrap();
    assert_eq!(versions, vec![1; 20]);
    let mut keys: Vec<Vec<u8>> = entries.iter().map(|(k, _)| k.clone()).collect();
    keys.push(b"many:absent".to_vec());
    let values = client.cache_get_many("default", &keys).await.unwrap();
    let got: Vec<Option<Vec<u8>>> = values.into_iter().map(|v| v.map(|v| v.value)).collect();
    let mut want: Vec<Option<Vec<u8>>> = entries.iter().map(|(_, v)| Some(v.clone())).collect();
    want.push(None);
    assert_eq!(got, want);

    let near = clustron_client::NearCache::new(client, "default", 1000);
    let deadline = std::time::Instant::now() + DEADLINE;
    while !near.is_live() {
        assert!(
            std::time::Instant::now() < deadline,
            "the near cache subscribes"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    tracing::info!("a second get is answered locally");
    assert_eq!(near.get(b"near").await.unwrap(), Some(b"v1".to_vec()));
    assert_eq!(near.get(b"near").await.unwrap(), Some(b"v1".to_vec()));
    assert_eq!(near.stats().hits, 1, "{:?}", near.stats());

    tracing::info!("an update through each other node reaches the copy");
    for (round, port) in ports.iter().enumerate().skip(1) {
        let value = format!("v{}", round + 1);
        let set = {
            let (dir, port, value) = (dir.clone(), *port, value.clone());
            tokio::task::spawn_blocking(move || {
                reply(&dir, port, "admin", &["SET", "near", &value])
            })
        };
        assert_eq!(set.await.unwrap(), "OK");
        let changed = std::time::Instant::now();
        loop {
            let got = near.get(b"near").await.unwrap();
            if got.as_deref() == Some(value.as_bytes()) {
                break;
            }
            assert!(
                changed.elapsed() < std::time::Duration::from_secs(5),
                "the near cache still serves {got:?}"
            );
            tokio::task::yield_now().await;
        }
        eprintln!(
            "near cache: an update through node {} seen after {:?}",
            round + 1,
            changed.elapsed()
        );
        // Served locally again once fetched.
        let hits = near.stats().hits;
        assert_eq!(near.get(b"near").await.unwrap(), Some(value.into_bytes()));
        assert_eq!(near.stats().hits, hits + 1);
    }
    assert!(near.stats().invalidations >= 2, "{:?}", near.stats());
    drop(near);
    cluster.clean_up_on_drop();
}

#[test]
fn sigterm_hands_a_nodes_partitions_over_before_it_leaves_and_loses_nothing() {
    let (mut cluster, ports) = cluster_with_resp();
    let dir = cluster.dir().to_owned();
    eventually("n1's RESP port takes a write", || {
        reply(&dir, ports[0], "admin", &["SET", "probe", "1"]) == "OK"
    });

    tracing::info!("writes through n1 go on while n3 stops gracefully");
    let stopped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = spawn_writer(&dir, ports[0], "term", stopped.clone());
    let status = cluster
        .terminate(2, DEADLINE)
        .expect("n3 exits after SIGTERM");
    stopped.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(status.success(), "n3 exits cleanly: {status:?}");
    let log = std::fs::read_to_string(dir.join("n3.log")).unwrap();
    assert!(
        log.contains("cache partitions handed over"),
        "n3 handed its partitions over before leaving"
    );
    let written = writer.join().unwrap();
    let acked: Vec<usize> = (0..written.len()).filter(|i| written[*i] == "OK").collect();
    for (i, got) in written.iter().enumerate() {
        assert!(got == "OK" || got.contains("TRYAGAIN"), "write {i}: {got}");
    }
    eprintln!(
        "writes during the graceful stop: {} acknowledged of {}",
        acked.len(),
        written.len()
    );
    let gets: String = acked.iter().map(|i| format!("GET term:{i}\n")).collect();
    let expected: Vec<String> = acked.iter().map(|i| format!("\"term-{i}\"")).collect();
    for port in &ports[..2] {
        eventually(
            "every acknowledged write is read through the survivors",
            || all_values_read(&dir, *port, &gets, &expected),
        );
    }
    cluster.clean_up_on_drop();
}
