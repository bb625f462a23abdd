//! What Prism's servers share for observability, so the control plane and
//! the gateway expose metrics, health and traces the same way:
//!
//! - [`http`]: the metrics listener — `/metrics` (Prometheus text format
//!   from a `prometheus-client` registry), `/healthz` and `/readyz`.
//! - [`histogram`]: a lock-free latency histogram for per-request paths.
//! - [`process`]: resident memory, CPU seconds and open descriptors, read
//!   from `/proc` at scrape time.
//! - [`otel`]: OpenTelemetry trace export configured by the standard
//!   `OTEL_*` variables; nothing is constructed without them.
//! - [`trace`]: W3C `traceparent` parsing and formatting, continuing an
//!   incoming trace, the sampling decision taken once per request, and the
//!   span targets the exporter listens to.
//!
//! Architecture: this crate knows no other Prism crate (it must never
//! depend on a plugin); the gateway, the control plane and the client use
//! it.

pub mod histogram;
pub mod http;
pub mod otel;
pub mod process;
pub mod trace;

/// gRPC status code names by their number, as the `code` label of metrics
/// (the form Prometheus users know from grpc-go and grpc-java).
pub const GRPC_CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The label of gRPC status code `code` (`UNKNOWN` for a number outside
/// the 17 codes).
pub fn code_name(code: i32) -> &'static str {
    usize::try_from(code).ok().and_then(|i| GRPC_CODES.get(i)).copied().unwrap_or("UNKNOWN")
}

/// What can go wrong setting telemetry up: always at startup, naming the
/// setting.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// A variable or setting with a value that cannot be used.
    #[error("{name}: {description}")]
    Setting { name: String, description: String },
    #[error("cannot start the trace exporter: {0}")]
    Exporter(String),
}

impl TelemetryError {
    pub fn setting(name: impl Into<String>, description: impl Into<String>) -> Self {
        Self::Setting { name: name.into(), description: description.into() }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn code_names_follow_grpc_numbers() {
        assert_eq!(super::code_name(0), "OK");
        assert_eq!(super::code_name(8), "RESOURCE_EXHAUSTED");
        assert_eq!(super::code_name(16), "UNAUTHENTICATED");
        assert_eq!(super::code_name(17), "UNKNOWN");
        assert_eq!(super::code_name(-1), "UNKNOWN");
    }
}
