//! The one list of this gateway's backend plugins, [`REGISTERED`]: one
//! line per backend, naming the backend and the function that opens its
//! plugin from the gateway's settings. Everything else about a backend —
//! its name, abstractions, settings and their limits — is its description
//! in `prism_proto::backends`; the gateway finds plugins by backend
//! through [`Plugins`] and names them from the description.
//!
//! The openers are here rather than in each plugin crate because what a
//! plugin takes from the gateway (its data directory, the chunk
//! threshold, the request timeout, the declared secrets, a CA file) is the
//! gateway's configuration, which plugins do not depend on. None of them
//! connects to anything: backends are reached per namespace.

use std::sync::Arc;

use prism_plugin_api::Plugin;
use prism_proto::control::Backend;

use crate::backend::Plugins;
use crate::config::GatewayConfig;
use crate::error::{GatewayError, Result};

/// Opens one backend's plugin from the gateway's settings.
type Open = fn(&GatewayConfig) -> Result<Arc<dyn Plugin>>;

/// Every plugin this gateway is built with, one line per backend.
pub const REGISTERED: &[(Backend, Open)] = &[
    (Backend::Embedded, embedded),
    (Backend::Postgres, postgres),
    (Backend::Kafka, kafka),
    // Built with feature `pulsar` only (its client needs protoc); without
    // it a pulsar namespace is DEGRADED, "built without the pulsar plugin".
    #[cfg(feature = "pulsar")]
    (Backend::Pulsar, pulsar),
];

/// Opens every registered plugin. A bad setting (an unreadable CA file, a
/// data directory that cannot be opened) stops the gateway here.
pub fn open(config: &GatewayConfig) -> Result<Plugins> {
    let mut plugins = Plugins::default();
    for (backend, open) in REGISTERED {
        let plugin = open(config)?;
        let declared = plugin.capabilities().backend;
        if declared != *backend {
            return Err(GatewayError::Internal(format!(
                "the plugin registered for {} serves {}",
                prism_proto::capabilities::backend_name(*backend),
                prism_proto::capabilities::backend_name(declared)
            )));
        }
        plugins.insert(plugin);
    }
    Ok(plugins)
}

fn embedded(config: &GatewayConfig) -> Result<Arc<dyn Plugin>> {
    use prism_plugin_embedded::{EmbeddedConfig, EmbeddedPlugin};
    let plugin = EmbeddedPlugin::open(EmbeddedConfig {
        data_dir: config.data_dir(),
        chunk_threshold_bytes: config.limits.chunk_threshold_bytes,
        ..EmbeddedConfig::default()
    })
    .map_err(|e| GatewayError::Internal(format!("cannot open the embedded store: {e}")))?;
    Ok(Arc::new(plugin))
}

fn postgres(config: &GatewayConfig) -> Result<Arc<dyn Plugin>> {
    use prism_plugin_postgres::{PostgresPlugin, PostgresPluginConfig};
    // The TLS CA file is read here, so a bad one stops the gateway at
    // startup.
    let plugin = PostgresPlugin::new(PostgresPluginConfig {
        chunk_threshold_bytes: config.limits.chunk_threshold_bytes,
        tls_ca_file: config.postgres_tls_ca_file.clone(),
        ..PostgresPluginConfig::default()
    })
    .map_err(|e| GatewayError::Internal(format!("cannot set up the postgres backend: {e}")))?
    // A namespace's `password_ref` resolves only to what is declared here.
    .with_secrets(Arc::new(prism_plugin_api::secrets::Secrets::new(config.secrets.clone())));
    Ok(Arc::new(plugin))
}

fn kafka(_: &GatewayConfig) -> Result<Arc<dyn Plugin>> {
    use prism_plugin_kafka::{KafkaPlugin, KafkaPluginConfig};
    let plugin = KafkaPlugin::new(KafkaPluginConfig::default())
        .map_err(|e| GatewayError::Internal(format!("cannot set up the kafka backend: {e}")))?;
    Ok(Arc::new(plugin))
}

#[cfg(feature = "pulsar")]
fn pulsar(config: &GatewayConfig) -> Result<Arc<dyn Plugin>> {
    use prism_plugin_pulsar::{PulsarPlugin, PulsarPluginConfig};
    Ok(Arc::new(PulsarPlugin::new(PulsarPluginConfig {
        request_timeout: config.request_timeout(),
        ..PulsarPluginConfig::default()
    })))
}

#[cfg(test)]
mod tests {
    use prism_proto::backends::BACKENDS;

    use super::*;

    #[test]
    fn every_described_backend_is_registered_once() {
        let registered: Vec<Backend> = REGISTERED.iter().map(|(b, _)| *b).collect();
        let described: Vec<Backend> =
            BACKENDS.iter().map(|d| d.backend).filter(|b| cfg!(feature = "pulsar") || *b != Backend::Pulsar).collect();
        assert_eq!(registered, described);
    }
}
