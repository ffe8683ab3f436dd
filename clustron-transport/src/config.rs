//! Transport configuration.

use std::net::SocketAddr;
use std::time::Duration;

/// Default maximum frame size: 4 MiB, large enough for a DKV value with its
/// key and metadata, small enough that a hostile length prefix cannot make a
/// node allocate much.
pub const DEFAULT_MAX_FRAME: usize = 4 * 1024 * 1024;

/// How an endpoint binds, dials and bounds what it accepts.
///
/// Build one with [`TransportConfig::new`] or a preset, change fields, then
/// pass it to [`crate::Endpoint::bind`], which calls [`TransportConfig::validate`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TransportConfig {
    /// UDP address to listen on. Port 0 picks a free port.
    pub listen: SocketAddr,
    /// Largest frame, in bytes, that is sent or accepted. The length prefix is
    /// checked against it before anything is allocated. Range 64 B..=1 GiB.
    pub max_frame_size: usize,
    /// How long a dial (QUIC + TLS handshake) may take, and how long opening
    /// a stream may wait for the remote to allow one more (every stream it
    /// allows is in use: then the call fails with
    /// [`crate::Error::StreamsExhausted`], nothing sent). Default 1.5 s: a
    /// LAN handshake takes about a millisecond; anything close to this is a
    /// dead or unreachable peer, or streams that are not coming back. A dial
    /// with no answer after three [`TransportConfig::initial_rtt`]s is
    /// joined by a fresh handshake (and so on, a few at once), so one that
    /// started while the peer was cut off gets through soon after the heal.
    pub connect_timeout: Duration,
    /// How long a request may wait for its response. Default 10 s.
    pub request_timeout: Duration,
    /// A connection that hears nothing from its peer for this long is
    /// closed; the next call dials afresh. Default 1.5 s. Keep-alives keep a
    /// live peer's connection open however long it carries nothing, so this
    /// only decides how soon a connection to a peer that went silent (dead,
    /// frozen, cut off) is given up. It must be short: QUIC backs its
    /// retransmissions off exponentially while the peer is silent, so after
    /// a 3 s cut a connection kept open would resend next up to about 2 s
    /// after the heal, and every call on it would wait that long. Given up
    /// after 1.5 s, the link heals with a fresh handshake instead.
    pub idle_timeout: Duration,
    /// A connection idle for this long sends a QUIC PING to stay open (and
    /// through NATs). Default 300 ms (under a fifth of the idle timeout, so
    /// a few lost pings do not close a live connection): about 3 small
    /// packets a second per peer, none on connections that carry traffic
    /// anyway (membership probes, lease renewals).
    pub keep_alive_interval: Duration,
    /// The round-trip time assumed before the first measurement, which
    /// paces a handshake's retransmissions (they double from about three
    /// times this). Default 100 ms, for a LAN (QUIC's own default, 333 ms,
    /// is for unknown paths): a dial whose first packets were lost in a cut
    /// resends at 0.3, 0.7 and 1.5 s instead of 1 and 2.3 s.
    pub initial_rtt: Duration,
    /// First wait after a failed dial before the same address is dialed
    /// again. Doubles on each failure. Default 50 ms.
    pub reconnect_backoff_initial: Duration,
    /// Cap on the reconnect backoff. Default 500 ms, so a restarted or
    /// healed peer is reached again within about half a second (a failover
    /// has a one-second budget); one dial attempt per half second to a dead
    /// peer costs nothing worth saving.
    pub reconnect_backoff_max: Duration,
    /// Items queued per registered channel before senders wait (requests,
    /// messages, streams) or datagrams are dropped. Default 1024.
    pub inbox_capacity: usize,
    /// Concurrent streams a remote may open, per direction kind; further
    /// requests wait for credit (backpressure). Default 100, quinn's own:
    /// measured on 2 cores with 64 requests in flight, a limit of 1024
    /// tripled context switches and cost about 30% of throughput
    /// (`cargo xtask bench transport`).
    pub max_concurrent_streams: u32,
    /// Requests to a peer travel as calls on one long-lived stream per
    /// channel, their answers in any order (see [`crate::Channel::request`]),
    /// and one-way messages in order on one long-lived stream per channel
    /// ([`crate::Channel::send`]), instead of a stream each; a remote's
    /// calls streams are served, at most `max_concurrent_streams` calls of
    /// one at once. False: a stream per request and per message, and calls
    /// and messages streams refused (as builds before them), which their
    /// senders take as "use a stream each". Default true.
    pub calls: bool,
    /// Concurrent bidirectional streams a *client* connection may open
    /// (ALPN `clustron-client/1`). Every watch, topology watch and
    /// subscription holds one stream for its whole life, so an application
    /// with many watches on one client needs far more than
    /// `max_concurrent_streams`. Default 4096 (etcd multiplexes watches
    /// over one gRPC stream and sets no per-connection cap; each of ours
    /// costs the node a stream, a task and a small queue). Node-to-node
    /// connections keep `max_concurrent_streams`. quinn hands out new
    /// stream credit only once more than an eighth of the limit has been
    /// freed, so about 7/8 of it can be held by long-lived streams while
    /// requests still flow (with quinn's default of 100 that was the "89
    /// watches, then the 90th hangs" of issue 10).
    pub max_concurrent_client_streams: u32,
    /// Handshakes in progress above which a new one must first prove that
    /// it owns its source address (a QUIC Retry round trip, RFC 9000
    /// §8.1.2): forged packets from spoofed addresses then cost one small
    /// Retry packet each and never a TLS handshake. Default 32: a cluster's
    /// own connections rarely have that many handshakes at once, so they
    /// pay the extra round trip only under a flood. 0 validates every
    /// address.
    pub address_validation_above: u32,
    /// Most handshakes in progress at once; more are refused at once
    /// (counted, and logged in aggregate with other refusals). Bounds the
    /// memory and CPU a flood of handshakes from real addresses can take.
    /// Default 1024.
    pub max_handshakes: u32,
}

