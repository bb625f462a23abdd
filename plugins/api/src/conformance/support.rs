//! What the conformance cases share: a fresh namespace per case, writes
//! stamped near the real clock, and reads that follow every page and check
//! each against the pagination rules of [`crate::kv`] and [`crate::ts`].

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use prism_proto::control::{Abstraction, NamespaceSpec, Policies};

use super::Subject;
use crate::kv::{
    Held, Item, KeyValueHandle, Mutation, NewItem, PageLimits, ScanCursor, Selector, Version, VersionCursor, WriteStamp,
};
use crate::pace::StopBy;
use crate::ts::{Event, EventCursor, EventsPage, Query, TagFilter, TimeSeriesHandle};
use crate::{Micros, Namespace, Plugin, PluginError, now_micros};

pub const KIB: usize = 1 << 10;
pub const MIB: usize = 1 << 20;

/// Max item size of the namespaces the cases make: room for a 3 MiB value.
pub const MAX_ITEM_SIZE: i64 = 4 << 20;

/// An hour in microseconds: how far in the future "not yet expired" is.
pub const HOUR: Micros = 3_600_000_000;

pub const MINUTE: Micros = 60_000_000;

pub const DAY: Micros = 24 * HOUR;

/// Limits no case's data reaches: one page holds everything.
pub const UNLIMITED: PageLimits = PageLimits::new(u64::MAX, None);

/// Items a page holds under [`paced`] limits.
pub const PACED_ITEMS: usize = 3;

/// `limits` with a soft deadline an hour away that is reached after
/// [`PACED_ITEMS`] items: each item a read puts on its page is charged 25
/// minutes ([`StopBy::charge_per_item`]), so pages end early the same way
/// on any machine. The hard deadline is two hours away.
pub fn paced(limits: PageLimits) -> PageLimits {
    let now = std::time::Instant::now();
    limits.stopping(Some(StopBy {
        soft: now + std::time::Duration::from_secs(3600),
        hard: now + std::time::Duration::from_secs(7200),
        charge_per_item: std::time::Duration::from_secs(25 * 60),
    }))
}

/// `limits` whose hard deadline has passed.
pub fn overdue(limits: PageLimits) -> PageLimits {
    let past = std::time::Instant::now();
    limits.stopping(Some(StopBy::new(past, past)))
}

/// Checks the sizes of the pages of a [`paced`] read: each but the last
/// holds exactly [`PACED_ITEMS`], the last at most that and at least one.
pub fn check_paced(what: &str, pages: &[usize]) {
    let Some((last, full)) = pages.split_last() else { panic!("{what}: no page") };
    assert!(full.iter().all(|n| *n == PACED_ITEMS), "{what}: pages of {pages:?}, want {PACED_ITEMS} each");
    assert!((1..=PACED_ITEMS).contains(last), "{what}: a last page of {last} (pages {pages:?})");
}

/// Asserts `result` failed with UNAVAILABLE (a read past its deadline).
pub fn assert_gave_up<T: std::fmt::Debug>(what: &str, result: crate::Result<T>) {
    match result {
        Err(e) if e.kind() == prism_proto::error::ErrorKind::Unavailable => {}
        other => panic!("{what}: want UNAVAILABLE past the deadline, got {other:?}"),
    }
}

/// Pages a read may take before the suite calls it an endless loop.
const MAX_PAGES: usize = 100_000;

static SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// A key-value namespace of `subject` named after `case` and unique across
/// processes and runs, not yet provisioned.
pub fn namespace(subject: &Subject, case: &str) -> Namespace {
    namespace_of(subject, case, Abstraction::KeyValue)
}

/// A time-series namespace like [`namespace`], keeping events for
/// `retention` (`None`: forever).
pub fn ts_namespace(subject: &Subject, case: &str, retention: Option<Micros>) -> Namespace {
    let mut ns = namespace_of(subject, case, Abstraction::TimeSeries);
    if let (Some(retention), Some(policies)) = (retention, ns.spec.policies.as_mut()) {
        // `unwrap_or_default` names the protobuf Duration type for us: this
        // crate does not depend on prost-types itself.
        let mut duration = policies.retention.take().unwrap_or_default();
        duration.seconds = retention / 1_000_000;
        duration.nanos = i32::try_from(retention % 1_000_000 * 1_000).unwrap_or_default();
        policies.retention = Some(duration);
    }
    ns
}

