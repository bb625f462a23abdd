//! The shard registry over gRPC: registration, leases, heartbeats, the
//! shard map on the watch stream, and the assignment it drives.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{create_tenant, refused, start_with};
use prism_client::ControlPlaneClient;
use prism_control_plane::ControlPlaneConfig;
use prism_proto::control::backend_config::Config;
use prism_proto::control::{
    Abstraction, Backend, BackendConfig, CreateNamespaceRequest, DeregisterShardRequest, GetNamespaceRequest,
    HeartbeatRequest, ListShardsRequest, Namespace, NamespaceSpec, NamespaceStatus, Placement, PostgresConfig,
    RegisterShardRequest, ReportNamespaceStatusRequest, ResolveNamespaceRequest, WatchRequest, change,
    watch_response::Event,
};
use prism_testkit::eventually;
use tonic::Code;

/// A KEY_VALUE namespace on a shared backend (Postgres; the control plane
/// never connects to it), which moves when shards change.
fn shared_spec() -> NamespaceSpec {
    NamespaceSpec {
        abstraction: Abstraction::KeyValue as i32,
        backend: Backend::Postgres as i32,
        backend_config: Some(Box::new(BackendConfig {
            config: Some(Config::Postgres(PostgresConfig {
                dsn: "postgres://db.invalid/prism".into(),
                ..Default::default()
            })),
        })),
        ..NamespaceSpec::default()
    }
}

fn embedded_spec() -> NamespaceSpec {
    NamespaceSpec { abstraction: Abstraction::KeyValue as i32, backend: Backend::Embedded as i32, ..Default::default() }
}

async fn register(c: &mut ControlPlaneClient, shard: &str, endpoint: &str) -> anyhow::Result<String> {
    let r = c
        .register_shard(RegisterShardRequest {
            shard_id: shard.into(),
            endpoint: endpoint.into(),
            ..Default::default()
        })
        .await?;
    Ok(r.into_inner().instance_id)
}

