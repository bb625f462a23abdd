//! TimeSeries on redb: immutable events in hourly time partitions, one
//! write transaction per `write`.
//!
//! # Layout
//!
//! Keys start with the namespace *incarnation* prefix of [`crate::kv`]
//! (`name ‖ 0x00 ‖ create_revision`), and the namespace registry is the
//! KeyValue one: provisioning, deprovisioning (one range delete per table)
//! and `NotProvisioned` behave alike for both abstractions. Next comes the
//! time partition, `!partition` (the hour, `event_time` floor-divided by
//! `codec::PARTITION`, bitwise-inverted big-endian so that ascending key
//! order is newest first), so that retention drops whole partitions by
//! range deletes. Times are stored the same inverted way (`!t`). Series
//! and event ids never hold NUL (refused as invalid), so NUL separates them
//! and byte order is the contract's order. Tables:
//!
//! - `ts_events`, the primary table, newest first per series:
//!   `prefix ‖ !partition ‖ series ‖ 0x00 ‖ !event_time ‖ event_id ‖ 0x00`
//!   is the event key `E`; `E ‖ 0x00` (the event's *head*) → its tags,
//!   stored once; `E ‖ 0x01 ‖ item key` → the item's value. The head sorts
//!   before the items, so a read of one series walks one key range per
//!   partition and meets every event head first, then its items in key
//!   order.
//! - `ts_index`, for searches across series:
//!   `prefix ‖ !partition ‖ !event_time ‖ series ‖ 0x00 ‖ event_id` → ().
//!   Its order is exactly the contract's (time descending, then series,
//!   then event id), so a search is one key range; each entry leads to the
//!   event's head (tags, for the filter) and items.
//! - `ts_partitions`: `prefix ‖ !partition` → the events it holds. A read
//!   visits only partitions that exist, and reclamation counts what it
//!   drops without reading it.
//!
//! Item values are stored inline (no chunking): an event is at most the
//! namespace's max item size, which redb holds in one value.
//!
//! # Writes
//!
//! A `write` is one redb write transaction, committed with fsync before it
//! returns (durable on return). Events are immutable: a head is inserted
//! only if absent (the first write's tags win), and so is each item, so a
//! repeated write — even with other values — changes nothing, while the
//! same event with a new item key gains that item.
//!
//! # Retention
//!
//! Reads and searches never return events older than `now - retention`:
//! the interval is cut before any key is read. [`TimeSeriesHandle::reclaim`]
//! drops every partition wholly older than that cutoff, one transaction
//! each, then removes the older events of the one partition the cutoff
//! falls in, in batches, so that after it nothing past retention is kept.
//!
//! Every write transaction also keeps the namespace's byte counter of
//! [`crate::kv`] (keys and values of `ts_events` and `ts_index`), so
//! `KeyValue::storage_bytes` counts TimeSeries namespaces too.

// Public, hidden, for the fuzz targets (fuzz/cases): they decode arbitrary
// bytes with the store's own codecs. Not an API.
#[doc(hidden)]
pub mod codec;
#[cfg(test)]
mod tests;

use std::ops::Bound;
use std::sync::Arc;

use async_trait::async_trait;
use prism_plugin_api::kv::PageLimits;
use prism_plugin_api::pace::Cancelled;
use prism_plugin_api::ts::{Event, EventCursor, EventsPage, Query, TagFilter, TimeSeries, TimeSeriesHandle};
use prism_plugin_api::{Micros, Namespace};
use redb::{ReadableDatabase, ReadableTable, Table, TableDefinition, WriteTransaction};

use self::codec::{
    Row, check_id, decode_tags, encode_tags, event_key, head_key, index_key, index_time_key, item_key, items_key,
    partition, partition_key, series_key, series_time_key, split_index, split_row,
};
use crate::error::{EmbeddedError, Result, storage};
use crate::kv::codec::prefix_end;
use crate::kv::{Bytes, Incarnation, NAMESPACES, Pager, Store, count_bytes, purge_range, registered};
use crate::{EmbeddedPlugin, Opened};

