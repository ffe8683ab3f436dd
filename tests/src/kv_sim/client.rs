//! A simulated key-value client: an actor that sends requests to nodes as
//! simulator messages and retries like `clustron_client::Client::kv`.
//!
//! One operation at a time (plus a session keep-alive in the background):
//!
//! ```text
//!  idle ──think──► pick an operation ──► round: the leader it knows, else every node in order
//!    ▲                                      │ send, wait up to request_timeout
//!    │   answer ◄───────────────────────────┤
//!    │     Ok ──► done                      │ timeout ──► next node of the round (a write
//!    │     NotLeader{leader} ──► new round at that leader   may have been applied); a silent
//!    │     NotLeader / NotReady / Lost /                    leader is forgotten
//!    │       LeaderChanged / round over ──► back off 20 ms, doubling to 500 ms, then a new
//!    │                                      round (at the leader known then, else every node)
//!    │   a new leader announced ──► the attempt waiting elsewhere moves to it at once
//!    └──── done, failed (nothing applied) or unknown (retry budget spent)
//! ```
//!
//! Left out of the real client: the list of recently failed endpoints
//! tried last (here a round starts after the node that failed), and the
//! keep-alive's own retries (here one attempt, then another soon).
//!
//! Writes are retried the way [`Retry`] says: sent again as plain writes
//! (at-least-once: what the client did before sessions), or in a session
//! with the same `(session, seq)` every time (exactly-once).

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clustron_dkv::core::mvcc::Command;
use clustron_dkv::core::server::{ClientOp, ServerError};
use clustron_dkv::kv::{
    Compare, CompareOp, CompareTarget, DeleteRequest, KeyRange, KvError, KvReply, LeaseId,
    PutRequest, RangeRequest, RequestOp, SessionId, Txn,
};

use super::{Event, Msg};
use crate::linearizability::{Call, Ret};
use crate::sim::Transmit;

/// How a client retries a write whose outcome it does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Send it again as a plain `ClientOp::Write`: what the client did
    /// before sessions. A write that timed out but was applied is applied
    /// again.
    WithoutSession,
    /// Number it in a session opened lazily and send the same
    /// `ClientOp::SessionWrite { session, seq, .. }` on every retry: the
    /// server applies it at most once.
    Session,
}

/// How a simulated client behaves.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Write retries.
    pub retry: Retry,
    /// How long one attempt waits for its answer before the client moves
    /// to the next node.
    pub request_timeout: Duration,
    /// Retry budget of one operation (the real client's `retry_for`),
    /// from its start, on the client's clock.
    pub retry_for: Duration,
    /// Longest pause between two operations (uniform from zero).
    pub think_max: Duration,
    /// Checked keys `k0 .. k{keys-1}`.
    pub keys: usize,
    /// Session time to live; the client renews it every third of it.
    pub session_ttl: Duration,
    /// Also grant, renew, use and revoke leases (on unchecked keys).
    pub lease_ops: bool,
    /// Start each operation at the leader named last (a long-lived
    /// `Client`); `false`: at a random node with no leader known, like a
    /// fresh `clustron` CLI process per command.
    pub remember_leader: bool,
    /// Follow leader announcements: an attempt waiting on a node that no
    /// longer leads moves to the new leader at once (the real client
    /// follows the topology stream). Off for [`Retry::WithoutSession`],
    /// which stands for the client before sessions.
    pub follow_leader: bool,
}

impl ClientConfig {
    /// Defaults scaled to the simulator: 1 s per attempt (the real
    /// client's connection gives up after its 3 s idle timeout; shorter
    /// here so that runs stay short), a 5 s budget (the real one is 10 s),
    /// up to 20 ms between operations, 4 keys, 10 s sessions (the real
    /// client's are 60 s: shorter ones expire more often here), lease
    /// operations on, the leader remembered, and leader announcements
    /// followed with sessions (as the real client does since it has them).
    pub fn new(retry: Retry) -> Self {
        Self {
            retry,
            request_timeout: Duration::from_secs(1),
            retry_for: Duration::from_secs(5),
            think_max: Duration::from_millis(20),
            keys: 4,
            session_ttl: Duration::from_secs(10),
            lease_ops: true,
            remember_leader: true,
            follow_leader: retry == Retry::Session,
        }
    }
}

