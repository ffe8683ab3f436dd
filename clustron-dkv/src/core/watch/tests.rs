//! Watch hub tests: filters, history catch-up in whole-revision chunks,
//! compaction cancels, and a proptest that every watcher, whatever falls
//! behind when, receives exactly its range's changes once and in order.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use proptest::prelude::*;

use super::*;
use crate::core::mvcc::Command;
use crate::kv::{DeleteRequest, KeyRange, PutRequest, RequestOp, Txn};

fn put(key: &str, value: &str) -> Command {
    Command::Put(PutRequest {
        key: key.into(),
        value: value.into(),
        lease: None,
        prev_kv: false,
    })
}

fn apply(store: &mut Store, hub: &mut WatchHub, command: Command) -> Vec<Delivery> {
    let applied = store.apply(command);
    hub.on_applied(applied.revision, &applied.events)
}

#[test]
fn synced_watchers_get_their_range_with_the_filters_they_asked_for() {
    let mut store = Store::default();
    let mut hub = WatchHub::default();
    let all = hub.watch(WatchRequest::new(KeyRange::Prefix(b"a/".to_vec())), &store);
    let deletes = hub.watch(
        WatchRequest {
            prev_kv: true,
            no_put: true,
            ..WatchRequest::new(KeyRange::Key(b"a/x".to_vec()))
        },
        &store,
    );
    let d = apply(&mut store, &mut hub, put("a/x", "1"));
    assert_eq!(d.len(), 1);
    assert_eq!((d[0].id, d[0].events[0].prev_kv.clone()), (all, None));
    assert!(apply(&mut store, &mut hub, put("b", "1")).is_empty());
    let d = apply(
        &mut store,
        &mut hub,
        Command::Delete(DeleteRequest {
            range: KeyRange::Key(b"a/x".to_vec()),
            prev_kv: false,
        }),
    );
    assert_eq!(d.len(), 2);
    let to_deletes = d.iter().find(|d| d.id == deletes).unwrap();
    assert_eq!(to_deletes.events[0].kind, EventKind::Delete);
    assert_eq!(to_deletes.events[0].prev_kv.as_ref().unwrap().value, b"1");
    assert!(hub.cancel(all));
    assert!(!hub.cancel(all));
    assert_eq!(hub.counts(), (1, 0));
}

#[test]
fn a_watch_from_the_past_catches_up_in_whole_revisions_then_follows() {
    let mut store = Store::default();
    let mut hub = WatchHub::default();
    let n = WatchHub::CATCH_UP_CHUNK + 10;
    for i in 0..n {
        store.apply(put("k", &i.to_string()));
    }
    // A transaction of two events, after many single ones.
    store.apply(Command::Txn(Txn {
        success: vec![RequestOp::put(b"k", b"t"), RequestOp::put(b"k2", b"t")],
        ..Txn::default()
    }));
    let id = hub.watch(
        WatchRequest {
            start_revision: 10,
            ..WatchRequest::new(KeyRange::Prefix(b"k".to_vec()))
        },
        &store,
    );
    assert_eq!(hub.counts(), (1, 1));
    // Nothing live for it while it is behind.
    let live = apply(&mut store, &mut hub, put("k", "live"));
    assert!(live.is_empty());
    let mut got = Vec::new();
    let mut rounds = 0;
    while hub.counts().1 > 0 {
        rounds += 1;
        assert!(rounds < 10, "never caught up");
        for d in hub.catch_up(&store) {
            assert_eq!(d.id, id);
            got.extend(d.events);
        }
    }
    assert!(rounds >= 2, "history came in one chunk");
    let after = apply(&mut store, &mut hub, put("k", "after"));
    got.extend(after.into_iter().flat_map(|d| d.events));
    assert_eq!(got, {
        let mut all = store
            .events_since(&KeyRange::Prefix(b"k".to_vec()), 10)
            .unwrap();
        all.iter_mut().for_each(|e| e.prev_kv = None);
        all
    });
}

