//! Key-value data types shared by nodes and clients: keys and values with
//! their revisions, range/put/delete requests, etcd-style transactions
//! (compare / then / else), watch events and leases.
//!
//! Revisions are the store's logical clock: every write transaction that
//! changes something takes the next revision, and every key records the
//! revision that created it and the one that last changed it. A key's
//! `version` counts its changes since it was (re)created.
//!
//! # Example
//!
//! A compare-and-swap, as a client builds it:
//!
//! ```
//! use clustron_dkv::kv::{Compare, CompareOp, CompareTarget, RequestOp, Txn};
//!
//! let txn = Txn {
//!     compare: vec![Compare {
//!         key: b"config".to_vec(),
//!         target: CompareTarget::ModRevision(42),
//!         op: CompareOp::Equal,
//!     }],
//!     success: vec![RequestOp::put(b"config", b"v2")],
//!     failure: vec![RequestOp::get(b"config")],
//! };
//! assert_eq!(txn.compare.len(), 1);
//! ```

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A lease: keys attached to it are deleted when it expires or is revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LeaseId(pub u64);

/// A client session: the unit of exactly-once writes. Registered through
/// the log, it remembers the result of each write sent in it, so a write
/// retried with the same sequence number is answered with its first result
/// and never applied twice (Raft dissertation, section 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SessionId(pub u64);

/// Shortest lease a leader grants: 1 s. A failover takes well under a
/// second (the election's lease is 600 ms) and a new leader restarts every
/// lease's TTL, so a lease of a second or more survives a leader change;
/// anything shorter would mostly measure failovers. (etcd derives its
/// minimum TTL from its election timeout for the same reason, and raises
/// shorter requests to it silently; we refuse them so no one is surprised.)
/// TTL 0 is refused too: a lease that is gone at once is never what was
/// meant.
pub const MIN_LEASE_TTL: Duration = Duration::from_secs(1);

/// Longest lease a leader grants: 365 days. A lease is for something that
/// must go away when its owner does; a year is far beyond any keep-alive
/// interval and keeps every deadline far from clock overflow.
pub const MAX_LEASE_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// Checks a lease TTL (in milliseconds) against [`MIN_LEASE_TTL`] ..=
/// [`MAX_LEASE_TTL`]. The leader checks before proposing a grant; clients
/// may check first to fail without a round trip.
pub fn check_lease_ttl(ttl_ms: u64) -> Result<(), KvError> {
    let (min_ms, max_ms) = (
        MIN_LEASE_TTL.as_millis() as u64,
        MAX_LEASE_TTL.as_millis() as u64,
    );
    if (min_ms..=max_ms).contains(&ttl_ms) {
        Ok(())
    } else {
        Err(KvError::LeaseTtlOutOfRange {
            ttl_ms,
            min_ms,
            max_ms,
        })
    }
}

/// A key with its value and history counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    /// The key.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// The value.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// Revision of the write that created the key (after its last delete).
    pub create_revision: u64,
    /// Revision of the write that last changed it.
    pub mod_revision: u64,
    /// Changes since creation: 1 when created.
    pub version: u64,
    /// The lease it is attached to, if any.
    pub lease: Option<LeaseId>,
}

/// Which keys a request touches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyRange {
    /// Exactly this key.
    Key(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Every key starting with these bytes.
    Prefix(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Keys in `[start, end)`; an empty `end` means no upper bound.
    Range {
        /// First key (inclusive).
        #[serde(with = "serde_bytes")]
        start: Vec<u8>,
        /// End key (exclusive), empty for none.
        #[serde(with = "serde_bytes")]
        end: Vec<u8>,
    },
}

impl KeyRange {
    /// Whether `key` is in the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        match self {
            KeyRange::Key(k) => k.as_slice() == key,
            KeyRange::Prefix(p) => key.starts_with(p),
            KeyRange::Range { start, end } => {
                key >= start.as_slice() && (end.is_empty() || key < end.as_slice())
            }
        }
    }

    /// The smallest key of the range.
    pub fn start(&self) -> &[u8] {
        match self {
            KeyRange::Key(k) | KeyRange::Prefix(k) => k,
            KeyRange::Range { start, .. } => start,
        }
    }

    /// The keys of this range that sort after `key`: where the next page
    /// of a range read starts (etcd's "last key + \0").
    pub fn after(&self, key: &[u8]) -> KeyRange {
        let mut start = key.to_vec();
        start.push(0);
        let end = match self {
            // The key itself, if anything, came already.
            KeyRange::Key(k) => {
                let mut end = k.clone();
                end.push(0);
                end.max(start.clone())
            }
            // A prefix of only 0xff bytes has no upper bound: empty.
            KeyRange::Prefix(p) => prefix_end(p).unwrap_or_default(),
            KeyRange::Range { end, .. } => end.clone(),
        };
        KeyRange::Range { start, end }
    }
}

