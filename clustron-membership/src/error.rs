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
    /// No seed answered in time. Retry later or check the seed list (and
    /// `last_error`: a refused handshake means the certificates are wrong).
    #[error("no seed of {seeds:?} answered within {after:?}{}", last_error.as_ref().map(|e| format!("; last error: {e}")).unwrap_or_default())]
    JoinTimeout {
        /// The seeds tried.
        seeds: Vec<SocketAddr>,
        /// How long we waited.
        after: Duration,
        /// The last transport error seen while trying, if any.
        last_error: Option<String>,
    },
    /// The membership task has stopped (after leave or shutdown).
    #[error("membership has stopped")]
    Stopped,
}
