//! The control plane's rules: validation, lifecycles and optimistic
//! concurrency over a [`Store`], with an audit event for every change and
//! every refusal. Transport-free, so tests and benchmarks call it directly;
//! `service.rs` adapts it to gRPC.
//!
//! Every mutation is planned from a fresh read and committed with
//! conditions on the revisions it read; a lost race is re-planned (up to
//! [`MAX_ATTEMPTS`]), an `expected_revision` that does not match is
//! `ABORTED`. A namespace create conditions on its tenant's revision, its
//! name and, under a `max_namespaces` quota, on room in the tenant's live
//! count ([`Condition::NamespaceRoom`]); it does not rewrite the tenant,
//! so concurrent creates in one tenant conflict only on the same name or
//! the last place, never on each other.

use std::future::Future;
use std::sync::Arc;
use std::time::SystemTime;

use prism_proto::control::{
    AuditEvent, Delta, Grant, ListAuditEventsRequest, ListAuditEventsResponse, ListNamespacesRequest,
    ListNamespacesResponse, ListTenantsRequest, ListTenantsResponse, Namespace, NamespaceSpec, NamespaceStatus, Tenant,
    TenantState, change,
};
use prism_proto::quotas;

use crate::config::ControlPlaneConfig;
use crate::dedicated::{Pin, Pins, touch};
use crate::error::{ControlPlaneError, Result};
use crate::page_token::{self, Listing};
use crate::store::{AuditFilter, Committed, Condition, Put, Store, Txn, is_live};
use crate::validate;

/// The fields a namespace spec's pin and dedication are refused by.
const SPEC_PIN_FIELDS: [&str; 2] = ["spec.placement.pinned_shard", "spec.placement.dedicated"];

/// Re-plans of one mutation that lost a race before it gives up.
pub const MAX_ATTEMPTS: usize = 16;
const DEFAULT_PAGE_SIZE: usize = 100;
const MAX_PAGE_SIZE: usize = 1000;
const MAX_REASON_LEN: usize = 1024;

/// The principal of a caller that presented no credentials.
pub const ANONYMOUS: &str = "anonymous";

/// A planned commit and the audit detail describing it.
pub(crate) struct Plan {
    pub(crate) txn: Txn,
    pub(crate) detail: String,
}

/// What an audit event is about.
pub(crate) struct Target<'a> {
    pub(crate) action: &'static str,
    pub(crate) tenant: &'a str,
    pub(crate) target: &'a str,
}

#[derive(Clone)]
pub struct ControlPlane {
    store: Arc<dyn Store>,
    config: Arc<ControlPlaneConfig>,
    usage: Arc<crate::usage::UsageBook>,
    metrics: Arc<crate::metrics::ControlPlaneMetrics>,
    /// When this replica started: no lease ends before a lease after it
    /// (`crate::registry`, "Leases across a restart").
    started: SystemTime,
    /// What the shard map left to settle (`crate::registry`, "Bounded
    /// rebalances").
    settle: Arc<crate::registry::SettleState>,
    /// The pinned namespaces, kept up to date (`crate::dedicated`).
    pins: Arc<crate::dedicated::PinIndex>,
}

fn not_found_tenant(id: &str) -> ControlPlaneError {
    ControlPlaneError::NotFound(format!("tenant {id} not found"))
}

fn not_found_namespace(name: &str) -> ControlPlaneError {
    ControlPlaneError::NotFound(format!("namespace {name} not found"))
}

pub(crate) fn check_expected(kind: &str, key: &str, expected: u64, current: u64) -> Result<()> {
    if expected != 0 && expected != current {
        return Err(ControlPlaneError::Conflict(format!(
            "{kind} {key} is at revision {current}, not the expected {expected}"
        )));
    }
    Ok(())
}

fn page_size(requested: u32) -> usize {
    match requested as usize {
        0 => DEFAULT_PAGE_SIZE,
        n => n.min(MAX_PAGE_SIZE),
    }
}

/// The tenant part of a namespace name, or `""` when it is not a valid id
/// (so the audit log never records an invalid tenant).
pub(crate) fn tenant_of(namespace: &str) -> &str {
    valid_tenant(namespace.split_once('/').map_or(namespace, |(t, _)| t))
}

fn valid_tenant(id: &str) -> &str {
    if prism_proto::names::validate_part(id).is_ok() { id } else { "" }
}

/// The stored object a commit wrote, found in its delta.
fn written_tenant(delta: &Delta, id: &str) -> Result<Tenant> {
    delta
        .changes
        .iter()
        .find_map(|c| match &c.change {
            Some(change::Change::Tenant(t)) if t.id == id => Some(t.clone()),
            _ => None,
        })
        .ok_or_else(|| ControlPlaneError::Corrupt(format!("commit {} lacks tenant {id}", delta.revision)))
}

pub(crate) fn written_namespace(delta: &Delta, name: &str) -> Result<Namespace> {
    delta
        .changes
        .iter()
        .find_map(|c| match &c.change {
            Some(change::Change::Namespace(n)) if n.name == name => Some(n.clone()),
            _ => None,
        })
        .ok_or_else(|| ControlPlaneError::Corrupt(format!("commit {} lacks namespace {name}", delta.revision)))
}

/// `detail`, plus the cross-tenant principals of `written` (grants held by
/// tenant `home` that name another tenant's principal), which the audit
/// log calls out.
fn with_cross_tenant<'a>(detail: String, home: &str, written: impl IntoIterator<Item = &'a str>) -> String {
    let foreign = prism_proto::access::cross_tenant(written, home);
    if foreign.is_empty() { detail } else { format!("{detail}; cross-tenant: {}", foreign.join(", ")) }
}

