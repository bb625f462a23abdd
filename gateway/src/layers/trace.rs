//! One `tracing` span per request with its RPC, tenant, namespace and
//! outcome (the error kind: a bounded label).

use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use tower::{Layer, Service};
use tracing::Instrument;

use crate::call::{Call, Response};
use crate::error::{GatewayError, Result};

#[derive(Debug, Clone, Copy)]
pub struct TraceLayer;

impl<I> Layer<I> for TraceLayer {
    type Service = Trace<I>;

    fn layer(&self, inner: I) -> Self::Service {
        Trace { inner }
    }
}

#[derive(Debug, Clone)]
pub struct Trace<I> {
    inner: I,
}

impl<I> Service<Call> for Trace<I>
where
    I: Service<Call, Response = Response, Error = GatewayError> + Send + 'static,
    I::Future: Send + 'static,
{
    type Response = Response;
    type Error = GatewayError;
    type Future = BoxFuture<'static, Result<Response>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, call: Call) -> Self::Future {
        let namespace = call.request.namespace();
        let tenant = namespace.split_once('/').map_or("", |(t, _)| t);
        let span = tracing::info_span!(
            "request",
            rpc = call.request.rpc(),
            tenant = %tenant,
            namespace = %namespace,
            status = tracing::field::Empty,
        );
        let fut = self.inner.call(call);
        Box::pin(
            async move {
                let result = fut.await;
                let status = result.as_ref().map_or_else(|e| e.kind().as_str(), |_| "ok");
                tracing::Span::current().record("status", status);
                tracing::debug!("request done");
                result
            }
            .instrument(span),
        )
    }
}
