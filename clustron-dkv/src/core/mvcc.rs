//! The replicated state machine: a multi-version key-value store.
//!
//! Every replica applies the same committed [`Command`]s in log order and
//! gets the same state, results and watch events: the store is a pure
//! function of its commands (no clock, no randomness, ordered maps only).
//!
//! - Each key keeps its versions; a write transaction that changes anything
//!   takes the next revision, so any past revision can be read until it is
//!   compacted ([`Command::Compact`]).
//! - Transactions are etcd's: compares, then the `success` or `failure`
//!   operations, all at one revision; later operations see earlier ones'
//!   writes; a key may be written once per transaction.
//! - Leases are granted with an id and a TTL chosen by the leader; the
//!   leader decides expiry and proposes [`Command::LeaseRevoke`], so expiry
//!   is a committed, replicated decision and every replica deletes the same
//!   keys at the same revision.
//! - [`Store::history`] reads the changes to a range from any revision
//!   after the compaction point, a bounded chunk at a time, so a watch
//!   resumes after a failover from the last revision it saw. It walks an
//!   index of changes in revision order (derived from the versions, rebuilt
//!   on restore), never the whole key space.
//!
//! # Example
//!
//! ```
//! use clustron_dkv::core::mvcc::{Command, Store};
//! use clustron_dkv::kv::{KeyRange, PutRequest, RangeRequest};
//!
//! let mut store = Store::default();
//! let put = |value: &[u8]| Command::Put(PutRequest {
//!     key: b"k".to_vec(), value: value.to_vec(), lease: None, prev_kv: false,
//! });
//! store.apply(put(b"one"));
//! let applied = store.apply(put(b"two"));
//! assert_eq!(applied.revision, 2);
//! assert_eq!(applied.events.len(), 1);
//!
//! // Read as of revision 1.
//! let old = store.range(&RangeRequest {
//!     range: KeyRange::Key(b"k".to_vec()), revision: 1, limit: 0,
//!     keys_only: false, count_only: false,
//! }).unwrap();
//! assert_eq!(old.kvs[0].value, b"one");
//! ```

use std::collections::VecDeque;
use std::sync::Arc;

use imbl::{OrdMap, OrdSet};
use smallvec::SmallVec;

use serde::{Deserialize, Serialize};

use super::session::Sessions;
use crate::kv::{
    Compare, CompareOp, CompareTarget, DeleteRequest, DeleteResponse, Event, EventKind, KeyRange,
    KeyValue, KvError, LeaseId, PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp,
    ResponseOp, SessionId, Txn, TxnResponse,
};

/// A replicated command: the payload of a log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Set a key.
    Put(PutRequest),
    /// Delete keys.
    Delete(DeleteRequest),
    /// A transaction.
    Txn(Txn),
    /// Create a lease.
    LeaseGrant {
        /// Its id (chosen by the proposer; refused if taken).
        id: LeaseId,
        /// Its time to live, for the leader's expiry clock.
        ttl_ms: u64,
    },
    /// End a lease and delete its keys (a client's revoke, or expiry).
    LeaseRevoke {
        /// The lease.
        id: LeaseId,
    },
    /// Forget versions older than this revision.
    Compact {
        /// The new compaction point.
        revision: u64,
    },
    /// Register a client session ([`super::session`]).
    OpenSession {
        /// Its id (chosen by the leader).
        id: SessionId,
        /// Its time to live, for the leader's expiry clock.
        ttl_ms: u64,
    },
    /// End a session (expiry).
    CloseSession {
        /// The session.
        id: SessionId,
    },
    /// The leader's digest of the state at an applied index: each replica
    /// compares it with its own (replica divergence check). Changes nothing.
    Checkpoint {
        /// The log index the digest is for.
        index: u64,
        /// The digest of the store's changes up to it.
        digest: u32,
    },
    /// A write in a session: applied once, however often it is proposed.
    InSession {
        /// The session.
        session: SessionId,
        /// The write's number in the session.
        seq: u64,
        /// The client was answered for every write numbered below this.
        acked: u64,
        /// The write (not itself a session command). Decoding refuses more
        /// than 16 levels of nesting.
        #[serde(deserialize_with = "crate::nesting::boxed")]
        command: Box<Command>,
    },
}

impl Command {
    /// The command itself, out of its session wrapper.
    pub fn inner(&self) -> &Command {
        match self {
            Command::InSession { command, .. } => command.inner(),
            other => other,
        }
    }
}

/// What a command returned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// A put's answer.
    Put(PutResponse),
    /// A delete's answer.
    Delete(DeleteResponse),
    /// A transaction's answer.
    Txn(TxnResponse),
    /// The lease exists now.
    LeaseGranted {
        /// Its id.
        id: LeaseId,
        /// Its time to live in milliseconds.
        ttl_ms: u64,
    },
    /// The lease is gone, and this many keys with it.
    LeaseRevoked {
        /// Keys deleted.
        deleted: u64,
    },
    /// The store is compacted up to the revision.
    Compacted,
    /// The session is open.
    SessionOpened {
        /// Its id.
        id: SessionId,
        /// Its time to live in milliseconds.
        ttl_ms: u64,
    },
    /// The session is closed.
    SessionClosed,
    /// A checkpoint applied (nothing changed).
    Checkpoint,
}

