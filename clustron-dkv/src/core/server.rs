//! The key-value server of one node, sans-IO: the replicated log, the store
//! it feeds, watches and the leader's lease clock, behind one API shape.
//!
//! Writes (put, delete, transactions, lease grants and revocations,
//! compaction) are proposed to the log by the leader and answered once
//! committed and applied, with the store's result. Reads are either
//! **serializable** (any node, from its applied state, possibly stale) or
//! **linearizable** (the leader only, while its election lease is valid and
//! once an entry of its own epoch is committed, after it has applied
//! everything committed when the read arrived). The lease makes the
//! linearizable read local: no round trip to a quorum, because no other
//! node can lead (or commit) while this one's lease runs (DESIGN rules 2–3).
//!
//! # Calling protocol
//!
//! As for [`Replica`]: after any input, drain [`Server::poll_output`] and
//! perform the outputs **in order**. [`ServerOutput::Log`] carries the
//! replica's writes, syncs and sends; replies and watch deliveries come
//! after the `Sync` that made their entries durable, so performing in order
//! never acknowledges a write before it is on disk. Call
//! [`Server::handle_timeout`] at [`Server::poll_timeout`].
//!
//! # Example
//!
//! A single voter: it leads, commits alone, and answers a put then a read.
//!
//! ```
//! use std::net::SocketAddr;
//! use std::time::{Duration, Instant};
//! use clustron_dkv::core::server::{ClientOp, Reply, Server, ServerConfig, ServerOutput};
//! use clustron_dkv::core::mvcc::Command;
//! use clustron_log::core::Recovered;
//! use clustron_dkv::kv::{PutRequest, RequestOp};
//! use clustron_election::NodeName;
//!
//! let me = NodeName::new("n1").unwrap();
//! let addr: SocketAddr = "127.0.0.1:7000".parse().unwrap();
//! let now = Instant::now();
//! let mut server = Server::new(ServerConfig::default(), me.clone(), [(me, addr)], [],
//!     Recovered::default(), now).unwrap();
//! server.elected(now, 1, vec![], now + Duration::from_secs(1));
//! while server.poll_output().is_some() {}
//!
//! let put = Command::Put(PutRequest { key: b"k".to_vec(), value: b"v".to_vec(), lease: None, prev_kv: false });
//! server.request(now, 7, ClientOp::Write(put));
//! let mut replies = Vec::new();
//! while let Some(output) = server.poll_output() {
//!     if let ServerOutput::Reply { id, result } = output { replies.push((id, result)); }
//! }
//! assert!(matches!(replies[..], [(7, Ok(Reply::Put(_, 1)))]));
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

use clustron_election::NodeName;

use super::leases::LeaseClock;
use super::mvcc::{check_limits, Command, Limits, Outcome, Store, StorePoint};
use super::watch::{Cancelled, Delivery, WatchHub, WatchId, WatchLimits, WatchRequest};
use crate::kv::{KvError, LeaseId, RangeRequest, SessionId};
use clustron_log::core::{
    Config as LogConfig, ConfigError, EntryKind, Message, Output as LogOutput, ProposeError,
    Recovered, Replica, ReplicatedCore, SnapshotData, SnapshotMeta,
};

/// A client request's id, chosen by the driver; replies carry it.
pub type RequestId = u64;

/// Revisions of history kept by default: etcd's snapshot count. A
/// watcher away for more writes than this must read the current state
/// again (`KvError::Compacted`), as with etcd's revision compaction. 100k
/// kept a node's data dir and memory at 10-40x its live data after a million
/// small writes (issue 11); raise it with `--retain-revisions`.
pub const DEFAULT_RETAIN_REVISIONS: u64 = 10_000;

/// The fewest revisions of history a compaction driven by
/// [`ServerConfig::retain_bytes`] keeps: a watcher that was away for a
/// thousand writes still resumes, whatever the values weigh.
pub const MIN_HISTORY_REVISIONS: u64 = 1_000;

/// Most revisions one compaction frees: every replica applies a compaction
/// between two inputs, ~0.75 µs per revision freed (a look-up per change),
/// so a compaction of the 5,000 revisions that `retain_revisions` and half
/// again allowed held every node's driver ~4 ms, every quarter second at
/// 20,000 puts/s: the put p99. History beyond the bound is freed in steps
/// of at most this many, one after the other.
pub const COMPACTION_STEP: u64 = 500;

/// How the server is tuned.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The replicated log's tuning.
    pub log: LogConfig,
    /// Size limits for writes, checked by the leader before it proposes
    /// (so a node's own setting never makes replicas apply an entry
    /// differently: every replica applies with the protocol's limits,
    /// [`Limits::default`]).
    pub limits: Limits,
    /// History kept: once the store is this many revisions past its
    /// compaction point and half as many again (at most
    /// [`COMPACTION_STEP`] more), the leader proposes a compaction to
    /// `revision - retain_revisions`, in steps of at most
    /// [`COMPACTION_STEP`] revisions (0: never). Watches and past reads
    /// reach back this far.
    pub retain_revisions: u64,
    /// History bound in bytes: once the bytes of past versions (what
    /// compaction can free; live values never count) exceed this and half
    /// as much again, the leader proposes a compaction of the older half of
    /// the history (in steps of at most [`COMPACTION_STEP`] revisions),
    /// keeping at least [`MIN_HISTORY_REVISIONS`] (0: no byte
    /// bound). Without it a workload rewriting large values kept
    /// `retain_revisions` copies of them: 170 MB snapshots after 80k writes
    /// of a growing 44 KB value, a second to send to a lagging voter.
    pub retain_bytes: u64,
    /// The leader proposes a checkpoint of its state digest every this many
    /// applied entries, which every replica compares with its own (0:
    /// never).
    pub checkpoint_every: u64,
    /// The driver snapshots the state machine every this many applied log
    /// entries and then forgets the log before it (0: never). Bounds the
    /// memory and disk the log holds and the time a restart replays.
    pub snapshot_entries: u64,
    /// What catching up watchers may cost, and how long a reader may stall.
    pub watch: WatchLimits,
}