/// The first key after every key starting with `prefix` (`None`: no such
/// key, the prefix is all 0xff).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Most bytes of keys and values a node puts in one range answer; a range
/// that holds more is answered in pages (`more` set, the client continues
/// after the last key it got, at the same revision), so no answer comes
/// near the transport's 4 MiB frame limit. A page always holds at least one
/// key, and one key-value is at most 4 KiB + 512 KiB, so a page is at most
/// about 2.5 MiB.
pub const RANGE_PAGE_BYTES: usize = 2 * 1024 * 1024;

/// Most bytes of key-values a write's answer may be expected to carry
/// (`prev_kv`, reads in a transaction): the leader refuses, before
/// proposing, a write whose answer would be larger
/// ([`KvError::AnswerTooLarge`]), since it could not be sent once applied.
/// Below the transport's 4 MiB frame limit with room to spare.
pub const MAX_ANSWER_BYTES: usize = 3 * 1024 * 1024;

/// What one key-value adds to an encoded answer, at most: its key and value
/// and up to 64 bytes of lengths, revisions, version and lease.
pub fn encoded_kv_bytes(key: usize, value: usize) -> usize {
    key + value + 64
}

/// Read keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeRequest {
    /// Which keys.
    pub range: KeyRange,
    /// Read as of this revision (0: the current one).
    pub revision: u64,
    /// At most this many keys (0: no limit); `more` tells if some were left.
    pub limit: u64,
    /// Leave values out.
    pub keys_only: bool,
    /// Only count.
    pub count_only: bool,
}

/// Keys read, as of a revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeResponse {
    /// The keys, in key order (empty when `count_only`).
    pub kvs: Vec<KeyValue>,
    /// How many keys the range holds, ignoring `limit`.
    pub count: u64,
    /// Whether `limit` left keys out.
    pub more: bool,
}

/// Set a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutRequest {
    /// The key.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// The value.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// Attach the key to this lease (which must exist).
    pub lease: Option<LeaseId>,
    /// Return the previous key-value.
    pub prev_kv: bool,
}

/// A key set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutResponse {
    /// The previous key-value, if asked for and there was one.
    pub prev_kv: Option<KeyValue>,
}

/// Delete keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteRequest {
    /// Which keys.
    pub range: KeyRange,
    /// Return the deleted key-values.
    pub prev_kv: bool,
}

/// Keys deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteResponse {
    /// How many keys were deleted.
    pub deleted: u64,
    /// Their last key-values, if asked for.
    pub prev_kvs: Vec<KeyValue>,
}

/// What a [`Compare`] looks at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    /// The value's bytes.
    Value(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The key's version (0 when absent).
    Version(u64),
    /// The key's create revision (0 when absent).
    CreateRevision(u64),
    /// The key's mod revision (0 when absent).
    ModRevision(u64),
    /// The key's lease (`None` when absent or unattached).
    Lease(Option<LeaseId>),
}

/// How a [`Compare`] compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareOp {
    /// `==`
    Equal,
    /// `!=`
    NotEqual,
    /// The key's side is greater.
    Greater,
    /// The key's side is less.
    Less,
}

/// One condition of a [`Txn`]: the key's `target` field `op` the given one.
/// An absent key compares with version, revisions 0, empty value... except
/// `Value`, which is false for an absent key whatever the op (etcd's rule).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    /// The key.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// The field and the value to compare it with.
    pub target: CompareTarget,
    /// The comparison.
    pub op: CompareOp,
}

/// One operation of a transaction branch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestOp {
    /// Read.
    Range(RangeRequest),
    /// Write.
    Put(PutRequest),
    /// Delete.
    Delete(DeleteRequest),
}

impl RequestOp {
    /// Read one key at the current revision.
    pub fn get(key: &[u8]) -> Self {
        RequestOp::Range(RangeRequest {
            range: KeyRange::Key(key.to_vec()),
            revision: 0,
            limit: 0,
            keys_only: false,
            count_only: false,
        })
    }

