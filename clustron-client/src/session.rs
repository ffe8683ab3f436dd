//! The client's session: what lets it retry any write without applying it
//! twice.
//!
//! A write whose answer never came (the leader froze, died, or its
//! connection timed out) may or may not have been applied. The client sends
//! every write in a session registered through the log, numbered, and sends
//! the same number again on every retry; the store answers a repeat with the
//! first result (see `clustron_dkv::core::session`). The session is opened
//! on the first write and kept alive in the background while the client
//! lives; a client silent for its TTL (dead, or cut off) loses it.

use std::collections::BTreeSet;
use std::sync::{Mutex, Weak};
use std::time::Duration;

use clustron_dkv::kv::SessionId;
use tokio::task::JoinHandle;

/// How long a session lives without a write or keep-alive.
pub(crate) const SESSION_TTL: Duration = Duration::from_secs(60);

/// One open session.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) id: SessionId,
    seqs: Mutex<Seqs>,
    keep_alive: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Debug)]
struct Seqs {
    next: u64,
    /// Numbers sent and not yet answered.
    in_flight: BTreeSet<u64>,
}

impl Session {
    pub(crate) fn new(id: SessionId) -> Self {
        Self {
            id,
            seqs: Mutex::new(Seqs {
                next: 1,
                in_flight: BTreeSet::new(),
            }),
            keep_alive: Mutex::new(None),
        }
    }

    /// Numbers a new write.
    pub(crate) fn begin(&self) -> u64 {
        let mut seqs = self.seqs.lock().unwrap_or_else(|e| e.into_inner());
        let seq = seqs.next;
        seqs.next += 1;
        seqs.in_flight.insert(seq);
        seq
    }

    /// Every number below this has been answered: the lowest in flight.
    pub(crate) fn acked(&self) -> u64 {
        let seqs = self.seqs.lock().unwrap_or_else(|e| e.into_inner());
        seqs.in_flight.first().copied().unwrap_or(seqs.next)
    }

    /// The write numbered `seq` is answered (or given up).
    pub(crate) fn end(&self, seq: u64) {
        let mut seqs = self.seqs.lock().unwrap_or_else(|e| e.into_inner());
        seqs.in_flight.remove(&seq);
    }

    /// Keeps the session alive with `renew` every third of its TTL until
    /// the session is dropped or a renewal says it is gone.
    pub(crate) fn keep_alive<F, Fut>(self: &std::sync::Arc<Self>, ttl: Duration, renew: F)
    where
        F: Fn(SessionId) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = bool> + Send,
    {
        let weak: Weak<Session> = std::sync::Arc::downgrade(self);
        let id = self.id;
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(ttl / 3).await;
                if weak.strong_count() == 0 || !renew(id).await {
                    return;
                }
            }
        });
        *self.keep_alive.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(task) = self
            .keep_alive
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acked_is_the_lowest_number_still_waiting_for_its_answer() {
        let s = Session::new(SessionId(1));
        assert_eq!(s.acked(), 1);
        let (a, b, c) = (s.begin(), s.begin(), s.begin());
        assert_eq!((a, b, c), (1, 2, 3));
        assert_eq!(s.acked(), 1);
        s.end(2);
        assert_eq!(s.acked(), 1);
        s.end(1);
        assert_eq!(s.acked(), 3);
        s.end(3);
        assert_eq!(s.acked(), 4);
    }
}
