//! The partition table: which member owns and which members back up each of
//! the [`PARTITIONS`] partitions, sans-IO.
//!
//! ```text
//!   membership view (live names) ──► rebalance(live, epoch) ──► new table
//!                                                                 │
//!   old table, new table ──► moves(old, new) ──► copies to start   │
//!   nodes: accept a table only if is_newer_than(current) ◄────────┘
//! ```
//!
//! The elected leader computes the table from the live members and stores
//! it in the replicated store; every node follows the newest one it has
//! seen. [`PartitionTable::rebalance`] is a pure function of the old table
//! and the set of live members, so any leader computes the same table.
//!
//! # Rules
//!
//! - `replicas[p]` is `[owner, backup1, backup2]`: up to [`MAX_BACKUPS`]
//!   backups (fewer when there are fewer members), no member twice. A
//!   namespace with `backups = n` uses the first `n` backups only.
//! - **Takeover:** a partition whose owner left is owned by its first live
//!   backup, the member that (with synchronous backups) holds every
//!   acknowledged write. This is never traded for balance: it is what makes
//!   "at most `backups` failures lose nothing" true.
//! - **Balance:** every live member owns ⌊271/n⌋ or ⌈271/n⌉ partitions, and
//!   holds backup position 1 (and 2) of ⌊271/n⌋ or ⌈271/n⌉ partitions. The
//!   only exception: when several members fail at once, the takeovers alone
//!   may exceed a survivor's share. Takeover wins (the partitions keep
//!   serving from the member that has the data); calling `rebalance` again
//!   with the same members then balances, by moving partitions between live
//!   members, and the call after that changes nothing. So the leader
//!   recomputes once more after each new table is in place (a no-op in
//!   every other case). With one change at a time from a balanced table
//!   this cannot happen (see the tests).
//! - **Minimal movement:** a live owner keeps its partitions unless it owns
//!   more than its share; the members given the larger share (⌈271/n⌉) are
//!   those that already own the most, so a join moves exactly the
//!   newcomer's share of ownerships and nothing else. Backups that are still
//!   live stay where they are unless above their share.
//! - **Leaves:** the leaver's partitions go to their first backups. First
//!   backups are spread so that each owner's partitions would land evenly
//!   (`level_takeovers`), but exact levelling is impossible together with
//!   balanced backups (five members: the one owning 55 must be first backup
//!   of 54 partitions, so some owner's failure hands it one too many), so a
//!   survivor that the takeovers put above its share gives away some of its
//!   *own* partitions: a few ownership changes beyond the leaver's (at most
//!   4 over every single leave of clusters of 1 to 12 members, see the
//!   tests), each a live-to-live migration with no risk to the data.
//! - **Fencing:** a table carries the leader's election `epoch` and a
//!   `version` that grows by one at every change; a node never replaces its
//!   table with one that is not newer ([`PartitionTable::is_newer_than`]).
//!
//! # Example
//!
//! ```
//! use clustron_dkv::cache::table::{PartitionTable, Role};
//!
//! let names = |list: &[&str]| list.iter().map(|n| n.to_string()).collect::<Vec<_>>();
//! let three = PartitionTable::empty().rebalance(&names(&["a", "b", "c"]), 1);
//! assert_eq!(three.owned_count("a") + three.owned_count("b") + three.owned_count("c"), 271);
//!
//! // "a" fails: each of its partitions goes to its first backup.
//! let heir = three.backups(0, 1).first().cloned();
//! let two = three.rebalance(&names(&["b", "c"]), 2);
//! if three.owner(0) == Some("a") {
//!     assert_eq!(two.owner(0).map(str::to_owned), heir);
//! }
//! assert!(two.is_newer_than(&three));
//! // What must be copied: every replica lost with "a" is rebuilt from a live holder.
//! for m in PartitionTable::moves(&three, &two) {
//!     assert_eq!(m.role, Role::Backup(1));
//!     assert!(m.from.is_some());
//! }
//! ```

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::PARTITIONS;

/// Backups per partition the table places (namespaces use 0 to this many).
pub use super::namespace::MAX_BACKUPS;

/// Who holds each partition, decided by the leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionTable {
    /// Grows by one at every change of `replicas`.
    pub version: u64,
    /// The election epoch of the leader that decided this table.
    pub epoch: u64,
    /// `replicas[p]` = `[owner, backup1, backup2]` by node name; empty when
    /// there are no members. Always [`PARTITIONS`] lists once built by
    /// [`PartitionTable::empty`] or [`PartitionTable::rebalance`].
    pub replicas: Vec<Vec<String>>,
}

