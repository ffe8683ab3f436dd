//! What the front end needs from the cache: [`CacheBackend`], and
//! [`MemoryBackend`], a single-process implementation for tests and
//! examples.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::cache::{CacheError, CacheOp, CacheReply, PutCondition, TtlState, Versioned};

/// The cache namespace a RESP front end serves. The node implements it by
/// routing each operation to its key's owner; the front end never sees
/// partitions.
///
/// Operations on different keys may run concurrently (the front end runs
/// the keys of `MGET`, `MSET` and `DEL k1 k2` at the same time); the
/// operations of one connection's pipeline are issued one after another.
pub trait CacheBackend: Send + Sync {
    /// Runs one operation on one key. The front end has already checked
    /// that the caller may run it.
    fn execute(&self, op: CacheOp) -> impl Future<Output = Result<CacheReply, CacheError>> + Send;

    /// The number of live keys in the namespace (`DBSIZE`); an estimate is
    /// acceptable while partitions move.
    fn size(&self) -> impl Future<Output = Result<u64, CacheError>> + Send;

    /// Removes every key of the namespace (`FLUSHDB`).
    fn flush(&self) -> impl Future<Output = Result<(), CacheError>> + Send;

    /// Sections added to `INFO`: lines `name:value` under `# Section`
    /// headers, separated by CRLF. The front end adds its own `# Server`
    /// section first.
    fn info(&self) -> String;
}

/// An in-memory, single-process [`CacheBackend`]: one map behind a mutex,
/// with the semantics the node's store must have (versions, conditions,
/// TTL, `keep_ttl`, increments). No size bound and no eviction; expired
/// keys are dropped when next touched. For tests and examples.
///
/// Its clock is the real monotonic clock plus an offset that
/// [`MemoryBackend::advance`] moves, so a test expires keys without
/// sleeping; [`MemoryBackend::with_manual_clock`] stops the real part, so
/// that time moves only when the test says.
#[derive(Debug, Default)]
pub struct MemoryBackend {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<Vec<u8>, Entry>,
    offset: Duration,
    /// The manual clock's start; `None`: the real clock.
    frozen: Option<Instant>,
}

#[derive(Debug, Clone)]
struct Entry {
    value: Vec<u8>,
    version: u64,
    expires_at: Option<Instant>,
}

impl MemoryBackend {
    /// An empty cache.
    pub fn new() -> MemoryBackend {
        MemoryBackend::default()
    }

    /// An empty cache whose clock moves only by [`MemoryBackend::advance`].
    pub fn with_manual_clock() -> MemoryBackend {
        let backend = MemoryBackend::default();
        backend.lock().frozen = Some(Instant::now());
        backend
    }

