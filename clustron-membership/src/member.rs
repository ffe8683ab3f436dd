//! Member records: who is in the cluster and in what state.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

pub use clustron_transport::PeerName as NodeName;

/// A member's incarnation: only the member itself raises it, to refute a
/// suspicion or to announce new metadata. Higher wins.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Incarnation(pub u64);

impl fmt::Display for Incarnation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A leadership term, issued by `clustron-election` (which re-exports this
/// type as `clustron_election::Epoch`). Epochs only grow; each has at most
/// one leader, and it is the fencing token: receivers reject anything older
/// than the newest epoch they have seen.
///
/// Defined here, below the election, so that a layer beside it (the event
/// bus, which reports leaders) can name it without depending on the
/// election.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Epoch(pub u64);

impl Epoch {
    /// The epoch after this one.
    pub fn next(self) -> Self {
        Self(self.0.saturating_add(1))
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Where a member stands, as this node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MemberState {
    /// Answering probes.
    Alive,
    /// A probe failed; it has until the suspicion timeout to refute.
    Suspect,
    /// Declared failed; only a higher incarnation brings it back.
    Dead,
    /// Left gracefully.
    Left,
}

impl MemberState {
    /// Lower-case name, as in JSON and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Alive => "alive",
            MemberState::Suspect => "suspect",
            MemberState::Dead => "dead",
            MemberState::Left => "left",
        }
    }

    /// Alive or suspect: still counted as a member that may answer.
    pub fn is_live(self) -> bool {
        matches!(self, MemberState::Alive | MemberState::Suspect)
    }
}

impl fmt::Display for MemberState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One member of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Unique name (from its certificate).
    pub name: NodeName,
    /// Where it listens (UDP, QUIC).
    pub addr: SocketAddr,
    /// Election priority: higher is preferred (see [`crate::Options::priority`]).
    pub priority: u32,
    /// Whether it may vote in elections (false for learners).
    pub voter: bool,
    /// Free-form metadata.
    pub tags: BTreeMap<String, String>,
    /// Metadata version: raised with every tag or role change.
    pub version: u64,
    /// See [`Incarnation`].
    pub incarnation: Incarnation,
    /// Alive, suspect, dead or left.
    pub state: MemberState,
}

impl Member {
    /// A new alive member at incarnation 0.
    pub fn new(name: NodeName, addr: SocketAddr) -> Self {
        Self {
            name,
            addr,
            priority: 0,
            voter: true,
            tags: BTreeMap::new(),
            version: 0,
            incarnation: Incarnation(0),
            state: MemberState::Alive,
        }
    }

    /// Same metadata (address, priority, role, tags)?
    pub(crate) fn same_metadata(&self, other: &Member) -> bool {
        self.addr == other.addr
            && self.priority == other.priority
            && self.voter == other.voter
            && self.tags == other.tags
    }
}

/// A change in membership, as delivered to subscribers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberEvent {
    /// A member appeared (or came back after being dead or gone).
    Joined(Member),
    /// A member's metadata changed.
    Updated(Member),
    /// A member is suspected of having failed.
    Suspect(Member),
    /// A suspected member refuted the suspicion.
    Alive(Member),
    /// A member was declared failed.
    Failed(Member),
    /// A member left gracefully.
    Left(Member),
}

impl MemberEvent {
    /// The member the event is about.
    pub fn member(&self) -> &Member {
        match self {
            MemberEvent::Joined(m)
            | MemberEvent::Updated(m)
            | MemberEvent::Suspect(m)
            | MemberEvent::Alive(m)
            | MemberEvent::Failed(m)
            | MemberEvent::Left(m) => m,
        }
    }

    /// Lower-case kind: joined, updated, suspect, alive, failed, left.
    pub fn kind(&self) -> &'static str {
        match self {
            MemberEvent::Joined(_) => "joined",
            MemberEvent::Updated(_) => "updated",
            MemberEvent::Suspect(_) => "suspect",
            MemberEvent::Alive(_) => "alive",
            MemberEvent::Failed(_) => "failed",
            MemberEvent::Left(_) => "left",
        }
    }
}
