//! The whole DKV server on the simulator, with clients, checked for
//! linearizability.
//!
//! Each cluster node is a [`KvNode`]: the election core and the key-value
//! [`Server`](clustron_dkv::core::server::Server) (log, MVCC store, leases,
//! sessions) wired as `clustron-dkv`'s drivers wire them. Each client is a
//! [`SimClient`], an actor of its own that sends requests as simulator
//! messages and retries like the real client. Both live in one simulator
//! ([`KvActor`]), so faults hit clients' requests as they hit replication.
//!
//! ```text
//!  SimClient ──Request{id, ClientOp}──► KvNode ──Reply{id, result} / Leader──► SimClient
//!     │ Invoked / Completed / ReadAt       │ Committed, Elected events
//!     ▼                                    ▼
//!  Checks::after_step (every step): History (virtual ns), log invariants
//!  (one leader per epoch, commits never change, commit within the durable
//!  log), store invariants (applied within commit, replicas agree at every
//!  applied index, no replica finds itself diverged)
//!  Cluster::finish: stop clients, heal, converge, then: logs and stores
//!  equal, every acknowledged write in the store at its revision, every
//!  serializable read saw a state that existed, each value applied once
//!  (sessions), and linearizability::check
//! ```
//!
//! Faults ([`Cluster`]): crashes with lossy disks, pauses (SIGSTOP: timers
//! late on resume), partitions among nodes (clients reach every node),
//! answers lost on their way to a client, loss, duplication and
//! reordering, clock drift.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use clustron_tests::kv_sim::{Cluster, KvSetup, Retry};
//! use clustron_tests::replication::LogLoss;
//! use clustron_tests::sim::NetConfig;
//!
//! let mut cluster = Cluster::new(7, KvSetup::new(3, 2, Retry::Session), NetConfig::lan());
//! cluster.run_for(Duration::from_secs(1));
//! cluster.pause(0);
//! cluster.run_for(Duration::from_secs(2));
//! let finished = cluster.finish(Duration::from_secs(30), LogLoss::UnsyncedLost);
//! assert!(finished.verdict.is_ok());
//! assert!(finished.clients.ops > 0);
//! ```

mod client;
mod node;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clustron_dkv::core::server::{ClientOp, ServerConfig, ServerError};
use clustron_dkv::kv::{KeyRange, KvReply, RangeRequest};
use clustron_election::{
    Config as ElectionConfig, Core, Message as ElectionMessage, Output as ElectionOutput,
};
use clustron_log::core::{Config as LogConfig, Entry, Message as LogMessage, Replica};

pub use self::client::{
    decode_value, encode_value, key_name, ClientConfig, ClientEvent, ClientStats, Done, Planned,
    Retry, SimClient,
};
pub use self::node::{KvNode, NodeStorage};
use crate::election::addr;
use crate::linearizability::{self, History, Outcome, Report, Violation};
use crate::replication::{refresh_views, Invariants, LogDisk, LogLoss, LogNode, NodeSetup};
use crate::sim::{Actor, NetConfig, NodeId, Sim, Transmit};

/// A message between nodes and clients.
#[derive(Debug, Clone)]
pub enum Msg {
    /// Election traffic.
    Election(ElectionMessage),
    /// Replication traffic.
    Log(LogMessage),
    /// A client's request.
    Request {
        /// The client's id for it.
        id: u64,
        /// What it asks.
        op: ClientOp,
    },
    /// A node's answer.
    Reply {
        /// The request's id.
        id: u64,
        /// The answer.
        result: Result<KvReply, ServerError>,
    },
    /// A node was elected: what the topology stream tells clients.
    Leader {
        /// Its address.
        leader: SocketAddr,
    },
}

/// What nodes and clients report.
#[derive(Debug, Clone)]
pub enum Event {
    /// An election output other than persist and send.
    Election(ElectionOutput),
    /// A node learned entries committed.
    Committed {
        /// The node's incarnation.
        incarnation: u64,
        /// Its previous commit index.
        previous: u64,
        /// Entries `previous + 1 ..= upto`.
        entries: Vec<Entry>,
    },
    /// A new leader gave up catching up.
    CannotLead(u64),
    /// A node's state covers the log up to `index` from a snapshot
    /// (restored at start or installed): it reports commits after it.
    SnapshotBase {
        /// The node's incarnation.
        incarnation: u64,
        /// The snapshot's index.
        index: u64,
    },
    /// A client's operation started or ended.
    Client(ClientEvent),
}

/// A simulated machine: a cluster node or a client.
#[derive(Debug)]
pub enum KvActor {
    /// A node.
    Node(Box<KvNode>),
    /// A client.
    Client(Box<SimClient>),
}

impl KvActor {
    /// The node, if this is one.
    pub fn node(&self) -> Option<&KvNode> {
        match self {
            KvActor::Node(node) => Some(node),
            KvActor::Client(_) => None,
        }
    }

    /// The client, if this is one.
    pub fn client(&self) -> Option<&SimClient> {
        match self {
            KvActor::Client(client) => Some(client),
            KvActor::Node(_) => None,
        }
    }

