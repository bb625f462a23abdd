//! Observability against real components: a real Prometheus server
//! scraping a test cluster, a real OTLP/gRPC receiver taking the
//! gateway's spans, a real Kafka-protocol broker holding the trace
//! context of a write, gRPC health and `/readyz` through a gateway's
//! life, and `promtool` on the shipped rules and scrape configuration.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use prism_proto::control::backend_config::Config;
use prism_proto::control::{
    Abstraction, Backend, BackendConfig, GetNamespaceRequest, KafkaConfig, NamespaceSpec, QuotaSet,
};
use prism_proto::kv;
use prism_proto::timeseries as ts;
use prism_telemetry::otel::OtelConfig;
use prism_testkit::otlp::{OtlpReceiver, ReceivedSpan};
use prism_testkit::prometheus::{PrometheusServer, promtool, skip_reason};
use prism_testkit::{Cluster, ControlPlaneHandle, GatewayHandle, TEST_SECRET, admin_token, eventually, http};
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tracing_subscriber::layer::SubscriberExt;

const WAIT: Duration = Duration::from_secs(60);

fn kv_spec() -> NamespaceSpec {
    NamespaceSpec { abstraction: Abstraction::KeyValue as i32, backend: Backend::Embedded as i32, ..Default::default() }
}

fn put(ns: &str, id: &str) -> kv::PutItemsRequest {
    kv::PutItemsRequest {
        namespace: ns.into(),
        id: id.into(),
        items: vec![kv::Item { key: b"k".to_vec(), value: b"v".to_vec(), ttl: None }],
        idempotency_token: None,
    }
}

fn get(ns: &str, id: &str) -> kv::GetItemsRequest {
    kv::GetItemsRequest { namespace: ns.into(), id: id.into(), ..Default::default() }
}

fn deploy(path: &str) -> String {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("deploy");
    root.join(path).display().to_string()
}

/// The control plane configuration of `Cluster::start`.
fn cluster_config() -> prism_control_plane::ControlPlaneConfig {
    let mut config = prism_control_plane::ControlPlaneConfig {
        shards: vec!["shard-0".into(), "shard-1".into()],
        ..Default::default()
    };
    config.auth.hs256_secret = Some(TEST_SECRET.into());
    config
}

