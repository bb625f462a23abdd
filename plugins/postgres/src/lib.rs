//! The PostgreSQL backend: every namespace in its own tables, on the server
//! its typed `backend_config` names (DSN, pool size, schema), reached
//! through one [deadpool](https://docs.rs/deadpool-postgres) connection
//! pool per DSN and pool size, made on first need.
//!
//! Nothing connects until a namespace needs it, so a gateway registers
//! this plugin whether or not any PostgreSQL server exists. Provisioning
//! connects, creates the namespace's tables and so checks the settings: an
//! unreachable server, bad credentials or a missing permission fail it with
//! a reason that names neither the DSN nor the server. The layout, the
//! write rules and the locking are in [`kv`].
//!
//! Connection failures and timeouts are UNAVAILABLE; what a client sees
//! never carries the DSN or SQL. A call that does not finish (its
//! deadline passed) closes the connections it held instead of pooling
//! them: they may be dead without being closed (`src/lease.rs`). Every SQL text lives in
//! `src/kv/statements.rs` ([`kv::KvStatements`]), which the loadtest and
//! the benches import; hot statements are prepared once per pooled
//! connection, and one-statement reads share a few pipelined connections
//! of their pool (`src/kv/lanes.rs`: N/8 of a pool of N, at most 4).
//!
//! Serves KeyValue ([`kv`]) and TimeSeries ([`ts`]: time-partitioned
//! tables), as the control plane's capability table says
//! ([`prism_proto::capabilities`]). A namespace gets the tables of its
//! abstraction only.
//!
//! The password is never in the DSN (a DSN with one is not served: the
//! namespace is DEGRADED, naming the field): the
//! namespace's `password_ref` names where this gateway finds it, resolved
//! through the gateway's declared secrets
//! ([`prism_plugin_api::secrets`]); pools are shared only by namespaces
//! with the same credentials.
//!
//! TLS is the namespace's choice and the gateway's trust ([`tls`]): a
//! namespace that sets `require_tls` (or a DSN with `sslmode=require`,
//! `verify-ca` or `verify-full`) is served only over TLS verified against
//! the CAs of the plugin's `tls_ca_file` and the DSN's host — never in
//! plaintext; without that file it is not served at all. Every other
//! namespace connects in plaintext: there is no opportunistic TLS and no
//! fallback to plaintext.

pub mod config;
pub mod error;
pub mod kv;
mod lease;
pub mod tls;
pub mod ts;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use deadpool_postgres::Pool;
use prism_plugin_api::kv::KeyValue;
use prism_plugin_api::secrets::Secrets;
use prism_plugin_api::ts::TimeSeries;
use prism_plugin_api::{Capabilities, Namespace, Plugin, PluginError, PluginSettings};
use prism_proto::control::Backend;

pub use config::{NamespaceSettings, PostgresPluginConfig};
pub use error::{PostgresError, Result};
pub use kv::{KvStatements, TableNames};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::PoolKey;
use crate::kv::Target;
use crate::kv::lanes::Lanes;

/// Opens the plugin for a gateway (its line in the gateway's `REGISTERED`):
/// values chunked at the gateway's threshold, TLS checked against the
/// gateway's CA file (read here, so a bad one stops the gateway at
/// startup), a namespace's `password_ref` resolved only to the gateway's
/// declared secrets, this crate's defaults for the rest (its timeouts
/// among them). Opens no connection.
pub fn open(settings: &PluginSettings) -> prism_plugin_api::Result<Arc<dyn Plugin>> {
    let config = PostgresPluginConfig {
        chunk_threshold_bytes: settings.chunk_threshold_bytes,
        tls_ca_file: settings.tls_ca_file.clone(),
        ..PostgresPluginConfig::default()
    };
    let plugin = PostgresPlugin::new(config)
        .map_err(|e| PluginError::internal("cannot set up the postgres backend", e))?
        .with_secrets(settings.secrets.clone());
    Ok(Arc::new(plugin))
}

