//! The event bus of a node: typed events, local subscriptions, cluster-wide
//! user events and the topology stream, driven by one tokio task.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use clustron_membership::{Epoch, Member, MemberEvent, Membership, NodeName, Notification};
use clustron_transport::{Channel, ChannelId, Endpoint, Inbound, Inbox, Protocol};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::core::{Config, Core, Message, Output, PublishError, UserEvent};

/// User events on the transport's `EVENTS` channel.
#[derive(Debug)]
pub struct Events;

impl Protocol for Events {
    const CHANNEL: ChannelId = ChannelId::EVENTS;
    type Request = ();
    type Response = ();
    type Message = Message;
}

/// Every kind of event a node sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A membership change.
    Member(MemberEvent),
    /// The known leader changed (`None`: no leader known).
    Leader(Option<(NodeName, Epoch)>),
    /// A user event, from any node (this one included).
    User(UserEvent),
    /// User events of `origin` that were lost for good.
    Gap {
        /// The publisher.
        origin: NodeName,
        /// First and last missed sequence numbers.
        missed: (u64, u64),
    },
}

/// Which events a subscription wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    /// Everything.
    All,
    /// Membership changes only.
    Membership,
    /// Leadership changes only.
    Leadership,
    /// User events (and gaps) of one topic.
    Topic(String),
    /// All user events (and gaps).
    User,
}

impl Filter {
    fn matches(&self, event: &Event) -> bool {
        match (self, event) {
            (Filter::All, _) => true,
            (Filter::Membership, Event::Member(_)) => true,
            (Filter::Leadership, Event::Leader(_)) => true,
            (Filter::User, Event::User(_) | Event::Gap { .. }) => true,
            (Filter::Topic(topic), Event::User(e)) => e.topic == *topic,
            (Filter::Topic(_), Event::Gap { .. }) => true,
            _ => false,
        }
    }
}

/// What a subscription yields: an event that matched the filter, or how
/// many events (of any kind) the subscriber missed by falling behind.
pub type Received = clustron_transport::Notification<Event>;

/// A filtered stream of events: the same lag-reporting
/// [`clustron_transport::Subscription`] as membership's and the election's,
/// with a [`Filter`].
#[derive(Debug)]
pub struct Subscription {
    inner: clustron_transport::Subscription<Event>,
    filter: Filter,
}

impl Subscription {
    /// The next matching event; `None` once the bus stopped.
    pub async fn recv(&mut self) -> Option<Received> {
        loop {
            match self.inner.recv().await? {
                Received::Event(event) if !self.filter.matches(&event) => {}
                received => return Some(received),
            }
        }
    }
}

/// Where the bus learns who leads: the current leader and its epoch as a
/// watch (`clustron_election::Election::leader_feed` gives one). The bus
/// does not depend on the election: any source of leaders will do, and a
/// node without an election passes none.
pub type LeaderFeed = watch::Receiver<Option<(NodeName, Epoch)>>;

/// The cluster as clients see it, at one version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    /// Raised by one with every change on this node.
    pub version: u64,
    /// Every known member.
    pub members: Vec<Member>,
    /// The leader and its epoch, if known.
    pub leader: Option<(NodeName, Epoch)>,
}

/// One change to the topology.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TopologyChange {
    /// A member's record changed (joined, suspect, failed, left, updated...).
    Member(Member),
    /// The leader changed.
    Leader(Option<(NodeName, Epoch)>),
}

/// What a topology watcher gets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TopologyUpdate {
    /// The whole topology; `fresh` when the watcher asked to resume from a
    /// version this node no longer has deltas for (or never had).
    Snapshot {
        /// The topology.
        topology: Topology,
        /// True when it replaces a resume that could not be honoured.
        fresh: bool,
    },
    /// One change, taking the topology to `version`.
    Delta {
        /// The version after this change.
        version: u64,
        /// The change.
        change: TopologyChange,
    },
}

enum Command {
    Publish(
        String,
        Vec<u8>,
        oneshot::Sender<Result<UserEvent, PublishError>>,
    ),
    Topology(oneshot::Sender<Topology>),
    Watch(
        Option<u64>,
        oneshot::Sender<(Vec<TopologyUpdate>, broadcast::Receiver<TopologyUpdate>)>,
    ),
    Shutdown(oneshot::Sender<()>),
}

