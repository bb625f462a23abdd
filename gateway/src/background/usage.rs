//! Usage reports (SPEC §6): every `usage_report_interval_ms` a registered
//! gateway sends the control plane what each namespace it tracks used over
//! its last one-second window (requests, bytes, TimeSeries events and
//! their bytes) and holds now (requests in flight, open tails), and applies the tenant shares the control
//! plane answers — its part of each tenant's limits, in proportion to where
//! the tenant's traffic is — and whether each tenant's storage quota is
//! reached. Every `storage_measure_interval_ms` it also measures the
//! storage of its namespaces that have a storage quota.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use prism_proto::control::{NamespaceStatus, NamespaceUsage, ReportUsageRequest};
use tokio::sync::watch;

use super::ControlPlane;
use super::registration::Registration;
use crate::plugins::Plugins;
use crate::quota::{Metric, QuotaRegistry, Subject, Window};
use crate::snapshot::Metadata;

/// The stored bytes of this shard's namespaces that have a storage quota
/// (their own or their tenant's), as last measured, by namespace.
#[derive(Debug, Default)]
pub struct StorageBook(std::sync::Mutex<HashMap<String, u64>>);

impl StorageBook {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// What the usage task uses: the quota trackers it reads and whose
/// shares it sets, the storage it measures with the plugins, and this
/// instance's registration (it reports only while registered).
#[derive(Debug)]
pub struct Usage {
    pub link: Arc<ControlPlane>,
    pub metadata: Arc<Metadata>,
    pub shard_id: String,
    /// Embedded namespaces are measured only by their owner instance.
    pub store_id: Arc<str>,
    pub plugins: Plugins,
    pub quotas: Arc<QuotaRegistry>,
    pub storage: Arc<StorageBook>,
    pub registration: Arc<Registration>,
    /// `usage_report_interval_ms`.
    pub report_every: Duration,
    /// `storage_measure_interval_ms`.
    pub measure_every: Duration,
}

/// What this gateway's namespaces used over the last second, and what the
/// measured ones store.
pub fn current(task: &Usage) -> Vec<NamespaceUsage> {
    let slot = Window::slot(task.quotas.clock().now_ms());
    let mut out: BTreeMap<String, NamespaceUsage> = task
        .quotas
        .namespaces()
        .into_iter()
        .filter_map(|(name, tracker)| {
            let used = tracker.window().usage(slot);
            let events = tracker.events().map(|w| w.usage(slot)).unwrap_or_default();
            let concurrent = i64::from(tracker.concurrent());
            let tails = i64::from(tracker.tails());
            let requests = used.get(Metric::Requests);
            (requests > 0 || concurrent > 0 || tails > 0).then(|| {
                let usage = NamespaceUsage {
                    namespace: name.clone(),
                    requests_per_second: requests as f64,
                    read_bytes_per_second: used.get(Metric::ReadBytes) as f64,
                    write_bytes_per_second: used.get(Metric::WriteBytes) as f64,
                    storage_bytes: 0,
                    concurrent_requests: concurrent,
                    events_per_second: events.get(Metric::Requests) as f64,
                    event_bytes_per_second: events.get(Metric::WriteBytes) as f64,
                    open_tails: tails,
                };
                (name, usage)
            })
        })
        .collect();
    for (name, bytes) in task.storage.lock().iter() {
        let entry =
            out.entry(name.clone()).or_insert_with(|| NamespaceUsage { namespace: name.clone(), ..Default::default() });
        entry.storage_bytes = i64::try_from(*bytes).unwrap_or(i64::MAX);
    }
    out.into_values().collect()
}

/// Measures the storage of this shard's ACTIVE namespaces that have a
/// storage quota (a full measurement can be costly: a backend may have to
/// read the namespace), and hands it to their quota trackers.
pub async fn measure_storage(task: &Usage) {
    let snapshot = task.metadata.load_full();
    let me = task.shard_id.as_str();
    let mut seen = HashMap::new();
    for entry in snapshot.namespaces.values() {
        if !entry.held_by(me, &task.store_id) || entry.status != NamespaceStatus::Active {
            continue;
        }
        let tenant_limit = snapshot.tenant(entry.tenant()).and_then(|t| t.quotas.as_ref()?.storage_bytes);
        let own_limit = entry.ns.spec.quotas.as_ref().and_then(|q| q.storage_bytes);
        if ![tenant_limit, own_limit].iter().any(|l| l.is_some_and(|l| l >= 0)) {
            continue;
        }
        if task.plugins.get(entry.backend()).and_then(|p| p.key_value()).is_none() {
            continue;
        }
        let measured = match entry.key_value(&task.plugins) {
            Ok(kv) => kv.storage_bytes().await.map_err(crate::error::GatewayError::from),
            Err(e) => Err(e),
        };
        match measured {
            Ok(bytes) => {
                if let Some(t) = task.quotas.tracker(Subject::Namespace(&entry.ns.name)) {
                    t.set_storage(bytes);
                }
                seen.insert(entry.ns.name.clone(), bytes);
            }
            Err(e) => tracing::debug!(namespace = %entry.ns.name, error = %e, "cannot measure storage"),
        }
    }
    *task.storage.lock() = seen;
}

/// Reports usage until `shutdown`.
pub async fn run(task: Usage, mut shutdown: watch::Receiver<bool>) {
    let every = task.report_every;
    let measure_every = task.measure_every;
    let mut measured: Option<tokio::time::Instant> = None;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        if measured.is_none_or(|at| at.elapsed() >= measure_every) {
            measure_storage(&task).await;
            measured = Some(tokio::time::Instant::now());
        }
        let Some(instance_id) = task.registration.instance_id() else { continue };
        let mut c = match task.link.client().await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "cannot reach the control plane to report usage");
                continue;
            }
        };
        let request = ReportUsageRequest {
            shard_id: task.shard_id.clone(),
            instance_id: (*instance_id).clone(),
            namespaces: current(&task),
        };
        match c.report_usage(request).await {
            Ok(response) => {
                for s in response.into_inner().tenant_shares {
                    task.quotas.set_share(Subject::Tenant(&s.tenant_id), s.share);
                    if let Some(t) = task.quotas.tracker(Subject::Tenant(&s.tenant_id)) {
                        t.set_storage(u64::from(s.storage_full));
                    }
                }
            }
            Err(s) => {
                // NOT_FOUND: registration will notice and register again.
                tracing::debug!(status = %s, "usage report refused");
                if s.code() != tonic::Code::NotFound {
                    task.link.reset().await;
                }
            }
        }
    }
}
