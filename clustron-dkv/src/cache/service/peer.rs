//! One task per peer: its replication queue, sent in order, one batch in
//! flight, each batch retried whole until answered or the peer leaves.

use super::*;

/// Sends one peer's queue in order, one batch in flight, retrying a batch
/// whole until it is answered or the peer leaves.
pub(super) struct PeerTask {
    pub(super) peer: String,
    pub(super) addr: SocketAddr,
    pub(super) queue: mpsc::UnboundedReceiver<Queued>,
    pub(super) alive: Arc<AtomicBool>,
    pub(super) channel: Channel<CacheProtocol>,
    pub(super) commands: mpsc::Sender<Command>,
}

impl PeerTask {
    pub(super) async fn run(mut self) {
        while let Some(first) = self.queue.recv().await {
            let mut bytes = first.item.bytes();
            let mut batch = vec![first];
            while bytes < BATCH_BYTES {
                let Ok(next) = self.queue.try_recv() else {
                    break;
                };
                bytes += next.item.bytes();
                batch.push(next);
            }
            let request = PeerRequest::Replicate(batch.iter().map(|q| q.item.clone()).collect());
            let mut pause = Duration::from_millis(50);
            let outcomes = loop {
                if !self.alive.load(Ordering::Relaxed) {
                    return;
                }
                match self.channel.request(self.addr, &request).await {
                    Ok(PeerResponse::Replicated(outcomes)) if outcomes.len() == batch.len() => {
                        break outcomes
                    }
                    Ok(other) => {
                        tracing::warn!(peer = %self.peer, answer = ?other, "cache replication: unexpected answer");
                    }
                    Err(e) => {
                        tracing::debug!(peer = %self.peer, %e, "cache replication: retrying");
                    }
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            };
            for (queued, outcome) in batch.into_iter().zip(outcomes) {
                let Queued { item, ack, notify } = queued;
                if outcome == Outcome::Applied && matches!(notify, Notify::Nothing) {
                    if let Some(ack) = ack {
                        let _ = ack.send(true);
                    }
                    continue;
                }
                let report = Command::Delivered {
                    peer: self.peer.clone(),
                    namespace: item.namespace().to_owned(),
                    partition: item.partition(),
                    outcome,
                    notify,
                    ack,
                };
                if self.commands.send(report).await.is_err() {
                    return;
                }
            }
        }
    }
}
