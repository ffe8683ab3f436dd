//! Lease clock tests: keep-alives, one report per expiry, retries of lost
//! revocations, followers keeping no time.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use super::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn ns(n: u64) -> Duration {
    Duration::from_nanos(n)
}

#[test]
fn at_the_instant_poll_timeout_names_the_lease_has_expired() {
    // A driver woken exactly at `poll_timeout` must find the lease expired,
    // or it would be asked to wake at that same instant again, forever.
    let t0 = Instant::now();
    let mut c = LeaseClock::default();
    c.become_leader(t0, [(LeaseId(1), 100)]);
    let at = c.poll_timeout().unwrap();
    assert!(c.poll_expired(at - ns(1)).is_empty());
    assert_eq!(c.poll_expired(at), [LeaseId(1)]);
    assert_eq!(c.poll_timeout(), None);
}

#[test]
fn keep_alives_push_the_deadline_and_expiry_is_reported_once() {
    let t0 = Instant::now();
    let mut c = LeaseClock::default();
    c.become_leader(t0, []);
    c.granted(t0, LeaseId(1), 100);
    c.granted(t0, LeaseId(2), 300);
    assert_eq!(c.keep_alive(t0 + ms(90), LeaseId(1)), Some(ms(100)));
    assert_eq!(c.time_to_live(t0 + ms(100), LeaseId(1)), Some(ms(90)));
    assert_eq!(c.poll_timeout(), Some(t0 + ms(190) + ns(1)));
    assert!(c.poll_expired(t0 + ms(190)).is_empty());
    assert_eq!(c.poll_expired(t0 + ms(191)), [LeaseId(1)]);
    assert!(c.poll_expired(t0 + ms(250)).is_empty(), "reported twice");
    // Expiring leases take no keep-alive.
    assert_eq!(c.keep_alive(t0 + ms(250), LeaseId(1)), None);
    assert_eq!(c.poll_expired(t0 + ms(301)), [LeaseId(2)]);
    c.revoked(LeaseId(1));
    assert_eq!(c.time_to_live(t0, LeaseId(1)), None);
}

#[test]
fn a_lost_revocation_is_proposed_again() {
    let t0 = Instant::now();
    let mut c = LeaseClock::default();
    c.become_leader(t0, [(LeaseId(5), 10)]);
    assert_eq!(c.poll_expired(t0 + ms(11)), [LeaseId(5)]);
    c.retry(t0 + ms(20), LeaseId(5));
    assert_eq!(c.poll_expired(t0 + ms(20)), [LeaseId(5)]);
    c.revoked(LeaseId(5));
    c.retry(t0 + ms(30), LeaseId(5));
    assert!(c.poll_expired(t0 + ms(40)).is_empty());
    assert_eq!(c.poll_timeout(), None);
}

#[test]
fn followers_keep_no_time_and_a_new_leader_restarts_every_lease() {
    let t0 = Instant::now();
    let mut c = LeaseClock::default();
    c.granted(t0, LeaseId(1), 100);
    assert_eq!(c.keep_alive(t0, LeaseId(1)), None);
    assert_eq!(c.poll_timeout(), None);
    c.become_leader(t0 + ms(500), [(LeaseId(1), 100)]);
    assert_eq!(c.poll_timeout(), Some(t0 + ms(600) + ns(1)));
    c.step_down();
    assert_eq!(c.poll_timeout(), None);
    assert!(c.poll_expired(t0 + ms(10_000)).is_empty());
}

#[test]
fn an_absurd_ttl_does_not_overflow_the_clock() {
    let t0 = Instant::now();
    let mut c = LeaseClock::default();
    c.become_leader(t0, [(LeaseId(1), u64::MAX)]);
    c.granted(t0, LeaseId(2), u64::MAX);
    assert!(c.keep_alive(t0, LeaseId(2)).is_some());
    assert!(c.poll_expired(t0 + ms(1000)).is_empty());
    assert!(c.time_to_live(t0, LeaseId(1)).is_some());
}
