//! What a voter must keep across restarts, the [`Storage`] trait that keeps
//! it, and [`MemStorage`], an in-memory implementation that can lose what it
//! had not synced.

use std::time::Duration;

use clustron_membership::NodeName;
use serde::{Deserialize, Serialize};

use crate::voters::{Epoch, VoterSet};

/// A voter's promise: "I grant epoch `epoch` to `holder` for `duration` on my
/// own clock from when I answered". Persisted before the grant is sent.
///
/// The expiry is stored as a duration, not an instant: a monotonic clock
/// restarts with the process. A restarted voter therefore treats a recovered
/// promise as valid for a full `duration` from its restart, a safe
/// over-approximation (the real expiry can only be earlier).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Promise {
    /// The epoch granted.
    pub epoch: Epoch,
    /// Who it was granted to.
    pub holder: NodeName,
    /// How long it lasts from the answer (`L`).
    pub duration: Duration,
}

/// The voter-set part of the durable state.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VoterRecord {
    /// The newest set this node knows to be decided.
    pub committed: VoterSet,
    /// A proposed next set this node accepted (and acknowledged) but has not
    /// yet seen decided.
    pub pending: Option<VoterSet>,
    /// The epoch of the leader that proposed `pending` (Paxos' ballot): of
    /// two different proposals for one version, a new leader finishes the
    /// one proposed at the higher epoch, the only one that may have been
    /// decided. Without it, a leader finished its own older proposal over
    /// a newer one a majority had accepted, and two sets were decided at
    /// one version (replication_sim seed 10514861941859962080). Last, so
    /// a record written before it still reads (as epoch 0).
    pub pending_epoch: Epoch,
}

/// [`VoterRecord`] as written before `pending_epoch` existed.
#[derive(Deserialize)]
struct LegacyVoterRecord {
    committed: VoterSet,
    pending: Option<VoterSet>,
}

impl VoterRecord {
    /// Reads a stored record, in the current layout or the one before
    /// `pending_epoch` (which reads as epoch 0).
    pub fn decode(bytes: &[u8]) -> Result<Self, postcard::Error> {
        postcard::from_bytes(bytes).or_else(|e| {
            let legacy: LegacyVoterRecord = postcard::from_bytes(bytes).map_err(|_| e)?;
            Ok(Self {
                committed: legacy.committed,
                pending: legacy.pending,
                pending_epoch: Epoch::default(),
            })
        })
    }
}

/// Everything the core needs back after a restart.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Persisted {
    /// The newest promise, if any.
    pub promise: Option<Promise>,
    /// The voter sets, if any change was ever recorded; otherwise the
    /// configured initial set applies.
    pub voters: Option<VoterRecord>,
}

/// Durable storage for a voter's promise and voter sets.
///
/// Both `save_*` methods return only once the data is durable (fsync): the
/// core's correctness depends on it, because a grant is sent right after.
pub trait Storage {
    /// The storage's error.
    type Error: std::error::Error + Send + Sync + 'static;
    /// Durably replaces the stored promise.
    fn save_promise(&mut self, promise: &Promise) -> Result<(), Self::Error>;
    /// Durably replaces the stored voter record.
    fn save_voters(&mut self, voters: &VoterRecord) -> Result<(), Self::Error>;
    /// What was durably stored (empty for a new node).
    fn load(&self) -> Result<Persisted, Self::Error>;
}

/// In-memory storage with an explicit sync point, for tests and simulations:
/// writes land in an unsynced copy, [`MemStorage::sync`] makes them durable,
/// and [`MemStorage::after_crash`] keeps or drops what was not synced.
/// Through the [`Storage`] trait every save is synced at once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemStorage {
    synced: Persisted,
    unsynced: Option<Persisted>,
}

impl MemStorage {
    /// Empty storage.
    pub fn new() -> Self {
        Self::default()
    }