/// A real Prometheus scrapes the cluster: the request counter of a
/// namespace equals what was sent, quota refusals are counted under their
/// quota type, and staleness grows while the control plane is stopped
/// and falls back to 0 once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_counts_requests_refusals_and_staleness() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let mut targets: Vec<String> = cluster.gateways.iter().map(|g| g.metrics_addr.to_string()).collect();
    targets.push(cluster.control_plane.metrics_addr.to_string());
    let Some(prometheus) = PrometheusServer::start_or_skip(&targets, "1s").await? else {
        println!("{}", skip_reason());
        return Ok(());
    };
    let token = admin_token();

    const SENT: usize = 25;
    let gw = cluster.active_namespace("acme/counted", kv_spec()).await?;
    let counted = gw.metrics_addr.to_string();
    let mut client = gw.kv(Some(&token)).await?;
    for i in 0..SENT {
        client.put_items(put("acme/counted", &format!("r{i}"))).await?;
    }

    let limited =
        NamespaceSpec { quotas: Some(QuotaSet { requests_per_second: Some(3), ..Default::default() }), ..kv_spec() };
    let gw = cluster.active_namespace("acme/limited", limited).await?;
    let mut client = gw.kv(Some(&token)).await?;
    let mut refused = 0;
    for _ in 0..20 {
        match client.get_items(get("acme/limited", "r")).await {
            Ok(_) => {}
            Err(s) if s.code() == Code::ResourceExhausted => refused += 1,
            Err(s) => return Err(s.into()),
        }
    }
    anyhow::ensure!(refused > 0, "20 gets at once were all admitted under a 3/s quota");

    let expect = |query: &'static str, want: f64| {
        let prometheus = &prometheus;
        async move {
            eventually(WAIT, || async {
                let got = prometheus.value(query).await?;
                anyhow::ensure!(got == Some(want), "{query} = {got:?}, want {want}");
                Ok(())
            })
            .await
        }
    };
    expect(r#"sum(prism_gateway_requests_total{namespace="acme/counted"})"#, SENT as f64).await?;
    expect(r#"sum(prism_gateway_requests_total{namespace="acme/counted",rpc="PutItems",code="OK"})"#, SENT as f64)
        .await?;
    expect(
        r#"sum(prism_gateway_quota_refusals_total{namespace="acme/limited",quota="requests_per_second",scope="namespace"})"#,
        f64::from(refused),
    )
    .await?;
    expect(r#"sum(prism_gateway_refusals_total{layer="quota",reason="requests_per_second"})"#, f64::from(refused))
        .await?;
    expect(
        r#"sum(prism_gateway_requests_total{namespace="acme/limited",code="RESOURCE_EXHAUSTED"})"#,
        f64::from(refused),
    )
    .await?;

    // Staleness: 0 while connected; grows while the control plane is
    // away (the gateways keep serving); back to 0 once it returns.
    let gateway_target = counted;
    let staleness = format!(r#"prism_gateway_metadata_staleness_seconds{{instance="{gateway_target}"}}"#);
    let Cluster { mut control_plane, gateways } = cluster;
    control_plane.stop().await?;
    eventually(WAIT, || async {
        let got = prometheus.value(&staleness).await?.unwrap_or_default();
        anyhow::ensure!(got >= 2.0, "staleness {got} while the control plane is down");
        Ok(())
    })
    .await?;
    let gw = gateways.iter().find(|g| g.metrics_addr.to_string() == gateway_target).context("gateway")?;
    gw.kv(Some(&token)).await?.put_items(put("acme/counted", "while-away")).await?;
    let control_plane = control_plane.restart_on_same_port(cluster_config()).await?;
    eventually(WAIT, || async {
        let got = prometheus.value(&staleness).await?;
        anyhow::ensure!(got == Some(0.0), "staleness {got:?} after the control plane returned");
        Ok(())
    })
    .await?;
    drop(control_plane);
    Ok(())
}

/// `/metrics` of a gateway and of the control plane carry the documented
/// families, `/healthz` and `/readyz` answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoints_expose_the_documented_families() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let token = admin_token();
    let cached = NamespaceSpec {
        policies: Some(Box::new(prism_proto::control::Policies { cache_enabled: true, ..Default::default() })),
        ..kv_spec()
    };
    let gw = cluster.active_namespace("acme/seen", cached).await?;
    let mut client = gw.kv(Some(&token)).await?;
    client.put_items(put("acme/seen", "r")).await?;
    client.get_items(get("acme/seen", "r")).await?;
    client.get_items(get("acme/seen", "r")).await?;
    client.get_items(get("acme/nope", "r")).await.expect_err("no such namespace");

    let text = gw.metrics().await?;
    let labels = [("rpc", "GetItems"), ("tenant", "acme"), ("namespace", "acme/seen"), ("code", "OK")];
    assert_eq!(http::sample(&text, "prism_gateway_requests_total", &labels), Some(2.0), "{text}");
    let unknown = [("namespace", "_unknown"), ("code", "NOT_FOUND")];
    assert_eq!(http::sample(&text, "prism_gateway_requests_total", &unknown), Some(1.0), "{text}");
    assert_eq!(
        http::sample(&text, "prism_gateway_refusals_total", &[("layer", "authz"), ("reason", "not_found")]),
        Some(1.0)
    );
    let seen = [("rpc", "GetItems"), ("namespace", "acme/seen")];
    assert_eq!(http::sample(&text, "prism_gateway_request_duration_seconds_count", &seen), Some(2.0), "{text}");
    assert_eq!(http::sample(&text, "prism_gateway_cache_hits_total", &[]), Some(1.0), "{text}");
    assert_eq!(http::sample(&text, "prism_gateway_cache_loads_total", &[]), Some(1.0), "{text}");
    let mutate = [("backend", "embedded"), ("operation", "mutate")];
    assert_eq!(http::sample(&text, "prism_gateway_backend_request_duration_seconds_count", &mutate), Some(1.0));
    assert!(
        http::sample(&text, "prism_gateway_token_cache_lookups_total", &[("result", "hit")]).is_some_and(|n| n >= 1.0)
    );
    for family in [
        "prism_gateway_metadata_revision",
        "prism_gateway_metadata_staleness_seconds",
        "prism_gateway_ts_buffer_events",
        "prism_gateway_tails_open",
        "prism_gateway_backend_pool_connections",
        "prism_gateway_backend_producer_queue_messages",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_cpu_seconds_total",
    ] {
        assert!(text.contains(&format!("\n{family}")), "{family} missing from\n{text}");
    }
    assert_eq!(http::sample(&text, "prism_gateway_ready", &[]), Some(1.0));
    // The namespace the test wrote to is this shard's and ACTIVE.
    assert!(
        http::sample(&text, "prism_gateway_owned_namespaces", &[("status", "active")]).is_some_and(|n| n >= 1.0),
        "{text}"
    );
    assert_eq!(http::sample(&text, "prism_gateway_owned_namespaces", &[("status", "deleting")]), Some(0.0));
    let addr = gw.metrics_addr.to_string();
    assert_eq!(http::get(&addr, "/readyz").await?.0, 200);
    assert_eq!(http::get(&addr, "/healthz").await?.0, 200);

    let cp = cluster.control_plane.metrics_addr.to_string();
    let (status, text) = http::get(&cp, "/metrics").await?;
    assert_eq!(status, 200);
    let created = [("method", "CreateNamespace"), ("code", "OK")];
    assert_eq!(http::sample(&text, "prism_control_plane_rpcs_total", &created), Some(1.0), "{text}");
    assert!(http::sample(&text, "prism_control_plane_watchers", &[]).is_some_and(|n| n >= 2.0), "{text}");
    assert_eq!(http::sample(&text, "prism_control_plane_shard_instances", &[]), Some(2.0), "{text}");
    assert!(http::sample(&text, "prism_control_plane_revision", &[]).is_some_and(|r| r > 0.0), "{text}");
    assert!(http::sample(&text, "prism_control_plane_commit_duration_seconds_count", &[]).is_some_and(|n| n > 0.0));
    assert_eq!(http::get(&cp, "/readyz").await?.0, 200);
    Ok(())
}

async fn health(addr: std::net::SocketAddr, service: &str) -> anyhow::Result<ServingStatus> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?.connect().await?;
    let response = HealthClient::new(channel).check(HealthCheckRequest { service: service.into() }).await?;
    Ok(response.into_inner().status())
}

/// gRPC health and `/readyz`: NOT_SERVING before the first snapshot (the
/// control plane is not up yet), SERVING after, still SERVING while the
/// control plane is down, NOT_SERVING while draining on shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_tells_the_truth_through_a_gateways_life() -> anyhow::Result<()> {
    // The control plane's address is known (bound), but it does not serve
    // yet: the gateway cannot load a snapshot nor register.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let cp_addr = listener.local_addr()?.to_string();
    let mut gw = GatewayHandle::start_with(&cp_addr, "shard-0", |c| c.drain_delay_ms = 5_000).await?;
    let ready = |addr: std::net::SocketAddr| async move { http::get(&addr.to_string(), "/readyz").await.map(|r| r.0) };
    eventually(WAIT, || async {
        for service in ["", "prism.kv.v1.KeyValueService", "prism.timeseries.v1.TimeSeriesService"] {
            let status = health(gw.addr, service).await?;
            anyhow::ensure!(status == ServingStatus::NotServing, "{service:?}: {status:?} before any snapshot");
        }
        Ok(())
    })
    .await?;
    assert_eq!(ready(gw.metrics_addr).await?, 503);

    let dir = tempfile::tempdir()?;
    let mut config = cluster_config();
    config.shards = vec!["shard-0".into()];
    config.data_dir = dir.path().join("control-plane");
    let mut cp = ControlPlaneHandle::start_on(config, listener).await?;
    eventually(WAIT, || async {
        let status = health(gw.addr, "prism.kv.v1.KeyValueService").await?;
        anyhow::ensure!(status == ServingStatus::Serving, "{status:?} after the snapshot and registration");
        anyhow::ensure!(ready(gw.metrics_addr).await? == 200, "/readyz");
        Ok(())
    })
    .await?;

    cp.stop().await?;
    eventually(WAIT, || async {
        anyhow::ensure!(!gw.gateway.metadata.staleness().is_zero(), "the watch has not noticed yet");
        Ok(())
    })
    .await?;
    assert_eq!(health(gw.addr, "").await?, ServingStatus::Serving, "serving from the last snapshot");
    assert_eq!(ready(gw.metrics_addr).await?, 200);

    // Shutdown: NOT_SERVING while it drains (the drain delay keeps the
    // server up for 5 s; the deregistration attempt takes up to 2 s more).
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", gw.addr))?.connect().await?;
    let mut client = HealthClient::new(channel);
    gw.begin_stop();
    eventually(WAIT, || {
        let mut client = client.clone();
        async move {
            let status = client.check(HealthCheckRequest { service: String::new() }).await?.into_inner().status();
            anyhow::ensure!(status == ServingStatus::NotServing, "{status:?} while draining");
            Ok(())
        }
    })
    .await?;
    assert_eq!(ready(gw.metrics_addr).await?, 503);
    gw.stop().await?;
    let _ = client.check(HealthCheckRequest { service: String::new() }).await;
    Ok(())
}

