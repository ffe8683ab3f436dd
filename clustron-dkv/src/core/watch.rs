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

use serde::{Deserialize, Serialize};

use super::mvcc::Store;
use crate::kv::{Event, EventKind, KvError};

/// A watcher's id on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
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
    /// Why (today: its next revision was compacted).
    pub reason: KvError,
}

#[derive(Debug)]
struct Watcher {
    request: WatchRequest,
    /// First revision not yet given to it.
    next: u64,
    synced: bool,
}

/// All watchers of a node. Fed the events of every applied command.
#[derive(Debug, Default)]
pub struct WatchHub {
    watchers: BTreeMap<WatchId, Watcher>,
    next_id: u64,
    cancelled: Vec<Cancelled>,
}

impl WatchHub {
    /// Most events one [`WatchHub::catch_up`] gives a watcher (whole
    /// revisions are never split, so a delivery may exceed it by one
    /// transaction).
    pub const CATCH_UP_CHUNK: usize = 1000;

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

    /// Feeds every unsynced watcher its next chunk of history; one that
    /// reaches the present becomes synced. A watcher whose next revision is
    /// compacted is cancelled (see [`WatchHub::poll_cancelled`]).
    pub fn catch_up(&mut self, store: &Store) -> Vec<Delivery> {
        let mut deliveries = Vec::new();
        let present = store.revision() + 1;
        let mut compacted = Vec::new();
        for (id, w) in &mut self.watchers {
            if w.synced {
                continue;
            }
            let history = match store.events_since(&w.request.range, w.next) {
                Ok(history) => history,
                Err(reason) => {
                    compacted.push(Cancelled { id: *id, reason });
                    continue;
                }
            };
            // Whole revisions, up to about one chunk.
            let mut end = history.len();
            if end > Self::CATCH_UP_CHUNK {
                let cut = history[Self::CATCH_UP_CHUNK - 1].kv.mod_revision;
                end = history
                    .iter()
                    .position(|e| e.kv.mod_revision > cut)
                    .unwrap_or(history.len());
            }
            let complete = end == history.len();
            let mine: Vec<Event> = history[..end]
                .iter()
                .filter(|e| wanted(&w.request, e))
                .map(|e| shaped(&w.request, e))
                .collect();
            if complete {
                w.next = present;
                w.synced = true;
            } else {
                w.next = history[end].kv.mod_revision;
            }
            if !mine.is_empty() {
                deliveries.push(Delivery {
                    id: *id,
                    events: mine,
                });
            }
        }
        for c in &compacted {
            self.watchers.remove(&c.id);
        }
        self.cancelled.extend(compacted);
        deliveries
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

fn shaped(request: &WatchRequest, event: &Event) -> Event {
    let mut event = event.clone();
    if !request.prev_kv {
        event.prev_kv = None;
    }
    event
}

#[cfg(test)]
mod tests;
