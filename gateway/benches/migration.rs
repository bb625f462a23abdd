//! Live namespace migration, embedded → PostgreSQL (issue 16, "Measure"):
//! what the backfill costs against a plain copy of the same data, and
//! what a migration adds to the latency of the writes that run through
//! it, against the same writes before it, measured in the same run.
//!
//! 1. **Backfill against a plain copy.** An embedded KeyValue namespace
//!    holding `PRISM_BENCH_RECORDS` records (one 100-byte item each) is
//!    copied into a fresh PostgreSQL target with the real backfill
//!    (`prism_gateway::migration::backfill_page` in a loop, at the page
//!    limits of `gateway/src/background/migrate.rs`), and, as the
//!    baseline, read page by page the same way (`scan_versions`, same
//!    limits) and written with tokio-postgres into a plain table
//!    `(id text, key bytea, value bytea, primary key (id, key))`, one
//!    `INSERT … SELECT * FROM UNNEST(…)` per page. The two alternate,
//!    plain first, `PRISM_BENCH_ROUNDS` rounds, each into a schema of
//!    its own; records/s of each, backfill / plain per round and the
//!    median.
//! 2. **Writes through a migration.** `prism_testkit::Cluster` as
//!    `gateway/tests/migration.rs` starts it (gateways with
//!    `experimental_migrations`, a 2 s request timeout, a 1 s verify
//!    window and cleanup grace), an embedded KeyValue namespace pinned to
//!    `shard-0` preloaded with the same records, and
//!    `PRISM_BENCH_CONCURRENCY` writers, each `PutItems` with an
//!    idempotency token on records of its own, one at a time. Every
//!    latency is tagged with the migration step in force when the request
//!    was sent (a task polls `GetNamespace` every 50 ms). A baseline of
//!    `PRISM_BENCH_BASELINE_SECS`, then `MigrateNamespace` to PostgreSQL,
//!    run to its end, then as long again after it: p50 / p99 / max per
//!    step, and dual-write p99 / baseline p99.
//! 3. **Cutover pause.** The longest latency among the requests in flight
//!    within ±1 s of the moment the step became CUTOVER, CLEANUP (the
//!    placement commit) and of the migration's end (the source removed),
//!    against the longest in equally long windows of the baseline.
//!
//! Failed requests are counted (there should be none). A migration that
//! stays at one step for 60 s fails the bench with the step and the
//! `reason` `GetMigration` gives.
//!
//! `cargo bench -p prism-gateway --bench migration`
//!
//! `PRISM_BENCH_RECORDS` (default 20 000), `PRISM_BENCH_CONCURRENCY`
//! (default 8), `PRISM_BENCH_ROUNDS` (default 3) and
//! `PRISM_BENCH_BASELINE_SECS` (default 10) change the sample;
//! `PRISM_BENCH_BACKFILL_PARALLELISM` (default 4, the gateway's default
//! `migration_backfill_parallelism`) the batches restored at once. Without a
//! PostgreSQL server it is skipped with a line saying so (unless
//! `PRISM_REQUIRE_SERVERS`). Without `--bench` (`cargo test --benches`)
//! it runs once, briefly, as a smoke test. See `docs/benchmarks.md`,
//! "Live migration (issue 16)".

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use futures_util::{StreamExt, TryStreamExt};
use hdrhistogram::Histogram;
use prism_gateway::migration::{backfill_page, digest, target_namespace};
use prism_plugin_api::kv::{KeyValueHandle, Mutation, NewItem, PageLimits, Version, VersionCursor, WriteStamp};
use prism_plugin_api::{Namespace, Plugin, now_micros};
use prism_plugin_embedded::{EmbeddedConfig, EmbeddedPlugin};
use prism_plugin_postgres::{PostgresPlugin, PostgresPluginConfig};
use prism_proto::control::backend_config::Config;
use prism_proto::control::{
    Abstraction, Backend, BackendConfig, GetMigrationRequest, GetNamespaceRequest, MigrateNamespaceRequest, Migration,
    MigrationStep, MigrationTarget, NamespaceSpec, Placement, PostgresConfig,
};
use prism_proto::kv;
use prism_testkit::postgres::{PostgresServer, skip_reason};
use prism_testkit::{Cluster, admin_token};

