//! [`NodeBuilder`]: what a node runs, then [`Bound`] (the port is open,
//! nothing is joined) and [`Bound::start`] (join, elect, event bus).

use std::net::SocketAddr;
#[cfg(feature = "election")]
use std::path::PathBuf;
#[cfg(feature = "election")]
use std::sync::Arc;

#[cfg(feature = "election")]
use clustron_election::{
    Config as ElectionConfig, Election, Options as ElectionOptions, PromiseHook, Voter, VoterSet,
};
#[cfg(feature = "events")]
use clustron_events::{core::Config as EventsConfig, EventBus};
#[cfg(feature = "election")]
use clustron_membership::NodeName;
use clustron_membership::{Membership, Options as MembershipOptions};
use clustron_transport::{Endpoint, TlsIdentity, TransportConfig};

use crate::error::NodeError;
use crate::node::Node;

/// What a node runs and how: see the crate docs for the order of start-up.
///
/// Defaults: listen on `127.0.0.1:0` (a free port on loopback: set
/// [`NodeBuilder::listen`] for anything else), LAN timings everywhere, no
/// seeds (a new cluster), no election, no event bus.
#[derive(Debug)]
#[must_use = "a builder does nothing until `bind` or `start`"]
pub struct NodeBuilder {
    identity: TlsIdentity,
    transport: TransportConfig,
    membership: MembershipOptions,
    #[cfg(feature = "election")]
    elect: Option<Elect>,
    #[cfg(feature = "events")]
    events: Option<EventsConfig>,
}

impl NodeBuilder {
    /// A node with the name and keys of `identity` (a node certificate).
    pub fn new(identity: TlsIdentity) -> Self {
        Self {
            identity,
            transport: TransportConfig::new(SocketAddr::from(([127, 0, 0, 1], 0))),
            membership: MembershipOptions::default(),
            #[cfg(feature = "election")]
            elect: None,
            #[cfg(feature = "events")]
            events: None,
        }
    }

    /// The UDP address to listen on (port 0: any free port). Others reach
    /// the node at this address unless [`MembershipOptions::advertise`] says
    /// otherwise (needed when listening on `0.0.0.0`).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.transport.listen = addr;
        self
    }

    /// The whole transport configuration (its `listen` included).
    pub fn transport(mut self, config: TransportConfig) -> Self {
        self.transport = config;
        self
    }

    /// The whole membership configuration. Call it before
    /// [`NodeBuilder::seeds`], which changes only the seeds; its `priority`
    /// and `voter` are replaced by [`NodeBuilder::elect`]'s settings when
    /// the node runs an election.
    pub fn membership(mut self, options: MembershipOptions) -> Self {
        self.membership = options;
        self
    }

    /// Addresses of members to join through; none (or only this node's
    /// own address) forms a new cluster.
    pub fn seeds(mut self, seeds: impl IntoIterator<Item = SocketAddr>) -> Self {
        self.membership.seeds = seeds.into_iter().collect();
        self
    }

    /// Runs the leader election on this node, with these settings.
    #[cfg(feature = "election")]
    pub fn elect(mut self, elect: Elect) -> Self {
        self.elect = Some(elect);
        self
    }

    /// Runs the event bus on this node (leaders reported when it also runs
    /// an election).
    #[cfg(feature = "events")]
    pub fn events(mut self, config: EventsConfig) -> Self {
        self.events = Some(config);
        self
    }

    /// Opens the port: the node can now register its own channels
    /// ([`Bound::endpoint`]) and open its own storage before it joins.
    /// Must be called inside a tokio runtime.
    pub fn bind(self) -> Result<Bound, NodeError> {
        let addr = self.transport.listen;
        let endpoint = Endpoint::bind(self.transport, self.identity)
            .map_err(|source| NodeError::Bind { addr, source })?;
        Ok(Bound {
            endpoint,
            membership: self.membership,
            #[cfg(feature = "election")]
            elect: self.elect,
            #[cfg(feature = "events")]
            events: self.events,
        })
    }

    /// [`NodeBuilder::bind`], then [`Bound::start`].
    pub async fn start(self) -> Result<Node, NodeError> {
        self.bind()?.start().await
    }
}

/// A node whose port is open and that has joined nothing yet: the moment to
/// register the product's channels, so that no peer's first request finds
/// them missing.
#[derive(Debug)]
#[must_use = "a bound node has not joined; call `start`"]
pub struct Bound {
    endpoint: Endpoint,
    membership: MembershipOptions,
    #[cfg(feature = "election")]
    elect: Option<Elect>,
    #[cfg(feature = "events")]
    events: Option<EventsConfig>,
}

impl Bound {
    /// The endpoint, for registering channels
    /// ([`Endpoint::register`], [`Endpoint::serve`]).
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The bound address (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.endpoint.local_addr()
    }

    /// As [`NodeBuilder::seeds`]: for seeds known only once every node of
    /// a local cluster is bound.
    pub fn seeds(mut self, seeds: impl IntoIterator<Item = SocketAddr>) -> Self {
        self.membership.seeds = seeds.into_iter().collect();
        self
    }

    /// As [`NodeBuilder::elect`]: for a voter set with addresses known only
    /// once every node is bound.
    #[cfg(feature = "election")]
    pub fn elect(mut self, elect: Elect) -> Self {
        self.elect = Some(elect);
        self
    }

    /// As [`NodeBuilder::events`].
    #[cfg(feature = "events")]
    pub fn events(mut self, config: EventsConfig) -> Self {
        self.events = Some(config);
        self
    }

