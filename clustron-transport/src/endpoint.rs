//! The endpoint: one UDP port, a connection cache, and typed channels.
//!
//! ```text
//!   Channel<P>::request/send/send_datagram/open_stream ──► connection cache ──► QUIC
//!                                                              │ (one per peer address,
//!                                                              │  redialed with backoff)
//!   QUIC ──► connection task ──► header (version, kind, channel) ──► route ──► Inbox<P>
//!             (accept_bi / accept_uni / read_datagram)              decode here; a bad
//!                                                                   frame ends only its stream
//! ```

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use quinn::{ConnectionError, RecvStream, SendStream, VarInt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::{timeout, Instant};

use crate::calls::{self, CallFailure, Calls};
use crate::certs::TlsIdentity;
use crate::codes;
use crate::config::TransportConfig;
use crate::error::{CertError, Error, FrameError};
use crate::frame::{self, Status, StreamKind, HEADER_LEN};
use crate::identity::PeerIdentity;
use crate::messages::{self, Messages};
use crate::refusals::{self, RefusalLog};
use crate::stream::{self, FramedStream, ReadFailure, Reader};
use crate::subscription::Subscription;
use crate::tls;

type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;
/// The encoded answer to a request: status byte and frame.
pub(crate) type Answer = Pin<Box<dyn Future<Output = Vec<u8>> + Send>>;

/// Which layer a message belongs to. Each layer registers its own channel, so
/// layers never see each other's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelId(pub u16);

impl ChannelId {
    /// `clustron-membership`.
    pub const MEMBERSHIP: ChannelId = ChannelId(1);
    /// `clustron-election`.
    pub const ELECTION: ChannelId = ChannelId(2);
    /// `clustron-events`.
    pub const EVENTS: ChannelId = ChannelId(3);
    /// `clustron-log` replication between nodes (and snapshot transfers).
    pub const LOG: ChannelId = ChannelId(4);
    /// The client protocol.
    pub const CLIENT: ChannelId = ChannelId(5);
    /// The distributed cache between nodes (`clustron-dkv`).
    pub const CACHE: ChannelId = ChannelId(6);
    /// Products built later pick channels from here up.
    pub const FIRST_PRODUCT: ChannelId = ChannelId(100);
}

impl fmt::Display for ChannelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// The message types of one channel.
///
/// ```
/// use clustron_transport::{ChannelId, Protocol};
/// struct Ping;
/// impl Protocol for Ping {
///     const CHANNEL: ChannelId = ChannelId(200);
///     type Request = u64;
///     type Response = u64;
///     type Message = String;
/// }
/// ```
pub trait Protocol: Send + Sync + 'static {
    /// The channel's id; unique per endpoint.
    const CHANNEL: ChannelId;
    /// Whether client certificates (ALPN `clustron-client/1`) may use this
    /// channel. Node-to-node protocols leave it `false`.
    const ACCEPTS_CLIENTS: bool = false;
    /// What [`Channel::request`] sends.
    type Request: Serialize + DeserializeOwned + Send + 'static;
    /// What a request is answered with.
    type Response: Serialize + DeserializeOwned + Send + 'static;
    /// What one-way messages and datagrams carry.
    type Message: Serialize + DeserializeOwned + Send + 'static;
}

/// An authenticated remote: its identity from its certificate and its address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Name and kind, from the certificate.
    pub identity: Arc<PeerIdentity>,
    /// The remote UDP address.
    pub addr: SocketAddr,
}

impl Peer {
    /// The certificate's name.
    pub fn name(&self) -> &str {
        self.identity.name.as_str()
    }
}

/// How a [`Inbound::Message`] arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// On a unidirectional stream: reliable.
    Reliable,
    /// As a datagram: may be lost, duplicated or reordered.
    Datagram,
}

/// Something a peer sent on a registered channel.
#[derive(Debug)]
pub enum Inbound<P: Protocol> {
    /// A request; answer through `reply`.
    Request {
        /// Who sent it.
        from: Peer,
        /// The decoded request.
        request: P::Request,
        /// Where the answer goes.
        reply: Reply<P::Response>,
    },
    /// A one-way message or datagram.
    Message {
        /// Who sent it.
        from: Peer,
        /// The decoded message.
        message: P::Message,
        /// Stream or datagram.
        delivery: Delivery,
    },
    /// A long-lived stream the peer opened.
    Stream {
        /// Who opened it.
        from: Peer,
        /// The stream; frames of any agreed type.
        stream: FramedStream,
    },
}

/// The answer slot of one request. Dropping it unanswered rejects the request.
pub struct Reply<R> {
    tx: oneshot::Sender<Vec<u8>>,
    max_frame: usize,
    _response: PhantomData<fn(R)>,
}

impl<R> fmt::Debug for Reply<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Reply")
    }
}

impl<R: Serialize> Reply<R> {
    /// Sends the response. One larger than the maximum frame is turned into
    /// a rejection saying so.
    pub fn send(self, response: &R) {
        let _ = self.tx.send(ok_frame(response, self.max_frame));
    }

    /// Refuses the request; the caller gets [`Error::Rejected`] with `reason`.
    pub fn reject(self, reason: impl fmt::Display) {
        let _ = self
            .tx
            .send(status_frame(Status::Rejected, &reason.to_string()));
    }
}

/// A successful answer; one larger than `max_frame` becomes a rejection.
fn ok_frame<R: Serialize>(response: &R, max_frame: usize) -> Vec<u8> {
    let mut buf = Vec::with_capacity(1 + frame::framed_len(response));
    buf.push(Status::Ok as u8);
    match frame::encode_frame(&mut buf, response, max_frame) {
        Ok(()) => buf,
        Err(e) => status_frame(Status::Rejected, &format!("response not sent: {e}")),
    }
}

pub(crate) fn status_frame(status: Status, reason: &str) -> Vec<u8> {
    let mut buf = vec![status as u8];
    // A reason never approaches the 64-byte minimum frame; cut long ones.
    let reason: String = reason.chars().take(1024).collect();
    if frame::encode_frame(&mut buf, &reason, usize::MAX).is_err() {
        buf.truncate(1);
        buf.extend_from_slice(&[0, 0, 0, 1, 0]); // the empty string
    }
    buf
}

/// The receiving end of a registered channel.
#[derive(Debug)]
pub struct Inbox<P: Protocol> {
    rx: mpsc::Receiver<Inbound<P>>,
}

impl<P: Protocol> Inbox<P> {
    /// The next inbound item; `None` once the endpoint is closed.
    pub async fn recv(&mut self) -> Option<Inbound<P>> {
        self.rx.recv().await
    }

    /// The next inbound item if one is already waiting: lets an actor take
    /// everything queued before it acts once (batching, group commit).
    pub fn try_recv(&mut self) -> Option<Inbound<P>> {
        self.rx.try_recv().ok()
    }
}

/// Something worth knowing about connections.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum TransportEvent {
    /// A connection was established (either direction).
    Connected(Peer),
    /// A connection ended.
    Disconnected {
        /// Who it was with.
        peer: Peer,
        /// Why, as quinn reports it.
        reason: String,
    },
    /// A connection attempt to or from `addr` was refused.
    Refused {
        /// The remote address.
        addr: SocketAddr,
        /// Why, in words.
        reason: String,
    },
}

/// Counters since the endpoint started, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TransportStats {
    /// Frames and datagrams written.
    pub messages_sent: u64,
    /// Frames and datagrams received and handed to a channel.
    pub messages_received: u64,
    /// Bytes written in frames and datagrams (headers included).
    pub bytes_sent: u64,
    /// Bytes received in frames and datagrams (headers included).
    pub bytes_received: u64,
    /// Bidirectional streams accepted from peers (requests and long-lived
    /// streams alike).
    pub streams_accepted: u64,
    /// Unidirectional streams accepted from peers (a one-way message each,
    /// or a long-lived messages stream).
    pub uni_streams_accepted: u64,
    /// Connections established, either direction.
    pub connections_opened: u64,
    /// Handshakes refused, either direction.
    pub connections_refused: u64,
    /// Streams ended with an error code because of bad input.
    pub stream_errors: u64,
    /// Datagrams dropped: malformed, unknown channel, or inbox full.
    pub datagrams_dropped: u64,
    /// Refused handshakes not logged one by one (a flood); they are summed
    /// up in one log line per interval.
    pub refusals_unlogged: u64,
    /// Handshakes asked to prove their source address first (QUIC Retry),
    /// because many were in progress.
    pub handshakes_retried: u64,
    /// Handshakes refused at once because `max_handshakes` were in progress
    /// (also counted in `connections_refused`).
    pub handshakes_shed: u64,
}

