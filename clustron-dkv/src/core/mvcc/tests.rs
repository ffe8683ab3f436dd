//! MVCC store tests: revisions and versions, ranges, transactions, leases,
//! compaction, watch history, snapshots, and a proptest against a model that
//! keeps a full copy of the store at every revision.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

fn put(key: &str, value: &str) -> Command {
    Command::Put(PutRequest {
        key: key.into(),
        value: value.into(),
        lease: None,
        prev_kv: true,
    })
}

fn put_leased(key: &str, value: &str, lease: u64) -> Command {
    Command::Put(PutRequest {
        key: key.into(),
        value: value.into(),
        lease: Some(LeaseId(lease)),
        prev_kv: false,
    })
}

fn delete(range: KeyRange) -> Command {
    Command::Delete(DeleteRequest {
        range,
        prev_kv: true,
    })
}

fn read(range: KeyRange, revision: u64) -> RangeRequest {
    RangeRequest {
        range,
        revision,
        limit: 0,
        keys_only: false,
        count_only: false,
    }
}

fn key(k: &str) -> KeyRange {
    KeyRange::Key(k.into())
}

fn get(store: &Store, k: &str) -> Option<KeyValue> {
    store.range(&read(key(k), 0)).unwrap().kvs.pop()
}

fn values(response: &RangeResponse) -> Vec<(String, String)> {
    response
        .kvs
        .iter()
        .map(|kv| {
            (
                String::from_utf8(kv.key.clone()).unwrap(),
                String::from_utf8(kv.value.clone()).unwrap(),
            )
        })
        .collect()
}

#[test]
fn versions_and_revisions_follow_etcd() {
    let mut s = Store::default();
    assert_eq!(s.apply(put("a", "1")).revision, 1);
    assert_eq!(s.apply(put("b", "1")).revision, 2);
    let applied = s.apply(put("a", "2"));
    let Ok(Outcome::Put(PutResponse {
        prev_kv: Some(prev),
    })) = &applied.outcome
    else {
        panic!("{applied:?}");
    };
    assert_eq!(prev.value, b"1");
    let a = get(&s, "a").unwrap();
    assert_eq!(
        (a.create_revision, a.mod_revision, a.version),
        (1, 3, 2),
        "{a:?}"
    );
    // Delete, then re-create: a new life for the key.
    assert_eq!(s.apply(delete(key("a"))).revision, 4);
    assert_eq!(get(&s, "a"), None);
    s.apply(put("a", "3"));
    let a = get(&s, "a").unwrap();
    assert_eq!((a.create_revision, a.mod_revision, a.version), (5, 5, 1));
    // A delete of nothing changes nothing, not even the revision.
    let applied = s.apply(delete(key("zzz")));
    assert_eq!(applied.revision, 5);
    assert!(applied.events.is_empty());
}

#[test]
fn ranges_prefixes_limits_and_past_revisions() {
    let mut s = Store::default();
    for (k, v) in [
        ("app/a", "1"),
        ("app/b", "2"),
        ("app/c", "3"),
        ("apq", "x"),
        ("b", "y"),
    ] {
        s.apply(put(k, v));
    }
    let prefix = s
        .range(&read(KeyRange::Prefix(b"app/".to_vec()), 0))
        .unwrap();
    assert_eq!(values(&prefix).len(), 3);
    let range = s
        .range(&read(
            KeyRange::Range {
                start: b"app/b".to_vec(),
                end: b"b".to_vec(),
            },
            0,
        ))
        .unwrap();
    assert_eq!(
        values(&range),
        [("app/b", "2"), ("app/c", "3"), ("apq", "x")].map(|(k, v)| (k.into(), v.into()))
    );
    let open = s
        .range(&read(
            KeyRange::Range {
                start: b"apq".to_vec(),
                end: Vec::new(),
            },
            0,
        ))
        .unwrap();
    assert_eq!(open.count, 2);
    let mut limited = read(KeyRange::Prefix(b"app/".to_vec()), 0);
    limited.limit = 2;
    let r = s.range(&limited).unwrap();
    assert_eq!((r.kvs.len(), r.count, r.more), (2, 3, true));
    limited.count_only = true;
    let r = s.range(&limited).unwrap();
    assert_eq!((r.kvs.len(), r.count), (0, 3));
    let mut keys_only = read(key("b"), 0);
    keys_only.keys_only = true;
    assert!(s.range(&keys_only).unwrap().kvs[0].value.is_empty());

    s.apply(put("app/a", "changed"));
    s.apply(delete(KeyRange::Prefix(b"app/".to_vec())));
    assert_eq!(
        s.range(&read(KeyRange::Prefix(b"app/".to_vec()), 0))
            .unwrap()
            .count,
        0
    );
    let then = s
        .range(&read(KeyRange::Prefix(b"app/".to_vec()), 5))
        .unwrap();
    assert_eq!(values(&then)[0], ("app/a".into(), "1".into()));
    let future = s.range(&read(key("b"), 100)).unwrap_err();
    assert!(matches!(future, KvError::FutureRevision { .. }), "{future}");
}

