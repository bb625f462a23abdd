//! One `tracing` span per traced request, with the OpenTelemetry
//! semantic-convention attributes (`rpc.system`, `rpc.service`,
//! `rpc.method`, `rpc.grpc.status_code`) and Prism's (`prism.tenant`,
//! `prism.namespace`, `prism.refused_by`), continuing the caller's W3C
//! trace when it sent one.
//!
//! What it costs: the span is at DEBUG, and exported spans are decided
//! once per request ([`prism_telemetry::trace::should_trace`]). With no
//! exporter and logs at INFO (the default), `debug_span!` makes a disabled
//! span and the request's future is passed on unboxed: nothing is
//! formatted or allocated. (It used to be an INFO span whose fields the
//! log subscriber formatted on every request, about 5 K instructions, for
//! log lines a request at INFO never writes.) An unsampled request with an
//! exporter on costs the decision only.

use std::task::{Context, Poll};

use futures_util::future::{BoxFuture, Either};
use prism_telemetry::trace::{REQUEST_TARGET, continue_trace, should_trace};
use tower::{Layer, Service};
use tracing::Instrument;

use crate::call::{Call, Request, Response};
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

/// The gRPC service of a request (`rpc.service`).
fn service(request: &Request) -> &'static str {
    match request.abstraction() {
        prism_proto::control::Abstraction::TimeSeries => "prism.timeseries.v1.TimeSeriesService",
        _ => "prism.kv.v1.KeyValueService",
    }
}

impl<I> Service<Call> for Trace<I>
where
    I: Service<Call, Response = Response, Error = GatewayError> + Send + 'static,
    I::Future: Send + 'static,
{
    type Response = Response;
    type Error = GatewayError;
    type Future = Either<I::Future, BoxFuture<'static, Result<Response>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, call: Call) -> Self::Future {
        if !should_trace(call.trace.as_ref()) {
            return Either::Left(self.inner.call(call));
        }
        let namespace = call.request.namespace();
        let tenant = namespace.split_once('/').map_or("", |(t, _)| t);
        let rpc = call.request.rpc();
        let service = service(&call.request);
        let span = tracing::debug_span!(
            target: REQUEST_TARGET,
            "request",
            otel.name = %format_args!("{service}/{rpc}"),
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            rpc.system = "grpc",
            rpc.service = service,
            rpc.method = rpc,
            rpc.grpc.status_code = tracing::field::Empty,
            prism.tenant = %tenant,
            prism.namespace = %namespace,
            prism.refused_by = tracing::field::Empty,
            prism.error_kind = tracing::field::Empty,
        );
        if span.is_disabled() {
            return Either::Left(self.inner.call(call));
        }
        if let Some(parent) = &call.trace {
            continue_trace(&span, parent);
        }
        // The synchronous checks run inside `call`: in the span, so a
        // refusal can name its layer on it.
        let fut = span.in_scope(|| self.inner.call(call));
        Either::Right(Box::pin(
            async move {
                let result = fut.await;
                let span = tracing::Span::current();
                match &result {
                    Ok(_) => {
                        span.record("rpc.grpc.status_code", 0);
                    }
                    Err(e) => {
                        let kind = e.kind();
                        span.record("rpc.grpc.status_code", e.code() as i32);
                        span.record("prism.error_kind", kind.as_str());
                        // OpenTelemetry's server-span rule: only server
                        // faults are errors, not the caller's mistakes.
                        if matches!(
                            kind,
                            prism_proto::error::ErrorKind::Internal | prism_proto::error::ErrorKind::Unavailable
                        ) {
                            span.record("otel.status_code", "ERROR");
                        }
                    }
                }
                tracing::debug!("request done");
                result
            }
            .instrument(span),
        ))
    }
}
