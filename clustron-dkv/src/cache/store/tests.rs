//! Tests of the namespace store: operations against a model, bounds, expiry, replication and re-sync.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

fn config() -> NamespaceConfig {
    NamespaceConfig {
        max_key_len: 64,
        max_value_len: 256,
        ..NamespaceConfig::default()
    }
}

fn put(key: &[u8], value: &[u8]) -> CacheOp {
    CacheOp::Put {
        key: key.to_vec(),
        value: value.to_vec(),
        ttl_ms: None,
        condition: PutCondition::Always,
        keep_ttl: false,
        return_old: false,
    }
}

fn get(key: &[u8]) -> CacheOp {
    CacheOp::Get { key: key.to_vec() }
}

/// An owner of partition 0 and a backup fed every change it makes.
struct Pair {
    owner: NamespaceStore,
    backup: NamespaceStore,
}

impl Pair {
    fn new(config: NamespaceConfig) -> Self {
        let mut owner = NamespaceStore::new(config.clone());
        let mut backup = NamespaceStore::new(config);
        owner.create_partition(0, 1).unwrap();
        backup.open_backup(0).unwrap();
        Self { owner, backup }
    }

    fn apply(&mut self, op: &CacheOp, now: u64) -> Applied {
        let applied = self.owner.apply(0, op, now);
        for change in applied.changes.clone() {
            self.backup.apply_change(change).unwrap();
        }
        applied
    }

    fn expire(&mut self, now: u64, budget: usize) -> Effects {
        let effects = self.owner.expire(now, budget);
        for change in effects.changes.clone() {
            self.backup.apply_change(change).unwrap();
        }
        effects
    }

    fn identical(&self) -> bool {
        self.owner.partition_state(0) == self.backup.partition_state(0)
            && self.owner.partition_position(0) == self.backup.partition_position(0)
    }
}

fn keys_of(store: &NamespaceStore, partition: u32) -> Vec<Vec<u8>> {
    store
        .partition_state(partition)
        .into_iter()
        .map(|(k, _)| k)
        .collect()
}

// ---- operations, one by one ----

#[test]
fn put_then_get_returns_the_value_with_version_one_and_counts_a_hit() {
    let mut pair = Pair::new(config());
    let applied = pair.apply(&put(b"k", b"v"), 10);
    assert_eq!(
        applied.reply,
        Ok(CacheReply::Stored {
            stored: true,
            version: 1,
            old: None
        })
    );
    assert_eq!(
        applied.events,
        vec![CacheEvent {
            kind: EventKind::Put,
            partition: 0,
            key: b"k".to_vec(),
            version: 1
        }]
    );
    let got = pair.apply(&get(b"k"), 11);
    assert_eq!(
        got.reply,
        Ok(CacheReply::Value(Some(Versioned {
            value: b"v".to_vec(),
            version: 1
        })))
    );
    assert!(got.changes.is_empty(), "a read replicates nothing");
    assert_eq!(
        pair.apply(&get(b"x"), 12).reply,
        Ok(CacheReply::Value(None))
    );
    let metrics = pair.owner.metrics();
    assert_eq!((metrics.hits, metrics.misses, metrics.entries), (1, 1, 1));
    assert_eq!(metrics.bytes, 1 + 1 + ENTRY_OVERHEAD);
    assert!(pair.identical());
}

#[test]
fn set_nx_xx_get_and_if_version_follow_redis() {
    let mut pair = Pair::new(config());
    let with = |condition, return_old| CacheOp::Put {
        key: b"k".to_vec(),
        value: b"new".to_vec(),
        ttl_ms: None,
        condition,
        keep_ttl: false,
        return_old,
    };
    let stored = |stored, version, old: Option<&[u8]>| {
        Ok(CacheReply::Stored {
            stored,
            version,
            old: old.map(<[u8]>::to_vec),
        })
    };
    assert_eq!(
        pair.apply(&with(PutCondition::IfPresent, false), 1).reply,
        stored(false, 0, None)
    );
    assert_eq!(
        pair.apply(&with(PutCondition::IfVersion(1), false), 1)
            .reply,
        stored(false, 0, None)
    );
    assert_eq!(
        pair.apply(&with(PutCondition::IfVersion(0), false), 1)
            .reply,
        stored(true, 1, None)
    );
    assert_eq!(
        pair.apply(&with(PutCondition::IfAbsent, true), 2).reply,
        stored(false, 1, Some(b"new"))
    );
    assert_eq!(
        pair.apply(&with(PutCondition::IfPresent, true), 3).reply,
        stored(true, 2, Some(b"new"))
    );
    assert_eq!(
        pair.apply(&with(PutCondition::IfVersion(1), false), 4)
            .reply,
        stored(false, 2, None)
    );
    assert_eq!(
        pair.apply(&with(PutCondition::IfVersion(2), false), 4)
            .reply,
        stored(true, 3, None)
    );
    assert!(pair.identical());
}

