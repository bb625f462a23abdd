//! `prism.control.v1.ControlPlaneService` over gRPC: unpacks requests, calls
//! [`ControlPlane`], and turns errors into statuses at this one edge.

use prism_proto::control::control_plane_service_server::ControlPlaneService;
use prism_proto::control::*;
use tokio_stream::StreamExt;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status};

use prism_auth::{AuthError, Authenticator};

use crate::error::ControlPlaneError;
use crate::plane::{ANONYMOUS, ControlPlane};
use crate::watch;

/// Who is calling: the `sub` of a valid bearer token, or `anonymous`
/// where the configuration allows callers without one.
fn principal<T>(auth: &Authenticator, req: &Request<T>) -> Result<String, Status> {
    let header = req.metadata().get("authorization").and_then(|v| v.to_str().ok());
    match auth.authenticate(header) {
        Ok(p) if p.sub == prism_auth::Principal::anonymous().sub => Ok(ANONYMOUS.to_owned()),
        Ok(p) => Ok(p.sub),
        Err(AuthError::Unauthenticated(why)) => Err(Status::unauthenticated(why)),
        Err(e) => Err(ControlPlaneError::Corrupt(e.to_string()).into_status()),
    }
}

type Reply<T> = Result<Response<T>, Status>;

fn reply<T>(result: Result<T, ControlPlaneError>) -> Reply<T> {
    result.map(Response::new).map_err(ControlPlaneError::into_status)
}

#[derive(Clone)]
pub struct Service {
    plane: ControlPlane,
    /// `None` when no secret is configured: every caller is anonymous.
    auth: Option<Authenticator>,
    /// Turns true when the server shuts down; ends every Watch stream.
    shutdown: tokio::sync::watch::Receiver<bool>,
}

impl Service {
    pub fn new(plane: ControlPlane, shutdown: tokio::sync::watch::Receiver<bool>) -> Self {
        // Without a secret no token can be checked: every caller is
        // anonymous, token or not (the server warns at startup).
        let config = &plane.config().auth;
        let auth = config.hs256_secret.is_some().then(|| Authenticator::new(config));
        Self { plane, auth, shutdown }
    }

    fn who<T>(&self, req: &Request<T>) -> Result<String, Status> {
        match &self.auth {
            Some(auth) => principal(auth, req),
            None => Ok(ANONYMOUS.to_owned()),
        }
    }
}

#[tonic::async_trait]
impl ControlPlaneService for Service {
    async fn create_tenant(&self, req: Request<CreateTenantRequest>) -> Reply<Tenant> {
        let who = self.who(&req)?;
        let r = req.into_inner();
        reply(self.plane.create_tenant(&who, &r.tenant_id, &r.display_name, &r.admins, r.quotas.as_ref()).await)
    }

    async fn get_tenant(&self, req: Request<GetTenantRequest>) -> Reply<Tenant> {
        self.who(&req)?;
        reply(self.plane.get_tenant(&req.into_inner().tenant_id).await)
    }

    async fn list_tenants(&self, req: Request<ListTenantsRequest>) -> Reply<ListTenantsResponse> {
        self.who(&req)?;
        reply(self.plane.list_tenants(req.get_ref()).await)
    }

    async fn update_tenant(&self, req: Request<UpdateTenantRequest>) -> Reply<Tenant> {
        reply(self.plane.update_tenant(&self.who(&req)?, req.get_ref()).await)
    }

    async fn set_tenant_state(&self, req: Request<SetTenantStateRequest>) -> Reply<Tenant> {
        reply(self.plane.set_tenant_state(&self.who(&req)?, req.get_ref()).await)
    }

    async fn delete_tenant(&self, req: Request<DeleteTenantRequest>) -> Reply<Tenant> {
        let r = req.get_ref();
        reply(self.plane.delete_tenant(&self.who(&req)?, &r.tenant_id, r.expected_revision).await)
    }

    async fn create_namespace(&self, req: Request<CreateNamespaceRequest>) -> Reply<Namespace> {
        let r = req.get_ref();
        reply(self.plane.create_namespace(&self.who(&req)?, &r.name, r.spec.as_ref()).await)
    }

