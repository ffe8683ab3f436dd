//! The table and the store together, driven by hand as the node driver
//! will drive them: synchronous backups, crashes of at most `backups`
//! members at once, joins. Checks the promise at the core level:
//! no acknowledged write is lost, and every partition has exactly one
//! owner, the table's.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::store::{NamespaceConfig, NamespaceStore, PartitionRole};
use super::table::PartitionTable;
use super::{partition_of, CacheOp, CacheReply, PutCondition, PARTITIONS};

struct Cluster {
    backups: usize,
    config: NamespaceConfig,
    table: PartitionTable,
    nodes: BTreeMap<String, NamespaceStore>,
    next_name: usize,
    /// Every acknowledged write: key -> value.
    acked: BTreeMap<Vec<u8>, Vec<u8>>,
    now: u64,
}

impl Cluster {
    fn new(members: usize, backups: usize) -> Self {
        let config = NamespaceConfig {
            backups: backups as u8,
            ..NamespaceConfig::default()
        };
        let mut cluster = Cluster {
            backups,
            config,
            table: PartitionTable::empty(),
            nodes: BTreeMap::new(),
            next_name: 0,
            acked: BTreeMap::new(),
            now: 0,
        };
        for _ in 0..members {
            cluster.add_node();
        }
        cluster.retable();
        cluster
    }

    fn add_node(&mut self) {
        let name = format!("n{}", self.next_name);
        self.next_name += 1;
        self.nodes
            .insert(name, NamespaceStore::new(self.config.clone()));
    }

    /// The leader's job: a new table for the live members, then the
    /// driver's: migrate, cut over, re-sync backups, drop what is no longer
    /// held.
    fn retable(&mut self) {
        let live: Vec<String> = self.nodes.keys().cloned().collect();
        let old = self.table.clone();
        let new = old.rebalance(&live, old.epoch + 1);
        let moves = PartitionTable::moves_for(&old, &new, self.backups);
        let term = new.version;
        for p in 0..PARTITIONS {
            let Some(owner) = new.owner(p).map(str::to_owned) else {
                continue;
            };
            // Migrate to a new owner that lacks the data, from the source
            // the table names, then cut over: the old owner steps down
            // first.
            if self.nodes[&owner].role(p).is_none() {
                let source = moves
                    .iter()
                    .find(|m| m.partition == p && m.to == owner)
                    .and_then(|m| m.from.clone());
                let dump = source.and_then(|s| self.nodes[&s].export_partition(p));
                let store = self.nodes.get_mut(&owner).expect("owner is live");
                match dump {
                    Some(dump) => store
                        .import_partition(dump)
                        .expect("import into a fresh partition"),
                    None => store.create_partition(p, term).expect("not held"),
                }
            }
            for (name, store) in self.nodes.iter_mut() {
                if *name != owner && store.role(p) == Some(PartitionRole::Owner) {
                    store.demote(p).expect("held");
                }
            }
            let store = self.nodes.get_mut(&owner).expect("owner is live");
            if store.role(p) == Some(PartitionRole::Backup) {
                let effects = store.promote(p, term, self.now).expect("held");
                assert!(effects.changes.is_empty(), "no bounds reached here");
            }
            // Backups: re-sync any that is not at the owner's position.
            let position = self.nodes[&owner].partition_position(p);
            let backups: Vec<String> = new.backups(p, self.backups).to_vec();
            for backup in &backups {
                if self.nodes[backup].partition_position(p) != position
                    || self.nodes[backup].role(p) != Some(PartitionRole::Backup)
                {
                    let dump = self.nodes[&owner]
                        .export_partition(p)
                        .expect("owner holds it");
                    self.nodes
                        .get_mut(backup)
                        .expect("live")
                        .import_partition(dump)
                        .expect("not owned");
                }
            }
            for (name, store) in self.nodes.iter_mut() {
                if *name != owner && !backups.contains(name) {
                    store.drop_partition(p);
                }
            }
        }
        self.table = new;
    }

    /// A client write: the owner applies it, every backup applies the
    /// changes (synchronous backups), then it is acknowledged.
    fn write(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.now += 1;
        let p = partition_of(&key);
        let owner = self.table.owner(p).expect("a member").to_owned();
        let op = CacheOp::Put {
            key: key.clone(),
            value: value.clone(),
            ttl_ms: None,
            condition: PutCondition::Always,
            keep_ttl: false,
            return_old: false,
        };
        let applied = self
            .nodes
            .get_mut(&owner)
            .expect("live")
            .apply(p, &op, self.now);
        assert!(matches!(
            applied.reply,
            Ok(CacheReply::Stored { stored: true, .. })
        ));
        for backup in self.table.backups(p, self.backups).to_vec() {
            let store = self.nodes.get_mut(&backup).expect("live");
            for change in &applied.changes {
                store
                    .apply_change(change.clone())
                    .expect("backups are in sync after every retable");
            }
        }
        self.acked.insert(key, value);
    }

    fn crash(&mut self, picks: &[usize]) {
        for pick in picks {
            let names: Vec<String> = self.nodes.keys().cloned().collect();
            self.nodes.remove(&names[pick % names.len()]);
        }
        self.retable();
    }

    fn check(&mut self) -> Result<(), TestCaseError> {
        for p in 0..PARTITIONS {
            let owners: Vec<&String> = self
                .nodes
                .iter()
                .filter(|(_, s)| s.role(p) == Some(PartitionRole::Owner))
                .map(|(n, _)| n)
                .collect();
            prop_assert_eq!(owners.len(), 1, "partition {} owners {:?}", p, owners);
            prop_assert_eq!(Some(owners[0].as_str()), self.table.owner(p));
        }
        self.now += 1;
        for (key, value) in &self.acked {
            let p = partition_of(key);
            let owner = self.table.owner(p).expect("a member").to_owned();
            let store = self.nodes.get_mut(&owner).expect("live");
            let got = store
                .apply(p, &CacheOp::Get { key: key.clone() }, self.now)
                .reply;
            let found = matches!(&got, Ok(CacheReply::Value(Some(v))) if v.value == *value);
            prop_assert!(found, "acknowledged {:?} lost: {:?}", key, got);
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
enum Step {
    Write(u8),
    Crash(Vec<usize>),
    Join,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        12 => any::<u8>().prop_map(Step::Write),
        2 => proptest::collection::vec(any::<usize>(), 1..3).prop_map(Step::Crash),
        1 => Just(Step::Join),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Crashes of up to `backups` members at once (between table changes)
    /// and joins, with writes in between: every acknowledged write is
    /// still read from the partition's current owner.
    #[test]
    fn at_most_backups_crashes_at_once_lose_no_acknowledged_write(
        members in 2usize..5,
        backups in 1usize..3,
        steps in proptest::collection::vec(step(), 1..40),
    ) {
        let mut cluster = Cluster::new(members, backups);
        let mut counter = 0u64;
        for step in steps {
            match step {
                Step::Write(k) => {
                    counter += 1;
                    cluster.write(format!("key{k}").into_bytes(), counter.to_string().into_bytes());
                }
                Step::Crash(mut picks) => {
                    picks.truncate(backups);
                    if cluster.nodes.len() > picks.len() {
                        cluster.crash(&picks);
                    }
                }
                Step::Join => {
                    cluster.add_node();
                    cluster.retable();
                }
            }
            cluster.check()?;
        }
    }
}
