//! A local cluster in one process over real transports on 127.0.0.1:
//! transport, membership, election and event bus per node, assembled by
//! `clustron-node` (the same recipe as the node binary), for integration
//! tests and `cargo xtask bench election`.

use std::future::Future;
use std::time::Duration;

use anyhow::{Context, Result};
use clustron_election::{Config, Election, Epoch, NodeName, PromiseHook, Voter, VoterSet};
use clustron_events::EventBus;
use clustron_membership::Membership;
use clustron_node::{Elect, NodeBuilder};
use clustron_transport::{CertificateAuthority, Endpoint};
use tokio::time::Instant;

/// One node of a [`LocalCluster`].
pub struct Node {
    /// Its name, `n1`, `n2`, ...
    pub name: NodeName,
    /// Its transport.
    pub endpoint: Endpoint,
    /// Its membership.
    pub membership: Membership,
    /// Its election.
    pub election: Election,
    /// Its event bus.
    pub bus: EventBus,
    /// The assembled node, for stopping it.
    pub node: clustron_node::Node,
}

impl Node {
    /// Stops the node without a word to anyone, like `kill -9`.
    pub async fn kill(&self) {
        self.node.kill().await;
    }

    /// Stops the node gracefully: hands leadership over, leaves, closes.
    pub async fn leave(&self) {
        self.node.leave().await;
    }
}

/// Nodes `n1..=nN` on 127.0.0.1; the first `voters` vote, with priorities
/// falling from `n1`; the others follow.
pub struct LocalCluster {
    /// The nodes, `n1` first.
    pub nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

/// The name of node `i` (1-based).
pub fn name(i: usize) -> NodeName {
    // Invariant: "n" followed by digits is a valid name.
    NodeName::new(format!("n{i}")).expect("valid name")
}

impl LocalCluster {
    /// Starts `n` nodes with `voters` voters and waits until every node
    /// follows `n1`.
    pub async fn start(n: usize, voters: usize, config: Config) -> Result<Self> {
        Self::start_with_hooks(n, voters, config, |_| None).await
    }

    /// As [`LocalCluster::start`], with node `i`'s election given
    /// `hook(i)` as its [`PromiseHook`].
    pub async fn start_with_hooks(
        n: usize,
        voters: usize,
        config: Config,
        hook: impl Fn(usize) -> Option<std::sync::Arc<dyn PromiseHook>>,
    ) -> Result<Self> {
        let ca = CertificateAuthority::generate("local cluster")?;
        let dir = tempfile::tempdir()?;
        // Every port first, so the voter set carries every voter's address.
        let mut bound = Vec::new();
        for i in 1..=n {
            bound.push(NodeBuilder::new(ca.node_identity(&format!("n{i}"))?));
        }
        let bound = bound
            .into_iter()
            .map(|builder| builder.bind())
            .collect::<Result<Vec<_>, _>>()?;
        let set = VoterSet::new((1..=voters).map(|i| Voter {
            name: name(i),
            addr: bound[i - 1].local_addr(),
        }));
        let seed = bound[0].local_addr();
        let mut nodes = Vec::new();
        for (index, node) in bound.into_iter().enumerate() {
            let i = index + 1;
            let priority = if i <= voters {
                (100 * (voters + 1 - i)) as u32
            } else {
                0
            };
            let mut elect = Elect::new(set.clone())
                .priority(priority)
                .config(config.clone())
                .data_dir(dir.path().join(format!("n{i}")));
            if let Some(hook) = hook(i) {
                elect = elect.promise_hook(hook);
            }
            let node = node
                .seeds(if i == 1 { None } else { Some(seed) })
                .elect(elect)
                .events(Default::default())
                .start()
                .await?;
            nodes.push(Node {
                name: name(i),
                endpoint: node.endpoint().clone(),
                membership: node.membership().clone(),
                election: node.election().context("no election")?.clone(),
                bus: node.events().context("no event bus")?.clone(),
                node,
            });
        }
        let cluster = Self { nodes, _dir: dir };
        let everyone: Vec<usize> = (0..n).collect();
        let leader = name(1);
        eventually(Duration::from_secs(30), || async {
            cluster.follow(&everyone, &leader).is_some()
        })
        .await?;
        Ok(cluster)
    }

    /// Node `index`'s (0-based) election folder.
    pub fn data_dir(&self, index: usize) -> std::path::PathBuf {
        self._dir.path().join(format!("n{}", index + 1))
    }

    /// The epoch, when every node with an index in `which` names `leader`
    /// with one epoch.
    pub fn follow(&self, which: &[usize], leader: &NodeName) -> Option<Epoch> {
        let first = self.nodes.get(*which.first()?)?.election.leader()?;
        let agree = which
            .iter()
            .all(|i| self.nodes[*i].election.leader().as_ref() == Some(&first));
        (agree && first.0 == *leader).then_some(first.1)
    }

    /// Indices of nodes that hold a valid lease now.
    pub fn lease_holders(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].election.lease().is_some())
            .collect()
    }

    /// Stops every node.
    pub async fn stop(&self) {
        for node in &self.nodes {
            node.kill().await;
        }
    }
}

/// Polls `check` every millisecond until it holds; an error after `limit`.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        anyhow::ensure!(
            started.elapsed() < limit,
            "condition not met within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(started.elapsed())
}

/// Kills the leader `n1` and returns the time until another node holds a
/// valid lease.
pub async fn failover(cluster: &LocalCluster) -> Result<Duration> {
    cluster.nodes[0].kill().await;
    eventually(Duration::from_secs(10), || async {
        cluster.lease_holders().iter().any(|i| *i != 0)
    })
    .await
}

/// Transfers leadership from `n1` to node index `to` and returns the time
/// until it holds a valid lease.
pub async fn handover(cluster: &LocalCluster, to: usize) -> Result<Duration> {
    let started = Instant::now();
    cluster.nodes[0]
        .election
        .transfer_to(&cluster.nodes[to].name)
        .await?;
    eventually(Duration::from_secs(10), || async {
        cluster.lease_holders() == vec![to]
    })
    .await?;
    Ok(started.elapsed())
}
