//! What the client library refuses by itself, before anything is sent: no
//! node is listening at the endpoint, so any answer is the library's own.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::time::Duration;

use clustron_client::kv::{KvError, KvFailure};
use clustron_client::{Client, ClientError};
use clustron_transport::{CertRequest, CertificateAuthority, ClientRole, TlsIdentity};

fn client() -> Client {
    let ca = CertificateAuthority::generate("test").unwrap();
    let cert = ca
        .issue(&CertRequest::client("c", ClientRole::ReadWrite).unwrap())
        .unwrap();
    let identity = TlsIdentity::from_certified(ca.cert_pem(), &cert).unwrap();
    Client::new(vec!["127.0.0.1:1".parse().unwrap()], identity)
        .unwrap()
        .with_retry_for(Duration::ZERO)
}

#[tokio::test]
async fn lease_ttls_out_of_range_are_refused_without_a_round_trip() {
    let client = client();
    // 18446744073709552 s is more milliseconds than a u64 holds: it used to
    // wrap to a 384 ms lease.
    for ttl in [
        Duration::ZERO,
        Duration::from_millis(999),
        Duration::from_secs(365 * 24 * 3600 + 1),
        Duration::from_secs(18_446_744_073_709_552),
    ] {
        match client.grant(ttl).await {
            Err(ClientError::Kv(KvFailure::Refused(KvError::LeaseTtlOutOfRange {
                ttl_ms,
                ..
            }))) => assert!(!(1000..=31_536_000_000).contains(&ttl_ms), "{ttl:?}"),
            other => panic!("{ttl:?}: {other:?}"),
        }
    }
}
