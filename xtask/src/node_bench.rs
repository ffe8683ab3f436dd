//! `cargo xtask bench node`: the real `clustron-dkv` binary, as a user runs
//! it. Each round starts `clustron-dkv dev` in a fresh directory and times
//! how long until every node's `/readyz` answers 200 (certificates generated
//! included), reads every node's RSS once the cluster has been idle for a few
//! seconds, then `kill -9`s the leader and times how long until every
//! survivor counts it dead and until they all know a new leader. Rounds:
//! `CLUSTRON_BENCH_ROUNDS` (default 5). Linux only (reads `/proc`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

const NODES: usize = 3;
const DEADLINE: Duration = Duration::from_secs(30);
/// How long the cluster sits idle before its RSS is read.
const IDLE: Duration = Duration::from_secs(3);

/// One figure of a round, for the table.
type Metric = fn(&Round) -> f64;

struct Round {
    ready: Duration,
    dead_everywhere: Duration,
    new_leader: Duration,
    rss_kib: Vec<u64>,
}

/// Runs the rounds against `binary` and prints the table.
pub fn run(binary: &Path) -> Result<()> {
    let rounds: usize = match std::env::var("CLUSTRON_BENCH_ROUNDS") {
        Ok(v) => v
            .parse()
            .with_context(|| format!("CLUSTRON_BENCH_ROUNDS={v:?} is not a count"))?,
        Err(_) => 5,
    };
    let mut results = Vec::new();
    for i in 0..rounds {
        let dir =
            std::env::temp_dir().join(format!("clustron-node-bench-{}-{i}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let round = one_round(binary, &dir);
        let _ = std::fs::remove_dir_all(&dir);
        results.push(round.with_context(|| format!("round {}", i + 1))?);
    }
    let column = |f: Metric| -> (f64, f64) {
        let mut v: Vec<f64> = results.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[v.len() - 1])
    };
    println!(
        "node bench: `clustron-dkv dev` ({NODES} nodes, 127.0.0.1, release build), {rounds} rounds"
    );
    println!("{:<44} {:>9} {:>9}", "", "p50", "max");
    let rows: [(&str, Metric); 4] = [
        ("dev started -> every node ready (s)", |r| {
            r.ready.as_secs_f64()
        }),
        ("kill -9 leader -> dead in every view (s)", |r| {
            r.dead_everywhere.as_secs_f64()
        }),
        ("kill -9 leader -> new leader everywhere (s)", |r| {
            r.new_leader.as_secs_f64()
        }),
        ("idle node RSS (MiB, largest of the nodes)", |r| {
            r.rss_kib.iter().copied().max().unwrap_or(0) as f64 / 1024.0
        }),
    ];
    for (name, f) in rows {
        let (p50, max) = column(f);
        println!("{name:<44} {p50:>9.3} {max:>9.3}");
    }
    Ok(())
}

/// A `dev` process, interrupted (a clean stop of its nodes) when dropped.
pub struct Dev(Child);

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + DEADLINE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A started `clustron-dkv dev`: its process, and each node's client
/// address and admin address, in node order.
pub struct DevCluster {
    /// The `dev` process; dropping it stops the cluster.
    pub dev: Dev,
    /// Each node's address for peers and clients.
    pub listen: Vec<SocketAddr>,
    /// Each node's admin HTTP address.
    pub admins: Vec<SocketAddr>,
}

/// The listen and admin addresses in one of `clustron-dkv dev`'s node
/// lines: "nI: LISTEN (admin http://ADMIN/metrics, ...)".
fn dev_line(line: &str) -> Option<(&str, &str)> {
    let (head, rest) = line.split_once(" (admin http://")?;
    let listen = head.split_whitespace().nth(1)?;
    let admin = rest.split_once("/metrics")?.0;
    Some((listen, admin))
}

/// Starts `clustron-dkv dev` with `nodes` nodes in `dir` and returns once
/// every node's `/readyz` answers 200.
/// The file `CLUSTRON_BENCH_NODE_LOG` names, opened for appending: where
/// the nodes log (their stdout and stderr; `RUST_LOG` picks what), if set.
fn node_log() -> Result<Option<std::fs::File>> {
    let Some(path) = std::env::var_os("CLUSTRON_BENCH_NODE_LOG") else {
        return Ok(None);
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("cannot open CLUSTRON_BENCH_NODE_LOG {path:?}"))?;
    Ok(Some(file))
}

pub fn start_dev(binary: &Path, dir: &Path, nodes: usize) -> Result<DevCluster> {
    let log = node_log()?;
    let mut child = Command::new(binary)
        .args(["dev", "--nodes", &nodes.to_string(), "--dir"])
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(match &log {
            Some(file) => file.try_clone().context("CLUSTRON_BENCH_NODE_LOG")?.into(),
            None => Stdio::null(),
        })
        .spawn()
        .with_context(|| format!("cannot run {}", binary.display()))?;
    let stdout = child.stdout.take().context("dev stdout")?;
    let dev = Dev(child);
    let (mut listen, mut admins) = (Vec::new(), Vec::new());
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    while admins.len() < nodes {
        let line = lines.next().context("dev exited early")??;
        if let Some((addr, admin)) = dev_line(&line) {
            listen.push(
                addr.parse()
                    .with_context(|| format!("listen address in {line:?}"))?,
            );
            admins.push(
                admin
                    .parse()
                    .with_context(|| format!("admin address in {line:?}"))?,
            );
        }
    }
    // Keep draining dev's stdout (where the nodes log) so it never blocks
    // on a full pipe; into the node log, if there is one.
    let mut log = log.map(std::io::BufWriter::new);
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if let Some(log) = log.as_mut() {
                let _ = writeln!(log, "{line}");
            }
        }
    });
    wait_until("every node ready", || {
        admins
            .iter()
            .all(|a| get(*a, "/readyz").is_some_and(|(s, _)| s == 200))
    })?;
    Ok(DevCluster {
        dev,
        listen,
        admins,
    })
}

