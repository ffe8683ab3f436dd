//! Distributed cache: the operation types shared by the node, the client
//! and the Redis-protocol front end.
//!
//! A cache namespace is partitioned over the members (see the node-side
//! modules): every key belongs to one of [`PARTITIONS`] partitions, chosen
//! by [`partition_of`], and is served by that partition's owner, which
//! copies each change to the partition's backups. No fsync: it is a cache.
//!
//! The types here are plain data (no I/O) so that `clustron-client` can use
//! them without the node.
//!
//! ```
//! use clustron_dkv::cache::{partition_of, CacheOp, PutCondition, PARTITIONS};
//!
//! let op = CacheOp::Put {
//!     key: b"user:1".to_vec(),
//!     value: b"ada".to_vec(),
//!     ttl_ms: Some(60_000),
//!     condition: PutCondition::IfAbsent,
//!     keep_ttl: false,
//!     return_old: false,
//! };
//! assert!(op.is_write());
//! assert!(partition_of(op.key()) < PARTITIONS);
//! ```

use serde::{Deserialize, Serialize};

pub mod namespace;
#[cfg(feature = "server")]
pub mod resp;
#[cfg(feature = "server")]
pub mod store;
#[cfg(feature = "server")]
pub mod table;

#[cfg(feature = "server")]
pub mod plan;
#[cfg(feature = "server")]
pub mod service;
#[cfg(all(test, feature = "server"))]
mod sim_tests;

pub use namespace::NamespaceConfig;

/// Partitions per cluster, fixed for the cluster's life (a prime, as in
/// Hazelcast, so keys spread evenly whatever the hash's low bits do).
pub const PARTITIONS: u32 = 271;

/// The partition a key belongs to: FNV-1a of the key, modulo
/// [`PARTITIONS`]. Stable across versions and platforms: clients and
/// nodes must agree on it.
pub fn partition_of(key: &[u8]) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % u64::from(PARTITIONS)) as u32
}

/// When a put applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PutCondition {
    /// Always.
    Always,
    /// Only if the key is absent (Redis `NX`).
    IfAbsent,
    /// Only if the key is present (Redis `XX`).
    IfPresent,
    /// Only if the key's current version is this one (0: absent).
    IfVersion(u64),
}

