//! The plugin's own settings, and what a namespace's typed
//! `backend_config.pulsar` (`service_url`, `topic`) means here: which
//! broker, and which topics.

use std::time::Duration;

use prism_plugin_api::Namespace;
use prism_proto::control::PulsarConfig;
use prism_proto::control::backend_config::Config;

use crate::error::{PulsarError, Result};

/// The local topic name when a namespace names none (the backend's
/// description, shared with the control plane and the CLI).
pub const DEFAULT_TOPIC: &str = prism_proto::backends::pulsar::DEFAULT_TOPIC;

/// Settings of the plugin (the gateway's, for every namespace).
#[derive(Debug, Clone)]
pub struct PulsarPluginConfig {
    /// Bound on every plugin call (write, read, provision …): a broker that
    /// is down or stops answering fails the call as UNAVAILABLE after this.
    /// Default 10 s.
    pub request_timeout: Duration,
    /// Bound on one connection attempt to a broker. Default 2 s.
    pub connect_timeout: Duration,
}

impl Default for PulsarPluginConfig {
    fn default() -> Self {
        Self { request_timeout: Duration::from_secs(10), connect_timeout: Duration::from_secs(2) }
    }
}

/// Where one namespace incarnation lives.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Topics {
    /// `pulsar://host:port` (or `pulsar+ssl://`), as the namespace gives it.
    pub service_url: String,
    /// `persistent://{tenant}/{namespace}/{topic}-i{create_revision}`: the
    /// events, one message each.
    pub data: String,
    /// `persistent://{tenant}/{namespace}/{topic}-i{create_revision}-lifecycle`:
    /// provisioned / deprovisioned / reclaimed markers, a few per
    /// incarnation.
    pub lifecycle: String,
}

impl Topics {
    /// The topics of `ns`. The Prism tenant and namespace are Pulsar's
    /// tenant and namespace, one to one (both follow
    /// `[a-z0-9][a-z0-9-]{0,62}`, which Pulsar accepts as is). The
    /// incarnation is part of the topic's local name, so a namespace
    /// deleted and created again writes and reads other topics and never
    /// sees the old data. A local name ends in `-i<digits>` (data) or
    /// `-lifecycle`, so no two incarnations' names can meet whatever their
    /// `topic` settings.
    pub fn of(ns: &Namespace) -> Result<Self> {
        let settings = settings(ns)?;
        let (tenant, name) = (ns.tenant(), ns.local_name());
        if tenant.is_empty() || name.is_empty() {
            return Err(PulsarError::invalid("namespace", "must be tenant/name"));
        }
        let topic = if settings.topic.is_empty() { DEFAULT_TOPIC } else { settings.topic.as_str() };
        let base = format!("persistent://{tenant}/{name}/{topic}-i{}", ns.create_revision);
        Ok(Self {
            service_url: settings.service_url.trim_end_matches('/').to_owned(),
            lifecycle: format!("{base}-lifecycle"),
            data: base,
        })
    }
}

/// The namespace's typed Pulsar settings; the service URL is required.
fn settings(ns: &Namespace) -> Result<&PulsarConfig> {
    let config = ns.spec.backend_config.as_deref().and_then(|c| c.config.as_ref());
    let Some(Config::Pulsar(settings)) = config else {
        return Err(PulsarError::invalid("spec.backend_config.pulsar", "is required for a pulsar namespace"));
    };
    let url = settings.service_url.as_str();
    if !(url.starts_with("pulsar://") || url.starts_with("pulsar+ssl://")) {
        return Err(PulsarError::invalid(
            "spec.backend_config.pulsar.service_url",
            "must be a pulsar:// or pulsar+ssl:// URL",
        ));
    }
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use prism_proto::control::{BackendConfig, NamespaceSpec};

    use super::*;

    fn ns(url: &str, topic: &str, revision: u64) -> Namespace {
        let pulsar = PulsarConfig { service_url: url.into(), topic: topic.into() };
        Namespace {
            name: "acme/orders".into(),
            create_revision: revision,
            spec: NamespaceSpec {
                backend_config: Some(Box::new(BackendConfig { config: Some(Config::Pulsar(pulsar)) })),
                ..NamespaceSpec::default()
            },
        }
    }

    #[test]
    fn tenant_and_namespace_map_one_to_one_and_the_incarnation_is_in_the_name() {
        let t = Topics::of(&ns("pulsar://b:6650/", "", 7)).expect("valid");
        assert_eq!(t.service_url, "pulsar://b:6650");
        assert_eq!(t.data, "persistent://acme/orders/events-i7");
        assert_eq!(t.lifecycle, "persistent://acme/orders/events-i7-lifecycle");
        let t = Topics::of(&ns("pulsar+ssl://b:6651", "audit", 8)).expect("valid");
        assert_eq!(t.data, "persistent://acme/orders/audit-i8");
    }

    #[test]
    fn settings_are_required() {
        let mut bare = ns("pulsar://b:6650", "", 1);
        bare.spec.backend_config = None;
        assert!(matches!(Topics::of(&bare), Err(PulsarError::Invalid { .. })));
        assert!(matches!(Topics::of(&ns("http://b:6650", "", 1)), Err(PulsarError::Invalid { .. })));
    }
}
