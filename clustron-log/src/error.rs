//! The crate's errors: what a proposal can fail with, and why the log
//! could not start.

use std::net::SocketAddr;
use std::path::PathBuf;

use clustron_election::NodeName;

use crate::core::ProposeError;

/// Why a proposal (or a read) failed. "Retry elsewhere" ([`Error::NotLeader`],
/// [`Error::NotReady`]) and "definitely not applied" ([`Error::Lost`]) are
/// kept apart from "outcome unknown" ([`Error::LeaderChanged`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// This node does not lead: propose at `leader` (name and address, if
    /// known) instead. Nothing was proposed.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The leader this node knows of.
        leader: Option<(NodeName, SocketAddr)>,
    },
    /// This node leads but is still catching up on the log (or has not yet
    /// committed its first entry): retry shortly. Nothing was proposed.
    #[error("the leader is catching up on the log; retry shortly")]
    NotReady,
    /// The entry is larger than the log accepts. Nothing was proposed.
    #[error("entry of {len} bytes is above the limit of {max}")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Another leader's entry replaced this one before it committed: it
    /// was not applied and never will be. Safe to retry.
    #[error("the entry was lost in a leader change and not applied; retry")]
    Lost,
    /// This node stopped leading before the entry committed: it may or may
    /// not apply (under the next leader). Retry only if applying twice is
    /// harmless.
    #[error("the leader changed before the entry committed; outcome unknown")]
    LeaderChanged,
    /// The log on this node has stopped (its write-ahead log failed, or the
    /// node was shut down): use another node.
    #[error("the log on this node has stopped: {0}")]
    Stopped(String),
}

impl From<ProposeError> for Error {
    fn from(e: ProposeError) -> Self {
        match e {
            ProposeError::NotLeader { leader } => Self::NotLeader { leader },
            ProposeError::NotReady { .. } => Self::NotReady,
            ProposeError::TooLarge { len, max } => Self::TooLarge { len, max },
        }
    }
}

/// Why the log could not open or start. Nothing was joined or changed on
/// disk beyond cutting a torn tail.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The write-ahead log or its high-water mark.
    #[error(transparent)]
    Wal(#[from] crate::wal::WalError),
    /// The epoch file.
    #[error("log epoch file {path}: {source}")]
    Epoch {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The transport channel.
    #[error(transparent)]
    Transport(#[from] clustron_transport::Error),
    /// Bad replication settings.
    #[error(transparent)]
    Config(#[from] crate::core::ConfigError),
    /// The snapshots could not be read, or the newest valid one does not
    /// restore the state machine.
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::SnapshotError),
    /// The node was started without an election (the log follows its leader).
    #[error(
        "the node has no election: start it with `Elect` (the log follows the election's leader)"
    )]
    NoElection,
}