impl Default for ServerConfig {
    /// LAN log timing, default limits, [`DEFAULT_RETAIN_REVISIONS`]
    /// revisions and 64 MiB of history.
    fn default() -> Self {
        Self {
            log: LogConfig::default(),
            limits: Limits::default(),
            retain_revisions: DEFAULT_RETAIN_REVISIONS,
            retain_bytes: 64 << 20,
            checkpoint_every: 10_000,
            // etcd's --snapshot-count default (v3.6): 10,000 entries.
            snapshot_entries: 10_000,
            watch: WatchLimits::default(),
        }
    }
}

/// What a client asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientOp {
    /// Read keys.
    Read {
        /// What to read.
        request: RangeRequest,
        /// Linearizable (leader, lease, up to date) or serializable (this
        /// node's applied state).
        linearizable: bool,
    },
    /// A write, through the log. A [`Command::LeaseGrant`] with id 0 gets
    /// an id chosen by the leader.
    Write(Command),
    /// Renew a lease (leader only).
    KeepAlive(LeaseId),
    /// Open a client session (through the log); the leader picks its id.
    OpenSession {
        /// How long it lives without a write or keep-alive, in ms.
        ttl_ms: u64,
    },
    /// Renew a session (leader only).
    SessionKeepAlive(SessionId),
    /// A write in a session: applied exactly once however often it is
    /// sent; a repeat gets the first result ([`super::session`]).
    SessionWrite {
        /// The session.
        session: SessionId,
        /// The write's number in the session (the same on every retry).
        seq: u64,
        /// The client was answered for every write numbered below this.
        acked: u64,
        /// The write.
        command: Command,
    },
}

/// A successful answer (the client protocol's type).
pub use crate::kv::KvReply as Reply;

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServerError {
    /// This node cannot serve it: ask the leader (if known).
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The leader this node knows of.
        leader: Option<(NodeName, SocketAddr)>,
    },
    /// The leader is catching up or its lease is not (yet) valid: retry.
    #[error("leader not ready: {0}")]
    NotReady(&'static str),
    /// The write's log entry was replaced by another leader's: it was not
    /// applied and will not be. Safe to retry.
    #[error("the write was lost in a leader change and not applied; retry")]
    Lost,
    /// This node stopped leading before the write committed: it may or may
    /// not apply. Safe to retry only in its session, with its number.
    #[error("the leader changed before the write committed; outcome unknown")]
    LeaderChanged,
    /// The request is larger than the log accepts.
    #[error("request of {len} bytes is over the limit of {max}")]
    TooLarge {
        /// Its encoded size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The store refused it.
    #[error(transparent)]
    Kv(#[from] KvError),
}

/// What the server asks of its driver, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerOutput {
    /// A replicated log output: write, sync, send, summary, cannot-lead.
    Log(LogOutput),
    /// The answer to a request.
    Reply {
        /// The request.
        id: RequestId,
        /// Its result.
        result: Result<Reply, ServerError>,
    },
    /// Events for a watcher.
    Watch(Delivery),
    /// A watcher ended by the server (its history was compacted).
    WatchCancelled(Cancelled),
}

/// The state machine as a snapshot holds it: the store (with its sessions)
/// and the digest of every change that made it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MachineState {
    /// The digest at the snapshot's index (see [`Server::digest`]).
    pub digest: u32,
    /// The store.
    pub store: Store,
}

impl MachineState {
    /// The bytes of a snapshot file's state.
    pub fn encode(&self) -> Vec<u8> {
        super::encode_exact(self)
    }

    /// Reads [`MachineState::encode`]'s bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, postcard::Error> {
        postcard::from_bytes(bytes)
    }
}

/// A replica whose state differs from the leader's at the same log index:
/// they applied the same entries differently. The node must not serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Divergence {
    /// The log index compared.
    pub index: u64,
    /// This replica's digest there.
    pub ours: u32,
    /// The leader's.
    pub leaders: u32,
}

/// How many (index, digest) pairs a replica keeps to compare checkpoints
/// with: a checkpoint is applied within the log's pipeline depth of the
/// index it names.
const DIGESTS_KEPT: usize = 4096;

/// A write waiting for its entry to commit.
#[derive(Debug)]
struct PendingWrite {
    id: RequestId,
    epoch: u64,
}

