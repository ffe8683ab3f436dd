//! A running node: transport, membership, election, event bus and the
//! key-value server, the admin HTTP server, and a graceful stop.
//!
//! The platform layers are assembled by `clustron-node` (the one recipe);
//! this file adds what DKV needs around it: the store opened before
//! anything joins, its promise hook and high-water mark given to the
//! election, then the key-value server, the client protocol and the admin
//! port.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clustron_election::{Election, LeadershipEvent, Notification};
use clustron_events::EventBus;
use clustron_membership::Membership;
use clustron_node::{Elect, NodeBuilder};
use clustron_transport::{Endpoint, TlsIdentity};
use tokio::sync::watch;

use crate::admin;
use crate::cache::resp::{RespConfig, RespListener};
use crate::cache::service::{Cache, Drained, NodeBackend};
use crate::config::NodeConfig;
use crate::core::server::ServerConfig;
use crate::kv_driver::{Kv, OpenStore};

/// How long a graceful stop waits for the cache's partitions to be handed
/// over before leaving anyway.
const CACHE_DRAIN: std::time::Duration = std::time::Duration::from_secs(10);

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
    /// The distributed cache (always set once [`start`] returns).
    pub cache: watch::Receiver<Option<Cache>>,
    /// Leadership changes seen since start.
    pub leadership_changes: Arc<AtomicU64>,
    /// What keeps this node from ever being ready, in words (for
    /// `/readyz`), if anything: today, no voters configured.
    pub waiting_for: watch::Receiver<String>,
    /// The platform layers, for the graceful stop.
    platform: clustron_node::Node,
}

/// Starts a node from `config`.
///
/// The order matters. The key-value store opens first: a node that cannot
/// open it fails here, before it joins the cluster (the binary exits
/// non-zero naming the file), so it never holds up an election as the
/// highest-priority candidate that never campaigns. It also opens before
/// the election starts: the election's promise hook is the log's fence, so
/// even the first grant carries the log's durable summary. Then
/// `clustron-node` binds, joins and starts the election at once: voters are
/// configured by name, and each one's address comes from membership when
/// it is heard of, so any majority of the configured voters elects whether
/// or not the others ever started.
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
    let kv_dir = config.data_dir.join("kv");
    let store = OpenStore::open(&kv_dir)
        .with_context(|| format!("opening the key-value store in {}", kv_dir.display()))?;
    let elect = Elect::voters(&config.voters)?
        .priority(config.priority)
        .data_dir(config.data_dir.join("election"))
        .promise_hook(Arc::new(store.fence()))
        // A log that lost acknowledged entries must not vote or lead until
        // it has caught up (the key-value server rejoins then).
        .withdrawn(store.lost_tail());
    let platform = NodeBuilder::new(identity)
        .listen(config.listen)
        .seeds(config.seeds.iter().copied())
        .elect(elect)
        .events(Default::default())
        .start()
        .await?;
    let (Some(election), Some(bus)) = (platform.election(), platform.events()) else {
        bail!("the node was built without its election or event bus");
    };
    let (endpoint, membership) = (platform.endpoint(), platform.membership());

    let leadership_changes = Arc::new(AtomicU64::new(0));
    let mut changes = election.subscribe();
    let counter = leadership_changes.clone();
    tokio::spawn(async move {
        while let Some(note) = changes.recv().await {
            if let Notification::Event(LeadershipEvent::Leader { name, epoch }) = note {
                tracing::info!(leader = %name, epoch = epoch.0, "leader");
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    // The voters with the addresses known at start; the others are learned
    // from membership later.
    let voter_addrs = election
        .voters()
        .voters()
        .iter()
        .map(|v| (v.name.clone(), v.addr))
        .collect();
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
        retain_bytes: config.retain_bytes,
        snapshot_entries: config.snapshot_entries,
        limits: crate::core::mvcc::Limits {
            max_value: config.max_value_bytes,
            ..Default::default()
        },
        ..ServerConfig::default()
    };
    let kv = Kv::start(
        endpoint,
        membership,
        election,
        store,
        voter_addrs,
        kv_config,
    )
    .await
    .context("starting the key-value store")?;
    let cache = Cache::start(endpoint, membership, election, &kv).context("starting the cache")?;
    if let Some(listen) = config.resp_listen {
        let resp = match config.resp_insecure {
            true => RespConfig::insecure(listen),
            false => RespConfig::tls(
                listen,
                TlsIdentity::from_files(&config.ca_file, &config.cert_file, &config.key_file)
                    .context("loading certificates for the RESP port")?,
            ),
        };
        let listener = RespListener::bind(resp).await?;
        let backend = Arc::new(NodeBackend::new(
            cache.clone(),
            config.resp_namespace.clone(),
        ));
        tracing::info!(addr = %listen, namespace = %config.resp_namespace, "serving the Redis protocol");
        tokio::spawn(listener.serve(backend, std::future::pending()));
    }
    let node = Node {
        endpoint: endpoint.clone(),
        membership: membership.clone(),
        election: watch::channel(Some(election.clone())).1,
        bus: watch::channel(Some(bus.clone())).1,
        kv: watch::channel(Some(kv)).1,
        cache: watch::channel(Some(cache)).1,
        leadership_changes,
        waiting_for: watch::channel(no_voters.unwrap_or_default()).1,
        platform: platform.clone(),
    };
    crate::serve::start(&node).context("serving clients")?;
    if let Some(addr) = config.admin_listen {
        admin::serve(addr, node.clone()).await?;
    }
    Ok(node)
}

impl Node {
    /// Hands the cache's partitions over ([`Cache::drain`]), gives
    /// leadership away if held (and waits briefly for the successor),
    /// leaves the cluster, closes the port: [`clustron_node::Node::leave`].
    pub async fn stop(&self) {
        // The cache's partitions are handed over first (the leader leaves
        // this node out of its tables), then the platform leaves.
        let cache = self.cache.borrow().clone();
        if let Some(cache) = cache {
            match cache.drain(&self.membership, CACHE_DRAIN).await {
                Drained::HandedOver => tracing::info!("cache partitions handed over"),
                Drained::Alone => {
                    tracing::info!("no member stays to take the cache partitions; leaving")
                }
                Drained::TimedOut => tracing::warn!(
                    "cache partitions not all handed over within {CACHE_DRAIN:?}; leaving anyway (backups take them over)"
                ),
            }
        }
        self.platform.leave().await;
    }
}
