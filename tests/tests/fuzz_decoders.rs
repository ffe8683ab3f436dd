//! Fuzzes every decoder that reads bytes from the network or the disk
//! (targets in `clustron_tests::fuzz::targets`) within a time budget.
//!
//! ```text
//! CLUSTRON_FUZZ_SECS=600 CLUSTRON_FUZZ_SEED=42 CLUSTRON_FUZZ_TARGET=wal \
//!     cargo test -p clustron-tests --test fuzz_decoders
//! ```
//!
//! - `CLUSTRON_FUZZ_SECS`: the whole run's budget (default 24 s), shared
//!   equally by the selected targets.
//! - `CLUSTRON_FUZZ_SEED` (or `CLUSTRON_SEED`): the run's seed (default:
//!   random, printed); each target's seed is derived from it and its name.
//! - `CLUSTRON_FUZZ_TARGET` (or the first argument): run only targets
//!   whose name contains it.
//!
//! Each target runs in a child process of this binary, on a thread with a
//! 2 MiB stack (a tokio worker's) and under a 1 GiB address-space limit, so
//! a stack overflow, a huge allocation or a hang (no progress for 10 s) is
//! a reported crash rather than the end of the run. A panic prints the
//! failing input in hex; an abort or a hang is replayed from the seed with
//! every input traced to a file, to find the input. Either way the input is
//! saved under `tests/fuzz-corpus/<target>/`, and every file there is
//! replayed before each target's fuzzing: commit one once the bug it
//! shows is fixed.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::{BufRead, BufReader, Write};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clustron_tests::fuzz::{self, Counts, Fuzzer, Scratch, Target};

/// Set in a child: the target it runs.
const CHILD: &str = "CLUSTRON_FUZZ_CHILD";
/// Set in a child: its seed.
const CHILD_SEED: &str = "CLUSTRON_FUZZ_CHILD_SEED";
/// Set in a child: its budget in milliseconds.
const CHILD_MILLIS: &str = "CLUSTRON_FUZZ_CHILD_MILLIS";
/// Set in a child replaying a crash: write each input here before use...
const CHILD_TRACE: &str = "CLUSTRON_FUZZ_CHILD_TRACE";
/// ...from this execution on (the crashed run had got this far).
const CHILD_TRACE_FROM: &str = "CLUSTRON_FUZZ_CHILD_TRACE_FROM";

/// The stack a tokio worker thread gets.
const STACK: usize = 2 * 1024 * 1024;
/// A child's address-space limit.
const MEMORY_MIB: u64 = 1024;
/// No execution may take this long.
const HANG: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        for target in fuzz::all() {
            println!("{}: test", target.name);
        }
        return ExitCode::SUCCESS;
    }
    if let Ok(name) = std::env::var(CHILD) {
        return child(&name);
    }
    parent(&args)
}

fn corpus_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz-corpus")
}

/// FNV-1a, to derive seeds and name corpus files.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn parse_seed(text: &str) -> Option<u64> {
    let text = text.trim();
    match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

/// What one target's child reported.
struct Outcome {
    target: &'static str,
    seed: u64,
    counts: Counts,
    /// Executions, also when the child died before reporting `counts`.
    execs: u64,
    replayed: u64,
    elapsed: Duration,
    crash: Option<String>,
}

