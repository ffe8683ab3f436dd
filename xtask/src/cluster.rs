//! `cargo xtask cluster`: a local cluster in one process, for trying things.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use clustron_membership::{Membership, Notification, Options};
use clustron_transport::{
    CertRequest, CertificateAuthority, Endpoint, TlsIdentity, TransportConfig,
};

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
    let mut endpoints = Vec::new();
    let mut members = Vec::new();
    let mut seed: Option<SocketAddr> = None;
    for i in 1..=nodes {
        let name = format!("n{i}");
        let identity = TlsIdentity::from_files(
            &dir.join("ca.pem"),
            &dir.join(format!("{name}.pem")),
            &dir.join(format!("{name}.key")),
        )?;
        let port = if port == 0 { 0 } else { port + i as u16 - 1 };
        let listen = SocketAddr::from(([127, 0, 0, 1], port));
        let endpoint = Endpoint::bind(TransportConfig::new(listen), identity)
            .with_context(|| format!("starting {name} on {listen}"))?;
        let options = Options {
            seeds: seed.into_iter().collect(),
            priority: (nodes - i) as u32,
            ..Options::default()
        };
        let membership = Membership::start(&endpoint, options).await?;
        println!("{name} listening on {}", endpoint.local_addr());
        seed.get_or_insert(endpoint.local_addr());
        endpoints.push(endpoint);
        members.push(membership);
    }
    let first = &members[0];
    let mut changes = first.subscribe();
    println!();
    println!(
        "{:<6} {:<22} {:<8} {:>8} {:>5}",
        "NAME", "ADDRESS", "STATE", "PRIORITY", "INC"
    );
    for m in first.members().await? {
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
        }
    }
    println!("leaving...");
    for membership in members.iter().rev() {
        let _ = tokio::time::timeout(Duration::from_secs(3), membership.leave()).await;
    }
    for endpoint in &endpoints {
        endpoint.close().await;
    }
    println!("stopped");
    Ok(())
}
