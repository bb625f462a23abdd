//! Explicit conversions of control-plane messages to JSON (prost types do
//! not derive serde): proto field names, enums as their short names
//! (`ACTIVE`, `KEY_VALUE`), timestamps as RFC 3339, durations as humantime
//! strings (`1h 30m`).

use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use prism_proto::control::{
    Abstraction, AccessLevel, AuditEvent, Backend, BackendConfig, Capacity, Change, Consistency, Delta,
    ListAuditEventsResponse, ListNamespacesResponse, ListTenantsResponse, Migration, MigrationStep, Namespace,
    NamespaceSpec, NamespaceStatus, Policies, QuotaProfile, QuotaSet, Shard, SnapshotChunk, Tenant, TenantState,
    WatchResponse, change, watch_response,
};
use serde_json::{Map, Value, json};

/// The short name of a protobuf enum value (its name without the type
/// prefix), or `None` for a number this build does not know.
fn short(name: Option<&'static str>, prefix: &str) -> Option<&'static str> {
    name.map(|n| n.strip_prefix(prefix).unwrap_or(n))
}

/// Short enum names, for JSON and tables. An unknown number (a newer
/// server) prints as the number.
pub mod names {
    use super::*;

    fn or_number(name: Option<&'static str>, raw: i32) -> String {
        name.map_or_else(|| raw.to_string(), str::to_owned)
    }

    pub fn tenant_state(v: i32) -> String {
        or_number(short(TenantState::try_from(v).ok().map(|e| e.as_str_name()), "TENANT_STATE_"), v)
    }

    pub fn namespace_status(v: i32) -> String {
        or_number(short(NamespaceStatus::try_from(v).ok().map(|e| e.as_str_name()), "NAMESPACE_STATUS_"), v)
    }

    pub fn abstraction(v: i32) -> String {
        or_number(short(Abstraction::try_from(v).ok().map(|e| e.as_str_name()), "ABSTRACTION_"), v)
    }

    pub fn backend(v: i32) -> String {
        or_number(short(Backend::try_from(v).ok().map(|e| e.as_str_name()), "BACKEND_"), v)
    }

    pub fn consistency(v: i32) -> String {
        or_number(short(Consistency::try_from(v).ok().map(|e| e.as_str_name()), "CONSISTENCY_"), v)
    }

    pub fn access_level(v: i32) -> String {
        or_number(short(AccessLevel::try_from(v).ok().map(|e| e.as_str_name()), "ACCESS_LEVEL_"), v)
    }

    pub fn migration_step(v: i32) -> String {
        or_number(short(MigrationStep::try_from(v).ok().map(|e| e.as_str_name()), "MIGRATION_STEP_"), v)
    }

    pub fn quota_profile(v: i32) -> String {
        or_number(short(QuotaProfile::try_from(v).ok().map(|e| e.as_str_name()), "QUOTA_PROFILE_"), v)
    }
}

/// An enum name as JSON: a string when known, else the number.
fn enum_value(name: String, raw: i32) -> Value {
    if name == raw.to_string() { Value::from(raw) } else { Value::String(name) }
}

/// Latest second humantime can print (the end of year 9999).
const MAX_RFC3339_SECONDS: i64 = 253_402_300_799;

/// RFC 3339, e.g. `2024-05-01T12:00:00.123456789Z`; `None` when the time
/// is outside 1970..=9999 (humantime cannot print it).
pub fn rfc3339(ts: &prost_types::Timestamp, precise: bool) -> Option<String> {
    if !(0..=MAX_RFC3339_SECONDS).contains(&ts.seconds) || !(0..1_000_000_000).contains(&ts.nanos) {
        return None;
    }
    // Both are in range, so the casts are lossless.
    let time = UNIX_EPOCH + Duration::new(ts.seconds as u64, ts.nanos as u32);
    let mut out = String::new();
    let written = if precise {
        write!(out, "{}", humantime::format_rfc3339(time))
    } else {
        write!(out, "{}", humantime::format_rfc3339_seconds(time))
    };
    written.ok().map(|()| out)
}

/// A timestamp as JSON: RFC 3339, `null` when unset, or the raw fields
/// when it cannot be printed as a date.
pub fn timestamp(ts: Option<&prost_types::Timestamp>) -> Value {
    match ts {
        None => Value::Null,
        Some(t) => rfc3339(t, true).map_or_else(|| json!({ "seconds": t.seconds, "nanos": t.nanos }), Value::String),
    }
}

/// A duration as humantime text (`7days`, `1m 30s`); `None` if negative.
pub fn humantime_duration(d: &prost_types::Duration) -> Option<String> {
    Duration::try_from(*d).ok().map(|d| humantime::format_duration(d).to_string())
}

/// A duration as JSON: humantime text, `null` when unset, or the raw
/// fields when negative.
pub fn duration(d: Option<&prost_types::Duration>) -> Value {
    match d {
        None => Value::Null,
        Some(d) => {
            humantime_duration(d).map_or_else(|| json!({ "seconds": d.seconds, "nanos": d.nanos }), Value::String)
        }
    }
}

pub fn quotas(q: &QuotaSet) -> Value {
    let mut m = Map::new();
    m.insert("profile".into(), enum_value(names::quota_profile(q.profile), q.profile));
    for (name, value) in prism_proto::quotas::fields(q) {
        m.insert(name.into(), value.map_or(Value::Null, Value::from));
    }
    Value::Object(m)
}

pub fn tenant(t: &Tenant) -> Value {
    json!({
        "id": t.id,
        "display_name": t.display_name,
        "quotas": t.quotas.as_ref().map_or(Value::Null, quotas),
        "state": enum_value(names::tenant_state(t.state), t.state),
        "state_reason": t.state_reason,
        "admins": t.admins,
        "revision": t.revision,
        "create_time": timestamp(t.create_time.as_ref()),
        "update_time": timestamp(t.update_time.as_ref()),
    })
}

pub fn backend_config(c: &BackendConfig) -> Value {
    crate::backend_settings::to_json(c)
}

pub fn capacity(c: &Capacity) -> Value {
    json!({
        "estimated_read_rps": c.estimated_read_rps,
        "estimated_write_rps": c.estimated_write_rps,
        "estimated_data_size_bytes": c.estimated_data_size_bytes,
    })
}

pub fn policies(p: &Policies) -> Value {
    json!({
        "retention": duration(p.retention.as_ref()),
        "consistency": enum_value(names::consistency(p.consistency), p.consistency),
        "cache_enabled": p.cache_enabled,
        "cache_ttl": duration(p.cache_ttl.as_ref()),
        "default_item_ttl": duration(p.default_item_ttl.as_ref()),
        "max_item_size_bytes": p.max_item_size_bytes,
        "accept_limit": duration(p.accept_limit.as_ref()),
        "accept_loss": p.accept_loss,
        "data_access_audit_rate": p.data_access_audit_rate,
    })
}

pub fn spec(s: &NamespaceSpec) -> Value {
    json!({
        "abstraction": enum_value(names::abstraction(s.abstraction), s.abstraction),
        "backend": enum_value(names::backend(s.backend), s.backend),
        "backend_config": s.backend_config.as_deref().map_or(Value::Null, backend_config),
        "capacity": s.capacity.as_deref().map_or(Value::Null, capacity),
        "policies": s.policies.as_deref().map_or(Value::Null, policies),
        "access": s.access.as_deref().map_or(Value::Null, |a| json!({
            "owners": a.owners,
            "consumers": a.consumers.iter().map(|g| json!({
                "principal": g.principal,
                "level": enum_value(names::access_level(g.level), g.level),
            })).collect::<Vec<_>>(),
        })),
        "quotas": s.quotas.as_ref().map_or(Value::Null, quotas),
        "placement": s.placement.as_deref().map_or(Value::Null, |p| json!({
            "pinned_shard": p.pinned_shard,
            "dedicated": p.dedicated,
        })),
    })
}

pub fn namespace(n: &Namespace) -> Value {
    json!({
        "name": n.name,
        "spec": n.spec.as_ref().map_or(Value::Null, spec),
        "revision": n.revision,
        "create_revision": n.create_revision,
        "shard_id": n.shard_id,
        "owner_store_id": n.owner_store_id,
        "status": enum_value(names::namespace_status(n.status), n.status),
        "status_reason": n.status_reason,
        "backend_settings": n.backend_settings.iter().map(|s| json!({
            "name": s.name,
            "value": s.value,
            "detail": s.detail,
        })).collect::<Vec<_>>(),
        "create_time": timestamp(n.create_time.as_ref()),
        "update_time": timestamp(n.update_time.as_ref()),
    })
}

/// A running migration (`Namespace.migration`, `GetMigration`).
pub fn migration(m: &Migration) -> Value {
    let target = m.target.clone().unwrap_or_default();
    let p = m.progress.clone().unwrap_or_default();
    json!({
        "id": m.id,
        "step": enum_value(names::migration_step(m.step), m.step),
        "reason": m.reason,
        "target": {
            "backend": enum_value(names::backend(target.backend), target.backend),
            "backend_config": target.backend_config.as_ref().map_or(Value::Null, backend_config),
            "pinned_shard": target.pinned_shard,
        },
        "target_shard_id": m.target_shard_id,
        "target_owner_store_id": m.target_owner_store_id,
        "principal": m.principal,
        "start_time": timestamp(m.start_time.as_ref()),
        "step_time": timestamp(m.step_time.as_ref()),
        "progress": {
            "records_copied": p.records_copied,
            "bytes_copied": p.bytes_copied,
            "shadow_reads": p.shadow_reads,
            "shadow_mismatches": p.shadow_mismatches,
            "records_verified": p.records_verified,
            "records_differing": p.records_differing,
            "update_time": timestamp(p.update_time.as_ref()),
        },
        "reported": m.reported,
        "runner_instance_id": m.runner_instance_id,
        "shadow_read_fraction": m.shadow_read_fraction,
        "verify_window": duration(m.verify_window.as_ref()),
        "cleanup_after": timestamp(m.cleanup_after.as_ref()),
    })
}

pub fn shard(s: &Shard) -> Value {
    json!({
        "shard_id": s.shard_id,
        "instances": s.instances.iter().map(|i| json!({
            "instance_id": i.instance_id,
            "endpoint": i.endpoint,
            "store_id": i.store_id,
            "lease_expire_time": timestamp(i.lease_expire_time.as_ref()),
            "register_time": timestamp(i.register_time.as_ref()),
        })).collect::<Vec<_>>(),
    })
}

pub fn audit_event(e: &AuditEvent) -> Value {
    json!({
        "sequence": e.sequence,
        "time": timestamp(e.time.as_ref()),
        "principal": e.principal,
        "action": e.action,
        "tenant_id": e.tenant_id,
        "target": e.target,
        "result": e.result,
        "detail": e.detail,
        "revision": e.revision,
        "client_address": e.client_address,
    })
}

pub fn tenants(r: &ListTenantsResponse) -> Value {
    json!({
        "tenants": r.tenants.iter().map(tenant).collect::<Vec<_>>(),
        "next_page_token": r.next_page_token,
    })
}

pub fn namespaces(r: &ListNamespacesResponse) -> Value {
    json!({
        "namespaces": r.namespaces.iter().map(namespace).collect::<Vec<_>>(),
        "next_page_token": r.next_page_token,
    })
}

pub fn audit_events(r: &ListAuditEventsResponse) -> Value {
    json!({
        "events": r.events.iter().map(audit_event).collect::<Vec<_>>(),
        "next_page_token": r.next_page_token,
    })
}

pub fn snapshot_chunk(s: &SnapshotChunk) -> Value {
    json!({
        "revision": s.revision,
        "tenants": s.tenants.iter().map(tenant).collect::<Vec<_>>(),
        "namespaces": s.namespaces.iter().map(namespace).collect::<Vec<_>>(),
        "shards": s.shards.iter().map(shard).collect::<Vec<_>>(),
        "last": s.last,
    })
}

pub fn change(c: &Change) -> Value {
    match &c.change {
        None => Value::Null,
        Some(change::Change::Tenant(t)) => json!({ "tenant": tenant(t) }),
        Some(change::Change::Namespace(n)) => json!({ "namespace": namespace(n) }),
        Some(change::Change::Shard(s)) => json!({ "shard": shard(s) }),
        Some(change::Change::ShardRemoved(id)) => json!({ "shard_removed": id }),
    }
}

pub fn delta(d: &Delta) -> Value {
    json!({
        "revision": d.revision,
        "changes": d.changes.iter().map(change).collect::<Vec<_>>(),
        "commit_time": timestamp(d.commit_time.as_ref()),
    })
}

/// One Watch message: `{"snapshot": …}` or `{"delta": …}`.
pub fn watch_response(w: &WatchResponse) -> Value {
    match &w.event {
        None => json!({}),
        Some(watch_response::Event::Snapshot(s)) => json!({ "snapshot": snapshot_chunk(s) }),
        Some(watch_response::Event::Delta(d)) => json!({ "delta": delta(d) }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_print_short_names_and_unknown_numbers() {
        assert_eq!(names::tenant_state(TenantState::Suspended as i32), "SUSPENDED");
        assert_eq!(names::abstraction(Abstraction::KeyValue as i32), "KEY_VALUE");
        assert_eq!(enum_value(names::backend(99), 99), json!(99));
        assert_eq!(enum_value(names::backend(1), 1), json!("EMBEDDED"));
    }

    #[test]
    fn times_print_as_rfc3339_or_raw_when_out_of_range() {
        let t = prost_types::Timestamp { seconds: 1_700_000_000, nanos: 0 };
        assert_eq!(timestamp(Some(&t)), json!("2023-11-14T22:13:20Z"));
        let far = prost_types::Timestamp { seconds: i64::MAX, nanos: 0 };
        assert_eq!(timestamp(Some(&far)), json!({ "seconds": i64::MAX, "nanos": 0 }));
        let before = prost_types::Timestamp { seconds: -1, nanos: 0 };
        assert_eq!(timestamp(Some(&before)), json!({ "seconds": -1, "nanos": 0 }));
        let d = prost_types::Duration { seconds: 5400, nanos: 0 };
        assert_eq!(duration(Some(&d)), json!("1h 30m"));
        assert_eq!(duration(None), Value::Null);
    }
}
