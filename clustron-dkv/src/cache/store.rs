//! One node's part of one cache namespace, sans-IO: the entries of every
//! partition the node owns or backs up, with eviction, expiry and the
//! changes that keep backups identical to the owner.
//!
//! ```text
//!   owner                                        backup
//!   ─────                                        ──────
//!   apply(p, op, now) ──► reply                   apply_change(change)
//!        │            └─► changes ──(driver)───►       │ Ok: same state
//!        │            └─► events (to subscribers)       │ Err(Gap): resync
//!   expire(now, budget) ─► changes, events              ▼
//!   export_chunk(p, ..) ─────────(driver)──────► import_chunk(chunk)
//! ```
//!
//! # Consistency: the owner decides
//!
//! Only the partition's owner runs operations. It decides everything that
//! depends on time or on its own bookkeeping (whether a key has expired or
//! been idle too long, which entry to evict, the next version) and
//! replicates the **resulting state** of each key it changed, never the
//! operation: a [`Change`] is "key k now holds this (value, version,
//! expiry)" or "key k is gone". A backup applies changes without deciding
//! anything, so it cannot drift from the owner: it does not expire or evict
//! on its own, and it has no access clock. After the same changes a backup
//! holds exactly the owner's entries ([`NamespaceStore::partition_state`]
//! compares them in tests).
//!
//! Changes are numbered per partition by the owner. A position is the
//! `(term, seq)` of the last change applied, where `term` identifies one
//! owner's stint (the driver passes the table version at which the node
//! became owner; it must be unique per stint and grow). Each change names
//! the term of the position it follows (`prev_term`), as Raft's log
//! matching does, so a backup accepts a change only if it holds exactly the
//! state the change was computed from: a backup that missed a change, or
//! that applied changes of a failed owner that the new owner never saw,
//! gets a [`ReplicaError::Gap`] and must be re-synced with an export of the
//! owner's partition. A promoted backup continues from its own position.
//!
//! # What the driver promises (sync and async backups)
//!
//! With **synchronous** backups the driver acknowledges a write only after
//! every backup of the partition has applied the write's changes (in
//! memory: nothing here is durable). Then the first backup, which the
//! partition table makes owner when the owner fails, holds every
//! acknowledged write, and at most `backups` simultaneous failures lose
//! nothing acknowledged. With **asynchronous** backups the driver answers
//! at once and sends the changes afterwards: a failure of the owner loses
//! the writes its first backup had not yet received. In both modes the
//! owner's own reads see its writes at once (a single owner per table
//! version), and replies to writes that were not acknowledged may or may
//! not have been applied.
//!
//! A **planned cut-over** (the old owner is live: a join, a graceful leave,
//! a balance move) must not lose even asynchronous writes: the old owner
//! stops serving the partition ([`NamespaceStore::demote`]), its changes
//! still in flight reach the new owner, and only then is the new owner
//! promoted ([`NamespaceStore::promote`] with a new term). Skipping the
//! middle step loses those writes (the simulation test shows it).
//!
//! # Bounds
//!
//! The owner bounds the entries of the partitions it **owns** by
//! `max_entries / (1 + backups)` and `max_memory / (1 + backups)`: the
//! node's backups of other owners' partitions take the rest, so with a
//! balanced table a node holds about `max_memory` in all. An entry counts
//! its key, its value and [`ENTRY_OVERHEAD`] bytes. Over either bound the
//! owner evicts, least recently used first ([`Eviction::Lru`]) or least
//! frequently used with dynamic ageing ([`Eviction::Lfu`], LFU-DA: an
//! entry's priority is its access count plus the priority of the last
//! entry evicted when it was last touched, so a key that was hot long ago
//! is evicted once the newer keys' priorities pass it). An entry already
//! past its TTL or max-idle but not yet swept goes first, as an expiry.
//! Evictions are changes like any other, so backups drop the same entries.
//!
//! Expiry is lazy (an access to an expired or idle entry removes it) plus
//! [`NamespaceStore::expire`], a sweep bounded per call. Max-idle counts
//! from the last access **on this owner**: backups do not see reads, so a
//! promoted backup starts every idle clock afresh at its promotion. Time
//! is the caller's `now_ms` (milliseconds on the owner's clock; expiry
//! instants travel as absolute times, so a promoted backup with a skewed
//! clock expires early or late by the skew). A `now_ms` lower than one
//! seen before is taken as the earlier one: the store's clock never goes
//! back.
//!
//! # Example
//!
//! ```
//! use clustron_dkv::cache::{partition_of, CacheOp, CacheReply, PutCondition};
//! use clustron_dkv::cache::store::{NamespaceConfig, NamespaceStore};
//!
//! let config = NamespaceConfig::default().validate().unwrap();
//! let mut owner = NamespaceStore::new(config.clone());
//! let mut backup = NamespaceStore::new(config);
//! let p = partition_of(b"k");
//! owner.create_partition(p, 1);
//! backup.open_backup(p);
//!
//! let put = CacheOp::Put { key: b"k".to_vec(), value: b"v".to_vec(), ttl_ms: None,
//!     condition: PutCondition::Always, keep_ttl: false, return_old: false };
//! let applied = owner.apply(p, &put, 1_000);
//! assert!(matches!(applied.reply, Ok(CacheReply::Stored { stored: true, version: 1, .. })));
//! for change in applied.changes {
//!     backup.apply_change(change).unwrap();
//! }
//! assert_eq!(owner.partition_state(p), backup.partition_state(p));
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{CacheError, CacheOp, CacheReply, PutCondition, TtlState, Versioned};

