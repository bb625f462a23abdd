//! TimeSeries on Pulsar topics.
//!
//! **Writes** publish one message per event to the incarnation's data
//! topic, in order, and return when the broker has acknowledged all of
//! them (a Sync write is durable then). An event is refused as
//! INVALID_ARGUMENT when its message would pass the broker's message size
//! limit ([`MAX_MESSAGE_BYTES`]): Prism does not chunk.
//!
//! **Reads and searches** scan the data topic from its start up to the
//! broker's last message id, asked once the scan's reader is subscribed
//! (`PulsarState::scan`), so they see every acknowledged write and add
//! nothing to the topic. Each message is filtered before its payload is decoded — by key
//! (= series) for a read — then by epoch, read window, retention and the
//! reclaim cutoff. Events are folded in topic order, keeping per
//! (series, event time, event id, item key) the first value published
//! (first write wins, so a write repeated or raced changes nothing) and an
//! event's tags as first written; the folded events are then filtered by
//! tag, ordered newest first and cut to one page after the cursor.
//!
//! *Why not seek by publish time:* the gateway bounds how old an event may
//! be (`accept_limit`), which bounds a message's publish time from above
//! (publish ≤ event time + accept limit + the write buffer's delay), not
//! from below: an event may be written ahead of its time, and buffered
//! writes are published late. A seek to `start − accept_limit` could skip
//! such events, and pulsar-lite's seek by publish time may land anywhere
//! before the target. The scan reads from the earliest message and always
//! filters, so no event is missed; its cost is the topic's length, which
//! Pulsar's own retention policy bounds.
//!
//! **Deadlines** ([`prism_plugin_api::pace`]): the scan gives up once its
//! hard deadline passes (and stops when its caller drops it, being async);
//! it cannot end a page early, since the newest event may be the last one
//! it reads. Once it has ended, the page ends early, between events, past
//! the soft deadline.
//!
//! **Retention** is applied on every read (`event_time < now − retention`
//! is never returned). [`TimeSeriesHandle::reclaim`] publishes a `Reclaimed`
//! marker with the cutoff rounded down to the hour (so at most one marker
//! per hour), which hides older events from reads at any clock; the bytes
//! go with Pulsar's retention policy, not with Prism's.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use prism_plugin_api::Micros;
use prism_plugin_api::kv::PageLimits;
use prism_plugin_api::ts::{Event, EventCursor, EventsPage, Feed, Query, TagFilter, TimeSeriesHandle, WriteContext};
use pulsar::producer;

use crate::codec::{self, LifecycleKind, StoredEvent, record};
use crate::error::{PulsarError, Result};
use crate::{PulsarState, Topics};

/// The largest message Prism publishes: Pulsar's (and pulsar-lite's)
/// default `maxMessageSize` of 5 MiB, less room for the message metadata.
pub const MAX_MESSAGE_BYTES: usize = (5 << 20) - (16 << 10);

/// The message property holding the epoch an event was written in.
pub(crate) const EPOCH_PROPERTY: &str = "prism-epoch";

const HOUR: Micros = 3_600_000_000;

/// The contract's order: newest first, then series, then event id.
type Order = (Reverse<Micros>, String, String);

/// One event as folded so far.
struct Folded {
    items: Vec<(Vec<u8>, Vec<u8>)>,
    keys: HashSet<Vec<u8>>,
    tags: BTreeMap<String, String>,
}

impl Folded {
    fn bytes(&self) -> u64 {
        let items: usize = self.items.iter().map(|(k, v)| k.len() + v.len()).sum();
        let tags: usize = self.tags.iter().map(|(k, v)| k.len() + v.len()).sum();
        (items + tags) as u64
    }
}

/// A namespace opened ([`TimeSeries::open`](prism_plugin_api::ts::TimeSeries::open)):
/// its topics and retention, worked out once.
pub(crate) struct Opened {
    pub(crate) pulsar: Arc<PulsarState>,
    pub(crate) name: String,
    pub(crate) topics: Topics,
    pub(crate) retention: Option<Micros>,
}

