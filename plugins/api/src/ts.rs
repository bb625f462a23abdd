//! The TimeSeries plugin trait (SPEC §4): namespace → `time_series_id` →
//! immutable events. The identity of an event item is (time_series_id,
//! event_time, event_id, key): writing it again is a no-op.

use std::collections::BTreeMap;

use async_trait::async_trait;

use crate::kv::PageLimits;
use crate::{Micros, Namespace, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub time_series_id: String,
    pub event_time: Micros,
    pub event_id: String,
    /// `(key, value)` pairs.
    pub items: Vec<(Vec<u8>, Vec<u8>)>,
    pub tags: BTreeMap<String, String>,
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

/// Where a newest-first read continues: after this event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventCursor {
    pub event_time: Micros,
    pub time_series_id: String,
    pub event_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EventsPage {
    pub events: Vec<Event>,
    pub next: Option<EventCursor>,
}

#[async_trait]
pub trait TimeSeries: Send + Sync {
    /// Writes events; returns when they are durable.
    async fn write(&self, ns: &Namespace, events: &[Event]) -> Result<()>;

    /// Events of one series with `start <= event_time < end`, newest first.
    async fn read(
        &self,
        ns: &Namespace,
        time_series_id: &str,
        start: Micros,
        end: Micros,
        after: Option<&EventCursor>,
        limits: PageLimits,
    ) -> Result<EventsPage>;

    /// Events of any series in `[start, end)` matching `filter`, newest first.
    async fn search(
        &self,
        ns: &Namespace,
        start: Micros,
        end: Micros,
        filter: Option<&TagFilter>,
        after: Option<&EventCursor>,
        limits: PageLimits,
    ) -> Result<EventsPage>;
}
