//! `prism.control.v1.ControlPlaneService` over gRPC: unpacks requests, calls
//! [`ControlPlane`], and turns errors into statuses at this one edge.

use prism_proto::control::control_plane_service_server::ControlPlaneService;
use prism_proto::control::*;
use tokio_stream::StreamExt;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status};

use prism_auth::{AuthError, Authenticator};

use crate::authz::{Caller, Need};
use crate::error::ControlPlaneError;
use crate::plane::ControlPlane;
use crate::watch;

/// Who is calling: the principal of a valid bearer token, or `anonymous`
/// (no roles) where the configuration allows callers without one.
fn principal<T>(auth: &Authenticator, req: &Request<T>) -> Result<Caller, Status> {
    let header = req.metadata().get("authorization").and_then(|v| v.to_str().ok());
    match auth.authenticate(header) {
        Ok(p) => Ok(Caller::Verified(p)),
        Err(AuthError::Unauthenticated(why)) => Err(Status::unauthenticated(why)),
        Err(e) => Err(ControlPlaneError::Corrupt(e.to_string()).into_status()),
    }
}

type Reply<T> = Result<Response<T>, Status>;

fn reply<T>(result: Result<T, ControlPlaneError>) -> Reply<T> {
    result.map(Response::new).map_err(ControlPlaneError::into_status)
}

fn tenant_of(namespace: &str) -> &str {
    namespace.split_once('/').map_or(namespace, |(t, _)| t)
}

/// Blanks inline passwords in what a Watch sends. Stored namespaces hold
/// none (refused on write, removed from older ones when the control plane
/// opens), but the change log may still hold deltas written before: a
/// watcher resuming from an old revision must not receive them.
fn redact(mut response: WatchResponse) -> WatchResponse {
    let namespaces: Vec<&mut Namespace> = match &mut response.event {
        Some(watch_response::Event::Snapshot(chunk)) => chunk.namespaces.iter_mut().collect(),
        Some(watch_response::Event::Delta(delta)) => delta
            .changes
            .iter_mut()
            .filter_map(|c| match &mut c.change {
                Some(change::Change::Namespace(ns)) => Some(ns),
                _ => None,
            })
            .collect(),
        None => Vec::new(),
    };
    for ns in namespaces {
        prism_proto::secrets::redact_namespace(ns);
    }
    response
}

#[derive(Clone)]
pub struct Service {
    plane: ControlPlane,
    /// `None` when no key is configured: every caller is unchecked.
    auth: Option<Authenticator>,
    /// Turns true when the server shuts down; ends every Watch stream.
    shutdown: tokio::sync::watch::Receiver<bool>,
}

impl Service {
    pub fn new(plane: ControlPlane, shutdown: tokio::sync::watch::Receiver<bool>) -> Self {
        // Without a secret or JWKS no token can be checked: every caller
        // is unchecked, token or not (the server warns at startup).
        let config = &plane.config().auth;
        let auth = config.verifies_tokens().then(|| Authenticator::new(config));
        Self { plane, auth, shutdown }
    }

    fn who<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        match &self.auth {
            Some(auth) => principal(auth, req),
            None => Ok(Caller::Open),
        }
    }

    /// Who presents `req`'s credentials: the same verification every RPC
    /// makes (the console asks it before it offers parts of a page).
    pub fn caller<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        self.who(req)
    }

    /// Whether tokens are verified at all (a key is configured).
    pub fn verifies_tokens(&self) -> bool {
        self.auth.is_some()
    }

    pub fn plane(&self) -> &ControlPlane {
        &self.plane
    }

    /// Authenticates and authorizes `req` for `action`.
    async fn allow<T>(
        &self,
        req: &Request<T>,
        action: &'static str,
        target: &str,
        need: Need<'_>,
    ) -> Result<Caller, Status> {
        let who = self.who(req)?;
        self.plane.authorize(&who, action, target, need).await.map_err(ControlPlaneError::into_status)?;
        Ok(who)
    }
}

