//! Who may do what on the client protocol: every request and stream is
//! authorised by the role in the caller's certificate before it runs.
//!
//! | role | may |
//! |---|---|
//! | `readonly` | read keys (including read-only transactions), watch, read the topology, subscribe to events |
//! | `readwrite` | also write and delete keys, run writing transactions, use leases, sessions, locks and elections, publish events |
//! | `admin` | also compact history and change the voters (`clustron voters add/remove`) |
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

use crate::kv::{KvFailure, KvRequest, RequestOp};
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