/// The key-value server of one node.
#[derive(Debug)]
pub struct Server {
    replica: Replica,
    store: Store,
    hub: WatchHub,
    leases: LeaseClock,
    /// The leader's clock for client sessions.
    session_clock: LeaseClock<SessionId>,
    /// Highest log index applied to the store.
    applied: u64,
    /// Writes by log index.
    writes: BTreeMap<u64, PendingWrite>,
    /// Linearizable reads waiting for `applied` to reach their index.
    reads: Vec<(u64, RequestId, RangeRequest)>,
    /// The election lease: (epoch, valid until).
    lease: Option<(u64, Instant)>,
    /// Whether this leader's own no-op is applied: its commit index then
    /// covers everything any earlier leader committed.
    own_epoch_committed: bool,
    /// Counter for lease ids the leader picks.
    next_lease: u64,
    retain_revisions: u64,
    retain_bytes: u64,
    /// The limits this node admits writes with, as leader.
    admission: Limits,
    checkpoint_every: u64,
    /// Digest of every change applied so far (see [`Server::digest`]).
    digest: u32,
    /// (applied index, digest) of the last applied entries, to compare with
    /// the leader's checkpoints.
    digests: VecDeque<(u64, u32)>,
    /// The first checkpoint this replica disagreed with.
    diverged: Option<Divergence>,
    /// A compaction this leader proposed and has not seen applied.
    compacting: Option<u64>,
    outputs: VecDeque<ServerOutput>,
    now: Instant,
}

impl Server {
    /// A server over the log that storage kept. The store starts empty and
    /// is rebuilt by applying the log as commits are learned again.
    pub fn new(
        config: ServerConfig,
        me: NodeName,
        voters: impl IntoIterator<Item = (NodeName, SocketAddr)>,
        learners: impl IntoIterator<Item = (NodeName, SocketAddr)>,
        recovered: Recovered,
        now: Instant,
    ) -> Result<Self, ConfigError> {
        let mut log = config.log.validate()?;
        // Snapshots taken more often than the catch-up tail is long: keep
        // half the interval, so a replica further behind still pulls one.
        if config.snapshot_entries > 0 {
            log.catch_up_entries = log.catch_up_entries.min(config.snapshot_entries / 2);
        }
        Ok(Self {
            replica: Replica::new(log, me, voters, learners, recovered, now),
            store: Store::new(Limits::default()),
            admission: config.limits,
            checkpoint_every: config.checkpoint_every,
            digest: 0,
            digests: VecDeque::new(),
            diverged: None,
            hub: WatchHub::new(config.watch),
            leases: LeaseClock::default(),
            session_clock: LeaseClock::default(),
            applied: 0,
            writes: BTreeMap::new(),
            reads: Vec::new(),
            lease: None,
            own_epoch_committed: false,
            next_lease: 0,
            retain_revisions: config.retain_revisions,
            retain_bytes: config.retain_bytes,
            compacting: None,
            outputs: VecDeque::new(),
            now,
        })
    }

    /// The store, to read (serializable) or export.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The replicated log.
    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    /// Highest log index applied.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    // ----- snapshots -------------------------------------------------------

    /// The state machine at the applied index, and what it covers: a
    /// consistent copy taken between two inputs, to serialise and write
    /// elsewhere while this server goes on.
    pub fn snapshot(&self) -> (SnapshotMeta, MachineState) {
        let meta = self.replica.snapshot_point(self.applied);
        let state = MachineState {
            digest: self.digest,
            store: self.store.clone(),
        };
        (meta, state)
    }

    /// As [`Server::snapshot`], but in O(1) whatever the store holds: the
    /// store's persistent maps are shared with the point, not copied, and a
    /// write after it copies only the few tree nodes on its path that the
    /// point still holds. The point is encoded off the driver's task
    /// ([`SnapshotData::into_bytes`]) to [`MachineState::encode`]'s very
    /// bytes. (Encoding the store in place between two inputs, as this did
    /// before, held the write path 4-11 ms per snapshot at 10,000 keys of
    /// 256 bytes and 45-60 ms at 100,000.)
    pub fn snapshot_point(&self) -> (SnapshotMeta, StatePoint) {
        let meta = self.replica.snapshot_point(self.applied);
        let state = StatePoint {
            digest: self.digest,
            store: self.store.snapshot_point(),
        };
        (meta, state)
    }

    /// A snapshot covering `upto` is durable: the log forgets the entries it
    /// covers (only committed and applied ones).
    pub fn compact_log(&mut self, upto: u64) {
        self.replica.compact(upto.min(self.applied));
    }

    /// At start, before any input: the state machine is `state`, restored
    /// from the snapshot the [`Recovered`] log continues after.
    pub fn restore(&mut self, state: MachineState) {
        self.store = state.store;
        self.digest = state.digest;
        self.applied = self.replica.snapshot().index;
    }

    /// A snapshot covering `meta`, pulled from a peer after
    /// [`LogOutput::PullSnapshot`], is durable: the state machine becomes
    /// `state` and the log continues after it. False (nothing changed) if
    /// it is not ahead of what this node has committed.
    pub fn install_snapshot(
        &mut self,
        now: Instant,
        meta: SnapshotMeta,
        state: MachineState,
    ) -> bool {
        self.now = now;
        if meta.index <= self.applied || !self.replica.install_snapshot(now, meta) {
            return false;
        }
        self.store = state.store;
        self.digest = state.digest;
        self.applied = meta.index;
        self.digests.clear();
        self.hub.fall_behind_all();
        true
    }

    /// A digest (CRC-32) of every change applied so far, in order: replicas
    /// that applied the same entries the same way have the same digest at
    /// the same index (etcd's HashKV, kept incrementally).
    pub fn digest(&self) -> u32 {
        self.digest
    }

