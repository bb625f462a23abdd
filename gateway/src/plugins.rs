//! The one list of this gateway's backend plugins, [`REGISTERED`]: one
//! line per backend, naming the backend and its crate's `open`. Everything
//! else about a backend — its name, abstractions, settings and their
//! limits — is its description in `prism_proto::backends`, and what it
//! takes from the gateway is its crate's business: every plugin is opened
//! from the same [`PluginSettings`], built here once from the gateway's
//! configuration. The gateway finds the opened plugins by backend through
//! [`Plugins`] and names them from the description. No plugin connects to
//! anything when opened: backends are reached per namespace.

use std::collections::HashMap;
use std::sync::Arc;

use prism_plugin_api::kv::KeyValueHandle;
use prism_plugin_api::secrets::Secrets;
use prism_plugin_api::{Open, Plugin, PluginSettings};
use prism_proto::control::Backend;

use crate::config::GatewayConfig;
use crate::error::{GatewayError, Result};

/// Every plugin this gateway is built with, one line per backend.
pub const REGISTERED: &[(Backend, Open)] = &[
    (Backend::Embedded, prism_plugin_embedded::open),
    (Backend::Postgres, prism_plugin_postgres::open),
    (Backend::Kafka, prism_plugin_kafka::open),
    // Built with feature `pulsar` only (its client needs protoc); without
    // it a pulsar namespace is DEGRADED, "built without the pulsar plugin".
    #[cfg(feature = "pulsar")]
    (Backend::Pulsar, prism_plugin_pulsar::open),
];

/// Reaches a migration's target held by another instance (an embedded
/// target on its disk). `crate::peer::Peers` is the one implementation;
/// the trait is here, below the snapshot, so that a snapshot entry can
/// open such a target without importing the peer module (which reads the
/// snapshot).
pub trait RemoteTargets: Send + Sync + std::fmt::Debug {
    /// Says which store is this instance's, once it is open.
    fn set_store_id(&self, store_id: Arc<str>);
    /// Whether the store `store_id` is this instance's.
    fn is_local(&self, store_id: &str) -> bool;
    /// The target of `migration` of namespace `name`, on the instance
    /// whose store is `migration.target_owner_store_id`.
    fn target(&self, name: &str, migration: &prism_proto::control::Migration) -> Arc<dyn KeyValueHandle>;
}

/// The backend plugins of this gateway, by backend.
#[derive(Clone, Default)]
pub struct Plugins {
    backends: HashMap<i32, Arc<dyn Plugin>>,
    /// Where a migration's target held by another instance is reached
    /// (`crate::peer`); none in gateways built without one.
    peers: Option<Arc<dyn RemoteTargets>>,
}

impl std::fmt::Debug for Plugins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.backends.keys()).finish()
    }
}

impl Plugins {
    pub fn insert(&mut self, plugin: Arc<dyn Plugin>) {
        self.backends.insert(plugin.capabilities().backend as i32, plugin);
    }

    pub fn get(&self, backend: Backend) -> Option<&Arc<dyn Plugin>> {
        self.backends.get(&(backend as i32))
    }

    /// Every plugin of this gateway.
    pub fn all(&self) -> impl Iterator<Item = &Arc<dyn Plugin>> {
        self.backends.values()
    }

    /// Reaches targets held by other instances through `peers`.
    pub fn set_peers(&mut self, peers: Arc<dyn RemoteTargets>) {
        self.peers = Some(peers);
    }

    pub fn peers(&self) -> Option<&Arc<dyn RemoteTargets>> {
        self.peers.as_ref()
    }

    /// Whether the store `store_id` is this instance's.
    pub fn is_local_store(&self, store_id: &str) -> bool {
        self.peers.as_ref().is_some_and(|p| p.is_local(store_id))
    }
}

/// Opens every registered plugin. A bad setting (an unreadable CA file, a
/// data directory that cannot be opened) stops the gateway here, with the
/// plugin's message ("cannot open the embedded store: …").
pub fn open(config: &GatewayConfig) -> Result<Plugins> {
    let settings = settings(config);
    let mut plugins = Plugins::default();
    for (backend, open) in REGISTERED {
        let plugin = open(&settings).map_err(|e| GatewayError::Internal(e.to_string()))?;
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

/// What this gateway gives every plugin.
fn settings(config: &GatewayConfig) -> PluginSettings {
    PluginSettings {
        data_dir: config.data_dir(),
        chunk_threshold_bytes: config.limits.chunk_threshold_bytes,
        store_cache_bytes: config.cache.store_bytes,
        request_timeout: config.request_timeout(),
        // A namespace's secret reference resolves only to what is declared.
        secrets: Arc::new(Secrets::new(config.secrets.clone())),
        tls_ca_file: config.postgres_tls_ca_file.clone(),
    }
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

    #[test]
    fn every_plugin_opens_and_a_bad_setting_says_which_plugin() {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = GatewayConfig { data_dir: Some(dir.path().join("data")), ..GatewayConfig::default() };
        let plugins = open(&config).expect("every plugin opens with the defaults");
        for (backend, _) in REGISTERED {
            assert!(plugins.get(*backend).is_some(), "{backend:?} is open");
        }
        drop(plugins);

        let config = GatewayConfig { postgres_tls_ca_file: Some(dir.path().join("missing.pem")), ..config };
        let message = open(&config).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(message.starts_with("cannot set up the postgres backend: "), "{message}");
        assert!(message.contains("tls_ca_file"), "{message}");
    }
}
