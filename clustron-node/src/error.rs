//! Why a node could not start. Each variant names the step that failed; a
//! failure after joining has already left the cluster again.

use std::net::SocketAddr;

/// A node that did not start, and at which step.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The port could not be opened (address in use, bad configuration, a
    /// certificate that is not a node's). Nothing was joined.
    #[error("listening on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// What the transport said.
        source: clustron_transport::Error,
    },
    /// A voter name is not a valid node name. Nothing was started.
    #[error("voter {name:?}: {source}")]
    VoterName {
        /// The name given.
        name: String,
        /// Why it is not valid.
        source: clustron_transport::CertError,
    },
    /// Joining through the seeds failed (or timed out, or was refused).
    #[error("joining the cluster: {0}")]
    Join(#[source] clustron_membership::Error),
    /// The election did not start (its storage, most likely); the node has
    /// left the cluster again.
    #[cfg(feature = "election")]
    #[error("starting the election: {0}")]
    Election(#[source] clustron_election::DriverError),
    /// The event bus did not start; the node has left the cluster again.
    #[cfg(feature = "events")]
    #[error("starting the event bus: {0}")]
    Events(#[source] clustron_events::BusError),
}
