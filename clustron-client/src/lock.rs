//! Distributed locks and leader elections as recipes over leases,
//! transactions and watches (the etcd `concurrency` way), with a fencing
//! token.
//!
//! To lock `NAME`, a client grants itself a lease (kept alive in the
//! background while the lock is held), creates the key
//! `_lock/NAME/<lease id>` attached to it, and holds the lock once no key
//! under `_lock/NAME/` has a lower create revision. Otherwise it watches the
//! key just before its own until that one is deleted (released, or its
//! holder's lease expired), then looks again. Waiters queue in create order,
//! so the lock is fair and each release wakes one waiter.
//!
//! An election is the same queue under `_election/NAME/`, each key holding
//! its candidate's value: the leader is the candidate with the lowest create
//! revision, and anyone can read who it is ([`Client::leader`]).
//!
//! The holder's key's create revision is the **fencing token**: it only
//! grows from one holder to the next, so a resource that remembers the
//! highest token it has seen can refuse a late write from a holder whose
//! lease expired while it was paused.

use std::time::Duration;

use clustron_dkv::kv::{
    Compare, CompareOp, CompareTarget, EventKind, KeyRange, LeaseId, PutRequest, RangeRequest,
    RequestOp, ResponseOp, Txn, WatchRequest,
};
use tokio::task::JoinHandle;

use crate::{Client, ClientError};

/// A held lock. Dropping it stops the keep-alives (the lock then ends when
/// its lease expires); [`Lock::unlock`] releases it at once.
#[derive(Debug)]
pub struct Lock {
    client: Client,
    key: Vec<u8>,
    lease: LeaseId,
    revision: u64,
    keep_alive: JoinHandle<()>,
}

impl Lock {
    /// The fencing token: the create revision of this holder's key. It only
    /// grows from one holder of the lock to the next.
    pub fn token(&self) -> u64 {
        self.revision
    }

    /// The holder's key.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// Releases the lock: revokes its lease, which deletes its key and
    /// wakes the next waiter.
    pub async fn unlock(self) -> Result<(), ClientError> {
        self.keep_alive.abort();
        self.client.revoke(self.lease).await.map(|_| ())
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        self.keep_alive.abort();
    }
}

impl Client {
    /// Waits until this client holds the lock `name`; the lock lives while
    /// this process keeps its lease alive (`ttl` after the last keep-alive).
    pub async fn lock(&self, name: &str, ttl: Duration) -> Result<Lock, ClientError> {
        self.queue(format!("_lock/{name}/"), Vec::new(), ttl).await
    }

    /// Waits until this client leads the election `name`, announcing
    /// `value` (e.g. its address); leadership lasts as for [`Client::lock`],
    /// and [`Lock::unlock`] resigns.
    pub async fn campaign(
        &self,
        name: &str,
        value: &[u8],
        ttl: Duration,
    ) -> Result<Lock, ClientError> {
        self.queue(format!("_election/{name}/"), value.to_vec(), ttl)
            .await
    }

    /// The current leader of the election `name`: its value and fencing
    /// token, or `None` if nobody campaigns.
    pub async fn leader(&self, name: &str) -> Result<Option<(Vec<u8>, u64)>, ClientError> {
        let (candidates, _) = self
            .range(
                RangeRequest {
                    range: KeyRange::Prefix(format!("_election/{name}/").into_bytes()),
                    revision: 0,
                    limit: 0,
                    keys_only: false,
                    count_only: false,
                },
                true,
            )
            .await?;
        Ok(candidates
            .kvs
            .into_iter()
            .min_by_key(|kv| kv.create_revision)
            .map(|kv| (kv.value, kv.create_revision)))
    }

    async fn queue(
        &self,
        prefix: String,
        value: Vec<u8>,
        ttl: Duration,
    ) -> Result<Lock, ClientError> {
        let lease = self.grant(ttl).await?;
        let keep_alive = {
            let client = self.clone();
            tokio::spawn(async move {
                let every = (ttl / 3).max(Duration::from_millis(100));
                loop {
                    tokio::time::sleep(every).await;
                    if client.keep_alive(lease).await.is_err() {
                        return;
                    }
                }
            })
        };
        match self.acquire(prefix.into_bytes(), value, lease).await {
            Ok((key, revision)) => Ok(Lock {
                client: self.clone(),
                key,
                lease,
                revision,
                keep_alive,
            }),
            Err(e) => {
                keep_alive.abort();
                let _ = self.revoke(lease).await;
                Err(e)
            }
        }
    }

    async fn acquire(
        &self,
        prefix: Vec<u8>,
        value: Vec<u8>,
        lease: LeaseId,
    ) -> Result<(Vec<u8>, u64), ClientError> {
        let key = [prefix.as_slice(), format!("{:016x}", lease.0).as_bytes()].concat();
        // Create the key if it is not there yet (a retried request must not
        // move it to the back of the queue), and read it back either way.
        let created = self
            .txn(Txn {
                compare: vec![Compare {
                    key: key.clone(),
                    target: CompareTarget::CreateRevision(0),
                    op: CompareOp::Equal,
                }],
                success: vec![
                    RequestOp::Put(PutRequest {
                        key: key.clone(),
                        value,
                        lease: Some(lease),
                        prev_kv: false,
                    }),
                    RequestOp::get(&key),
                ],
                failure: vec![RequestOp::get(&key)],
            })
            .await?;
        let mine = created
            .responses
            .iter()
            .find_map(|r| match r {
                ResponseOp::Range(r) => r.kvs.first().map(|kv| kv.create_revision),
                _ => None,
            })
            .ok_or_else(|| ClientError::Refused("the lock key vanished".into()))?;
        loop {
            let (waiting, revision) = self
                .range(
                    RangeRequest {
                        range: KeyRange::Prefix(prefix.clone()),
                        revision: 0,
                        limit: 0,
                        keys_only: true,
                        count_only: false,
                    },
                    true,
                )
                .await?;
            if !waiting.kvs.iter().any(|kv| kv.key == key) {
                return Err(ClientError::Refused(
                    "the lock's lease expired while waiting".into(),
                ));
            }
            // The key just before ours, if any.
            let Some(before) = waiting
                .kvs
                .iter()
                .filter(|kv| kv.create_revision < mine)
                .max_by_key(|kv| kv.create_revision)
            else {
                return Ok((key, mine));
            };
            let mut watch = self
                .watch(WatchRequest {
                    start_revision: revision + 1,
                    ..WatchRequest::new(KeyRange::Key(before.key.clone()))
                })
                .await?;
            'deleted: loop {
                for event in watch.next().await? {
                    if event.kind == EventKind::Delete {
                        break 'deleted;
                    }
                }
            }
        }
    }
}
