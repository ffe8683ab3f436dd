//! `clustron-bench`: release-mode benchmarks behind `cargo xtask bench`.
//!
//! `clustron-bench transport` starts a server process (this binary again,
//! `transport-server`) for each of two stacks, bare quinn with the same TLS
//! configuration and our `Endpoint`, and measures them from this process in
//! the same run: 256-byte requests and responses with 1 and 64 in flight,
//! and datagram round trips. Both processes use a `current_thread` runtime.
//!
//! `clustron-bench membership` runs the SWIM core on the deterministic
//! simulator (LAN latency 0.2-2 ms) at N = 10, 50 and 100 with default
//! settings. `CLUSTRON_BENCH_TRIALS` sets the crash/join trials per size
//! (default 10).
//!
//! `clustron-bench kv DKV_BINARY` is `cargo xtask bench kv` (see
//! `kv_bench.rs`): it runs here, in release mode, so the load generator
//! sharing the machine with the nodes costs what a user's client would.
//!
//! `clustron-bench election` measures failover, cooperative handover and
//! stability under loss on the simulator (5 voters, `Config::lan()`), then
//! failover and handover on a local 5-node cluster (3 voters) over real
//! transports and membership in this process.
//!
//! `clustron-bench kv-fill CERT_DIR ENDPOINTS COUNT IN_FLIGHT MAX_SECS [KEYS]`
//! puts COUNT 256-byte values over KEYS keys (default 10,000) into a running cluster
//! (ENDPOINTS comma-separated, the admin client certificate in CERT_DIR)
//! with IN_FLIGHT requests outstanding, for at most MAX_SECS seconds, and
//! prints the puts acknowledged each second and the overall rate: the load
//! behind the log's figures (restart, disk, memory, snapshot cost).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clustron_transport::{
    tls, CertRequest, CertificateAuthority, Channel, ChannelId, Delivery, Endpoint, Inbound, Inbox,
    Protocol, TlsIdentity, TransportConfig,
};
use serde_bytes::ByteBuf;

#[path = "kv_bench.rs"]
mod kv_bench;
// Shared with the xtask binary, which uses all of it.
#[allow(dead_code)]
#[path = "node_bench.rs"]
mod node_bench;

const PAYLOAD: usize = 256;
const WARMUP: Duration = Duration::from_millis(500);
const MEASURE: Duration = Duration::from_secs(2);
const ROUNDS: usize = 3;

struct Echo;
impl Protocol for Echo {
    const CHANNEL: ChannelId = ChannelId::FIRST_PRODUCT;
    type Request = ByteBuf;
    type Response = ByteBuf;
    type Message = ByteBuf;
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Stack {
    Bare,
    Ours,
}

impl Stack {
    fn name(self) -> &'static str {
        match self {
            Stack::Bare => "bare quinn",
            Stack::Ours => "clustron-transport",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        match s {
            "bare" => Ok(Stack::Bare),
            "ours" => Ok(Stack::Ours),
            other => bail!("unknown stack {other:?}"),
        }
    }

