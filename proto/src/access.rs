//! Who may do what (SPEC §6): the one access rule that the gateway (on its
//! metadata snapshot) and the control plane (on its store) both apply, and
//! how a principal is written in grants, tenant admins and the audit log.
//!
//! # Principals
//!
//! A verified token is a [`Caller`]: its `sub`, its `tenant` claim if it
//! has one, and its roles. With a tenant claim it is the principal
//! `tenant:sub` — in a multi-tenant identity provider subjects are unique
//! per tenant, so the same `sub` in two tenants is two principals. Without
//! one it is the *global* principal `sub`: platform services, superusers,
//! the name in a client certificate (mTLS).
//!
//! In a namespace's owners and consumers and in a tenant's admins, a
//! principal is written ([`PrincipalRef`]):
//!
//! - `acme:svc-a` — `svc-a` of tenant `acme`, only. The part before the
//!   first `:` is a tenant id (`[a-z0-9][a-z0-9-]{0,62}`, which holds no
//!   `:`), so `acme:svc:x` is `svc:x` of `acme`. Naming a principal of
//!   another tenant this way is the one way to grant it anything, and the
//!   control plane audits it as cross-tenant.
//! - `:svc-a` — the global `svc-a`, only: how to name a global principal
//!   whose `sub` itself starts like `tenant:` (`:system:serviceaccount:x`).
//! - `svc-a` — `svc-a` of the tenant that holds the grant (the namespace's
//!   tenant, or the tenant whose admin list it is), or the global `svc-a`;
//!   never another tenant's. That is what a grant written before principals
//!   had tenants could have meant to its owner, who could only ever name
//!   principals of their own tenant or the platform: such grants keep
//!   working for them, and stop admitting every other tenant's `svc-a`.
//!
//! The audit log names a caller the same way ([`Caller::name`]), so a name
//! copied from it into a grant means exactly that caller.
//!
//! # Roles
//!
//! `admin` (superuser) and `shard` count only on global principals: a
//! tenant's tokens can never carry platform power, whoever issued them.
//! `tenant-admin` administers the tenant of the token's `tenant` claim.
//!
//! # Who may call what
//!
//! Deny by default. [`namespace_standing`] (Read < ReadWrite < Owner <
//! TenantAdmin) is the one pure function that decides what a caller may do
//! with a namespace; the gateway applies it on its snapshot
//! (`gateway/src/layers/authz.rs`), the control plane on its store
//! (`control-plane/src/authz.rs`), each mapping its calls to the standing
//! they need. A grant naming another tenant's principal is the only way
//! across tenants; its audit entry ends in `cross-tenant: …`. The isolation
//! matrix test (`gateway/tests/isolation.rs`) checks every cell below for 3
//! tenants and 17 principals — the same `sub` under two tenants' claims,
//! platform roles on tenant tokens, a cross-tenant grantee — through real
//! servers.
//!
//! | | admin | tenant admin | other tenant's admin | owner | consumer READ_WRITE | consumer READ | shard | anyone else |
//! |---|---|---|---|---|---|---|---|---|
//! | KV Get/Scan, TS Read/Search/Tail | ✓ | ✓ | | ✓ | ✓ | ✓ | | |
//! | KV Put/Delete/Mutate, TS WriteSync/Write | ✓ | ✓ | | ✓ | ✓ | | | |
//! | CreateTenant, DeleteTenant, SetTenantState, UpdateTenant with quotas | ✓ | | | | | | | |
//! | GetTenant, UpdateTenant, CreateNamespace, DeleteNamespace, MigrateNamespace, AbortMigration, ListAuditEvents of the tenant | ✓ | ✓ | | | | | | |
//! | UpdateNamespace, GrantAccess, RevokeAccess, SetSchema | ✓ | ✓ | | ✓ | | | | |
//! | GetNamespace, ResolveNamespace, GetSchema, ListSchemaHistory, GetMigration | ✓ | ✓ | | ✓ | ✓ | ✓ | ✓ | |
//! | RegisterShard, Heartbeat, DeregisterShard, ReportNamespaceStatus, ReportMigration, Watch, ReportUsage, AppendAudit | ✓ | | | | | | ✓ | |
//! | GetUsage of a tenant (of a namespace) | ✓ | ✓ | | (✓) | | | | |
//! | ListTenants, ListNamespaces, ListShards | all | filtered | filtered | filtered | filtered | filtered | filtered | filtered |
//!
//! Listings show what the caller may see (tenants it administers;
//! namespaces of those tenants and those it owns or consumes).
//! `ListAuditEvents` without a tenant is the superuser's; a `tenant-admin`
//! token defaults to its claim's tenant. Suspension and quotas are
//! superuser levers: a tenant admin cannot lift its own limits. Owners
//! administer their namespace, including its quotas (still bounded by the
//! tenant's).
//!
//! Every control-plane refusal is audited (`permission_denied`, with
//! principal, action, tenant and target); a bad or missing token is
//! `UNAUTHENTICATED` and audits nothing, since there is no principal to
//! name. A gateway's refused data requests (result `permission_denied`
//! with the principal; `unauthenticated` with an empty principal, the RPC
//! and the namespace, each with the client's address) go to the same log,
//! through a bounded queue that never blocks a request; namespaces with
//! `policies.data_access_audit_rate` > 0 also have that fraction of their
//! successful data requests recorded (result `ok`).

