//! Real `clustron-dkv` processes, looked at through the admin HTTP port and
//! the `clustron` CLI. On 127.0.0.1: five nodes (three voters) form a
//! cluster and elect the highest priority; a user event published on one
//! node reaches subscribers on all the others; `kill -9` of a learner and
//! then of the leader is seen `dead` by every node and by a watching client,
//! and the second gives a new leader with a higher epoch; a node with a
//! certificate from another CA cannot join and says why; SIGTERM is seen as
//! `left`; a leader stopped past its lease is replaced and comes back as a
//! follower; a restarted node rejoins. In network namespaces the test
//! creates and removes: a leader cut off from the majority steps down, the
//! majority elects, and the cluster heals. Conditions are awaited with
//! deadlines.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(30);

fn binary(name: &str) -> std::path::PathBuf {
    clustron_tests::binary(name)
}

fn dkv() -> Command {
    Command::new(binary("clustron-dkv"))
}

struct Proc {
    child: Child,
    admin: SocketAddr,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port_udp() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn free_port_tcp() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn certs(dir: &Path, names: &[&str]) {
    let loopback = vec![IpAddr::from([127, 0, 0, 1]); names.len()];
    certs_for(dir, names, &loopback);
}

/// A CA, the admin client certificate, and one node certificate per name
/// with the matching address in its IP SANs.
fn certs_for(dir: &Path, names: &[&str], ips: &[IpAddr]) {
    /// `clustron-dkv certs ARGS --ca DIR --out DIR` (or `--out DIR` alone
    /// for `init`), which must succeed.
    fn certs(dir: &Path, args: &[&str]) {
        let mut command = dkv();
        command.arg("certs").args(args);
        if args[0] != "init" {
            command.arg("--ca").arg(dir);
        }
        let status = command
            .arg("--out")
            .arg(dir)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "clustron-dkv certs {args:?}");
    }
    certs(dir, &["init"]);
    certs(dir, &["client", "admin", "--role", "admin"]);
    for (name, ip) in names.iter().zip(ips) {
        certs(dir, &["node", name, "--ip", &ip.to_string()]);
    }
}

fn start(dir: &Path, name: &str, priority: u32, seed: Option<SocketAddr>) -> (Proc, SocketAddr) {
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port_udp()));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port_tcp()));
    launch(None, dir, name, priority, seed, listen, admin)
}

/// Starts `clustron-dkv run` for `name`, inside network namespace `netns`
/// if given. Its log goes to `DIR/NAME.log` (a pipe nobody reads would fill
/// and stall the node).
fn launch(
    netns: Option<&str>,
    dir: &Path,
    name: &str,
    priority: u32,
    seed: Option<SocketAddr>,
    listen: SocketAddr,
    admin: SocketAddr,
) -> (Proc, SocketAddr) {
    let mut command = match netns {
        // `ip netns exec` execs the binary: the child's pid is the node's.
        Some(netns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", netns]).arg(binary("clustron-dkv"));
            c
        }
        None => dkv(),
    };
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{name}.log")))
        .unwrap();
    command
        .arg("run")
        .args(["--name", name, "--voters", "n1,n2,n3"])
        .args([
            "--listen",
            &listen.to_string(),
            "--admin-listen",
            &admin.to_string(),
        ])
        .args(["--priority", &priority.to_string()])
        .arg("--data-dir")
        .arg(dir.join(name))
        .arg("--ca-file")
        .arg(dir.join("ca.pem"))
        .arg("--cert-file")
        .arg(dir.join(format!("{name}.pem")))
        .arg("--key-file")
        .arg(dir.join(format!("{name}.key")))
        // The node logs to stdout; panics and exit errors go to stderr.
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    if let Some(seed) = seed {
        command.args(["--seeds", &seed.to_string()]);
    }
    (
        Proc {
            child: command.spawn().unwrap(),
            admin,
        },
        listen,
    )
}

/// GET `path` from an admin port; `None` if it does not answer.
fn get(admin: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&admin, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1.to_owned();
    Some((status, body))
}