pub use super::namespace::{ConfigError, Eviction, NamespaceConfig, ENTRY_OVERHEAD};
pub use super::{CacheEvent, EventKind};

/// A key's state as replicated: what a backup stores.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryState {
    /// The value.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// Its version (1 when created, +1 at every change).
    pub version: u64,
    /// When it expires, in milliseconds on the owner's clock; `None`:
    /// never (max-idle aside).
    pub expire_at_ms: Option<u64>,
}

/// A position in a partition's history: the last change applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Position {
    /// The term (ownership stint) of the owner that made the change.
    pub term: u64,
    /// The change's number; 0: none (an empty partition).
    pub seq: u64,
}

/// One key's new state, from the owner to the partition's backups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// The partition.
    pub partition: u32,
    /// The term of the change this one follows (see the module doc).
    pub prev_term: u64,
    /// The owner's term.
    pub term: u64,
    /// The change's number in the partition: the previous one's + 1.
    pub seq: u64,
    /// The key.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// Its state now; `None`: removed.
    pub state: Option<EntryState>,
}

/// The outcome of [`NamespaceStore::apply`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct Applied {
    /// The reply to the caller.
    pub reply: Result<CacheReply, CacheError>,
    /// The changes to send to the partition's backups, in order (the
    /// operation's own, then evictions and lazy expiries it caused; empty if
    /// nothing changed).
    pub changes: Vec<Change>,
    /// The entry events, in order.
    pub events: Vec<CacheEvent>,
}

/// Changes and events made outside an operation (sweeps, promotion).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[must_use]
pub struct Effects {
    /// The changes to send to the backups, in order. They may concern
    /// several partitions.
    pub changes: Vec<Change>,
    /// The entry events, in order.
    pub events: Vec<CacheEvent>,
}

/// A whole partition, for re-syncing a backup or migrating to a new owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionDump {
    /// The partition.
    pub partition: u32,
    /// The owner's position when exported.
    pub position: Position,
    /// Every entry, in key order.
    pub entries: Vec<(Vec<u8>, EntryState)>,
}

/// Part of a partition, in key order (see [`NamespaceStore::export_chunk`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionChunk {
    /// The partition.
    pub partition: u32,
    /// The owner's position when this chunk was read.
    pub position: Position,
    /// The first chunk (the receiver starts from an empty partition).
    pub first: bool,
    /// Entries with keys after the previous chunk's last.
    pub entries: Vec<(Vec<u8>, EntryState)>,
    /// The key to continue after; `None`: this was the last chunk.
    pub next_after: Option<Vec<u8>>,
}

/// Why a change, chunk or role change was refused (nothing changed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplicaError {
    /// The backup is not at the position the change or chunk follows (it
    /// missed changes, or holds changes the owner never saw): re-sync the
    /// partition with a full export.
    #[error("partition {partition}: held at {held:?}, received a change following term {prev_term} seq {prev_seq}; re-sync")]
    Gap {
        /// The partition.
        partition: u32,
        /// This node's position, `None` if it holds no backup of it.
        held: Option<Position>,
        /// The term of the position the change follows.
        prev_term: u64,
        /// The seq of the position the change follows.
        prev_seq: u64,
    },
    /// This node owns the partition: it takes no changes or imports for it
    /// (the sender is stale).
    #[error("partition {0} is owned here; changes from elsewhere are refused")]
    Owned(u32),
    /// The partition is backed up here, not owned (flush).
    #[error("partition {0} is only backed up here; the owner decides")]
    NotOwned(u32),
    /// The partition is not held here (promote, demote).
    #[error("partition {0} is not held here")]
    NotHeld(u32),
    /// The partition is held here already (create).
    #[error("partition {0} is held here already")]
    AlreadyHeld(u32),
}

/// The namespace's counters and sizes on this node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metrics {
    /// `Get`s that found a value.
    pub hits: u64,
    /// `Get`s that found none.
    pub misses: u64,
    /// Entries evicted by this node as owner.
    pub evictions: u64,
    /// Entries expired by this node as owner (TTL or max-idle).
    pub expirations: u64,
    /// Entries held (owned and backed up).
    pub entries: u64,
    /// Bytes held (owned and backed up), as counted for the bounds.
    pub bytes: u64,
    /// Entries of owned partitions.
    pub owned_entries: u64,
    /// Bytes of owned partitions.
    pub owned_bytes: u64,
}

/// Whether this node owns or backs up a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PartitionRole {
    /// Runs operations.
    Owner,
    /// Mirrors the owner's changes.
    Backup,
}

