//! TLS to the PostgreSQL server, for the namespaces that require it: the
//! gateway's trust (the CA bundle of the plugin's `tls_ca_file`) turned
//! into one rustls connector, and what a failed handshake tells a client.
//!
//! Trust belongs to the gateway and the requirement to the namespace: a
//! namespace can ask for TLS but never choose which CAs vouch for its
//! server. The only roots are that file's — no webpki or system roots, so
//! an operator knows exactly whom the gateway trusts — and the server's
//! certificate is checked against them and against the DSN's host name
//! (or IP address). One TLS stack: rustls with the ring provider.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::{PostgresError, Result};

/// What a client of a namespace that requires TLS is told when the gateway
/// has no CA to check its server with.
pub const NO_CA_MESSAGE: &str = "no CA configured for postgres TLS (tls_ca_file)";

/// A connector that trusts exactly the CA certificates in the PEM file at
/// `path`. Reads the file once: the gateway's trust changes with a restart.
pub(crate) fn connector(path: &Path) -> Result<MakeRustlsConnect> {
    let bad = |description: String| PostgresError::Config { field: "tls_ca_file".into(), description };
    let certificates = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| bad(format!("cannot read PEM certificates from {}: {e}", path.display())))?;
    if certificates.is_empty() {
        return Err(bad(format!("{} holds no PEM certificate", path.display())));
    }
    let mut roots = rustls::RootCertStore::empty();
    for certificate in certificates {
        roots.add(certificate).map_err(|e| bad(format!("{} holds an unusable CA certificate: {e}", path.display())))?;
    }
    // The provider is explicit rather than the process default, so that
    // nothing depends on which rustls provider another crate installed.
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(format!("no TLS protocol version available: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// What a client is told about a connection that failed in TLS, or `None`
/// when `error` is not about TLS. Never names the server.
pub(crate) fn failure(error: &tokio_postgres::Error) -> Option<&'static str> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        // tokio-rustls wraps rustls's error in an io::Error, whose
        // `source()` skips the wrapped error itself: look inside too.
        let inner = e.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref());
        let rustls_error =
            e.downcast_ref::<rustls::Error>().or_else(|| inner.and_then(|inner| inner.downcast_ref::<rustls::Error>()));
        if let Some(rustls_error) = rustls_error {
            return Some(match rustls_error {
                rustls::Error::InvalidCertificate(_) => {
                    "TLS verification failed: the postgres server's certificate is not trusted \
                     (not signed by a CA of tls_ca_file, or not for its host name)"
                }
                _ => "TLS verification failed: the TLS handshake with the postgres backend failed",
            });
        }
        source = e.source();
    }
    // The rest of tokio-postgres's TLS errors say what they are in words
    // only; the one that matters is the server answering the TLS request
    // with "no" (it runs without `ssl = on`).
    if error.to_string() != "error performing TLS handshake" {
        return None;
    }
    let refused = std::error::Error::source(error).is_some_and(|e| e.to_string().contains("does not support TLS"));
    Some(if refused {
        "the postgres backend does not offer TLS, which the namespace requires"
    } else {
        "TLS verification failed: the TLS handshake with the postgres backend failed"
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_ca_file_names_the_field() {
        let dir = std::env::temp_dir().join(format!("prism-postgres-tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("write");
        for path in [empty.as_path(), &dir.join("missing.pem")] {
            match connector(path) {
                Err(PostgresError::Config { field, .. }) => assert_eq!(field, "tls_ca_file"),
                Err(other) => panic!("{}: want a config error, got {other:?}", path.display()),
                Ok(_) => panic!("{}: want a config error, got a connector", path.display()),
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
