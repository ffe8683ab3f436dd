//! The tokio driver: joins the sans-IO core to the transport and real time.
//!
//! One task owns the [`Core`]; it selects over incoming messages, the core's
//! next deadline and API commands. [`Membership`] is the cloneable handle.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clustron_transport::{Channel, ChannelId, Endpoint, Inbound, Inbox, Protocol};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::config::Config;
use crate::core::{Core, Health, Message, Output};
use crate::error::Error;
use crate::member::{Incarnation, Member, MemberEvent, MemberState, NodeName};

/// The membership protocol on the transport's `MEMBERSHIP` channel.
#[derive(Debug)]
pub struct Swim;

impl Protocol for Swim {
    const CHANNEL: ChannelId = ChannelId::MEMBERSHIP;
    type Request = ();
    type Response = ();
    type Message = Message;
}

/// How to start membership on an endpoint.
#[derive(Debug, Clone)]
pub struct Options {
    /// Protocol timing.
    pub config: Config,
    /// Addresses of members to join through. Empty, or only our own
    /// address: form a new cluster.
    pub seeds: Vec<SocketAddr>,
    /// The address others reach us at. Default: the endpoint's local
    /// address (set this when listening on 0.0.0.0).
    pub advertise: Option<SocketAddr>,
    /// Election priority (higher preferred; ties go to the smallest name).
    ///
    /// Set here, not in `clustron-election`, because every node must see
    /// every other node's priority to agree on the candidate: it travels in
    /// this node's member record. The election reads this node's own
    /// priority from here when it starts. `clustron-node`'s builder sets it
    /// from its election settings (`Elect::priority`). Default 0.
    pub priority: u32,
    /// Whether this node votes in elections. Only a node that is also in
    /// the election's configured voter set counts; `clustron-node` sets it
    /// from that set. Default true.
    pub voter: bool,
    /// Initial tags.
    pub tags: BTreeMap<String, String>,
    /// How long [`Membership::start`] waits for a seed to answer.
    pub join_timeout: Duration,
    /// Changes buffered per subscriber; one that falls further behind is
    /// told how many it missed ([`Notification::Lagged`]).
    pub event_buffer: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            config: Config::default(),
            seeds: Vec::new(),
            advertise: None,
            priority: 0,
            voter: true,
            tags: BTreeMap::new(),
            join_timeout: Duration::from_secs(10),
            event_buffer: 1024,
        }
    }
}

enum Command {
    Members(oneshot::Sender<Vec<Member>>),
    Member(NodeName, oneshot::Sender<Option<Member>>),
    Local(oneshot::Sender<Member>),
    Health(oneshot::Sender<Health>),
    UpdateTags(BTreeMap<String, String>, oneshot::Sender<()>),
    Leave(oneshot::Sender<()>),
    Shutdown(oneshot::Sender<()>),
}

/// A running membership: the handle to its driver task. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Membership {
    commands: mpsc::Sender<Command>,
    events: broadcast::Sender<MemberEvent>,
    name: NodeName,
    verdicts: std::sync::Arc<VerdictCounters>,
}

/// How many failure verdicts this node reached about others since it
/// started ([`Membership::verdicts`]): under load, a node that is slow but
/// alive must not be suspected, so these are what an overload test counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Verdicts {
    /// Members this node marked suspect.
    pub suspected: u64,
    /// Members this node declared failed.
    pub failed: u64,
}

#[derive(Debug, Default)]
struct VerdictCounters {
    suspected: std::sync::atomic::AtomicU64,
    failed: std::sync::atomic::AtomicU64,
}

/// What a membership [`Subscription`] yields: a change, or how many were
/// missed (read [`Membership::members`] again to resynchronise).
pub type Notification = clustron_transport::Notification<MemberEvent>;

/// A stream of membership changes ([`Membership::subscribe`]); the same
/// lag-reporting shape as every other change stream in Clustron.
pub type Subscription = clustron_transport::Subscription<MemberEvent>;

