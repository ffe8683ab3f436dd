//! The linearizability checker accepts what a register could have done and
//! rejects the classic anomalies (stale read, lost write, doubled write, CAS
//! that wins twice, read of a value nobody wrote); random linearizable
//! histories all pass and detectably broken mutations of them all fail.
//!
//! Seeds: `CLUSTRON_SEED=s` replays one; `CLUSTRON_SEEDS=n` runs n per test.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::collections::HashMap;
use std::time::Instant;

use clustron_tests::linearizability::{
    check, check_with_budget, load, save, Call, History, Operation, Outcome, Ret, Value, Violation,
};
use clustron_tests::sim::run_seeds;

// ---------------------------------------------------------------------------
// Building histories by hand

fn ok(client: u64, key: &str, call: Call, ret: Ret, invoked: u64, completed: u64) -> Operation {
    Operation {
        client,
        key: key.into(),
        call,
        invoked,
        outcome: Outcome::Ok { ret, completed },
    }
}

fn put(client: u64, value: Value, invoked: u64, completed: u64) -> Operation {
    ok(client, "k", Call::Put(value), Ret::Put, invoked, completed)
}

fn get(client: u64, value: Option<Value>, invoked: u64, completed: u64) -> Operation {
    ok(client, "k", Call::Get, Ret::Get(value), invoked, completed)
}

fn cas(
    client: u64,
    expect: Option<Value>,
    new: Value,
    swapped: bool,
    invoked: u64,
    completed: u64,
) -> Operation {
    ok(
        client,
        "k",
        Call::Cas { expect, new },
        Ret::Cas(swapped),
        invoked,
        completed,
    )
}

fn delete(client: u64, invoked: u64, completed: u64) -> Operation {
    ok(client, "k", Call::Delete, Ret::Delete, invoked, completed)
}

fn with_outcome(mut operation: Operation, outcome: Outcome) -> Operation {
    operation.outcome = outcome;
    operation
}

fn assert_linearizable(history: &[Operation]) {
    if let Err(violation) = check(history) {
        panic!("expected linearizable, got: {violation}");
    }
}

/// Asserts a violation on `key` and returns its explanation.
fn assert_violation(history: &[Operation], key: &str) -> String {
    match check(history) {
        Ok(report) => panic!("expected a violation, but the history passed: {report:?}"),
        Err(Violation::NotLinearizable {
            key: bad,
            explanation,
        }) => {
            assert_eq!(bad, key, "wrong key blamed:\n{explanation}");
            explanation
        }
        Err(other) => panic!("expected NotLinearizable, got: {other}"),
    }
}

// ---------------------------------------------------------------------------
// Accepted histories

#[test]
fn a_sequential_history_is_linearizable() {
    let history = [
        get(1, None, 0, 1),
        put(1, 1, 2, 3),
        get(2, Some(1), 4, 5),
        cas(2, Some(1), 2, true, 6, 7),
        cas(1, Some(1), 3, false, 8, 9),
        get(1, Some(2), 10, 11),
        delete(2, 12, 13),
        get(1, None, 14, 15),
        cas(1, None, 4, true, 16, 17),
        get(2, Some(4), 18, 19),
    ];
    let report = check(&history).unwrap();
    assert_eq!(report.keys, 1);
    assert_eq!(report.operations, history.len());
    assert_eq!(report.unknown, 0);
}

#[test]
fn an_empty_history_is_linearizable() {
    let report = check(&[]).unwrap();
    assert_eq!((report.keys, report.operations), (0, 0));
}

#[test]
fn a_read_overlapping_a_write_may_see_the_old_or_the_new_value() {
    assert_linearizable(&[put(1, 1, 0, 10), get(2, None, 5, 15)]);
    assert_linearizable(&[put(1, 1, 0, 10), get(2, Some(1), 5, 15)]);
    // Two reads inside one write: the first may see it and the second not
    // only if they overlap each other too.
    assert_linearizable(&[
        put(1, 1, 0, 100),
        get(2, Some(1), 10, 20),
        get(3, None, 15, 30),
    ]);
}

