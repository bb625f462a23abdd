//! Hot pieces of the gateway: snapshot lookup and delta apply at 1 K /
//! 100 K / 1 M namespaces, against baselines measured in the same run
//! (`std::collections::HashMap` lookup; applying a delta by copying a plain
//! map, which is what a non-persistent snapshot would cost), and the
//! page-token codec; the pipeline's cost per cache-hit request with and
//! without request metrics; and the request span before and after issue
//! 12.
//!
//! `cargo bench -p prism-gateway --bench gateway`

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use prism_gateway::page_token;
use prism_gateway::snapshot::{Snapshot, SnapshotBuilder};
use prism_proto::control::{Change, Delta, Namespace, NamespaceSpec, SnapshotChunk, change};

fn namespace(i: usize, revision: u64) -> Namespace {
    Namespace {
        name: format!("tenant-{}/namespace-{i}", i % 1000),
        revision,
        create_revision: 1,
        shard_id: "shard-0".into(),
        spec: Some(NamespaceSpec::default()),
        ..Namespace::default()
    }
}

fn snapshot(n: usize) -> Snapshot {
    let mut builder = SnapshotBuilder::new(1);
    let chunk =
        SnapshotChunk { revision: 1, namespaces: (0..n).map(|i| namespace(i, 1)).collect(), ..Default::default() };
    builder.add(chunk, &Snapshot::default());
    builder.build()
}

fn snapshot_benches(c: &mut Criterion) {
    for n in [1_000usize, 100_000, 1_000_000] {
        let snap = snapshot(n);
        let names: Vec<String> =
            (0..1024).map(|i| format!("tenant-{}/namespace-{}", (i * 7919 % n) % 1000, i * 7919 % n)).collect();
        let plain: HashMap<String, Arc<()>> = (0..n).map(|i| (namespace(i, 1).name, Arc::new(()))).collect();

        let mut group = c.benchmark_group("snapshot_lookup");
        group.bench_with_input(BenchmarkId::new("imbl_snapshot", n), &n, |b, _| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % names.len();
                black_box(snap.namespace(&names[i]).map(Arc::as_ptr))
            })
        });
        group.bench_with_input(BenchmarkId::new("baseline_std_hashmap", n), &n, |b, _| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) % names.len();
                black_box(plain.get(&names[i]).map(Arc::as_ptr))
            })
        });
        group.finish();

        let mut group = c.benchmark_group("delta_apply");
        let delta = Delta {
            revision: 2,
            changes: vec![Change { change: Some(change::Change::Namespace(namespace(n / 2, 2))) }],
            commit_time: None,
        };
        group.bench_with_input(BenchmarkId::new("imbl_snapshot", n), &n, |b, _| {
            b.iter(|| black_box(snap.apply(&delta)))
        });
        if n <= 100_000 {
            // Copying 1 M entries per delta takes long enough to make the
            // point at 100 K already.
            group.sample_size(10);
            group.bench_with_input(BenchmarkId::new("baseline_copy_std_hashmap", n), &n, |b, _| {
                b.iter(|| {
                    let mut next = plain.clone();
                    next.insert(namespace(n / 2, 2).name, Arc::new(()));
                    black_box(next)
                })
            });
        }
        group.finish();
    }
}

fn page_token_benches(c: &mut Criterion) {
    let binding = page_token::binding(&[b"acme/profiles", b"user-42", b"all"]);
    let token = page_token::encode(binding, b"some-key-0042");
    c.bench_function("page_token/encode", |b| b.iter(|| black_box(page_token::encode(binding, b"some-key-0042"))));
    c.bench_function("page_token/decode", |b| b.iter(|| black_box(page_token::decode(binding, &token))));
}

criterion_group!(benches, snapshot_benches, page_token_benches);

