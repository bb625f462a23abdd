//! The contract between the gateway and its backend plugins.
//!
//! A plugin serves one backend (embedded, postgres, kafka, pulsar) for every
//! namespace its gateway shard owns. The gateway does everything that is the
//! same for all backends — names, sizes, authentication, authorization,
//! quotas, caching, page tokens, turning TTLs into expiry times, stamping
//! writes — and hands the plugin normalised, already-validated operations.
//! The plugin stores them with the semantics of SPEC §3/§4, and declares
//! which abstractions it serves. Credentials a namespace names by
//! reference reach a plugin through [`secrets`].
//!
//! # A plugin is opened from the gateway's settings
//!
//! Every plugin crate exports `pub fn open(&PluginSettings) ->
//! Result<Arc<dyn Plugin>>` (the [`Open`] type). [`PluginSettings`] is what
//! a gateway gives every plugin — its data directory, the chunk threshold,
//! the request timeout, the secrets it may hand out, the CA file its
//! backends' TLS is checked against — and each plugin takes what it uses
//! and keeps its own defaults for the rest. So a gateway registers a
//! backend with one line, `(Backend::Kafka, prism_plugin_kafka::open)`,
//! and never names a plugin's own configuration type; a plugin never
//! sees the gateway's configuration either, only these settings.
//!
//! # Namespaces are opened once
//!
//! A plugin is called with a namespace's metadata ([`Namespace`]) only to
//! provision, deprovision and *open* it ([`kv::KeyValue::open`],
//! [`ts::TimeSeries::open`]). Opening works out what every call needs —
//! resolved settings and credentials, the pool or client, table and topic
//! names, statement texts, retention — and returns a handle
//! ([`kv::KeyValueHandle`], [`ts::TimeSeriesHandle`]) whose calls derive
//! nothing again. The gateway opens a namespace the first time a request
//! needs it and keeps the handle with the namespace's snapshot entry, which
//! is rebuilt when the namespace's metadata changes, so a changed spec is
//! opened anew and an unchanged one costs nothing per request.
//!
//! Why lazily, on first use, rather than when the metadata arrives: a
//! gateway holds every namespace of the system (10⁵ of them) and serves the
//! few its shard owns and its callers use; a handle holds statement texts
//! and names worth kilobytes, and opening every namespace at each snapshot
//! would cost that memory for namespaces never called, and the time on the
//! watch path. Opening is without I/O, so doing it on a request's path
//! costs one allocation of the handle, once.
//!
//! Why a handle per abstraction rather than one per namespace: a
//! namespace has one abstraction, and the caller knows which it wants; the
//! typed handle saves a check on every call.
//!
//! # What else is here
//!
//! - [`Plugin`]: capabilities, `provision` (and `provision_beside`, for a
//!   migration's target beside its live source), `deprovision`,
//!   `apply_policies` (the spec's settings pushed into the backend and
//!   read back, [`BackendSetting`]), and
//!   [`Plugin::client_stats`] (pool and producer-queue gauges the gateway
//!   turns into metrics: plugins know no metrics library).
//! - [`kv`]: every KeyValue write is one `mutate` of one record: atomic,
//!   stamped with a generation time and an optional idempotency token.
//!   Time is passed in (`now`), so TTL is testable without sleeping.
//! - [`ts`]: one [`ts::Query`] — a series or all, a window, a tag filter, a
//!   cursor — serves both reads and searches;
//!   [`ts::TimeSeriesHandle::write_with`] takes a [`ts::WriteContext`] (the
//!   write's trace context, stored as Kafka headers / Pulsar properties).
//! - [`pace`]: deadline-aware pages. Every read's [`kv::PageLimits`]
//!   carries a [`pace::StopBy`] (a soft instant before the caller's
//!   deadline, and the deadline), and a backend's read loop ends its page
//!   early, with a token, once the soft instant passes (SPEC §3).
//! - [`PluginError`]: each plugin converts its own error into it.
//! - [`secrets`]: credentials on the owning gateway, only what the operator
//!   declared in `[gateway.secrets]`.
//! - `conformance` (feature `conformance`): the suite every backend must
//!   pass; a backend's fixture is a `conformance::Subject`, the plugin and
//!   the `backend_config` every namespace of a case carries (its test
//!   server), so plugins are tested unwrapped.

pub mod error;
pub mod kv;
pub mod pace;
pub mod secrets;
pub mod settings;
pub mod ts;

#[cfg(feature = "conformance")]
pub mod conformance;

use async_trait::async_trait;
pub use prism_proto::control::BackendSetting;
use prism_proto::control::{Abstraction, Backend, NamespaceSpec};

pub use error::{PluginError, Result};
pub use settings::{Open, PluginSettings};