#[derive(Default)]
pub(crate) struct Stats {
    messages_sent: AtomicU64,
    messages_received: AtomicU64,
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    streams_accepted: AtomicU64,
    uni_streams_accepted: AtomicU64,
    connections_opened: AtomicU64,
    connections_refused: AtomicU64,
    pub(crate) stream_errors: AtomicU64,
    datagrams_dropped: AtomicU64,
    refusals_unlogged: AtomicU64,
    handshakes_retried: AtomicU64,
    handshakes_shed: AtomicU64,
}

impl Stats {
    pub(crate) fn sent(&self, bytes: usize) {
        self.messages_sent.fetch_add(1, Relaxed);
        self.bytes_sent.fetch_add(bytes as u64, Relaxed);
    }

    pub(crate) fn received(&self, bytes: usize) {
        self.messages_received.fetch_add(1, Relaxed);
        self.bytes_received.fetch_add(bytes as u64, Relaxed);
    }
}

/// Decodes and queues inbound items for one typed channel.
pub(crate) trait Route: Send + Sync + 'static {
    fn accepts_clients(&self) -> bool;
    /// Decodes and hands over a request; the future yields the answer.
    fn request(&self, from: Peer, body: &[u8], max_frame: usize) -> Result<Answer, FrameError>;
    /// `Ok(Some(fut))` when the inbox is full: await it to deliver.
    fn message(
        &self,
        from: Peer,
        body: &[u8],
        delivery: Delivery,
    ) -> Result<Option<BoxFuture>, FrameError>;
    fn stream(&self, from: Peer, stream: FramedStream) -> Option<BoxFuture>;
}

struct TypedRoute<P: Protocol> {
    tx: mpsc::Sender<Inbound<P>>,
}

impl<P: Protocol> TypedRoute<P> {
    fn deliver(&self, item: Inbound<P>) -> Option<BoxFuture> {
        match self.tx.try_send(item) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => None,
            Err(mpsc::error::TrySendError::Full(item)) => {
                let tx = self.tx.clone();
                Some(Box::pin(async move {
                    let _ = tx.send(item).await;
                }))
            }
        }
    }
}

impl<P: Protocol> Route for TypedRoute<P> {
    fn accepts_clients(&self) -> bool {
        P::ACCEPTS_CLIENTS
    }

    fn request(&self, from: Peer, body: &[u8], max_frame: usize) -> Result<Answer, FrameError> {
        let request = frame::decode_body::<P::Request>(body)?;
        let (tx, rx) = oneshot::channel();
        let reply = Reply {
            tx,
            max_frame,
            _response: PhantomData,
        };
        let wait = self.deliver(Inbound::Request {
            from,
            request,
            reply,
        });
        Ok(Box::pin(async move {
            if let Some(wait) = wait {
                wait.await;
            }
            rx.await
                .unwrap_or_else(|_| status_frame(Status::Rejected, "handler dropped the request"))
        }))
    }

    fn message(
        &self,
        from: Peer,
        body: &[u8],
        delivery: Delivery,
    ) -> Result<Option<BoxFuture>, FrameError> {
        let message = frame::decode_body::<P::Message>(body)?;
        let item = Inbound::Message {
            from,
            message,
            delivery,
        };
        if delivery == Delivery::Datagram {
            // Datagrams are unreliable anyway: drop rather than wait.
            return match self.tx.try_send(item) {
                Ok(()) => Ok(None),
                Err(_) => Err(FrameError::Stream("inbox full".into())),
            };
        }
        Ok(self.deliver(item))
    }

    fn stream(&self, from: Peer, stream: FramedStream) -> Option<BoxFuture> {
        self.deliver(Inbound::Stream { from, stream })
    }
}

/// Requests go straight to a handler in the stream's own task; messages and
/// streams go to the inbox.
struct ServedRoute<P: Protocol, F> {
    handler: F,
    inbox: TypedRoute<P>,
}

impl<P, F, Fut> Route for ServedRoute<P, F>
where
    P: Protocol,
    F: Fn(Peer, P::Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<P::Response, String>> + Send + 'static,
{
    fn accepts_clients(&self) -> bool {
        P::ACCEPTS_CLIENTS
    }

    fn request(&self, from: Peer, body: &[u8], max_frame: usize) -> Result<Answer, FrameError> {
        let request = frame::decode_body::<P::Request>(body)?;
        let answer = (self.handler)(from, request);
        Ok(Box::pin(async move {
            match answer.await {
                Ok(response) => ok_frame(&response, max_frame),
                Err(reason) => status_frame(Status::Rejected, &reason),
            }
        }))
    }

    fn message(
        &self,
        from: Peer,
        body: &[u8],
        delivery: Delivery,
    ) -> Result<Option<BoxFuture>, FrameError> {
        self.inbox.message(from, body, delivery)
    }

    fn stream(&self, from: Peer, stream: FramedStream) -> Option<BoxFuture> {
        self.inbox.stream(from, stream)
    }
}

#[derive(Default)]
struct DialState {
    failures: u32,
    retry_at: Option<Instant>,
}

pub(crate) struct Inner {
    endpoint: quinn::Endpoint,
    pub(crate) config: TransportConfig,
    identity: Arc<PeerIdentity>,
    dial_config: quinn::ClientConfig,
    routes: DashMap<ChannelId, Arc<dyn Route>>,
    conns: DashMap<SocketAddr, quinn::Connection>,
    dials: DashMap<SocketAddr, Arc<tokio::sync::Mutex<DialState>>>,
    events: broadcast::Sender<TransportEvent>,
    pub(crate) stats: Stats,
    /// The open calls stream to each (peer, channel) (see `calls`).
    calls: DashMap<(SocketAddr, ChannelId), Arc<Calls>>,
    /// One opening of a calls stream at a time per (peer, channel).
    call_opens: DashMap<(SocketAddr, ChannelId), Arc<tokio::sync::Mutex<()>>>,
    /// Peers of an older build that refused a calls stream: a stream per
    /// request for them.
    pub(crate) no_calls: DashMap<SocketAddr, ()>,
    /// The open messages stream to each (peer, channel) (see `messages`).
    messages: DashMap<(SocketAddr, ChannelId), Arc<Messages>>,
    /// One opening of a messages stream at a time per (peer, channel).
    message_opens: DashMap<(SocketAddr, ChannelId), Arc<tokio::sync::Mutex<()>>>,
    /// Peers of an older build that refused a messages stream: a stream per
    /// message for them.
    pub(crate) no_messages: DashMap<SocketAddr, ()>,
    /// Which refusals are logged in full (see `refusals`).
    refusals: std::sync::Mutex<RefusalLog>,
    /// Handshakes of incoming connections in progress.
    handshakes: AtomicUsize,
}

/// Closes the QUIC endpoint when the last user handle goes away; background
/// tasks hold `Inner` but not this, so they do not keep the endpoint alive.
struct CloseGuard(quinn::Endpoint);

impl Drop for CloseGuard {
    fn drop(&mut self) {
        self.0
            .close(VarInt::from_u32(codes::CLOSE_SHUTDOWN), b"shutdown");
    }
}

/// A QUIC endpoint on one UDP port with mutual TLS, a connection cache and
/// typed channels.
///
/// Must be created inside a tokio runtime. Cheap to clone; the endpoint closes
/// when the last clone (and the last [`Channel`]) is dropped, or on
/// [`Endpoint::close`].
#[derive(Clone)]
pub struct Endpoint {
    inner: Arc<Inner>,
    _guard: Arc<CloseGuard>,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("identity", &self.inner.identity)
            .field("local_addr", &self.local_addr())
            .finish()
    }
}

impl Endpoint {
    /// Binds a node endpoint: it serves both ALPNs on `config.listen` and
    /// dials other nodes with `clustron-peer/1`. Needs a node certificate.
    pub fn bind(config: TransportConfig, identity: TlsIdentity) -> Result<Self, Error> {
        if !identity.identity().is_node() {
            return Err(CertError::NotANode(identity.identity().clone()).into());
        }
        let server = Some(tls::server_config(&identity)?);
        Self::build(config, identity, server, tls::ALPN_PEER)
    }

