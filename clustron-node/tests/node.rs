//! The assembled node over real transports on 127.0.0.1: start-up order,
//! graceful stop with handover, cleanup after a failed start, and requests
//! routed to the leader.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clustron_election::{Epoch, RetryPolicy, RouteError};
use clustron_membership::{MemberEvent, Subscription};
use clustron_node::{Elect, Node, NodeError};
use clustron_transport::{CertificateAuthority, ChannelId, Notification, Protocol};

const DEADLINE: Duration = Duration::from_secs(30);

/// Waits for `check` to hold, polling every 10 ms; panics after [`DEADLINE`].
async fn eventually(what: &str, check: impl Fn() -> bool) {
    tokio::time::timeout(DEADLINE, async {
        while !check() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: not within {DEADLINE:?}"));
}

/// Waits for a membership change matching `wanted`; panics after [`DEADLINE`].
async fn change(changes: &mut Subscription, wanted: impl Fn(&MemberEvent) -> bool) -> MemberEvent {
    tokio::time::timeout(DEADLINE, async {
        loop {
            match changes.recv().await {
                Some(Notification::Event(event)) if wanted(&event) => return event,
                Some(_) => {}
                None => panic!("membership stopped"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no such change within {DEADLINE:?}"))
}

/// Voters `n1..=n3`, priorities falling from `n1`, each joining through `n1`.
async fn three_voters(ca: &CertificateAuthority) -> Vec<Node> {
    let mut nodes: Vec<Node> = Vec::new();
    for (name, priority) in [("n1", 30), ("n2", 20), ("n3", 10)] {
        let node = Node::builder(ca.node_identity(name).unwrap())
            .seeds(nodes.first().map(Node::local_addr))
            .elect(
                Elect::voters(["n1", "n2", "n3"])
                    .unwrap()
                    .priority(priority),
            )
            .start()
            .await
            .unwrap();
        nodes.push(node);
    }
    nodes
}

fn leader_of(node: &Node) -> Option<String> {
    let (name, _) = node.election()?.leader()?;
    Some(name.to_string())
}

#[tokio::test]
async fn a_leader_that_leaves_hands_over_and_is_seen_to_leave_not_to_fail() {
    let ca = CertificateAuthority::generate("test").unwrap();
    let nodes = three_voters(&ca).await;
    eventually("all follow n1", || {
        nodes.iter().all(|n| leader_of(n).as_deref() == Some("n1"))
    })
    .await;
    let mut changes = nodes[1].membership().subscribe();

    tracing::info!("n1 leaves: it hands over to n2 (the next priority) first");
    nodes[0].leave().await;
    eventually("n2 leads", || {
        nodes[1..]
            .iter()
            .all(|n| leader_of(n).as_deref() == Some("n2"))
    })
    .await;
    let seen = change(&mut changes, |e| e.member().name.as_str() == "n1").await;
    assert!(matches!(seen, MemberEvent::Left(_)), "n2 saw {seen:?}");
    for node in nodes[1..].iter().rev() {
        node.leave().await;
    }
}

#[tokio::test]
async fn a_node_whose_election_cannot_start_leaves_again_and_says_which_step_failed() {
    let ca = CertificateAuthority::generate("test").unwrap();
    let n1 = Node::builder(ca.node_identity("n1").unwrap())
        .start()
        .await
        .unwrap();
    let mut changes = n1.membership().subscribe();
    // A file where the election's directory should be.
    let file = std::env::temp_dir().join(format!("clustron-node-test-{}", std::process::id()));
    std::fs::write(&file, b"not a directory").unwrap();
    let failed = Node::builder(ca.node_identity("n2").unwrap())
        .seeds([n1.local_addr()])
        .elect(Elect::voters(["n2"]).unwrap().data_dir(&file))
        .start()
        .await;
    let _ = std::fs::remove_file(&file);
    let err = failed.unwrap_err();
    assert!(matches!(err, NodeError::Election(_)), "{err:?}");
    assert!(err.to_string().contains("starting the election"), "{err}");

    change(&mut changes, |e| matches!(e, MemberEvent::Joined(_))).await;
    let gone = change(&mut changes, |e| e.member().name.as_str() == "n2").await;
    assert!(matches!(gone, MemberEvent::Left(_)), "n1 saw {gone:?}");
    n1.leave().await;
}

/// Requests that take as long as they ask (milliseconds), answered only
/// while the node leads the epoch they carry.
struct Slow;
impl Protocol for Slow {
    const CHANNEL: ChannelId = ChannelId(ChannelId::FIRST_PRODUCT.0 + 50);
    type Request = (Epoch, u64);
    type Response = u64;
    type Message = ();
}

/// A single voter `a` serving `Slow`; returns it and its handler's count.
async fn single_leader(ca: &CertificateAuthority) -> (Node, Arc<AtomicU64>) {
    let bound = Node::builder(ca.node_identity("a").unwrap())
        .elect(Elect::voters(["a"]).unwrap())
        .bind()
        .unwrap();
    let seen = Arc::new(AtomicU64::new(0));
    let counter = seen.clone();
    let inbox = bound
        .endpoint()
        .serve::<Slow, _, _>(move |_, (_epoch, millis)| {
            counter.fetch_add(1, Ordering::Relaxed);
            async move {
                tokio::time::sleep(Duration::from_millis(millis)).await;
                Ok(millis)
            }
        })
        .unwrap();
    drop(inbox);
    let node = bound.start().await.unwrap();
    let election = node.election().unwrap();
    election.wait_for_leader(DEADLINE).await.unwrap();
    (node, seen)
}

#[tokio::test]
async fn a_request_that_times_out_is_sent_again_only_when_idempotent() {
    let ca = CertificateAuthority::generate("test").unwrap();
    let (node, seen) = single_leader(&ca).await;
    let policy = RetryPolicy {
        deadline: Duration::from_secs(2),
        attempt_timeout: Duration::from_millis(100),
        ..RetryPolicy::default()
    };
    let route = node.to_leader::<Slow>().unwrap().with_policy(policy);
    let fast = route.request(|epoch| (epoch, 1)).await.unwrap();
    assert_eq!((fast.response, fast.attempts), (1, 1));
    assert_eq!(fast.leader.name.as_str(), "a");

    tracing::info!("a timeout may come after the handler ran: not retried");
    let err = route.request(|epoch| (epoch, 1_000)).await.unwrap_err();
    assert!(matches!(err, RouteError::Unknown { .. }), "{err:?}");
    assert!(!err.nothing_processed());
    assert_eq!(seen.load(Ordering::Relaxed), 2);

    tracing::info!("the same request marked idempotent is retried until the deadline");
    let err = route
        .idempotent()
        .request(|epoch| (epoch, 1_000))
        .await
        .unwrap_err();
    match err {
        RouteError::DeadlineExceeded { attempts, .. } => assert!(attempts >= 2, "{attempts}"),
        other => panic!("expected the deadline, got {other:?}"),
    }
    assert!(seen.load(Ordering::Relaxed) >= 4);
    node.leave().await;
}

#[tokio::test]
async fn without_a_majority_of_voters_no_leader_is_found_and_nothing_is_sent() {
    let ca = CertificateAuthority::generate("test").unwrap();
    // One of three voters: it can never win a majority.
    let alone = Node::builder(ca.node_identity("n1").unwrap())
        .elect(Elect::voters(["n1", "n2", "n3"]).unwrap())
        .start()
        .await
        .unwrap();
    let route = alone
        .to_leader::<Slow>()
        .unwrap()
        .with_policy(RetryPolicy::with_deadline(Duration::from_millis(500)));
    let err = route.request(|epoch| (epoch, 1)).await.unwrap_err();
    assert!(matches!(err, RouteError::NoLeader { .. }), "{err:?}");
    assert!(err.nothing_processed());
    alone.leave().await;
}
