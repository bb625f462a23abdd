//! JSON Web Key Sets: the public keys of RS256/ES256 tokens, read from a
//! file or fetched over HTTP, held in one [`KeyStore`] that request paths
//! only load, and refreshed by one background task per authenticator.
//!
//! Only RSA keys (for RS256) and P-256 EC keys (for ES256) are loaded; a
//! key whose `alg` or `use` says otherwise, and every symmetric (`oct`)
//! key, is skipped, so a public key set can never supply an HMAC secret.
//! A read that fails, or yields no usable key, keeps the last good set.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::sync::Notify;

/// Largest JWKS document read, in bytes.
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// Longest a JWKS fetch (connect, request, body) may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// One verification key.
struct Key {
    kid: Option<String>,
    alg: Algorithm,
    key: Arc<DecodingKey>,
}

/// An immutable set of keys.
#[derive(Default)]
pub struct KeySet {
    keys: Vec<Key>,
}

impl KeySet {
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The usable keys of a JWKS document; an error when it is not a
    /// JWKS or holds no usable key.
    pub fn parse(document: &[u8]) -> Result<Self, String> {
        let set: JwkSet = serde_json::from_slice(document).map_err(|e| format!("not a JWKS: {e}"))?;
        let keys: Vec<Key> = set.keys.iter().filter_map(usable).collect();
        if keys.is_empty() {
            return Err(format!("none of its {} keys is an RS256 or ES256 verification key", set.keys.len()));
        }
        Ok(Self { keys })
    }
}

/// The key `jwk` verifies with, if it is an RS256 or ES256 signature key.
fn usable(jwk: &Jwk) -> Option<Key> {
    let alg = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => Algorithm::ES256,
        _ => return None,
    };
    let declared_ok = match jwk.common.key_algorithm {
        None => true,
        Some(KeyAlgorithm::RS256) => alg == Algorithm::RS256,
        Some(KeyAlgorithm::ES256) => alg == Algorithm::ES256,
        Some(_) => false,
    };
    let signing_use = !matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption));
    if !declared_ok || !signing_use {
        return None;
    }
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(Key { kid: jwk.common.key_id.clone(), alg, key: Arc::new(key) })
}

/// What a token's `kid` found.
pub enum Lookup {
    Found(Arc<DecodingKey>),
    /// No key of that id (or, without a `kid`, none of that algorithm).
    UnknownKid,
    /// No `kid`, and more than one key of the algorithm.
    Ambiguous,
}

/// The current key set, swapped whole by the refresher.
#[derive(Default)]
pub struct KeyStore {
    keys: ArcSwap<KeySet>,
    wake: Notify,
}

impl KeyStore {
    pub fn replace(&self, keys: KeySet) {
        self.keys.store(Arc::new(keys));
    }

