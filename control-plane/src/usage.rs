//! Usage (SPEC §6): gateways report what each namespace used over their
//! last one-second window; the control plane keeps the latest report of
//! every instance in memory, answers `GetUsage` with the sum over fresh
//! reports against the quotas, and tells each reporting instance its share
//! of every tenant's limits, in proportion to recent usage.
//!
//! Usage is deliberately not metadata: it changes every few seconds, is
//! worthless after a minute, and committing it would flood every watcher.
//! With several control-plane replicas each one knows the reports its own
//! gateways sent it; shares are then computed from what that replica
//! knows.
//!
//! - **Reports.** Every `usage_report_interval_ms` (5 s) a registered
//!   gateway sends `ReportUsage`: each namespace it tracks, with what it
//!   used in its last one-second window and, where measured, its storage.
//!   Reports older than [`FRESH_FOR`] are ignored.
//! - **Shares.** The answer to a report is the reporter's share of each
//!   tenant in it: a tenth of the limit spread evenly over the instances
//!   reporting the tenant, the rest in proportion to their requests per
//!   second. A tenant's shares sum to 1 over the instances that serve it,
//!   up to one report interval of lag; an instance where the tenant's
//!   traffic just began enforces the whole limit until its first report
//!   (over-admission bounded by one interval of that instance's traffic).
//! - **Storage.** A tenant's storage is the sum of its namespaces over
//!   every instance's latest report (a namespace's largest figure counting
//!   once); the answer says `storage_full` when that reaches the tenant's
//!   `storage_bytes` quota, and the gateway refuses writes that add bytes
//!   (`prism_gateway::quota` has the bound).
//! - **History.** For the console's charts, the book also keeps a short
//!   history: at most every [`SAMPLE_EVERY`], when a report arrives, the
//!   sum of fresh reports per namespace (requests, read and write bytes per
//!   second), the last [`HISTORY_SAMPLES`] of them. Only namespaces with
//!   traffic are kept in a sample, so it is bounded by the namespaces that
//!   have any times the samples kept. Like the reports, it is this
//!   replica's memory and starts empty.

use std::collections::VecDeque;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use prism_proto::control::{
    Abstraction, Backend, GetUsageResponse, NamespaceSpec, NamespaceStatus, NamespaceUsage, QuotaSet, QuotaUtilization,
    ReportUsageRequest, ReportUsageResponse, TenantShare,
};

use crate::error::{ControlPlaneError, Result};
use crate::plane::ControlPlane;
use crate::validate;

/// Reports older than this are ignored (and dropped).
pub const FRESH_FOR: Duration = Duration::from_secs(30);
/// Namespaces in one report at most.
pub const MAX_NAMESPACES_PER_REPORT: usize = 100_000;
/// Of a tenant's limit, the part spread evenly over its instances before
/// the rest follows usage, so an instance whose traffic for the tenant is
/// just starting is not starved.
const EVEN_PART: f64 = 0.1;

/// Samples of the usage history kept (with [`SAMPLE_EVERY`], ten minutes).
pub const HISTORY_SAMPLES: usize = 60;
/// The least time between two samples of the usage history.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
struct Report {
    at: Instant,
    namespaces: Vec<NamespaceUsage>,
}

/// One sample of the usage history: per namespace with traffic, requests,
/// read bytes and write bytes per second summed over fresh reports.
#[derive(Debug)]
struct Sample {
    at: SystemTime,
    taken: Instant,
    rates: HashMap<Arc<str>, [f32; 3]>,
}

/// A point of a usage chart: when, and the rates summed over what it is of.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UsagePoint {
    pub at: SystemTime,
    pub requests_per_second: f64,
    pub read_bytes_per_second: f64,
    pub write_bytes_per_second: f64,
}

/// The latest report of every instance, and a short history of their sums.
#[derive(Debug, Default)]
pub struct UsageBook {
    reports: Mutex<HashMap<String, Report>>,
    history: Mutex<VecDeque<Sample>>,
}

