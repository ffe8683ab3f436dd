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
        PeerRequest::Store(request) => {
            PeerResponse::Store(crate::serve::kv_op_answer(kv.clone(), request).await)
        }
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

/// A node that just started asks every live member what it holds of the
/// partitions the table gives it ([`plan::recovery`]), asks backups to hand
/// theirs back, and tells the actor which partitions nobody holds (those
/// start empty). A member that does not answer counts as holding nothing;
/// a hand-back that fails leaves the partition waiting (a later table or a
/// restart resolves it).
async fn recover(
    channel: Channel<CacheProtocol>,
    commands: mpsc::Sender<Command>,
    namespace: String,
    partitions: Vec<u32>,
    peers: Vec<(String, SocketAddr)>,
    table: PartitionTable,
) {
    let mut answers: BTreeMap<u32, BTreeMap<String, Option<PartitionRole>>> = BTreeMap::new();
    for (name, addr) in &peers {
        let request = PeerRequest::Holds {
            namespace: namespace.clone(),
            partitions: partitions.clone(),
        };
        let roles = match channel.request(*addr, &request).await {
            Ok(PeerResponse::Holds(roles)) if roles.len() == partitions.len() => roles,
            _ => vec![None; partitions.len()],
        };
        for (p, role) in partitions.iter().zip(roles) {
            answers.entry(*p).or_default().insert(name.clone(), role);
        }
    }
    let mut pulls: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    let mut empty = Vec::new();
    for p in &partitions {
        let said = answers.remove(p).unwrap_or_default();
        match plan::recovery(&table, *p, &said) {
            plan::Recovery::Wait => {}
            plan::Recovery::Pull(from) => pulls.entry(from).or_default().push(*p),
            plan::Recovery::Empty => empty.push(*p),
        }
    }
    let pulled = pulls.values().map(Vec::len).sum::<usize>();
    tracing::info!(
        namespace = %namespace,
        pulled,
        empty = empty.len(),
        waiting = partitions.len() - empty.len() - pulled,
        "cache start-up: partitions this node owns"
    );
    for (from, partitions) in pulls {
        let Some(addr) = peers.iter().find(|(n, _)| *n == from).map(|(_, a)| *a) else {
            continue;
        };
        let request = PeerRequest::HandBack {
            namespace: namespace.clone(),
            partitions,
        };
        if let Err(e) = channel.request(addr, &request).await {
            tracing::warn!(%from, %e, "cache hand-back not asked; those partitions wait");
        }
    }
    let _ = commands.send(Command::Recovered { namespace, empty }).await;
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

/// The link to one peer: a queue its task sends from, in order.
struct Link {
    queue: mpsc::UnboundedSender<Queued>,
    alive: Arc<AtomicBool>,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.alive.store(false, Ordering::Relaxed);
    }
}

struct Actor {
    me: String,
    table: PartitionTable,
    /// Live members and their addresses.
    members: BTreeMap<String, SocketAddr>,
    namespaces: BTreeMap<String, NamespaceStore>,
    links: HashMap<String, Link>,
    channel: Channel<CacheProtocol>,
    commands: mpsc::Sender<Command>,
    /// Partitions this node owns at the table but waits to be handed, with
    /// the backups to copy to once it has them.
    awaiting: HashMap<(String, u32), Vec<String>>,
    /// Copies in progress: (peer, namespace, partition).
    resyncing: HashSet<(String, String, u32)>,
    /// Writes waiting for a copy to finish before they count as
    /// acknowledged by that backup.
    resync_waiters: HashMap<(String, String, u32), Vec<oneshot::Sender<bool>>>,
    stats: tokio::sync::watch::Sender<CacheStats>,
    copies_sent: u64,
    chunks_sent: u64,
    promotions: u64,
    /// Event subscribers: (namespace, queue).
    subscribers: Vec<(String, mpsc::Sender<Vec<CacheEvent>>)>,
    /// Copies in progress, one chunk in flight each: (peer, namespace,
    /// partition).
    copies: HashMap<(String, String, u32), Copying>,
    next_copy: u64,
}

/// A partition copy in progress: each chunk is read when the previous one
/// was applied, so a large partition is never held twice in memory and
/// the actor reads one chunk at a time.
struct Copying {
    id: u64,
    /// The key to continue after; `None` before the first chunk.
    after: Option<Vec<u8>>,
    /// A hand-over's `Promote` (term, keep) to send after the last chunk.
    then: Option<(u64, bool)>,
}

