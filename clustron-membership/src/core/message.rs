//! Wire messages of the SWIM protocol.
//!
//! Probes, acks, nacks and gossip are small and go as datagrams; the
//! full-state exchange (`Sync`) and join answers go on reliable streams.

use serde::{Deserialize, Serialize};

use crate::member::{Incarnation, Member, NodeName};

/// A piece of membership news, piggybacked on other messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Gossip {
    /// The member is alive at this incarnation, with this metadata.
    Alive(Member),
    /// `from` suspects `name` at `incarnation`.
    Suspect {
        /// Suspected member.
        name: NodeName,
        /// Its incarnation as the suspector saw it.
        incarnation: Incarnation,
        /// Who suspects it (each distinct suspector is a confirmation).
        from: NodeName,
    },
    /// `from` declared `name` dead at `incarnation`.
    Dead {
        /// The failed member.
        name: NodeName,
        /// Its incarnation.
        incarnation: Incarnation,
        /// Who declared it.
        from: NodeName,
    },
    /// `name` left at `incarnation`.
    Left {
        /// The member that left.
        name: NodeName,
        /// Its incarnation.
        incarnation: Incarnation,
    },
}

impl Gossip {
    /// The member the news is about.
    pub fn subject(&self) -> &NodeName {
        match self {
            Gossip::Alive(m) => &m.name,
            Gossip::Suspect { name, .. }
            | Gossip::Dead { name, .. }
            | Gossip::Left { name, .. } => name,
        }
    }
}

/// Everything membership nodes say to each other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// A probe. `target` is who the sender means to reach, so a node that
    /// took over an address does not answer for its predecessor.
    Ping {
        /// Probe sequence number, echoed in the ack.
        seq: u32,
        /// Sender.
        from: NodeName,
        /// Intended receiver.
        target: NodeName,
        /// Piggybacked news.
        gossip: Vec<Gossip>,
    },
    /// Answer to a ping.
    Ack {
        /// The ping's sequence number.
        seq: u32,
        /// Sender.
        from: NodeName,
        /// The sender's incarnation: an ack from a suspect that has refuted
        /// (buddy system) clears the suspicion even if the refutation's
        /// gossip is lost.
        incarnation: Incarnation,
        /// Piggybacked news.
        gossip: Vec<Gossip>,
    },
    /// Please probe `target` for me and forward its ack (indirect probe).
    PingReq {
        /// The requester's sequence number for the forwarded ack or nack.
        seq: u32,
        /// Requester.
        from: NodeName,
        /// Member to probe.
        target: NodeName,
        /// Its address.
        target_addr: std::net::SocketAddr,
        /// Piggybacked news.
        gossip: Vec<Gossip>,
    },
    /// The relay got no ack from the target in time (Lifeguard): tells the
    /// requester that the relay, at least, is healthy.
    Nack {
        /// The requester's sequence number.
        seq: u32,
        /// The relay.
        from: NodeName,
    },
    /// News only.
    Gossip {
        /// Sender.
        from: NodeName,
        /// The news.
        gossip: Vec<Gossip>,
    },
    /// Full-state exchange (push-pull), also used to join.
    Sync {
        /// Sender.
        from: NodeName,
        /// True when the sender is joining through us.
        join: bool,
        /// Every member the sender knows, itself included.
        members: Vec<Member>,
    },
    /// Answer to `Sync`: our full state.
    SyncReply {
        /// Sender.
        from: NodeName,
        /// Every member we know, ourselves included.
        members: Vec<Member>,
    },
    /// Answer to a joining `Sync` that cannot be accepted.
    JoinRefused {
        /// Sender.
        from: NodeName,
        /// Why, in words.
        reason: String,
    },
}

impl Message {
    /// The name the sender claims; the driver checks it against the
    /// certificate before the core sees the message.
    pub fn sender(&self) -> &NodeName {
        match self {
            Message::Ping { from, .. }
            | Message::Ack { from, .. }
            | Message::PingReq { from, .. }
            | Message::Nack { from, .. }
            | Message::Gossip { from, .. }
            | Message::Sync { from, .. }
            | Message::SyncReply { from, .. }
            | Message::JoinRefused { from, .. } => from,
        }
    }

    /// Encoded size in bytes (postcard), without transport overhead.
    pub fn encoded_len(&self) -> usize {
        postcard::experimental::serialized_size(self).unwrap_or(usize::MAX)
    }
}
