//! Unit tests of the user-event core.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::*;

fn name(s: &str) -> NodeName {
    NodeName::new(s).unwrap()
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn drain(core: &mut Core) -> Vec<Output> {
    std::iter::from_fn(|| core.poll_output()).collect()
}

fn delivered(outputs: &[Output]) -> Vec<u64> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Deliver(e) => Some(e.seq),
            _ => None,
        })
        .collect()
}

fn node(me: &str, now: Instant) -> Core {
    let mut core = Core::new(Config::default(), name(me), 1, now);
    core.set_members([
        (name("a"), addr(1)),
        (name("b"), addr(2)),
        (name("c"), addr(3)),
    ]);
    core
}

#[test]
fn a_published_event_is_delivered_here_and_sent_to_every_other_member() {
    let now = Instant::now();
    let mut a = node("a", now);
    let event = a.publish("t".into(), b"x".to_vec()).unwrap();
    let out = drain(&mut a);
    assert_eq!(out[0], Output::Deliver(event.clone()));
    let sent: Vec<SocketAddr> = out
        .iter()
        .filter_map(|o| match o {
            Output::Send {
                to,
                msg: Message::Events(e),
            } if e == &vec![event.clone()] => Some(*to),
            _ => None,
        })
        .collect();
    assert_eq!(sent, vec![addr(2), addr(3)]);
    assert_eq!((event.seq, event.lamport), (1, 1));
}

#[test]
fn events_are_delivered_in_origin_order_once_each() {
    let now = Instant::now();
    let mut a = node("a", now);
    let events: Vec<UserEvent> = (0..4)
        .map(|_| a.publish("t".into(), vec![]).unwrap())
        .collect();
    let mut b = node("b", now);
    b.handle_message(now, addr(1), Message::Events(vec![events[0].clone()]));
    // 3 and 2 arrive early and out of order; 2 twice.
    for i in [2, 3, 2] {
        b.handle_message(now, addr(1), Message::Events(vec![events[i].clone()]));
    }
    assert_eq!(delivered(&drain(&mut b)), vec![1]);
    b.handle_message(now, addr(1), Message::Events(vec![events[1].clone()]));
    assert_eq!(delivered(&drain(&mut b)), vec![2, 3, 4]);
    b.handle_message(now, addr(1), Message::Events(events.clone()));
    assert!(
        delivered(&drain(&mut b)).is_empty(),
        "duplicates were delivered again"
    );
    assert!(
        b.lamport() > events[3].lamport,
        "the Lamport clock moved past the origin's"
    );
}

#[test]
fn a_digest_is_answered_with_the_events_it_lacks() {
    let now = Instant::now();
    let mut a = node("a", now);
    let events: Vec<UserEvent> = (0..3)
        .map(|_| a.publish("t".into(), vec![]).unwrap())
        .collect();
    drain(&mut a);
    let heads = vec![(name("a"), events[0].boot, 1)];
    a.handle_message(now, addr(2), Message::Digest { heads, reply: true });
    let out = drain(&mut a);
    assert_eq!(
        out,
        vec![Output::Send {
            to: addr(2),
            msg: Message::Events(events[1..].to_vec())
        }]
    );
}

#[test]
fn a_gap_that_never_fills_is_reported_and_skipped() {
    let now = Instant::now();
    let mut a = node("a", now);
    let events: Vec<UserEvent> = (0..5)
        .map(|_| a.publish("t".into(), vec![]).unwrap())
        .collect();
    let mut b = node("b", now);
    b.handle_message(now, addr(1), Message::Events(vec![events[0].clone()]));
    b.handle_message(now, addr(1), Message::Events(vec![events[4].clone()]));
    assert_eq!(delivered(&drain(&mut b)), vec![1]);
    b.handle_timeout(now + Duration::from_secs(2));
    assert!(
        delivered(&drain(&mut b)).is_empty(),
        "an established stream waits the full gap timeout"
    );
    b.handle_timeout(now + Duration::from_secs(6));
    let out = drain(&mut b);
    assert!(out.contains(&Output::Gap {
        origin: name("a"),
        boot: events[0].boot,
        missed: (2, 4)
    }));
    assert_eq!(delivered(&out), vec![5]);
}

#[test]
fn an_origin_that_restarts_is_a_new_stream_not_duplicates() {
    let now = Instant::now();
    let mut first = Core::new(Config::default(), name("a"), 1, now);
    let mut second = Core::new(Config::default(), name("a"), 2, now);
    let old = first.publish("t".into(), vec![1]).unwrap();
    let new = second.publish("t".into(), vec![2]).unwrap();
    assert_eq!((old.seq, new.seq), (1, 1));
    let mut b = node("b", now);
    b.handle_message(now, addr(1), Message::Events(vec![old, new]));
    assert_eq!(delivered(&drain(&mut b)), vec![1, 1]);
}

#[test]
fn an_oversized_payload_is_refused_and_changes_nothing() {
    let now = Instant::now();
    let mut a = node("a", now);
    let err = a.publish("t".into(), vec![0; 64 * 1024 + 1]).unwrap_err();
    assert!(matches!(err, PublishError::TooLarge { .. }));
    assert!(drain(&mut a).is_empty());
    assert_eq!(a.publish("t".into(), vec![]).unwrap().seq, 1);
}

#[test]
fn a_late_joiner_waits_briefly_for_earlier_events_then_reports_what_it_missed() {
    let now = Instant::now();
    let mut a = node("a", now);
    let events: Vec<UserEvent> = (0..3)
        .map(|_| a.publish("t".into(), vec![]).unwrap())
        .collect();
    let mut b = node("b", now);
    // Reordered: 2 arrives before 1; both are delivered once 1 is there.
    b.handle_message(now, addr(1), Message::Events(vec![events[1].clone()]));
    assert!(delivered(&drain(&mut b)).is_empty());
    b.handle_message(now, addr(1), Message::Events(vec![events[0].clone()]));
    assert_eq!(delivered(&drain(&mut b)), vec![1, 2]);
    // A node that only ever sees event 3: a gap of 1..=2 after the grace.
    let mut c = node("c", now);
    c.handle_message(now, addr(1), Message::Events(vec![events[2].clone()]));
    c.handle_timeout(now + Duration::from_millis(1100));
    let out = drain(&mut c);
    assert!(out.contains(&Output::Gap {
        origin: name("a"),
        boot: events[0].boot,
        missed: (1, 2)
    }));
    assert_eq!(delivered(&out), vec![3]);
}
