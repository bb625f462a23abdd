//! Tests of the TimeSeries store's internals: reclamation drops whole
//! partitions and trims exactly the one the cutoff falls in, the byte
//! counter matches the tables, and no id, time or page limit panics.

use std::collections::BTreeMap;

use prism_plugin_api::kv::{KeyValue, KeyValueHandle};
use prism_plugin_api::ts::Query;
use prism_plugin_api::{Plugin, PluginError};
use prism_proto::control::{NamespaceSpec, Policies};

use super::codec::PARTITION;
use super::*;
use crate::config::EmbeddedConfig;

const HOUR: Micros = 3_600_000_000;
const ALL: PageLimits = PageLimits::new(u64::MAX, None);

fn open() -> (EmbeddedPlugin, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temporary directory");
    (EmbeddedPlugin::open(EmbeddedConfig::new(dir.path())).expect("open"), dir)
}

/// A provisioned namespace keeping events for `retention` micros.
async fn namespace(plugin: &EmbeddedPlugin, name: &str, retention: Option<Micros>) -> Namespace {
    let mut policies = Policies::default();
    if let Some(r) = retention {
        let mut d = policies.retention.take().unwrap_or_default();
        d.seconds = r / 1_000_000;
        policies.retention = Some(d);
    }
    let ns = Namespace {
        name: name.into(),
        create_revision: 1,
        spec: NamespaceSpec { policies: Some(Box::new(policies)), ..NamespaceSpec::default() },
    };
    plugin.provision(&ns).await.expect("provision");
    ns
}

/// `ns` opened as TimeSeries.
fn ts(plugin: &EmbeddedPlugin, ns: &Namespace) -> Arc<dyn TimeSeriesHandle> {
    TimeSeries::open(plugin, ns).expect("open")
}

/// `ns` opened as KeyValue, for its byte count.
fn kv(plugin: &EmbeddedPlugin, ns: &Namespace) -> Arc<dyn KeyValueHandle> {
    KeyValue::open(plugin, ns).expect("open")
}

fn event(series: &str, time: Micros, id: &str) -> Event {
    Event {
        time_series_id: series.into(),
        event_time: time,
        event_id: id.into(),
        items: vec![(b"k".to_vec(), id.as_bytes().to_vec())],
        tags: BTreeMap::from([("t".to_owned(), "v".to_owned())]),
    }
}

async fn search_ids(plugin: &EmbeddedPlugin, ns: &Namespace, now: Micros) -> Vec<String> {
    let page = ts(plugin, ns).query(&Query::search(None, (i64::MIN, i64::MAX), ALL), now).await.expect("search");
    assert_eq!(page.next, None);
    page.events.into_iter().map(|e| e.event_id).collect()
}

/// Rows of a TimeSeries table under the namespace prefix.
fn rows<V: redb::Value + 'static>(plugin: &EmbeddedPlugin, table: TableDefinition<Bytes, V>, ns: &Namespace) -> usize {
    let prefix = Incarnation::of(ns).expect("valid name").prefix;
    let r = plugin.turns.store.db.begin_read().expect("read");
    let table = r.open_table(table).expect("table");
    let end = prefix_end(&prefix);
    let upper = end.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
    table.range::<&[u8]>((Bound::Included(prefix.as_slice()), upper)).expect("range").count()
}

/// What the byte counter should say: keys and values of the events and
/// index tables.
fn counted(plugin: &EmbeddedPlugin, ns: &Namespace) -> u64 {
    let prefix = Incarnation::of(ns).expect("valid name").prefix;
    let r = plugin.turns.store.db.begin_read().expect("read");
    let end = prefix_end(&prefix);
    let bounds = || (Bound::Included(prefix.as_slice()), end.as_deref().map_or(Bound::Unbounded, Bound::Excluded));
    let mut total = 0;
    for entry in r.open_table(EVENTS).expect("table").range::<&[u8]>(bounds()).expect("range") {
        let (k, v) = entry.expect("entry");
        total += (k.value().len() + v.value().len()) as u64;
    }
    for entry in r.open_table(INDEX).expect("table").range::<&[u8]>(bounds()).expect("range") {
        total += entry.expect("entry").0.value().len() as u64;
    }
    total
}

