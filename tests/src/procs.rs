//! Real `clustron-dkv` processes, shared by `tests/tests/processes.rs` and
//! `tests/tests/nemesis.rs`: finding the binaries, certificates, launching a
//! node (on 127.0.0.1 or inside a network namespace), the admin HTTP port,
//! the `clustron` CLI, signals, waiting with a deadline, the network
//! namespace [`Lab`] for partitions, and [`ProcCluster`], a cluster whose
//! nodes a test can kill, restart, stop, resume and cut off.
//!
//! Every helper here is for tests: a failure panics, which fails the test.
//! Every child process is killed when its [`Proc`] is dropped.

use std::cell::RefCell;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long [`eventually`] waits for a condition.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// How many of each node log's last lines a timed-out [`eventually`] prints.
const LOG_TAIL_LINES: usize = 60;

thread_local! {
    /// The log files of the nodes this test thread started, printed when a
    /// condition times out: the temporary folder holding them is gone by
    /// the time anyone could read it, and a CI failure must explain itself.
    static NODE_LOGS: RefCell<Vec<PathBuf>> = const { RefCell::new(Vec::new()) };
}

/// Prints the last [`LOG_TAIL_LINES`] of every node log this thread started.
fn print_node_logs() {
    NODE_LOGS.with(|logs| {
        for path in logs.borrow().iter() {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
            eprintln!("---- last {} lines of {} ----", tail.len(), path.display());
            for line in tail {
                eprintln!("{line}");
            }
        }
    });
}

pub use crate::binary;

/// `clustron-dkv`, ready for arguments.
pub fn dkv() -> Command {
    Command::new(binary("clustron-dkv"))
}

/// A running node process, killed (`kill -9`) and reaped on drop.
pub struct Proc {
    /// The process.
    pub child: Child,
    /// Its admin HTTP address.
    pub admin: SocketAddr,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A UDP port free on 127.0.0.1 a moment ago.
pub fn free_port_udp() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free UDP port")
        .port()
}

/// A TCP port free on 127.0.0.1 a moment ago.
pub fn free_port_tcp() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free TCP port")
        .port()
}

/// [`certs_for`] with every node on 127.0.0.1.
pub fn certs(dir: &Path, names: &[&str]) {
    let loopback = vec![IpAddr::from([127, 0, 0, 1]); names.len()];
    certs_for(dir, names, &loopback);
}

/// A CA, the admin client certificate, and one node certificate per name
/// with the matching address in its IP SANs, all in `dir`.
pub fn certs_for(dir: &Path, names: &[&str], ips: &[IpAddr]) {
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
            .expect("clustron-dkv runs");
        assert!(status.success(), "clustron-dkv certs {args:?}");
    }
    certs(dir, &["init"]);
    certs(dir, &["client", "admin", "--role", "admin"]);
    for (name, ip) in names.iter().zip(ips) {
        certs(dir, &["node", name, "--ip", &ip.to_string()]);
    }
}

/// How to run one node: everything `clustron-dkv run` is given.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// Its name, which is also the name of its certificate, key, data
    /// directory and log file in the test's directory.
    pub name: String,
    /// Its election priority (0: never leads).
    pub priority: u32,
    /// The voters, comma-separated.
    pub voters: String,
    /// Its cluster (QUIC) address.
    pub listen: SocketAddr,
    /// Its admin HTTP address.
    pub admin: SocketAddr,
    /// The nodes to join through (none: it forms a cluster of its own).
    pub seeds: Vec<SocketAddr>,
    /// The network namespace to run it in, if any.
    pub netns: Option<String>,
    /// More `clustron-dkv run` arguments.
    pub args: Vec<String>,
}

