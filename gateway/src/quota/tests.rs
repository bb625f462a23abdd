//! Unit tests of the quota engine on hand-made snapshots: rates, bytes and
//! concurrency of namespaces and tenants, shares, the sweep of trackers.

use std::sync::Arc;

use prism_proto::control::{
    Change, Delta, Namespace, NamespaceSpec, NamespaceStatus, QuotaSet, Tenant, TenantState, change,
};

use super::*;
use crate::snapshot::{NamespaceEntry, Snapshot};

fn quotas(rps: i64, read: i64, write: i64, concurrent: i64) -> QuotaSet {
    QuotaSet {
        requests_per_second: Some(rps),
        read_bytes_per_second: Some(read),
        write_bytes_per_second: Some(write),
        concurrent_requests: Some(concurrent),
        ..Default::default()
    }
}

fn snapshot(namespaces: &[(&str, u64, QuotaSet)], tenants: &[&str]) -> Snapshot {
    let mut changes: Vec<_> = tenants
        .iter()
        .map(|t| {
            change::Change::Tenant(Tenant { id: (*t).into(), state: TenantState::Active as i32, ..Default::default() })
        })
        .collect();
    changes.extend(namespaces.iter().map(|(name, create, q)| {
        change::Change::Namespace(Namespace {
            name: (*name).into(),
            create_revision: *create,
            status: NamespaceStatus::Active as i32,
            spec: Some(NamespaceSpec { quotas: Some(*q), ..Default::default() }),
            ..Default::default()
        })
    }));
    let delta = Delta {
        revision: 1,
        changes: changes.into_iter().map(|c| Change { change: Some(c) }).collect(),
        commit_time: None,
    };
    Snapshot::default().apply(&delta).0
}

fn entry(s: &Snapshot, name: &str) -> Arc<NamespaceEntry> {
    s.namespace(name).cloned().unwrap_or_else(|| panic!("{name} in the snapshot"))
}

/// Admits a request to `e` as the quota layer does, with the tracker
/// slot of its entry.
fn admit(
    registry: &QuotaRegistry,
    e: &NamespaceEntry,
    tenant: Option<&QuotaSet>,
    access: Access,
    write_bytes: u64,
) -> Result<Admission, GatewayError> {
    registry.admit(e.admitting(), tenant, access, Cost { write_bytes, ..Cost::default() })
}

fn refusal(r: Result<Admission, GatewayError>) -> (String, String, Duration) {
    match r {
        Err(GatewayError::QuotaExceeded { subject, description, retry_after: Some(after), .. }) => {
            (subject, description, after)
        }
        other => panic!("expected a quota refusal, got {other:?}"),
    }
}

#[test]
fn a_tenant_tracker_fits_in_256_bytes() {
    // The tracker lives in one Arc allocation (two counters) and owns no
    // heap but a TimeSeries writer's event window; docs/benchmarks.md
    // records the figure with the registry entry.
    let arc_bytes = std::mem::size_of::<Tracker>() + 2 * std::mem::size_of::<usize>();
    println!("a tracker: {} bytes, {arc_bytes} in its Arc", std::mem::size_of::<Tracker>());
    assert!(arc_bytes <= 256, "tracker takes {arc_bytes} bytes");
}

#[test]
fn the_namespace_rate_is_enforced_with_subject_limit_and_retry() {
    let s = snapshot(&[("acme/orders", 1, quotas(5, -1, -1, -1))], &["acme"]);
    let e = entry(&s, "acme/orders");
    let registry = QuotaRegistry::default();
    for _ in 0..5 {
        assert!(admit(&registry, &e, None, Access::Write, 0).is_ok());
    }
    let (subject, description, after) = refusal(admit(&registry, &e, None, Access::Write, 0));
    assert_eq!(subject, "namespace:acme/orders");
    assert!(description.contains("requests_per_second") && description.contains('5'), "{description}");
    assert!(after > Duration::ZERO && after <= Duration::from_millis(WINDOW_MS), "{after:?}");
}

#[test]
fn the_tenant_quota_spans_its_namespaces_and_a_refusal_charges_nothing() {
    let s = snapshot(&[("acme/a", 1, quotas(-1, -1, -1, -1)), ("acme/b", 1, quotas(-1, -1, -1, -1))], &["acme"]);
    let tenant = quotas(4, -1, -1, -1);
    let registry = QuotaRegistry::default();
    for name in ["acme/a", "acme/b", "acme/a", "acme/b"] {
        assert!(admit(&registry, &entry(&s, name), Some(&tenant), Access::Read, 0).is_ok());
    }
    let (subject, _, _) = refusal(admit(&registry, &entry(&s, "acme/a"), Some(&tenant), Access::Read, 0));
    assert_eq!(subject, "tenant:acme");
    let slot = Window::slot(registry.clock().now_ms());
    let a = registry.tracker(Subject::Namespace("acme/a")).map(|t| t.window().usage(slot).requests);
    assert_eq!(a, Some(2), "the refused request was charged to its namespace");
}

