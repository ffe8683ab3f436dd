//! Voter changes of the log, as an operator asks for them: who may be
//! added or removed, and what the leader reports about each replica.
//!
//! The change itself is the election's (`clustron_election::Election::add_voter`,
//! `remove_voter`): one voter more or less, accepted durably by a majority
//! of the current set before it counts, versioned, finished by the next
//! leader if this one dies half-way. The log adopts every decided set
//! ([`crate::core::replication::Replica::set_voters`]), in order with the
//! leadership events, so the log's commit rule and the election's grant
//! counting use the same set, or sets one change apart, whose majorities
//! always intersect. [`check`] is what the leader refuses before asking the
//! election, as a pure function:
//!
//! - a second change while one is pending (the election's, or one the
//!   log has not adopted yet);
//! - adding a node that is not a member, not alive, or too far behind
//!   (it would hold up commits while it catches up; let it catch up as a
//!   learner first);
//! - any change after which the live members of the new set are no
//!   majority of it (removing a live voter while another is down);
//! - removing the leader itself is not refused but done in two steps: the
//!   leader hands leadership over ([`Plan::StepDownFirst`]) and the next
//!   leader removes it when the request is retried there.
//!
//! # Example
//!
//! ```
//! use std::collections::BTreeSet;
//! use clustron_election::NodeName;
//! use clustron_log::voters::{check, Context, Plan, VoterChange, VoterChangeError};
//!
//! let n = |s: &str| NodeName::new(s).unwrap();
//! let voters: BTreeSet<_> = [n("a"), n("b"), n("c")].into();
//! let live: BTreeSet<_> = [n("a"), n("b"), n("d")].into();
//! let ctx = Context { me: &n("a"), voters: &voters, live: &live, members: &live,
//!                     pending: false, learner_lag: Some(0), max_lag: 1000 };
//! // Removing the dead voter leaves {a, b}, both alive.
//! assert_eq!(check(&VoterChange::Remove(n("c")), &ctx), Ok(Plan::Change));
//! // Removing b would leave {a, c} with only a alive.
//! assert!(matches!(check(&VoterChange::Remove(n("b")), &ctx),
//!                  Err(VoterChangeError::NoLiveMajority { .. })));
//! ```

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;

use clustron_election::NodeName;

/// One voter more or less.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VoterChange {
    /// Make this member a voter (a learner keeps its log position).
    Add(NodeName),
    /// Make this voter a learner (it keeps receiving the log while alive).
    Remove(NodeName),
}

impl VoterChange {
    /// The node the change is about.
    pub fn name(&self) -> &NodeName {
        match self {
            Self::Add(name) | Self::Remove(name) => name,
        }
    }
}

/// A replica's part in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaRole {
    /// Counts for commit and may lead.
    Voter,
    /// Receives the log, never counts.
    Learner,
}

impl fmt::Display for ReplicaRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Voter => "voter",
            Self::Learner => "learner",
        })
    }
}

/// One replica as the leader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaStatus {
    /// Its name.
    pub name: NodeName,
    /// Voter or learner.
    pub role: ReplicaRole,
    /// For the leader: the index its state machine applied. For another
    /// replica: the highest committed index the leader knows it holds
    /// durably (what it can apply; it may not have applied it yet).
    pub applied_index: u64,
    /// Committed entries it is not known to hold: the leader's commit
    /// index minus `applied_index`.
    pub lag: u64,
}

/// What the leader knows when it checks a change ([`check`]).
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// This node (the leader).
    pub me: &'a NodeName,
    /// The decided voter set.
    pub voters: &'a BTreeSet<NodeName>,
    /// Members alive in membership and not withdrawn from the election
    /// (this node included).
    pub live: &'a BTreeSet<NodeName>,
    /// Every member membership knows, in any state.
    pub members: &'a BTreeSet<NodeName>,
    /// A change is still pending (the election's, or the log has not
    /// adopted the last decided set yet).
    pub pending: bool,
    /// For an add: how many committed entries the node is behind, if the
    /// leader replicates to it (as a learner); `None` if it does not.
    pub learner_lag: Option<u64>,
    /// The most entries behind a node may be to be added.
    pub max_lag: u64,
}

