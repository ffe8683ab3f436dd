//! The cache in a running node (tokio side): one actor owns every
//! namespace's [`NamespaceStore`] and the adopted [`PartitionTable`]; a
//! task per peer carries replication to it in order; a control task reads
//! the table and the namespaces from the replicated store and, on the
//! leader, publishes new tables. Protocol decisions are the sans-IO cores':
//! the store (what an operation does, what a backup accepts), the table
//! (who holds what) and [`super::plan`] (what to do on a new table).
//!
//! ```text
//!  client / RESP ─► Cache::execute ─► actor ─ owner here? ─► store.apply ─► changes ─► peer tasks ─► backups
//!                        │                 └─ no: forward to the owner (CACHE channel, PeerRequest::Op)
//!                        └─ waits for the backups' acks (sync namespaces)
//!  control task (200 ms): reserved keys ─► actor (adopt newer table: plan ─► steps; namespaces)
//!                         leader: rebalance(live members, epoch) ─► put the table key
//! ```
//!
//! # Wire messages (channel [`ChannelId::CACHE`], node certificates only)
//!
//! - [`PeerRequest::Op`]: a client's operation forwarded to the owner, with
//!   the forwarder's table (epoch, version); the owner refuses with
//!   `WrongOwner` if that table is newer than its own or it does not own
//!   the partition, `Unavailable` while it waits for a hand-over.
//! - [`PeerRequest::Replicate`]: a batch of [`Replicated`] items from one
//!   node to another, in order (one batch in flight per peer, retried
//!   whole on a transport failure): changes, chunks of a partition copy,
//!   and `Promote` (the end of a hand-over). Answered with one
//!   [`Outcome`] per item; a `Gap` makes the sender copy the partition
//!   again.
//! - [`PeerRequest::Size`], [`PeerRequest::Flush`]: `DBSIZE` and `FLUSHDB`
//!   fanned out to every live member.
//! - [`PeerRequest::Store`]: a request on the reserved keys for the
//!   replicated store's leader (namespace create/drop from another node).
//! - [`PeerRequest::Holds`], [`PeerRequest::HandBack`]: before a node takes
//!   over a partition it holds nothing of (it just started) or only a copy
//!   whose hand-over never finished, it asks every live member what it
//!   holds ([`super::plan::recovery`]); a backup asked to hand back copies
//!   the partition to it and sends `Promote`.
//!
//! # Layout
//!
//! This file: the wire types, the [`Cache`] handle and the RESP
//! [`NodeBackend`]. `actor.rs`: the actor. `peer.rs`: a peer's ordered
//! replication queue. `control.rs`: the control task and the survey.
//!
//! # Reserved keys
//!
//! The table is the key [`TABLE_KEY`], each namespace's settings the key
//! [`NAMESPACE_PREFIX`]`NAME`, both postcard-encoded, under
//! [`crate::access::RESERVED_PREFIX`], which client certificates may not
//! write (nodes write them through their own store handle).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clustron_election::Election;
use clustron_membership::Membership;
use clustron_transport::{Channel, ChannelId, Endpoint, Protocol};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::plan::{self, holders, Step};
use super::resp::CacheBackend;
use super::store::{
    Change, Metrics, NamespaceConfig, NamespaceStore, PartitionChunk, PartitionRole, Position,
    ReplicaError,
};
use super::table::PartitionTable;
use super::{partition_of, CacheAnswer, CacheError, CacheEvent, CacheOp, CacheReply, CacheRequest};
use crate::core::mvcc::Command as StoreCommand;
use crate::core::server::ClientOp;
use crate::kv::{
    Compare, CompareOp, CompareTarget, DeleteRequest, KeyRange, KvFailure, KvReply, KvRequest,
    PutRequest, RangeRequest, RequestOp, Txn,
};
use crate::kv_driver::Kv;

mod actor;
mod control;
mod peer;

use actor::Actor;
use control::{recover, Control};
use peer::PeerTask;

