//! Lifeguard's dynamic suspicion timeout.
//!
//! A suspicion starts with a long timeout and shrinks towards a minimum as
//! independent suspectors confirm it:
//!
//! ```text
//! timeout(c) = max(min, max − (max − min) · ln(c + 1) / ln(k + 1))
//! ```
//!
//! with `c` confirmations beyond the first suspector and `k` the number that
//! brings it to the minimum. A real failure is confirmed quickly by many
//! members; a false one (loss, a slow prober) is not, and keeps time to be
//! refuted.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::member::{Incarnation, NodeName};

/// `suspicion_mult × max(1, log10 n) × probe_interval`.
pub fn min_timeout(suspicion_mult: u32, n: usize, probe_interval: Duration) -> Duration {
    let scale = (n.max(1) as f64).log10().max(1.0);
    probe_interval.mul_f64(f64::from(suspicion_mult) * scale)
}

/// The timeout after `confirmations` independent confirmations.
pub fn timeout(min: Duration, max: Duration, k: usize, confirmations: usize) -> Duration {
    if k == 0 || confirmations >= k {
        return min;
    }
    let fraction = ((confirmations + 1) as f64).ln() / ((k + 1) as f64).ln();
    let shrunk = max.as_secs_f64() - (max.as_secs_f64() - min.as_secs_f64()) * fraction;
    Duration::from_secs_f64(shrunk.max(min.as_secs_f64()))
}

/// One running suspicion.
#[derive(Debug, Clone)]
pub struct Suspicion {
    /// The incarnation suspected.
    pub incarnation: Incarnation,
    /// When this node first heard of it.
    pub started: Instant,
    /// Distinct suspectors, the first included.
    pub suspectors: BTreeSet<NodeName>,
    /// Set when the timeout ran out short of `k` confirmations and this
    /// node probes the suspect once more before declaring it dead; the
    /// verdict waits for that probe to end.
    pub final_probe_until: Option<Instant>,
    min: Duration,
    max: Duration,
    k: usize,
}

impl Suspicion {
    /// A suspicion by `from`, heard at `now`.
    pub fn new(
        now: Instant,
        incarnation: Incarnation,
        from: NodeName,
        min: Duration,
        max: Duration,
        k: usize,
    ) -> Self {
        Self {
            incarnation,
            started: now,
            suspectors: BTreeSet::from([from]),
            final_probe_until: None,
            min,
            max,
            k,
        }
    }

    /// Adds a suspector; true if it is new (a confirmation).
    pub fn confirm(&mut self, from: NodeName) -> bool {
        self.suspectors.insert(from)
    }

    /// When the member is to be declared dead (or given a final probe).
    pub fn deadline(&self) -> Instant {
        let confirmations = self.suspectors.len().saturating_sub(1);
        let deadline = self.started + timeout(self.min, self.max, self.k, confirmations);
        self.final_probe_until
            .map_or(deadline, |until| deadline.max(until))
    }

    /// Whether enough independent suspectors agree that no final probe is
    /// needed.
    pub fn is_confirmed(&self) -> bool {
        self.suspectors.len().saturating_sub(1) >= self.k
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_minimum_scales_with_log10_of_the_cluster_size() {
        let interval = Duration::from_millis(200);
        let cases = [(1, 600), (5, 600), (10, 600), (100, 1200), (1000, 1800)];
        for (n, millis) in cases {
            assert_eq!(min_timeout(3, n, interval).as_millis(), millis, "n = {n}");
        }
    }

    #[test]
    fn confirmations_shrink_the_timeout_from_max_to_min() {
        let (min, max) = (Duration::from_secs(1), Duration::from_secs(6));
        let table = [(0, 6000), (1, 3500), (2, 2038), (3, 1000), (7, 1000)];
        for (confirmations, millis) in table {
            let got = timeout(min, max, 3, confirmations).as_millis();
            assert!(
                got.abs_diff(millis) <= 1,
                "{confirmations}: {got} != {millis}"
            );
        }
        assert_eq!(timeout(min, max, 0, 0), min, "no confirmations possible");
    }
}
