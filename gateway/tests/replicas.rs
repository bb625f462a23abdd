//! One writer per embedded namespace: a shard with two replicas (two
//! gateways registered with one shard id, each with its own data
//! directory) serves an embedded namespace from exactly one of them, its
//! owner store, whatever replica a call reaches. Through real servers in
//! process: a control plane, the two gateways, and the routing client
//! `Prism` spreading its calls over both.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, ensure};
use prism_client::{Prism, RetryPolicy};
use prism_control_plane::ControlPlaneConfig;
use prism_proto::control::{
    Abstraction, Backend, CreateNamespaceRequest, CreateTenantRequest, GetNamespaceRequest, ListShardsRequest,
    Namespace, NamespaceSpec, NamespaceStatus, Placement,
};
use prism_proto::kv;
use prism_testkit::{ControlPlaneHandle, GatewayHandle, TEST_SECRET, admin_token, eventually};
use tonic::Code;

const SHARD: &str = "shard-0";
const NS: &str = "acme/profiles";
const KEYS: usize = 60;
const WAIT: Duration = Duration::from_secs(20);

fn spec() -> NamespaceSpec {
    NamespaceSpec {
        abstraction: Abstraction::KeyValue as i32,
        backend: Backend::Embedded as i32,
        placement: Some(Box::new(Placement { pinned_shard: SHARD.into(), ..Default::default() })),
        ..Default::default()
    }
}

async fn replica(cp: &str, data_dir: &Path) -> anyhow::Result<GatewayHandle> {
    let dir = data_dir.to_owned();
    GatewayHandle::start_with(cp, SHARD, move |c| c.data_dir = Some(dir)).await
}

fn put(id: &str, value: &str) -> kv::PutItemsRequest {
    kv::PutItemsRequest {
        namespace: NS.into(),
        id: id.into(),
        items: vec![kv::Item { key: b"k".to_vec(), value: value.as_bytes().to_vec(), ..Default::default() }],
        ..Default::default()
    }
}

fn get(id: &str) -> kv::GetItemsRequest {
    kv::GetItemsRequest { namespace: NS.into(), id: id.into(), ..Default::default() }
}

fn value_of(response: &kv::GetItemsResponse) -> Option<String> {
    response.items.first().map(|i| String::from_utf8_lossy(&i.value).into_owned())
}

async fn namespace(cp: &ControlPlaneHandle) -> anyhow::Result<Namespace> {
    Ok(cp.client().await?.get_namespace(GetNamespaceRequest { name: NS.into() }).await?.into_inner())
}

/// Waits until the namespace is `status` and both `gateways` have seen
/// that revision.
async fn wait_for(
    cp: &ControlPlaneHandle,
    status: NamespaceStatus,
    gateways: &[&GatewayHandle],
) -> anyhow::Result<Namespace> {
    let ns = eventually(WAIT, || async {
        let ns = namespace(cp).await?;
        ensure!(
            ns.status == status as i32,
            "namespace is {:?}: {}",
            NamespaceStatus::try_from(ns.status),
            ns.status_reason
        );
        Ok(ns)
    })
    .await?;
    for g in gateways {
        g.caught_up(ns.revision).await?;
    }
    Ok(ns)
}

