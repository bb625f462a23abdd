//! A gateway's part of a live TimeSeries migration (ARCHITECTURE.md, "The
//! life of a migration"), as `migration.rs` is KeyValue's: one page of the
//! backfill ([`backfill_page`]), a shadow read ([`shadow_read`]) and the
//! verify comparison by time range ([`compare`]).
//!
//! What makes TimeSeries simpler than KeyValue: an event item is
//! immutable and identified by (series, event time, event id, key), and
//! writing it again changes nothing (the first write wins). So the dual
//! write, the backfill and a retried page may write the same event to the
//! target in any order, any number of times, and the target ends up with
//! what the source holds. There is no generation time to compare and no
//! tombstone to carry: retention removes events, on both sides by the
//! same rule (the target has the source's policies).
//!
//! The backfill walks the source as it exports itself
//! (`TimeSeriesHandle::export`: Kafka its log, partition by partition;
//! other backends a search of all time, newest first); the comparison
//! reads both sides newest first ([`Query::search`]), the order every
//! backend serves.

use std::collections::BTreeMap;
use std::hash::Hasher;

use prism_plugin_api::kv::PageLimits;
use prism_plugin_api::ts::{Event, Query, TimeSeriesHandle};
use prism_plugin_api::{Micros, now_micros};
use twox_hash::XxHash64;

use crate::error::Result;

/// Every event time.
const ALL_TIME: (Micros, Micros) = (Micros::MIN, Micros::MAX);

/// One page of a backfill and of a comparison (`background/migrate.rs`):
/// large, as a Kafka or Pulsar query reads its topic from the window's
/// start for every page (`plugins/kafka/src/ts.rs`,
/// `plugins/pulsar/src/ts.rs`).
pub const PAGE: PageLimits = PageLimits::new(8 << 20, Some(10_000));

/// The time ranges [`compare`] sums up and compares: an hour each
/// (aligned to the hour; TimeSeries partitions and reclaims by the hour).
pub const RANGE: Micros = 3_600_000_000;

/// What one page of the backfill copied, and where the next one starts
/// (`None`: the backfill is complete): the source's export cursor
/// (`TimeSeriesHandle::export`), opaque here.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Copied {
    pub events: u64,
    pub bytes: u64,
    pub next: Option<Vec<u8>>,
}

/// An event's size as a page counts it: its keys, values, tags, series
/// and id.
fn bytes(e: &Event) -> u64 {
    let items: usize = e.items.iter().map(|(k, v)| k.len() + v.len()).sum();
    let tags: usize = e.tags.iter().map(|(k, v)| k.len() + v.len()).sum();
    (items + tags + e.time_series_id.len() + e.event_id.len()) as u64
}

/// Copies one page of `source`'s export (`TimeSeriesHandle::export`: its
/// events as it holds them, in its own order), from `after`, into
/// `target`, in that order, so the first write of each item stays the
/// first: a page copied twice, or an event the dual write got there
/// first, changes nothing, so a runner resumes from the last cursor it
/// recorded. Events past retention are not exported, so not copied.
pub async fn backfill_page(
    source: &dyn TimeSeriesHandle,
    target: &dyn TimeSeriesHandle,
    after: Option<&[u8]>,
    limits: PageLimits,
) -> Result<Copied> {
    let page = source.export(after, limits, now_micros()).await?;
    if !page.events.is_empty() {
        target.write(&page.events).await?;
    }
    Ok(Copied { events: page.events.len() as u64, bytes: page.events.iter().map(bytes).sum(), next: page.next })
}

/// An event as both sides must serve it: its items in key order (a
/// backend keeps them in the order first written, which the dual write
/// and the backfill may not share).
fn canonical(mut e: Event) -> Event {
    e.items.sort_unstable();
    e
}

/// The most events a shadow read compares: a sample, not a scan.
const SHADOW_EVENTS: u32 = 64;

/// Where an event sorts in a newest-first page.
fn order(e: &Event) -> (std::cmp::Reverse<Micros>, &str, &str) {
    (std::cmp::Reverse(e.event_time), &e.time_series_id, &e.event_id)
}

