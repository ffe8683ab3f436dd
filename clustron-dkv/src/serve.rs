//! The node's side of the client protocol ([`crate::proto`]), bridging
//! requests and streams to the event bus.

use clustron_election::NodeName;
use clustron_events::{
    Event, EventBus, Filter, Received, Topology, TopologyChange, TopologyUpdate,
};
use clustron_log::voters::{ReplicaStatus, VoterChange, VoterChangeError};
use clustron_membership::Member;
use clustron_transport::{FramedStream, Inbound, Peer, PeerKind};

use std::sync::Arc;
use std::time::Duration;

use crate::access::{self, Access};
use crate::cache::service::Cache;
use crate::cache::{CacheError, CacheRequest};
use crate::core::mvcc::Command;
use crate::core::server::{ClientOp, ServerError};
use crate::kv::{KvFailure, KvReply, KvRequest, ReplicaInfo, WatchRequest};
use crate::kv_driver::{Kv, WatchItem};
use crate::node::Node;
use crate::proto::{
    Change, ClientProtocol, MemberInfo, Request, Response, StreamItem, StreamRequest, TopologyInfo,
};

/// Serves client requests and streams in the background.
///
/// Requests are answered in their own stream's task (the transport's
/// [`clustron_transport::Endpoint::serve`]): no queue, no task of their
/// own, no hand-over per request. Streams (watches, subscriptions) arrive
/// in the inbox and each gets a task.
pub fn start(node: &Node) -> Result<(), clustron_transport::Error> {
    let max_frame = node.endpoint.config().max_frame_size;
    let shared = Arc::new((node.clone(), Admission::new(MAX_KV_REQUESTS)));
    let mut inbox = node
        .endpoint
        .serve::<ClientProtocol, _, _>(move |from, request| {
            let shared = shared.clone();
            async move {
                let (node, admission) = &*shared;
                Ok(respond(node, admission, from, request, max_frame).await)
            }
        })?;
    let node = node.clone();
    tokio::spawn(async move {
        while let Some(item) = inbox.recv().await {
            match item {
                Inbound::Stream { stream, from } => {
                    let bus = node.bus.borrow().clone();
                    let kv = node.kv.borrow().clone();
                    let cache = node.cache.borrow().clone();
                    let me = node.membership.name().to_string();
                    let caller = from.identity.kind;
                    tokio::spawn(serve_stream(bus, kv, cache, me, caller, stream));
                }
                // Requests go to the handler above, never here.
                Inbound::Request { reply, .. } => reply.reject("requests are served elsewhere"),
                Inbound::Message { .. } => {}
            }
        }
    });
    Ok(())
}

/// How many key-value requests a node works on at once, from all its
/// clients together; one more is refused at once with
/// [`KvFailure::Overloaded`] (nothing done), which the client retries after
/// a pause. It bounds the node's queue of client work: under a flood the
/// node answers at its own pace and refuses the excess cheaply, rather than
/// queueing without bound until its membership probes and election
/// renewals wait behind client work and its peers take it for dead
/// (issue 13). Sized well above one client's 1,000 in flight; at 64 puts
/// in flight a node keeps a few hundred requests in progress at most.
pub const MAX_KV_REQUESTS: u32 = 4096;

/// Admission control: at most `limit` requests in progress at once.
#[derive(Debug)]
struct Admission {
    permits: Arc<tokio::sync::Semaphore>,
    limit: u32,
}

impl Admission {
    fn new(limit: u32) -> Self {
        Admission {
            permits: Arc::new(tokio::sync::Semaphore::new(limit as usize)),
            limit,
        }
    }

    /// A slot for one request, held until the answer is ready; or the
    /// refusal to answer with.
    fn admit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, KvFailure> {
        self.permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| KvFailure::Overloaded { limit: self.limit })
    }
}