/// The result of applying one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The store's revision after the command (for a repeated session
    /// write: the revision its first application took).
    pub revision: u64,
    /// Its answer, or why it was refused (nothing changed then).
    pub outcome: Result<Outcome, KvError>,
    /// The changes it made, in order, for watchers.
    pub events: Vec<Event>,
}

/// Size limits, checked identically on every replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Longest key.
    pub max_key: usize,
    /// Longest value.
    pub max_value: usize,
    /// Most operations in one transaction (compares count too).
    pub max_txn_ops: usize,
}

impl Default for Limits {
    /// 4 KiB keys, 512 KiB values (a put must fit in one log entry, whose
    /// default limit is 512 KiB too: see the replication `Config::lan`), 128
    /// operations per transaction (etcd: 1.5 MiB per request, 128
    /// operations).
    fn default() -> Self {
        Self {
            max_key: 4096,
            max_value: 512 * 1024,
            max_txn_ops: 128,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Version {
    mod_revision: u64,
    /// Order of the change within its revision (a transaction's writes).
    sub: u32,
    create_revision: u64,
    version: u64,
    /// `None`: a tombstone (the key was deleted at `mod_revision`).
    #[serde(with = "serde_bytes")]
    value: Option<Vec<u8>>,
    lease: Option<LeaseId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Lease {
    ttl_ms: u64,
    #[serde(deserialize_with = "super::persistent::ordset")]
    keys: OrdSet<Vec<u8>>,
}

/// A key as the store holds it: up to 24 bytes inline, so the tree's
/// binary searches compare bytes in the node they read instead of
/// following a pointer per comparison (a cache miss each at 100,000 keys:
/// the look-up was a tenth of a node's CPU under puts), and the index of
/// changes copies a short key without allocating. Ordered, compared and
/// encoded as its bytes (the encoding of a `Vec<u8>`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Key(SmallVec<[u8; 24]>);

impl Key {
    fn new(bytes: &[u8]) -> Key {
        Key(SmallVec::from_slice(bytes))
    }
}

impl From<Vec<u8>> for Key {
    fn from(bytes: Vec<u8>) -> Key {
        if bytes.len() <= 24 {
            Key::new(&bytes)
        } else {
            Key(SmallVec::from_vec(bytes))
        }
    }
}

impl std::ops::Deref for Key {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl std::borrow::Borrow<[u8]> for Key {
    fn borrow(&self) -> &[u8] {
        &self.0
    }
}

impl Serialize for Key {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Key, D::Error> {
        serde_bytes::ByteBuf::deserialize(deserializer).map(|b| Key::from(b.into_vec()))
    }
}

/// A key's versions, oldest first. Shared between the store and the
/// snapshots taken of it until either side changes them
/// ([`Arc::make_mut`]): a snapshot copies no values.
type Versions = Arc<Vec<Version>>;

/// The multi-version store. [`Store::apply`] is the only way to change it.
///
/// Decoding (a snapshot from the disk or a peer) refuses bytes whose fields
/// disagree with each other, so a decoded store never panics when used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(try_from = "StoreFields")]
pub struct Store {
    revision: u64,
    compacted: u64,
    /// Each key's versions, oldest first. A persistent map (as are the
    /// leases and sessions): cloning it is O(1) and shares the tree, and a
    /// change copies only the nodes on its path that a clone still holds.
    /// That is what makes [`Store::snapshot_point`] free for the write path.
    keys: OrdMap<Key, Versions>,
    leases: OrdMap<LeaseId, Lease>,
    limits: Limits,
    /// Bytes of keys and values held, all versions.
    bytes: u64,
    /// Client sessions and their remembered results.
    sessions: Sessions,
    /// Every change after the compaction point, in revision order: the
    /// index [`Store::history`] walks. Derived from `keys` (rebuilt by
    /// [`Store::restore`]), so it is not part of a snapshot.
    #[serde(skip)]
    changes: VecDeque<Change>,
    /// Bytes of keys and values of the live versions only (what no
    /// compaction frees). Derived from `keys`, like `changes`.
    #[serde(skip)]
    live_bytes: u64,
}

/// A [`Store`]'s snapshotted state at one point ([`Store::snapshot_point`]):
/// the fields a snapshot holds, in the same order, so it serialises to the
/// same bytes (the derived index of changes is left out).
#[derive(Debug, Clone, Serialize)]
pub struct StorePoint {
    revision: u64,
    compacted: u64,
    keys: OrdMap<Key, Versions>,
    leases: OrdMap<LeaseId, Lease>,
    limits: Limits,
    bytes: u64,
    sessions: Sessions,
}

impl StorePoint {
    /// The store's bytes as [`Store::snapshot`] gives them.
    pub fn encode(&self) -> Vec<u8> {
        super::encode_exact(self)
    }
}

/// One change in the index of changes: the version of `key` written at
/// (`revision`, `sub`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Change {
    revision: u64,
    sub: u32,
    key: Key,
}

/// How much one [`Store::history`] call may do. Whole revisions are never
/// split, so a call may exceed a bound by one revision's changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimits {
    /// Changes looked at (in the range or not): the call's work.
    pub max_scanned: usize,
    /// Events returned.
    pub max_events: usize,
    /// Bytes of events returned (key-values and previous key-values, as
    /// [`crate::kv::encoded_kv_bytes`] counts them).
    pub max_bytes: usize,
}

impl HistoryLimits {
    /// No bound: everything up to the present.
    pub const ALL: HistoryLimits = HistoryLimits {
        max_scanned: usize::MAX,
        max_events: usize::MAX,
        max_bytes: usize::MAX,
    };
}

/// One chunk of a range's history, from [`Store::history`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct History {
    /// The changes to the range, in order, whole revisions.
    pub events: Vec<Event>,
    /// The first revision this chunk does not cover: where the next one
    /// starts (the store's revision + 1 once `complete`).
    pub next: u64,
    /// Changes looked at to make it.
    pub scanned: usize,
    /// Whether it reaches the present.
    pub complete: bool,
}

/// A [`Store`] as encoded (the same fields in the same order), before its
/// invariants are checked.
#[derive(Deserialize)]
struct StoreFields {
    revision: u64,
    compacted: u64,
    #[serde(deserialize_with = "super::persistent::ordmap")]
    keys: OrdMap<Key, Versions>,
    #[serde(deserialize_with = "super::persistent::ordmap")]
    leases: OrdMap<LeaseId, Lease>,
    limits: Limits,
    bytes: u64,
    sessions: Sessions,
}

impl TryFrom<StoreFields> for Store {
    type Error = &'static str;

    fn try_from(f: StoreFields) -> Result<Self, Self::Error> {
        let store = Store {
            revision: f.revision,
            compacted: f.compacted,
            keys: f.keys,
            leases: f.leases,
            limits: f.limits,
            bytes: f.bytes,
            sessions: f.sessions,
            changes: VecDeque::new(),
            live_bytes: 0,
        };
        if !store.consistent() {
            return Err("a store whose revisions or byte count disagree");
        }
        // The index of changes is derived, not stored: every decoded store
        // (a snapshot file, a pulled snapshot) gets it rebuilt.
        let mut store = store;
        store.index_changes();
        store.live_bytes = store
            .keys
            .iter()
            .filter_map(|(key, versions)| {
                let value = versions.last()?.value.as_ref()?;
                Some((key.len() + value.len()) as u64)
            })
            .sum();
        Ok(store)
    }
}

/// A write transaction in progress: the revision it will take and the
/// events it made.
struct Writer {
    revision: u64,
    events: Vec<Event>,
}

impl Store {
    /// An empty store with these limits.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    /// The revision of the last change.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Versions at or before this revision may be gone (0: none compacted).
    pub fn compacted(&self) -> u64 {
        self.compacted
    }

    /// Bytes of keys and values held, all versions counted.
    pub fn size_bytes(&self) -> u64 {
        self.bytes
    }

    /// Bytes of keys and values held by versions that are not live (past
    /// values and deletion markers): what compaction can free.
    pub fn history_bytes(&self) -> u64 {
        self.bytes - self.live_bytes
    }

    /// Live leases and their TTLs, for the leader's expiry clock.
    pub fn leases(&self) -> impl Iterator<Item = (LeaseId, u64)> + '_ {
        self.leases.iter().map(|(id, l)| (*id, l.ttl_ms))
    }

    /// Keys currently attached to `lease`.
    pub fn lease_keys(&self, lease: LeaseId) -> Option<impl Iterator<Item = &[u8]> + '_> {
        self.leases
            .get(&lease)
            .map(|l| l.keys.iter().map(Vec::as_slice))
    }

