//! [`Node`]: the running layers of one node, and how it stops.

use std::net::SocketAddr;
use std::time::Duration;

#[cfg(feature = "election")]
use clustron_election::{Election, ToLeader};
#[cfg(feature = "events")]
use clustron_events::EventBus;
use clustron_membership::{Membership, NodeName};
use clustron_transport::Endpoint;
#[cfg(feature = "election")]
use clustron_transport::Protocol;

use crate::builder::NodeBuilder;

/// How long [`Node::leave`] waits for the successor to lead after this node
/// stepped down: a handover takes one round trip when the successor hears
/// the release, at most a lease (600 ms on a LAN) when it does not.
pub const HANDOVER_WAIT: Duration = Duration::from_secs(2);

/// How long [`Node::leave`] waits for the graceful leave to be passed on
/// (membership stops by itself after its own `leave_timeout`, 2 s on a LAN).
pub const LEAVE_WAIT: Duration = Duration::from_secs(3);

/// A running node: its endpoint, membership, and the election and event
/// bus if it runs them. Cheap to clone (every part is a handle).
#[derive(Debug, Clone)]
pub struct Node {
    pub(crate) name: NodeName,
    pub(crate) endpoint: Endpoint,
    pub(crate) membership: Membership,
    #[cfg(feature = "election")]
    pub(crate) election: Option<Election>,
    #[cfg(feature = "events")]
    pub(crate) bus: Option<EventBus>,
}

impl Node {
    /// A builder for a node with `identity` (see [`NodeBuilder`]).
    pub fn builder(identity: clustron_transport::TlsIdentity) -> NodeBuilder {
        NodeBuilder::new(identity)
    }

    /// This node's name (from its certificate).
    pub fn name(&self) -> &NodeName {
        &self.name
    }

    /// Where this node listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.endpoint.local_addr()
    }

    /// The transport: register the product's channels here (before
    /// joining, through [`crate::Bound::endpoint`], when peers may call at
    /// once).
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Membership: members, changes, tags.
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// The election, if this node runs one.
    #[cfg(feature = "election")]
    pub fn election(&self) -> Option<&Election> {
        self.election.as_ref()
    }

    /// The event bus, if this node runs one.
    #[cfg(feature = "events")]
    pub fn events(&self) -> Option<&EventBus> {
        self.bus.as_ref()
    }

    /// Sends protocol `P`'s requests to the leader (see
    /// [`clustron_election::route`]); `None` if this node runs no election.
    #[cfg(feature = "election")]
    pub fn to_leader<P: Protocol>(&self) -> Option<ToLeader<P>> {
        let election = self.election.as_ref()?;
        Some(ToLeader::new(election, self.endpoint.channel::<P>()))
    }

    /// Stops gracefully, in this order:
    ///
    /// 1. a leader steps down and hands over to the best other live voter,
    ///    then waits up to [`HANDOVER_WAIT`] to see another node lead, so
    ///    no request waits a whole lease for a new leader;
    /// 2. the election stops (this node no longer votes);
    /// 3. the event bus stops;
    /// 4. membership leaves gracefully: every member hears "left", not
    ///    "failed" (bounded by [`LEAVE_WAIT`]);
    /// 5. the port closes (peers' connections close at once).
    ///
    /// The product stops its own parts that use the cluster first (stop
    /// taking work; a replicated log flushes), then calls this. What fails
    /// on the way is logged, not returned: the node stops anyway.
    pub async fn leave(&self) {
        #[cfg(feature = "election")]
        if let Some(election) = &self.election {
            hand_over(&self.name, election, &self.membership).await;
            election.shutdown().await;
        }
        #[cfg(feature = "events")]
        if let Some(bus) = &self.bus {
            bus.shutdown().await;
        }
        leave_membership(&self.membership).await;
        self.endpoint.close().await;
    }

    /// Stops at once without a word to anyone, like `kill -9`: for tests of
    /// failure. Others see this node fail (and, if it led, elect another
    /// leader once its lease has run out).
    pub async fn kill(&self) {
        #[cfg(feature = "events")]
        if let Some(bus) = &self.bus {
            bus.shutdown().await;
        }
        #[cfg(feature = "election")]
        if let Some(election) = &self.election {
            election.shutdown().await;
        }
        self.membership.shutdown().await;
        self.endpoint.close().await;
    }
}

/// Steps down if this node leads, and waits a little for the successor
/// (if another voter is alive to be one).
#[cfg(feature = "election")]
async fn hand_over(me: &NodeName, election: &Election, membership: &Membership) {
    if election.lease().is_none() {
        return;
    }
    tracing::info!("handing leadership over before leaving");
    if let Err(e) = election.step_down().await {
        tracing::warn!(error = %e, "could not step down");
        return;
    }
    let voters = election.voters();
    let members = membership.members().await.unwrap_or_default();
    let successor_alive = members
        .iter()
        .any(|m| m.name != *me && m.state.is_live() && voters.contains(&m.name));
    if !successor_alive {
        return;
    }
    let mut leader = election.leader_feed();
    let successor = tokio::time::timeout(HANDOVER_WAIT, async {
        loop {
            let other = leader
                .borrow_and_update()
                .as_ref()
                .is_some_and(|(name, _)| name != me);
            if other || leader.changed().await.is_err() {
                return;
            }
        }
    })
    .await;
    if successor.is_err() {
        tracing::warn!("no successor seen within {HANDOVER_WAIT:?}; leaving anyway");
    }
}

/// Leaves gracefully, bounded by [`LEAVE_WAIT`].
pub(crate) async fn leave_membership(membership: &Membership) {
    match tokio::time::timeout(LEAVE_WAIT, membership.leave()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "leave failed"),
        Err(_) => tracing::warn!("leave did not complete within {LEAVE_WAIT:?}"),
    }
}
