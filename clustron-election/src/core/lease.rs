//! Lease arithmetic, as pure functions (table-tested in `core/tests.rs`).
//!
//! Why the leader counts from the *send* of its request: each voter starts
//! its promise when it answers, which is after the request left the leader.
//! Counting from the send is therefore never later than any voter's start;
//! counting from the reply would add up to a whole round trip (or a delayed
//! reply's delay) past the earliest voter's expiry, during which a voter
//! could already grant the next epoch to someone else.
//!
//! Why `L·(1 − ρ) − ε`: a voter's `L` on its clock (rate at most `1 + ρ`)
//! lasts at least `L / (1 + ρ)` of true time; the leader's `D` on its clock
//! (rate at least `1 − ρ`) lasts at most `D / (1 − ρ)`. Safety needs
//! `D / (1 − ρ) ≤ L / (1 + ρ)`, i.e. `D ≤ L·(1 − ρ)/(1 + ρ) ≈ L·(1 − 2ρ)`.
//! `L·(1 − ρ)` alone misses that by `ρL`; the configuration requires
//! `ε ≥ 2ρL`, so `L·(1 − ρ) − ε` is below the exact bound.

use std::time::{Duration, Instant};

/// The leader's share of one lease: `L·(1 − ρ) − ε`, zero if the margin eats
/// it all.
pub fn leader_lease(lease: Duration, max_drift: f64, margin: Duration) -> Duration {
    let drift = max_drift.clamp(0.0, 1.0);
    lease.mul_f64(1.0 - drift).saturating_sub(margin)
}

/// Until when a leader may believe it holds the lease won by a request it
/// sent at `sent` (its own clock), once a majority granted that request.
pub fn leader_lease_end(
    sent: Instant,
    lease: Duration,
    max_drift: f64,
    margin: Duration,
) -> Instant {
    sent + leader_lease(lease, max_drift, margin)
}

/// Grants needed among `voters` voters: a strict majority.
pub fn majority(voters: usize) -> usize {
    voters / 2 + 1
}