/// A namespace of `abstraction` named after `case`, with the subject's
/// backend settings, not yet provisioned.
pub fn namespace_of(subject: &Subject, case: &str, abstraction: Abstraction) -> Namespace {
    let seq = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    let stamp = u64::try_from(now_micros()).unwrap_or_default();
    let mut part: String = case.chars().map(|c| if c == '_' { '-' } else { c }).take(36).collect();
    part = part.trim_end_matches('-').to_owned();
    Namespace {
        name: format!("conf/{part}-{stamp:x}-{seq}"),
        create_revision: stamp.max(1),
        spec: NamespaceSpec {
            abstraction: abstraction as i32,
            backend: subject.plugin.capabilities().backend as i32,
            backend_config: subject.backend_config.clone().map(Box::new),
            policies: Some(Box::new(Policies { max_item_size_bytes: MAX_ITEM_SIZE, ..Policies::default() })),
            ..NamespaceSpec::default()
        },
    }
}

/// `len` bytes that differ with `seed` and with position, so a misplaced
/// chunk or byte shows.
/// Events from a feed until `n` arrived; panics if it fails, ends or
/// delivers nothing for 30 s.
pub async fn from_feed(feed: &mut crate::ts::Feed, n: usize) -> Vec<Event> {
    use futures_util::StreamExt;
    let mut got = Vec::new();
    while got.len() < n {
        let batch = tokio::time::timeout(std::time::Duration::from_secs(30), feed.next())
            .await
            .expect("the feed delivers within 30 s")
            .expect("the feed goes on")
            .expect("the feed does not fail");
        got.extend(batch);
    }
    got
}

pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i.wrapping_mul(31) ^ (i >> 11)).wrapping_add(usize::from(seed)) as u8).collect()
}

/// `(key, value)` pairs as owned bytes.
pub fn pairs<K: AsRef<[u8]>, V: AsRef<[u8]>>(items: &[(K, V)]) -> Vec<(Vec<u8>, Vec<u8>)> {
    items.iter().map(|(k, v)| (k.as_ref().to_vec(), v.as_ref().to_vec())).collect()
}

pub fn put<K: AsRef<[u8]>, V: AsRef<[u8]>>(key: K, value: V) -> Mutation {
    Mutation::Put(NewItem { key: key.as_ref().to_vec(), value: value.as_ref().to_vec(), expires_at: None })
}

pub fn put_expiring<K: AsRef<[u8]>, V: AsRef<[u8]>>(key: K, value: V, expires_at: Micros) -> Mutation {
    Mutation::Put(NewItem { key: key.as_ref().to_vec(), value: value.as_ref().to_vec(), expires_at: Some(expires_at) })
}

pub fn delete<K: AsRef<[u8]>>(key: K) -> Mutation {
    Mutation::Delete(key.as_ref().to_vec())
}

pub fn item_bytes(item: &Item) -> u64 {
    (item.key.len() + item.value.len()) as u64
}

/// Checks one page of items against `limits`: a page that says more
/// follows has reached a bound (or, with a deadline, may have ended
/// early); no page went on after reaching one; an empty page is the last.
pub fn check_page(what: &str, items: &[&Item], limits: PageLimits, has_next: bool) {
    let sizes: Vec<u64> = items.iter().map(|i| item_bytes(i)).collect();
    check_page_sizes(what, &sizes, limits, has_next);
}

/// [`check_page`] for a page whose entries (items, events) count `sizes`
/// bytes each.
pub fn check_page_sizes(what: &str, sizes: &[u64], limits: PageLimits, has_next: bool) {
    let total: u64 = sizes.iter().sum();
    if let Some(max) = limits.max_items {
        assert!(sizes.len() <= max as usize, "{what}: {} entries on a page of at most {max}", sizes.len());
    }
    if has_next {
        assert!(!sizes.is_empty(), "{what}: an empty page says more follows");
    }
    // A page may also end early at its soft deadline ([`crate::pace`]).
    if has_next && limits.stop_by.is_none() {
        let full = total >= limits.max_bytes || limits.max_items.is_some_and(|m| sizes.len() >= m as usize);
        assert!(
            full,
            "{what}: a page of {total} bytes, {} entries says more follows but reached no bound",
            sizes.len()
        );
    }
    if let Some((last, before)) = sizes.split_last() {
        let before_bytes: u64 = before.iter().sum();
        assert!(
            before_bytes < limits.max_bytes,
            "{what}: the page went on after reaching {} bytes ({before_bytes} before its last entry of {last})",
            limits.max_bytes,
        );
    }
}