    async fn get_namespace(&self, req: Request<GetNamespaceRequest>) -> Reply<Namespace> {
        self.who(&req)?;
        reply(self.plane.get_namespace(&req.get_ref().name).await)
    }

    async fn list_namespaces(&self, req: Request<ListNamespacesRequest>) -> Reply<ListNamespacesResponse> {
        self.who(&req)?;
        reply(self.plane.list_namespaces(req.get_ref()).await)
    }

    async fn update_namespace(&self, req: Request<UpdateNamespaceRequest>) -> Reply<Namespace> {
        reply(self.plane.update_namespace(&self.who(&req)?, req.get_ref()).await)
    }

    async fn delete_namespace(&self, req: Request<DeleteNamespaceRequest>) -> Reply<Namespace> {
        let r = req.get_ref();
        reply(self.plane.delete_namespace(&self.who(&req)?, &r.name, r.expected_revision).await)
    }

    async fn report_namespace_status(&self, req: Request<ReportNamespaceStatusRequest>) -> Reply<Namespace> {
        reply(self.plane.report_namespace_status(&self.who(&req)?, req.get_ref()).await)
    }

    async fn grant_access(&self, req: Request<GrantAccessRequest>) -> Reply<Namespace> {
        reply(self.plane.grant_access(&self.who(&req)?, req.get_ref()).await)
    }

    async fn revoke_access(&self, req: Request<RevokeAccessRequest>) -> Reply<Namespace> {
        reply(self.plane.revoke_access(&self.who(&req)?, req.get_ref()).await)
    }

    async fn register_shard(&self, req: Request<RegisterShardRequest>) -> Reply<RegisterShardResponse> {
        let who = self.who(&req)?;
        let r = req.get_ref();
        reply(self.plane.register_shard(&who, &r.shard_id, &r.endpoint).await)
    }

    async fn heartbeat(&self, req: Request<HeartbeatRequest>) -> Reply<HeartbeatResponse> {
        self.who(&req)?;
        let r = req.get_ref();
        reply(self.plane.heartbeat(&r.shard_id, &r.instance_id).await)
    }

    async fn deregister_shard(&self, req: Request<DeregisterShardRequest>) -> Reply<DeregisterShardResponse> {
        let who = self.who(&req)?;
        let r = req.get_ref();
        reply(self.plane.deregister_shard(&who, &r.shard_id, &r.instance_id).await.map(|()| DeregisterShardResponse {}))
    }

    async fn list_shards(&self, req: Request<ListShardsRequest>) -> Reply<ListShardsResponse> {
        self.who(&req)?;
        reply(self.plane.list_shards().await.map(|shards| ListShardsResponse { shards }))
    }

    async fn report_usage(&self, req: Request<ReportUsageRequest>) -> Reply<ReportUsageResponse> {
        self.who(&req)?;
        reply(self.plane.report_usage(req.get_ref()).await)
    }

    async fn get_usage(&self, req: Request<GetUsageRequest>) -> Reply<GetUsageResponse> {
        self.who(&req)?;
        reply(self.plane.get_usage(&req.get_ref().target).await)
    }

    async fn resolve_namespace(&self, req: Request<ResolveNamespaceRequest>) -> Reply<ResolveNamespaceResponse> {
        self.who(&req)?;
        reply(self.plane.resolve_namespace(&req.get_ref().namespace).await)
    }

    async fn watch(&self, req: Request<WatchRequest>) -> Reply<BoxStream<WatchResponse>> {
        self.who(&req)?;
        let stream = watch::watch(self.plane.store().clone(), req.get_ref().from_revision, self.shutdown.clone())
            .map(|item| item.map_err(ControlPlaneError::into_status));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_audit_events(&self, req: Request<ListAuditEventsRequest>) -> Reply<ListAuditEventsResponse> {
        self.who(&req)?;
        reply(self.plane.list_audit_events(req.get_ref()).await)
    }
}
