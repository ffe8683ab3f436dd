//! The sans-IO election core: bully candidate choice made safe by majority
//! leases.
//!
//! ```text
//!             handle_message(now, from, Message) ─┐
//!             handle_timeout(now) ────────────────┤
//!   set_view(now, peers) / set_summary(bytes) ────┤
//!   step_down / transfer_to / add_voter / remove_voter
//!   withdraw / rejoin ────────────────────────────┤
//!                                                 ▼
//!                                          ┌──────────────┐
//!                                          │     Core     │── poll_timeout() → next deadline
//!                                          └──────────────┘
//!                                                 │ poll_output(), in order
//!      Output::Persist(Promise) / PersistVoters ◄─┤  (write durably first ...)
//!      Output::Send { to, msg }                 ◄─┤  (... then send)
//!      Output::Elected / SteppedDown            ◄─┤
//!      Output::Leader / LeaderLost / VotersChanged
//! ```
//!
//! Calling protocol: after any input, drain [`Core::poll_output`] until
//! `None`, performing each output *in order* (a `Persist` must be durable
//! before any later `Send` leaves: that is what makes a grant a promise),
//! then sleep until [`Core::poll_timeout`] and call [`Core::handle_timeout`].
//! Time is an argument and the RNG is seeded, so a run replays exactly.
//!
//! The rules (see `DESIGN.md`, "Election"):
//!
//! - **Candidate.** Only the highest-priority live voter in this node's view
//!   campaigns (equal priorities: the smallest name wins), and only when it
//!   knows no leader. Voters whose log is behind ([`Core::set_behind`]) are
//!   passed over while one that is not can be chosen. The view only chooses who asks; authority comes from
//!   grants by a majority of the configured voter set. A leader whose
//!   announcements stopped is skipped in the choice until heard from again,
//!   so failover does not wait for membership to declare it dead; so is,
//!   while no leader is known, a candidate membership suspects (otherwise
//!   one that does not campaign is skipped after two leader timeouts); no
//!   node campaigns before its first view. Views can disagree for a while;
//!   a candidate whose attempt fails while a voter holds an unexpired
//!   promise to another node campaigning at the same time (a split vote)
//!   releases the promises made to it and stands back for a random
//!   back-off, so the split does not last.
//! - **Voter.** A voter grants epoch `e` to at most one candidate: only if
//!   `e` is above every epoch it promised (or equal to its current promise
//!   to the same holder: a renewal), not below the newest epoch it has seen,
//!   and only while it holds no unexpired, unreleased promise to another
//!   holder. The promise lasts `L` on the voter's clock from its answer and
//!   is persisted before the grant is sent.
//! - **Leader.** The lease won by a request sent at `s` lasts until
//!   `s + L·(1 − ρ) − ε` on the leader's clock ([`lease`]), once a majority
//!   granted that same request. The leader renews every `renew_interval`,
//!   announces itself to everyone it knows, and steps down on its own when
//!   the lease end passes without a completed renewal.
//! - **Handover.** A follower that outranks the leader by priority answers
//!   its announcements with a `Claim`. A leader that has received claims
//!   from a live voter of strictly higher priority for `handover_delay`
//!   stops believing it leads, releases its own promise,
//!   then sends `Release` to the voters and the successor; voters drop their
//!   promise to it and the successor campaigns at once. Equal priorities never
//!   move leadership, a node must claim without a break for
//!   `handover_delay`, and nodes that saw a leader hand over to a chosen
//!   successor (`transfer_to`, `step_down`) do not claim leadership from it:
//!   a healthy cluster does not flap.
//! - **Fencing.** Every message carries an epoch; anything older than the
//!   newest epoch this node has seen is refused or ignored.
//! - **Withdrawal.** A node that cannot do its job (its store failed, or it
//!   lost data it had acknowledged) is [`Core::withdraw`]n: it grants
//!   nothing (not even renewals), accepts no voter change, claims and
//!   campaigns for nothing, and a leader hands over first, as
//!   [`Core::step_down`] does. So it never counts towards a majority, while
//!   still following the leader it hears of. Others learn it from
//!   membership ([`Peer::voter`] false, see [`WITHDRAWN_TAG`]) and leave it
//!   out of the candidate choice. [`Core::rejoin`] undoes it. A voter's
//!   promise is persisted before its grant, so withdrawing needs no
//!   storage: it only refuses more.
//! - **Addresses.** A voter's address comes from the membership view when
//!   the view has it (the newest one seen is kept), else from the voter
//!   set; an unknown one ([`Voter::has_addr`] false) gets nothing. Votes
//!   are counted by name, so a majority elects whether or not the absent
//!   voters' addresses were ever known.

pub mod lease;
pub mod message;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clustron_membership::{Member, MemberState, NodeName};

use crate::config::Config;
use crate::error::Error;
use crate::storage::{Persisted, Promise, VoterRecord};
use crate::voters::{Epoch, Voter, VoterSet};
pub use message::Message;

/// The membership tag a withdrawn node sets on itself (its value: why).
/// [`Peer::from`] counts a member with this tag as no voter, so no node
/// waits for it to campaign or hands leadership to it.
pub const WITHDRAWN_TAG: &str = "clustron.election.withdrawn";

/// The membership tag a node sets on itself while its log is behind the
/// leader's ([`Core::set_behind`]). [`Peer::from`] reads it into
/// [`Peer::behind`]: such a node is passed over as candidate while a live
/// voter that is not behind can be chosen.
pub const BEHIND_TAG: &str = "clustron.election.behind";

/// A live member as the election sees it (from the membership view).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its name.
    pub name: NodeName,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Election priority: higher is preferred.
    pub priority: u32,
    /// Whether it may vote and lead as far as the view knows: it has not
    /// withdrawn. Who votes is the decided voter set's business: a member
    /// counts only if it is in it. (Membership's own voter flag comes from
    /// the node's configuration at start and goes stale after a voter
    /// change, so [`Peer::from`] does not use it.)
    pub voter: bool,
    /// Whether its log is far behind the leader's ([`BEHIND_TAG`]): it
    /// still votes, but is chosen as candidate only when every live voter
    /// is.
    pub behind: bool,
    /// Whether membership suspects it (its probes went unanswered). While
    /// no leader is known, a suspect candidate is skipped at once instead
    /// of waited for: a leader cut off or frozen together with the next
    /// candidate must not cost a second wait.
    pub suspect: bool,
}

impl From<&Member> for Peer {
    fn from(member: &Member) -> Self {
        Self {
            name: member.name.clone(),
            addr: member.addr,
            priority: member.priority,
            voter: !member.tags.contains_key(WITHDRAWN_TAG),
            behind: member.tags.contains_key(BEHIND_TAG),
            suspect: member.state == MemberState::Suspect,
        }
    }
}

/// What the core asks of its driver, drained with [`Core::poll_output`].
///
/// Outputs must be performed in the order they come: a `Persist` (or
/// `PersistVoters`) must be durable before any `Send` after it leaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Durably store this promise (fsync) before performing later outputs.
    Persist(Promise),
    /// Durably store this voter record before performing later outputs.
    PersistVoters(VoterRecord),
    /// Send `msg` to `to` (a request/response stream or a datagram: the
    /// protocol tolerates loss, duplication and reordering).
    Send {
        /// Destination.
        to: SocketAddr,
        /// The message.
        msg: Message,
    },
    /// This node won `epoch`: it holds a valid lease now ([`Core::lease`]).
    /// A leader may report it again with a higher epoch when it had to move
    /// to a fresh epoch (a voter had seen a newer one): the fencing token
    /// changed.
    /// `summaries` are the granting majority's summaries (this node's
    /// included if it is a voter), so the layer above can adopt the most
    /// up-to-date state before it serves.
    Elected {
        /// The epoch won.
        epoch: Epoch,
        /// (voter, summary) for each grant of the winning request.
        summaries: Vec<(NodeName, Vec<u8>)>,
    },
    /// This node stopped being the leader of `epoch` (lease ran out,
    /// handover, step-down, or a newer leader appeared).
    SteppedDown {
        /// The epoch given up.
        epoch: Epoch,
    },
    /// The leader this node knows of changed (this node included).
    Leader {
        /// The leader.
        name: NodeName,
        /// Its epoch.
        epoch: Epoch,
    },
    /// This node no longer knows a leader (announcements timed out, the
    /// leader left the view, released, or this node stepped down).
    LeaderLost,
    /// A voter-set change took effect here.
    VotersChanged(VoterSet),
}