impl Membership {
    /// Starts membership on `endpoint` and joins through `options.seeds`;
    /// returns once joined (or a new cluster is formed).
    pub async fn start(endpoint: &Endpoint, options: Options) -> Result<Self, Error> {
        let config = options.config.validate()?;
        let inbox = endpoint.register::<Swim>()?;
        let me = Member {
            name: endpoint.identity().name.clone(),
            addr: options.advertise.unwrap_or_else(|| endpoint.local_addr()),
            priority: options.priority,
            voter: options.voter,
            tags: options.tags,
            version: 0,
            incarnation: Incarnation(0),
            state: MemberState::Alive,
        };
        let name = me.name.clone();
        let mut core = Core::new(config, me, fastrand::u64(..), Instant::now());
        let (joined_tx, joined_rx) = oneshot::channel();
        let (commands, command_rx) = mpsc::channel(64);
        let (events, _) = broadcast::channel(options.event_buffer.max(1));
        let last_error = std::sync::Arc::new(std::sync::Mutex::new(None));
        let verdicts = std::sync::Arc::new(VerdictCounters::default());
        core.join(Instant::now(), &options.seeds);
        let driver = Driver {
            core,
            inbox,
            channel: endpoint.channel::<Swim>(),
            commands: command_rx,
            events: events.clone(),
            joined: Some(joined_tx),
            leave_waiters: Vec::new(),
            last_error: last_error.clone(),
            verdicts: verdicts.clone(),
        };
        tokio::spawn(driver.run());
        let membership = Self {
            commands,
            events,
            name,
            verdicts,
        };
        match tokio::time::timeout(options.join_timeout, joined_rx).await {
            Ok(Ok(Ok(()))) => Ok(membership),
            Ok(Ok(Err(e))) => {
                membership.shutdown().await;
                Err(e)
            }
            Ok(Err(_)) => Err(Error::Stopped),
            Err(_) => {
                membership.shutdown().await;
                let last_error = last_error.lock().ok().and_then(|e| e.clone());
                Err(Error::JoinTimeout {
                    seeds: options.seeds,
                    after: options.join_timeout,
                    last_error,
                })
            }
        }
    }

    /// Our name.
    pub fn name(&self) -> &NodeName {
        &self.name
    }

    /// The failure verdicts this node reached since it started.
    pub fn verdicts(&self) -> Verdicts {
        use std::sync::atomic::Ordering::Relaxed;
        Verdicts {
            suspected: self.verdicts.suspected.load(Relaxed),
            failed: self.verdicts.failed.load(Relaxed),
        }
    }

    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, Error> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(command(tx))
            .await
            .map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)
    }

    /// Every known member, ourselves included, sorted by name.
    pub async fn members(&self) -> Result<Vec<Member>, Error> {
        let mut members = self.ask(Command::Members).await?;
        members.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(members)
    }

    /// One member by name.
    pub async fn member(&self, name: &NodeName) -> Result<Option<Member>, Error> {
        self.ask(|tx| Command::Member(name.clone(), tx)).await
    }

    /// Our own record.
    pub async fn local(&self) -> Result<Member, Error> {
        self.ask(Command::Local).await
    }

    /// Counts by state, local health score and round trips.
    pub async fn health(&self) -> Result<Health, Error> {
        self.ask(Command::Health).await
    }

    /// Replaces our tags; the change is gossiped with a new incarnation.
    pub async fn update_tags(&self, tags: BTreeMap<String, String>) -> Result<(), Error> {
        self.ask(|tx| Command::UpdateTags(tags, tx)).await
    }

    /// Changes as they happen (the last [`Options::event_buffer`] are kept
    /// for a subscriber that falls behind; beyond that it is told how many
    /// it missed).
    pub fn subscribe(&self) -> Subscription {
        Subscription::new(self.events.subscribe())
    }

    /// Leaves gracefully and stops once the news is passed on.
    pub async fn leave(&self) -> Result<(), Error> {
        self.ask(Command::Leave).await
    }

    /// Stops at once, without telling anyone (others will see us fail).
    pub async fn shutdown(&self) {
        let _ = self.ask(Command::Shutdown).await;
    }
}

