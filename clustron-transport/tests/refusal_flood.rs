//! A flood of unauthenticated handshakes and forged packets must not flood
//! the log: refusals are counted, a few are logged, the rest summed up in
//! one line per interval. Its own test binary, because it installs a
//! global log subscriber to count the lines.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clustron_transport::*;
use tokio::time::{timeout, Instant};

/// Every WARN-or-worse line any crate logs, whole.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn lines(&self) -> Vec<String> {
        let bytes = self.0.lock().unwrap().clone();
        String::from_utf8_lossy(&bytes)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

mod raw {
    //! A QUIC client that presents no certificate: what anyone on the
    //! network can send without credentials.

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

    pub fn without_certificate() -> quinn::ClientConfig {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServer))
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"clustron-peer/1".to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
        quinn::ClientConfig::new(Arc::new(crypto))
    }
}

/// `n` handshakes without a certificate against `to`, `parallel` at a time.
async fn unauthenticated_handshakes(to: SocketAddr, n: usize, parallel: usize) {
    let attacker = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let config = raw::without_certificate();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        while tasks.len() >= parallel {
            tasks.join_next().await;
        }
        let connecting = attacker
            .connect_with(config.clone(), to, "clustron")
            .unwrap();
        tasks.spawn(async move {
            // Refused one way or another; what the client sees is not the point.
            if let Ok(conn) = connecting.await {
                let _ = timeout(Duration::from_secs(5), conn.closed()).await;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// Datagrams shaped like QUIC Initial packets (long header, version 1),
/// filled with noise: they cannot decrypt.
fn forged_initials(to: SocketAddr, n: usize) {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..n {
        let mut packet = vec![0u8; 1200];
        for byte in packet.iter_mut() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *byte = state as u8;
        }
        packet[0] = 0xc3;
        packet[1..5].copy_from_slice(&1u32.to_be_bytes());
        packet[5] = 8;
        packet[14] = 8;
        let _ = socket.send_to(&packet, to);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unauthenticated_handshakes_is_counted_and_logged_in_a_few_lines() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let ca = CertificateAuthority::generate("test").unwrap();
    let cert = ca.issue(&CertRequest::node("n1").unwrap()).unwrap();
    let identity = TlsIdentity::from_certified(ca.cert_pem(), &cert).unwrap();
    let node = Endpoint::bind(
        TransportConfig::new("127.0.0.1:0".parse().unwrap()),
        identity,
    )
    .unwrap();
    let to = node.local_addr();

    const HANDSHAKES: usize = 300;
    let started = Instant::now();
    forged_initials(to, 2000);
    unauthenticated_handshakes(to, HANDSHAKES, 64).await;
    forged_initials(to, 2000);
    let deadline = Instant::now() + Duration::from_secs(60);
    while node.stats().connections_refused < HANDSHAKES as u64 {
        assert!(
            Instant::now() < deadline,
            "refusals not counted: {:?}",
            node.stats()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let flood = started.elapsed();

    // Every refusal is counted, but the log got a few lines per 10 s
    // interval (five in full and one summary), not one per refusal.
    let lines = captured.lines();
    let intervals = 1 + flood.as_secs() as usize / 10;
    assert!(
        lines.len() <= 6 * intervals,
        "{} lines for {HANDSHAKES} refusals:\n{}",
        lines.len(),
        lines.join("\n")
    );
    let stats = node.stats();
    assert!(
        stats.refusals_unlogged + 6 * intervals as u64 >= stats.connections_refused,
        "{stats:?}"
    );
    // The refusals that were not logged one by one are summed up in one
    // line once their interval ends.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let summary = captured
            .lines()
            .into_iter()
            .find(|l| l.contains("not logged"));
        if let Some(summary) = summary {
            assert!(summary.contains("refused"), "{summary}");
            break;
        }
        assert!(Instant::now() < deadline, "no summary line");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
