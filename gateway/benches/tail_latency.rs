//! Tail delivery across replicas (issue 15): how long after a write is
//! acknowledged does a tail on ANOTHER replica of the shard get it, per
//! backend, against the same latency for a tail on the writer's own
//! replica, measured on the same events in the same run (the baseline:
//! other / same shows what the backend feed costs).
//!
//! For each backend (embedded, PostgreSQL, Kafka through tansu, Pulsar
//! through pulsar-lite with the gateway's `pulsar` feature): a control
//! plane and two replicas of one shard in this process, as
//! `gateway/tests/tails.rs` starts them, serving one TimeSeries namespace;
//! one tail open on each replica; single-event `WriteEventRecordsSync`
//! calls alternating between the replicas, so every event is seen by a
//! tail on its writer's replica and by one on the other. Per event and
//! tail: write sent → received and acknowledged → received. Two phases:
//! one write at a time, each waiting for both deliveries before the next
//! (the latency of an idle system), then `PRISM_BENCH_CONCURRENCY`
//! writers at once, not waiting.
//!
//! Embedded keeps one writer, the owner instance: a tail or a write on
//! the other replica is forwarded to it, so "another replica" is the
//! forwarding path, and its rows say which replica owns.
//!
//! `cargo bench -p prism-gateway --features pulsar --bench tail_latency`
//!
//! `PRISM_BENCH_EVENTS` (events per phase, default 1 000) and
//! `PRISM_BENCH_CONCURRENCY` (default 8) change the sample. A backend
//! whose server is not installed is skipped with a line saying so (unless
//! `PRISM_REQUIRE_SERVERS`), Pulsar also without the `pulsar` feature.
//! Without `--bench` (`cargo test --benches`) it runs once, briefly, as a
//! smoke test. See `docs/benchmarks.md`, "Tail delivery across replicas".

use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, ensure};
use hdrhistogram::Histogram;
use prism_control_plane::ControlPlaneConfig;
use prism_proto::control::backend_config::Config;
use prism_proto::control::{
    Abstraction, Backend, BackendConfig, KafkaConfig, NamespaceSpec, Placement, PostgresConfig,
};
use prism_proto::timeseries as ts;
use prism_testkit::{ControlPlaneHandle, GatewayHandle, TEST_SECRET, admin_token};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

const SHARD: &str = "shard-0";
const NAMESPACE: &str = "bench/tails";
const SERIES: &str = "s";
const VALUE_BYTES: usize = 100;
/// Events written (and awaited) before measuring: connections, forwarding
/// channels and feeds warmed up.
const WARM_UP: usize = 20;
const WAIT: Duration = Duration::from_secs(30);

type Client = ts::time_series_service_client::TimeSeriesServiceClient<tonic::transport::Channel>;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() -> anyhow::Result<()> {
    let bench = std::env::args().any(|a| a == "--bench");
    let events = if bench { env("PRISM_BENCH_EVENTS", 1000) } else { 20 };
    let concurrency = env("PRISM_BENCH_CONCURRENCY", 8).max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(run(events, concurrency))
}

