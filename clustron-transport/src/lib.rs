//! QUIC transport with mutual TLS for Clustron: certificates, one UDP port per
//! node, authenticated peer identity, and typed channels.
//!
//! What it owns:
//! - **Certificates** ([`TlsIdentity`] from PEM files; with the `certs`
//!   feature, on by default, also `CertificateAuthority` and `CertRequest`):
//!   a cluster CA, node certificates (`urn:clustron:node:NAME`, server and client
//!   auth) and client certificates (`urn:clustron:client:ROLE:NAME`, client auth
//!   only), PEM files, keys written with mode 0600.
//! - **The endpoint** ([`Endpoint`]): ALPN `clustron-peer/1` between nodes and
//!   `clustron-client/1` for clients on one UDP port; both sides verified
//!   against the CA; the remote's name and kind come from its certificate and
//!   arrive with every message ([`Peer`]). One cached connection per address,
//!   redialed with exponential backoff.
//! - **Channels** ([`Protocol`], [`Channel`], [`Inbox`]): each layer registers
//!   its own [`ChannelId`] and sees only its own messages: requests with a
//!   response, one-way messages, datagrams, and long-lived [`FramedStream`]s.
//!   Requests to a peer travel as calls on one stream per channel, answered
//!   in any order ([`TransportConfig::calls`]).
//!   Frames are length-prefixed postcard ([`frame`]); the length is checked
//!   against [`TransportConfig::max_frame_size`] before allocating, and a frame
//!   that does not decode ends only its own stream, with an error code.
//!
//! What it does not do: membership, retries of requests that may have been
//! processed, or any notion of a cluster. Those live in the crates above.
//!
//! # Example
//!
//! ```
//! use clustron_transport::*;
//!
//! struct Echo;
//! impl Protocol for Echo {
//!     const CHANNEL: ChannelId = ChannelId(200);
//!     type Request = String;
//!     type Response = String;
//!     type Message = ();
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
//! runtime.block_on(async {
//!     let ca = CertificateAuthority::generate("example")?;
//!     let node = |name: &str| -> Result<Endpoint, Error> {
//!         let cert = ca.issue(&CertRequest::node(name)?)?;
//!         let identity = TlsIdentity::from_certified(ca.cert_pem(), &cert)?;
//!         Endpoint::bind(TransportConfig::new("127.0.0.1:0".parse().unwrap()), identity)
//!     };
//!     let (a, b) = (node("a")?, node("b")?);
//!
//!     let mut inbox = b.register::<Echo>()?;
//!     tokio::spawn(async move {
//!         while let Some(Inbound::Request { from, request, reply }) = inbox.recv().await {
//!             reply.send(&format!("{request}, {}", from.name()));
//!         }
//!     });
//!     let answer = a.channel::<Echo>().request(b.local_addr(), &"hello".into()).await?;
//!     assert_eq!(answer, "hello, a");
//!     Ok(())
//! })
//! # }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod calls;
pub mod certs;
pub mod codes;
pub mod config;
mod endpoint;
pub mod error;
pub mod frame;
pub mod identity;
mod messages;
mod refusals;
mod stream;
mod subscription;
pub mod tls;

#[cfg(feature = "certs")]
pub use certs::{CertRequest, CertificateAuthority, Validity};
pub use certs::{CertifiedKey, TlsIdentity};
pub use config::{ConfigError, TransportConfig, DEFAULT_MAX_FRAME};
pub use endpoint::{
    Channel, ChannelId, Delivery, Endpoint, Inbound, Inbox, Peer, Protocol, Reply, TransportEvent,
    TransportStats,
};
pub use error::{CertError, Error, FrameError};
pub use identity::{ClientRole, PeerIdentity, PeerKind, PeerName};
pub use stream::{FrameReceiver, FrameSender, FramedStream};
pub use subscription::{Notification, Subscription};
