//! The leader's lease clock: when each lease expires, and when to propose
//! its revocation.
//!
//! Only the leader keeps time for leases. It learns them from the store
//! (granted and revoked through the log), refreshes a lease on each
//! keep-alive, and when a deadline passes it proposes
//! [`Command::LeaseRevoke`](super::mvcc::Command::LeaseRevoke): expiry is
//! then a committed decision that every replica applies at the same
//! revision, never a replica's own guess.
//!
//! A new leader cannot know how much time its predecessor had left on each
//! lease, so it starts every lease afresh with its full TTL (as etcd does):
//! a lease may outlive its TTL by up to one leader change, never end early.
//! Keep-alives sent to a node that is not the leader are refused by the
//! driver, so a client always renews with the clock that counts.
//!
//! # Example
//!
//! ```
//! use std::time::{Duration, Instant};
//! use clustron_dkv::core::leases::LeaseClock;
//! use clustron_dkv::kv::LeaseId;
//!
//! let start = Instant::now();
//! let mut clock = LeaseClock::default();
//! clock.become_leader(start, [(LeaseId(1), 1000)]);
//! assert_eq!(clock.poll_timeout(), Some(start + Duration::from_nanos(1_000_000_001)));
//! assert!(clock.keep_alive(start + Duration::from_millis(900), LeaseId(1)).is_some());
//! assert!(clock.poll_expired(start + Duration::from_secs(1)).is_empty());
//! assert_eq!(clock.poll_expired(start + Duration::from_millis(1901)), [LeaseId(1)]);
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::kv::LeaseId;

#[derive(Debug, Clone)]
struct Tracked {
    ttl: Duration,
    deadline: Instant,
}

/// Lease deadlines on the leader. Empty on followers.
///
/// Generic over the id so that client sessions, which expire the same way
/// (see [`super::session`]), use the same clock.
#[derive(Debug)]
pub struct LeaseClock<Id = LeaseId> {
    leases: BTreeMap<Id, Tracked>,
    /// (deadline, lease), to find the next expiry quickly.
    by_deadline: BTreeSet<(Instant, Id)>,
    /// Expired leases whose revocation was proposed and not yet applied.
    revoking: BTreeSet<Id>,
    leader: bool,
}

impl<Id> Default for LeaseClock<Id> {
    fn default() -> Self {
        Self {
            leases: BTreeMap::new(),
            by_deadline: BTreeSet::new(),
            revoking: BTreeSet::new(),
            leader: false,
        }
    }
}

impl<Id: Copy + Ord> LeaseClock<Id> {
    /// This node became the leader: every lease in the store starts afresh
    /// with its full TTL from `now`.
    pub fn become_leader(&mut self, now: Instant, leases: impl IntoIterator<Item = (Id, u64)>) {
        self.clear();
        self.leader = true;
        for (id, ttl_ms) in leases {
            self.track(now, id, Duration::from_millis(ttl_ms));
        }
    }

    /// This node is no longer the leader: it keeps no time.
    pub fn step_down(&mut self) {
        self.clear();
        self.leader = false;
    }

    /// A grant was applied (on the leader: its clock starts now).
    pub fn granted(&mut self, now: Instant, id: Id, ttl_ms: u64) {
        if self.leader {
            self.track(now, id, Duration::from_millis(ttl_ms));
        }
    }

    /// A revoke was applied (by a client or by expiry).
    pub fn revoked(&mut self, id: Id) {
        if let Some(t) = self.leases.remove(&id) {
            self.by_deadline.remove(&(t.deadline, id));
        }
        self.revoking.remove(&id);
    }

    /// A keep-alive: the lease's deadline moves to `now + ttl`. Returns the
    /// TTL, or `None` if the lease is unknown, already expiring, or this
    /// node is not the leader.
    pub fn keep_alive(&mut self, now: Instant, id: Id) -> Option<Duration> {
        if self.revoking.contains(&id) {
            return None;
        }
        let t = self.leases.get_mut(&id)?;
        self.by_deadline.remove(&(t.deadline, id));
        t.deadline = now + t.ttl;
        self.by_deadline.insert((t.deadline, id));
        Some(t.ttl)
    }

    /// Time left on a lease, as the leader counts it.
    pub fn time_to_live(&self, now: Instant, id: Id) -> Option<Duration> {
        self.leases
            .get(&id)
            .map(|t| t.deadline.saturating_duration_since(now))
    }

    /// Leases whose deadline has passed and whose revocation the caller must
    /// now propose; each is returned once (until [`LeaseClock::retry`]).
    pub fn poll_expired(&mut self, now: Instant) -> Vec<Id> {
        let mut expired = Vec::new();
        while let Some(&(deadline, id)) = self.by_deadline.first() {
            // A lease expires strictly after its deadline.
            if deadline >= now {
                break;
            }
            self.by_deadline.remove(&(deadline, id));
            self.revoking.insert(id);
            expired.push(id);
        }
        expired
    }

    /// A proposed revocation was lost (not committed): propose it again at
    /// the next [`LeaseClock::poll_expired`].
    pub fn retry(&mut self, now: Instant, id: Id) {
        if self.revoking.remove(&id) && self.leases.contains_key(&id) {
            // Due at once.
            let past = now.checked_sub(Duration::from_nanos(1)).unwrap_or(now);
            if let Some(t) = self.leases.get_mut(&id) {
                t.deadline = past;
            }
            self.by_deadline.insert((past, id));
        }
    }

    /// When the next lease expires: the first instant at which
    /// [`LeaseClock::poll_expired`] reports it. A lease expires strictly
    /// after its deadline, so that is one nanosecond past it; answering the
    /// deadline itself would have a driver woken exactly then find nothing
    /// expired and ask for the same instant again.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.by_deadline
            .first()
            .map(|(deadline, _)| *deadline + Duration::from_nanos(1))
    }

    fn track(&mut self, now: Instant, id: Id, ttl: Duration) {
        if let Some(old) = self.leases.insert(
            id,
            Tracked {
                ttl,
                deadline: now + ttl,
            },
        ) {
            self.by_deadline.remove(&(old.deadline, id));
        }
        self.by_deadline.insert((now + ttl, id));
    }

    fn clear(&mut self) {
        self.leases.clear();
        self.by_deadline.clear();
        self.revoking.clear();
    }
}

#[cfg(test)]
mod tests;
