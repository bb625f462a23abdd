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
    registry.admit(e.admitting(), tenant, access, write_bytes)
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
    // heap; docs/benchmarks.md records the figure with the registry entry.
    let arc_bytes = std::mem::size_of::<Tracker>() + 2 * std::mem::size_of::<usize>();
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
