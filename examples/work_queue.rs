//! A small replicated work queue on membership + election: the leader owns
//! the queue and sends each new state to the others; every node's worker
//! takes jobs through `ToLeader` (epoch fencing, retries, deadlines). `n3`
//! queues six jobs, the leader `n1` is killed half-way, `n2` takes over
//! with the state it last received and runs again what was out but not
//! reported done (at-least-once). Exits once every job is done.
//!
//! Not durable: the state is sent best-effort and kept in memory, so a
//! failover loses what the new leader had not received yet. Keeping every
//! acknowledged job needs `clustron-log` (see `replicated_counter.rs`).
//!
//! `cargo run -p clustron-examples --example work_queue`

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use clustron_node::election::{Epoch, Routed};
use clustron_node::transport::{CertificateAuthority, ChannelId, Inbound, Protocol};
use clustron_node::{Elect, Node};
use serde::{Deserialize, Serialize};

type Error = Box<dyn std::error::Error + Send + Sync>;
type Job = (u64, String);
type Answer = Result<Option<Job>, String>;
const JOBS: usize = 6;

/// The queue's channel: requests carry the epoch they were routed for; the
/// leader's state travels as messages.
struct Queue;

impl Protocol for Queue {
    const CHANNEL: ChannelId = ChannelId(ChannelId::FIRST_PRODUCT.0 + 2);
    type Request = (Epoch, Op);
    type Response = Option<Job>;
    type Message = State;
}

#[derive(Serialize, Deserialize)]
enum Op {
    Push(String),
    Take,
    Done(u64),
}

/// The queue, as the leader keeps it and sends it to the others.
#[derive(Clone, Default, Serialize, Deserialize)]
struct State {
    epoch: Epoch,
    version: u64,
    next_id: u64,
    pending: VecDeque<Job>,
    taken: BTreeMap<u64, String>,
}

impl State {
    fn apply(&mut self, op: Op) -> Option<Job> {
        self.version += 1;
        match op {
            Op::Push(job) => {
                self.next_id += 1;
                self.pending.push_back((self.next_id, job.clone()));
                Some((self.next_id, job))
            }
            Op::Take => {
                let (id, job) = self.pending.pop_front()?;
                self.taken.insert(id, job.clone());
                Some((id, job))
            }
            Op::Done(id) => {
                self.taken.remove(&id);
                self.pending.retain(|(pending, _)| *pending != id);
                None
            }
        }
    }
}

/// Runs the example to the end (the smoke test calls it too).
#[tokio::main(flavor = "current_thread")]
pub async fn main() -> Result<(), Error> {
    let ca = CertificateAuthority::generate("work queue example")?;
    let mut nodes: Vec<Node> = Vec::new();
    for (name, priority) in [("n1", 30), ("n2", 20), ("n3", 10)] {
        let seed = nodes.first().map(Node::local_addr);
        let bound = Node::builder(ca.node_identity(name)?)
            .seeds(seed)
            .elect(Elect::voters(["n1", "n2", "n3"])?.priority(priority))
            .bind()?;
        let state = Arc::new(Mutex::new(State::default()));
        let me = Arc::new(OnceLock::new());
        let (queue, node) = (state.clone(), me.clone());
        // Registered before joining; it answers only while leading `epoch`.
        let mut updates = bound
            .endpoint()
            .serve::<Queue, _, _>(move |_, (epoch, op)| {
                let answer = serve(node.get(), &queue, epoch, op);
                async move { answer }
            })?;
        let node = bound.start().await?;
        let _ = me.set(node.clone());
        tokio::spawn(async move {
            while let Some(Inbound::Message { message: newer, .. }) = updates.recv().await {
                let mut state = state.lock().unwrap_or_else(|e| e.into_inner());
                if (newer.epoch, newer.version) > (state.epoch, state.version) {
                    *state = newer;
                }
            }
        });
        nodes.push(node);
    }

    let producer = nodes[2].to_leader::<Queue>().ok_or("no election")?;
    for i in 1..=JOBS {
        let job = format!("resize image {i}");
        let queued = producer.request(|e| (e, Op::Push(job.clone()))).await?;
        println!("n3 queued {:?} at {}", queued.response, queued.leader.name);
    }
    let done = Arc::new(Mutex::new(BTreeSet::new()));
    let workers: Vec<_> = nodes
        .iter()
        .map(|n| tokio::spawn(work(n.clone(), done.clone())))
        .collect();
    let count = || done.lock().map_or(0, |d| d.len());
    wait(|| count() >= JOBS / 2).await?;
    println!("killing the leader n1 and its worker");
    workers[0].abort();
    nodes[0].kill().await;
    wait(|| count() >= JOBS).await?;
    println!("all {JOBS} jobs done");
    workers.iter().for_each(|w| w.abort());
    for node in nodes[1..].iter().rev() {
        node.leave().await;
    }
    Ok(())
}

/// The leader's side of one request: fenced by epoch, then applied, then the
/// new state sent to every other member (best effort).
fn serve(node: Option<&Node>, queue: &Mutex<State>, epoch: Epoch, op: Op) -> Answer {
    let Some(node) = node.filter(|n| n.election().is_some_and(|e| e.leads(epoch))) else {
        return Err(format!("not leading epoch {epoch}"));
    };
    let mut state = queue.lock().unwrap_or_else(|e| e.into_inner());
    if state.epoch != epoch {
        // A new leader: jobs out but not reported done are run again.
        state.epoch = epoch;
        for job in std::mem::take(&mut state.taken).into_iter().rev() {
            state.pending.push_front(job);
        }
    }
    let answer = state.apply(op);
    let (node, copy) = (node.clone(), state.clone());
    tokio::spawn(async move {
        for m in node.membership().members().await.unwrap_or_default() {
            if m.name != *node.name() && m.state.is_live() {
                let _ = node.endpoint().channel::<Queue>().send(m.addr, &copy).await;
            }
        }
    });
    Ok(answer)
}

/// Takes jobs from the leader and runs them until aborted.
async fn work(node: Node, done: Arc<Mutex<BTreeSet<u64>>>) -> Option<()> {
    let take = node.to_leader::<Queue>()?;
    // Reporting a job done twice is harmless, so it may be retried blindly.
    let report = take.clone().idempotent();
    loop {
        match take.request(|epoch| (epoch, Op::Take)).await {
            Ok(Routed {
                response: Some((id, job)),
                leader,
                ..
            }) => {
                println!("{} runs job {id} ({job}) for {}", node.name(), leader.name);
                tokio::time::sleep(Duration::from_millis(50)).await; // the work
                if report.request(|epoch| (epoch, Op::Done(id))).await.is_ok() {
                    done.lock().ok()?.insert(id);
                }
            }
            Ok(_) => {} // nothing queued
            Err(e) => println!("{}: {e}", node.name()),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `check` holds, for at most 30 s.
async fn wait(check: impl Fn() -> bool) -> Result<(), Error> {
    let until = async {
        while !check() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    Ok(tokio::time::timeout(Duration::from_secs(30), until).await?)
}