fn env(pairs: &[(&str, String)]) -> impl Fn(&str) -> Option<String> + use<> {
    let map: HashMap<String, String> = pairs.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect();
    move |k| map.get(k).cloned()
}

/// Installs trace export to `receiver` for this thread (the test's
/// current-thread runtime runs every server task on it).
fn traced(
    receiver: &OtlpReceiver,
) -> anyhow::Result<(tracing::subscriber::DefaultGuard, prism_telemetry::otel::OtelGuard)> {
    let config = OtelConfig::from_env(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint())]), "prism-test")?
        .context("export configured")?;
    let (layer, guard) = config.install()?;
    Ok((tracing::subscriber::set_default(tracing_subscriber::registry().with(layer)), guard))
}

/// Exports what is buffered (off the runtime: the exporter's channel is
/// driven by it).
async fn flush(guard: prism_telemetry::otel::OtelGuard) -> anyhow::Result<prism_telemetry::otel::OtelGuard> {
    Ok(tokio::task::spawn_blocking(move || {
        guard.flush();
        guard
    })
    .await?)
}

const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const CALLER_SPAN: &str = "b7ad6b7169203331";

fn with_traceparent<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let value = format!("00-{TRACE_ID}-{CALLER_SPAN}-01");
    request.metadata_mut().insert("traceparent", value.parse().unwrap_or_else(|_| unreachable!()));
    request.metadata_mut().insert("tracestate", "vendor=abc".parse().unwrap_or_else(|_| unreachable!()));
    request
}