    /// The client sessions.
    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    /// Applies one committed command.
    pub fn apply(&mut self, command: Command) -> Applied {
        let unchanged = |revision, outcome| Applied {
            revision,
            outcome,
            events: Vec::new(),
        };
        match command {
            Command::OpenSession { id, ttl_ms } => {
                let outcome = self
                    .sessions
                    .open(id, ttl_ms)
                    .map(|()| Outcome::SessionOpened { id, ttl_ms });
                return unchanged(self.revision, outcome);
            }
            Command::Checkpoint { .. } => return unchanged(self.revision, Ok(Outcome::Checkpoint)),
            Command::CloseSession { id } => {
                let outcome = match self.sessions.close(id) {
                    true => Ok(Outcome::SessionClosed),
                    false => Err(KvError::SessionExpired(id)),
                };
                return unchanged(self.revision, outcome);
            }
            Command::InSession {
                session,
                seq,
                acked,
                command,
            } => {
                return match self.sessions.begin(session, seq, acked) {
                    Err(e) => unchanged(self.revision, Err(e)),
                    Ok(Some((revision, outcome))) => unchanged(revision, outcome),
                    Ok(None) => {
                        let applied = match *command {
                            Command::InSession { .. }
                            | Command::OpenSession { .. }
                            | Command::CloseSession { .. } => {
                                unchanged(self.revision, Err(KvError::NotInSession))
                            }
                            command => self.apply(command),
                        };
                        self.sessions.record(
                            session,
                            seq,
                            applied.revision,
                            applied.outcome.clone(),
                        );
                        applied
                    }
                };
            }
            _ => {}
        }
        let mut writer = Writer {
            revision: self.revision + 1,
            events: Vec::new(),
        };
        let outcome = self.check(&command).and_then(|()| match command {
            Command::Put(put) => self.put(&mut writer, put).map(Outcome::Put),
            Command::Delete(delete) => Ok(Outcome::Delete(self.delete(&mut writer, &delete))),
            Command::Txn(txn) => self.txn(&mut writer, txn).map(Outcome::Txn),
            Command::LeaseGrant { id, ttl_ms } => {
                if self.leases.contains_key(&id) {
                    return Err(KvError::LeaseExists(id));
                }
                self.leases.insert(
                    id,
                    Lease {
                        ttl_ms,
                        keys: OrdSet::new(),
                    },
                );
                Ok(Outcome::LeaseGranted { id, ttl_ms })
            }
            Command::LeaseRevoke { id } => {
                let lease = self.leases.remove(&id).ok_or(KvError::LeaseNotFound(id))?;
                let mut deleted = 0;
                for key in lease.keys {
                    deleted += self.delete_key(&mut writer, &key, false).is_some() as u64;
                }
                Ok(Outcome::LeaseRevoked { deleted })
            }
            Command::Compact { revision } => {
                self.compact(revision)?;
                Ok(Outcome::Compacted)
            }
            Command::OpenSession { .. }
            | Command::CloseSession { .. }
            | Command::Checkpoint { .. }
            | Command::InSession { .. } => Err(KvError::NotInSession),
        });
        if !writer.events.is_empty() {
            self.revision = writer.revision;
        }
        Applied {
            revision: self.revision,
            outcome,
            events: writer.events,
        }
    }

