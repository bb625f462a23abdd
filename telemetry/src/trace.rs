//! W3C trace context and the per-request tracing decision.
//!
//! Why the decision is taken here, once per request, instead of by the
//! OpenTelemetry SDK's sampler: `tracing-opentelemetry` builds its span
//! data (attributes, ids, timings) for every span it sees and only then
//! asks the sampler, so at 1 % sampling 99 % of requests would still pay
//! for a span they never export. A request that [`should_trace`] refuses
//! creates no span at all (the gateway makes `Span::none()`), and the SDK
//! runs with `AlwaysOn` for the spans that are made. The decision follows
//! `OTEL_TRACES_SAMPLER` exactly ([`Sampler`]).
//!
//! Only spans of [`REQUEST_TARGET`] and [`BACKEND_TARGET`] are exported,
//! so no other span of the process (or of a library) reaches the exporter
//! unsampled.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The target of the span a server opens per request.
pub const REQUEST_TARGET: &str = "prism::request";
/// The target of the span around a backend (plugin) call.
pub const BACKEND_TARGET: &str = "prism::backend";

/// The `traceparent` header (W3C Trace Context).
pub const TRACEPARENT: &str = "traceparent";
/// The `tracestate` header (W3C Trace Context).
pub const TRACESTATE: &str = "tracestate";

/// Longest `tracestate` passed on (the W3C limit is 32 members; 512 bytes
/// is what the specification asks every vendor to accept).
const MAX_TRACESTATE_BYTES: usize = 512;

/// An incoming trace context: a valid version-00 `traceparent` and the
/// `tracestate` that came with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub flags: u8,
    pub tracestate: Option<String>,
}

fn hex_bytes<const N: usize>(text: &str) -> Option<[u8; N]> {
    let bytes = text.as_bytes();
    if bytes.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

impl TraceParent {
    /// Parses a `traceparent` header (`00-<32 hex>-<16 hex>-<2 hex>`,
    /// lowercase, ids not all zero); anything else is ignored, as the W3C
    /// specification asks (a new trace starts).
    pub fn parse(traceparent: &str, tracestate: Option<&str>) -> Option<Self> {
        let mut parts = traceparent.trim().split('-');
        let (version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || version != "00" {
            return None;
        }
        let trace_id = hex_bytes::<16>(trace).filter(|id| *id != [0; 16])?;
        let span_id = hex_bytes::<8>(span).filter(|id| *id != [0; 8])?;
        let [flags] = hex_bytes::<1>(flags)?;
        let tracestate =
            tracestate.map(str::trim).filter(|s| !s.is_empty() && s.len() <= MAX_TRACESTATE_BYTES).map(str::to_owned);
        Some(Self { trace_id, span_id, flags, tracestate })
    }

    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    /// The `traceparent` header value.
    pub fn header(&self) -> String {
        format_traceparent(&self.trace_id, &self.span_id, self.flags)
    }

    fn span_context(&self) -> SpanContext {
        let state = self.tracestate.as_deref().and_then(|s| s.parse::<TraceState>().ok()).unwrap_or_default();
        SpanContext::new(
            TraceId::from_bytes(self.trace_id),
            SpanId::from_bytes(self.span_id),
            TraceFlags::new(self.flags),
            true,
            state,
        )
    }
}

fn format_traceparent(trace_id: &[u8; 16], span_id: &[u8; 8], flags: u8) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(55);
    out.push_str("00-");
    for b in trace_id {
        let _ = write!(out, "{b:02x}");
    }
    out.push('-');
    for b in span_id {
        let _ = write!(out, "{b:02x}");
    }
    let _ = write!(out, "-{flags:02x}");
    out
}

/// `OTEL_TRACES_SAMPLER`, as the decision [`should_trace`] takes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampler {
    AlwaysOn,
    AlwaysOff,
    /// A fraction of traces, chosen by trace id (so every service that
    /// sees a trace id decides the same).
    TraceIdRatio(f64),
    /// Follow the caller's `sampled` flag; without a caller, the inner rule.
    ParentBased(Root),
}

/// The rule of a parent-based sampler for requests without a parent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Root {
    AlwaysOn,
    AlwaysOff,
    TraceIdRatio(f64),
}

// The installed sampler, read on every request: a kind and a ratio in
// atomics, so the read is two relaxed loads and no lock.
const OFF: u8 = 0;
const ALWAYS_ON: u8 = 1;
const ALWAYS_OFF: u8 = 2;
const RATIO: u8 = 3;
const PARENT_ALWAYS_ON: u8 = 4;
const PARENT_ALWAYS_OFF: u8 = 5;
const PARENT_RATIO: u8 = 6;
static KIND: AtomicU8 = AtomicU8::new(OFF);
static RATIO_BITS: AtomicU64 = AtomicU64::new(0);

