//! The control plane's admin API through its real gRPC server: refusals
//! (status code, the field named in `google.rpc.BadRequest`, nothing
//! written), tenant and namespace lifecycles, pagination, audit, health,
//! reflection and the RPCs that are not implemented yet.

mod common;

use std::fmt::Debug;
use std::future::Future;
use std::time::{Duration, SystemTime};

use common::{create_namespace, create_tenant, kv_spec, refused, revision, start};
use prism_client::ControlPlaneClient;
use prism_control_plane::assign;
use prism_proto::control::{
    Abstraction, AuditEvent, Backend, BackendConfig, CreateNamespaceRequest, CreateTenantRequest,
    DeleteNamespaceRequest, DeleteTenantRequest, GetNamespaceRequest, GetTenantRequest, GrantAccessRequest,
    KafkaConfig, ListAuditEventsRequest, ListNamespacesRequest, ListTenantsRequest, Namespace, NamespaceSpec,
    NamespaceStatus, Policies, PostgresConfig, QuotaProfile, QuotaSet, ReportNamespaceStatusRequest,
    ResolveNamespaceRequest, RevokeAccessRequest, SetTenantStateRequest, TenantState, UpdateNamespaceRequest,
    UpdateTenantRequest, backend_config::Config,
};
use tonic::{Code, Response, Status};
use tonic_types::StatusExt;

/// Awaits `call`, asserts it was refused with `code` (and `field`, for
/// INVALID_ARGUMENT), and that the control plane's revision did not move.
async fn refused_unwritten<T: Debug>(
    probe: &mut ControlPlaneClient,
    call: impl Future<Output = Result<Response<T>, Status>>,
    code: Code,
    field: Option<&str>,
) -> anyhow::Result<Status> {
    // The call is a lazy future: it runs only when awaited, after this read.
    let before = revision(probe).await?;
    let status = refused(call.await, code, field);
    let after = revision(probe).await?;
    assert_eq!(after, before, "a refused call wrote something: {status:?}");
    Ok(status)
}

fn invalid(field: &str) -> (Code, Option<&str>) {
    (Code::InvalidArgument, Some(field))
}

fn report(ns: &Namespace, shard: &str, status: NamespaceStatus, reason: &str) -> ReportNamespaceStatusRequest {
    ReportNamespaceStatusRequest {
        name: ns.name.clone(),
        shard_id: shard.into(),
        create_revision: ns.create_revision,
        status: status as i32,
        reason: reason.into(),
        ..Default::default()
    }
}

const SHARDS: [&str; 2] = ["shard-0", "shard-1"];

