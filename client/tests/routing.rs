//! The routing client against real servers: a control plane and two
//! gateway shards in process (testkit), namespaces pinned to each shard.
//!
//! Each test restarts the control plane with static `shard_endpoints`
//! naming the gateways' real addresses (and, where a test says so, an
//! address where nothing listens), so the routing table holds exactly
//! what the test wants. Namespaces are created and ACTIVE on both gateways
//! before the restart: the gateways keep serving from their last snapshot.
//! The gateways redirect rather than forward (forwarding off): the
//! client's own routing is what is tested here.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, ensure};
use prism_client::proto::control::{Abstraction, Backend, GetNamespaceRequest, NamespaceSpec, Placement};
use prism_client::proto::kv::key_value_service_client::KeyValueServiceClient;
use prism_client::proto::kv::{self, IdempotencyToken};
use prism_client::proto::timeseries as ts;
use prism_client::{BearerToken, Prism, Retry, RetryPolicy};
use prism_control_plane::ControlPlaneConfig;
use prism_testkit::{Cluster, admin_token, eventually};
use tonic::Code;

/// KeyValue namespaces and the shard each is pinned to.
const KV: [(&str, &str); 4] =
    [("acme/a0", "shard-0"), ("acme/a1", "shard-0"), ("acme/b0", "shard-1"), ("acme/b1", "shard-1")];
/// A TimeSeries namespace on shard-1.
const TS: &str = "acme/plays";

fn spec(abstraction: Abstraction, shard: &str) -> NamespaceSpec {
    NamespaceSpec {
        abstraction: abstraction as i32,
        backend: Backend::Embedded as i32,
        placement: Some(Box::new(Placement { pinned_shard: shard.into(), ..Default::default() })),
        ..Default::default()
    }
}

/// An address where nothing listens: a port bound and released.
async fn dead_address() -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    Ok(listener.local_addr()?.to_string())
}

/// A running deployment whose control plane resolves namespaces.
struct Deployment {
    cluster: Cluster,
    endpoints: BTreeMap<String, Vec<String>>,
}

impl Deployment {
    /// Starts the cluster, creates the namespaces, waits until both
    /// gateways serve them, then restarts the control plane with
    /// `shard_endpoints`: each shard's gateway, after the `extra`
    /// endpoints given for it.
    async fn start(extra: &[(&str, &str)]) -> anyhow::Result<Self> {
        // Gateways that redirect (forwarding off): the client's own
        // routing is what these tests look at.
        let cluster = Cluster::start_with(|c| c.forwarding.enabled = false).await?;
        let mut revision = 0;
        let mut cp = cluster.control_plane.client().await?;
        for (name, shard) in KV {
            cluster.active_namespace(name, spec(Abstraction::KeyValue, shard)).await?;
        }
        cluster.active_namespace(TS, spec(Abstraction::TimeSeries, "shard-1")).await?;
        for name in KV.iter().map(|(n, _)| *n).chain([TS]) {
            let ns = cp.get_namespace(GetNamespaceRequest { name: name.into() }).await?.into_inner();
            revision = revision.max(ns.revision);
        }
        // A misrouted call needs the wrong gateway to know the namespace
        // too (it answers NOT_FOUND otherwise).
        for g in &cluster.gateways {
            g.caught_up(revision).await?;
        }
        let mut endpoints: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (shard, address) in extra {
            endpoints.entry((*shard).to_owned()).or_default().push((*address).to_owned());
        }
        for shard in ["shard-0", "shard-1"] {
            let gateway = cluster.gateway(shard).context("gateway")?.endpoint();
            endpoints.entry(shard.to_owned()).or_default().push(gateway);
        }
        let Cluster { control_plane, gateways } = cluster;
        let config = ControlPlaneConfig {
            shards: vec!["shard-0".into(), "shard-1".into()],
            shard_endpoints: endpoints.clone(),
            ..Default::default()
        };
        let control_plane = control_plane.restart(config).await?;
        Ok(Self { cluster: Cluster { control_plane, gateways }, endpoints })
    }