const EVENTS: TableDefinition<Bytes, Bytes> = TableDefinition::new("ts_events");
const INDEX: TableDefinition<Bytes, ()> = TableDefinition::new("ts_index");
const PARTITIONS: TableDefinition<Bytes, u64> = TableDefinition::new("ts_partitions");

/// Events one reclaim transaction removes at most from the partition the
/// cutoff falls in, so that it never holds writers back for long.
const TRIM_BATCH: usize = 4096;

/// Creates the tables (at open, so readers always find them).
pub(crate) fn create_tables(w: &WriteTransaction) -> Result<()> {
    TsTables::open(w).map(drop)
}

/// Removes every TimeSeries key of the incarnation `prefix`. The byte
/// counter goes with the registration, which the caller removes.
pub(crate) fn purge(w: &WriteTransaction, prefix: &[u8]) -> Result<()> {
    let mut t = TsTables::open(w)?;
    purge_range(&mut t.events, prefix)?;
    purge_range(&mut t.index, prefix)?;
    purge_range(&mut t.partitions, prefix)?;
    Ok(())
}

pub(crate) use prism_plugin_api::ts::retention;

fn check_cursor(after: Option<&EventCursor>) -> Result<()> {
    if let Some(cursor) = after {
        check_id("after", &cursor.time_series_id)?;
        check_id("after", &cursor.event_id)?;
    }
    Ok(())
}

/// What the pagination bound counts of an event (see [`TimeSeries`]).
fn event_bytes(event: &Event) -> usize {
    let items: usize = event.items.iter().map(|(k, v)| k.len() + v.len()).sum();
    let tags: usize = event.tags.iter().map(|(k, v)| k.len() + v.len()).sum();
    items + tags
}

/// A key range with owned bounds.
type Span = (Bound<Vec<u8>>, Bound<Vec<u8>>);

/// `(lower, upper)` as range bounds, `None` when the range is empty.
fn span(lower: Bound<Vec<u8>>, upper: Option<Vec<u8>>) -> Option<Span> {
    let empty = match (&lower, &upper) {
        (Bound::Included(l) | Bound::Excluded(l), Some(u)) => l >= u,
        _ => false,
    };
    (!empty).then(|| (lower, upper.map_or(Bound::Unbounded, Bound::Excluded)))
}

fn as_slices(bounds: &Span) -> (Bound<&[u8]>, Bound<&[u8]>) {
    (bounds.0.as_ref().map(Vec::as_slice), bounds.1.as_ref().map(Vec::as_slice))
}

/// The TimeSeries tables, opened in one write transaction.
struct TsTables<'t> {
    events: Table<'t, Bytes, Bytes>,
    index: Table<'t, Bytes, ()>,
    partitions: Table<'t, Bytes, u64>,
}

impl<'t> TsTables<'t> {
    fn open(w: &'t WriteTransaction) -> Result<Self> {
        Ok(Self {
            events: w.open_table(EVENTS).map_err(storage)?,
            index: w.open_table(INDEX).map_err(storage)?,
            partitions: w.open_table(PARTITIONS).map_err(storage)?,
        })
    }

    /// Inserts `key → value` into the events table unless `key` is there;
    /// returns the bytes added.
    fn insert_new(&mut self, key: &[u8], value: &[u8]) -> Result<i64> {
        if self.events.get(key).map_err(storage)?.is_some() {
            return Ok(0);
        }
        self.events.insert(key, value).map_err(storage)?;
        Ok((key.len() + value.len()) as i64)
    }

