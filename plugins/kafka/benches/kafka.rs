//! Gateway → Kafka: `WriteEventRecordsSync` throughput through the gateway
//! (gRPC, every layer, the kafka plugin) against a baseline measured in the
//! same run: the same messages (key, partition, timestamp, encoded value)
//! sent directly with an rdkafka `FutureProducer` configured like the
//! plugin's (idempotent, `acks=all`, the same `linger.ms`), one message per
//! operation, at the same concurrency. The gateway is driven twice: by
//! tonic clients in this process, and by h2load (a load generator much
//! cheaper per request than a gRPC client; skipped, saying so, when it is
//! not installed) — its writes are counted on the broker, since h2load
//! cannot read a gRPC status. Then the latency of reading the last hour of
//! one series: `ReadEventRecords` through the gateway against the plugin's
//! `read` called directly on an identical topic. See `docs/benchmarks.md`,
//! "Gateway → Kafka".
//!
//! `cargo bench -p prism-plugin-kafka --bench kafka`
//!
//! `PRISM_BENCH_OPS` (writes per phase, default 8 000),
//! `PRISM_BENCH_ROUNDS` (default 3) and `PRISM_BENCH_CONCURRENCY`
//! (default 16) change the sample. Without `--bench` (`cargo test
//! --benches`) it runs once, briefly, as a smoke test, and skips when tansu
//! is not installed (unless `PRISM_REQUIRE_SERVERS`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use prism_plugin_api::kv::PageLimits;
use prism_plugin_api::ts::{Event, Query, TimeSeries};
use prism_plugin_api::{Namespace, Plugin, now_micros};
use prism_plugin_kafka::{KafkaPlugin, KafkaPluginConfig, codec};
use prism_proto::control::backend_config::Config;
use prism_proto::control::{Abstraction, Backend, BackendConfig, KafkaConfig, NamespaceSpec};
use prism_proto::timeseries as ts;
use prism_testkit::cpu::Cpu;
use prism_testkit::h2load;
use prism_testkit::kafka::{KafkaBroker, skip_reason};
use prost::Message as _;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::util::Timeout;

const NAMESPACE: &str = "bench/kafka";
const PARTITIONS: u32 = 4;
const VALUE_BYTES: usize = 100;
/// Series in the read phase's topic besides the one read, each with one
/// event a second over the last hour, like the one read.
const NEIGHBOURS: usize = 3;
const HOUR_SECS: i64 = 3600;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() -> anyhow::Result<()> {
    let bench = std::env::args().any(|a| a == "--bench");
    let broker = match KafkaBroker::start_or_skip()? {
        Some(broker) => broker,
        None => {
            println!("{}", skip_reason());
            return Ok(());
        }
    };
    let (ops, rounds, reads) =
        if bench { (env("PRISM_BENCH_OPS", 8000), env("PRISM_BENCH_ROUNDS", 3), 50) } else { (64, 1, 2) };
    let concurrency = env("PRISM_BENCH_CONCURRENCY", 16);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(run(&broker, ops, rounds, concurrency, reads, bench))
}

fn spec(bootstrap: &str) -> NamespaceSpec {
    NamespaceSpec {
        abstraction: Abstraction::TimeSeries as i32,
        backend: Backend::Kafka as i32,
        backend_config: Some(Box::new(BackendConfig {
            config: Some(Config::Kafka(KafkaConfig {
                bootstrap_servers: vec![bootstrap.to_owned()],
                partitions: PARTITIONS,
                replication_factor: 1,
            })),
        })),
        ..NamespaceSpec::default()
    }
}

fn value(series: &str) -> Vec<u8> {
    let mut v = series.as_bytes().to_vec();
    v.resize(VALUE_BYTES, b'.');
    v
}

