//! Any gateway is an entry point for every namespace: a call for another
//! shard's namespace is forwarded to the owner and its answer relayed
//! (`gateway/src/forward.rs`). Through real servers: a control plane, two
//! gateway shards, and a round-robin TCP proxy in front of them, as a
//! load balancer would be.

use std::time::{Duration, Instant};

use anyhow::Context;
use prism_proto::control::{Abstraction, Backend, NamespaceSpec, Placement, Policies, RegisterShardRequest};
use prism_proto::kv::key_value_service_client::KeyValueServiceClient;
use prism_proto::kv::{self, IdempotencyToken};
use prism_proto::timeseries as ts;
use prism_proto::timeseries::time_series_service_client::TimeSeriesServiceClient;
use prism_testkit::proxy::TcpProxy;
use prism_testkit::{Cluster, GatewayHandle, admin_token, eventually, token};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::transport::Channel;

fn spec(abstraction: Abstraction, shard: &str) -> NamespaceSpec {
    // TimeSeries namespaces accept loss, so buffered writes are allowed.
    let accept_loss = abstraction == Abstraction::TimeSeries;
    NamespaceSpec {
        abstraction: abstraction as i32,
        backend: Backend::Embedded as i32,
        placement: Some(Box::new(Placement { pinned_shard: shard.into(), ..Default::default() })),
        policies: Some(Box::new(Policies { accept_loss, ..Default::default() })),
        ..Default::default()
    }
}

fn authed<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Ok(v) = format!("Bearer {token}").parse() {
        request.metadata_mut().insert("authorization", v);
    }
    request
}

fn put(ns: &str, id: &str, value: &str, n: u64) -> kv::PutItemsRequest {
    kv::PutItemsRequest {
        namespace: ns.into(),
        id: id.into(),
        items: vec![kv::Item { key: b"k".to_vec(), value: value.as_bytes().to_vec(), ..Default::default() }],
        idempotency_token: Some(IdempotencyToken {
            generation_time: Some(prost_types::Timestamp::from(std::time::SystemTime::now())),
            token: format!("put-{ns}-{n}"),
        }),
    }
}

fn get(ns: &str, id: &str) -> kv::GetItemsRequest {
    kv::GetItemsRequest { namespace: ns.into(), id: id.into(), ..Default::default() }
}

fn event(series: &str, id: &str) -> ts::Event {
    ts::Event {
        schema_version: 0,
        time_series_id: series.into(),
        event_time: Some(prost_types::Timestamp::from(std::time::SystemTime::now())),
        event_id: id.into(),
        items: vec![ts::EventItem { key: b"v".to_vec(), value: id.as_bytes().to_vec() }],
        tags: Default::default(),
    }
}

/// A new connection: through the proxy, the next gateway in turn.
async fn connect(endpoint: &str) -> anyhow::Result<Channel> {
    Ok(prism_client::endpoint(endpoint)?.connect().await?)
}

/// Two shards, namespaces of both abstractions pinned to each, every
/// gateway caught up.
async fn deployment() -> anyhow::Result<(Cluster, Vec<String>, Vec<String>)> {
    let cluster = Cluster::start().await?;
    let mut kv_names = Vec::new();
    let mut ts_names = Vec::new();
    for shard in ["shard-0", "shard-1"] {
        for i in 0..2 {
            let name = format!("acme/kv-{shard}-{i}");
            cluster.active_namespace(&name, spec(Abstraction::KeyValue, shard)).await?;
            kv_names.push(name);
        }
        let name = format!("acme/ts-{shard}");
        cluster.active_namespace(&name, spec(Abstraction::TimeSeries, shard)).await?;
        ts_names.push(name);
    }
    let revision = cluster.gateways.iter().map(|g| g.gateway.metadata.load().revision).max().unwrap_or(0);
    for gw in &cluster.gateways {
        gw.caught_up(revision).await?;
    }
    Ok((cluster, kv_names, ts_names))
}

