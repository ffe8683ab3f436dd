//! The sans-IO core of cluster-wide user events.
//!
//! ```text
//!  publish(now, topic, payload) ─┐                 ┌─► Output::Send { to, msg }
//!  handle_message(now, from, m) ─┼──► Core ────────┼─► Output::Deliver(UserEvent)
//!  set_members(now, members) ────┤                 └─► Output::Gap { origin, missed }
//!  handle_timeout(now) ──────────┘   poll_timeout() → next anti-entropy round / gap deadline
//! ```
//!
//! Guarantees, for members that stay live:
//! - **at least once**: the origin sends each event to every live member, and
//!   every `anti_entropy_interval` each node sends one random member a digest
//!   of what it has delivered; the member answers with what the digest lacks
//!   from its bounded buffer of recent events, so a member that was
//!   partitioned away catches up on whatever is still buffered;
//! - **per-origin order, no duplicates**: events carry `(origin, boot, seq)`;
//!   each node delivers an origin's events in `seq` order exactly once,
//!   holding early ones until the gap fills; a gap that stays open for
//!   `gap_timeout` (its events fell out of every buffer) is reported as
//!   [`Output::Gap`] and skipped, so delivery never stalls;
//! - **Lamport time**: each event carries the origin's Lamport clock, which
//!   every receiver advances past.
//!
//! A stream this node has never seen is delivered from seq 1; if the first
//! event to arrive is later (a node that joined late), the earlier ones get
//! `first_contact_grace` to arrive (reordering, repairs) and are then
//! reported as a gap: a late joiner is told what it missed instead of
//! replaying unbounded history. `boot` is random per process start, so an
//! origin that restarts and counts from 1 again is a new stream, not a run of
//! duplicates.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clustron_membership::NodeName;
use serde::{Deserialize, Serialize};

/// Tuning of the user-event core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Interval of anti-entropy rounds (one digest to one random member).
    /// Default 1 s: a partitioned member catches up within about a second
    /// of healing, for one small message per node per second.
    pub anti_entropy_interval: Duration,
    /// Recent events kept for repairs, all origins together. Default 4096.
    pub buffer_len: usize,
    /// How long an out-of-order gap may stay open before it is skipped.
    /// Default 5 s: several anti-entropy rounds.
    pub gap_timeout: Duration,
    /// How long the first events of a stream this node has not seen before
    /// wait for earlier ones (reordered on the way) before the missing
    /// start is reported as a gap. Default 1 s.
    pub first_contact_grace: Duration,
    /// Largest payload accepted from the API, in bytes. Default 64 KiB.
    pub max_payload: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            anti_entropy_interval: Duration::from_secs(1),
            buffer_len: 4096,
            gap_timeout: Duration::from_secs(5),
            first_contact_grace: Duration::from_secs(1),
            max_payload: 64 * 1024,
        }
    }
}

/// One user event.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct UserEvent {
    /// The member that published it.
    pub origin: NodeName,
    /// Random per process start of the origin.
    pub boot: u64,
    /// Per-origin sequence number, from 1.
    pub seq: u64,
    /// The origin's Lamport clock when it published.
    pub lamport: u64,
    /// Topic, chosen by the publisher.
    pub topic: String,
    /// Opaque payload.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

/// A stream of one origin's events: (name, boot).
pub type Stream = (NodeName, u64);

/// What event nodes send each other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// New events from their origin, or repairs from a buffer.
    Events(Vec<UserEvent>),
    /// What the sender has delivered per stream; `reply` asks for the
    /// receiver's digest back when the receiver is ahead somewhere.
    Digest {
        /// Highest contiguous seq delivered, per stream.
        heads: Vec<(NodeName, u64, u64)>,
        /// Whether the receiver should answer with its own digest.
        reply: bool,
    },
}

/// Why a publish was refused. The core is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The payload is larger than `max_payload`.
    #[error("payload of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Payload length.
        len: usize,
        /// The configured maximum.
        max: usize,
    },
}