/// One case's namespace on one plugin.
///
/// The namespace is opened on first use and the handle kept for the whole
/// case, as the gateway keeps it with the namespace's snapshot entry: so
/// the cases also check that a handle keeps serving across deprovisioning
/// and provisioning again.
pub struct Case {
    pub plugin: Arc<dyn Plugin>,
    pub ns: Namespace,
    /// The case's clock: generation times are `base + offset`.
    pub base: Micros,
    kv: OnceLock<Arc<dyn KeyValueHandle>>,
    ts: OnceLock<Arc<dyn TimeSeriesHandle>>,
}

impl Case {
    /// A fresh key-value namespace named after `case`, provisioned.
    pub async fn provision(subject: &Subject, case: &str) -> Self {
        Self::provision_ns(subject, namespace(subject, case)).await
    }

    /// A fresh time-series namespace named after `case`, without
    /// retention, provisioned.
    pub async fn provision_ts(subject: &Subject, case: &str) -> Self {
        Self::provision_ts_retaining(subject, case, None).await
    }

    /// A fresh time-series namespace named after `case`, keeping events
    /// for `retention` (`None`: forever), provisioned.
    pub async fn provision_ts_retaining(subject: &Subject, case: &str, retention: Option<Micros>) -> Self {
        Self::provision_ns(subject, ts_namespace(subject, case, retention)).await
    }

    /// A case on `ns` (made by [`namespace_of`] or its kin), provisioned.
    pub async fn provision_ns(subject: &Subject, ns: Namespace) -> Self {
        let case = Self::unprovisioned(subject, ns);
        case.plugin.provision(&case.ns).await.expect("provision");
        case
    }

    /// Another fresh key-value namespace named after `case`, provisioned,
    /// on this case's clock: a migration's target, whose versions carry
    /// the source's generation times.
    pub async fn beside(&self, subject: &Subject, case: &str) -> Self {
        let mut other = Self::provision(subject, case).await;
        other.base = self.base;
        other
    }

    /// A case on `ns`, which the caller provisions (or not).
    pub fn unprovisioned(subject: &Subject, ns: Namespace) -> Self {
        Self::resume(subject.plugin.clone(), ns, now_micros())
    }

    /// A case on `ns` of `plugin` that an earlier case (of another plugin
    /// on the same storage, say) began at `base`.
    pub fn resume(plugin: Arc<dyn Plugin>, ns: Namespace, base: Micros) -> Self {
        Self { plugin, ns, base, kv: OnceLock::new(), ts: OnceLock::new() }
    }

    /// The namespace, opened as KeyValue.
    pub fn kv(&self) -> &Arc<dyn KeyValueHandle> {
        self.kv.get_or_init(|| {
            let kv = self.plugin.key_value().expect("a plugin under the KeyValue suite serves KeyValue");
            kv.open(&self.ns).expect("open the namespace")
        })
    }

    /// Reclaims at `now` in every namespace of the plugin but this one's,
    /// whose deletes are held (a migration runs).
    pub async fn reclaim_holding(&self, now: Micros) -> u64 {
        let kv = self.plugin.key_value().expect("a plugin under the KeyValue suite serves KeyValue");
        kv.reclaim(now, &[self.ns.name.as_str()].into_iter().collect()).await.expect("reclaim")
    }

    /// Reclaims expired items in every namespace of the plugin, at `now`.
    pub async fn reclaim_expired(&self, now: Micros) -> u64 {
        let kv = self.plugin.key_value().expect("a plugin under the KeyValue suite serves KeyValue");
        kv.reclaim(now, &Held::none()).await.expect("reclaim")
    }

    /// A write stamped `base + offset`, without a token.
    pub fn at(&self, offset: Micros) -> WriteStamp {
        WriteStamp { generation_time: self.base + offset, token: None }
    }

    /// A write stamped `base + offset` with `token`.
    pub fn token(&self, offset: Micros, token: &str) -> WriteStamp {
        WriteStamp { generation_time: self.base + offset, token: Some(token.to_owned()) }
    }

    pub async fn mutate(&self, id: &str, mutations: &[Mutation], stamp: &WriteStamp) {
        self.kv().mutate(id, mutations, stamp).await.expect("mutate");
    }

