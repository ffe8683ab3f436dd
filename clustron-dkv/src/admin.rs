//! The admin HTTP server: `/healthz`, `/readyz` and `/metrics` (Prometheus
//! text format).
//!
//! Three fixed GET endpoints do not need an HTTP framework: requests are read
//! up to 8 KiB with a 5 s timeout, answered, and the connection is closed.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result};
use clustron_membership::MemberState;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::node::Node;

/// Serves the admin endpoints on `addr` in the background.
pub async fn serve(addr: SocketAddr, node: Node) -> Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("admin listener on {addr}"))?;
    tracing::info!(%addr, "admin HTTP");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let node = node.clone();
            tokio::spawn(async move {
                // Read the whole head (up to 8 KiB): closing a socket with
                // unread bytes makes the kernel reset the connection, and
                // the client would lose our answer.
                let mut buf = vec![0u8; 8192];
                let mut n = 0;
                let read_head = async {
                    while n < buf.len() && !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf[n..]).await {
                            Ok(0) | Err(_) => return false,
                            Ok(read) => n += read,
                        }
                    }
                    true
                };
                if !matches!(
                    tokio::time::timeout(Duration::from_secs(5), read_head).await,
                    Ok(true)
                ) {
                    return;
                }
                let request = String::from_utf8_lossy(&buf[..n]);
                let path = request.split_whitespace().nth(1).unwrap_or("/");
                let (status, body) = answer(&node, path).await;
                let response = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    Ok(())
}

async fn answer(node: &Node, path: &str) -> (&'static str, String) {
    match path {
        "/healthz" => ("200 OK", "ok\n".into()),
        "/readyz" => {
            // A node that cannot do its job says why, first.
            let stopped = node.kv.borrow().as_ref().and_then(|kv| kv.stopped());
            let withdrawn = node.election.borrow().as_ref().and_then(|e| e.withdrawn());
            if let Some(why) = stopped.or(withdrawn) {
                return ("503 Service Unavailable", format!("not ready: {why}\n"));
            }
            let diverged = node.kv.borrow().as_ref().and_then(|kv| kv.stats().diverged);
            if let Some(d) = diverged {
                return (
                    "503 Service Unavailable",
                    format!(
                        "not ready: this replica's state differs from the leader's at log index {} (digest {:08x}, leader's {:08x}); restore its data from its peers\n",
                        d.index, d.ours, d.leaders
                    ),
                );
            }
            let leader = node.election.borrow().as_ref().and_then(|e| e.leader());
            match leader {
                Some((name, epoch)) => (
                    "200 OK",
                    format!("ready: leader {name} epoch {}\n", epoch.0),
                ),
                None => {
                    let waiting = node.waiting_for.borrow().clone();
                    let why = if waiting.is_empty() {
                        "no leader known".to_owned()
                    } else {
                        waiting
                    };
                    ("503 Service Unavailable", format!("not ready: {why}\n"))
                }
            }
        }
        "/metrics" => ("200 OK", metrics(node).await),
        _ => (
            "404 Not Found",
            "try /healthz, /readyz or /metrics\n".into(),
        ),
    }
}

