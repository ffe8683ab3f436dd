//! Random valid values of every wire and disk type, from one seeded RNG, for
//! the structure-aware half of the fuzz targets: encode one, mutate the
//! bytes, decode.
//!
//! Sizes are small (a few dozen elements, short strings) so that one
//! execution stays cheap; the mutators make the large and the odd.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use clustron_dkv::core::mvcc::Command;
use clustron_dkv::kv::{
    Compare, CompareOp, CompareTarget, DeleteRequest, DeleteResponse, Event, EventKind, KeyRange,
    KeyValue, KvError, KvFailure, KvReply, KvRequest, LeaseId, PutRequest, PutResponse,
    RangeRequest, RangeResponse, ReplicaInfo, RequestOp, ResponseOp, SessionId, Txn, TxnResponse,
    WatchRequest,
};
use clustron_dkv::proto::{
    Change, MemberInfo, Request, Response, StreamItem, StreamRequest, TopologyInfo,
};
use clustron_election::{Epoch, Voter, VoterSet};
use clustron_log::core::replication::{Entry, EntryKind, Message as ReplicationMessage};
use clustron_membership::{Incarnation, Member, MemberState, NodeName};
use fastrand::Rng;

/// Up to `max` values made by `item`.
pub fn vec_of<T>(rng: &mut Rng, max: usize, mut item: impl FnMut(&mut Rng) -> T) -> Vec<T> {
    let len = rng.usize(..=max);
    (0..len).map(|_| item(rng)).collect()
}

/// `Some(value)` half of the time.
pub fn option_of<T>(rng: &mut Rng, item: impl FnOnce(&mut Rng) -> T) -> Option<T> {
    rng.bool().then(|| item(rng))
}

/// A `u64` that is often small and sometimes at an edge.
pub fn u64_any(rng: &mut Rng) -> u64 {
    match rng.u8(..8) {
        0 => 0,
        1 => u64::MAX,
        2 => rng.u64(..),
        3 => 1 << rng.u32(..64),
        _ => rng.u64(..1000),
    }
}

/// Up to `max` arbitrary bytes.
pub fn bytes(rng: &mut Rng, max: usize) -> Vec<u8> {
    let len = rng.usize(..=max);
    (0..len).map(|_| rng.u8(..)).collect()
}

/// A short string, sometimes with non-ASCII characters.
pub fn string(rng: &mut Rng, max: usize) -> String {
    let len = rng.usize(..=max);
    (0..len)
        .map(|_| match rng.u8(..10) {
            0 => rng.char(..),
            _ => rng.alphanumeric(),
        })
        .collect()
}

/// A valid node name (1 to 64 of `A-Z a-z 0-9 . _ -`).
pub fn node_name(rng: &mut Rng) -> NodeName {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-";
    let len = if rng.u8(..20) == 0 {
        64
    } else {
        rng.usize(1..12)
    };
    let name: String = (0..len)
        .map(|k| match k {
            // The first character is a letter or a digit.
            0 => CHARS[rng.usize(..CHARS.len() - 3)] as char,
            _ => CHARS[rng.usize(..CHARS.len())] as char,
        })
        .collect();
    // Invariant: built from the allowed characters and length.
    NodeName::new(&name).unwrap_or_else(|e| panic!("generated an invalid name {name:?}: {e}"))
}

/// An IPv4 or IPv6 socket address.
pub fn socket_addr(rng: &mut Rng) -> SocketAddr {
    let ip = if rng.bool() {
        IpAddr::V4(Ipv4Addr::from(rng.u32(..)))
    } else {
        IpAddr::V6(Ipv6Addr::from(rng.u128(..)))
    };
    SocketAddr::new(ip, rng.u16(..))
}

/// A duration, often short, sometimes at the edge of what `Duration` holds.
pub fn duration(rng: &mut Rng) -> Duration {
    match rng.u8(..6) {
        0 => Duration::MAX,
        1 => Duration::ZERO,
        _ => Duration::from_nanos(rng.u64(..10_000_000_000)),
    }
}

// ---- membership ----

