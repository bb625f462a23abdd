//! Authorization, deny by default, decided on one metadata snapshot by the
//! one access rule ([`prism_proto::access`], which the control plane
//! applies too): superusers (`admin`) everything; tenant admins (listed on
//! the tenant, or `tenant-admin` with the tenant's `tenant` claim) their
//! tenant; namespace owners read and write; consumers per their grant.
//! Then the namespace must be this shard's, ACTIVE, of the right
//! abstraction, and its tenant ACTIVE. A namespace of another shard is
//! refused with WRONG_SHARD, or, with forwarding on, marked to be
//! forwarded there ([`super::Forward`]), where the owner checks it all
//! again on its own snapshot.
//!
//! An embedded namespace is held by one instance of its shard, its owner
//! store (`NamespaceEntry::owner`; why, in `control-plane/src/registry.rs`):
//! every other instance, of this shard or another, sends its calls to that
//! instance alone — forwarded, or redirected with WRONG_SHARD naming its
//! endpoint — and while it is not registered answers UNAVAILABLE naming
//! it. Never from this instance's own store, which does not have the data.

use std::sync::Arc;

use prism_proto::access::{self, Standing};
use prism_proto::control::{NamespaceStatus, Tenant, TenantState};

use super::check::{CheckLayer, Step};
use crate::audit::AuditSink;
use crate::auth::{Principal, caller};
use crate::call::{Access, Call, InFlight, Loaded, Resolved};
use crate::error::{GatewayError, Result};
use crate::snapshot::{Metadata, NamespaceEntry, Snapshot};

pub type AuthorizeLayer = CheckLayer<Authorize>;

#[derive(Debug, Clone)]
pub struct Authorize {
    metadata: Arc<Metadata>,
    shard_id: Arc<str>,
    /// This instance's store id (empty: it owns no embedded namespace).
    store_id: Arc<str>,
    audit: Arc<AuditSink>,
    /// Whether calls for another shard's namespaces are forwarded.
    forwarding: bool,
}

impl Authorize {
    pub fn new(metadata: Arc<Metadata>, shard_id: String, audit: Arc<AuditSink>) -> Self {
        Self { metadata, shard_id: shard_id.into(), store_id: Arc::from(""), audit, forwarding: false }
    }

    /// This instance's store id: the embedded namespaces it owns are served
    /// here, those another instance owns go there.
    pub fn store(mut self, store_id: Arc<str>) -> Self {
        self.store_id = store_id;
        self
    }

    /// Marks calls for another shard's namespaces to be forwarded there
    /// instead of refusing them with WRONG_SHARD.
    pub fn forwarding(mut self, on: bool) -> Self {
        self.forwarding = on;
        self
    }
}

/// Whether `who` may perform `wanted` on namespace `entry`.
pub fn allowed(snapshot: &Snapshot, who: &Principal, entry: &NamespaceEntry, wanted: Access) -> bool {
    allowed_in(snapshot.tenant(entry.tenant()).map(Arc::as_ref), who, entry, wanted)
}

/// [`allowed`], given the namespace's tenant as the snapshot has it (the
/// caller looked it up already).
fn allowed_in(tenant_meta: Option<&Tenant>, who: &Principal, entry: &NamespaceEntry, wanted: Access) -> bool {
    let who = caller(who);
    if who.is_superuser() {
        return true;
    }
    let tenant = entry.tenant();
    let admins = tenant_meta.map_or(&[][..], |t| t.admins.as_slice());
    let least = match wanted {
        Access::Read => Standing::Read,
        Access::Write => Standing::ReadWrite,
    };
    access::namespace_standing(&who, tenant, admins, entry.ns.spec.access.as_deref()) >= Some(least)
}