#[test]
fn transactions_compare_then_else_atomically() {
    let mut s = Store::default();
    s.apply(put("k", "v1"));
    let cas = |expect: u64, value: &str| {
        Command::Txn(Txn {
            compare: vec![Compare {
                key: b"k".to_vec(),
                target: CompareTarget::ModRevision(expect),
                op: CompareOp::Equal,
            }],
            success: vec![RequestOp::put(b"k", value.as_bytes()), RequestOp::get(b"k")],
            failure: vec![RequestOp::get(b"k")],
        })
    };
    let applied = s.apply(cas(1, "v2"));
    let Ok(Outcome::Txn(t)) = applied.outcome else {
        panic!()
    };
    assert!(t.succeeded);
    assert_eq!(t.revision, 2);
    // The read after the put sees it.
    let ResponseOp::Range(r) = &t.responses[1] else {
        panic!()
    };
    assert_eq!(r.kvs[0].value, b"v2");
    // A stale compare takes the failure branch and changes nothing.
    let applied = s.apply(cas(1, "v3"));
    let Ok(Outcome::Txn(t)) = applied.outcome else {
        panic!()
    };
    assert!(!t.succeeded);
    assert_eq!((applied.revision, applied.events.len()), (2, 0));
    assert_eq!(get(&s, "k").unwrap().value, b"v2");

    // Absent keys: version 0; a value compare is false whatever the op.
    let absent = |target, op| {
        s.holds(&Compare {
            key: b"nope".to_vec(),
            target,
            op,
        })
    };
    assert!(absent(CompareTarget::Version(0), CompareOp::Equal));
    assert!(absent(CompareTarget::CreateRevision(1), CompareOp::Less));
    assert!(!absent(CompareTarget::Value(Vec::new()), CompareOp::Equal));
    assert!(!absent(
        CompareTarget::Value(Vec::new()),
        CompareOp::NotEqual
    ));
    assert!(absent(CompareTarget::Lease(None), CompareOp::Equal));
}

#[test]
fn bad_transactions_are_refused_before_any_change() {
    let mut s = Store::default();
    s.apply(put("a", "1"));
    let twice = Command::Txn(Txn {
        success: vec![RequestOp::put(b"x", b"1"), RequestOp::put(b"x", b"2")],
        ..Txn::default()
    });
    assert_eq!(s.apply(twice).outcome, Err(KvError::DuplicateKey));
    let put_in_deleted_range = Command::Txn(Txn {
        success: vec![
            RequestOp::Delete(DeleteRequest {
                range: KeyRange::Prefix(b"a".to_vec()),
                prev_kv: false,
            }),
            RequestOp::put(b"ab", b"1"),
        ],
        ..Txn::default()
    });
    assert_eq!(
        s.apply(put_in_deleted_range).outcome,
        Err(KvError::DuplicateKey)
    );
    let too_big = Command::Txn(Txn {
        success: vec![
            RequestOp::put(b"y", b"1"),
            RequestOp::put(b"z", &[0; 2 << 20]),
        ],
        ..Txn::default()
    });
    assert!(matches!(
        s.apply(too_big).outcome,
        Err(KvError::ValueTooLarge { .. })
    ));
    let too_many = Command::Txn(Txn {
        success: (0..200)
            .map(|i| RequestOp::put(format!("k{i}").as_bytes(), b""))
            .collect(),
        ..Txn::default()
    });
    assert!(matches!(
        s.apply(too_many).outcome,
        Err(KvError::TooManyOps { .. })
    ));
    let empty_key = s.apply(put("", "v"));
    assert!(matches!(
        empty_key.outcome,
        Err(KvError::KeyTooLarge { .. })
    ));
    // Nothing of any of them was applied.
    assert_eq!(s.revision(), 1);
    assert_eq!(
        s.range(&read(KeyRange::Prefix(Vec::new()), 0))
            .unwrap()
            .count,
        1
    );
}

