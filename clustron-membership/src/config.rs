//! Membership configuration: timing of probes, suspicion and gossip.

use std::time::Duration;

/// How the protocol is tuned. Defaults aim at a LAN of up to a few hundred
/// nodes; see [`Config::lan`] for where each value comes from.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Config {
    /// Time between two probes of this node (one target each). Scaled up by
    /// the local health multiplier when this node is itself struggling.
    pub probe_interval: Duration,
    /// How long to wait for a direct ack before asking others to probe
    /// indirectly. Keep it well above the network's p99 round trip.
    pub probe_timeout: Duration,
    /// Members asked to probe indirectly when the direct probe times out (`k`).
    pub indirect_checks: usize,
    /// Minimum suspicion timeout, in probe intervals, per log10 of the
    /// cluster size: `min = suspicion_mult × max(1, log10 N) × probe_interval`.
    pub suspicion_mult: u32,
    /// The suspicion timeout starts at `suspicion_max_mult × min` and shrinks
    /// towards `min` as independent confirmations arrive (Lifeguard).
    pub suspicion_max_mult: u32,
    /// Independent confirmations that bring the timeout down to its minimum.
    pub suspicion_confirmations: usize,
    /// News is retransmitted `retransmit_mult × ceil(log10(N + 1))` times.
    pub retransmit_mult: u32,
    /// Interval of news-only gossip rounds; nothing is sent when there is no news.
    pub gossip_interval: Duration,
    /// Members told per gossip round.
    pub gossip_fanout: usize,
    /// Interval of full-state exchanges with one random member, scaled up
    /// with log2 of the cluster size above 32 members.
    pub push_pull_interval: Duration,
    /// Interval of attempts to reach one random dead member with a full-state
    /// exchange, so that the two sides of a healed partition find each other
    /// again (Serf's reconnect). Nothing is sent when no member is dead.
    pub reconnect_interval: Duration,
    /// Highest local health score (Lifeguard). Probe interval and timeout
    /// are multiplied by `score + 1`.
    pub awareness_max: u32,
    /// Dead and left members are forgotten after this long.
    pub reap_after: Duration,
    /// First wait between join attempts; doubles up to 8× on each failure.
    pub join_retry_interval: Duration,
    /// Longest wait for a graceful leave to be passed on before stopping.
    pub leave_timeout: Duration,
    /// Largest message sent as a datagram; larger ones go on a stream.
    pub max_datagram_payload: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self::lan()
    }
}

impl Config {
    /// LAN defaults. HashiCorp memberlist's LAN profile (probe 1 s, timeout
    /// 500 ms, suspicion multiplier 4) is the reference we aim to beat:
    ///
    /// - probe every 200 ms with a 100 ms ack timeout: a crashed node is
    ///   first probed after about 200 ms on average (N probers, one probe
    ///   each per interval), while a LAN round trip is far below 100 ms;
    /// - suspicion minimum 3 × log10 N × 200 ms (1.2 s at N = 100), maximum
    ///   6× that: a real failure is confirmed within a few hundred ms by
    ///   members that probe the suspect themselves, so the timeout drops to
    ///   the minimum, while a false suspicion gets few confirmations and
    ///   keeps up to 7.2 s to be refuted;
    /// - gossip every 100 ms to 3 members, only when there is news, each item
    ///   sent 6 × ceil(log10(N + 1)) times (memberlist: 4×): about 12
    ///   receipts per member on average, so the chance that one member misses
    ///   a piece of news is about e⁻¹², where 4× leaves it near e⁻⁸;
    /// - full state every 30 s, as memberlist;
    /// - one attempt every 500 ms to reach a random dead member, so a healed
    ///   partition merges without operator action in about a second (one
    ///   full-state exchange across the cut, then gossip): the election needs
    ///   a healed member back in the view before it counts its vote, so this
    ///   bounds how long a cluster that lost its majority stays without a
    ///   leader after the heal. (Serf tries every 30 s: there a member's
    ///   absence costs no availability.) One message per interval, and none
    ///   while no member is dead.
    pub fn lan() -> Self {
        Self {
            probe_interval: Duration::from_millis(200),
            probe_timeout: Duration::from_millis(100),
            indirect_checks: 3,
            suspicion_mult: 3,
            suspicion_max_mult: 6,
            suspicion_confirmations: 3,
            retransmit_mult: 6,
            gossip_interval: Duration::from_millis(100),
            gossip_fanout: 3,
            push_pull_interval: Duration::from_secs(30),
            reconnect_interval: Duration::from_millis(500),
            awareness_max: 8,
            reap_after: Duration::from_secs(3600),
            join_retry_interval: Duration::from_millis(500),
            leave_timeout: Duration::from_secs(2),
            max_datagram_payload: 1100,
        }
    }

    /// WAN defaults: slower probes, longer timeouts (memberlist's WAN profile).
    pub fn wan() -> Self {
        Self {
            probe_interval: Duration::from_secs(5),
            probe_timeout: Duration::from_secs(3),
            suspicion_mult: 6,
            gossip_interval: Duration::from_millis(500),
            gossip_fanout: 4,
            push_pull_interval: Duration::from_secs(60),
            reconnect_interval: Duration::from_secs(10),
            join_retry_interval: Duration::from_secs(2),
            leave_timeout: Duration::from_secs(5),
            ..Self::lan()
        }
    }

    /// Checks every field; the error names the bad one.
    pub fn validate(self) -> Result<Self, ConfigError> {
        for (field, value) in [
            ("probe_interval", self.probe_interval),
            ("probe_timeout", self.probe_timeout),
            ("gossip_interval", self.gossip_interval),
            ("push_pull_interval", self.push_pull_interval),
            ("reconnect_interval", self.reconnect_interval),
            ("reap_after", self.reap_after),
            ("join_retry_interval", self.join_retry_interval),
            ("leave_timeout", self.leave_timeout),
        ] {
            if value.is_zero() {
                return Err(ConfigError::Zero(field));
            }
        }
        if self.probe_timeout >= self.probe_interval {
            return Err(ConfigError::ProbeTimeoutNotBelowInterval {
                timeout: self.probe_timeout,
                interval: self.probe_interval,
            });
        }
        for (field, value) in [
            ("suspicion_mult", self.suspicion_mult as usize),
            ("suspicion_max_mult", self.suspicion_max_mult as usize),
            ("retransmit_mult", self.retransmit_mult as usize),
            ("gossip_fanout", self.gossip_fanout),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero(field));
            }
        }
        if self.max_datagram_payload < 200 {
            return Err(ConfigError::DatagramTooSmall(self.max_datagram_payload));
        }
        Ok(self)
    }
}

/// A refused configuration value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A value that must be positive was zero.
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
    /// The ack timeout would outlast the probe.
    #[error("probe_timeout ({timeout:?}) must be below probe_interval ({interval:?})")]
    ProbeTimeoutNotBelowInterval {
        /// probe_timeout.
        timeout: Duration,
        /// probe_interval.
        interval: Duration,
    },
    /// Too small for a probe with any news.
    #[error("max_datagram_payload = {0} is below 200 bytes")]
    DatagramTooSmall(usize),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_validate_and_bad_values_are_named() {
        Config::lan().validate().unwrap();
        Config::wan().validate().unwrap();
        let bad = Config {
            probe_timeout: Duration::from_secs(1),
            ..Config::lan()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("probe_timeout"));
        let bad = Config {
            gossip_fanout: 0,
            ..Config::lan()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("gossip_fanout"));
    }
}