    /// Set a key, no lease, no previous value.
    pub fn put(key: &[u8], value: &[u8]) -> Self {
        RequestOp::Put(PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            lease: None,
            prev_kv: false,
        })
    }

    /// Delete one key.
    pub fn delete(key: &[u8]) -> Self {
        RequestOp::Delete(DeleteRequest {
            range: KeyRange::Key(key.to_vec()),
            prev_kv: false,
        })
    }
}

/// The answer to one [`RequestOp`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResponseOp {
    /// Keys read.
    Range(RangeResponse),
    /// A key set.
    Put(PutResponse),
    /// Keys deleted.
    Delete(DeleteResponse),
}

/// A transaction: if every compare holds, `success` runs, else `failure`;
/// all of it atomically, at one revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Txn {
    /// The conditions (all must hold).
    pub compare: Vec<Compare>,
    /// Run when they do.
    pub success: Vec<RequestOp>,
    /// Run when one does not.
    pub failure: Vec<RequestOp>,
}

/// What a transaction did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnResponse {
    /// Whether the compares held (so `success` ran).
    pub succeeded: bool,
    /// One answer per operation of the branch that ran.
    pub responses: Vec<ResponseOp>,
    /// The store's revision after it.
    pub revision: u64,
}

/// A change to a key, as watchers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Put or delete.
    pub kind: EventKind,
    /// The key-value after the change (for a delete: the key, an empty
    /// value, and the revision of the delete as `mod_revision`).
    pub kv: KeyValue,
    /// The key-value before it, if the key existed.
    pub prev_kv: Option<KeyValue>,
}

/// The kind of an [`Event`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// The key was created or changed.
    Put,
    /// The key was deleted (by a request, or its lease ended).
    Delete,
}

/// Why the store refused a request. Deterministic: every replica refuses
/// the same command the same way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum KvError {
    /// The key is empty or longer than the limit.
    #[error("key of {len} bytes is not allowed (1 to {max} bytes)")]
    KeyTooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The value is longer than the limit.
    #[error("value of {len} bytes is over the limit of {max} bytes")]
    ValueTooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A transaction with too many operations.
    #[error("transaction with {ops} operations is over the limit of {max}")]
    TooManyOps {
        /// How many.
        ops: usize,
        /// The limit.
        max: usize,
    },
    /// The revision asked for has been compacted away.
    #[error("revision {requested} is compacted (oldest readable: {compacted} + 1)")]
    Compacted {
        /// What was asked for.
        requested: u64,
        /// The compaction point.
        compacted: u64,
    },
    /// The revision asked for is in the future.
    #[error("revision {requested} is ahead of the store ({current})")]
    FutureRevision {
        /// What was asked for.
        requested: u64,
        /// The store's revision.
        current: u64,
    },
    /// No such lease.
    #[error("lease {0:?} not found")]
    LeaseNotFound(LeaseId),
    /// A lease with this id already exists.
    #[error("lease {0:?} already exists")]
    LeaseExists(LeaseId),
    /// A transaction that writes the same key twice.
    #[error("a transaction may write a key only once")]
    DuplicateKey,
    /// The session is unknown: it expired (its client was silent for its
    /// TTL) or never existed. A write retried in it may or may not have been
    /// applied before it expired.
    #[error("session {0:?} has expired or does not exist")]
    SessionExpired(SessionId),
    /// The session has too many writes whose answers the client has not
    /// acknowledged; nothing was applied. Retry once earlier ones are
    /// answered.
    #[error("session has {unacknowledged} unacknowledged writes (at most {max})")]
    SessionBusy {
        /// Writes sent and not acknowledged.
        unacknowledged: u64,
        /// The limit.
        max: u64,
    },
    /// This write's sequence number is below what the client said it has
    /// already been answered for: a stale duplicate, not applied again.
    #[error("write {seq} of the session was answered already; not applied again")]
    AlreadyAnswered {
        /// Its sequence number.
        seq: u64,
    },
    /// A session command where it cannot be: inside a session write, or
    /// as a plain write.
    #[error("session commands cannot be nested or sent as plain writes")]
    NotInSession,
    /// A lease TTL outside [`MIN_LEASE_TTL`] ..= [`MAX_LEASE_TTL`]; refused
    /// by the leader before anything was proposed.
    #[error("lease TTL of {ttl_ms} ms is out of range: a lease lives 1 s to 365 days ({min_ms} to {max_ms} ms)")]
    LeaseTtlOutOfRange {
        /// The TTL asked for, in milliseconds.
        ttl_ms: u64,
        /// The shortest allowed.
        min_ms: u64,
        /// The longest allowed.
        max_ms: u64,
    },
    /// The answer would not fit in one message (e.g. a delete with
    /// `prev_kv` of a large range); refused by the leader before anything
    /// was proposed. Ask for less: no `prev_kv`, `keys_only`, a `limit`, or
    /// a narrower range.
    #[error("the answer would be about {estimated} bytes, over the limit of {max}; nothing was applied: ask for less (no prev_kv, keys_only, a limit or a narrower range)")]
    AnswerTooLarge {
        /// The answer's estimated size in bytes.
        estimated: u64,
        /// The most an answer may be.
        max: u64,
    },
    /// The watch was cancelled: it was behind and its reader took nothing
    /// for `stalled_ms` milliseconds, so the node stopped holding its place.
    /// Nothing is lost: watch again from the revision after the last one
    /// received (while it is not compacted), and read faster.
    #[error("watch cancelled: its reader took nothing for {stalled_ms} ms while the watch was behind; watch again from the revision after the last one received")]
    WatchTooSlow {
        /// How long the reader took nothing, in milliseconds.
        stalled_ms: u64,
    },
    /// Too many sessions are open; nothing was applied.
    #[error("too many open sessions (at most {max})")]
    TooManySessions {
        /// The limit.
        max: usize,
    },
}