fn event(series: &str, time: i64, id: String) -> Event {
    Event {
        time_series_id: series.to_owned(),
        event_time: time,
        event_id: id,
        items: vec![(b"v".to_vec(), value(series))],
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

struct Phase {
    ops_per_s: f64,
    p50_us: f64,
    p99_us: f64,
    /// CPU per operation, µs: this process (gateway, plugin, librdkafka,
    /// client tasks), the rest of the machine (the broker, h2load, other
    /// users), and h2load alone.
    process_us: f64,
    rest_us: f64,
    h2load_us: f64,
}

fn summary(h: &Histogram<u64>, ops: usize, wall: Duration) -> Phase {
    Phase {
        ops_per_s: ops as f64 / wall.as_secs_f64(),
        p50_us: h.value_at_quantile(0.5) as f64 / 1000.0,
        p99_us: h.value_at_quantile(0.99) as f64 / 1000.0,
        process_us: 0.0,
        rest_us: 0.0,
        h2load_us: 0.0,
    }
}

/// Runs `phase`, and adds its CPU per operation to what it returns.
async fn measured<F: std::future::Future<Output = anyhow::Result<Option<Phase>>>>(
    ops: usize,
    phase: F,
) -> anyhow::Result<Option<Phase>> {
    let before = Cpu::now();
    let Some(mut p) = phase.await? else { return Ok(None) };
    let (process, rest) = Cpu::now().since(before);
    let per_op = |d: Duration| d.as_secs_f64() * 1e6 / ops as f64;
    p.process_us = per_op(process);
    p.rest_us = per_op(rest) - p.h2load_us;
    Ok(Some(p))
}

/// Messages stored in `topic` so far, counted by reading them all to the
/// end of every partition as a fetch sees it (tansu's watermarks lag
/// behind its log).
fn stored(bootstrap: &str, topic: &str) -> anyhow::Result<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "prism-bench-count")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()?;
    let mut assignment = TopicPartitionList::new();
    for p in 0..PARTITIONS as i32 {
        assignment.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let (mut open, mut count) = (PARTITIONS as usize, 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while open > 0 {
        anyhow::ensure!(Instant::now() < deadline, "counting {topic} took too long");
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(_)) => count += 1,
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => open -= 1,
            Some(Err(e)) => return Err(e.into()),
            None => {}
        }
    }
    Ok(count)
}

type TsClient = ts::time_series_service_client::TimeSeriesServiceClient<tonic::transport::Channel>;

fn authed<T>(message: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    if let Ok(v) = format!("Bearer {}", prism_testkit::admin_token()).parse() {
        req.metadata_mut().insert("authorization", v);
    }
    req
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
    Ok(summary(&all, per * concurrency, started.elapsed()))
}

/// A temp dir for h2load's request bodies, removed on drop.
struct BodyDir(std::path::PathBuf);

