//! Watches: which client streams get which changes, from which revision.
//!
//! A watcher asks for a key range from a start revision. The hub keeps, for
//! each, the first revision it has not yet been given, so a watcher is
//! always in one of two states (etcd's synced and unsynced groups):
//!
//! - **synced**: caught up; every applied command's events that touch its
//!   range go to it at once ([`WatchHub::on_applied`]);
//! - **unsynced**: behind (it started in the past, or its stream could not
//!   take more and the driver called [`WatchHub::fall_behind`]); it is fed
//!   from the store's history ([`WatchHub::catch_up`]) in bounded chunks
//!   until it reaches the present and becomes synced again.
//!
//! Catching up costs bounded work, whatever the size of the history or the
//! number of watchers: each [`WatchHub::catch_up`] call looks at no more
//! than [`WatchLimits::scan_per_call`] changes and copies no more than
//! [`WatchLimits::bytes_per_call`] bytes in all (whole revisions may
//! exceed them by one), taking watchers in turn so none starves, and the
//! store reads history by revision from an index
//! ([`Store::history`]). A watcher gets its next chunk only when its
//! stream has taken the previous one (the driver says which are `ready`),
//! so a reader that stops reading holds at most one chunk on the node; if
//! it takes nothing for [`WatchLimits::stall_timeout`] while behind, it is
//! cancelled with [`KvError::WatchTooSlow`] and may watch again from the
//! revision after the last one it received.
//!
//! ```text
//!  Store::apply ─► on_applied ─► Delivery (synced watchers)
//!  driver: stream full ─► fall_behind ─► unsynced
//!  driver tick ─► catch_up(store, now, ready) ─► Delivery (unsynced, ready ones, bounded)
//!                                            └─► poll_cancelled: Compacted / WatchTooSlow
//! ```
//!
//! Events of one revision (a transaction) are never split across
//! deliveries. A watcher whose next revision has been compacted away is
//! cancelled with the compaction point, so the client knows to re-read.
//! Because positions are revisions, which are the same on every replica, a
//! client that loses its node resumes on another from the last revision it
//! saw: nothing is missed and nothing is repeated.
//!
//! # Example
//!
//! ```
//! use clustron_dkv::core::mvcc::{Command, Store};
//! use clustron_dkv::core::watch::{WatchHub, WatchRequest};
//! use clustron_dkv::kv::{KeyRange, PutRequest};
//!
//! let mut store = Store::default();
//! let mut hub = WatchHub::default();
//! let id = hub.watch(WatchRequest::new(KeyRange::Prefix(b"app/".to_vec())), &store);
//! let applied = store.apply(Command::Put(PutRequest {
//!     key: b"app/x".to_vec(), value: b"1".to_vec(), lease: None, prev_kv: false,
//! }));
//! let deliveries = hub.on_applied(applied.revision, &applied.events);
//! assert_eq!(deliveries[0].id, id);
//! assert_eq!(deliveries[0].events[0].kv.key, b"app/x");
//! ```

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::mvcc::{HistoryLimits, Store};
use crate::kv::{Event, EventKind, KvError};

/// A watcher's id on this node.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct WatchId(pub u64);

pub use crate::kv::WatchRequest;

/// Events for one watcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The watcher.
    pub id: WatchId,
    /// Its events, in revision order, whole revisions only.
    pub events: Vec<Event>,
}

/// A watcher ended by the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cancelled {
    /// The watcher.
    pub id: WatchId,
    /// Why: its next revision was compacted, or it stopped reading.
    pub reason: KvError,
}

/// How much catching up may cost, and how long a reader may stall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchLimits {
    /// Changes of history looked at per [`WatchHub::catch_up`] call, all
    /// watchers together: the call's work. Default 10,000 (a few
    /// milliseconds; the driver calls every 20 ms while a watcher is
    /// behind, so writes go on between calls).
    pub scan_per_call: usize,
    /// Bytes of events copied per call, all watchers together. Default
    /// 4 MiB.
    pub bytes_per_call: usize,
    /// Most events in one catch-up delivery. Default 1000.
    pub events_per_delivery: usize,
    /// Most bytes in one catch-up delivery: well under the transport's
    /// 4 MiB frame. Default 1 MiB.
    pub bytes_per_delivery: usize,
    /// A watcher behind whose reader takes nothing for this long is
    /// cancelled ([`KvError::WatchTooSlow`]). Default 30 s: long enough
    /// for a reader busy with a burst, short enough that a reader that is
    /// gone (or never reads) does not hold node resources for long.
    pub stall_timeout: Duration,
}