impl NodeSpec {
    /// Starts `clustron-dkv run` as specified, its data in `DIR/NAME` and
    /// its log (stdout and stderr) appended to `DIR/NAME.log` (a pipe
    /// nobody reads would fill and stall the node).
    pub fn spawn(&self, dir: &Path) -> Proc {
        let mut command = match &self.netns {
            // `ip netns exec` execs the binary: the child's pid is the node's.
            Some(netns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", netns]).arg(binary("clustron-dkv"));
                c
            }
            None => dkv(),
        };
        let log_path = dir.join(format!("{}.log", self.name));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("the node's log file opens");
        NODE_LOGS.with(|logs| {
            let mut logs = logs.borrow_mut();
            if !logs.contains(&log_path) {
                logs.push(log_path);
            }
        });
        let name = &self.name;
        command
            .arg("run")
            .args(["--name", name, "--voters", &self.voters])
            .args([
                "--listen",
                &self.listen.to_string(),
                "--admin-listen",
                &self.admin.to_string(),
            ])
            .args(["--priority", &self.priority.to_string()])
            .arg("--data-dir")
            .arg(dir.join(name))
            .arg("--ca-file")
            .arg(dir.join("ca.pem"))
            .arg("--cert-file")
            .arg(dir.join(format!("{name}.pem")))
            .arg("--key-file")
            .arg(dir.join(format!("{name}.key")))
            .stdout(log.try_clone().expect("the log file's handle clones"))
            .stderr(log);
        if !self.seeds.is_empty() {
            let seeds: Vec<String> = self.seeds.iter().map(SocketAddr::to_string).collect();
            command.args(["--seeds", &seeds.join(",")]);
        }
        command.args(&self.args);
        Proc {
            child: command.spawn().expect("clustron-dkv run starts"),
            admin: self.admin,
        }
    }
}

/// Starts node `name` (voters n1, n2, n3) on 127.0.0.1 with free ports;
/// returns it and its cluster address.
pub fn start(
    dir: &Path,
    name: &str,
    priority: u32,
    seed: Option<SocketAddr>,
) -> (Proc, SocketAddr) {
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port_udp()));
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port_tcp()));
    launch(None, dir, name, priority, seed, listen, admin)
}

/// Starts node `name` (voters n1, n2, n3) with the given addresses, inside
/// network namespace `netns` if given; returns it and its cluster address.
pub fn launch(
    netns: Option<&str>,
    dir: &Path,
    name: &str,
    priority: u32,
    seed: Option<SocketAddr>,
    listen: SocketAddr,
    admin: SocketAddr,
) -> (Proc, SocketAddr) {
    let spec = NodeSpec {
        name: name.to_owned(),
        priority,
        voters: "n1,n2,n3".to_owned(),
        listen,
        admin,
        seeds: seed.into_iter().collect(),
        netns: netns.map(str::to_owned),
        args: Vec::new(),
    };
    (spec.spawn(dir), listen)
}