const NAMESPACE: &str = "bench/migrating";
const SHARD: &str = "shard-0";
const VALUE_BYTES: usize = 100;
/// The backfill's page, as `gateway/src/background/migrate.rs` reads it.
const PAGE: PageLimits = PageLimits::new(256 << 10, Some(512));
/// The source's incarnation (measurement 1).
const SOURCE_REVISION: u64 = 3;
/// How often the step is polled from the control plane.
const POLL: Duration = Duration::from_millis(50);
/// A step that lasts this long is a stall: the bench fails, naming it.
const STALL: Duration = Duration::from_secs(60);
/// Requests in flight within this of a step change count for its pause.
const PAUSE_WINDOW: Duration = Duration::from_secs(1);
/// Writers' first requests (connections, caches) are left out.
const WARM_UP: Duration = Duration::from_secs(1);
/// Failed requests whose error is printed.
const ERRORS_SHOWN: usize = 5;
/// The slowest writes listed, with when they were sent.
const SLOWEST_SHOWN: usize = 8;

/// Step tags besides `MigrationStep`'s (BEFORE is its UNSPECIFIED: no
/// migration yet).
const WARMING: i32 = -1;
const BEFORE: i32 = MigrationStep::Unspecified as i32;
const AFTER: i32 = 100;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Params {
    records: usize,
    concurrency: usize,
    rounds: usize,
    /// How long the baseline runs, and the writers after the end.
    baseline: Duration,
    /// Batches of a page the backfill restores at once (the gateway's
    /// `migration_backfill_parallelism`).
    parallelism: usize,
    warm_up: Duration,
}

