//! `cargo xtask bench kv`: the key-value store as users meet it. Starts a
//! real three-node `clustron-dkv dev` cluster (release build) and drives it
//! through `clustron-client` from this process: puts (each acknowledged
//! after a majority fsynced it), linearizable gets (leader, lease-local) and
//! serializable gets (any node), with 1 and with 64 requests in flight.
//! Each phase runs for `CLUSTRON_BENCH_SECS` seconds (default 3) and at most
//! 200,000 requests. Values are 256 bytes over 10,000 keys.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clustron_client::kv::{KeyRange, RangeRequest};
use clustron_client::Client;
use clustron_transport::TlsIdentity;

use crate::node_bench::start_dev;

const KEYS: u64 = 10_000;
const VALUE: usize = 256;
const MAX_OPS: u64 = 200_000;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Put,
    Linearizable,
    Serializable,
}

/// Runs the phases against `binary` and prints the table.
pub fn run(binary: &Path) -> Result<()> {
    let secs: u64 = match std::env::var("CLUSTRON_BENCH_SECS") {
        Ok(v) => v
            .parse()
            .with_context(|| format!("CLUSTRON_BENCH_SECS={v:?} is not a number"))?,
        Err(_) => 3,
    };
    let dir = std::env::temp_dir().join(format!("clustron-kv-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cluster = start_dev(binary, &dir, 3)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
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
        println!(
            "kv bench: 3 nodes (`clustron-dkv dev`, release, 127.0.0.1), {VALUE}-byte values, {secs} s per phase"
        );
        println!(
            "{:<26} {:>11} {:>10} {:>10} {:>10}",
            "operation", "in flight", "ops/s", "p50 ms", "p99 ms"
        );
        for (name, op) in [
            ("put (majority fsync)", Op::Put),
            ("get linearizable", Op::Linearizable),
            ("get serializable", Op::Serializable),
        ] {
            for concurrency in [1usize, 64] {
                let (rate, p50, p99) =
                    phase(&client, op, concurrency, Duration::from_secs(secs)).await?;
                println!(
                    "{name:<26} {concurrency:>11} {rate:>10.0} {:>10.2} {:>10.2}",
                    p50.as_secs_f64() * 1000.0,
                    p99.as_secs_f64() * 1000.0
                );
            }
        }
        anyhow::Ok(())
    });
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn key(i: u64) -> String {
    format!("bench/{:05}", i % KEYS)
}

/// Runs `op` from `concurrency` tasks for `length` (or `MAX_OPS`): rate and
/// latency percentiles.
async fn phase(
    client: &Client,
    op: Op,
    concurrency: usize,
    length: Duration,
) -> Result<(f64, Duration, Duration)> {
    let counter = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let client = client.clone();
        let counter = counter.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let value = vec![42u8; VALUE];
            loop {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                if n >= MAX_OPS || start.elapsed() >= length {
                    return anyhow::Ok(latencies);
                }
                let key = key(n.wrapping_mul(7919));
                let began = Instant::now();
                match op {
                    Op::Put => {
                        client.put(key.as_bytes(), &value).await?;
                    }
                    Op::Linearizable | Op::Serializable => {
                        let request = RangeRequest {
                            range: KeyRange::Key(key.into_bytes()),
                            revision: 0,
                            limit: 0,
                            keys_only: false,
                            count_only: false,
                        };
                        client.range(request, op == Op::Linearizable).await?;
                    }
                }
                latencies.push(began.elapsed());
            }
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    let elapsed = start.elapsed();
    all.sort();
    let at = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)];
    Ok((all.len() as f64 / elapsed.as_secs_f64(), at(0.5), at(0.99)))
}