/// What the leader does with an accepted request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Ask the election for the change.
    Change,
    /// The leader is the voter to remove: it hands leadership over first;
    /// the request, retried at the next leader, removes it.
    StepDownFirst,
}

/// Why a voter change was refused. Nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VoterChangeError {
    /// Only the leader changes voters: ask it (name and address, if known).
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The leader this node knows of.
        leader: Option<(NodeName, SocketAddr)>,
    },
    /// Another change has not completed yet: retry once it has (`clustron
    /// voters` shows the decided set).
    #[error("another voter change is still in progress; retry once it has completed")]
    InProgress,
    /// No member of that name: start the node (with the cluster's seeds)
    /// first; it joins as a learner and catches up.
    #[error("{0} is not a member of the cluster: start it first (it joins as a learner)")]
    UnknownMember(NodeName),
    /// The member is not alive (or has withdrawn from the election).
    #[error("{0} is not alive (or has withdrawn from the election); only a live member can become a voter")]
    NotAlive(NodeName),
    /// It is a voter already.
    #[error("{0} is already a voter")]
    AlreadyVoter(NodeName),
    /// It is not a voter.
    #[error("{0} is not a voter")]
    NotAVoter(NodeName),
    /// After the change the live voters would be no majority of the set:
    /// the cluster could not elect or commit.
    #[error("refused: after the change {live} of the {voters} voters would be alive, and a majority needs {needed}")]
    NoLiveMajority {
        /// Voters after the change.
        voters: usize,
        /// Of them alive.
        live: usize,
        /// A majority of them.
        needed: usize,
    },
    /// The node is too far behind (or not yet receiving the log): adding
    /// it now would hold up commits while it catches up. Retry once
    /// `clustron voters` shows it caught up.
    #[error("{name} is {} behind the leader; wait until it has caught up as a learner", match lag { Some(lag) => format!("{lag} entries"), None => "not yet replicating, so maybe far".to_owned() })]
    NotCaughtUp {
        /// The node.
        name: NodeName,
        /// How far behind, if known.
        lag: Option<u64>,
    },
    /// The leader was the voter to remove: it handed leadership over, and
    /// the next leader removes it when the request is retried there.
    #[error("{0} led: it handed leadership over; retry at the next leader, which removes it")]
    SteppedDown(NodeName),
    /// The election refused or has stopped.
    #[error("the election refused the change: {0}")]
    Election(String),
    /// The change was asked for but not seen decided in time: it may still
    /// take effect (`clustron voters` shows the decided set).
    #[error("the change to voter set version {version} was not decided in time; it may still take effect")]
    Timeout {
        /// The version the change would give the set.
        version: u64,
    },
}