/// Every principal a spec's access names.
fn spec_principals(spec: &NamespaceSpec) -> impl Iterator<Item = &str> {
    let access = spec.access.as_deref();
    let owners = access.into_iter().flat_map(|a| a.owners.iter().map(String::as_str));
    owners.chain(access.into_iter().flat_map(|a| a.consumers.iter().map(|g| g.principal.as_str())))
}

/// Resolves the profile of a spec's quota set so the stored spec is
/// complete.
fn resolved(mut spec: NamespaceSpec) -> NamespaceSpec {
    spec.quotas = Some(quotas::resolve(spec.quotas.as_ref()));
    spec
}

impl ControlPlane {
    pub fn new(store: Arc<dyn Store>, config: ControlPlaneConfig) -> Self {
        let metrics = Arc::new(crate::metrics::ControlPlaneMetrics::default());
        // Every store operation is counted (errors, commit latency).
        let store: Arc<dyn Store> = Arc::new(crate::metrics::ObservedStore::new(store, metrics.clone()));
        Self {
            store,
            config: Arc::new(config),
            usage: Arc::default(),
            metrics,
            started: SystemTime::now(),
            settle: Arc::default(),
            pins: Arc::default(),
        }
    }

    pub(crate) fn pin_index(&self) -> &crate::dedicated::PinIndex {
        &self.pins
    }

    pub(crate) fn settle_state(&self) -> &crate::registry::SettleState {
        &self.settle
    }

    /// When this replica started.
    pub(crate) fn started(&self) -> SystemTime {
        self.started
    }