    /// Whether this replica found its state differs from the leader's.
    pub fn diverged(&self) -> Option<Divergence> {
        self.diverged
    }

    // ----- from the election ------------------------------------------------

    /// The election persisted a promise for `epoch`.
    pub fn fence(&mut self, epoch: u64) {
        self.replica.fence(epoch);
    }

    /// This node won `epoch`, with the granting majority's summaries and a
    /// lease valid until `lease_until`.
    pub fn elected(
        &mut self,
        now: Instant,
        epoch: u64,
        summaries: Vec<(NodeName, Vec<u8>)>,
        lease_until: Instant,
    ) {
        self.now = now;
        self.replica.become_leader(now, epoch, summaries);
        self.lease = Some((epoch, lease_until));
        self.own_epoch_committed = false;
        self.leases.become_leader(now, self.store.leases());
        self.session_clock
            .become_leader(now, self.store.sessions().ttls());
    }

    /// The election renewed this leader's lease.
    pub fn lease_renewed(&mut self, epoch: u64, until: Instant) {
        if self.lease.is_some_and(|(e, _)| e == epoch) {
            self.lease = Some((epoch, until));
        }
    }

    /// Another node leads `epoch`.
    pub fn follow(&mut self, now: Instant, leader: NodeName, addr: SocketAddr, epoch: u64) {
        self.now = now;
        self.replica.follow(now, leader, addr, epoch);
        self.lost_leadership();
    }

    /// This node stopped leading `epoch`.
    pub fn step_down(&mut self, epoch: u64) {
        self.replica.step_down(epoch);
        self.lost_leadership();
    }

    /// No leader is known.
    pub fn forget_leader(&mut self) {
        self.replica.forget_leader();
        self.lost_leadership();
    }

    fn lost_leadership(&mut self) {
        if self.replica.leading().is_none() {
            self.lease = None;
            self.own_epoch_committed = false;
            self.compacting = None;
            self.leases.step_down();
            self.session_clock.step_down();
            // Writes waiting to commit may still commit under the next
            // leader, or not: their clients are told at once (to retry in
            // their sessions) rather than left waiting for a verdict this
            // node may learn late, e.g. cut off in a minority.
            for (_, write) in std::mem::take(&mut self.writes) {
                self.outputs.push_back(ServerOutput::Reply {
                    id: write.id,
                    result: Err(ServerError::LeaderChanged),
                });
            }
            // Reads waiting on this node's lease cannot be answered.
            let leader = self.replica.leader();
            for (_, id, _) in std::mem::take(&mut self.reads) {
                self.outputs.push_back(ServerOutput::Reply {
                    id,
                    result: Err(ServerError::NotLeader {
                        leader: leader.clone(),
                    }),
                });
            }
        }
    }

    /// Voter `name` is at `addr` ([`Replica::set_voter_addr`]).
    pub fn set_voter_addr(&mut self, name: &NodeName, addr: SocketAddr) {
        self.replica.set_voter_addr(name, addr);
    }

    /// The non-voting members that should receive the log (alive ones, as
    /// membership sees them); the replica starts or stops sending to the
    /// difference.
    pub fn set_learners(&mut self, learners: impl IntoIterator<Item = (NodeName, SocketAddr)>) {
        self.replica.set_learners(learners);
    }

    // ----- from the network and the clock -----------------------------------

    /// A replication message from a peer.
    pub fn handle_message(&mut self, now: Instant, from: SocketAddr, msg: Message) {
        self.now = now;
        self.replica.handle_message(now, from, msg);
    }

