//! Gateway → Pulsar: `WriteEventRecordsSync` throughput through the gateway
//! (gRPC, every layer, the pulsar plugin and its relay) against a bare
//! Pulsar producer measured in the same run: the `pulsar` crate's
//! producer, connected straight to the broker, sending the message the
//! plugin sends (key, event time, epoch property, encoded event) and
//! awaiting its receipt, one message per operation, at the same
//! concurrency (one producer shared by the tasks, as the plugin shares one
//! per topic). The gateway is driven by tonic clients in this process and
//! by h2load (far cheaper per request; skipped, saying so, when not
//! installed); the plugin is also called directly, without the gateway.
//! See `docs/benchmarks.md`, "Gateway → Pulsar". It is the gateway's
//! bench (feature `pulsar`), not the plugin's: plugins know only the plugin
//! API, and this one drives a whole gateway.
//!
//! `cargo bench -p prism-gateway --features pulsar --bench pulsar`
//!
//! `PRISM_BENCH_OPS` (writes per phase, default 4 000), `PRISM_BENCH_ROUNDS`
//! (default 3) and `PRISM_BENCH_CONCURRENCY` (default 16) change the sample.
//! Without `--bench` (`cargo test --benches`) it runs once, briefly, as a
//! smoke test, and skips when pulsar-lite is not installed (unless
//! `PRISM_REQUIRE_SERVERS`).

use std::sync::Arc;
use std::time::Instant;

use hdrhistogram::Histogram;
use prism_plugin_api::ts::{Event, TimeSeries};
use prism_plugin_api::{Namespace, Plugin, now_micros};
use prism_plugin_pulsar::codec::{self, StoredEvent, record};
use prism_plugin_pulsar::pulsar::{Producer, Pulsar, TokioExecutor, producer};
use prism_plugin_pulsar::{PulsarPlugin, PulsarPluginConfig, Topics};
use prism_proto::control::backend_config::Config;
use prism_proto::control::{Abstraction, Backend, BackendConfig, NamespaceSpec, PulsarConfig};
use prism_proto::timeseries as ts;
use prism_testkit::cpu::Cpu;
use prism_testkit::h2load;
use prism_testkit::pulsar::PulsarBroker;
use prost::Message as _;

const NAMESPACE: &str = "bench/pulsar";
const VALUE_BYTES: usize = 100;
/// The message property the plugin stamps its epoch in.
const EPOCH_PROPERTY: &str = "prism-epoch";

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() -> anyhow::Result<()> {
    let bench = std::env::args().any(|a| a == "--bench");
    let Some(broker) = PulsarBroker::start_or_skip()? else {
        println!("skipped: pulsar-lite is not installed (`{}`)", prism_testkit::pulsar::INSTALL_COMMAND);
        return Ok(());
    };
    let (ops, rounds) = if bench { (env("PRISM_BENCH_OPS", 4000), env("PRISM_BENCH_ROUNDS", 3)) } else { (64, 1) };
    let concurrency = env("PRISM_BENCH_CONCURRENCY", 16);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(run(&broker, ops, rounds, concurrency, bench))
}

fn spec(service_url: &str) -> NamespaceSpec {
    NamespaceSpec {
        abstraction: Abstraction::TimeSeries as i32,
        backend: Backend::Pulsar as i32,
        backend_config: Some(Box::new(BackendConfig {
            config: Some(Config::Pulsar(PulsarConfig { service_url: service_url.to_owned(), topic: String::new() })),
        })),
        ..NamespaceSpec::default()
    }
}

fn event(series: &str, time: i64, id: String) -> Event {
    let mut value = series.as_bytes().to_vec();
    value.resize(VALUE_BYTES, b'.');
    Event {
        time_series_id: series.to_owned(),
        event_time: time,
        event_id: id,
        items: vec![(b"v".to_vec(), value)],
        tags: Default::default(),
    }
}