impl TransportConfig {
    /// Defaults tuned for a LAN, listening on `listen`.
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            max_frame_size: DEFAULT_MAX_FRAME,
            connect_timeout: Duration::from_millis(1500),
            request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_millis(1500),
            keep_alive_interval: Duration::from_millis(300),
            initial_rtt: Duration::from_millis(100),
            reconnect_backoff_initial: Duration::from_millis(50),
            reconnect_backoff_max: Duration::from_millis(500),
            inbox_capacity: 1024,
            max_concurrent_streams: 100,
            calls: true,
            max_concurrent_client_streams: 4096,
            address_validation_above: 32,
            max_handshakes: 1024,
        }
    }

    /// Same as [`TransportConfig::new`]: LAN defaults.
    pub fn lan(listen: SocketAddr) -> Self {
        Self::new(listen)
    }

    /// Defaults for links with high latency: longer timeouts and backoff.
    pub fn wan(listen: SocketAddr) -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(120),
            keep_alive_interval: Duration::from_secs(30),
            initial_rtt: Duration::from_millis(333),
            reconnect_backoff_max: Duration::from_secs(10),
            ..Self::new(listen)
        }
    }

    /// Checks every field; the error names the bad one and its value.
    pub fn validate(self) -> Result<Self, ConfigError> {
        if !(64..=1 << 30).contains(&self.max_frame_size) {
            return Err(ConfigError::MaxFrameSize(self.max_frame_size));
        }
        for (field, value) in [
            ("connect_timeout", self.connect_timeout),
            ("request_timeout", self.request_timeout),
            ("idle_timeout", self.idle_timeout),
            ("keep_alive_interval", self.keep_alive_interval),
            ("initial_rtt", self.initial_rtt),
            ("reconnect_backoff_initial", self.reconnect_backoff_initial),
            ("reconnect_backoff_max", self.reconnect_backoff_max),
        ] {
            if value.is_zero() {
                return Err(ConfigError::ZeroDuration(field));
            }
        }
        if self.keep_alive_interval >= self.idle_timeout {
            return Err(ConfigError::KeepAliveNotBelowIdle {
                keep_alive: self.keep_alive_interval,
                idle: self.idle_timeout,
            });
        }
        if self.reconnect_backoff_initial > self.reconnect_backoff_max {
            return Err(ConfigError::BackoffOrder {
                initial: self.reconnect_backoff_initial,
                max: self.reconnect_backoff_max,
            });
        }
        if self.inbox_capacity == 0 {
            return Err(ConfigError::Zero("inbox_capacity"));
        }
        if self.max_concurrent_streams == 0 {
            return Err(ConfigError::Zero("max_concurrent_streams"));
        }
        if self.max_concurrent_client_streams == 0 {
            return Err(ConfigError::Zero("max_concurrent_client_streams"));
        }
        if self.max_handshakes == 0 {
            return Err(ConfigError::Zero("max_handshakes"));
        }
        Ok(self)
    }
}

/// A configuration value that was refused, with the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// `max_frame_size` out of 64..=1 GiB.
    #[error("max_frame_size = {0} is outside 64..=1073741824 bytes")]
    MaxFrameSize(usize),
    /// A duration that must be positive was zero.
    #[error("{0} must be greater than zero")]
    ZeroDuration(&'static str),
    /// A count that must be positive was zero.
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
    /// Keep-alives would not keep the connection open.
    #[error("keep_alive_interval ({keep_alive:?}) must be below idle_timeout ({idle:?})")]
    KeepAliveNotBelowIdle {
        /// The keep-alive interval.
        keep_alive: Duration,
        /// The idle timeout.
        idle: Duration,
    },
    /// The backoff would start above its own cap.
    #[error("reconnect_backoff_initial ({initial:?}) exceeds reconnect_backoff_max ({max:?})")]
    BackoffOrder {
        /// Initial backoff.
        initial: Duration,
        /// Maximum backoff.
        max: Duration,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> TransportConfig {
        TransportConfig::new("127.0.0.1:0".parse().unwrap())
    }

    #[test]
    fn presets_validate() {
        base().validate().unwrap();
        TransportConfig::wan("127.0.0.1:0".parse().unwrap())
            .validate()
            .unwrap();
    }

    #[test]
    fn bad_values_are_named_in_the_error() {
        let cases: Vec<(TransportConfig, &str)> = vec![
            (
                TransportConfig {
                    max_frame_size: 1,
                    ..base()
                },
                "max_frame_size = 1",
            ),
            (
                TransportConfig {
                    request_timeout: Duration::ZERO,
                    ..base()
                },
                "request_timeout",
            ),
            (
                TransportConfig {
                    keep_alive_interval: Duration::from_secs(60),
                    ..base()
                },
                "keep_alive_interval",
            ),
            (
                TransportConfig {
                    inbox_capacity: 0,
                    ..base()
                },
                "inbox_capacity",
            ),
            (
                TransportConfig {
                    reconnect_backoff_initial: Duration::from_secs(9),
                    ..base()
                },
                "reconnect_backoff_initial",
            ),
        ];
        for (config, needle) in cases {
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(needle), "{err:?} does not name {needle}");
        }
    }
}