/// A view entry.
#[derive(Debug, Clone)]
struct Seen {
    peer: Peer,
}

/// This node's promise as a voter.
#[derive(Debug, Clone)]
struct Held {
    epoch: Epoch,
    holder: NodeName,
    expires: Instant,
    /// The holder gave it up: it no longer blocks others, and is not renewed.
    released: bool,
}

/// One lease request this node sent (campaign or renewal).
#[derive(Debug, Clone)]
struct Request {
    epoch: Epoch,
    sent: Instant,
    grants: BTreeMap<NodeName, Vec<u8>>,
    /// The pending set to finish if this request wins, with the epoch it
    /// was proposed at.
    pending: Option<(VoterSet, Epoch)>,
}

#[derive(Debug, Clone)]
enum Role {
    Follower,
    Candidate {
        epoch: Epoch,
        retry_at: Instant,
        /// A voter promised `epoch` (or more) elsewhere: ask for a new one.
        bump: bool,
        /// A voter holds an unexpired promise to a rival candidate
        /// ([`Core::is_live_rival`]): if this attempt ends without a
        /// majority, make way ([`Core::make_way`]) instead of retrying.
        rival: bool,
    },
    Leader {
        epoch: Epoch,
        lease_end: Instant,
        next_renew: Instant,
        /// The epoch renewals ask for: above `epoch` once a voter said it
        /// has seen a newer one (it would fence us off), so the leader moves
        /// itself to a fresh epoch instead of being ignored.
        asking: Epoch,
    },
}

#[derive(Debug, Clone)]
struct Known {
    name: NodeName,
    epoch: Epoch,
    /// `None` for ourselves.
    deadline: Option<Instant>,
}

/// A voter-set change the leader is driving.
#[derive(Debug, Clone)]
struct Change {
    set: VoterSet,
    accepted: BTreeSet<NodeName>,
}

/// Why a vote was refused.
#[derive(Debug, Clone, Copy)]
struct Refusal {
    retry_after: Option<Duration>,
}

/// The election state machine of one node. See the module docs for the
/// calling protocol and the rules.
#[derive(Debug)]
pub struct Core {
    config: Config,
    rng: fastrand::Rng,
    me: NodeName,
    priority: u32,
    voters: VoterRecord,
    view: BTreeMap<NodeName, Seen>,
    /// No campaign before the first view: a node alone would elect itself
    /// as the candidate.
    has_view: bool,
    /// The newest address seen in a view for each member, kept when it
    /// leaves the view: where to reach voters the voter set has no (or an
    /// old) address for.
    addresses: BTreeMap<NodeName, SocketAddr>,
    /// This node may not vote or lead ([`Core::withdraw`]).
    withdrawn: bool,
    /// This node's log is behind the leader's ([`Core::set_behind`]).
    behind: bool,
    /// Since when this node has known no leader.
    leaderless_since: Option<Instant>,
    /// The newest time the core was given.
    now_hint: Instant,
    /// Behind, and not yet leaderless for the handover delay: this node
    /// passes itself over as candidate.
    defers: bool,
    /// Leaders whose announcements timed out, and candidates that did not
    /// campaign or that membership suspected: not live for the candidate
    /// choice until heard from again, seen re-entering the view, or no
    /// longer suspected, so the next candidate need not wait for membership
    /// to notice a crash.
    silent: BTreeSet<NodeName>,
    summary: Vec<u8>,
    promise: Option<Held>,
    epoch_seen: Epoch,
    /// The newest epoch of a leader this node knows (announced or won).
    /// Announcements are compared with it, not with promised epochs: a
    /// candidate's failed campaign must not make it deaf to a live leader.
    leader_epoch: Epoch,
    /// The newest release heard from each holder: a late announcement of
    /// that leader for that epoch (reordered behind the release) must not
    /// bring it back. Entries below the newest leader's epoch are dropped
    /// (the epoch fences those out anyway), so this stays small.
    released: BTreeMap<NodeName, Epoch>,
    role: Role,
    requests: BTreeMap<u64, Request>,
    next_seq: u64,
    leader: Option<Known>,
    hold_off_until: Option<Instant>,
    /// We handed leadership to this node: we do not claim it back from it.
    deferred_to: Option<NodeName>,
    /// Leader only: higher-priority voters claiming leadership, with the
    /// first and the last claim of the current streak.
    contenders: BTreeMap<NodeName, (Instant, Instant)>,
    successor_until: Option<Instant>,
    change: Option<Change>,
    /// Follower without a leader: the candidate it waits for to campaign,
    /// and since when. One that stays quiet for two leader timeouts is
    /// skipped (a voter that does not know it is one, because it missed the
    /// change that made it one, never campaigns).
    waiting: Option<(NodeName, Instant)>,
    /// When each other voter last asked for our vote, and for which epoch
    /// (see [`Core::is_live_rival`]).
    asked_by: BTreeMap<NodeName, (Instant, Epoch)>,
    outputs: VecDeque<Output>,
}

impl Core {
    /// A node named `me` with election `priority`. `voters` is the initial
    /// configured voter set; `recovered` is what storage kept
    /// ([`crate::Storage::load`], empty for a new node).
    ///
    /// A recovered promise is honoured for a full `L` from `now`: the
    /// monotonic clock restarted with the process, so the time already spent
    /// is unknown, and assuming none was spent can only make the promise
    /// last longer than it did, never shorter (a safe over-approximation).
    pub fn new(
        config: Config,
        me: NodeName,
        priority: u32,
        voters: VoterSet,
        recovered: Persisted,
        seed: u64,
        now: Instant,
    ) -> Self {
        let promise = recovered.promise.map(|p| Held {
            epoch: p.epoch,
            holder: p.holder,
            expires: now + config.lease_duration.max(p.duration),
            released: false,
        });
        let voters = match recovered.voters {
            Some(record) if record.committed.version >= voters.version => record,
            _ => VoterRecord {
                committed: voters,
                pending: None,
                pending_epoch: Epoch::default(),
            },
        };
        Self {
            epoch_seen: promise.as_ref().map(|p| p.epoch).unwrap_or_default(),
            leader_epoch: Epoch::default(),
            released: BTreeMap::new(),
            config,
            rng: fastrand::Rng::with_seed(seed),
            me,
            priority,
            voters,
            view: BTreeMap::new(),
            has_view: false,
            addresses: BTreeMap::new(),
            withdrawn: false,
            behind: false,
            leaderless_since: None,
            now_hint: now,
            defers: false,
            silent: BTreeSet::new(),
            summary: Vec::new(),
            promise,
            role: Role::Follower,
            requests: BTreeMap::new(),
            next_seq: 0,
            leader: None,
            hold_off_until: None,
            deferred_to: None,
            contenders: BTreeMap::new(),
            successor_until: None,
            change: None,
            waiting: None,
            asked_by: BTreeMap::new(),
            outputs: VecDeque::new(),
        }
    }

    // ----- queries -------------------------------------------------------

    /// This node's name.
    pub fn name(&self) -> &NodeName {
        &self.me
    }

