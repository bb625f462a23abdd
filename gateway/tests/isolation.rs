//! The isolation matrix: three tenants × a principal of every role (and
//! every kind of bad credential) × every KeyValue, TimeSeries and control
//! plane RPC, through real gRPC servers with authentication on everywhere
//! (HS256 with issuer and audience checks). Exactly the allowed
//! combinations get past authorization (they may still fail for other
//! reasons, e.g. NOT_FOUND or a deliberately stale revision, so nothing is
//! changed by an admin call); every other one is PERMISSION_DENIED, or
//! UNAUTHENTICATED for bad credentials.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::SystemTime;

use anyhow::Context;
use prism_auth::Claims;
use prism_proto::access::{ADMIN_ROLE, SHARD_ROLE, TENANT_ADMIN_ROLE};
use prism_proto::control::control_plane_service_client::ControlPlaneServiceClient;
use prism_proto::control::{
    Abstraction, Access, AccessLevel, Backend, CreateNamespaceRequest, CreateTenantRequest, DeleteNamespaceRequest,
    DeleteTenantRequest, DeregisterShardRequest, GetNamespaceRequest, GetTenantRequest, Grant, GrantAccessRequest,
    HeartbeatRequest, ListAuditEventsRequest, ListNamespacesRequest, ListShardsRequest, ListTenantsRequest,
    NamespaceSpec, Policies, QuotaSet, RegisterShardRequest, ReportNamespaceStatusRequest, ResolveNamespaceRequest,
    RevokeAccessRequest, SetTenantStateRequest, TenantState, UpdateNamespaceRequest, UpdateTenantRequest, WatchRequest,
};
use prism_proto::kv::key_value_service_client::KeyValueServiceClient;
use prism_proto::kv::{self, mutation};
use prism_proto::timeseries as ts;
use prism_proto::timeseries::time_series_service_client::TimeSeriesServiceClient;
use prism_testkit::{Cluster, TEST_AUDIENCE, TEST_ISSUER, TEST_SECRET, claims, token};
use tonic::Code;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

const TENANTS: [&str; 3] = ["t1", "t2", "t3"];

/// A principal, relative to the tenant under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Admin,
    /// Role `tenant-admin` with this tenant's claim.
    TenantAdmin,
    /// Role `tenant-admin` of the next tenant.
    OtherTenantAdmin,
    /// Listed in this tenant's `admins`, with no role.
    ListedAdmin,
    Owner,
    Reader,
    Writer,
    /// This tenant's claim, no role, no grant.
    Stranger,
    Shard,
    /// The reader's `sub` with this tenant's claim: the grant's bare name
    /// means this tenant's principal too.
    ScopedReader,
    /// The same `sub`s as the reader, owner and listed admin, with the
    /// next tenant's claim: other principals, granted nothing here.
    ForeignReader,
    ForeignOwner,
    ForeignListedAdmin,
    /// Roles `admin` and `shard` on a token with this tenant's claim: a
    /// tenant's token carries no platform role.
    ScopedAdminRole,
    ScopedShardRole,
    /// `partner` of the next tenant, granted READ_WRITE here by its full
    /// name (`next:partner`): the explicit cross-tenant grant.
    Partner,
    /// `partner` of this tenant: not the one granted.
    PartnerAtHome,
}

const EVERYONE: [Who; 17] = [
    Who::Admin,
    Who::TenantAdmin,
    Who::OtherTenantAdmin,
    Who::ListedAdmin,
    Who::Owner,
    Who::Reader,
    Who::Writer,
    Who::Stranger,
    Who::Shard,
    Who::ScopedReader,
    Who::ForeignReader,
    Who::ForeignOwner,
    Who::ForeignListedAdmin,
    Who::ScopedAdminRole,
    Who::ScopedShardRole,
    Who::Partner,
    Who::PartnerAtHome,
];

fn next_tenant(tenant: &str) -> &'static str {
    let i = TENANTS.iter().position(|t| *t == tenant).unwrap_or(0);
    TENANTS[(i + 1) % TENANTS.len()]
}