/// What the core asks of its driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send `msg` to `to` (reliably: a stream).
    Send {
        /// Destination.
        to: SocketAddr,
        /// The message.
        msg: Message,
    },
    /// Deliver this event to local subscribers (in per-origin order).
    Deliver(UserEvent),
    /// Events `missed` (inclusive range) of `origin` were lost for good.
    Gap {
        /// The stream.
        origin: NodeName,
        /// Its boot.
        boot: u64,
        /// First and last missed seq.
        missed: (u64, u64),
    },
}

#[derive(Debug, Default)]
struct StreamState {
    /// Highest seq delivered (contiguously).
    delivered: u64,
    /// Early events waiting for the gap before them.
    pending: BTreeMap<u64, UserEvent>,
    /// When the current gap was first seen.
    gap_since: Option<Instant>,
    /// Nothing delivered yet: a gap is only the grace period long.
    fresh: bool,
}

/// The user-event state machine of one node.
#[derive(Debug)]
pub struct Core {
    config: Config,
    rng: fastrand::Rng,
    me: NodeName,
    boot: u64,
    next_seq: u64,
    lamport: u64,
    members: BTreeMap<NodeName, SocketAddr>,
    streams: BTreeMap<Stream, StreamState>,
    buffer: VecDeque<UserEvent>,
    next_round: Instant,
    outputs: VecDeque<Output>,
}

impl Core {
    /// A node named `me`; `seed` feeds its RNG and its boot id.
    pub fn new(config: Config, me: NodeName, seed: u64, now: Instant) -> Self {
        let mut rng = fastrand::Rng::with_seed(seed);
        let boot = rng.u64(..);
        let next_round = now + config.anti_entropy_interval.mul_f64(rng.f64());
        Self {
            config,
            rng,
            me,
            boot,
            next_seq: 0,
            lamport: 0,
            members: BTreeMap::new(),
            streams: BTreeMap::new(),
            buffer: VecDeque::new(),
            next_round,
            outputs: VecDeque::new(),
        }
    }

    /// The live members to send to (ourselves excluded or not: we skip it).
    pub fn set_members(&mut self, members: impl IntoIterator<Item = (NodeName, SocketAddr)>) {
        self.members = members.into_iter().filter(|(n, _)| *n != self.me).collect();
    }

    /// Our Lamport clock.
    pub fn lamport(&self) -> u64 {
        self.lamport
    }

    /// Publishes an event to every live member; it is also delivered here.
    pub fn publish(&mut self, topic: String, payload: Vec<u8>) -> Result<UserEvent, PublishError> {
        if payload.len() > self.config.max_payload {
            return Err(PublishError::TooLarge {
                len: payload.len(),
                max: self.config.max_payload,
            });
        }
        self.next_seq += 1;
        self.lamport += 1;
        let event = UserEvent {
            origin: self.me.clone(),
            boot: self.boot,
            seq: self.next_seq,
            lamport: self.lamport,
            topic,
            payload,
        };
        let stream = self
            .streams
            .entry((self.me.clone(), self.boot))
            .or_default();
        stream.delivered = event.seq;
        self.remember(event.clone());
        self.outputs.push_back(Output::Deliver(event.clone()));
        for to in self.members.values() {
            self.outputs.push_back(Output::Send {
                to: *to,
                msg: Message::Events(vec![event.clone()]),
            });
        }
        Ok(event)
    }

    /// Handles a message from `from`.
    pub fn handle_message(&mut self, now: Instant, from: SocketAddr, msg: Message) {
        match msg {
            Message::Events(events) => {
                for event in events {
                    self.receive(now, event);
                }
            }
            Message::Digest { heads, reply } => self.answer_digest(from, heads, reply),
        }
    }

    /// Runs anti-entropy rounds and gap timeouts that are due.
    pub fn handle_timeout(&mut self, now: Instant) {
        if now >= self.next_round {
            self.next_round = now + self.config.anti_entropy_interval;
            if !self.members.is_empty() {
                let index = self.rng.usize(..self.members.len());
                if let Some(to) = self.members.values().nth(index).copied() {
                    let heads = self.heads();
                    self.outputs.push_back(Output::Send {
                        to,
                        msg: Message::Digest { heads, reply: true },
                    });
                }
            }
        }
        self.skip_stale_gaps(now);
    }