    /// Binds a client endpoint: it serves nothing and dials nodes with
    /// `clustron-client/1`. Nodes may still push streams to it over the
    /// connections it opened.
    pub fn client(config: TransportConfig, identity: TlsIdentity) -> Result<Self, Error> {
        Self::build(config, identity, None, tls::ALPN_CLIENT)
    }

    fn build(
        config: TransportConfig,
        identity: TlsIdentity,
        server: Option<quinn::ServerConfig>,
        alpn: &[u8],
    ) -> Result<Self, Error> {
        let config = config.validate()?;
        let mut dial_config = tls::client_config(&identity, alpn)?;
        dial_config.transport_config(Arc::new(quinn_transport(
            &config,
            config.max_concurrent_streams,
        )));
        // Accepted connections start with the smaller of the node and
        // client stream limits (a grant can be raised later, never
        // lowered) and get their own once the handshake says which they are.
        let accepted = config
            .max_concurrent_streams
            .min(config.max_concurrent_client_streams);
        let server = server.map(|mut server| {
            server.transport_config(Arc::new(quinn_transport(&config, accepted)));
            server
        });
        let socket = std::net::UdpSocket::bind(config.listen).map_err(|source| Error::Bind {
            addr: config.listen,
            source,
        })?;
        let runtime = quinn::default_runtime().ok_or_else(|| Error::Bind {
            addr: config.listen,
            source: std::io::Error::other("no async runtime: call inside tokio"),
        })?;
        let endpoint_config = tls::endpoint_config(&identity);
        let endpoint =
            quinn::Endpoint::new(endpoint_config, server, socket, runtime).map_err(|source| {
                Error::Bind {
                    addr: config.listen,
                    source,
                }
            })?;
        let inner = Arc::new(Inner {
            endpoint: endpoint.clone(),
            config,
            identity: Arc::new(identity.identity().clone()),
            dial_config,
            routes: DashMap::new(),
            conns: DashMap::new(),
            dials: DashMap::new(),
            events: broadcast::channel(256).0,
            stats: Stats::default(),
            calls: DashMap::new(),
            call_opens: DashMap::new(),
            no_calls: DashMap::new(),
            messages: DashMap::new(),
            message_opens: DashMap::new(),
            no_messages: DashMap::new(),
            refusals: std::sync::Mutex::default(),
            handshakes: AtomicUsize::new(0),
        });
        tokio::spawn(inner.clone().accept_loop());
        // Sums up a burst of refusals once its interval ends, even if no
        // refusal follows.
        let weak = Arc::downgrade(&inner);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(refusals::INTERVAL).await;
                let Some(inner) = weak.upgrade() else { return };
                let summary = inner
                    .refusals
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .flush(std::time::Instant::now());
                if let Some(summary) = summary {
                    log_summary(&summary);
                }
            }
        });
        Ok(Self {
            inner,
            _guard: Arc::new(CloseGuard(endpoint)),
        })
    }

    /// The bound UDP address (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        // Invariant: the socket was bound in `build` and is never unbound.
        self.inner
            .endpoint
            .local_addr()
            .unwrap_or(self.inner.config.listen)
    }

    /// Our own identity, from our certificate.
    pub fn identity(&self) -> &PeerIdentity {
        &self.inner.identity
    }

    /// The configuration in force.
    pub fn config(&self) -> &TransportConfig {
        &self.inner.config
    }

    /// Registers the handler side of protocol `P`. Each channel can be
    /// registered once per endpoint, and stays registered for the
    /// endpoint's life.
    ///
    /// Keep the [`Inbox`] for as long as the node serves `P`: everything
    /// arrives there. Dropping it does not unregister the channel; requests
    /// are then refused ([`Error::Rejected`], "handler dropped the
    /// request"), and messages, datagrams and streams are dropped unread.
    /// Register before joining the cluster, so that no peer's first request
    /// finds the channel missing ([`Error::UnknownChannel`]).
    pub fn register<P: Protocol>(&self) -> Result<Inbox<P>, Error> {
        self.add_route::<P>(|tx| Arc::new(TypedRoute::<P> { tx }))
    }

    /// Registers protocol `P` with a request handler that runs in each
    /// request's own task, with no queue in between: the fastest way to
    /// answer requests that need no single owner. An `Err(reason)` reaches
    /// the caller as [`Error::Rejected`]. One-way messages, datagrams and
    /// streams of `P` still arrive in the returned inbox.
    ///
    /// The handler is kept by the endpoint, so requests are answered
    /// whether or not the [`Inbox`] is kept. Drop the inbox if `P` has no
    /// messages or streams (they are then dropped unread); keep it and read
    /// it if it does.
    pub fn serve<P, F, Fut>(&self, handler: F) -> Result<Inbox<P>, Error>
    where
        P: Protocol,
        F: Fn(Peer, P::Request) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<P::Response, String>> + Send + 'static,
    {
        self.add_route::<P>(|tx| {
            Arc::new(ServedRoute {
                handler,
                inbox: TypedRoute::<P> { tx },
            })
        })
    }

    fn add_route<P: Protocol>(
        &self,
        route: impl FnOnce(mpsc::Sender<Inbound<P>>) -> Arc<dyn Route>,
    ) -> Result<Inbox<P>, Error> {
        use dashmap::mapref::entry::Entry;
        match self.inner.routes.entry(P::CHANNEL) {
            Entry::Occupied(_) => Err(Error::ChannelTaken(P::CHANNEL)),
            Entry::Vacant(slot) => {
                let (tx, rx) = mpsc::channel(self.inner.config.inbox_capacity);
                slot.insert(route(tx));
                Ok(Inbox { rx })
            }
        }
    }

    /// The sending side of protocol `P`.
    pub fn channel<P: Protocol>(&self) -> Channel<P> {
        Channel {
            endpoint: self.clone(),
            _protocol: PhantomData,
        }
    }

    /// Connects to `addr` (or reuses the cached connection) and returns who
    /// is there.
    pub async fn connect(&self, addr: SocketAddr) -> Result<Peer, Error> {
        let conn = self.inner.connection(addr).await?;
        Ok(Peer {
            identity: Arc::new(peer_identity(&conn)?),
            addr,
        })
    }

    /// Connection events: connected, disconnected, refused (the last 256
    /// are kept per subscriber; one that falls further behind is told how
    /// many it missed).
    pub fn events(&self) -> Subscription<TransportEvent> {
        Subscription::new(self.inner.events.subscribe())
    }

    /// QUIC-level statistics of the cached connection to `addr` (packets,
    /// frames, path RTT), for diagnostics and benchmarks.
    pub fn connection_stats(&self, addr: SocketAddr) -> Option<quinn::ConnectionStats> {
        self.inner.conns.get(&addr).map(|conn| conn.stats())
    }

    /// Counters since start.
    pub fn stats(&self) -> TransportStats {
        let s = &self.inner.stats;
        TransportStats {
            messages_sent: s.messages_sent.load(Relaxed),
            messages_received: s.messages_received.load(Relaxed),
            bytes_sent: s.bytes_sent.load(Relaxed),
            bytes_received: s.bytes_received.load(Relaxed),
            streams_accepted: s.streams_accepted.load(Relaxed),
            uni_streams_accepted: s.uni_streams_accepted.load(Relaxed),
            connections_opened: s.connections_opened.load(Relaxed),
            connections_refused: s.connections_refused.load(Relaxed),
            stream_errors: s.stream_errors.load(Relaxed),
            datagrams_dropped: s.datagrams_dropped.load(Relaxed),
            refusals_unlogged: s.refusals_unlogged.load(Relaxed),
            handshakes_retried: s.handshakes_retried.load(Relaxed),
            handshakes_shed: s.handshakes_shed.load(Relaxed),
        }
    }

    /// Closes every connection and the socket, waiting briefly for peers to
    /// learn of it. Calls in flight fail with [`Error::Closed`] or
    /// [`Error::ConnectionLost`].
    pub async fn close(&self) {
        self.inner
            .endpoint
            .close(VarInt::from_u32(codes::CLOSE_SHUTDOWN), b"shutdown");
        let _ = timeout(Duration::from_secs(1), self.inner.endpoint.wait_idle()).await;
    }
}

/// The sending side of one protocol; cheap to clone.
pub struct Channel<P: Protocol> {
    endpoint: Endpoint,
    _protocol: PhantomData<fn(P)>,
}

impl<P: Protocol> Clone for Channel<P> {
    fn clone(&self) -> Self {
        Self {
            endpoint: self.endpoint.clone(),
            _protocol: PhantomData,
        }
    }
}