/// The checked key number `key`, as stored and as the history names it.
pub fn key_name(key: usize) -> String {
    format!("k{key}")
}

/// A value as stored: decimal bytes.
pub fn encode_value(value: u64) -> Vec<u8> {
    value.to_string().into_bytes()
}

/// A stored value of a checked key. Only simulated clients write those
/// keys, always in decimal.
///
/// # Panics
///
/// If the bytes are not a decimal `u64`: someone else wrote the key.
pub fn decode_value(bytes: &[u8]) -> u64 {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or_else(|| panic!("checked key holds {bytes:?}, not a decimal value"))
}

/// An operation a test asks a client to run next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Planned {
    /// Read key `.0`.
    Get(usize),
    /// Set key `.0` to `.1`.
    Put(usize, u64),
}

/// What a client reports to the test.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientEvent {
    /// A checked operation started.
    Invoked {
        /// Key number.
        key: usize,
        /// What it asks.
        call: Call,
    },
    /// The checked operation in progress ended.
    Completed(Done),
    /// A serializable read saw `value` for key number `key` at `revision`.
    ReadAt {
        /// Key number.
        key: usize,
        /// The value, `None` if absent.
        value: Option<u64>,
        /// The store revision it was read at.
        revision: u64,
    },
}

/// How a checked operation ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Done {
    /// Answered.
    Ok {
        /// The answer.
        ret: Ret,
        /// For an acknowledged write: (value, revision it applied at).
        wrote: Option<(u64, u64)>,
    },
    /// Certainly not applied (only refusals that prove it; reads that ran
    /// out of budget).
    Failed,
    /// May have been applied: the retry budget ran out after an attempt
    /// that may have reached the log, or the session expired under a retry.
    Unknown,
}

/// What a client did, summed over its run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Checked operations finished.
    pub ops: u64,
    /// Of which writes (put, compare-and-set, delete).
    pub writes: u64,
    /// Writes that ended unknown.
    pub unknown_writes: u64,
    /// Operations that failed (nothing applied).
    pub failed: u64,
    /// Requests sent, retries and keep-alives included.
    pub attempts: u64,
    /// Attempts that timed out.
    pub timeouts: u64,
    /// Sessions opened.
    pub sessions_opened: u64,
    /// Sessions found expired.
    pub sessions_expired: u64,
    /// Lease operations finished.
    pub lease_ops: u64,
    /// Serializable reads answered.
    pub any_node_reads: u64,
}

/// How a compare-and-set checks the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Guard {
    /// The key's mod revision (0: absent).
    ModRevision(u64),
    /// The key's value.
    Value(u64),
}

#[derive(Debug, Clone)]
enum Job {
    /// Recorded in the history.
    Checked {
        key: usize,
        call: Call,
        guard: Option<Guard>,
    },
    /// Lease traffic: not checked, must not break anything.
    Lease(LeaseJob),
    /// A serializable read of a key at any node: possibly stale, so not in
    /// the history; the state it saw is checked against the final store.
    AnyNodeRead(usize),
}

#[derive(Debug, Clone, Copy)]
enum LeaseJob {
    Grant,
    KeepAlive(LeaseId),
    Revoke(LeaseId),
    /// Put the client's lease key, attached to the lease.
    Attach(LeaseId),
}

/// What the client knows of a key from its own last answer about it.
#[derive(Debug, Clone, Copy)]
struct Seen {
    value: Option<u64>,
    mod_revision: u64,
}

#[derive(Debug)]
struct Attempt {
    id: u64,
    node: usize,
    timeout: Instant,
}

/// The operation in progress.
#[derive(Debug)]
struct Op {
    job: Job,
    /// The replicated command, for writes.
    command: Option<Command>,
    /// The request, for reads and lease keep-alives.
    request: Option<ClientOp>,
    /// Any node may answer (a serializable read): no leader sought.
    any_node: bool,
    deadline: Instant,
    /// The leader to try, if one was named.
    target: Option<SocketAddr>,
    /// Nodes left to try in this round.
    round: VecDeque<usize>,
    waiting: Option<Attempt>,
    backoff_until: Option<Instant>,
    pause: Duration,
    /// An attempt of this write may have reached the log.
    maybe_applied: bool,
    /// Opening a session before the write can be sent.
    opening: bool,
    /// The write's identity in its session, fixed at its first send.
    seq: Option<(SessionId, u64)>,
}

