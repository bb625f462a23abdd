//! Authentication: establishes the call's [`Principal`](crate::auth::Principal)
//! from its bearer token, or refuses with UNAUTHENTICATED.
//!
//! Verifying a token is most of a cache-hit GetItems' CPU (a profile put
//! HS256 verification at a third of all the gateway process's instructions:
//! two base64 + JSON decodes, an HMAC key schedule and SHA-256, per call),
//! while a client sends the same token on every call. So tokens that
//! verified are remembered ([`VerifiedTokens`]) and the next call with the
//! same `authorization` header gets the same principal without verifying
//! again. Why that is safe:
//!
//! - An entry is the exact header value (the whole token, signature
//!   included) → the principal its verification gave. Only successes are
//!   remembered; a token that differs in any byte is a different key and
//!   is verified.
//! - An entry is used only before the token's `exp` (without the leeway
//!   the verifier allows: stricter than verifying), and at most
//!   [`MAX_AGE_SECS`] after it was verified: a key removed from the JWKS
//!   stops admitting its tokens within that time. Nothing else can change
//!   a verification's answer (secret, issuer and audience rules are fixed
//!   for the gateway's life; `nbf` in the future failed verification).
//! - Bounded: at most [`CAPACITY`] entries; when full, expired entries go,
//!   then everything (the cost of overflow is verifying again, not memory).
//! - No timing oracle on the lookup: the map hashes with std's randomly
//!   keyed SipHash, so bytes are compared only with entries whose keyed
//!   hash matched — which an attacker cannot aim at — and a token is a
//!   bearer credential anyway: whoever can send it needs no oracle.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use super::check::{CheckLayer, Step};
use crate::audit::AuditSink;
use crate::auth::{Authenticator, Principal};
use crate::call::Call;
use crate::config::AuthConfig;
use crate::error::{GatewayError, Result};

pub type AuthenticateLayer = CheckLayer<Authenticate>;

/// Verified tokens remembered at most (each costs its length plus its
/// principal: ~10 MB at 1 KiB tokens).
pub const CAPACITY: usize = 10_000;
/// Seconds a verified token is remembered at most, whatever its `exp`.
pub const MAX_AGE_SECS: u64 = 60;

#[derive(Debug, Clone)]
pub struct Authenticate {
    authenticator: Authenticator,
    tokens: Arc<VerifiedTokens>,
    audit: Arc<AuditSink>,
}

impl Authenticate {
    pub fn new(config: &AuthConfig, audit: Arc<AuditSink>) -> Self {
        Self { authenticator: Authenticator::new(config), tokens: Arc::default(), audit }
    }

    /// Remembers verified tokens in `tokens` (shared with other pipelines
    /// and read by the metrics) instead of a cache of its own.
    pub fn sharing(mut self, tokens: Arc<VerifiedTokens>) -> Self {
        self.tokens = tokens;
        self
    }

    /// The cache of verified tokens (for tests and metrics).
    pub fn verified_tokens(&self) -> &VerifiedTokens {
        &self.tokens
    }