    /// The client, mutably, if this is one.
    pub fn client_mut(&mut self) -> Option<&mut SimClient> {
        match self {
            KvActor::Client(client) => Some(client),
            KvActor::Node(_) => None,
        }
    }
}

/// Bytes a client request or reply takes on the wire, roughly (for the
/// simulator's statistics only: the server's request types have no wire
/// encoding of their own).
const CLIENT_MESSAGE_BYTES: usize = 128;

impl Actor for KvActor {
    type Message = Msg;
    type Event = Event;

    fn handle_message(&mut self, now: Instant, from: SocketAddr, msg: Msg) {
        match (self, msg) {
            (KvActor::Node(node), Msg::Election(msg)) => node.election_message(now, from, msg),
            (KvActor::Node(node), Msg::Log(msg)) => node.log_message(now, from, msg),
            (KvActor::Node(node), Msg::Request { id, op }) => {
                node.client_request(now, from, id, op)
            }
            (KvActor::Client(client), Msg::Reply { id, result }) => {
                client.handle_reply(now, id, result)
            }
            (KvActor::Client(client), Msg::Leader { leader }) => client.leader_moved(now, leader),
            (actor, msg) => panic!("{msg:?} reached the wrong kind of actor: {actor:?}"),
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        match self {
            KvActor::Node(node) => node.timeout(now),
            KvActor::Client(client) => client.handle_timeout(now),
        }
    }

    fn poll_transmit(&mut self) -> Option<Transmit<Msg>> {
        match self {
            KvActor::Node(node) => node.poll_transmit(),
            KvActor::Client(client) => client.poll_transmit(),
        }
    }

    fn poll_event(&mut self) -> Option<Event> {
        match self {
            KvActor::Node(node) => node.poll_event(),
            KvActor::Client(client) => client.poll_event(),
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        match self {
            KvActor::Node(node) => node.next_timeout(),
            KvActor::Client(client) => client.next_timeout(),
        }
    }

    fn wire_size(msg: &Msg) -> usize {
        let body = match msg {
            Msg::Election(m) => m.encoded_len(),
            Msg::Log(m) => postcard::to_allocvec(m).map(|b| b.len()).unwrap_or(0),
            Msg::Request { .. } | Msg::Reply { .. } | Msg::Leader { .. } => CLIENT_MESSAGE_BYTES,
        };
        body + crate::swim::DATAGRAM_OVERHEAD
    }
}

impl LogNode for KvActor {
    fn log_election(&self) -> Option<&Core> {
        self.node().map(KvNode::election)
    }

    fn log_election_mut(&mut self) -> Option<&mut Core> {
        match self {
            KvActor::Node(node) => Some(node.election_mut()),
            KvActor::Client(_) => None,
        }
    }

    fn log_replica(&self) -> Option<&Replica> {
        self.node().map(|n| n.server().replica())
    }

    fn log_disk(&self) -> Option<&LogDisk> {
        self.node().map(KvNode::disk)
    }

    fn log_reported_commit(&self) -> u64 {
        self.node().map_or(0, KvNode::reported_commit)
    }

    fn log_durable_snapshot(&self) -> u64 {
        self.node()
            .and_then(KvNode::snapshot)
            .map_or(0, |(meta, _)| meta.index)
    }
}

/// Everything a simulated cluster is built from.
#[derive(Debug, Clone)]
pub struct KvSetup {
    /// Nodes, voters, election and log tuning.
    pub nodes: NodeSetup,
    /// The key-value server's tuning (its `log` field is replaced by
    /// `nodes.log`).
    pub server: ServerConfig,
    /// How many clients.
    pub clients: usize,
    /// How they behave.
    pub client: ClientConfig,
    /// Whether clients pick random operations from the start (else they
    /// only run what the test submits).
    pub random_clients: bool,
    /// Whether every fourth client forgets the leader between operations
    /// (see [`ClientConfig::remember_leader`]).
    pub fresh_clients: bool,
}

impl KvSetup {
    /// `nodes` voters with LAN tuning and `clients` random clients with
    /// [`ClientConfig::new`]`(retry)`, every fourth one forgetting the
    /// leader between operations.
    pub fn new(nodes: usize, clients: usize, retry: Retry) -> Self {
        Self {
            nodes: NodeSetup {
                election: ElectionConfig::lan(),
                log: LogConfig::lan(),
                voters: nodes,
                nodes,
            },
            // Checkpoints often, so replicas compare digests many times a run.
            // Snapshots often, so crashes, partitions and laggards meet
            // snapshots, compaction and installs many times a run.
            server: ServerConfig {
                checkpoint_every: 64,
                snapshot_entries: 50,
                ..ServerConfig::default()
            },
            clients,
            client: ClientConfig::new(retry),
            random_clients: true,
            fresh_clients: true,
        }
    }

    /// The key-value server's configuration, with the log's.
    pub fn server_config(&self) -> ServerConfig {
        ServerConfig {
            log: self.nodes.log.clone(),
            ..self.server.clone()
        }
    }
}

/// A write a client saw acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// The client.
    pub client: usize,
    /// Key number.
    pub key: usize,
    /// The value written.
    pub value: u64,
    /// The revision the write applied at.
    pub revision: u64,
}

/// What a serializable read saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadAt {
    /// The client.
    pub client: usize,
    /// Key number.
    pub key: usize,
    /// The value seen, `None` if absent.
    pub value: Option<u64>,
    /// The revision it was read at.
    pub revision: u64,
}

