//! Live migration of a TimeSeries namespace (issue 16), through real
//! servers: a control plane, two gateways that take part in migrations
//! (`experimental_migrations`), a Kafka-protocol broker (tansu) holding
//! the source and a Pulsar-protocol one (pulsar-lite) the target.
//!
//! While the namespace moves from Kafka to Pulsar, clients keep writing
//! events durably (`WriteEventRecordsSync`) and reading each back, one
//! writes through the buffer (`WriteEventRecords`), and a tail follows
//! the namespace. At the end: no request failed, no read missed its
//! write, the target holds every acknowledged event and serves exactly
//! what the source held, and the tail was moved at CUTOVER.

#![cfg(feature = "pulsar")]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use prism_plugin_api::kv::PageLimits;
use prism_plugin_api::ts::{Query, TimeSeriesHandle};
use prism_plugin_api::{Namespace, now_micros};
use prism_proto::control::backend_config::Config;
use prism_proto::control::{
    Abstraction, Backend, BackendConfig, GetNamespaceRequest, KafkaConfig, MigrateNamespaceRequest, Migration,
    MigrationStep, MigrationTarget, NamespaceSpec, Placement, Policies, PulsarConfig,
};
use prism_proto::timeseries as ts;
use prism_testkit::kafka::KafkaBroker;
use prism_testkit::pulsar::PulsarBroker;
use prism_testkit::{Cluster, admin_token, eventually};
use tokio_stream::StreamExt;

const NS: &str = "acme/events";
const WAIT: Duration = Duration::from_secs(120);

/// An event's identity: (series, event time in µs, event id).
type Identity = (String, i64, String);

/// What the clients saw: the events acknowledged (durably written, or
/// accepted by the buffer), failed requests, and reads that missed a
/// write.
#[derive(Default)]
struct Load {
    durable: std::sync::Mutex<BTreeSet<Identity>>,
    buffered: std::sync::Mutex<BTreeSet<Identity>>,
    writes: AtomicU64,
    failed: AtomicU64,
    stale_reads: AtomicU64,
    stop: AtomicBool,
}

fn timestamp(us: i64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: us.div_euclid(1_000_000), nanos: (us.rem_euclid(1_000_000) * 1_000) as i32 }
}

fn micros(t: Option<&prost_types::Timestamp>) -> i64 {
    t.map_or(0, |t| t.seconds * 1_000_000 + i64::from(t.nanos) / 1_000)
}

fn event(series: &str, at: i64, id: &str) -> ts::Event {
    ts::Event {
        time_series_id: series.into(),
        event_time: Some(timestamp(at)),
        event_id: id.into(),
        items: vec![ts::EventItem { key: b"v".to_vec(), value: id.as_bytes().to_vec() }],
        tags: [("writer".to_owned(), series.split('-').next().unwrap_or_default().to_owned())].into(),
        schema_version: 0,
    }
}

fn identity(e: &ts::Event) -> Identity {
    (e.time_series_id.clone(), micros(e.event_time.as_ref()), e.event_id.clone())
}

