//! Rust client for Clustron.
//!
//! Connects to any of several node endpoints with a client certificate
//! (ALPN `clustron-client/1`), moving to the next endpoint when one fails.
//! API: [`Client::topology`], [`Client::watch_topology`] (follows deltas and,
//! after a failover, resumes by version or says the snapshot is fresh),
//! [`Client::publish`], [`Client::subscribe`].
//!
//! What it does not: depend on the server. It uses only the transport and the
//! protocol types of `clustron-dkv` (built without its `server` feature).
//!
//! # Example
//!
//! ```no_run
//! # async fn demo() -> Result<(), clustron_client::ClientError> {
//! use clustron_client::Client;
//! use clustron_transport::TlsIdentity;
//!
//! let identity = TlsIdentity::from_files("ca.pem".as_ref(), "admin.pem".as_ref(), "admin.key".as_ref())?;
//! let client = Client::new(vec!["127.0.0.1:7401".parse().unwrap()], identity)?;
//! let topology = client.topology().await?;
//! println!("{} members, leader {:?}", topology.members.len(), topology.leader);
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

pub use clustron_dkv::proto::{Change, MemberInfo, StreamItem, TopologyInfo};
use clustron_dkv::proto::{ClientProtocol, Request, Response, StreamRequest};
use clustron_transport::{Channel, Endpoint, FramedStream, TlsIdentity, TransportConfig};

/// What the client can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// No endpoints were given.
    #[error("no endpoints given")]
    NoEndpoints,
    /// Certificates could not be loaded.
    #[error(transparent)]
    Cert(#[from] clustron_transport::CertError),
    /// Every endpoint failed; the last error is given.
    #[error("no endpoint answered; last error: {0}")]
    Unavailable(clustron_transport::Error),
    /// The node refused the request.
    #[error("the node refused: {0}")]
    Refused(String),
    /// The transport failed locally.
    #[error(transparent)]
    Transport(#[from] clustron_transport::Error),
}

/// A client of a Clustron cluster. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Client {
    channel: Channel<ClientProtocol>,
    endpoints: Arc<Vec<SocketAddr>>,
    current: Arc<AtomicUsize>,
    _endpoint: Endpoint,
}

impl Client {
    /// A client for `endpoints`, authenticating with `identity` (a client
    /// certificate). Must be called inside a tokio runtime.
    pub fn new(endpoints: Vec<SocketAddr>, identity: TlsIdentity) -> Result<Self, ClientError> {
        if endpoints.is_empty() {
            return Err(ClientError::NoEndpoints);
        }
        // A client must notice a dead node quickly to fail over: QUIC
        // keep-alives every second, connection given up after 3 s of silence.
        let mut config = TransportConfig::new(SocketAddr::from(([0, 0, 0, 0], 0)));
        config.keep_alive_interval = std::time::Duration::from_secs(1);
        config.idle_timeout = std::time::Duration::from_secs(3);
        config.connect_timeout = std::time::Duration::from_secs(2);
        let endpoint = Endpoint::client(config, identity)?;
        Ok(Self {
            channel: endpoint.channel::<ClientProtocol>(),
            endpoints: Arc::new(endpoints),
            current: Arc::new(AtomicUsize::new(0)),
            _endpoint: endpoint,
        })
    }

    /// Endpoints in the order to try them: the current one first.
    fn order(&self) -> Vec<(usize, SocketAddr)> {
        let start = self.current.load(Ordering::Relaxed);
        (0..self.endpoints.len())
            .map(|i| (start + i) % self.endpoints.len())
            .map(|i| (i, self.endpoints[i]))
            .collect()
    }