    /// The deadline from [`Server::poll_timeout`] passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        self.replica.handle_timeout(now);
        if !self.proposing() {
            return;
        }
        for id in self.leases.poll_expired(now) {
            // Expiry is a committed decision: propose the revoke. If it is
            // refused or lost, the clock is told to retry.
            let payload = encode(&Command::LeaseRevoke { id });
            if self.replica.propose(now, payload).is_err() {
                self.leases.retry(now, id);
            }
        }
        for id in self.session_clock.poll_expired(now) {
            let payload = encode(&Command::CloseSession { id });
            if self.replica.propose(now, payload).is_err() {
                self.session_clock.retry(now, id);
            }
        }
    }

    /// When to call [`Server::handle_timeout`].
    pub fn poll_timeout(&self) -> Option<Instant> {
        let clocks = self.proposing();
        [
            self.replica.poll_timeout(),
            self.leases.poll_timeout().filter(|_| clocks),
            self.session_clock.poll_timeout().filter(|_| clocks),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Whether expiries of leases and sessions can be proposed now. A
    /// leader still catching up, or one fenced out by a newer epoch before
    /// its election reports the step-down, has its proposals refused; the
    /// clocks keep their deadlines and the overdue expiries are proposed
    /// once the replica serves (late is safe: a lease may outlive its TTL,
    /// never end early). Retrying a refused proposal at once would spin.
    fn proposing(&self) -> bool {
        self.replica.leading().is_some()
    }

    // ----- from clients ------------------------------------------------------

    /// A client request; its reply comes as [`ServerOutput::Reply`].
    pub fn request(&mut self, now: Instant, id: RequestId, op: ClientOp) {
        self.now = now;
        if self.diverged.is_some() {
            let refused = Err(ServerError::NotReady(
                "this replica's state differs from the leader's",
            ));
            self.outputs.push_back(ServerOutput::Reply {
                id,
                result: refused,
            });
            return;
        }
        let immediate = match op {
            // The store is rebuilt from the log as commits are learned: until
            // this node has learned one since it started, it would answer
            // from an empty store.
            ClientOp::Read {
                linearizable: false,
                ..
            } if self.applied == 0 => Some(Err(ServerError::NotReady(
                "this node has not learned what is committed since it started",
            ))),
            ClientOp::Read {
                request,
                linearizable: false,
            } => Some(self.read(&request)),
            ClientOp::Read {
                request,
                linearizable: true,
            } => match self.read_index(now) {
                Err(e) => Some(Err(e)),
                Ok(index) if index <= self.applied => Some(self.read(&request)),
                Ok(index) => {
                    self.reads.push((index, id, request));
                    None
                }
            },
            ClientOp::KeepAlive(lease) => Some(self.keep_alive(now, lease)),
            ClientOp::SessionKeepAlive(session) => Some(self.session_keep_alive(now, session)),
            ClientOp::Write(command) => match command {
                // Session commands are the server's own: never a client's.
                Command::OpenSession { .. }
                | Command::CloseSession { .. }
                | Command::Checkpoint { .. }
                | Command::InSession { .. } => Some(Err(KvError::NotInSession.into())),
                command => self.write(now, id, command).err().map(Err),
            },
            ClientOp::OpenSession { ttl_ms } => {
                let command = Command::OpenSession {
                    id: SessionId(0),
                    ttl_ms,
                };
                self.write(now, id, command).err().map(Err)
            }
            ClientOp::SessionWrite {
                session,
                seq,
                acked,
                command,
            } => self.session_write(now, id, session, seq, acked, command),
        };
        if let Some(result) = immediate {
            self.outputs.push_back(ServerOutput::Reply { id, result });
        }
    }

    fn read(&self, request: &RangeRequest) -> Result<Reply, ServerError> {
        // Paged by size: a large range comes back in several answers.
        let response = self
            .store
            .range_page(request, crate::kv::RANGE_PAGE_BYTES)?;
        let revision = if request.revision == 0 {
            self.store.revision()
        } else {
            request.revision
        };
        Ok(Reply::Range(response, revision))
    }

    /// The commit index a linearizable read must wait for, if this node may
    /// serve one now.
    fn read_index(&self, now: Instant) -> Result<u64, ServerError> {
        let Some(epoch) = self.replica.leading() else {
            return Err(ServerError::NotLeader {
                leader: self.replica.leader(),
            });
        };
        match self.lease {
            Some((e, until)) if e == epoch && now < until => {}
            _ => return Err(ServerError::NotReady("the leader's lease is not valid")),
        }
        // Until an entry of its own epoch commits, a leader's commit index
        // may be behind what its predecessor committed.
        if !self.own_epoch_committed {
            return Err(ServerError::NotReady(
                "the leader's first entry is not committed yet",
            ));
        }
        Ok(self.replica.commit_index())
    }

    fn keep_alive(&mut self, now: Instant, lease: LeaseId) -> Result<Reply, ServerError> {
        if self.replica.leading().is_none() {
            return Err(ServerError::NotLeader {
                leader: self.replica.leader(),
            });
        }
        match self.leases.keep_alive(now, lease) {
            Some(ttl) => Ok(Reply::KeptAlive {
                ttl_ms: ttl.as_millis() as u64,
            }),
            None => Err(KvError::LeaseNotFound(lease).into()),
        }
    }

    fn session_keep_alive(
        &mut self,
        now: Instant,
        session: SessionId,
    ) -> Result<Reply, ServerError> {
        if self.replica.leading().is_none() {
            return Err(ServerError::NotLeader {
                leader: self.replica.leader(),
            });
        }
        match self.session_clock.keep_alive(now, session) {
            Some(ttl) => Ok(Reply::KeptAlive {
                ttl_ms: ttl.as_millis() as u64,
            }),
            None => Err(KvError::SessionExpired(session).into()),
        }
    }

    /// A write in a session. A repeat whose result this leader has applied
    /// is answered from it at once; anything else is proposed, and applying
    /// it decides (identically on every replica) whether it is new.
    fn session_write(
        &mut self,
        now: Instant,
        id: RequestId,
        session: SessionId,
        seq: u64,
        acked: u64,
        command: Command,
    ) -> Option<Result<Reply, ServerError>> {
        if let Command::OpenSession { .. }
        | Command::CloseSession { .. }
        | Command::Checkpoint { .. }
        | Command::InSession { .. } = command
        {
            return Some(Err(KvError::NotInSession.into()));
        }
        if self.replica.leading().is_some() {
            // Writes keep their session alive.
            self.session_clock.keep_alive(now, session);
            if let Some((revision, outcome)) = self.store.sessions().recorded(session, seq) {
                return Some(reply_of(*revision, outcome.clone()));
            }
        }
        let command = Command::InSession {
            session,
            seq,
            acked,
            command: Box::new(command),
        };
        self.write(now, id, command).err().map(Err)
    }

    fn write(
        &mut self,
        now: Instant,
        id: RequestId,
        mut command: Command,
    ) -> Result<(), ServerError> {
        let epoch = match self.replica.leading() {
            Some(epoch) => epoch,
            None => {
                return Err(ServerError::NotLeader {
                    leader: self.replica.leader(),
                })
            }
        };
        // Decided once, here, before proposing: never by each replica
        // against its own settings.
        check_limits(&command, &self.admission)?;
        // Decided here, once, by the leader: never re-checked at apply.
        if let Command::LeaseGrant { ttl_ms, .. } = command.inner() {
            crate::kv::check_lease_ttl(*ttl_ms)?;
        }
        // An answer that could not be sent would leave the client unsure
        // whether the write applied: refuse it before, not after.
        let estimated = self.store.answer_bytes(&command);
        let max = crate::kv::MAX_ANSWER_BYTES as u64;
        if estimated > max {
            return Err(KvError::AnswerTooLarge { estimated, max }.into());
        }
        // Ids the leader picks are unique across leaders: the epoch in the
        // high bits.
        let mut fresh_id = || {
            self.next_lease += 1;
            epoch << 32 | (self.next_lease & 0xffff_ffff)
        };
        match &mut command {
            Command::LeaseGrant { id: lease, .. } if lease.0 == 0 => *lease = LeaseId(fresh_id()),
            Command::InSession { command, .. } => {
                if let Command::LeaseGrant { id: lease, .. } = command.as_mut() {
                    if lease.0 == 0 {
                        *lease = LeaseId(fresh_id());
                    }
                }
            }
            Command::OpenSession { id: session, .. } => *session = SessionId(fresh_id()),
            _ => {}
        }
        let payload = encode(&command);
        match self.replica.propose(now, payload) {
            Ok(index) => {
                self.writes.insert(index, PendingWrite { id, epoch });
                Ok(())
            }
            Err(ProposeError::NotLeader { leader }) => Err(ServerError::NotLeader { leader }),
            Err(ProposeError::TooLarge { len, max }) => Err(ServerError::TooLarge { len, max }),
            // `NotReady`, and whatever the log refuses with later: retry.
            Err(_) => Err(ServerError::NotReady(
                "the leader is catching up on the log",
            )),
        }
    }

    // ----- watches -------------------------------------------------------------

    /// Adds a watcher. One starting in the past gets its history from
    /// [`Server::catch_up_watchers`].
    pub fn watch(&mut self, request: WatchRequest) -> WatchId {
        self.hub.watch(request, &self.store)
    }

    /// Removes a watcher.
    pub fn cancel_watch(&mut self, id: WatchId) -> bool {
        self.hub.cancel(id)
    }

    /// A watcher's stream could not take a delivery starting at
    /// `next_revision`; it is fed from history again.
    pub fn watch_fell_behind(&mut self, id: WatchId, next_revision: u64) {
        self.hub.fall_behind(id, next_revision);
    }

    /// Feeds watchers that are behind and whose stream is `ready` (took
    /// what it was given) their next chunk of history, with bounded work
    /// ([`WatchLimits`]); cancels those that stalled or whose history is
    /// compacted. Returns the work done (changes of history looked at).
    pub fn catch_up_watchers(&mut self, now: Instant, ready: impl FnMut(WatchId) -> bool) -> usize {
        self.now = now;
        let done = self.hub.catch_up(&self.store, now, ready);
        for delivery in done.deliveries {
            self.outputs.push_back(ServerOutput::Watch(delivery));
        }
        while let Some(c) = self.hub.poll_cancelled() {
            self.outputs.push_back(ServerOutput::WatchCancelled(c));
        }
        done.scanned
    }

    /// (watchers, of which behind).
    pub fn watch_counts(&self) -> (usize, usize) {
        self.hub.counts()
    }

    // ----- outputs ----------------------------------------------------------------

    /// The next output, in the order it must be performed.
    pub fn poll_output(&mut self) -> Option<ServerOutput> {
        loop {
            if let Some(output) = self.outputs.pop_front() {
                return Some(output);
            }
            match self.replica.poll_output()? {
                LogOutput::Committed { upto } => {
                    // Forwarded first, then what applying it produced: the
                    // replies follow the Sync before it in order.
                    self.outputs
                        .push_back(ServerOutput::Log(LogOutput::Committed { upto }));
                    self.apply_to(upto);
                }
                other => return Some(ServerOutput::Log(other)),
            }
        }
    }

    fn apply_to(&mut self, upto: u64) {
        while self.applied < upto {
            let index = self.applied + 1;
            let Some(entry) = self.replica.entry(index) else {
                break;
            };
            // Decoded from the log's own bytes: no copy of the entry.
            let (epoch, kind) = (entry.epoch, entry.kind);
            let command = match kind {
                EntryKind::Data => Some(postcard::from_bytes::<Command>(&entry.payload)),
                EntryKind::Noop => None,
            };
            self.applied = index;
            // A write proposed here is the entry only if the entry is of the
            // epoch it was proposed in (same (epoch, index), same entry);
            // otherwise a newer leader replaced it, and it never applies.
            let mine = match self.writes.remove(&index) {
                Some(p) if p.epoch == epoch && kind == EntryKind::Data => Some(p),
                Some(p) => {
                    self.reply(p.id, Err(ServerError::Lost));
                    None
                }
                None => None,
            };
            match command {
                None => {
                    if self.replica.leading() == Some(epoch) {
                        self.own_epoch_committed = true;
                    }
                }
                Some(command) => {
                    let result = self.apply_data(command);
                    if let Some(p) = mine {
                        self.reply(p.id, result);
                    }
                }
            }
            if self.digests.len() == DIGESTS_KEPT {
                self.digests.pop_front();
            }
            self.digests.push_back((index, self.digest));
            self.maybe_checkpoint();
        }
        self.maybe_compact();
        // Reads whose index is now applied.
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.reads)
            .into_iter()
            .partition(|(index, _, _)| *index <= self.applied);
        self.reads = waiting;
        for (_, id, request) in ready {
            let result = self.read(&request);
            self.reply(id, result);
        }
    }

    /// On the leader: proposes its digest every `checkpoint_every` entries.
    fn maybe_checkpoint(&mut self) {
        let every = self.checkpoint_every;
        if every == 0 || self.applied % every != 0 || self.replica.leading().is_none() {
            return;
        }
        let payload = encode(&Command::Checkpoint {
            index: self.applied,
            digest: self.digest,
        });
        // Best effort: a checkpoint refused now is simply skipped.
        let _ = self.replica.propose(self.now, payload);
    }

    /// A checkpoint from the leader: compare with this replica's digest at
    /// the same index, if still known.
    fn compare_checkpoint(&mut self, index: u64, leaders: u32) {
        let ours = self
            .digests
            .iter()
            .rev()
            .find(|(i, _)| *i == index)
            .map(|(_, d)| *d);
        if let Some(ours) = ours.filter(|ours| *ours != leaders) {
            if self.diverged.is_none() {
                self.diverged = Some(Divergence {
                    index,
                    ours,
                    leaders,
                });
            }
        }
    }

    /// On the leader: proposes a compaction once history exceeds
    /// `retain_revisions` by half again (at most [`COMPACTION_STEP`]) or
    /// `retain_bytes` by half again; one at a time, each freeing at most
    /// [`COMPACTION_STEP`] revisions.
    fn maybe_compact(&mut self) {
        if self.replica.leading().is_none() || !self.own_epoch_committed {
            return;
        }
        if self
            .compacting
            .is_some_and(|target| self.store.compacted() < target)
        {
            return;
        }
        let (revision, compacted) = (self.store.revision(), self.store.compacted());
        let kept = revision.saturating_sub(compacted);
        let retain = self.retain_revisions;
        let bound = self.retain_bytes;
        let slack = (retain / 2).clamp(1, COMPACTION_STEP);
        let target = if retain > 0 && kept >= retain + slack {
            revision - retain
        } else if bound > 0
            && self.store.history_bytes() >= bound + bound / 2
            && kept >= 2 * MIN_HISTORY_REVISIONS
        {
            (compacted + kept / 2).min(revision - MIN_HISTORY_REVISIONS)
        } else {
            return;
        };
        let target = target.min(compacted + COMPACTION_STEP);
        let payload = encode(&Command::Compact { revision: target });
        if self.replica.propose(self.now, payload).is_ok() {
            self.compacting = Some(target);
        }
    }

    fn apply_data(
        &mut self,
        command: Result<Command, postcard::Error>,
    ) -> Result<Reply, ServerError> {
        let Ok(command) = command else {
            // Every replica decodes the same bytes the same way.
            return Err(ServerError::NotReady("undecodable command in the log"));
        };
        let revoke = match command.inner() {
            Command::LeaseRevoke { id } => Some(*id),
            _ => None,
        };
        let closed = match command {
            Command::CloseSession { id } => Some(id),
            _ => None,
        };
        if let Command::Checkpoint { index, digest } = command {
            self.compare_checkpoint(index, digest);
        }
        let applied = self.store.apply(command);
        if !applied.events.is_empty() {
            self.digest = fold_digest(self.digest, applied.revision, &applied.events);
            for delivery in self.hub.on_applied(applied.revision, &applied.events) {
                self.outputs.push_back(ServerOutput::Watch(delivery));
            }
        }
        // The leader's clocks follow what applied (a repeated session write
        // re-reports its first outcome: tracking it again is harmless).
        match &applied.outcome {
            Ok(Outcome::LeaseGranted { id, ttl_ms }) => self.leases.granted(self.now, *id, *ttl_ms),
            Ok(Outcome::LeaseRevoked { .. }) => {
                if let Some(id) = revoke {
                    self.leases.revoked(id);
                }
            }
            Ok(Outcome::SessionOpened { id, ttl_ms }) => {
                self.session_clock.granted(self.now, *id, *ttl_ms)
            }
            _ => {}
        }
        if let Some(id) = closed {
            self.session_clock.revoked(id);
        }
        reply_of(applied.revision, applied.outcome)
    }

    fn reply(&mut self, id: RequestId, result: Result<Reply, ServerError>) {
        self.outputs.push_back(ServerOutput::Reply { id, result });
    }
}