#[test]
fn concurrent_writes_may_take_effect_in_either_order() {
    let writes = [put(1, 1, 0, 10), put(2, 2, 5, 15)];
    for last in [1, 2] {
        let mut history = writes.to_vec();
        history.push(get(3, Some(last), 20, 25));
        history.push(get(1, Some(last), 30, 35));
        assert_linearizable(&history);
    }
}

#[test]
fn an_operation_invoked_when_another_completes_counts_as_concurrent() {
    // Equal timestamps do not prove an order, so the read may precede the put.
    assert_linearizable(&[put(1, 1, 0, 10), get(2, None, 10, 12)]);
}

#[test]
fn an_unknown_write_that_took_effect_is_accepted() {
    let history = [
        with_outcome(put(1, 1, 0, 0), Outcome::Unknown),
        get(2, None, 5, 6),
        get(2, Some(1), 100, 101),
        get(3, Some(1), 200, 201),
    ];
    let report = check(&history).unwrap();
    assert_eq!(report.unknown, 1);
}

#[test]
fn an_unknown_write_that_never_took_effect_is_accepted() {
    let history = [
        with_outcome(put(1, 1, 0, 0), Outcome::Unknown),
        with_outcome(cas(1, None, 2, false, 1, 1), Outcome::Unknown),
        get(2, None, 5, 6),
        put(3, 3, 10, 11),
        get(2, Some(3), 100, 101),
    ];
    assert_linearizable(&history);
}

#[test]
fn an_unknown_write_takes_effect_only_after_it_was_invoked() {
    let history = [
        get(2, Some(1), 0, 5),
        with_outcome(put(1, 1, 10, 10), Outcome::Unknown),
    ];
    assert_violation(&history, "k");
}

#[test]
fn failed_operations_are_ignored() {
    let history = [
        with_outcome(put(1, 1, 0, 0), Outcome::Failed),
        get(2, None, 5, 6),
    ];
    let report = check(&history).unwrap();
    assert_eq!(report.operations, 1);
}

#[test]
fn operations_recorded_by_many_threads_check_like_any_history() {
    let history = History::new();
    assert!(history.is_empty());
    std::thread::scope(|scope| {
        for client in 0..4u64 {
            let history = history.clone();
            scope.spawn(move || {
                let key = format!("key-{client}");
                for round in 0..100u64 {
                    let value = client * 1000 + round;
                    let time = round * 10;
                    let op = history.invoke(client, &key, Call::Put(value), time);
                    history.complete(
                        op,
                        Outcome::Ok {
                            ret: Ret::Put,
                            completed: time + 1,
                        },
                    );
                    let op = history.invoke(client, &key, Call::Get, time + 2);
                    history.complete(
                        op,
                        Outcome::Ok {
                            ret: Ret::Get(Some(value)),
                            completed: time + 3,
                        },
                    );
                }
                // Sent, never answered: counts as unknown.
                history.invoke(client, &key, Call::Delete, 5000);
            });
        }
    });
    assert_eq!(history.len(), 4 * 201);
    let report = check(&history.operations()).unwrap();
    assert_eq!(report.keys, 4);
    assert_eq!(report.unknown, 4);
}

// ---------------------------------------------------------------------------
// Rejected histories

#[test]
fn a_stale_read_is_rejected() {
    let history = [put(1, 1, 0, 10), put(1, 2, 20, 30), get(2, Some(1), 40, 50)];
    let explanation = assert_violation(&history, "k");
    // The explanation names the read that could not be placed, with times.
    assert!(
        explanation.contains("#2 client 2 Get invoked 40 -> 1 completed 50"),
        "{explanation}"
    );
    // With the values the reader knows, although nobody reads 2.
    assert!(
        explanation.contains("(the register would answer 2)"),
        "{explanation}"
    );
}

#[test]
fn a_lost_write_is_rejected() {
    // The put of 2 completed, but a later read sees the value before it.
    let history = [
        put(1, 1, 0, 10),
        put(2, 2, 20, 30),
        get(3, Some(1), 40, 50),
        get(3, Some(1), 60, 70),
    ];
    assert_violation(&history, "k");
    // Same with the lost write acknowledged while the read was pending: the
    // read overlaps it, but a second read after it still sees 1.
    let history = [
        put(1, 1, 0, 10),
        put(2, 2, 20, 30),
        get(3, Some(1), 25, 35),
        get(3, Some(1), 40, 50),
    ];
    assert_violation(&history, "k");
}

