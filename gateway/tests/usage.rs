//! Usage reports end to end: gateways report what namespaces use, the
//! control plane answers `GetUsage` against the quotas and splits a
//! tenant's limits between the gateways in proportion to its traffic.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use prism_proto::control::{
    Abstraction, Backend, CreateTenantRequest, GetUsageRequest, NamespaceSpec, NamespaceUsage, Placement, QuotaProfile,
    QuotaSet, ReportUsageRequest,
};
use prism_proto::kv;
use prism_testkit::{Cluster, GatewayHandle, admin_token, eventually};
use tonic::Code;
use tonic_types::StatusExt;

fn on(shard: &str) -> NamespaceSpec {
    NamespaceSpec {
        abstraction: Abstraction::KeyValue as i32,
        backend: Backend::Embedded as i32,
        placement: Some(Box::new(Placement { pinned_shard: shard.into(), ..Default::default() })),
        ..Default::default()
    }
}

async fn get(gw: &GatewayHandle, ns: &str) -> anyhow::Result<()> {
    let req = kv::GetItemsRequest { namespace: ns.into(), id: "r".into(), ..Default::default() };
    gw.kv(Some(&admin_token())).await?.get_items(req).await?;
    Ok(())
}

/// Sends three requests to `heavy` for every one to `light` until `stop`.
async fn traffic(heavy: GatewayHandleRef, light: GatewayHandleRef, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        for _ in 0..3 {
            let _ = heavy.get().await;
        }
        let _ = light.get().await;
    }
}

/// A namespace on a gateway, callable from a spawned task.
#[derive(Clone)]
struct GatewayHandleRef {
    client: prism_client::KeyValueClient,
    namespace: String,
}