async fn run(events: usize, concurrency: usize) -> anyhow::Result<()> {
    println!("{events} single-event sync writes per phase, alternating between the two replicas; latencies in µs\n");
    println!(
        "| backend | phase | tail on | n | write p50 | sent→recv p50 | p99 | max | ack→recv p50 | p99 | max | \
         recv before ack | sent→recv p50, p99 vs same |"
    );
    println!("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    measure("embedded", spec(Backend::Embedded, None), events, concurrency).await?;

    match prism_testkit::postgres::PostgresServer::start_or_skip()? {
        Some(server) => {
            let config = Config::Postgres(PostgresConfig { dsn: server.dsn(), ..Default::default() });
            measure("postgres", spec(Backend::Postgres, Some(config)), events, concurrency).await?;
        }
        None => println!("| postgres | {} |", prism_testkit::postgres::skip_reason()),
    }

    match prism_testkit::kafka::KafkaBroker::start_or_skip()? {
        Some(broker) => {
            let config =
                Config::Kafka(KafkaConfig { bootstrap_servers: vec![broker.bootstrap()], ..Default::default() });
            measure("kafka", spec(Backend::Kafka, Some(config)), events, concurrency).await?;
        }
        None => println!("| kafka | {} |", prism_testkit::kafka::skip_reason()),
    }

    pulsar(events, concurrency).await
}

#[cfg(feature = "pulsar")]
async fn pulsar(events: usize, concurrency: usize) -> anyhow::Result<()> {
    use prism_proto::control::PulsarConfig;
    match prism_testkit::pulsar::PulsarBroker::start_or_skip()? {
        Some(broker) => {
            let config = Config::Pulsar(PulsarConfig { service_url: broker.service_url(), topic: String::new() });
            measure("pulsar", spec(Backend::Pulsar, Some(config)), events, concurrency).await
        }
        None => {
            println!("| pulsar | {} |", prism_testkit::pulsar::skip_reason());
            Ok(())
        }
    }
}

#[cfg(not(feature = "pulsar"))]
async fn pulsar(_events: usize, _concurrency: usize) -> anyhow::Result<()> {
    println!("| pulsar | skipped: built without the gateway's `pulsar` feature (bench with `--features pulsar`) |");
    Ok(())
}

fn spec(backend: Backend, config: Option<Config>) -> NamespaceSpec {
    NamespaceSpec {
        abstraction: Abstraction::TimeSeries as i32,
        backend: backend as i32,
        backend_config: config.map(|config| Box::new(BackendConfig { config: Some(config) })),
        placement: Some(Box::new(Placement { pinned_shard: SHARD.into(), ..Default::default() })),
        ..Default::default()
    }
}

fn authed<T>(message: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    if let Ok(v) = format!("Bearer {}", admin_token()).parse() {
        req.metadata_mut().insert("authorization", v);
    }
    req
}

async fn client(gw: &GatewayHandle) -> anyhow::Result<Client> {
    let channel = prism_client::endpoint(&gw.endpoint())?.connect().await?;
    Ok(Client::new(channel))
}

/// Event `i` of the run: its id is how a tail's delivery is matched to
/// its write.
fn event(i: usize) -> ts::Event {
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    ts::Event {
        time_series_id: SERIES.into(),
        event_time: Some(prost_types::Timestamp {
            seconds: now.as_secs() as i64,
            nanos: now.subsec_micros() as i32 * 1000,
        }),
        event_id: i.to_string(),
        items: vec![ts::EventItem { key: b"v".to_vec(), value: vec![b'.'; VALUE_BYTES] }],
        tags: Default::default(),
        schema_version: 0,
    }
}

async fn write(c: &mut Client, i: usize) -> anyhow::Result<()> {
    let req = ts::WriteEventRecordsRequest { namespace: NAMESPACE.into(), events: vec![event(i)] };
    c.write_event_records_sync(authed(req)).await?;
    Ok(())
}

/// Two replicas of one shard serving [`NAMESPACE`] (pinned to it), ACTIVE
/// and seen by both, as `gateway/tests/tails.rs` sets them up.
struct Replicas {
    _cp: ControlPlaneHandle,
    gateways: [GatewayHandle; 2],
    /// Which of `gateways` owns the namespace, when its backend has an
    /// owner (embedded).
    owner: Option<usize>,
}

async fn replicas(spec: NamespaceSpec) -> anyhow::Result<Replicas> {
    let mut config = ControlPlaneConfig::default();
    config.auth.hs256_secret = Some(TEST_SECRET.into());
    let cp = ControlPlaneHandle::start_with(config).await?;
    let gateways = GatewayHandle::start_replicas(&cp, SHARD).await?;
    let ns = cp.create_active(NAMESPACE, spec, &[&gateways[0], &gateways[1]]).await?;
    let owner =
        gateways.iter().position(|g| !ns.owner_store_id.is_empty() && *g.gateway.store_id == *ns.owner_store_id);
    Ok(Replicas { _cp: cp, gateways, owner })
}

/// One delivery: (tail's replica, event index, when it was received).
type Delivery = (usize, usize, Instant);

/// Reads the tail on replica `on` until it ends, timing each event as its
/// message arrives.
fn follow(
    on: usize,
    mut tail: tonic::Streaming<ts::TailEventRecordsResponse>,
    to: mpsc::UnboundedSender<Delivery>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(message) = tail.next().await {
            let at = Instant::now();
            let message = match message {
                Ok(message) => message,
                Err(status) => {
                    eprintln!("the tail on replica {on} ended: {status:?}");
                    return;
                }
            };
            for e in message.events {
                if let Ok(i) = e.event_id.parse() {
                    let _ = to.send((on, i, at));
                }
            }
        }
    })
}

