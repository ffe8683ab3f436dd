//! The node's side of the client protocol ([`crate::proto`]), bridging
//! requests and streams to the event bus.

use clustron_events::{
    Event, EventBus, Filter, Received, Topology, TopologyChange, TopologyUpdate,
};
use clustron_membership::Member;
use clustron_transport::{FramedStream, Inbound};

use crate::node::Node;
use crate::proto::{
    Change, ClientProtocol, MemberInfo, Request, Response, StreamItem, StreamRequest, TopologyInfo,
};

/// Serves client requests and streams in the background.
pub fn start(node: &Node) -> Result<(), clustron_transport::Error> {
    let mut inbox = node.endpoint.register::<ClientProtocol>()?;
    let node = node.clone();
    tokio::spawn(async move {
        while let Some(item) = inbox.recv().await {
            let bus = node.bus.borrow().clone();
            let me = node.membership.name().to_string();
            match item {
                Inbound::Request { request, reply, .. } => {
                    tokio::spawn(async move {
                        let response = match bus {
                            None => {
                                Response::Error("node not ready: the event bus is starting".into())
                            }
                            Some(bus) => answer(&bus, &me, request).await,
                        };
                        reply.send(&response);
                    });
                }
                Inbound::Stream { stream, .. } => {
                    tokio::spawn(async move {
                        match bus {
                            None => {
                                let mut stream = stream;
                                let _ = stream
                                    .send(&StreamItem::Error(
                                        "node not ready: the event bus is starting".into(),
                                    ))
                                    .await;
                                stream.finish();
                            }
                            Some(bus) => serve_stream(bus, me, stream).await,
                        }
                    });
                }
                Inbound::Message { .. } => {}
            }
        }
    });
    Ok(())
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
    }
}

async fn serve_stream(bus: EventBus, me: String, mut stream: FramedStream) {
    let request = match stream.recv::<StreamRequest>().await {
        Ok(Some(request)) => request,
        _ => return,
    };
    match request {
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
