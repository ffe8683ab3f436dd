//! The tokio driver: joins the election core to the transport, membership,
//! durable storage and real time.
//!
//! One task owns the [`Core`]; it selects over incoming election messages,
//! membership changes (which feed the view), the core's next deadline and API
//! commands. Outputs are carried out in order: a promise is written and
//! fsynced before any message queued after it leaves.
//!
//! If storage fails, nothing queued after the failed write leaves (a grant
//! never goes out unpersisted), and the node withdraws ([`Election::withdraw`])
//! instead of stopping: it steps down if it leads and never votes again, but
//! keeps following the leader, so its state says what happened.
//!
//! The driver is generic over [`Storage`]: [`Election::start`] picks
//! [`FileStorage`] (a `data_dir`) or [`MemStorage`] (none);
//! [`Election::start_with_storage`] takes any implementation.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clustron_membership::{MemberState, Membership, NodeName};
use clustron_transport::{Channel, ChannelId, Endpoint, Inbound, Inbox, Protocol};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::config::Config;
use crate::core::{Core, Message, Output, Peer, BEHIND_TAG, WITHDRAWN_TAG};
use crate::error::Error;
use crate::storage::{MemStorage, Persisted, Promise, Storage, VoterRecord};
use crate::voters::{Epoch, Voter, VoterSet};

/// The election protocol on the transport's `ELECTION` channel.
#[derive(Debug)]
pub struct Elect;

impl Protocol for Elect {
    const CHANNEL: ChannelId = ChannelId::ELECTION;
    type Request = ();
    type Response = ();
    type Message = Message;
}

/// Promises and voter sets in files, each replaced atomically (write a
/// temporary file, fsync it, rename it over the old one, fsync the folder).
#[derive(Debug, Clone)]
pub struct FileStorage {
    dir: PathBuf,
}

impl FileStorage {
    /// Storage in `dir`, created if missing.
    pub fn open(dir: impl Into<PathBuf>) -> io::Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        Ok(Self { dir })
    }

    fn replace(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        use std::io::Write;
        let path = self.dir.join(name);
        let tmp = self.dir.join(format!("{name}.tmp"));
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(&self.dir)?.sync_all()
    }

    fn read<T: serde::de::DeserializeOwned>(&self, name: &str) -> io::Result<Option<T>> {
        self.read_with(name, |bytes| postcard::from_bytes(bytes))
    }

    fn read_with<T>(
        &self,
        name: &str,
        decode: impl Fn(&[u8]) -> Result<T, postcard::Error>,
    ) -> io::Result<Option<T>> {
        let path = self.dir.join(name);
        match std::fs::read(&path) {
            Ok(bytes) => decode(&bytes).map(Some).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{} is corrupted ({e}); refusing to guess a promise",
                        path.display()
                    ),
                )
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn encode<T: serde::Serialize>(value: &T) -> io::Result<Vec<u8>> {
        postcard::to_allocvec(value).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
    }
}

impl Storage for FileStorage {
    type Error = io::Error;

    fn save_promise(&mut self, promise: &Promise) -> io::Result<()> {
        self.replace("promise", &Self::encode(promise)?)
    }

    fn save_voters(&mut self, voters: &VoterRecord) -> io::Result<()> {
        self.replace("voters", &Self::encode(voters)?)
    }

    fn load(&self) -> io::Result<Persisted> {
        Ok(Persisted {
            promise: self.read("promise")?,
            voters: self.read_with("voters", VoterRecord::decode)?,
        })
    }
}

/// The layer above's part in a promise (DESIGN rules 1 and 4), for a
/// replicated log beside the election.
///
/// A summary set with [`Election::set_summary`] reaches the election task
/// later than the log changes, so a grant could carry a summary older than
/// what the voter had acknowledged to the previous leader: the new leader
/// might then miss a committed entry. The hook closes that gap: it runs in
/// the election task after the promise is durable and before the grant
/// leaves, and the grant carries what it returns.
pub trait PromiseHook: Send + Sync + 'static {
    /// A promise for `epoch` is durable and its grant is about to leave.
    /// From now on the layer above must refuse to acknowledge anything from
    /// an older epoch; it returns the summary of what it holds durably now.
    /// Both must happen atomically with respect to its acknowledgements
    /// (one lock around "set the fence, read the summary" here and around
    /// "update the summary, check the fence, acknowledge" there).
    fn promised(&self, epoch: Epoch) -> Vec<u8>;
}

