//! A local cluster in one process over real transports on 127.0.0.1:
//! transport, membership and election per node, for integration tests and
//! `cargo xtask bench election`.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Result;
use clustron_election::{Config, Election, Epoch, NodeName, Options, PromiseHook, Voter, VoterSet};
use clustron_events::EventBus;
use clustron_membership::{Membership, Options as MembershipOptions};
use clustron_transport::{
    CertRequest, CertificateAuthority, Endpoint, TlsIdentity, TransportConfig,
};
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
}

impl Node {
    /// Stops the node without a word to anyone, like `kill -9`.
    pub async fn kill(&self) {
        self.bus.shutdown().await;
        self.election.shutdown().await;
        self.membership.shutdown().await;
        self.endpoint.close().await;
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
        let mut endpoints = Vec::new();
        for i in 1..=n {
            let cert = ca.issue(&CertRequest::node(&format!("n{i}"))?)?;
            let identity = TlsIdentity::from_certified(ca.cert_pem(), &cert)?;
            let listen = SocketAddr::from(([127, 0, 0, 1], 0));
            endpoints.push(Endpoint::bind(TransportConfig::new(listen), identity)?);
        }
        let set = VoterSet::new((1..=voters).map(|i| Voter {
            name: name(i),
            addr: endpoints[i - 1].local_addr(),
        }));
        let seed = endpoints[0].local_addr();
        let mut nodes = Vec::new();
        for (index, endpoint) in endpoints.into_iter().enumerate() {
            let i = index + 1;
            let options = MembershipOptions {
                seeds: if i == 1 { vec![] } else { vec![seed] },
                priority: if i <= voters {
                    (100 * (voters + 1 - i)) as u32
                } else {
                    0
                },
                voter: i <= voters,
                ..MembershipOptions::default()
            };
            let membership = Membership::start(&endpoint, options).await?;
            let options = Options {
                config: config.clone(),
                voters: set.clone(),
                data_dir: dir.path().join(format!("n{i}")),
                hook: hook(i),
                withdrawn: None,
            };
            let election = Election::start(&endpoint, &membership, options).await?;
            let bus = EventBus::start(
                &endpoint,
                &membership,
                Some(&election),
                clustron_events::core::Config::default(),
            )
            .await?;
            nodes.push(Node {
                name: name(i),
                endpoint,
                membership,
                election,
                bus,
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
