//! The gateway's Prometheus metrics: what the request path counts (in
//! atomics, with no lock and no label lookup per request) and the
//! collector that turns it, and the state of every other part, into the
//! exposition when `/metrics` is scraped.
//!
//! Cost on the request path, and why it stays small:
//! - per-namespace request counts and latencies live in a
//!   [`RequestSeries`] cached on the namespace's snapshot entry (like its
//!   quota tracker), found once and then reached by a pointer: no label
//!   hashing per request, three to four relaxed atomic adds;
//! - refusals, backend calls and everything else are counted where they
//!   happen in fixed arrays indexed by small enums;
//! - gauges (cache size, buffer depth, pools, quota utilization,
//!   staleness…) are read only when scraped.
//!
//! Cardinality is bounded and documented in README.md: labels are RPC
//! names, gRPC codes, error kinds, backends, operations, layers and quota
//! names (closed sets), plus `tenant`/`namespace` of namespaces that exist
//! in the snapshot — at most `metrics_max_namespaces` of them per gateway;
//! the rest are counted under [`OVERFLOW`], and requests naming no known
//! namespace under [`UNATTRIBUTED`].

pub mod collector;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use prism_proto::control::Backend;
use prism_proto::error::ErrorKind;
use prism_telemetry::histogram::LatencyHistogram;

use crate::error::GatewayError;

/// `tenant` and `namespace` of the namespaces past the cap.
pub const OVERFLOW: &str = "_other";
/// `tenant` and `namespace` of requests for no namespace of the snapshot
/// (a typo, a deleted one): what the client wrote is never a label.
pub const UNATTRIBUTED: &str = "_unknown";

/// The RPCs, in the order of [`crate::call::Request::index`].
pub const RPCS: [&str; 10] = [
    "PutItems",
    "GetItems",
    "DeleteItems",
    "MutateItems",
    "ScanItems",
    "WriteEventRecordsSync",
    "WriteEventRecords",
    "ReadEventRecords",
    "SearchEventRecords",
    "TailEventRecords",
];

const CODES: usize = prism_telemetry::GRPC_CODES.len();

/// The quotas a refusal can name, as the `quota` label.
pub const QUOTAS: [&str; 9] = [
    "requests_per_second",
    "read_bytes_per_second",
    "write_bytes_per_second",
    "concurrent_requests",
    "storage_bytes",
    "max_item_size_bytes",
    "events_per_second",
    "event_bytes_per_second",
    "open_tails",
];

fn quota_index(quota: &str) -> Option<usize> {
    QUOTAS.iter().position(|q| *q == quota)
}

/// Where a namespace's snapshot entry keeps its series (empty until a
/// request counts into it), so the next request finds it without the
/// book's lock. The slot is the entry's; this module reads no snapshot
/// type, so the entry can hold it without the two importing each other.
pub type SeriesSlot = ArcSwapOption<RequestSeries>;

/// Requests, latencies and quota refusals of one namespace (or of the
/// overflow, or of the unattributed).
#[derive(Debug, Default)]
pub struct RequestSeries {
    tenant: Box<str>,
    namespace: Box<str>,
    requests: [[AtomicU64; CODES]; RPCS.len()],
    latency: [LatencyHistogram; RPCS.len()],
    /// By scope (0 namespace, 1 tenant) and quota.
    quota_refusals: [[AtomicU64; QUOTAS.len()]; 2],
    /// Calls this gateway forwarded to the namespace's owner, by RPC.
    forwarded: [AtomicU64; RPCS.len()],
}

impl RequestSeries {
    fn new(tenant: &str, namespace: &str) -> Self {
        Self { tenant: tenant.into(), namespace: namespace.into(), ..Self::default() }
    }

    /// Counts a finished request.
    pub fn record(&self, rpc: usize, code: i32, elapsed: Duration) {
        let code = usize::try_from(code).ok().filter(|c| *c < CODES).unwrap_or(2);
        if let (Some(counts), Some(latency)) = (self.requests.get(rpc), self.latency.get(rpc)) {
            counts[code].fetch_add(1, Ordering::Relaxed);
            latency.observe(elapsed);
        }
    }