/// How to start the election on a node.
///
/// This node's **priority** is not here: every node must see every other
/// node's priority to agree on the candidate, so it travels in the member
/// record and is set in membership
/// ([`clustron_membership::Options::priority`], and whether it votes in
/// [`clustron_membership::Options::voter`]). `clustron-node` sets both from
/// its election settings.
#[derive(Clone, Default)]
pub struct Options {
    /// Lease timing. Default [`Config::lan`].
    pub config: Config,
    /// The initial configured voter set (later changes are persisted).
    /// Voters may be given by name only ([`Voter::unaddressed`]): each one's
    /// address comes from membership once it is seen. Default: empty, and
    /// an empty set elects nobody (every node then only follows).
    pub voters: VoterSet,
    /// Where promises and voter sets are kept ([`FileStorage`]), created if
    /// missing.
    ///
    /// `None` (the default) keeps them in memory ([`MemStorage`]): fine for
    /// tests, examples and nodes that never restart with the same name, but
    /// **not safe across restarts**: a voter that restarts forgets what it
    /// promised and may grant the same epoch or a lease to a second leader
    /// while the first one's lease still runs. A production voter needs a
    /// directory that survives restarts.
    pub data_dir: Option<PathBuf>,
    /// Called on every promise, if set (see [`PromiseHook`]).
    pub hook: Option<std::sync::Arc<dyn PromiseHook>>,
    /// Start withdrawn, for this reason ([`Election::withdraw`]): the node
    /// knows before its first vote that it may not vote (e.g. it holds less
    /// than it once acknowledged). `None` (the default) for a node in good
    /// health.
    pub withdrawn: Option<String>,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("config", &self.config)
            .field("voters", &self.voters)
            .field("data_dir", &self.data_dir)
            .field("hook", &self.hook.as_ref().map(|_| "set"))
            .field("withdrawn", &self.withdrawn)
            .finish()
    }
}

/// A leadership change, as delivered to subscribers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeadershipEvent {
    /// This node won `epoch`; `summaries` come from the granting majority.
    Elected {
        /// The epoch won.
        epoch: Epoch,
        /// (voter, summary) of each grant.
        summaries: Vec<(NodeName, Vec<u8>)>,
    },
    /// This node stopped leading `epoch`.
    SteppedDown {
        /// The epoch given up.
        epoch: Epoch,
    },
    /// The leader this node knows of changed.
    Leader {
        /// The leader.
        name: NodeName,
        /// Its epoch.
        epoch: Epoch,
    },
    /// No leader is known.
    LeaderLost,
    /// The voter set changed.
    VotersChanged(VoterSet),
}

/// A leadership change, as a [`Subscription`] delivers it.
pub type Notification = clustron_transport::Notification<LeadershipEvent>;

/// A stream of leadership changes ([`Election::subscribe`]); the same
/// lag-reporting shape as membership's and the event bus's. After
/// [`Notification::Lagged`], read [`Election::leader`] (and
/// [`Election::lease`]) to resynchronise.
pub type Subscription = clustron_transport::Subscription<LeadershipEvent>;

/// The leader a node knows of, with where to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    /// Its name.
    pub name: NodeName,
    /// Its epoch: attach it to requests for fencing.
    pub epoch: Epoch,
    /// Where it listens: from membership (the newest address seen), else
    /// the voter set; this node's own advertised address when it leads.
    /// `None` while not known yet.
    pub addr: Option<SocketAddr>,
    /// Whether it is this node.
    pub is_local: bool,
}

