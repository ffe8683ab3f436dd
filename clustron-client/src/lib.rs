//! Rust client for Clustron.
//!
//! Connects to any of several node endpoints with a client certificate
//! (ALPN `clustron-client/1`), moving to the next endpoint when one fails.
//! API: [`Client::topology`], [`Client::watch_topology`] (follows deltas and,
//! after a failover, resumes by version or says the snapshot is fresh),
//! [`Client::publish`], [`Client::subscribe`], and the key-value store:
//! [`Client::get`], [`Client::put`], [`Client::delete`], [`Client::range`],
//! [`Client::txn`], leases ([`Client::grant`], [`Client::keep_alive`],
//! [`Client::revoke`]) and [`Client::watch`] (resumes after a failover from
//! the next revision, so no change is missed or repeated), and locks with
//! fencing tokens ([`Client::lock`]). Requests go to
//! the leader: a node that is not the leader names it and the client
//! follows.
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

mod lock;

pub use lock::Lock;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use clustron_dkv::kv;
use clustron_dkv::kv::{
    DeleteRequest, Event, KeyRange, KeyValue, KvFailure, KvReply, KvRequest, LeaseId, PutRequest,
    RangeRequest, RangeResponse, Txn, TxnResponse, WatchRequest,
};
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
    /// The key-value store refused or could not serve the request.
    #[error(transparent)]
    Kv(#[from] KvFailure),
}

/// How long a key-value request keeps retrying while no leader can serve it,
/// by default (an election takes well under a second).
const KV_RETRY_FOR: Duration = Duration::from_secs(10);