    /// The lease this node holds as leader: its epoch and until when it is
    /// valid, by this node's own clock. Check the instant against the clock
    /// before acting on it; the core steps down at that instant on its own.
    pub fn lease(&self) -> Option<(Epoch, Instant)> {
        match &self.role {
            Role::Leader {
                epoch, lease_end, ..
            } => Some((*epoch, *lease_end)),
            _ => None,
        }
    }

    /// Whether this node holds a valid lease at `now`.
    pub fn is_leader(&self, now: Instant) -> bool {
        self.lease().is_some_and(|(_, end)| now < end)
    }

    /// The leader this node knows of (itself included) and its epoch.
    pub fn leader(&self) -> Option<(NodeName, Epoch)> {
        self.leader.as_ref().map(|k| (k.name.clone(), k.epoch))
    }

    /// Where `name` is reached: the newest address a membership view gave
    /// for it, else its address in the voter set; `None` when neither is
    /// known, and for this node itself (the core never needs its own).
    pub fn address_of(&self, name: &NodeName) -> Option<SocketAddr> {
        if *name == self.me {
            return None;
        }
        self.addresses.get(name).copied().or_else(|| {
            self.voters
                .committed
                .voters()
                .iter()
                .find(|v| v.name == *name && v.has_addr())
                .map(|v| v.addr)
        })
    }

    /// The newest epoch this node has seen: the fencing threshold.
    pub fn epoch(&self) -> Epoch {
        self.epoch_seen
    }

    /// The decided voter set this node uses.
    pub fn voters(&self) -> &VoterSet {
        &self.voters.committed
    }

    /// Whether this node is withdrawn ([`Core::withdraw`]).
    pub fn is_withdrawn(&self) -> bool {
        self.withdrawn
    }

    /// Whether this node said its log is behind ([`Core::set_behind`]).
    pub fn is_behind(&self) -> bool {
        self.behind
    }

    /// The layer above says whether this node's log is far behind the
    /// leader's (catching up after a restart or a pause). While it is, the
    /// node claims no leadership by priority and passes itself over as
    /// candidate if a live voter that is not behind can be chosen: elected,
    /// it would first have to catch up before serving. It still votes and
    /// follows, and is chosen when every live voter is behind (so a cluster
    /// whose nodes all restarted still elects), or once it has known no
    /// leader for the handover delay (so views that have not yet seen its
    /// flag never leave every node waiting for another). Others learn it
    /// from membership ([`BEHIND_TAG`]).
    pub fn set_behind(&mut self, behind: bool) {
        self.behind = behind;
        self.defers = behind && self.defers_still();
    }

    /// Whether a node behind still passes itself over: not once it has
    /// known no leader for the handover delay (several membership rounds).
    /// Others see its flag through membership, which may lag; were they
    /// waiting for it meanwhile, it would never campaign (every node waiting
    /// for another), so after that long it stands like any other. (After
    /// two leader timeouts instead, behind nodes stood in the ordinary
    /// elections of slow partitions and lost rounds giving the lead up.)
    fn defers_still(&self) -> bool {
        self.leaderless_since
            .is_none_or(|t| self.now_hint.saturating_duration_since(t) < self.config.handover_delay)
    }

    /// Whether this node campaigns right now.
    pub fn is_campaigning(&self) -> bool {
        matches!(self.role, Role::Candidate { .. })
    }

    /// The live voter this node considers the candidate: the highest
    /// priority, ties broken by the smallest name.
    pub fn candidate(&self) -> Option<NodeName> {
        let me = (self.may_lead(&self.me) && !self.withdrawn).then_some((
            self.priority,
            &self.me,
            self.defers,
        ));
        self.choose(me)
    }

    /// The best of the live voters in the view (and `me`, if given, with
    /// its priority and whether it is behind): those not behind if there
    /// are any, then the highest priority, then the smallest name. A leader
    /// whose announcements stopped (frozen, cut off) may still be in the
    /// view and is skipped: waiting for its campaign would wait forever.
    fn choose(&self, me: Option<(u32, &NodeName, bool)>) -> Option<NodeName> {
        let eligible: Vec<(u32, &NodeName, bool)> = self
            .view
            .values()
            .filter(|s| {
                s.peer.voter && self.may_lead(&s.peer.name) && !self.silent.contains(&s.peer.name)
            })
            .map(|s| (s.peer.priority, &s.peer.name, s.peer.behind))
            .chain(me)
            .collect();
        let any_current = eligible.iter().any(|&(_, _, behind)| !behind);
        eligible
            .into_iter()
            .filter(|&(_, _, behind)| !(any_current && behind))
            .map(|(priority, name, _)| (priority, name))
            .fold(None, |best: Option<(u32, &NodeName)>, c| match best {
                Some(b) if !outranks(c, b) => Some(b),
                _ => Some(c),
            })
            .map(|(_, name)| name.clone())
    }

    /// Whether `name` may be the candidate: a voter of the decided set. A
    /// change only accepted (pending) does not count: some voters know it
    /// and others do not until a leader finishes it, and a choice that
    /// depended on it split them (a pending removal of the highest-priority
    /// voter made two nodes each the candidate for half the voters, and each
    /// kept its half by renewing their promises: no leader, issue 9's deep
    /// simulation sweep). A voter being removed that already knows the
    /// change decided never campaigns again; the others skip it after two
    /// leader timeouts, as any candidate that does not campaign.
    fn may_lead(&self, name: &NodeName) -> bool {
        self.voters.committed.contains(name)
    }

    // ----- commands --------------------------------------------------------

    /// Replaces the membership view: the live members (this node may be
    /// left out). A leader that leaves the view is forgotten (its lease is
    /// still enforced by the voters); one followed on its announcements
    /// while not in the view is kept until they stop.
    pub fn set_view(&mut self, now: Instant, live: Vec<Peer>) {
        let mut view = BTreeMap::new();
        for peer in live {
            if peer.name == self.me {
                continue;
            }
            self.addresses.insert(peer.name.clone(), peer.addr);
            view.insert(peer.name.clone(), Seen { peer });
        }
        let old_view = std::mem::replace(&mut self.view, view);
        if !self.has_view {
            // Listen for one renewal interval before campaigning, so a node
            // that (re)starts next to a leader hears it first.
            self.has_view = true;
            self.hold_off_until = Some(now + self.config.renew_interval);
        }
        // A silent one membership no longer suspects (it suspected it while
        // this node was cut off, say) is alive: it counts again. Kept
        // silent, this node would pass it over at the next leader's death
        // and campaign alongside it, splitting the vote for a lease.
        let view = &self.view;
        self.silent.retain(|name| {
            view.get(name).is_some_and(|s| {
                s.peer.suspect || old_view.get(name).is_some_and(|o| !o.peer.suspect)
            })
        });
        // Forgotten when it leaves the view; one followed while not (yet)
        // in it lasts until its announcements stop.
        let gone = self.leader.as_ref().is_some_and(|k| {
            k.name != self.me && old_view.contains_key(&k.name) && !self.view.contains_key(&k.name)
        });
        if gone {
            self.forget_leader();
        }
        self.tick(now);
    }

    /// Sets the summary (opaque bytes from the layer above, e.g. the last
    /// log position) that this node's grants carry from now on.
    pub fn set_summary(&mut self, summary: Vec<u8>) {
        let mut summary = summary;
        summary.truncate(self.config.max_summary_len);
        self.summary = summary;
    }

    /// Gives up leadership: hands over to the best other live voter in the
    /// view (if any) and stays out of the race for `handover_delay`.
    ///
    /// Fails with [`Error::NotLeader`], changing nothing, unless leader.
    pub fn step_down(&mut self, now: Instant) -> Result<(), Error> {
        self.expire(now);
        if !matches!(self.role, Role::Leader { .. }) {
            return Err(self.not_leader());
        }
        let successor = self.best_live_voter();
        self.hand_over(now, successor, true);
        self.tick(now);
        Ok(())
    }

