//! Provisioning (SPEC §2), done by the shard that owns a namespace: it sees
//! the namespace on its watch stream, creates the backend resources with
//! its plugin and reports ACTIVE — or DEGRADED with the reason. For a
//! DELETING namespace it drains the requests already admitted (new ones
//! are refused by authorization), removes the resources and reports
//! DELETED. DEGRADED namespaces are retried periodically.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use prism_proto::control::{Backend, NamespaceStatus, ReportNamespaceStatusRequest};
use tokio::sync::watch;

use super::ControlPlane;
use super::watcher::Changes;
use crate::plugins::Plugins;
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
    /// This instance's store id: of an embedded namespace, only the owner
    /// instance provisions and deletes.
    pub store_id: Arc<str>,
    pub plugins: Plugins,
    pub tails: Arc<TailHub>,
    /// `request_timeout_ms`: a drain waits at most this long.
    pub request_timeout: Duration,
}

pub async fn run(parts: Provisioning, changes: Arc<Changes>, mut shutdown: watch::Receiver<bool>) {
    let provisioner = Provisioner { parts };
    let mut resync = tokio::time::interval(RESYNC_EVERY);
    loop {
        let periodic = tokio::select! {
            _ = changes.changed() => false,
            _ = resync.tick() => true,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        let (names, all) = changes.take();
        // Only the names of what is due, picked on one snapshot that is
        // let go at once: a long batch holds no old snapshot (with every
        // entry of its revision) while the watcher moves on.
        let work: Vec<String> = {
            let snapshot = provisioner.parts.metadata.load();
            let wanted = |e: &&Arc<NamespaceEntry>| provisioner.mine(e) && due(e, periodic);
            if all || periodic {
                snapshot.namespaces.values().filter(wanted).map(|e| e.ns.name.clone()).collect()
            } else {
                names.into_iter().filter(|n| snapshot.namespace(n).is_some_and(|e| wanted(&e))).collect()
            }
        };
        for name in work {
            // The freshest entry of each: it may have moved on meanwhile.
            let entry = provisioner.parts.metadata.load().namespace(&name).filter(|e| provisioner.mine(e)).cloned();
            let Some(entry) = entry.filter(|e| due(e, periodic)) else { continue };
            if let Err(e) = provisioner.handle(&entry, periodic).await {
                tracing::warn!(namespace = %entry.ns.name, error = %e, "provisioning step failed; will retry");
                changes.mark([entry.ns.name.clone()]);
            }
        }
    }
}

/// Whether `entry` needs the provisioner: pending (PROVISIONING or
/// DELETING) at a revision not acted on yet, ACTIVE at an owner epoch not
/// checked yet (it moved here), or DEGRADED at a periodic retry.
fn due(entry: &NamespaceEntry, periodic: bool) -> bool {
    let local = &entry.local;
    let retry_degraded = periodic && entry.status == NamespaceStatus::Degraded;
    let pending = matches!(entry.status, NamespaceStatus::Provisioning | NamespaceStatus::Deleting);
    let already_handled = local.handled_revision.load(Ordering::Acquire) == entry.revision;
    let adopting = entry.status == NamespaceStatus::Active && !adopted(entry);
    retry_degraded || adopting || (pending && !already_handled)
}

/// Whether this shard made sure of `entry`'s resources at its owner epoch.
fn adopted(entry: &NamespaceEntry) -> bool {
    entry.local.adopted_epoch.load(Ordering::Acquire) == entry.owner_since
}

/// What the provisioner remembers of each namespace (the revision it acted
/// on, the owner epoch it checked) is kept with the namespace
/// ([`crate::snapshot::Local`]), so it goes when the namespace goes.
struct Provisioner {
    parts: Provisioning,
}

impl Provisioner {
    fn mine(&self, entry: &NamespaceEntry) -> bool {
        entry.held_by(&self.parts.shard_id, &self.parts.store_id)
    }

    /// Acts on `entry`, which [`due`] says needs it.
    async fn handle(&self, entry: &NamespaceEntry, periodic: bool) -> Result<(), tonic::Status> {
        let retry_degraded = periodic && entry.status == NamespaceStatus::Degraded;
        let adopting = entry.status == NamespaceStatus::Active && !adopted(entry);
        let epoch = if entry.status != NamespaceStatus::Deleting { entry.owner_since } else { 0 };
        entry.local.adopted_epoch.store(epoch, Ordering::Release);
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
        entry.local.handled_revision.store(entry.revision, Ordering::Release);
        Ok(())
    }

    /// Waits until requests admitted before the namespace left ACTIVE have
    /// finished, at most the request timeout (after which they have
    /// failed anyway).
    async fn drain(&self, entry: &NamespaceEntry) {
        let deadline = tokio::time::Instant::now() + self.parts.request_timeout;
        while entry.local.in_flight.load(Ordering::Acquire) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(DRAIN_POLL).await;
        }
    }

    async fn report(
        &self,
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
