//! The generic tokio driver: one task per node owns a [`Machine`] (the
//! replica and the product's [`StateMachine`]) and a [`LogIo`]; the
//! cloneable [`Log`] handle proposes, reads and watches the status.
//!
//! ```text
//!  Log::propose(bytes) ──mpsc──► driver task ──► Machine::propose ─► … commit on a majority's fsyncs
//!        ▲                          │                                   │
//!        └──── M::Output ◄──────────┴──── Applied{id} (after its Sync) ◄┘ StateMachine::apply
//!  Log::read(f) ──────────────────► f(&state) on the task (this node's applied state)
//!  election, LOG channel, timers, snapshots ◄──► LogIo (shared with DKV)
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Instant;

use clustron_election::NodeName;
use clustron_node::Node;
use tokio::sync::{mpsc, oneshot, watch};

use crate::core::machine::{Machine, MachineOutput, ProposalId, StateMachine};
use crate::core::{Config, ReplicatedCore};
use crate::error::{Error, StartError};
use crate::io::{check_state, LogIo, OpenLog, SnapshotSchedule};
use crate::voters::{ReplicaStatus, VoterChange, VoterChangeError};

/// How a node's log is tuned.
#[derive(Debug, Clone, Default)]
pub struct LogConfig {
    /// The replica's batching, pipelining and timers ([`Config::lan`]).
    pub replication: Config,
    /// When the state machine is snapshotted and the log before it dropped.
    pub snapshots: SnapshotSchedule,
}

/// What the log on a node knows, as of its last change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// The leader this node follows, with its address (`None` when it
    /// leads itself or knows none).
    pub leader: Option<(NodeName, SocketAddr)>,
    /// This node leads and accepts proposals (its log caught up).
    pub leading: bool,
    /// Highest index applied to the state machine here.
    pub applied: u64,
    /// Highest index known committed here.
    pub commit: u64,
    /// The index the newest snapshot covers.
    pub snapshot: u64,
    /// Why the log stopped on this node, if it did.
    pub stopped: Option<String>,
}

type Read<M> = Box<dyn FnOnce(&M) + Send>;

enum Command<M: StateMachine> {
    Propose(Vec<u8>, oneshot::Sender<Result<M::Output, Error>>),
    Read(Read<M>),
    Snapshot,
    Replicas(oneshot::Sender<Result<Vec<ReplicaStatus>, VoterChangeError>>),
    ChangeVoters(VoterChange, oneshot::Sender<Result<u64, VoterChangeError>>),
}

/// A node's replicated state machine: propose entries (on the leader),
/// read the applied state, watch the status. Cheap to clone; the driver
/// task ends when the node's transport closes (its `kill` or `leave`).
pub struct Log<M: StateMachine> {
    commands: mpsc::Sender<Command<M>>,
    status: watch::Receiver<Status>,
}

impl<M: StateMachine> Clone for Log<M> {
    fn clone(&self) -> Self {
        Self {
            commands: self.commands.clone(),
            status: self.status.clone(),
        }
    }
}

impl<M: StateMachine> Log<M> {
    /// Opens the log in `data_dir` for a node about to start: give the
    /// node's election [`OpenLog::elect`], then call [`Log::start`].
    pub fn open(data_dir: impl AsRef<Path>) -> Result<OpenLog, StartError> {
        OpenLog::open(data_dir.as_ref())
    }

    /// Starts the log on `node` (started with [`OpenLog::elect`]) with the
    /// state machine `state` as it is before any entry: restored from the
    /// newest snapshot, then the log after it replayed as commits are
    /// learned again. Voters are the election's.
    pub async fn start(
        node: &Node,
        mut open: OpenLog,
        mut state: M,
        config: LogConfig,
    ) -> Result<Log<M>, StartError> {
        let election = node.election().ok_or(StartError::NoElection)?;
        let snapshot = open.take_snapshot();
        if let Some(bytes) = &snapshot {
            check_state(&open, bytes, |b| state.restore(b))?;
        }
        let voters: Vec<(NodeName, SocketAddr)> = election
            .voters()
            .voters()
            .iter()
            .map(|v| (v.name.clone(), v.addr))
            .collect();
        let recovered = open.take_recovered();
        let machine = Machine::new(
            config.replication,
            node.name().clone(),
            voters.clone(),
            recovered,
            state,
            Instant::now(),
        )?;
        let io = LogIo::new(
            node.endpoint(),
            node.membership(),
            election,
            open,
            voters,
            config.snapshots,
        )?;
        let (commands, command_rx) = mpsc::channel(1024);
        let (status_tx, status) = watch::channel(Status::default());
        let driver = Driver {
            machine,
            io,
            commands: command_rx,
            pending: HashMap::new(),
            next_id: 0,
            status: status_tx,
        };
        tokio::spawn(driver.run());
        Ok(Log { commands, status })
    }