#[test]
fn ttl_keep_ttl_expire_and_persist() {
    let mut pair = Pair::new(config());
    let put_ttl = |ttl_ms, keep_ttl| CacheOp::Put {
        key: b"k".to_vec(),
        value: b"v".to_vec(),
        ttl_ms,
        condition: PutCondition::Always,
        keep_ttl,
        return_old: false,
    };
    let ttl = |pair: &mut Pair, now| pair.apply(&CacheOp::Ttl { key: b"k".to_vec() }, now).reply;
    assert_eq!(ttl(&mut pair, 0), Ok(CacheReply::Ttl(TtlState::Absent)));
    let _ = pair.apply(&put_ttl(Some(100), false), 0);
    assert_eq!(
        ttl(&mut pair, 30),
        Ok(CacheReply::Ttl(TtlState::Millis(70)))
    );
    let _ = pair.apply(&put_ttl(None, true), 40);
    assert_eq!(
        ttl(&mut pair, 50),
        Ok(CacheReply::Ttl(TtlState::Millis(50))),
        "KEEPTTL kept the expiry"
    );
    let _ = pair.apply(&put_ttl(None, false), 50);
    assert_eq!(
        ttl(&mut pair, 50),
        Ok(CacheReply::Ttl(TtlState::Persistent)),
        "a plain SET clears it"
    );
    let persist = CacheOp::Expire {
        key: b"k".to_vec(),
        ttl_ms: None,
    };
    assert_eq!(
        pair.apply(&persist, 51).reply,
        Ok(CacheReply::Bool(false)),
        "nothing to persist"
    );
    let expire = CacheOp::Expire {
        key: b"k".to_vec(),
        ttl_ms: Some(10),
    };
    assert_eq!(pair.apply(&expire, 60).reply, Ok(CacheReply::Bool(true)));
    assert_eq!(pair.apply(&persist, 61).reply, Ok(CacheReply::Bool(true)));
    assert_eq!(pair.apply(&expire, 62).reply, Ok(CacheReply::Bool(true)));
    let gone = pair.apply(&get(b"k"), 72);
    assert_eq!(
        gone.reply,
        Ok(CacheReply::Value(None)),
        "expired at 72 exactly"
    );
    assert_eq!(gone.events.len(), 1);
    assert_eq!(gone.events[0].kind, EventKind::Expire);
    assert_eq!(gone.changes.len(), 1, "the lazy expiry is replicated");
    assert_eq!(pair.apply(&expire, 73).reply, Ok(CacheReply::Bool(false)));
    assert_eq!(pair.owner.metrics().expirations, 1);
    assert!(pair.identical());
    assert!(pair.backup.partition_state(0).is_empty());
}

#[test]
fn incr_append_strlen_compare_and_set_and_delete() {
    let mut pair = Pair::new(config());
    let incr = |by| CacheOp::Incr {
        key: b"n".to_vec(),
        by,
    };
    assert_eq!(pair.apply(&incr(5), 1).reply, Ok(CacheReply::Integer(5)));
    assert_eq!(pair.apply(&incr(-7), 2).reply, Ok(CacheReply::Integer(-2)));
    let _ = pair.apply(&put(b"n", b"9223372036854775807"), 3);
    assert_eq!(pair.apply(&incr(1), 4).reply, Err(CacheError::Overflow));
    for bad in [&b"abc"[..], b" 1", b"+1", b"01", b"", b"1.5"] {
        let _ = pair.apply(&put(b"n", bad), 5);
        assert_eq!(
            pair.apply(&incr(1), 5).reply,
            Err(CacheError::NotInteger),
            "{bad:?}"
        );
    }
    let append = |value: &[u8]| CacheOp::Append {
        key: b"s".to_vec(),
        value: value.to_vec(),
    };
    assert_eq!(pair.apply(&append(b"ab"), 6).reply, Ok(CacheReply::Len(2)));
    assert_eq!(pair.apply(&append(b"cd"), 7).reply, Ok(CacheReply::Len(4)));
    assert_eq!(
        pair.apply(&CacheOp::Strlen { key: b"s".to_vec() }, 8).reply,
        Ok(CacheReply::Len(4))
    );
    assert_eq!(
        pair.apply(
            &CacheOp::Strlen {
                key: b"none".to_vec()
            },
            8
        )
        .reply,
        Ok(CacheReply::Len(0))
    );
    let cas = |expected: &[u8], value: &[u8]| CacheOp::CompareAndSet {
        key: b"s".to_vec(),
        expected: expected.to_vec(),
        value: value.to_vec(),
    };
    assert_eq!(
        pair.apply(&cas(b"zz", b"x"), 9).reply,
        Ok(CacheReply::Stored {
            stored: false,
            version: 2,
            old: Some(b"abcd".to_vec())
        })
    );
    assert_eq!(
        pair.apply(&cas(b"abcd", b"x"), 9).reply,
        Ok(CacheReply::Stored {
            stored: true,
            version: 3,
            old: None
        })
    );
    assert_eq!(
        pair.apply(&CacheOp::Exists { key: b"s".to_vec() }, 10)
            .reply,
        Ok(CacheReply::Bool(true))
    );
    let delete = pair.apply(&CacheOp::Delete { key: b"s".to_vec() }, 11);
    assert_eq!(delete.reply, Ok(CacheReply::Bool(true)));
    assert_eq!(delete.events[0].kind, EventKind::Remove);
    assert_eq!(
        pair.apply(&CacheOp::Delete { key: b"s".to_vec() }, 11)
            .reply,
        Ok(CacheReply::Bool(false))
    );
    assert_eq!(
        pair.apply(&cas(b"", b"x"), 12).reply,
        Ok(CacheReply::Stored {
            stored: false,
            version: 0,
            old: None
        }),
        "compare-and-set on an absent key fails"
    );
    assert!(pair.identical());
}

#[test]
fn oversized_keys_and_values_are_refused_without_change() {
    let mut pair = Pair::new(config());
    let long_key = vec![b'k'; 65];
    assert_eq!(
        pair.apply(&put(&long_key, b"v"), 1).reply,
        Err(CacheError::TooLarge {
            what: "key".to_owned(),
            len: 65,
            limit: 64
        })
    );
    let applied = pair.apply(&put(b"k", &[0; 257]), 1);
    assert_eq!(
        applied.reply,
        Err(CacheError::TooLarge {
            what: "value".to_owned(),
            len: 257,
            limit: 256
        })
    );
    assert!(applied.changes.is_empty());
    let _ = pair.apply(&put(b"k", &[0; 200]), 1);
    let append = CacheOp::Append {
        key: b"k".to_vec(),
        value: vec![0; 57],
    };
    assert!(matches!(
        pair.apply(&append, 2).reply,
        Err(CacheError::TooLarge { .. })
    ));
    assert_eq!(pair.owner.partition_state(0)[0].1.value.len(), 200);
}

