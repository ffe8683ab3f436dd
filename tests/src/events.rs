//! User events on the simulator: the adapter from the event core to
//! [`crate::sim::Actor`] and delivery checks.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

use clustron_events::core::{Config, Core, Message, Output, UserEvent};
use clustron_membership::NodeName;

use crate::sim::{Actor, NodeId, Sim, Transmit};

/// An event core as a simulator actor. Events travel on streams (reliable),
/// digests as datagrams (lossy), as the driver sends them.
#[derive(Debug)]
pub struct EventNode {
    core: Core,
    transmits: VecDeque<Transmit<Message>>,
    events: VecDeque<Output>,
}

impl EventNode {
    /// A node with its members set.
    pub fn new(
        name: NodeName,
        seed: u64,
        now: Instant,
        members: &[(NodeName, SocketAddr)],
    ) -> Self {
        let mut core = Core::new(Config::default(), name, seed, now);
        core.set_members(members.iter().cloned());
        Self {
            core,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// The core, for commands (through [`Sim::with_node`]).
    pub fn core_mut(&mut self) -> &mut Core {
        &mut self.core
    }

    fn fill(&mut self) {
        while let Some(output) = self.core.poll_output() {
            match output {
                Output::Send { to, msg } => {
                    let reliable = matches!(msg, Message::Events(_));
                    self.transmits.push_back(Transmit { to, msg, reliable });
                }
                other => self.events.push_back(other),
            }
        }
    }
}

impl Actor for EventNode {
    type Message = Message;
    type Event = Output;

    fn handle_message(&mut self, now: Instant, from: SocketAddr, msg: Message) {
        self.core.handle_message(now, from, msg);
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.core.handle_timeout(now);
    }

    fn poll_transmit(&mut self) -> Option<Transmit<Message>> {
        self.fill();
        self.transmits.pop_front()
    }

    fn poll_event(&mut self) -> Option<Output> {
        self.fill();
        self.events.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.core.poll_timeout()
    }

    fn wire_size(msg: &Message) -> usize {
        postcard::to_allocvec(msg).map_or(0, |b| b.len()) + crate::swim::DATAGRAM_OVERHEAD
    }
}

/// What each node delivered, in order, and every violation seen so far.
#[derive(Debug, Default)]
pub struct Deliveries {
    /// Per node: the events delivered, in delivery order.
    pub by_node: BTreeMap<NodeId, Vec<UserEvent>>,
    /// Out-of-order or duplicate deliveries: (node, event).
    pub violations: Vec<(NodeId, UserEvent)>,
    /// Gaps reported: (node, origin, missed range).
    pub gaps: Vec<(NodeId, NodeName, (u64, u64))>,
}

impl Deliveries {
    /// Records the events the simulator logged, checking per-origin order.
    pub fn record(&mut self, sim: &mut Sim<EventNode>) {
        for (_, node, output) in sim.take_events() {
            match output {
                Output::Deliver(event) => {
                    let list = self.by_node.entry(node).or_default();
                    let previous = list
                        .iter()
                        .rev()
                        .find(|e| e.origin == event.origin && e.boot == event.boot);
                    let in_order = previous.is_none_or(|p| event.seq == p.seq + 1)
                        || self.gaps.iter().any(|(n, o, (_, to))| {
                            *n == node && *o == event.origin && *to + 1 == event.seq
                        });
                    if !in_order {
                        self.violations.push((node, event.clone()));
                    }
                    list.push(event);
                }
                Output::Gap { origin, missed, .. } => self.gaps.push((node, origin, missed)),
                Output::Send { .. } => {}
            }
        }
    }

    /// How many events node `id` delivered from `origin`.
    pub fn count(&self, id: NodeId, origin: &NodeName) -> usize {
        self.by_node.get(&id).map_or(0, |list| {
            list.iter().filter(|e| e.origin == *origin).count()
        })
    }
}

/// The name of node `i`.
pub fn name(i: usize) -> NodeName {
    crate::swim::name(i)
}

/// `n` event nodes that all know each other.
pub fn cluster(seed: u64, n: usize, net: crate::sim::NetConfig) -> Sim<EventNode> {
    let mut sim = Sim::new(seed, net);
    let members: Vec<(NodeName, SocketAddr)> =
        (0..n).map(|i| (name(i), crate::swim::addr(i))).collect();
    for i in 0..n {
        let seed = sim.rng().u64(..);
        let node = EventNode::new(name(i), seed, sim.now(), &members);
        sim.add_node(crate::swim::addr(i), node);
    }
    sim
}
