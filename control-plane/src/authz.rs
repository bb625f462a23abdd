//! Who may call what on the control plane, deny by default:
//!
//! - superusers (`admin`) everything;
//! - a tenant's admins (listed in its `admins`, or role `tenant-admin`
//!   with that `tenant` claim) read and manage the tenant (but not its
//!   quotas or state), its namespaces, grants and audit trail;
//! - namespace owners read, update and grant their namespace;
//! - consumers read and resolve the namespaces they were granted;
//! - shards (role `shard`) register, heartbeat, watch and report.
//!
//! The table in ARCHITECTURE.md is this file's summary. Every refusal is
//! audited (who, action, tenant, target, `permission_denied`).
//!
//! Without any key configured there is nothing to verify a principal
//! with: every caller is [`Caller::Open`] and may do everything, as before
//! authentication existed (the server warns at startup).

use std::collections::BTreeSet;
use std::time::SystemTime;

use prism_auth::{Principal, SHARD_ROLE};
use prism_proto::control::{AuditEvent, Namespace, Tenant};

use crate::error::{ControlPlaneError, Result};
use crate::plane::{ANONYMOUS, ControlPlane};

/// Who is calling the control plane.
#[derive(Debug, Clone)]
pub enum Caller {
    /// No key is configured: unchecked, may do everything.
    Open,
    /// A verified token (or `anonymous` with no roles, where allowed).
    Verified(Principal),
}

impl Caller {
    /// The principal recorded in the audit log.
    pub fn sub(&self) -> &str {
        match self {
            Self::Open => ANONYMOUS,
            Self::Verified(p) => &p.sub,
        }
    }

    fn principal(&self) -> Option<&Principal> {
        match self {
            Self::Open => None,
            Self::Verified(p) => Some(p),
        }
    }

    /// A superuser, or unchecked.
    pub fn is_admin(&self) -> bool {
        self.principal().is_none_or(Principal::is_admin)
    }
}

/// What a call needs.
#[derive(Debug, Clone, Copy)]
pub enum Need<'a> {
    /// The superuser.
    Admin,
    /// A gateway shard (or the superuser).
    Shard,
    /// Any verified principal.
    Authenticated,
    /// An admin of this tenant.
    TenantAdmin(&'a str),
    /// An admin of this namespace: its tenant's admins and its owners.
    NamespaceAdmin(&'a str),
    /// Anyone who may use this namespace: its admins and consumers, and
    /// shards (which route it).
    NamespaceUser(&'a str),
}

/// Whether `who` administers `tenant` (`None` when it does not exist).
pub fn administers(who: &Principal, tenant: &str, record: Option<&Tenant>) -> bool {
    who.claims_tenant_admin(tenant) || record.is_some_and(|t| t.admins.contains(&who.sub))
}

/// Whether `who` owns (`owner_only`) or may use namespace `ns`, by its
/// grants alone.
fn granted(who: &Principal, ns: &Namespace, owner_only: bool) -> bool {
    let Some(access) = ns.spec.as_ref().and_then(|s| s.access.as_ref()) else {
        return false;
    };
    access.owners.contains(&who.sub) || (!owner_only && access.consumers.iter().any(|g| g.principal == who.sub))
}

impl ControlPlane {
    /// Allows the call or refuses it with PERMISSION_DENIED, auditing the
    /// refusal under `action` on `target`: a tenant id, a namespace name
    /// (its tenant is recorded too), or empty.
    pub async fn authorize(&self, caller: &Caller, action: &'static str, target: &str, need: Need<'_>) -> Result<()> {
        let Some(who) = caller.principal() else {
            return Ok(());
        };
        if who.is_admin() || self.allows(who, need).await? {
            return Ok(());
        }
        let message = match target {
            "" => format!("{} may not call {action}", who.sub),
            t => format!("{} may not call {action} on {t}", who.sub),
        };
        let tenant = target.split_once('/').map_or(target, |(t, _)| t);
        self.audit_denied(&who.sub, action, tenant, target, &message).await;
        Err(ControlPlaneError::PermissionDenied(message))
    }

    async fn allows(&self, who: &Principal, need: Need<'_>) -> Result<bool> {
        let is_shard = who.has_role(SHARD_ROLE);
        Ok(match need {
            Need::Admin => false,
            Need::Shard => is_shard,
            Need::Authenticated => true,
            Need::TenantAdmin(tenant) => self.is_tenant_admin(who, tenant).await?,
            Need::NamespaceAdmin(name) | Need::NamespaceUser(name) => {
                let user = matches!(need, Need::NamespaceUser(_));
                if user && is_shard {
                    return Ok(true);
                }
                let tenant = name.split_once('/').map_or("", |(t, _)| t);
                if self.is_tenant_admin(who, tenant).await? {
                    return Ok(true);
                }
                // Names that are not valid are refused by the call itself
                // (INVALID_ARGUMENT) only for those allowed to make it.
                let ns = match prism_proto::names::NamespaceName::parse(name) {
                    Ok(_) => self.store().get_namespace(name).await?,
                    Err(_) => None,
                };
                ns.is_some_and(|ns| granted(who, &ns, !user))
            }
        })
    }

    async fn is_tenant_admin(&self, who: &Principal, tenant: &str) -> Result<bool> {
        if who.claims_tenant_admin(tenant) {
            return Ok(true);
        }
        if prism_proto::names::validate_part(tenant).is_err() {
            return Ok(false);
        }
        Ok(self.store().get_tenant(tenant).await?.is_some_and(|t| t.admins.contains(&who.sub)))
    }

    /// The tenants `caller` administers (`None`: all of them).
    pub async fn administered_tenants(&self, caller: &Caller) -> Result<Option<BTreeSet<String>>> {
        let Some(who) = caller.principal().filter(|p| !p.is_admin()) else {
            return Ok(None);
        };
        let mut out = BTreeSet::new();
        if let (Some(t), true) = (&who.tenant, who.has_role(prism_auth::TENANT_ADMIN_ROLE)) {
            out.insert(t.clone());
        }
        for t in self.store().list_tenants("", usize::MAX).await? {
            if t.admins.contains(&who.sub) {
                out.insert(t.id);
            }
        }
        Ok(Some(out))
    }

    /// Which namespaces `caller` may see in a listing: those of tenants it
    /// administers and those it owns or consumes.
    pub async fn namespace_filter(&self, caller: &Caller) -> Result<impl Fn(&Namespace) -> bool + Send + Sync> {
        let administered = self.administered_tenants(caller).await?;
        let who = caller.principal().cloned();
        Ok(move |ns: &Namespace| match (&administered, &who) {
            (None, _) | (_, None) => true,
            (Some(tenants), Some(who)) => {
                let tenant = ns.name.split_once('/').map_or("", |(t, _)| t);
                tenants.contains(tenant) || granted(who, ns, false)
            }
        })
    }

    async fn audit_denied(&self, principal: &str, action: &str, tenant: &str, target: &str, detail: &str) {
        let event = AuditEvent {
            time: Some(SystemTime::now().into()),
            principal: principal.to_owned(),
            action: action.to_owned(),
            tenant_id: if prism_proto::names::validate_part(tenant).is_ok() {
                tenant.to_owned()
            } else {
                String::new()
            },
            target: target.to_owned(),
            result: prism_proto::error::ErrorKind::PermissionDenied.as_str().to_owned(),
            detail: detail.to_owned(),
            ..AuditEvent::default()
        };
        if let Err(e) = self.store().append_audit(vec![event]).await {
            tracing::error!(error = %e, "could not audit a refused request");
        }
    }
}