impl Opened {
    async fn write_events(&self, events: &[Event], context: &WriteContext) -> Result<()> {
        let topics = &self.topics;
        let (epoch, _) = self.pulsar.epoch(&self.name, topics).await?;
        if events.is_empty() {
            return Ok(());
        }
        let mut messages = Vec::with_capacity(events.len());
        for (i, event) in events.iter().enumerate() {
            let payload = codec::encode(record::Body::Event(StoredEvent::of(event, epoch)));
            if payload.len() > MAX_MESSAGE_BYTES {
                return Err(PulsarError::invalid(
                    format!("events[{i}]"),
                    format!("is larger than a pulsar message may be ({MAX_MESSAGE_BYTES} bytes encoded)"),
                ));
            }
            // Pulsar's event time is milliseconds and unsigned, 0 = unset.
            let event_time = u64::try_from(event.event_time.div_euclid(1_000)).ok().filter(|ms| *ms > 0);
            messages.push(producer::Message {
                payload,
                partition_key: Some(event.time_series_id.clone()),
                event_time,
                // The trace context rides along as properties
                // (`traceparent`, `tracestate`) for consumers to continue.
                properties: std::iter::once((EPOCH_PROPERTY.to_owned(), epoch.to_string()))
                    .chain(context.headers().map(|(k, v)| (k.to_owned(), v.to_owned())))
                    .collect(),
                ..Default::default()
            });
        }
        self.pulsar.publish(&topics.service_url, &topics.data, messages).await?;
        Ok(())
    }

    async fn query_topic(&self, q: &Query, now: Micros) -> Result<EventsPage> {
        let pace = q.limits.pace();
        let gave_up = || pace.check().map_err(PulsarError::GaveUp);
        gave_up()?;
        let topics = &self.topics;
        let (epoch, state) = self.pulsar.epoch(&self.name, topics).await?;
        let Some((oldest, newest)) = q.window(now, self.retention) else {
            return Ok(EventsPage::default());
        };
        let oldest = state.cutoff.map_or(oldest, |cutoff| oldest.max(cutoff));
        if oldest > newest {
            return Ok(EventsPage::default());
        }
        let epoch_text = epoch.to_string();
        let mut folded: BTreeMap<Order, Folded> = BTreeMap::new();
        self.pulsar
            .scan(&topics.service_url, &topics.data, |message, body| {
                gave_up()?;
                let meta = message.metadata();
                if let Some(series) = q.series.as_deref()
                    && meta.partition_key.as_deref() != Some(series)
                {
                    return Ok(());
                }
                if meta.properties.iter().any(|p| p.key == EPOCH_PROPERTY && p.value != epoch_text) {
                    return Ok(());
                }
                let record::Body::Event(event) = body else { return Ok(()) };
                if event.epoch != epoch || event.event_time < oldest || event.event_time > newest {
                    return Ok(());
                }
                if !q.wants_series(&event.time_series_id) {
                    return Ok(());
                }
                let key: Order = (Reverse(event.event_time), event.time_series_id, event.event_id);
                if let Some(after) = &q.after
                    && key <= (Reverse(after.event_time), after.time_series_id.clone(), after.event_id.clone())
                {
                    return Ok(());
                }
                let entry = folded.entry(key).or_insert_with(|| Folded {
                    items: Vec::new(),
                    keys: HashSet::new(),
                    tags: event.tags,
                });
                for item in event.items {
                    // First write wins, per item key.
                    if entry.keys.insert(item.key.clone()) {
                        entry.items.push((item.key, item.value));
                    }
                }
                Ok(())
            })
            .await?;
        Ok(page(folded, q.filter.as_ref(), q.limits))
    }

