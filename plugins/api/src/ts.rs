//! The TimeSeries plugin trait (SPEC §4): namespace → `time_series_id` →
//! immutable events. The identity of an event item is (time_series_id,
//! event_time, event_id, key): writing it again is a no-op.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use futures_util::stream::BoxStream;

use crate::kv::PageLimits;
use crate::{Micros, Namespace, PluginError, Result};

/// The new events of a namespace as its backend holds them, in batches
/// ([`TimeSeriesHandle::follow`]). An `Err` ends it: the follower lost
/// its place and may have missed events.
pub type Feed = BoxStream<'static, Result<Vec<Event>>>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub time_series_id: String,
    pub event_time: Micros,
    pub event_id: String,
    /// `(key, value)` pairs.
    pub items: Vec<(Vec<u8>, Vec<u8>)>,
    pub tags: BTreeMap<String, String>,
}

/// What travels with a write besides its events.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteContext {
    /// The W3C `traceparent` of the write (the gateway's backend span, or
    /// the caller's when nothing is exported), stored with every event
    /// where the backend keeps per-message metadata — Kafka record
    /// headers, Pulsar message properties, both named `traceparent` — so
    /// a consumer continues the trace.
    pub traceparent: Option<String>,
    /// The W3C `tracestate` that goes with it (`tracestate`).
    pub tracestate: Option<String>,
}

impl WriteContext {
    /// The `(name, value)` pairs to store with each message.
    pub fn headers(&self) -> impl Iterator<Item = (&'static str, &str)> {
        let parent = self.traceparent.as_deref().map(|v| ("traceparent", v));
        parent
            .into_iter()
            .chain(self.tracestate.as_deref().filter(|_| self.traceparent.is_some()).map(|v| ("tracestate", v)))
    }
}

/// A predicate over an event's tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagFilter {
    Equals { key: String, value: String },
    In { key: String, values: Vec<String> },
    And(Vec<TagFilter>),
    Or(Vec<TagFilter>),
}

impl TagFilter {
    pub fn matches(&self, tags: &BTreeMap<String, String>) -> bool {
        match self {
            Self::Equals { key, value } => tags.get(key) == Some(value),
            Self::In { key, values } => tags.get(key).is_some_and(|v| values.contains(v)),
            Self::And(all) => all.iter().all(|f| f.matches(tags)),
            Self::Or(any) => any.iter().any(|f| f.matches(tags)),
        }
    }
}

/// Where a newest-first query continues: after this event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventCursor {
    pub event_time: Micros,
    pub time_series_id: String,
    pub event_id: String,
}

impl EventCursor {
    /// The cursor as bytes, for [`TimeSeriesHandle::export`]'s default
    /// ([`Self::decode`] reads it back).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(12 + self.time_series_id.len() + self.event_id.len());
        out.extend_from_slice(&self.event_time.to_be_bytes());
        out.extend_from_slice(&(self.time_series_id.len() as u32).to_be_bytes());
        out.extend_from_slice(self.time_series_id.as_bytes());
        out.extend_from_slice(self.event_id.as_bytes());
        out
    }

    /// [`Self::encode`]'s bytes read back; `None` when they are not a
    /// cursor.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let (time, rest) = bytes.split_first_chunk::<8>()?;
        let (len, rest) = rest.split_first_chunk::<4>()?;
        let len = usize::try_from(u32::from_be_bytes(*len)).ok()?;
        if rest.len() < len {
            return None;
        }
        let (series, id) = rest.split_at(len);
        Some(Self {
            event_time: i64::from_be_bytes(*time),
            time_series_id: String::from_utf8(series.to_vec()).ok()?,
            event_id: String::from_utf8(id.to_vec()).ok()?,
        })
    }
}

/// A page of [`TimeSeriesHandle::export`]: events as the backend holds
/// them, and where the next page starts (`None`: this was the last).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ExportPage {
    pub events: Vec<Event>,
    pub next: Option<Vec<u8>>,
}