    /// The number of keys currently loaded.
    pub fn len(&self) -> usize {
        self.keys.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The key of `kid` for `alg`. A key of that id for another algorithm
    /// does not match: the token's `alg` never re-purposes a key.
    pub fn lookup(&self, kid: Option<&str>, alg: Algorithm) -> Lookup {
        let set = self.keys.load();
        let mut candidates = set.keys.iter().filter(|k| k.alg == alg && (kid.is_none() || k.kid.as_deref() == kid));
        match (candidates.next(), candidates.next()) {
            (Some(k), None) => Lookup::Found(k.key.clone()),
            (None, _) => Lookup::UnknownKid,
            (Some(_), Some(_)) => Lookup::Ambiguous,
        }
    }

    /// Asks the refresher for an early re-read (it rate-limits).
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

/// Where keys come from.
#[derive(Debug, Clone)]
pub enum Source {
    File(PathBuf),
    Http(HttpSource),
}

impl Source {
    async fn load(&self) -> Result<KeySet, String> {
        match self {
            Self::File(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || read_file(&path)).await.map_err(|e| e.to_string())?
            }
            Self::Http(http) => {
                let body = tokio::time::timeout(FETCH_TIMEOUT, http.get())
                    .await
                    .map_err(|_| format!("fetching {} took longer than {FETCH_TIMEOUT:?}", http.uri))??;
                KeySet::parse(&body)
            }
        }
    }

    fn name(&self) -> String {
        match self {
            Self::File(path) => path.display().to_string(),
            Self::Http(http) => http.uri.to_string(),
        }
    }
}

/// Reads a JWKS file.
pub fn read_file(path: &Path) -> Result<KeySet, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.len() > MAX_JWKS_BYTES as u64 {
        return Err(format!("{} is larger than {MAX_JWKS_BYTES} bytes", path.display()));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    KeySet::parse(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// Where the system's CA bundle is on Debian-like systems: the default
/// roots of an `https://` JWKS URL.
pub const SYSTEM_CA_FILE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// A JWKS served over HTTP/1.1, plain or over TLS (rustls on ring; roots
/// only from the configured CA file).
#[derive(Clone)]
pub struct HttpSource {
    uri: hyper::Uri,
    host: String,
    port: u16,
    /// Set for `https://` once [`HttpSource::with_roots`] read the CAs.
    tls: Option<Arc<rustls::ClientConfig>>,
    https: bool,
}

impl std::fmt::Debug for HttpSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpSource").field("uri", &self.uri).field("https", &self.https).finish_non_exhaustive()
    }
}

impl HttpSource {
    /// Checks the URL's shape (nothing is read or fetched).
    pub fn parse(url: &str) -> Result<Self, String> {
        let uri: hyper::Uri = url.parse().map_err(|e| format!("{url:?} is not a URL: {e}"))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(format!("{url:?} is not an http:// or https:// URL")),
        };
        let host = uri.host().filter(|h| !h.is_empty()).ok_or_else(|| format!("{url:?} names no host"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        Ok(Self { uri, host, port, tls: None, https })
    }

    /// For an `https://` URL, trusts the CA certificates of `ca_file`
    /// (default [`SYSTEM_CA_FILE`]); a plain URL is returned as is.
    pub fn with_roots(mut self, ca_file: Option<&Path>) -> Result<Self, String> {
        if !self.https {
            return Ok(self);
        }
        let path = ca_file.unwrap_or(Path::new(SYSTEM_CA_FILE));
        let certificates = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("cannot read PEM certificates from {}: {e}", path.display()))?;
        let mut roots = rustls::RootCertStore::empty();
        for certificate in certificates {
            roots.add(certificate).map_err(|e| format!("{} holds an unusable CA certificate: {e}", path.display()))?;
        }
        if roots.is_empty() {
            return Err(format!("{} holds no CA certificate", path.display()));
        }
        // The provider is explicit, whatever another crate installed.
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("no TLS protocol version available: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        self.tls = Some(Arc::new(config));
        Ok(self)
    }

    /// One GET over a fresh connection; the body when the status is 200.
    async fn get(&self) -> Result<Vec<u8>, String> {
        let url = &self.uri;
        let stream = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("cannot connect to {url}: {e}"))?;
        match (&self.tls, self.https) {
            (Some(tls), _) => {
                let name =
                    rustls::pki_types::ServerName::try_from(self.host.clone()).map_err(|e| format!("{url}: {e}"))?;
                let stream = tokio_rustls::TlsConnector::from(tls.clone())
                    .connect(name, stream)
                    .await
                    .map_err(|e| format!("{url}: TLS: {e}"))?;
                self.exchange(stream).await
            }
            (None, true) => Err(format!("{url}: no CA certificates to verify the server with")),
            (None, false) => self.exchange(stream).await,
        }
    }

    async fn exchange<S>(&self, stream: S) -> Result<Vec<u8>, String>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let url = &self.uri;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        // Drives the connection; it ends when `sender` is dropped.
        let driver = tokio::spawn(connection);
        let authority = url.authority().map_or_else(|| self.host.clone(), ToString::to_string);
        let path = url.path_and_query().map_or("/", |p| p.as_str());
        let request = hyper::Request::get(path)
            .header(hyper::header::HOST, authority)
            .header(hyper::header::ACCEPT, "application/json")
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("{url}: {e}"))?;
        let outcome = async {
            let response = sender.send_request(request).await.map_err(|e| format!("{url}: {e}"))?;
            if response.status() != hyper::StatusCode::OK {
                return Err(format!("{url} answered {}", response.status()));
            }
            let body = Limited::new(response.into_body(), MAX_JWKS_BYTES)
                .collect()
                .await
                .map_err(|e| format!("{url}: body: {e}"))?;
            Ok(body.to_bytes().to_vec())
        }
        .await;
        drop(sender);
        driver.abort();
        outcome
    }
}

/// The background re-reads of one key store; stops when dropped.
pub struct Refresher(tokio::task::JoinHandle<()>);

impl Drop for Refresher {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Refresher {
    /// Starts re-reading `source` into `store` every `period`, and on
    /// [`KeyStore::wake`] when the last read is at least `min_gap` old.
    /// An HTTP source is fetched at once. `None` outside a tokio runtime.
    pub fn spawn(store: Arc<KeyStore>, source: Source, period: Duration, min_gap: Duration) -> Option<Self> {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(source = %source.name(), "no async runtime: the JWKS will not be refreshed");
            return None;
        };
        Some(Self(runtime.spawn(refresh(store, source, period, min_gap))))
    }
}

async fn refresh(store: Arc<KeyStore>, source: Source, period: Duration, min_gap: Duration) {
    let name = source.name();
    let mut load_now = matches!(source, Source::Http(_));
    loop {
        if load_now {
            match source.load().await {
                Ok(keys) => {
                    tracing::debug!(source = %name, keys = keys.len(), "JWKS loaded");
                    store.replace(keys);
                }
                Err(e) => tracing::warn!(source = %name, error = %e, "JWKS refresh failed; keeping the last good keys"),
            }
        }
        load_now = true;
        let last = tokio::time::Instant::now();
        tokio::select! {
            () = tokio::time::sleep(period) => {}
            () = store.wake.notified() => tokio::time::sleep_until(last + min_gap).await,
        }
    }
}