/// Everything checked after every step, and what the run recorded.
#[derive(Debug)]
pub struct Checks {
    /// The log's invariants.
    pub log: Invariants,
    /// The state machine's invariants.
    pub stores: StoreInvariants,
    /// Every checked operation, with virtual times in nanoseconds.
    pub history: History,
    /// Acknowledged writes.
    pub acked: Vec<Ack>,
    /// What serializable reads saw.
    pub reads_at: Vec<ReadAt>,
    /// Cluster nodes are sim ids `0..nodes`; clients follow.
    nodes: usize,
    /// Client → its operation in progress in the history and its key.
    in_flight: BTreeMap<usize, (usize, usize)>,
}

impl Checks {
    fn new(nodes: usize) -> Self {
        Self {
            log: Invariants::default(),
            stores: StoreInvariants::default(),
            history: History::new(),
            acked: Vec::new(),
            reads_at: Vec::new(),
            nodes,
            in_flight: BTreeMap::new(),
        }
    }

    /// Records what happened in the last step, then checks every
    /// invariant.
    pub fn after_step(&mut self, sim: &mut Sim<KvActor>) {
        let seed = sim.seed();
        for (at, id, event) in sim.take_events() {
            match event {
                Event::Committed {
                    incarnation,
                    previous,
                    entries,
                } => self.log.record_commits_and_check_they_never_change(
                    id,
                    incarnation,
                    previous,
                    entries,
                    seed,
                ),
                Event::Election(ElectionOutput::Elected { .. }) => self.log.elections += 1,
                Event::Election(_) => {}
                Event::CannotLead(_) => self.log.gave_up += 1,
                Event::SnapshotBase { incarnation, index } => {
                    self.stores.snapshots += 1;
                    self.log.record_snapshot_base(id, incarnation, index);
                }
                Event::Client(event) => self.record(id - self.nodes, at, event),
            }
        }
        self.log.check_after_step(sim);
        self.stores.check(sim, self.nodes);
    }

    fn record(&mut self, client: usize, at: Duration, event: ClientEvent) {
        let at = u64::try_from(at.as_nanos()).unwrap_or(u64::MAX);
        match event {
            ClientEvent::Invoked { key, call } => {
                let op = self.history.invoke(client as u64, &key_name(key), call, at);
                let previous = self.in_flight.insert(client, (op, key));
                assert!(
                    previous.is_none(),
                    "client {client} started an operation before ending the last"
                );
            }
            ClientEvent::Completed(done) => {
                let (op, key) = self
                    .in_flight
                    .remove(&client)
                    .unwrap_or_else(|| panic!("client {client} ended an operation never started"));
                let outcome = match done {
                    Done::Ok { ret, wrote } => {
                        if let Some((value, revision)) = wrote {
                            self.acked.push(Ack {
                                client,
                                key,
                                value,
                                revision,
                            });
                        }
                        Outcome::Ok { ret, completed: at }
                    }
                    Done::Failed => Outcome::Failed,
                    Done::Unknown => Outcome::Unknown,
                };
                self.history.complete(op, outcome);
            }
            ClientEvent::ReadAt {
                key,
                value,
                revision,
            } => self.reads_at.push(ReadAt {
                client,
                key,
                value,
                revision,
            }),
        }
    }
}

/// Invariants of the replicated state machine, checked after every step,
/// one function each.
#[derive(Debug, Default)]
pub struct StoreInvariants {
    /// A digest of the state at each applied index, from the first node
    /// seen there: (node, digest).
    states: BTreeMap<u64, (NodeId, u64)>,
    /// A digest of the state at each applied index, from the first node
    /// seen there that applied every entry from the first (no snapshot).
    replayed: BTreeMap<u64, (NodeId, u64)>,
    /// The applied index each node had when last looked at, with its
    /// incarnation.
    looked: BTreeMap<NodeId, (u64, u64)>,
    /// Snapshot restores and installs seen.
    pub snapshots: usize,
    /// States from a snapshot compared with a full replay's.
    pub compared_with_replay: usize,
}

impl StoreInvariants {
    /// Runs every check.
    pub fn check(&mut self, sim: &Sim<KvActor>, nodes: usize) {
        self.check_applied_never_exceeds_commit(sim, nodes);
        self.check_applied_never_moves_back(sim, nodes);
        self.check_replicas_agree_at_every_applied_index(sim, nodes);
        self.check_no_replica_finds_itself_diverged(sim, nodes);
        self.check_a_node_that_lost_acknowledged_entries_neither_votes_nor_leads(sim, nodes);
        self.check_a_node_whose_disk_failed_neither_votes_nor_leads(sim, nodes);
    }

