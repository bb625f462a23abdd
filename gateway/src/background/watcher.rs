//! The metadata watch task: keeps the gateway's snapshot current from the
//! control plane's Watch stream, resuming from the last applied revision
//! after any disconnect (with jittered exponential backoff). It is the only
//! writer of the snapshot. While disconnected the gateway keeps serving
//! from the last snapshot; `Metadata::staleness` says for how long.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prism_proto::control::{NamespaceStatus, WatchRequest, watch_response};
use tokio::sync::{Notify, watch};

use super::ControlPlane;
use crate::cache::ReadCache;
use crate::health::Readiness;
use crate::metrics::GatewayMetrics;
use crate::quota::QuotaRegistry;
use crate::snapshot::{Metadata, Snapshot, SnapshotBuilder};
use crate::tail::TailHub;

const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Namespaces whose metadata changed since the provisioner last looked.
/// Bounded by the number of namespaces; a snapshot marks everything.
#[derive(Debug, Default)]
pub struct Changes {
    inner: Mutex<(HashSet<String>, bool)>,
    notify: Notify,
}

impl Changes {
    pub fn mark(&self, names: impl IntoIterator<Item = String>) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.0.extend(names);
        }
        self.notify.notify_one();
    }

    pub fn mark_all(&self) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.1 = true;
        }
        self.notify.notify_one();
    }

    /// The changed names, and whether everything must be looked at.
    pub fn take(&self) -> (HashSet<String>, bool) {
        self.inner
            .lock()
            .map(|mut inner| (std::mem::take(&mut inner.0), std::mem::take(&mut inner.1)))
            .unwrap_or_default()
    }

    pub async fn changed(&self) {
        self.notify.notified().await;
    }
}

