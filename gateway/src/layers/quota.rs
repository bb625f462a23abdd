//! Quotas that depend on the namespace and its tenant, after
//! authorization found both:
//!
//! 1. the largest item: the namespace's `max_item_size_bytes` policy,
//!    capped by the namespace's and the tenant's `max_item_size_bytes`
//!    quotas → `INVALID_ARGUMENT` with the field;
//! 2. rates, concurrency and storage, by the [`QuotaRegistry`] →
//!    `RESOURCE_EXHAUSTED` with `RetryInfo` and `QuotaFailure`. The
//!    admission is held until the response is ready (concurrency), and the
//!    bytes the response returns are charged to the read rate then. A
//!    write that adds bytes is refused while the namespace's or its
//!    tenant's last storage measurement is at its quota ([`crate::quota`]).
//!    A TimeSeries write also counts its events and their bytes
//!    (`events_per_second`, `event_bytes_per_second`), and a tail holds an
//!    `open_tails` slot for as long as its stream lives.
//!
//! Namespaces per tenant are not enforced here: the control plane refuses
//! a tenant's namespace past `max_namespaces` at creation.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::StreamExt;
use futures_util::future::{Either, Ready, ready};
use prism_proto::control::QuotaSet;
use prism_proto::kv::mutation;
use tower::{Layer, Service};

use crate::call::{Call, Request, Response};
use crate::error::{GatewayError, Result};
use crate::metrics::{GatewayMetrics, Layer as RefusingLayer};
use crate::quota::{Admission, Cost, QuotaRegistry};
use crate::snapshot::NamespaceEntry;

/// A namespace's item size when its policy says 0.
pub const DEFAULT_MAX_ITEM_BYTES: i64 = 1 << 20;

/// Builds [`Quota`] services sharing one registry.
#[derive(Debug, Clone)]
pub struct QuotaLayer {
    registry: Arc<QuotaRegistry>,
    metrics: Option<Arc<GatewayMetrics>>,
}

impl QuotaLayer {
    pub fn new(registry: Arc<QuotaRegistry>) -> Self {
        Self { registry, metrics: None }
    }

    /// Counts refusals, by quota, into the gateway's metrics.
    pub fn counting(mut self, metrics: Arc<GatewayMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }
}

impl<I> Layer<I> for QuotaLayer {
    type Service = Quota<I>;

    fn layer(&self, inner: I) -> Self::Service {
        Quota { registry: self.registry.clone(), metrics: self.metrics.clone(), inner }
    }
}

#[derive(Debug, Clone)]
pub struct Quota<I> {
    registry: Arc<QuotaRegistry>,
    metrics: Option<Arc<GatewayMetrics>>,
    inner: I,
}

/// Counts a refusal by the layer and in the namespace's series: by quota,
/// and whose limit it was (the namespace's or its tenant's).
fn count_refusal(metrics: &GatewayMetrics, entry: &NamespaceEntry, e: &GatewayError) {
    let (quota, tenant) = match e {
        // Item sizes are the only INVALID_ARGUMENT of this layer.
        GatewayError::InvalidArgument { .. } => ("max_item_size_bytes", false),
        GatewayError::QuotaExceeded { quota, subject, .. } => (*quota, subject.starts_with("tenant:")),
        _ => return,
    };
    metrics.refusals.record(RefusingLayer::Quota, quota);
    entry.request_series(&metrics.namespaces).quota_refused(quota, tenant);
}

/// The largest key + value the namespace accepts (the tenant's quota is
/// applied by the layer, which knows the tenant).
pub fn max_item_bytes(entry: &NamespaceEntry) -> u64 {
    let spec = &entry.ns.spec;
    let policy = spec.policies.as_deref().map_or(0, |p| p.max_item_size_bytes);
    let mut max = if policy > 0 { policy } else { DEFAULT_MAX_ITEM_BYTES };
    if let Some(q) = spec.quotas.as_ref().and_then(|q| q.max_item_size_bytes).filter(|q| *q >= 0) {
        max = max.min(q);
    }
    u64::try_from(max).unwrap_or(0)
}

/// An event's size: its items' keys and values and its tags.
pub fn event_bytes(e: &prism_proto::timeseries::Event) -> usize {
    e.items.iter().map(|i| i.key.len() + i.value.len()).sum::<usize>()
        + e.tags.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
}

fn item_bytes(item: &prism_proto::kv::Item) -> usize {
    item.key.len() + item.value.len()
}

/// The bytes a request writes: keys and values put, events written.
pub fn write_bytes(request: &Request) -> u64 {
    let bytes = match request {
        Request::Put(r) => r.items.iter().map(item_bytes).sum(),
        Request::Mutate(r) => r
            .mutations
            .iter()
            .map(|m| match &m.operation {
                Some(mutation::Operation::Put(it)) => item_bytes(it),
                _ => 0,
            })
            .sum(),
        Request::WriteSync(r) | Request::WriteBuffered(r) => r.events.iter().map(event_bytes).sum(),
        _ => 0,
    };
    bytes as u64
}