impl GatewayHandleRef {
    async fn get(&self) -> Result<(), tonic::Status> {
        let req = kv::GetItemsRequest { namespace: self.namespace.clone(), id: "r".into(), ..Default::default() };
        self.client.clone().get_items(req).await.map(drop)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_show_usage_and_split_tenant_limits_by_traffic() -> anyhow::Result<()> {
    let cluster = Cluster::start_with(|c| c.usage_report_interval_ms = 100).await?;
    let mut cp = cluster.control_plane.client().await?;
    let quotas =
        QuotaSet { profile: QuotaProfile::Custom as i32, requests_per_second: Some(100_000), ..Default::default() };
    cp.create_tenant(CreateTenantRequest { tenant_id: "acme".into(), quotas: Some(quotas), ..Default::default() })
        .await?;
    let g0 = cluster.active_namespace("acme/zero", on("shard-0")).await?;
    let g1 = cluster.active_namespace("acme/one", on("shard-1")).await?;
    get(g0, "acme/zero").await?;
    get(g1, "acme/one").await?;

    let stop = Arc::new(AtomicBool::new(false));
    let heavy = GatewayHandleRef { client: g0.kv(Some(&admin_token())).await?, namespace: "acme/zero".into() };
    let light = GatewayHandleRef { client: g1.kv(Some(&admin_token())).await?, namespace: "acme/one".into() };
    let driver = tokio::spawn(traffic(heavy, light, stop.clone()));

    // GetUsage sums the reports of both gateways.
    let usage = eventually(Duration::from_secs(20), || {
        let mut cp = cp.clone();
        async move {
            let u = cp.get_usage(GetUsageRequest { target: "acme".into() }).await?.into_inner();
            anyhow::ensure!(u.namespaces.len() == 2, "reports so far: {:?}", u.namespaces);
            Ok(u)
        }
    })
    .await?;
    let rps = usage.quotas.iter().find(|q| q.quota == "requests_per_second").context("rps quota")?;
    assert!(rps.used > 0.0 && rps.limit == 100_000, "{rps:?}");
    assert!(rps.utilization_percent > 0.0);
    let namespaces = usage.quotas.iter().find(|q| q.quota == "max_namespaces").context("max_namespaces")?;
    assert_eq!(namespaces.used, 2.0);
    let one = cp.get_usage(GetUsageRequest { target: "acme/zero".into() }).await?.into_inner();
    assert_eq!(one.namespaces.len(), 1);
    assert!(one.quotas.iter().all(|q| q.quota != "max_namespaces"));

    // Three requests on shard-0 for every one on shard-1: the tenant's
    // limits are split about 0.05 + 0.9·¾ ≈ 0.73 to 0.27, summing to one.
    let share = |gw: &GatewayHandle| {
        gw.gateway.quotas.tracker(prism_gateway::quota::Subject::Tenant("acme")).map(|t| t.share())
    };
    eventually(Duration::from_secs(20), || async {
        let (s0, s1) = (share(g0).unwrap_or(1.0), share(g1).unwrap_or(1.0));
        anyhow::ensure!((0.55..0.9).contains(&s0) && (0.1..0.45).contains(&s1), "shares {s0} / {s1}");
        anyhow::ensure!((s0 + s1 - 1.0).abs() < 0.2, "shares {s0} + {s1}");
        Ok(())
    })
    .await?;
    stop.store(true, Ordering::Relaxed);
    driver.await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_reports_and_targets_are_refused_by_field() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let mut cp = cluster.control_plane.client().await?;
    let field = |s: &tonic::Status| {
        s.get_details_bad_request().and_then(|b| b.field_violations.first().map(|v| v.field.clone()))
    };
    let report = |shard: &str, instance: &str, usage: Vec<NamespaceUsage>| ReportUsageRequest {
        shard_id: shard.into(),
        instance_id: instance.into(),
        namespaces: usage,
    };
    let nan = NamespaceUsage { namespace: "acme/x".into(), requests_per_second: f64::NAN, ..Default::default() };
    let bad_name = NamespaceUsage { namespace: "acme".into(), ..Default::default() };
    for (req, want) in [
        (report("Bad", "i", vec![]), "shard_id"),
        (report("shard-0", "", vec![]), "instance_id"),
        (report("shard-0", "i", vec![nan]), "namespaces[0].requests_per_second"),
        (report("shard-0", "i", vec![NamespaceUsage::default(), bad_name]), "namespaces[0].namespace"),
    ] {
        let e = cp.report_usage(req).await.expect_err("refused");
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert_eq!(field(&e).as_deref(), Some(want), "{e:?}");
    }
    let e = cp.report_usage(report("shard-0", "not-registered", vec![])).await.expect_err("unknown instance");
    assert_eq!(e.code(), Code::NotFound);
    let e = cp.get_usage(GetUsageRequest { target: "Acme!".into() }).await.expect_err("bad target");
    assert_eq!((e.code(), field(&e).as_deref()), (Code::InvalidArgument, Some("target")));
    let e = cp.get_usage(GetUsageRequest { target: "nobody".into() }).await.expect_err("unknown tenant");
    assert_eq!(e.code(), Code::NotFound);
    let e = cp.get_usage(GetUsageRequest { target: "nobody/x".into() }).await.expect_err("unknown namespace");
    assert_eq!(e.code(), Code::NotFound);
    Ok(())
}

/// Puts `bytes` bytes into record `id`; the refusal, if any.
async fn put_bytes(gw: &GatewayHandle, ns: &str, id: &str, bytes: usize) -> Result<(), tonic::Status> {
    let req = kv::PutItemsRequest {
        namespace: ns.into(),
        id: id.into(),
        items: vec![kv::Item { key: b"k".to_vec(), value: vec![b'x'; bytes], ..Default::default() }],
        ..Default::default()
    };
    let mut c = gw.kv(Some(&admin_token())).await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    c.put_items(req).await.map(drop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_quotas_refuse_writes_that_add_bytes_until_space_is_freed() -> anyhow::Result<()> {
    let cluster = Cluster::start_with(|c| {
        c.usage_report_interval_ms = 100;
        c.storage_measure_interval_ms = 100;
    })
    .await?;
    let mut cp = cluster.control_plane.client().await?;
    let small = QuotaSet { profile: QuotaProfile::Custom as i32, storage_bytes: Some(1000), ..Default::default() };
    cp.create_tenant(CreateTenantRequest { tenant_id: "acme".into(), ..Default::default() }).await?;
    cp.create_tenant(CreateTenantRequest { tenant_id: "tiny".into(), quotas: Some(small), ..Default::default() })
        .await?;
    // A namespace quota, and a tenant quota over namespaces without one.
    let ns_quota = NamespaceSpec { quotas: Some(small), ..on("shard-0") };
    let gw = cluster.active_namespace("acme/capped", ns_quota).await?;
    let tgw = cluster.active_namespace("tiny/data", on("shard-1")).await?;

    for (gw, ns, subject) in [(gw, "acme/capped", "namespace:acme/capped"), (tgw, "tiny/data", "tenant:tiny")] {
        put_bytes(gw, ns, "big", 1500).await?;
        // Once measured (and, for the tenant, reported), writes that add
        // bytes are refused with the quota named ...
        let refusal = eventually(Duration::from_secs(20), || async {
            match put_bytes(gw, ns, "more", 10).await {
                Err(s) if s.code() == Code::ResourceExhausted => Ok(s),
                other => anyhow::bail!("not refused yet: {other:?}"),
            }
        })
        .await?;
        let failure = refusal.get_details_quota_failure().context("QuotaFailure")?;
        assert_eq!(failure.violations[0].subject, subject);
        assert!(failure.violations[0].description.contains("storage_bytes quota of 1000"), "{failure:?}");
        assert!(refusal.get_details_retry_info().is_some());
        // ... deletes still pass, and once the space is measured free,
        // writes do again.
        let delete = kv::DeleteItemsRequest { namespace: ns.into(), id: "big".into(), ..Default::default() };
        gw.kv(Some(&admin_token())).await?.delete_items(delete).await?;
        eventually(Duration::from_secs(20), || async { Ok(put_bytes(gw, ns, "more", 10).await?) }).await?;
    }
    Ok(())
}