impl<P: Protocol> fmt::Debug for Channel<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Channel({})", P::CHANNEL)
    }
}

impl<P: Protocol> Channel<P> {
    /// Sends `request` to `to` and waits for the response, at most the
    /// endpoint's [`TransportConfig::request_timeout`]. The request travels
    /// as a call on the one stream this endpoint keeps to `to` for this
    /// channel, answered in any order ([`TransportConfig::calls`]); to a
    /// peer that does not take calls, on a stream of its own.
    pub async fn request(
        &self,
        to: SocketAddr,
        request: &P::Request,
    ) -> Result<P::Response, Error> {
        let after = self.endpoint.inner.config.request_timeout;
        self.request_with_timeout(to, request, after).await
    }

    /// As [`Channel::request`], waiting at most `after` for this one call
    /// (dial included) instead of the endpoint-wide `request_timeout`.
    ///
    /// A timeout is [`Error::Timeout`] with `what` `"request"`, and like a
    /// lost connection it does not prove the remote did nothing
    /// ([`Error::nothing_processed`] is false): retry such a request only if
    /// it is idempotent or deduplicated by the remote.
    pub async fn request_with_timeout(
        &self,
        to: SocketAddr,
        request: &P::Request,
        after: Duration,
    ) -> Result<P::Response, Error> {
        let inner = &self.endpoint.inner;
        let max = inner.config.max_frame_size;
        let mut after = after;
        if inner.config.calls && !inner.no_calls.contains_key(&to) {
            let started = Instant::now();
            match self.call(to, request, after).await {
                // The stream per request gets what is left of the deadline.
                Err(CallFailure::Refused) => after = after.saturating_sub(started.elapsed()),
                Err(CallFailure::Failed(e)) => return Err(e),
                Ok(response) => return Ok(response),
            }
        }
        let mut buf = Vec::with_capacity(frame::framed_len(request) + HEADER_LEN);
        buf.extend_from_slice(&frame::header(StreamKind::Request, P::CHANNEL));
        frame::encode_frame(&mut buf, request, max).map_err(Error::Encode)?;
        let opened = std::sync::atomic::AtomicBool::new(false);
        let exchange = async {
            // Nothing has left before the stream is open; from then on a
            // failure may come after the remote processed the request.
            let (send, recv) = inner.open_bi(to).await.map_err(Error::before_sending)?;
            opened.store(true, Relaxed);
            Self::exchange(inner, to, &buf, send, recv)
                .await
                .map_err(Error::after_sending)
        };
        timeout(after, exchange)
            .await
            .map_err(|_| timed_out(to, after, &opened))?
    }

    /// [`Channel::request_with_timeout`] as a call on the calls stream to
    /// `to` (see the `calls` module). `Refused` only when the peer does not
    /// know calls, having processed nothing: then use a stream.
    async fn call(
        &self,
        to: SocketAddr,
        request: &P::Request,
        after: Duration,
    ) -> Result<P::Response, CallFailure> {
        let inner = &self.endpoint.inner;
        let max = inner.config.max_frame_size;
        // Encoded once, after room for the call's length and id.
        let body = postcard::to_extend(request, vec![0; calls::CALL_HEAD])
            .map_err(|e| FrameError::Malformed(format!("cannot encode: {e}")))
            .and_then(|body| {
                let len = body.len() - calls::CALL_HEAD;
                if len > max {
                    return Err(FrameError::TooLarge {
                        len: len as u64,
                        max,
                    });
                }
                Ok(body)
            })
            .map_err(|e| CallFailure::Failed(Error::Encode(e)))?;
        let opened = std::sync::atomic::AtomicBool::new(false);
        let exchange = async {
            // Nothing has left before the call is handed to an open
            // stream; from then on it may have been processed.
            let mut fresh = false;
            let mut body = body;
            let (answer, _forget) = loop {
                let calls = inner
                    .calls_to(to, P::CHANNEL)
                    .await
                    .map_err(|e| CallFailure::Failed(e.before_sending()))?;
                body = match calls.call(body) {
                    Ok(call) => break call,
                    Err(back) => back,
                };
                // That stream closed before taking it (it was never
                // written): once more on a new one.
                inner.forget_calls(to, &calls);
                if fresh {
                    return Err(CallFailure::Failed(Error::Unreachable {
                        addr: to,
                        reason: "the calls stream closed before the request was sent".into(),
                    }));
                }
                fresh = true;
            };
            opened.store(true, Relaxed);
            let answer = match answer.await {
                Ok(result) => result?,
                Err(_) => {
                    return Err(CallFailure::Failed(Error::ConnectionLost {
                        addr: to,
                        reason: "the calls stream closed after the request was sent".into(),
                    }))
                }
            };
            Self::decode_answer(inner, to, &answer).map_err(CallFailure::Failed)
        };
        timeout(after, exchange)
            .await
            .map_err(|_| CallFailure::Failed(timed_out(to, after, &opened)))?
    }

    /// A response's status and frame, as one call's answer.
    fn decode_answer(
        inner: &Arc<Inner>,
        to: SocketAddr,
        answer: &[u8],
    ) -> Result<P::Response, Error> {
        let max = inner.config.max_frame_size;
        let Some((&status, rest)) = answer.split_first() else {
            return Err(FrameError::Truncated.into());
        };
        let Some((body, used)) = frame::split_frame(rest, max)? else {
            return Err(FrameError::Truncated.into());
        };
        if used != rest.len() {
            return Err(FrameError::Malformed("bytes after the response".into()).into());
        }
        inner.stats.received(body.len() + 1);
        Self::response(to, status, body)
    }

    /// The response (or the error) a status and its frame's body say.
    fn response(to: SocketAddr, status: u8, body: &[u8]) -> Result<P::Response, Error> {
        match Status::from_u8(status) {
            Some(Status::Ok) => Ok(frame::decode_body::<P::Response>(body)?),
            Some(Status::UnknownChannel) => Err(Error::UnknownChannel {
                addr: to,
                channel: P::CHANNEL,
            }),
            Some(Status::Rejected) => Err(Error::Rejected {
                addr: to,
                reason: frame::decode_body::<String>(body)?,
            }),
            None => Err(FrameError::Malformed(format!("unknown status {status}")).into()),
        }
    }

    /// Sends a request on an open stream and reads its response.
    async fn exchange(
        inner: &Arc<Inner>,
        to: SocketAddr,
        buf: &[u8],
        mut send: SendStream,
        recv: RecvStream,
    ) -> Result<P::Response, Error> {
        let max = inner.config.max_frame_size;
        {
            send.write_all(buf)
                .await
                .map_err(|e| write_failure(to, e))?;
            let _ = send.finish();
            inner.stats.sent(buf.len());
            let mut reader = Reader::new(recv);
            let status = match reader.fixed::<1>().await {
                Ok(Some([status])) => status,
                Ok(None) => return Err(FrameError::Truncated.into()),
                Err(failure) => return Err(read_failed(to, failure)),
            };
            let body = match reader.frame(max).await {
                Ok(Some(body)) => body,
                Ok(None) => return Err(FrameError::Truncated.into()),
                Err(failure) => {
                    if let ReadFailure::Frame(e) = &failure {
                        stream::abort(None, Some(reader.stream()), e);
                    }
                    return Err(read_failed(to, failure));
                }
            };
            inner.stats.received(body.len() + 1);
            let result = Self::response(to, status, &body);
            reader
                .expect_end()
                .await
                .map_err(|failure| read_failed(to, failure))?;
            result
        }
    }

    /// Sends a one-way message. Returns once it is handed to QUIC
    /// (delivered reliably unless the connection dies), without waiting for
    /// an acknowledgement. Messages to one peer on one channel travel in
    /// order on one long-lived stream ([`TransportConfig::calls`]; see the
    /// `messages` module); to a peer that does not take that, each on a
    /// stream of its own. Waits, at most the endpoint's `request_timeout`,
    /// while the peer's inbox is full and this stream's queue with it.
    pub async fn send(&self, to: SocketAddr, message: &P::Message) -> Result<(), Error> {
        let inner = &self.endpoint.inner;
        let max = inner.config.max_frame_size;
        let on_its_own = !inner.config.calls || inner.no_messages.contains_key(&to);
        let mut buf = Vec::with_capacity(frame::framed_len(message) + HEADER_LEN);
        if on_its_own {
            buf.extend_from_slice(&frame::header(StreamKind::Message, P::CHANNEL));
        }
        frame::encode_frame(&mut buf, message, max).map_err(Error::Encode)?;
        let after = inner.config.request_timeout;
        let sent = async {
            match on_its_own {
                true => Self::send_on_its_own(inner, to, &buf).await,
                false => Self::send_on_messages(inner, to, buf).await,
            }
        };
        timeout(after, sent).await.map_err(|_| Error::Timeout {
            what: "message",
            addr: to,
            after,
        })?
    }

