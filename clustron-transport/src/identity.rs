//! Who is on the other end: names and kinds taken from certificates.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::CertError;

/// The longest name a certificate may carry.
pub const MAX_NAME_LEN: usize = 64;

/// A validated peer name: a node's or a client's, as its certificate states.
///
/// 1 to 64 characters from `[A-Za-z0-9._-]`, starting with a letter or digit.
/// Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PeerName(Arc<str>);

impl PeerName {
    /// Validates and wraps `name`.
    pub fn new(name: impl AsRef<str>) -> Result<Self, CertError> {
        let name = name.as_ref();
        let invalid = |why| CertError::InvalidName {
            name: name.to_owned(),
            why,
        };
        if name.is_empty() {
            return Err(invalid("empty"));
        }
        if name.len() > MAX_NAME_LEN {
            return Err(invalid("longer than 64 characters"));
        }
        if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
            return Err(invalid("must start with a letter or digit"));
        }
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(invalid("only A-Z, a-z, 0-9, '.', '_' and '-' are allowed"));
        }
        Ok(Self(name.into()))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for PeerName {
    type Error = CertError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<PeerName> for String {
    fn from(value: PeerName) -> Self {
        value.0.to_string()
    }
}

impl fmt::Display for PeerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for PeerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// What a client certificate allows. Enforced by the layers above (DKV).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ClientRole {
    /// Everything, including membership and cluster administration.
    Admin,
    /// Reads and writes data.
    ReadWrite,
    /// Reads data only.
    ReadOnly,
}

impl ClientRole {
    /// The role's spelling in certificates and on command lines.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientRole::Admin => "admin",
            ClientRole::ReadWrite => "readwrite",
            ClientRole::ReadOnly => "readonly",
        }
    }
}

impl std::str::FromStr for ClientRole {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "admin" => Ok(ClientRole::Admin),
            "readwrite" => Ok(ClientRole::ReadWrite),
            "readonly" => Ok(ClientRole::ReadOnly),
            other => Err(format!(
                "unknown client role {other:?} (expected admin, readwrite or readonly)"
            )),
        }
    }
}

impl fmt::Display for ClientRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a certificate belongs to a cluster node or to a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PeerKind {
    /// A cluster node: may use ALPN `clustron-peer/1` and serve.
    Node,
    /// A client with a role: may only use ALPN `clustron-client/1`.
    Client(ClientRole),
}

/// The authenticated identity of a peer, read from its certificate.
///
/// Never taken from a message: the transport hands it to the receiver with
/// every request, message, datagram and stream.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PeerIdentity {
    /// The certificate's name.
    pub name: PeerName,
    /// Node or client (with role).
    pub kind: PeerKind,
}

const URN_NODE: &str = "urn:clustron:node:";
const URN_CLIENT: &str = "urn:clustron:client:";

impl PeerIdentity {
    /// The URI subject-alternative-name that encodes this identity in a
    /// certificate: `urn:clustron:node:NAME` or
    /// `urn:clustron:client:ROLE:NAME`.
    pub fn to_uri(&self) -> String {
        match self.kind {
            PeerKind::Node => format!("{URN_NODE}{}", self.name),
            PeerKind::Client(role) => format!("{URN_CLIENT}{role}:{}", self.name),
        }
    }

    /// Parses the URI form written by [`PeerIdentity::to_uri`]; `None` for
    /// anything else.
    pub fn from_uri(uri: &str) -> Option<Self> {
        if let Some(name) = uri.strip_prefix(URN_NODE) {
            return Some(Self {
                name: PeerName::new(name).ok()?,
                kind: PeerKind::Node,
            });
        }
        let rest = uri.strip_prefix(URN_CLIENT)?;
        let (role, name) = rest.split_once(':')?;
        Some(Self {
            name: PeerName::new(name).ok()?,
            kind: PeerKind::Client(role.parse().ok()?),
        })
    }

    /// Reads the identity from a DER certificate.
    pub fn from_certificate(der: &[u8]) -> Result<Self, CertError> {
        use x509_parser::extensions::GeneralName;
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| CertError::NoIdentity(format!("unparsable certificate: {e}")))?;
        let san = cert
            .subject_alternative_name()
            .map_err(|e| CertError::NoIdentity(format!("bad subjectAltName: {e}")))?
            .ok_or_else(|| CertError::NoIdentity("no subjectAltName".into()))?;
        san.value
            .general_names
            .iter()
            .find_map(|name| match name {
                GeneralName::URI(uri) => Self::from_uri(uri),
                _ => None,
            })
            .ok_or_else(|| CertError::NoIdentity("no urn:clustron: name".into()))
    }

    /// True for a node certificate.
    pub fn is_node(&self) -> bool {
        self.kind == PeerKind::Node
    }
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            PeerKind::Node => write!(f, "node {}", self.name),
            PeerKind::Client(role) => write!(f, "client {} ({role})", self.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_outside_the_allowed_alphabet_are_refused() {
        for bad in ["", "-a", "a b", "a/b", "é", &"x".repeat(65)] {
            assert!(PeerName::new(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["a", "node-1", "n.2_x", &"x".repeat(64)] {
            assert_eq!(PeerName::new(good).unwrap().as_str(), good);
        }
    }

    #[test]
    fn identity_uri_round_trips() {
        for kind in [
            PeerKind::Node,
            PeerKind::Client(ClientRole::Admin),
            PeerKind::Client(ClientRole::ReadOnly),
        ] {
            let id = PeerIdentity {
                name: PeerName::new("n1").unwrap(),
                kind,
            };
            assert_eq!(PeerIdentity::from_uri(&id.to_uri()), Some(id));
        }
        assert_eq!(PeerIdentity::from_uri("urn:clustron:client:root:x"), None);
        assert_eq!(PeerIdentity::from_uri("https://x"), None);
    }
}
