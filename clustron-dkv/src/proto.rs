//! The client protocol: what `clustron-client` and a node say to each other
//! on the transport's `CLIENT` channel (ALPN `clustron-client/1`).
//!
//! Requests get one response; `WatchTopology`, `Subscribe` and `Watch` open a
//! stream on which the node sends [`StreamItem`]s until the client drops it.
//! Key-value requests and answers are the types of [`crate::kv`].

use std::collections::BTreeMap;
use std::net::SocketAddr;

use clustron_transport::{ChannelId, Protocol};
use serde::{Deserialize, Serialize};

use crate::cache::{CacheAnswer, CacheError, CacheEvent, CacheRequest};
use crate::kv::{Event as KvEvent, KvError, KvFailure, KvReply, KvRequest, WatchRequest};

/// The client protocol on [`ChannelId::CLIENT`].
#[derive(Debug)]
pub struct ClientProtocol;

impl Protocol for ClientProtocol {
    const CHANNEL: ChannelId = ChannelId::CLIENT;
    const ACCEPTS_CLIENTS: bool = true;
    type Request = Request;
    type Response = Response;
    type Message = ();
}

/// A member as clients see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// Node name.
    pub name: String,
    /// Its address.
    pub addr: SocketAddr,
    /// `alive`, `suspect`, `dead` or `left`.
    pub state: String,
    /// Whether it votes.
    pub voter: bool,
    /// Election priority.
    pub priority: u32,
    /// Incarnation.
    pub incarnation: u64,
    /// Tags.
    pub tags: BTreeMap<String, String>,
}

/// The cluster at one topology version of the answering node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopologyInfo {
    /// The answering node's topology version.
    pub version: u64,
    /// Which node answered (versions are per node).
    pub node: String,
    /// Every known member.
    pub members: Vec<MemberInfo>,
    /// Leader name and epoch, if known.
    pub leader: Option<(String, u64)>,
}

/// A request from a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// The current topology.
    Topology,
    /// Publish a user event.
    Publish {
        /// Topic.
        topic: String,
        /// Payload.
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
    },
    /// A key-value request.
    Kv(KvRequest),
    /// A cache request (any node serves it; operations are forwarded to
    /// the key's owner).
    Cache(CacheRequest),
}

/// A node's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// The topology.
    Topology(TopologyInfo),
    /// The event was published with this origin and sequence number.
    Published {
        /// The publishing node.
        origin: String,
        /// Its sequence number.
        seq: u64,
    },
    /// The request failed; the reason says why.
    Error(String),
    /// A key-value answer.
    Kv(Result<KvReply, KvFailure>),
    /// A cache answer.
    Cache(Result<CacheAnswer, CacheError>),
}

/// First frame a client sends on a stream it opens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamRequest {
    /// Topology updates; resume after `from` (a version of node `node`).
    WatchTopology {
        /// Resume point: (node name, version), if any.
        from: Option<(String, u64)>,
    },
    /// User events of `topic`.
    Subscribe {
        /// The topic.
        topic: String,
    },
    /// Changes to keys.
    Watch(WatchRequest),
    /// Entry events of a cache namespace from the partitions the node
    /// owns (subscribe on every node to see them all).
    CacheEvents {
        /// The namespace.
        namespace: String,
    },
}

/// A change to the topology.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// A member's record changed.
    Member(MemberInfo),
    /// The leader changed.
    Leader(Option<(String, u64)>),
}

/// What a node sends on a client stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamItem {
    /// The whole topology; `fresh` when a resume could not be honoured.
    Snapshot {
        /// The topology.
        topology: TopologyInfo,
        /// True when it replaces a resume.
        fresh: bool,
    },
    /// One change, taking the node's topology to `version`.
    Delta {
        /// The version after the change.
        version: u64,
        /// The change.
        change: Change,
    },
    /// A user event.
    Event {
        /// Publisher.
        origin: String,
        /// Its sequence number.
        seq: u64,
        /// Lamport time.
        lamport: u64,
        /// Topic.
        topic: String,
        /// Payload.
        #[serde(with = "serde_bytes")]
        payload: Vec<u8>,
    },
    /// Key changes of one or more whole revisions, in order (with any
    /// [`StreamItem::KvEventsPart`]s just before it).
    KvEvents(Vec<KvEvent>),
    /// The first part of key changes too large for one frame (a revision
    /// that deleted many keys with previous values, say): the rest follows,
    /// up to a [`StreamItem::KvEvents`] that ends them. A client hands the
    /// parts on only together, so whole revisions stay whole.
    KvEventsPart(Vec<KvEvent>),
    /// The watch ended: its next revision was compacted (re-read, then
    /// watch from the current revision).
    WatchCancelled(KvError),
    /// Cache entry events, in the order the owner made them.
    CacheEvents(Vec<CacheEvent>),
    /// The stream could not be served.
    Error(String),
}
