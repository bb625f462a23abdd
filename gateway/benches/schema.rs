//! TimeSeries writes through a real gateway with and without a schema, in
//! the same run (docs/benchmarks.md, "TimeSeries schemas (issue 15)").
//!
//! `prism-testkit`'s cluster (a control plane and two gateway shards in
//! process, the embedded backend) serves four TimeSeries namespaces:
//! `bench/none` (no schema, the baseline), `bench/plain`, `bench/json-schema` and
//! `bench/protobuf` (the schemas of `schema/benches/common/mod.rs`). Every
//! namespace receives the same event (two tags, four items), so the
//! namespaces differ only in what validation reads. One client writes
//! sequentially over gRPC (`WriteEventRecordsSync`, loopback). Each round
//! runs the namespaces one after another, `none, plain, json, protobuf,
//! none` (the second `none` shows how much the machine moved within a
//! round), and each run sends `PRISM_BENCH_WRITES` writes (default 300)
//! of 1 event and then of 100 events; `PRISM_BENCH_ROUNDS` rounds
//! (default 8). Prints p50 / p99 / mean per write and each against `none`.
//!
//! `cargo bench -p prism-gateway --bench schema`
//! (`cargo test --benches` runs it once, briefly.)

#[path = "../../schema/benches/common/mod.rs"]
mod common;

use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use common::Variant;
use hdrhistogram::Histogram;
use prism_proto::control::{Abstraction, Backend, Compatibility, NamespaceSpec, SetSchemaRequest};
use prism_proto::timeseries::{self as ts, time_series_service_client::TimeSeriesServiceClient};
use tonic::transport::Channel;

const BATCHES: [usize; 2] = [1, 100];

struct Target {
    label: &'static str,
    namespace: String,
    client: TimeSeriesServiceClient<Channel>,
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn now() -> prost_types::Timestamp {
    let since = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp { seconds: since.as_secs() as i64, nanos: since.subsec_nanos() as i32 }
}

fn authed<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Ok(v) = format!("Bearer {}", prism_testkit::admin_token()).parse() {
        request.metadata_mut().insert("authorization", v);
    }
    request
}

/// One write of `batch` events, each with its own id; its latency.
async fn write(target: &mut Target, batch: usize, next_id: &mut u64) -> anyhow::Result<Duration> {
    let time = now();
    let events = (0..batch)
        .map(|i| {
            *next_id += 1;
            common::event(&format!("probe-{}", i % 16), &format!("e-{next_id}"), Some(time))
        })
        .collect();
    let request = ts::WriteEventRecordsRequest { namespace: target.namespace.clone(), events };
    let start = Instant::now();
    let written = target.client.write_event_records_sync(authed(request)).await?.into_inner();
    let took = start.elapsed();
    anyhow::ensure!(written.accepted as usize == batch, "{}: accepted {} of {batch}", target.label, written.accepted);
    Ok(took)
}

async fn setup(cluster: &prism_testkit::Cluster) -> anyhow::Result<Vec<Target>> {
    let spec = NamespaceSpec {
        abstraction: Abstraction::TimeSeries as i32,
        backend: Backend::Embedded as i32,
        ..Default::default()
    };
    let mut cp = cluster.control_plane.client().await?;
    let mut targets = Vec::new();
    for variant in std::iter::once(None).chain(Variant::ALL.map(Some)) {
        let label = variant.map_or("none", Variant::name);
        // Namespace names hold no '_'.
        let namespace = format!("bench/{}", label.replace('_', "-"));
        let gw = cluster.active_namespace(&namespace, spec.clone()).await?;
        if let Some(variant) = variant {
            let set = SetSchemaRequest {
                name: namespace.clone(),
                schema: Some(variant.schema()),
                compatibility: Compatibility::Backward as i32,
                expected_revision: 0,
            };
            let revision = cp.set_schema(set).await.context("set schema")?.into_inner().revision;
            gw.caught_up(revision).await?;
        }
        let client = TimeSeriesServiceClient::new(gw.channel().await?);
        targets.push(Target { label, namespace, client });
    }
    Ok(targets)
}

fn micros(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

async fn run() -> anyhow::Result<()> {
    let smoke = std::env::args().all(|a| a != "--bench");
    let writes = if smoke { 5 } else { env("PRISM_BENCH_WRITES", 300) };
    let rounds = if smoke { 1 } else { env("PRISM_BENCH_ROUNDS", 8) };
    let cluster = prism_testkit::Cluster::start().await?;
    let mut targets = setup(&cluster).await?;
    let mut next_id = 0;
    // A validation that failed would be a refusal, not a measurement:
    // `write` checks every event was accepted.
    for target in &mut targets {
        for batch in BATCHES {
            for _ in 0..writes.min(50) {
                write(target, batch, &mut next_id).await?;
            }
        }
    }
    // Slot 0..4: the targets in order; slot 4: `none` again, last in the round.
    let order = [0usize, 1, 2, 3, 0];
    let labels = ["none", "plain", "json_schema", "protobuf", "none_again"];
    for batch in BATCHES {
        let mut histograms: Vec<Histogram<u64>> =
            (0..order.len()).map(|_| Histogram::new_with_bounds(1, 60_000_000, 3)).collect::<Result<_, _>>()?;
        // Per round, each slot's mean over the round's first `none`.
        let mut round_ratios: Vec<Vec<f64>> = vec![Vec::new(); order.len()];
        for _ in 0..rounds {
            let mut means = Vec::new();
            for (slot, &t) in order.iter().enumerate() {
                let mut total = Duration::ZERO;
                for _ in 0..writes {
                    let took = write(&mut targets[t], batch, &mut next_id).await?;
                    total += took;
                    histograms[slot].record((took.as_micros() as u64).max(1))?;
                }
                means.push(total.as_secs_f64() / writes as f64);
            }
            for (slot, mean) in means.iter().enumerate() {
                round_ratios[slot].push(mean / means[0]);
            }
        }
        println!(
            "\nTimeSeries writes of {batch} event(s), {rounds} rounds x {writes} writes per namespace, sequential"
        );
        println!(
            "{:<12} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10} {:>12}",
            "schema", "p50 µs", "p99 µs", "mean µs", "events/s", "p50/none", "p99/none", "mean/none*"
        );
        let base = &histograms[0];
        for (slot, h) in histograms.iter().enumerate() {
            println!(
                "{:<12} {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>10.2} {:>10.2} {:>12.2}",
                labels[slot],
                micros(h, 0.5),
                micros(h, 0.99),
                h.mean(),
                batch as f64 * 1e6 / h.mean(),
                micros(h, 0.5) / micros(base, 0.5),
                micros(h, 0.99) / micros(base, 0.99),
                median(round_ratios[slot].clone()),
            );
        }
        println!("* median over rounds of the round's mean against that round's first `none`");
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(run())
}
