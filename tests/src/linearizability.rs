//! A linearizability checker for key-value histories.
//!
//! # What it checks
//!
//! Clients record every operation they issue on a key-value store (a
//! [`History`]): what they asked ([`Call`]), when they asked (`invoked`), and
//! what came back and when ([`Outcome`]). [`check`] decides whether some
//! total order of the operations exists that (a) respects real time — an
//! operation that completed before another was invoked comes first — and
//! (b) is a legal run of a sequential model: one register per key, starting
//! absent, with `Get`, `Put`, compare-and-set and `Delete`. If none exists
//! the store broke linearizability (a stale read, a lost or doubled write, a
//! CAS that won twice...), and the [`Violation`] says which key and which
//! operations could not be ordered.
//!
//! Times come from whatever clock the caller uses (nanoseconds since start
//! for real processes, virtual time in a simulation); only their order
//! matters. An operation invoked at the very instant another completed
//! counts as concurrent with it (the lenient reading: equal timestamps on a
//! coarse clock do not prove an order).
//!
//! # Algorithm
//!
//! Keys are independent registers, so the history is split per key and each
//! sub-history checked alone (P-compositionality, Herlihy & Wing 1990: a
//! history is linearizable iff every key's sub-history is). Each key is then
//! searched as in Wing & Gong (1993) with Lowe's memoisation ("Testing for
//! linearizability", 2017), the shape Porcupine and Knossos use:
//!
//! - call and return events, sorted by time, sit in a doubly linked list;
//! - a depth-first search repeatedly picks an operation whose call comes
//!   before the first remaining return (so nothing that must precede it is
//!   still pending), applies it to the model, and "lifts" its two events out
//!   of the list; reaching a return event means the operation it ends should
//!   have been placed already, so the search backtracks;
//! - a cache of (set of linearized operations, model state) pairs already
//!   explored prunes the search: two paths reaching the same pair have the
//!   same future.
//!
//! The search keeps its own stack, so a history of 100 000 operations needs
//! no deep recursion. The cache stores 128-bit Zobrist fingerprints (XOR of
//! one random 128-bit word per linearized operation, and one for the
//! state) instead of bitsets: 16 bytes per entry whatever the history
//! length, updated in O(1) per step. Two different configurations share a
//! fingerprint with probability about 2^-128 per pair; such a collision
//! could only prune a branch wrongly, i.e. report a violation that is not
//! there — never accept a bad history.
//!
//! # Unknown and failed outcomes
//!
//! - [`Outcome::Failed`] means the operation definitely did not take effect
//!   (refused before applying, never sent): it is dropped.
//! - [`Outcome::Unknown`] (a timeout, a lost connection, a client that never
//!   heard back) may or may not have taken effect, at any time after it was
//!   invoked. Following Porcupine, it is treated as returning at +infinity
//!   with any return value accepted: an operation that never took effect is
//!   equivalent to one linearized after everything else, so this one rule
//!   covers both cases. An unknown `Get` changes nothing and constrains
//!   nothing, so it is dropped outright.
//!
//! Done naively, unknown operations make a broken history very costly to
//! refute: the search tries every subset of them at every point. Three
//! exact reductions (they never change a verdict; the reasoning is on the
//! functions) keep that in check: unknown operations are placed only where
//! their effect is observed, in a canonical order (the search's rules);
//! the cache also skips a configuration when one with a subset of its
//! unknown operations placed was explored (dominance); and written values
//! that nobody ever observes are merged into one, so unknown writes of them
//! are interchangeable.
//!
//! # Cost and limits
//!
//! Linearizable histories check in about linear time: 20 000 operations
//! over 5 keys with 10 clients and 1% unknown outcomes take tens of
//! milliseconds (test profile), 100 000 on one key a few hundred. Deciding
//! linearizability is NP-complete, though, and a *broken* history with many
//! unknown outcomes (10% or more, with many clients on one key) can still
//! need more steps than the budget: [`check_with_budget`] then answers
//! [`Violation::Inconclusive`] instead of running forever, and [`check`]'s
//! default budget ([`DEFAULT_MAX_STEPS_PER_KEY`]) is about a second of
//! search per key. Treat `Inconclusive` as a failure to look at: [`save`]
//! the history and re-check it with a larger budget
//! (`cargo run -p clustron-tests --example check_history -- FILE STEPS`).
//!
//! # Example
//!
//! ```
//! use clustron_tests::linearizability::{check, Call, History, Outcome, Ret};
//!
//! let history = History::new();
//! let put = history.invoke(1, "k", Call::Put(7), 0);
//! let get = history.invoke(2, "k", Call::Get, 5); // overlaps the put
//! history.complete(get, Outcome::Ok { ret: Ret::Get(Some(7)), completed: 8 });
//! history.complete(put, Outcome::Ok { ret: Ret::Put, completed: 10 });
//! let report = check(&history.operations()).expect("the read may follow the put");
//! assert_eq!(report.operations, 2);
//!
//! // The put completed at 10; a read invoked later still seeing "absent" is stale.
//! let stale = history.invoke(3, "k", Call::Get, 20);
//! history.complete(stale, Outcome::Ok { ret: Ret::Get(None), completed: 21 });
//! let violation = check(&history.operations()).expect_err("stale read");
//! println!("{violation}"); // names the key and the operations involved
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::{self, Write as _};
use std::hash::{BuildHasherDefault, Hasher};
use std::io::{self, BufRead, BufWriter, Write};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde::{Deserialize, Serialize};

