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
//! follows. The distributed cache: [`Client::cache_get`],
//! [`Client::cache_put`], [`Client::cache_delete`], [`Client::cache_incr`],
//! [`Client::cache_get_many`], [`Client::cache_put_many`], any
//! [`cache::CacheOp`] with [`Client::cache_op`], namespaces
//! ([`Client::cache_create`], [`Client::cache_list`],
//! [`Client::cache_drop`]), entry events ([`Client::cache_events`]) and a
//! [`NearCache`]; any node serves them (forwarding to the key's owner).
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
mod near;
mod session;

pub use lock::Lock;
pub use near::{NearCache, NearStats};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use clustron_dkv::cache;
use clustron_dkv::cache::{
    CacheAnswer, CacheError, CacheEvent, CacheOp, CacheReply, CacheRequest, NamespaceConfig,
    PutCondition, TtlState, Versioned,
};
pub use clustron_dkv::kv;
use clustron_dkv::kv::{
    DeleteRequest, Event, KeyRange, KeyValue, KvError, KvFailure, KvReply, KvRequest, LeaseId,
    PutRequest, RangeRequest, RangeResponse, ReplicaInfo, Txn, TxnResponse, WatchRequest,
};
pub use clustron_dkv::proto::{Change, MemberInfo, StreamItem, TopologyInfo};
use clustron_dkv::proto::{ClientProtocol, Request, Response, StreamRequest};
use clustron_transport::{Channel, Endpoint, FramedStream, TlsIdentity, TransportConfig};
use session::{Session, SESSION_TTL};

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
    /// The cache refused or could not serve the request.
    #[error(transparent)]
    Cache(#[from] CacheError),
}

/// How long a key-value request keeps retrying while no leader can serve it,
/// by default (an election takes well under a second).
const KV_RETRY_FOR: Duration = Duration::from_secs(10);

/// How long an endpoint that failed is tried last.
const SUSPECT_FOR: Duration = Duration::from_secs(2);

/// Longest pause between two rounds of retries.
const MAX_PAUSE: Duration = Duration::from_millis(200);

/// Pause between rounds while a node is named as the leader (by the others
/// or by the topology) but does not serve yet: a new leader catching up on
/// the log serves within a few round trips, so it is asked again soon
/// rather than after a growing pause.
const LEADER_NAMED_PAUSE: Duration = Duration::from_millis(10);

/// Rounds paused by [`LEADER_NAMED_PAUSE`] before the pauses grow anyway
/// (a named leader that never serves: its store stopped, say).
const LEADER_NAMED_ROUNDS: u32 = 50;

/// A client of a Clustron cluster. Cheap to clone; clones share one
/// connection cache and one session.
#[derive(Debug, Clone)]
pub struct Client {
    shared: Arc<Shared>,
    /// The session writes go in, opened on the first write.
    session: Arc<tokio::sync::Mutex<Option<Arc<Session>>>>,
    /// How long a key-value request retries while no leader can serve it.
    retry_for: Duration,
}

/// What every clone of a client shares, and its background tasks use.
#[derive(Debug)]
struct Shared {
    channel: Channel<ClientProtocol>,
    endpoints: Vec<SocketAddr>,
    current: AtomicUsize,
    /// The key-value leader last named by a node: requests go there first.
    leader: std::sync::Mutex<Option<SocketAddr>>,
    /// Endpoints that failed recently, until when: tried last.
    suspects: std::sync::Mutex<HashMap<SocketAddr, Instant>>,
    /// The leader as the topology stream reports it, so that a request
    /// waiting on a leader that is gone moves on at once.
    leader_moves: tokio::sync::watch::Sender<Option<SocketAddr>>,
    /// Whether the topology follower runs.
    following: std::sync::atomic::AtomicBool,
    _endpoint: Endpoint,
}

/// How one attempt of a request ended, when it got no answer.
enum Miss {
    /// The transport failed.
    Transport(clustron_transport::Error),
    /// The leader moved elsewhere while waiting: try there.
    Moved(SocketAddr),
}

impl Client {
    /// A client for `endpoints`, authenticating with `identity` (a client
    /// certificate). Must be called inside a tokio runtime.
    pub fn new(endpoints: Vec<SocketAddr>, identity: TlsIdentity) -> Result<Self, ClientError> {
        if endpoints.is_empty() {
            return Err(ClientError::NoEndpoints);
        }
        // A client must notice a dead or frozen node quickly to fail over:
        // QUIC keep-alives every 250 ms, a connection given up after 1 s of
        // silence (about the election's lease, after which another node
        // leads anyway).
        let mut config = TransportConfig::new(SocketAddr::from(([0, 0, 0, 0], 0)));
        config.keep_alive_interval = Duration::from_millis(250);
        config.idle_timeout = Duration::from_secs(1);
        config.connect_timeout = Duration::from_secs(2);
        let endpoint = Endpoint::client(config, identity)?;
        Ok(Self {
            shared: Arc::new(Shared {
                channel: endpoint.channel::<ClientProtocol>(),
                endpoints,
                current: AtomicUsize::new(0),
                leader: std::sync::Mutex::new(None),
                suspects: std::sync::Mutex::new(HashMap::new()),
                leader_moves: tokio::sync::watch::channel(None).0,
                following: std::sync::atomic::AtomicBool::new(false),
                _endpoint: endpoint,
            }),
            session: Arc::default(),
            retry_for: KV_RETRY_FOR,
        })
    }

    /// How long key-value requests keep retrying while no leader can serve
    /// them (default 10 s): a script that prefers failing fast sets less.
    pub fn with_retry_for(mut self, retry_for: Duration) -> Self {
        self.retry_for = retry_for;
        self
    }