#[test]
fn write_bytes_are_charged_up_front_and_one_oversize_write_passes_an_empty_window() {
    let s = snapshot(&[("acme/w", 1, quotas(-1, -1, 1000, -1))], &["acme"]);
    let e = entry(&s, "acme/w");
    let registry = QuotaRegistry::default();
    assert!(admit(&registry, &e, None, Access::Write, 600).is_ok());
    let (_, description, _) = refusal(admit(&registry, &e, None, Access::Write, 600));
    assert!(description.contains("write_bytes_per_second quota of 1000"), "{description}");
    // Reads and deletes (no bytes) are not held back by the write rate.
    assert!(admit(&registry, &e, None, Access::Write, 0).is_ok());
    assert!(admit(&registry, &e, None, Access::Read, 0).is_ok());
    // A snapshot entry caches its gateway's tracker: another registry
    // needs entries of its own.
    let s = snapshot(&[("acme/w", 1, quotas(-1, -1, 1000, -1))], &["acme"]);
    let e = entry(&s, "acme/w");
    let other = QuotaRegistry::default();
    assert!(admit(&other, &e, None, Access::Write, 5000).is_ok(), "an empty window admits one oversize write");
    assert!(admit(&other, &e, None, Access::Write, 1).is_err());
}

#[test]
fn read_bytes_are_charged_after_the_response_and_then_refuse() {
    let s = snapshot(&[("acme/r", 1, quotas(-1, 100, -1, -1))], &["acme"]);
    let e = entry(&s, "acme/r");
    let registry = QuotaRegistry::default();
    let first = admit(&registry, &e, None, Access::Read, 0);
    let second = admit(&registry, &e, None, Access::Read, 0);
    // Both admitted: nothing was read yet. Their responses overshoot.
    first.as_ref().map(|a| a.charge_read(80)).ok();
    second.as_ref().map(|a| a.charge_read(80)).ok();
    assert!(first.is_ok() && second.is_ok());
    let (_, description, _) = refusal(admit(&registry, &e, None, Access::Read, 0));
    assert!(description.contains("read_bytes_per_second quota of 100"), "{description}");
    assert!(admit(&registry, &e, None, Access::Write, 0).is_ok(), "writes do not wait for reads");
}

#[test]
fn concurrency_is_held_by_the_admission() {
    let s = snapshot(&[("acme/c", 1, quotas(-1, -1, -1, 2))], &["acme"]);
    let e = entry(&s, "acme/c");
    let tenant = quotas(-1, -1, -1, -1);
    let registry = QuotaRegistry::default();
    let a = admit(&registry, &e, Some(&tenant), Access::Read, 0);
    let b = admit(&registry, &e, Some(&tenant), Access::Read, 0);
    assert!(a.is_ok() && b.is_ok());
    let (subject, description, after) = refusal(admit(&registry, &e, Some(&tenant), Access::Read, 0));
    assert_eq!((subject.as_str(), after), ("namespace:acme/c", CONCURRENCY_RETRY));
    assert!(description.contains("concurrent_requests quota of 2"), "{description}");
    drop(a);
    assert!(admit(&registry, &e, Some(&tenant), Access::Read, 0).is_ok());
    drop(b);
    // A tenant refusal gives back the namespace's slot it had taken.
    let tight = quotas(-1, -1, -1, 0);
    assert!(admit(&registry, &e, Some(&tight), Access::Read, 0).is_err());
    assert_eq!(registry.tracker(Subject::Namespace("acme/c")).map(|t| t.concurrent()), Some(0));
}

#[test]
fn a_share_divides_the_limit_and_survives_the_tracker() {
    let s = snapshot(&[("acme/s", 1, quotas(10, -1, -1, -1))], &["acme"]);
    let e = entry(&s, "acme/s");
    let registry = QuotaRegistry::default();
    registry.set_share(Subject::Namespace("acme/s"), 0.5);
    for _ in 0..5 {
        assert!(admit(&registry, &e, None, Access::Read, 0).is_ok());
    }
    let (_, description, _) = refusal(admit(&registry, &e, None, Access::Read, 0));
    assert!(description.contains("quota of 10 exceeded (5 enforced on this gateway)"), "{description}");
    // Shares set before a tracker exists, and defaults, apply on creation.
    registry.set_default_share(Kind::Tenant, 0.25);
    assert_eq!(registry.tracker(Subject::Tenant("acme")).map(|t| t.share()), Some(0.25));
    assert_eq!(registry.tracker(Subject::Namespace("acme/s")).map(|t| t.effective(10)), Some(5));
    let t = Tracker::new(0, 0.3);
    assert_eq!((t.effective(10), t.effective(UNLIMITED)), (3, UNLIMITED));
    assert_eq!(Tracker::new(0, f64::NAN).share(), 1.0);
}