#[test]
fn a_double_applied_write_is_rejected() {
    // The shape of a retried write applied twice: put 1, put 2 completes,
    // then 1 reappears with no other writer of 1.
    let history = [
        put(1, 1, 0, 10),
        put(2, 2, 20, 30),
        get(3, Some(2), 35, 40),
        get(3, Some(1), 45, 50),
    ];
    assert_violation(&history, "k");
}

#[test]
fn a_cas_that_succeeds_twice_from_the_same_expected_value_is_rejected() {
    let history = [
        put(1, 1, 0, 10),
        cas(2, Some(1), 2, true, 20, 30),
        cas(3, Some(1), 3, true, 20, 30),
    ];
    assert_violation(&history, "k");
}

#[test]
fn a_read_of_a_value_nobody_wrote_is_rejected() {
    let history = [put(1, 1, 0, 10), get(2, Some(7), 5, 15)];
    assert_violation(&history, "k");
}

#[test]
fn a_read_of_a_failed_write_is_rejected() {
    let history = [
        with_outcome(put(1, 1, 0, 0), Outcome::Failed),
        get(2, Some(1), 5, 6),
    ];
    assert_violation(&history, "k");
}

#[test]
fn a_read_of_a_deleted_key_is_rejected() {
    let history = [put(1, 1, 0, 10), delete(1, 20, 30), get(2, Some(1), 40, 50)];
    assert_violation(&history, "k");
}

#[test]
fn keys_are_independent_registers() {
    // The value 1 was written to "a"; seeing it on "b" is a violation of "b".
    let history = [
        ok(1, "a", Call::Put(1), Ret::Put, 0, 10),
        ok(2, "b", Call::Get, Ret::Get(Some(1)), 20, 30),
        ok(2, "a", Call::Get, Ret::Get(Some(1)), 20, 30),
    ];
    assert_violation(&history, "b");
}

#[test]
fn a_tiny_budget_gives_an_inconclusive_answer_not_a_verdict() {
    let history: Vec<Operation> = (0..50).map(|i| put(i, i, 0, 100)).collect();
    match check_with_budget(&history, 10) {
        Err(Violation::Inconclusive { key, steps }) => {
            assert_eq!(key, "k");
            assert!(steps > 10);
        }
        other => panic!("expected Inconclusive, got {other:?}"),
    }
    assert!(check(&history).is_ok());
}

#[test]
#[should_panic(expected = "completed at 5, before it was invoked at 10")]
fn an_operation_completed_before_it_was_invoked_is_a_caller_bug() {
    let _ = check(&[put(1, 1, 10, 5)]);
}

#[test]
#[should_panic(expected = "cannot return")]
fn a_return_of_the_wrong_kind_is_a_caller_bug() {
    let _ = check(&[ok(1, "k", Call::Get, Ret::Put, 0, 1)]);
}

#[test]
fn a_saved_history_loads_back_unchanged() {
    let history = [
        put(1, 1, 0, 10),
        with_outcome(put(2, 2, 5, 5), Outcome::Unknown),
        with_outcome(delete(3, 6, 6), Outcome::Failed),
        cas(4, None, 3, false, 20, 30),
        get(2, Some(1), 40, 50),
    ];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("history.jsonl");
    save(&history, &path).unwrap();
    assert_eq!(load(&path).unwrap(), history);
    std::fs::write(&path, "{\"not\": \"an operation\"}\n").unwrap();
    let error = load(&path).unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidData);
    assert!(error.to_string().contains("history.jsonl:1"), "{error}");
}

// ---------------------------------------------------------------------------
// Random histories

/// What happened to a generated operation.
#[derive(Clone, Copy, PartialEq)]
enum Fate {
    Answered,
    /// Recorded as unknown; `applied` says whether the register really
    /// applied it.
    Unknown {
        applied: bool,
    },
    /// Recorded as failed; never applied.
    Failed,
}

/// Shape of a random history.
#[derive(Debug)]
struct Shape {
    operations: usize,
    keys: usize,
    clients: u64,
    unknown: f64,
    failed: f64,
}

