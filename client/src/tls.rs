//! Endpoints, plain or TLS: `https://host:port` is reached over TLS,
//! `host:port` and `http://host:port` in plain text.
//!
//! TLS connections are made by [`prism_tls::ClientTls`] (rustls on ring;
//! the CAs and client certificate of a [`ClientTlsConfig`], re-read when
//! their files change) under a tonic channel. tonic's own
//! `ClientTlsConfig` is read once and cannot follow a rotated certificate
//! or CA bundle, so the channel gets a connector instead: tonic sees a
//! plain `http://host:port` endpoint whose connections this module makes,
//! and requests carry `https` as their scheme.

use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::codegen::http::Uri;
use tonic::transport::{Channel, Endpoint};

pub use prism_tls::ClientTlsConfig;

use crate::error::{ClientError, Result};

/// How a client reaches `https://` endpoints: the CAs it trusts and the
/// certificate it presents, if any. [`Tls::default`] trusts the system CA
/// bundle ([`prism_tls::SYSTEM_CA_FILE`]) and presents no certificate.
/// Cheap to clone; clones share the loaded files (the defaults are read
/// when the first `https://` endpoint needs them).
#[derive(Clone, Debug, Default)]
pub struct Tls(Arc<OnceLock<prism_tls::ClientTls>>);

impl Tls {
    /// Reads the files now (a bad one is an error naming the setting and
    /// the file); they are re-read when they change.
    pub fn new(config: &ClientTlsConfig) -> Result<Self> {
        Ok(Self(Arc::new(OnceLock::from(prism_tls::ClientTls::new(config)?))))
    }

    /// The loaded TLS, or the defaults, read once.
    fn client(&self) -> Result<prism_tls::ClientTls> {
        if let Some(tls) = self.0.get() {
            return Ok(tls.clone());
        }
        let defaults = prism_tls::ClientTls::new(&ClientTlsConfig::default())?;
        Ok(self.0.get_or_init(|| defaults).clone())
    }
}

/// Where an address leads.
enum Target {
    Plain(Endpoint),
    Tls { endpoint: Endpoint, host: String, port: u16 },
}

fn invalid(address: &str, reason: impl std::fmt::Display) -> ClientError {
    ClientError::InvalidEndpoint { endpoint: address.to_owned(), reason: reason.to_string() }
}

fn target(address: &str) -> Result<Target> {
    let url = if address.contains("://") { address.to_owned() } else { format!("http://{address}") };
    let uri = Uri::from_str(&url).map_err(|e| invalid(address, e))?;
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(invalid(address, "only http:// and https:// (or host:port) are supported")),
    };
    let host = uri.host().filter(|h| !h.is_empty()).ok_or_else(|| invalid(address, "no host"))?.to_owned();
    if !tls {
        return Endpoint::from_str(&url).map(Target::Plain).map_err(|e| invalid(address, e));
    }
    let port = uri.port_u16().unwrap_or(443);
    let authority = format!("{host}:{port}");
    let origin = Uri::from_str(&format!("https://{authority}")).map_err(|e| invalid(address, e))?;
    let endpoint =
        Endpoint::from_shared(format!("http://{authority}")).map_err(|e| invalid(address, e))?.origin(origin);
    Ok(Target::Tls { endpoint, host, port })
}

/// The settings every channel gets.
fn configure(endpoint: Endpoint) -> Endpoint {
    endpoint
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true)
}

/// A channel to `address`, connected when first used (and again after its
/// connection breaks): plain text, or TLS with `tls` for `https://`.
pub fn lazy_channel(address: &str, tls: &Tls) -> Result<Channel> {
    Ok(match target(address)? {
        Target::Plain(endpoint) => configure(endpoint).connect_lazy(),
        Target::Tls { endpoint, host, port } => {
            configure(endpoint).connect_with_connector_lazy(Dial { tls: tls.client()?, host, port })
        }
    })
}

/// A channel to `address`, connected now.
pub(crate) async fn channel(address: &str, tls: &Tls) -> Result<Channel> {
    let connected = match target(address)? {
        Target::Plain(endpoint) => configure(endpoint).connect().await,
        Target::Tls { endpoint, host, port } => {
            configure(endpoint).connect_with_connector(Dial { tls: tls.client()?, host, port }).await
        }
    };
    connected.map_err(|source| ClientError::Connect { endpoint: address.to_owned(), source })
}

/// Makes one TLS connection to a fixed server (tonic asks again when the
/// connection breaks).
#[derive(Clone)]
struct Dial {
    tls: prism_tls::ClientTls,
    host: String,
    port: u16,
}

impl tower::Service<Uri> for Dial {
    type Response = TokioIo<prism_tls::ClientStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let dial = self.clone();
        Box::pin(async move { Ok(TokioIo::new(dial.tls.connect(&dial.host, dial.port).await?)) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_choose_plain_text_or_tls() {
        assert!(matches!(target("127.0.0.1:7400"), Ok(Target::Plain(_))));
        assert!(matches!(target("http://localhost:7400"), Ok(Target::Plain(_))));
        assert!(matches!(target("https://localhost:7400"), Ok(Target::Tls { port: 7400, .. })));
        assert!(matches!(target("https://gw.example.com"), Ok(Target::Tls { port: 443, .. })));
        assert!(matches!(target("https://[::1]:7401"), Ok(Target::Tls { port: 7401, .. })));
        assert!(target("ftp://localhost:21").is_err());
        assert!(target("not a host").is_err());
    }
}