    /// The cache of verified tokens, shared (for the gateway's metrics).
    pub fn tokens(&self) -> Arc<VerifiedTokens> {
        self.tokens.clone()
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Step for Authenticate {
    fn check(&self, call: &mut Call) -> Result<()> {
        // mTLS: a verified client certificate names the principal of a call
        // without a bearer token (no roles: grants decide). A token, when
        // present, is what authenticates.
        if call.authorization.is_none()
            && let Some(cn) = call.client_cert.as_ref().filter(|cn| !cn.is_empty())
        {
            call.principal = Some(Arc::new(Principal { sub: cn.clone(), tenant: None, roles: Vec::new() }));
            return Ok(());
        }
        let now = unix_now();
        if let Some(header) = call.authorization.as_deref()
            && let Some(principal) = self.tokens.get(header, now)
        {
            call.principal = Some(principal);
            return Ok(());
        }
        let (principal, exp) =
            self.authenticator.authenticate_until(call.authorization.as_deref()).map_err(|e| match e {
                prism_auth::AuthError::Unauthenticated(why) => {
                    // Audited as refused; who it was is what failed to be
                    // shown. (Validation accepted the name before.)
                    if let Some(namespace) = call.namespace() {
                        self.audit.refused(
                            "",
                            call.request.rpc(),
                            namespace,
                            call.client_addr,
                            prism_proto::error::ErrorKind::Unauthenticated.as_str(),
                            why.clone(),
                        );
                    }
                    GatewayError::Unauthenticated(why)
                }
                other => GatewayError::Internal(other.to_string()),
            })?;
        let principal = Arc::new(principal);
        if let (Some(header), Some(exp)) = (call.authorization.as_deref(), exp) {
            self.tokens.insert(header, principal.clone(), exp.min(now.saturating_add(MAX_AGE_SECS)), now);
        }
        call.principal = Some(principal);
        Ok(())
    }
}

/// What a verified `authorization` header gave: its principal, and until
/// when (unix seconds, exclusive) that may be reused.
#[derive(Debug)]
struct Verified {
    principal: Arc<Principal>,
    until: u64,
}

/// `authorization` header → what verifying it gave. See the module docs.
#[derive(Debug, Default)]
pub struct VerifiedTokens {
    map: RwLock<HashMap<Box<str>, Verified>>,
    pub hits: AtomicU64,
    pub misses: AtomicU64,
}

impl VerifiedTokens {
    /// The principal of `header` if it verified and may still be reused at `now`.
    pub fn get(&self, header: &str, now: u64) -> Option<Arc<Principal>> {
        let found =
            self.map.read().ok().and_then(|map| map.get(header).filter(|v| now < v.until).map(|v| v.principal.clone()));
        let counter = if found.is_some() { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Remembers that `header` verified as `principal`, reusable until `until`.
    pub fn insert(&self, header: &str, principal: Arc<Principal>, until: u64, now: u64) {
        if until <= now {
            return;
        }
        let Ok(mut map) = self.map.write() else { return };
        if map.len() >= CAPACITY {
            map.retain(|_, v| now < v.until);
            if map.len() >= CAPACITY {
                map.clear();
            }
        }
        map.insert(header.into(), Verified { principal, until });
    }

    pub fn len(&self) -> usize {
        self.map.read().map_or(0, |m| m.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call_with(header: &str) -> Call {
        Call::new(crate::call::Request::Get(Default::default()), Some(header.to_owned()))
    }

    fn principal(sub: &str) -> Arc<Principal> {
        Arc::new(Principal { sub: sub.into(), tenant: None, roles: Vec::new() })
    }

    #[test]
    fn an_entry_is_reused_only_before_its_expiry_and_only_for_the_same_bytes() {
        let tokens = VerifiedTokens::default();
        tokens.insert("Bearer a.b.c", principal("ada"), 100, 50);
        assert_eq!(tokens.get("Bearer a.b.c", 99), Some(principal("ada")));
        assert_eq!(tokens.get("Bearer a.b.c", 100), None, "expired at `until`");
        assert_eq!(tokens.get("Bearer a.b.d", 60), None, "another signature is another token");
        tokens.insert("Bearer x", principal("bob"), 50, 50);
        assert_eq!(tokens.get("Bearer x", 49), None, "already expired: not remembered");
    }

    #[test]
    fn the_cache_stays_bounded() {
        let tokens = VerifiedTokens::default();
        for i in 0..CAPACITY + 10 {
            tokens.insert(&format!("Bearer {i}"), principal("p"), 1000, 1);
        }
        assert!(tokens.len() <= CAPACITY);
        assert_eq!(tokens.get(&format!("Bearer {}", CAPACITY + 9), 2), Some(principal("p")));
    }

    #[test]
    fn verified_tokens_are_remembered_and_bad_ones_are_not() -> anyhow::Result<()> {
        let secret = "secret-of-the-test";
        let config = AuthConfig { hs256_secret: Some(secret.into()), ..Default::default() };
        let step = Authenticate::new(&config, Arc::default());
        let token = prism_auth::sign_hs256(secret, &prism_auth::Claims::new("ada", Some("acme"), &[], 3600))?;
        let header = format!("Bearer {token}");
        let mut call = call_with(&header);
        step.check(&mut call)?;
        assert_eq!(call.principal.as_ref().map(|p| p.sub.as_str()), Some("ada"));
        assert_eq!(step.verified_tokens().len(), 1);
        let mut again = call_with(&header);
        step.check(&mut again)?;
        assert_eq!(again.principal, call.principal);
        assert!(
            again.principal.as_ref().zip(call.principal.as_ref()).is_some_and(|(a, b)| Arc::ptr_eq(a, b)),
            "a cached token's principal is shared, not copied"
        );
        assert_eq!(step.verified_tokens().hits.load(Ordering::Relaxed), 1);
        // A tampered signature is verified (and refused), never served from the cache.
        let mut tampered = header.clone();
        let last = tampered.pop().map_or('A', |c| if c == 'A' { 'B' } else { 'A' });
        tampered.push(last);
        assert!(step.check(&mut call_with(&tampered)).is_err());
        assert_eq!(step.verified_tokens().len(), 1);
        Ok(())
    }
}
