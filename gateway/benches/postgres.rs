//! Gateway → Postgres: PutItems and GetItems throughput through the gateway
//! (gRPC, every layer, the postgres plugin) against a baseline measured in
//! the same run: the plugin's own statements (`KvStatements`, imported)
//! for a put and a get, sent the way the plugin sends them, directly with
//! tokio-postgres through a deadpool pool of the same size, at the same
//! concurrency. The ratio is what the gateway costs on top of
//! the database work (goal: gateway / direct ≥ 0.9). See
//! `docs/benchmarks.md`, "Gateway → Postgres".
//!
//! `cargo bench -p prism-gateway --bench postgres`
//!
//! `PRISM_BENCH_OPS` (operations per phase, default 12 000) and
//! `PRISM_BENCH_ROUNDS` (default 4) change the sample; `PRISM_BENCH_PIN=1`
//! runs PostgreSQL on CPU 0 and the bench process (clients, gateway) on
//! CPU 1, as if the database had its own machine. Without `--bench`
//! (`cargo test --benches`) it runs once, briefly, as a smoke test, and
//! skips when PostgreSQL is not installed (unless `PRISM_REQUIRE_SERVERS`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use futures_util::future::join4;
use hdrhistogram::Histogram;
use prism_client::KeyValueClient;
use prism_plugin_api::now_micros;
use prism_plugin_postgres::kv::statements::{LOCK, LOCK_TYPES, READ_BATCH, UPSERT_TYPES};
use prism_plugin_postgres::{KvStatements, TableNames};
use prism_proto::control::backend_config::Config as BackendConfigKind;
use prism_proto::control::{Abstraction, Backend, BackendConfig, GetNamespaceRequest, NamespaceSpec, PostgresConfig};
use prism_proto::kv;
use prism_testkit::postgres::PostgresServer;
use tokio_postgres::NoTls;
use tokio_postgres::types::ToSql;

/// Connections of the namespace's pool, and of the baseline's.
const POOL_SIZE: usize = 16;
/// Concurrent clients (tasks), each with one operation in flight.
const CONCURRENCY: [usize; 2] = [16, 64];
const NAMESPACE: &str = "bench/pg";
const SCHEMA: &str = "public";
/// One item per record: this key, a value of this many bytes.
const KEY: &[u8] = b"field";
const VALUE_BYTES: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Put,
    Get,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SideKind {
    Gateway,
    Direct,
}

impl SideKind {
    fn label(self) -> &'static str {
        match self {
            Self::Gateway => "gateway",
            Self::Direct => "direct",
        }
    }

    /// Record id prefix; both the same length, so both sides store and
    /// index the same number of bytes.
    fn prefix(self) -> &'static str {
        match self {
            Self::Gateway => "gw",
            Self::Direct => "pg",
        }
    }
}

/// The baseline: the plugin's statements (imported from the plugin, not
/// copied), sent the way the plugin sends them, on a pool built like the
/// plugin's.
struct Direct {
    pool: Pool,
    names: TableNames,
    sql: KvStatements,
}