    /// Counts a refusal by `quota`, of the namespace's (`tenant: false`)
    /// or its tenant's limit.
    pub fn quota_refused(&self, quota: &str, tenant: bool) {
        if let Some(i) = quota_index(quota) {
            self.quota_refusals[usize::from(tenant)][i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a call of `rpc` forwarded to the namespace's owner.
    pub fn forwarded(&self, rpc: usize) {
        if let Some(n) = self.forwarded.get(rpc) {
            n.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Calls of `rpc` forwarded to the namespace's owner.
    pub fn forwarded_calls(&self, rpc: usize) -> u64 {
        self.forwarded.get(rpc).map_or(0, |n| n.load(Ordering::Relaxed))
    }

    /// Requests of `rpc` (an index of [`RPCS`]) answered with `code`.
    pub fn requests(&self, rpc: usize, code: i32) -> u64 {
        let code = usize::try_from(code).unwrap_or(2);
        self.requests.get(rpc).and_then(|c| c.get(code)).map_or(0, |n| n.load(Ordering::Relaxed))
    }
}

/// Every namespace's [`RequestSeries`], at most `cap` of them.
#[derive(Debug)]
pub struct NamespaceBook {
    cap: usize,
    series: Mutex<HashMap<Box<str>, Arc<RequestSeries>>>,
    overflow: Arc<RequestSeries>,
    unattributed: Arc<RequestSeries>,
    /// Namespaces whose requests went to the overflow series.
    overflowed: AtomicU64,
}

impl NamespaceBook {
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            series: Mutex::default(),
            overflow: Arc::new(RequestSeries::new(OVERFLOW, OVERFLOW)),
            unattributed: Arc::new(RequestSeries::new(UNATTRIBUTED, UNATTRIBUTED)),
            overflowed: AtomicU64::new(0),
        }
    }

    /// The series of namespace `name` (of `tenant`): the one cached in
    /// `slot` (its snapshot entry's), else made (or the overflow, past the
    /// cap) and cached there.
    pub fn of(&self, name: &str, tenant: &str, slot: &SeriesSlot) -> Arc<RequestSeries> {
        if let Some(series) = &*slot.load() {
            return series.clone();
        }
        let series = {
            let mut all = self.series.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            match all.get(name) {
                Some(s) => s.clone(),
                None if all.len() < self.cap => {
                    let s = Arc::new(RequestSeries::new(tenant, name));
                    all.insert(name.into(), s.clone());
                    s
                }
                None => {
                    self.overflowed.fetch_add(1, Ordering::Relaxed);
                    self.overflow.clone()
                }
            }
        };
        slot.store(Some(series.clone()));
        series
    }

    /// The series of requests for no namespace of the snapshot.
    pub fn unattributed(&self) -> Arc<RequestSeries> {
        self.unattributed.clone()
    }

    /// Forgets the series of namespaces that are no longer `live` (left
    /// the snapshot, or deleted), so their series stop being exposed and
    /// make room under the cap.
    fn sweep(&self, live: impl Fn(&str) -> bool) {
        let mut all = self.series.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        all.retain(|name, _| live(name));
    }

    fn all(&self) -> Vec<Arc<RequestSeries>> {
        let all = self.series.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut series: Vec<_> = all.values().cloned().collect();
        series.sort_by(|a, b| a.namespace.cmp(&b.namespace));
        series.push(self.overflow.clone());
        series.push(self.unattributed.clone());
        series
    }

    /// Whether `namespace` has a series of its own (under the cap).
    pub fn tracks(&self, namespace: &str) -> bool {
        self.series.lock().unwrap_or_else(std::sync::PoisonError::into_inner).contains_key(namespace)
    }
}

/// The layer of the pipeline that refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    Validate,
    Authn,
    Authz,
    Quota,
    Shed,
    Deadline,
    /// `WriteEventRecords`' buffer was full.
    Buffer,
}

impl Layer {
    pub const ALL: [Layer; 7] =
        [Self::Validate, Self::Authn, Self::Authz, Self::Quota, Self::Shed, Self::Deadline, Self::Buffer];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Validate => "validate",
            Self::Authn => "authn",
            Self::Authz => "authz",
            Self::Quota => "quota",
            Self::Shed => "shed",
            Self::Deadline => "deadline",
            Self::Buffer => "buffer",
        }
    }
}

/// Why a layer refused: the error kind, the quota, or one of a few names.
/// Indices into [`REASONS`].
pub const REASONS: [&str; 23] = [
    "invalid_argument",
    "not_found",
    "already_exists",
    "unauthenticated",
    "permission_denied",
    "resource_exhausted",
    "failed_precondition",
    "aborted",
    "unavailable",
    "internal",
    "wrong_shard",
    "overloaded",
    "timeout",
    "requests_per_second",
    "read_bytes_per_second",
    "write_bytes_per_second",
    "concurrent_requests",
    "storage_bytes",
    "max_item_size_bytes",
    "write_buffer_full",
    "events_per_second",
    "event_bytes_per_second",
    "open_tails",
];

