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
