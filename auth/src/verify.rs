//! The [`Authenticator`]: turns an `authorization` header into a
//! [`Principal`].
//!
//! The algorithm rules are the defence against `alg: none` and algorithm
//! confusion: the token's header picks the *kind* of key, never the key's
//! bytes. HS256 is only checked against the configured secret; RS256 only
//! against RSA keys of the JWKS and ES256 only against its P-256 keys
//! (symmetric JWKs are never loaded). Every other `alg`, `none` included,
//! is refused before any signature work.

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use crate::jwks::{self, KeyStore, Lookup, Refresher};
use crate::{AuthConfig, AuthError, DEFAULT_LEEWAY_SECONDS, Principal, Result};

/// Verifies bearer tokens. Cheap to clone; the JWKS refresher (if any)
/// stops when the last clone is dropped.
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Inner>,
}

struct Inner {
    hs256: Option<DecodingKey>,
    jwks: Option<Arc<KeyStore>>,
    hs256_rules: Validation,
    rs256_rules: Validation,
    es256_rules: Validation,
    allow_anonymous: bool,
    _refresher: Option<Refresher>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("hs256", &self.inner.hs256.is_some())
            .field("jwks", &self.inner.jwks.is_some())
            .field("allow_anonymous", &self.inner.allow_anonymous)
            .finish_non_exhaustive()
    }
}

fn rules(config: &AuthConfig, alg: Algorithm) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = config.leeway_seconds.unwrap_or(DEFAULT_LEEWAY_SECONDS);
    v.validate_nbf = true;
    v.set_required_spec_claims(&["exp", "sub"]);
    if let Some(iss) = &config.issuer {
        v.set_issuer(&[iss]);
        v.required_spec_claims.insert("iss".into());
    }
    match &config.audience {
        Some(aud) => {
            v.set_audience(&[aud]);
            v.required_spec_claims.insert("aud".into());
        }
        None => v.validate_aud = false,
    }
    v
}

/// What a verified token's claims give the principal. Not [`crate::Claims`]:
/// `aud` may be one string or an array of them (RFC 7519 §4.1.3), and
/// `iss`, `aud`, `nbf` are checked by `jsonwebtoken` on the raw claims, so
/// only what is read here must have Prism's shape.
#[derive(serde::Deserialize)]
struct Verified {
    sub: String,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    roles: Vec<String>,
    exp: u64,
}

fn unauthenticated(why: impl Into<String>) -> AuthError {
    AuthError::Unauthenticated(why.into())
}

impl Authenticator {
    /// Builds the authenticator of `config` (assumed validated). A
    /// `jwks_file` is read here; a `jwks_url` is first fetched by the
    /// refresher, which runs on the current tokio runtime (without one,
    /// the keys read here are never refreshed).
    pub fn new(config: &AuthConfig) -> Self {
        let source = match (&config.jwks_file, &config.jwks_url) {
            (Some(path), _) => Some(jwks::Source::File(path.clone())),
            (None, Some(url)) => {
                match jwks::HttpSource::parse(url).and_then(|h| h.with_roots(config.jwks_ca_file.as_deref())) {
                    Ok(http) => Some(jwks::Source::Http(http)),
                    Err(e) => {
                        tracing::error!(error = %e, "auth.jwks_url is unusable: no RS256/ES256 token will verify");
                        None
                    }
                }
            }
            (None, None) => None,
        };
        let (jwks, refresher) = match source {
            Some(source) => {
                let store = Arc::new(KeyStore::default());
                if let jwks::Source::File(path) = &source {
                    match jwks::read_file(path) {
                        Ok(keys) => store.replace(keys),
                        Err(e) => tracing::error!(error = %e, "cannot load auth.jwks_file; will retry"),
                    }
                }
                let period = Duration::from_secs(
                    config.jwks_refresh_seconds.unwrap_or(crate::DEFAULT_JWKS_REFRESH_SECONDS).max(1),
                );
                let min_gap = Duration::from_secs(
                    config.jwks_min_refresh_seconds.unwrap_or(crate::DEFAULT_JWKS_MIN_REFRESH_SECONDS),
                );
                let refresher = Refresher::spawn(store.clone(), source, period, min_gap);
                (Some(store), refresher)
            }
            None => (None, None),
        };
        Self {
            inner: Arc::new(Inner {
                hs256: config.hs256_secret.as_deref().map(|s| DecodingKey::from_secret(s.as_bytes())),
                jwks,
                hs256_rules: rules(config, Algorithm::HS256),
                rs256_rules: rules(config, Algorithm::RS256),
                es256_rules: rules(config, Algorithm::ES256),
                allow_anonymous: config.allow_anonymous,
                _refresher: refresher,
            }),
        }
    }

    /// The key store of the JWKS, if one is configured (for tests and
    /// readiness checks).
    pub fn jwks(&self) -> Option<&Arc<KeyStore>> {
        self.inner.jwks.as_ref()
    }

    /// The principal of an `authorization` header value (or its absence).
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Principal> {
        self.authenticate_until(authorization).map(|(principal, _)| principal)
    }

    /// As [`authenticate`](Self::authenticate), with the token's `exp`
    /// (seconds since the epoch; `None` for an anonymous caller): how long
    /// a cache of verified tokens may remember the answer at most.
    pub fn authenticate_until(&self, authorization: Option<&str>) -> Result<(Principal, Option<u64>)> {
        let Some(header) = authorization else {
            return if self.inner.allow_anonymous {
                Ok((Principal::anonymous(), None))
            } else {
                Err(unauthenticated("a bearer token is required"))
            };
        };
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| unauthenticated("the authorization header is not a bearer token"))?;
        // Reading the header verifies nothing; it only picks the kind of
        // key. An unknown `alg` (`none` included) fails right here.
        let head = jsonwebtoken::decode_header(token).map_err(|e| unauthenticated(format!("invalid token: {e}")))?;
        let fetched: Arc<DecodingKey>;
        let (key, rules) = match head.alg {
            Algorithm::HS256 => (
                self.inner.hs256.as_ref().ok_or_else(|| unauthenticated("HS256 tokens are not accepted here"))?,
                &self.inner.hs256_rules,
            ),
            alg @ (Algorithm::RS256 | Algorithm::ES256) => {
                let store = self
                    .inner
                    .jwks
                    .as_ref()
                    .ok_or_else(|| unauthenticated(format!("{alg:?} tokens are not accepted here")))?;
                fetched = match store.lookup(head.kid.as_deref(), alg) {
                    Lookup::Found(key) => key,
                    Lookup::UnknownKid => {
                        // A key rotation the refresher has not seen yet:
                        // ask for an early (rate-limited) re-read.
                        store.wake();
                        return Err(unauthenticated("invalid token: its key id is unknown"));
                    }
                    Lookup::Ambiguous => {
                        return Err(unauthenticated("invalid token: it names no key id and several keys could match"));
                    }
                };
                let rules = if alg == Algorithm::RS256 { &self.inner.rs256_rules } else { &self.inner.es256_rules };
                (&*fetched, rules)
            }
            other => return Err(unauthenticated(format!("invalid token: algorithm {other:?} is not accepted"))),
        };
        let data = jsonwebtoken::decode::<Verified>(token, key, rules)
            .map_err(|e| unauthenticated(format!("invalid token: {e}")))?;
        let c = data.claims;
        if c.sub.is_empty() {
            return Err(unauthenticated("invalid token: empty sub"));
        }
        Ok((Principal { sub: c.sub, tenant: c.tenant, roles: c.roles }, Some(c.exp)))
    }
}

#[cfg(test)]
mod tests;
