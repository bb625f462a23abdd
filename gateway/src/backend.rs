//! How this gateway's backend plugins are called: every call to a plugin
//! goes through [`observed`], timed into the backend metrics (by backend
//! and operation, errors by kind), and, when the request is traced,
//! inside a child span with OpenTelemetry's database or messaging
//! attributes (`db.system`, `db.operation`, `messaging.system`,
//! `messaging.operation`, …).
//!
//! [`write_context`] is what a TimeSeries write stores with its events
//! for consumers: the backend span's trace context when it is exported,
//! else the caller's `traceparent` as it came.

use std::future::Future;
use std::time::Instant;

use prism_plugin_api::ts::WriteContext;
use prism_proto::control::Backend;
use prism_telemetry::trace::{BACKEND_TARGET, TraceParent, traceparent_of};
use tracing::Instrument;

use crate::metrics::{GatewayMetrics, Op};
use crate::snapshot::NamespaceEntry;

/// The backend of `entry`'s namespace.
pub fn backend_of(entry: &NamespaceEntry) -> Backend {
    Backend::try_from(entry.ns.spec.backend).unwrap_or(Backend::Unspecified)
}

/// `db.system` / `messaging.system` of a backend, and whether it is a
/// message broker, as its description says.
fn system(backend: Backend) -> (&'static str, bool) {
    prism_proto::backends::describe(backend).map_or(("other", false), |d| (d.telemetry.system, d.telemetry.messaging))
}

/// The span of one backend call, a child of the request's; none when the
/// request is not traced (then nothing is spent on it).
fn span(backend: Backend, op: Op, entry: &NamespaceEntry) -> tracing::Span {
    if tracing::Span::current().is_none() {
        return tracing::Span::none();
    }
    let (system, messaging) = system(backend);
    let kind = match (messaging, op) {
        (true, Op::Write) => "producer",
        (true, _) => "consumer",
        (false, _) => "client",
    };
    let span = tracing::debug_span!(
        target: BACKEND_TARGET,
        "backend",
        otel.name = %format_args!("{} {}", op.as_str(), prism_proto::capabilities::backend_name(backend)),
        otel.kind = kind,
        otel.status_code = tracing::field::Empty,
        db.system = tracing::field::Empty,
        db.system.name = tracing::field::Empty,
        db.operation = tracing::field::Empty,
        db.operation.name = tracing::field::Empty,
        db.namespace = tracing::field::Empty,
        messaging.system = tracing::field::Empty,
        messaging.operation = tracing::field::Empty,
        messaging.operation.type = tracing::field::Empty,
        prism.namespace = %entry.ns.name,
        error.type = tracing::field::Empty,
    );
    if messaging {
        let operation = if op == Op::Write { "publish" } else { "receive" };
        span.record("messaging.system", system);
        span.record("messaging.operation", operation);
        span.record("messaging.operation.type", if op == Op::Write { "send" } else { "receive" });
    } else {
        span.record("db.system", system);
        span.record("db.system.name", system);
        span.record("db.operation", op.as_str());
        span.record("db.operation.name", op.as_str());
        span.record("db.namespace", entry.ns.name.as_str());
    }
    span
}

/// Runs the plugin call `make` builds (it is given the call's span, for
/// [`write_context`]), timed into `metrics` and traced.
pub async fn observed<T, F, Fut>(
    metrics: &GatewayMetrics,
    entry: &NamespaceEntry,
    op: Op,
    make: F,
) -> prism_plugin_api::Result<T>
where
    F: FnOnce(&tracing::Span) -> Fut,
    Fut: Future<Output = prism_plugin_api::Result<T>>,
{
    let backend = backend_of(entry);
    let span = span(backend, op, entry);
    let call = make(&span);
    let start = Instant::now();
    let out = call.instrument(span.clone()).await;
    let error = out.as_ref().err().map(prism_plugin_api::PluginError::kind);
    metrics.backend.record(backend, op, start.elapsed(), error);
    if let Some(kind) = error
        && !span.is_none()
    {
        span.record("otel.status_code", "ERROR");
        span.record("error.type", kind.as_str());
    }
    out
}

/// The trace context a write stores with its events: `span`'s when it is
/// exported, else the caller's as it came (so a caller's trace reaches
/// consumers even where this gateway exports nothing).
pub fn write_context(span: &tracing::Span, caller: Option<&TraceParent>) -> WriteContext {
    let exported = if prism_telemetry::trace::exporting() { traceparent_of(span) } else { None };
    match exported {
        Some((traceparent, tracestate)) => WriteContext { traceparent: Some(traceparent), tracestate },
        None => WriteContext {
            traceparent: caller.map(TraceParent::header),
            tracestate: caller.and_then(|c| c.tracestate.clone()),
        },
    }
}

/// Writes `events` to the namespace's sides (`NamespaceEntry::time_series_sides`):
/// the one it reads, then, while it migrates, the other. Durable on both
/// when it returns; a failure of either is the write's (the caller
/// writes again: events are idempotent by identity). `context` is the
/// trace context stored with them, given each backend call's span.
pub async fn write_events(
    plugins: &crate::plugins::Plugins,
    metrics: &GatewayMetrics,
    entry: &NamespaceEntry,
    events: &[prism_plugin_api::ts::Event],
    context: impl Fn(&tracing::Span) -> WriteContext,
) -> crate::error::Result<()> {
    let (first, also) = entry.time_series_sides(plugins)?;
    for side in std::iter::once(first).chain(also) {
        observed(metrics, entry, Op::Write, |span| {
            let context = context(span);
            async move { side.write_with(events, &context).await }
        })
        .await?;
    }
    Ok(())
}

/// Counts one shadow read (VERIFY) of `entry`'s migration `migration`:
/// in the namespace's counts its VERIFY report takes, and in the
/// metrics. A difference is logged, saying `what` was read; a read that
/// failed counts for nothing (a side that fails to answer says nothing
/// about its data).
pub fn count_shadow_read(
    metrics: &GatewayMetrics,
    entry: &NamespaceEntry,
    migration: u64,
    outcome: crate::error::Result<bool>,
    what: std::fmt::Arguments<'_>,
) {
    match outcome {
        Ok(same) => {
            if !same {
                tracing::warn!(namespace = %entry.ns.name, migration, read = %what, "a shadow read differed between source and target");
            }
            entry.local.shadow.count(migration, same);
            metrics.migration.shadow_read(same);
        }
        Err(e) => tracing::debug!(namespace = %entry.ns.name, error = %e, "a shadow read failed"),
    }
}
