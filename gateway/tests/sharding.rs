//! Gateways in the shard registry: they register themselves, a misrouted
//! request names the owner's endpoints, and when shards come and go the
//! namespaces of a shared backend move — the losing shard stops serving
//! them and forgets what it cached.

use std::time::Duration;

use anyhow::Context;
use prism_control_plane::ControlPlaneConfig;
use prism_proto::control::backend_config::Config;
use prism_proto::control::{
    Abstraction, Backend, BackendConfig, CreateNamespaceRequest, CreateTenantRequest, GetNamespaceRequest,
    ListShardsRequest, NamespaceSpec, NamespaceStatus, Policies, PostgresConfig, ResolveNamespaceRequest,
};
use prism_proto::kv;
use prism_testkit::postgres::{PostgresServer, skip_reason};
use prism_testkit::{ControlPlaneHandle, GatewayHandle, admin_token, eventually};
use tonic::Code;
use tonic_types::StatusExt;

const CONVERGE: Duration = Duration::from_secs(30);

fn embedded() -> NamespaceSpec {
    NamespaceSpec { abstraction: Abstraction::KeyValue as i32, backend: Backend::Embedded as i32, ..Default::default() }
}

fn postgres(dsn: &str) -> NamespaceSpec {
    NamespaceSpec {
        abstraction: Abstraction::KeyValue as i32,
        backend: Backend::Postgres as i32,
        backend_config: Some(Box::new(BackendConfig {
            config: Some(Config::Postgres(PostgresConfig { dsn: dsn.into(), ..Default::default() })),
        })),
        policies: Some(Box::new(Policies {
            cache_enabled: true,
            cache_ttl: Some(prost_types::Duration { seconds: 3600, nanos: 0 }),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn put(ns: &str, id: &str, value: &str) -> kv::PutItemsRequest {
    kv::PutItemsRequest {
        namespace: ns.into(),
        id: id.into(),
        items: vec![kv::Item { key: b"k".to_vec(), value: value.as_bytes().to_vec(), ..Default::default() }],
        ..Default::default()
    }
}

fn get(ns: &str, id: &str) -> kv::GetItemsRequest {
    kv::GetItemsRequest { namespace: ns.into(), id: id.into(), ..Default::default() }
}

async fn value_at(gw: &GatewayHandle, ns: &str, id: &str) -> Result<String, tonic::Status> {
    let mut c = gw.kv(Some(&admin_token())).await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let items = c.get_items(get(ns, id)).await?.into_inner().items;
    Ok(items.first().map(|i| String::from_utf8_lossy(&i.value).into_owned()).unwrap_or_default())
}

/// A gateway with forwarding off: a misrouted call is refused with
/// WRONG_SHARD, which these tests look at (forwarding: tests/forwarding.rs).
async fn redirecting(cp: &ControlPlaneHandle, shard: &str) -> anyhow::Result<GatewayHandle> {
    GatewayHandle::start_with(&cp.endpoint(), shard, |c| c.forwarding.enabled = false).await
}

/// The shard ids the control plane lists, with their endpoints.
async fn shards(cp: &ControlPlaneHandle) -> anyhow::Result<Vec<(String, Vec<String>)>> {
    let mut c = cp.client().await?;
    let list = c.list_shards(ListShardsRequest {}).await?.into_inner().shards;
    Ok(list.into_iter().map(|s| (s.shard_id, s.instances.into_iter().map(|i| i.endpoint).collect())).collect())
}

async fn active(cp: &ControlPlaneHandle, name: &str) -> anyhow::Result<prism_proto::control::Namespace> {
    let c = cp.client().await?;
    eventually(CONVERGE, || {
        let mut c = c.clone();
        async move {
            let ns = c.get_namespace(GetNamespaceRequest { name: name.into() }).await?.into_inner();
            anyhow::ensure!(
                ns.status == NamespaceStatus::Active as i32,
                "{name} is {}: {}",
                ns.status,
                ns.status_reason
            );
            Ok(ns)
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_register_and_misroutes_name_the_owners_endpoints() -> anyhow::Result<()> {
    let cp = ControlPlaneHandle::start_with(ControlPlaneConfig::default()).await?;
    let mut a = redirecting(&cp, "shard-a").await?;
    let b = redirecting(&cp, "shard-b").await?;
    eventually(CONVERGE, || async {
        let got = shards(&cp).await?;
        let want = vec![("shard-a".to_owned(), vec![a.endpoint()]), ("shard-b".to_owned(), vec![b.endpoint()])];
        anyhow::ensure!(got == want, "registry {got:?}");
        // The registry has the instance as soon as the control plane
        // committed it; the gateway keeps its id when the answer arrives.
        anyhow::ensure!(a.gateway.registration.instance_id().is_some(), "shard-a's gateway has no instance id yet");
        Ok(())
    })
    .await?;

    let mut c = cp.client().await?;
    c.create_tenant(CreateTenantRequest { tenant_id: "acme".into(), ..Default::default() }).await?;
    for i in 0..8 {
        c.create_namespace(CreateNamespaceRequest { name: format!("acme/ns-{i}"), spec: Some(embedded()) }).await?;
    }
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..8 {
        let name = format!("acme/ns-{i}");
        let ns = active(&cp, &name).await?;
        seen.insert(ns.shard_id.clone());
        let resolved = c.resolve_namespace(ResolveNamespaceRequest { namespace: name.clone() }).await?.into_inner();
        let (owner, other) = if ns.shard_id == "shard-a" { (&a, &b) } else { (&b, &a) };
        assert_eq!(resolved.endpoints, [owner.endpoint()]);
        owner.caught_up(ns.revision).await?;
        other.caught_up(ns.revision).await?;
        let e = value_at(other, &name, "r").await.expect_err("misrouted");
        assert_eq!(e.code(), Code::FailedPrecondition);
        let info = e.get_details_error_info().context("error info")?;
        assert_eq!(info.reason, "WRONG_SHARD");
        assert_eq!(info.metadata.get("shard_id"), Some(&ns.shard_id));
        assert_eq!(info.metadata.get("endpoints"), Some(&owner.endpoint()));
        assert!(info.metadata.get("revision").and_then(|r| r.parse::<u64>().ok()).is_some_and(|r| r >= ns.revision));
    }
    assert_eq!(seen.len(), 2, "8 namespaces over 2 shards use both");

    // A clean stop deregisters at once (no waiting for the lease).
    a.stop().await?;
    let got = shards(&cp).await?;
    assert_eq!(got, [("shard-b".to_owned(), vec![b.endpoint()])]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_namespaces_move_with_the_shards_and_the_loser_forgets_its_cache() -> anyhow::Result<()> {
    let Some(server) = PostgresServer::start_or_skip()? else {
        println!("{}", skip_reason());
        return Ok(());
    };
    let cp = ControlPlaneHandle::start_with(ControlPlaneConfig::default()).await?;
    let a = redirecting(&cp, "shard-a").await?;
    eventually(CONVERGE, || async {
        anyhow::ensure!(shards(&cp).await?.len() == 1, "shard-a not registered yet");
        Ok(())
    })
    .await?;
    let mut c = cp.client().await?;
    c.create_tenant(CreateTenantRequest { tenant_id: "acme".into(), ..Default::default() }).await?;
    let names: Vec<String> = (0..12).map(|i| format!("acme/pg-{i}")).collect();
    for name in &names {
        c.create_namespace(CreateNamespaceRequest { name: name.clone(), spec: Some(postgres(&server.dsn())) }).await?;
    }
    for name in &names {
        let ns = active(&cp, name).await?;
        assert_eq!(ns.shard_id, "shard-a");
        a.caught_up(ns.revision).await?;
        let mut kv = a.kv(Some(&admin_token())).await?;
        kv.put_items(put(name, "r", "v1")).await?;
        // Cached on shard-a.
        assert_eq!(value_at(&a, name, "r").await?, "v1");
    }

    // shard-b joins: about half the namespaces move to it, ACTIVE, and it
    // serves them from the shared backend; shard-a refuses them.
    let mut b = redirecting(&cp, "shard-b").await?;
    let moved: Vec<String> = eventually(CONVERGE, || async {
        let mut c = cp.client().await?;
        let mut moved = Vec::new();
        for name in &names {
            let ns = c.get_namespace(GetNamespaceRequest { name: name.clone() }).await?.into_inner();
            if ns.shard_id == "shard-b" {
                moved.push(name.clone());
            }
        }
        anyhow::ensure!(!moved.is_empty(), "nothing moved yet");
        Ok(moved)
    })
    .await?;
    assert!(moved.len() < names.len(), "rendezvous keeps some on shard-a");
    let revision =
        cp.client().await?.get_namespace(GetNamespaceRequest { name: moved[0].clone() }).await?.into_inner().revision;
    a.caught_up(revision).await?;
    b.caught_up(revision).await?;
    for name in &moved {
        assert_eq!(value_at(&b, name, "r").await?, "v1", "{name} is served by its new owner");
        let e = value_at(&a, name, "r").await.expect_err("moved away");
        assert_eq!(e.get_details_error_info().map(|i| i.reason), Some("WRONG_SHARD".into()));
        // Written through the new owner.
        b.kv(Some(&admin_token())).await?.put_items(put(name, "r", "v2")).await?;
    }

    // shard-b leaves: its namespaces come back to shard-a, which must not
    // answer from what it cached before they left.
    b.stop().await?;
    let back = eventually(CONVERGE, || async {
        let mut c = cp.client().await?;
        let ns = c.get_namespace(GetNamespaceRequest { name: moved[0].clone() }).await?.into_inner();
        anyhow::ensure!(ns.shard_id == "shard-a", "{} still on {}", ns.name, ns.shard_id);
        Ok(ns.revision)
    })
    .await?;
    a.caught_up(back).await?;
    for name in &moved {
        assert_eq!(value_at(&a, name, "r").await?, "v2", "{name}: no stale cached read after moving back");
    }
    Ok(())
}