#[derive(Debug)]
struct Session {
    id: SessionId,
    next_seq: u64,
    keep_alive_at: Instant,
    keep_alive: Option<Attempt>,
}

/// A simulated client.
#[derive(Debug)]
pub struct SimClient {
    index: usize,
    nodes: Vec<SocketAddr>,
    config: ClientConfig,
    rng: fastrand::Rng,
    /// The leader a node named, tried first.
    leader: Option<SocketAddr>,
    /// Where a round over every node starts.
    current: usize,
    next_request: u64,
    next_value: u64,
    op: Option<Op>,
    next_op_at: Option<Instant>,
    random: bool,
    stopped: bool,
    script: VecDeque<Planned>,
    session: Option<Session>,
    seen: BTreeMap<usize, Seen>,
    /// Read this key next (after a compare-and-set failed on it).
    read_next: Option<usize>,
    leases: Vec<LeaseId>,
    stats: ClientStats,
    now: Instant,
    transmits: VecDeque<Transmit<Msg>>,
    events: VecDeque<Event>,
}

/// First pause after a refusal; doubles up to [`MAX_PAUSE`] (as the real
/// client).
const FIRST_PAUSE: Duration = Duration::from_millis(20);
const MAX_PAUSE: Duration = Duration::from_millis(500);

