//! One fuzz target per decoder of bytes from the network or the disk.
//!
//! Each target has a `check` that feeds one input to the product's own
//! decoder (the function the node calls, not a copy of it) and asserts what
//! must hold for *any* input, and a `valid` that builds a random valid input
//! and asserts that it round-trips exactly. A panic in either is a crash.

use std::fmt::Debug;
use std::path::Path;

use clustron_dkv::access::Access;
use clustron_dkv::cache::resp;
use clustron_dkv::config::{FileConfig, NodeConfig};
use clustron_dkv::core::mvcc::{check_limits, Command, Limits, Store};
use clustron_dkv::core::server::MachineState;
use clustron_dkv::kv::{KeyRange, KvFailure, KvReply, KvRequest, PutRequest, RangeRequest};
use clustron_dkv::kv_driver::OpenStore;
use clustron_dkv::proto::{Request, Response, StreamItem, StreamRequest};
use clustron_election::{FileStorage, Persisted, Promise, Storage, VoterRecord};
use clustron_log::core::replication::{
    Entry, Message as ReplicationMessage, SnapshotMeta, Summary,
};
use clustron_log::snapshot::{self, SnapshotError, Snapshots};
use clustron_log::wal::{Wal, WalError, WalOptions};
use clustron_transport::frame::{self, Status, StreamKind};
use clustron_transport::identity::PeerIdentity;
use clustron_transport::{
    CertRequest, CertificateAuthority, ChannelId, ClientRole, FrameError, PeerKind, TlsIdentity,
};
use fastrand::Rng;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::gen;
use super::{Scratch, Target};

/// Every target, in a fixed order (the budget is shared in this order).
pub fn all() -> Vec<Target> {
    vec![
        Target {
            name: "any_four_bytes_as_a_stream_header_are_parsed_exactly_or_refused",
            check: stream_header,
            valid: valid_stream_header,
        },
        Target {
            name:
                "any_bytes_as_request_frames_decode_or_are_refused_before_reading_past_the_maximum",
            check: request_frames,
            valid: valid_request_frames,
        },
        Target {
            name: "any_datagram_is_split_exactly_and_decodes_as_its_channel_message_or_is_dropped",
            check: datagram,
            valid: valid_datagram,
        },
        Target {
            name: "any_bytes_as_a_response_are_a_known_status_and_one_frame_or_are_refused",
            check: response_stream,
            valid: valid_response_stream,
        },
        Target {
            name: "any_bytes_as_a_membership_message_decode_to_a_stable_value_or_are_refused",
            check: |_, data| {
                decodes_stably::<clustron_membership::core::Message>(data);
            },
            valid: |_, rng| round_trip(&gen::membership_message(rng)),
        },
        Target {
            name: "any_bytes_as_an_election_message_decode_to_a_stable_value_or_are_refused",
            check: election_message,
            valid: |_, rng| round_trip(&gen::election_message(rng)),
        },
        Target {
            name: "any_bytes_as_an_events_message_decode_to_a_stable_value_or_are_refused",
            check: |_, data| {
                decodes_stably::<clustron_events::core::Message>(data);
            },
            valid: |_, rng| round_trip(&gen::events_message(rng)),
        },
        Target {
            name: "any_bytes_as_a_replication_message_decode_to_a_stable_value_or_are_refused",
            check: |_, data| {
                decodes_stably::<ReplicationMessage>(data);
            },
            valid: |_, rng| round_trip(&gen::replication_message(rng)),
        },
        Target {
            name: "any_bytes_as_a_client_request_decode_and_are_authorised_or_are_refused",
            check: |_, data| {
                if let Some(request) = decodes_stably::<Request>(data) {
                    let _ = Access::of(&request);
                }
            },
            valid: |_, rng| round_trip(&gen::request(rng)),
        },
        Target {
            name: "any_bytes_as_a_client_response_decode_to_a_stable_value_or_are_refused",
            check: |_, data| {
                decodes_stably::<Response>(data);
            },
            valid: |_, rng| round_trip(&gen::response(rng)),
        },
        Target {
            name: "any_bytes_as_a_stream_request_decode_and_are_authorised_or_are_refused",
            check: |_, data| {
                if let Some(request) = decodes_stably::<StreamRequest>(data) {
                    let _ = Access::of_stream(&request);
                }
            },
            valid: |_, rng| round_trip(&gen::stream_request(rng)),
        },
        Target {
            name: "any_bytes_as_a_stream_item_decode_to_a_stable_value_or_are_refused",
            check: |_, data| {
                decodes_stably::<StreamItem>(data);
            },
            valid: |_, rng| round_trip(&gen::stream_item(rng)),
        },
        Target {
            name: "any_bytes_as_a_kv_request_decode_and_are_authorised_or_are_refused",
            check: |_, data| {
                if let Some(request) = decodes_stably::<KvRequest>(data) {
                    let _ = Access::of_kv(&request);
                }
            },
            valid: |_, rng| round_trip(&gen::kv_request(rng)),
        },
        Target {
            name: "any_bytes_as_a_kv_answer_decode_to_a_stable_value_or_are_refused",
            check: |_, data| {
                decodes_stably::<Result<KvReply, KvFailure>>(data);
            },
            valid: |_, rng| {
                let answer = match rng.bool() {
                    true => Ok(gen::kv_reply(rng)),
                    false => Err(gen::kv_failure(rng)),
                };
                round_trip(&answer)
            },
        },
        Target {
            name: "any_bytes_as_resp_requests_decode_alike_however_split_and_run_or_are_refused",
            check: resp_requests,
            valid: valid_resp_requests,
        },
        Target {
            name: "any_log_entry_payload_decodes_to_a_command_every_replica_applies_or_is_refused",
            check: log_command,
            valid: |_, rng| round_trip(&gen::command(rng)),
        },
        Target {
            name: "any_bytes_as_a_grant_summary_decode_exactly_or_count_as_absent",
            check: summary,
            valid: |_, rng| {
                let summary = Summary {
                    last_epoch: gen::u64_any(rng),
                    last_index: gen::u64_any(rng),
                };
                let bytes = summary.encode();
                assert_eq!(Summary::decode(&bytes), Some(summary));
                bytes
            },
        },
        Target {
            name: "any_persisted_election_state_loads_as_written_or_is_refused",
            check: election_storage,
            valid: valid_election_storage,
        },
        Target {
            name: "any_wal_directory_opens_as_a_contiguous_log_or_is_refused",
            check: wal_directory,
            valid: valid_wal_directory,
        },
        Target {
            name: "a_wal_whose_last_segment_is_cut_anywhere_recovers_a_prefix_of_what_was_written",
            check: wal_cut,
            valid: |_, rng| {
                let mut input = rng.u64(..).to_le_bytes().to_vec();
                input.extend_from_slice(&rng.u32(..).to_le_bytes());
                input
            },
        },
        Target {
            name: "any_bytes_as_the_log_epoch_file_open_the_store_only_when_they_are_one_epoch",
            check: epoch_file,
            valid: |_, rng| gen::u64_any(rng).to_le_bytes().to_vec(),
        },
        Target {
            name: "any_bytes_as_a_store_snapshot_restore_a_usable_store_or_are_refused",
            check: snapshot,
            valid: valid_snapshot,
        },
        Target {
            name: "any_snapshot_folder_loads_its_newest_valid_snapshot_or_is_refused_as_damaged",
            check: snapshot_folder,
            valid: valid_snapshot_folder,
        },
        Target {
            name: "any_bytes_as_a_pulled_snapshot_decode_to_a_usable_machine_state_or_are_refused",
            check: pulled_snapshot,
            valid: valid_pulled_snapshot,
        },
        Target {
            name: "any_bytes_as_a_config_file_load_as_written_or_are_refused_with_a_reason",
            check: config_file,
            valid: valid_config_file,
        },
        Target {
            name: "any_pem_text_as_a_tls_identity_loads_or_is_refused",
            check: tls_identity,
            valid: valid_tls_identity,
        },
        Target {
            name: "any_pem_text_as_a_certificate_authority_loads_or_is_refused",
            check: certificate_authority,
            valid: valid_certificate_authority,
        },
        Target {
            name: "any_der_bytes_as_a_peer_certificate_yield_its_identity_or_are_refused",
            check: peer_certificate,
            valid: valid_peer_certificate,
        },
    ]
}