    /// Adds `delta` to the event count of partition `key`, dropping the
    /// entry at zero.
    fn count_events(&mut self, key: &[u8], delta: i64) -> Result<()> {
        let count = self.partitions.get(key).map_err(storage)?.map_or(0, |c| c.value()).saturating_add_signed(delta);
        if count == 0 {
            self.partitions.remove(key).map_err(storage)?;
        } else {
            self.partitions.insert(key, count).map_err(storage)?;
        }
        Ok(())
    }
}

/// Fills one page with whole events, newest first: stops before the event
/// after the one that reached a limit.
struct Page {
    pager: Pager,
    events: Vec<Event>,
    /// The event whose items are being read.
    open: Option<Event>,
}

impl Page {
    fn new(limits: PageLimits, cancelled: &Cancelled) -> Self {
        Self { pager: Pager::new(limits, cancelled), events: Vec::new(), open: None }
    }

    fn close(&mut self) {
        if let Some(event) = self.open.take() {
            self.pager.add(event_bytes(&event));
            self.events.push(event);
        }
    }

    /// Starts `event`, items to follow; false (and the page says more
    /// follows) when the page is already complete.
    fn begin(&mut self, event: Event) -> bool {
        self.close();
        if self.pager.full() {
            self.pager.more = true;
            return false;
        }
        self.open = Some(event);
        true
    }

    /// Adds an item to the open event, which must be the one named.
    fn item(&mut self, time: Micros, event_id: &[u8], key: &[u8], value: &[u8]) -> Result<()> {
        match &mut self.open {
            Some(event) if event.event_time == time && event.event_id.as_bytes() == event_id => {
                event.items.push((key.to_vec(), value.to_vec()));
                Ok(())
            }
            _ => Err(EmbeddedError::Corrupt("an event item has no head".into())),
        }
    }

    fn finish(mut self) -> EventsPage {
        self.close();
        let next = if self.pager.more {
            self.events.last().map(|e| EventCursor {
                event_time: e.event_time,
                time_series_id: e.time_series_id.clone(),
                event_id: e.event_id.clone(),
            })
        } else {
            None
        };
        EventsPage { events: self.events, next }
    }
}

/// Bytes removed, as a change of the byte counter.
fn freed(bytes: u64) -> i64 {
    -i64::try_from(bytes).unwrap_or(i64::MAX)
}

fn event_id_text(id: &[u8]) -> Result<String> {
    String::from_utf8(id.to_vec()).map_err(|_| EmbeddedError::Corrupt("an event id is not UTF-8".into()))
}

impl Store {
    fn write_events(&self, ns: &Incarnation, events: &[Event]) -> Result<()> {
        let mut tags = Vec::with_capacity(events.len());
        for event in events {
            check_id("time_series_id", &event.time_series_id)?;
            check_id("event_id", &event.event_id)?;
            tags.push(encode_tags(&event.tags)?);
        }
        self.in_write(ns, |t| {
            let mut delta = 0;
            for (event, tags) in events.iter().zip(&tags) {
                let part = partition_key(&ns.prefix, partition(event.event_time));
                let key = event_key(&series_key(&part, &event.time_series_id), event.event_time, &event.event_id);
                let added = t.insert_new(&head_key(&key), tags)?;
                if added > 0 {
                    let index = index_key(&ns.prefix, event.event_time, &event.time_series_id, &event.event_id);
                    t.index.insert(index.as_slice(), ()).map_err(storage)?;
                    t.count_events(&part, 1)?;
                    delta += added + index.len() as i64;
                }
                for (item, value) in &event.items {
                    delta += t.insert_new(&item_key(&key, item), value)?;
                }
            }
            // A pure repeat inserted nothing: no commit, no fsync.
            Ok(((), (delta != 0).then_some(delta)))
        })
    }