/// When each event was sent and acknowledged, through which replica, and
/// when each replica's tail received it.
struct Samples {
    written: Vec<Option<(usize, Instant, Instant)>>,
    received: Vec<[Option<Instant>; 2]>,
    deliveries: mpsc::UnboundedReceiver<Delivery>,
}

impl Samples {
    fn record(&mut self, (on, i, at): Delivery) -> anyhow::Result<()> {
        let slot = self.received.get_mut(i).and_then(|r| r.get_mut(on)).context("an event this run did not write")?;
        ensure!(slot.is_none(), "event {i} delivered twice on replica {on}");
        *slot = Some(at);
        Ok(())
    }

    fn delivered(&self, i: usize) -> bool {
        self.received[i].iter().all(Option::is_some)
    }

    /// Waits until both tails have received every event of `range`.
    async fn await_deliveries(&mut self, range: std::ops::Range<usize>) -> anyhow::Result<()> {
        for i in range {
            while !self.delivered(i) {
                let d = tokio::time::timeout(WAIT, self.deliveries.recv())
                    .await
                    .with_context(|| format!("event {i} not delivered on both replicas within {WAIT:?}"))?
                    .context("a tail ended")?;
                self.record(d)?;
            }
        }
        Ok(())
    }
}

/// The replica event `i` is written through.
fn writer_of(i: usize) -> usize {
    i % 2
}

/// Events `range`, one at a time, each awaited on both tails.
async fn one_at_a_time(
    s: &mut Samples,
    writers: &mut [Client; 2],
    range: std::ops::Range<usize>,
) -> anyhow::Result<()> {
    for i in range {
        let w = writer_of(i);
        let sent = Instant::now();
        write(&mut writers[w], i).await?;
        s.written[i] = Some((w, sent, Instant::now()));
        s.await_deliveries(i..i + 1).await?;
    }
    Ok(())
}

/// Events `range` by `concurrency` tasks, each writing its share one
/// write at a time without waiting for the tails.
async fn concurrently(
    s: &mut Samples,
    writers: &[Client; 2],
    range: std::ops::Range<usize>,
    concurrency: usize,
) -> anyhow::Result<()> {
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..concurrency {
        let mut writers = writers.clone();
        let mine: Vec<usize> = range.clone().skip(task).step_by(concurrency).collect();
        tasks.spawn(async move {
            let mut written = Vec::with_capacity(mine.len());
            for i in mine {
                let w = writer_of(i);
                let sent = Instant::now();
                write(&mut writers[w], i).await?;
                written.push((i, w, sent, Instant::now()));
            }
            anyhow::Ok(written)
        });
    }
    while let Some(done) = tasks.join_next().await {
        for (i, w, sent, acked) in done?? {
            s.written[i] = Some((w, sent, acked));
        }
    }
    s.await_deliveries(range).await
}

fn histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 60_000_000, 3)?)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// The latencies of one group of deliveries.
struct Stats {
    n: u64,
    write: Histogram<u64>,
    sent: Histogram<u64>,
    acked: Histogram<u64>,
    before_ack: u64,
}

impl Stats {
    fn of(s: &Samples, range: std::ops::Range<usize>, pick: impl Fn(usize) -> Option<usize>) -> anyhow::Result<Self> {
        let mut stats = Self { n: 0, write: histogram()?, sent: histogram()?, acked: histogram()?, before_ack: 0 };
        for i in range {
            let (w, sent, acked) = s.written[i].context("an event not written")?;
            let Some(tail) = pick(w) else { continue };
            let received = s.received[i][tail].context("an event not delivered")?;
            stats.n += 1;
            stats.write.saturating_record(micros(acked - sent).max(1));
            stats.sent.saturating_record(micros(received - sent).max(1));
            match received.checked_duration_since(acked) {
                Some(d) => stats.acked.saturating_record(micros(d).max(1)),
                None => {
                    stats.before_ack += 1;
                    stats.acked.saturating_record(1);
                }
            }
        }
        Ok(stats)
    }
}

