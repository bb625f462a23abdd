//! The embedded backend: a persistent store on the gateway's local disk,
//! the default and the one `prism dev` uses, so nothing else needs to be
//! installed.
//!
//! One [redb](https://docs.rs/redb) file (`<data_dir>/embedded.redb`) holds
//! every namespace the gateway's shard owns. redb gives ACID transactions
//! with fsync on commit, MVCC readers that never block the writer, and is
//! pure Rust. Every redb call runs on tokio's blocking pool. The layouts
//! and the write rules are in [`kv`] (which also owns the namespace
//! registry both abstractions share) and [`ts`].
//!
//! Serves KeyValue and TimeSeries, as the control plane's table says
//! ([`prism_proto::capabilities`]).
//!
//! Each gateway has its own store: replicas of a shard do not share
//! embedded data, and an embedded namespace keeps its shard once
//! provisioned (the control plane never moves it), since its data is on
//! that shard's disk.
//!
//! # Durability
//!
//! A write returns (and the gateway acknowledges it) only after its redb
//! transaction committed, and every commit is redb's default
//! `Durability::Immediate`: the pages and a new checksummed header slot are
//! written, the header is switched to them and the file is fsynced before
//! `commit` returns. So an acknowledged `PutItems`, `DeleteItems`,
//! `MutateItems` or `WriteEventRecordsSync` survives the process being
//! killed and the machine losing power. A write in flight when the process
//! dies is in the file wholly or not at all (one transaction), and its
//! idempotency token is committed in the same transaction as its effect,
//! so the client's retry with the same token applies it exactly once; a
//! TimeSeries event is its own identity, so a retried event is stored once.
//! Nothing is acknowledged from memory: a write that finds everything
//! already there (a repeated token, a repeated event) commits nothing, and
//! what it found was committed, hence durable, before. After a crash redb
//! opens the file by rebuilding its allocator state from the last commit
//! (a repair whose time grows with the file), losing nothing committed.
//! Buffered `WriteEventRecords` are the gateway's, in memory, and only
//! namespaces that accept loss take them. `cli/tests/crash.rs` kills a
//! gateway in the middle of writes and checks all of this (a kill, not a
//! power cut: that rests on the disk honouring fsync).

pub mod config;
pub mod error;
pub mod kv;
pub mod ts;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use prism_plugin_api::kv::{Held, KeyValue};
use prism_plugin_api::pace::{CancelOnDrop, Cancelled};
use prism_plugin_api::ts::TimeSeries;
use prism_plugin_api::{Capabilities, Namespace, Plugin, PluginError, PluginSettings, now_micros};
use prism_proto::control::Backend;
use tokio::sync::Semaphore;

pub use config::EmbeddedConfig;
pub use error::{EmbeddedError, Result};

use crate::kv::{Incarnation, Store};

/// Opens the plugin for a gateway (its line in the gateway's `REGISTERED`):
/// the store in the gateway's data directory, values chunked at the
/// gateway's threshold, this crate's defaults for the rest. Blocking, like
/// [`EmbeddedPlugin::open`].
pub fn open(settings: &PluginSettings) -> prism_plugin_api::Result<Arc<dyn Plugin>> {
    let config = EmbeddedConfig {
        data_dir: settings.data_dir.clone(),
        chunk_threshold_bytes: settings.chunk_threshold_bytes,
        cache_bytes: settings.store_cache_bytes,
        ..EmbeddedConfig::default()
    };
    let plugin =
        EmbeddedPlugin::open(config).map_err(|e| PluginError::internal("cannot open the embedded store", e))?;
    Ok(Arc::new(plugin))
}

/// The embedded backend plugin. Cheap to share behind an `Arc`; one per
/// data directory (redb locks the file).
pub struct EmbeddedPlugin {
    turns: Turns,
    config: EmbeddedConfig,
}

/// The store and the turns its callers take on it: what the plugin and
/// every namespace opened on it share.
#[derive(Clone)]
pub(crate) struct Turns {
    store: Arc<Store>,
    /// One permit: redb runs one write transaction at a time, so writers
    /// queue here, asynchronously, rather than each holding a blocking
    /// thread while it waits for redb's lock.
    writers: Arc<Semaphore>,
    /// `max_concurrent_reads` permits.
    readers: Arc<Semaphore>,
}

/// A namespace opened on the store ([`prism_plugin_api::kv::KeyValue::open`],
/// [`prism_plugin_api::ts::TimeSeries::open`]): its keys' prefix and its
/// retention, worked out once.
pub(crate) struct Opened {
    turns: Turns,
    ns: Arc<Incarnation>,
    /// The TimeSeries retention of the spec it was opened with.
    retention: Option<prism_plugin_api::Micros>,
}