#[tonic::async_trait]
impl ControlPlaneService for Service {
    async fn create_tenant(&self, req: Request<CreateTenantRequest>) -> Reply<Tenant> {
        let r = req.get_ref();
        let who = self.allow(&req, "CreateTenant", &r.tenant_id, Need::Admin).await?;
        reply(self.plane.create_tenant(&who.name(), &r.tenant_id, &r.display_name, &r.admins, r.quotas.as_ref()).await)
    }

    async fn get_tenant(&self, req: Request<GetTenantRequest>) -> Reply<Tenant> {
        let id = &req.get_ref().tenant_id;
        self.allow(&req, "GetTenant", id, Need::TenantAdmin(id)).await?;
        reply(self.plane.get_tenant(id).await)
    }

    async fn list_tenants(&self, req: Request<ListTenantsRequest>) -> Reply<ListTenantsResponse> {
        let who = self.allow(&req, "ListTenants", "", Need::Authenticated).await?;
        // Everyone sees the tenants they administer; the superuser all.
        let administered = self.plane.administered_tenants(&who).await.map_err(ControlPlaneError::into_status)?;
        reply(self.plane.list_tenants(req.get_ref(), |t| administered.as_ref().is_none_or(|a| a.contains(&t.id))).await)
    }

    async fn update_tenant(&self, req: Request<UpdateTenantRequest>) -> Reply<Tenant> {
        let r = req.get_ref();
        // A tenant's quotas bound what its admins may use: only the
        // superuser sets them.
        let need = if r.quotas.is_some() { Need::Admin } else { Need::TenantAdmin(&r.tenant_id) };
        let who = self.allow(&req, "UpdateTenant", &r.tenant_id, need).await?;
        reply(self.plane.update_tenant(&who.name(), r).await)
    }

    async fn set_tenant_state(&self, req: Request<SetTenantStateRequest>) -> Reply<Tenant> {
        // Suspension is the operator's lever against a tenant.
        let who = self.allow(&req, "SetTenantState", &req.get_ref().tenant_id, Need::Admin).await?;
        reply(self.plane.set_tenant_state(&who.name(), req.get_ref()).await)
    }

    async fn delete_tenant(&self, req: Request<DeleteTenantRequest>) -> Reply<Tenant> {
        let r = req.get_ref();
        let who = self.allow(&req, "DeleteTenant", &r.tenant_id, Need::Admin).await?;
        reply(self.plane.delete_tenant(&who.name(), &r.tenant_id, r.expected_revision).await)
    }

    async fn create_namespace(&self, req: Request<CreateNamespaceRequest>) -> Reply<Namespace> {
        let r = req.get_ref();
        let who = self.allow(&req, "CreateNamespace", &r.name, Need::TenantAdmin(tenant_of(&r.name))).await?;
        reply(self.plane.create_namespace(&who.name(), &r.name, r.spec.as_ref()).await)
    }

    async fn get_namespace(&self, req: Request<GetNamespaceRequest>) -> Reply<Namespace> {
        let name = &req.get_ref().name;
        self.allow(&req, "GetNamespace", name, Need::NamespaceUser(name)).await?;
        reply(self.plane.get_namespace(name).await)
    }

    async fn list_namespaces(&self, req: Request<ListNamespacesRequest>) -> Reply<ListNamespacesResponse> {
        let who = self.allow(&req, "ListNamespaces", &req.get_ref().tenant_id, Need::Authenticated).await?;
        // Everyone sees the namespaces they may use; the superuser all.
        let visible = self.plane.namespace_filter(&who).await.map_err(ControlPlaneError::into_status)?;
        reply(self.plane.list_namespaces(req.get_ref(), visible).await)
    }

    async fn update_namespace(&self, req: Request<UpdateNamespaceRequest>) -> Reply<Namespace> {
        let who =
            self.allow(&req, "UpdateNamespace", &req.get_ref().name, Need::NamespaceAdmin(&req.get_ref().name)).await?;
        reply(self.plane.update_namespace(&who.name(), req.get_ref()).await)
    }

