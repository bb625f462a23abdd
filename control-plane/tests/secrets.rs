//! Passwords are never metadata. A namespace stored with a password in its
//! DSN — as a control plane from before they were refused would have
//! stored it — loses it when the control plane opens: in the store, in
//! every read, in the Watch (its snapshot and the change log written
//! before), with an audit event; and it goes back to provisioning, so its
//! shard reports it DEGRADED until an owner names the password by
//! reference.

mod common;

use anyhow::Context;
use prism_control_plane::ControlPlaneConfig;
use prism_control_plane::store::{Condition, Put, Txn};
use prism_proto::control::backend_config::Config;
use prism_proto::control::{
    Abstraction, Backend, BackendConfig, GetNamespaceRequest, ListAuditEventsRequest, Namespace, NamespaceSpec,
    NamespaceStatus, PostgresConfig, UpdateNamespaceRequest, WatchRequest, watch_response,
};
use prism_testkit::ControlPlaneHandle;
use tonic::Code;

const PASSWORD: &str = "hunter2-stored-long-ago";

fn postgres(dsn: &str) -> NamespaceSpec {
    NamespaceSpec {
        abstraction: Abstraction::KeyValue as i32,
        backend: Backend::Postgres as i32,
        backend_config: Some(Box::new(BackendConfig {
            config: Some(Config::Postgres(PostgresConfig { dsn: dsn.into(), ..Default::default() })),
        })),
        ..Default::default()
    }
}

fn dsn_of(ns: &Namespace) -> &str {
    match ns.spec.as_ref().and_then(|s| s.backend_config.as_deref()).and_then(|c| c.config.as_ref()) {
        Some(Config::Postgres(pg)) => &pg.dsn,
        _ => "",
    }
}

/// Everything a Watch from `from_revision` sends up to `head`.
async fn watched(
    client: &mut prism_client::ControlPlaneClient,
    from_revision: u64,
    head: u64,
) -> anyhow::Result<String> {
    let mut stream = client.watch(WatchRequest { from_revision }).await?.into_inner();
    let mut seen = String::new();
    while let Some(m) = stream.message().await? {
        seen.push_str(&format!("{m:?}"));
        match &m.event {
            Some(watch_response::Event::Snapshot(chunk)) if chunk.last => break,
            Some(watch_response::Event::Delta(delta)) if delta.revision >= head => break,
            _ => {}
        }
    }
    Ok(seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_stored_before_are_removed_when_the_control_plane_opens() -> anyhow::Result<()> {
    let config = ControlPlaneConfig { shards: vec!["shard-0".into()], ..Default::default() };
    let cp = ControlPlaneHandle::start_with(config.clone()).await?;
    let mut client = cp.client().await?;
    common::create_tenant(&mut client, "acme").await?;
    // Written straight into the store, as an older control plane did.
    let old = Namespace {
        name: "acme/old".into(),
        spec: Some(postgres(&format!("postgres://app:{PASSWORD}@db.internal:5432/app"))),
        shard_id: "shard-0".into(),
        status: NamespaceStatus::Active as i32,
        status_reason: "provisioned by shard shard-0".into(),
        ..Default::default()
    };
    let txn = Txn {
        conditions: vec![Condition::Namespace { name: old.name.clone(), revision: 0 }],
        puts: vec![Put::Namespace(old)],
        audit: Vec::new(),
    };
    cp.plane.store().commit(txn).await?;
    let written = common::revision(&mut client).await?;

    let cp = cp.restart(config.clone()).await?;
    let mut client = cp.client().await?;
    let ns = client.get_namespace(GetNamespaceRequest { name: "acme/old".into() }).await?.into_inner();
    assert_eq!(dsn_of(&ns), "postgres://app:REDACTED@db.internal:5432/app");
    assert_eq!(ns.status, NamespaceStatus::Provisioning as i32, "back to its shard");
    assert!(ns.status_reason.contains("password_ref"), "{}", ns.status_reason);
    let stored = cp.plane.store().get_namespace("acme/old").await?.context("stored")?;
    assert!(!format!("{stored:?}").contains(PASSWORD), "the store keeps no password");

    let events = client.list_audit_events(ListAuditEventsRequest { target: "acme/old".into(), ..Default::default() });
    let events = events.await?.into_inner().events;
    let redacted = events.iter().find(|e| e.action == "RedactSecret").context("audited")?;
    assert_eq!((redacted.principal.as_str(), redacted.tenant_id.as_str()), ("control-plane", "acme"));
    assert!(!format!("{events:?}").contains(PASSWORD));

    // Neither a snapshot nor the change log from before shows it.
    let head = common::revision(&mut client).await?;
    assert!(head > written);
    for from in [0, 1] {
        let seen = watched(&mut client, from, head).await?;
        assert!(seen.contains("acme/old"), "the watch from {from} carries the namespace");
        assert!(!seen.contains(PASSWORD), "the watch from {from} shows the password");
    }

    // Sent back as it reads, the spec is refused: the password must go.
    let spec = ns.spec.clone();
    let update = UpdateNamespaceRequest { name: "acme/old".into(), spec, expected_revision: 0 };
    common::refused(
        client.update_namespace(update).await,
        Code::InvalidArgument,
        Some("spec.backend_config.postgres.dsn"),
    );

    // Opening again finds nothing more to do.
    let cp = cp.restart(config).await?;
    let mut client = cp.client().await?;
    let events =
        client.list_audit_events(ListAuditEventsRequest { action: "RedactSecret".into(), ..Default::default() });
    assert_eq!(events.await?.into_inner().events.len(), 1);
    let e = client.get_namespace(GetNamespaceRequest { name: "acme/none".into() }).await.expect_err("unknown");
    assert_eq!(e.code(), Code::NotFound);
    Ok(())
}

#[tokio::test]
async fn an_unreadable_or_weak_secret_file_stops_the_start_naming_it() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let weak = dir.path().join("weak");
    std::fs::write(&weak, "short-secret\n")?;
    for (file, needle) in [(dir.path().join("missing"), "cannot read"), (weak, "12-byte secret")] {
        let mut config = ControlPlaneConfig { data_dir: dir.path().join("data"), ..Default::default() };
        config.auth.hs256_secret_file = Some(file.clone());
        let Err(e) = prism_control_plane::server::open(config).await else {
            anyhow::bail!("opened with {}", file.display());
        };
        let text = e.to_string();
        assert!(text.contains("auth.hs256_secret_file") && text.contains(&file.display().to_string()), "{text}");
        assert!(text.contains(needle) && !text.contains("short-secret"), "{text}");
    }
    Ok(())
}
