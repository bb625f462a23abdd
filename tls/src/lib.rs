//! TLS on every hop of Prism, in one place: rustls on ring (the build's one
//! TLS stack) for the gateway's and the control plane's gRPC ports, for
//! gateways calling the control plane, and for `prism-client`.
//!
//! Certificates, keys and CA bundles come from PEM files named in the
//! configuration. They are read when the server or client starts (a bad
//! file is a startup error naming the setting and the file) and re-read
//! every [`RELOAD_INTERVAL`] afterwards: when their contents changed, the
//! next handshake uses the new ones — a rotated certificate or CA bundle
//! needs no restart, connections already open keep theirs, and files that
//! no longer load (a half-written rotation) are refused with a warning
//! while the last good ones stay in use.
//!
//! - [`ServerTlsConfig`] / [`ServerTls`]: a certificate, optionally the CA
//!   bundle of client certificates (mutual TLS); [`ServerTls::incoming`]
//!   turns a listener into a stream of TLS connections.
//! - [`ClientTlsConfig`] / [`ClientTls`]: the CAs a server must chain to
//!   and optionally a client certificate; [`ClientTls::connect`].
//! - [`common_name`]: the principal a verified client certificate names.
//!
//! No gRPC here: the servers hand [`ServerTls::incoming`] to tonic, whose
//! `Connected` impl for these streams carries the client's certificates
//! into each request, and `prism-client` wraps [`ClientTls::connect`] in a
//! connector.
//!
//! A bad file — unreadable, not PEM, a certificate where the key should
//! be, a key that does not fit the certificate or that ring cannot use —
//! is an error naming the setting and the file. [`ServerTls::incoming`]
//! runs handshakes concurrently (at most [`MAX_HANDSHAKES`], each within
//! [`HANDSHAKE_TIMEOUT`]); failures are logged at debug and dropped. ALPN
//! is `h2` on both ends.
//!
//! Invariants: no gRPC and no other Prism crate; rustls on ring is the only
//! TLS stack, and the provider is explicit, never the process default; a
//! handshake never touches the file system (it loads the configuration the
//! reload task stored).

mod client;
mod config;
mod error;
mod pem;
mod reload;
mod server;

pub use client::ClientTls;
pub use config::{ClientTlsConfig, SYSTEM_CA_FILE, ServerTlsConfig};
pub use error::{Result, TlsError};
pub use reload::RELOAD_INTERVAL;
pub use server::{HANDSHAKE_TIMEOUT, Incoming, MAX_HANDSHAKES, ServerTls};

/// A client's TLS connection to a server.
pub type ClientStream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;
/// A server's TLS connection from a client (tonic's `Connected` gives its
/// requests the client's certificates).
pub type ServerStream = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;

/// The ALPN protocol both ends agree on: gRPC is HTTP/2 only.
const ALPN_H2: &[u8] = b"h2";

/// The one crypto provider, explicit whatever another crate installed as
/// the process default.
fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}

/// The subject common name of a DER certificate, if it has one: the
/// principal a verified client certificate names.
pub fn common_name(der: &[u8]) -> Option<String> {
    use x509_cert::der::Decode;
    use x509_cert::der::asn1::{PrintableStringRef, Utf8StringRef};
    const CN: x509_cert::der::oid::ObjectIdentifier = x509_cert::der::oid::ObjectIdentifier::new_unwrap("2.5.4.3");
    let cert = x509_cert::Certificate::from_der(der).ok()?;
    cert.tbs_certificate.subject.0.iter().flat_map(|rdn| rdn.0.iter()).find(|atv| atv.oid == CN).and_then(|atv| {
        atv.value
            .decode_as::<Utf8StringRef<'_>>()
            .map(|s| s.as_str().to_owned())
            .or_else(|_| atv.value.decode_as::<PrintableStringRef<'_>>().map(|s| s.as_str().to_owned()))
            .ok()
    })
}

#[cfg(test)]
mod tests;
