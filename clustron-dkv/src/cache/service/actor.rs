//! The cache actor: owns every namespace's store and the adopted table,
//! routes operations, applies what peers replicate, performs the steps of
//! [`plan`] and runs copies, hand-overs and sweeps.

use super::*;

/// The link to one peer: a queue its task sends from, in order.
pub(super) struct Link {
    pub(super) queue: mpsc::UnboundedSender<Queued>,
    pub(super) alive: Arc<AtomicBool>,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.alive.store(false, Ordering::Relaxed);
    }
}

pub(super) struct Actor {
    pub(super) me: String,
    pub(super) table: PartitionTable,
    /// Live members and their addresses.
    pub(super) members: BTreeMap<String, SocketAddr>,
    pub(super) namespaces: BTreeMap<String, NamespaceStore>,
    pub(super) links: HashMap<String, Link>,
    pub(super) channel: Channel<CacheProtocol>,
    pub(super) commands: mpsc::Sender<Command>,
    /// Partitions this node owns at the table but waits to be handed, with
    /// the backups to copy to once it has them.
    pub(super) awaiting: HashMap<(String, u32), Vec<String>>,
    /// Copies in progress: (peer, namespace, partition).
    pub(super) resyncing: HashSet<(String, String, u32)>,
    /// Writes waiting for a copy to finish before they count as
    /// acknowledged by that backup.
    pub(super) resync_waiters: HashMap<(String, String, u32), Vec<oneshot::Sender<bool>>>,
    pub(super) stats: tokio::sync::watch::Sender<CacheStats>,
    pub(super) copies_sent: u64,
    pub(super) chunks_sent: u64,
    pub(super) promotions: u64,
    /// Event subscribers: (namespace, queue).
    pub(super) subscribers: Vec<(String, mpsc::Sender<Vec<CacheEvent>>)>,
    /// Copies in progress, one chunk in flight each: (peer, namespace,
    /// partition).
    pub(super) copies: HashMap<(String, String, u32), Copying>,
    pub(super) next_copy: u64,
    /// Hand-overs whose `Promote` is not applied yet: (peer, namespace,
    /// partition).
    pub(super) handing_over: HashSet<(String, String, u32)>,
}

/// A partition copy in progress: each chunk is read when the previous one
/// was applied, so a large partition is never held twice in memory and
/// the actor reads one chunk at a time.
pub(super) struct Copying {
    pub(super) id: u64,
    /// The key to continue after; `None` before the first chunk.
    pub(super) after: Option<Vec<u8>>,
    /// A hand-over's `Promote` (term, keep) to send after the last chunk.
    pub(super) then: Option<(u64, bool)>,
}

impl Actor {
    /// Hands `events` of `namespace` to its subscribers; one that is full
    /// or gone is dropped.
    fn publish_events(&mut self, namespace: &str, events: Vec<CacheEvent>) {
        if events.is_empty() || self.subscribers.is_empty() {
            return;
        }
        self.subscribers
            .retain(|(ns, tx)| ns != namespace || tx.try_send(events.clone()).is_ok());
    }

