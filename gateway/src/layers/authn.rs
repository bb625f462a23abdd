//! Authentication: establishes the call's [`Principal`](crate::auth::Principal)
//! from its bearer token, or refuses with UNAUTHENTICATED.

use std::sync::Arc;

use super::{CheckLayer, Step};
use crate::audit::AuditSink;
use crate::auth::Authenticator;
use crate::call::Call;
use crate::config::AuthConfig;
use crate::error::{GatewayError, Result};

pub type AuthenticateLayer = CheckLayer<Authenticate>;

#[derive(Debug, Clone)]
pub struct Authenticate(Authenticator, Arc<AuditSink>);

impl Authenticate {
    pub fn new(config: &AuthConfig, audit: Arc<AuditSink>) -> Self {
        Self(Authenticator::new(config), audit)
    }
}

impl Step for Authenticate {
    fn check(&self, call: &mut Call) -> Result<()> {
        // mTLS: a verified client certificate names the principal of a call
        // without a bearer token (no roles: grants decide). A token, when
        // present, is what authenticates.
        if call.authorization.is_none()
            && let Some(cn) = call.client_cert.as_ref().filter(|cn| !cn.is_empty())
        {
            call.principal = Some(crate::auth::Principal { sub: cn.clone(), tenant: None, roles: Vec::new() });
            return Ok(());
        }
        let principal = self.0.authenticate(call.authorization.as_deref()).map_err(|e| match e {
            prism_auth::AuthError::Unauthenticated(why) => {
                // Audited as refused; who it was is what failed to be shown.
                self.1.refused("", call.request.rpc(), call.request.namespace(), "UNAUTHENTICATED", why.clone());
                GatewayError::Unauthenticated(why)
            }
            other => GatewayError::Internal(other.to_string()),
        })?;
        call.principal = Some(principal);
        Ok(())
    }
}