fn reason_index(reason: &str) -> usize {
    REASONS.iter().position(|r| *r == reason).unwrap_or(9)
}

/// The reason label of a refusal.
pub fn reason(e: &GatewayError) -> &'static str {
    match e {
        GatewayError::WrongShard { .. } => "wrong_shard",
        GatewayError::Overloaded => "overloaded",
        GatewayError::Timeout(_) => "timeout",
        GatewayError::QuotaExceeded { quota, .. } => quota_index(quota)
            .map_or(if *quota == "write_buffer" { "write_buffer_full" } else { "resource_exhausted" }, |i| QUOTAS[i]),
        other => other.kind().as_str(),
    }
}

/// Refusals by layer and reason.
#[derive(Debug, Default)]
pub struct Refusals {
    counts: [[AtomicU64; REASONS.len()]; Layer::ALL.len()],
}

impl Refusals {
    pub fn record(&self, layer: Layer, reason: &str) {
        self.counts[layer as usize][reason_index(reason)].fetch_add(1, Ordering::Relaxed);
        // The request span (when one is open) says which layer refused.
        let span = tracing::Span::current();
        if !span.is_none() {
            span.record("prism.refused_by", layer.as_str());
        }
    }

    pub fn get(&self, layer: Layer, reason: &str) -> u64 {
        self.counts[layer as usize][reason_index(reason)].load(Ordering::Relaxed)
    }
}

/// A backend operation, as the `operation` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Mutate,
    Get,
    Scan,
    Write,
    Read,
    Search,
}

impl Op {
    pub const ALL: [Op; 6] = [Self::Mutate, Self::Get, Self::Scan, Self::Write, Self::Read, Self::Search];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mutate => "mutate",
            Self::Get => "get",
            Self::Scan => "scan",
            Self::Write => "write",
            Self::Read => "read",
            Self::Search => "search",
        }
    }
}

/// Every described backend (`prism_proto::backends::BACKENDS`), in order.
const BACKENDS: [Backend; prism_proto::backends::BACKENDS.len()] = {
    let mut all = [Backend::Unspecified; prism_proto::backends::BACKENDS.len()];
    let mut i = 0;
    while i < all.len() {
        all[i] = prism_proto::backends::BACKENDS[i].backend;
        i += 1;
    }
    all
};

const KINDS: [ErrorKind; 10] = ErrorKind::ALL;

fn backend_index(backend: Backend) -> Option<usize> {
    BACKENDS.iter().position(|b| *b == backend)
}

/// Latency and errors of backend (plugin) calls by backend and operation.
#[derive(Debug, Default)]
pub struct BackendMetrics {
    latency: [[LatencyHistogram; Op::ALL.len()]; BACKENDS.len()],
    errors: [[[AtomicU64; KINDS.len()]; Op::ALL.len()]; BACKENDS.len()],
}

