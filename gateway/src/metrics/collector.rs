//! The collector behind `/metrics`: on each scrape it turns what the
//! request path counted (the parent module's counters, whose fields it
//! reads as a child module) and the state of every other part into the
//! exposition. It reads every part of the gateway; nothing on the request
//! path imports it.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use prism_proto::control::NamespaceStatus;
use prism_telemetry::histogram::LatencyHistogram;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use super::*;
use crate::buffer::WriteBuffer;
use crate::cache::ReadCache;
use crate::health::Readiness;
use crate::layers::VerifiedTokens;
use crate::plugins::Plugins;
use crate::quota::QuotaRegistry;
use crate::snapshot::Metadata;
use crate::tail::TailHub;
use crate::transport::ConnectionStats;

/// The statuses of `prism_gateway_owned_namespaces`, with their labels
/// (DELETED ones are gone from the shard).
const OWNED_STATUSES: [(NamespaceStatus, &str); 4] = [
    (NamespaceStatus::Provisioning, "provisioning"),
    (NamespaceStatus::Active, "active"),
    (NamespaceStatus::Degraded, "degraded"),
    (NamespaceStatus::Deleting, "deleting"),
];

/// What a scrape reads: the counters and every part whose state is
/// exposed.
#[derive(Debug, Clone)]
pub struct Sources {
    pub shard_id: String,
    pub metrics: Arc<GatewayMetrics>,
    pub metadata: Arc<Metadata>,
    pub plugins: Plugins,
    pub cache: Arc<ReadCache>,
    pub buffer: Arc<WriteBuffer>,
    pub tails: Arc<TailHub>,
    pub tokens: Arc<VerifiedTokens>,
    pub quotas: Arc<QuotaRegistry>,
    pub readiness: Arc<Readiness>,
    pub connections: Arc<ConnectionStats>,
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
    sources: Sources,
}

impl GatewayCollector {
    pub fn new(sources: Sources) -> Self {
        Self { sources }
    }
}

/// The registry a gateway's metrics listener serves.
pub fn registry(sources: Sources) -> prometheus_client::registry::Registry {
    let mut registry = prometheus_client::registry::Registry::default();
    prism_telemetry::process::register(&mut registry);
    registry.register_collector(Box::new(GatewayCollector::new(sources)));
    registry
}