    async fn delete_namespace(&self, req: Request<DeleteNamespaceRequest>) -> Reply<Namespace> {
        let r = req.get_ref();
        let who = self.allow(&req, "DeleteNamespace", &r.name, Need::TenantAdmin(tenant_of(&r.name))).await?;
        reply(self.plane.delete_namespace(&who.name(), &r.name, r.expected_revision).await)
    }

    async fn report_namespace_status(&self, req: Request<ReportNamespaceStatusRequest>) -> Reply<Namespace> {
        let who = self.allow(&req, "ReportNamespaceStatus", &req.get_ref().name, Need::Shard).await?;
        reply(self.plane.report_namespace_status(&who.name(), req.get_ref()).await)
    }

    async fn migrate_namespace(&self, req: Request<MigrateNamespaceRequest>) -> Reply<Namespace> {
        // Moving a namespace to another backend or shard is choosing its
        // backend and placement again: who may create it may move it.
        let name = &req.get_ref().name;
        let who = self.allow(&req, "MigrateNamespace", name, Need::TenantAdmin(tenant_of(name))).await?;
        reply(self.plane.migrate_namespace(&who.name(), req.get_ref()).await)
    }

    async fn get_migration(&self, req: Request<GetMigrationRequest>) -> Reply<GetMigrationResponse> {
        let name = &req.get_ref().name;
        self.allow(&req, "GetMigration", name, Need::NamespaceUser(name)).await?;
        reply(self.plane.get_migration(req.get_ref()).await)
    }

    async fn abort_migration(&self, req: Request<AbortMigrationRequest>) -> Reply<Namespace> {
        let name = &req.get_ref().name;
        let who = self.allow(&req, "AbortMigration", name, Need::TenantAdmin(tenant_of(name))).await?;
        reply(self.plane.abort_migration(&who.name(), req.get_ref()).await)
    }

    async fn report_migration(&self, req: Request<ReportMigrationRequest>) -> Reply<Namespace> {
        let who = self.allow(&req, "ReportMigration", &req.get_ref().name, Need::Shard).await?;
        reply(self.plane.report_migration(&who.name(), req.get_ref()).await)
    }

    async fn grant_access(&self, req: Request<GrantAccessRequest>) -> Reply<Namespace> {
        let who =
            self.allow(&req, "GrantAccess", &req.get_ref().name, Need::NamespaceAdmin(&req.get_ref().name)).await?;
        reply(self.plane.grant_access(&who.name(), req.get_ref()).await)
    }

    async fn revoke_access(&self, req: Request<RevokeAccessRequest>) -> Reply<Namespace> {
        let who =
            self.allow(&req, "RevokeAccess", &req.get_ref().name, Need::NamespaceAdmin(&req.get_ref().name)).await?;
        reply(self.plane.revoke_access(&who.name(), req.get_ref()).await)
    }

    async fn set_schema(&self, req: Request<SetSchemaRequest>) -> Reply<SchemaResponse> {
        // A schema governs every writer of the namespace: its admins set
        // it, as they update its spec.
        let name = &req.get_ref().name;
        let who = self.allow(&req, "SetSchema", name, Need::NamespaceAdmin(name)).await?;
        reply(self.plane.set_schema(&who.name(), req.get_ref()).await)
    }

    async fn get_schema(&self, req: Request<GetSchemaRequest>) -> Reply<SchemaResponse> {
        let name = &req.get_ref().name;
        self.allow(&req, "GetSchema", name, Need::NamespaceUser(name)).await?;
        reply(self.plane.get_schema(req.get_ref()).await)
    }

    async fn list_schema_history(&self, req: Request<ListSchemaHistoryRequest>) -> Reply<ListSchemaHistoryResponse> {
        let name = &req.get_ref().name;
        self.allow(&req, "ListSchemaHistory", name, Need::NamespaceUser(name)).await?;
        reply(self.plane.list_schema_history(req.get_ref()).await)
    }

    async fn register_shard(&self, req: Request<RegisterShardRequest>) -> Reply<RegisterShardResponse> {
        let who = self.allow(&req, "RegisterShard", "", Need::Shard).await?;
        let r = req.get_ref();
        reply(self.plane.register_shard(&who.name(), &r.shard_id, &r.endpoint, &r.store_id, &r.features).await)
    }

