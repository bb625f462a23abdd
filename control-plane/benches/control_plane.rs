//! Control-plane benchmarks, each beside a baseline measured in the same run
//! so results read as ratios (see docs/benchmarks.md):
//!
//! - `create_namespace/*`: creates per second through the `ControlPlane`
//!   API and through gRPC, against a bare redb write transaction of the same
//!   records and sizes. Every commit is fsynced, so all three are bounded by
//!   the disk's fsync latency.
//! - the same three create paths interleaved round by round (printed), so
//!   their ratios are not skewed by fsync latency drifting between groups.
//! - write→delivered latency to 16 gRPC Watch streams (printed, not a
//!   criterion group: it is a distribution, not a mean), against the commit
//!   alone, a unary gRPC round trip and a bare tokio broadcast to 16 tasks.
//!
//! Run: `cargo bench -p prism-control-plane --bench control_plane`.
//! `PRISM_BENCH_COMMITS` sets the printed measurements' sample (default
//! 1000 under `cargo bench`, 5 as a smoke test under `cargo test`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, Throughput};
use hdrhistogram::Histogram;
use prism_control_plane::{ControlPlane, ControlPlaneConfig, server};
use prism_proto::control::{
    Abstraction, AuditEvent, Backend, CreateNamespaceRequest, Delta, GetTenantRequest, Namespace, NamespaceSpec,
    UpdateTenantRequest, WatchRequest, watch_response::Event,
};
use prism_testkit::ControlPlaneHandle;
use prost::Message;
use redb::TableDefinition;
use tokio::runtime::Runtime;

const WATCHERS: usize = 16;
const TENANT: &str = "bench";

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime")
}

fn spec() -> NamespaceSpec {
    NamespaceSpec {
        abstraction: Abstraction::KeyValue as i32,
        backend: Backend::Embedded as i32,
        ..NamespaceSpec::default()
    }
}

fn open_plane(dir: &std::path::Path) -> ControlPlane {
    // The rules, not authentication, are measured: no key.
    let config = ControlPlaneConfig {
        data_dir: dir.join("control-plane"),
        insecure_no_auth: true,
        ..ControlPlaneConfig::default()
    };
    runtime().block_on(server::open(config)).expect("open control plane")
}

/// A fresh namespace name per call, across every benchmark iteration.
fn next_name(counter: &AtomicU64) -> String {
    format!("{TENANT}/ns-{:08}", counter.fetch_add(1, Ordering::Relaxed))
}

/// The records one namespace create writes, encoded: the namespace, the
/// delta holding it and the audit event. The baseline writes the same.
fn create_records(ns: &Namespace) -> [Vec<u8>; 3] {
    let delta = Delta {
        revision: ns.revision,
        changes: vec![prism_proto::control::Change {
            change: Some(prism_proto::control::change::Change::Namespace(ns.clone())),
        }],
        commit_time: ns.create_time,
    };
    let audit = AuditEvent {
        sequence: ns.revision,
        time: ns.create_time,
        principal: "anonymous".into(),
        action: "CreateNamespace".into(),
        tenant_id: TENANT.into(),
        target: ns.name.clone(),
        result: "ok".into(),
        detail: "created on shard \"\"".into(),
        revision: ns.revision,
        client_address: String::new(),
    };
    [ns.encode_to_vec(), delta.encode_to_vec(), audit.encode_to_vec()]
}

const B_NAMESPACES: TableDefinition<&str, &[u8]> = TableDefinition::new("namespaces");
const B_CHANGES: TableDefinition<u64, &[u8]> = TableDefinition::new("changes");
const B_AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
const B_META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// The floor under a create: one redb write transaction inserting the same
/// records (and the same two counters) and committing with fsync.
fn bare_redb_commit(db: &redb::Database, n: u64, name: &str, records: &[Vec<u8>; 3]) {
    let w = db.begin_write().expect("begin");
    {
        let mut namespaces = w.open_table(B_NAMESPACES).expect("table");
        let mut changes = w.open_table(B_CHANGES).expect("table");
        let mut audit = w.open_table(B_AUDIT).expect("table");
        let mut meta = w.open_table(B_META).expect("table");
        namespaces.insert(name, records[0].as_slice()).expect("insert");
        changes.insert(n, records[1].as_slice()).expect("insert");
        audit.insert(n, records[2].as_slice()).expect("insert");
        meta.insert("revision", n).expect("insert");
        meta.insert("audit_sequence", n).expect("insert");
    }
    w.commit().expect("commit");
}