/// The postgres backend plugin. Cheap to share behind an `Arc`.
///
/// Connections run on the tokio runtime that opened them: use one plugin
/// per runtime.
pub struct PostgresPlugin {
    config: PostgresPluginConfig,
    /// TLS trusting the CAs of `tls_ca_file`; `None` without one.
    tls: Option<MakeRustlsConnect>,
    /// Pools and namespaces; shared with every opened namespace, which
    /// forgets itself when it finds its tables gone.
    registry: Arc<Registry>,
    /// The secrets namespaces may name as their `password_ref`.
    secrets: Arc<Secrets>,
}

/// What the plugin has made and met.
#[derive(Default)]
pub(crate) struct Registry {
    /// A pool is shared by the namespaces with the same DSN, pool size and
    /// TLS requirement, and so are its lanes ([`kv::lanes`]).
    pools: Mutex<HashMap<PoolKey, (Pool, Arc<Lanes>)>>,
    /// Namespace incarnations this plugin has provisioned or served, by
    /// `(name, create_revision)`: what [`KeyValue::reclaim`] visits.
    known: Mutex<HashMap<(String, i64), Arc<Target>>>,
}

impl Registry {
    /// Forgets `target` (deprovisioned, or its tables are gone), and its
    /// pool once no remembered namespace uses it. The pool is not closed:
    /// calls still using it finish, and its connections go with the last.
    pub(crate) fn forget(&self, target: &Target) {
        let mut known = lock(&self.known);
        known.remove(&(target.name.clone(), target.revision));
        let key = target.settings.pool_key();
        if !known.values().any(|t| t.settings.pool_key() == key) {
            lock(&self.pools).remove(&key);
        }
    }

    /// Turns "the tables are not there" into `NotProvisioned`, forgetting
    /// the namespace.
    pub(crate) fn settle<T>(&self, t: &Target, result: Result<T>) -> Result<T> {
        result.map_err(|e| {
            if e.is_missing_table() {
                self.forget(t);
                PostgresError::NotProvisioned(t.name.clone())
            } else {
                e
            }
        })
    }
}

/// A namespace opened ([`KeyValue::open`], [`TimeSeries::open`]): its
/// [`Target`] — settings, pool, names, statements — and its retention,
/// worked out once. It keeps its target when the plugin forgets it (the
/// namespace was deprovisioned): provisioned again, the same tables are
/// there, and the target's remembered partitions are forgotten with them.
pub(crate) struct Opened {
    pub(crate) target: Arc<Target>,
    registry: Arc<Registry>,
    request_timeout: std::time::Duration,
    /// The TimeSeries retention of the spec it was opened with.
    pub(crate) retention: Option<prism_plugin_api::Micros>,
    /// What a tail's own listening connection is made with
    /// ([`ts::follow`]): the plugin's settings and TLS.
    pub(crate) listen: (PostgresPluginConfig, Option<MakeRustlsConnect>),
}

impl Opened {
    /// Runs `call` within the request timeout, then settles a missing
    /// table as `NotProvisioned`.
    pub(crate) async fn run<T>(
        &self,
        what: &'static str,
        call: impl Future<Output = Result<T>>,
    ) -> prism_plugin_api::Result<T> {
        let result = bounded(self.request_timeout, what, call).await;
        Ok(self.registry.settle(&self.target, result)?)
    }
}

/// Runs `call` as one operation (its connections are closed if it does
/// not finish, `src/lease.rs`), failing it as timed out after `timeout`: a
/// server that stops answering must not hang a request.
async fn bounded<T>(
    timeout: std::time::Duration,
    what: &'static str,
    call: impl Future<Output = Result<T>>,
) -> Result<T> {
    tokio::time::timeout(timeout, lease::operation(call)).await.map_err(|_| PostgresError::Timeout(what))?
}

