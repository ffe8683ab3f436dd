//! `cargo xtask cluster`: a local cluster in one process, for trying things:
//! transport, membership and election per node (the first three vote),
//! assembled by `clustron-node`, with the member table and every membership
//! and leadership change printed.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, Result};
use clustron_election::LeadershipEvent;
use clustron_node::{Elect, Node, NodeBuilder};
use clustron_transport::{CertRequest, CertificateAuthority, Notification, TlsIdentity};

/// Runs `nodes` nodes on 127.0.0.1 until Ctrl-C.
pub fn run(nodes: usize, dir: &Path, port: u16) -> Result<()> {
    anyhow::ensure!(
        (1..=64).contains(&nodes),
        "--nodes must be 1..=64, not {nodes}"
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run_async(nodes, dir, port))
}

fn certificates(dir: &Path, nodes: usize) -> Result<()> {
    let ca = if dir.join("ca.pem").exists() {
        CertificateAuthority::load(dir).context("loading the dev CA")?
    } else {
        let ca = CertificateAuthority::generate("Clustron dev CA")?;
        ca.save(dir)?;
        println!("created a CA in {}", dir.display());
        ca
    };
    for i in 1..=nodes {
        let name = format!("n{i}");
        if !dir.join(format!("{name}.pem")).exists() {
            let request = CertRequest::node(&name)?.ip("127.0.0.1".parse()?);
            ca.issue(&request)?.save(dir, &name)?;
        }
    }
    Ok(())
}

async fn run_async(nodes: usize, dir: &Path, port: u16) -> Result<()> {
    certificates(dir, nodes)?;
    // The first three nodes (or all, if fewer) vote; the rest follow.
    let voting = nodes.min(3);
    let voter_names: Vec<String> = (1..=voting).map(|i| format!("n{i}")).collect();
    let mut running: Vec<Node> = Vec::new();
    for i in 1..=nodes {
        let name = format!("n{i}");
        let identity = TlsIdentity::from_files(
            &dir.join("ca.pem"),
            &dir.join(format!("{name}.pem")),
            &dir.join(format!("{name}.key")),
        )?;
        let port = if port == 0 { 0 } else { port + i as u16 - 1 };
        let listen = SocketAddr::from(([127, 0, 0, 1], port));
        let elect = Elect::voters(&voter_names)?
            .priority((nodes + 1 - i) as u32)
            .data_dir(dir.join("data").join(&name));
        let node = NodeBuilder::new(identity)
            .listen(listen)
            .seeds(running.first().map(Node::local_addr))
            .elect(elect)
            .start()
            .await
            .with_context(|| format!("starting {name} on {listen}"))?;
        println!("{name} listening on {}", node.local_addr());
        running.push(node);
    }
    let first = &running[0];
    let mut changes = first.membership().subscribe();
    let mut leadership = first
        .election()
        .context("n1 runs the election")?
        .subscribe();
    println!();
    println!(
        "{:<6} {:<22} {:<8} {:>8} {:>5}",
        "NAME", "ADDRESS", "STATE", "PRIORITY", "INC"
    );
    for m in first.membership().members().await? {
        println!(
            "{:<6} {:<22} {:<8} {:>8} {:>5}",
            m.name.as_str(),
            m.addr.to_string(),
            m.state.as_str(),
            m.priority,
            m.incarnation.0
        );
    }
    println!();
    println!("watching membership from n1; Ctrl-C stops the cluster (each node leaves gracefully)");
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            note = changes.recv() => match note {
                Some(Notification::Event(event)) => {
                    let m = event.member();
                    println!("{} {} ({}, incarnation {})", m.name, event.kind(), m.addr, m.incarnation);
                }
                Some(Notification::Lagged(n)) => println!("(missed {n} changes)"),
                None => break,
            },
            note = leadership.recv() => match note {
                Some(Notification::Event(LeadershipEvent::Leader { name, epoch })) => println!("leader: {name} (epoch {})", epoch.0),
                Some(Notification::Event(LeadershipEvent::LeaderLost)) => println!("no leader known"),
                Some(Notification::Event(_)) => {}
                Some(Notification::Lagged(n)) => println!("(missed {n} leadership changes)"),
                None => break,
            },
        }
    }
    println!("leaving...");
    // The leader last, so it hands over once instead of at every departure.
    for node in running.iter().rev() {
        node.leave().await;
    }
    println!("stopped");
    Ok(())
}
