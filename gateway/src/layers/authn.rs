//! Authentication: establishes the call's [`Principal`](crate::auth::Principal)
//! from its bearer token, or refuses with UNAUTHENTICATED.

use super::{CheckLayer, Step};
use crate::auth::Authenticator;
use crate::call::Call;
use crate::config::AuthConfig;
use crate::error::Result;

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
        call.principal = Some(self.0.authenticate(call.authorization.as_deref())?);
        Ok(())
    }
}