    /// Sends a (non key-value) request to the endpoints in turn. Only a
    /// read, or a failure that proves nothing was processed, moves on to
    /// the next endpoint: publishing an event twice through two nodes would
    /// deliver it twice.
    async fn request(&self, request: Request) -> Result<Response, ClientError> {
        let idempotent = matches!(request, Request::Topology);
        let mut last = None;
        for (index, addr) in self.shared.order() {
            match self.shared.channel.request(addr, &request).await {
                Ok(Response::Error(reason)) => return Err(ClientError::Refused(reason)),
                Ok(response) => {
                    self.shared.current.store(index, Ordering::Relaxed);
                    return Ok(response);
                }
                Err(e) if idempotent || e.nothing_processed() => {
                    self.shared.suspect(addr);
                    last = Some(e)
                }
                Err(e) => {
                    self.shared.suspect(addr);
                    return Err(ClientError::Kv(KvFailure::Unknown(format!(
                        "the connection to {addr} failed after the request was sent: {e}"
                    ))));
                }
            }
        }
        Err(ClientError::Unavailable(
            last.unwrap_or(clustron_transport::Error::Closed),
        ))
    }

    /// One cache request, to any node (operations are forwarded to the
    /// key's owner there). A refusal that says to retry (the partition is
    /// moving, the cache is starting) is retried for the client's retry
    /// budget; a transport failure moves on to the next endpoint if nothing
    /// was processed or the request only reads.
    pub async fn cache(&self, request: CacheRequest) -> Result<CacheAnswer, ClientError> {
        let reads = match &request {
            CacheRequest::Op { op, .. } => !op.is_write(),
            CacheRequest::List => true,
            CacheRequest::Create(_) | CacheRequest::Drop(_) => false,
        };
        let deadline = Instant::now() + self.retry_for;
        let mut pause = Duration::from_millis(20);
        let wrapped = Request::Cache(request);
        loop {
            let mut last = None;
            let mut answer = None;
            for (index, addr) in self.shared.order() {
                match self.shared.channel.request(addr, &wrapped).await {
                    Ok(Response::Cache(result)) => {
                        self.shared.current.store(index, Ordering::Relaxed);
                        answer = Some(result);
                        break;
                    }
                    Ok(Response::Error(reason)) => return Err(ClientError::Refused(reason)),
                    Ok(other) => {
                        return Err(ClientError::Refused(format!("unexpected answer {other:?}")))
                    }
                    Err(e) if reads || e.nothing_processed() => {
                        self.shared.suspect(addr);
                        last = Some(e);
                    }
                    Err(e) => {
                        self.shared.suspect(addr);
                        return Err(ClientError::Cache(CacheError::Unknown(format!(
                            "the connection to {addr} failed after the request was sent ({e})"
                        ))));
                    }
                }
            }
            let retry = match &answer {
                None => true,
                Some(Err(
                    CacheError::WrongOwner { .. }
                    | CacheError::Unavailable(_)
                    | CacheError::NotReady(_),
                )) => true,
                Some(_) => false,
            };
            if !retry || Instant::now() + pause > deadline {
                return match answer {
                    Some(result) => result.map_err(ClientError::Cache),
                    None => Err(ClientError::Unavailable(
                        last.unwrap_or(clustron_transport::Error::Closed),
                    )),
                };
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }

    /// Runs one cache operation on `namespace`.
    pub async fn cache_op(&self, namespace: &str, op: CacheOp) -> Result<CacheReply, ClientError> {
        match self
            .cache(CacheRequest::Op {
                namespace: namespace.to_owned(),
                op,
            })
            .await?
        {
            CacheAnswer::Reply(reply) => Ok(reply),
            other => Err(ClientError::Refused(format!("unexpected answer {other:?}"))),
        }
    }

    /// A cached value and its version, if present.
    pub async fn cache_get(
        &self,
        namespace: &str,
        key: &[u8],
    ) -> Result<Option<Versioned>, ClientError> {
        match self
            .cache_op(namespace, CacheOp::Get { key: key.to_vec() })
            .await?
        {
            CacheReply::Value(value) => Ok(value),
            other => Err(ClientError::Refused(format!("unexpected answer {other:?}"))),
        }
    }

    /// Stores a value (with a time to live, or the namespace's default);
    /// returns its new version.
    pub async fn cache_put(
        &self,
        namespace: &str,
        key: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<u64, ClientError> {
        let op = CacheOp::Put {
            key: key.to_vec(),
            value: value.to_vec(),
            ttl_ms: ttl.map(|t| t.as_millis().max(1) as u64),
            condition: PutCondition::Always,
            keep_ttl: false,
            return_old: false,
        };
        match self.cache_op(namespace, op).await? {
            CacheReply::Stored { version, .. } => Ok(version),
            other => Err(ClientError::Refused(format!("unexpected answer {other:?}"))),
        }
    }

    /// The values of `keys` (in order), fetched concurrently: the keys
    /// live in different partitions, so this is not one atomic read.
    pub async fn cache_get_many(
        &self,
        namespace: &str,
        keys: &[Vec<u8>],
    ) -> Result<Vec<Option<Versioned>>, ClientError> {
        let mut tasks = tokio::task::JoinSet::new();
        for (i, key) in keys.iter().enumerate() {
            let (client, namespace, key) = (self.clone(), namespace.to_owned(), key.clone());
            tasks.spawn(async move { (i, client.cache_get(&namespace, &key).await) });
        }
        let mut values = vec![None; keys.len()];
        while let Some(joined) = tasks.join_next().await {
            let (i, value) = joined.map_err(|e| ClientError::Refused(e.to_string()))?;
            values[i] = value?;
        }
        Ok(values)
    }

    /// Stores every (key, value) concurrently; returns their new versions
    /// in order. Not atomic: on an error some may be stored and others not.
    pub async fn cache_put_many(
        &self,
        namespace: &str,
        entries: &[(Vec<u8>, Vec<u8>)],
        ttl: Option<Duration>,
    ) -> Result<Vec<u64>, ClientError> {
        let mut tasks = tokio::task::JoinSet::new();
        for (i, (key, value)) in entries.iter().enumerate() {
            let client = self.clone();
            let (namespace, key, value) = (namespace.to_owned(), key.clone(), value.clone());
            tasks.spawn(async move { (i, client.cache_put(&namespace, &key, &value, ttl).await) });
        }
        let mut versions = vec![0; entries.len()];
        while let Some(joined) = tasks.join_next().await {
            let (i, version) = joined.map_err(|e| ClientError::Refused(e.to_string()))?;
            versions[i] = version?;
        }
        Ok(versions)
    }

    /// Removes a key; whether it was there.
    pub async fn cache_delete(&self, namespace: &str, key: &[u8]) -> Result<bool, ClientError> {
        match self
            .cache_op(namespace, CacheOp::Delete { key: key.to_vec() })
            .await?
        {
            CacheReply::Bool(found) => Ok(found),
            other => Err(ClientError::Refused(format!("unexpected answer {other:?}"))),
        }
    }

    /// Adds `by` to the integer at `key` (absent: 0); returns the result.
    pub async fn cache_incr(
        &self,
        namespace: &str,
        key: &[u8],
        by: i64,
    ) -> Result<i64, ClientError> {
        match self
            .cache_op(
                namespace,
                CacheOp::Incr {
                    key: key.to_vec(),
                    by,
                },
            )
            .await?
        {
            CacheReply::Integer(value) => Ok(value),
            other => Err(ClientError::Refused(format!("unexpected answer {other:?}"))),
        }
    }

    /// A key's remaining time to live.
    pub async fn cache_ttl(&self, namespace: &str, key: &[u8]) -> Result<TtlState, ClientError> {
        match self
            .cache_op(namespace, CacheOp::Ttl { key: key.to_vec() })
            .await?
        {
            CacheReply::Ttl(ttl) => Ok(ttl),
            other => Err(ClientError::Refused(format!("unexpected answer {other:?}"))),
        }
    }

    /// Entry events (put, update, remove, evict, expire) of `namespace`:
    /// each node sends those of the partitions it owns, so this opens a
    /// stream on **every endpoint** the client was given (give it every
    /// node). Fails if no endpoint accepts.
    pub async fn cache_events(&self, namespace: &str) -> Result<CacheEvents, ClientError> {
        let endpoints = self.shared.endpoints.clone();
        self.cache_events_from(namespace, &endpoints).await
    }

    /// [`Client::cache_events`] from the nodes at `addrs`; returns once
    /// each stream that opened is subscribed (its node sends an empty
    /// batch first).
    pub async fn cache_events_from(
        &self,
        namespace: &str,
        addrs: &[SocketAddr],
    ) -> Result<CacheEvents, ClientError> {
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let request = StreamRequest::CacheEvents {
            namespace: namespace.to_owned(),
        };
        let mut opened = 0;
        let mut last = None;
        for addr in addrs {
            let mut stream = match self.shared.channel.open_stream(*addr).await {
                Ok(stream) => stream,
                Err(e) => {
                    last = Some(e);
                    continue;
                }
            };
            if let Err(e) = stream.send(&request).await {
                last = Some(clustron_transport::Error::from(e));
                continue;
            }
            match stream.recv::<StreamItem>().await {
                Ok(Some(StreamItem::CacheEvents(_))) => {}
                Ok(Some(StreamItem::Error(reason))) => {
                    return Err(ClientError::Refused(reason));
                }
                Ok(_) => continue,
                Err(e) => {
                    last = Some(clustron_transport::Error::from(e));
                    continue;
                }
            }
            opened += 1;
            let tx = tx.clone();
            let addr = *addr;
            tokio::spawn(async move {
                let ended = loop {
                    match stream.recv::<StreamItem>().await {
                        Ok(Some(StreamItem::CacheEvents(batch))) => {
                            if tx.send(Ok(batch)).await.is_err() {
                                return;
                            }
                        }
                        Ok(Some(StreamItem::Error(reason))) => break reason,
                        Ok(Some(_)) => {}
                        Ok(None) => break format!("{addr} closed the stream"),
                        Err(e) => break format!("{addr}: {e}"),
                    }
                };
                let _ = tx
                    .send(Err(ClientError::Cache(CacheError::NotReady(ended))))
                    .await;
            });
        }
        if opened == 0 {
            return Err(ClientError::Unavailable(
                last.unwrap_or(clustron_transport::Error::Closed),
            ));
        }
        Ok(CacheEvents { rx })
    }

    /// Creates a cache namespace (admin role).
    pub async fn cache_create(&self, config: NamespaceConfig) -> Result<(), ClientError> {
        self.cache(CacheRequest::Create(config)).await.map(|_| ())
    }

    /// Drops a cache namespace and its entries (admin role).
    pub async fn cache_drop(&self, name: &str) -> Result<(), ClientError> {
        self.cache(CacheRequest::Drop(name.to_owned()))
            .await
            .map(|_| ())
    }

    /// The cache namespaces and their settings.
    pub async fn cache_list(&self) -> Result<Vec<NamespaceConfig>, ClientError> {
        match self.cache(CacheRequest::List).await? {
            CacheAnswer::Namespaces(list) => Ok(list),
            other => Err(ClientError::Refused(format!("unexpected answer {other:?}"))),
        }
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
        self.shared.open(request).await
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
    ///
    /// Writes (put, delete, transactions, lease grants and revocations,
    /// compaction) go in the client's session, numbered, so each is
    /// retried across failures and leader changes with the same number and
    /// applies exactly once. A write fails with [`KvFailure::Unknown`] only
    /// when the retry budget runs out after it may have been delivered, or
    /// its session expired meanwhile.
    pub async fn kv(&self, request: KvRequest) -> Result<KvReply, ClientError> {
        self.shared.follow_leader();
        if !is_write(&request) {
            return self.call(&request, None).await.0;
        }
        // A session that expired while idle is replaced once; a write that
        // may have been delivered in it is not sent again in another.
        for _ in 0..2 {
            let session = match self.session().await {
                Ok(session) => session,
                // A role that may not write may not open a session either:
                // the write itself, refused, names what was denied.
                Err(ClientError::Kv(KvFailure::PermissionDenied { .. })) => {
                    return self.call(&request, None).await.0
                }
                Err(e) => return Err(e),
            };
            let seq = session.begin();
            let (result, maybe_delivered) = self.call(&request, Some((&session, seq))).await;
            session.end(seq);
            match result {
                Err(ClientError::Kv(KvFailure::Refused(KvError::SessionExpired(id))))
                    if !maybe_delivered =>
                {
                    let mut slot = self.session.lock().await;
                    if slot.as_ref().is_some_and(|s| s.id == id) {
                        *slot = None;
                    }
                }
                Err(ClientError::Kv(KvFailure::Refused(KvError::SessionExpired(_)))) => {
                    return Err(ClientError::Kv(KvFailure::Unknown(
                        "the session expired while the write was retried; it may or may not be applied"
                            .into(),
                    )))
                }
                other => return other,
            }
        }
        Err(ClientError::Kv(KvFailure::Unavailable(
            "the session expired as soon as it was opened".into(),
        )))
    }

    /// The open session, opened now if there is none.
    async fn session(&self) -> Result<Arc<Session>, ClientError> {
        let mut slot = self.session.lock().await;
        if let Some(session) = slot.as_ref() {
            return Ok(session.clone());
        }
        let ttl_ms = SESSION_TTL.as_millis() as u64;
        let (id, ttl_ms) = match self
            .call(&KvRequest::OpenSession { ttl_ms }, None)
            .await
            .0?
        {
            KvReply::SessionOpened { id, ttl_ms } => (id, ttl_ms),
            other => return Err(unexpected(other)),
        };
        let session = Arc::new(Session::new(id));
        let renewer = Client {
            shared: self.shared.clone(),
            session: Arc::default(),
            retry_for: self.retry_for,
        };
        session.keep_alive(Duration::from_millis(ttl_ms), move |id| {
            let renewer = renewer.clone();
            async move {
                !matches!(
                    renewer.call(&KvRequest::SessionKeepAlive(id), None).await.0,
                    Err(ClientError::Kv(KvFailure::Refused(
                        KvError::SessionExpired(_)
                    )))
                )
            }
        });
        *slot = Some(session.clone());
        Ok(session)
    }

    /// Sends `request` (in `session` as write `seq`, if given) until it is
    /// answered, refused, or the retry budget runs out. Also says whether
    /// an attempt may have been delivered without its answer arriving.
    async fn call(
        &self,
        request: &KvRequest,
        session: Option<(&Arc<Session>, u64)>,
    ) -> (Result<KvReply, ClientError>, bool) {
        // Serializable reads are for any node: no need to go to the leader.
        let any_node = matches!(
            request,
            KvRequest::Range {
                linearizable: false,
                ..
            }
        );
        let deadline = Instant::now() + self.retry_for;
        let mut target: Option<SocketAddr> = if any_node { None } else { self.shared.leader() };
        let mut pause = Duration::from_millis(20);
        let mut maybe_delivered = false;
        let mut last = ClientError::Unavailable(clustron_transport::Error::Closed);
        // Nodes that said, since the last pause, that they cannot serve this:
        // the next one is tried at once, and a redirect back to one of them
        // waits for the pause (nodes pointing at each other cannot loop).
        let mut refused: Vec<SocketAddr> = Vec::new();
        // The leader some node named in this round, and how many rounds
        // have paused briefly for a named leader.
        let mut named: Option<SocketAddr> = None;
        let mut quick_rounds = 0;
        'rounds: loop {
            let candidates: Vec<(Option<usize>, SocketAddr)> = match target {
                Some(addr) => vec![(None, addr)],
                None => self
                    .shared
                    .order()
                    .into_iter()
                    .map(|(i, a)| (Some(i), a))
                    .collect(),
            };
            // A node that failed recently (dead, frozen, cut off) is asked
            // only when every other one failed too: a silent one costs a
            // whole idle timeout.
            let all_suspect = candidates
                .iter()
                .all(|(_, addr)| self.shared.is_suspect(*addr));
            for (index, addr) in candidates {
                if target.is_none() && !all_suspect && self.shared.is_suspect(addr) {
                    continue;
                }
                if target.is_none() && refused.contains(&addr) {
                    continue;
                }
                let wrapped = Request::Kv(match session {
                    Some((session, seq)) => KvRequest::InSession {
                        session: session.id,
                        seq,
                        acked: session.acked(),
                        request: Box::new(request.clone()),
                    },
                    None => request.clone(),
                });
                let answer = match self.shared.attempt(addr, &wrapped, !any_node).await {
                    Ok(answer) => answer,
                    Err(Miss::Moved(leader)) => {
                        named = Some(leader);
                        maybe_delivered = true;
                        // The old leader is dead, frozen or cut off, most
                        // likely: its connection only times out later, so
                        // try it last meanwhile.
                        self.shared.suspect(addr);
                        target = Some(leader);
                        continue 'rounds;
                    }
                    Err(Miss::Transport(e)) => {
                        maybe_delivered |= !e.nothing_processed();
                        self.shared.suspect(addr);
                        if target == Some(addr) {
                            self.shared.set_leader(None);
                        }
                        last = ClientError::Unavailable(e);
                        continue;
                    }
                };
                if let Some(index) = index {
                    self.shared.current.store(index, Ordering::Relaxed);
                }
                if let Response::Kv(Err(KvFailure::NotLeader {
                    leader: Some((_, leader)),
                })) = &answer
                {
                    named = Some(*leader);
                }
                match answer {
                    Response::Kv(Ok(reply)) => return (Ok(reply), maybe_delivered),
                    Response::Kv(Err(KvFailure::NotLeader {
                        leader: Some((_, leader)),
                    })) if target != Some(leader) && !refused.contains(&leader) => {
                        refused.push(addr);
                        target = Some(leader);
                        self.shared.set_leader(Some(leader));
                        continue 'rounds;
                    }
                    // Not served (this node cannot: no leader known, its
                    // store stopped, it is catching up): the next node, now.
                    Response::Kv(Err(
                        failure @ (KvFailure::NotLeader { .. } | KvFailure::Unavailable(_)),
                    )) => {
                        last = ClientError::Kv(failure);
                        refused.push(addr);
                        if target == Some(addr) {
                            // The leader we knew cannot serve: ask the others.
                            self.shared.set_leader(None);
                            target = None;
                            continue 'rounds;
                        }
                        continue;
                    }
                    Response::Kv(Err(
                        failure @ (KvFailure::LeaderChanged
                        | KvFailure::Unknown(_)
                        | KvFailure::Lost),
                    )) if session.is_some() => {
                        maybe_delivered |= failure != KvFailure::Lost;
                        if failure == KvFailure::LeaderChanged && target == Some(addr) {
                            // It stopped leading: find the next leader
                            // through the others, not by asking it again.
                            self.shared.set_leader(None);
                            self.shared.suspect(addr);
                        }
                        last = ClientError::Kv(failure);
                    }
                    // Back-pressure: the node did nothing with it and is
                    // alive. Not a failure of the node (no suspicion, no
                    // failover): the same request again after the pause,
                    // which grows while the node stays overloaded; after
                    // the retry budget the caller gets `Overloaded`.
                    Response::Kv(Err(failure @ KvFailure::Overloaded { .. })) => {
                        last = ClientError::Kv(failure);
                    }
                    Response::Kv(Err(failure)) => {
                        return (Err(ClientError::Kv(failure)), maybe_delivered)
                    }
                    Response::Error(reason) => {
                        return (Err(ClientError::Refused(reason)), maybe_delivered)
                    }
                    other => {
                        return (
                            Err(ClientError::Refused(format!("unexpected answer {other:?}"))),
                            maybe_delivered,
                        )
                    }
                }
                break;
            }
            if Instant::now() + pause > deadline {
                if session.is_some() && maybe_delivered {
                    last = ClientError::Kv(KvFailure::Unknown(format!(
                        "no answer within {:?}; the write may or may not be applied (last: {last})",
                        self.retry_for
                    )));
                }
                return (Err(last), maybe_delivered);
            }
            // A leader named but not serving yet (a new one catching up on
            // the log) is asked again soon; with none named, pauses grow.
            let named_now = named.take().or(self.shared.leader()).filter(|_| !any_node);
            if named_now.is_some() && quick_rounds < LEADER_NAMED_ROUNDS {
                quick_rounds += 1;
                tokio::time::sleep(LEADER_NAMED_PAUSE).await;
            } else {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_PAUSE);
            }
            refused.clear();
            target = if any_node { None } else { named_now };
        }
    }

    /// Reads keys; `linearizable` reads see every write acknowledged before
    /// them, serializable ones may be stale but any node answers. Returns
    /// the keys and the revision they were read at.
    ///
    /// A node answers a large range in pages of about
    /// [`kv::RANGE_PAGE_BYTES`]; this reads them all (at the first page's
    /// revision, so the whole answer is one consistent snapshot) and returns
    /// every key once, up to `request.limit` (0: all). To handle a large
    /// range a page at a time instead of holding all of it, use
    /// [`Client::range_pages`].
    pub async fn range(
        &self,
        request: RangeRequest,
        linearizable: bool,
    ) -> Result<(RangeResponse, u64), ClientError> {
        let mut pages = self.range_pages(request, linearizable);
        let mut kvs = Vec::new();
        while let Some(page) = pages.next().await? {
            kvs.extend(page);
        }
        let response = RangeResponse {
            kvs,
            count: pages.count,
            more: pages.more,
        };
        Ok((response, pages.revision))
    }

    /// Reads keys page by page (see [`Client::range`]): each
    /// [`RangePages::next`] asks the node for the next page, continuing
    /// after the last key received, at the revision of the first page.
    pub fn range_pages(&self, request: RangeRequest, linearizable: bool) -> RangePages {
        RangePages {
            client: self.clone(),
            request,
            linearizable,
            started: false,
            done: false,
            count: 0,
            more: false,
            revision: 0,
        }
    }

    /// One range request: one page of the answer.
    async fn range_once(
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

    /// Forgets history before `revision` (admin role only): reads and
    /// watches can no longer reach back past it.
    pub async fn compact(&self, revision: u64) -> Result<(), ClientError> {
        match self.kv(KvRequest::Compact(revision)).await? {
            KvReply::Compacted => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// The log's voters and learners, as the leader sees them, each with
    /// its applied index and lag.
    pub async fn voters(&self) -> Result<Vec<ReplicaInfo>, ClientError> {
        match self.kv(KvRequest::Voters).await? {
            KvReply::Voters(replicas) => Ok(replicas),
            other => Err(unexpected(other)),
        }
    }

    /// Makes member `name` a voter (admin role only): the leader checks the
    /// change is safe (one at a time; the member alive and caught up; a
    /// live majority after it), and answers with the replicas once the
    /// change is decided. Asking again after an unknown outcome is
    /// harmless: the answer is then [`KvFailure::VoterChange`] saying it is
    /// a voter already.
    pub async fn add_voter(&self, name: &str) -> Result<Vec<ReplicaInfo>, ClientError> {
        match self.kv(KvRequest::AddVoter(name.to_owned())).await? {
            KvReply::Voters(replicas) => Ok(replicas),
            other => Err(unexpected(other)),
        }
    }

    /// Makes voter `name` a learner (admin role only), with the same checks
    /// as [`Client::add_voter`]. Removing the leader makes it hand
    /// leadership over first; this call follows to the next leader, which
    /// removes it.
    pub async fn remove_voter(&self, name: &str) -> Result<Vec<ReplicaInfo>, ClientError> {
        match self.kv(KvRequest::RemoveVoter(name.to_owned())).await? {
            KvReply::Voters(replicas) => Ok(replicas),
            other => Err(unexpected(other)),
        }
    }

    /// Grants a lease of `ttl` ([`kv::MIN_LEASE_TTL`] ..=
    /// [`kv::MAX_LEASE_TTL`]; anything else is refused here, without a
    /// round trip, as the leader would); returns its id.
    pub async fn grant(&self, ttl: Duration) -> Result<LeaseId, ClientError> {
        // Never wrap: a TTL too large for u64 milliseconds is out of range.
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        kv::check_lease_ttl(ttl_ms).map_err(|e| ClientError::Kv(e.into()))?;
        match self
            .kv(KvRequest::LeaseGrant {
                id: LeaseId(0),
                ttl_ms,
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
            partial: Vec::new(),
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

impl Shared {
    /// Endpoints in the order to try them: the current one first, those
    /// that failed recently last.
    fn order(&self) -> Vec<(usize, SocketAddr)> {
        let start = self.current.load(Ordering::Relaxed);
        let now = Instant::now();
        let suspects = self.suspects.lock().unwrap_or_else(|e| e.into_inner());
        let mut order: Vec<(usize, SocketAddr)> = (0..self.endpoints.len())
            .map(|i| (start + i) % self.endpoints.len())
            .map(|i| (i, self.endpoints[i]))
            .collect();
        order.sort_by_key(|(_, addr)| suspects.get(addr).is_some_and(|until| *until > now));
        order
    }

    /// `addr` failed: try it last for a while.
    fn suspect(&self, addr: SocketAddr) {
        self.suspects
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(addr, Instant::now() + SUSPECT_FOR);
    }

    /// Whether `addr` failed recently.
    fn is_suspect(&self, addr: SocketAddr) -> bool {
        let suspects = self.suspects.lock().unwrap_or_else(|e| e.into_inner());
        suspects
            .get(&addr)
            .is_some_and(|until| *until > Instant::now())
    }

    fn leader(&self) -> Option<SocketAddr> {
        *self.leader.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_leader(&self, leader: Option<SocketAddr>) {
        *self.leader.lock().unwrap_or_else(|e| e.into_inner()) = leader;
    }

    /// One request to `addr`. One bound for the leader gives up as soon as
    /// the topology names another leader.
    async fn attempt(
        &self,
        addr: SocketAddr,
        request: &Request,
        for_the_leader: bool,
    ) -> Result<Response, Miss> {
        let mut moves = self.leader_moves.subscribe();
        moves.borrow_and_update();
        let moved = async {
            loop {
                if moves.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
                let leader = *moves.borrow_and_update();
                if let Some(leader) = leader.filter(|l| *l != addr) {
                    return leader;
                }
            }
        };
        let began = Instant::now();
        let result = tokio::select! {
            answer = self.channel.request(addr, request) => answer.map_err(Miss::Transport),
            leader = moved, if for_the_leader => Err(Miss::Moved(leader)),
        };
        let took_ms = began.elapsed().as_millis() as u64;
        match &result {
            Err(Miss::Moved(leader)) => {
                tracing::debug!(%addr, %leader, took_ms, "the leader moved while waiting")
            }
            Err(Miss::Transport(e)) => {
                tracing::debug!(%addr, error = %e, took_ms, "attempt failed")
            }
            Ok(_) if took_ms >= 200 => tracing::debug!(%addr, took_ms, "slow answer"),
            Ok(_) => {}
        }
        result
    }

    /// A topology stream through the first endpoint that answers, `avoid`
    /// last (or never, with `only_elsewhere`). An endpoint that fails is
    /// suspected, as by a request. Leaves the endpoint order of requests
    /// alone.
    async fn open_topology_avoiding(
        &self,
        avoid: Option<SocketAddr>,
        only_elsewhere: bool,
    ) -> Option<FramedStream> {
        let mut order = self.order();
        order.sort_by_key(|(_, addr)| Some(*addr) == avoid);
        for (_, addr) in order {
            if only_elsewhere && Some(addr) == avoid {
                continue;
            }
            let opened = match self.channel.open_stream(addr).await {
                Ok(mut stream) => {
                    let request = StreamRequest::WatchTopology { from: None };
                    stream.send(&request).await.map(|()| stream).ok()
                }
                // Only this connection's streams are all in use: the node
                // is fine.
                Err(clustron_transport::Error::StreamsExhausted { .. }) => None,
                Err(_) => {
                    self.suspect(addr);
                    None
                }
            };
            if opened.is_some() {
                return opened;
            }
        }
        None
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
                // The node is fine, only this connection's streams are all
                // in use (watches): no reason to avoid the node.
                Err(e @ clustron_transport::Error::StreamsExhausted { .. }) => {
                    last = Some(e);
                    continue;
                }
                Err(e) => last = Some(e),
            }
            // This endpoint failed: start with the next one next time.
            self.suspect(addr);
            self.current
                .store((index + 1) % self.endpoints.len(), Ordering::Relaxed);
        }
        Err(ClientError::Unavailable(
            last.unwrap_or(clustron_transport::Error::Closed),
        ))
    }

    /// Starts, once, a background task that follows the topology and
    /// publishes each new leader's address, so that requests waiting on a
    /// leader that died or froze move to its successor as soon as one is
    /// elected, instead of waiting out the connection's idle timeout.
    ///
    /// It follows through a node other than the leader where one answers (a
    /// leader that dies or freezes cannot report its own successor); see
    /// [`follow_through`].
    fn follow_leader(self: &Arc<Self>) {
        if self.following.swap(true, Ordering::Relaxed) {
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut topology = FollowedTopology::default();
            let mut next: Option<FramedStream> = None;
            loop {
                let stream = match next.take() {
                    Some(stream) => Some(stream),
                    None => {
                        let Some(shared) = weak.upgrade() else { return };
                        let leader = shared.leader();
                        shared.open_topology_avoiding(leader, false).await
                    }
                };
                let Some(mut stream) = stream else {
                    tokio::time::sleep(MAX_PAUSE).await;
                    continue;
                };
                let opened = Instant::now();
                let through = stream.peer().addr;
                tracing::debug!(%through, "following the topology");
                let followed = follow_through(&weak, &mut stream, &mut topology).await;
                tracing::debug!(%through, "topology stream ended");
                match followed {
                    Followed::Moved(elsewhere) => next = Some(*elsewhere),
                    Followed::Dropped => return,
                    // A node that ends the stream at once (it cannot serve
                    // it, say) is not asked again in a tight loop.
                    Followed::Ended if opened.elapsed() < MAX_PAUSE => {
                        tokio::time::sleep(MAX_PAUSE).await;
                    }
                    Followed::Ended => {}
                }
            }
        });
    }
}

/// What the client's topology follower knows: members' addresses and the
/// leader's name.
#[derive(Default)]
struct FollowedTopology {
    members: HashMap<String, SocketAddr>,
    leader: Option<String>,
}

impl FollowedTopology {
    /// Takes in one item of a topology stream; whether it was one.
    fn update(&mut self, item: StreamItem) -> bool {
        match item {
            StreamItem::Snapshot { topology, .. } => {
                self.members = topology
                    .members
                    .into_iter()
                    .map(|m| (m.name, m.addr))
                    .collect();
                self.leader = topology.leader.map(|(name, _)| name);
            }
            StreamItem::Delta {
                change: Change::Member(m),
                ..
            } => {
                self.members.insert(m.name, m.addr);
            }
            StreamItem::Delta {
                change: Change::Leader(l),
                ..
            } => self.leader = l.map(|(name, _)| name),
            _ => return false,
        }
        true
    }

    fn leader_addr(&self) -> Option<SocketAddr> {
        self.leader
            .as_ref()
            .and_then(|name| self.members.get(name))
            .copied()
    }
}

/// How following one topology stream ended.
enum Followed {
    /// The stream ended or failed.
    Ended,
    /// It went through the leader; this stream, through another node,
    /// replaces it.
    Moved(Box<FramedStream>),
    /// The client is gone.
    Dropped,
}

/// Follows `stream` until it ends, publishing each new leader. While it
/// goes through the leader, another node is looked for in the background
/// (at once, then every [`SUSPECT_FOR`]), and the stream is kept until one
/// answers. Dropping it first and reopening left a client that could reach
/// only the leader (the others dead, or its dials to them backing off)
/// reopening its stream through the new leader of a failover thousands of
/// times a second, and one that stayed on the leader once the others came
/// back waiting out the idle timeout when that leader froze (issue 9).
async fn follow_through(
    weak: &std::sync::Weak<Shared>,
    stream: &mut FramedStream,
    topology: &mut FollowedTopology,
) -> Followed {
    let through = stream.peer().addr;
    let mut search: Option<tokio::task::JoinHandle<Option<FramedStream>>> = None;
    let mut search_at = tokio::time::Instant::now();
    let followed = 'stream: loop {
        let via_leader = topology.leader_addr() == Some(through);
        let recv = stream.recv::<StreamItem>();
        tokio::pin!(recv);
        let item = loop {
            let (start_search, searching_now) = (via_leader && search.is_none(), search.is_some());
            let searching = async {
                match search.as_mut() {
                    Some(handle) => handle.await.ok().flatten(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                item = &mut recv => break item,
                () = tokio::time::sleep_until(search_at), if start_search => {
                    let Some(shared) = weak.upgrade() else { break 'stream Followed::Dropped };
                    search = Some(tokio::spawn(async move {
                        shared.open_topology_avoiding(Some(through), true).await
                    }));
                }
                found = searching, if searching_now => {
                    search = None;
                    match found {
                        Some(elsewhere) => break 'stream Followed::Moved(Box::new(elsewhere)),
                        None => search_at = tokio::time::Instant::now() + SUSPECT_FOR,
                    }
                }
            }
        };
        let Ok(Some(item)) = item else {
            break Followed::Ended;
        };
        if !topology.update(item) {
            continue;
        }
        let Some(shared) = weak.upgrade() else {
            break Followed::Dropped;
        };
        let addr = topology.leader_addr();
        if addr.is_some() && *shared.leader_moves.borrow() != addr {
            tracing::debug!(%through, leader = ?addr, "the topology names a new leader");
            shared.set_leader(addr);
            shared.leader_moves.send_replace(addr);
        }
    };
    if let Some(search) = search {
        search.abort();
    }
    followed
}

/// Whether a request changes the store (and so goes in the session).
fn is_write(request: &KvRequest) -> bool {
    match request {
        KvRequest::Put(_)
        | KvRequest::Delete(_)
        | KvRequest::Txn(_)
        | KvRequest::LeaseGrant { .. }
        | KvRequest::LeaseRevoke(_)
        | KvRequest::Compact(_) => true,
        KvRequest::Range { .. }
        | KvRequest::KeepAlive(_)
        | KvRequest::OpenSession { .. }
        | KvRequest::SessionKeepAlive(_)
        | KvRequest::InSession { .. }
        | KvRequest::Voters
        | KvRequest::AddVoter(_)
        | KvRequest::RemoveVoter(_) => false,
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
    /// Parts of changes received, waiting for the item that ends them.
    partial: Vec<Event>,
}

impl KvWatch {
    /// The next changes: one or more whole revisions, in order. Moves to
    /// another node when its node fails and resumes from the next revision.
    /// Fails when no endpoint answers, when the next revision was compacted
    /// (`KvFailure::Refused(KvError::Compacted)`: read again, then watch
    /// from the present), or when the node cancelled the watch because this
    /// reader took nothing for a long time while behind
    /// (`KvFailure::Refused(KvError::WatchTooSlow)`: watch again from the
    /// revision after the last one received, and read faster).
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
                Ok(Some(StreamItem::KvEventsPart(events))) => self.partial.extend(events),
                Ok(Some(StreamItem::KvEvents(events))) => {
                    let mut events = events;
                    if !self.partial.is_empty() {
                        let mut all = std::mem::take(&mut self.partial);
                        all.append(&mut events);
                        events = all;
                    }
                    if let Some(last) = events.last() {
                        self.request.start_revision = last.kv.mod_revision + 1;
                    }
                    return Ok(events);
                }
                Ok(Some(StreamItem::WatchCancelled(reason))) => {
                    self.stream = None;
                    self.partial.clear();
                    return Err(ClientError::Kv(KvFailure::Refused(reason)));
                }
                Ok(Some(StreamItem::Error(reason))) => {
                    self.stream = None;
                    self.partial.clear();
                    failures += 1;
                    if failures > 3 {
                        return Err(ClientError::Refused(reason));
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Ok(Some(_)) => {}
                // The node went away: resume elsewhere from the next revision
                // (parts of changes not ended are sent again from there).
                Ok(None) | Err(_) => {
                    self.stream = None;
                    self.partial.clear();
                    let shared = &self.client.shared;
                    let failed = shared.current.load(Ordering::Relaxed);
                    shared
                        .current
                        .store((failed + 1) % shared.endpoints.len(), Ordering::Relaxed);
                }
            }
        }
    }
}

/// A range read a page at a time; see [`Client::range_pages`].
#[derive(Debug)]
pub struct RangePages {
    client: Client,
    /// What is left to read: the range after the last key received, at the
    /// first page's revision, with what is left of the limit.
    request: RangeRequest,
    linearizable: bool,
    started: bool,
    done: bool,
    count: u64,
    more: bool,
    revision: u64,
}

impl RangePages {
    /// The next page of keys, in key order; `None` once every key (up to
    /// the limit) has been given. A page is never empty.
    pub async fn next(&mut self) -> Result<Option<Vec<KeyValue>>, ClientError> {
        if self.done {
            return Ok(None);
        }
        let (page, revision) = self
            .client
            .range_once(self.request.clone(), self.linearizable)
            .await?;
        if !self.started {
            // Every later page is read at this revision: one snapshot.
            self.started = true;
            self.revision = revision;
            self.request.revision = revision;
            self.count = page.count;
        }
        self.more = page.more;
        let got = page.kvs.len() as u64;
        if let Some(last) = page.kvs.last() {
            self.request.range = self.request.range.after(&last.key);
        }
        let limit_reached = self.request.limit != 0 && got >= self.request.limit;
        if self.request.limit != 0 {
            self.request.limit -= got.min(self.request.limit);
        }
        self.done = !page.more || page.kvs.is_empty() || limit_reached || self.request.count_only;
        Ok((!page.kvs.is_empty()).then_some(page.kvs))
    }

    /// The revision the pages are read at (0 before the first page).
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// How many keys the whole range holds at that revision, ignoring the
    /// limit (0 before the first page).
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Whether keys were left out by the limit (meaningful once `next`
    /// returned `None`).
    pub fn more(&self) -> bool {
        self.more
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
                        | StreamItem::KvEventsPart(_)
                        | StreamItem::CacheEvents(_)
                        | StreamItem::WatchCancelled(_) => {}
                    }
                    return Ok(item);
                }
                // The node went away: fail over and resume.
                Ok(None) | Err(_) => {
                    self.stream = None;
                    let shared = &self.client.shared;
                    let next =
                        (shared.current.load(Ordering::Relaxed) + 1) % shared.endpoints.len();
                    shared.current.store(next, Ordering::Relaxed);
                }
            }
        }
    }
}

/// Entry events of a cache namespace from every endpoint; see
/// [`Client::cache_events`].
#[derive(Debug)]
pub struct CacheEvents {
    rx: tokio::sync::mpsc::Receiver<Result<Vec<CacheEvent>, ClientError>>,
}

impl CacheEvents {
    /// The next batch of events (one owner's, in its order), or the error
    /// that ended one endpoint's stream: from then on events of the
    /// partitions that node owns are missed, so a copy of the cache made
    /// from them must be dropped and the stream opened again. `None` once
    /// every stream ended.
    pub async fn next(&mut self) -> Option<Result<Vec<CacheEvent>, ClientError>> {
        self.rx.recv().await
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
