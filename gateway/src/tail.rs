//! Tails: the new events of a namespace, streamed to subscribers. One
//! bounded broadcast channel per namespace incarnation, created by the
//! first subscriber and dropped when the last one leaves; a subscriber
//! that falls more than a channel behind is cut off (RESOURCE_EXHAUSTED)
//! instead of growing memory, and may tail again.
//!
//! What feeds the channel depends on the backend:
//!
//! - A backend that **follows** its writes ([`TimeSeriesHandle::follows`]:
//!   Kafka, PostgreSQL, Pulsar) feeds it: the first subscriber starts
//!   one backend feed ([`TimeSeriesHandle::follow`]) for the namespace,
//!   on this gateway, and the last one to leave stops it. So a tail sees every
//!   write, whatever gateway replica or producer made it, and the
//!   gateway's write path publishes nothing (no event twice). A
//!   subscription returns once the feed has its place: a write
//!   acknowledged after the tail's response headers is in the tail. A
//!   feed that fails ends every tail on it with UNAVAILABLE naming the
//!   cause; the next subscriber starts a new feed.
//! - Any other backend is fed by this gateway's own durable writes
//!   ([`TailHub::publish`]). That is every write for embedded
//!   namespaces: an embedded namespace has one writer, its shard's owner
//!   instance, and every call for it — tails included — is forwarded to
//!   that instance (`forward.rs`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use prism_plugin_api::ts::{Feed, TagFilter, TimeSeriesHandle};
use prism_proto::timeseries as ts;
use tokio::sync::{OnceCell, broadcast};

use crate::call::TailStream;
use crate::error::{GatewayError, Result};
use crate::snapshot::NamespaceEntry;
use crate::ts_event::to_proto;

/// Batches of events buffered per namespace for its slowest tail reader.
pub const TAIL_BUFFER: usize = 1024;

type Key = (String, u64);

/// What a channel carries: a batch of events, or why its feed ended.
type Batch = Arc<std::result::Result<Vec<ts::Event>, tonic::Status>>;

type Channels = Arc<Mutex<HashMap<Key, Channel>>>;

/// One namespace incarnation's subscribers, and its backend feed if its
/// backend follows writes.
#[derive(Debug)]
struct Channel {
    /// Tells this channel from a later one of the same incarnation.
    id: u64,
    tx: broadcast::Sender<Batch>,
    feed: Arc<OnceCell<FeedTask>>,
}

/// A running backend feed; dropping it stops the feed.
#[derive(Debug)]
struct FeedTask(tokio::task::AbortHandle);

impl Drop for FeedTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[derive(Debug, Default)]
pub struct TailHub {
    channels: Channels,
    ids: AtomicU64,
}

/// The channel of the incarnation the namespace's reads are served from
/// (`NamespaceEntry::reading_revision`): a migrating namespace's target
/// from CUTOVER on, which the cleanup commit makes its own.
fn key(entry: &NamespaceEntry) -> Key {
    (entry.ns.name.clone(), entry.reading_revision())
}

fn tags_match(filter: Option<&TagFilter>, event: &ts::Event) -> bool {
    filter.is_none_or(|f| f.matches(&event.tags.iter().map(|(k, v)| (k.clone(), v.clone())).collect()))
}

/// Removes the channel `(key, id)` once nobody reads it, stopping its
/// feed. Held by each subscriber's stream, dropped after its receiver.
struct Leave {
    channels: Channels,
    key: Key,
    id: u64,
}

impl Drop for Leave {
    fn drop(&mut self) {
        let Ok(mut channels) = self.channels.lock() else { return };
        if channels.get(&self.key).is_some_and(|c| c.id == self.id && c.tx.receiver_count() == 0) {
            channels.remove(&self.key);
        }
    }
}

/// What a failed feed tells its tails: UNAVAILABLE (tailing again starts
/// a new feed), with the cause as the plugin reports it.
fn feed_failed(error: GatewayError) -> tonic::Status {
    let status = error.into_status();
    tonic::Status::unavailable(format!("the tail's backend feed ended ({}); tail again", status.message()))
}

/// Runs `feed` into `tx` until it fails or the task is aborted (the last
/// subscriber left, or the namespace is being deleted).
async fn pump(mut feed: Feed, tx: broadcast::Sender<Batch>, channels: Channels, key: Key, id: u64) {
    let status = loop {
        match feed.next().await {
            Some(Ok(events)) if events.is_empty() => {}
            Some(Ok(events)) => {
                let _ = tx.send(Arc::new(Ok(events.into_iter().map(to_proto).collect())));
            }
            Some(Err(e)) => break feed_failed(e.into()),
            None => break feed_failed(GatewayError::Unavailable("the backend ended it".into())),
        }
    };
    tracing::warn!(namespace = %key.0, error = %status.message(), "tail feed failed");
    // New subscribers get a new channel (and feed); these ones the cause.
    if let Ok(mut channels) = channels.lock()
        && channels.get(&key).is_some_and(|c| c.id == id)
    {
        channels.remove(&key);
    }
    let _ = tx.send(Arc::new(Err(status)));
}

