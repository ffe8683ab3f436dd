//! Fuzzing of every decoder that reads bytes from the network or the disk.
//!
//! ```text
//!  seed ─► Rng ─┬─ random bytes ─────────────────────────────┐
//!               ├─ valid value ─► encode ─► (exact round trip)├─► target.check(bytes)
//!               └─ valid bytes ─► mutate ×1..8 ──────────────┘     (the product's decoder;
//!                  bit flips, truncation, insertion, slice           panics on a broken
//!                  duplication and repetition, varint and            property)
//!                  length-prefix tampering, splicing
//! ```
//!
//! A [`Target`] is one decoder: its `check` feeds any bytes to the
//! product's own decoding function and asserts what must hold for any input
//! (no panic, a stable value if it decodes, a refusal of the right kind if
//! not); its `valid` builds a random valid input and asserts that it comes
//! back exactly. [`Fuzzer`] draws inputs from one seeded RNG, so a run is
//! replayed by its seed. The driver, with time budget, child processes
//! (to catch stack overflows, huge allocations and hangs) and the
//! regression corpus, is `tests/tests/fuzz_decoders.rs`.

pub mod gen;
pub mod targets;

use std::path::PathBuf;

use fastrand::Rng;

pub use targets::{all, Pems};

/// One decoder under test.
#[derive(Debug, Clone, Copy)]
pub struct Target {
    /// A behaviour sentence: what holds for any input.
    pub name: &'static str,
    /// Feeds one input to the decoder; panics if a property fails.
    pub check: fn(&mut Scratch, &[u8]),
    /// A random valid input, after checking that it round-trips exactly.
    pub valid: fn(&mut Scratch, &mut Rng) -> Vec<u8>,
}

/// Per-process state the targets share: a temporary folder (in memory
/// when `/dev/shm` exists, so file targets run fast) and certificates.
#[derive(Debug)]
pub struct Scratch {
    root: tempfile::TempDir,
    current: Option<PathBuf>,
    next: u64,
    pems: Option<Pems>,
}

impl Scratch {
    /// A new scratch folder.
    pub fn new() -> Scratch {
        let shm = std::path::Path::new("/dev/shm");
        let root = match shm.is_dir() {
            true => tempfile::Builder::new()
                .prefix("clustron-fuzz")
                .tempdir_in(shm),
            false => tempfile::Builder::new().prefix("clustron-fuzz").tempdir(),
        }
        .or_else(|_| tempfile::tempdir())
        .expect("a temporary folder");
        Scratch {
            root,
            current: None,
            next: 0,
            pems: None,
        }
    }

    /// An empty folder for one execution; the previous one is removed.
    pub fn fresh_dir(&mut self) -> PathBuf {
        if let Some(old) = self.current.take() {
            let _ = std::fs::remove_dir_all(old);
        }
        self.next += 1;
        let dir = self.root.path().join(self.next.to_string());
        std::fs::create_dir_all(&dir).expect("creates a scratch folder");
        self.current = Some(dir.clone());
        dir
    }

    /// A CA with a node and a client certificate, made on first use.
    pub fn pems(&mut self) -> &Pems {
        self.pems.get_or_insert_with(Pems::generate)
    }
}

impl Default for Scratch {
    fn default() -> Self {
        Self::new()
    }
}

/// How an input was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Uniformly random bytes.
    Random,
    /// A valid input, unchanged (its round trip was checked).
    Valid,
    /// A valid input after one or more mutations.
    Mutated,
}

/// Executions per origin.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Random inputs checked.
    pub random: u64,
    /// Valid inputs round-tripped and checked.
    pub valid: u64,
    /// Mutated inputs checked.
    pub mutated: u64,
}

impl Counts {
    /// All executions.
    pub fn total(&self) -> u64 {
        self.random + self.valid + self.mutated
    }
}

/// Longest input a mutation may make.
pub const MAX_INPUT: usize = 1 << 20;