/// One shadow read (VERIFY): runs the read `query` on the source, then on
/// the target (the first page of each, at most [`SHADOW_EVENTS`]), and
/// says whether the target served every event the source did, as the
/// source served it. Live writes land on the source first: the target,
/// read after it, may serve newer events the source's page did not have
/// yet (and so end its page sooner), which is not a difference. A
/// difference is read again, and only one that is still there counts:
/// `Ok(false)`.
pub async fn shadow_read(
    source: &dyn TimeSeriesHandle,
    target: &dyn TimeSeriesHandle,
    query: &Query,
    mut now: Micros,
) -> Result<bool> {
    let max = query.limits.max_items.map_or(SHADOW_EVENTS, |n| n.min(SHADOW_EVENTS));
    // Off the request's path: no deadline of its own.
    let query = Query { limits: PageLimits::new(query.limits.max_bytes, Some(max)), ..query.clone() };
    for attempt in 0..2 {
        if attempt > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            now = now_micros();
        }
        let a = source.query(&query, now).await?;
        let b = target.query(&query, now).await?;
        let served: std::collections::HashSet<u64> = b.events.iter().cloned().map(fingerprint).collect();
        // What the target's page covers: all of the window, or down to
        // its last event when it has more.
        let last = b.next.as_ref().and(b.events.last());
        let covered = |e: &Event| last.is_none_or(|last| order(e) <= order(last));
        if a.events.into_iter().filter(|e| covered(e)).all(|e| served.contains(&fingerprint(e))) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// What one time range holds on one side: how many events, and a hash of
/// every one of them (series, time, id, items in key order, tags), in the
/// order served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RangeDigest {
    pub events: u64,
    pub hash: u64,
}

/// The start of the range holding `time`.
fn range_of(time: Micros) -> Micros {
    time.div_euclid(RANGE).saturating_mul(RANGE)
}

/// The digests of `handle`'s events in `window` at `now`, per time range,
/// read a page of `limits` at a time.
pub async fn digests(
    handle: &dyn TimeSeriesHandle,
    window: (Micros, Micros),
    limits: PageLimits,
    now: Micros,
) -> Result<BTreeMap<Micros, RangeDigest>> {
    let mut out = BTreeMap::new();
    // Newest first: a range's events arrive together.
    let mut current: Option<(Micros, XxHash64, u64)> = None;
    let mut query = Query::search(None, window, limits);
    loop {
        let page = handle.query(&query, now).await?;
        for event in page.events.into_iter().map(canonical) {
            let range = range_of(event.event_time);
            if current.as_ref().is_none_or(|(r, _, _)| *r != range) {
                if let Some((r, hasher, events)) = current.take() {
                    out.insert(r, RangeDigest { events, hash: hasher.finish() });
                }
                current = Some((range, XxHash64::with_seed(0), 0));
            }
            if let Some((_, hasher, events)) = current.as_mut() {
                hash_event(hasher, &event);
                *events += 1;
            }
        }
        match page.next {
            Some(next) => query.after = Some(next),
            None => break,
        }
    }
    if let Some((r, hasher, events)) = current {
        out.insert(r, RangeDigest { events, hash: hasher.finish() });
    }
    Ok(out)
}

/// A hash of an event's identity and content, whatever the order of its
/// items.
fn fingerprint(e: Event) -> u64 {
    let mut hasher = XxHash64::with_seed(0);
    hash_event(&mut hasher, &canonical(e));
    hasher.finish()
}

fn hash_event(hasher: &mut XxHash64, e: &Event) {
    // Lengths first, so no two different sequences of fields hash the
    // same bytes.
    let mut field = |bytes: &[u8]| {
        hasher.write_u64(bytes.len() as u64);
        hasher.write(bytes);
    };
    field(e.time_series_id.as_bytes());
    field(&e.event_time.to_be_bytes());
    field(e.event_id.as_bytes());
    field(&(e.items.len() as u64).to_be_bytes());
    for (k, v) in &e.items {
        field(k);
        field(v);
    }
    field(&(e.tags.len() as u64).to_be_bytes());
    for (k, v) in &e.tags {
        field(k.as_bytes());
        field(v.as_bytes());
    }
}

/// What VERIFY found comparing both sides of a migration ([`compare`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Compared {
    /// The events the source served.
    pub events: u64,
    /// The time ranges either side holds events in.
    pub ranges: u64,
    /// Ranges that still differed when read again, and the first of
    /// them, described.
    pub differing: u64,
    pub first: Option<String>,
}

/// Ranges that differed in the first pass and are read again, at most:
/// more than this and the sides are not converging.
const RECHECK_AT_MOST: usize = 1_000;
/// How often a differing range is read again before it counts.
const RECHECK_TIMES: usize = 3;