fn one_round(binary: &Path, dir: &Path) -> Result<Round> {
    let start = Instant::now();
    let DevCluster { dev, admins, .. } = start_dev(binary, dir, NODES)?;
    let ready = start.elapsed();

    let leader = leader(admins[0]).context("no leader after ready")?;
    std::thread::sleep(IDLE);
    let pids: Vec<u32> = (1..=NODES)
        .map(|i| node_pid(dir, &format!("n{i}")))
        .collect::<Result<_>>()?;
    let rss_kib = pids.iter().map(|p| rss_kib(*p)).collect::<Result<_>>()?;

    let index: usize = leader
        .strip_prefix('n')
        .and_then(|i| i.parse().ok())
        .context("leader name")?;
    let survivors: Vec<SocketAddr> = admins
        .iter()
        .enumerate()
        .filter(|(i, _)| i + 1 != index)
        .map(|(_, a)| *a)
        .collect();
    let killed = Instant::now();
    let status = Command::new("kill")
        .args(["-KILL", &pids[index - 1].to_string()])
        .status()?;
    if !status.success() {
        bail!("kill -9 of {leader} failed");
    }
    let (mut dead_everywhere, mut new_leader) = (None, None);
    let deadline = killed + DEADLINE;
    while dead_everywhere.is_none() || new_leader.is_none() {
        if Instant::now() > deadline {
            bail!("after kill -9 of {leader}: dead {dead_everywhere:?}, new leader {new_leader:?}");
        }
        if dead_everywhere.is_none() && survivors.iter().all(|a| dead_count(*a) == Some(1)) {
            dead_everywhere = Some(killed.elapsed());
        }
        if new_leader.is_none()
            && survivors
                .iter()
                .all(|a| self::leader(*a).is_some_and(|l| l != leader))
        {
            new_leader = Some(killed.elapsed());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(dev);
    Ok(Round {
        ready,
        dead_everywhere: dead_everywhere.unwrap_or_default(),
        new_leader: new_leader.unwrap_or_default(),
        rss_kib,
    })
}

fn wait_until(what: &str, mut check: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + DEADLINE;
    while !check() {
        if Instant::now() > deadline {
            bail!("timed out waiting until {what}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// GET `path` from an admin port: status and body.
pub(crate) fn get(admin: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&admin, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, response.split_once("\r\n\r\n")?.1.to_owned()))
}

/// The leader's name from `/readyz` ("ready: leader NAME epoch N").
pub(crate) fn leader(admin: SocketAddr) -> Option<String> {
    let (status, body) = get(admin, "/readyz")?;
    (status == 200).then(|| body.split_whitespace().nth(2).map(str::to_owned))?
}

fn dead_count(admin: SocketAddr) -> Option<u64> {
    let (_, body) = get(admin, "/metrics")?;
    body.lines()
        .find(|l| l.starts_with("clustron_members{state=\"dead\"}"))?
        .rsplit(' ')
        .next()?
        .parse()
        .ok()
}

/// The pid of `clustron-dkv run --name NAME` whose data lives under `dir`.
pub(crate) fn node_pid(dir: &Path, name: &str) -> Result<u32> {
    let data = dir.join("data").join(name);
    let data = data.to_string_lossy();
    for entry in std::fs::read_dir("/proc")? {
        let entry = entry?;
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if args.iter().any(|a| *a == data.as_bytes()) && args.iter().any(|a| *a == b"run") {
            return Ok(pid);
        }
    }
    bail!("no process for {name} under {}", dir.display())
}

pub(crate) fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS")
}

#[cfg(test)]
mod tests {
    use super::dev_line;

    /// `cargo xtask bench` broke when `dev` began to print the Redis
    /// protocol address after the admin one.
    #[test]
    fn dev_lines_are_read_with_or_without_what_follows_the_admin_address() {
        assert_eq!(
            dev_line("n1: 127.0.0.1:33870 (admin http://127.0.0.1:42843/metrics, Redis protocol 127.0.0.1:35745)"),
            Some(("127.0.0.1:33870", "127.0.0.1:42843"))
        );
        assert_eq!(
            dev_line("n2: 127.0.0.1:1 (admin http://127.0.0.1:2/metrics)"),
            Some(("127.0.0.1:1", "127.0.0.1:2"))
        );
        assert_eq!(dev_line("redis-cli --tls ..."), None);
    }
}
