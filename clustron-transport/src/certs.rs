//! Certificate tooling: a cluster CA, node and client certificates, PEM files.
//!
//! Loading PEM files ([`TlsIdentity`]) is always there. Generating a CA and
//! issuing certificates (`CertificateAuthority`, `CertRequest`) needs the
//! `certs` feature (on by default), which brings in `rcgen`: a node that only
//! loads the files an operator made can do without it
//! (`default-features = false`).
//!
//! A node certificate carries `urn:clustron:node:NAME` as a URI
//! subject-alternative-name, plus any IP and DNS names asked for, and allows
//! both TLS server and client authentication. A client certificate carries
//! `urn:clustron:client:ROLE:NAME` and allows client authentication only, so
//! it can never serve as a node.

use std::fs;
use std::io::Write;
#[cfg(feature = "certs")]
use std::net::IpAddr;
use std::path::{Path, PathBuf};
#[cfg(feature = "certs")]
use std::time::{Duration, SystemTime};

#[cfg(feature = "certs")]
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::CertError;
use crate::identity::PeerIdentity;
#[cfg(feature = "certs")]
use crate::identity::{ClientRole, PeerKind, PeerName};

/// Default lifetime of a CA: ten years.
#[cfg(feature = "certs")]
pub const DEFAULT_CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Default lifetime of a node or client certificate: one year.
#[cfg(feature = "certs")]
pub const DEFAULT_CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Clock skew tolerated between the issuer and the verifiers: certificates
/// start to be valid this long before they were issued.
#[cfg(feature = "certs")]
const BACKDATE: Duration = Duration::from_secs(3600);

/// The validity window of a certificate.
#[cfg(feature = "certs")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// Not valid before this instant.
    pub not_before: SystemTime,
    /// Not valid after this instant.
    pub not_after: SystemTime,
}

#[cfg(feature = "certs")]
impl Validity {
    /// Valid from an hour ago (clock skew) for `lifetime`.
    pub fn for_duration(lifetime: Duration) -> Self {
        let now = SystemTime::now();
        Self {
            not_before: now - BACKDATE,
            not_after: now + lifetime,
        }
    }
}

/// What to put in a node or client certificate.
#[cfg(feature = "certs")]
#[derive(Debug, Clone)]
pub struct CertRequest {
    identity: PeerIdentity,
    ips: Vec<IpAddr>,
    dns: Vec<String>,
    validity: Validity,
}

#[cfg(feature = "certs")]
impl CertRequest {
    /// A node certificate for `name`, valid for [`DEFAULT_CERT_VALIDITY`].
    pub fn node(name: &str) -> Result<Self, CertError> {
        Ok(Self::new(PeerName::new(name)?, PeerKind::Node))
    }

    /// A client certificate for `name` with `role`.
    pub fn client(name: &str, role: ClientRole) -> Result<Self, CertError> {
        Ok(Self::new(PeerName::new(name)?, PeerKind::Client(role)))
    }

    fn new(name: PeerName, kind: PeerKind) -> Self {
        Self {
            identity: PeerIdentity { name, kind },
            ips: Vec::new(),
            dns: Vec::new(),
            validity: Validity::for_duration(DEFAULT_CERT_VALIDITY),
        }
    }

    /// Adds an IP subject-alternative-name (for tools that check addresses).
    pub fn ip(mut self, ip: IpAddr) -> Self {
        self.ips.push(ip);
        self
    }

    /// Adds a DNS subject-alternative-name.
    pub fn dns(mut self, name: impl Into<String>) -> Self {
        self.dns.push(name.into());
        self
    }

    /// Sets the validity window (tests use it to make expired certificates).
    pub fn validity(mut self, validity: Validity) -> Self {
        self.validity = validity;
        self
    }
}

/// A certificate with its private key, both PEM-encoded.
#[derive(Clone)]
pub struct CertifiedKey {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The PKCS#8 private key, PEM. Never logged.
    pub key_pem: String,
}

impl std::fmt::Debug for CertifiedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertifiedKey")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl CertifiedKey {
    /// Writes `DIR/NAME.pem` and `DIR/NAME.key` (mode 0600), creating `dir`.
    pub fn save(&self, dir: &Path, name: &str) -> Result<(PathBuf, PathBuf), CertError> {
        create_dir(dir)?;
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}.key"));
        write_file(&cert, self.cert_pem.as_bytes(), 0o644)?;
        write_file(&key, self.key_pem.as_bytes(), 0o600)?;
        Ok((cert, key))
    }
}

