//! The per-request costs of authorization and quotas, uncontended, against
//! baselines measured in the same run: a `std::collections::HashMap`
//! lookup of the namespace name and one uncontended `AtomicU64::fetch_add`.
//!
//! - `authorize/*` — `layers::authz::allowed` on a snapshot entry for an
//!   admin (first rule) and for a consumer with a grant (every rule read).
//! - `clock_now_ms` — the monotonic clock read the quota check makes
//!   (one `Instant::elapsed`), for context.
//! - `quota/admit` — what the quota layer does per request: the tenant's
//!   quota set from the snapshot, `QuotaRegistry::admit` (both trackers'
//!   windows summed and checked, concurrency counted, the request charged)
//!   and dropping the admission. Limits are set but never reached.
//! - `quota/admit_and_charge_read` — the same plus charging read bytes
//!   after the response.
//! - `authenticate_verify_hs256` — verifying a bearer HS256 token, as every
//!   request did before the gateway remembered verified tokens, against
//!   `authenticate_cached` — the authentication step on a call whose token
//!   verified before (the verified-token cache's hit: a lookup and a
//!   principal clone).
//!
//! `cargo bench -p prism-gateway --bench quota -- --measurement-time 3 --warm-up-time 1`

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{Criterion, criterion_group, criterion_main};
use prism_gateway::auth::Principal;
use prism_gateway::call::{Access, Call, Request};
use prism_gateway::layers::Step;
use prism_gateway::layers::authz_allowed;
use prism_gateway::quota::{Cost, QuotaRegistry, Tracker};
use prism_gateway::snapshot::Snapshot;
use prism_proto::control::{
    Access as NsAccess, AccessLevel, Change, Delta, Grant, Namespace, NamespaceSpec, NamespaceStatus, QuotaSet, Tenant,
    TenantState, change,
};

const NS: &str = "acme/orders";

fn quotas() -> QuotaSet {
    // Limits that apply (every check runs) but are never reached.
    QuotaSet {
        requests_per_second: Some(1 << 40),
        read_bytes_per_second: Some(1 << 50),
        write_bytes_per_second: Some(1 << 50),
        concurrent_requests: Some(1 << 20),
        ..Default::default()
    }
}

fn snapshot() -> Snapshot {
    let tenant = Tenant {
        id: "acme".into(),
        state: TenantState::Active as i32,
        quotas: Some(quotas()),
        admins: vec!["alice".into()],
        ..Default::default()
    };
    let access = NsAccess {
        owners: vec!["olivia".into()],
        consumers: vec![
            Grant { principal: "svc-a".into(), level: AccessLevel::Read as i32 },
            Grant { principal: "svc-b".into(), level: AccessLevel::ReadWrite as i32 },
        ],
    };
    let ns = Namespace {
        name: NS.into(),
        create_revision: 1,
        status: NamespaceStatus::Active as i32,
        shard_id: "shard-0".into(),
        spec: Some(NamespaceSpec { quotas: Some(quotas()), access: Some(Box::new(access)), ..Default::default() }),
        ..Default::default()
    };
    let changes = vec![change::Change::Tenant(tenant), change::Change::Namespace(ns)];
    let delta = Delta {
        revision: 1,
        changes: changes.into_iter().map(|c| Change { change: Some(c) }).collect(),
        commit_time: None,
    };
    Snapshot::default().apply(&delta).0
}

fn benches(c: &mut Criterion) {
    let snap = snapshot();
    let Some(entry) = snap.namespace(NS).cloned() else { return };
    let plain: HashMap<String, Arc<()>> =
        (0..1000).map(|i| (format!("acme/ns-{i}"), Arc::new(()))).chain([(NS.to_owned(), Arc::new(()))]).collect();
    let counter = AtomicU64::new(0);

    let mut group = c.benchmark_group("per_request");
    group.bench_function("baseline_std_hashmap_lookup", |b| {
        b.iter(|| black_box(plain.get(black_box(NS)).map(Arc::as_ptr)))
    });
    group.bench_function("baseline_atomic_fetch_add", |b| b.iter(|| black_box(counter.fetch_add(1, Ordering::AcqRel))));

    let clock = prism_gateway::quota::Clock::default();
    group.bench_function("clock_now_ms", |b| b.iter(|| black_box(clock.now_ms())));

    let admin = Principal { sub: "root".into(), tenant: None, roles: vec!["admin".into()] };
    let consumer = Principal { sub: "svc-b".into(), tenant: Some("acme".into()), roles: vec![] };
    group.bench_function("authorize_admin", |b| {
        b.iter(|| black_box(authz_allowed(&snap, black_box(&admin), &entry, Access::Write)))
    });
    group.bench_function("authorize_consumer", |b| {
        b.iter(|| black_box(authz_allowed(&snap, black_box(&consumer), &entry, Access::Write)))
    });

    let registry = QuotaRegistry::default();
    group.bench_function("quota_admit", |b| {
        b.iter(|| {
            let tenant_quotas = snap.tenant(entry.ns.tenant()).and_then(|t| t.quotas.as_ref());
            black_box(registry.admit(entry.admitting(), tenant_quotas, Access::Read, Cost::default()).is_ok())
        })
    });
    group.bench_function("quota_admit_and_charge_read", |b| {
        b.iter(|| {
            let tenant_quotas = snap.tenant(entry.ns.tenant()).and_then(|t| t.quotas.as_ref());
            if let Ok(a) = registry.admit(entry.admitting(), tenant_quotas, Access::Read, Cost::default()) {
                a.charge_read(black_box(512));
            }
        })
    });
    let secret = "a-secret-of-the-bench";
    let auth_config = prism_gateway::config::AuthConfig { hs256_secret: Some(secret.into()), ..Default::default() };
    let claims = prism_gateway::auth::Claims::new("svc-b", Some("acme"), &["reader"], 3600);
    if let Ok(token) = prism_gateway::auth::sign_hs256(secret, &claims) {
        let header = format!("Bearer {token}");
        let authenticator = prism_gateway::auth::Authenticator::new(&auth_config);
        group.bench_function("authenticate_verify_hs256", |b| {
            b.iter(|| black_box(authenticator.authenticate(Some(black_box(header.as_str()))).is_ok()))
        });
        let step = prism_gateway::layers::Authenticate::new(&auth_config, Default::default());
        let mut call = Call::new(Request::Get(Default::default()), Some(header.clone()));
        group.bench_function("authenticate_cached", |b| {
            b.iter(|| {
                call.principal = None;
                black_box(step.check(black_box(&mut call)).is_ok())
            })
        });
    }
    // Its parts, to see where the time goes.
    let slot = prism_gateway::quota::Window::slot(clock.now_ms());
    group.bench_function("part_tracker_lookup", |b| {
        b.iter(|| black_box(registry.tracker(prism_gateway::quota::Subject::Namespace(black_box(NS))).is_some()))
    });
    let tracker = Tracker::new(1, 1.0);
    group.bench_function("part_window_usage", |b| b.iter(|| black_box(tracker.window().usage(black_box(slot)))));
    group.bench_function("part_window_add", |b| b.iter(|| tracker.window().add(black_box(slot), 1, 0, 0)));
    group.finish();

    // The memory figure for docs/benchmarks.md.
    let tracker = std::mem::size_of::<Tracker>();
    let arc = tracker + 2 * std::mem::size_of::<usize>();
    println!("tracker: size_of {tracker} B, heap 0 B, in its Arc {arc} B");
}

criterion_group!(quota, benches);
criterion_main!(quota);