impl Direct {
    fn new(dsn: &str, names: &TableNames) -> anyhow::Result<Self> {
        // As `NamespaceSettings::make_pool`, with the plugin's default timeouts.
        let mut pg: tokio_postgres::Config = dsn.parse().context("dsn")?;
        pg.connect_timeout(Duration::from_secs(5));
        pg.options("-c statement_timeout=10000");
        pg.application_name("prism-bench-direct");
        pg.keepalives(true).keepalives_idle(Duration::from_secs(30));
        let manager = Manager::from_config(pg, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(5)))
            .create_timeout(Some(Duration::from_secs(5)))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .build()
            .context("pool")?;
        Ok(Self { pool, names: names.clone(), sql: KvStatements::new(names) })
    }

    /// A put of one item, as the plugin's `put_pipelined` sends it: a READ
    /// COMMITTED transaction of the record's advisory lock and the LWW
    /// upsert, all four statements pipelined in one round trip, the lock
    /// and the upsert prepared once per connection.
    async fn put(&self, id: &str, value: &[u8]) -> anyhow::Result<usize> {
        let generation = now_micros();
        let id = id.as_bytes();
        let client = self.pool.get().await?;
        let lock = client.prepare_typed_cached(LOCK, LOCK_TYPES).await?;
        let upsert = client.prepare_typed_cached(&self.sql.upsert, UPSERT_TYPES).await?;
        let lock_key = self.names.record_lock(id);
        let keys: Vec<&[u8]> = vec![KEY];
        let tombstones = vec![false];
        let expires: Vec<Option<i64>> = vec![None];
        let values: Vec<Option<&[u8]>> = vec![Some(value)];
        let chunk_counts = vec![0i32];
        let lens = vec![i64::try_from(value.len())?];
        let params: [&(dyn ToSql + Sync); 8] =
            [&id, &generation, &keys, &tombstones, &expires, &values, &chunk_counts, &lens];
        let (begun, locked, won, committed) = join4(
            client.batch_execute("BEGIN"),
            client.query(&lock, &[&lock_key]),
            client.query(&upsert, &params),
            client.batch_execute("COMMIT"),
        )
        .await;
        begun?;
        locked?;
        let won = won?;
        committed?;
        Ok(won.len())
    }

    /// A whole-record get, as the plugin's `read::get` sends it when one
    /// statement answers the page: one prepared statement, no transaction
    /// (on a pooled connection of its own; the plugin pipelines such reads
    /// on a few shared connections, `kv/lanes.rs`, which this baseline does
    /// not).
    async fn get(&self, id: &str) -> anyhow::Result<usize> {
        let id = id.as_bytes();
        let now = now_micros();
        let start: &[u8] = &[];
        let limit = READ_BATCH as i64;
        let client = self.pool.get().await?;
        let (text, types) = self.sql.get_range(false, false);
        let get = client.prepare_typed_cached(text, types).await?;
        let rows = client.query(&get, &[&id, &now, &start, &limit]).await?;
        let mut found = 0;
        for row in &rows {
            let (_key, _len, _chunks, _expires): (Vec<u8>, i64, i32, Option<i64>) =
                (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?, row.try_get(3)?);
            let value: Option<Vec<u8>> = row.try_get(4)?;
            found += usize::from(value.is_some_and(|v| v.len() == VALUE_BYTES));
        }
        Ok(found)
    }
}

/// One client task's way to the data.
#[derive(Clone)]
enum Worker {
    Gateway(KeyValueClient),
    Direct(Arc<Direct>),
}

impl Worker {
    /// Runs `op` on record `id`; returns the items written or found.
    async fn run(&mut self, op: Op, id: &str, value: &[u8]) -> anyhow::Result<usize> {
        match (self, op) {
            (Self::Gateway(client), Op::Put) => {
                let item = kv::Item { key: KEY.to_vec(), value: value.to_vec(), ttl: None };
                client
                    .put_items(kv::PutItemsRequest {
                        namespace: NAMESPACE.into(),
                        id: id.into(),
                        items: vec![item],
                        idempotency_token: None,
                    })
                    .await?;
                Ok(1)
            }
            (Self::Gateway(client), Op::Get) => {
                let request = kv::GetItemsRequest { namespace: NAMESPACE.into(), id: id.into(), ..Default::default() };
                let items = client.get_items(request).await?.into_inner().items;
                Ok(items.iter().filter(|i| i.value.len() == VALUE_BYTES).count())
            }
            (Self::Direct(direct), Op::Put) => direct.put(id, value).await,
            (Self::Direct(direct), Op::Get) => direct.get(id).await,
        }
    }
}

/// Name of the threads of the runtime that runs the cluster (control
/// plane, gateways, the gateway's postgres pool); the client tasks, and
/// the baseline's pool, run on another runtime.
const SERVER_THREADS: &str = "gw-server";

