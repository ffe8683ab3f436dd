//! How refused handshakes reach the log: a few in full, the rest summed up.
//!
//! Anyone who can send UDP to a node can make it refuse handshakes (forged
//! QUIC Initial packets need no certificate), thousands a second. Each
//! refusal is counted (`TransportStats::connections_refused`), but only the
//! first [`LOGGED_PER_INTERVAL`] of each [`INTERVAL`] are logged one by one;
//! the others are counted as unlogged (`TransportStats::refusals_unlogged`)
//! and reported in one line when their interval ends, with the last of them
//! as an example. An operator still sees that something is knocking, and
//! the log cannot be used to fill the disk.
//!
//! Sans-IO: time comes in as an argument.
//!
//! ```text
//! refused(now, addr, why) ──► Verdict { summary of the interval that ended (if any), log this one? }
//! flush(now)              ──► summary of the interval that ended (if any)
//! ```

use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long one interval of the refusal log lasts.
pub(crate) const INTERVAL: Duration = Duration::from_secs(10);

/// Refusals logged in full per interval; the rest are only counted.
pub(crate) const LOGGED_PER_INTERVAL: u32 = 5;

/// Refusals an interval did not log one by one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Summary {
    /// How many.
    pub(crate) unlogged: u64,
    /// The last of them: from where, and why.
    pub(crate) last_addr: SocketAddr,
    pub(crate) last_reason: String,
}

/// What to do about one refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// Log this first: the interval before ended with unlogged refusals.
    pub(crate) summary: Option<Summary>,
    /// Log this refusal in full.
    pub(crate) log: bool,
}

/// The state of the refusal log: the current interval and what it held.
#[derive(Debug, Default)]
pub(crate) struct RefusalLog {
    /// When the current interval started (`None`: no refusal yet).
    started: Option<Instant>,
    /// Logged in full in the current interval.
    logged: u32,
    /// Not logged in the current interval, and the last of those.
    unlogged: u64,
    last: Option<(SocketAddr, String)>,
}

impl RefusalLog {
    /// A handshake from `addr` was refused at `now` because of `reason`.
    pub(crate) fn refused(&mut self, now: Instant, addr: SocketAddr, reason: &str) -> Verdict {
        let summary = self.flush(now);
        if self.started.is_none() {
            self.started = Some(now);
        }
        let log = self.logged < LOGGED_PER_INTERVAL;
        if log {
            self.logged += 1;
        } else {
            self.unlogged += 1;
            self.last = Some((addr, reason.to_owned()));
        }
        Verdict { summary, log }
    }

    /// Ends the current interval if it is over; returns its summary when it
    /// left refusals unlogged. Call at least once per [`INTERVAL`] so the
    /// summary of the last burst is not held back until the next refusal.
    pub(crate) fn flush(&mut self, now: Instant) -> Option<Summary> {
        let started = self.started?;
        if now.saturating_duration_since(started) < INTERVAL {
            return None;
        }
        let unlogged = std::mem::take(&mut self.unlogged);
        let last = self.last.take();
        *self = RefusalLog::default();
        let (last_addr, last_reason) = last?;
        (unlogged > 0).then_some(Summary {
            unlogged,
            last_addr,
            last_reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn a_burst_logs_a_few_then_one_summary_per_interval() {
        let start = Instant::now();
        let mut log = RefusalLog::default();
        let verdicts: Vec<Verdict> = (0..1000)
            .map(|i| log.refused(start, addr(i), "no certificate"))
            .collect();
        let logged = verdicts.iter().filter(|v| v.log).count();
        assert_eq!(logged, LOGGED_PER_INTERVAL as usize);
        assert!(verdicts.iter().all(|v| v.summary.is_none()));
        // Nothing to say before the interval ends.
        assert_eq!(log.flush(start + INTERVAL / 2), None);
        assert_eq!(
            log.flush(start + INTERVAL),
            Some(Summary {
                unlogged: 1000 - u64::from(LOGGED_PER_INTERVAL),
                last_addr: addr(999),
                last_reason: "no certificate".into(),
            })
        );
        // Said once.
        assert_eq!(log.flush(start + INTERVAL * 3), None);
    }

    #[test]
    fn the_next_refusal_after_an_interval_brings_its_summary_and_is_logged() {
        let start = Instant::now();
        let mut log = RefusalLog::default();
        for i in 0..7 {
            log.refused(start, addr(i), "bad");
        }
        let later = log.refused(start + INTERVAL, addr(9), "worse");
        assert!(later.log);
        assert_eq!(
            later.summary.map(|s| (s.unlogged, s.last_addr)),
            Some((2, addr(6)))
        );
    }

    #[test]
    fn a_quiet_interval_has_no_summary() {
        let start = Instant::now();
        let mut log = RefusalLog::default();
        assert!(log.refused(start, addr(1), "bad").log);
        assert_eq!(log.flush(start + INTERVAL), None);
        assert!(log.refused(start + INTERVAL * 2, addr(2), "bad").log);
    }
}