    /// As [`Channel::send`], when that needs no waiting: the message goes
    /// onto the open messages stream to `to` at once, with no task to
    /// spawn for it. `None` when it would wait (no stream open to `to` on
    /// this channel yet, its queue full, or a peer that takes no messages
    /// streams): then use [`Channel::send`].
    pub fn send_now(&self, to: SocketAddr, message: &P::Message) -> Option<Result<(), Error>> {
        let inner = &self.endpoint.inner;
        if !inner.config.calls || inner.no_messages.contains_key(&to) {
            return None;
        }
        let messages = inner.open_messages((to, P::CHANNEL))?;
        let mut frame = Vec::with_capacity(frame::framed_len(message));
        if let Err(e) = frame::encode_frame(&mut frame, message, inner.config.max_frame_size) {
            return Some(Err(Error::Encode(e)));
        }
        messages.try_send(frame).then_some(Ok(()))
    }

    /// A message frame onto the messages stream to `to`.
    async fn send_on_messages(
        inner: &Arc<Inner>,
        to: SocketAddr,
        mut frame: Vec<u8>,
    ) -> Result<(), Error> {
        let mut fresh = false;
        loop {
            let messages = inner.messages_to(to, P::CHANNEL).await?;
            frame = match messages.send(frame).await {
                Ok(()) => return Ok(()),
                Err(back) => back,
            };
            // That stream closed before taking it: once more on a new one.
            inner.forget_messages(to, &messages);
            if fresh {
                return Err(Error::Unreachable {
                    addr: to,
                    reason: "the messages stream closed before the message was sent".into(),
                });
            }
            fresh = true;
        }
    }

    /// A message (header and frame) on a new unidirectional stream.
    async fn send_on_its_own(inner: &Arc<Inner>, to: SocketAddr, buf: &[u8]) -> Result<(), Error> {
        let conn = inner.connection(to).await?;
        let mut send = match conn.open_uni().await {
            Ok(send) => send,
            Err(e) => {
                inner.evict(to, &conn);
                return Err(connection_error(to, e));
            }
        };
        send.write_all(buf)
            .await
            .map_err(|e| write_failure(to, e))?;
        let _ = send.finish();
        inner.stats.sent(buf.len());
        Ok(())
    }

    /// Sends an unreliable datagram: it may be lost, duplicated or reordered.
    /// Fails with [`Error::DatagramTooLarge`] above the path's datagram size
    /// (about 1.2 KB).
    pub async fn send_datagram(&self, to: SocketAddr, message: &P::Message) -> Result<(), Error> {
        let inner = &self.endpoint.inner;
        let mut buf = Vec::with_capacity(64);
        buf.extend_from_slice(&frame::datagram_header(P::CHANNEL));
        buf = postcard::to_extend(message, buf)
            .map_err(|e| FrameError::Malformed(format!("cannot encode: {e}")))?;
        let conn = inner.connection(to).await?;
        let len = buf.len();
        match conn.send_datagram(buf.into()) {
            Ok(()) => {
                inner.stats.sent(len);
                Ok(())
            }
            Err(quinn::SendDatagramError::TooLarge) => Err(Error::DatagramTooLarge {
                size: len,
                max: conn.max_datagram_size().unwrap_or(0),
            }),
            Err(quinn::SendDatagramError::ConnectionLost(e)) => {
                inner.evict(to, &conn);
                Err(connection_error(to, e))
            }
            Err(e) => Err(Error::ConnectionLost {
                addr: to,
                reason: e.to_string(),
            }),
        }
    }

    /// Sends `message` as a datagram when it fits the path, else on a
    /// one-way stream: for protocols that tolerate loss but have the odd
    /// large message.
    pub async fn send_datagram_or_stream(
        &self,
        to: SocketAddr,
        message: &P::Message,
    ) -> Result<(), Error> {
        match self.send_datagram(to, message).await {
            Err(Error::DatagramTooLarge { .. }) => self.send(to, message).await,
            other => other,
        }
    }

    /// Opens a long-lived stream of frames to `to`; the remote's inbox gets
    /// [`Inbound::Stream`].
    pub async fn open_stream(&self, to: SocketAddr) -> Result<FramedStream, Error> {
        let inner = &self.endpoint.inner;
        let (mut send, recv) = inner.open_bi(to).await?;
        send.write_all(&frame::header(StreamKind::Stream, P::CHANNEL))
            .await
            .map_err(|e| write_failure(to, e))?;
        let peer = match inner.conns.get(&to) {
            Some(conn) => Peer {
                identity: Arc::new(peer_identity(&conn)?),
                addr: to,
            },
            None => {
                return Err(Error::ConnectionLost {
                    addr: to,
                    reason: "connection closed while opening the stream".into(),
                })
            }
        };
        Ok(FramedStream::new(
            peer,
            send,
            Reader::new(recv),
            inner.config.max_frame_size,
        ))
    }
}

impl Inner {
    async fn accept_loop(self: Arc<Self>) {
        while let Some(mut incoming) = self.endpoint.accept().await {
            let addr = incoming.remote_address();
            let in_progress = self.handshakes.load(Relaxed);
            if in_progress >= self.config.max_handshakes as usize {
                self.stats.handshakes_shed.fetch_add(1, Relaxed);
                incoming.refuse();
                self.refused(
                    addr,
                    format!("{in_progress} handshakes in progress already"),
                );
                continue;
            }
            // Under load, make the sender prove its address first: spoofed
            // floods never come back, and cost no handshake.
            if in_progress >= self.config.address_validation_above as usize
                && !incoming.remote_address_validated()
            {
                match incoming.retry() {
                    Ok(()) => {
                        self.stats.handshakes_retried.fetch_add(1, Relaxed);
                        continue;
                    }
                    Err(e) => incoming = e.into_incoming(),
                }
            }
            self.handshakes.fetch_add(1, Relaxed);
            tokio::spawn(self.clone().handle_incoming(incoming));
        }
    }

