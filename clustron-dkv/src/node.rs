//! A running node: transport, membership, election, event bus and the
//! key-value server, the admin HTTP server, and a graceful stop.

use std::collections::BTreeMap;
use std::net::SocketAddr;
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
    /// The election (always set once [`start`] returns).
    pub election: watch::Receiver<Option<Election>>,
    /// The event bus (always set once [`start`] returns).
    pub bus: watch::Receiver<Option<EventBus>>,
    /// The key-value server (always set once [`start`] returns).
    pub kv: watch::Receiver<Option<Kv>>,
    /// Leadership changes seen since start.
    pub leadership_changes: Arc<AtomicU64>,
    /// What keeps this node from ever being ready, in words (for
    /// `/readyz`), if anything: today, no voters configured.
    pub waiting_for: watch::Receiver<String>,
}

/// Starts a node from `config`.
///
/// The order matters. The key-value store opens first: a node that cannot
/// open it fails here, before it joins the cluster (the binary exits
/// non-zero naming the file), so it never holds up an election as the
/// highest-priority candidate that never campaigns. Then membership, and
/// the election at once: voters are configured by name, and each one's
/// address comes from membership when it is heard of, so any majority of
/// the configured voters elects whether or not the others ever started.
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
    // The key-value log, opened first (above), and before the election: its
    // fence goes to the election, so a grant carries the log's durable
    // summary as of the promise.
    let kv_dir = config.data_dir.join("kv");
    let store = OpenStore::open(&kv_dir)
        .with_context(|| format!("opening the key-value store in {}", kv_dir.display()))?;
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

    let leadership_changes = Arc::new(AtomicU64::new(0));
    // Addresses known now; the others are learned from membership later.
    let known: BTreeMap<NodeName, SocketAddr> = membership
        .members()
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|m| (m.name, m.addr))
        .collect();
    let voters = VoterSet::new(
        config
            .voters
            .iter()
            .filter_map(|v| NodeName::new(v).ok())
            .map(|name| match known.get(&name) {
                Some(addr) => Voter { name, addr: *addr },
                None => Voter::unaddressed(name),
            }),
    );
    let voter_addrs: Vec<(NodeName, SocketAddr)> = voters
        .voters()
        .iter()
        .map(|v| (v.name.clone(), v.addr))
        .collect();
    let options = clustron_election::Options {
        config: clustron_election::Config::lan(),
        voters,
        data_dir: config.data_dir.join("election"),
        hook: Some(Arc::new(store.fence())),
        // A log that lost acknowledged entries must not vote or lead until
        // it has caught up (the key-value server rejoins then).
        withdrawn: store.lost_tail(),
    };
    let election = Election::start(&endpoint, &membership, options)
        .await
        .context("starting the election")?;
    let mut changes = election.subscribe();
    let counter = leadership_changes.clone();
    tokio::spawn(async move {
        while let Ok(event) = changes.recv().await {
            if let LeadershipEvent::Leader { name, epoch } = event {
                tracing::info!(leader = %name, epoch = epoch.0, "leader");
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    let bus = EventBus::start(&endpoint, &membership, Some(&election), Default::default())
        .await
        .context("starting the event bus")?;
    // Without voters this node can neither elect nor follow a leader: say
    // so at start and on /readyz, rather than stay silently not ready.
    let no_voters = config.voters.is_empty().then(|| {
        let why = "no voters configured: this node cannot elect or follow a leader; give every \
                   node the same --voters (CLUSTRON_VOTERS, or `voters = [...]` in the config file)";
        tracing::error!("{why}");
        why.to_owned()
    });
    let kv_config = ServerConfig {
        watch: crate::core::watch::WatchLimits {
            stall_timeout: config.watch_stall_timeout,
            ..Default::default()
        },
        retain_revisions: config.retain_revisions,
        snapshot_entries: config.snapshot_entries,
        limits: crate::core::mvcc::Limits {
            max_value: config.max_value_bytes,
            ..Default::default()
        },
        ..ServerConfig::default()
    };
    let kv = Kv::start(
        &endpoint,
        &membership,
        &election,
        store,
        voter_addrs,
        kv_config,
    )
    .await
    .context("starting the key-value store")?;
    let node = Node {
        endpoint: endpoint.clone(),
        membership: membership.clone(),
        election: watch::channel(Some(election)).1,
        bus: watch::channel(Some(bus)).1,
        kv: watch::channel(Some(kv)).1,
        leadership_changes,
        waiting_for: watch::channel(no_voters.unwrap_or_default()).1,
    };
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