fn parent(args: &[String]) -> ExitCode {
    let seed = ["CLUSTRON_FUZZ_SEED", "CLUSTRON_SEED"]
        .iter()
        .find_map(|var| std::env::var(var).ok())
        .map(|s| parse_seed(&s).unwrap_or_else(|| panic!("seed {s:?} is not a number")))
        .unwrap_or_else(|| fastrand::u64(..));
    let secs: f64 = std::env::var("CLUSTRON_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(24.0);
    let filter = std::env::var("CLUSTRON_FUZZ_TARGET")
        .ok()
        .or_else(|| args.iter().find(|a| !a.starts_with('-')).cloned());
    let targets: Vec<Target> = fuzz::all()
        .into_iter()
        .filter(|t| filter.as_deref().is_none_or(|f| t.name.contains(f)))
        .collect();
    if targets.is_empty() {
        println!("no fuzz target matches {filter:?}");
        return ExitCode::SUCCESS;
    }
    let share = Duration::from_secs_f64(secs.max(0.0) / targets.len() as f64);
    println!(
        "fuzzing {} decoders for {secs} s ({} ms each), seed {seed} \
         (replay: CLUSTRON_FUZZ_SEED={seed} [CLUSTRON_FUZZ_TARGET=name] \
         cargo test -p clustron-tests --test fuzz_decoders)",
        targets.len(),
        share.as_millis()
    );
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut outcomes = Vec::new();
    for target in &targets {
        let target_seed = seed ^ fnv(target.name.as_bytes());
        let outcome = run_target(&exe, target, target_seed, share);
        print_outcome(&outcome);
        outcomes.push(outcome);
    }
    let execs: u64 = outcomes.iter().map(|o| o.execs).sum();
    let crashes: Vec<&Outcome> = outcomes.iter().filter(|o| o.crash.is_some()).collect();
    println!(
        "fuzz: {execs} executions over {} targets, {} crashes (seed {seed})",
        outcomes.len(),
        crashes.len()
    );
    if crashes.is_empty() {
        return ExitCode::SUCCESS;
    }
    for outcome in crashes {
        println!(
            "CRASH {} — replay: CLUSTRON_FUZZ_SEED={seed} CLUSTRON_FUZZ_TARGET={} \
             cargo test -p clustron-tests --test fuzz_decoders\n  {}",
            outcome.target,
            outcome.target,
            outcome.crash.as_deref().unwrap_or_default()
        );
    }
    ExitCode::FAILURE
}

fn print_outcome(o: &Outcome) {
    println!(
        "{:<86} {:>9} execs ({} random, {} valid, {} mutated, {} corpus) in {:.1} s, seed {}: {}",
        o.target,
        o.execs,
        o.counts.random,
        o.counts.valid,
        o.counts.mutated,
        o.replayed,
        o.elapsed.as_secs_f64(),
        o.seed,
        if o.crash.is_some() { "CRASH" } else { "ok" }
    );
}

/// Runs one target in a child process; on a crash without a printed input
/// (an abort or a hang), replays it with tracing to find the input.
fn run_target(exe: &Path, target: &Target, seed: u64, share: Duration) -> Outcome {
    let started = Instant::now();
    let report = spawn_child(exe, target.name, seed, share, None);
    let mut outcome = Outcome {
        target: target.name,
        seed,
        counts: report.counts,
        execs: report.counts.total().max(report.progress),
        replayed: report.replayed,
        elapsed: started.elapsed(),
        crash: None,
    };
    if report.success {
        return outcome;
    }
    let input = match report.crash_input {
        Some(input) => Some(input),
        None if report.crashed_generating => None,
        None => {
            println!(
                "{}: {}; replaying seed {seed} with inputs traced to find the input",
                target.name, report.status
            );
            let shm = Path::new("/dev/shm");
            let dir = match shm.is_dir() {
                true => shm.to_owned(),
                false => std::env::temp_dir(),
            };
            let trace = dir.join(format!("clustron-fuzz-trace-{seed}"));
            let budget = (outcome.elapsed * 3 + HANG * 3).min(Duration::from_secs(900));
            let from = Some((trace.as_path(), report.progress));
            let replay = spawn_child(exe, target.name, seed, budget, from);
            let input = match replay.success {
                true => None,
                false => replay.crash_input.or_else(|| std::fs::read(&trace).ok()),
            };
            let _ = std::fs::remove_file(&trace);
            input
        }
    };
    let mut crash = format!("{} (seed {seed})", report.status);
    if report.crashed_generating {
        crash.push_str(": while building or round-tripping a valid input");
    }
    if let Some(input) = input {
        let dir = corpus_root().join(target.name);
        let file = dir.join(format!("crash-{:016x}", fnv(&input)));
        let saved = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&file, &input));
        let shown = if input.len() > 512 {
            format!("{}…", fuzz::hex(&input[..512]))
        } else {
            fuzz::hex(&input)
        };
        crash.push_str(&format!(
            "\n  input ({} bytes, hex): {shown}\n  saved: {} {}",
            input.len(),
            file.display(),
            match saved {
                Ok(()) => "(replayed every run; commit it with the fix)".to_owned(),
                Err(e) => format!("(failed: {e})"),
            }
        ));
    }
    outcome.crash = Some(crash);
    outcome
}