/// A member's role in one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Role {
    /// Serves the partition's operations and replicates them.
    Owner,
    /// Holds a copy: `Backup(1)` is the first backup (the one that takes
    /// over), `Backup(2)` the second.
    Backup(u8),
}

/// A copy of a partition that must be made for a new table: `to` gains a
/// role in `partition` without holding its data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Move {
    /// The partition.
    pub partition: u32,
    /// The role `to` has in the new table.
    pub role: Role,
    /// Who should send the data: the new owner if it already held the
    /// partition, else the first old holder that still holds a replica in
    /// the new table, else any old holder still in the table; `None` when
    /// no old holder is left (the data is lost: more members failed at
    /// once than there were backups).
    pub from: Option<String>,
    /// Who receives it.
    pub to: String,
}

impl PartitionTable {
    /// The table before any member: version 0, epoch 0, no replicas.
    pub fn empty() -> Self {
        Self {
            version: 0,
            epoch: 0,
            replicas: vec![Vec::new(); PARTITIONS as usize],
        }
    }

    /// The partition's owner, if any.
    pub fn owner(&self, partition: u32) -> Option<&str> {
        self.replicas(partition).first().map(String::as_str)
    }

    /// The partition's first `n` backups (fewer if it has fewer).
    pub fn backups(&self, partition: u32, n: usize) -> &[String] {
        let replicas = self.replicas(partition);
        let end = replicas.len().min(n.saturating_add(1));
        replicas.get(1..end).unwrap_or(&[])
    }

    /// The partition's owner then backups (empty for an unknown partition).
    pub fn replicas(&self, partition: u32) -> &[String] {
        self.replicas
            .get(partition as usize)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// `node`'s role in the partition, if it has one.
    pub fn role_of(&self, node: &str, partition: u32) -> Option<Role> {
        let index = self
            .replicas(partition)
            .iter()
            .position(|member| member == node)?;
        Some(if index == 0 {
            Role::Owner
        } else {
            Role::Backup(index as u8)
        })
    }

    /// How many partitions `node` owns.
    pub fn owned_count(&self, node: &str) -> usize {
        self.replicas
            .iter()
            .filter(|list| list.first().is_some_and(|owner| owner == node))
            .count()
    }

    /// Whether this table may replace `current`: its `(epoch, version)` is
    /// strictly greater. A node keeps its table otherwise (a stale leader's
    /// table, or a repeat).
    pub fn is_newer_than(&self, current: &PartitionTable) -> bool {
        (self.epoch, self.version) > (current.epoch, current.version)
    }

    /// The table for the members `live` (order and duplicates do not
    /// matter), decided by a leader of `epoch`. Returns `self` unchanged
    /// (same version and epoch) if nothing would change; otherwise
    /// `version + 1` with `epoch`. A second call with the same members
    /// changes nothing, except after takeovers beyond a member's share
    /// (several failures at once), where it balances and a third changes
    /// nothing. See the module doc for the rules.
    pub fn rebalance(&self, live: &[String], epoch: u64) -> PartitionTable {
        let mut members: Vec<&str> = live.iter().map(String::as_str).collect();
        members.sort_unstable();
        members.dedup();
        let replicas = if members.is_empty() {
            vec![Vec::new(); PARTITIONS as usize]
        } else {
            self.assign(&members)
        };
        if replicas == self.replicas {
            return self.clone();
        }
        PartitionTable {
            version: self.version + 1,
            epoch,
            replicas,
        }
    }

    /// The copies that must be made to go from `old` to `new` for a
    /// namespace with [`MAX_BACKUPS`] backups; see
    /// [`PartitionTable::moves_for`].
    pub fn moves(old: &PartitionTable, new: &PartitionTable) -> Vec<Move> {
        Self::moves_for(old, new, MAX_BACKUPS)
    }

    /// The copies that must be made to go from `old` to `new` for a
    /// namespace with `backups` backups (it holds data only on each
    /// partition's owner and first `backups` backups): every member that
    /// gains a role in a partition it did not hold. A member that already
    /// held the partition (a backup promoted to owner, an owner kept as
    /// backup) needs no copy and is not listed; compare
    /// [`PartitionTable::owner`] for the cut-overs. Ordered by partition,
    /// then role.
    pub fn moves_for(old: &PartitionTable, new: &PartitionTable, backups: usize) -> Vec<Move> {
        let still_member = |name: &String| new.replicas.iter().any(|list| list.contains(name));
        let mut moves = Vec::new();
        for partition in 0..PARTITIONS {
            let before = old.holders(partition, backups);
            let after = new.holders(partition, backups);
            let source = match after.first() {
                Some(owner) if before.contains(owner) => Some(owner.clone()),
                _ => before
                    .iter()
                    .find(|holder| after.contains(holder))
                    .or_else(|| before.iter().find(|holder| still_member(holder)))
                    .cloned(),
            };
            for (index, member) in after.iter().enumerate() {
                if before.contains(member) {
                    continue;
                }
                let role = if index == 0 {
                    Role::Owner
                } else {
                    Role::Backup(index as u8)
                };
                moves.push(Move {
                    partition,
                    role,
                    from: source.clone(),
                    to: member.clone(),
                });
            }
        }
        moves
    }

    /// The owner and first `backups` backups.
    fn holders(&self, partition: u32, backups: usize) -> &[String] {
        let replicas = self.replicas(partition);
        &replicas[..replicas.len().min(backups.saturating_add(1))]
    }

    /// The new replica lists for a non-empty sorted member list: position 0
    /// (owner) for every partition, then position 1, then 2.
    fn assign(&self, members: &[&str]) -> Vec<Vec<String>> {
        let partitions = PARTITIONS as usize;
        // The old holders still live, in their old order: the first is the
        // natural owner (the owner itself, or its first live backup).
        let survivors: Vec<Vec<&str>> = (0..partitions)
            .map(|p| {
                self.replicas(p as u32)
                    .iter()
                    .map(String::as_str)
                    .filter(|name| members.binary_search(name).is_ok())
                    .collect()
            })
            .collect();
        let old_owners: Vec<Option<&str>> = (0..partitions).map(|p| self.owner(p as u32)).collect();
        let positions = members.len().min(MAX_BACKUPS + 1);
        let mut slots: Vec<Vec<Option<&str>>> = vec![vec![None; positions]; partitions];
        let mut given_more: BTreeSet<&str> = BTreeSet::new();
        for position in 0..positions {
            let placement = Placement {
                position,
                survivors: &survivors,
                old_owners: &old_owners,
                members,
            };
            placement.run(&mut slots, &mut given_more);
        }
        slots
            .into_iter()
            .map(|slot| slot.into_iter().flatten().map(str::to_owned).collect())
            .collect()
    }
}

/// Fills one position (0 = owner, 1, 2 = backups) of every partition,
/// positions before it being fixed already.
struct Placement<'t, 'a> {
    position: usize,
    survivors: &'t [Vec<&'a str>],
    old_owners: &'t [Option<&'a str>],
    members: &'t [&'a str],
}