#[test]
fn a_partition_not_owned_here_is_unavailable() {
    let mut store = NamespaceStore::new(config());
    assert_eq!(
        store.apply(3, &get(b"k"), 0).reply,
        Err(CacheError::Unavailable(3))
    );
    store.open_backup(3).unwrap();
    let applied = store.apply(3, &put(b"k", b"v"), 0);
    assert_eq!(applied.reply, Err(CacheError::Unavailable(3)));
    assert!(applied.changes.is_empty());
}

#[test]
fn integers_parse_only_in_canonical_form() {
    assert_eq!(parse_integer(b"0"), Some(0));
    assert_eq!(parse_integer(b"-12"), Some(-12));
    assert_eq!(parse_integer(b"-9223372036854775808"), Some(i64::MIN));
    for bad in [
        &b"-0"[..],
        b"00",
        b"+3",
        b"9223372036854775808",
        b"1 ",
        b"\xff",
    ] {
        assert_eq!(parse_integer(bad), None, "{bad:?}");
    }
}

#[test]
fn config_validation_names_the_bad_value() {
    assert!(NamespaceConfig::default().validate().is_ok());
    let bad = |change: fn(&mut NamespaceConfig)| {
        let mut config = NamespaceConfig::default();
        change(&mut config);
        config.validate().unwrap_err()
    };
    assert_eq!(
        bad(|c| c.name = "a b".into()),
        ConfigError::BadName("a b".into())
    );
    assert_eq!(
        bad(|c| c.name = String::new()),
        ConfigError::BadName(String::new())
    );
    assert_eq!(bad(|c| c.max_entries = 0), ConfigError::NoEntries);
    assert_eq!(
        bad(|c| c.backups = 3),
        ConfigError::TooManyBackups { backups: 3, max: 2 }
    );
    assert_eq!(
        bad(|c| c.ttl_ms = Some(0)),
        ConfigError::ZeroDuration { what: "ttl_ms" }
    );
    assert_eq!(
        bad(|c| c.max_idle_ms = Some(0)),
        ConfigError::ZeroDuration {
            what: "max_idle_ms"
        }
    );
    assert_eq!(
        bad(|c| c.max_value_len = 0),
        ConfigError::ZeroLength {
            what: "max_value_len"
        }
    );
    assert!(matches!(
        bad(|c| c.max_memory = 1000),
        ConfigError::MemoryTooSmall {
            max_memory: 1000,
            budget: 500,
            ..
        }
    ));
    let message = bad(|c| c.max_memory = 1000).to_string();
    assert!(message.contains("raise max_memory"), "{message}");
}

// ---- bounds and eviction ----

#[test]
fn lru_evicts_the_least_recently_used_and_backups_follow() {
    // 4 entries per node, 1 backup: 2 owned entries at most.
    let mut pair = Pair::new(NamespaceConfig {
        max_entries: 4,
        ..config()
    });
    let _ = pair.apply(&put(b"a", b"1"), 1);
    let _ = pair.apply(&put(b"b", b"1"), 2);
    let _ = pair.apply(&get(b"a"), 3);
    let applied = pair.apply(&put(b"c", b"1"), 4);
    let evicted: Vec<_> = applied
        .events
        .iter()
        .filter(|e| e.kind == EventKind::Evict)
        .collect();
    assert_eq!(evicted.len(), 1);
    assert_eq!(evicted[0].key, b"b".to_vec(), "b was used least recently");
    assert_eq!(keys_of(&pair.owner, 0), vec![b"a".to_vec(), b"c".to_vec()]);
    assert!(pair.identical(), "the backup dropped b too");
    assert_eq!(pair.owner.metrics().evictions, 1);
    assert_eq!(
        pair.backup.metrics().evictions,
        0,
        "a backup never evicts by itself"
    );
}

#[test]
fn memory_bound_counts_keys_values_and_overhead() {
    // Owned budget: 2000 / 2 = 1000 bytes; each entry 1 + 200 + 128 = 329.
    let config = NamespaceConfig {
        max_memory: 2000,
        max_value_len: 200,
        max_key_len: 8,
        ..config()
    };
    let mut pair = Pair::new(config.validate().unwrap());
    for (i, key) in [b"a", b"b", b"c", b"d", b"e"].iter().enumerate() {
        let _ = pair.apply(&put(*key, &[7; 200]), i as u64);
        let metrics = pair.owner.metrics();
        assert!(metrics.owned_bytes <= 1000, "{metrics:?}");
    }
    assert_eq!(pair.owner.metrics().owned_entries, 3);
    assert_eq!(
        keys_of(&pair.owner, 0),
        vec![b"c".to_vec(), b"d".to_vec(), b"e".to_vec()]
    );
    assert!(pair.identical());
}

/// Three hot keys read now and then, in a stream of cold keys each read
/// once, through a 10-entry budget.
fn hot_and_cold(eviction: Eviction) -> (Vec<Vec<u8>>, Pair) {
    let mut pair = Pair::new(NamespaceConfig {
        max_entries: 20,
        eviction,
        ..config()
    });
    let mut now = 0;
    let hot: Vec<Vec<u8>> = (0..3).map(|i| format!("hot{i}").into_bytes()).collect();
    for key in &hot {
        let _ = pair.apply(&put(key, b"v"), now);
        for _ in 0..10 {
            now += 1;
            let _ = pair.apply(&get(key), now);
        }
    }
    for i in 0..200 {
        now += 1;
        let key = format!("cold{i}").into_bytes();
        let _ = pair.apply(&put(&key, b"v"), now);
        let _ = pair.apply(&get(&key), now);
        if i % 9 == 8 {
            for key in &hot {
                let _ = pair.apply(&get(key), now);
            }
        }
    }
    (hot, pair)
}

#[test]
fn lfu_keeps_hot_keys_over_cold_ones() {
    let (hot, pair) = hot_and_cold(Eviction::Lfu);
    let held = keys_of(&pair.owner, 0);
    assert_eq!(held.len(), 10);
    for key in &hot {
        assert!(held.contains(key), "hot key {key:?} evicted");
    }
    assert!(pair.identical());
    // LRU, on the same workload, loses them: 9 cold keys between two reads
    // of a hot key push it out of 10 slots shared with the other two.
    let (hot, lru) = hot_and_cold(Eviction::Lru);
    let held = keys_of(&lru.owner, 0);
    assert!(hot.iter().any(|k| !held.contains(k)), "{held:?}");
}

