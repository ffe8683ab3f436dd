//! rustls and quinn configuration: mutual TLS against the cluster CA.
//!
//! Servers (nodes) require a client certificate signed by the CA
//! (`WebPkiClientVerifier`). Dialers verify the server's chain, validity and
//! `serverAuth` usage against the CA, and that it is a *node* certificate; the
//! host name is not checked, because nodes are dialed by address (seeds) and
//! their name is read from the certificate instead.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::certs::TlsIdentity;
use crate::error::CertError;
use crate::identity::PeerIdentity;

/// ALPN between nodes.
pub const ALPN_PEER: &[u8] = b"clustron-peer/1";
/// ALPN for clients.
pub const ALPN_CLIENT: &[u8] = b"clustron-client/1";

/// The name a dialer puts in SNI; never checked (see the module doc).
pub(crate) const SNI: &str = "clustron";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(identity: &TlsIdentity) -> Result<Arc<RootCertStore>, CertError> {
    let mut roots = RootCertStore::empty();
    for ca in &identity.ca {
        roots.add(ca.clone())?;
    }
    Ok(Arc::new(roots))
}

/// The quinn server configuration of a node: requires a client certificate
/// from the CA and offers both ALPNs. [`crate::Endpoint::bind`] uses it; it is
/// public for benchmarks and raw-protocol tests.
pub fn server_config(identity: &TlsIdentity) -> Result<quinn::ServerConfig, CertError> {
    let mut tls = tls_server_config(identity)?;
    tls.alpn_protocols = vec![ALPN_PEER.to_vec(), ALPN_CLIENT.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| CertError::Tls(rustls::Error::General(e.to_string())))?;
    Ok(quinn::ServerConfig::with_crypto(Arc::new(crypto)))
}

/// The rustls server configuration of a node without ALPN: TLS 1.3 only,
/// a client certificate from the CA required, no early data. The QUIC
/// server configuration is built on it; TCP listeners (the RESP port) use
/// it as is and read the caller's identity with
/// [`PeerIdentity::from_certificate`] on the first peer certificate.
pub fn tls_server_config(identity: &TlsIdentity) -> Result<rustls::ServerConfig, CertError> {
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(identity)?, provider.clone())
        .build()
        .map_err(|e| CertError::Tls(rustls::Error::General(e.to_string())))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())?;
    tls.max_early_data_size = 0;
    Ok(tls)
}

/// The quinn client configuration of a dialer offering `alpn`: presents our
/// certificate and accepts only a node certificate from the CA.
pub fn client_config(
    identity: &TlsIdentity,
    alpn: &[u8],
) -> Result<quinn::ClientConfig, CertError> {
    let provider = provider();
    let verifier = NodeServerVerifier {
        roots: roots(identity)?,
        provider: provider.clone(),
    };
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())?;
    tls.alpn_protocols = vec![alpn.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| CertError::Tls(rustls::Error::General(e.to_string())))?;
    Ok(quinn::ClientConfig::new(Arc::new(crypto)))
}

/// Verifies that the server holds a node certificate from our CA.
#[derive(Debug)]
struct NodeServerVerifier {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for NodeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        match PeerIdentity::from_certificate(end_entity) {
            Ok(id) if id.is_node() => Ok(ServerCertVerified::assertion()),
            Ok(id) => Err(rustls::Error::General(format!(
                "server presented a certificate for {id}, not a node"
            ))),
            Err(e) => Err(rustls::Error::General(e.to_string())),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The QUIC endpoint configuration of a node, with its stateless-reset key
/// and connection-ID key derived from its private key.
///
/// Why: a node that crashes and restarts on the same address must recognise
/// the connection IDs it handed out before (random keys would make it drop
/// those packets as invalid) and answer them with a stateless reset its peers
/// can verify. Their stale connections then close at the first packet instead
/// of hanging until the idle timeout.
pub(crate) fn endpoint_config(identity: &TlsIdentity) -> quinn::EndpointConfig {
    let seed = |purpose: &[u8]| {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(b"clustron v1 ");
        ctx.update(purpose);
        ctx.update(identity.key.secret_der());
        ctx.finish()
    };
    let reset = seed(b"stateless reset");
    let reset_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, reset.as_ref());
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(&seed(b"connection id").as_ref()[..8]);
    let cid_key = u64::from_le_bytes(cid_key);
    let mut config = quinn::EndpointConfig::new(Arc::new(reset_key));
    config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    config
}
