//! The RESP port: TCP with TLS and client certificates from the cluster
//! CA, or plaintext on a loopback address when asked for explicitly.

use std::future::Future;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clustron_transport::{CertError, ClientRole, PeerIdentity, PeerKind, TlsIdentity};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::backend::CacheBackend;
use super::codec::{Limits, Reply};
use super::connection::serve_connection;
use super::execute::Session;

/// Where and how the RESP port listens.
#[derive(Debug, Clone)]
pub struct RespConfig {
    /// The address to bind (`--resp-listen`).
    pub listen: SocketAddr,
    /// TLS with the node's identity, or plaintext.
    pub security: Security,
    /// Size limits of one command.
    pub limits: Limits,
    /// Connections served at once; more are closed at once (in plaintext
    /// after `-ERR max number of clients reached`, as Redis does).
    /// Default 10,000 (Redis's `maxclients`).
    pub max_connections: NonZeroUsize,
    /// Time a client has to finish the TLS handshake. Default 10 s: a
    /// handshake takes a few round trips, this bounds half-open
    /// connections.
    pub handshake_timeout: Duration,
    /// How long a shutdown waits for connections to finish the command
    /// they are running before dropping them. Default 5 s.
    pub shutdown_grace: Duration,
}

/// How the port authenticates clients.
#[derive(Debug, Clone)]
pub enum Security {
    /// TLS 1.3; the client must present a certificate issued by the
    /// cluster CA, and its role (readonly, readwrite, admin) decides what
    /// it may do. The server presents the node's certificate.
    Tls(TlsIdentity),
    /// No TLS (`--resp-insecure`), for local development: every client
    /// gets `role`. Refused at start unless the address is loopback.
    Plaintext {
        /// The role every connection gets.
        role: ClientRole,
    },
}

impl RespConfig {
    /// TLS on `listen` with `identity`, and the defaults.
    pub fn tls(listen: SocketAddr, identity: TlsIdentity) -> RespConfig {
        RespConfig::new(listen, Security::Tls(identity))
    }

    /// Plaintext on a loopback `listen`, every client `readwrite`, and the
    /// defaults.
    pub fn insecure(listen: SocketAddr) -> RespConfig {
        RespConfig::new(
            listen,
            Security::Plaintext {
                role: ClientRole::ReadWrite,
            },
        )
    }

    fn new(listen: SocketAddr, security: Security) -> RespConfig {
        RespConfig {
            listen,
            security,
            limits: Limits::default(),
            max_connections: NonZeroUsize::new(10_000).unwrap_or(NonZeroUsize::MIN),
            handshake_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// Why the RESP port did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RespError {
    /// Plaintext was asked for on an address other hosts can reach.
    #[error(
        "refusing plaintext RESP on {addr}: without TLS any host could read and change the \
         cache, so --resp-insecure is allowed only on a loopback address (127.0.0.1 or ::1); \
         listen on loopback, or drop --resp-insecure to use TLS with client certificates \
         from the cluster CA"
    )]
    PlaintextNotLoopback {
        /// The address asked for.
        addr: SocketAddr,
    },
    /// The node's certificate or key cannot make a TLS configuration.
    #[error("RESP TLS configuration: {0}")]
    Tls(#[from] CertError),
    /// The address cannot be bound.
    #[error("RESP listener on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// A bound RESP port, ready to serve.
pub struct RespListener {
    listener: TcpListener,
    config: RespConfig,
    acceptor: Option<TlsAcceptor>,
}

impl std::fmt::Debug for RespListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RespListener")
            .field("listener", &self.listener)
            .field("config", &self.config)
            .field("tls", &self.acceptor.is_some())
            .finish()
    }
}