fn of_trace(spans: &[ReceivedSpan]) -> Vec<ReceivedSpan> {
    spans.iter().filter(|s| s.trace_id() == TRACE_ID).cloned().collect()
}

/// A request sent with a `traceparent` gives a gateway span in that trace,
/// child of the caller's span, with the RPC, tenant, namespace and status,
/// and a backend child span with the database attributes; a refused one
/// names the refusing layer. Without the variables nothing is configured.
#[tokio::test]
async fn traced_requests_reach_an_otlp_receiver() -> anyhow::Result<()> {
    assert_eq!(OtelConfig::from_env(env(&[]), "prism")?, None, "no OTEL_* variable: nothing is set up");
    let receiver = OtlpReceiver::start().await?;
    let (_subscriber, guard) = traced(&receiver)?;
    let cluster = Cluster::start().await?;
    let gw = cluster.active_namespace("acme/traced", kv_spec()).await?;
    let mut client = gw.kv(Some(&admin_token())).await?;
    client.put_items(with_traceparent(put("acme/traced", "r"))).await?;
    let mut anonymous = gw.kv(None).await?;
    let refused = anonymous.get_items(with_traceparent(get("acme/traced", "r"))).await.expect_err("no token");
    assert_eq!(refused.code(), Code::Unauthenticated);
    let guard = flush(guard).await?;

    let spans = eventually(WAIT, || async {
        let spans = of_trace(&receiver.spans());
        anyhow::ensure!(spans.len() >= 3, "{} spans of the trace so far: {spans:#?}", spans.len());
        Ok(spans)
    })
    .await?;
    let server = spans
        .iter()
        .find(|s| s.attribute("rpc.method").as_deref() == Some("PutItems"))
        .with_context(|| format!("no PutItems span in {spans:#?}"))?;
    assert_eq!(server.name(), "prism.kv.v1.KeyValueService/PutItems");
    assert_eq!(server.parent_span_id(), CALLER_SPAN, "continues the caller's span");
    assert_eq!(server.service.as_deref(), Some("prism-test"));
    for (key, value) in [
        ("rpc.system", "grpc"),
        ("rpc.service", "prism.kv.v1.KeyValueService"),
        ("prism.tenant", "acme"),
        ("prism.namespace", "acme/traced"),
        ("rpc.grpc.status_code", "0"),
    ] {
        assert_eq!(server.attribute(key).as_deref(), Some(value), "{key} of {server:#?}");
    }
    let backend = spans
        .iter()
        .find(|s| s.parent_span_id() == server.span_id())
        .with_context(|| format!("no child of the PutItems span in {spans:#?}"))?;
    assert_eq!(backend.attribute("db.system").as_deref(), Some("redb"));
    assert_eq!(backend.attribute("db.operation").as_deref(), Some("mutate"));
    assert_eq!(backend.attribute("db.namespace").as_deref(), Some("acme/traced"));
    let refusal = spans
        .iter()
        .find(|s| s.attribute("rpc.method").as_deref() == Some("GetItems"))
        .with_context(|| format!("no GetItems span in {spans:#?}"))?;
    assert_eq!(refusal.attribute("prism.refused_by").as_deref(), Some("authn"));
    assert_eq!(refusal.attribute("rpc.grpc.status_code").as_deref(), Some("16"));
    guard.shutdown();
    Ok(())
}