impl SimClient {
    /// Client number `index` talking to `nodes`, starting at local time
    /// `now`. A `random` client picks its own operations from the start;
    /// otherwise it runs only what [`SimClient::submit`] gives it.
    pub fn new(
        index: usize,
        nodes: Vec<SocketAddr>,
        config: ClientConfig,
        seed: u64,
        random: bool,
        now: Instant,
    ) -> Self {
        let mut rng = fastrand::Rng::with_seed(seed);
        let current = rng.usize(..nodes.len().max(1));
        let start = now + Duration::from_micros(rng.u64(0..=20_000));
        Self {
            index,
            nodes,
            config,
            rng,
            leader: None,
            current,
            next_request: 0,
            next_value: 0,
            op: None,
            next_op_at: random.then_some(start),
            random,
            stopped: false,
            script: VecDeque::new(),
            session: None,
            seen: BTreeMap::new(),
            read_next: None,
            leases: Vec::new(),
            stats: ClientStats::default(),
            now,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// The client's number.
    pub fn index(&self) -> usize {
        self.index
    }

    /// What it did so far.
    pub fn stats(&self) -> ClientStats {
        self.stats
    }

    /// Its configuration, to adjust.
    pub fn config_mut(&mut self) -> &mut ClientConfig {
        &mut self.config
    }

    /// Its open session, if any.
    pub fn session(&self) -> Option<SessionId> {
        self.session.as_ref().map(|s| s.id)
    }

    /// Whether no operation is in progress or submitted.
    pub fn is_idle(&self) -> bool {
        self.op.is_none() && self.script.is_empty()
    }

    /// Forgets the leader it knows; rounds over every node start at node
    /// `index` from now on (until an answer or a timeout moves it).
    pub fn prefer(&mut self, index: usize) {
        self.leader = None;
        self.current = index % self.nodes.len();
    }

    /// Runs `planned` once the operation in progress (and those submitted
    /// before) ended.
    pub fn submit(&mut self, now: Instant, planned: Planned) {
        self.now = now;
        self.script.push_back(planned);
        if self.op.is_none() && self.next_op_at.is_none_or(|at| at > now) {
            self.next_op_at = Some(now);
        }
    }

    /// Starts no new operation: the one in progress runs to its end.
    pub fn stop(&mut self) {
        self.stopped = true;
        self.random = false;
        self.script.clear();
        if self.op.is_none() {
            self.next_op_at = None;
        }
    }

    // ----- actor plumbing --------------------------------------------------

    pub(super) fn handle_reply(
        &mut self,
        now: Instant,
        id: u64,
        result: Result<KvReply, ServerError>,
    ) {
        self.now = now;
        if let Some(session) = self.session.as_mut() {
            if session.keep_alive.as_ref().is_some_and(|a| a.id == id) {
                session.keep_alive = None;
                self.session_kept_alive(now, result);
                return;
            }
        }
        let Some(op) = self.op.as_mut() else { return };
        let Some(attempt) = op.waiting.take_if(|a| a.id == id) else {
            return;
        };
        if op.target.is_none() {
            self.current = attempt.node;
        }
        self.answered(now, attempt.node, result);
    }

    pub(super) fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        self.session_timers(now);
        if let Some(op) = self.op.as_mut() {
            if op.waiting.as_ref().is_some_and(|a| a.timeout <= now) {
                self.timed_out(now);
            } else if op.backoff_until.is_some_and(|at| at <= now) {
                op.backoff_until = None;
                op.target = if op.any_node { None } else { self.leader };
                self.start_round(now);
            }
        }
        if self.op.is_none() && self.next_op_at.is_some_and(|at| at <= now) {
            self.next_op_at = None;
            self.start_next(now);
        }
    }

    pub(super) fn next_timeout(&self) -> Option<Instant> {
        let op = self
            .op
            .as_ref()
            .and_then(|op| op.waiting.as_ref().map(|a| a.timeout).or(op.backoff_until));
        let idle = if self.op.is_none() {
            self.next_op_at
        } else {
            None
        };
        let session = self.session.as_ref().and_then(|s| match &s.keep_alive {
            Some(attempt) => Some(attempt.timeout),
            None if !self.stopped || self.op.is_some() => Some(s.keep_alive_at),
            None => None,
        });
        [op, idle, session].into_iter().flatten().min()
    }

    pub(super) fn poll_transmit(&mut self) -> Option<Transmit<Msg>> {
        self.transmits.pop_front()
    }

    pub(super) fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    // ----- operations ------------------------------------------------------

    /// Starts the next scripted or random operation.
    fn start_next(&mut self, now: Instant) {
        let job = match self.script.pop_front() {
            Some(Planned::Get(key)) => Job::Checked {
                key,
                call: Call::Get,
                guard: None,
            },
            Some(Planned::Put(key, value)) => Job::Checked {
                key,
                call: Call::Put(value),
                guard: None,
            },
            None if self.random && !self.stopped => self.random_job(),
            None => return,
        };
        self.start(now, job);
    }

    fn random_job(&mut self) -> Job {
        let keys = self.config.keys.max(1);
        if let Some(key) = self.read_next.take() {
            return Job::Checked {
                key,
                call: Call::Get,
                guard: None,
            };
        }
        let roll = self.rng.u32(..100);
        if self.config.lease_ops && roll < 6 {
            let job = match (self.leases.len(), self.rng.u8(..4)) {
                (0, _) | (1..=2, 0) => LeaseJob::Grant,
                (n, 1) => LeaseJob::KeepAlive(self.leases[self.rng.usize(..n)]),
                (n, 2) => LeaseJob::Revoke(self.leases[self.rng.usize(..n)]),
                (n, _) => LeaseJob::Attach(self.leases[self.rng.usize(..n)]),
            };
            return Job::Lease(job);
        }
        let key = self.rng.usize(..keys);
        match roll {
            // 0..=5 are lease operations when those are on.
            0..=13 => Job::AnyNodeRead(key),
            14..=39 => Job::Checked {
                key,
                call: Call::Get,
                guard: None,
            },
            40..=69 => Job::Checked {
                key,
                call: Call::Put(self.fresh_value()),
                guard: None,
            },
            70..=95 => {
                let new = self.fresh_value();
                let (expect, guard) = match self.seen.get(&key) {
                    Some(Seen {
                        value: Some(value),
                        mod_revision,
                    }) if self.rng.bool() => (Some(*value), Guard::ModRevision(*mod_revision)),
                    Some(Seen {
                        value: Some(value), ..
                    }) => (Some(*value), Guard::Value(*value)),
                    _ => (None, Guard::ModRevision(0)),
                };
                Job::Checked {
                    key,
                    call: Call::Cas { expect, new },
                    guard: Some(guard),
                }
            }
            _ => Job::Checked {
                key,
                call: Call::Delete,
                guard: None,
            },
        }
    }

    /// A value no client ever wrote before.
    fn fresh_value(&mut self) -> u64 {
        self.next_value += 1;
        (self.index as u64 + 1) * 1_000_000_000 + self.next_value
    }

    fn start(&mut self, now: Instant, job: Job) {
        let (command, request) = match &job {
            Job::Checked { key, call, guard } => {
                self.events.push_back(Event::Client(ClientEvent::Invoked {
                    key: *key,
                    call: call.clone(),
                }));
                checked_request(*key, call, *guard)
            }
            Job::Lease(lease) => self.lease_request(*lease),
            Job::AnyNodeRead(key) => (None, Some(read_request(*key, false))),
        };
        let any_node = matches!(job, Job::AnyNodeRead(_));
        let write = command.is_some();
        let opening = write && self.config.retry == Retry::Session && self.session.is_none();
        if !self.config.remember_leader {
            self.leader = None;
            self.current = self.rng.usize(..self.nodes.len());
        }
        self.op = Some(Op {
            job,
            command,
            request,
            any_node,
            deadline: now + self.config.retry_for,
            target: if any_node { None } else { self.leader },
            round: VecDeque::new(),
            waiting: None,
            backoff_until: None,
            pause: FIRST_PAUSE,
            maybe_applied: false,
            opening,
            seq: None,
        });
        self.start_round(now);
    }

    fn lease_request(&mut self, job: LeaseJob) -> (Option<Command>, Option<ClientOp>) {
        match job {
            LeaseJob::Grant => {
                let ttl_ms = self.rng.u64(1000..=4000);
                (
                    Some(Command::LeaseGrant {
                        id: LeaseId(0),
                        ttl_ms,
                    }),
                    None,
                )
            }
            LeaseJob::KeepAlive(id) => (None, Some(ClientOp::KeepAlive(id))),
            LeaseJob::Revoke(id) => (Some(Command::LeaseRevoke { id }), None),
            LeaseJob::Attach(id) => {
                let value = self.fresh_value();
                (
                    Some(Command::Put(PutRequest {
                        key: format!("lease/{}", self.index).into_bytes(),
                        value: encode_value(value),
                        lease: Some(id),
                        prev_kv: false,
                    })),
                    None,
                )
            }
        }
    }

    /// Every node, starting at `current`.
    fn order(&self) -> VecDeque<usize> {
        let n = self.nodes.len();
        (0..n).map(|i| (self.current + i) % n).collect()
    }

    /// A new round: the named leader, else every node in order.
    fn start_round(&mut self, now: Instant) {
        let order = self.order();
        let Some(op) = self.op.as_mut() else { return };
        op.round = match op
            .target
            .and_then(|t| self.nodes.iter().position(|&a| a == t))
        {
            Some(index) => VecDeque::from([index]),
            None => order,
        };
        self.send_next(now);
    }

    /// Sends to the next node of the round, or backs off if none is left.
    fn send_next(&mut self, now: Instant) {
        let Some(node) = self.op.as_mut().and_then(|op| op.round.pop_front()) else {
            self.retry_later(now);
            return;
        };
        let request = self.request_now();
        self.next_request += 1;
        let id = self.next_request;
        self.stats.attempts += 1;
        self.transmits.push_back(Transmit {
            to: self.nodes[node],
            msg: Msg::Request { id, op: request },
            reliable: true,
        });
        if let Some(op) = self.op.as_mut() {
            op.waiting = Some(Attempt {
                id,
                node,
                timeout: now + self.config.request_timeout,
            });
        }
    }

    /// The request this attempt sends, numbering a session write at its
    /// first send.
    fn request_now(&mut self) -> ClientOp {
        let ttl_ms = self.config.session_ttl.as_millis() as u64;
        let retry = self.config.retry;
        let session = self.session.as_mut();
        let Some(op) = self.op.as_mut() else {
            unreachable!("send_next runs with an operation in progress")
        };
        if op.opening {
            return ClientOp::OpenSession { ttl_ms };
        }
        match (&op.command, retry) {
            (None, _) => op
                .request
                .clone()
                .unwrap_or_else(|| unreachable!("a read carries its request")),
            (Some(command), Retry::WithoutSession) => ClientOp::Write(command.clone()),
            (Some(command), Retry::Session) => {
                let (session, seq) = match (op.seq, session) {
                    (Some(numbered), _) => numbered,
                    (None, Some(session)) => {
                        let seq = session.next_seq;
                        session.next_seq += 1;
                        op.seq = Some((session.id, seq));
                        (session.id, seq)
                    }
                    (None, None) => unreachable!("a session write waits for its session"),
                };
                // One write at a time: every earlier one ended (answered,
                // or given up and never sent again), so the server may
                // forget their results and refuse late copies.
                ClientOp::SessionWrite {
                    session,
                    seq,
                    acked: seq,
                    command: command.clone(),
                }
            }
        }
    }

    /// The attempt in progress got no answer in time.
    fn timed_out(&mut self, now: Instant) {
        self.stats.timeouts += 1;
        let Some(op) = self.op.as_mut() else { return };
        let Some(attempt) = op.waiting.take() else {
            return;
        };
        // A timeout is no proof that nothing was processed.
        if op.command.is_some() && !op.opening {
            op.maybe_applied = true;
        }
        // The leader went silent: forget it. The next round over every node
        // starts after the silent one.
        if op.target == Some(self.nodes[attempt.node]) {
            self.leader = None;
        }
        self.current = (attempt.node + 1) % self.nodes.len();
        if now >= op.deadline {
            self.give_up();
        } else {
            self.send_next(now);
        }
    }

    /// Backs off before a new round (at the leader known then, else over
    /// every node), or gives up when the pause would end past the budget.
    fn retry_later(&mut self, now: Instant) {
        let Some(op) = self.op.as_mut() else { return };
        if now + op.pause > op.deadline {
            self.give_up();
            return;
        }
        op.backoff_until = Some(now + op.pause);
        op.pause = (op.pause * 2).min(MAX_PAUSE);
    }

    /// A node announced it leads (the topology stream the real client
    /// follows). An attempt waiting on another node is abandoned, as
    /// possibly delivered, and sent to the new leader at once.
    pub(super) fn leader_moved(&mut self, now: Instant, leader: SocketAddr) {
        self.now = now;
        if !self.config.follow_leader {
            return;
        }
        self.leader = Some(leader);
        let Some(op) = self.op.as_mut().filter(|op| !op.any_node) else {
            return;
        };
        let waiting_elsewhere = op
            .waiting
            .as_ref()
            .is_some_and(|a| self.nodes[a.node] != leader);
        if !waiting_elsewhere {
            return;
        }
        op.waiting = None;
        if op.command.is_some() && !op.opening {
            op.maybe_applied = true;
        }
        op.target = Some(leader);
        self.start_round(now);
    }

    fn answered(&mut self, now: Instant, node: usize, result: Result<KvReply, ServerError>) {
        let Some(op) = self.op.as_mut() else { return };
        match result {
            Ok(KvReply::SessionOpened { id, ttl_ms }) if op.opening => {
                self.stats.sessions_opened += 1;
                op.opening = false;
                op.target = Some(self.nodes[node]);
                self.session = Some(Session {
                    id,
                    next_seq: 1,
                    keep_alive_at: now + Duration::from_millis(ttl_ms / 3),
                    keep_alive: None,
                });
                self.start_round(now);
            }
            Ok(reply) => self.finish_ok(now, reply),
            Err(ServerError::NotLeader {
                leader: Some((_, addr)),
            }) if op.target != Some(addr) => {
                op.target = Some(addr);
                self.leader = Some(addr);
                self.start_round(now);
            }
            Err(ServerError::NotLeader { .. } | ServerError::NotReady(_) | ServerError::Lost) => {
                self.retry_later(now)
            }
            Err(ServerError::LeaderChanged) => {
                if op.command.is_some() && !op.opening {
                    op.maybe_applied = true;
                }
                self.retry_later(now);
            }
            Err(ServerError::Kv(KvError::SessionExpired(id))) => {
                self.stats.sessions_expired += 1;
                if self.session.as_ref().is_some_and(|s| s.id == id) {
                    self.session = None;
                }
                if op.maybe_applied {
                    self.finish(Done::Unknown);
                } else {
                    // Certainly not applied: start over in a new session.
                    op.seq = None;
                    op.opening = true;
                    self.start_round(now);
                }
            }
            Err(ServerError::Kv(e @ (KvError::LeaseNotFound(_) | KvError::LeaseExists(_))))
                if matches!(op.job, Job::Lease(_)) =>
            {
                if let Job::Lease(
                    LeaseJob::KeepAlive(lease) | LeaseJob::Revoke(lease) | LeaseJob::Attach(lease),
                ) = op.job
                {
                    self.leases.retain(|l| *l != lease);
                }
                tracing::trace!(client = self.index, error = %e, "lease operation refused");
                self.finish_unchecked();
            }
            Err(e) => panic!(
                "client {} got an answer no correct server gives to {:?}: {e}",
                self.index, op.job
            ),
        }
    }

    /// An answer to the operation in progress.
    fn finish_ok(&mut self, now: Instant, reply: KvReply) {
        let Some(op) = self.op.as_ref() else { return };
        self.now = now;
        let job = op.job.clone();
        match job {
            Job::Lease(job) => {
                match (job, reply) {
                    (LeaseJob::Grant, KvReply::LeaseGranted { id, .. }) => self.leases.push(id),
                    (LeaseJob::Revoke(id), KvReply::LeaseRevoked { .. }) => {
                        self.leases.retain(|l| *l != id)
                    }
                    (LeaseJob::KeepAlive(_), KvReply::KeptAlive { .. })
                    | (LeaseJob::Attach(_), KvReply::Put(..)) => {}
                    (job, reply) => {
                        panic!("client {}: {job:?} answered with {reply:?}", self.index)
                    }
                }
                self.finish_unchecked();
            }
            Job::AnyNodeRead(key) => {
                let KvReply::Range(response, revision) = reply else {
                    panic!(
                        "client {}: a read of k{key} answered with {reply:?}",
                        self.index
                    )
                };
                let value = response.kvs.first().map(|kv| decode_value(&kv.value));
                self.events.push_back(Event::Client(ClientEvent::ReadAt {
                    key,
                    value,
                    revision,
                }));
                self.stats.any_node_reads += 1;
                self.finish_unchecked();
            }
            Job::Checked { key, call, .. } => {
                let (ret, wrote) = match (&call, reply) {
                    (Call::Get, KvReply::Range(response, _)) => {
                        let kv = response.kvs.first();
                        let value = kv.map(|kv| decode_value(&kv.value));
                        self.seen.insert(
                            key,
                            Seen {
                                value,
                                mod_revision: kv.map_or(0, |kv| kv.mod_revision),
                            },
                        );
                        (Ret::Get(value), None)
                    }
                    (Call::Put(value), KvReply::Put(_, revision)) => {
                        self.seen.insert(
                            key,
                            Seen {
                                value: Some(*value),
                                mod_revision: revision,
                            },
                        );
                        (Ret::Put, Some((*value, revision)))
                    }
                    (Call::Cas { new, .. }, KvReply::Txn(txn)) => {
                        if txn.succeeded {
                            self.seen.insert(
                                key,
                                Seen {
                                    value: Some(*new),
                                    mod_revision: txn.revision,
                                },
                            );
                            (Ret::Cas(true), Some((*new, txn.revision)))
                        } else {
                            self.seen.remove(&key);
                            self.read_next = Some(key);
                            (Ret::Cas(false), None)
                        }
                    }
                    (Call::Delete, KvReply::Delete(..)) => {
                        self.seen.insert(
                            key,
                            Seen {
                                value: None,
                                mod_revision: 0,
                            },
                        );
                        (Ret::Delete, None)
                    }
                    (call, reply) => panic!(
                        "client {}: {call:?} on k{key} answered with {reply:?}",
                        self.index
                    ),
                };
                self.finish(Done::Ok { ret, wrote });
            }
        }
    }

    /// The retry budget ran out.
    fn give_up(&mut self) {
        let Some(op) = self.op.as_ref() else { return };
        let done = if op.maybe_applied {
            Done::Unknown
        } else {
            Done::Failed
        };
        match op.job {
            Job::Checked { .. } => self.finish(done),
            Job::Lease(_) | Job::AnyNodeRead(_) => self.finish_unchecked(),
        }
    }

    /// Ends the checked operation in progress with `done`.
    fn finish(&mut self, done: Done) {
        let Some(op) = self.op.take() else { return };
        if let Job::Checked { key, .. } = op.job {
            self.stats.ops += 1;
            if op.command.is_some() {
                self.stats.writes += 1;
            }
            match done {
                Done::Ok { .. } => {}
                Done::Failed => self.stats.failed += 1,
                Done::Unknown => {
                    self.stats.unknown_writes += 1;
                    self.seen.remove(&key);
                }
            }
            self.events
                .push_back(Event::Client(ClientEvent::Completed(done)));
        }
        self.schedule_next();
    }

    /// Ends the unchecked operation in progress.
    fn finish_unchecked(&mut self) {
        if let Some(Op {
            job: Job::Lease(_), ..
        }) = self.op.take()
        {
            self.stats.lease_ops += 1;
        }
        self.schedule_next();
    }

    fn schedule_next(&mut self) {
        let now = self.now;
        self.next_op_at = if !self.script.is_empty() {
            Some(now)
        } else if self.random && !self.stopped {
            let think = self.config.think_max.as_micros() as u64;
            Some(now + Duration::from_micros(self.rng.u64(0..=think)))
        } else {
            None
        };
    }

    // ----- session keep-alive ------------------------------------------------

    fn session_timers(&mut self, now: Instant) {
        let timeout = self.config.request_timeout;
        let leader = self.leader;
        let fallback = self.nodes[self.current];
        let busy = !self.stopped || self.op.is_some();
        let Some(session) = self.session.as_mut() else {
            return;
        };
        if session
            .keep_alive
            .as_ref()
            .is_some_and(|a| a.timeout <= now)
        {
            session.keep_alive = None;
            session.keep_alive_at = now + Duration::from_millis(50);
            self.stats.timeouts += 1;
        }
        if session.keep_alive.is_none() && session.keep_alive_at <= now && busy {
            let to = leader.unwrap_or(fallback);
            self.next_request += 1;
            let id = self.next_request;
            self.stats.attempts += 1;
            self.transmits.push_back(Transmit {
                to,
                msg: Msg::Request {
                    id,
                    op: ClientOp::SessionKeepAlive(session.id),
                },
                reliable: true,
            });
            let node = self.nodes.iter().position(|&a| a == to).unwrap_or(0);
            session.keep_alive = Some(Attempt {
                id,
                node,
                timeout: now + timeout,
            });
        }
    }

    fn session_kept_alive(&mut self, now: Instant, result: Result<KvReply, ServerError>) {
        let ttl = self.config.session_ttl;
        let Some(session) = self.session.as_mut() else {
            return;
        };
        match result {
            Ok(_) => session.keep_alive_at = now + ttl / 3,
            Err(ServerError::NotLeader {
                leader: Some((_, addr)),
            }) => {
                self.leader = Some(addr);
                session.keep_alive_at = now + Duration::from_millis(20);
            }
            Err(ServerError::Kv(KvError::SessionExpired(_))) => {
                self.stats.sessions_expired += 1;
                self.session = None;
            }
            Err(_) => {
                self.leader = None;
                self.current = (self.current + 1) % self.nodes.len();
                session.keep_alive_at = now + Duration::from_millis(100);
            }
        }
    }
}

/// The request (or write command) of a checked operation.
fn checked_request(
    key: usize,
    call: &Call,
    guard: Option<Guard>,
) -> (Option<Command>, Option<ClientOp>) {
    let number = key;
    let key = key_name(key).into_bytes();
    match call {
        Call::Get => (None, Some(read_request(number, true))),
        Call::Put(value) => (
            Some(Command::Put(PutRequest {
                key,
                value: encode_value(*value),
                lease: None,
                prev_kv: false,
            })),
            None,
        ),
        Call::Cas { expect, new } => {
            let target = match (guard, *expect) {
                (Some(Guard::ModRevision(revision)), _) => CompareTarget::ModRevision(revision),
                (Some(Guard::Value(value)), _) | (None, Some(value)) => {
                    CompareTarget::Value(encode_value(value))
                }
                (None, None) => CompareTarget::ModRevision(0),
            };
            let put = RequestOp::put(&key, &encode_value(*new));
            (
                Some(Command::Txn(Txn {
                    compare: vec![Compare {
                        key,
                        target,
                        op: CompareOp::Equal,
                    }],
                    success: vec![put],
                    failure: Vec::new(),
                })),
                None,
            )
        }
        Call::Delete => (
            Some(Command::Delete(DeleteRequest {
                range: KeyRange::Key(key),
                prev_kv: false,
            })),
            None,
        ),
    }
}

/// A read of checked key number `key`.
fn read_request(key: usize, linearizable: bool) -> ClientOp {
    ClientOp::Read {
        request: RangeRequest {
            range: KeyRange::Key(key_name(key).into_bytes()),
            revision: 0,
            limit: 0,
            keys_only: false,
            count_only: false,
        },
        linearizable,
    }
}
