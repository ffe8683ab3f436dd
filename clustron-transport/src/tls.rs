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

/// The server side: nodes only.
pub(crate) fn server_config(identity: &TlsIdentity) -> Result<quinn::ServerConfig, CertError> {
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(identity)?, provider.clone())
        .build()
        .map_err(|e| CertError::Tls(rustls::Error::General(e.to_string())))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())?;
    tls.alpn_protocols = vec![ALPN_PEER.to_vec(), ALPN_CLIENT.to_vec()];
    tls.max_early_data_size = 0;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| CertError::Tls(rustls::Error::General(e.to_string())))?;
    Ok(quinn::ServerConfig::with_crypto(Arc::new(crypto)))
}

/// The dialing side, offering `alpn`.
pub(crate) fn client_config(
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

/// A stateless-reset key derived from the node's private key, so a node that
/// restarts on the same address resets its peers' stale connections at once
/// instead of leaving them to time out.
pub(crate) fn reset_key(identity: &TlsIdentity) -> Arc<ring::hmac::Key> {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"clustron stateless reset v1");
    ctx.update(identity.key.secret_der());
    let seed = ctx.finish();
    Arc::new(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, seed.as_ref()))
}