impl<'a> Placement<'_, 'a> {
    /// 1. Keep: each partition's first survivor not already placed before
    ///    this position (for the owner: the takeover rule).
    /// 2. Release: members above their share give up partitions, highest
    ///    first; at the owner position only partitions they owned before
    ///    (a takeover is never undone).
    /// 3. Fill: each hole goes to a member below its share that is not
    ///    already in the partition, preferring old holders (they have the
    ///    data). When only members already in the partition are short, two
    ///    partitions swap holders so the shares still come out even.
    fn run(&self, slots: &mut [Vec<Option<&'a str>>], given_more: &mut BTreeSet<&'a str>) {
        let position = self.position;
        for (p, slot) in slots.iter_mut().enumerate() {
            let placed = &slot[..position];
            slot[position] = self.survivors[p]
                .iter()
                .copied()
                .find(|m| !placed.contains(&Some(*m)));
        }
        let mut counts: BTreeMap<&str, usize> = self.members.iter().map(|m| (*m, 0)).collect();
        for slot in slots.iter() {
            if let Some(holder) = slot[position] {
                *counts.entry(holder).or_default() += 1;
            }
        }
        let quotas = quotas(&counts, self.members, given_more);
        given_more.extend(
            self.members
                .iter()
                .filter(|m| quotas[*m] > PARTITIONS as usize / self.members.len()),
        );

        for p in (0..slots.len()).rev() {
            let Some(holder) = slots[p][position] else {
                continue;
            };
            let releasable = position > 0 || self.old_owners[p] == Some(holder);
            if counts[holder] > quotas[holder] && releasable {
                slots[p][position] = None;
                decrement(&mut counts, holder);
            }
        }
        let mut spread = Spread::new(slots, position);
        for p in 0..slots.len() {
            if slots[p][position].is_some() {
                continue;
            }
            let placed: Vec<&str> = slots[p][..position].iter().flatten().copied().collect();
            let short = |m: &&str| counts[m] < quotas[m];
            let taker = self.survivors[p]
                .iter()
                .copied()
                .filter(|m| !placed.contains(m))
                .find(short)
                .or_else(|| self.neediest(&counts, &quotas, &spread, p, &placed));
            let taker = match taker {
                Some(taker) => taker,
                None => match self.swap(slots, p, &placed, &counts, &quotas) {
                    Some((q, giver, other)) => {
                        if let Some(owner) = slots[q][0] {
                            spread.moved(owner, other, giver);
                        }
                        slots[q][position] = Some(giver);
                        *counts.entry(giver).or_default() += 1;
                        decrement(&mut counts, other);
                        other
                    }
                    // No partition to swap with (too few members to keep
                    // this position balanced): the least loaded member
                    // that is not in the partition yet.
                    None => match self
                        .members
                        .iter()
                        .copied()
                        .filter(|m| !placed.contains(m))
                        .min_by_key(|m| (counts[m], *m))
                    {
                        Some(member) => member,
                        None => continue,
                    },
                },
            };
            slots[p][position] = Some(taker);
            *counts.entry(taker).or_default() += 1;
            if let Some(owner) = slots[p][0] {
                *spread.entry((owner, taker)).or_default() += 1;
            }
        }
        if position == 1 {
            self.level_takeovers(slots);
        }
    }

    /// Spreads each owner's first backups so that if that owner failed,
    /// the survivors' ownership counts would stay as level as possible
    /// (within one, a single failure moves only the failed member's
    /// partitions; exact levelling is not always possible, see the module
    /// doc). Swaps position-1 holders between two partitions of different
    /// owners, which keeps every member's position-1 count; each swap
    /// lowers the sum over owners and members of the squared would-be
    /// ownership counts, so it stops.
    fn level_takeovers(&self, slots: &mut [Vec<Option<&'a str>>]) {
        let would_own = |spread: &Spread<'a>, owner: &str, member: &str| {
            spread.owned(member) + spread.paired(owner, member)
        };
        for _ in 0..slots.len() * self.members.len() {
            let spread = Spread::new(slots, 1);
            let mut swapped = false;
            for owner in self.members {
                let others = self.members.iter().copied().filter(|m| m != owner);
                let (Some(most), Some(least)) = (
                    others
                        .clone()
                        .max_by_key(|m| (would_own(&spread, owner, m), std::cmp::Reverse(*m))),
                    others.min_by_key(|m| (would_own(&spread, owner, m), *m)),
                ) else {
                    continue;
                };
                let gap = would_own(&spread, owner, most) - would_own(&spread, owner, least);
                if gap < 2 {
                    continue;
                }
                // Among the possible partitions, prefer those where the
                // member moving in already holds the data (an old holder).
                let copy_needed = |p: usize, member: &str| !self.survivors[p].contains(&member);
                let from = (0..slots.len())
                    .filter(|p| {
                        slots[*p][0] == Some(*owner)
                            && slots[*p][1] == Some(most)
                            && !slots[*p].contains(&Some(least))
                    })
                    .min_by_key(|p| copy_needed(*p, least));
                let to = (0..slots.len())
                    .filter(|q| {
                        let Some(other_owner) = slots[*q][0] else {
                            return false;
                        };
                        other_owner != *owner
                            && slots[*q][1] == Some(least)
                            && !slots[*q].contains(&Some(most))
                            && would_own(&spread, other_owner, most) + 2
                                < would_own(&spread, other_owner, least) + gap
                    })
                    .min_by_key(|q| copy_needed(*q, most));
                if let (Some(p), Some(q)) = (from, to) {
                    slots[p][1] = Some(least);
                    slots[q][1] = Some(most);
                    swapped = true;
                    break;
                }
            }
            if !swapped {
                return;
            }
        }
    }

    /// The short member (not in `exclude`) to fill a hole in `partition`
    /// with. At a backup position: the one that would own the fewest
    /// partitions if this partition's owner failed (its owned count plus
    /// the partitions of this owner it already backs up here), so that a
    /// failed owner's partitions spread over the survivors; then the one
    /// furthest below its share; ties broken by a rotation that depends on
    /// the partition.
    fn neediest(
        &self,
        counts: &BTreeMap<&'a str, usize>,
        quotas: &BTreeMap<&'a str, usize>,
        spread: &Spread<'a>,
        partition: usize,
        exclude: &[&str],
    ) -> Option<&'a str> {
        let members = self.members;
        let n = members.len();
        let owner = spread.owner_of(partition);
        (0..n)
            .map(|i| members[(partition + i) % n])
            .filter(|m| !exclude.contains(m) && counts[m] < quotas[m])
            .min_by_key(|m| {
                let after_failure = owner.map(|o| spread.owned(m) + spread.paired(o, m));
                (
                    after_failure,
                    std::cmp::Reverse(quotas[m] - counts[m]),
                    rotation(members, m, partition),
                )
            })
    }

    /// A partition `q` whose holder at this position (`other`) is not in
    /// partition `p` yet, and a short member (`giver`) that is not in `q`:
    /// `giver` takes `q`'s slot and `other` moves to `p`.
    fn swap(
        &self,
        slots: &[Vec<Option<&'a str>>],
        p: usize,
        placed: &[&str],
        counts: &BTreeMap<&'a str, usize>,
        quotas: &BTreeMap<&'a str, usize>,
    ) -> Option<(usize, &'a str, &'a str)> {
        let short: Vec<&str> = self
            .members
            .iter()
            .copied()
            .filter(|m| counts[m] < quotas[m])
            .collect();
        (0..slots.len()).filter(|q| *q != p).find_map(|q| {
            let other = slots[q][self.position]?;
            if placed.contains(&other) {
                return None;
            }
            let before = &slots[q][..self.position];
            let giver = short
                .iter()
                .copied()
                .find(|m| !before.contains(&Some(*m)))?;
            Some((q, giver, other))
        })
    }
}