fn create_throughput(c: &mut Criterion) {
    let rt = runtime();
    let counter = Arc::new(AtomicU64::new(0));
    let temp = tempfile::tempdir().expect("temp dir");

    // Through the ControlPlane API.
    let plane = open_plane(temp.path());
    rt.block_on(plane.create_tenant("bench", TENANT, "", &[], None)).expect("tenant");
    let sample = rt.block_on(plane.create_namespace("bench", &next_name(&counter), Some(&spec()))).expect("create");
    let records = create_records(&sample);

    // Through gRPC, on its own store.
    let (handle, client) = rt.block_on(async {
        let handle = ControlPlaneHandle::start().await.expect("control plane");
        let client = handle.client().await.expect("client");
        handle.plane.create_tenant("bench", TENANT, "", &[], None).await.expect("tenant");
        (handle, client)
    });

    // The baseline, on the same disk.
    let db = redb::Database::create(temp.path().join("baseline.redb")).expect("baseline db");

    let mut group = c.benchmark_group("create_namespace");
    group.throughput(Throughput::Elements(1));
    // Each create is a few ms (an fsync): flat sampling keeps the run short.
    group.sampling_mode(SamplingMode::Flat).sample_size(20);
    group.bench_function("bare_redb_commit", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                bare_redb_commit(&db, n, &format!("{TENANT}/ns-{n:08}"), &records);
            }
            start.elapsed()
        })
    });
    group.bench_function("control_plane_api", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    plane.create_namespace("bench", &next_name(&counter), Some(&spec())).await.expect("create");
                }
                start.elapsed()
            })
        })
    });
    group.bench_function("grpc", |b| {
        b.iter_custom(|iters| {
            let mut client = client.clone();
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let req = CreateNamespaceRequest { name: next_name(&counter), spec: Some(spec()) };
                    client.create_namespace(req).await.expect("create");
                }
                start.elapsed()
            })
        })
    });
    group.finish();
    drop(handle);
}

// ---------------------------------------------------------------------------
// Create latency, interleaved with its baseline
// ---------------------------------------------------------------------------

/// The three create paths one after another in each round, so that all
/// three see the same disk: fsync latency on a shared or virtual disk drifts
/// over seconds, which makes ratios of criterion groups measured a minute
/// apart noisy. Creates are sequential, so creates/s = 1 / latency.
fn create_interleaved(rounds: usize) {
    let rt = runtime();
    let temp = tempfile::tempdir().expect("temp dir");
    let plane = open_plane(temp.path());
    let db = redb::Database::create(temp.path().join("baseline.redb")).expect("baseline db");
    let counter = AtomicU64::new(0);
    let rows = rt.block_on(async {
        plane.create_tenant("bench", TENANT, "", &[], None).await.expect("tenant");
        let handle = ControlPlaneHandle::start().await.expect("control plane");
        handle.plane.create_tenant("bench", TENANT, "", &[], None).await.expect("tenant");
        let mut client = handle.client().await.expect("client");
        let sample = plane.create_namespace("bench", &next_name(&counter), Some(&spec())).await.expect("create");
        let records = create_records(&sample);
        let (mut bare, mut api, mut grpc) = (histogram(), histogram(), histogram());
        let warm_up = 20;
        for i in 0..warm_up + rounds {
            let start = Instant::now();
            let n = counter.fetch_add(1, Ordering::Relaxed);
            // Blocks a runtime worker for one commit: fine in a benchmark,
            // and it is the bare cost without the blocking-pool hop.
            bare_redb_commit(&db, n, &format!("{TENANT}/ns-{n:08}"), &records);
            let bare_took = start.elapsed();
            let start = Instant::now();
            plane.create_namespace("bench", &next_name(&counter), Some(&spec())).await.expect("create");
            let api_took = start.elapsed();
            let start = Instant::now();
            let req = CreateNamespaceRequest { name: next_name(&counter), spec: Some(spec()) };
            client.create_namespace(req).await.expect("create");
            let grpc_took = start.elapsed();
            if i >= warm_up {
                bare.record(micros(bare_took)).expect("record");
                api.record(micros(api_took)).expect("record");
                grpc.record(micros(grpc_took)).expect("record");
            }
        }
        drop(handle);
        [
            Row { name: "baseline: bare redb commit, same records", hist: bare },
            Row { name: "create via ControlPlane API", hist: api },
            Row { name: "create via gRPC (testkit server)", hist: grpc },
        ]
    });
    println!();
    println!("create latency, interleaved: {rounds} rounds");
    print_rows(&rows);
    let p50 = |i: usize| rows[i].hist.value_at_quantile(0.5) as f64;
    let per_second = |i: usize| 1e6 / rows[i].hist.mean();
    println!(
        "creates/s (1/mean): bare {:.0}, API {:.0}, gRPC {:.0}; ratios (p50): API / bare = {:.2}, gRPC / bare = {:.2}",
        per_second(0),
        per_second(1),
        per_second(2),
        p50(1) / p50(0),
        p50(2) / p50(0)
    );
}

// ---------------------------------------------------------------------------
// Write→delivered latency
// ---------------------------------------------------------------------------

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).clamp(1, 60_000_000)
}

struct Row {
    name: &'static str,
    hist: Histogram<u64>,
}