/// A member record.
pub fn member(rng: &mut Rng) -> Member {
    Member {
        name: node_name(rng),
        addr: socket_addr(rng),
        priority: rng.u32(..),
        voter: rng.bool(),
        tags: tags(rng),
        version: u64_any(rng),
        incarnation: Incarnation(u64_any(rng)),
        state: [
            MemberState::Alive,
            MemberState::Suspect,
            MemberState::Dead,
            MemberState::Left,
        ][rng.usize(..4)],
    }
}

fn tags(rng: &mut Rng) -> BTreeMap<String, String> {
    vec_of(rng, 4, |rng| (string(rng, 8), string(rng, 16)))
        .into_iter()
        .collect()
}

fn gossip(rng: &mut Rng) -> clustron_membership::core::Gossip {
    use clustron_membership::core::Gossip;
    match rng.u8(..4) {
        0 => Gossip::Alive(member(rng)),
        1 => Gossip::Suspect {
            name: node_name(rng),
            incarnation: Incarnation(u64_any(rng)),
            from: node_name(rng),
        },
        2 => Gossip::Dead {
            name: node_name(rng),
            incarnation: Incarnation(u64_any(rng)),
            from: node_name(rng),
        },
        _ => Gossip::Left {
            name: node_name(rng),
            incarnation: Incarnation(u64_any(rng)),
        },
    }
}

/// A SWIM message.
pub fn membership_message(rng: &mut Rng) -> clustron_membership::core::Message {
    use clustron_membership::core::Message;
    let gossips = |rng: &mut Rng| vec_of(rng, 6, gossip);
    match rng.u8(..8) {
        0 => Message::Ping {
            seq: rng.u32(..),
            from: node_name(rng),
            target: node_name(rng),
            gossip: gossips(rng),
        },
        1 => Message::Ack {
            seq: rng.u32(..),
            from: node_name(rng),
            incarnation: Incarnation(u64_any(rng)),
            gossip: gossips(rng),
        },
        2 => Message::PingReq {
            seq: rng.u32(..),
            from: node_name(rng),
            target: node_name(rng),
            target_addr: socket_addr(rng),
            gossip: gossips(rng),
        },
        3 => Message::Nack {
            seq: rng.u32(..),
            from: node_name(rng),
        },
        4 => Message::Gossip {
            from: node_name(rng),
            gossip: gossips(rng),
        },
        5 => Message::Sync {
            from: node_name(rng),
            join: rng.bool(),
            members: vec_of(rng, 6, member),
        },
        6 => Message::SyncReply {
            from: node_name(rng),
            members: vec_of(rng, 6, member),
        },
        _ => Message::JoinRefused {
            from: node_name(rng),
            reason: string(rng, 40),
        },
    }
}

// ---- election ----

/// A voter set as [`VoterSet::new`] makes it (sorted, no duplicates), at
/// any version but the last (which decoding refuses: no change follows it).
pub fn voter_set(rng: &mut Rng) -> VoterSet {
    let mut set = VoterSet::new(vec_of(rng, 5, |rng| Voter {
        name: node_name(rng),
        addr: socket_addr(rng),
    }));
    set.version = u64_any(rng).min(u64::MAX - 1);
    set
}

/// An election message.
pub fn election_message(rng: &mut Rng) -> clustron_election::Message {
    use clustron_election::Message;
    let epoch = Epoch(u64_any(rng));
    match rng.u8(..8) {
        0 => Message::Request {
            epoch,
            from: node_name(rng),
            seq: u64_any(rng),
        },
        1 => Message::Grant {
            epoch,
            from: node_name(rng),
            seq: u64_any(rng),
            summary: bytes(rng, 20),
            pending: option_of(rng, voter_set),
            voters: voter_set(rng),
            pending_epoch: Epoch(u64_any(rng)),
        },
        2 => Message::Reject {
            epoch,
            from: node_name(rng),
            seq: u64_any(rng),
            promised: Epoch(u64_any(rng)),
            holder: option_of(rng, node_name),
            retry_after: option_of(rng, duration),
        },
        3 => Message::Announce {
            epoch,
            leader: node_name(rng),
            voters: voter_set(rng),
        },
        4 => Message::Release {
            epoch,
            from: node_name(rng),
            to: option_of(rng, node_name),
            chosen: rng.bool(),
        },
        5 => Message::Claim {
            epoch,
            from: node_name(rng),
        },
        6 => Message::ProposeVoters {
            epoch,
            from: node_name(rng),
            voters: voter_set(rng),
        },
        _ => Message::VotersAccepted {
            epoch,
            from: node_name(rng),
            version: u64_any(rng),
        },
    }
}