    async fn handle_incoming(self: Arc<Self>, incoming: quinn::Incoming) {
        /// Counts the handshake as over however this function returns.
        struct Done<'a>(&'a AtomicUsize);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Relaxed);
            }
        }
        let done = Done(&self.handshakes);
        let addr = incoming.remote_address();
        let connecting = match incoming.accept() {
            Ok(connecting) => connecting,
            Err(e) => return self.refused(addr, e.to_string()),
        };
        let conn = match timeout(self.config.connect_timeout, connecting).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return self.refused(addr, connection_error(addr, e).to_string()),
            Err(_) => return self.refused(addr, "handshake timed out".into()),
        };
        let identity = match peer_identity(&conn) {
            Ok(identity) => identity,
            Err(e) => {
                let reason = e.to_string();
                conn.close(VarInt::from_u32(codes::CLOSE_REFUSED), reason.as_bytes());
                return self.refused(addr, reason);
            }
        };
        let alpn = conn
            .handshake_data()
            .and_then(|data| data.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
            .and_then(|data| data.protocol);
        let as_node = alpn.as_deref() == Some(tls::ALPN_PEER);
        if as_node && !identity.is_node() {
            let reason = format!("{identity} may not connect as a node");
            conn.close(VarInt::from_u32(codes::CLOSE_REFUSED), reason.as_bytes());
            return self.refused(addr, reason);
        }
        // Clients hold a stream per watch: they may be allowed many more
        // than nodes.
        let streams = match as_node {
            true => self.config.max_concurrent_streams,
            false => self.config.max_concurrent_client_streams,
        };
        conn.set_max_concurrent_bi_streams(VarInt::from_u32(streams));
        if as_node {
            // The remote dials from its listening socket, so this connection
            // also serves our own calls to that address.
            self.conns.insert(addr, conn.clone());
        }
        let peer = Peer {
            identity: Arc::new(identity),
            addr,
        };
        drop(done);
        self.drive(conn, peer, !as_node).await;
    }

    /// Counts a refused handshake and reports it: every one as an event,
    /// a few per interval in the log and the rest summed up (`refusals`).
    fn refused(&self, addr: SocketAddr, reason: String) {
        let reason = explain(reason);
        self.stats.connections_refused.fetch_add(1, Relaxed);
        let verdict = self
            .refusals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .refused(std::time::Instant::now(), addr, &reason);
        if let Some(summary) = &verdict.summary {
            log_summary(summary);
        }
        if verdict.log {
            tracing::warn!(%addr, %reason, "connection refused");
        } else {
            self.stats.refusals_unlogged.fetch_add(1, Relaxed);
        }
        let _ = self.events.send(TransportEvent::Refused { addr, reason });
    }

    /// Serves one connection until it closes.
    async fn drive(self: Arc<Self>, conn: quinn::Connection, peer: Peer, is_client: bool) {
        self.stats.connections_opened.fetch_add(1, Relaxed);
        tracing::debug!(peer = %peer.identity, addr = %peer.addr, "connected");
        let _ = self.events.send(TransportEvent::Connected(peer.clone()));
        // One task per kind of arrival: a select! over all three would poll
        // (and lock) the connection three times for every new stream.
        let uni = {
            let (me, conn, peer) = (self.clone(), conn.clone(), peer.clone());
            tokio::spawn(async move {
                while let Ok(recv) = conn.accept_uni().await {
                    me.stats.uni_streams_accepted.fetch_add(1, Relaxed);
                    tokio::spawn(me.clone().handle_uni(peer.clone(), is_client, recv));
                }
            })
        };
        let datagrams = {
            let (me, conn, peer) = (self.clone(), conn.clone(), peer.clone());
            tokio::spawn(async move {
                while let Ok(bytes) = conn.read_datagram().await {
                    me.handle_datagram(&peer, is_client, &bytes);
                }
            })
        };
        let reason = loop {
            match conn.accept_bi().await {
                Ok((send, recv)) => {
                    self.stats.streams_accepted.fetch_add(1, Relaxed);
                    tokio::spawn(self.clone().handle_bi(peer.clone(), is_client, send, recv));
                }
                Err(e) => break e,
            }
        };
        // Both end on their own once the connection is closed; abort in case
        // one is parked in an inbox.
        uni.abort();
        datagrams.abort();
        self.evict(peer.addr, &conn);
        tracing::debug!(peer = %peer.identity, %reason, "disconnected");
        let _ = self.events.send(TransportEvent::Disconnected {
            peer,
            reason: reason.to_string(),
        });
    }

    pub(crate) fn route(
        &self,
        channel: ChannelId,
        is_client: bool,
    ) -> Result<Arc<dyn Route>, Status> {
        match self.routes.get(&channel) {
            None => Err(Status::UnknownChannel),
            Some(route) if is_client && !route.accepts_clients() => Err(Status::Rejected),
            Some(route) => Ok(route.clone()),
        }
    }

    pub(crate) fn bad_stream(
        &self,
        peer: &Peer,
        send: Option<&mut SendStream>,
        recv: &mut RecvStream,
        failure: ReadFailure,
    ) {
        // A lost connection is the driver's business, not this stream's.
        let ReadFailure::Frame(error) = failure else {
            return;
        };
        tracing::debug!(peer = %peer.identity, %error, "stream refused");
        self.stats.stream_errors.fetch_add(1, Relaxed);
        stream::abort(send, Some(recv), &error);
    }

    async fn handle_bi(
        self: Arc<Self>,
        peer: Peer,
        is_client: bool,
        mut send: SendStream,
        recv: RecvStream,
    ) {
        let mut reader = Reader::new(recv);
        let (kind, channel) = match reader.fixed::<HEADER_LEN>().await {
            Ok(Some(head)) => match frame::parse_header(head) {
                Ok(parsed) => parsed,
                Err(e) => {
                    return self.bad_stream(&peer, Some(&mut send), reader.stream(), e.into())
                }
            },
            Ok(None) => return,
            Err(failure) => {
                return self.bad_stream(&peer, Some(&mut send), reader.stream(), failure)
            }
        };
        let max = self.config.max_frame_size;
        match kind {
            StreamKind::Request => {
                let route = self.route(channel, is_client);
                let answer = match reader.frame(max).await {
                    Ok(Some(body)) => {
                        self.stats.received(HEADER_LEN + body.len());
                        match &route {
                            Err(status) => Ok(Err(*status)),
                            Ok(route) => route
                                .request(peer.clone(), &body, max)
                                .map(Ok)
                                .map_err(ReadFailure::from),
                        }
                    }
                    Ok(None) => Err(FrameError::Truncated.into()),
                    Err(failure) => Err(failure),
                };
                let answer = match answer {
                    Ok(answer) => reader.expect_end().await.map(|()| answer),
                    Err(failure) => Err(failure),
                };
                let answer = match answer {
                    Err(failure) => {
                        return self.bad_stream(&peer, Some(&mut send), reader.stream(), failure)
                    }
                    Ok(Err(status)) => status_frame(status, &refusal(status, channel)),
                    Ok(Ok(answer)) => answer.await,
                };
                if send.write_all(&answer).await.is_ok() {
                    self.stats.sent(answer.len());
                    let _ = send.finish();
                }
            }
            StreamKind::Stream => match self.route(channel, is_client) {
                Err(status) => {
                    self.stats.stream_errors.fetch_add(1, Relaxed);
                    let code = VarInt::from_u32(codes::UNKNOWN_CHANNEL);
                    let _ = send.reset(code);
                    let _ = reader.stream().stop(code);
                    tracing::debug!(peer = %peer.identity, reason = %refusal(status, channel), "stream refused");
                }
                Ok(route) => {
                    let stream = FramedStream::new(peer.clone(), send, reader, max);
                    if let Some(wait) = route.stream(peer, stream) {
                        wait.await;
                    }
                }
            },
            StreamKind::Calls if !self.config.calls => {
                let e = FrameError::UnknownKind(kind as u8);
                self.bad_stream(&peer, Some(&mut send), reader.stream(), e.into());
            }
            StreamKind::Calls => {
                let limit = self.config.max_concurrent_streams as usize;
                calls::serve(self.clone(), peer, is_client, channel, reader, send, limit).await;
            }
            StreamKind::Message | StreamKind::Messages => {
                let e = FrameError::UnknownKind(kind as u8);
                self.bad_stream(&peer, Some(&mut send), reader.stream(), e.into());
            }
        }
    }

    async fn handle_uni(self: Arc<Self>, peer: Peer, is_client: bool, recv: RecvStream) {
        let mut reader = Reader::new(recv);
        let channel = match reader.fixed::<HEADER_LEN>().await {
            Ok(Some(head)) => match frame::parse_header(head) {
                Ok((StreamKind::Message, channel)) => channel,
                Ok((StreamKind::Messages, channel)) if self.config.calls => {
                    return messages::serve(self.clone(), peer, is_client, channel, reader).await;
                }
                Ok((kind, _)) => {
                    let e = FrameError::UnknownKind(kind as u8);
                    return self.bad_stream(&peer, None, reader.stream(), e.into());
                }
                Err(e) => return self.bad_stream(&peer, None, reader.stream(), e.into()),
            },
            Ok(None) => return,
            Err(failure) => return self.bad_stream(&peer, None, reader.stream(), failure),
        };
        let route = self.route(channel, is_client);
        let delivered = match reader.frame(self.config.max_frame_size).await {
            Ok(Some(body)) => {
                self.stats.received(HEADER_LEN + body.len());
                match &route {
                    Ok(route) => route
                        .message(peer.clone(), &body, Delivery::Reliable)
                        .map_err(ReadFailure::from),
                    Err(_) => Ok(None),
                }
            }
            Ok(None) => Err(FrameError::Truncated.into()),
            Err(failure) => Err(failure),
        };
        let delivered = match delivered {
            Ok(wait) => reader.expect_end().await.map(|()| wait),
            Err(failure) => Err(failure),
        };
        match delivered {
            Err(failure) => self.bad_stream(&peer, None, reader.stream(), failure),
            Ok(Some(wait)) => wait.await,
            Ok(None) if route.is_err() => {
                self.stats.stream_errors.fetch_add(1, Relaxed);
                let _ = reader
                    .stream()
                    .stop(VarInt::from_u32(codes::UNKNOWN_CHANNEL));
            }
            Ok(None) => {}
        }
    }

    fn handle_datagram(&self, peer: &Peer, is_client: bool, bytes: &[u8]) {
        let delivered = (|| {
            let (channel, body) = frame::parse_datagram(bytes).ok()?;
            let route = self.route(channel, is_client).ok()?;
            route.message(peer.clone(), body, Delivery::Datagram).ok()
        })();
        if delivered.is_some() {
            self.stats.received(bytes.len());
        } else {
            self.stats.datagrams_dropped.fetch_add(1, Relaxed);
        }
    }

    /// Opens a bidirectional stream, redialing once if the cached connection
    /// turns out to be dead before anything was sent on it. Waits at most
    /// `connect_timeout` for the remote to allow another stream: long-lived
    /// streams (watches) can hold every one it allows, and a call must then
    /// fail, definitely unsent, rather than wait for ever.
    async fn open_bi(self: &Arc<Self>, to: SocketAddr) -> Result<(SendStream, RecvStream), Error> {
        let mut retried = false;
        let waited = self.config.connect_timeout;
        loop {
            let conn = self.connection(to).await?;
            let Ok(opened) = timeout(waited, conn.open_bi()).await else {
                return Err(Error::StreamsExhausted { addr: to, waited });
            };
            match opened {
                Ok(pair) => return Ok(pair),
                Err(e) => {
                    self.evict(to, &conn);
                    if retried {
                        return Err(connection_error(to, e));
                    }
                    retried = true;
                }
            }
        }
    }

    /// The cached connection to `addr`, or a new one. Concurrent callers
    /// share one dial; failed dials back off exponentially.
    async fn connection(self: &Arc<Self>, addr: SocketAddr) -> Result<quinn::Connection, Error> {
        if let Some(conn) = self.live(addr) {
            return Ok(conn);
        }
        let slot = self.dials.entry(addr).or_default().clone();
        let mut state = slot.lock().await;
        if let Some(conn) = self.live(addr) {
            return Ok(conn);
        }
        let now = Instant::now();
        if let Some(retry_at) = state.retry_at {
            if now < retry_at {
                return Err(Error::Backoff {
                    addr,
                    retry_in: retry_at - now,
                });
            }
        }
        match self.dial(addr).await {
            Ok(conn) => {
                *state = DialState::default();
                Ok(conn)
            }
            Err(e) => {
                let wait = backoff(
                    self.config.reconnect_backoff_initial,
                    self.config.reconnect_backoff_max,
                    state.failures,
                );
                state.failures = state.failures.saturating_add(1);
                state.retry_at = Some(Instant::now() + wait);
                Err(e)
            }
        }
    }

    /// The cached connection. A closed one may linger here until its driver
    /// evicts it; `open_bi` then fails at once and the caller redials.
    fn live(&self, addr: SocketAddr) -> Option<quinn::Connection> {
        self.conns.get(&addr).map(|conn| conn.clone())
    }

    /// One handshake with `addr`, within the connect timeout. A dial that
    /// has no answer after about one retransmission timeout (three initial
    /// RTTs) is joined by a fresh one, and so on (at most
    /// [`MAX_PARALLEL_DIALS`]); the first to complete wins and the others
    /// are dropped. A dial begun while the peer was cut off would otherwise
    /// wait for QUIC's backed-off retransmission of its first packet (with
    /// the LAN defaults at 0.3, 0.9 and 2.1 s): healed at 1 s, the link
    /// stayed down until the timeout and a redial, ~0.8 s of a failover.
    async fn dial(self: &Arc<Self>, addr: SocketAddr) -> Result<quinn::Connection, Error> {
        let start = |dials: &mut tokio::task::JoinSet<_>| {
            let connecting = self
                .endpoint
                .connect_with(self.dial_config.clone(), addr, tls::SNI)
                .map_err(|e| match e {
                    quinn::ConnectError::EndpointStopping => Error::Closed,
                    other => Error::Unreachable {
                        addr,
                        reason: other.to_string(),
                    },
                })?;
            dials.spawn(connecting);
            Ok::<(), Error>(())
        };
        let mut dials = tokio::task::JoinSet::new();
        start(&mut dials)?;
        let after = self.config.connect_timeout;
        let deadline = Instant::now() + after;
        let every = (self.config.initial_rtt * 3).max(Duration::from_millis(10));
        let conn = loop {
            tokio::select! {
                Some(joined) = dials.join_next() => match joined {
                    Ok(Ok(conn)) => break conn,
                    // Silence for the idle timeout: the others (or a fresh
                    // one) go on until the connect timeout.
                    Ok(Err(ConnectionError::TimedOut)) => {
                        if dials.is_empty() {
                            start(&mut dials)?;
                        }
                    }
                    Ok(Err(e)) => {
                        // An answer (a refusal, a failed handshake), not
                        // silence: another dial would get the same.
                        let error = connection_error(addr, e);
                        if matches!(error, Error::Handshake { .. }) {
                            self.refused(addr, error.to_string());
                        }
                        return Err(error);
                    }
                    Err(_) => return Err(Error::Closed),
                },
                _ = tokio::time::sleep(every), if dials.len() < MAX_PARALLEL_DIALS => {
                    start(&mut dials)?;
                }
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(Error::Timeout {
                        what: "connect",
                        addr,
                        after,
                    })
                }
            }
        };
        // The slower dials are dropped with the set: their connections close.
        drop(dials);
        let identity = peer_identity(&conn)?;
        self.conns.insert(addr, conn.clone());
        let peer = Peer {
            identity: Arc::new(identity),
            addr,
        };
        tokio::spawn(self.clone().drive(conn.clone(), peer, false));
        Ok(conn)
    }

    /// The open calls stream to `to` for `channel`, or a new one.
    async fn calls_to(
        self: &Arc<Self>,
        to: SocketAddr,
        channel: ChannelId,
    ) -> Result<Arc<Calls>, Error> {
        let key = (to, channel);
        if let Some(calls) = self.calls.get(&key).filter(|c| c.is_open()) {
            return Ok(calls.clone());
        }
        let slot = self.call_opens.entry(key).or_default().clone();
        let _opening = slot.lock().await;
        if let Some(calls) = self.calls.get(&key).filter(|c| c.is_open()) {
            return Ok(calls.clone());
        }
        let (send, recv) = self.open_bi(to).await?;
        let calls = calls::start(self, to, channel, send, recv);
        self.calls.insert(key, calls.clone());
        Ok(calls)
    }

    /// The open messages stream to `to` for `channel`, if it is on the
    /// connection cached for `to`. A peer restarted after a crash dials in
    /// afresh and its connection replaces the cached one, while the old one
    /// looks open until its idle timeout: messages written there are lost.
    fn open_messages(&self, key: (SocketAddr, ChannelId)) -> Option<Arc<Messages>> {
        let messages = self
            .messages
            .get(&key)
            .filter(|m| m.is_open())
            .map(|m| m.clone())?;
        let current = self
            .conns
            .get(&key.0)
            .is_some_and(|c| c.stable_id() == messages.conn_id());
        current.then_some(messages)
    }

    /// The open messages stream to `to` for `channel`, or a new one.
    async fn messages_to(
        self: &Arc<Self>,
        to: SocketAddr,
        channel: ChannelId,
    ) -> Result<Arc<Messages>, Error> {
        let key = (to, channel);
        if let Some(open) = self.open_messages(key) {
            return Ok(open);
        }
        let slot = self.message_opens.entry(key).or_default().clone();
        let _opening = slot.lock().await;
        if let Some(open) = self.open_messages(key) {
            return Ok(open);
        }
        let conn = self.connection(to).await?;
        let send = match conn.open_uni().await {
            Ok(send) => send,
            Err(e) => {
                self.evict(to, &conn);
                return Err(connection_error(to, e));
            }
        };
        let messages = messages::start(self, to, channel, conn, send);
        self.messages.insert(key, messages.clone());
        Ok(messages)
    }

    /// Drops `messages` from the open ones (it failed or its connection
    /// closed), unless a newer stream replaced it already.
    pub(crate) fn forget_messages(&self, to: SocketAddr, messages: &Arc<Messages>) {
        self.messages
            .retain(|(addr, _), open| *addr != to || !Arc::ptr_eq(open, messages));
    }

    /// Drops `calls` from the open ones (it failed or ended), unless a
    /// newer stream replaced it already.
    pub(crate) fn forget_calls(&self, to: SocketAddr, calls: &Arc<Calls>) {
        self.calls
            .retain(|(addr, _), open| *addr != to || !Arc::ptr_eq(open, calls));
    }

    fn evict(&self, addr: SocketAddr, conn: &quinn::Connection) {
        self.conns
            .remove_if(&addr, |_, cached| cached.stable_id() == conn.stable_id());
    }
}