impl SnapshotData for MachineState {
    fn into_bytes(self) -> Vec<u8> {
        self.encode()
    }
}

/// The state machine at one applied index, as [`Server::snapshot_point`]
/// takes it: encodes to the [`MachineState`] it is.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StatePoint {
    digest: u32,
    store: StorePoint,
}

impl SnapshotData for StatePoint {
    fn into_bytes(self) -> Vec<u8> {
        super::encode_exact(&self)
    }

    fn write_into(self, out: &mut clustron_log::snapshot::StateWriter) {
        super::encode_into(&self, out);
    }
}

/// The key-value server on the log's shared driver side
/// (`clustron_log::io::LogIo`): each method is the inherent one.
impl ReplicatedCore for Server {
    type Snapshot = StatePoint;
    type State = MachineState;

    fn replica(&self) -> &Replica {
        &self.replica
    }

    fn applied(&self) -> u64 {
        self.applied
    }

    fn fence(&mut self, epoch: u64) {
        Server::fence(self, epoch);
    }

    fn elected(
        &mut self,
        now: Instant,
        epoch: u64,
        summaries: Vec<(NodeName, Vec<u8>)>,
        lease_until: Instant,
    ) {
        Server::elected(self, now, epoch, summaries, lease_until);
    }

    fn follow(&mut self, now: Instant, leader: NodeName, addr: SocketAddr, epoch: u64) {
        Server::follow(self, now, leader, addr, epoch);
    }

