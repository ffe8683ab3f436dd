//! Real `clustron-dkv` processes on 127.0.0.1, looked at through the admin
//! HTTP port and the `clustron` CLI: three voters form a cluster and elect
//! the highest priority; a user event published on one node reaches a
//! subscriber on another; `kill -9` of the leader gives a new leader with a
//! higher epoch and the dead node is seen `dead` by every node and by a
//! watching client; SIGTERM is seen as `left`; a node with a certificate from
//! another CA cannot join and says why. Conditions are awaited with deadlines.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(30);

/// The workspace's binaries, built by `cargo test --workspace`, or built
/// here when this test runs alone.
fn binary(name: &str) -> std::path::PathBuf {
    static BUILD: std::sync::Once = std::sync::Once::new();
    // Invariant: test executables live in target/<profile>/deps/.
    let dir = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_owned();
    BUILD.call_once(|| {
        if !dir.join("clustron-dkv").exists() || !dir.join("clustron").exists() {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(cargo)
                .args([
                    "build",
                    "-p",
                    "clustron-dkv",
                    "-p",
                    "clustron-client",
                    "--bins",
                ])
                .status()
                .unwrap();
            assert!(status.success());
        }
    });
    dir.join(name)
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
    let status = dkv()
        .args(["certs", "init", "--out"])
        .arg(dir)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let status = dkv()
        .args(["certs", "client", "admin", "--role", "admin", "--ca"])
        .arg(dir)
        .arg("--out")
        .arg(dir)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    for name in names {
        let status = dkv()
            .args(["certs", "node", name, "--ip", "127.0.0.1", "--ca"])
            .arg(dir)
            .arg("--out")
            .arg(dir)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
    }
}

fn start(dir: &Path, name: &str, priority: u32, seed: Option<SocketAddr>) -> (Proc, SocketAddr) {
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port_udp()));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port_tcp()));
    start_on(dir, name, priority, seed, listen, admin)
}

fn start_on(
    dir: &Path,
    name: &str,
    priority: u32,
    seed: Option<SocketAddr>,
    listen: SocketAddr,
    admin: SocketAddr,
) -> (Proc, SocketAddr) {
    let mut command = dkv();
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
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
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

#[test]
fn five_processes_elect_n1_survive_kill_9_of_the_leader_and_see_sigterm_as_left() {
    let dir = tempfile::tempdir().unwrap();
    certs(dir.path(), &["n1", "n2", "n3", "n4", "n5"]);
    let (n1, seed) = start(dir.path(), "n1", 300, None);
    let (n2, n2_addr) = start(dir.path(), "n2", 200, Some(seed));
    let (mut n3, n3_addr) = start(dir.path(), "n3", 100, Some(seed));
    // Two learners: members that follow but never vote.
    let (n4, _) = start(dir.path(), "n4", 0, Some(seed));
    let (n5, _) = start(dir.path(), "n5", 0, Some(seed));
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

    // A user event published through n2 reaches a subscriber on n3.
    let mut subscriber = clustron(dir.path(), &[n3_addr])
        .args(["events", "subscribe", "deploys"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = spawn_line_reader(subscriber.stdout.take().unwrap());
    eventually("the event reaches the subscriber", || {
        let published = clustron(dir.path(), &[n2_addr])
            .args(["events", "publish", "deploys", "v42"])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(published.success());
        lines
            .recv_timeout(Duration::from_millis(500))
            .is_ok_and(|line| line.contains("deploys") && line.contains("v42"))
    });
    let _ = subscriber.kill();
    let _ = subscriber.wait();

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

    // kill -9 of the leader.
    drop(n1);
    eventually("n2..n5 follow n2 with a higher epoch", || {
        [&n2, &n3, &n4, &n5].iter().all(|p| {
            leader_of(p.admin).is_some_and(|(name, epoch)| name == "n2" && epoch > first_epoch)
        })
    });
    eventually("n2..n5 see n1 dead", || {
        [&n2, &n3, &n4, &n5]
            .iter()
            .all(|p| metric(p.admin, "clustron_members{state=\"dead\"}") == Some(1))
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
    let status = json({
        let mut c = clustron(dir.path(), &endpoints);
        c.args(["status", "--json"]);
        c
    })
    .expect("clustron status --json");
    assert_eq!(status["leader"], "n2");
    assert_eq!(status["members"]["dead"], 1);

    // A node with a certificate from another CA cannot join, and says why.
    let foreign = tempfile::tempdir().unwrap();
    certs(foreign.path(), &["n4"]);
    let (mut intruder, _) = start(foreign.path(), "n4", 0, Some(n2_addr));
    let exited = intruder.child.wait().unwrap();
    assert!(
        !exited.success(),
        "a node with a foreign certificate joined"
    );
    let mut stderr = String::new();
    intruder
        .child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
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
fn a_stopped_leader_is_replaced_and_comes_back_as_a_follower_and_a_restarted_node_rejoins() {
    let dir = tempfile::tempdir().unwrap();
    certs(dir.path(), &["n1", "n2", "n3"]);
    let (n1, seed) = start(dir.path(), "n1", 300, None);
    let (n2, n2_addr) = start(dir.path(), "n2", 200, Some(seed));
    let n3_listen = SocketAddr::from(([127, 0, 0, 1], free_port_udp()));
    let n3_admin = SocketAddr::from(([127, 0, 0, 1], free_port_tcp()));
    let (n3, _) = start_on(dir.path(), "n3", 100, Some(seed), n3_listen, n3_admin);
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
    let (_, before) = incarnation(dir.path(), &endpoints, "n3").unwrap();
    drop(n3);
    eventually("n2 sees n3 dead", || {
        incarnation(dir.path(), &endpoints, "n3").is_some_and(|(state, _)| state == "dead")
    });
    let (_n3, _) = start_on(dir.path(), "n3", 100, Some(seed), n3_listen, n3_admin);
    eventually("n3 is alive again with a higher incarnation", || {
        incarnation(dir.path(), &endpoints, "n3")
            .is_some_and(|(state, inc)| state == "alive" && inc > before)
    });
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
