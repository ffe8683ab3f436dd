//! Loopback tests of the endpoint: identities, refusals, bad input, restarts
//! and load. Everything runs on 127.0.0.1 with ports picked by the OS.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use clustron_transport::*;
use serde::{Deserialize, Serialize};
use tokio::time::{timeout, Instant};

const DEADLINE: Duration = Duration::from_secs(20);

struct Echo;
impl Protocol for Echo {
    const CHANNEL: ChannelId = ChannelId(200);
    type Request = Req;
    type Response = Resp;
    type Message = Note;
}

/// A client-facing protocol.
struct Public;
impl Protocol for Public {
    const CHANNEL: ChannelId = ChannelId::CLIENT;
    const ACCEPTS_CLIENTS: bool = true;
    type Request = u64;
    type Response = u64;
    type Message = ();
}

/// Registered by nobody.
struct Nobody;
impl Protocol for Nobody {
    const CHANNEL: ChannelId = ChannelId(999);
    type Request = u64;
    type Response = u64;
    type Message = ();
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Req {
    id: u64,
    payload: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Resp {
    id: u64,
    from: String,
    len: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Note(String);

struct Pki {
    ca: CertificateAuthority,
}

impl Pki {
    fn new() -> Self {
        Self {
            ca: CertificateAuthority::generate("test cluster").unwrap(),
        }
    }

    fn identity(&self, request: CertRequest) -> TlsIdentity {
        let cert = self.ca.issue(&request).unwrap();
        TlsIdentity::from_certified(self.ca.cert_pem(), &cert).unwrap()
    }

    fn node_identity(&self, name: &str) -> TlsIdentity {
        self.identity(CertRequest::node(name).unwrap())
    }

    fn node(&self, name: &str) -> Endpoint {
        Endpoint::bind(config(), self.node_identity(name)).unwrap()
    }
}

fn config() -> TransportConfig {
    let mut config = TransportConfig::new("127.0.0.1:0".parse().unwrap());
    config.connect_timeout = Duration::from_secs(2);
    config.request_timeout = Duration::from_secs(5);
    config
}

/// Serves `Echo` on `endpoint`: answers requests, forwards messages and
/// stream frames to the returned channel.
fn serve_echo(
    endpoint: &Endpoint,
) -> tokio::sync::mpsc::UnboundedReceiver<(String, Note, Delivery)> {
    let mut inbox = endpoint.register::<Echo>().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(item) = inbox.recv().await {
            match item {
                Inbound::Request {
                    from,
                    request,
                    reply,
                } => {
                    if request.id == u64::MAX {
                        reply.reject("id MAX is refused");
                    } else {
                        reply.send(&Resp {
                            id: request.id,
                            from: from.name().to_owned(),
                            len: request.payload.len(),
                        });
                    }
                }
                Inbound::Message {
                    from,
                    message,
                    delivery,
                } => {
                    let _ = tx.send((from.name().to_owned(), message, delivery));
                }
                Inbound::Stream { mut stream, .. } => {
                    tokio::spawn(async move {
                        while let Ok(Some(note)) = stream.recv::<Note>().await {
                            let echoed = Note(format!("{}!", note.0));
                            if stream.send(&echoed).await.is_err() {
                                break;
                            }
                        }
                        stream.finish();
                    });
                }
            }
        }
    });
    rx
}

async fn request(from: &Endpoint, to: SocketAddr, id: u64) -> Result<Resp, Error> {
    from.channel::<Echo>()
        .request(
            to,
            &Req {
                id,
                payload: vec![7; 16],
            },
        )
        .await
}

#[tokio::test]
async fn a_request_is_answered_and_the_receiver_learns_the_senders_name() {
    let pki = Pki::new();
    let (a, b) = (pki.node("alpha"), pki.node("beta"));
    serve_echo(&b);
    let resp = request(&a, b.local_addr(), 1).await.unwrap();
    assert_eq!(
        resp,
        Resp {
            id: 1,
            from: "alpha".into(),
            len: 16
        }
    );
    let peer = a.connect(b.local_addr()).await.unwrap();
    assert_eq!(peer.name(), "beta");
    assert_eq!(peer.identity.kind, PeerKind::Node);
}

#[tokio::test]
async fn messages_datagrams_and_streams_arrive_with_the_senders_identity() {
    let pki = Pki::new();
    let (a, b) = (pki.node("alpha"), pki.node("beta"));
    let mut notes = serve_echo(&b);
    let channel = a.channel::<Echo>();

    channel
        .send(b.local_addr(), &Note("one-way".into()))
        .await
        .unwrap();
    let got = timeout(DEADLINE, notes.recv()).await.unwrap().unwrap();
    assert_eq!(
        got,
        ("alpha".into(), Note("one-way".into()), Delivery::Reliable)
    );

    // Datagrams may be lost even on loopback: resend until one arrives.
    let deadline = Instant::now() + DEADLINE;
    loop {
        channel
            .send_datagram(b.local_addr(), &Note("dgram".into()))
            .await
            .unwrap();
        if let Ok(Some(got)) = timeout(Duration::from_millis(200), notes.recv()).await {
            assert_eq!(
                got,
                ("alpha".into(), Note("dgram".into()), Delivery::Datagram)
            );
            break;
        }
        assert!(Instant::now() < deadline, "no datagram arrived");
    }

    let mut stream = channel.open_stream(b.local_addr()).await.unwrap();
    assert_eq!(stream.peer().name(), "beta");
    for i in 0..100 {
        stream.send(&Note(format!("n{i}"))).await.unwrap();
        let echoed: Note = stream.recv().await.unwrap().unwrap();
        assert_eq!(echoed, Note(format!("n{i}!")));
    }
    stream.finish();
    assert_eq!(stream.recv::<Note>().await.unwrap(), None);

    let too_big = Note("x".repeat(2000));
    assert!(matches!(
        channel.send_datagram(b.local_addr(), &too_big).await,
        Err(Error::DatagramTooLarge { .. })
    ));
    // The fallback sends it on a stream instead.
    channel
        .send_datagram_or_stream(b.local_addr(), &too_big)
        .await
        .unwrap();
    let got = timeout(DEADLINE, notes.recv()).await.unwrap().unwrap();
    assert_eq!(got, ("alpha".into(), too_big, Delivery::Reliable));
}

#[tokio::test]
async fn a_served_handler_answers_in_place_and_can_reject() {
    let pki = Pki::new();
    let (a, b) = (pki.node("alpha"), pki.node("beta"));
    let _inbox = b
        .serve::<Echo, _, _>(|from, request: Req| async move {
            match request.id {
                0 => Err("zero is not an id".to_owned()),
                id => Ok(Resp {
                    id,
                    from: from.name().to_owned(),
                    len: request.payload.len(),
                }),
            }
        })
        .unwrap();
    assert_eq!(request(&a, b.local_addr(), 7).await.unwrap().from, "alpha");
    match request(&a, b.local_addr(), 0).await {
        Err(Error::Rejected { reason, .. }) => assert_eq!(reason, "zero is not an id"),
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert!(matches!(
        b.serve::<Echo, _, _>(|_, _| async { Err(String::new()) }),
        Err(Error::ChannelTaken(_))
    ));
}

#[tokio::test]
async fn rejections_and_unknown_channels_get_error_replies() {
    let pki = Pki::new();
    let (a, b) = (pki.node("alpha"), pki.node("beta"));
    serve_echo(&b);
    match request(&a, b.local_addr(), u64::MAX).await {
        Err(Error::Rejected { reason, .. }) => assert_eq!(reason, "id MAX is refused"),
        other => panic!("expected a rejection, got {other:?}"),
    }
    match a.channel::<Nobody>().request(b.local_addr(), &1).await {
        Err(Error::UnknownChannel { channel, .. }) => assert_eq!(channel, ChannelId(999)),
        other => panic!("expected UnknownChannel, got {other:?}"),
    }
    assert!(matches!(b.register::<Echo>(), Err(Error::ChannelTaken(_))));
    // The connection is still fine.
    assert_eq!(request(&a, b.local_addr(), 5).await.unwrap().id, 5);
}

#[tokio::test]
async fn clients_reach_client_channels_only() {
    let pki = Pki::new();
    let node = pki.node("n1");
    serve_echo(&node);
    let mut public = node.register::<Public>().unwrap();
    tokio::spawn(async move {
        while let Some(Inbound::Request {
            from,
            request,
            reply,
        }) = public.recv().await
        {
            assert_eq!(from.identity.kind, PeerKind::Client(ClientRole::ReadOnly));
            reply.send(&(request * 2));
        }
    });
    let client_id = pki.identity(CertRequest::client("viewer", ClientRole::ReadOnly).unwrap());
    assert!(matches!(
        Endpoint::bind(config(), client_id.clone()),
        Err(Error::Cert(CertError::NotANode(_)))
    ));
    let client = Endpoint::client(config(), client_id).unwrap();
    assert_eq!(
        client
            .channel::<Public>()
            .request(node.local_addr(), &21)
            .await
            .unwrap(),
        42
    );
    match request(&client, node.local_addr(), 1).await {
        Err(Error::Rejected { reason, .. }) => assert!(reason.contains("nodes only"), "{reason}"),
        other => panic!("a client reached a node channel: {other:?}"),
    }
}

/// Waits for a `Refused` event on `endpoint` and returns its reason.
async fn refusal(events: &mut Subscription<TransportEvent>) -> String {
    timeout(DEADLINE, async {
        loop {
            match events.recv().await {
                Some(Notification::Event(TransportEvent::Refused { reason, .. })) => return reason,
                Some(_) => {}
                None => panic!("the endpoint stopped before a refusal"),
            }
        }
    })
    .await
    .expect("no refusal event")
}

fn is_refusal(error: &Error) -> bool {
    matches!(error, Error::Handshake { .. } | Error::Refused { .. })
}

#[tokio::test]
async fn a_node_with_a_certificate_from_another_ca_is_refused_on_both_sides() {
    let (pki, foreign) = (Pki::new(), Pki::new());
    let server = pki.node("server");
    serve_echo(&server);
    let mut server_events = server.events();
    let intruder = foreign.node("intruder");
    let mut intruder_events = intruder.events();

    // The intruder dials us: our server refuses its certificate.
    let err = request(&intruder, server.local_addr(), 1)
        .await
        .unwrap_err();
    assert!(is_refusal(&err), "intruder got {err:?}");
    let reason = refusal(&mut server_events).await;
    assert!(
        reason.contains("not signed by this cluster's CA"),
        "{reason}"
    );

    // We dial the intruder: we refuse its certificate and say why.
    serve_echo(&intruder);
    let err = request(&server, intruder.local_addr(), 1)
        .await
        .unwrap_err();
    match &err {
        Error::Handshake { reason, .. } => {
            assert!(
                reason.contains("not signed by this cluster's CA"),
                "{reason}"
            )
        }
        other => panic!("expected a handshake refusal, got {other:?}"),
    }
    refusal(&mut intruder_events).await;
}

#[tokio::test]
async fn an_expired_certificate_is_refused() {
    let pki = Pki::new();
    let server = pki.node("server");
    serve_echo(&server);
    let mut events = server.events();
    let past = SystemTime::now() - Duration::from_secs(3 * 24 * 3600);
    let expired = Validity {
        not_before: past,
        not_after: past + Duration::from_secs(24 * 3600),
    };
    let old = Endpoint::bind(
        config(),
        pki.identity(CertRequest::node("old").unwrap().validity(expired)),
    )
    .unwrap();
    let err = request(&old, server.local_addr(), 1).await.unwrap_err();
    assert!(is_refusal(&err), "{err:?}");
    let reason = refusal(&mut events).await;
    assert!(reason.contains("certificate has expired"), "{reason}");

    // And an expired server is refused by the dialer.
    serve_echo(&old);
    match request(&server, old.local_addr(), 1).await {
        Err(Error::Handshake { reason, .. }) => {
            assert!(reason.contains("certificate has expired"), "{reason}")
        }
        other => panic!("expected a handshake refusal, got {other:?}"),
    }
}

mod raw {
    //! A raw QUIC client that can present any certificate (or none) and
    //! write arbitrary bytes.

    use std::sync::Arc;

    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, SignatureScheme};

    #[derive(Debug)]
    struct AcceptAnyServer;

    impl ServerCertVerifier for AcceptAnyServer {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Ok(HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Ok(HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            rustls::crypto::ring::default_provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }

    /// A client config that presents no certificate at all.
    pub fn without_certificate(alpn: &[u8]) -> quinn::ClientConfig {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServer))
            .with_no_client_auth();
        tls.alpn_protocols = vec![alpn.to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
        quinn::ClientConfig::new(Arc::new(crypto))
    }

    pub async fn connect(
        config: quinn::ClientConfig,
        to: std::net::SocketAddr,
    ) -> Result<quinn::Connection, quinn::ConnectionError> {
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        endpoint.connect_with(config, to, "clustron").unwrap().await
    }
}

/// Waits until `conn` is closed and returns why.
async fn closed(conn: &quinn::Connection) -> quinn::ConnectionError {
    timeout(DEADLINE, conn.closed())
        .await
        .expect("connection stayed open")
}

#[tokio::test]
async fn a_client_without_any_certificate_is_refused() {
    let pki = Pki::new();
    let server = pki.node("server");
    let mut events = server.events();
    let result = raw::connect(
        raw::without_certificate(tls::ALPN_PEER),
        server.local_addr(),
    )
    .await;
    let reason = match result {
        Err(e) => e.to_string(),
        Ok(conn) => closed(&conn).await.to_string(),
    };
    assert!(
        reason.to_lowercase().contains("certificate"),
        "client saw: {reason}"
    );
    let server_reason = refusal(&mut events).await;
    assert!(
        server_reason.contains("no client certificate"),
        "server saw: {server_reason}"
    );
}

#[tokio::test]
async fn a_client_certificate_cannot_join_as_a_node() {
    let pki = Pki::new();
    let server = pki.node("server");
    let mut events = server.events();
    let client = pki.identity(CertRequest::client("sneaky", ClientRole::Admin).unwrap());
    let config = tls::client_config(&client, tls::ALPN_PEER).unwrap();
    let conn = raw::connect(config, server.local_addr()).await.unwrap();
    match closed(&conn).await {
        quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(
                close.error_code,
                quinn::VarInt::from_u32(codes::CLOSE_REFUSED)
            );
            let reason = String::from_utf8_lossy(&close.reason).into_owned();
            assert!(reason.contains("may not connect as a node"), "{reason}");
        }
        other => panic!("expected a refusal, got {other}"),
    }
    assert!(refusal(&mut events).await.contains("client sneaky"));
}

/// Opens a raw stream with a valid node certificate, writes `bytes` and
/// returns the error code the server ended the stream with (if any).
async fn raw_stream_code(conn: &quinn::Connection, bytes: &[u8]) -> Option<u64> {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let _ = send.write_all(bytes).await;
    let _ = send.finish();
    match timeout(DEADLINE, recv.read_to_end(1 << 20))
        .await
        .expect("stream hung")
    {
        Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(code))) => Some(code.into_inner()),
        _ => None,
    }
}