    /// Puts `items` into record `id` at `base + offset`.
    pub async fn put<K: AsRef<[u8]>, V: AsRef<[u8]>>(&self, id: &str, items: &[(K, V)], offset: Micros) {
        let mutations: Vec<Mutation> = items.iter().map(|(k, v)| put(k, v)).collect();
        self.mutate(id, &mutations, &self.at(offset)).await;
    }

    /// Every page of a get, checked, concatenated.
    pub async fn read(&self, id: &str, selector: &Selector, limits: PageLimits, now: Micros) -> Vec<Item> {
        let mut out: Vec<Item> = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        for _ in 0..MAX_PAGES {
            let page = self.kv().get(id, selector, after.as_deref(), limits, now).await.expect("get");
            let refs: Vec<&Item> = page.items.iter().collect();
            check_page("get", &refs, limits, page.next.is_some());
            for item in &page.items {
                if let Some(prev) = out.last() {
                    assert!(prev.key < item.key, "get: key {:?} came after {:?}", item.key, prev.key);
                }
                if let Some(after) = &after {
                    assert!(&item.key > after, "get: key {:?} is not after the cursor {after:?}", item.key);
                }
            }
            if let Some(next) = &page.next {
                let last = page.items.last().map(|i| &i.key);
                assert_eq!(Some(next), last, "get: next is not the last key returned");
            }
            out.extend(page.items);
            match page.next {
                Some(next) => after = Some(next),
                None => return out,
            }
        }
        panic!("get: no end after {MAX_PAGES} pages");
    }

    /// The record's `(key, value)` pairs as of the case's start.
    pub async fn entries(&self, id: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.entries_of(id, &Selector::All).await
    }

    pub async fn entries_of(&self, id: &str, selector: &Selector) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.read(id, selector, UNLIMITED, self.base).await.into_iter().map(|i| (i.key, i.value)).collect()
    }

    /// Every page of a scan, checked, flattened to `(id, item)`.
    pub async fn scan(&self, limits: PageLimits, now: Micros) -> Vec<(String, Item)> {
        let mut out: Vec<(String, Item)> = Vec::new();
        let mut after: Option<ScanCursor> = None;
        for _ in 0..MAX_PAGES {
            let page = self.kv().scan(after.as_ref(), limits, now).await.expect("scan");
            let refs: Vec<&Item> = page.records.iter().flat_map(|r| r.items.iter()).collect();
            check_page("scan", &refs, limits, page.next.is_some());
            for pair in page.records.windows(2) {
                assert!(
                    pair[0].id < pair[1].id,
                    "scan: record {:?} came after {:?} on one page",
                    pair[1].id,
                    pair[0].id
                );
            }
            for record in &page.records {
                assert!(!record.items.is_empty(), "scan: record {:?} came with no items", record.id);
                for item in &record.items {
                    if let Some((prev_id, prev)) = out.last() {
                        let ordered =
                            (prev_id.as_str(), prev.key.as_slice()) < (record.id.as_str(), item.key.as_slice());
                        assert!(
                            ordered,
                            "scan: ({:?}, {:?}) came after ({prev_id:?}, {:?})",
                            record.id, item.key, prev.key
                        );
                    }
                    out.push((record.id.clone(), item.clone()));
                }
            }
            if let Some(next) = &page.next {
                let last = out.last().map(|(id, item)| ScanCursor { id: id.clone(), key: item.key.clone() });
                assert_eq!(Some(next), last.as_ref(), "scan: next is not the last item returned");
            }
            match page.next {
                Some(next) => after = Some(next),
                None => return out,
            }
        }
        panic!("scan: no end after {MAX_PAGES} pages");
    }

    pub async fn storage(&self) -> u64 {
        self.kv().storage_bytes().await.expect("storage_bytes")
    }

    /// Every page of a versions scan, flattened to `(id, version)`;
    /// checks that pages keep their bounds and that the cursor moves on.
    pub async fn versions(&self, limits: PageLimits) -> Vec<(String, Version)> {
        let mut out = Vec::new();
        let mut after: Option<VersionCursor> = None;
        for _ in 0..MAX_PAGES {
            let page = self.kv().scan_versions(after.as_ref(), limits).await.expect("scan_versions");
            let sizes: Vec<u64> = page
                .records
                .iter()
                .flat_map(|r| r.versions.iter())
                .filter(|v| !matches!(v, Version::Range { .. }))
                .map(Version::bytes)
                .collect();
            if let Some(max) = limits.max_items {
                // Range deletes come a record at a time, so only the
                // items' pass is bounded by count exactly.
                let items = page
                    .records
                    .iter()
                    .flat_map(|r| r.versions.iter())
                    .filter(|v| !matches!(v, Version::Range { .. }))
                    .count();
                assert!(items <= max.max(1) as usize, "scan_versions: {items} items on a page of {max}");
            }
            assert!(
                sizes.iter().rev().skip(1).sum::<u64>() < limits.max_bytes.max(1) || sizes.len() <= 1,
                "scan_versions: a page of items went on past its byte bound"
            );
            for record in page.records {
                assert!(!record.versions.is_empty(), "scan_versions: record {:?} came with nothing", record.id);
                out.extend(record.versions.into_iter().map(|v| (record.id.clone(), v)));
            }
            match page.next {
                Some(next) => {
                    assert_ne!(after.as_ref(), Some(&next), "scan_versions: the cursor did not move");
                    after = Some(next);
                }
                None => return out,
            }
        }
        panic!("scan_versions: no end after {MAX_PAGES} pages");
    }

    /// Copies every version of this namespace into `target` a page at a
    /// time, as a migration's backfill does (`restore_records`).
    pub async fn copy_to(&self, target: &Case, limits: PageLimits) {
        self.copy(target, limits, true).await;
    }

    /// [`Self::copy_to`], restoring one record at a time (`restore`).
    pub async fn copy_record_by_record(&self, target: &Case, limits: PageLimits) {
        self.copy(target, limits, false).await;
    }

    async fn copy(&self, target: &Case, limits: PageLimits, together: bool) {
        let mut after: Option<VersionCursor> = None;
        for _ in 0..MAX_PAGES {
            let page = self.kv().scan_versions(after.as_ref(), limits).await.expect("scan_versions");
            if together {
                target.kv().restore_records(&page.records).await.expect("restore_records");
            } else {
                for record in &page.records {
                    target.kv().restore(&record.id, &record.versions).await.expect("restore");
                }
            }
            match page.next {
                Some(next) => after = Some(next),
                None => return,
            }
        }
        panic!("copy: no end after {MAX_PAGES} pages");
    }

    /// Deprovisions the namespace.
    pub async fn finish(self) {
        self.plugin.deprovision(&self.ns).await.expect("deprovision");
    }
}