    fn arg(self) -> &'static str {
        match self {
            Stack::Bare => "bare",
            Stack::Ours => "ours",
        }
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match args.first().map(String::as_str) {
        Some("transport") => runtime.block_on(transport_suite()),
        Some("membership") => membership_suite(),
        Some("election") => runtime.block_on(election_suite()),
        Some("kv") => kv_bench::run(Path::new(args.get(1).context("clustron-dkv binary")?)),
        Some("kv-load") => kv_bench::load(
            Path::new(args.get(1).context("cert dir")?),
            args.get(2).context("endpoints")?,
            args.get(3).context("row")?,
            args.get(4).context("count")?.parse()?,
        ),
        Some("transport-server") => {
            let stack = Stack::parse(args.get(1).context("stack")?)?;
            let dir = PathBuf::from(args.get(2).context("cert dir")?);
            runtime.block_on(serve(stack, &dir))
        }
        // For profiling one side: `transport-client ours|bare CERT_DIR ADDR`
        // against a `transport-server` started by hand (certs from `certs DIR`).
        Some("transport-client") => {
            let stack = Stack::parse(args.get(1).context("stack")?)?;
            let dir = PathBuf::from(args.get(2).context("cert dir")?);
            let addr = args.get(3).context("server address")?.parse()?;
            let row = runtime.block_on(measure_against(stack, &dir, addr, None))?;
            print_table(&[row]);
            Ok(())
        }
        Some("certs") => write_certs(Path::new(args.get(1).context("dir")?)),
        // For instruction counts under callgrind: `transport-count ours|bare
        // CERT_DIR ADDR N` sends N requests, 64 in flight, and exits.
        Some("transport-count") => {
            let stack = Stack::parse(args.get(1).context("stack")?)?;
            let dir = PathBuf::from(args.get(2).context("cert dir")?);
            let addr: SocketAddr = args.get(3).context("server address")?.parse()?;
            let count: usize = args.get(4).context("count")?.parse()?;
            runtime.block_on(count_requests(stack, &dir, addr, count))
        }
        // Puts over 10,000 keys (or KEYS) with a fixed number in flight,
        // for the log figures (`xtask/log-figures.sh`): `kv-fill CERT_DIR
        // ENDPOINTS COUNT IN_FLIGHT MAX_SECS [KEYS]`.
        Some("kv-fill") => {
            let dir = PathBuf::from(args.get(1).context("cert dir")?);
            let endpoints = args
                .get(2)
                .context("endpoints")?
                .split(',')
                .map(str::parse)
                .collect::<Result<Vec<SocketAddr>, _>>()?;
            let count: u64 = args.get(3).context("count")?.parse()?;
            let in_flight: usize = args.get(4).context("in flight")?.parse()?;
            let secs: u64 = args.get(5).context("max seconds")?.parse()?;
            let keys: u64 = args.get(6).map_or(Ok(10_000), |k| k.parse())?;
            anyhow::ensure!(keys > 0, "KEYS must be at least 1");
            runtime.block_on(kv_load(&dir, endpoints, count, in_flight, secs, keys))
        }
        _ => bail!(
            "usage: clustron-bench transport|membership|election|kv DKV_BINARY|kv-load|kv-fill"
        ),
    }
}

fn identity(dir: &Path, name: &str) -> Result<TlsIdentity> {
    Ok(TlsIdentity::from_files(
        &dir.join("ca.pem"),
        &dir.join(format!("{name}.pem")),
        &dir.join(format!("{name}.key")),
    )?)
}

fn config() -> TransportConfig {
    let mut config = TransportConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)));
    if let Some(n) = std::env::var("CLUSTRON_BENCH_STREAMS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        config.max_concurrent_streams = n;
    }
    config
}

/// The server process: prints its address, serves until killed.
async fn serve(stack: Stack, dir: &Path) -> Result<()> {
    let identity = identity(dir, "server")?;
    match stack {
        Stack::Ours => {
            let endpoint = Endpoint::bind(config(), identity)?;
            let mut inbox =
                endpoint.serve::<Echo, _, _>(|_, request| async move { Ok(request) })?;
            let channel = endpoint.channel::<Echo>();
            println!("{}", endpoint.local_addr());
            while let Some(item) = inbox.recv().await {
                match item {
                    Inbound::Request { request, reply, .. } => reply.send(&request),
                    Inbound::Message { from, message, .. } => {
                        let _ = channel.send_datagram(from.addr, &message).await;
                    }
                    Inbound::Stream { .. } => {}
                }
            }
        }
        Stack::Bare => {
            let mut server = tls::server_config(&identity)?;
            server.transport_config(std::sync::Arc::new(quinn::TransportConfig::default()));
            let endpoint = quinn::Endpoint::server(server, SocketAddr::from(([127, 0, 0, 1], 0)))?;
            println!("{}", endpoint.local_addr()?);
            while let Some(incoming) = endpoint.accept().await {
                tokio::spawn(async move {
                    let Ok(conn) = incoming.await else { return };
                    let datagrams = conn.clone();
                    tokio::spawn(async move {
                        while let Ok(bytes) = datagrams.read_datagram().await {
                            let _ = datagrams.send_datagram(bytes);
                        }
                    });
                    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                        tokio::spawn(async move {
                            let Ok(body) = recv.read_to_end(64 * 1024).await else {
                                return;
                            };
                            let _ = send.write_all(&body).await;
                            let _ = send.finish();
                        });
                    }
                });
            }
        }
    }
    Ok(())
}