    pub(super) async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let sweeper = self.commands.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SWEEP_INTERVAL);
            loop {
                tick.tick().await;
                if sweeper.send(Command::Sweep).await.is_err() {
                    return;
                }
            }
        });
        while let Some(command) = commands.recv().await {
            self.command(command);
        }
    }

    fn table_id(&self) -> (u64, u64) {
        (self.table.epoch, self.table.version)
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Local {
                namespace,
                op,
                reply,
            } => {
                let routed = self.route(&namespace, &op, None);
                let _ = reply.send(routed);
            }
            Command::Forwarded {
                namespace,
                op,
                table,
                reply,
            } => {
                let routed = self.route(&namespace, &op, Some(table));
                let _ = reply.send(routed);
            }
            Command::Replicate { items, reply } => {
                let outcomes = items.into_iter().map(|item| self.receive(item)).collect();
                let _ = reply.send(outcomes);
            }
            Command::Delivered {
                peer,
                namespace,
                partition,
                outcome,
                notify,
                ack,
            } => self.delivered(peer, namespace, partition, outcome, notify, ack),
            Command::State {
                table,
                namespaces,
                members,
            } => self.state(table, namespaces, members),
            Command::Size { namespace, reply } => {
                let size = match self.namespaces.get(&namespace) {
                    Some(store) => Ok(store.metrics().owned_entries),
                    None => Err(CacheError::NoNamespace(namespace)),
                };
                let _ = reply.send(size);
            }
            Command::Flush { namespace, reply } => {
                let _ = reply.send(self.flush(&namespace));
            }
            Command::Peers(reply) => {
                let _ = reply.send(self.members.values().copied().collect());
            }
            Command::Namespaces(reply) => {
                let list = self
                    .namespaces
                    .values()
                    .map(|s| s.config().clone())
                    .collect();
                let _ = reply.send(list);
            }
            Command::Subscribe { namespace, reply } => {
                if !self.namespaces.contains_key(&namespace) && self.table.version != 0 {
                    let _ = reply.send(Err(CacheError::NoNamespace(namespace)));
                    return;
                }
                let (tx, rx) = mpsc::channel(EVENT_QUEUE);
                self.subscribers.push((namespace, tx));
                let _ = reply.send(Ok(rx));
            }
            Command::Sweep => self.sweep(),
            Command::Holds {
                namespace,
                partitions,
                reply,
            } => {
                let roles = match self.namespaces.get(&namespace) {
                    Some(store) => partitions.iter().map(|p| store.role(*p)).collect(),
                    None => vec![None; partitions.len()],
                };
                let _ = reply.send(roles);
            }
            Command::HandBack {
                namespace,
                partitions,
                to,
            } => {
                for partition in partitions {
                    let held = self.namespaces.get(&namespace).and_then(|s| {
                        (s.role(partition) == Some(PartitionRole::Backup))
                            .then(|| s.partition_position(partition))
                            .flatten()
                    });
                    let Some(position) = held else { continue };
                    let term = plan::handback_term(&self.table, position.term);
                    self.copy_then(&namespace, partition, &to, Some((term, true)));
                }
            }
            Command::Recovered { namespace, empty } => {
                let term = plan::term_of(&self.table);
                for partition in empty {
                    let Some(copy_to) = self.awaiting.remove(&(namespace.clone(), partition))
                    else {
                        continue;
                    };
                    let owned = self.table.owner(partition) == Some(self.me.as_str());
                    let Some(store) = self.namespaces.get_mut(&namespace) else {
                        continue;
                    };
                    if !owned {
                        continue;
                    }
                    // Nobody else holds it: what this node holds (a copy
                    // that may be partial) is the best there is.
                    let started = match store.role(partition) {
                        None => store.create_partition(partition, term).is_ok(),
                        Some(_) => match store.promote(partition, term, now_ms()) {
                            Ok(effects) => {
                                self.promotions += 1;
                                self.publish_events(&namespace, effects.events);
                                self.replicate_effects(&namespace, effects.changes);
                                true
                            }
                            Err(_) => false,
                        },
                    };
                    if !started {
                        continue;
                    }
                    for peer in copy_to {
                        self.copy(&namespace, partition, &peer);
                    }
                }
            }
        }
    }

    /// Where an operation runs: here (applied now, with the acks to wait
    /// for), or at the owner.
    fn route(&mut self, namespace: &str, op: &CacheOp, forwarded: Option<(u64, u64)>) -> Routed {
        let done = |result| Routed::Done {
            result,
            acks: Vec::new(),
        };
        // Before its first table a node has not read the namespaces either
        // (both come from one read): "not yet", not "no such namespace".
        if self.table.version == 0 {
            return done(Err(CacheError::NotReady("no partition table yet".into())));
        }
        if !self.namespaces.contains_key(namespace) {
            return done(Err(CacheError::NoNamespace(namespace.to_owned())));
        }
        let partition = partition_of(op.key());
        let owner = self.table.owner(partition).map(str::to_owned);
        let wrong_owner = || CacheError::WrongOwner {
            partition,
            owner: owner.clone(),
            table_version: self.table.version,
        };
        if owner.as_deref() != Some(self.me.as_str()) {
            if forwarded.is_some() {
                return done(Err(wrong_owner()));
            }
            return match owner.as_ref().and_then(|o| self.members.get(o)) {
                Some(addr) => Routed::Forward {
                    addr: *addr,
                    table: self.table_id(),
                },
                None => done(Err(CacheError::Unavailable(partition))),
            };
        }
        if forwarded.is_some_and(|named| named > self.table_id()) {
            // The forwarder knows a newer table: this node may no longer
            // own the partition there.
            return done(Err(wrong_owner()));
        }
        let Some(store) = self.namespaces.get_mut(namespace) else {
            return done(Err(CacheError::NoNamespace(namespace.to_owned())));
        };
        let sync = !store.config().async_backups;
        let backups = usize::from(store.config().backups);
        // `apply` answers Unavailable unless the partition is owned here
        // (it may still wait for its hand-over).
        let applied = store.apply(partition, op, now_ms());
        self.publish_events(namespace, applied.events);
        let acks = self.replicate(namespace, partition, backups, applied.changes, sync);
        Routed::Done {
            result: applied.reply,
            acks,
        }
    }

    /// Sends `changes` of `partition` to its backups; with `sync`, returns
    /// one ack per backup (for the last change: the stream is ordered).
    fn replicate(
        &mut self,
        namespace: &str,
        partition: u32,
        backups: usize,
        changes: Vec<Change>,
        sync: bool,
    ) -> Vec<oneshot::Receiver<bool>> {
        let mut acks = Vec::new();
        if changes.is_empty() {
            return acks;
        }
        let targets: Vec<String> = holders(&self.table, partition, backups)
            .into_iter()
            .skip(1)
            .filter(|b| *b != self.me)
            .collect();
        for target in targets {
            let last = changes.len() - 1;
            for (i, change) in changes.iter().enumerate() {
                let ack = (sync && i == last).then(|| {
                    let (tx, rx) = oneshot::channel();
                    acks.push(rx);
                    tx
                });
                self.send(
                    &target,
                    Queued {
                        item: Replicated::Change {
                            namespace: namespace.to_owned(),
                            change: change.clone(),
                        },
                        ack,
                        notify: Notify::Nothing,
                    },
                );
            }
        }
        acks
    }

    /// Changes made outside an operation (sweeps, promotions, flushes):
    /// replicated without waiting.
    fn replicate_effects(&mut self, namespace: &str, changes: Vec<Change>) {
        let Some(backups) = self
            .namespaces
            .get(namespace)
            .map(|s| usize::from(s.config().backups))
        else {
            return;
        };
        let mut by_partition: BTreeMap<u32, Vec<Change>> = BTreeMap::new();
        for change in changes {
            by_partition
                .entry(change.partition)
                .or_default()
                .push(change);
        }
        for (partition, changes) in by_partition {
            let _ = self.replicate(namespace, partition, backups, changes, false);
        }
    }

    /// Queues an item for `peer`, starting its link if needed. An item for
    /// a peer that is not a live member is dropped (its ack resolves: the
    /// peer left the table).
    fn send(&mut self, peer: &str, queued: Queued) {
        if !self.links.contains_key(peer) {
            let Some(addr) = self.members.get(peer).copied() else {
                return;
            };
            let (queue, rx) = mpsc::unbounded_channel();
            let alive = Arc::new(AtomicBool::new(true));
            let task = PeerTask {
                peer: peer.to_owned(),
                addr,
                queue: rx,
                alive: alive.clone(),
                channel: self.channel.clone(),
                commands: self.commands.clone(),
            };
            tokio::spawn(task.run());
            self.links.insert(peer.to_owned(), Link { queue, alive });
        }
        if let Some(link) = self.links.get(peer) {
            let _ = link.queue.send(queued);
        }
    }

    /// Copies `partition` to `peer` (a re-sync or a new backup).
    fn copy(&mut self, namespace: &str, partition: u32, peer: &str) {
        self.copy_then(namespace, partition, peer, None);
    }

    /// Copies `partition` to `peer` as chunks on its ordered stream, each
    /// read when the previous one was applied (so every change queued
    /// between them follows the chunk before and is covered by the chunk
    /// after), then sends `then`'s `Promote` if given (a hand-over).
    fn copy_then(
        &mut self,
        namespace: &str,
        partition: u32,
        peer: &str,
        then: Option<(u64, bool)>,
    ) {
        self.next_copy += 1;
        let key = (peer.to_owned(), namespace.to_owned(), partition);
        self.copies.insert(
            key.clone(),
            Copying {
                id: self.next_copy,
                after: None,
                then,
            },
        );
        self.copies_sent += 1;
        self.resyncing.insert(key.clone());
        self.next_chunk(&key);
    }

    /// Reads and queues the next chunk of the copy `key`.
    fn next_chunk(&mut self, key: &(String, String, u32)) {
        let (peer, namespace, partition) = key;
        let chunk = match (self.copies.get(key), self.namespaces.get(namespace)) {
            (Some(copying), Some(store)) => {
                store.export_chunk(*partition, copying.after.as_deref(), CHUNK_BYTES)
            }
            _ => None,
        };
        let (Some(chunk), Some(copying)) = (chunk, self.copies.get_mut(key)) else {
            // The partition is no longer held here: the copy ends.
            self.copies.remove(key);
            self.resyncing.remove(key);
            return;
        };
        copying.after = chunk.next_after.clone();
        self.chunks_sent += 1;
        let notify = Notify::Chunk {
            id: copying.id,
            last: chunk.next_after.is_none(),
        };
        let queued = Queued {
            item: Replicated::Chunk {
                namespace: namespace.clone(),
                chunk,
            },
            ack: None,
            notify,
        };
        let peer = peer.clone();
        self.send(&peer, queued);
    }

    /// Sends the end of a hand-over to `to`.
    fn promote_remote(&mut self, namespace: &str, partition: u32, to: &str, term: u64, keep: bool) {
        self.handing_over
            .insert((to.to_owned(), namespace.to_owned(), partition));
        let position = self
            .namespaces
            .get(namespace)
            .and_then(|s| s.partition_position(partition));
        self.send(
            to,
            Queued {
                item: Replicated::Promote {
                    namespace: namespace.to_owned(),
                    partition,
                    term,
                    position,
                },
                ack: None,
                notify: Notify::HandedOver { keep, term },
            },
        );
    }

    /// Applies one item from a peer.
    fn receive(&mut self, item: Replicated) -> Outcome {
        let namespace = item.namespace().to_owned();
        let Some(store) = self.namespaces.get_mut(&namespace) else {
            // Not read from the store here yet (the control task reads it
            // every CONTROL_INTERVAL): the sender copies again.
            return Outcome::Gap;
        };
        let result = match item {
            Replicated::Change { change, .. } => {
                let (term, seq) = (change.term, change.seq);
                match store.apply_change(change) {
                    // A retried batch: already applied.
                    Err(ReplicaError::Gap {
                        held: Some(held), ..
                    }) if held.term == term && held.seq >= seq => Ok(()),
                    other => other,
                }
            }
            Replicated::Chunk { chunk, .. } => store.import_chunk(chunk),
            Replicated::Promote {
                partition,
                term,
                position,
                ..
            } => {
                return self.promoted(&namespace, partition, term, position);
            }
        };
        match result {
            Ok(()) => Outcome::Applied,
            Err(ReplicaError::Gap { .. }) => Outcome::Gap,
            Err(e) => Outcome::Refused(e.to_string()),
        }
    }

    /// A hand-over's end arrived: own the partition if held at the old
    /// owner's position.
    fn promoted(
        &mut self,
        namespace: &str,
        partition: u32,
        term: u64,
        position: Option<Position>,
    ) -> Outcome {
        let Some(store) = self.namespaces.get_mut(namespace) else {
            return Outcome::Gap;
        };
        match store.role(partition) {
            Some(PartitionRole::Owner) => return Outcome::Applied,
            Some(PartitionRole::Backup) if store.partition_position(partition) == position => {}
            _ => return Outcome::Gap,
        }
        let effects = match store.promote(partition, term, now_ms()) {
            Ok(effects) => effects,
            Err(e) => return Outcome::Refused(e.to_string()),
        };
        self.promotions += 1;
        self.publish_events(namespace, effects.events);
        self.replicate_effects(namespace, effects.changes);
        if let Some(copy_to) = self.awaiting.remove(&(namespace.to_owned(), partition)) {
            for peer in copy_to {
                self.copy(namespace, partition, &peer);
            }
        }
        Outcome::Applied
    }

    /// A peer task's report on an item that needs the actor.
    #[allow(clippy::too_many_arguments)]
    fn delivered(
        &mut self,
        peer: String,
        namespace: String,
        partition: u32,
        outcome: Outcome,
        notify: Notify,
        ack: Option<oneshot::Sender<bool>>,
    ) {
        let key = (peer.clone(), namespace.clone(), partition);
        if let Notify::Chunk { id, last } = notify {
            if self.copies.get(&key).map(|c| c.id) != Some(id) {
                return; // a copy since replaced
            }
            match outcome {
                Outcome::Applied if !last => self.next_chunk(&key),
                Outcome::Applied => {
                    let then = self.copies.remove(&key).and_then(|c| c.then);
                    self.resyncing.remove(&key);
                    for waiter in self.resync_waiters.remove(&key).unwrap_or_default() {
                        let _ = waiter.send(true);
                    }
                    if let Some((term, keep)) = then {
                        self.promote_remote(&namespace, partition, &peer, term, keep);
                    }
                }
                Outcome::Gap => {
                    // A change between two chunks was lost: start over.
                    let then = self.copies.remove(&key).and_then(|c| c.then);
                    self.resyncing.remove(&key);
                    if then.is_some() || self.owns_with_backup(&namespace, partition, &peer) {
                        self.copy_then(&namespace, partition, &peer, then);
                    }
                }
                Outcome::Refused(why) => {
                    tracing::debug!(%peer, %namespace, partition, %why, "cache copy refused");
                    self.copies.remove(&key);
                    self.resyncing.remove(&key);
                }
            }
            return;
        }
        match (outcome, notify) {
            (_, Notify::Chunk { .. }) => {}
            (Outcome::Applied, Notify::HandedOver { keep, .. }) => {
                self.handing_over.remove(&key);
                if !keep {
                    if let Some(store) = self.namespaces.get_mut(&namespace) {
                        if store.role(partition) == Some(PartitionRole::Backup) {
                            store.drop_partition(partition);
                        }
                    }
                }
            }
            (Outcome::Applied, Notify::Nothing) => {}
            (Outcome::Gap, Notify::HandedOver { keep, term }) => {
                // The new owner is not where this node stopped: copy, then
                // hand over again.
                self.copy_then(&namespace, partition, &peer, Some((term, keep)));
            }
            (Outcome::Gap, _) => {
                if !self.owns_with_backup(&namespace, partition, &peer) {
                    return;
                }
                if let Some(ack) = ack {
                    self.resync_waiters
                        .entry(key.clone())
                        .or_default()
                        .push(ack);
                }
                if !self.resyncing.contains(&key) {
                    self.copy(&namespace, partition, &peer);
                }
            }
            (Outcome::Refused(why), notify) => {
                if matches!(notify, Notify::HandedOver { .. }) {
                    self.handing_over.remove(&key);
                }
                tracing::debug!(%peer, %namespace, partition, %why, "cache replication refused");
                // The backup owns the partition now (it took over, taking
                // this node for failed): the write is not acknowledged.
                if let Some(ack) = ack {
                    let _ = ack.send(false);
                }
            }
        }
    }

    /// Whether this node owns `partition` and `peer` is one of its backups
    /// at the table (so a gap there is this node's to repair).
    fn owns_with_backup(&self, namespace: &str, partition: u32, peer: &str) -> bool {
        let Some(store) = self.namespaces.get(namespace) else {
            return false;
        };
        let backups = usize::from(store.config().backups);
        store.role(partition) == Some(PartitionRole::Owner)
            && holders(&self.table, partition, backups)
                .iter()
                .skip(1)
                .any(|b| b == peer)
    }

    /// Adopts what the control task read.
    fn state(
        &mut self,
        table: Option<PartitionTable>,
        namespaces: Vec<NamespaceConfig>,
        members: Vec<(String, SocketAddr)>,
    ) {
        self.members = members.into_iter().collect();
        let members = &self.members;
        self.links.retain(|peer, _| members.contains_key(peer));
        self.resync_waiters
            .retain(|(peer, _, _), _| members.contains_key(peer));
        self.resyncing
            .retain(|(peer, _, _)| members.contains_key(peer));
        self.copies
            .retain(|(peer, _, _), _| members.contains_key(peer));
        self.handing_over
            .retain(|(peer, _, _)| members.contains_key(peer));
        let live: BTreeSet<String> = self.members.keys().cloned().collect();
        let wanted: BTreeMap<String, NamespaceConfig> = namespaces
            .into_iter()
            .map(|c| (c.name.clone(), c))
            .collect();
        let dropped: Vec<String> = self
            .namespaces
            .keys()
            .filter(|n| !wanted.contains_key(*n))
            .cloned()
            .collect();
        for name in dropped {
            tracing::info!(namespace = %name, "cache namespace dropped");
            self.namespaces.remove(&name);
            // Their streams end: what they cached is gone.
            self.subscribers.retain(|(ns, _)| *ns != name);
            self.awaiting.retain(|(n, _), _| *n != name);
        }
        for (name, config) in wanted {
            if self.namespaces.contains_key(&name) {
                continue;
            }
            tracing::info!(namespace = %name, "cache namespace created");
            self.namespaces
                .insert(name.clone(), NamespaceStore::new(config));
            // Its partitions as if the table had just been made.
            let table = self.table.clone();
            self.adopt(&name, &PartitionTable::empty(), &table, &live);
        }
        if let Some(table) = table.filter(|t| t.is_newer_than(&self.table)) {
            tracing::info!(
                version = table.version,
                epoch = table.epoch,
                owned = table.owned_count(&self.me),
                "cache partition table adopted"
            );
            let old = std::mem::replace(&mut self.table, table.clone());
            let names: Vec<String> = self.namespaces.keys().cloned().collect();
            for name in names {
                self.adopt(&name, &old, &table, &live);
            }
        }
        self.publish_stats();
    }

    /// Performs the steps from `old` to `new` for one namespace. A
    /// partition this node must take over while holding nothing of it (it
    /// just started, a namespace was just created, or the one that was
    /// handing it over died) waits while [`recover`] asks the other members
    /// what they hold: a backup elsewhere may still have the data.
    fn adopt(
        &mut self,
        namespace: &str,
        old: &PartitionTable,
        new: &PartitionTable,
        live: &BTreeSet<String>,
    ) {
        if new.version == 0 {
            return;
        }
        let Some(store) = self.namespaces.get(namespace) else {
            return;
        };
        let backups = usize::from(store.config().backups);
        let steps = plan::plan(old, new, &self.me, live, backups, |p| store.role(p));
        // A hand-over this node waited for under an older table is void
        // once the partition is someone else's.
        let me = self.me.as_str();
        self.awaiting
            .retain(|(ns, p), _| ns != namespace || new.owner(*p) == Some(me));
        // A partition still waiting for its hand-over may hold a partial
        // copy: it is no better than nothing.
        let held: Vec<bool> = steps
            .iter()
            .map(|step| match step {
                Step::TakeOver { partition, .. } => {
                    store.role(*partition).is_some()
                        && !self
                            .awaiting
                            .contains_key(&(namespace.to_owned(), *partition))
                }
                _ => true,
            })
            .collect();
        let mut orphans = Vec::new();
        for (step, held) in steps.into_iter().zip(held) {
            match step {
                Step::TakeOver {
                    partition, copy_to, ..
                } if !held => {
                    self.awaiting
                        .insert((namespace.to_owned(), partition), copy_to);
                    orphans.push(partition);
                }
                other => self.step(namespace, other),
            }
        }
        if orphans.is_empty() {
            return;
        }
        let peers: Vec<(String, SocketAddr)> = self
            .members
            .iter()
            .filter(|(name, _)| **name != self.me)
            .map(|(name, addr)| (name.clone(), *addr))
            .collect();
        tokio::spawn(recover(
            self.channel.clone(),
            self.commands.clone(),
            namespace.to_owned(),
            orphans,
            peers,
            new.clone(),
        ));
    }

    fn step(&mut self, namespace: &str, step: Step) {
        let now = now_ms();
        let Some(store) = self.namespaces.get_mut(namespace) else {
            return;
        };
        match step {
            Step::TakeOver {
                partition,
                term,
                copy_to,
            } => {
                self.awaiting.remove(&(namespace.to_owned(), partition));
                match store.role(partition) {
                    Some(_) => match store.promote(partition, term, now) {
                        Ok(effects) => {
                            self.promotions += 1;
                            self.publish_events(namespace, effects.events);
                            self.replicate_effects(namespace, effects.changes);
                        }
                        Err(e) => tracing::warn!(partition, %e, "cache take-over"),
                    },
                    None => {
                        let _ = store.create_partition(partition, term);
                    }
                }
                for peer in copy_to {
                    self.copy(namespace, partition, &peer);
                }
            }
            Step::AwaitHandOver { partition, copy_to } => {
                self.awaiting
                    .insert((namespace.to_owned(), partition), copy_to);
            }
            Step::HandOver {
                partition,
                to,
                copy,
                term,
                keep,
            } => {
                let _ = store.demote(partition);
                match copy {
                    true => self.copy_then(namespace, partition, &to, Some((term, keep))),
                    false => self.promote_remote(namespace, partition, &to, term, keep),
                }
            }
            Step::CopyTo { partition, to } => {
                for peer in to {
                    self.copy(namespace, partition, &peer);
                }
            }
            Step::Drop { partition } => {
                store.drop_partition(partition);
            }
        }
    }

    fn flush(&mut self, namespace: &str) -> Result<(), CacheError> {
        let Some(store) = self.namespaces.get_mut(namespace) else {
            return Err(CacheError::NoNamespace(namespace.to_owned()));
        };
        let owned: Vec<u32> = store
            .partitions()
            .filter(|(_, role)| *role == PartitionRole::Owner)
            .map(|(p, _)| p)
            .collect();
        let mut changes = Vec::new();
        let mut events = Vec::new();
        for partition in owned {
            if let Ok(effects) = store.flush_partition(partition) {
                changes.extend(effects.changes);
                events.extend(effects.events);
            }
        }
        self.publish_events(namespace, events);
        self.replicate_effects(namespace, changes);
        Ok(())
    }

    fn sweep(&mut self) {
        let now = now_ms();
        let names: Vec<String> = self.namespaces.keys().cloned().collect();
        for name in names {
            let Some(store) = self.namespaces.get_mut(&name) else {
                continue;
            };
            if store.next_expiry().is_some_and(|at| at <= now) {
                let effects = store.expire(now, SWEEP_BUDGET);
                self.publish_events(&name, effects.events);
                self.replicate_effects(&name, effects.changes);
            }
        }
        self.publish_stats();
    }

    fn publish_stats(&self) {
        self.stats.send_replace(CacheStats {
            table_version: self.table.version,
            table_epoch: self.table.epoch,
            moving_out: (self.copies.len() + self.handing_over.len()) as u64,
            copies_sent: self.copies_sent,
            chunks_sent: self.chunks_sent,
            promotions: self.promotions,
            namespaces: self
                .namespaces
                .iter()
                .map(|(name, store)| {
                    let owned = store
                        .partitions()
                        .filter(|(_, role)| *role == PartitionRole::Owner)
                        .count() as u64;
                    NamespaceStats {
                        name: name.clone(),
                        metrics: store.metrics(),
                        owned_partitions: owned,
                        backup_partitions: store.partitions().count() as u64 - owned,
                    }
                })
                .collect(),
        });
    }
}