    /// Refuses, before any change, what would break a limit or fail halfway.
    fn check(&self, command: &Command) -> Result<(), KvError> {
        check_limits(command, &self.limits)?;
        let lease = |p: &PutRequest| match p.lease {
            Some(id) if !self.leases.contains_key(&id) => Err(KvError::LeaseNotFound(id)),
            _ => Ok(()),
        };
        match command {
            Command::Put(p) => lease(p),
            Command::Txn(txn) => {
                for branch in [&txn.success, &txn.failure] {
                    for op in branch {
                        match op {
                            RequestOp::Put(p) => lease(p)?,
                            RequestOp::Range(r) => self.check_revision(r.revision)?,
                            RequestOp::Delete(_) => {}
                        }
                    }
                }
                Ok(())
            }
            Command::Compact { revision } if *revision > self.revision => {
                Err(KvError::FutureRevision {
                    requested: *revision,
                    current: self.revision,
                })
            }
            _ => Ok(()),
        }
    }

    fn check_revision(&self, revision: u64) -> Result<(), KvError> {
        if revision > self.revision {
            return Err(KvError::FutureRevision {
                requested: revision,
                current: self.revision,
            });
        }
        if revision != 0 && revision < self.compacted {
            return Err(KvError::Compacted {
                requested: revision,
                compacted: self.compacted,
            });
        }
        Ok(())
    }

    /// Reads keys as of `request.revision` (0: now).
    pub fn range(&self, request: &RangeRequest) -> Result<RangeResponse, KvError> {
        self.range_page(request, usize::MAX)
    }

    /// Reads keys as of `request.revision` (0: now), stopping before the
    /// key-values would exceed `max_bytes` (as [`crate::kv::encoded_kv_bytes`]
    /// counts them; at least one is always given): `more` then says keys
    /// were left out, and the caller reads on after the last one.
    pub fn range_page(
        &self,
        request: &RangeRequest,
        max_bytes: usize,
    ) -> Result<RangeResponse, KvError> {
        self.check_revision(request.revision)?;
        let at = if request.revision == 0 {
            self.revision
        } else {
            request.revision
        };
        Ok(self.read_at(request, at, max_bytes))
    }

    fn read_at(&self, request: &RangeRequest, at: u64, max_bytes: usize) -> RangeResponse {
        let mut response = RangeResponse {
            kvs: Vec::new(),
            count: 0,
            more: false,
        };
        let mut bytes = 0usize;
        for (key, versions) in self.keys_in(&request.range) {
            let Some(mut kv) = visible(key, versions, at) else {
                continue;
            };
            response.count += 1;
            if request.count_only || response.more {
                continue;
            }
            if request.limit != 0 && response.kvs.len() as u64 >= request.limit {
                response.more = true;
                continue;
            }
            if request.keys_only {
                kv.value.clear();
            }
            let size = crate::kv::encoded_kv_bytes(kv.key.len(), kv.value.len());
            if !response.kvs.is_empty() && bytes.saturating_add(size) > max_bytes {
                response.more = true;
                continue;
            }
            bytes += size;
            response.kvs.push(kv);
        }
        response
    }

