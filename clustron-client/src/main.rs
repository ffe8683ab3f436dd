//! `clustron`: look at and use a Clustron cluster from the command line.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use clustron_client::kv::{
    EventKind, KeyRange, KeyValue, LeaseId, PutRequest, RangeRequest, WatchRequest,
};
use clustron_client::{Change, Client, StreamItem, TopologyInfo};
use clustron_transport::TlsIdentity;
use serde_json::json;

mod cache_cli;

#[derive(Parser)]
#[command(name = "clustron", version, about = "Clustron command line")]
struct Cli {
    /// Node addresses, comma-separated.
    #[arg(
        long,
        env = "CLUSTRON_ENDPOINTS",
        value_delimiter = ',',
        required = true
    )]
    endpoints: Vec<SocketAddr>,
    /// Cluster CA certificate.
    #[arg(long, env = "CLUSTRON_CA_FILE")]
    ca_file: PathBuf,
    /// Client certificate.
    #[arg(long, env = "CLUSTRON_CERT_FILE")]
    cert_file: PathBuf,
    /// Client private key.
    #[arg(long, env = "CLUSTRON_KEY_FILE")]
    key_file: PathBuf,
    /// How long key-value commands keep retrying while no leader can serve
    /// them (an election, a partition), in seconds.
    #[arg(long, env = "CLUSTRON_TIMEOUT", default_value_t = 10.0)]
    timeout: f64,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// One row per member.
    Members {
        /// JSON array of objects.
        #[arg(long)]
        json: bool,
    },
    /// Leader, epoch and counts by state.
    Status {
        /// JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Topology changes as they happen, one line each.
    Watch {
        /// JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// Publish or follow user events.
    Events {
        #[command(subcommand)]
        command: EventsCmd,
    },
    /// The replicated key-value store.
    Kv {
        #[command(subcommand)]
        command: KvCmd,
    },
    /// The distributed cache: namespaces (create, list, drop) and entries
    /// (get, put, del, incr, ttl).
    Cache {
        #[command(subcommand)]
        command: cache_cli::CacheCmd,
    },
    /// The log's voters and learners (as the leader sees them, with each
    /// one's applied index and lag); `add` / `remove` change them, one at a
    /// time (admin role only).
    Voters {
        /// JSON array of objects (`name`, `role`, `applied_index`, `lag`).
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        command: Option<VotersCmd>,
    },
}

#[derive(Subcommand)]
enum VotersCmd {
    /// Make member NAME a voter: it must be alive and caught up (start it
    /// with the cluster's seeds; it joins as a learner). Prints the
    /// replicas once the change is decided.
    Add {
        /// The member's node name.
        name: String,
    },
    /// Make voter NAME a learner; refused if the live voters left would be
    /// no majority. Removing the leader makes it hand over first.
    Remove {
        /// The voter's node name.
        name: String,
    },
}

fn print_replicas(replicas: &[clustron_client::kv::ReplicaInfo], json: bool) -> Result<()> {
    if json {
        let rows: Vec<_> = replicas
            .iter()
            .map(|r| {
                json!({
                    "name": r.name, "role": r.role,
                    "applied_index": r.applied_index, "lag": r.lag,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!(
            "{:<12} {:<8} {:>14} {:>10}",
            "NAME", "ROLE", "APPLIED_INDEX", "LAG"
        );
        for r in replicas {
            println!(
                "{:<12} {:<8} {:>14} {:>10}",
                r.name, r.role, r.applied_index, r.lag
            );
        }
    }
    Ok(())
}

#[derive(Subcommand)]
enum KvCmd {
    /// Set KEY to VALUE (UTF-8); prints the revision.
    Put {
        /// Key.
        key: String,
        /// Value.
        value: String,
        /// Attach to this lease (it goes when the lease ends).
        #[arg(long)]
        lease: Option<u64>,
    },
    /// Print KEY (or every key under it with --prefix).
    Get {
        /// Key or prefix.
        key: String,
        /// Every key starting with KEY.
        #[arg(long)]
        prefix: bool,
        /// Read from the answering node's state (may be stale) instead of
        /// the leader's.
        #[arg(long)]
        serializable: bool,
        /// Read as of this revision.
        #[arg(long, default_value_t = 0)]
        rev: u64,
        /// Print at most N keys (0: all). Keys come in pages of about 2 MiB
        /// either way, printed as they arrive, all at one revision.
        #[arg(long, default_value_t = 0)]
        limit: u64,
        /// JSON array of objects.
        #[arg(long)]
        json: bool,
    },
    /// Delete KEY (or every key under it with --prefix); prints the count.
    Del {
        /// Key or prefix.
        key: String,
        /// Every key starting with KEY.
        #[arg(long)]
        prefix: bool,
    },
    /// Print changes to KEY (or under it) as they happen, one line each.
    Watch {
        /// Key or prefix.
        key: String,
        /// Every key starting with KEY.
        #[arg(long)]
        prefix: bool,
        /// From this revision (default: changes from now on).
        #[arg(long, default_value_t = 0)]
        rev: u64,
        /// JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// Grant a lease of TTL seconds (1 to 31536000, a year); prints its id.
    Grant {
        /// Time to live, in seconds.
        #[arg(value_parser = ttl_seconds())]
        ttl: u64,
    },
    /// Renew a lease once; prints its TTL.
    KeepAlive {
        /// Lease id.
        lease: u64,
    },
    /// End a lease and delete its keys.
    Revoke {
        /// Lease id.
        lease: u64,
    },
    /// Run COMMAND while holding the lock NAME (waiting for it first); the
    /// fencing token is in `CLUSTRON_LOCK_TOKEN`. Exits with its status.
    Lock {
        /// Lock name.
        name: String,
        /// Lease TTL in seconds: how long the lock outlives this process if
        /// it dies without releasing it.
        #[arg(long, default_value_t = 10, value_parser = ttl_seconds())]
        ttl: u64,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Run COMMAND while leading the election NAME as VALUE (waiting to be
    /// elected first); the fencing token is in `CLUSTRON_LOCK_TOKEN`.
    Campaign {
        /// Election name.
        name: String,
        /// What this candidate announces (e.g. its address).
        value: String,
        /// Lease TTL in seconds.
        #[arg(long, default_value_t = 10, value_parser = ttl_seconds())]
        ttl: u64,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Print the value of the election NAME's leader (nothing if none).
    Leader {
        /// Election name.
        name: String,
    },
}

/// Lease TTLs in seconds, as the leader grants them (1 s to a year).
fn ttl_seconds() -> clap::builder::RangedU64ValueParser<u64> {
    let (min, max) = (
        clustron_client::kv::MIN_LEASE_TTL.as_secs(),
        clustron_client::kv::MAX_LEASE_TTL.as_secs(),
    );
    clap::value_parser!(u64).range(min..=max)
}

/// Runs `command` while `lock` is held, then releases it; exits with the
/// command's status.
async fn run_holding(lock: clustron_client::Lock, command: &[String]) -> Result<()> {
    let status = tokio::process::Command::new(&command[0])
        .args(&command[1..])
        .env("CLUSTRON_LOCK_TOKEN", lock.token().to_string())
        .status()
        .await
        .with_context(|| format!("running {}", command[0]))?;
    lock.unlock().await?;
    if !status.success() {
        std::process::exit(status.code().unwrap_or(1));
    }
    Ok(())
}

fn key_range(key: String, prefix: bool) -> KeyRange {
    if prefix {
        KeyRange::Prefix(key.into_bytes())
    } else {
        KeyRange::Key(key.into_bytes())
    }
}

fn kv_json(kv: &KeyValue) -> serde_json::Value {
    json!({
        "key": String::from_utf8_lossy(&kv.key), "value": String::from_utf8_lossy(&kv.value),
        "create_revision": kv.create_revision, "mod_revision": kv.mod_revision,
        "version": kv.version, "lease": kv.lease.map(|l| l.0),
    })
}

async fn kv_command(client: &Client, command: KvCmd) -> Result<()> {
    match command {
        KvCmd::Put { key, value, lease } => {
            let (_, revision) = client
                .put_with(PutRequest {
                    key: key.into_bytes(),
                    value: value.into_bytes(),
                    lease: lease.map(LeaseId),
                    prev_kv: false,
                })
                .await?;
            println!("OK revision {revision}");
        }
        KvCmd::Get {
            key,
            prefix,
            serializable,
            rev,
            limit,
            json,
        } => {
            use std::io::Write as _;
            let request = RangeRequest {
                range: key_range(key, prefix),
                revision: rev,
                limit,
                keys_only: false,
                count_only: false,
            };
            // Page by page: memory stays bounded however large the range.
            let mut pages = client.range_pages(request, !serializable);
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let mut first = true;
            if json {
                write!(out, "[")?;
            }
            while let Some(page) = pages.next().await? {
                for kv in &page {
                    if json {
                        let comma = if first { "" } else { "," };
                        write!(out, "{comma}{}", serde_json::to_string(&kv_json(kv))?)?;
                    } else {
                        writeln!(
                            out,
                            "{}={}",
                            String::from_utf8_lossy(&kv.key),
                            String::from_utf8_lossy(&kv.value)
                        )?;
                    }
                    first = false;
                }
            }
            if json {
                writeln!(out, "]")?;
            }
            out.flush()?;
        }
        KvCmd::Del { key, prefix } => {
            println!("{}", client.delete(key_range(key, prefix)).await?);
        }
        KvCmd::Watch {
            key,
            prefix,
            rev,
            json,
        } => {
            let mut request = WatchRequest::new(key_range(key, prefix));
            request.start_revision = rev;
            let mut watch = client.watch(request).await?;
            loop {
                for event in watch.next().await? {
                    let kind = match event.kind {
                        EventKind::Put => "PUT",
                        EventKind::Delete => "DELETE",
                    };
                    if json {
                        println!("{}", json!({ "type": kind, "kv": kv_json(&event.kv) }));
                    } else {
                        println!(
                            "{kind} {}={} (revision {})",
                            String::from_utf8_lossy(&event.kv.key),
                            String::from_utf8_lossy(&event.kv.value),
                            event.kv.mod_revision
                        );
                    }
                }
            }
        }
        KvCmd::Grant { ttl } => {
            let id = client.grant(std::time::Duration::from_secs(ttl)).await?;
            println!("{}", id.0);
        }
        KvCmd::KeepAlive { lease } => {
            let ttl = client.keep_alive(LeaseId(lease)).await?;
            println!("TTL {}s", ttl.as_secs());
        }
        KvCmd::Revoke { lease } => {
            let deleted = client.revoke(LeaseId(lease)).await?;
            println!("revoked; {deleted} keys deleted");
        }
        KvCmd::Lock { name, ttl, command } => {
            let ttl = std::time::Duration::from_secs(ttl);
            run_holding(client.lock(&name, ttl).await?, &command).await?;
        }
        KvCmd::Campaign {
            name,
            value,
            ttl,
            command,
        } => {
            let ttl = std::time::Duration::from_secs(ttl);
            let leadership = client.campaign(&name, value.as_bytes(), ttl).await?;
            run_holding(leadership, &command).await?;
        }
        KvCmd::Leader { name } => {
            if let Some((value, _)) = client.leader(&name).await? {
                println!("{}", String::from_utf8_lossy(&value));
            }
        }
    }
    Ok(())
}

#[derive(Subcommand)]
enum EventsCmd {
    /// Publish PAYLOAD (UTF-8) on TOPIC.
    Publish {
        /// Topic.
        topic: String,
        /// Payload.
        payload: String,
    },
    /// Print events of TOPIC as they arrive.
    Subscribe {
        /// Topic.
        topic: String,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(cli))
}

fn leader_name(topology: &TopologyInfo) -> Option<&str> {
    topology.leader.as_ref().map(|(name, _)| name.as_str())
}

async fn run(cli: Cli) -> Result<()> {
    anyhow::ensure!(
        cli.timeout.is_finite() && cli.timeout >= 0.0,
        "--timeout must be a number of seconds, not {}",
        cli.timeout
    );
    let identity = TlsIdentity::from_files(&cli.ca_file, &cli.cert_file, &cli.key_file)
        .context("loading the client certificate")?;
    let client = Client::new(cli.endpoints, identity)?
        .with_retry_for(std::time::Duration::from_secs_f64(cli.timeout));
    match cli.command {
        Cmd::Voters { json, command } => {
            let replicas = match command {
                None => client.voters().await?,
                Some(VotersCmd::Add { name }) => client.add_voter(&name).await?,
                Some(VotersCmd::Remove { name }) => client.remove_voter(&name).await?,
            };
            print_replicas(&replicas, json)?;
        }
        Cmd::Members { json } => {
            let topology = client.topology().await?;
            let leader = leader_name(&topology);
            if json {
                let rows: Vec<_> = topology
                    .members
                    .iter()
                    .map(|m| {
                        json!({
                            "name": m.name, "addr": m.addr.to_string(), "state": m.state,
                            "voter": m.voter, "leader": Some(m.name.as_str()) == leader,
                            "priority": m.priority, "incarnation": m.incarnation, "tags": m.tags,
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!(
                    "{:<12} {:<22} {:<8} {:<6} {:<6} {:>8}",
                    "NAME", "ADDRESS", "STATE", "VOTER", "LEADER", "PRIORITY"
                );
                for m in &topology.members {
                    let is_leader = if Some(m.name.as_str()) == leader {
                        "*"
                    } else {
                        ""
                    };
                    println!(
                        "{:<12} {:<22} {:<8} {:<6} {:<6} {:>8}",
                        m.name,
                        m.addr.to_string(),
                        m.state,
                        m.voter,
                        is_leader,
                        m.priority
                    );
                }
            }
        }
        Cmd::Status { json } => {
            let topology = client.topology().await?;
            let count = |state: &str| topology.members.iter().filter(|m| m.state == state).count();
            let counts = json!({
                "alive": count("alive"), "suspect": count("suspect"), "dead": count("dead"), "left": count("left"),
            });
            let (leader, epoch) = match &topology.leader {
                Some((name, epoch)) => (Some(name.clone()), Some(*epoch)),
                None => (None, None),
            };
            if json {
                println!(
                    "{}",
                    json!({ "leader": leader, "epoch": epoch, "members": counts })
                );
            } else {
                println!("leader: {}", leader.as_deref().unwrap_or("none"));
                println!(
                    "epoch:  {}",
                    epoch.map_or("-".to_owned(), |e| e.to_string())
                );
                println!("members: {counts}");
            }
        }
        Cmd::Watch { json } => {
            let mut watch = client.watch_topology();
            loop {
                let item = watch.next().await?;
                if json {
                    println!("{}", serde_json::to_string(&item_json(&item))?);
                    continue;
                }
                match item {
                    StreamItem::Snapshot { topology, fresh } => println!(
                        "snapshot v{} from {}{}: {} members, leader {}",
                        topology.version,
                        topology.node,
                        if fresh { " (fresh)" } else { "" },
                        topology.members.len(),
                        leader_name(&topology).unwrap_or("none")
                    ),
                    StreamItem::Delta {
                        version,
                        change: Change::Member(m),
                    } => {
                        println!("v{version}: {} {} ({})", m.name, m.state, m.addr)
                    }
                    StreamItem::Delta {
                        version,
                        change: Change::Leader(l),
                    } => match l {
                        Some((name, epoch)) => println!("v{version}: leader {name} epoch {epoch}"),
                        None => println!("v{version}: no leader"),
                    },
                    StreamItem::Event { .. }
                    | StreamItem::Error(_)
                    | StreamItem::KvEvents(_)
                    | StreamItem::KvEventsPart(_)
                    | StreamItem::CacheEvents(_)
                    | StreamItem::WatchCancelled(_) => {}
                }
            }
        }
        Cmd::Kv { command } => kv_command(&client, command).await?,
        Cmd::Cache { command } => cache_cli::run(&client, command).await?,
        Cmd::Events {
            command: EventsCmd::Publish { topic, payload },
        } => {
            let (origin, seq) = client.publish(&topic, payload.into_bytes()).await?;
            println!("published on {origin} as #{seq}");
        }
        Cmd::Events {
            command: EventsCmd::Subscribe { topic },
        } => {
            let mut events = client.subscribe(&topic).await?;
            while let Some(item) = events.next().await {
                if let StreamItem::Event {
                    origin,
                    seq,
                    topic,
                    payload,
                    ..
                } = item
                {
                    println!(
                        "{topic} {origin}#{seq} {}",
                        String::from_utf8_lossy(&payload)
                    );
                }
            }
        }
    }
    Ok(())
}

fn item_json(item: &StreamItem) -> serde_json::Value {
    match item {
        StreamItem::Snapshot { topology, fresh } => json!({
            "snapshot": { "version": topology.version, "node": topology.node, "fresh": fresh,
                "leader": topology.leader, "members": topology.members.iter().map(|m| json!({"name": m.name, "state": m.state})).collect::<Vec<_>>() }
        }),
        StreamItem::Delta {
            version,
            change: Change::Member(m),
        } => {
            json!({ "version": version, "member": m.name, "state": m.state, "addr": m.addr.to_string() })
        }
        StreamItem::Delta {
            version,
            change: Change::Leader(l),
        } => json!({ "version": version, "leader": l }),
        StreamItem::Event {
            origin, seq, topic, ..
        } => json!({ "event": topic, "origin": origin, "seq": seq }),
        StreamItem::Error(reason) => json!({ "error": reason }),
        StreamItem::KvEvents(events) | StreamItem::KvEventsPart(events) => {
            json!({ "kv_events": events.len() })
        }
        StreamItem::WatchCancelled(reason) => json!({ "watch_cancelled": reason.to_string() }),
        StreamItem::CacheEvents(events) => json!({ "cache_events": events.len() }),
    }
}