    async fn reclaim_events(&self, now: Micros) -> Result<u64> {
        let topics = &self.topics;
        let (_, state) = self.pulsar.epoch(&self.name, topics).await?;
        let Some(retention) = self.retention else { return Ok(0) };
        let cutoff = now.saturating_sub(retention);
        // Whole hours: at most one marker per hour and namespace.
        let cutoff = cutoff - cutoff.rem_euclid(HOUR);
        if state.cutoff.is_some_and(|c| c >= cutoff) {
            return Ok(0);
        }
        self.pulsar.mark(topics, LifecycleKind::Reclaimed, cutoff).await?;
        // Nothing is counted: the events stay in the topic, hidden.
        Ok(0)
    }
}

/// The page of `folded` (already after the cursor) matching `filter`.
fn page(folded: BTreeMap<Order, Folded>, filter: Option<&TagFilter>, limits: PageLimits) -> EventsPage {
    let mut events = Vec::new();
    let mut bytes = 0u64;
    let mut pace = limits.pace();
    let mut matching =
        folded.into_iter().filter(|(_, f)| filter.is_none_or(|filter| filter.matches(&f.tags))).peekable();
    while let Some(((Reverse(event_time), time_series_id, event_id), f)) =
        matching.next_if(|_| !pace.should_end(events.len()))
    {
        pace.added();
        bytes = bytes.saturating_add(f.bytes());
        let mut items = f.items;
        items.sort();
        events.push(Event { time_series_id, event_time, event_id, items, tags: f.tags });
        let full = bytes >= limits.max_bytes || limits.max_items.is_some_and(|m| events.len() >= m as usize);
        if full {
            break;
        }
    }
    let more = matching.next().is_some();
    let next = more.then(|| events.last()).flatten().map(|e| EventCursor {
        event_time: e.event_time,
        time_series_id: e.time_series_id.clone(),
        event_id: e.event_id.clone(),
    });
    EventsPage { events, next }
}

#[async_trait]
impl TimeSeriesHandle for Opened {
    async fn write(&self, events: &[Event]) -> prism_plugin_api::Result<()> {
        self.write_with(events, &WriteContext::default()).await
    }

    async fn write_with(&self, events: &[Event], context: &WriteContext) -> prism_plugin_api::Result<()> {
        Ok(self.pulsar.bounded("writing events", self.write_events(events, context)).await?)
    }

    async fn query(&self, query: &Query, now: Micros) -> prism_plugin_api::Result<EventsPage> {
        let what = if query.series.is_some() { "reading events" } else { "searching events" };
        Ok(self.pulsar.bounded(what, self.query_topic(query, now)).await?)
    }

    async fn reclaim(&self, now: Micros) -> prism_plugin_api::Result<u64> {
        Ok(self.pulsar.bounded("reclaiming events", self.reclaim_events(now)).await?)
    }

    fn follows(&self) -> bool {
        true
    }

    /// Every event published from now on ([`crate::follow`]).
    async fn follow(&self) -> prism_plugin_api::Result<Feed> {
        let started = async {
            let (epoch, _) = self.pulsar.epoch(&self.name, &self.topics).await?;
            crate::follow::follow(&self.pulsar, &self.topics, epoch).await
        };
        Ok(self.pulsar.bounded("following events", started).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folded(n: usize) -> BTreeMap<Order, Folded> {
        (0..n)
            .map(|i| {
                let key = (Reverse(100 - i as i64), "s".to_owned(), format!("e{i}"));
                let f =
                    Folded { items: vec![(b"k".to_vec(), b"v".to_vec())], keys: HashSet::new(), tags: BTreeMap::new() };
                (key, f)
            })
            .collect()
    }

    #[test]
    fn pages_stop_at_a_bound_and_say_whether_more_follow() {
        let p = page(folded(3), None, PageLimits::new(u64::MAX, Some(2)));
        assert_eq!(p.events.len(), 2);
        assert_eq!(p.next.map(|c| c.event_id), Some("e1".to_owned()));
        let p = page(folded(2), None, PageLimits::new(u64::MAX, Some(2)));
        assert_eq!((p.events.len(), p.next), (2, None), "nothing follows a full last page");
        let p = page(folded(3), None, PageLimits::new(1, None));
        assert_eq!(p.events.len(), 1, "the event crossing the byte bound comes alone");
    }
}