/// The token of `who` for `tenant`.
fn token_of(who: Who, tenant: &str) -> String {
    match who {
        Who::Admin => token("root", None, &[ADMIN_ROLE]),
        Who::TenantAdmin => token(&format!("ta-{tenant}"), Some(tenant), &[TENANT_ADMIN_ROLE]),
        Who::OtherTenantAdmin => {
            let other = next_tenant(tenant);
            token(&format!("ta-{other}"), Some(other), &[TENANT_ADMIN_ROLE])
        }
        Who::ListedAdmin => token(&format!("boss-{tenant}"), None, &[]),
        Who::Owner => token(&format!("owner-{tenant}"), None, &[]),
        Who::Reader => token(&format!("reader-{tenant}"), None, &[]),
        Who::Writer => token(&format!("writer-{tenant}"), None, &[]),
        Who::Stranger => token("stranger", Some(tenant), &[]),
        Who::Shard => token("shard-0", None, &[SHARD_ROLE]),
        Who::ScopedReader => token(&format!("reader-{tenant}"), Some(tenant), &[]),
        Who::ForeignReader => token(&format!("reader-{tenant}"), Some(next_tenant(tenant)), &[]),
        Who::ForeignOwner => token(&format!("owner-{tenant}"), Some(next_tenant(tenant)), &[]),
        Who::ForeignListedAdmin => token(&format!("boss-{tenant}"), Some(next_tenant(tenant)), &[]),
        Who::ScopedAdminRole => token("root", Some(tenant), &[ADMIN_ROLE]),
        Who::ScopedShardRole => token("shard-0", Some(tenant), &[SHARD_ROLE]),
        Who::Partner => token("partner", Some(next_tenant(tenant)), &[]),
        Who::PartnerAtHome => token("partner", Some(tenant), &[]),
    }
}