fn to_proto(e: &Event) -> ts::Event {
    ts::Event {
        time_series_id: e.time_series_id.clone(),
        event_time: Some(prost_types::Timestamp {
            seconds: e.event_time.div_euclid(1_000_000),
            nanos: (e.event_time.rem_euclid(1_000_000) * 1000) as i32,
        }),
        event_id: e.event_id.clone(),
        items: e.items.iter().map(|(k, v)| ts::EventItem { key: k.clone(), value: v.clone() }).collect(),
        tags: Default::default(),
    }
}

/// The message the plugin publishes for `e` in epoch 1.
fn message(e: &Event) -> producer::Message {
    producer::Message {
        payload: codec::encode(record::Body::Event(StoredEvent::of(e, 1))),
        partition_key: Some(e.time_series_id.clone()),
        event_time: u64::try_from(e.event_time / 1000).ok(),
        properties: [(EPOCH_PROPERTY.to_owned(), "1".to_owned())].into(),
        ..Default::default()
    }
}

struct Phase {
    ops_per_s: f64,
    p50_us: f64,
    p99_us: f64,
    /// CPU per operation, µs: this process (gateway, plugin, producers,
    /// client tasks) and the rest of the machine (the broker, h2load,
    /// other users).
    process_us: f64,
    rest_us: f64,
}

/// Runs `phase`, and adds its CPU per operation to what it returns.
async fn measured<F: std::future::Future<Output = anyhow::Result<Option<Phase>>>>(
    ops: usize,
    phase: F,
) -> anyhow::Result<Option<Phase>> {
    let before = Cpu::now();
    let Some(mut p) = phase.await? else { return Ok(None) };
    let (process, rest) = Cpu::now().since(before);
    let per_op = |d: std::time::Duration| d.as_secs_f64() * 1e6 / ops as f64;
    p.process_us = per_op(process);
    p.rest_us = per_op(rest);
    Ok(Some(p))
}

/// `concurrency` tasks, `ops / concurrency` operations each, one in flight
/// per task; `op(task, i)` does one.
async fn drive<F, Fut>(concurrency: usize, ops: usize, op: F) -> anyhow::Result<Phase>
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let op = Arc::new(op);
    let per = ops / concurrency;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..concurrency {
        let op = op.clone();
        tasks.spawn(async move {
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
            for i in 0..per {
                let t = Instant::now();
                op(task, i).await?;
                h.saturating_record(t.elapsed().as_nanos() as u64);
            }
            anyhow::Ok(h)
        });
    }
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    while let Some(done) = tasks.join_next().await {
        all.add(done??)?;
    }
    Ok(Phase {
        ops_per_s: (per * concurrency) as f64 / started.elapsed().as_secs_f64(),
        p50_us: all.value_at_quantile(0.5) as f64 / 1000.0,
        p99_us: all.value_at_quantile(0.99) as f64 / 1000.0,
        process_us: 0.0,
        rest_us: 0.0,
    })
}

type TsClient = ts::time_series_service_client::TimeSeriesServiceClient<tonic::transport::Channel>;

fn authed<T>(message: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    if let Ok(v) = format!("Bearer {}", prism_testkit::admin_token()).parse() {
        req.metadata_mut().insert("authorization", v);
    }
    req
}