/// One operation on one key of a namespace. Multi-key commands (Redis
/// `MGET`, `MSET`, `DEL k1 k2`) are split into one operation per key by
/// whoever routes them, since keys live in different partitions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CacheOp {
    /// The value and version, if present and not expired.
    Get {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// Stores `value` if `condition` holds.
    Put {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The value.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        /// Time to live in milliseconds; `None`: the namespace's default
        /// (or none), unless `keep_ttl`.
        ttl_ms: Option<u64>,
        /// When it applies.
        condition: PutCondition,
        /// Keep the key's current expiry (Redis `KEEPTTL`); ignored if
        /// `ttl_ms` is set.
        keep_ttl: bool,
        /// Answer with the previous value (Redis `SET ... GET`).
        return_old: bool,
    },
    /// Removes the key.
    Delete {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// Whether the key is present.
    Exists {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// Adds `by` to the decimal integer stored at the key (absent: 0).
    Incr {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The increment (negative to decrement).
        by: i64,
    },
    /// Replaces the value only if it is exactly `expected`.
    CompareAndSet {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The value it must hold now.
        #[serde(with = "serde_bytes")]
        expected: Vec<u8>,
        /// The new value.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// Sets (`Some`) or removes (`None`, Redis `PERSIST`) the key's expiry.
    Expire {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// Milliseconds from now.
        ttl_ms: Option<u64>,
    },
    /// The key's remaining time to live.
    Ttl {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// Appends to the value (absent: creates it).
    Append {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// What to append.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// The value's length in bytes (absent: 0).
    Strlen {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
}

impl CacheOp {
    /// The key it touches.
    pub fn key(&self) -> &[u8] {
        match self {
            Self::Get { key }
            | Self::Put { key, .. }
            | Self::Delete { key }
            | Self::Exists { key }
            | Self::Incr { key, .. }
            | Self::CompareAndSet { key, .. }
            | Self::Expire { key, .. }
            | Self::Ttl { key }
            | Self::Append { key, .. }
            | Self::Strlen { key } => key,
        }
    }

    /// Whether it may change the namespace (needs the write role, and is
    /// copied to backups when it does).
    pub fn is_write(&self) -> bool {
        !matches!(
            self,
            Self::Get { .. } | Self::Exists { .. } | Self::Ttl { .. } | Self::Strlen { .. }
        )
    }
}

/// A key's remaining time to live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TtlState {
    /// The key is absent.
    Absent,
    /// Present without expiry.
    Persistent,
    /// Present; expires in this many milliseconds.
    Millis(u64),
}

/// The answer to a [`CacheOp`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CacheReply {
    /// `Get`: the value and its version, if present.
    Value(Option<Versioned>),
    /// `Put`, `CompareAndSet`: whether it was stored, the version it has
    /// now (0: absent), and the previous value if asked for (`Put` with
    /// `return_old`) or if the compare failed (`CompareAndSet`).
    Stored {
        /// Whether the write applied.
        stored: bool,
        /// The key's version after the operation (0: absent).
        version: u64,
        /// The value before the operation, where asked for.
        #[serde(with = "serde_bytes")]
        old: Option<Vec<u8>>,
    },
    /// `Delete`, `Exists`, `Expire`: whether the key was there (and, for
    /// `Expire`, its expiry changed).
    Bool(bool),
    /// `Incr`: the new value.
    Integer(i64),
    /// `Ttl`.
    Ttl(TtlState),
    /// `Append`, `Strlen`: the value's length.
    Len(u64),
}

/// A value with its version: 1 when created, +1 at every change; a deleted
/// or expired key starts again at 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versioned {
    /// The value.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// Its version.
    pub version: u64,
}

/// Why a cache operation failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum CacheError {
    /// `Incr` on a value that is not a decimal 64-bit integer.
    #[error("value is not an integer or out of range")]
    NotInteger,
    /// `Incr` would overflow.
    #[error("increment or decrement would overflow")]
    Overflow,
    /// No such namespace.
    #[error("no cache namespace named {0:?}")]
    NoNamespace(String),
    /// The key or value exceeds the namespace's limits.
    #[error("{what} of {len} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// `key` or `value`.
        what: String,
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// This node does not own the key's partition at the table version the
    /// request named; `owner` does (if known) at `table_version`.
    #[error("partition {partition} is owned by {} at table version {table_version}", owner.as_deref().unwrap_or("nobody"))]
    WrongOwner {
        /// The key's partition.
        partition: u32,
        /// Its owner's name, if any is live.
        owner: Option<String>,
        /// The table version the answering node knows.
        table_version: u64,
    },
    /// The caller's certificate role does not allow writes.
    #[error("the caller's role may not change the cache")]
    ReadOnly,
    /// The partition has no live owner right now (a table change is under
    /// way); retry.
    #[error("partition {0} has no live owner yet; retry")]
    Unavailable(u32),
    /// The cache cannot serve yet (no partition table, the replicated
    /// store has no leader, a peer did not answer); retry.
    #[error("the cache is not ready: {0}; retry")]
    NotReady(String),
    /// A namespace request was refused (bad settings, the name exists or
    /// does not, the caller's role); nothing changed.
    #[error("{0}")]
    Refused(String),
    /// A write's connection to its owner failed after it was sent: it may
    /// or may not be applied (not retried, since `Incr` or `Append` would
    /// apply twice).
    #[error("outcome unknown: {0}")]
    Unknown(String),
}

/// What happened to an entry, for subscribers (near caches).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// Created.
    Put,
    /// Changed (value or expiry).
    Update,
    /// Deleted by a client.
    Remove,
    /// Evicted to keep the namespace within its bounds.
    Evict,
    /// Expired (its TTL passed or it was idle too long).
    Expire,
}

/// An entry event, emitted by the owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheEvent {
    /// What happened.
    pub kind: EventKind,
    /// The partition.
    pub partition: u32,
    /// The key.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// The entry's version after the event, or before it for a removal.
    pub version: u64,
}

/// A cache request on the client protocol
/// ([`crate::proto::Request::Cache`]), served by any node: operations go
/// to the key's owner (forwarded by the node), namespace changes to the
/// replicated store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CacheRequest {
    /// One operation on one key of a namespace (read role for reads, write
    /// role for writes).
    Op {
        /// The namespace.
        namespace: String,
        /// The operation.
        op: CacheOp,
    },
    /// Creates a namespace (admin role); refused if the name is taken.
    Create(NamespaceConfig),
    /// Drops a namespace and its entries (admin role).
    Drop(String),
    /// The namespaces and their settings (read role).
    List,
}

/// The answer to a [`CacheRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CacheAnswer {
    /// The answer to an operation.
    Reply(CacheReply),
    /// The namespaces, by name.
    Namespaces(Vec<NamespaceConfig>),
    /// A namespace change is in the replicated store.
    Done,
}