fn main() -> anyhow::Result<()> {
    let bench = std::env::args().any(|a| a == "--bench");
    let concurrency = env("PRISM_BENCH_CONCURRENCY", 8).max(1);
    let p = if bench {
        Params {
            records: env("PRISM_BENCH_RECORDS", 20_000).max(concurrency),
            concurrency,
            rounds: env("PRISM_BENCH_ROUNDS", 3).max(1),
            baseline: Duration::from_secs(env("PRISM_BENCH_BASELINE_SECS", 10).max(1) as u64),
            parallelism: env("PRISM_BENCH_BACKFILL_PARALLELISM", 4).clamp(1, 64),
            warm_up: WARM_UP,
        }
    } else {
        Params {
            records: 200.max(concurrency),
            concurrency,
            rounds: 1,
            baseline: Duration::from_secs(1),
            parallelism: 4,
            warm_up: Duration::from_millis(200),
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(run(&p))
}

async fn run(p: &Params) -> anyhow::Result<()> {
    let Some(server) = PostgresServer::start_or_skip()? else {
        println!("migration: {}", skip_reason());
        return Ok(());
    };
    println!("load average at the start: {}", load_average());
    backfill_against_plain(&server, p).await?;
    println!("\nload average between the measurements: {}", load_average());
    through_a_migration(&server, p).await?;
    println!("\nload average at the end: {}", load_average());
    Ok(())
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").map_or_else(|_| "unknown".into(), |s| s.trim().to_owned())
}

/// The value record `i` holds after its `n`-th write: 100 bytes.
fn value(i: usize, n: usize) -> Vec<u8> {
    let mut v = format!("record {i} write {n} ").into_bytes();
    v.resize(VALUE_BYTES, b'.');
    v
}

fn record_id(i: usize) -> String {
    format!("r{i:06}")
}

fn kv_spec(backend: Backend, config: Option<Config>, pin: &str) -> NamespaceSpec {
    NamespaceSpec {
        abstraction: Abstraction::KeyValue as i32,
        backend: backend as i32,
        backend_config: config.map(|config| Box::new(BackendConfig { config: Some(config) })),
        placement: (!pin.is_empty()).then(|| Box::new(Placement { pinned_shard: pin.into(), ..Default::default() })),
        ..Default::default()
    }
}

fn to_postgres(config: PostgresConfig) -> MigrationTarget {
    MigrationTarget {
        backend: Backend::Postgres as i32,
        backend_config: Some(BackendConfig { config: Some(Config::Postgres(config)) }),
        ..Default::default()
    }
}

// ---------------------------------------------------------------------
// 1. Backfill against a plain copy.

/// One timed copy of the whole source.
struct Copy {
    records: u64,
    pages: u64,
    took: Duration,
}

impl Copy {
    fn per_second(&self) -> f64 {
        self.records as f64 / self.took.as_secs_f64().max(1e-9)
    }
}

async fn backfill_against_plain(server: &PostgresServer, p: &Params) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let source_plugin: Arc<dyn Plugin> = Arc::new(EmbeddedPlugin::open(EmbeddedConfig::new(dir.path()))?);
    let source_ns = Namespace {
        name: NAMESPACE.into(),
        create_revision: SOURCE_REVISION,
        spec: kv_spec(Backend::Embedded, None, ""),
    };
    source_plugin.provision(&source_ns).await?;
    let source = source_plugin.key_value().context("no KeyValue")?.open(&source_ns)?;
    let started = Instant::now();
    // One record a mutate (a commit each), a few at once.
    futures_util::stream::iter(0..p.records)
        .map(|i| {
            let source = source.clone();
            async move {
                let put = Mutation::Put(NewItem { key: b"k".to_vec(), value: value(i, 0), expires_at: None });
                source.mutate(&record_id(i), &[put], &WriteStamp { generation_time: now_micros(), token: None }).await
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await?;
    let expected = digest(source.as_ref(), PAGE, now_micros()).await?;
    ensure!(expected.items == p.records as u64, "the source holds {} items, not {}", expected.items, p.records);
    println!(
        "\n## 1. Backfill against a plain copy\n\n{} records of one {VALUE_BYTES}-byte item in an embedded source \
         (loaded in {:.1} s); pages of {} KiB / {} items; the backfill restores a page in {} batches at once\n",
        p.records,
        started.elapsed().as_secs_f64(),
        PAGE.max_bytes >> 10,
        PAGE.max_items.unwrap_or(0),
        p.parallelism,
    );

    let (pg, connection) = tokio_postgres::connect(&server.dsn(), tokio_postgres::NoTls).await?;
    let connection = tokio::spawn(connection);
    println!("| round | plain copy: s | records/s | backfill: s | records/s | pages | backfill / plain |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    let mut ratios = Vec::new();
    for round in 0..p.rounds {
        let plain = plain_copy(&pg, source.as_ref(), round, p.records).await.context("plain copy")?;
        let backfill =
            backfill(server, &source_ns, source.as_ref(), round, p.records, p.parallelism).await.context("backfill")?;
        ensure!(backfill.1 == expected, "the target's digest {:?} is not the source's {expected:?}", backfill.1);
        let backfill = backfill.0;
        let ratio = backfill.per_second() / plain.per_second();
        ratios.push(ratio);
        println!(
            "| {} | {:.3} | {:.0} | {:.3} | {:.0} | {} | {ratio:.3} |",
            round + 1,
            plain.took.as_secs_f64(),
            plain.per_second(),
            backfill.took.as_secs_f64(),
            backfill.per_second(),
            backfill.pages,
        );
    }
    ratios.sort_by(f64::total_cmp);
    let median = ratios[ratios.len() / 2];
    println!("\nbackfill / plain, median of {} rounds: {median:.3} ({:.1}× slower)", ratios.len(), 1.0 / median);
    drop(pg);
    connection.await??;
    Ok(())
}

/// The baseline: the same pages of the source, each written to a plain
/// table with one statement.
async fn plain_copy(
    pg: &tokio_postgres::Client,
    source: &dyn KeyValueHandle,
    round: usize,
    expected: usize,
) -> anyhow::Result<Copy> {
    let table = format!("plain_{round}.records");
    pg.batch_execute(&format!(
        "CREATE SCHEMA plain_{round}; \
         CREATE TABLE {table} (id text, key bytea, value bytea, PRIMARY KEY (id, key))"
    ))
    .await?;
    let insert = pg
        .prepare(&format!(
            "INSERT INTO {table} (id, key, value) SELECT * FROM UNNEST($1::text[], $2::bytea[], $3::bytea[])"
        ))
        .await?;
    let started = Instant::now();
    let (mut after, mut copy) = (None::<VersionCursor>, Copy { records: 0, pages: 0, took: Duration::ZERO });
    loop {
        let page = source.scan_versions(after.as_ref(), PAGE).await?;
        let (mut ids, mut keys, mut values) = (Vec::new(), Vec::new(), Vec::new());
        for record in &page.records {
            for version in &record.versions {
                if let Version::Item { key, value, .. } = version {
                    ids.push(record.id.as_str());
                    keys.push(key.as_slice());
                    values.push(value.as_slice());
                }
            }
        }
        if !ids.is_empty() {
            pg.execute(&insert, &[&ids, &keys, &values]).await?;
        }
        copy.records += page.records.len() as u64;
        copy.pages += 1;
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    copy.took = started.elapsed();
    let count: i64 = pg.query_one(&format!("SELECT count(*) FROM {table}"), &[]).await?.try_get(0)?;
    ensure!(count == expected as i64, "the plain table holds {count} rows, not {expected}");
    Ok(copy)
}

/// The real backfill into a fresh target incarnation in a schema of its
/// own; with the target's digest.
async fn backfill(
    server: &PostgresServer,
    source_ns: &Namespace,
    source: &dyn KeyValueHandle,
    round: usize,
    expected: usize,
    parallelism: usize,
) -> anyhow::Result<(Copy, prism_gateway::migration::Digest)> {
    let config = PostgresConfig { dsn: server.dsn(), schema: format!("backfill_{round}"), ..Default::default() };
    let migration =
        Migration { id: SOURCE_REVISION + 100 + round as u64, target: Some(to_postgres(config)), ..Default::default() };
    let target_ns = target_namespace(source_ns, &migration);
    let plugin: Arc<dyn Plugin> = Arc::new(PostgresPlugin::new(PostgresPluginConfig::default())?);
    plugin.provision_beside(&target_ns, &[source_ns.create_revision]).await?;
    let target = plugin.key_value().context("no KeyValue")?.open(&target_ns)?;
    let started = Instant::now();
    let (mut cursor, mut copy) = (None, Copy { records: 0, pages: 0, took: Duration::ZERO });
    loop {
        let copied = backfill_page(source, target.as_ref(), cursor.as_ref(), PAGE, parallelism).await?;
        copy.records += copied.records;
        copy.pages += 1;
        match copied.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    copy.took = started.elapsed();
    ensure!(copy.records == expected as u64, "the backfill copied {} records, not {expected}", copy.records);
    Ok((copy, digest(target.as_ref(), PAGE, now_micros()).await?))
}

// ---------------------------------------------------------------------
// 2. and 3. Writes through a migration.

/// One write: when it was sent (from the run's start), how long it took,
/// the step in force when it was sent, whether it succeeded.
#[derive(Clone, Copy)]
struct Sample {
    sent: Duration,
    latency: Duration,
    step: i32,
    ok: bool,
}

impl Sample {
    fn overlaps(&self, from: Duration, to: Duration) -> bool {
        self.sent <= to && self.sent + self.latency >= from
    }
}

/// What the step poller saw: when each step was first seen (from the
/// run's start), and the migration as last seen.
struct Timeline {
    changes: Vec<(Duration, i32)>,
    last: Option<Migration>,
}

fn label(step: i32) -> String {
    match step {
        WARMING => "warm-up".into(),
        BEFORE => "before (baseline)".into(),
        AFTER => "after the end".into(),
        s => MigrationStep::try_from(s)
            .map_or_else(|_| format!("step {s}"), |s| s.as_str_name().replace("MIGRATION_STEP_", "")),
    }
}

async fn through_a_migration(server: &PostgresServer, p: &Params) -> anyhow::Result<()> {
    let cluster = Cluster::start_configured(
        |c| {
            c.migration_cleanup_grace_ms = 1_000;
            c.migration_shadow_read_fraction = 0.01;
            c.migration_verify_window_ms = 1_000;
        },
        |c| {
            c.experimental_migrations = true;
            c.migration_backfill_parallelism = p.parallelism;
            // DUAL_WRITE and CUTOVER wait this long for requests admitted
            // before them.
            c.limits.request_timeout_ms = 2_000;
        },
    )
    .await?;
    let gw = cluster.active_namespace(NAMESPACE, kv_spec(Backend::Embedded, None, SHARD)).await?;
    let mut clients = Vec::new();
    for _ in 0..p.concurrency {
        clients.push(gw.kv(Some(&admin_token())).await?);
    }

    let started = Instant::now();
    let mut loading = tokio::task::JoinSet::new();
    for (me, c) in clients.iter().enumerate() {
        let mut c = c.clone();
        let mine: Vec<usize> = (me..p.records).step_by(p.concurrency).collect();
        loading.spawn(async move {
            for i in mine {
                let items = vec![kv::Item { key: b"k".to_vec(), value: value(i, 0), ttl: None }];
                let put =
                    kv::PutItemsRequest { namespace: NAMESPACE.into(), id: record_id(i), items, ..Default::default() };
                c.put_items(put).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = loading.join_next().await {
        done??;
    }
    println!(
        "\n## 2. Writes through a migration, embedded → PostgreSQL\n\n{} records preloaded through the gateway in \
         {:.1} s; {} writers, `PutItems` of one {VALUE_BYTES}-byte item with an idempotency token, each on records \
         of its own, one at a time",
        p.records,
        started.elapsed().as_secs_f64(),
        p.concurrency,
    );

    let t0 = Instant::now();
    let step = Arc::new(AtomicI32::new(WARMING));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = tokio::task::JoinSet::new();
    for (me, c) in clients.into_iter().enumerate() {
        let mine: Vec<usize> = (me..p.records).step_by(p.concurrency).collect();
        writers.spawn(writer(c, me, mine, step.clone(), stop.clone(), t0));
    }
    tokio::time::sleep(p.warm_up).await;
    let baseline_from = t0.elapsed();
    step.store(BEFORE, Ordering::SeqCst);
    tokio::time::sleep(p.baseline).await;

    let mut cp = cluster.control_plane.client().await?;
    let migrate = MigrateNamespaceRequest {
        name: NAMESPACE.into(),
        target: Some(to_postgres(PostgresConfig {
            dsn: server.dsn(),
            schema: "migrated".into(),
            ..Default::default()
        })),
        expected_revision: 0,
    };
    let migrate_at = t0.elapsed();
    let ns = cp.migrate_namespace(migrate).await?.into_inner();
    let first = ns.migration.as_deref().map_or(MigrationStep::Prepare as i32, |m| m.step);
    step.store(first, Ordering::SeqCst);
    let followed = follow_steps(cp, step.clone(), t0, (t0.elapsed(), first)).await;
    if followed.is_ok() {
        tokio::time::sleep(p.baseline).await;
    }
    stop.store(true, Ordering::SeqCst);
    let end = t0.elapsed();
    let mut samples = Vec::new();
    let mut errors = Vec::new();
    while let Some(done) = writers.join_next().await {
        let (mine, their_errors) = done?;
        samples.extend(mine);
        errors.extend(their_errors);
    }
    for e in errors.iter().take(ERRORS_SHOWN) {
        eprintln!("a write failed: {e}");
    }
    let timeline = followed?;
    report(&samples, &timeline, baseline_from, migrate_at, end, p)?;
    let failed = samples.iter().filter(|s| !s.ok).count();
    println!("\nfailed requests: {failed} of {}", samples.len());
    Ok(())
}

/// Writer `me`: puts `mine` over and over, one at a time, each with a
/// token of its own, until stopped; every latency with the step in force
/// when it was sent.
async fn writer(
    mut c: prism_client::KeyValueClient,
    me: usize,
    mine: Vec<usize>,
    step: Arc<AtomicI32>,
    stop: Arc<AtomicBool>,
    t0: Instant,
) -> (Vec<Sample>, Vec<String>) {
    let (mut samples, mut errors) = (Vec::new(), Vec::new());
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let i = mine[n % mine.len()];
        let now = now_micros();
        let put = kv::PutItemsRequest {
            namespace: NAMESPACE.into(),
            id: record_id(i),
            items: vec![kv::Item { key: b"k".to_vec(), value: value(i, n + 1), ttl: None }],
            idempotency_token: Some(kv::IdempotencyToken {
                generation_time: Some(prost_types::Timestamp {
                    seconds: now / 1_000_000,
                    nanos: (now % 1_000_000 * 1_000) as i32,
                }),
                token: format!("w{me}-{n}"),
            }),
        };
        let tag = step.load(Ordering::SeqCst);
        let sent = Instant::now();
        let result = c.put_items(put).await;
        let latency = sent.elapsed();
        if let Err(status) = &result
            && errors.len() < ERRORS_SHOWN
        {
            errors.push(format!("{} (sent at step {})", status, label(tag)));
        }
        samples.push(Sample { sent: sent - t0, latency, step: tag, ok: result.is_ok() });
        n += 1;
    }
    (samples, errors)
}

/// Polls the namespace every [`POLL`], keeping the step in `step`, until
/// the migration has ended (the step is then [`AFTER`]). A step that lasts
/// [`STALL`] fails, with `GetMigration`'s reason.
async fn follow_steps(
    mut cp: prism_client::ControlPlaneClient,
    step: Arc<AtomicI32>,
    t0: Instant,
    first: (Duration, i32),
) -> anyhow::Result<Timeline> {
    let mut timeline = Timeline { changes: vec![first], last: None };
    let (mut current, mut since) = (first.1, Instant::now());
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let ns = cp.get_namespace(GetNamespaceRequest { name: NAMESPACE.into() }).await?.into_inner();
        let seen = match ns.migration.as_deref() {
            Some(m) => {
                timeline.last = Some(m.clone());
                m.step
            }
            None => AFTER,
        };
        if seen == MigrationStep::Aborting as i32 {
            bail!("the migration is aborting: {}", timeline.last.as_ref().map_or("", |m| m.reason.as_str()));
        }
        if seen != current {
            step.store(seen, Ordering::SeqCst);
            timeline.changes.push((t0.elapsed(), seen));
            (current, since) = (seen, Instant::now());
            if seen == AFTER {
                let backend = ns.spec.as_ref().map(|s| s.backend);
                ensure!(backend == Some(Backend::Postgres as i32), "the migration ended on backend {backend:?}");
                return Ok(timeline);
            }
        } else if since.elapsed() >= STALL {
            let got = cp.get_migration(GetMigrationRequest { name: NAMESPACE.into() }).await?.into_inner();
            let reason = got.migration.map(|m| m.reason).unwrap_or_default();
            bail!("the migration stalled at {} for {STALL:?}; GetMigration's reason: {reason:?}", label(current));
        }
    }
}

fn histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 60_000_000, 3)?)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// The latencies of the successful writes sent at `steps`, and how many
/// failed.
fn stats(samples: &[Sample], steps: &[i32]) -> anyhow::Result<(Histogram<u64>, usize)> {
    let mut h = histogram()?;
    let mut failed = 0;
    for s in samples.iter().filter(|s| steps.contains(&s.step)) {
        if s.ok {
            h.record(micros(s.latency))?;
        } else {
            failed += 1;
        }
    }
    Ok((h, failed))
}

/// The longest request among those in flight within `from..to` (failed
/// ones too), and how many there were.
fn longest(samples: &[Sample], from: Duration, to: Duration) -> (Option<Sample>, usize) {
    let in_flight = samples.iter().filter(|s| s.overlaps(from, to));
    in_flight.fold((None, 0), |(longest, n), &s| {
        (Some(longest.filter(|l: &Sample| l.latency >= s.latency).unwrap_or(s)), n + 1)
    })
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `at - from` in ms, negative when `at` is earlier.
fn offset_ms(at: Duration, from: Duration) -> f64 {
    millis(at) - millis(from)
}

fn report(
    samples: &[Sample],
    timeline: &Timeline,
    baseline_from: Duration,
    migrate_at: Duration,
    end: Duration,
    p: &Params,
) -> anyhow::Result<()> {
    // Each step's span: from when it was seen to when the next was.
    let mut spans = vec![(baseline_from, migrate_at, BEFORE)];
    for (i, &(at, step)) in timeline.changes.iter().enumerate() {
        let until = timeline.changes.get(i + 1).map_or(end, |next| next.0);
        spans.push((at, until, step));
    }
    println!("\nTimeline (s from MigrateNamespace; steps as the control plane's GetNamespace showed them):\n");
    for &(at, until, step) in &spans[1..] {
        println!(
            "- {}: {:.2} → {:.2} ({:.2} s)",
            label(step),
            at.as_secs_f64() - migrate_at.as_secs_f64(),
            until.as_secs_f64() - migrate_at.as_secs_f64(),
            (until - at).as_secs_f64(),
        );
    }
    if let Some(progress) = timeline.last.as_ref().and_then(|m| m.progress.as_ref()) {
        println!(
            "\nprogress: {} records ({} bytes) copied, {} verified, {} differing; {} shadow reads, {} mismatches",
            progress.records_copied,
            progress.bytes_copied,
            progress.records_verified,
            progress.records_differing,
            progress.shadow_reads,
            progress.shadow_mismatches,
        );
    }

    let dual = [MigrationStep::DualWrite as i32, MigrationStep::Backfill as i32, MigrationStep::Verify as i32];
    let phases: Vec<(String, Vec<i32>)> = vec![
        (label(BEFORE), vec![BEFORE]),
        (label(MigrationStep::Prepare as i32), vec![MigrationStep::Prepare as i32]),
        (label(dual[0]), vec![dual[0]]),
        (label(dual[1]), vec![dual[1]]),
        (label(dual[2]), vec![dual[2]]),
        ("**DUAL_WRITE + BACKFILL + VERIFY**".into(), dual.to_vec()),
        (label(MigrationStep::Cutover as i32), vec![MigrationStep::Cutover as i32]),
        (label(MigrationStep::Cleanup as i32), vec![MigrationStep::Cleanup as i32]),
        (label(AFTER), vec![AFTER]),
    ];
    let (baseline, _) = stats(samples, &[BEFORE])?;
    println!("\nWrite latency by the step in force when sent, µs ({} writers):\n", p.concurrency);
    println!("| step | s | writes | writes/s | failed | p50 | p99 | max | p50 / before | p99 / before |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (name, steps) in &phases {
        let (h, failed) = stats(samples, steps)?;
        let secs: f64 =
            spans.iter().filter(|s| steps.contains(&s.2)).map(|&(from, to, _)| (to - from).as_secs_f64()).sum();
        println!(
            "| {name} | {secs:.1} | {} | {:.0} | {failed} | {} | {} | {} | {:.2} | {:.2} |",
            h.len(),
            h.len() as f64 / secs.max(1e-9),
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
            h.max(),
            ratio(h.value_at_quantile(0.5), baseline.value_at_quantile(0.5)),
            ratio(h.value_at_quantile(0.99), baseline.value_at_quantile(0.99)),
        );
    }
    let (h, _) = stats(samples, &dual)?;
    println!(
        "\ndual-write p99 / baseline p99: {:.2} ({} µs / {} µs)",
        ratio(h.value_at_quantile(0.99), baseline.value_at_quantile(0.99)),
        h.value_at_quantile(0.99),
        baseline.value_at_quantile(0.99),
    );
    let mut slowest: Vec<&Sample> = samples.iter().filter(|s| s.step != WARMING).collect();
    slowest.sort_by_key(|s| std::cmp::Reverse(s.latency));
    println!("\nthe slowest writes (sent at, s from MigrateNamespace):");
    for s in slowest.iter().take(SLOWEST_SHOWN) {
        println!(
            "- {:.1} ms, sent at {:+.3} s ({}{})",
            millis(s.latency),
            offset_ms(s.sent, migrate_at) / 1e3,
            label(s.step),
            if s.ok { "" } else { ", failed" },
        );
    }

    // 3. The pause: the worst request around each commit, against the
    // worst in windows as long of the baseline.
    let window = 2 * PAUSE_WINDOW;
    let mut windows = Vec::new();
    let mut from = baseline_from;
    while from + window <= migrate_at {
        windows.extend(longest(samples, from, from + window).0);
        from += window;
    }
    if windows.is_empty() {
        windows.extend(longest(samples, baseline_from, migrate_at).0);
    }
    windows.sort_by_key(|s| s.latency);
    let (typical, worst) = match (windows.get(windows.len() / 2), windows.last()) {
        (Some(typical), Some(worst)) => (typical.latency, *worst),
        _ => bail!("no write in the baseline"),
    };
    println!(
        "\n## 3. Pauses: the longest request in flight within ±{PAUSE_WINDOW:?} of a step change\n\n\
         baseline, in {} windows of {window:?}: the longest request of a window, median {:.1} ms, worst {:.1} ms \
         (sent {:.0} ms before MigrateNamespace)\n",
        windows.len(),
        millis(typical),
        millis(worst.latency),
        -offset_ms(worst.sent, migrate_at),
    );
    println!(
        "| moment | requests in flight | longest, ms | it was sent at, ms from the change | \
         / baseline median window | / baseline worst window |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    let moments = [
        (MigrationStep::Cutover as i32, "→ CUTOVER (reads move to the target)"),
        (MigrationStep::Cleanup as i32, "→ CLEANUP (the placement commit)"),
        (AFTER, "the end (the source removed)"),
    ];
    for (step, name) in moments {
        let Some(&(at, _)) = timeline.changes.iter().find(|c| c.1 == step) else {
            println!("| {name} | not seen | | | | |");
            continue;
        };
        let (Some(pause), n) = longest(samples, at.saturating_sub(PAUSE_WINDOW), at + PAUSE_WINDOW) else {
            println!("| {name} | 0 | | | | |");
            continue;
        };
        println!(
            "| {name} | {n} | {:.1} | {:+.0} | {:.2} | {:.2} |",
            millis(pause.latency),
            offset_ms(pause.sent, at),
            pause.latency.as_secs_f64() / typical.as_secs_f64().max(1e-9),
            pause.latency.as_secs_f64() / worst.latency.as_secs_f64().max(1e-9),
        );
    }
    Ok(())
}

fn ratio(a: u64, b: u64) -> f64 {
    a as f64 / b.max(1) as f64
}