/// A request to `to` that ran out of its `after`: running out while still
/// dialing (a timeout shorter than the dial's own), before the request was
/// `opened` on a stream, proves nothing was sent, as a dial timeout does.
fn timed_out(to: SocketAddr, after: Duration, opened: &std::sync::atomic::AtomicBool) -> Error {
    Error::Timeout {
        what: if opened.load(Relaxed) {
            "request"
        } else {
            "connect"
        },
        addr: to,
        after,
    }
}

pub(crate) fn read_failed(addr: SocketAddr, failure: ReadFailure) -> Error {
    match failure {
        ReadFailure::Lost(e) => connection_error(addr, e),
        ReadFailure::Frame(e) => e.into(),
    }
}

fn write_failure(addr: SocketAddr, error: quinn::WriteError) -> Error {
    match error {
        quinn::WriteError::ConnectionLost(e) => connection_error(addr, e),
        other => stream::write_error(other).into(),
    }
}

/// Handshakes one dial runs at the same time, at most (see `Inner::dial`).
const MAX_PARALLEL_DIALS: usize = 8;

/// Maps a quinn connection error to ours, keeping TLS refusals and the
/// remote's own refusal apart from plain loss.
fn connection_error(addr: SocketAddr, error: ConnectionError) -> Error {
    match error {
        ConnectionError::ApplicationClosed(close)
            if close.error_code == VarInt::from_u32(codes::CLOSE_REFUSED) =>
        {
            Error::Refused {
                addr,
                reason: String::from_utf8_lossy(&close.reason).into_owned(),
            }
        }
        ConnectionError::TransportError(e) if is_crypto(e.code) => Error::Handshake {
            addr,
            reason: explain(e.to_string()),
        },
        ConnectionError::ConnectionClosed(close) if is_crypto(close.error_code) => {
            Error::Handshake {
                addr,
                reason: explain(close.to_string()),
            }
        }
        ConnectionError::TimedOut => Error::Unreachable {
            addr,
            reason: "no answer (timed out)".into(),
        },
        ConnectionError::LocallyClosed => Error::Closed,
        other => Error::ConnectionLost {
            addr,
            reason: other.to_string(),
        },
    }
}

