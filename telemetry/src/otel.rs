//! OpenTelemetry trace export, switched on and configured by the standard
//! environment variables and nothing else:
//!
//! | variable | meaning here |
//! |---|---|
//! | `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, else `OTEL_EXPORTER_OTLP_ENDPOINT` | where spans go (OTLP over gRPC, `http://` or `https://`); **without either, nothing is constructed** |
//! | `OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL` | `grpc` (the one protocol this build speaks) |
//! | `OTEL_EXPORTER_OTLP_(TRACES_)TIMEOUT` | export timeout, milliseconds |
//! | `OTEL_EXPORTER_OTLP_(TRACES_)HEADERS` | `key=value,…` sent with every export |
//! | `OTEL_EXPORTER_OTLP_(TRACES_)CERTIFICATE` | PEM CA file an `https://` collector's certificate must chain to (default: the system bundle) |
//! | `OTEL_EXPORTER_OTLP_(TRACES_)COMPRESSION` | `none` (no compression codec in this build) |
//! | `OTEL_SERVICE_NAME` | `service.name` (default: the server's own name) |
//! | `OTEL_RESOURCE_ATTRIBUTES` | `key=value,…` resource attributes (values percent-decoded) |
//! | `OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG` | `always_on`, `always_off`, `traceidratio`, `parentbased_always_on` (default), `parentbased_always_off`, `parentbased_traceidratio`; the argument is the ratio in [0, 1] |
//! | `OTEL_TRACES_EXPORTER` | `otlp` (default) or `none` |
//! | `OTEL_SDK_DISABLED` | `true` turns export off |
//!
//! A value that cannot be used is a startup error naming the variable
//! ([`OtelConfig::from_env`]); nothing is silently ignored. Propagation is
//! W3C Trace Context (`traceparent`, `tracestate`).

use std::path::PathBuf;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;

use crate::TelemetryError;
use crate::trace::{BACKEND_TARGET, REQUEST_TARGET, Root, Sampler};

