//! Authentication shared by the gateway and the control plane: bearer JWTs
//! (HS256 with a shared secret) carrying `sub`, `tenant` and `roles`, with
//! `exp`/`nbf` checked within a leeway. No transport here: callers hand in
//! the `authorization` header's value. The tenancy issue adds RS256/ES256
//! from a JWKS and mTLS principals.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Why a caller was not authenticated (or a token could not be made).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{0}")]
    Unauthenticated(String),
    #[error("cannot sign token: {0}")]
    Sign(String),
}

pub type Result<T, E = AuthError> = std::result::Result<T, E>;

/// Authentication settings (the `[gateway.auth]` and
/// `[control_plane.auth]` tables).
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Shared secret of HS256 bearer tokens, at least 16 bytes.
    pub hs256_secret: Option<String>,
    /// Serve callers without a token as the principal `anonymous` with no
    /// roles. Default false: secure by default.
    pub allow_anonymous: bool,
    /// Clock leeway for `exp` and `nbf`, in seconds. Default 30.
    pub leeway_seconds: Option<u64>,
}

/// The superuser role.
pub const ADMIN_ROLE: &str = "admin";
/// Administers the tenant named in the token's `tenant` claim.
pub const TENANT_ADMIN_ROLE: &str = "tenant-admin";

/// Who is calling.
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
#[derive(Debug, Clone, Serialize, Deserialize)]
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
}

/// Verifies bearer tokens.
#[derive(Clone)]
pub struct Authenticator {
    key: Option<DecodingKey>,
    validation: Validation,
    allow_anonymous: bool,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator").field("allow_anonymous", &self.allow_anonymous).finish_non_exhaustive()
    }
}

impl Authenticator {
    pub fn new(config: &AuthConfig) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = config.leeway_seconds.unwrap_or(30);
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            key: config.hs256_secret.as_deref().map(|s| DecodingKey::from_secret(s.as_bytes())),
            validation,
            allow_anonymous: config.allow_anonymous,
        }
    }

    /// The principal of an `authorization` header value (or its absence).
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Principal> {
        let Some(header) = authorization else {
            return if self.allow_anonymous {
                Ok(Principal::anonymous())
            } else {
                Err(AuthError::Unauthenticated("a bearer token is required".into()))
            };
        };
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or_else(|| AuthError::Unauthenticated("the authorization header is not a bearer token".into()))?;
        let key =
            self.key.as_ref().ok_or_else(|| AuthError::Unauthenticated("this server accepts no tokens".into()))?;
        let data = jsonwebtoken::decode::<Claims>(token, key, &self.validation)
            .map_err(|e| AuthError::Unauthenticated(format!("invalid token: {e}")))?;
        let c = data.claims;
        if c.sub.is_empty() {
            return Err(AuthError::Unauthenticated("invalid token: empty sub".into()));
        }
        Ok(Principal { sub: c.sub, tenant: c.tenant, roles: c.roles })
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

/// Mints an HS256 token (for `prism dev` and tests).
pub fn mint_hs256(
    secret: &str,
    sub: &str,
    tenant: Option<&str>,
    roles: &[&str],
    valid_for_seconds: u64,
) -> Result<String> {
    let now = unix_now();
    let claims = Claims {
        sub: sub.into(),
        tenant: tenant.map(Into::into),
        roles: roles.iter().map(|r| (*r).to_owned()).collect(),
        exp: now + valid_for_seconds,
        nbf: None,
        iat: Some(now),
    };
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret.as_bytes()))
        .map_err(|e| AuthError::Sign(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn auth() -> Authenticator {
        Authenticator::new(&AuthConfig { hs256_secret: Some(SECRET.into()), ..AuthConfig::default() })
    }

    #[test]
    fn accepts_a_valid_token() {
        let t = mint_hs256(SECRET, "alice", Some("acme"), &["admin"], 60).expect("mint");
        let p = auth().authenticate(Some(&format!("Bearer {t}"))).expect("valid");
        assert_eq!(p, Principal { sub: "alice".into(), tenant: Some("acme".into()), roles: vec!["admin".into()] });
    }

    #[test]
    fn refuses_missing_forged_expired_and_unsigned_tokens() {
        let a = auth();
        assert!(matches!(a.authenticate(None), Err(AuthError::Unauthenticated(_))));
        assert!(a.authenticate(Some("Basic abc")).is_err());
        let other = mint_hs256("another-secret-of-16-bytes", "alice", None, &[], 60).expect("mint");
        assert!(a.authenticate(Some(&format!("Bearer {other}"))).is_err());
        let now = unix_now();
        let expired = Claims { sub: "a".into(), tenant: None, roles: vec![], exp: now - 3600, nbf: None, iat: None };
        let t = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &expired,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .expect("encode");
        assert!(a.authenticate(Some(&format!("Bearer {t}"))).is_err());
        // alg: none — header {"alg":"none"}, no signature.
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhIiwiZXhwIjo0MTAyNDQ0ODAwfQ.";
        assert!(a.authenticate(Some(&format!("Bearer {none}"))).is_err());
    }

    #[test]
    fn anonymous_only_when_allowed() {
        let a = Authenticator::new(&AuthConfig { allow_anonymous: true, ..AuthConfig::default() });
        assert_eq!(a.authenticate(None).expect("anonymous").sub, "anonymous");
    }
}