#[derive(Debug, thiserror::Error)]
enum WatchError {
    #[error("connect: {0}")]
    Connect(#[from] prism_client::ClientError),
    #[error("stream: {0}")]
    Status(#[from] tonic::Status),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("another task dropped the connection")]
    Dropped,
}

/// What the watch task uses: the snapshot it writes, what it releases
/// when a namespace leaves this shard (cached records, tails), the quota
/// share it sets, and what it tells (readiness, metrics).
#[derive(Debug)]
pub struct Watcher {
    pub link: Arc<ControlPlane>,
    pub metadata: Arc<Metadata>,
    pub shard_id: String,
    /// This instance's store id: an embedded namespace another store owns
    /// is not served here.
    pub store_id: Arc<str>,
    pub cache: Arc<ReadCache>,
    pub tails: Arc<TailHub>,
    pub quotas: Arc<QuotaRegistry>,
    pub metrics: Arc<GatewayMetrics>,
    pub readiness: Arc<Readiness>,
}

/// Runs until `shutdown` turns true.
pub async fn run(watcher: Watcher, changes: Arc<Changes>, mut shutdown: watch::Receiver<bool>) {
    let mut backoff = MIN_BACKOFF;
    loop {
        let outcome = tokio::select! {
            outcome = follow(&watcher, &changes, &mut backoff) => outcome,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        watcher.metadata.set_connected(false);
        // The stream is followed again on a new connection, as it always
        // was: a broken one must not be reused.
        watcher.link.reset().await;
        watcher.metrics.watch_reconnects.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match outcome {
            Ok(()) => tracing::info!("metadata watch ended; reconnecting"),
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    revision = watcher.metadata.load().revision,
                    stale_for = ?watcher.metadata.staleness(),
                    "metadata watch failed; serving from the last snapshot and reconnecting"
                )
            }
        }
        let jitter = rand::random_range(0.5..1.0);
        tokio::select! {
            _ = tokio::time::sleep(backoff.mul_f64(jitter)) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Follows one Watch stream until it ends or fails.
async fn follow(watcher: &Watcher, changes: &Changes, backoff: &mut Duration) -> Result<(), WatchError> {
    // The stream lives on the shared connection: when another task drops
    // it as broken, the stream moves too.
    let mut resets = watcher.link.resets();
    let mut client = watcher.link.client().await?;
    let from_revision = watcher.metadata.load().revision;
    let mut stream = tokio::select! {
        stream = client.watch(WatchRequest { from_revision }) => stream?.into_inner(),
        _ = resets.changed() => return Err(WatchError::Dropped),
    };
    watcher.metadata.set_connected(true);
    *backoff = MIN_BACKOFF;
    tracing::info!(from_revision, "watching metadata");
    let mut building: Option<SnapshotBuilder> = None;
    loop {
        let message = tokio::select! {
            message = stream.message() => message?,
            _ = resets.changed() => return Err(WatchError::Dropped),
        };
        let Some(message) = message else { break };
        watcher.metadata.heard();
        match message.event {
            Some(watch_response::Event::Snapshot(chunk)) => {
                let builder = building.get_or_insert_with(|| SnapshotBuilder::new(chunk.revision));
                if builder.revision() != chunk.revision {
                    return Err(WatchError::Protocol("snapshot chunks of different revisions".into()));
                }
                let last = chunk.last;
                builder.add(chunk, &watcher.metadata.load());
                if last {
                    let snapshot = building.take().map(SnapshotBuilder::build).unwrap_or_default();
                    tracing::info!(
                        revision = snapshot.revision,
                        namespaces = snapshot.namespaces.len(),
                        "metadata snapshot loaded"
                    );
                    let previous = watcher.metadata.load_full();
                    let names: Vec<String> = previous.namespaces.keys().map(str::to_owned).collect();
                    release_lost(watcher, &previous, &snapshot, &names);
                    share_among_replicas(watcher, &previous, &snapshot);
                    let moved = tails_moved(&previous, &snapshot, &names);
                    watcher.metadata.store(snapshot);
                    end_moved_tails(watcher, moved);
                    watcher.readiness.snapshot_loaded();
                    changes.mark_all();
                }
            }
            Some(watch_response::Event::Delta(delta)) => {
                if building.is_some() {
                    return Err(WatchError::Protocol("delta inside a snapshot".into()));
                }
                let started = std::time::Instant::now();
                let current = watcher.metadata.load_full();
                if delta.revision <= current.revision {
                    continue;
                }
                if delta.revision != current.revision + 1 {
                    return Err(WatchError::Protocol(format!("gap: at {}, got {}", current.revision, delta.revision)));
                }
                let (next, changed) = current.apply(&delta);
                release_lost(watcher, &current, &next, &changed);
                share_among_replicas(watcher, &current, &next);
                let moved = tails_moved(&current, &next, &changed);
                watcher.metadata.store(next);
                end_moved_tails(watcher, moved);
                watcher.metrics.delta_apply.observe(started.elapsed());
                changes.mark(changed);
            }
            None => return Err(WatchError::Protocol("empty watch message".into())),
        }
    }
    Ok(())
}

/// Namespaces among `names` this instance served in `before` but not in
/// `after` (moved to another shard, gone, or given to another instance's
/// store): their cached records are dropped and their tails closed, so
/// nothing this instance no longer serves is served from memory. New
/// requests are already forwarded (or refused) by authorization once
/// `after` is stored. The tails of a namespace turning DELETING end too.
fn release_lost(watcher: &Watcher, before: &Snapshot, after: &Snapshot, names: &[String]) {
    let (me, store) = (watcher.shard_id.as_str(), &*watcher.store_id);
    for name in names {
        let owned_before = before.namespace(name).is_some_and(|e| e.held_by(me, store));
        let owned_after = after.namespace(name).is_some_and(|e| e.held_by(me, store));
        if owned_before && !owned_after {
            tracing::info!(namespace = %name, "namespace no longer served here; dropping its cache and tails");
            watcher.cache.drop_namespace(name);
            watcher.tails.close(name);
        } else if owned_after
            && after.namespace(name).is_some_and(|e| e.status == NamespaceStatus::Deleting)
            && before.namespace(name).is_none_or(|e| e.status != NamespaceStatus::Deleting)
        {
            // Every replica, not only the owner that deprovisions: a tail
            // fed by the backend stops following it before its topic or
            // tables go.
            tracing::info!(namespace = %name, "namespace deleting; ending its tails");
            watcher.tails.close(name);
        }
    }
}

/// Namespaces among `names` whose reads moved to another incarnation
/// between `before` and `after` (a migration's CUTOVER), or whose data
/// became the one they had moved to (its cleanup commit): each with the
/// incarnation its tails follow now.
fn tails_moved(before: &Snapshot, after: &Snapshot, names: &[String]) -> Vec<(String, u64)> {
    let sides = |e: &crate::snapshot::NamespaceEntry| (e.reading_revision(), e.ns.create_revision);
    names
        .iter()
        .filter_map(|name| {
            let (was, now) = (before.namespace(name)?, after.namespace(name)?);
            (was.incarnation == now.incarnation && sides(was) != sides(now))
                .then(|| (name.clone(), now.reading_revision()))
        })
        .collect()
}

/// Ends the tails that follow what a namespace no longer reads
/// ([`tails_moved`]): once the new snapshot is stored, so a tail started
/// after this follows the new side. A tail on the source until CUTOVER
/// missed nothing (every write reached the source until the cleanup
/// commit), and tailing again follows the target.
fn end_moved_tails(watcher: &Watcher, moved: Vec<(String, u64)>) {
    for (name, revision) in moved {
        tracing::info!(namespace = %name, revision, "namespace reads moved; ending the tails of the other side");
        watcher.tails.keep_only(&name, revision);
    }
}

/// A namespace's rate and concurrency quotas are split evenly among the
/// replicas of the shard serving it (clients spread calls over them in
/// turn): each enforces 1/replicas of every namespace limit. Set whenever
/// the number of this shard's registered instances changes.
fn share_among_replicas(watcher: &Watcher, before: &Snapshot, after: &Snapshot) {
    let me = watcher.shard_id.as_str();
    let replicas = |s: &Snapshot| s.shards.get(me).map_or(1, |s| s.instances.len().max(1));
    let (was, now) = (replicas(before), replicas(after));
    if was != now || before.revision == 0 {
        tracing::info!(replicas = now, "namespace quotas split among this shard's replicas");
        watcher.quotas.set_default_share(crate::quota::Kind::Namespace, 1.0 / now as f64);
    }
}