/// CPU cost of one cache-hit GetItems through every layer of the pipeline
/// (load shed, deadline, validate, authenticate an HS256 token, authorize
/// on the snapshot, quota, router, cache), in process with no network, so
/// the time per call is the gateway's own CPU cost. Baselines in the same
/// run: the same read with the cache off (served by the embedded store),
/// and a bare `tower::service_fn` called the same way (the cost of the
/// call machinery alone).
fn pipeline_benches(c: &mut Criterion) {
    use prism_proto::control::{Abstraction, Backend, Policies};
    use prism_proto::kv;
    use tower::ServiceExt;

    let Ok(rt) = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build() else {
        return;
    };
    let setup = rt.block_on(async {
        let cluster = prism_testkit::Cluster::start().await?;
        let mut pipelines = Vec::new();
        for (name, cached) in [("acme/cached", true), ("acme/uncached", false)] {
            let spec = NamespaceSpec {
                abstraction: Abstraction::KeyValue as i32,
                backend: Backend::Embedded as i32,
                policies: Some(Box::new(Policies { cache_enabled: cached, ..Default::default() })),
                ..Default::default()
            };
            let gw = cluster.active_namespace(name, spec).await?;
            let mut client = gw.kv(Some(&prism_testkit::admin_token())).await?;
            let items = (0..4)
                .map(|i| kv::Item { key: format!("field-{i}").into_bytes(), value: vec![b'x'; 100], ttl: None })
                .collect();
            client
                .put_items(kv::PutItemsRequest {
                    namespace: name.into(),
                    id: "user-42".into(),
                    items,
                    idempotency_token: None,
                })
                .await?;
            pipelines.push((name, true, gw.gateway.pipeline_counting(true)));
            if cached {
                // The same, without the per-namespace request metrics.
                pipelines.push((name, false, gw.gateway.pipeline_counting(false)));
            }
        }
        anyhow::Ok((cluster, pipelines))
    });
    let Ok((_cluster, pipelines)) = setup else { return };
    let authorization = Some(format!("Bearer {}", prism_testkit::admin_token()));
    let call = |name: &str| {
        let request = kv::GetItemsRequest { namespace: name.into(), id: "user-42".into(), ..Default::default() };
        prism_gateway::call::Call::new(prism_gateway::call::Request::Get(request), authorization.clone())
    };

    let mut group = c.benchmark_group("get_items_pipeline");
    for (name, counted, pipeline) in &pipelines {
        let label = match (name.ends_with("uncached"), counted) {
            (true, _) => "cache_off_embedded_read",
            (false, true) => "cache_hit",
            (false, false) => "cache_hit_no_request_metrics",
        };
        group.bench_function(label, |b| {
            b.to_async(&rt).iter(|| {
                let pipeline = pipeline.clone();
                let call = call(name);
                async move { black_box(pipeline.oneshot(call).await.is_ok()) }
            })
        });
    }
    let bare = tower::service_fn(|call: prism_gateway::call::Call| async move {
        Ok::<_, std::convert::Infallible>(call.request.rpc().len())
    });
    group.bench_function("baseline_bare_service_fn", |b| {
        b.to_async(&rt).iter(|| {
            let call = call("acme/cached");
            async move { black_box(bare.oneshot(call).await.is_ok()) }
        })
    });
    group.finish();
}

/// The request span as it was (an INFO span whose fields the log
/// subscriber formats on every request) against what the trace layer does
/// now (the sampling decision and a DEBUG span, disabled at INFO), under
/// the subscriber `prism dev` installs (fmt at INFO, output to a sink
/// here), with an empty closure as the baseline.
fn span_benches(c: &mut Criterion) {
    let subscriber = tracing_subscriber::fmt().with_max_level(tracing::Level::INFO).with_writer(std::io::sink).finish();
    tracing::subscriber::with_default(subscriber, || {
        let mut group = c.benchmark_group("request_span_at_info");
        let namespace = black_box("acme/user-profiles");
        group.bench_function("before_info_span_formatted", |b| {
            b.iter(|| {
                let tenant = namespace.split_once('/').map_or("", |(t, _)| t);
                let span = tracing::info_span!(
                    "request",
                    rpc = "GetItems",
                    tenant = %tenant,
                    namespace = %namespace,
                    status = tracing::field::Empty,
                );
                let _entered = span.enter();
                span.record("status", "ok");
                tracing::debug!("request done");
            })
        });
        group.bench_function("now_sampling_decision_and_debug_span", |b| {
            b.iter(|| {
                if !prism_telemetry::trace::should_trace(None) {
                    return;
                }
                let tenant = namespace.split_once('/').map_or("", |(t, _)| t);
                let span = tracing::debug_span!(
                    target: prism_telemetry::trace::REQUEST_TARGET,
                    "request",
                    rpc.method = "GetItems",
                    prism.tenant = %tenant,
                    prism.namespace = %namespace,
                    rpc.grpc.status_code = tracing::field::Empty,
                );
                black_box(span.is_disabled());
            })
        });
        group.bench_function("baseline_nothing", |b| b.iter(|| black_box(namespace.len())));
        group.finish();
    });
}

criterion_group!(pipeline, pipeline_benches);
criterion_group!(spans, span_benches);
criterion_main!(benches, pipeline, spans);