// ---- helpers ----

/// Decodes `bytes` as the transport does ([`frame::decode_body`]: the whole
/// body, no trailing bytes); if they decode, checks that the value
/// re-encodes to bytes that decode to the same value.
fn decodes_stably<T>(bytes: &[u8]) -> Option<T>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let value = frame::decode_body::<T>(bytes).ok()?;
    let again = postcard::to_allocvec(&value).expect("a decoded value encodes");
    let back = frame::decode_body::<T>(&again).expect("a re-encoded value decodes");
    assert_eq!(
        back, value,
        "a decoded value changed through encode and decode"
    );
    Some(value)
}

/// A valid value's encoding, after checking that it decodes to exactly the
/// value and re-encodes to exactly the same bytes.
fn round_trip<T>(value: &T) -> Vec<u8>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let bytes = postcard::to_allocvec(value).expect("a valid value encodes");
    let back = frame::decode_body::<T>(&bytes).expect("a valid value decodes");
    assert_eq!(&back, value, "a valid value did not round-trip");
    assert_eq!(
        postcard::to_allocvec(&back).expect("encodes"),
        bytes,
        "a valid value re-encoded differently"
    );
    bytes
}

/// Largest frame the frame targets accept: small, so that tampered length
/// prefixes land on both sides of it.
const MAX_FRAME: usize = 64 * 1024;

/// The four-byte big-endian length prefix at `at`, if there are four bytes.
fn prefix_at(data: &[u8], at: usize) -> Option<usize> {
    let bytes: [u8; 4] = data.get(at..at + 4)?.try_into().ok()?;
    Some(u32::from_be_bytes(bytes) as usize)
}

// ---- transport ----

fn stream_header(_: &mut Scratch, data: &[u8]) {
    let mut head = [0u8; frame::HEADER_LEN];
    let n = data.len().min(head.len());
    head[..n].copy_from_slice(&data[..n]);
    match frame::parse_header(head) {
        Ok((kind, channel)) => assert_eq!(frame::header(kind, channel), head),
        Err(FrameError::UnsupportedVersion(v)) => assert_ne!(v, frame::WIRE_VERSION),
        Err(FrameError::UnknownKind(k)) => assert!(head[0] == frame::WIRE_VERSION && k == head[1]),
        Err(other) => panic!("unexpected header error {other:?}"),
    }
}

fn valid_stream_header(_: &mut Scratch, rng: &mut Rng) -> Vec<u8> {
    let kind = [StreamKind::Request, StreamKind::Message, StreamKind::Stream][rng.usize(..3)];
    let channel = ChannelId(rng.u16(..));
    let head = frame::header(kind, channel);
    assert_eq!(frame::parse_header(head), Ok((kind, channel)));
    head.to_vec()
}

/// Reads frames one after another as a request stream's reader would,
/// checking each answer of `decode_frame` against the length prefix.
fn request_frames(_: &mut Scratch, data: &[u8]) {
    let mut at = 0;
    loop {
        let rest = &data[at..];
        let result = frame::decode_frame::<Request>(rest, MAX_FRAME);
        let Some(len) = prefix_at(data, at) else {
            assert_eq!(result, Ok(None), "fewer than four bytes must ask for more");
            return;
        };
        if len > MAX_FRAME {
            assert_eq!(
                result,
                Err(FrameError::TooLarge {
                    len: len as u64,
                    max: MAX_FRAME
                }),
                "an oversized prefix must be refused before its body is read"
            );
            return;
        }
        match result {
            Ok(None) => {
                assert!(
                    rest.len() < frame::LENGTH_PREFIX + len,
                    "asked for bytes it had"
                );
                return;
            }
            Ok(Some((request, used))) => {
                assert_eq!(used, frame::LENGTH_PREFIX + len);
                decodes_stably::<Request>(&rest[frame::LENGTH_PREFIX..used])
                    .expect("a frame that decoded once decodes again");
                let _ = Access::of(&request);
                at += used;
            }
            Err(FrameError::Malformed(_)) => return,
            Err(other) => panic!("unexpected frame error {other:?}"),
        }
    }
}