/// A successful answer from a node's key-value server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvReply {
    /// Keys read, and the revision they were read at.
    Range(RangeResponse, u64),
    /// A put done, at the revision.
    Put(PutResponse, u64),
    /// A delete done, at the revision.
    Delete(DeleteResponse, u64),
    /// A transaction done.
    Txn(TxnResponse),
    /// A lease granted.
    LeaseGranted {
        /// Its id.
        id: LeaseId,
        /// Its TTL in milliseconds.
        ttl_ms: u64,
    },
    /// A lease revoked and its keys deleted.
    LeaseRevoked {
        /// How many keys went with it.
        deleted: u64,
    },
    /// A lease renewed; it now lives this long unless renewed again.
    KeptAlive {
        /// Its TTL in milliseconds.
        ttl_ms: u64,
    },
    /// The store is compacted.
    Compacted,
    /// A session opened.
    SessionOpened {
        /// Its id.
        id: SessionId,
        /// Its TTL in milliseconds: it expires after this long without a
        /// write or keep-alive.
        ttl_ms: u64,
    },
    /// A session closed (by expiry).
    SessionClosed,
    /// The log's replicas as the leader sees them (voters, then learners);
    /// after a voter change, once it is decided.
    Voters(Vec<ReplicaInfo>),
}

/// One replica of the log as the leader sees it (`clustron voters`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaInfo {
    /// The node's name.
    pub name: String,
    /// `voter` (counts for commit, may lead) or `learner` (receives the
    /// log only).
    pub role: String,
    /// The leader's own: the index it applied. Another node's: the highest
    /// committed index the leader knows it holds durably.
    pub applied_index: u64,
    /// Committed entries it is not known to hold.
    pub lag: u64,
}

/// A key-value request from a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvRequest {
    /// Read keys: linearizable (the leader answers, up to date) or
    /// serializable (any node, from what it has applied).
    Range {
        /// What to read.
        request: RangeRequest,
        /// Linearizable or serializable.
        linearizable: bool,
    },
    /// Set a key.
    Put(PutRequest),
    /// Delete keys.
    Delete(DeleteRequest),
    /// A transaction.
    Txn(Txn),
    /// Create a lease; id 0 lets the leader choose one.
    LeaseGrant {
        /// The id wanted, or 0.
        id: LeaseId,
        /// Time to live in milliseconds.
        ttl_ms: u64,
    },
    /// End a lease and delete its keys.
    LeaseRevoke(LeaseId),
    /// Renew a lease.
    KeepAlive(LeaseId),
    /// Forget history before a revision.
    Compact(u64),
    /// Open a session for exactly-once writes ([`SessionId`]).
    OpenSession {
        /// How long it lives without a write or keep-alive, in
        /// milliseconds.
        ttl_ms: u64,
    },
    /// Renew a session (leader only).
    SessionKeepAlive(SessionId),
    /// A write in a session: exactly once however often it is sent.
    InSession {
        /// The session.
        session: SessionId,
        /// This write's number in the session: from 1, one per write, the
        /// same on every retry.
        seq: u64,
        /// Every write numbered below this has been answered to the client,
        /// so the node may forget those answers.
        acked: u64,
        /// The write (put, delete, transaction, lease grant or revoke).
        /// Decoding refuses more than 16 levels of nesting.
        #[serde(deserialize_with = "crate::nesting::boxed")]
        request: Box<KvRequest>,
    },
    /// The log's voters and learners with their progress (the leader
    /// answers).
    Voters,
    /// Make a member a voter (admin role; the leader answers once the
    /// change is decided).
    AddVoter(String),
    /// Make a voter a learner (admin role; the leader answers once the
    /// change is decided). Removing the leader makes it hand leadership
    /// over first; the client, retrying at the next leader, completes it.
    RemoveVoter(String),
}

