//! Real `clustron-dkv` processes under a nemesis, and every client history
//! checked for linearizability.
//!
//! `a_put_sent_to_a_leader_that_freezes_is_applied_exactly_once` is the
//! deterministic reproduction of a write applied twice: three nodes, n1
//! leads; both followers frozen (SIGSTOP); a put sent to n1; 300 ms later n1
//! frozen and the followers resumed, so n2 is elected with n1's uncommitted
//! entry (its appends waited in the followers' socket buffers) and commits
//! it. A client that sends the put again to n2 must not get it applied a
//! second time: the key's version must be 1.
//!
//! `histories_stay_linearizable_while_a_nemesis_kills_freezes_and_partitions_nodes`
//! runs, per scenario, a fresh cluster of 3 or 5 processes, concurrent
//! in-process clients (each with its own endpoint order) doing puts,
//! linearizable gets and compare-and-set transactions with unique values on
//! 5 keys, all recorded in a [`History`], and "set" clients adding unique
//! elements to a set kept in one key with CAS retry loops, while a nemesis
//! kills (`kill -9`) and restarts a random node, kills the leader, freezes
//! the leader (SIGSTOP/SIGCONT), partitions the nodes (in network namespaces;
//! skipped with a reason when not root), or a mix. At the end everything is
//! healed, resumed and restarted (`kill -9` of every node, then a start of
//! every node on its data), and final linearizable reads join the history.
//! It must be linearizable (which also covers lost acknowledged writes: the
//! final reads would contradict them), every set element acknowledged must
//! be there exactly once and none twice, and no client operation may outlive
//! its deadline. It prints, per run and in total: operations, the fraction
//! of unknown outcomes, and the client-observed failover time (from the
//! nemesis's kill, freeze or isolation of the leader to each client's next
//! successful write), p50 and p99, over all leader faults and over single
//! faults: those where the nodes the fault spared, counting only those back
//! from their own last fault for 2 s, made a majority (otherwise the
//! successor must wait for a node still restarting or catching up, and the
//! figure measures that node's recovery too). A failing run keeps its directory (node
//! logs, `history.jsonl`) and prints its path and the violation.
//!
//! Environment:
//! - `CLUSTRON_NEMESIS_SECS`: seconds of nemesis per run (default 10);
//! - `CLUSTRON_NEMESIS_RUNS`: runs of each scenario (default 1);
//! - `CLUSTRON_NEMESIS`: scenarios, comma-separated, of `kill-any`,
//!   `kill-leader`, `pause-leader`, `partition`, `mixed` (default: all);
//! - `CLUSTRON_NEMESIS_NODES`: cluster sizes, used in turn (default `3,5`);
//! - `CLUSTRON_NEMESIS_CLIENTS` / `CLUSTRON_NEMESIS_SET_CLIENTS`: register
//!   and set clients (default 8 and 2);
//! - `CLUSTRON_NEMESIS_KEEP`: when set, passing runs keep their directory
//!   too (failing runs always do);
//! - `CLUSTRON_CLIENT_LOG`: a file the clients' events go to (filtered by
//!   `RUST_LOG`, default `clustron_client=debug`): each attempt that failed,
//!   was slow or was moved to a new leader, and the topology followed;
//! - `CLUSTRON_SEED`: the first run's seed (printed; each further run adds
//!   one). The seed fixes the nemesis's and the clients' choices, not the
//!   processes' timing, so a replay repeats the schedule, not the history.
//!
//! The lead's long run: `CLUSTRON_NEMESIS_SECS=45 CLUSTRON_NEMESIS_RUNS=6
//! CLUSTRON_BIN_DIR=$CARGO_TARGET_DIR/release cargo test --release -p
//! clustron-tests --test nemesis -- --nocapture`.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clustron_client::kv::{Compare, CompareOp, CompareTarget, KvFailure, RequestOp, Txn};
use clustron_client::{Client, ClientError};
use clustron_tests::linearizability::{check, save, Call, History, Outcome, Ret};
use clustron_tests::procs::{
    eventually, holds_lease, is_root, leader_of, metric, ProcCluster, DEADLINE,
};
use clustron_transport::TlsIdentity;

/// The keys of the register workload.
const KEYS: usize = 5;

/// The key holding the set workload's elements, comma-separated.
const SET_KEY: &str = "nemesis/set";

/// Longest a single client operation may take before it counts as a hang:
/// the client retries for 10 s while no leader can serve, plus the attempt
/// under way then (a frozen node's connection is given up after the
/// client's idle timeout), with room to spare.
const OP_DEADLINE: Duration = Duration::from_secs(30);

fn register_key(k: usize) -> String {
    format!("nemesis/k{k}")
}

/// A runtime for the in-process clients.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A client of `endpoints` (tried in that order) with the cluster's admin
/// certificate.
fn client(
    runtime: &tokio::runtime::Runtime,
    dir: &Path,
    endpoints: Vec<std::net::SocketAddr>,
) -> Client {
    let identity = TlsIdentity::from_files(
        &dir.join("ca.pem"),
        &dir.join("admin.pem"),
        &dir.join("admin.key"),
    )
    .unwrap();
    runtime
        .block_on(async { Client::new(endpoints, identity) })
        .unwrap()
}

