//! The generic driver on real nodes: three voters in one process over
//! loopback QUIC, each with its log in a folder of its own.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use clustron_log::{Error, Log, LogConfig, SnapshotSchedule, StateMachine};
use clustron_node::transport::CertificateAuthority;
use clustron_node::{Elect, Node};

/// Every value applied, in order: two replicas are equal only if they
/// applied the same entries in the same order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Values(Vec<u64>);

impl StateMachine for Values {
    /// The entry's index.
    type Output = u64;
    type Snapshot = Vec<u8>;

    fn apply(&mut self, index: u64, entry: &[u8]) -> u64 {
        // Entries come only from `propose` below: 8 bytes each.
        self.0.push(u64::from_le_bytes(entry.try_into().unwrap()));
        index
    }

    fn snapshot(&self) -> Vec<u8> {
        self.0.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    fn restore(&mut self, bytes: &[u8]) -> Result<(), String> {
        if bytes.len() % 8 != 0 {
            return Err(format!("{} bytes is not a list of u64s", bytes.len()));
        }
        self.0 = bytes
            .chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        Ok(())
    }
}

/// Far above what each step takes, far below forever.
const DEADLINE: Duration = Duration::from_secs(30);

const VOTERS: [&str; 3] = ["n1", "n2", "n3"];

struct Member {
    node: Node,
    log: Log<Values>,
}

async fn start(
    ca: &CertificateAuthority,
    name: &str,
    priority: u32,
    dir: &Path,
    listen: Option<SocketAddr>,
    seeds: Vec<SocketAddr>,
) -> Member {
    let open = Log::<Values>::open(dir.join(name)).unwrap();
    let mut builder = Node::builder(ca.node_identity(name).unwrap())
        .seeds(seeds)
        .elect(open.elect(Elect::voters(VOTERS).unwrap().priority(priority)));
    if let Some(addr) = listen {
        builder = builder.listen(addr);
    }
    let node = builder.start().await.unwrap();
    let config = LogConfig {
        snapshots: SnapshotSchedule {
            entries: 5,
            bytes: 0,
            percent_of_last: 0,
        },
        ..LogConfig::default()
    };
    let log = Log::start(&node, open, Values::default(), config)
        .await
        .unwrap();
    Member { node, log }
}

/// Proposes `value` on whichever member leads, waiting (with a deadline)
/// for one to; returns its log index.
async fn propose(members: &[Member], value: u64) -> u64 {
    let attempt = async {
        loop {
            for member in members {
                match member.log.propose(value.to_le_bytes().to_vec()).await {
                    Ok(count) => return count,
                    Err(Error::NotLeader { .. } | Error::NotReady) => {}
                    Err(e) => panic!("proposal of {value} failed: {e}"),
                }
            }
            // Wait for a change of leadership rather than spin.
            for member in members {
                let leading = member.log.wait_for(|s| s.leading);
                let _ = tokio::time::timeout(Duration::from_millis(50), leading).await;
            }
        }
    };
    tokio::time::timeout(DEADLINE, attempt)
        .await
        .expect("no leader took the proposal in time")
}

async fn state(member: &Member) -> Values {
    member.log.read(|v| v.clone()).await.unwrap()
}

/// Waits until every member applied the log up to `applied`, and returns
/// their states.
async fn converged(members: &[Member], applied: u64) -> Vec<Values> {
    let mut states = Vec::new();
    for member in members {
        tokio::time::timeout(DEADLINE, member.log.wait_for(|s| s.applied >= applied))
            .await
            .expect("a member did not catch up in time")
            .unwrap();
        states.push(state(member).await);
    }
    states
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_entries_survive_the_leaders_death_and_a_restart_from_snapshot() {
    let ca = CertificateAuthority::generate("log driver test").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let n1 = start(&ca, "n1", 30, dir.path(), None, vec![]).await;
    let seeds = vec![n1.node.local_addr()];
    let n2 = start(&ca, "n2", 20, dir.path(), None, seeds.clone()).await;
    let n3 = start(&ca, "n3", 10, dir.path(), None, seeds).await;

    // Phase 1: writes through the first leader.
    let mut members = vec![n1, n2, n3];
    let mut acked = Vec::new();
    let mut last = 0;
    for value in 1..=12 {
        last = propose(&members, value).await;
        acked.push(value);
    }
    converged(&members, last).await;
    let leader = members
        .iter()
        .position(|m| m.log.status().leading)
        .expect("someone leads");

    // Phase 2: the leader dies; the survivors elect another and go on.
    let dead = members.remove(leader);
    let (dead_name, dead_addr) = (VOTERS[leader], dead.node.local_addr());
    dead.node.kill().await;
    // Its driver stops once its node is gone (the log files are closed).
    let stopped = dead.log.wait_for(|_| false);
    assert!(tokio::time::timeout(DEADLINE, stopped)
        .await
        .unwrap()
        .is_err());
    drop(dead);
    for value in 13..=20 {
        last = propose(&members, value).await;
        acked.push(value);
    }
    let states = converged(&members, last).await;
    assert_eq!(states[0], states[1], "the survivors differ");
    for value in &acked {
        assert!(states[0].0.contains(value), "acknowledged {value} was lost");
    }

    // Phase 3: the dead node restarts from its snapshot and log tail, on
    // its old address, and catches up to the same state.
    let seeds = members.iter().map(|m| m.node.local_addr()).collect();
    let priority = [30, 20, 10][leader];
    let restarted = start(&ca, dead_name, priority, dir.path(), Some(dead_addr), seeds).await;
    // Snapshots every 5 entries: it had taken some before it died.
    let from_snapshot = restarted.log.wait_for(|s| s.snapshot >= 5);
    tokio::time::timeout(DEADLINE, from_snapshot)
        .await
        .expect("it did not start from a snapshot")
        .unwrap();
    members.push(restarted);
    for value in 21..=25 {
        last = propose(&members, value).await;
        acked.push(value);
    }
    let states = converged(&members, last).await;
    assert_eq!(states[0], states[2], "the restarted node differs");
    assert_eq!(states[0], states[1]);
    for value in &acked {
        assert!(states[2].0.contains(value), "acknowledged {value} was lost");
    }
    for member in members {
        member.node.kill().await;
    }
}
