//! Authentication: establishes the call's [`Principal`](crate::auth::Principal)
//! from its bearer token, or refuses with UNAUTHENTICATED.

use super::{CheckLayer, Step};
use crate::auth::Authenticator;
use crate::call::Call;
use crate::config::AuthConfig;
use crate::error::{GatewayError, Result};

pub type AuthenticateLayer = CheckLayer<Authenticate>;

#[derive(Debug, Clone)]
pub struct Authenticate(Authenticator);

impl Authenticate {
    pub fn new(config: &AuthConfig) -> Self {
        Self(Authenticator::new(config))
    }
}

impl Step for Authenticate {
    fn check(&self, call: &mut Call) -> Result<()> {
        let principal = self.0.authenticate(call.authorization.as_deref()).map_err(|e| match e {
            prism_auth::AuthError::Unauthenticated(why) => GatewayError::Unauthenticated(why),
            other => GatewayError::Internal(other.to_string()),
        })?;
        call.principal = Some(principal);
        Ok(())
    }
}
