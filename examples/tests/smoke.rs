//! Runs every example once, to the end, within a deadline: the examples are
//! part of the API's tests, not only of its documentation.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::sync::{mpsc, Mutex};
use std::time::Duration;

#[path = "../membership.rs"]
mod membership;

#[path = "../leader_service.rs"]
mod leader_service;

#[path = "../user_events.rs"]
mod user_events;

#[path = "../work_queue.rs"]
mod work_queue;

#[path = "../replicated_counter.rs"]
mod replicated_counter;

/// Each example forms a cluster with leases of 600 ms: one at a time, so
/// that four clusters do not share two cores.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Far above what each example takes (a few seconds), far below forever.
const DEADLINE: Duration = Duration::from_secs(90);

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Runs an example's `main` (which builds its own runtime) on a thread of
/// its own and waits for it at most [`DEADLINE`].
fn runs_to_the_end(main: fn() -> Result<(), Error>) {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(main().map_err(|e| e.to_string()));
    });
    match rx.recv_timeout(DEADLINE) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("the example failed: {e}"),
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("the example did not finish within {DEADLINE:?}")
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("the example panicked"),
    }
}

#[test]
fn the_membership_example_sees_joins_a_leave_and_a_failure() {
    runs_to_the_end(membership::main);
}

#[test]
fn the_leader_service_example_survives_the_leaders_death() {
    runs_to_the_end(leader_service::main);
}

#[test]
fn the_user_events_example_delivers_every_event_to_every_node() {
    runs_to_the_end(user_events::main);
}

#[test]
fn the_work_queue_example_finishes_every_job_across_a_failover() {
    runs_to_the_end(work_queue::main);
}

#[test]
fn the_replicated_counter_example_loses_nothing_acknowledged_when_the_leader_dies() {
    runs_to_the_end(replicated_counter::main);
}
