//! The server side: a reloading rustls `ServerConfig` and the accept loop
//! that turns a listener into TLS connections.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::server::WebPkiClientVerifier;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::config::ServerTlsConfig;
use crate::error::{Result, TlsError};
use crate::pem::File;
use crate::reload::Reloading;

/// Longest a client may take to complete its handshake: a connection that
/// says nothing holds a handshake slot only this long.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes in progress at once. More connections wait in the kernel's
/// accept queue: a flood of slow handshakes cannot take unbounded memory,
/// and established connections are served meanwhile.
pub const MAX_HANDSHAKES: usize = 1024;

/// A server's TLS: its certificate and, for mutual TLS, the CAs of client
/// certificates, re-read when their files change. Cheap to clone.
#[derive(Clone)]
pub struct ServerTls {
    config: Arc<Reloading<rustls::ServerConfig>>,
    settings: ServerTlsConfig,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").field("settings", &self.settings).finish_non_exhaustive()
    }
}

/// Connections whose TLS handshake completed, for tonic's
/// `serve_with_incoming`.
pub type Incoming = tokio_stream::wrappers::ReceiverStream<io::Result<TlsStream<TcpStream>>>;

impl ServerTls {
    /// Reads the files now: a missing, unreadable or malformed file, a key
    /// that does not fit the certificate or that ring cannot use, is an
    /// error naming the setting and the file.
    pub fn new(settings: &ServerTlsConfig) -> Result<Self> {
        settings.validate()?;
        let mut sources = vec![("cert_file", settings.cert_file.clone()), ("key_file", settings.key_file.clone())];
        if let Some(ca) = &settings.client_ca_file {
            sources.push(("client_ca_file", ca.clone()));
        }
        let require = settings.require_client_cert;
        let config = Reloading::load("server certificate", sources, Box::new(move |files| build(files, require)))?;
        Ok(Self { config, settings: settings.clone() })
    }

    /// Re-reads the files now rather than at the next periodic check:
    /// `Ok(true)` when they changed and new connections use them,
    /// `Ok(false)` when nothing changed, an error (naming the setting and
    /// the file) when they cannot be used and the previous ones stay.
    pub async fn reload(&self) -> Result<bool> {
        self.config.check().await
    }

    /// The configuration new connections get.
    pub fn current(&self) -> Arc<rustls::ServerConfig> {
        self.config.current()
    }

    pub fn settings(&self) -> &ServerTlsConfig {
        &self.settings
    }

    /// Accepts connections on `listener` and completes their handshakes
    /// concurrently (at most [`MAX_HANDSHAKES`] at once, each within
    /// [`HANDSHAKE_TIMEOUT`]), each with the configuration in force when it
    /// arrived. A failed handshake is logged at debug and dropped; the
    /// stream yields only established connections. Accepting stops when
    /// the stream is dropped.
    pub fn incoming(&self, listener: TcpListener) -> Incoming {
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(accept(listener, self.config.clone(), tx));
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }
}

/// The rustls configuration of one state of the files: cert, key and
/// optionally the client CAs, in that order.
fn build(files: &[File], require_client_cert: bool) -> Result<rustls::ServerConfig> {
    let [cert, key, rest @ ..] = files else {
        return Err(TlsError::config("cert_file", "and key_file are required"));
    };
    let chain = cert.certificates()?;
    let private_key = key.private_key()?;
    let provider = crate::provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::config("cert_file", format!("no TLS protocol version available: {e}")))?;
    let builder = match rest.first() {
        Some(ca) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(ca.roots()?), provider);
            let verifier = if require_client_cert { verifier } else { verifier.allow_unauthenticated() };
            let verifier = verifier.build().map_err(|e| {
                TlsError::config(ca.field, format!("{}: cannot verify clients with it: {e}", ca.path.display()))
            })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, private_key).map_err(|e| {
        TlsError::config(
            key.field,
            format!("{} cannot serve the certificate in {}: {e}", key.path.display(), cert.path.display()),
        )
    })?;
    config.alpn_protocols = vec![crate::ALPN_H2.to_vec()];
    Ok(config)
}

async fn accept(
    listener: TcpListener,
    config: Arc<Reloading<rustls::ServerConfig>>,
    tx: mpsc::Sender<io::Result<TlsStream<TcpStream>>>,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let permit = tokio::select! {
            permit = handshakes.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return,
            },
            () = tx.closed() => return,
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    backoff(&e).await;
                    continue;
                }
            },
            () = tx.closed() => return,
        };
        // Small responses must not wait for the peer's delayed ACK.
        let _ = tcp.set_nodelay(true);
        let acceptor = TlsAcceptor::from(config.current());
        let tx = tx.clone();
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
            drop(permit);
            match handshake {
                Ok(Ok(stream)) => {
                    let _ = tx.send(Ok(stream)).await;
                }
                Ok(Err(error)) => log_refused(peer, &error),
                Err(_) => tracing::debug!(%peer, "tls handshake timed out"),
            }
        });
    }
}

/// A failed handshake is the client's problem (wrong CA, no or expired
/// certificate, a port scan), not the server's: debug, not a warning.
fn log_refused(peer: SocketAddr, error: &io::Error) {
    tracing::debug!(%peer, %error, "tls handshake failed");
}

/// After a failed `accept`: a connection that died in the queue is simply
/// skipped; anything else (out of file descriptors) pauses accepting
/// briefly instead of spinning, as hyper's accept loop does.
async fn backoff(e: &io::Error) {
    use io::ErrorKind::*;
    if matches!(e.kind(), ConnectionAborted | ConnectionReset | Interrupted | WouldBlock) {
        return;
    }
    tracing::warn!(error = %e, "accepting a connection failed");
    tokio::time::sleep(Duration::from_millis(100)).await;
}