/// The entries of every partition this node holds for one namespace.
///
/// Call protocol: [`NamespaceStore::create_partition`],
/// [`NamespaceStore::open_backup`], [`NamespaceStore::promote`],
/// [`NamespaceStore::demote`] and [`NamespaceStore::drop_partition`] follow
/// the partition table; [`NamespaceStore::apply`] runs operations on owned
/// partitions; [`NamespaceStore::apply_change`] and
/// [`NamespaceStore::import_chunk`] feed backups; call
/// [`NamespaceStore::expire`] at [`NamespaceStore::next_expiry`]. Send
/// every returned change to the partition's backups in order.
#[derive(Debug, Clone)]
pub struct NamespaceStore {
    config: NamespaceConfig,
    partitions: BTreeMap<u32, Partition>,
    /// Owned entries by last access (ticks are unique and grow): the LRU
    /// order and the max-idle order.
    recency: BTreeMap<u64, EntryRef>,
    /// Owned entries by (LFU-DA priority, tick), for [`Eviction::Lfu`].
    frequency: BTreeMap<(u64, u64), EntryRef>,
    /// Owned entries with an expiry, by (expiry, partition, key).
    expiry: BTreeSet<(u64, u32, Key)>,
    /// The last tick given out.
    tick: u64,
    /// LFU-DA's age: the priority of the last entry evicted.
    lfu_age: u64,
    /// The latest `now_ms` seen.
    clock_ms: u64,
    owned_entries: u64,
    owned_bytes: u64,
    metrics: Metrics,
}

type Key = Arc<[u8]>;
type EntryRef = (u32, Key);

#[derive(Debug, Clone)]
struct Partition {
    role: PartitionRole,
    /// The owner's term (meaningful when owned).
    term: u64,
    position: Position,
    entries: BTreeMap<Key, Entry>,
    bytes: u64,
}

#[derive(Debug, Clone)]
struct Entry {
    value: Vec<u8>,
    version: u64,
    expire_at_ms: Option<u64>,
    /// Owner bookkeeping (not replicated).
    last_access_ms: u64,
    tick: u64,
    hits: u64,
    priority: u64,
}

/// Where an owned entry sits in the owner's indexes.
#[derive(Debug, Clone, Copy)]
struct IndexPlace {
    tick: u64,
    priority: u64,
    expire_at_ms: Option<u64>,
}

impl Entry {
    fn state(&self) -> EntryState {
        EntryState {
            value: self.value.clone(),
            version: self.version,
            expire_at_ms: self.expire_at_ms,
        }
    }

    fn place(&self) -> IndexPlace {
        IndexPlace {
            tick: self.tick,
            priority: self.priority,
            expire_at_ms: self.expire_at_ms,
        }
    }
}

fn entry_bytes(key: &[u8], value: &[u8]) -> u64 {
    key.len() as u64 + value.len() as u64 + ENTRY_OVERHEAD
}

impl NamespaceStore {
    /// An empty store (pass a validated configuration).
    pub fn new(config: NamespaceConfig) -> Self {
        Self {
            config,
            partitions: BTreeMap::new(),
            recency: BTreeMap::new(),
            frequency: BTreeMap::new(),
            expiry: BTreeSet::new(),
            tick: 0,
            lfu_age: 0,
            clock_ms: 0,
            owned_entries: 0,
            owned_bytes: 0,
            metrics: Metrics::default(),
        }
    }

    /// The namespace's settings.
    pub fn config(&self) -> &NamespaceConfig {
        &self.config
    }

    /// The counters and sizes now.
    pub fn metrics(&self) -> Metrics {
        let mut metrics = self.metrics;
        metrics.entries = self
            .partitions
            .values()
            .map(|p| p.entries.len() as u64)
            .sum();
        metrics.bytes = self.partitions.values().map(|p| p.bytes).sum();
        metrics.owned_entries = self.owned_entries;
        metrics.owned_bytes = self.owned_bytes;
        metrics
    }

    /// This node's role in the partition, if it holds it.
    pub fn role(&self, partition: u32) -> Option<PartitionRole> {
        self.partitions.get(&partition).map(|p| p.role)
    }

