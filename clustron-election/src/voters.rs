//! Epochs and the configured voter set.

use std::net::SocketAddr;

use clustron_membership::NodeName;
use serde::{Deserialize, Serialize};

/// A leadership term: epochs only grow, each has at most one leader, and
/// the epoch is the fencing token (receivers reject anything older than the
/// newest epoch they have seen). Defined in `clustron-membership` so that the
/// event bus can report leaders without depending on the election; this is
/// the same type.
pub use clustron_membership::Epoch;

/// One member of the voter set.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Voter {
    /// Its name (from its certificate).
    pub name: NodeName,
    /// Where to send it requests, if known: [`Voter::UNKNOWN_ADDR`] when
    /// not. The election prefers the address the membership view gives, so
    /// this one only matters for a voter the view has never shown.
    pub addr: SocketAddr,
}

impl Voter {
    /// The address of a voter whose address is not known yet (`0.0.0.0:0`):
    /// nothing is sent to it until membership shows where it is.
    pub const UNKNOWN_ADDR: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
        std::net::Ipv4Addr::UNSPECIFIED,
        0,
    ));

    /// A voter known by name only (see [`Voter::UNKNOWN_ADDR`]).
    pub fn unaddressed(name: NodeName) -> Self {
        Self {
            name,
            addr: Self::UNKNOWN_ADDR,
        }
    }

    /// Whether its address is known.
    pub fn has_addr(&self) -> bool {
        !self.addr.ip().is_unspecified() && self.addr.port() != 0
    }
}

/// The configured voter set, versioned: a change raises the version by one
/// and adds or removes exactly one voter.
///
/// Decoding (from a peer or the disk) refuses a set that is not sorted by
/// name or names a voter twice: a duplicate would inflate
/// [`VoterSet::majority`]. The default is the empty set, in which nobody
/// can lead.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "VoterSetWire")]
pub struct VoterSet {
    /// Raised by one per change; the initial set has version 0.
    pub version: u64,
    /// The voters, sorted by name, no duplicates.
    voters: Vec<Voter>,
}

/// A [`VoterSet`] as encoded, before its invariant is checked.
#[derive(Deserialize)]
struct VoterSetWire {
    version: u64,
    voters: Vec<Voter>,
}

impl TryFrom<VoterSetWire> for VoterSet {
    type Error = String;

    fn try_from(wire: VoterSetWire) -> Result<Self, String> {
        if let Some(pair) = wire.voters.windows(2).find(|p| p[0].name >= p[1].name) {
            return Err(format!(
                "voter set not sorted by name without duplicates ({} before {})",
                pair[0].name, pair[1].name
            ));
        }
        // Every change takes the next version: the last one has none after
        // it, so a set claiming it can only be forged.
        if wire.version == u64::MAX {
            return Err("voter set with the last possible version".into());
        }
        Ok(VoterSet {
            version: wire.version,
            voters: wire.voters,
        })
    }
}

impl VoterSet {
    /// The initial set (version 0); duplicates by name are dropped.
    pub fn new(voters: impl IntoIterator<Item = Voter>) -> Self {
        let mut voters: Vec<Voter> = voters.into_iter().collect();
        voters.sort_by(|a, b| a.name.cmp(&b.name));
        voters.dedup_by(|a, b| a.name == b.name);
        Self { version: 0, voters }
    }

    /// The voters, sorted by name.
    pub fn voters(&self) -> &[Voter] {
        &self.voters
    }

    /// Whether `name` is a voter.
    pub fn contains(&self, name: &NodeName) -> bool {
        self.voters.iter().any(|v| v.name == *name)
    }

    /// Number of voters.
    pub fn len(&self) -> usize {
        self.voters.len()
    }

    /// Whether the set is empty (then nobody can lead).
    pub fn is_empty(&self) -> bool {
        self.voters.is_empty()
    }

    /// Grants needed for a decision: a strict majority.
    pub fn majority(&self) -> usize {
        crate::core::lease::majority(self.voters.len())
    }

    /// This set with `voter` added, one version up.
    pub fn with(&self, voter: Voter) -> Self {
        let mut next = Self::new(self.voters.iter().cloned().chain([voter]));
        // Invariant: below u64::MAX (one per change, and refused on decode).
        next.version = self.version.saturating_add(1);
        next
    }

    /// This set without `name`, one version up.
    pub fn without(&self, name: &NodeName) -> Self {
        let mut next = Self::new(self.voters.iter().filter(|v| v.name != *name).cloned());
        // Invariant: below u64::MAX (one per change, and refused on decode).
        next.version = self.version.saturating_add(1);
        next
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

    use super::*;

    fn voter(name: &str) -> Voter {
        Voter {
            name: NodeName::new(name).unwrap(),
            addr: "127.0.0.1:1".parse().unwrap(),
        }
    }

    #[test]
    fn a_voter_set_round_trips() {
        let set = VoterSet::new([voter("b"), voter("a"), voter("c")]);
        let bytes = postcard::to_allocvec(&set).unwrap();
        assert_eq!(postcard::from_bytes::<VoterSet>(&bytes).unwrap(), set);
    }

    /// Found by `fuzz_decoders`: a persisted (or received) voter set with a
    /// duplicate or out of order voter decoded as it was, breaking the
    /// set's invariant and its majority.
    #[test]
    fn a_decoded_voter_set_with_a_duplicate_or_out_of_order_voter_is_refused() {
        for names in [["a", "a"], ["b", "a"]] {
            let mut set = VoterSet::new([]);
            set.voters = names.iter().map(|n| voter(n)).collect();
            let bytes = postcard::to_allocvec(&set).unwrap();
            assert!(
                postcard::from_bytes::<VoterSet>(&bytes).is_err(),
                "{names:?}"
            );
        }
    }

    /// A forged set at the last version would make the next change wrap
    /// back to an old version number.
    #[test]
    fn a_decoded_voter_set_at_the_last_version_is_refused() {
        let mut set = VoterSet::new([voter("a")]);
        set.version = u64::MAX;
        let bytes = postcard::to_allocvec(&set).unwrap();
        assert!(postcard::from_bytes::<VoterSet>(&bytes).is_err());
        set.version = u64::MAX - 1;
        let bytes = postcard::to_allocvec(&set).unwrap();
        let decoded = postcard::from_bytes::<VoterSet>(&bytes).unwrap();
        assert_eq!(decoded.with(voter("b")).version, u64::MAX);
    }
}
