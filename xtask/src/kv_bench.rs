//! `cargo xtask bench kv`: the key-value store as users meet it. Starts a
//! real three-node `clustron-dkv dev` cluster (release build) and drives it
//! through `clustron-client` from this process: puts (each acknowledged
//! after a majority fsynced it) with 1, 64 and 1000 in flight,
//! linearizable gets (leader, lease-local) and serializable gets (any
//! node) with 64 in flight, and compare-and-set transactions with 64 in
//! flight (each task owns a key and swaps it on its last mod revision).
//!
//! Beside throughput and latency each row gives the server CPU time per
//! 1,000 operations, summed over the three node processes (utime + stime
//! from `/proc/PID/stat`, read before and after the row), and the client
//! process's CPU per operation and the write-ahead log fsyncs per 1,000
//! operations (all nodes, from `/metrics`: the group-commit batch size). On
//! a small shared machine CPU per operation is the steadier figure: it is
//! the throughput once the cores are busy.
//!
//! The rows run in alternating rounds (every row once, then every row
//! again, ...) so a burst of outside load shows as spread rather than as
//! one wrong row; the table gives the median and the range (min..max) of
//! each figure. Values are 256 bytes over 100,000 keys.
//!
//! Knobs (environment):
//! - `CLUSTRON_BENCH_SECS`: seconds per row and round (default 3);
//! - `CLUSTRON_BENCH_KV_ROUNDS`: rounds (default 3);
//! - `CLUSTRON_BENCH_KV_ROWS`: a comma-separated subset of the row names
//!   `put1,put64,put1000,get64,sget64,cas64,mixed1000` (default: all but
//!   `mixed1000`);
//! - `CLUSTRON_BENCH_KV_HOLD`: after the table, keep the cluster up and
//!   print its node pids, for attaching a profiler by hand (seconds).
//!
//! - `CLUSTRON_BENCH_NODE_LOG`: a file the nodes log to (appended; with
//!   `RUST_LOG`), to find out what a slow row did;
//! - `CLUSTRON_BENCH_KV_MAX_OPS`: most operations per row and round
//!   (default 400,000).
//!
//! Every row runs for its time or at most that many operations. A failed
//! operation is counted (column `failed`), never hidden; the leader's epoch
//! is read before and after each row (column `elections`), and so are the
//! nodes' failure verdicts (`suspected`: members marked suspect or failed,
//! summed over the nodes), so a leader change or a false suspicion under
//! load shows in the table. The overload check of issue 13 is the row
//! `mixed1000` (puts and linearizable gets, half each, 1000 in flight) for
//! five minutes: `CLUSTRON_BENCH_SECS=300 CLUSTRON_BENCH_KV_ROUNDS=1
//! CLUSTRON_BENCH_KV_MAX_OPS=100000000 CLUSTRON_BENCH_KV_ROWS=mixed1000`.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clustron_client::kv::{Compare, CompareOp, CompareTarget, KeyRange, RangeRequest};
use clustron_client::kv::{RequestOp, ResponseOp, Txn};
use clustron_client::Client;
use clustron_transport::TlsIdentity;

use crate::cpu_time;
use crate::node_bench::{get, node_pid, start_dev};

const KEYS: u64 = 100_000;
const VALUE: usize = 256;
const MAX_OPS: u64 = 400_000;
const NODES: usize = 3;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Op {
    Put,
    Linearizable,
    Serializable,
    Cas,
    /// Puts and linearizable gets, alternately.
    Mixed,
}

/// One row of the table: an operation at a number in flight.
#[derive(Clone, Copy, Debug)]
struct Row {
    name: &'static str,
    label: &'static str,
    op: Op,
    in_flight: usize,
}

const ROWS: &[Row] = &[
    Row {
        name: "put1",
        label: "put (majority fsync)",
        op: Op::Put,
        in_flight: 1,
    },
    Row {
        name: "put64",
        label: "put (majority fsync)",
        op: Op::Put,
        in_flight: 64,
    },
    Row {
        name: "put1000",
        label: "put (majority fsync)",
        op: Op::Put,
        in_flight: 1000,
    },
    Row {
        name: "get64",
        label: "get linearizable",
        op: Op::Linearizable,
        in_flight: 64,
    },
    Row {
        name: "sget64",
        label: "get serializable",
        op: Op::Serializable,
        in_flight: 64,
    },
    Row {
        name: "cas64",
        label: "CAS txn",
        op: Op::Cas,
        in_flight: 64,
    },
    Row {
        name: "mixed1000",
        label: "put + get lin. (1:1)",
        op: Op::Mixed,
        in_flight: 1000,
    },
];

