//! Authentication, shared with the control plane: see [`prism_auth`]. The
//! role names and the access rule are [`prism_proto::access`]'s.

pub use prism_auth::*;
pub use prism_proto::access::{ADMIN_ROLE, SHARD_ROLE, TENANT_ADMIN_ROLE};

/// The access rule's view of a verified principal.
pub fn caller(p: &Principal) -> prism_proto::access::Caller<'_> {
    prism_proto::access::Caller::new(&p.sub, p.tenant.as_deref(), &p.roles)
}