/// A value written to a key. Callers map their values to unique `u64`s (for
/// instance by parsing `"v123"`); unique values make violations easier to
/// read but are not required for correctness.
pub type Value = u64;

/// What a client asked of one key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Call {
    /// A linearizable read of the key.
    Get,
    /// Set the key to the value.
    Put(Value),
    /// Compare-and-set: if the key currently holds `expect` (`None` = absent),
    /// set it to `new`.
    Cas {
        /// The value the key must hold for the swap to happen; `None` = absent.
        expect: Option<Value>,
        /// The value written if the comparison succeeds.
        new: Value,
    },
    /// Remove the key.
    Delete,
}

/// What the store answered; the variant must match the [`Call`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Ret {
    /// The value read, `None` if the key was absent.
    Get(Option<Value>),
    /// The put was applied.
    Put,
    /// Whether the compare-and-set swapped.
    Cas(bool),
    /// The delete was applied.
    Delete,
}

/// How an operation ended, as far as the client knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The store answered.
    Ok {
        /// The answer.
        ret: Ret,
        /// When the answer was seen, on the same clock as `invoked`.
        completed: u64,
    },
    /// Definitely not applied (refused, never sent, known lost): the
    /// operation is dropped from the history.
    Failed,
    /// May or may not have taken effect, at any time after it was invoked.
    Unknown,
}

/// One operation of a history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    /// Who issued it (for the reader of a violation; the checker uses times
    /// only).
    pub client: u64,
    /// The key it touched.
    pub key: String,
    /// What was asked.
    pub call: Call,
    /// When it was sent.
    pub invoked: u64,
    /// How it ended.
    pub outcome: Outcome,
}

/// A thread-safe recorder of operations: clone it into every client task.
///
/// Times are whatever clock the caller uses (ns since start for real
/// processes, virtual ns in a simulation), as long as all clients share it.
#[derive(Clone, Default, Debug)]
pub struct History {
    operations: Arc<Mutex<Vec<Operation>>>,
}

impl History {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `client` sent `call` on `key` at time `at`; returns the
    /// handle to pass to [`History::complete`]. Until completed, the
    /// operation's outcome is [`Outcome::Unknown`].
    pub fn invoke(&self, client: u64, key: &str, call: Call, at: u64) -> usize {
        let mut operations = self.lock();
        operations.push(Operation {
            client,
            key: key.to_owned(),
            call,
            invoked: at,
            outcome: Outcome::Unknown,
        });
        operations.len() - 1
    }

    /// Records how operation `op` ended. A later call for the same handle
    /// replaces the outcome.
    ///
    /// # Panics
    ///
    /// If `op` is not a handle from [`History::invoke`], or the outcome
    /// completes before the operation was invoked (a caller bug, reported
    /// here where the stack trace still points at it).
    pub fn complete(&self, op: usize, outcome: Outcome) {
        let mut operations = self.lock();
        let count = operations.len();
        let Some(operation) = operations.get_mut(op) else {
            panic!("History::complete: no operation {op}; only {count} were invoked");
        };
        operation.outcome = outcome;
        let operation = operation.clone();
        drop(operations);
        validate_operation(op, &operation);
    }

    /// A copy of every operation so far, in invocation order of the calls
    /// to [`History::invoke`]; those never completed are
    /// [`Outcome::Unknown`].
    pub fn operations(&self) -> Vec<Operation> {
        self.lock().clone()
    }

    /// How many operations were invoked.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no operation was invoked yet.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Operation>> {
        // A panicking client thread leaves the vector consistent (each
        // mutation is a single push or assignment), so poison is ignored.
        self.operations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// What a successful check covered.
#[derive(Debug, Clone)]
pub struct Report {
    /// Distinct keys in the history.
    pub keys: usize,
    /// Operations checked (all but the [`Outcome::Failed`] ones).
    pub operations: usize,
    /// Of those, how many had an [`Outcome::Unknown`] outcome.
    pub unknown: usize,
    /// Search steps (model transitions tried), summed over keys: a measure
    /// of how hard the history was to check.
    pub steps: u64,
}

/// Why a history is not linearizable, or could not be decided.
#[derive(Debug, Clone)]
pub enum Violation {
    /// No linearization exists for this key's sub-history.
    NotLinearizable {
        /// The key whose sub-history failed (the first in key order).
        key: String,
        /// For a human: the longest linearizable prefix the search found and
        /// the operations that could not be placed after it, with times.
        explanation: String,
    },
    /// The search for this key ran out of its step budget.
    Inconclusive {
        /// The key whose search was cut off.
        key: String,
        /// Steps spent on it.
        steps: u64,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::NotLinearizable { key, explanation } => {
                write!(
                    f,
                    "the history of key {key:?} is not linearizable\n{explanation}"
                )
            }
            Violation::Inconclusive { key, steps } => write!(
                f,
                "could not decide whether the history of key {key:?} is linearizable within \
                 {steps} search steps; save it and re-check with a larger budget \
                 (check_with_budget)"
            ),
        }
    }
}

impl std::error::Error for Violation {}

/// Step budget per key used by [`check`]: about ten times what a
/// linearizable history of 100 000 operations on one key needs (about one
/// step per operation plus a few per concurrent neighbour), and low enough
/// that a pathological history gives up within a second or two with a cache
/// of at most a few hundred MB.
pub const DEFAULT_MAX_STEPS_PER_KEY: u64 = 10_000_000;