    /// Runs `f` in one write transaction on the TimeSeries tables of the
    /// provisioned namespace `ns`. `f` returns its result and the change of
    /// the namespace's stored bytes: `None` when it changed nothing, so
    /// nothing is committed (or fsynced).
    fn in_write<T>(
        &self,
        ns: &Incarnation,
        f: impl FnOnce(&mut TsTables<'_>) -> Result<(T, Option<i64>)>,
    ) -> Result<T> {
        let w = self.db.begin_write().map_err(storage)?;
        let (out, changed) = {
            let mut namespaces = w.open_table(NAMESPACES).map_err(storage)?;
            registered(&namespaces, ns)?;
            let (out, delta) = f(&mut TsTables::open(&w)?)?;
            if let Some(delta) = delta {
                count_bytes(&mut namespaces, &ns.prefix, delta)?;
            }
            (out, delta.is_some())
        };
        if changed {
            w.commit().map_err(storage)?;
        }
        Ok(out)
    }

    /// One page of `query` within `window`: by the series' own keys for
    /// one series, by the time index for every series.
    fn query(
        &self,
        ns: &Incarnation,
        query: &Query,
        window: (Micros, Micros),
        cancelled: &Cancelled,
    ) -> Result<EventsPage> {
        let (filter, after) = (query.filter.as_ref(), query.after.as_ref());
        let page = Page::new(query.limits, cancelled);
        page.pager.check()?;
        match &query.series {
            Some(series) => self.read_series(ns, series, window, filter, after, page),
            None => self.search(ns, window, filter, after, page),
        }
    }

    fn read_series(
        &self,
        ns: &Incarnation,
        series: &str,
        (oldest, newest): (Micros, Micros),
        filter: Option<&TagFilter>,
        after: Option<&EventCursor>,
        mut page: Page,
    ) -> Result<EventsPage> {
        check_id("time_series_id", series)?;
        check_cursor(after)?;
        let r = self.db.begin_read().map_err(storage)?;
        registered(&r.open_table(NAMESPACES).map_err(storage)?, ns)?;
        let events = r.open_table(EVENTS).map_err(storage)?;
        let partitions = r.open_table(PARTITIONS).map_err(storage)?;
        let newest_part = partition_key(&ns.prefix, partition(newest));
        let oldest_part = partition_key(&ns.prefix, partition(oldest));
        'partitions: for entry in
            partitions.range::<&[u8]>(newest_part.as_slice()..=oldest_part.as_slice()).map_err(storage)?
        {
            let part = entry.map_err(storage)?.0.value().to_vec();
            let base = series_key(&part, series);
            let mut lower = series_time_key(&base, newest);
            // Events at the cursor's time follow it only past its (series,
            // id); the window already ends at its time.
            if let Some(cursor) = after.filter(|c| c.event_time == newest && part == newest_part) {
                let skip = match cursor.time_series_id.as_str().cmp(series) {
                    std::cmp::Ordering::Less => None,
                    std::cmp::Ordering::Equal => prefix_end(&event_key(&base, newest, &cursor.event_id)),
                    std::cmp::Ordering::Greater => prefix_end(&lower),
                };
                lower = skip.unwrap_or(lower);
            }
            let Some(bounds) = span(Bound::Included(lower), prefix_end(&series_time_key(&base, oldest))) else {
                continue;
            };
            // The items of an event the filter skipped are skipped too.
            let mut skipping = false;
            for row in events.range::<&[u8]>(as_slices(&bounds)).map_err(storage)? {
                page.pager.check()?;
                let (key, value) = row.map_err(storage)?;
                let (time, id, row) = split_row(key.value().get(base.len()..).unwrap_or_default())?;
                match row {
                    Row::Head => {
                        let tags = decode_tags(value.value())?;
                        skipping = filter.is_some_and(|f| !f.matches(&tags));
                        if skipping {
                            continue;
                        }
                        let event = Event {
                            time_series_id: series.to_owned(),
                            event_time: time,
                            event_id: event_id_text(id)?,
                            items: Vec::new(),
                            tags,
                        };
                        if !page.begin(event) {
                            break 'partitions;
                        }
                    }
                    Row::Item(_) if skipping => {}
                    Row::Item(item) => page.item(time, id, item, value.value())?,
                }
            }
        }
        Ok(page.finish())
    }

    fn search(
        &self,
        ns: &Incarnation,
        (oldest, newest): (Micros, Micros),
        filter: Option<&TagFilter>,
        after: Option<&EventCursor>,
        mut page: Page,
    ) -> Result<EventsPage> {
        check_cursor(after)?;
        let r = self.db.begin_read().map_err(storage)?;
        registered(&r.open_table(NAMESPACES).map_err(storage)?, ns)?;
        let events = r.open_table(EVENTS).map_err(storage)?;
        let index = r.open_table(INDEX).map_err(storage)?;
        let first = index_time_key(&ns.prefix, newest);
        let lower = match after {
            Some(c) => {
                let cursor = index_key(&ns.prefix, c.event_time, &c.time_series_id, &c.event_id);
                if cursor >= first { Bound::Excluded(cursor) } else { Bound::Included(first) }
            }
            None => Bound::Included(first),
        };
        let Some(bounds) = span(lower, prefix_end(&index_time_key(&ns.prefix, oldest))) else {
            return Ok(page.finish());
        };
        for entry in index.range::<&[u8]>(as_slices(&bounds)).map_err(storage)? {
            page.pager.check()?;
            let entry = entry.map_err(storage)?;
            let (time, series, id) = split_index(entry.0.value().get(ns.prefix.len()..).unwrap_or_default())?;
            let key = event_key(&series_key(&partition_key(&ns.prefix, partition(time)), &series), time, &id);
            let head = events
                .get(head_key(&key).as_slice())
                .map_err(storage)?
                .ok_or_else(|| EmbeddedError::Corrupt("an indexed event has no head".into()))?;
            let tags = decode_tags(head.value())?;
            // Non-matches are skipped before the page is asked, so a full
            // page stops only at a further match: `next` then says more
            // follows only when it does.
            if filter.is_some_and(|f| !f.matches(&tags)) {
                continue;
            }
            let id_bytes = id.clone().into_bytes();
            let event = Event { time_series_id: series, event_time: time, event_id: id, items: Vec::new(), tags };
            if !page.begin(event) {
                break;
            }
            let items = items_key(&key);
            let Some(bounds) = span(Bound::Included(items.clone()), prefix_end(&items)) else { continue };
            for row in events.range::<&[u8]>(as_slices(&bounds)).map_err(storage)? {
                let (row, value) = row.map_err(storage)?;
                let item = row.value().get(items.len()..).unwrap_or_default();
                page.item(time, &id_bytes, item, value.value())?;
            }
        }
        Ok(page.finish())
    }

    /// Drops one whole partition older than the one `cutoff` falls in, in
    /// one transaction. Returns the events it held, `None` once no such
    /// partition is left.
    fn drop_partition(&self, ns: &Incarnation, cutoff: Micros) -> Result<Option<u64>> {
        let kept = partition_key(&ns.prefix, partition(cutoff));
        // Older partitions sort after the kept one (`!partition`).
        let Some(older) = span(Bound::Excluded(kept), prefix_end(&ns.prefix)) else { return Ok(None) };
        self.in_write(ns, |t| {
            let found = match t.partitions.range::<&[u8]>(as_slices(&older)).map_err(storage)?.next() {
                Some(entry) => {
                    let (key, count) = entry.map_err(storage)?;
                    Some((key.value().to_vec(), count.value()))
                }
                None => None,
            };
            let Some((part, count)) = found else { return Ok((None, None)) };
            let bytes = purge_range(&mut t.events, &part)? + purge_range(&mut t.index, &part)?;
            t.partitions.remove(part.as_slice()).map_err(storage)?;
            Ok((Some(count), Some(freed(bytes))))
        })
    }

    /// Removes up to `budget` events older than `cutoff` from the partition
    /// `cutoff` falls in, in one transaction. Returns how many went and
    /// whether more may be left.
    fn trim_partition(&self, ns: &Incarnation, cutoff: Micros, budget: usize) -> Result<(u64, bool)> {
        // Nothing of the partition is older when the cutoff starts it.
        let Some(before) = cutoff.checked_sub(1).filter(|b| partition(*b) == partition(cutoff)) else {
            return Ok((0, false));
        };
        let part = partition_key(&ns.prefix, partition(cutoff));
        let Some(bounds) = span(Bound::Included(index_time_key(&ns.prefix, before)), prefix_end(&part)) else {
            return Ok((0, false));
        };
        let removed = self.in_write(ns, |t| {
            let mut past = Vec::new();
            for entry in t.index.range::<&[u8]>(as_slices(&bounds)).map_err(storage)?.take(budget) {
                past.push(entry.map_err(storage)?.0.value().to_vec());
            }
            if past.is_empty() {
                return Ok((0, None));
            }
            let mut bytes = 0;
            for index in &past {
                let (time, series, id) = split_index(index.get(ns.prefix.len()..).unwrap_or_default())?;
                bytes += purge_range(&mut t.events, &event_key(&series_key(&part, &series), time, &id))?;
                t.index.remove(index.as_slice()).map_err(storage)?;
                bytes += index.len() as u64;
            }
            t.count_events(&part, -i64::try_from(past.len()).unwrap_or(i64::MAX))?;
            Ok((past.len(), Some(freed(bytes))))
        })?;
        Ok((removed as u64, removed == budget))
    }
}

impl TimeSeries for EmbeddedPlugin {
    fn open(&self, ns: &Namespace) -> prism_plugin_api::Result<Arc<dyn TimeSeriesHandle>> {
        Ok(Arc::new(Opened::of(&self.turns, ns)?))
    }
}

#[async_trait]
impl TimeSeriesHandle for Opened {
    async fn write(&self, events: &[Event]) -> prism_plugin_api::Result<()> {
        let ns = self.ns.clone();
        if events.is_empty() {
            // No transaction to commit, but the namespace must exist.
            self.turns.read_turn(move |s| s.storage_bytes(&ns)).await?;
            return Ok(());
        }
        let events = events.to_vec();
        Ok(self.turns.write_turn(move |s| s.write_events(&ns, &events)).await?)
    }