fn valid_request_frames(_: &mut Scratch, rng: &mut Rng) -> Vec<u8> {
    let requests = gen::vec_of(rng, 4, gen::request);
    let mut buf = Vec::new();
    for request in &requests {
        frame::encode_frame(&mut buf, request, MAX_FRAME).expect("a small request fits");
    }
    let mut at = 0;
    let mut back = Vec::new();
    while let Some((request, used)) =
        frame::decode_frame::<Request>(&buf[at..], MAX_FRAME).expect("valid frames decode")
    {
        back.push(request);
        at += used;
    }
    assert_eq!(at, buf.len());
    assert_eq!(back, requests, "valid frames did not round-trip");
    buf
}

fn datagram(_: &mut Scratch, data: &[u8]) {
    let Ok((channel, body)) = frame::parse_datagram(data) else {
        assert!(data.len() < frame::DATAGRAM_HEADER_LEN || data[0] != frame::WIRE_VERSION);
        return;
    };
    let mut rebuilt = frame::datagram_header(channel).to_vec();
    rebuilt.extend_from_slice(body);
    assert_eq!(rebuilt, data, "a datagram split is not exact");
    match channel {
        ChannelId::MEMBERSHIP => {
            decodes_stably::<clustron_membership::core::Message>(body);
        }
        ChannelId::ELECTION => {
            decodes_stably::<clustron_election::Message>(body);
        }
        ChannelId::EVENTS => {
            decodes_stably::<clustron_events::core::Message>(body);
        }
        ChannelId::LOG => {
            decodes_stably::<ReplicationMessage>(body);
        }
        _ => {}
    }
}

fn valid_datagram(_: &mut Scratch, rng: &mut Rng) -> Vec<u8> {
    let (channel, body) = match rng.u8(..4) {
        0 => (
            ChannelId::MEMBERSHIP,
            round_trip(&gen::membership_message(rng)),
        ),
        1 => (ChannelId::ELECTION, round_trip(&gen::election_message(rng))),
        2 => (ChannelId::EVENTS, round_trip(&gen::events_message(rng))),
        _ => (ChannelId::LOG, round_trip(&gen::replication_message(rng))),
    };
    let mut data = frame::datagram_header(channel).to_vec();
    data.extend_from_slice(&body);
    assert_eq!(frame::parse_datagram(&data), Ok((channel, &body[..])));
    data
}

/// A response stream as the requester reads it: a status byte, one frame
/// (the response, or a reason string), then the end of the stream.
fn response_stream(_: &mut Scratch, data: &[u8]) {
    let Some((&status, rest)) = data.split_first() else {
        return;
    };
    let Some(len) = prefix_at(rest, 0) else {
        return;
    };
    if len > MAX_FRAME {
        assert!(matches!(
            frame::decode_frame::<serde::de::IgnoredAny>(rest, MAX_FRAME),
            Err(FrameError::TooLarge { .. })
        ));
        return;
    }
    // Cut short (the reader says truncated) or followed by trailing bytes
    // (the reader says malformed): nothing is decoded.
    let Some(body) = rest.get(frame::LENGTH_PREFIX..frame::LENGTH_PREFIX + len) else {
        return;
    };
    if rest.len() != frame::LENGTH_PREFIX + len {
        return;
    }
    match Status::from_u8(status) {
        Some(Status::Ok) => {
            decodes_stably::<Response>(body);
        }
        Some(Status::UnknownChannel | Status::Rejected) => {
            decodes_stably::<String>(body);
        }
        None => assert!(status > 2, "status {status} should be known"),
    }
}

fn valid_response_stream(_: &mut Scratch, rng: &mut Rng) -> Vec<u8> {
    let mut data = Vec::new();
    if rng.u8(..4) == 0 {
        let reason = gen::string(rng, 60);
        data.push(Status::Rejected as u8);
        frame::encode_frame(&mut data, &reason, MAX_FRAME).expect("fits");
        assert_eq!(
            frame::decode_frame::<String>(&data[1..], MAX_FRAME),
            Ok(Some((reason, data.len() - 1)))
        );
    } else {
        let response = gen::response(rng);
        data.push(Status::Ok as u8);
        frame::encode_frame(&mut data, &response, MAX_FRAME).expect("fits");
        assert_eq!(
            frame::decode_frame::<Response>(&data[1..], MAX_FRAME),
            Ok(Some((response, data.len() - 1)))
        );
    }
    assert_eq!(Status::from_u8(data[0]).map(|s| s as u8), Some(data[0]));
    data
}

// ---- protocol messages ----

fn election_message(_: &mut Scratch, data: &[u8]) {
    let framed = decodes_stably::<clustron_election::Message>(data);
    // `Message::decode` is the election's own decoder: it must agree with
    // the transport's wherever the transport accepts the bytes.
    let own = clustron_election::Message::decode(data).ok();
    if let Some(framed) = framed {
        assert_eq!(own.as_ref(), Some(&framed));
    }
    if let Some(message) = own {
        assert_eq!(
            clustron_election::Message::decode(&message.encode()).ok(),
            Some(message)
        );
    }
}

/// Limits small enough that generated commands hit them.
fn small_limits() -> Limits {
    Limits {
        max_key: 8,
        max_value: 16,
        max_txn_ops: 6,
    }
}

/// A log entry's payload as every replica's server decodes it
/// (`postcard::from_bytes`, as `apply_data`), then applied to a store that
/// already holds a few keys, a lease and a session.
fn log_command(_: &mut Scratch, data: &[u8]) {
    let Ok(command) = postcard::from_bytes::<Command>(data) else {
        return;
    };
    let again = postcard::to_allocvec(&command).expect("a decoded command encodes");
    assert_eq!(
        postcard::from_bytes::<Command>(&again).ok().as_ref(),
        Some(&command)
    );
    let _ = check_limits(&command, &small_limits());
    let mut store = Store::new(small_limits());
    let put = |key: &[u8], lease| {
        Command::Put(PutRequest {
            key: key.to_vec(),
            value: b"v".to_vec(),
            lease,
            prev_kv: false,
        })
    };
    for setup in [
        put(b"a", None),
        Command::LeaseGrant {
            id: clustron_dkv::kv::LeaseId(1),
            ttl_ms: 1000,
        },
        put(b"ab", Some(clustron_dkv::kv::LeaseId(1))),
        put(b"a", None),
        Command::OpenSession {
            id: clustron_dkv::kv::SessionId(1),
            ttl_ms: 1000,
        },
    ] {
        store.apply(setup);
    }
    let before = store.revision();
    let mut twin = store.clone();
    let applied = store.apply(command.clone());
    assert_eq!(
        twin.apply(command),
        applied,
        "two replicas applied differently"
    );
    assert_eq!(twin, store, "two replicas diverged");
    assert!(store.revision() >= before, "the revision went back");
    let _ = store.events_since(&KeyRange::Prefix(Vec::new()), store.compacted() + 1);
}