/// Client `me`: writes one event durably, then reads its series at the
/// event's time and expects it (read-your-writes), until stopped.
async fn durable_writer(mut c: prism_client::TimeSeriesClient, me: usize, load: Arc<Load>) {
    let mut n = 0u64;
    while !load.stop.load(Ordering::Relaxed) {
        let (series, id, at) = (format!("c{me}-s{}", n % 8), format!("e{n}"), now_micros());
        let e = event(&series, at, &id);
        let write = ts::WriteEventRecordsRequest { namespace: NS.into(), events: vec![e.clone()] };
        match c.write_event_records_sync(write).await {
            Ok(_) => {
                load.writes.fetch_add(1, Ordering::Relaxed);
                load.durable.lock().unwrap_or_else(|p| p.into_inner()).insert(identity(&e));
            }
            Err(s) => {
                eprintln!("write {series}/{id} failed: {s}");
                load.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        let read = ts::ReadEventRecordsRequest {
            namespace: NS.into(),
            time_series_id: series.clone(),
            start: Some(timestamp(at)),
            end: Some(timestamp(at + 1)),
            ..Default::default()
        };
        match c.read_event_records(read).await {
            Ok(r) => {
                if !r.into_inner().events.iter().any(|got| got.event_id == id) {
                    eprintln!("read of {series}/{id} missed it");
                    load.stale_reads.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(s) => {
                eprintln!("read {series}/{id} failed: {s}");
                load.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        n += 1;
    }
}

/// Writes an event through the buffer every 20 ms, until stopped.
async fn buffered_writer(mut c: prism_client::TimeSeriesClient, load: Arc<Load>) {
    let mut n = 0u64;
    while !load.stop.load(Ordering::Relaxed) {
        let e = event(&format!("b-s{}", n % 4), now_micros(), &format!("b{n}"));
        let write = ts::WriteEventRecordsRequest { namespace: NS.into(), events: vec![e.clone()] };
        match c.write_event_records(write).await {
            Ok(_) => {
                load.buffered.lock().unwrap_or_else(|p| p.into_inner()).insert(identity(&e));
            }
            Err(s) => {
                eprintln!("buffered write b{n} failed: {s}");
                load.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        n += 1;
    }
}

/// Stops the clients when dropped.
struct StopOnDrop(Arc<Load>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop.store(true, Ordering::Relaxed);
    }
}

/// Every event the gateway serves, by identity (a search of all time).
async fn served(c: &mut prism_client::TimeSeriesClient) -> anyhow::Result<BTreeSet<Identity>> {
    let mut out = BTreeSet::new();
    let mut token = String::new();
    loop {
        let req = ts::SearchEventRecordsRequest {
            namespace: NS.into(),
            start: Some(timestamp(0)),
            end: Some(timestamp(now_micros() + 86_400_000_000)),
            page_token: token,
            ..Default::default()
        };
        let page = c.search_event_records(req).await?.into_inner();
        out.extend(page.events.iter().map(identity));
        if page.next_page_token.is_empty() {
            return Ok(out);
        }
        token = page.next_page_token;
    }
}

/// Every event `handle` holds, by identity, read from its backend.
async fn held(handle: &dyn TimeSeriesHandle) -> anyhow::Result<BTreeSet<Identity>> {
    let mut out = BTreeSet::new();
    let mut query = Query::search(None, (0, i64::MAX), PageLimits::new(64 << 20, Some(100_000)));
    loop {
        let page = handle.query(&query, now_micros()).await?;
        out.extend(page.events.iter().map(|e| (e.time_series_id.clone(), e.event_time, e.event_id.clone())));
        match page.next {
            Some(next) => query.after = Some(next),
            None => return Ok(out),
        }
    }
}

/// The value of the first sample of `series` in a `/metrics` text whose
/// line contains `labels`.
fn sample(metrics: &str, series: &str, labels: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(series) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A control plane and two gateways that take part in migrations, whose
/// DUAL_WRITE and CUTOVER wait `request_timeout_ms` for the requests
/// admitted before them.
async fn cluster(request_timeout_ms: u64) -> anyhow::Result<Cluster> {
    Cluster::start_configured(
        |c| {
            // The source is removed this long after the cleanup commit.
            c.migration_cleanup_grace_ms = 1_000;
            // Every read at VERIFY is a shadow read, for a second.
            c.migration_shadow_read_fraction = 1.0;
            c.migration_verify_window_ms = 1_000;
        },
        |c| {
            c.experimental_migrations = true;
            c.limits.request_timeout_ms = request_timeout_ms;
        },
    )
    .await
}

/// The namespace on `kafka`, pinned to shard-0, taking buffered writes too.
fn on_kafka(kafka: &KafkaBroker) -> NamespaceSpec {
    NamespaceSpec {
        abstraction: Abstraction::TimeSeries as i32,
        backend: Backend::Kafka as i32,
        backend_config: Some(Box::new(BackendConfig {
            config: Some(Config::Kafka(KafkaConfig {
                bootstrap_servers: vec![kafka.bootstrap()],
                ..Default::default()
            })),
        })),
        placement: Some(Box::new(Placement { pinned_shard: "shard-0".into(), ..Default::default() })),
        policies: Some(Box::new(Policies { accept_loss: true, ..Default::default() })),
        ..Default::default()
    }
}

fn to_pulsar(pulsar: &PulsarBroker) -> MigrateNamespaceRequest {
    MigrateNamespaceRequest {
        name: NS.into(),
        target: Some(MigrationTarget {
            backend: Backend::Pulsar as i32,
            backend_config: Some(BackendConfig {
                config: Some(Config::Pulsar(PulsarConfig { service_url: pulsar.service_url(), topic: String::new() })),
            }),
            pinned_shard: String::new(),
        }),
        expected_revision: 0,
    }
}

/// The migration's target, opened on a Pulsar plugin of the test's own.
fn target_of(ns: &prism_proto::control::Namespace, migration: &Migration) -> anyhow::Result<Arc<dyn TimeSeriesHandle>> {
    let source = Namespace {
        name: ns.name.clone(),
        create_revision: ns.create_revision,
        spec: ns.spec.clone().unwrap_or_default(),
    };
    let target = prism_gateway::migration::target_namespace(&source, migration);
    let plugin = prism_plugin_pulsar::PulsarPlugin::new(prism_plugin_pulsar::PulsarPluginConfig::default());
    Ok(prism_plugin_api::Plugin::time_series(&plugin).context("pulsar serves TimeSeries")?.open(&target)?)
}

/// Aborted at DUAL_WRITE (which waits 10 s for earlier requests here)
/// while a client writes through it: no request fails, the namespace is
/// back on Kafka alone with every acknowledged event, and the target's
/// topic on Pulsar, which held the dual writes, is removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_migration_leaves_the_source_whole_and_removes_the_target() -> anyhow::Result<()> {
    let Some(kafka) = KafkaBroker::start_or_skip()? else {
        println!("{}", prism_testkit::kafka::skip_reason());
        return Ok(());
    };
    let pulsar = PulsarBroker::start()?;
    let cluster = cluster(10_000).await?;
    let gw = cluster.active_namespace(NS, on_kafka(&kafka)).await?;
    let token = admin_token();
    let load = Arc::new(Load::default());
    let _stop = StopOnDrop(load.clone());
    let c = prism_client::time_series(&gw.endpoint(), Some(&token)).await?;
    let writer = tokio::spawn(durable_writer(c, 0, load.clone()));
    let cp = cluster.control_plane.client().await?;
    eventually(WAIT, || async {
        anyhow::ensure!(load.writes.load(Ordering::Relaxed) >= 50, "few writes yet");
        Ok(())
    })
    .await?;
    let started = cp.clone().migrate_namespace(to_pulsar(&pulsar)).await?.into_inner();
    let migration = started.migration.as_deref().context("the migration is recorded")?.clone();
    // Dual-writing: the target holds the writes since.
    let target = target_of(&started, &migration)?;
    let at_dual_write = eventually(WAIT, || async {
        let ns = cp.clone().get_namespace(GetNamespaceRequest { name: NS.into() }).await?.into_inner();
        let step = ns.migration.as_deref().map(|m| m.step);
        anyhow::ensure!(step == Some(MigrationStep::DualWrite as i32), "at {step:?}");
        Ok(load.writes.load(Ordering::Relaxed))
    })
    .await?;
    eventually(WAIT, || async {
        anyhow::ensure!(load.writes.load(Ordering::Relaxed) >= at_dual_write + 20, "few dual writes yet");
        anyhow::ensure!(!held(target.as_ref()).await?.is_empty(), "nothing in the target yet");
        Ok(())
    })
    .await?;
    let abort = prism_proto::control::AbortMigrationRequest { name: NS.into(), ..Default::default() };
    cp.clone().abort_migration(abort).await?;
    let ns = eventually(WAIT, || async {
        let ns = cp.clone().get_namespace(GetNamespaceRequest { name: NS.into() }).await?.into_inner();
        anyhow::ensure!(ns.migration.is_none(), "still migrating: {:?}", ns.migration);
        Ok(ns)
    })
    .await?;
    load.stop.store(true, Ordering::Relaxed);
    writer.await?;
    assert_eq!(ns.spec.as_ref().map(|s| s.backend), Some(Backend::Kafka as i32), "{ns:?}");
    assert_eq!(ns.data_revision, 0, "the namespace's data is its own incarnation's");
    assert_eq!((load.failed.load(Ordering::Relaxed), load.stale_reads.load(Ordering::Relaxed)), (0, 0));
    let durable = load.durable.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut c = prism_client::time_series(&gw.endpoint(), Some(&token)).await?;
    assert_eq!(served(&mut c).await?, durable, "the source serves every acknowledged event, and only those");
    // Read afresh (a plugin keeps what it learnt of an incarnation's
    // lifecycle): the gateway removed it.
    let everything = Query::search(None, (0, i64::MAX), PageLimits::new(1 << 20, None));
    match target_of(&started, &migration)?.query(&everything, now_micros()).await {
        Err(prism_plugin_api::PluginError::NotProvisioned(_)) => {}
        other => anyhow::bail!("the target's topic should be gone: {other:?}"),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_to_pulsar_under_load_loses_no_event_and_moves_the_tails() -> anyhow::Result<()> {
    let Some(kafka) = KafkaBroker::start_or_skip()? else {
        println!("{}", prism_testkit::kafka::skip_reason());
        return Ok(());
    };
    let pulsar = PulsarBroker::start()?;
    let cluster = cluster(2_000).await?;
    let spec = on_kafka(&kafka);
    let gw = cluster.active_namespace(NS, spec).await?;
    let token = admin_token();
    let load = Arc::new(Load::default());
    // The clients stop however the test ends.
    let _stop = StopOnDrop(load.clone());
    let mut clients = Vec::new();
    for me in 0..2 {
        let c = prism_client::time_series(&gw.endpoint(), Some(&token)).await?;
        clients.push(tokio::spawn(durable_writer(c, me, load.clone())));
    }
    let c = prism_client::time_series(&gw.endpoint(), Some(&token)).await?;
    clients.push(tokio::spawn(buffered_writer(c, load.clone())));

    // A tail of the whole namespace, following the source.
    let mut c = prism_client::time_series(&gw.endpoint(), Some(&token)).await?;
    let req = ts::TailEventRecordsRequest { namespace: NS.into(), ..Default::default() };
    let mut tail = c.tail_event_records(req.clone()).await?.into_inner();
    let tailed = tokio::spawn(async move {
        let mut events = 0usize;
        loop {
            match tail.next().await {
                Some(Ok(batch)) => events += batch.events.len(),
                Some(Err(status)) => return (events, Some(status)),
                None => return (events, None),
            }
        }
    });

    // Some history before the migration starts.
    eventually(WAIT, || async {
        anyhow::ensure!(load.writes.load(Ordering::Relaxed) >= 300, "few writes yet");
        Ok(())
    })
    .await?;
    let mut cp = cluster.control_plane.client().await?;
    let started = cp.migrate_namespace(to_pulsar(&pulsar)).await?.into_inner();
    let migration = started.migration.as_deref().context("the migration is recorded")?.clone();

    // Until the migration has ended: on Pulsar, its source removed.
    let seen = std::sync::Mutex::new(BTreeSet::new());
    let ns = eventually(WAIT, || async {
        let ns = cluster.control_plane.client().await?.get_namespace(GetNamespaceRequest { name: NS.into() }).await?;
        let ns = ns.into_inner();
        if let Some(m) = ns.migration.as_deref() {
            seen.lock().unwrap_or_else(|p| p.into_inner()).insert(m.step);
            anyhow::bail!("at step {:?}: {}", MigrationStep::try_from(m.step), m.reason);
        }
        Ok(ns)
    })
    .await?;
    let seen = seen.into_inner().unwrap_or_else(|p| p.into_inner());
    assert_eq!(ns.spec.as_ref().map(|s| s.backend), Some(Backend::Pulsar as i32), "{ns:?}");
    assert_eq!(ns.data_revision, migration.id, "the target's incarnation is the namespace's data");
    // Writes after the migration land on Pulsar.
    let after = load.writes.load(Ordering::Relaxed);
    eventually(WAIT, || async {
        anyhow::ensure!(load.writes.load(Ordering::Relaxed) >= after + 50, "few writes since the end");
        Ok(())
    })
    .await?;

    // A tail started now follows the target.
    let mut fresh = c.tail_event_records(req).await?.into_inner();
    let mut w = prism_client::time_series(&gw.endpoint(), Some(&token)).await?;
    let marker = event("tail-marker", now_micros(), "m1");
    w.write_event_records_sync(ts::WriteEventRecordsRequest { namespace: NS.into(), events: vec![marker.clone()] })
        .await?;
    let got = tokio::time::timeout(WAIT, async {
        while let Some(batch) = fresh.next().await {
            if batch?.events.iter().any(|e| e.event_id == "m1") {
                return Ok::<_, anyhow::Error>(true);
            }
        }
        Ok(false)
    })
    .await??;
    assert!(got, "a tail started after the migration sees a new write");
    load.durable.lock().unwrap_or_else(|p| p.into_inner()).insert(identity(&marker));

    load.stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await?;
    }
    let (tailed_events, ended) = tailed.await?;
    let ended = ended.context("the tail on the source ended without a status")?;
    assert_eq!(ended.code(), tonic::Code::Unavailable, "{ended:?}");
    assert!(ended.message().contains("tail again"), "{ended:?}");
    assert!(tailed_events > 0, "the tail on the source saw events before it was moved");

    let (writes, failed, stale) = (
        load.writes.load(Ordering::Relaxed),
        load.failed.load(Ordering::Relaxed),
        load.stale_reads.load(Ordering::Relaxed),
    );
    println!("{writes} durable writes, {failed} failed requests, {stale} stale reads; tail saw {tailed_events}");
    assert_eq!(failed, 0, "no request failed");
    assert_eq!(stale, 0, "every read saw its write");

    // Every acknowledged event is served from the target, buffered ones
    // once the flusher has written them.
    let durable = load.durable.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let buffered = load.buffered.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let served_now = eventually(WAIT, || async {
        let got = served(&mut w.clone()).await?;
        let lost = durable.difference(&got).count();
        let unflushed = buffered.difference(&got).count();
        anyhow::ensure!(lost == 0 && unflushed == 0, "{lost} durable and {unflushed} buffered events not served");
        Ok(got)
    })
    .await?;
    assert_eq!(served_now.len(), durable.len() + buffered.len(), "nothing served that no client wrote");

    // The target, read from Pulsar itself, holds exactly what is served.
    let handle = target_of(&started, &migration)?;
    assert_eq!(held(handle.as_ref()).await?, served_now, "the target holds exactly what is served");

    // The migration was seen on its way, and its work was counted.
    assert!(seen.len() >= 2, "steps seen: {seen:?}");
    let metrics = gw.metrics().await?;
    assert!(sample(&metrics, "prism_gateway_migration_copied_records_total", "") > 0.0, "{metrics}");
    assert!(sample(&metrics, "prism_gateway_migration_comparisons_total", "same") >= 1.0, "{metrics}");
    assert!(sample(&metrics, "prism_gateway_migration_shadow_reads_total", "") >= 1.0, "{metrics}");
    Ok(())
}