// ---- events ----

/// A user event.
pub fn user_event(rng: &mut Rng) -> clustron_events::core::UserEvent {
    clustron_events::core::UserEvent {
        origin: node_name(rng),
        boot: rng.u64(..),
        seq: u64_any(rng),
        lamport: u64_any(rng),
        topic: string(rng, 20),
        payload: bytes(rng, 64),
    }
}

/// An events-layer message.
pub fn events_message(rng: &mut Rng) -> clustron_events::core::Message {
    use clustron_events::core::Message;
    match rng.bool() {
        true => Message::Events(vec_of(rng, 5, user_event)),
        false => Message::Digest {
            heads: vec_of(rng, 6, |rng| (node_name(rng), rng.u64(..), u64_any(rng))),
            reply: rng.bool(),
        },
    }
}

// ---- replicated log ----

/// A log entry.
pub fn entry(rng: &mut Rng, epoch: u64, index: u64) -> Entry {
    let data = rng.u8(..5) != 0;
    Entry {
        epoch,
        index,
        kind: if data {
            EntryKind::Data
        } else {
            EntryKind::Noop
        },
        payload: if data { bytes(rng, 80) } else { Vec::new() },
    }
}

/// Consecutive entries after `prev`, with epochs that never fall.
pub fn entries(rng: &mut Rng, prev: u64, max: usize) -> Vec<Entry> {
    let mut epoch = rng.u64(1..5);
    let count = rng.usize(..=max);
    (0..count)
        .map(|k| {
            if rng.u8(..4) == 0 {
                epoch += 1;
            }
            entry(rng, epoch, prev + 1 + k as u64)
        })
        .collect()
}

/// A replication message.
pub fn replication_message(rng: &mut Rng) -> ReplicationMessage {
    let epoch = u64_any(rng);
    match rng.u8(..6) {
        5 => ReplicationMessage::SnapshotNeeded {
            epoch,
            index: u64_any(rng),
        },
        0 => {
            let prev_index = rng.u64(..100);
            ReplicationMessage::Append {
                epoch,
                prev_index,
                prev_epoch: u64_any(rng),
                entries: entries(rng, prev_index, 6),
                commit: u64_any(rng),
            }
        }
        1 => ReplicationMessage::Ack {
            epoch,
            match_index: u64_any(rng),
        },
        2 => ReplicationMessage::Nack {
            epoch,
            prev_index: u64_any(rng),
            hint: u64_any(rng),
        },
        3 => ReplicationMessage::Fetch {
            epoch,
            from_index: u64_any(rng),
            upto: u64_any(rng),
        },
        _ => {
            let from_index = rng.u64(1..100);
            ReplicationMessage::FetchReply {
                epoch,
                from_index,
                entries: entries(rng, from_index - 1, 6),
                last_index: u64_any(rng),
            }
        }
    }
}

// ---- key-value ----

/// A key, mostly from a small alphabet so that commands touch each other.
pub fn key(rng: &mut Rng) -> Vec<u8> {
    match rng.u8(..10) {
        0 => bytes(rng, 12),
        _ => {
            let len = rng.usize(1..4);
            (0..len).map(|_| b'a' + rng.u8(..4)).collect()
        }
    }
}

/// A key range.
pub fn key_range(rng: &mut Rng) -> KeyRange {
    match rng.u8(..3) {
        0 => KeyRange::Key(key(rng)),
        1 => KeyRange::Prefix(if rng.u8(..4) == 0 {
            Vec::new()
        } else {
            key(rng)
        }),
        _ => KeyRange::Range {
            start: key(rng),
            end: if rng.bool() { Vec::new() } else { key(rng) },
        },
    }
}

fn lease_id(rng: &mut Rng) -> LeaseId {
    LeaseId(rng.u64(..4))
}

fn key_value(rng: &mut Rng) -> KeyValue {
    KeyValue {
        key: key(rng),
        value: bytes(rng, 24),
        create_revision: u64_any(rng),
        mod_revision: u64_any(rng),
        version: u64_any(rng),
        lease: option_of(rng, lease_id),
    }
}