/// Compares both sides by time range: the events each serves, summed up
/// per hour ([`digests`]), must be the same. Live writes race the
/// comparison (each lands on both sides, one after the other; the newest
/// hour differs while they go on), so a range that differs is read again
/// in the order writes land ([`recheck`]), a few times, and only one that
/// still differs counts.
pub async fn compare(
    source: &dyn TimeSeriesHandle,
    target: &dyn TimeSeriesHandle,
    limits: PageLimits,
) -> Result<Compared> {
    let now = now_micros();
    let (a, b) = (digests(source, ALL_TIME, limits, now).await?, digests(target, ALL_TIME, limits, now).await?);
    let mut compared = Compared { events: a.values().map(|d| d.events).sum(), ..Compared::default() };
    let ranges: std::collections::BTreeSet<Micros> = a.keys().chain(b.keys()).copied().collect();
    compared.ranges = ranges.len() as u64;
    let suspects: Vec<Micros> = ranges.into_iter().filter(|r| a.get(r) != b.get(r)).collect();
    if suspects.len() > RECHECK_AT_MOST {
        compared.differing = suspects.len() as u64;
        compared.first = Some(format!("more than {RECHECK_AT_MOST} hours of events differ in one pass"));
        return Ok(compared);
    }
    // Newest first: the newest range is where live writes land.
    for range in suspects.into_iter().rev() {
        if let Some(what) = recheck(source, target, range, limits).await? {
            compared.differing += 1;
            compared.first.get_or_insert(what);
        }
    }
    Ok(compared)
}

/// Every event of `handle` in `window` at `now`, each as a hash of its
/// identity and content.
async fn hashes(
    handle: &dyn TimeSeriesHandle,
    window: (Micros, Micros),
    limits: PageLimits,
    now: Micros,
) -> Result<std::collections::HashSet<u64>> {
    let mut out = std::collections::HashSet::new();
    let mut query = Query::search(None, window, limits);
    loop {
        let page = handle.query(&query, now).await?;
        out.extend(page.events.into_iter().map(fingerprint));
        match page.next {
            Some(next) => query.after = Some(next),
            None => return Ok(out),
        }
    }
}

/// Reads the range starting at `range` again, a few times, as live
/// writes leave it: the source, then the target, then the source again.
/// A write lands on the source, then on the target, so every event of
/// the first read must be in the target, and every event of the target
/// in the second read. `None` once that holds, else how it failed the
/// last time.
async fn recheck(
    source: &dyn TimeSeriesHandle,
    target: &dyn TimeSeriesHandle,
    range: Micros,
    limits: PageLimits,
) -> Result<Option<String>> {
    let window = (range, range.saturating_add(RANGE));
    let mut what = None;
    for attempt in 0..RECHECK_TIMES {
        if attempt > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let now = now_micros();
        let before = hashes(source, window, limits, now).await?;
        let held = hashes(target, window, limits, now).await?;
        let after = hashes(source, window, limits, now).await?;
        let (missing, extra) = (before.difference(&held).count(), held.difference(&after).count());
        if missing == 0 && extra == 0 {
            return Ok(None);
        }
        what = Some(format!(
            "the hour from {}: {missing} events of the source are not in the target, and {extra} of the target \
             not in the source (events whose content differs count on both sides)",
            crate::ts_event::timestamp(range),
        ));
    }
    Ok(what)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_time_belongs_to_the_hour_that_starts_at_or_before_it() {
        assert_eq!(range_of(0), 0);
        assert_eq!(range_of(RANGE - 1), 0);
        assert_eq!(range_of(RANGE), RANGE);
        assert_eq!(range_of(-1), -RANGE);
        assert_eq!(range_of(Micros::MIN), Micros::MIN, "saturated, never overflowing");
    }

    #[test]
    fn an_event_hashes_the_same_whatever_the_order_of_its_items() {
        let e = |items: Vec<(&str, &str)>| Event {
            time_series_id: "s".into(),
            event_time: 5,
            event_id: "e".into(),
            items: items.into_iter().map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec())).collect(),
            tags: [("site".to_owned(), "lab".to_owned())].into(),
        };
        let hash = fingerprint;
        assert_eq!(hash(e(vec![("a", "1"), ("b", "2")])), hash(e(vec![("b", "2"), ("a", "1")])));
        assert_ne!(hash(e(vec![("a", "1"), ("b", "2")])), hash(e(vec![("a", "12")])));
        assert_ne!(hash(e(vec![("a", "1")])), hash(e(vec![("a", "1"), ("b", "")])));
    }
}