/// A client of either stack.
#[derive(Clone)]
enum Client {
    Ours(Channel<Echo>, SocketAddr),
    Bare(quinn::Connection),
}

impl Client {
    async fn request(&self, payload: &ByteBuf) -> Result<()> {
        let len = match self {
            Client::Ours(channel, to) => channel.request(*to, payload).await?.len(),
            Client::Bare(conn) => {
                let (mut send, mut recv) = conn.open_bi().await?;
                send.write_all(payload).await?;
                send.finish()?;
                recv.read_to_end(64 * 1024).await?.len()
            }
        };
        if len != payload.len() {
            bail!("echo of {} bytes came back as {len}", payload.len());
        }
        Ok(())
    }
}

struct ServerProcess(Child);

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_server(stack: Stack, dir: &Path) -> Result<(ServerProcess, SocketAddr)> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(["transport-server", stack.arg()])
        .arg(dir)
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().context("server stdout")?;
    let server = ServerProcess(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let addr = line
        .trim()
        .parse()
        .with_context(|| format!("server said {line:?}"))?;
    Ok((server, addr))
}

#[derive(Debug, Clone, Copy)]
struct Figures {
    per_second: f64,
    p50_us: f64,
    p99_us: f64,
    /// CPU time (user + system) per request in the client process.
    client_cpu_us: f64,
    /// The same in the server process (0 when unknown).
    server_cpu_us: f64,
}

/// CPU time (user + system) a process has used, from /proc (10 ms ticks).
/// Also the key-value suite's (`kv_bench`).
pub(crate) fn cpu_time(pid: Option<u32>) -> Duration {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let Ok(stat) = std::fs::read_to_string(path) else {
        return Duration::ZERO;
    };
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line.
    let rest = stat.rsplit_once(") ").map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

async fn requests(client: &Client, in_flight: usize, server: Option<u32>) -> Result<Figures> {
    let run = |duration: Duration| {
        let tasks: Vec<_> = (0..in_flight)
            .map(|_| {
                let client = client.clone();
                tokio::spawn(async move {
                    let payload = ByteBuf::from(vec![0xab; PAYLOAD]);
                    let mut latencies = Vec::with_capacity(200_000);
                    let end = Instant::now() + duration;
                    while Instant::now() < end {
                        let start = Instant::now();
                        client.request(&payload).await?;
                        latencies.push(start.elapsed().as_nanos() as u64);
                    }
                    anyhow::Ok(latencies)
                })
            })
            .collect();
        async move {
            let started = Instant::now();
            let mut all = Vec::new();
            for task in tasks {
                all.extend(task.await??);
            }
            anyhow::Ok((all, started.elapsed()))
        }
    };
    run(WARMUP).await?;
    let (client_before, server_before) = (cpu_time(None), cpu_time(server));
    let (mut latencies, elapsed) = run(MEASURE).await?;
    let (client_cpu, server_cpu) = (
        cpu_time(None) - client_before,
        cpu_time(server) - server_before,
    );
    let count = latencies.len().max(1) as f64;
    let per_request = |cpu: Duration| cpu.as_secs_f64() * 1e6 / count;
    latencies.sort_unstable();
    let at = |q: f64| {
        latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)] as f64 / 1000.0
    };
    Ok(Figures {
        per_second: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50_us: at(0.50),
        p99_us: at(0.99),
        client_cpu_us: per_request(client_cpu),
        server_cpu_us: if server.is_some() {
            per_request(server_cpu)
        } else {
            0.0
        },
    })
}

