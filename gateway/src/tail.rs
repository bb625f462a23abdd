//! Tails: the new events of a namespace, streamed to subscribers as this
//! gateway makes them durable. One bounded broadcast channel per namespace
//! incarnation, created by the first subscriber; a subscriber that falls
//! more than a channel behind is cut off (RESOURCE_EXHAUSTED) instead of
//! growing memory, and may tail again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use prism_plugin_api::ts::TagFilter;
use prism_proto::timeseries as ts;
use tokio::sync::broadcast;

use crate::call::TailStream;
use crate::snapshot::NamespaceEntry;

/// Batches of events buffered per namespace for its slowest tail reader.
pub const TAIL_BUFFER: usize = 1024;

type Key = (String, u64);

#[derive(Debug, Default)]
pub struct TailHub {
    channels: Mutex<HashMap<Key, broadcast::Sender<Arc<Vec<ts::Event>>>>>,
}

fn key(entry: &NamespaceEntry) -> Key {
    (entry.ns.name.clone(), entry.ns.create_revision)
}

fn tags_match(filter: Option<&TagFilter>, event: &ts::Event) -> bool {
    filter.is_none_or(|f| f.matches(&event.tags.iter().map(|(k, v)| (k.clone(), v.clone())).collect()))
}

impl TailHub {
    /// Whether anyone tails the namespace (so writers skip the copy).
    pub fn watched(&self, entry: &NamespaceEntry) -> bool {
        self.channels.lock().is_ok_and(|c| c.get(&key(entry)).is_some_and(|tx| tx.receiver_count() > 0))
    }

    /// Tail streams open now.
    pub fn open(&self) -> usize {
        self.channels.lock().map_or(0, |c| c.values().map(|tx| tx.receiver_count()).sum())
    }

    /// Hands durable events to the namespace's tails.
    pub fn publish(&self, entry: &NamespaceEntry, events: Vec<ts::Event>) {
        let Ok(mut channels) = self.channels.lock() else { return };
        let k = key(entry);
        if let Some(tx) = channels.get(&k)
            && tx.send(Arc::new(events)).is_err()
        {
            channels.remove(&k); // the last subscriber left
        }
    }

    /// Ends every tail of a namespace (it is being deleted).
    pub fn close(&self, name: &str) {
        if let Ok(mut channels) = self.channels.lock() {
            channels.retain(|(n, _), _| n != name);
        }
    }

    /// A stream of the namespace's new events, optionally of one series
    /// and matching a tag filter.
    pub fn subscribe(&self, entry: &NamespaceEntry, series: String, filter: Option<TagFilter>) -> TailStream {
        let rx = match self.channels.lock() {
            Ok(mut channels) => {
                channels.entry(key(entry)).or_insert_with(|| broadcast::channel(TAIL_BUFFER).0).subscribe()
            }
            Err(_) => return futures_util::stream::empty().boxed(),
        };
        futures_util::stream::unfold(Some(rx), move |rx| {
            let series = series.clone();
            let filter = filter.clone();
            async move {
                let mut rx = rx?;
                loop {
                    match rx.recv().await {
                        Ok(batch) => {
                            let events: Vec<ts::Event> = batch
                                .iter()
                                .filter(|e| series.is_empty() || e.time_series_id == series)
                                .filter(|e| tags_match(filter.as_ref(), e))
                                .cloned()
                                .collect();
                            if !events.is_empty() {
                                return Some((Ok(ts::TailEventRecordsResponse { events }), Some(rx)));
                            }
                        }
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
        .boxed()
    }
}