async fn run(broker: &PulsarBroker, ops: usize, rounds: usize, concurrency: usize, bench: bool) -> anyhow::Result<()> {
    let cluster = prism_testkit::Cluster::start().await?;
    let gw = cluster.active_namespace(NAMESPACE, spec(&broker.service_url())).await?;
    let mut clients: Vec<TsClient> = Vec::new();
    for _ in 0..concurrency {
        let channel = prism_client::endpoint(&gw.endpoint())?.connect().await?;
        clients.push(TsClient::new(channel));
    }
    let clients = Arc::new(clients);
    let use_h2load = bench && h2load::installed();
    if bench && !use_h2load {
        anyhow::ensure!(
            !prism_testkit::postgres::servers_required(),
            "h2load is not installed: run `{}`",
            h2load::INSTALL_COMMAND
        );
        println!("h2load is not installed (`{}`): the h2load phase is skipped", h2load::INSTALL_COMMAND);
    }
    let body_dir = std::env::temp_dir().join(format!("prism-pulsar-bench-{}", std::process::id()));
    std::fs::create_dir_all(&body_dir)?;

    // The plugin's and the bare producer's topic: a namespace of its own,
    // provisioned by the plugin.
    let plugin = Arc::new(PulsarPlugin::new(PulsarPluginConfig::default()));
    let direct_ns =
        Namespace { name: "bench/pulsar-direct".into(), create_revision: 1, spec: spec(&broker.service_url()) };
    plugin.provision(&direct_ns).await?;
    // Opened once, as the gateway keeps it with the namespace's entry.
    let direct = TimeSeries::open(plugin.as_ref(), &direct_ns)?;
    let topics = Topics::of(&direct_ns)?;
    let client: Pulsar<TokioExecutor> = Pulsar::builder(broker.service_url(), TokioExecutor).build().await?;
    let bare: Producer<TokioExecutor> = client.producer().with_topic(&topics.data).build().await?;
    let bare = Arc::new(tokio::sync::Mutex::new(bare));

    println!(
        "gateway → pulsar, WriteEventRecordsSync of one {VALUE_BYTES}-byte event, C = {concurrency}, {ops} ops per phase"
    );
    println!(
        "{:<6} {:>10} {:>10} {:>10} {:>10} {:>8} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "round",
        "gateway/s",
        "h2load/s",
        "plugin/s",
        "bare/s",
        "gw/bare",
        "h2l/bare",
        "plug/bare",
        "gw p50",
        "gw p99",
        "plug p50",
        "plug p99",
        "bare p50",
        "bare p99"
    );
    let (mut gateway_ratios, mut h2load_ratios) = (Vec::new(), Vec::new());
    let mut cpu_lines = Vec::new();
    for round in 0..rounds {
        let gateway_phase = || {
            let clients = clients.clone();
            drive(concurrency, ops, move |task, i| {
                let mut c = clients[task].clone();
                async move {
                    let e = event(&format!("s-{task}"), now_micros(), format!("g{round}-{task}-{i}"));
                    let request =
                        ts::WriteEventRecordsRequest { namespace: NAMESPACE.into(), events: vec![to_proto(&e)] };
                    let r = c.write_event_records_sync(authed(request)).await?.into_inner();
                    anyhow::ensure!(r.accepted == 1, "accepted {}", r.accepted);
                    Ok(())
                }
            })
        };
        let plugin_phase = || {
            let direct = direct.clone();
            drive(concurrency, ops, move |task, i| {
                let direct = direct.clone();
                async move {
                    let e = event(&format!("s-{task}"), now_micros(), format!("p{round}-{task}-{i}"));
                    direct.write(&[e]).await?;
                    Ok(())
                }
            })
        };
        let bare_phase = || {
            let bare = bare.clone();
            drive(concurrency, ops, move |task, i| {
                let bare = bare.clone();
                async move {
                    let e = event(&format!("s-{task}"), now_micros(), format!("d{round}-{task}-{i}"));
                    // Queued under the lock, in order; acknowledged without
                    // it, as the plugin does.
                    let receipt = bare.lock().await.send_non_blocking(message(&e)).await?;
                    receipt.await?;
                    Ok(())
                }
            })
        };
        // The same writes sent by h2load: one process, `concurrency`
        // connections, one event (stamped when the frame is made; the
        // topic has no partitions, so the series does not matter).
        let h2load_phase = || {
            let (endpoint, token) = (gw.endpoint(), prism_testkit::admin_token());
            let body = body_dir.join("write.grpc");
            let mut probe = clients[0].clone();
            async move {
                if !use_h2load {
                    return anyhow::Ok(None);
                }
                let e = event("s-h2load", now_micros(), format!("h{round}"));
                let request = ts::WriteEventRecordsRequest { namespace: NAMESPACE.into(), events: vec![to_proto(&e)] };
                std::fs::write(&body, h2load::grpc_body(&request.encode_to_vec()))?;
                let sent = ops / concurrency * concurrency;
                let outcome = tokio::task::spawn_blocking(move || {
                    h2load::run(&h2load::Load {
                        endpoint: &endpoint,
                        path: "/prism.timeseries.v1.TimeSeriesService/WriteEventRecordsSync",
                        body: &body,
                        token: &token,
                        connections: concurrency,
                        requests: sent,
                    })
                })
                .await??;
                anyhow::ensure!(outcome.succeeded as usize == sent, "h2load: {} of {sent} answered", outcome.succeeded);
                // h2load sees HTTP statuses only: the same write through a
                // gRPC client right after must still be accepted.
                let r = probe.write_event_records_sync(authed(request)).await?.into_inner();
                anyhow::ensure!(r.accepted == 1, "the write after h2load's was not accepted");
                let mean = outcome.mean_latency.as_secs_f64() * 1e6;
                Ok(Some(Phase {
                    ops_per_s: outcome.per_second,
                    p50_us: mean,
                    p99_us: f64::NAN,
                    process_us: 0.0,
                    rest_us: 0.0,
                }))
            }
        };
        let some = |phase: anyhow::Result<Phase>| phase.map(Some);
        let (g, h, p, d) = if round % 2 == 0 {
            let g = measured(ops, async { some(gateway_phase().await) }).await?;
            let h = measured(ops, h2load_phase()).await?;
            let p = measured(ops, async { some(plugin_phase().await) }).await?;
            (g, h, p, measured(ops, async { some(bare_phase().await) }).await?)
        } else {
            let d = measured(ops, async { some(bare_phase().await) }).await?;
            let p = measured(ops, async { some(plugin_phase().await) }).await?;
            let h = measured(ops, h2load_phase()).await?;
            (measured(ops, async { some(gateway_phase().await) }).await?, h, p, d)
        };
        let (Some(g), Some(p), Some(d)) = (g, p, d) else { anyhow::bail!("a phase did not run") };
        for (label, phase) in [("gateway", Some(&g)), ("h2load", h.as_ref()), ("plugin", Some(&p)), ("bare", Some(&d))]
        {
            if let Some(phase) = phase {
                cpu_lines.push(format!(
                    "round {} {label:<8} CPU µs/op: this process {:>6.1}, rest of the machine (broker, h2load, others) {:>6.1}",
                    round + 1,
                    phase.process_us,
                    phase.rest_us
                ));
            }
        }
        gateway_ratios.push(g.ops_per_s / d.ops_per_s);
        let h2load_ratio = h.as_ref().map_or(f64::NAN, |h| h.ops_per_s / d.ops_per_s);
        if h.is_some() {
            h2load_ratios.push(h2load_ratio);
        }
        println!(
            "{:<6} {:>10.0} {:>10.0} {:>10.0} {:>10.0} {:>8.3} {:>8.3} {:>8.3} {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>9.0}",
            round + 1,
            g.ops_per_s,
            h.as_ref().map_or(f64::NAN, |h| h.ops_per_s),
            p.ops_per_s,
            d.ops_per_s,
            g.ops_per_s / d.ops_per_s,
            h2load_ratio,
            p.ops_per_s / d.ops_per_s,
            g.p50_us,
            g.p99_us,
            p.p50_us,
            p.p99_us,
            d.p50_us,
            d.p99_us
        );
    }
    let _ = std::fs::remove_dir_all(&body_dir);
    for line in &cpu_lines {
        println!("{line}");
    }
    for (what, mut ratios) in [("gateway (tonic clients)", gateway_ratios), ("gateway (h2load)", h2load_ratios)] {
        if ratios.is_empty() {
            continue;
        }
        ratios.sort_by(f64::total_cmp);
        println!(
            "write throughput {what} / bare producer: median {:.3}, range {:.3}–{:.3}",
            ratios[ratios.len() / 2],
            ratios[0],
            ratios[ratios.len() - 1]
        );
    }
    plugin.deprovision(&direct_ns).await?;
    Ok(())
}
