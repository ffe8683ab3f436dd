//! Server tests on a hand-driven three-node network: writes answered after
//! commit and durable, linearizable reads only where they are safe, lease
//! expiry as a replicated revoke, watches on followers, and writes lost to a
//! leader change answered as lost.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::time::Duration;

use super::*;
use crate::kv::{EventKind, KeyRange, PutRequest};

struct Net {
    servers: Vec<Server>,
    addrs: Vec<SocketAddr>,
    names: Vec<NodeName>,
    now: Instant,
    /// (to, from, message)
    queue: Vec<(usize, SocketAddr, Message)>,
    /// Nodes cut off from everyone.
    cut: Vec<bool>,
    replies: Vec<(usize, RequestId, Result<Reply, ServerError>)>,
    watched: Vec<(usize, Delivery)>,
    /// Each node's outputs in order, as (is a sync, reply id).
    trace: Vec<Vec<(bool, Option<RequestId>)>>,
}

impl Net {
    fn new() -> Self {
        Self::with(ServerConfig::default())
    }

    fn with(config: ServerConfig) -> Self {
        Self::with_each(|_| config.clone())
    }

    /// Each node with its own configuration.
    fn with_each(config: impl Fn(usize) -> ServerConfig) -> Self {
        let names: Vec<NodeName> = ["n1", "n2", "n3"]
            .iter()
            .map(|n| NodeName::new(*n).unwrap())
            .collect();
        let addrs: Vec<SocketAddr> = (0..3)
            .map(|i| SocketAddr::from(([127, 0, 0, 1], 7000 + i)))
            .collect();
        let now = Instant::now();
        let voters: Vec<_> = names.iter().cloned().zip(addrs.iter().copied()).collect();
        let servers = names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                Server::new(
                    config(i),
                    n.clone(),
                    voters.clone(),
                    [],
                    Recovered::default(),
                    now,
                )
                .unwrap()
            })
            .collect();
        Self {
            servers,
            addrs,
            names,
            now,
            queue: Vec::new(),
            cut: vec![false; 3],
            replies: Vec::new(),
            watched: Vec::new(),
            trace: vec![Vec::new(); 3],
        }
    }

    /// `leader` wins `epoch` (with everyone's summaries), the others follow.
    fn elect(&mut self, leader: usize, epoch: u64) {
        let summaries: Vec<(NodeName, Vec<u8>)> = (0..3)
            .filter(|i| !self.cut[*i] || *i == leader)
            .map(|i| {
                (
                    self.names[i].clone(),
                    self.servers[i].replica().summary().encode(),
                )
            })
            .collect();
        for i in 0..3 {
            if i != leader && !self.cut[i] {
                self.servers[i].fence(epoch);
            }
        }
        let now = self.now;
        self.servers[leader].fence(epoch);
        self.servers[leader].elected(now, epoch, summaries, now + Duration::from_secs(3600));
        for i in 0..3 {
            if i != leader && !self.cut[i] {
                let (name, addr) = (self.names[leader].clone(), self.addrs[leader]);
                self.servers[i].follow(now, name, addr, epoch);
            }
        }
        self.settle();
    }

    /// Performs outputs and delivers messages until nothing moves.
    fn settle(&mut self) {
        for _ in 0..1000 {
            let mut moved = false;
            for i in 0..3 {
                while let Some(output) = self.servers[i].poll_output() {
                    moved = true;
                    match output {
                        ServerOutput::Log(LogOutput::Send { to, msg }) => {
                            let to = self.addrs.iter().position(|a| *a == to).unwrap();
                            if !self.cut[i] && !self.cut[to] {
                                self.queue.push((to, self.addrs[i], msg));
                            }
                        }
                        ServerOutput::Log(LogOutput::Sync) => self.trace[i].push((true, None)),
                        ServerOutput::Log(LogOutput::PullSnapshot { from, .. }) => {
                            // A transfer that works: the source's state as
                            // it is now, through its bytes.
                            let from = self.addrs.iter().position(|a| *a == from).unwrap();
                            if !self.cut[i] && !self.cut[from] {
                                let (meta, state) = self.servers[from].snapshot();
                                let state = MachineState::decode(&state.encode()).unwrap();
                                let now = self.now;
                                assert!(self.servers[i].install_snapshot(now, meta, state));
                            }
                        }
                        ServerOutput::Log(_) => {}
                        ServerOutput::Reply { id, result } => {
                            self.trace[i].push((false, Some(id)));
                            self.replies.push((i, id, result));
                        }
                        ServerOutput::Watch(d) => self.watched.push((i, d)),
                        ServerOutput::WatchCancelled(_) => {}
                    }
                }
            }
            for (to, from, msg) in std::mem::take(&mut self.queue) {
                moved = true;
                let now = self.now;
                self.servers[to].handle_message(now, from, msg);
            }
            if !moved {
                return;
            }
        }
        panic!("the network never settled");
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        let now = self.now;
        for s in &mut self.servers {
            if s.poll_timeout().is_some_and(|t| t <= now) {
                s.handle_timeout(now);
            }
        }
        self.settle();
    }

    fn request(&mut self, node: usize, id: RequestId, op: ClientOp) {
        let now = self.now;
        self.servers[node].request(now, id, op);
        self.settle();
    }

    fn reply(&self, id: RequestId) -> &Result<Reply, ServerError> {
        &self.replies.iter().find(|r| r.1 == id).unwrap().2
    }
}

