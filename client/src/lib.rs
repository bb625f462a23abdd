//! The Prism client library.
//!
//! - [`Prism`]: a client of a whole deployment. It learns which gateway
//!   shard owns each namespace (the control plane's Watch stream and
//!   `ResolveNamespace`), spreads calls over a shard's replicas, follows
//!   WRONG_SHARD redirects and retries idempotent calls on UNAVAILABLE.
//!   [`Prism::kv`] and [`Prism::ts`] are the typed KeyValue and TimeSeries
//!   APIs on top ([`kv`], [`ts`]); [`retry`] and [`routing`] hold the rules.
//! - [`control_plane`], [`key_value`], [`time_series`]: plain connections
//!   to one server, for servers and tools that address it directly.
//!
//! Every call carries the caller's bearer token. Endpoints are `host:port`
//! or `http://host:port` (plain text) or `https://host:port` (TLS, trusting
//! the CAs of a [`Tls`]: the system bundle by default; [`tls`]).

pub mod error;
pub mod kv;
pub mod prism;
pub mod retry;
pub mod routing;
pub mod tls;
pub mod ts;
mod watch;

use std::str::FromStr;
use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

pub use prism_proto as proto;
use prism_proto::control::control_plane_service_client::ControlPlaneServiceClient;
use prism_proto::kv::key_value_service_client::KeyValueServiceClient;
use prism_proto::timeseries::time_series_service_client::TimeSeriesServiceClient;

/// The control plane's address when nothing else is said: `prism dev`'s.
pub const DEFAULT_CONTROL_PLANE: &str = "127.0.0.1:7400";

/// Largest message a client accepts or sends: the largest item a namespace
/// may allow (64 MiB) plus room for its request.
pub const MAX_MESSAGE_BYTES: usize = 72 << 20;

pub use error::{ClientError, Result};
pub use kv::Kv;
pub use prism::{Builder, Options, Prism, Retry};
pub use retry::RetryPolicy;
pub use tls::{ClientTlsConfig, Tls};
pub use ts::Ts;

/// Adds `authorization: Bearer <token>` to every request when a token is set.
#[derive(Clone, Debug, Default)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

impl BearerToken {
    pub fn new(token: Option<&str>) -> Result<Self> {
        let value = token
            .filter(|t| !t.is_empty())
            .map(|t| MetadataValue::from_str(&format!("Bearer {t}")))
            .transpose()
            .map_err(|e| ClientError::InvalidToken(e.to_string()))?;
        Ok(Self(value))
    }
}

impl Interceptor for BearerToken {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        inject_trace_context(&mut req);
        Ok(req)
    }
}

/// Adds the caller's trace context (`traceparent`, `tracestate`: W3C
/// Trace Context) when the current `tracing` span belongs to an
/// OpenTelemetry trace, so the gateway's spans join the caller's trace.
/// Without an OpenTelemetry layer nothing is added (and nothing but a
/// thread-local read is spent).
fn inject_trace_context(req: &mut tonic::Request<()>) {
    use prism_telemetry::trace::{TRACEPARENT, TRACESTATE, traceparent_of};
    let Some((parent, state)) = traceparent_of(&tracing::Span::current()) else { return };
    if let Ok(v) = MetadataValue::from_str(&parent) {
        req.metadata_mut().insert(TRACEPARENT, v);
    }
    if let Some(v) = state.and_then(|s| MetadataValue::from_str(&s).ok()) {
        req.metadata_mut().insert(TRACESTATE, v);
    }
}

pub type ControlPlaneClient = ControlPlaneServiceClient<InterceptedService<Channel, BearerToken>>;
pub type KeyValueClient = KeyValueServiceClient<InterceptedService<Channel, BearerToken>>;
pub type TimeSeriesClient = TimeSeriesServiceClient<InterceptedService<Channel, BearerToken>>;

/// `host:port` or a full `http://host:port` URL, as a plain-text tonic
/// endpoint (for tests and tools that build their own clients). An
/// `https://` endpoint needs a connector: use [`channel`].
pub fn endpoint(address: &str) -> Result<Endpoint> {
    if address.starts_with("https://") {
        return Err(ClientError::InvalidEndpoint {
            endpoint: address.to_owned(),
            reason: "an https:// endpoint is reached with prism_client::channel".into(),
        });
    }
    let url = if address.contains("://") { address.to_owned() } else { format!("http://{address}") };
    Endpoint::from_str(&url)
        .map(|e| e.connect_timeout(Duration::from_secs(5)).tcp_nodelay(true))
        .map_err(|e| ClientError::InvalidEndpoint { endpoint: address.to_owned(), reason: e.to_string() })
}

/// A channel to one server, connected now: plain text, or TLS with `tls`
/// for an `https://` address.
pub async fn channel(address: &str, tls: &Tls) -> Result<Channel> {
    tls::channel(address, tls).await
}

/// Connects to a control plane (an `https://` one is verified against the
/// system CA bundle; see [`control_plane_with`]).
pub async fn control_plane(address: &str, token: Option<&str>) -> Result<ControlPlaneClient> {
    control_plane_with(address, token, &Tls::default()).await
}

/// Connects to a control plane, over TLS with `tls` when `address` is
/// `https://`.
pub async fn control_plane_with(address: &str, token: Option<&str>, tls: &Tls) -> Result<ControlPlaneClient> {
    let auth = BearerToken::new(token)?;
    Ok(ControlPlaneServiceClient::with_interceptor(channel(address, tls).await?, auth)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

/// Connects to a gateway shard's KeyValue service.
pub async fn key_value(address: &str, token: Option<&str>) -> Result<KeyValueClient> {
    key_value_with(address, token, &Tls::default()).await
}

/// Connects to a gateway shard's KeyValue service, over TLS with `tls`
/// when `address` is `https://`.
pub async fn key_value_with(address: &str, token: Option<&str>, tls: &Tls) -> Result<KeyValueClient> {
    let auth = BearerToken::new(token)?;
    Ok(KeyValueServiceClient::with_interceptor(channel(address, tls).await?, auth)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

/// Connects to a gateway shard's TimeSeries service.
pub async fn time_series(address: &str, token: Option<&str>) -> Result<TimeSeriesClient> {
    time_series_with(address, token, &Tls::default()).await
}

/// Connects to a gateway shard's TimeSeries service, over TLS with `tls`
/// when `address` is `https://`.
pub async fn time_series_with(address: &str, token: Option<&str>, tls: &Tls) -> Result<TimeSeriesClient> {
    let auth = BearerToken::new(token)?;
    Ok(TimeSeriesServiceClient::with_interceptor(channel(address, tls).await?, auth)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_accept_host_port_and_urls() {
        assert!(endpoint("127.0.0.1:7400").is_ok());
        assert!(endpoint("http://localhost:7400").is_ok());
        assert!(endpoint("not a host").is_err());
        assert!(endpoint("https://localhost:7400").is_err(), "needs a connector");
    }

    #[test]
    fn tokens_with_newlines_are_refused() {
        assert!(BearerToken::new(Some("abc")).is_ok());
        assert!(BearerToken::new(Some("a\nb")).is_err());
    }
}
