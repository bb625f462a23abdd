//! The Watch stream: a snapshot (or a catch-up from the change log), then
//! live deltas, in strictly increasing, contiguous revision order.
//!
//! Order of operations is what makes it gap-free: subscribe to live deltas
//! *first*, then read the snapshot or the log. Every commit is either in
//! what was read or arrives on the subscription (or both; duplicates are
//! skipped by revision). A subscriber that falls a whole buffer behind is
//! cut off with ABORTED and the revision to resume from: a slow watcher
//! never blocks writers or other watchers, and memory stays bounded.
//!
//! A snapshot is streamed from the store's read view at one revision
//! ([`Store::stream_snapshot`]) a part at a time, into chunks bounded by
//! count and size, so a snapshot of a million namespaces is never whole in
//! the control plane's memory and no message nears gRPC's limit.
//!
//! So a watcher that resumes from revision *r* receives exactly the deltas
//! after *r* (or a snapshot when the log no longer reaches back): nothing
//! missed, nothing twice. "A whole buffer" is `watch_buffer` deltas
//! (default 1 024) or `watch_buffer_bytes` of them (default 32 MiB),
//! whichever is reached first ([`crate::store::bus`]); the refusal's
//! `ErrorInfo` reason is `WATCH_LAGGED`.

use std::sync::Arc;

use prism_proto::control::{Delta, Namespace, SnapshotChunk, Tenant, WatchResponse, watch_response};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::error::{ControlPlaneError, Result};
use crate::store::bus::Recv;
use crate::store::{Changes, SnapshotPart, Store};

/// Most objects per snapshot message.
pub const SNAPSHOT_CHUNK: usize = 512;
/// Encoded bytes of objects per snapshot message. A count alone does not
/// bound a message: 512 of the largest namespaces validation allows
/// (~135 KiB each) are ~70 MiB, far over any gRPC message limit. A chunk
/// closes once it reaches this size, so it stays under this plus one
/// object: well under gRPC's default 4 MiB.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;
/// Largest delta sent as it is. One commit can change more than fits in a
/// message (deleting a tenant rewrites all its namespaces at once); such a
/// delta would fail to encode at every attempt, and every watcher would be
/// stuck before it forever. It is replaced by a snapshot, which is chunked
/// and which the protocol allows at any point of a stream. Half of the
/// 16 MiB message limit of Prism's server and client.
pub const MAX_DELTA_BYTES: usize = 8 * 1024 * 1024;
/// Deltas read from the change log per store call during catch-up.
const CATCH_UP_BATCH: usize = 1024;
/// Messages queued between the watch task and the transport.
const OUTBOX: usize = 16;