#[test]
fn lfu_ages_out_keys_that_were_hot_long_ago() {
    let mut pair = Pair::new(NamespaceConfig {
        max_entries: 20,
        eviction: Eviction::Lfu,
        ..config()
    });
    let _ = pair.apply(&put(b"old", b"v"), 0);
    for now in 0..50 {
        let _ = pair.apply(&get(b"old"), now);
    }
    // New keys, each read three times: with ageing their priority passes
    // the old key's 51 once enough evictions raised the age.
    let mut gone_at = None;
    for i in 0..2000u64 {
        let key = format!("new{i}").into_bytes();
        let _ = pair.apply(&put(&key, b"v"), 100 + i);
        for _ in 0..3 {
            let _ = pair.apply(&get(&key), 100 + i);
        }
        if !keys_of(&pair.owner, 0).contains(&b"old".to_vec()) {
            gone_at = Some(i);
            break;
        }
    }
    assert!(gone_at.is_some(), "the once-hot key stayed forever");
    assert!(pair.identical());
}

#[test]
fn an_expired_entry_makes_room_before_a_live_one_is_evicted() {
    // 2 owned entries at most.
    let mut pair = Pair::new(NamespaceConfig {
        max_entries: 4,
        ..config()
    });
    let _ = pair.apply(&put(b"old", b"v"), 0);
    let short = CacheOp::Put {
        key: b"short".to_vec(),
        value: b"v".to_vec(),
        ttl_ms: Some(10),
        condition: PutCondition::Always,
        keep_ttl: false,
        return_old: false,
    };
    let _ = pair.apply(&short, 1);
    let applied = pair.apply(&put(b"new", b"v"), 20);
    let kinds: Vec<(EventKind, Vec<u8>)> = applied
        .events
        .iter()
        .map(|e| (e.kind, e.key.clone()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (EventKind::Put, b"new".to_vec()),
            (EventKind::Expire, b"short".to_vec())
        ]
    );
    assert_eq!(
        keys_of(&pair.owner, 0),
        vec![b"new".to_vec(), b"old".to_vec()],
        "the least recent live key stays"
    );
    assert_eq!(
        (
            pair.owner.metrics().evictions,
            pair.owner.metrics().expirations
        ),
        (0, 1)
    );
    assert!(pair.identical());
}

#[test]
fn the_key_just_written_is_never_its_own_victim() {
    let mut pair = Pair::new(NamespaceConfig {
        max_entries: 2,
        eviction: Eviction::Lfu,
        ..config()
    });
    let _ = pair.apply(&put(b"a", b"1"), 0);
    for now in 0..5 {
        let _ = pair.apply(&get(b"a"), now);
    }
    let applied = pair.apply(&put(b"b", b"1"), 6);
    assert_eq!(
        applied
            .events
            .iter()
            .find(|e| e.kind == EventKind::Evict)
            .map(|e| e.key.clone()),
        Some(b"a".to_vec())
    );
    assert_eq!(keys_of(&pair.owner, 0), vec![b"b".to_vec()]);
}

#[test]
fn flushing_a_partition_removes_every_key_on_owner_and_backup() {
    let mut pair = Pair::new(config());
    for key in [b"a", b"b", b"c"] {
        let _ = pair.apply(&put(key, b"v"), 0);
    }
    let effects = pair.owner.flush_partition(0).unwrap();
    assert_eq!(effects.events.len(), 3);
    assert!(effects.events.iter().all(|e| e.kind == EventKind::Remove));
    for change in effects.changes {
        pair.backup.apply_change(change).unwrap();
    }
    assert!(pair.backup.partition_state(0).is_empty());
    assert!(pair.identical());
    assert_eq!(pair.owner.metrics().owned_entries, 0);
    assert_eq!(
        pair.backup.flush_partition(0),
        Err(ReplicaError::NotOwned(0))
    );
    assert_eq!(
        pair.backup.flush_partition(9),
        Err(ReplicaError::NotHeld(9))
    );
}

// ---- expiry ----

#[test]
fn the_sweep_is_bounded_and_removes_the_oldest_deadlines_first() {
    let mut pair = Pair::new(config());
    for i in 0..10u64 {
        let op = CacheOp::Put {
            key: format!("k{i}").into_bytes(),
            value: b"v".to_vec(),
            ttl_ms: Some(100 - i),
            condition: PutCondition::Always,
            keep_ttl: false,
            return_old: false,
        };
        let _ = pair.apply(&op, 0);
    }
    let _ = pair.apply(&put(b"forever", b"v"), 0);
    assert_eq!(pair.owner.next_expiry(), Some(91));
    assert!(pair.expire(90, 100).changes.is_empty());
    let first = pair.expire(200, 4);
    let keys: Vec<Vec<u8>> = first.events.iter().map(|e| e.key.clone()).collect();
    assert_eq!(
        keys,
        vec![
            b"k9".to_vec(),
            b"k8".to_vec(),
            b"k7".to_vec(),
            b"k6".to_vec()
        ]
    );
    assert!(first.events.iter().all(|e| e.kind == EventKind::Expire));
    let rest = pair.expire(200, 100);
    assert_eq!(rest.events.len(), 6);
    assert_eq!(keys_of(&pair.owner, 0), vec![b"forever".to_vec()]);
    assert_eq!(pair.owner.next_expiry(), None);
    assert!(pair.identical());
}