fn summary(_: &mut Scratch, data: &[u8]) {
    match Summary::decode(data) {
        Some(summary) => {
            assert_eq!(data.len(), Summary::LEN);
            assert_eq!(summary.encode(), data);
        }
        None => assert_ne!(data.len(), Summary::LEN),
    }
}

// ---- election storage ----

/// The input: `flags u8 | promise length u16 LE | promise | voters`;
/// flag bit 0 writes the `promise` file, bit 1 the `voters` file.
fn split_storage_input(data: &[u8]) -> (Option<&[u8]>, Option<&[u8]>) {
    let flags = data.first().copied().unwrap_or(0);
    let rest = data.get(1..).unwrap_or_default();
    let len = rest
        .get(..2)
        .map_or(0, |b| u16::from_le_bytes([b[0], b[1]]) as usize);
    let rest = rest.get(2..).unwrap_or_default();
    let (promise, voters) = rest.split_at(len.min(rest.len()));
    (
        (flags & 1 != 0).then_some(promise),
        (flags & 2 != 0).then_some(voters),
    )
}

fn election_storage(scratch: &mut Scratch, data: &[u8]) {
    let dir = scratch.fresh_dir();
    let (promise, voters) = split_storage_input(data);
    if let Some(bytes) = promise {
        write(&dir.join("promise"), bytes);
    }
    if let Some(bytes) = voters {
        write(&dir.join("voters"), bytes);
    }
    let storage = FileStorage::open(&dir).expect("opens a folder");
    match storage.load() {
        Ok(persisted) => {
            if promise.is_none() {
                assert_eq!(persisted.promise, None);
            }
            if voters.is_none() {
                assert_eq!(persisted.voters, None);
            }
            if let Some(record) = &persisted.voters {
                for set in std::iter::once(&record.committed).chain(&record.pending) {
                    let names: Vec<_> = set.voters().iter().map(|v| &v.name).collect();
                    assert!(
                        names.windows(2).all(|w| w[0] < w[1]),
                        "a loaded voter set breaks its invariant (sorted by name, no duplicates): {names:?}"
                    );
                }
            }
        }
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}"),
    }
}

fn valid_election_storage(scratch: &mut Scratch, rng: &mut Rng) -> Vec<u8> {
    let dir = scratch.fresh_dir();
    let mut storage = FileStorage::open(&dir).expect("opens a folder");
    let promise = gen::option_of(rng, |rng| Promise {
        epoch: clustron_election::Epoch(gen::u64_any(rng)),
        holder: gen::node_name(rng),
        duration: gen::duration(rng),
    });
    let voters = gen::option_of(rng, |rng| VoterRecord {
        committed: gen::voter_set(rng),
        pending: gen::option_of(rng, gen::voter_set),
        pending_epoch: clustron_election::Epoch(gen::u64_any(rng)),
    });
    if let Some(p) = &promise {
        storage.save_promise(p).expect("saves");
    }
    if let Some(v) = &voters {
        storage.save_voters(v).expect("saves");
    }
    assert_eq!(
        storage.load().expect("loads what it saved"),
        Persisted {
            promise: promise.clone(),
            voters: voters.clone()
        }
    );
    let read = |name: &str| std::fs::read(dir.join(name)).unwrap_or_default();
    let promise_bytes = read("promise");
    let mut data = vec![promise.is_some() as u8 | (voters.is_some() as u8) << 1];
    data.extend_from_slice(&(promise_bytes.len() as u16).to_le_bytes());
    data.extend_from_slice(&promise_bytes);
    data.extend_from_slice(&read("voters"));
    data
}

// ---- write-ahead log ----

/// Small segments, so a few entries span several files.
fn wal_options() -> WalOptions {
    WalOptions {
        segment_bytes: 256,
        max_payload: 4096,
        prefill_bytes: 512,
    }
}

/// The input as WAL segment files: `count u8`, then per file
/// `first index u64 LE | length u32 LE | bytes` (the last file takes what
/// is left if its length runs past the end).
fn split_wal_input(data: &[u8]) -> Vec<(u64, &[u8])> {
    let count = data.first().map_or(0, |c| (c % 6) as usize);
    let mut rest = data.get(1..).unwrap_or_default();
    let mut files = Vec::new();
    for _ in 0..count {
        let Some(head) = rest.get(..12) else { break };
        let first = u64::from_le_bytes(head[..8].try_into().unwrap_or_default());
        let len = u32::from_le_bytes(head[8..12].try_into().unwrap_or_default()) as usize;
        rest = &rest[12..];
        let (file, tail) = rest.split_at(len.min(rest.len()));
        files.push((first, file));
        rest = tail;
    }
    files
}

fn segment_name(first: u64) -> String {
    format!("{first:020}.wal")
}

/// Checks what an opened log says about itself, appends one more entry and
/// reopens: the log must be usable, not only readable.
fn check_open_log(dir: &Path, mut wal: Wal, entries: &[Entry]) {
    for pair in entries.windows(2) {
        assert_eq!(pair[1].index, pair[0].index + 1, "recovered a gap");
        assert!(pair[1].epoch >= pair[0].epoch, "recovered a falling epoch");
    }
    let first = wal.first_index();
    let last = wal.last_index();
    match (entries.first(), entries.last()) {
        (Some(f), Some(l)) => assert_eq!((first, last), (f.index, l.index)),
        _ => assert_eq!(last.checked_add(1), Some(first), "an empty log's bounds"),
    }
    let Some(next) = last.checked_add(1) else {
        return;
    };
    let extra = Entry {
        epoch: entries.last().map_or(1, |e| e.epoch),
        index: next,
        kind: clustron_log::wal::EntryKind::Data,
        payload: b"after recovery".to_vec(),
    };
    wal.append(std::slice::from_ref(&extra))
        .expect("a recovered log takes the next entry");
    wal.sync().expect("syncs");
    drop(wal);
    let (_, again) = Wal::open(dir, wal_options()).expect("a log that opened opens again");
    assert_eq!(again.torn_tail_bytes, 0);
    assert_eq!(again.entries.len(), entries.len() + 1);
    assert_eq!(&again.entries[..entries.len()], entries);
    assert_eq!(again.entries.last(), Some(&extra));
}