/// Checks that `history` is linearizable, key by key, with
/// [`DEFAULT_MAX_STEPS_PER_KEY`].
///
/// # Panics
///
/// On a malformed history: an operation completed before it was invoked, or
/// a return that does not match its call (`Get` answered with `Ret::Put`).
pub fn check(history: &[Operation]) -> Result<Report, Violation> {
    check_with_budget(history, DEFAULT_MAX_STEPS_PER_KEY)
}

/// [`check`] with an explicit step budget per key; a key whose search needs
/// more steps gives [`Violation::Inconclusive`]. Keys are checked in sorted
/// order and the first failing one is reported.
///
/// # Panics
///
/// As [`check`].
pub fn check_with_budget(
    history: &[Operation],
    max_steps_per_key: u64,
) -> Result<Report, Violation> {
    for (index, operation) in history.iter().enumerate() {
        validate_operation(index, operation);
    }
    let mut report = Report {
        keys: 0,
        operations: 0,
        unknown: 0,
        steps: 0,
    };
    for (key, indices) in split_by_key(history) {
        report.keys += 1;
        report.operations += indices.len();
        report.unknown += indices
            .iter()
            .filter(|&&i| history[i].outcome == Outcome::Unknown)
            .count();
        let operations = key_operations(history, &indices);
        match search(&operations, max_steps_per_key) {
            SearchResult::Linearizable { steps } => report.steps += steps,
            SearchResult::OutOfBudget { steps } => {
                return Err(Violation::Inconclusive {
                    key: key.to_owned(),
                    steps,
                })
            }
            SearchResult::NotLinearizable { deepest } => {
                return Err(Violation::NotLinearizable {
                    key: key.to_owned(),
                    explanation: explain(history, &operations, &deepest),
                })
            }
        }
    }
    Ok(report)
}

/// Writes `history` to `path` as JSON lines, one [`Operation`] per line, so
/// a failing history can be kept and re-checked offline with [`load`].
pub fn save(history: &[Operation], path: &Path) -> io::Result<()> {
    let mut out = BufWriter::new(std::fs::File::create(path)?);
    for operation in history {
        serde_json::to_writer(&mut out, operation)?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

/// Reads a history written by [`save`]. Blank lines are skipped; a line that
/// is not an [`Operation`] is an [`io::ErrorKind::InvalidData`] error naming
/// the file and line.
pub fn load(path: &Path) -> io::Result<Vec<Operation>> {
    let file = io::BufReader::new(std::fs::File::open(path)?);
    let mut history = Vec::new();
    for (number, line) in file.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let operation = serde_json::from_str(&line).map_err(|error| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}:{}: not an operation: {error}",
                    path.display(),
                    number + 1
                ),
            )
        })?;
        history.push(operation);
    }
    Ok(history)
}

/// Panics on a caller bug: a completion before the invocation, or a return
/// of the wrong kind for the call.
fn validate_operation(index: usize, operation: &Operation) {
    let Outcome::Ok { ret, completed } = &operation.outcome else {
        return;
    };
    assert!(
        *completed >= operation.invoked,
        "operation #{index} ({operation:?}) completed at {completed}, before it was invoked at \
         {}: the caller mixed clocks or swapped the times",
        operation.invoked
    );
    let matches = matches!(
        (&operation.call, ret),
        (Call::Get, Ret::Get(_))
            | (Call::Put(_), Ret::Put)
            | (Call::Cas { .. }, Ret::Cas(_))
            | (Call::Delete, Ret::Delete)
    );
    assert!(
        matches,
        "operation #{index} ({operation:?}): a {:?} cannot return {ret:?}",
        operation.call
    );
}

/// Indices of the operations of each key, failed ones left out, keys in
/// sorted order so that the reported violation is deterministic.
fn split_by_key(history: &[Operation]) -> BTreeMap<&str, Vec<usize>> {
    let mut keys: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (index, operation) in history.iter().enumerate() {
        if operation.outcome != Outcome::Failed {
            keys.entry(&operation.key).or_default().push(index);
        }
    }
    keys
}

/// One operation of a key's sub-history, as the search sees it.
#[derive(Debug, Clone)]
struct KeyOperation {
    /// Position in the caller's history (for explanations).
    index: usize,
    call: Call,
    /// `None` for an unknown outcome: any return is accepted.
    ret: Option<Ret>,
    invoked: u64,
    /// `None` for an unknown outcome: returns at +infinity.
    completed: Option<u64>,
}

/// The search's view of one key, with the written values nobody observes
/// merged (see [`unread_values_merged`]).
///
/// Unknown reads are left out: they change no state and any answer is
/// accepted, so they can always go last.
fn key_operations(history: &[Operation], indices: &[usize]) -> Vec<KeyOperation> {
    let operations: Vec<KeyOperation> = indices
        .iter()
        .filter_map(|&index| {
            let operation = &history[index];
            let (ret, completed) = match &operation.outcome {
                Outcome::Ok { ret, completed } => (Some(ret.clone()), Some(*completed)),
                Outcome::Unknown if operation.call == Call::Get => return None,
                Outcome::Unknown => (None, None),
                Outcome::Failed => return None,
            };
            Some(KeyOperation {
                index,
                call: operation.call.clone(),
                ret,
                invoked: operation.invoked,
                completed,
            })
        })
        .collect();
    unread_values_merged(operations)
}

