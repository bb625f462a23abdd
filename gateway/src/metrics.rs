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

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use prism_proto::control::{Backend, NamespaceStatus};
use prism_proto::error::ErrorKind;
use prism_telemetry::histogram::LatencyHistogram;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::error::GatewayError;
use crate::snapshot::{Metadata, NamespaceEntry};

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
pub const QUOTAS: [&str; 6] = [
    "requests_per_second",
    "read_bytes_per_second",
    "write_bytes_per_second",
    "concurrent_requests",
    "storage_bytes",
    "max_item_size_bytes",
];

fn quota_index(quota: &str) -> Option<usize> {
    QUOTAS.iter().position(|q| *q == quota)
}

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

    /// The series of `entry`'s namespace: the one cached on the entry, else
    /// made (or the overflow, past the cap) and cached there.
    pub fn of(&self, entry: &NamespaceEntry) -> Arc<RequestSeries> {
        if let Some(series) = &*entry.metrics.load() {
            return series.clone();
        }
        let series = {
            let mut all = self.series.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            match all.get(entry.ns.name.as_str()) {
                Some(s) => s.clone(),
                None if all.len() < self.cap => {
                    let s = Arc::new(RequestSeries::new(entry.ns.tenant(), &entry.ns.name));
                    all.insert(entry.ns.name.as_str().into(), s.clone());
                    s
                }
                None => {
                    self.overflowed.fetch_add(1, Ordering::Relaxed);
                    self.overflow.clone()
                }
            }
        };
        entry.metrics.store(Some(series.clone()));
        series
    }

    /// The series of the namespace named `name` in the current snapshot,
    /// or the unattributed one.
    pub fn lookup(&self, metadata: &Metadata, name: &str) -> Arc<RequestSeries> {
        let snapshot = metadata.load();
        match snapshot.namespace(name).filter(|e| e.status != NamespaceStatus::Deleted) {
            Some(entry) => self.of(entry),
            None => self.unattributed.clone(),
        }
    }

    /// Forgets the series of namespaces that left the snapshot (deleted),
    /// so their series stop being exposed and make room under the cap.
    fn sweep(&self, metadata: &Metadata) {
        let snapshot = metadata.load();
        let mut all = self.series.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        all.retain(|name, _| snapshot.namespace(name).is_some_and(|e| e.status != NamespaceStatus::Deleted));
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
pub const REASONS: [&str; 20] = [
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

const KINDS: [ErrorKind; 10] = [
    ErrorKind::InvalidArgument,
    ErrorKind::NotFound,
    ErrorKind::AlreadyExists,
    ErrorKind::Unauthenticated,
    ErrorKind::PermissionDenied,
    ErrorKind::ResourceExhausted,
    ErrorKind::FailedPrecondition,
    ErrorKind::Aborted,
    ErrorKind::Unavailable,
    ErrorKind::Internal,
];

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

/// The metrics the gateway's parts count into (held by `Shared`).
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
    /// The verified-token cache of the pipeline, once built.
    pub(crate) tokens: OnceLock<Arc<crate::layers::VerifiedTokens>>,
    /// Forwarded calls that got no answer from the owner, by why.
    forward_failures: [AtomicU64; ForwardFailure::ALL.len()],
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
            tokens: OnceLock::new(),
            forward_failures: Default::default(),
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

/// Encodes one metric family (a descriptor and its samples).
struct Family<'a>(MetricEncoder<'a>);

fn family<'a>(
    encoder: &'a mut DescriptorEncoder,
    name: &'a str,
    help: &str,
    kind: MetricType,
) -> Result<Family<'a>, std::fmt::Error> {
    Ok(Family(encoder.encode_descriptor(name, help, None, kind)?))
}

impl Family<'_> {
    fn counter<const N: usize>(&mut self, labels: [(&str, &str); N], value: u64) -> Result<(), std::fmt::Error> {
        ConstCounter::new(value).encode(self.0.encode_family(&labels)?)
    }

    fn gauge<const N: usize>(&mut self, labels: [(&str, &str); N], value: f64) -> Result<(), std::fmt::Error> {
        ConstGauge::new(value).encode(self.0.encode_family(&labels)?)
    }

    fn histogram<const N: usize>(
        &mut self,
        labels: [(&str, &str); N],
        h: &LatencyHistogram,
    ) -> Result<(), std::fmt::Error> {
        h.encode_into(self.0.encode_family(&labels)?)
    }
}