async fn metrics(node: &Node) -> String {
    let mut out = String::new();
    let members = node.membership.members().await.unwrap_or_default();
    let _ = writeln!(
        out,
        "# HELP clustron_members Members by state, as this node sees them."
    );
    let _ = writeln!(out, "# TYPE clustron_members gauge");
    for state in [
        MemberState::Alive,
        MemberState::Suspect,
        MemberState::Dead,
        MemberState::Left,
    ] {
        let count = members.iter().filter(|m| m.state == state).count();
        let _ = writeln!(out, "clustron_members{{state=\"{state}\"}} {count}");
    }
    let election = node.election.borrow().clone();
    let (epoch, is_leader) = match &election {
        Some(e) => (
            e.leader().map_or(0, |l| l.1 .0),
            u8::from(e.lease().is_some()),
        ),
        None => (0, 0),
    };
    let _ = writeln!(
        out,
        "# HELP clustron_leader_epoch Epoch of the leader this node knows (0: none)."
    );
    let _ = writeln!(out, "# TYPE clustron_leader_epoch gauge");
    let _ = writeln!(out, "clustron_leader_epoch {epoch}");
    let _ = writeln!(
        out,
        "# HELP clustron_is_leader 1 while this node holds a valid lease."
    );
    let _ = writeln!(out, "# TYPE clustron_is_leader gauge");
    let _ = writeln!(out, "clustron_is_leader {is_leader}");
    let _ = writeln!(
        out,
        "# HELP clustron_leadership_changes_total Leaders seen since start."
    );
    let _ = writeln!(out, "# TYPE clustron_leadership_changes_total counter");
    let changes = node.leadership_changes.load(Ordering::Relaxed);
    let _ = writeln!(out, "clustron_leadership_changes_total {changes}");
    let withdrawn = election.as_ref().is_some_and(|e| e.withdrawn().is_some());
    let _ = writeln!(
        out,
        "# HELP clustron_election_withdrawn 1 while this node may neither vote nor lead (see /readyz)."
    );
    let _ = writeln!(out, "# TYPE clustron_election_withdrawn gauge");
    let _ = writeln!(out, "clustron_election_withdrawn {}", u8::from(withdrawn));
    if let Ok(health) = node.membership.health().await {
        let _ = writeln!(
            out,
            "# HELP clustron_local_health Lifeguard local health score (0 is healthy)."
        );
        let _ = writeln!(out, "# TYPE clustron_local_health gauge");
        let _ = writeln!(out, "clustron_local_health {}", health.local_health);
        let _ = writeln!(
            out,
            "# HELP clustron_probe_rtt_seconds Smoothed probe round trip per peer."
        );
        let _ = writeln!(out, "# TYPE clustron_probe_rtt_seconds gauge");
        for (peer, rtt) in &health.round_trips {
            let _ = writeln!(
                out,
                "clustron_probe_rtt_seconds{{peer=\"{peer}\"}} {:.6}",
                rtt.as_secs_f64()
            );
        }
    }
    let stats = node.endpoint.stats();
    let verdicts = node.membership.verdicts();
    for (name, help, value) in [
        (
            "clustron_messages_sent_total",
            "Frames and datagrams sent.",
            stats.messages_sent,
        ),
        (
            "clustron_messages_received_total",
            "Frames and datagrams received.",
            stats.messages_received,
        ),
        (
            "clustron_streams_accepted_total",
            "Streams accepted from peers and clients (requests and long-lived streams).",
            stats.streams_accepted,
        ),
        (
            "clustron_bytes_sent_total",
            "Bytes sent in frames and datagrams.",
            stats.bytes_sent,
        ),
        (
            "clustron_bytes_received_total",
            "Bytes received in frames and datagrams.",
            stats.bytes_received,
        ),
        (
            "clustron_connections_refused_total",
            "Handshakes refused.",
            stats.connections_refused,
        ),
        (
            "clustron_connections_refused_unlogged_total",
            "Refused handshakes summed up in the log instead of logged one by one (a flood).",
            stats.refusals_unlogged,
        ),
        (
            "clustron_handshakes_retried_total",
            "Handshakes asked to prove their address first (QUIC Retry) under load.",
            stats.handshakes_retried,
        ),
        (
            "clustron_handshakes_shed_total",
            "Handshakes refused because too many were in progress.",
            stats.handshakes_shed,
        ),
        (
            "clustron_transport_errors_total",
            "Streams ended for bad input.",
            stats.stream_errors,
        ),
        (
            "clustron_datagrams_dropped_total",
            "Datagrams dropped.",
            stats.datagrams_dropped,
        ),
        (
            "clustron_member_suspicions_total",
            "Times this node marked another member suspect.",
            verdicts.suspected,
        ),
        (
            "clustron_member_failures_total",
            "Times this node declared another member failed.",
            verdicts.failed,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} counter");
        let _ = writeln!(out, "{name} {value}");
    }
    let kv = node.kv.borrow().clone();
    if let Some(kv) = kv {
        let _ = writeln!(
            out,
            "# HELP clustron_kv_stopped 1 once the key-value store stopped (its write-ahead log failed; see /readyz)."
        );
        let _ = writeln!(out, "# TYPE clustron_kv_stopped gauge");
        let _ = writeln!(
            out,
            "clustron_kv_stopped {}",
            u8::from(kv.stopped().is_some())
        );
        let s = kv.stats();
        for (name, kind, help, value) in [
            (
                "clustron_kv_revision",
                "gauge",
                "Store revision applied here.",
                s.revision,
            ),
            (
                "clustron_kv_compacted_revision",
                "gauge",
                "Store compaction point.",
                s.compacted,
            ),
            (
                "clustron_kv_applied_index",
                "gauge",
                "Log index applied here.",
                s.applied,
            ),
            (
                "clustron_kv_commit_index",
                "gauge",
                "Log commit index known here.",
                s.commit,
            ),
            (
                "clustron_kv_log_last_index",
                "gauge",
                "Last log index held here.",
                s.log_last,
            ),
            (
                "clustron_kv_store_bytes",
                "gauge",
                "Keys and values held, all versions.",
                s.store_bytes,
            ),
            (
                "clustron_kv_live_bytes",
                "gauge",
                "Keys and values of the live versions only.",
                s.live_bytes,
            ),
            (
                "clustron_kv_watchers",
                "gauge",
                "Watchers on this node.",
                s.watchers,
            ),
            (
                "clustron_kv_watchers_behind",
                "gauge",
                "Watchers fed from history.",
                s.watchers_behind,
            ),
            (
                "clustron_kv_wal_syncs_total",
                "counter",
                "Write-ahead log fsyncs.",
                s.syncs,
            ),
            (
                "clustron_kv_wal_segments",
                "gauge",
                "Write-ahead log segment files.",
                s.wal_segments,
            ),
            (
                "clustron_kv_snapshot_index",
                "gauge",
                "Log index the newest snapshot covers (the log before it is forgotten).",
                s.snapshot_index,
            ),
            (
                "clustron_kv_log_entries",
                "gauge",
                "Log entries held (those after the snapshot).",
                s.log_entries,
            ),
            (
                "clustron_kv_diverged",
                "gauge",
                "1 if this replica's state differs from the leader's (it refuses to serve).",
                s.diverged.is_some() as u64,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name} {value}");
        }
    }
    let cache = node.cache.borrow().clone();
    if let Some(cache) = cache {
        cache_metrics(&mut out, &cache.stats());
    }
    out
}