/// Replaces every written value that no operation observes — no read
/// returns it, no CAS expects it — by one value, also observed by nobody.
///
/// This changes no verdict: the model only ever compares the state for
/// equality with observed values (a read's answer, a CAS's expectation), so
/// states holding two unobserved values behave identically from then on.
/// What it buys: unknown writes of unobserved values become identical
/// calls, i.e. twins under rule 4 of [`search`], instead of a pool of
/// distinct ways to make the register "anything but X" whose every subset
/// the search would otherwise try.
fn unread_values_merged(mut operations: Vec<KeyOperation>) -> Vec<KeyOperation> {
    let mut observed = HashSet::new();
    for operation in &operations {
        if let Some(Ret::Get(Some(value))) = operation.ret {
            observed.insert(value);
        }
        if let Call::Cas {
            expect: Some(value),
            ..
        } = operation.call
        {
            observed.insert(value);
        }
    }
    // Some value nobody observes: there are fewer observed values than u64s.
    let unread = (0..=u64::MAX)
        .rev()
        .find(|value| !observed.contains(value))
        .expect("fewer observed values than u64s");
    for operation in &mut operations {
        if let Call::Put(value) | Call::Cas { new: value, .. } = &mut operation.call {
            if !observed.contains(value) {
                *value = unread;
            }
        }
    }
    operations
}

/// The sequential model: one register, `None` = absent.
type State = Option<Value>;

/// Applies `call` to `state`: the state after it if `ret` is what the model
/// answers (any answer is accepted when `ret` is `None`), `None` if the
/// model could not have answered `ret`.
fn step(state: State, call: &Call, ret: Option<&Ret>) -> Option<State> {
    let (answer, next) = model(state, call);
    match ret {
        Some(ret) if *ret != answer => None,
        _ => Some(next),
    }
}

/// What the register answers to `call` in `state`, and its next state.
fn model(state: State, call: &Call) -> (Ret, State) {
    match call {
        Call::Get => (Ret::Get(state), state),
        Call::Put(value) => (Ret::Put, Some(*value)),
        Call::Cas { expect, new } if state == *expect => (Ret::Cas(true), Some(*new)),
        Call::Cas { .. } => (Ret::Cas(false), state),
        Call::Delete => (Ret::Delete, None),
    }
}

/// Call and return events sorted by time in a doubly linked list over a
/// vector (indices, not pointers), from which an operation's two events are
/// "lifted" when it is linearized and put back, in reverse order, when the
/// search backtracks (Knuth's dancing links).
struct EventList {
    nodes: Vec<Node>,
}

#[derive(Clone, Copy)]
struct Node {
    prev: u32,
    next: u32,
    /// Index into the key's operations; unused for the two sentinels.
    operation: u32,
    /// For a call event, the node of its return event; `None` for a return.
    return_node: Option<u32>,
}

const HEAD: u32 = 0;

impl EventList {
    fn new(operations: &[KeyOperation]) -> Self {
        // Sort key: ((at +infinity, time), is a return, operation). Unknown
        // returns sort after every finite time; calls before returns at one
        // instant make operations that touch there concurrent, the lenient
        // reading of equal timestamps.
        let mut events: Vec<((bool, u64), bool, u32)> = Vec::with_capacity(2 * operations.len());
        for (i, operation) in operations.iter().enumerate() {
            let i = u32::try_from(i).expect("fewer than 2^32 operations per key");
            events.push(((false, operation.invoked), false, i));
            let end = match operation.completed {
                Some(completed) => (false, completed),
                None => (true, operation.invoked),
            };
            events.push((end, true, i));
        }
        events.sort_unstable();
        // Node 0 is the head sentinel, node len+1 the tail sentinel; event
        // `position` is node `position + 1`.
        let count = u32::try_from(events.len()).expect("fewer than 2^31 operations per key");
        let mut return_of = vec![0u32; operations.len()];
        for (position, &(_, is_return, operation)) in (1..).zip(&events) {
            if is_return {
                return_of[operation as usize] = position;
            }
        }
        let mut nodes = Vec::with_capacity(events.len() + 2);
        nodes.push(Node {
            prev: HEAD,
            next: 1,
            operation: 0,
            return_node: None,
        });
        for (node, &(_, is_return, operation)) in (1..).zip(&events) {
            nodes.push(Node {
                prev: node - 1,
                next: node + 1,
                operation,
                return_node: (!is_return).then(|| return_of[operation as usize]),
            });
        }
        nodes.push(Node {
            prev: count,
            next: count + 1,
            operation: 0,
            return_node: None,
        });
        Self { nodes }
    }

    fn first(&self) -> u32 {
        self.nodes[HEAD as usize].next
    }

    fn next(&self, node: u32) -> u32 {
        self.nodes[node as usize].next
    }

    fn node(&self, node: u32) -> Node {
        self.nodes[node as usize]
    }

    #[cfg(test)]
    fn is_tail(&self, node: u32) -> bool {
        node as usize == self.nodes.len() - 1
    }

    /// Unlinks a call event and its return event.
    fn lift(&mut self, call: u32, ret: u32) {
        self.unlink(call);
        self.unlink(ret);
    }

    /// Undoes [`EventList::lift`]; lifts must be undone in reverse order.
    fn unlift(&mut self, call: u32, ret: u32) {
        self.relink(ret);
        self.relink(call);
    }

    fn unlink(&mut self, node: u32) {
        let Node { prev, next, .. } = self.nodes[node as usize];
        self.nodes[prev as usize].next = next;
        self.nodes[next as usize].prev = prev;
    }