fn print_row(backend: &str, phase: &str, tail_on: &str, stats: &Stats, same: &Stats) {
    let q = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q);
    let ratio = |q: f64| q_ratio(stats.sent.value_at_quantile(q), same.sent.value_at_quantile(q));
    println!(
        "| {backend} | {phase} | {tail_on} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.2}×, {:.2}× |",
        stats.n,
        q(&stats.write, 0.5),
        q(&stats.sent, 0.5),
        q(&stats.sent, 0.99),
        stats.sent.max(),
        q(&stats.acked, 0.5),
        q(&stats.acked, 0.99),
        stats.acked.max(),
        stats.before_ack,
        ratio(0.5),
        ratio(0.99),
    );
}

fn q_ratio(a: u64, b: u64) -> f64 {
    a as f64 / b.max(1) as f64
}

async fn measure(backend: &str, spec: NamespaceSpec, events: usize, concurrency: usize) -> anyhow::Result<()> {
    let r = replicas(spec).await.with_context(|| format!("{backend}: start two replicas"))?;
    let (tx, deliveries) = mpsc::unbounded_channel();
    let mut readers = Vec::new();
    for (on, gw) in r.gateways.iter().enumerate() {
        let req =
            ts::TailEventRecordsRequest { namespace: NAMESPACE.into(), time_series_id: SERIES.into(), filter: None };
        let tail = client(gw).await?.tail_event_records(authed(req)).await?.into_inner();
        readers.push(follow(on, tail, tx.clone()));
    }
    drop(tx);
    let total = WARM_UP + 2 * events;
    let mut s = Samples { written: vec![None; total], received: vec![[None; 2]; total], deliveries };
    let mut writers = [client(&r.gateways[0]).await?, client(&r.gateways[1]).await?];
    one_at_a_time(&mut s, &mut writers, 0..WARM_UP).await.with_context(|| format!("{backend}: warm up"))?;
    let sequential = WARM_UP..WARM_UP + events;
    one_at_a_time(&mut s, &mut writers, sequential.clone())
        .await
        .with_context(|| format!("{backend}: one at a time"))?;
    let parallel = WARM_UP + events..total;
    concurrently(&mut s, &writers, parallel.clone(), concurrency)
        .await
        .with_context(|| format!("{backend}: {concurrency} writers"))?;
    // Stop reading before the servers stop, so their end is not reported
    // as a tail that failed.
    for reader in readers {
        reader.abort();
    }

    let phases = [("1 writer", sequential), (&*format!("{concurrency} writers"), parallel)];
    for (phase, range) in phases {
        match r.owner {
            // Embedded: who forwards depends on which replica owns, so the
            // writer's role splits the rows.
            Some(owner) => {
                for owns in [true, false] {
                    let by = move |w: usize| (w == owner) == owns;
                    let same = Stats::of(&s, range.clone(), |w| by(w).then_some(w))?;
                    let other = Stats::of(&s, range.clone(), |w| by(w).then_some(1 - w))?;
                    let (same_on, other_on) = if owns {
                        ("same (writer owns)".to_owned(), "other (tail forwarded to the owner)".to_owned())
                    } else {
                        ("same (write and tail forwarded)".to_owned(), "other = owner (write forwarded)".to_owned())
                    };
                    print_row(backend, phase, &same_on, &same, &same);
                    print_row(backend, phase, &other_on, &other, &same);
                }
            }
            None => {
                let same = Stats::of(&s, range.clone(), Some)?;
                let other = Stats::of(&s, range.clone(), |w| Some(1 - w))?;
                print_row(backend, phase, "same replica", &same, &same);
                print_row(backend, phase, "other replica (backend feed)", &other, &same);
            }
        }
    }
    Ok(())
}