impl Opened {
    fn of(turns: &Turns, ns: &Namespace) -> Result<Self> {
        Ok(Self { turns: turns.clone(), ns: Arc::new(Incarnation::of(ns)?), retention: ts::retention(ns) })
    }
}

impl std::fmt::Debug for EmbeddedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedPlugin").field("config", &self.config).finish_non_exhaustive()
    }
}

impl EmbeddedPlugin {
    /// Validates `config`, creates the data directory if needed and opens
    /// (or creates) the store in it. Blocking: call it before serving or
    /// on a blocking thread.
    pub fn open(config: EmbeddedConfig) -> Result<Self> {
        config.validate()?;
        let store = Store::open(&config)?;
        tracing::info!(data_dir = %config.data_dir.display(), "embedded store open");
        let turns = Turns {
            store: Arc::new(store),
            writers: Arc::new(Semaphore::new(1)),
            readers: Arc::new(Semaphore::new(config.max_concurrent_reads)),
        };
        Ok(Self { turns, config })
    }

    pub fn config(&self) -> &EmbeddedConfig {
        &self.config
    }

    /// Reclaims expired KeyValue items, tombstones and tokens every `every`
    /// (first at once) until the plugin is dropped or the task is aborted.
    /// Failures are logged and retried on the next tick. TimeSeries
    /// retention is not reclaimed here: it is a namespace policy the store
    /// does not keep, so the gateway reclaims each opened namespace
    /// ([`prism_plugin_api::ts::TimeSeriesHandle::reclaim`]). It holds no
    /// namespace's deletes: it knows no migrations (the gateway runs its
    /// own reclamation, which does).
    pub fn spawn_reclaimer(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let plugin = Arc::downgrade(self);
        let every = every.max(Duration::from_millis(1));
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                // Holding only a weak reference lets the plugin (and its
                // file lock) go when its owner drops it.
                let Some(plugin) = plugin.upgrade() else { return };
                match KeyValue::reclaim(plugin.as_ref(), now_micros(), &Held::none()).await {
                    Ok(0) => {}
                    Ok(removed) => tracing::debug!(removed, "reclaimed expired items"),
                    Err(error) => tracing::warn!(%error, "reclaiming expired items failed"),
                }
            }
        })
    }

    /// Runs `f` when it is this writer's turn (one at a time).
    pub(crate) async fn write_turn<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.turns.write_turn(f).await
    }
}

impl Turns {
    /// Runs `f` on the blocking pool once `permits` grants a turn. The
    /// permit moves with `f`, so a caller that stops waiting (a deadline)
    /// does not let another start before `f` ends.
    async fn blocking<T: Send + 'static>(
        &self,
        permits: &Arc<Semaphore>,
        f: impl FnOnce(&Store) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let permit = permits.clone().acquire_owned().await.map_err(|_| EmbeddedError::ShuttingDown)?;
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            let _turn = permit;
            f(&store)
        })
        .await?
    }

    /// Runs `f` when it is this writer's turn (one at a time).
    pub(crate) async fn write_turn<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.blocking(&self.writers, f).await
    }

    /// Runs `f` among at most `max_concurrent_reads` readers.
    pub(crate) async fn read_turn<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.blocking(&self.readers, f).await
    }

    /// As [`Self::read_turn`], for a read loop that stops when its caller
    /// stops waiting: `f` is given a flag raised when this future is
    /// dropped (the request was cancelled or timed out), which a blocking
    /// thread would otherwise never learn.
    pub(crate) async fn read_turn_cancellable<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store, &Cancelled) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (_guard, cancelled) = CancelOnDrop::new();
        self.blocking(&self.readers, move |s| f(s, &cancelled)).await
    }
}

#[async_trait]
impl Plugin for EmbeddedPlugin {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            backend: Backend::Embedded,
            abstractions: prism_proto::capabilities::abstractions(Backend::Embedded),
        }
    }

    async fn provision_beside(&self, ns: &Namespace, live: &[u64]) -> prism_plugin_api::Result<()> {
        let ns = Incarnation::of(ns)?;
        let live = live.to_vec();
        Ok(self.write_turn(move |s| s.provision(&ns, &live)).await?)
    }

    async fn deprovision(&self, ns: &Namespace) -> prism_plugin_api::Result<()> {
        let ns = Incarnation::of(ns)?;
        Ok(self.write_turn(move |s| s.deprovision(&ns)).await?)
    }

    fn key_value(&self) -> Option<&dyn KeyValue> {
        Some(self)
    }

    fn time_series(&self) -> Option<&dyn TimeSeries> {
        Some(self)
    }
}