/// What a TimeSeries query selects: the events with `start <= event_time <
/// end`, of one series or of all, matching a tag filter or not, newest
/// first, one page after the cursor.
///
/// One type for both RPCs: `ReadEventRecords` is a query of one series,
/// `SearchEventRecords` a query of every series with an optional filter.
/// A backend has one code path, and the two cannot drift apart; a query
/// may name a series *and* a filter (no RPC asks for that yet, every
/// backend answers it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// `Some`: only this series; `None`: every series.
    pub series: Option<String>,
    /// Only events whose tags match; `None`: every event.
    pub filter: Option<TagFilter>,
    /// The first event time wanted.
    pub start: Micros,
    /// The event time past the last one wanted.
    pub end: Micros,
    /// Where the previous page ended: this page starts after it.
    pub after: Option<EventCursor>,
    pub limits: PageLimits,
}

impl Query {
    /// One series in `[start, end)`, unfiltered, from the first page.
    pub fn series(series: impl Into<String>, (start, end): (Micros, Micros), limits: PageLimits) -> Self {
        Self { series: Some(series.into()), filter: None, start, end, after: None, limits }
    }

    /// Every series in `[start, end)` matching `filter`, from the first page.
    pub fn search(filter: Option<TagFilter>, (start, end): (Micros, Micros), limits: PageLimits) -> Self {
        Self { series: None, filter, start, end, after: None, limits }
    }

    /// Whether `series` is wanted.
    pub fn wants_series(&self, series: &str) -> bool {
        self.series.as_deref().is_none_or(|s| s == series)
    }

    /// Whether an event with `tags` is wanted.
    pub fn wants_tags(&self, tags: &BTreeMap<String, String>) -> bool {
        self.filter.as_ref().is_none_or(|f| f.matches(tags))
    }