#[test]
fn max_idle_expires_untouched_entries_and_restarts_on_promotion() {
    let config = NamespaceConfig {
        max_idle_ms: Some(100),
        ..config()
    };
    let mut pair = Pair::new(config);
    let _ = pair.apply(&put(b"read", b"v"), 0);
    let _ = pair.apply(&put(b"idle", b"v"), 0);
    let _ = pair.apply(&get(b"read"), 80);
    assert_eq!(pair.owner.next_expiry(), Some(100));
    let swept = pair.expire(150, 10);
    assert_eq!(
        swept
            .events
            .iter()
            .map(|e| e.key.clone())
            .collect::<Vec<_>>(),
        vec![b"idle".to_vec()]
    );
    assert_eq!(keys_of(&pair.owner, 0), vec![b"read".to_vec()]);
    assert!(pair.identical());

    // The owner fails at 170; the backup, promoted at 175, counts idle time
    // from its promotion: "read" lives until 275, not 180.
    let mut promoted = pair.backup;
    let effects = promoted.promote(0, 2, 175).unwrap();
    assert!(effects.changes.is_empty());
    assert!(promoted.expire(250, 10).events.is_empty());
    assert_eq!(
        promoted
            .apply(0, &get(b"read"), 274)
            .reply
            .map(|r| matches!(r, CacheReply::Value(Some(_)))),
        Ok(true)
    );
    assert_eq!(promoted.expire(374, 10).events.len(), 1);
}

// ---- replication ----

#[test]
fn a_missed_change_is_a_gap_and_nothing_changes() {
    let mut owner = NamespaceStore::new(config());
    let mut backup = NamespaceStore::new(config());
    owner.create_partition(0, 1).unwrap();
    backup.open_backup(0).unwrap();
    let first = owner.apply(0, &put(b"a", b"1"), 0).changes;
    let second = owner.apply(0, &put(b"b", b"1"), 0).changes;
    let gap = backup.apply_change(second[0].clone()).unwrap_err();
    assert_eq!(
        gap,
        ReplicaError::Gap {
            partition: 0,
            held: Some(Position { term: 0, seq: 0 }),
            prev_term: 1,
            prev_seq: 1
        }
    );
    assert!(backup.partition_state(0).is_empty());
    backup.apply_change(first[0].clone()).unwrap();
    assert!(
        matches!(
            backup.apply_change(first[0].clone()),
            Err(ReplicaError::Gap { .. })
        ),
        "a repeat is a gap too"
    );
    backup.apply_change(second[0].clone()).unwrap();
    assert_eq!(backup.partition_state(0), owner.partition_state(0));
    assert_eq!(backup.partition_seq(0), Some(2));

    let mut stranger = NamespaceStore::new(config());
    assert!(matches!(
        stranger.apply_change(first[0].clone()),
        Err(ReplicaError::Gap { held: None, .. })
    ));
    assert_eq!(
        owner.apply_change(first[0].clone()),
        Err(ReplicaError::Owned(0))
    );
}

#[test]
fn a_backup_holding_a_failed_owners_unseen_writes_must_resync_with_the_new_owner() {
    // Owner O (term 1) and backups B1, B2. B2 gets one more change than B1
    // (asynchronous backups); O fails; B1 is promoted (term 2) and writes.
    let mut o = NamespaceStore::new(config());
    let mut b1 = NamespaceStore::new(config());
    let mut b2 = NamespaceStore::new(config());
    o.create_partition(0, 1).unwrap();
    b1.open_backup(0).unwrap();
    b2.open_backup(0).unwrap();
    let c1 = o.apply(0, &put(b"a", b"1"), 0).changes;
    let c2 = o.apply(0, &put(b"a", b"2"), 0).changes;
    for change in c1.iter().chain(&c2) {
        b2.apply_change(change.clone()).unwrap();
    }
    b1.apply_change(c1[0].clone()).unwrap();
    let _ = b1.promote(0, 2, 10).unwrap();
    let c3 = b1.apply(0, &put(b"b", b"3"), 10).changes;
    assert_eq!((c3[0].prev_term, c3[0].term, c3[0].seq), (1, 2, 2));
    assert!(
        matches!(
            b2.apply_change(c3[0].clone()),
            Err(ReplicaError::Gap { .. })
        ),
        "b2's seq 2 is O's, not b1's"
    );
    b2.import_partition(b1.export_partition(0).unwrap())
        .unwrap();
    assert_eq!(b2.partition_state(0), b1.partition_state(0));
    let c4 = b1.apply(0, &put(b"c", b"4"), 11).changes;
    b2.apply_change(c4[0].clone()).unwrap();
    assert_eq!(b2.partition_state(0), b1.partition_state(0));
}

#[test]
fn export_import_round_trips_and_chunks_interleave_with_changes() {
    let mut owner = NamespaceStore::new(config());
    owner.create_partition(7, 1).unwrap();
    for i in 0..50u64 {
        let op = CacheOp::Put {
            key: format!("key{i:02}").into_bytes(),
            value: vec![i as u8; 20],
            ttl_ms: (i % 3 == 0).then_some(1000 + i),
            condition: PutCondition::Always,
            keep_ttl: false,
            return_old: false,
        };
        let _ = owner.apply(7, &op, 0);
    }
    let mut copy = NamespaceStore::new(config());
    copy.import_partition(owner.export_partition(7).unwrap())
        .unwrap();
    assert_eq!(copy.partition_state(7), owner.partition_state(7));
    assert_eq!(copy.partition_position(7), owner.partition_position(7));
    assert_eq!(copy.metrics().bytes, owner.metrics().bytes);

    // Chunks of ~500 bytes while the owner keeps writing: everything goes
    // on one ordered stream.
    let mut receiver = NamespaceStore::new(config());
    let mut after: Option<Vec<u8>> = None;
    let mut chunks = 0;
    let mut now: u64 = 1;
    loop {
        let chunk = owner.export_chunk(7, after.as_deref(), 500).unwrap();
        chunks += 1;
        after = chunk.next_after.clone();
        receiver.import_chunk(chunk).unwrap();
        // Writes behind and ahead of the cursor, and a delete.
        now += 1;
        for op in [
            put(b"key00", &now.to_be_bytes()),
            put(b"key49", &now.to_be_bytes()),
            CacheOp::Delete {
                key: b"key25".to_vec(),
            },
        ] {
            for change in owner.apply(7, &op, now).changes {
                receiver.apply_change(change).unwrap();
            }
        }
        if after.is_none() {
            break;
        }
    }
    assert!(chunks > 3, "{chunks} chunks");
    assert_eq!(receiver.partition_state(7), owner.partition_state(7));

    // A chunk after missed changes is refused.
    let mut late = NamespaceStore::new(config());
    let first = owner.export_chunk(7, None, 500).unwrap();
    let next = first.next_after.clone();
    late.import_chunk(first).unwrap();
    let _ = owner.apply(7, &put(b"x", b"1"), now);
    let second = owner.export_chunk(7, next.as_deref(), 500).unwrap();
    assert!(matches!(
        late.import_chunk(second),
        Err(ReplicaError::Gap { .. })
    ));
    assert_eq!(
        late.import_partition(owner.export_partition(7).unwrap()),
        Ok(())
    );
    assert_eq!(
        owner.import_partition(late.export_partition(7).unwrap()),
        Err(ReplicaError::Owned(7))
    );
}