/// A TimeSeries write sent with a `traceparent` stores the trace context
/// of its backend span in the Kafka record headers (`traceparent`,
/// `tracestate`), and that span is exported as a producer span.
#[tokio::test]
async fn a_writes_trace_context_reaches_kafka_record_headers() -> anyhow::Result<()> {
    let Some(broker) = prism_testkit::kafka::KafkaBroker::start_or_skip()? else {
        println!("{}", prism_testkit::kafka::skip_reason());
        return Ok(());
    };
    let receiver = OtlpReceiver::start().await?;
    let (_subscriber, guard) = traced(&receiver)?;
    let cluster = Cluster::start().await?;
    let spec = NamespaceSpec {
        abstraction: Abstraction::TimeSeries as i32,
        backend: Backend::Kafka as i32,
        backend_config: Some(Box::new(BackendConfig {
            config: Some(Config::Kafka(KafkaConfig {
                bootstrap_servers: vec![broker.bootstrap()],
                partitions: 1,
                replication_factor: 1,
            })),
        })),
        ..Default::default()
    };
    let gw = cluster.active_namespace("acme/stream", spec).await?;
    let mut client = prism_client::time_series(&gw.endpoint(), Some(&admin_token())).await?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    let event = ts::Event {
        schema_version: 0,
        time_series_id: "s".into(),
        event_time: Some(prost_types::Timestamp { seconds: now.as_secs() as i64, nanos: 0 }),
        event_id: "e1".into(),
        items: vec![ts::EventItem { key: b"k".to_vec(), value: b"v".to_vec() }],
        tags: Default::default(),
    };
    let write = ts::WriteEventRecordsRequest { namespace: "acme/stream".into(), events: vec![event] };
    client.write_event_records_sync(with_traceparent(write)).await?;
    let guard = flush(guard).await?;

    let producer = eventually(WAIT, || async {
        of_trace(&receiver.spans())
            .into_iter()
            .find(|s| s.attribute("messaging.system").as_deref() == Some("kafka"))
            .context("no kafka span yet")
    })
    .await?;
    assert_eq!(producer.attribute("messaging.operation").as_deref(), Some("publish"));

    let mut cp = cluster.control_plane.client().await?;
    let ns = cp.get_namespace(GetNamespaceRequest { name: "acme/stream".into() }).await?.into_inner();
    let topic = prism_plugin_kafka::codec::topic(&prism_plugin_api::Namespace {
        name: ns.name.clone(),
        create_revision: ns.create_revision,
        spec: ns.spec.clone().unwrap_or_default(),
    });
    let headers = tokio::task::spawn_blocking({
        let bootstrap = broker.bootstrap();
        move || first_record_headers(&bootstrap, &topic)
    })
    .await??;
    let want = format!("00-{TRACE_ID}-{}-01", producer.span_id());
    assert_eq!(headers.get("traceparent"), Some(&want), "{headers:?}");
    assert_eq!(headers.get("tracestate").map(String::as_str), Some("vendor=abc"), "{headers:?}");
    guard.shutdown();
    Ok(())
}

