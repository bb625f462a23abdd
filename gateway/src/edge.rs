//! The gRPC edge of the data services: a tonic request becomes a
//! [`Call`] (its `authorization`, client certificate, trace context,
//! deadline and whether it was forwarded), goes down the pipeline, and its
//! error becomes a status — once, here.

use crate::call::{Call, Request, Response};

/// Runs one gRPC request through the pipeline: the shared edge of the
/// KeyValue and TimeSeries services, where errors become statuses.
pub async fn run<T>(
    pipeline: &crate::layers::Pipeline,
    req: tonic::Request<T>,
    wrap: fn(T) -> Request,
) -> Result<Response, tonic::Status> {
    use tower::ServiceExt;
    let authorization = req.metadata().get("authorization").and_then(|v| v.to_str().ok()).map(str::to_owned);
    // Certificates are there only when TLS verified them against the
    // configured client CA.
    let client_cert = req.peer_certs().and_then(|certs| certs.first().and_then(|c| prism_tls::common_name(c.as_ref())));
    let trace = trace_context(req.metadata());
    let client_addr = req.remote_addr();
    // Counted from when the request arrived, as tonic's own timer is
    // (`Arrived`), not from here: the body may have taken a while.
    let arrived = req.extensions().get::<Arrived>().map_or_else(tokio::time::Instant::now, |a| a.0);
    let deadline = req
        .metadata()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
        .and_then(|t| arrived.checked_add(t));
    let forwarded = req.metadata().contains_key(crate::forward::FORWARDED_BY);
    let mut call = Call::new(wrap(req.into_inner()), authorization);
    call.client_cert = client_cert;
    call.trace = trace;
    call.client_addr = client_addr;
    call.deadline = deadline;
    call.forwarded = forwarded;
    pipeline.clone().oneshot(call).await.map_err(crate::error::GatewayError::into_status)
}

/// When a request with a `grpc-timeout` reached the gateway's services
/// (`server.rs` stamps it), the instant tonic starts its own timer for
/// that deadline: the caller's deadline counts from here.
#[derive(Debug, Clone, Copy)]
pub struct Arrived(pub tokio::time::Instant);

/// A `grpc-timeout` value (at most 8 digits and a unit: `H`, `M`, `S`,
/// `m`, `u`, `n`), as gRPC over HTTP/2 defines it; `None` when malformed.
pub fn parse_grpc_timeout(value: &str) -> Option<std::time::Duration> {
    use std::time::Duration;
    let unit = value.chars().last()?;
    let digits = &value[..value.len() - unit.len_utf8()];
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        'H' => Duration::from_secs(n * 3600),
        'M' => Duration::from_secs(n * 60),
        'S' => Duration::from_secs(n),
        'm' => Duration::from_millis(n),
        'u' => Duration::from_micros(n),
        'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The caller's `traceparent` / `tracestate`, when valid (an invalid one
/// is ignored: the request starts a trace of its own, as W3C asks).
fn trace_context(metadata: &tonic::metadata::MetadataMap) -> Option<prism_telemetry::trace::TraceParent> {
    use prism_telemetry::trace::{TRACEPARENT, TRACESTATE, TraceParent};
    let parent = metadata.get(TRACEPARENT)?.to_str().ok()?;
    TraceParent::parse(parent, metadata.get(TRACESTATE).and_then(|v| v.to_str().ok()))
}

/// The status for a pipeline that answered a different RPC (a bug).
pub fn unexpected() -> tonic::Status {
    crate::error::GatewayError::Internal("the pipeline answered another rpc".into()).into_status()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::parse_grpc_timeout;

    #[test]
    fn reads_grpc_timeouts_and_refuses_malformed_ones() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("99999999u"), Some(Duration::from_micros(99_999_999)));
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("1M"), Some(Duration::from_secs(60)));
        assert_eq!(parse_grpc_timeout("7n"), Some(Duration::from_nanos(7)));
        for bad in ["", "S", "123456789S", "5s", "-5S", "5 S", "5", "é", "5é"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }
}
