//! Quota profiles and the resolution of a requested `QuotaSet` into a full
//! one: the profile fills the fields a request leaves unset.

use crate::control::{QuotaProfile, QuotaSet};

/// Means "no limit" in every quota field.
pub const UNLIMITED: i64 = -1;

const KIB: i64 = 1024;
const MIB: i64 = 1024 * KIB;
const GIB: i64 = 1024 * MIB;
const DAY: i64 = 86_400;

/// The values of a profile, every field set.
///
/// The StreamBus quotas (seeds/004) follow its tiers: events per second,
/// event bytes per second, open tails (its consumers), partitions per
/// namespace and retention (7 days free, 30 days pro, unlimited for
/// enterprise).
pub fn profile(profile: QuotaProfile) -> QuotaSet {
    let [rps, read, write, storage, concurrent, namespaces, item] = match profile {
        QuotaProfile::Custom => [UNLIMITED; 7],
        QuotaProfile::Free => [100, MIB, MIB, GIB, 10, 5, MIB],
        QuotaProfile::Pro => [10_000, 100 * MIB, 50 * MIB, 100 * GIB, 500, 100, 16 * MIB],
        QuotaProfile::Enterprise => [100_000, GIB, 512 * MIB, 10 * 1024 * GIB, 5_000, 1_000, 64 * MIB],
    };
    let [events, event_bytes, tails, partitions, retention] = match profile {
        QuotaProfile::Custom => [UNLIMITED; 5],
        QuotaProfile::Free => [1_000, MIB, 10, 16, 7 * DAY],
        QuotaProfile::Pro => [50_000, 50 * MIB, 500, 256, 30 * DAY],
        QuotaProfile::Enterprise => [500_000, 512 * MIB, 5_000, 1_024, UNLIMITED],
    };
    QuotaSet {
        profile: profile as i32,
        requests_per_second: Some(rps),
        read_bytes_per_second: Some(read),
        write_bytes_per_second: Some(write),
        storage_bytes: Some(storage),
        concurrent_requests: Some(concurrent),
        max_namespaces: Some(namespaces),
        max_item_size_bytes: Some(item),
        events_per_second: Some(events),
        event_bytes_per_second: Some(event_bytes),
        open_tails: Some(tails),
        max_partitions: Some(partitions),
        max_retention_seconds: Some(retention),
    }
}

/// Every quota field as `(name, value)`, in declaration order.
pub fn fields(q: &QuotaSet) -> [(&'static str, Option<i64>); 12] {
    [
        ("requests_per_second", q.requests_per_second),
        ("read_bytes_per_second", q.read_bytes_per_second),
        ("write_bytes_per_second", q.write_bytes_per_second),
        ("storage_bytes", q.storage_bytes),
        ("concurrent_requests", q.concurrent_requests),
        ("max_namespaces", q.max_namespaces),
        ("max_item_size_bytes", q.max_item_size_bytes),
        ("events_per_second", q.events_per_second),
        ("event_bytes_per_second", q.event_bytes_per_second),
        ("open_tails", q.open_tails),
        ("max_partitions", q.max_partitions),
        ("max_retention_seconds", q.max_retention_seconds),
    ]
}

/// Fills the fields `requested` leaves unset from its profile. An unknown
/// profile number resolves as `Custom`; validation reports it separately.
pub fn resolve(requested: Option<&QuotaSet>) -> QuotaSet {
    let Some(req) = requested else {
        return profile(QuotaProfile::Custom);
    };
    let base = profile(QuotaProfile::try_from(req.profile).unwrap_or(QuotaProfile::Custom));
    QuotaSet {
        profile: req.profile,
        requests_per_second: req.requests_per_second.or(base.requests_per_second),
        read_bytes_per_second: req.read_bytes_per_second.or(base.read_bytes_per_second),
        write_bytes_per_second: req.write_bytes_per_second.or(base.write_bytes_per_second),
        storage_bytes: req.storage_bytes.or(base.storage_bytes),
        concurrent_requests: req.concurrent_requests.or(base.concurrent_requests),
        max_namespaces: req.max_namespaces.or(base.max_namespaces),
        max_item_size_bytes: req.max_item_size_bytes.or(base.max_item_size_bytes),
        events_per_second: req.events_per_second.or(base.events_per_second),
        event_bytes_per_second: req.event_bytes_per_second.or(base.event_bytes_per_second),
        open_tails: req.open_tails.or(base.open_tails),
        max_partitions: req.max_partitions.or(base.max_partitions),
        max_retention_seconds: req.max_retention_seconds.or(base.max_retention_seconds),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_fields_override_the_profile() {
        let req = QuotaSet { profile: QuotaProfile::Free as i32, requests_per_second: Some(7), ..Default::default() };
        let q = resolve(Some(&req));
        assert_eq!(q.requests_per_second, Some(7));
        assert_eq!(q.max_namespaces, Some(5));
        assert!(fields(&q).iter().all(|(_, v)| v.is_some()));
    }

    #[test]
    fn no_quotas_means_unlimited() {
        let q = resolve(None);
        assert!(fields(&q).iter().all(|(_, v)| *v == Some(UNLIMITED)));
    }
}