/// The key holding the partition table.
pub const TABLE_KEY: &[u8] = b"__clustron/cache/table";
/// The prefix of the namespace settings keys.
pub const NAMESPACE_PREFIX: &[u8] = b"__clustron/cache/ns/";
/// Set once the leader created the `default` namespace (so that a dropped
/// `default` stays dropped).
const INIT_KEY: &[u8] = b"__clustron/cache/initialised";
/// Everything the cache keeps in the replicated store.
const CACHE_PREFIX: &[u8] = b"__clustron/cache/";

/// How often the control task reads the reserved keys and membership.
const CONTROL_INTERVAL: Duration = Duration::from_millis(200);
/// How often owners sweep expired entries.
const SWEEP_INTERVAL: Duration = Duration::from_millis(250);
/// Most entries expired per namespace per sweep.
const SWEEP_BUDGET: usize = 10_000;
/// Bytes per chunk of a partition copy.
const CHUNK_BYTES: u64 = 64 * 1024;
/// Most bytes in one replication batch (well under the 4 MiB frame).
const BATCH_BYTES: usize = 1024 * 1024;
/// How long a node keeps retrying an operation whose partition is moving
/// or whose owner it cannot reach, before answering the client with the
/// refusal (which tells it to retry).
const ROUTE_RETRY_FOR: Duration = Duration::from_secs(5);
/// The membership tag of a node that is leaving: the leader's tables leave
/// it out, so its partitions are handed over (planned, nothing lost) before
/// it goes.
pub const LEAVING_TAG: &str = "clustron.cache.leaving";

/// How long a forwarded operation may take.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
/// Batches of events a subscriber may be behind before it is dropped.
pub const EVENT_QUEUE: usize = 1024;

/// The cache's node-to-node protocol on [`ChannelId::CACHE`].
#[derive(Debug)]
pub struct CacheProtocol;

impl Protocol for CacheProtocol {
    const CHANNEL: ChannelId = ChannelId::CACHE;
    type Request = PeerRequest;
    type Response = PeerResponse;
    type Message = ();
}

/// A request from one node to another (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerRequest {
    /// A client's operation, for the partition's owner.
    Op {
        /// The namespace.
        namespace: String,
        /// The operation.
        op: CacheOp,
        /// The forwarder's table: (epoch, version).
        table: (u64, u64),
    },
    /// Replication items, in order.
    Replicate(Vec<Replicated>),
    /// The entries of the partitions the receiver owns.
    Size {
        /// The namespace.
        namespace: String,
    },
    /// Remove every entry of the partitions the receiver owns.
    Flush {
        /// The namespace.
        namespace: String,
    },
    /// A request on the reserved keys, for the store's leader.
    Store(KvRequest),
    /// What the receiver holds of these partitions (a node that just
    /// started asks before it serves partitions the table gives it).
    Holds {
        /// The namespace.
        namespace: String,
        /// The partitions.
        partitions: Vec<u32>,
    },
    /// Hand these backed-up partitions back to the sender (it owns them
    /// at the table but restarted empty): copy, then `Promote`.
    HandBack {
        /// The namespace.
        namespace: String,
        /// The partitions.
        partitions: Vec<u32>,
    },
}

/// One replication item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Replicated {
    /// A change from the partition's owner.
    Change {
        /// The namespace.
        namespace: String,
        /// The change.
        change: Change,
    },
    /// Part of a partition copy (re-sync or migration).
    Chunk {
        /// The namespace.
        namespace: String,
        /// The chunk.
        chunk: PartitionChunk,
    },
    /// The end of a hand-over: the sender stopped serving the partition at
    /// `position`; the receiver, if it holds it at that position, owns it
    /// from now on with `term`.
    Promote {
        /// The namespace.
        namespace: String,
        /// The partition.
        partition: u32,
        /// The new owner's term.
        term: u64,
        /// The sender's last position.
        position: Option<Position>,
    },
}

impl Replicated {
    fn namespace(&self) -> &str {
        match self {
            Replicated::Change { namespace, .. }
            | Replicated::Chunk { namespace, .. }
            | Replicated::Promote { namespace, .. } => namespace,
        }
    }