    /// A node whose log reopened below its high-water mark stays withdrawn
    /// from the election, and leads nothing, until it has caught up.
    pub fn check_a_node_that_lost_acknowledged_entries_neither_votes_nor_leads(
        &self,
        sim: &Sim<KvActor>,
        nodes: usize,
    ) {
        for id in 0..nodes {
            let Some(node) = sim.node(id).and_then(KvActor::node) else {
                continue;
            };
            if node.lost().is_none() {
                continue;
            }
            assert!(
                node.election().is_withdrawn()
                    && node.election().lease().is_none()
                    && node.server().replica().leading().is_none(),
                "node {id} lost acknowledged entries (mark {:?}) yet takes part in the \
                 election (seed {})",
                node.lost(),
                sim.seed()
            );
        }
    }

    /// A node whose log disk failed is withdrawn and leads nothing.
    pub fn check_a_node_whose_disk_failed_neither_votes_nor_leads(
        &self,
        sim: &Sim<KvActor>,
        nodes: usize,
    ) {
        for id in 0..nodes {
            let Some(node) = sim.node(id).and_then(KvActor::node) else {
                continue;
            };
            if !node.stopped() {
                continue;
            }
            assert!(
                node.election().is_withdrawn() && node.election().lease().is_none(),
                "node {id}'s disk failed yet it takes part in the election (seed {})",
                sim.seed()
            );
        }
    }

    /// No node's own divergence check (the leader's checkpoints of its
    /// state digest) fires.
    pub fn check_no_replica_finds_itself_diverged(&self, sim: &Sim<KvActor>, nodes: usize) {
        for id in 0..nodes {
            let Some(node) = sim.node(id).and_then(KvActor::node) else {
                continue;
            };
            if let Some(divergence) = node.server().diverged() {
                panic!(
                    "node {id} reports its state diverged from the leader's: {divergence:?} \
                     (seed {})",
                    sim.seed()
                );
            }
        }
    }

    /// A node applies only committed entries.
    pub fn check_applied_never_exceeds_commit(&self, sim: &Sim<KvActor>, nodes: usize) {
        for id in 0..nodes {
            let Some(node) = sim.node(id).and_then(KvActor::node) else {
                continue;
            };
            let server = node.server();
            assert!(
                server.applied() <= server.replica().commit_index(),
                "node {id} applied {} beyond its commit index {} (seed {})",
                server.applied(),
                server.replica().commit_index(),
                sim.seed()
            );
        }
    }

    /// Within one incarnation, a node's applied index never decreases: a
    /// snapshot install never takes it back.
    pub fn check_applied_never_moves_back(&self, sim: &Sim<KvActor>, nodes: usize) {
        for id in 0..nodes {
            let Some(node) = sim.node(id).and_then(KvActor::node) else {
                continue;
            };
            if let Some(&(incarnation, applied)) = self.looked.get(&id) {
                assert!(
                    incarnation != node.incarnation() || node.server().applied() >= applied,
                    "node {id}'s applied index went back from {applied} to {} (seed {})",
                    node.server().applied(),
                    sim.seed()
                );
            }
        }
    }

    /// Two nodes (or two incarnations of one) that applied the same prefix
    /// of the log hold the same state: keys, leases, sessions, revision.
    /// In particular a node whose state came from a snapshot (restored
    /// after a restart, or installed) holds the state that replaying the
    /// committed log from the first entry gave a node that did so.
    pub fn check_replicas_agree_at_every_applied_index(
        &mut self,
        sim: &Sim<KvActor>,
        nodes: usize,
    ) {
        for id in 0..nodes {
            let Some(node) = sim.node(id).and_then(KvActor::node) else {
                continue;
            };
            let applied = node.server().applied();
            let now = (node.incarnation(), applied);
            if self.looked.insert(id, now) == Some(now) || applied == 0 {
                continue;
            }
            let digest = state_digest(node);
            if node.state_from_snapshot() {
                if let Some(&(first, replayed)) = self.replayed.get(&applied) {
                    self.compared_with_replay += 1;
                    assert_eq!(
                        replayed,
                        digest,
                        "node {id}'s state from a snapshot differs at applied index {applied} from \
                         node {first}'s, which replayed the log from the start (seed {})",
                        sim.seed()
                    );
                }
            } else {
                self.replayed.entry(applied).or_insert((id, digest));
            }
            let (first, known) = *self.states.entry(applied).or_insert((id, digest));
            assert_eq!(
                known,
                digest,
                "nodes {first} and {id} hold different states after applying {applied} entries \
                 (seed {})",
                sim.seed()
            );
        }
    }
}