/// Calls `g` forwarded to another gateway, from its `/metrics`.
async fn forwarded_calls(g: &GatewayHandle) -> anyhow::Result<u64> {
    let text = g.metrics().await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("prism_gateway_forwarded_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64)
}

/// A direct get on one gateway (no routing, no retry).
async fn get_on(g: &GatewayHandle, id: &str) -> Result<Option<String>, tonic::Status> {
    let token = admin_token();
    let mut client = g.kv(Some(&token)).await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    client.get_items(get(id)).await.map(|r| value_of(r.get_ref()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_serve_an_embedded_namespace_from_its_one_owner() -> anyhow::Result<()> {
    let mut config = ControlPlaneConfig::default();
    config.auth.hs256_secret = Some(TEST_SECRET.into());
    let cp = ControlPlaneHandle::start_with(config).await?;
    let dirs = [tempfile::tempdir()?, tempfile::tempdir()?];
    let mut replicas =
        vec![replica(&cp.endpoint(), dirs[0].path()).await?, replica(&cp.endpoint(), dirs[1].path()).await?];
    eventually(WAIT, || async {
        let shards = cp.client().await?.list_shards(ListShardsRequest {}).await?.into_inner().shards;
        let n = shards.iter().find(|s| s.shard_id == SHARD).map_or(0, |s| s.instances.len());
        ensure!(n == 2, "{n} instances of {SHARD} registered");
        Ok(())
    })
    .await?;

    let mut admin = cp.client().await?;
    admin.create_tenant(CreateTenantRequest { tenant_id: "acme".into(), ..Default::default() }).await?;
    admin.create_namespace(CreateNamespaceRequest { name: NS.into(), spec: Some(spec()) }).await?;
    let ns = wait_for(&cp, NamespaceStatus::Active, &[&replicas[0], &replicas[1]]).await?;
    // The owner is one of the two stores, recorded in the metadata.
    let owner = replicas
        .iter()
        .position(|g| *g.gateway.store_id == *ns.owner_store_id)
        .with_context(|| format!("owner store {:?} is neither replica", ns.owner_store_id))?;
    let other = 1 - owner;
    let owner_store = ns.owner_store_id.clone();

    // Two routing clients: one follows the watch, which names the owner
    // store and each instance's, and calls the owner directly; one resolves
    // on demand and spreads its calls over both replicas in turn. One
    // writes what the other reads, then the other way round: every read
    // sees the last write, round after round.
    let token = admin_token();
    let prism = Prism::builder(&cp.endpoint()).token(Some(&token)).build()?;
    let spreading = Prism::builder(&cp.endpoint()).token(Some(&token)).watch(false).build()?;
    for round in 0..3 {
        let (writer, reader) = if round % 2 == 0 { (&prism, &spreading) } else { (&spreading, &prism) };
        for i in 0..KEYS {
            let (id, value) = (format!("id-{i}"), format!("round-{round}-{i}"));
            writer.kv().put_items(put(&id, &value)).await?;
            let got = value_of(&reader.kv().get_items(get(&id)).await?);
            ensure!(got.as_deref() == Some(value.as_str()), "{id} after writing {value}: read {got:?}");
            let got = value_of(&writer.kv().get_items(get(&id)).await?);
            ensure!(got.as_deref() == Some(value.as_str()), "{id} after writing {value}: read back {got:?}");
        }
    }
    // The spreading client's calls to the other replica were forwarded;
    // the watching client's go to the owner.
    let forwarded = forwarded_calls(&replicas[other]).await?;
    ensure!(forwarded >= KEYS as u64, "the non-owner forwarded {forwarded} calls");
    ensure!(forwarded_calls(&replicas[owner]).await? == 0, "the owner forwards nothing");
    for i in 0..KEYS {
        prism.kv().get_items(get(&format!("id-{i}"))).await?;
    }
    let after = forwarded_calls(&replicas[other]).await?;
    ensure!(after == forwarded, "the watching client calls the owner directly: {forwarded} then {after}");
    // Each replica answers alike when called directly: the non-owner
    // forwards to the owner, never reads its own store.
    for i in (0..KEYS).step_by(7) {
        let id = format!("id-{i}");
        let want = Some(format!("round-2-{i}"));
        ensure!(get_on(&replicas[owner], &id).await? == want, "owner's {id}");
        ensure!(get_on(&replicas[other], &id).await? == want, "other replica's {id}");
    }

    // The owner stops: the other replica does not serve from its own,
    // empty store. It answers UNAVAILABLE naming the owner, and the
    // namespace is DEGRADED saying why.
    let mut stopped = replicas.remove(owner);
    stopped.stop().await?;
    drop(stopped);
    let survivor = &replicas[0];
    let degraded = wait_for(&cp, NamespaceStatus::Degraded, &[survivor]).await?;
    ensure!(
        degraded.status_reason.contains(&owner_store) && degraded.status_reason.contains("not registered"),
        "reason: {}",
        degraded.status_reason
    );
    ensure!(degraded.owner_store_id == owner_store, "the owner stays recorded");
    let refused = get_on(survivor, "id-1").await.expect_err("no owner, no answer");
    ensure!(refused.code() == Code::Unavailable, "{refused:?}");
    ensure!(refused.message().contains(&owner_store), "{}", refused.message());
    let write = survivor.kv(Some(&token)).await?.put_items(put("id-1", "lost")).await.expect_err("refused");
    ensure!(write.code() == Code::Unavailable, "{write:?}");
    let brief = RetryPolicy { max_attempts: 2, deadline: Duration::from_secs(3), ..RetryPolicy::default() };
    let impatient = Prism::builder(&cp.endpoint()).token(Some(&token)).retry(brief).build()?;
    let routed = impatient.kv().get_items(get("id-1")).await.expect_err("unavailable through the client too");
    ensure!(routed.status().map(tonic::Status::code) == Some(Code::Unavailable), "{routed}");

    // The owner comes back on its data directory (at another port): the
    // namespace is ACTIVE again and every key is there, through either
    // replica.
    let back = replica(&cp.endpoint(), dirs[owner].path()).await?;
    ensure!(*back.gateway.store_id == *owner_store, "same directory, same store id");
    let ns = wait_for(&cp, NamespaceStatus::Active, &[&back, survivor]).await?;
    ensure!(ns.owner_store_id == owner_store, "the owner did not change");
    eventually(WAIT, || async {
        let got = value_of(&prism.kv().get_items(get("id-0")).await?);
        ensure!(got.as_deref() == Some("round-2-0"), "id-0 read {got:?}");
        Ok(())
    })
    .await?;
    for i in 0..KEYS {
        let id = format!("id-{i}");
        for client in [&prism, &spreading] {
            let got = value_of(&client.kv().get_items(get(&id)).await?);
            ensure!(got == Some(format!("round-2-{i}")), "{id} after the restart: {got:?}");
        }
    }
    ensure!(get_on(survivor, "id-3").await?.as_deref() == Some("round-2-3"), "the other replica forwards again");
    ensure!(get_on(&back, "id-3").await?.as_deref() == Some("round-2-3"), "the owner serves");
    Ok(())
}
