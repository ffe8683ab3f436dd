//! Client sessions: what makes a retried write apply exactly once.
//!
//! A timeout is not proof that a write was not applied: the leader may have
//! replicated it just before it froze, and the next leader commits it. A
//! client that sends the write again would apply it twice. So a client
//! registers a session through the log ([`Command::OpenSession`]) and numbers
//! its writes; each write travels as [`Command::InSession`] with the
//! session, its sequence number and how far the client has been answered.
//! The state machine remembers each session's results: a repeated
//! `(session, seq)` is answered with the first result and never applied
//! again (Raft dissertation, section 6.3).
//!
//! Everything here is replicated state, changed only by applying committed
//! commands, so every replica decides a repeat the same way:
//!
//! - a session holds the results of the writes numbered from its `floor`
//!   (the lowest number the client has not acknowledged) on; a write below
//!   the floor is a stale duplicate of something already answered and is
//!   refused ([`KvError::AlreadyAnswered`]);
//! - memory is bounded: at most [`MAX_SESSIONS`] sessions, each with at
//!   most [`SESSION_WINDOW`] unacknowledged writes (a write beyond the window
//!   is refused unapplied, [`KvError::SessionBusy`]);
//! - a session expires like a lease: the leader's clock, then a committed
//!   [`Command::CloseSession`]. A new leader restarts every session's TTL.
//!
//! [`Command::OpenSession`]: super::mvcc::Command::OpenSession
//! [`Command::InSession`]: super::mvcc::Command::InSession
//! [`Command::CloseSession`]: super::mvcc::Command::CloseSession
//!
//! # Example
//!
//! ```
//! use clustron_dkv::core::session::Sessions;
//! use clustron_dkv::kv::SessionId;
//!
//! let mut sessions = Sessions::default();
//! sessions.open(SessionId(1), 60_000).unwrap();
//! // The first time, seq 1 is new: the caller applies it and records it.
//! assert_eq!(sessions.begin(SessionId(1), 1, 1), Ok(None));
//! sessions.record(SessionId(1), 1, 7, Ok(clustron_dkv::core::mvcc::Outcome::Compacted));
//! // A retry gets the recorded result instead.
//! assert!(matches!(sessions.begin(SessionId(1), 1, 1), Ok(Some((7, _)))));
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use imbl::OrdMap;

use serde::{Deserialize, Serialize};

use super::mvcc::Outcome;
use crate::kv::{KvError, SessionId};

/// Most sessions open at once (a new one beyond is refused).
pub const MAX_SESSIONS: usize = 65_536;

/// Most writes of one session that may be unacknowledged at once. A client
/// with more in flight waits (its writes are refused unapplied).
pub const SESSION_WINDOW: u64 = 4096;

/// A recorded result: the revision the write applied at and its outcome.
pub type Recorded = (u64, Result<Outcome, KvError>);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Session {
    ttl_ms: u64,
    /// Every write numbered below this was answered to the client.
    floor: u64,
    /// Results of the writes numbered `floor` and above that applied.
    results: BTreeMap<u64, Recorded>,
}

/// The sessions of the state machine. A persistent map of shared
/// sessions, as the store's keys are: cloning it for a snapshot is O(1),
/// and a write then copies only its own session's results, once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Sessions {
    #[serde(deserialize_with = "super::persistent::ordmap")]
    sessions: OrdMap<SessionId, Arc<Session>>,
}

impl Sessions {
    /// Registers a session. Refused when the id is taken or too many are
    /// open; nothing changes then.
    pub fn open(&mut self, id: SessionId, ttl_ms: u64) -> Result<(), KvError> {
        if self.sessions.len() >= MAX_SESSIONS {
            return Err(KvError::TooManySessions { max: MAX_SESSIONS });
        }
        if self.sessions.contains_key(&id) {
            // Ids are chosen by the leader and unique: only a repeated
            // proposal of one open can meet its own id again.
            return Ok(());
        }
        self.sessions.insert(
            id,
            Arc::new(Session {
                ttl_ms,
                floor: 0,
                results: BTreeMap::new(),
            }),
        );
        Ok(())
    }

    /// Ends a session and forgets its results. Whether it existed.
    pub fn close(&mut self, id: SessionId) -> bool {
        self.sessions.remove(&id).is_some()
    }