    fn step_down(&mut self, epoch: u64) {
        Server::step_down(self, epoch);
    }

    fn forget_leader(&mut self) {
        Server::forget_leader(self);
    }

    fn set_voter_addr(&mut self, name: &NodeName, addr: SocketAddr) {
        Server::set_voter_addr(self, name, addr);
    }

    fn set_learners(&mut self, learners: Vec<(NodeName, SocketAddr)>) {
        Server::set_learners(self, learners);
    }

    fn set_voters(&mut self, voters: Vec<(NodeName, SocketAddr)>) {
        self.replica.set_voters(voters);
    }

    fn handle_message(&mut self, now: Instant, from: SocketAddr, msg: Message) {
        Server::handle_message(self, now, from, msg);
    }

    fn handle_timeout(&mut self, now: Instant) {
        Server::handle_timeout(self, now);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        Server::poll_timeout(self)
    }

    fn snapshot(&self) -> (SnapshotMeta, StatePoint) {
        Server::snapshot_point(self)
    }

    fn compact_log(&mut self, upto: u64) {
        Server::compact_log(self, upto);
    }

    fn snapshot_saved(&mut self, index: u64, file_len: u64) {
        self.replica.snapshot_saved(index, file_len);
    }

    fn decode_state(bytes: &[u8]) -> Result<MachineState, String> {
        MachineState::decode(bytes).map_err(|e| e.to_string())
    }

