//! A replicated counter on `clustron-log`: three nodes in one process on
//! 127.0.0.1, each with the counter as its state machine and its log in a
//! folder of its own. Five increments go to the leader `n1`, `n1` is
//! killed, five more go to whichever survivor leads next: the total is 10
//! (nothing acknowledged was lost, nothing applied twice). Exits by itself.
//!
//! `cargo run -p clustron-examples --example replicated_counter`

use std::time::Duration;

use clustron_log::{Log, LogConfig, StateMachine};
use clustron_node::transport::CertificateAuthority;
use clustron_node::{Elect, Node};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The state machine: every node applies the same increments in order.
#[derive(Default)]
struct Counter(u64);

impl StateMachine for Counter {
    type Output = u64;
    type Snapshot = Vec<u8>;
    fn apply(&mut self, _index: u64, entry: &[u8]) -> u64 {
        self.0 += entry.iter().map(|b| u64::from(*b)).sum::<u64>();
        self.0
    }
    fn snapshot(&self) -> Vec<u8> {
        self.0.to_le_bytes().to_vec()
    }
    fn restore(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.0 = u64::from_le_bytes(bytes.try_into().map_err(|_| "not 8 bytes")?);
        Ok(())
    }
}

/// Runs the example to the end (the smoke test calls it too).
#[tokio::main(flavor = "current_thread")]
pub async fn main() -> Result<(), Error> {
    let ca = CertificateAuthority::generate("replicated counter example")?;
    let dir = std::env::temp_dir().join(format!("clustron-counter-{}", std::process::id()));
    let mut nodes: Vec<(Node, Log<Counter>)> = Vec::new();
    for (name, priority) in [("n1", 30), ("n2", 20), ("n3", 10)] {
        let open = Log::<Counter>::open(dir.join(name))?;
        let node = Node::builder(ca.node_identity(name)?)
            .seeds(nodes.first().map(|(n, _)| n.local_addr()))
            .elect(open.elect(Elect::voters(["n1", "n2", "n3"])?.priority(priority)))
            .start()
            .await?;
        let log = Log::start(&node, open, Counter::default(), LogConfig::default()).await?;
        nodes.push((node, log));
    }
    for _ in 0..5 {
        println!("counter: {}", add_on_leader(&nodes).await?);
    }
    let (leader, _) = nodes.remove(0);
    println!("killing the leader {}", leader.name());
    leader.kill().await;
    let mut total = 0;
    for _ in 0..5 {
        total = add_on_leader(&nodes).await?;
        println!("counter: {total}");
    }
    for (node, _) in nodes.iter().rev() {
        node.leave().await;
    }
    let _ = std::fs::remove_dir_all(&dir);
    if total != 10 {
        return Err(format!("the counter is {total}, not 10").into());
    }
    Ok(())
}

/// Adds 1 on whichever node leads (waiting for one to be elected).
async fn add_on_leader(nodes: &[(Node, Log<Counter>)]) -> Result<u64, Error> {
    loop {
        for (_, log) in nodes {
            match log.propose(vec![1]).await {
                Ok(total) => return Ok(total),
                Err(clustron_log::Error::NotLeader { .. } | clustron_log::Error::NotReady) => {}
                Err(e) => return Err(e.into()),
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