impl UsageBook {
    fn reports(&self) -> std::sync::MutexGuard<'_, HashMap<String, Report>> {
        self.reports.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn samples(&self) -> std::sync::MutexGuard<'_, VecDeque<Sample>> {
        self.history.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Stores `namespaces` as `instance`'s latest report and returns every
    /// fresh report (this one included); samples the history when the
    /// last sample is [`SAMPLE_EVERY`] old.
    fn record(&self, instance: &str, namespaces: Vec<NamespaceUsage>, now: Instant) -> Vec<(String, Report)> {
        let fresh: Vec<(String, Report)> = {
            let mut reports = self.reports();
            reports.retain(|_, r| now.duration_since(r.at) < FRESH_FOR);
            reports.insert(instance.to_owned(), Report { at: now, namespaces });
            reports.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        let due = self.samples().back().is_none_or(|last| now.duration_since(last.taken) >= SAMPLE_EVERY);
        if due {
            let mut rates: HashMap<Arc<str>, [f32; 3]> = HashMap::new();
            for u in fresh.iter().flat_map(|(_, r)| r.namespaces.iter()) {
                if u.requests_per_second > 0.0 || u.read_bytes_per_second > 0.0 || u.write_bytes_per_second > 0.0 {
                    let e = rates.entry(Arc::from(u.namespace.as_str())).or_default();
                    e[0] += u.requests_per_second as f32;
                    e[1] += u.read_bytes_per_second as f32;
                    e[2] += u.write_bytes_per_second as f32;
                }
            }
            let mut samples = self.samples();
            if samples.len() >= HISTORY_SAMPLES {
                samples.pop_front();
            }
            samples.push_back(Sample { at: SystemTime::now(), taken: now, rates });
        }
        fresh
    }

    /// The history of the namespaces `wanted` accepts, summed, oldest
    /// first.
    pub fn history(&self, wanted: impl Fn(&str) -> bool) -> Vec<UsagePoint> {
        self.samples()
            .iter()
            .map(|s| {
                let mut p = UsagePoint {
                    at: s.at,
                    requests_per_second: 0.0,
                    read_bytes_per_second: 0.0,
                    write_bytes_per_second: 0.0,
                };
                for (_, r) in s.rates.iter().filter(|(ns, _)| wanted(ns)) {
                    p.requests_per_second += f64::from(r[0]);
                    p.read_bytes_per_second += f64::from(r[1]);
                    p.write_bytes_per_second += f64::from(r[2]);
                }
                p
            })
            .collect()
    }

    fn fresh(&self, now: Instant) -> Vec<Report> {
        self.reports().values().filter(|r| now.duration_since(r.at) < FRESH_FOR).cloned().collect()
    }
}

fn tenant_of(namespace: &str) -> &str {
    namespace.split_once('/').map_or(namespace, |(t, _)| t)
}

/// Each instance's share of every tenant in `reporter`'s report: an even
/// tenth over the instances reporting the tenant, the rest in proportion to
/// their requests per second (evenly while nobody has any).
pub fn tenant_shares(reports: &[(String, Vec<NamespaceUsage>)], reporter: &str) -> Vec<TenantShare> {
    let mut by_tenant: BTreeMap<&str, HashMap<&str, f64>> = BTreeMap::new();
    for (instance, namespaces) in reports {
        for ns in namespaces {
            *by_tenant.entry(tenant_of(&ns.namespace)).or_default().entry(instance.as_str()).or_default() +=
                ns.requests_per_second;
        }
    }
    by_tenant
        .into_iter()
        .filter_map(|(tenant, per_instance)| {
            let mine = *per_instance.get(reporter)?;
            let n = per_instance.len() as f64;
            let total: f64 = per_instance.values().sum();
            let share = if total > 0.0 { EVEN_PART / n + (1.0 - EVEN_PART) * mine / total } else { 1.0 / n };
            Some(TenantShare { tenant_id: tenant.to_owned(), share: share.clamp(0.0, 1.0), storage_full: false })
        })
        .collect()
}

/// The bytes a tenant's namespaces store, from the latest report of each
/// instance (a namespace is measured by the instance that owns it; a
/// replica that reports it too reports the same storage, so the largest
/// figure per namespace counts once).
fn tenant_storage(reports: &[(String, Vec<NamespaceUsage>)], tenant: &str) -> i64 {
    let mut per_namespace: HashMap<&str, i64> = HashMap::new();
    for u in reports.iter().flat_map(|(_, r)| r.iter()).filter(|u| tenant_of(&u.namespace) == tenant) {
        let e = per_namespace.entry(u.namespace.as_str()).or_default();
        *e = (*e).max(u.storage_bytes);
    }
    per_namespace.values().sum()
}

fn check_usage(i: usize, u: &NamespaceUsage) -> Result<()> {
    validate::namespace_name(&format!("namespaces[{i}].namespace"), &u.namespace)?;
    let rates = [
        ("requests_per_second", u.requests_per_second),
        ("read_bytes_per_second", u.read_bytes_per_second),
        ("write_bytes_per_second", u.write_bytes_per_second),
        ("events_per_second", u.events_per_second),
        ("event_bytes_per_second", u.event_bytes_per_second),
    ];
    for (field, v) in rates {
        if !v.is_finite() || v < 0.0 {
            return Err(ControlPlaneError::invalid(format!("namespaces[{i}].{field}"), "must be a finite rate ≥ 0"));
        }
    }
    let counts = [
        ("storage_bytes", u.storage_bytes),
        ("concurrent_requests", u.concurrent_requests),
        ("open_tails", u.open_tails),
    ];
    for (field, v) in counts {
        if v < 0 {
            return Err(ControlPlaneError::invalid(format!("namespaces[{i}].{field}"), "must be ≥ 0"));
        }
    }
    Ok(())
}

/// Adds `u` into `sum`: rates add up over instances; storage does not (the
/// replicas of a shard report the same bytes), so one namespace's is the
/// largest report and a tenant's the sum of its namespaces'.
fn add(sum: &mut NamespaceUsage, u: &NamespaceUsage) {
    sum.requests_per_second += u.requests_per_second;
    sum.read_bytes_per_second += u.read_bytes_per_second;
    sum.write_bytes_per_second += u.write_bytes_per_second;
    sum.storage_bytes = if sum.namespace == u.namespace {
        sum.storage_bytes.max(u.storage_bytes)
    } else {
        sum.storage_bytes.saturating_add(u.storage_bytes)
    };
    sum.concurrent_requests = sum.concurrent_requests.saturating_add(u.concurrent_requests);
    sum.events_per_second += u.events_per_second;
    sum.event_bytes_per_second += u.event_bytes_per_second;
    sum.open_tails = sum.open_tails.saturating_add(u.open_tails);
}

fn utilization(quota: &str, used: f64, limit: Option<i64>) -> QuotaUtilization {
    let limit = limit.filter(|l| *l >= 0).unwrap_or(-1);
    let utilization_percent = if limit > 0 {
        used / limit as f64 * 100.0
    } else if limit == 0 && used > 0.0 {
        100.0
    } else {
        0.0
    };
    QuotaUtilization { quota: quota.to_owned(), used, limit, utilization_percent }
}

fn utilizations(total: &NamespaceUsage, q: &QuotaSet) -> Vec<QuotaUtilization> {
    vec![
        utilization("requests_per_second", total.requests_per_second, q.requests_per_second),
        utilization("read_bytes_per_second", total.read_bytes_per_second, q.read_bytes_per_second),
        utilization("write_bytes_per_second", total.write_bytes_per_second, q.write_bytes_per_second),
        utilization("storage_bytes", total.storage_bytes as f64, q.storage_bytes),
        utilization("concurrent_requests", total.concurrent_requests as f64, q.concurrent_requests),
        utilization("events_per_second", total.events_per_second, q.events_per_second),
        utilization("event_bytes_per_second", total.event_bytes_per_second, q.event_bytes_per_second),
        utilization("open_tails", total.open_tails as f64, q.open_tails),
    ]
}

/// What the largest of `specs` asks for that quotas cap, against `q`:
/// partitions, and TimeSeries retention in seconds (a namespace keeping
/// events forever counts as infinitely long). Metadata, not usage: the
/// same whatever the gateways report.
fn spec_utilizations<'a>(specs: impl Iterator<Item = &'a NamespaceSpec>, q: &QuotaSet) -> Vec<QuotaUtilization> {
    let (mut partitions, mut retention) = (0u32, 0f64);
    for spec in specs {
        let backend = Backend::try_from(spec.backend).ok().and_then(prism_proto::backends::describe);
        partitions = partitions.max(backend.map_or(1, |b| b.partitions(spec.backend_config.as_deref()).0));
        if spec.abstraction == Abstraction::TimeSeries as i32 {
            let kept =
                spec.policies.as_deref().and_then(|p| p.retention.as_ref()).filter(|d| d.seconds > 0 || d.nanos > 0);
            retention = retention.max(kept.map_or(f64::INFINITY, |d| d.seconds as f64));
        }
    }
    vec![
        utilization("max_partitions", f64::from(partitions), q.max_partitions),
        utilization("max_retention_seconds", retention, q.max_retention_seconds),
    ]
}