#[test]
fn leases_own_their_keys_and_revoking_deletes_them() {
    let mut s = Store::default();
    assert_eq!(
        s.apply(put_leased("x", "1", 7)).outcome,
        Err(KvError::LeaseNotFound(LeaseId(7)))
    );
    let grant = |id| Command::LeaseGrant {
        id: LeaseId(id),
        ttl_ms: 5000,
    };
    assert_eq!(
        s.apply(grant(7)).outcome,
        Ok(Outcome::LeaseGranted {
            id: LeaseId(7),
            ttl_ms: 5000
        })
    );
    assert_eq!(
        s.apply(grant(7)).outcome,
        Err(KvError::LeaseExists(LeaseId(7)))
    );
    s.apply(grant(8));
    s.apply(put_leased("a", "1", 7));
    s.apply(put_leased("b", "1", 7));
    // Re-attaching moves the key; a plain put detaches it.
    s.apply(put_leased("b", "2", 8));
    s.apply(put_leased("c", "1", 7));
    s.apply(put("c", "free"));
    assert_eq!(s.lease_keys(LeaseId(7)).unwrap().count(), 1);
    assert_eq!(
        s.leases().collect::<Vec<_>>(),
        [(LeaseId(7), 5000), (LeaseId(8), 5000)]
    );

    let applied = s.apply(Command::LeaseRevoke { id: LeaseId(7) });
    assert_eq!(applied.outcome, Ok(Outcome::LeaseRevoked { deleted: 1 }));
    assert_eq!(applied.events.len(), 1);
    assert_eq!(applied.events[0].kind, EventKind::Delete);
    assert_eq!(applied.events[0].kv.key, b"a");
    assert_eq!(get(&s, "a"), None);
    assert_eq!(get(&s, "b").unwrap().lease, Some(LeaseId(8)));
    assert_eq!(get(&s, "c").unwrap().value, b"free");
    assert_eq!(
        s.apply(Command::LeaseRevoke { id: LeaseId(7) }).outcome,
        Err(KvError::LeaseNotFound(LeaseId(7)))
    );
}

#[test]
fn compaction_forgets_history_but_not_the_present() {
    let mut s = Store::default();
    for i in 0..10 {
        s.apply(put("k", &i.to_string()));
    }
    s.apply(put("gone", "x"));
    s.apply(delete(key("gone")));
    let before = s.size_bytes();
    let present = s.range(&read(KeyRange::Prefix(Vec::new()), 0)).unwrap();
    assert_eq!(
        s.apply(Command::Compact { revision: 8 }).outcome,
        Ok(Outcome::Compacted)
    );
    assert!(s.size_bytes() < before);
    assert_eq!(
        s.range(&read(KeyRange::Prefix(Vec::new()), 0)).unwrap(),
        present
    );
    assert_eq!(values(&s.range(&read(key("k"), 8)).unwrap())[0].1, "7");
    assert!(matches!(
        s.range(&read(key("k"), 7)),
        Err(KvError::Compacted { .. })
    ));
    assert!(s.events_since(&key("k"), 8).is_err());
    assert_eq!(s.events_since(&key("k"), 9).unwrap().len(), 2);
    assert!(s.apply(Command::Compact { revision: 8 }).outcome.is_err());
    assert!(s.apply(Command::Compact { revision: 99 }).outcome.is_err());
    // Compacting past the delete drops the key entirely.
    s.apply(Command::Compact { revision: 12 });
    assert!(!s.keys.contains_key(b"gone".as_slice()));
}