/// Where an `https://` collector's CA certificates are read from when
/// `OTEL_EXPORTER_OTLP_CERTIFICATE` is not set (Debian's bundle, as the
/// gateway's other TLS clients use).
pub const DEFAULT_CA_FILE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Trace export as the environment asks for it.
#[derive(Debug, Clone, PartialEq)]
pub struct OtelConfig {
    pub endpoint: String,
    pub service_name: String,
    pub sampler: Sampler,
    pub resource_attributes: Vec<(String, String)>,
    pub timeout: Option<Duration>,
    /// CA file for an `https://` endpoint, and the variable that named it.
    pub ca_file: Option<(&'static str, PathBuf)>,
}

fn bad(name: &str, description: impl Into<String>) -> TelemetryError {
    TelemetryError::setting(name, description)
}

/// The first of the variables that is set and not empty, with its name.
fn first(var: &impl Fn(&str) -> Option<String>, names: &[&'static str]) -> Option<(&'static str, String)> {
    names.iter().find_map(|n| var(n).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty()).map(|v| (*n, v)))
}

impl OtelConfig {
    /// Reads the `OTEL_*` variables through `var` (the process environment
    /// in the binary; a map in tests). `Ok(None)`: no export asked for.
    /// Every recognised variable is checked even then, so a typo fails at
    /// startup rather than when export is turned on.
    pub fn from_env(
        var: impl Fn(&str) -> Option<String>,
        default_service: &str,
    ) -> Result<Option<Self>, TelemetryError> {
        let disabled = match first(&var, &["OTEL_SDK_DISABLED"]) {
            None => false,
            Some((n, v)) => match v.to_ascii_lowercase().as_str() {
                "true" => true,
                "false" => false,
                _ => return Err(bad(n, format!("{v:?} is not true or false"))),
            },
        };
        let exporter_none = match first(&var, &["OTEL_TRACES_EXPORTER"]) {
            None => false,
            Some((n, v)) => match v.as_str() {
                "otlp" => false,
                "none" => true,
                _ => return Err(bad(n, format!("{v:?} is not supported; use otlp or none"))),
            },
        };
        if let Some((n, v)) = first(&var, &["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"])
            && v != "grpc"
        {
            return Err(bad(n, format!("{v:?} is not supported; this build exports OTLP over grpc")));
        }
        if let Some((n, v)) = first(&var, &["OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "OTEL_EXPORTER_OTLP_COMPRESSION"])
            && v != "none"
        {
            return Err(bad(n, format!("{v:?} is not supported; this build has no compression codec (use none)")));
        }
        let timeout = match first(&var, &["OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"]) {
            None => None,
            Some((n, v)) => match v.parse::<u64>() {
                Ok(ms) if ms > 0 => Some(Duration::from_millis(ms)),
                _ => return Err(bad(n, format!("{v:?} is not a positive number of milliseconds"))),
            },
        };
        if let Some((n, v)) = first(&var, &["OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS"]) {
            key_values(n, &v)?;
        }
        let resource_attributes = match first(&var, &["OTEL_RESOURCE_ATTRIBUTES"]) {
            None => Vec::new(),
            Some((n, v)) => key_values(n, &v)?,
        };
        let service_name =
            first(&var, &["OTEL_SERVICE_NAME"]).map_or_else(|| default_service.to_owned(), |(_, v)| v.clone());
        let sampler = sampler(&var)?;
        let ca_file = first(&var, &["OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "OTEL_EXPORTER_OTLP_CERTIFICATE"]);
        let endpoint = first(&var, &["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"]);
        let Some((endpoint_var, endpoint)) = endpoint else { return Ok(None) };
        let uri: http::Uri =
            endpoint.parse().map_err(|e| bad(endpoint_var, format!("{endpoint:?} is not a URL: {e}")))?;
        match (uri.scheme_str(), uri.host()) {
            (Some("http" | "https"), Some(host)) if !host.is_empty() => {}
            _ => return Err(bad(endpoint_var, format!("{endpoint:?} is not an http:// or https:// URL with a host"))),
        }
        if disabled || exporter_none {
            return Ok(None);
        }
        Ok(Some(Self {
            ca_file: (uri.scheme_str() == Some("https")).then(|| {
                ca_file.map_or_else(
                    || ("OTEL_EXPORTER_OTLP_CERTIFICATE", PathBuf::from(DEFAULT_CA_FILE)),
                    |(n, f)| (n, PathBuf::from(f)),
                )
            }),
            endpoint,
            service_name,
            sampler,
            resource_attributes,
            timeout,
        }))
    }

    /// Builds the exporter and the `tracing` layer that feeds it, and makes
    /// the sampler the per-request decision. Call inside a tokio runtime
    /// (the gRPC channel is made there, lazily connected: a collector that
    /// is down costs failed exports, never a failed start).
    pub fn install<S>(&self) -> Result<(impl Layer<S> + use<S>, OtelGuard), TelemetryError>
    where
        S: tracing::Subscriber + for<'span> LookupSpan<'span>,
    {
        let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic().with_endpoint(&self.endpoint);
        if let Some(timeout) = self.timeout {
            exporter = exporter.with_timeout(timeout);
        }
        if let Some((name, path)) = &self.ca_file {
            use opentelemetry_otlp::tonic_types::transport::{Certificate, ClientTlsConfig};
            let pem = std::fs::read(path).map_err(|e| bad(name, format!("cannot read {}: {e}", path.display())))?;
            exporter = exporter.with_tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)));
        }
        let exporter = exporter.build().map_err(|e| TelemetryError::Exporter(e.to_string()))?;
        let resource = Resource::builder()
            .with_service_name(self.service_name.clone())
            .with_attributes(self.resource_attributes.iter().map(|(k, v)| KeyValue::new(k.clone(), v.clone())))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            // The decision was taken per request (crate::trace): every span
            // that exists is to be exported.
            .with_sampler(opentelemetry_sdk::trace::Sampler::AlwaysOn)
            .build();
        let tracer = provider.tracer("prism");
        let layer = tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_location(false)
            .with_threads(false)
            .with_level(false)
            .with_target(false)
            .with_tracked_inactivity(false)
            .with_context_activation(false)
            // Only the spans made for sampled requests (crate::trace); a
            // `Targets` filter decides per callsite, once, so every other
            // callsite of the process stays disabled for this layer.
            .with_filter(
                tracing_subscriber::filter::Targets::new()
                    .with_target(REQUEST_TARGET, tracing::Level::DEBUG)
                    .with_target(BACKEND_TARGET, tracing::Level::DEBUG),
            );
        crate::trace::install_sampler(self.sampler);
        Ok((layer, OtelGuard { provider }))
    }
}

/// `key=value,key=value` with percent-encoded values (the W3C baggage
/// octet rules the OpenTelemetry specification uses for both variables).
fn key_values(name: &str, text: &str) -> Result<Vec<(String, String)>, TelemetryError> {
    text.split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(|part| {
            let (k, v) = part.split_once('=').ok_or_else(|| bad(name, format!("{part:?} is not key=value")))?;
            let k = k.trim();
            if k.is_empty() {
                return Err(bad(name, format!("{part:?} has an empty key")));
            }
            let v = percent_decode(v.trim()).ok_or_else(|| bad(name, format!("{part:?} has a bad %-escape")))?;
            Ok((k.to_owned(), v))
        })
        .collect()
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn sampler(var: &impl Fn(&str) -> Option<String>) -> Result<Sampler, TelemetryError> {
    let arg = match first(var, &["OTEL_TRACES_SAMPLER_ARG"]) {
        None => None,
        Some((n, v)) => match v.parse::<f64>() {
            Ok(r) if (0.0..=1.0).contains(&r) => Some(r),
            _ => return Err(bad(n, format!("{v:?} is not a ratio within 0..=1"))),
        },
    };
    let ratio = arg.unwrap_or(1.0);
    let Some((n, kind)) = first(var, &["OTEL_TRACES_SAMPLER"]) else {
        return Ok(Sampler::ParentBased(Root::AlwaysOn));
    };
    Ok(match kind.as_str() {
        "always_on" => Sampler::AlwaysOn,
        "always_off" => Sampler::AlwaysOff,
        "traceidratio" => Sampler::TraceIdRatio(ratio),
        "parentbased_always_on" => Sampler::ParentBased(Root::AlwaysOn),
        "parentbased_always_off" => Sampler::ParentBased(Root::AlwaysOff),
        "parentbased_traceidratio" => Sampler::ParentBased(Root::TraceIdRatio(ratio)),
        other => {
            return Err(bad(
                n,
                format!(
                    "{other:?} is not one of always_on, always_off, traceidratio, parentbased_always_on, \
                     parentbased_always_off, parentbased_traceidratio"
                ),
            ));
        }
    })
}

/// Keeps the exporter alive; [`OtelGuard::shutdown`] exports what is left.
#[derive(Debug)]
pub struct OtelGuard {
    provider: SdkTracerProvider,
}

impl OtelGuard {
    /// Exports every finished span now (tests, before reading a receiver).
    pub fn flush(&self) {
        if let Err(e) = self.provider.force_flush() {
            tracing::warn!(error = %e, "flushing spans failed");
        }
    }

    /// Exports what is buffered and stops the exporter. Blocks: call it off
    /// the async threads (`spawn_blocking`).
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "stopping the trace exporter failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn nothing_is_configured_without_an_endpoint() -> Result<(), TelemetryError> {
        assert_eq!(OtelConfig::from_env(env(&[]), "prism")?, None);
        assert_eq!(OtelConfig::from_env(env(&[("OTEL_SERVICE_NAME", "x")]), "prism")?, None);
        let off = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"), ("OTEL_SDK_DISABLED", "true")];
        assert_eq!(OtelConfig::from_env(env(&off), "prism")?, None);
        let none = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"), ("OTEL_TRACES_EXPORTER", "none")];
        assert_eq!(OtelConfig::from_env(env(&none), "prism")?, None);
        Ok(())
    }

    #[test]
    fn reads_the_standard_variables() -> Result<(), TelemetryError> {
        let c = OtelConfig::from_env(
            env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://general:4317"),
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://traces:4317"),
                ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/ca.pem"),
                ("OTEL_SERVICE_NAME", "edge"),
                ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=prod, team=a%20b"),
                ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "0.01"),
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            ]),
            "prism",
        )?
        .expect("configured");
        assert_eq!(c.endpoint, "https://traces:4317");
        assert_eq!(c.ca_file, Some(("OTEL_EXPORTER_OTLP_CERTIFICATE", PathBuf::from("/ca.pem"))));
        assert_eq!(c.service_name, "edge");
        assert_eq!(
            c.resource_attributes,
            [("deployment.environment".into(), "prod".into()), ("team".into(), "a b".into())]
        );
        assert_eq!(c.sampler, Sampler::ParentBased(Root::TraceIdRatio(0.01)));
        assert_eq!(c.timeout, Some(Duration::from_millis(2500)));
        let plain = OtelConfig::from_env(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317")]), "prism-gateway")?
            .expect("configured");
        assert_eq!(
            (plain.service_name.as_str(), plain.sampler, plain.ca_file),
            ("prism-gateway", Sampler::ParentBased(Root::AlwaysOn), None)
        );
        Ok(())
    }

    #[test]
    fn unusable_values_name_their_variable() {
        let cases = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "not a url"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "ftp://c:4317"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "localhost:4317"),
            ("OTEL_TRACES_SAMPLER", "sometimes"),
            ("OTEL_TRACES_SAMPLER_ARG", "1.5"),
            ("OTEL_TRACES_SAMPLER_ARG", "half"),
            ("OTEL_RESOURCE_ATTRIBUTES", "novalue"),
            ("OTEL_RESOURCE_ATTRIBUTES", "k=%zz"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "soon"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "=x"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
            ("OTEL_SDK_DISABLED", "yes"),
            ("OTEL_TRACES_EXPORTER", "jaeger"),
        ];
        for (name, value) in cases {
            let mut vars = vec![(name, value)];
            if !name.contains("ENDPOINT") {
                vars.push(("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"));
            }
            let e = OtelConfig::from_env(env(&vars), "prism").expect_err(value);
            assert!(e.to_string().starts_with(name), "{name}={value}: {e}");
        }
    }
}
