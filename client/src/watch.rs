//! The optional watch task: follows the control plane's Watch stream and
//! keeps the routing table's namespace → shard and shard → endpoints
//! entries current, so calls rarely need a `ResolveNamespace` round trip
//! or a redirect. It resumes from the last applied revision after a
//! disconnect (with backoff), and stops for good when the caller may not
//! watch (PERMISSION_DENIED, UNAUTHENTICATED) or the control plane cannot
//! (UNIMPLEMENTED): the client then resolves on demand with a TTL'd cache.

use std::sync::{Arc, Mutex};

use prism_proto::control::{Namespace, Shard, WatchRequest, change, watch_response};
use tonic::Code;

use crate::ControlPlaneClient;
use crate::retry::RetryPolicy;
use crate::routing::RoutingTable;

/// Why the watch stopped following.
enum Stop {
    /// Try again from the last applied revision.
    Resume(tonic::Status),
    /// Give up: resolve on demand only.
    GiveUp(tonic::Status),
}

pub(crate) async fn run(mut control_plane: ControlPlaneClient, table: Arc<Mutex<RoutingTable>>, backoff: RetryPolicy) {
    let mut applied = 0u64;
    let mut failures = 0u32;
    loop {
        let before = applied;
        match follow(&mut control_plane, &table, &mut applied).await {
            Stop::GiveUp(status) => {
                tracing::info!(code = ?status.code(), message = status.message(), "no metadata watch, resolving namespaces on demand");
                return;
            }
            Stop::Resume(status) => {
                tracing::debug!(code = ?status.code(), message = status.message(), revision = applied, "metadata watch interrupted, resuming");
            }
        }
        failures = if applied > before { 1 } else { failures.saturating_add(1) };
        tokio::time::sleep(backoff.backoff(failures)).await;
    }
}

/// Follows one Watch stream from `applied`, applying snapshots (once
/// complete) and deltas to the table.
async fn follow(control_plane: &mut ControlPlaneClient, table: &Mutex<RoutingTable>, applied: &mut u64) -> Stop {
    let mut stream = match control_plane.watch(WatchRequest { from_revision: *applied }).await {
        Ok(r) => r.into_inner(),
        Err(status) => return stop(status),
    };
    // A snapshot arrives in chunks; it replaces the table's watched
    // entries only once whole, so calls never see half of one.
    let mut snapshot: Option<(Vec<Namespace>, Vec<Shard>)> = None;
    loop {
        let message = match stream.message().await {
            Ok(Some(m)) => m,
            Ok(None) => return Stop::Resume(tonic::Status::unavailable("watch stream ended")),
            Err(status) => return stop(status),
        };
        match message.event {
            Some(watch_response::Event::Snapshot(chunk)) => {
                let (namespaces, shards) = snapshot.get_or_insert_with(Default::default);
                namespaces.extend(chunk.namespaces);
                shards.extend(chunk.shards);
                if chunk.last {
                    let (namespaces, shards) = snapshot.take().unwrap_or_default();
                    if let Ok(mut t) = table.lock() {
                        t.apply_snapshot(&namespaces, &shards);
                    }
                    *applied = chunk.revision;
                }
            }
            Some(watch_response::Event::Delta(delta)) => {
                if let Ok(mut t) = table.lock() {
                    for c in &delta.changes {
                        match &c.change {
                            Some(change::Change::Namespace(ns)) => t.apply_namespace(ns),
                            Some(change::Change::Shard(shard)) => t.apply_shard(shard),
                            Some(change::Change::ShardRemoved(id)) => t.forget_shard(id),
                            Some(change::Change::Tenant(_)) | None => {}
                        }
                    }
                }
                *applied = delta.revision;
            }
            None => {}
        }
    }
}

fn stop(status: tonic::Status) -> Stop {
    match status.code() {
        Code::PermissionDenied | Code::Unauthenticated | Code::Unimplemented => Stop::GiveUp(status),
        _ => Stop::Resume(status),
    }
}
