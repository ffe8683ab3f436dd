//! Typed errors of the transport.
//!
//! Errors fall in three groups, kept apart so callers can react without
//! parsing strings: configuration and certificate errors (fatal, fix the
//! input), connection errors (retry later, maybe against another address) and
//! stream errors (this one exchange failed; the connection is still usable).

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Anything the transport can fail with.
///
/// A failing call leaves the endpoint and its connection cache usable: an
/// error on one stream never closes the connection it ran on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration was refused before anything was bound.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// A certificate or key could not be created, read or used.
    #[error(transparent)]
    Cert(#[from] CertError),
    /// The UDP socket could not be bound.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address we tried to bind.
        addr: SocketAddr,
        /// What the operating system said.
        source: io::Error,
    },
    /// The TLS handshake with `addr` failed: a foreign CA, an expired or
    /// wrongly typed certificate, or no certificate at all. Retrying will not
    /// help until the certificates change.
    #[error("handshake with {addr} refused: {reason}")]
    Handshake {
        /// The remote address.
        addr: SocketAddr,
        /// Why, in words (from rustls or from the remote's close reason).
        reason: String,
    },
    /// The remote accepted the handshake and then refused us, e.g. a client
    /// certificate used to join as a node.
    #[error("{addr} refused the connection: {reason}")]
    Refused {
        /// The remote address.
        addr: SocketAddr,
        /// The reason the remote gave.
        reason: String,
    },
    /// No connection could be made to `addr` in time.
    #[error("cannot reach {addr}: {reason}")]
    Unreachable {
        /// The remote address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// An earlier attempt to reach `addr` failed and the reconnect backoff
    /// has not run out. Retry after `retry_in`.
    #[error("{addr} is in reconnect backoff for another {retry_in:?}")]
    Backoff {
        /// The remote address.
        addr: SocketAddr,
        /// How long until the next dial is allowed.
        retry_in: Duration,
    },
    /// The connection to `addr` was lost while the call was in flight. The
    /// remote may or may not have processed a request.
    #[error("connection to {addr} lost: {reason}")]
    ConnectionLost {
        /// The remote address.
        addr: SocketAddr,
        /// Why, as quinn reports it.
        reason: String,
    },
    /// No stream could be opened to `addr` within `waited`: every stream
    /// the remote allows on the connection is in use (long-lived watches,
    /// or that many requests in flight). Nothing was sent; the connection
    /// stays usable and a later call succeeds once a stream ends.
    #[error("cannot open a stream to {addr}: every stream it allows on this connection is in use (waited {waited:?}); nothing was sent")]
    StreamsExhausted {
        /// The remote address.
        addr: SocketAddr,
        /// How long the call waited for a stream.
        waited: Duration,
    },
    /// The call did not complete within the configured timeout.
    #[error("{what} to {addr} timed out after {after:?}")]
    Timeout {
        /// What timed out ("request", "connect", ...).
        what: &'static str,
        /// The remote address.
        addr: SocketAddr,
        /// The timeout that ran out.
        after: Duration,
    },
    /// A frame or stream was refused by the codec, locally or remotely.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The message could not be encoded (e.g. it is over the frame size
    /// limit): refused locally, nothing was sent.
    #[error("not sent: {0}")]
    Encode(FrameError),
    /// The remote has no handler for the channel we used.
    #[error("{addr} has no handler for channel {channel}")]
    UnknownChannel {
        /// The remote address.
        addr: SocketAddr,
        /// The channel we used.
        channel: crate::ChannelId,
    },
    /// The remote's handler refused the request with a reason.
    #[error("{addr} rejected the request: {reason}")]
    Rejected {
        /// The remote address.
        addr: SocketAddr,
        /// The handler's reason.
        reason: String,
    },
    /// A datagram was larger than the path allows.
    #[error("datagram of {size} bytes exceeds the path maximum of {max} bytes")]
    DatagramTooLarge {
        /// Encoded size.
        size: usize,
        /// What the connection allows now.
        max: usize,
    },
    /// A channel was registered twice on one endpoint.
    #[error("channel {0} already has a handler on this endpoint")]
    ChannelTaken(crate::ChannelId),
    /// The endpoint was closed.
    #[error("endpoint closed")]
    Closed,
}