/// FNV-1a of the node's state machine: current keys with their counters,
/// leases, sessions, revision and compaction point (not the history, which
/// grows with every write).
fn state_digest(node: &KvNode) -> u64 {
    let store = node.server().store();
    let everything = RangeRequest {
        range: KeyRange::Prefix(Vec::new()),
        revision: 0,
        limit: 0,
        keys_only: false,
        count_only: false,
    };
    let kvs = store.range(&everything).map(|r| r.kvs).unwrap_or_default();
    let leases: Vec<_> = store.leases().collect();
    let state = (
        store.revision(),
        store.compacted(),
        kvs,
        leases,
        store.sessions(),
    );
    let bytes = postcard::to_allocvec(&state).unwrap_or_default();
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A simulated DKV cluster with clients.
pub struct Cluster {
    /// The simulator: nodes `0..setup.nodes.nodes`, then the clients.
    pub sim: Sim<KvActor>,
    /// How it is built.
    pub setup: KvSetup,
    /// Invariants and the history.
    pub checks: Checks,
    paused: BTreeSet<NodeId>,
    crashed: BTreeMap<NodeId, NodeStorage>,
    incarnations: Vec<u64>,
    /// Restarts that found the log below its high-water mark.
    lost_tails: usize,
}

/// What [`Cluster::finish`] found.
#[derive(Debug)]
pub struct Finished {
    /// The linearizability verdict.
    pub verdict: Result<Report, Violation>,
    /// The clients' figures, summed.
    pub clients: ClientStats,
    /// Values written (acknowledged or not) that the store applied more
    /// than once.
    pub applied_twice: Vec<(String, u64)>,
    /// Acknowledged writes checked against the final store.
    pub acked: usize,
    /// Serializable reads checked against the final store.
    pub reads_at: usize,
    /// Elections won.
    pub elections: usize,
}

impl Cluster {
    /// A cluster built from `setup`, on a network behaving as `net`.
    pub fn new(seed: u64, setup: KvSetup, net: NetConfig) -> Self {
        let mut sim = Sim::new(seed, net);
        let n = setup.nodes.nodes;
        for id in 0..n {
            let seed = sim.rng().u64(..);
            let node = KvNode::new(&setup, id, 0, NodeStorage::default(), seed, sim.now());
            sim.add_node(addr(id), KvActor::Node(Box::new(node)));
        }
        let nodes: Vec<SocketAddr> = (0..n).map(addr).collect();
        for c in 0..setup.clients {
            let seed = sim.rng().u64(..);
            let mut config = setup.client.clone();
            // Every fourth client starts each operation afresh, like the
            // CLI: no leader known, a random node first.
            if setup.fresh_clients && c % 4 == 3 {
                config.remember_leader = false;
            }
            let client = SimClient::new(
                c,
                nodes.clone(),
                config,
                seed,
                setup.random_clients,
                sim.now(),
            );
            sim.add_node(addr(n + c), KvActor::Client(Box::new(client)));
        }
        let mut cluster = Self {
            sim,
            checks: Checks::new(n),
            paused: BTreeSet::new(),
            crashed: BTreeMap::new(),
            incarnations: vec![0; n],
            lost_tails: 0,
            setup,
        };
        cluster.refresh_views();
        cluster
    }

    /// Number of cluster nodes.
    pub fn nodes(&self) -> usize {
        self.setup.nodes.nodes
    }

    /// Node `id`, unless crashed.
    pub fn node(&self, id: NodeId) -> Option<&KvNode> {
        self.sim.node(id).and_then(KvActor::node)
    }

    /// Client number `c`.
    pub fn client(&self, c: usize) -> &SimClient {
        self.sim
            .node(self.nodes() + c)
            .and_then(KvActor::client)
            .unwrap_or_else(|| panic!("no client {c}"))
    }

    /// Calls `f` on client `c` with its local time.
    pub fn with_client<R>(&mut self, c: usize, f: impl FnOnce(&mut SimClient, Instant) -> R) -> R {
        let id = self.nodes() + c;
        self.sim
            .with_node(id, |actor, now| {
                let client = actor
                    .client_mut()
                    .unwrap_or_else(|| panic!("no client {c}"));
                f(client, now)
            })
            .unwrap_or_else(|| panic!("client {c} is down"))
    }

    /// Asks client `c` to run `planned` next.
    pub fn submit(&mut self, c: usize, planned: Planned) {
        self.with_client(c, |client, now| client.submit(now, planned));
    }

    /// Whether node `id` runs (not crashed, not paused).
    pub fn is_up(&self, id: NodeId) -> bool {
        self.sim.is_up(id) && !self.paused.contains(&id)
    }

    /// Gives every running node the view membership would settle on.
    pub fn refresh_views(&mut self) {
        let paused = &self.paused;
        refresh_views(&mut self.sim, &self.setup.nodes, |sim, id| {
            sim.is_up(id) && !paused.contains(&id)
        });
    }

    /// Splits the nodes into `groups` (nodes not listed form one more
    /// group); clients still reach every node. Replaces an earlier split
    /// (and dropped answers); views are not refreshed.
    pub fn partition(&mut self, groups: &[&[NodeId]]) {
        self.sim.heal();
        let n = self.nodes();
        let group_of = |id: NodeId| groups.iter().position(|g| g.contains(&id));
        for a in 0..n {
            for b in 0..n {
                if a != b && group_of(a) != group_of(b) {
                    self.sim.block(a, b);
                }
            }
        }
    }

    /// Drops every answer node `id` sends to client `c` from now on (until
    /// [`Cluster::heal`]): requests are still processed.
    pub fn drop_replies(&mut self, id: NodeId, c: usize) {
        let client = self.nodes() + c;
        self.sim.block(id, client);
    }

    /// Removes every partition and dropped link.
    pub fn heal(&mut self) {
        self.sim.heal();
    }

    /// Kills node `id`, keeping its disks.
    pub fn crash(&mut self, id: NodeId) {
        self.paused.remove(&id);
        if let Some(KvActor::Node(node)) = self.sim.crash(id) {
            self.crashed.insert(id, node.into_storage());
        }
    }

    /// Restarts node `id` from what its disks kept after `loss` (crashing it
    /// first if it runs). With [`LogLoss::TailDamaged`] the node loses
    /// synced entries below its high-water mark and must stay withdrawn
    /// from the election until it has them again.
    pub fn restart(&mut self, id: NodeId, loss: LogLoss) {
        if self.node(id).is_some() {
            self.crash(id);
        }
        let storage = self.crashed.remove(&id).unwrap_or_default();
        let promises = storage.promises.after_crash(loss == LogLoss::Kept);
        let recovered = storage.disk.after_loss(loss, self.sim.rng());
        if loss != LogLoss::TailDamaged {
            self.checks
                .log
                .check_a_crash_keeps_synced_committed_entries(
                    id,
                    &storage.disk,
                    &recovered,
                    self.sim.seed(),
                );
        }
        self.incarnations[id] += 1;
        let seed = self.sim.rng().u64(..);
        let node = KvNode::new(
            &self.setup,
            id,
            self.incarnations[id],
            NodeStorage {
                promises,
                disk: recovered,
                mark: storage.mark,
                snapshot: storage.snapshot,
            },
            seed,
            self.sim.local_now(id),
        );
        if node.lost().is_some() {
            self.lost_tails += 1;
        }
        self.sim.restart(id, KvActor::Node(Box::new(node)));
    }

    /// How many restarts found the log below its high-water mark (and so
    /// started withdrawn).
    pub fn lost_tails(&self) -> usize {
        self.lost_tails
    }

    /// Node `id`'s log disk fails: its next write fails and its key-value
    /// side stops, as the driver's does (see [`KvNode::fail_disk`]). A
    /// restart brings it back with what was durable.
    pub fn fail_disk(&mut self, id: NodeId) {
        self.sim.with_node(id, |actor, _| {
            if let KvActor::Node(node) = actor {
                node.fail_disk();
            }
        });
    }

    /// Whether node `id` runs with its key-value side stopped.
    pub fn is_stopped(&self, id: NodeId) -> bool {
        self.node(id).is_some_and(KvNode::stopped)
    }

    /// Freezes node `id` (SIGSTOP).
    pub fn pause(&mut self, id: NodeId) {
        if self.node(id).is_some() {
            self.paused.insert(id);
            self.sim.pause(id);
        }
    }

    /// Unfreezes node `id` (SIGCONT): what arrived meanwhile is handled
    /// first, then its overdue timers fire.
    pub fn resume(&mut self, id: NodeId) {
        self.paused.remove(&id);
        self.sim.resume(id);
    }

    /// Whether node `id` is paused.
    pub fn is_paused(&self, id: NodeId) -> bool {
        self.paused.contains(&id)
    }

    /// Sets node `id`'s clock rate.
    pub fn set_drift(&mut self, id: NodeId, rate: f64) {
        self.sim.set_drift(id, rate);
    }

    /// Runs for `d`, checking everything after every step.
    pub fn run_for(&mut self, d: Duration) {
        let checks = &mut self.checks;
        let (nodes, paused) = (self.setup.nodes.nodes, &self.paused);
        self.sim.run_for(d, |sim| {
            serve_snapshot_pulls(sim, nodes, paused);
            checks.after_step(sim);
        });
    }

    /// Runs until `cond` (checked every 5 ms of virtual time) or `limit`.
    pub fn run_until(&mut self, limit: Duration, mut cond: impl FnMut(&Self) -> bool) -> bool {
        let deadline = self.sim.elapsed() + limit;
        loop {
            if cond(self) {
                return true;
            }
            let now = self.sim.elapsed();
            if now >= deadline {
                return false;
            }
            self.run_for(Duration::from_millis(5).min(deadline - now));
        }
    }

    /// Runs until `cond` holds, checked after every single step, or
    /// `limit`: for faults that must strike at an exact moment.
    pub fn run_until_step(
        &mut self,
        limit: Duration,
        mut cond: impl FnMut(&Sim<KvActor>) -> bool,
    ) -> bool {
        let checks = &mut self.checks;
        let (nodes, paused) = (self.setup.nodes.nodes, &self.paused);
        self.sim.run_until(limit, |sim| {
            serve_snapshot_pulls(sim, nodes, paused);
            checks.after_step(sim);
            cond(sim)
        })
    }

    /// The running node serving writes in the newest epoch.
    pub fn leader(&self) -> Option<NodeId> {
        (0..self.nodes())
            .filter(|&id| self.is_up(id))
            .filter_map(|id| Some((self.node(id)?.server().replica().leading()?, id)))
            .max()
            .map(|(_, id)| id)
    }

    /// Every node runs, a leader serves, and every node holds, has
    /// committed and has applied the leader's whole log.
    pub fn converged(&self) -> bool {
        let Some(leader) = self.leader().and_then(|l| self.node(l)) else {
            return false;
        };
        let reference = leader.server().replica();
        let last = reference.last_index();
        (0..self.nodes()).all(|id| {
            self.is_up(id)
                && self.node(id).is_some_and(|n| {
                    let r = n.server().replica();
                    // Entries both still hold (before, snapshots hold the
                    // state, which the stores' checks compare).
                    let from = r.snapshot().index.max(reference.snapshot().index) + 1;
                    r.commit_index() == last
                        && r.last_index() == last
                        && n.server().applied() == last
                        && r.entries(from, last) == reference.entries(from, last)
                })
        })
    }

    /// Every client is between operations.
    pub fn clients_idle(&self) -> bool {
        (0..self.setup.clients).all(|c| self.client(c).is_idle())
    }

    /// The clients' figures, summed.
    pub fn client_stats(&self) -> ClientStats {
        let mut sum = ClientStats::default();
        for c in 0..self.setup.clients {
            let s = self.client(c).stats();
            sum.ops += s.ops;
            sum.writes += s.writes;
            sum.unknown_writes += s.unknown_writes;
            sum.failed += s.failed;
            sum.attempts += s.attempts;
            sum.timeouts += s.timeouts;
            sum.sessions_opened += s.sessions_opened;
            sum.sessions_expired += s.sessions_expired;
            sum.lease_ops += s.lease_ops;
            sum.any_node_reads += s.any_node_reads;
        }
        sum
    }

    /// Stops the clients and every fault (heal, resume, restart with `loss`
    /// what crashed or has a failed disk), waits up to `limit` for the
    /// clients to finish and the nodes to converge, checks the final state,
    /// and checks the history.
    ///
    /// # Panics
    ///
    /// If the cluster does not converge, or the final state breaks an
    /// invariant: logs or stores differ, an acknowledged write is missing,
    /// or (with sessions) a value was applied twice. A history that is not
    /// linearizable is returned in [`Finished::verdict`], not a panic.
    pub fn finish(&mut self, limit: Duration, loss: LogLoss) -> Finished {
        for c in 0..self.setup.clients {
            self.with_client(c, |client, _| client.stop());
        }
        self.heal();
        for id in 0..self.nodes() {
            if self.node(id).is_none_or(KvNode::disk_failed) {
                self.restart(id, loss);
            }
            self.resume(id);
        }
        self.refresh_views();
        let done = self.run_until(limit, |c| c.clients_idle() && c.converged());
        if !done {
            panic!(
                "no convergence within {limit:?} of the faults stopping (seed {}):\n{}",
                self.sim.seed(),
                self.describe()
            );
        }
        self.run_for(Duration::from_millis(1));
        let seed = self.sim.seed();
        self.checks.log.check_committed_prefixes_agree(&self.sim);
        let leader = self.leader().unwrap_or(0);
        let Some(reference) = self.node(leader) else {
            panic!("the leader vanished (seed {seed})");
        };
        let replica = reference.server().replica();
        self.checks
            .log
            .check_the_final_log_after_a_snapshot_holds_every_committed_entry(
                replica.snapshot().index,
                replica.entries(1, replica.last_index()),
                seed,
            );
        self.check_every_store_is_the_same();
        let acked = self.check_every_acknowledged_write_is_in_the_store();
        self.check_every_serializable_read_saw_a_state_that_existed();
        let applied_twice = self.values_applied_twice();
        if self.setup.client.retry == Retry::Session {
            assert!(
                applied_twice.is_empty(),
                "values applied twice in sessions: {applied_twice:?} (seed {seed})"
            );
        }
        let operations = self.checks.history.operations();
        Finished {
            verdict: linearizability::check(&operations),
            clients: self.client_stats(),
            applied_twice,
            acked,
            reads_at: self.checks.reads_at.len(),
            elections: self.checks.log.elections,
        }
    }

    /// Every node that is up and has applied as far as the leader holds the
    /// same store (history, leases and sessions included).
    pub fn check_every_store_is_the_same(&self) {
        let Some(leader) = self.leader().and_then(|l| self.node(l)) else {
            return;
        };
        let applied = leader.server().applied();
        for id in 0..self.nodes() {
            let Some(node) = self.node(id) else { continue };
            if node.server().applied() != applied {
                continue;
            }
            assert!(
                node.server().store() == leader.server().store(),
                "node {id}'s store differs from the leader's at applied index {applied} (seed {})",
                self.sim.seed()
            );
        }
    }

    /// Every acknowledged write is in the final store, at the revision it
    /// was acknowledged with. Returns how many were checked.
    pub fn check_every_acknowledged_write_is_in_the_store(&self) -> usize {
        let Some(leader) = self.leader().and_then(|l| self.node(l)) else {
            return 0;
        };
        let store = leader.server().store();
        let mut checked = 0;
        for ack in &self.checks.acked {
            if ack.revision <= store.compacted() {
                continue;
            }
            let request = RangeRequest {
                range: KeyRange::Key(key_name(ack.key).into_bytes()),
                revision: ack.revision,
                limit: 0,
                keys_only: false,
                count_only: false,
            };
            let found = store
                .range(&request)
                .ok()
                .and_then(|r| r.kvs.first().cloned());
            let ok = found.as_ref().is_some_and(|kv| {
                kv.mod_revision == ack.revision && kv.value == encode_value(ack.value)
            });
            assert!(
                ok,
                "acknowledged write lost: client {} wrote {} to {} at revision {}, the store has \
                 {found:?} there (seed {})",
                ack.client,
                ack.value,
                key_name(ack.key),
                ack.revision,
                self.sim.seed()
            );
            checked += 1;
        }
        checked
    }

    /// Every serializable read saw the value the key had at the revision it
    /// was read at (possibly an old one, never one that did not exist).
    pub fn check_every_serializable_read_saw_a_state_that_existed(&self) {
        let Some(leader) = self.leader().and_then(|l| self.node(l)) else {
            return;
        };
        let store = leader.server().store();
        for read in &self.checks.reads_at {
            if read.revision != 0 && read.revision <= store.compacted() {
                continue;
            }
            let then = if read.revision == 0 {
                // Nothing was written at revision 0: every key was absent.
                None
            } else {
                let request = RangeRequest {
                    range: KeyRange::Key(key_name(read.key).into_bytes()),
                    revision: read.revision,
                    limit: 0,
                    keys_only: false,
                    count_only: false,
                };
                store
                    .range(&request)
                    .ok()
                    .and_then(|r| r.kvs.first().map(|kv| decode_value(&kv.value)))
            };
            assert_eq!(
                read.value,
                then,
                "client {} read {:?} from {} at revision {}, which held {then:?} (seed {})",
                read.client,
                read.value,
                key_name(read.key),
                read.revision,
                self.sim.seed()
            );
        }
    }

    /// Values the final store's history shows written more than once to a
    /// checked key (each client writes each value once).
    pub fn values_applied_twice(&self) -> Vec<(String, u64)> {
        let Some(leader) = self.leader().and_then(|l| self.node(l)) else {
            return Vec::new();
        };
        let store = leader.server().store();
        let mut twice = Vec::new();
        for key in 0..self.setup.client.keys {
            let range = KeyRange::Key(key_name(key).into_bytes());
            let events = store
                .events_since(&range, store.compacted() + 1)
                .unwrap_or_default();
            let mut seen = BTreeSet::new();
            for event in events {
                if event.kind != clustron_dkv::kv::EventKind::Put {
                    continue;
                }
                let value = decode_value(&event.kv.value);
                if !seen.insert(value) {
                    twice.push((key_name(key), value));
                }
            }
        }
        twice
    }

    /// One line per node, for failure messages.
    pub fn describe(&self) -> String {
        (0..self.nodes())
            .map(|id| match self.node(id) {
                Some(n) => {
                    let r = n.server().replica();
                    format!(
                        "node {id}{}{}{}{}: leading {:?} epoch {} snapshot {} last {} commit {} \
                         applied {} election leader {:?}",
                        if self.is_paused(id) { " (paused)" } else { "" },
                        if n.election().is_withdrawn() {
                            " (withdrawn)"
                        } else {
                            ""
                        },
                        if n.stopped() { " (disk failed)" } else { "" },
                        match n.lost() {
                            Some(mark) => format!(" (below its mark {mark:?})"),
                            None => String::new(),
                        },
                        r.leading(),
                        r.epoch(),
                        r.snapshot().index,
                        r.last_index(),
                        r.commit_index(),
                        n.server().applied(),
                        n.election().leader()
                    )
                }
                None => format!("node {id}: down"),
            })
            .chain((0..self.setup.clients).map(|c| {
                let client = self.client(c);
                format!("client {c}: idle {} {:?}", client.is_idle(), client.stats())
            }))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Serves the snapshot pulls the nodes asked for (`transfer::pull`): a
/// node that can reach the source (both running, not paused, no partition
/// between them) gets a copy of the source's durable snapshot if it covers
/// the index asked for; otherwise the pull fails and the replica asks
/// again later.
fn serve_snapshot_pulls(sim: &mut Sim<KvActor>, nodes: usize, paused: &BTreeSet<NodeId>) {
    for id in 0..nodes {
        if paused.contains(&id) {
            continue;
        }
        let Some(Some((from, index))) = sim.node_mut(id).and_then(|a| match a {
            KvActor::Node(node) => Some(node.take_pull()),
            KvActor::Client(_) => None,
        }) else {
            continue;
        };
        let Some(source) = (0..nodes).find(|&s| addr(s) == from) else {
            continue;
        };
        if !sim.is_up(source) || paused.contains(&source) || !sim.reachable(id, source) {
            continue;
        }
        let Some((meta, state)) = sim
            .node(source)
            .and_then(KvActor::node)
            .and_then(KvNode::snapshot)
            .filter(|(meta, _)| meta.index >= index)
            .cloned()
        else {
            continue;
        };
        sim.with_node(id, |actor, now| {
            if let KvActor::Node(node) = actor {
                node.snapshot_pulled(now, meta, state);
            }
        });
    }
}