    /// Moves this backend's clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let mut state = self.lock();
        state.offset = state.offset.saturating_add(by);
    }

    /// Runs one operation now (what [`CacheBackend::execute`] does, without
    /// the future).
    pub fn apply(&self, op: CacheOp) -> Result<CacheReply, CacheError> {
        let mut state = self.lock();
        let now = state.now();
        state.apply(op, now)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves a consistent map: every
        // change is a single insert or remove.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl State {
    /// The real (or frozen) clock moved by the offset.
    fn now(&self) -> Instant {
        let base = self.frozen.unwrap_or_else(Instant::now);
        base.checked_add(self.offset).unwrap_or(base)
    }

    /// The key's entry if it is live; an expired one is removed.
    fn live(&mut self, key: &[u8], now: Instant) -> Option<&mut Entry> {
        let expired = self
            .entries
            .get(key)
            .is_some_and(|e| e.expires_at.is_some_and(|at| at <= now));
        if expired {
            self.entries.remove(key);
        }
        self.entries.get_mut(key)
    }

    fn apply(&mut self, op: CacheOp, now: Instant) -> Result<CacheReply, CacheError> {
        let expiry = |ttl_ms: u64| now.checked_add(Duration::from_millis(ttl_ms));
        match op {
            CacheOp::Get { key } => {
                Ok(CacheReply::Value(self.live(&key, now).map(|e| Versioned {
                    value: e.value.clone(),
                    version: e.version,
                })))
            }
            CacheOp::Put {
                key,
                value,
                ttl_ms,
                condition,
                keep_ttl,
                return_old,
            } => {
                let current = self.live(&key, now).cloned();
                let current_version = current.as_ref().map_or(0, |e| e.version);
                let applies = match condition {
                    PutCondition::Always => true,
                    PutCondition::IfAbsent => current.is_none(),
                    PutCondition::IfPresent => current.is_some(),
                    PutCondition::IfVersion(version) => version == current_version,
                };
                let old = match return_old {
                    true => current.as_ref().map(|e| e.value.clone()),
                    false => None,
                };
                if !applies {
                    return Ok(CacheReply::Stored {
                        stored: false,
                        version: current_version,
                        old,
                    });
                }
                let expires_at = match (ttl_ms, keep_ttl) {
                    (Some(ms), _) => expiry(ms),
                    (None, true) => current.as_ref().and_then(|e| e.expires_at),
                    (None, false) => None,
                };
                let version = current_version + 1;
                self.entries.insert(
                    key,
                    Entry {
                        value,
                        version,
                        expires_at,
                    },
                );
                Ok(CacheReply::Stored {
                    stored: true,
                    version,
                    old,
                })
            }
            CacheOp::Delete { key } => {
                let existed = self.live(&key, now).is_some();
                self.entries.remove(&key);
                Ok(CacheReply::Bool(existed))
            }
            CacheOp::Exists { key } => Ok(CacheReply::Bool(self.live(&key, now).is_some())),
            CacheOp::Incr { key, by } => {
                let entry = self.live(&key, now);
                let current = match &entry {
                    Some(e) => parse_decimal(&e.value).ok_or(CacheError::NotInteger)?,
                    None => 0,
                };
                let next = current.checked_add(by).ok_or(CacheError::Overflow)?;
                let value = next.to_string().into_bytes();
                match entry {
                    Some(e) => {
                        e.value = value;
                        e.version += 1;
                    }
                    None => {
                        self.entries.insert(
                            key,
                            Entry {
                                value,
                                version: 1,
                                expires_at: None,
                            },
                        );
                    }
                }
                Ok(CacheReply::Integer(next))
            }
            CacheOp::CompareAndSet {
                key,
                expected,
                value,
            } => match self.live(&key, now) {
                Some(e) if e.value == expected => {
                    e.value = value;
                    e.version += 1;
                    Ok(CacheReply::Stored {
                        stored: true,
                        version: e.version,
                        old: None,
                    })
                }
                found => Ok(CacheReply::Stored {
                    stored: false,
                    version: found.as_ref().map_or(0, |e| e.version),
                    old: found.map(|e| e.value.clone()),
                }),
            },
            CacheOp::Expire { key, ttl_ms } => match (self.live(&key, now), ttl_ms) {
                (Some(e), Some(ms)) => {
                    e.expires_at = expiry(ms);
                    Ok(CacheReply::Bool(true))
                }
                (Some(e), None) => Ok(CacheReply::Bool(e.expires_at.take().is_some())),
                (None, _) => Ok(CacheReply::Bool(false)),
            },
            CacheOp::Ttl { key } => Ok(CacheReply::Ttl(match self.live(&key, now) {
                None => TtlState::Absent,
                Some(Entry {
                    expires_at: None, ..
                }) => TtlState::Persistent,
                Some(Entry {
                    expires_at: Some(at),
                    ..
                }) => TtlState::Millis(at.saturating_duration_since(now).as_millis() as u64),
            })),
            CacheOp::Append { key, value } => match self.live(&key, now) {
                Some(e) => {
                    e.value.extend_from_slice(&value);
                    e.version += 1;
                    Ok(CacheReply::Len(e.value.len() as u64))
                }
                None => {
                    let len = value.len() as u64;
                    self.entries.insert(
                        key,
                        Entry {
                            value,
                            version: 1,
                            expires_at: None,
                        },
                    );
                    Ok(CacheReply::Len(len))
                }
            },
            CacheOp::Strlen { key } => Ok(CacheReply::Len(
                self.live(&key, now).map_or(0, |e| e.value.len() as u64),
            )),
        }
    }
}

/// A value as `INCR` reads it: Redis's integer syntax.
fn parse_decimal(value: &[u8]) -> Option<i64> {
    super::command::parse_integer(value)
}

impl CacheBackend for MemoryBackend {
    async fn execute(&self, op: CacheOp) -> Result<CacheReply, CacheError> {
        self.apply(op)
    }

    async fn size(&self) -> Result<u64, CacheError> {
        let mut state = self.lock();
        let now = state.now();
        state
            .entries
            .retain(|_, e| e.expires_at.is_none_or(|at| at > now));
        Ok(state.entries.len() as u64)
    }

    async fn flush(&self) -> Result<(), CacheError> {
        self.lock().entries.clear();
        Ok(())
    }

    fn info(&self) -> String {
        let state = self.lock();
        let expires = state
            .entries
            .values()
            .filter(|e| e.expires_at.is_some())
            .count();
        format!(
            "# Keyspace\r\ndb0:keys={},expires={expires},avg_ttl=0\r\n",
            state.entries.len()
        )
    }
}