/// The answer to one request, authorised by the caller's role first.
async fn respond(
    node: &Node,
    admission: &Admission,
    from: Peer,
    request: Request,
    max_frame: usize,
) -> Response {
    if let Err(denied) = access::check(from.identity.kind, Access::of(&request)) {
        return match request {
            Request::Kv(_) => Response::Kv(Err(denied)),
            Request::Cache(CacheRequest::Op { .. }) => Response::Cache(Err(CacheError::ReadOnly)),
            Request::Cache(_) => Response::Cache(Err(CacheError::Refused(denied.to_string()))),
            _ => Response::Error(denied.to_string()),
        };
    }
    match &request {
        // The cluster's own keys are written by nodes only.
        Request::Kv(kv) if from.identity.kind != PeerKind::Node && access::writes_reserved(kv) => {
            let role = match from.identity.kind {
                PeerKind::Client(role) => role.as_str(),
                PeerKind::Node => "node",
            };
            return Response::Kv(Err(KvFailure::PermissionDenied {
                role: role.to_owned(),
                operation: format!(
                    "write keys under {:?} (reserved for the cluster)",
                    String::from_utf8_lossy(access::RESERVED_PREFIX)
                ),
            }));
        }
        _ => {}
    }
    match request {
        Request::Cache(cache) => {
            let _admitted = match admission.admit() {
                Ok(permit) => permit,
                Err(_) => {
                    return Response::Cache(Err(CacheError::NotReady(
                        "the node is overloaded".into(),
                    )))
                }
            };
            let service = node.cache.borrow().clone();
            let answer = match service {
                Some(service) => service.request(cache).await,
                None => Err(CacheError::NotReady("the cache is starting".into())),
            };
            Response::Cache(answer)
        }
        Request::Kv(op) => {
            let _admitted = match admission.admit() {
                Ok(permit) => permit,
                Err(overloaded) => return Response::Kv(Err(overloaded)),
            };
            let kv = node.kv.borrow().clone();
            Response::Kv(fit(kv_answer(kv, op).await, max_frame))
        }
        request => {
            let bus = node.bus.borrow().clone();
            match bus {
                None => Response::Error("node not ready: the event bus is starting".into()),
                Some(bus) => answer(&bus, node.membership.name().as_str(), request).await,
            }
        }
    }
}

/// How long a node waits for a write to commit before telling the client
/// the outcome is unknown.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(10);

async fn kv_answer(kv: Option<Kv>, request: KvRequest) -> Result<KvReply, KvFailure> {
    let Some(kv) = kv else {
        return Err(KvFailure::Unavailable(
            "the key-value store is starting (waiting for the voters)".into(),
        ));
    };
    let change = match request {
        KvRequest::Voters => return voters_answer(kv.replicas().await),
        KvRequest::AddVoter(name) => VoterChange::Add(voter_name(&name)?),
        KvRequest::RemoveVoter(name) => VoterChange::Remove(voter_name(&name)?),
        request => return kv_op_answer(kv, request).await,
    };
    voters_answer(kv.change_voters(change, COMMIT_TIMEOUT).await)
}

fn voter_name(name: &str) -> Result<NodeName, KvFailure> {
    NodeName::new(name).map_err(|e| KvFailure::VoterChange(format!("{name:?}: {e}")))
}

/// The answer to a voter request: the replicas, or why not (a node that
/// does not lead redirects the client as for any key-value request; a
/// leader that handed over to be removed sends it to the next one).
fn voters_answer(
    result: Result<Vec<ReplicaStatus>, VoterChangeError>,
) -> Result<KvReply, KvFailure> {
    match result {
        Ok(replicas) => Ok(KvReply::Voters(
            replicas
                .into_iter()
                .map(|r| ReplicaInfo {
                    name: r.name.to_string(),
                    role: r.role.to_string(),
                    applied_index: r.applied_index,
                    lag: r.lag,
                })
                .collect(),
        )),
        Err(VoterChangeError::NotLeader { leader }) => Err(KvFailure::NotLeader {
            leader: leader.map(|(name, addr)| (name.to_string(), addr)),
        }),
        Err(e @ VoterChangeError::SteppedDown(_)) => Err(KvFailure::Unavailable(e.to_string())),
        Err(e) => Err(KvFailure::VoterChange(e.to_string())),
    }
}