/// Each member's share of [`PARTITIONS`] at one position: ⌊271/n⌋, plus one
/// for `271 mod n` members: first those not given one at an earlier
/// position (so that, with three members, the three positions' extra
/// partitions land on different members and each holds 271 overall), then
/// those that hold the most now (so as few as possible must give something
/// up), then by name.
fn quotas<'a>(
    counts: &BTreeMap<&'a str, usize>,
    members: &[&'a str],
    given_more: &BTreeSet<&str>,
) -> BTreeMap<&'a str, usize> {
    let total = PARTITIONS as usize;
    let base = total / members.len();
    let extra = total % members.len();
    let mut order: Vec<&str> = members.to_vec();
    order.sort_by_key(|m| (given_more.contains(m), std::cmp::Reverse(counts[m]), *m));
    order
        .iter()
        .enumerate()
        .map(|(rank, m)| (*m, if rank < extra { base + 1 } else { base }))
        .collect()
}

/// At a backup position: how many partitions each member owns, and how
/// many of each owner's partitions each member holds at this position.
#[derive(Default)]
struct Spread<'a> {
    owners: Vec<Option<&'a str>>,
    owned: BTreeMap<&'a str, usize>,
    pairs: BTreeMap<(&'a str, &'a str), usize>,
}

impl<'a> Spread<'a> {
    fn new(slots: &[Vec<Option<&'a str>>], position: usize) -> Self {
        let mut spread = Spread::default();
        if position == 0 {
            return spread;
        }
        for slot in slots {
            let owner = slot[0];
            spread.owners.push(owner);
            if let Some(owner) = owner {
                *spread.owned.entry(owner).or_default() += 1;
                if let Some(holder) = slot[position] {
                    *spread.pairs.entry((owner, holder)).or_default() += 1;
                }
            }
        }
        spread
    }

    fn owner_of(&self, partition: usize) -> Option<&'a str> {
        self.owners.get(partition).copied().flatten()
    }

    fn owned(&self, member: &str) -> usize {
        self.owned.get(member).copied().unwrap_or(0)
    }

    fn paired(&self, owner: &str, member: &str) -> usize {
        self.pairs.get(&(owner, member)).copied().unwrap_or(0)
    }

    fn entry(
        &mut self,
        pair: (&'a str, &'a str),
    ) -> std::collections::btree_map::Entry<'_, (&'a str, &'a str), usize> {
        self.pairs.entry(pair)
    }

    fn moved(&mut self, owner: &'a str, from: &'a str, to: &'a str) {
        if let Some(count) = self.pairs.get_mut(&(owner, from)) {
            *count = count.saturating_sub(1);
        }
        *self.pairs.entry((owner, to)).or_default() += 1;
    }
}

/// The position of `member` in the member list rotated by `partition`.
fn rotation(members: &[&str], member: &str, partition: usize) -> usize {
    let n = members.len();
    let index = members.iter().position(|m| *m == member).unwrap_or(0);
    (index + n - partition % n) % n
}

fn decrement(counts: &mut BTreeMap<&str, usize>, member: &str) {
    if let Some(count) = counts.get_mut(member) {
        *count = count.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests;