    fn relink(&mut self, node: u32) {
        let Node { prev, next, .. } = self.nodes[node as usize];
        self.nodes[prev as usize].next = node;
        self.nodes[next as usize].prev = node;
    }
}

/// How the search of one key ended.
enum SearchResult {
    Linearizable { steps: u64 },
    NotLinearizable { deepest: DeadEnd },
    OutOfBudget { steps: u64 },
}

/// The deepest dead end the search hit: the explanation of a violation.
#[derive(Default)]
struct DeadEnd {
    /// Operations (key-local indices) of the longest linearizable prefix
    /// found, in linearization order.
    prefix: Vec<u32>,
    /// Operations whose call preceded the first pending return at that
    /// point: the only candidates for the next place, none of which led on.
    candidates: Vec<u32>,
    /// The operation whose return was reached, i.e. the one that had to be
    /// placed before anything invoked after it completed.
    blocking: u32,
}

/// Wing & Gong's search with Lowe's cache over one key's operations.
///
/// # Unknown operations
///
/// Tried naively, a failing history makes the search place every subset of
/// the pending unknown operations at every point, and most placements are
/// pointless (overwritten or never read before the next write). So the
/// search only builds linearizations in a canonical form, where an unknown
/// operation `U` is placed only where it matters:
///
/// 1. `U` changes the state (a CAS whose comparison fails is not placed);
/// 2. `U` is not directly followed by a blind write (put or delete), which
///    would erase its effect;
/// 3. `U` is not directly followed by an answered operation `X` that could
///    equally come first: `X` valid without `U`, and `X;U` ending in the
///    same state as `U;X` (a failed CAS whose comparison fails either way);
/// 4. of several unknown operations with the same call (two deletes, say),
///    the earliest invoked is placed first: they are interchangeable.
///
/// Any valid linearization can be rewritten into this form by moving
/// unknown operations later — past `X` (rule 3) or to the very end (rules 1
/// and 2), where they are always legal since they never return and accept
/// any answer — or by swapping twins (rule 4: the earlier-invoked twin is
/// legal wherever the later one was), so nothing is lost. Once every
/// answered operation is placed the search succeeds: the unknown ones left
/// go last.
///
/// # The cache
///
/// A configuration is the set of answered operations placed, the state,
/// the set of unknown operations placed, and — because rules 2 and 3 look
/// at it — the trailing unknown operation's call and the state before it,
/// if the last operation placed is unknown. A configuration is skipped if
/// an explored one *dominates* it: same answered set and state, a subset of
/// its unknown operations, and no trailing operation or the same one. Any
/// canonical completion of the dominated configuration completes the
/// dominating one too (the extra unknown operations go last; a twin of one
/// of them stands in for it under rule 4), so it was already tried. With
/// equal unknown sets this is Lowe's cache; the subset test is what keeps
/// the pointless placements of unknown operations from multiplying the
/// configurations, and it is why answered operations are tried before
/// unknown ones: the configuration with fewer unknown operations placed is
/// then explored first.
fn search(operations: &[KeyOperation], max_steps: u64) -> SearchResult {
    let mut list = EventList::new(operations);
    let fingerprints: Vec<u128> = (0..operations.len() as u64)
        .map(|i| fingerprint(OPERATION_SALT, i))
        .collect();
    let earlier_twins = earlier_twins(operations);
    let mut explored = Explored::default();
    // The current linearization: each entry is a lifted call node, and the
    // state and unknown set before it, to restore on backtracking.
    let mut stack: Vec<(u32, State, UnknownSet)> = Vec::new();
    let mut state: State = None;
    let mut answered: u128 = 0; // fingerprint of the answered operations placed
    let mut unknowns = UnknownSet::EMPTY;
    let mut placed = vec![false; operations.len()];
    let mut answered_left = operations.iter().filter(|o| o.ret.is_some()).count();
    let mut steps = 0u64;
    let mut deepest = DeepestTracker::default();
    // The scan over candidates runs twice per configuration: answered
    // operations first, then unknown ones.
    let mut unknown_pass = false;
    let mut node = list.first();
    while answered_left > 0 {
        let event = list.node(node);
        let Some(return_node) = event.return_node else {
            // The first return: every candidate comes before it.
            if !unknown_pass {
                unknown_pass = true;
                node = list.first();
                continue;
            }
            // Its operation had to be placed before anything later, and no
            // candidate led anywhere. Backtrack.
            deepest.observe(&list, &stack, node);
            let Some((call, previous, previous_unknowns)) = stack.pop() else {
                return SearchResult::NotLinearizable {
                    deepest: deepest.best,
                };
            };
            deepest.popped(stack.len());
            let lifted = list.node(call);
            // Invariant: the stack holds only call nodes, which have returns.
            let return_node = lifted.return_node.expect("a call node");
            list.unlift(call, return_node);
            let index = lifted.operation as usize;
            placed[index] = false;
            state = previous;
            unknowns = previous_unknowns;
            if operations[index].ret.is_some() {
                answered ^= fingerprints[index];
                answered_left += 1;
            }
            unknown_pass = operations[index].ret.is_none();
            node = list.next(call);
            continue;
        };
        // A call whose predecessors are all placed: a candidate.
        let index = event.operation as usize;
        let operation = &operations[index];
        let unknown = operation.ret.is_none();
        if unknown != unknown_pass {
            node = list.next(node);
            continue;
        }
        let trailing = trailing_unknown(operations, &list, &stack);
        let allowed = match trailing {
            Some((call, before)) => !needless_after_unknown(before, call, operation),
            None => true,
        } && earlier_twins[index].is_none_or(|twin| placed[twin as usize]); // rule 4
        if !allowed {
            node = list.next(node);
            continue;
        }
        steps += 1;
        if steps > max_steps {
            return SearchResult::OutOfBudget { steps };
        }
        let next = step(state, &operation.call, operation.ret.as_ref())
            .filter(|&next| !(unknown && next == state)); // rule 1
        if let Some(next) = next {
            let (next_answered, adding, trailing) = if unknown {
                let trailing = fingerprint_call(&operation.call)
                    ^ fingerprint_state(BEFORE_TRAILING_SALT, state);
                (answered, Some(index as u32), trailing)
            } else {
                (answered ^ fingerprints[index], None, NO_TRAILING)
            };
            let key = next_answered ^ fingerprint_state(STATE_SALT, next);
            if let Some(next_unknowns) = explored.insert(key, unknowns, adding, trailing, &placed) {
                stack.push((node, state, unknowns));
                state = next;
                answered = next_answered;
                unknowns = next_unknowns;
                placed[index] = true;
                answered_left -= usize::from(!unknown);
                list.lift(node, return_node);
                unknown_pass = false;
                node = list.first();
                continue;
            }
        }
        node = list.next(node);
    }
    SearchResult::Linearizable { steps }
}

