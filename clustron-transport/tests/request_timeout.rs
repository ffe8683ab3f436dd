//! Per-call deadlines (`Channel::request_with_timeout`) and what a failed
//! request proves: only what never left counts as "nothing processed".

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clustron_transport::*;

/// Requests that take as long as they ask (milliseconds).
struct Slow;
impl Protocol for Slow {
    const CHANNEL: ChannelId = ChannelId(201);
    type Request = u64;
    type Response = u64;
    type Message = ();
}

fn node(ca: &CertificateAuthority, name: &str) -> Endpoint {
    let listen = SocketAddr::from(([127, 0, 0, 1], 0));
    Endpoint::bind(
        TransportConfig::new(listen),
        ca.node_identity(name).unwrap(),
    )
    .unwrap()
}

/// Serves `Slow` on `endpoint`, counting the requests its handler saw.
fn serve_slow(endpoint: &Endpoint) -> Arc<AtomicU64> {
    let seen = Arc::new(AtomicU64::new(0));
    let counter = seen.clone();
    let inbox = endpoint
        .serve::<Slow, _, _>(move |_, millis| {
            counter.fetch_add(1, Ordering::Relaxed);
            async move {
                tokio::time::sleep(Duration::from_millis(millis)).await;
                Ok(millis)
            }
        })
        .unwrap();
    drop(inbox); // `Slow` has no messages or streams
    seen
}

#[tokio::test]
async fn a_per_call_timeout_cuts_a_slow_request_without_claiming_it_was_not_processed() {
    let ca = CertificateAuthority::generate("test").unwrap();
    let (server, client) = (node(&ca, "server"), node(&ca, "client"));
    let seen = serve_slow(&server);
    let channel = client.channel::<Slow>();
    let quick = channel
        .request_with_timeout(server.local_addr(), &1, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(quick, 1);

    let err = channel
        .request_with_timeout(server.local_addr(), &5_000, Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Timeout {
                what: "request",
                ..
            }
        ),
        "{err:?}"
    );
    // The handler did get it: a timeout proves nothing.
    assert_eq!(seen.load(Ordering::Relaxed), 2);
    assert!(!err.nothing_processed());
}

#[tokio::test]
async fn a_per_call_timeout_that_runs_out_while_dialing_counts_as_nothing_processed() {
    let ca = CertificateAuthority::generate("test").unwrap();
    let client = node(&ca, "client");
    // A UDP port where nobody answers: the handshake never completes.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let err = client
        .channel::<Slow>()
        .request_with_timeout(silent.local_addr().unwrap(), &1, Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Timeout {
                what: "connect",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.nothing_processed());
}

#[tokio::test]
async fn a_request_to_a_node_that_has_closed_counts_as_nothing_processed() {
    let ca = CertificateAuthority::generate("test").unwrap();
    let (server, client) = (node(&ca, "server"), node(&ca, "client"));
    let seen = serve_slow(&server);
    let channel = client.channel::<Slow>();
    channel.request(server.local_addr(), &1).await.unwrap();
    // Closed, but still holding its port: it refuses new connections.
    server.close().await;
    let err = channel.request(server.local_addr(), &1).await.unwrap_err();
    assert!(err.nothing_processed(), "{err:?}");
    assert_eq!(seen.load(Ordering::Relaxed), 1);
}

/// A UDP relay to `to` that drops every datagram while `cut` is set: the
/// path between two endpoints, cut off and healed.
async fn relay(to: SocketAddr, cut: Arc<std::sync::atomic::AtomicBool>) -> SocketAddr {
    use tokio::net::UdpSocket;
    let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    back.connect(to).await.unwrap();
    let addr = front.local_addr().unwrap();
    let client = Arc::new(std::sync::Mutex::new(None));
    let (f, b, c, k) = (front.clone(), back.clone(), client.clone(), cut.clone());
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = f.recv_from(&mut buf).await {
            *c.lock().unwrap() = Some(from);
            if !k.load(Ordering::Relaxed) {
                let _ = b.send(&buf[..n]).await;
            }
        }
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok(n) = back.recv(&mut buf).await {
            let to = *client.lock().unwrap();
            if let (Some(to), false) = (to, cut.load(Ordering::Relaxed)) {
                let _ = front.send_to(&buf[..n], to).await;
            }
        }
    });
    addr
}

/// A dial begun while the path was cut must get through soon after the
/// heal, not wait for QUIC's backed-off retransmission of its first packet
/// (with the default 100 ms initial RTT resent at 0.3, 0.9 and 2.1 s): a
/// dial alone, healed at 2.2 s, would next send at 4.5 s, after its 3 s
/// timeout. The dial is joined by a fresh one every 0.3 s instead.
#[tokio::test]
async fn a_dial_begun_during_a_cut_gets_through_after_the_heal() {
    let ca = CertificateAuthority::generate("test").unwrap();
    let server = node(&ca, "server");
    serve_slow(&server);
    let cut = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let path = relay(server.local_addr(), cut.clone()).await;
    let mut config = TransportConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)));
    config.connect_timeout = Duration::from_secs(3);
    let client = Endpoint::bind(config, ca.node_identity("client").unwrap()).unwrap();
    let call = tokio::spawn(async move {
        client
            .channel::<Slow>()
            .request_with_timeout(path, &1, Duration::from_secs(10))
            .await
    });
    // The fault's schedule, not a synchronisation: the heal comes after the
    // lone dial's last resend before its timeout.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    cut.store(false, Ordering::Relaxed);
    assert_eq!(call.await.unwrap().unwrap(), 1);
}
