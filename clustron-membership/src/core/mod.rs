//! The sans-IO SWIM + Lifeguard core.
//!
//! ```text
//!            handle_message(now, from, Message) ─┐
//!            handle_timeout(now) ────────────────┤
//!  join(now, seeds) / leave(now) / update_tags ──┤
//!                                                ▼
//!                                        ┌──────────────┐
//!                                        │     Core     │── poll_timeout() → next deadline
//!                                        └──────────────┘
//!                                                │ poll_output()
//!           Output::Send { to, msg, reliable } ◄─┤
//!           Output::Member(MemberEvent)        ◄─┤
//!           Output::Joined / JoinRefused / LeaveDone
//! ```
//!
//! Calling protocol: after any input, drain `poll_output()` until `None`, then
//! sleep until `poll_timeout()` and call `handle_timeout`. Time and
//! randomness are inputs: `now` is an argument and the RNG is seeded from the
//! constructor, so a run replays exactly.
//!
//! The protocol, in short:
//! - each probe interval, ping the next member of a shuffled round; no ack
//!   within the probe timeout → ask `k` others to ping it (`PingReq`) and
//!   ping it again; nothing by the end of the interval → suspect it;
//! - suspicion is gossiped; each member that hears it probes the suspect
//!   itself (active confirmation) and, failing too, adds its own suspicion:
//!   confirmations shrink the timeout from max to min (Lifeguard);
//! - pings to a suspect carry the suspicion (Lifeguard's buddy system), so a
//!   live suspect learns of it at once and refutes with a higher incarnation;
//! - a suspect not refuted by its timeout is declared dead;
//! - relays that get no ack answer with a nack; missing nacks and refutations
//!   raise the local health score, which stretches our own probe interval
//!   and timeout (Local Health Multiplier), so a slow node stops accusing
//!   healthy ones;
//! - news is piggybacked on every message and gossiped to a few members per
//!   round while there is any; a periodic full-state exchange repairs the rest.

pub mod broadcast;
pub mod message;
pub mod suspicion;

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::member::{Incarnation, Member, MemberEvent, MemberState, NodeName};
use broadcast::Broadcasts;
pub use message::{Gossip, Message};
use suspicion::Suspicion;

/// What the core asks of its driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send `msg` to `to`: as a datagram, or on a stream when `reliable`.
    Send {
        /// Destination.
        to: SocketAddr,
        /// The message.
        msg: Message,
        /// Stream (true) or datagram (false).
        reliable: bool,
    },
    /// A membership change to pass to subscribers.
    Member(MemberEvent),
    /// We are part of a cluster now (joined through a seed, or formed one).
    Joined,
    /// A seed refused our join.
    JoinRefused {
        /// Who refused.
        by: NodeName,
        /// Why.
        reason: String,
    },
    /// A graceful leave has been passed on; the node may stop.
    LeaveDone,
}

/// Counts and estimates for `health()`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Health {
    /// Members (this node included) by state.
    pub alive: usize,
    /// Suspected members.
    pub suspect: usize,
    /// Dead members not yet reaped.
    pub dead: usize,
    /// Left members not yet reaped.
    pub left: usize,
    /// Local health score, 0 (healthy) to `awareness_max`.
    pub local_health: u32,
    /// Smoothed round trip per peer, from direct probes.
    pub round_trips: BTreeMap<NodeName, Duration>,
}

