//! Provisioning (SPEC §2), done by the shard that owns a namespace: it sees
//! the namespace on its watch stream, creates the backend resources with
//! its plugin and reports ACTIVE — or DEGRADED with the reason. For a
//! DELETING namespace it drains the requests already admitted (new ones
//! are refused by authorization), removes the resources and reports
//! DELETED. DEGRADED namespaces are retried periodically.
//!
//! **Policies in the backend.** After provisioning, and whenever the spec
//! of a namespace it holds changes what the backend may hold (its policies
//! or backend settings: [`policy_fingerprint`]), the owner calls the
//! plugin's `apply_policies` — a Kafka topic's `retention.ms`, a
//! PostgreSQL TimeSeries' day partitions past retention dropped — and
//! reports what the backend holds (`Namespace.backend_settings`) with
//! ACTIVE, without leaving ACTIVE meanwhile; a backend that refuses makes
//! the namespace DEGRADED with the plugin's reason, naming the field, and
//! it is retried periodically like any DEGRADED namespace. Applying is
//! idempotent, so every replica of the shard applies (the same settings)
//! and a restarted gateway applies again; a report is sent only when it
//! changes what the metadata says (status, reason or settings), so a
//! report's own delta, or a second replica, causes none.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use prism_proto::control::{Abstraction, Backend, BackendSetting, NamespaceStatus, ReportNamespaceStatusRequest};
use tokio::sync::watch;

use super::ControlPlane;
use super::watcher::Changes;
use crate::plugins::Plugins;
use crate::snapshot::{Metadata, NamespaceEntry, policy_fingerprint};
use crate::tail::TailHub;

/// How often DEGRADED namespaces are retried and missed work is redone.
const RESYNC_EVERY: Duration = Duration::from_secs(30);
/// How often a draining namespace's in-flight count is checked.
const DRAIN_POLL: Duration = Duration::from_millis(10);
/// How long the owner of a TimeSeries namespace on a shared backend waits,
/// once it is DELETING, before removing the backend's resources: the
/// other replicas see the same delta at about the same time and stop
/// their tails' backend readers first (a reader's fetch of a deleted
/// topic crashes librdkafka under tansu, `plugins/kafka/src/follow.rs`).
/// A replica whose watch lags by more still races the deletion.
const DELETE_GRACE: Duration = Duration::from_secs(1);

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
/// checked yet (it moved here), ACTIVE or DEGRADED with a spec whose
/// settings were not pushed into the backend yet, or DEGRADED at a
/// periodic retry.
fn due(entry: &NamespaceEntry, periodic: bool) -> bool {
    let local = &entry.local;
    let retry_degraded = periodic && entry.status == NamespaceStatus::Degraded;
    let pending = matches!(entry.status, NamespaceStatus::Provisioning | NamespaceStatus::Deleting);
    let already_handled = local.handled_revision.load(Ordering::Acquire) == entry.revision;
    let adopting = entry.status == NamespaceStatus::Active && !adopted(entry);
    retry_degraded || adopting || reapplying(entry) || (pending && !already_handled)
}

/// Whether `entry` is served (ACTIVE or DEGRADED) with a spec whose
/// settings this gateway has not pushed into the backend.
fn reapplying(entry: &NamespaceEntry) -> bool {
    matches!(entry.status, NamespaceStatus::Active | NamespaceStatus::Degraded)
        && entry.local.applied_policy.load(Ordering::Acquire) != policy_fingerprint(&entry.ns.spec)
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
        // An ACTIVE namespace whose resources are known to be there only
        // has its changed settings applied.
        let only_apply = entry.status == NamespaceStatus::Active && !adopting;
        let epoch = if entry.status != NamespaceStatus::Deleting { entry.owner_since } else { 0 };
        entry.local.adopted_epoch.store(epoch, Ordering::Release);
        let backend = Backend::try_from(entry.ns.spec.backend).unwrap_or(Backend::Unspecified);
        let plugin = self.parts.plugins.get(backend).cloned();
        // The fingerprint of what was applied, kept once the outcome is
        // reported (or needs no report): a report that fails is retried.
        let mut applied = None;
        let mut settings = Vec::new();
        let (status, reason) = match (entry.status, plugin) {
            (NamespaceStatus::Deleting, Some(plugin)) => {
                self.parts.tails.close(&entry.ns.name);
                self.drain(entry).await;
                let followed_elsewhere = entry.ns.spec.abstraction == Abstraction::TimeSeries as i32
                    && entry.ns.spec.backend != Backend::Embedded as i32;
                if followed_elsewhere {
                    tokio::time::sleep(DELETE_GRACE).await;
                }
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
            (_, Some(plugin)) => {
                let fingerprint = policy_fingerprint(&entry.ns.spec);
                // A migrated namespace's source stays until its cleanup removes
                // it, maybe in the very store its target is in.
                let provisioned = match (only_apply, entry.migration_source()) {
                    (true, _) => Ok(()),
                    (false, Some(source)) => plugin.provision_beside(&entry.ns, &[source.create_revision]).await,
                    (false, None) => plugin.provision(&entry.ns).await,
                };
                match provisioned {
                    Ok(()) => match plugin.apply_policies(&entry.ns).await {
                        Ok(held) => {
                            applied = Some(fingerprint);
                            settings = held;
                            // The cleanup commit's word on a migrated
                            // namespace stays: its target was provisioned
                            // at PREPARE, and this is its adoption.
                            let kept = entry.status_reason.starts_with("migrated to ")
                                || (only_apply && entry.status_reason.starts_with("provisioned by"));
                            let reason = if kept {
                                entry.status_reason.clone()
                            } else {
                                format!("provisioned by shard {}", self.parts.shard_id)
                            };
                            (NamespaceStatus::Active, reason)
                        }
                        Err(e) => {
                            tracing::warn!(namespace = %entry.ns.name, error = %e, "applying the spec to the backend failed");
                            (NamespaceStatus::Degraded, e.report().message)
                        }
                    },
                    Err(e) => {
                        tracing::warn!(namespace = %entry.ns.name, error = %e, "provisioning failed");
                        (NamespaceStatus::Degraded, e.report().message)
                    }
                }
            }
        };
        // Report only what changes the metadata: a report is a commit
        // every watcher receives, and its own delta must not cause another.
        let pending = matches!(entry.status, NamespaceStatus::Provisioning | NamespaceStatus::Deleting);
        let settings_changed = status == NamespaceStatus::Active && *entry.backend_settings != *settings;
        let unchanged = status == entry.status && reason == entry.status_reason && !settings_changed;
        let keep_applied = || {
            if let Some(fingerprint) = applied {
                entry.local.applied_policy.store(fingerprint, Ordering::Release);
            }
        };
        if !pending && (unchanged || (retry_degraded && status == NamespaceStatus::Degraded)) {
            keep_applied();
            return Ok(()); // still failing, or nothing new to report
        }
        if adopting && status == NamespaceStatus::Active && !settings_changed {
            tracing::info!(namespace = %entry.ns.name, "took over namespace; backend resources are in place");
            keep_applied();
            return Ok(()); // already ACTIVE: nothing to report
        }
        self.report(entry, status, reason, settings).await?;
        keep_applied();
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
        backend_settings: Vec<BackendSetting>,
    ) -> Result<(), tonic::Status> {
        let mut client = self.parts.link.client().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let request = ReportNamespaceStatusRequest {
            name: entry.ns.name.clone(),
            shard_id: self.parts.shard_id.clone(),
            create_revision: entry.incarnation,
            status: status as i32,
            reason,
            backend_settings,
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