#[test]
fn roles_move_entries_in_and_out_of_the_owned_budget() {
    let mut store = NamespaceStore::new(config());
    store.create_partition(1, 1).unwrap();
    assert_eq!(
        store.create_partition(1, 1),
        Err(ReplicaError::AlreadyHeld(1))
    );
    let _ = store.apply(1, &put(b"k", b"v"), 0);
    assert_eq!(store.metrics().owned_entries, 1);
    store.demote(1).unwrap();
    assert_eq!(
        (store.metrics().owned_entries, store.metrics().entries),
        (0, 1)
    );
    assert_eq!(store.role(1), Some(PartitionRole::Backup));
    let _ = store.promote(1, 3, 5).unwrap();
    assert_eq!(store.metrics().owned_entries, 1);
    assert!(store.drop_partition(1));
    assert!(!store.drop_partition(1));
    assert_eq!(store.metrics(), Metrics::default());
    assert_eq!(store.promote(1, 3, 5), Err(ReplicaError::NotHeld(1)));
}

#[test]
fn promotion_over_budget_evicts_and_replicates_the_evictions() {
    let config = NamespaceConfig {
        max_entries: 6,
        ..config()
    };
    let mut store = NamespaceStore::new(config.clone());
    store.create_partition(0, 1).unwrap();
    let mut source = NamespaceStore::new(config);
    source.create_partition(1, 1).unwrap();
    for key in [b"a", b"b", b"c"] {
        let _ = store.apply(0, &put(key, b"v"), 0);
        let _ = source.apply(1, &put(key, b"v"), 0);
    }
    store
        .import_partition(source.export_partition(1).unwrap())
        .unwrap();
    assert_eq!(store.metrics().owned_entries, 3);
    let effects = store.promote(1, 2, 10).unwrap();
    assert_eq!(effects.events.len(), 3, "owned budget is 6 / 2 = 3");
    assert!(effects
        .events
        .iter()
        .all(|e| e.kind == EventKind::Evict && e.partition == 0));
    assert_eq!(store.metrics().owned_entries, 3);
}

// ---- model-based ----

/// The reference: a map per partition with Redis semantics, no bounds.
#[derive(Debug, Default)]
struct Model {
    entries: BTreeMap<Vec<u8>, ModelEntry>,
}

#[derive(Debug, Clone)]
struct ModelEntry {
    value: Vec<u8>,
    version: u64,
    expire_at: Option<u64>,
    last_access: u64,
}

impl Model {
    fn live(&mut self, key: &[u8], now: u64, config: &NamespaceConfig) -> Option<ModelEntry> {
        let entry = self.entries.get(key)?;
        let expired = entry.expire_at.is_some_and(|at| at <= now);
        let idle = config
            .max_idle_ms
            .is_some_and(|max| entry.last_access + max <= now);
        if expired || idle {
            self.entries.remove(key);
            return None;
        }
        let entry = self.entries.get_mut(key)?;
        entry.last_access = now;
        Some(entry.clone())
    }

    fn set(
        &mut self,
        key: &[u8],
        current: &Option<ModelEntry>,
        value: Vec<u8>,
        expire_at: Option<u64>,
        now: u64,
    ) -> u64 {
        let version = current.as_ref().map_or(1, |e| e.version + 1);
        self.entries.insert(
            key.to_vec(),
            ModelEntry {
                value,
                version,
                expire_at,
                last_access: now,
            },
        );
        version
    }

