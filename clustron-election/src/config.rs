//! Election configuration: lease length, clock-drift bound, renewal and
//! handover timing.

use std::time::Duration;

use crate::core::lease;

/// How the election is tuned. See [`Config::lan`] for where each default
/// comes from.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Config {
    /// `L`: how long a voter's promise lasts on the voter's own monotonic
    /// clock, from when it answered. The failover time after a leader crash
    /// is about `L` (voters must let the old promise run out), so this is the
    /// main knob between fast failover and tolerance to slow renewals.
    pub lease_duration: Duration,
    /// `ρ`: the largest deviation of any node's clock rate from true time
    /// (`1e-3` = 1000 ppm). Each clock runs at a rate in `[1 − ρ, 1 + ρ]`.
    pub max_drift: f64,
    /// `ε`: safety margin subtracted from the leader's lease. Must be at
    /// least `2ρL` (two clocks drifting in opposite directions); the rest
    /// absorbs timer lateness in the driver.
    pub lease_margin: Duration,
    /// Time between two lease renewals (and leader announcements) from the
    /// leader. Keep it a small fraction of `L` so several renewals can fail
    /// before the lease runs out.
    pub renew_interval: Duration,
    /// Longest wait before a candidate asks again when it has not won; it asks
    /// sooner when a refusal says when the blocking promise runs out.
    pub campaign_retry: Duration,
    /// A follower forgets the leader (and reports [`crate::Output::LeaderLost`])
    /// after this long without an announcement.
    pub leader_timeout: Duration,
    /// Hysteresis: a voter of higher priority must have been in this node's
    /// view for this long before the leader hands over to it. Also how long
    /// a node that stepped down stays out of the race.
    pub handover_delay: Duration,
    /// Largest summary (bytes from the layer above) a grant may carry.
    pub max_summary_len: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self::lan()
    }
}

impl Config {
    /// LAN defaults, chosen for a leader-crash failover with p99 under 1 s:
    ///
    /// - `L = 600 ms`: after a crash the voters' promises to the old leader
    ///   run out within `L` of the last renewal (so 450-600 ms after the
    ///   crash with renewals every 150 ms), then one round trip elects the
    ///   next candidate: about 0.5-0.6 s, well under the 1 s goal, leaving
    ///   room for a retry or two.
    /// - `ρ = 1e-3`: commodity quartz oscillators drift 20-100 ppm; 1000 ppm
    ///   is a 10× margin and still costs only `ρL = 0.6 ms` of lease.
    /// - `ε = 20 ms`: covers `2ρL = 1.2 ms` of opposite drift plus scheduler
    ///   and timer lateness on a loaded 2-core machine (a few ms) with room
    ///   to spare. The leader's lease from one renewal is then
    ///   `600·(1 − 0.001) − 20 ≈ 579 ms`.
    /// - renew every `150 ms` (`L/4`): a renewal sent at `t` holds the lease
    ///   to `t + 579 ms`, so the renewals at `t + 150`, `t + 300` and `t + 450`
    ///   can all be lost before the leader steps down.
    /// - campaign retry `50 ms`: a few LAN round trips; refusals carry the
    ///   remaining promise time, so a candidate usually retries exactly when
    ///   the old promise runs out instead.
    /// - leader timeout `600 ms` (`L`): four missed announcements.
    /// - handover delay `2 s`: several membership probe rounds (200 ms each),
    ///   so a node that flaps in and out of the view never gets leadership.
    pub fn lan() -> Self {
        Self {
            lease_duration: Duration::from_millis(600),
            max_drift: 1e-3,
            lease_margin: Duration::from_millis(20),
            renew_interval: Duration::from_millis(150),
            campaign_retry: Duration::from_millis(50),
            leader_timeout: Duration::from_millis(600),
            handover_delay: Duration::from_secs(2),
            max_summary_len: 64 * 1024,
        }
    }

    /// The leader's share of one lease: `L·(1 − ρ) − ε`.
    pub fn leader_lease(&self) -> Duration {
        lease::leader_lease(self.lease_duration, self.max_drift, self.lease_margin)
    }

    /// Checks every field; the error names the bad one.
    pub fn validate(self) -> Result<Self, ConfigError> {
        for (field, value) in [
            ("lease_duration", self.lease_duration),
            ("renew_interval", self.renew_interval),
            ("campaign_retry", self.campaign_retry),
            ("leader_timeout", self.leader_timeout),
            ("handover_delay", self.handover_delay),
        ] {
            if value.is_zero() {
                return Err(ConfigError::Zero(field));
            }
        }
        if !(0.0..0.1).contains(&self.max_drift) {
            return Err(ConfigError::DriftOutOfRange(self.max_drift));
        }
        let needed = self.lease_duration.mul_f64(2.0 * self.max_drift);
        if self.lease_margin < needed {
            return Err(ConfigError::MarginTooSmall {
                margin: self.lease_margin,
                needed,
            });
        }
        let leader_lease = self.leader_lease();
        if self.renew_interval * 2 >= leader_lease {
            return Err(ConfigError::RenewTooSlow {
                renew_interval: self.renew_interval,
                leader_lease,
            });
        }
        Ok(self)
    }
}

/// A refused configuration value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A duration that must be positive was zero.
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
    /// `max_drift` is negative, not a number, or 10% or more.
    #[error("max_drift = {0} is not in [0, 0.1)")]
    DriftOutOfRange(f64),
    /// The margin does not cover two clocks drifting apart.
    #[error("lease_margin ({margin:?}) must be at least 2·max_drift·lease_duration ({needed:?})")]
    MarginTooSmall {
        /// lease_margin.
        margin: Duration,
        /// 2ρL.
        needed: Duration,
    },
    /// Fewer than two renewals fit in the leader's lease.
    #[error("renew_interval ({renew_interval:?}) must be below half the leader's lease ({leader_lease:?})")]
    RenewTooSlow {
        /// renew_interval.
        renew_interval: Duration,
        /// `L·(1 − ρ) − ε`.
        leader_lease: Duration,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lan_preset_validates_and_bad_values_are_named() {
        Config::lan().validate().unwrap();
        let bad = Config {
            lease_margin: Duration::ZERO,
            ..Config::lan()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("lease_margin"));
        let bad = Config {
            renew_interval: Duration::from_millis(300),
            ..Config::lan()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("renew_interval"));
        let bad = Config {
            max_drift: f64::NAN,
            ..Config::lan()
        };
        assert!(bad.validate().is_err());
    }
}