fn other_shard(shard: &str) -> &'static str {
    if shard == SHARDS[0] { SHARDS[1] } else { SHARDS[0] }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_its_field_and_writes_nothing() -> anyhow::Result<()> {
    let (_cp, mut probe) = start(&[]).await?;
    let mut c = probe.clone();
    create_tenant(&mut c, "acme").await?;
    let profiles = create_namespace(&mut c, "acme/profiles").await?;

    // Tenants.
    for bad_id in ["", "Acme", "a_b", "acme'; drop table tenants;--", &"a".repeat(64)] {
        let req = CreateTenantRequest { tenant_id: bad_id.into(), ..Default::default() };
        refused_unwritten(&mut probe, c.create_tenant(req), Code::InvalidArgument, Some("tenant_id")).await?;
    }
    let bad_tenants: [(CreateTenantRequest, &str); 4] = [
        (
            CreateTenantRequest {
                tenant_id: "t1".into(),
                quotas: Some(QuotaSet { requests_per_second: Some(-2), ..Default::default() }),
                ..Default::default()
            },
            "quotas.requests_per_second",
        ),
        (
            CreateTenantRequest {
                tenant_id: "t1".into(),
                quotas: Some(QuotaSet { profile: 99, ..Default::default() }),
                ..Default::default()
            },
            "quotas.profile",
        ),
        (
            CreateTenantRequest { tenant_id: "t1".into(), admins: vec!["a".into(), "a".into()], ..Default::default() },
            "admins[1]",
        ),
        (
            CreateTenantRequest { tenant_id: "t1".into(), display_name: "two\nlines".into(), ..Default::default() },
            "display_name",
        ),
    ];
    for (req, field) in bad_tenants {
        refused_unwritten(&mut probe, c.create_tenant(req), Code::InvalidArgument, Some(field)).await?;
    }
    let dup = CreateTenantRequest { tenant_id: "acme".into(), ..Default::default() };
    refused_unwritten(&mut probe, c.create_tenant(dup), Code::AlreadyExists, None).await?;
    let stale = UpdateTenantRequest { tenant_id: "acme".into(), expected_revision: 1_000, ..Default::default() };
    refused_unwritten(&mut probe, c.update_tenant(stale), Code::Aborted, None).await?;
    let bad_state =
        SetTenantStateRequest { tenant_id: "acme".into(), state: TenantState::Deleted as i32, ..Default::default() };
    refused_unwritten(&mut probe, c.set_tenant_state(bad_state), Code::InvalidArgument, Some("state")).await?;
    let stale = DeleteTenantRequest { tenant_id: "acme".into(), expected_revision: 1_000 };
    refused_unwritten(&mut probe, c.delete_tenant(stale), Code::Aborted, None).await?;
    let unknown = DeleteTenantRequest { tenant_id: "nobody".into(), expected_revision: 0 };
    refused_unwritten(&mut probe, c.delete_tenant(unknown), Code::NotFound, None).await?;
    refused(c.get_tenant(GetTenantRequest { tenant_id: "nobody".into() }).await, Code::NotFound, None);
    refused(
        c.get_tenant(GetTenantRequest { tenant_id: "No/Body".into() }).await,
        Code::InvalidArgument,
        Some("tenant_id"),
    );

    // Namespace names.
    for bad_name in ["Acme/x", "acme", "acme/a/b", "acme/x';drop", "acme/x' OR '1'='1", "", "acme/", "/x"] {
        let req = CreateNamespaceRequest { name: bad_name.into(), spec: Some(kv_spec()) };
        refused_unwritten(&mut probe, c.create_namespace(req), Code::InvalidArgument, Some("name")).await?;
        let get = GetNamespaceRequest { name: bad_name.into() };
        refused(c.get_namespace(get).await, Code::InvalidArgument, Some("name"));
    }

    // Namespace specs.
    let spec = |edit: fn(&mut prism_proto::control::NamespaceSpec)| {
        let mut s = kv_spec();
        edit(&mut s);
        Some(s)
    };
    let bad_specs = [
        (None, invalid("spec")),
        (spec(|s| s.backend = 99), invalid("spec.backend")),
        (spec(|s| s.backend = Backend::Unspecified as i32), invalid("spec.backend")),
        (spec(|s| s.abstraction = Abstraction::Unspecified as i32), invalid("spec.abstraction")),
        (
            spec(|s| {
                s.backend = Backend::Kafka as i32;
                s.backend_config = Some(Box::new(BackendConfig {
                    config: Some(Config::Kafka(prism_proto::control::KafkaConfig {
                        bootstrap_servers: vec!["broker:9092".into()],
                        ..Default::default()
                    })),
                }));
            }),
            invalid("spec.backend"),
        ),
        (
            spec(|s| s.quotas = Some(QuotaSet { requests_per_second: Some(-2), ..Default::default() })),
            invalid("spec.quotas.requests_per_second"),
        ),
        (
            spec(|s| s.quotas = Some(QuotaSet { storage_bytes: Some(i64::MIN), ..Default::default() })),
            invalid("spec.quotas.storage_bytes"),
        ),
        (
            spec(|s| {
                s.backend = Backend::Postgres as i32;
                s.backend_config =
                    Some(Box::new(BackendConfig { config: Some(Config::Postgres(PostgresConfig::default())) }));
            }),
            invalid("spec.backend_config.postgres.dsn"),
        ),
    ];
    for (spec, (code, field)) in bad_specs {
        let req = CreateNamespaceRequest { name: "acme/new".into(), spec };
        refused_unwritten(&mut probe, c.create_namespace(req), code, field).await?;
    }

    // Conflicts and unknown objects.
    let dup = CreateNamespaceRequest { name: "acme/profiles".into(), spec: Some(kv_spec()) };
    refused_unwritten(&mut probe, c.create_namespace(dup), Code::AlreadyExists, None).await?;
    let no_tenant = CreateNamespaceRequest { name: "nobody/x".into(), spec: Some(kv_spec()) };
    refused_unwritten(&mut probe, c.create_namespace(no_tenant), Code::NotFound, None).await?;
    let stale = UpdateNamespaceRequest {
        name: "acme/profiles".into(),
        spec: Some(kv_spec()),
        expected_revision: profiles.revision + 1_000,
    };
    refused_unwritten(&mut probe, c.update_namespace(stale), Code::Aborted, None).await?;
    let mut ts = kv_spec();
    ts.abstraction = Abstraction::TimeSeries as i32;
    let immutable = UpdateNamespaceRequest { name: "acme/profiles".into(), spec: Some(ts), expected_revision: 0 };
    refused_unwritten(&mut probe, c.update_namespace(immutable), Code::InvalidArgument, Some("spec.abstraction"))
        .await?;
    let stale = DeleteNamespaceRequest { name: "acme/profiles".into(), expected_revision: profiles.revision + 1 };
    refused_unwritten(&mut probe, c.delete_namespace(stale), Code::Aborted, None).await?;
    let unknown = DeleteNamespaceRequest { name: "acme/nope".into(), expected_revision: 0 };
    refused_unwritten(&mut probe, c.delete_namespace(unknown), Code::NotFound, None).await?;
    refused(c.get_namespace(GetNamespaceRequest { name: "acme/nope".into() }).await, Code::NotFound, None);

    // Grants.
    let grant = |principal: &str, level: i32| GrantAccessRequest {
        name: "acme/profiles".into(),
        principal: principal.into(),
        level,
        expected_revision: 0,
    };
    refused_unwritten(&mut probe, c.grant_access(grant("bad principal", 1)), Code::InvalidArgument, Some("principal"))
        .await?;
    refused_unwritten(&mut probe, c.grant_access(grant("bob", 0)), Code::InvalidArgument, Some("level")).await?;
    let revoke = RevokeAccessRequest { name: "acme/profiles".into(), principal: "bob".into(), expected_revision: 0 };
    refused_unwritten(&mut probe, c.revoke_access(revoke), Code::NotFound, None).await?;

    // Page tokens: forged, or of another listing.
    let tenants_token =
        c.list_tenants(ListTenantsRequest { page_size: 1, ..Default::default() }).await?.into_inner().next_page_token;
    // Only one tenant exists: no next page. Build a foreign token by
    // listing namespaces instead and using it for tenants.
    assert!(tenants_token.is_empty());
    create_namespace(&mut c, "acme/second").await?;
    let namespaces_token = c
        .list_namespaces(ListNamespacesRequest { page_size: 1, ..Default::default() })
        .await?
        .into_inner()
        .next_page_token;
    assert!(!namespaces_token.is_empty());
    for forged in ["forged", "n1zz", "n1", "t1616", &namespaces_token[..namespaces_token.len() - 1]] {
        let req = ListNamespacesRequest { page_token: forged.into(), ..Default::default() };
        refused(c.list_namespaces(req).await, Code::InvalidArgument, Some("page_token"));
    }
    for forged in ["forged", namespaces_token.as_str()] {
        let req = ListTenantsRequest { page_token: forged.into(), ..Default::default() };
        refused(c.list_tenants(req).await, Code::InvalidArgument, Some("page_token"));
        let req = ListAuditEventsRequest { page_token: forged.into(), ..Default::default() };
        refused(c.list_audit_events(req).await, Code::InvalidArgument, Some("page_token"));
    }
    let req = ListNamespacesRequest { tenant_id: "Acme".into(), ..Default::default() };
    refused(c.list_namespaces(req).await, Code::InvalidArgument, Some("tenant_id"));

    // Nothing the refusals attempted exists.
    let tenants =
        c.list_tenants(ListTenantsRequest { include_deleted: true, ..Default::default() }).await?.into_inner().tenants;
    assert_eq!(tenants.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(), ["acme"]);
    let namespaces = c
        .list_namespaces(ListNamespacesRequest { include_deleted: true, ..Default::default() })
        .await?
        .into_inner()
        .namespaces;
    assert_eq!(namespaces.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(), ["acme/profiles", "acme/second"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_namespaces_is_enforced_with_quota_failure() -> anyhow::Result<()> {
    let (_cp, mut probe) = start(&[]).await?;
    let mut c = probe.clone();
    let quotas = QuotaSet { profile: QuotaProfile::Custom as i32, max_namespaces: Some(2), ..Default::default() };
    let req = CreateTenantRequest { tenant_id: "small".into(), quotas: Some(quotas), ..Default::default() };
    let tenant = c.create_tenant(req).await?.into_inner();
    let q = tenant.quotas.expect("resolved quotas");
    assert_eq!(q.max_namespaces, Some(2));
    assert_eq!(q.requests_per_second, Some(-1), "unset fields of a custom profile are unlimited");

    create_namespace(&mut c, "small/a").await?;
    create_namespace(&mut c, "small/b").await?;
    let third = CreateNamespaceRequest { name: "small/c".into(), spec: Some(kv_spec()) };
    let status = refused_unwritten(&mut probe, c.create_namespace(third), Code::ResourceExhausted, None).await?;
    let failure = status.get_details_quota_failure().expect("QuotaFailure detail");
    assert_eq!(failure.violations.len(), 1, "{failure:?}");
    assert_eq!(failure.violations[0].subject, "tenant:small");
    assert!(failure.violations[0].description.contains("max_namespaces"), "{failure:?}");

    // A deleted namespace no longer counts (no shards: deleted at once).
    c.delete_namespace(DeleteNamespaceRequest { name: "small/a".into(), expected_revision: 0 }).await?;
    create_namespace(&mut c, "small/c").await?;

    // The free profile allows 5.
    let req = CreateTenantRequest {
        tenant_id: "free".into(),
        quotas: Some(QuotaSet { profile: QuotaProfile::Free as i32, ..Default::default() }),
        ..Default::default()
    };
    c.create_tenant(req).await?;
    for i in 0..5 {
        create_namespace(&mut c, &format!("free/ns-{i}")).await?;
    }
    let sixth = CreateNamespaceRequest { name: "free/ns-5".into(), spec: Some(kv_spec()) };
    refused_unwritten(&mut probe, c.create_namespace(sixth), Code::ResourceExhausted, None).await?;
    Ok(())
}

/// A namespace spec asking for more partitions or a longer retention than
/// its tenant's (or its own) quota allows is refused with QuotaFailure
/// naming the field, on create and on update; a TimeSeries namespace that
/// asks for no retention gets the tenant's longest instead of forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_and_retention_are_capped_by_quotas() -> anyhow::Result<()> {
    let (_cp, mut probe) = start(&[]).await?;
    let mut c = probe.clone();
    let quotas = QuotaSet {
        profile: QuotaProfile::Custom as i32,
        max_partitions: Some(4),
        max_retention_seconds: Some(86_400),
        ..Default::default()
    };
    c.create_tenant(CreateTenantRequest { tenant_id: "capped".into(), quotas: Some(quotas), ..Default::default() })
        .await?;
    let kafka = |partitions: u32, retention: Option<i64>| NamespaceSpec {
        abstraction: Abstraction::TimeSeries as i32,
        backend: Backend::Kafka as i32,
        backend_config: Some(Box::new(BackendConfig {
            config: Some(Config::Kafka(KafkaConfig {
                bootstrap_servers: vec!["broker:9092".into()],
                partitions,
                replication_factor: 0,
            })),
        })),
        policies: retention.map(|seconds| {
            Box::new(Policies { retention: Some(prost_types::Duration { seconds, nanos: 0 }), ..Default::default() })
        }),
        ..Default::default()
    };
    let violation = |status: &Status| {
        let failure = status.get_details_quota_failure().expect("QuotaFailure detail");
        let v = failure.violations.first().expect("a violation").clone();
        (v.subject, v.description)
    };

    let wide = CreateNamespaceRequest { name: "capped/wide".into(), spec: Some(kafka(8, Some(3600))) };
    let status = refused_unwritten(&mut probe, c.create_namespace(wide), Code::ResourceExhausted, None).await?;
    let (subject, description) = violation(&status);
    assert_eq!(subject, "tenant:capped");
    assert!(description.contains("spec.backend_config.kafka.partitions"), "{description}");
    assert!(description.contains("max_partitions"), "{description}");

    let long = CreateNamespaceRequest { name: "capped/long".into(), spec: Some(kafka(4, Some(2 * 86_400))) };
    let status = refused_unwritten(&mut probe, c.create_namespace(long), Code::ResourceExhausted, None).await?;
    let (subject, description) = violation(&status);
    assert_eq!(subject, "tenant:capped");
    assert!(description.contains("spec.policies.retention"), "{description}");

    // Within the quotas: created. Without a retention: the tenant's
    // longest, not forever.
    let ok = c
        .create_namespace(CreateNamespaceRequest { name: "capped/ok".into(), spec: Some(kafka(4, None)) })
        .await?
        .into_inner();
    let kept = ok.spec.as_ref().and_then(|s| s.policies.as_ref()).and_then(|p| p.retention.as_ref());
    assert_eq!(kept.map(|d| d.seconds), Some(86_400));

    // An update is held to them too.
    let update = |spec| UpdateNamespaceRequest { name: "capped/ok".into(), spec: Some(spec), expected_revision: 0 };
    let status =
        refused_unwritten(&mut probe, c.update_namespace(update(kafka(16, None))), Code::ResourceExhausted, None)
            .await?;
    assert!(violation(&status).1.contains("spec.backend_config.kafka.partitions"));
    c.update_namespace(update(kafka(4, Some(3600)))).await?;
    // Within them, another partition count is still refused: a series'
    // partition depends on it (`prism_proto::backends::kafka::PARTITIONS`).
    let partitions = Some("spec.backend_config.kafka.partitions");
    refused_unwritten(&mut probe, c.update_namespace(update(kafka(2, Some(3600)))), Code::InvalidArgument, partitions)
        .await?;

    // A namespace's own quota caps it as well.
    let mut own = kafka(4, Some(7200));
    own.quotas = Some(QuotaSet { max_retention_seconds: Some(3600), ..Default::default() });
    let status = refused_unwritten(
        &mut probe,
        c.create_namespace(CreateNamespaceRequest { name: "capped/own".into(), spec: Some(own) }),
        Code::ResourceExhausted,
        None,
    )
    .await?;
    assert_eq!(violation(&status).0, "namespace:capped/own");

    // Zero is no retention limit at all: refused as a quota value.
    let zero = QuotaSet { max_retention_seconds: Some(0), ..Default::default() };
    let req = CreateTenantRequest { tenant_id: "zero".into(), quotas: Some(zero), ..Default::default() };
    refused(c.create_tenant(req).await, Code::InvalidArgument, Some("quotas.max_retention_seconds"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_lifecycle_follows_its_owning_shard() -> anyhow::Result<()> {
    let (_cp, mut c) = start(&SHARDS).await?;
    create_tenant(&mut c, "acme").await?;
    let ns = create_namespace(&mut c, "acme/profiles").await?;
    assert_eq!(ns.status, NamespaceStatus::Provisioning as i32);
    assert_eq!(Some(ns.shard_id.as_str()), assign::rendezvous("acme/profiles", SHARDS));
    assert_eq!(ns.create_revision, ns.revision);
    assert!(ns.status_reason.contains(&ns.shard_id), "{}", ns.status_reason);
    let owner = ns.shard_id.clone();
    let q = ns.spec.as_ref().and_then(|s| s.quotas.as_ref()).expect("stored spec has resolved quotas");
    assert_eq!(q.requests_per_second, Some(-1));

    // Only the owner may report.
    let wrong = report(&ns, other_shard(&owner), NamespaceStatus::Active, "");
    refused(c.report_namespace_status(wrong).await, Code::FailedPrecondition, None);
    let bad = report(&ns, &owner, NamespaceStatus::Provisioning, "");
    refused(c.report_namespace_status(bad).await, Code::InvalidArgument, Some("status"));
    let bad = report(&ns, "Shard 0", NamespaceStatus::Active, "");
    refused(c.report_namespace_status(bad).await, Code::InvalidArgument, Some("shard_id"));
    // DELETED is only for a namespace being deleted.
    let early = report(&ns, &owner, NamespaceStatus::Deleted, "");
    refused(c.report_namespace_status(early).await, Code::FailedPrecondition, None);

    let active = c.report_namespace_status(report(&ns, &owner, NamespaceStatus::Active, "")).await?.into_inner();
    assert_eq!(active.status, NamespaceStatus::Active as i32);
    assert_eq!(active.revision, ns.revision + 1);
    assert_eq!(active.create_revision, ns.create_revision);

    let degraded = c
        .report_namespace_status(report(&ns, &owner, NamespaceStatus::Degraded, "backend unreachable"))
        .await?
        .into_inner();
    assert_eq!(degraded.status, NamespaceStatus::Degraded as i32);
    assert_eq!(degraded.status_reason, "backend unreachable");
    let fetched = c.get_namespace(GetNamespaceRequest { name: "acme/profiles".into() }).await?.into_inner();
    assert_eq!(fetched, degraded);

    // Deletion waits for the owner.
    let deleting = c
        .delete_namespace(DeleteNamespaceRequest { name: "acme/profiles".into(), expected_revision: degraded.revision })
        .await?
        .into_inner();
    assert_eq!(deleting.status, NamespaceStatus::Deleting as i32);
    assert!(deleting.status_reason.contains(&owner), "{}", deleting.status_reason);
    // A namespace being deleted takes no updates, grants, second deletes
    // or provisioning reports.
    let update = UpdateNamespaceRequest { name: "acme/profiles".into(), spec: Some(kv_spec()), expected_revision: 0 };
    refused(c.update_namespace(update).await, Code::FailedPrecondition, None);
    let again = DeleteNamespaceRequest { name: "acme/profiles".into(), expected_revision: 0 };
    refused(c.delete_namespace(again).await, Code::FailedPrecondition, None);
    let late = report(&ns, &owner, NamespaceStatus::Active, "");
    refused(c.report_namespace_status(late).await, Code::FailedPrecondition, None);
    let wrong = report(&ns, other_shard(&owner), NamespaceStatus::Deleted, "");
    refused(c.report_namespace_status(wrong).await, Code::FailedPrecondition, None);

    let deleted = c.report_namespace_status(report(&ns, &owner, NamespaceStatus::Deleted, "")).await?.into_inner();
    assert_eq!(deleted.status, NamespaceStatus::Deleted as i32);
    // A tombstone: listed only with include_deleted, and NOT_FOUND for changes.
    let live = c.list_namespaces(ListNamespacesRequest::default()).await?.into_inner().namespaces;
    assert!(live.is_empty(), "{live:?}");
    let all = c
        .list_namespaces(ListNamespacesRequest { include_deleted: true, ..Default::default() })
        .await?
        .into_inner()
        .namespaces;
    assert_eq!(all, [deleted]);
    let again = DeleteNamespaceRequest { name: "acme/profiles".into(), expected_revision: 0 };
    refused(c.delete_namespace(again).await, Code::NotFound, None);
    let twice = report(&ns, &owner, NamespaceStatus::Deleted, "");
    refused(c.report_namespace_status(twice).await, Code::FailedPrecondition, None);

    // Re-created: a new incarnation, and reports about the old one are stale.
    let reborn = create_namespace(&mut c, "acme/profiles").await?;
    assert_eq!(reborn.status, NamespaceStatus::Provisioning as i32);
    assert!(reborn.create_revision > ns.create_revision, "{} vs {}", reborn.create_revision, ns.create_revision);
    assert_eq!(reborn.create_revision, reborn.revision);
    assert_eq!(reborn.shard_id, owner, "assignment is a function of the name");
    let stale = report(&ns, &owner, NamespaceStatus::Active, "");
    refused(c.report_namespace_status(stale).await, Code::Aborted, None);
    let fresh = c.report_namespace_status(report(&reborn, &owner, NamespaceStatus::Active, "")).await?.into_inner();
    assert_eq!(fresh.status, NamespaceStatus::Active as i32);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_namespaces_go_to_their_shard() -> anyhow::Result<()> {
    let (_cp, mut c) = start(&SHARDS).await?;
    create_tenant(&mut c, "acme").await?;
    let mut spec = kv_spec();
    // Pin to the shard the hash would not choose.
    let hashed = assign::rendezvous("acme/pinned", SHARDS).expect("shards");
    let pin = other_shard(hashed);
    spec.placement = Some(Box::new(prism_proto::control::Placement { pinned_shard: pin.into(), ..Default::default() }));
    let ns = c
        .create_namespace(CreateNamespaceRequest { name: "acme/pinned".into(), spec: Some(spec.clone()) })
        .await?
        .into_inner();
    assert_eq!(ns.shard_id, pin);
    spec.placement =
        Some(Box::new(prism_proto::control::Placement { pinned_shard: "shard-7".into(), ..Default::default() }));
    let req = CreateNamespaceRequest { name: "acme/nowhere".into(), spec: Some(spec) };
    refused(c.create_namespace(req).await, Code::InvalidArgument, Some("spec.placement.pinned_shard"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_shards_namespaces_wait_and_are_deleted_at_once() -> anyhow::Result<()> {
    let (_cp, mut c) = start(&[]).await?;
    create_tenant(&mut c, "acme").await?;
    let ns = create_namespace(&mut c, "acme/orphan").await?;
    assert_eq!(ns.shard_id, "");
    assert_eq!(ns.status, NamespaceStatus::Provisioning as i32);
    assert!(ns.status_reason.contains("no shard"), "{}", ns.status_reason);
    let deleted = c
        .delete_namespace(DeleteNamespaceRequest { name: "acme/orphan".into(), expected_revision: 0 })
        .await?
        .into_inner();
    assert_eq!(deleted.status, NamespaceStatus::Deleted as i32);
    assert_eq!(deleted.revision, ns.revision + 1);

    // A tenant whose namespaces no shard owns is erased in one step.
    create_namespace(&mut c, "acme/a").await?;
    create_namespace(&mut c, "acme/b").await?;
    let tenant = c.delete_tenant(DeleteTenantRequest { tenant_id: "acme".into(), expected_revision: 0 }).await?;
    assert_eq!(tenant.into_inner().state, TenantState::Deleted as i32);
    let all = c
        .list_namespaces(ListNamespacesRequest { include_deleted: true, ..Default::default() })
        .await?
        .into_inner()
        .namespaces;
    assert_eq!(all.len(), 3);
    assert!(all.iter().all(|n| n.status == NamespaceStatus::Deleted as i32), "{all:?}");
    refused(c.get_tenant(GetTenantRequest { tenant_id: "nobody".into() }).await, Code::NotFound, None);
    // The tombstone is readable, and hidden from plain listings.
    let t = c.get_tenant(GetTenantRequest { tenant_id: "acme".into() }).await?.into_inner();
    assert_eq!(t.state, TenantState::Deleted as i32);
    assert!(c.list_tenants(ListTenantsRequest::default()).await?.into_inner().tenants.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_deletion_cascades_until_the_last_namespace_is_gone() -> anyhow::Result<()> {
    let (_cp, mut c) = start(&SHARDS).await?;
    create_tenant(&mut c, "globex").await?;
    create_tenant(&mut c, "bystander").await?;
    let a = create_namespace(&mut c, "globex/a").await?;
    let b = create_namespace(&mut c, "globex/b").await?;
    let other = create_namespace(&mut c, "bystander/x").await?;
    c.report_namespace_status(report(&a, &a.shard_id, NamespaceStatus::Active, "")).await?;

    let tenant = c.delete_tenant(DeleteTenantRequest { tenant_id: "globex".into(), expected_revision: 0 }).await?;
    let tenant = tenant.into_inner();
    assert_eq!(tenant.state, TenantState::Deleting as i32);
    assert_eq!(tenant.state_reason, "deleted by anonymous");
    for name in ["globex/a", "globex/b"] {
        let ns = c.get_namespace(GetNamespaceRequest { name: name.into() }).await?.into_inner();
        assert_eq!(ns.status, NamespaceStatus::Deleting as i32, "{name}");
        assert_eq!(ns.revision, tenant.revision, "one commit marks the tenant and its namespaces");
    }
    let untouched = c.get_namespace(GetNamespaceRequest { name: "bystander/x".into() }).await?.into_inner();
    assert_eq!(untouched, other);

    // A tenant being deleted takes no new namespaces and no state changes.
    let req = CreateNamespaceRequest { name: "globex/c".into(), spec: Some(kv_spec()) };
    refused(c.create_namespace(req).await, Code::FailedPrecondition, None);
    let suspend = SetTenantStateRequest {
        tenant_id: "globex".into(),
        state: TenantState::Suspended as i32,
        ..Default::default()
    };
    refused(c.set_tenant_state(suspend).await, Code::FailedPrecondition, None);
    let again = DeleteTenantRequest { tenant_id: "globex".into(), expected_revision: 0 };
    refused(c.delete_tenant(again).await, Code::FailedPrecondition, None);

    c.report_namespace_status(report(&a, &a.shard_id, NamespaceStatus::Deleted, "")).await?;
    let t = c.get_tenant(GetTenantRequest { tenant_id: "globex".into() }).await?.into_inner();
    assert_eq!(t.state, TenantState::Deleting as i32, "one namespace is still pending");

    let last = c.report_namespace_status(report(&b, &b.shard_id, NamespaceStatus::Deleted, "")).await?.into_inner();
    let t = c.get_tenant(GetTenantRequest { tenant_id: "globex".into() }).await?.into_inner();
    assert_eq!(t.state, TenantState::Deleted as i32);
    assert_eq!(t.revision, last.revision, "the last report and the tenant's erasure are one commit");
    let live = c.list_tenants(ListTenantsRequest::default()).await?.into_inner().tenants;
    assert_eq!(live.iter().map(|t| t.id.as_str()).collect::<Vec<_>>(), ["bystander"]);

    // The id can be used again.
    let reborn = create_tenant(&mut c, "globex").await?;
    assert_eq!(reborn.state, TenantState::Active as i32);
    let ns = create_namespace(&mut c, "globex/a").await?;
    assert!(ns.create_revision > a.create_revision);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspended_tenants_refuse_new_namespaces() -> anyhow::Result<()> {
    let (_cp, mut c) = start(&SHARDS).await?;
    let t = create_tenant(&mut c, "acme").await?;
    let suspend = SetTenantStateRequest {
        tenant_id: "acme".into(),
        state: TenantState::Suspended as i32,
        reason: "unpaid invoice".into(),
        expected_revision: t.revision,
    };
    let suspended = c.set_tenant_state(suspend).await?.into_inner();
    assert_eq!(suspended.state, TenantState::Suspended as i32);
    assert_eq!(suspended.state_reason, "unpaid invoice");
    let req = CreateNamespaceRequest { name: "acme/x".into(), spec: Some(kv_spec()) };
    refused(c.create_namespace(req).await, Code::FailedPrecondition, None);

    let activate = SetTenantStateRequest {
        tenant_id: "acme".into(),
        state: TenantState::Active as i32,
        reason: "paid".into(),
        expected_revision: 0,
    };
    assert_eq!(c.set_tenant_state(activate).await?.into_inner().state, TenantState::Active as i32);
    create_namespace(&mut c, "acme/x").await?;

    // Updates replace the display name and admins and keep the state.
    let update = UpdateTenantRequest {
        tenant_id: "acme".into(),
        display_name: "Acme Corp".into(),
        admins: vec!["alice".into()],
        quotas: Some(QuotaSet { profile: QuotaProfile::Pro as i32, ..Default::default() }),
        expected_revision: 0,
    };
    let updated = c.update_tenant(update).await?.into_inner();
    assert_eq!((updated.display_name.as_str(), updated.admins.as_slice()), ("Acme Corp", &["alice".to_owned()][..]));
    assert_eq!(updated.quotas.and_then(|q| q.max_namespaces), Some(100));
    assert_eq!(updated.state, TenantState::Active as i32);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_replace_and_revoke() -> anyhow::Result<()> {
    let (_cp, mut c) = start(&[]).await?;
    create_tenant(&mut c, "acme").await?;
    let ns = create_namespace(&mut c, "acme/x").await?;
    let grant = |principal: &str, level: i32, expected_revision: u64| GrantAccessRequest {
        name: "acme/x".into(),
        principal: principal.into(),
        level,
        expected_revision,
    };
    let g = c.grant_access(grant("bob", 1, ns.revision)).await?.into_inner();
    refused(c.grant_access(grant("carol", 1, ns.revision)).await, Code::Aborted, None);
    let g = c.grant_access(grant("bob", 2, g.revision)).await?.into_inner();
    let consumers = g.spec.and_then(|s| s.access).map(|a| a.consumers).unwrap_or_default();
    assert_eq!(consumers.len(), 1, "a second grant replaces the first");
    assert_eq!(consumers[0].level, 2);
    let r = c
        .revoke_access(RevokeAccessRequest { name: "acme/x".into(), principal: "bob".into(), expected_revision: 0 })
        .await?
        .into_inner();
    assert!(r.spec.and_then(|s| s.access).map(|a| a.consumers).unwrap_or_default().is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_paginate_in_order() -> anyhow::Result<()> {
    let (_cp, mut c) = start(&[]).await?;
    for t in ["pag", "other", "zeta"] {
        create_tenant(&mut c, t).await?;
    }
    // 250 namespaces of one tenant, created by 4 concurrent clients.
    let names: Vec<String> = (0..250).map(|i| format!("pag/ns-{i:03}")).collect();
    let mut writers = Vec::new();
    for part in names.chunks(63) {
        let (mut c, part) = (c.clone(), part.to_vec());
        writers.push(tokio::spawn(async move {
            for name in part {
                create_namespace(&mut c, &name).await?;
            }
            anyhow::Ok(())
        }));
    }
    for w in writers {
        w.await??;
    }
    for name in ["other/a", "other/b", "zeta/a"] {
        create_namespace(&mut c, name).await?;
    }

    let lister = c.clone();
    let list = |tenant: &str, page_size: u32| {
        let (mut c, tenant) = (lister.clone(), tenant.to_owned());
        async move {
            let mut pages = Vec::new();
            let mut token = String::new();
            loop {
                let req = ListNamespacesRequest {
                    tenant_id: tenant.clone(),
                    page_size,
                    page_token: token.clone(),
                    include_deleted: false,
                };
                let page = c.list_namespaces(req).await?.into_inner();
                pages.push(page.namespaces.iter().map(|n| n.name.clone()).collect::<Vec<_>>());
                if page.next_page_token.is_empty() {
                    return anyhow::Ok(pages);
                }
                anyhow::ensure!(pages.len() < 100, "pagination does not end");
                token = page.next_page_token;
            }
        }
    };
    let pages = list("pag", 100).await?;
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [100, 100, 50]);
    assert_eq!(pages.concat(), names, "every name once, in order");

    let pages = list("other", 100).await?;
    assert_eq!(pages, [vec!["other/a".to_owned(), "other/b".to_owned()]]);
    let mut everything = names.clone();
    everything.extend(["other/a", "other/b", "zeta/a"].map(String::from));
    everything.sort();
    let pages = list("", 100).await?;
    assert_eq!(pages.len(), 3);
    assert_eq!(pages.concat(), everything);
    // page_size 0 is the default (100); above 1000 is capped.
    assert_eq!(list("", 0).await?.len(), 3);
    assert_eq!(list("", 5_000).await?, [everything.clone()]);

    // Tombstones are skipped without shortening pages.
    for i in 0..10 {
        let req = DeleteNamespaceRequest { name: format!("pag/ns-{i:03}"), expected_revision: 0 };
        c.delete_namespace(req).await?;
    }
    let pages = list("pag", 100).await?;
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [100, 100, 40]);
    assert_eq!(pages.concat(), names[10..]);

    // Tenants too.
    let mut ids = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .list_tenants(ListTenantsRequest { page_size: 2, page_token: token, include_deleted: false })
            .await?
            .into_inner();
        assert!(page.tenants.len() <= 2);
        ids.extend(page.tenants.into_iter().map(|t| t.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(ids, ["other", "pag", "zeta"]);
    Ok(())
}

fn summary(e: &AuditEvent) -> (&str, &str, &str, &str) {
    (e.action.as_str(), e.tenant_id.as_str(), e.target.as_str(), e.result.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_records_every_mutation_and_refusal_newest_first() -> anyhow::Result<()> {
    let (_cp, mut c) = start(&[]).await?;
    let started = SystemTime::now();
    create_tenant(&mut c, "acme").await?;
    let _ = c.create_tenant(CreateTenantRequest { tenant_id: "Bad".into(), ..Default::default() }).await;
    let ns = create_namespace(&mut c, "acme/a").await?;
    let _ = create_namespace(&mut c, "acme/a").await;
    let stale = UpdateNamespaceRequest { name: "acme/a".into(), spec: Some(kv_spec()), expected_revision: 999 };
    let _ = c.update_namespace(stale).await;
    let grant = GrantAccessRequest { name: "acme/a".into(), principal: "bob".into(), level: 1, expected_revision: 0 };
    c.grant_access(grant).await?;
    let _ = c.delete_namespace(DeleteNamespaceRequest { name: "acme/nope".into(), expected_revision: 0 }).await;
    let suspend =
        SetTenantStateRequest { tenant_id: "acme".into(), state: TenantState::Suspended as i32, ..Default::default() };
    c.set_tenant_state(suspend).await?;
    c.delete_namespace(DeleteNamespaceRequest { name: "acme/a".into(), expected_revision: 0 }).await?;
    // Reads are not audited.
    c.get_namespace(GetNamespaceRequest { name: "acme/a".into() }).await?;
    let _ = c.get_namespace(GetNamespaceRequest { name: "acme/zzz".into() }).await;

    let events = c.list_audit_events(ListAuditEventsRequest::default()).await?.into_inner();
    assert!(events.next_page_token.is_empty());
    let events = events.events;
    let expected = [
        ("DeleteNamespace", "acme", "acme/a", "ok"),
        ("SuspendTenant", "acme", "acme", "ok"),
        ("DeleteNamespace", "acme", "acme/nope", "not_found"),
        ("GrantAccess", "acme", "acme/a", "ok"),
        ("UpdateNamespace", "acme", "acme/a", "aborted"),
        ("CreateNamespace", "acme", "acme/a", "already_exists"),
        ("CreateNamespace", "acme", "acme/a", "ok"),
        ("CreateTenant", "", "Bad", "invalid_argument"),
        ("CreateTenant", "acme", "acme", "ok"),
    ];
    assert_eq!(events.iter().map(summary).collect::<Vec<_>>(), expected);
    let sequences: Vec<u64> = events.iter().map(|e| e.sequence).collect();
    assert_eq!(sequences, (1..=9).rev().collect::<Vec<_>>(), "newest first, one sequence per event");
    let mut last_revision = u64::MAX;
    for e in &events {
        assert_eq!(e.principal, "anonymous");
        let time = e.time.expect("every event has a time");
        let time = SystemTime::try_from(time)?;
        assert!(time + Duration::from_secs(1) >= started && time <= SystemTime::now() + Duration::from_secs(1));
        if e.result == "ok" {
            assert!(e.revision > 0 && e.revision < last_revision, "{e:?}");
            last_revision = e.revision;
        } else {
            assert_eq!(e.revision, 0, "a refusal commits nothing: {e:?}");
            assert!(!e.detail.is_empty(), "a refusal says why: {e:?}");
        }
    }
    assert_eq!(events[6].revision, ns.revision, "the create's event names its commit");

    // Filters.
    let list = |req: ListAuditEventsRequest| {
        let mut c = c.clone();
        async move { anyhow::Ok(c.list_audit_events(req).await?.into_inner().events) }
    };
    let by_action = list(ListAuditEventsRequest { action: "CreateNamespace".into(), ..Default::default() }).await?;
    assert_eq!(by_action.iter().map(summary).collect::<Vec<_>>(), expected[5..7]);
    let by_target = list(ListAuditEventsRequest { target: "acme/nope".into(), ..Default::default() }).await?;
    assert_eq!(by_target.iter().map(summary).collect::<Vec<_>>(), expected[2..3]);
    let by_tenant = list(ListAuditEventsRequest { tenant_id: "acme".into(), ..Default::default() }).await?;
    assert_eq!(by_tenant.len(), 8);
    let combined = ListAuditEventsRequest {
        tenant_id: "acme".into(),
        target: "acme/a".into(),
        action: "DeleteNamespace".into(),
        ..Default::default()
    };
    assert_eq!(list(combined).await?.iter().map(summary).collect::<Vec<_>>(), expected[0..1]);
    let by_principal = list(ListAuditEventsRequest { principal: "anonymous".into(), ..Default::default() }).await?;
    assert_eq!(by_principal.len(), 9);
    assert!(list(ListAuditEventsRequest { principal: "mallory".into(), ..Default::default() }).await?.is_empty());
    let future = SystemTime::now() + Duration::from_secs(3600);
    assert!(list(ListAuditEventsRequest { since: Some(future.into()), ..Default::default() }).await?.is_empty());
    let past = started - Duration::from_secs(60);
    assert_eq!(list(ListAuditEventsRequest { since: Some(past.into()), ..Default::default() }).await?.len(), 9);

    // Pages of 4: the same events, in the same order.
    let mut paged = Vec::new();
    let mut token = String::new();
    loop {
        let req = ListAuditEventsRequest { page_size: 4, page_token: token, ..Default::default() };
        let page = c.list_audit_events(req).await?.into_inner();
        assert!(page.events.len() <= 4);
        paged.extend(page.events);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(paged, events);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_health_and_reflection() -> anyhow::Result<()> {
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };

    let (cp, _) = start(&[]).await?;
    let channel = prism_client::endpoint(&cp.endpoint())?.connect().await?;
    let mut health = HealthClient::new(channel.clone());
    for service in ["", "prism.control.v1.ControlPlaneService"] {
        let status = health.check(HealthCheckRequest { service: service.into() }).await?.into_inner().status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }
    let unknown = health.check(HealthCheckRequest { service: "no.such.Service".into() }).await;
    refused(unknown, Code::NotFound, None);

    let mut reflection = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection.server_reflection_info(tokio_stream::iter([req])).await?.into_inner();
    let response = responses.message().await?.expect("one response");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        anyhow::bail!("unexpected reflection response {response:?}");
    };
    // Exactly what this server answers: not the gateway's data services.
    let mut services: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    services.sort_unstable();
    assert_eq!(
        services,
        [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
            "prism.control.v1.ControlPlaneService"
        ]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_answers_the_owning_shard_and_its_endpoints() -> anyhow::Result<()> {
    let mut config = prism_control_plane::ControlPlaneConfig {
        shards: SHARDS.iter().map(|s| (*s).to_owned()).collect(),
        ..Default::default()
    };
    config.shard_endpoints.insert("shard-0".into(), vec!["127.0.0.1:7401".into()]);
    config.shard_endpoints.insert("shard-1".into(), vec!["127.0.0.1:7402".into()]);
    let (_cp, mut c) = common::start_with(config).await?;
    create_tenant(&mut c, "acme").await?;
    let ns = create_namespace(&mut c, "acme/x").await?;
    let r = c.resolve_namespace(ResolveNamespaceRequest { namespace: "acme/x".into() }).await?.into_inner();
    assert_eq!(r.shard_id, ns.shard_id);
    let want = if ns.shard_id == "shard-0" { "127.0.0.1:7401" } else { "127.0.0.1:7402" };
    assert_eq!(r.endpoints, [want]);
    assert!(r.revision >= ns.revision);
    refused(c.resolve_namespace(ResolveNamespaceRequest { namespace: "acme/nope".into() }).await, Code::NotFound, None);
    let bad = c.resolve_namespace(ResolveNamespaceRequest { namespace: "Acme".into() }).await;
    refused(bad, Code::InvalidArgument, Some("namespace"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_secret_every_call_needs_a_valid_token_and_audit_names_the_caller() -> anyhow::Result<()> {
    const SECRET: &str = "control-plane-test-secret-0123456789";
    let mut config = prism_control_plane::ControlPlaneConfig::default();
    config.auth.hs256_secret = Some(SECRET.into());
    let cp = prism_testkit::ControlPlaneHandle::start_with(config).await?;

    let mut anonymous = prism_client::control_plane(&cp.endpoint(), None).await?;
    let e = anonymous.list_tenants(ListTenantsRequest::default()).await.expect_err("no token");
    assert_eq!(e.code(), Code::Unauthenticated);
    let forged = prism_auth::mint_hs256("another-secret-of-16-bytes", "mallory", None, &["admin"], 60)?;
    let mut mallory = prism_client::control_plane(&cp.endpoint(), Some(&forged)).await?;
    let e = mallory.create_tenant(CreateTenantRequest { tenant_id: "evil".into(), ..Default::default() }).await;
    assert_eq!(e.expect_err("forged token").code(), Code::Unauthenticated);

    let token = prism_auth::mint_hs256(SECRET, "alice", None, &["admin"], 60)?;
    let mut alice = prism_client::control_plane(&cp.endpoint(), Some(&token)).await?;
    alice.create_tenant(CreateTenantRequest { tenant_id: "acme".into(), ..Default::default() }).await?;
    let events = alice.list_audit_events(ListAuditEventsRequest::default()).await?.into_inner().events;
    assert_eq!(events.len(), 1, "refused calls without a principal commit and audit nothing here");
    assert_eq!((events[0].principal.as_str(), events[0].action.as_str()), ("alice", "CreateTenant"));
    Ok(())
}

/// Runs `n` creates of `name(i)` at once in tenant `tenant` (each on its
/// own task, over one HTTP/2 connection) and returns what each got.
async fn create_at_once(
    c: &ControlPlaneClient,
    n: usize,
    name: impl Fn(usize) -> String,
) -> anyhow::Result<Vec<Result<Namespace, Status>>> {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let (mut c, name) = (c.clone(), name(i));
        tasks.spawn(async move {
            let req = CreateNamespaceRequest { name, spec: Some(kv_spec()) };
            c.create_namespace(req).await.map(Response::into_inner)
        });
    }
    Ok(tasks.join_all().await)
}

/// Group commit at the API: 64 concurrent creates in one tenant (with a
/// quota, whose check once made them conflict until they gave up with
/// ABORTED) all succeed; a quota's last places and a contested name each
/// have exactly the winners they allow and the losers get the refusal a
/// lone create gets; and a watcher sees every commit once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_in_one_tenant_all_succeed_and_races_resolve_as_before() -> anyhow::Result<()> {
    // No shards: a deleted namespace is DELETED at once (frees its place).
    let (_cp, mut c) = start(&[]).await?;
    let quota = |n| QuotaSet { profile: QuotaProfile::Custom as i32, max_namespaces: Some(n), ..Default::default() };
    for (id, limit) in [("busy", 1000), ("tight", 10)] {
        let req = CreateTenantRequest { tenant_id: id.into(), quotas: Some(quota(limit)), ..Default::default() };
        c.create_tenant(req).await?;
    }
    create_tenant(&mut c, "open").await?;
    let from = revision(&mut c).await?;
    let mut watch = c.watch(prism_proto::control::WatchRequest { from_revision: from }).await?.into_inner();

    let busy = create_at_once(&c, 64, |i| format!("busy/ns-{i:02}")).await?;
    let refusals: Vec<&Status> = busy.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(refusals.is_empty(), "every create in one tenant succeeds: {refusals:?}");

    let tight = create_at_once(&c, 64, |i| format!("tight/ns-{i:02}")).await?;
    let won = tight.iter().filter(|r| r.is_ok()).count();
    assert_eq!(won, 10, "exactly the quota's places are taken");
    for lost in tight.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(lost.code(), Code::ResourceExhausted, "{lost:?}");
        let failure = lost.get_details_quota_failure().expect("QuotaFailure detail");
        assert_eq!(failure.violations[0].subject, "tenant:tight");
        assert!(
            failure.violations[0].description.contains("max_namespaces is 10 and the tenant has 10"),
            "{failure:?}"
        );
    }

    let same = create_at_once(&c, 64, |_| "open/contested".to_owned()).await?;
    assert_eq!(same.iter().filter(|r| r.is_ok()).count(), 1, "one create of a name wins");
    for lost in same.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(lost.code(), Code::AlreadyExists, "{lost:?}");
    }

    // Every acknowledged create has its own revision, and the watcher
    // sees exactly those commits, once each, in order, with no gap.
    let mut created: Vec<(u64, String)> = busy
        .iter()
        .chain(&tight)
        .chain(&same)
        .filter_map(|r| r.as_ref().ok())
        .map(|n| (n.revision, n.name.clone()))
        .collect();
    created.sort();
    let to = revision(&mut c).await?;
    assert_eq!(created.len() as u64, to - from, "{created:?}");
    assert_eq!(created.iter().map(|(r, _)| *r).collect::<Vec<_>>(), (from + 1..=to).collect::<Vec<_>>());
    let mut seen = Vec::new();
    while seen.len() < created.len() {
        let message = tokio::time::timeout(Duration::from_secs(30), watch.message()).await??;
        let Some(prism_proto::control::watch_response::Event::Delta(delta)) = message.and_then(|m| m.event) else {
            anyhow::bail!("a watch from a revision sends deltas");
        };
        for change in &delta.changes {
            if let Some(prism_proto::control::change::Change::Namespace(ns)) = &change.change {
                seen.push((delta.revision, ns.name.clone()));
            }
        }
    }
    assert_eq!(seen, created, "each commit once, in revision order");

    // Counting follows deletion: a deleted namespace frees its place.
    let first = tight.iter().find_map(|r| r.as_ref().ok()).expect("a winner");
    c.delete_namespace(DeleteNamespaceRequest { name: first.name.clone(), expected_revision: 0 }).await?;
    let again = create_at_once(&c, 8, |i| format!("tight/again-{i}")).await?;
    assert_eq!(again.iter().filter(|r| r.is_ok()).count(), 1, "one place was freed");
    Ok(())
}