/// The TimeSeries side of a case.
impl Case {
    /// The namespace, opened as TimeSeries.
    pub fn ts(&self) -> &Arc<dyn TimeSeriesHandle> {
        self.ts.get_or_init(|| {
            let ts = self.plugin.time_series().expect("a plugin under the TimeSeries suite serves TimeSeries");
            ts.open(&self.ns).expect("open the namespace")
        })
    }

    pub async fn write(&self, events: &[Event]) {
        self.ts().write(events).await.expect("write");
    }

    /// Every page of `query` at `now` (from its first page), checked,
    /// concatenated.
    pub async fn events(&self, query: Query, now: Micros) -> Vec<Event> {
        let ts = self.ts();
        let what = if query.series.is_some() { "read" } else { "search" };
        let limits = query.limits;
        let query = &query;
        all_pages(what, limits, |after| Box::pin(async move { ts.query(&Query { after, ..query.clone() }, now).await }))
            .await
    }

    /// [`Self::events`] of one series.
    pub async fn read_events(
        &self,
        series: &str,
        window: (Micros, Micros),
        limits: PageLimits,
        now: Micros,
    ) -> Vec<Event> {
        self.events(Query::series(series, window, limits), now).await
    }

    /// [`Self::events`] of every series matching `filter`.
    pub async fn search_events(
        &self,
        window: (Micros, Micros),
        filter: Option<&TagFilter>,
        limits: PageLimits,
        now: Micros,
    ) -> Vec<Event> {
        self.events(Query::search(filter.cloned(), window, limits), now).await
    }

    /// The whole series, as of the case's start.
    pub async fn series(&self, series: &str) -> Vec<Event> {
        self.read_events(series, self.around(), UNLIMITED, self.base).await
    }

    /// Every event matching `filter`, as of the case's start.
    pub async fn matching(&self, filter: Option<&TagFilter>) -> Vec<Event> {
        self.search_events(self.around(), filter, UNLIMITED, self.base).await
    }

    /// An interval holding every event the cases write: 60 days either
    /// side of the case's start.
    pub fn around(&self) -> (Micros, Micros) {
        (self.base - 60 * DAY, self.base + 60 * DAY)
    }
}