/// Recent valid inputs kept for splicing.
const POOL: usize = 32;

/// Draws inputs for one target from one seed.
#[derive(Debug)]
pub struct Fuzzer {
    target: Target,
    rng: Rng,
    pool: Vec<Vec<u8>>,
    /// What ran so far.
    pub counts: Counts,
}

impl Fuzzer {
    /// A fuzzer for `target` seeded with `seed`.
    pub fn new(target: Target, seed: u64) -> Fuzzer {
        Fuzzer {
            target,
            rng: Rng::with_seed(seed),
            pool: Vec::new(),
            counts: Counts::default(),
        }
    }

    /// Makes the next input. A valid one has had its round trip checked
    /// already (a panic here is a crash of the encoder or decoder).
    pub fn next_input(&mut self, scratch: &mut Scratch) -> (Origin, Vec<u8>) {
        let roll = self.rng.u8(..20);
        if roll < 2 {
            self.counts.random += 1;
            return (Origin::Random, random_bytes(&mut self.rng));
        }
        let valid = (self.target.valid)(scratch, &mut self.rng);
        if self.pool.len() < POOL {
            self.pool.push(valid.clone());
        } else {
            let slot = self.rng.usize(..POOL);
            self.pool[slot] = valid.clone();
        }
        if roll < 4 {
            self.counts.valid += 1;
            return (Origin::Valid, valid);
        }
        let mut input = valid;
        for _ in 0..1 + self.rng.usize(..8) {
            mutate(&mut self.rng, &mut input, &self.pool);
        }
        self.counts.mutated += 1;
        (Origin::Mutated, input)
    }
}

/// Random bytes: mostly short, sometimes long; sometimes from a small
/// alphabet of edge values.
pub fn random_bytes(rng: &mut Rng) -> Vec<u8> {
    let len = match rng.u8(..10) {
        0..=3 => rng.usize(..16),
        4..=8 => rng.usize(..256),
        _ => rng.usize(..4096),
    };
    let edgy = rng.bool();
    (0..len)
        .map(|_| match edgy {
            true => [0, 1, 0x7f, 0x80, 0xff, b'a'][rng.usize(..6)],
            false => rng.u8(..),
        })
        .collect()
}

/// Values that break length checks and varint decoders.
fn interesting_u64(rng: &mut Rng, len: usize) -> u64 {
    const MAX_FRAME: u64 = 64 * 1024;
    match rng.u8(..12) {
        0 => 0,
        1 => 1,
        2 => u64::MAX,
        3 => u32::MAX as u64,
        4 => i32::MAX as u64 + 1,
        5 => MAX_FRAME,
        6 => MAX_FRAME + 1,
        7 => len as u64,
        8 => (len as u64).saturating_sub(4),
        9 => 1 << rng.u32(..64),
        10 => (len as u64) + 1,
        _ => rng.u64(..),
    }
}

/// Text that parsers of TOML, PEM and RESP care about.
const DICTIONARY: &[&[u8]] = &[
    b"[",
    b"]",
    b"{",
    b"}",
    b"=",
    b"\"",
    b"'''",
    b"\"\"\"",
    b"\n",
    b"[[a]]",
    b"[a.b.c]",
    b"a.b.c = 1\n",
    b"1e999",
    b"inf",
    b"nan",
    b"-0",
    b"9223372036854775808",
    b"1979-05-27T07:32:00Z",
    b"\\u0000",
    b"-----BEGIN CERTIFICATE-----\n",
    b"-----END CERTIFICATE-----\n",
    b"-----BEGIN PRIVATE KEY-----\n",
    b"-----END PRIVATE KEY-----\n",
    b"MIIB",
    b"\x30\x82\xff\xff",
    b"\x30\x80",
    b"\r\n",
    b"*3\r\n",
    b"$-1\r\n",
    b"$99999999999\r\n",
    b"\"\\x4",
];

