//! The driver with storages other than files: in memory when no directory
//! is given, and any `Storage` implementation, whose failure withdraws the
//! node instead of letting a grant leave unpersisted.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::net::SocketAddr;
use std::time::Duration;

use clustron_election::{
    Election, Options, Persisted, Promise, Storage, Voter, VoterRecord, VoterSet,
};
use clustron_membership::{Membership, NodeName, Options as MembershipOptions};
use clustron_transport::{CertificateAuthority, Endpoint, TransportConfig};

const DEADLINE: Duration = Duration::from_secs(20);

async fn alone(name: &str) -> (Endpoint, Membership) {
    let ca = CertificateAuthority::generate("test").unwrap();
    let listen = SocketAddr::from(([127, 0, 0, 1], 0));
    let endpoint = Endpoint::bind(
        TransportConfig::new(listen),
        ca.node_identity(name).unwrap(),
    )
    .unwrap();
    let membership = Membership::start(&endpoint, MembershipOptions::default())
        .await
        .unwrap();
    (endpoint, membership)
}

fn only(name: &str) -> VoterSet {
    VoterSet::new([Voter::unaddressed(NodeName::new(name).unwrap())])
}

#[tokio::test]
async fn without_a_data_dir_a_single_voter_elects_itself_from_memory() {
    let (endpoint, membership) = alone("a").await;
    let options = Options {
        voters: only("a"),
        ..Options::default()
    };
    assert!(options.data_dir.is_none());
    let election = Election::start(&endpoint, &membership, options)
        .await
        .unwrap();
    let leader = election.wait_for_leader(DEADLINE).await.unwrap();
    assert!(leader.is_local);
    assert_eq!(leader.addr, Some(endpoint.local_addr()));
    assert!(election.leads(leader.epoch));
    election.shutdown().await;
    membership.shutdown().await;
}

/// A disk that refuses every write.
struct Broken;

#[derive(Debug, thiserror::Error)]
#[error("disk on fire")]
struct OnFire;

impl Storage for Broken {
    type Error = OnFire;
    fn save_promise(&mut self, _: &Promise) -> Result<(), OnFire> {
        Err(OnFire)
    }
    fn save_voters(&mut self, _: &VoterRecord) -> Result<(), OnFire> {
        Err(OnFire)
    }
    fn load(&self) -> Result<Persisted, OnFire> {
        Ok(Persisted::default())
    }
}

#[tokio::test]
async fn a_storage_that_cannot_keep_a_promise_withdraws_the_node_and_says_why() {
    let (endpoint, membership) = alone("a").await;
    let options = Options {
        voters: only("a"),
        ..Options::default()
    };
    let election = Election::start_with_storage(&endpoint, &membership, options, Broken)
        .await
        .unwrap();
    tokio::time::timeout(DEADLINE, async {
        while election.withdrawn().is_none() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    let reason = election.withdrawn().unwrap();
    assert!(reason.contains("disk on fire"), "{reason}");
    // Its own vote was never kept, so it never led.
    assert!(election.lease().is_none());
    election.shutdown().await;
    membership.shutdown().await;
}
