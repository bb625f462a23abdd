//! Authentication shared by the gateway and the control plane: bearer JWTs
//! carrying `sub`, `tenant` and `roles`, signed with HS256 (a shared
//! secret) or RS256/ES256 (public keys from a JWKS file or URL, refreshed
//! in the background), with `exp`/`nbf` checked within a leeway and
//! `iss`/`aud` when configured. No gRPC here: callers hand in the
//! `authorization` header's value. The only I/O is reading the JWKS.
//!
//! - [`verify`]: the [`Authenticator`] and its algorithm rules.
//! - [`jwks`]: key sets, their sources and the refresher.
//! - [`AuthConfig`]: the table both servers read, and token minting.
//!
//! What a principal may do, role names included, is not here but in
//! `prism_proto::access`.
//!
//! **Secrets.** Secret settings are [`SecretString`]s (a `Debug` that shows
//! nothing) and may come from files (`hs256_secret_file`, [`read_secret`]),
//! read once when a server opens; an HS256 secret under
//! [`MIN_HS256_SECRET_BYTES`] (RFC 7518 §3.2) is refused wherever one is
//! read.
//!
//! **Keys.** HS256 tokens are checked against `hs256_secret`; RS256/ES256
//! tokens against the RSA / P-256 keys of a JWKS: `jwks_file`, re-read
//! periodically, or `jwks_url`, fetched with hyper's HTTP/1 client
//! connection (the hyper tonic already brings) over TLS for `https://`
//! (tokio-rustls on ring, roots only from `jwks_ca_file`), periodically
//! and, rate-limited, on an unknown `kid`. A failed read keeps the last
//! good set.
//!
//! **Without keys.** A control plane without a secret or JWKS refuses to
//! start unless told `insecure_no_auth` (`--insecure-no-auth`): then every
//! caller is an unchecked `anonymous` that may do everything, with a
//! warning at startup (tests, experiments). `prism dev` gives both servers
//! the same generated secret and each gateway its own `shard` token, so the
//! audit log names `dev-admin` and `shard-0`.
//!
//! **Client certificates.** On the gateway, with `[gateway.tls]
//! client_ca_file`, a client may (or, with `require_client_cert`, must)
//! present a certificate that CA signed; a call without a bearer token is
//! then the principal named by the certificate subject's common name, with
//! no roles (its grants decide). A bearer token, when present, is what
//! authenticates. On the control plane a client certificate only admits
//! the connection: its RPCs need roles (`shard`, `admin`) that
//! certificates do not carry, so the bearer token always says who calls.

pub mod jwks;
pub mod verify;

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};

pub use verify::Authenticator;

/// Why a caller was not authenticated (or a token could not be made).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{0}")]
    Unauthenticated(String),
    #[error("cannot sign token: {0}")]
    Sign(String),
    #[error("auth.{field}: {description}")]
    Config { field: &'static str, description: String },
}

pub type Result<T, E = AuthError> = std::result::Result<T, E>;

/// The fewest bytes an HS256 secret may have: RFC 7518 §3.2 requires a
/// key at least as long as the hash output (256 bits). Shorter secrets
/// are refused everywhere one is read: server settings, secret files and
/// `prism token create`.
pub const MIN_HS256_SECRET_BYTES: usize = 32;

/// A secret setting (an HS256 secret, a bearer token): a string whose
/// `Debug` shows nothing, so a configuration printed into a log never
/// carries it. Dereferences to the `str`.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct SecretString(String);