    /// About how many bytes of key-values `command`'s answer would carry
    /// if it applied now (reads in a transaction, `prev_kv` of puts and
    /// deletes): lets the leader refuse, before proposing, a write whose
    /// answer could not be sent.
    pub fn answer_bytes(&self, command: &Command) -> u64 {
        let kvs = |range: &KeyRange, values: bool, limit: u64| -> u64 {
            let live = self
                .keys_in(range)
                .filter_map(|(k, v)| v.last().and_then(|v| v.value.as_ref()).map(|v| (k, v)));
            let live: Box<dyn Iterator<Item = _>> = match limit {
                0 => Box::new(live),
                n => Box::new(live.take(usize::try_from(n).unwrap_or(usize::MAX))),
            };
            live.map(|(k, v)| {
                crate::kv::encoded_kv_bytes(k.len(), if values { v.len() } else { 0 }) as u64
            })
            .sum()
        };
        let prev = |key: &[u8]| {
            self.current(key)
                .and_then(|v| v.value.as_ref())
                .map_or(0, |v| {
                    crate::kv::encoded_kv_bytes(key.len(), v.len()) as u64
                })
        };
        let op = |op: &RequestOp| match op {
            RequestOp::Range(r) if r.count_only => 0,
            RequestOp::Range(r) => kvs(&r.range, !r.keys_only, r.limit),
            RequestOp::Put(p) if p.prev_kv => prev(&p.key),
            RequestOp::Delete(d) if d.prev_kv => kvs(&d.range, true, 0),
            RequestOp::Put(_) | RequestOp::Delete(_) => 0,
        };
        match command.inner() {
            Command::Put(p) if p.prev_kv => prev(&p.key),
            Command::Delete(d) if d.prev_kv => kvs(&d.range, true, 0),
            Command::Txn(txn) => {
                let success: u64 = txn.success.iter().map(op).sum();
                let failure: u64 = txn.failure.iter().map(op).sum();
                success.max(failure)
            }
            _ => 0,
        }
    }

    /// The changes to `range` at revisions from `start` on, in order, as a
    /// watch that last saw `start - 1` needs them. Fails if `start` is at or
    /// before the compaction point (changes may be missing).
    pub fn events_since(&self, range: &KeyRange, start: u64) -> Result<Vec<Event>, KvError> {
        Ok(self.history(range, start, HistoryLimits::ALL, true)?.events)
    }

    /// The changes to `range` from revision `start` on, in order, up to
    /// `limits` (whole revisions, at least one): what a watch that last saw
    /// `start - 1` needs next. The work is bounded by `limits`, not by the
    /// size of the history or of the store: a single key is read from its
    /// own versions, any other range from the index of changes in revision
    /// order. Events carry the key's previous key-value only if `prev_kv`.
    /// Fails if `start` is at or before the compaction point (changes may
    /// be missing).
    pub fn history(
        &self,
        range: &KeyRange,
        start: u64,
        limits: HistoryLimits,
        prev_kv: bool,
    ) -> Result<History, KvError> {
        if start <= self.compacted {
            return Err(KvError::Compacted {
                requested: start,
                compacted: self.compacted,
            });
        }
        let mut chunk = History {
            events: Vec::new(),
            next: self.revision + 1,
            scanned: 0,
            complete: true,
        };
        let mut bytes = 0usize;
        let full = |chunk: &History, bytes: usize| {
            chunk.scanned >= limits.max_scanned
                || chunk.events.len() >= limits.max_events
                || bytes >= limits.max_bytes
        };
        // One key: its versions are its history, one per revision.
        if let KeyRange::Key(key) = range {
            let versions = self
                .keys
                .get(key.as_slice())
                .map_or(&[][..], |v| v.as_slice());
            let from = versions.partition_point(|v| v.mod_revision < start);
            for i in from..versions.len() {
                if i > from && full(&chunk, bytes) {
                    chunk.next = versions[i].mod_revision;
                    chunk.complete = false;
                    break;
                }
                chunk.scanned += 1;
                let event = event_of(key, versions, i, prev_kv);
                bytes += event_bytes(&event);
                chunk.events.push(event);
            }
            return Ok(chunk);
        }
        let from = self.changes.partition_point(|c| c.revision < start);
        let mut current = None;
        for change in self.changes.range(from..) {
            if current != Some(change.revision) {
                if current.is_some() && full(&chunk, bytes) {
                    chunk.next = change.revision;
                    chunk.complete = false;
                    break;
                }
                current = Some(change.revision);
            }
            chunk.scanned += 1;
            if !range.contains(&change.key) {
                continue;
            }
            // Invariant: a change after the compaction point keeps its
            // version (compaction drops only versions at or before it).
            let Some(versions) = self.keys.get(&change.key) else {
                continue;
            };
            let at = (change.revision, change.sub);
            let i = versions.partition_point(|v| (v.mod_revision, v.sub) < at);
            if versions
                .get(i)
                .is_none_or(|v| (v.mod_revision, v.sub) != at)
            {
                continue;
            }
            let event = event_of(&change.key, versions, i, prev_kv);
            bytes += event_bytes(&event);
            chunk.events.push(event);
        }
        Ok(chunk)
    }

    /// Rebuilds the index of changes from the versions.
    fn index_changes(&mut self) {
        let mut changes: Vec<Change> = self
            .keys
            .iter()
            .flat_map(|(key, versions)| {
                versions
                    .iter()
                    .filter(|v| v.mod_revision > self.compacted)
                    .map(move |v| Change {
                        revision: v.mod_revision,
                        sub: v.sub,
                        key: key.clone(),
                    })
            })
            .collect();
        changes.sort_by_key(|c| (c.revision, c.sub));
        self.changes = changes.into();
    }

    /// The whole state, to ship or store as a snapshot.
    pub fn snapshot(&self) -> Vec<u8> {
        super::encode_exact(self)
    }

    /// The state as it is now, to encode elsewhere while this store goes
    /// on: O(1) whatever the store holds (its maps are persistent; the
    /// point and the store share every node until one of them changes it).
    /// Encodes to [`Store::snapshot`]'s very bytes.
    pub fn snapshot_point(&self) -> StorePoint {
        StorePoint {
            revision: self.revision,
            compacted: self.compacted,
            keys: self.keys.clone(),
            leases: self.leases.clone(),
            limits: self.limits,
            bytes: self.bytes,
            sessions: self.sessions.clone(),
        }
    }

