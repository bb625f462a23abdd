//! Live migration's control-plane part through the real gRPC server
//! (`control-plane/src/migration.rs`): every refusal of a bad target names
//! its field and writes nothing; nothing starts that the gateways of the
//! source's and target's shards do not perform; a started migration is
//! recorded in the namespace (and so on the watch stream), advanced only
//! by the reports of the instances doing each step, aborted back to its
//! source, and audited.

mod common;

use common::{create_tenant, kv_spec, refused, revision, start};
use std::time::Duration;

use prism_client::ControlPlaneClient;
use prism_control_plane::assign::rendezvous;
use prism_control_plane::migration::{MIGRATE_KEY_VALUE, MIGRATE_TIME_SERIES, MIGRATE_TO_EMBEDDED};
use prism_proto::control::backend_config::Config;
use prism_proto::control::{
    AbortMigrationRequest, Abstraction, Backend, BackendConfig, CreateNamespaceRequest, DeleteNamespaceRequest,
    DeregisterShardRequest, GetMigrationRequest, GetNamespaceRequest, KafkaConfig, ListAuditEventsRequest,
    MigrateNamespaceRequest, MigrationProgress, MigrationStep, MigrationTarget, Namespace, NamespaceSpec,
    NamespaceStatus, Placement, PostgresConfig, RegisterShardRequest, ReportMigrationRequest,
    ReportNamespaceStatusRequest, UpdateNamespaceRequest, WatchRequest, watch_response::Event,
};
use prism_testkit::eventually;
use tonic::Code;

async fn register(c: &mut ControlPlaneClient, shard: &str, store: &str, migrates: bool) -> anyhow::Result<String> {
    let req = RegisterShardRequest {
        shard_id: shard.into(),
        endpoint: format!("{store}.invalid:7401"),
        store_id: store.into(),
        // The control plane's steps do not depend on the target's
        // backend: these instances say they migrate to embedded too.
        features: if migrates { vec![MIGRATE_KEY_VALUE.into(), MIGRATE_TO_EMBEDDED.into()] } else { Vec::new() },
    };
    Ok(c.register_shard(req).await?.into_inner().instance_id)
}

fn pinned(spec: NamespaceSpec, shard: &str) -> NamespaceSpec {
    NamespaceSpec { placement: Some(Box::new(Placement { pinned_shard: shard.into(), ..Default::default() })), ..spec }
}

fn postgres(dsn: &str) -> BackendConfig {
    BackendConfig { config: Some(Config::Postgres(PostgresConfig { dsn: dsn.into(), ..Default::default() })) }
}

fn migrate(name: &str, target: MigrationTarget) -> MigrateNamespaceRequest {
    MigrateNamespaceRequest { name: name.into(), target: Some(target), expected_revision: 0 }
}

fn to_shard(shard: &str) -> MigrationTarget {
    MigrationTarget { pinned_shard: shard.into(), ..Default::default() }
}

/// Creates `name` with `spec` and reports it ACTIVE from `shard`.
async fn active(c: &mut ControlPlaneClient, name: &str, spec: NamespaceSpec, shard: &str) -> anyhow::Result<Namespace> {
    let ns = c.create_namespace(CreateNamespaceRequest { name: name.into(), spec: Some(spec) }).await?.into_inner();
    let report = ReportNamespaceStatusRequest {
        name: name.into(),
        shard_id: shard.into(),
        create_revision: ns.create_revision,
        status: NamespaceStatus::Active as i32,
        ..Default::default()
    };
    Ok(c.report_namespace_status(report).await?.into_inner())
}

fn report(ns: &Namespace, shard: &str, instance: &str, step: MigrationStep, done: bool) -> ReportMigrationRequest {
    ReportMigrationRequest {
        name: ns.name.clone(),
        shard_id: shard.into(),
        instance_id: instance.into(),
        migration_id: ns.migration.as_ref().map_or(0, |m| m.id),
        step: step as i32,
        done,
        ..Default::default()
    }
}

