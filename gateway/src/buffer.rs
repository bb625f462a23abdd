//! The buffer behind `WriteEventRecords` (loss-tolerant namespaces only):
//! events are acknowledged when accepted here and written by a flusher
//! task in batches. The buffer is bounded in events (a semaphore of
//! permits); a full buffer refuses with RESOURCE_EXHAUSTED. While a backend
//! is down the flusher holds its batch and retries with backoff, so
//! accepted events wait (bounded) rather than vanish; events that cannot be
//! written at all are counted in `dropped`, never lost silently.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prism_plugin_api::ts::{Event, WriteContext};
use prism_proto::timeseries as ts;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::error::{GatewayError, Result};
use crate::metrics::GatewayMetrics;
use crate::plugins::Plugins;
use crate::snapshot::NamespaceEntry;
use crate::tail::TailHub;

/// Events written per backend call at most.
const FLUSH_BATCH: usize = 1000;
/// Attempts at a batch whose backend is unavailable before it is dropped.
const MAX_ATTEMPTS: u32 = 20;

/// Accepted events on their way to the flusher.
pub struct Pending {
    entry: Arc<NamespaceEntry>,
    events: Vec<Event>,
    /// For tails, when anyone tails the namespace.
    published: Option<Vec<ts::Event>>,
    /// The trace context of the request that wrote them.
    context: WriteContext,
    _permits: OwnedSemaphorePermit,
}

#[derive(Debug, Default)]
pub struct BufferStats {
    pub accepted: AtomicU64,
    pub flushed: AtomicU64,
    pub dropped: AtomicU64,
}

pub struct WriteBuffer {
    /// When the flusher's write now under way started (`None`: none is):
    /// a migration step waits for writes that started before it
    /// ([`Self::writing_since`]).
    writing: std::sync::Mutex<Option<tokio::time::Instant>>,
    permits: Arc<Semaphore>,
    capacity: usize,
    tx: mpsc::UnboundedSender<Pending>,
    rx: std::sync::Mutex<Option<mpsc::UnboundedReceiver<Pending>>>,
    pub stats: BufferStats,
}

impl std::fmt::Debug for WriteBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteBuffer").field("capacity", &self.capacity).field("stats", &self.stats).finish()
    }
}