    /// Joins the cluster through the seeds, then starts the election (if
    /// asked) and the event bus (if asked). A failure after joining leaves
    /// the cluster again (gracefully) and closes the port before returning
    /// the error.
    pub async fn start(self) -> Result<Node, NodeError> {
        let endpoint = self.endpoint;
        #[cfg_attr(not(feature = "election"), allow(unused_mut))]
        let mut membership = self.membership;
        #[cfg(feature = "election")]
        let elect = self.elect;
        #[cfg(feature = "events")]
        let events = self.events;
        let name = endpoint.identity().name.clone();
        #[cfg(feature = "election")]
        if let Some(elect) = &elect {
            membership.priority = elect.priority;
            membership.voter = elect.options.voters.contains(&name);
        }
        let membership = Membership::start(&endpoint, membership)
            .await
            .map_err(NodeError::Join)?;
        tracing::info!(%name, addr = %endpoint.local_addr(), "joined");
        let started = async {
            #[cfg(feature = "election")]
            let election = match elect {
                Some(elect) => Some(start_election(&endpoint, &membership, elect).await?),
                None => None,
            };
            #[cfg(feature = "events")]
            let bus = match events {
                Some(config) => {
                    #[cfg(feature = "election")]
                    let leader = election.as_ref().map(Election::leader_feed);
                    #[cfg(not(feature = "election"))]
                    let leader = None;
                    let bus = EventBus::start(&endpoint, &membership, leader, config)
                        .await
                        .map_err(NodeError::Events)?;
                    Some(bus)
                }
                None => None,
            };
            Ok::<_, NodeError>(Node {
                name: name.clone(),
                endpoint: endpoint.clone(),
                membership: membership.clone(),
                #[cfg(feature = "election")]
                election,
                #[cfg(feature = "events")]
                bus,
            })
        };
        match started.await {
            Ok(node) => Ok(node),
            Err(error) => {
                tracing::error!(%name, %error, "start failed after joining; leaving");
                crate::node::leave_membership(&membership).await;
                endpoint.close().await;
                Err(error)
            }
        }
    }
}

/// Starts the election with the voters' addresses known after joining.
#[cfg(feature = "election")]
async fn start_election(
    endpoint: &Endpoint,
    membership: &Membership,
    elect: Elect,
) -> Result<Election, NodeError> {
    let mut options = elect.options;
    // Voters named without an address get the one membership knows now;
    // the others are learned from membership when they appear.
    let known: std::collections::BTreeMap<NodeName, SocketAddr> = membership
        .members()
        .await
        .map_err(NodeError::Join)?
        .into_iter()
        .map(|m| (m.name, m.addr))
        .collect();
    let version = options.voters.version;
    let mut voters = VoterSet::new(options.voters.voters().iter().map(
        |v| match known.get(&v.name) {
            Some(addr) if !v.has_addr() => Voter {
                name: v.name.clone(),
                addr: *addr,
            },
            _ => v.clone(),
        },
    ));
    voters.version = version;
    options.voters = voters;
    Election::start(endpoint, membership, options)
        .await
        .map_err(NodeError::Election)
}

/// The election settings of a node ([`NodeBuilder::elect`]): the voters,
/// this node's priority, timing, where promises are kept, and the hooks of
/// a replicated log beside it.
#[cfg(feature = "election")]
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct Elect {
    options: ElectionOptions,
    priority: u32,
}

#[cfg(feature = "election")]
impl Elect {
    /// An election among `voters` (addresses may be unknown:
    /// [`Voter::unaddressed`]).
    pub fn new(voters: VoterSet) -> Self {
        Self {
            options: ElectionOptions {
                voters,
                ..ElectionOptions::default()
            },
            priority: 0,
        }
    }

    /// An election among the nodes named `names` (certificate names). Each
    /// voter's address comes from membership once it is seen, so any
    /// majority of them elects, whether or not the others ever start.
    pub fn voters<I>(names: I) -> Result<Self, NodeError>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let voters = names
            .into_iter()
            .map(|name| {
                NodeName::new(name.as_ref())
                    .map(Voter::unaddressed)
                    .map_err(|source| NodeError::VoterName {
                        name: name.as_ref().to_owned(),
                        source,
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::new(VoterSet::new(voters)))
    }

    /// This node's priority: the highest-priority live voter is the
    /// candidate (ties: the smallest name), and a returning higher-priority
    /// voter takes leadership back by handover. Default 0. It is gossiped
    /// in this node's member record
    /// ([`clustron_membership::Options::priority`]), which the builder sets.
    pub fn priority(mut self, priority: u32) -> Self {
        self.priority = priority;
        self
    }

    /// Lease timing. Default [`ElectionConfig::lan`].
    pub fn config(mut self, config: ElectionConfig) -> Self {
        self.options.config = config;
        self
    }

    /// Keeps promises in `dir` (created if missing). Without it they are
    /// kept in memory, which is **not safe across restarts** (see
    /// [`ElectionOptions::data_dir`]): a voter of a production cluster needs
    /// a directory that survives them.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.options.data_dir = Some(dir.into());
        self
    }

    /// Runs `hook` on every promise before its grant leaves, and sends what
    /// it returns with the grant (see [`PromiseHook`]): for a replicated log
    /// beside the election. Open the log before [`Bound::start`], so that
    /// even the first grant carries its durable summary.
    pub fn promise_hook(mut self, hook: Arc<dyn PromiseHook>) -> Self {
        self.options.hook = Some(hook);
        self
    }

    /// Starts withdrawn for `reason` when it is `Some` (see
    /// [`Election::withdraw`]): the node follows but neither votes nor leads
    /// until [`Election::rejoin`].
    pub fn withdrawn(mut self, reason: Option<String>) -> Self {
        self.options.withdrawn = reason;
        self
    }
}