fn forwarded_total(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("prism_gateway_forwarded_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_through_one_round_robin_address_reaches_its_namespace() -> anyhow::Result<()> {
    let (cluster, kv_names, ts_names) = deployment().await?;
    let proxy = TcpProxy::round_robin(cluster.gateways.iter().map(|g| g.addr).collect()).await?;
    let admin = admin_token();

    // Tails first, two per TimeSeries namespace: one enters each gateway.
    let mut tails = Vec::new();
    for ns in &ts_names {
        for _ in 0..2 {
            let mut c = TimeSeriesServiceClient::new(connect(&proxy.endpoint()).await?);
            let request = ts::TailEventRecordsRequest { namespace: ns.clone(), ..Default::default() };
            let stream = c.tail_event_records(authed(request, &admin)).await?.into_inner();
            tails.push((ns.clone(), stream));
        }
    }

    // KeyValue: every write, then a read on another connection, each
    // entering whichever gateway the proxy picks.
    for round in 0..4u64 {
        for ns in &kv_names {
            let value = format!("v{round}");
            let mut w = KeyValueServiceClient::new(connect(&proxy.endpoint()).await?);
            w.put_items(authed(put(ns, "r", &value, round), &admin)).await.with_context(|| format!("put {ns}"))?;
            let mut r = KeyValueServiceClient::new(connect(&proxy.endpoint()).await?);
            let got = r.get_items(authed(get(ns, "r"), &admin)).await.with_context(|| format!("get {ns}"))?;
            let values: Vec<_> = got.into_inner().items.into_iter().map(|i| i.value).collect();
            assert_eq!(values, [value.into_bytes()], "{ns}: a read sees the last acknowledged write");
        }
    }

    // TimeSeries: sync writes, buffered writes, reads and searches.
    for ns in &ts_names {
        for i in 0..4 {
            let mut c = TimeSeriesServiceClient::new(connect(&proxy.endpoint()).await?);
            let request =
                ts::WriteEventRecordsRequest { namespace: ns.clone(), events: vec![event("s", &format!("e{i}"))] };
            assert_eq!(c.write_event_records_sync(authed(request, &admin)).await?.into_inner().accepted, 1);
        }
        let mut c = TimeSeriesServiceClient::new(connect(&proxy.endpoint()).await?);
        let request =
            ts::ReadEventRecordsRequest { namespace: ns.clone(), time_series_id: "s".into(), ..Default::default() };
        let read = c.read_event_records(authed(request, &admin)).await?.into_inner();
        assert_eq!(read.events.len(), 4, "{ns}: every acknowledged event is read back");
        let mut c = TimeSeriesServiceClient::new(connect(&proxy.endpoint()).await?);
        let request = ts::SearchEventRecordsRequest { namespace: ns.clone(), ..Default::default() };
        assert_eq!(c.search_event_records(authed(request, &admin)).await?.into_inner().events.len(), 4);
        let mut c = TimeSeriesServiceClient::new(connect(&proxy.endpoint()).await?);
        let request = ts::WriteEventRecordsRequest { namespace: ns.clone(), events: vec![event("b", "buffered")] };
        assert_eq!(c.write_event_records(authed(request, &admin)).await?.into_inner().accepted, 1);
    }

    // Every tail saw its namespace's sync writes, in order, wherever it
    // entered.
    for (ns, mut stream) in tails {
        let mut got = Vec::new();
        while got.len() < 4 {
            let message = tokio::time::timeout(Duration::from_secs(10), stream.next())
                .await
                .with_context(|| format!("{ns}: tail saw {got:?}"))?
                .context("tail ended")??;
            got.extend(message.events.into_iter().filter(|e| e.time_series_id == "s").map(|e| e.event_id));
        }
        assert_eq!(got, ["e0", "e1", "e2", "e3"], "{ns}");
    }

    // Both gateways took connections, and forwarded what was not theirs.
    assert!(proxy.connections().iter().all(|n| *n > 10), "{:?}", proxy.connections());
    for gw in &cluster.gateways {
        let metrics = gw.metrics().await?;
        assert!(forwarded_total(&metrics) > 0, "{} forwarded nothing", gw.gateway.config.shard_id);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_decides_who_may_call_and_forwarding_grants_nothing() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let mut ns_spec = spec(Abstraction::KeyValue, "shard-1");
    ns_spec.access = Some(Box::new(prism_proto::control::Access {
        owners: vec!["alice".into()],
        consumers: vec![prism_proto::control::Grant {
            principal: "reader".into(),
            level: prism_proto::control::AccessLevel::Read as i32,
        }],
    }));
    let owner = cluster.active_namespace("acme/private", ns_spec).await?;
    let entry = cluster.gateway("shard-0").context("shard-0")?;
    entry.caught_up(owner.gateway.metadata.load().revision).await?;
    let ns = "acme/private";
    let mut c = KeyValueServiceClient::new(connect(&entry.endpoint()).await?);

    let alice = token("alice", Some("acme"), &[]);
    c.put_items(authed(put(ns, "r", "v", 1), &alice)).await?;
    let reader = token("reader", Some("acme"), &[]);
    assert_eq!(c.get_items(authed(get(ns, "r"), &reader)).await?.into_inner().items.len(), 1);
    let e = c.put_items(authed(put(ns, "r", "w", 2), &reader)).await.expect_err("read only");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    // The same `sub` in another tenant is another principal.
    let foreign = token("reader", Some("globex"), &[]);
    let e = c.get_items(authed(get(ns, "r"), &foreign)).await.expect_err("other tenant");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let e = c.get_items(get(ns, "r")).await.expect_err("no token");
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    let e = c.get_items(authed(get(ns, "r"), "not-a-jwt")).await.expect_err("bad token");
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    // Bad input is answered as the owner answers it, field named.
    let e = c.get_items(authed(get(ns, ""), &alice)).await.expect_err("no id");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("id"), "{}", e.message());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_call_is_never_forwarded_again() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    cluster.active_namespace("acme/kv", spec(Abstraction::KeyValue, "shard-1")).await?;
    let owner = cluster.gateway("shard-1").context("shard-1")?;
    let other = cluster.gateway("shard-0").context("shard-0")?;
    other.caught_up(owner.gateway.metadata.load().revision).await?;
    // What a gateway whose snapshot disagrees would send here: a call
    // already forwarded once, for a namespace this gateway places
    // elsewhere. It is answered at once, retryably, not sent on.
    let mut request = authed(get("acme/kv", "r"), &admin_token());
    request.metadata_mut().insert(prism_gateway::forward::FORWARDED_BY, "shard-9".parse()?);
    request.set_timeout(Duration::from_secs(5));
    let started = Instant::now();
    let e = KeyValueServiceClient::new(connect(&other.endpoint()).await?).get_items(request).await.expect_err("hop");
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("retry"), "{}", e.message());
    assert!(started.elapsed() < Duration::from_secs(1), "answered in {:?}", started.elapsed());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_that_cannot_be_reached_is_unavailable_within_the_deadline() -> anyhow::Result<()> {
    let mut cluster = Cluster::start().await?;
    cluster.active_namespace("acme/kv", spec(Abstraction::KeyValue, "shard-1")).await?;
    // shard-1's gateway leaves; in its place the registry lists an address
    // where nothing listens and one that accepts connections but never
    // answers (a hung host).
    let index = cluster.gateways.iter().position(|g| g.gateway.config.shard_id == "shard-1").context("gw")?;
    let mut gone: GatewayHandle = cluster.gateways.remove(index);
    gone.stop().await?;
    let dead = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        l.local_addr()?.to_string()
    };
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let mut cp = cluster.control_plane.client().await?;
    for endpoint in [dead.clone(), hung.local_addr()?.to_string()] {
        cp.register_shard(RegisterShardRequest { shard_id: "shard-1".into(), endpoint, ..Default::default() }).await?;
    }
    let entry = cluster.gateway("shard-0").context("shard-0")?;
    eventually(Duration::from_secs(10), || async {
        let snapshot = entry.gateway.metadata.load();
        let endpoints = snapshot.endpoints("shard-1");
        anyhow::ensure!(endpoints.len() == 2, "shard-1 at {endpoints:?}");
        Ok(())
    })
    .await?;

    let mut c = KeyValueServiceClient::new(connect(&entry.endpoint()).await?);
    for deadline in [Duration::from_millis(1500), Duration::from_millis(800)] {
        // A read tries each instance: refused, then no answer.
        let mut request = authed(get("acme/kv", "r"), &admin_token());
        request.set_timeout(deadline);
        let started = Instant::now();
        let e = c.get_items(request).await.expect_err("unreachable owner");
        let took = started.elapsed();
        assert_eq!(e.code(), Code::Unavailable, "{e:?}");
        assert!(took < deadline, "answered after {took:?}, past the {deadline:?} deadline");
        // A write is sent once, and answered within its deadline too.
        let mut request = authed(put("acme/kv", "r", "v", 7), &admin_token());
        request.set_timeout(deadline);
        let started = Instant::now();
        let e = c.put_items(request).await.expect_err("unreachable owner");
        assert_eq!(e.code(), Code::Unavailable, "{e:?}");
        assert!(started.elapsed() < deadline, "answered after {:?}", started.elapsed());
    }
    let metrics = entry.metrics().await?;
    assert!(metrics.contains("prism_gateway_forward_failures_total{reason=\"timeout\"}"), "{metrics}");
    drop(hung);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_forwarding_off_a_misrouted_call_names_the_owner() -> anyhow::Result<()> {
    let cluster = Cluster::start_with(|c| c.forwarding.enabled = false).await?;
    let owner = cluster.active_namespace("acme/kv", spec(Abstraction::KeyValue, "shard-1")).await?;
    let other = cluster.gateway("shard-0").context("shard-0")?;
    other.caught_up(owner.gateway.metadata.load().revision).await?;
    let mut c = KeyValueServiceClient::new(connect(&other.endpoint()).await?);
    let e = c.get_items(authed(get("acme/kv", "r"), &admin_token())).await.expect_err("misrouted");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    let info = tonic_types::StatusExt::get_details_error_info(&e).context("error info")?;
    assert_eq!((info.reason.as_str(), info.metadata.get("endpoints")), ("WRONG_SHARD", Some(&owner.endpoint())));
    Ok(())
}

/// Whether `python3` with grpcio and grpcio-tools is here; `Err` when it
/// must be (CI) and is not.
fn python_with_grpc() -> anyhow::Result<bool> {
    let found = std::process::Command::new("python3")
        .args(["-c", "import grpc, grpc_tools"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found && prism_testkit::postgres::servers_required() {
        anyhow::bail!(
            "python3 with grpcio and grpcio-tools is required: pip install -r examples/python/requirements.txt"
        );
    }
    Ok(found)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_example_uses_one_address_for_every_namespace() -> anyhow::Result<()> {
    if !python_with_grpc()? {
        println!("skipped: no python3 with grpcio (pip install -r examples/python/requirements.txt)");
        return Ok(());
    }
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/python");
    let stubs = tempfile::tempdir()?;
    let generated = std::process::Command::new(example.join("generate.sh")).arg(stubs.path()).output()?;
    anyhow::ensure!(generated.status.success(), "generate.sh: {}", String::from_utf8_lossy(&generated.stderr));

    let (cluster, kv_names, ts_names) = deployment().await?;
    let proxy = TcpProxy::round_robin(cluster.gateways.iter().map(|g| g.addr).collect()).await?;
    let mut args = vec!["--target".to_owned(), proxy.endpoint()];
    args.extend(kv_names.iter().flat_map(|n| ["--kv".to_owned(), n.clone()]));
    args.extend(ts_names.iter().flat_map(|n| ["--ts".to_owned(), n.clone()]));
    // Each run's channel is one connection: the proxy sends the first to
    // one gateway and the second to the other.
    for run in 0..2 {
        let (script, args, stubs) = (example.join("example.py"), args.clone(), stubs.path().to_owned());
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new("python3")
                .arg(script)
                .args(args)
                .env("PRISM_STUBS", stubs)
                .env("PRISM_TOKEN", admin_token())
                .output()
        })
        .await??;
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        anyhow::ensure!(out.status.success(), "run {run}: {}\n{stdout}\n{stderr}", out.status);
        assert!(stdout.trim_end().ends_with("ok"), "{stdout}");
        assert_eq!(stdout.matches("tail delivered them in order").count(), ts_names.len(), "{stdout}");
    }
    assert_eq!(proxy.connections(), [1, 1], "one connection per run, one run per gateway");
    Ok(())
}

/// A KeyValue namespace on a PostgreSQL server every shard reaches, so it
/// moves when shards come and go.
fn shared(dsn: &str) -> NamespaceSpec {
    use prism_proto::control::backend_config::Config;
    use prism_proto::control::{BackendConfig, PostgresConfig};
    NamespaceSpec {
        abstraction: Abstraction::KeyValue as i32,
        backend: Backend::Postgres as i32,
        backend_config: Some(Box::new(BackendConfig {
            config: Some(Config::Postgres(PostgresConfig { dsn: dsn.into(), ..Default::default() })),
        })),
        ..Default::default()
    }
}

/// Where each of `names` lives, as the control plane says.
async fn owners(cp: &prism_testkit::ControlPlaneHandle, names: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    let mut c = cp.client().await?;
    let mut out = Vec::new();
    for name in names {
        let ns = c.get_namespace(prism_proto::control::GetNamespaceRequest { name: name.clone() }).await?;
        out.push((name.clone(), ns.into_inner().shard_id));
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_that_disagree_about_the_owner_answer_unavailable_and_never_loop() -> anyhow::Result<()> {
    let Some(server) = prism_testkit::postgres::PostgresServer::start_or_skip()? else {
        println!("{}", prism_testkit::postgres::skip_reason());
        return Ok(());
    };
    let cp = prism_testkit::ControlPlaneHandle::start_with(prism_control_plane::ControlPlaneConfig::default()).await?;
    // shard-b hears the control plane through a link the test can cut.
    let link = TcpProxy::round_robin(vec![cp.addr]).await?;
    let a = GatewayHandle::start(&cp.endpoint(), "shard-a").await?;
    let b = GatewayHandle::start(&link.endpoint(), "shard-b").await?;
    let mut c = GatewayHandle::start(&cp.endpoint(), "shard-c").await?;
    eventually(Duration::from_secs(30), || async {
        let mut client = cp.client().await?;
        let shards = client.list_shards(prism_proto::control::ListShardsRequest {}).await?.into_inner().shards;
        anyhow::ensure!(shards.iter().filter(|s| !s.instances.is_empty()).count() == 3, "{shards:?}");
        Ok(())
    })
    .await?;
    let mut admin = cp.client().await?;
    admin
        .create_tenant(prism_proto::control::CreateTenantRequest { tenant_id: "acme".into(), ..Default::default() })
        .await?;
    let names: Vec<String> = (0..24).map(|i| format!("acme/pg-{i}")).collect();
    for name in &names {
        let request =
            prism_proto::control::CreateNamespaceRequest { name: name.clone(), spec: Some(shared(&server.dsn())) };
        admin.create_namespace(request).await?;
    }
    let on_c: Vec<String> = eventually(Duration::from_secs(30), || async {
        let mut client = cp.client().await?;
        let mut on_c = Vec::new();
        for name in &names {
            let ns = client.get_namespace(prism_proto::control::GetNamespaceRequest { name: name.clone() }).await?;
            let ns = ns.into_inner();
            anyhow::ensure!(ns.status == prism_proto::control::NamespaceStatus::Active as i32, "{name} not active");
            if ns.shard_id == "shard-c" {
                on_c.push(ns.name);
            }
        }
        Ok(on_c)
    })
    .await?;
    anyhow::ensure!(!on_c.is_empty(), "no namespace landed on shard-c");
    let revision = a.gateway.metadata.load().revision;
    b.caught_up(revision).await?;

    // shard-b stops hearing the control plane; then shard-c leaves, and its
    // namespaces move to shard-a and shard-b. shard-a learns it; shard-b
    // still places them on shard-c.
    link.cut();
    c.stop().await?;
    let moved = eventually(Duration::from_secs(30), || async {
        let now = owners(&cp, &on_c).await?;
        anyhow::ensure!(now.iter().all(|(_, s)| s != "shard-c"), "{now:?}");
        Ok(now)
    })
    .await?;
    // Names and shard ids are fixed, so rendezvous always moves some here.
    let x = moved.iter().find(|(_, s)| s == "shard-b").map(|(n, _)| n.as_str()).context("none moved to shard-b")?;
    eventually(Duration::from_secs(10), || async {
        let on = a.gateway.metadata.load().namespace(x).map(|e| e.shard_id.clone());
        anyhow::ensure!(on.as_deref() == Some("shard-b"), "shard-a places {x} on {on:?}");
        Ok(())
    })
    .await?;
    let on_b = b.gateway.metadata.load().namespace(x).map(|e| e.shard_id.clone());
    assert_eq!(on_b.as_deref(), Some("shard-c"), "shard-b's view is stale");

    // shard-a forwards to shard-b, which places it elsewhere: UNAVAILABLE,
    // at once, not another hop. shard-b forwards to the shard-c it
    // remembers, which is gone: UNAVAILABLE too. Neither waits out the
    // deadline.
    let deadline = Duration::from_secs(3);
    for (entry, why) in [(&a, "disagreeing owner"), (&b, "departed owner")] {
        let mut request = authed(get(x, "r"), &admin_token());
        request.set_timeout(deadline);
        let started = Instant::now();
        let e = KeyValueServiceClient::new(connect(&entry.endpoint()).await?).get_items(request).await.expect_err(why);
        assert_eq!(e.code(), Code::Unavailable, "{why}: {e:?}");
        assert!(started.elapsed() < deadline, "{why}: answered after {:?}", started.elapsed());
    }

    // The link comes back: shard-b catches up, and the call through
    // shard-a is served by shard-b.
    link.restore();
    eventually(Duration::from_secs(30), || async {
        let mut kv = KeyValueServiceClient::new(connect(&a.endpoint()).await?);
        kv.put_items(authed(put(x, "r", "v", 1), &admin_token())).await?;
        let got = kv.get_items(authed(get(x, "r"), &admin_token())).await?.into_inner();
        anyhow::ensure!(got.items.len() == 1, "{got:?}");
        Ok(())
    })
    .await?;
    Ok(())
}
