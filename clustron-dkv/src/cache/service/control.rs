//! The control task (reads the table, namespaces and membership; the
//! store's leader publishes tables and creates `default`) and the survey a
//! node runs before taking over partitions it holds nothing of.

use super::*;

/// Before a node takes over partitions it holds nothing of (it just
/// started) or only an unfinished hand-over copy of, it asks every live
/// member what it holds of them ([`plan::recovery`]), asks backups to hand
/// theirs back, and tells the actor which partitions nobody holds (those
/// start empty). A member that does not answer counts as holding nothing.
/// A hand-back that cannot be asked is surveyed again after a pause, up to
/// [`RECOVER_ATTEMPTS`] times; then nobody is taken to hold it.
pub(super) async fn recover(
    channel: Channel<CacheProtocol>,
    commands: mpsc::Sender<Command>,
    namespace: String,
    partitions: Vec<u32>,
    peers: Vec<(String, SocketAddr)>,
    table: PartitionTable,
) {
    let mut left = partitions;
    let mut empty = Vec::new();
    for attempt in 1..=RECOVER_ATTEMPTS {
        let (pulls, nobody) = survey(&channel, &namespace, &left, &peers, &table).await;
        empty.extend(nobody);
        let pulled = pulls.values().map(Vec::len).sum::<usize>();
        tracing::info!(
            namespace = %namespace,
            attempt,
            pulled,
            empty = empty.len(),
            "cache: partitions to take over, surveyed"
        );
        left = Vec::new();
        for (from, partitions) in pulls {
            let Some(addr) = peers.iter().find(|(n, _)| *n == from).map(|(_, a)| *a) else {
                left.extend(partitions);
                continue;
            };
            let request = PeerRequest::HandBack {
                namespace: namespace.clone(),
                partitions: partitions.clone(),
            };
            if let Err(e) = channel.request(addr, &request).await {
                tracing::warn!(%from, %e, "cache hand-back not asked; surveying again");
                left.extend(partitions);
            }
        }
        if left.is_empty() {
            break;
        }
        if attempt == RECOVER_ATTEMPTS {
            // The backups do not answer: most likely gone with the rest.
            empty.append(&mut left);
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let _ = commands.send(Command::Recovered { namespace, empty }).await;
}

/// How many times [`recover`] surveys partitions whose hand-back could not
/// be asked before it takes nobody to hold them.
const RECOVER_ATTEMPTS: u32 = 5;

/// One survey: which backup to pull each partition from, and the
/// partitions nobody holds (those some member owns are left out: that
/// member hands them over).
async fn survey(
    channel: &Channel<CacheProtocol>,
    namespace: &str,
    partitions: &[u32],
    peers: &[(String, SocketAddr)],
    table: &PartitionTable,
) -> (BTreeMap<String, Vec<u32>>, Vec<u32>) {
    let mut answers: BTreeMap<u32, BTreeMap<String, Option<PartitionRole>>> = BTreeMap::new();
    for (name, addr) in peers {
        let request = PeerRequest::Holds {
            namespace: namespace.to_owned(),
            partitions: partitions.to_vec(),
        };
        let roles = match channel.request(*addr, &request).await {
            Ok(PeerResponse::Holds(roles)) if roles.len() == partitions.len() => roles,
            _ => vec![None; partitions.len()],
        };
        for (p, role) in partitions.iter().zip(roles) {
            answers.entry(*p).or_default().insert(name.clone(), role);
        }
    }
    let mut pulls: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    let mut empty = Vec::new();
    for p in partitions {
        let said = answers.remove(p).unwrap_or_default();
        match plan::recovery(table, *p, &said) {
            plan::Recovery::Wait => {}
            plan::Recovery::Pull(from) => pulls.entry(from).or_default().push(*p),
            plan::Recovery::Empty => empty.push(*p),
        }
    }
    (pulls, empty)
}

/// Reads the reserved keys and membership for the actor; on the store's
/// leader also creates `default` once and publishes new tables.
pub(super) struct Control {
    pub(super) me: String,
    pub(super) membership: Membership,
    pub(super) election: Election,
    pub(super) kv: Kv,
    pub(super) channel: Channel<CacheProtocol>,
    pub(super) commands: mpsc::Sender<Command>,
    /// The last table this node published (it may not be read back yet).
    pub(super) published: Option<PartitionTable>,
}

impl Control {
    pub(super) async fn run(mut self) {
        let mut tick = tokio::time::interval(CONTROL_INTERVAL);
        loop {
            tick.tick().await;
            if self.round().await.is_err() {
                return;
            }
        }
    }

    /// One round; `Err` when the actor has stopped.
    async fn round(&mut self) -> Result<(), ()> {
        let Ok(members) = self.membership.members().await else {
            return Err(());
        };
        let members: Vec<_> = members.into_iter().filter(|m| m.state.is_live()).collect();
        // Leaving members still serve until their partitions are handed
        // over, but the tables leave them out.
        let staying: Vec<String> = members
            .iter()
            .filter(|m| !m.tags.contains_key(LEAVING_TAG))
            .map(|m| m.name.to_string())
            .collect();
        let members: Vec<(String, SocketAddr)> = members
            .into_iter()
            .map(|m| (m.name.to_string(), m.addr))
            .collect();
        // Linearizable, from the store's leader: a node that restarts must
        // not act on the stale table its own log holds (it could find
        // itself owner of partitions the others took over).
        let request = KvRequest::Range {
            request: RangeRequest {
                range: KeyRange::Prefix(CACHE_PREFIX.to_vec()),
                revision: 0,
                limit: 0,
                keys_only: false,
                count_only: false,
            },
            linearizable: true,
        };
        let read = match crate::serve::kv_op_answer(self.kv.clone(), request.clone()).await {
            Err(KvFailure::NotLeader {
                leader: Some((_, addr)),
            }) => match self
                .channel
                .request(addr, &PeerRequest::Store(request))
                .await
            {
                Ok(PeerResponse::Store(answer)) => answer,
                _ => Err(KvFailure::Unavailable(
                    "the store's leader did not answer".into(),
                )),
            },
            answer => answer,
        };
        let Ok(KvReply::Range(range, _)) = read else {
            // The store is not serving yet: membership still matters.
            let _ = self
                .commands
                .send(Command::State {
                    table: None,
                    namespaces: self.current_namespaces().await?,
                    members,
                })
                .await;
            return Ok(());
        };
        let mut table: Option<PartitionTable> = None;
        let mut namespaces = Vec::new();
        let mut initialised = false;
        for kv in &range.kvs {
            if kv.key == TABLE_KEY {
                table = postcard::from_bytes(&kv.value).ok();
            } else if kv.key == INIT_KEY {
                initialised = true;
            } else if kv.key.starts_with(NAMESPACE_PREFIX) {
                match postcard::from_bytes::<NamespaceConfig>(&kv.value) {
                    Ok(config) => namespaces.push(config),
                    Err(e) => tracing::warn!(%e, "undecodable cache namespace settings"),
                }
            }
        }
        self.commands
            .send(Command::State {
                table: table.clone(),
                namespaces,
                members: members.clone(),
            })
            .await
            .map_err(|_| ())?;
        if let Some((epoch, _)) = self.election.lease() {
            if !initialised {
                self.create_default().await;
            }
            let base = match (table, self.published.take()) {
                (Some(read), Some(mine)) if mine.is_newer_than(&read) => mine,
                (Some(read), _) => read,
                (None, Some(mine)) => mine,
                (None, None) => PartitionTable::empty(),
            };
            let next = base.rebalance(&staying, epoch.0);
            if next != base && !staying.is_empty() {
                self.publish(next).await;
            } else {
                self.published = Some(base);
            }
        } else {
            self.published = None;
        }
        Ok(())
    }

    async fn current_namespaces(&self) -> Result<Vec<NamespaceConfig>, ()> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Namespaces(tx))
            .await
            .map_err(|_| ())?;
        rx.await.map_err(|_| ())
    }

    async fn publish(&mut self, table: PartitionTable) {
        let Ok(value) = postcard::to_allocvec(&table) else {
            return;
        };
        let put = ClientOp::Write(StoreCommand::Put(PutRequest {
            key: TABLE_KEY.to_vec(),
            value,
            lease: None,
            prev_kv: false,
        }));
        match self.kv.request(put).await {
            Ok(_) => {
                tracing::info!(
                    node = %self.me,
                    version = table.version,
                    epoch = table.epoch,
                    "cache partition table published"
                );
                self.published = Some(table);
            }
            Err(e) => tracing::debug!(%e, "cache partition table not published"),
        }
    }

    /// Creates the namespace `default` once per cluster.
    async fn create_default(&self) {
        let Ok(value) = postcard::to_allocvec(&NamespaceConfig::default()) else {
            return;
        };
        let txn = Txn {
            compare: vec![Compare {
                key: INIT_KEY.to_vec(),
                target: CompareTarget::Version(0),
                op: CompareOp::Equal,
            }],
            success: vec![
                RequestOp::put(INIT_KEY, b"1"),
                RequestOp::put(&namespace_key("default"), &value),
            ],
            failure: vec![],
        };
        if let Err(e) = self
            .kv
            .request(ClientOp::Write(StoreCommand::Txn(txn)))
            .await
        {
            tracing::debug!(%e, "cache namespace default not created yet");
        }
    }
}