#[test]
fn a_range_page_stops_at_its_byte_budget_and_the_next_page_continues_after_it() {
    let mut s = Store::default();
    let value = "v".repeat(1000);
    for i in 0..10 {
        s.apply(put(&format!("p/{i}"), &value));
    }
    s.apply(put("q", "outside"));
    let all = KeyRange::Prefix(b"p/".to_vec());
    // Three key-values fit in 3,201 bytes (each counts key + value + 64).
    let page = s.range_page(&read(all.clone(), 0), 3201).unwrap();
    assert_eq!(page.kvs.len(), 3);
    assert!(page.more);
    assert_eq!(page.count, 10);
    // The next page starts after the last key and ends with the prefix.
    let rest = read(all.after(&page.kvs[2].key), 0);
    let page = s.range_page(&rest, usize::MAX).unwrap();
    assert_eq!(page.kvs.len(), 7);
    assert_eq!(page.kvs[0].key, b"p/3");
    assert!(!page.more);
    // However small the budget, a page holds one key (or paging stalls).
    let page = s.range_page(&read(all.clone(), 0), 1).unwrap();
    assert_eq!((page.kvs.len(), page.more), (1, true));
    // keys_only pages count no values.
    let keys_only = RangeRequest {
        keys_only: true,
        ..read(all, 0)
    };
    assert_eq!(s.range_page(&keys_only, 3200).unwrap().kvs.len(), 10);
}

#[test]
fn the_leader_can_tell_how_large_a_writes_answer_would_be() {
    let mut s = Store::default();
    for i in 0..10 {
        s.apply(put(&format!("p/{i}"), &"v".repeat(1000)));
    }
    let all = KeyRange::Prefix(b"p/".to_vec());
    assert_eq!(s.answer_bytes(&delete(all.clone())), 10 * (3 + 1000 + 64));
    assert_eq!(
        s.answer_bytes(&Command::Delete(DeleteRequest {
            range: all.clone(),
            prev_kv: false
        })),
        0
    );
    let txn = Command::Txn(Txn {
        success: vec![RequestOp::Range(RangeRequest {
            limit: 2,
            ..read(all.clone(), 0)
        })],
        failure: vec![RequestOp::Range(RangeRequest {
            keys_only: true,
            ..read(all, 0)
        })],
        ..Txn::default()
    });
    assert_eq!(s.answer_bytes(&txn), 2 * (3 + 1000 + 64));
}

#[test]
fn prefix_end_is_the_first_key_after_the_prefix() {
    assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
    assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
    assert_eq!(prefix_end(b"\xff\xff"), None);
}

