//! What a gateway gives every plugin it opens ([`PluginSettings`]), and
//! the shape of the function each plugin crate exports to be opened from
//! it ([`Open`]). A gateway registers a backend with one line, the
//! backend and its crate's `open`; what the plugin takes from these
//! settings, and its own defaults for the rest, are the plugin's
//! business, so the gateway names no plugin's configuration type.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::secrets::Secrets;
use crate::{Plugin, Result};

/// Opens one backend's plugin from its gateway's settings. Exported by
/// every plugin crate as `pub fn open`. It connects to nothing (backends
/// are reached per namespace); it fails only on a setting the plugin
/// cannot use (a data directory it cannot open, an unreadable CA file),
/// with an error whose message says which plugin and why, so the gateway
/// can stop at startup with it.
pub type Open = fn(&PluginSettings) -> Result<Arc<dyn Plugin>>;

/// The settings a gateway hands every plugin: the same for all of them,
/// each taking what it uses. Built once, from the gateway's configuration.
#[derive(Debug, Clone)]
pub struct PluginSettings {
    /// The directory of the gateway's own data (its `data_dir`). A plugin
    /// that keeps files keeps them here: embedded keeps its store.
    pub data_dir: PathBuf,
    /// Values longer than this many bytes are stored in chunks of this
    /// size, by the plugins that store values (the gateway's
    /// `limits.chunk_threshold_bytes`).
    pub chunk_threshold_bytes: u64,
    /// Memory a plugin that caches its own store's pages may use for them
    /// (the gateway's `cache.store_bytes`): the embedded store's redb page
    /// cache, which otherwise grows with the data up to redb's 1 GiB.
    pub store_cache_bytes: u64,
    /// How long one request may take at the gateway (its
    /// `limits.request_timeout_ms`): a plugin that bounds its own calls
    /// should not let one outlive it. Pulsar bounds every call by it; the
    /// others keep their own, shorter, defaults.
    pub request_timeout: Duration,
    /// The secrets this gateway may hand out (`[gateway.secrets]`): what a
    /// namespace's secret reference may resolve to, and nothing else.
    pub secrets: Arc<Secrets>,
    /// A PEM file of the CA certificates a plugin trusts to sign its
    /// backends' server certificates, read when the plugin opens (so a bad
    /// file stops the gateway at startup). It comes from the gateway's
    /// `postgres_tls_ca_file`, and only the postgres plugin reads it
    /// today: Kafka is built without TLS, and Pulsar's `pulsar+ssl://`
    /// trusts its client's own roots. A plugin that starts reading it
    /// should say so here and in the gateway's setting.
    pub tls_ca_file: Option<PathBuf>,
}