impl ControlPlane {
    /// Records a gateway instance's report; answers its tenant shares.
    /// NOT_FOUND when the instance is not registered (it registers again).
    pub async fn report_usage(&self, req: &ReportUsageRequest) -> Result<ReportUsageResponse> {
        prism_proto::names::validate_part(&req.shard_id)
            .map_err(|e| ControlPlaneError::invalid("shard_id", format!("shard id {e}")))?;
        validate::instance_id("instance_id", &req.instance_id)?;
        if req.namespaces.len() > MAX_NAMESPACES_PER_REPORT {
            return Err(ControlPlaneError::invalid(
                "namespaces",
                format!("at most {MAX_NAMESPACES_PER_REPORT} namespaces per report"),
            ));
        }
        for (i, u) in req.namespaces.iter().enumerate() {
            check_usage(i, u)?;
        }
        let registered = self
            .store()
            .list_shards()
            .await?
            .into_iter()
            .any(|s| s.shard_id == req.shard_id && s.instances.iter().any(|i| i.instance_id == req.instance_id));
        if !registered {
            return Err(ControlPlaneError::NotFound(format!(
                "instance {} of shard {} is not registered; register again",
                req.instance_id, req.shard_id
            )));
        }
        let all = self.usage_book().record(&req.instance_id, req.namespaces.clone(), Instant::now());
        let reports: Vec<(String, Vec<NamespaceUsage>)> = all.into_iter().map(|(k, r)| (k, r.namespaces)).collect();
        let mut shares = tenant_shares(&reports, &req.instance_id);
        for share in &mut shares {
            let limit = self.store().get_tenant(&share.tenant_id).await?.and_then(|t| t.quotas?.storage_bytes);
            if let Some(limit) = limit.filter(|l| *l >= 0) {
                share.storage_full = tenant_storage(&reports, &share.tenant_id) >= limit;
            }
        }
        Ok(ReportUsageResponse { tenant_shares: shares })
    }