/// Datagram ping-pong with one in flight; a lost datagram is resent after
/// 50 ms and only completed round trips count.
async fn datagrams(client: &Client, inbox: Option<&mut Inbox<Echo>>) -> Result<f64> {
    let payload = ByteBuf::from(vec![0xcd; PAYLOAD]);
    let mut inbox = inbox;
    let mut round_trip = async |client: &Client| -> Result<bool> {
        let wait = Duration::from_millis(50);
        match client {
            Client::Ours(channel, to) => {
                channel.send_datagram(*to, &payload).await?;
                let inbox = inbox.as_deref_mut().context("inbox")?;
                Ok(matches!(
                    tokio::time::timeout(wait, inbox.recv()).await,
                    Ok(Some(Inbound::Message {
                        delivery: Delivery::Datagram,
                        ..
                    }))
                ))
            }
            Client::Bare(conn) => {
                conn.send_datagram(payload.to_vec().into())?;
                Ok(tokio::time::timeout(wait, conn.read_datagram())
                    .await
                    .is_ok())
            }
        }
    };
    let end = Instant::now() + WARMUP;
    while Instant::now() < end {
        round_trip(client).await?;
    }
    let (start, mut done) = (Instant::now(), 0u64);
    while start.elapsed() < MEASURE {
        if round_trip(client).await? {
            done += 1;
        }
    }
    Ok(done as f64 / start.elapsed().as_secs_f64())
}

struct Row {
    stack: Stack,
    one: Figures,
    many: Figures,
    datagrams: f64,
}

/// A client of either stack, with what must stay alive beside it.
struct Connected {
    client: Client,
    /// Our stack's inbox, for datagram echoes.
    inbox: Option<Inbox<Echo>>,
    /// Our stack's endpoint.
    endpoint: Option<Endpoint>,
}

async fn connect(stack: Stack, dir: &Path, addr: SocketAddr) -> Result<Connected> {
    let identity = identity(dir, "client")?;
    Ok(match stack {
        Stack::Ours => {
            let endpoint = Endpoint::bind(config(), identity)?;
            let inbox = endpoint.register::<Echo>()?;
            Connected {
                client: Client::Ours(endpoint.channel::<Echo>(), addr),
                inbox: Some(inbox),
                endpoint: Some(endpoint),
            }
        }
        Stack::Bare => {
            let mut client = tls::client_config(&identity, tls::ALPN_PEER)?;
            client.transport_config(std::sync::Arc::new(quinn::TransportConfig::default()));
            let mut endpoint = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0)))?;
            endpoint.set_default_client_config(client);
            let conn = endpoint.connect(addr, "clustron")?.await?;
            Connected {
                client: Client::Bare(conn),
                inbox: None,
                endpoint: None,
            }
        }
    })
}

