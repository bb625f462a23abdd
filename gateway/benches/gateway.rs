//! Hot pieces of the gateway: snapshot lookup and delta apply at 1 K /
//! 100 K / 1 M namespaces, against baselines measured in the same run
//! (`std::collections::HashMap` lookup; applying a delta by copying a plain
//! map, which is what a non-persistent snapshot would cost), and the
//! page-token codec.
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
criterion_main!(benches);