impl BackendMetrics {
    pub fn record(&self, backend: Backend, op: Op, elapsed: Duration, error: Option<ErrorKind>) {
        let Some(b) = backend_index(backend) else { return };
        self.latency[b][op as usize].observe(elapsed);
        if let Some(kind) = error {
            let k = KINDS.iter().position(|x| *x == kind).unwrap_or(KINDS.len() - 1);
            self.errors[b][op as usize][k].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn calls(&self, backend: Backend, op: Op) -> u64 {
        backend_index(backend).map_or(0, |b| self.latency[b][op as usize].count())
    }
}

/// The metrics the gateway's parts count into.
#[derive(Debug)]
pub struct GatewayMetrics {
    pub namespaces: NamespaceBook,
    pub refusals: Arc<Refusals>,
    pub backend: BackendMetrics,
    /// Times the watch stream was opened again after it ended or failed.
    pub watch_reconnects: AtomicU64,
    /// From a delta's arrival to its snapshot being stored.
    pub delta_apply: LatencyHistogram,
    /// Whether requests are counted per namespace: on when a metrics
    /// listener serves them (`Gateway::serve_with_metrics`).
    requests: AtomicBool,
    /// Forwarded calls that got no answer from the owner, by why.
    forward_failures: [AtomicU64; ForwardFailure::ALL.len()],
    /// This gateway's part of live migrations.
    pub migration: MigrationMetrics,
}

/// The migration steps as the `step` label, indexed by
/// `MigrationStep`'s value (0, unspecified, is never counted).
pub const MIGRATION_STEPS: [&str; 8] =
    ["unspecified", "prepare", "dual_write", "backfill", "verify", "cutover", "cleanup", "aborting"];

/// What this gateway did for live migrations (ARCHITECTURE.md, "The life
/// of a migration"): counted by the migration task and the shadow reads,
/// never per request otherwise.
#[derive(Debug, Default)]
pub struct MigrationMetrics {
    /// Records and bytes this gateway's backfills copied.
    pub records_copied: AtomicU64,
    pub bytes_copied: AtomicU64,
    /// Attempts of this gateway's part of a step that failed (and are
    /// retried), by step.
    step_failures: [AtomicU64; MIGRATION_STEPS.len()],
    /// Shadow reads sent at VERIFY whose sides agreed, and differed.
    pub shadow_same: AtomicU64,
    pub shadow_differ: AtomicU64,
    /// Full comparisons at VERIFY that found the sides the same, and
    /// found records differing.
    pub compared_same: AtomicU64,
    pub compared_differ: AtomicU64,
}

impl MigrationMetrics {
    /// Counts a failed attempt at step `step` (`MigrationStep`'s value).
    pub fn step_failed(&self, step: i32) {
        if let Some(n) = usize::try_from(step).ok().and_then(|s| self.step_failures.get(s)) {
            n.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn step_failures(&self, step: usize) -> u64 {
        self.step_failures.get(step).map_or(0, |n| n.load(Ordering::Relaxed))
    }

    /// Counts one backfill page's records and bytes.
    pub fn copied(&self, records: u64, bytes: u64) {
        self.records_copied.fetch_add(records, Ordering::Relaxed);
        self.bytes_copied.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Counts one shadow read, by whether its sides agreed.
    pub fn shadow_read(&self, same: bool) {
        let n = if same { &self.shadow_same } else { &self.shadow_differ };
        n.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one full comparison, by whether the sides were the same.
    pub fn compared(&self, same: bool) {
        let n = if same { &self.compared_same } else { &self.compared_differ };
        n.fetch_add(1, Ordering::Relaxed);
    }
}

/// Why a forwarded call got no answer from its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardFailure {
    /// The owning shard has no registered instance.
    NoInstance,
    /// No instance could be connected to.
    Unreachable,
    /// No answer before the call's deadline.
    Timeout,
}

impl ForwardFailure {
    pub const ALL: [Self; 3] = [Self::NoInstance, Self::Unreachable, Self::Timeout];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoInstance => "no_instance",
            Self::Unreachable => "unreachable",
            Self::Timeout => "timeout",
        }
    }
}

impl GatewayMetrics {
    pub fn new(max_namespaces: usize) -> Self {
        Self {
            namespaces: NamespaceBook::new(max_namespaces),
            refusals: Arc::default(),
            backend: BackendMetrics::default(),
            watch_reconnects: AtomicU64::new(0),
            delta_apply: LatencyHistogram::default(),
            requests: AtomicBool::new(false),
            forward_failures: Default::default(),
            migration: MigrationMetrics::default(),
        }
    }

    /// Counts a forwarded call that got no answer.
    pub fn forward_failed(&self, why: ForwardFailure) {
        self.forward_failures[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Whether the pipeline counts every request per namespace.
    pub fn counts_requests(&self) -> bool {
        self.requests.load(Ordering::Relaxed)
    }

    pub(crate) fn count_requests(&self) {
        self.requests.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_refusals_are_read_from_the_error() {
        let e = GatewayError::QuotaExceeded {
            subject: "namespace:a/b".into(),
            description: "requests_per_second quota of 5 exceeded".into(),
            retry_after: None,
            quota: "requests_per_second",
        };
        assert_eq!(reason(&e), "requests_per_second");
        assert_eq!(reason(&GatewayError::Overloaded), "overloaded");
        assert_eq!(reason(&GatewayError::Unauthenticated("x".into())), "unauthenticated");
        for r in REASONS {
            assert_eq!(REASONS[reason_index(r)], r);
        }
    }

    #[test]
    fn the_book_caps_namespaces_and_counts_the_overflow() {
        let book = NamespaceBook::new(1);
        let entry = |name: &str| crate::snapshot::NamespaceEntry::for_tests(name, 1);
        let (a, b) = (entry("t/a"), entry("t/b"));
        let sa = a.request_series(&book);
        assert_eq!(&*sa.namespace, "t/a");
        assert!(Arc::ptr_eq(&a.request_series(&book), &sa), "cached on the entry");
        let sb = b.request_series(&book);
        assert_eq!(&*sb.namespace, OVERFLOW);
        assert_eq!(book.overflowed.load(Ordering::Relaxed), 1);
        sb.record(1, 0, Duration::from_micros(50));
        assert_eq!(book.overflow.requests(1, 0), 1);
    }
}