/// What a child said.
struct ChildReport {
    success: bool,
    status: String,
    counts: Counts,
    replayed: u64,
    crash_input: Option<Vec<u8>>,
    crashed_generating: bool,
    /// Executions the child reported done (none of them crashed).
    progress: u64,
}

fn spawn_child(
    exe: &Path,
    name: &str,
    seed: u64,
    budget: Duration,
    trace: Option<(&Path, u64)>,
) -> ChildReport {
    let memory_kib = std::env::var("CLUSTRON_FUZZ_MEM_MB")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(MEMORY_MIB)
        * 1024;
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(format!("ulimit -v {memory_kib} 2>/dev/null; exec \"$0\""))
        .arg(exe)
        .env(CHILD, name)
        .env(CHILD_SEED, seed.to_string())
        .env(CHILD_MILLIS, budget.as_millis().to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some((trace, from)) = trace {
        command
            .env(CHILD_TRACE, trace)
            .env(CHILD_TRACE_FROM, from.to_string());
    }
    let mut child = command.spawn().expect("starts a fuzz child");
    let mut report = ChildReport {
        success: false,
        status: String::new(),
        counts: Counts::default(),
        replayed: 0,
        crash_input: None,
        crashed_generating: false,
        progress: 0,
    };
    let stdout = child.stdout.take().expect("piped");
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        let mut words = line.split_whitespace();
        match words.next() {
            Some("RESULT") => {
                let n: Vec<u64> = words.filter_map(|w| w.parse().ok()).collect();
                if let [random, valid, mutated, replayed] = n[..] {
                    report.counts = Counts {
                        random,
                        valid,
                        mutated,
                    };
                    report.replayed = replayed;
                }
            }
            Some("CRASH-INPUT") => report.crash_input = words.next().and_then(fuzz::unhex),
            Some("CRASH-GENERATING") => report.crashed_generating = true,
            Some("PROGRESS") => {
                report.progress = words.next().and_then(|n| n.parse().ok()).unwrap_or(0);
            }
            _ => println!("  {line}"),
        }
    }
    let status = child.wait().expect("waits for the fuzz child");
    report.success = status.success();
    report.status = match status.code() {
        Some(101) => "panicked".to_owned(),
        Some(3) => format!("hung (no progress for {} s)", HANG.as_secs()),
        _ => format!("died ({status}: a stack overflow, an allocation over the limit or an abort)"),
    };
    report
}

fn child(name: &str) -> ExitCode {
    let Some(target) = fuzz::all().into_iter().find(|t| t.name == name) else {
        eprintln!("no fuzz target {name}");
        return ExitCode::FAILURE;
    };
    let env = |var: &str| std::env::var(var).ok().and_then(|s| s.parse::<u64>().ok());
    let seed = env(CHILD_SEED).unwrap_or(0);
    let budget = Duration::from_millis(env(CHILD_MILLIS).unwrap_or(1000));
    let trace = std::env::var_os(CHILD_TRACE)
        .map(|path| (PathBuf::from(path), env(CHILD_TRACE_FROM).unwrap_or(0)));
    let progress = Arc::new(AtomicU64::new(0));
    let worker = {
        let progress = progress.clone();
        std::thread::Builder::new()
            .name(format!("fuzz {name}"))
            .stack_size(STACK)
            .spawn(move || fuzz_loop(target, seed, budget, trace, &progress))
            .expect("starts the fuzz thread")
    };
    let mut seen = 0;
    let mut since = Instant::now();
    while !worker.is_finished() {
        std::thread::sleep(Duration::from_millis(50));
        let now = progress.load(Relaxed);
        // Executions before `now` all finished: a replay traces from here.
        println!("PROGRESS {now}");
        if now != seen {
            (seen, since) = (now, Instant::now());
        } else if since.elapsed() > HANG {
            eprintln!("{name}: execution {now} made no progress for {HANG:?}");
            let _ = std::io::stdout().flush();
            std::process::exit(3);
        }
    }
    match worker.join() {
        Ok(code) => code,
        Err(_) => ExitCode::from(101),
    }
}

