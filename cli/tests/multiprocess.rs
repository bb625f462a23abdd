//! Sharding across real processes: a control plane, four gateway processes
//! (two shards × two replicas) on one PostgreSQL, and a `prism-client`
//! driving 200 namespaces while one replica is killed (SIGKILL, no
//! deregistration: its lease must expire) and while a third shard joins
//! and takes its share. Every call the driver makes must succeed — the
//! client retries what was in flight on the killed process, follows
//! redirects of namespaces that moved — and every read must return the
//! value last written. And an embedded namespace on a shard of two
//! replicas: served by its owner alone, UNAVAILABLE (never empty) while
//! the owner is killed, whole again when it restarts on its directory.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, ensure};
use prism_client::proto::control::backend_config::Config;
use prism_client::proto::control::{
    Abstraction, Backend, BackendConfig, CreateNamespaceRequest, CreateTenantRequest, GetNamespaceRequest,
    ListNamespacesRequest, ListShardsRequest, Namespace, NamespaceSpec, NamespaceStatus, PostgresConfig,
};
use prism_client::proto::kv;
use prism_client::{Prism, RetryPolicy};
use prism_testkit::postgres::{PostgresServer, skip_reason};
use prism_testkit::{admin_token, eventually};

use crate::common::{Process, control_plane, gateway_on};

const NAMESPACES: usize = 200;
const DRIVERS: usize = 8;
const CONVERGE: Duration = Duration::from_secs(60);

/// A gateway of `shard`, calling the control plane with a shard token read
/// from a file (`prism token create … --role shard > file`).
fn gateway(cp: &str, shard: &str, dir: &Path) -> anyhow::Result<Process> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let data = dir.join(format!("{shard}-{}", NEXT.fetch_add(1, Ordering::Relaxed)));
    gateway_on(cp, shard, dir, &data, "warn")
}

fn spec(dsn: &str) -> NamespaceSpec {
    NamespaceSpec {
        abstraction: Abstraction::KeyValue as i32,
        backend: Backend::Postgres as i32,
        backend_config: Some(Box::new(BackendConfig {
            config: Some(Config::Postgres(PostgresConfig { dsn: dsn.into(), pool_size: 4, ..Default::default() })),
        })),
        ..Default::default()
    }
}

/// Instances per shard, as the control plane lists them.
async fn instances(client: &Prism) -> anyhow::Result<BTreeMap<String, usize>> {
    let shards = client.control_plane().list_shards(ListShardsRequest {}).await?.into_inner().shards;
    Ok(shards.into_iter().map(|s| (s.shard_id, s.instances.len())).collect())
}

/// Namespaces per shard, and whether every one is ACTIVE.
async fn placement(client: &Prism) -> anyhow::Result<(BTreeMap<String, usize>, bool)> {
    let req = ListNamespacesRequest { tenant_id: "acme".into(), page_size: 1000, ..Default::default() };
    let list = client.control_plane().list_namespaces(req).await?.into_inner().namespaces;
    let mut per_shard = BTreeMap::new();
    for ns in &list {
        *per_shard.entry(ns.shard_id.clone()).or_default() += 1;
    }
    let all_active = list.len() == NAMESPACES && list.iter().all(|n| n.status == NamespaceStatus::Active as i32);
    Ok((per_shard, all_active))
}

fn value_of(items: &[kv::Item]) -> String {
    items.first().map(|i| String::from_utf8_lossy(&i.value).into_owned()).unwrap_or_default()
}

