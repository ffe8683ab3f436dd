//! Membership + the event bus: cluster-wide user events. Three nodes on
//! 127.0.0.1 run the bus (no election); each subscribes to the topic
//! `deploys`. `n2` publishes three events and `n3` one on another topic;
//! every node prints what it receives: each `deploys` event once, in `n2`'s
//! order, with its sequence number and Lamport time, and nothing of the
//! other topic. Exits by itself.
//!
//! `cargo run -p clustron-examples --example user_events`

use std::time::Duration;

use clustron_node::events::{Event, Filter, Received, Subscription};
use clustron_node::transport::CertificateAuthority;
use clustron_node::Node;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Runs the example to the end (the smoke test calls it too).
#[tokio::main(flavor = "current_thread")]
pub async fn main() -> Result<(), Error> {
    let ca = CertificateAuthority::generate("user events example")?;
    let mut nodes: Vec<Node> = Vec::new();
    let mut subscriptions = Vec::new();
    for name in ["n1", "n2", "n3"] {
        let node = Node::builder(ca.node_identity(name)?)
            .seeds(nodes.first().map(Node::local_addr))
            .events(Default::default())
            .start()
            .await?;
        let bus = node.events().ok_or("no event bus")?;
        subscriptions.push((name, bus.subscribe(Filter::Topic("deploys".into()))));
        nodes.push(node);
    }
    // A publisher sends to the members it knows; wait until every node
    // knows all three (anti-entropy would repair a miss, a second later).
    for node in &nodes {
        tokio::time::timeout(Duration::from_secs(30), async {
            while node.membership().members().await.map_or(0, |m| m.len()) < 3 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .map_err(|_| "the cluster did not form within 30 s")?;
    }

    let n2 = nodes[1].events().ok_or("no event bus")?;
    for version in ["v1", "v2", "v3"] {
        n2.publish("deploys", version.as_bytes().to_vec()).await?;
    }
    let n3 = nodes[2].events().ok_or("no event bus")?;
    n3.publish("chat", b"not a deploy".to_vec()).await?;

    for (name, subscription) in &mut subscriptions {
        receive(name, subscription, 3).await?;
    }
    for node in nodes.iter().rev() {
        node.leave().await;
    }
    Ok(())
}

/// Prints `count` events from `subscription`, waiting at most 30 s.
async fn receive(name: &str, subscription: &mut Subscription, count: usize) -> Result<(), Error> {
    for _ in 0..count {
        let received = tokio::time::timeout(Duration::from_secs(30), subscription.recv())
            .await
            .map_err(|_| format!("{name}: an event did not come within 30 s"))?;
        match received {
            Some(Received::Event(Event::User(event))) => println!(
                "{name}: {} {} from {} (seq {}, lamport {})",
                event.topic,
                String::from_utf8_lossy(&event.payload),
                event.origin,
                event.seq,
                event.lamport
            ),
            Some(Received::Event(Event::Gap { origin, missed })) => {
                println!("{name}: lost events {missed:?} of {origin}")
            }
            Some(other) => println!("{name}: {other:?}"),
            None => return Err(format!("{name}: the bus stopped").into()),
        }
    }
    Ok(())
}
