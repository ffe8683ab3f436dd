//! A near cache: a bounded local copy of one cache namespace's values,
//! invalidated by the owners' entry events.
//!
//! ```text
//!   get(k) ──► local copy? ── yes ─► value (no round trip)
//!                  └─ no ─► cluster get ─► kept if no event came meanwhile
//!   every live member ──CacheEvents──► drop the keys they name
//!   a stream ends, a member changes ──► drop everything, subscribe again
//! ```
//!
//! What it promises: a value is served locally only while the client is
//! subscribed to the events of every member it knows of; a change made
//! anywhere reaches the copy after one event delivery (the owner sends the
//! event when it applies the change, before its backups acknowledge; the
//! measured delay is in the cache test). A value fetched while an event
//! arrived is not kept (it may predate the event). When a member's stream
//! ends (the node failed or lagged) or the membership changes (a member
//! joined or left, so partitions may move to a node whose events are not
//! followed yet), the copy is dropped whole and filled again only once the
//! new subscriptions are in place. What it does not promise: a write made
//! in the instant between a member joining and the client seeing the join
//! may be missed until the client sees it (the copy is then dropped); the
//! window is the membership's propagation delay.
//!
//! Bounded by entry count; when full the oldest kept entry goes first.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::{Client, ClientError, StreamItem};
use clustron_dkv::proto::Change;

/// A near cache's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NearStats {
    /// Gets answered from the local copy.
    pub hits: u64,
    /// Gets that went to the cluster.
    pub misses: u64,
    /// Entries dropped by an event.
    pub invalidations: u64,
    /// Times the whole copy was dropped (a stream ended, membership changed).
    pub clears: u64,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<Vec<u8>, Vec<u8>>,
    order: VecDeque<Vec<u8>>,
    /// Subscribed to every known member: the copy may be used.
    live: bool,
    /// Bumped by every event and every clear: a fetch is kept only if it
    /// did not move while the fetch ran.
    changes: u64,
    stats: NearStats,
}

impl Inner {
    fn clear(&mut self) {
        self.entries.clear();
        self.order.clear();
        self.changes += 1;
        self.stats.clears += 1;
    }
}

/// A bounded local copy of one namespace; see the module doc.
#[derive(Debug)]
pub struct NearCache {
    client: Client,
    namespace: String,
    max_entries: usize,
    inner: Arc<Mutex<Inner>>,
    follower: tokio::task::JoinHandle<()>,
}

impl Drop for NearCache {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

impl NearCache {
    /// A near cache of `namespace` holding at most `max_entries` values
    /// (at least 1). It follows the members in the background; until it
    /// is subscribed every get goes to the cluster.
    pub fn new(client: Client, namespace: &str, max_entries: usize) -> NearCache {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let follower = tokio::spawn(follow(client.clone(), namespace.to_owned(), inner.clone()));
        NearCache {
            client,
            namespace: namespace.to_owned(),
            max_entries: max_entries.max(1),
            inner,
            follower,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every change under the lock leaves the maps consistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the copy is in use (subscribed to every known member).
    pub fn is_live(&self) -> bool {
        self.lock().live
    }

    /// The counters.
    pub fn stats(&self) -> NearStats {
        self.lock().stats
    }

    /// The value of `key`: from the local copy when it holds it, else from
    /// the cluster (and kept).
    pub async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, ClientError> {
        let before = {
            let mut inner = self.lock();
            if inner.live {
                if let Some(value) = inner.entries.get(key).cloned() {
                    inner.stats.hits += 1;
                    return Ok(Some(value));
                }
            }
            inner.stats.misses += 1;
            inner.changes
        };
        let value = self
            .client
            .cache_get(&self.namespace, key)
            .await?
            .map(|v| v.value);
        let mut inner = self.lock();
        if let (true, true, Some(value)) = (inner.live, inner.changes == before, &value) {
            if inner.entries.insert(key.to_vec(), value.clone()).is_none() {
                inner.order.push_back(key.to_vec());
            }
            while inner.entries.len() > self.max_entries {
                let Some(oldest) = inner.order.pop_front() else {
                    break;
                };
                inner.entries.remove(&oldest);
            }
        }
        Ok(value)
    }

    /// Stores a value through the cluster and drops the local copy of it
    /// (the next get fetches it: the event of this write may still be on
    /// its way).
    pub async fn put(
        &self,
        key: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<u64, ClientError> {
        let result = self
            .client
            .cache_put(&self.namespace, key, value, ttl)
            .await;
        self.forget(key);
        result
    }

    /// Deletes through the cluster and drops the local copy.
    pub async fn delete(&self, key: &[u8]) -> Result<bool, ClientError> {
        let result = self.client.cache_delete(&self.namespace, key).await;
        self.forget(key);
        result
    }

    fn forget(&self, key: &[u8]) {
        let mut inner = self.lock();
        inner.changes += 1;
        inner.entries.remove(key);
    }
}

/// Subscribes to every live member's events and drops what they name;
/// starts over (dropping everything) when a stream ends or a member
/// changes.
async fn follow(client: Client, namespace: String, inner: Arc<Mutex<Inner>>) {
    let lock = || inner.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        {
            let mut inner = lock();
            inner.live = false;
            inner.clear();
        }
        let members: Vec<SocketAddr> = match client.topology().await {
            Ok(topology) => topology
                .members
                .iter()
                .filter(|m| m.state == "alive" || m.state == "suspect")
                .map(|m| m.addr)
                .collect(),
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let mut topology = client.watch_topology();
        // The first item is the snapshot the deltas follow.
        if topology.next().await.is_err() {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let mut events = match client.cache_events_from(&namespace, &members).await {
            Ok(events) => events,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        lock().live = true;
        loop {
            tokio::select! {
                batch = events.next() => match batch {
                    Some(Ok(batch)) => {
                        let mut inner = lock();
                        inner.changes += 1;
                        for event in batch {
                            if inner.entries.remove(&event.key).is_some() {
                                inner.stats.invalidations += 1;
                            }
                        }
                    }
                    Some(Err(_)) | None => break,
                },
                item = topology.next() => match item {
                    Ok(StreamItem::Delta { change: Change::Member(_), .. })
                    | Ok(StreamItem::Snapshot { .. })
                    | Err(_) => break,
                    Ok(_) => {}
                },
            }
        }
    }
}
