//! The control plane's Prometheus metrics: RPCs by method and gRPC code
//! (an HTTP-level layer on the server, [`RpcMetricsLayer`], reading
//! `grpc-status` from the response headers or trailers), connected
//! watchers, commits and store errors ([`ObservedStore`], a [`Store`]
//! that counts what it delegates; `ControlPlane::new` wraps every store in
//! one), the current revision and the live
//! shard instances (followed from the store's delta stream, so with
//! several replicas each sees every replica's commits), and expired
//! leases.
//!
//! Labels are closed sets: method names come from the service's own
//! descriptor (a path that is not one of them is `other`, so a client
//! cannot mint label values), codes are the 17 gRPC codes, store
//! operations are the [`Store`] trait's methods.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use async_trait::async_trait;
use prism_proto::control::{AuditEvent, Delta, Namespace, Shard, Tenant, change};
use prism_telemetry::histogram::LatencyHistogram;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use tokio::sync::mpsc;

use crate::error::Result;
use crate::store::bus::Recv;
use crate::store::{AuditFilter, Changes, Committed, SnapshotPart, Store, Txn};

const CODES: usize = prism_telemetry::GRPC_CODES.len();
const SERVICE_PREFIX: &str = "/prism.control.v1.ControlPlaneService/";
/// The method label of any other path (health, reflection, unknown).
const OTHER: &str = "other";

/// The store operations, as the `operation` label of store errors.
const STORE_OPS: [&str; 13] = [
    "revision",
    "get_tenant",
    "get_namespace",
    "list_tenants",
    "list_namespaces",
    "list_shards",
    "live_namespaces",
    "commit",
    "snapshot",
    "changes_since",
    "append_audit",
    "list_audit",
    "subscribe",
];

fn store_op(name: &str) -> usize {
    STORE_OPS.iter().position(|o| *o == name).unwrap_or(0)
}

/// The method names of `ControlPlaneService`, read from its descriptor.
fn methods() -> Vec<String> {
    use prost::Message;
    let set = prost_types::FileDescriptorSet::decode(prism_proto::FILE_DESCRIPTOR_SET).unwrap_or_default();
    let mut names: Vec<String> = set
        .file
        .iter()
        .filter(|f| f.package() == "prism.control.v1")
        .flat_map(|f| f.service.iter())
        .filter(|s| s.name() == "ControlPlaneService")
        .flat_map(|s| s.method.iter().map(|m| m.name().to_owned()))
        .collect();
    names.sort();
    names
}

/// What the control plane counts.
#[derive(Debug)]
pub struct ControlPlaneMetrics {
    methods: Vec<String>,
    /// By method (the last is [`OTHER`]) and code.
    rpcs: Vec<[AtomicU64; CODES]>,
    /// Time to the response's headers (for a stream, to its start).
    rpc_latency: Vec<LatencyHistogram>,
    watchers: AtomicI64,
    commit: LatencyHistogram,
    store_errors: [AtomicU64; STORE_OPS.len()],
    revision: AtomicU64,
    /// Registered instances per shard, from the delta stream.
    instances: Mutex<HashMap<String, usize>>,
    expired_leases: AtomicU64,
}

impl Default for ControlPlaneMetrics {
    fn default() -> Self {
        let methods = methods();
        let n = methods.len() + 1;
        Self {
            methods,
            rpcs: (0..n).map(|_| Default::default()).collect(),
            rpc_latency: (0..n).map(|_| LatencyHistogram::default()).collect(),
            watchers: AtomicI64::new(0),
            commit: LatencyHistogram::default(),
            store_errors: Default::default(),
            revision: AtomicU64::new(0),
            instances: Mutex::default(),
            expired_leases: AtomicU64::new(0),
        }
    }
}

impl ControlPlaneMetrics {
    fn method(&self, path: &str) -> usize {
        path.strip_prefix(SERVICE_PREFIX)
            .and_then(|m| self.methods.iter().position(|known| known == m))
            .unwrap_or(self.methods.len())
    }

    fn method_name(&self, i: usize) -> &str {
        self.methods.get(i).map_or(OTHER, String::as_str)
    }

