//! Membership only: three nodes form a cluster on 127.0.0.1, and `n1` prints
//! every change it sees: `n2` and `n3` joining, `n3` leaving gracefully, `n2`
//! failing (killed without a word). Exits by itself once it has seen them.
//!
//! `cargo run -p clustron-examples --example membership`

use std::time::Duration;

use clustron_node::membership::{MemberEvent, Subscription};
use clustron_node::transport::{CertificateAuthority, Notification};
use clustron_node::Node;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Runs the example to the end (the smoke test calls it too).
#[tokio::main(flavor = "current_thread")]
pub async fn main() -> Result<(), Error> {
    // Every node needs a certificate from the cluster's CA; a real
    // deployment loads PEM files (`TlsIdentity::from_files`) instead.
    let ca = CertificateAuthority::generate("membership example")?;
    let n1 = Node::builder(ca.node_identity("n1")?).start().await?;
    let mut changes = n1.membership().subscribe();
    let n2 = Node::builder(ca.node_identity("n2")?)
        .seeds([n1.local_addr()])
        .start()
        .await?;
    let n3 = Node::builder(ca.node_identity("n3")?)
        .seeds([n1.local_addr()])
        .start()
        .await?;
    until(&mut changes, 2, |e| matches!(e, MemberEvent::Joined(_))).await?;

    println!("members as n1 sees them:");
    for m in n1.membership().members().await? {
        println!("  {:<3} {:<16} {}", m.name, m.addr, m.state);
    }

    println!("n3 leaves gracefully");
    n3.leave().await;
    until(&mut changes, 1, |e| matches!(e, MemberEvent::Left(_))).await?;

    println!("n2 is killed; n1 suspects it, then declares it failed");
    n2.kill().await;
    until(&mut changes, 1, |e| matches!(e, MemberEvent::Failed(_))).await?;

    n1.leave().await;
    Ok(())
}

/// Prints changes until `count` of them match `wanted`, for at most 30 s.
async fn until(
    changes: &mut Subscription,
    count: usize,
    wanted: impl Fn(&MemberEvent) -> bool,
) -> Result<(), Error> {
    let mut seen = 0;
    tokio::time::timeout(Duration::from_secs(30), async {
        while seen < count {
            match changes.recv().await {
                Some(Notification::Event(event)) => {
                    let m = event.member();
                    println!(
                        "  n1 sees: {} {} (incarnation {})",
                        m.name,
                        event.kind(),
                        m.incarnation
                    );
                    seen += usize::from(wanted(&event));
                }
                // Fell behind: a real product would read `members()` again.
                Some(Notification::Lagged(n)) => println!("  (missed {n} changes)"),
                None => return Err("membership stopped".into()),
            }
        }
        Ok(())
    })
    .await
    .map_err(|_| "the expected changes did not come within 30 s")?
}