/// `utime + stime` (USER_HZ ticks, 100 per second on Linux), the thread or
/// process name and the parent pid, from a `/proc/.../stat` file.
fn proc_stat(path: &str) -> Option<(String, u32, u64)> {
    let text = std::fs::read_to_string(path).ok()?;
    let (head, rest) = text.rsplit_once(')')?;
    let name = head.split_once('(')?.1.to_owned();
    // Fields after the name: state, ppid, …, utime (12th), stime (13th).
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ppid = fields.get(1)?.parse().ok()?;
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some((name, ppid, ticks))
}

/// CPU time so far: this process's, the part of it on the server
/// runtime's threads, the PostgreSQL server's (its postmaster and every
/// child: backends, autovacuum, WAL writer, …), and the machine's busy and
/// total time (every process, other users' builds included).
#[derive(Debug, Clone, Copy, Default)]
struct CpuSample {
    process: u64,
    server_threads: u64,
    postgres: u64,
    machine_busy: u64,
    machine_total: u64,
}

impl CpuSample {
    fn now(postmaster: Option<u32>) -> Self {
        let process = proc_stat("/proc/self/stat").map_or(0, |s| s.2);
        let server_threads = std::fs::read_dir("/proc/self/task")
            .map(|dir| {
                dir.filter_map(|e| proc_stat(&format!("{}/stat", e.ok()?.path().display())))
                    .filter(|(name, _, _)| name == SERVER_THREADS)
                    .map(|s| s.2)
                    .sum()
            })
            .unwrap_or(0);
        let postgres = postmaster.map_or(0, |pm| {
            std::fs::read_dir("/proc")
                .map(|dir| {
                    dir.filter_map(|e| {
                        let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
                        let (_, ppid, ticks) = proc_stat(&format!("/proc/{pid}/stat"))?;
                        (pid == pm || ppid == pm).then_some(ticks)
                    })
                    .sum()
                })
                .unwrap_or(0)
        });
        let (machine_busy, machine_total) = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| {
                let line = s.lines().next()?;
                let ticks: Vec<u64> = line.split_whitespace().skip(1).filter_map(|t| t.parse().ok()).collect();
                // user nice system idle iowait irq softirq steal
                let total: u64 = ticks.iter().take(8).sum();
                let idle = ticks.get(3)? + ticks.get(4)?;
                Some((total - idle, total))
            })
            .unwrap_or((0, 0));
        Self { process, server_threads, postgres, machine_busy, machine_total }
    }
}

/// One measured phase: one side, one operation, one concurrency.
#[derive(Debug, Clone)]
struct Phase {
    ops: usize,
    elapsed: Duration,
    latency: Histogram<u64>,
    /// CPU per operation, µs: the client side (client tasks, gRPC client
    /// or the baseline's pool), the gateway side (the server runtime's
    /// threads), the PostgreSQL server.
    client_us: f64,
    gateway_us: f64,
    postgres_us: f64,
    /// Share of the machine's CPU time that was busy (all processes).
    machine_busy: f64,
}

impl Phase {
    fn ops_per_s(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }
}