struct Driver {
    core: Core,
    inbox: Inbox<Swim>,
    channel: Channel<Swim>,
    commands: mpsc::Receiver<Command>,
    events: broadcast::Sender<MemberEvent>,
    joined: Option<oneshot::Sender<Result<(), Error>>>,
    leave_waiters: Vec<oneshot::Sender<()>>,
    /// The last send error, for a join that times out to say why.
    last_error: std::sync::Arc<std::sync::Mutex<Option<String>>>,
    verdicts: std::sync::Arc<VerdictCounters>,
}

impl Driver {
    async fn run(mut self) {
        loop {
            if self.drain() {
                return;
            }
            let deadline = self
                .core
                .poll_timeout()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
            tokio::select! {
                item = self.inbox.recv() => match item {
                    Some(Inbound::Message { from, message, .. }) => {
                        if message.sender() != &from.identity.name {
                            tracing::warn!(peer = %from.identity, claimed = %message.sender(), "membership message with a foreign name dropped");
                            continue;
                        }
                        self.core.handle_message(Instant::now(), from.addr, message);
                    }
                    Some(Inbound::Request { reply, .. }) => reply.reject("membership takes no requests"),
                    Some(Inbound::Stream { .. }) => {}
                    None => return,
                },
                () = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)) => {
                    self.core.handle_timeout(Instant::now());
                }
                command = self.commands.recv() => match command {
                    None => return,
                    Some(Command::Shutdown(done)) => {
                        let _ = done.send(());
                        return;
                    }
                    Some(command) => self.command(command),
                },
            }
        }
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Members(tx) => {
                let _ = tx.send(self.core.members().cloned().collect());
            }
            Command::Member(name, tx) => {
                let _ = tx.send(self.core.member(&name).cloned());
            }
            Command::Local(tx) => {
                let _ = tx.send(self.core.local().clone());
            }
            Command::Health(tx) => {
                let _ = tx.send(self.core.health());
            }
            Command::UpdateTags(tags, tx) => {
                self.core.update_tags(tags);
                let _ = tx.send(());
            }
            Command::Leave(tx) => {
                self.leave_waiters.push(tx);
                self.core.leave(Instant::now());
            }
            Command::Shutdown(tx) => {
                let _ = tx.send(());
            }
        }
    }

    /// Carries out the core's outputs; true when the driver should stop.
    fn drain(&mut self) -> bool {
        while let Some(output) = self.core.poll_output() {
            match output {
                Output::Send { to, msg, reliable } => {
                    let channel = self.channel.clone();
                    let last_error = self.last_error.clone();
                    tokio::spawn(async move {
                        let sent = if reliable {
                            channel.send(to, &msg).await
                        } else {
                            channel.send_datagram(to, &msg).await
                        };
                        if let Err(e) = sent {
                            tracing::debug!(%to, error = %e, "membership send failed");
                            if let Ok(mut last) = last_error.lock() {
                                *last = Some(e.to_string());
                            }
                        }
                    });
                }
                Output::Member(event) => {
                    tracing::info!(member = %event.member().name, state = event.kind(), "membership change");
                    let counter = match &event {
                        MemberEvent::Suspect(_) => Some(&self.verdicts.suspected),
                        MemberEvent::Failed(_) => Some(&self.verdicts.failed),
                        _ => None,
                    };
                    if let Some(counter) = counter {
                        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    let _ = self.events.send(event);
                }
                Output::Joined => {
                    if let Some(joined) = self.joined.take() {
                        let _ = joined.send(Ok(()));
                    }
                }
                Output::JoinRefused { by, reason } => {
                    if let Some(joined) = self.joined.take() {
                        let _ = joined.send(Err(Error::JoinRefused {
                            by: by.to_string(),
                            reason,
                        }));
                    }
                    return true;
                }
                Output::LeaveDone => {
                    for waiter in self.leave_waiters.drain(..) {
                        let _ = waiter.send(());
                    }
                    return true;
                }
            }
        }
        false
    }
}