fn print_rows(rows: &[Row]) {
    println!("{:<44} {:>8} {:>10} {:>10} {:>10}", "measurement", "samples", "p50 µs", "p99 µs", "max µs");
    for r in rows {
        println!(
            "{:<44} {:>8} {:>10} {:>10} {:>10}",
            r.name,
            r.hist.len(),
            r.hist.value_at_quantile(0.50),
            r.hist.value_at_quantile(0.99),
            r.hist.max()
        );
    }
}

fn watch_latency(commits: usize) {
    let rt = runtime();
    let rows = rt.block_on(async {
        let handle = ControlPlaneHandle::start().await.expect("control plane");
        let plane = handle.plane.clone();
        plane.create_tenant("bench", TENANT, "", &[], None).await.expect("tenant");

        // 16 watchers, each on its own connection like 16 gateways.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(u64, Instant)>();
        let from = plane.store().revision().await.expect("revision");
        for _ in 0..WATCHERS {
            let mut client = handle.client().await.expect("client");
            let mut stream = client.watch(WatchRequest { from_revision: from }).await.expect("watch").into_inner();
            let tx = tx.clone();
            tokio::spawn(async move {
                while let Ok(Some(message)) = stream.message().await {
                    if let Some(Event::Delta(d)) = message.event {
                        let _ = tx.send((d.revision, Instant::now()));
                    }
                }
            });
        }
        let update = |i: usize| UpdateTenantRequest {
            tenant_id: TENANT.into(),
            display_name: format!("v{i}"),
            ..UpdateTenantRequest::default()
        };
        let (mut delivered, mut after_commit, mut commit) = (histogram(), histogram(), histogram());
        // Warm-up: every watcher is live once it has seen a commit.
        let warm_up = 20;
        for i in 0..warm_up + commits {
            let start = Instant::now();
            let tenant = plane.update_tenant("bench", &update(i)).await.expect("commit");
            let committed = Instant::now();
            for _ in 0..WATCHERS {
                let (revision, at) = rx.recv().await.expect("a watcher ended");
                assert_eq!(revision, tenant.revision, "watchers receive commits in order");
                if i >= warm_up {
                    delivered.record(micros(at - start)).expect("record");
                    // The delta is broadcast inside the commit, so it can
                    // arrive before the commit call has returned.
                    after_commit.record(micros(at.saturating_duration_since(committed))).expect("record");
                }
            }
            if i >= warm_up {
                commit.record(micros(committed - start)).expect("record");
            }
        }

        // Baseline: a unary gRPC round trip to the same server.
        let mut client = handle.client().await.expect("client");
        let mut unary = histogram();
        for i in 0..warm_up + commits {
            let start = Instant::now();
            client.get_tenant(GetTenantRequest { tenant_id: TENANT.into() }).await.expect("get");
            if i >= warm_up {
                unary.record(micros(start.elapsed())).expect("record");
            }
        }

        // Baseline: a bare tokio broadcast to 16 receiving tasks.
        let (btx, _) = tokio::sync::broadcast::channel::<Instant>(1024);
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<Duration>();
        for _ in 0..WATCHERS {
            let mut brx = btx.subscribe();
            let done_tx = done_tx.clone();
            tokio::spawn(async move {
                while let Ok(sent) = brx.recv().await {
                    let _ = done_tx.send(sent.elapsed());
                }
            });
        }
        let mut broadcast = histogram();
        for i in 0..warm_up + commits {
            btx.send(Instant::now()).expect("receivers");
            for _ in 0..WATCHERS {
                let took = done_rx.recv().await.expect("a receiver ended");
                if i >= warm_up {
                    broadcast.record(micros(took)).expect("record");
                }
            }
        }
        drop(handle);
        [
            Row { name: "write→delivered, 16 gRPC watchers", hist: delivered },
            Row { name: "  of which: commit (fsync) alone", hist: commit },
            Row { name: "  of which: commit returned→delivered", hist: after_commit },
            Row { name: "baseline: unary gRPC round trip (GetTenant)", hist: unary },
            Row { name: "baseline: tokio broadcast to 16 tasks", hist: broadcast },
        ]
    });
    println!();
    println!("watch latency: {commits} commits × {WATCHERS} watchers");
    print_rows(&rows);
    let p50 = |i: usize| rows[i].hist.value_at_quantile(0.5) as f64;
    println!(
        "ratios (p50): write→delivered / commit = {:.2}; commit→delivered / unary gRPC = {:.2}; \
         commit→delivered / bare broadcast = {:.1}",
        p50(0) / p50(1),
        p50(2) / p50(3),
        p50(2) / p50(4)
    );
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not, and
    // then everything runs once, briefly, as a smoke test.
    let measuring = std::env::args().any(|a| a == "--bench");
    let mut criterion = Criterion::default().configure_from_args();
    create_throughput(&mut criterion);
    criterion.final_summary();
    let commits = match std::env::var("PRISM_BENCH_COMMITS") {
        Ok(n) => n.parse().expect("PRISM_BENCH_COMMITS is a number"),
        Err(_) if measuring => 1000,
        Err(_) => 5,
    };
    create_interleaved(commits);
    watch_latency(commits);
}
