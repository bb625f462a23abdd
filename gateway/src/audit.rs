//! Data requests go to the control plane's audit log (SPEC §2, §6): every
//! refused one, and a sample of the successful ones of namespaces that ask
//! for it (`policies.data_access_audit_rate`, seeds/001's data-access
//! audit). Authentication, authorization and the access-audit layer record
//! each event here without waiting; one task sends them to `AppendAudit`
//! in batches. The queue is bounded: when the control plane is unreachable
//! long enough to fill it, further events are dropped and counted in
//! `dropped`, never buffered without bound and never blocking a request.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use prism_client::ControlPlaneClient;
use prism_proto::control::{AppendAuditRequest, AuditEvent};
use tokio::sync::{mpsc, watch};

use crate::server::Shared;

/// Events waiting to be sent, at most.
pub const QUEUE: usize = 10_000;
/// Events per `AppendAudit` call, at most.
const BATCH: usize = 500;
const MAX_BACKOFF: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub struct AuditSink {
    tx: mpsc::Sender<AuditEvent>,
    rx: std::sync::Mutex<Option<mpsc::Receiver<AuditEvent>>>,
    /// Events queued (neither sent nor dropped yet, or since).
    pub recorded: AtomicU64,
    /// Events sent to the control plane.
    pub sent: AtomicU64,
    /// Events dropped because the queue was full.
    pub dropped: AtomicU64,
}

impl Default for AuditSink {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        Self {
            tx,
            rx: std::sync::Mutex::new(Some(rx)),
            recorded: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }
}

impl AuditSink {
    /// Records a refused data request: who, what, on which namespace (a
    /// validated name, and its tenant), from where, and the status code
    /// name.
    pub fn refused(
        &self,
        principal: &str,
        action: &str,
        namespace: crate::call::Name<'_>,
        client: Option<SocketAddr>,
        result: &str,
        detail: String,
    ) {
        self.record(principal, action, (namespace.tenant(), namespace.as_str()), client, result, truncate(detail, 1024));
    }

    /// Records a data request that succeeded (sampled by the caller).
    pub fn accessed(
        &self,
        principal: &str,
        action: &str,
        tenant: &str,
        namespace: &str,
        client: Option<SocketAddr>,
    ) {
        self.record(principal, action, (tenant, namespace), client, "ok", String::new());
    }

    fn record(
        &self,
        principal: &str,
        action: &str,
        (tenant, namespace): (&str, &str),
        client: Option<SocketAddr>,
        result: &str,
        detail: String,
    ) {
        let event = AuditEvent {
            time: Some(SystemTime::now().into()),
            principal: principal.to_owned(),
            action: action.to_owned(),
            tenant_id: tenant.to_owned(),
            target: namespace.to_owned(),
            result: result.to_owned(),
            detail,
            client_address: client.map(|a| a.to_string()).unwrap_or_default(),
            ..AuditEvent::default()
        };
        match self.tx.try_send(event) {
            Ok(()) => self.recorded.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.dropped.fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// Sends recorded events until `shutdown` (then what is queued, once).
pub async fn run(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let Some(mut rx) = shared.audit.rx.lock().ok().and_then(|mut r| r.take()) else { return };
    let mut client: Option<ControlPlaneClient> = None;
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
                    let _ = tokio::time::timeout(Duration::from_secs(2), send(&shared, &mut client, &batch)).await;
                }
                return;
            }
        }
        match send(&shared, &mut client, &batch).await {
            Ok(()) => {
                shared.audit.sent.fetch_add(batch.len() as u64, Ordering::Relaxed);
                batch.clear();
                backoff = Duration::from_millis(100);
            }
            Err(e) if matches!(e.code(), tonic::Code::InvalidArgument | tonic::Code::PermissionDenied) => {
                // Retrying cannot help: count them lost, loudly.
                tracing::error!(error = %e, events = batch.len(), "the audit log refused these events; dropping them");
                shared.audit.dropped.fetch_add(batch.len() as u64, Ordering::Relaxed);
                batch.clear();
            }
            Err(e) => {
                tracing::warn!(error = %e, events = batch.len(), "cannot send events to the audit log; holding them");
                client = None;
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

async fn send(
    shared: &Shared,
    client: &mut Option<ControlPlaneClient>,
    batch: &[AuditEvent],
) -> Result<(), tonic::Status> {
    if client.is_none() {
        let c = shared.control_plane().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        *client = Some(c);
    }
    let Some(c) = client.as_mut() else { return Err(tonic::Status::unavailable("no control plane client")) };
    c.append_audit(AppendAuditRequest { events: batch.to_vec() }).await.map(drop)
}

/// At most `max` bytes of `s`, cut at a character boundary, with control
/// characters replaced (the audit log refuses them).
fn truncate(s: String, max: usize) -> String {
    let mut s: String = s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}