impl RespListener {
    /// Checks the configuration and binds the address.
    pub async fn bind(config: RespConfig) -> Result<RespListener, RespError> {
        let acceptor = match &config.security {
            Security::Tls(identity) => {
                let tls = clustron_transport::tls::tls_server_config(identity)?;
                Some(TlsAcceptor::from(Arc::new(tls)))
            }
            Security::Plaintext { .. } if !config.listen.ip().is_loopback() => {
                return Err(RespError::PlaintextNotLoopback {
                    addr: config.listen,
                })
            }
            Security::Plaintext { .. } => None,
        };
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| RespError::Bind {
                    addr: config.listen,
                    source,
                })?;
        Ok(RespListener {
            listener,
            config,
            acceptor,
        })
    }

    /// The bound address (its port, when 0 was asked for).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves connections until `shutdown` completes; then stops
    /// accepting, lets each connection finish the command it is running
    /// (for at most [`RespConfig::shutdown_grace`]) and returns.
    pub async fn serve<B>(self, backend: Arc<B>, shutdown: impl Future<Output = ()>)
    where
        B: CacheBackend + 'static,
    {
        let (stop_tx, stop_rx) = watch::channel(false);
        let permits = Arc::new(Semaphore::new(self.config.max_connections.get()));
        let next_id = AtomicU64::new(1);
        let mut connections = JoinSet::new();
        let plaintext_role = match self.config.security {
            Security::Plaintext { role } => Some(role),
            Security::Tls(_) => None,
        };
        tracing::info!(
            addr = %self.config.listen,
            tls = plaintext_role.is_none(),
            "RESP listener"
        );
        tokio::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of descriptors and the like: the listener
                        // stays; the pause keeps the loop from spinning.
                        tracing::warn!(%error, "RESP accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            while connections.try_join_next().is_some() {}
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                // Redis answers this in plain text; on a TLS port that
                // would take a handshake per refused client, so it closes.
                tracing::warn!(%peer, "RESP connection refused: max_connections reached");
                if self.acceptor.is_none() {
                    connections.spawn(refuse(stream, "ERR max number of clients reached"));
                }
                continue;
            };
            let _ = stream.set_nodelay(true);
            let id = next_id.fetch_add(1, Ordering::Relaxed);
            let connection = Connection {
                id,
                peer,
                acceptor: self.acceptor.clone(),
                plaintext_role,
                limits: self.config.limits,
                handshake_timeout: self.config.handshake_timeout,
                stop: stop_rx.clone(),
            };
            let backend = backend.clone();
            connections.spawn(async move {
                connection.run(stream, &*backend).await;
                drop(permit);
            });
        }
        let _ = stop_tx.send(true);
        let drained = async { while connections.join_next().await.is_some() {} };
        if tokio::time::timeout(self.config.shutdown_grace, drained)
            .await
            .is_err()
        {
            connections.shutdown().await;
        }
        tracing::info!(addr = %self.config.listen, "RESP listener stopped");
    }
}

/// Binds `config` and serves `backend` until `shutdown` completes: what a
/// node calls with `--resp-listen`.
pub async fn serve<B>(
    config: RespConfig,
    backend: Arc<B>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RespError>
where
    B: CacheBackend + 'static,
{
    RespListener::bind(config)
        .await?
        .serve(backend, shutdown)
        .await;
    Ok(())
}

/// One accepted connection before its handshake.
struct Connection {
    id: u64,
    peer: SocketAddr,
    acceptor: Option<TlsAcceptor>,
    plaintext_role: Option<ClientRole>,
    limits: Limits,
    handshake_timeout: Duration,
    stop: watch::Receiver<bool>,
}

impl Connection {
    async fn run<B: CacheBackend>(self, stream: TcpStream, backend: &B) {
        let (id, peer) = (self.id, self.peer);
        let ended = match (&self.acceptor, self.plaintext_role) {
            (Some(acceptor), _) => {
                let accepted =
                    tokio::time::timeout(self.handshake_timeout, acceptor.accept(stream)).await;
                let mut tls = match accepted {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(error)) => {
                        tracing::debug!(%peer, %error, "RESP TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "RESP TLS handshake timed out");
                        return;
                    }
                };
                let identity = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .map(|cert| PeerIdentity::from_certificate(cert));
                let identity = match identity {
                    Some(Ok(identity)) => identity,
                    Some(Err(error)) => {
                        let why = format!("NOPERM the client certificate names nobody: {error}");
                        let _ = write_and_close(&mut tls, &why).await;
                        return;
                    }
                    // The verifier requires a certificate: not reached.
                    None => return,
                };
                tracing::debug!(%peer, %identity, id, "RESP connection");
                let session = Session::new(id, identity.kind);
                serve_connection(tls, backend, session, self.limits, self.stop).await
            }
            (None, Some(role)) => {
                let session = Session::new(id, PeerKind::Client(role));
                serve_connection(stream, backend, session, self.limits, self.stop).await
            }
            (None, None) => return,
        };
        match ended {
            Ok(how) => tracing::debug!(%peer, id, ?how, "RESP connection closed"),
            Err(error) => tracing::debug!(%peer, id, %error, "RESP connection failed"),
        }
    }
}

/// Answers one error line on a connection we will not serve, and closes it.
async fn refuse(mut stream: TcpStream, error: &'static str) {
    let _ = write_and_close(&mut stream, error).await;
}

async fn write_and_close<S: tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    error: &str,
) -> std::io::Result<()> {
    let mut out = Vec::new();
    Reply::Error(error.to_owned()).encode(&mut out);
    stream.write_all(&out).await?;
    stream.shutdown().await
}