    /// Writes a promise without syncing it.
    pub fn write_promise(&mut self, promise: &Promise) {
        self.latest_mut().promise = Some(promise.clone());
    }

    /// Writes the voter record without syncing it.
    pub fn write_voters(&mut self, voters: &VoterRecord) {
        self.latest_mut().voters = Some(voters.clone());
    }

    /// Makes every write so far durable.
    pub fn sync(&mut self) {
        if let Some(latest) = self.unsynced.take() {
            self.synced = latest;
        }
    }

    /// Whether some write is not yet synced.
    pub fn has_unsynced(&self) -> bool {
        self.unsynced.is_some()
    }

    /// The state a restarted process finds: the synced state, plus the
    /// unsynced writes if `keep_unsynced` (the OS flushed them anyway).
    pub fn after_crash(&self, keep_unsynced: bool) -> MemStorage {
        let state = match (&self.unsynced, keep_unsynced) {
            (Some(latest), true) => latest.clone(),
            _ => self.synced.clone(),
        };
        MemStorage {
            synced: state,
            unsynced: None,
        }
    }

    /// The latest state, synced or not.
    pub fn latest(&self) -> &Persisted {
        self.unsynced.as_ref().unwrap_or(&self.synced)
    }

    fn latest_mut(&mut self) -> &mut Persisted {
        let synced = &self.synced;
        self.unsynced.get_or_insert_with(|| synced.clone())
    }
}

impl Storage for MemStorage {
    type Error = std::convert::Infallible;

    fn save_promise(&mut self, promise: &Promise) -> Result<(), Self::Error> {
        self.write_promise(promise);
        self.sync();
        Ok(())
    }

    fn save_voters(&mut self, voters: &VoterRecord) -> Result<(), Self::Error> {
        self.write_voters(voters);
        self.sync();
        Ok(())
    }

    fn load(&self) -> Result<Persisted, Self::Error> {
        Ok(self.synced.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record written before `pending_epoch` existed still reads, its
    /// pending set at epoch 0; the current layout round-trips; garbage is
    /// an error.
    #[test]
    fn a_voter_record_of_the_layout_before_pending_epoch_still_reads() {
        #[derive(Serialize)]
        struct Before {
            committed: VoterSet,
            pending: Option<VoterSet>,
        }
        let committed = VoterSet::new([crate::Voter {
            name: NodeName::new("a").unwrap(),
            addr: "10.0.0.1:7000".parse().unwrap(),
        }]);
        let pending = committed.without(&NodeName::new("a").unwrap());
        let old = postcard::to_allocvec(&Before {
            committed: committed.clone(),
            pending: Some(pending.clone()),
        })
        .unwrap();
        let read = VoterRecord::decode(&old).unwrap();
        assert_eq!(read.committed, committed);
        assert_eq!(read.pending, Some(pending.clone()));
        assert_eq!(read.pending_epoch, Epoch(0));
        let now = VoterRecord {
            pending_epoch: Epoch(9),
            ..read
        };
        let bytes = postcard::to_allocvec(&now).unwrap();
        assert_eq!(VoterRecord::decode(&bytes).unwrap(), now);
        assert!(VoterRecord::decode(&[0xff; 3]).is_err());
    }

    fn promise(epoch: u64) -> Promise {
        Promise {
            epoch: Epoch(epoch),
            holder: NodeName::new("a").unwrap(),
            duration: Duration::from_millis(600),
        }
    }

    #[test]
    fn a_crash_loses_only_what_was_not_synced() {
        let mut storage = MemStorage::new();
        storage.write_promise(&promise(1));
        storage.sync();
        storage.write_promise(&promise(2));
        assert!(storage.has_unsynced());
        let lost = storage.after_crash(false);
        assert_eq!(lost.load().unwrap().promise, Some(promise(1)));
        let kept = storage.after_crash(true);
        assert_eq!(kept.load().unwrap().promise, Some(promise(2)));
    }
}
