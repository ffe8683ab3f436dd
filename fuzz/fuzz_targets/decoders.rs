//! libFuzzer entry point for every decoder target of
//! `clustron_tests::fuzz` (the same checks the stable, time-budgeted
//! `tests/tests/fuzz_decoders.rs` runs, here guided by coverage).
//!
//! ```text
//! CLUSTRON_FUZZ_TARGET=client_request cargo +nightly fuzz run decoders -- -max_total_time=60
//! ```
//!
//! `CLUSTRON_FUZZ_TARGET` picks the first target whose name contains it.
//! At start, 256 valid inputs of that target are added to the corpus
//! folder `fuzz/corpus/decoders-<target>/` when it is empty: pass that
//! folder as the corpus (`cargo fuzz run decoders fuzz/corpus/decoders-X`).

#![no_main]

use std::sync::{Mutex, OnceLock};

use clustron_tests::fuzz::{self, Scratch, Target};
use libfuzzer_sys::fuzz_target;

static STATE: OnceLock<(Target, Mutex<Scratch>)> = OnceLock::new();

fn state() -> &'static (Target, Mutex<Scratch>) {
    STATE.get_or_init(|| {
        let wanted = std::env::var("CLUSTRON_FUZZ_TARGET").unwrap_or_default();
        let target = fuzz::all()
            .into_iter()
            .find(|t| t.name.contains(&wanted))
            .unwrap_or_else(|| panic!("no fuzz target matches {wanted:?}"));
        (target, Mutex::new(Scratch::new()))
    })
}

fuzz_target!(
    init: {
        let (target, scratch) = state();
        let short = std::env::var("CLUSTRON_FUZZ_TARGET").unwrap_or_default();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("corpus")
            .join(format!("decoders-{short}"));
        let empty = std::fs::read_dir(&dir).map_or(true, |mut d| d.next().is_none());
        if empty && std::fs::create_dir_all(&dir).is_ok() {
            let mut scratch = scratch.lock().unwrap_or_else(|e| e.into_inner());
            let mut rng = fastrand::Rng::with_seed(1);
            for k in 0..256 {
                let input = (target.valid)(&mut scratch, &mut rng);
                let _ = std::fs::write(dir.join(format!("valid-{k}")), input);
            }
        }
        eprintln!("fuzzing {}", target.name);
    },
    |data: &[u8]| {
        let (target, scratch) = state();
        let mut scratch = scratch.lock().unwrap_or_else(|e| e.into_inner());
        (target.check)(&mut scratch, data);
    }
);