impl Default for WatchLimits {
    fn default() -> Self {
        Self {
            scan_per_call: 10_000,
            bytes_per_call: 4 << 20,
            events_per_delivery: 1000,
            bytes_per_delivery: 1 << 20,
            stall_timeout: Duration::from_secs(30),
        }
    }
}

/// What one [`WatchHub::catch_up`] call did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CatchUp {
    /// Events for watchers, to hand to their streams.
    pub deliveries: Vec<Delivery>,
    /// Changes of history looked at: the call's work.
    pub scanned: usize,
}

#[derive(Debug)]
struct Watcher {
    request: WatchRequest,
    /// First revision not yet given to it.
    next: u64,
    synced: bool,
    /// Since when it has been behind with a stream that took nothing.
    stalled_since: Option<Instant>,
}

/// All watchers of a node. Fed the events of every applied command.
#[derive(Debug, Default)]
pub struct WatchHub {
    watchers: BTreeMap<WatchId, Watcher>,
    next_id: u64,
    cancelled: Vec<Cancelled>,
    limits: WatchLimits,
    /// The watcher a catch-up call served last: the next call starts after
    /// it, so every watcher gets its turn.
    turn: WatchId,
}

impl WatchHub {
    /// A hub with these limits.
    pub fn new(limits: WatchLimits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    /// Adds a watcher. One that starts in the past is unsynced and gets its
    /// history through [`WatchHub::catch_up`].
    pub fn watch(&mut self, request: WatchRequest, store: &Store) -> WatchId {
        self.next_id += 1;
        let id = WatchId(self.next_id);
        let now = store.revision() + 1;
        let next = match request.start_revision {
            0 => now,
            start => start.min(now),
        };
        self.watchers.insert(
            id,
            Watcher {
                request,
                next,
                synced: next == now,
                stalled_since: None,
            },
        );
        id
    }

    /// Removes a watcher; `false` if it was not there.
    pub fn cancel(&mut self, id: WatchId) -> bool {
        self.watchers.remove(&id).is_some()
    }

    /// How many watchers, and how many of them are behind.
    pub fn counts(&self) -> (usize, usize) {
        let behind = self.watchers.values().filter(|w| !w.synced).count();
        (self.watchers.len(), behind)
    }

    /// The events of the command applied at `revision`, for every synced
    /// watcher whose range they touch. Unsynced watchers get them later
    /// from history.
    pub fn on_applied(&mut self, revision: u64, events: &[Event]) -> Vec<Delivery> {
        let mut deliveries = Vec::new();
        for (id, w) in &mut self.watchers {
            // Behind, or already given this revision by a catch-up.
            if !w.synced || revision < w.next {
                continue;
            }
            let mine: Vec<Event> = events
                .iter()
                .filter(|e| wanted(&w.request, e))
                .map(|e| shaped(&w.request, e))
                .collect();
            w.next = revision + 1;
            if !mine.is_empty() {
                deliveries.push(Delivery {
                    id: *id,
                    events: mine,
                });
            }
        }
        deliveries
    }

    /// The driver could not hand a watcher its last delivery (its stream is
    /// full): it goes back to being fed from history from `next_revision`,
    /// the first revision the stream did not take.
    pub fn fall_behind(&mut self, id: WatchId, next_revision: u64) {
        if let Some(w) = self.watchers.get_mut(&id) {
            w.synced = false;
            w.next = w.next.min(next_revision);
        }
    }

    /// The store was replaced by a snapshot: every watcher is fed from the
    /// new store's history from its next revision (or cancelled if that is
    /// compacted there).
    pub fn fall_behind_all(&mut self) {
        for w in self.watchers.values_mut() {
            w.synced = false;
        }
    }

    /// Feeds unsynced watchers whose stream is `ready` (has taken what it
    /// was given) their next chunk of history, in turn, within the call's
    /// limits ([`WatchLimits`]); one that reaches the present becomes
    /// synced. An unsynced watcher that has not been ready for
    /// `stall_timeout`, or whose next revision is compacted, is cancelled
    /// (see [`WatchHub::poll_cancelled`]).
    pub fn catch_up(
        &mut self,
        store: &Store,
        now: Instant,
        mut ready: impl FnMut(WatchId) -> bool,
    ) -> CatchUp {
        let limits = self.limits;
        let mut done = CatchUp::default();
        let mut bytes_left = limits.bytes_per_call;
        let present = store.revision() + 1;
        // Unsynced watchers, starting after the one served last.
        let behind: Vec<WatchId> = {
            use std::ops::Bound::{Excluded, Unbounded};
            let unsynced = |(id, w): (&WatchId, &Watcher)| (!w.synced).then_some(*id);
            let after = self.watchers.range((Excluded(self.turn), Unbounded));
            let before = self.watchers.range(..=self.turn);
            after.chain(before).filter_map(unsynced).collect()
        };
        for id in behind {
            let Some(w) = self.watchers.get_mut(&id) else {
                continue;
            };
            if !ready(id) {
                // Its stream still holds what it was given: nothing more
                // for it (no work, no memory) until it reads.
                let since = *w.stalled_since.get_or_insert(now);
                let stalled = now.saturating_duration_since(since);
                if stalled >= limits.stall_timeout {
                    self.cancelled.push(Cancelled {
                        id,
                        reason: KvError::WatchTooSlow {
                            stalled_ms: stalled.as_millis() as u64,
                        },
                    });
                }
                continue;
            }
            w.stalled_since = None;
            if done.scanned >= limits.scan_per_call || bytes_left == 0 {
                // This call's work is done; it is first in line next time.
                continue;
            }
            self.turn = id;
            let chunk_limits = HistoryLimits {
                max_scanned: limits.scan_per_call - done.scanned,
                max_events: limits.events_per_delivery,
                max_bytes: limits.bytes_per_delivery.min(bytes_left),
            };
            let prev_kv = w.request.prev_kv;
            let history = match store.history(&w.request.range, w.next, chunk_limits, prev_kv) {
                Ok(history) => history,
                Err(reason) => {
                    self.cancelled.push(Cancelled { id, reason });
                    continue;
                }
            };
            done.scanned += history.scanned;
            let mine: Vec<Event> = history
                .events
                .into_iter()
                .filter(|e| wanted(&w.request, e))
                .collect();
            bytes_left = bytes_left.saturating_sub(mine.iter().map(event_bytes).sum());
            if history.complete {
                w.next = present;
                w.synced = true;
            } else {
                w.next = history.next;
            }
            if !mine.is_empty() {
                done.deliveries.push(Delivery { id, events: mine });
            }
        }
        for c in &self.cancelled {
            self.watchers.remove(&c.id);
        }
        done
    }

    /// Watchers the hub ended, oldest first.
    pub fn poll_cancelled(&mut self) -> Option<Cancelled> {
        if self.cancelled.is_empty() {
            None
        } else {
            Some(self.cancelled.remove(0))
        }
    }
}

fn wanted(request: &WatchRequest, event: &Event) -> bool {
    request.range.contains(&event.kv.key)
        && match event.kind {
            EventKind::Put => !request.no_put,
            EventKind::Delete => !request.no_delete,
        }
}

/// What an event adds to a delivery, at most.
fn event_bytes(event: &Event) -> usize {
    let kv = |kv: &crate::kv::KeyValue| crate::kv::encoded_kv_bytes(kv.key.len(), kv.value.len());
    kv(&event.kv) + event.prev_kv.as_ref().map_or(0, kv)
}

fn shaped(request: &WatchRequest, event: &Event) -> Event {
    let mut event = event.clone();
    if !request.prev_kv {
        event.prev_kv = None;
    }
    event
}

#[cfg(test)]
mod tests;