    fn gateway(&self, shard: &str) -> anyhow::Result<String> {
        Ok(self.cluster.gateway(shard).context("gateway")?.endpoint())
    }

    fn client(&self, watch: bool, retry: RetryPolicy) -> anyhow::Result<Prism> {
        let token = admin_token();
        Ok(Prism::builder(&self.cluster.control_plane.endpoint())
            .token(Some(&token))
            .watch(watch)
            .retry(retry)
            .build()?)
    }
}

fn item(key: &str, value: &str) -> kv::Item {
    kv::Item { key: key.as_bytes().to_vec(), value: value.as_bytes().to_vec(), ttl: None }
}

fn put(ns: &str, id: &str, value: &str) -> kv::PutItemsRequest {
    kv::PutItemsRequest { namespace: ns.into(), id: id.into(), items: vec![item("k", value)], idempotency_token: None }
}

fn get(ns: &str, id: &str) -> kv::GetItemsRequest {
    kv::GetItemsRequest { namespace: ns.into(), id: id.into(), ..Default::default() }
}

fn values(r: &kv::GetItemsResponse) -> Vec<String> {
    r.items.iter().map(|i| String::from_utf8_lossy(&i.value).into_owned()).collect()
}

/// What the gateway of `shard` itself holds for a record (bypassing the
/// routing client), to prove where a write landed.
async fn held_by(d: &Deployment, shard: &str, ns: &str, id: &str) -> anyhow::Result<Result<Vec<String>, Code>> {
    let token = admin_token();
    let mut direct = d.cluster.gateway(shard).context("gateway")?.kv(Some(&token)).await?;
    Ok(direct.get_items(get(ns, id)).await.map(|r| values(&r.into_inner())).map_err(|s| s.code()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_namespace_is_served_by_its_owner_with_or_without_the_watch() -> anyhow::Result<()> {
    let d = Deployment::start(&[]).await?;
    for watch in [true, false] {
        let prism = d.client(watch, RetryPolicy::default())?;
        let kv = prism.kv();
        for (ns, shard) in KV {
            let id = format!("user-{watch}");
            kv.put_items(put(ns, &id, ns)).await?;
            assert_eq!(values(&kv.get_items(get(ns, &id)).await?), [ns]);
            assert_eq!(prism.cached_shard(ns).as_deref(), Some(shard), "{ns}");
            // The write is on the owner; the other shard refuses the namespace.
            assert_eq!(held_by(&d, shard, ns, &id).await?, Ok(vec![ns.to_owned()]));
            let other = if shard == "shard-0" { "shard-1" } else { "shard-0" };
            assert_eq!(held_by(&d, other, ns, &id).await?, Err(Code::FailedPrecondition));
        }
        let scanned = kv.scan_items(kv::ScanItemsRequest { namespace: "acme/b0".into(), ..Default::default() }).await?;
        ensure!(scanned.records.iter().any(|r| r.id == format!("user-{watch}")), "{scanned:?}");
    }

    // TimeSeries, through the same client.
    let prism = d.client(true, RetryPolicy::default())?;
    let event = ts::Event {
        schema_version: 0,
        time_series_id: "user-1".into(),
        event_time: Some(prost_types_now()),
        event_id: "e1".into(),
        items: vec![ts::EventItem { key: b"title".to_vec(), value: b"Up".to_vec() }],
        tags: [("kind".to_owned(), "play".to_owned())].into(),
    };
    let write = ts::WriteEventRecordsRequest { namespace: TS.into(), events: vec![event] };
    prism.ts().write_event_records_sync(write.clone()).await?;
    // Writing the same event again is a no-op: what makes retries safe.
    prism.ts().write_event_records_sync(write).await?;
    let read =
        ts::ReadEventRecordsRequest { namespace: TS.into(), time_series_id: "user-1".into(), ..Default::default() };
    let events = prism.ts().read_event_records(read).await?.events;
    assert_eq!(events.iter().map(|e| e.event_id.as_str()).collect::<Vec<_>>(), ["e1"]);
    let search = ts::SearchEventRecordsRequest { namespace: TS.into(), ..Default::default() };
    assert_eq!(prism.ts().search_event_records(search).await?.events.len(), 1);
    assert_eq!(prism.cached_shard(TS).as_deref(), Some("shard-1"));
    Ok(())
}

fn prost_types_now() -> prost_types::Timestamp {
    prost_types::Timestamp::from(std::time::SystemTime::now())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_fills_the_routing_table_before_any_call() -> anyhow::Result<()> {
    let d = Deployment::start(&[]).await?;
    let prism = d.client(true, RetryPolicy::default())?;
    eventually(Duration::from_secs(10), || async {
        for (ns, shard) in KV {
            ensure!(prism.cached_shard(ns).as_deref() == Some(shard), "{ns} not routed yet");
        }
        Ok(())
    })
    .await?;
    let without = d.client(false, RetryPolicy::default())?;
    assert_eq!(without.cached_shard("acme/a0"), None, "resolved on demand only");
    Ok(())
}

/// Counts attempts of a GetItems sent through `Prism::call`.
async fn counted_get(prism: &Prism, request: kv::GetItemsRequest) -> (u32, Result<kv::GetItemsResponse, Code>) {
    let auth = BearerToken::new(Some(&admin_token())).unwrap_or_default();
    let mut attempts = 0;
    let namespace = request.namespace.clone();
    let result = prism
        .call(&namespace, Retry::Idempotent, |channel| {
            attempts += 1;
            let mut client = KeyValueServiceClient::with_interceptor(channel, auth.clone());
            let request = request.clone();
            async move { client.get_items(request).await }
        })
        .await;
    (attempts, result.map_err(|e| e.code()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_shard_answer_is_followed_to_the_owner() -> anyhow::Result<()> {
    let d = Deployment::start(&[]).await?;
    // No watch, so nothing but the redirect corrects the poisoned route.
    let prism = d.client(false, RetryPolicy::default())?;
    prism.kv().put_items(put("acme/b0", "r", "v")).await?;
    prism.set_route("acme/b0", "shard-0", vec![d.gateway("shard-0")?]);
    assert_eq!(prism.cached_shard("acme/b0").as_deref(), Some("shard-0"));

    let (attempts, got) = counted_get(&prism, get("acme/b0", "r")).await;
    assert_eq!(got.map(|r| values(&r)), Ok(vec!["v".to_owned()]));
    assert_eq!(attempts, 2, "one misroute, one redirect");
    assert_eq!(prism.cached_shard("acme/b0").as_deref(), Some("shard-1"), "the table learned the owner");
    let (attempts, _) = counted_get(&prism, get("acme/b0", "r")).await;
    assert_eq!(attempts, 1, "the next call goes straight to the owner");

    // A client told to use one gateway (`prism --gateway`) still reaches
    // namespaces of the other shard.
    let token = admin_token();
    let fixed = Prism::builder(&d.cluster.control_plane.endpoint())
        .token(Some(&token))
        .gateway(Some(&d.gateway("shard-0")?))
        .build()?;
    fixed.kv().put_items(put("acme/b1", "r", "via shard-0")).await?;
    assert_eq!(held_by(&d, "shard-1", "acme/b1", "r").await?, Ok(vec!["via shard-0".to_owned()]));
    fixed.kv().put_items(put("acme/a1", "r", "direct")).await?;
    assert_eq!(held_by(&d, "shard-0", "acme/a1", "r").await?, Ok(vec!["direct".to_owned()]));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_replica_is_retried_on_another_and_then_skipped() -> anyhow::Result<()> {
    // shard-0 has two "replicas": one where nothing listens (first, so the
    // round robin tries it first) and the real gateway.
    let dead = dead_address().await?;
    let d = Deployment::start(&[("shard-0", &dead)]).await?;
    assert_eq!(d.endpoints["shard-0"].first(), Some(&dead));
    let token = admin_token();
    let prism = Prism::builder(&d.cluster.control_plane.endpoint())
        .token(Some(&token))
        .watch(false)
        .endpoint_cooldown(Duration::from_secs(600))
        .build()?;

    let (attempts, got) = counted_get(&prism, get("acme/a0", "missing")).await;
    assert_eq!(got.map(|r| r.items.len()), Ok(0));
    assert_eq!(attempts, 2, "the dead replica, then the live one");
    // For the cooldown, calls skip the dead replica.
    for _ in 0..3 {
        let (attempts, got) = counted_get(&prism, get("acme/a0", "missing")).await;
        assert!(got.is_ok());
        assert_eq!(attempts, 1);
    }

    // Writes are retried the same way, and applied once.
    let writer = d.client(false, RetryPolicy::default())?;
    writer.kv().put_items(put("acme/a1", "w", "once")).await?;
    assert_eq!(held_by(&d, "shard-0", "acme/a1", "w").await?, Ok(vec!["once".to_owned()]));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_not_retried_and_dead_shards_give_up_in_bounds() -> anyhow::Result<()> {
    let (dead_a, dead_b) = (dead_address().await?, dead_address().await?);
    let d = Deployment::start(&[]).await?;
    let prism = d.client(false, RetryPolicy::default())?;

    // INVALID_ARGUMENT (empty id): one attempt, the gateway's status.
    let (attempts, got) = counted_get(&prism, get("acme/a0", "")).await;
    assert_eq!((attempts, got.err()), (1, Some(Code::InvalidArgument)));
    // NOT_FOUND from the control plane: the call is never sent.
    let (attempts, got) = counted_get(&prism, get("acme/nope", "r")).await;
    assert_eq!((attempts, got.err()), (0, Some(Code::NotFound)));
    // PERMISSION_DENIED: one attempt.
    let stranger = prism_testkit::token("mallory", Some("other"), &[]);
    let denied = Prism::builder(&d.cluster.control_plane.endpoint()).token(Some(&stranger)).watch(false).build()?;
    let err = denied.kv().get_items(get("acme/a0", "r")).await.err().context("denied")?;
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");

    // Every replica of a shard unreachable: UNAVAILABLE after the attempt
    // budget, not a hang.
    let policy = RetryPolicy { max_attempts: 3, initial_backoff: Duration::from_millis(10), ..RetryPolicy::default() };
    let unreachable = d.client(false, policy)?;
    unreachable.set_route("acme/b0", "shard-1", vec![dead_a, dead_b]);
    let (attempts, got) = counted_get(&unreachable, get("acme/b0", "r")).await;
    // The third attempt resolves again and reaches the live gateway:
    // repeated failures make the client ask where the namespace lives.
    assert_eq!(got.map(|r| r.items.len()), Ok(0));
    assert_eq!(attempts, 3);

    let never = d.client(false, RetryPolicy { max_attempts: 2, ..RetryPolicy::never() })?;
    never.set_route("acme/b0", "shard-1", vec![dead_address().await?]);
    let (attempts, got) = counted_get(&never, get("acme/b0", "r")).await;
    assert_eq!((attempts, got.err()), (2, Some(Code::Unavailable)));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_sent_again_with_its_token_is_applied_once() -> anyhow::Result<()> {
    let d = Deployment::start(&[]).await?;
    let prism = d.client(true, RetryPolicy::default())?;
    let kv = prism.kv();
    let token = IdempotencyToken { generation_time: Some(prost_types_now()), token: "write-1".into() };
    let mut first = put("acme/b1", "r", "first");
    first.idempotency_token = Some(token.clone());
    kv.put_items(first).await?;
    // The same token with other content, as a confused retry would send:
    // the client keeps the caller's token, so the gateway recognises the
    // write and applies nothing.
    let mut again = put("acme/b1", "r", "second");
    again.idempotency_token = Some(token);
    kv.put_items(again).await?;
    assert_eq!(values(&kv.get_items(get("acme/b1", "r")).await?), ["first"]);
    // Without a token each call is a new write (the client fills a fresh
    // one per call, not per attempt).
    kv.put_items(put("acme/b1", "r", "third")).await?;
    assert_eq!(values(&kv.get_items(get("acme/b1", "r")).await?), ["third"]);
    Ok(())
}