/// Whether the leader may make `change` now, and how ([`Plan`]). Pure: the
/// caller gathers the [`Context`].
pub fn check(change: &VoterChange, ctx: &Context<'_>) -> Result<Plan, VoterChangeError> {
    if ctx.pending {
        return Err(VoterChangeError::InProgress);
    }
    let mut after = ctx.voters.clone();
    match change {
        VoterChange::Add(name) => {
            if ctx.voters.contains(name) {
                return Err(VoterChangeError::AlreadyVoter(name.clone()));
            }
            if !ctx.members.contains(name) {
                return Err(VoterChangeError::UnknownMember(name.clone()));
            }
            if !ctx.live.contains(name) {
                return Err(VoterChangeError::NotAlive(name.clone()));
            }
            match ctx.learner_lag {
                Some(lag) if lag <= ctx.max_lag => {}
                lag => {
                    return Err(VoterChangeError::NotCaughtUp {
                        name: name.clone(),
                        lag,
                    })
                }
            }
            after.insert(name.clone());
        }
        VoterChange::Remove(name) => {
            if !ctx.voters.contains(name) {
                return Err(VoterChangeError::NotAVoter(name.clone()));
            }
            after.remove(name);
        }
    }
    let live = after.iter().filter(|v| ctx.live.contains(*v)).count();
    let needed = after.len() / 2 + 1;
    if after.is_empty() || live < needed {
        return Err(VoterChangeError::NoLiveMajority {
            voters: after.len(),
            live,
            needed,
        });
    }
    match change {
        VoterChange::Remove(name) if name == ctx.me => Ok(Plan::StepDownFirst),
        _ => Ok(Plan::Change),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> NodeName {
        NodeName::new(s).expect("a valid test name")
    }

    fn set(names: &[&str]) -> BTreeSet<NodeName> {
        names.iter().map(|s| n(s)).collect()
    }

    /// One row: voters, live, members, pending, learner lag, the change,
    /// the expected outcome.
    #[allow(clippy::type_complexity)]
    fn row(
        voters: &[&str],
        live: &[&str],
        members: &[&str],
        pending: bool,
        lag: Option<u64>,
        change: VoterChange,
    ) -> Result<Plan, VoterChangeError> {
        let (voters, live, members) = (set(voters), set(live), set(members));
        let me = n("a");
        check(
            &change,
            &Context {
                me: &me,
                voters: &voters,
                live: &live,
                members: &members,
                pending,
                learner_lag: lag,
                max_lag: 100,
            },
        )
    }

    #[test]
    fn voter_changes_are_refused_exactly_when_unsafe_or_impossible() {
        use VoterChange::{Add, Remove};
        let abc = ["a", "b", "c"];
        let all = ["a", "b", "c", "d"];
        // Adding a caught-up live learner.
        assert_eq!(
            row(&abc, &all, &all, false, Some(0), Add(n("d"))),
            Ok(Plan::Change)
        );
        // A second change while one is pending.
        assert_eq!(
            row(&abc, &all, &all, true, Some(0), Add(n("d"))),
            Err(VoterChangeError::InProgress)
        );
        assert_eq!(
            row(&abc, &all, &all, false, Some(0), Add(n("b"))),
            Err(VoterChangeError::AlreadyVoter(n("b")))
        );
        assert_eq!(
            row(&abc, &all, &all, false, None, Add(n("x"))),
            Err(VoterChangeError::UnknownMember(n("x")))
        );
        // d is a member but dead.
        assert_eq!(
            row(&abc, &abc, &all, false, None, Add(n("d"))),
            Err(VoterChangeError::NotAlive(n("d")))
        );
        assert_eq!(
            row(&abc, &all, &all, false, Some(101), Add(n("d"))),
            Err(VoterChangeError::NotCaughtUp {
                name: n("d"),
                lag: Some(101)
            })
        );
        // Two of three voters dead: adding d gives 2 live of 4 (3 needed).
        assert_eq!(
            row(&abc, &["a", "d"], &all, false, Some(0), Add(n("d"))),
            Err(VoterChangeError::NoLiveMajority {
                voters: 4,
                live: 2,
                needed: 3
            })
        );
        // Removing the dead voter is fine; removing a live one while
        // another is dead is not.
        assert_eq!(
            row(&abc, &["a", "b"], &all, false, None, Remove(n("c"))),
            Ok(Plan::Change)
        );
        assert_eq!(
            row(&abc, &["a", "b"], &all, false, None, Remove(n("b"))),
            Err(VoterChangeError::NoLiveMajority {
                voters: 2,
                live: 1,
                needed: 2
            })
        );
        assert_eq!(
            row(&abc, &all, &all, false, None, Remove(n("d"))),
            Err(VoterChangeError::NotAVoter(n("d")))
        );
        // Removing the leader: it steps down first.
        assert_eq!(
            row(&abc, &all, &all, false, None, Remove(n("a"))),
            Ok(Plan::StepDownFirst)
        );
        // The last voter is never removed.
        assert_eq!(
            row(&["a"], &all, &all, false, None, Remove(n("a"))),
            Err(VoterChangeError::NoLiveMajority {
                voters: 0,
                live: 0,
                needed: 1
            })
        );
    }
}