impl std::fmt::Debug for PostgresPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Pools hold DSNs: not for logs.
        f.debug_struct("PostgresPlugin").field("config", &self.config).finish_non_exhaustive()
    }
}

/// Locks a map that no panic can leave half-updated (every critical
/// section is one insert or remove), so a poisoned lock is still usable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl PostgresPlugin {
    /// Validates `config` and reads its `tls_ca_file`, if any: a file that
    /// is missing or holds no usable certificate fails here, naming the
    /// field, not later on a namespace's first connection. Opens no
    /// connection.
    pub fn new(config: PostgresPluginConfig) -> Result<Self> {
        config.validate()?;
        let tls = config.tls_ca_file.as_deref().map(tls::connector).transpose()?;
        Ok(Self { config, tls, registry: Arc::default(), secrets: Arc::default() })
    }

    /// The secrets namespaces may name as their password (the gateway's
    /// `[gateway.secrets]`); without, every `password_ref` is refused.
    pub fn with_secrets(mut self, secrets: Arc<Secrets>) -> Self {
        self.secrets = secrets;
        self
    }

    pub fn config(&self) -> &PostgresPluginConfig {
        &self.config
    }

    /// How `ns` is stored: its settings, pool and tables. Remembered, so
    /// that later requests and reclamation find it.
    ///
    /// A remembered incarnation is reused while the namespace's
    /// `backend_config` is the one it was made from (compared as given,
    /// field by field: no parsing): settings, pool, tables and statement
    /// texts are worked out once per incarnation and settings, not per
    /// call. Different settings (an update) make a new one.
    pub(crate) fn target(&self, ns: &Namespace) -> Result<Arc<Target>> {
        let revision = kv::revision(ns)?;
        let key = (ns.name.clone(), revision);
        if let Some(given) = config::postgres_config(ns)
            && let Some(target) = lock(&self.registry.known).get(&key)
            && target.backend == *given
        {
            return Ok(target.clone());
        }
        let settings = NamespaceSettings::of(ns, &self.secrets)?;
        let backend = config::postgres_config(ns).cloned().unwrap_or_default();
        let (pool, lanes) = self.pool(&settings)?;
        let target = Arc::new(Target::new(ns, revision, settings, backend, pool, lanes, &self.config)?);
        lock(&self.registry.known).insert(key, target.clone());
        Ok(target)
    }

    /// `ns` opened: its target, remembered, and its retention.
    fn opened(&self, ns: &Namespace) -> Result<Opened> {
        Ok(Opened {
            target: self.target(ns)?,
            registry: self.registry.clone(),
            request_timeout: self.config.request_timeout,
            retention: prism_plugin_api::ts::retention(ns),
            listen: (self.config.clone(), self.tls.clone()),
        })
    }

    /// The pool for `settings` and its lanes, made (without connecting)
    /// if needed.
    fn pool(&self, settings: &NamespaceSettings) -> Result<(Pool, Arc<Lanes>)> {
        let key = settings.pool_key();
        let mut pools = lock(&self.registry.pools);
        if let Some(pool) = pools.get(&key) {
            return Ok(pool.clone());
        }
        let pool = settings.make_pool(&self.config, self.tls.as_ref())?;
        let lanes = Arc::new(Lanes::new(pool.clone(), Lanes::count(settings.pool_size)));
        pools.insert(key, (pool.clone(), lanes.clone()));
        Ok((pool, lanes))
    }

    /// See [`Registry::forget`].
    pub(crate) fn forget(&self, target: &Target) {
        self.registry.forget(target);
    }

    /// Every remembered namespace incarnation.
    pub(crate) fn known(&self) -> Vec<Arc<Target>> {
        lock(&self.registry.known).values().cloned().collect()
    }

    /// Forgets the incarnations of `name` older than `revision` but the
    /// `live` ones: their tables were dropped.
    pub(crate) fn forget_older(&self, name: &str, revision: i64, live: &[i64]) {
        lock(&self.registry.known).retain(|(n, r), _| n != name || *r >= revision || live.contains(r));
    }

    /// Runs `call`, failing it as timed out after the request timeout: a
    /// server that stops answering must not hang a request.
    pub(crate) async fn bounded<T>(&self, what: &'static str, call: impl Future<Output = Result<T>>) -> Result<T> {
        bounded(self.config.request_timeout, what, call).await
    }
}