/// Writes and reads back the namespaces `i ≡ driver (mod DRIVERS)` in
/// turn until `stop`; every failure and every wrong read is recorded.
async fn drive(
    client: Prism,
    driver: usize,
    stop: Arc<AtomicBool>,
    ops: Arc<AtomicU64>,
    failures: Arc<std::sync::Mutex<Vec<String>>>,
) -> BTreeMap<String, String> {
    let mine: Vec<String> = (driver..NAMESPACES).step_by(DRIVERS).map(|i| format!("acme/ns-{i}")).collect();
    let mut last = BTreeMap::new();
    let kv = client.kv();
    let mut round = 0u64;
    while !stop.load(Ordering::Relaxed) {
        round += 1;
        for ns in &mine {
            let value = format!("{driver}-{round}");
            let put = kv::PutItemsRequest {
                namespace: ns.clone(),
                id: "record".into(),
                items: vec![kv::Item { key: Vec::new(), value: value.clone().into_bytes(), ..Default::default() }],
                ..Default::default()
            };
            if let Err(e) = kv.put_items(put).await {
                failures.lock().map(|mut f| f.push(format!("put {ns}: {e}"))).ok();
                continue;
            }
            last.insert(ns.clone(), value.clone());
            let get = kv::GetItemsRequest { namespace: ns.clone(), id: "record".into(), ..Default::default() };
            match kv.get_items(get).await {
                Ok(r) if value_of(&r.items) == value => {}
                Ok(r) => failures
                    .lock()
                    .map(|mut f| f.push(format!("get {ns}: {:?}, wrote {value}", value_of(&r.items))))
                    .unwrap_or(()),
                Err(e) => failures.lock().map(|mut f| f.push(format!("get {ns}: {e}"))).unwrap_or(()),
            }
            ops.fetch_add(2, Ordering::Relaxed);
        }
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_keep_working_while_a_replica_dies_and_a_shard_joins() -> anyhow::Result<()> {
    let Some(pg) = PostgresServer::start_or_skip()? else {
        println!("{}", skip_reason());
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    // Deployed as an operator would: one secret file, each gateway with a
    // shard token of its own; a short lease, so the killed replica leaves
    // the registry quickly.
    let cp_proc = control_plane(dir.path(), "127.0.0.1:0", "warn")?;
    let cp = cp_proc.addr.clone();
    let mut a1 = gateway(&cp, "shard-a", dir.path())?;
    let _a2 = gateway(&cp, "shard-a", dir.path())?;
    let _b1 = gateway(&cp, "shard-b", dir.path())?;
    let _b2 = gateway(&cp, "shard-b", dir.path())?;

    let token = admin_token();
    let retry = RetryPolicy { max_attempts: 8, deadline: Duration::from_secs(30), ..RetryPolicy::default() };
    let client = Prism::builder(&cp).token(Some(&token)).retry(retry).build()?;
    eventually(CONVERGE, || async {
        let got = instances(&client).await?;
        ensure!(got == BTreeMap::from([("shard-a".into(), 2), ("shard-b".into(), 2)]), "registry {got:?}");
        Ok(())
    })
    .await?;

    let mut cp_client = client.control_plane();
    cp_client.create_tenant(CreateTenantRequest { tenant_id: "acme".into(), ..Default::default() }).await?;
    for i in 0..NAMESPACES {
        let req = CreateNamespaceRequest { name: format!("acme/ns-{i}"), spec: Some(spec(&pg.dsn())) };
        cp_client.create_namespace(req).await?;
    }
    let (before, _) = eventually(CONVERGE, || async {
        let (per_shard, active) = placement(&client).await?;
        ensure!(active, "not all ACTIVE yet: {per_shard:?}");
        Ok((per_shard, active))
    })
    .await?;
    ensure!(before.len() == 2, "both shards own namespaces: {before:?}");

    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let drivers: Vec<_> = (0..DRIVERS)
        .map(|d| tokio::spawn(drive(client.clone(), d, stop.clone(), ops.clone(), failures.clone())))
        .collect();
    let progressed = |from: u64, by: u64| {
        let ops = ops.clone();
        async move {
            eventually(CONVERGE, || async {
                let now = ops.load(Ordering::Relaxed);
                ensure!(now >= from + by, "{now} operations so far");
                Ok(())
            })
            .await
        }
    };
    progressed(0, 2 * NAMESPACES as u64).await?;

    // One replica of shard-a dies without a word.
    a1.kill();
    eventually(CONVERGE, || async {
        let got = instances(&client).await?;
        ensure!(got.get("shard-a") == Some(&1), "registry {got:?}");
        Ok(())
    })
    .await?;
    progressed(ops.load(Ordering::Relaxed), 2 * NAMESPACES as u64).await?;

    // A third shard joins and takes its rendezvous share.
    let _c1 = gateway(&cp, "shard-c", dir.path())?;
    let (after, _) = eventually(CONVERGE, || async {
        let (per_shard, active) = placement(&client).await?;
        ensure!(active && per_shard.get("shard-c").is_some_and(|n| *n > 0), "shard-c owns nothing yet: {per_shard:?}");
        Ok((per_shard, active))
    })
    .await?;
    progressed(ops.load(Ordering::Relaxed), 2 * NAMESPACES as u64).await?;

    stop.store(true, Ordering::Relaxed);
    let mut last = BTreeMap::new();
    for d in drivers {
        last.extend(d.await?);
    }
    let failures = failures.lock().map(|f| f.clone()).unwrap_or_default();
    ensure!(failures.is_empty(), "{} calls failed, first: {:?}", failures.len(), &failures[..failures.len().min(5)]);

    // Every namespace holds what was last written, read through a fresh
    // client that knows nothing yet.
    let fresh = Prism::builder(&cp).token(Some(&token)).build()?;
    for (ns, value) in &last {
        let get = kv::GetItemsRequest { namespace: ns.clone(), id: "record".into(), ..Default::default() };
        assert_eq!(&value_of(&fresh.kv().get_items(get).await?.items), value, "{ns}");
    }
    assert_eq!(last.len(), NAMESPACES);
    let moved = after.get("shard-c").copied().unwrap_or(0);
    // ≈ 1/3 of 200 move to the third shard.
    assert!((35..=100).contains(&moved), "{moved} namespaces moved to shard-c: {before:?} → {after:?}");
    println!("{} operations; placement {before:?} → {after:?}", ops.load(Ordering::Relaxed));
    Ok(())
}

async fn embedded_namespace(client: &Prism, name: &str) -> anyhow::Result<Namespace> {
    Ok(client.control_plane().get_namespace(GetNamespaceRequest { name: name.into() }).await?.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_namespace_is_served_by_its_owner_replica_through_a_kill_and_a_restart() -> anyhow::Result<()> {
    const NS: &str = "acme/sessions";
    const KEYS: usize = 100;
    let dir = tempfile::tempdir()?;
    let cp_proc = control_plane(dir.path(), "127.0.0.1:0", "warn")?;
    let cp = cp_proc.addr.clone();
    let data = [dir.path().join("replica-0"), dir.path().join("replica-1")];
    let mut replicas = vec![
        gateway_on(&cp, "shard-a", dir.path(), &data[0], "warn")?,
        gateway_on(&cp, "shard-a", dir.path(), &data[1], "warn")?,
    ];
    let token = admin_token();
    let retry = RetryPolicy { max_attempts: 8, deadline: Duration::from_secs(30), ..RetryPolicy::default() };
    // Resolving on demand, the client takes the replicas in turn: half its
    // calls reach the replica that does not hold the data.
    let spreading = Prism::builder(&cp).token(Some(&token)).retry(retry).watch(false).build()?;
    eventually(CONVERGE, || async {
        let got = instances(&spreading).await?;
        ensure!(got == BTreeMap::from([("shard-a".into(), 2)]), "registry {got:?}");
        Ok(())
    })
    .await?;
    let mut admin = spreading.control_plane();
    admin.create_tenant(CreateTenantRequest { tenant_id: "acme".into(), ..Default::default() }).await?;
    let spec = NamespaceSpec {
        abstraction: Abstraction::KeyValue as i32,
        backend: Backend::Embedded as i32,
        ..Default::default()
    };
    admin.create_namespace(CreateNamespaceRequest { name: NS.into(), spec: Some(spec) }).await?;
    let ns = eventually(CONVERGE, || async {
        let ns = embedded_namespace(&spreading, NS).await?;
        ensure!(ns.status == NamespaceStatus::Active as i32, "{NS}: {}", ns.status_reason);
        Ok(ns)
    })
    .await?;
    let store_of = |data: &Path| std::fs::read_to_string(data.join("store-id")).map(|s| s.trim().to_owned());
    let owner = (0..2).find(|&i| store_of(&data[i]).is_ok_and(|s| s == ns.owner_store_id)).context("owner replica")?;

    let put = |id: String, value: String| kv::PutItemsRequest {
        namespace: NS.into(),
        id,
        items: vec![kv::Item { key: Vec::new(), value: value.into_bytes(), ..Default::default() }],
        ..Default::default()
    };
    let get = |id: String| kv::GetItemsRequest { namespace: NS.into(), id, ..Default::default() };
    for round in 0..2 {
        for i in 0..KEYS {
            let value = format!("{round}-{i}");
            spreading.kv().put_items(put(format!("id-{i}"), value.clone())).await?;
            let got = value_of(&spreading.kv().get_items(get(format!("id-{i}"))).await?.items);
            ensure!(got == value, "id-{i}: read {got:?} after writing {value:?}");
        }
    }

    // SIGKILL: no deregistration, the lease expires. Meanwhile and after,
    // the other replica answers UNAVAILABLE, and the status says why.
    replicas[owner].kill();
    let degraded = eventually(CONVERGE, || async {
        let ns = embedded_namespace(&spreading, NS).await?;
        ensure!(ns.status == NamespaceStatus::Degraded as i32, "{NS} is still {}", ns.status_reason);
        Ok(ns)
    })
    .await?;
    ensure!(degraded.status_reason.contains(&ns.owner_store_id), "reason: {}", degraded.status_reason);
    let brief = RetryPolicy { max_attempts: 2, deadline: Duration::from_secs(3), ..RetryPolicy::default() };
    let impatient = Prism::builder(&cp).token(Some(&token)).retry(brief).watch(false).build()?;
    let refused = impatient.kv().get_items(get("id-1".into())).await.expect_err("no owner, no answer");
    let status = refused.status().context("a status")?;
    ensure!(status.code() == tonic::Code::Unavailable, "{status:?}");
    ensure!(status.message().contains(&ns.owner_store_id), "{}", status.message());

    // The owner restarts on its directory (on another port): ACTIVE again,
    // every key as last written, through either replica.
    replicas[owner] = gateway_on(&cp, "shard-a", dir.path(), &data[owner], "warn")?;
    eventually(CONVERGE, || async {
        let ns = embedded_namespace(&spreading, NS).await?;
        ensure!(ns.status == NamespaceStatus::Active as i32, "{NS}: {}", ns.status_reason);
        Ok(())
    })
    .await?;
    for i in 0..KEYS {
        let got = value_of(&spreading.kv().get_items(get(format!("id-{i}"))).await?.items);
        ensure!(got == format!("1-{i}"), "id-{i} after the restart: {got:?}");
    }
    drop(replicas);
    Ok(())
}