    /// The next output, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When [`Core::handle_timeout`] wants to be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let gaps = self
            .streams
            .values()
            .filter_map(|s| s.gap_since.map(|t| t + self.gap_timeout(s)));
        Some(gaps.fold(self.next_round, Instant::min))
    }

    fn heads(&self) -> Vec<(NodeName, u64, u64)> {
        self.streams
            .iter()
            .map(|((name, boot), s)| (name.clone(), *boot, s.delivered))
            .collect()
    }

    fn remember(&mut self, event: UserEvent) {
        self.buffer.push_back(event);
        while self.buffer.len() > self.config.buffer_len {
            self.buffer.pop_front();
        }
    }

    fn receive(&mut self, now: Instant, event: UserEvent) {
        self.lamport = self.lamport.max(event.lamport) + 1;
        let key = (event.origin.clone(), event.boot);
        let stream = self.streams.entry(key).or_insert_with(|| StreamState {
            fresh: true,
            ..StreamState::default()
        });
        if event.seq <= stream.delivered || stream.pending.contains_key(&event.seq) {
            return; // a duplicate
        }
        stream.pending.insert(event.seq, event);
        let mut ready = Vec::new();
        while let Some(next) = stream.pending.remove(&(stream.delivered + 1)) {
            stream.delivered += 1;
            ready.push(next);
        }
        stream.gap_since = match (stream.pending.is_empty(), stream.gap_since) {
            (true, _) => None,
            (false, Some(since)) => Some(since),
            (false, None) => Some(now),
        };
        if !ready.is_empty() {
            stream.fresh = false;
        }
        for event in ready {
            self.remember(event.clone());
            self.outputs.push_back(Output::Deliver(event));
        }
    }

    fn answer_digest(&mut self, from: SocketAddr, heads: Vec<(NodeName, u64, u64)>, reply: bool) {
        let theirs: BTreeMap<Stream, u64> = heads
            .iter()
            .map(|(name, boot, seq)| ((name.clone(), *boot), *seq))
            .collect();
        // Events they lack: a stream they know, past their head, or a stream
        // they have never seen.
        let missing: Vec<UserEvent> = self
            .buffer
            .iter()
            .filter(|e| {
                theirs
                    .get(&(e.origin.clone(), e.boot))
                    .is_none_or(|head| e.seq > *head)
            })
            .cloned()
            .collect();
        if !missing.is_empty() {
            self.outputs.push_back(Output::Send {
                to: from,
                msg: Message::Events(missing),
            });
        }
        let behind = theirs.iter().any(|(stream, head)| {
            self.streams
                .get(stream)
                .is_none_or(|ours| ours.delivered < *head)
        });
        if reply && behind {
            let heads = self.heads();
            self.outputs.push_back(Output::Send {
                to: from,
                msg: Message::Digest {
                    heads,
                    reply: false,
                },
            });
        }
    }

    fn gap_timeout(&self, stream: &StreamState) -> Duration {
        if stream.fresh {
            self.config.first_contact_grace
        } else {
            self.config.gap_timeout
        }
    }

    /// Skips gaps open longer than their timeout: their events are gone.
    fn skip_stale_gaps(&mut self, now: Instant) {
        let (grace, gap_timeout) = (self.config.first_contact_grace, self.config.gap_timeout);
        let mut ready = Vec::new();
        for ((origin, boot), stream) in &mut self.streams {
            let Some(since) = stream.gap_since else {
                continue;
            };
            let timeout = if stream.fresh { grace } else { gap_timeout };
            if now < since + timeout {
                continue;
            }
            let Some((&first, _)) = stream.pending.iter().next() else {
                stream.gap_since = None;
                continue;
            };
            self.outputs.push_back(Output::Gap {
                origin: origin.clone(),
                boot: *boot,
                missed: (stream.delivered + 1, first - 1),
            });
            stream.delivered = first - 1;
            while let Some(next) = stream.pending.remove(&(stream.delivered + 1)) {
                stream.delivered += 1;
                ready.push(next);
            }
            stream.gap_since = (!stream.pending.is_empty()).then_some(now);
            stream.fresh = false;
        }
        for event in ready {
            self.remember(event.clone());
            self.outputs.push_back(Output::Deliver(event));
        }
    }
}

#[cfg(test)]
mod tests;