/// A random linearizable history: each client issues one operation at a
/// time; each operation takes effect at a random instant inside its
/// interval, and the results come from a real register applied in that
/// order. Values are unique per write.
fn linearizable_history(rng: &mut fastrand::Rng, shape: &Shape) -> Vec<Operation> {
    struct Pending {
        operation: Operation,
        takes_effect: u64,
        fate: Fate,
    }
    let per_client = shape.operations.div_ceil(shape.clients as usize);
    let mut pending = Vec::with_capacity(shape.operations);
    for client in 0..shape.clients {
        let mut now = rng.u64(0..100);
        for _ in 0..per_client {
            if pending.len() == shape.operations {
                break;
            }
            let invoked = now;
            let takes_effect = invoked + rng.u64(0..=100);
            let completed = takes_effect + rng.u64(0..=100);
            now = completed + rng.u64(0..=20);
            let call = match rng.u8(0..10) {
                0..=3 => Call::Get,
                4..=6 => Call::Put(0),
                7..=8 => Call::Cas {
                    expect: None,
                    new: 0,
                },
                _ => Call::Delete,
            };
            let roll = rng.f64();
            let fate = if roll < shape.unknown {
                Fate::Unknown {
                    applied: rng.bool(),
                }
            } else if roll < shape.unknown + shape.failed {
                Fate::Failed
            } else {
                Fate::Answered
            };
            let key = format!("key-{}", rng.usize(0..shape.keys));
            pending.push(Pending {
                operation: Operation {
                    client,
                    key,
                    call,
                    invoked,
                    outcome: Outcome::Ok {
                        ret: Ret::Delete,
                        completed,
                    },
                },
                takes_effect,
                fate,
            });
        }
    }
    // Apply in the order the operations took effect; ties in any order.
    pending.sort_by_key(|p| (p.takes_effect, p.operation.client));
    let mut registers: HashMap<String, Option<Value>> = HashMap::new();
    let mut written: HashMap<String, Vec<Value>> = HashMap::new();
    let mut next_value: Value = 1;
    for p in &mut pending {
        let key = p.operation.key.clone();
        let state = registers.get(&key).copied().flatten();
        // Choose the written value / CAS expectation now that the state is
        // known, so that some CAS succeed and some fail.
        match &mut p.operation.call {
            Call::Put(value) => {
                *value = next_value;
                next_value += 1;
            }
            Call::Cas { expect, new } => {
                *new = next_value;
                next_value += 1;
                let old = written.get(&key).filter(|w| !w.is_empty());
                *expect = match (rng.u8(0..4), old) {
                    (0 | 1, _) => state,
                    (2, Some(old)) => Some(old[rng.usize(0..old.len())]),
                    _ => None,
                };
            }
            Call::Get | Call::Delete => {}
        }
        if let Call::Put(value) | Call::Cas { new: value, .. } = p.operation.call {
            written.entry(key.clone()).or_default().push(value);
        }
        let (ret, next) = register(state, &p.operation.call);
        let applied = match p.fate {
            Fate::Answered => true,
            Fate::Unknown { applied } => applied,
            Fate::Failed => false,
        };
        if applied {
            registers.insert(key, next);
        }
        match p.fate {
            Fate::Answered => {
                if let Outcome::Ok { ret: r, .. } = &mut p.operation.outcome {
                    *r = ret;
                }
            }
            Fate::Unknown { .. } => p.operation.outcome = Outcome::Unknown,
            Fate::Failed => p.operation.outcome = Outcome::Failed,
        }
    }
    let mut history: Vec<Operation> = pending.into_iter().map(|p| p.operation).collect();
    // Present them as a recorder would: in invocation order.
    history.sort_by_key(|o| (o.invoked, o.client));
    history
}

/// The register, written independently of the checker's model.
fn register(state: Option<Value>, call: &Call) -> (Ret, Option<Value>) {
    match *call {
        Call::Get => (Ret::Get(state), state),
        Call::Put(value) => (Ret::Put, Some(value)),
        Call::Cas { expect, new } => {
            if state == expect {
                (Ret::Cas(true), Some(new))
            } else {
                (Ret::Cas(false), state)
            }
        }
        Call::Delete => (Ret::Delete, None),
    }
}