/// GET `path` from an admin port; `None` if it does not answer.
pub fn get(admin: SocketAddr, path: &str) -> Option<(u16, String)> {
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

/// The value of the first metric line starting with `line_start`.
pub fn metric(admin: SocketAddr, line_start: &str) -> Option<u64> {
    let (_, body) = get(admin, "/metrics")?;
    body.lines()
        .find(|l| l.starts_with(line_start))?
        .rsplit(' ')
        .next()?
        .parse()
        .ok()
}

/// Waits until `check` holds, for at most [`DEADLINE`]; fails the test
/// naming `what` if it never does, after printing the tail of the logs of
/// the nodes this thread started.
pub fn eventually(what: &str, check: impl FnMut() -> bool) {
    eventually_within(what, DEADLINE, check);
}

/// [`eventually`] with a deadline of its own.
pub fn eventually_within(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        if Instant::now() >= deadline {
            print_node_logs();
            panic!("timed out waiting until {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The leader (name, epoch) the node at `admin` knows, from `/readyz`.
pub fn leader_of(admin: SocketAddr) -> Option<(String, u64)> {
    let (status, body) = get(admin, "/readyz")?;
    if status != 200 {
        return None;
    }
    // "ready: leader NAME epoch N"
    let words: Vec<&str> = body.split_whitespace().collect();
    Some((words.get(2)?.to_string(), words.get(4)?.parse().ok()?))
}

/// Whether the node at `admin` says it holds a valid lease.
pub fn holds_lease(admin: SocketAddr) -> bool {
    metric(admin, "clustron_is_leader") == Some(1)
}

/// The `clustron` CLI against `endpoints`, with the admin client certificate.
pub fn clustron(dir: &Path, endpoints: &[SocketAddr]) -> Command {
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

/// Runs `command` and parses its stdout as JSON; `None` if it failed.
pub fn json(mut command: Command) -> Option<serde_json::Value> {
    let output = command.output().ok()?;
    if !output.status.success() {
        return None;
    }
    serde_json::from_slice(&output.stdout).ok()
}

/// `clustron kv put KEY VALUE` through `endpoints`; whether it succeeded.
pub fn kv_put(dir: &Path, endpoints: &[SocketAddr], key: &str, value: &str) -> bool {
    clustron(dir, endpoints)
        .args(["kv", "put", key, value])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("clustron runs")
        .success()
}

/// `clustron kv get KEY --json` through `endpoints` (linearizable unless
/// `serializable`): the value, `Some(None)` if absent, `None` on failure.
pub fn kv_get(
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

/// Sends `signal` (`-STOP`, `-CONT`, `-TERM`, ...) to `child`; it must be
/// delivered.
pub fn signal(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill {signal} {}", child.id());
}

/// `name`'s (state, incarnation) as `clustron members` through `endpoints`
/// reports it.
pub fn incarnation(dir: &Path, endpoints: &[SocketAddr], name: &str) -> Option<(String, u64)> {
    let members = json({
        let mut c = clustron(dir, endpoints);
        c.args(["members", "--json"]);
        c
    })?;
    let m = members.as_array()?.iter().find(|m| m["name"] == name)?;
    Some((m["state"].as_str()?.to_owned(), m["incarnation"].as_u64()?))
}

/// Reads lines from a child's stdout on a thread; the receiver gets them.
pub fn spawn_line_reader(stdout: std::process::ChildStdout) -> std::sync::mpsc::Receiver<String> {
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
pub struct Lab {
    prefix: String,
    subnet: [u8; 3],
    nodes: usize,
}

/// Runs `ip ARGS`, failing the test with its stderr.
pub fn ip_cmd(args: &[&str]) {
    let output = Command::new("ip").args(args).output().expect("ip runs");
    assert!(
        output.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Whether this process runs as root (may create network namespaces).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .is_some_and(|l| l.split_whitespace().nth(2) == Some("0"))
    })
}

impl Lab {
    /// A lab of `nodes` hosts; `None` when this process may not create
    /// network namespaces (not root). One lab per test process at a time:
    /// the names and the subnet come from the pid.
    pub fn create(nodes: usize) -> Option<Lab> {
        if !is_root() {
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
    pub fn ns(&self, i: usize) -> String {
        format!("{}-n{i}", self.prefix)
    }

    /// Address `host` of the lab's subnet: node `i` is `addr(i)`.
    pub fn addr(&self, host: u8) -> IpAddr {
        let [a, b, c] = self.subnet;
        IpAddr::from([a, b, c, host])
    }

    /// Drops all traffic between nodes `a` and `b`, both ways.
    pub fn cut(&self, a: usize, b: usize) {
        self.route("add", a, b);
        self.route("add", b, a);
    }

    /// Undoes `cut`.
    pub fn heal(&self, a: usize, b: usize) {
        self.route("del", a, b);
        self.route("del", b, a);
    }

    fn route(&self, verb: &str, from: usize, to: usize) {
        let target = format!("{}/32", self.addr(to as u8));
        ip_cmd(&["-n", &self.ns(from), "route", verb, "blackhole", &target]);
    }

    /// Removes namespaces left by runs whose process is gone.
    fn remove_stale() {
        let Ok(output) = Command::new("ip").args(["netns", "list"]).output() else {
            return;
        };
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

/// One node of a [`ProcCluster`]: how to start it and, while it runs, its
/// process.
struct Slot {
    spec: NodeSpec,
    proc: Option<Proc>,
    stopped: bool,
}

/// `n` real nodes, all voters, `n1` with the highest priority, in a
/// temporary directory (kept unless [`ProcCluster::clean_up_on_drop`] is
/// called, so that a failed test leaves the nodes' logs behind), on
/// 127.0.0.1 or each in a network namespace of a [`Lab`]. A node can be
/// killed (`kill -9`), restarted under the same name, addresses and data,
/// stopped (SIGSTOP), resumed (SIGCONT) and, in a lab, cut off from others.
/// Dropping it kills every node, then removes the lab.
pub struct ProcCluster {
    // Dropped in this order: the nodes, then their namespaces, then the
    // directory they wrote in.
    slots: Vec<Slot>,
    lab: Option<Lab>,
    cuts: Vec<(usize, usize)>,
    dir: tempfile::TempDir,
}

impl ProcCluster {
    /// Starts `n` nodes (names `n1..`, priorities `100·(n+1−i)`, each with
    /// every other node as a seed, as a deployment would list them, so that
    /// a restarted node rejoins at once whichever nodes are up),
    /// inside a fresh [`Lab`] if `lab`, without waiting for them.
    /// `None` if `lab` was asked and this process may not create one.
    pub fn start(n: usize, lab: bool) -> Option<ProcCluster> {
        Self::start_with(n, lab, &[])
    }

    /// As [`ProcCluster::start`], each node also given `args`.
    pub fn start_with(n: usize, lab: bool, args: &[&str]) -> Option<ProcCluster> {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        Self::start_with_each(n, lab, |_| args.clone())
    }

    /// As [`ProcCluster::start`], node `i` (0-based) also given `args(i)`
    /// (its own ports for a second listener, say).
    pub fn start_with_each(
        n: usize,
        lab: bool,
        args: impl Fn(usize) -> Vec<String>,
    ) -> Option<ProcCluster> {
        let lab = if lab { Some(Lab::create(n)?) } else { None };
        let mut dir = tempfile::Builder::new()
            .prefix("clustron-procs-")
            .tempdir()
            .expect("a temporary directory");
        dir.disable_cleanup(true);
        let names: Vec<String> = (1..=n).map(|i| format!("n{i}")).collect();
        let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let voters = names.join(",");
        let addresses: Vec<(SocketAddr, SocketAddr)> = (1..=n)
            .map(|i| match &lab {
                // Each node has its own address, so all use the same ports.
                Some(lab) => (
                    SocketAddr::new(lab.addr(i as u8), 7000),
                    SocketAddr::new(lab.addr(i as u8), 8000),
                ),
                None => (
                    SocketAddr::from(([127, 0, 0, 1], free_port_udp())),
                    SocketAddr::from(([127, 0, 0, 1], free_port_tcp())),
                ),
            })
            .collect();
        let ips: Vec<IpAddr> = addresses.iter().map(|(l, _)| l.ip()).collect();
        certs_for(dir.path(), &name_refs, &ips);
        let slots = (1..=n)
            .map(|i| {
                let spec = NodeSpec {
                    name: names[i - 1].clone(),
                    priority: 100 * (n + 1 - i) as u32,
                    voters: voters.clone(),
                    listen: addresses[i - 1].0,
                    admin: addresses[i - 1].1,
                    seeds: addresses
                        .iter()
                        .enumerate()
                        .filter(|&(k, _)| k != i - 1)
                        .map(|(_, (listen, _))| *listen)
                        .collect(),
                    netns: lab.as_ref().map(|lab| lab.ns(i)),
                    args: args(i - 1),
                };
                let proc = Some(spec.spawn(dir.path()));
                Slot {
                    spec,
                    proc,
                    stopped: false,
                }
            })
            .collect();
        Some(ProcCluster {
            slots,
            lab,
            cuts: Vec::new(),
            dir,
        })
    }

    /// The directory with the certificates, the nodes' data and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Removes the directory on drop (a test calls this once it passed).
    pub fn clean_up_on_drop(&mut self) {
        self.dir.disable_cleanup(false);
    }

    /// How many nodes.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether it has no node.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Whether the nodes run in network namespaces (so can be cut off).
    pub fn in_lab(&self) -> bool {
        self.lab.is_some()
    }

    /// The cluster (client) addresses of every node, `n1` first.
    pub fn endpoints(&self) -> Vec<SocketAddr> {
        self.slots.iter().map(|s| s.spec.listen).collect()
    }

    /// Node `i`'s (0-based) name.
    pub fn name(&self, i: usize) -> &str {
        &self.slots[i].spec.name
    }

    /// Node `i`'s admin address.
    pub fn admin(&self, i: usize) -> SocketAddr {
        self.slots[i].spec.admin
    }

    /// The index of the node called `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.slots.iter().position(|s| s.spec.name == name)
    }

    /// Whether node `i` runs and is not stopped.
    pub fn is_up(&self, i: usize) -> bool {
        self.slots[i].proc.is_some() && !self.slots[i].stopped
    }

    /// Whether node `i` runs (stopped or not).
    pub fn is_running(&self, i: usize) -> bool {
        self.slots[i].proc.is_some()
    }

    /// Whether node `i` is stopped.
    pub fn is_stopped(&self, i: usize) -> bool {
        self.slots[i].stopped
    }

    /// `kill -9` of node `i` (a stopped node dies as well).
    pub fn kill(&mut self, i: usize) {
        // Dropping a Proc kills and reaps it.
        self.slots[i].proc = None;
        self.slots[i].stopped = false;
    }

    /// Starts node `i` again under its name, addresses and data.
    pub fn restart(&mut self, i: usize) {
        assert!(self.slots[i].proc.is_none(), "n{} still runs", i + 1);
        let proc = self.slots[i].spec.spawn(self.dir.path());
        self.slots[i].proc = Some(proc);
    }

    /// SIGTERM to node `i` (a graceful stop), then waits at most `within`
    /// for it to exit: its exit status, or `None` if it did not exit in time
    /// (it is then killed).
    pub fn terminate(&mut self, i: usize, within: Duration) -> Option<std::process::ExitStatus> {
        let mut proc = self.slots[i].proc.take()?;
        self.slots[i].stopped = false;
        signal(&proc.child, "-TERM");
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = proc.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGSTOP of node `i`.
    pub fn stop(&mut self, i: usize) {
        if let Some(proc) = &self.slots[i].proc {
            signal(&proc.child, "-STOP");
            self.slots[i].stopped = true;
        }
    }

    /// SIGCONT of node `i`.
    pub fn resume(&mut self, i: usize) {
        if let Some(proc) = &self.slots[i].proc {
            signal(&proc.child, "-CONT");
            self.slots[i].stopped = false;
        }
    }

    /// Drops all traffic between nodes `a` and `b` (0-based). Needs a lab.
    pub fn cut(&mut self, a: usize, b: usize) {
        let lab = self.lab.as_ref().expect("a partition needs a lab");
        let pair = (a.min(b), a.max(b));
        if !self.cuts.contains(&pair) {
            lab.cut(a + 1, b + 1);
            self.cuts.push(pair);
        }
    }

    /// Splits the nodes into `side` and the rest: every link across is cut.
    pub fn partition(&mut self, side: &[usize]) {
        for &a in side {
            for b in (0..self.len()).filter(|b| !side.contains(b)) {
                self.cut(a, b);
            }
        }
    }

    /// Whether some link is cut.
    pub fn is_partitioned(&self) -> bool {
        !self.cuts.is_empty()
    }

    /// Heals every cut link.
    pub fn heal_all(&mut self) {
        if let Some(lab) = &self.lab {
            for (a, b) in self.cuts.drain(..) {
                lab.heal(a + 1, b + 1);
            }
        }
    }

    /// Heals every link, resumes every stopped node and starts every killed
    /// one.
    pub fn repair(&mut self) {
        self.heal_all();
        for i in 0..self.len() {
            if self.slots[i].stopped {
                self.resume(i);
            }
            if self.slots[i].proc.is_none() {
                self.restart(i);
            }
        }
    }

    /// The running, unstopped node that says it holds the lease (the one
    /// with the newest epoch if, for a moment, an old leader still says so
    /// too), with its epoch; `None` if none does. Other nodes' views of the
    /// leader may lag (a node restarted a moment ago), so they are not used.
    pub fn leader(&self) -> Option<(usize, u64)> {
        (0..self.len())
            .filter(|&i| self.is_up(i) && holds_lease(self.admin(i)))
            .filter_map(|i| {
                let (name, epoch) = leader_of(self.admin(i))?;
                (name == self.name(i)).then_some((i, epoch))
            })
            .max_by_key(|&(_, epoch)| epoch)
    }

    /// The leader every running node agrees on, once they all do; `None`
    /// until then (or when no node runs).
    pub fn agreed_leader(&self) -> Option<(usize, u64)> {
        let views: Vec<Option<(String, u64)>> = (0..self.len())
            .filter(|&i| self.is_up(i))
            .map(|i| leader_of(self.admin(i)))
            .collect();
        let first = views.first()?.clone()?;
        if views.iter().all(|v| v.as_ref() == Some(&first)) {
            Some((self.index_of(&first.0)?, first.1))
        } else {
            None
        }
    }

    /// Waits (at most `within`) until every running node follows the same
    /// leader and that leader says it holds its lease; returns it.
    pub fn await_leader(&self, within: Duration) -> (usize, u64) {
        let mut found = None;
        eventually_within("every running node follows one leader", within, || {
            found = self
                .agreed_leader()
                .filter(|&(i, _)| holds_lease(self.admin(i)));
            found.is_some()
        });
        found.expect("found by the wait above")
    }
}