/// Why a key-value request failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum KvFailure {
    /// This node cannot serve it; the leader (name, address) if known.
    #[error("{}", match leader {
        Some((name, addr)) => format!("not the leader; the leader is {name} at {addr}"),
        None => "no leader known (is a majority of the voters up and connected?)".to_owned(),
    })]
    NotLeader {
        /// The leader.
        leader: Option<(String, std::net::SocketAddr)>,
    },
    /// Try again shortly (no leader yet, or it is catching up).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The write was lost in a leader change and not applied: safe to retry.
    #[error("the write was lost in a leader change and not applied; retry")]
    Lost,
    /// The write was proposed but not seen committed in time: it may or may
    /// not be applied (read before retrying a non-idempotent write).
    #[error("outcome unknown: {0}")]
    Unknown(String),
    /// The request is too large.
    #[error("request of {len} bytes is over the limit of {max}")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The store refused it.
    #[error(transparent)]
    Refused(#[from] KvError),
    /// The node stopped leading before the write committed: it may or may
    /// not be applied. Retrying it in the same session (same sequence
    /// number) is safe and gives its one result.
    #[error(
        "the leader changed before the write committed; outcome unknown (retry in its session)"
    )]
    LeaderChanged,
    /// The answer was too large to send. A read changed nothing; a write
    /// was applied (at `revision`) and only its answer is lost: do not
    /// retry it, read what it did instead.
    #[error("{}", match revision {
        Some(revision) => format!("the write was applied at revision {revision}, but its answer of {len} bytes is over the limit of {max} and was not sent"),
        None => format!("the answer of {len} bytes is over the limit of {max}: ask for less (a limit, keys_only or a narrower range)"),
    })]
    AnswerTooLarge {
        /// The answer's encoded size.
        len: usize,
        /// The most an answer may be.
        max: usize,
        /// For a write: the revision it was applied at.
        revision: Option<u64>,
    },
    /// A voter change was refused (unsafe, impossible, or another is in
    /// progress) or not decided in time; the reason says which. A refused
    /// change changed nothing.
    #[error("voter change: {0}")]
    VoterChange(String),
    /// The caller's certificate role does not allow the operation.
    #[error("permission denied: role {role} may not {operation}")]
    PermissionDenied {
        /// The caller's role.
        role: String,
        /// What it tried.
        operation: String,
    },
    /// The node already holds as many client requests as it admits
    /// (`limit`): this one was refused before anything was done with it.
    /// Back-pressure, not a failure of the node: retry after a pause, on
    /// the same node (`clustron-client` does, within its retry budget).
    #[error(
        "overloaded: {limit} requests in progress on this node; nothing was done, retry shortly"
    )]
    Overloaded {
        /// How many requests the node admits at once.
        limit: u32,
    },
}

/// What a client asks to watch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchRequest {
    /// Which keys.
    pub range: KeyRange,
    /// First revision wanted (0: changes after the current one).
    pub start_revision: u64,
    /// Include each change's previous key-value.
    pub prev_kv: bool,
    /// Leave out puts.
    pub no_put: bool,
    /// Leave out deletes.
    pub no_delete: bool,
}

impl WatchRequest {
    /// Changes to `range` from now on, without previous values.
    pub fn new(range: KeyRange) -> Self {
        Self {
            range,
            start_revision: 0,
            prev_kv: false,
            no_put: false,
            no_delete: false,
        }
    }
}