impl Collector for GatewayCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let shared = &self.sources;
        let m = &shared.metrics;
        let shard = shared.shard_id.as_str();
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
        self.connections(&mut encoder)?;
        let t = &shared.tokens;
        let (hits, misses) = (t.hits.load(Ordering::Relaxed), t.misses.load(Ordering::Relaxed));
        let mut tokens = family(
            &mut encoder,
            "prism_gateway_token_cache_lookups",
            "Bearer tokens looked up among the verified ones, by result",
            MetricType::Counter,
        )?;
        tokens.counter([("result", "hit")], hits)?;
        tokens.counter([("result", "miss")], misses)?;

        let snapshot = shared.metadata.load();
        // This shard's namespaces by status, in one pass.
        let mut by_status = [0u64; OWNED_STATUSES.len()];
        let mut migrating = [0u64; MIGRATION_STEPS.len()];
        for e in snapshot.namespaces.values().filter(|e| e.shard_id == shard) {
            if let Some(i) = OWNED_STATUSES.iter().position(|(s, _)| *s == e.status) {
                by_status[i] += 1;
            }
            if let Some(n) = e.migration.as_deref().and_then(|m| migrating.get_mut(usize::try_from(m.step).ok()?)) {
                *n += 1;
            }
        }
        let owned: u64 = by_status.iter().sum();
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
        let mut statuses = family(
            &mut encoder,
            "prism_gateway_owned_namespaces",
            "Namespaces this gateway's shard owns, by status (PROVISIONING ones are not served yet; DEGRADED ones say why in the control plane)",
            MetricType::Gauge,
        )?;
        for ((_, label), n) in OWNED_STATUSES.iter().zip(by_status) {
            statuses.gauge([("status", label)], n as f64)?;
        }
        self.encode_migrations(&mut encoder, &migrating)?;
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
        let book = &self.sources.metrics.namespaces;
        let snapshot = self.sources.metadata.load();
        book.sweep(|name| snapshot.namespace(name).is_some_and(|e| e.status != NamespaceStatus::Deleted));
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
                self.sources.metrics.forward_failures[why as usize].load(Ordering::Relaxed),
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

    /// Live migrations: this shard's namespaces migrating, by step
    /// (`by_step`, counted in the scrape's pass over the snapshot), and
    /// what this gateway did for them.
    fn encode_migrations(&self, encoder: &mut DescriptorEncoder, by_step: &[u64]) -> Result<(), std::fmt::Error> {
        let m = &self.sources.metrics.migration;
        let mut steps = family(
            encoder,
            "prism_gateway_migrations",
            "Namespaces of this gateway's shard being migrated, by step",
            MetricType::Gauge,
        )?;
        for (step, n) in MIGRATION_STEPS.iter().zip(by_step).skip(1) {
            steps.gauge([("step", step)], *n as f64)?;
        }
        let mut failures = family(
            encoder,
            "prism_gateway_migration_step_failures",
            "Attempts at this gateway's part of a migration step that failed and will be retried, by step \
             (the migration's reason says why)",
            MetricType::Counter,
        )?;
        for (i, step) in MIGRATION_STEPS.iter().enumerate().skip(1) {
            failures.counter([("step", step)], m.step_failures(i))?;
        }
        let counters = [
            ("prism_gateway_migration_copied_records", "Records this gateway's backfills copied", &m.records_copied),
            ("prism_gateway_migration_copied_bytes", "Bytes this gateway's backfills copied", &m.bytes_copied),
        ];
        for (name, help, n) in counters {
            family(encoder, name, help, MetricType::Counter)?.counter([], n.load(Ordering::Relaxed))?;
        }
        let mut shadow = family(
            encoder,
            "prism_gateway_migration_shadow_reads",
            "Reads sent to both sides of a migration at VERIFY, by result (differ: still different when read again)",
            MetricType::Counter,
        )?;
        shadow.counter([("result", "same")], m.shadow_same.load(Ordering::Relaxed))?;
        shadow.counter([("result", "differ")], m.shadow_differ.load(Ordering::Relaxed))?;
        let mut compared = family(
            encoder,
            "prism_gateway_migration_comparisons",
            "Full comparisons of a migration's sides at VERIFY this gateway ran, by result",
            MetricType::Counter,
        )?;
        compared.counter([("result", "same")], m.compared_same.load(Ordering::Relaxed))?;
        compared.counter([("result", "differ")], m.compared_differ.load(Ordering::Relaxed))?;
        Ok(())
    }

    fn refusals(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let refusals = &self.sources.metrics.refusals;
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
        let b = &self.sources.metrics.backend;
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

    /// Client connections and what the connection and message limits
    /// refused (`transport.rs`).
    fn connections(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let c = &self.sources.connections;
        let mut f = family(
            encoder,
            "prism_gateway_connections",
            "Client connections open now, and the most that may be (limits.max_connections)",
            MetricType::Gauge,
        )?;
        f.gauge([("state", "open")], c.open() as f64)?;
        f.gauge([("state", "max")], c.max() as f64)?;
        let mut f = family(
            encoder,
            "prism_gateway_connections_closed",
            "Client connections the gateway closed: over limits.max_connections, or no HTTP/2 preface within limits.handshake_timeout_ms",
            MetricType::Counter,
        )?;
        f.counter([("reason", "max_connections")], c.refused.load(Ordering::Relaxed))?;
        f.counter([("reason", "handshake_timeout")], c.handshake_timeouts.load(Ordering::Relaxed))?;
        let mut f = family(
            encoder,
            "prism_gateway_request_bodies_refused",
            "Requests refused before decoding: a message above limits.max_message_bytes, or a body not in within limits.request_read_timeout_ms",
            MetricType::Counter,
        )?;
        f.counter([("reason", "max_message_bytes")], c.oversized.load(Ordering::Relaxed))?;
        f.counter([("reason", "request_read_timeout")], c.read_timeouts.load(Ordering::Relaxed))?;
        Ok(())
    }

    /// Pools and producers, as the plugins report them.
    fn clients(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats: Vec<_> = BACKENDS
            .iter()
            .filter_map(|b| {
                self.sources.plugins.get(*b).map(|p| (prism_proto::capabilities::backend_name(*b), p.client_stats()))
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
        let shared = &self.sources;
        let snapshot = shared.metadata.load();
        let slot = Window::slot(shared.quotas.clock().now_ms());
        let mut f = family(
            encoder,
            "prism_gateway_quota_utilization_ratio",
            "Used fraction of a quota over the last second (rates), now (concurrency, open tails), as last measured (storage) or as the namespace's spec asks (partitions, retention), of the limit this gateway enforces",
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
            let tenant = entry.tenant();
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
            streams(&mut f, ["namespace", tenant, name.as_str()], &tracker, &limits, slot)?;
            // What the spec asks for against what the namespace's and its
            // tenant's quotas allow (checked by the control plane when the
            // spec is written), labelled with the namespace either way.
            let tenant_quotas = snapshot.tenant(tenant).and_then(|t| t.quotas.as_ref());
            let (partitions, retention) = spec_asks(&entry.ns.spec);
            for (scope, quotas) in [("namespace", entry.ns.spec.quotas.as_ref()), ("tenant", tenant_quotas)] {
                let labels =
                    |quota| [("scope", scope), ("tenant", tenant), ("namespace", name.as_str()), ("quota", quota)];
                if let Some(r) = quotas.and_then(|q| limited(q.max_partitions)).and_then(|l| ratio(partitions, l)) {
                    f.gauge(labels("max_partitions"), r)?;
                }
                let max_retention = quotas.and_then(|q| limited(q.max_retention_seconds));
                if let (Some(retention), Some(limit)) = (retention, max_retention)
                    && let Some(r) = ratio(retention, limit)
                {
                    f.gauge(labels("max_retention_seconds"), r)?;
                }
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
            streams(&mut f, ["tenant", tenant.as_str(), ""], &tracker, &limits, slot)?;
        }
        Ok(())
    }
}

/// The StreamBus quotas a tracker counts, labelled `[scope, tenant,
/// namespace]`: events and event bytes per second (TimeSeries writes),
/// and open tails.
fn streams(
    f: &mut Family<'_>,
    [scope, tenant, namespace]: [&str; 3],
    tracker: &crate::quota::Tracker,
    limits: &crate::quota::Limits,
    slot: u32,
) -> Result<(), std::fmt::Error> {
    use crate::quota::Metric;
    let labels = |quota| [("scope", scope), ("tenant", tenant), ("namespace", namespace), ("quota", quota)];
    let events = tracker.events().map(|w| w.usage(slot)).unwrap_or_default();
    for (metric, quota) in [(Metric::Requests, "events_per_second"), (Metric::WriteBytes, "event_bytes_per_second")] {
        if let Some(r) = ratio(events.get(metric), tracker.effective(limits.events(metric))) {
            f.gauge(labels(quota), r)?;
        }
    }
    if let Some(r) = ratio(u64::from(tracker.tails()), tracker.effective(limits.open_tails)) {
        f.gauge(labels("open_tails"), r)?;
    }
    Ok(())
}

/// A quota field's limit, `None` when unlimited or unset.
fn limited(v: Option<i64>) -> Option<u64> {
    v.and_then(|v| u64::try_from(v).ok())
}

/// What a namespace spec asks for that quotas cap: its partitions, and its
/// TimeSeries retention in seconds (`None`: kept forever, or KeyValue).
fn spec_asks(spec: &prism_proto::control::NamespaceSpec) -> (u64, Option<u64>) {
    let backend = prism_proto::control::Backend::try_from(spec.backend).ok().and_then(prism_proto::backends::describe);
    let partitions = backend.map_or(1, |b| b.partitions(spec.backend_config.as_deref()).0);
    let time_series = spec.abstraction == prism_proto::control::Abstraction::TimeSeries as i32;
    let retention = spec
        .policies
        .as_deref()
        .and_then(|p| p.retention.as_ref())
        .filter(|d| time_series && d.seconds > 0)
        .and_then(|d| u64::try_from(d.seconds).ok());
    (u64::from(partitions), retention)
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