    fn partition(&self) -> u32 {
        match self {
            Replicated::Change { change, .. } => change.partition,
            Replicated::Chunk { chunk, .. } => chunk.partition,
            Replicated::Promote { partition, .. } => *partition,
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Replicated::Change { change, .. } => {
                64 + change.key.len() + change.state.as_ref().map_or(0, |s| s.value.len())
            }
            Replicated::Chunk { chunk, .. } => {
                64 + chunk
                    .entries
                    .iter()
                    .map(|(k, s)| 32 + k.len() + s.value.len())
                    .sum::<usize>()
            }
            Replicated::Promote { .. } => 64,
        }
    }
}

/// What the receiver made of one [`Replicated`] item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Applied (or already applied: a retried batch).
    Applied,
    /// Not at the position the item follows: copy the partition again.
    Gap,
    /// Refused for another reason (the receiver owns the partition, or has
    /// no such namespace); nothing to repair from this side.
    Refused(String),
}

/// A node's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerResponse {
    /// The operation's answer.
    Op(Result<CacheReply, CacheError>),
    /// One outcome per replicated item.
    Replicated(Vec<Outcome>),
    /// Entries of the owned partitions.
    Size(Result<u64, CacheError>),
    /// The owned partitions are flushed.
    Flushed(Result<(), CacheError>),
    /// The store's answer.
    Store(Result<KvReply, KvFailure>),
    /// What the receiver holds of each partition asked about.
    Holds(Vec<Option<PartitionRole>>),
    /// The hand-backs are queued.
    HandingBack,
}

/// How [`Cache::drain`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// Every partition this node owned was handed over.
    HandedOver,
    /// No other live member stays (the last node, or all stopping at
    /// once): nobody to hand them to.
    Alone,
    /// Not done in time (the store has no leader, a copy is slow): the
    /// backups take them over once this node is gone.
    TimedOut,
}

/// A namespace's figures on this node, for `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceStats {
    /// The namespace.
    pub name: String,
    /// Its store's counters and sizes.
    pub metrics: Metrics,
    /// Partitions owned here.
    pub owned_partitions: u64,
    /// Partitions backed up here.
    pub backup_partitions: u64,
}

/// Figures of the cache on this node, for `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// The adopted table's version.
    pub table_version: u64,
    /// The adopted table's epoch.
    pub table_epoch: u64,
    /// Copies and hand-overs from this node not finished yet.
    pub moving_out: u64,
    /// Partition copies this node sent (migrations and re-syncs).
    pub copies_sent: u64,
    /// Chunks of those copies.
    pub chunks_sent: u64,
    /// Ownerships this node took (take-overs and hand-overs received).
    pub promotions: u64,
    /// Per namespace.
    pub namespaces: Vec<NamespaceStats>,
}

/// Handle to the node's cache. Cheap to clone.
#[derive(Clone)]
pub struct Cache {
    commands: mpsc::Sender<Command>,
    channel: Channel<CacheProtocol>,
    kv: Kv,
    stats: tokio::sync::watch::Receiver<CacheStats>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cache")
    }
}

/// What the actor says about a local operation.
enum Routed {
    /// Answered here; the answer may be given once `acks` resolve (the
    /// backups have the change, or left the table).
    Done {
        result: Result<CacheReply, CacheError>,
        acks: Vec<oneshot::Receiver<bool>>,
    },
    /// Owned elsewhere: send it there.
    Forward { addr: SocketAddr, table: (u64, u64) },
}

/// What a queued item reports once delivered.
#[derive(Debug, Clone)]
enum Notify {
    Nothing,
    /// A chunk of copy `id`; `last`: the copy is complete once applied.
    Chunk {
        id: u64,
        last: bool,
    },
    /// A hand-over's `Promote`.
    HandedOver {
        keep: bool,
        term: u64,
    },
}

struct Queued {
    item: Replicated,
    ack: Option<oneshot::Sender<bool>>,
    notify: Notify,
}

