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
//! Then `ReadEventRecords` the same way: a namespace preloaded with
//! `PRISM_BENCH_EVENTS` events over 8 series, one page of 100 events of a
//! series per read, through the gateway (tonic clients; h2load, every
//! answer's size checked), through the plugin directly, and by a bare
//! `pulsar` reader doing what a user would to get the same page
//! ([`bare_read`]); every answer is checked to be the page.
//!
//! `cargo bench -p prism-gateway --features pulsar --bench pulsar`
//!
//! `PRISM_BENCH_OPS` (writes per phase, default 4 000), `PRISM_BENCH_READS`
//! (reads per phase, default 160), `PRISM_BENCH_EVENTS` (default 1 000),
//! `PRISM_BENCH_ROUNDS` (default 3) and `PRISM_BENCH_CONCURRENCY` (default
//! 16) change the sample.
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
        schema_version: 0,
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
    let (events, reads) = if bench {
        (env("PRISM_BENCH_EVENTS", 1000), env("PRISM_BENCH_READS", 160))
    } else {
        (READ_SERIES * PAGE, concurrency)
    };
    read_rounds(&cluster, broker, &plugin, &Reading { events, reads, rounds, concurrency, use_h2load }).await
}

/// Series of the read namespace; its events are spread over them evenly.
const READ_SERIES: usize = 8;
/// Events a read asks for: one page.
const PAGE: usize = 100;

struct Reading {
    /// Events preloaded into the read namespace.
    events: usize,
    /// Reads per phase.
    reads: usize,
    rounds: usize,
    concurrency: usize,
    use_h2load: bool,
}

/// One page of a series, newest first, as a user of a bare `pulsar`
/// client gets it: a reader of its own (non-durable, from the earliest
/// message), the topic's last message id asked once, then every message up
/// to it read; a message of another key skipped undecoded, the others
/// decoded and kept when they are events of the window; the newest `PAGE`
/// of them returned. Returns them and the messages read (each once: what
/// pulsar-lite delivers again, at or before the newest message seen, is
/// skipped, as the plugin does; see `Delivered` in the plugin).
async fn bare_read(
    client: &Pulsar<TokioExecutor>,
    topic: &str,
    subscription: String,
    series: &str,
    (start, end): (i64, i64),
) -> anyhow::Result<(Vec<StoredEvent>, usize)> {
    use futures_util::TryStreamExt as _;
    use prism_plugin_pulsar::pulsar::consumer::{ConsumerOptions, InitialPosition};
    use prism_plugin_pulsar::pulsar::reader::Reader;
    let mut reader: Reader<Vec<u8>, TokioExecutor> = client
        .reader()
        .with_topic(topic)
        .with_subscription(subscription)
        .with_options(ConsumerOptions::default().durable(false).with_initial_position(InitialPosition::Earliest))
        .into_reader()
        .await?;
    let last = reader.get_last_message_id().await?;
    let last = (last.ledger_id, last.entry_id);
    let (mut found, mut read, mut newest) = (Vec::new(), 0, None);
    // Bounded as the plugin's reads are (its request timeout).
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while let Some(message) = tokio::time::timeout_at(deadline, reader.try_next())
        .await
        .map_err(|_| anyhow::anyhow!("bare: no message {last:?} after {read} messages"))??
    {
        let id = message.message_id();
        let at = (id.ledger_id, id.entry_id);
        if newest.is_some_and(|newest| at <= newest) {
            continue;
        }
        newest = Some(at);
        read += 1;
        if message.metadata().partition_key.as_deref() == Some(series)
            && let Ok(record::Body::Event(e)) = codec::decode(&message.payload.data)
            && e.event_time >= start
            && e.event_time < end
        {
            found.push(e);
        }
        if at >= last {
            break;
        }
    }
    found.sort_by(|a, b| b.event_time.cmp(&a.event_time).then_with(|| a.event_id.cmp(&b.event_id)));
    found.truncate(PAGE);
    Ok((found, read))
}

