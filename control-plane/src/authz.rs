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
//! Who is a tenant's admin, owner or consumer is decided by the one access
//! rule, [`prism_proto::access`], which the gateway applies too; this file
//! maps each RPC to the standing it needs. The table in
//! [`prism_proto::access`] ("Who may call what") is its summary. Every refusal is audited (who, action, tenant, target,
//! `permission_denied`).
//!
//! Without any key configured there is nothing to verify a principal
//! with: every caller is [`Caller::Open`] and may do everything, as before
//! authentication existed (the server warns at startup).

use std::collections::BTreeSet;
use std::time::SystemTime;

use prism_auth::Principal;
use prism_proto::access::{self, Standing};
use prism_proto::control::{AuditEvent, Namespace};

use crate::error::{ControlPlaneError, Result};
use crate::plane::{ANONYMOUS, ControlPlane};

/// The access rule's view of a verified principal.
pub fn caller(p: &Principal) -> access::Caller<'_> {
    access::Caller::new(&p.sub, p.tenant.as_deref(), &p.roles)
}

/// Who is calling the control plane.
#[derive(Debug, Clone)]
pub enum Caller {
    /// No key is configured: unchecked, may do everything.
    Open,
    /// A verified token (or `anonymous` with no roles, where allowed).
    Verified(Principal),
}

impl Caller {
    /// The principal recorded in the audit log: `tenant:sub` for a
    /// token with a tenant claim, else `sub` ([`access::Caller::name`]).
    pub fn name(&self) -> String {
        match self {
            Self::Open => ANONYMOUS.to_owned(),
            Self::Verified(p) => caller(p).name().to_string(),
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
        self.principal().is_none_or(|p| caller(p).is_superuser())
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

/// What `who` may do with namespace `ns` of a tenant whose admins are
/// `admins` (the one access rule).
fn standing(who: &Principal, ns: &Namespace, admins: &[String]) -> Option<Standing> {
    let tenant = ns.name.split_once('/').map_or("", |(t, _)| t);
    access::namespace_standing(&caller(who), tenant, admins, ns.spec.as_ref().and_then(|s| s.access.as_deref()))
}

impl ControlPlane {
    /// Allows the call or refuses it with PERMISSION_DENIED, auditing the
    /// refusal under `action` on `target`: a tenant id, a namespace name
    /// (its tenant is recorded too), or empty.
    pub async fn authorize(&self, caller: &Caller, action: &'static str, target: &str, need: Need<'_>) -> Result<()> {
        let Some(who) = caller.principal() else {
            return Ok(());
        };
        if self::caller(who).is_superuser() || self.allows(who, need).await? {
            return Ok(());
        }
        let name = self::caller(who).name().to_string();
        let message = match target {
            "" => format!("{name} may not call {action}"),
            t => format!("{name} may not call {action} on {t}"),
        };
        let tenant = target.split_once('/').map_or(target, |(t, _)| t);
        self.audit_denied(&name, action, tenant, target, &message).await;
        Err(ControlPlaneError::PermissionDenied(message))
    }

    /// Whether `caller` has `need`, by the same rule as [`authorize`]
    /// but without auditing a refusal: for the console, which asks before
    /// offering a part of a page (a namespace's usage, its status history)
    /// rather than on a caller's request.
    ///
    /// [`authorize`]: Self::authorize
    pub async fn permits(&self, caller: &Caller, need: Need<'_>) -> Result<bool> {
        match caller.principal() {
            None => Ok(true),
            Some(who) => Ok(self::caller(who).is_superuser() || self.allows(who, need).await?),
        }
    }

    async fn allows(&self, who: &Principal, need: Need<'_>) -> Result<bool> {
        let is_shard = caller(who).is_shard();
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
                // Names that are not valid are refused by the call itself
                // (INVALID_ARGUMENT) only for those allowed to make it.
                let ns = match prism_proto::names::NamespaceName::parse(name) {
                    Ok(_) => self.store().get_namespace(name).await?,
                    Err(_) => None,
                };
                let admins = self.tenant_admins(tenant).await?;
                let least = if user { Standing::Read } else { Standing::Owner };
                match ns {
                    Some(ns) => standing(who, &ns, &admins) >= Some(least),
                    None => access::administers(&caller(who), tenant, &admins),
                }
            }
        })
    }

    /// The `admins` of `tenant`; none when it does not exist (or the id
    /// is not valid).
    async fn tenant_admins(&self, tenant: &str) -> Result<Vec<String>> {
        if prism_proto::names::validate_part(tenant).is_err() {
            return Ok(Vec::new());
        }
        Ok(self.store().get_tenant(tenant).await?.map(|t| t.admins).unwrap_or_default())
    }

    async fn is_tenant_admin(&self, who: &Principal, tenant: &str) -> Result<bool> {
        if caller(who).claims_tenant_admin(tenant) {
            return Ok(true);
        }
        Ok(access::administers(&caller(who), tenant, &self.tenant_admins(tenant).await?))
    }

    /// The tenants `caller` administers (`None`: all of them).
    pub async fn administered_tenants(&self, caller: &Caller) -> Result<Option<BTreeSet<String>>> {
        let Some(who) = caller.principal().filter(|p| !self::caller(p).is_superuser()) else {
            return Ok(None);
        };
        let who = self::caller(who);
        let mut out = BTreeSet::new();
        for t in self.store().list_tenants("", usize::MAX).await? {
            if access::administers(&who, &t.id, &t.admins) {
                out.insert(t.id);
            }
        }
        // A `tenant-admin` claim counts even before its tenant exists.
        if let (Some(t), true) = (who.tenant, who.has_role(access::TENANT_ADMIN_ROLE)) {
            out.insert(t.to_owned());
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
                // Tenants it administers were found above; the grants of
                // the namespace itself decide the rest.
                tenants.contains(tenant) || standing(who, ns, &[]).is_some()
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
