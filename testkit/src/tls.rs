//! Test certificates: CAs that sign server and client certificates (valid
//! or expired), written as PEM files into a temp dir, and the TLS settings
//! of Prism's servers and clients that use them.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use prism_tls::{ClientTlsConfig, ServerTlsConfig};

/// A certificate authority: its certificate and the key that signs.
pub struct Ca {
    pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Ca {
    /// A new self-signed CA named `name`.
    pub fn new(name: &str) -> anyhow::Result<Self> {
        let key = rcgen::KeyPair::generate().context("generate the CA key")?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).context("CA parameters")?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
        let pem = params.self_signed(&key).context("self-sign the CA")?.pem();
        Ok(Self { pem, issuer: rcgen::Issuer::new(params, key) })
    }

    /// The CA's certificate (PEM).
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// A certificate (PEM) and its key (PEM, PKCS#8) for common name
    /// `cn`, valid for `localhost` and `127.0.0.1` (rcgen makes an IP SAN
    /// of a name that parses as one), signed by this CA. An `expired` one
    /// was valid in 2000 only.
    pub fn leaf(&self, cn: &str, expired: bool) -> anyhow::Result<(String, String)> {
        let key = rcgen::KeyPair::generate().context("generate a key")?;
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .context("certificate parameters")?;
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        if expired {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2000, 12, 31);
        }
        let cert = params.signed_by(&key, &self.issuer).context("sign the certificate")?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// A CA with a directory for its files: the CA certificate and every
/// certificate and key it issues, under names that never collide.
pub struct Pki {
    ca: Ca,
    dir: tempfile::TempDir,
    next: AtomicU64,
}

impl Pki {
    pub fn new(name: &str) -> anyhow::Result<Self> {
        let pki = Self { ca: Ca::new(name)?, dir: tempfile::tempdir().context("temp dir")?, next: AtomicU64::new(0) };
        std::fs::write(pki.ca_file(), pki.ca.pem()).context("write ca.crt")?;
        Ok(pki)
    }

    pub fn ca(&self) -> &Ca {
        &self.ca
    }

    /// The CA's certificate file.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a new certificate for `cn` and its key; returns their paths.
    pub fn issue(&self, cn: &str, expired: bool) -> anyhow::Result<(PathBuf, PathBuf)> {
        let (cert, key) = self.ca.leaf(cn, expired)?;
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let (cert_file, key_file) =
            (self.dir.path().join(format!("{n}-{cn}.crt")), self.dir.path().join(format!("{n}-{cn}.key")));
        std::fs::write(&cert_file, cert).context("write a certificate")?;
        std::fs::write(&key_file, key).context("write a key")?;
        Ok((cert_file, key_file))
    }

    /// A server's TLS with a new certificate for `cn`: plain TLS, or
    /// mutual TLS with certificates of `clients` (required or optional).
    pub fn server(&self, cn: &str, clients: Option<(&Pki, bool)>) -> anyhow::Result<ServerTlsConfig> {
        let (cert_file, key_file) = self.issue(cn, false)?;
        Ok(ServerTlsConfig {
            cert_file,
            key_file,
            client_ca_file: clients.map(|(pki, _)| pki.ca_file()),
            require_client_cert: clients.is_some_and(|(_, required)| required),
        })
    }

    /// A client that trusts this CA and presents no certificate.
    pub fn trust(&self) -> ClientTlsConfig {
        ClientTlsConfig { ca_file: Some(self.ca_file()), ..ClientTlsConfig::default() }
    }

    /// A client that trusts `self` and presents a new certificate for `cn`
    /// issued by `issuer`.
    pub fn client(&self, issuer: &Pki, cn: &str, expired: bool) -> anyhow::Result<ClientTlsConfig> {
        let (cert_file, key_file) = issuer.issue(cn, expired)?;
        Ok(ClientTlsConfig { cert_file: Some(cert_file), key_file: Some(key_file), ..self.trust() })
    }
}