/// A command over a small key space, for the model test.
fn command() -> impl Strategy<Value = Command> {
    let k = || (0u8..6).prop_map(|i| format!("k{i}").into_bytes());
    let v = || proptest::collection::vec(any::<u8>(), 0..4);
    let range = prop_oneof![
        k().prop_map(KeyRange::Key),
        Just(KeyRange::Prefix(b"k".to_vec())),
        (k(), k()).prop_map(|(a, b)| KeyRange::Range { start: a, end: b }),
    ];
    prop_oneof![
        4 => (k(), v(), proptest::option::of(0u64..3)).prop_map(|(key, value, lease)| {
            Command::Put(PutRequest { key, value, lease: lease.map(LeaseId), prev_kv: true })
        }),
        2 => range.clone().prop_map(|range| Command::Delete(DeleteRequest { range, prev_kv: true })),
        2 => (k(), 0u64..8, k(), v(), k(), k()).prop_map(|(ck, rev, pk, pv, pk2, dk)| Command::Txn(Txn {
            compare: vec![Compare { key: ck, target: CompareTarget::ModRevision(rev), op: CompareOp::Less }],
            // Two writes in an order unrelated to key order.
            success: vec![RequestOp::put(&pk, &pv), RequestOp::get(&pk), RequestOp::put(&pk2, &pv)],
            failure: vec![RequestOp::delete(&dk)],
        })),
        1 => (0u64..3).prop_map(|id| Command::LeaseGrant { id: LeaseId(id), ttl_ms: 1000 }),
        1 => (0u64..3).prop_map(|id| Command::LeaseRevoke { id: LeaseId(id) }),
        1 => (0u64..20).prop_map(|revision| Command::Compact { revision }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Against a model that copies the whole store at each revision: every
    /// readable past revision reads the same, the events since any revision
    /// replay exactly the changes made, the revision moves only on change,
    /// and a snapshot restores an equal store.
    #[test]
    fn the_store_matches_a_copy_per_revision_model(commands in proptest::collection::vec(command(), 1..40)) {
        let mut s = Store::default();
        // revision -> full (key -> value) map as of that revision.
        let mut model: BTreeMap<u64, BTreeMap<Vec<u8>, Vec<u8>>> = BTreeMap::new();
        model.insert(0, BTreeMap::new());
        let mut history: Vec<(u64, Event)> = Vec::new();
        // The same commands, compacted by scanning every key.
        let mut scanned = Store::default();
        // A snapshot point before each command, with the bytes the store
        // had then: no later write may show through a point.
        let mut points = Vec::new();
        for command in commands {
            points.push((s.snapshot_point(), s.snapshot()));
            let before = s.revision();
            match &command {
                Command::Compact { revision } if *revision > scanned.compacted() && *revision <= scanned.revision() => {
                    compact_by_scanning_every_key(&mut scanned, *revision);
                }
                _ => { scanned.apply(command.clone()); }
            }
            let applied = s.apply(command);
            prop_assert_eq!(&s, &scanned);
            prop_assert_eq!(applied.revision != before, !applied.events.is_empty());
            if applied.outcome.is_err() {
                prop_assert!(applied.events.is_empty());
            }
            let mut now = model[&before].clone();
            for e in &applied.events {
                prop_assert_eq!(e.kv.mod_revision, applied.revision);
                match e.kind {
                    EventKind::Put => { now.insert(e.kv.key.clone(), e.kv.value.clone()); }
                    EventKind::Delete => { prop_assert!(now.remove(&e.kv.key).is_some()); }
                }
                history.push((applied.revision, e.clone()));
            }
            model.insert(applied.revision, now);
        }
        let all = KeyRange::Prefix(Vec::new());
        for (revision, expected) in &model {
            // Revision 0 in a request means "now"; below the compaction
            // point nothing is readable.
            if *revision == 0 || *revision < s.compacted() {
                continue;
            }
            let got: BTreeMap<Vec<u8>, Vec<u8>> = s
                .range(&read(all.clone(), *revision))
                .unwrap()
                .kvs
                .into_iter()
                .map(|kv| (kv.key, kv.value))
                .collect();
            prop_assert_eq!(&got, expected, "at revision {}", revision);
        }
        for start in (s.compacted() + 1)..=(s.revision() + 1) {
            let replay = s.events_since(&all, start).unwrap();
            let expected: Vec<&Event> =
                history.iter().filter(|(r, _)| *r >= start).map(|(_, e)| e).collect();
            prop_assert_eq!(replay.iter().collect::<Vec<_>>(), expected);
            // Read in small chunks, any range gives the same, in whole
            // revisions, each chunk's work bounded by its limits plus one
            // revision.
            let limits = HistoryLimits { max_scanned: 2, max_events: 1, max_bytes: 100 };
            for range in [all.clone(), key("k1"), KeyRange::Range { start: b"k1".to_vec(), end: b"k4".to_vec() }] {
                let mut chunked = Vec::new();
                let mut next = start;
                loop {
                    let chunk = s.history(&range, next, limits, true).unwrap();
                    // A revision here holds at most 6 changes (6 keys).
                    prop_assert!(chunk.scanned <= limits.max_scanned + 6, "scanned {}", chunk.scanned);
                    if let Some(last) = chunk.events.last() {
                        prop_assert!(last.kv.mod_revision < chunk.next);
                    }
                    prop_assert!(chunk.next >= next);
                    chunked.extend(chunk.events);
                    if chunk.complete {
                        prop_assert_eq!(chunk.next, s.revision() + 1);
                        break;
                    }
                    prop_assert!(chunk.next > next, "no progress");
                    next = chunk.next;
                }
                let expected: Vec<&Event> = history
                    .iter()
                    .filter(|(r, e)| *r >= start && range.contains(&e.kv.key))
                    .map(|(_, e)| e)
                    .collect();
                prop_assert_eq!(chunked.iter().collect::<Vec<_>>(), expected);
            }
        }
        prop_assert_eq!(Store::restore(&s.snapshot()).unwrap(), s);
        for (point, bytes) in points {
            prop_assert_eq!(point.encode(), bytes);
        }
    }
}

/// A snapshot point is the state when it was taken, sessions included,
/// whatever is written after it; and it shares the store's tree instead of
/// copying it.
#[test]
fn a_snapshot_point_keeps_its_state_while_the_store_goes_on() {
    let mut store = Store::default();
    let session = SessionId(7);
    store.apply(Command::OpenSession {
        id: session,
        ttl_ms: 1000,
    });
    let in_session = |seq: u64, command: Command| Command::InSession {
        session,
        seq,
        acked: seq,
        command: Box::new(command),
    };
    for i in 0..1000u64 {
        store.apply(in_session(
            i + 1,
            put(&format!("k{}", i % 100), &format!("v{i}")),
        ));
    }
    store.apply(Command::LeaseGrant {
        id: LeaseId(1),
        ttl_ms: 1000,
    });
    let point = store.snapshot_point();
    let bytes = store.snapshot();
    assert!(point.keys.ptr_eq(&store.keys));
    for i in 1000..1500u64 {
        store.apply(in_session(
            i + 1,
            put(&format!("k{}", i % 150), &format!("w{i}")),
        ));
    }
    store.apply(Command::Delete(DeleteRequest {
        range: KeyRange::Prefix(b"k1".to_vec()),
        prev_kv: false,
    }));
    store.apply(Command::LeaseRevoke { id: LeaseId(1) });
    store.apply(Command::Compact {
        revision: store.revision() - 10,
    });
    assert_eq!(point.encode(), bytes);
    assert_ne!(store.snapshot(), bytes);
    let restored = Store::restore(&bytes).unwrap();
    assert_eq!(restored.sessions().len(), 1);
    assert_eq!(restored.revision(), point.revision);
}

/// Compaction as it was first written (a walk over every key), to check
/// the one that visits only the keys changed since the last compaction.
fn compact_by_scanning_every_key(s: &mut Store, revision: u64) {
    let mut freed = 0u64;
    let mut kept = OrdMap::new();
    for (key, versions) in s.keys.iter() {
        let mut versions = Vec::clone(versions);
        let keep_from = versions
            .iter()
            .rposition(|v| v.mod_revision <= revision)
            .map(|i| {
                if versions[i].value.is_none() {
                    i + 1
                } else {
                    i
                }
            })
            .unwrap_or(0);
        for v in versions.drain(..keep_from) {
            freed += (key.len() + v.value.as_ref().map_or(0, Vec::len)) as u64;
        }
        if !versions.is_empty() {
            kept.insert(key.clone(), Arc::new(versions));
        }
    }
    s.keys = kept;
    s.bytes -= freed;
    s.compacted = revision;
    while s.changes.front().is_some_and(|c| c.revision <= revision) {
        s.changes.pop_front();
    }
}

#[test]
fn a_snapshot_keeping_two_versions_before_the_compaction_point_is_refused() {
    let mut store = Store::default();
    for value in ["a", "b", "c"] {
        store.apply(put("k", value));
    }
    store.apply(Command::Compact { revision: 2 });
    assert_eq!(Store::restore(&store.snapshot()).unwrap(), store);
    // Forged: the compaction point moved past two versions of "k" without
    // dropping the older one.
    store.compacted = 3;
    assert!(Store::restore(&store.snapshot()).is_err());
}

/// Found by `fuzz_decoders`: snapshot bytes that decode to a store whose
/// byte count disagrees with its keys; compacting it then underflowed (a
/// panic in debug builds, a wrapped count in release).
#[test]
fn a_snapshot_that_breaks_the_stores_invariants_is_refused() {
    let forged: Vec<u8> = [
        0x01, 0x00, 0x01, 0x01, 0x01, 0x04, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x04, 0x01,
        0x00, 0x00, 0x00, 0x00, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x04, 0x01, 0x00, 0x00, 0x00,
        0x00, 0x04, 0x01, 0x00, 0x00, 0x00,
    ]
    .to_vec();
    assert!(Store::restore(&forged).is_err());

    let mut store = Store::default();
    store.apply(Command::Put(PutRequest {
        key: b"k".to_vec(),
        value: b"v".to_vec(),
        lease: None,
        prev_kv: false,
    }));
    let mut snapshot = store.snapshot();
    assert_eq!(Store::restore(&snapshot).unwrap(), store);
    // The byte count is the last field but the sessions (one byte: none).
    let at = snapshot.len() - 2;
    snapshot[at] += 1;
    assert!(Store::restore(&snapshot).is_err());
}

/// A key held inline or not encodes as the `Vec<u8>` it was (snapshots
/// written before keys were held inline read the same), and reads back.
#[test]
fn keys_encode_as_their_bytes_inline_or_not() {
    for len in [0usize, 1, 23, 24, 25, 300] {
        let bytes: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let key = Key::from(bytes.clone());
        let encoded = postcard::to_allocvec(&key).unwrap();
        assert_eq!(encoded, postcard::to_allocvec(&bytes).unwrap());
        assert_eq!(postcard::from_bytes::<Key>(&encoded).unwrap(), key);
        assert_eq!(&*key, bytes.as_slice());
        assert_eq!(key.0.spilled(), len > 24);
    }
}