fn completed(operation: &Operation) -> Option<u64> {
    match operation.outcome {
        Outcome::Ok { completed, .. } => Some(completed),
        _ => None,
    }
}

/// The value `operation` certainly wrote if it was answered: a put, or a
/// CAS that swapped.
fn certainly_wrote(operation: &Operation) -> Option<Option<Value>> {
    match (&operation.call, &operation.outcome) {
        (Call::Put(value), Outcome::Ok { .. }) => Some(Some(*value)),
        (
            Call::Cas { new, .. },
            Outcome::Ok {
                ret: Ret::Cas(true),
                ..
            },
        ) => Some(Some(*new)),
        (Call::Delete, Outcome::Ok { .. }) => Some(None),
        _ => None,
    }
}

/// The value any write operation (whatever its outcome) would write.
fn would_write(operation: &Operation) -> Option<Value> {
    match operation.call {
        Call::Put(value) | Call::Cas { new: value, .. } => Some(value),
        _ => None,
    }
}

/// Changes one answered read so that no linearization can explain it, and
/// says how. `None` if the history offers no such read.
///
/// Each mutation relies on values being unique per write:
/// - a value nobody ever wrote;
/// - a value from the future: its only writer was invoked after the read
///   completed;
/// - a stale value: its writer completed, then another write completed,
///   all before the read was invoked.
fn break_a_read(rng: &mut fastrand::Rng, history: &mut [Operation]) -> Option<String> {
    let reads: Vec<usize> = (0..history.len())
        .filter(|&i| {
            history[i].call == Call::Get && matches!(history[i].outcome, Outcome::Ok { .. })
        })
        .collect();
    if reads.is_empty() {
        return None;
    }
    for _ in 0..100 {
        let read = reads[rng.usize(0..reads.len())];
        let (key, invoked) = (history[read].key.clone(), history[read].invoked);
        let read_completed = completed(&history[read])?;
        let same_key = |o: &&Operation| o.key == key;
        let (value, how) = match rng.u8(0..3) {
            0 => (u64::MAX - 1, "a value nobody wrote".to_owned()),
            1 => {
                let Some(writer) = history
                    .iter()
                    .filter(same_key)
                    .filter(|o| o.invoked > read_completed)
                    .find_map(would_write)
                else {
                    continue;
                };
                (writer, format!("{writer}, written only after the read"))
            }
            _ => {
                let writes: Vec<&Operation> = history
                    .iter()
                    .filter(same_key)
                    .filter(|o| certainly_wrote(o).is_some())
                    .collect();
                let stale = writes.iter().find_map(|w| {
                    let value = certainly_wrote(w).flatten()?;
                    let w_completed = completed(w)?;
                    writes
                        .iter()
                        .any(|x| {
                            x.invoked > w_completed
                                && completed(x).is_some_and(|c| c < invoked)
                                && certainly_wrote(x) != Some(Some(value))
                        })
                        .then_some(value)
                });
                let Some(value) = stale else {
                    continue;
                };
                (value, format!("{value}, overwritten before the read"))
            }
        };
        if let Outcome::Ok { ret, .. } = &mut history[read].outcome {
            *ret = Ret::Get(Some(value));
        }
        return Some(format!("read #{read} now returns {how}"));
    }
    None
}

fn random_shape(rng: &mut fastrand::Rng) -> Shape {
    Shape {
        operations: rng.usize(50..1500),
        keys: rng.usize(1..5),
        clients: rng.u64(1..9),
        unknown: [0.0, 0.01, 0.05][rng.usize(0..3)],
        failed: [0.0, 0.02][rng.usize(0..2)],
    }
}

/// Saves a history that made a test fail, for `check_history`; says where.
fn keep(history: &[Operation], seed: u64, what: &str) -> String {
    let path = std::env::temp_dir().join(format!("clustron-lin-{what}-{seed}.jsonl"));
    match save(history, &path) {
        Ok(()) => format!(
            "saved to {0}; re-check with `cargo run -p clustron-tests --example check_history -- {0}`",
            path.display()
        ),
        Err(error) => format!("could not save it to {}: {error}", path.display()),
    }
}