/// The last operation placed, if it is unknown: its call and the state
/// before it (what rules 2 and 3 of [`search`] look at).
fn trailing_unknown<'a>(
    operations: &'a [KeyOperation],
    list: &EventList,
    stack: &[(u32, State, UnknownSet)],
) -> Option<(&'a Call, State)> {
    let &(top, before, _) = stack.last()?;
    let top = &operations[list.node(top).operation as usize];
    top.ret.is_none().then_some((&top.call, before))
}

/// A set of unknown operations placed, interned in [`Explored`]: a chain of
/// (parent set, operation added) links, so a configuration stores 4 bytes
/// for it and a subset test walks the chain.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct UnknownSet(u32);

impl UnknownSet {
    const EMPTY: Self = Self(u32::MAX);
}

/// "No trailing unknown operation" in a configuration. A real trailing
/// fingerprint is 0 with probability 2^-128.
const NO_TRAILING: u128 = 0;

/// The explored configurations (see "The cache" in [`search`]).
#[derive(Default)]
struct Explored {
    /// Configurations with no unknown operation placed (hence none
    /// trailing), by fingerprint of (answered set, state): these dominate
    /// every configuration with the same key.
    plain: HashSet<u128, BuildHasherDefault<FingerprintHasher>>,
    /// The others, by the same key: (trailing fingerprint, unknown set).
    others: HashMap<u128, Vec<(u128, UnknownSet)>, BuildHasherDefault<FingerprintHasher>>,
    /// The interned unknown sets: `links[id] = (parent, operation)`.
    links: Vec<(UnknownSet, u32)>,
}

impl Explored {
    /// Records the configuration (`key`, `unknowns` plus `adding`,
    /// `trailing`) unless an explored one dominates it. Returns its unknown
    /// set if it is new, `None` if dominated. `placed` marks the operations
    /// of the current path, which with `adding` are the configuration's
    /// unknown set as a bitmap, for the subset tests.
    fn insert(
        &mut self,
        key: u128,
        unknowns: UnknownSet,
        adding: Option<u32>,
        trailing: u128,
        placed: &[bool],
    ) -> Option<UnknownSet> {
        if self.plain.contains(&key) {
            return None;
        }
        if unknowns == UnknownSet::EMPTY && adding.is_none() {
            return self.plain.insert(key).then_some(UnknownSet::EMPTY);
        }
        let has = |op: usize| placed[op] || adding == Some(op as u32);
        let entries = self.others.entry(key).or_default();
        let dominated = entries.iter().any(|&(their_trailing, theirs)| {
            (their_trailing == NO_TRAILING || their_trailing == trailing)
                && Self::subset(&self.links, theirs, has)
        });
        if dominated {
            return None;
        }
        let set = match adding {
            Some(operation) => {
                let id =
                    u32::try_from(self.links.len()).expect("fewer than 2^32 unknown placements");
                self.links.push((unknowns, operation));
                UnknownSet(id)
            }
            None => unknowns,
        };
        entries.push((trailing, set));
        Some(set)
    }

    /// Whether every operation of `set` is in the set described by `has`.
    fn subset(
        links: &[(UnknownSet, u32)],
        mut set: UnknownSet,
        has: impl Fn(usize) -> bool,
    ) -> bool {
        while set != UnknownSet::EMPTY {
            let (parent, operation) = links[set.0 as usize];
            if !has(operation as usize) {
                return false;
            }
            set = parent;
        }
        true
    }
}

/// For rule 4 of [`search`]: for each unknown operation, the latest
/// unknown operation invoked before it with the same call, if any.
fn earlier_twins(operations: &[KeyOperation]) -> Vec<Option<u32>> {
    let mut order: Vec<u32> = (0..operations.len() as u32).collect();
    order.sort_by_key(|&i| (operations[i as usize].invoked, i));
    let mut last_with_call: HashMap<&Call, u32> = HashMap::new();
    let mut twins = vec![None; operations.len()];
    for i in order {
        let operation = &operations[i as usize];
        if operation.ret.is_none() {
            twins[i as usize] = last_with_call.insert(&operation.call, i);
        }
    }
    twins
}