/// A range read.
pub fn range_request(rng: &mut Rng) -> RangeRequest {
    RangeRequest {
        range: key_range(rng),
        revision: rng.u64(..20),
        limit: rng.u64(..5),
        keys_only: rng.bool(),
        count_only: rng.u8(..4) == 0,
    }
}

/// A put.
pub fn put_request(rng: &mut Rng) -> PutRequest {
    PutRequest {
        key: key(rng),
        value: bytes(rng, 24),
        lease: option_of(rng, lease_id),
        prev_kv: rng.bool(),
    }
}

fn delete_request(rng: &mut Rng) -> DeleteRequest {
    DeleteRequest {
        range: key_range(rng),
        prev_kv: rng.bool(),
    }
}

fn request_op(rng: &mut Rng) -> RequestOp {
    match rng.u8(..3) {
        0 => RequestOp::Range(range_request(rng)),
        1 => RequestOp::Put(put_request(rng)),
        _ => RequestOp::Delete(delete_request(rng)),
    }
}

/// A transaction.
pub fn txn(rng: &mut Rng) -> Txn {
    Txn {
        compare: vec_of(rng, 3, |rng| Compare {
            key: key(rng),
            target: match rng.u8(..5) {
                0 => CompareTarget::Value(bytes(rng, 8)),
                1 => CompareTarget::Version(rng.u64(..4)),
                2 => CompareTarget::CreateRevision(rng.u64(..10)),
                3 => CompareTarget::ModRevision(rng.u64(..10)),
                _ => CompareTarget::Lease(option_of(rng, lease_id)),
            },
            op: [
                CompareOp::Equal,
                CompareOp::NotEqual,
                CompareOp::Greater,
                CompareOp::Less,
            ][rng.usize(..4)],
        }),
        success: vec_of(rng, 4, request_op),
        failure: vec_of(rng, 4, request_op),
    }
}

/// A store error.
pub fn kv_error(rng: &mut Rng) -> KvError {
    match rng.u8(..14) {
        0 => KvError::KeyTooLarge {
            len: rng.usize(..),
            max: rng.usize(..),
        },
        1 => KvError::ValueTooLarge {
            len: rng.usize(..),
            max: rng.usize(..),
        },
        2 => KvError::TooManyOps {
            ops: rng.usize(..),
            max: rng.usize(..),
        },
        3 => KvError::Compacted {
            requested: u64_any(rng),
            compacted: u64_any(rng),
        },
        4 => KvError::FutureRevision {
            requested: u64_any(rng),
            current: u64_any(rng),
        },
        5 => KvError::LeaseNotFound(LeaseId(u64_any(rng))),
        6 => KvError::LeaseExists(LeaseId(u64_any(rng))),
        7 => KvError::DuplicateKey,
        8 => KvError::SessionExpired(SessionId(u64_any(rng))),
        9 => KvError::SessionBusy {
            unacknowledged: u64_any(rng),
            max: u64_any(rng),
        },
        10 => KvError::AlreadyAnswered { seq: u64_any(rng) },
        11 => KvError::NotInSession,
        _ => KvError::TooManySessions { max: rng.usize(..) },
    }
}

/// A key-value request; `depth` bounds session nesting.
pub fn kv_request(rng: &mut Rng) -> KvRequest {
    kv_request_at(rng, 0)
}

fn kv_request_at(rng: &mut Rng, depth: u32) -> KvRequest {
    match rng.u8(..15) {
        0 => KvRequest::Range {
            request: range_request(rng),
            linearizable: rng.bool(),
        },
        1 => KvRequest::Put(put_request(rng)),
        2 => KvRequest::Delete(delete_request(rng)),
        3 => KvRequest::Txn(txn(rng)),
        4 => KvRequest::LeaseGrant {
            id: LeaseId(u64_any(rng)),
            ttl_ms: u64_any(rng),
        },
        5 => KvRequest::LeaseRevoke(LeaseId(u64_any(rng))),
        6 => KvRequest::KeepAlive(LeaseId(u64_any(rng))),
        7 => KvRequest::Compact(u64_any(rng)),
        8 => KvRequest::OpenSession {
            ttl_ms: u64_any(rng),
        },
        9 => KvRequest::SessionKeepAlive(SessionId(u64_any(rng))),
        10 => KvRequest::Voters,
        11 => KvRequest::AddVoter(string(rng, 12)),
        12 => KvRequest::RemoveVoter(string(rng, 12)),
        _ if depth < 2 => KvRequest::InSession {
            session: SessionId(u64_any(rng)),
            seq: u64_any(rng),
            acked: u64_any(rng),
            request: Box::new(kv_request_at(rng, depth + 1)),
        },
        _ => KvRequest::Put(put_request(rng)),
    }
}