/// Turns the gateway's state into the exposition, on each scrape.
#[derive(Debug)]
pub struct GatewayCollector {
    shared: Arc<crate::server::Shared>,
}

impl GatewayCollector {
    pub fn new(shared: Arc<crate::server::Shared>) -> Self {
        Self { shared }
    }
}

/// The registry a gateway's metrics listener serves.
pub fn registry(shared: &Arc<crate::server::Shared>) -> prometheus_client::registry::Registry {
    let mut registry = prometheus_client::registry::Registry::default();
    prism_telemetry::process::register(&mut registry);
    registry.register_collector(Box::new(GatewayCollector::new(shared.clone())));
    registry
}

impl Collector for GatewayCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let shared = &*self.shared;
        let m = &shared.metrics;
        let shard = shared.config.shard_id.as_str();
        self.requests(&mut encoder)?;
        self.refusals(&mut encoder)?;
        self.backend(&mut encoder)?;
        self.clients(&mut encoder)?;
        self.quota_utilization(&mut encoder)?;

        let cache = &shared.cache.stats;
        let counters: [(&str, &str, u64); 6] = [
            ("prism_gateway_cache_hits", "Reads answered from the record cache", cache.hits.load(Ordering::Relaxed)),
            (
                "prism_gateway_cache_misses",
                "Reads the record cache could not answer",
                cache.misses.load(Ordering::Relaxed),
            ),
            (
                "prism_gateway_cache_loads",
                "Backend reads made to fill the record cache (concurrent misses share one)",
                cache.loads.load(Ordering::Relaxed),
            ),
            (
                "prism_gateway_cache_evictions",
                "Records evicted from the cache to stay within its size",
                cache.evictions.load(Ordering::Relaxed),
            ),
            (
                "prism_gateway_ts_buffer_flushed_events",
                "Buffered events written to their backend",
                shared.buffer.stats.flushed.load(Ordering::Relaxed),
            ),
            (
                "prism_gateway_ts_buffer_dropped_events",
                "Buffered events that could not be written and were dropped",
                shared.buffer.stats.dropped.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, value) in counters {
            family(&mut encoder, name, help, MetricType::Counter)?.counter([], value)?;
        }
        let (hits, misses) =
            m.tokens.get().map_or((0, 0), |t| (t.hits.load(Ordering::Relaxed), t.misses.load(Ordering::Relaxed)));
        let mut tokens = family(
            &mut encoder,
            "prism_gateway_token_cache_lookups",
            "Bearer tokens looked up among the verified ones, by result",
            MetricType::Counter,
        )?;
        tokens.counter([("result", "hit")], hits)?;
        tokens.counter([("result", "miss")], misses)?;

        let snapshot = shared.metadata.load();
        let owned = snapshot
            .namespaces
            .values()
            .filter(|e| e.shard_id == shard && e.status != NamespaceStatus::Deleted)
            .count();
        let gauges: [(&str, &str, f64); 8] = [
            (
                "prism_gateway_cache_bytes",
                "Bytes of records the cache holds (weighted size)",
                shared.cache.weighted_size() as f64,
            ),
            ("prism_gateway_cache_entries", "Records the cache holds", shared.cache.entry_count() as f64),
            (
                "prism_gateway_ts_buffer_events",
                "Events accepted by WriteEventRecords and not yet written",
                shared.buffer.depth() as f64,
            ),
            (
                "prism_gateway_ts_buffer_capacity_events",
                "Events the write buffer holds at most",
                shared.buffer.capacity() as f64,
            ),
            ("prism_gateway_tails_open", "TailEventRecords streams open", shared.tails.open() as f64),
            (
                "prism_gateway_metadata_revision",
                "Revision of the metadata snapshot this gateway serves from",
                snapshot.revision as f64,
            ),
            (
                "prism_gateway_metadata_staleness_seconds",
                "Seconds since the last message from the control plane while the watch is down; 0 while it is connected",
                shared.metadata.staleness().as_secs_f64(),
            ),
            (
                "prism_gateway_ready",
                "1 when the gateway holds a snapshot, is registered and is not draining",
                f64::from(u8::from(shared.readiness.ready())),
            ),
        ];
        for (name, help, value) in gauges {
            family(&mut encoder, name, help, MetricType::Gauge)?.gauge([], value)?;
        }
        let mut held = family(
            &mut encoder,
            "prism_gateway_metadata_namespaces",
            "Namespaces in the snapshot, all and those this gateway's shard owns",
            MetricType::Gauge,
        )?;
        held.gauge([("owner", "any")], snapshot.namespaces.len() as f64)?;
        held.gauge([("owner", "this_shard")], owned as f64)?;
        family(
            &mut encoder,
            "prism_gateway_metadata_watch_reconnects",
            "Times the metadata watch was opened again after it ended or failed",
            MetricType::Counter,
        )?
        .counter([], m.watch_reconnects.load(Ordering::Relaxed))?;
        family(
            &mut encoder,
            "prism_gateway_metadata_delta_apply_seconds",
            "Time to apply one metadata delta to the snapshot",
            MetricType::Histogram,
        )?
        .histogram([], &m.delta_apply)?;
        family(
            &mut encoder,
            "prism_gateway_metrics_overflowed_namespaces",
            "Namespaces counted under namespace=\"_other\" because metrics_max_namespaces was reached",
            MetricType::Counter,
        )?
        .counter([], m.namespaces.overflowed.load(Ordering::Relaxed))?;
        family(&mut encoder, "prism_gateway_info", "The gateway's shard", MetricType::Gauge)?
            .gauge([("shard", shard), ("version", env!("CARGO_PKG_VERSION"))], 1.0)?;
        Ok(())
    }
}

