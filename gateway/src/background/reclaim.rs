//! Reclamation: removes expired items periodically, in every KeyValue
//! plugin, and events past retention in this shard's TimeSeries
//! namespaces.

use std::sync::Arc;
use std::time::Duration;

use prism_plugin_api::kv::Held;

use crate::error::GatewayError;
use crate::plugins::Plugins;
use crate::snapshot::Metadata;

/// What reclamation uses.
#[derive(Debug)]
pub struct Reclaim {
    pub metadata: Arc<Metadata>,
    pub shard_id: String,
    /// Embedded namespaces are reclaimed only by their owner instance.
    pub store_id: Arc<str>,
    pub plugins: Plugins,
    /// `limits.reclaim_interval_seconds`.
    pub every: Duration,
}

/// Reclaims every [`Reclaim::every`] until `stopped`.
pub async fn run(task: Reclaim, mut stopped: tokio::sync::watch::Receiver<bool>) {
    let mut every = tokio::time::interval(task.every);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stopped.wait_for(|stop| *stop) => return,
        }
        // A migration's backfill copies deletes: reclamation keeps those of
        // every namespace being migrated (plugins hold them by name, which
        // covers the source and the target's incarnation alike).
        let held: Held = task
            .metadata
            .load()
            .namespaces
            .values()
            .filter(|e| e.migration.is_some())
            .map(|e| e.ns.name.clone())
            .collect();
        for plugin in task.plugins.all() {
            if let Some(kv) = plugin.key_value() {
                match kv.reclaim(prism_plugin_api::now_micros(), &held).await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(removed = n, "reclaimed expired items"),
                    Err(e) => tracing::warn!(error = %e, "reclaiming expired items failed"),
                }
            }
        }
        let snapshot = task.metadata.load_full();
        let now = prism_plugin_api::now_micros();
        for entry in snapshot.namespaces.values() {
            let owned_series = entry.held_by(&task.shard_id, &task.store_id)
                && entry.status == prism_proto::control::NamespaceStatus::Active
                && entry.ns.spec.abstraction == prism_proto::control::Abstraction::TimeSeries as i32;
            let served = task.plugins.get(entry.backend()).and_then(|p| p.time_series()).is_some();
            if !(owned_series && served) {
                continue;
            }
            let reclaimed = match entry.time_series(&task.plugins) {
                Ok(ts) => ts.reclaim(now).await.map_err(GatewayError::from),
                Err(e) => Err(e),
            };
            if let Err(e) = reclaimed {
                tracing::warn!(namespace = %entry.ns.name, error = %e, "dropping events past retention failed");
            }
        }
    }
}