#[derive(Debug, Clone, Default)]
struct State {
    leader: Option<Leader>,
    lease: Option<(Epoch, Instant)>,
    withdrawn: Option<String>,
    voters: VoterSet,
}

enum Command {
    StepDown(oneshot::Sender<Result<(), Error>>),
    TransferTo(NodeName, oneshot::Sender<Result<(), Error>>),
    AddVoter(Voter, oneshot::Sender<Result<(), Error>>),
    RemoveVoter(NodeName, oneshot::Sender<Result<(), Error>>),
    SetSummary(Vec<u8>),
    SetBehind(bool),
    Withdraw(String, oneshot::Sender<()>),
    Rejoin(oneshot::Sender<()>),
    Freeze(Duration, oneshot::Sender<()>),
    Shutdown(oneshot::Sender<()>),
}

/// Errors starting or driving the election.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DriverError {
    /// The core refused the command (see [`Error`]).
    #[error(transparent)]
    Refused(#[from] Error),
    /// Durable storage could not be opened or read: nothing was promised.
    #[error("election storage: {0}")]
    Storage(Box<dyn std::error::Error + Send + Sync>),
    /// The transport refused (e.g. the channel is taken).
    #[error(transparent)]
    Transport(#[from] clustron_transport::Error),
    /// Membership failed.
    #[error(transparent)]
    Membership(#[from] clustron_membership::Error),
    /// The election task has stopped.
    #[error("election has stopped")]
    Stopped,
}

/// A running election: the handle to its driver task. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Election {
    commands: mpsc::Sender<Command>,
    events: broadcast::Sender<LeadershipEvent>,
    state: watch::Receiver<State>,
    leader_feed: watch::Receiver<Option<(NodeName, Epoch)>>,
}

impl Election {
    /// Starts the election beside `membership` on `endpoint`, keeping
    /// promises in `options.data_dir` ([`FileStorage`]), or in memory
    /// ([`MemStorage`]) when it is `None`.
    ///
    /// Start it right after membership has joined: the first view comes
    /// from membership, and this node listens for one renewal interval
    /// before it may campaign, so it hears a leader already in place.
    pub async fn start(
        endpoint: &Endpoint,
        membership: &Membership,
        options: Options,
    ) -> Result<Self, DriverError> {
        match &options.data_dir {
            Some(dir) => {
                let storage = FileStorage::open(dir).map_err(storage_error)?;
                Self::start_with_storage(endpoint, membership, options, storage).await
            }
            None => {
                Self::start_with_storage(endpoint, membership, options, MemStorage::new()).await
            }
        }
    }

    /// As [`Election::start`], keeping promises in `storage` (any
    /// [`Storage`]; `options.data_dir` is not used). Every `save_*` must be
    /// durable when it returns: a grant leaves right after.
    pub async fn start_with_storage<S>(
        endpoint: &Endpoint,
        membership: &Membership,
        options: Options,
        storage: S,
    ) -> Result<Self, DriverError>
    where
        S: Storage + Send + 'static,
    {
        let recovered = storage.load().map_err(storage_error)?;
        let durable = recovered.promise.clone();
        let local = membership.local().await?;
        let inbox = endpoint.register::<Elect>()?;
        let mut core = Core::new(
            options.config,
            local.name.clone(),
            local.priority,
            options.voters,
            recovered,
            fastrand::u64(..),
            Instant::now(),
        );
        // Before the task runs: no vote may leave first.
        if options.withdrawn.is_some() {
            core.withdraw(Instant::now());
        }
        let (commands, command_rx) = mpsc::channel(64);
        let (events, _) = broadcast::channel(256);
        let (state_tx, state) = watch::channel(State {
            withdrawn: options.withdrawn.clone(),
            voters: core.voters().clone(),
            ..State::default()
        });
        let (leader_tx, leader_feed) = watch::channel(None);
        let driver = Driver {
            core,
            storage,
            local_addr: local.addr,
            leader_feed: leader_tx,
            inbox,
            channel: endpoint.channel::<Elect>(),
            membership: membership.clone(),
            changes: membership.subscribe(),
            commands: command_rx,
            events: events.clone(),
            state: state_tx,
            hook: options.hook,
            withdrawn: options.withdrawn,
            durable,
            durable_at: Instant::now(),
        };
        tokio::spawn(driver.run());
        Ok(Self {
            commands,
            events,
            state,
            leader_feed,
        })
    }

    /// The leader this node knows of (itself included), with its epoch and
    /// address: what a product needs to route a request to it.
    pub fn leader_info(&self) -> Option<Leader> {
        self.state.borrow().leader.clone()
    }

    /// The current leader as a watch: `changed().await` wakes on every
    /// change of leader or epoch (intermediate values may be skipped; the
    /// latest is always there). The event bus takes this to report leaders
    /// without depending on this crate.
    pub fn leader_feed(&self) -> watch::Receiver<Option<(NodeName, Epoch)>> {
        self.leader_feed.clone()
    }

    /// Waits up to `timeout` for a leader whose address is known; `None`
    /// when there is none by then.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Option<Leader> {
        let mut state = self.state.clone();
        let found = tokio::time::timeout(timeout, async {
            loop {
                let leader = state.borrow_and_update().leader.clone();
                if let Some(leader) = leader.filter(|l| l.addr.is_some()) {
                    return Some(leader);
                }
                if state.changed().await.is_err() {
                    return None;
                }
            }
        })
        .await;
        found.ok().flatten()
    }

    /// Whether this node leads `epoch` under a lease that is valid now:
    /// the check a leader-only handler makes before acting on a request
    /// stamped with `epoch` (fencing), so that a request routed to an older
    /// (or a newer) leadership is refused instead of applied.
    pub fn leads(&self, epoch: Epoch) -> bool {
        self.lease().is_some_and(|(held, _)| held == epoch)
    }

    /// The decided voter set this node uses (the configured one, or the
    /// newest agreed change).
    pub fn voters(&self) -> VoterSet {
        self.state.borrow().voters.clone()
    }

    /// The leader this node knows of (itself included), with its epoch.
    /// [`Election::leader_info`] adds its address.
    pub fn leader(&self) -> Option<(NodeName, Epoch)> {
        let state = self.state.borrow();
        state.leader.as_ref().map(|l| (l.name.clone(), l.epoch))
    }

    /// On the leader: its epoch and until when its lease is valid, by this
    /// node's clock; `None` if it holds no lease valid now.
    pub fn lease(&self) -> Option<(Epoch, Instant)> {
        let lease = self.state.borrow().lease;
        lease.filter(|(_, until)| Instant::now() < *until)
    }

    /// Leadership changes as they happen (256 are kept for a subscriber
    /// that falls behind; beyond that it is told how many it missed).
    pub fn subscribe(&self) -> Subscription {
        Subscription::new(self.events.subscribe())
    }

    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, DriverError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(command(tx))
            .await
            .map_err(|_| DriverError::Stopped)?;
        rx.await.map_err(|_| DriverError::Stopped)
    }

    /// Gives up leadership (on the leader).
    pub async fn step_down(&self) -> Result<(), DriverError> {
        Ok(self.ask(Command::StepDown).await??)
    }

    /// Hands leadership to `name` (on the leader), without a timeout gap.
    pub async fn transfer_to(&self, name: &NodeName) -> Result<(), DriverError> {
        Ok(self
            .ask(|tx| Command::TransferTo(name.clone(), tx))
            .await??)
    }

    /// Adds a voter (on the leader), once a majority of the old set agrees.
    pub async fn add_voter(&self, voter: Voter) -> Result<(), DriverError> {
        Ok(self.ask(|tx| Command::AddVoter(voter, tx)).await??)
    }

    /// Removes a voter (on the leader), once a majority of the old set agrees.
    pub async fn remove_voter(&self, name: &NodeName) -> Result<(), DriverError> {
        Ok(self
            .ask(|tx| Command::RemoveVoter(name.clone(), tx))
            .await??)
    }

    /// Why this node is withdrawn ([`Election::withdraw`]), if it is.
    pub fn withdrawn(&self) -> Option<String> {
        self.state.borrow().withdrawn.clone()
    }

    /// Withdraws this node from the election, for `reason`: it steps down
    /// if it leads (handing over, so another voter takes over within about
    /// one lease), and grants no vote, accepts no voter change and never
    /// campaigns until [`Election::rejoin`]; it still follows the leader.
    /// The reason goes into membership (tag [`WITHDRAWN_TAG`]), where the
    /// other nodes read that this one is no candidate, and into the log.
    ///
    /// For a node that cannot do its job: its store failed, or it lost data
    /// it had acknowledged and must not vote with less. A withdrawn voter
    /// counts towards no majority, so a cluster needs a majority of voters
    /// that are not withdrawn to elect.
    pub async fn withdraw(&self, reason: impl Into<String>) -> Result<(), DriverError> {
        let reason = reason.into();
        self.ask(|tx| Command::Withdraw(reason, tx)).await
    }

    /// Undoes [`Election::withdraw`]: this node votes and may lead again.
    pub async fn rejoin(&self) -> Result<(), DriverError> {
        self.ask(Command::Rejoin).await
    }

    /// Says whether this node's log is far behind the leader's
    /// ([`Core::set_behind`]); published in membership ([`BEHIND_TAG`]).
    pub async fn set_behind(&self, behind: bool) -> Result<(), DriverError> {
        self.commands
            .send(Command::SetBehind(behind))
            .await
            .map_err(|_| DriverError::Stopped)
    }

    /// Sets the opaque summary carried by this node's future grants.
    pub async fn set_summary(&self, summary: Vec<u8>) -> Result<(), DriverError> {
        self.commands
            .send(Command::SetSummary(summary))
            .await
            .map_err(|_| DriverError::Stopped)
    }

    /// Stops the driver task for `pause`, as if the process were stopped
    /// (`SIGSTOP`): for fault tests.
    #[doc(hidden)]
    pub async fn freeze_for(&self, pause: Duration) -> Result<(), DriverError> {
        self.ask(|tx| Command::Freeze(pause, tx)).await
    }

    /// Whether the election task has stopped ([`Election::shutdown`], or
    /// its endpoint or membership went away).
    pub fn is_stopped(&self) -> bool {
        self.commands.is_closed()
    }

    /// Stops at once, without telling anyone. A leader should
    /// [`Election::step_down`] first, so that another voter leads at once
    /// instead of after its lease runs out.
    pub async fn shutdown(&self) {
        let _ = self.ask(Command::Shutdown).await;
    }
}