enum Command {
    Local {
        namespace: String,
        op: CacheOp,
        reply: oneshot::Sender<Routed>,
    },
    Forwarded {
        namespace: String,
        op: CacheOp,
        table: (u64, u64),
        reply: oneshot::Sender<Routed>,
    },
    Replicate {
        items: Vec<Replicated>,
        reply: oneshot::Sender<Vec<Outcome>>,
    },
    Delivered {
        peer: String,
        namespace: String,
        partition: u32,
        outcome: Outcome,
        notify: Notify,
        ack: Option<oneshot::Sender<bool>>,
    },
    State {
        table: Option<PartitionTable>,
        namespaces: Vec<NamespaceConfig>,
        members: Vec<(String, SocketAddr)>,
    },
    Size {
        namespace: String,
        reply: oneshot::Sender<Result<u64, CacheError>>,
    },
    Flush {
        namespace: String,
        reply: oneshot::Sender<Result<(), CacheError>>,
    },
    Peers(oneshot::Sender<Vec<SocketAddr>>),
    Namespaces(oneshot::Sender<Vec<NamespaceConfig>>),
    Subscribe {
        namespace: String,
        reply: oneshot::Sender<Result<mpsc::Receiver<Vec<CacheEvent>>, CacheError>>,
    },
    Sweep,
    Holds {
        namespace: String,
        partitions: Vec<u32>,
        reply: oneshot::Sender<Vec<Option<PartitionRole>>>,
    },
    HandBack {
        namespace: String,
        partitions: Vec<u32>,
        to: String,
    },
    /// A start-up survey found nobody holding these partitions.
    Recovered {
        namespace: String,
        empty: Vec<u32>,
    },
}

impl Cache {
    /// Starts the cache: registers the `CACHE` channel, the actor and the
    /// control task.
    pub fn start(
        endpoint: &Endpoint,
        membership: &Membership,
        election: &Election,
        kv: &Kv,
    ) -> Result<Cache, clustron_transport::Error> {
        let (commands, command_rx) = mpsc::channel(4096);
        let (stats_tx, stats) = tokio::sync::watch::channel(CacheStats::default());
        let me = membership.name().to_string();
        let channel = endpoint.channel::<CacheProtocol>();
        let handler_commands = commands.clone();
        let handler_kv = kv.clone();
        let inbox = endpoint.serve::<CacheProtocol, _, _>(move |from, request| {
            let commands = handler_commands.clone();
            let kv = handler_kv.clone();
            async move { Ok(answer_peer(&commands, &kv, from.name(), request).await) }
        })?;
        drop(inbox);
        let actor = Actor {
            me: me.clone(),
            table: PartitionTable::empty(),
            members: BTreeMap::new(),
            namespaces: BTreeMap::new(),
            links: HashMap::new(),
            channel: channel.clone(),
            commands: commands.clone(),
            awaiting: HashMap::new(),
            resyncing: HashSet::new(),
            resync_waiters: HashMap::new(),
            stats: stats_tx,
            copies_sent: 0,
            chunks_sent: 0,
            promotions: 0,
            subscribers: Vec::new(),
            copies: HashMap::new(),
            next_copy: 0,
            handing_over: HashSet::new(),
        };
        tokio::spawn(actor.run(command_rx));
        let control = Control {
            me,
            membership: membership.clone(),
            election: election.clone(),
            kv: kv.clone(),
            channel: channel.clone(),
            commands: commands.clone(),
            published: None,
        };
        tokio::spawn(control.run());
        Ok(Cache {
            commands,
            channel,
            kv: kv.clone(),
            stats,
        })
    }

