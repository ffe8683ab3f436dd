//! `cargo xtask bench watch`: what watches that never read cost the leader
//! (issue 10 item 2). Starts a real three-node `clustron-dkv dev` cluster
//! (release build), writes 200,000 puts (history compacted at about
//! 100,000), opens ten watches from just after the compaction point on the
//! whole prefix that never read, and meanwhile times one put every 250 ms
//! for 40 s (past the 30 s stall timeout). Prints the put latencies and
//! failures, the leader's RSS before and after, leadership changes, and how
//! many watchers the leader still holds at the end.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clustron_client::kv::{KeyRange, WatchRequest};
use clustron_client::Client;
use clustron_transport::TlsIdentity;

use crate::node_bench::{get, leader, node_pid, rss_kib, start_dev};

const PUTS: u64 = 200_000;
const KEYS: u64 = 10_000;
const WATCHES: usize = 10;
const PROBE: Duration = Duration::from_secs(40);

/// Runs the scenario against `binary` and prints what it saw.
pub fn run(binary: &Path) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("clustron-watch-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cluster = start_dev(binary, &dir, 3)?;
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
        let deadline = Instant::now() + Duration::from_secs(30);
        while client.put(b"w/warmup", b"x").await.is_err() {
            anyhow::ensure!(Instant::now() < deadline, "the store never took a write");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let started = Instant::now();
        let counter = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..64 {
            let (client, counter) = (client.clone(), counter.clone());
            tasks.push(tokio::spawn(async move {
                let value = vec![42u8; 256];
                loop {
                    let n = counter.fetch_add(1, Ordering::Relaxed);
                    if n >= PUTS {
                        return anyhow::Ok(());
                    }
                    let key = format!("w/{:05}", n.wrapping_mul(7919) % KEYS);
                    client.put(key.as_bytes(), &value).await?;
                }
            }));
        }
        for task in tasks {
            task.await??;
        }
        let load = started.elapsed();
        let name = leader(admins[0]).context("no leader")?;
        let index: usize = name.trim_start_matches('n').parse::<usize>()? - 1;
        let admin = admins[index];
        let pid = node_pid(&dir, &name)?;
        let metric = |line: &str| -> Option<u64> {
            get(admin, "/metrics")?
                .1
                .lines()
                .find(|l| l.starts_with(line))?
                .rsplit(' ')
                .next()?
                .parse()
                .ok()
        };
        let compacted = metric("clustron_kv_compacted_revision ").context("metrics")?;
        let changes_before = metric("clustron_leadership_changes_total").context("metrics")?;
        let rss_before = rss_kib(pid)?;
        println!(
            "watch bench: 3 nodes (`clustron-dkv dev`, release, 127.0.0.1); {PUTS} puts in {:.1} s; leader {name}, history compacted at {compacted}",
            load.as_secs_f64()
        );
        let mut watches = Vec::new();
        for _ in 0..WATCHES {
            let request = WatchRequest {
                start_revision: compacted + 1,
                ..WatchRequest::new(KeyRange::Prefix(b"w/".to_vec()))
            };
            watches.push(client.watch(request).await?);
        }
        let mut latencies = Vec::new();
        let mut failures = 0;
        let mut rss_peak = rss_before;
        let mut watchers_seen = 0;
        let probe = Instant::now();
        let mut i = 0u64;
        while probe.elapsed() < PROBE {
            i += 1;
            let began = Instant::now();
            match client.put(format!("probe/{i}").as_bytes(), b"x").await {
                Ok(_) => latencies.push(began.elapsed()),
                Err(_) => failures += 1,
            }
            rss_peak = rss_peak.max(rss_kib(pid)?);
            watchers_seen = watchers_seen.max(metric("clustron_kv_watchers ").unwrap_or(0));
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        latencies.sort();
        let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
        println!(
            "{WATCHES} watches from revision {} that never read; one put every 250 ms for {} s:",
            compacted + 1,
            PROBE.as_secs()
        );
        println!(
            "  puts {} ok, {failures} failed; p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            latencies.len(),
            at(0.5).as_secs_f64() * 1000.0,
            at(0.99).as_secs_f64() * 1000.0,
            latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0)
        );
        println!(
            "  leader RSS {} MiB before, {} MiB peak; leadership changes {}; watchers on the leader: {} at most, {} at the end",
            rss_before / 1024,
            rss_peak / 1024,
            metric("clustron_leadership_changes_total").unwrap_or(0) - changes_before,
            watchers_seen,
            metric("clustron_kv_watchers ").unwrap_or(0)
        );
        drop(watches);
        anyhow::Ok(())
    });
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
    result
}