use std::fmt;

use crate::control::{Access, AccessLevel};

/// The superuser role (global principals only).
pub const ADMIN_ROLE: &str = "admin";
/// Administers the tenant named in the token's `tenant` claim.
pub const TENANT_ADMIN_ROLE: &str = "tenant-admin";
/// A gateway shard talking to the control plane (global principals only).
pub const SHARD_ROLE: &str = "shard";

/// A verified caller, as the rule sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller<'a> {
    /// The token's `sub` (or a client certificate's common name).
    pub sub: &'a str,
    /// The token's `tenant` claim; `None` for a global principal.
    pub tenant: Option<&'a str>,
    pub roles: &'a [String],
}

impl<'a> Caller<'a> {
    pub fn new(sub: &'a str, tenant: Option<&'a str>, roles: &'a [String]) -> Self {
        Self { sub, tenant, roles }
    }

    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    /// A superuser: role `admin` on a global principal.
    pub fn is_superuser(&self) -> bool {
        self.tenant.is_none() && self.has_role(ADMIN_ROLE)
    }

    /// A gateway shard: role `shard` on a global principal.
    pub fn is_shard(&self) -> bool {
        self.tenant.is_none() && self.has_role(SHARD_ROLE)
    }

    /// Whether the token itself makes this caller an admin of `tenant`
    /// (role `tenant-admin` with that `tenant` claim).
    pub fn claims_tenant_admin(&self, tenant: &str) -> bool {
        self.tenant == Some(tenant) && self.has_role(TENANT_ADMIN_ROLE)
    }

    /// The principal's name as the audit log and grants write it:
    /// `tenant:sub`, or `sub` for a global principal (`:sub` when `sub`
    /// alone would read as something else).
    pub fn name(&self) -> Name<'a> {
        Name { sub: self.sub, tenant: self.tenant }
    }
}

/// A principal's written name ([`Caller::name`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Name<'a> {
    sub: &'a str,
    tenant: Option<&'a str>,
}

impl fmt::Display for Name<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.tenant {
            Some(t) => write!(f, "{t}:{}", self.sub),
            None if PrincipalRef::parse(self.sub) == PrincipalRef::Bare(self.sub) => f.write_str(self.sub),
            None => write!(f, ":{}", self.sub),
        }
    }
}

/// A principal as written in owners, consumers and tenant admins (see the
/// module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrincipalRef<'a> {
    /// `sub`: of the tenant holding the grant, or global.
    Bare(&'a str),
    /// `:sub`: global only.
    Global(&'a str),
    /// `tenant:sub`: of that tenant only.
    Scoped { tenant: &'a str, sub: &'a str },
}

impl<'a> PrincipalRef<'a> {
    pub fn parse(written: &'a str) -> Self {
        if let Some(sub) = written.strip_prefix(':') {
            return Self::Global(sub);
        }
        match written.split_once(':') {
            Some((tenant, sub)) if crate::names::validate_part(tenant).is_ok() => Self::Scoped { tenant, sub },
            _ => Self::Bare(written),
        }
    }

    pub fn sub(&self) -> &'a str {
        match *self {
            Self::Bare(sub) | Self::Global(sub) | Self::Scoped { sub, .. } => sub,
        }
    }

    /// Whether this names `who`, in a grant held by tenant `home`.
    pub fn matches(&self, who: &Caller<'_>, home: &str) -> bool {
        match *self {
            Self::Bare(sub) => who.sub == sub && who.tenant.is_none_or(|t| t == home),
            Self::Global(sub) => who.sub == sub && who.tenant.is_none(),
            Self::Scoped { tenant, sub } => who.sub == sub && who.tenant == Some(tenant),
        }
    }

    /// The other tenant this names a principal of, if it does.
    pub fn foreign_tenant(&self, home: &str) -> Option<&'a str> {
        match *self {
            Self::Scoped { tenant, .. } if tenant != home => Some(tenant),
            _ => None,
        }
    }
}