    /// Withdraws this node from the election: from now on it grants no
    /// vote (renewals included), accepts no voter change, never claims or
    /// campaigns; a leader hands over to the best other live voter first,
    /// as [`Core::step_down`] does, so another node takes over within about
    /// one lease (at once if the successor hears the release). It keeps
    /// following the leader it hears of. Idempotent.
    ///
    /// For a node that cannot do its job: its store failed, or it holds
    /// less than it once acknowledged. The layer above should also tell the
    /// others (the node binary sets [`WITHDRAWN_TAG`] in membership), or
    /// they may wait for it to campaign if it has the highest priority.
    pub fn withdraw(&mut self, now: Instant) {
        if self.withdrawn {
            return;
        }
        tracing::debug!(me = %self.me, "withdrawn from the election");
        self.withdrawn = true;
        self.expire(now);
        if matches!(self.role, Role::Leader { .. }) {
            let successor = self.best_live_voter();
            self.hand_over(now, successor, true);
        }
        if matches!(self.role, Role::Candidate { .. }) {
            self.role = Role::Follower;
            self.requests.clear();
        }
        self.successor_until = None;
        self.tick(now);
    }

    /// Undoes [`Core::withdraw`]: votes and campaigns again by the usual
    /// rules. Idempotent.
    pub fn rejoin(&mut self, now: Instant) {
        if !self.withdrawn {
            return;
        }
        tracing::debug!(me = %self.me, "rejoined the election");
        self.withdrawn = false;
        // A handover made while withdrawing was not a choice to defer: a
        // rejoined node of higher priority takes over as any returning one.
        self.deferred_to = None;
        self.tick(now);
    }

    /// Hands leadership to `name`, a live voter, through the same path as a
    /// priority handover.
    ///
    /// Fails, changing nothing, with [`Error::NotLeader`] unless leader, or
    /// [`Error::NotALiveVoter`] if `name` is not a voter in the view.
    pub fn transfer_to(&mut self, now: Instant, name: &NodeName) -> Result<(), Error> {
        self.expire(now);
        if !matches!(self.role, Role::Leader { .. }) {
            return Err(self.not_leader());
        }
        let live_voter = self.voters.committed.contains(name)
            && self.view.get(name).is_some_and(|s| s.peer.voter);
        if !live_voter {
            return Err(Error::NotALiveVoter(name.clone()));
        }
        self.hand_over(now, Some(name.clone()), true);
        self.tick(now);
        Ok(())
    }

    /// Adds one voter. Takes effect once a majority of the current set has
    /// durably accepted it ([`Output::VotersChanged`]).
    ///
    /// Fails, changing nothing, with [`Error::NotLeader`],
    /// [`Error::ChangeInProgress`] or [`Error::AlreadyVoter`].
    pub fn add_voter(&mut self, now: Instant, voter: Voter) -> Result<(), Error> {
        self.check_change(now)?;
        if self.voters.committed.contains(&voter.name) {
            return Err(Error::AlreadyVoter(voter.name));
        }
        let set = self.voters.committed.with(voter);
        self.start_change(now, set);
        self.tick(now);
        Ok(())
    }

    /// Removes one voter (not the leader itself: transfer first). Takes
    /// effect once a majority of the current set has durably accepted it.
    ///
    /// Fails, changing nothing, with [`Error::NotLeader`],
    /// [`Error::ChangeInProgress`], [`Error::NotAVoter`] or
    /// [`Error::RemovingLeader`].
    pub fn remove_voter(&mut self, now: Instant, name: &NodeName) -> Result<(), Error> {
        self.check_change(now)?;
        if !self.voters.committed.contains(name) {
            return Err(Error::NotAVoter(name.clone()));
        }
        if *name == self.me {
            return Err(Error::RemovingLeader);
        }
        let set = self.voters.committed.without(name);
        self.start_change(now, set);
        self.tick(now);
        Ok(())
    }

    // ----- sans-IO plumbing ------------------------------------------------

