//! Membership + election: a service that only the leader runs, with
//! failover. Three voters on 127.0.0.1 (`n1` has the highest priority and
//! leads); every node prints its leadership changes. A client on `n3` asks
//! the leader for the next ticket number, through `ToLeader` (the leader's
//! address, its epoch for fencing, retries, deadlines). Then the leader is
//! killed: `n2` takes over after the lease runs out, and the client's next
//! call reaches it without the client doing anything. Exits by itself.
//!
//! The counter lives only in the leader's memory, so the new leader starts
//! again from its own (zero): making it survive failover is what a
//! replicated log (`clustron-log`, see `replicated_counter.rs`) is for.
//!
//! `cargo run -p clustron-examples --example leader_service`

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use clustron_node::election::{Election, Epoch, LeadershipEvent, Notification};
use clustron_node::transport::{CertificateAuthority, ChannelId, Protocol};
use clustron_node::{Elect, Node};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The product's own channel: a request carries the epoch it was routed
/// for; the answer is the ticket and who issued it.
struct Tickets;

impl Protocol for Tickets {
    const CHANNEL: ChannelId = ChannelId(ChannelId::FIRST_PRODUCT.0 + 1);
    type Request = Epoch;
    type Response = (String, u64);
    type Message = ();
}

/// Runs the example to the end (the smoke test calls it too).
#[tokio::main(flavor = "current_thread")]
pub async fn main() -> Result<(), Error> {
    let ca = CertificateAuthority::generate("leader service example")?;
    let mut nodes: Vec<Node> = Vec::new();
    for (name, priority) in [("n1", 30), ("n2", 20), ("n3", 10)] {
        let bound = Node::builder(ca.node_identity(name)?)
            .seeds(nodes.first().map(Node::local_addr))
            .elect(Elect::voters(["n1", "n2", "n3"])?.priority(priority))
            .bind()?;
        // The service is registered before joining, so no peer finds it
        // missing; it answers only while this node leads the epoch asked.
        let election = Arc::new(OnceLock::<Election>::new());
        let tickets = Arc::new(AtomicU64::new(0));
        let (me, elected) = (name.to_owned(), election.clone());
        drop(
            bound
                .endpoint()
                .serve::<Tickets, _, _>(move |_from, epoch| {
                    let leads = elected.get().is_some_and(|e| e.leads(epoch));
                    let ticket = leads.then(|| tickets.fetch_add(1, Ordering::Relaxed) + 1);
                    let me = me.clone();
                    async move {
                        ticket
                            .map(|t| (me, t))
                            .ok_or(format!("not leading epoch {epoch}"))
                    }
                })?,
        );
        let node = bound.start().await?;
        let own = node.election().ok_or("no election")?.clone();
        print_leadership(name, &own);
        let _ = election.set(own);
        nodes.push(node);
    }

    let client = nodes[2].to_leader::<Tickets>().ok_or("no election")?;
    for _ in 0..3 {
        let answer = client.request(|epoch| epoch).await?;
        let (issuer, ticket) = answer.response;
        println!(
            "client: ticket {ticket} from {issuer} (epoch {})",
            answer.leader.epoch
        );
    }

    println!("killing the leader n1");
    nodes[0].kill().await;
    let answer = client.request(|epoch| epoch).await?;
    let (issuer, ticket) = answer.response;
    println!(
        "client: ticket {ticket} from {issuer} (epoch {}) after {} attempt(s)",
        answer.leader.epoch, answer.attempts
    );
    if issuer == "n1" {
        return Err("the killed leader answered".into());
    }
    for node in nodes[1..].iter().rev() {
        node.leave().await;
    }
    Ok(())
}

/// Prints `name`'s leadership changes as they happen.
fn print_leadership(name: &'static str, election: &Election) {
    let mut changes = election.subscribe();
    tokio::spawn(async move {
        while let Some(note) = changes.recv().await {
            match note {
                Notification::Event(LeadershipEvent::Elected { epoch, .. }) => {
                    println!("{name}: elected, epoch {epoch}: serving tickets")
                }
                Notification::Event(LeadershipEvent::SteppedDown { epoch }) => {
                    println!("{name}: stepped down from epoch {epoch}")
                }
                Notification::Event(LeadershipEvent::Leader {
                    name: leader,
                    epoch,
                }) => {
                    println!("{name}: leader is {leader} (epoch {epoch})")
                }
                Notification::Event(_) => {}
                Notification::Lagged(_) => println!("{name}: (missed some changes)"),
            }
        }
    });
}
