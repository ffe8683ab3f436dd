//! Real `clustron-dkv` processes on 127.0.0.1: three voters form a cluster
//! and elect the highest priority; `kill -9` of the leader gives a new leader
//! with a higher epoch and the dead node is seen `dead`; SIGTERM is seen as
//! `left`. Conditions are awaited with deadlines through the admin HTTP port.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_clustron-dkv");
const DEADLINE: Duration = Duration::from_secs(30);

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
    let status = Command::new(BIN)
        .args(["certs", "init", "--out"])
        .arg(dir)
        .status()
        .unwrap();
    assert!(status.success());
    for name in names {
        let status = Command::new(BIN)
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
    let mut command = Command::new(BIN);
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
        .stderr(Stdio::null());
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
    write!(stream, "GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").ok()?;
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

#[test]
fn three_processes_elect_n1_survive_kill_9_of_the_leader_and_see_sigterm_as_left() {
    let dir = tempfile::tempdir().unwrap();
    certs(dir.path(), &["n1", "n2", "n3"]);
    let (n1, seed) = start(dir.path(), "n1", 300, None);
    let (n2, _) = start(dir.path(), "n2", 200, Some(seed));
    let (mut n3, _) = start(dir.path(), "n3", 100, Some(seed));

    eventually("all three are ready with leader n1", || {
        [&n1, &n2, &n3]
            .iter()
            .all(|p| leader_of(p.admin).is_some_and(|(name, _)| name == "n1"))
    });
    let (_, first_epoch) = leader_of(n2.admin).unwrap();
    assert_eq!(metric(n1.admin, "clustron_is_leader"), Some(1));
    assert_eq!(get(n1.admin, "/healthz").map(|r| r.0), Some(200));

    // kill -9 of the leader.
    drop(n1);
    eventually("n2 and n3 follow n2 with a higher epoch", || {
        [&n2, &n3].iter().all(|p| {
            leader_of(p.admin).is_some_and(|(name, epoch)| name == "n2" && epoch > first_epoch)
        })
    });
    eventually("n2 and n3 see n1 dead", || {
        [&n2, &n3]
            .iter()
            .all(|p| metric(p.admin, "clustron_members{state=\"dead\"}") == Some(1))
    });

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