/// Applies one random mutation to `data`; `pool` gives other inputs to
/// splice from.
pub fn mutate(rng: &mut Rng, data: &mut Vec<u8>, pool: &[Vec<u8>]) {
    let len = data.len();
    let pos = |rng: &mut Rng| rng.usize(..=len);
    match rng.u8(..12) {
        0 if len > 0 => {
            let at = rng.usize(..len);
            data[at] ^= 1 << rng.u32(..8);
        }
        1 if len > 0 => {
            let at = rng.usize(..len);
            data[at] = [0, 1, 0x7f, 0x80, 0xfe, 0xff][rng.usize(..6)];
        }
        2 => {
            let at = pos(rng);
            let extra = gen::bytes(rng, 8);
            data.splice(at..at, extra);
        }
        3 if len > 0 => {
            let at = rng.usize(..len);
            let end = (at + 1 + rng.usize(..16)).min(len);
            data.drain(at..end);
        }
        4 => {
            let at = pos(rng);
            data.truncate(at);
        }
        5 if len > 0 => {
            let from = rng.usize(..len);
            let end = (from + 1 + rng.usize(..64)).min(len);
            let slice = data[from..end].to_vec();
            let at = pos(rng);
            data.splice(at..at, slice);
        }
        6 if len > 0 => {
            // Repetition: deep nesting and long runs from a short pattern.
            let from = rng.usize(..len);
            let end = (from + 1 + rng.usize(..16)).min(len);
            let slice = data[from..end].to_vec();
            let times = match rng.u8(..4) {
                0 => rng.usize(2..20_000),
                _ => rng.usize(2..64),
            };
            let times = times.min(MAX_INPUT.saturating_sub(len) / slice.len());
            let run: Vec<u8> = slice
                .iter()
                .copied()
                .cycle()
                .take(slice.len() * times)
                .collect();
            data.splice(from..from, run);
        }
        7 => {
            // A varint (postcard lengths, counts, discriminants).
            let at = pos(rng);
            let mut value = interesting_u64(rng, len);
            let mut varint = Vec::new();
            loop {
                let byte = (value & 0x7f) as u8;
                value >>= 7;
                if value == 0 {
                    varint.push(byte);
                    break;
                }
                varint.push(byte | 0x80);
            }
            let end = (at + rng.usize(..4)).min(len);
            data.splice(at..end, varint);
        }
        8 if len >= 4 => {
            // A 32-bit length prefix (frames, WAL records), often the first.
            let at = if rng.u8(..3) == 0 {
                0
            } else {
                rng.usize(..=len - 4)
            };
            let value = interesting_u64(rng, len) as u32;
            let bytes = match rng.bool() {
                true => value.to_be_bytes(),
                false => value.to_le_bytes(),
            };
            data[at..at + 4].copy_from_slice(&bytes);
        }
        9 if !pool.is_empty() => {
            let other = &pool[rng.usize(..pool.len())];
            let cut = pos(rng);
            let from = rng.usize(..=other.len());
            data.truncate(cut);
            data.extend_from_slice(&other[from..]);
        }
        10 if !pool.is_empty() && len > 0 => {
            let other = &pool[rng.usize(..pool.len())];
            if !other.is_empty() {
                let from = rng.usize(..other.len());
                let n = (1 + rng.usize(..32)).min(other.len() - from);
                let at = rng.usize(..len);
                let n = n.min(len - at);
                data[at..at + n].copy_from_slice(&other[from..from + n]);
            }
        }
        11 => {
            let token = DICTIONARY[rng.usize(..DICTIONARY.len())];
            let at = pos(rng);
            data.splice(at..at, token.iter().copied());
        }
        _ => {
            let at = pos(rng);
            data.insert(at, rng.u8(..));
        }
    }
    data.truncate(MAX_INPUT);
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes from [`hex`] text (whitespace ignored); `None` if it is not hex.
pub fn unhex(text: &str) -> Option<Vec<u8>> {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if digits.len() % 2 != 0 {
        return None;
    }
    digits
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok())
        .collect()
}
