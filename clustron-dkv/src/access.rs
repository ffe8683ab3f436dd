//! Who may do what on the client protocol: every request and stream is
//! authorised by the role in the caller's certificate before it runs.
//!
//! | role | may |
//! |---|---|
//! | `readonly` | read keys (including read-only transactions), watch, read the topology, subscribe to events |
//! | `readwrite` | also write and delete keys, run writing transactions, use leases, sessions, locks and elections, publish events |
//! | `admin` | also compact history and change the voters (`clustron voters add/remove`) |
//!
//! Cache operations need `readonly` to read and `readwrite` to write;
//! creating and dropping cache namespaces needs `admin`.
//!
//! Keys under [`RESERVED_PREFIX`] (the cache's partition table and
//! namespace settings) are written by nodes only: a client request that
//! would write or delete one is refused whatever its role
//! ([`writes_reserved`]).
//!
//! A node certificate counts as `admin`: it belongs to the cluster itself.
//! Permissions are per role for the whole key space; per-prefix
//! permissions (etcd's role / key-range model) are not built.
//!
//! # Example
//!
//! ```
//! use clustron_dkv::access::{check, Access};
//! use clustron_dkv::kv::{KvRequest, PutRequest};
//! use clustron_dkv::proto::Request;
//! use clustron_transport::{ClientRole, PeerKind};
//!
//! let put = Request::Kv(KvRequest::Put(PutRequest {
//!     key: b"k".to_vec(), value: b"v".to_vec(), lease: None, prev_kv: false,
//! }));
//! assert!(check(PeerKind::Client(ClientRole::ReadWrite), Access::of(&put)).is_ok());
//! let denied = check(PeerKind::Client(ClientRole::ReadOnly), Access::of(&put)).unwrap_err();
//! assert_eq!(denied.to_string(), "permission denied: role readonly may not write keys");
//! ```

use clustron_transport::{ClientRole, PeerKind};

use crate::cache::CacheRequest;
use crate::kv::{KeyRange, KvFailure, KvRequest, RequestOp};

/// Keys only nodes write: the cluster's own state in the replicated store.
pub const RESERVED_PREFIX: &[u8] = b"__clustron/";
use crate::proto::{Request, StreamRequest};

/// What an operation needs, and its name for refusals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// The least role that may do it.
    pub level: Level,
    /// What it is, in words ("write keys").
    pub operation: &'static str,
}

/// Levels of trust, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Read and watch.
    Read,
    /// Also change data.
    Write,
    /// Also operate the cluster.
    Admin,
}

impl Access {
    fn new(level: Level, operation: &'static str) -> Self {
        Self { level, operation }
    }

    /// What a request needs.
    pub fn of(request: &Request) -> Access {
        match request {
            Request::Topology => Access::new(Level::Read, "read the topology"),
            Request::Publish { .. } => Access::new(Level::Write, "publish events"),
            Request::Kv(kv) => Access::of_kv(kv),
            Request::Cache(cache) => Access::of_cache(cache),
        }
    }

    /// What a cache request needs.
    pub fn of_cache(request: &CacheRequest) -> Access {
        match request {
            CacheRequest::Op { op, .. } if op.is_write() => {
                Access::new(Level::Write, "write the cache")
            }
            CacheRequest::Op { .. } => Access::new(Level::Read, "read the cache"),
            CacheRequest::List => Access::new(Level::Read, "list cache namespaces"),
            CacheRequest::Create(_) | CacheRequest::Drop(_) => {
                Access::new(Level::Admin, "create or drop cache namespaces")
            }
        }
    }

    /// What a key-value request needs.
    pub fn of_kv(request: &KvRequest) -> Access {
        match request {
            KvRequest::Range { .. } => Access::new(Level::Read, "read keys"),
            KvRequest::Put(_) => Access::new(Level::Write, "write keys"),
            KvRequest::Delete(_) => Access::new(Level::Write, "delete keys"),
            KvRequest::Txn(txn) => {
                let writes = txn
                    .success
                    .iter()
                    .chain(&txn.failure)
                    .any(|op| !matches!(op, RequestOp::Range(_)));
                match writes {
                    true => Access::new(Level::Write, "run writing transactions"),
                    false => Access::new(Level::Read, "run read-only transactions"),
                }
            }
            KvRequest::LeaseGrant { .. } | KvRequest::LeaseRevoke(_) | KvRequest::KeepAlive(_) => {
                Access::new(Level::Write, "use leases")
            }
            KvRequest::Compact(_) => Access::new(Level::Admin, "compact history"),
            KvRequest::OpenSession { .. } | KvRequest::SessionKeepAlive(_) => {
                Access::new(Level::Write, "open write sessions")
            }
            // A session carries a write: what the write needs.
            KvRequest::InSession { request, .. } => Access::of_kv(request),
            KvRequest::Voters => Access::new(Level::Read, "list the voters"),
            KvRequest::AddVoter(_) | KvRequest::RemoveVoter(_) => {
                Access::new(Level::Admin, "change the voters")
            }
        }
    }