/// Runs `per_task` operations on each of `workers.len()` concurrent tasks,
/// on records `<prefix>-<task>-<n>`; fails if any operation failed or did
/// not write or find its item.
async fn phase(
    workers: &[Worker],
    op: Op,
    prefix: &str,
    per_task: usize,
    postmaster: Option<u32>,
) -> anyhow::Result<Phase> {
    let value = Arc::new(vec![b'v'; VALUE_BYTES]);
    let cpu_before = CpuSample::now(postmaster);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(workers.len());
    for (task, worker) in workers.iter().enumerate() {
        let mut worker = worker.clone();
        let value = value.clone();
        let prefix = prefix.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            let mut done = 0usize;
            for n in 0..per_task {
                let id = format!("{prefix}-{task:03}-{n:06}");
                let began = Instant::now();
                done += worker.run(op, &id, &value).await.with_context(|| format!("{op:?} {id}"))?;
                latency.saturating_record(u64::try_from(began.elapsed().as_micros()).unwrap_or(u64::MAX));
            }
            anyhow::Ok((latency, done))
        }));
    }
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut done = 0;
    for task in tasks {
        let (h, n) = task.await.context("client task")??;
        latency.add(&h)?;
        done += n;
    }
    let elapsed = started.elapsed();
    let cpu_after = CpuSample::now(postmaster);
    let ops = workers.len() * per_task;
    anyhow::ensure!(done == ops, "{op:?} {prefix}: {done} of {ops} operations wrote or found their item");
    // Ticks are 10 ms: µs per operation.
    let per_op = |before: u64, after: u64| after.saturating_sub(before) as f64 * 10_000.0 / ops as f64;
    let process_us = per_op(cpu_before.process, cpu_after.process);
    let gateway_us = per_op(cpu_before.server_threads, cpu_after.server_threads);
    let machine_total = cpu_after.machine_total.saturating_sub(cpu_before.machine_total).max(1) as f64;
    Ok(Phase {
        ops,
        elapsed,
        latency,
        client_us: process_us - gateway_us,
        gateway_us,
        postgres_us: per_op(cpu_before.postgres, cpu_after.postgres),
        machine_busy: cpu_after.machine_busy.saturating_sub(cpu_before.machine_busy) as f64 / machine_total,
    })
}

struct Settings {
    ops: usize,
    rounds: usize,
    warmup_ops: usize,
    /// PostgreSQL on CPU 0 and this process on CPU 1 (`PRISM_BENCH_PIN=1`).
    pin: bool,
}

/// Pins the PostgreSQL server (the postmaster and its children; backends
/// forked later inherit it) to CPU 0 and every thread of this process to
/// CPU 1, with `taskset`: the database and the gateway then do not take
/// CPU from each other, as on separate machines (other processes still
/// share both).
fn pin(postmaster: u32) -> anyhow::Result<()> {
    let mut postgres = vec![postmaster];
    for entry in std::fs::read_dir("/proc")?.flatten() {
        if let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok())
            && proc_stat(&format!("/proc/{pid}/stat")).is_some_and(|s| s.1 == postmaster)
        {
            postgres.push(pid);
        }
    }
    let mut targets: Vec<(u32, &str)> = postgres.into_iter().map(|pid| (pid, "0")).collect();
    targets.push((std::process::id(), "1"));
    for (pid, cpu) in targets {
        let status = std::process::Command::new("taskset")
            .args(["-a", "-p", "-c", cpu, &pid.to_string()])
            .stdout(std::process::Stdio::null())
            .status()
            .context("run taskset")?;
        anyhow::ensure!(status.success(), "taskset of pid {pid} failed: {status}");
    }
    Ok(())
}

fn env_usize(name: &str, default: usize) -> anyhow::Result<usize> {
    match std::env::var(name) {
        Ok(v) => v.parse().with_context(|| format!("{name}={v:?}")),
        Err(_) => Ok(default),
    }
}

