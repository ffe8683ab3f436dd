//! `clustron`: look at and use a Clustron cluster from the command line.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use clustron_client::{Change, Client, StreamItem, TopologyInfo};
use clustron_transport::TlsIdentity;
use serde_json::json;

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
    let identity = TlsIdentity::from_files(&cli.ca_file, &cli.cert_file, &cli.key_file)
        .context("loading the client certificate")?;
    let client = Client::new(cli.endpoints, identity)?;
    match cli.command {
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
                    StreamItem::Event { .. } | StreamItem::Error(_) => {}
                }
            }
        }
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
    }
}