/// Errors of the bus.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    /// A publish was refused.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// The transport refused (e.g. the channel is taken).
    #[error(transparent)]
    Transport(#[from] clustron_transport::Error),
    /// Membership failed.
    #[error(transparent)]
    Membership(#[from] clustron_membership::Error),
    /// The bus has stopped.
    #[error("the event bus has stopped")]
    Stopped,
}

/// A node's event bus: the handle to its task. Cheap to clone.
#[derive(Debug, Clone)]
pub struct EventBus {
    commands: mpsc::Sender<Command>,
    events: broadcast::Sender<Event>,
}

/// Deltas kept for topology watchers that resume by version.
const TOPOLOGY_HISTORY: usize = 1024;

impl EventBus {
    /// Starts the bus beside `membership`, reporting leaders from `leader`
    /// if the node runs an election (`election.leader_feed()`).
    pub async fn start(
        endpoint: &Endpoint,
        membership: &Membership,
        leader: Option<LeaderFeed>,
        config: Config,
    ) -> Result<Self, BusError> {
        let inbox = endpoint.register::<Events>()?;
        let me = membership.name().clone();
        let members = membership.members().await?;
        let mut core = Core::new(config, me, fastrand::u64(..), Instant::now());
        core.set_members(live(&members));
        let (commands, command_rx) = mpsc::channel(64);
        let (events, _) = broadcast::channel(1024);
        let mut leader = leader;
        let current = leader
            .as_mut()
            .and_then(|feed| feed.borrow_and_update().clone());
        let driver = Driver {
            core,
            inbox,
            channel: endpoint.channel::<Events>(),
            membership: membership.subscribe(),
            leader,
            commands: command_rx,
            events: events.clone(),
            topology: Topology {
                version: 1,
                members,
                leader: current,
            },
            history: VecDeque::new(),
            updates: broadcast::channel(1024).0,
        };
        tokio::spawn(driver.run());
        Ok(Self { commands, events })
    }

    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, BusError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(command(tx))
            .await
            .map_err(|_| BusError::Stopped)?;
        rx.await.map_err(|_| BusError::Stopped)
    }

    /// Publishes a user event to every live member.
    pub async fn publish(&self, topic: &str, payload: Vec<u8>) -> Result<UserEvent, BusError> {
        Ok(self
            .ask(|tx| Command::Publish(topic.to_owned(), payload, tx))
            .await??)
    }

    /// Events matching `filter`, as they happen (1024 are kept for a
    /// subscriber that falls behind; beyond that it is told how many it
    /// missed).
    pub fn subscribe(&self, filter: Filter) -> Subscription {
        Subscription {
            inner: clustron_transport::Subscription::new(self.events.subscribe()),
            filter,
        }
    }

    /// The current topology.
    pub async fn topology(&self) -> Result<Topology, BusError> {
        self.ask(Command::Topology).await
    }

    /// Topology updates: a snapshot (or, resuming `from` a version still in
    /// the history, the deltas after it), then deltas with increasing
    /// versions. A watcher that lags gets a fresh snapshot instead of a gap.
    pub async fn watch_topology(&self, from: Option<u64>) -> Result<TopologyWatch, BusError> {
        let (backlog, rx) = self.ask(|tx| Command::Watch(from, tx)).await?;
        Ok(TopologyWatch {
            backlog: backlog.into(),
            rx,
            bus: self.clone(),
        })
    }

    /// Stops the bus.
    pub async fn shutdown(&self) {
        let _ = self.ask(Command::Shutdown).await;
    }
}

/// A stream of [`TopologyUpdate`]s.
#[derive(Debug)]
pub struct TopologyWatch {
    backlog: VecDeque<TopologyUpdate>,
    rx: broadcast::Receiver<TopologyUpdate>,
    bus: EventBus,
}