fn main() -> anyhow::Result<()> {
    let benching = std::env::args().any(|a| a == "--bench");
    let settings = if benching {
        Settings {
            ops: env_usize("PRISM_BENCH_OPS", 12_000)?,
            rounds: env_usize("PRISM_BENCH_ROUNDS", 4)?,
            warmup_ops: 4_000,
            pin: env_usize("PRISM_BENCH_PIN", 0)? != 0,
        }
    } else {
        Settings { ops: 256, rounds: 1, warmup_ops: 128, pin: false }
    };
    // Blocking (pg_ctl): before the runtimes.
    let server = if benching {
        PostgresServer::start().context("start postgresql")?
    } else {
        match PostgresServer::start_or_skip().context("start postgresql")? {
            Some(server) => server,
            None => {
                eprintln!("skipping the postgres bench: {}", prism_testkit::postgres::skip_reason());
                return Ok(());
            }
        }
    };
    let dsn = server.dsn();
    // Two runtimes, as two processes would be: the cluster (and so the
    // gateway and its pool) on one, the clients and the baseline's pool on
    // the other, so that their CPU time can be told apart.
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .thread_name(SERVER_THREADS)
        .enable_all()
        .build()
        .context("runtime")?;
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .thread_name("bench-client")
        .enable_all()
        .build()
        .context("runtime")?;
    let (cluster, endpoint, names) = server_rt.block_on(start_cluster(&dsn))?;
    let outcome = client_rt.block_on(run(&dsn, &endpoint, &names, &settings));
    server_rt.block_on(async move { drop(cluster) });
    outcome
}

type Results = Vec<(usize, Op, SideKind, Vec<Phase>)>;

/// Starts the cluster and the namespace; returns the owning gateway's
/// endpoint and the namespace's table names.
async fn start_cluster(dsn: &str) -> anyhow::Result<(prism_testkit::Cluster, String, TableNames)> {
    // The periodic reclamation sweep is not what is measured here.
    let cluster = prism_testkit::Cluster::start_with(|c| c.limits.reclaim_interval_seconds = 24 * 3600).await?;
    let spec = NamespaceSpec {
        abstraction: Abstraction::KeyValue as i32,
        backend: Backend::Postgres as i32,
        backend_config: Some(Box::new(BackendConfig {
            config: Some(BackendConfigKind::Postgres(PostgresConfig {
                dsn: dsn.to_owned(),
                pool_size: u32::try_from(POOL_SIZE)?,
                schema: SCHEMA.into(),
                ..PostgresConfig::default()
            })),
        })),
        ..Default::default()
    };
    let endpoint = cluster.active_namespace(NAMESPACE, spec).await?.endpoint();
    let ns = cluster
        .control_plane
        .client()
        .await?
        .get_namespace(GetNamespaceRequest { name: NAMESPACE.into() })
        .await?
        .into_inner();
    let names = TableNames::of(
        &prism_plugin_api::Namespace {
            name: ns.name.clone(),
            create_revision: ns.create_revision,
            spec: Default::default(),
        },
        SCHEMA,
    )?;
    Ok((cluster, endpoint, names))
}