#[test]
fn a_put_sent_to_a_leader_that_freezes_is_applied_exactly_once() {
    let mut cluster = ProcCluster::start(3, false).unwrap();
    println!("nodes' directory: {}", cluster.dir().display());
    // The highest priority leads once every node sees it: a node slow to
    // start (a debug build on a loaded machine) can miss the first
    // election, and then takes its place back by handover.
    eventually("n1 leads", || {
        cluster
            .agreed_leader()
            .is_some_and(|(i, _)| i == 0 && holds_lease(cluster.admin(0)))
    });
    let runtime = runtime();
    let client = client(&runtime, cluster.dir(), cluster.endpoints());
    // The client's connection to n1 is open and n1 is its leader.
    runtime.block_on(client.put(b"warm-up", b"1")).unwrap();

    // Both followers frozen: n1 appends the put but cannot commit it.
    let n1_admin = cluster.admin(0);
    let last_index = metric(n1_admin, "clustron_kv_log_last_index").unwrap();
    cluster.stop(1);
    cluster.stop(2);
    let sent = Instant::now();
    let put = runtime.spawn({
        let client = client.clone();
        async move { client.put(b"probe", b"once").await }
    });
    eventually("n1 appended the put to its log", || {
        metric(n1_admin, "clustron_kv_log_last_index").is_some_and(|i| i > last_index)
    });
    // The reproduction's timing, not a synchronisation: 300 ms after the
    // send, n1 has sent (and resent) its appends, which wait in the frozen
    // followers' socket buffers.
    std::thread::sleep(
        (sent + Duration::from_millis(300)).saturating_duration_since(Instant::now()),
    );

    // n1 frozen in turn, the followers resumed: they take n1's entry and
    // elect n2, which commits it.
    cluster.stop(0);
    cluster.resume(1);
    cluster.resume(2);
    eventually("n2 and n3 elect n2", || {
        [1, 2]
            .iter()
            .all(|&i| leader_of(cluster.admin(i)).is_some_and(|(name, _)| name == "n2"))
            && holds_lease(cluster.admin(1))
    });
    let answer = runtime
        .block_on(async { tokio::time::timeout(OP_DEADLINE, put).await })
        .expect("the put ends within its deadline")
        .unwrap();
    println!("the put after {:?}: {answer:?}", sent.elapsed());
    cluster.resume(0);

    let kv = runtime.block_on(client.get(b"probe")).unwrap();
    println!("probe: {kv:?}");
    if let Some(kv) = &kv {
        assert_eq!(kv.value, b"once");
        assert_eq!(
            (kv.version, kv.create_revision),
            (1, kv.mod_revision),
            "one put applied more than once: version {}, create revision {}, mod revision {}",
            kv.version,
            kv.create_revision,
            kv.mod_revision
        );
    }
    let revision = answer.expect("the put succeeds once a leader serves");
    let kv = kv.expect("an acknowledged put is read back");
    assert_eq!(
        revision, kv.mod_revision,
        "the put was answered with another write's revision"
    );
    cluster.clean_up_on_drop();
}

/// What the nemesis does in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    /// `kill -9` of a random node, restarted after a while.
    KillAny,
    /// `kill -9` of the leader, restarted after a while.
    KillLeader,
    /// SIGSTOP of the leader, SIGCONT after a while.
    PauseLeader,
    /// The leader, or a random minority, cut off from the rest, healed
    /// after a while (network namespaces: root only).
    Partition,
    /// Any of the above, chosen at random each time (partitions only as
    /// root).
    Mixed,
}

impl Scenario {
    const ALL: [Scenario; 5] = [
        Scenario::KillAny,
        Scenario::KillLeader,
        Scenario::PauseLeader,
        Scenario::Partition,
        Scenario::Mixed,
    ];

    fn name(self) -> &'static str {
        match self {
            Scenario::KillAny => "kill-any",
            Scenario::KillLeader => "kill-leader",
            Scenario::PauseLeader => "pause-leader",
            Scenario::Partition => "partition",
            Scenario::Mixed => "mixed",
        }
    }
}

/// The run's settings, from the environment.
/// Sends the in-process clients' events to `path`, if given.
fn log_clients_to(path: Option<std::ffi::OsString>) {
    let Some(path) = path else { return };
    let file = std::fs::File::create(&path).unwrap();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("clustron_client=debug"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(file))
        .init();
    println!("client events: {}", std::path::Path::new(&path).display());
}

#[derive(Debug)]
struct Settings {
    duration: Duration,
    runs: usize,
    scenarios: Vec<Scenario>,
    sizes: Vec<usize>,
    clients: usize,
    set_clients: usize,
    seed: u64,
}

fn env_number<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(text) => text
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text:?} is not a number")),
        Err(_) => default,
    }
}