/// The storage error of any [`Storage`], boxed for [`DriverError`].
fn storage_error(e: impl std::error::Error + Send + Sync + 'static) -> DriverError {
    DriverError::Storage(Box::new(e))
}

struct Driver<S> {
    core: Core,
    storage: S,
    /// Where others reach this node (its member record's address).
    local_addr: SocketAddr,
    leader_feed: watch::Sender<Option<(NodeName, Epoch)>>,
    inbox: Inbox<Elect>,
    channel: Channel<Elect>,
    membership: Membership,
    changes: clustron_membership::Subscription,
    commands: mpsc::Receiver<Command>,
    events: broadcast::Sender<LeadershipEvent>,
    state: watch::Sender<State>,
    hook: Option<std::sync::Arc<dyn PromiseHook>>,
    /// Why this node is withdrawn, if it is.
    withdrawn: Option<String>,
    /// The promise storage holds (loaded, or last saved); `None` when
    /// unknown (a save failed).
    durable: Option<Promise>,
    /// When `durable` was loaded or last written.
    durable_at: Instant,
}

/// How often a lease renewal rewrites the promise storage already holds.
/// Rewriting the same bytes adds no durability; it only checks that
/// storage still takes writes. At every renewal (150 ms) it cost every
/// voter two fsyncs and a rename on the node's runtime, ~1 ms each.
const REWRITE_EVERY: Duration = Duration::from_secs(1);

