//! A node's drifting local clock: exact integer conversion between simulator
//! (true) time and the node's local time.
//!
//! Times are nanoseconds since the simulator's epoch. The rate is held in parts
//! per billion so that every conversion is integer arithmetic: no float rounding
//! can make a conversion non-monotonic or differ between machines.
//!
//! The clock is piecewise linear: changing the rate re-anchors it at the
//! current instant, so local time never jumps, whatever the rate history.

/// Parts per billion of a clock that runs at exactly the true rate.
pub(crate) const UNIT_RATE_PPB: u64 = 1_000_000_000;

/// Largest accepted rate (local seconds per true second). Far beyond any real
/// drift; it only keeps the arithmetic comfortably inside `u128`.
pub(crate) const MAX_RATE: f64 = 1_000.0;

/// A local clock that runs at `rate_ppb / 1e9` times true time since its anchor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DriftClock {
    /// Local nanoseconds per 1e9 true nanoseconds.
    rate_ppb: u64,
    /// True time (ns since epoch) at which the current rate took effect.
    true_anchor: u64,
    /// Local time (ns since epoch) at `true_anchor`.
    local_anchor: u64,
}

impl DriftClock {
    /// A clock that agrees with true time.
    pub(crate) const fn exact() -> Self {
        Self {
            rate_ppb: UNIT_RATE_PPB,
            true_anchor: 0,
            local_anchor: 0,
        }
    }

    /// Converts a rate such as `1.0 + 1e-4` into parts per billion.
    ///
    /// # Panics
    ///
    /// If `rate` is not finite, not positive, or above [`MAX_RATE`].
    pub(crate) fn rate_to_ppb(rate: f64) -> u64 {
        assert!(
            rate.is_finite() && rate > 0.0 && rate <= MAX_RATE,
            "clock rate must be in (0, {MAX_RATE}], got {rate}"
        );
        // The assertion bounds the product to (0, 1e12], so the cast is exact
        // after rounding; `max(1)` keeps a tiny positive rate from becoming zero.
        ((rate * UNIT_RATE_PPB as f64).round() as u64).max(1)
    }

    /// Local time at true time `now`.
    ///
    /// Monotonic non-decreasing in `now`. `now` must not precede the anchor
    /// (true time never goes back); if it does, the anchor's local time is
    /// returned.
    pub(crate) fn local(&self, now: u64) -> u64 {
        let since = now.saturating_sub(self.true_anchor) as u128;
        let local = since * self.rate_ppb as u128 / UNIT_RATE_PPB as u128;
        saturate(self.local_anchor as u128 + local)
    }

    /// The earliest true time at which this clock reads at least `local`.
    ///
    /// For `local` at or before the anchor this is the anchor itself; the
    /// caller clamps it to the current time. The result `t` satisfies
    /// `self.local(t) >= local` and `self.local(t - 1) < local` (when
    /// `t - 1` is after the anchor), so a timer converted with it never fires
    /// early in local time and never later than needed.
    pub(crate) fn true_time_reaching(&self, local: u64) -> u64 {
        let Some(ahead) = local.checked_sub(self.local_anchor) else {
            return self.true_anchor;
        };
        let rate = self.rate_ppb as u128;
        let since = (ahead as u128 * UNIT_RATE_PPB as u128).div_ceil(rate);
        saturate(self.true_anchor as u128 + since)
    }

    /// Switches to `rate_ppb` from true time `now` on, keeping local time
    /// continuous.
    pub(crate) fn set_rate(&mut self, now: u64, rate_ppb: u64) {
        self.local_anchor = self.local(now);
        self.true_anchor = now;
        self.rate_ppb = rate_ppb;
    }
}

/// Clamps a nanosecond count to `u64` (about 584 years).
fn saturate(nanos: u128) -> u64 {
    u64::try_from(nanos).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_convert_to_parts_per_billion() {
        for (rate, ppb) in [
            (1.0, 1_000_000_000),
            (1.0 + 1e-4, 1_000_100_000),
            (1.0 - 1e-4, 999_900_000),
            (2.0, 2_000_000_000),
            (0.5, 500_000_000),
            (1e-12, 1),
        ] {
            assert_eq!(DriftClock::rate_to_ppb(rate), ppb, "rate {rate}");
        }
    }

    #[test]
    #[should_panic(expected = "clock rate must be")]
    fn a_zero_rate_is_refused() {
        DriftClock::rate_to_ppb(0.0);
    }

    #[test]
    fn local_time_follows_the_rate_table() {
        let mut fast = DriftClock::exact();
        fast.set_rate(0, DriftClock::rate_to_ppb(1.0 + 1e-4));
        for (now, local) in [
            (0, 0),
            (1, 1),
            (10_000, 10_001),
            (10_000_000_000, 10_001_000_000),
            (600_000_000_000, 600_060_000_000),
        ] {
            assert_eq!(fast.local(now), local, "true {now}");
        }
    }

    #[test]
    fn changing_the_rate_keeps_local_time_continuous() {
        let mut clock = DriftClock::exact();
        clock.set_rate(1_000, 2 * UNIT_RATE_PPB);
        assert_eq!(clock.local(1_000), 1_000);
        assert_eq!(clock.local(1_500), 2_000);
        clock.set_rate(1_500, UNIT_RATE_PPB / 2);
        assert_eq!(clock.local(1_500), 2_000);
        assert_eq!(clock.local(2_500), 2_500);
    }

    #[test]
    fn conversion_back_gives_the_earliest_true_time_reaching_a_deadline() {
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..10_000 {
            let mut clock = DriftClock::exact();
            let anchor = rng.u64(0..1_000_000_000);
            let rate = DriftClock::rate_to_ppb(rng.f64() * 3.0 + 1e-3);
            clock.set_rate(anchor, rate);
            let deadline = clock.local(anchor) + rng.u64(0..10_000_000_000);
            let at = clock.true_time_reaching(deadline);
            assert!(clock.local(at) >= deadline, "{clock:?} {deadline} {at}");
            if at > anchor {
                assert!(clock.local(at - 1) < deadline, "{clock:?} {deadline} {at}");
            }
        }
    }

    #[test]
    fn a_deadline_before_the_anchor_maps_to_the_anchor() {
        let mut clock = DriftClock::exact();
        clock.set_rate(5_000, 3 * UNIT_RATE_PPB);
        assert_eq!(clock.true_time_reaching(10), 5_000);
    }
}