#[tokio::test]
async fn reclaim_drops_old_partitions_and_trims_the_cutoffs() {
    let (plugin, _dir) = open();
    let ns = namespace(&plugin, "t/reclaim", Some(HOUR)).await;
    // The cutoff falls 20 minutes into a partition.
    let cutoff = 1000 * PARTITION + PARTITION / 3;
    let now = cutoff + HOUR;
    let events = [
        event("a", cutoff - 3 * PARTITION, "three-back"),
        event("b", cutoff - 2 * PARTITION, "two-back"),
        event("a", cutoff - 2 * PARTITION + 1, "two-back-too"),
        event("a", cutoff - PARTITION / 3, "partition-start"),
        event("b", cutoff - 1, "just-past"),
        event("a", cutoff, "at-cutoff"),
        event("b", cutoff + 1, "after"),
        event("a", now, "now"),
    ];
    ts(&plugin, &ns).write(&events).await.expect("write");
    assert_eq!(rows(&plugin, PARTITIONS, &ns), 4);
    let stored = kv(&plugin, &ns).storage_bytes().await.expect("storage");
    assert_eq!(stored, counted(&plugin, &ns));

    assert_eq!(ts(&plugin, &ns).reclaim(now).await.expect("reclaim"), 5);
    assert_eq!(search_ids(&plugin, &ns, i64::MIN).await, ["now", "after", "at-cutoff"]);
    assert_eq!(rows(&plugin, PARTITIONS, &ns), 2, "the cutoff's partition and now's");
    assert_eq!(rows(&plugin, INDEX, &ns), 3);
    assert_eq!(rows(&plugin, EVENTS, &ns), 6, "a head and an item per event");
    assert_eq!(kv(&plugin, &ns).storage_bytes().await.expect("storage"), counted(&plugin, &ns));
    assert_eq!(ts(&plugin, &ns).reclaim(now).await.expect("reclaim"), 0);

    // The partition counts stay exact: trimming the last events of a
    // partition drops its entry.
    assert_eq!(ts(&plugin, &ns).reclaim(now + 2).await.expect("reclaim"), 2);
    assert_eq!(search_ids(&plugin, &ns, i64::MIN).await, ["now"]);
    assert_eq!(rows(&plugin, PARTITIONS, &ns), 1);
    assert_eq!(kv(&plugin, &ns).storage_bytes().await.expect("storage"), counted(&plugin, &ns));
}

#[tokio::test]
async fn trimming_works_through_many_batches() {
    let (plugin, _dir) = open();
    let ns = namespace(&plugin, "t/batches", Some(HOUR)).await;
    let cutoff = 10 * PARTITION + PARTITION / 2;
    let events: Vec<Event> = (0..25).map(|i| event(&format!("s{}", i % 4), cutoff - 1 - i, &format!("e{i}"))).collect();
    ts(&plugin, &ns).write(&events).await.expect("write");
    ts(&plugin, &ns).write(&[event("s", cutoff, "kept")]).await.expect("write");
    let inc = Incarnation::of(&ns).expect("valid name");
    let mut removed = 0;
    let mut rounds = 0;
    loop {
        let (n, more) = plugin.turns.store.trim_partition(&inc, cutoff, 4).expect("trim");
        removed += n;
        rounds += 1;
        if !more {
            break;
        }
    }
    assert_eq!((removed, rounds), (25, 7));
    assert_eq!(search_ids(&plugin, &ns, i64::MIN).await, ["kept"]);
    assert_eq!(kv(&plugin, &ns).storage_bytes().await.expect("storage"), counted(&plugin, &ns));
}

#[tokio::test]
async fn extreme_times_and_windows_do_not_panic() {
    let (plugin, _dir) = open();
    let ns = namespace(&plugin, "t/extremes", Some(HOUR)).await;
    let times = [i64::MIN, i64::MIN + 1, -PARTITION - 1, -1, 0, i64::MAX - 1, i64::MAX];
    let events: Vec<Event> = times.iter().enumerate().map(|(i, t)| event("s", *t, &format!("e{i}"))).collect();
    ts(&plugin, &ns).write(&events).await.expect("write");
    let read = async |start, end, now| ts(&plugin, &ns).query(&Query::series("s", (start, end), ALL), now).await;
    let ids = |page: EventsPage| page.events.into_iter().map(|e| e.event_id).collect::<Vec<_>>();
    // `now` at the very start: nothing is past retention.
    assert_eq!(ids(read(i64::MIN, i64::MAX, i64::MIN).await.expect("read")), ["e5", "e4", "e3", "e2", "e1", "e0"]);
    assert_eq!(ids(read(i64::MIN, i64::MIN + 1, i64::MIN).await.expect("read")), ["e0"]);
    assert_eq!(ids(read(i64::MAX, i64::MAX, i64::MIN).await.expect("read")), Vec::<String>::new());
    assert_eq!(ids(read(i64::MAX, i64::MIN, i64::MIN).await.expect("read")), Vec::<String>::new());
    assert_eq!(ids(read(i64::MIN, i64::MAX, i64::MAX).await.expect("read")), ["e5"]);
    let mut search_ids_at = Vec::new();
    for now in [i64::MIN, 0, i64::MAX] {
        search_ids_at.push(search_ids(&plugin, &ns, now).await.len());
    }
    // The event at i64::MAX is past every interval's (exclusive) end.
    assert_eq!(search_ids_at, [6, 3, 1]);
    ts(&plugin, &ns).reclaim(i64::MIN).await.expect("reclaim");
    assert_eq!(rows(&plugin, INDEX, &ns), 7);
    ts(&plugin, &ns).reclaim(i64::MAX).await.expect("reclaim");
    assert_eq!(rows(&plugin, INDEX, &ns), 2);
    assert_eq!(search_ids(&plugin, &ns, i64::MIN).await, ["e5"]);
    assert_eq!(kv(&plugin, &ns).storage_bytes().await.expect("storage"), counted(&plugin, &ns));
}

