//! Errors of the election layer.

use clustron_membership::NodeName;

/// Why a command was refused. A refused command leaves the core unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Only the leader can do this. Retry at the leader, if one is known.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The leader this node knows of, as a redirect hint.
        leader: Option<NodeName>,
    },
    /// The node named is not a live voter in this node's view, so it cannot
    /// take over. Retry once membership sees it.
    #[error("{0} is not a live voter")]
    NotALiveVoter(NodeName),
    /// A voter-set change is still waiting for a majority of the old set.
    /// Retry when it has completed ([`crate::Output::VotersChanged`]).
    #[error("a voter change is already in progress")]
    ChangeInProgress,
    /// The node is already a voter.
    #[error("{0} is already a voter")]
    AlreadyVoter(NodeName),
    /// The node is not a voter.
    #[error("{0} is not a voter")]
    NotAVoter(NodeName),
    /// The leader cannot remove itself: transfer leadership first.
    #[error("the leader cannot remove itself; transfer leadership first")]
    RemovingLeader,
}