/// One line for the refusals an interval did not log one by one.
fn log_summary(summary: &refusals::Summary) {
    tracing::warn!(
        refused = summary.unlogged,
        interval = ?refusals::INTERVAL,
        last_addr = %summary.last_addr,
        last_reason = %summary.last_reason,
        "{} more connections refused in the last {:?} were not logged one by one \
         (a flood of unauthenticated handshakes?); clustron_connections_refused_total counts them all",
        summary.unlogged,
        refusals::INTERVAL,
    );
}

/// Adds what rustls's terse reasons mean for an operator.
fn explain(reason: String) -> String {
    let hint = if reason.contains("UnknownIssuer") || reason.contains("BadSignature") {
        "the certificate was not signed by this cluster's CA"
    } else if reason.contains("expired") || reason.contains("Expired") {
        "the certificate has expired"
    } else if reason.contains("NotValidYet") {
        "the certificate is not valid yet (clock skew?)"
    } else if reason.contains("no certificates") || reason.contains("NoCertificatesPresented") {
        "the peer presented no client certificate"
    } else if reason.contains("certificate unknown") || reason.contains("bad certificate") {
        "the remote refused our certificate"
    } else {
        return reason;
    };
    if reason.contains(hint) {
        return reason;
    }
    format!("{reason} ({hint})")
}

/// QUIC carries TLS alerts as transport error codes 0x100..=0x1ff.
fn is_crypto(code: quinn::TransportErrorCode) -> bool {
    (0x100..=0x1ff).contains(&u64::from(code))
}

fn peer_identity(conn: &quinn::Connection) -> Result<PeerIdentity, Error> {
    let certs = conn
        .peer_identity()
        .and_then(|any| {
            any.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
        })
        .ok_or_else(|| CertError::NoIdentity("the peer presented no certificate".into()))?;
    let first = certs
        .first()
        .ok_or_else(|| CertError::NoIdentity("the peer presented no certificate".into()))?;
    Ok(PeerIdentity::from_certificate(first)?)
}

pub(crate) fn refusal(status: Status, channel: ChannelId) -> String {
    match status {
        Status::UnknownChannel => format!("no handler for channel {channel}"),
        _ => format!("channel {channel} is for nodes only"),
    }
}

/// `initial * 2^failures`, capped at `max`.
fn backoff(initial: Duration, max: Duration, failures: u32) -> Duration {
    initial
        .checked_mul(1u32 << failures.min(20))
        .map_or(max, |wait| wait.min(max))
}

/// quinn's settings for `config`, allowing the remote `bidi_streams`
/// concurrent bidirectional streams.
fn quinn_transport(config: &TransportConfig, bidi_streams: u32) -> quinn::TransportConfig {
    let mut transport = quinn::TransportConfig::default();
    let streams = VarInt::from_u32(config.max_concurrent_streams);
    transport
        .max_concurrent_bidi_streams(VarInt::from_u32(bidi_streams))
        .max_concurrent_uni_streams(streams)
        .keep_alive_interval(Some(config.keep_alive_interval))
        .initial_rtt(config.initial_rtt)
        .max_idle_timeout(config.idle_timeout.try_into().ok());
    // The peer acknowledges every ninth ack-eliciting packet instead of
    // every second (QUIC's ACK frequency extension; packets out of order
    // are still acknowledged at once, and an acknowledgement waits at most
    // the peer's max_ack_delay, 25 ms): under load most packets need no
    // ACK of their own, since responses carry them. `cargo xtask bench
    // kv`, two alternating runs each: put with 64 in flight 34.7k and
    // 32.6k/s at 37-39 µs of server CPU per put acknowledging every second
    // packet, 36.5k and 35.6k/s at 34 µs every ninth; every 33rd was no
    // better (33.1k, 33.4k/s).
    let mut acks = quinn::AckFrequencyConfig::default();
    acks.ack_eliciting_threshold(VarInt::from_u32(8));
    transport.ack_frequency_config(Some(acks));
    transport
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The messages stream follows the cached connection: once a new
    /// connection to the peer replaces it (a restarted peer dialed in), the
    /// next message goes on a new stream on that connection, not into the
    /// old one (which looks open until its idle timeout).
    #[tokio::test]
    async fn messages_follow_the_connection_the_cache_holds() {
        struct Note;
        impl crate::Protocol for Note {
            const CHANNEL: ChannelId = ChannelId(300);
            type Request = ();
            type Response = ();
            type Message = u64;
        }
        let ca = crate::certs::CertificateAuthority::generate("test").unwrap();
        let node = |name: &str| {
            let cert = ca
                .issue(&crate::certs::CertRequest::node(name).unwrap())
                .unwrap();
            let identity = TlsIdentity::from_certified(ca.cert_pem(), &cert).unwrap();
            Endpoint::bind(
                TransportConfig::new("127.0.0.1:0".parse().unwrap()),
                identity,
            )
            .unwrap()
        };
        let (a, b) = (node("a"), node("b"));
        let mut inbox = b.register::<Note>().unwrap();
        let to = b.local_addr();
        let channel = a.channel::<Note>();
        let mut received = Vec::new();
        channel.send(to, &1).await.unwrap();
        // A second connection to b takes the cache's place.
        let fresh = a.inner.dial(to).await.unwrap();
        a.inner.conns.insert(to, fresh);
        channel.send(to, &2).await.unwrap();
        while received.len() < 2 {
            let item = tokio::time::timeout(Duration::from_secs(10), inbox.recv())
                .await
                .unwrap()
                .unwrap();
            if let Inbound::Message { message, .. } = item {
                received.push(message);
            }
        }
        received.sort_unstable();
        assert_eq!(received, vec![1, 2]);
        assert_eq!(
            b.stats().uni_streams_accepted,
            2,
            "a stream on each connection"
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let (initial, max) = (Duration::from_millis(50), Duration::from_secs(2));
        let waits: Vec<_> = (0..8)
            .map(|f| backoff(initial, max, f).as_millis())
            .collect();
        assert_eq!(waits, vec![50, 100, 200, 400, 800, 1600, 2000, 2000]);
        assert_eq!(backoff(initial, max, u32::MAX), max);
    }
}