#[test]
fn a_watcher_behind_the_compaction_point_is_cancelled_with_the_reason() {
    let mut store = Store::default();
    let mut hub = WatchHub::default();
    for i in 0..10 {
        store.apply(put("k", &i.to_string()));
    }
    store.apply(Command::Compact { revision: 5 });
    let id = hub.watch(
        WatchRequest {
            start_revision: 3,
            ..WatchRequest::new(KeyRange::Key(b"k".to_vec()))
        },
        &store,
    );
    assert!(hub.catch_up(&store).is_empty());
    let cancelled = hub.poll_cancelled().unwrap();
    assert_eq!(cancelled.id, id);
    assert!(matches!(
        cancelled.reason,
        KvError::Compacted { compacted: 5, .. }
    ));
    assert_eq!(hub.counts(), (0, 0));
    assert_eq!(hub.poll_cancelled(), None);
}

#[derive(Debug, Clone)]
enum Step {
    Put(u8, u8),
    Delete(u8),
    Txn(u8, u8),
    Watch(u8, u64),
    /// Watcher (by position) could not take its last delivery.
    Stall(usize),
    CatchUp,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        5 => (0u8..6, any::<u8>()).prop_map(|(k, v)| Step::Put(k, v)),
        2 => (0u8..6).prop_map(Step::Delete),
        1 => (0u8..6, 0u8..6).prop_map(|(a, b)| Step::Txn(a, b)),
        1 => (0u8..3, 0u64..30).prop_map(|(p, r)| Step::Watch(p, r)),
        2 => (0usize..6).prop_map(Step::Stall),
        2 => Just(Step::CatchUp),
    ]
}

type Watched = Vec<(WatchId, KeyRange, u64, Vec<Event>)>;

fn take(watchers: &mut Watched, deliveries: Vec<Delivery>) {
    for d in deliveries {
        let w = watchers.iter_mut().find(|w| w.0 == d.id).unwrap();
        w.3.extend(d.events);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Every watcher ends up with exactly the store's history of its range
    /// from its start revision: nothing missed, nothing twice, in order,
    /// however often its stream stalls.
    #[test]
    fn every_watcher_sees_its_history_exactly_once(steps in proptest::collection::vec(step(), 1..80)) {
        let mut store = Store::default();
        let mut hub = WatchHub::default();
        let mut watchers: Watched = Vec::new();
        let key = |k: u8| format!("{}{}", ["a", "b", "c"][(k % 3) as usize], k).into_bytes();
        for step in steps {
            let command = match step {
                Step::Put(k, v) => Command::Put(PutRequest {
                    key: key(k), value: vec![v], lease: None, prev_kv: false,
                }),
                Step::Delete(k) => Command::Delete(DeleteRequest {
                    range: KeyRange::Key(key(k)), prev_kv: false,
                }),
                Step::Txn(a, b) => Command::Txn(Txn {
                    success: vec![RequestOp::put(&key(a), b"t"), RequestOp::delete(&key(b))],
                    ..Txn::default()
                }),
                Step::Watch(p, start) => {
                    let range = KeyRange::Prefix(vec![b"abc"[p as usize]]);
                    let start = start.min(store.revision() + 1).max(1);
                    let id = hub.watch(WatchRequest { start_revision: start, ..WatchRequest::new(range.clone()) }, &store);
                    watchers.push((id, range, start, Vec::new()));
                    continue;
                }
                Step::Stall(i) => {
                    // The stream refuses its last delivery: forget the
                    // events of the newest revision it got, fall behind there.
                    if let Some(w) = watchers.get_mut(i) {
                        if let Some(last) = w.3.last().map(|e| e.kv.mod_revision) {
                            w.3.retain(|e| e.kv.mod_revision < last);
                            hub.fall_behind(w.0, last);
                        }
                    }
                    continue;
                }
                Step::CatchUp => {
                    let d = hub.catch_up(&store);
                    take(&mut watchers, d);
                    continue;
                }
            };
            let d = apply(&mut store, &mut hub, command);
            take(&mut watchers, d);
        }
        for _ in 0..3 {
            let d = hub.catch_up(&store);
            take(&mut watchers, d);
        }
        for (_, range, start, received) in &watchers {
            let mut expected = store.events_since(range, *start).unwrap();
            expected.iter_mut().for_each(|e| e.prev_kv = None);
            prop_assert_eq!(received, &expected);
        }
        prop_assert_eq!(hub.counts().1, 0);
    }
}