/// Whether `written` (an entry of a grant list held by tenant `home`)
/// names `who`.
pub fn names(written: &str, who: &Caller<'_>, home: &str) -> bool {
    // Most entries are not `who` at all: compare the subject's tail first,
    // so the common miss costs one comparison, not a parse.
    written.ends_with(who.sub) && PrincipalRef::parse(written).matches(who, home)
}

/// Why a written principal is refused, if it is: the shape rules beyond
/// length and characters (which the control plane checks as for any text).
pub fn check_written(written: &str) -> Result<(), &'static str> {
    if written.is_empty() {
        return Err("principal must not be empty");
    }
    if PrincipalRef::parse(written).sub().is_empty() {
        return Err("principal names a tenant (or none) but no subject after the ':'");
    }
    Ok(())
}

/// The entries of `written` that name principals of tenants other than
/// `home` (cross-tenant grants, which the control plane audits as such).
pub fn cross_tenant<'a>(written: impl IntoIterator<Item = &'a str>, home: &str) -> Vec<&'a str> {
    written.into_iter().filter(|w| PrincipalRef::parse(w).foreign_tenant(home).is_some()).collect()
}

/// What a caller may do with a namespace, from least to most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Standing {
    /// A `READ` consumer: reads data, sees and resolves the namespace.
    Read,
    /// A `READ_WRITE` consumer: also writes data.
    ReadWrite,
    /// An owner: also updates the namespace and grants access to it.
    Owner,
    /// An admin of its tenant (or the superuser): also creates and
    /// deletes the tenant's namespaces.
    TenantAdmin,
}

/// Whether `who` administers tenant `tenant`, whose `admins` list is given
/// (empty when the tenant is unknown): the superuser, role `tenant-admin`
/// with that tenant's claim, or a principal its admins name.
pub fn administers(who: &Caller<'_>, tenant: &str, admins: &[String]) -> bool {
    who.is_superuser() || who.claims_tenant_admin(tenant) || admins.iter().any(|a| names(a, who, tenant))
}

/// What `who` may do with a namespace of tenant `tenant` (whose admins are
/// `tenant_admins`) that grants `access`; `None`: nothing at all (deny by
/// default). Shards get no standing here: what they may do is the control
/// plane's business (they route namespaces, they never read data).
pub fn namespace_standing(
    who: &Caller<'_>,
    tenant: &str,
    tenant_admins: &[String],
    access: Option<&Access>,
) -> Option<Standing> {
    if administers(who, tenant, tenant_admins) {
        return Some(Standing::TenantAdmin);
    }
    let access = access?;
    if access.owners.iter().any(|o| names(o, who, tenant)) {
        return Some(Standing::Owner);
    }
    let mut best = None;
    for grant in access.consumers.iter().filter(|g| names(&g.principal, who, tenant)) {
        best = best.max(level(grant.level));
        if best == Some(Standing::ReadWrite) {
            break; // the most a consumer can have
        }
    }
    best
}

