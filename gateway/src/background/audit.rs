//! Ships the audit sink's events ([`crate::audit::AuditSink`]) to the
//! control plane's audit log (`AppendAudit`) in batches, holding them
//! (bounded by the sink's queue) while it is unreachable.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use prism_proto::control::{AppendAuditRequest, AuditEvent};
use tokio::sync::watch;

use super::ControlPlane;
use crate::audit::AuditSink;

/// Events per `AppendAudit` call, at most.
const BATCH: usize = 500;
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Sends recorded events until `shutdown` (then what is queued, once).
pub async fn run(sink: Arc<AuditSink>, link: Arc<ControlPlane>, mut shutdown: watch::Receiver<bool>) {
    let Some(mut rx) = sink.take_receiver() else { return };
    let mut backoff = Duration::from_millis(100);
    let mut batch: Vec<AuditEvent> = Vec::new();
    loop {
        if batch.is_empty() {
            let stopping = tokio::select! {
                n = rx.recv_many(&mut batch, BATCH) => if n == 0 { return } else { false },
                _ = shutdown.wait_for(|stop| *stop) => true,
            };
            if stopping {
                rx.close();
                while let Ok(e) = rx.try_recv() {
                    batch.push(e);
                }
                if !batch.is_empty() {
                    let _ = tokio::time::timeout(Duration::from_secs(2), send(&link, &batch)).await;
                }
                return;
            }
        }
        match send(&link, &batch).await {
            Ok(()) => {
                sink.sent.fetch_add(batch.len() as u64, Ordering::Relaxed);
                batch.clear();
                backoff = Duration::from_millis(100);
            }
            Err(e) if matches!(e.code(), tonic::Code::InvalidArgument | tonic::Code::PermissionDenied) => {
                // Retrying cannot help: count them lost, loudly.
                tracing::error!(error = %e, events = batch.len(), "the audit log refused these events; dropping them");
                sink.dropped.fetch_add(batch.len() as u64, Ordering::Relaxed);
                batch.clear();
            }
            Err(e) => {
                tracing::warn!(error = %e, events = batch.len(), "cannot send events to the audit log; holding them");
                link.reset().await;
                let stopping = tokio::select! {
                    _ = tokio::time::sleep(backoff) => false,
                    _ = shutdown.wait_for(|stop| *stop) => true,
                };
                if stopping {
                    return;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

async fn send(link: &ControlPlane, batch: &[AuditEvent]) -> Result<(), tonic::Status> {
    let mut client = link.client().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    client.append_audit(AppendAuditRequest { events: batch.to_vec() }).await.map(drop)
}