    /// What opening a stream needs.
    pub fn of_stream(request: &StreamRequest) -> Access {
        match request {
            StreamRequest::WatchTopology { .. } => Access::new(Level::Read, "watch the topology"),
            StreamRequest::Subscribe { .. } => Access::new(Level::Read, "subscribe to events"),
            StreamRequest::Watch(_) => Access::new(Level::Read, "watch keys"),
            StreamRequest::CacheEvents { .. } => Access::new(Level::Read, "watch cache events"),
        }
    }
}

/// The level a caller's certificate grants.
pub fn level_of(kind: PeerKind) -> Level {
    match kind {
        PeerKind::Node | PeerKind::Client(ClientRole::Admin) => Level::Admin,
        PeerKind::Client(ClientRole::ReadWrite) => Level::Write,
        PeerKind::Client(ClientRole::ReadOnly) => Level::Read,
    }
}

/// Whether a caller of `kind` may do `access`; the refusal names the role
/// and the operation.
pub fn check(kind: PeerKind, access: Access) -> Result<(), KvFailure> {
    if level_of(kind) >= access.level {
        return Ok(());
    }
    let role = match kind {
        PeerKind::Node => "node",
        PeerKind::Client(role) => role.as_str(),
    };
    Err(KvFailure::PermissionDenied {
        role: role.to_owned(),
        operation: access.operation.to_owned(),
    })
}

/// Whether a key-value request would write or delete a key under
/// [`RESERVED_PREFIX`] (refused for clients whatever their role).
pub fn writes_reserved(request: &KvRequest) -> bool {
    let op_writes = |op: &RequestOp| match op {
        RequestOp::Range(_) => false,
        RequestOp::Put(put) => put.key.starts_with(RESERVED_PREFIX),
        RequestOp::Delete(delete) => overlaps_reserved(&delete.range),
    };
    match request {
        KvRequest::Put(put) => put.key.starts_with(RESERVED_PREFIX),
        KvRequest::Delete(delete) => overlaps_reserved(&delete.range),
        KvRequest::Txn(txn) => txn.success.iter().chain(&txn.failure).any(op_writes),
        KvRequest::InSession { request, .. } => writes_reserved(request),
        _ => false,
    }
}