#[tokio::test]
async fn oversized_undecodable_and_garbage_frames_end_only_their_own_stream() {
    let pki = Pki::new();
    let server = pki.node("server");
    serve_echo(&server);
    let node = pki.node_identity("raw");
    let conn = raw::connect(
        tls::client_config(&node, tls::ALPN_PEER).unwrap(),
        server.local_addr(),
    )
    .await
    .unwrap();
    let request_header = frame::header(frame::StreamKind::Request, Echo::CHANNEL);

    // A long-lived stream on the same connection, opened before the abuse:
    // it must keep working through all of it.
    let (mut live_send, mut live_recv) = conn.open_bi().await.unwrap();
    let mut opening = frame::header(frame::StreamKind::Stream, Echo::CHANNEL).to_vec();
    frame::encode_frame(&mut opening, &Note("before".into()), 1024).unwrap();
    live_send.write_all(&opening).await.unwrap();
    assert_eq!(read_note(&mut live_recv).await, Note("before!".into()));

    // A length prefix of 4 GiB: refused before anything is allocated.
    let mut oversized = request_header.to_vec();
    oversized.extend_from_slice(&u32::MAX.to_be_bytes());
    oversized.extend_from_slice(b"tiny");
    assert_eq!(
        raw_stream_code(&conn, &oversized).await,
        Some(codes::FRAME_TOO_LARGE.into())
    );

    // A well-formed length with bytes that are not a `Req`.
    let mut malformed = request_header.to_vec();
    malformed.extend_from_slice(&3u32.to_be_bytes());
    malformed.extend_from_slice(&[0xff, 0xff, 0xff]);
    assert_eq!(
        raw_stream_code(&conn, &malformed).await,
        Some(codes::MALFORMED.into())
    );

    // An unknown wire version.
    assert_eq!(
        raw_stream_code(&conn, &[9, 1, 0, 200, 0, 0, 0, 0]).await,
        Some(codes::UNSUPPORTED_VERSION.into())
    );

    // Random garbage, with deterministic seeds.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..200 {
        let len = (xorshift(&mut state) % 64) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| xorshift(&mut state) as u8).collect();
        if round % 2 == 0 && bytes.len() >= 4 {
            bytes[..4].copy_from_slice(&request_header); // get past the header sometimes
        }
        let _ = raw_stream_code(&conn, &bytes).await;
        let _ = conn.send_datagram(bytes.into());
    }

    // The long-lived stream still answers.
    let mut later = Vec::new();
    frame::encode_frame(&mut later, &Note("after".into()), 1024).unwrap();
    live_send.write_all(&later).await.unwrap();
    assert_eq!(read_note(&mut live_recv).await, Note("after!".into()));

    // The same connection, and the server, still work.
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let mut good = request_header.to_vec();
    frame::encode_frame(
        &mut good,
        &Req {
            id: 9,
            payload: vec![],
        },
        1024,
    )
    .unwrap();
    send.write_all(&good).await.unwrap();
    send.finish().unwrap();
    let answer = recv.read_to_end(1024).await.unwrap();
    assert_eq!(answer[0], 0, "status OK");
    let (resp, _) = frame::decode_frame::<Resp>(&answer[1..], 1024)
        .unwrap()
        .unwrap();
    assert_eq!(
        resp,
        Resp {
            id: 9,
            from: "raw".into(),
            len: 0
        }
    );
    assert!(server.stats().stream_errors >= 3);

    let other = pki.node("other");
    assert_eq!(request(&other, server.local_addr(), 3).await.unwrap().id, 3);
}