/// Rules 2 and 3 of [`search`]: whether `next`, placed right after the
/// unknown operation `unknown` (itself placed in state `before`), makes a
/// linearization that is not in canonical form.
fn needless_after_unknown(before: State, unknown: &Call, next: &KeyOperation) -> bool {
    if matches!(next.call, Call::Put(_) | Call::Delete) {
        return true; // rule 2
    }
    if next.ret.is_none() {
        // Two unknown operations in a row: keep every order.
        return false;
    }
    // Rule 3: `next` could come first, with the same end state.
    let Some(next_first) = step(before, &next.call, next.ret.as_ref()) else {
        return false;
    };
    let (_, unknown_first) = model(before, unknown);
    let Some(as_placed) = step(unknown_first, &next.call, next.ret.as_ref()) else {
        return false; // the step fails anyway
    };
    model(next_first, unknown).1 == as_placed
}

/// Keeps a copy of the deepest dead end. Copying the whole stack at every
/// new maximum would be quadratic; instead only the part of the stack that
/// changed since the last copy (above its lowest point since then) is
/// copied, which totals at most one copy per push.
#[derive(Default)]
struct DeepestTracker {
    best: DeadEnd,
    /// Lowest stack depth since the last copy: `best.prefix[..low_water]`
    /// still equals the stack's bottom.
    low_water: usize,
    /// Whether anything was recorded yet (an empty prefix is a valid record).
    recorded: bool,
}

impl DeepestTracker {
    fn observe(&mut self, list: &EventList, stack: &[(u32, State, UnknownSet)], blocked_at: u32) {
        if self.recorded && stack.len() <= self.best.prefix.len() {
            return;
        }
        self.recorded = true;
        let keep = self.low_water.min(self.best.prefix.len());
        self.best.prefix.truncate(keep);
        self.best.prefix.extend(
            stack[keep..]
                .iter()
                .map(|&(call, ..)| list.node(call).operation),
        );
        self.low_water = stack.len();
        self.best.blocking = list.node(blocked_at).operation;
        self.best.candidates.clear();
        let mut node = list.first();
        while node != blocked_at {
            self.best.candidates.push(list.node(node).operation);
            node = list.next(node);
        }
    }

    fn popped(&mut self, depth: usize) {
        self.low_water = self.low_water.min(depth);
    }
}

/// Salts so that operation and state fingerprints come from different
/// pseudo-random sequences.
const OPERATION_SALT: u64 = 0x6c69_6e65_6172_697a;
const STATE_SALT: u64 = 0x7374_6174_6520_7632;
const ABSENT_SALT: u64 = 0x6162_7365_6e74_2121;
const PUT_SALT: u64 = 0x7075_7420_7632_2121;
const DELETE_SALT: u64 = 0x6465_6c65_7465_2121;
const CAS_SALT: u64 = 0x6361_7320_6e65_7721;
const CAS_EXPECT_SALT: u64 = 0x6361_7320_6578_7021;
const GET_SALT: u64 = 0x6765_7420_2121_2121;
const BEFORE_TRAILING_SALT: u64 = 0x6265_666f_7265_3f3f;

/// A pseudo-random 128-bit word for `x`: two SplitMix64 outputs. Distinct
/// `x` give distinct low halves (SplitMix64's mixer is a bijection).
fn fingerprint(salt: u64, x: u64) -> u128 {
    let mut seed = salt ^ x.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let low = splitmix64(&mut seed);
    let high = splitmix64(&mut seed);
    (u128::from(high) << 64) | u128::from(low)
}

/// A fingerprint of a call.
fn fingerprint_call(call: &Call) -> u128 {
    match call {
        Call::Get => fingerprint(GET_SALT, 0),
        Call::Put(value) => fingerprint(PUT_SALT, *value),
        Call::Cas { expect, new } => {
            fingerprint(CAS_SALT, *new) ^ fingerprint_state(CAS_EXPECT_SALT, *expect)
        }
        Call::Delete => fingerprint(DELETE_SALT, 0),
    }
}

/// A fingerprint of a state; `salt` tells apart the roles a state plays.
fn fingerprint_state(salt: u64, state: State) -> u128 {
    match state {
        Some(value) => fingerprint(salt, value),
        None => fingerprint(salt ^ ABSENT_SALT, 0),
    }
}

/// SplitMix64 (Steele, Lea, Flood 2014).
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The cache's keys are already uniformly random, so hashing them again
/// (SipHash by default) would only cost time: use their low 64 bits.
#[derive(Default)]
struct FingerprintHasher(u64);