/// The cache's figures: the table, migrations, and per namespace.
fn cache_metrics(out: &mut String, s: &crate::cache::service::CacheStats) {
    for (name, kind, help, value) in [
        (
            "clustron_cache_table_version",
            "gauge",
            "Version of the cache partition table adopted here.",
            s.table_version,
        ),
        (
            "clustron_cache_table_epoch",
            "gauge",
            "Leader epoch of the cache partition table adopted here.",
            s.table_epoch,
        ),
        (
            "clustron_cache_partition_copies_total",
            "counter",
            "Partition copies sent (migrations to new owners and backups, re-syncs).",
            s.copies_sent,
        ),
        (
            "clustron_cache_partition_copy_chunks_total",
            "counter",
            "Chunks of those copies (each read when the one before was applied).",
            s.chunks_sent,
        ),
        (
            "clustron_cache_promotions_total",
            "counter",
            "Partitions this node started owning (take-overs and hand-overs).",
            s.promotions,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        let _ = writeln!(out, "{name} {value}");
    }
    type Figure = fn(&crate::cache::service::NamespaceStats) -> u64;
    let figures: [(&str, &str, &str, Figure); 10] = [
        (
            "clustron_cache_hits_total",
            "counter",
            "Gets that found a value (as owner).",
            |n| n.metrics.hits,
        ),
        (
            "clustron_cache_misses_total",
            "counter",
            "Gets that found none (as owner).",
            |n| n.metrics.misses,
        ),
        (
            "clustron_cache_evictions_total",
            "counter",
            "Entries evicted (as owner).",
            |n| n.metrics.evictions,
        ),
        (
            "clustron_cache_expirations_total",
            "counter",
            "Entries expired (as owner).",
            |n| n.metrics.expirations,
        ),
        (
            "clustron_cache_entries",
            "gauge",
            "Entries held here (owned and backed up).",
            |n| n.metrics.entries,
        ),
        (
            "clustron_cache_bytes",
            "gauge",
            "Bytes held here (owned and backed up).",
            |n| n.metrics.bytes,
        ),
        (
            "clustron_cache_owned_entries",
            "gauge",
            "Entries of partitions owned here.",
            |n| n.metrics.owned_entries,
        ),
        (
            "clustron_cache_owned_bytes",
            "gauge",
            "Bytes of partitions owned here.",
            |n| n.metrics.owned_bytes,
        ),
        (
            "clustron_cache_owned_partitions",
            "gauge",
            "Partitions owned here.",
            |n| n.owned_partitions,
        ),
        (
            "clustron_cache_backup_partitions",
            "gauge",
            "Partitions backed up here.",
            |n| n.backup_partitions,
        ),
    ];
    for (name, kind, help, figure) in figures {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for ns in &s.namespaces {
            let _ = writeln!(out, "{name}{{namespace=\"{}\"}} {}", ns.name, figure(ns));
        }
    }
}