/// The rows run when `CLUSTRON_BENCH_KV_ROWS` does not name them.
const DEFAULT_ROWS: usize = 6;

/// What one row measured in one round.
#[derive(Clone, Copy, Debug, Default)]
struct Figures {
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Server CPU seconds per 1,000 operations, all nodes together.
    server_cpu_per_k: f64,
    /// Client process CPU microseconds per operation.
    client_cpu_us: f64,
    failed: u64,
    /// Write-ahead log fsyncs per 1,000 operations, all nodes together.
    syncs_per_k: f64,
    /// Leader epoch increments during the row.
    elections: u64,
    /// Members marked suspect or failed during the row, summed over the
    /// nodes' verdicts.
    suspected: u64,
}

fn env_number(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .with_context(|| format!("{name}={v:?} is not a number")),
        Err(_) => Ok(default),
    }
}

/// Runs the rows against `binary` and prints the table.
pub fn run(binary: &Path) -> Result<()> {
    let secs = env_number("CLUSTRON_BENCH_SECS", 3)?;
    let rounds = env_number("CLUSTRON_BENCH_KV_ROUNDS", 3)?.max(1) as usize;
    let max_ops = env_number("CLUSTRON_BENCH_KV_MAX_OPS", MAX_OPS)?;
    let hold = env_number("CLUSTRON_BENCH_KV_HOLD", 0)?;
    let rows: Vec<Row> = match std::env::var("CLUSTRON_BENCH_KV_ROWS") {
        Ok(names) => names.split(',').map(find_row).collect::<Result<_>>()?,
        Err(_) => ROWS[..DEFAULT_ROWS].to_vec(),
    };
    let dir = std::env::temp_dir().join(format!("clustron-kv-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cluster = start_dev(binary, &dir, NODES)?;
    let pids: Vec<u32> = (1..=NODES)
        .map(|i| node_pid(&dir, &format!("n{i}")))
        .collect::<Result<_>>()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let admins = cluster.admins.clone();
    let result = runtime.block_on(async {
        let identity = TlsIdentity::from_files(
            &dir.join("ca.pem"),
            &dir.join("admin.pem"),
            &dir.join("admin.key"),
        )?;
        let client = Client::new(cluster.listen.clone(), identity)?;
        // The store starts with the election: wait for a first write.
        let deadline = Instant::now() + Duration::from_secs(30);
        while client.put(b"bench/warmup", b"x").await.is_err() {
            anyhow::ensure!(Instant::now() < deadline, "the store never took a write");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut results: Vec<Vec<Figures>> = vec![Vec::new(); rows.len()];
        for round in 1..=rounds {
            for (i, row) in rows.iter().enumerate() {
                eprintln!(
                    "round {round}/{rounds}: {} with {} in flight ...",
                    row.label, row.in_flight
                );
                let epoch_before = leader_epoch(&admins);
                let syncs_before = sum_metric(&admins, "clustron_kv_wal_syncs_total");
                let verdicts_before = verdicts(&admins);
                let figures =
                    phase(&client, *row, Duration::from_secs(secs), max_ops, &pids).await?;
                let syncs = sum_metric(&admins, "clustron_kv_wal_syncs_total")
                    .saturating_sub(syncs_before) as f64;
                let suspected = verdicts(&admins).saturating_sub(verdicts_before);
                let ops = figures.per_second * secs as f64;
                let elections = leader_epoch(&admins)
                    .zip(epoch_before)
                    .map_or(0, |(after, before)| after.saturating_sub(before));
                results[i].push(Figures {
                    elections,
                    suspected,
                    syncs_per_k: syncs * 1000.0 / ops.max(1.0),
                    ..figures
                });
            }
        }
        print_table(&rows, &results, secs, rounds);
        if hold > 0 {
            println!("holding the cluster for {hold} s; node pids {pids:?}");
            tokio::time::sleep(Duration::from_secs(hold)).await;
        }
        anyhow::Ok(())
    });
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn find_row(name: &str) -> Result<Row> {
    ROWS.iter()
        .find(|r| r.name == name.trim())
        .copied()
        .with_context(|| format!("unknown kv bench row {name:?}"))
}

/// `clustron-bench kv-load CERT_DIR ENDPOINTS ROW COUNT`: runs `COUNT`
/// operations of one row against a cluster started by hand (endpoints
/// comma-separated, the admin client certificate in `CERT_DIR`), for
/// profiling a node: under `valgrind --tool=callgrind`, zero its counters
/// (`callgrind_control -z`) just before and dump them (`-d`) just after,
/// and divide the instructions by `COUNT`.
pub fn load(dir: &Path, endpoints: &str, row: &str, count: u64) -> Result<()> {
    let row = find_row(row)?;
    let endpoints: Vec<std::net::SocketAddr> = endpoints
        .split(',')
        .map(|e| e.trim().parse().context("endpoint address"))
        .collect::<Result<_>>()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let identity = TlsIdentity::from_files(
            &dir.join("ca.pem"),
            &dir.join("admin.pem"),
            &dir.join("admin.key"),
        )?;
        let client = Client::new(endpoints, identity)?;
        let deadline = Instant::now() + Duration::from_secs(120);
        while client.put(b"bench/warmup", b"x").await.is_err() {
            anyhow::ensure!(Instant::now() < deadline, "the store never took a write");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let f = phase(&client, row, Duration::from_secs(3600), count, &[]).await?;
        println!(
            "{} x{}: {count} operations, {:.0}/s, p50 {:.2} ms, p99 {:.2} ms, {} failed",
            row.label, row.in_flight, f.per_second, f.p50_ms, f.p99_ms, f.failed
        );
        anyhow::Ok(())
    })
}

/// A counter of `/metrics`, summed over the nodes.
fn sum_metric(admins: &[std::net::SocketAddr], name: &str) -> u64 {
    admins
        .iter()
        .filter_map(|admin| {
            let (_, body) = get(*admin, "/metrics")?;
            body.lines()
                .find(|l| l.split_whitespace().next() == Some(name))?
                .rsplit(' ')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// Failure verdicts (suspect or failed) of all nodes so far.
fn verdicts(admins: &[std::net::SocketAddr]) -> u64 {
    sum_metric(admins, "clustron_member_suspicions_total")
        + sum_metric(admins, "clustron_member_failures_total")
}

/// The leader's epoch as the first answering node's `/readyz` says it.
fn leader_epoch(admins: &[std::net::SocketAddr]) -> Option<u64> {
    admins.iter().find_map(|admin| {
        let (status, body) = get(*admin, "/readyz")?;
        // "ready: leader NAME epoch N"
        (status == 200).then(|| body.split_whitespace().nth(4)?.parse().ok())?
    })
}

fn print_table(rows: &[Row], results: &[Vec<Figures>], secs: u64, rounds: usize) {
    println!();
    println!(
        "kv bench: {NODES} nodes (`clustron-dkv dev`, release, 127.0.0.1), one client process, \
         {VALUE}-byte values over {KEYS} keys, {rounds} alternating rounds of {secs} s per row"
    );
    println!("figures: median [min..max] over the rounds; server CPU summed over the {NODES} node processes");
    println!(
        "{:<22} {:>9} {:>22} {:>8} {:>8} {:>24} {:>10} {:>10} {:>7} {:>9} {:>9}",
        "operation",
        "in flight",
        "ops/s",
        "p50 ms",
        "p99 ms",
        "server CPU s/1k ops",
        "client µs",
        "fsyncs/1k",
        "failed",
        "elections",
        "suspected"
    );
    for (row, figures) in rows.iter().zip(results) {
        let stat = |f: &dyn Fn(&Figures) -> f64| {
            let mut v: Vec<f64> = figures.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            (v[v.len() / 2], v[0], v[v.len() - 1])
        };
        let (rate, rate_min, rate_max) = stat(&|f| f.per_second);
        let (cpu, cpu_min, cpu_max) = stat(&|f| f.server_cpu_per_k);
        let (p50, _, _) = stat(&|f| f.p50_ms);
        let (p99, _, _) = stat(&|f| f.p99_ms);
        let (client, _, _) = stat(&|f| f.client_cpu_us);
        let (syncs, _, _) = stat(&|f| f.syncs_per_k);
        let failed: u64 = figures.iter().map(|f| f.failed).sum();
        let elections: u64 = figures.iter().map(|f| f.elections).sum();
        let suspected: u64 = figures.iter().map(|f| f.suspected).sum();
        println!(
            "{:<22} {:>9} {:>22} {:>8.2} {:>8.2} {:>24} {:>10.1} {:>10.1} {:>7} {:>9} {:>9}",
            row.label,
            row.in_flight,
            format!("{rate:.0} [{rate_min:.0}..{rate_max:.0}]"),
            p50,
            p99,
            format!("{cpu:.3} [{cpu_min:.3}..{cpu_max:.3}]"),
            client,
            syncs,
            failed,
            elections,
            suspected
        );
    }
}

fn key(i: u64) -> String {
    format!("bench/{:06}", i % KEYS)
}

fn servers_cpu(pids: &[u32]) -> Duration {
    pids.iter().map(|p| cpu_time(Some(*p))).sum()
}

/// Runs `row` for `length` (or `MAX_OPS`): its figures, elections aside.
async fn phase(
    client: &Client,
    row: Row,
    length: Duration,
    max_ops: u64,
    pids: &[u32],
) -> Result<Figures> {
    let counter = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let (server_before, client_before) = (servers_cpu(pids), cpu_time(None));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for task in 0..row.in_flight {
        let client = client.clone();
        let counter = counter.clone();
        let failed = failed.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let value = vec![42u8; VALUE];
            // CAS: this task's key and the mod revision it last saw.
            let cas_key = format!("bench/cas/{task:04}").into_bytes();
            let mut cas_revision = 0;
            loop {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                if n >= max_ops || start.elapsed() >= length {
                    return anyhow::Ok(latencies);
                }
                let key = key(n.wrapping_mul(7919));
                let began = Instant::now();
                let op = match row.op {
                    Op::Mixed if n % 2 == 0 => Op::Put,
                    Op::Mixed => Op::Linearizable,
                    op => op,
                };
                let ok = match op {
                    Op::Put => client.put(key.as_bytes(), &value).await.is_ok(),
                    Op::Linearizable | Op::Serializable => {
                        let request = RangeRequest {
                            range: KeyRange::Key(key.into_bytes()),
                            revision: 0,
                            limit: 0,
                            keys_only: false,
                            count_only: false,
                        };
                        client.range(request, op == Op::Linearizable).await.is_ok()
                    }
                    Op::Cas => {
                        let txn = Txn {
                            compare: vec![Compare {
                                key: cas_key.clone(),
                                target: CompareTarget::ModRevision(cas_revision),
                                op: CompareOp::Equal,
                            }],
                            success: vec![RequestOp::put(&cas_key, &value)],
                            failure: vec![RequestOp::get(&cas_key)],
                        };
                        match client.txn(txn).await {
                            Ok(response) if response.succeeded => {
                                cas_revision = response.revision;
                                true
                            }
                            Ok(response) => {
                                // Lost the race (or a retried swap applied):
                                // start again from the key's revision.
                                if let Some(ResponseOp::Range(range)) = response.responses.first() {
                                    cas_revision =
                                        range.kvs.first().map_or(0, |kv| kv.mod_revision);
                                }
                                true
                            }
                            Err(_) => false,
                        }
                    }
                    Op::Mixed => unreachable!("a mixed row picks put or get above"),
                };
                if ok {
                    latencies.push(began.elapsed());
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    let elapsed = start.elapsed();
    let (server_cpu, client_cpu) = (
        servers_cpu(pids).saturating_sub(server_before),
        cpu_time(None).saturating_sub(client_before),
    );
    if all.is_empty() {
        bail!(
            "{} with {} in flight: no operation succeeded",
            row.label,
            row.in_flight
        );
    }
    all.sort();
    let at = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)];
    let ops = all.len() as f64;
    Ok(Figures {
        per_second: ops / elapsed.as_secs_f64(),
        p50_ms: at(0.5).as_secs_f64() * 1000.0,
        p99_ms: at(0.99).as_secs_f64() * 1000.0,
        server_cpu_per_k: server_cpu.as_secs_f64() * 1000.0 / ops,
        client_cpu_us: client_cpu.as_secs_f64() * 1e6 / ops,
        failed: failed.load(Ordering::Relaxed),
        syncs_per_k: 0.0,
        elections: 0,
        suspected: 0,
    })
}