    /// Counts a finished RPC.
    pub fn rpc_done(&self, method: usize, code: i32) {
        let code = usize::try_from(code).ok().filter(|c| *c < CODES).unwrap_or(2);
        if let Some(counts) = self.rpcs.get(method) {
            counts[code].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// RPCs of `method` (its name) answered with `code`.
    pub fn rpcs(&self, method: &str, code: i32) -> u64 {
        let i = self.methods.iter().position(|m| m == method).unwrap_or(self.methods.len());
        let code = usize::try_from(code).unwrap_or(2);
        self.rpcs.get(i).and_then(|c| c.get(code)).map_or(0, |n| n.load(Ordering::Relaxed))
    }

    /// A watcher connected; it counts until the guard is dropped.
    pub fn watcher(self: &Arc<Self>) -> WatcherGuard {
        self.watchers.fetch_add(1, Ordering::Relaxed);
        WatcherGuard(self.clone())
    }

    pub fn watchers(&self) -> i64 {
        self.watchers.load(Ordering::Relaxed)
    }

    pub fn leases_expired(&self, n: usize) {
        self.expired_leases.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Follows a committed delta: the revision, and shard instances.
    pub fn applied(&self, delta: &Delta) {
        self.revision.fetch_max(delta.revision, Ordering::Relaxed);
        let mut instances = self.instances.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for c in &delta.changes {
            match &c.change {
                Some(change::Change::Shard(s)) => {
                    instances.insert(s.shard_id.clone(), s.instances.len());
                }
                Some(change::Change::ShardRemoved(id)) => {
                    instances.remove(id);
                }
                _ => {}
            }
        }
    }

    /// Starts over from what the store holds now.
    pub fn reset(&self, revision: u64, shards: &[Shard]) {
        self.revision.fetch_max(revision, Ordering::Relaxed);
        let mut instances = self.instances.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *instances = shards.iter().map(|s| (s.shard_id.clone(), s.instances.len())).collect();
    }

    pub fn shard_instances(&self) -> usize {
        self.instances.lock().map_or(0, |i| i.values().sum())
    }
}

/// Holds one watcher in the `prism_control_plane_watchers` gauge.
#[derive(Debug)]
pub struct WatcherGuard(Arc<ControlPlaneMetrics>);

impl Drop for WatcherGuard {
    fn drop(&mut self) {
        self.0.watchers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Keeps the revision and shard-instance gauges on the store's deltas
/// (every replica's, with a shared store) until `stop`.
pub async fn follow(
    store: Arc<dyn Store>,
    metrics: Arc<ControlPlaneMetrics>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let mut deltas = store.subscribe();
        // Read after subscribing, so nothing falls between the two.
        match (store.revision().await, store.list_shards().await) {
            (Ok(revision), Ok(shards)) => metrics.reset(revision, &shards),
            (Err(e), _) | (_, Err(e)) => {
                tracing::debug!(error = %e, "metrics: cannot read the store's revision and shards")
            }
        }
        loop {
            tokio::select! {
                delta = deltas.recv() => match delta {
                    Recv::Delta(delta) => metrics.applied(&delta),
                    // Fell behind: read the state again.
                    Recv::Lagged => break,
                    Recv::Closed => return,
                },
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }
}

/// A [`Store`] that times commits and counts failed operations.
pub struct ObservedStore {
    inner: Arc<dyn Store>,
    metrics: Arc<ControlPlaneMetrics>,
}

impl ObservedStore {
    pub fn new(inner: Arc<dyn Store>, metrics: Arc<ControlPlaneMetrics>) -> Self {
        Self { inner, metrics }
    }

    fn counted<T>(&self, op: &str, result: Result<T>) -> Result<T> {
        if result.is_err() {
            self.metrics.store_errors[store_op(op)].fetch_add(1, Ordering::Relaxed);
        }
        result
    }
}

#[async_trait]
impl Store for ObservedStore {
    async fn revision(&self) -> Result<u64> {
        self.counted("revision", self.inner.revision().await)
    }

    async fn get_tenant(&self, id: &str) -> Result<Option<Tenant>> {
        self.counted("get_tenant", self.inner.get_tenant(id).await)
    }

    async fn get_namespace(&self, name: &str) -> Result<Option<Namespace>> {
        self.counted("get_namespace", self.inner.get_namespace(name).await)
    }

    async fn list_tenants(&self, after: &str, limit: usize) -> Result<Vec<Tenant>> {
        self.counted("list_tenants", self.inner.list_tenants(after, limit).await)
    }

    async fn list_namespaces(&self, tenant: &str, after: &str, limit: usize) -> Result<Vec<Namespace>> {
        self.counted("list_namespaces", self.inner.list_namespaces(tenant, after, limit).await)
    }

    async fn list_shards(&self) -> Result<Vec<Shard>> {
        self.counted("list_shards", self.inner.list_shards().await)
    }

    async fn live_namespaces(&self, tenant: &str) -> Result<u64> {
        self.counted("live_namespaces", self.inner.live_namespaces(tenant).await)
    }

    async fn commit(&self, txn: Txn) -> Result<Committed> {
        let start = Instant::now();
        let result = self.inner.commit(txn).await;
        self.metrics.commit.observe(start.elapsed());
        self.counted("commit", result)
    }

    async fn stream_snapshot(&self, parts: mpsc::Sender<SnapshotPart>) -> Result<()> {
        self.counted("snapshot", self.inner.stream_snapshot(parts).await)
    }

    async fn changes_since(&self, revision: u64, limit: usize) -> Result<Changes> {
        self.counted("changes_since", self.inner.changes_since(revision, limit).await)
    }

    async fn append_audit(&self, events: Vec<AuditEvent>) -> Result<()> {
        self.counted("append_audit", self.inner.append_audit(events).await)
    }

    async fn list_audit(&self, filter: AuditFilter, limit: usize) -> Result<Vec<AuditEvent>> {
        self.counted("list_audit", self.inner.list_audit(filter, limit).await)
    }

    fn subscribe(&self) -> crate::store::bus::Receiver {
        self.inner.subscribe()
    }
}

/// Counts every gRPC call of the server it wraps.
#[derive(Debug, Clone)]
pub struct RpcMetricsLayer {
    metrics: Arc<ControlPlaneMetrics>,
}

impl RpcMetricsLayer {
    pub fn new(metrics: Arc<ControlPlaneMetrics>) -> Self {
        Self { metrics }
    }
}

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetrics { metrics: self.metrics.clone(), inner }
    }
}

#[derive(Debug, Clone)]
pub struct RpcMetrics<S> {
    metrics: Arc<ControlPlaneMetrics>,
    inner: S,
}

fn grpc_status(headers: &http::HeaderMap) -> Option<i32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

impl<S, B, RB> tower::Service<http::Request<B>> for RpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    RB: http_body::Body + Send + 'static,
{
    type Response = http::Response<CountedBody<RB>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = std::result::Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let metrics = self.metrics.clone();
        let method = metrics.method(request.uri().path());
        let start = Instant::now();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            if let Some(h) = metrics.rpc_latency.get(method) {
                h.observe(start.elapsed());
            }
            // A trailers-only response (every error tonic returns) has its
            // status in the headers; otherwise it comes in the trailers.
            let pending = match grpc_status(response.headers()) {
                Some(code) => {
                    metrics.rpc_done(method, code);
                    None
                }
                None => Some((metrics, method)),
            };
            Ok(response.map(|body| CountedBody { inner: Box::pin(body), pending }))
        })
    }
}

/// A response body that counts its RPC when its trailers pass (or as
/// CANCELLED when dropped before them).
pub struct CountedBody<B> {
    inner: Pin<Box<B>>,
    pending: Option<(Arc<ControlPlaneMetrics>, usize)>,
}

impl<B> CountedBody<B> {
    fn done(&mut self, code: i32) {
        if let Some((metrics, method)) = self.pending.take() {
            metrics.rpc_done(method, code);
        }
    }
}

impl<B> Drop for CountedBody<B> {
    fn drop(&mut self) {
        self.done(1);
    }
}

impl<B: http_body::Body> http_body::Body for CountedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let frame = std::task::ready!(self.inner.as_mut().poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(code) = f.trailers_ref().and_then(grpc_status) {
                    self.done(code);
                }
            }
            // The stream broke: UNKNOWN, as a client would see it.
            Some(Err(_)) => self.done(2),
            // Ended without trailers: nothing more is coming.
            None => self.done(2),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Turns the control plane's state into the exposition, on each scrape.
#[derive(Debug)]
pub struct ControlPlaneCollector {
    metrics: Arc<ControlPlaneMetrics>,
}

/// The registry a control plane's metrics listener serves.
pub fn registry(metrics: &Arc<ControlPlaneMetrics>) -> prometheus_client::registry::Registry {
    let mut registry = prometheus_client::registry::Registry::default();
    prism_telemetry::process::register(&mut registry);
    registry.register_collector(Box::new(ControlPlaneCollector { metrics: metrics.clone() }));
    registry
}

impl Collector for ControlPlaneCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::result::Result<(), std::fmt::Error> {
        let m = &*self.metrics;
        let n = m.rpcs.len();
        let mut f = encoder.encode_descriptor(
            "prism_control_plane_rpcs",
            "Control-plane RPCs by method and gRPC status code",
            None,
            MetricType::Counter,
        )?;
        for i in 0..n {
            for (code, count) in prism_telemetry::GRPC_CODES.iter().zip(&m.rpcs[i]) {
                let count = count.load(Ordering::Relaxed);
                if count > 0 {
                    ConstCounter::new(count)
                        .encode(f.encode_family(&[("method", m.method_name(i)), ("code", code)])?)?;
                }
            }
        }
        let mut f = encoder.encode_descriptor(
            "prism_control_plane_rpc_duration_seconds",
            "Time to answer a control-plane RPC (for a stream, to its first response)",
            None,
            MetricType::Histogram,
        )?;
        for (i, h) in m.rpc_latency.iter().enumerate() {
            if h.count() > 0 {
                h.encode_into(f.encode_family(&[("method", m.method_name(i))])?)?;
            }
        }
        let mut f = encoder.encode_descriptor(
            "prism_control_plane_store_errors",
            "Failed operations of the metadata store, by operation",
            None,
            MetricType::Counter,
        )?;
        for (op, count) in STORE_OPS.iter().zip(&m.store_errors) {
            ConstCounter::new(count.load(Ordering::Relaxed)).encode(f.encode_family(&[("operation", *op)])?)?;
        }
        m.commit.encode_into(encoder.encode_descriptor(
            "prism_control_plane_commit_duration_seconds",
            "Time of a metadata commit (conditions checked, written, logged, audited)",
            None,
            MetricType::Histogram,
        )?)?;
        let expired = ConstCounter::new(m.expired_leases.load(Ordering::Relaxed));
        expired.encode(encoder.encode_descriptor(
            "prism_control_plane_expired_leases",
            "Gateway instances removed because their lease expired",
            None,
            MetricType::Counter,
        )?)?;
        let gauges = [
            ("prism_control_plane_watchers", "Watch streams open (gateways, clients)", m.watchers() as f64),
            (
                "prism_control_plane_revision",
                "The metadata's current revision",
                m.revision.load(Ordering::Relaxed) as f64,
            ),
            (
                "prism_control_plane_shard_instances",
                "Gateway instances registered with a live lease",
                m.shard_instances() as f64,
            ),
        ];
        for (name, help, value) in gauges {
            let g = ConstGauge::new(value);
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_labels_are_the_services_own() {
        let m = ControlPlaneMetrics::default();
        assert!(m.methods.iter().any(|n| n == "CreateTenant"), "{:?}", m.methods);
        let create = m.method("/prism.control.v1.ControlPlaneService/CreateTenant");
        assert_eq!(m.method_name(create), "CreateTenant");
        for path in ["/prism.control.v1.ControlPlaneService/Nope", "/grpc.health.v1.Health/Check", "/x"] {
            assert_eq!(m.method_name(m.method(path)), OTHER, "{path}");
        }
    }

    #[test]
    fn shard_instances_follow_deltas() {
        let m = ControlPlaneMetrics::default();
        let shard = |id: &str, n: usize| {
            change::Change::Shard(Shard { shard_id: id.into(), instances: vec![Default::default(); n], revision: 0 })
        };
        let delta = |revision, changes: Vec<change::Change>| Delta {
            revision,
            changes: changes.into_iter().map(|c| prism_proto::control::Change { change: Some(c) }).collect(),
            commit_time: None,
        };
        m.applied(&delta(3, vec![shard("a", 2), shard("b", 1)]));
        assert_eq!((m.shard_instances(), m.revision.load(Ordering::Relaxed)), (3, 3));
        m.applied(&delta(4, vec![change::Change::ShardRemoved("a".into())]));
        assert_eq!(m.shard_instances(), 1);
    }
}