impl TailHub {
    /// Whether this gateway's write path should hand the namespace's
    /// events to its tails: anyone tails it, and its backend does not
    /// feed them itself.
    pub fn watched(&self, entry: &NamespaceEntry, plugin: &dyn TimeSeriesHandle) -> bool {
        !plugin.follows()
            && self.channels.lock().is_ok_and(|c| c.get(&key(entry)).is_some_and(|c| c.tx.receiver_count() > 0))
    }

    /// Tail streams open now.
    pub fn open(&self) -> usize {
        self.channels.lock().map_or(0, |c| c.values().map(|c| c.tx.receiver_count()).sum())
    }

    /// Hands durable events to the namespace's tails.
    pub fn publish(&self, entry: &NamespaceEntry, events: Vec<ts::Event>) {
        let Ok(channels) = self.channels.lock() else { return };
        if let Some(c) = channels.get(&key(entry)) {
            let _ = c.tx.send(Arc::new(Ok(events)));
        }
    }

    /// Ends every tail of a namespace (it is being deleted), stopping its
    /// feed.
    pub fn close(&self, name: &str) {
        if let Ok(mut channels) = self.channels.lock() {
            channels.retain(|(n, _), _| n != name);
        }
    }

    /// Ends every tail of namespace `name` but those of incarnation
    /// `revision`, stopping their feeds: the namespace's reads moved to
    /// `revision` (a migration's CUTOVER), or the incarnation they moved
    /// to became its data (the cleanup commit), so the other ones' feeds
    /// will miss writes. Each ends with UNAVAILABLE; tailing again
    /// follows `revision`.
    pub fn keep_only(&self, name: &str, revision: u64) {
        let Ok(mut channels) = self.channels.lock() else { return };
        channels.retain(|(n, r), channel| {
            let keep = n != name || *r == revision;
            if !keep {
                let status = tonic::Status::unavailable(format!(
                    "namespace {name} moved to its migration's target (incarnation {revision}); tail again"
                ));
                let _ = channel.tx.send(Arc::new(Err(status)));
            }
            keep
        });
    }

    /// A stream of the namespace's new events, optionally of one series
    /// and matching a tag filter. With a backend that follows writes, the
    /// first subscriber starts its feed and waits until it has its place.
    pub async fn subscribe(
        &self,
        entry: &NamespaceEntry,
        plugin: &dyn TimeSeriesHandle,
        series: String,
        filter: Option<TagFilter>,
    ) -> Result<TailStream> {
        let k = key(entry);
        let (rx, tx, feed, id) = {
            let mut channels =
                self.channels.lock().map_err(|_| GatewayError::Internal("the tail hub is poisoned".into()))?;
            let channel = channels.entry(k.clone()).or_insert_with(|| Channel {
                id: self.ids.fetch_add(1, Ordering::Relaxed),
                tx: broadcast::channel(TAIL_BUFFER).0,
                feed: Arc::default(),
            });
            (channel.tx.subscribe(), channel.tx.clone(), channel.feed.clone(), channel.id)
        };
        let leave = Leave { channels: self.channels.clone(), key: k.clone(), id };
        if plugin.follows() {
            // The receiver exists before the feed starts, so it misses
            // nothing the feed sends.
            // A feed that cannot start is the call's error, as the
            // backend reports it.
            feed.get_or_try_init(|| async {
                let stream = plugin.follow().await?;
                let task = tokio::spawn(pump(stream, tx, self.channels.clone(), k, id));
                Ok::<_, GatewayError>(FeedTask(task.abort_handle()))
            })
            .await?;
        } else {
            drop(tx);
        }
        Ok(futures_util::stream::unfold(Some((rx, leave)), move |state| {
            let series = series.clone();
            let filter = filter.clone();
            async move {
                let (mut rx, leave) = state?;
                loop {
                    match rx.recv().await {
                        Ok(batch) => match batch.as_ref() {
                            Ok(batch) => {
                                let events: Vec<ts::Event> = batch
                                    .iter()
                                    .filter(|e| series.is_empty() || e.time_series_id == series)
                                    .filter(|e| tags_match(filter.as_ref(), e))
                                    .cloned()
                                    .collect();
                                if !events.is_empty() {
                                    return Some((Ok(ts::TailEventRecordsResponse { events }), Some((rx, leave))));
                                }
                            }
                            Err(status) => return Some((Err(status.clone()), None)),
                        },
                        Err(broadcast::error::RecvError::Lagged(missed)) => {
                            let status = tonic::Status::resource_exhausted(format!(
                                "tail reader fell {missed} batches behind and was cut off; tail again to resume"
                            ));
                            return Some((Err(status), None));
                        }
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            }
        })
        .boxed())
    }
}