impl Settings {
    fn from_env() -> Settings {
        let scenarios = match std::env::var("CLUSTRON_NEMESIS") {
            Ok(list) if list != "all" => list
                .split(',')
                .map(|name| {
                    Scenario::ALL
                        .into_iter()
                        .find(|s| s.name() == name.trim())
                        .unwrap_or_else(|| panic!("CLUSTRON_NEMESIS: unknown scenario {name:?}"))
                })
                .collect(),
            _ => Scenario::ALL.to_vec(),
        };
        let sizes = std::env::var("CLUSTRON_NEMESIS_NODES")
            .unwrap_or_else(|_| "3,5".into())
            .split(',')
            .map(|n| {
                n.trim()
                    .parse()
                    .ok()
                    .filter(|n| (3..=9).contains(n))
                    .unwrap_or_else(|| panic!("CLUSTRON_NEMESIS_NODES: {n:?} is not in 3..=9"))
            })
            .collect();
        Settings {
            duration: Duration::from_secs(env_number("CLUSTRON_NEMESIS_SECS", 10)),
            runs: env_number("CLUSTRON_NEMESIS_RUNS", 1),
            scenarios,
            sizes,
            clients: env_number("CLUSTRON_NEMESIS_CLIENTS", 8),
            set_clients: env_number("CLUSTRON_NEMESIS_SET_CLIENTS", 2),
            seed: env_number("CLUSTRON_SEED", fastrand::u64(..)),
        }
    }
}