fn range_response(rng: &mut Rng) -> RangeResponse {
    RangeResponse {
        kvs: vec_of(rng, 4, key_value),
        count: u64_any(rng),
        more: rng.bool(),
    }
}

fn put_response(rng: &mut Rng) -> PutResponse {
    PutResponse {
        prev_kv: option_of(rng, key_value),
    }
}

fn delete_response(rng: &mut Rng) -> DeleteResponse {
    DeleteResponse {
        deleted: u64_any(rng),
        prev_kvs: vec_of(rng, 3, key_value),
    }
}

/// A successful key-value answer.
pub fn kv_reply(rng: &mut Rng) -> KvReply {
    match rng.u8(..11) {
        0 => KvReply::Range(range_response(rng), u64_any(rng)),
        1 => KvReply::Put(put_response(rng), u64_any(rng)),
        2 => KvReply::Delete(delete_response(rng), u64_any(rng)),
        3 => KvReply::Txn(TxnResponse {
            succeeded: rng.bool(),
            responses: vec_of(rng, 4, |rng| match rng.u8(..3) {
                0 => ResponseOp::Range(range_response(rng)),
                1 => ResponseOp::Put(put_response(rng)),
                _ => ResponseOp::Delete(delete_response(rng)),
            }),
            revision: u64_any(rng),
        }),
        4 => KvReply::LeaseGranted {
            id: LeaseId(u64_any(rng)),
            ttl_ms: u64_any(rng),
        },
        5 => KvReply::LeaseRevoked {
            deleted: u64_any(rng),
        },
        6 => KvReply::KeptAlive {
            ttl_ms: u64_any(rng),
        },
        7 => KvReply::Compacted,
        8 => KvReply::SessionOpened {
            id: SessionId(u64_any(rng)),
            ttl_ms: u64_any(rng),
        },
        9 => KvReply::SessionClosed,
        _ => KvReply::Voters(vec_of(rng, 5, |rng| ReplicaInfo {
            name: string(rng, 12),
            role: string(rng, 8),
            applied_index: u64_any(rng),
            lag: u64_any(rng),
        })),
    }
}

/// A failed key-value answer.
pub fn kv_failure(rng: &mut Rng) -> KvFailure {
    match rng.u8(..10) {
        0 => KvFailure::NotLeader {
            leader: option_of(rng, |rng| (string(rng, 10), socket_addr(rng))),
        },
        1 => KvFailure::Unavailable(string(rng, 30)),
        2 => KvFailure::Lost,
        3 => KvFailure::Unknown(string(rng, 30)),
        4 => KvFailure::TooLarge {
            len: rng.usize(..),
            max: rng.usize(..),
        },
        5 => KvFailure::Refused(kv_error(rng)),
        6 => KvFailure::LeaderChanged,
        7 => KvFailure::Overloaded { limit: rng.u32(..) },
        8 => KvFailure::VoterChange(string(rng, 30)),
        _ => KvFailure::PermissionDenied {
            role: string(rng, 10),
            operation: string(rng, 20),
        },
    }
}

/// A watch event.
pub fn kv_event(rng: &mut Rng) -> Event {
    Event {
        kind: if rng.bool() {
            EventKind::Put
        } else {
            EventKind::Delete
        },
        kv: key_value(rng),
        prev_kv: option_of(rng, key_value),
    }
}

/// A watch request.
pub fn watch_request(rng: &mut Rng) -> WatchRequest {
    WatchRequest {
        range: key_range(rng),
        start_revision: u64_any(rng),
        prev_kv: rng.bool(),
        no_put: rng.bool(),
        no_delete: rng.bool(),
    }
}

// ---- client protocol ----