impl Step for Authorize {
    fn check(&self, call: &mut Call) -> Result<()> {
        // The snapshot a layer above loaded for this call, else loaded
        // now: one load per request, and dropped when this check ends.
        let Loaded { snapshot, entry } = match call.loaded.take() {
            Some(loaded) => loaded,
            None => Loaded::new(&self.metadata, call.request.namespace()),
        };
        let name = call.name()?;
        let entry = entry.ok_or_else(|| GatewayError::NotFound(format!("namespace {name} not found")))?;
        let who = call
            .principal
            .as_ref()
            .ok_or_else(|| GatewayError::Internal("authorization before authentication".into()))?;
        let access = call.request.access();
        // One lookup of the tenant for the access rule, its state and
        // everything after this layer.
        let tenant = snapshot.tenant(name.tenant());
        if !allowed_in(tenant.map(Arc::as_ref), who, &entry, access) {
            let verb = if access == Access::Read { "read" } else { "write" };
            let who = caller(who).name().to_string();
            let why = format!("{who} may not {verb} namespace {name}");
            self.audit.refused(
                &who,
                call.request.rpc(),
                name,
                call.client_addr,
                prism_proto::error::ErrorKind::PermissionDenied.as_str(),
                why.clone(),
            );
            return Err(GatewayError::PermissionDenied(why));
        }
        if !entry.held_by(&self.shard_id, &self.store_id) {
            // Where the namespace is served: its shard's instances, or the
            // one that holds its data.
            let endpoints = match entry.owner() {
                None => snapshot.endpoints(&entry.shard_id),
                Some(store) => match snapshot.store_endpoint(&entry.shard_id, store) {
                    Some(endpoint) => vec![endpoint],
                    None => {
                        return Err(GatewayError::Unavailable(format!(
                            "namespace {name} keeps its data on instance store {store} of shard {}, which is not \
                             registered (stopped, or its lease expired); no other instance has its data: retry \
                             when it is back",
                            entry.shard_id
                        )));
                    }
                },
            };
            // One hop at most: a gateway that forwarded this call saw the
            // namespace here; two views disagree while a move propagates.
            if call.forwarded {
                let held_at = match entry.owner() {
                    Some(store) => format!("instance store {store} of shard {}", entry.shard_id),
                    None => format!("shard {}", entry.shard_id),
                };
                return Err(GatewayError::Unavailable(format!(
                    "namespace {name} was forwarded to shard {}, which places it on {held_at} (metadata revision \
                     {}); retry",
                    self.shard_id, snapshot.revision
                )));
            }
            // A caller known only by its TLS certificate cannot be vouched
            // for to another gateway: it is redirected instead.
            let forwardable = call.authorization.is_some() || call.client_cert.is_none();
            if self.forwarding && forwardable {
                call.forward = Some(crate::call::Destination { entry, endpoints, revision: snapshot.revision });
                return Ok(());
            }
            return Err(GatewayError::WrongShard {
                namespace: name.as_str().to_owned(),
                owner: entry.shard_id.clone(),
                endpoints,
                revision: snapshot.revision,
            });
        }
        let tenant = match (crate::snapshot::state_of(tenant.map(Arc::as_ref)), tenant) {
            (TenantState::Active, Some(tenant)) => tenant.clone(),
            (TenantState::Suspended, _) => {
                return Err(GatewayError::FailedPrecondition(format!("tenant {} is suspended", name.tenant())));
            }
            _ => {
                return Err(GatewayError::FailedPrecondition(format!("tenant {} is being deleted", name.tenant())));
            }
        };
        if entry.status != NamespaceStatus::Active {
            return Err(GatewayError::FailedPrecondition(format!(
                "namespace {name} is {} ({})",
                entry.status.as_str_name().trim_start_matches("NAMESPACE_STATUS_"),
                entry.status_reason
            )));
        }
        let wanted = call.request.abstraction();
        if entry.ns.spec.abstraction != wanted as i32 {
            let kind = wanted.as_str_name().trim_start_matches("ABSTRACTION_");
            return Err(GatewayError::invalid("namespace", format!("{name} is not a {kind} namespace")));
        }
        let principal = call
            .principal
            .take()
            .ok_or_else(|| GatewayError::Internal("authorization before authentication".into()))?;
        call.resolved = Some(Resolved { namespace: InFlight::enter(entry), tenant, principal });
        Ok(())
    }
}
