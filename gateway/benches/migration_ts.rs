//! Live migration of a TimeSeries namespace, Kafka → Pulsar (issue 16,
//! "Measure"): what the backfill costs against a plain copy of the same
//! data with the backends' own clients, measured in the same run.
//!
//! A Kafka namespace (tansu) holding `PRISM_BENCH_EVENTS` events (one
//! 100-byte item each, over 64 series) is copied into Pulsar (pulsar-lite):
//!
//! - **backfill**: the real one (`prism_gateway::ts_migration::backfill_page`
//!   in a loop, at `ts_migration::PAGE`, as `background/migrate.rs` runs
//!   it) into a fresh target incarnation through the Pulsar plugin;
//! - **plain copy**, the baseline: an rdkafka consumer reads the topic's
//!   partitions from the start to their end, and a Pulsar producer (the
//!   `pulsar` crate) publishes every record's bytes as they are to a
//!   topic of its own, awaiting the receipts ten thousand at a time (the backfill's page).
//!
//! They alternate, plain first, `PRISM_BENCH_ROUNDS` rounds; events/s of
//! each, backfill / plain per round and the median, and the backfill's
//! CPU per event, in this process (the plugins and the copy) and
//! elsewhere (the brokers). A page of the
//! backfill is a query, and a Kafka query reads its partitions from the
//! window's start (`plugins/kafka/src/ts.rs`): the backfill reads the
//! topic once per page, the plain copy once.
//!
//! `cargo bench -p prism-gateway --features pulsar --bench migration_ts`
//!
//! Without tansu or pulsar-lite it is skipped with a line saying so
//! (unless `PRISM_REQUIRE_SERVERS`). Without `--bench` it runs once,
//! briefly, as a smoke test. See `docs/benchmarks.md`, "Live migration of
//! a TimeSeries namespace".

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use prism_gateway::migration::target_namespace;
use prism_gateway::ts_migration::{PAGE, backfill_page};
use prism_plugin_api::ts::{Event, TimeSeriesHandle};
use prism_plugin_api::{Namespace, Plugin, now_micros};
use prism_plugin_kafka::{KafkaPlugin, KafkaPluginConfig, NamespaceSettings};
use prism_plugin_pulsar::pulsar::{Pulsar, TokioExecutor, producer};
use prism_plugin_pulsar::{PulsarPlugin, PulsarPluginConfig};
use prism_proto::control::backend_config::Config;
use prism_proto::control::{
    Abstraction, Backend, BackendConfig, KafkaConfig, Migration, MigrationTarget, NamespaceSpec, PulsarConfig,
};
use prism_testkit::cpu::Cpu;
use prism_testkit::kafka::KafkaBroker;
use prism_testkit::pulsar::PulsarBroker;
use rdkafka::Message as _;
use rdkafka::consumer::{Consumer, StreamConsumer};

