//! Seeds for randomised tests: derived from the test name, overridden by
//! `CLUSTRON_SEED` (replay one seed) or `CLUSTRON_SEEDS` (how many to run),
//! optionally bounded in wall time by `CLUSTRON_SIM_BUDGET_SECS`.
//!
//! The derivation is FNV-1a of the name followed by SplitMix64, both fixed
//! algorithms, so a seed list never changes with the Rust version (std's
//! `DefaultHasher` makes no such promise).

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

/// Environment variable naming the one seed to replay.
pub const SEED_VAR: &str = "CLUSTRON_SEED";

/// Environment variable giving how many seeds each randomised test runs.
pub const SEED_COUNT_VAR: &str = "CLUSTRON_SEEDS";

/// Environment variable giving, in seconds, how long a budgeted randomised
/// test ([`run_seeds_within`]) keeps starting new seeds.
pub const BUDGET_VAR: &str = "CLUSTRON_SIM_BUDGET_SECS";

/// Seeds for a randomised test: if `CLUSTRON_SEED` is set, just that one;
/// otherwise `default_count` seeds (or `CLUSTRON_SEEDS=n`), derived
/// deterministically from `test_name` so that different tests use different
/// seeds.
///
/// # Panics
///
/// If either variable is set to something that is not a number, so a typo
/// never silently runs other seeds than intended.
pub fn seeds(test_name: &str, default_count: u64) -> Vec<u64> {
    let seed = std::env::var(SEED_VAR).ok();
    if seed.is_some() {
        log_replay();
    }
    let count = std::env::var(SEED_COUNT_VAR).ok();
    seeds_from(test_name, default_count, seed.as_deref(), count.as_deref())
}

/// A replayed seed logs what `RUST_LOG` asks for to stderr (run the test
/// with `--nocapture`): the protocols' own tracing is how a failing seed is
/// read. Sim time is not wall time, so the timestamps are left out.
fn log_replay() {
    let Ok(filter) = tracing_subscriber::EnvFilter::try_from_default_env() else {
        return;
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .without_time()
        .with_test_writer()
        .try_init();
}

/// [`seeds`] with the two environment values passed in explicitly (`None` or
/// an empty string means unset), so tests can check the parsing without
/// touching the process environment, which parallel tests share.
///
/// A seed is decimal or `0x`-prefixed hexadecimal.
///
/// # Panics
///
/// If a value is set but does not parse.
pub fn seeds_from(
    test_name: &str,
    default_count: u64,
    seed: Option<&str>,
    count: Option<&str>,
) -> Vec<u64> {
    if let Some(seed) = set(seed) {
        let parsed = parse_u64(seed)
            .unwrap_or_else(|| panic!("{SEED_VAR}={seed:?} is not a u64 (decimal or 0x hex)"));
        return vec![parsed];
    }
    let count = match set(count) {
        Some(count) => {
            parse_u64(count).unwrap_or_else(|| panic!("{SEED_COUNT_VAR}={count:?} is not a count"))
        }
        None => default_count,
    };
    let mut state = fnv1a(test_name);
    (0..count).map(|_| splitmix64(&mut state)).collect()
}

/// Runs `f` for every seed from [`seeds`]`(test_name, default_count)`.
///
/// If `f` panics, prints `"<test_name> failed with seed <s>; replay with
/// CLUSTRON_SEED=<s>"` to stderr and re-raises the panic, so the test fails
/// with its own message and the seed to replay it.
pub fn run_seeds(test_name: &str, default_count: u64, f: impl Fn(u64)) {
    for seed in seeds(test_name, default_count) {
        tracing::info!(test_name, seed, "running seed");
        // Unwind safety: after a panic nothing here touches `f` again; the
        // panic is re-raised at once.
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| f(seed))) {
            eprintln!("{}", replay_hint(test_name, seed));
            resume_unwind(panic);
        }
    }
}

/// What [`run_seeds_within`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeedsRun {
    /// Seeds run to the end.
    pub run: usize,
    /// Seeds the count asked for.
    pub planned: usize,
    /// Wall time spent.
    pub elapsed: Duration,
}

/// [`run_seeds`], but starting no new seed once `budget` of wall time has
/// passed (`CLUSTRON_SIM_BUDGET_SECS=s` overrides it), so that a large
/// `CLUSTRON_SEEDS` on a slow machine cannot overrun CI. A replayed seed
/// (`CLUSTRON_SEED`) always runs. The first seed always runs, so a test
/// never passes having checked nothing.
///
/// # Panics
///
/// As [`run_seeds`], and if `CLUSTRON_SIM_BUDGET_SECS` is not a number.
pub fn run_seeds_within(
    test_name: &str,
    default_count: u64,
    budget: Duration,
    f: impl Fn(u64),
) -> SeedsRun {
    let budget = match set(std::env::var(BUDGET_VAR).ok().as_deref()) {
        Some(secs) => Duration::from_secs_f64(
            secs.parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s >= 0.0)
                .unwrap_or_else(|| panic!("{BUDGET_VAR}={secs:?} is not a number of seconds")),
        ),
        None => budget,
    };
    let seeds = seeds(test_name, default_count);
    let started = Instant::now();
    let mut run = 0;
    for &seed in &seeds {
        if run > 0 && started.elapsed() >= budget {
            eprintln!(
                "{test_name}: time budget of {budget:?} spent after {run} of {} seeds",
                seeds.len()
            );
            break;
        }
        tracing::info!(test_name, seed, "running seed");
        // Unwind safety: after a panic nothing here touches `f` again; the
        // panic is re-raised at once.
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| f(seed))) {
            eprintln!("{}", replay_hint(test_name, seed));
            resume_unwind(panic);
        }
        run += 1;
    }
    SeedsRun {
        run,
        planned: seeds.len(),
        elapsed: started.elapsed(),
    }
}

/// The line [`run_seeds`] prints when a seed fails.
pub fn replay_hint(test_name: &str, seed: u64) -> String {
    format!("{test_name} failed with seed {seed}; replay with {SEED_VAR}={seed}")
}

/// The trimmed value of a variable, `None` if unset or empty.
fn set(value: Option<&str>) -> Option<&str> {
    value.map(str::trim).filter(|v| !v.is_empty())
}

fn parse_u64(text: &str) -> Option<u64> {
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

/// FNV-1a, 64 bit.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// SplitMix64 (Steele, Lea, Flood 2014): one step of a well-mixed sequence.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_reference_values() {
        assert_eq!(fnv1a(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a("foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn splitmix64_matches_the_reference_sequence() {
        let mut state = 0;
        assert_eq!(splitmix64(&mut state), 0xe220_a839_7b1d_cdaf);
        assert_eq!(splitmix64(&mut state), 0x6e78_9e6a_a1b9_65f4);
    }

    #[test]
    fn hex_and_decimal_seeds_parse() {
        assert_eq!(parse_u64("42"), Some(42));
        assert_eq!(parse_u64("0x2a"), Some(42));
        assert_eq!(parse_u64("0X2A"), Some(42));
        assert_eq!(parse_u64("forty"), None);
    }
}
