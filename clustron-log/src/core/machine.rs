//! A replica and a product's state machine as one sans-IO core: the leader
//! proposes opaque entries, every replica applies committed ones in order,
//! and the proposer gets the result of applying its own.
//!
//! ```text
//!  propose(now, id, bytes) ──► Replica ──Committed{upto}──► StateMachine::apply(index, bytes)
//!                                 │                                   │
//!            poll_output():  Log(write / Sync / Send …)   Applied{id, index, output}
//!                            Failed{id, error}  (lost, leader changed)
//! ```
//!
//! # Calling protocol
//!
//! As for [`Replica`]: after any input drain [`Machine::poll_output`] and
//! perform every output **in order**; [`MachineOutput::Applied`] comes after
//! the `Sync` that made its entry durable here, so answering it in order
//! never acknowledges what is not on a majority's disks. Call
//! [`Machine::handle_timeout`] at [`Machine::poll_timeout`].
//!
//! A proposal is answered exactly once: `Applied` when its entry applied,
//! `Failed(Lost)` when another leader's entry replaced it (it never
//! applies), `Failed(LeaderChanged)` when this node stopped leading first
//! (it may still apply under the next leader: retry only if applying twice
//! is harmless, or make the entry idempotent).

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

use clustron_election::NodeName;

use super::replication::{
    Config, ConfigError, EntryKind, Message, Output, Recovered, Replica, SnapshotMeta,
};
use super::{ReplicatedCore, SnapshotData};
use crate::error::Error;

/// The product's replicated state: every replica applies the same entries
/// in the same order, so every replica's state is the same at the same
/// index. `apply` must be deterministic (no clock, no randomness, no
/// node-local settings).
pub trait StateMachine: Send + 'static {
    /// The result of applying one entry, given back to its proposer.
    type Output: Send + 'static;
    /// A consistent copy of the state, turned into bytes off the write
    /// path ([`SnapshotData`]); `Vec<u8>` for a small state.
    type Snapshot: SnapshotData;

    /// Applies the committed entry at `index`.
    fn apply(&mut self, index: u64, entry: &[u8]) -> Self::Output;
    /// The state now, for a snapshot.
    fn snapshot(&self) -> Self::Snapshot;
    /// Replaces the state with a snapshot's bytes. On error the state must
    /// be left as it was.
    fn restore(&mut self, bytes: &[u8]) -> Result<(), String>;
}

/// A proposal's id, chosen by the driver; its answer carries it.
pub type ProposalId = u64;

/// What [`Machine`] asks of its driver, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MachineOutput<T> {
    /// A replicated log output: write, sync, send, snapshot pull…
    Log(Output),
    /// Proposal `id` applied at `index` with this result.
    Applied {
        /// The proposal.
        id: ProposalId,
        /// Its log index.
        index: u64,
        /// What [`StateMachine::apply`] returned.
        output: T,
    },
    /// Proposal `id` failed; the error says whether it may still apply.
    Failed {
        /// The proposal.
        id: ProposalId,
        /// Why.
        error: Error,
    },
}

/// A replica with its state machine. See the module docs.
#[derive(Debug)]
pub struct Machine<M: StateMachine> {
    replica: Replica,
    state: M,
    applied: u64,
    /// Proposals by log index, with the epoch they were proposed in.
    pending: BTreeMap<u64, (ProposalId, u64)>,
    outputs: VecDeque<MachineOutput<M::Output>>,
}

impl<M: StateMachine> Machine<M> {
    /// A core over the log storage kept, with the state machine `state` as
    /// it is just before the first recovered entry: restored from the
    /// snapshot the log continues after (`recovered.snapshot`), if any.
    pub fn new(
        config: Config,
        me: NodeName,
        voters: impl IntoIterator<Item = (NodeName, SocketAddr)>,
        recovered: Recovered,
        state: M,
        now: Instant,
    ) -> Result<Self, ConfigError> {
        let applied = recovered.snapshot.index;
        let replica = Replica::new(config.validate()?, me, voters, [], recovered, now);
        Ok(Self {
            replica,
            state,
            applied,
            pending: BTreeMap::new(),
            outputs: VecDeque::new(),
        })
    }

    /// The state machine, as applied up to [`Machine::applied`].
    pub fn state(&self) -> &M {
        &self.state
    }

    /// Proposes `entry` (leader only). Its answer comes as an output
    /// carrying `id`; a refusal is immediate and changes nothing.
    pub fn propose(&mut self, now: Instant, id: ProposalId, entry: Vec<u8>) -> Result<u64, Error> {
        let index = self.replica.propose(now, entry)?;
        // `propose` succeeded, so this node leads.
        let epoch = self.replica.leading().unwrap_or_default();
        self.pending.insert(index, (id, epoch));
        Ok(index)
    }

