//! Re-checks a history saved with `clustron_tests::linearizability::save`.
//!
//! ```text
//! cargo run -p clustron-tests --example check_history -- HISTORY.jsonl [MAX_STEPS_PER_KEY]
//! ```
//!
//! Prints the report or the violation; exits 1 if the history is not
//! linearizable, 2 if undecided within the budget or on bad arguments.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clustron_tests::linearizability::{
    check_with_budget, load, Violation, DEFAULT_MAX_STEPS_PER_KEY,
};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(path) = args.next().map(PathBuf::from) else {
        eprintln!("usage: check_history HISTORY.jsonl [MAX_STEPS_PER_KEY]");
        return ExitCode::from(2);
    };
    let budget = match args.next().map(|b| b.parse::<u64>()) {
        None => DEFAULT_MAX_STEPS_PER_KEY,
        Some(Ok(budget)) => budget,
        Some(Err(error)) => {
            eprintln!("MAX_STEPS_PER_KEY: {error}");
            return ExitCode::from(2);
        }
    };
    let history = match load(&path) {
        Ok(history) => history,
        Err(error) => {
            eprintln!("{}: {error}", path.display());
            return ExitCode::from(2);
        }
    };
    let start = Instant::now();
    let result = check_with_budget(&history, budget);
    let elapsed = start.elapsed();
    match result {
        Ok(report) => {
            println!("linearizable: {report:?} in {elapsed:?}");
            ExitCode::SUCCESS
        }
        Err(violation @ Violation::NotLinearizable { .. }) => {
            println!("{violation}\n(decided in {elapsed:?})");
            ExitCode::from(1)
        }
        Err(violation @ Violation::Inconclusive { .. }) => {
            println!("{violation}\n(gave up after {elapsed:?})");
            ExitCode::from(2)
        }
    }
}