#[derive(Debug, Clone)]
struct Entry {
    member: Member,
    since: Instant,
    suspicion: Option<Suspicion>,
    round_trip: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ProbeKind {
    /// The round-robin probe: its outcome moves the local health score.
    Regular,
    /// A probe of a member someone else suspects.
    Confirm,
}

#[derive(Debug, Clone)]
struct Probe {
    seq: u32,
    target: NodeName,
    /// The target's incarnation when the probe started: a failure says
    /// nothing about a later incarnation.
    incarnation: Incarnation,
    addr: SocketAddr,
    sent: Instant,
    ack_deadline: Instant,
    end: Instant,
    indirect_sent: bool,
    expected_nacks: u32,
    nacks: u32,
    kind: ProbeKind,
    /// Given one more interval because the relays did not even nack
    /// ([`Core::handle_probes`]).
    extended: bool,
}

#[derive(Debug, Clone)]
struct Relay {
    seq: u32,
    origin: SocketAddr,
    origin_seq: u32,
    deadline: Instant,
}

#[derive(Debug, Clone)]
struct Joining {
    seeds: Vec<SocketAddr>,
    next_attempt: Instant,
    attempts: u32,
}

/// The SWIM + Lifeguard state machine of one node.
#[derive(Debug)]
pub struct Core {
    config: Config,
    rng: fastrand::Rng,
    me: Member,
    members: BTreeMap<NodeName, Entry>,
    probe_round: Vec<NodeName>,
    next_probe: Instant,
    probes: Vec<Probe>,
    relays: Vec<Relay>,
    seq: u32,
    broadcasts: Broadcasts,
    next_gossip: Instant,
    next_push_pull: Instant,
    next_reconnect: Instant,
    next_reap: Instant,
    awareness: u32,
    joining: Option<Joining>,
    joined: bool,
    leaving: Option<Instant>,
    outputs: VecDeque<Output>,
}

impl Core {
    /// A node that knows only itself. Call [`Core::join`] next.
    pub fn new(config: Config, me: Member, seed: u64, now: Instant) -> Self {
        let mut rng = fastrand::Rng::with_seed(seed);
        // Spread the first probe over one interval, so nodes started together
        // do not probe in lockstep.
        let first_probe = now + config.probe_interval.mul_f64(rng.f64());
        let next_push_pull = now + config.push_pull_interval.mul_f64(0.5 + rng.f64());
        let next_reconnect = now + config.reconnect_interval;
        Self {
            next_gossip: now + config.gossip_interval,
            next_reap: now + config.reap_after.min(Duration::from_secs(60)),
            config,
            rng,
            me: Member {
                state: MemberState::Alive,
                ..me
            },
            members: BTreeMap::new(),
            probe_round: Vec::new(),
            next_probe: first_probe,
            probes: Vec::new(),
            relays: Vec::new(),
            seq: 0,
            broadcasts: Broadcasts::default(),
            next_push_pull,
            next_reconnect,
            awareness: 0,
            joining: None,
            joined: false,
            leaving: None,
            outputs: VecDeque::new(),
        }
    }

    // ----- API ---------------------------------------------------------

    /// Joins through `seeds` (our own address is skipped). With no other
    /// seed, this node forms a new cluster at once. Attempts repeat with
    /// backoff until a seed answers.
    pub fn join(&mut self, now: Instant, seeds: &[SocketAddr]) {
        let seeds: Vec<SocketAddr> = seeds
            .iter()
            .copied()
            .filter(|s| *s != self.me.addr)
            .collect();
        if seeds.is_empty() {
            self.joined = true;
            self.outputs.push_back(Output::Joined);
            return;
        }
        self.joining = Some(Joining {
            seeds,
            next_attempt: now,
            attempts: 0,
        });
        self.handle_timeout(now);
    }

    /// Leaves gracefully: tells a few members directly and gossips it;
    /// [`Output::LeaveDone`] follows once it is passed on (or after
    /// `leave_timeout`).
    pub fn leave(&mut self, now: Instant) {
        if self.leaving.is_some() {
            return;
        }
        self.leaving = Some(now + self.config.leave_timeout);
        self.me.state = MemberState::Left;
        let news = Gossip::Left {
            name: self.me.name.clone(),
            incarnation: self.me.incarnation,
        };
        self.broadcasts.push(news.clone());
        for to in self.random_members(self.config.gossip_fanout, &[]) {
            self.send_reliable(
                to,
                Message::Gossip {
                    from: self.me.name.clone(),
                    gossip: vec![news.clone()],
                },
            );
        }
        if self.live_others() == 0 {
            self.finish_leave();
        }
    }

    /// Replaces our tags and announces them with a new incarnation.
    pub fn update_tags(&mut self, tags: BTreeMap<String, String>) {
        self.me.tags = tags;
        self.me.version += 1;
        self.me.incarnation.0 += 1;
        self.broadcasts.push(Gossip::Alive(self.me.clone()));
    }

    /// Our own record.
    pub fn local(&self) -> &Member {
        &self.me
    }

    /// Every member we know, ourselves included, by name.
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        std::iter::once(&self.me).chain(self.members.values().map(|e| &e.member))
    }

    /// One member by name (ourselves included).
    pub fn member(&self, name: &NodeName) -> Option<&Member> {
        if *name == self.me.name {
            return Some(&self.me);
        }
        self.members.get(name).map(|e| &e.member)
    }

    /// Whether the node has joined a cluster.
    pub fn is_joined(&self) -> bool {
        self.joined
    }

    /// Counts by state, the local health score and round-trip estimates.
    pub fn health(&self) -> Health {
        let mut health = Health {
            local_health: self.awareness,
            ..Health::default()
        };
        for member in self.members() {
            match member.state {
                MemberState::Alive => health.alive += 1,
                MemberState::Suspect => health.suspect += 1,
                MemberState::Dead => health.dead += 1,
                MemberState::Left => health.left += 1,
            }
        }
        for (name, entry) in &self.members {
            if let Some(rtt) = entry.round_trip {
                health.round_trips.insert(name.clone(), rtt);
            }
        }
        health
    }