fn wal_directory(scratch: &mut Scratch, data: &[u8]) {
    let dir = scratch.fresh_dir();
    for (first, bytes) in split_wal_input(data) {
        write(&dir.join(segment_name(first)), bytes);
    }
    match Wal::open(&dir, wal_options()) {
        Ok((wal, recovered)) => check_open_log(&dir, wal, &recovered.entries),
        Err(WalError::Corrupt { .. }) => {}
        Err(other) => panic!("a bad log must be refused as corrupt, got {other}"),
    }
}

/// Writes `entries` with [`Wal::append`] into `dir`.
fn write_log(dir: &Path, entries: &[Entry]) {
    let (mut wal, _) = Wal::open(dir, wal_options()).expect("a new log opens");
    for batch in entries.chunks(3) {
        wal.append(batch).expect("appends");
        wal.sync().expect("syncs");
    }
}

/// The segment files of `dir`, in name order.
fn segment_files(dir: &Path) -> Vec<(u64, Vec<u8>)> {
    let mut files: Vec<(u64, Vec<u8>)> = std::fs::read_dir(dir)
        .expect("lists")
        .filter_map(|e| {
            let path = e.ok()?.path();
            let first = path.file_stem()?.to_str()?.parse().ok()?;
            Some((first, std::fs::read(&path).ok()?))
        })
        .collect();
    files.sort();
    files
}

fn valid_wal_directory(scratch: &mut Scratch, rng: &mut Rng) -> Vec<u8> {
    let dir = scratch.fresh_dir();
    let entries = gen::entries(rng, 0, 20);
    write_log(&dir, &entries);
    let files = segment_files(&dir);
    let (wal, recovered) = Wal::open(&dir, wal_options()).expect("a valid log opens");
    assert_eq!(recovered.entries, entries, "a valid log did not come back");
    assert_eq!(recovered.torn_tail_bytes, 0);
    drop(wal);
    let mut data = vec![files.len() as u8];
    for (first, bytes) in files {
        data.extend_from_slice(&first.to_le_bytes());
        data.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        data.extend_from_slice(&bytes);
    }
    data
}

/// The input: `log seed u64 LE | cut u32 LE` (any bytes work: missing
/// bytes are zeros). Writes the seed's log, cuts its last segment at
/// `cut` modulo its length, and opens it.
fn wal_cut(scratch: &mut Scratch, data: &[u8]) {
    let mut head = [0u8; 12];
    let n = data.len().min(12);
    head[..n].copy_from_slice(&data[..n]);
    let seed = u64::from_le_bytes(head[..8].try_into().unwrap_or_default());
    let cut = u32::from_le_bytes(head[8..].try_into().unwrap_or_default()) as u64;
    let mut rng = Rng::with_seed(seed);
    let entries = gen::entries(&mut rng, 0, 20);
    let dir = scratch.fresh_dir();
    write_log(&dir, &entries);
    let files = segment_files(&dir);
    let Some((last_first, last_bytes)) = files.last() else {
        return;
    };
    let cut = cut % (last_bytes.len() as u64 + 1);
    let path = dir.join(segment_name(*last_first));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("opens");
    file.set_len(cut).expect("cuts");
    drop(file);
    let (wal, recovered) = Wal::open(&dir, wal_options())
        .unwrap_or_else(|e| panic!("a log cut at byte {cut} of its last segment: {e}"));
    let kept = recovered.entries.len();
    assert!(kept <= entries.len());
    assert_eq!(
        recovered.entries,
        entries[..kept],
        "not a prefix of what was written"
    );
    let earlier: usize = entries
        .iter()
        .filter(|e| e.index < *last_first)
        .map(|_| 1)
        .sum();
    assert!(kept >= earlier, "lost entries of closed segments");
    check_open_log(&dir, wal, &recovered.entries);
}

fn epoch_file(scratch: &mut Scratch, data: &[u8]) {
    let dir = scratch.fresh_dir();
    write(&dir.join("log-epoch"), data);
    match OpenStore::open(&dir) {
        Ok(_) => assert_eq!(data.len(), 8, "took a {}-byte epoch file", data.len()),
        Err(e) => assert_ne!(data.len(), 8, "refused a good epoch file: {e}"),
    }
}

// ---- store snapshot ----

fn snapshot(_: &mut Scratch, data: &[u8]) {
    let Ok(store) = Store::restore(data) else {
        return;
    };
    use_store(store, data.len() as u64);
}

/// Checks that a decoded store snapshots to itself and can be read,
/// written and compacted.
fn use_store(mut store: Store, seed: u64) {
    let again = Store::restore(&store.snapshot()).expect("a restored store snapshots");
    assert_eq!(again, store, "a restored store changed through a snapshot");
    let everything = RangeRequest {
        range: KeyRange::Prefix(Vec::new()),
        revision: 0,
        limit: 0,
        keys_only: false,
        count_only: false,
    };
    let _ = store.range(&everything);
    let _ = store.events_since(
        &KeyRange::Prefix(Vec::new()),
        store.compacted().saturating_add(1),
    );
    let mut rng = Rng::with_seed(seed);
    for _ in 0..4 {
        store.apply(gen::command(&mut rng));
    }
    let revision = store.revision();
    store.apply(Command::Compact { revision });
    let _ = store.range(&everything);
}

fn valid_snapshot(_: &mut Scratch, rng: &mut Rng) -> Vec<u8> {
    let store = random_store(rng);
    let bytes = store.snapshot();
    assert_eq!(
        Store::restore(&bytes).expect("a snapshot restores"),
        store,
        "a snapshot did not round-trip"
    );
    bytes
}