async fn count_requests(stack: Stack, dir: &Path, addr: SocketAddr, count: usize) -> Result<()> {
    let Connected {
        client,
        endpoint: _keep,
        ..
    } = connect(stack, dir, addr).await?;
    let per_task = count / 64;
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                let payload = ByteBuf::from(vec![0xab; PAYLOAD]);
                for _ in 0..per_task {
                    client.request(&payload).await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    println!("{} requests", per_task * 64);
    Ok(())
}

async fn measure(stack: Stack, dir: &Path) -> Result<Row> {
    let (server, addr) = start_server(stack, dir)?;
    measure_against(stack, dir, addr, Some(server.0.id())).await
}

async fn measure_against(
    stack: Stack,
    dir: &Path,
    addr: SocketAddr,
    server: Option<u32>,
) -> Result<Row> {
    let Connected {
        client,
        mut inbox,
        endpoint: _keep,
    } = connect(stack, dir, addr).await?;
    let row = Row {
        stack,
        one: requests(&client, 1, server).await?,
        many: requests(&client, 64, server).await?,
        datagrams: datagrams(&client, inbox.as_mut()).await?,
    };
    if std::env::var_os("CLUSTRON_BENCH_QUIC_STATS").is_some() {
        let stats = match (&client, &_keep) {
            (Client::Bare(conn), _) => Some(conn.stats()),
            (Client::Ours(_, to), Some(endpoint)) => endpoint.connection_stats(*to),
            _ => None,
        };
        eprintln!("{}: {stats:#?}", stack.name());
    }
    Ok(row)
}

async fn transport_suite() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("clustron-bench-{}", std::process::id()));
    write_certs(&dir)?;
    // This machine is a VM with noisy neighbours: alternate the two stacks
    // over several rounds and keep each figure's median, so a burst of
    // outside load hits both alike.
    let (mut bare, mut ours) = (Vec::new(), Vec::new());
    for round in 1..=ROUNDS {
        for stack in [Stack::Bare, Stack::Ours] {
            eprintln!("round {round}/{ROUNDS}: measuring {} ...", stack.name());
            let row = measure(stack, &dir).await?;
            match stack {
                Stack::Bare => bare.push(row),
                Stack::Ours => ours.push(row),
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let rows = [
        median_row(Stack::Bare, &bare),
        median_row(Stack::Ours, &ours),
    ];
    print_table(&rows);
    let (bare, ours) = (&rows[0], &rows[1]);
    println!(
        "ours / bare: {:.0}% (1 in flight), {:.0}% (64 in flight), {:.0}% (datagrams)",
        100.0 * ours.one.per_second / bare.one.per_second,
        100.0 * ours.many.per_second / bare.many.per_second,
        100.0 * ours.datagrams / bare.datagrams,
    );
    if ours.one.per_second == 0.0 {
        return Err(anyhow!("no requests completed"));
    }
    Ok(())
}

/// The median of every figure over the rounds.
fn median_row(stack: Stack, rows: &[Row]) -> Row {
    let median = |f: &dyn Fn(&Row) -> f64| {
        let mut values: Vec<f64> = rows.iter().map(f).collect();
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let figures = |pick: &dyn Fn(&Row) -> Figures| Figures {
        per_second: median(&|r| pick(r).per_second),
        p50_us: median(&|r| pick(r).p50_us),
        p99_us: median(&|r| pick(r).p99_us),
        client_cpu_us: median(&|r| pick(r).client_cpu_us),
        server_cpu_us: median(&|r| pick(r).server_cpu_us),
    };
    Row {
        stack,
        one: figures(&|r| r.one),
        many: figures(&|r| r.many),
        datagrams: median(&|r| r.datagrams),
    }
}

fn write_certs(dir: &Path) -> Result<()> {
    let ca = CertificateAuthority::generate("bench CA")?;
    ca.save(dir)?;
    for name in ["server", "client"] {
        ca.issue(&CertRequest::node(name)?)?.save(dir, name)?;
    }
    Ok(())
}

fn print_table(rows: &[Row]) {
    println!();
    println!("transport: two processes on 127.0.0.1, {PAYLOAD}-byte requests and responses, current_thread runtimes, median of {ROUNDS} alternating rounds of {}s per figure", MEASURE.as_secs());
    println!(
        "{:<20} {:>12} {:>9} {:>9} {:>12} {:>9} {:>9} {:>12}",
        "stack", "1: req/s", "p50 µs", "p99 µs", "64: req/s", "p50 µs", "p99 µs", "dgram rt/s"
    );
    for row in rows {
        println!(
            "{:<20} {:>12.0} {:>9.1} {:>9.1} {:>12.0} {:>9.1} {:>9.1} {:>12.0}",
            row.stack.name(),
            row.one.per_second,
            row.one.p50_us,
            row.one.p99_us,
            row.many.per_second,
            row.many.p50_us,
            row.many.p99_us,
            row.datagrams
        );
    }
    println!("CPU per request at 64 in flight (µs, client / server process):");
    for row in rows {
        println!(
            "  {:<20} {:>6.2} / {:>6.2}",
            row.stack.name(),
            row.many.client_cpu_us,
            row.many.server_cpu_us
        );
    }
}

fn membership_suite() -> Result<()> {
    let trials = std::env::var("CLUSTRON_BENCH_TRIALS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(10);
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!();
    println!(
        "membership: simulator, default Config::lan(), {trials} crash and join trials per size"
    );
    println!(
        "{:>5} {:>15} {:>15} {:>11} {:>13} {:>14} {:>13} {:>13} {:>14}",
        "N",
        "detect p50 ms",
        "detect p99 ms",
        "undetected",
        "false dead 5%",
        "false dead 10%",
        "join p50 ms",
        "join max ms",
        "bytes/s/node"
    );
    for n in [10, 50, 100] {
        let started = Instant::now();
        let f = clustron_tests::swim::measure(n, trials, 0xC1u64 << 32 | n as u64);
        println!(
            "{:>5} {:>15.0} {:>15.0} {:>11} {:>13} {:>14} {:>13.0} {:>13.0} {:>14.0}",
            f.n,
            ms(f.detection_p50),
            ms(f.detection_p99),
            f.undetected,
            f.false_dead_5,
            f.false_dead_10,
            ms(f.join_p50),
            ms(f.join_max),
            f.bytes_per_node_per_second
        );
        eprintln!(
            "  (N = {n} took {:.1} s of real time)",
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

async fn election_suite() -> Result<()> {
    use clustron_tests::local::{failover, handover, LocalCluster};
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let pct = |v: &[Duration], q: f64| ms(clustron_tests::swim::percentile(v, q));
    let trials: u64 = std::env::var("CLUSTRON_BENCH_TRIALS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(200);
    let sim = clustron_tests::election::measure(trials, 0xE1EC);
    println!();
    println!("election: simulator, 5 voters, Config::lan() (lease 600 ms), {trials} seeds");
    println!(
        "  failover (leader crash -> new leader with a valid lease): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms ({} runs)",
        pct(&sim.failover, 0.5),
        pct(&sim.failover, 0.99),
        sim.failover.last().map_or(0.0, |d| ms(*d)),
        sim.failover.len()
    );
    println!(
        "  cooperative handover (transfer_to -> successor holds a lease): p50 {:.1} ms, max {:.1} ms ({} runs)",
        pct(&sim.handover, 0.5),
        sim.handover.last().map_or(0.0, |d| ms(*d)),
        sim.handover.len()
    );
    println!(
        "  {} virtual minutes at 10% loss, no crash: {} leadership changes ({} elections incl. epoch bumps by the same leader)",
        sim.quiet.as_secs() / 60,
        sim.changes_under_loss,
        sim.elections_under_loss
    );
    let rounds = 5;
    let (mut failovers, mut handovers) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let cluster = LocalCluster::start(5, 3, clustron_election::Config::lan()).await?;
        failovers.push(failover(&cluster).await?);
        cluster.stop().await;
        let cluster = LocalCluster::start(5, 3, clustron_election::Config::lan()).await?;
        handovers.push(handover(&cluster, 1).await?);
        cluster.stop().await;
    }
    failovers.sort();
    handovers.sort();
    println!("election: real transports and membership, 5 nodes (3 voters) in one process on 127.0.0.1, {rounds} rounds");
    println!(
        "  failover (kill leader -> another node holds a valid lease): p50 {:.0} ms, max {:.0} ms",
        pct(&failovers, 0.5),
        failovers.last().map_or(0.0, |d| ms(*d))
    );
    println!(
        "  cooperative handover: p50 {:.1} ms, max {:.1} ms",
        pct(&handovers, 0.5),
        handovers.last().map_or(0.0, |d| ms(*d))
    );
    Ok(())
}

/// `kv-fill`: puts `count` 256-byte values over `keys` keys with
/// `in_flight` outstanding, for at most `secs` seconds; prints the puts
/// acknowledged in each second and the overall rate.
async fn kv_load(
    dir: &Path,
    endpoints: Vec<SocketAddr>,
    count: u64,
    in_flight: usize,
    secs: u64,
    keys: u64,
) -> Result<()> {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    let client = clustron_client::Client::new(endpoints, identity(dir, "admin")?)?;
    let deadline = Instant::now() + Duration::from_secs(secs);
    while client.put(b"load/warmup", b"x").await.is_err() {
        anyhow::ensure!(Instant::now() < deadline, "the store never took a write");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..in_flight {
        let (client, next, done, errors) =
            (client.clone(), next.clone(), done.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let value = vec![42u8; PAYLOAD];
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= count || Instant::now() >= deadline {
                    return;
                }
                let key = format!("load/{:05}", n.wrapping_mul(7919) % keys);
                while client.put(key.as_bytes(), &value).await.is_err() {
                    errors.fetch_add(1, Ordering::Relaxed);
                    if Instant::now() >= deadline {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let mut last = 0;
    let mut second = 0u64;
    while tasks.iter().any(|t| !t.is_finished()) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        second += 1;
        let now = done.load(Ordering::Relaxed);
        println!("second {second}: {} puts", now - last);
        last = now;
    }
    for task in tasks {
        task.await?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let total = done.load(Ordering::Relaxed);
    println!(
        "total {total} puts in {elapsed:.1} s: {:.0} puts/s, {} errors (retried)",
        total as f64 / elapsed,
        errors.load(Ordering::Relaxed)
    );
    Ok(())
}