/// The read phases: ReadEventRecords of one page of a series, through the
/// gateway (tonic clients; h2load), through the plugin called directly,
/// and by a bare `pulsar` reader, rounds alternating; every answer is
/// checked to hold `PAGE` events.
async fn read_rounds(
    cluster: &prism_testkit::Cluster,
    broker: &PulsarBroker,
    plugin: &Arc<PulsarPlugin>,
    r: &Reading,
) -> anyhow::Result<()> {
    use prism_plugin_api::kv::PageLimits;
    use prism_plugin_api::ts::Query;
    use prism_plugin_pulsar::relay::Relays;
    use prism_proto::control::GetNamespaceRequest;

    const READ_NAMESPACE: &str = "bench/pulsar-read";
    let concurrency = r.concurrency;
    let gw = cluster.active_namespace(READ_NAMESPACE, spec(&broker.service_url())).await?;
    let mut clients: Vec<TsClient> = Vec::new();
    for _ in 0..concurrency {
        let channel = prism_client::endpoint(&gw.endpoint())?.connect().await?;
        clients.push(TsClient::new(channel));
    }
    let clients = Arc::new(clients);
    // The same incarnation opened in this process's plugin, for the direct
    // phase, and its data topic for the bare reader.
    let created = cluster
        .control_plane
        .client()
        .await?
        .get_namespace(GetNamespaceRequest { name: READ_NAMESPACE.into() })
        .await?
        .into_inner();
    let read_ns = Namespace {
        name: READ_NAMESPACE.into(),
        create_revision: created.create_revision,
        spec: spec(&broker.service_url()),
    };
    let direct = TimeSeries::open(plugin.as_ref(), &read_ns)?;
    let topic = Topics::of(&read_ns)?.data;
    // The bare reader needs a relay against pulsar-lite as the plugin does
    // (`plugins/pulsar/src/relay.rs`): a relay of its own. And a client
    // (so a connection) per task, as the plugin has one per running scan:
    // pulsar-lite stops delivering to readers that share a connection
    // with too many others (`ReaderPool` in the plugin says why).
    let relays = Relays::new(std::time::Duration::from_secs(5));
    let mut bare_clients: Vec<Pulsar<TokioExecutor>> = Vec::new();
    for _ in 0..concurrency {
        bare_clients.push(Pulsar::builder(relays.url(&broker.service_url())?, TokioExecutor).build().await?);
    }
    let bare_clients = Arc::new(bare_clients);

    // Preload: `events` events, a millisecond apart, over READ_SERIES
    // series, through the gateway in writes of up to 100 events.
    let base = now_micros() - r.events as i64 * 1000;
    let all: Vec<Event> = (0..r.events)
        .map(|i| event(&format!("r-{}", i % READ_SERIES), base + i as i64 * 1000, format!("r{i}")))
        .collect();
    let mut writer = clients[0].clone();
    for chunk in all.chunks(100) {
        let request = ts::WriteEventRecordsRequest {
            namespace: READ_NAMESPACE.into(),
            events: chunk.iter().map(to_proto).collect(),
        };
        let w = writer.write_event_records_sync(authed(request)).await?.into_inner();
        anyhow::ensure!(w.accepted as usize == chunk.len(), "preload: accepted {} of {}", w.accepted, chunk.len());
    }
    anyhow::ensure!(r.events / READ_SERIES >= PAGE, "{} events are too few for pages of {PAGE}", r.events);
    let window = (base, base + r.events as i64 * 1000);
    let series = |task: usize| format!("r-{}", task % READ_SERIES);
    let request = move |series: String| ts::ReadEventRecordsRequest {
        namespace: READ_NAMESPACE.into(),
        time_series_id: series,
        start: Some(to_proto(&event("", window.0, String::new())).event_time.unwrap_or_default()),
        end: Some(to_proto(&event("", window.1, String::new())).event_time.unwrap_or_default()),
        page_size_bytes: 0,
        limit: PAGE as u32,
        page_token: String::new(),
    };
    // The newest event of each series, which every answer starts with.
    let newest = |series: &str| all.iter().rev().find(|e| e.time_series_id == series).map(|e| e.event_time);
    let newest: Arc<Vec<i64>> = Arc::new((0..READ_SERIES).filter_map(|s| newest(&format!("r-{s}"))).collect());
    let scanned = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let subscriptions = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let body_dir = std::env::temp_dir().join(format!("prism-pulsar-read-bench-{}", std::process::id()));
    std::fs::create_dir_all(&body_dir)?;

    println!(
        "\ngateway → pulsar, ReadEventRecords of one page ({PAGE} of {} events of a series) from a topic of {} {VALUE_BYTES}-byte events, C = {concurrency}, {} reads per phase",
        r.events / READ_SERIES,
        r.events,
        r.reads
    );
    println!(
        "{:<6} {:>10} {:>10} {:>10} {:>10} {:>8} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "round",
        "gw pages/s",
        "h2l pg/s",
        "plug pg/s",
        "bare pg/s",
        "gw/bare",
        "h2l/bare",
        "plug/bare",
        "gw p50",
        "plug p50",
        "bare p50",
        "bare p99",
        "msgs/read"
    );
    let mut ratios: [Vec<f64>; 3] = Default::default();
    let mut rates: [Vec<f64>; 4] = Default::default();
    let mut cpu_lines = Vec::new();
    for round in 0..r.rounds {
        let gateway_phase = || {
            let (clients, newest) = (clients.clone(), newest.clone());
            drive(concurrency, r.reads, move |task, _| {
                let (mut c, newest) = (clients[task].clone(), newest.clone());
                let request = request(series(task));
                async move {
                    let page = c.read_event_records(authed(request)).await?.into_inner();
                    let first = page
                        .events
                        .first()
                        .and_then(|e| e.event_time)
                        .map(|t| t.seconds * 1_000_000 + i64::from(t.nanos) / 1000);
                    anyhow::ensure!(page.events.len() == PAGE, "gateway: {} events, not {PAGE}", page.events.len());
                    anyhow::ensure!(first == Some(newest[task % READ_SERIES]), "gateway: not the newest event first");
                    Ok(())
                }
            })
        };
        let plugin_phase = || {
            let (direct, newest) = (direct.clone(), newest.clone());
            drive(concurrency, r.reads, move |task, _| {
                let (direct, newest) = (direct.clone(), newest.clone());
                let query = Query::series(series(task), window, PageLimits::new(1 << 20, Some(PAGE as u32)));
                async move {
                    let page = direct.query(&query, now_micros()).await?;
                    anyhow::ensure!(page.events.len() == PAGE, "plugin: {} events, not {PAGE}", page.events.len());
                    anyhow::ensure!(
                        page.events[0].event_time == newest[task % READ_SERIES],
                        "plugin: not the newest event first"
                    );
                    Ok(())
                }
            })
        };
        let bare_phase = || {
            let (clients, topic, newest) = (bare_clients.clone(), topic.clone(), newest.clone());
            let (scanned, subscriptions) = (scanned.clone(), subscriptions.clone());
            scanned.store(0, std::sync::atomic::Ordering::Relaxed);
            drive(concurrency, r.reads, move |task, _| {
                let (client, topic, newest, scanned) =
                    (clients[task].clone(), topic.clone(), newest.clone(), scanned.clone());
                let n = subscriptions.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                async move {
                    let (page, read) =
                        bare_read(&client, &topic, format!("bare-read-{n}"), &series(task), window).await?;
                    scanned.fetch_add(read, std::sync::atomic::Ordering::Relaxed);
                    anyhow::ensure!(page.len() == PAGE, "bare: {} events, not {PAGE}", page.len());
                    anyhow::ensure!(
                        page[0].event_time == newest[task % READ_SERIES],
                        "bare: not the newest event first"
                    );
                    Ok(())
                }
            })
        };
        // The same read sent by h2load (series r-0 on every connection): h2load
        // sees HTTP statuses only, so the answer's size is checked instead.
        // Every answer is the same page, and a gRPC error has no body.
        let h2load_phase = || {
            let (endpoint, token) = (gw.endpoint(), prism_testkit::admin_token());
            let body = body_dir.join("read.grpc");
            let mut probe = clients[0].clone();
            let request = request(series(0));
            async move {
                if !r.use_h2load {
                    return anyhow::Ok(None);
                }
                let answer = probe.read_event_records(authed(request.clone())).await?.into_inner();
                anyhow::ensure!(answer.events.len() == PAGE, "the probe read {} events", answer.events.len());
                let answer_bytes = 5 + answer.encoded_len() as u64;
                std::fs::write(&body, h2load::grpc_body(&request.encode_to_vec()))?;
                let sent = r.reads / concurrency * concurrency;
                let outcome = tokio::task::spawn_blocking(move || {
                    h2load::run(&h2load::Load {
                        endpoint: &endpoint,
                        path: "/prism.timeseries.v1.TimeSeriesService/ReadEventRecords",
                        body: &body,
                        token: &token,
                        connections: concurrency,
                        requests: sent,
                    })
                })
                .await??;
                anyhow::ensure!(outcome.succeeded as usize == sent, "h2load: {} of {sent} answered", outcome.succeeded);
                anyhow::ensure!(
                    outcome.data_bytes == sent as u64 * answer_bytes,
                    "h2load: {} bytes of answers, not {sent} × {answer_bytes}: some reads failed",
                    outcome.data_bytes
                );
                Ok(Some(Phase {
                    ops_per_s: outcome.per_second,
                    p50_us: outcome.mean_latency.as_secs_f64() * 1e6,
                    p99_us: f64::NAN,
                    process_us: 0.0,
                    rest_us: 0.0,
                }))
            }
        };
        let some = |phase: anyhow::Result<Phase>| phase.map(Some);
        let reads = r.reads;
        let (g, h, p, d) = if round % 2 == 0 {
            let g = measured(reads, async { some(gateway_phase().await) }).await?;
            let h = measured(reads, h2load_phase()).await?;
            let p = measured(reads, async { some(plugin_phase().await) }).await?;
            (g, h, p, measured(reads, async { some(bare_phase().await) }).await?)
        } else {
            let d = measured(reads, async { some(bare_phase().await) }).await?;
            let p = measured(reads, async { some(plugin_phase().await) }).await?;
            let h = measured(reads, h2load_phase()).await?;
            (measured(reads, async { some(gateway_phase().await) }).await?, h, p, d)
        };
        let (Some(g), Some(p), Some(d)) = (g, p, d) else { anyhow::bail!("a read phase did not run") };
        let per_read =
            scanned.load(std::sync::atomic::Ordering::Relaxed) as f64 / (reads / concurrency * concurrency) as f64;
        for (label, phase) in [("gateway", Some(&g)), ("h2load", h.as_ref()), ("plugin", Some(&p)), ("bare", Some(&d))]
        {
            if let Some(phase) = phase {
                cpu_lines.push(format!(
                    "round {} {label:<8} CPU µs/read: this process {:>7.0}, rest of the machine (broker, h2load, others) {:>7.0}",
                    round + 1,
                    phase.process_us,
                    phase.rest_us
                ));
            }
        }
        let h_rate = h.as_ref().map_or(f64::NAN, |h| h.ops_per_s);
        ratios[0].push(g.ops_per_s / d.ops_per_s);
        if h.is_some() {
            ratios[1].push(h_rate / d.ops_per_s);
        }
        ratios[2].push(p.ops_per_s / d.ops_per_s);
        for (i, rate) in [g.ops_per_s, h_rate, p.ops_per_s, d.ops_per_s].into_iter().enumerate() {
            if rate.is_finite() {
                rates[i].push(rate);
            }
        }
        println!(
            "{:<6} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>8.3} {:>8.3} {:>8.3} {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>9.0}",
            round + 1,
            g.ops_per_s,
            h_rate,
            p.ops_per_s,
            d.ops_per_s,
            g.ops_per_s / d.ops_per_s,
            h_rate / d.ops_per_s,
            p.ops_per_s / d.ops_per_s,
            g.p50_us,
            p.p50_us,
            d.p50_us,
            d.p99_us,
            per_read
        );
    }
    let _ = std::fs::remove_dir_all(&body_dir);
    for line in &cpu_lines {
        println!("{line}");
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    for (i, what) in ["gateway (tonic clients)", "gateway (h2load)", "plugin", "bare reader"].into_iter().enumerate() {
        if rates[i].is_empty() {
            continue;
        }
        let pages = mean(&rates[i]);
        let ratio = match i {
            0..=2 => {
                let v = &ratios[i];
                let (lo, hi) = v.iter().fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
                format!(", / bare reader: mean {:.3} ({lo:.3}–{hi:.3})", mean(v))
            }
            _ => String::new(),
        };
        println!("read {what}: {pages:.1} pages/s, {:.0} events/s{ratio}", pages * PAGE as f64);
    }
    Ok(())
}