/// Every way of not being authenticated, as raw `authorization` values.
fn bad_credentials() -> Vec<(&'static str, Option<String>)> {
    let now = prism_auth::unix_now();
    let admin = || claims("root", None, &[ADMIN_ROLE]);
    let signed = |c: Claims| format!("Bearer {}", prism_auth::sign_hs256(TEST_SECRET, &c).unwrap_or_default());
    let b64 = |s: &str| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    };
    let body = b64(&format!(
        r#"{{"sub":"root","roles":["admin"],"exp":{},"iss":"{TEST_ISSUER}","aud":"{TEST_AUDIENCE}"}}"#,
        now + 600
    ));
    vec![
        ("missing", None),
        ("basic auth", Some("Basic cm9vdDpodW50ZXIy".into())),
        ("not a JWT", Some("Bearer not-a-jwt".into())),
        ("empty bearer", Some("Bearer ".into())),
        ("expired", Some(signed(Claims { exp: now - 3600, ..admin() }))),
        ("not yet valid", Some(signed(Claims { nbf: Some(now + 3600), ..admin() }))),
        (
            "wrong signature",
            Some(format!(
                "Bearer {}",
                prism_auth::sign_hs256("some-other-secret-0123456789", &admin()).unwrap_or_default()
            )),
        ),
        ("wrong issuer", Some(signed(Claims { iss: Some("someone-else".into()), ..admin() }))),
        ("wrong audience", Some(signed(Claims { aud: Some("another-service".into()), ..admin() }))),
        ("no issuer", Some(signed(Claims { iss: None, ..admin() }))),
        ("alg none", Some(format!("Bearer {}.{body}.", b64(r#"{"alg":"none","typ":"JWT"}"#)))),
    ]
}

/// Sets a raw `authorization` value (or none).
#[derive(Clone)]
struct Raw(Option<MetadataValue<Ascii>>);

impl Interceptor for Raw {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

struct Clients {
    cp: ControlPlaneServiceClient<InterceptedService<Channel, Raw>>,
    kv: KeyValueServiceClient<InterceptedService<Channel, Raw>>,
    ts: TimeSeriesServiceClient<InterceptedService<Channel, Raw>>,
}

/// Channels to the control plane and each tenant's namespace owners.
struct World {
    cp: Channel,
    kv: HashMap<&'static str, Channel>,
    ts: HashMap<&'static str, Channel>,
}

impl World {
    fn clients(&self, tenant: &str, authorization: Option<&str>) -> anyhow::Result<Clients> {
        let raw = Raw(authorization.map(MetadataValue::from_str).transpose().context("header")?);
        Ok(Clients {
            cp: ControlPlaneServiceClient::with_interceptor(self.cp.clone(), raw.clone()),
            kv: KeyValueServiceClient::with_interceptor(self.kv[tenant].clone(), raw.clone()),
            ts: TimeSeriesServiceClient::with_interceptor(self.ts[tenant].clone(), raw),
        })
    }
}

/// Every RPC of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    // KeyValue.
    Put,
    Get,
    Delete,
    Mutate,
    Scan,
    // TimeSeries.
    WriteSync,
    Write,
    Read,
    Search,
    Tail,
    // Control plane.
    CreateTenant,
    GetTenant,
    ListTenants,
    UpdateTenant,
    UpdateTenantQuotas,
    SetTenantState,
    DeleteTenant,
    CreateNamespace,
    GetNamespace,
    ListNamespaces,
    UpdateNamespace,
    DeleteNamespace,
    GrantAccess,
    RevokeAccess,
    SetSchema,
    GetSchema,
    ListSchemaHistory,
    MigrateNamespace,
    GetMigration,
    AbortMigration,
    ReportMigration,
    ReportNamespaceStatus,
    RegisterShard,
    Heartbeat,
    DeregisterShard,
    ListShards,
    ResolveNamespace,
    Watch,
    ListAuditEvents,
}

const OPS: [Op; 39] = [
    Op::Put,
    Op::Get,
    Op::Delete,
    Op::Mutate,
    Op::Scan,
    Op::WriteSync,
    Op::Write,
    Op::Read,
    Op::Search,
    Op::Tail,
    Op::CreateTenant,
    Op::GetTenant,
    Op::ListTenants,
    Op::UpdateTenant,
    Op::UpdateTenantQuotas,
    Op::SetTenantState,
    Op::DeleteTenant,
    Op::CreateNamespace,
    Op::GetNamespace,
    Op::ListNamespaces,
    Op::UpdateNamespace,
    Op::DeleteNamespace,
    Op::GrantAccess,
    Op::RevokeAccess,
    Op::SetSchema,
    Op::GetSchema,
    Op::ListSchemaHistory,
    Op::MigrateNamespace,
    Op::GetMigration,
    Op::AbortMigration,
    Op::ReportMigration,
    Op::ReportNamespaceStatus,
    Op::RegisterShard,
    Op::Heartbeat,
    Op::DeregisterShard,
    Op::ListShards,
    Op::ResolveNamespace,
    Op::Watch,
    Op::ListAuditEvents,
];

/// The specification: whether `who` may call `op` on the tenant under test.
fn allowed(op: Op, who: Who) -> bool {
    use Who::*;
    let tenant_admin = matches!(who, Admin | TenantAdmin | ListedAdmin);
    let reader = matches!(who, Reader | ScopedReader);
    let writer = matches!(who, Writer | Partner);
    match op {
        Op::Get | Op::Scan | Op::Read | Op::Search | Op::Tail => tenant_admin || who == Owner || reader || writer,
        Op::Put | Op::Delete | Op::Mutate | Op::WriteSync | Op::Write => tenant_admin || who == Owner || writer,
        Op::CreateTenant | Op::SetTenantState | Op::DeleteTenant | Op::UpdateTenantQuotas => who == Admin,
        Op::GetTenant
        | Op::UpdateTenant
        | Op::CreateNamespace
        | Op::DeleteNamespace
        | Op::MigrateNamespace
        | Op::AbortMigration
        | Op::ListAuditEvents => tenant_admin,
        Op::UpdateNamespace | Op::GrantAccess | Op::RevokeAccess | Op::SetSchema => tenant_admin || who == Owner,
        Op::GetNamespace | Op::ResolveNamespace | Op::GetSchema | Op::ListSchemaHistory | Op::GetMigration => {
            tenant_admin || reader || writer || matches!(who, Owner | Shard)
        }
        Op::ReportNamespaceStatus
        | Op::ReportMigration
        | Op::RegisterShard
        | Op::Heartbeat
        | Op::DeregisterShard
        | Op::Watch => {
            matches!(who, Admin | Shard)
        }
        Op::ListTenants | Op::ListNamespaces | Op::ListShards => true,
    }
}

fn now() -> prost_types::Timestamp {
    let secs = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
    prost_types::Timestamp { seconds: secs, nanos: 0 }
}

fn event() -> ts::Event {
    ts::Event {
        schema_version: 0,
        time_series_id: "s".into(),
        event_time: Some(now()),
        event_id: "e".into(),
        items: vec![ts::EventItem { key: b"v".to_vec(), value: b"1".to_vec() }],
        tags: HashMap::new(),
    }
}

fn item() -> kv::Item {
    kv::Item { key: b"k".to_vec(), value: b"v".to_vec(), ttl: None }
}

/// Calls `op` on `tenant`'s namespaces; the outcome's code. Admin calls
/// are shaped to change nothing when allowed: a stale
/// `expected_revision`, a missing spec, an unknown instance.
async fn call(c: &mut Clients, op: Op, tenant: &str) -> Code {
    let kv_ns = format!("{tenant}/kv");
    let ts_ns = format!("{tenant}/ts");
    let code = |r: Result<(), tonic::Status>| r.err().map_or(Code::Ok, |s| s.code());
    // No object ever reaches this revision.
    const STALE: u64 = u64::MAX;
    match op {
        Op::Put => code(
            c.kv.put_items(kv::PutItemsRequest {
                namespace: kv_ns,
                id: "r".into(),
                items: vec![item()],
                idempotency_token: None,
            })
            .await
            .map(drop),
        ),
        Op::Get => code(
            c.kv.get_items(kv::GetItemsRequest { namespace: kv_ns, id: "r".into(), ..Default::default() })
                .await
                .map(drop),
        ),
        Op::Delete => code(
            c.kv.delete_items(kv::DeleteItemsRequest { namespace: kv_ns, id: "gone".into(), ..Default::default() })
                .await
                .map(drop),
        ),
        Op::Mutate => code(
            c.kv.mutate_items(kv::MutateItemsRequest {
                namespace: kv_ns,
                id: "r".into(),
                mutations: vec![kv::Mutation { operation: Some(mutation::Operation::Put(item())) }],
                idempotency_token: None,
            })
            .await
            .map(drop),
        ),
        Op::Scan => {
            code(c.kv.scan_items(kv::ScanItemsRequest { namespace: kv_ns, ..Default::default() }).await.map(drop))
        }
        Op::WriteSync => code(
            c.ts.write_event_records_sync(ts::WriteEventRecordsRequest { namespace: ts_ns, events: vec![event()] })
                .await
                .map(drop),
        ),
        Op::Write => code(
            c.ts.write_event_records(ts::WriteEventRecordsRequest { namespace: ts_ns, events: vec![event()] })
                .await
                .map(drop),
        ),
        Op::Read => code(
            c.ts.read_event_records(ts::ReadEventRecordsRequest {
                namespace: ts_ns,
                time_series_id: "s".into(),
                ..Default::default()
            })
            .await
            .map(drop),
        ),
        Op::Search => code(
            c.ts.search_event_records(ts::SearchEventRecordsRequest { namespace: ts_ns, ..Default::default() })
                .await
                .map(drop),
        ),
        Op::Tail => code(
            c.ts.tail_event_records(ts::TailEventRecordsRequest { namespace: ts_ns, ..Default::default() })
                .await
                .map(drop),
        ),
        Op::CreateTenant => code(
            // An invalid id: INVALID_ARGUMENT once allowed.
            c.cp.create_tenant(CreateTenantRequest { tenant_id: "Not_Valid".into(), ..Default::default() })
                .await
                .map(drop),
        ),
        Op::GetTenant => code(c.cp.get_tenant(GetTenantRequest { tenant_id: tenant.into() }).await.map(drop)),
        Op::ListTenants => code(c.cp.list_tenants(ListTenantsRequest::default()).await.map(drop)),
        Op::UpdateTenant => code(
            c.cp.update_tenant(UpdateTenantRequest {
                tenant_id: tenant.into(),
                expected_revision: STALE,
                ..Default::default()
            })
            .await
            .map(drop),
        ),
        Op::UpdateTenantQuotas => code(
            c.cp.update_tenant(UpdateTenantRequest {
                tenant_id: tenant.into(),
                quotas: Some(QuotaSet { requests_per_second: Some(-1), ..Default::default() }),
                expected_revision: STALE,
                ..Default::default()
            })
            .await
            .map(drop),
        ),
        Op::SetTenantState => code(
            c.cp.set_tenant_state(SetTenantStateRequest {
                tenant_id: tenant.into(),
                state: TenantState::Suspended as i32,
                expected_revision: STALE,
                ..Default::default()
            })
            .await
            .map(drop),
        ),
        Op::DeleteTenant => code(
            c.cp.delete_tenant(DeleteTenantRequest { tenant_id: tenant.into(), expected_revision: STALE })
                .await
                .map(drop),
        ),
        Op::CreateNamespace => code(
            // No spec: INVALID_ARGUMENT once allowed.
            c.cp.create_namespace(CreateNamespaceRequest { name: format!("{tenant}/new"), spec: None }).await.map(drop),
        ),
        Op::GetNamespace => code(c.cp.get_namespace(GetNamespaceRequest { name: kv_ns }).await.map(drop)),
        Op::ListNamespaces => code(
            c.cp.list_namespaces(ListNamespacesRequest { tenant_id: tenant.into(), ..Default::default() })
                .await
                .map(drop),
        ),
        Op::UpdateNamespace => code(
            c.cp.update_namespace(UpdateNamespaceRequest { name: kv_ns, spec: None, expected_revision: STALE })
                .await
                .map(drop),
        ),
        Op::DeleteNamespace => code(
            c.cp.delete_namespace(DeleteNamespaceRequest { name: kv_ns, expected_revision: STALE }).await.map(drop),
        ),
        Op::GrantAccess => code(
            c.cp.grant_access(GrantAccessRequest {
                name: kv_ns,
                principal: "mallory".into(),
                level: AccessLevel::ReadWrite as i32,
                expected_revision: STALE,
            })
            .await
            .map(drop),
        ),
        Op::RevokeAccess => code(
            c.cp.revoke_access(RevokeAccessRequest {
                name: kv_ns,
                principal: format!("reader-{tenant}"),
                expected_revision: STALE,
            })
            .await
            .map(drop),
        ),
        Op::SetSchema => code(
            // A stale revision: ABORTED once allowed, nothing written.
            c.cp.set_schema(prism_proto::control::SetSchemaRequest {
                name: ts_ns,
                schema: Some(Default::default()),
                compatibility: 0,
                expected_revision: STALE,
            })
            .await
            .map(drop),
        ),
        Op::GetSchema => {
            code(c.cp.get_schema(prism_proto::control::GetSchemaRequest { name: ts_ns, version: 0 }).await.map(drop))
        }
        Op::ListSchemaHistory => code(
            c.cp.list_schema_history(prism_proto::control::ListSchemaHistoryRequest { name: ts_ns }).await.map(drop),
        ),
        // Stale revisions and absent migrations: ABORTED or NOT_FOUND once
        // allowed, nothing written.
        Op::MigrateNamespace => code(
            c.cp.migrate_namespace(prism_proto::control::MigrateNamespaceRequest {
                name: kv_ns,
                target: Some(prism_proto::control::MigrationTarget {
                    pinned_shard: "shard-9".into(),
                    ..Default::default()
                }),
                expected_revision: STALE,
            })
            .await
            .map(drop),
        ),
        Op::GetMigration => {
            code(c.cp.get_migration(prism_proto::control::GetMigrationRequest { name: kv_ns }).await.map(drop))
        }
        Op::AbortMigration => code(
            c.cp.abort_migration(prism_proto::control::AbortMigrationRequest {
                name: kv_ns,
                expected_revision: STALE,
                force: false,
            })
            .await
            .map(drop),
        ),
        Op::ReportMigration => code(
            c.cp.report_migration(prism_proto::control::ReportMigrationRequest {
                name: kv_ns,
                shard_id: "no-such-shard".into(),
                instance_id: "nobody".into(),
                ..Default::default()
            })
            .await
            .map(drop),
        ),
        Op::ReportNamespaceStatus => code(
            c.cp.report_namespace_status(ReportNamespaceStatusRequest {
                name: kv_ns,
                shard_id: "no-such-shard".into(),
                ..Default::default()
            })
            .await
            .map(drop),
        ),
        Op::RegisterShard => code(
            c.cp.register_shard(RegisterShardRequest {
                shard_id: "shard-9".into(),
                endpoint: "not an endpoint".into(),
                ..Default::default()
            })
            .await
            .map(drop),
        ),
        Op::Heartbeat => code(
            c.cp.heartbeat(HeartbeatRequest { shard_id: "shard-9".into(), instance_id: "nobody".into() })
                .await
                .map(drop),
        ),
        Op::DeregisterShard => code(
            c.cp.deregister_shard(DeregisterShardRequest { shard_id: "shard-9".into(), instance_id: "nobody".into() })
                .await
                .map(drop),
        ),
        Op::ListShards => code(c.cp.list_shards(ListShardsRequest {}).await.map(drop)),
        Op::ResolveNamespace => {
            code(c.cp.resolve_namespace(ResolveNamespaceRequest { namespace: kv_ns }).await.map(drop))
        }
        Op::Watch => code(c.cp.watch(WatchRequest { from_revision: 0 }).await.map(drop)),
        Op::ListAuditEvents => code(
            c.cp.list_audit_events(ListAuditEventsRequest { tenant_id: tenant.into(), ..Default::default() })
                .await
                .map(drop),
        ),
    }
}

fn spec(tenant: &str, abstraction: Abstraction) -> NamespaceSpec {
    NamespaceSpec {
        abstraction: abstraction as i32,
        backend: Backend::Embedded as i32,
        // Loss-tolerant, so the buffered TimeSeries write is allowed.
        policies: (abstraction == Abstraction::TimeSeries)
            .then(|| Box::new(Policies { accept_loss: true, ..Default::default() })),
        access: Some(Box::new(Access {
            owners: vec![format!("owner-{tenant}")],
            consumers: vec![
                Grant { principal: format!("reader-{tenant}"), level: AccessLevel::Read as i32 },
                Grant { principal: format!("writer-{tenant}"), level: AccessLevel::ReadWrite as i32 },
                Grant { principal: format!("{}:partner", next_tenant(tenant)), level: AccessLevel::ReadWrite as i32 },
            ],
        })),
        ..Default::default()
    }
}

/// Which gateway a tenant's data calls enter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    /// The one that owns the namespace.
    Owner,
    /// The other one, which forwards them to the owner.
    OtherShard,
}

/// Three tenants, each with a KEY_VALUE and a TIME_SERIES namespace, on a
/// cluster that checks issuer and audience everywhere; data calls enter
/// through `entry`.
async fn world(entry: Entry) -> anyhow::Result<(Cluster, World)> {
    let cluster = Cluster::start_configured(
        |cp| {
            cp.auth.issuer = Some(TEST_ISSUER.into());
            cp.auth.audience = Some(TEST_AUDIENCE.into());
        },
        |gw| {
            gw.auth.issuer = Some(TEST_ISSUER.into());
            gw.auth.audience = Some(TEST_AUDIENCE.into());
        },
    )
    .await?;
    let mut admin = cluster.control_plane.client().await?;
    let mut kv = HashMap::new();
    let mut ts = HashMap::new();
    for tenant in TENANTS {
        let req = CreateTenantRequest {
            tenant_id: tenant.into(),
            admins: vec![format!("boss-{tenant}")],
            ..Default::default()
        };
        admin.create_tenant(req).await?;
        let kv_gw = cluster.active_namespace(&format!("{tenant}/kv"), spec(tenant, Abstraction::KeyValue)).await?;
        kv.insert(tenant, prism_client::endpoint(&enter(&cluster, kv_gw, entry)?)?.connect().await?);
        let ts_gw = cluster.active_namespace(&format!("{tenant}/ts"), spec(tenant, Abstraction::TimeSeries)).await?;
        ts.insert(tenant, prism_client::endpoint(&enter(&cluster, ts_gw, entry)?)?.connect().await?);
    }
    // Every gateway must hold every grant before the matrix runs.
    let revision = {
        let mut watch = admin.watch(WatchRequest { from_revision: 0 }).await?.into_inner();
        let mut revision = 0;
        while let Some(m) = watch.message().await? {
            if let Some(prism_proto::control::watch_response::Event::Snapshot(chunk)) = m.event {
                revision = chunk.revision;
                if chunk.last {
                    break;
                }
            }
        }
        revision
    };
    for gw in &cluster.gateways {
        gw.caught_up(revision).await?;
    }
    let cp = prism_client::endpoint(&cluster.control_plane.endpoint())?.connect().await?;
    Ok((cluster, World { cp, kv, ts }))
}

/// The endpoint `entry` names for a namespace that `owner` serves.
fn enter(cluster: &Cluster, owner: &prism_testkit::GatewayHandle, entry: Entry) -> anyhow::Result<String> {
    let gateway = match entry {
        Entry::Owner => owner,
        Entry::OtherShard => cluster.gateways.iter().find(|g| g.addr != owner.addr).context("a second gateway")?,
    };
    Ok(gateway.endpoint())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_the_allowed_combinations_pass_authorization() -> anyhow::Result<()> {
    matrix(Entry::Owner).await
}

/// The same matrix with every data call entering the gateway that does not
/// own its namespace: forwarding changes no answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_the_same_combinations_pass_when_calls_enter_through_the_wrong_shard() -> anyhow::Result<()> {
    matrix(Entry::OtherShard).await
}

async fn matrix(entry: Entry) -> anyhow::Result<()> {
    let (_cluster, world) = world(entry).await?;
    let mut wrong = Vec::new();
    let mut checked = 0;
    for tenant in TENANTS {
        for who in EVERYONE {
            let header = format!("Bearer {}", token_of(who, tenant));
            let mut c = world.clients(tenant, Some(&header))?;
            for op in OPS {
                let got = call(&mut c, op, tenant).await;
                checked += 1;
                let ok = if allowed(op, who) {
                    !matches!(got, Code::PermissionDenied | Code::Unauthenticated)
                } else {
                    got == Code::PermissionDenied
                };
                if !ok {
                    wrong.push(format!("{tenant} {who:?} {op:?}: {got:?} (allowed: {})", allowed(op, who)));
                }
            }
        }
        for (what, header) in bad_credentials() {
            let mut c = world.clients(tenant, header.as_deref())?;
            for op in OPS {
                let got = call(&mut c, op, tenant).await;
                checked += 1;
                if got != Code::Unauthenticated {
                    wrong.push(format!("{tenant} [{what}] {op:?}: {got:?}, want Unauthenticated"));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{} of {checked} combinations are wrong:\n{}", wrong.len(), wrong.join("\n"));
    assert_eq!(checked, TENANTS.len() * (EVERYONE.len() + bad_credentials().len()) * OPS.len());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_show_only_what_the_caller_may_see_and_refusals_are_audited() -> anyhow::Result<()> {
    let (_cluster, world) = world(Entry::Owner).await?;
    let names =
        |r: prism_proto::control::ListNamespacesResponse| r.namespaces.into_iter().map(|n| n.name).collect::<Vec<_>>();
    let as_who = |who: Who| world.clients("t1", Some(&format!("Bearer {}", token_of(who, "t1"))));

    let all = ListNamespacesRequest::default();
    assert_eq!(names(as_who(Who::Admin)?.cp.list_namespaces(all.clone()).await?.into_inner()).len(), 6);
    assert_eq!(
        names(as_who(Who::TenantAdmin)?.cp.list_namespaces(all.clone()).await?.into_inner()),
        ["t1/kv", "t1/ts"]
    );
    assert_eq!(
        names(as_who(Who::ListedAdmin)?.cp.list_namespaces(all.clone()).await?.into_inner()),
        ["t1/kv", "t1/ts"]
    );
    assert_eq!(names(as_who(Who::Reader)?.cp.list_namespaces(all.clone()).await?.into_inner()), ["t1/kv", "t1/ts"]);
    assert!(names(as_who(Who::Stranger)?.cp.list_namespaces(all.clone()).await?.into_inner()).is_empty());
    let t2 = ListNamespacesRequest { tenant_id: "t2".into(), ..Default::default() };
    assert!(names(as_who(Who::TenantAdmin)?.cp.list_namespaces(t2).await?.into_inner()).is_empty());

    let tenants =
        |r: prism_proto::control::ListTenantsResponse| r.tenants.into_iter().map(|t| t.id).collect::<Vec<_>>();
    assert_eq!(
        tenants(as_who(Who::Admin)?.cp.list_tenants(ListTenantsRequest::default()).await?.into_inner()).len(),
        3
    );
    assert_eq!(
        tenants(as_who(Who::TenantAdmin)?.cp.list_tenants(ListTenantsRequest::default()).await?.into_inner()),
        ["t1"]
    );
    assert!(
        tenants(as_who(Who::Writer)?.cp.list_tenants(ListTenantsRequest::default()).await?.into_inner()).is_empty()
    );

    // A refusal is audited with who, what and on which tenant.
    let denied = as_who(Who::Stranger)?
        .cp
        .delete_tenant(DeleteTenantRequest { tenant_id: "t1".into(), expected_revision: 0 })
        .await;
    assert_eq!(denied.err().map(|s| s.code()), Some(Code::PermissionDenied));
    let mut ta = as_who(Who::TenantAdmin)?;
    // A tenant admin reads its own tenant's trail (by default), not another's.
    let events = ta.cp.list_audit_events(ListAuditEventsRequest::default()).await?.into_inner().events;
    // Named as the audit log names every principal: `tenant:sub`.
    let refusal =
        events.iter().find(|e| e.principal == "t1:stranger" && e.action == "DeleteTenant").context("audited")?;
    assert_eq!((refusal.tenant_id.as_str(), refusal.result.as_str()), ("t1", "permission_denied"));
    assert!(events.iter().all(|e| e.tenant_id == "t1"), "only t1's trail");
    let other = ta.cp.list_audit_events(ListAuditEventsRequest { tenant_id: "t2".into(), ..Default::default() }).await;
    assert_eq!(other.err().map(|s| s.code()), Some(Code::PermissionDenied));
    let mut reader = as_who(Who::Reader)?;
    let none = reader.cp.list_audit_events(ListAuditEventsRequest::default()).await;
    assert_eq!(none.err().map(|s| s.code()), Some(Code::PermissionDenied));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_sub_in_two_tenants_is_two_principals_and_cross_tenant_grants_are_audited() -> anyhow::Result<()> {
    let (cluster, world) = world(Entry::Owner).await?;
    let get = |c: &mut Clients| {
        let req = kv::GetItemsRequest { namespace: "t1/kv".into(), id: "r".into(), ..Default::default() };
        let mut kv = c.kv.clone();
        async move { kv.get_items(req).await.err().map_or(Code::Ok, |s| s.code()) }
    };
    let as_token = |t: String| world.clients("t1", Some(&format!("Bearer {t}")));

    // The owner grants `guest` of t2, by its full name, and `local` by a
    // bare name, which means t1's (or a global) `local` only.
    let mut owner = as_token(token("owner-t1", None, &[]))?;
    for (principal, level) in [("t2:guest", AccessLevel::Read), ("local", AccessLevel::Read)] {
        let req = GrantAccessRequest {
            name: "t1/kv".into(),
            principal: principal.into(),
            level: level as i32,
            expected_revision: 0,
        };
        owner.cp.grant_access(req).await?;
    }
    let revision = owner.cp.get_namespace(GetNamespaceRequest { name: "t1/kv".into() }).await?.into_inner().revision;
    for gw in &cluster.gateways {
        gw.caught_up(revision).await?;
    }

    for (sub, tenant, want) in [
        ("guest", Some("t2"), Code::Ok),
        ("guest", Some("t1"), Code::PermissionDenied),
        ("guest", Some("t3"), Code::PermissionDenied),
        ("guest", None, Code::PermissionDenied),
        ("local", Some("t1"), Code::Ok),
        ("local", None, Code::Ok),
        ("local", Some("t2"), Code::PermissionDenied),
        ("local", Some("t3"), Code::PermissionDenied),
    ] {
        let mut c = as_token(token(sub, tenant, &[]))?;
        assert_eq!(get(&mut c).await, want, "{sub} of {tenant:?}");
    }

    // The grant is in t1's audit trail, called out as cross-tenant; the
    // refusal of t3's `guest` names it fully.
    let mut admin = as_token(token("root", None, &[ADMIN_ROLE]))?;
    let trail = |action: &str| ListAuditEventsRequest {
        tenant_id: "t1".into(),
        target: "t1/kv".into(),
        action: action.into(),
        ..Default::default()
    };
    let grants = admin.cp.list_audit_events(trail("GrantAccess")).await?.into_inner().events;
    let cross = grants.iter().find(|e| e.detail.starts_with("granted t2:guest")).context("the grant is audited")?;
    assert_eq!((cross.principal.as_str(), cross.result.as_str()), ("owner-t1", "ok"));
    assert!(cross.detail.ends_with("cross-tenant: t2:guest"), "{}", cross.detail);
    let local = grants.iter().find(|e| e.detail.starts_with("granted local")).context("the bare grant is audited")?;
    assert!(!local.detail.contains("cross-tenant"), "{}", local.detail);
    let refused = prism_testkit::eventually(std::time::Duration::from_secs(10), || {
        let mut admin = admin.cp.clone();
        async move {
            let events = admin.list_audit_events(trail("GetItems")).await?.into_inner().events;
            events.into_iter().find(|e| e.principal == "t3:guest").context("refusal not audited yet")
        }
    })
    .await?;
    assert_eq!(refused.result, "permission_denied");
    Ok(())
}