#[test]
fn a_namespace_one_instance_serves_alone_keeps_its_whole_limit_whatever_the_replicas() {
    let s = snapshot(&[("acme/shared", 1, quotas(10, -1, -1, -1))], &["acme"]);
    let owned = Namespace {
        name: "acme/owned".into(),
        create_revision: 1,
        status: NamespaceStatus::Active as i32,
        spec: Some(NamespaceSpec { quotas: Some(quotas(10, -1, -1, -1)), ..Default::default() }),
        owner_store_id: "store-1".into(),
        ..Default::default()
    };
    let delta = Delta {
        revision: 2,
        changes: vec![Change { change: Some(change::Change::Namespace(owned)) }],
        commit_time: None,
    };
    let s = s.apply(&delta).0;
    let registry = QuotaRegistry::default();
    // Two replicas: namespaces get half, except the one served alone.
    registry.set_default_share(Kind::Namespace, 0.5);
    drop(admit(&registry, &entry(&s, "acme/shared"), None, Access::Read, 0));
    drop(admit(&registry, &entry(&s, "acme/owned"), None, Access::Read, 0));
    registry.set_default_share(Kind::Namespace, 1.0 / 3.0);
    let effective = |name| registry.tracker(Subject::Namespace(name)).map(|t| t.effective(10));
    assert_eq!((effective("acme/shared"), effective("acme/owned")), (Some(4), Some(10)));
}

#[test]
fn sweep_drops_trackers_of_gone_subjects_and_new_incarnations() {
    let q = quotas(-1, -1, -1, -1);
    let s1 = snapshot(&[("acme/x", 1, q), ("acme/y", 1, q)], &["acme"]);
    let registry = QuotaRegistry::default();
    let held = admit(&registry, &entry(&s1, "acme/x"), None, Access::Read, 0);
    assert!(held.is_ok());
    drop(admit(&registry, &entry(&s1, "acme/y"), None, Access::Read, 0));
    assert_eq!(registry.len(), (1, 2));
    assert_eq!(registry.sweep(&s1), 0, "active trackers stay");
    // acme/y is gone and acme/x is a new incarnation.
    let s2 = snapshot(&[("acme/x", 7, q)], &["acme"]);
    assert_eq!(registry.sweep(&s2), 2);
    assert_eq!(registry.len(), (1, 0));
    // The new incarnation gets a fresh tracker on its first request.
    assert!(admit(&registry, &entry(&s2, "acme/x"), None, Access::Read, 0).is_ok());
    assert_eq!(registry.tracker(Subject::Namespace("acme/x")).map(|t| t.incarnation), Some(7));
    // A tenant's tracker stays while one of its namespaces' does.
    assert_eq!(registry.sweep(&snapshot(&[("acme/x", 7, q)], &[])), 0);
    assert_eq!(registry.sweep(&snapshot(&[], &[])), 2);
    assert!(registry.is_empty());
}

#[test]
fn idle_means_nothing_in_flight_and_nothing_counted_for_a_minute() {
    let t = Tracker::new(0, 1.0);
    assert!(t.idle_since(5));
    t.window().add(1000, 1, 0, 0);
    assert!(!t.idle_since(1000 + 10));
    assert!(t.idle_since(1000 + (IDLE_MS / BUCKET_MS) as u32));
    assert!(t.try_enter(1));
    assert!(!t.idle_since(u32::MAX / 2));
}

fn event_quotas(events: i64, event_bytes: i64, tails: i64) -> QuotaSet {
    QuotaSet {
        events_per_second: Some(events),
        event_bytes_per_second: Some(event_bytes),
        open_tails: Some(tails),
        ..Default::default()
    }
}

/// A TimeSeries write of `events` events of `bytes` bytes in all.
fn write_events(events: u64, bytes: u64) -> Cost {
    Cost { write_bytes: bytes, events, tail: false }
}