/// A client of a Clustron cluster. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Client {
    channel: Channel<ClientProtocol>,
    endpoints: Arc<Vec<SocketAddr>>,
    current: Arc<AtomicUsize>,
    /// The key-value leader last named by a node: requests go there first.
    leader: Arc<std::sync::Mutex<Option<SocketAddr>>>,
    /// How long a key-value request retries while no leader can serve it.
    retry_for: Duration,
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
            leader: Arc::new(std::sync::Mutex::new(None)),
            retry_for: KV_RETRY_FOR,
            _endpoint: endpoint,
        })
    }

    /// How long key-value requests keep retrying while no leader can serve
    /// them (default 10 s): a script that prefers failing fast sets less.
    pub fn with_retry_for(mut self, retry_for: Duration) -> Self {
        self.retry_for = retry_for;
        self
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

    /// One key-value request, sent to the leader: a node that is not the
    /// leader names it and the request follows; while no leader can serve
    /// (an election, a leader catching up) it is retried for a few seconds.
    /// A write whose connection fails after it was sent is not retried: its
    /// outcome is unknown ([`KvFailure::Unknown`]).
    pub async fn kv(&self, request: KvRequest) -> Result<KvReply, ClientError> {
        let read_only = matches!(request, KvRequest::Range { .. });
        // Serializable reads are for any node: no need to go to the leader.
        let any_node = matches!(
            request,
            KvRequest::Range {
                linearizable: false,
                ..
            }
        );
        let deadline = Instant::now() + self.retry_for;
        let mut target: Option<SocketAddr> = if any_node {
            None
        } else {
            *self.leader.lock().unwrap_or_else(|e| e.into_inner())
        };
        let mut pause = Duration::from_millis(20);
        let wrapped = Request::Kv(request);
        loop {
            // The leader named by a node, or the endpoints in order.
            let candidates: Vec<(Option<usize>, SocketAddr)> = match target {
                Some(addr) => vec![(None, addr)],
                None => self
                    .order()
                    .into_iter()
                    .map(|(i, a)| (Some(i), a))
                    .collect(),
            };
            let mut response = Err(ClientError::Unavailable(clustron_transport::Error::Closed));
            for (index, addr) in candidates {
                match self.channel.request(addr, &wrapped).await {
                    Ok(answer) => {
                        if let Some(index) = index {
                            self.current.store(index, Ordering::Relaxed);
                        }
                        response = Ok(answer);
                        break;
                    }
                    // Never reached a node: try the next one.
                    Err(e) if read_only || e.nothing_processed() => {
                        response = Err(ClientError::Unavailable(e));
                    }
                    // The node may have proposed the write: do not send it
                    // again elsewhere.
                    Err(e) => {
                        return Err(ClientError::Kv(KvFailure::Unknown(format!(
                            "the connection to {addr} failed after the write was sent: {e}"
                        ))))
                    }
                }
            }
            let retry = match response {
                Ok(Response::Kv(Ok(reply))) => return Ok(reply),
                Ok(Response::Kv(Err(KvFailure::NotLeader {
                    leader: Some((_, addr)),
                }))) if target != Some(addr) => {
                    target = Some(addr);
                    *self.leader.lock().unwrap_or_else(|e| e.into_inner()) = Some(addr);
                    continue;
                }
                Ok(Response::Kv(Err(
                    failure @ (KvFailure::NotLeader { .. } | KvFailure::Unavailable(_)),
                ))) => ClientError::Kv(failure),
                Ok(Response::Kv(Err(failure))) => return Err(ClientError::Kv(failure)),
                Ok(other) => {
                    return Err(ClientError::Refused(format!("unexpected answer {other:?}")))
                }
                Err(e @ ClientError::Unavailable(_)) => e,
                Err(e) => return Err(e),
            };
            if Instant::now() + pause > deadline {
                return Err(retry);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
            target = None;
            *self.leader.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }

    /// Reads keys; `linearizable` reads see every write acknowledged before
    /// them, serializable ones may be stale but any node answers.
    pub async fn range(
        &self,
        request: RangeRequest,
        linearizable: bool,
    ) -> Result<(RangeResponse, u64), ClientError> {
        match self
            .kv(KvRequest::Range {
                request,
                linearizable,
            })
            .await?
        {
            KvReply::Range(response, revision) => Ok((response, revision)),
            other => Err(unexpected(other)),
        }
    }

    /// The current value of `key` (a linearizable read).
    pub async fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, ClientError> {
        let request = RangeRequest {
            range: KeyRange::Key(key.to_vec()),
            revision: 0,
            limit: 0,
            keys_only: false,
            count_only: false,
        };
        Ok(self.range(request, true).await?.0.kvs.pop())
    }

    /// Sets `key`; returns the revision of the write.
    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<u64, ClientError> {
        self.put_with(PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            lease: None,
            prev_kv: false,
        })
        .await
        .map(|(_, revision)| revision)
    }

    /// Sets a key with every option; returns the previous key-value (if
    /// asked) and the revision.
    pub async fn put_with(&self, put: PutRequest) -> Result<(Option<KeyValue>, u64), ClientError> {
        match self.kv(KvRequest::Put(put)).await? {
            KvReply::Put(response, revision) => Ok((response.prev_kv, revision)),
            other => Err(unexpected(other)),
        }
    }

    /// Deletes the keys of `range`; returns how many were deleted.
    pub async fn delete(&self, range: KeyRange) -> Result<u64, ClientError> {
        match self
            .kv(KvRequest::Delete(DeleteRequest {
                range,
                prev_kv: false,
            }))
            .await?
        {
            KvReply::Delete(response, _) => Ok(response.deleted),
            other => Err(unexpected(other)),
        }
    }

    /// Runs a transaction.
    pub async fn txn(&self, txn: Txn) -> Result<TxnResponse, ClientError> {
        match self.kv(KvRequest::Txn(txn)).await? {
            KvReply::Txn(response) => Ok(response),
            other => Err(unexpected(other)),
        }
    }

    /// Grants a lease of `ttl`; returns its id.
    pub async fn grant(&self, ttl: Duration) -> Result<LeaseId, ClientError> {
        match self
            .kv(KvRequest::LeaseGrant {
                id: LeaseId(0),
                ttl_ms: ttl.as_millis() as u64,
            })
            .await?
        {
            KvReply::LeaseGranted { id, .. } => Ok(id),
            other => Err(unexpected(other)),
        }
    }

    /// Renews a lease; returns its TTL.
    pub async fn keep_alive(&self, lease: LeaseId) -> Result<Duration, ClientError> {
        match self.kv(KvRequest::KeepAlive(lease)).await? {
            KvReply::KeptAlive { ttl_ms } => Ok(Duration::from_millis(ttl_ms)),
            other => Err(unexpected(other)),
        }
    }

    /// Revokes a lease; returns how many keys went with it.
    pub async fn revoke(&self, lease: LeaseId) -> Result<u64, ClientError> {
        match self.kv(KvRequest::LeaseRevoke(lease)).await? {
            KvReply::LeaseRevoked { deleted } => Ok(deleted),
            other => Err(unexpected(other)),
        }
    }

    /// Watches keys. A watch from revision 0 starts after the current
    /// revision, read first so that a failover can resume exactly.
    pub async fn watch(&self, mut request: WatchRequest) -> Result<KvWatch, ClientError> {
        if request.start_revision == 0 {
            let count = RangeRequest {
                range: request.range.clone(),
                revision: 0,
                limit: 0,
                keys_only: true,
                count_only: true,
            };
            let (_, revision) = self.range(count, true).await?;
            request.start_revision = revision + 1;
        }
        let stream = self.open(&StreamRequest::Watch(request.clone())).await?;
        Ok(KvWatch {
            client: self.clone(),
            request,
            stream: Some(stream),
        })
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

fn unexpected(reply: KvReply) -> ClientError {
    ClientError::Refused(format!("unexpected answer {reply:?}"))
}

/// See [`Client::watch`].
#[derive(Debug)]
pub struct KvWatch {
    client: Client,
    /// Its start revision is the next revision wanted.
    request: WatchRequest,
    stream: Option<FramedStream>,
}

impl KvWatch {
    /// The next changes: one or more whole revisions, in order. Moves to
    /// another node when its node fails and resumes from the next revision.
    /// Fails when no endpoint answers, or when the next revision was
    /// compacted (`KvFailure::Refused(KvError::Compacted)`).
    pub async fn next(&mut self) -> Result<Vec<Event>, ClientError> {
        let mut failures = 0;
        loop {
            if self.stream.is_none() {
                match self
                    .client
                    .open(&StreamRequest::Watch(self.request.clone()))
                    .await
                {
                    Ok(stream) => self.stream = Some(stream),
                    Err(e) => {
                        failures += 1;
                        if failures > 3 {
                            return Err(e);
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                }
            }
            let Some(stream) = self.stream.as_mut() else {
                continue;
            };
            match stream.recv::<StreamItem>().await {
                Ok(Some(StreamItem::KvEvents(events))) => {
                    if let Some(last) = events.last() {
                        self.request.start_revision = last.kv.mod_revision + 1;
                    }
                    return Ok(events);
                }
                Ok(Some(StreamItem::WatchCancelled(reason))) => {
                    self.stream = None;
                    return Err(ClientError::Kv(KvFailure::Refused(reason)));
                }
                Ok(Some(StreamItem::Error(reason))) => {
                    self.stream = None;
                    failures += 1;
                    if failures > 3 {
                        return Err(ClientError::Refused(reason));
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Ok(Some(_)) => {}
                // The node went away: resume elsewhere from the next revision.
                Ok(None) | Err(_) => {
                    self.stream = None;
                    let failed = self.client.current.load(Ordering::Relaxed);
                    self.client.current.store(
                        (failed + 1) % self.client.endpoints.len(),
                        Ordering::Relaxed,
                    );
                }
            }
        }
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
                        StreamItem::Event { .. }
                        | StreamItem::KvEvents(_)
                        | StreamItem::WatchCancelled(_) => {}
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
