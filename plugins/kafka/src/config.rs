//! Settings: the plugin's own ([`KafkaPluginConfig`]: timeouts and
//! batching, the same for every namespace the gateway serves from Kafka),
//! and each namespace's ([`NamespaceSettings`]: brokers, partitions,
//! replication, retention), read from its typed `backend_config` and
//! checked without connecting. Errors name the wrong field and never quote
//! a broker address.

use std::time::Duration;

use prism_plugin_api::{Micros, Namespace};
use prism_proto::backends::{Count, kafka};
use prism_proto::control::backend_config::Config as BackendConfig;

use crate::error::{KafkaError, Result};

/// Shortest and longest timeout.
const TIMEOUT: std::ops::RangeInclusive<Duration> = Duration::from_millis(10)..=Duration::from_secs(3600);

/// Partitions and replication factor when the namespace leaves them 0
/// (the backend's description, shared with the control plane and the CLI).
pub const DEFAULT_PARTITIONS: i32 = kafka::PARTITIONS.default as i32;
pub const DEFAULT_REPLICATION: i32 = kafka::REPLICATION_FACTOR.default as i32;

/// The largest event (its encoded payload) the plugin produces. Kafka's
/// own default (1 MB) is below the gateway's largest events, so the
/// producer, each topic (`max.message.bytes`) and the reader are all set to
/// this.
pub const MAX_MESSAGE_BYTES: usize = 32 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaPluginConfig {
    /// How long a write may wait for every message to be acknowledged
    /// (librdkafka's `message.timeout.ms`) before it fails as UNAVAILABLE.
    /// Default 5 s: a broker that is down makes writes fail in bounded
    /// time, well inside the gateway's request timeout, so the buffered
    /// writer's retries get their turn. Range 10 ms..=1 h.
    pub message_timeout: Duration,
    /// How long one metadata, admin or read step may take before the
    /// backend counts as unavailable. Default 5 s. Range 10 ms..=1 h.
    pub request_timeout: Duration,
    /// How long the producer waits to batch messages (`linger.ms`).
    /// Default 1 ms: synchronous writes pay it in latency.
    pub linger: Duration,
}

impl Default for KafkaPluginConfig {
    fn default() -> Self {
        Self {
            message_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            linger: Duration::from_millis(1),
        }
    }
}

impl KafkaPluginConfig {
    pub fn validate(&self) -> Result<()> {
        for (field, value) in [("message_timeout", self.message_timeout), ("request_timeout", self.request_timeout)] {
            if !TIMEOUT.contains(&value) {
                return Err(KafkaError::config(field, "must be between 10ms and 1h"));
            }
        }
        if self.linger > Duration::from_secs(1) {
            return Err(KafkaError::config("linger", "must be at most 1s"));
        }
        Ok(())
    }
}

/// What one namespace says about its topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceSettings {
    /// `host:port,host:port`, as librdkafka takes it. Never shown to
    /// clients.
    pub bootstrap: String,
    pub partitions: i32,
    pub replication: i32,
    /// The namespace's retention; `None` keeps events forever.
    pub retention: Option<Micros>,
}

impl NamespaceSettings {
    pub fn of(ns: &Namespace) -> Result<Self> {
        let field = "spec.backend_config.kafka";
        let Some(BackendConfig::Kafka(c)) = ns.spec.backend_config.as_deref().and_then(|b| b.config.as_ref()) else {
            return Err(KafkaError::invalid(field, "is required for a kafka namespace"));
        };
        if c.bootstrap_servers.is_empty() || c.bootstrap_servers.iter().any(|s| s.is_empty() || s.contains(',')) {
            return Err(KafkaError::invalid(format!("{field}.bootstrap_servers"), "needs host:port entries"));
        }
        // The limits are at most 1024, so every count fits an i32.
        let count = |value: u32, limits: &Count, name: &str| -> Result<i32> {
            match limits.resolve(value).map(i32::try_from) {
                Some(Ok(n)) => Ok(n),
                _ => Err(KafkaError::invalid(format!("{field}.{name}"), format!("{value} is above {}", limits.max))),
            }
        };
        Ok(Self {
            bootstrap: c.bootstrap_servers.join(","),
            partitions: count(c.partitions, &kafka::PARTITIONS, "partitions")?,
            replication: count(c.replication_factor, &kafka::REPLICATION_FACTOR, "replication_factor")?,
            retention: prism_plugin_api::ts::retention(ns),
        })
    }

    /// The topic's `retention.ms`: the namespace's retention, or `-1`
    /// (forever) — never the broker's default (a week on Kafka), which
    /// would drop events a namespace without retention keeps.
    pub fn retention_ms(&self) -> String {
        match self.retention {
            Some(r) => (r / 1_000).max(1).to_string(),
            None => "-1".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use prism_proto::control::{BackendConfig as Bc, KafkaConfig, NamespaceSpec};

    use super::*;

    fn ns(c: KafkaConfig) -> Namespace {
        Namespace {
            name: "t/n".into(),
            create_revision: 1,
            spec: NamespaceSpec {
                backend_config: Some(Box::new(Bc { config: Some(BackendConfig::Kafka(c)) })),
                ..NamespaceSpec::default()
            },
        }
    }

    #[test]
    fn defaults_and_limits() {
        let s = NamespaceSettings::of(&ns(KafkaConfig {
            bootstrap_servers: vec!["a:1".into(), "b:2".into()],
            ..KafkaConfig::default()
        }))
        .expect("valid");
        assert_eq!((s.bootstrap.as_str(), s.partitions, s.replication), ("a:1,b:2", 1, 1));
        assert_eq!(s.retention_ms(), "-1");
        let bad = NamespaceSettings::of(&ns(KafkaConfig {
            bootstrap_servers: vec!["a:1".into()],
            partitions: 2000,
            ..KafkaConfig::default()
        }));
        assert!(matches!(bad, Err(KafkaError::Invalid { field, .. }) if field.ends_with("partitions")));
        assert!(NamespaceSettings::of(&ns(KafkaConfig::default())).is_err());
        assert!(KafkaPluginConfig::default().validate().is_ok());
    }
}