/// Microseconds since the Unix epoch: every time a plugin sees.
pub type Micros = i64;

/// The current time in [`Micros`].
pub fn now_micros() -> Micros {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since.as_micros()).unwrap_or(i64::MAX)
}

/// What a plugin knows of a namespace: an incarnation of a name.
#[derive(Debug, Clone, PartialEq)]
pub struct Namespace {
    /// `tenant/name`.
    pub name: String,
    /// The revision that created this incarnation. A namespace deleted and
    /// created again has a new one, and must not see the old one's data.
    pub create_revision: u64,
    pub spec: NamespaceSpec,
}

impl Namespace {
    pub fn tenant(&self) -> &str {
        self.name.split_once('/').map_or(self.name.as_str(), |(t, _)| t)
    }

    pub fn local_name(&self) -> &str {
        self.name.split_once('/').map_or("", |(_, n)| n)
    }
}

/// What a plugin declares it can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    pub backend: Backend,
    pub abstractions: &'static [Abstraction],
}

impl Capabilities {
    pub fn serves(&self, abstraction: Abstraction) -> bool {
        self.abstractions.contains(&abstraction)
    }
}

/// A backend plugin.
#[async_trait]
pub trait Plugin: Send + Sync + 'static {
    fn capabilities(&self) -> Capabilities;

    /// Creates the namespace's backend resources (tables, topics) and checks
    /// that the backend is reachable with the namespace's settings.
    /// Idempotent: provisioning an existing namespace succeeds.
    ///
    /// The incarnations of the name older than `ns` were deleted (a name
    /// is created again only once its previous incarnation is gone): a
    /// plugin may remove whatever of them it still finds in the same store.
    /// Same as `provision_beside(ns, &[])`.
    async fn provision(&self, ns: &Namespace) -> Result<()> {
        self.provision_beside(ns, &[]).await
    }

    /// Provisions `ns` as [`provision`](Self::provision) does, while the
    /// incarnations of its name whose create revisions are in `live` are
    /// in use: a migration's target (its incarnation is the migration's
    /// id) beside its source, which may be in the very same store. Those
    /// incarnations and every byte of their data are left alone, however
    /// old; only the other older ones may be removed.
    ///
    /// Required, with no default: a plugin that removes older
    /// incarnations when it provisions must know which ones to keep.
    async fn provision_beside(&self, ns: &Namespace, live: &[u64]) -> Result<()>;

    /// Removes the namespace's resources and every byte of its data.
    /// Idempotent: removing what is gone succeeds.
    async fn deprovision(&self, ns: &Namespace) -> Result<()>;

    /// Makes the settings the backend itself holds for `ns` (a Kafka
    /// topic's `retention.ms`; the day partitions a PostgreSQL TimeSeries
    /// keeps) what its spec says now, and returns them as read back from
    /// the backend, for `Namespace.backend_settings`. The owning shard
    /// calls it after [`provision`](Self::provision), and again whenever
    /// the namespace's spec changes or the shard takes the namespace over.
    /// Idempotent: applying what the backend already holds changes
    /// nothing. A setting the backend refuses is [`PluginError::Refused`],
    /// naming the spec's field. By default the backend holds nothing of
    /// the spec (embedded: the gateway applies every policy itself).
    async fn apply_policies(&self, ns: &Namespace) -> Result<Vec<BackendSetting>> {
        let _ = ns;
        Ok(Vec::new())
    }

    /// The KeyValue store, when the plugin serves KEY_VALUE.
    fn key_value(&self) -> Option<&dyn kv::KeyValue> {
        None
    }

    /// The TimeSeries store, when the plugin serves TIME_SERIES.
    fn time_series(&self) -> Option<&dyn ts::TimeSeries> {
        None
    }

    /// The state of the plugin's clients now (connection pools, producer
    /// queues), read when the gateway's metrics are scraped. Plugins know
    /// no metrics library: the gateway turns this into metrics.
    fn client_stats(&self) -> ClientStats {
        ClientStats::default()
    }
}

/// What a plugin says about its clients, summed over all of them (a
/// pool per DSN, a producer per broker list): totals carry no connection
/// string or broker address, and their number is bounded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Connection pools, for backends that pool connections.
    pub pools: Option<PoolStats>,
    /// Producers, for message brokers.
    pub producers: Option<ProducerStats>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Pools open.
    pub pools: u64,
    /// Connections the pools may open at most.
    pub max_connections: u64,
    /// Connections open.
    pub connections: u64,
    /// Open connections not lent to a call.
    pub idle: u64,
    /// Calls waiting for a connection.
    pub waiting: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProducerStats {
    /// Messages handed to a producer and not yet acknowledged by the broker.
    pub queued_messages: u64,
    /// Messages whose send failed, since the plugin started.
    pub send_errors: u64,
}
