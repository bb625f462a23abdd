//! Counts every request — refused or served, cancelled or timed out — by
//! RPC, tenant, namespace and gRPC code, with its latency, into the
//! namespace's [`RequestSeries`].
//!
//! Outermost, so it sees every refusal, and it measures the whole
//! pipeline. The label must be known even when an earlier layer refuses,
//! so it loads the call's snapshot itself ([`Call::load`]) and the layers
//! below, authorization first, decide on that same load; the series is
//! cached on the snapshot entry, so that is one map lookup and no label
//! hashing. When the request's future is dropped before it
//! finished (the client went away) it is counted as CANCELLED.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use tower::{Layer, Service};

use crate::call::{Call, Response};
use crate::error::{GatewayError, Result};
use crate::metrics::{GatewayMetrics, RequestSeries};
use crate::snapshot::Metadata;

/// gRPC's CANCELLED: the caller went away first.
const CANCELLED: i32 = 1;

#[derive(Debug, Clone)]
pub struct MetricsLayer {
    metadata: Arc<Metadata>,
    metrics: Arc<GatewayMetrics>,
}

impl MetricsLayer {
    pub fn new(metadata: Arc<Metadata>, metrics: Arc<GatewayMetrics>) -> Self {
        Self { metadata, metrics }
    }
}

impl<I> Layer<I> for MetricsLayer {
    type Service = Metrics<I>;

    fn layer(&self, inner: I) -> Self::Service {
        Metrics { metadata: self.metadata.clone(), metrics: self.metrics.clone(), inner }
    }
}

#[derive(Debug, Clone)]
pub struct Metrics<I> {
    metadata: Arc<Metadata>,
    metrics: Arc<GatewayMetrics>,
    inner: I,
}

impl<I> Service<Call> for Metrics<I>
where
    I: Service<Call, Response = Response, Error = GatewayError>,
    I::Future: Unpin,
{
    type Response = Response;
    type Error = GatewayError;
    type Future = Counted<I::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut call: Call) -> Self::Future {
        // The snapshot is loaded for the call here, and authorization
        // decides on the same load.
        let loaded = call.load(&self.metadata);
        let book = &self.metrics.namespaces;
        let series = loaded.entry.as_deref().map_or_else(|| book.unattributed(), |e| e.request_series(book));
        let pending = Pending { series, rpc: call.request.index(), start: Instant::now(), code: CANCELLED };
        Counted { inner: self.inner.call(call), pending }
    }
}

/// What is counted when the request ends, however it ends.
#[derive(Debug)]
struct Pending {
    series: Arc<RequestSeries>,
    rpc: usize,
    start: Instant,
    code: i32,
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.series.record(self.rpc, self.code, self.start.elapsed());
    }
}

/// A request on its way, counted when it completes or is dropped.
#[derive(Debug)]
pub struct Counted<F> {
    inner: F,
    pending: Pending,
}

impl<F> Future for Counted<F>
where
    F: Future<Output = Result<Response>> + Unpin,
{
    type Output = Result<Response>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let out = std::task::ready!(Pin::new(&mut this.inner).poll(cx));
        this.pending.code = match &out {
            Ok(_) => 0,
            Err(e) => e.code() as i32,
        };
        Poll::Ready(out)
    }
}