fn put(key: &str, value: &str) -> ClientOp {
    ClientOp::Write(Command::Put(PutRequest {
        key: key.into(),
        value: value.into(),
        lease: None,
        prev_kv: false,
    }))
}

fn get(key: &str, linearizable: bool) -> ClientOp {
    ClientOp::Read {
        request: RangeRequest {
            range: KeyRange::Key(key.into()),
            revision: 0,
            limit: 0,
            keys_only: false,
            count_only: false,
        },
        linearizable,
    }
}

fn value(result: &Result<Reply, ServerError>) -> Option<Vec<u8>> {
    match result {
        Ok(Reply::Range(r, _)) => r.kvs.first().map(|kv| kv.value.clone()),
        other => panic!("not a read: {other:?}"),
    }
}

#[test]
fn a_write_is_answered_after_commit_and_its_sync_and_read_everywhere() {
    let mut net = Net::new();
    net.elect(0, 1);
    net.request(0, 1, put("k", "v"));
    assert!(
        matches!(net.reply(1), Ok(Reply::Put(_, 1))),
        "{:?}",
        net.reply(1)
    );
    // The reply came after a sync on the leader.
    let at = net.trace[0].iter().position(|t| t.1 == Some(1)).unwrap();
    assert!(
        net.trace[0][..at].iter().any(|t| t.0),
        "replied before any sync"
    );

    net.request(0, 2, get("k", true));
    assert_eq!(value(net.reply(2)), Some(b"v".to_vec()));
    // Followers apply once the leader tells them the commit index.
    net.advance(Duration::from_millis(100));
    net.request(1, 3, get("k", false));
    assert_eq!(value(net.reply(3)), Some(b"v".to_vec()));
    // A follower neither writes nor serves linearizable reads; it names the
    // leader.
    net.request(1, 4, put("k", "w"));
    net.request(1, 5, get("k", true));
    for id in [4, 5] {
        match net.reply(id) {
            Err(ServerError::NotLeader {
                leader: Some((name, _)),
            }) => assert_eq!(name.as_str(), "n1"),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn linearizable_reads_wait_for_the_leaders_own_first_entry() {
    let mut net = Net::new();
    net.elect(0, 1);
    net.request(0, 1, put("k", "v1"));
    // n2 wins epoch 2 but its followers are cut off before its no-op
    // commits: its commit index may be behind, so it must not answer.
    net.cut[2] = true;
    net.cut[0] = true;
    net.elect(1, 2);
    net.request(1, 2, get("k", true));
    assert!(
        matches!(net.reply(2), Err(ServerError::NotReady(_))),
        "{:?}",
        net.reply(2)
    );
    net.cut[2] = false;
    let (name, addr) = (net.names[1].clone(), net.addrs[1]);
    let now = net.now;
    net.servers[2].fence(2);
    net.servers[2].follow(now, name, addr, 2);
    for _ in 0..3 {
        net.advance(Duration::from_millis(100));
    }
    net.request(1, 3, get("k", true));
    assert_eq!(value(net.reply(3)), Some(b"v1".to_vec()));
}

#[test]
fn linearizable_reads_need_a_valid_lease() {
    let mut net = Net::new();
    net.elect(0, 1);
    net.request(0, 1, put("k", "v"));
    // The lease ran out (the election did not renew it).
    let now = net.now;
    net.servers[0].lease_renewed(1, now);
    net.request(0, 2, get("k", true));
    assert!(matches!(net.reply(2), Err(ServerError::NotReady(_))));
    // Serializable reads still work.
    net.request(0, 3, get("k", false));
    assert_eq!(value(net.reply(3)), Some(b"v".to_vec()));
    net.servers[0].lease_renewed(1, now + Duration::from_secs(10));
    net.request(0, 4, get("k", true));
    assert_eq!(value(net.reply(4)), Some(b"v".to_vec()));
}

#[test]
fn an_expired_lease_is_revoked_through_the_log_and_its_keys_go_everywhere() {
    let mut net = Net::new();
    net.elect(0, 1);
    let watch = net.servers[2].watch(WatchRequest::new(KeyRange::Prefix(b"svc/".to_vec())));
    net.request(
        0,
        1,
        ClientOp::Write(Command::LeaseGrant {
            id: LeaseId(0),
            ttl_ms: 1000,
        }),
    );
    let Ok(Reply::LeaseGranted {
        id: lease,
        ttl_ms: 1000,
    }) = net.reply(1).clone()
    else {
        panic!("{:?}", net.reply(1))
    };
    assert_ne!(lease, LeaseId(0));
    net.request(
        0,
        2,
        ClientOp::Write(Command::Put(PutRequest {
            key: b"svc/a".to_vec(),
            value: b"up".to_vec(),
            lease: Some(lease),
            prev_kv: false,
        })),
    );
    assert!(net.reply(2).is_ok());
    // Kept alive at 800 ms: still there at 1.5 s.
    net.advance(Duration::from_millis(800));
    net.request(0, 3, ClientOp::KeepAlive(lease));
    assert_eq!(net.reply(3), &Ok(Reply::KeptAlive { ttl_ms: 1000 }));
    net.request(1, 4, ClientOp::KeepAlive(lease));
    assert!(matches!(net.reply(4), Err(ServerError::NotLeader { .. })));
    for _ in 0..7 {
        net.advance(Duration::from_millis(100));
    }
    net.request(0, 5, get("svc/a", true));
    assert_eq!(value(net.reply(5)), Some(b"up".to_vec()));
    // Not kept alive: gone after its TTL, on every node, and the follower's
    // watcher saw the put then the delete.
    for _ in 0..5 {
        net.advance(Duration::from_millis(100));
    }
    net.advance(Duration::from_millis(100));
    for node in 0..3 {
        let id = 10 + node as u64;
        net.request(node, id, get("svc/a", false));
        assert_eq!(value(net.reply(id)), None, "node {node}");
    }
    let kinds: Vec<EventKind> = net
        .watched
        .iter()
        .filter(|(node, d)| *node == 2 && d.id == watch)
        .flat_map(|(_, d)| d.events.iter().map(|e| e.kind))
        .collect();
    assert_eq!(kinds, [EventKind::Put, EventKind::Delete]);
    net.request(0, 20, ClientOp::KeepAlive(lease));
    assert!(matches!(
        net.reply(20),
        Err(ServerError::Kv(KvError::LeaseNotFound(_)))
    ));
}

#[test]
fn a_leader_fenced_by_a_newer_epoch_leaves_expired_leases_alone_instead_of_spinning() {
    let mut net = Net::new();
    net.elect(0, 1);
    net.request(
        0,
        1,
        ClientOp::Write(Command::LeaseGrant {
            id: LeaseId(0),
            ttl_ms: 1000,
        }),
    );
    assert!(net.reply(1).is_ok());
    // Node 0 promised a newer epoch; its election has not stepped it down
    // yet. Its lease expires meanwhile: the revoke cannot be proposed, and
    // the server must not ask to be woken again at once.
    net.servers[0].fence(2);
    let later = net.now + Duration::from_millis(1500);
    net.servers[0].handle_timeout(later);
    assert!(
        net.servers[0].poll_timeout().is_none_or(|t| t > later),
        "asks for a timeout at {:?} again",
        net.servers[0].poll_timeout().map(|t| t - net.now)
    );
}

#[test]
fn a_write_replaced_by_a_newer_leader_is_never_applied_and_its_client_is_told_at_once() {
    let mut net = Net::new();
    net.elect(0, 1);
    net.request(0, 1, put("a", "1"));
    assert!(net.reply(1).is_ok());
    // n1 is cut off; its write cannot commit.
    net.cut[0] = true;
    net.request(0, 2, put("a", "from-the-old-leader"));
    assert!(net.replies.iter().all(|r| r.1 != 2));
    // Its lease runs out: the client learns at once that the outcome is
    // unknown (it retries in its session elsewhere).
    net.servers[0].step_down(1);
    net.settle();
    assert_eq!(net.reply(2), &Err(ServerError::LeaderChanged));
    // n2 is elected by n2 and n3 and writes at the same index.
    net.elect(1, 2);
    net.request(1, 3, put("a", "from-the-new-leader"));
    assert!(net.reply(3).is_ok());
    // n1 comes back and follows: its write is answered lost, never applied.
    net.cut[0] = false;
    let (name, addr) = (net.names[1].clone(), net.addrs[1]);
    let now = net.now;
    net.servers[0].fence(2);
    net.servers[0].follow(now, name, addr, 2);
    for _ in 0..5 {
        net.advance(Duration::from_millis(100));
    }
    net.request(0, 4, get("a", false));
    assert_eq!(value(net.reply(4)), Some(b"from-the-new-leader".to_vec()));
}

#[test]
fn refused_commands_are_answered_with_the_store_error_on_every_path() {
    let mut net = Net::new();
    net.elect(0, 1);
    net.request(0, 1, put("", "empty key"));
    assert!(matches!(
        net.reply(1),
        Err(ServerError::Kv(KvError::KeyTooLarge { .. }))
    ));
    let big = "x".repeat(2 << 20);
    net.request(0, 2, put("k", &big));
    assert!(matches!(
        net.reply(2),
        Err(ServerError::Kv(KvError::ValueTooLarge { .. }))
    ));
    // Values each within the limit, together over the log's entry limit.
    let half = "x".repeat(400 << 10);
    let txn = crate::kv::Txn {
        compare: vec![],
        success: vec![
            crate::kv::RequestOp::put(b"a", half.as_bytes()),
            crate::kv::RequestOp::put(b"b", half.as_bytes()),
        ],
        failure: vec![],
    };
    net.request(0, 3, ClientOp::Write(Command::Txn(txn)));
    assert!(matches!(net.reply(3), Err(ServerError::TooLarge { .. })));
}

#[test]
fn the_leader_compacts_history_beyond_what_it_retains_on_every_replica() {
    let mut net = Net::with(ServerConfig {
        retain_revisions: 10,
        ..ServerConfig::default()
    });
    net.elect(0, 1);
    for i in 0..14 {
        net.request(0, i, put("k", &i.to_string()));
    }
    assert!(net.servers.iter().all(|s| s.store().compacted() == 0));
    // The 15th revision crosses retain + retain/2.
    net.request(0, 100, put("k", "15"));
    net.advance(Duration::from_millis(100));
    for s in &net.servers {
        assert_eq!(s.store().compacted(), 5, "{}", s.replica().name());
    }
    // History within the retained window is still readable.
    let mut old = RangeRequest {
        range: KeyRange::Key(b"k".to_vec()),
        revision: 5,
        limit: 0,
        keys_only: false,
        count_only: false,
    };
    net.request(
        1,
        101,
        ClientOp::Read {
            request: old.clone(),
            linearizable: false,
        },
    );
    assert_eq!(value(net.reply(101)), Some(b"4".to_vec()));
    old.revision = 4;
    net.request(
        1,
        102,
        ClientOp::Read {
            request: old,
            linearizable: false,
        },
    );
    assert!(matches!(
        net.reply(102),
        Err(ServerError::Kv(KvError::Compacted { .. }))
    ));
}

/// Every replica applies a compaction between two inputs: one that frees
/// thousands of revisions at once stalls them all (4 ms for 5,000, the put
/// p99). History is freed in steps of at most `COMPACTION_STEP`, and still
/// kept within its bound.
#[test]
fn history_is_compacted_in_bounded_steps() {
    let retain = 4 * COMPACTION_STEP;
    let mut net = Net::with(ServerConfig {
        retain_revisions: retain,
        ..ServerConfig::default()
    });
    net.elect(0, 1);
    let mut seen = vec![0; net.servers.len()];
    for i in 0..3 * retain {
        net.request(0, i, put(&format!("k{}", i % 50), "v"));
        net.advance(Duration::from_millis(1));
        for (s, seen) in net.servers.iter().zip(&mut seen) {
            let compacted = s.store().compacted();
            assert!(
                compacted - *seen <= COMPACTION_STEP,
                "{} compacted {} revisions at once",
                s.replica().name(),
                compacted - *seen
            );
            *seen = compacted;
            let kept = s.store().revision() - compacted;
            assert!(
                kept <= retain + 2 * COMPACTION_STEP,
                "{kept} revisions kept"
            );
        }
    }
    assert!(seen.iter().all(|&c| c >= retain), "{seen:?}");
}

#[test]
fn the_leader_bounds_history_by_bytes_keeping_the_newest_thousand_revisions() {
    // A value rewritten over and over (a set kept with compare-and-set, as
    // the nemesis's set clients do) made 100k revisions of history 170 MB.
    let bound = 64 << 10;
    let mut net = Net::with(ServerConfig {
        retain_revisions: 100_000,
        retain_bytes: bound,
        ..ServerConfig::default()
    });
    net.elect(0, 1);
    let value = "v".repeat(100);
    let writes = 4 * MIN_HISTORY_REVISIONS;
    for i in 0..writes {
        net.request(0, i, put("k", &value));
        net.advance(Duration::from_millis(1));
    }
    net.advance(Duration::from_millis(100));
    for s in &net.servers {
        let store = s.store();
        assert!(
            store.compacted() > 0,
            "{}: never compacted",
            s.replica().name()
        );
        // Everything beyond the bound and half again is freed, but never
        // the newest thousand revisions.
        assert!(
            store.history_bytes() < bound + bound / 2 + 101 * MIN_HISTORY_REVISIONS,
            "{}: {} bytes of history",
            s.replica().name(),
            store.history_bytes()
        );
        assert!(store.revision() - store.compacted() >= MIN_HISTORY_REVISIONS);
    }
    // Live values never count: a big store with no history is not compacted.
    let mut net = Net::with(ServerConfig {
        retain_bytes: bound,
        ..ServerConfig::default()
    });
    net.elect(0, 1);
    for i in 0..3 * MIN_HISTORY_REVISIONS {
        net.request(0, i, put(&format!("k{i}"), &value));
        net.advance(Duration::from_millis(1));
    }
    net.advance(Duration::from_millis(100));
    assert!(net.servers.iter().all(|s| s.store().compacted() == 0));
}

mod any_request {
    //! Any sequence of client requests, however malformed (empty or huge
    //! keys, huge values, future or compacted revisions, reversed ranges,
    //! unknown leases, oversized transactions), gets exactly one answer each
    //! and never panics the server.

    use proptest::prelude::*;

    use super::*;
    use crate::kv::{Compare, CompareOp, CompareTarget, DeleteRequest, RequestOp, Txn};

    fn bytes() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            4 => proptest::collection::vec(any::<u8>(), 0..8),
            1 => (0usize..3).prop_map(|k| vec![b'k'; [0, 4097, 600 * 1024][k]]),
        ]
    }

    fn range() -> impl Strategy<Value = KeyRange> {
        prop_oneof![
            bytes().prop_map(KeyRange::Key),
            bytes().prop_map(KeyRange::Prefix),
            (bytes(), bytes()).prop_map(|(start, end)| KeyRange::Range { start, end }),
        ]
    }

    fn op() -> impl Strategy<Value = ClientOp> {
        let rev = prop_oneof![Just(0u64), 0u64..50, Just(u64::MAX)];
        prop_oneof![
            (range(), rev.clone(), any::<u64>(), any::<bool>()).prop_map(
                |(range, revision, limit, linearizable)| {
                    ClientOp::Read {
                        request: RangeRequest {
                            range,
                            revision,
                            limit,
                            keys_only: false,
                            count_only: false,
                        },
                        linearizable,
                    }
                }
            ),
            (bytes(), bytes(), proptest::option::of(0u64..4)).prop_map(|(key, value, lease)| {
                ClientOp::Write(Command::Put(PutRequest {
                    key,
                    value,
                    lease: lease.map(LeaseId),
                    prev_kv: true,
                }))
            }),
            range().prop_map(|range| ClientOp::Write(Command::Delete(DeleteRequest {
                range,
                prev_kv: true
            }))),
            (bytes(), rev.clone(), 0usize..200).prop_map(|(key, r, n)| ClientOp::Write(
                Command::Txn(Txn {
                    compare: vec![Compare {
                        key: key.clone(),
                        target: CompareTarget::ModRevision(r),
                        op: CompareOp::Greater
                    }],
                    success: (0..n)
                        .map(|i| RequestOp::put(&[key.as_slice(), &[i as u8]].concat(), b"v"))
                        .collect(),
                    failure: vec![RequestOp::delete(&key)],
                })
            )),
            (0u64..4, any::<u64>()).prop_map(|(id, ttl_ms)| ClientOp::Write(Command::LeaseGrant {
                id: LeaseId(id),
                ttl_ms
            })),
            (0u64..4).prop_map(|id| ClientOp::Write(Command::LeaseRevoke { id: LeaseId(id) })),
            (0u64..4).prop_map(|id| ClientOp::KeepAlive(LeaseId(id))),
            rev.prop_map(|revision| ClientOp::Write(Command::Compact { revision })),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn every_request_gets_one_answer_and_nothing_panics(ops in proptest::collection::vec(op(), 1..40)) {
            let me = NodeName::new("n1").unwrap();
            let addr: SocketAddr = "127.0.0.1:7000".parse().unwrap();
            let mut now = Instant::now();
            let mut server = Server::new(
                ServerConfig { retain_revisions: 5, ..ServerConfig::default() },
                me.clone(), [(me, addr)], [], Recovered::default(), now,
            ).unwrap();
            server.elected(now, 1, vec![], now + Duration::from_secs(3600));
            while server.poll_output().is_some() {}
            let mut answered = std::collections::BTreeMap::new();
            for (id, op) in ops.into_iter().enumerate() {
                now += Duration::from_millis(10);
                server.request(now, id as u64, op);
                if server.poll_timeout().is_some_and(|t| t <= now) {
                    server.handle_timeout(now);
                }
                while let Some(output) = server.poll_output() {
                    if let ServerOutput::Reply { id, .. } = output {
                        *answered.entry(id).or_insert(0) += 1;
                    }
                }
                prop_assert_eq!(answered.get(&(id as u64)), Some(&1), "request {} not answered once", id);
            }
            prop_assert!(answered.values().all(|n| *n == 1));
        }
    }
}

fn in_session(session: SessionId, seq: u64, acked: u64, op: ClientOp) -> ClientOp {
    let ClientOp::Write(command) = op else {
        panic!("not a write: {op:?}")
    };
    ClientOp::SessionWrite {
        session,
        seq,
        acked,
        command,
    }
}

fn open_session(net: &mut Net, node: usize, id: RequestId, ttl_ms: u64) -> SessionId {
    net.request(node, id, ClientOp::OpenSession { ttl_ms });
    match net.reply(id) {
        Ok(Reply::SessionOpened { id, ttl_ms: t }) if *t == ttl_ms => *id,
        other => panic!("{other:?}"),
    }
}

fn version(net: &mut Net, node: usize, id: RequestId, key: &str) -> u64 {
    net.request(node, id, get(key, false));
    match net.reply(id) {
        Ok(Reply::Range(r, _)) => r.kvs.first().map_or(0, |kv| kv.version),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_write_retried_in_its_session_at_a_new_leader_is_answered_with_its_first_result() {
    let mut net = Net::new();
    net.elect(0, 1);
    let session = open_session(&mut net, 0, 1, 60_000);
    net.request(0, 2, in_session(session, 1, 1, put("probe", "once")));
    let first = net.reply(2).clone();
    assert!(matches!(first, Ok(Reply::Put(_, 1))), "{first:?}");
    // The client never saw that answer (its leader froze) and retries the
    // same (session, seq) at the next leader, and again at the same one.
    net.elect(1, 2);
    net.request(1, 3, in_session(session, 1, 1, put("probe", "once")));
    assert_eq!(net.reply(3), &first);
    net.request(1, 4, in_session(session, 1, 1, put("probe", "once")));
    assert_eq!(net.reply(4), &first);
    for node in 0..3 {
        assert_eq!(
            version(&mut net, node, 10 + node as u64, "probe"),
            1,
            "node {node}"
        );
    }
    // The next write acknowledges the first: a late copy of it is refused,
    // never applied.
    net.request(1, 5, in_session(session, 2, 2, put("probe", "twice")));
    assert!(matches!(net.reply(5), Ok(Reply::Put(_, 2))));
    net.request(1, 6, in_session(session, 1, 1, put("probe", "once")));
    assert_eq!(
        net.reply(6),
        &Err(ServerError::Kv(KvError::AlreadyAnswered { seq: 1 }))
    );
    assert_eq!(version(&mut net, 1, 20, "probe"), 2);
}

#[test]
fn a_write_retried_without_a_session_applies_twice() {
    // The shape of the bug sessions fix: the same put sent again after an
    // unknown outcome is a second write.
    let mut net = Net::new();
    net.elect(0, 1);
    net.request(0, 1, put("probe", "once"));
    net.elect(1, 2);
    net.request(1, 2, put("probe", "once"));
    assert_eq!(version(&mut net, 1, 3, "probe"), 2);
}

#[test]
fn a_session_write_proposed_twice_before_either_commits_applies_once() {
    let mut net = Net::new();
    net.elect(0, 1);
    let session = open_session(&mut net, 0, 1, 60_000);
    // The followers are cut off: both copies wait in the log.
    net.cut[1] = true;
    net.cut[2] = true;
    net.request(0, 2, in_session(session, 1, 1, put("k", "v")));
    net.request(0, 3, in_session(session, 1, 1, put("k", "v")));
    assert!(net.replies.iter().all(|r| r.1 != 2 && r.1 != 3));
    net.cut[1] = false;
    net.cut[2] = false;
    for _ in 0..5 {
        net.advance(Duration::from_millis(100));
    }
    assert_eq!(net.reply(2), net.reply(3));
    assert!(matches!(net.reply(2), Ok(Reply::Put(_, 1))));
    assert_eq!(version(&mut net, 2, 4, "k"), 1);
}

#[test]
fn an_idle_session_expires_through_the_log_and_a_retry_in_it_is_refused_everywhere() {
    let mut net = Net::new();
    net.elect(0, 1);
    let session = open_session(&mut net, 0, 1, 1000);
    let kept = open_session(&mut net, 0, 2, 1000);
    for step in 0..15u64 {
        net.advance(Duration::from_millis(100));
        // Writes and keep-alives keep `kept` alive.
        if step % 5 == 0 {
            net.request(0, 100 + step, ClientOp::SessionKeepAlive(kept));
            assert!(matches!(net.reply(100 + step), Ok(Reply::KeptAlive { .. })));
        }
    }
    for node in 0..3 {
        assert!(
            !net.servers[node].store().sessions().contains(session),
            "node {node}"
        );
        assert!(
            net.servers[node].store().sessions().contains(kept),
            "node {node}"
        );
    }
    net.request(0, 3, in_session(session, 1, 1, put("k", "v")));
    assert_eq!(
        net.reply(3),
        &Err(ServerError::Kv(KvError::SessionExpired(session)))
    );
    assert_eq!(version(&mut net, 0, 4, "k"), 0);
    // A new leader restarts the TTL of every session it finds.
    net.elect(1, 2);
    net.advance(Duration::from_millis(900));
    net.request(1, 5, ClientOp::SessionKeepAlive(kept));
    assert!(matches!(
        net.reply(5),
        Ok(Reply::KeptAlive { ttl_ms: 1000 })
    ));
    // Session commands are the server's own.
    net.request(0, 6, ClientOp::Write(Command::CloseSession { id: kept }));
    assert_eq!(net.reply(6), &Err(ServerError::Kv(KvError::NotInSession)));
}

#[test]
fn a_replica_with_a_smaller_value_limit_applies_what_the_leader_admitted() {
    // The outside check: `--max-value-bytes 1000` on n3 only; a 5,000-byte
    // put was acknowledged, applied by n1 and n2 and refused by n3.
    let mut net = Net::with_each(|i| {
        let mut config = ServerConfig::default();
        if i == 2 {
            config.limits.max_value = 1000;
        }
        config
    });
    net.elect(0, 1);
    let big = "x".repeat(5000);
    net.request(0, 1, put("k", &big));
    assert!(net.reply(1).is_ok(), "{:?}", net.reply(1));
    net.advance(Duration::from_millis(100));
    for node in 0..3 {
        net.request(node, 10 + node as u64, get("k", false));
        assert_eq!(
            value(net.reply(10 + node as u64)).map(|v| v.len()),
            Some(5000),
            "node {node}"
        );
    }
    assert_eq!(net.servers[0].digest(), net.servers[2].digest());
    // Led by n3, the smaller limit is checked before proposing: refused,
    // nothing proposed, nothing applied anywhere.
    net.elect(2, 2);
    net.request(2, 2, put("k2", &big));
    assert!(matches!(
        net.reply(2),
        Err(ServerError::Kv(KvError::ValueTooLarge { max: 1000, .. }))
    ));
    net.request(2, 3, put("k3", "small"));
    assert!(net.reply(3).is_ok());
}

#[test]
fn a_replica_whose_state_differs_from_the_leaders_finds_out_at_the_next_checkpoint() {
    let mut net = Net::with(ServerConfig {
        checkpoint_every: 4,
        ..ServerConfig::default()
    });
    net.elect(0, 1);
    net.request(0, 1, put("a", "1"));
    net.advance(Duration::from_millis(100));
    // n3's state goes wrong behind the log's back.
    net.servers[2].digest ^= 1;
    for i in 0..8 {
        net.request(0, 10 + i, put("b", "2"));
    }
    net.advance(Duration::from_millis(100));
    assert_eq!(net.servers[0].diverged(), None);
    assert_eq!(net.servers[1].diverged(), None);
    let divergence = net.servers[2].diverged().expect("n3 never noticed");
    assert_ne!(divergence.ours, divergence.leaders);
    assert_eq!(net.servers[0].digest(), net.servers[1].digest());
    // It steps aside: it serves nothing from a state known to be wrong.
    net.request(2, 100, get("a", false));
    assert!(matches!(net.reply(100), Err(ServerError::NotReady(_))));
}

#[test]
fn a_restarted_node_refuses_serializable_reads_until_it_has_learned_what_is_committed() {
    // The outside check: before a leader existed, a restarted node answered
    // `0 keys at revision 0` although its log held thousands of entries.
    let mut net = Net::new();
    net.elect(0, 1);
    net.request(0, 1, put("k", "v"));
    net.advance(Duration::from_millis(100));
    let log: Vec<_> = (1..=net.servers[1].replica().last_index())
        .map(|i| net.servers[1].replica().entry(i).unwrap().clone())
        .collect();
    assert!(log.len() >= 2);
    let voters: Vec<_> = net
        .names
        .iter()
        .cloned()
        .zip(net.addrs.iter().copied())
        .collect();
    let recovered = Recovered {
        epoch: 1,
        entries: log,
        ..Recovered::default()
    };
    let now = net.now;
    net.servers[1] = Server::new(
        ServerConfig::default(),
        net.names[1].clone(),
        voters,
        [],
        recovered,
        now,
    )
    .unwrap();
    net.request(1, 2, get("k", false));
    assert!(
        matches!(net.reply(2), Err(ServerError::NotReady(_))),
        "{:?}",
        net.reply(2)
    );
    // Once it follows a leader and learns the commit index, it answers.
    let (name, addr) = (net.names[0].clone(), net.addrs[0]);
    net.servers[1].follow(now, name, addr, 1);
    net.request(0, 3, put("k2", "v2"));
    net.advance(Duration::from_millis(100));
    net.request(1, 4, get("k", false));
    assert_eq!(value(net.reply(4)), Some(b"v".to_vec()));
}

#[test]
fn a_node_that_missed_compacted_history_catches_up_from_a_snapshot_with_its_sessions() {
    let mut net = Net::new();
    net.cut[2] = true;
    net.elect(0, 1);
    let session = open_session(&mut net, 0, 1, 60_000);
    for i in 0..20u64 {
        net.request(
            0,
            10 + i,
            in_session(
                session,
                i + 1,
                i + 1,
                put(&format!("k{}", i % 5), &format!("v{i}")),
            ),
        );
        assert!(net.reply(10 + i).is_ok());
    }
    // The leader and n2 snapshot and forget their logs.
    for node in 0..2 {
        let (meta, state) = net.servers[node].snapshot();
        // The O(1) point encodes to the copy's very bytes.
        let (point_meta, point) = net.servers[node].snapshot_point();
        assert_eq!(
            (point_meta, point.clone().into_bytes()),
            (meta, state.encode())
        );
        // Written into a file as it encodes: the file of those bytes.
        let dir = tempfile::tempdir().unwrap();
        let snaps = clustron_log::snapshot::Snapshots::open(dir.path()).unwrap();
        let saved = snaps.save_with(meta, |out| point.write_into(out)).unwrap();
        assert_eq!(
            std::fs::read(saved.path).unwrap(),
            clustron_log::snapshot::encode(meta, &state.encode())
        );
        net.servers[node].compact_log(meta.index);
        assert_eq!(net.servers[node].replica().snapshot(), meta);
    }
    // n3 returns: it pulls a snapshot, then follows the tail.
    net.cut[2] = false;
    let (name, addr) = (net.names[0].clone(), net.addrs[0]);
    let now = net.now;
    net.servers[2].fence(1);
    net.servers[2].follow(now, name, addr, 1);
    net.request(
        0,
        100,
        in_session(session, 21, 21, put("after", "snapshot")),
    );
    for _ in 0..3 {
        net.advance(Duration::from_millis(100));
    }
    assert!(
        net.servers[2].replica().snapshot().index > 0,
        "n3 never installed a snapshot"
    );
    assert_eq!(net.servers[2].applied(), net.servers[0].applied());
    assert_eq!(net.servers[2].store(), net.servers[0].store());
    assert_eq!(net.servers[2].digest(), net.servers[0].digest());
    net.request(2, 101, get("after", false));
    assert_eq!(value(net.reply(101)), Some(b"snapshot".to_vec()));
    // The sessions came with it: n3, leading, answers a retry of write 21
    // with its first result instead of applying it again.
    net.elect(2, 2);
    let first = net.reply(100).clone();
    net.request(
        2,
        102,
        in_session(session, 21, 21, put("after", "snapshot")),
    );
    assert_eq!(net.reply(102), &first);
    assert_eq!(version(&mut net, 2, 103, "after"), 1);
}

#[test]
fn the_leader_refuses_lease_ttls_out_of_range_before_proposing() {
    let mut net = Net::new();
    net.elect(0, 1);
    let session = open_session(&mut net, 0, 1, 60_000);
    let grant = |ttl_ms| {
        ClientOp::Write(Command::LeaseGrant {
            id: LeaseId(0),
            ttl_ms,
        })
    };
    let year_ms = 365 * 24 * 3600 * 1000;
    // 0 (etcd would grant its minimum; a lease that is gone at once is
    // never what was meant), under a second, over a year, and the u64 that
    // `kv grant 18446744073709552` used to wrap to 384 ms.
    let mut id = 10;
    for ttl_ms in [0, 999, year_ms + 1, u64::MAX] {
        for op in [grant(ttl_ms), in_session(session, 1, 1, grant(ttl_ms))] {
            id += 1;
            let last = net.servers[0].replica().last_index();
            net.request(0, id, op);
            let err = match net.reply(id) {
                Err(e) => e.to_string(),
                Ok(granted) => panic!("ttl {ttl_ms} ms granted: {granted:?}"),
            };
            assert!(
                err.contains("lease TTL") && err.contains("1 s") && err.contains("365 days"),
                "{err}"
            );
            assert_eq!(net.servers[0].replica().last_index(), last, "proposed");
        }
    }
    // The bounds themselves are granted.
    for ttl_ms in [1000, year_ms] {
        id += 1;
        net.request(0, id, grant(ttl_ms));
        assert!(
            matches!(net.reply(id), Ok(Reply::LeaseGranted { ttl_ms: t, .. }) if *t == ttl_ms),
            "{:?}",
            net.reply(id)
        );
    }
}

#[test]
fn the_leader_refuses_a_write_whose_answer_would_not_fit_before_proposing() {
    let mut net = Net::new();
    net.elect(0, 1);
    let value = "v".repeat(400 * 1024);
    for i in 0..10 {
        net.request(0, i, put(&format!("big/{i}"), &value));
        assert!(net.reply(i).is_ok());
    }
    let last = net.servers[0].replica().last_index();
    let delete = ClientOp::Write(Command::Delete(crate::kv::DeleteRequest {
        range: KeyRange::Prefix(b"big/".to_vec()),
        prev_kv: true,
    }));
    net.request(0, 100, delete);
    let err = match net.reply(100) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("applied instead of refused"),
    };
    assert!(err.contains("nothing was applied"), "{err}");
    assert_eq!(net.servers[0].replica().last_index(), last, "proposed");
    // Reads are paged instead: the first page stops near 2 MiB.
    net.request(
        0,
        101,
        ClientOp::Read {
            request: RangeRequest {
                range: KeyRange::Prefix(b"big/".to_vec()),
                revision: 0,
                limit: 0,
                keys_only: false,
                count_only: false,
            },
            linearizable: true,
        },
    );
    let Ok(Reply::Range(page, _)) = net.reply(101) else {
        panic!("{:?}", net.reply(101))
    };
    assert_eq!((page.kvs.len(), page.more, page.count), (5, true, 10));
}

/// Issue 11: a snapshot's state is encoded into a buffer of exactly its
/// size (grown by doubling, a 6 MB store peaked at 12 MB of buffer), and
/// the bytes are postcard's own.
#[test]
fn a_snapshot_state_is_encoded_into_a_buffer_of_exactly_its_size() {
    let mut values = std::collections::BTreeMap::new();
    for i in 0..1000u32 {
        values.insert(format!("key-{i}"), vec![i as u8; 100 + (i % 300) as usize]);
    }
    let encoded = crate::core::encode_exact(&values);
    assert_eq!(encoded, postcard::to_allocvec(&values).unwrap());
    assert_eq!(encoded.capacity(), encoded.len());
}
