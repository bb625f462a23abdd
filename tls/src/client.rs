//! The client side: a reloading rustls `ClientConfig` and one TLS
//! connection to a server.

use std::io;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::config::ClientTlsConfig;
use crate::error::{Result, TlsError};
use crate::pem::File;
use crate::reload::Reloading;

/// A client's TLS: trusted CAs and optionally a client certificate,
/// re-read when their files change. Cheap to clone; clones share the
/// configuration (and its TLS session cache, so reconnections resume).
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<Reloading<rustls::ClientConfig>>,
    settings: ClientTlsConfig,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Reads the files now (the CA file defaults to the system bundle): a
    /// missing, unreadable or malformed file, or a key that does not fit
    /// the certificate, is an error naming the setting and the file.
    pub fn new(settings: &ClientTlsConfig) -> Result<Self> {
        settings.validate()?;
        let mut sources = vec![("ca_file", settings.ca_file().to_owned())];
        if let (Some(cert), Some(key)) = (&settings.cert_file, &settings.key_file) {
            sources.push(("cert_file", cert.clone()));
            sources.push(("key_file", key.clone()));
        }
        let config = Reloading::load("client tls", sources, Box::new(build))?;
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
    pub fn current(&self) -> Arc<rustls::ClientConfig> {
        self.config.current()
    }

    pub fn settings(&self) -> &ClientTlsConfig {
        &self.settings
    }

    /// Connects to `host:port` (a DNS name or an IP address, IPv6 with or
    /// without brackets) and completes a TLS handshake that verifies the
    /// server's certificate for `host`.
    pub async fn connect(&self, host: &str, port: u16) -> io::Result<TlsStream<TcpStream>> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{host:?} is not a server name: {e}")))?;
        let tcp = TcpStream::connect((host, port)).await?;
        tcp.set_nodelay(true)?;
        TlsConnector::from(self.current()).connect(name, tcp).await
    }
}

/// The rustls configuration of one state of the files: the CA bundle,
/// then optionally the client certificate and key.
fn build(files: &[File]) -> Result<rustls::ClientConfig> {
    let [ca, identity @ ..] = files else {
        return Err(TlsError::config("ca_file", "is required"));
    };
    let builder = rustls::ClientConfig::builder_with_provider(crate::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::config("ca_file", format!("no TLS protocol version available: {e}")))?
        .with_root_certificates(ca.roots()?);
    let mut config = match identity {
        [cert, key] => builder.with_client_auth_cert(cert.certificates()?, key.private_key()?).map_err(|e| {
            TlsError::config(
                key.field,
                format!("{} cannot serve the certificate in {}: {e}", key.path.display(), cert.path.display()),
            )
        })?,
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![crate::ALPN_H2.to_vec()];
    Ok(config)
}