impl GatewayCollector {
    fn requests(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let book = &self.shared.metrics.namespaces;
        book.sweep(&self.shared.metadata);
        let all = book.all();
        let mut requests = family(
            encoder,
            "prism_gateway_requests",
            "KeyValue and TimeSeries requests by RPC, tenant, namespace and gRPC status code",
            MetricType::Counter,
        )?;
        for s in &all {
            for (rpc, codes) in RPCS.iter().zip(&s.requests) {
                for (code, n) in prism_telemetry::GRPC_CODES.iter().zip(codes) {
                    let n = n.load(Ordering::Relaxed);
                    if n > 0 {
                        requests.counter(
                            [("rpc", rpc), ("tenant", &s.tenant), ("namespace", &s.namespace), ("code", code)],
                            n,
                        )?;
                    }
                }
            }
        }
        let mut latency = family(
            encoder,
            "prism_gateway_request_duration_seconds",
            "Time from a request entering the pipeline to its response, by RPC, tenant and namespace",
            MetricType::Histogram,
        )?;
        for s in &all {
            for (rpc, h) in RPCS.iter().zip(&s.latency) {
                if h.count() > 0 {
                    latency.histogram([("rpc", rpc), ("tenant", &s.tenant), ("namespace", &s.namespace)], h)?;
                }
            }
        }
        let mut forwarded = family(
            encoder,
            "prism_gateway_forwarded_requests",
            "Calls this gateway forwarded to the shard that owns their namespace, by RPC, tenant and namespace \
             (clients that route directly make none)",
            MetricType::Counter,
        )?;
        for s in &all {
            for (rpc, n) in RPCS.iter().zip(&s.forwarded) {
                let n = n.load(Ordering::Relaxed);
                if n > 0 {
                    forwarded.counter([("rpc", rpc), ("tenant", &s.tenant), ("namespace", &s.namespace)], n)?;
                }
            }
        }
        let mut failed = family(
            encoder,
            "prism_gateway_forward_failures",
            "Forwarded calls the owning shard did not answer (answered UNAVAILABLE here), by reason",
            MetricType::Counter,
        )?;
        for why in ForwardFailure::ALL {
            failed.counter(
                [("reason", why.as_str())],
                self.shared.metrics.forward_failures[why as usize].load(Ordering::Relaxed),
            )?;
        }
        let mut quota = family(
            encoder,
            "prism_gateway_quota_refusals",
            "Requests refused by a quota, by tenant, namespace, whose limit (scope) and quota",
            MetricType::Counter,
        )?;
        for s in &all {
            for (scope, counts) in ["namespace", "tenant"].iter().zip(&s.quota_refusals) {
                for (q, n) in QUOTAS.iter().zip(counts) {
                    let n = n.load(Ordering::Relaxed);
                    if n > 0 {
                        quota.counter(
                            [("tenant", &s.tenant), ("namespace", &s.namespace), ("scope", scope), ("quota", q)],
                            n,
                        )?;
                    }
                }
            }
        }
        Ok(())
    }

