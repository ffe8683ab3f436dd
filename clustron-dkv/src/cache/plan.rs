//! What one node does for one namespace when it adopts a new partition
//! table, sans-IO: [`plan`] compares the old and the new table with what
//! the node holds and lists the [`Step`]s; the service
//! ([`super::service`]) performs them.
//!
//! ```text
//!   old table, new table, me, live members, what I hold ──► plan ──► steps
//!
//!   old owner live   (planned move):  old owner demotes, copies to the new
//!                                     owner if it lacks the data, then sends
//!                                     `Promote` on the same ordered stream;
//!                                     the new owner promotes on receipt.
//!   old owner gone   (failure):       the new owner (the first live backup,
//!                                     by the table's takeover rule) promotes
//!                                     at once, or starts empty if it holds
//!                                     nothing (more failures than backups).
//!   new backup:                       the owner copies the partition to it
//!                                     once it owns the partition.
//!   no longer a holder:               drop (an old owner after its hand-over).
//! ```
//!
//! The rule that keeps one owner per table version: only the old owner
//! decides when the new one may serve (by sending `Promote` after its
//! last change), unless the old owner is no longer a live member, in which
//! case nobody else can be serving the partition at the new table.
//!
//! Terms: a stint's term is [`term_of`] the table that started it, which
//! grows with (epoch, version), as the store requires.

use std::collections::BTreeSet;

use super::store::PartitionRole;
use super::table::PartitionTable;
use super::PARTITIONS;

/// One thing to do for one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Start serving at once: promote the backup held (or start an empty
    /// partition if none is held) with `term`, then copy it to `copy_to`
    /// (new backups without the data).
    TakeOver {
        /// The partition.
        partition: u32,
        /// The new stint's term.
        term: u64,
        /// Backups to copy the partition to.
        copy_to: Vec<String>,
    },
    /// Wait for the old owner's `Promote` before serving (requests get
    /// `Unavailable` meanwhile); then promote and copy to `copy_to`.
    AwaitHandOver {
        /// The partition.
        partition: u32,
        /// Backups to copy the partition to once promoted.
        copy_to: Vec<String>,
    },
    /// Stop serving and hand the partition to `to`: demote, copy the
    /// partition first if `copy`, then send `Promote` with `term`. Drop it
    /// afterwards unless `keep` (this node stays a backup).
    HandOver {
        /// The partition.
        partition: u32,
        /// The new owner.
        to: String,
        /// Whether it lacks the data.
        copy: bool,
        /// Its term.
        term: u64,
        /// Whether this node stays a holder.
        keep: bool,
    },
    /// Still the owner: copy the partition to new backups.
    CopyTo {
        /// The partition.
        partition: u32,
        /// The new backups.
        to: Vec<String>,
    },
    /// No longer a holder of a backup: forget it.
    Drop {
        /// The partition.
        partition: u32,
    },
}

/// The term of an ownership stint that starts at `table`: the epoch in the
/// high 24 bits, the version in the next 32, so terms grow in the order
/// [`PartitionTable::is_newer_than`] uses; the low 8 bits are left for
/// [`handback_term`].
pub fn term_of(table: &PartitionTable) -> u64 {
    ((table.epoch & 0xff_ffff) << 40) | ((table.version & 0xffff_ffff) << 8)
}

/// The term of a stint that starts when a backup hands a partition back to
/// its restarted owner at `table`: above the backup's position's term
/// (which may be the owner's previous stint at the same table), below the
/// next table's.
pub fn handback_term(table: &PartitionTable, held: u64) -> u64 {
    term_of(table).max(held.saturating_add(1))
}

/// How a node that just started (and holds nothing) gets a partition the
/// table says it owns: it asks every live member what it holds of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// Some member still owns it: it will hand it over once it adopts the
    /// table (or it is the table that is behind); wait.
    Wait,
    /// Nobody owns it, this member backs it up: ask it to hand it back.
    Pull(String),
    /// Nobody holds it (a new cluster, or more failures than backups):
    /// start empty.
    Empty,
}