/// The headers of the first record of partition 0 of `topic`.
fn first_record_headers(bootstrap: &str, topic: &str) -> anyhow::Result<HashMap<String, String>> {
    use rdkafka::Message;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Headers;
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "prism-observability-test")
        .set("enable.auto.commit", "false")
        .create()?;
    let mut assignment = rdkafka::TopicPartitionList::new();
    assignment.add_partition_offset(topic, 0, rdkafka::Offset::Beginning)?;
    consumer.assign(&assignment)?;
    let deadline = std::time::Instant::now() + WAIT;
    while std::time::Instant::now() < deadline {
        if let Some(message) = consumer.poll(Duration::from_millis(500)) {
            let message = message?;
            let mut out = HashMap::new();
            if let Some(headers) = message.headers() {
                for h in headers.iter() {
                    out.insert(h.key.to_owned(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned());
                }
            }
            return Ok(out);
        }
    }
    anyhow::bail!("no record in {topic}")
}

/// The shipped alert rules and scrape configuration are what Prometheus
/// accepts (`promtool check`).
#[test]
fn shipped_prometheus_files_pass_promtool() -> anyhow::Result<()> {
    if prism_testkit::prometheus::find_binary("promtool").is_none() {
        if prism_testkit::postgres::servers_required() {
            anyhow::bail!("promtool is not installed: run `{}`", prism_testkit::prometheus::INSTALL_COMMAND);
        }
        println!("{}", skip_reason());
        return Ok(());
    }
    promtool(&["check", "rules", &deploy("prometheus/alerts.yml")])?;
    promtool(&["test", "rules", &deploy("prometheus/alerts_test.yml")])?;
    promtool(&["check", "config", &deploy("prometheus/prism-dev.yml")])?;
    let dashboard = std::fs::read_to_string(deploy("grafana/prism.json"))?;
    let json: serde_json::Value = serde_json::from_str(&dashboard).context("the dashboard is JSON")?;
    anyhow::ensure!(json["panels"].as_array().is_some_and(|p| !p.is_empty()), "the dashboard has panels");
    Ok(())
}
