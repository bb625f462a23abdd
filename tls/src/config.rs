//! The TLS tables of the configuration: `[gateway.tls]` and
//! `[control_plane.tls]` ([`ServerTlsConfig`]), `[gateway.control_plane_tls]`
//! and the client's flags ([`ClientTlsConfig`]). Parsing has no side
//! effects; files are read by [`ServerTls::new`](crate::ServerTls::new) and
//! [`ClientTls::new`](crate::ClientTls::new).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Result, TlsError};

/// Where the system's CA bundle is on Debian-like systems: what a client
/// trusts when it is given no CA file.
pub const SYSTEM_CA_FILE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// TLS on a server's gRPC port, and optionally mutual TLS.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsConfig {
    /// PEM certificate chain the server presents (its own certificate
    /// first). Re-read when it changes.
    pub cert_file: PathBuf,
    /// PEM private key of that certificate (PKCS#8, PKCS#1 or SEC1; RSA,
    /// ECDSA P-256/P-384 or Ed25519). Re-read when it changes.
    pub key_file: PathBuf,
    /// PEM CA certificates that sign client certificates. With it a client
    /// may present a certificate; a verified one names the principal (its
    /// subject's common name) of calls that carry no bearer token. Default:
    /// none (no client certificates). Re-read when it changes.
    pub client_ca_file: Option<PathBuf>,
    /// Refuse connections without a client certificate the CA signed.
    /// Default false. Needs `client_ca_file`.
    #[serde(default)]
    pub require_client_cert: bool,
}

impl ServerTlsConfig {
    /// Checks the shape (no file is read); the error names the setting.
    pub fn validate(&self) -> Result<()> {
        nonempty("cert_file", &self.cert_file)?;
        nonempty("key_file", &self.key_file)?;
        if let Some(ca) = &self.client_ca_file {
            nonempty("client_ca_file", ca)?;
        }
        if self.require_client_cert && self.client_ca_file.is_none() {
            return Err(TlsError::config("require_client_cert", "needs client_ca_file"));
        }
        Ok(())
    }
}

/// How a client reaches `https://` servers: the CAs their certificates
/// must chain to, and optionally a certificate of its own (mutual TLS).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClientTlsConfig {
    /// PEM CA certificates a server's certificate must chain to; nothing
    /// else is trusted. Default: the system bundle, [`SYSTEM_CA_FILE`].
    /// Re-read when it changes.
    pub ca_file: Option<PathBuf>,
    /// PEM certificate chain presented to servers that ask for one.
    /// Default: none. Needs `key_file`. Re-read when it changes.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`. Re-read when it changes.
    pub key_file: Option<PathBuf>,
}

impl ClientTlsConfig {
    /// Checks the shape (no file is read); the error names the setting.
    pub fn validate(&self) -> Result<()> {
        for (field, path) in [("ca_file", &self.ca_file), ("cert_file", &self.cert_file), ("key_file", &self.key_file)]
        {
            if let Some(path) = path {
                nonempty(field, path)?;
            }
        }
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => Err(TlsError::config("cert_file", "needs key_file")),
            (None, Some(_)) => Err(TlsError::config("key_file", "needs cert_file")),
            _ => Ok(()),
        }
    }

    /// The CA file in force: `ca_file`, else the system bundle.
    pub fn ca_file(&self) -> &Path {
        self.ca_file.as_deref().unwrap_or(Path::new(SYSTEM_CA_FILE))
    }
}

fn nonempty(field: &str, path: &Path) -> Result<()> {
    if path.as_os_str().is_empty() {
        return Err(TlsError::config(field, "must not be empty"));
    }
    Ok(())
}