    /// The recent usage history of a tenant (`acme`) or a namespace
    /// (`acme/orders`), oldest first. Unauthorized: the console shows it
    /// only beside a [`get_usage`](Self::get_usage) answer the caller was
    /// allowed.
    pub fn usage_history(&self, target: &str) -> Vec<UsagePoint> {
        let namespace = target.contains('/');
        self.usage_book().history(|name| if namespace { name == target } else { tenant_of(name) == target })
    }

    /// Usage of a tenant (`acme`) or a namespace (`acme/orders`) summed over
    /// fresh reports, with the utilization of every quota.
    pub async fn get_usage(&self, target: &str) -> Result<GetUsageResponse> {
        let fresh = self.usage_book().fresh(Instant::now());
        let mut per_namespace: BTreeMap<String, NamespaceUsage> = BTreeMap::new();
        let wanted = |name: &str| if target.contains('/') { name == target } else { tenant_of(name) == target };
        for u in fresh.iter().flat_map(|r| r.namespaces.iter()).filter(|u| wanted(&u.namespace)) {
            let sum = per_namespace
                .entry(u.namespace.clone())
                .or_insert_with(|| NamespaceUsage { namespace: u.namespace.clone(), ..Default::default() });
            add(sum, u);
        }
        let mut total = NamespaceUsage { namespace: target.to_owned(), ..Default::default() };
        per_namespace.values().for_each(|u| add(&mut total, u));
        let quotas = if target.contains('/') {
            validate::namespace_name("target", target)?;
            let ns = self
                .store()
                .get_namespace(target)
                .await?
                .filter(|n| n.status != NamespaceStatus::Deleted as i32)
                .ok_or_else(|| ControlPlaneError::NotFound(format!("namespace {target} not found")))?;
            let spec = ns.spec.unwrap_or_default();
            let q = spec.quotas.unwrap_or_default();
            let mut out = utilizations(&total, &q);
            out.extend(spec_utilizations(std::iter::once(&spec), &q));
            out
        } else {
            validate::tenant_id("target", target)?;
            let tenant = self
                .store()
                .get_tenant(target)
                .await?
                .filter(|t| t.state != prism_proto::control::TenantState::Deleted as i32)
                .ok_or_else(|| ControlPlaneError::NotFound(format!("tenant {target} not found")))?;
            let q = tenant.quotas.unwrap_or_default();
            let mut out = utilizations(&total, &q);
            // The count the creates check; the specs for their sums.
            let count = self.store().live_namespaces(target).await?;
            out.push(utilization("max_namespaces", count as f64, q.max_namespaces));
            let live: Vec<_> = self
                .store()
                .list_namespaces(target, "", usize::MAX)
                .await?
                .into_iter()
                .filter(crate::store::is_live)
                .collect();
            out.extend(spec_utilizations(live.iter().filter_map(|n| n.spec.as_ref()), &q));
            out
        };
        Ok(GetUsageResponse { target: target.to_owned(), quotas, namespaces: per_namespace.into_values().collect() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(ns: &str, rps: f64) -> NamespaceUsage {
        NamespaceUsage { namespace: ns.into(), requests_per_second: rps, ..Default::default() }
    }

    #[test]
    fn shares_follow_usage_with_an_even_floor_and_sum_to_one() {
        let reports = vec![
            ("i-1".to_owned(), vec![usage("acme/a", 90.0), usage("globex/x", 0.0)]),
            ("i-2".to_owned(), vec![usage("acme/b", 10.0)]),
            ("i-3".to_owned(), vec![usage("initech/z", 5.0)]),
        ];
        let share = |instance: &str, tenant: &str| {
            tenant_shares(&reports, instance).into_iter().find(|s| s.tenant_id == tenant).map(|s| s.share)
        };
        let (a1, a2) = (share("i-1", "acme").unwrap_or(0.0), share("i-2", "acme").unwrap_or(0.0));
        assert!((a1 - (0.05 + 0.9 * 0.9)).abs() < 1e-9, "{a1}");
        assert!((a1 + a2 - 1.0).abs() < 1e-9, "{a1} + {a2}");
        // Alone with a tenant: the whole limit; idle everywhere: even.
        assert_eq!(share("i-3", "initech"), Some(1.0));
        assert_eq!(share("i-1", "globex"), Some(1.0));
        // Only tenants in the reporter's own report are answered.
        assert_eq!(share("i-3", "acme"), None);
    }

    #[test]
    fn history_samples_at_most_every_interval_and_keeps_the_last_ones() {
        let book = UsageBook::default();
        let start = Instant::now();
        book.record("i-1", vec![usage("acme/a", 10.0), usage("globex/x", 1.0)], start);
        // Within the interval: no second sample.
        book.record("i-2", vec![usage("acme/b", 5.0)], start + Duration::from_secs(1));
        assert_eq!(book.history(|_| true).len(), 1);
        let acme = |ns: &str| tenant_of(ns) == "acme";
        book.record("i-2", vec![usage("acme/b", 5.0)], start + SAMPLE_EVERY);
        let points = book.history(acme);
        assert_eq!(points.iter().map(|p| p.requests_per_second).collect::<Vec<_>>(), [10.0, 15.0]);
        for i in 0..2 * HISTORY_SAMPLES as u32 {
            book.record("i-1", vec![usage("acme/a", 1.0)], start + SAMPLE_EVERY * (i + 2));
        }
        assert_eq!(book.history(acme).len(), HISTORY_SAMPLES);
    }

    #[test]
    fn utilization_is_a_percentage_of_a_set_limit() {
        assert_eq!(utilization("q", 50.0, Some(200)).utilization_percent, 25.0);
        let unlimited = utilization("q", 50.0, Some(-1));
        assert_eq!((unlimited.limit, unlimited.utilization_percent), (-1, 0.0));
        assert_eq!(utilization("q", 0.0, None).limit, -1);
    }
}