type PageFuture<'a> = Pin<Box<dyn Future<Output = crate::Result<EventsPage>> + Send + 'a>>;

/// Follows `fetch` from the first page to the last, checking each against
/// the pagination rules and the newest-first order, and returns the events
/// with each one's items sorted by key (their order within an event is not
/// part of the contract).
async fn all_pages<'a>(
    what: &str,
    limits: PageLimits,
    mut fetch: impl FnMut(Option<EventCursor>) -> PageFuture<'a>,
) -> Vec<Event> {
    let mut out: Vec<Event> = Vec::new();
    let mut after: Option<EventCursor> = None;
    for _ in 0..MAX_PAGES {
        let page = fetch(after.clone()).await.unwrap_or_else(|e| panic!("{what}: {e}"));
        let sizes: Vec<u64> = page.events.iter().map(event_bytes).collect();
        check_page_sizes(what, &sizes, limits, page.next.is_some());
        for event in &page.events {
            if let Some(after) = &after {
                assert!(
                    order(event) > (Reverse(after.event_time), after.time_series_id.as_str(), after.event_id.as_str()),
                    "{what}: {} is not after the cursor {after:?}",
                    describe(event)
                );
            }
            if let Some(prev) = out.last() {
                assert!(order(prev) < order(event), "{what}: {} came after {}", describe(event), describe(prev));
            }
            let mut event = event.clone();
            event.items.sort();
            out.push(event);
        }
        if let Some(next) = &page.next {
            assert_eq!(Some(next), page.events.last().map(cursor).as_ref(), "{what}: next is not the last event");
        }
        match page.next {
            Some(next) => after = Some(next),
            None => return out,
        }
    }
    panic!("{what}: no end after {MAX_PAGES} pages");
}

/// An event of `series` at `time` with text items and tags.
pub fn event(series: &str, time: Micros, id: &str, items: &[(&str, &str)], tags: &[(&str, &str)]) -> Event {
    Event {
        time_series_id: series.to_owned(),
        event_time: time,
        event_id: id.to_owned(),
        items: pairs(items),
        tags: tags.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect::<BTreeMap<_, _>>(),
    }
}

/// What pagination counts of an event: its items' keys and values and its
/// tags' keys and values.
pub fn event_bytes(event: &Event) -> u64 {
    let items: usize = event.items.iter().map(|(k, v)| k.len() + v.len()).sum();
    let tags: usize = event.tags.iter().map(|(k, v)| k.len() + v.len()).sum();
    (items + tags) as u64
}

/// The contract's order: newest first, then series, then event id.
pub fn order(event: &Event) -> (Reverse<Micros>, &str, &str) {
    (Reverse(event.event_time), event.time_series_id.as_str(), event.event_id.as_str())
}

/// `events` in the contract's order, each with its items sorted by key:
/// what a read or search of them returns.
pub fn newest_first(events: &[Event]) -> Vec<Event> {
    let mut sorted: Vec<Event> = events.to_vec();
    for event in &mut sorted {
        event.items.sort();
    }
    sorted.sort_by(|a, b| order(a).cmp(&order(b)));
    sorted
}

pub fn cursor(event: &Event) -> EventCursor {
    EventCursor {
        event_time: event.event_time,
        time_series_id: event.time_series_id.clone(),
        event_id: event.event_id.clone(),
    }
}

/// `series/id@time`, for messages.
pub fn describe(event: &Event) -> String {
    format!("{}/{}@{}", event.time_series_id, event.event_id, event.event_time)
}

/// Checks that the backend's declared abstractions are exactly the control
/// plane's static table, so the two cannot drift, and include
/// `abstraction`.
pub fn check_capabilities(plugin: &dyn Plugin, abstraction: Abstraction) {
    let caps = plugin.capabilities();
    assert_ne!(caps.backend, prism_proto::control::Backend::Unspecified, "a plugin names its backend");
    assert_eq!(caps.abstractions, prism_proto::capabilities::abstractions(caps.backend));
    assert!(caps.serves(abstraction), "a plugin under the {abstraction:?} suite declares it");
}

/// Asserts `result` failed with [`PluginError::NotProvisioned`].
pub fn assert_not_provisioned<T: std::fmt::Debug>(what: &str, result: crate::Result<T>) {
    match result {
        Err(PluginError::NotProvisioned(_)) => {}
        other => panic!("{what}: want NotProvisioned, got {other:?}"),
    }
}