    async fn heartbeat(&self, req: Request<HeartbeatRequest>) -> Reply<HeartbeatResponse> {
        self.allow(&req, "Heartbeat", "", Need::Shard).await?;
        let r = req.get_ref();
        reply(self.plane.heartbeat(&r.shard_id, &r.instance_id).await)
    }

    async fn deregister_shard(&self, req: Request<DeregisterShardRequest>) -> Reply<DeregisterShardResponse> {
        let who = self.allow(&req, "DeregisterShard", "", Need::Shard).await?;
        let r = req.get_ref();
        reply(
            self.plane
                .deregister_shard(&who.name(), &r.shard_id, &r.instance_id)
                .await
                .map(|()| DeregisterShardResponse {}),
        )
    }

    async fn list_shards(&self, req: Request<ListShardsRequest>) -> Reply<ListShardsResponse> {
        self.allow(&req, "ListShards", "", Need::Authenticated).await?;
        reply(self.plane.list_shards().await.map(|shards| ListShardsResponse { shards }))
    }

    async fn report_usage(&self, req: Request<ReportUsageRequest>) -> Reply<ReportUsageResponse> {
        let shard = req.get_ref().shard_id.clone();
        self.allow(&req, "ReportUsage", &shard, Need::Shard).await?;
        reply(self.plane.report_usage(req.get_ref()).await)
    }

    async fn get_usage(&self, req: Request<GetUsageRequest>) -> Reply<GetUsageResponse> {
        let target = req.get_ref().target.clone();
        let need = if target.contains('/') { Need::NamespaceAdmin(&target) } else { Need::TenantAdmin(&target) };
        self.allow(&req, "GetUsage", &target, need).await?;
        reply(self.plane.get_usage(&target).await)
    }

    async fn resolve_namespace(&self, req: Request<ResolveNamespaceRequest>) -> Reply<ResolveNamespaceResponse> {
        let name = &req.get_ref().namespace;
        self.allow(&req, "ResolveNamespace", name, Need::NamespaceUser(name)).await?;
        reply(self.plane.resolve_namespace(name).await)
    }

    async fn watch(&self, req: Request<WatchRequest>) -> Reply<BoxStream<WatchResponse>> {
        // The stream carries every tenant's metadata: shards only.
        self.allow(&req, "Watch", "", Need::Shard).await?;
        // Counted as a connected watcher while the stream lives.
        let watcher = self.plane.metrics().watcher();
        let stream = watch::watch(self.plane.store().clone(), req.get_ref().from_revision, self.shutdown.clone()).map(
            move |item| {
                let _ = &watcher;
                item.map(redact).map_err(ControlPlaneError::into_status)
            },
        );
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_audit_events(&self, req: Request<ListAuditEventsRequest>) -> Reply<ListAuditEventsResponse> {
        let who = self.who(&req)?;
        let mut r = req.into_inner();
        if !who.is_admin() {
            // A tenant admin reads its own tenant's trail only; with no
            // tenant named, the one its token's claim names.
            if r.tenant_id.is_empty()
                && let Caller::Verified(p) = &who
                && let (Some(t), true) = (&p.tenant, p.has_role(prism_proto::access::TENANT_ADMIN_ROLE))
            {
                r.tenant_id.clone_from(t);
            }
            let need = if r.tenant_id.is_empty() { Need::Admin } else { Need::TenantAdmin(&r.tenant_id) };
            self.plane
                .authorize(&who, "ListAuditEvents", &r.tenant_id, need)
                .await
                .map_err(ControlPlaneError::into_status)?;
        }
        reply(self.plane.list_audit_events(&r).await)
    }

    async fn append_audit(&self, req: Request<AppendAuditRequest>) -> Reply<AppendAuditResponse> {
        self.allow(&req, "AppendAudit", "", Need::Shard).await?;
        reply(self.plane.append_audit(req.into_inner().events).await.map(|()| AppendAuditResponse {}))
    }
}