pub(crate) async fn kv_op_answer(kv: Kv, request: KvRequest) -> Result<KvReply, KvFailure> {
    let op = match client_op(request) {
        Ok(op) => op,
        Err(failure) => return Err(failure),
    };
    match tokio::time::timeout(COMMIT_TIMEOUT, kv.request(op)).await {
        Err(_) => Err(KvFailure::Unknown(format!(
            "no commit within {COMMIT_TIMEOUT:?}; the write may or may not be applied"
        ))),
        Ok(result) => result.map_err(|e| match e {
            ServerError::NotLeader { leader } => KvFailure::NotLeader {
                leader: leader.map(|(name, addr)| (name.to_string(), addr)),
            },
            ServerError::NotReady(why) => KvFailure::Unavailable(why.into()),
            ServerError::Lost => KvFailure::Lost,
            ServerError::LeaderChanged => KvFailure::LeaderChanged,
            ServerError::TooLarge { len, max } => KvFailure::TooLarge { len, max },
            ServerError::Kv(e) => KvFailure::Refused(e),
        }),
    }
}

/// An answer too large for one frame becomes a definite failure that says
/// what happened (for a write: applied, at which revision), rather than a
/// transport error after which the client cannot know.
fn fit(answer: Result<KvReply, KvFailure>, max_frame: usize) -> Result<KvReply, KvFailure> {
    // The response's enum tags and the status byte around the answer.
    let len = clustron_transport::frame::framed_len(&answer) + 16;
    if len <= max_frame {
        return answer;
    }
    let revision = match &answer {
        Ok(KvReply::Put(_, revision) | KvReply::Delete(_, revision)) => Some(*revision),
        Ok(KvReply::Txn(txn)) => Some(txn.revision),
        _ => None,
    };
    Err(KvFailure::AnswerTooLarge {
        len,
        max: max_frame,
        revision,
    })
}

/// The server operation a client request asks for.
fn client_op(request: KvRequest) -> Result<ClientOp, KvFailure> {
    Ok(match request {
        KvRequest::Range {
            request,
            linearizable,
        } => ClientOp::Read {
            request,
            linearizable,
        },
        KvRequest::KeepAlive(id) => ClientOp::KeepAlive(id),
        KvRequest::OpenSession { ttl_ms } => ClientOp::OpenSession { ttl_ms },
        KvRequest::SessionKeepAlive(id) => ClientOp::SessionKeepAlive(id),
        KvRequest::InSession {
            session,
            seq,
            acked,
            request,
        } => ClientOp::SessionWrite {
            session,
            seq,
            acked,
            command: write_command(*request)?,
        },
        write => ClientOp::Write(write_command(write)?),
    })
}

/// The replicated command of a write request.
fn write_command(request: KvRequest) -> Result<Command, KvFailure> {
    Ok(match request {
        KvRequest::Put(put) => Command::Put(put),
        KvRequest::Delete(delete) => Command::Delete(delete),
        KvRequest::Txn(txn) => Command::Txn(txn),
        KvRequest::LeaseGrant { id, ttl_ms } => Command::LeaseGrant { id, ttl_ms },
        KvRequest::LeaseRevoke(id) => Command::LeaseRevoke { id },
        KvRequest::Compact(revision) => Command::Compact { revision },
        KvRequest::Range { .. }
        | KvRequest::KeepAlive(_)
        | KvRequest::OpenSession { .. }
        | KvRequest::SessionKeepAlive(_)
        | KvRequest::InSession { .. }
        | KvRequest::Voters
        | KvRequest::AddVoter(_)
        | KvRequest::RemoveVoter(_) => {
            return Err(KvFailure::Refused(crate::kv::KvError::NotInSession))
        }
    })
}