    /// The event times this query may return at `now`, inclusive `(oldest,
    /// newest)` ([`read_window`]); `None` when nothing is left.
    pub fn window(&self, now: Micros, retention: Option<Micros>) -> Option<(Micros, Micros)> {
        read_window(self.start, self.end, self.after.as_ref(), now, retention)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EventsPage {
    pub events: Vec<Event>,
    pub next: Option<EventCursor>,
}

/// The namespace's retention in microseconds; `None` = keep forever
/// (unset or zero, as the namespace spec says). Every backend applies it
/// the same way: events with `event_time < now - retention` are gone.
pub fn retention(ns: &Namespace) -> Option<Micros> {
    let d = ns.spec.policies.as_deref()?.retention.as_ref()?;
    let micros = d.seconds.saturating_mul(1_000_000).saturating_add(i64::from(d.nanos) / 1_000);
    // A positive retention under a microsecond still retains something.
    match (micros > 0, d.seconds > 0 || d.nanos > 0) {
        (true, _) => Some(micros),
        (false, true) => Some(1),
        (false, false) => None,
    }
}

/// The event times a newest-first read may return, inclusive
/// `(oldest, newest)`: `[start, end)` cut to retention at `now` and to the
/// cursor's time. `None` when nothing is left.
pub fn read_window(
    start: Micros,
    end: Micros,
    after: Option<&EventCursor>,
    now: Micros,
    retention: Option<Micros>,
) -> Option<(Micros, Micros)> {
    let oldest = retention.map_or(start, |r| start.max(now.saturating_sub(r)));
    let mut newest = end.checked_sub(1)?;
    if let Some(cursor) = after {
        newest = newest.min(cursor.event_time);
    }
    (oldest <= newest).then_some((oldest, newest))
}

/// What every TimeSeries plugin must give (the conformance suite checks
/// each):
///
/// - **Idempotent writes**: an event item is identified by
///   (time_series_id, event_time, event_id, key); writing it again changes
///   nothing (the first write wins).
/// - **Queries** ([`Query`]: one series or every series, in `[start, end)`,
///   with an optional tag filter) return events newest first
///   (event_time descending, then time_series_id, then event_id ascending),
///   each event whole (all its items and tags), paginated like KeyValue: stop
///   once the page's bytes (keys, values, tag keys and values) reach
///   `max_bytes` (the crossing event included) or at `max_items` events,
///   or early, between events, once the soft instant of
///   [`PageLimits::stop_by`] has passed and the page holds an event
///   ([`crate::pace`]); `next` is the last event returned when more may
///   follow.
/// - **Retention**: with a namespace retention `r`, events with
///   `event_time < now - r` are never returned; [`TimeSeriesHandle::reclaim`]
///   removes them (whole time partitions where the backend has them).
pub trait TimeSeries: Send + Sync {
    /// Opens namespace `ns`, as [`KeyValue::open`](crate::kv::KeyValue::open)
    /// does: once, without I/O; a handle stays valid for the incarnation
    /// and spec it was opened with.
    fn open(&self, ns: &Namespace) -> Result<Arc<dyn TimeSeriesHandle>>;
}

/// One namespace of a [`TimeSeries`] store, opened.
#[async_trait]
pub trait TimeSeriesHandle: Send + Sync {
    /// Writes events; returns when they are durable.
    async fn write(&self, events: &[Event]) -> Result<()>;

    /// As [`write`](Self::write), storing `context` with the events where
    /// the backend keeps per-message metadata. Backends without any write
    /// as `write` does.
    async fn write_with(&self, events: &[Event], context: &WriteContext) -> Result<()> {
        let _ = context;
        self.write(events).await
    }

    /// The page of events `query` selects at `now`, newest first;
    /// nothing past retention at `now`.
    async fn query(&self, query: &Query, now: Micros) -> Result<EventsPage>;

    /// Every event of the namespace, a page at a time, in the backend's
    /// own order, for copying them to another store (a migration's
    /// backfill, which records `next` and resumes from it, maybe in
    /// another process):
    ///
    /// - from `after = None` to the page whose `next` is `None`, every
    ///   event the namespace held when the walk began, and still within
    ///   retention at `now`, is returned; an event may come in parts (its
    ///   writes as stored, each with the items it wrote) and a part more
    ///   than once, so writing every page to a store in order stores
    ///   each event as this one serves it (the first write of an item
    ///   wins);
    /// - a page holds at most `limits.max_items` events (it may end
    ///   sooner, and be empty while more follow);
    /// - `after` is a `next` this backend's export returned: opaque, and
    ///   refused (INVALID_ARGUMENT, naming `cursor`) when it is not one.
    ///
    /// The default pages through a search of all time, newest first, its
    /// cursor an [`EventCursor`]: right for a backend whose query reads
    /// only what it returns. One whose query reads the log from a point
    /// on (Kafka, Pulsar) should walk its log instead, or every page
    /// reads it again.
    async fn export(&self, after: Option<&[u8]>, limits: PageLimits, now: Micros) -> Result<ExportPage> {
        let after = after
            .map(|bytes| {
                EventCursor::decode(bytes)
                    .ok_or_else(|| PluginError::invalid("cursor", "is not an export cursor of this backend"))
            })
            .transpose()?;
        let query = Query { after, ..Query::search(None, (Micros::MIN, Micros::MAX), limits) };
        let page = self.query(&query, now).await?;
        Ok(ExportPage { events: page.events, next: page.next.map(|c| c.encode()) })
    }

    /// Removes the namespace's events past its retention at `now`.
    /// Returns how many events (or an estimate, for partition drops) went.
    async fn reclaim(&self, now: Micros) -> Result<u64>;

    /// Whether [`follow`](Self::follow) sees every write of the
    /// namespace, whoever made it (another gateway, a producer writing
    /// to the backend directly). When it does, the gateway feeds tails
    /// from it alone; when not, from its own write path (the backend
    /// has one writer, or nothing to follow).
    fn follows(&self) -> bool {
        false
    }

    /// The events written from now on, by anyone, each as a read would
    /// decode it (not merged with other writes of the same identity), in
    /// the backend's order (per series, the order they were written).
    /// Returns once the feed has its place: every write acknowledged
    /// after that is in it. Ends with an error when the backend cannot
    /// follow on (never silently).
    async fn follow(&self) -> Result<Feed> {
        Err(PluginError::internal("this backend does not follow writes", "TimeSeriesHandle::follow"))
    }
}