impl std::fmt::Debug for SecretString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl std::ops::Deref for SecretString {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<String> for SecretString {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl From<&str> for SecretString {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

/// Reads a secret from `path`: its whole content but the line ending
/// after it (files written with `echo` have one). Errors say which file
/// and why, never what it holds.
pub fn read_secret(path: &Path) -> std::result::Result<SecretString, String> {
    const MAX_BYTES: u64 = 64 * 1024;
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if meta.len() > MAX_BYTES {
        return Err(format!(
            "{} is {} bytes long; a secret file holds at most {MAX_BYTES}",
            path.display(),
            meta.len()
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let secret = text.trim_end_matches(['\n', '\r']);
    if secret.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(SecretString(secret.to_owned()))
}

/// Reads an HS256 secret from `path` ([`read_secret`]) and refuses one
/// shorter than [`MIN_HS256_SECRET_BYTES`].
pub fn read_hs256_secret(path: &Path) -> std::result::Result<SecretString, String> {
    let secret = read_secret(path)?;
    check_hs256_secret(&secret).map_err(|e| format!("{} holds {e}", path.display()))?;
    Ok(secret)
}

/// Refuses an HS256 secret shorter than [`MIN_HS256_SECRET_BYTES`]; the
/// error says how long it is, never what it is.
pub fn check_hs256_secret(secret: &str) -> std::result::Result<(), String> {
    if secret.len() < MIN_HS256_SECRET_BYTES {
        return Err(format!(
            "a {}-byte secret; HS256 needs at least {MIN_HS256_SECRET_BYTES} bytes (RFC 7518 §3.2)",
            secret.len()
        ));
    }
    Ok(())
}

/// Authentication settings (the `[gateway.auth]` and
/// `[control_plane.auth]` tables). Tokens are accepted when signed with
/// `hs256_secret` (alg HS256) or with a key of the JWKS (alg RS256 or
/// ES256); each algorithm is only ever checked against its own kind of
/// key.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Shared secret of HS256 bearer tokens, at least 32 bytes
    /// ([`MIN_HS256_SECRET_BYTES`]). Default: none.
    pub hs256_secret: Option<SecretString>,
    /// A file holding the HS256 secret instead (read once at startup, one
    /// trailing line ending ignored; not with `hs256_secret`). Default:
    /// none.
    pub hs256_secret_file: Option<PathBuf>,
    /// A JWKS file (RFC 7517 `{"keys": [...]}`) of RSA and P-256 public
    /// keys for RS256/ES256 tokens; read at start and re-read every
    /// `jwks_refresh_seconds`. Default: none.
    pub jwks_file: Option<PathBuf>,
    /// An `http://` or `https://` URL serving the JWKS, fetched at start, every
    /// `jwks_refresh_seconds`, and when a token names an unknown `kid`
    /// (at most once per `jwks_min_refresh_seconds`). A failed fetch
    /// keeps the last good key set. At most one of `jwks_file` and
    /// `jwks_url`. Default: none.
    pub jwks_url: Option<String>,
    /// PEM CA certificates that sign an `https://` `jwks_url`'s server
    /// certificate. Default: the system bundle
    /// `/etc/ssl/certs/ca-certificates.crt`.
    pub jwks_ca_file: Option<PathBuf>,
    /// Period of JWKS re-reads, in seconds. Default 300; range 1..=86 400.
    pub jwks_refresh_seconds: Option<u64>,
    /// Least time between two JWKS reads triggered by unknown `kid`s, in
    /// seconds. Default 10; range 0..=3 600.
    pub jwks_min_refresh_seconds: Option<u64>,
    /// Required `iss` claim. Default: not checked.
    pub issuer: Option<String>,
    /// Required `aud` claim (one of the token's audiences). Default: not
    /// checked, and a token with an `aud` is still accepted.
    pub audience: Option<String>,
    /// Serve callers without a token as the principal `anonymous` with no
    /// roles. Default false: secure by default.
    pub allow_anonymous: bool,
    /// Clock leeway for `exp` and `nbf`, in seconds. Default 30; at most
    /// 300.
    pub leeway_seconds: Option<u64>,
}

/// Default of [`AuthConfig::jwks_refresh_seconds`].
pub const DEFAULT_JWKS_REFRESH_SECONDS: u64 = 300;
/// Default of [`AuthConfig::jwks_min_refresh_seconds`].
pub const DEFAULT_JWKS_MIN_REFRESH_SECONDS: u64 = 10;
/// Default of [`AuthConfig::leeway_seconds`].
pub const DEFAULT_LEEWAY_SECONDS: u64 = 30;

impl AuthConfig {
    /// Whether any token can be verified (a secret or a JWKS source).
    pub fn verifies_tokens(&self) -> bool {
        self.hs256_secret.is_some()
            || self.hs256_secret_file.is_some()
            || self.jwks_file.is_some()
            || self.jwks_url.is_some()
    }

    /// Reads `hs256_secret_file` into `hs256_secret` (a server does it
    /// once, at startup); afterwards the file is no longer named. The
    /// error names the setting and the file, never the secret.
    pub fn read_secret_file(&mut self) -> Result<()> {
        if let Some(path) = self.hs256_secret_file.take() {
            let secret = read_hs256_secret(&path)
                .map_err(|description| AuthError::Config { field: "hs256_secret_file", description })?;
            self.hs256_secret = Some(secret);
        }
        Ok(())
    }

    /// Checks the shape of every field (nothing is read or fetched); the
    /// error names the first wrong one.
    pub fn validate(&self) -> Result<()> {
        let bad = |field, description: &str| Err(AuthError::Config { field, description: description.to_owned() });
        if let Some(secret) = &self.hs256_secret {
            check_hs256_secret(secret)
                .map_err(|e| AuthError::Config { field: "hs256_secret", description: format!("is {e}") })?;
        }
        if self.hs256_secret.is_some() && self.hs256_secret_file.is_some() {
            return bad("hs256_secret_file", "cannot be set together with hs256_secret");
        }
        if self.hs256_secret_file.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
            return bad("hs256_secret_file", "is empty: name a file, or leave it out");
        }
        if self.jwks_file.is_some() && self.jwks_url.is_some() {
            return bad("jwks_url", "cannot be set together with jwks_file");
        }
        if let Some(url) = &self.jwks_url {
            jwks::HttpSource::parse(url).map_err(|description| AuthError::Config { field: "jwks_url", description })?;
        }
        if self.jwks_refresh_seconds.is_some_and(|s| !(1..=86_400).contains(&s)) {
            return bad("jwks_refresh_seconds", "must be within 1..=86400");
        }
        if self.jwks_min_refresh_seconds.is_some_and(|s| s > 3600) {
            return bad("jwks_min_refresh_seconds", "must be at most 3600");
        }
        if self.leeway_seconds.is_some_and(|s| s > 300) {
            return bad("leeway_seconds", "must be at most 300");
        }
        if self.issuer.as_ref().is_some_and(String::is_empty) {
            return bad("issuer", "must not be empty");
        }
        if self.audience.as_ref().is_some_and(String::is_empty) {
            return bad("audience", "must not be empty");
        }
        Ok(())
    }
}

/// Who is calling: a verified token's `sub`, `tenant` claim and roles.
/// What they may do is not decided here: the access rule, role names
/// included, is `prism_proto::access` (this crate knows no other Prism
/// crate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub sub: String,
    pub tenant: Option<String>,
    pub roles: Vec<String>,
}

impl Principal {
    pub fn anonymous() -> Self {
        Self { sub: "anonymous".into(), tenant: None, roles: Vec::new() }
    }

    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

/// The claims Prism reads and writes.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Claims {
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
}

impl Claims {
    /// Claims of `sub` valid from now for `valid_for_seconds`.
    pub fn new(sub: &str, tenant: Option<&str>, roles: &[&str], valid_for_seconds: u64) -> Self {
        let now = unix_now();
        Self {
            sub: sub.into(),
            tenant: tenant.map(Into::into),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            exp: now + valid_for_seconds,
            iat: Some(now),
            ..Self::default()
        }
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

/// Signs `claims` with HS256.
pub fn sign_hs256(secret: &str, claims: &Claims) -> Result<String> {
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret.as_bytes()))
        .map_err(|e| AuthError::Sign(e.to_string()))
}

/// Mints an HS256 token (for `prism dev` and tests).
pub fn mint_hs256(
    secret: &str,
    sub: &str,
    tenant: Option<&str>,
    roles: &[&str],
    valid_for_seconds: u64,
) -> Result<String> {
    sign_hs256(secret, &Claims::new(sub, tenant, roles, valid_for_seconds))
}