const VALUE_BYTES: usize = 100;
const SERIES: usize = 64;
/// Receipts awaited at once by the plain copy's producer.
const IN_FLIGHT: usize = 10_000;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() -> anyhow::Result<()> {
    let bench = std::env::args().any(|a| a == "--bench");
    let (events, rounds) =
        if bench { (env("PRISM_BENCH_EVENTS", 20_000), env("PRISM_BENCH_ROUNDS", 3)) } else { (500, 1) };
    let Some(kafka) = KafkaBroker::start_or_skip()? else {
        println!("migration_ts: {}", prism_testkit::kafka::skip_reason());
        return Ok(());
    };
    let Some(pulsar) = PulsarBroker::start_or_skip()? else {
        println!("migration_ts: skipped: pulsar-lite is not installed (`{}`)", prism_testkit::pulsar::INSTALL_COMMAND);
        return Ok(());
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(run(&kafka, &pulsar, events.max(1), rounds.max(1)))
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").map_or_else(|_| "unknown".into(), |s| s.trim().to_owned())
}

fn event(n: usize, now: i64) -> Event {
    let mut value = format!("event {n} ").into_bytes();
    value.resize(VALUE_BYTES, b'.');
    Event {
        time_series_id: format!("s{:02}", n % SERIES),
        // A millisecond apart, ending now.
        event_time: now - (n as i64) * 1_000,
        event_id: format!("e{n}"),
        items: vec![(b"v".to_vec(), value)],
        tags: Default::default(),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn run(kafka: &KafkaBroker, pulsar: &PulsarBroker, events: usize, rounds: usize) -> anyhow::Result<()> {
    println!("load average at the start: {}", load_average());
    let source = Namespace {
        name: "bench/clicks".into(),
        create_revision: 3,
        spec: NamespaceSpec {
            abstraction: Abstraction::TimeSeries as i32,
            backend: Backend::Kafka as i32,
            backend_config: Some(Box::new(BackendConfig {
                config: Some(Config::Kafka(KafkaConfig {
                    bootstrap_servers: vec![kafka.bootstrap()],
                    ..Default::default()
                })),
            })),
            ..Default::default()
        },
    };
    let kafka_plugin: Arc<dyn Plugin> = Arc::new(KafkaPlugin::new(KafkaPluginConfig::default())?);
    let pulsar_plugin: Arc<dyn Plugin> = Arc::new(PulsarPlugin::new(PulsarPluginConfig::default()));
    kafka_plugin.provision(&source).await?;
    let source_ts = kafka_plugin.time_series().context("kafka serves TimeSeries")?.open(&source)?;
    let now = now_micros();
    let all: Vec<Event> = (0..events).map(|n| event(n, now)).collect();
    let started = Instant::now();
    for batch in all.chunks(1000) {
        source_ts.write(batch).await?;
    }
    println!("{events} events written to Kafka in {:.1} s", started.elapsed().as_secs_f64());

    let mut ratios = Vec::new();
    for round in 0..rounds {
        let plain = plain_copy(kafka, pulsar, &source, round, events as u64).await?;
        ensure!(plain.0 == events as u64, "the plain copy read {} records of {events}", plain.0);
        let target = Migration {
            id: 100 + round as u64,
            target: Some(MigrationTarget {
                backend: Backend::Pulsar as i32,
                backend_config: Some(BackendConfig {
                    config: Some(Config::Pulsar(PulsarConfig {
                        service_url: pulsar.service_url(),
                        topic: String::new(),
                    })),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let target = target_namespace(&source, &target);
        pulsar_plugin.provision(&target).await?;
        let target_ts = pulsar_plugin.time_series().context("pulsar serves TimeSeries")?.open(&target)?;
        let before = Cpu::now();
        let backfill = backfill(source_ts.as_ref(), target_ts.as_ref()).await?;
        // This process: the plugins' clients and the copy; the rest: the
        // brokers (and whatever else runs).
        let (process, rest) = Cpu::now().since(before);
        let per_event = |d: Duration| d.as_secs_f64() * 1e6 / events as f64;
        ensure!(backfill.0 == events as u64, "the backfill copied {} events of {events}", backfill.0);
        let (plain_rate, backfill_rate) =
            (events as f64 / plain.1.as_secs_f64(), events as f64 / backfill.1.as_secs_f64());
        println!(
            "round {round}: plain copy {plain_rate:.0} events/s ({:.2} s); backfill {backfill_rate:.0} events/s \
             ({:.2} s, {} pages; CPU per event {:.1} µs here, {:.1} µs elsewhere); backfill / plain {:.3}",
            plain.1.as_secs_f64(),
            backfill.1.as_secs_f64(),
            backfill.2,
            per_event(process),
            per_event(rest),
            backfill_rate / plain_rate
        );
        ratios.push(backfill_rate / plain_rate);
        pulsar_plugin.deprovision(&target).await?;
    }
    println!("backfill / plain copy, median of {rounds}: {:.3}", median(ratios));
    println!("load average at the end: {}", load_average());
    Ok(())
}

/// The real backfill, page after page: (events, time, pages).
async fn backfill(
    source: &dyn TimeSeriesHandle,
    target: &dyn TimeSeriesHandle,
) -> anyhow::Result<(u64, Duration, u64)> {
    let started = Instant::now();
    let (mut cursor, mut events, mut pages) = (None, 0u64, 0u64);
    loop {
        let copied = backfill_page(source, target, cursor.as_deref(), PAGE).await?;
        events += copied.events;
        pages += 1;
        match copied.next {
            Some(next) => cursor = Some(next),
            None => return Ok((events, started.elapsed(), pages)),
        }
    }
}

/// The baseline: the source's topic read from the start with an rdkafka
/// consumer, each record's bytes published as they are to a Pulsar topic
/// of its own, until `records` are: (records, time). (tansu's high
/// watermarks count batches, not records, so the count is given.)
async fn plain_copy(
    kafka: &KafkaBroker,
    pulsar: &PulsarBroker,
    source: &Namespace,
    round: usize,
    records: u64,
) -> anyhow::Result<(u64, Duration)> {
    let topic = prism_plugin_kafka::codec::topic(source);
    let partitions = NamespaceSettings::of(source)?.partitions;
    let client: Pulsar<TokioExecutor> = Pulsar::builder(pulsar.service_url(), TokioExecutor).build().await?;
    // As the plugin's producer: a send waits for room in the client's
    // outbound queue rather than failing ("SlowDown").
    let options = producer::ProducerOptions { block_queue_if_full: true, ..Default::default() };
    let mut out = client
        .producer()
        .with_topic(format!("persistent://public/default/plain-{round}"))
        .with_options(options)
        .build()
        .await?;
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka.bootstrap())
        .set("group.id", format!("bench-plain-{round}"))
        .set("enable.auto.commit", "false")
        .create()?;
    let started = Instant::now();
    let mut assignment = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        assignment.add_partition_offset(&topic, p, rdkafka::Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let (mut copied, mut pending) = (0u64, Vec::with_capacity(IN_FLIGHT));
    while copied < records {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await??;
        let payload = message.payload().unwrap_or_default().to_vec();
        pending.push(out.send_non_blocking(producer::Message { payload, ..Default::default() }).await?);
        copied += 1;
        if pending.len() >= IN_FLIGHT {
            for receipt in pending.drain(..) {
                receipt.await?;
            }
        }
    }
    for receipt in pending.drain(..) {
        receipt.await?;
    }
    Ok((copied, started.elapsed()))
}