    /// Whether the session exists.
    pub fn contains(&self, id: SessionId) -> bool {
        self.sessions.contains_key(&id)
    }

    /// The open sessions with their TTLs in milliseconds.
    pub fn ttls(&self) -> impl Iterator<Item = (SessionId, u64)> + '_ {
        self.sessions.iter().map(|(id, s)| (*id, s.ttl_ms))
    }

    /// How many sessions are open.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Whether none is open.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Write `seq` of `id` is about to apply, the client having been
    /// answered below `acked`. `Ok(None)`: it is new, apply it and
    /// [`Sessions::record`] the result; `Ok(Some(_))`: it applied before,
    /// answer with that; `Err`: refuse it unapplied.
    pub fn begin(
        &mut self,
        id: SessionId,
        seq: u64,
        acked: u64,
    ) -> Result<Option<Recorded>, KvError> {
        let shared = self
            .sessions
            .get_mut(&id)
            .ok_or(KvError::SessionExpired(id))?;
        if acked > shared.floor {
            let session = Arc::make_mut(shared);
            session.floor = acked;
            // Forget the results below the mark from the front: usually
            // one per write. (`split_off` moved every result kept, the
            // whole window in flight, on every write.)
            while let Some(oldest) = session.results.first_entry() {
                if *oldest.key() >= acked {
                    break;
                }
                drop(oldest.remove());
            }
        }
        let session: &Session = shared;
        if seq < session.floor {
            return Err(KvError::AlreadyAnswered { seq });
        }
        if let Some(recorded) = session.results.get(&seq) {
            return Ok(Some(recorded.clone()));
        }
        let unacknowledged = seq - session.floor;
        if unacknowledged >= SESSION_WINDOW {
            return Err(KvError::SessionBusy {
                unacknowledged,
                max: SESSION_WINDOW,
            });
        }
        Ok(None)
    }

    /// The recorded result of write `seq` of `id`, if it applied and the
    /// client has not acknowledged it.
    pub fn recorded(&self, id: SessionId, seq: u64) -> Option<&Recorded> {
        self.sessions.get(&id)?.results.get(&seq)
    }

    /// Records the result of write `seq` of `id`, applied at `revision`.
    pub fn record(
        &mut self,
        id: SessionId,
        seq: u64,
        revision: u64,
        outcome: Result<Outcome, KvError>,
    ) {
        if let Some(session) = self.sessions.get_mut(&id) {
            Arc::make_mut(session)
                .results
                .insert(seq, (revision, outcome));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_write_gets_its_first_result_and_an_acknowledged_one_is_refused() {
        let mut s = Sessions::default();
        s.open(SessionId(9), 1000).unwrap();
        assert_eq!(s.begin(SessionId(9), 1, 1), Ok(None));
        s.record(SessionId(9), 1, 5, Ok(Outcome::Compacted));
        assert_eq!(
            s.begin(SessionId(9), 1, 1),
            Ok(Some((5, Ok(Outcome::Compacted))))
        );
        // The client acknowledges 1 with write 2: the result is forgotten and
        // a late copy of write 1 is refused, never applied again.
        assert_eq!(s.begin(SessionId(9), 2, 2), Ok(None));
        assert_eq!(
            s.begin(SessionId(9), 1, 1),
            Err(KvError::AlreadyAnswered { seq: 1 })
        );
    }

    #[test]
    fn an_unknown_session_is_expired_and_a_full_window_refuses() {
        let mut s = Sessions::default();
        assert_eq!(
            s.begin(SessionId(1), 1, 1),
            Err(KvError::SessionExpired(SessionId(1)))
        );
        s.open(SessionId(1), 1000).unwrap();
        assert_eq!(
            s.begin(SessionId(1), SESSION_WINDOW, 0),
            Err(KvError::SessionBusy {
                unacknowledged: SESSION_WINDOW,
                max: SESSION_WINDOW
            })
        );
        assert!(s.close(SessionId(1)));
        assert!(!s.contains(SessionId(1)));
    }

    #[test]
    fn sessions_are_bounded() {
        let mut s = Sessions::default();
        for i in 0..MAX_SESSIONS as u64 {
            s.open(SessionId(i), 1).unwrap();
        }
        assert_eq!(
            s.open(SessionId(u64::MAX), 1),
            Err(KvError::TooManySessions { max: MAX_SESSIONS })
        );
    }
}