/// Makes `sampler` the decision of [`should_trace`]; called when the
/// exporter is installed.
pub fn install_sampler(sampler: Sampler) {
    let (kind, ratio) = match sampler {
        Sampler::AlwaysOn => (ALWAYS_ON, 1.0),
        Sampler::AlwaysOff => (ALWAYS_OFF, 0.0),
        Sampler::TraceIdRatio(r) => (RATIO, r),
        Sampler::ParentBased(Root::AlwaysOn) => (PARENT_ALWAYS_ON, 1.0),
        Sampler::ParentBased(Root::AlwaysOff) => (PARENT_ALWAYS_OFF, 0.0),
        Sampler::ParentBased(Root::TraceIdRatio(r)) => (PARENT_RATIO, r),
    };
    RATIO_BITS.store(ratio.to_bits(), Ordering::Relaxed);
    KIND.store(kind, Ordering::Release);
}

/// Whether an exporter is installed (spans made now may be exported).
pub fn exporting() -> bool {
    KIND.load(Ordering::Acquire) != OFF
}

/// Whether to open spans for a request whose caller sent `parent`.
///
/// Without an exporter this is always true: spans are then only what the
/// log subscriber asks for (the request span is at DEBUG, so at the
/// default INFO level `debug_span!` makes a disabled span and costs
/// nothing).
pub fn should_trace(parent: Option<&TraceParent>) -> bool {
    let ratio = || f64::from_bits(RATIO_BITS.load(Ordering::Relaxed));
    match KIND.load(Ordering::Acquire) {
        OFF | ALWAYS_ON => true,
        ALWAYS_OFF => false,
        RATIO => ratio_decides(ratio(), parent),
        PARENT_ALWAYS_ON => parent.is_none_or(TraceParent::sampled),
        PARENT_ALWAYS_OFF => parent.is_some_and(TraceParent::sampled),
        PARENT_RATIO => parent.map_or_else(|| ratio_decides(ratio(), None), TraceParent::sampled),
        _ => false,
    }
}

/// OpenTelemetry's TraceIdRatioBased rule on the caller's trace id (so
/// this service agrees with every other that sees it), or a coin with the
/// same odds for a trace this request starts (its id is random anyway).
fn ratio_decides(ratio: f64, parent: Option<&TraceParent>) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    if ratio <= 0.0 {
        return false;
    }
    match parent {
        Some(p) => {
            let mut low = [0u8; 8];
            low.copy_from_slice(&p.trace_id[8..]);
            (u64::from_be_bytes(low) >> 1) < (ratio * (1u64 << 63) as f64) as u64
        }
        None => rand::random::<f64>() < ratio,
    }
}

/// Makes `parent` (the caller's span) the parent of `span`, continuing the
/// caller's trace.
pub fn continue_trace(span: &tracing::Span, parent: &TraceParent) {
    let cx = opentelemetry::Context::new().with_remote_span_context(parent.span_context());
    let _ = span.set_parent(cx);
}

/// The `traceparent` and `tracestate` of `span` as an OpenTelemetry layer
/// sees it, for a downstream call or a stored message; `None` when no
/// such layer knows the span (none installed, or the span is disabled).
pub fn traceparent_of(span: &tracing::Span) -> Option<(String, Option<String>)> {
    if span.is_none() {
        return None;
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    if !sc.is_valid() {
        return None;
    }
    let state = sc.trace_state().header();
    Some((
        format_traceparent(&sc.trace_id().to_bytes(), &sc.span_id().to_bytes(), sc.trace_flags().to_u8()),
        (!state.is_empty()).then_some(state),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_and_formats_w3c_traceparent() {
        let p = TraceParent::parse(VALID, Some("congo=t61rcWkgMzE")).expect("valid");
        assert!(p.sampled());
        assert_eq!(p.header(), VALID);
        assert_eq!(p.tracestate.as_deref(), Some("congo=t61rcWkgMzE"));
        let unsampled = TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", None);
        assert!(unsampled.is_some_and(|p| !p.sampled()));
    }

    #[test]
    fn refuses_malformed_traceparents() {
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-zz",
        ] {
            assert_eq!(TraceParent::parse(bad, None), None, "{bad:?}");
        }
    }

    #[test]
    fn the_ratio_rule_is_deterministic_on_the_callers_trace_id() {
        let with_low = |low: u64| {
            let mut id = [0u8; 16];
            id[0] = 1;
            id[8..].copy_from_slice(&low.to_be_bytes());
            TraceParent { trace_id: id, span_id: [1; 8], flags: 0, tracestate: None }
        };
        assert!(ratio_decides(0.5, Some(&with_low(0))));
        assert!(ratio_decides(0.5, Some(&with_low((1u64 << 63) - 1))));
        assert!(!ratio_decides(0.5, Some(&with_low(u64::MAX))));
        assert!(ratio_decides(1.0, None));
        assert!(!ratio_decides(0.0, Some(&with_low(0))));
    }
}