    /// The partitions held, in order.
    pub fn partitions(&self) -> impl Iterator<Item = (u32, PartitionRole)> + '_ {
        self.partitions.iter().map(|(p, part)| (*p, part.role))
    }

    /// The partition's position (last change applied), if held.
    pub fn partition_position(&self, partition: u32) -> Option<Position> {
        self.partitions.get(&partition).map(|p| p.position)
    }

    /// The partition's last change number, if held.
    pub fn partition_seq(&self, partition: u32) -> Option<u64> {
        self.partition_position(partition).map(|p| p.seq)
    }

    /// The partition's replicated state (what owner and backups agree on),
    /// in key order; empty if not held.
    pub fn partition_state(&self, partition: u32) -> Vec<(Vec<u8>, EntryState)> {
        self.partitions
            .get(&partition)
            .map(|p| {
                p.entries
                    .iter()
                    .map(|(k, e)| (k.to_vec(), e.state()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Starts owning an empty partition (a new table, or one whose every
    /// holder was lost), at position `(0, 0)`: its first change follows
    /// that, so empty backups opened with [`NamespaceStore::open_backup`]
    /// accept it. `term`: see the module doc.
    pub fn create_partition(&mut self, partition: u32, term: u64) -> Result<(), ReplicaError> {
        if self.partitions.contains_key(&partition) {
            return Err(ReplicaError::AlreadyHeld(partition));
        }
        self.partitions
            .insert(partition, Partition::empty(PartitionRole::Owner, term));
        Ok(())
    }

    /// Starts backing up a partition from empty, at position `(0, 0)`
    /// (replacing any backup held; an owned partition is refused).
    pub fn open_backup(&mut self, partition: u32) -> Result<(), ReplicaError> {
        if self.role(partition) == Some(PartitionRole::Owner) {
            return Err(ReplicaError::Owned(partition));
        }
        self.partitions
            .insert(partition, Partition::empty(PartitionRole::Backup, 0));
        Ok(())
    }

    /// Makes a backed-up partition owned, for `term`. Every entry starts
    /// its access clock (max-idle, LRU and LFU) afresh at `now_ms`, since
    /// backups see no reads. The partition may put the node over its
    /// bounds: the evictions come back as effects, to replicate.
    pub fn promote(
        &mut self,
        partition: u32,
        term: u64,
        now_ms: u64,
    ) -> Result<Effects, ReplicaError> {
        let now = self.advance(now_ms);
        let part = self
            .partitions
            .get_mut(&partition)
            .ok_or(ReplicaError::NotHeld(partition))?;
        if part.role == PartitionRole::Owner {
            part.term = term;
            return Ok(Effects::default());
        }
        part.role = PartitionRole::Owner;
        part.term = term;
        let keys: Vec<Key> = part.entries.keys().cloned().collect();
        let bytes = part.bytes;
        self.owned_entries += keys.len() as u64;
        self.owned_bytes += bytes;
        for key in keys {
            let tick = self.next_tick();
            let priority = self.lfu_age + 1;
            let Some(entry) = self
                .partitions
                .get_mut(&partition)
                .and_then(|p| p.entries.get_mut(&key))
            else {
                continue;
            };
            entry.last_access_ms = now;
            entry.tick = tick;
            entry.hits = 1;
            entry.priority = priority;
            let expire_at = entry.expire_at_ms;
            self.index(partition, &key, tick, priority, expire_at);
        }
        let mut effects = Effects::default();
        self.enforce_bounds(None, &mut effects);
        Ok(effects)
    }

    /// Makes an owned partition a backup (ownership moved away and this
    /// node keeps a copy). It now takes the new owner's changes.
    pub fn demote(&mut self, partition: u32) -> Result<(), ReplicaError> {
        let part = self
            .partitions
            .get(&partition)
            .ok_or(ReplicaError::NotHeld(partition))?;
        if part.role == PartitionRole::Backup {
            return Ok(());
        }
        self.unown(partition);
        if let Some(part) = self.partitions.get_mut(&partition) {
            part.role = PartitionRole::Backup;
        }
        Ok(())
    }

    /// Forgets a partition (no longer a holder). Returns whether it was
    /// held.
    pub fn drop_partition(&mut self, partition: u32) -> bool {
        if self.role(partition) == Some(PartitionRole::Owner) {
            self.unown(partition);
        }
        self.partitions.remove(&partition).is_some()
    }

    /// Runs one operation on an owned partition at `now_ms`. A partition
    /// not owned here is answered [`CacheError::Unavailable`] (the driver
    /// checks the table first and answers `WrongOwner`; this is the last
    /// line). A failed operation changes nothing, except lazy expiries it
    /// found on the way (returned as changes).
    pub fn apply(&mut self, partition: u32, op: &CacheOp, now_ms: u64) -> Applied {
        let now = self.advance(now_ms);
        let mut effects = Effects::default();
        let reply = if self.role(partition) != Some(PartitionRole::Owner) {
            Err(CacheError::Unavailable(partition))
        } else {
            self.run(partition, op, now, &mut effects)
        };
        Applied {
            reply,
            changes: effects.changes,
            events: effects.events,
        }
    }

    /// Removes every entry of an owned partition (Redis `FLUSHDB`, one
    /// partition at a time): a `Remove` event and a change per key, so
    /// backups follow. Refused for a partition not owned here.
    pub fn flush_partition(&mut self, partition: u32) -> Result<Effects, ReplicaError> {
        match self.role(partition) {
            Some(PartitionRole::Owner) => {}
            Some(PartitionRole::Backup) => return Err(ReplicaError::NotOwned(partition)),
            None => return Err(ReplicaError::NotHeld(partition)),
        }
        let keys: Vec<Key> = self
            .partitions
            .get(&partition)
            .map(|p| p.entries.keys().cloned().collect())
            .unwrap_or_default();
        let mut effects = Effects::default();
        for key in keys {
            self.remove(partition, &key, EventKind::Remove, &mut effects);
        }
        Ok(effects)
    }

    /// Removes up to `budget` owned entries whose TTL passed or that were
    /// idle for `max_idle_ms`, oldest deadline first, at `now_ms`.
    pub fn expire(&mut self, now_ms: u64, budget: usize) -> Effects {
        let now = self.advance(now_ms);
        let mut effects = Effects::default();
        let mut left = budget;
        while left > 0 {
            let Some((at, partition, key)) = self.expiry.first().cloned() else {
                break;
            };
            if at > now {
                break;
            }
            self.remove(partition, &key, EventKind::Expire, &mut effects);
            left -= 1;
        }
        if let Some(max_idle) = self.config.max_idle_ms {
            while left > 0 {
                let Some((_, (partition, key))) = self.recency.first_key_value() else {
                    break;
                };
                let (partition, key) = (*partition, key.clone());
                let idle_since = self
                    .entry(partition, &key)
                    .map_or(now, |e| e.last_access_ms);
                if idle_since.saturating_add(max_idle) > now {
                    break;
                }
                self.remove(partition, &key, EventKind::Expire, &mut effects);
                left -= 1;
            }
        }
        effects
    }

    /// The earliest time an owned entry expires (TTL or max-idle), if any:
    /// when to call [`NamespaceStore::expire`] next.
    pub fn next_expiry(&self) -> Option<u64> {
        let ttl = self.expiry.first().map(|(at, _, _)| *at);
        let idle = self.config.max_idle_ms.and_then(|max_idle| {
            let (_, (partition, key)) = self.recency.first_key_value()?;
            Some(
                self.entry(*partition, key)?
                    .last_access_ms
                    .saturating_add(max_idle),
            )
        });
        match (ttl, idle) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Applies one of the owner's changes on a backup. Refused with
    /// [`ReplicaError::Gap`] unless it follows this backup's position
    /// exactly (then re-sync the partition); nothing changes when refused.
    pub fn apply_change(&mut self, change: Change) -> Result<(), ReplicaError> {
        let part = self.partitions.get_mut(&change.partition);
        let Some(part) = part.filter(|p| p.role == PartitionRole::Backup) else {
            if self.role(change.partition) == Some(PartitionRole::Owner) {
                return Err(ReplicaError::Owned(change.partition));
            }
            return Err(ReplicaError::Gap {
                partition: change.partition,
                held: None,
                prev_term: change.prev_term,
                prev_seq: change.seq.saturating_sub(1),
            });
        };
        let follows = Position {
            term: change.prev_term,
            seq: change.seq.saturating_sub(1),
        };
        if change.seq == 0 || part.position != follows {
            return Err(ReplicaError::Gap {
                partition: change.partition,
                held: Some(part.position),
                prev_term: change.prev_term,
                prev_seq: change.seq.saturating_sub(1),
            });
        }
        part.position = Position {
            term: change.term,
            seq: change.seq,
        };
        part.set(&change.key, change.state);
        Ok(())
    }

    /// The whole partition (see [`NamespaceStore::export_chunk`] for parts).
    pub fn export_partition(&self, partition: u32) -> Option<PartitionDump> {
        let part = self.partitions.get(&partition)?;
        Some(PartitionDump {
            partition,
            position: part.position,
            entries: part
                .entries
                .iter()
                .map(|(k, e)| (k.to_vec(), e.state()))
                .collect(),
        })
    }

    /// Replaces a backup's (or a not-held) partition with a dump; refused
    /// for an owned partition.
    pub fn import_partition(&mut self, dump: PartitionDump) -> Result<(), ReplicaError> {
        self.import_chunk(PartitionChunk {
            partition: dump.partition,
            position: dump.position,
            first: true,
            entries: dump.entries,
            next_after: None,
        })
    }

    /// The partition's entries with keys after `after` (from the first if
    /// `None`), up to about `max_bytes` (at least one entry), read at the
    /// current position.
    ///
    /// Migration and re-sync while the owner keeps serving: send the
    /// chunks and the partition's changes **on one ordered stream**, each
    /// chunk read when it is sent. A chunk then reflects every change sent
    /// before it, so the receiver, applying both in stream order with
    /// [`NamespaceStore::import_chunk`] and [`NamespaceStore::apply_change`],
    /// ends identical to the owner.
    pub fn export_chunk(
        &self,
        partition: u32,
        after: Option<&[u8]>,
        max_bytes: u64,
    ) -> Option<PartitionChunk> {
        let part = self.partitions.get(&partition)?;
        let lower = match after {
            Some(key) => Bound::Excluded(key),
            None => Bound::Unbounded,
        };
        let mut entries = Vec::new();
        let mut size = 0u64;
        let mut range = part
            .entries
            .range::<[u8], _>((lower, Bound::Unbounded))
            .peekable();
        while let Some((key, entry)) = range.next() {
            size += entry_bytes(key, &entry.value);
            entries.push((key.to_vec(), entry.state()));
            if size >= max_bytes && range.peek().is_some() {
                break;
            }
        }
        let more = range.peek().is_some();
        let next_after = if more {
            entries.last().map(|(key, _)| key.clone())
        } else {
            None
        };
        Some(PartitionChunk {
            partition,
            position: part.position,
            first: after.is_none(),
            entries,
            next_after,
        })
    }

    /// Applies a chunk on the receiving side. The first chunk starts the
    /// partition afresh (as a backup) at the chunk's position; a later one
    /// must find the partition at the chunk's position (the changes between
    /// the two chunks applied), else [`ReplicaError::Gap`]: start over.
    pub fn import_chunk(&mut self, chunk: PartitionChunk) -> Result<(), ReplicaError> {
        let partition = chunk.partition;
        if self.role(partition) == Some(PartitionRole::Owner) {
            return Err(ReplicaError::Owned(partition));
        }
        if chunk.first {
            let mut part = Partition::empty(PartitionRole::Backup, 0);
            part.position = chunk.position;
            self.partitions.insert(partition, part);
        }
        let Some(part) = self
            .partitions
            .get_mut(&partition)
            .filter(|p| p.position == chunk.position)
        else {
            return Err(ReplicaError::Gap {
                partition,
                held: self.partition_position(partition),
                prev_term: chunk.position.term,
                prev_seq: chunk.position.seq,
            });
        };
        for (key, state) in chunk.entries {
            part.set(&key, Some(state));
        }
        Ok(())
    }

    // ---- owner internals ----

    /// Takes `now_ms` unless it is older than the store's clock.
    fn advance(&mut self, now_ms: u64) -> u64 {
        self.clock_ms = self.clock_ms.max(now_ms);
        self.clock_ms
    }

    fn next_tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    fn entry(&self, partition: u32, key: &[u8]) -> Option<&Entry> {
        self.partitions.get(&partition)?.entries.get(key)
    }

    fn run(
        &mut self,
        partition: u32,
        op: &CacheOp,
        now: u64,
        fx: &mut Effects,
    ) -> Result<CacheReply, CacheError> {
        let key = op.key();
        if key.len() > self.config.max_key_len {
            return Err(CacheError::TooLarge {
                what: "key".to_owned(),
                len: key.len(),
                limit: self.config.max_key_len,
            });
        }
        let present = self.access(partition, key, now, fx);
        let current = if present {
            self.entry(partition, key)
        } else {
            None
        };
        let version = current.map_or(0, |e| e.version);
        match op {
            CacheOp::Get { .. } => {
                let found = current.map(|e| Versioned {
                    value: e.value.clone(),
                    version: e.version,
                });
                if found.is_some() {
                    self.metrics.hits += 1;
                } else {
                    self.metrics.misses += 1;
                }
                Ok(CacheReply::Value(found))
            }
            CacheOp::Exists { .. } => Ok(CacheReply::Bool(present)),
            CacheOp::Strlen { .. } => {
                Ok(CacheReply::Len(current.map_or(0, |e| e.value.len() as u64)))
            }
            CacheOp::Ttl { .. } => Ok(CacheReply::Ttl(match current {
                None => TtlState::Absent,
                Some(Entry {
                    expire_at_ms: None, ..
                }) => TtlState::Persistent,
                Some(Entry {
                    expire_at_ms: Some(at),
                    ..
                }) => TtlState::Millis(at.saturating_sub(now)),
            })),
            CacheOp::Delete { .. } => {
                if present {
                    self.remove(partition, key, EventKind::Remove, fx);
                }
                Ok(CacheReply::Bool(present))
            }
            CacheOp::Put {
                value,
                ttl_ms,
                condition,
                keep_ttl,
                return_old,
                ..
            } => {
                self.check_value(value.len())?;
                let old = if *return_old {
                    current.map(|e| e.value.clone())
                } else {
                    None
                };
                let holds = match condition {
                    PutCondition::Always => true,
                    PutCondition::IfAbsent => !present,
                    PutCondition::IfPresent => present,
                    PutCondition::IfVersion(expected) => version == *expected,
                };
                if !holds {
                    return Ok(CacheReply::Stored {
                        stored: false,
                        version,
                        old,
                    });
                }
                let expire_at = match (ttl_ms, keep_ttl, current) {
                    (Some(ttl), _, _) => Some(now.saturating_add(*ttl)),
                    (None, true, Some(entry)) => entry.expire_at_ms,
                    _ => self.default_expiry(now),
                };
                let version = self.store(partition, key, value.clone(), expire_at, now, fx);
                Ok(CacheReply::Stored {
                    stored: true,
                    version,
                    old,
                })
            }
            CacheOp::CompareAndSet {
                expected, value, ..
            } => {
                self.check_value(value.len())?;
                match current {
                    Some(entry) if entry.value == *expected => {
                        let expire_at = entry.expire_at_ms;
                        let version = self.store(partition, key, value.clone(), expire_at, now, fx);
                        Ok(CacheReply::Stored {
                            stored: true,
                            version,
                            old: None,
                        })
                    }
                    _ => Ok(CacheReply::Stored {
                        stored: false,
                        version,
                        old: current.map(|e| e.value.clone()),
                    }),
                }
            }
            CacheOp::Incr { by, .. } => {
                let number = match current {
                    None => 0,
                    Some(entry) => parse_integer(&entry.value).ok_or(CacheError::NotInteger)?,
                };
                let result = number.checked_add(*by).ok_or(CacheError::Overflow)?;
                let text = result.to_string().into_bytes();
                self.check_value(text.len())?;
                let expire_at = match current {
                    Some(entry) => entry.expire_at_ms,
                    None => self.default_expiry(now),
                };
                self.store(partition, key, text, expire_at, now, fx);
                Ok(CacheReply::Integer(result))
            }
            CacheOp::Append { value, .. } => {
                let (mut joined, expire_at) = match current {
                    Some(entry) => (entry.value.clone(), entry.expire_at_ms),
                    None => (Vec::new(), self.default_expiry(now)),
                };
                self.check_value(joined.len().saturating_add(value.len()))?;
                joined.extend_from_slice(value);
                let len = joined.len() as u64;
                self.store(partition, key, joined, expire_at, now, fx);
                Ok(CacheReply::Len(len))
            }
            CacheOp::Expire { ttl_ms, .. } => {
                let Some(entry) = current else {
                    return Ok(CacheReply::Bool(false));
                };
                let expire_at = match ttl_ms {
                    Some(ttl) => Some(now.saturating_add(*ttl)),
                    None if entry.expire_at_ms.is_none() => return Ok(CacheReply::Bool(false)),
                    None => None,
                };
                let value = entry.value.clone();
                self.store(partition, key, value, expire_at, now, fx);
                Ok(CacheReply::Bool(true))
            }
        }
    }

    fn check_value(&self, len: usize) -> Result<(), CacheError> {
        if len > self.config.max_value_len {
            return Err(CacheError::TooLarge {
                what: "value".to_owned(),
                len,
                limit: self.config.max_value_len,
            });
        }
        Ok(())
    }

    fn default_expiry(&self, now: u64) -> Option<u64> {
        self.config.ttl_ms.map(|ttl| now.saturating_add(ttl))
    }

    /// Whether the key is present and live, recording the access if so: a
    /// new tick (LRU order, idle clock) and one more hit (LFU-DA priority =
    /// hits + current age). An expired or idle entry is removed on the way
    /// (an `Expire` change and event). One map lookup.
    fn access(&mut self, partition: u32, key: &[u8], now: u64, fx: &mut Effects) -> bool {
        let max_idle = self.config.max_idle_ms;
        let age = self.lfu_age;
        let tick = self.tick + 1;
        let Some(entry) = self
            .partitions
            .get_mut(&partition)
            .and_then(|p| p.entries.get_mut(key))
        else {
            return false;
        };
        let expired = entry.expire_at_ms.is_some_and(|at| at <= now);
        let idle = max_idle.is_some_and(|max| entry.last_access_ms.saturating_add(max) <= now);
        if expired || idle {
            self.remove(partition, key, EventKind::Expire, fx);
            return false;
        }
        let (old_tick, old_priority) = (entry.tick, entry.priority);
        entry.tick = tick;
        entry.last_access_ms = now;
        entry.hits = entry.hits.saturating_add(1);
        entry.priority = age.saturating_add(entry.hits);
        let priority = entry.priority;
        self.tick = tick;
        if let Some(reference) = self.recency.remove(&old_tick) {
            if self.config.eviction == Eviction::Lfu {
                self.frequency.remove(&(old_priority, old_tick));
                self.frequency.insert((priority, tick), reference.clone());
            }
            self.recency.insert(tick, reference);
        }
        true
    }

    /// Sets an owned key's value and expiry, bumping its version; emits the
    /// change and a `Put` or `Update` event, then evicts if over a bound
    /// (never this key). Returns the new version. An existing entry was
    /// touched by [`NamespaceStore::access`] already.
    fn store(
        &mut self,
        partition: u32,
        key: &[u8],
        value: Vec<u8>,
        expire_at: Option<u64>,
        now: u64,
        fx: &mut Effects,
    ) -> u64 {
        let new_bytes = entry_bytes(key, &value);
        let Some(part) = self.partitions.get_mut(&partition) else {
            return 0;
        };
        let (version, kind) = match part.entries.get_mut(key) {
            Some(entry) => {
                let old_bytes = entry_bytes(key, &entry.value);
                let old_expiry = entry.expire_at_ms;
                entry.version += 1;
                entry.value.clone_from(&value);
                entry.expire_at_ms = expire_at;
                entry.last_access_ms = now;
                let version = entry.version;
                part.bytes = part.bytes - old_bytes + new_bytes;
                self.owned_bytes = self.owned_bytes - old_bytes + new_bytes;
                if old_expiry != expire_at {
                    let shared = self.shared_key(partition, key);
                    if let Some(at) = old_expiry {
                        self.expiry.remove(&(at, partition, shared.clone()));
                    }
                    if let Some(at) = expire_at {
                        self.expiry.insert((at, partition, shared));
                    }
                }
                (version, EventKind::Update)
            }
            None => {
                let shared: Key = Arc::from(key);
                self.tick += 1;
                let (tick, priority) = (self.tick, self.lfu_age + 1);
                let entry = Entry {
                    value: value.clone(),
                    version: 1,
                    expire_at_ms: expire_at,
                    last_access_ms: now,
                    tick,
                    hits: 1,
                    priority,
                };
                part.bytes += new_bytes;
                part.entries.insert(shared.clone(), entry);
                self.index(partition, &shared, tick, priority, expire_at);
                self.owned_entries += 1;
                self.owned_bytes += new_bytes;
                (1, EventKind::Put)
            }
        };
        fx.events.push(CacheEvent {
            kind,
            partition,
            key: key.to_vec(),
            version,
        });
        let state = EntryState {
            value,
            version,
            expire_at_ms: expire_at,
        };
        self.emit(partition, key, Some(state), fx);
        self.enforce_bounds(Some((partition, key)), fx);
        version
    }

    /// The map's shared copy of a held key.
    fn shared_key(&self, partition: u32, key: &[u8]) -> Key {
        self.partitions
            .get(&partition)
            .and_then(|p| p.entries.get_key_value(key))
            .map_or_else(|| Arc::from(key), |(k, _)| k.clone())
    }

    fn index(
        &mut self,
        partition: u32,
        key: &Key,
        tick: u64,
        priority: u64,
        expire_at: Option<u64>,
    ) {
        self.recency.insert(tick, (partition, key.clone()));
        if self.config.eviction == Eviction::Lfu {
            self.frequency
                .insert((priority, tick), (partition, key.clone()));
        }
        if let Some(at) = expire_at {
            self.expiry.insert((at, partition, key.clone()));
        }
    }

    fn unindex(&mut self, partition: u32, key: &Key, place: IndexPlace) {
        self.recency.remove(&place.tick);
        self.frequency.remove(&(place.priority, place.tick));
        if let Some(at) = place.expire_at_ms {
            self.expiry.remove(&(at, partition, key.clone()));
        }
    }

    /// Removes an owned key; emits the change and an event of `kind`.
    fn remove(&mut self, partition: u32, key: &[u8], kind: EventKind, fx: &mut Effects) {
        let Some(part) = self.partitions.get_mut(&partition) else {
            return;
        };
        let Some((shared, entry)) = part.entries.remove_entry(key) else {
            return;
        };
        let bytes = entry_bytes(key, &entry.value);
        part.bytes -= bytes;
        self.unindex(partition, &shared, entry.place());
        self.owned_entries -= 1;
        self.owned_bytes -= bytes;
        match kind {
            EventKind::Evict => self.metrics.evictions += 1,
            EventKind::Expire => self.metrics.expirations += 1,
            _ => {}
        }
        fx.events.push(CacheEvent {
            kind,
            partition,
            key: key.to_vec(),
            version: entry.version,
        });
        self.emit(partition, key, None, fx);
    }

    /// Numbers a change of an owned partition and queues it.
    fn emit(&mut self, partition: u32, key: &[u8], state: Option<EntryState>, fx: &mut Effects) {
        let Some(part) = self.partitions.get_mut(&partition) else {
            return;
        };
        let prev = part.position;
        part.position = Position {
            term: part.term,
            seq: prev.seq + 1,
        };
        fx.changes.push(Change {
            partition,
            prev_term: prev.term,
            term: part.term,
            seq: prev.seq + 1,
            key: key.to_vec(),
            state,
        });
    }

    /// Evicts owned entries while over a bound, sparing `protect` (the key
    /// just written): first an entry already expired by TTL or idle time
    /// but not yet swept (removed as an expiry), else by the namespace's
    /// policy.
    fn enforce_bounds(&mut self, protect: Option<(u32, &[u8])>, fx: &mut Effects) {
        let max_entries = self.config.owned_entry_budget();
        let max_bytes = self.config.owned_memory_budget();
        let now = self.clock_ms;
        while self.owned_entries > max_entries || self.owned_bytes > max_bytes {
            let spared = |candidate: &EntryRef| {
                protect.is_some_and(|(p, k)| candidate.0 == p && *candidate.1 == *k)
            };
            let past_ttl = self
                .expiry
                .first()
                .filter(|(at, _, _)| *at <= now)
                .map(|(_, p, k)| (*p, k.clone()));
            let past_idle = self.config.max_idle_ms.and_then(|max_idle| {
                let (_, (p, k)) = self.recency.first_key_value()?;
                let last = self.entry(*p, k)?.last_access_ms;
                (last.saturating_add(max_idle) <= now).then(|| (*p, k.clone()))
            });
            if let Some((partition, key)) = past_ttl.or(past_idle).filter(|c| !spared(c)) {
                self.remove(partition, &key, EventKind::Expire, fx);
                continue;
            }
            let victim = match self.config.eviction {
                Eviction::Lru => self
                    .recency
                    .values()
                    .find(|c| !spared(c))
                    .cloned()
                    .map(|c| (c, None)),
                Eviction::Lfu => self
                    .frequency
                    .iter()
                    .find(|(_, c)| !spared(c))
                    .map(|((priority, _), c)| (c.clone(), Some(*priority))),
            };
            let Some(((partition, key), priority)) = victim else {
                break;
            };
            if let Some(priority) = priority {
                self.lfu_age = self.lfu_age.max(priority);
            }
            self.remove(partition, &key, EventKind::Evict, fx);
        }
    }

    /// Takes an owned partition's entries out of the owner's indexes and
    /// counts.
    fn unown(&mut self, partition: u32) {
        let Some(part) = self.partitions.get(&partition) else {
            return;
        };
        let entries: Vec<(Key, IndexPlace)> = part
            .entries
            .iter()
            .map(|(k, e)| (k.clone(), e.place()))
            .collect();
        let bytes = part.bytes;
        for (key, place) in &entries {
            self.unindex(partition, key, *place);
        }
        self.owned_entries -= entries.len() as u64;
        self.owned_bytes -= bytes;
    }
}

impl Partition {
    fn empty(role: PartitionRole, term: u64) -> Self {
        Self {
            role,
            term,
            position: Position { term: 0, seq: 0 },
            entries: BTreeMap::new(),
            bytes: 0,
        }
    }

    /// A backup's write: the key now holds `state` (or nothing). An update
    /// of a held key is made in place: one look-up, no new key.
    fn set(&mut self, key: &[u8], state: Option<EntryState>) {
        let state = match (self.entries.get_mut(key), state) {
            (Some(entry), Some(state)) => {
                self.bytes =
                    self.bytes - entry_bytes(key, &entry.value) + entry_bytes(key, &state.value);
                entry.value = state.value;
                entry.version = state.version;
                entry.expire_at_ms = state.expire_at_ms;
                return;
            }
            (_, state) => state,
        };
        if let Some(old) = self.entries.remove(key) {
            self.bytes -= entry_bytes(key, &old.value);
        }
        if let Some(state) = state {
            self.bytes += entry_bytes(key, &state.value);
            let entry = Entry {
                value: state.value,
                version: state.version,
                expire_at_ms: state.expire_at_ms,
                last_access_ms: 0,
                tick: 0,
                hits: 0,
                priority: 0,
            };
            self.entries.insert(Arc::from(key), entry);
        }
    }
}

/// A decimal 64-bit integer in Redis's strict form (no sign `+`, no spaces,
/// no leading zeros): the text must be exactly what printing the number
/// gives.
fn parse_integer(text: &[u8]) -> Option<i64> {
    let number: i64 = std::str::from_utf8(text).ok()?.parse().ok()?;
    (number.to_string().as_bytes() == text).then_some(number)
}

#[cfg(test)]
mod tests;
