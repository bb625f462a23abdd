//! Provisioning (SPEC §2), done by the shard that owns a namespace: it sees
//! the namespace on its watch stream, creates the backend resources with
//! its plugin and reports ACTIVE — or DEGRADED with the reason. For a
//! DELETING namespace it drains the requests already admitted (new ones
//! are refused by authorization), removes the resources and reports
//! DELETED. DEGRADED namespaces are retried periodically.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use prism_proto::control::{Backend, NamespaceStatus, ReportNamespaceStatusRequest};
use tokio::sync::watch;

use super::ControlPlane;
use super::watcher::Changes;
use crate::backend::Plugins;
use crate::snapshot::{Metadata, NamespaceEntry};
use crate::tail::TailHub;

/// How often DEGRADED namespaces are retried and missed work is redone.
const RESYNC_EVERY: Duration = Duration::from_secs(30);
/// How often a draining namespace's in-flight count is checked.
const DRAIN_POLL: Duration = Duration::from_millis(10);

/// What the provisioner uses: the snapshot it follows, the plugins that
/// create and remove resources, the tails it closes, and how long to wait
/// for a deleted namespace's requests to drain.
#[derive(Debug)]
pub struct Provisioning {
    pub link: Arc<ControlPlane>,
    pub metadata: Arc<Metadata>,
    pub shard_id: String,
    pub plugins: Plugins,
    pub tails: Arc<TailHub>,
    /// `request_timeout_ms`: a drain waits at most this long.
    pub request_timeout: Duration,
}

pub async fn run(parts: Provisioning, changes: Arc<Changes>, mut shutdown: watch::Receiver<bool>) {
    let mut provisioner = Provisioner { parts, handled: HashMap::new(), adopted: HashMap::new() };
    let mut resync = tokio::time::interval(RESYNC_EVERY);
    loop {
        let periodic = tokio::select! {
            _ = changes.changed() => false,
            _ = resync.tick() => true,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        let (names, all) = changes.take();
        let snapshot = provisioner.parts.metadata.load_full();
        let mine = |e: &&Arc<NamespaceEntry>| e.shard_id == provisioner.parts.shard_id;
        let work: Vec<Arc<NamespaceEntry>> = if all || periodic {
            snapshot.namespaces.values().filter(mine).cloned().collect()
        } else {
            names.iter().filter_map(|n| snapshot.namespace(n)).filter(mine).cloned().collect()
        };
        for entry in work {
            if let Err(e) = provisioner.handle(&entry, periodic).await {
                tracing::warn!(namespace = %entry.ns.name, error = %e, "provisioning step failed; will retry");
                changes.mark([entry.ns.name.clone()]);
            }
        }
    }
}

struct Provisioner {
    parts: Provisioning,
    /// The metadata revision of each namespace this shard last acted on,
    /// so a namespace is not provisioned twice for the same revision.
    handled: HashMap<String, u64>,
    /// The owner epoch (`owner_since`) at which this shard last made sure
    /// a namespace's backend resources are there: a namespace that moves
    /// here ACTIVE (another shard provisioned it) is checked once.
    adopted: HashMap<String, u64>,
}

impl Provisioner {
    async fn handle(&mut self, entry: &NamespaceEntry, periodic: bool) -> Result<(), tonic::Status> {
        let retry_degraded = periodic && entry.status == NamespaceStatus::Degraded;
        let pending = matches!(entry.status, NamespaceStatus::Provisioning | NamespaceStatus::Deleting);
        let already_handled = self.handled.get(&entry.ns.name) == Some(&entry.revision);
        let adopting =
            entry.status == NamespaceStatus::Active && self.adopted.get(&entry.ns.name) != Some(&entry.owner_since);
        let due = retry_degraded || adopting || (pending && !already_handled);
        if !due {
            return Ok(());
        }
        if entry.status != NamespaceStatus::Deleting {
            self.adopted.insert(entry.ns.name.clone(), entry.owner_since);
        } else {
            self.adopted.remove(&entry.ns.name);
        }
        let backend = Backend::try_from(entry.ns.spec.backend).unwrap_or(Backend::Unspecified);
        let plugin = self.parts.plugins.get(backend).cloned();
        let (status, reason) = match (entry.status, plugin) {
            (NamespaceStatus::Deleting, Some(plugin)) => {
                self.parts.tails.close(&entry.ns.name);
                self.drain(entry).await;
                match plugin.deprovision(&entry.ns).await {
                    Ok(()) => (NamespaceStatus::Deleted, "backend resources removed".to_owned()),
                    // Keep DELETING and retry: the data must really go.
                    Err(e) => return Err(tonic::Status::unavailable(format!("deprovision: {}", e.report().message))),
                }
            }
            (NamespaceStatus::Deleting, None) => {
                (NamespaceStatus::Deleted, "no backend resources on this shard".to_owned())
            }
            (_, None) => (
                NamespaceStatus::Degraded,
                format!(
                    "backend {name} is not available on shard {}: this gateway was built without the {name} plugin",
                    self.parts.shard_id,
                    name = prism_proto::capabilities::backend_name(backend),
                ),
            ),
            (_, Some(plugin)) => match plugin.provision(&entry.ns).await {
                Ok(()) => (NamespaceStatus::Active, format!("provisioned by shard {}", self.parts.shard_id)),
                Err(e) => {
                    tracing::warn!(namespace = %entry.ns.name, error = %e, "provisioning failed");
                    (NamespaceStatus::Degraded, e.report().message)
                }
            },
        };
        if retry_degraded && status == NamespaceStatus::Degraded {
            return Ok(()); // still failing: nothing new to report
        }
        if adopting && status == NamespaceStatus::Active {
            tracing::info!(namespace = %entry.ns.name, "took over namespace; backend resources are in place");
            return Ok(()); // already ACTIVE: nothing to report
        }
        self.report(entry, status, reason).await?;
        self.handled.insert(entry.ns.name.clone(), entry.revision);
        Ok(())
    }

    /// Waits until requests admitted before the namespace left ACTIVE have
    /// finished, at most the request timeout (after which they have
    /// failed anyway).
    async fn drain(&self, entry: &NamespaceEntry) {
        let deadline = tokio::time::Instant::now() + self.parts.request_timeout;
        while entry.in_flight.load(Ordering::Acquire) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(DRAIN_POLL).await;
        }
    }

    async fn report(
        &mut self,
        entry: &NamespaceEntry,
        status: NamespaceStatus,
        reason: String,
    ) -> Result<(), tonic::Status> {
        let mut client = self.parts.link.client().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let request = ReportNamespaceStatusRequest {
            name: entry.ns.name.clone(),
            shard_id: self.parts.shard_id.clone(),
            create_revision: entry.ns.create_revision,
            status: status as i32,
            reason,
        };
        match client.report_namespace_status(request).await {
            Ok(_) => {
                tracing::info!(namespace = %entry.ns.name, status = status.as_str_name(), "reported namespace status");
                Ok(())
            }
            // The namespace moved on (re-created, reassigned, already
            // reported): the next watch delta says what to do.
            Err(s)
                if matches!(
                    s.code(),
                    tonic::Code::FailedPrecondition | tonic::Code::Aborted | tonic::Code::NotFound
                ) =>
            {
                tracing::info!(namespace = %entry.ns.name, status = %s.message(), "status report no longer applies");
                Ok(())
            }
            Err(s) => {
                self.parts.link.reset().await;
                Err(s)
            }
        }
    }
}