    /// A store from [`Store::snapshot`] bytes. Bytes that decode but break
    /// the store's invariants (a corrupt or forged snapshot) are refused as
    /// undecodable ones are, so a restored store never panics when used.
    pub fn restore(bytes: &[u8]) -> Result<Store, postcard::Error> {
        postcard::from_bytes(bytes)
    }

    /// Whether the fields agree with each other as [`Store::apply`] keeps
    /// them: revisions in range and in order, the byte count exact, and
    /// what compaction leaves (each key at most one version at or before
    /// the compaction point, never a deletion marker), which the next
    /// compaction relies on.
    fn consistent(&self) -> bool {
        if self.compacted > self.revision || self.revision == u64::MAX {
            return false;
        }
        let mut bytes = 0u64;
        for (key, versions) in &self.keys {
            if versions.is_empty() {
                return false;
            }
            // Versions are in order: only the first may be at or before
            // the compaction point, and not as a deletion marker.
            let at_or_before = |i: usize| {
                versions
                    .get(i)
                    .is_some_and(|v: &Version| v.mod_revision <= self.compacted)
            };
            if at_or_before(1) || (at_or_before(0) && versions[0].value.is_none()) {
                return false;
            }
            let mut previous = None;
            for v in versions.iter() {
                let at = (v.mod_revision, v.sub);
                if previous.is_some_and(|p| p >= at)
                    || v.mod_revision > self.revision
                    || v.create_revision > v.mod_revision
                    || v.version > self.revision
                {
                    return false;
                }
                previous = Some(at);
                let size = key.len() as u64 + v.value.as_ref().map_or(0, |x| x.len() as u64);
                let Some(sum) = bytes.checked_add(size) else {
                    return false;
                };
                bytes = sum;
            }
        }
        bytes == self.bytes
    }