/// Whether `range` holds any key under [`RESERVED_PREFIX`].
fn overlaps_reserved(range: &KeyRange) -> bool {
    match range {
        KeyRange::Key(key) => key.starts_with(RESERVED_PREFIX),
        KeyRange::Prefix(prefix) => {
            prefix.starts_with(RESERVED_PREFIX) || RESERVED_PREFIX.starts_with(prefix)
        }
        KeyRange::Range { start, end } => {
            // The reserved keys are [RESERVED_PREFIX, its successor): the
            // prefix with its last byte incremented ('/' + 1 = '0').
            let mut past = RESERVED_PREFIX.to_vec();
            if let Some(last) = past.last_mut() {
                *last += 1;
            }
            start.as_slice() < past.as_slice()
                && (end.is_empty() || end.as_slice() > RESERVED_PREFIX)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::{
        DeleteRequest, KeyRange, LeaseId, PutRequest, RangeRequest, SessionId, Txn, WatchRequest,
    };

    fn put() -> KvRequest {
        KvRequest::Put(PutRequest {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            lease: None,
            prev_kv: false,
        })
    }

    fn range() -> RangeRequest {
        RangeRequest {
            range: KeyRange::Prefix(Vec::new()),
            revision: 0,
            limit: 0,
            keys_only: false,
            count_only: false,
        }
    }

    #[test]
    fn client_writes_and_deletes_of_reserved_keys_are_recognised() {
        let put = |key: &[u8]| {
            KvRequest::Put(PutRequest {
                key: key.to_vec(),
                value: b"v".to_vec(),
                lease: None,
                prev_kv: false,
            })
        };
        let delete = |range| {
            KvRequest::Delete(DeleteRequest {
                range,
                prev_kv: false,
            })
        };
        let range = |start: &[u8], end: &[u8]| KeyRange::Range {
            start: start.to_vec(),
            end: end.to_vec(),
        };
        let table: Vec<(KvRequest, bool)> = vec![
            (put(b"__clustron/cache/table"), true),
            (put(b"__clustron"), false),
            (put(b"user/1"), false),
            (
                delete(KeyRange::Key(b"__clustron/cache/ns/default".to_vec())),
                true,
            ),
            (delete(KeyRange::Prefix(Vec::new())), true),
            (delete(KeyRange::Prefix(b"__clu".to_vec())), true),
            (delete(KeyRange::Prefix(b"__clustron/x".to_vec())), true),
            (delete(KeyRange::Prefix(b"user/".to_vec())), false),
            (delete(range(b"", b"")), true),
            (delete(range(b"a", b"")), false),
            (delete(range(b"_", b"__clustron/")), false),
            (delete(range(b"_", b"__clustron/a")), true),
            (delete(range(b"__clustron0", b"")), false),
            (
                KvRequest::Txn(Txn {
                    compare: vec![],
                    success: vec![RequestOp::get(b"__clustron/cache/table")],
                    failure: vec![RequestOp::put(b"__clustron/cache/table", b"x")],
                }),
                true,
            ),
            (
                KvRequest::Txn(Txn {
                    compare: vec![],
                    success: vec![RequestOp::get(b"__clustron/cache/table")],
                    failure: vec![],
                }),
                false,
            ),
            (
                KvRequest::InSession {
                    session: SessionId(1),
                    seq: 1,
                    acked: 0,
                    request: Box::new(put(b"__clustron/cache/table")),
                },
                true,
            ),
            (
                KvRequest::Range {
                    request: range_request(),
                    linearizable: false,
                },
                false,
            ),
        ];
        for (request, reserved) in table {
            assert_eq!(writes_reserved(&request), reserved, "{request:?}");
        }
    }

    fn range_request() -> RangeRequest {
        range()
    }

    #[test]
    fn each_role_may_do_exactly_its_operations_on_every_request() {
        use Level::*;
        let read_txn = Txn {
            compare: vec![],
            success: vec![RequestOp::Range(range())],
            failure: vec![],
        };
        let write_txn = Txn {
            compare: vec![],
            success: vec![RequestOp::Range(range())],
            failure: vec![RequestOp::delete(b"k")],
        };
        let table: Vec<(Request, Level)> = vec![
            (Request::Topology, Read),
            (
                Request::Publish {
                    topic: "t".into(),
                    payload: vec![],
                },
                Write,
            ),
            (
                Request::Kv(KvRequest::Range {
                    request: range(),
                    linearizable: true,
                }),
                Read,
            ),
            (Request::Kv(put()), Write),
            (
                Request::Kv(KvRequest::Delete(DeleteRequest {
                    range: KeyRange::Prefix(Vec::new()),
                    prev_kv: false,
                })),
                Write,
            ),
            (Request::Kv(KvRequest::Txn(read_txn)), Read),
            (Request::Kv(KvRequest::Txn(write_txn)), Write),
            (
                Request::Kv(KvRequest::LeaseGrant {
                    id: LeaseId(0),
                    ttl_ms: 1000,
                }),
                Write,
            ),
            (Request::Kv(KvRequest::LeaseRevoke(LeaseId(1))), Write),
            (Request::Kv(KvRequest::KeepAlive(LeaseId(1))), Write),
            (Request::Kv(KvRequest::Compact(5)), Admin),
            (Request::Kv(KvRequest::OpenSession { ttl_ms: 1 }), Write),
            (
                Request::Kv(KvRequest::SessionKeepAlive(SessionId(1))),
                Write,
            ),
            (
                Request::Kv(KvRequest::InSession {
                    session: SessionId(1),
                    seq: 1,
                    acked: 1,
                    request: Box::new(KvRequest::Compact(5)),
                }),
                Admin,
            ),
            (Request::Kv(KvRequest::Voters), Read),
            (Request::Kv(KvRequest::AddVoter("n4".into())), Admin),
            (Request::Kv(KvRequest::RemoveVoter("n3".into())), Admin),
        ];
        let roles = [
            (PeerKind::Client(ClientRole::ReadOnly), Read),
            (PeerKind::Client(ClientRole::ReadWrite), Write),
            (PeerKind::Client(ClientRole::Admin), Admin),
            (PeerKind::Node, Admin),
        ];
        for (request, needs) in &table {
            for (kind, has) in roles {
                let allowed = check(kind, Access::of(request)).is_ok();
                assert_eq!(allowed, has >= *needs, "{kind:?} {request:?}");
            }
        }
        for stream in [
            StreamRequest::WatchTopology { from: None },
            StreamRequest::Subscribe { topic: "t".into() },
            StreamRequest::Watch(WatchRequest::new(KeyRange::Key(b"k".to_vec()))),
        ] {
            assert_eq!(Access::of_stream(&stream).level, Read);
        }
    }
}