    /// Proposes `entry` and returns the result of applying it, once it is
    /// committed (on a majority of the voters' disks) and applied here: a
    /// linearizable write. Only the leader accepts proposals
    /// ([`Error::NotLeader`] names the leader to use instead).
    pub async fn propose(&self, entry: Vec<u8>) -> Result<M::Output, Error> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Propose(entry, tx))
            .await
            .map_err(|_| self.stopped())?;
        rx.await.map_err(|_| self.stopped())?
    }

    /// Runs `f` on this node's state machine as applied so far (on any
    /// node; a follower's may be behind the leader's: for a read that
    /// reflects every acknowledged write, propose it as an entry).
    pub async fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&M) -> R + Send + 'static,
    ) -> Result<R, Error> {
        let (tx, rx) = oneshot::channel();
        let read: Read<M> = Box::new(move |m| {
            let _ = tx.send(f(m));
        });
        self.commands
            .send(Command::Read(read))
            .await
            .map_err(|_| self.stopped())?;
        rx.await.map_err(|_| self.stopped())
    }

    /// Snapshots the state machine now (in the background), whatever the
    /// schedule.
    pub async fn snapshot(&self) -> Result<(), Error> {
        self.commands
            .send(Command::Snapshot)
            .await
            .map_err(|_| self.stopped())
    }

    /// On the leader: every replica with how far its log is known to
    /// reach ([`LogIo::replicas`]); [`VoterChangeError::NotLeader`] elsewhere.
    pub async fn replicas(&self) -> Result<Vec<ReplicaStatus>, VoterChangeError> {
        let (tx, rx) = oneshot::channel();
        let stopped = || VoterChangeError::Election("the log has stopped".into());
        self.commands
            .send(Command::Replicas(tx))
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// On the leader: asks for one voter change, checked first
    /// ([`crate::voters::check`]); returns the voter set version it gives
    /// once decided (watch `Election::voters` for it). See
    /// [`LogIo::change_voters`].
    pub async fn change_voters(&self, change: VoterChange) -> Result<u64, VoterChangeError> {
        let (tx, rx) = oneshot::channel();
        let stopped = || VoterChangeError::Election("the log has stopped".into());
        self.commands
            .send(Command::ChangeVoters(change, tx))
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// The log's status now.
    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    /// Waits until `condition` holds for the status; an error if the log
    /// stops first.
    pub async fn wait_for(&self, condition: impl Fn(&Status) -> bool) -> Result<Status, Error> {
        let mut status = self.status.clone();
        let result = status
            .wait_for(|s| condition(s) || s.stopped.is_some())
            .await
            .map(|s| s.clone());
        match result {
            Ok(s) if s.stopped.is_none() => Ok(s),
            _ => Err(self.stopped()),
        }
    }

    fn stopped(&self) -> Error {
        let why = self.status.borrow().stopped.clone();
        Error::Stopped(why.unwrap_or_else(|| "the node shut down".into()))
    }
}

struct Driver<M: StateMachine> {
    machine: Machine<M>,
    io: LogIo<Machine<M>>,
    commands: mpsc::Receiver<Command<M>>,
    pending: HashMap<ProposalId, oneshot::Sender<Result<M::Output, Error>>>,
    next_id: ProposalId,
    status: watch::Sender<Status>,
}

impl<M: StateMachine> Driver<M> {
    async fn run(mut self) {
        self.io.prepare(&mut self.machine).await;
        loop {
            if let Err(e) = self.drain() {
                let reason = self.io.stop(&e).await;
                for (_, tx) in self.pending.drain() {
                    let _ = tx.send(Err(Error::Stopped(reason.clone())));
                }
                self.status.send_modify(|s| s.stopped = Some(reason));
                return;
            }
            self.io.after_drain(&mut self.machine).await;
            let deadline = self.machine.poll_timeout();
            tokio::select! {
                event = self.io.next(deadline) => match self.io.handle(&mut self.machine, event).await {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => {
                        let reason = self.io.stop(&e).await;
                        self.status.send_modify(|s| s.stopped = Some(reason));
                        break;
                    }
                },
                // While a voter that kept up is too far behind, requests
                // wait (back-pressure) so a failover stays quick.
                command = self.commands.recv(), if self.machine.replica().admits() => match command {
                    // Everything queued shares one write and one fsync.
                    Some(command) => {
                        self.command(command).await;
                        while let Ok(command) = self.commands.try_recv() {
                            self.command(command).await;
                        }
                    }
                    None => break,
                },
            }
        }
        let reason = "the node shut down".to_owned();
        for (_, tx) in self.pending.drain() {
            let _ = tx.send(Err(Error::Stopped(reason.clone())));
        }
        self.status.send_modify(|s| s.stopped = Some(reason));
    }

    async fn command(&mut self, command: Command<M>) {
        match command {
            Command::Replicas(reply) => {
                let _ = reply.send(self.io.replicas(&mut self.machine));
            }
            Command::ChangeVoters(change, reply) => {
                let _ = reply.send(self.io.change_voters(&self.machine, change).await);
            }
            Command::Propose(entry, reply) => {
                self.next_id += 1;
                let id = self.next_id;
                match self.machine.propose(Instant::now(), id, entry) {
                    Ok(_) => {
                        self.pending.insert(id, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Command::Read(read) => read(self.machine.state()),
            Command::Snapshot => self.io.snapshot_now(),
        }
    }

    /// Performs the machine's outputs in order.
    fn drain(&mut self) -> Result<(), crate::wal::WalError> {
        // Outputs after an fsync wait for it (performed in order).
        while !self.io.syncing() {
            let Some(output) = self.machine.poll_output() else {
                break;
            };
            match output {
                MachineOutput::Log(output) => self.io.perform(&mut self.machine, output)?,
                MachineOutput::Applied { id, output, .. } => {
                    if let Some(tx) = self.pending.remove(&id) {
                        let _ = tx.send(Ok(output));
                    }
                }
                MachineOutput::Failed { id, error } => {
                    if let Some(tx) = self.pending.remove(&id) {
                        let _ = tx.send(Err(error));
                    }
                }
            }
        }
        let replica = self.machine.replica();
        let status = Status {
            leader: replica.leader(),
            leading: replica.leading().is_some(),
            applied: self.machine.applied(),
            commit: replica.commit_index(),
            snapshot: self.io.last_snapshot(),
            stopped: None,
        };
        self.status.send_if_modified(|s| {
            let changed = *s != status;
            *s = status;
            changed
        });
        Ok(())
    }
}