    fn restore(&mut self, state: MachineState) {
        Server::restore(self, state);
    }

    fn install_snapshot(&mut self, now: Instant, meta: SnapshotMeta, state: MachineState) -> bool {
        Server::install_snapshot(self, now, meta, state)
    }

    fn pull_failed(&mut self) {
        self.replica.pull_failed();
    }
}

/// The client's answer for an applied command's outcome.
fn reply_of(revision: u64, outcome: Result<Outcome, KvError>) -> Result<Reply, ServerError> {
    Ok(match outcome? {
        Outcome::Put(r) => Reply::Put(r, revision),
        Outcome::Delete(r) => Reply::Delete(r, revision),
        Outcome::Txn(r) => Reply::Txn(r),
        Outcome::LeaseGranted { id, ttl_ms } => Reply::LeaseGranted { id, ttl_ms },
        Outcome::LeaseRevoked { deleted } => Reply::LeaseRevoked { deleted },
        Outcome::Compacted => Reply::Compacted,
        Outcome::SessionOpened { id, ttl_ms } => Reply::SessionOpened { id, ttl_ms },
        Outcome::SessionClosed => Reply::SessionClosed,
        // Nobody waits on a checkpoint; its reply is never sent.
        Outcome::Checkpoint => Reply::Compacted,
    })
}

/// The digest after a change at `revision` made `events`.
fn fold_digest(digest: u32, revision: u64, events: &[crate::kv::Event]) -> u32 {
    let mut h = crc32fast::Hasher::new_with_initial(digest);
    h.update(&revision.to_le_bytes());
    for e in events {
        let kv = &e.kv;
        h.update(&[e.kind as u8]);
        h.update(&(kv.key.len() as u64).to_le_bytes());
        h.update(&kv.key);
        h.update(&(kv.value.len() as u64).to_le_bytes());
        h.update(&kv.value);
        for n in [kv.create_revision, kv.mod_revision, kv.version] {
            h.update(&n.to_le_bytes());
        }
        h.update(&kv.lease.map_or(0, |l| l.0).to_le_bytes());
    }
    h.finalize()
}

fn encode(command: &Command) -> Vec<u8> {
    // Sized up front: growing the buffer as postcard writes reallocates and
    // copies it several times for a put of a few hundred bytes.
    let buf = Vec::with_capacity(size_hint(command));
    // Invariant: a command is plain data; postcard cannot fail on it.
    postcard::to_extend(command, buf).unwrap_or_default()
}

/// About the encoded size of `command`: its keys and values plus room for
/// the tags, numbers and length prefixes around them.
fn size_hint(command: &Command) -> usize {
    use crate::kv::{CompareTarget, RequestOp};
    let op = |op: &RequestOp| match op {
        RequestOp::Put(put) => put.key.len() + put.value.len() + 24,
        RequestOp::Range(_) | RequestOp::Delete(_) => 64,
    };
    match command.inner() {
        Command::Put(put) => put.key.len() + put.value.len() + 48,
        Command::Txn(txn) => {
            let compares: usize = txn
                .compare
                .iter()
                .map(|c| match &c.target {
                    CompareTarget::Value(value) => c.key.len() + value.len() + 32,
                    _ => c.key.len() + 32,
                })
                .sum();
            let ops: usize = txn.success.iter().chain(&txn.failure).map(op).sum();
            compares + ops + 48
        }
        _ => 64,
    }
}

#[cfg(test)]
mod tests;