    fn keys_in<'a>(
        &'a self,
        range: &'a KeyRange,
    ) -> Box<dyn Iterator<Item = (&'a Key, &'a Versions)> + 'a> {
        use std::ops::Bound::{Excluded, Included, Unbounded};
        match range {
            KeyRange::Key(k) => Box::new(self.keys.get_key_value(k.as_slice()).into_iter()),
            KeyRange::Prefix(p) => Box::new(
                self.keys
                    .range::<_, [u8]>((Included(p.as_slice()), Unbounded))
                    .take_while(move |(k, _)| k.starts_with(p)),
            ),
            KeyRange::Range { start, end } if end.is_empty() => Box::new(
                self.keys
                    .range::<_, [u8]>((Included(start.as_slice()), Unbounded)),
            ),
            KeyRange::Range { start, end } if start < end => Box::new(
                self.keys
                    .range::<_, [u8]>((Included(start.as_slice()), Excluded(end.as_slice()))),
            ),
            KeyRange::Range { .. } => Box::new(std::iter::empty()),
        }
    }

    fn current(&self, key: &[u8]) -> Option<&Version> {
        self.keys
            .get(key)
            .and_then(|v| v.last())
            .filter(|v| v.value.is_some())
    }

    fn put(&mut self, writer: &mut Writer, put: PutRequest) -> Result<PutResponse, KvError> {
        let PutRequest {
            key,
            value,
            lease,
            prev_kv: want_prev,
        } = put;
        // One look-up of an existing key for the whole put (a new key
        // takes a second, to insert it): the hot path of every write, whose
        // cost is mostly cache misses down the tree. The versions are made
        // this store's own at once (copied if a snapshot point still shares
        // them): the put adds one.
        let key = Key::from(key);
        let mut slot = self.keys.get_mut(&key).map(Arc::make_mut);
        let prev = slot
            .as_deref()
            .and_then(|v| v.last())
            .filter(|v| v.value.is_some());
        let key = &key;
        let prev_kv = prev.and_then(|v| kv_of(key, v));
        let prev_live = prev.map_or(0, |p| {
            (key.len() + p.value.as_ref().map_or(0, Vec::len)) as u64
        });
        let (create_revision, version, old_lease) = match prev {
            Some(p) => (p.create_revision, p.version + 1, p.lease),
            None => (writer.revision, 1, None),
        };
        if let Some(old) = old_lease {
            if let Some(lease) = self.leases.get_mut(&old) {
                lease.keys.remove(&key[..]);
            }
        }
        if let Some(id) = lease {
            let lease = self.leases.get_mut(&id).ok_or(KvError::LeaseNotFound(id))?;
            lease.keys.insert(key.to_vec());
        }
        let new = Version {
            mod_revision: writer.revision,
            sub: writer.events.len() as u32,
            create_revision,
            version,
            value: Some(value),
            lease,
        };
        let kv = kv_of(key, &new);
        let size = (key.len() + new.value.as_ref().map_or(0, Vec::len)) as u64;
        self.bytes += size;
        self.live_bytes = self.live_bytes - prev_live + size;
        self.changes.push_back(Change {
            revision: new.mod_revision,
            sub: new.sub,
            key: key.clone(),
        });
        match slot.as_mut() {
            Some(versions) => {
                // Most keys hold a version or two (compaction trims them
                // back): room for one more, not the doubling to four that
                // a `Vec` does, which left 144 unused bytes on every key.
                if versions.len() < 4 {
                    versions.reserve_exact(1);
                }
                versions.push(new);
            }
            None => {
                self.keys.insert(key.clone(), Arc::new(vec![new]));
            }
        }
        let response = PutResponse {
            prev_kv: if want_prev { prev_kv.clone() } else { None },
        };
        if let Some(kv) = kv {
            writer.events.push(Event {
                kind: EventKind::Put,
                kv,
                prev_kv,
            });
        }
        Ok(response)
    }

    fn delete(&mut self, writer: &mut Writer, delete: &DeleteRequest) -> DeleteResponse {
        let live: Vec<Key> = self
            .keys_in(&delete.range)
            .filter(|(_, v)| v.last().is_some_and(|v| v.value.is_some()))
            .map(|(k, _)| k.clone())
            .collect();
        let mut response = DeleteResponse {
            deleted: 0,
            prev_kvs: Vec::new(),
        };
        for key in live {
            if let Some(prev) = self.delete_key(writer, &key, true) {
                response.deleted += 1;
                if delete.prev_kv {
                    response.prev_kvs.push(prev);
                }
            }
        }
        response
    }

    /// Deletes one live key; its previous key-value if it was live.
    fn delete_key(&mut self, writer: &mut Writer, key: &[u8], detach: bool) -> Option<KeyValue> {
        let versions = Arc::make_mut(self.keys.get_mut(key)?);
        let prev = versions.last().filter(|v| v.value.is_some())?.clone();
        versions.push(Version {
            mod_revision: writer.revision,
            sub: writer.events.len() as u32,
            create_revision: 0,
            version: 0,
            value: None,
            lease: None,
        });
        let prev_kv = kv_of(key, &prev);
        if detach {
            if let Some(lease) = prev.lease.and_then(|id| self.leases.get_mut(&id)) {
                lease.keys.remove(key);
            }
        }
        self.bytes += key.len() as u64;
        self.live_bytes -= (key.len() + prev.value.as_ref().map_or(0, Vec::len)) as u64;
        self.changes.push_back(Change {
            revision: writer.revision,
            sub: writer.events.len() as u32,
            key: Key::new(key),
        });
        writer.events.push(Event {
            kind: EventKind::Delete,
            kv: tombstone_kv(key, writer.revision),
            prev_kv: prev_kv.clone(),
        });
        prev_kv
    }

    fn txn(&mut self, writer: &mut Writer, txn: Txn) -> Result<TxnResponse, KvError> {
        let succeeded = txn.compare.iter().all(|c| self.holds(c));
        let branch = if succeeded { txn.success } else { txn.failure };
        let mut responses = Vec::with_capacity(branch.len());
        for op in branch {
            responses.push(match op {
                // Reads in a transaction see its earlier writes.
                RequestOp::Range(r) if r.revision == 0 => {
                    ResponseOp::Range(self.read_at(&r, writer.revision, usize::MAX))
                }
                RequestOp::Range(r) => ResponseOp::Range(self.range(&r)?),
                RequestOp::Put(p) => ResponseOp::Put(self.put(writer, p)?),
                RequestOp::Delete(d) => ResponseOp::Delete(self.delete(writer, &d)),
            });
        }
        let revision = if writer.events.is_empty() {
            self.revision
        } else {
            writer.revision
        };
        Ok(TxnResponse {
            succeeded,
            responses,
            revision,
        })
    }

    fn holds(&self, compare: &Compare) -> bool {
        let current = self.current(&compare.key);
        let ord = match (&compare.target, current) {
            (CompareTarget::Value(_), None) => return false,
            (CompareTarget::Value(v), Some(c)) => {
                c.value.as_deref().unwrap_or_default().cmp(v.as_slice())
            }
            (CompareTarget::Version(n), c) => c.map_or(0, |c| c.version).cmp(n),
            (CompareTarget::CreateRevision(n), c) => c.map_or(0, |c| c.create_revision).cmp(n),
            (CompareTarget::ModRevision(n), c) => c.map_or(0, |c| c.mod_revision).cmp(n),
            (CompareTarget::Lease(l), c) => c.and_then(|c| c.lease).cmp(l),
        };
        match compare.op {
            CompareOp::Equal => ord.is_eq(),
            CompareOp::NotEqual => ord.is_ne(),
            CompareOp::Greater => ord.is_gt(),
            CompareOp::Less => ord.is_lt(),
        }
    }

    fn compact(&mut self, revision: u64) -> Result<(), KvError> {
        if revision <= self.compacted {
            return Err(KvError::Compacted {
                requested: revision,
                compacted: self.compacted,
            });
        }
        // Only a key changed after the last compaction point can hold a
        // version this one frees: compaction leaves each key at most one
        // version at or before its point, and never a deletion marker. So
        // the changes up to `revision` name every key to trim, and the
        // work is that of the history dropped, not of the whole store.
        let mut freed = 0u64;
        while self.changes.front().is_some_and(|c| c.revision <= revision) {
            let Some(change) = self.changes.pop_front() else {
                break;
            };
            // One look-up per change; only versions with something to drop
            // are changed (and copied, if a snapshot point shares them).
            let Some(shared) = self.keys.get_mut(&change.key) else {
                continue;
            };
            let drop = compacted_below(shared, revision);
            if drop == 0 {
                continue;
            }
            let key_len = change.key.len() as u64;
            let versions = Arc::make_mut(shared);
            for v in versions.drain(..drop) {
                freed += key_len + v.value.as_ref().map_or(0, |x| x.len() as u64);
            }
            if versions.is_empty() {
                self.keys.remove(&change.key);
            }
        }
        self.bytes -= freed;
        self.compacted = revision;
        Ok(())
    }
}

