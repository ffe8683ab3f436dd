//! `cargo xtask cluster`: a local cluster in one process, for trying things:
//! transport, membership and election per node (the first three vote), with
//! the member table and every membership and leadership change printed.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use clustron_election::{Election, LeadershipEvent, Voter, VoterSet};
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
        println!("{name} listening on {}", endpoint.local_addr());
        endpoints.push(endpoint);
    }
    // The first three nodes (or all, if fewer) vote; the rest follow.
    let voting = nodes.min(3);
    let voters = VoterSet::new(endpoints[..voting].iter().map(|e| Voter {
        name: e.identity().name.clone(),
        addr: e.local_addr(),
    }));
    let seed = endpoints[0].local_addr();
    let mut members = Vec::new();
    let mut elections = Vec::new();
    for (index, endpoint) in endpoints.iter().enumerate() {
        let options = Options {
            seeds: if index == 0 { vec![] } else { vec![seed] },
            priority: (nodes - index) as u32,
            voter: index < voting,
            ..Options::default()
        };
        let membership = Membership::start(endpoint, options).await?;
        let election = Election::start(
            endpoint,
            &membership,
            clustron_election::Options {
                config: clustron_election::Config::lan(),
                voters: voters.clone(),
                data_dir: dir.join("data").join(endpoint.identity().name.as_str()),
                hook: None,
                withdrawn: None,
            },
        )
        .await?;
        members.push(membership);
        elections.push(election);
    }
    let first = &members[0];
    let mut changes = first.subscribe();
    let mut leadership = elections[0].subscribe();
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
            event = leadership.recv() => match event {
                Ok(LeadershipEvent::Leader { name, epoch }) => println!("leader: {name} (epoch {})", epoch.0),
                Ok(LeadershipEvent::LeaderLost) => println!("no leader known"),
                Ok(_) => {}
                Err(_) => {}
            },
        }
    }
    println!("leaving...");
    for election in &elections {
        election.shutdown().await;
    }
    for membership in members.iter().rev() {
        let _ = tokio::time::timeout(Duration::from_secs(3), membership.leave()).await;
    }
    for endpoint in &endpoints {
        endpoint.close().await;
    }
    println!("stopped");
    Ok(())
}
