//! A running node: transport, membership, election, event bus and the
//! key-value server, the admin HTTP server, and a graceful stop.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clustron_election::{Election, LeadershipEvent, Voter, VoterSet};
use clustron_events::EventBus;
use clustron_membership::{Membership, NodeName, Options as MembershipOptions};
use clustron_transport::{Endpoint, TlsIdentity, TransportConfig};
use tokio::sync::watch;

use crate::admin;
use crate::config::NodeConfig;
use crate::core::server::ServerConfig;
use crate::kv_driver::{Kv, OpenStore};

/// The parts of a running node the admin server and the stop sequence use.
#[derive(Clone)]
pub struct Node {
    /// The transport.
    pub endpoint: Endpoint,
    /// Membership.
    pub membership: Membership,
    /// The election, once every voter's address is known.
    pub election: watch::Receiver<Option<Election>>,
    /// The event bus, started with the election.
    pub bus: watch::Receiver<Option<EventBus>>,
    /// The key-value server, started with the election.
    pub kv: watch::Receiver<Option<Kv>>,
    /// Leadership changes seen since start.
    pub leadership_changes: Arc<AtomicU64>,
    /// Until the election starts: what it waits for, in words (for
    /// `/readyz` and the log).
    pub waiting_for: watch::Receiver<String>,
}

/// Starts a node from `config`.
pub async fn start(config: &NodeConfig) -> Result<Node> {
    let identity = TlsIdentity::from_files(&config.ca_file, &config.cert_file, &config.key_file)
        .context("loading certificates")?;
    if identity.identity().name.as_str() != config.name {
        bail!(
            "the certificate {} is for {}, not for the configured name {}",
            config.cert_file.display(),
            identity.identity().name,
            config.name
        );
    }
    let endpoint = Endpoint::bind(TransportConfig::new(config.listen), identity)
        .with_context(|| format!("listening on {}", config.listen))?;
    let is_voter = config.voters.contains(&config.name);
    let membership = Membership::start(
        &endpoint,
        MembershipOptions {
            seeds: config.seeds.clone(),
            priority: config.priority,
            voter: is_voter,
            ..MembershipOptions::default()
        },
    )
    .await
    .context("joining the cluster")?;
    tracing::info!(name = %config.name, addr = %endpoint.local_addr(), "joined");

    let (election_tx, election) = watch::channel(None);
    let (bus_tx, bus) = watch::channel(None);
    let (kv_tx, kv) = watch::channel(None);
    let leadership_changes = Arc::new(AtomicU64::new(0));
    let (waiting_tx, waiting_for) = watch::channel(String::new());
    let node = Node {
        endpoint: endpoint.clone(),
        membership: membership.clone(),
        election,
        bus,
        kv,
        leadership_changes: leadership_changes.clone(),
        waiting_for,
    };
    let voters: Vec<NodeName> = config
        .voters
        .iter()
        .filter_map(|v| NodeName::new(v).ok())
        .collect();
    let data_dir = config.data_dir.join("election");
    let kv_dir = config.data_dir.join("kv");
    let kv_config = ServerConfig {
        watch: crate::core::watch::WatchLimits {
            stall_timeout: config.watch_stall_timeout,
            ..Default::default()
        },
        retain_revisions: config.retain_revisions,
        limits: crate::core::mvcc::Limits {
            max_value: config.max_value_bytes,
            ..Default::default()
        },
        ..ServerConfig::default()
    };
    tokio::spawn(async move {
        // The election needs every voter's address: wait for membership to
        // know them all (alive or not), saying what is missing.
        if voters.is_empty() {
            let why = "no voters configured: this node cannot elect or follow a leader; give \
                       every node the same --voters (CLUSTRON_VOTERS, or `voters = [...]` in the \
                       config file)";
            tracing::error!("{why}");
            waiting_tx.send_replace(why.to_owned());
            return;
        }
        let mut told: Option<tokio::time::Instant> = None;
        let set = loop {
            if let Ok(members) = membership.members().await {
                let known: BTreeMap<&NodeName, _> =
                    members.iter().map(|m| (&m.name, m.addr)).collect();
                if voters.iter().all(|v| known.contains_key(v)) {
                    break VoterSet::new(voters.iter().map(|v| Voter {
                        name: v.clone(),
                        addr: known[v],
                    }));
                }
                let missing: Vec<&str> = voters
                    .iter()
                    .filter(|v| !known.contains_key(v))
                    .map(|v| v.as_str())
                    .collect();
                let why = format!(
                    "waiting for membership to see voter(s) {} (started? reachable through --seeds?)",
                    missing.join(", ")
                );
                // Once at start, then every 10 s while it lasts.
                match told {
                    None => tracing::info!("{why}"),
                    Some(at) if at.elapsed() >= Duration::from_secs(10) => tracing::warn!("{why}"),
                    Some(_) => {}
                }
                if told.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
                    told = Some(tokio::time::Instant::now());
                }
                waiting_tx.send_replace(why);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        waiting_tx.send_replace(String::new());
        let voter_addrs: Vec<(NodeName, std::net::SocketAddr)> = set
            .voters()
            .iter()
            .map(|v| (v.name.clone(), v.addr))
            .collect();
        // The key-value log, opened first: its fence goes to the election
        // (a grant carries the log's durable summary as of the promise).
        let store = match OpenStore::open(&kv_dir) {
            Ok(store) => store,
            Err(e) => {
                tracing::error!(error = %e, "cannot open the key-value store");
                return;
            }
        };
        let options = clustron_election::Options {
            config: clustron_election::Config::lan(),
            voters: set,
            data_dir,
            hook: Some(Arc::new(store.fence())),
        };
        let election = match Election::start(&endpoint, &membership, options).await {
            Ok(election) => election,
            Err(e) => {
                tracing::error!(error = %e, "cannot start the election");
                return;
            }
        };
        let mut changes = election.subscribe();
        tokio::spawn(async move {
            while let Ok(event) = changes.recv().await {
                if let LeadershipEvent::Leader { name, epoch } = event {
                    tracing::info!(leader = %name, epoch = epoch.0, "leader");
                    leadership_changes.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        match EventBus::start(&endpoint, &membership, Some(&election), Default::default()).await {
            Ok(bus) => {
                let _ = bus_tx.send(Some(bus));
            }
            Err(e) => tracing::error!(error = %e, "cannot start the event bus"),
        }
        match Kv::start(
            &endpoint,
            &membership,
            &election,
            store,
            voter_addrs,
            kv_config,
        )
        .await
        {
            Ok(kv) => {
                let _ = kv_tx.send(Some(kv));
            }
            Err(e) => tracing::error!(error = %e, "cannot start the key-value store"),
        }
        let _ = election_tx.send(Some(election));
    });
    crate::serve::start(&node).context("serving clients")?;
    if let Some(addr) = config.admin_listen {
        admin::serve(addr, node.clone()).await?;
    }
    Ok(node)
}

impl Node {
    /// Gives leadership away if held, leaves the cluster, closes the port.
    pub async fn stop(&self) {
        let election = self.election.borrow().clone();
        if let Some(election) = election {
            if election.lease().is_some() {
                tracing::info!("handing leadership over before leaving");
                let _ = election.step_down().await;
            }
            election.shutdown().await;
        }
        let bus = self.bus.borrow().clone();
        if let Some(bus) = bus {
            bus.shutdown().await;
        }
        if let Err(e) = tokio::time::timeout(Duration::from_secs(3), self.membership.leave()).await
        {
            tracing::warn!(error = %e, "leave did not complete in time");
        }
        self.endpoint.close().await;
    }
}