/// A random store, as a replica builds one by applying commands.
fn random_store(rng: &mut Rng) -> Store {
    let mut store = Store::new(small_limits());
    for _ in 0..rng.usize(..30) {
        store.apply(gen::command(rng));
    }
    store
}

/// The input as snapshot files: `count u8`, then per file
/// `index u64 LE | length u32 LE | bytes` (as [`split_wal_input`]).
fn snapshot_folder(scratch: &mut Scratch, data: &[u8]) {
    let dir = scratch.fresh_dir();
    let files = split_wal_input(data);
    for (index, bytes) in &files {
        write(&dir.join(format!("snapshot-{index:020}.snap")), bytes);
    }
    let snapshots = Snapshots::open(&dir).expect("opens a folder");
    match snapshots.load() {
        Ok(None) => assert!(files.is_empty(), "snapshot files were ignored"),
        Ok(Some(loaded)) => {
            let (index, bytes) = files
                .iter()
                .rev()
                .find(|(index, _)| *index == loaded.meta.index)
                .expect("the loaded snapshot is one of the files");
            assert_eq!(*index, loaded.meta.index, "named for its index");
            assert_eq!(
                snapshot::decode(bytes),
                Ok((loaded.meta, loaded.state)),
                "the file decodes to what was loaded"
            );
        }
        Err(SnapshotError::Damaged { .. }) => {}
        Err(other) => panic!("a bad snapshot must be reported damaged, got {other}"),
    }
}

fn valid_snapshot_folder(scratch: &mut Scratch, rng: &mut Rng) -> Vec<u8> {
    let dir = scratch.fresh_dir();
    let snapshots = Snapshots::open(&dir).expect("opens a folder");
    let mut newest = None;
    for k in 0..rng.usize(1..4) {
        let meta = SnapshotMeta {
            index: 10 * (k as u64 + 1) + rng.u64(..10),
            epoch: rng.u64(1..5),
        };
        let state = MachineState {
            digest: rng.u32(..),
            store: random_store(rng),
        }
        .encode();
        snapshots.save(meta, &state).expect("saves");
        newest = Some((meta, state));
    }
    let loaded = snapshots.load().expect("loads").expect("has one");
    let (meta, state) = newest.expect("saved one");
    assert_eq!((loaded.meta, &loaded.state), (meta, &state));
    let mut files: Vec<(u64, Vec<u8>)> = std::fs::read_dir(&dir)
        .expect("lists")
        .filter_map(|e| {
            let path = e.ok()?.path();
            let name = path.file_name()?.to_str()?;
            let index = name.strip_prefix("snapshot-")?.strip_suffix(".snap")?;
            Some((index.parse().ok()?, std::fs::read(&path).ok()?))
        })
        .collect();
    files.sort();
    let mut data = vec![files.len() as u8];
    for (index, bytes) in files {
        data.extend_from_slice(&index.to_le_bytes());
        data.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        data.extend_from_slice(&bytes);
    }
    data
}

/// A snapshot as a replica receives it from a peer: checked with
/// `snapshot::decode`, its state decoded with `MachineState::decode`. The
/// CRC proves nothing about a peer's intent, so bytes that do not check are
/// also framed behind a correct header, as a well-framed hostile
/// compressed body, and decoded as a state.
fn pulled_snapshot(_: &mut Scratch, data: &[u8]) {
    let meta = SnapshotMeta {
        index: data.len() as u64,
        epoch: 1,
    };
    let rest = data.get(snapshot::HEADER_LEN..).unwrap_or_default();
    let state = match snapshot::decode(data) {
        Ok((meta, state)) => {
            let again = snapshot::encode(meta, &state);
            assert_eq!(
                snapshot::decode(&again),
                Ok((meta, state.clone())),
                "re-encodes"
            );
            state
        }
        Err(_) => {
            // The rest as a compressed body behind a correct header: its
            // blocks are hostile.
            let framed = [snapshot::header(meta, rest).as_slice(), rest].concat();
            if let Ok((decoded_meta, _)) = snapshot::decode(&framed) {
                assert_eq!(decoded_meta, meta);
            }
            rest.to_vec()
        }
    };
    // Any state compressed by `encode` round-trips.
    let encoded = snapshot::encode(meta, &state);
    assert_eq!(
        snapshot::decode(&encoded).expect("a snapshot made by `encode` checks"),
        (meta, state.clone())
    );
    let Ok(machine) = MachineState::decode(&state) else {
        return;
    };
    assert_eq!(
        MachineState::decode(&machine.encode()).ok().as_ref(),
        Some(&machine)
    );
    use_store(machine.store, meta.index);
}

fn valid_pulled_snapshot(_: &mut Scratch, rng: &mut Rng) -> Vec<u8> {
    let machine = MachineState {
        digest: rng.u32(..),
        store: random_store(rng),
    };
    let meta = SnapshotMeta {
        index: gen::u64_any(rng),
        epoch: gen::u64_any(rng),
    };
    let state = machine.encode();
    let data = snapshot::encode(meta, &state);
    let (decoded_meta, decoded_state) = snapshot::decode(&data).expect("a valid snapshot");
    assert_eq!((decoded_meta, &decoded_state), (meta, &state));
    assert_eq!(
        MachineState::decode(&decoded_state).expect("a valid state"),
        machine
    );
    data
}

// ---- configuration ----