/// Starts a watch from `from_revision` (0 = snapshot first). The stream
/// ends with an error when the watcher is cut off; it ends when the
/// receiver is dropped.
///
/// When `shutdown` turns true the stream ends with UNAVAILABLE, so a
/// graceful server shutdown does not wait on watchers forever.
pub fn watch(
    store: Arc<dyn Store>,
    from_revision: u64,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> ReceiverStream<Result<WatchResponse>> {
    let (tx, rx) = mpsc::channel(OUTBOX);
    tokio::spawn(async move {
        let outcome = tokio::select! {
            outcome = run(store, from_revision, &tx) => outcome,
            _ = shutdown.wait_for(|stop| *stop) => Err(ControlPlaneError::ShuttingDown),
        };
        if let Err(err) = outcome {
            // A closed outbox means the watcher left: nothing to tell.
            let _ = tx.send(Err(err)).await;
        }
    });
    ReceiverStream::new(rx)
}

/// Sends one message; `Ok(false)` when the watcher has gone away.
async fn send(tx: &mpsc::Sender<Result<WatchResponse>>, event: watch_response::Event) -> bool {
    tx.send(Ok(WatchResponse { event: Some(event) })).await.is_ok()
}

async fn run(store: Arc<dyn Store>, from_revision: u64, tx: &mpsc::Sender<Result<WatchResponse>>) -> Result<()> {
    let mut live = store.subscribe();
    let mut last = if from_revision == 0 || from_revision > store.revision().await? {
        // A watcher ahead of the store saw a store that no longer exists:
        // it must rebuild from a snapshot too.
        match send_snapshot(store.as_ref(), tx).await? {
            Some(revision) => revision,
            None => return Ok(()),
        }
    } else {
        match catch_up(store.as_ref(), from_revision, tx).await? {
            Some(revision) => revision,
            None => return Ok(()),
        }
    };
    loop {
        let delta = match live.recv().await {
            Recv::Delta(delta) => delta,
            Recv::Lagged => return Err(ControlPlaneError::WatchLagged { resume_from: last }),
            Recv::Closed => return Err(ControlPlaneError::ShuttingDown),
        };
        if delta.revision <= last {
            continue; // already sent from the snapshot or the log
        }
        if delta.revision != last + 1 {
            // Cannot happen with one ordered broadcaster, but a gap must
            // never reach a watcher: fill it from the log.
            match catch_up(store.as_ref(), last, tx).await? {
                Some(revision) => last = revision,
                None => return Ok(()),
            }
            if delta.revision <= last {
                continue;
            }
        }
        if delta.encoded_len() > MAX_DELTA_BYTES {
            // Too big for one message: a snapshot (at this revision or a
            // later one) replaces it; live deltas it covers are skipped.
            match send_snapshot(store.as_ref(), tx).await? {
                Some(revision) => last = revision,
                None => return Ok(()),
            }
            continue;
        }
        if !send(tx, watch_response::Event::Delta(Delta::clone(&delta))).await {
            return Ok(());
        }
        last = delta.revision;
    }
}

/// Snapshot parts read ahead of the watcher (see [`crate::store::SnapshotPart`]).
const PARTS_AHEAD: usize = 2;

/// Fills snapshot chunks by count and by size; every chunk takes at
/// least one object.
struct Chunker {
    chunk: SnapshotChunk,
    bytes: usize,
}

enum Object {
    Tenant(Tenant),
    Namespace(Namespace),
}

impl Chunker {
    fn new(revision: u64, shards: Vec<prism_proto::control::Shard>) -> Self {
        Self { chunk: SnapshotChunk { revision, shards, ..SnapshotChunk::default() }, bytes: 0 }
    }

    /// Adds `object`; returns the full chunk it did not fit in.
    fn add(&mut self, object: Object) -> Option<SnapshotChunk> {
        let full = self.chunk.tenants.len() + self.chunk.namespaces.len() >= SNAPSHOT_CHUNK
            || self.bytes >= SNAPSHOT_CHUNK_BYTES;
        let done = full.then(|| {
            self.bytes = 0;
            let next = SnapshotChunk { revision: self.chunk.revision, ..SnapshotChunk::default() };
            std::mem::replace(&mut self.chunk, next)
        });
        match object {
            Object::Tenant(t) => {
                self.bytes += t.encoded_len();
                self.chunk.tenants.push(t);
            }
            Object::Namespace(ns) => {
                self.bytes += ns.encoded_len();
                self.chunk.namespaces.push(ns);
            }
        }
        done
    }
}

/// How reading a snapshot into chunks ended.
enum Read {
    /// The store sent nothing (its read failed).
    Nothing,
    /// The watcher went away.
    Left,
    /// Every object was read; this chunk, the last, is not sent yet.
    Last(SnapshotChunk),
}

/// Adds `object` to `chunker`, sending the chunk it closes; `false` when
/// the watcher has gone away.
async fn offer(tx: &mpsc::Sender<Result<WatchResponse>>, chunker: &mut Chunker, object: Object) -> bool {
    match chunker.add(object) {
        Some(full) => send(tx, watch_response::Event::Snapshot(full)).await,
        None => true,
    }
}

/// Sends a full snapshot, read from the store while it is sent (so a
/// snapshot of a million namespaces is never whole in memory); returns
/// its revision, or `None` if the watcher left. A chunk is sent only once
/// the next object is in hand, so the last one is known to be last; a
/// read that fails ends the stream with its error, never with a `last`
/// chunk.
async fn send_snapshot(store: &dyn Store, tx: &mpsc::Sender<Result<WatchResponse>>) -> Result<Option<u64>> {
    let (parts_tx, mut parts) = mpsc::channel::<SnapshotPart>(PARTS_AHEAD);
    let chunks = async move {
        let Some(first) = parts.recv().await else {
            return Read::Nothing;
        };
        // The shard map is small (shards × instances): it rides in the
        // first chunk.
        let mut chunker = Chunker::new(first.revision, first.shards);
        for t in first.tenants {
            if !offer(tx, &mut chunker, Object::Tenant(t)).await {
                return Read::Left;
            }
        }
        while let Some(part) = parts.recv().await {
            for ns in part.namespaces {
                if !offer(tx, &mut chunker, Object::Namespace(ns)).await {
                    return Read::Left;
                }
            }
        }
        Read::Last(chunker.chunk)
    };
    // When the watcher leaves, `chunks` drops the receiver, which ends
    // the store's read too.
    let (read, chunks) = tokio::join!(store.stream_snapshot(parts_tx), chunks);
    read?;
    match chunks {
        Read::Nothing => Err(ControlPlaneError::Corrupt("the store's snapshot had no first part".into())),
        Read::Left => Ok(None),
        Read::Last(mut last) => {
            last.last = true;
            let revision = last.revision;
            Ok(send(tx, watch_response::Event::Snapshot(last)).await.then_some(revision))
        }
    }
}

/// Sends every logged delta after `from`; falls back to a snapshot when the
/// log no longer reaches back that far. Returns the last revision sent.
async fn catch_up(store: &dyn Store, from: u64, tx: &mpsc::Sender<Result<WatchResponse>>) -> Result<Option<u64>> {
    let mut last = from;
    loop {
        let deltas = match store.changes_since(last, CATCH_UP_BATCH).await? {
            Changes::Deltas(deltas) => deltas,
            Changes::Compacted => return send_snapshot(store, tx).await,
        };
        let Some(newest) = deltas.last().map(|d| d.revision) else {
            return Ok(Some(last));
        };
        for delta in deltas {
            if delta.encoded_len() > MAX_DELTA_BYTES {
                // Too big for one message (see MAX_DELTA_BYTES): a snapshot
                // replaces it and everything after it read so far.
                return send_snapshot(store, tx).await;
            }
            if !send(tx, watch_response::Event::Delta(Delta::clone(&delta))).await {
                return Ok(None);
            }
        }
        last = newest;
    }
}
