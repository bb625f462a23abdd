//! Assignment: what rendezvous hashing costs per namespace, and how many
//! namespaces move when shards are added.
//!
//! The moved fraction is printed first (deterministic: the same names and
//! shard ids give the same answer on every machine), then criterion times
//! one assignment against N shards, with one xxHash64 of the same bytes as
//! the baseline.
//!
//! `cargo bench -p prism-control-plane --bench assignment`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use prism_control_plane::assign::{rendezvous, weight};

/// Names shaped like real ones: many tenants, many namespaces each.
fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("tenant-{}/namespace-{i}", i % 997)).collect()
}

fn shards(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("shard-{i}")).collect()
}

/// For N = 2..=16: the fraction of namespaces whose owner changes going
/// from N to N+1 shards, against the ideal 1/(N+1).
fn moved_fractions() {
    let names = names(100_000);
    println!("shards N -> N+1   moved      ideal 1/(N+1)   ratio");
    for n in 2..=16 {
        let (before, after) = (shards(n), shards(n + 1));
        let moved = names
            .iter()
            .filter(|ns| {
                rendezvous(ns, before.iter().map(String::as_str)) != rendezvous(ns, after.iter().map(String::as_str))
            })
            .count();
        let fraction = moved as f64 / names.len() as f64;
        let ideal = 1.0 / (n + 1) as f64;
        println!("{n:>2} -> {:>2}          {fraction:.4}     {ideal:.4}          {:.3}", n + 1, fraction / ideal);
    }
}

fn bench(c: &mut Criterion) {
    moved_fractions();
    let name = "tenant-42/namespace-4242";
    let mut group = c.benchmark_group("assignment");
    group.bench_function("baseline: one xxHash64 weight", |b| b.iter(|| weight(black_box(name), black_box("shard-3"))));
    for n in [2, 4, 16, 64] {
        let ids = shards(n);
        group.bench_function(format!("rendezvous over {n} shards"), |b| {
            b.iter(|| rendezvous(black_box(name), ids.iter().map(String::as_str)))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