#[test]
fn events_count_one_by_one_and_their_bytes_too() {
    let s = snapshot(&[("acme/ts", 1, event_quotas(100, 1_000, -1))], &["acme"]);
    let (registry, e) = (QuotaRegistry::default(), entry(&s, "acme/ts"));
    // A write of 60 events is one request but 60 events: two of them are
    // 120 of 100.
    assert!(registry.admit(e.admitting(), None, Access::Write, write_events(60, 60)).is_ok());
    let (subject, description, after) =
        refusal(registry.admit(e.admitting(), None, Access::Write, write_events(60, 60)));
    assert_eq!(subject, "namespace:acme/ts");
    assert!(description.contains("events_per_second quota of 100"), "{description}");
    assert!(after > Duration::ZERO && after <= Duration::from_secs(1), "{after:?}");
    // 40 more fit exactly.
    assert!(registry.admit(e.admitting(), None, Access::Write, write_events(40, 40)).is_ok());
    // A write larger than the whole limit passes only an empty window.
    let other = snapshot(&[("acme/big", 1, event_quotas(100, 1_000, -1))], &["acme"]);
    let big = entry(&other, "acme/big");
    assert!(registry.admit(big.admitting(), None, Access::Write, write_events(500, 500)).is_ok());
    assert!(registry.admit(big.admitting(), None, Access::Write, write_events(1, 1)).is_err());
    // Bytes: 1 000 per second.
    let bytes = snapshot(&[("acme/bytes", 1, event_quotas(-1, 1_000, -1))], &["acme"]);
    let b = entry(&bytes, "acme/bytes");
    assert!(registry.admit(b.admitting(), None, Access::Write, write_events(1, 900)).is_ok());
    let (_, description, _) = refusal(registry.admit(b.admitting(), None, Access::Write, write_events(1, 200)));
    assert!(description.contains("event_bytes_per_second quota of 1000"), "{description}");
    // KeyValue writes count no events: the window is never made.
    let kv = snapshot(&[("acme/kv", 1, event_quotas(1, 1, -1))], &["acme"]);
    let k = entry(&kv, "acme/kv");
    for _ in 0..3 {
        assert!(admit(&registry, &k, None, Access::Write, 10).is_ok());
    }
    assert!(registry.tracker(Subject::Namespace("acme/kv")).is_some_and(|t| t.events().is_none()));
}

#[test]
fn the_tenant_counts_the_events_of_all_its_namespaces() {
    let s = snapshot(&[("acme/a", 1, event_quotas(-1, -1, -1)), ("acme/b", 2, event_quotas(-1, -1, -1))], &["acme"]);
    let registry = QuotaRegistry::default();
    let tenant = event_quotas(100, -1, -1);
    assert!(
        registry.admit(entry(&s, "acme/a").admitting(), Some(&tenant), Access::Write, write_events(70, 70)).is_ok()
    );
    let (subject, _, _) =
        refusal(registry.admit(entry(&s, "acme/b").admitting(), Some(&tenant), Access::Write, write_events(70, 70)));
    assert_eq!(subject, "tenant:acme");
    // The refusal charged nothing to the namespace.
    let b = registry.tracker(Subject::Namespace("acme/b"));
    assert!(
        b.is_none_or(|t| t.events().is_none_or(|w| w.usage(Window::slot(registry.clock().now_ms())).requests == 0))
    );
}

#[test]
fn open_tails_are_held_until_the_tail_ends() {
    let s = snapshot(&[("acme/ts", 1, event_quotas(-1, -1, 2))], &["acme"]);
    let (registry, e) = (QuotaRegistry::default(), entry(&s, "acme/ts"));
    let tail = Cost { tail: true, ..Cost::default() };
    let open = |r: Result<Admission, GatewayError>| r.map(|mut a| a.take_tail());
    let first = open(registry.admit(e.admitting(), None, Access::Read, tail)).expect("first tail");
    let second = open(registry.admit(e.admitting(), None, Access::Read, tail)).expect("second tail");
    let (subject, description, after) = refusal(registry.admit(e.admitting(), None, Access::Read, tail));
    assert_eq!(subject, "namespace:acme/ts");
    assert!(description.contains("open_tails quota of 2"), "{description}");
    assert_eq!(after, TAIL_RETRY);
    let tracker = registry.tracker(Subject::Namespace("acme/ts")).expect("tracker");
    assert_eq!(tracker.tails(), 2);
    drop(first);
    assert_eq!(tracker.tails(), 1);
    let third = open(registry.admit(e.admitting(), None, Access::Read, tail)).expect("a closed tail frees its slot");
    // The tenant's limit applies across its namespaces, and a refusal by
    // the tenant leaves the namespace's count as it was.
    let tenant = event_quotas(-1, -1, 2);
    let other = snapshot(&[("acme/other", 3, event_quotas(-1, -1, -1))], &["acme"]);
    let o = entry(&other, "acme/other");
    let (subject, _, _) = refusal(registry.admit(o.admitting(), Some(&tenant), Access::Read, tail));
    assert_eq!(subject, "tenant:acme");
    assert_eq!(registry.tracker(Subject::Namespace("acme/other")).map(|t| t.tails()), Some(0));
    // An idle tracker with a tail open is not swept.
    assert!(!tracker.idle_since(Window::slot(registry.clock().now_ms()) + 10_000));
    drop((second, third));
    assert_eq!(tracker.tails(), 0);
    assert_eq!(registry.tracker(Subject::Tenant("acme")).map(|t| t.tails()), Some(0));
}