fn step(ns: &Namespace) -> Option<MigrationStep> {
    ns.migration.as_ref().and_then(|m| MigrationStep::try_from(m.step).ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_targets_are_refused_naming_the_field() -> anyhow::Result<()> {
    let (_cp, mut c) = start(&[]).await?;
    register(&mut c, "shard-a", "store-a", true).await?;
    register(&mut c, "shard-b", "store-b", true).await?;
    register(&mut c, "shard-c", "store-c", false).await?;
    create_tenant(&mut c, "acme").await?;
    active(&mut c, "acme/orders", pinned(kv_spec(), "shard-a"), "shard-a").await?;
    let name = "acme/orders";
    let before = revision(&mut c).await?;

    let none = MigrateNamespaceRequest { name: name.into(), target: None, expected_revision: 0 };
    refused(c.migrate_namespace(none).await, Code::InvalidArgument, Some("target"));
    refused(
        c.migrate_namespace(migrate(name, to_shard("shard-z"))).await,
        Code::InvalidArgument,
        Some("target.pinned_shard"),
    );
    refused(
        c.migrate_namespace(migrate(name, to_shard("Shard A"))).await,
        Code::InvalidArgument,
        Some("target.pinned_shard"),
    );
    // A target lacking a capability the namespace uses: Kafka serves no
    // KEY_VALUE.
    let kafka = MigrationTarget { backend: Backend::Kafka as i32, ..Default::default() };
    let status =
        refused(c.migrate_namespace(migrate(name, kafka)).await, Code::InvalidArgument, Some("target.backend"));
    assert!(status.message().contains("key-value"), "{status:?}");
    // Bad backend settings: none at all, a password in the DSN, the
    // settings of another backend.
    let bare = MigrationTarget { backend: Backend::Postgres as i32, ..Default::default() };
    refused(
        c.migrate_namespace(migrate(name, bare)).await,
        Code::InvalidArgument,
        Some("target.backend_config.postgres"),
    );
    let secret = MigrationTarget {
        backend: Backend::Postgres as i32,
        backend_config: Some(postgres("postgres://u:hunter2@db.invalid/prism")),
        ..Default::default()
    };
    let status = c.migrate_namespace(migrate(name, secret)).await.expect_err("a password in a DSN is refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(!status.message().contains("hunter2"), "{status:?}");
    let mismatched = MigrationTarget {
        backend: Backend::Embedded as i32,
        backend_config: Some(postgres("postgres://db.invalid/prism")),
        ..Default::default()
    };
    refused(c.migrate_namespace(migrate(name, mismatched)).await, Code::InvalidArgument, Some("target.backend_config"));
    // Where it already is.
    refused(c.migrate_namespace(migrate(name, to_shard("shard-a"))).await, Code::InvalidArgument, Some("target"));
    // A shard whose gateways do not migrate: named, nothing started.
    let status = refused(c.migrate_namespace(migrate(name, to_shard("shard-c"))).await, Code::FailedPrecondition, None);
    assert!(status.message().contains("shard shard-c"), "{status:?}");
    assert!(status.message().contains(MIGRATE_KEY_VALUE), "{status:?}");
    // An unknown namespace; one not ACTIVE yet; a TimeSeries one.
    refused(c.migrate_namespace(migrate("acme/nope", to_shard("shard-b"))).await, Code::NotFound, None);
    assert_eq!(revision(&mut c).await?, before, "refusals write nothing");
    // Embedded on a shard whose gateways do not migrate to embedded.
    let d = RegisterShardRequest {
        shard_id: "shard-d".into(),
        endpoint: "store-d.invalid:7401".into(),
        store_id: "store-d".into(),
        features: vec![MIGRATE_KEY_VALUE.into()],
    };
    c.register_shard(d).await?;
    let status = refused(c.migrate_namespace(migrate(name, to_shard("shard-d"))).await, Code::FailedPrecondition, None);
    assert!(
        status.message().starts_with("target.backend:") && status.message().contains(MIGRATE_TO_EMBEDDED),
        "{status:?}"
    );

    let fresh = CreateNamespaceRequest { name: "acme/fresh".into(), spec: Some(pinned(kv_spec(), "shard-a")) };
    c.create_namespace(fresh).await?;
    let status =
        refused(c.migrate_namespace(migrate("acme/fresh", to_shard("shard-b"))).await, Code::FailedPrecondition, None);
    assert!(status.message().contains("PROVISIONING"), "{status:?}");
    let ts = NamespaceSpec { abstraction: Abstraction::TimeSeries as i32, ..pinned(kv_spec(), "shard-a") };
    active(&mut c, "acme/events", ts, "shard-a").await?;
    // A TimeSeries namespace: not to embedded storage (another
    // instance's disk), and only where gateways migrate TimeSeries.
    let status = refused(
        c.migrate_namespace(migrate("acme/events", to_shard("shard-b"))).await,
        Code::InvalidArgument,
        Some("target.backend"),
    );
    assert!(status.message().contains("TIME_SERIES") && status.message().contains("EMBEDDED"), "{status:?}");
    let to_kafka = MigrationTarget {
        backend: Backend::Kafka as i32,
        backend_config: Some(BackendConfig {
            config: Some(Config::Kafka(KafkaConfig {
                bootstrap_servers: vec!["kafka.invalid:9092".into()],
                ..Default::default()
            })),
        }),
        ..Default::default()
    };
    let status = refused(c.migrate_namespace(migrate("acme/events", to_kafka)).await, Code::FailedPrecondition, None);
    assert!(status.message().contains(MIGRATE_TIME_SERIES) && status.message().contains("shard-a"), "{status:?}");

    // Every refusal was audited with its status.
    let audit = c
        .list_audit_events(ListAuditEventsRequest { action: "MigrateNamespace".into(), ..Default::default() })
        .await?
        .into_inner();
    assert!(audit.events.iter().all(|e| e.result != "ok"), "{:?}", audit.events);
    assert!(audit.events.iter().any(|e| e.result == "failed_precondition"), "{:?}", audit.events);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_is_recorded_advanced_by_reports_and_aborted() -> anyhow::Result<()> {
    let (_cp, mut c) = start(&[]).await?;
    let a = register(&mut c, "shard-a", "store-a", true).await?;
    let b = register(&mut c, "shard-b", "store-b", true).await?;
    create_tenant(&mut c, "acme").await?;
    let name = "acme/orders";
    active(&mut c, name, pinned(kv_spec(), "shard-a"), "shard-a").await?;

    // Embedded on shard-a → embedded on shard-b: placed on shard-b's one
    // store, at PREPARE.
    let ns = c.migrate_namespace(migrate(name, to_shard("shard-b"))).await?.into_inner();
    let m = *ns.migration.clone().expect("the migration is recorded in the namespace");
    assert_eq!(step(&ns), Some(MigrationStep::Prepare));
    assert_eq!((m.target_shard_id.as_str(), m.target_owner_store_id.as_str()), ("shard-b", "store-b"));
    assert_eq!((ns.shard_id.as_str(), ns.status), ("shard-a", NamespaceStatus::Active as i32), "the source serves");
    assert!(m.id > 0 && m.id < ns.revision && m.id != ns.create_revision, "{m:?}");
    let got = c.get_migration(GetMigrationRequest { name: name.into() }).await?.into_inner();
    assert_eq!((got.revision, got.migration.as_ref()), (ns.revision, Some(&m)));

    // The watch stream carries it to every gateway.
    let mut stream = c.watch(WatchRequest { from_revision: 0 }).await?.into_inner();
    let mut watched = None;
    while let Some(Event::Snapshot(chunk)) = stream.message().await?.and_then(|r| r.event) {
        watched = watched.or_else(|| chunk.namespaces.iter().find(|n| n.name == name).cloned());
        if chunk.last {
            break;
        }
    }
    assert_eq!(watched.and_then(|n| n.migration).map(|m| *m), Some(m.clone()));

    // One migration at a time; no deleting or re-pinning meanwhile.
    let status = refused(c.migrate_namespace(migrate(name, to_shard("shard-b"))).await, Code::FailedPrecondition, None);
    assert!(status.message().contains("already migrating"), "{status:?}");
    let delete = DeleteNamespaceRequest { name: name.into(), expected_revision: 0 };
    refused(c.delete_namespace(delete).await, Code::FailedPrecondition, None);

    // PREPARE is the target holder's: a report from the source's shard is
    // refused, one about another step is a conflict.
    refused(
        c.report_migration(report(&ns, "shard-a", &a, MigrationStep::Prepare, true)).await,
        Code::FailedPrecondition,
        None,
    );
    refused(c.report_migration(report(&ns, "shard-b", &b, MigrationStep::Backfill, true)).await, Code::Aborted, None);
    // A failure keeps the step, with the reason.
    let mut failed = report(&ns, "shard-b", &b, MigrationStep::Prepare, false);
    failed.reason = "target.backend_config: cannot create the store".into();
    let ns = c.report_migration(failed).await?.into_inner();
    assert_eq!(step(&ns), Some(MigrationStep::Prepare));
    assert_eq!(
        ns.migration.as_ref().map(|m| m.reason.as_str()),
        Some("target.backend_config: cannot create the store")
    );
    let ns = c.report_migration(report(&ns, "shard-b", &b, MigrationStep::Prepare, true)).await?.into_inner();
    assert_eq!(step(&ns), Some(MigrationStep::DualWrite));
    assert_eq!(ns.migration.as_ref().map(|m| m.reason.as_str()), Some(""));

    // DUAL_WRITE ends when every instance of the source's shard reached
    // it: a second instance of shard-a joins, and both must report.
    let a2 = register(&mut c, "shard-a", "store-a2", true).await?;
    let ns = c.report_migration(report(&ns, "shard-a", &a, MigrationStep::DualWrite, true)).await?.into_inner();
    assert_eq!(step(&ns), Some(MigrationStep::DualWrite));
    assert_eq!(ns.migration.as_ref().map(|m| m.reported.clone()), Some(vec![a.clone()]));
    let ns = c.report_migration(report(&ns, "shard-a", &a2, MigrationStep::DualWrite, true)).await?.into_inner();
    assert_eq!(step(&ns), Some(MigrationStep::Backfill));

    // The backfill's cursor and counts are recorded (a restarted runner
    // resumes there), then its end starts VERIFY.
    let mut progress = report(&ns, "shard-a", &a, MigrationStep::Backfill, false);
    progress.progress = Some(MigrationProgress {
        cursor: b"orders/42".to_vec(),
        records_copied: 42,
        bytes_copied: 4200,
        ..Default::default()
    });
    let ns = c.report_migration(progress).await?.into_inner();
    let recorded = ns.migration.as_ref().and_then(|m| m.progress.clone()).unwrap_or_default();
    assert_eq!((recorded.cursor.as_slice(), recorded.records_copied), (&b"orders/42"[..], 42));
    assert!(recorded.update_time.is_some());
    let ns = c.report_migration(report(&ns, "shard-a", &a, MigrationStep::Backfill, true)).await?.into_inner();
    assert_eq!(step(&ns), Some(MigrationStep::Verify));
    // Abort: the target's holder removes the target and reports; the
    // migration is gone, the source never moved.
    let abort = AbortMigrationRequest { name: name.into(), expected_revision: 0, force: false };
    let ns = c.abort_migration(abort.clone()).await?.into_inner();
    assert_eq!(step(&ns), Some(MigrationStep::Aborting));
    refused(c.abort_migration(abort.clone()).await, Code::FailedPrecondition, None);
    let ns = c.report_migration(report(&ns, "shard-b", &b, MigrationStep::Aborting, true)).await?.into_inner();
    assert_eq!(ns.migration, None);
    assert_eq!((ns.shard_id.as_str(), ns.status), ("shard-a", NamespaceStatus::Active as i32));
    refused(c.get_migration(GetMigrationRequest { name: name.into() }).await, Code::NotFound, None);
    refused(c.abort_migration(abort).await, Code::NotFound, None);
    let ns = c.get_namespace(GetNamespaceRequest { name: name.into() }).await?.into_inner();
    assert_eq!(ns.migration, None);

    // Audited: the start, each step, the abort.
    let audit = c.list_audit_events(ListAuditEventsRequest::default()).await?.into_inner();
    let actions: Vec<(&str, &str)> = audit
        .events
        .iter()
        .filter(|e| e.action.contains("Migrat") && e.result == "ok")
        .map(|e| (e.action.as_str(), e.detail.as_str()))
        .collect();
    for wanted in
        ["started", "now at step DUAL_WRITE", "now at step BACKFILL", "aborted at step VERIFY", "target removed"]
    {
        assert!(actions.iter().any(|(_, d)| d.contains(wanted)), "no {wanted:?} in {actions:?}");
    }
    Ok(())
}

/// From VERIFY on: the cutover (reads move to the target, the placement
/// stays) once verified, the cleanup commit (the target becomes the
/// namespace's placement, the source kept in the migration) once every
/// instance of the source's shard drained, and the end once the source's
/// holder removed it after the grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verified_migration_cuts_over_and_cleans_up() -> anyhow::Result<()> {
    let grace = Duration::from_millis(1_500);
    let (_cp, mut c) = common::start_with(prism_control_plane::config::ControlPlaneConfig {
        migration_cleanup_grace_ms: grace.as_millis() as u64,
        ..Default::default()
    })
    .await?;
    let a = register(&mut c, "shard-a", "store-a", true).await?;
    let a2 = register(&mut c, "shard-a", "store-a2", true).await?;
    let b = register(&mut c, "shard-b", "store-b", true).await?;
    create_tenant(&mut c, "acme").await?;
    let name = "acme/orders";
    let source = active(&mut c, name, pinned(kv_spec(), "shard-a"), "shard-a").await?;
    let target = MigrationTarget {
        backend: Backend::Postgres as i32,
        backend_config: Some(postgres("postgres://db.invalid/prism")),
        pinned_shard: "shard-b".into(),
    };
    let ns = c.migrate_namespace(migrate(name, target)).await?.into_inner();
    let ns = c.report_migration(report(&ns, "shard-b", &b, MigrationStep::Prepare, true)).await?.into_inner();
    let ns = c.report_migration(report(&ns, "shard-a", &a, MigrationStep::DualWrite, true)).await?.into_inner();
    let ns = c.report_migration(report(&ns, "shard-a", &a2, MigrationStep::DualWrite, true)).await?.into_inner();
    // The embedded source's owner runs the backfill.
    let holder = if source.owner_store_id == "store-a" { &a } else { &a2 };
    assert_eq!(ns.migration.as_ref().map(|m| m.runner_instance_id.as_str()), Some(holder.as_str()));
    let ns = c.report_migration(report(&ns, "shard-a", holder, MigrationStep::Backfill, true)).await?.into_inner();
    assert_eq!(step(&ns), Some(MigrationStep::Verify));

    // VERIFY: every instance of the source's shard reports its shadow
    // reads (summed), the holder its digest's count too; one whose shadow
    // reads differed has not verified, and says so.
    let m = ns.migration.as_deref().expect("migrating");
    assert_eq!(m.shadow_read_fraction, 0.01, "the control plane's default, recorded");
    assert_eq!(m.verify_window.map(|w| w.seconds), Some(30));
    let verify = |instance: &str, reads: u64, mismatches: u64, verified: u64| {
        let mut r = report(&ns, "shard-a", instance, MigrationStep::Verify, true);
        r.progress = Some(MigrationProgress {
            shadow_reads: reads,
            shadow_mismatches: mismatches,
            records_verified: verified,
            ..Default::default()
        });
        r
    };
    let ns = c.report_migration(verify(&a, 10, 0, 500)).await?.into_inner();
    assert_eq!(step(&ns), Some(MigrationStep::Verify));
    let ns = c.report_migration(verify(&a2, 7, 2, 0)).await?.into_inner();
    let m = ns.migration.as_deref().expect("migrating");
    assert_eq!(step(&ns), Some(MigrationStep::Verify), "a mismatch holds the step");
    assert!(m.reason.contains("2 of 7 shadow reads differed"), "{m:?}");
    assert_eq!(m.reported, vec![a.clone()]);
    let ns = c.report_migration(verify(&a2, 5, 0, 0)).await?.into_inner();
    // Verified: CUTOVER, the placement still the source's.
    assert_eq!(step(&ns), Some(MigrationStep::Cutover));
    let progress = ns.migration.as_deref().and_then(|m| m.progress.clone()).unwrap_or_default();
    assert_eq!(
        (progress.shadow_reads, progress.shadow_mismatches, progress.records_verified),
        (22, 2, 500),
        "{progress:?}"
    );
    assert_eq!(
        (ns.shard_id.as_str(), ns.owner_store_id.as_str()),
        (source.shard_id.as_str(), source.owner_store_id.as_str())
    );
    assert_eq!(ns.spec.as_ref().map(|s| s.backend), Some(Backend::Embedded as i32));
    // No abort once the target serves reads: it ends by itself.
    let abort = AbortMigrationRequest { name: name.into(), expected_revision: 0, force: false };
    let status = refused(c.abort_migration(abort.clone()).await, Code::FailedPrecondition, None);
    assert!(status.message().contains("cutting over"), "{status:?}");

    // Every instance of the source's shard drains, then the cleanup
    // commit makes the target the namespace's placement.
    let ns = c.report_migration(report(&ns, "shard-a", &a, MigrationStep::Cutover, true)).await?.into_inner();
    assert_eq!(step(&ns), Some(MigrationStep::Cutover));
    let ns = c.report_migration(report(&ns, "shard-a", &a2, MigrationStep::Cutover, true)).await?.into_inner();
    assert_eq!(step(&ns), Some(MigrationStep::Cleanup));
    let m = ns.migration.as_deref().expect("still migrating until the source is removed");
    assert_eq!((ns.shard_id.as_str(), ns.owner_store_id.as_str()), ("shard-b", ""));
    assert_eq!(ns.status_reason, format!("migrated to POSTGRES on shard shard-b by migration {}", m.id));
    let spec = ns.spec.clone().unwrap_or_default();
    assert_eq!(spec.backend, Backend::Postgres as i32);
    assert_eq!(spec.placement.map(|p| p.pinned_shard), Some("shard-b".into()));
    assert_eq!((ns.data_revision, ns.create_revision), (m.id, source.create_revision));
    let kept = m.source.clone().expect("the source is kept in the migration");
    assert_eq!((kept.shard_id.as_str(), kept.data_revision), ("shard-a", source.create_revision));
    assert_eq!(kept.owner_store_id, source.owner_store_id);
    assert_eq!(kept.spec.map(|s| s.backend), Some(Backend::Embedded as i32));
    assert!(m.cleanup_after.is_some(), "{m:?}");
    refused(c.abort_migration(abort).await, Code::FailedPrecondition, None);

    // The source's holder removes it, not before the grace.
    let other = if holder == &a { &a2 } else { &a };
    refused(
        c.report_migration(report(&ns, "shard-a", other, MigrationStep::Cleanup, true)).await,
        Code::FailedPrecondition,
        None,
    );
    let early = refused(
        c.report_migration(report(&ns, "shard-a", holder, MigrationStep::Cleanup, true)).await,
        Code::FailedPrecondition,
        None,
    );
    assert!(early.message().contains("cleanup time"), "{early:?}");
    tokio::time::sleep(grace).await;
    let ns = c.report_migration(report(&ns, "shard-a", holder, MigrationStep::Cleanup, true)).await?.into_inner();
    assert_eq!(ns.migration, None);
    assert_eq!((ns.shard_id.as_str(), ns.data_revision), ("shard-b", m.id));

    let audit = c.list_audit_events(ListAuditEventsRequest::default()).await?.into_inner();
    let details: Vec<&str> = audit.events.iter().filter(|e| e.result == "ok").map(|e| e.detail.as_str()).collect();
    for wanted in ["now at step CUTOVER", "cut over: the namespace is on shard shard-b", "done; source removed"] {
        assert!(details.iter().any(|d| d.contains(wanted)), "no {wanted:?} in {details:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_migration_places_the_target_as_a_create_would() -> anyhow::Result<()> {
    let (_cp, mut c) = start(&[]).await?;
    register(&mut c, "shard-a", "store-a", true).await?;
    create_tenant(&mut c, "acme").await?;
    let name = "acme/orders";
    active(&mut c, name, kv_spec(), "shard-a").await?;
    // Embedded → PostgreSQL on the same shard: a shared backend has no
    // owner store.
    let target = MigrationTarget {
        backend: Backend::Postgres as i32,
        backend_config: Some(postgres("postgres://db.invalid/prism")),
        ..Default::default()
    };
    let ns = c.migrate_namespace(migrate(name, target.clone())).await?.into_inner();
    let m = ns.migration.expect("recorded");
    assert_eq!((m.target_shard_id.as_str(), m.target_owner_store_id.as_str()), ("shard-a", ""));
    assert_eq!(m.target, Some(target));
    assert_eq!(ns.spec.map(|s| s.backend), Some(Backend::Embedded as i32), "the spec is the source's until cutover");
    Ok(())
}

/// The shard map settling never moves a namespace while it migrates (its
/// steps are planned against its placement), and places it once an abort
/// ends the migration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settling_the_shard_map_leaves_a_migrating_namespace_in_place() -> anyhow::Result<()> {
    let (_cp, mut c) = start(&[]).await?;
    let a = register(&mut c, "shard-a", "store-a", true).await?;
    create_tenant(&mut c, "acme").await?;
    // Two shared-backend namespaces that shard-b wins once it joins: one
    // migrates, the other shows that the shard map does move namespaces.
    let movers: Vec<String> = (0..)
        .map(|i| format!("acme/orders-{i}"))
        .filter(|n| rendezvous(n, ["shard-a", "shard-b"]) == Some("shard-b"))
        .take(2)
        .collect();
    let (migrating, control) = (movers[0].as_str(), movers[1].as_str());
    let spec = NamespaceSpec {
        backend: Backend::Postgres as i32,
        backend_config: Some(Box::new(postgres("postgres://db.invalid/prism"))),
        ..kv_spec()
    };
    for name in [migrating, control] {
        active(&mut c, name, spec.clone(), "shard-a").await?;
    }
    let to_embedded = MigrationTarget { backend: Backend::Embedded as i32, ..Default::default() };
    let ns = c.migrate_namespace(migrate(migrating, to_embedded)).await?.into_inner();
    assert_eq!(ns.shard_id, "shard-a");

    // shard-b joins: its commit settles the control namespace, not the
    // migrating one; nor does the settler afterwards.
    register(&mut c, "shard-b", "store-b", true).await?;
    let get = |name: &str| GetNamespaceRequest { name: name.into() };
    assert_eq!(c.get_namespace(get(control)).await?.into_inner().shard_id, "shard-b");
    let ns = c.get_namespace(get(migrating)).await?.into_inner();
    assert_eq!((ns.shard_id.as_str(), step(&ns)), ("shard-a", Some(MigrationStep::Prepare)));
    let settled = c.list_audit_events(ListAuditEventsRequest::default()).await?.into_inner();
    assert!(
        !settled.events.iter().any(|e| e.action == "SettleShardMap" && e.target.contains(migrating)),
        "{settled:?}"
    );

    // The abort ends the migration; the settler then places it.
    let abort = AbortMigrationRequest { name: migrating.into(), expected_revision: 0, force: false };
    let ns = c.abort_migration(abort).await?.into_inner();
    let ns = c.report_migration(report(&ns, "shard-a", &a, MigrationStep::Aborting, true)).await?.into_inner();
    assert_eq!(ns.migration, None);
    eventually(Duration::from_secs(10), || {
        let mut c = c.clone();
        async move {
            let shard = c.get_namespace(get(migrating)).await?.into_inner().shard_id;
            anyhow::ensure!(shard == "shard-b", "still on {shard}");
            Ok(())
        }
    })
    .await?;
    Ok(())
}

/// Changing a namespace's pin (`UpdateNamespace`) moves it: the update
/// starts a migration to the new shard with the same backend and
/// settings, the spec keeps the old pin until the cleanup commit makes
/// the new one its placement. What would move it off its shard otherwise
/// (removing the pin, new settings with the pin) is refused, naming the
/// field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_pin_migrates_the_namespace_there() -> anyhow::Result<()> {
    let (_cp, mut c) = start(&[]).await?;
    let a = register(&mut c, "shard-a", "store-a", true).await?;
    let b = register(&mut c, "shard-b", "store-b", true).await?;
    create_tenant(&mut c, "acme").await?;
    let name = "acme/orders";
    let spec = NamespaceSpec {
        backend: Backend::Postgres as i32,
        backend_config: Some(Box::new(postgres("postgres://db.invalid/prism"))),
        ..pinned(kv_spec(), "shard-a")
    };
    let source = active(&mut c, name, spec.clone(), "shard-a").await?;
    let update =
        |spec: NamespaceSpec| UpdateNamespaceRequest { name: name.into(), spec: Some(spec), expected_revision: 0 };

    let unpinned = NamespaceSpec { placement: None, ..spec.clone() };
    let status =
        refused(c.update_namespace(update(unpinned)).await, Code::InvalidArgument, Some("spec.placement.pinned_shard"));
    assert!(status.message().contains("removing the pin"), "{status:?}");
    let elsewhere = NamespaceSpec {
        backend_config: Some(Box::new(postgres("postgres://other.invalid/prism"))),
        ..pinned(spec.clone(), "shard-b")
    };
    refused(c.update_namespace(update(elsewhere)).await, Code::InvalidArgument, Some("spec.placement.pinned_shard"));
    assert_eq!(
        c.get_namespace(GetNamespaceRequest { name: name.into() }).await?.into_inner().revision,
        source.revision
    );

    // The new pin, with a policy change in the same update.
    let mut moved = pinned(spec.clone(), "shard-b");
    moved.policies = Some(Box::new(prism_proto::control::Policies { cache_enabled: true, ..Default::default() }));
    let ns = c.update_namespace(update(moved.clone())).await?.into_inner();
    let m = ns.migration.as_deref().expect("the new pin starts a migration");
    assert_eq!(m.target_shard_id, "shard-b");
    assert_eq!(m.target, Some(to_shard("shard-b")), "same backend and settings, the new shard");
    let stored = ns.spec.clone().unwrap_or_default();
    assert_eq!(stored.placement.map(|p| p.pinned_shard), Some("shard-a".into()), "the old pin until cleanup");
    assert!(stored.policies.is_some_and(|p| p.cache_enabled), "the rest of the update applies at once");
    // Once migrating: the same update again, or new settings, wait.
    refused(c.update_namespace(update(moved)).await, Code::FailedPrecondition, None);
    let settings = NamespaceSpec { backend_config: Some(Box::new(postgres("postgres://x.invalid/p"))), ..spec };
    refused(c.update_namespace(update(settings)).await, Code::FailedPrecondition, None);

    let ns = c.report_migration(report(&ns, "shard-b", &b, MigrationStep::Prepare, true)).await?.into_inner();
    let ns = c.report_migration(report(&ns, "shard-a", &a, MigrationStep::DualWrite, true)).await?.into_inner();
    let ns = c.report_migration(report(&ns, "shard-a", &a, MigrationStep::Backfill, true)).await?.into_inner();
    let ns = c.report_migration(report(&ns, "shard-a", &a, MigrationStep::Verify, true)).await?.into_inner();
    let ns = c.report_migration(report(&ns, "shard-a", &a, MigrationStep::Cutover, true)).await?.into_inner();
    assert_eq!(step(&ns), Some(MigrationStep::Cleanup));
    assert_eq!(ns.shard_id, "shard-b");
    let spec = ns.spec.unwrap_or_default();
    assert_eq!(spec.placement.map(|p| p.pinned_shard), Some("shard-b".into()), "the new pin is the placement");
    assert_eq!(spec.backend_config, Some(Box::new(postgres("postgres://db.invalid/prism"))));
    Ok(())
}

/// A migration whose target cannot be removed (its holder keeps failing
/// at ABORTING) is ended by `force`, which says in the audit log what
/// may remain; force is refused at any other step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_stuck_aborting_is_ended_by_force() -> anyhow::Result<()> {
    let (_cp, mut c) = start(&[]).await?;
    register(&mut c, "shard-a", "store-a", true).await?;
    let b = register(&mut c, "shard-b", "store-b", true).await?;
    create_tenant(&mut c, "acme").await?;
    let name = "acme/orders";
    active(&mut c, name, pinned(kv_spec(), "shard-a"), "shard-a").await?;
    c.migrate_namespace(migrate(name, to_shard("shard-b"))).await?;
    let abort = |force| AbortMigrationRequest { name: name.into(), expected_revision: 0, force };
    let status = refused(c.abort_migration(abort(true)).await, Code::FailedPrecondition, None);
    assert!(status.message().contains("abort it first") && status.message().contains("CLEANUP"), "{status:?}");
    let ns = c.abort_migration(abort(false)).await?.into_inner();
    let mut failed = report(&ns, "shard-b", &b, MigrationStep::Aborting, false);
    failed.reason = "cannot remove the target yet: target.backend_config: the postgres backend is unreachable".into();
    let ns = c.report_migration(failed.clone()).await?.into_inner();
    assert_eq!(ns.migration.as_ref().map(|m| m.reason.as_str()), Some(failed.reason.as_str()));
    let status = refused(c.abort_migration(abort(false)).await, Code::FailedPrecondition, None);
    assert!(status.message().contains("force"), "{status:?}");

    let ns = c.abort_migration(abort(true)).await?.into_inner();
    assert_eq!(ns.migration, None);
    assert_eq!((ns.shard_id.as_str(), ns.status), ("shard-a", NamespaceStatus::Active as i32));
    let audit = c
        .list_audit_events(ListAuditEventsRequest { action: "AbortMigration".into(), ..Default::default() })
        .await?
        .into_inner();
    let ended = audit.events.iter().find(|e| e.detail.contains("force-ended")).expect("audited");
    assert!(ended.detail.contains("the target may remain") && ended.detail.contains("unreachable"), "{ended:?}");
    // A new migration can start.
    c.migrate_namespace(migrate(name, to_shard("shard-b"))).await?;
    Ok(())
}

/// A migration whose source cannot be removed (its holder keeps failing
/// at CLEANUP) is ended by `force`: the namespace stays on its target,
/// and the audit log names the source that may remain. Without force,
/// the abort is refused and says `--force` ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_stuck_cleaning_up_is_ended_by_force() -> anyhow::Result<()> {
    let (_cp, mut c) = start(&[]).await?;
    let a = register(&mut c, "shard-a", "store-a", true).await?;
    let b = register(&mut c, "shard-b", "store-b", true).await?;
    create_tenant(&mut c, "acme").await?;
    let name = "acme/orders";
    let source = active(&mut c, name, pinned(kv_spec(), "shard-a"), "shard-a").await?;
    let target = MigrationTarget {
        backend: Backend::Postgres as i32,
        backend_config: Some(postgres("postgres://db.invalid/prism")),
        pinned_shard: "shard-b".into(),
    };
    let mut ns = c.migrate_namespace(migrate(name, target)).await?.into_inner();
    for (shard, instance, step) in [
        ("shard-b", &b, MigrationStep::Prepare),
        ("shard-a", &a, MigrationStep::DualWrite),
        ("shard-a", &a, MigrationStep::Backfill),
        ("shard-a", &a, MigrationStep::Verify),
        ("shard-a", &a, MigrationStep::Cutover),
    ] {
        ns = c.report_migration(report(&ns, shard, instance, step, true)).await?.into_inner();
    }
    assert_eq!(step(&ns), Some(MigrationStep::Cleanup));
    let mut failed = report(&ns, "shard-a", &a, MigrationStep::Cleanup, false);
    failed.reason = "cannot remove the source yet: the embedded store is read-only".into();
    c.report_migration(failed).await?;

    let abort = |force| AbortMigrationRequest { name: name.into(), expected_revision: 0, force };
    let status = refused(c.abort_migration(abort(false)).await, Code::FailedPrecondition, None);
    assert!(status.message().contains("cleaning up") && status.message().contains("--force"), "{status:?}");
    let ns = c.abort_migration(abort(true)).await?.into_inner();
    assert_eq!(ns.migration, None);
    let spec = ns.spec.clone().unwrap_or_default();
    assert_eq!((ns.shard_id.as_str(), spec.backend), ("shard-b", Backend::Postgres as i32), "stays on its target");
    let audit = c
        .list_audit_events(ListAuditEventsRequest { action: "AbortMigration".into(), ..Default::default() })
        .await?
        .into_inner();
    let ended = audit.events.iter().find(|e| e.detail.contains("force-ended at CLEANUP")).expect("audited");
    let remains =
        format!("the source may remain: EMBEDDED incarnation {} of {name} on shard shard-a", source.create_revision);
    assert!(ended.detail.contains(&remains) && ended.detail.contains("read-only"), "{ended:?}");
    Ok(())
}

/// A source on a backend its shard's instances share is copied by one of
/// them, the runner (the instance whose report completed DUAL_WRITE):
/// another's backfill report is refused while the runner is registered,
/// and makes it the runner once it is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_instance_runs_the_backfill_of_a_shared_source_and_another_takes_over() -> anyhow::Result<()> {
    let (_cp, mut c) = start(&[]).await?;
    let a = register(&mut c, "shard-a", "store-a", true).await?;
    let a2 = register(&mut c, "shard-a", "store-a2", true).await?;
    create_tenant(&mut c, "acme").await?;
    let name = "acme/orders";
    let spec = NamespaceSpec {
        backend: Backend::Postgres as i32,
        backend_config: Some(Box::new(postgres("postgres://db.invalid/prism"))),
        ..pinned(kv_spec(), "shard-a")
    };
    active(&mut c, name, spec, "shard-a").await?;
    let target =
        MigrationTarget { backend_config: Some(postgres("postgres://other.invalid/prism")), ..Default::default() };
    let ns = c.migrate_namespace(migrate(name, target)).await?.into_inner();
    let ns = c.report_migration(report(&ns, "shard-a", &a, MigrationStep::Prepare, true)).await?.into_inner();
    let ns = c.report_migration(report(&ns, "shard-a", &a, MigrationStep::DualWrite, true)).await?.into_inner();
    let ns = c.report_migration(report(&ns, "shard-a", &a2, MigrationStep::DualWrite, true)).await?.into_inner();
    assert_eq!(step(&ns), Some(MigrationStep::Backfill));
    assert_eq!(ns.migration.as_ref().map(|m| m.runner_instance_id.as_str()), Some(a2.as_str()));

    let progress = |instance: &str, copied: u64| {
        let mut r = report(&ns, "shard-a", instance, MigrationStep::Backfill, false);
        r.progress = Some(MigrationProgress { records_copied: copied, ..Default::default() });
        r
    };
    c.report_migration(progress(&a2, 10)).await?;
    let status = refused(c.report_migration(progress(&a, 5)).await, Code::FailedPrecondition, None);
    assert!(status.message().contains("does not run the backfill"), "{status:?}");
    // The runner leaves: the other instance's report takes over.
    c.deregister_shard(DeregisterShardRequest { shard_id: "shard-a".into(), instance_id: a2.clone() }).await?;
    let ns = c.report_migration(progress(&a, 12)).await?.into_inner();
    let m = ns.migration.as_deref().expect("migrating");
    assert_eq!((m.runner_instance_id.as_str(), m.progress.as_ref().map(|p| p.records_copied)), (a.as_str(), Some(12)));
    Ok(())
}