impl TopologyWatch {
    /// The next update; `None` once the bus stopped.
    pub async fn next(&mut self) -> Option<TopologyUpdate> {
        if let Some(update) = self.backlog.pop_front() {
            return Some(update);
        }
        match self.rx.recv().await {
            Ok(update) => Some(update),
            Err(broadcast::error::RecvError::Lagged(_)) => {
                let topology = self.bus.topology().await.ok()?;
                self.rx = self.rx.resubscribe();
                Some(TopologyUpdate::Snapshot {
                    topology,
                    fresh: true,
                })
            }
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

fn live(members: &[Member]) -> Vec<(NodeName, std::net::SocketAddr)> {
    members
        .iter()
        .filter(|m| m.state.is_live())
        .map(|m| (m.name.clone(), m.addr))
        .collect()
}

struct Driver {
    core: Core,
    inbox: Inbox<Events>,
    channel: Channel<Events>,
    membership: clustron_membership::Subscription,
    leader: Option<LeaderFeed>,
    commands: mpsc::Receiver<Command>,
    events: broadcast::Sender<Event>,
    topology: Topology,
    history: VecDeque<(u64, TopologyChange)>,
    updates: broadcast::Sender<TopologyUpdate>,
}

impl Driver {
    async fn run(mut self) {
        loop {
            self.drain();
            let deadline = self
                .core
                .poll_timeout()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
            let leadership = async {
                match self.leader.as_mut() {
                    Some(feed) => match feed.changed().await {
                        Ok(()) => Some(feed.borrow_and_update().clone()),
                        // The election stopped: no more leaders to report.
                        Err(_) => std::future::pending().await,
                    },
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                item = self.inbox.recv() => match item {
                    Some(Inbound::Message { from, message, .. }) => {
                        self.core.handle_message(Instant::now(), from.addr, message);
                    }
                    Some(Inbound::Request { reply, .. }) => reply.reject("events take no requests"),
                    Some(Inbound::Stream { .. }) => {}
                    None => return,
                },
                note = self.membership.recv() => match note {
                    Some(Notification::Event(event)) => self.member_changed(event),
                    Some(Notification::Lagged(_)) => {}
                    None => return,
                },
                Some(leader) = leadership => self.leadership_changed(leader),
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
            Command::Publish(topic, payload, tx) => {
                let _ = tx.send(self.core.publish(topic, payload));
            }
            Command::Topology(tx) => {
                let _ = tx.send(self.topology.clone());
            }
            Command::Watch(from, tx) => {
                let backlog = self.backlog(from);
                let _ = tx.send((backlog, self.updates.subscribe()));
            }
            Command::Shutdown(_) => {}
        }
    }

    /// Deltas after `from` if all are still in the history, else a snapshot.
    fn backlog(&self, from: Option<u64>) -> Vec<TopologyUpdate> {
        let current = self.topology.version;
        let resumable = from.filter(|v| {
            *v == current
                || self
                    .history
                    .front()
                    .is_some_and(|(first, _)| *v + 1 >= *first && *v < current)
        });
        match resumable {
            Some(v) => self
                .history
                .iter()
                .filter(|(version, _)| *version > v)
                .map(|(version, change)| TopologyUpdate::Delta {
                    version: *version,
                    change: change.clone(),
                })
                .collect(),
            None => vec![TopologyUpdate::Snapshot {
                topology: self.topology.clone(),
                fresh: from.is_some(),
            }],
        }
    }

    fn change(&mut self, change: TopologyChange) {
        self.topology.version += 1;
        let version = self.topology.version;
        self.history.push_back((version, change.clone()));
        while self.history.len() > TOPOLOGY_HISTORY {
            self.history.pop_front();
        }
        let _ = self.updates.send(TopologyUpdate::Delta { version, change });
    }

    fn member_changed(&mut self, event: MemberEvent) {
        let member = event.member().clone();
        let _ = self.events.send(Event::Member(event));
        let members: BTreeMap<NodeName, Member> = self
            .topology
            .members
            .drain(..)
            .map(|m| (m.name.clone(), m))
            .chain(std::iter::once((member.name.clone(), member.clone())))
            .collect();
        self.topology.members = members.into_values().collect();
        self.core.set_members(live(&self.topology.members));
        self.change(TopologyChange::Member(member));
    }

    fn leadership_changed(&mut self, leader: Option<(NodeName, Epoch)>) {
        if leader == self.topology.leader {
            return;
        }
        self.topology.leader = leader.clone();
        let _ = self.events.send(Event::Leader(leader.clone()));
        self.change(TopologyChange::Leader(leader));
    }

    fn drain(&mut self) {
        while let Some(output) = self.core.poll_output() {
            match output {
                Output::Send { to, msg } => {
                    let channel = self.channel.clone();
                    tokio::spawn(async move {
                        let sent = match &msg {
                            Message::Events(_) => channel.send(to, &msg).await,
                            Message::Digest { .. } => {
                                channel.send_datagram_or_stream(to, &msg).await
                            }
                        };
                        if let Err(e) = sent {
                            tracing::debug!(%to, error = %e, "event send failed");
                        }
                    });
                }
                Output::Deliver(event) => {
                    let _ = self.events.send(Event::User(event));
                }
                Output::Gap { origin, missed, .. } => {
                    let _ = self.events.send(Event::Gap { origin, missed });
                }
            }
        }
    }
}