#[test]
fn histories_stay_linearizable_while_a_nemesis_kills_freezes_and_partitions_nodes() {
    let settings = Settings::from_env();
    println!("nemesis settings: {settings:?}");
    log_clients_to(std::env::var_os("CLUSTRON_CLIENT_LOG"));
    let runtime = runtime();
    let mut results = Vec::new();
    let mut index = 0;
    for _ in 0..settings.runs {
        for &scenario in &settings.scenarios {
            let nodes = settings.sizes[index % settings.sizes.len()];
            let seed = settings.seed.wrapping_add(index as u64);
            index += 1;
            if let Some(result) = run(&runtime, &settings, scenario, nodes, seed) {
                println!("{result}");
                results.push(result);
            }
        }
    }

    let ops: usize = results.iter().map(|r| r.ops).sum();
    let unknown: usize = results.iter().map(|r| r.unknown).sum();
    let samples: Vec<(Duration, bool)> = results.iter().flat_map(|r| r.failovers.clone()).collect();
    let (failovers, single) = failover_samples(&samples);
    let failed: Vec<&RunResult> = results.iter().filter(|r| !r.problems.is_empty()).collect();
    println!(
        "nemesis total: {} runs ({} failed), {ops} ops, unknown {:.2}%, failover {}; \
         single faults (the spared nodes back for {} s made a majority) {}",
        results.len(),
        failed.len(),
        percent(unknown, ops),
        percentiles(&failovers),
        SETTLED.as_secs(),
        percentiles(&single),
    );
    assert!(
        failed.is_empty(),
        "{} of {} nemesis runs failed:\n{}",
        failed.len(),
        results.len(),
        failed
            .iter()
            .map(|r| format!("{r}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

fn percent(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

/// "p50 X p99 Y (N samples)" of sorted durations.
fn percentiles(sorted: &[Duration]) -> String {
    if sorted.is_empty() {
        return "no samples".into();
    }
    let at = |p: usize| sorted[(sorted.len() - 1) * p / 100];
    format!(
        "p50 {:.2} s, p99 {:.2} s, max {:.2} s ({} samples)",
        at(50).as_secs_f64(),
        at(99).as_secs_f64(),
        sorted[sorted.len() - 1].as_secs_f64(),
        sorted.len()
    )
}

/// What one run found.
struct RunResult {
    scenario: Scenario,
    nodes: usize,
    seed: u64,
    ops: usize,
    unknown: usize,
    hangs: u64,
    cas: (usize, usize),
    /// Each with whether the fault was a single one ([`NemesisEvent::settled`]).
    failovers: Vec<(Duration, bool)>,
    /// (leader fault, client) pairs with no successful write after the
    /// fault, before the next one or the run's end.
    no_failover: usize,
    /// The longest time no client completed a write, and when it began.
    write_gap: (Duration, u64),
    leader_faults: usize,
    set: String,
    checked: String,
    problems: Vec<String>,
}

impl std::fmt::Display for RunResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (all, single) = failover_samples(&self.failovers);
        write!(
            f,
            "{} on {} nodes, seed {}: {} ops, unknown {:.2}%, {} hangs, CAS {} won / {} lost; \
             {} leader faults, failover {} (+{} with no write before the next fault or the end), \
             single faults {}, longest time without a write {:.2} s from {:.2} s; set: {}; \
             history: {}",
            self.scenario.name(),
            self.nodes,
            self.seed,
            self.ops,
            percent(self.unknown, self.ops),
            self.hangs,
            self.cas.0,
            self.cas.1,
            self.leader_faults,
            percentiles(&all),
            self.no_failover,
            percentiles(&single),
            self.write_gap.0.as_secs_f64(),
            self.write_gap.1 as f64 / 1e9,
            self.set,
            self.checked,
        )?;
        if !self.problems.is_empty() {
            write!(
                f,
                "\n  FAILED (replay the schedule: CLUSTRON_SEED={} CLUSTRON_NEMESIS={} \
                 CLUSTRON_NEMESIS_NODES={} CLUSTRON_NEMESIS_RUNS=1):\n  {}",
                self.seed,
                self.scenario.name(),
                self.nodes,
                self.problems.join("\n  ")
            )?;
        }
        Ok(())
    }
}

/// State the clients of a run share.
struct Shared {
    start: Instant,
    stop_at: Instant,
    next_value: AtomicU64,
    hangs: AtomicU64,
    foreign_values: AtomicU64,
}

impl Shared {
    /// Nanoseconds since the run started: the history's clock.
    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// A value never written before in this run.
    fn unique(&self) -> u64 {
        self.next_value.fetch_add(1, Ordering::Relaxed)
    }

    /// A stored value as the history's `u64`; one we did not write (not a
    /// decimal) is counted and becomes `u64::MAX`, which no put wrote, so
    /// the checker fails on it too.
    fn parse(&self, bytes: &[u8]) -> u64 {
        std::str::from_utf8(bytes)
            .ok()
            .and_then(|text| text.parse().ok())
            .unwrap_or_else(|| {
                self.foreign_values.fetch_add(1, Ordering::Relaxed);
                u64::MAX
            })
    }
}

/// A register client's own record, for the failover figures: (invoked,
/// completed) of each write that succeeded, and CAS wins and losses.
#[derive(Default)]
struct ClientLog {
    writes: Vec<(u64, u64)>,
    cas_won: usize,
    cas_lost: usize,
}

/// How the history records a failed call: a read changes nothing, so it
/// simply failed; a write failed for sure when the client says so (refused,
/// no leader, lost in a leader change, never reached a node), and its
/// outcome is unknown when the client says it may be applied (`Unknown`,
/// `LeaderChanged`) or a transport error may have followed its delivery.
fn classify(call: &Call, error: &ClientError) -> Outcome {
    if matches!(call, Call::Get) {
        return Outcome::Failed;
    }
    match error {
        ClientError::Kv(KvFailure::Unknown(_) | KvFailure::LeaderChanged) => Outcome::Unknown,
        ClientError::Kv(_) | ClientError::Refused(_) | ClientError::NoEndpoints => Outcome::Failed,
        ClientError::Unavailable(e) | ClientError::Transport(e) if e.nothing_processed() => {
            Outcome::Failed
        }
        _ => Outcome::Unknown,
    }
}

/// A transaction setting `key` to `new` if it holds `expect` (`None`:
/// absent).
fn cas(key: &str, expect: Option<&[u8]>, new: &[u8]) -> Txn {
    let target = match expect {
        Some(value) => CompareTarget::Value(value.to_vec()),
        None => CompareTarget::Version(0),
    };
    Txn {
        compare: vec![Compare {
            key: key.as_bytes().to_vec(),
            target,
            op: CompareOp::Equal,
        }],
        success: vec![RequestOp::put(key.as_bytes(), new)],
        failure: Vec::new(),
    }
}

/// Runs `call` on `key`.
async fn perform(
    client: &Client,
    shared: &Shared,
    key: &str,
    call: &Call,
) -> Result<Ret, ClientError> {
    match call {
        Call::Get => Ok(Ret::Get(
            client
                .get(key.as_bytes())
                .await?
                .map(|kv| shared.parse(&kv.value)),
        )),
        Call::Put(value) => {
            client
                .put(key.as_bytes(), value.to_string().as_bytes())
                .await?;
            Ok(Ret::Put)
        }
        Call::Cas { expect, new } => {
            let expect = expect.map(|v| v.to_string());
            let txn = cas(
                key,
                expect.as_deref().map(str::as_bytes),
                new.to_string().as_bytes(),
            );
            Ok(Ret::Cas(client.txn(txn).await?.succeeded))
        }
        Call::Delete => {
            let range = clustron_client::kv::KeyRange::Key(key.as_bytes().to_vec());
            client.delete(range).await?;
            Ok(Ret::Delete)
        }
    }
}

/// One operation, recorded in `history`: invoked now, completed when the
/// answer comes or classified by its error, or a hang after [`OP_DEADLINE`].
async fn recorded(
    client: &Client,
    shared: &Shared,
    history: &History,
    id: u64,
    key: &str,
    call: Call,
) -> Option<Ret> {
    let op = history.invoke(id, key, call.clone(), shared.now());
    let result = tokio::time::timeout(OP_DEADLINE, perform(client, shared, key, &call)).await;
    let completed = shared.now();
    let (outcome, ret) = match result {
        Ok(Ok(ret)) => (
            Outcome::Ok {
                ret: ret.clone(),
                completed,
            },
            Some(ret),
        ),
        Ok(Err(error)) => (classify(&call, &error), None),
        Err(_) => {
            shared.hangs.fetch_add(1, Ordering::Relaxed);
            (
                classify(&call, &ClientError::Kv(KvFailure::Unknown("hang".into()))),
                None,
            )
        }
    };
    history.complete(op, outcome);
    ret
}

/// A register client until the run's end: random keys; 40% reads, 30%
/// puts, 30% read-then-CAS on the value read.
async fn register_client(
    id: u64,
    client: Client,
    shared: Arc<Shared>,
    history: History,
    seed: u64,
) -> ClientLog {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut log = ClientLog::default();
    while Instant::now() < shared.stop_at {
        let key = register_key(rng.usize(0..KEYS));
        let roll = rng.u8(0..10);
        if roll < 4 {
            recorded(&client, &shared, &history, id, &key, Call::Get).await;
        } else if roll < 7 {
            let invoked = shared.now();
            let call = Call::Put(shared.unique());
            if recorded(&client, &shared, &history, id, &key, call)
                .await
                .is_some()
            {
                log.writes.push((invoked, shared.now()));
            }
        } else {
            let Some(Ret::Get(expect)) =
                recorded(&client, &shared, &history, id, &key, Call::Get).await
            else {
                continue;
            };
            let invoked = shared.now();
            let call = Call::Cas {
                expect,
                new: shared.unique(),
            };
            match recorded(&client, &shared, &history, id, &key, call).await {
                Some(Ret::Cas(won)) => {
                    log.writes.push((invoked, shared.now()));
                    if won {
                        log.cas_won += 1;
                    } else {
                        log.cas_lost += 1;
                    }
                }
                _ => continue,
            }
        }
    }
    log
}

/// What a set client knows of the elements it tried to add.
#[derive(Default)]
struct SetLog {
    /// Added: a CAS that put it in succeeded.
    acked: Vec<u64>,
    /// Seen in the set by a read after an attempt with an unknown outcome.
    seen_after_unknown: Vec<u64>,
    /// Given up with an unknown outcome: may or may not be in.
    maybe: Vec<u64>,
    /// Given up after attempts that all definitely failed: must not be in.
    never: Vec<u64>,
    /// Found in the set although every attempt to add it had been answered
    /// "not applied".
    contradicted: Vec<u64>,
}

/// The elements of a set value: decimals, comma-separated.
fn elements(shared: &Shared, value: &[u8]) -> Vec<u64> {
    if value.is_empty() {
        return Vec::new();
    }
    value
        .split(|&b| b == b',')
        .map(|e| shared.parse(e))
        .collect()
}

/// A set client until the run's end: adds unique elements, each with a CAS
/// retry loop (read the set, CAS it to the set plus the element). A CAS
/// that lost is retried from a fresh read without looking (it did not
/// apply); after an unknown outcome the next read decides whether it did.
async fn set_client(client: Client, shared: Arc<Shared>) -> SetLog {
    let mut log = SetLog::default();
    'elements: while Instant::now() < shared.stop_at {
        let element = shared.unique();
        let mut unknown = false;
        loop {
            if Instant::now() >= shared.stop_at {
                if unknown {
                    log.maybe.push(element);
                } else {
                    log.never.push(element);
                }
                break 'elements;
            }
            let current =
                match tokio::time::timeout(OP_DEADLINE, client.get(SET_KEY.as_bytes())).await {
                    Ok(Ok(current)) => current,
                    Ok(Err(_)) => {
                        // Paces a client whose every endpoint fails at once.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                    Err(_) => {
                        shared.hangs.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                };
            let value = current.map(|kv| kv.value);
            let present = value
                .as_deref()
                .is_some_and(|v| elements(&shared, v).contains(&element));
            if present {
                if unknown {
                    log.seen_after_unknown.push(element);
                } else {
                    // Every attempt so far was answered "not applied"
                    // (a lost CAS, or a definite failure), yet it is in:
                    // a write applied that its client was told was not.
                    // A client trusting the answer would add it twice.
                    log.contradicted.push(element);
                }
                continue 'elements;
            }
            let new = match value.as_deref() {
                Some(v) if !v.is_empty() => format!("{},{element}", String::from_utf8_lossy(v)),
                _ => element.to_string(),
            };
            let txn = cas(SET_KEY, value.as_deref(), new.as_bytes());
            match tokio::time::timeout(OP_DEADLINE, client.txn(txn)).await {
                Ok(Ok(response)) if response.succeeded => {
                    log.acked.push(element);
                    continue 'elements;
                }
                Ok(Ok(_)) => {}
                Ok(Err(error)) => {
                    let call = Call::Cas {
                        expect: None,
                        new: element,
                    };
                    if classify(&call, &error) == Outcome::Unknown {
                        unknown = true;
                    }
                }
                Err(_) => {
                    shared.hangs.fetch_add(1, Ordering::Relaxed);
                    unknown = true;
                }
            }
        }
    }
    log
}

/// One fault the nemesis injects.
#[derive(Debug, Clone)]
enum Fault {
    Kill(usize),
    Pause(usize),
    /// These nodes (a minority) cut off from the rest.
    Isolate(Vec<usize>),
}

/// When the nemesis did what, on the history's clock; whether it hit the
/// leader of the moment.
struct NemesisEvent {
    at: u64,
    what: String,
    hit_leader: bool,
    /// The nodes the fault spared that had been back (restarted, resumed,
    /// healed) for [`SETTLED`] at least made a majority: a single fault.
    /// Otherwise the successor needs a node still starting or catching up,
    /// and the failover includes that node's recovery.
    settled: bool,
}

/// How long a node must have been back from its last fault to count as
/// settled for [`NemesisEvent::settled`].
const SETTLED: Duration = Duration::from_secs(2);

/// The fault for this round, or `None` when it needs the leader and no
/// node knows one right now.
fn choose(cluster: &ProcCluster, scenario: Scenario, rng: &mut fastrand::Rng) -> Option<Fault> {
    let n = cluster.len();
    let scenario = match scenario {
        Scenario::Mixed => {
            let choices: &[Scenario] = if cluster.in_lab() {
                &[
                    Scenario::KillAny,
                    Scenario::KillLeader,
                    Scenario::PauseLeader,
                    Scenario::Partition,
                ]
            } else {
                &[
                    Scenario::KillAny,
                    Scenario::KillLeader,
                    Scenario::PauseLeader,
                ]
            };
            choices[rng.usize(0..choices.len())]
        }
        other => other,
    };
    Some(match scenario {
        Scenario::KillAny => Fault::Kill(rng.usize(0..n)),
        Scenario::KillLeader => Fault::Kill(cluster.leader()?.0),
        Scenario::PauseLeader => Fault::Pause(cluster.leader()?.0),
        Scenario::Partition => {
            if rng.bool() {
                Fault::Isolate(vec![cluster.leader()?.0])
            } else {
                let mut nodes: Vec<usize> = (0..n).collect();
                rng.shuffle(&mut nodes);
                nodes.truncate(rng.usize(1..=(n - 1) / 2));
                Fault::Isolate(nodes)
            }
        }
        Scenario::Mixed => unreachable!("resolved above"),
    })
}

/// Waits until `until` (or the run's end, if sooner). The nemesis's
/// schedule, not a synchronisation.
fn spell(until: Instant, stop_at: Instant) {
    std::thread::sleep(until.min(stop_at).saturating_duration_since(Instant::now()));
}

/// Faults until the run's end: a quiet spell of 0.5–1.5 s, a fault held for
/// 1–5 s (a frozen leader's client connections time out after 3 s), then
/// repaired. Returns what it did.
fn nemesis(
    cluster: &mut ProcCluster,
    scenario: Scenario,
    shared: &Shared,
    rng: &mut fastrand::Rng,
) -> Vec<NemesisEvent> {
    let mut events = Vec::new();
    let stop_at = shared.stop_at;
    // When each node came back from its last fault (history clock).
    let mut back_at = vec![0u64; cluster.len()];
    while Instant::now() < stop_at {
        spell(
            Instant::now() + Duration::from_millis(rng.u64(500..1500)),
            stop_at,
        );
        // A fault needs time to be seen before the run ends.
        if Instant::now() + Duration::from_secs(1) >= stop_at {
            break;
        }
        let Some(fault) = choose(cluster, scenario, rng) else {
            continue;
        };
        let leader = cluster.leader().map(|(i, _)| i);
        let name = |i: usize| cluster.name(i).to_owned();
        let (what, hit_leader) = match &fault {
            Fault::Kill(i) => (format!("kill -9 {}", name(*i)), leader == Some(*i)),
            Fault::Pause(i) => (format!("SIGSTOP {}", name(*i)), leader == Some(*i)),
            Fault::Isolate(side) => {
                let side: Vec<String> = side.iter().map(|&i| name(i)).collect();
                (
                    format!("cut off {}", side.join("+")),
                    leader.is_some_and(|l| side.contains(&name(l))),
                )
            }
        };
        let what = match leader {
            Some(l) => format!("{what} (leader {})", name(l)),
            None => format!("{what} (no leader)"),
        };
        let hit: Vec<usize> = match &fault {
            Fault::Kill(i) | Fault::Pause(i) => vec![*i],
            Fault::Isolate(side) => side.clone(),
        };
        let settled_before = shared.now().saturating_sub(SETTLED.as_nanos() as u64);
        let settled = (0..cluster.len())
            .filter(|i| !hit.contains(i) && back_at[*i] <= settled_before)
            .count()
            > cluster.len() / 2;
        match &fault {
            Fault::Kill(i) => cluster.kill(*i),
            Fault::Pause(i) => cluster.stop(*i),
            Fault::Isolate(side) => cluster.partition(side),
        }
        // Once the fault is complete (a partition is several `ip` calls).
        events.push(NemesisEvent {
            at: shared.now(),
            what,
            hit_leader,
            settled,
        });
        spell(
            Instant::now() + Duration::from_millis(rng.u64(1000..5000)),
            stop_at,
        );
        let what = match fault {
            Fault::Kill(i) => {
                cluster.restart(i);
                format!("restart {}", cluster.name(i))
            }
            Fault::Pause(i) => {
                cluster.resume(i);
                format!("SIGCONT {}", cluster.name(i))
            }
            Fault::Isolate(_) => {
                cluster.heal_all();
                "heal".into()
            }
        };
        let at = shared.now();
        for i in hit {
            back_at[i] = at;
        }
        events.push(NemesisEvent {
            at,
            what,
            hit_leader: false,
            settled: false,
        });
    }
    events
}

/// The longest stretch of the run (`end` ns long) in which no client
/// completed a successful write: (its length, when it began).
fn longest_write_gap(logs: &[ClientLog], end: u64) -> (Duration, u64) {
    let mut completions: Vec<u64> = logs
        .iter()
        .flat_map(|log| log.writes.iter().map(|&(_, completed)| completed))
        .filter(|&completed| completed <= end)
        .collect();
    completions.sort_unstable();
    let mut previous = 0;
    let mut longest = (0, 0);
    for at in completions.into_iter().chain([end]) {
        if at - previous > longest.0 {
            longest = (at - previous, previous);
        }
        previous = at;
    }
    (Duration::from_nanos(longest.0), longest.1)
}

/// Failover samples, sorted: all of them, and those of single faults.
fn failover_samples(samples: &[(Duration, bool)]) -> (Vec<Duration>, Vec<Duration>) {
    let mut all: Vec<Duration> = samples.iter().map(|&(d, _)| d).collect();
    let mut single: Vec<Duration> = samples.iter().filter(|s| s.1).map(|&(d, _)| d).collect();
    all.sort();
    single.sort();
    (all, single)
}

/// Client-observed failover times: for each fault that hit the leader and
/// each client, from the fault to the completion of the client's first
/// successful write invoked after it (before the next such fault). Returns
/// the samples (each with the fault's [`NemesisEvent::settled`]), how many
/// (fault, client) pairs had no such write, and per fault (its time) the
/// slowest client's sample.
fn failover_times(
    events: &[NemesisEvent],
    logs: &[ClientLog],
) -> (Vec<(Duration, bool)>, usize, BTreeMap<u64, Duration>) {
    let faults: Vec<(u64, bool)> = events
        .iter()
        .filter(|e| e.hit_leader)
        .map(|e| (e.at, e.settled))
        .collect();
    let mut samples = Vec::new();
    let mut missed = 0;
    let mut slowest = BTreeMap::new();
    for (k, &(at, settled)) in faults.iter().enumerate() {
        let next = faults.get(k + 1).map_or(u64::MAX, |f| f.0);
        for log in logs {
            match log
                .writes
                .iter()
                .find(|&&(invoked, completed)| invoked >= at && completed < next)
            {
                Some(&(_, completed)) => {
                    let took = Duration::from_nanos(completed - at);
                    samples.push((took, settled));
                    let worst = slowest.entry(at).or_insert(took);
                    *worst = (*worst).max(took);
                }
                None => missed += 1,
            }
        }
    }
    (samples, missed, slowest)
}

/// One run: a fresh cluster, clients and the nemesis for the run's
/// duration, then repair, a restart of every node, final reads and the
/// checks. `None` when the scenario cannot run here (partitions need root).
fn run(
    runtime: &tokio::runtime::Runtime,
    settings: &Settings,
    scenario: Scenario,
    nodes: usize,
    seed: u64,
) -> Option<RunResult> {
    let lab = scenario == Scenario::Partition || (scenario == Scenario::Mixed && is_root());
    let Some(mut cluster) = ProcCluster::start(nodes, lab) else {
        println!(
            "skipped {}: network namespaces need root (CI runs as root)",
            scenario.name()
        );
        return None;
    };
    if scenario == Scenario::Mixed && !lab {
        println!("mixed without partitions: network namespaces need root");
    }
    println!(
        "{} on {nodes} nodes, seed {seed}, directory {}",
        scenario.name(),
        cluster.dir().display()
    );
    cluster.await_leader(DEADLINE);
    let mut rng = fastrand::Rng::with_seed(seed);
    let start = Instant::now();
    let shared = Arc::new(Shared {
        start,
        stop_at: start + settings.duration,
        next_value: AtomicU64::new(1),
        hangs: AtomicU64::new(0),
        foreign_values: AtomicU64::new(0),
    });
    let history = History::new();
    let endpoints = cluster.endpoints();
    let rotated = |k: usize| {
        let mut order = endpoints.clone();
        let n = order.len();
        order.rotate_left(k % n);
        order
    };
    let registers: Vec<_> = (0..settings.clients)
        .map(|k| {
            let client = client(runtime, cluster.dir(), rotated(k));
            runtime.spawn(register_client(
                k as u64,
                client,
                shared.clone(),
                history.clone(),
                rng.u64(..),
            ))
        })
        .collect();
    let sets: Vec<_> = (0..settings.set_clients)
        .map(|k| {
            let client = client(runtime, cluster.dir(), rotated(k + 1));
            runtime.spawn(set_client(client, shared.clone()))
        })
        .collect();

    let events = nemesis(&mut cluster, scenario, &shared, &mut rng);
    cluster.repair();
    let mut problems = Vec::new();
    // Every client ends its last operation within its deadline.
    let finish_by = tokio::time::Instant::now() + OP_DEADLINE + Duration::from_secs(5);
    let (logs, set_logs) = runtime.block_on(async {
        let mut logs = Vec::new();
        for task in registers {
            match tokio::time::timeout_at(finish_by, task).await {
                Ok(log) => logs.push(log.unwrap()),
                Err(_) => problems.push("a register client did not finish".to_owned()),
            }
        }
        let mut set_logs = Vec::new();
        for task in sets {
            match tokio::time::timeout_at(finish_by, task).await {
                Ok(log) => set_logs.push(log.unwrap()),
                Err(_) => problems.push("a set client did not finish".to_owned()),
            }
        }
        (logs, set_logs)
    });

    // kill -9 of every node, then a start of all on their data: every
    // acknowledged write must come back from the logs.
    for i in 0..cluster.len() {
        cluster.kill(i);
    }
    for i in 0..cluster.len() {
        cluster.restart(i);
    }
    cluster.await_leader(DEADLINE);
    let reader = client(runtime, cluster.dir(), cluster.endpoints());
    let reader_id = settings.clients as u64;
    let final_set = runtime.block_on(async {
        for k in 0..KEYS {
            let key = register_key(k);
            let deadline = Instant::now() + DEADLINE;
            while recorded(&reader, &shared, &history, reader_id, &key, Call::Get)
                .await
                .is_none()
            {
                if Instant::now() > deadline {
                    problems.push(format!("no final read of {key} succeeded"));
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let deadline = Instant::now() + DEADLINE;
        loop {
            match reader.get(SET_KEY.as_bytes()).await {
                Ok(kv) => break Some(kv.map(|kv| kv.value).unwrap_or_default()),
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => {
                    problems.push(format!("no final read of the set succeeded: {e}"));
                    break None;
                }
            }
        }
    });

    let hangs = shared.hangs.load(Ordering::Relaxed);
    if hangs > 0 {
        problems.push(format!(
            "{hangs} client operations outlived their deadline of {OP_DEADLINE:?}"
        ));
    }
    let foreign = shared.foreign_values.load(Ordering::Relaxed);
    if foreign > 0 {
        problems.push(format!(
            "{foreign} values read were not written by a client"
        ));
    }
    let set = final_set
        .map(|value| check_set(&shared, &value, &set_logs, &mut problems))
        .unwrap_or_else(|| "not read".into());

    let operations = history.operations();
    let ops = operations.len();
    let unknown = operations
        .iter()
        .filter(|op| op.outcome == Outcome::Unknown)
        .count();
    let checked = match check(&operations) {
        Ok(report) => format!(
            "linearizable ({} keys, {} ops checked, {} search steps)",
            report.keys, report.operations, report.steps
        ),
        Err(violation) => {
            let path = cluster.dir().join("history.jsonl");
            save(&operations, &path).unwrap();
            println!(
                "NOT LINEARIZABLE: history saved to {}\n{violation}",
                path.display()
            );
            problems.push(format!(
                "not linearizable (history in {}): {violation}",
                path.display()
            ));
            "NOT linearizable".into()
        }
    };
    let (failovers, missed, slowest) = failover_times(&events, &logs);
    let timeline: Vec<String> = events
        .iter()
        .map(|e| match slowest.get(&e.at).filter(|_| e.hit_leader) {
            Some(worst) => format!(
                "{:.3} s {} [slowest failover {:.3} s]",
                e.at as f64 / 1e9,
                e.what,
                worst.as_secs_f64()
            ),
            None => format!("{:.3} s {}", e.at as f64 / 1e9, e.what),
        })
        .collect();
    println!("nemesis: {}", timeline.join("; "));
    if !problems.is_empty() {
        problems.push(format!(
            "nodes' logs and data kept in {}",
            cluster.dir().display()
        ));
    } else if std::env::var_os("CLUSTRON_NEMESIS_KEEP").is_none() {
        cluster.clean_up_on_drop();
    }
    Some(RunResult {
        scenario,
        nodes,
        seed,
        ops,
        unknown,
        hangs,
        cas: (
            logs.iter().map(|l| l.cas_won).sum(),
            logs.iter().map(|l| l.cas_lost).sum(),
        ),
        failovers,
        no_failover: missed,
        write_gap: longest_write_gap(&logs, settings.duration.as_nanos() as u64),
        leader_faults: events.iter().filter(|e| e.hit_leader).count(),
        set,
        checked,
        problems,
    })
}

/// The set's invariants on its final value: no element twice, every
/// acknowledged (or seen) element present, none that definitely failed, none
/// nobody tried to add. Returns a summary.
fn check_set(shared: &Shared, value: &[u8], logs: &[SetLog], problems: &mut Vec<String>) -> String {
    let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
    for element in elements(shared, value) {
        *counts.entry(element).or_default() += 1;
    }
    let doubled: Vec<u64> = counts
        .iter()
        .filter(|(_, &c)| c > 1)
        .map(|(&e, _)| e)
        .collect();
    if !doubled.is_empty() {
        problems.push(format!("set elements present more than once: {doubled:?}"));
    }
    let acked: Vec<u64> = logs
        .iter()
        .flat_map(|l| l.acked.iter().chain(&l.seen_after_unknown))
        .copied()
        .collect();
    let missing: Vec<u64> = acked
        .iter()
        .filter(|e| !counts.contains_key(e))
        .copied()
        .collect();
    if !missing.is_empty() {
        problems.push(format!("acknowledged set elements missing: {missing:?}"));
    }
    let never: Vec<u64> = logs
        .iter()
        .flat_map(|l| &l.never)
        .filter(|e| counts.contains_key(e))
        .copied()
        .collect();
    if !never.is_empty() {
        problems.push(format!(
            "set elements whose every add failed are present: {never:?}"
        ));
    }
    let tried: std::collections::BTreeSet<u64> = logs
        .iter()
        .flat_map(|l| {
            l.acked
                .iter()
                .chain(&l.seen_after_unknown)
                .chain(&l.maybe)
                .chain(&l.never)
                .chain(&l.contradicted)
        })
        .copied()
        .collect();
    let strangers: Vec<u64> = counts
        .keys()
        .filter(|e| !tried.contains(e))
        .copied()
        .collect();
    if !strangers.is_empty() {
        problems.push(format!("set elements nobody added: {strangers:?}"));
    }
    let contradicted: Vec<u64> = logs.iter().flat_map(|l| &l.contradicted).copied().collect();
    if !contradicted.is_empty() {
        problems.push(format!(
            "set elements added by a CAS whose client was told it did not apply: {contradicted:?}"
        ));
    }
    let maybe: usize = logs.iter().map(|l| l.maybe.len()).sum();
    format!(
        "{} acked, {} maybe, {} present, {} doubled",
        acked.len(),
        maybe,
        counts.len(),
        doubled.len()
    )
}