#[tokio::test]
async fn ids_with_nul_are_refused_and_long_ids_work() {
    let (plugin, _dir) = open();
    let ns = namespace(&plugin, "t/ids", None).await;
    let invalid = |r: prism_plugin_api::Result<()>| matches!(r, Err(PluginError::InvalidArgument { .. }));
    let good = event("s", 1, "fine");
    // One bad event refuses the whole write: nothing of it is stored.
    assert!(invalid(ts(&plugin, &ns).write(&[good.clone(), event("a\0b", 1, "e")]).await));
    assert!(invalid(ts(&plugin, &ns).write(&[event("s", 1, "e\0")]).await));
    assert_eq!(search_ids(&plugin, &ns, 0).await, Vec::<String>::new());
    let read = ts(&plugin, &ns).query(&Query::series("\0", (0, 10), ALL), 0).await;
    assert!(matches!(read, Err(PluginError::InvalidArgument { .. })), "{read:?}");
    let after = EventCursor { event_time: 1, time_series_id: "s\0".into(), event_id: "e".into() };
    let search =
        ts(&plugin, &ns).query(&Query { after: Some(after.clone()), ..Query::search(None, (0, 10), ALL) }, 0).await;
    assert!(matches!(search, Err(PluginError::InvalidArgument { .. })), "{search:?}");

    let long_series = "s".repeat(256);
    let long_id = "é".repeat(5000);
    let events = [event(&long_series, 1, &long_id), event(&long_series, 1, "short"), good];
    ts(&plugin, &ns).write(&events).await.expect("write");
    let page = ts(&plugin, &ns).query(&Query::series(&long_series, (0, 10), ALL), 0).await.expect("read");
    assert_eq!(page.events.len(), 2);
    assert_eq!(page.events[0].event_id, "short");
    assert_eq!(page.events[1].event_id, long_id);
}

#[tokio::test]
async fn zero_limits_still_make_progress() {
    let (plugin, _dir) = open();
    let ns = namespace(&plugin, "t/limits", None).await;
    ts(&plugin, &ns).write(&[event("s", 2, "a"), event("s", 1, "b")]).await.expect("write");
    let limits = PageLimits::new(0, Some(0));
    let page = ts(&plugin, &ns).query(&Query::series("s", (0, 10), limits), 0).await.expect("read");
    assert_eq!(page.events.len(), 1);
    assert_eq!(page.next.as_ref().map(|c| c.event_id.as_str()), Some("a"));
    let page = ts(&plugin, &ns)
        .query(&Query { after: page.next.clone(), ..Query::search(None, (0, 10), limits) }, 0)
        .await
        .expect("search");
    assert_eq!(page.events.len(), 1);
    assert_eq!(page.next, None);
}

#[tokio::test]
async fn damaged_rows_are_errors_not_panics() {
    let (plugin, _dir) = open();
    let ns = namespace(&plugin, "t/damaged", None).await;
    ts(&plugin, &ns).write(&[event("s", 1, "e")]).await.expect("write");
    let prefix = Incarnation::of(&ns).expect("valid name").prefix;
    let head = head_key(&event_key(&series_key(&partition_key(&prefix, 0), "s"), 1, "e"));
    let w = plugin.turns.store.db.begin_write().expect("write");
    {
        let mut events = w.open_table(EVENTS).expect("events");
        events.insert(head.as_slice(), b"\xff\xff".as_slice()).expect("insert");
    }
    w.commit().expect("commit");
    let read = ts(&plugin, &ns).query(&Query::series("s", (0, 10), ALL), 0).await;
    assert!(matches!(read, Err(PluginError::Internal { .. })), "{read:?}");
    let search = ts(&plugin, &ns).query(&Query::search(None, (0, 10), ALL), 0).await;
    assert!(matches!(search, Err(PluginError::Internal { .. })), "{search:?}");
}

#[test]
fn retention_reads_the_namespace_policy() {
    let with = |seconds: i64, nanos: i32| {
        let mut policies = Policies::default();
        let mut d = policies.retention.take().unwrap_or_default();
        (d.seconds, d.nanos) = (seconds, nanos);
        policies.retention = Some(d);
        Namespace {
            name: "t/r".into(),
            create_revision: 1,
            spec: NamespaceSpec { policies: Some(Box::new(policies)), ..NamespaceSpec::default() },
        }
    };
    assert_eq!(retention(&with(3600, 0)), Some(HOUR));
    assert_eq!(retention(&with(1, 500_000)), Some(1_000_500));
    assert_eq!(retention(&with(0, 10)), Some(1), "under a microsecond still retains");
    assert_eq!(retention(&with(0, 0)), None, "zero is forever");
    assert_eq!(retention(&with(-5, 0)), None);
    assert_eq!(retention(&with(i64::MAX, 999_999_999)), Some(i64::MAX));
    let unset = Namespace { name: "t/r".into(), create_revision: 1, spec: NamespaceSpec::default() };
    assert_eq!(retention(&unset), None);
}
