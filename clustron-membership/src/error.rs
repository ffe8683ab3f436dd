//! Errors of the membership layer.

use std::net::SocketAddr;
use std::time::Duration;

/// What starting or using membership can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration was refused; nothing was started.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The transport refused (e.g. the membership channel is taken).
    #[error(transparent)]
    Transport(#[from] clustron_transport::Error),
    /// A seed refused our join, e.g. because our name is in use. Fatal:
    /// fix the name or wait for the old holder to be declared dead.
    #[error("join refused by {by}: {reason}")]
    JoinRefused {
        /// The refusing member.
        by: String,
        /// Its reason.
        reason: String,
    },
    /// No seed answered in time. Retry later or check the seed list.
    #[error("no seed of {seeds:?} answered within {after:?}")]
    JoinTimeout {
        /// The seeds tried.
        seeds: Vec<SocketAddr>,
        /// How long we waited.
        after: Duration,
    },
    /// The membership task has stopped (after leave or shutdown).
    #[error("membership has stopped")]
    Stopped,
}