    /// What this control plane counts for `/metrics`.
    pub fn metrics(&self) -> &Arc<crate::metrics::ControlPlaneMetrics> {
        &self.metrics
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn config(&self) -> &ControlPlaneConfig {
        &self.config
    }

    /// The latest usage report of every gateway instance (in memory).
    pub(crate) fn usage_book(&self) -> &crate::usage::UsageBook {
        &self.usage
    }

    /// Plans, commits (re-planning lost races) and audits one mutation.
    /// A refusal is audited with its status and re-raised.
    pub(crate) async fn mutate<F, Fut>(&self, principal: &str, target: Target<'_>, plan: F) -> Result<Arc<Delta>>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<Plan>>,
    {
        let event = |result: &str, detail: String| AuditEvent {
            time: Some(SystemTime::now().into()),
            principal: principal.to_owned(),
            action: target.action.to_owned(),
            tenant_id: target.tenant.to_owned(),
            target: target.target.to_owned(),
            result: result.to_owned(),
            detail,
            ..AuditEvent::default()
        };
        let outcome = async {
            for _ in 0..MAX_ATTEMPTS {
                let Plan { mut txn, detail } = plan().await?;
                txn.audit.push(event("ok", detail));
                match self.store.commit(txn).await? {
                    Committed::Ok(delta) => return Ok(delta),
                    Committed::Conflict(condition) => tracing::debug!(?condition, "commit lost a race, re-planning"),
                }
            }
            Err(ControlPlaneError::Conflict(format!(
                "{} kept changing concurrently; gave up after {MAX_ATTEMPTS} attempts",
                target.target
            )))
        }
        .await;
        if let Err(err) = &outcome {
            let refusal = event(err.kind().as_str(), err.report().message);
            if let Err(audit_err) = self.store.append_audit(vec![refusal]).await {
                tracing::error!(error = %audit_err, "could not audit a refused request");
            }
        }
        outcome
    }

    // -----------------------------------------------------------------
    // Tenants
    // -----------------------------------------------------------------

    pub async fn create_tenant(
        &self,
        principal: &str,
        id: &str,
        display_name: &str,
        admins: &[String],
        quota_set: Option<&prism_proto::control::QuotaSet>,
    ) -> Result<Tenant> {
        let target = Target { action: "CreateTenant", tenant: valid_tenant(id), target: id };
        let delta = self
            .mutate(principal, target, || async {
                validate::tenant_id("tenant_id", id)?;
                validate::text("display_name", display_name)?;
                validate::principals("admins", admins.iter().map(String::as_str))?;
                if let Some(q) = quota_set {
                    validate::quotas("quotas", q)?;
                }
                let existing = self.store.get_tenant(id).await?;
                if existing.as_ref().is_some_and(|t| t.state != TenantState::Deleted as i32) {
                    return Err(ControlPlaneError::AlreadyExists(format!("tenant {id} already exists")));
                }
                let now = Some(SystemTime::now().into());
                let tenant = Tenant {
                    id: id.to_owned(),
                    display_name: display_name.to_owned(),
                    quotas: Some(quotas::resolve(quota_set)),
                    state: TenantState::Active as i32,
                    admins: admins.to_vec(),
                    create_time: now,
                    update_time: now,
                    ..Tenant::default()
                };
                Ok(Plan {
                    txn: Txn {
                        conditions: vec![Condition::Tenant {
                            id: id.to_owned(),
                            revision: existing.map_or(0, |t| t.revision),
                        }],
                        puts: vec![Put::Tenant(tenant)],
                        ..Txn::default()
                    },
                    detail: with_cross_tenant("created".into(), id, admins.iter().map(String::as_str)),
                })
            })
            .await?;
        written_tenant(&delta, id)
    }

    pub async fn get_tenant(&self, id: &str) -> Result<Tenant> {
        validate::tenant_id("tenant_id", id)?;
        self.store.get_tenant(id).await?.ok_or_else(|| not_found_tenant(id))
    }

    /// The tenant, refused unless it is ACTIVE or SUSPENDED.
    async fn live_tenant(&self, id: &str) -> Result<Tenant> {
        let t = self.get_tenant(id).await?;
        match TenantState::try_from(t.state) {
            Ok(TenantState::Active | TenantState::Suspended) => Ok(t),
            Ok(TenantState::Deleted) => Err(not_found_tenant(id)),
            _ => Err(ControlPlaneError::FailedPrecondition(format!("tenant {id} is being deleted"))),
        }
    }

    /// A page of the tenants `visible` accepts (tombstones only when asked).
    pub async fn list_tenants(
        &self,
        req: &ListTenantsRequest,
        visible: impl Fn(&Tenant) -> bool,
    ) -> Result<ListTenantsResponse> {
        let after = page_token::decode(Listing::Tenants, &req.page_token)?;
        let (tenants, next) = page(
            page_size(req.page_size),
            after,
            |after, limit| async move { self.store.list_tenants(&after, limit).await },
            |t: &Tenant| &t.id,
            |t| (req.include_deleted || t.state != TenantState::Deleted as i32) && visible(t),
        )
        .await?;
        let next_page_token = next.map(|id| page_token::encode(Listing::Tenants, &id)).unwrap_or_default();
        Ok(ListTenantsResponse { tenants, next_page_token })
    }

    /// Replaces display name and admins, and the quotas when given.
    pub async fn update_tenant(
        &self,
        principal: &str,
        req: &prism_proto::control::UpdateTenantRequest,
    ) -> Result<Tenant> {
        let id = req.tenant_id.as_str();
        let target = Target { action: "UpdateTenant", tenant: valid_tenant(id), target: id };
        let delta = self
            .mutate(principal, target, || async {
                validate::text("display_name", &req.display_name)?;
                validate::principals("admins", req.admins.iter().map(String::as_str))?;
                if let Some(q) = &req.quotas {
                    validate::quotas("quotas", q)?;
                }
                let mut t = self.live_tenant(id).await?;
                check_expected("tenant", id, req.expected_revision, t.revision)?;
                let condition = Condition::Tenant { id: id.to_owned(), revision: t.revision };
                t.display_name.clone_from(&req.display_name);
                t.admins.clone_from(&req.admins);
                if let Some(q) = &req.quotas {
                    t.quotas = Some(quotas::resolve(Some(q)));
                }
                t.update_time = Some(SystemTime::now().into());
                Ok(Plan {
                    detail: with_cross_tenant("updated".into(), id, t.admins.iter().map(String::as_str)),
                    txn: Txn { conditions: vec![condition], puts: vec![Put::Tenant(t)], ..Txn::default() },
                })
            })
            .await?;
        written_tenant(&delta, id)
    }

    pub async fn set_tenant_state(
        &self,
        principal: &str,
        req: &prism_proto::control::SetTenantStateRequest,
    ) -> Result<Tenant> {
        let id = req.tenant_id.as_str();
        let action = if req.state == TenantState::Suspended as i32 { "SuspendTenant" } else { "ActivateTenant" };
        let delta = self
            .mutate(principal, Target { action, tenant: valid_tenant(id), target: id }, || async {
                let state = match TenantState::try_from(req.state) {
                    Ok(s @ (TenantState::Active | TenantState::Suspended)) => s,
                    _ => return Err(ControlPlaneError::invalid("state", "must be ACTIVE or SUSPENDED")),
                };
                validate::text("reason", &req.reason)?;
                let mut t = self.live_tenant(id).await?;
                check_expected("tenant", id, req.expected_revision, t.revision)?;
                let condition = Condition::Tenant { id: id.to_owned(), revision: t.revision };
                t.state = state as i32;
                t.state_reason.clone_from(&req.reason);
                t.update_time = Some(SystemTime::now().into());
                Ok(Plan {
                    txn: Txn { conditions: vec![condition], puts: vec![Put::Tenant(t)], ..Txn::default() },
                    detail: match (state, req.reason.as_str()) {
                        (TenantState::Suspended, "") => "suspended".to_owned(),
                        (TenantState::Suspended, reason) => format!("suspended: {reason}"),
                        (_, "") => "activated".to_owned(),
                        (_, reason) => format!("activated: {reason}"),
                    },
                })
            })
            .await?;
        written_tenant(&delta, id)
    }

    /// Marks the tenant and its namespaces for deletion; namespaces no
    /// shard ever owned are removed at once. The tenant is DELETED when
    /// its last namespace is.
    pub async fn delete_tenant(&self, principal: &str, id: &str, expected_revision: u64) -> Result<Tenant> {
        let delta = self
            .mutate(principal, Target { action: "DeleteTenant", tenant: valid_tenant(id), target: id }, || async {
                let mut t = self.live_tenant(id).await?;
                check_expected("tenant", id, expected_revision, t.revision)?;
                let now = Some(SystemTime::now().into());
                let mut txn = Txn::default();
                txn.conditions.push(Condition::Tenant { id: id.to_owned(), revision: t.revision });
                let (mut pending, mut live) = (0, 0);
                for mut ns in self.store.list_namespaces(id, "", usize::MAX).await? {
                    txn.conditions.push(Condition::Namespace { name: ns.name.clone(), revision: ns.revision });
                    if !is_live(&ns) {
                        continue;
                    }
                    live += 1;
                    if ns.status != NamespaceStatus::Deleting as i32 {
                        mark_deleting(&mut ns, "tenant is being deleted");
                        ns.update_time = now;
                        txn.puts.push(Put::Namespace(ns.clone()));
                    }
                    if is_live(&ns) {
                        pending += 1;
                    }
                }
                // Creates do not touch the tenant: this is what makes one
                // that commits after the listing conflict.
                txn.conditions.push(Condition::LiveNamespaces { tenant: id.to_owned(), count: live });
                t.state = if pending == 0 { TenantState::Deleted } else { TenantState::Deleting } as i32;
                t.state_reason = format!("deleted by {principal}");
                t.update_time = now;
                txn.puts.push(Put::Tenant(t));
                Ok(Plan { txn, detail: format!("erasing; {pending} namespaces pending") })
            })
            .await?;
        written_tenant(&delta, id)
    }

    // -----------------------------------------------------------------
    // Namespaces
    // -----------------------------------------------------------------

    pub async fn create_namespace(
        &self,
        principal: &str,
        name: &str,
        spec: Option<&NamespaceSpec>,
    ) -> Result<Namespace> {
        let tenant_id = tenant_of(name);
        let target = Target { action: "CreateNamespace", tenant: tenant_id, target: name };
        let delta = self
            .mutate(principal, target, || async {
                validate::namespace_name("name", name)?;
                let spec = spec.ok_or_else(|| ControlPlaneError::invalid("spec", "is required"))?;
                // One read of the shard map serves the pin's check, the
                // placement and the owner store.
                let registered = self.store.list_shards().await?;
                validate::namespace_spec(spec, &self.known_shards_of(&registered))?;
                let pins = self.pins().await?;
                let dedicated = pins.dedicated();
                let pin = Pin::of_spec(spec);
                if let Some(pin) = &pin {
                    let shared = self.shared_shards_of(&registered, &dedicated);
                    self.check_pin(name, pin, SPEC_PIN_FIELDS, &pins, &shared, None).await?;
                }
                let tenant = self.live_tenant(tenant_id).await?;
                if tenant.state != TenantState::Active as i32 {
                    return Err(ControlPlaneError::FailedPrecondition(format!("tenant {tenant_id} is suspended")));
                }
                let existing = self.store.get_namespace(name).await?;
                if existing.as_ref().is_some_and(is_live) {
                    return Err(ControlPlaneError::AlreadyExists(format!("namespace {name} already exists")));
                }
                let limit = tenant.quotas.as_ref().and_then(|q| q.max_namespaces).unwrap_or(quotas::UNLIMITED);
                let mut conditions = vec![
                    Condition::Tenant { id: tenant_id.to_owned(), revision: tenant.revision },
                    Condition::Namespace { name: name.to_owned(), revision: existing.map_or(0, |n| n.revision) },
                ];
                if limit != quotas::UNLIMITED {
                    let live = self.store.live_namespaces(tenant_id).await?;
                    if i64::try_from(live).unwrap_or(i64::MAX) >= limit {
                        return Err(ControlPlaneError::QuotaExceeded {
                            subject: format!("tenant:{tenant_id}"),
                            description: format!("max_namespaces is {limit} and the tenant has {live}"),
                        });
                    }
                    // Counted again in the commit: of concurrent creates
                    // for the last place one wins, the others are
                    // re-planned into the refusal above. Creates below the
                    // limit do not conflict with each other.
                    let limit = u64::try_from(limit).unwrap_or(0);
                    conditions.push(Condition::NamespaceRoom { tenant: tenant_id.to_owned(), limit });
                }
                let mut stored = resolved(spec.clone());
                validate::within_quotas(name, &mut stored, tenant.quotas.as_ref())?;
                let (shard_id, owner_store_id) = self.place_new(name, spec, &registered, &dedicated);
                let status_reason = if shard_id.is_empty() {
                    "no shard is available to own the namespace".to_owned()
                } else {
                    format!("waiting for shard {shard_id} to provision the backend")
                };
                let now = Some(SystemTime::now().into());
                let ns = Namespace {
                    name: name.to_owned(),
                    spec: Some(stored),
                    shard_id: shard_id.clone(),
                    status: NamespaceStatus::Provisioning as i32,
                    status_reason,
                    create_time: now,
                    update_time: now,
                    owner_store_id,
                    ..Namespace::default()
                };
                let mut txn = Txn { conditions, puts: vec![Put::Namespace(ns)], ..Txn::default() };
                if !shard_id.is_empty() {
                    // A pin rewrites its shard; a hashed namespace only
                    // conditions on its shard (`crate::dedicated`).
                    touch(&mut txn, &registered, &shard_id, pin.is_some());
                }
                let how = if pin.is_some_and(|p| p.dedicated) { ", dedicated" } else { "" };
                Ok(Plan {
                    txn,
                    detail: with_cross_tenant(
                        format!("created on shard {shard_id:?}{how}"),
                        tenant_id,
                        spec_principals(spec),
                    ),
                })
            })
            .await?;
        let ns = written_namespace(&delta, name)?;
        if Pins::of(&ns).is_some_and(|p| p.dedicated) {
            // Hashed namespaces on the shard move off it: the settler
            // follows the new dedicated set (`crate::registry`).
            self.settle_state().wake.notify_one();
        }
        Ok(ns)
    }

    pub async fn get_namespace(&self, name: &str) -> Result<Namespace> {
        validate::namespace_name("name", name)?;
        self.store.get_namespace(name).await?.ok_or_else(|| not_found_namespace(name))
    }

    /// The namespace, refused unless it is neither DELETING nor DELETED.
    pub(crate) async fn live_namespace(&self, name: &str) -> Result<Namespace> {
        let ns = self.get_namespace(name).await?;
        match NamespaceStatus::try_from(ns.status) {
            Ok(NamespaceStatus::Deleted) => Err(not_found_namespace(name)),
            Ok(NamespaceStatus::Deleting) => {
                Err(ControlPlaneError::FailedPrecondition(format!("namespace {name} is being deleted")))
            }
            _ => Ok(ns),
        }
    }

    /// A page of the namespaces `visible` accepts (tombstones only when
    /// asked).
    pub async fn list_namespaces(
        &self,
        req: &ListNamespacesRequest,
        visible: impl Fn(&Namespace) -> bool,
    ) -> Result<ListNamespacesResponse> {
        if !req.tenant_id.is_empty() {
            validate::tenant_id("tenant_id", &req.tenant_id)?;
        }
        let after = page_token::decode(Listing::Namespaces, &req.page_token)?;
        let tenant = req.tenant_id.as_str();
        let (namespaces, next) = page(
            page_size(req.page_size),
            after,
            |after, limit| async move { self.store.list_namespaces(tenant, &after, limit).await },
            |n: &Namespace| &n.name,
            |n| (req.include_deleted || is_live(n)) && visible(n),
        )
        .await?;
        let next_page_token = next.map(|name| page_token::encode(Listing::Namespaces, &name)).unwrap_or_default();
        Ok(ListNamespacesResponse { namespaces, next_page_token })
    }

    pub async fn update_namespace(
        &self,
        principal: &str,
        req: &prism_proto::control::UpdateNamespaceRequest,
    ) -> Result<Namespace> {
        let name = req.name.as_str();
        let target = Target { action: "UpdateNamespace", tenant: tenant_of(name), target: name };
        // Whether the committed plan changed a dedication (the settler
        // then has namespaces to move).
        let rededicated = std::sync::atomic::AtomicBool::new(false);
        let delta = self
            .mutate(principal, target, || async {
                validate::namespace_name("name", name)?;
                let spec = req.spec.as_ref().ok_or_else(|| ControlPlaneError::invalid("spec", "is required"))?;
                let registered = self.store.list_shards().await?;
                validate::namespace_spec(spec, &self.known_shards_of(&registered))?;
                let mut ns = self.live_namespace(name).await?;
                check_expected("namespace", name, req.expected_revision, ns.revision)?;
                let old = ns.spec.clone().unwrap_or_default();
                let (old_place, new_place) = (Pin::of_spec(&old), Pin::of_spec(spec));
                let dedicated_of = |p: &Option<Pin>| p.as_ref().is_some_and(|p| p.dedicated);
                let shard_of = |p: &Option<Pin>| p.as_ref().map(|p| p.shard.clone()).unwrap_or_default();
                let (old_shard, new_shard) = (shard_of(&old_place), shard_of(&new_place));
                let moves = old_shard != new_shard && !new_shard.is_empty() && new_shard != ns.shard_id;
                if moves && dedicated_of(&old_place) != dedicated_of(&new_place) {
                    // A new pin is a migration, which carries the pin only
                    // (removing a pin is refused below).
                    return Err(ControlPlaneError::invalid(
                        "spec.placement.dedicated",
                        "a new pin moves the namespace: change the dedication alone, before or after the move",
                    ));
                }
                let pins = self.pins().await?;
                if let Some(pin) = &new_place {
                    let shared = self.shared_shards_of(&registered, &pins.dedicated());
                    let was = old_place.as_ref().filter(|p| p.dedicated).map(|p| p.shard.as_str());
                    self.check_pin(name, pin, SPEC_PIN_FIELDS, &pins, &shared, was).await?;
                }
                if old.abstraction != spec.abstraction {
                    return Err(ControlPlaneError::invalid("spec.abstraction", "cannot change after creation"));
                }
                if old.backend != spec.backend {
                    return Err(ControlPlaneError::invalid("spec.backend", "cannot change after creation"));
                }
                // A new pin moves the namespace: a migration to that shard
                // (same backend and settings), which makes the pin the
                // spec's at its cleanup commit; the spec keeps the old one
                // until then. A pin to where it already is just records it.
                let old_pin = old.placement.clone().unwrap_or_default().pinned_shard;
                let new_pin = spec.placement.clone().unwrap_or_default().pinned_shard;
                if let Some(m) = &ns.migration
                    && old.backend_config != spec.backend_config
                {
                    return Err(ControlPlaneError::FailedPrecondition(format!(
                        "namespace {name} is migrating (migration {}): its backend settings are the target's once \
                         it ends; change them after, or abort it",
                        m.id
                    )));
                }
                let mut moving = None;
                if old_pin != new_pin && new_pin != ns.shard_id {
                    if new_pin.is_empty() {
                        return Err(ControlPlaneError::invalid(
                            "spec.placement.pinned_shard",
                            format!(
                                "removing the pin would move the namespace off shard {}: pin it to the shard it \
                                 should move to instead (it migrates there), or keep the pin",
                                ns.shard_id
                            ),
                        ));
                    }
                    if old.backend_config != spec.backend_config {
                        return Err(ControlPlaneError::invalid(
                            "spec.placement.pinned_shard",
                            "a new pin moves the namespace: change it alone, not with the backend settings \
                             (or move both with MigrateNamespace)",
                        ));
                    }
                    moving = Some(prism_proto::control::MigrationTarget {
                        pinned_shard: new_pin.clone(),
                        ..Default::default()
                    });
                }
                // The tenant's quotas cap what the spec asks for (read
                // without a condition: a quota changed meanwhile applies
                // from the next update on).
                let tenant = self.get_tenant(tenant_of(name)).await?;
                let mut stored = resolved(spec.clone());
                validate::within_quotas(name, &mut stored, tenant.quotas.as_ref())?;
                // What the backend cannot do or undo (another partition
                // count for a Kafka topic) is refused here, before the
                // owner tries.
                if let Some(description) =
                    prism_proto::control::Backend::try_from(spec.backend).ok().and_then(prism_proto::backends::describe)
                {
                    description
                        .check_change(
                            old.backend_config.as_deref(),
                            spec.backend_config.as_deref(),
                            "spec.backend_config",
                        )
                        .map_err(|e| ControlPlaneError::invalid(e.field, e.description))?;
                }
                let condition = Condition::Namespace { name: name.to_owned(), revision: ns.revision };
                if old.backend_config != spec.backend_config && !ns.shard_id.is_empty() {
                    // The owning shard must apply (and check) the new settings.
                    ns.status = NamespaceStatus::Provisioning as i32;
                    ns.status_reason = format!("waiting for shard {} to apply new backend settings", ns.shard_id);
                }
                let mut detail = with_cross_tenant("updated".into(), tenant_of(name), spec_principals(spec));
                if let Some(target) = &moving {
                    detail = format!("{detail}; {}", self.begin_migration(&mut ns, Some(target), principal).await?);
                    // The placement moves at the migration's cleanup.
                    stored.placement = old.placement.clone();
                }
                ns.spec = Some(stored);
                ns.update_time = Some(SystemTime::now().into());
                let mut txn = Txn { conditions: vec![condition], puts: vec![Put::Namespace(ns)], ..Txn::default() };
                let changed = dedicated_of(&old_place) != dedicated_of(&new_place);
                rededicated.store(changed, std::sync::atomic::Ordering::Relaxed);
                if old_place != new_place {
                    // Pins and dedications of one shard conflict with each
                    // other (`crate::dedicated`); so does a settling
                    // commit planned before the dedication changed.
                    let mut shards: Vec<&str> = new_place.iter().map(|p| p.shard.as_str()).collect();
                    shards.extend(old_place.iter().filter(|p| p.dedicated).map(|p| p.shard.as_str()));
                    shards.dedup();
                    for shard in shards {
                        touch(&mut txn, &registered, shard, true);
                    }
                    if changed {
                        let now = if dedicated_of(&new_place) { "dedicated" } else { "shared" };
                        detail = format!("{detail}; shard {new_shard} is {now}");
                    }
                }
                Ok(Plan { txn, detail })
            })
            .await?;
        if rededicated.load(std::sync::atomic::Ordering::Relaxed) {
            // The settler moves hashed namespaces off the shard, or lets
            // them back.
            self.settle_state().wake.notify_one();
        }
        written_namespace(&delta, name)
    }

    pub async fn delete_namespace(&self, principal: &str, name: &str, expected_revision: u64) -> Result<Namespace> {
        let target = Target { action: "DeleteNamespace", tenant: tenant_of(name), target: name };
        let delta = self
            .mutate(principal, target, || async {
                let mut ns = self.live_namespace(name).await?;
                check_expected("namespace", name, expected_revision, ns.revision)?;
                if let Some(m) = &ns.migration {
                    // The target's resources are removed by aborting
                    // (`crate::migration`); deleting first would leave them.
                    return Err(ControlPlaneError::FailedPrecondition(format!(
                        "namespace {name} is migrating (migration {}): abort the migration before deleting it",
                        m.id
                    )));
                }
                let condition = Condition::Namespace { name: name.to_owned(), revision: ns.revision };
                mark_deleting(&mut ns, &format!("deleted by {principal}"));
                ns.update_time = Some(SystemTime::now().into());
                Ok(Plan {
                    txn: Txn { conditions: vec![condition], puts: vec![Put::Namespace(ns)], ..Txn::default() },
                    detail: "deletion started".into(),
                })
            })
            .await?;
        written_namespace(&delta, name)
    }

    /// A shard reports the outcome of provisioning or removal.
    pub async fn report_namespace_status(
        &self,
        principal: &str,
        req: &prism_proto::control::ReportNamespaceStatusRequest,
    ) -> Result<Namespace> {
        let name = req.name.as_str();
        let tenant_id = tenant_of(name);
        let target = Target { action: "ReportNamespaceStatus", tenant: tenant_id, target: name };
        let delta = self
            .mutate(principal, target, || async {
                validate::namespace_name("name", name)?;
                prism_proto::names::validate_part(&req.shard_id)
                    .map_err(|e| ControlPlaneError::invalid("shard_id", format!("shard id {e}")))?;
                let status = match NamespaceStatus::try_from(req.status) {
                    Ok(s @ (NamespaceStatus::Active | NamespaceStatus::Degraded | NamespaceStatus::Deleted)) => s,
                    _ => return Err(ControlPlaneError::invalid("status", "must be ACTIVE, DEGRADED or DELETED")),
                };
                if req.reason.len() > MAX_REASON_LEN {
                    return Err(ControlPlaneError::invalid("reason", format!("is longer than {MAX_REASON_LEN} bytes")));
                }
                validate::backend_settings("backend_settings", &req.backend_settings)?;
                let mut ns = self.get_namespace(name).await?;
                if ns.shard_id != req.shard_id {
                    return Err(ControlPlaneError::FailedPrecondition(format!(
                        "shard {} does not own namespace {name}",
                        req.shard_id
                    )));
                }
                if ns.create_revision != req.create_revision {
                    return Err(ControlPlaneError::Conflict(format!(
                        "namespace {name} was re-created at revision {}; the report is about {}",
                        ns.create_revision, req.create_revision
                    )));
                }
                let current = NamespaceStatus::try_from(ns.status).unwrap_or(NamespaceStatus::Unspecified);
                let allowed = match status {
                    NamespaceStatus::Deleted => current == NamespaceStatus::Deleting,
                    _ => matches!(
                        current,
                        NamespaceStatus::Provisioning | NamespaceStatus::Active | NamespaceStatus::Degraded
                    ),
                };
                if !allowed {
                    return Err(ControlPlaneError::FailedPrecondition(format!(
                        "namespace {name} is {}, it cannot become {}",
                        current.as_str_name(),
                        status.as_str_name()
                    )));
                }
                let now = Some(SystemTime::now().into());
                let mut txn = Txn::default();
                txn.conditions.push(Condition::Namespace { name: name.to_owned(), revision: ns.revision });
                ns.status = status as i32;
                ns.status_reason.clone_from(&req.reason);
                ns.update_time = now;
                // What the backend holds is replaced by every report that
                // says something about it; a DEGRADED report without any
                // (the backend unreachable) leaves what was known.
                if !req.backend_settings.is_empty() || status != NamespaceStatus::Degraded {
                    ns.backend_settings.clone_from(&req.backend_settings);
                }
                txn.puts.push(Put::Namespace(ns));
                if status == NamespaceStatus::Deleted {
                    self.finish_tenant_erasure(tenant_id, name, &mut txn).await?;
                }
                Ok(Plan { txn, detail: format!("{} {}", status.as_str_name(), req.reason) })
            })
            .await?;
        written_namespace(&delta, name)
    }

    /// When `removed` was the last live namespace of a DELETING tenant,
    /// adds the tenant's move to DELETED to `txn`, conditioned on every
    /// sibling so two concurrent last reports cannot both miss it.
    async fn finish_tenant_erasure(&self, tenant_id: &str, removed: &str, txn: &mut Txn) -> Result<()> {
        let Some(mut tenant) = self.store.get_tenant(tenant_id).await? else {
            return Ok(());
        };
        if tenant.state != TenantState::Deleting as i32 {
            return Ok(());
        }
        let mut pending = 0;
        for sibling in self.store.list_namespaces(tenant_id, "", usize::MAX).await? {
            if sibling.name != removed {
                txn.conditions.push(Condition::Namespace { name: sibling.name.clone(), revision: sibling.revision });
                pending += usize::from(is_live(&sibling));
            }
        }
        if pending == 0 {
            txn.conditions.push(Condition::Tenant { id: tenant_id.to_owned(), revision: tenant.revision });
            tenant.state = TenantState::Deleted as i32;
            tenant.update_time = Some(SystemTime::now().into());
            txn.puts.push(Put::Tenant(tenant));
        }
        Ok(())
    }

    pub async fn grant_access(
        &self,
        principal: &str,
        req: &prism_proto::control::GrantAccessRequest,
    ) -> Result<Namespace> {
        let name = req.name.as_str();
        let target = Target { action: "GrantAccess", tenant: tenant_of(name), target: name };
        let delta = self
            .mutate(principal, target, || async {
                validate::principal("principal", &req.principal)?;
                let level = validate::access_level("level", req.level)?;
                let mut ns = self.live_namespace(name).await?;
                check_expected("namespace", name, req.expected_revision, ns.revision)?;
                let condition = Condition::Namespace { name: name.to_owned(), revision: ns.revision };
                let spec = ns.spec.get_or_insert_with(NamespaceSpec::default);
                let access = spec.access.get_or_insert_with(Default::default);
                access.consumers.retain(|g| g.principal != req.principal);
                if access.consumers.len() >= validate::MAX_PRINCIPALS {
                    return Err(ControlPlaneError::invalid(
                        "principal",
                        format!("the namespace already has {} consumers", validate::MAX_PRINCIPALS),
                    ));
                }
                access.consumers.push(Grant { principal: req.principal.clone(), level: level as i32 });
                ns.update_time = Some(SystemTime::now().into());
                Ok(Plan {
                    txn: Txn { conditions: vec![condition], puts: vec![Put::Namespace(ns)], ..Txn::default() },
                    detail: with_cross_tenant(
                        format!("granted {} {}", req.principal, level.as_str_name()),
                        tenant_of(name),
                        [req.principal.as_str()],
                    ),
                })
            })
            .await?;
        written_namespace(&delta, name)
    }

    pub async fn revoke_access(
        &self,
        principal: &str,
        req: &prism_proto::control::RevokeAccessRequest,
    ) -> Result<Namespace> {
        let name = req.name.as_str();
        let target = Target { action: "RevokeAccess", tenant: tenant_of(name), target: name };
        let delta = self
            .mutate(principal, target, || async {
                validate::principal("principal", &req.principal)?;
                let mut ns = self.live_namespace(name).await?;
                check_expected("namespace", name, req.expected_revision, ns.revision)?;
                let condition = Condition::Namespace { name: name.to_owned(), revision: ns.revision };
                let consumers = ns.spec.as_mut().and_then(|s| s.access.as_mut()).map(|a| &mut a.consumers);
                let Some(consumers) = consumers.filter(|c| c.iter().any(|g| g.principal == req.principal)) else {
                    return Err(ControlPlaneError::NotFound(format!(
                        "{} has no grant on namespace {name}",
                        req.principal
                    )));
                };
                consumers.retain(|g| g.principal != req.principal);
                ns.update_time = Some(SystemTime::now().into());
                Ok(Plan {
                    txn: Txn { conditions: vec![condition], puts: vec![Put::Namespace(ns)], ..Txn::default() },
                    detail: format!("revoked {}", req.principal),
                })
            })
            .await?;
        written_namespace(&delta, name)
    }

    /// Namespaces stored before inline passwords were refused may still
    /// hold one in their DSN. Each is rewritten with the password blanked
    /// ([`prism_proto::secrets::REDACTED`]), audited (principal
    /// `control-plane`, action `RedactSecret`), and sent back to its shard
    /// to be provisioned again — which leaves it DEGRADED until an owner
    /// names the password with `password_ref`: a credential that was
    /// streamed to every gateway is not quietly kept in use. Runs when the
    /// control plane opens; returns how many namespaces it rewrote.
    pub async fn redact_stored_passwords(&self) -> Result<usize> {
        let holding: Vec<String> = self
            .store
            .list_namespaces("", "", usize::MAX)
            .await?
            .into_iter()
            .filter(|ns| prism_proto::secrets::redact_namespace(&mut ns.clone()))
            .map(|ns| ns.name)
            .collect();
        for name in &holding {
            let target = Target { action: "RedactSecret", tenant: tenant_of(name), target: name };
            self.mutate(crate::registry::SYSTEM_PRINCIPAL, target, || async {
                let mut ns = self.get_namespace(name).await?;
                let condition = Condition::Namespace { name: name.clone(), revision: ns.revision };
                prism_proto::secrets::redact_namespace(&mut ns);
                let live = matches!(
                    NamespaceStatus::try_from(ns.status),
                    Ok(NamespaceStatus::Provisioning | NamespaceStatus::Active | NamespaceStatus::Degraded)
                );
                if live && !ns.shard_id.is_empty() {
                    ns.status = NamespaceStatus::Provisioning as i32;
                    ns.status_reason = format!(
                        "an inline password was removed from spec.backend_config.postgres.dsn; waiting for shard {} \
                         (set password_ref to name where it finds the password)",
                        ns.shard_id
                    );
                }
                ns.update_time = Some(SystemTime::now().into());
                Ok(Plan {
                    txn: Txn { conditions: vec![condition], puts: vec![Put::Namespace(ns)], ..Txn::default() },
                    detail: "removed an inline password from spec.backend_config.postgres.dsn".into(),
                })
            })
            .await?;
            tracing::warn!(namespace = %name, "removed an inline password from the stored dsn; the namespace needs password_ref");
        }
        Ok(holding.len())
    }

    // -----------------------------------------------------------------
    // Audit
    // -----------------------------------------------------------------

    /// Records events a gateway reports (the data requests it refused, and
    /// the sampled ones it served).
    /// Each is checked by shape; `sequence` and `revision` are assigned
    /// here.
    pub async fn append_audit(&self, mut events: Vec<AuditEvent>) -> Result<()> {
        const MAX_EVENTS: usize = 1000;
        const MAX_FIELD: usize = 1024;
        if events.len() > MAX_EVENTS {
            return Err(ControlPlaneError::invalid("events", format!("at most {MAX_EVENTS} per call")));
        }
        for (i, e) in events.iter_mut().enumerate() {
            let fields = [
                ("principal", &e.principal),
                ("action", &e.action),
                ("tenant_id", &e.tenant_id),
                ("target", &e.target),
                ("result", &e.result),
                ("detail", &e.detail),
                ("client_address", &e.client_address),
            ];
            for (name, value) in fields {
                if value.len() > MAX_FIELD || value.chars().any(char::is_control) {
                    return Err(ControlPlaneError::invalid(
                        format!("events[{i}].{name}"),
                        format!("must be at most {MAX_FIELD} bytes without control characters"),
                    ));
                }
            }
            if e.action.is_empty() {
                return Err(ControlPlaneError::invalid(format!("events[{i}].action"), "is required"));
            }
            if e.time.is_none() {
                e.time = Some(SystemTime::now().into());
            }
            e.sequence = 0;
            e.revision = 0;
        }
        if events.is_empty() {
            return Ok(());
        }
        self.store.append_audit(events).await
    }

    pub async fn list_audit_events(&self, req: &ListAuditEventsRequest) -> Result<ListAuditEventsResponse> {
        let want = page_size(req.page_size);
        let cursor = page_token::decode(Listing::Audit, &req.page_token)?;
        let before_sequence = if cursor.is_empty() {
            None
        } else {
            Some(
                cursor
                    .parse::<u64>()
                    .map_err(|_| ControlPlaneError::invalid("page_token", "is not a page token of this listing"))?,
            )
        };
        let filter = AuditFilter {
            tenant_id: req.tenant_id.clone(),
            target: req.target.clone(),
            principal: req.principal.clone(),
            action: req.action.clone(),
            since_seconds: req.since.as_ref().map_or(i64::MIN, |t| t.seconds),
            before_sequence,
        };
        let mut events = self.store.list_audit(filter, want + 1).await?;
        let next_page_token = if events.len() > want {
            events.truncate(want);
            events.last().map(|e| page_token::encode(Listing::Audit, &e.sequence.to_string())).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(ListAuditEventsResponse { events, next_page_token })
    }
}

/// One page of at most `want` objects that `keep` accepts, after key
/// `after`, read from the store in batches (tombstones that are filtered
/// out do not shorten a page). Returns the page and, when more may follow,
/// the key to continue after.
async fn page<T, F, Fut>(
    want: usize,
    after: String,
    fetch: F,
    key: fn(&T) -> &str,
    keep: impl Fn(&T) -> bool,
) -> Result<(Vec<T>, Option<String>)>
where
    F: Fn(String, usize) -> Fut,
    Fut: Future<Output = Result<Vec<T>>>,
{
    let mut cursor = after;
    let mut out = Vec::new();
    loop {
        let batch = fetch(cursor.clone(), want + 1).await?;
        let exhausted = batch.len() <= want;
        for item in batch {
            key(&item).clone_into(&mut cursor);
            if keep(&item) {
                out.push(item);
            }
        }
        if out.len() > want || exhausted {
            break;
        }
    }
    if out.len() <= want {
        return Ok((out, None));
    }
    out.truncate(want);
    let next = out.last().map(|item| key(item).to_owned());
    Ok((out, next))
}

/// Moves a namespace towards deletion: DELETING while a shard must remove
/// its backend resources, DELETED at once when no shard ever owned it.
fn mark_deleting(ns: &mut Namespace, reason: &str) {
    if ns.shard_id.is_empty() {
        ns.status = NamespaceStatus::Deleted as i32;
        ns.status_reason = format!("{reason}; no shard held its data");
    } else {
        ns.status = NamespaceStatus::Deleting as i32;
        ns.status_reason = format!("{reason}; waiting for shard {} to remove its data", ns.shard_id);
    }
}