/// The [`Recovery`] of `partition` from what each other live member said
/// it holds (`None`: nothing, or no answer). A backup listed first in the
/// table is preferred (it is the one kept in sync first).
pub fn recovery(
    table: &PartitionTable,
    partition: u32,
    answers: &std::collections::BTreeMap<String, Option<PartitionRole>>,
) -> Recovery {
    if answers.values().any(|r| *r == Some(PartitionRole::Owner)) {
        return Recovery::Wait;
    }
    let backups = answers
        .iter()
        .filter(|(_, r)| **r == Some(PartitionRole::Backup))
        .map(|(name, _)| name.clone());
    let in_table_order = table
        .replicas(partition)
        .iter()
        .find(|name| answers.get(*name) == Some(&Some(PartitionRole::Backup)))
        .cloned();
    match in_table_order.or_else(|| backups.min()) {
        Some(name) => Recovery::Pull(name),
        None => Recovery::Empty,
    }
}

/// The holders of `partition` for a namespace with `backups` backups: the
/// owner and its first `backups` backups.
pub fn holders(table: &PartitionTable, partition: u32, backups: usize) -> Vec<String> {
    let replicas = table.replicas(partition);
    replicas[..replicas.len().min(1 + backups)].to_vec()
}

/// The steps for node `me` to go from `old` to `new` for a namespace with
/// `backups` backups; `held` says what it holds of each partition now,
/// `live` are the live members.
pub fn plan(
    old: &PartitionTable,
    new: &PartitionTable,
    me: &str,
    live: &BTreeSet<String>,
    backups: usize,
    held: impl Fn(u32) -> Option<PartitionRole>,
) -> Vec<Step> {
    let term = term_of(new);
    let mut steps = Vec::new();
    for partition in 0..PARTITIONS {
        let old_holders = holders(old, partition, backups);
        let new_holders = holders(new, partition, backups);
        let old_owner = old.owner(partition);
        let new_owner = new.owner(partition);
        let fresh_backups = |exclude: &str| -> Vec<String> {
            new_holders
                .iter()
                .skip(1)
                .filter(|b| !old_holders.contains(b) && b.as_str() != exclude)
                .cloned()
                .collect()
        };
        let held = held(partition);
        if new_owner == Some(me) {
            match held {
                Some(PartitionRole::Owner) => {
                    let to = fresh_backups(me);
                    if !to.is_empty() {
                        steps.push(Step::CopyTo { partition, to });
                    }
                }
                _ => {
                    let old_owner_serving =
                        old_owner.is_some_and(|owner| owner != me && live.contains(owner));
                    let copy_to = fresh_backups(me);
                    if old_owner_serving {
                        steps.push(Step::AwaitHandOver { partition, copy_to });
                    } else {
                        // The old owner is gone: nobody else serves it.
                        // Every live old holder but this one may lag
                        // behind a promoted backup: copy to all new
                        // backups that were not old holders.
                        steps.push(Step::TakeOver {
                            partition,
                            term,
                            copy_to,
                        });
                    }
                }
            }
            continue;
        }
        match (held, new_owner) {
            (Some(PartitionRole::Owner), Some(to)) => steps.push(Step::HandOver {
                partition,
                to: to.to_owned(),
                copy: !old_holders.iter().any(|h| h == to),
                term,
                keep: new_holders.iter().any(|h| h == me),
            }),
            (Some(PartitionRole::Owner), None) => steps.push(Step::Drop { partition }),
            (Some(PartitionRole::Backup), _) if !new_holders.iter().any(|h| h == me) => {
                steps.push(Step::Drop { partition })
            }
            _ => {}
        }
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn live(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    /// What `me` holds under `table` once every step ran.
    fn held_under(
        table: &PartitionTable,
        me: &str,
        backups: usize,
        p: u32,
    ) -> Option<PartitionRole> {
        let holders = holders(table, p, backups);
        match holders.iter().position(|h| h == me) {
            Some(0) => Some(PartitionRole::Owner),
            Some(_) => Some(PartitionRole::Backup),
            None => None,
        }
    }

    #[test]
    fn the_first_table_makes_every_owner_take_over_with_empty_partitions_and_no_copies() {
        let old = PartitionTable::empty();
        let new = old.rebalance(&names(&["a", "b", "c"]), 1);
        let steps = plan(&old, &new, "a", &live(&["a", "b", "c"]), 1, |_| None);
        let owned = new.owned_count("a");
        assert_eq!(steps.len(), owned);
        for step in steps {
            let Step::TakeOver {
                partition,
                term,
                copy_to,
            } = step
            else {
                panic!("{step:?}");
            };
            assert_eq!(new.owner(partition), Some("a"));
            assert_eq!(term, term_of(&new));
            // The backups are fresh too, but hold nothing to compare with:
            // they are copied (an empty partition) so they open it.
            assert_eq!(copy_to, new.backups(partition, 1).to_vec());
        }
    }

    #[test]
    fn a_dead_owners_first_backup_takes_over_at_once_and_copies_to_the_new_backup() {
        let old = PartitionTable::empty().rebalance(&names(&["a", "b", "c"]), 1);
        let new = old.rebalance(&names(&["b", "c"]), 1);
        for me in ["b", "c"] {
            let steps = plan(&old, &new, me, &live(&["b", "c"]), 1, |p| {
                held_under(&old, me, 1, p)
            });
            for step in &steps {
                match step {
                    Step::TakeOver {
                        partition, copy_to, ..
                    } => {
                        assert_eq!(old.owner(*partition), Some("a"));
                        assert_eq!(old.backups(*partition, 1), [me.to_owned()]);
                        // The only other live member is the new backup,
                        // and it held nothing of it.
                        assert_eq!(copy_to.len(), 1);
                    }
                    Step::CopyTo { partition, to } => {
                        // Its backup was a, which died.
                        assert_eq!(old.backups(*partition, 1), ["a".to_owned()]);
                        assert_eq!(to.len(), 1);
                    }
                    Step::Drop { .. } => {}
                    other => panic!("no hand-over from a dead owner: {other:?}"),
                }
            }
            let takeovers = steps
                .iter()
                .filter(|s| matches!(s, Step::TakeOver { .. }))
                .count();
            let expected = (0..PARTITIONS)
                .filter(|&p| old.owner(p) == Some("a") && old.backups(p, 1) == [me.to_owned()])
                .count();
            assert_eq!(takeovers, expected);
        }
    }

    #[test]
    fn a_join_moves_ownership_by_hand_over_from_the_live_old_owner() {
        let old = PartitionTable::empty().rebalance(&names(&["a", "b", "c"]), 1);
        let new = old.rebalance(&names(&["a", "b", "c", "d"]), 1);
        let members = live(&["a", "b", "c", "d"]);
        let d = plan(&old, &new, "d", &members, 1, |_| None);
        assert!(
            d.iter().all(|s| matches!(s, Step::AwaitHandOver { .. })),
            "{d:?}"
        );
        assert_eq!(d.len(), new.owned_count("d"));
        let mut handed = 0;
        for me in ["a", "b", "c"] {
            for step in plan(&old, &new, me, &members, 1, |p| held_under(&old, me, 1, p)) {
                match step {
                    Step::HandOver {
                        partition,
                        to,
                        copy,
                        term,
                        keep,
                    } => {
                        assert_eq!(old.owner(partition), Some(me));
                        assert_eq!(new.owner(partition), Some(to.as_str()));
                        assert_eq!(copy, !old.replicas(partition)[..2].contains(&to));
                        assert_eq!(term, term_of(&new));
                        assert_eq!(keep, holders(&new, partition, 1).contains(&me.to_owned()));
                        if to == "d" {
                            handed += 1;
                        }
                    }
                    Step::TakeOver { .. } | Step::AwaitHandOver { .. } => {
                        panic!("nobody died: every move is a hand-over: {step:?}")
                    }
                    Step::CopyTo { .. } | Step::Drop { .. } => {}
                }
            }
        }
        assert_eq!(handed, new.owned_count("d"));
    }

    #[test]
    fn an_unchanged_table_needs_no_step() {
        let table = PartitionTable::empty().rebalance(&names(&["a", "b", "c"]), 1);
        for me in ["a", "b", "c"] {
            let steps = plan(&table, &table, me, &live(&["a", "b", "c"]), 1, |p| {
                held_under(&table, me, 1, p)
            });
            assert!(steps.is_empty(), "{me}: {steps:?}");
        }
    }

    #[test]
    fn an_owner_still_waiting_for_a_hand_over_from_itself_takes_over() {
        // The node was made owner, never got the hand-over (its sender
        // died), and a newer table keeps it owner: nobody else serves.
        let old = PartitionTable::empty().rebalance(&names(&["a", "b"]), 1);
        let p = (0..PARTITIONS)
            .find(|&p| old.owner(p) == Some("a"))
            .expect("a owns some");
        let steps = plan(&old, &old, "a", &live(&["a", "b"]), 1, |q| match q == p {
            true => Some(PartitionRole::Backup),
            false => held_under(&old, "a", 1, q),
        });
        assert_eq!(
            steps,
            vec![Step::TakeOver {
                partition: p,
                term: term_of(&old),
                copy_to: vec![]
            }]
        );
    }

    #[test]
    fn a_restarted_owner_waits_for_an_owner_pulls_from_a_backup_or_starts_empty() {
        let table = PartitionTable::empty().rebalance(&names(&["a", "b", "c"]), 1);
        let p = (0..PARTITIONS)
            .find(|&p| table.owner(p) == Some("a"))
            .expect("a owns some");
        let first_backup = table.replicas(p)[1].clone();
        let other = table.replicas(p)[2].clone();
        let answers = |pairs: &[(&String, Option<PartitionRole>)]| {
            pairs
                .iter()
                .map(|(n, r)| (n.to_string(), *r))
                .collect::<std::collections::BTreeMap<_, _>>()
        };
        use PartitionRole::*;
        assert_eq!(
            recovery(
                &table,
                p,
                &answers(&[(&first_backup, Some(Backup)), (&other, Some(Owner))])
            ),
            Recovery::Wait
        );
        assert_eq!(
            recovery(
                &table,
                p,
                &answers(&[(&first_backup, Some(Backup)), (&other, Some(Backup))])
            ),
            Recovery::Pull(first_backup.clone())
        );
        assert_eq!(
            recovery(
                &table,
                p,
                &answers(&[(&first_backup, None), (&other, Some(Backup))])
            ),
            Recovery::Pull(other.clone())
        );
        assert_eq!(
            recovery(
                &table,
                p,
                &answers(&[(&first_backup, None), (&other, None)])
            ),
            Recovery::Empty
        );
        assert_eq!(recovery(&table, p, &answers(&[])), Recovery::Empty);
        // A hand-back's term passes the backup's, even from the same table.
        let held = term_of(&table);
        assert!(handback_term(&table, held) > held);
        let next = table.rebalance(&names(&["a", "b"]), 1);
        assert!(term_of(&next) > handback_term(&table, held));
    }

    #[test]
    fn terms_grow_with_the_tables_order() {
        let t1 = PartitionTable::empty().rebalance(&names(&["a", "b"]), 1);
        let t2 = t1.rebalance(&names(&["a", "b", "c"]), 1);
        let t3 = t2.rebalance(&names(&["a", "b"]), 2);
        assert!(term_of(&t2) > term_of(&t1));
        assert!(term_of(&t3) > term_of(&t2));
        assert!(t3.is_newer_than(&t2) && t2.is_newer_than(&t1));
    }
}