impl WriteBuffer {
    pub fn new(capacity_events: usize) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            writing: std::sync::Mutex::new(None),
            permits: Arc::new(Semaphore::new(capacity_events)),
            capacity: capacity_events,
            tx,
            rx: std::sync::Mutex::new(Some(rx)),
            stats: BufferStats::default(),
        }
    }

    /// Accepts events, or refuses when they do not fit.
    pub fn offer(
        &self,
        entry: Arc<NamespaceEntry>,
        events: Vec<Event>,
        published: Option<Vec<ts::Event>>,
        context: WriteContext,
    ) -> Result<()> {
        let n = events.len();
        let permits = u32::try_from(n)
            .ok()
            .and_then(|n| self.permits.clone().try_acquire_many_owned(n).ok())
            .ok_or_else(|| GatewayError::QuotaExceeded {
                subject: "gateway:write-buffer".into(),
                description: format!("the write buffer ({} events) is full", self.capacity),
                retry_after: Some(Duration::from_millis(100)),
                quota: "write_buffer",
            })?;
        self.tx
            .send(Pending { entry, events, published, context, _permits: permits })
            .map_err(|_| GatewayError::Internal("the write buffer's flusher is gone".into()))?;
        self.stats.accepted.fetch_add(n as u64, Ordering::Relaxed);
        Ok(())
    }

    /// When the write the flusher is making now started, if it is making
    /// one. A write starts from the metadata of its time, so once none
    /// that started before a migration step was applied is under way,
    /// every buffered event is written as that step says (DUAL_WRITE: to
    /// both sides).
    pub fn writing_since(&self) -> Option<tokio::time::Instant> {
        *self.writing.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn set_writing(&self, since: Option<tokio::time::Instant>) {
        *self.writing.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = since;
    }

    /// Events accepted and not yet written.
    pub fn depth(&self) -> usize {
        self.capacity.saturating_sub(self.permits.available_permits())
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn take_receiver(&self) -> Option<mpsc::UnboundedReceiver<Pending>> {
        self.rx.lock().ok().and_then(|mut rx| rx.take())
    }
}

/// What the flusher writes with: the plugins, the tails that get the
/// events once durable, the metrics its plugin calls are timed into, and
/// the metadata it looks its namespaces up in again when it writes (a
/// namespace may have started migrating since its events were accepted).
#[derive(Debug, Clone)]
pub struct Flusher {
    pub buffer: Arc<WriteBuffer>,
    pub metadata: Arc<crate::snapshot::Metadata>,
    pub plugins: Plugins,
    pub tails: Arc<TailHub>,
    pub metrics: Arc<GatewayMetrics>,
}

/// Writes buffered events until the buffer's senders are gone and it is
/// drained, or `stopped` turns true (then what is left is flushed once).
pub async fn flush(flusher: Flusher, mut stopped: tokio::sync::watch::Receiver<bool>) {
    let Some(mut rx) = flusher.buffer.take_receiver() else { return };
    let mut stopping = false;
    loop {
        let pending = if stopping {
            rx.recv().await
        } else {
            tokio::select! {
                p = rx.recv() => p,
                _ = stopped.wait_for(|s| *s) => {
                    // Accept nothing more; flush what was accepted.
                    stopping = true;
                    rx.close();
                    continue;
                }
            }
        };
        let Some(first) = pending else { return };
        let mut batch = vec![first];
        let mut size = batch[0].events.len();
        while size < FLUSH_BATCH {
            match rx.try_recv() {
                Ok(p) => {
                    size += p.events.len();
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        for pending in batch {
            write(&flusher, pending).await;
        }
    }
}

async fn write(flusher: &Flusher, pending: Pending) {
    let n = pending.events.len() as u64;
    let backend = pending.entry.backend();
    if flusher.plugins.get(backend).and_then(|p| p.time_series()).is_none() {
        flusher.buffer.stats.dropped.fetch_add(n, Ordering::Relaxed);
        tracing::error!(namespace = %pending.entry.ns.name, events = n, "buffered events dropped: no TimeSeries backend");
        return;
    }
    let mut pause = Duration::from_millis(50);
    for attempt in 1..=MAX_ATTEMPTS {
        flusher.buffer.set_writing(Some(tokio::time::Instant::now()));
        // The namespace as the metadata has it now (its sides may have
        // changed: a migration), else as it was accepted (a deleted one
        // fails as its backend says).
        let current = flusher.metadata.load().namespace(&pending.entry.ns.name).cloned();
        let entry = current.filter(|e| e.incarnation == pending.entry.incarnation).unwrap_or(pending.entry.clone());
        // Opened once per metadata change, kept with the entry; a failure
        // to open is tried again like a failed write.
        let written = crate::backend::write_events(&flusher.plugins, &flusher.metrics, &entry, &pending.events, |_| {
            pending.context.clone()
        })
        .await;
        flusher.buffer.set_writing(None);
        match written {
            Ok(()) => {
                flusher.buffer.stats.flushed.fetch_add(n, Ordering::Relaxed);
                // Only to tails this gateway feeds itself: once the side
                // read follows its writes (a migration's target at
                // CUTOVER), its feed has them.
                let fed = entry.time_series_sides(&flusher.plugins).is_ok_and(|(first, _)| first.follows());
                if let Some(events) = pending.published.filter(|_| !fed) {
                    flusher.tails.publish(&entry, events);
                }
                return;
            }
            Err(e) if e.could_retry() && attempt < MAX_ATTEMPTS => {
                tracing::warn!(namespace = %entry.ns.name, error = %e, attempt, "buffered write failed; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                flusher.buffer.stats.dropped.fetch_add(n, Ordering::Relaxed);
                tracing::error!(namespace = %entry.ns.name, events = n, error = %e, "buffered events dropped");
                return;
            }
        }
    }
}