    fn refusals(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let refusals = &self.shared.metrics.refusals;
        let mut f = family(
            encoder,
            "prism_gateway_refusals",
            "Requests refused by a layer of the pipeline, by layer and reason (an error kind or the quota)",
            MetricType::Counter,
        )?;
        for layer in Layer::ALL {
            for (reason, n) in REASONS.iter().zip(&refusals.counts[layer as usize]) {
                let n = n.load(Ordering::Relaxed);
                if n > 0 {
                    f.counter([("layer", layer.as_str()), ("reason", reason)], n)?;
                }
            }
        }
        Ok(())
    }

    fn backend(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let b = &self.shared.metrics.backend;
        let mut latency = family(
            encoder,
            "prism_gateway_backend_request_duration_seconds",
            "Time of calls to a backend (plugin), by backend and operation",
            MetricType::Histogram,
        )?;
        for (backend, by_op) in BACKENDS.iter().zip(&b.latency) {
            for (op, h) in Op::ALL.iter().zip(by_op) {
                if h.count() > 0 {
                    let name = prism_proto::capabilities::backend_name(*backend);
                    latency.histogram([("backend", name), ("operation", op.as_str())], h)?;
                }
            }
        }
        let mut errors = family(
            encoder,
            "prism_gateway_backend_errors",
            "Failed calls to a backend, by backend, operation and error kind",
            MetricType::Counter,
        )?;
        for (backend, by_op) in BACKENDS.iter().zip(&b.errors) {
            for (op, by_kind) in Op::ALL.iter().zip(by_op) {
                for (kind, n) in KINDS.iter().zip(by_kind) {
                    let n = n.load(Ordering::Relaxed);
                    if n > 0 {
                        let name = prism_proto::capabilities::backend_name(*backend);
                        errors.counter([("backend", name), ("operation", op.as_str()), ("kind", kind.as_str())], n)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Pools and producers, as the plugins report them.
    fn clients(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats: Vec<_> = BACKENDS
            .iter()
            .filter_map(|b| {
                self.shared.plugins.get(*b).map(|p| (prism_proto::capabilities::backend_name(*b), p.client_stats()))
            })
            .collect();
        let pools: Vec<_> = stats.iter().filter_map(|(b, s)| s.pools.map(|p| (*b, p))).collect();
        let producers: Vec<_> = stats.iter().filter_map(|(b, s)| s.producers.map(|p| (*b, p))).collect();
        let mut f = family(
            encoder,
            "prism_gateway_backend_pool_connections",
            "Connections of the backend's pools, by state (in_use, idle) and in total (max)",
            MetricType::Gauge,
        )?;
        for (b, p) in &pools {
            f.gauge([("backend", b), ("state", "in_use")], p.connections.saturating_sub(p.idle) as f64)?;
            f.gauge([("backend", b), ("state", "idle")], p.idle as f64)?;
            f.gauge([("backend", b), ("state", "max")], p.max_connections as f64)?;
        }
        let mut f = family(
            encoder,
            "prism_gateway_backend_pool_waiting",
            "Calls waiting for a pooled connection",
            MetricType::Gauge,
        )?;
        for (b, p) in &pools {
            f.gauge([("backend", b)], p.waiting as f64)?;
        }
        let mut f = family(
            encoder,
            "prism_gateway_backend_pools",
            "Connection pools open (one per DSN and pool size)",
            MetricType::Gauge,
        )?;
        for (b, p) in &pools {
            f.gauge([("backend", b)], p.pools as f64)?;
        }
        let mut f = family(
            encoder,
            "prism_gateway_backend_producer_queue_messages",
            "Messages handed to a producer and not yet acknowledged by the broker",
            MetricType::Gauge,
        )?;
        for (b, p) in &producers {
            f.gauge([("backend", b)], p.queued_messages as f64)?;
        }
        let mut f = family(
            encoder,
            "prism_gateway_backend_producer_send_errors",
            "Messages whose send to the broker failed",
            MetricType::Counter,
        )?;
        for (b, p) in &producers {
            f.counter([("backend", b)], p.send_errors)?;
        }
        Ok(())
    }

    /// Utilization (0–1) of every rate and concurrency quota, and of
    /// storage, of the tracked namespaces and their tenants, against the
    /// limit this gateway enforces (its share of the configured one).
    fn quota_utilization(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use crate::quota::{Limits, Metric, Subject, UNKNOWN_STORAGE, UNLIMITED, Window};
        let shared = &*self.shared;
        let snapshot = shared.metadata.load();
        let slot = Window::slot(shared.quotas.clock().now_ms());
        let mut f = family(
            encoder,
            "prism_gateway_quota_utilization_ratio",
            "Used fraction of a quota over the last second (rates), now (concurrency) or as last measured (storage), of the limit this gateway enforces",
            MetricType::Gauge,
        )?;
        let rates = [
            (Metric::Requests, "requests_per_second"),
            (Metric::ReadBytes, "read_bytes_per_second"),
            (Metric::WriteBytes, "write_bytes_per_second"),
        ];
        let mut tenants = std::collections::BTreeSet::new();
        let mut namespaces = shared.quotas.namespaces();
        namespaces.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, tracker) in namespaces {
            let Some(entry) = snapshot.namespace(&name).filter(|e| e.ns.create_revision == tracker.incarnation())
            else {
                continue;
            };
            let tenant = entry.ns.tenant();
            tenants.insert(tenant.to_owned());
            if !shared.metrics.namespaces.tracks(&name) {
                continue;
            }
            let limits = Limits::of(entry.ns.spec.quotas.as_ref());
            let usage = tracker.window().usage(slot);
            let labels =
                |quota| [("scope", "namespace"), ("tenant", tenant), ("namespace", name.as_str()), ("quota", quota)];
            for (metric, quota) in rates {
                if let Some(r) = ratio(usage.get(metric), tracker.effective(limits.get(metric))) {
                    f.gauge(labels(quota), r)?;
                }
            }
            if let Some(r) = ratio(u64::from(tracker.concurrent()), tracker.effective(limits.concurrent_requests)) {
                f.gauge(labels("concurrent_requests"), r)?;
            }
            if tracker.storage() != UNKNOWN_STORAGE
                && limits.storage_bytes != UNLIMITED
                && let Some(r) = ratio(tracker.storage(), limits.storage_bytes)
            {
                f.gauge(labels("storage_bytes"), r)?;
            }
        }
        for tenant in &tenants {
            let (Some(t), Some(tracker)) = (snapshot.tenant(tenant), shared.quotas.tracker(Subject::Tenant(tenant)))
            else {
                continue;
            };
            let limits = Limits::of(t.quotas.as_ref());
            let usage = tracker.window().usage(slot);
            let labels =
                |quota| [("scope", "tenant"), ("tenant", tenant.as_str()), ("namespace", ""), ("quota", quota)];
            for (metric, quota) in rates {
                if let Some(r) = ratio(usage.get(metric), tracker.effective(limits.get(metric))) {
                    f.gauge(labels(quota), r)?;
                }
            }
            if let Some(r) = ratio(u64::from(tracker.concurrent()), tracker.effective(limits.concurrent_requests)) {
                f.gauge(labels("concurrent_requests"), r)?;
            }
        }
        Ok(())
    }
}

/// `used / limit`, or `None` for an unlimited quota. A zero limit (all
/// refused) reads as fully used.
fn ratio(used: u64, limit: u64) -> Option<f64> {
    match limit {
        crate::quota::UNLIMITED => None,
        0 => Some(1.0),
        limit => Some(used as f64 / limit as f64),
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
        let sa = book.of(&a);
        assert_eq!(&*sa.namespace, "t/a");
        assert!(Arc::ptr_eq(&book.of(&a), &sa), "cached on the entry");
        let sb = book.of(&b);
        assert_eq!(&*sb.namespace, OVERFLOW);
        assert_eq!(book.overflowed.load(Ordering::Relaxed), 1);
        sb.record(1, 0, Duration::from_micros(50));
        assert_eq!(book.overflow.requests(1, 0), 1);
    }
}