#[async_trait]
impl Plugin for PostgresPlugin {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            backend: Backend::Postgres,
            abstractions: prism_proto::capabilities::abstractions(Backend::Postgres),
        }
    }

    fn client_stats(&self) -> prism_plugin_api::ClientStats {
        let mut stats = prism_plugin_api::PoolStats::default();
        for pool in lock(&self.registry.pools).values() {
            // The lanes are connections of the pool, counted with it.
            let status = pool.0.status();
            stats.pools += 1;
            stats.max_connections += status.max_size as u64;
            stats.connections += status.size as u64;
            stats.idle += status.available as u64;
            stats.waiting += status.waiting as u64;
        }
        prism_plugin_api::ClientStats { pools: Some(stats), producers: None }
    }

    async fn provision_beside(&self, ns: &Namespace, live: &[u64]) -> prism_plugin_api::Result<()> {
        let target = self.target(ns)?;
        // Revisions past i64 name no incarnation (`Target` refuses them).
        let live: Vec<i64> = live.iter().filter_map(|r| i64::try_from(*r).ok()).collect();
        self.bounded("provisioning", kv::provision(self, &target, &live)).await.map_err(|e| {
            tracing::warn!(namespace = %ns.name, error = %e, "provisioning postgres tables failed");
            // Not provisioned: nothing for reclamation to visit.
            self.forget(&target);
            e.into()
        })
    }

    /// A TimeSeries namespace's retention is the day partitions it keeps:
    /// those wholly past it are dropped now ([`ts::apply`]), and what is
    /// left is reported. KeyValue tables hold nothing of the spec.
    async fn apply_policies(&self, ns: &Namespace) -> prism_plugin_api::Result<Vec<prism_plugin_api::BackendSetting>> {
        if ns.spec.abstraction != prism_proto::control::Abstraction::TimeSeries as i32 {
            return Ok(Vec::new());
        }
        let opened = self.opened(ns)?;
        let now = prism_plugin_api::now_micros();
        opened.run("applying policies", ts::apply(&opened.target, now, opened.retention)).await
    }

    async fn deprovision(&self, ns: &Namespace) -> prism_plugin_api::Result<()> {
        let target = match self.target(ns) {
            Ok(target) => target,
            // Settings that can never connect (no DSN, a bad name) never
            // created anything: there is nothing to remove, and the
            // deletion must not wait forever for it. A namespace that
            // requires TLS on a gateway without CAs is not one of them:
            // another gateway may have created its tables, so that error
            // stays (retryable), like an unreachable server's.
            Err(PostgresError::Invalid { field, .. }) => {
                tracing::info!(namespace = %ns.name, %field, "nothing to deprovision: the settings never allowed provisioning");
                return Ok(());
            }
            // Stored before inline passwords were refused, and blanked
            // since: no credentials to remove the tables with. Waiting
            // would hold the deletion forever (a deleting namespace cannot
            // be updated), so its tables are left, loudly.
            Err(PostgresError::InlinePassword) => {
                tracing::warn!(
                    namespace = %ns.name,
                    create_revision = ns.create_revision,
                    "cannot remove the namespace's postgres tables: its dsn held a password, which is no longer used; drop them by hand"
                );
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        self.bounded("deprovisioning", kv::deprovision(&target)).await?;
        self.forget(&target);
        Ok(())
    }

    fn key_value(&self) -> Option<&dyn KeyValue> {
        Some(self)
    }

    fn time_series(&self) -> Option<&dyn TimeSeries> {
        Some(self)
    }
}

impl TimeSeries for PostgresPlugin {
    fn open(&self, ns: &Namespace) -> prism_plugin_api::Result<Arc<dyn prism_plugin_api::ts::TimeSeriesHandle>> {
        Ok(Arc::new(self.opened(ns)?))
    }
}

#[cfg(test)]
mod tests {
    use prism_plugin_api::PluginError;
    use prism_proto::control::backend_config::Config;
    use prism_proto::control::{BackendConfig, NamespaceSpec, PostgresConfig};

    use super::*;

    fn ns(pg: PostgresConfig) -> Namespace {
        Namespace {
            name: "acme/cache".into(),
            create_revision: 3,
            spec: NamespaceSpec {
                backend_config: Some(Box::new(BackendConfig { config: Some(Config::Postgres(pg)) })),
                ..Default::default()
            },
        }
    }

    #[tokio::test]
    async fn targets_are_reused_until_the_settings_change() {
        let plugin = PostgresPlugin::new(PostgresPluginConfig::default()).expect("valid config");
        let first = PostgresConfig { dsn: "postgres://u@db/x".into(), ..Default::default() };
        let a = plugin.target(&ns(first.clone())).expect("valid settings");
        let again = plugin.target(&ns(first.clone())).expect("valid settings");
        assert!(Arc::ptr_eq(&a, &again), "same settings: the remembered target");
        assert_eq!(a.settings.schema, "public");

        let moved = PostgresConfig { schema: "other".into(), ..first.clone() };
        let b = plugin.target(&ns(moved)).expect("valid settings");
        assert!(!Arc::ptr_eq(&a, &b), "new settings: a new target");
        assert_eq!(b.settings.schema, "other");
        assert_eq!(b.names.schema, "other");

        let bad = PostgresConfig { pool_size: 5000, ..first };
        assert!(matches!(plugin.target(&ns(bad)), Err(PostgresError::Invalid { .. })), "checked again, not reused");
        let none = Namespace { spec: NamespaceSpec::default(), ..ns(PostgresConfig::default()) };
        assert!(matches!(plugin.target(&none), Err(PostgresError::Invalid { .. })));
    }

    #[tokio::test]
    async fn passwords_come_only_from_declared_references() {
        use prism_plugin_api::secrets::SecretEntry;
        let shared = |tenants: &[&str]| SecretEntry {
            env: Some("PATH".into()),
            file: None,
            tenants: tenants.iter().map(|t| (*t).to_owned()).collect(),
        };
        let secrets = Secrets::new(
            [("mine".to_owned(), shared(&["acme"])), ("theirs".to_owned(), shared(&["globex"]))].into_iter().collect(),
        );
        let plugin =
            PostgresPlugin::new(PostgresPluginConfig::default()).expect("valid config").with_secrets(secrets.into());
        let pg = |dsn: &str, password_ref: &str| {
            ns(PostgresConfig { dsn: dsn.into(), password_ref: password_ref.into(), ..Default::default() })
        };

        let inline = plugin.target(&pg("postgres://u:hunter2@db/x", "")).err().expect("inline password");
        assert!(matches!(inline, PostgresError::InlinePassword));
        let reason = PluginError::from(inline).report().message;
        assert!(reason.contains("password_ref") && !reason.contains("hunter2"), "{reason}");

        let theirs = plugin.target(&pg("postgres://u@db/x", "secret:theirs")).err().expect("another tenant's");
        let reason = PluginError::from(theirs).report().message;
        assert!(reason.contains("secret:theirs") && reason.contains("not declared for tenant acme"), "{reason}");

        let with = plugin.target(&pg("postgres://u@db/x", "secret:mine")).expect("declared for acme");
        let without = plugin.target(&pg("postgres://u@db/y", "")).expect("no password");
        assert!(with.settings.pool_key().3.is_some() && without.settings.pool_key().3.is_none());
        assert!(!format!("{:?}", with.settings).contains(&std::env::var("PATH").unwrap_or_else(|_| "no PATH".into())));
    }
}