fn config_file(scratch: &mut Scratch, data: &[u8]) {
    let dir = scratch.fresh_dir();
    let path = dir.join("node.toml");
    write(&path, data);
    match FileConfig::load(&path) {
        Ok(file) => {
            let _ = NodeConfig::resolve(FileConfig::default(), file);
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn valid_config_file(scratch: &mut Scratch, rng: &mut Rng) -> Vec<u8> {
    let text_value = |rng: &mut Rng| gen::string(rng, 12);
    let config = FileConfig {
        name: gen::option_of(rng, text_value),
        listen: gen::option_of(rng, gen::socket_addr),
        seeds: gen::option_of(rng, |rng| gen::vec_of(rng, 3, gen::socket_addr)),
        voters: gen::option_of(rng, |rng| gen::vec_of(rng, 3, text_value)),
        priority: gen::option_of(rng, |rng| rng.u32(..)),
        data_dir: gen::option_of(rng, |rng| text_value(rng).into()),
        ca_file: gen::option_of(rng, |rng| text_value(rng).into()),
        cert_file: gen::option_of(rng, |rng| text_value(rng).into()),
        key_file: gen::option_of(rng, |rng| text_value(rng).into()),
        admin_listen: gen::option_of(rng, gen::socket_addr),
        log_format: gen::option_of(rng, text_value),
        retain_revisions: gen::option_of(rng, |rng| rng.u64(..=i64::MAX as u64)),
        retain_bytes: gen::option_of(rng, |rng| rng.u64(..=i64::MAX as u64)),
        max_value_bytes: gen::option_of(rng, |rng| rng.usize(..=i64::MAX as usize)),
        snapshot_entries: gen::option_of(rng, |rng| rng.u64(..=i64::MAX as u64)),
        watch_stall_timeout_secs: gen::option_of(rng, |rng| rng.u64(..=i64::MAX as u64)),
        resp_listen: gen::option_of(rng, gen::socket_addr),
        resp_insecure: gen::option_of(rng, |rng| rng.bool()),
        resp_namespace: gen::option_of(rng, text_value),
    };
    let mut text = String::new();
    let mut line = |key: &str, value: String| text.push_str(&format!("{key} = {value}\n"));
    let quoted = |s: &dyn ToString| toml_string(&s.to_string());
    let list = |items: Vec<String>| format!("[{}]", items.join(", "));
    let path = |p: &std::path::PathBuf| toml_string(&p.to_string_lossy());
    if let Some(v) = &config.name {
        line("name", toml_string(v));
    }
    if let Some(v) = &config.listen {
        line("listen", quoted(v));
    }
    if let Some(v) = &config.seeds {
        line("seeds", list(v.iter().map(|a| quoted(a)).collect()));
    }
    if let Some(v) = &config.voters {
        line("voters", list(v.iter().map(|s| toml_string(s)).collect()));
    }
    if let Some(v) = config.priority {
        line("priority", v.to_string());
    }
    for (key, value) in [
        ("data_dir", &config.data_dir),
        ("ca_file", &config.ca_file),
        ("cert_file", &config.cert_file),
        ("key_file", &config.key_file),
    ] {
        if let Some(v) = value {
            line(key, path(v));
        }
    }
    if let Some(v) = &config.admin_listen {
        line("admin_listen", quoted(v));
    }
    if let Some(v) = &config.log_format {
        line("log_format", toml_string(v));
    }
    if let Some(v) = config.retain_revisions {
        line("retain_revisions", v.to_string());
    }
    if let Some(v) = config.retain_bytes {
        line("retain_bytes", v.to_string());
    }
    if let Some(v) = config.max_value_bytes {
        line("max_value_bytes", v.to_string());
    }
    if let Some(v) = config.snapshot_entries {
        line("snapshot_entries", v.to_string());
    }
    if let Some(v) = config.watch_stall_timeout_secs {
        line("watch_stall_timeout_secs", v.to_string());
    }
    if let Some(v) = &config.resp_listen {
        line("resp_listen", quoted(v));
    }
    if let Some(v) = config.resp_insecure {
        line("resp_insecure", v.to_string());
    }
    if let Some(v) = &config.resp_namespace {
        line("resp_namespace", toml_string(v));
    }
    let dir = scratch.fresh_dir();
    let file = dir.join("node.toml");
    write(&file, text.as_bytes());
    assert_eq!(
        FileConfig::load(&file).unwrap_or_else(|e| panic!("valid config refused: {e}\n{text}")),
        config,
        "a config file did not load as written"
    );
    text.into_bytes()
}

// ---- RESP (the cache's Redis protocol) ----

/// Small limits, so that fuzzed length headers land on both sides of them.
const RESP_LIMITS: resp::Limits = resp::Limits {
    max_bulk_len: 64,
    max_args: 8,
    max_inline_len: 96,
    max_command_len: 256,
};

/// Everything a decoder yields from `chunks` fed in order: the commands,
/// then the error that stopped it, if any.
fn resp_decode(chunks: &[&[u8]]) -> (Vec<resp::codec::Args>, Option<resp::ProtocolError>) {
    resp_decode_with(RESP_LIMITS, chunks)
}

fn resp_decode_with(
    limits: resp::Limits,
    chunks: &[&[u8]],
) -> (Vec<resp::codec::Args>, Option<resp::ProtocolError>) {
    let mut decoder = resp::Decoder::new(limits);
    let mut commands = Vec::new();
    for chunk in chunks {
        decoder.feed(chunk);
        loop {
            match decoder.next_command() {
                Ok(Some(command)) => commands.push(command),
                Ok(None) => break,
                Err(error) => return (commands, Some(error)),
            }
        }
    }
    (commands, None)
}

/// Decodes the input whole, split in two at a point it picks and (when
/// short) byte by byte: the same commands and the same error each time.
/// Every command is within the limits, re-encodes to itself, and runs on
/// an in-memory cache without panicking.
fn resp_requests(_: &mut Scratch, data: &[u8]) {
    let whole = resp_decode(&[data]);
    let at = data
        .first()
        .map_or(0, |b| usize::from(*b) * 7919 % (data.len() + 1));
    let (a, b) = data.split_at(at);
    assert_eq!(
        resp_decode(&[a, b]),
        whole,
        "split at {at} changed the result"
    );
    if data.len() <= 512 {
        let bytes: Vec<&[u8]> = data.chunks(1).collect();
        assert_eq!(
            resp_decode(&bytes),
            whole,
            "byte by byte changed the result"
        );
    }
    let cache = resp::MemoryBackend::with_manual_clock();
    let mut session = resp::Session::new(1, PeerKind::Client(ClientRole::ReadWrite));
    for command in whole.0 {
        assert!(!command.is_empty() && command.len() <= RESP_LIMITS.max_args);
        let longest = RESP_LIMITS.max_bulk_len.max(RESP_LIMITS.max_inline_len);
        assert!(command.iter().all(|arg| arg.len() <= longest));
        let mut again = Vec::new();
        resp::codec::encode_command(&command, &mut again);
        // An inline word may be longer than a bulk string may be.
        let relaxed = resp::Limits {
            max_bulk_len: longest,
            max_command_len: usize::MAX,
            ..RESP_LIMITS
        };
        assert_eq!(
            resp_decode_with(relaxed, &[&again]),
            (vec![command.clone()], None),
            "a decoded command did not re-encode to itself"
        );
        // The in-memory cache never waits: one poll finishes the command.
        let run = resp::execute(&cache, &mut session, command, 1_700_000_000_000);
        let mut run = std::pin::pin!(run);
        let mut context = std::task::Context::from_waker(std::task::Waker::noop());
        let std::task::Poll::Ready(reply) = std::future::Future::poll(run.as_mut(), &mut context)
        else {
            panic!("a command on the in-memory cache did not finish at once");
        };
        let mut encoded = Vec::new();
        reply.encode(&mut encoded);
        assert!(encoded.ends_with(b"\r\n"));
    }
}

/// Commands as clients send them (arrays of bulk strings, often a real
/// command name) and as `telnet` sends them (inline words), pipelined.
fn valid_resp_requests(_: &mut Scratch, rng: &mut Rng) -> Vec<u8> {
    let names = resp::command::SPECS;
    let mut wire = Vec::new();
    let mut expected = Vec::new();
    for _ in 0..1 + rng.usize(..5) {
        let mut args = Vec::new();
        args.push(match rng.u8(..4) {
            0 => gen::bytes(rng, 12),
            _ => names[rng.usize(..names.len())].name.as_bytes().to_vec(),
        });
        for _ in 0..rng.usize(..RESP_LIMITS.max_args) {
            args.push(match rng.u8(..3) {
                0 => rng.i64(..).to_string().into_bytes(),
                _ => gen::bytes(rng, 24),
            });
        }
        let inline = rng.u8(..3) == 0;
        if inline {
            // Inline words: no blanks or quotes, so they split back
            // exactly, and short enough for the line limit.
            for arg in &mut args {
                arg.retain(|b| b.is_ascii_alphanumeric());
                arg.truncate(10);
                if arg.is_empty() {
                    arg.push(b'x');
                }
            }
            wire.extend_from_slice(&args.join(&b' '));
            wire.extend_from_slice(b"\r\n");
        } else {
            resp::codec::encode_command(&args, &mut wire);
        }
        expected.push(args);
    }
    assert_eq!(
        resp_decode(&[&wire]),
        (expected, None),
        "valid RESP requests did not decode exactly"
    );
    wire
}

// ---- certificates ----

/// The parts of a NUL-separated input, as text.
fn pem_parts(data: &[u8]) -> Vec<String> {
    data.split(|b| *b == 0)
        .map(|part| String::from_utf8_lossy(part).into_owned())
        .collect()
}

fn tls_identity(_: &mut Scratch, data: &[u8]) {
    let parts = pem_parts(data);
    let part = |k: usize| parts.get(k).map_or("", String::as_str);
    if let Ok(identity) = TlsIdentity::from_pem(part(0), part(1), part(2)) {
        let _ = identity.identity().to_uri();
    }
}

fn valid_tls_identity(scratch: &mut Scratch, rng: &mut Rng) -> Vec<u8> {
    let pems = scratch.pems();
    let (cert, key) = if rng.bool() {
        (&pems.node.cert_pem, &pems.node.key_pem)
    } else {
        (&pems.client.cert_pem, &pems.client.key_pem)
    };
    let identity = TlsIdentity::from_pem(&pems.ca_cert, cert, key).expect("a valid identity loads");
    assert!(["n1", "c1"].contains(&identity.identity().name.as_str()));
    [pems.ca_cert.as_bytes(), cert.as_bytes(), key.as_bytes()].join(&0u8)
}

fn certificate_authority(_: &mut Scratch, data: &[u8]) {
    let parts = pem_parts(data);
    let part = |k: usize| parts.get(k).map_or("", String::as_str);
    if let Ok(ca) = CertificateAuthority::from_pem(part(0), part(1)) {
        let _ = ca.cert_pem();
    }
}

fn valid_certificate_authority(scratch: &mut Scratch, _: &mut Rng) -> Vec<u8> {
    let pems = scratch.pems();
    CertificateAuthority::from_pem(&pems.ca_cert, &pems.ca_key).expect("a valid CA loads");
    [pems.ca_cert.as_bytes(), pems.ca_key.as_bytes()].join(&0u8)
}

fn peer_certificate(_: &mut Scratch, data: &[u8]) {
    if let Ok(identity) = PeerIdentity::from_certificate(data) {
        assert_eq!(PeerIdentity::from_uri(&identity.to_uri()), Some(identity));
    }
}

fn valid_peer_certificate(scratch: &mut Scratch, rng: &mut Rng) -> Vec<u8> {
    let pems = scratch.pems();
    let (pem, name, kind) = if rng.bool() {
        (&pems.node.cert_pem, "n1", "node")
    } else {
        (&pems.client.cert_pem, "c1", "client")
    };
    let der = {
        use rustls_pki_types::pem::PemObject;
        rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).expect("a PEM certificate")
    };
    let identity = PeerIdentity::from_certificate(&der).expect("a valid certificate names a peer");
    assert_eq!(identity.name.as_str(), name, "{kind}");
    der.to_vec()
}

/// A CA and two certificates it issued, made once per process.
#[derive(Debug)]
pub struct Pems {
    ca_cert: String,
    ca_key: String,
    node: clustron_transport::CertifiedKey,
    client: clustron_transport::CertifiedKey,
}

impl Pems {
    /// Generates them.
    pub fn generate() -> Pems {
        let ca = CertificateAuthority::generate("fuzz").expect("a CA");
        let dir = tempfile::tempdir().expect("a temporary folder");
        ca.save(dir.path()).expect("saves the CA");
        let ca_key = std::fs::read_to_string(dir.path().join("ca.key")).expect("reads the key");
        let node = ca
            .issue(&CertRequest::node("n1").expect("a name"))
            .expect("issues");
        let client = ca
            .issue(&CertRequest::client("c1", ClientRole::ReadOnly).expect("a name"))
            .expect("issues");
        Pems {
            ca_cert: ca.cert_pem().to_owned(),
            ca_key,
            node,
            client,
        }
    }
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}
