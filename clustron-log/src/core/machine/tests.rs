//! The machine core: proposals answered once, after their sync, with the
//! state machine's output; refusals and leader changes.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::time::Instant;

use super::*;

/// Sums the bytes of every entry applied.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Sum(u64);

impl StateMachine for Sum {
    type Output = u64;
    type Snapshot = Vec<u8>;

    fn apply(&mut self, _index: u64, entry: &[u8]) -> u64 {
        self.0 += entry.iter().map(|b| u64::from(*b)).sum::<u64>();
        self.0
    }

    fn snapshot(&self) -> Vec<u8> {
        self.0.to_le_bytes().to_vec()
    }

    fn restore(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.0 = u64::from_le_bytes(bytes.try_into().map_err(|_| "not 8 bytes")?);
        Ok(())
    }
}

fn name(i: u16) -> NodeName {
    NodeName::new(format!("n{i}")).unwrap()
}

fn addr(i: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7000 + i))
}

fn machine(voters: u16, recovered: Recovered) -> Machine<Sum> {
    let voters = (1..=voters).map(|i| (name(i), addr(i)));
    Machine::new(
        Config::lan(),
        name(1),
        voters,
        recovered,
        Sum::default(),
        Instant::now(),
    )
    .unwrap()
}

fn drain(machine: &mut Machine<Sum>) -> Vec<MachineOutput<u64>> {
    std::iter::from_fn(|| machine.poll_output()).collect()
}

fn lead(machine: &mut Machine<Sum>, epoch: u64) {
    let now = Instant::now();
    machine.fence(epoch);
    machine.elected(now, epoch, vec![], now);
    drain(machine);
}

#[test]
fn a_single_voter_answers_a_proposal_with_its_output_after_the_sync() {
    let mut m = machine(1, Recovered::default());
    lead(&mut m, 1);
    m.propose(Instant::now(), 7, vec![2, 3]).unwrap();
    let outputs = drain(&mut m);
    let sync = outputs
        .iter()
        .position(|o| *o == MachineOutput::Log(Output::Sync))
        .expect("a sync");
    let applied = outputs
        .iter()
        .position(|o| {
            matches!(
                o,
                MachineOutput::Applied {
                    id: 7,
                    output: 5,
                    ..
                }
            )
        })
        .expect("the answer");
    assert!(sync < applied, "answered before its sync: {outputs:?}");
    assert_eq!(m.state(), &Sum(5));
}

#[test]
fn a_follower_refuses_a_proposal_naming_the_leader() {
    let mut m = machine(3, Recovered::default());
    m.follow(Instant::now(), name(2), addr(2), 1);
    assert_eq!(
        m.propose(Instant::now(), 1, vec![1]),
        Err(Error::NotLeader {
            leader: Some((name(2), addr(2)))
        })
    );
}

#[test]
fn a_leader_that_steps_down_answers_its_waiting_proposals_leader_changed() {
    // Three voters: nothing commits without the others.
    let mut m = machine(3, Recovered::default());
    lead(&mut m, 1);
    let outputs = drain(&mut m);
    assert!(outputs
        .iter()
        .all(|o| !matches!(o, MachineOutput::Applied { .. })));
    m.propose(Instant::now(), 9, vec![1]).unwrap();
    drain(&mut m);
    m.step_down(1);
    let outputs = drain(&mut m);
    assert!(
        outputs.contains(&MachineOutput::Failed {
            id: 9,
            error: Error::LeaderChanged
        }),
        "{outputs:?}"
    );
    assert_eq!(m.state(), &Sum(0));
}

#[test]
fn a_restart_from_a_snapshot_restores_the_state_and_applies_only_what_follows() {
    let mut m = machine(1, Recovered::default());
    lead(&mut m, 1);
    for (id, byte) in [(1, 4), (2, 6)] {
        m.propose(Instant::now(), id, vec![byte]).unwrap();
    }
    drain(&mut m);
    let (meta, bytes) = m.snapshot();
    assert_eq!(meta.index, m.applied());

    let mut again = Machine::new(
        Config::lan(),
        name(1),
        [(name(1), addr(1))],
        Recovered {
            epoch: 1,
            snapshot: meta,
            entries: vec![],
        },
        Sum::default(),
        Instant::now(),
    )
    .unwrap();
    again.restore(bytes);
    assert_eq!(again.state(), &Sum(10));
    assert_eq!(again.applied(), meta.index);
    lead(&mut again, 2);
    again.propose(Instant::now(), 3, vec![5]).unwrap();
    let outputs = drain(&mut again);
    assert!(outputs.iter().any(|o| matches!(
        o,
        MachineOutput::Applied {
            id: 3,
            output: 15,
            ..
        }
    )));
}