/// What a request costs the quotas up front: the bytes it writes, the
/// events it writes, whether it opens a tail.
pub fn cost(request: &Request) -> Cost {
    let events = match request {
        Request::WriteSync(r) | Request::WriteBuffered(r) => r.events.len() as u64,
        _ => 0,
    };
    Cost { write_bytes: write_bytes(request), events, tail: matches!(request, Request::Tail(_)) }
}

/// The bytes a response returns: keys and values, events.
pub fn read_bytes(response: &Response) -> u64 {
    let bytes: usize = match response {
        Response::Get(r) => r.items.iter().map(item_bytes).sum(),
        Response::Scan(r) => r.records.iter().flat_map(|rec| rec.items.iter()).map(item_bytes).sum(),
        Response::Read(r) => r.events.iter().map(event_bytes).sum(),
        Response::Search(r) => r.events.iter().map(event_bytes).sum(),
        _ => 0,
    };
    bytes as u64
}

/// Refuses an item or event over the size limit, with its field.
fn check_item_sizes(request: &Request, max: u64) -> Result<()> {
    let fits = |item: &prism_proto::kv::Item| item_bytes(item) as u64 <= max;
    // Field names are formatted only for a refusal: nothing is allocated
    // on the accepted path.
    let refuse = |field: String, item: &prism_proto::kv::Item| {
        let size = item_bytes(item);
        GatewayError::invalid(field, format!("item is {size} bytes, the namespace allows {max}"))
    };
    match request {
        Request::Put(r) => {
            if let Some((i, item)) = r.items.iter().enumerate().find(|(_, it)| !fits(it)) {
                return Err(refuse(format!("items[{i}].value"), item));
            }
        }
        Request::Mutate(r) => {
            let oversize = r.mutations.iter().enumerate().find_map(|(i, m)| match &m.operation {
                Some(mutation::Operation::Put(it)) if !fits(it) => Some((i, it)),
                _ => None,
            });
            if let Some((i, item)) = oversize {
                return Err(refuse(format!("mutations[{i}].put.value"), item));
            }
        }
        Request::WriteSync(r) | Request::WriteBuffered(r) => {
            if let Some((i, size)) = r.events.iter().map(event_bytes).enumerate().find(|(_, size)| *size as u64 > max) {
                return Err(GatewayError::invalid(
                    format!("events[{i}]"),
                    format!("event is {size} bytes, the namespace allows {max}"),
                ));
            }
        }
        _ => {}
    }
    Ok(())
}

/// The checks before the call: item sizes, then rates and concurrency.
pub fn admit(
    registry: &QuotaRegistry,
    entry: &NamespaceEntry,
    tenant_quotas: Option<&QuotaSet>,
    call: &Call,
) -> Result<Admission> {
    let mut max = max_item_bytes(entry);
    if let Some(q) = tenant_quotas.and_then(|q| q.max_item_size_bytes).and_then(|q| u64::try_from(q).ok()) {
        max = max.min(q);
    }
    check_item_sizes(&call.request, max)?;
    registry.admit(entry.admitting(), tenant_quotas, call.request.access(), cost(&call.request))
}

impl<I> Service<Call> for Quota<I>
where
    I: Service<Call, Response = Response, Error = GatewayError>,
    I::Future: Unpin,
{
    type Response = Response;
    type Error = GatewayError;
    type Future = Either<Ready<Result<Response>>, Admitted<I::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, call: Call) -> Self::Future {
        // The namespace and tenant authorization found, from its snapshot.
        let resolved = match call.resolved() {
            Ok(resolved) => resolved,
            Err(e) => return Either::Left(ready(Err(e))),
        };
        let entry = resolved.entry();
        match admit(&self.registry, entry, resolved.tenant.quotas.as_ref(), &call) {
            Ok(admission) => Either::Right(Admitted { inner: self.inner.call(call), admission: Some(admission) }),
            Err(e) => {
                if let Some(metrics) = &self.metrics {
                    count_refusal(metrics, entry, &e);
                }
                Either::Left(ready(Err(e)))
            }
        }
    }
}

/// The inner call of an admitted request; charges what the response read
/// and releases the admission when it is ready.
#[derive(Debug)]
pub struct Admitted<F> {
    inner: F,
    admission: Option<Admission>,
}

impl<F> Future for Admitted<F>
where
    F: Future<Output = Result<Response>> + Unpin,
{
    type Output = Result<Response>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let out = std::task::ready!(Pin::new(&mut this.inner).poll(cx));
        let Some(mut admission) = this.admission.take() else {
            return Poll::Ready(out);
        };
        Poll::Ready(match out {
            Ok(Response::Tail(stream)) => {
                // A tail's events are charged as they stream; its
                // concurrency slot, like its load-shedding permit, is
                // released once the stream is set up. Its `open_tails`
                // slots go with the stream, and are freed when it is
                // dropped.
                let charge = admission.reader();
                let slots = admission.take_tail();
                drop(admission);
                Ok(Response::Tail(
                    stream
                        .inspect(move |r| {
                            let _held = &slots;
                            if let Ok(r) = r {
                                charge.charge_read(r.events.iter().map(event_bytes).sum::<usize>() as u64);
                            }
                        })
                        .boxed(),
                ))
            }
            Ok(response) => {
                admission.charge_read(read_bytes(&response));
                Ok(response)
            }
            Err(e) => Err(e),
        })
    }
}

#[cfg(test)]
mod tests;
