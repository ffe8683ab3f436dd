//! Membership over real transports on 127.0.0.1: failures, leaves, joins
//! through partly-down seeds, name conflicts and restarts.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use clustron_membership::{Error, Member, MemberState, Membership, NodeName, Options};
use clustron_transport::{
    CertRequest, CertificateAuthority, Endpoint, TlsIdentity, TransportConfig,
};
use tokio::time::Instant;

const DEADLINE: Duration = Duration::from_secs(30);

struct Pki(CertificateAuthority);

impl Pki {
    fn new() -> Self {
        Self(CertificateAuthority::generate("membership test").unwrap())
    }

    fn identity(&self, name: &str) -> TlsIdentity {
        let cert = self.0.issue(&CertRequest::node(name).unwrap()).unwrap();
        TlsIdentity::from_certified(self.0.cert_pem(), &cert).unwrap()
    }

    fn endpoint(&self, name: &str, listen: SocketAddr) -> Endpoint {
        Endpoint::bind(TransportConfig::new(listen), self.identity(name)).unwrap()
    }
}

fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn seeds(seeds: Vec<SocketAddr>) -> Options {
    Options {
        seeds,
        ..Options::default()
    }
}

/// Polls `check` until it holds or the deadline passes.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + DEADLINE;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn state_of(node: &Membership, name: &str) -> Option<MemberState> {
    let name = NodeName::new(name).unwrap();
    node.member(&name)
        .await
        .ok()
        .flatten()
        .map(|m: Member| m.state)
}