/// How many of a key's `versions` (oldest first) compaction at `revision`
/// drops: all before the one visible at `revision`, and that one too if it
/// is a deletion marker.
fn compacted_below(versions: &[Version], revision: u64) -> usize {
    match versions.iter().rposition(|v| v.mod_revision <= revision) {
        Some(i) if versions[i].value.is_none() => i + 1,
        Some(i) => i,
        None => 0,
    }
}

/// Whether two ranges share a key.
/// Whether `command` keeps within `limits` (sizes, operation counts, one
/// write per key in a transaction): a pure function of the command, so the
/// leader can check it before proposing and every replica gets the same
/// answer at apply time.
pub fn check_limits(command: &Command, limits: &Limits) -> Result<(), KvError> {
    let key = |k: &[u8]| {
        if k.is_empty() || k.len() > limits.max_key {
            Err(KvError::KeyTooLarge {
                len: k.len(),
                max: limits.max_key,
            })
        } else {
            Ok(())
        }
    };
    let put = |p: &PutRequest| {
        key(&p.key)?;
        if p.value.len() > limits.max_value {
            return Err(KvError::ValueTooLarge {
                len: p.value.len(),
                max: limits.max_value,
            });
        }
        Ok(())
    };
    match command.inner() {
        Command::Put(p) => put(p),
        Command::Txn(txn) => {
            let ops = txn.compare.len() + txn.success.len().max(txn.failure.len());
            if ops > limits.max_txn_ops {
                return Err(KvError::TooManyOps {
                    ops,
                    max: limits.max_txn_ops,
                });
            }
            for branch in [&txn.success, &txn.failure] {
                let mut written: Vec<KeyRange> = Vec::new();
                for op in branch {
                    let range = match op {
                        RequestOp::Put(p) => {
                            put(p)?;
                            KeyRange::Key(p.key.clone())
                        }
                        RequestOp::Delete(d) => d.range.clone(),
                        RequestOp::Range(_) => continue,
                    };
                    if written.iter().any(|w| ranges_overlap(w, &range)) {
                        return Err(KvError::DuplicateKey);
                    }
                    written.push(range);
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn ranges_overlap(a: &KeyRange, b: &KeyRange) -> bool {
    // [start, end) with None as +infinity.
    fn bounds(r: &KeyRange) -> (Vec<u8>, Option<Vec<u8>>) {
        match r {
            KeyRange::Key(k) => {
                let mut end = k.clone();
                end.push(0);
                (k.clone(), Some(end))
            }
            KeyRange::Prefix(p) => (p.clone(), prefix_end(p)),
            KeyRange::Range { start, end } => {
                (start.clone(), (!end.is_empty()).then(|| end.clone()))
            }
        }
    }
    let (a0, a1) = bounds(a);
    let (b0, b1) = bounds(b);
    let before = |start: &Vec<u8>, end: &Option<Vec<u8>>| end.as_ref().is_some_and(|e| e <= start);
    !(before(&b0, &a1) || before(&a0, &b1))
}

pub use crate::kv::prefix_end;

/// The key-value visible at revision `at`, if the key existed then.
fn visible(key: &[u8], versions: &[Version], at: u64) -> Option<KeyValue> {
    let v = versions.iter().rev().find(|v| v.mod_revision <= at)?;
    kv_of(key, v)
}

fn kv_of(key: &[u8], v: &Version) -> Option<KeyValue> {
    Some(KeyValue {
        key: key.to_vec(),
        value: v.value.clone()?,
        create_revision: v.create_revision,
        mod_revision: v.mod_revision,
        version: v.version,
        lease: v.lease,
    })
}

/// The watch event of `versions[i]` of `key`, with the version before it
/// if `prev`.
fn event_of(key: &[u8], versions: &[Version], i: usize, prev: bool) -> Event {
    let v = &versions[i];
    let prev_kv = match prev {
        true => i.checked_sub(1).and_then(|p| kv_of(key, &versions[p])),
        false => None,
    };
    match kv_of(key, v) {
        Some(kv) => Event {
            kind: EventKind::Put,
            kv,
            prev_kv,
        },
        None => Event {
            kind: EventKind::Delete,
            kv: tombstone_kv(key, v.mod_revision),
            prev_kv,
        },
    }
}

/// What an event adds to an encoded delivery, at most.
fn event_bytes(event: &Event) -> usize {
    let kv = |kv: &KeyValue| crate::kv::encoded_kv_bytes(kv.key.len(), kv.value.len());
    kv(&event.kv) + event.prev_kv.as_ref().map_or(0, kv)
}

fn tombstone_kv(key: &[u8], revision: u64) -> KeyValue {
    KeyValue {
        key: key.to_vec(),
        value: Vec::new(),
        create_revision: 0,
        mod_revision: revision,
        version: 0,
        lease: None,
    }
}

#[cfg(test)]
mod tests;