/// Longest withdrawal reason put into membership (it is gossiped).
const MAX_TAG_REASON: usize = 200;

impl<S: Storage> Driver<S> {
    async fn run(mut self) {
        if let Some(reason) = self.withdrawn.clone() {
            tracing::warn!(%reason, "not voting or leading");
            self.publish_withdrawal().await;
        }
        self.refresh_view().await;
        loop {
            if let Err(e) = self.drain() {
                self.storage_failed(e).await;
                continue;
            }
            let deadline = self
                .core
                .poll_timeout()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
            tokio::select! {
                item = self.inbox.recv() => match item {
                    Some(Inbound::Message { from, message, .. }) => {
                        if let Message::Reject { epoch, from: voter, promised, holder, retry_after, .. } = &message {
                            tracing::debug!(%epoch, %voter, %promised, ?holder, ?retry_after, "campaign refused");
                        }
                        self.core.handle_message(Instant::now(), from.addr, message);
                    }
                    Some(Inbound::Request { reply, .. }) => reply.reject("election takes no requests"),
                    Some(Inbound::Stream { .. }) => {}
                    None => return,
                },
                change = self.changes.recv() => match change {
                    Some(clustron_transport::Notification::Event(_) | clustron_transport::Notification::Lagged(_)) => {
                        self.refresh_view().await
                    }
                    None => return,
                },
                () = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)) => {
                    self.core.handle_timeout(Instant::now());
                }
                command = self.commands.recv() => match command {
                    None => return,
                    Some(command) => {
                        if !self.command(command).await {
                            return;
                        }
                    }
                },
            }
        }
    }

    /// Feeds the live members (alive or suspect) to the core.
    async fn refresh_view(&mut self) {
        let Ok(members) = self.membership.members().await else {
            return;
        };
        let live: Vec<Peer> = members
            .iter()
            .filter(|m| matches!(m.state, MemberState::Alive | MemberState::Suspect))
            .map(Peer::from)
            .collect();
        self.core.set_view(Instant::now(), live);
    }

    /// Carries out a command; false to stop.
    async fn command(&mut self, command: Command) -> bool {
        let now = Instant::now();
        match command {
            Command::StepDown(tx) => {
                let _ = tx.send(self.core.step_down(now));
            }
            Command::TransferTo(name, tx) => {
                let _ = tx.send(self.core.transfer_to(now, &name));
            }
            Command::AddVoter(voter, tx) => {
                let _ = tx.send(self.core.add_voter(now, voter));
            }
            Command::RemoveVoter(name, tx) => {
                let _ = tx.send(self.core.remove_voter(now, &name));
            }
            Command::SetSummary(summary) => self.core.set_summary(summary),
            Command::SetBehind(behind) => {
                if behind != self.core.is_behind() {
                    tracing::info!(behind, "log behind the leader's");
                    self.core.set_behind(behind);
                    self.publish_behind(behind).await;
                }
            }
            Command::Withdraw(reason, tx) => {
                self.withdraw(reason).await;
                let _ = tx.send(());
            }
            Command::Rejoin(tx) => {
                if self.withdrawn.take().is_some() {
                    tracing::info!("voting and leading again");
                    self.core.rejoin(now);
                    self.publish_withdrawal().await;
                    let withdrawn = self.withdrawn.clone();
                    self.state.send_modify(|s| s.withdrawn = withdrawn);
                }
                let _ = tx.send(());
            }
            Command::Freeze(pause, tx) => {
                let _ = tx.send(());
                // This task handles nothing meanwhile: no timers, no
                // messages, no membership changes, like a stopped process.
                tokio::time::sleep(pause).await;
            }
            Command::Shutdown(tx) => {
                let _ = tx.send(());
                return false;
            }
        }
        true
    }

    /// Withdraws the core (a leader hands over) and tells membership.
    async fn withdraw(&mut self, reason: String) {
        if self.withdrawn.is_none() {
            tracing::error!(%reason, "withdrawing from the election: stepping down, not voting");
        }
        self.core.withdraw(Instant::now());
        self.withdrawn = Some(reason);
        self.publish_withdrawal().await;
        // Seen by `withdrawn()` at once; the rest of the state (the lease
        // given up) follows when the outputs are performed, next.
        let withdrawn = self.withdrawn.clone();
        self.state.send_modify(|s| s.withdrawn = withdrawn);
    }

    /// Storage failed: whatever was queued after the failed write must not
    /// leave (a grant would promise what is not on disk). Events still go
    /// up, then the node withdraws: a voter that cannot keep a promise must
    /// not make one.
    async fn storage_failed(&mut self, error: S::Error) {
        while let Some(output) = self.core.poll_output() {
            match output {
                Output::Send { .. } | Output::Persist(_) | Output::PersistVoters(_) => {}
                event => self.event(event),
            }
        }
        if self.withdrawn.is_some() {
            // Already out of the race (a voter-set record failed to save):
            // nothing more to refuse.
            tracing::warn!(error = %error, "election storage failed while withdrawn");
            return;
        }
        self.withdraw(format!("election storage failed: {error}"))
            .await;
    }

    /// Sets or clears our [`BEHIND_TAG`] in membership.
    async fn publish_behind(&mut self, behind: bool) {
        let Ok(local) = self.membership.local().await else {
            return;
        };
        let mut tags = local.tags;
        let changed = match behind {
            true => tags.insert(BEHIND_TAG.to_owned(), String::new()).is_none(),
            false => tags.remove(BEHIND_TAG).is_some(),
        };
        if changed {
            if let Err(e) = self.membership.update_tags(tags).await {
                tracing::warn!(error = %e, "cannot publish that the log is behind in membership");
            }
        }
    }

    /// Sets or clears our [`WITHDRAWN_TAG`] in membership.
    async fn publish_withdrawal(&mut self) {
        let Ok(local) = self.membership.local().await else {
            return;
        };
        let mut tags = local.tags;
        let changed = match &self.withdrawn {
            Some(reason) => {
                let mut reason = reason.clone();
                if reason.len() > MAX_TAG_REASON {
                    let mut end = MAX_TAG_REASON;
                    while !reason.is_char_boundary(end) {
                        end -= 1;
                    }
                    reason.truncate(end);
                }
                tags.insert(WITHDRAWN_TAG.to_owned(), reason.clone()) != Some(reason)
            }
            None => tags.remove(WITHDRAWN_TAG).is_some(),
        };
        if changed {
            if let Err(e) = self.membership.update_tags(tags).await {
                tracing::warn!(error = %e, "cannot publish the withdrawal in membership");
            }
        }
    }

    /// Delivers one event output to subscribers.
    fn event(&mut self, output: Output) {
        match output {
            Output::Elected { epoch, summaries } => {
                tracing::info!(%epoch, "elected");
                let _ = self
                    .events
                    .send(LeadershipEvent::Elected { epoch, summaries });
            }
            Output::SteppedDown { epoch } => {
                tracing::info!(%epoch, "stepped down");
                let _ = self.events.send(LeadershipEvent::SteppedDown { epoch });
            }
            Output::Leader { name, epoch } => {
                let _ = self.events.send(LeadershipEvent::Leader { name, epoch });
            }
            Output::LeaderLost => {
                tracing::debug!("no leader known");
                let _ = self.events.send(LeadershipEvent::LeaderLost);
            }
            Output::VotersChanged(set) => {
                let _ = self.events.send(LeadershipEvent::VotersChanged(set));
            }
            Output::Send { .. } | Output::Persist(_) | Output::PersistVoters(_) => {}
        }
    }

    /// Performs the core's outputs in order.
    fn drain(&mut self) -> Result<(), S::Error> {
        // The hook's summary for the promise just made durable.
        let mut fresh: Option<(Epoch, Vec<u8>)> = None;
        while let Some(output) = self.core.poll_output() {
            match output {
                Output::Persist(promise) => {
                    // A lease renewal promises again what storage already
                    // holds (same epoch, holder and length): it is rewritten
                    // at most every REWRITE_EVERY, as a check that storage
                    // still takes writes (a node whose disk fills while it
                    // leads then withdraws), not at every renewal.
                    let same = self.durable.as_ref() == Some(&promise);
                    if !same || self.durable_at.elapsed() >= REWRITE_EVERY {
                        self.durable = None;
                        self.storage.save_promise(&promise)?;
                        self.durable = Some(promise.clone());
                        self.durable_at = Instant::now();
                    }
                    if let Some(hook) = &self.hook {
                        let summary = hook.promised(promise.epoch);
                        self.core.set_summary(summary.clone());
                        fresh = Some((promise.epoch, summary));
                    }
                }
                Output::PersistVoters(record) => self.storage.save_voters(&record)?,
                Output::Send { to, mut msg } => {
                    if let Message::Request { epoch, .. } = &msg {
                        if !self.core.is_leader(Instant::now()) {
                            tracing::debug!(%epoch, %to, "campaigning");
                        }
                    }
                    if let (Message::Grant { epoch, summary, .. }, Some((promised, now))) =
                        (&mut msg, &fresh)
                    {
                        if epoch == promised {
                            summary.clone_from(now);
                        }
                    }
                    self.send(to, msg);
                }
                event => self.event(event),
            }
        }
        self.publish_state();
        Ok(())
    }

    /// Updates what the handles read, waking watchers only on a change.
    fn publish_state(&mut self) {
        let leader = self.core.leader().map(|(name, epoch)| {
            let is_local = name == *self.core.name();
            let addr = if is_local {
                Some(self.local_addr)
            } else {
                self.core.address_of(&name)
            };
            Leader {
                name,
                epoch,
                addr,
                is_local,
            }
        });
        let lease = self.core.lease();
        let voters = self.core.voters();
        let withdrawn = &self.withdrawn;
        self.state.send_if_modified(|state| {
            let changed = state.leader != leader
                || state.lease != lease
                || state.withdrawn != *withdrawn
                || state.voters != *voters;
            if changed {
                state.leader.clone_from(&leader);
                state.lease = lease;
                state.withdrawn.clone_from(withdrawn);
                state.voters.clone_from(voters);
            }
            changed
        });
        let named = leader.map(|l| (l.name, l.epoch));
        self.leader_feed.send_if_modified(|current| {
            let changed = *current != named;
            if changed {
                *current = named;
            }
            changed
        });
    }

    fn send(&self, to: SocketAddr, msg: Message) {
        let channel = self.channel.clone();
        tokio::spawn(async move {
            if let Err(e) = channel.send_datagram_or_stream(to, &msg).await {
                tracing::debug!(%to, error = %e, "election send failed");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn promise(epoch: u64) -> Promise {
        Promise {
            epoch: Epoch(epoch),
            holder: NodeName::new("n1").unwrap(),
            duration: Duration::from_millis(600),
        }
    }

    #[test]
    fn file_storage_keeps_the_newest_promise_across_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let mut storage = FileStorage::open(dir.path()).unwrap();
        assert_eq!(storage.load().unwrap(), Persisted::default());
        storage.save_promise(&promise(3)).unwrap();
        storage.save_promise(&promise(4)).unwrap();
        let reopened = FileStorage::open(dir.path()).unwrap();
        assert_eq!(reopened.load().unwrap().promise, Some(promise(4)));
        assert!(!dir.path().join("promise.tmp").exists());
    }

    #[test]
    fn a_corrupted_promise_file_is_refused_not_guessed() {
        let dir = tempfile::tempdir().unwrap();
        let mut storage = FileStorage::open(dir.path()).unwrap();
        storage.save_promise(&promise(3)).unwrap();
        std::fs::write(dir.path().join("promise"), [0xff, 0xff, 0xff]).unwrap();
        let err = storage.load().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("corrupted"), "{err}");
    }
}