fn metric(admin: SocketAddr, line_start: &str) -> Option<u64> {
    let (_, body) = get(admin, "/metrics")?;
    body.lines()
        .find(|l| l.starts_with(line_start))?
        .rsplit(' ')
        .next()?
        .parse()
        .ok()
}

fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn leader_of(admin: SocketAddr) -> Option<(String, u64)> {
    let (status, body) = get(admin, "/readyz")?;
    if status != 200 {
        return None;
    }
    // "ready: leader NAME epoch N"
    let words: Vec<&str> = body.split_whitespace().collect();
    Some((words.get(2)?.to_string(), words.get(4)?.parse().ok()?))
}

/// The `clustron` CLI against `endpoints`, with the admin client certificate.
fn clustron(dir: &Path, endpoints: &[SocketAddr]) -> Command {
    let list: Vec<String> = endpoints.iter().map(|e| e.to_string()).collect();
    let mut command = Command::new(binary("clustron"));
    command
        .args(["--endpoints", &list.join(",")])
        .arg("--ca-file")
        .arg(dir.join("ca.pem"))
        .arg("--cert-file")
        .arg(dir.join("admin.pem"))
        .arg("--key-file")
        .arg(dir.join("admin.key"));
    command
}

fn json(mut command: Command) -> Option<serde_json::Value> {
    let output = command.output().ok()?;
    if !output.status.success() {
        return None;
    }
    serde_json::from_slice(&output.stdout).ok()
}