/// Where the last panic happened; `QUIET` keeps shrinking from printing.
static LAST_PANIC: Mutex<Option<String>> = Mutex::new(None);
static QUIET: AtomicBool = AtomicBool::new(false);

fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let place = info.location().map(|l| l.to_string()).unwrap_or_default();
        *LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner()) = Some(place);
        if !QUIET.load(Relaxed) {
            default(info);
        }
    }));
}

/// A smaller input that panics at the same place (deletes chunks while it
/// still does, for at most 2,000 tries or 5 s).
fn shrink(target: Target, scratch: &mut Scratch, input: &[u8]) -> Vec<u8> {
    let place = LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner()).clone();
    QUIET.store(true, Relaxed);
    let started = Instant::now();
    let mut tries = 0;
    let mut best = input.to_vec();
    let mut chunk = best.len().div_ceil(2);
    while chunk > 0 && tries < 2000 && started.elapsed() < Duration::from_secs(5) {
        let mut at = 0;
        let mut smaller = false;
        while at < best.len() && tries < 2000 {
            tries += 1;
            let mut candidate = best[..at].to_vec();
            candidate.extend_from_slice(&best[(at + chunk).min(best.len())..]);
            let panicked =
                std::panic::catch_unwind(AssertUnwindSafe(|| (target.check)(scratch, &candidate)))
                    .is_err();
            let same = *LAST_PANIC.lock().unwrap_or_else(|e| e.into_inner()) == place;
            if panicked && same {
                best = candidate;
                smaller = true;
            } else {
                at += chunk;
            }
        }
        if !smaller {
            chunk /= 2;
        }
    }
    QUIET.store(false, Relaxed);
    // Show the shrunk input's panic once.
    let _ = std::panic::catch_unwind(AssertUnwindSafe(|| (target.check)(scratch, &best)));
    best
}

fn fuzz_loop(
    target: Target,
    seed: u64,
    budget: Duration,
    trace: Option<(PathBuf, u64)>,
    progress: &AtomicU64,
) -> ExitCode {
    let deadline = Instant::now() + budget;
    install_panic_hook();
    let mut scratch = Scratch::new();
    let run = |scratch: &mut Scratch, input: &[u8]| -> bool {
        match &trace {
            Some((file, from)) if progress.load(Relaxed) >= *from => {
                let _ = std::fs::write(file, input);
            }
            _ => {}
        }
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| (target.check)(scratch, input)));
        progress.fetch_add(1, Relaxed);
        if result.is_err() {
            let input = match trace {
                Some(_) => input.to_vec(),
                None => shrink(target, scratch, input),
            };
            println!("CRASH-INPUT {}", fuzz::hex(&input));
        }
        result.is_ok()
    };
    let mut replayed = 0;
    let dir = corpus_root().join(target.name);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    for file in files {
        let input = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        if !run(&mut scratch, &input) {
            println!("corpus file {} fails", file.display());
            return ExitCode::from(101);
        }
        replayed += 1;
    }
    let mut fuzzer = Fuzzer::new(target, seed);
    while Instant::now() < deadline {
        let made = std::panic::catch_unwind(AssertUnwindSafe(|| fuzzer.next_input(&mut scratch)));
        let Ok((_, input)) = made else {
            println!("CRASH-GENERATING");
            return ExitCode::from(101);
        };
        if !run(&mut scratch, &input) {
            return ExitCode::from(101);
        }
    }
    let c = fuzzer.counts;
    println!("RESULT {} {} {} {replayed}", c.random, c.valid, c.mutated);
    ExitCode::SUCCESS
}