impl Error {
    /// Whether the call certainly never reached the remote's handler (no
    /// connection, refused before the call, rejected unprocessed), so that
    /// retrying a non-idempotent request elsewhere cannot apply it twice.
    /// `false` when the remote may have processed it (a lost connection or a
    /// request timeout).
    pub fn nothing_processed(&self) -> bool {
        match self {
            Error::Timeout { what, .. } => *what == "connect",
            Error::Config(_)
            | Error::Cert(_)
            | Error::Bind { .. }
            | Error::Handshake { .. }
            | Error::Refused { .. }
            | Error::Unreachable { .. }
            | Error::Backoff { .. }
            | Error::UnknownChannel { .. }
            | Error::Rejected { .. }
            | Error::DatagramTooLarge { .. }
            | Error::ChannelTaken(_)
            | Error::Encode(_)
            | Error::StreamsExhausted { .. }
            | Error::Closed => true,
            Error::ConnectionLost { .. } | Error::Frame(_) => false,
        }
    }

    /// The same failure, seen before a request has left: a connection that
    /// was refused or lost while dialing or opening the stream (a peer that
    /// is shutting down refuses new connections) cannot have delivered
    /// anything, so it counts as unreachable.
    pub(crate) fn before_sending(self) -> Error {
        match self {
            Error::ConnectionLost { addr, reason } => Error::Unreachable {
                addr,
                reason: format!("{reason}, before the request was sent"),
            },
            other => other,
        }
    }

    /// The same failure, seen after a request has left: a connection that
    /// is unreachable or closed now (an idle timeout, say) may well have
    /// delivered it first, so it counts as lost, not as never sent.
    pub(crate) fn after_sending(self) -> Error {
        match self {
            Error::Unreachable { addr, reason } => Error::ConnectionLost {
                addr,
                reason: format!("{reason}, after the request was sent"),
            },
            other => other,
        }
    }
}

/// Why a frame or a stream was refused by the codec.
///
/// Each variant maps to a QUIC stream error code (see [`crate::codes`]) so the
/// remote end learns the same reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The length prefix announced more than the configured maximum; nothing
    /// was allocated for it.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// Announced (or encoded) length.
        len: u64,
        /// Configured maximum.
        max: usize,
    },
    /// The bytes did not decode as the expected type.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame")]
    Truncated,
    /// The stream header named a protocol version we do not speak.
    #[error("unsupported wire version {0}")]
    UnsupportedVersion(u8),
    /// The stream header named an unknown stream kind.
    #[error("unknown stream kind {0}")]
    UnknownKind(u8),
    /// The remote reset the stream with this error code.
    #[error("stream reset by the remote: {}", crate::codes::describe(*.0))]
    RemoteReset(u64),
    /// The stream failed at the QUIC level.
    #[error("stream failed: {0}")]
    Stream(String),
}

/// Errors creating, loading or saving certificates and keys.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// A name is empty, too long, or has characters outside `[A-Za-z0-9._-]`.
    #[error("invalid name {name:?}: {why}")]
    InvalidName {
        /// The refused name.
        name: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// rcgen could not build or sign the certificate.
    #[cfg(feature = "certs")]
    #[error("cannot generate certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// A PEM file holds no usable certificate or key.
    #[error("{path}: {why}")]
    BadPem {
        /// The file (or `<memory>`).
        path: PathBuf,
        /// What was wrong.
        why: String,
    },
    /// A certificate has no Clustron identity (`urn:clustron:...` name).
    #[error("certificate has no clustron identity: {0}")]
    NoIdentity(String),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// A client certificate was given where a node certificate is needed.
    #[error("{0} cannot run a node: a node certificate is needed")]
    NotANode(crate::identity::PeerIdentity),
    /// rustls refused the certificate or key.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn only_failures_before_the_remote_handler_count_as_nothing_processed() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap_or_else(|_| unreachable!());
        let timeout = |what| Error::Timeout {
            what,
            addr,
            after: Duration::from_secs(1),
        };
        assert!(timeout("connect").nothing_processed());
        assert!(!timeout("request").nothing_processed());
        let lost = Error::ConnectionLost {
            addr,
            reason: "reset".into(),
        };
        assert!(!lost.nothing_processed());
        let unreachable = Error::Unreachable {
            addr,
            reason: "no route".into(),
        };
        assert!(unreachable.nothing_processed());
        assert!(Error::Backoff {
            addr,
            retry_in: Duration::from_millis(50)
        }
        .nothing_processed());
    }
}