fn member_info(rng: &mut Rng) -> MemberInfo {
    MemberInfo {
        name: string(rng, 12),
        addr: socket_addr(rng),
        state: ["alive", "suspect", "dead", "left"][rng.usize(..4)].into(),
        voter: rng.bool(),
        priority: rng.u32(..),
        incarnation: u64_any(rng),
        tags: tags(rng),
    }
}

fn leader(rng: &mut Rng) -> Option<(String, u64)> {
    option_of(rng, |rng| (string(rng, 12), u64_any(rng)))
}

fn topology(rng: &mut Rng) -> TopologyInfo {
    TopologyInfo {
        version: u64_any(rng),
        node: string(rng, 12),
        members: vec_of(rng, 5, member_info),
        leader: leader(rng),
    }
}

/// A client request.
pub fn request(rng: &mut Rng) -> Request {
    match rng.u8(..4) {
        0 => Request::Topology,
        1 => Request::Publish {
            topic: string(rng, 20),
            payload: bytes(rng, 64),
        },
        _ => Request::Kv(kv_request(rng)),
    }
}

/// A node's answer to a client.
pub fn response(rng: &mut Rng) -> Response {
    match rng.u8(..5) {
        0 => Response::Topology(topology(rng)),
        1 => Response::Published {
            origin: string(rng, 12),
            seq: u64_any(rng),
        },
        2 => Response::Error(string(rng, 40)),
        3 => Response::Kv(Err(kv_failure(rng))),
        _ => Response::Kv(Ok(kv_reply(rng))),
    }
}

/// The first frame of a client stream.
pub fn stream_request(rng: &mut Rng) -> StreamRequest {
    match rng.u8(..3) {
        0 => StreamRequest::WatchTopology {
            from: option_of(rng, |rng| (string(rng, 12), u64_any(rng))),
        },
        1 => StreamRequest::Subscribe {
            topic: string(rng, 20),
        },
        _ => StreamRequest::Watch(watch_request(rng)),
    }
}

/// What a node sends on a client stream.
pub fn stream_item(rng: &mut Rng) -> StreamItem {
    match rng.u8(..6) {
        0 => StreamItem::Snapshot {
            topology: topology(rng),
            fresh: rng.bool(),
        },
        1 => StreamItem::Delta {
            version: u64_any(rng),
            change: match rng.bool() {
                true => Change::Member(member_info(rng)),
                false => Change::Leader(leader(rng)),
            },
        },
        2 => StreamItem::Event {
            origin: string(rng, 12),
            seq: u64_any(rng),
            lamport: u64_any(rng),
            topic: string(rng, 20),
            payload: bytes(rng, 64),
        },
        3 => StreamItem::KvEvents(vec_of(rng, 5, kv_event)),
        4 => StreamItem::WatchCancelled(kv_error(rng)),
        _ => StreamItem::Error(string(rng, 40)),
    }
}

// ---- state machine ----

/// A replicated command, as a leader proposes them (sessions one deep).
pub fn command(rng: &mut Rng) -> Command {
    command_at(rng, 0)
}

fn command_at(rng: &mut Rng, depth: u32) -> Command {
    match rng.u8(..14) {
        0..=3 => Command::Put(put_request(rng)),
        4 | 5 => Command::Delete(delete_request(rng)),
        6 | 7 => Command::Txn(txn(rng)),
        8 => Command::LeaseGrant {
            id: lease_id(rng),
            ttl_ms: u64_any(rng),
        },
        9 => Command::LeaseRevoke { id: lease_id(rng) },
        10 => Command::Compact {
            revision: rng.u64(..20),
        },
        11 => match rng.u8(..3) {
            0 => Command::OpenSession {
                id: SessionId(rng.u64(..3)),
                ttl_ms: u64_any(rng),
            },
            1 => Command::CloseSession {
                id: SessionId(rng.u64(..3)),
            },
            _ => Command::Checkpoint {
                index: u64_any(rng),
                digest: rng.u32(..),
            },
        },
        _ if depth < 2 => Command::InSession {
            session: SessionId(rng.u64(..3)),
            seq: rng.u64(..6),
            acked: rng.u64(..6),
            command: Box::new(command_at(rng, depth + 1)),
        },
        _ => Command::Put(put_request(rng)),
    }
}