fn level(level: i32) -> Option<Standing> {
    match AccessLevel::try_from(level) {
        Ok(AccessLevel::Read) => Some(Standing::Read),
        Ok(AccessLevel::ReadWrite) => Some(Standing::ReadWrite),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::Grant;

    fn roles(r: &[&str]) -> Vec<String> {
        r.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn written_principals_parse_unambiguously() {
        assert_eq!(PrincipalRef::parse("svc-a"), PrincipalRef::Bare("svc-a"));
        assert_eq!(PrincipalRef::parse("acme:svc-a"), PrincipalRef::Scoped { tenant: "acme", sub: "svc-a" });
        assert_eq!(PrincipalRef::parse("acme:svc:x"), PrincipalRef::Scoped { tenant: "acme", sub: "svc:x" });
        assert_eq!(PrincipalRef::parse(":system:sa"), PrincipalRef::Global("system:sa"));
        // Not a tenant id before the colon: a bare subject that holds one.
        assert_eq!(PrincipalRef::parse("Acme:svc"), PrincipalRef::Bare("Acme:svc"));
        assert_eq!(PrincipalRef::parse("auth0|abc:1"), PrincipalRef::Bare("auth0|abc:1"));
        assert!(check_written("acme:").is_err());
        assert!(check_written(":").is_err());
        assert!(check_written("").is_err());
        assert!(check_written("acme:svc-a").is_ok());
    }

    #[test]
    fn names_round_trip_through_grants() {
        let none: Vec<String> = Vec::new();
        for (sub, tenant, want) in [
            ("svc-a", Some("acme"), "acme:svc-a"),
            ("svc-a", None, "svc-a"),
            ("system:sa", None, ":system:sa"),
            (":odd", None, "::odd"),
            ("Weird:sub", None, "Weird:sub"),
            ("x:y", Some("acme"), "acme:x:y"),
        ] {
            let who = Caller::new(sub, tenant, &none);
            let name = who.name().to_string();
            assert_eq!(name, want);
            // Written into a grant of any tenant, the name admits exactly its caller.
            assert!(PrincipalRef::parse(&name).matches(&who, "other"), "{name}");
            let twin = Caller::new(sub, if tenant.is_some() { None } else { Some("other") }, &none);
            assert!(!PrincipalRef::parse(&name).matches(&twin, "zzz"), "{name} admits {twin:?}");
        }
    }

    #[test]
    fn a_bare_grant_admits_its_tenant_and_global_principals_only() {
        let none: Vec<String> = Vec::new();
        let bare = PrincipalRef::parse("svc-a");
        assert!(bare.matches(&Caller::new("svc-a", Some("acme"), &none), "acme"));
        assert!(bare.matches(&Caller::new("svc-a", None, &none), "acme"));
        assert!(!bare.matches(&Caller::new("svc-a", Some("globex"), &none), "acme"));
        let scoped = PrincipalRef::parse("globex:svc-a");
        assert!(scoped.matches(&Caller::new("svc-a", Some("globex"), &none), "acme"));
        assert!(!scoped.matches(&Caller::new("svc-a", None, &none), "acme"));
        assert!(!scoped.matches(&Caller::new("svc-a", Some("acme"), &none), "acme"));
        assert_eq!(scoped.foreign_tenant("acme"), Some("globex"));
        assert_eq!(scoped.foreign_tenant("globex"), None);
        assert_eq!(cross_tenant(["a", "acme:b", "globex:c", ":d"], "acme"), ["globex:c"]);
    }

    #[test]
    fn platform_roles_need_a_global_principal() {
        let admin = roles(&[ADMIN_ROLE, SHARD_ROLE]);
        assert!(Caller::new("root", None, &admin).is_superuser());
        assert!(Caller::new("root", None, &admin).is_shard());
        assert!(!Caller::new("root", Some("acme"), &admin).is_superuser());
        assert!(!Caller::new("root", Some("acme"), &admin).is_shard());
        let ta = roles(&[TENANT_ADMIN_ROLE]);
        assert!(Caller::new("ta", Some("acme"), &ta).claims_tenant_admin("acme"));
        assert!(!Caller::new("ta", Some("acme"), &ta).claims_tenant_admin("globex"));
        assert!(!Caller::new("ta", None, &ta).claims_tenant_admin("acme"));
    }

    #[test]
    fn standing_is_the_highest_grant() {
        let none: Vec<String> = Vec::new();
        let access = Access {
            owners: vec!["owner".into()],
            consumers: vec![
                Grant { principal: "reader".into(), level: AccessLevel::Read as i32 },
                Grant { principal: "acme:both".into(), level: AccessLevel::Read as i32 },
                Grant { principal: "both".into(), level: AccessLevel::ReadWrite as i32 },
                Grant { principal: "globex:partner".into(), level: AccessLevel::ReadWrite as i32 },
            ],
        };
        let admins = vec!["boss".to_owned()];
        let standing =
            |sub, tenant| namespace_standing(&Caller::new(sub, tenant, &none), "acme", &admins, Some(&access));
        assert_eq!(standing("boss", Some("acme")), Some(Standing::TenantAdmin));
        assert_eq!(standing("boss", Some("globex")), None);
        assert_eq!(standing("owner", None), Some(Standing::Owner));
        assert_eq!(standing("reader", Some("acme")), Some(Standing::Read));
        assert_eq!(standing("both", Some("acme")), Some(Standing::ReadWrite));
        assert_eq!(standing("partner", Some("globex")), Some(Standing::ReadWrite));
        assert_eq!(standing("partner", Some("acme")), None);
        assert_eq!(standing("reader", Some("globex")), None);
        let root = roles(&[ADMIN_ROLE]);
        assert_eq!(
            namespace_standing(&Caller::new("root", None, &root), "acme", &[], None),
            Some(Standing::TenantAdmin)
        );
        assert_eq!(namespace_standing(&Caller::new("root", Some("acme"), &root), "acme", &[], None), None);
    }
}
