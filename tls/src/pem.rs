//! PEM files to rustls types. Every error names the setting and the file,
//! and says what was expected, so a wrong file is fixed at the first try.

use std::path::Path;

use rustls::RootCertStore;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::{Result, TlsError};

/// One file as read, with the setting that named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct File {
    pub field: &'static str,
    pub path: std::path::PathBuf,
    pub bytes: Vec<u8>,
}

impl File {
    pub fn read(field: &'static str, path: &Path) -> Result<Self> {
        let bytes =
            std::fs::read(path).map_err(|e| TlsError::config(field, format!("cannot read {}: {e}", path.display())))?;
        Ok(Self { field, path: path.to_owned(), bytes })
    }

    fn error(&self, what: impl std::fmt::Display) -> TlsError {
        TlsError::config(self.field, format!("{}: {what}", self.path.display()))
    }

    /// The certificates of a chain: at least one.
    pub fn certificates(&self) -> Result<Vec<CertificateDer<'static>>> {
        let certificates = CertificateDer::pem_slice_iter(&self.bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.error(format!("is not valid PEM: {}", describe(&e))))?;
        if certificates.is_empty() {
            return Err(self.error("holds no PEM certificate (-----BEGIN CERTIFICATE-----)"));
        }
        Ok(certificates)
    }

    /// The private key: the first PEM key block (PKCS#8, PKCS#1 or SEC1).
    pub fn private_key(&self) -> Result<PrivateKeyDer<'static>> {
        PrivateKeyDer::from_pem_slice(&self.bytes).map_err(|e| match e {
            pem::Error::NoItemsFound => {
                self.error("holds no PEM private key (-----BEGIN PRIVATE KEY-----, RSA or EC PRIVATE KEY)")
            }
            e => self.error(format!("is not valid PEM: {}", describe(&e))),
        })
    }

    /// CA certificates, as trust anchors: at least one, each usable.
    pub fn roots(&self) -> Result<RootCertStore> {
        let mut roots = RootCertStore::empty();
        for certificate in self.certificates()? {
            roots.add(certificate).map_err(|e| self.error(format!("holds an unusable CA certificate: {e}")))?;
        }
        Ok(roots)
    }
}

fn describe(e: &pem::Error) -> String {
    match e {
        pem::Error::MissingSectionEnd { end_marker } => {
            format!("a section does not end (missing {})", String::from_utf8_lossy(end_marker))
        }
        pem::Error::IllegalSectionStart { line } => {
            format!("illegal section start {:?}", String::from_utf8_lossy(line))
        }
        pem::Error::Base64Decode(why) => format!("bad base64: {why}"),
        other => format!("{other:?}"),
    }
}
