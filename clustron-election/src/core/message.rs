//! Messages between election cores. Every message carries an epoch.

use std::time::Duration;

use clustron_membership::NodeName;
use serde::{Deserialize, Serialize};

use crate::voters::{Epoch, VoterSet};

/// An election message. `from` is the sender's name; the driver checks it
/// against the certificate of the connection it came on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// A candidate or leader asks a voter for a lease on `epoch`.
    Request {
        /// The epoch asked for.
        epoch: Epoch,
        /// The candidate.
        from: NodeName,
        /// Identifies this request among the candidate's requests.
        seq: u64,
    },
    /// A voter grants the lease; its promise is already on disk.
    Grant {
        /// The epoch granted.
        epoch: Epoch,
        /// The voter.
        from: NodeName,
        /// The request answered.
        seq: u64,
        /// The voter's opaque summary from the layer above.
        summary: Vec<u8>,
        /// A voter set the voter accepted but has not seen decided, if any:
        /// a new leader finishes it before anything else.
        pending: Option<VoterSet>,
        /// The voter's decided set: a candidate that knows an older one
        /// adopts it and counts its grants against it, so a node that
        /// missed two or more changes cannot win by a majority of a set
        /// no longer in force (two sets more than one change apart need
        /// not intersect).
        voters: VoterSet,
        /// The epoch of the leader that proposed `pending`: of two pending
        /// sets at one version, the one proposed at the higher epoch wins.
        pending_epoch: Epoch,
    },
    /// A voter refuses.
    Reject {
        /// The epoch asked for.
        epoch: Epoch,
        /// The voter.
        from: NodeName,
        /// The request answered.
        seq: u64,
        /// The newest epoch the voter promised or saw.
        promised: Epoch,
        /// Who holds the voter's current promise, if anyone.
        holder: Option<NodeName>,
        /// When the blocking promise runs out, if that is why: ask again then.
        retry_after: Option<Duration>,
    },
    /// The leader's periodic announcement.
    Announce {
        /// The leader's epoch.
        epoch: Epoch,
        /// The leader.
        leader: NodeName,
        /// The leader's decided voter set.
        voters: VoterSet,
    },
    /// A leader gave up its lease (handover, step-down): voters may drop
    /// their promise to it for `epoch`, and `to`, if named, should campaign.
    Release {
        /// The epoch given up.
        epoch: Epoch,
        /// The old leader.
        from: NodeName,
        /// The chosen successor.
        to: Option<NodeName>,
        /// An operator's choice (`transfer_to`, `step_down`) rather than a
        /// priority handover: nodes that see it do not claim leadership
        /// from the successor.
        chosen: bool,
    },
    /// A follower that outranks the leader by priority tells it it is live
    /// (in answer to an announcement): the leader hands over once the claims
    /// have kept coming for `handover_delay`.
    Claim {
        /// The leader's epoch.
        epoch: Epoch,
        /// The claimant.
        from: NodeName,
    },
    /// The leader proposes the next voter set.
    ProposeVoters {
        /// The leader's epoch.
        epoch: Epoch,
        /// The leader.
        from: NodeName,
        /// The proposed set (version = current + 1).
        voters: VoterSet,
    },
    /// A voter has durably accepted a proposed voter set.
    VotersAccepted {
        /// The leader's epoch.
        epoch: Epoch,
        /// The voter.
        from: NodeName,
        /// The version accepted.
        version: u64,
    },
}

impl Message {
    /// The epoch the message carries.
    pub fn epoch(&self) -> Epoch {
        match self {
            Message::Request { epoch, .. }
            | Message::Grant { epoch, .. }
            | Message::Reject { epoch, .. }
            | Message::Announce { epoch, .. }
            | Message::Release { epoch, .. }
            | Message::Claim { epoch, .. }
            | Message::ProposeVoters { epoch, .. }
            | Message::VotersAccepted { epoch, .. } => *epoch,
        }
    }

    /// Encodes with postcard.
    pub fn encode(&self) -> Vec<u8> {
        // Invariant: every field serialises (no maps with non-string keys,
        // no unsized data), so postcard into a Vec cannot fail.
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// Decodes bytes from the network; bad bytes give an error, never a panic.
    pub fn decode(bytes: &[u8]) -> Result<Self, postcard::Error> {
        postcard::from_bytes(bytes)
    }

    /// Encoded size in bytes.
    pub fn encoded_len(&self) -> usize {
        postcard::experimental::serialized_size(self).unwrap_or(0)
    }
}