impl Actor {
    /// Hands `events` of `namespace` to its subscribers; one that is full
    /// or gone is dropped.
    fn publish_events(&mut self, namespace: &str, events: Vec<CacheEvent>) {
        if events.is_empty() || self.subscribers.is_empty() {
            return;
        }
        self.subscribers
            .retain(|(ns, tx)| ns != namespace || tx.try_send(events.clone()).is_ok());
    }

    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let sweeper = self.commands.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_INTERVAL);
            loop {
                tick.tick().await;
                if sweeper.send(Command::Sweep).await.is_err() {
                    return;
                }
            }
        });
        while let Some(command) = commands.recv().await {
            self.command(command);
        }
    }

    fn table_id(&self) -> (u64, u64) {
        (self.table.epoch, self.table.version)
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Local {
                namespace,
                op,
                reply,
            } => {
                let routed = self.route(&namespace, &op, None);
                let _ = reply.send(routed);
            }
            Command::Forwarded {
                namespace,
                op,
                table,
                reply,
            } => {
                let routed = self.route(&namespace, &op, Some(table));
                let _ = reply.send(routed);
            }
            Command::Replicate { items, reply } => {
                let outcomes = items.into_iter().map(|item| self.receive(item)).collect();
                let _ = reply.send(outcomes);
            }
            Command::Delivered {
                peer,
                namespace,
                partition,
                outcome,
                notify,
                ack,
            } => self.delivered(peer, namespace, partition, outcome, notify, ack),
            Command::State {
                table,
                namespaces,
                members,
            } => self.state(table, namespaces, members),
            Command::Size { namespace, reply } => {
                let size = match self.namespaces.get(&namespace) {
                    Some(store) => Ok(store.metrics().owned_entries),
                    None => Err(CacheError::NoNamespace(namespace)),
                };
                let _ = reply.send(size);
            }
            Command::Flush { namespace, reply } => {
                let _ = reply.send(self.flush(&namespace));
            }
            Command::Peers(reply) => {
                let _ = reply.send(self.members.values().copied().collect());
            }
            Command::Namespaces(reply) => {
                let list = self
                    .namespaces
                    .values()
                    .map(|s| s.config().clone())
                    .collect();
                let _ = reply.send(list);
            }
            Command::Subscribe { namespace, reply } => {
                if !self.namespaces.contains_key(&namespace) && self.table.version != 0 {
                    let _ = reply.send(Err(CacheError::NoNamespace(namespace)));
                    return;
                }
                let (tx, rx) = mpsc::channel(EVENT_QUEUE);
                self.subscribers.push((namespace, tx));
                let _ = reply.send(Ok(rx));
            }
            Command::Sweep => self.sweep(),
            Command::Holds {
                namespace,
                partitions,
                reply,
            } => {
                let roles = match self.namespaces.get(&namespace) {
                    Some(store) => partitions.iter().map(|p| store.role(*p)).collect(),
                    None => vec![None; partitions.len()],
                };
                let _ = reply.send(roles);
            }
            Command::HandBack {
                namespace,
                partitions,
                to,
            } => {
                for partition in partitions {
                    let held = self.namespaces.get(&namespace).and_then(|s| {
                        (s.role(partition) == Some(PartitionRole::Backup))
                            .then(|| s.partition_position(partition))
                            .flatten()
                    });
                    let Some(position) = held else { continue };
                    let term = plan::handback_term(&self.table, position.term);
                    self.copy_then(&namespace, partition, &to, Some((term, true)));
                }
            }
            Command::Recovered { namespace, empty } => {
                let term = plan::term_of(&self.table);
                for partition in empty {
                    let Some(copy_to) = self.awaiting.remove(&(namespace.clone(), partition))
                    else {
                        continue;
                    };
                    let owned = self.table.owner(partition) == Some(self.me.as_str());
                    let Some(store) = self.namespaces.get_mut(&namespace) else {
                        continue;
                    };
                    if !owned {
                        continue;
                    }
                    // Nobody else holds it: what this node holds (a copy
                    // that may be partial) is the best there is.
                    let started = match store.role(partition) {
                        None => store.create_partition(partition, term).is_ok(),
                        Some(_) => match store.promote(partition, term, now_ms()) {
                            Ok(effects) => {
                                self.promotions += 1;
                                self.publish_events(&namespace, effects.events);
                                self.replicate_effects(&namespace, effects.changes);
                                true
                            }
                            Err(_) => false,
                        },
                    };
                    if !started {
                        continue;
                    }
                    for peer in copy_to {
                        self.copy(&namespace, partition, &peer);
                    }
                }
            }
        }
    }

    /// Where an operation runs: here (applied now, with the acks to wait
    /// for), or at the owner.
    fn route(&mut self, namespace: &str, op: &CacheOp, forwarded: Option<(u64, u64)>) -> Routed {
        let done = |result| Routed::Done {
            result,
            acks: Vec::new(),
        };
        // Before its first table a node has not read the namespaces either
        // (both come from one read): "not yet", not "no such namespace".
        if self.table.version == 0 {
            return done(Err(CacheError::NotReady("no partition table yet".into())));
        }
        if !self.namespaces.contains_key(namespace) {
            return done(Err(CacheError::NoNamespace(namespace.to_owned())));
        }
        let partition = partition_of(op.key());
        let owner = self.table.owner(partition).map(str::to_owned);
        let wrong_owner = || CacheError::WrongOwner {
            partition,
            owner: owner.clone(),
            table_version: self.table.version,
        };
        if owner.as_deref() != Some(self.me.as_str()) {
            if forwarded.is_some() {
                return done(Err(wrong_owner()));
            }
            return match owner.as_ref().and_then(|o| self.members.get(o)) {
                Some(addr) => Routed::Forward {
                    addr: *addr,
                    table: self.table_id(),
                },
                None => done(Err(CacheError::Unavailable(partition))),
            };
        }
        if forwarded.is_some_and(|named| named > self.table_id()) {
            // The forwarder knows a newer table: this node may no longer
            // own the partition there.
            return done(Err(wrong_owner()));
        }
        let Some(store) = self.namespaces.get_mut(namespace) else {
            return done(Err(CacheError::NoNamespace(namespace.to_owned())));
        };
        let sync = !store.config().async_backups;
        let backups = usize::from(store.config().backups);
        // `apply` answers Unavailable unless the partition is owned here
        // (it may still wait for its hand-over).
        let applied = store.apply(partition, op, now_ms());
        self.publish_events(namespace, applied.events);
        let acks = self.replicate(namespace, partition, backups, applied.changes, sync);
        Routed::Done {
            result: applied.reply,
            acks,
        }
    }

    /// Sends `changes` of `partition` to its backups; with `sync`, returns
    /// one ack per backup (for the last change: the stream is ordered).
    fn replicate(
        &mut self,
        namespace: &str,
        partition: u32,
        backups: usize,
        changes: Vec<Change>,
        sync: bool,
    ) -> Vec<oneshot::Receiver<bool>> {
        let mut acks = Vec::new();
        if changes.is_empty() {
            return acks;
        }
        let targets: Vec<String> = holders(&self.table, partition, backups)
            .into_iter()
            .skip(1)
            .filter(|b| *b != self.me)
            .collect();
        for target in targets {
            let last = changes.len() - 1;
            for (i, change) in changes.iter().enumerate() {
                let ack = (sync && i == last).then(|| {
                    let (tx, rx) = oneshot::channel();
                    acks.push(rx);
                    tx
                });
                self.send(
                    &target,
                    Queued {
                        item: Replicated::Change {
                            namespace: namespace.to_owned(),
                            change: change.clone(),
                        },
                        ack,
                        notify: Notify::Nothing,
                    },
                );
            }
        }
        acks
    }

    /// Changes made outside an operation (sweeps, promotions, flushes):
    /// replicated without waiting.
    fn replicate_effects(&mut self, namespace: &str, changes: Vec<Change>) {
        let Some(backups) = self
            .namespaces
            .get(namespace)
            .map(|s| usize::from(s.config().backups))
        else {
            return;
        };
        let mut by_partition: BTreeMap<u32, Vec<Change>> = BTreeMap::new();
        for change in changes {
            by_partition
                .entry(change.partition)
                .or_default()
                .push(change);
        }
        for (partition, changes) in by_partition {
            let _ = self.replicate(namespace, partition, backups, changes, false);
        }
    }

    /// Queues an item for `peer`, starting its link if needed. An item for
    /// a peer that is not a live member is dropped (its ack resolves: the
    /// peer left the table).
    fn send(&mut self, peer: &str, queued: Queued) {
        if !self.links.contains_key(peer) {
            let Some(addr) = self.members.get(peer).copied() else {
                return;
            };
            let (queue, rx) = mpsc::unbounded_channel();
            let alive = Arc::new(AtomicBool::new(true));
            let task = PeerTask {
                peer: peer.to_owned(),
                addr,
                queue: rx,
                alive: alive.clone(),
                channel: self.channel.clone(),
                commands: self.commands.clone(),
            };
            tokio::spawn(task.run());
            self.links.insert(peer.to_owned(), Link { queue, alive });
        }
        if let Some(link) = self.links.get(peer) {
            let _ = link.queue.send(queued);
        }
    }

    /// Copies `partition` to `peer` (a re-sync or a new backup).
    fn copy(&mut self, namespace: &str, partition: u32, peer: &str) {
        self.copy_then(namespace, partition, peer, None);
    }

    /// Copies `partition` to `peer` as chunks on its ordered stream, each
    /// read when the previous one was applied (so every change queued
    /// between them follows the chunk before and is covered by the chunk
    /// after), then sends `then`'s `Promote` if given (a hand-over).
    fn copy_then(
        &mut self,
        namespace: &str,
        partition: u32,
        peer: &str,
        then: Option<(u64, bool)>,
    ) {
        self.next_copy += 1;
        let key = (peer.to_owned(), namespace.to_owned(), partition);
        self.copies.insert(
            key.clone(),
            Copying {
                id: self.next_copy,
                after: None,
                then,
            },
        );
        self.copies_sent += 1;
        self.resyncing.insert(key.clone());
        self.next_chunk(&key);
    }

    /// Reads and queues the next chunk of the copy `key`.
    fn next_chunk(&mut self, key: &(String, String, u32)) {
        let (peer, namespace, partition) = key;
        let chunk = match (self.copies.get(key), self.namespaces.get(namespace)) {
            (Some(copying), Some(store)) => {
                store.export_chunk(*partition, copying.after.as_deref(), CHUNK_BYTES)
            }
            _ => None,
        };
        let (Some(chunk), Some(copying)) = (chunk, self.copies.get_mut(key)) else {
            // The partition is no longer held here: the copy ends.
            self.copies.remove(key);
            self.resyncing.remove(key);
            return;
        };
        copying.after = chunk.next_after.clone();
        self.chunks_sent += 1;
        let notify = Notify::Chunk {
            id: copying.id,
            last: chunk.next_after.is_none(),
        };
        let queued = Queued {
            item: Replicated::Chunk {
                namespace: namespace.clone(),
                chunk,
            },
            ack: None,
            notify,
        };
        let peer = peer.clone();
        self.send(&peer, queued);
    }

    /// Sends the end of a hand-over to `to`.
    fn promote_remote(&mut self, namespace: &str, partition: u32, to: &str, term: u64, keep: bool) {
        let position = self
            .namespaces
            .get(namespace)
            .and_then(|s| s.partition_position(partition));
        self.send(
            to,
            Queued {
                item: Replicated::Promote {
                    namespace: namespace.to_owned(),
                    partition,
                    term,
                    position,
                },
                ack: None,
                notify: Notify::HandedOver { keep, term },
            },
        );
    }

    /// Applies one item from a peer.
    fn receive(&mut self, item: Replicated) -> Outcome {
        let namespace = item.namespace().to_owned();
        let Some(store) = self.namespaces.get_mut(&namespace) else {
            // Not read from the store here yet (the control task reads it
            // every CONTROL_INTERVAL): the sender copies again.
            return Outcome::Gap;
        };
        let result = match item {
            Replicated::Change { change, .. } => {
                let (term, seq) = (change.term, change.seq);
                match store.apply_change(change) {
                    // A retried batch: already applied.
                    Err(ReplicaError::Gap {
                        held: Some(held), ..
                    }) if held.term == term && held.seq >= seq => Ok(()),
                    other => other,
                }
            }
            Replicated::Chunk { chunk, .. } => store.import_chunk(chunk),
            Replicated::Promote {
                partition,
                term,
                position,
                ..
            } => {
                return self.promoted(&namespace, partition, term, position);
            }
        };
        match result {
            Ok(()) => Outcome::Applied,
            Err(ReplicaError::Gap { .. }) => Outcome::Gap,
            Err(e) => Outcome::Refused(e.to_string()),
        }
    }

    /// A hand-over's end arrived: own the partition if held at the old
    /// owner's position.
    fn promoted(
        &mut self,
        namespace: &str,
        partition: u32,
        term: u64,
        position: Option<Position>,
    ) -> Outcome {
        let Some(store) = self.namespaces.get_mut(namespace) else {
            return Outcome::Gap;
        };
        match store.role(partition) {
            Some(PartitionRole::Owner) => return Outcome::Applied,
            Some(PartitionRole::Backup) if store.partition_position(partition) == position => {}
            _ => return Outcome::Gap,
        }
        let effects = match store.promote(partition, term, now_ms()) {
            Ok(effects) => effects,
            Err(e) => return Outcome::Refused(e.to_string()),
        };
        self.promotions += 1;
        self.publish_events(namespace, effects.events);
        self.replicate_effects(namespace, effects.changes);
        if let Some(copy_to) = self.awaiting.remove(&(namespace.to_owned(), partition)) {
            for peer in copy_to {
                self.copy(namespace, partition, &peer);
            }
        }
        Outcome::Applied
    }

    /// A peer task's report on an item that needs the actor.
    #[allow(clippy::too_many_arguments)]
    fn delivered(
        &mut self,
        peer: String,
        namespace: String,
        partition: u32,
        outcome: Outcome,
        notify: Notify,
        ack: Option<oneshot::Sender<bool>>,
    ) {
        let key = (peer.clone(), namespace.clone(), partition);
        if let Notify::Chunk { id, last } = notify {
            if self.copies.get(&key).map(|c| c.id) != Some(id) {
                return; // a copy since replaced
            }
            match outcome {
                Outcome::Applied if !last => self.next_chunk(&key),
                Outcome::Applied => {
                    let then = self.copies.remove(&key).and_then(|c| c.then);
                    self.resyncing.remove(&key);
                    for waiter in self.resync_waiters.remove(&key).unwrap_or_default() {
                        let _ = waiter.send(true);
                    }
                    if let Some((term, keep)) = then {
                        self.promote_remote(&namespace, partition, &peer, term, keep);
                    }
                }
                Outcome::Gap => {
                    // A change between two chunks was lost: start over.
                    let then = self.copies.remove(&key).and_then(|c| c.then);
                    self.resyncing.remove(&key);
                    if then.is_some() || self.owns_with_backup(&namespace, partition, &peer) {
                        self.copy_then(&namespace, partition, &peer, then);
                    }
                }
                Outcome::Refused(why) => {
                    tracing::debug!(%peer, %namespace, partition, %why, "cache copy refused");
                    self.copies.remove(&key);
                    self.resyncing.remove(&key);
                }
            }
            return;
        }
        match (outcome, notify) {
            (_, Notify::Chunk { .. }) => {}
            (Outcome::Applied, Notify::HandedOver { keep, .. }) => {
                if !keep {
                    if let Some(store) = self.namespaces.get_mut(&namespace) {
                        if store.role(partition) == Some(PartitionRole::Backup) {
                            store.drop_partition(partition);
                        }
                    }
                }
            }
            (Outcome::Applied, Notify::Nothing) => {}
            (Outcome::Gap, Notify::HandedOver { keep, term }) => {
                // The new owner is not where this node stopped: copy, then
                // hand over again.
                self.copy_then(&namespace, partition, &peer, Some((term, keep)));
            }
            (Outcome::Gap, _) => {
                if !self.owns_with_backup(&namespace, partition, &peer) {
                    return;
                }
                if let Some(ack) = ack {
                    self.resync_waiters
                        .entry(key.clone())
                        .or_default()
                        .push(ack);
                }
                if !self.resyncing.contains(&key) {
                    self.copy(&namespace, partition, &peer);
                }
            }
            (Outcome::Refused(why), _) => {
                tracing::debug!(%peer, %namespace, partition, %why, "cache replication refused");
                // The backup owns the partition now (it took over, taking
                // this node for failed): the write is not acknowledged.
                if let Some(ack) = ack {
                    let _ = ack.send(false);
                }
            }
        }
    }

    /// Whether this node owns `partition` and `peer` is one of its backups
    /// at the table (so a gap there is this node's to repair).
    fn owns_with_backup(&self, namespace: &str, partition: u32, peer: &str) -> bool {
        let Some(store) = self.namespaces.get(namespace) else {
            return false;
        };
        let backups = usize::from(store.config().backups);
        store.role(partition) == Some(PartitionRole::Owner)
            && holders(&self.table, partition, backups)
                .iter()
                .skip(1)
                .any(|b| b == peer)
    }

    /// Adopts what the control task read.
    fn state(
        &mut self,
        table: Option<PartitionTable>,
        namespaces: Vec<NamespaceConfig>,
        members: Vec<(String, SocketAddr)>,
    ) {
        self.members = members.into_iter().collect();
        let members = &self.members;
        self.links.retain(|peer, _| members.contains_key(peer));
        self.resync_waiters
            .retain(|(peer, _, _), _| members.contains_key(peer));
        self.resyncing
            .retain(|(peer, _, _)| members.contains_key(peer));
        self.copies
            .retain(|(peer, _, _), _| members.contains_key(peer));
        let live: BTreeSet<String> = self.members.keys().cloned().collect();
        let wanted: BTreeMap<String, NamespaceConfig> = namespaces
            .into_iter()
            .map(|c| (c.name.clone(), c))
            .collect();
        let dropped: Vec<String> = self
            .namespaces
            .keys()
            .filter(|n| !wanted.contains_key(*n))
            .cloned()
            .collect();
        for name in dropped {
            tracing::info!(namespace = %name, "cache namespace dropped");
            self.namespaces.remove(&name);
            // Their streams end: what they cached is gone.
            self.subscribers.retain(|(ns, _)| *ns != name);
            self.awaiting.retain(|(n, _), _| *n != name);
        }
        for (name, config) in wanted {
            if self.namespaces.contains_key(&name) {
                continue;
            }
            tracing::info!(namespace = %name, "cache namespace created");
            self.namespaces
                .insert(name.clone(), NamespaceStore::new(config));
            // Its partitions as if the table had just been made.
            let table = self.table.clone();
            self.adopt(&name, &PartitionTable::empty(), &table, &live);
        }
        if let Some(table) = table.filter(|t| t.is_newer_than(&self.table)) {
            tracing::info!(
                version = table.version,
                epoch = table.epoch,
                owned = table.owned_count(&self.me),
                "cache partition table adopted"
            );
            let old = std::mem::replace(&mut self.table, table.clone());
            let names: Vec<String> = self.namespaces.keys().cloned().collect();
            for name in names {
                self.adopt(&name, &old, &table, &live);
            }
        }
        self.publish_stats();
    }

    /// Performs the steps from `old` to `new` for one namespace. A
    /// partition this node must take over while holding nothing of it (it
    /// just started, a namespace was just created, or the one that was
    /// handing it over died) waits while [`recover`] asks the other members
    /// what they hold: a backup elsewhere may still have the data.
    fn adopt(
        &mut self,
        namespace: &str,
        old: &PartitionTable,
        new: &PartitionTable,
        live: &BTreeSet<String>,
    ) {
        if new.version == 0 {
            return;
        }
        let Some(store) = self.namespaces.get(namespace) else {
            return;
        };
        let backups = usize::from(store.config().backups);
        let steps = plan::plan(old, new, &self.me, live, backups, |p| store.role(p));
        // A partition still waiting for its hand-over may hold a partial
        // copy: it is no better than nothing.
        let held: Vec<bool> = steps
            .iter()
            .map(|step| match step {
                Step::TakeOver { partition, .. } => {
                    store.role(*partition).is_some()
                        && !self
                            .awaiting
                            .contains_key(&(namespace.to_owned(), *partition))
                }
                _ => true,
            })
            .collect();
        let mut orphans = Vec::new();
        for (step, held) in steps.into_iter().zip(held) {
            match step {
                Step::TakeOver {
                    partition, copy_to, ..
                } if !held => {
                    self.awaiting
                        .insert((namespace.to_owned(), partition), copy_to);
                    orphans.push(partition);
                }
                other => self.step(namespace, other),
            }
        }
        if orphans.is_empty() {
            return;
        }
        let peers: Vec<(String, SocketAddr)> = self
            .members
            .iter()
            .filter(|(name, _)| **name != self.me)
            .map(|(name, addr)| (name.clone(), *addr))
            .collect();
        tokio::spawn(recover(
            self.channel.clone(),
            self.commands.clone(),
            namespace.to_owned(),
            orphans,
            peers,
            new.clone(),
        ));
    }

    fn step(&mut self, namespace: &str, step: Step) {
        let now = now_ms();
        let Some(store) = self.namespaces.get_mut(namespace) else {
            return;
        };
        match step {
            Step::TakeOver {
                partition,
                term,
                copy_to,
            } => {
                self.awaiting.remove(&(namespace.to_owned(), partition));
                match store.role(partition) {
                    Some(_) => match store.promote(partition, term, now) {
                        Ok(effects) => {
                            self.promotions += 1;
                            self.publish_events(namespace, effects.events);
                            self.replicate_effects(namespace, effects.changes);
                        }
                        Err(e) => tracing::warn!(partition, %e, "cache take-over"),
                    },
                    None => {
                        let _ = store.create_partition(partition, term);
                    }
                }
                for peer in copy_to {
                    self.copy(namespace, partition, &peer);
                }
            }
            Step::AwaitHandOver { partition, copy_to } => {
                self.awaiting
                    .insert((namespace.to_owned(), partition), copy_to);
            }
            Step::HandOver {
                partition,
                to,
                copy,
                term,
                keep,
            } => {
                let _ = store.demote(partition);
                match copy {
                    true => self.copy_then(namespace, partition, &to, Some((term, keep))),
                    false => self.promote_remote(namespace, partition, &to, term, keep),
                }
            }
            Step::CopyTo { partition, to } => {
                for peer in to {
                    self.copy(namespace, partition, &peer);
                }
            }
            Step::Drop { partition } => {
                store.drop_partition(partition);
            }
        }
    }

    fn flush(&mut self, namespace: &str) -> Result<(), CacheError> {
        let Some(store) = self.namespaces.get_mut(namespace) else {
            return Err(CacheError::NoNamespace(namespace.to_owned()));
        };
        let owned: Vec<u32> = store
            .partitions()
            .filter(|(_, role)| *role == PartitionRole::Owner)
            .map(|(p, _)| p)
            .collect();
        let mut changes = Vec::new();
        let mut events = Vec::new();
        for partition in owned {
            if let Ok(effects) = store.flush_partition(partition) {
                changes.extend(effects.changes);
                events.extend(effects.events);
            }
        }
        self.publish_events(namespace, events);
        self.replicate_effects(namespace, changes);
        Ok(())
    }

    fn sweep(&mut self) {
        let now = now_ms();
        let names: Vec<String> = self.namespaces.keys().cloned().collect();
        for name in names {
            let Some(store) = self.namespaces.get_mut(&name) else {
                continue;
            };
            if store.next_expiry().is_some_and(|at| at <= now) {
                let effects = store.expire(now, SWEEP_BUDGET);
                self.publish_events(&name, effects.events);
                self.replicate_effects(&name, effects.changes);
            }
        }
        self.publish_stats();
    }

    fn publish_stats(&self) {
        self.stats.send_replace(CacheStats {
            table_version: self.table.version,
            table_epoch: self.table.epoch,
            copies_sent: self.copies_sent,
            chunks_sent: self.chunks_sent,
            promotions: self.promotions,
            namespaces: self
                .namespaces
                .iter()
                .map(|(name, store)| {
                    let owned = store
                        .partitions()
                        .filter(|(_, role)| *role == PartitionRole::Owner)
                        .count() as u64;
                    NamespaceStats {
                        name: name.clone(),
                        metrics: store.metrics(),
                        owned_partitions: owned,
                        backup_partitions: store.partitions().count() as u64 - owned,
                    }
                })
                .collect(),
        });
    }
}