impl Hasher for FingerprintHasher {
    fn write(&mut self, bytes: &[u8]) {
        // Not reached for u128 keys (they use write_u128); kept correct
        // anyway with FNV-1a.
        for &byte in bytes {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn write_u128(&mut self, value: u128) {
        self.0 = value as u64;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// How many operations of the prefix an explanation shows (its end).
const EXPLAIN_PREFIX_TAIL: usize = 12;
/// How many candidates an explanation lists at most.
const EXPLAIN_CANDIDATES: usize = 16;

/// A human-readable account of the deepest dead end.
///
/// The search ran on values with the unobserved ones merged; since that
/// changes no verdict, the prefix is replayed with the original calls, to
/// show the values the reader knows.
fn explain(history: &[Operation], operations: &[KeyOperation], dead_end: &DeadEnd) -> String {
    let mut text = String::new();
    let prefix = &dead_end.prefix;
    let _ = writeln!(
        text,
        "longest linearizable prefix: {} of {} operations (the register starts absent)",
        prefix.len(),
        operations.len()
    );
    let shown = prefix.len().saturating_sub(EXPLAIN_PREFIX_TAIL);
    if shown > 0 {
        let _ = writeln!(text, "  ... {shown} earlier operations");
    }
    // Replay the prefix to show the state after each shown operation.
    let mut state: State = None;
    for (position, &operation) in prefix.iter().enumerate() {
        let operation = &operations[operation as usize];
        state = model(state, &history[operation.index].call).1;
        if position >= shown {
            let _ = writeln!(
                text,
                "  {}  => {}",
                describe(history, operation.index),
                describe_state(state)
            );
        }
    }
    let _ = writeln!(
        text,
        "after it the register holds {}, and none of these could be placed next:",
        describe_state(state)
    );
    for &candidate in dead_end.candidates.iter().take(EXPLAIN_CANDIDATES) {
        let operation = &operations[candidate as usize];
        let call = &history[operation.index].call;
        let why = match step(state, call, operation.ret.as_ref()) {
            None => match model(state, call).0 {
                Ret::Get(value) => format!("the register would answer {}", describe_state(value)),
                Ret::Cas(swapped) => format!("the CAS would return {swapped}"),
                // Invariant: validated puts and deletes match any state.
                Ret::Put | Ret::Delete => unreachable!("puts and deletes always apply"),
            },
            Some(_) => "placing it here leads only to dead ends".to_owned(),
        };
        let _ = writeln!(text, "  {}  ({why})", describe(history, operation.index));
    }
    if dead_end.candidates.len() > EXPLAIN_CANDIDATES {
        let _ = writeln!(
            text,
            "  ... and {} more",
            dead_end.candidates.len() - EXPLAIN_CANDIDATES
        );
    }
    let blocking = &operations[dead_end.blocking as usize];
    let _ = write!(
        text,
        "yet {} had to be placed before anything invoked after it completed",
        describe(history, blocking.index)
    );
    text
}

/// `#12 client 3 Put(5) invoked 100 -> Put completed 250`.
fn describe(history: &[Operation], index: usize) -> String {
    let operation = &history[index];
    let call = match &operation.call {
        Call::Get => "Get".to_owned(),
        Call::Put(value) => format!("Put({value})"),
        Call::Cas { expect, new } => format!("Cas({} -> {new})", describe_state(*expect)),
        Call::Delete => "Delete".to_owned(),
    };
    let outcome = match &operation.outcome {
        Outcome::Ok { ret, completed } => {
            let ret = match ret {
                Ret::Get(value) => describe_state(*value),
                Ret::Put | Ret::Delete => "ok".to_owned(),
                Ret::Cas(swapped) => swapped.to_string(),
            };
            format!("-> {ret} completed {completed}")
        }
        Outcome::Failed => "failed".to_owned(),
        Outcome::Unknown => "-> unknown outcome".to_owned(),
    };
    format!(
        "#{index} client {} {call} invoked {} {outcome}",
        operation.client, operation.invoked
    )
}

fn describe_state(state: State) -> String {
    match state {
        Some(value) => value.to_string(),
        None => "absent".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(client: u64, call: Call, ret: Ret, invoked: u64, completed: u64) -> Operation {
        Operation {
            client,
            key: "k".into(),
            call,
            invoked,
            outcome: Outcome::Ok { ret, completed },
        }
    }

    #[test]
    fn the_model_answers_like_a_register() {
        assert_eq!(model(None, &Call::Get), (Ret::Get(None), None));
        assert_eq!(model(None, &Call::Put(1)), (Ret::Put, Some(1)));
        let cas = Call::Cas {
            expect: None,
            new: 2,
        };
        assert_eq!(model(None, &cas), (Ret::Cas(true), Some(2)));
        assert_eq!(model(Some(1), &cas), (Ret::Cas(false), Some(1)));
        assert_eq!(model(Some(1), &Call::Delete), (Ret::Delete, None));
        assert_eq!(step(Some(1), &Call::Get, Some(&Ret::Get(Some(2)))), None);
        assert_eq!(step(Some(1), &cas, None), Some(Some(1)));
    }

    #[test]
    fn lifting_and_unlifting_restores_the_event_list() {
        let history = [
            ok(1, Call::Put(1), Ret::Put, 0, 10),
            ok(2, Call::Get, Ret::Get(Some(1)), 5, 15),
        ];
        let operations = key_operations(&history, &[0, 1]);
        let mut list = EventList::new(&operations);
        let order = |list: &EventList| {
            let mut node = list.first();
            let mut seen = Vec::new();
            while !list.is_tail(node) {
                let n = list.node(node);
                seen.push((n.operation, n.return_node.is_some()));
                node = list.next(node);
            }
            seen
        };
        let before = order(&list);
        assert_eq!(before, [(0, true), (1, true), (0, false), (1, false)]);
        let first = list.first();
        let ret = list.node(first).return_node.expect("call");
        list.lift(first, ret);
        assert_eq!(order(&list), [(1, true), (1, false)]);
        list.unlift(first, ret);
        assert_eq!(order(&list), before);
    }

    #[test]
    fn fingerprints_of_distinct_inputs_differ() {
        let mut seen = HashSet::new();
        for i in 0..10_000 {
            assert!(seen.insert(fingerprint(OPERATION_SALT, i)));
            assert!(seen.insert(fingerprint_state(STATE_SALT, Some(i))));
        }
        assert!(seen.insert(fingerprint_state(STATE_SALT, None)));
    }
}