    fn apply(
        &mut self,
        op: &CacheOp,
        now: u64,
        config: &NamespaceConfig,
    ) -> Result<CacheReply, CacheError> {
        let key = op.key();
        let current = self.live(key, now, config);
        let version = current.as_ref().map_or(0, |e| e.version);
        let default_expiry = config.ttl_ms.map(|t| now + t);
        Ok(match op {
            CacheOp::Get { .. } => CacheReply::Value(current.map(|e| Versioned {
                value: e.value,
                version: e.version,
            })),
            CacheOp::Exists { .. } => CacheReply::Bool(current.is_some()),
            CacheOp::Strlen { .. } => CacheReply::Len(current.map_or(0, |e| e.value.len() as u64)),
            CacheOp::Ttl { .. } => CacheReply::Ttl(match current {
                None => TtlState::Absent,
                Some(ModelEntry {
                    expire_at: None, ..
                }) => TtlState::Persistent,
                Some(ModelEntry {
                    expire_at: Some(at),
                    ..
                }) => TtlState::Millis(at - now),
            }),
            CacheOp::Delete { .. } => CacheReply::Bool(self.entries.remove(key).is_some()),
            CacheOp::Put {
                value,
                ttl_ms,
                condition,
                keep_ttl,
                return_old,
                ..
            } => {
                let old = if *return_old {
                    current.as_ref().map(|e| e.value.clone())
                } else {
                    None
                };
                let holds = match condition {
                    PutCondition::Always => true,
                    PutCondition::IfAbsent => current.is_none(),
                    PutCondition::IfPresent => current.is_some(),
                    PutCondition::IfVersion(v) => version == *v,
                };
                if !holds {
                    return Ok(CacheReply::Stored {
                        stored: false,
                        version,
                        old,
                    });
                }
                let expire_at = match (ttl_ms, keep_ttl, &current) {
                    (Some(t), _, _) => Some(now + t),
                    (None, true, Some(e)) => e.expire_at,
                    _ => default_expiry,
                };
                let version = self.set(key, &current, value.clone(), expire_at, now);
                CacheReply::Stored {
                    stored: true,
                    version,
                    old,
                }
            }
            CacheOp::CompareAndSet {
                expected, value, ..
            } => match &current {
                Some(e) if e.value == *expected => {
                    let version = self.set(key, &current, value.clone(), e.expire_at, now);
                    CacheReply::Stored {
                        stored: true,
                        version,
                        old: None,
                    }
                }
                _ => CacheReply::Stored {
                    stored: false,
                    version,
                    old: current.map(|e| e.value),
                },
            },
            CacheOp::Incr { by, .. } => {
                let number = match &current {
                    None => 0,
                    Some(e) => {
                        let text = String::from_utf8(e.value.clone())
                            .map_err(|_| CacheError::NotInteger)?;
                        let n: i64 = text.parse().map_err(|_| CacheError::NotInteger)?;
                        if n.to_string() != text {
                            return Err(CacheError::NotInteger);
                        }
                        n
                    }
                };
                let result = number.checked_add(*by).ok_or(CacheError::Overflow)?;
                let expire_at = current.as_ref().map_or(default_expiry, |e| e.expire_at);
                self.set(
                    key,
                    &current,
                    result.to_string().into_bytes(),
                    expire_at,
                    now,
                );
                CacheReply::Integer(result)
            }
            CacheOp::Append { value, .. } => {
                let (mut joined, expire_at) =
                    current.as_ref().map_or((Vec::new(), default_expiry), |e| {
                        (e.value.clone(), e.expire_at)
                    });
                joined.extend_from_slice(value);
                let len = joined.len() as u64;
                self.set(key, &current, joined, expire_at, now);
                CacheReply::Len(len)
            }
            CacheOp::Expire { ttl_ms, .. } => match &current {
                None => CacheReply::Bool(false),
                Some(e) if ttl_ms.is_none() && e.expire_at.is_none() => CacheReply::Bool(false),
                Some(e) => {
                    self.set(key, &current, e.value.clone(), ttl_ms.map(|t| now + t), now);
                    CacheReply::Bool(true)
                }
            },
        })
    }

    fn sweep(&mut self, now: u64, config: &NamespaceConfig) {
        self.entries.retain(|_, e| {
            let expired = e.expire_at.is_some_and(|at| at <= now);
            let idle = config
                .max_idle_ms
                .is_some_and(|max| e.last_access + max <= now);
            !(expired || idle)
        });
    }

    fn state(&self) -> Vec<(Vec<u8>, EntryState)> {
        self.entries
            .iter()
            .map(|(k, e)| {
                (
                    k.clone(),
                    EntryState {
                        value: e.value.clone(),
                        version: e.version,
                        expire_at_ms: e.expire_at,
                    },
                )
            })
            .collect()
    }
}

#[derive(Debug, Clone)]
enum Step {
    Op(u32, CacheOp),
    Sweep,
}

fn step() -> impl Strategy<Value = (u64, Step)> {
    let key = prop::sample::select(vec![&b"a"[..], b"b", b"c", b"d"]).prop_map(<[u8]>::to_vec);
    let value = prop::sample::select(vec![
        &b"1"[..],
        b"-7",
        b"x",
        b"10",
        b"9223372036854775806",
        b"",
    ])
    .prop_map(<[u8]>::to_vec);
    let ttl = prop_oneof![2 => Just(None), 1 => (0u64..60).prop_map(Some)];
    let condition = prop_oneof![
        Just(PutCondition::Always),
        Just(PutCondition::IfAbsent),
        Just(PutCondition::IfPresent),
        (0u64..4).prop_map(PutCondition::IfVersion),
    ];
    let op = prop_oneof![
        3 => key.clone().prop_map(|key| CacheOp::Get { key }),
        4 => (key.clone(), value.clone(), ttl.clone(), condition, any::<bool>(), any::<bool>()).prop_map(
            |(key, value, ttl_ms, condition, keep_ttl, return_old)| CacheOp::Put { key, value, ttl_ms, condition, keep_ttl, return_old }
        ),
        1 => key.clone().prop_map(|key| CacheOp::Delete { key }),
        1 => key.clone().prop_map(|key| CacheOp::Exists { key }),
        2 => (key.clone(), -3i64..3).prop_map(|(key, by)| CacheOp::Incr { key, by }),
        1 => (key.clone(), value.clone(), value.clone()).prop_map(|(key, expected, value)| CacheOp::CompareAndSet { key, expected, value }),
        1 => (key.clone(), ttl).prop_map(|(key, ttl_ms)| CacheOp::Expire { key, ttl_ms }),
        1 => key.clone().prop_map(|key| CacheOp::Ttl { key }),
        1 => (key.clone(), value).prop_map(|(key, value)| CacheOp::Append { key, value }),
        1 => key.prop_map(|key| CacheOp::Strlen { key }),
    ];
    let step = prop_oneof![
        8 => (0u32..2, op).prop_map(|(p, op)| Step::Op(p, op)),
        1 => Just(Step::Sweep),
    ];
    (0u64..25, step)
}

fn namespace() -> impl Strategy<Value = NamespaceConfig> {
    (prop::option::of(20u64..80), prop::option::of(30u64..90)).prop_map(|(ttl_ms, max_idle_ms)| {
        NamespaceConfig {
            ttl_ms,
            max_idle_ms,
            ..config()
        }
    })
}