    /// The cache's current figures.
    pub fn stats(&self) -> CacheStats {
        self.stats.borrow().clone()
    }

    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, CacheError> {
        let stopped = || CacheError::NotReady("the cache service stopped".into());
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(command(tx))
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())
    }

    /// Runs one operation on its key's owner (here or forwarded), retrying
    /// for a few seconds while the partition moves.
    pub async fn execute(&self, namespace: &str, op: CacheOp) -> Result<CacheReply, CacheError> {
        let deadline = Instant::now() + ROUTE_RETRY_FOR;
        let mut pause = Duration::from_millis(10);
        loop {
            let routed = self
                .ask(|reply| Command::Local {
                    namespace: namespace.to_owned(),
                    op: op.clone(),
                    reply,
                })
                .await?;
            let result = match routed {
                Routed::Done { result, acks } => settle(result, acks).await,
                Routed::Forward { addr, table } => {
                    let request = PeerRequest::Op {
                        namespace: namespace.to_owned(),
                        op: op.clone(),
                        table,
                    };
                    match self
                        .channel
                        .request_with_timeout(addr, &request, FORWARD_TIMEOUT)
                        .await
                    {
                        Ok(PeerResponse::Op(result)) => result,
                        Ok(other) => Err(CacheError::NotReady(format!(
                            "unexpected answer from {addr}: {other:?}"
                        ))),
                        Err(e) if e.nothing_processed() || !op.is_write() => {
                            Err(CacheError::NotReady(format!("owner {addr}: {e}")))
                        }
                        Err(e) => {
                            return Err(CacheError::Unknown(format!(
                                "the owner {addr} failed after the write was sent ({e})"
                            )))
                        }
                    }
                }
            };
            let retry = matches!(
                result,
                Err(CacheError::WrongOwner { .. }
                    | CacheError::Unavailable(_)
                    | CacheError::NotReady(_))
            );
            if !retry || Instant::now() + pause > deadline {
                return result;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    /// Before a graceful stop: asks the leader to leave this node out of
    /// the table ([`LEAVING_TAG`]) and waits, at most `within`, until it
    /// owns no partition and its copies and hand-overs are done, so its
    /// partitions move by planned hand-overs (even asynchronous writes are
    /// kept) instead of being taken over after it is gone.
    pub async fn drain(&self, membership: &Membership, within: Duration) -> Drained {
        let Ok(local) = membership.local().await else {
            return Drained::Alone;
        };
        let mut tags = local.tags;
        tags.insert(LEAVING_TAG.to_owned(), "1".to_owned());
        if membership.update_tags(tags).await.is_err() {
            return Drained::Alone;
        }
        let me = membership.name().clone();
        let drained = tokio::time::timeout(within, async {
            loop {
                let done = {
                    let s = self.stats.borrow();
                    s.moving_out == 0 && s.namespaces.iter().all(|n| n.owned_partitions == 0)
                };
                // Nobody to hand over to (the last node, or every node
                // stopping at once): nothing to wait for.
                let alone = match membership.members().await {
                    Ok(members) => !members.iter().any(|m| {
                        m.name != me && m.state.is_live() && !m.tags.contains_key(LEAVING_TAG)
                    }),
                    Err(_) => true,
                };
                match (done, alone) {
                    (true, _) => return Drained::HandedOver,
                    (false, true) => return Drained::Alone,
                    (false, false) => tokio::time::sleep(CONTROL_INTERVAL).await,
                }
            }
        })
        .await;
        drained.unwrap_or(Drained::TimedOut)
    }

    /// Entry events of `namespace` from the partitions this node owns, as
    /// the owner makes them. A subscriber that falls [`EVENT_QUEUE`]
    /// batches behind is dropped (its receiver ends): it must subscribe
    /// again and treat everything it cached as stale.
    pub async fn subscribe(
        &self,
        namespace: &str,
    ) -> Result<mpsc::Receiver<Vec<CacheEvent>>, CacheError> {
        self.ask(|reply| Command::Subscribe {
            namespace: namespace.to_owned(),
            reply,
        })
        .await?
    }

    /// Live keys of a namespace: the owned entries of every live member.
    pub async fn size(&self, namespace: &str) -> Result<u64, CacheError> {
        let peers = self.ask(Command::Peers).await?;
        let mut total = 0;
        for addr in peers {
            let request = PeerRequest::Size {
                namespace: namespace.to_owned(),
            };
            match self.channel.request(addr, &request).await {
                Ok(PeerResponse::Size(size)) => total += size?,
                Ok(other) => {
                    return Err(CacheError::NotReady(format!("unexpected answer {other:?}")))
                }
                Err(e) => return Err(CacheError::NotReady(format!("member {addr}: {e}"))),
            }
        }
        Ok(total)
    }

    /// Removes every key of a namespace on every live member.
    pub async fn flush(&self, namespace: &str) -> Result<(), CacheError> {
        let peers = self.ask(Command::Peers).await?;
        for addr in peers {
            let request = PeerRequest::Flush {
                namespace: namespace.to_owned(),
            };
            match self.channel.request(addr, &request).await {
                Ok(PeerResponse::Flushed(done)) => done?,
                Ok(other) => {
                    return Err(CacheError::NotReady(format!("unexpected answer {other:?}")))
                }
                Err(e) => return Err(CacheError::NotReady(format!("member {addr}: {e}"))),
            }
        }
        Ok(())
    }

    /// Serves a client's [`CacheRequest`] (already authorised).
    pub async fn request(&self, request: CacheRequest) -> Result<CacheAnswer, CacheError> {
        match request {
            CacheRequest::Op { namespace, op } => {
                self.execute(&namespace, op).await.map(CacheAnswer::Reply)
            }
            CacheRequest::List => self
                .ask(Command::Namespaces)
                .await
                .map(CacheAnswer::Namespaces),
            CacheRequest::Create(config) => {
                let config = config
                    .validate()
                    .map_err(|e| CacheError::Refused(format!("invalid namespace: {e}")))?;
                let key = namespace_key(&config.name);
                let value = postcard::to_allocvec(&config)
                    .map_err(|e| CacheError::Refused(format!("encoding: {e}")))?;
                let txn = Txn {
                    compare: vec![Compare {
                        key: key.clone(),
                        target: CompareTarget::Version(0),
                        op: CompareOp::Equal,
                    }],
                    success: vec![RequestOp::put(&key, &value)],
                    failure: vec![],
                };
                match self.store(KvRequest::Txn(txn)).await? {
                    KvReply::Txn(txn) if txn.succeeded => Ok(CacheAnswer::Done),
                    KvReply::Txn(_) => Err(CacheError::Refused(format!(
                        "namespace {:?} exists already",
                        config.name
                    ))),
                    other => Err(CacheError::NotReady(format!("unexpected answer {other:?}"))),
                }
            }
            CacheRequest::Drop(name) => {
                let request = KvRequest::Delete(DeleteRequest {
                    range: KeyRange::Key(namespace_key(&name)),
                    prev_kv: false,
                });
                match self.store(request).await? {
                    KvReply::Delete(deleted, _) if deleted.deleted > 0 => Ok(CacheAnswer::Done),
                    KvReply::Delete(..) => Err(CacheError::NoNamespace(name)),
                    other => Err(CacheError::NotReady(format!("unexpected answer {other:?}"))),
                }
            }
        }
    }

    /// A request on the reserved keys: here if this node leads the store,
    /// else on the leader.
    async fn store(&self, request: KvRequest) -> Result<KvReply, CacheError> {
        let failed = |e: KvFailure| CacheError::NotReady(format!("replicated store: {e}"));
        match crate::serve::kv_op_answer(self.kv.clone(), request.clone()).await {
            Err(KvFailure::NotLeader {
                leader: Some((_, addr)),
            }) => match self
                .channel
                .request(addr, &PeerRequest::Store(request))
                .await
            {
                Ok(PeerResponse::Store(answer)) => answer.map_err(failed),
                Ok(other) => Err(CacheError::NotReady(format!("unexpected answer {other:?}"))),
                Err(e) => Err(CacheError::NotReady(format!(
                    "the store's leader {addr}: {e}"
                ))),
            },
            answer => answer.map_err(failed),
        }
    }
}

/// The answer to a peer's request.
async fn answer_peer(
    commands: &mpsc::Sender<Command>,
    kv: &Kv,
    from: &str,
    request: PeerRequest,
) -> PeerResponse {
    let stopped = || CacheError::NotReady("the cache service stopped".into());
    match request {
        PeerRequest::Op {
            namespace,
            op,
            table,
        } => {
            let (reply, rx) = oneshot::channel();
            let command = Command::Forwarded {
                namespace,
                op,
                table,
                reply,
            };
            if commands.send(command).await.is_err() {
                return PeerResponse::Op(Err(stopped()));
            }
            match rx.await {
                Ok(Routed::Done { result, acks }) => PeerResponse::Op(settle(result, acks).await),
                // The actor refuses rather than forward again.
                Ok(Routed::Forward { .. }) | Err(_) => PeerResponse::Op(Err(stopped())),
            }
        }
        PeerRequest::Replicate(items) => {
            let count = items.len();
            let (reply, rx) = oneshot::channel();
            if commands
                .send(Command::Replicate { items, reply })
                .await
                .is_err()
            {
                return PeerResponse::Replicated(vec![Outcome::Refused("stopped".into()); count]);
            }
            PeerResponse::Replicated(
                rx.await
                    .unwrap_or_else(|_| vec![Outcome::Refused("stopped".into()); count]),
            )
        }
        PeerRequest::Size { namespace } => {
            let (reply, rx) = oneshot::channel();
            if commands
                .send(Command::Size { namespace, reply })
                .await
                .is_err()
            {
                return PeerResponse::Size(Err(stopped()));
            }
            PeerResponse::Size(rx.await.unwrap_or_else(|_| Err(stopped())))
        }
        PeerRequest::Flush { namespace } => {
            let (reply, rx) = oneshot::channel();
            if commands
                .send(Command::Flush { namespace, reply })
                .await
                .is_err()
            {
                return PeerResponse::Flushed(Err(stopped()));
            }
            PeerResponse::Flushed(rx.await.unwrap_or_else(|_| Err(stopped())))
        }
        PeerRequest::Store(request) if only_cache_keys(&request) => {
            PeerResponse::Store(crate::serve::kv_op_answer(kv.clone(), request).await)
        }
        PeerRequest::Store(_) => PeerResponse::Store(Err(KvFailure::PermissionDenied {
            role: "node".into(),
            operation: "forward store requests outside the cache's keys".into(),
        })),
        PeerRequest::Holds {
            namespace,
            partitions,
        } => {
            let count = partitions.len();
            let (reply, rx) = oneshot::channel();
            let command = Command::Holds {
                namespace,
                partitions,
                reply,
            };
            if commands.send(command).await.is_err() {
                return PeerResponse::Holds(vec![None; count]);
            }
            PeerResponse::Holds(rx.await.unwrap_or_else(|_| vec![None; count]))
        }
        PeerRequest::HandBack {
            namespace,
            partitions,
        } => {
            let command = Command::HandBack {
                namespace,
                partitions,
                to: from.to_owned(),
            };
            let _ = commands.send(command).await;
            PeerResponse::HandingBack
        }
    }
}

/// The answer to an operation once its backups acknowledged it: each ack
/// is `true` when the backup applied it, dropped when the backup left the
/// table (nothing to wait for), `false` when the backup refused it because
/// it owns the partition now (this node was taken for failed): then the
/// write is not acknowledged.
async fn settle(
    result: Result<CacheReply, CacheError>,
    acks: Vec<oneshot::Receiver<bool>>,
) -> Result<CacheReply, CacheError> {
    let mut refused = false;
    for ack in acks {
        refused |= ack.await == Ok(false);
    }
    match refused {
        true => Err(CacheError::Unknown(
            "a backup took the partition over while the write was replicated; it may be lost"
                .into(),
        )),
        false => result,
    }
}

/// Whether a store request forwarded between nodes touches only the
/// cache's reserved keys (the only ones the cache forwards): reads of
/// them, and puts, deletes and transactions on them.
fn only_cache_keys(request: &KvRequest) -> bool {
    let key = |k: &[u8]| k.starts_with(CACHE_PREFIX);
    let range = |r: &KeyRange| match r {
        KeyRange::Key(k) | KeyRange::Prefix(k) => key(k),
        KeyRange::Range { .. } => false,
    };
    let op = |op: &RequestOp| match op {
        RequestOp::Range(read) => range(&read.range),
        RequestOp::Put(put) => key(&put.key),
        RequestOp::Delete(delete) => range(&delete.range),
    };
    match request {
        KvRequest::Range { request, .. } => range(&request.range),
        KvRequest::Put(put) => key(&put.key),
        KvRequest::Delete(delete) => range(&delete.range),
        KvRequest::Txn(txn) => {
            txn.compare.iter().all(|c| key(&c.key))
                && txn.success.iter().chain(&txn.failure).all(op)
        }
        _ => false,
    }
}

/// The key of a namespace's settings.
pub fn namespace_key(name: &str) -> Vec<u8> {
    let mut key = NAMESPACE_PREFIX.to_vec();
    key.extend_from_slice(name.as_bytes());
    key
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One namespace of the node's cache as a RESP [`CacheBackend`]: every
/// operation routed to its key's owner.
#[derive(Debug, Clone)]
pub struct NodeBackend {
    cache: Cache,
    namespace: String,
}

impl NodeBackend {
    /// Serves `namespace` of `cache`.
    pub fn new(cache: Cache, namespace: String) -> NodeBackend {
        NodeBackend { cache, namespace }
    }
}

impl CacheBackend for NodeBackend {
    async fn execute(&self, op: CacheOp) -> Result<CacheReply, CacheError> {
        self.cache.execute(&self.namespace, op).await
    }

    async fn size(&self) -> Result<u64, CacheError> {
        self.cache.size(&self.namespace).await
    }

    async fn flush(&self) -> Result<(), CacheError> {
        self.cache.flush(&self.namespace).await
    }

    fn info(&self) -> String {
        let stats = self.cache.stats();
        let mut info = format!(
            "# Cluster\r\nnamespace:{}\r\ntable_version:{}\r\n",
            self.namespace, stats.table_version
        );
        if let Some(ns) = stats.namespaces.iter().find(|n| n.name == self.namespace) {
            let m = ns.metrics;
            info.push_str(&format!(
                "# Stats\r\nkeyspace_hits:{}\r\nkeyspace_misses:{}\r\nevicted_keys:{}\r\nexpired_keys:{}\r\n# Keyspace\r\nlocal_entries:{}\r\nlocal_bytes:{}\r\n",
                m.hits, m.misses, m.evictions, m.expirations, m.entries, m.bytes
            ));
        }
        info
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_requests_on_the_cache_keys_are_forwarded_between_nodes() {
        let read = |range| KvRequest::Range {
            request: RangeRequest {
                range,
                revision: 0,
                limit: 0,
                keys_only: false,
                count_only: false,
            },
            linearizable: true,
        };
        let put = |key: &[u8]| {
            KvRequest::Put(PutRequest {
                key: key.to_vec(),
                value: vec![],
                lease: None,
                prev_kv: false,
            })
        };
        let create = Txn {
            compare: vec![Compare {
                key: namespace_key("x"),
                target: CompareTarget::Version(0),
                op: CompareOp::Equal,
            }],
            success: vec![RequestOp::put(&namespace_key("x"), b"c")],
            failure: vec![],
        };
        let sneaky = Txn {
            success: vec![RequestOp::put(b"__clustron/other", b"c")],
            ..create.clone()
        };
        for (request, allowed) in [
            (read(KeyRange::Prefix(CACHE_PREFIX.to_vec())), true),
            (read(KeyRange::Prefix(b"__clustron/".to_vec())), false),
            (read(KeyRange::Prefix(Vec::new())), false),
            (put(TABLE_KEY), true),
            (put(b"user/1"), false),
            (
                KvRequest::Delete(DeleteRequest {
                    range: KeyRange::Key(namespace_key("x")),
                    prev_kv: false,
                }),
                true,
            ),
            (
                KvRequest::Delete(DeleteRequest {
                    range: KeyRange::Range {
                        start: CACHE_PREFIX.to_vec(),
                        end: Vec::new(),
                    },
                    prev_kv: false,
                }),
                false,
            ),
            (KvRequest::Txn(create), true),
            (KvRequest::Txn(sneaky), false),
            (KvRequest::Compact(1), false),
        ] {
            assert_eq!(only_cache_keys(&request), allowed, "{request:?}");
        }
    }
}