async fn run(dsn: &str, endpoint: &str, names: &TableNames, settings: &Settings) -> anyhow::Result<()> {
    let direct = Arc::new(Direct::new(dsn, names)?);
    let token = prism_testkit::admin_token();
    // The server's postmaster: the parent of a backend.
    let backend: i32 = direct.pool.get().await?.query_one("SELECT pg_backend_pid()", &[]).await?.try_get(0)?;
    let postmaster = proc_stat(&format!("/proc/{backend}/stat")).map(|s| s.1);
    if settings.pin {
        let postmaster = postmaster.context("the postmaster's pid")?;
        pin(postmaster)?;
    }

    let max_c = CONCURRENCY.iter().copied().max().unwrap_or(1);
    // One gRPC connection per client task: C independent clients.
    let mut clients = Vec::with_capacity(max_c);
    for _ in 0..max_c {
        clients.push(Worker::Gateway(prism_client::key_value(endpoint, Some(&token)).await?));
    }
    let directs: Vec<Worker> = (0..max_c).map(|_| Worker::Direct(direct.clone())).collect();
    let workers = |side: SideKind, c: usize| match side {
        SideKind::Gateway => &clients[..c],
        SideKind::Direct => &directs[..c],
    };

    // Warm-up: every connection of both pools opened, the tables' pages
    // in the buffer cache, both paths' code hot.
    for side in [SideKind::Gateway, SideKind::Direct] {
        let w = workers(side, max_c);
        let per_task = (settings.warmup_ops / max_c).max(1);
        let prefix = format!("w{}", side.prefix());
        phase(w, Op::Put, &prefix, per_task, postmaster).await?;
        phase(w, Op::Get, &prefix, per_task, postmaster).await?;
    }

    let mut results: Results = Vec::new();
    for round in 0..settings.rounds {
        // Alternate who goes first, so neither side always meets the
        // other's leftovers (dirty pages, autovacuum).
        let order =
            if round % 2 == 0 { [SideKind::Gateway, SideKind::Direct] } else { [SideKind::Direct, SideKind::Gateway] };
        for c in CONCURRENCY {
            let per_task = (settings.ops / c).max(1);
            for op in [Op::Put, Op::Get] {
                for side in order {
                    // Gets read the records the same side's puts wrote this round.
                    let prefix = format!("{}{round}c{c:02}", side.prefix());
                    let p = phase(workers(side, c), op, &prefix, per_task, postmaster).await?;
                    println!(
                        "round {round} c={c:<3} {op:?} {:<8} {:>6.0} ops/s  p50 {:>6} µs  p99 {:>6} µs  CPU µs/op: client {:>4.0} gateway {:>4.0} postgres {:>4.0}  machine busy {:>3.0}%",
                        side.label(),
                        p.ops_per_s(),
                        p.latency.value_at_quantile(0.5),
                        p.latency.value_at_quantile(0.99),
                        p.client_us,
                        p.gateway_us,
                        p.postgres_us,
                        p.machine_busy * 100.0
                    );
                    match results.iter_mut().find(|r| (r.0, r.1, r.2) == (c, op, side)) {
                        Some(r) => r.3.push(p),
                        None => results.push((c, op, side, vec![p])),
                    }
                }
            }
        }
    }
    report(&results);
    Ok(())
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    match xs.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => xs[n / 2],
        n => (xs[n / 2 - 1] + xs[n / 2]) / 2.0,
    }
}

fn report(results: &Results) {
    let find = |c: usize, op: Op, side: SideKind| {
        results.iter().find(|r| (r.0, r.1, r.2) == (c, op, side)).map(|r| r.3.as_slice()).unwrap_or(&[])
    };
    println!();
    println!("pool size {POOL_SIZE}; medians over rounds; ratio = gateway ops/s / direct ops/s of the same round");
    println!();
    println!(
        "| C | op | gateway ops/s | direct ops/s | **ratio** (min–max) | gateway p50 / p99 µs | direct p50 / p99 µs | CPU µs/op gateway side: client + gateway + postgres | direct side: client + postgres |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|");
    for c in CONCURRENCY {
        for op in [Op::Put, Op::Get] {
            let (gw, pg) = (find(c, op, SideKind::Gateway), find(c, op, SideKind::Direct));
            let ratios: Vec<f64> = gw.iter().zip(pg).map(|(g, d)| g.ops_per_s() / d.ops_per_s()).collect();
            let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let q = |ps: &[Phase], q: f64| median(ps.iter().map(|p| p.latency.value_at_quantile(q) as f64).collect());
            let ops = |ps: &[Phase]| median(ps.iter().map(Phase::ops_per_s).collect());
            let cpu = |ps: &[Phase], f: fn(&Phase) -> f64| median(ps.iter().map(f).collect());
            println!(
                "| {c} | {op:?} | {:.0} | {:.0} | **{:.2}** ({lo:.2}–{hi:.2}) | {:.0} / {:.0} | {:.0} / {:.0} | {:.0} + {:.0} + {:.0} | {:.0} + {:.0} |",
                ops(gw),
                ops(pg),
                median(ratios.clone()),
                q(gw, 0.5),
                q(gw, 0.99),
                q(pg, 0.5),
                q(pg, 0.99),
                cpu(gw, |p| p.client_us),
                cpu(gw, |p| p.gateway_us),
                cpu(gw, |p| p.postgres_us),
                cpu(pg, |p| p.client_us),
                cpu(pg, |p| p.postgres_us),
            );
        }
    }
}