#[test]
fn random_linearizable_histories_pass_and_broken_reads_in_them_are_caught() {
    let name = "random_linearizable_histories_pass_and_broken_reads_in_them_are_caught";
    run_seeds(name, 40, |seed| {
        eprintln!("{name}: seed {seed}");
        let mut rng = fastrand::Rng::with_seed(seed);
        let shape = random_shape(&mut rng);
        eprintln!("{name}: seed {seed}: {shape:?}");
        let mut history = linearizable_history(&mut rng, &shape);
        if let Err(violation) = check(&history) {
            let saved = keep(&history, seed, "linearizable");
            panic!("a linearizable history was rejected ({saved}): {violation}");
        }
        let Some(how) = break_a_read(&mut rng, &mut history) else {
            return;
        };
        match check(&history) {
            Err(Violation::NotLinearizable { .. }) => {}
            other => {
                let saved = keep(&history, seed, "broken");
                panic!("{how}, yet the checker said {other:?} ({saved})")
            }
        }
    });
}

#[test]
fn with_many_unknown_outcomes_valid_histories_pass_and_broken_ones_are_never_accepted() {
    // Many unknown outcomes (10-30%) can make a broken history too costly to
    // refute within a small budget: Inconclusive is then an acceptable
    // answer, acceptance never is.
    let name = "with_many_unknown_outcomes_valid_histories_pass_and_broken_ones_are_never_accepted";
    run_seeds(name, 20, |seed| {
        let mut rng = fastrand::Rng::with_seed(seed);
        let shape = Shape {
            operations: rng.usize(50..600),
            keys: rng.usize(1..3),
            clients: rng.u64(1..10),
            unknown: [0.1, 0.2, 0.3][rng.usize(0..3)],
            failed: 0.02,
        };
        eprintln!("{name}: seed {seed}: {shape:?}");
        let mut history = linearizable_history(&mut rng, &shape);
        if let Err(violation) = check(&history) {
            let saved = keep(&history, seed, "linearizable");
            panic!("a linearizable history was rejected ({saved}): {violation}");
        }
        let Some(how) = break_a_read(&mut rng, &mut history) else {
            return;
        };
        match check_with_budget(&history, 1_000_000) {
            Err(Violation::NotLinearizable { .. }) => {}
            Err(Violation::Inconclusive { steps, .. }) => {
                eprintln!("{name}: seed {seed}: {how}: inconclusive after {steps} steps");
            }
            Ok(report) => {
                let saved = keep(&history, seed, "broken");
                panic!("{how}, yet the checker accepted it: {report:?} ({saved})")
            }
        }
    });
}

#[test]
fn twenty_thousand_operations_on_five_keys_check_quickly() {
    let name = "twenty_thousand_operations_on_five_keys_check_quickly";
    run_seeds(name, 1, |seed| {
        eprintln!("{name}: seed {seed}");
        let mut rng = fastrand::Rng::with_seed(seed);
        let shape = Shape {
            operations: 20_000,
            keys: 5,
            clients: 10,
            unknown: 0.01,
            failed: 0.0,
        };
        let history = linearizable_history(&mut rng, &shape);
        let start = Instant::now();
        let report = check(&history).unwrap();
        // Printed, not asserted: time is never asserted in a test.
        eprintln!("{name}: {report:?} in {:?}", start.elapsed());
        assert_eq!(report.operations, 20_000);
    });
}

#[test]
fn a_hundred_thousand_operations_on_one_key_need_no_deep_recursion() {
    let name = "a_hundred_thousand_operations_on_one_key_need_no_deep_recursion";
    run_seeds(name, 1, |seed| {
        eprintln!("{name}: seed {seed}");
        let mut rng = fastrand::Rng::with_seed(seed);
        let shape = Shape {
            operations: 100_000,
            keys: 1,
            clients: 4,
            unknown: 0.001,
            failed: 0.0,
        };
        let history = linearizable_history(&mut rng, &shape);
        let start = Instant::now();
        let report = check(&history).unwrap();
        eprintln!("{name}: {report:?} in {:?}", start.elapsed());
        assert_eq!(report.keys, 1);
    });
}
