//! The data-access audit (seeds/001): a namespace whose
//! `policies.data_access_audit_rate` is above 0 has that fraction of its
//! successful data requests written to the audit log — principal (as the
//! log names principals, `tenant:sub`), operation, namespace and client
//! address — through the same bounded, non-blocking [`AuditSink`] as the
//! refusals. Off by default; then it costs one comparison per request.
//!
//! Whether a request is sampled is drawn before it runs, so an unsampled
//! one takes the plain path; a sampled one is recorded when it succeeds
//! (a tail: when its stream is open). Refusals are audited where they
//! happen, whatever the rate.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{Layer, Service};

use crate::audit::AuditSink;
use crate::auth::caller;
use crate::call::{Call, Response};
use crate::error::{GatewayError, Result};
use crate::snapshot::NamespaceEntry;

/// Builds [`AccessAudit`] services sharing one sink.
#[derive(Debug, Clone)]
pub struct AccessAuditLayer {
    audit: Arc<AuditSink>,
}

impl AccessAuditLayer {
    pub fn new(audit: Arc<AuditSink>) -> Self {
        Self { audit }
    }
}

impl<I> Layer<I> for AccessAuditLayer {
    type Service = AccessAudit<I>;

    fn layer(&self, inner: I) -> Self::Service {
        AccessAudit { audit: self.audit.clone(), inner }
    }
}

#[derive(Debug, Clone)]
pub struct AccessAudit<I> {
    audit: Arc<AuditSink>,
    inner: I,
}

/// Whether to audit a request of a namespace with audit rate `rate`.
fn sampled(rate: f64) -> bool {
    // NaN and negatives (refused by the control plane anyway) audit nothing.
    rate >= 1.0 || (rate > 0.0 && rand::random::<f64>() < rate)
}

impl<I> Service<Call> for AccessAudit<I>
where
    I: Service<Call, Response = Response, Error = GatewayError>,
    I::Future: Unpin,
{
    type Response = Response;
    type Error = GatewayError;
    type Future = Audited<I::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, call: Call) -> Self::Future {
        let resolved = call.resolved.as_ref();
        let rate =
            resolved.and_then(|c| c.entry().ns.spec.policies.as_deref()).map_or(0.0, |p| p.data_access_audit_rate);
        let record = match resolved {
            Some(c) if sampled(rate) => Some(Record {
                audit: self.audit.clone(),
                principal: caller(&c.principal).name().to_string(),
                action: call.request.rpc(),
                namespace: c.entry().clone(),
                client: call.client_addr,
            }),
            _ => None,
        };
        Audited { inner: self.inner.call(call), record }
    }
}

/// What a sampled request's audit event says.
#[derive(Debug)]
struct Record {
    audit: Arc<AuditSink>,
    principal: String,
    action: &'static str,
    namespace: Arc<NamespaceEntry>,
    client: Option<SocketAddr>,
}

/// The inner call; records the sampled request once it succeeded.
#[derive(Debug)]
pub struct Audited<F> {
    inner: F,
    record: Option<Record>,
}

impl<F> Future for Audited<F>
where
    F: Future<Output = Result<Response>> + Unpin,
{
    type Output = Result<Response>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let out = std::task::ready!(Pin::new(&mut this.inner).poll(cx));
        if let (Ok(_), Some(r)) = (&out, this.record.take()) {
            r.audit.accessed(&r.principal, r.action, r.namespace.tenant(), &r.namespace.ns.name, r.client);
        }
        Poll::Ready(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_follows_the_rate() {
        assert!(!sampled(0.0));
        assert!(!sampled(-1.0));
        assert!(!sampled(f64::NAN));
        assert!(sampled(1.0));
        let hits = (0..10_000).filter(|_| sampled(0.25)).count();
        // 0.25 of 10 000 draws: 2 500 ± far more than 6 standard deviations (43).
        assert!((2_000..=3_000).contains(&hits), "{hits}");
    }
}