/// A cluster certificate authority: signs node and client certificates.
#[cfg(feature = "certs")]
pub struct CertificateAuthority {
    cert_pem: String,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

#[cfg(feature = "certs")]
impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "certs")]
impl CertificateAuthority {
    /// Creates a new CA named `common_name`, valid for [`DEFAULT_CA_VALIDITY`].
    pub fn generate(common_name: &str) -> Result<Self, CertError> {
        Self::generate_with(common_name, Validity::for_duration(DEFAULT_CA_VALIDITY))
    }

    /// Creates a new CA with an explicit validity window.
    pub fn generate_with(common_name: &str, validity: Validity) -> Result<Self, CertError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        dn.push(DnType::OrganizationName, "Clustron");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = validity.not_before.into();
        params.not_after = validity.not_after.into();
        let cert = params.self_signed(&key)?;
        let key_pem = key.serialize_pem();
        Ok(Self {
            cert_pem: cert.pem(),
            key_pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads a CA from its PEM certificate and PEM private key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CertError> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        Ok(Self {
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            issuer,
        })
    }

    /// Loads `DIR/ca.pem` and `DIR/ca.key`.
    pub fn load(dir: &Path) -> Result<Self, CertError> {
        let cert = read_to_string(&dir.join("ca.pem"))?;
        let key = read_to_string(&dir.join("ca.key"))?;
        Self::from_pem(&cert, &key)
    }

    /// Writes `DIR/ca.pem` and `DIR/ca.key` (mode 0600), creating `dir`.
    pub fn save(&self, dir: &Path) -> Result<(), CertError> {
        create_dir(dir)?;
        write_file(&dir.join("ca.pem"), self.cert_pem.as_bytes(), 0o644)?;
        write_file(&dir.join("ca.key"), self.key_pem.as_bytes(), 0o600)
    }

    /// The CA certificate, PEM: what every node and client trusts.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issues a node or client certificate with a fresh key.
    pub fn issue(&self, request: &CertRequest) -> Result<CertifiedKey, CertError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, request.identity.name.as_str());
        dn.push(
            DnType::OrganizationalUnitName,
            match request.identity.kind {
                PeerKind::Node => "clustron-node".to_owned(),
                PeerKind::Client(role) => format!("clustron-client-{role}"),
            },
        );
        params.distinguished_name = dn;
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = match request.identity.kind {
            PeerKind::Node => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            PeerKind::Client(_) => vec![ExtendedKeyUsagePurpose::ClientAuth],
        };
        let uri = request.identity.to_uri();
        params.subject_alt_names.push(SanType::URI(
            uri.as_str().try_into().map_err(CertError::Generate)?,
        ));
        for ip in &request.ips {
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        for dns in &request.dns {
            params.subject_alt_names.push(SanType::DnsName(
                dns.as_str().try_into().map_err(CertError::Generate)?,
            ));
        }
        params.not_before = request.validity.not_before.into();
        params.not_after = request.validity.not_after.into();
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(CertifiedKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Issues a node certificate for `name` and returns the identity an
    /// [`crate::Endpoint`] binds with: the shortest way to a node in tests,
    /// examples and local clusters.
    pub fn node_identity(&self, name: &str) -> Result<TlsIdentity, CertError> {
        let cert = self.issue(&CertRequest::node(name)?)?;
        TlsIdentity::from_certified(&self.cert_pem, &cert)
    }
}

/// Everything an endpoint needs to authenticate: the trusted CA certificates,
/// its own certificate chain and private key, and the identity they state.
#[derive(Debug)]
pub struct TlsIdentity {
    pub(crate) ca: Vec<CertificateDer<'static>>,
    pub(crate) chain: Vec<CertificateDer<'static>>,
    pub(crate) key: PrivateKeyDer<'static>,
    pub(crate) identity: PeerIdentity,
}

impl Clone for TlsIdentity {
    fn clone(&self) -> Self {
        Self {
            ca: self.ca.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            identity: self.identity.clone(),
        }
    }
}

impl TlsIdentity {
    /// Builds an identity from PEM text.
    pub fn from_pem(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Self, CertError> {
        Self::parse(
            (Path::new("<ca>"), ca_pem.as_bytes()),
            (Path::new("<cert>"), cert_pem.as_bytes()),
            (Path::new("<key>"), key_pem.as_bytes()),
        )
    }

    /// Builds an identity from a CA file, a certificate file and a key file.
    pub fn from_files(ca: &Path, cert: &Path, key: &Path) -> Result<Self, CertError> {
        let (ca_pem, cert_pem, key_pem) = (read(ca)?, read(cert)?, read(key)?);
        Self::parse((ca, &ca_pem), (cert, &cert_pem), (key, &key_pem))
    }

    /// Builds an identity from a freshly issued certificate.
    pub fn from_certified(ca_pem: &str, certified: &CertifiedKey) -> Result<Self, CertError> {
        Self::from_pem(ca_pem, &certified.cert_pem, &certified.key_pem)
    }

    fn parse(
        (ca_path, ca): (&Path, &[u8]),
        (cert_path, cert): (&Path, &[u8]),
        (key_path, key): (&Path, &[u8]),
    ) -> Result<Self, CertError> {
        let certs = |path: &Path, pem: &[u8]| {
            let list = CertificateDer::pem_slice_iter(pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad_pem(path, e.to_string()))?;
            if list.is_empty() {
                return Err(bad_pem(path, "no CERTIFICATE block".into()));
            }
            Ok(list)
        };
        let ca = certs(ca_path, ca)?;
        let chain = certs(cert_path, cert)?;
        let key = PrivateKeyDer::from_pem_slice(key)
            .map_err(|e| bad_pem(key_path, format!("no usable private key: {e}")))?;
        let identity = PeerIdentity::from_certificate(&chain[0])?;
        Ok(Self {
            ca,
            chain,
            key,
            identity,
        })
    }

    /// The identity the certificate states.
    pub fn identity(&self) -> &PeerIdentity {
        &self.identity
    }
}

fn bad_pem(path: &Path, why: String) -> CertError {
    CertError::BadPem {
        path: path.to_owned(),
        why,
    }
}

fn read(path: &Path) -> Result<Vec<u8>, CertError> {
    fs::read(path).map_err(|source| CertError::Io {
        path: path.to_owned(),
        source,
    })
}

#[cfg(feature = "certs")]
fn read_to_string(path: &Path) -> Result<String, CertError> {
    fs::read_to_string(path).map_err(|source| CertError::Io {
        path: path.to_owned(),
        source,
    })
}

fn create_dir(dir: &Path) -> Result<(), CertError> {
    fs::create_dir_all(dir).map_err(|source| CertError::Io {
        path: dir.to_owned(),
        source,
    })
}

/// Writes `bytes` to `path` atomically (temporary file, fsync, rename), with
/// `mode` set on creation so a key is never readable by others, not even
/// briefly.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CertError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| CertError::Io {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    fs::rename(&tmp, path).map_err(io)
}

#[cfg(all(test, feature = "certs"))]
mod tests {
    use super::*;

    #[test]
    fn issued_certificates_carry_their_identity() {
        let ca = CertificateAuthority::generate("test").unwrap();
        let node = ca.issue(&CertRequest::node("n1").unwrap()).unwrap();
        let id = TlsIdentity::from_certified(ca.cert_pem(), &node).unwrap();
        assert_eq!(id.identity().name.as_str(), "n1");
        assert_eq!(id.identity().kind, PeerKind::Node);

        let client = ca
            .issue(&CertRequest::client("ops", ClientRole::ReadOnly).unwrap())
            .unwrap();
        let id = TlsIdentity::from_certified(ca.cert_pem(), &client).unwrap();
        assert_eq!(id.identity().kind, PeerKind::Client(ClientRole::ReadOnly));
    }

    #[test]
    fn saved_keys_are_private_and_a_reloaded_ca_still_signs() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::generate("test").unwrap();
        ca.save(dir.path()).unwrap();
        let mode = fs::metadata(dir.path().join("ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        let reloaded = CertificateAuthority::load(dir.path()).unwrap();
        let node = reloaded
            .issue(
                &CertRequest::node("n2")
                    .unwrap()
                    .ip("127.0.0.1".parse().unwrap()),
            )
            .unwrap();
        let (cert, key) = node.save(dir.path(), "n2").unwrap();
        let mode = fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let id = TlsIdentity::from_files(&dir.path().join("ca.pem"), &cert, &key).unwrap();
        assert_eq!(id.identity().name.as_str(), "n2");
    }

    #[test]
    fn garbage_pem_is_a_clear_error() {
        let err = TlsIdentity::from_pem("nope", "nope", "nope").unwrap_err();
        assert!(err.to_string().contains("no CERTIFICATE block"), "{err}");
    }
}