    async fn query(&self, query: &Query, now: Micros) -> prism_plugin_api::Result<EventsPage> {
        // The times `[start, end)` leaves after retention at `now` and the
        // cursor; when none are left, only a check that the namespace is
        // provisioned.
        let window = query.window(now, self.retention);
        let (ns, query) = (self.ns.clone(), query.clone());
        Ok(self
            .turns
            .read_turn_cancellable(move |s, cancelled| match window {
                Some(window) => s.query(&ns, &query, window, cancelled),
                None => s.storage_bytes(&ns).map(|_| EventsPage::default()),
            })
            .await?)
    }

    async fn reclaim(&self, now: Micros) -> prism_plugin_api::Result<u64> {
        let Some(retention) = self.retention else {
            // Nothing is past retention, but the namespace must exist.
            let ns = self.ns.clone();
            self.turns.read_turn(move |s| s.storage_bytes(&ns)).await?;
            return Ok(0);
        };
        let cutoff = now.saturating_sub(retention);
        let mut removed = 0;
        // One transaction per partition or batch, each taking its turn
        // among writers.
        loop {
            let ns = self.ns.clone();
            match self.turns.write_turn(move |s| s.drop_partition(&ns, cutoff)).await? {
                Some(events) => removed += events,
                None => break,
            }
        }
        loop {
            let ns = self.ns.clone();
            let (events, more) = self.turns.write_turn(move |s| s.trim_partition(&ns, cutoff, TRIM_BATCH)).await?;
            removed += events;
            if !more {
                return Ok(removed);
            }
        }
    }
}