async fn answer(bus: &EventBus, me: &str, request: Request) -> Response {
    match request {
        Request::Topology => match bus.topology().await {
            Ok(topology) => Response::Topology(topology_info(&topology, me)),
            Err(e) => Response::Error(e.to_string()),
        },
        Request::Publish { topic, payload } => match bus.publish(&topic, payload).await {
            Ok(event) => Response::Published {
                origin: event.origin.to_string(),
                seq: event.seq,
            },
            Err(e) => Response::Error(e.to_string()),
        },
        Request::Kv(_) | Request::Cache(_) => {
            Response::Error("key-value and cache requests are answered elsewhere".into())
        }
    }
}

async fn serve_stream(
    bus: Option<EventBus>,
    kv: Option<Kv>,
    cache: Option<Cache>,
    me: String,
    caller: PeerKind,
    mut stream: FramedStream,
) {
    let request = match stream.recv::<StreamRequest>().await {
        Ok(Some(request)) => request,
        _ => return,
    };
    if let Err(denied) = access::check(caller, Access::of_stream(&request)) {
        let _ = stream.send(&StreamItem::Error(denied.to_string())).await;
        stream.finish();
        return;
    }
    if let StreamRequest::Watch(request) = request {
        return serve_watch(kv, request, stream).await;
    }
    if let StreamRequest::CacheEvents { namespace } = request {
        return serve_cache_events(cache, &namespace, stream).await;
    }
    let Some(bus) = bus else {
        let _ = stream
            .send(&StreamItem::Error(
                "node not ready: the event bus is starting".into(),
            ))
            .await;
        stream.finish();
        return;
    };
    match request {
        StreamRequest::Watch(_) | StreamRequest::CacheEvents { .. } => {}
        StreamRequest::WatchTopology { from } => {
            // A resume point from another node cannot be honoured here.
            let resumed_elsewhere = from.as_ref().is_some_and(|(node, _)| *node != me);
            let from = from.and_then(|(node, version)| (node == me).then_some(version));
            let Ok(mut watch) = bus.watch_topology(from).await else {
                return;
            };
            while let Some(update) = watch.next().await {
                let item = match update {
                    TopologyUpdate::Snapshot { topology, fresh } => StreamItem::Snapshot {
                        topology: topology_info(&topology, &me),
                        fresh: fresh || resumed_elsewhere,
                    },
                    TopologyUpdate::Delta { version, change } => StreamItem::Delta {
                        version,
                        change: match change {
                            TopologyChange::Member(m) => Change::Member(member_info(&m)),
                            TopologyChange::Leader(l) => {
                                Change::Leader(l.map(|(n, e)| (n.to_string(), e.0)))
                            }
                        },
                    },
                };
                if stream.send(&item).await.is_err() {
                    return;
                }
            }
        }
        StreamRequest::Subscribe { topic } => {
            let mut subscription = bus.subscribe(Filter::Topic(topic));
            while let Some(received) = subscription.recv().await {
                let Received::Event(Event::User(event)) = received else {
                    continue;
                };
                let item = StreamItem::Event {
                    origin: event.origin.to_string(),
                    seq: event.seq,
                    lamport: event.lamport,
                    topic: event.topic,
                    payload: event.payload,
                };
                if stream.send(&item).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Forwards a cache namespace's entry events (of the partitions this node
/// owns) until either side ends it; a subscriber that fell behind gets an
/// error item and the end of the stream.
async fn serve_cache_events(cache: Option<Cache>, namespace: &str, mut stream: FramedStream) {
    let events = match cache {
        Some(cache) => cache.subscribe(namespace).await,
        None => Err(CacheError::NotReady("the cache is starting".into())),
    };
    let mut events = match events {
        Ok(events) => events,
        Err(e) => {
            let _ = stream.send(&StreamItem::Error(e.to_string())).await;
            stream.finish();
            return;
        }
    };
    // An empty batch first: the client knows it is subscribed from here.
    if stream
        .send(&StreamItem::CacheEvents(Vec::new()))
        .await
        .is_err()
    {
        return;
    }
    let (mut tx, mut rx) = stream.split();
    loop {
        tokio::select! {
            batch = events.recv() => {
                let item = match batch {
                    Some(batch) => StreamItem::CacheEvents(batch),
                    None => StreamItem::Error(
                        "the event stream ended (fell behind, or the namespace was dropped)".into(),
                    ),
                };
                let last = matches!(item, StreamItem::Error(_));
                if tx.send(&item).await.is_err() || last {
                    break;
                }
            }
            // The client sends nothing after its request: this is its end.
            _ = rx.recv::<StreamRequest>() => break,
        }
    }
}

/// Forwards a key-value watch to the client until either side ends it.
async fn serve_watch(kv: Option<Kv>, request: WatchRequest, mut stream: FramedStream) {
    let watch = match kv {
        Some(kv) => kv.watch(request).await,
        None => None,
    };
    let Some(mut watch) = watch else {
        let _ = stream
            .send(&StreamItem::Error(
                "node not ready: the key-value store is starting".into(),
            ))
            .await;
        stream.finish();
        return;
    };
    // The client sends nothing after its request: its side ending (it
    // dropped the watch) or failing ends the watch at once, not at the next
    // change.
    let (mut tx, mut rx) = stream.split();
    loop {
        tokio::select! {
            item = watch.recv() => {
                let Some(item) = item else { break };
                let (item, last) = match item {
                    WatchItem::Events(events) => {
                        // Parts first, if the events would not fit in one frame.
                        let (parts, rest) = split_events(events);
                        let mut sent = true;
                        for part in parts {
                            sent = sent && tx.send(&StreamItem::KvEventsPart(part)).await.is_ok();
                        }
                        if !sent {
                            break;
                        }
                        (StreamItem::KvEvents(rest), false)
                    }
                    WatchItem::Cancelled(reason) => (StreamItem::WatchCancelled(reason), true),
                };
                if tx.send(&item).await.is_err() || last {
                    break;
                }
            }
            _ = rx.recv::<StreamRequest>() => break,
        }
    }
    tx.finish();
}

/// Most bytes of events in one frame of a watch stream, well under the
/// transport's 4 MiB frame.
const WATCH_FRAME_BYTES: usize = 1 << 20;

/// Cuts `events` into parts of about [`WATCH_FRAME_BYTES`] each: the parts
/// to send first, and the last one.
fn split_events(
    mut events: Vec<crate::kv::Event>,
) -> (Vec<Vec<crate::kv::Event>>, Vec<crate::kv::Event>) {
    let size = |e: &crate::kv::Event| {
        let kv =
            |kv: &crate::kv::KeyValue| crate::kv::encoded_kv_bytes(kv.key.len(), kv.value.len());
        kv(&e.kv) + e.prev_kv.as_ref().map_or(0, kv)
    };
    let mut parts = Vec::new();
    loop {
        let mut bytes = 0;
        let cut = events
            .iter()
            .position(|e| {
                bytes += size(e);
                bytes > WATCH_FRAME_BYTES
            })
            .map(|i| i.max(1));
        match cut {
            Some(cut) if cut < events.len() => {
                let rest = events.split_off(cut);
                parts.push(std::mem::replace(&mut events, rest));
            }
            _ => return (parts, events),
        }
    }
}

/// A member as clients see it.
pub fn member_info(m: &Member) -> MemberInfo {
    MemberInfo {
        name: m.name.to_string(),
        addr: m.addr,
        state: m.state.as_str().to_owned(),
        voter: m.voter,
        priority: m.priority,
        incarnation: m.incarnation.0,
        tags: m.tags.clone(),
    }
}

fn topology_info(topology: &Topology, me: &str) -> TopologyInfo {
    TopologyInfo {
        version: topology.version,
        node: me.to_owned(),
        members: topology.members.iter().map(member_info).collect(),
        leader: topology.leader.as_ref().map(|(n, e)| (n.to_string(), e.0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_refuses_past_its_limit_until_a_request_finishes() {
        let admission = Admission::new(2);
        let first = admission.admit().expect("first admitted");
        let _second = admission.admit().expect("second admitted");
        assert_eq!(
            admission.admit().err(),
            Some(KvFailure::Overloaded { limit: 2 })
        );
        drop(first);
        assert!(admission.admit().is_ok(), "a finished request frees a slot");
    }
}