async fn all_see(nodes: &[&Membership], name: &str, state: MemberState) -> bool {
    for node in nodes {
        if state_of(node, name).await != Some(state) {
            return false;
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_see_a_shutdown_as_dead_and_a_leave_as_left() {
    let pki = Pki::new();
    let endpoints: Vec<Endpoint> = (1..=5)
        .map(|i| pki.endpoint(&format!("n{i}"), any_port()))
        .collect();
    let seed = endpoints[0].local_addr();
    let mut nodes = vec![Membership::start(&endpoints[0], Options::default())
        .await
        .unwrap()];
    for endpoint in &endpoints[1..] {
        nodes.push(
            Membership::start(endpoint, seeds(vec![seed]))
                .await
                .unwrap(),
        );
    }
    tracing::info!("every node sees five alive members");
    eventually("all five see five alive", || async {
        for node in &nodes {
            let members = node.members().await.unwrap();
            if members
                .iter()
                .filter(|m| m.state == MemberState::Alive)
                .count()
                != 5
            {
                return false;
            }
        }
        true
    })
    .await;

    tracing::info!("n5 stops without a word: the others see it dead");
    let mut watch = nodes[0].subscribe();
    nodes[4].shutdown().await;
    endpoints[4].close().await;
    let live: Vec<&Membership> = nodes[..4].iter().collect();
    eventually("n1..n4 see n5 dead", || {
        all_see(&live, "n5", MemberState::Dead)
    })
    .await;
    let mut saw_failed = false;
    while let Ok(Some(note)) = tokio::time::timeout(Duration::from_millis(10), watch.recv()).await {
        if let clustron_membership::Notification::Event(clustron_membership::MemberEvent::Failed(
            m,
        )) = note
        {
            saw_failed |= m.name.as_str() == "n5";
        }
    }
    assert!(saw_failed, "the subscriber was told n5 failed");

    tracing::info!("n4 leaves gracefully: the others see it left");
    nodes[3].leave().await.unwrap();
    let live: Vec<&Membership> = nodes[..3].iter().collect();
    eventually("n1..n3 see n4 left", || {
        all_see(&live, "n4", MemberState::Left)
    })
    .await;
    let health = nodes[0].health().await.unwrap();
    assert_eq!((health.alive, health.dead, health.left), (3, 1, 1));
    assert!(!health.round_trips.is_empty());
}

#[tokio::test]
async fn a_join_succeeds_when_some_seeds_are_down() {
    let pki = Pki::new();
    let (a, b) = (pki.endpoint("a", any_port()), pki.endpoint("b", any_port()));
    let first = Membership::start(&a, Options::default()).await.unwrap();
    // A port nobody listens on, then the live seed.
    let dead_seed: SocketAddr = {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.local_addr().unwrap()
    };
    let second = Membership::start(&b, seeds(vec![dead_seed, a.local_addr()]))
        .await
        .unwrap();
    assert_eq!(second.members().await.unwrap().len(), 2);
    eventually("a sees b", || async {
        state_of(&first, "b").await == Some(MemberState::Alive)
    })
    .await;
}

#[tokio::test]
async fn a_join_with_only_dead_seeds_times_out_with_a_clear_error() {
    let pki = Pki::new();
    let a = pki.endpoint("a", any_port());
    let dead_seed: SocketAddr = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let options = Options {
        seeds: vec![dead_seed],
        join_timeout: Duration::from_millis(800),
        ..Options::default()
    };
    match Membership::start(&a, options).await {
        Err(Error::JoinTimeout { seeds, .. }) => assert_eq!(seeds, vec![dead_seed]),
        other => panic!("expected a join timeout, got {other:?}"),
    }
}

#[tokio::test]
async fn a_second_node_claiming_an_existing_name_is_refused() {
    let pki = Pki::new();
    let (a, b) = (pki.endpoint("a", any_port()), pki.endpoint("b", any_port()));
    let _first = Membership::start(&a, Options::default()).await.unwrap();
    let _second = Membership::start(&b, seeds(vec![a.local_addr()]))
        .await
        .unwrap();
    let impostor = pki.endpoint("b", any_port());
    match Membership::start(&impostor, seeds(vec![a.local_addr()])).await {
        Err(Error::JoinRefused { reason, .. }) => {
            assert!(reason.contains("already used"), "{reason}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_rejoins_with_a_higher_incarnation() {
    let pki = Pki::new();
    let a = pki.endpoint("a", any_port());
    let first = Membership::start(&a, Options::default()).await.unwrap();
    let b = pki.endpoint("b", any_port());
    let b_addr = b.local_addr();
    let second = Membership::start(&b, seeds(vec![a.local_addr()]))
        .await
        .unwrap();
    second.shutdown().await;
    b.close().await;
    drop(b);
    eventually("a sees b dead", || async {
        state_of(&first, "b").await == Some(MemberState::Dead)
    })
    .await;

    let deadline = Instant::now() + DEADLINE;
    let b = loop {
        match Endpoint::bind(TransportConfig::new(b_addr), pki.identity("b")) {
            Ok(endpoint) => break endpoint,
            Err(e) => assert!(Instant::now() < deadline, "cannot rebind: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let again = Membership::start(&b, seeds(vec![a.local_addr()]))
        .await
        .unwrap();
    eventually("b is alive again with a higher incarnation", || async {
        let name = NodeName::new("b").unwrap();
        matches!(first.member(&name).await, Ok(Some(m)) if m.state == MemberState::Alive && m.incarnation.0 > 0)
    })
    .await;
    assert!(again.local().await.unwrap().incarnation.0 > 0);
}

#[tokio::test]
async fn a_lagging_subscriber_is_told_it_lagged() {
    let pki = Pki::new();
    let a = pki.endpoint("a", any_port());
    let options = Options {
        event_buffer: 1,
        ..Options::default()
    };
    let first = Membership::start(&a, options).await.unwrap();
    let mut slow = first.subscribe();
    let mut others = Vec::new();
    for name in ["b", "c", "d"] {
        let endpoint = pki.endpoint(name, any_port());
        let membership = Membership::start(&endpoint, seeds(vec![a.local_addr()]))
            .await
            .unwrap();
        others.push((endpoint, membership));
    }
    eventually("a sees four alive", || async {
        first.health().await.map(|h| h.alive == 4).unwrap_or(false)
    })
    .await;
    let mut lagged = false;
    while let Ok(Some(note)) = tokio::time::timeout(Duration::from_millis(500), slow.recv()).await {
        lagged |= matches!(note, clustron_membership::Notification::Lagged(n) if n > 0);
    }
    assert!(
        lagged,
        "three joins into a one-event buffer were not reported as lag"
    );
}