/// `clustron kv put KEY VALUE` through `endpoints`; whether it succeeded.
fn kv_put(dir: &Path, endpoints: &[SocketAddr], key: &str, value: &str) -> bool {
    clustron(dir, endpoints)
        .args(["kv", "put", key, value])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

/// `clustron kv get KEY --json` through `endpoints` (linearizable unless
/// `serializable`): the value, `Some(None)` if absent, `None` on failure.
fn kv_get(
    dir: &Path,
    endpoints: &[SocketAddr],
    key: &str,
    serializable: bool,
) -> Option<Option<String>> {
    let mut command = clustron(dir, endpoints);
    command.args(["kv", "get", key, "--json"]);
    if serializable {
        command.arg("--serializable");
    }
    command.stderr(Stdio::null());
    let rows = json(command)?;
    Some(
        rows.as_array()?
            .first()
            .map(|kv| kv["value"].as_str().unwrap_or("").to_owned()),
    )
}

#[test]
fn five_processes_elect_n1_survive_kill_9_of_the_leader_and_see_sigterm_as_left() {
    let dir = tempfile::tempdir().unwrap();
    certs(dir.path(), &["n1", "n2", "n3", "n4", "n5"]);
    let (n1, seed) = start(dir.path(), "n1", 300, None);
    let (n2, n2_addr) = start(dir.path(), "n2", 200, Some(seed));
    let (mut n3, n3_addr) = start(dir.path(), "n3", 100, Some(seed));
    // Two learners: members that follow but never vote.
    let (n4, n4_addr) = start(dir.path(), "n4", 0, Some(seed));
    let (n5, n5_addr) = start(dir.path(), "n5", 0, Some(seed));
    let endpoints = [seed, n2_addr, n3_addr];

    eventually("all five are ready with leader n1", || {
        [&n1, &n2, &n3, &n4, &n5]
            .iter()
            .all(|p| leader_of(p.admin).is_some_and(|(name, _)| name == "n1"))
    });
    let (_, first_epoch) = leader_of(n2.admin).unwrap();
    eventually("n1 reports that it holds the lease", || {
        metric(n1.admin, "clustron_is_leader") == Some(1)
    });
    assert_eq!(get(n1.admin, "/healthz").map(|r| r.0), Some(200));

    // The CLI sees the same.
    let members = json({
        let mut c = clustron(dir.path(), &endpoints);
        c.args(["members", "--json"]);
        c
    })
    .expect("clustron members --json");
    let members = members.as_array().unwrap();
    assert_eq!(members.len(), 5);
    for m in members {
        assert_eq!(m["state"], "alive");
        assert_eq!(m["voter"], m["name"] != "n4" && m["name"] != "n5");
        assert_eq!(m["leader"], m["name"] == "n1");
    }

    // A user event published through n2 reaches subscribers on every other
    // node. Subscribing is asynchronous, so the publisher repeats (a new
    // sequence number each time) until every subscriber has printed one.
    let mut subscribers = Vec::new();
    for addr in [seed, n3_addr, n4_addr, n5_addr] {
        let mut child = clustron(dir.path(), &[addr])
            .args(["events", "subscribe", "deploys"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = spawn_line_reader(child.stdout.take().unwrap());
        subscribers.push((child, lines, false));
    }
    eventually("the event reaches subscribers on n1, n3, n4 and n5", || {
        let published = clustron(dir.path(), &[n2_addr])
            .args(["events", "publish", "deploys", "v42"])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(published.success());
        for (_, lines, got) in &mut subscribers {
            while let Ok(line) = lines.recv_timeout(Duration::from_millis(200)) {
                // "TOPIC ORIGIN#SEQ PAYLOAD", published on n2.
                assert!(line.starts_with("deploys n2#"), "unexpected line {line:?}");
                assert!(line.ends_with(" v42"), "unexpected line {line:?}");
                *got = true;
            }
        }
        subscribers.iter().all(|(_, _, got)| *got)
    });
    for (mut child, _, _) in subscribers {
        let _ = child.kill();
        let _ = child.wait();
    }

    // The key-value store: a write through a follower is redirected to the
    // leader; a linearizable read sees it at once; a learner applies it.
    assert!(kv_put(dir.path(), &[n3_addr], "config/mode", "blue"));
    assert_eq!(
        kv_get(dir.path(), &endpoints, "config/mode", false),
        Some(Some("blue".into()))
    );
    eventually("the learner n4 applied the write", || {
        kv_get(dir.path(), &[n4_addr], "config/mode", true) == Some(Some("blue".into()))
    });
    // And says so on its admin port.
    assert!(metric(n4.admin, "clustron_kv_revision").is_some_and(|r| r >= 1));
    assert!(metric(n4.admin, "clustron_kv_applied_index").is_some_and(|i| i >= 2));
    assert!(metric(n1.admin, "clustron_kv_wal_syncs_total").is_some_and(|n| n >= 1));
    // Three clients contend for one lock: the critical sections never
    // overlap, and the fencing tokens grow from holder to holder.
    let journal = dir.path().join("journal");
    let section = format!(
        "echo \"start $CLUSTRON_LOCK_TOKEN\" >> {0}; sleep 0.2; echo \"end $CLUSTRON_LOCK_TOKEN\" >> {0}",
        journal.display()
    );
    let lockers: Vec<Child> = [seed, n2_addr, n3_addr]
        .iter()
        .map(|addr| {
            clustron(dir.path(), &[*addr])
                .args(["kv", "lock", "deploy", "--", "sh", "-c", &section])
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut locker in lockers {
        assert!(locker.wait().unwrap().success(), "a locker failed");
    }
    let lines: Vec<String> = std::fs::read_to_string(&journal)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(lines.len(), 6, "{lines:?}");
    let mut last_token = 0;
    for pair in lines.chunks(2) {
        let token: u64 = pair[0].strip_prefix("start ").unwrap().parse().unwrap();
        assert_eq!(
            pair[1],
            format!("end {token}"),
            "overlapping holders: {lines:?}"
        );
        assert!(token > last_token, "fencing tokens did not grow: {lines:?}");
        last_token = token;
    }

    // Leader election among clients: the first candidate leads until it
    // resigns, while the second waits its turn.
    let leader_of_election = || -> Option<String> {
        let output = clustron(dir.path(), &endpoints)
            .args(["kv", "leader", "scheduler"])
            .output()
            .ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
    };
    let candidate = |addr: SocketAddr, value: &str, release: &Path| {
        let hold = format!("while [ ! -e {} ]; do sleep 0.05; done", release.display());
        clustron(dir.path(), &[addr])
            .args([
                "kv",
                "campaign",
                "scheduler",
                value,
                "--",
                "sh",
                "-c",
                &hold,
            ])
            .stdout(Stdio::null())
            .spawn()
            .unwrap()
    };
    let (release_a, release_b) = (dir.path().join("release-a"), dir.path().join("release-b"));
    let mut a = candidate(seed, "node-a", &release_a);
    eventually("node-a leads", || {
        leader_of_election().as_deref() == Some("node-a")
    });
    let mut b = candidate(n2_addr, "node-b", &release_b);
    eventually("node-b is queued", || {
        json({
            let mut c = clustron(dir.path(), &endpoints);
            c.args(["kv", "get", "_election/scheduler/", "--prefix", "--json"]);
            c
        })
        .is_some_and(|rows| rows.as_array().is_some_and(|r| r.len() == 2))
    });
    assert_eq!(leader_of_election().as_deref(), Some("node-a"));
    std::fs::write(&release_a, b"").unwrap();
    assert!(a.wait().unwrap().success());
    eventually("node-b leads after node-a resigned", || {
        leader_of_election().as_deref() == Some("node-b")
    });
    std::fs::write(&release_b, b"").unwrap();
    assert!(b.wait().unwrap().success());
    assert_eq!(leader_of_election().as_deref(), Some(""));

    // A key watcher through n3, which outlives the leader.
    let mut key_watcher = clustron(dir.path(), &[n3_addr, n2_addr])
        .args(["kv", "watch", "config/", "--prefix"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let key_lines = spawn_line_reader(key_watcher.stdout.take().unwrap());
    eventually("the key watcher sees a new write", || {
        assert!(kv_put(dir.path(), &endpoints, "config/tick", "1"));
        key_lines
            .recv_timeout(Duration::from_millis(500))
            .is_ok_and(|line| line.starts_with("PUT config/tick=1"))
    });

    // A client watching the topology through n1, which is about to die.
    let mut watcher = clustron(dir.path(), &endpoints)
        .args(["watch", "--json"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let watch_lines = spawn_line_reader(watcher.stdout.take().unwrap());
    assert!(watch_lines
        .recv_timeout(DEADLINE)
        .unwrap()
        .contains("snapshot"));

    // kill -9 of a non-leader.
    drop(n5);
    eventually("n1..n4 see n5 dead", || {
        [&n1, &n2, &n3, &n4]
            .iter()
            .all(|p| metric(p.admin, "clustron_members{state=\"dead\"}") == Some(1))
    });
    eventually("the watching client sees n5 dead", || {
        watch_lines
            .recv_timeout(Duration::from_millis(500))
            .is_ok_and(|line| line.contains("\"member\":\"n5\"") && line.contains("\"dead\""))
    });
    assert!(
        [&n1, &n2, &n3, &n4]
            .iter()
            .all(|p| leader_of(p.admin) == Some(("n1".into(), first_epoch))),
        "losing a learner changed the leader"
    );

    // kill -9 of the leader.
    drop(n1);
    eventually("n2..n4 follow n2 with a higher epoch", || {
        [&n2, &n3, &n4].iter().all(|p| {
            leader_of(p.admin).is_some_and(|(name, epoch)| name == "n2" && epoch > first_epoch)
        })
    });
    eventually("n2..n4 see n1 and n5 dead", || {
        [&n2, &n3, &n4]
            .iter()
            .all(|p| metric(p.admin, "clustron_members{state=\"dead\"}") == Some(2))
    });
    eventually("the watching client sees n1 dead", || {
        watch_lines
            .recv_timeout(Duration::from_millis(500))
            .is_ok_and(|line| {
                // A delta, or the fresh snapshot from the node it failed over to.
                (line.contains("\"member\":\"n1\"") && line.contains("\"dead\""))
                    || line.contains("{\"name\":\"n1\",\"state\":\"dead\"}")
            })
    });
    let _ = watcher.kill();
    let _ = watcher.wait();
    // The store survived its leader: the value is there, a write goes to n2,
    // and the key watcher saw it without a gap.
    assert_eq!(
        kv_get(dir.path(), &endpoints, "config/mode", false),
        Some(Some("blue".into()))
    );
    assert!(kv_put(dir.path(), &endpoints, "config/mode", "green"));
    eventually("the key watcher sees the write after the failover", || {
        key_lines
            .recv_timeout(Duration::from_millis(500))
            .is_ok_and(|line| line.starts_with("PUT config/mode=green"))
    });
    let _ = key_watcher.kill();
    let _ = key_watcher.wait();
    eventually("n3 forgets the watcher of the killed client", || {
        metric(n3.admin, "clustron_kv_watchers") == Some(0)
    });
    let status = json({
        let mut c = clustron(dir.path(), &endpoints);
        c.args(["status", "--json"]);
        c
    })
    .expect("clustron status --json");
    assert_eq!(status["leader"], "n2");
    assert_eq!(status["members"]["dead"], 2);

    // A node with a certificate from another CA cannot join, and says why.
    let foreign = tempfile::tempdir().unwrap();
    certs(foreign.path(), &["n4"]);
    let (mut intruder, _) = start(foreign.path(), "n4", 0, Some(n2_addr));
    let exited = intruder.child.wait().unwrap();
    assert!(
        !exited.success(),
        "a node with a foreign certificate joined"
    );
    let stderr = std::fs::read_to_string(foreign.path().join("n4.log")).unwrap();
    assert!(
        stderr.contains("not signed by this cluster's CA") || stderr.contains("refused"),
        "the intruder did not say why: {stderr}"
    );

    // SIGTERM of n3: a graceful leave, exit status 0.
    let status = Command::new("kill")
        .args(["-TERM", &n3.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exited = n3.child.wait().unwrap();
    assert!(exited.success(), "SIGTERM exit status: {exited}");
    eventually("n2 sees n3 left", || {
        metric(n2.admin, "clustron_members{state=\"left\"}") == Some(1)
    });
}

fn signal(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn incarnation(dir: &Path, endpoints: &[SocketAddr], name: &str) -> Option<(String, u64)> {
    let members = json({
        let mut c = clustron(dir, endpoints);
        c.args(["members", "--json"]);
        c
    })?;
    let m = members.as_array()?.iter().find(|m| m["name"] == name)?;
    Some((m["state"].as_str()?.to_owned(), m["incarnation"].as_u64()?))
}

#[test]
fn a_stopped_leader_is_replaced_and_comes_back_as_a_follower_and_restarts_lose_no_write() {
    let dir = tempfile::tempdir().unwrap();
    certs(dir.path(), &["n1", "n2", "n3"]);
    let (n1, seed) = start(dir.path(), "n1", 300, None);
    let (n2, n2_addr) = start(dir.path(), "n2", 200, Some(seed));
    let n3_listen = SocketAddr::from(([127, 0, 0, 1], free_port_udp()));
    let n3_admin = SocketAddr::from(([127, 0, 0, 1], free_port_tcp()));
    let (n3, _) = launch(None, dir.path(), "n3", 100, Some(seed), n3_listen, n3_admin);
    eventually("all three follow n1", || {
        [&n1, &n2, &n3]
            .iter()
            .all(|p| leader_of(p.admin).is_some_and(|(name, _)| name == "n1"))
    });
    let (_, first_epoch) = leader_of(n2.admin).unwrap();

    // SIGSTOP of the leader for longer than its lease.
    signal(&n1.child, "-STOP");
    eventually("n2 and n3 elect n2", || {
        [&n2, &n3].iter().all(|p| {
            leader_of(p.admin).is_some_and(|(name, epoch)| name == "n2" && epoch > first_epoch)
        })
    });
    signal(&n1.child, "-CONT");
    // Its first word after waking: not a leader (its lease ran out while
    // stopped), and it follows n2 until it takes over again by handover.
    eventually("n1 answers again", || get(n1.admin, "/healthz").is_some());
    assert_eq!(
        metric(n1.admin, "clustron_is_leader"),
        Some(0),
        "a woken leader still claimed its lease"
    );
    eventually("n1 follows a newer leader", || {
        leader_of(n1.admin).is_some_and(|(_, epoch)| epoch > first_epoch)
    });

    // kill -9 of n3, then a restart under its name, port and data.
    let endpoints = [seed, n2_addr];
    assert!(kv_put(dir.path(), &endpoints, "durable/before", "1"));
    let (_, before) = incarnation(dir.path(), &endpoints, "n3").unwrap();
    drop(n3);
    eventually("n2 sees n3 dead", || {
        incarnation(dir.path(), &endpoints, "n3").is_some_and(|(state, _)| state == "dead")
    });
    // Written while n3 is down: it must catch up.
    assert!(kv_put(dir.path(), &endpoints, "durable/while-down", "2"));
    let (n3, _) = launch(None, dir.path(), "n3", 100, Some(seed), n3_listen, n3_admin);
    eventually("n3 is alive again with a higher incarnation", || {
        incarnation(dir.path(), &endpoints, "n3")
            .is_some_and(|(state, inc)| state == "alive" && inc > before)
    });
    eventually(
        "the restarted n3 has what was written before and while it was down",
        || {
            kv_get(dir.path(), &[n3_listen], "durable/before", true) == Some(Some("1".into()))
                && kv_get(dir.path(), &[n3_listen], "durable/while-down", true)
                    == Some(Some("2".into()))
        },
    );

    // kill -9 of every node at once, then a restart of all: every
    // acknowledged write comes back from the write-ahead logs.
    assert!(kv_put(dir.path(), &endpoints, "durable/last", "3"));
    let (n1_admin, n2_admin) = (n1.admin, n2.admin);
    drop((n1, n2, n3));
    let (_n1, _) = launch(None, dir.path(), "n1", 300, None, seed, n1_admin);
    let (_n2, _) = launch(None, dir.path(), "n2", 200, Some(seed), n2_addr, n2_admin);
    let (_n3, _) = launch(None, dir.path(), "n3", 100, Some(seed), n3_listen, n3_admin);
    let all = [seed, n2_addr, n3_listen];
    eventually(
        "the restarted cluster serves every acknowledged write",
        || {
            ["before", "while-down", "last"]
                .iter()
                .zip(["1", "2", "3"])
                .all(|(key, value)| {
                    kv_get(dir.path(), &all, &format!("durable/{key}"), false)
                        == Some(Some(value.into()))
                })
        },
    );
}

#[test]
fn a_node_started_without_voters_says_what_is_missing_in_its_log_and_on_readyz() {
    let dir = tempfile::tempdir().unwrap();
    certs(dir.path(), &["n1"]);
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port_udp()));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port_tcp()));
    let log = dir.path().join("n1.log");
    let child = dkv()
        .args(["run", "--name", "n1", "--listen", &listen.to_string()])
        .args(["--admin-listen", &admin.to_string()])
        .arg("--data-dir")
        .arg(dir.path().join("n1"))
        .arg("--ca-file")
        .arg(dir.path().join("ca.pem"))
        .arg("--cert-file")
        .arg(dir.path().join("n1.pem"))
        .arg("--key-file")
        .arg(dir.path().join("n1.key"))
        .env_remove("CLUSTRON_VOTERS")
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _node = Proc { child, admin };
    eventually("/readyz names the missing voters", || {
        get(admin, "/readyz").is_some_and(|(status, body)| {
            status == 503 && body.contains("no voters configured") && body.contains("--voters")
        })
    });
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("no voters configured") && text.contains("--voters"),
        "the log does not say what is missing:\n{text}"
    );
    // Refusals a flood makes are counted where an operator looks.
    for counter in [
        "clustron_connections_refused_total",
        "clustron_connections_refused_unlogged_total",
        "clustron_handshakes_retried_total",
    ] {
        assert_eq!(metric(admin, counter), Some(0), "{counter}");
    }
}

/// Reads lines from a child's stdout on a thread; the receiver gets them.
fn spawn_line_reader(stdout: std::process::ChildStdout) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Hosts of our own: one network namespace per node, all cabled to a bridge
/// that lives in a namespace of its own (so the machine's firewall, Docker's
/// FORWARD policy among it, never sees their traffic), plus a veth from this
/// namespace to the bridge so the test reaches every node's admin and client
/// ports whatever the partition. A partition is a pair of blackhole routes:
/// packets between the two nodes are dropped at the sender, silently for the
/// node (quinn ignores the send error and the peer just goes quiet), while
/// both stay reachable from here. Everything is removed on drop, and stale
/// leftovers of a run that was killed are removed on the next.
struct Lab {
    prefix: String,
    subnet: [u8; 3],
    nodes: usize,
}

/// Runs `ip ARGS`, failing the test with its stderr.
fn ip_cmd(args: &[&str]) {
    let output = Command::new("ip").args(args).output().unwrap();
    assert!(
        output.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

impl Lab {
    /// `None` when this process may not create network namespaces (not root).
    fn create(nodes: usize) -> Option<Lab> {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let root = status
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .is_some_and(|l| l.split_whitespace().nth(2) == Some("0"));
        if !root {
            return None;
        }
        Self::remove_stale();
        let pid = std::process::id();
        let lab = Lab {
            prefix: format!("clt{pid}"),
            // 10.213.X.0/24, X from the pid so two runs do not meet.
            subnet: [10, 213, (pid % 250) as u8 + 1],
            nodes,
        };
        let sw = lab.switch();
        ip_cmd(&["netns", "add", &sw]);
        ip_cmd(&["-n", &sw, "link", "add", "br0", "type", "bridge"]);
        ip_cmd(&["-n", &sw, "link", "set", "br0", "up"]);
        // This namespace's port on the bridge: address .254.
        let host = format!("{}h", lab.prefix);
        ip_cmd(&["link", "add", &host, "type", "veth", "peer", "name", "p0"]);
        ip_cmd(&["link", "set", "p0", "netns", &sw]);
        ip_cmd(&["-n", &sw, "link", "set", "p0", "master", "br0", "up"]);
        ip_cmd(&[
            "addr",
            "add",
            &format!("{}/24", lab.addr(254)),
            "dev",
            &host,
        ]);
        ip_cmd(&["link", "set", &host, "up"]);
        for i in 1..=nodes {
            let ns = lab.ns(i);
            let port = format!("p{i}");
            ip_cmd(&["netns", "add", &ns]);
            ip_cmd(&[
                "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ]);
            ip_cmd(&["-n", &sw, "link", "set", &port, "master", "br0", "up"]);
            let cidr = format!("{}/24", lab.addr(i as u8));
            ip_cmd(&["-n", &ns, "addr", "add", &cidr, "dev", "eth0"]);
            ip_cmd(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip_cmd(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        Some(lab)
    }

    fn switch(&self) -> String {
        format!("{}-sw", self.prefix)
    }

    /// The namespace of node `i` (1-based).
    fn ns(&self, i: usize) -> String {
        format!("{}-n{i}", self.prefix)
    }

    fn addr(&self, host: u8) -> IpAddr {
        let [a, b, c] = self.subnet;
        IpAddr::from([a, b, c, host])
    }

    /// Drops all traffic between nodes `a` and `b`, both ways.
    fn cut(&self, a: usize, b: usize) {
        self.route("add", a, b);
        self.route("add", b, a);
    }

    /// Undoes `cut`.
    fn heal(&self, a: usize, b: usize) {
        self.route("del", a, b);
        self.route("del", b, a);
    }

    fn route(&self, verb: &str, from: usize, to: usize) {
        let target = format!("{}/32", self.addr(to as u8));
        ip_cmd(&["-n", &self.ns(from), "route", verb, "blackhole", &target]);
    }

    /// Removes namespaces left by runs whose process is gone.
    fn remove_stale() {
        let output = Command::new("ip").args(["netns", "list"]).output().unwrap();
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            let Some(rest) = name.strip_prefix("clt") else {
                continue;
            };
            let pid = rest.split('-').next().unwrap_or("");
            if !pid.is_empty() && !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = Command::new("ip").args(["netns", "del", name]).status();
                let _ = Command::new("ip")
                    .args(["link", "del", &format!("clt{pid}h")])
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veths in it, and their peers.
        for i in 1..=self.nodes {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(i)])
                .status();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.switch()])
            .status();
        let _ = Command::new("ip")
            .args(["link", "del", &format!("{}h", self.prefix)])
            .stderr(Stdio::null())
            .status();
    }
}

/// Whether the node at `admin` says it holds a valid lease.
fn holds_lease(admin: SocketAddr) -> bool {
    metric(admin, "clustron_is_leader") == Some(1)
}

#[test]
fn a_partitioned_leader_steps_down_the_majority_elects_and_the_cluster_heals() {
    let Some(lab) = Lab::create(3) else {
        eprintln!("skipped: network namespaces need root (CI runs as root)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let names = ["n1", "n2", "n3"];
    let ips: Vec<IpAddr> = (1..=3).map(|i| lab.addr(i)).collect();
    certs_for(dir.path(), &names, &ips);
    // Each node has its own address, so all use the same ports.
    let listen = |i: usize| SocketAddr::new(ips[i - 1], 7000);
    let admin = |i: usize| SocketAddr::new(ips[i - 1], 8000);
    let seed = listen(1);
    let nodes: Vec<Proc> = [300, 200, 100]
        .into_iter()
        .enumerate()
        .map(|(k, priority)| {
            let i = k + 1;
            let seed = (i != 1).then_some(seed);
            let ns = lab.ns(i);
            launch(
                Some(&ns),
                dir.path(),
                names[k],
                priority,
                seed,
                listen(i),
                admin(i),
            )
            .0
        })
        .collect();
    let [n1, n2, n3] = [&nodes[0], &nodes[1], &nodes[2]];
    eventually("all three follow n1", || {
        nodes
            .iter()
            .all(|p| leader_of(p.admin).is_some_and(|(name, _)| name == "n1"))
    });
    let (_, first_epoch) = leader_of(n2.admin).unwrap();

    // Never two lease holders at once: n1 holds it before and after a look
    // at n2 only if both held it at the same moment.
    let one_leader = || {
        let before = holds_lease(n1.admin);
        let other = holds_lease(n2.admin) || holds_lease(n3.admin);
        let after = holds_lease(n1.admin);
        assert!(!(before && other && after), "two nodes held the lease");
    };

    // Partition {n1} | {n2, n3}: the leader is the minority.
    lab.cut(1, 2);
    lab.cut(1, 3);
    eventually("n2 and n3 elect n2 with a higher epoch", || {
        one_leader();
        [n2, n3].iter().all(|p| {
            leader_of(p.admin).is_some_and(|(name, epoch)| name == "n2" && epoch > first_epoch)
        })
    });
    eventually("n1, alone, knows no leader and holds no lease", || {
        one_leader();
        get(n1.admin, "/readyz").is_some_and(|(status, _)| status == 503) && !holds_lease(n1.admin)
    });
    // A client on the minority side is told so.
    let status = json({
        let mut c = clustron(dir.path(), &[listen(1)]);
        c.args(["status", "--json"]);
        c
    })
    .expect("clustron status --json through n1");
    assert_eq!(status["leader"], serde_json::Value::Null, "{status}");
    eventually("both sides see the other dead", || {
        metric(n1.admin, "clustron_members{state=\"dead\"}") == Some(2)
            && [n2, n3]
                .iter()
                .all(|p| metric(p.admin, "clustron_members{state=\"dead\"}") == Some(1))
    });
    assert!(!holds_lease(n1.admin), "the minority side took a lease");
    // The majority side writes; the minority side cannot.
    assert!(kv_put(dir.path(), &[listen(2)], "partition", "majority"));
    let minority = clustron(dir.path(), &[listen(1)])
        .args(["--timeout", "2", "kv", "put", "partition", "minority"])
        .output()
        .unwrap();
    assert!(!minority.status.success(), "the minority side took a write");

    // Heal: one leader, known to all, and every member alive in every view.
    lab.heal(1, 2);
    lab.heal(1, 3);
    eventually("the cluster heals", || {
        one_leader();
        let views: Vec<_> = nodes.iter().map(|p| leader_of(p.admin)).collect();
        views[0].is_some()
            && views.iter().all(|v| *v == views[0])
            && nodes
                .iter()
                .all(|p| metric(p.admin, "clustron_members{state=\"alive\"}") == Some(3))
    });
    let (_, healed_epoch) = leader_of(n1.admin).unwrap();
    assert!(healed_epoch > first_epoch);
    // n1 caught up with the majority's write, and only that one.
    eventually("n1 applied the majority's write", || {
        kv_get(dir.path(), &[listen(1)], "partition", true) == Some(Some("majority".into()))
    });
}