    /// The next output, in the order it must be performed.
    pub fn poll_output(&mut self) -> Option<MachineOutput<M::Output>> {
        loop {
            if let Some(output) = self.outputs.pop_front() {
                return Some(output);
            }
            match self.replica.poll_output()? {
                Output::Committed { upto } => {
                    self.outputs
                        .push_back(MachineOutput::Log(Output::Committed { upto }));
                    self.apply_to(upto);
                }
                other => return Some(MachineOutput::Log(other)),
            }
        }
    }

    fn apply_to(&mut self, upto: u64) {
        while self.applied < upto {
            let index = self.applied + 1;
            let Some(entry) = self.replica.entry(index) else {
                break;
            };
            self.applied = index;
            // Ours only if of the epoch it was proposed in: otherwise a
            // newer leader replaced it and it never applies.
            let mine = match self.pending.remove(&index) {
                Some((id, epoch)) if epoch == entry.epoch && entry.kind == EntryKind::Data => {
                    Some(id)
                }
                Some((id, _)) => {
                    self.outputs.push_back(MachineOutput::Failed {
                        id,
                        error: Error::Lost,
                    });
                    None
                }
                None => None,
            };
            if entry.kind == EntryKind::Data {
                let output = self.state.apply(index, &entry.payload);
                if let Some(id) = mine {
                    self.outputs
                        .push_back(MachineOutput::Applied { id, index, output });
                }
            }
        }
    }

    /// Answers every waiting proposal once this node no longer leads.
    fn lost_leadership(&mut self) {
        if self.replica.leading().is_some() {
            return;
        }
        for (_, (id, _)) in std::mem::take(&mut self.pending) {
            self.outputs.push_back(MachineOutput::Failed {
                id,
                error: Error::LeaderChanged,
            });
        }
    }
}

impl<M: StateMachine> ReplicatedCore for Machine<M> {
    type Snapshot = M::Snapshot;
    type State = Vec<u8>;

    fn replica(&self) -> &Replica {
        &self.replica
    }

    fn applied(&self) -> u64 {
        self.applied
    }

    fn fence(&mut self, epoch: u64) {
        self.replica.fence(epoch);
        self.lost_leadership();
    }

    fn elected(
        &mut self,
        now: Instant,
        epoch: u64,
        summaries: Vec<(NodeName, Vec<u8>)>,
        _: Instant,
    ) {
        self.replica.become_leader(now, epoch, summaries);
    }

    fn follow(&mut self, now: Instant, leader: NodeName, addr: SocketAddr, epoch: u64) {
        self.replica.follow(now, leader, addr, epoch);
        self.lost_leadership();
    }

    fn step_down(&mut self, epoch: u64) {
        self.replica.step_down(epoch);
        self.lost_leadership();
    }

    fn forget_leader(&mut self) {
        self.replica.forget_leader();
        self.lost_leadership();
    }

    fn set_voter_addr(&mut self, name: &NodeName, addr: SocketAddr) {
        self.replica.set_voter_addr(name, addr);
    }

    fn set_learners(&mut self, learners: Vec<(NodeName, SocketAddr)>) {
        self.replica.set_learners(learners);
    }

    fn set_voters(&mut self, voters: Vec<(NodeName, SocketAddr)>) {
        self.replica.set_voters(voters);
    }

    fn handle_message(&mut self, now: Instant, from: SocketAddr, msg: Message) {
        self.replica.handle_message(now, from, msg);
        self.lost_leadership();
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.replica.handle_timeout(now);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.replica.poll_timeout()
    }

    fn snapshot(&self) -> (SnapshotMeta, M::Snapshot) {
        let meta = self.replica.snapshot_point(self.applied);
        (meta, self.state.snapshot())
    }

    fn compact_log(&mut self, upto: u64) {
        self.replica.compact(upto.min(self.applied));
    }

    fn snapshot_saved(&mut self, index: u64, file_len: u64) {
        self.replica.snapshot_saved(index, file_len);
    }

    fn decode_state(bytes: &[u8]) -> Result<Vec<u8>, String> {
        Ok(bytes.to_vec())
    }

    fn restore(&mut self, state: Vec<u8>) {
        match self.state.restore(&state) {
            Ok(()) => self.applied = self.replica.snapshot().index,
            // Checked when the snapshot was opened (see `OpenLog::open`).
            Err(why) => debug_assert!(false, "restoring a checked snapshot failed: {why}"),
        }
    }

    fn pull_failed(&mut self) {
        self.replica.pull_failed();
    }

    fn install_snapshot(&mut self, now: Instant, meta: SnapshotMeta, state: Vec<u8>) -> bool {
        if meta.index <= self.applied || self.state.restore(&state).is_err() {
            return false;
        }
        if !self.replica.install_snapshot(now, meta) {
            return false;
        }
        self.applied = meta.index;
        true
    }
}

#[cfg(test)]
mod tests;