/// Reads one `Note` frame from a raw stream, however the bytes are split.
async fn read_note(recv: &mut quinn::RecvStream) -> Note {
    let mut buf = Vec::new();
    loop {
        if let Some((note, _)) = frame::decode_frame::<Note>(&buf, 1024).unwrap() {
            return note;
        }
        let chunk = timeout(DEADLINE, recv.read_chunk(1024, true))
            .await
            .unwrap()
            .unwrap();
        buf.extend_from_slice(&chunk.expect("stream ended").bytes);
    }
}

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[tokio::test]
async fn frames_above_the_configured_maximum_are_refused_locally() {
    let pki = Pki::new();
    let (a, b) = (pki.node("a"), pki.node("b"));
    serve_echo(&b);
    let big = Req {
        id: 1,
        payload: vec![0; DEFAULT_MAX_FRAME + 1],
    };
    match a.channel::<Echo>().request(b.local_addr(), &big).await {
        Err(e @ Error::Encode(FrameError::TooLarge { max, .. })) => {
            assert_eq!(max, DEFAULT_MAX_FRAME);
            // Refused before anything left: a definite failure.
            assert!(e.nothing_processed());
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    let almost = Req {
        id: 2,
        payload: vec![1; DEFAULT_MAX_FRAME - 64],
    };
    assert_eq!(
        a.channel::<Echo>()
            .request(b.local_addr(), &almost)
            .await
            .unwrap()
            .len,
        DEFAULT_MAX_FRAME - 64
    );
}

#[tokio::test]
async fn a_peer_restarted_on_the_same_port_is_reached_again() {
    let pki = Pki::new();
    let a = pki.node("a");
    let identity = pki.node_identity("b");
    let b = Endpoint::bind(config(), identity.clone()).unwrap();
    let addr = b.local_addr();
    serve_echo(&b);
    assert_eq!(request(&a, addr, 1).await.unwrap().id, 1);

    b.close().await;
    drop(b);
    assert!(
        request(&a, addr, 2).await.is_err(),
        "a closed peer answered"
    );

    // Restart on the same port; the socket may take a moment to be released.
    let deadline = Instant::now() + DEADLINE;
    let restarted = loop {
        let mut config = config();
        config.listen = addr;
        match Endpoint::bind(config, identity.clone()) {
            Ok(endpoint) => break endpoint,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(%e, "port not free yet");
                tokio::task::yield_now().await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("cannot rebind {addr}: {e}"),
        }
    };
    serve_echo(&restarted);
    let deadline = Instant::now() + DEADLINE;
    loop {
        match request(&a, addr, 3).await {
            Ok(resp) => {
                assert_eq!(resp.id, 3);
                break;
            }
            Err(e) => assert!(
                Instant::now() < deadline,
                "restarted peer never reached: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_requests_from_64_tasks_are_all_answered_correctly() {
    let pki = Pki::new();
    let (a, b) = (pki.node("client"), pki.node("server"));
    serve_echo(&b);
    let channel = a.channel::<Echo>();
    let to = b.local_addr();
    let answered = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let tasks: Vec<_> = (0..64u64)
        .map(|task| {
            let (channel, answered) = (channel.clone(), answered.clone());
            tokio::spawn(async move {
                for i in 0..157u64 {
                    let id = task * 1_000_000 + i;
                    if id >= 64 * 1_000_000 || (task * 157 + i) >= 10_000 {
                        break;
                    }
                    let payload = vec![(id % 251) as u8; (id % 300) as usize];
                    let resp = channel.request(to, &Req { id, payload }).await.unwrap();
                    assert_eq!(
                        resp,
                        Resp {
                            id,
                            from: "client".into(),
                            len: (id % 300) as usize
                        }
                    );
                    answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(answered.load(std::sync::atomic::Ordering::Relaxed), 10_000);
    assert_eq!(b.stats().connections_opened, 1, "one cached connection");
}

/// Runs a node on its own runtime thread so the test can "crash" it: the
/// runtime is dropped before the endpoint, so no close ever reaches its
/// peers, as with `kill -9`.
struct CrashableNode {
    crash: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
    addr: SocketAddr,
}

impl CrashableNode {
    fn start(identity: TlsIdentity, listen: SocketAddr) -> Result<Self, Error> {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (crash, crashed) = tokio::sync::oneshot::channel::<()>();
        let mut config = config();
        config.listen = listen;
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let endpoint = runtime.block_on(async move {
                match Endpoint::bind(config, identity) {
                    Ok(endpoint) => {
                        serve_echo(&endpoint);
                        let _ = addr_tx.send(Ok(endpoint.local_addr()));
                        let _ = crashed.await;
                        Some(endpoint)
                    }
                    Err(e) => {
                        let _ = addr_tx.send(Err(e));
                        None
                    }
                }
            });
            drop(runtime); // every task vanishes without a goodbye
            drop(endpoint);
        });
        let addr = addr_rx.recv().unwrap()?;
        Ok(Self {
            crash,
            thread,
            addr,
        })
    }

    fn crash(self) {
        let _ = self.crash.send(());
        self.thread.join().unwrap();
    }
}

#[tokio::test]
async fn a_crashed_peer_restarted_on_the_same_port_resets_stale_connections() {
    let pki = Pki::new();
    let a = pki.node("a");
    let identity = pki.node_identity("b");
    let b = CrashableNode::start(identity.clone(), "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = b.addr;
    assert_eq!(request(&a, addr, 1).await.unwrap().id, 1);
    b.crash();

    let deadline = Instant::now() + DEADLINE;
    let restarted = loop {
        match CrashableNode::start(identity.clone(), addr) {
            Ok(node) => break node,
            Err(e) => assert!(Instant::now() < deadline, "cannot rebind {addr}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // The restarted node shares the crashed one's stateless-reset key, so the
    // stale connection is reset on first contact instead of timing out.
    let mut attempts = Vec::new();
    loop {
        match request(&a, addr, 2).await {
            Ok(resp) => {
                assert_eq!(resp.id, 2);
                break;
            }
            Err(e) => {
                assert!(
                    !matches!(e, Error::Timeout { .. }),
                    "stale connection timed out instead of being reset: {e}"
                );
                attempts.push(e.to_string());
                assert!(attempts.len() < 50, "never reached: {attempts:?}");
            }
        }
    }
    restarted.crash();
}

/// A UDP relay between one client and one server that can go silent, as a
/// frozen (SIGSTOP) or cut-off peer does: packets are dropped both ways.
struct Relay {
    addr: SocketAddr,
    silent: Arc<std::sync::atomic::AtomicBool>,
}

impl Relay {
    async fn start(server: SocketAddr) -> Relay {
        let socket = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let upstream = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
        upstream.connect(server).await.unwrap();
        let silent = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let client: Arc<std::sync::Mutex<Option<SocketAddr>>> = Arc::default();
        let (down, up, quiet, who) = (
            socket.clone(),
            upstream.clone(),
            silent.clone(),
            client.clone(),
        );
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok((len, from)) = down.recv_from(&mut buf).await {
                *who.lock().unwrap() = Some(from);
                if !quiet.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = up.send(&buf[..len]).await;
                }
            }
        });
        let (down, quiet) = (socket.clone(), silent.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok(len) = upstream.recv(&mut buf).await {
                let to = *client.lock().unwrap();
                if let (Some(to), false) = (to, quiet.load(std::sync::atomic::Ordering::Relaxed)) {
                    let _ = down.send_to(&buf[..len], to).await;
                }
            }
        });
        Relay {
            addr: socket.local_addr().unwrap(),
            silent,
        }
    }

    fn go_silent(&self) {
        self.silent
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

#[tokio::test]
async fn a_request_whose_peer_falls_silent_after_receiving_it_is_not_called_unprocessed() {
    // The outside check's bug: a leader froze after it received a write; the
    // client's idle timeout was taken for "never reached" and the write was
    // sent again elsewhere, applying it twice.
    let pki = Pki::new();
    let server = pki.node("server");
    let mut inbox = server.register::<Echo>().unwrap();
    let relay = Relay::start(server.local_addr()).await;
    let mut client_config = config();
    client_config.idle_timeout = Duration::from_millis(600);
    client_config.keep_alive_interval = Duration::from_millis(100);
    client_config.request_timeout = Duration::from_secs(10);
    let client = Endpoint::bind(client_config, pki.node_identity("client")).unwrap();
    let to = relay.addr;
    let call = tokio::spawn(async move { request(&client, to, 1).await });
    // The request reaches the handler, which never answers; then the path
    // goes silent until the client's idle timeout closes the connection.
    let received = timeout(DEADLINE, inbox.recv()).await.unwrap().unwrap();
    let Inbound::Request { request, .. } = &received else {
        panic!("expected a request")
    };
    assert_eq!(request.id, 1);
    relay.go_silent();
    let error = match timeout(DEADLINE, call).await.unwrap().unwrap() {
        Err(e) => e,
        Ok(_) => panic!("answered"),
    };
    drop(received);
    assert!(
        !error.nothing_processed(),
        "a request that reached its handler is classed as unprocessed: {error:?}"
    );
}

/// Serves `Public` on `node`: doubles requests, and holds every stream a
/// client opens until the client ends it.
fn serve_public(node: &Endpoint) {
    let mut public = node.register::<Public>().unwrap();
    tokio::spawn(async move {
        while let Some(item) = public.recv().await {
            match item {
                Inbound::Request { request, reply, .. } => reply.send(&(request * 2)),
                Inbound::Stream { mut stream, .. } => {
                    tokio::spawn(async move {
                        while let Ok(Some(n)) = stream.recv::<u64>().await {
                            if stream.send(&n).await.is_err() {
                                break;
                            }
                        }
                    });
                }
                Inbound::Message { .. } => {}
            }
        }
    });
}

#[tokio::test]
async fn a_client_holds_two_hundred_streams_on_one_connection_and_still_makes_requests() {
    timeout(DEADLINE, async {
        let pki = Pki::new();
        let node = pki.node("n1");
        serve_public(&node);
        let id = pki.identity(CertRequest::client("app", ClientRole::ReadWrite).unwrap());
        let client = Endpoint::client(config(), id).unwrap();
        let channel = client.channel::<Public>();
        // Long-lived streams, as watches are: quinn's default of 100 per
        // connection used to make the 101st wait forever.
        let mut streams = Vec::new();
        for i in 0..200u64 {
            let mut stream = channel.open_stream(node.local_addr()).await.unwrap();
            stream.send(&i).await.unwrap();
            assert_eq!(stream.recv::<u64>().await.unwrap(), Some(i));
            streams.push(stream);
        }
        assert_eq!(channel.request(node.local_addr(), &21).await.unwrap(), 42);
    })
    .await
    .expect("a stream or the request after them hung");
}

#[tokio::test]
async fn a_stream_beyond_the_limit_fails_definitely_and_the_connection_recovers() {
    timeout(DEADLINE, async {
        let pki = Pki::new();
        let mut node_config = config();
        node_config.max_concurrent_client_streams = 8;
        let node = Endpoint::bind(node_config, pki.node_identity("n1")).unwrap();
        serve_public(&node);
        let id = pki.identity(CertRequest::client("app", ClientRole::ReadWrite).unwrap());
        let mut client_config = config();
        client_config.connect_timeout = Duration::from_millis(300);
        let client = Endpoint::client(client_config, id).unwrap();
        let channel = client.channel::<Public>();
        let mut streams = Vec::new();
        for i in 0..8u64 {
            let mut stream = channel.open_stream(node.local_addr()).await.unwrap();
            stream.send(&i).await.unwrap();
            assert_eq!(stream.recv::<u64>().await.unwrap(), Some(i));
            streams.push(stream);
        }
        // Every stream the node allows is held: a ninth, and a request, fail
        // at once and definitely (nothing sent), instead of waiting.
        match channel.open_stream(node.local_addr()).await {
            Err(e @ Error::StreamsExhausted { .. }) => assert!(e.nothing_processed()),
            other => panic!("{other:?}"),
        }
        match channel.request(node.local_addr(), &21).await {
            Err(e @ Error::StreamsExhausted { .. }) => assert!(e.nothing_processed()),
            other => panic!("{other:?}"),
        }
        // Streams end: the connection is usable again. (quinn announces
        // new stream credit once more than an eighth of the limit is free.)
        streams.truncate(6);
        let deadline = Instant::now() + DEADLINE;
        loop {
            match channel.request(node.local_addr(), &21).await {
                Ok(answer) => break assert_eq!(answer, 42),
                Err(Error::StreamsExhausted { .. }) if Instant::now() < deadline => {}
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await
    .expect("hung");
}

/// Serves `Echo` requests, answering those with an even id only after
/// `delay`, so answers come back in another order than the requests.
fn serve_echo_slowly(endpoint: &Endpoint, delay: Duration) {
    let mut inbox = endpoint.register::<Echo>().unwrap();
    tokio::spawn(async move {
        while let Some(item) = inbox.recv().await {
            if let Inbound::Request {
                from,
                request,
                reply,
            } = item
            {
                tokio::spawn(async move {
                    if request.id % 2 == 0 {
                        tokio::time::sleep(delay).await;
                    }
                    reply.send(&Resp {
                        id: request.id,
                        from: from.name().to_owned(),
                        len: request.payload.len(),
                    });
                });
            }
        }
    });
}

#[tokio::test]
async fn concurrent_requests_share_one_stream_and_each_gets_its_own_answer() {
    let pki = Pki::new();
    let (a, b) = (pki.node("client"), pki.node("server"));
    serve_echo_slowly(&b, Duration::from_millis(50));
    let to = b.local_addr();
    let tasks: Vec<_> = (0..300u64)
        .map(|id| {
            let channel = a.channel::<Echo>();
            tokio::spawn(async move {
                let payload = vec![id as u8; (id % 700) as usize];
                channel.request(to, &Req { id, payload }).await
            })
        })
        .collect();
    for (id, task) in (0..300u64).zip(tasks) {
        let resp = timeout(DEADLINE, task).await.unwrap().unwrap().unwrap();
        assert_eq!(
            resp,
            Resp {
                id,
                from: "client".into(),
                len: (id % 700) as usize
            }
        );
    }
    // One calls stream, not one stream per request.
    assert_eq!(b.stats().streams_accepted, 1);
}

#[tokio::test]
async fn a_peer_that_takes_no_calls_is_sent_a_stream_per_request() {
    let pki = Pki::new();
    let a = pki.node("client");
    // A server as builds before calls: it refuses a calls stream at its
    // header, having read no call.
    let mut old = config();
    old.calls = false;
    let b = Endpoint::bind(old, pki.node_identity("server")).unwrap();
    serve_echo(&b);
    let to = b.local_addr();
    for id in 0..20 {
        let resp = timeout(DEADLINE, request(&a, to, id))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resp.id, id);
    }
    // The refused calls stream, then a stream per request.
    assert_eq!(b.stats().streams_accepted, 21);
    assert_eq!(b.stats().stream_errors, 1);
}

#[tokio::test]
async fn a_malformed_call_resets_its_calls_stream_only() {
    let pki = Pki::new();
    let server = pki.node("server");
    serve_echo(&server);
    let client = pki.node("client");
    let to = server.local_addr();
    let conn = raw::connect(
        tls::client_config(&pki.node_identity("raw"), tls::ALPN_PEER).unwrap(),
        to,
    )
    .await
    .unwrap();
    let header = frame::header(frame::StreamKind::Calls, Echo::CHANNEL);
    // A call shorter than its id.
    let mut short = header.to_vec();
    short.extend_from_slice(&3u32.to_be_bytes());
    short.extend_from_slice(&[1, 2, 3]);
    assert_eq!(
        raw_stream_code(&conn, &short).await,
        Some(u64::from(codes::MALFORMED))
    );
    // A call whose request does not decode.
    let mut garbage = header.to_vec();
    garbage.extend_from_slice(&11u32.to_be_bytes());
    garbage.extend_from_slice(&7u64.to_be_bytes());
    garbage.extend_from_slice(&[0xff, 0xff, 0xff]);
    assert_eq!(
        raw_stream_code(&conn, &garbage).await,
        Some(u64::from(codes::MALFORMED))
    );
    // Requests go on.
    let resp = timeout(DEADLINE, request(&client, to, 5))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.id, 5);
}

#[tokio::test]
async fn a_channel_registered_after_a_calls_stream_opened_serves_its_next_calls() {
    // A node still starting: its transport is up before the channel is.
    let pki = Pki::new();
    let (a, b) = (pki.node("client"), pki.node("server"));
    let to = b.local_addr();
    match timeout(DEADLINE, request(&a, to, 1)).await.unwrap() {
        Err(Error::UnknownChannel { .. }) => {}
        other => panic!("expected UnknownChannel, got {other:?}"),
    }
    serve_echo(&b);
    let resp = timeout(DEADLINE, request(&a, to, 2))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.id, 2);
    assert_eq!(b.stats().streams_accepted, 1, "the same calls stream");
}

#[tokio::test]
async fn calls_waiting_on_a_peer_that_closes_fail_at_once_as_possibly_processed() {
    let pki = Pki::new();
    let (a, b) = (pki.node("client"), pki.node("server"));
    // Even ids are answered only after a minute: those are still waiting
    // when the server goes away.
    serve_echo_slowly(&b, Duration::from_secs(60));
    let to = b.local_addr();
    let waiting: Vec<_> = (0..10u64)
        .map(|k| {
            let channel = a.channel::<Echo>();
            tokio::spawn(async move {
                channel
                    .request_with_timeout(
                        to,
                        &Req {
                            id: 2 * k,
                            payload: vec![],
                        },
                        Duration::from_secs(60),
                    )
                    .await
            })
        })
        .collect();
    // An odd id is answered at once: the calls are on their way.
    assert_eq!(request(&a, to, 1).await.unwrap().id, 1);
    b.close().await;
    // They fail as the connection goes (within the test's deadline, long
    // before their own), and not as never sent.
    for task in waiting {
        let error = timeout(DEADLINE, task).await.unwrap().unwrap().unwrap_err();
        assert!(!matches!(error, Error::Timeout { .. }), "{error:?}");
        assert!(!error.nothing_processed(), "{error:?}");
    }
    // A new server on another port is reached on a new stream.
    let c = pki.node("server2");
    serve_echo(&c);
    assert_eq!(request(&a, c.local_addr(), 3).await.unwrap().id, 3);
}

#[tokio::test]
async fn messages_to_a_peer_travel_in_order_on_one_stream() {
    let pki = Pki::new();
    let (a, b) = (pki.node("alpha"), pki.node("beta"));
    let mut notes = serve_echo(&b);
    let channel = a.channel::<Echo>();
    let to = b.local_addr();
    // Each handed over before the next is sent: they arrive in that order.
    for i in 0..500 {
        timeout(DEADLINE, channel.send(to, &Note(format!("m{i}"))))
            .await
            .unwrap()
            .unwrap();
    }
    for i in 0..500 {
        let (from, note, delivery) = timeout(DEADLINE, notes.recv()).await.unwrap().unwrap();
        assert_eq!(
            (from.as_str(), note, delivery),
            ("alpha", Note(format!("m{i}")), Delivery::Reliable)
        );
    }
    // One messages stream, not one stream per message.
    assert_eq!(b.stats().uni_streams_accepted, 1);
}

#[tokio::test]
async fn a_peer_that_takes_no_messages_streams_is_sent_a_stream_per_message() {
    let pki = Pki::new();
    let a = pki.node("client");
    // A peer as builds before messages streams: it stops one at its header.
    let mut old = config();
    old.calls = false;
    let b = Endpoint::bind(old, pki.node_identity("server")).unwrap();
    let mut notes = serve_echo(&b);
    let channel = a.channel::<Echo>();
    let to = b.local_addr();
    // What went on the refused stream is lost (as one-way messages may be
    // when a connection fails): send until one arrives.
    let deadline = Instant::now() + DEADLINE;
    loop {
        channel.send(to, &Note("first".into())).await.unwrap();
        if let Ok(Some(_)) = timeout(Duration::from_millis(100), notes.recv()).await {
            break;
        }
        assert!(Instant::now() < deadline, "no message ever arrived");
    }
    while let Ok(Some(_)) = timeout(Duration::from_millis(100), notes.recv()).await {}
    let accepted = b.stats().uni_streams_accepted;
    for i in 0..20 {
        channel.send(to, &Note(format!("m{i}"))).await.unwrap();
        let (_, note, _) = timeout(DEADLINE, notes.recv()).await.unwrap().unwrap();
        assert_eq!(note, Note(format!("m{i}")));
    }
    // Then a stream per message; the refused stream counted as an error.
    assert_eq!(b.stats().uni_streams_accepted, accepted + 20);
    assert_eq!(b.stats().stream_errors, 1);
}

#[tokio::test]
async fn a_malformed_message_stops_its_messages_stream_and_the_next_ones_still_arrive() {
    let pki = Pki::new();
    let server = pki.node("server");
    let mut notes = serve_echo(&server);
    let to = server.local_addr();
    let conn = raw::connect(
        tls::client_config(&pki.node_identity("raw"), tls::ALPN_PEER).unwrap(),
        to,
    )
    .await
    .unwrap();
    // A good message, then one that does not decode as a `Note`.
    let mut bytes = frame::header(frame::StreamKind::Messages, Echo::CHANNEL).to_vec();
    frame::encode_frame(&mut bytes, &Note("good".into()), 1 << 20).unwrap();
    bytes.extend_from_slice(&3u32.to_be_bytes());
    bytes.extend_from_slice(&[0xff, 0xff, 0xff]);
    let mut send = conn.open_uni().await.unwrap();
    send.write_all(&bytes).await.unwrap();
    let stopped = timeout(DEADLINE, send.stopped()).await.unwrap().unwrap();
    assert_eq!(
        stopped.map(|code| code.into_inner()),
        Some(u64::from(codes::MALFORMED))
    );
    let (_, note, _) = timeout(DEADLINE, notes.recv()).await.unwrap().unwrap();
    assert_eq!(note, Note("good".into()));
    // A node's messages still arrive, on a stream of their own.
    let client = pki.node("client");
    client
        .channel::<Echo>()
        .send(to, &Note("after".into()))
        .await
        .unwrap();
    let (_, note, _) = timeout(DEADLINE, notes.recv()).await.unwrap().unwrap();
    assert_eq!(note, Note("after".into()));
}

#[tokio::test]
async fn send_now_goes_onto_an_open_messages_stream_and_declines_otherwise() {
    let pki = Pki::new();
    let (a, b) = (pki.node("alpha"), pki.node("beta"));
    let mut notes = serve_echo(&b);
    let channel = a.channel::<Echo>();
    let to = b.local_addr();
    // No stream to `to` yet: it would have to dial.
    assert!(channel.send_now(to, &Note("early".into())).is_none());
    channel.send(to, &Note("first".into())).await.unwrap();
    for i in 0..100 {
        let sent = channel.send_now(to, &Note(format!("m{i}")));
        assert!(matches!(sent, Some(Ok(()))), "{sent:?}");
    }
    let (_, first, _) = timeout(DEADLINE, notes.recv()).await.unwrap().unwrap();
    assert_eq!(first, Note("first".into()));
    for i in 0..100 {
        let (_, note, _) = timeout(DEADLINE, notes.recv()).await.unwrap().unwrap();
        assert_eq!(note, Note(format!("m{i}")));
    }
    assert_eq!(b.stats().uni_streams_accepted, 1);
}