/// The instances a [`keep_alive`] task heartbeats.
type Beating = Arc<Mutex<Vec<(&'static str, String)>>>;

/// Heartbeats every instance in the returned list every 50 ms until the
/// task is aborted: a test with a short lease keeps its instances while
/// it sets up, however slow the machine (remove one to let it lapse).
fn keep_alive(
    c: &ControlPlaneClient,
    instances: Vec<(&'static str, String)>,
) -> (Beating, tokio::task::JoinHandle<()>) {
    let beating: Beating = Arc::new(Mutex::new(instances));
    let task = tokio::spawn({
        let (mut c, beating) = (c.clone(), beating.clone());
        async move {
            loop {
                let now: Vec<_> = beating.lock().expect("not poisoned").clone();
                for (shard, instance_id) in now {
                    // A failed beat is tried again at the next tick.
                    let _ = c.heartbeat(HeartbeatRequest { shard_id: shard.into(), instance_id }).await;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    (beating, task)
}

async fn create(c: &mut ControlPlaneClient, name: &str, spec: NamespaceSpec) -> anyhow::Result<Namespace> {
    Ok(c.create_namespace(CreateNamespaceRequest { name: name.into(), spec: Some(spec) }).await?.into_inner())
}

/// Every namespace's shard, by name.
async fn owners(c: &mut ControlPlaneClient) -> anyhow::Result<BTreeMap<String, String>> {
    let req = prism_proto::control::ListNamespacesRequest { page_size: 1000, ..Default::default() };
    let list = c.list_namespaces(req).await?.into_inner();
    Ok(list.namespaces.into_iter().map(|n| (n.name, n.shard_id)).collect())
}

fn config(lease_ms: u64) -> ControlPlaneConfig {
    ControlPlaneConfig { shard_lease_ttl_ms: lease_ms, ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_shards_own_namespaces_and_resolve_to_their_instances() -> anyhow::Result<()> {
    let (_cp, mut c) = start_with(config(60_000)).await?;
    create_tenant(&mut c, "acme").await?;
    // No shard yet: the namespace waits, unassigned.
    let early = create(&mut c, "acme/early", shared_spec()).await?;
    assert_eq!(early.shard_id, "");
    refused(
        c.resolve_namespace(ResolveNamespaceRequest { namespace: "acme/early".into() }).await,
        Code::FailedPrecondition,
        None,
    );

    let a1 = register(&mut c, "shard-a", "10.0.0.1:7401").await?;
    let a2 = register(&mut c, "shard-a", "10.0.0.2:7401").await?;
    assert_ne!(a1, a2);
    // The first live shard takes the waiting namespace, in the same commit.
    let early = c.get_namespace(GetNamespaceRequest { name: "acme/early".into() }).await?.into_inner();
    assert_eq!(early.shard_id, "shard-a");
    assert_eq!(early.status, NamespaceStatus::Provisioning as i32);
    let r = c.resolve_namespace(ResolveNamespaceRequest { namespace: "acme/early".into() }).await?.into_inner();
    assert_eq!(r.shard_id, "shard-a");
    assert_eq!(r.endpoints, ["10.0.0.1:7401", "10.0.0.2:7401"]);

    let shards = c.list_shards(ListShardsRequest {}).await?.into_inner().shards;
    assert_eq!(shards.len(), 1);
    assert_eq!(shards[0].instances.len(), 2);
    assert!(shards[0].instances.iter().all(|i| i.lease_expire_time.is_some() && i.register_time.is_some()));

    // A clean shutdown removes the instance at once.
    c.deregister_shard(DeregisterShardRequest { shard_id: "shard-a".into(), instance_id: a1.clone() }).await?;
    let r = c.resolve_namespace(ResolveNamespaceRequest { namespace: "acme/early".into() }).await?.into_inner();
    assert_eq!(r.endpoints, ["10.0.0.2:7401"]);
    let again = c.deregister_shard(DeregisterShardRequest { shard_id: "shard-a".into(), instance_id: a1 }).await;
    refused(again, Code::NotFound, None);
    // A heartbeat of a removed instance says so: the gateway registers again.
    let hb = c.heartbeat(HeartbeatRequest { shard_id: "shard-a".into(), instance_id: "nope".into() }).await;
    refused(hb, Code::NotFound, None);
    let hb = c.heartbeat(HeartbeatRequest { shard_id: "shard-a".into(), instance_id: a2 }).await?.into_inner();
    assert!(hb.lease_expire_time.is_some());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_shard_takes_its_rendezvous_share_and_embedded_data_stays() -> anyhow::Result<()> {
    let (_cp, mut c) = start_with(config(60_000)).await?;
    create_tenant(&mut c, "acme").await?;
    register(&mut c, "shard-a", "10.0.0.1:7401").await?;
    register(&mut c, "shard-b", "10.0.0.2:7401").await?;
    for i in 0..60 {
        create(&mut c, &format!("acme/shared-{i}"), shared_spec()).await?;
    }
    let local = create(&mut c, "acme/local", embedded_spec()).await?;
    let report = ReportNamespaceStatusRequest {
        name: "acme/local".into(),
        shard_id: local.shard_id.clone(),
        create_revision: local.create_revision,
        status: NamespaceStatus::Active as i32,
        reason: String::new(),
        ..Default::default()
    };
    c.report_namespace_status(report).await?;
    let pinned = create(
        &mut c,
        "acme/pinned",
        NamespaceSpec {
            placement: Some(Box::new(Placement { pinned_shard: "shard-a".into(), ..Default::default() })),
            ..shared_spec()
        },
    )
    .await?;
    assert_eq!(pinned.shard_id, "shard-a");
    let before = owners(&mut c).await?;

    register(&mut c, "shard-c", "10.0.0.3:7401").await?;
    let after = owners(&mut c).await?;
    let moved: Vec<&String> = before.keys().filter(|n| before[*n] != after[*n]).collect();
    // Only to the new shard, about a third of the hashed ones, never the
    // pinned one nor the one whose data is on a shard's disk.
    assert!(moved.iter().all(|n| after[*n] == "shard-c"), "{moved:?}");
    assert!((8..=35).contains(&moved.len()), "{} of 60 moved", moved.len());
    assert_eq!(after["acme/pinned"], "shard-a");
    assert_eq!(after["acme/local"], local.shard_id);
    let moved_ns = c.get_namespace(GetNamespaceRequest { name: moved[0].clone() }).await?.into_inner();
    assert!(moved_ns.status_reason.contains("shard-c"), "{}", moved_ns.status_reason);

    // The watch stream carries the shard map: a snapshot holds it, and a
    // pin to a shard outside it is refused by name.
    let mut stream = c.watch(WatchRequest { from_revision: 0 }).await?.into_inner();
    let Some(Event::Snapshot(first)) = stream.message().await?.and_then(|m| m.event) else {
        anyhow::bail!("a watch from 0 starts with a snapshot");
    };
    let ids: Vec<&str> = first.shards.iter().map(|s| s.shard_id.as_str()).collect();
    assert_eq!(ids, ["shard-a", "shard-b", "shard-c"]);
    let bad = NamespaceSpec {
        placement: Some(Box::new(Placement { pinned_shard: "shard-z".into(), ..Default::default() })),
        ..shared_spec()
    };
    let e = c.create_namespace(CreateNamespaceRequest { name: "acme/p2".into(), spec: Some(bad) }).await;
    refused(e, Code::InvalidArgument, Some("spec.placement.pinned_shard"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_removes_the_instance_and_its_namespaces_move() -> anyhow::Result<()> {
    let (_cp, mut c) = start_with(config(400)).await?;
    create_tenant(&mut c, "acme").await?;
    let kept = register(&mut c, "shard-a", "10.0.0.1:7401").await?;
    let from = common::revision(&mut c).await?;
    let silent = register(&mut c, "shard-b", "10.0.0.2:7401").await?;
    // Both heartbeat while the namespaces are created (twenty fsynced
    // commits can outlast a 400 ms lease on a loaded machine).
    let (beating, heartbeats) = keep_alive(&c, vec![("shard-a", kept.clone()), ("shard-b", silent)]);
    for i in 0..20 {
        create(&mut c, &format!("acme/ns-{i}"), shared_spec()).await?;
    }
    assert!(owners(&mut c).await?.values().any(|s| s == "shard-b"));
    // shard-a heartbeats; shard-b falls silent and is swept.
    beating.lock().expect("not poisoned").retain(|(shard, _)| *shard == "shard-a");
    let mut watch = c.watch(WatchRequest { from_revision: from }).await?.into_inner();
    let mut hb = c.clone();
    eventually(Duration::from_secs(10), || {
        let (mut c, mut hb, kept) = (c.clone(), hb.clone(), kept.clone());
        async move {
            hb.heartbeat(HeartbeatRequest { shard_id: "shard-a".into(), instance_id: kept }).await?;
            let shards = c.list_shards(ListShardsRequest {}).await?.into_inner().shards;
            let ids: Vec<&str> = shards.iter().map(|s| s.shard_id.as_str()).collect();
            anyhow::ensure!(ids == ["shard-a"], "shards {ids:?}");
            Ok(())
        }
    })
    .await?;
    hb.heartbeat(HeartbeatRequest { shard_id: "shard-a".into(), instance_id: kept }).await?;
    assert!(owners(&mut c).await?.values().all(|s| s == "shard-a"));
    heartbeats.abort();
    // Watchers saw shard-b come and go.
    let mut removed = false;
    while !removed {
        let Some(Event::Delta(d)) = stream_next(&mut watch).await? else { continue };
        removed =
            d.changes.iter().any(|ch| matches!(&ch.change, Some(change::Change::ShardRemoved(id)) if id == "shard-b"));
    }
    Ok(())
}

async fn stream_next(s: &mut tonic::Streaming<prism_proto::control::WatchResponse>) -> anyhow::Result<Option<Event>> {
    let m = tokio::time::timeout(Duration::from_secs(10), s.message()).await??;
    Ok(m.and_then(|m| m.event))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_gateway_replaces_its_stale_instance() -> anyhow::Result<()> {
    let (_cp, mut c) = start_with(config(60_000)).await?;
    register(&mut c, "shard-a", "10.0.0.1:7401").await?;
    register(&mut c, "shard-a", "10.0.0.1:7401").await?;
    let shards = c.list_shards(ListShardsRequest {}).await?.into_inner().shards;
    assert_eq!(shards[0].instances.len(), 1);
    // Same address, new shard id: the old shard loses it (and, empty, goes).
    register(&mut c, "shard-b", "10.0.0.1:7401").await?;
    let shards = c.list_shards(ListShardsRequest {}).await?.into_inner().shards;
    let ids: Vec<&str> = shards.iter().map(|s| s.shard_id.as_str()).collect();
    assert_eq!(ids, ["shard-b"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_registrations_name_their_field() -> anyhow::Result<()> {
    let (_cp, mut c) = start_with(config(60_000)).await?;
    for (shard, endpoint, field) in [
        ("Shard-A", "10.0.0.1:7401", "shard_id"),
        ("", "10.0.0.1:7401", "shard_id"),
        (&"s".repeat(64) as &str, "10.0.0.1:7401", "shard_id"),
        ("shard-a", "", "endpoint"),
        ("shard-a", "10.0.0.1", "endpoint"),
        ("shard-a", "10.0.0.1:0", "endpoint"),
        ("shard-a", "10.0.0.1:99999", "endpoint"),
        ("shard-a", "http://x/:1", "endpoint"),
        ("shard-a", "a b:1", "endpoint"),
    ] {
        let r = c
            .register_shard(RegisterShardRequest {
                shard_id: shard.into(),
                endpoint: endpoint.into(),
                ..Default::default()
            })
            .await;
        refused(r, Code::InvalidArgument, Some(field));
    }
    let hb = c.heartbeat(HeartbeatRequest { shard_id: "shard-a".into(), instance_id: String::new() }).await;
    refused(hb, Code::InvalidArgument, Some("instance_id"));
    let hb = c.heartbeat(HeartbeatRequest { shard_id: "bad id".into(), instance_id: "x".into() }).await;
    refused(hb, Code::InvalidArgument, Some("shard_id"));
    let d = c.deregister_shard(DeregisterShardRequest { shard_id: "shard-a".into(), instance_id: "\n".into() }).await;
    refused(d, Code::InvalidArgument, Some("instance_id"));
    assert!(c.list_shards(ListShardsRequest {}).await?.into_inner().shards.is_empty());
    let r = c.resolve_namespace(ResolveNamespaceRequest { namespace: "acme/none".into() }).await;
    refused(r, Code::NotFound, None);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_survive_a_restart() -> anyhow::Result<()> {
    let (cp, mut c) = start_with(config(60_000)).await?;
    let id = register(&mut c, "shard-a", "10.0.0.1:7401").await?;
    let cp = cp.restart(config(60_000)).await?;
    let mut c = cp.client().await?;
    let shards = c.list_shards(ListShardsRequest {}).await?.into_inner().shards;
    assert_eq!(shards[0].instances[0].instance_id, id);
    c.heartbeat(HeartbeatRequest { shard_id: "shard-a".into(), instance_id: id }).await?;
    Ok(())
}

async fn register_store(
    c: &mut ControlPlaneClient,
    shard: &str,
    endpoint: &str,
    store: &str,
) -> anyhow::Result<String> {
    let req = RegisterShardRequest {
        shard_id: shard.into(),
        endpoint: endpoint.into(),
        store_id: store.into(),
        ..Default::default()
    };
    Ok(c.register_shard(req).await?.into_inner().instance_id)
}

async fn get(c: &mut ControlPlaneClient, name: &str) -> anyhow::Result<Namespace> {
    Ok(c.get_namespace(GetNamespaceRequest { name: name.into() }).await?.into_inner())
}

async fn report_active(c: &mut ControlPlaneClient, ns: &Namespace) -> anyhow::Result<()> {
    c.report_namespace_status(ReportNamespaceStatusRequest {
        name: ns.name.clone(),
        shard_id: ns.shard_id.clone(),
        create_revision: ns.create_revision,
        status: NamespaceStatus::Active as i32,
        reason: "provisioned".into(),
        ..Default::default()
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_namespace_has_one_owner_store_and_is_degraded_while_it_is_away() -> anyhow::Result<()> {
    let (_cp, mut c) = start_with(config(60_000)).await?;
    create_tenant(&mut c, "acme").await?;
    let first = register_store(&mut c, "shard-a", "10.0.0.1:7401", "store-1").await?;
    register_store(&mut c, "shard-a", "10.0.0.2:7401", "store-2").await?;
    let shards = c.list_shards(ListShardsRequest {}).await?.into_inner().shards;
    let stores: Vec<&str> = shards[0].instances.iter().map(|i| i.store_id.as_str()).collect();
    assert_eq!(stores, ["store-1", "store-2"]);

    // Each embedded namespace is given one of the shard's stores, both
    // are used; a shared backend gets none.
    let mut by_store: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for i in 0..8 {
        let ns = create(&mut c, &format!("acme/e{i}"), embedded_spec()).await?;
        report_active(&mut c, &ns).await?;
        by_store.entry(ns.owner_store_id).or_default().push(ns.name);
    }
    assert_eq!(by_store.keys().map(String::as_str).collect::<Vec<_>>(), ["store-1", "store-2"], "{by_store:?}");
    assert_eq!(create(&mut c, "acme/shared", shared_spec()).await?.owner_store_id, "");

    // store-1 leaves: its namespaces are DEGRADED, naming it and where it
    // was; store-2's stay ACTIVE.
    c.deregister_shard(DeregisterShardRequest { shard_id: "shard-a".into(), instance_id: first }).await?;
    for name in &by_store["store-1"] {
        let ns = get(&mut c, name).await?;
        assert_eq!(ns.status, NamespaceStatus::Degraded as i32, "{name}");
        assert_eq!(ns.owner_store_id, "store-1", "{name}");
        assert!(ns.status_reason.contains("store-1 of shard shard-a, last at 10.0.0.1:7401"), "{}", ns.status_reason);
    }
    for name in &by_store["store-2"] {
        assert_eq!(get(&mut c, name).await?.status, NamespaceStatus::Active as i32, "{name}");
    }

    // It comes back at another address: ACTIVE again, same owner. The
    // same store registered again replaces its instance.
    register_store(&mut c, "shard-a", "10.0.0.3:7401", "store-1").await?;
    register_store(&mut c, "shard-a", "10.0.0.4:7401", "store-1").await?;
    for name in &by_store["store-1"] {
        let ns = get(&mut c, name).await?;
        assert_eq!((ns.status, ns.owner_store_id.as_str()), (NamespaceStatus::Active as i32, "store-1"), "{name}");
    }
    let shards = c.list_shards(ListShardsRequest {}).await?.into_inner().shards;
    let endpoints: Vec<&str> = shards[0].instances.iter().map(|i| i.endpoint.as_str()).collect();
    assert_eq!(endpoints, ["10.0.0.2:7401", "10.0.0.4:7401"]);

    // A namespace placed where no instance has a store id is unowned
    // until one registers; with no data yet, its owner may change.
    register(&mut c, "shard-b", "10.0.1.1:7401").await?;
    let pinned = NamespaceSpec {
        placement: Some(Box::new(Placement { pinned_shard: "shard-b".into(), ..Default::default() })),
        ..embedded_spec()
    };
    assert_eq!(create(&mut c, "acme/late", pinned).await?.owner_store_id, "");
    let b9 = register_store(&mut c, "shard-b", "10.0.1.9:7401", "store-9").await?;
    assert_eq!(get(&mut c, "acme/late").await?.owner_store_id, "store-9");
    c.deregister_shard(DeregisterShardRequest { shard_id: "shard-b".into(), instance_id: b9 }).await?;
    let late = get(&mut c, "acme/late").await?;
    assert_eq!((late.owner_store_id.as_str(), late.status), ("", NamespaceStatus::Provisioning as i32));

    // Bad store ids name their field.
    let r = c
        .register_shard(RegisterShardRequest {
            shard_id: "shard-a".into(),
            endpoint: "10.0.0.5:7401".into(),
            store_id: "Not An Id".into(),
            ..Default::default()
        })
        .await;
    refused(r, Code::InvalidArgument, Some("store_id"));
    // So do bad features.
    let r = c
        .register_shard(RegisterShardRequest {
            shard_id: "shard-a".into(),
            endpoint: "10.0.0.5:7401".into(),
            features: vec!["migrate-key-value".into(), "Not A Feature".into()],
            ..Default::default()
        })
        .await;
    refused(r, Code::InvalidArgument, Some("features[1]"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_whose_lease_expires_leaves_its_namespaces_degraded() -> anyhow::Result<()> {
    let (_cp, mut c) = start_with(config(400)).await?;
    create_tenant(&mut c, "acme").await?;
    let kept = register_store(&mut c, "shard-a", "10.0.0.1:7401", "store-1").await?;
    let silent = register_store(&mut c, "shard-a", "10.0.0.2:7401", "store-2").await?;
    let (beating, heartbeats) = keep_alive(&c, vec![("shard-a", kept.clone()), ("shard-a", silent.clone())]);
    let mut lost = Vec::new();
    for i in 0..8 {
        let ns = create(&mut c, &format!("acme/e{i}"), embedded_spec()).await?;
        report_active(&mut c, &ns).await?;
        if ns.owner_store_id == "store-2" {
            lost.push(ns.name);
        }
    }
    assert!(!lost.is_empty());
    // store-1 heartbeats; store-2 falls silent and is swept.
    beating.lock().expect("not poisoned").retain(|(_, instance)| *instance != silent);
    eventually(Duration::from_secs(10), || {
        let (mut c, kept, lost) = (c.clone(), kept.clone(), lost.clone());
        async move {
            c.heartbeat(HeartbeatRequest { shard_id: "shard-a".into(), instance_id: kept }).await?;
            for name in &lost {
                let ns = get(&mut c, name).await?;
                anyhow::ensure!(ns.status == NamespaceStatus::Degraded as i32, "{name}: {}", ns.status_reason);
                anyhow::ensure!(ns.status_reason.contains("store-2"), "{name}: {}", ns.status_reason);
            }
            Ok(())
        }
    })
    .await?;
    heartbeats.abort();
    Ok(())
}

/// A control plane down for longer than a lease does not hold its absence
/// against the gateways, which could not heartbeat meanwhile: right after
/// it restarts nothing is swept (their embedded namespaces stay ACTIVE,
/// their endpoints resolve), heartbeats renew, and an instance that stays
/// silent goes one lease later. (Found by `cli/tests/crash.rs`: the
/// sweep at start removed every instance of a killed control plane's
/// gateways.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_the_leases_that_ran_out_while_it_was_down() -> anyhow::Result<()> {
    const LEASE_MS: u64 = 400;
    let (mut cp, mut c) = start_with(config(LEASE_MS)).await?;
    create_tenant(&mut c, "acme").await?;
    let alive = register_store(&mut c, "shard-a", "10.0.0.1:7401", "store-1").await?;
    register_store(&mut c, "shard-b", "10.0.0.2:7401", "store-2").await?;
    let pinned = NamespaceSpec {
        placement: Some(Box::new(Placement { pinned_shard: "shard-a".into(), ..Default::default() })),
        ..embedded_spec()
    };
    let ns = create(&mut c, "acme/local", pinned).await?;
    report_active(&mut c, &ns).await?;
    let ends: Vec<std::time::SystemTime> = c
        .list_shards(ListShardsRequest {})
        .await?
        .into_inner()
        .shards
        .iter()
        .flat_map(|s| &s.instances)
        .filter_map(|i| i.lease_expire_time.and_then(|t| t.try_into().ok()))
        .collect();
    assert_eq!(ends.len(), 2);

    // Down until every stored lease has run out.
    cp.stop().await?;
    let last = ends.iter().max().copied().unwrap_or(std::time::SystemTime::UNIX_EPOCH);
    eventually(Duration::from_secs(10), || async move {
        anyhow::ensure!(std::time::SystemTime::now() > last, "the leases have not run out yet");
        Ok(())
    })
    .await?;
    let cp = cp.restart(config(LEASE_MS)).await?;
    let mut c = cp.client().await?;
    assert_eq!(cp.plane.expire_leases().await?, 0, "nothing is swept right after a restart");
    let shards = c.list_shards(ListShardsRequest {}).await?.into_inner().shards;
    let ids: Vec<&str> = shards.iter().map(|s| s.shard_id.as_str()).collect();
    assert_eq!(ids, ["shard-a", "shard-b"]);
    assert_eq!(get(&mut c, "acme/local").await?.status, NamespaceStatus::Active as i32);
    let r = c.resolve_namespace(ResolveNamespaceRequest { namespace: "acme/local".into() }).await?.into_inner();
    assert_eq!(r.endpoints, ["10.0.0.1:7401"]);

    // shard-a heartbeats again; shard-b stays silent and goes.
    eventually(Duration::from_secs(10), || {
        let (mut c, alive) = (c.clone(), alive.clone());
        async move {
            c.heartbeat(HeartbeatRequest { shard_id: "shard-a".into(), instance_id: alive }).await?;
            let shards = c.list_shards(ListShardsRequest {}).await?.into_inner().shards;
            let ids: Vec<&str> = shards.iter().map(|s| s.shard_id.as_str()).collect();
            anyhow::ensure!(ids == ["shard-a"], "shards {ids:?}");
            Ok(())
        }
    })
    .await?;
    assert_eq!(get(&mut c, "acme/local").await?.status, NamespaceStatus::Active as i32);
    Ok(())
}

/// Every namespace's shard, by name, read page by page.
async fn all_owners(c: &mut ControlPlaneClient) -> anyhow::Result<BTreeMap<String, String>> {
    let mut all = BTreeMap::new();
    let mut page_token = String::new();
    loop {
        let req = prism_proto::control::ListNamespacesRequest { page_size: 1000, page_token, ..Default::default() };
        let list = c.list_namespaces(req).await?.into_inner();
        all.extend(list.namespaces.into_iter().map(|n| (n.name, n.shard_id)));
        if list.next_page_token.is_empty() {
            return Ok(all);
        }
        page_token = list.next_page_token;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_larger_than_one_commit_moves_in_bounded_commits_that_watchers_follow() -> anyhow::Result<()> {
    use prism_control_plane::registry::SETTLE_BATCH;
    use prism_proto::control::{CreateTenantRequest, QuotaProfile, QuotaSet};

    let (_cp, mut c) = start_with(config(60_000)).await?;
    let quotas = QuotaSet { profile: QuotaProfile::Custom as i32, ..Default::default() };
    c.create_tenant(CreateTenantRequest { tenant_id: "acme".into(), quotas: Some(quotas), ..Default::default() })
        .await?;
    register(&mut c, "shard-a", "10.0.0.1:7401").await?;
    // Enough that about half of them (those shard-b wins) need several
    // commits of SETTLE_BATCH.
    let total = SETTLE_BATCH * 5 / 2;
    let mut creators = tokio::task::JoinSet::new();
    for w in 0..8 {
        let mut c = c.clone();
        creators.spawn(async move {
            for i in (w..total).step_by(8) {
                create(&mut c, &format!("acme/ns-{i:05}"), shared_spec()).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = creators.join_next().await {
        done??;
    }
    let from_revision = common::revision(&mut c).await?;
    let mut stream = c.watch(WatchRequest { from_revision }).await?.into_inner();

    register(&mut c, "shard-b", "10.0.0.2:7401").await?;
    let want: BTreeMap<String, String> = (0..total)
        .map(|i| {
            let name = format!("acme/ns-{i:05}");
            let shard = prism_control_plane::assign::rendezvous(&name, ["shard-a", "shard-b"]).unwrap_or_default();
            (name, shard.to_owned())
        })
        .collect();
    let moving = want.values().filter(|s| *s == "shard-b").count();
    assert!(moving > SETTLE_BATCH, "only {moving} of {total} move: the test needs more than one commit");

    // The watch sees every move, in commits of at most SETTLE_BATCH
    // namespaces, the first of them the shard map's own.
    let (mut seen, mut commits) = (std::collections::BTreeSet::new(), 0);
    while seen.len() < moving {
        let Some(Event::Delta(delta)) = stream_next(&mut stream).await? else { anyhow::bail!("deltas only") };
        let namespaces: Vec<&Namespace> = delta
            .changes
            .iter()
            .filter_map(|ch| match &ch.change {
                Some(change::Change::Namespace(ns)) => Some(ns),
                _ => None,
            })
            .collect();
        if namespaces.is_empty() {
            continue;
        }
        assert!(namespaces.len() <= SETTLE_BATCH, "a commit rewrote {} namespaces", namespaces.len());
        for ns in namespaces {
            assert_eq!(ns.shard_id, "shard-b", "{} moved elsewhere", ns.name);
            seen.insert(ns.name.clone());
        }
        commits += 1;
    }
    assert!(commits >= moving.div_ceil(SETTLE_BATCH), "{moving} moves in {commits} commits");
    assert_eq!(all_owners(&mut c).await?, want);

    // The settling commits are audited as the control plane's own.
    let req = prism_proto::control::ListAuditEventsRequest { action: "SettleShardMap".into(), ..Default::default() };
    let audit = c.list_audit_events(req).await?.into_inner().events;
    assert!(!audit.is_empty(), "no SettleShardMap audit event");
    assert!(audit.iter().all(|e| e.principal == "control-plane" && e.result == "ok"), "{audit:?}");
    Ok(())
}

fn pinned(shard: &str, dedicated: bool, spec: NamespaceSpec) -> NamespaceSpec {
    NamespaceSpec { placement: Some(Box::new(Placement { pinned_shard: shard.into(), dedicated })), ..spec }
}

async fn update(c: &mut ControlPlaneClient, name: &str, spec: NamespaceSpec) -> anyhow::Result<Namespace> {
    let req =
        prism_proto::control::UpdateNamespaceRequest { name: name.into(), spec: Some(spec), expected_revision: 0 };
    Ok(c.update_namespace(req).await?.into_inner())
}

/// Polls until every namespace is where `want` says.
async fn settled_as(c: &ControlPlaneClient, want: &BTreeMap<String, String>) -> anyhow::Result<()> {
    eventually(Duration::from_secs(10), || {
        let mut c = c.clone();
        async move {
            let got = all_owners(&mut c).await?;
            let wrong: Vec<_> = want.iter().filter(|(n, s)| got.get(*n) != Some(*s)).collect();
            anyhow::ensure!(wrong.is_empty(), "not yet where they belong: {wrong:?}");
            Ok(())
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dedicated_shard_sheds_its_hashed_namespaces_and_takes_its_share_back_when_shared() -> anyhow::Result<()> {
    use prism_control_plane::assign::rendezvous;

    let (_cp, mut c) = start_with(config(60_000)).await?;
    create_tenant(&mut c, "acme").await?;
    for (shard, at) in [("shard-a", "10.0.0.1:7401"), ("shard-b", "10.0.0.2:7401"), ("shard-c", "10.0.0.3:7401")] {
        register(&mut c, shard, at).await?;
    }
    for i in 0..60 {
        create(&mut c, &format!("acme/shared-{i}"), shared_spec()).await?;
    }
    let before = all_owners(&mut c).await?;
    let on_c = before.values().filter(|s| *s == "shard-c").count();
    assert!(on_c > 0, "the test needs hashed namespaces on shard-c: {before:?}");

    let solo = create(&mut c, "acme/solo", pinned("shard-c", true, shared_spec())).await?;
    assert_eq!(solo.shard_id, "shard-c");
    // The hashed ones on shard-c go to their winner among the others; the
    // rest stay where they were.
    let mut want: BTreeMap<String, String> = before
        .iter()
        .map(|(n, s)| {
            let to = if s == "shard-c" { rendezvous(n, ["shard-a", "shard-b"]).unwrap_or_default() } else { s };
            (n.clone(), to.to_owned())
        })
        .collect();
    want.insert("acme/solo".into(), "shard-c".into());
    settled_as(&c, &want).await?;
    // A new hashed namespace never lands there either.
    for i in 60..80 {
        let ns = create(&mut c, &format!("acme/shared-{i}"), shared_spec()).await?;
        assert_ne!(ns.shard_id, "shard-c", "{} on the dedicated shard", ns.name);
        want.insert(ns.name, ns.shard_id);
    }

    // Shared again: the hash takes its share back, as when a shard joins.
    update(&mut c, "acme/solo", pinned("shard-c", false, shared_spec())).await?;
    let all = ["shard-a", "shard-b", "shard-c"];
    for (n, s) in want.iter_mut().filter(|(n, _)| *n != "acme/solo") {
        *s = rendezvous(n, all).unwrap_or_default().to_owned();
    }
    assert!(want.values().filter(|s| *s == "shard-c").count() > 1, "some move back: {want:?}");
    settled_as(&c, &want).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dedicated_shard_is_refused_while_others_use_it_and_refuses_them_after() -> anyhow::Result<()> {
    use prism_proto::control::{MigrateNamespaceRequest, MigrationTarget};

    let (_cp, mut c) = start_with(config(60_000)).await?;
    create_tenant(&mut c, "acme").await?;
    for (shard, at) in [("shard-a", "10.0.0.1:7401"), ("shard-b", "10.0.0.2:7401"), ("shard-c", "10.0.0.3:7401")] {
        register(&mut c, shard, at).await?;
    }
    let message = |status: tonic::Status| status.message().to_owned();

    // A dedication names the shard it dedicates.
    let e = c.create_namespace(CreateNamespaceRequest {
        name: "acme/loose".into(),
        spec: Some(NamespaceSpec {
            placement: Some(Box::new(Placement { dedicated: true, ..Default::default() })),
            ..shared_spec()
        }),
    });
    refused(e.await, Code::InvalidArgument, Some("spec.placement.dedicated"));

    // Once shard-b is dedicated, no other namespace is pinned there: not
    // by a create, not by a migration.
    create(&mut c, "acme/solo", pinned("shard-b", true, shared_spec())).await?;
    for dedicated in [false, true] {
        let spec = pinned("shard-b", dedicated, shared_spec());
        let e = c.create_namespace(CreateNamespaceRequest { name: "acme/other".into(), spec: Some(spec) }).await;
        let why = message(refused(e, Code::FailedPrecondition, None));
        assert!(why.starts_with("spec.placement.pinned_shard: ") && why.contains("acme/solo"), "{why}");
    }
    let mover = create(&mut c, "acme/mover", pinned("shard-a", false, shared_spec())).await?;
    report_active(&mut c, &mover).await?;
    let target = MigrationTarget { pinned_shard: "shard-b".into(), ..Default::default() };
    let req = MigrateNamespaceRequest { name: "acme/mover".into(), target: Some(target), expected_revision: 0 };
    let why = message(refused(c.migrate_namespace(req).await, Code::FailedPrecondition, None));
    assert!(why.starts_with("target.pinned_shard: ") && why.contains("acme/solo"), "{why}");

    // A move to a new pin carries the pin only: a dedication changes alone.
    let req = prism_proto::control::UpdateNamespaceRequest {
        name: "acme/mover".into(),
        spec: Some(pinned("shard-c", true, shared_spec())),
        expected_revision: 0,
    };
    refused(c.update_namespace(req).await, Code::InvalidArgument, Some("spec.placement.dedicated"));

    // shard-a has two other pins: dedicating it is refused naming one.
    create(&mut c, "acme/pin-2", pinned("shard-a", false, shared_spec())).await?;
    create(&mut c, "acme/pin-3", pinned("shard-a", false, shared_spec())).await?;
    let req = prism_proto::control::UpdateNamespaceRequest {
        name: "acme/mover".into(),
        spec: Some(pinned("shard-a", true, shared_spec())),
        expected_revision: 0,
    };
    let why = message(refused(c.update_namespace(req).await, Code::FailedPrecondition, None));
    assert!(why.starts_with("spec.placement.dedicated: ") && why.contains("acme/pin-2 and 1 other"), "{why}");

    // shard-c holds a provisioned, hashed embedded namespace: its data is
    // on that shard's disk, so dedicating shard-c waits for it to go.
    let local = (0..)
        .map(|i| format!("acme/local-{i}"))
        .find(|n| prism_control_plane::assign::rendezvous(n, ["shard-a", "shard-c"]) == Some("shard-c"))
        .unwrap_or_default();
    let local = create(&mut c, &local, embedded_spec()).await?;
    assert_eq!(local.shard_id, "shard-c");
    report_active(&mut c, &local).await?;
    let e = c.create_namespace(CreateNamespaceRequest {
        name: "acme/solo-c".into(),
        spec: Some(pinned("shard-c", true, shared_spec())),
    });
    let why = message(refused(e.await, Code::FailedPrecondition, None));
    assert!(why.starts_with("spec.placement.dedicated: ") && why.contains(&local.name), "{why}");
    assert!(why.contains("move or delete"), "{why}");
    assert_eq!(get(&mut c, &local.name).await?.shard_id, "shard-c", "it stays");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dedication_survives_a_restart() -> anyhow::Result<()> {
    let (cp, mut c) = start_with(config(60_000)).await?;
    create_tenant(&mut c, "acme").await?;
    register(&mut c, "shard-a", "10.0.0.1:7401").await?;
    register(&mut c, "shard-b", "10.0.0.2:7401").await?;
    create(&mut c, "acme/solo", pinned("shard-b", true, shared_spec())).await?;
    // A new replica reads the pins whole (not from the change log).
    let cp = cp.restart(config(60_000)).await?;
    let mut c = cp.client().await?;
    let spec = pinned("shard-b", false, shared_spec());
    let e = c.create_namespace(CreateNamespaceRequest { name: "acme/other".into(), spec: Some(spec) }).await;
    let why = refused(e, Code::FailedPrecondition, None).message().to_owned();
    assert!(why.contains("acme/solo"), "{why}");
    for i in 0..20 {
        let ns = create(&mut c, &format!("acme/shared-{i}"), shared_spec()).await?;
        assert_eq!(ns.shard_id, "shard-a", "{} placed on the dedicated shard", ns.name);
    }
    Ok(())
}