/// Sends one peer's queue in order, one batch in flight, retrying a batch
/// whole until it is answered or the peer leaves.
struct PeerTask {
    peer: String,
    addr: SocketAddr,
    queue: mpsc::UnboundedReceiver<Queued>,
    alive: Arc<AtomicBool>,
    channel: Channel<CacheProtocol>,
    commands: mpsc::Sender<Command>,
}

impl PeerTask {
    async fn run(mut self) {
        while let Some(first) = self.queue.recv().await {
            let mut bytes = first.item.bytes();
            let mut batch = vec![first];
            while bytes < BATCH_BYTES {
                let Ok(next) = self.queue.try_recv() else {
                    break;
                };
                bytes += next.item.bytes();
                batch.push(next);
            }
            let request = PeerRequest::Replicate(batch.iter().map(|q| q.item.clone()).collect());
            let mut pause = Duration::from_millis(50);
            let outcomes = loop {
                if !self.alive.load(Ordering::Relaxed) {
                    return;
                }
                match self.channel.request(self.addr, &request).await {
                    Ok(PeerResponse::Replicated(outcomes)) if outcomes.len() == batch.len() => {
                        break outcomes
                    }
                    Ok(other) => {
                        tracing::warn!(peer = %self.peer, answer = ?other, "cache replication: unexpected answer");
                    }
                    Err(e) => {
                        tracing::debug!(peer = %self.peer, %e, "cache replication: retrying");
                    }
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            };
            for (queued, outcome) in batch.into_iter().zip(outcomes) {
                let Queued { item, ack, notify } = queued;
                if outcome == Outcome::Applied && matches!(notify, Notify::Nothing) {
                    if let Some(ack) = ack {
                        let _ = ack.send(true);
                    }
                    continue;
                }
                let report = Command::Delivered {
                    peer: self.peer.clone(),
                    namespace: item.namespace().to_owned(),
                    partition: item.partition(),
                    outcome,
                    notify,
                    ack,
                };
                if self.commands.send(report).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Reads the reserved keys and membership for the actor; on the store's
/// leader also creates `default` once and publishes new tables.
struct Control {
    me: String,
    membership: Membership,
    election: Election,
    kv: Kv,
    channel: Channel<CacheProtocol>,
    commands: mpsc::Sender<Command>,
    /// The last table this node published (it may not be read back yet).
    published: Option<PartitionTable>,
}

impl Control {
    async fn run(mut self) {
        let mut tick = tokio::time::interval(CONTROL_INTERVAL);
        loop {
            tick.tick().await;
            if self.round().await.is_err() {
                return;
            }
        }
    }

    /// One round; `Err` when the actor has stopped.
    async fn round(&mut self) -> Result<(), ()> {
        let Ok(members) = self.membership.members().await else {
            return Err(());
        };
        let members: Vec<(String, SocketAddr)> = members
            .into_iter()
            .filter(|m| m.state.is_live())
            .map(|m| (m.name.to_string(), m.addr))
            .collect();
        // Linearizable, from the store's leader: a node that restarts must
        // not act on the stale table its own log holds (it could find
        // itself owner of partitions the others took over).
        let request = KvRequest::Range {
            request: RangeRequest {
                range: KeyRange::Prefix(CACHE_PREFIX.to_vec()),
                revision: 0,
                limit: 0,
                keys_only: false,
                count_only: false,
            },
            linearizable: true,
        };
        let read = match crate::serve::kv_op_answer(self.kv.clone(), request.clone()).await {
            Err(KvFailure::NotLeader {
                leader: Some((_, addr)),
            }) => match self
                .channel
                .request(addr, &PeerRequest::Store(request))
                .await
            {
                Ok(PeerResponse::Store(answer)) => answer,
                _ => Err(KvFailure::Unavailable(
                    "the store's leader did not answer".into(),
                )),
            },
            answer => answer,
        };
        let Ok(KvReply::Range(range, _)) = read else {
            // The store is not serving yet: membership still matters.
            let _ = self
                .commands
                .send(Command::State {
                    table: None,
                    namespaces: self.current_namespaces().await?,
                    members,
                })
                .await;
            return Ok(());
        };
        let mut table: Option<PartitionTable> = None;
        let mut namespaces = Vec::new();
        let mut initialised = false;
        for kv in &range.kvs {
            if kv.key == TABLE_KEY {
                table = postcard::from_bytes(&kv.value).ok();
            } else if kv.key == INIT_KEY {
                initialised = true;
            } else if kv.key.starts_with(NAMESPACE_PREFIX) {
                match postcard::from_bytes::<NamespaceConfig>(&kv.value) {
                    Ok(config) => namespaces.push(config),
                    Err(e) => tracing::warn!(%e, "undecodable cache namespace settings"),
                }
            }
        }
        self.commands
            .send(Command::State {
                table: table.clone(),
                namespaces,
                members: members.clone(),
            })
            .await
            .map_err(|_| ())?;
        if let Some((epoch, _)) = self.election.lease() {
            if !initialised {
                self.create_default().await;
            }
            let base = match (table, self.published.take()) {
                (Some(read), Some(mine)) if mine.is_newer_than(&read) => mine,
                (Some(read), _) => read,
                (None, Some(mine)) => mine,
                (None, None) => PartitionTable::empty(),
            };
            let live: Vec<String> = members.into_iter().map(|(name, _)| name).collect();
            let next = base.rebalance(&live, epoch.0);
            if next != base {
                self.publish(next).await;
            } else {
                self.published = Some(base);
            }
        } else {
            self.published = None;
        }
        Ok(())
    }

    async fn current_namespaces(&self) -> Result<Vec<NamespaceConfig>, ()> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Namespaces(tx))
            .await
            .map_err(|_| ())?;
        rx.await.map_err(|_| ())
    }

    async fn publish(&mut self, table: PartitionTable) {
        let Ok(value) = postcard::to_allocvec(&table) else {
            return;
        };
        let put = ClientOp::Write(StoreCommand::Put(PutRequest {
            key: TABLE_KEY.to_vec(),
            value,
            lease: None,
            prev_kv: false,
        }));
        match self.kv.request(put).await {
            Ok(_) => {
                tracing::info!(
                    node = %self.me,
                    version = table.version,
                    epoch = table.epoch,
                    "cache partition table published"
                );
                self.published = Some(table);
            }
            Err(e) => tracing::debug!(%e, "cache partition table not published"),
        }
    }

    /// Creates the namespace `default` once per cluster.
    async fn create_default(&self) {
        let Ok(value) = postcard::to_allocvec(&NamespaceConfig::default()) else {
            return;
        };
        let txn = Txn {
            compare: vec![Compare {
                key: INIT_KEY.to_vec(),
                target: CompareTarget::Version(0),
                op: CompareOp::Equal,
            }],
            success: vec![
                RequestOp::put(INIT_KEY, b"1"),
                RequestOp::put(&namespace_key("default"), &value),
            ],
            failure: vec![],
        };
        if let Err(e) = self
            .kv
            .request(ClientOp::Write(StoreCommand::Txn(txn)))
            .await
        {
            tracing::debug!(%e, "cache namespace default not created yet");
        }
    }
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