/// Drives an owner of partitions 0 and 1 and a backup fed its changes.
struct Replicated {
    owner: NamespaceStore,
    backup: NamespaceStore,
}

impl Replicated {
    fn new(config: NamespaceConfig) -> Self {
        let mut owner = NamespaceStore::new(config.clone());
        let mut backup = NamespaceStore::new(config);
        for p in 0..2 {
            owner.create_partition(p, 1).unwrap();
            backup.open_backup(p).unwrap();
        }
        Self { owner, backup }
    }

    fn feed(&mut self, changes: Vec<Change>) -> Result<(), TestCaseError> {
        for change in changes {
            self.backup
                .apply_change(change)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
        }
        Ok(())
    }

    fn check_identical(&self) -> Result<(), TestCaseError> {
        for p in 0..2 {
            prop_assert_eq!(
                self.owner.partition_state(p),
                self.backup.partition_state(p)
            );
            prop_assert_eq!(
                self.owner.partition_position(p),
                self.backup.partition_position(p)
            );
        }
        prop_assert_eq!(self.owner.metrics().bytes, self.backup.metrics().bytes);
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Random operations, sweeps and time steps against the model (no
    /// bounds reached): every reply and the whole state agree, and the
    /// backup fed the owner's changes is identical after every step.
    #[test]
    fn the_store_matches_the_model_and_the_backup_matches_the_store(
        config in namespace(),
        steps in proptest::collection::vec(step(), 1..80),
    ) {
        let mut replicated = Replicated::new(config.clone());
        let mut models = [Model::default(), Model::default()];
        let mut now = 1000;
        for (advance, step) in steps {
            now += advance;
            match step {
                Step::Op(p, op) => {
                    let applied = replicated.owner.apply(p, &op, now);
                    let expected = models[p as usize].apply(&op, now, &config);
                    prop_assert_eq!(&applied.reply, &expected, "{:?} at {}", op, now);
                    prop_assert_eq!(applied.changes.len(), applied.events.len(), "one event per change");
                    replicated.feed(applied.changes)?;
                }
                Step::Sweep => {
                    let effects = replicated.owner.expire(now, usize::MAX);
                    prop_assert!(effects.events.iter().all(|e| e.kind == EventKind::Expire));
                    for model in &mut models {
                        model.sweep(now, &config);
                    }
                    prop_assert_eq!(replicated.owner.next_expiry().is_none_or(|at| at > now), true);
                    replicated.feed(effects.changes)?;
                }
            }
            for p in 0..2u32 {
                prop_assert_eq!(replicated.owner.partition_state(p), models[p as usize].state());
            }
            replicated.check_identical()?;
        }
    }

    /// With small bounds, LRU or LFU, and partial sweeps: the owner never
    /// exceeds its budget after an operation, and the backup stays
    /// identical through evictions and expiries.
    #[test]
    fn bounds_hold_and_backups_mirror_evictions_and_expiries(
        lfu in any::<bool>(),
        max_entries in 2u64..10,
        ttl_ms in prop::option::of(20u64..80),
        steps in proptest::collection::vec(step(), 1..120),
        budget in 1usize..4,
    ) {
        let config = NamespaceConfig {
            max_entries,
            max_memory: 2 * (64 + 256 + ENTRY_OVERHEAD) + 600,
            eviction: if lfu { Eviction::Lfu } else { Eviction::Lru },
            ttl_ms,
            ..config()
        }.validate().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut replicated = Replicated::new(config.clone());
        let mut now = 0;
        for (advance, step) in steps {
            now += advance;
            let changes = match step {
                Step::Op(p, op) => replicated.owner.apply(p, &op, now).changes,
                Step::Sweep => replicated.owner.expire(now, budget).changes,
            };
            replicated.feed(changes)?;
            let metrics = replicated.owner.metrics();
            prop_assert!(metrics.owned_entries <= config.owned_entry_budget(), "{:?}", metrics);
            prop_assert!(metrics.owned_bytes <= config.owned_memory_budget(), "{:?}", metrics);
            replicated.check_identical()?;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Changes lost on the way to a backup (a dropped message) are always
    /// detected: the backup only ever holds a state the owner had at the
    /// backup's position, and after a re-sync on the first gap it is
    /// identical again.
    #[test]
    fn lost_changes_are_detected_and_a_resync_repairs_the_backup(
        steps in proptest::collection::vec((step(), any::<bool>()), 1..80),
    ) {
        let config = NamespaceConfig { max_entries: 8, ..config() };
        let mut owner = NamespaceStore::new(config.clone());
        let mut backup = NamespaceStore::new(config);
        owner.create_partition(0, 1).unwrap();
        backup.open_backup(0).unwrap();
        let mut history: BTreeMap<u64, Vec<(Vec<u8>, EntryState)>> = BTreeMap::new();
        history.insert(0, Vec::new());
        let mut now = 0;
        for ((advance, step), lose) in steps {
            now += advance;
            let changes = match step {
                Step::Op(_, op) => owner.apply(0, &op, now).changes,
                Step::Sweep => owner.expire(now, 2).changes,
            };
            history.insert(owner.partition_seq(0).unwrap_or(0), owner.partition_state(0));
            for (i, change) in changes.into_iter().enumerate() {
                if lose && i == 0 {
                    continue;
                }
                if let Err(error) = backup.apply_change(change) {
                    let is_gap = matches!(error, ReplicaError::Gap { .. });
                    prop_assert!(is_gap, "{}", error);
                    backup.import_partition(owner.export_partition(0).unwrap()).unwrap();
                    break;
                }
            }
            let seq = backup.partition_seq(0).unwrap_or(0);
            // The owner's state after each of its operations is recorded;
            // a backup between two of them (some of an operation's changes
            // applied) is checked at the next operation boundary it reaches.
            if let Some(state) = history.get(&seq) {
                prop_assert_eq!(&backup.partition_state(0), state, "backup at seq {}", seq);
            }
        }
        prop_assert_eq!(owner.partition_state(0).len() <= 4, true, "owned budget 8 / 2");
    }
}
