//! Watch hub tests: filters, history catch-up in whole-revision chunks,
//! compaction cancels, bounded work and stall cancels over a large history,
//! and a proptest that every watcher, whatever falls behind when and
//! however small the limits, receives exactly its range's changes once and
//! in order.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::time::{Duration, Instant};

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
    let n = WatchLimits::default().events_per_delivery + 10;
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
        for d in hub.catch_up(&store, Instant::now(), |_| true).deliveries {
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
    assert!(hub
        .catch_up(&store, Instant::now(), |_| true)
        .deliveries
        .is_empty());
    let cancelled = hub.poll_cancelled().unwrap();
    assert_eq!(cancelled.id, id);
    assert!(matches!(
        cancelled.reason,
        KvError::Compacted { compacted: 5, .. }
    ));
    assert_eq!(hub.counts(), (0, 0));
    assert_eq!(hub.poll_cancelled(), None);
}

/// 200,000 puts over 5,000 keys under `k/`, compacted at 100,001, as in
/// issue 10.
fn large_history() -> Store {
    let mut store = Store::default();
    for i in 0..200_000u32 {
        store.apply(put(&format!("k/{}", i % 5000), &i.to_string()));
    }
    store.apply(Command::Compact { revision: 100_001 });
    store
}

#[test]
fn a_stalled_watcher_over_a_large_history_costs_no_work_and_is_cancelled_while_writes_go_on() {
    let mut store = large_history();
    let limits = WatchLimits::default();
    let mut hub = WatchHub::new(limits);
    let from = |range| WatchRequest {
        start_revision: 100_002,
        ..WatchRequest::new(range)
    };
    // Ten watches that never read, and two that do.
    let stalled: Vec<WatchId> = (0..10)
        .map(|_| hub.watch(from(KeyRange::Prefix(b"k/".to_vec())), &store))
        .collect();
    let reader = hub.watch(from(KeyRange::Prefix(b"k/1".to_vec())), &store);
    let one_key = hub.watch(from(KeyRange::Key(b"k/7".to_vec())), &store);
    let ready = |id: WatchId| !stalled.contains(&id);

    let start = Instant::now();
    let mut now = start;
    let mut calls = 0;
    let mut got: Vec<Event> = Vec::new();
    let mut cancelled = Vec::new();
    while hub.counts().1 > 0 {
        calls += 1;
        assert!(calls < 10_000, "watchers never caught up or were cancelled");
        // The write path: one write between any two catch-up calls, and its
        // events reach synced watchers at once.
        let applied = store.apply(put("k/1x", &calls.to_string()));
        for d in hub.on_applied(applied.revision, &applied.events) {
            assert!(!stalled.contains(&d.id));
            if d.id == reader {
                got.extend(d.events);
            }
        }
        // Each call's work is bounded whatever the history (each revision
        // here is one change, so no whole revision goes beyond a bound).
        let done = hub.catch_up(&store, now, ready);
        assert!(done.scanned <= limits.scan_per_call, "{}", done.scanned);
        let bytes: usize = done
            .deliveries
            .iter()
            .flat_map(|d| &d.events)
            .map(event_bytes)
            .sum();
        assert!(bytes <= limits.bytes_per_call, "{bytes}");
        for d in done.deliveries {
            assert!(
                !stalled.contains(&d.id),
                "a watcher that never reads got more"
            );
            assert!(d.events.len() <= limits.events_per_delivery);
            if d.id == reader {
                got.extend(d.events);
            }
        }
        while let Some(c) = hub.poll_cancelled() {
            cancelled.push(c);
        }
        now += Duration::from_millis(20);
    }
    // The readers caught up and follow; every stalled watcher was cancelled
    // once its reader had taken nothing for the stall timeout, saying so.
    assert_eq!(hub.counts(), (2, 0));
    let mut ids: Vec<WatchId> = cancelled.iter().map(|c| c.id).collect();
    ids.sort();
    assert_eq!(ids, stalled);
    for c in &cancelled {
        assert!(
            matches!(c.reason, KvError::WatchTooSlow { stalled_ms } if stalled_ms >= 30_000),
            "{:?}",
            c.reason
        );
    }
    assert!(now - start >= limits.stall_timeout);
    let expected: Vec<Event> = store
        .events_since(&KeyRange::Prefix(b"k/1".to_vec()), 100_002)
        .unwrap()
        .into_iter()
        .map(|mut e| {
            e.prev_kv = None;
            e
        })
        .collect();
    assert_eq!(got, expected, "the reader missed or repeated changes");
    assert!(hub.cancel(one_key));
}

#[test]
fn catching_up_takes_watchers_in_turn_within_one_budget() {
    let store = large_history();
    let limits = WatchLimits {
        scan_per_call: 1000,
        ..WatchLimits::default()
    };
    let mut hub = WatchHub::new(limits);
    let ids: Vec<WatchId> = (0..5)
        .map(|_| {
            let request = WatchRequest {
                start_revision: 100_002,
                ..WatchRequest::new(KeyRange::Prefix(b"k/".to_vec()))
            };
            hub.watch(request, &store)
        })
        .collect();
    // Each call serves one watcher (the budget is one chunk's worth), the
    // next call the next one: nobody waits more than a round.
    let now = Instant::now();
    let mut served = Vec::new();
    for _ in 0..10 {
        let done = hub.catch_up(&store, now, |_| true);
        assert!(done.scanned <= limits.scan_per_call);
        served.extend(done.deliveries.iter().map(|d| d.id));
    }
    let round: Vec<WatchId> = ids.iter().chain(ids.iter()).copied().collect();
    assert_eq!(served, round);
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
        // Tiny limits: every catch-up is cut short somewhere.
        let mut hub = WatchHub::new(WatchLimits {
            scan_per_call: 3,
            bytes_per_call: 300,
            events_per_delivery: 2,
            bytes_per_delivery: 200,
            stall_timeout: Duration::from_secs(3600),
        });
        let now = Instant::now();
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
                    let d = hub.catch_up(&store, now, |_| true).deliveries;
                    take(&mut watchers, d);
                    continue;
                }
            };
            let d = apply(&mut store, &mut hub, command);
            take(&mut watchers, d);
        }
        for _ in 0..1000 {
            if hub.counts().1 == 0 {
                break;
            }
            let d = hub.catch_up(&store, now, |_| true).deliveries;
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
