//! A cache namespace's settings ([`NamespaceConfig`]): plain data shared by
//! the node, the client and the command line, stored in the replicated
//! store and the same on every node.

use serde::{Deserialize, Serialize};

/// Most backups a partition has (the partition table places an owner and
/// up to this many backups).
pub const MAX_BACKUPS: usize = 2;

/// Bytes counted for each entry beyond its key and value: the map node,
/// the shared key's header and the index entries that point at it
/// (measured order of magnitude, not exact).
pub const ENTRY_OVERHEAD: u64 = 128;

/// Which entry goes first when a namespace is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Eviction {
    /// Least recently used.
    Lru,
    /// Least frequently used, with dynamic ageing (LFU-DA).
    Lfu,
}

/// A cache namespace's settings, stored in the replicated store and the
/// same on every node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceConfig {
    /// The name: 1 to 64 characters out of `A-Z a-z 0-9 _ - .`.
    pub name: String,
    /// Most entries one node holds (owned and backed up together; see the
    /// module doc for how it is split). At least 1.
    pub max_entries: u64,
    /// Most bytes one node holds (keys, values and [`ENTRY_OVERHEAD`] per
    /// entry). Must leave room for the largest entry the limits allow.
    pub max_memory: u64,
    /// What is evicted first when full.
    pub eviction: Eviction,
    /// Time to live given to new entries without one, in milliseconds;
    /// `None`: no expiry. At least 1 when set.
    pub ttl_ms: Option<u64>,
    /// An entry not read or written for this long expires, in
    /// milliseconds; `None`: never. At least 1 when set.
    pub max_idle_ms: Option<u64>,
    /// Backups per partition, 0 to [`MAX_BACKUPS`].
    pub backups: u8,
    /// Answer writes before the backups have them (faster; a failed owner
    /// loses its last writes). See the module doc.
    pub async_backups: bool,
    /// Longest key in bytes, at least 1.
    pub max_key_len: usize,
    /// Longest value in bytes, at least 1.
    pub max_value_len: usize,
}

impl Default for NamespaceConfig {
    /// The namespace `default` (the RESP front end's): 1,000,000 entries,
    /// 256 MiB, LRU, no TTL or max-idle (as Redis with `allkeys-lru`), one
    /// synchronous backup (the default), 16 KiB keys and 1 MiB
    /// values (Redis allows 512 MiB; a cache value that large would stall
    /// replication).
    fn default() -> Self {
        Self {
            name: "default".to_owned(),
            max_entries: 1_000_000,
            max_memory: 256 * 1024 * 1024,
            eviction: Eviction::Lru,
            ttl_ms: None,
            max_idle_ms: None,
            backups: 1,
            async_backups: false,
            max_key_len: 16 * 1024,
            max_value_len: 1024 * 1024,
        }
    }
}

/// Why a [`NamespaceConfig`] is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The name is empty, longer than 64 characters or has other
    /// characters than `A-Z a-z 0-9 _ - .`.
    #[error("namespace name {0:?} must be 1 to 64 characters out of A-Z a-z 0-9 _ - .")]
    BadName(String),
    /// `max_entries` is 0.
    #[error("max_entries must be at least 1")]
    NoEntries,
    /// More backups than the partition table places.
    #[error("backups is {backups}; at most {max}")]
    TooManyBackups {
        /// The value given.
        backups: u8,
        /// The most allowed.
        max: usize,
    },
    /// A duration of 0 ms (say `None` for "never").
    #[error("{what} of 0 ms: leave it unset for no limit")]
    ZeroDuration {
        /// `ttl_ms` or `max_idle_ms`.
        what: &'static str,
    },
    /// `max_key_len` or `max_value_len` is 0.
    #[error("{what} must be at least 1")]
    ZeroLength {
        /// `max_key_len` or `max_value_len`.
        what: &'static str,
    },
    /// The owner's share of `max_memory` cannot hold the largest entry the
    /// length limits allow.
    #[error(
        "max_memory {max_memory} leaves {budget} bytes for owned entries (1 / (1 + backups)), \
         less than the largest entry ({largest} bytes): raise max_memory or lower the length limits"
    )]
    MemoryTooSmall {
        /// The value given.
        max_memory: u64,
        /// `max_memory / (1 + backups)`.
        budget: u64,
        /// `max_key_len + max_value_len + ENTRY_OVERHEAD`.
        largest: u64,
    },
}

impl NamespaceConfig {
    /// The configuration, if it is usable.
    pub fn validate(self) -> Result<Self, ConfigError> {
        let name_ok = (1..=64).contains(&self.name.len())
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
        if !name_ok {
            return Err(ConfigError::BadName(self.name));
        }
        if self.max_entries == 0 {
            return Err(ConfigError::NoEntries);
        }
        if usize::from(self.backups) > MAX_BACKUPS {
            return Err(ConfigError::TooManyBackups {
                backups: self.backups,
                max: MAX_BACKUPS,
            });
        }
        if self.ttl_ms == Some(0) {
            return Err(ConfigError::ZeroDuration { what: "ttl_ms" });
        }
        if self.max_idle_ms == Some(0) {
            return Err(ConfigError::ZeroDuration {
                what: "max_idle_ms",
            });
        }
        if self.max_key_len == 0 {
            return Err(ConfigError::ZeroLength {
                what: "max_key_len",
            });
        }
        if self.max_value_len == 0 {
            return Err(ConfigError::ZeroLength {
                what: "max_value_len",
            });
        }
        let largest = (self.max_key_len as u64)
            .saturating_add(self.max_value_len as u64)
            .saturating_add(ENTRY_OVERHEAD);
        let budget = self.owned_memory_budget();
        if budget < largest {
            return Err(ConfigError::MemoryTooSmall {
                max_memory: self.max_memory,
                budget,
                largest,
            });
        }
        Ok(self)
    }

    /// Most entries of owned partitions: `max_entries / (1 + backups)`, at
    /// least 1.
    pub fn owned_entry_budget(&self) -> u64 {
        (self.max_entries / (1 + u64::from(self.backups))).max(1)
    }

    /// Most bytes of owned partitions: `max_memory / (1 + backups)`.
    pub fn owned_memory_budget(&self) -> u64 {
        self.max_memory / (1 + u64::from(self.backups))
    }
}