    /// The next output, if any. Drain after every input and perform in order.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When [`Core::handle_timeout`] wants to be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut at = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        match &self.role {
            Role::Follower => {}
            Role::Candidate { retry_at, .. } => at(*retry_at),
            Role::Leader {
                lease_end,
                next_renew,
                ..
            } => {
                at(*lease_end);
                at(*next_renew);
            }
        }
        if let Some(deadline) = self.leader.as_ref().and_then(|k| k.deadline) {
            at(deadline);
        }
        if let Some(t) = self.hold_off_until {
            at(t);
        }
        if let Some(t) = self.successor_until {
            at(t);
        }
        if let Some((_, since)) = &self.waiting {
            at(*since + self.config.leader_timeout * 2);
        }
        if let Some(since) = self.leaderless_since.filter(|_| self.defers) {
            at(since + self.config.handover_delay);
        }
        next
    }

    /// Handles every deadline that has passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.tick(now);
    }

    /// Handles one message from `from`, whose claimed sender name the driver
    /// has checked against its certificate.
    pub fn handle_message(&mut self, now: Instant, from: SocketAddr, msg: Message) {
        self.expire(now);
        match msg {
            Message::Request {
                epoch,
                from: candidate,
                seq,
            } => match self
                .campaign_heard(&candidate)
                .asked_by(now, &candidate, epoch)
                .vote(now, epoch, &candidate)
            {
                Ok(()) => {
                    let msg = Message::Grant {
                        epoch,
                        from: self.me.clone(),
                        seq,
                        summary: self.summary.clone(),
                        pending: self.voters.pending.clone(),
                        voters: self.voters.committed.clone(),
                        pending_epoch: self.voters.pending_epoch,
                    };
                    self.send(from, msg);
                }
                Err(refusal) => {
                    let msg = Message::Reject {
                        epoch,
                        from: self.me.clone(),
                        seq,
                        promised: self.epoch_seen,
                        holder: self.promise.as_ref().map(|p| p.holder.clone()),
                        retry_after: refusal.retry_after,
                    };
                    self.send(from, msg);
                }
            },
            Message::Grant {
                epoch,
                from: voter,
                seq,
                summary,
                pending,
                voters,
                pending_epoch,
            } => {
                let pending = pending.map(|p| (p, pending_epoch));
                self.handle_grant(now, epoch, voter, seq, summary, pending, voters)
            }
            Message::Reject {
                epoch,
                seq,
                promised,
                holder,
                retry_after,
                ..
            } => self.handle_reject(now, epoch, seq, promised, holder, retry_after),
            Message::Announce {
                epoch,
                leader,
                voters,
            } => self.handle_announce(now, from, epoch, leader, voters),
            Message::Claim {
                epoch,
                from: claimant,
            } => self.handle_claim(now, epoch, claimant),
            Message::Release {
                epoch,
                from: holder,
                to,
                chosen,
            } => self.handle_release(now, epoch, holder, to, chosen),
            Message::ProposeVoters {
                epoch,
                from: leader,
                voters,
            } => self.handle_propose(from, epoch, leader, voters),
            Message::VotersAccepted {
                epoch,
                from: voter,
                version,
            } => self.handle_accepted(now, epoch, voter, version),
        }
        self.tick(now);
    }

    // ----- voter side --------------------------------------------------------

    /// The voter rules (module docs). On a grant, the promise is recorded and
    /// `Output::Persist` queued before the caller queues the grant.
    fn vote(&mut self, now: Instant, epoch: Epoch, candidate: &NodeName) -> Result<(), Refusal> {
        let refuse = Refusal { retry_after: None };
        let voter = self.voters.committed.contains(&self.me)
            || self
                .voters
                .pending
                .as_ref()
                .is_some_and(|p| p.contains(&self.me));
        // Liveness, not safety: a candidate that membership cannot reach
        // both ways would only collect promises it never hears back.
        let reachable = *candidate == self.me || self.view.contains_key(candidate);
        if self.withdrawn || !voter || !reachable || epoch < self.epoch_seen {
            return Err(refuse);
        }
        if let Some(p) = &self.promise {
            if p.holder != *candidate {
                if epoch <= p.epoch {
                    return Err(refuse);
                }
                if !p.released && now < p.expires {
                    return Err(Refusal {
                        retry_after: Some(p.expires - now),
                    });
                }
            } else if epoch < p.epoch || (epoch == p.epoch && p.released) {
                return Err(refuse);
            }
        }
        self.promise = Some(Held {
            epoch,
            holder: candidate.clone(),
            expires: now + self.config.lease_duration,
            released: false,
        });
        self.epoch_seen = self.epoch_seen.max(epoch);
        self.outputs.push_back(Output::Persist(Promise {
            epoch,
            holder: candidate.clone(),
            duration: self.config.lease_duration,
        }));
        Ok(())
    }

    fn handle_release(
        &mut self,
        now: Instant,
        epoch: Epoch,
        holder: NodeName,
        to: Option<NodeName>,
        chosen: bool,
    ) {
        let leader_epoch = self.leader_epoch;
        self.released.retain(|_, e| *e >= leader_epoch);
        let newest = self.released.entry(holder.clone()).or_insert(epoch);
        *newest = (*newest).max(epoch);
        // A holder that gives up `epoch` gives up the ones before it too: a
        // candidate making way may not know which of its requests this
        // voter answered last.
        if let Some(p) = self.promise.as_mut() {
            if p.epoch <= epoch && p.holder == holder {
                p.released = true;
            }
        }
        if self
            .leader
            .as_ref()
            .is_some_and(|k| k.name == holder && k.epoch == epoch)
        {
            self.forget_leader();
        }
        self.epoch_seen = self.epoch_seen.max(epoch);
        // The old leader chose its successor: respect the choice, do not
        // claim leadership from it (a node that restarts later will).
        if chosen && to.as_ref().is_some_and(|t| *t != self.me) {
            self.deferred_to = to.clone();
        }
        if to.as_ref() == Some(&self.me)
            && self.voters.committed.contains(&self.me)
            && !self.withdrawn
        {
            self.successor_until = Some(now + self.config.lease_duration);
            if let Role::Candidate { retry_at, .. } = &mut self.role {
                *retry_at = now;
            }
        }
    }

    fn handle_announce(
        &mut self,
        now: Instant,
        from: SocketAddr,
        epoch: Epoch,
        leader: NodeName,
        voters: VoterSet,
    ) {
        if epoch < self.leader_epoch || leader == self.me {
            return; // fenced: older than the newest leader we know
        }
        if self.released.get(&leader).is_some_and(|e| epoch <= *e) {
            return; // it released this epoch already
        }
        // A leader that membership still counts dead (this node was cut off
        // and its view has not healed yet) is followed all the same: its
        // announcement proves it alive now, the epoch fences old ones out,
        // and the leader is forgotten again if its announcements stop.
        self.silent.remove(&leader);
        self.leader_epoch = epoch;
        self.epoch_seen = self.epoch_seen.max(epoch);
        if voters.version > self.voters.committed.version {
            self.adopt_voters(now, voters);
        }
        match &self.role {
            Role::Leader { .. } => self.lapse(),
            // A live leader: stop campaigning (it hands over if we outrank it).
            Role::Candidate { .. } => self.role = Role::Follower,
            _ => {}
        }
        self.successor_until = None;
        // A leader serves: the hold-off after our own handover (or before
        // our first campaign) has done its job. Kept, it would stop us from
        // campaigning should this leader die within the handover delay,
        // while the others wait for us as the candidate (issue 9: a
        // successor killed 0.4 s after taking over left the cluster
        // leaderless for 1.5 s).
        self.hold_off_until = None;
        let changed = self
            .leader
            .as_ref()
            .is_none_or(|k| k.name != leader || k.epoch != epoch);
        self.leader = Some(Known {
            name: leader.clone(),
            epoch,
            deadline: Some(now + self.config.leader_timeout),
        });
        if self.deferred_to.as_ref().is_some_and(|d| *d != leader) {
            self.deferred_to = None;
        }
        let leader_priority = self.view.get(&leader).map(|s| s.peer.priority);
        let claim = self.voters.committed.contains(&self.me)
            && !self.withdrawn
            && !self.behind
            && leader_priority.is_some_and(|p| self.priority > p)
            && self.deferred_to.is_none()
            && self.hold_off_until.is_none();
        if claim {
            let msg = Message::Claim {
                epoch,
                from: self.me.clone(),
            };
            self.send(from, msg);
        }
        if changed {
            self.outputs.push_back(Output::Leader {
                name: leader,
                epoch,
            });
        }
    }

    fn handle_propose(&mut self, from: SocketAddr, epoch: Epoch, leader: NodeName, set: VoterSet) {
        // A withdrawn voter counts towards no majority, this one included.
        if epoch < self.epoch_seen || self.withdrawn {
            return;
        }
        // Only the leader we promised this epoch to may change the set; a
        // node being added holds no promise yet and accepts any leader.
        let from_our_leader = self
            .promise
            .as_ref()
            .is_some_and(|p| p.epoch == epoch && p.holder == leader);
        let joining = !self.voters.committed.contains(&self.me) && set.contains(&self.me);
        if !from_our_leader && !joining {
            return;
        }
        let version = set.version;
        if version == self.voters.committed.version + 1 {
            if self.voters.pending.as_ref() != Some(&set) || self.voters.pending_epoch < epoch {
                self.voters.pending = Some(set);
                self.voters.pending_epoch = epoch;
                self.outputs
                    .push_back(Output::PersistVoters(self.voters.clone()));
            }
        } else if version > self.voters.committed.version {
            return; // we missed a change; the leader's announcements bring it
        } else if version < self.voters.committed.version || set != self.voters.committed {
            // Decided already, and not as this: acknowledging it would
            // count us towards a second decision at that version.
            return;
        }
        let msg = Message::VotersAccepted {
            epoch,
            from: self.me.clone(),
            version,
        };
        self.send(from, msg);
    }

    /// Takes `set` (decided) as the voter set. A leader that is no longer
    /// a voter in it hands over: it may not count its own grant any more.
    fn adopt_voters(&mut self, now: Instant, set: VoterSet) {
        if self
            .voters
            .pending
            .as_ref()
            .is_some_and(|p| p.version <= set.version)
        {
            self.voters.pending = None;
        }
        self.voters.committed = set.clone();
        self.outputs
            .push_back(Output::PersistVoters(self.voters.clone()));
        self.outputs.push_back(Output::VotersChanged(set));
        if matches!(self.role, Role::Leader { .. }) && !self.voters.committed.contains(&self.me) {
            tracing::debug!(me = %self.me, "removed from the voters; stepping down");
            let successor = self.best_live_voter();
            self.hand_over(now, successor, true);
        }
        if matches!(self.role, Role::Candidate { .. }) && !self.voters.committed.contains(&self.me)
        {
            self.role = Role::Follower;
            self.requests.clear();
        }
    }

    // ----- candidate and leader side -------------------------------------------

    /// Everything time-driven, in dependency order. Runs after every input.
    fn tick(&mut self, now: Instant) {
        self.expire(now);
        if self
            .leader
            .as_ref()
            .and_then(|k| k.deadline)
            .is_some_and(|d| now >= d)
        {
            if let Some(known) = &self.leader {
                self.silent.insert(known.name.clone());
            }
            self.forget_leader();
        }
        if self.hold_off_until.is_some_and(|t| now >= t) {
            self.hold_off_until = None;
        }
        if self.successor_until.is_some_and(|t| now >= t) {
            self.successor_until = None;
        }
        let lease_duration = self.config.lease_duration;
        self.requests
            .retain(|_, r| now.saturating_duration_since(r.sent) < lease_duration);
        self.watch_candidate(now);
        match self.role.clone() {
            Role::Leader {
                next_renew, asking, ..
            } => {
                if now >= next_renew {
                    if let Role::Leader { next_renew, .. } = &mut self.role {
                        *next_renew = now + self.config.renew_interval;
                    }
                    self.send_request(now, asking);
                    self.announce();
                    self.send_proposal();
                    if let Some(successor) = self.priority_successor(now) {
                        tracing::debug!(me = %self.me, %successor, "handing over to a higher-priority voter");
                        self.hand_over(now, Some(successor), false);
                    }
                }
            }
            Role::Candidate {
                epoch,
                retry_at,
                bump,
                rival,
            } => {
                if !self.may_campaign() {
                    self.role = Role::Follower;
                } else if now >= retry_at && rival {
                    self.make_way(now);
                } else if now >= retry_at {
                    let epoch = if bump || self.epoch_seen > epoch {
                        self.epoch_seen.max(epoch).next()
                    } else {
                        epoch
                    };
                    self.campaign(now, epoch);
                }
            }
            Role::Follower => {
                if self.may_campaign() {
                    let epoch = self.epoch_seen.next();
                    tracing::debug!(me = %self.me, %epoch, "campaigning");
                    self.campaign(now, epoch);
                }
            }
        }
    }

    /// Steps down if the lease end has passed.
    fn expire(&mut self, now: Instant) {
        if let Role::Leader { lease_end, .. } = self.role {
            if now >= lease_end {
                tracing::debug!(me = %self.me, "lease ran out; stepping down");
                self.lapse();
            }
        }
    }

    /// Stops leading (no release: the lease simply is no longer believed).
    fn lapse(&mut self) {
        if let Role::Leader { epoch, .. } = self.role {
            self.role = Role::Follower;
            self.requests.clear();
            // A change proposed in this leadership dies with it: kept, it
            // was proposed again (and decided) under a later leadership of
            // this node without the choice a new leader makes among the
            // pending sets, over a set another leader had decided
            // meanwhile (replication_sim seed 10514861941859962080).
            self.change = None;
            self.outputs.push_back(Output::SteppedDown { epoch });
            self.forget_leader();
        }
    }

    fn forget_leader(&mut self) {
        if self.leader.take().is_some() {
            self.outputs.push_back(Output::LeaderLost);
        }
    }

    fn may_campaign(&self) -> bool {
        if !self.has_view
            || self.withdrawn
            || !self.voters.committed.contains(&self.me)
            || self.hold_off_until.is_some()
        {
            return false;
        }
        if self.successor_until.is_some() {
            return true;
        }
        self.leader.is_none() && self.candidate().as_ref() == Some(&self.me)
    }

    /// Asks every voter for `epoch`; schedules the next attempt.
    fn campaign(&mut self, now: Instant, epoch: Epoch) {
        let jitter = 0.75 + 0.5 * self.rng.f64();
        let mut retry_at = now + self.config.campaign_retry.mul_f64(jitter);
        self.role = Role::Candidate {
            epoch,
            retry_at,
            bump: false,
            rival: false,
        };
        if let Some(wait) = self.send_request(now, epoch) {
            retry_at = retry_at.min(now + wait + Duration::from_millis(1));
            if let Role::Candidate { retry_at: r, .. } = &mut self.role {
                *r = retry_at;
            }
        }
    }

    /// Sends one lease request for `epoch` to every voter, voting for
    /// ourselves first (its `Persist` precedes the requests). Returns when
    /// our own blocking promise runs out, if our own vote was refused.
    fn send_request(&mut self, now: Instant, epoch: Epoch) -> Option<Duration> {
        let seq = self.next_seq;
        self.next_seq += 1;
        let mut request = Request {
            epoch,
            sent: now,
            grants: BTreeMap::new(),
            pending: self
                .voters
                .pending
                .clone()
                .map(|p| (p, self.voters.pending_epoch)),
        };
        let me = self.me.clone();
        let mut wait = None;
        if self.voters.committed.contains(&me) {
            match self.vote(now, epoch, &me) {
                Ok(()) => {
                    request.grants.insert(me.clone(), self.summary.clone());
                }
                Err(refusal) => wait = refusal.retry_after,
            }
        }
        self.requests.insert(seq, request);
        let mut targets = self.voter_addrs(self.voters.committed.voters());
        if matches!(self.role, Role::Leader { .. }) {
            // Renewals also go to the non-voters in the view: they grant
            // nothing, but their refusal says if they saw a newer epoch (a
            // voter since removed promised one). Their log ignores this
            // leader's older epoch, so the leader moves to a fresh one.
            targets.extend(self.view.values().map(|s| s.peer.addr));
        }
        for to in targets {
            self.send(
                to,
                Message::Request {
                    epoch,
                    from: me.clone(),
                    seq,
                },
            );
        }
        self.check_majority(now, seq);
        wait
    }

    #[allow(clippy::too_many_arguments)]
    fn handle_grant(
        &mut self,
        now: Instant,
        epoch: Epoch,
        voter: NodeName,
        seq: u64,
        summary: Vec<u8>,
        pending: Option<(VoterSet, Epoch)>,
        voters: VoterSet,
    ) {
        // A decided set newer than ours: adopt it before counting, so this
        // request wins only by a majority of the set in force (or of the one
        // before it, which intersects it).
        if voters.version > self.voters.committed.version {
            self.adopt_voters(now, voters);
        }
        if !self.voters.committed.contains(&voter) {
            return;
        }
        let Some(request) = self.requests.get_mut(&seq) else {
            return;
        };
        if request.epoch != epoch {
            return;
        }
        request.grants.insert(voter, summary);
        // Of the pending sets the grants report, the newest version, and
        // of one version the set proposed at the highest epoch (Paxos): a
        // decided proposal was accepted by a majority, which this one
        // intersects, and any later proposal for its version repeated it.
        if let Some((p, proposed)) = pending {
            if request
                .pending
                .as_ref()
                .is_none_or(|(r, at)| (r.version, *at) < (p.version, proposed))
            {
                request.pending = Some((p, proposed));
            }
        }
        self.check_majority(now, seq);
    }

    fn handle_reject(
        &mut self,
        now: Instant,
        epoch: Epoch,
        seq: u64,
        promised: Epoch,
        holder: Option<NodeName>,
        retry_after: Option<Duration>,
    ) {
        self.epoch_seen = self.epoch_seen.max(promised);
        let ours = self.requests.get(&seq).is_some_and(|r| r.epoch == epoch);
        let me = self.me.clone();
        let epoch_seen = self.epoch_seen;
        if let Role::Leader { asking, .. } = &mut self.role {
            if ours && *asking == epoch && promised > *asking {
                *asking = epoch_seen.next();
            }
        }
        // A wait means an unexpired, unreleased promise to another holder.
        let for_rival =
            retry_after.is_some() && holder.as_ref().is_some_and(|h| self.is_live_rival(now, h));
        let Role::Candidate {
            epoch: mine,
            retry_at,
            bump,
            rival,
        } = &mut self.role
        else {
            return;
        };
        if !ours || *mine != epoch {
            return;
        }
        if promised > *mine || (promised == *mine && holder.as_ref() != Some(&me)) {
            *bump = true;
        }
        let Some(wait) = retry_after else {
            return;
        };
        *retry_at = (*retry_at).min(now + wait + Duration::from_millis(1));
        if for_rival && !*rival {
            tracing::debug!(me = %self.me, %epoch, holder = ?holder, "a voter holds a promise to a rival candidate");
        }
        *rival |= for_rival;
    }

    /// Whether `name`, holding a promise our campaign needs, is a rival
    /// candidate: another live node (in the view, not silent) campaigning
    /// right now, that is, it asked for our vote within the last three
    /// campaign retries (a candidate asks every retry, at most 1.25 of
    /// one apart), for an epoch above every leader's we know and above any
    /// it released. A leader renewing asks for its own epoch; a node that
    /// stopped campaigning, died, froze or handed over asks nothing more:
    /// its promises run out or are released, and the campaign retries the
    /// moment they do, without a back-off.
    fn is_live_rival(&self, now: Instant, name: &NodeName) -> bool {
        let recent = self.config.campaign_retry * 3;
        let Some(&(when, epoch)) = self.asked_by.get(name) else {
            return false;
        };
        *name != self.me
            && self.view.contains_key(name)
            && !self.silent.contains(name)
            && now.saturating_duration_since(when) < recent
            && epoch > self.leader_epoch
            && self.released.get(name).is_none_or(|r| epoch > *r)
    }

    /// `name` asked for our vote for `epoch`: remembered for
    /// [`Core::is_live_rival`]. Only voters are kept, so this stays as
    /// small as the voter set.
    fn asked_by(&mut self, now: Instant, name: &NodeName, epoch: Epoch) -> &mut Self {
        if *name != self.me && self.voters.committed.contains(name) {
            self.asked_by.insert(name.clone(), (now, epoch));
        }
        let voters = &self.voters.committed;
        self.asked_by.retain(|n, _| voters.contains(n));
        self
    }

    /// A split vote: this attempt ended without a majority while a voter
    /// held a promise to a rival candidate, because views disagreed on the
    /// candidate (a flag seen by some and not others, a different silent
    /// set). Each candidate renewing its own voters' promises at every
    /// retry would keep them split for good (a simulated seed: five voters
    /// split between two candidates, no leader for the rest of the run).
    /// So this candidate releases every promise made to it up to this
    /// epoch, its own included, and stands back for a random back-off (half
    /// to twice `campaign_retry`): whichever candidate asks first afterwards
    /// finds the voters free. Lost releases only cost time: a promise not
    /// renewed runs out after `L`. An attempt that reaches a majority wins
    /// before its retry time and never makes way.
    fn make_way(&mut self, now: Instant) {
        let Role::Candidate { epoch, .. } = self.role else {
            return;
        };
        tracing::debug!(me = %self.me, %epoch, "split vote: releasing promises and backing off");
        self.role = Role::Follower;
        self.requests.clear();
        if let Some(p) = self.promise.as_mut() {
            if p.holder == self.me && p.epoch <= epoch {
                p.released = true;
            }
        }
        let msg = Message::Release {
            epoch,
            from: self.me.clone(),
            to: None,
            chosen: false,
        };
        for to in self.voter_addrs(self.voters.committed.voters()) {
            self.send(to, msg.clone());
        }
        let backoff = self
            .config
            .campaign_retry
            .mul_f64(0.5 + 1.5 * self.rng.f64());
        self.hold_off_until = Some(now + backoff);
    }

    /// Acts on a request that may have reached a majority: wins the
    /// election, or extends the lease.
    fn check_majority(&mut self, now: Instant, seq: u64) {
        let Some(request) = self.requests.get(&seq) else {
            return;
        };
        // Counted against the set in force now: grants from voters a newer
        // set (adopted since they came) left out do not count.
        let granted = request
            .grants
            .keys()
            .filter(|name| self.voters.committed.contains(name))
            .count();
        if granted < self.voters.committed.majority() {
            return;
        }
        // Counted from the *send* of this request: see `lease`.
        let end = lease::leader_lease_end(
            request.sent,
            self.config.lease_duration,
            self.config.max_drift,
            self.config.lease_margin,
        );
        let request = request.clone();
        self.requests.retain(|s, _| *s > seq);
        match &mut self.role {
            Role::Leader {
                epoch, lease_end, ..
            } if *epoch == request.epoch => {
                *lease_end = (*lease_end).max(end);
            }
            Role::Leader {
                epoch,
                lease_end,
                asking,
                ..
            } if *asking == request.epoch && request.epoch > *epoch => {
                // Re-elected at a fresh epoch: the fencing token moves.
                *epoch = request.epoch;
                *lease_end = (*lease_end).max(end);
                let epoch = request.epoch;
                self.epoch_seen = self.epoch_seen.max(epoch);
                self.leader_epoch = self.leader_epoch.max(epoch);
                self.leader = Some(Known {
                    name: self.me.clone(),
                    epoch,
                    deadline: None,
                });
                self.outputs.push_back(Output::Leader {
                    name: self.me.clone(),
                    epoch,
                });
                self.outputs.push_back(Output::Elected {
                    epoch,
                    summaries: request.grants.into_iter().collect(),
                });
                self.announce();
            }
            Role::Candidate { epoch, .. } if *epoch == request.epoch && end > now => {
                let epoch = *epoch;
                self.become_leader(now, epoch, end, request);
            }
            _ => {}
        }
    }

    fn become_leader(&mut self, now: Instant, epoch: Epoch, lease_end: Instant, request: Request) {
        tracing::debug!(me = %self.me, %epoch, "elected");
        self.role = Role::Leader {
            epoch,
            lease_end,
            next_renew: request.sent + self.config.renew_interval,
            asking: epoch,
        };
        self.contenders.clear();
        self.successor_until = None;
        self.epoch_seen = self.epoch_seen.max(epoch);
        self.leader_epoch = self.leader_epoch.max(epoch);
        self.leader = Some(Known {
            name: self.me.clone(),
            epoch,
            deadline: None,
        });
        self.outputs.push_back(Output::Leader {
            name: self.me.clone(),
            epoch,
        });
        self.outputs.push_back(Output::Elected {
            epoch,
            summaries: request.grants.into_iter().collect(),
        });
        self.announce();
        // A change some voter accepted may have been decided by the last
        // leader: finish it before anything else.
        let pending = request
            .pending
            .map(|(p, _)| p)
            .filter(|p| p.version == self.voters.committed.version + 1);
        if let Some(set) = pending {
            self.start_change(now, set);
        }
    }

    fn announce(&mut self) {
        let Role::Leader { epoch, .. } = self.role else {
            return;
        };
        let mut targets: BTreeSet<SocketAddr> = self.view.values().map(|s| s.peer.addr).collect();
        targets.extend(self.voter_addrs(self.voters.committed.voters()));
        let msg = Message::Announce {
            epoch,
            leader: self.me.clone(),
            voters: self.voters.committed.clone(),
        };
        for to in targets {
            self.send(to, msg.clone());
        }
    }

    /// Once some voter of strictly higher priority, still in the view, has
    /// claimed without a break for `handover_delay` (hysteresis), the best
    /// of all current claimants: leadership moves once, to the top.
    fn priority_successor(&mut self, now: Instant) -> Option<NodeName> {
        let timeout = self.config.leader_timeout;
        let view = &self.view;
        let voters = &self.voters.committed;
        let priority = self.priority;
        self.contenders.retain(|name, (_, last)| {
            now.saturating_duration_since(*last) <= timeout
                && voters.contains(name)
                && view
                    .get(name)
                    .is_some_and(|s| s.peer.voter && !s.peer.behind && s.peer.priority > priority)
        });
        let delay = self.config.handover_delay;
        let qualified = self
            .contenders
            .values()
            .any(|(first, _)| now.saturating_duration_since(*first) >= delay);
        if !qualified {
            return None;
        }
        self.contenders
            .keys()
            .filter_map(|name| self.view.get(name))
            .map(|s| (s.peer.priority, &s.peer.name))
            .fold(None, |best: Option<(u32, &NodeName)>, c| match best {
                Some(b) if !outranks(c, b) => Some(b),
                _ => Some(c),
            })
            .map(|(_, name)| name.clone())
    }

    fn handle_claim(&mut self, now: Instant, epoch: Epoch, claimant: NodeName) {
        let Role::Leader { epoch: mine, .. } = self.role else {
            return;
        };
        let outranks_me = self
            .view
            .get(&claimant)
            .is_some_and(|s| s.peer.priority > self.priority);
        if epoch == mine && outranks_me {
            let streak = self.contenders.entry(claimant).or_insert((now, now));
            streak.1 = now;
        }
    }

    /// The handover: stop believing we lead, release our own promise, and
    /// only then tell the voters and the successor.
    fn hand_over(&mut self, now: Instant, successor: Option<NodeName>, chosen: bool) {
        let Role::Leader { epoch, .. } = self.role else {
            return;
        };
        // 1. No longer the leader: from here on nothing acts on the lease.
        self.lapse();
        // 2. Release our own promise to ourselves.
        if let Some(p) = self.promise.as_mut() {
            if p.holder == self.me && p.epoch == epoch {
                p.released = true;
            }
        }
        // 3. Tell everyone who may hold a promise to us, and the successor.
        let mut targets = self.voter_addrs(self.voters.committed.voters());
        if let Some(name) = &successor {
            if let Some(seen) = self.view.get(name) {
                targets.insert(seen.peer.addr);
            }
        }
        self.deferred_to = successor.clone().filter(|_| chosen);
        self.contenders.clear();
        let msg = Message::Release {
            epoch,
            from: self.me.clone(),
            to: successor,
            chosen,
        };
        for to in targets {
            self.send(to, msg.clone());
        }
        self.change = None;
        self.hold_off_until = Some(now + self.config.handover_delay);
    }

    /// `name` campaigns: it is alive, and the candidate we may wait for is
    /// doing its job.
    fn campaign_heard(&mut self, name: &NodeName) -> &mut Self {
        if self.waiting.as_ref().is_some_and(|(w, _)| w == name) {
            self.waiting = None;
        }
        self.hear_from(name)
    }

    /// Without a leader, waits for the candidate to campaign; one that has
    /// not for two leader timeouts is skipped (until heard from), so the
    /// next one campaigns. Liveness only: any campaign needs a majority.
    fn watch_candidate(&mut self, now: Instant) {
        self.now_hint = now;
        match self.leader {
            Some(_) => self.leaderless_since = None,
            None => {
                self.leaderless_since.get_or_insert(now);
            }
        }
        self.defers = self.behind && self.defers_still();
        let waiting_for =
            (self.leader.is_none() && self.has_view && matches!(self.role, Role::Follower))
                .then(|| self.candidate())
                .flatten()
                .filter(|c| *c != self.me);
        let waiting_for = waiting_for.and_then(|c| self.skip_suspects(c));
        match (waiting_for, &self.waiting) {
            (None, _) => self.waiting = None,
            (Some(c), Some((w, since))) if *w == c => {
                if now.saturating_duration_since(*since) >= self.config.leader_timeout * 2 {
                    tracing::debug!(me = %self.me, candidate = %c, "the candidate does not campaign; skipping it");
                    self.silent.insert(c);
                    self.waiting = None;
                }
            }
            (Some(c), _) => self.waiting = Some((c, now)),
        }
    }

    /// The candidate to wait for, starting from `candidate`: one that
    /// membership suspects is skipped (until heard from) without the wait,
    /// and the next one considered; `None` when this node is the next.
    fn skip_suspects(&mut self, mut candidate: NodeName) -> Option<NodeName> {
        while self.view.get(&candidate).is_some_and(|s| s.peer.suspect) {
            tracing::debug!(me = %self.me, %candidate, "the candidate is suspected; skipping it");
            self.silent.insert(candidate);
            candidate = self.candidate()?;
        }
        (candidate != self.me).then_some(candidate)
    }

    /// `name` is alive after all: it counts for the candidate choice again.
    fn hear_from(&mut self, name: &NodeName) -> &mut Self {
        self.silent.remove(name);
        self
    }

    fn not_leader(&self) -> Error {
        Error::NotLeader {
            leader: self.leader.as_ref().map(|k| k.name.clone()),
        }
    }

    // ----- voter-set changes ---------------------------------------------------

    fn check_change(&mut self, now: Instant) -> Result<(), Error> {
        self.expire(now);
        if !matches!(self.role, Role::Leader { .. }) {
            return Err(self.not_leader());
        }
        if self.change.is_some() {
            return Err(Error::ChangeInProgress);
        }
        Ok(())
    }

    /// Proposes `set` (one voter more or less, version + 1): it takes effect
    /// once a majority of the *current* set has durably accepted it, so any
    /// later leader's granting majority (of either set) includes a voter
    /// that has it.
    fn start_change(&mut self, now: Instant, set: VoterSet) {
        self.voters.pending = Some(set.clone());
        if let Role::Leader { epoch, .. } = self.role {
            self.voters.pending_epoch = epoch;
        }
        self.outputs
            .push_back(Output::PersistVoters(self.voters.clone()));
        let mut accepted = BTreeSet::new();
        if self.voters.committed.contains(&self.me) {
            accepted.insert(self.me.clone());
        }
        self.change = Some(Change { set, accepted });
        self.send_proposal();
        self.check_change_done(now);
    }

    fn send_proposal(&mut self) {
        let (Some(change), Role::Leader { epoch, .. }) = (&self.change, &self.role) else {
            return;
        };
        let msg = Message::ProposeVoters {
            epoch: *epoch,
            from: self.me.clone(),
            voters: change.set.clone(),
        };
        let voters: Vec<Voter> = self
            .voters
            .committed
            .voters()
            .iter()
            .chain(change.set.voters())
            .cloned()
            .collect();
        for to in self.voter_addrs(&voters) {
            self.send(to, msg.clone());
        }
    }

    fn handle_accepted(&mut self, now: Instant, epoch: Epoch, voter: NodeName, version: u64) {
        let Role::Leader { epoch: mine, .. } = self.role else {
            return;
        };
        let Some(change) = self.change.as_mut() else {
            return;
        };
        if epoch != mine || version != change.set.version {
            return;
        }
        if self.voters.committed.contains(&voter) {
            change.accepted.insert(voter);
        }
        self.check_change_done(now);
    }

    fn check_change_done(&mut self, now: Instant) {
        let Some(change) = &self.change else {
            return;
        };
        if change.accepted.len() < self.voters.committed.majority() {
            return;
        }
        let set = change.set.clone();
        self.change = None;
        tracing::debug!(me = %self.me, version = set.version, "voter set changed");
        self.adopt_voters(now, set);
        self.announce();
    }

    fn send(&mut self, to: SocketAddr, msg: Message) {
        self.outputs.push_back(Output::Send { to, msg });
    }

    /// Where to reach `voters` other than this node: the newest address
    /// the view gave for each, else the voter set's; voters with neither
    /// are left out (they are not up, or not yet heard of).
    fn voter_addrs(&self, voters: &[Voter]) -> BTreeSet<SocketAddr> {
        voters
            .iter()
            .filter(|v| v.name != self.me)
            .filter_map(|v| {
                self.addresses
                    .get(&v.name)
                    .copied()
                    .or(v.has_addr().then_some(v.addr))
            })
            .collect()
    }

    /// The best other live voter in the view (highest priority, then
    /// smallest name), to hand leadership to.
    fn best_live_voter(&self) -> Option<NodeName> {
        self.choose(None)
    }
}

/// Whether candidate `a` (priority, name) ranks above `b`: higher priority,
/// or equal priority and a smaller name.
fn outranks(a: (u32, &NodeName), b: (u32, &NodeName)) -> bool {
    a.0 > b.0 || (a.0 == b.0 && a.1 < b.1)
}

#[cfg(test)]
mod tests;