    async fn request(&self, request: Request) -> Result<Response, ClientError> {
        let mut last = None;
        for (index, addr) in self.order() {
            match self.channel.request(addr, &request).await {
                Ok(Response::Error(reason)) => return Err(ClientError::Refused(reason)),
                Ok(response) => {
                    self.current.store(index, Ordering::Relaxed);
                    return Ok(response);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(ClientError::Unavailable(
            last.unwrap_or(clustron_transport::Error::Closed),
        ))
    }

    /// The cluster as one node sees it now.
    pub async fn topology(&self) -> Result<TopologyInfo, ClientError> {
        match self.request(Request::Topology).await? {
            Response::Topology(topology) => Ok(topology),
            other => Err(ClientError::Refused(format!("unexpected answer {other:?}"))),
        }
    }

    /// Publishes a user event; returns (origin node, sequence number).
    pub async fn publish(
        &self,
        topic: &str,
        payload: Vec<u8>,
    ) -> Result<(String, u64), ClientError> {
        match self
            .request(Request::Publish {
                topic: topic.to_owned(),
                payload,
            })
            .await?
        {
            Response::Published { origin, seq } => Ok((origin, seq)),
            other => Err(ClientError::Refused(format!("unexpected answer {other:?}"))),
        }
    }

    async fn open(&self, request: &StreamRequest) -> Result<FramedStream, ClientError> {
        let mut last = None;
        for (index, addr) in self.order() {
            match self.channel.open_stream(addr).await {
                Ok(mut stream) => match stream.send(request).await {
                    Ok(()) => {
                        self.current.store(index, Ordering::Relaxed);
                        return Ok(stream);
                    }
                    Err(e) => last = Some(clustron_transport::Error::Frame(e)),
                },
                Err(e) => last = Some(e),
            }
            // This endpoint failed: start with the next one next time.
            self.current
                .store((index + 1) % self.endpoints.len(), Ordering::Relaxed);
        }
        Err(ClientError::Unavailable(
            last.unwrap_or(clustron_transport::Error::Closed),
        ))
    }

    /// Follows the topology: a snapshot, then deltas. When the node it
    /// follows fails, it moves to another endpoint and resumes after the last
    /// version it saw; a node that cannot resume sends a snapshot marked
    /// `fresh`, so no change is silently missed.
    pub fn watch_topology(&self) -> TopologyWatcher {
        TopologyWatcher {
            client: self.clone(),
            stream: None,
            position: None,
        }
    }

    /// User events of `topic`, from now on.
    pub async fn subscribe(&self, topic: &str) -> Result<EventStream, ClientError> {
        let stream = self
            .open(&StreamRequest::Subscribe {
                topic: topic.to_owned(),
            })
            .await?;
        Ok(EventStream { stream })
    }
}

/// See [`Client::watch_topology`].
#[derive(Debug)]
pub struct TopologyWatcher {
    client: Client,
    stream: Option<FramedStream>,
    /// (node, version) of the last item seen.
    position: Option<(String, u64)>,
}

impl TopologyWatcher {
    /// The next snapshot or delta. Fails only when no endpoint answers.
    pub async fn next(&mut self) -> Result<StreamItem, ClientError> {
        loop {
            if self.stream.is_none() {
                let request = StreamRequest::WatchTopology {
                    from: self.position.clone(),
                };
                self.stream = Some(self.client.open(&request).await?);
            }
            let Some(stream) = self.stream.as_mut() else {
                continue;
            };
            match stream.recv::<StreamItem>().await {
                Ok(Some(item)) => {
                    match &item {
                        StreamItem::Snapshot { topology, .. } => {
                            self.position = Some((topology.node.clone(), topology.version));
                        }
                        StreamItem::Delta { version, .. } => {
                            if let Some(position) = self.position.as_mut() {
                                position.1 = *version;
                            }
                        }
                        StreamItem::Error(reason) => {
                            return Err(ClientError::Refused(reason.clone()))
                        }
                        StreamItem::Event { .. } => {}
                    }
                    return Ok(item);
                }
                // The node went away: fail over and resume.
                Ok(None) | Err(_) => {
                    self.stream = None;
                    let next = (self.client.current.load(Ordering::Relaxed) + 1)
                        % self.client.endpoints.len();
                    self.client.current.store(next, Ordering::Relaxed);
                }
            }
        }
    }
}

/// A stream of user events; see [`Client::subscribe`].
#[derive(Debug)]
pub struct EventStream {
    stream: FramedStream,
}

impl EventStream {
    /// The next event; `None` when the node closed the stream.
    pub async fn next(&mut self) -> Option<StreamItem> {
        self.stream.recv().await.ok().flatten()
    }
}
