//! Data requests go to the control plane's audit log (SPEC §2, §6): every
//! refused one, and a sample of the successful ones of namespaces that ask
//! for it (`policies.data_access_audit_rate`, seeds/001's data-access
//! audit). Authentication, authorization and the access-audit layer record
//! each event here without waiting; one background task
//! ([`crate::background::audit`]) sends them to `AppendAudit` in batches. The queue is bounded: when the control plane is unreachable
//! long enough to fill it, further events are dropped and counted in
//! `dropped`, never buffered without bound and never blocking a request.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use prism_proto::control::AuditEvent;
use tokio::sync::mpsc;

/// Events waiting to be sent, at most.
pub const QUEUE: usize = 10_000;

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
        self.record(
            principal,
            action,
            (namespace.tenant(), namespace.as_str()),
            client,
            result,
            truncate(detail, 1024),
        );
    }

    /// The queue's receiving end, for the one task that ships it (`None`
    /// once taken).
    pub(crate) fn take_receiver(&self) -> Option<mpsc::Receiver<AuditEvent>> {
        self.rx.lock().ok().and_then(|mut r| r.take())
    }

    /// Records a data request that succeeded (sampled by the caller).
    pub fn accessed(&self, principal: &str, action: &str, tenant: &str, namespace: &str, client: Option<SocketAddr>) {
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

/// At most `max` bytes of `s`, cut at a character boundary, with control
/// characters replaced (the audit log refuses them).
pub(crate) fn truncate(s: String, max: usize) -> String {
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