    // ----- sans-IO plumbing ---------------------------------------------

    /// The next output, if any. Drain after every input.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When [`Core::handle_timeout`] wants to be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut next = self
            .next_probe
            .min(self.next_push_pull)
            .min(self.next_reap)
            .min(self.next_reconnect);
        if !self.broadcasts.is_empty() {
            next = next.min(self.next_gossip);
        }
        for probe in &self.probes {
            next = next.min(if probe.indirect_sent {
                probe.end
            } else {
                probe.ack_deadline
            });
        }
        for relay in &self.relays {
            next = next.min(relay.deadline);
        }
        for entry in self.members.values() {
            if let Some(suspicion) = &entry.suspicion {
                next = next.min(suspicion.deadline());
            }
        }
        if let Some(joining) = &self.joining {
            next = next.min(joining.next_attempt);
        }
        if let Some(deadline) = self.leaving {
            next = next.min(deadline);
        }
        Some(next)
    }

    /// Handles every deadline that has passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.handle_join_retry(now);
        self.handle_probes(now);
        self.handle_relays(now);
        self.handle_suspicions(now);
        if now >= self.next_probe {
            self.start_probe_round(now);
        }
        if now >= self.next_gossip {
            self.next_gossip = now + self.config.gossip_interval;
            self.gossip_round();
        }
        if now >= self.next_push_pull {
            self.next_push_pull = now + self.push_pull_interval();
            if self.joined && self.leaving.is_none() {
                if let Some(to) = self.random_members(1, &[]).pop() {
                    let msg = Message::Sync {
                        from: self.me.name.clone(),
                        join: false,
                        members: self.state_snapshot(),
                    };
                    self.send_reliable(to, msg);
                }
            }
        }
        if now >= self.next_reconnect {
            self.next_reconnect = now + self.config.reconnect_interval;
            self.reconnect();
        }
        if now >= self.next_reap {
            self.next_reap = now + self.config.reap_after.min(Duration::from_secs(60));
            self.reap(now);
        }
        if let Some(deadline) = self.leaving {
            if now >= deadline || !self.broadcasts.has_news_about(&self.me.name) {
                self.finish_leave();
            }
        }
    }

    /// Handles one message from `from`, whose claimed sender the driver has
    /// checked against its certificate.
    pub fn handle_message(&mut self, now: Instant, from: SocketAddr, msg: Message) {
        match msg {
            Message::Ping {
                seq,
                from: sender,
                target,
                gossip,
            } => {
                self.apply_all(now, gossip);
                if target != self.me.name {
                    return; // meant for whoever had this address before us
                }
                let _ = sender;
                let gossip = self.piggyback(&[]);
                self.send(
                    from,
                    Message::Ack {
                        seq,
                        from: self.me.name.clone(),
                        incarnation: self.me.incarnation,
                        gossip,
                    },
                );
            }
            Message::Ack {
                seq,
                from: sender,
                incarnation,
                gossip,
            } => {
                self.apply_all(now, gossip);
                self.handle_ack(now, seq, &sender, incarnation);
            }
            Message::PingReq {
                seq,
                from: _,
                target,
                target_addr,
                gossip,
            } => {
                self.apply_all(now, gossip);
                let relay_seq = self.next_seq();
                let gossip = self.piggyback(&[]);
                self.send(
                    target_addr,
                    Message::Ping {
                        seq: relay_seq,
                        from: self.me.name.clone(),
                        target,
                        gossip,
                    },
                );
                self.relays.push(Relay {
                    seq: relay_seq,
                    origin: from,
                    origin_seq: seq,
                    deadline: now + self.config.probe_timeout,
                });
            }
            Message::Nack { seq, .. } => {
                if let Some(probe) = self.probes.iter_mut().find(|p| p.seq == seq) {
                    probe.nacks += 1;
                }
            }
            Message::Gossip { gossip, .. } => self.apply_all(now, gossip),
            Message::Sync {
                from: sender,
                join,
                members,
            } => {
                if join {
                    if let Some(reason) = self.join_conflict(&sender, from) {
                        self.send_reliable(
                            from,
                            Message::JoinRefused {
                                from: self.me.name.clone(),
                                reason,
                            },
                        );
                        return;
                    }
                }
                // Merge first: if the sender thought us dead, the reply
                // carries our refutation.
                self.merge(now, &sender, members);
                let reply = Message::SyncReply {
                    from: self.me.name.clone(),
                    members: self.state_snapshot(),
                };
                self.send_reliable(from, reply);
            }
            Message::SyncReply {
                from: sender,
                members,
            } => {
                self.merge(now, &sender, members);
                if self.joining.take().is_some() || !self.joined {
                    self.joined = true;
                    self.outputs.push_back(Output::Joined);
                    // News of members that joined while we were joining went
                    // to nodes that did not know us yet: catch up with one
                    // early full-state exchange instead of waiting a period.
                    let soon = self.config.gossip_interval * 10;
                    self.next_push_pull = now + soon + soon.mul_f64(self.rng.f64());
                }
            }
            Message::JoinRefused {
                from: sender,
                reason,
            } => {
                if self.joining.take().is_some() {
                    self.outputs
                        .push_back(Output::JoinRefused { by: sender, reason });
                }
            }
        }
    }

    // ----- probing --------------------------------------------------------

    fn scale(&self) -> u32 {
        self.awareness + 1
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn start_probe_round(&mut self, now: Instant) {
        self.next_probe = now + self.config.probe_interval * self.scale();
        if self.leaving.is_some() || !self.joined {
            return;
        }
        let Some(target) = self.next_probe_target() else {
            return;
        };
        self.probe(now, target, ProbeKind::Regular);
    }

    /// The next member of a shuffled round over live members, reshuffled
    /// when exhausted, so every member is probed once per round.
    fn next_probe_target(&mut self) -> Option<NodeName> {
        for _ in 0..2 {
            while let Some(name) = self.probe_round.pop() {
                if self
                    .members
                    .get(&name)
                    .is_some_and(|e| e.member.state.is_live())
                {
                    return Some(name);
                }
            }
            self.probe_round = self
                .members
                .iter()
                .filter(|(_, e)| e.member.state.is_live())
                .map(|(name, _)| name.clone())
                .collect();
            self.rng.shuffle(&mut self.probe_round);
        }
        None
    }

    fn probe(&mut self, now: Instant, target: NodeName, kind: ProbeKind) {
        let Some(entry) = self.members.get(&target) else {
            return;
        };
        let (addr, incarnation) = (entry.member.addr, entry.member.incarnation);
        // Lifeguard's buddy system: a suspect learns of its suspicion from
        // the probe itself and can refute in the ack.
        let buddy: Vec<Gossip> = entry
            .suspicion
            .as_ref()
            .and_then(|s| s.suspectors.iter().next().map(|from| (s, from)))
            .map(|(s, from)| Gossip::Suspect {
                name: target.clone(),
                incarnation: s.incarnation,
                from: from.clone(),
            })
            .into_iter()
            .collect();
        let seq = self.next_seq();
        let gossip = self.piggyback(&buddy);
        self.send(
            addr,
            Message::Ping {
                seq,
                from: self.me.name.clone(),
                target: target.clone(),
                gossip,
            },
        );
        let scale = self.scale();
        self.probes.push(Probe {
            seq,
            target,
            incarnation,
            addr,
            sent: now,
            ack_deadline: now + self.config.probe_timeout * scale,
            end: now + self.config.probe_interval * scale,
            indirect_sent: false,
            expected_nacks: 0,
            nacks: 0,
            kind,
            extended: false,
        });
    }

    fn handle_ack(&mut self, now: Instant, seq: u32, sender: &NodeName, incarnation: Incarnation) {
        if let Some(index) = self.relays.iter().position(|r| r.seq == seq) {
            let relay = self.relays.swap_remove(index);
            let gossip = self.piggyback(&[]);
            // Forwarded as the target's ack: its incarnation, our name.
            self.send(
                relay.origin,
                Message::Ack {
                    seq: relay.origin_seq,
                    from: self.me.name.clone(),
                    incarnation,
                    gossip,
                },
            );
            return;
        }
        let Some(index) = self.probes.iter().position(|p| p.seq == seq) else {
            return;
        };
        let probe = self.probes.swap_remove(index);
        // An ack that needed the extra interval does not lower the score:
        // we were slow to hear it.
        if probe.kind == ProbeKind::Regular && !probe.extended {
            self.awareness = self.awareness.saturating_sub(1);
        }
        self.acked(now, &probe.target, incarnation);
        if now >= probe.ack_deadline {
            tracing::debug!(
                me = %self.me.name,
                target = %probe.target,
                %sender,
                waited = ?now.saturating_duration_since(probe.sent),
                "late ack"
            );
        }
        // Only a direct ack from the target measures the round trip.
        if *sender == probe.target {
            if let Some(entry) = self.members.get_mut(&probe.target) {
                let sample = now.saturating_duration_since(probe.sent);
                entry.round_trip = Some(match entry.round_trip {
                    Some(rtt) => rtt.mul_f64(0.8) + sample.mul_f64(0.2),
                    None => sample,
                });
            }
        }
    }

    /// An ack (direct or relayed) shows `target` alive at `incarnation`: if
    /// that is above the incarnation we suspect, the suspect has refuted.
    fn acked(&mut self, now: Instant, target: &NodeName, incarnation: Incarnation) {
        let Some(entry) = self.members.get(target) else {
            return;
        };
        if entry.member.state.is_live() && incarnation > entry.member.incarnation {
            let member = Member {
                incarnation,
                state: MemberState::Alive,
                ..entry.member.clone()
            };
            self.alive(now, member);
        }
    }

    fn handle_probes(&mut self, now: Instant) {
        let mut index = 0;
        while index < self.probes.len() {
            let probe = &self.probes[index];
            // Lifeguard: relays that did not even nack suggest that we are
            // the slow one, not the target. Lifeguard raises the local
            // health score and still suspects; we also give the target one
            // more (stretched) interval first. Under overload on two cores
            // a busy node's ack came a few milliseconds after the interval
            // and it was suspected, then refuted at once (issue 13: a
            // "suspected" verdict every minute or two at 1,000 requests in
            // flight). A target whose relays answer is suspected as before;
            // one that is dead along with every relay costs one interval
            // more.
            let unanswered = probe.expected_nacks > 0 && probe.nacks < probe.expected_nacks;
            if now >= probe.end && probe.kind == ProbeKind::Regular && unanswered && !probe.extended
            {
                self.awareness = (self.awareness + 1).min(self.config.awareness_max);
                let end = now + self.config.probe_interval * self.scale();
                let probe = &mut self.probes[index];
                probe.extended = true;
                probe.end = end;
                let (seq, target, addr) = (probe.seq, probe.target.clone(), probe.addr);
                tracing::debug!(me = %self.me.name, %target, "no ack and no nack: one more interval");
                self.ping_again(addr, seq, target);
                index += 1;
                continue;
            }
            if now >= probe.end {
                let probe = self.probes.swap_remove(index);
                self.probe_failed(now, probe);
                continue;
            }
            if !probe.indirect_sent && now >= probe.ack_deadline {
                let (seq, target, addr) = (probe.seq, probe.target.clone(), probe.addr);
                let relays =
                    self.random_members(self.config.indirect_checks, std::slice::from_ref(&target));
                for relay in &relays {
                    let gossip = self.piggyback(&[]);
                    self.send(
                        *relay,
                        Message::PingReq {
                            seq,
                            from: self.me.name.clone(),
                            target: target.clone(),
                            target_addr: addr,
                            gossip,
                        },
                    );
                }
                // One more direct try: a single lost datagram should not
                // make a suspect.
                self.ping_again(addr, seq, target);
                let probe = &mut self.probes[index];
                probe.indirect_sent = true;
                probe.expected_nacks = relays.len() as u32;
            }
            index += 1;
        }
    }

    /// Pings `target` at `addr` again for the probe `seq`, without gossip.
    fn ping_again(&mut self, addr: SocketAddr, seq: u32, target: NodeName) {
        let from = self.me.name.clone();
        self.send(
            addr,
            Message::Ping {
                seq,
                from,
                target,
                gossip: Vec::new(),
            },
        );
    }

    fn probe_failed(&mut self, now: Instant, probe: Probe) {
        if probe.kind == ProbeKind::Regular && !probe.extended {
            // Lifeguard: relays that did not even nack suggest that we are
            // the slow one, not the target (an extended probe counted
            // that already).
            let delta = if probe.expected_nacks == 0 || probe.nacks < probe.expected_nacks {
                1
            } else {
                0
            };
            self.awareness = (self.awareness + delta).min(self.config.awareness_max);
        }
        let Some(entry) = self.members.get(&probe.target) else {
            return;
        };
        if entry.member.addr != probe.addr
            || !entry.member.state.is_live()
            || entry.member.incarnation != probe.incarnation
        {
            return;
        }
        tracing::debug!(
            me = %self.me.name,
            target = %probe.target,
            waited = ?now.saturating_duration_since(probe.sent),
            round_trip = ?entry.round_trip,
            nacks = probe.nacks,
            expected_nacks = probe.expected_nacks,
            awareness = self.awareness,
            "probe failed: suspecting"
        );
        let me = self.me.name.clone();
        self.suspect(now, probe.target, probe.incarnation, me);
    }

    fn handle_relays(&mut self, now: Instant) {
        let mut index = 0;
        while index < self.relays.len() {
            if now >= self.relays[index].deadline {
                let relay = self.relays.swap_remove(index);
                self.send(
                    relay.origin,
                    Message::Nack {
                        seq: relay.origin_seq,
                        from: self.me.name.clone(),
                    },
                );
            } else {
                index += 1;
            }
        }
    }

    // ----- state changes --------------------------------------------------

    fn apply_all(&mut self, now: Instant, gossip: Vec<Gossip>) {
        for news in gossip {
            self.apply(now, news);
        }
    }

    fn apply(&mut self, now: Instant, news: Gossip) {
        match news {
            Gossip::Alive(member) => self.alive(now, member),
            Gossip::Suspect {
                name,
                incarnation,
                from,
            } => self.suspect(now, name, incarnation, from),
            Gossip::Dead {
                name,
                incarnation,
                from,
            } => self.dead(now, name, incarnation, from),
            Gossip::Left { name, incarnation } => self.left(now, name, incarnation),
        }
    }

    fn refute(&mut self, incarnation: Incarnation) {
        if self.leaving.is_some() {
            return;
        }
        self.me.incarnation = Incarnation(self.me.incarnation.0.max(incarnation.0) + 1);
        // Lifeguard: being suspected hints that we are slow.
        self.awareness = (self.awareness + 1).min(self.config.awareness_max);
        self.broadcasts.push(Gossip::Alive(self.me.clone()));
    }

    fn event(&mut self, event: MemberEvent) {
        self.outputs.push_back(Output::Member(event));
    }

    fn alive(&mut self, now: Instant, member: Member) {
        if member.name == self.me.name {
            let stale_or_same = member.incarnation < self.me.incarnation
                || (member.incarnation == self.me.incarnation && member.same_metadata(&self.me));
            if !stale_or_same {
                self.refute(member.incarnation);
            }
            return;
        }
        let member = Member {
            state: MemberState::Alive,
            ..member
        };
        match self.members.get_mut(&member.name) {
            None => {
                self.members.insert(
                    member.name.clone(),
                    Entry {
                        member: member.clone(),
                        since: now,
                        suspicion: None,
                        round_trip: None,
                    },
                );
                self.broadcasts.push(Gossip::Alive(member.clone()));
                self.event(MemberEvent::Joined(member));
            }
            Some(entry) => {
                if member.incarnation <= entry.member.incarnation {
                    return;
                }
                let previous = entry.member.state;
                let changed = !entry.member.same_metadata(&member);
                entry.member = member.clone();
                entry.suspicion = None;
                if previous != MemberState::Alive {
                    entry.since = now;
                }
                self.broadcasts.push(Gossip::Alive(member.clone()));
                match previous {
                    MemberState::Dead | MemberState::Left => {
                        self.event(MemberEvent::Joined(member))
                    }
                    MemberState::Suspect => {
                        self.event(MemberEvent::Alive(member.clone()));
                        if changed {
                            self.event(MemberEvent::Updated(member));
                        }
                    }
                    MemberState::Alive if changed => self.event(MemberEvent::Updated(member)),
                    MemberState::Alive => {}
                }
            }
        }
    }

    fn suspect(&mut self, now: Instant, name: NodeName, incarnation: Incarnation, from: NodeName) {
        if name == self.me.name {
            if incarnation >= self.me.incarnation {
                self.refute(incarnation);
            }
            return;
        }
        let n = self.live_count();
        let min = suspicion::min_timeout(self.config.suspicion_mult, n, self.config.probe_interval);
        let max = min * self.config.suspicion_max_mult;
        let k = self.config.suspicion_confirmations.min(n.saturating_sub(2));
        let me = self.me.name.clone();
        let Some(entry) = self.members.get_mut(&name) else {
            return;
        };
        if incarnation < entry.member.incarnation || !entry.member.state.is_live() {
            return;
        }
        if let Some(suspicion) = entry.suspicion.as_mut() {
            if suspicion.incarnation == incarnation {
                if suspicion.confirm(from.clone()) {
                    self.broadcasts.push(Gossip::Suspect {
                        name,
                        incarnation,
                        from,
                    });
                }
                return;
            }
        }
        entry.member.state = MemberState::Suspect;
        entry.member.incarnation = incarnation;
        entry.since = now;
        entry.suspicion = Some(Suspicion::new(now, incarnation, from.clone(), min, max, k));
        let member = entry.member.clone();
        self.broadcasts.push(Gossip::Suspect {
            name: name.clone(),
            incarnation,
            from: from.clone(),
        });
        self.event(MemberEvent::Suspect(member));
        // Active confirmation: see for ourselves, unless the suspicion is
        // ours or we are already probing it.
        let probing = self.probes.iter().any(|p| p.target == name);
        if from != me && !probing && self.joined && self.leaving.is_none() {
            self.probe(now, name, ProbeKind::Confirm);
        }
    }

    fn dead(&mut self, now: Instant, name: NodeName, incarnation: Incarnation, _from: NodeName) {
        if name == self.me.name {
            self.refute(incarnation);
            return;
        }
        let Some(entry) = self.members.get_mut(&name) else {
            return;
        };
        if incarnation < entry.member.incarnation || !entry.member.state.is_live() {
            return;
        }
        self.declare_dead(now, name, incarnation);
    }

    /// Moves a known member to `state` at `incarnation`, ending any
    /// suspicion; returns its new record.
    fn transition(
        &mut self,
        now: Instant,
        name: &NodeName,
        state: MemberState,
        incarnation: Incarnation,
    ) -> Option<Member> {
        let entry = self.members.get_mut(name)?;
        entry.member.state = state;
        entry.member.incarnation = incarnation;
        entry.suspicion = None;
        entry.since = now;
        Some(entry.member.clone())
    }

    fn declare_dead(&mut self, now: Instant, name: NodeName, incarnation: Incarnation) {
        let Some(member) = self.transition(now, &name, MemberState::Dead, incarnation) else {
            return;
        };
        self.broadcasts.push(Gossip::Dead {
            name,
            incarnation,
            from: self.me.name.clone(),
        });
        self.event(MemberEvent::Failed(member));
    }

    fn left(&mut self, now: Instant, name: NodeName, incarnation: Incarnation) {
        if name == self.me.name {
            if self.leaving.is_none() && incarnation >= self.me.incarnation {
                self.refute(incarnation); // news of an earlier life of ours
            }
            return;
        }
        let Some(entry) = self.members.get_mut(&name) else {
            return;
        };
        if incarnation < entry.member.incarnation || entry.member.state == MemberState::Left {
            return;
        }
        let Some(member) = self.transition(now, &name, MemberState::Left, incarnation) else {
            return;
        };
        self.broadcasts.push(Gossip::Left { name, incarnation });
        self.event(MemberEvent::Left(member));
    }

    fn handle_suspicions(&mut self, now: Instant) {
        let expired: Vec<(NodeName, Incarnation, bool)> = self
            .members
            .iter()
            .filter_map(|(name, entry)| {
                let suspicion = entry.suspicion.as_ref()?;
                let final_probe_due =
                    !suspicion.is_confirmed() && suspicion.final_probe_until.is_none();
                (now >= suspicion.deadline())
                    .then(|| (name.clone(), suspicion.incarnation, final_probe_due))
            })
            .collect();
        for (name, incarnation, final_probe_due) in expired {
            if final_probe_due && self.leaving.is_none() {
                // Few confirmations: likely a false suspicion whose
                // refutation we missed. One last look (with the suspicion
                // attached, so a live suspect refutes in its ack) before the
                // verdict, which waits for this probe to end.
                let until = now + self.config.probe_interval * self.scale();
                if let Some(suspicion) = self
                    .members
                    .get_mut(&name)
                    .and_then(|e| e.suspicion.as_mut())
                {
                    suspicion.final_probe_until = Some(until);
                }
                if !self.probes.iter().any(|p| p.target == name) {
                    self.probe(now, name, ProbeKind::Confirm);
                }
                continue;
            }
            self.declare_dead(now, name, incarnation);
        }
    }

    /// Full state from a push-pull or a join. Remote suspicions and deaths
    /// become suspicions here: we let our own timers decide (as memberlist).
    fn merge(&mut self, now: Instant, sender: &NodeName, members: Vec<Member>) {
        for member in members {
            let known = member.name == self.me.name || self.members.contains_key(&member.name);
            match member.state {
                MemberState::Alive => self.alive(now, member),
                MemberState::Suspect | MemberState::Dead if known => {
                    let (name, incarnation) = (member.name.clone(), member.incarnation);
                    if name == self.me.name {
                        if incarnation >= self.me.incarnation {
                            self.refute(incarnation);
                        }
                    } else {
                        self.alive(
                            now,
                            Member {
                                state: MemberState::Alive,
                                ..member
                            },
                        );
                        self.suspect(now, name, incarnation, sender.clone());
                    }
                }
                MemberState::Left if known => self.left(now, member.name, member.incarnation),
                MemberState::Suspect => self.alive(now, member),
                // An unknown member that is already gone: remember it quietly.
                MemberState::Dead | MemberState::Left => {
                    self.members.insert(
                        member.name.clone(),
                        Entry {
                            member,
                            since: now,
                            suspicion: None,
                            round_trip: None,
                        },
                    );
                }
            }
        }
    }

    fn join_conflict(&self, name: &NodeName, addr: SocketAddr) -> Option<String> {
        if *name == self.me.name {
            return Some(format!(
                "the name {name} is already used by the node at {}",
                self.me.addr
            ));
        }
        let entry = self.members.get(name)?;
        (entry.member.state.is_live() && entry.member.addr != addr).then(|| {
            format!(
                "the name {name} is already used by a live member at {}; \
                 a restarted node must come back on its old address or wait until the old one is declared dead",
                entry.member.addr
            )
        })
    }

    fn reap(&mut self, now: Instant) {
        let reap_after = self.config.reap_after;
        self.members.retain(|_, entry| {
            entry.member.state.is_live() || now.saturating_duration_since(entry.since) < reap_after
        });
    }

    fn handle_join_retry(&mut self, now: Instant) {
        let Some(joining) = self.joining.as_mut() else {
            return;
        };
        if now < joining.next_attempt {
            return;
        }
        joining.attempts += 1;
        let backoff = self.config.join_retry_interval * (1u32 << joining.attempts.min(4)).min(8);
        joining.next_attempt = now + backoff;
        let seeds = joining.seeds.clone();
        let msg = Message::Sync {
            from: self.me.name.clone(),
            join: true,
            members: self.state_snapshot(),
        };
        for seed in seeds {
            self.send_reliable(seed, msg.clone());
        }
    }

    /// Sends our full state to one random dead member: if it is in fact
    /// alive (a healed partition), it learns it was declared dead, refutes,
    /// and its answer brings it back here too.
    fn reconnect(&mut self) {
        if !self.joined || self.leaving.is_some() {
            return;
        }
        let dead: Vec<SocketAddr> = self
            .members
            .values()
            .filter(|e| e.member.state == MemberState::Dead)
            .map(|e| e.member.addr)
            .collect();
        if dead.is_empty() {
            return;
        }
        let to = dead[self.rng.usize(..dead.len())];
        let msg = Message::Sync {
            from: self.me.name.clone(),
            join: false,
            members: self.state_snapshot(),
        };
        self.send_reliable(to, msg);
    }

    fn finish_leave(&mut self) {
        if self.leaving.take().is_some() {
            self.outputs.push_back(Output::LeaveDone);
        }
    }

    // ----- dissemination --------------------------------------------------

    fn live_count(&self) -> usize {
        1 + self.live_others()
    }

    fn live_others(&self) -> usize {
        self.members
            .values()
            .filter(|e| e.member.state.is_live())
            .count()
    }

    fn retransmit_limit(&self) -> u32 {
        let n = self.live_count() as f64;
        self.config.retransmit_mult * ((n + 1.0).log10().ceil() as u32).max(1)
    }

    fn push_pull_interval(&self) -> Duration {
        // memberlist's pushPullScale: double for each doubling above 32 members.
        let n = self.live_count();
        let factor = if n <= 32 {
            1.0
        } else {
            (n as f64 / 32.0).log2().ceil() + 1.0
        };
        self.config.push_pull_interval.mul_f64(factor)
    }

    /// News for one outgoing message, `first` ahead of the queue.
    fn piggyback(&mut self, first: &[Gossip]) -> Vec<Gossip> {
        let mut gossip = first.to_vec();
        let used: usize = gossip
            .iter()
            .map(|g| postcard::experimental::serialized_size(g).unwrap_or(0))
            .sum();
        // Room left in a datagram after the message's own fields.
        let budget = self.config.max_datagram_payload.saturating_sub(used + 96);
        let limit = self.retransmit_limit();
        gossip.extend(self.broadcasts.take(budget, limit));
        gossip
    }

    fn gossip_round(&mut self) {
        if self.broadcasts.is_empty() {
            return;
        }
        for to in self.random_members(self.config.gossip_fanout, &[]) {
            let gossip = self.piggyback(&[]);
            if gossip.is_empty() {
                break;
            }
            self.send(
                to,
                Message::Gossip {
                    from: self.me.name.clone(),
                    gossip,
                },
            );
        }
    }

    fn state_snapshot(&self) -> Vec<Member> {
        self.members().cloned().collect()
    }

    /// Up to `count` distinct live members, chosen at random, not in `except`.
    fn random_members(&mut self, count: usize, except: &[NodeName]) -> Vec<SocketAddr> {
        let mut candidates: Vec<SocketAddr> = self
            .members
            .values()
            .filter(|e| e.member.state == MemberState::Alive && !except.contains(&e.member.name))
            .map(|e| e.member.addr)
            .collect();
        self.rng.shuffle(&mut candidates);
        candidates.truncate(count);
        candidates
    }

    fn send(&mut self, to: SocketAddr, msg: Message) {
        let reliable = msg.encoded_len() > self.config.max_datagram_payload;
        self.outputs.push_back(Output::Send { to, msg, reliable });
    }

    fn send_reliable(&mut self, to: SocketAddr, msg: Message) {
        self.outputs.push_back(Output::Send {
            to,
            msg,
            reliable: true,
        });
    }
}

#[cfg(test)]
mod tests;