impl BodyDir {
    fn new() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("prism-kafka-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }

    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for BodyDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn run(
    broker: &KafkaBroker,
    ops: usize,
    rounds: usize,
    concurrency: usize,
    reads: usize,
    bench: bool,
) -> anyhow::Result<()> {
    let cluster = prism_testkit::Cluster::start().await?;
    let gw = cluster.active_namespace(NAMESPACE, spec(&broker.bootstrap())).await?;
    let mut clients: Vec<TsClient> = Vec::new();
    for _ in 0..concurrency {
        let channel = gw.channel().await?;
        clients.push(TsClient::new(channel));
    }
    let clients = Arc::new(clients);
    // The gateway namespace's topic, where h2load's writes are counted.
    let created = cluster
        .control_plane
        .client()
        .await?
        .get_namespace(prism_proto::control::GetNamespaceRequest { name: NAMESPACE.into() })
        .await?
        .into_inner();
    let gateway_topic = codec::topic(&Namespace {
        name: NAMESPACE.into(),
        create_revision: created.create_revision,
        spec: spec(&broker.bootstrap()),
    });
    let h2load_dir = BodyDir::new()?;
    let use_h2load = bench && h2load::installed();
    if bench && !use_h2load {
        anyhow::ensure!(
            !prism_testkit::postgres::servers_required(),
            "h2load is not installed: run `{}`",
            h2load::INSTALL_COMMAND
        );
        println!("h2load is not installed (`{}`): the h2load phase is skipped", h2load::INSTALL_COMMAND);
    }

    // The baseline's topic: a namespace of its own, provisioned by the
    // plugin (same partitions), written by a bare producer.
    let plugin = Arc::new(KafkaPlugin::new(KafkaPluginConfig::default())?);
    let direct_ns =
        Namespace { name: "bench/kafka-direct".into(), create_revision: 1, spec: spec(&broker.bootstrap()) };
    plugin.provision(&direct_ns).await?;
    // Opened once, as the gateway keeps it with the namespace's entry.
    let direct = TimeSeries::open(plugin.as_ref(), &direct_ns)?;
    let config = KafkaPluginConfig::default();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", config.message_timeout.as_millis().to_string())
        .set("linger.ms", config.linger.as_millis().max(1).to_string())
        .create()?;
    let producer = Arc::new(producer);
    let topic = Arc::new(codec::topic(&direct_ns));

    // One series per partition; task t writes series[t % partitions], so
    // every phase spreads its writes evenly over the partitions.
    let series: Vec<String> = (0..PARTITIONS as i32)
        .map(|p| {
            (0..).map(|k| format!("s-{k}")).find(|s| codec::partition(s, PARTITIONS as i32) == p).unwrap_or_default()
        })
        .collect();
    let series = Arc::new(series);
    println!(
        "gateway → kafka, WriteEventRecordsSync of one {VALUE_BYTES}-byte event, C = {concurrency}, {ops} ops per phase"
    );
    println!(
        "{:<6} {:>10} {:>10} {:>10} {:>10} {:>8} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "round",
        "gateway/s",
        "h2load/s",
        "plugin/s",
        "direct/s",
        "gw/dir",
        "h2l/dir",
        "plug/dir",
        "gw p50",
        "gw p99",
        "plug p50",
        "plug p99",
        "dir p50",
        "dir p99"
    );
    let mut ratios = Vec::new();
    let mut h2load_ratios = Vec::new();
    let mut cpu_lines = Vec::new();
    for round in 0..rounds {
        let gateway_phase = || {
            let (clients, series) = (clients.clone(), series.clone());
            drive(concurrency, ops, move |task, i| {
                let mut c = clients[task].clone();
                let e = event(&series[task % series.len()], now_micros(), format!("g{round}-{task}-{i}"));
                async move {
                    let request =
                        ts::WriteEventRecordsRequest { namespace: NAMESPACE.into(), events: vec![to_proto(&e)] };
                    let r = c.write_event_records_sync(authed(request)).await?.into_inner();
                    anyhow::ensure!(r.accepted == 1, "accepted {}", r.accepted);
                    Ok(())
                }
            })
        };
        let direct_phase = || {
            let (producer, topic, series) = (producer.clone(), topic.clone(), series.clone());
            drive(concurrency, ops, move |task, i| {
                let (producer, topic) = (producer.clone(), topic.clone());
                let e = event(&series[task % series.len()], now_micros(), format!("d{round}-{task}-{i}"));
                async move {
                    let payload = codec::encode(&e);
                    let record = FutureRecord::to(&topic)
                        .key(e.time_series_id.as_bytes())
                        .payload(payload.as_slice())
                        .partition(codec::partition(&e.time_series_id, PARTITIONS as i32))
                        .timestamp(codec::timestamp_ms(e.event_time));
                    producer.send(record, Timeout::After(Duration::from_secs(5))).await.map_err(|(e, _)| e)?;
                    Ok(())
                }
            })
        };
        // The plugin called directly, without the gateway: what the
        // plugin adds to the bare producer.
        let plugin_phase = || {
            let (direct, series) = (direct.clone(), series.clone());
            drive(concurrency, ops, move |task, i| {
                let direct = direct.clone();
                let e = event(&series[task % series.len()], now_micros(), format!("p{round}-{task}-{i}"));
                async move {
                    direct.write(&[e]).await?;
                    Ok(())
                }
            })
        };
        // The same writes sent by h2load: one process per partition, each
        // with its share of the connections, sending that partition's
        // series' event (stamped when the frame is made; each copy is a
        // message of its own: Kafka keeps duplicates, reads fold them), so
        // each partition gets the share it gets in the other phases.
        let h2load_phase = || {
            let (endpoint, token, topic) = (gw.endpoint(), prism_testkit::admin_token(), gateway_topic.clone());
            let bootstrap = broker.bootstrap();
            let bodies: Vec<std::path::PathBuf> =
                (0..series.len()).map(|p| h2load_dir.path().join(format!("{p}.grpc"))).collect();
            let series = series.clone();
            async move {
                if !use_h2load {
                    return Ok(None);
                }
                for (p, body) in bodies.iter().enumerate() {
                    let e = event(&series[p], now_micros(), format!("h{round}-{p}"));
                    let request =
                        ts::WriteEventRecordsRequest { namespace: NAMESPACE.into(), events: vec![to_proto(&e)] };
                    std::fs::write(body, h2load::grpc_body(&request.encode_to_vec()))?;
                }
                let before = stored(&bootstrap, &topic)?;
                // Connections and requests split evenly over the partitions,
                // as the tasks of the other phases are.
                let parts = bodies.len();
                let share = move |total: usize, p: usize| total / parts + usize::from(p < total % parts);
                let sent: usize = (0..bodies.len()).map(|p| share(ops / concurrency * concurrency, p)).sum();
                let outcome = tokio::task::spawn_blocking(move || {
                    let loads: Vec<h2load::Load<'_>> = bodies
                        .iter()
                        .enumerate()
                        .map(|(p, body)| h2load::Load {
                            endpoint: &endpoint,
                            path: "/prism.timeseries.v1.TimeSeriesService/WriteEventRecordsSync",
                            body,
                            token: &token,
                            connections: share(concurrency, p),
                            requests: share(ops / concurrency * concurrency, p),
                        })
                        .collect();
                    h2load::run_all(&loads)
                })
                .await??;
                let written = stored(&bootstrap, &topic)? - before;
                anyhow::ensure!(
                    outcome.succeeded as usize == sent && written as usize == sent,
                    "h2load: {} of {sent} answered, {written} stored",
                    outcome.succeeded
                );
                let mean = outcome.mean_latency.as_secs_f64() * 1e6;
                anyhow::Ok(Some(Phase {
                    ops_per_s: outcome.per_second,
                    p50_us: mean,
                    p99_us: f64::NAN,
                    process_us: 0.0,
                    rest_us: 0.0,
                    h2load_us: outcome.cpu.as_secs_f64() * 1e6 / sent as f64,
                }))
            }
        };
        let some = |phase: anyhow::Result<Phase>| phase.map(Some);
        let (g, h, p, d) = if round % 2 == 0 {
            let g = measured(ops, async { some(gateway_phase().await) }).await?;
            let h = measured(ops, h2load_phase()).await?;
            let p = measured(ops, async { some(plugin_phase().await) }).await?;
            (g, h, p, measured(ops, async { some(direct_phase().await) }).await?)
        } else {
            let d = measured(ops, async { some(direct_phase().await) }).await?;
            let p = measured(ops, async { some(plugin_phase().await) }).await?;
            let h = measured(ops, h2load_phase()).await?;
            (measured(ops, async { some(gateway_phase().await) }).await?, h, p, d)
        };
        let (Some(g), Some(p), Some(d)) = (g, p, d) else { anyhow::bail!("a phase did not run") };
        let ratio = g.ops_per_s / d.ops_per_s;
        ratios.push(ratio);
        let h2load_ratio = h.as_ref().map_or(f64::NAN, |h| h.ops_per_s / d.ops_per_s);
        if h.is_some() {
            h2load_ratios.push(h2load_ratio);
        }
        for (label, phase) in
            [("gateway", Some(&g)), ("h2load", h.as_ref()), ("plugin", Some(&p)), ("direct", Some(&d))]
        {
            if let Some(phase) = phase {
                cpu_lines.push(format!(
                    "round {} {label:<8} CPU µs/op: this process {:>6.1}, h2load {:>5.1}, rest of the machine (broker, others) {:>6.1}",
                    round + 1,
                    phase.process_us,
                    phase.h2load_us,
                    phase.rest_us
                ));
            }
        }
        println!(
            "{:<6} {:>10.0} {:>10.0} {:>10.0} {:>10.0} {:>8.3} {:>8.3} {:>8.3} {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>9.0}",
            round + 1,
            g.ops_per_s,
            h.as_ref().map_or(f64::NAN, |h| h.ops_per_s),
            p.ops_per_s,
            d.ops_per_s,
            ratio,
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
    for line in &cpu_lines {
        println!("{line}");
    }
    for (what, mut ratios) in [("gateway (tonic clients)", ratios), ("gateway (h2load)", h2load_ratios)] {
        if ratios.is_empty() {
            continue;
        }
        ratios.sort_by(f64::total_cmp);
        println!(
            "write throughput {what} / direct: median {:.3}, range {:.3}–{:.3}",
            ratios[ratios.len() / 2],
            ratios[0],
            ratios[ratios.len() - 1]
        );
    }

    // Reads: one event a second over the last hour for the series read
    // and its neighbours, in both topics, then the last hour of the one.
    let now = now_micros();
    let per_series = if bench { HOUR_SECS as usize } else { 60 };
    let mut c = clients[0].clone();
    for s in 0..=NEIGHBOURS {
        let series = format!("read-{s}");
        let events: Vec<Event> =
            (0..per_series).map(|i| event(&series, now - (i as i64) * 1_000_000 - 1, format!("r{i}"))).collect();
        for batch in events.chunks(500) {
            let request = ts::WriteEventRecordsRequest {
                namespace: NAMESPACE.into(),
                events: batch.iter().map(to_proto).collect(),
            };
            c.write_event_records_sync(authed(request)).await.context("preload through the gateway")?;
            direct.write(batch).await.context("preload directly")?;
        }
    }
    let start = now - HOUR_SECS * 1_000_000;
    let mut gateway_h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let mut direct_h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let everything = PageLimits::new(64 << 20, None);
    for _ in 0..reads {
        let request = ts::ReadEventRecordsRequest {
            namespace: NAMESPACE.into(),
            time_series_id: "read-0".into(),
            start: Some(prost_types::Timestamp { seconds: start.div_euclid(1_000_000), nanos: 0 }),
            page_size_bytes: 16 << 20,
            ..Default::default()
        };
        let t = Instant::now();
        let got = c.read_event_records(authed(request)).await?.into_inner();
        gateway_h.saturating_record(t.elapsed().as_nanos() as u64);
        anyhow::ensure!(got.events.len() == per_series, "gateway read {} of {per_series}", got.events.len());
        let t = Instant::now();
        let page = direct.query(&Query::series("read-0", (start, i64::MAX), everything), now_micros()).await?;
        direct_h.saturating_record(t.elapsed().as_nanos() as u64);
        anyhow::ensure!(page.events.len() == per_series, "direct read {} of {per_series}", page.events.len());
    }
    let g = summary(&gateway_h, reads, Duration::from_secs(1));
    let d = summary(&direct_h, reads, Duration::from_secs(1));
    println!(
        "read last hour of one series ({per_series} events; {} series in {PARTITIONS} partitions), {reads} reads: \
         gateway p50 {:.0} µs p99 {:.0} µs; plugin direct p50 {:.0} µs p99 {:.0} µs; p50 ratio {:.3}",
        NEIGHBOURS + 1,
        g.p50_us,
        g.p99_us,
        d.p50_us,
        d.p99_us,
        g.p50_us / d.p50_us
    );
    plugin.deprovision(&direct_ns).await?;
    Ok(())
}
