//! The TimeSeries conformance cases: SPEC §4 and the contract written in
//! [`crate::ts`], one `pub async fn` per case (only cases are `pub async
//! fn` here: a unit test checks each is listed in the macro).
//!
//! Reads compare whole events; the items of an event are compared sorted
//! by key, since their order within an event is not part of the contract.

use std::collections::BTreeMap;

use prism_proto::control::Abstraction;

use super::Subject;
use super::support::{
    Case, DAY, HOUR, MIB, MINUTE, UNLIMITED, assert_gave_up, assert_not_provisioned, check_capabilities, check_paced,
    cursor, event, event_bytes, from_feed, newest_first, overdue, paced, pattern, ts_namespace,
};
use crate::kv::PageLimits;
use crate::ts::{Event, EventCursor, Query, TagFilter};
use crate::{Micros, PluginError};

/// Every case's name, in the macro's order.
pub const CASES: &[&str] = crate::__time_series_cases!((names));

fn bytes_limit(max_bytes: u64) -> PageLimits {
    PageLimits::new(max_bytes, None)
}

/// One page of one series, as `ReadEventRecords` asks for it.
fn read(series: &str, window: (Micros, Micros), after: Option<&EventCursor>, limits: PageLimits) -> Query {
    Query { after: after.cloned(), ..Query::series(series, window, limits) }
}

/// One page of every series, as `SearchEventRecords` asks for it.
fn search(
    window: (Micros, Micros),
    filter: Option<&TagFilter>,
    after: Option<&EventCursor>,
    limits: PageLimits,
) -> Query {
    Query { after: after.cloned(), ..Query::search(filter.cloned(), window, limits) }
}

fn count_limit(max_items: u32) -> PageLimits {
    PageLimits::new(u64::MAX, Some(max_items))
}

fn eq(key: &str, value: &str) -> TagFilter {
    TagFilter::Equals { key: key.into(), value: value.into() }
}

fn any_of(key: &str, values: &[&str]) -> TagFilter {
    TagFilter::In { key: key.into(), values: values.iter().map(|v| (*v).to_owned()).collect() }
}

fn and(all: Vec<TagFilter>) -> TagFilter {
    TagFilter::And(all)
}

fn or(any: Vec<TagFilter>) -> TagFilter {
    TagFilter::Or(any)
}

/// The events' ids, in order.
fn ids(events: &[Event]) -> Vec<&str> {
    events.iter().map(|e| e.event_id.as_str()).collect()
}

/// `series/id` of each event, in order.
fn names(events: &[Event]) -> Vec<String> {
    events.iter().map(|e| format!("{}/{}", e.time_series_id, e.event_id)).collect()
}

/// An event with one item `k = v` and no tags.
fn plain(series: &str, time: Micros, id: &str) -> Event {
    event(series, time, id, &[("k", "v")], &[])
}

fn at(event_time: Micros, series: &str, id: &str) -> EventCursor {
    EventCursor { event_time, time_series_id: series.into(), event_id: id.into() }
}

/// The backend's declared abstractions are exactly the control plane's
/// static table, and include TIME_SERIES.
pub async fn capabilities_include_time_series(subject: Subject) {
    check_capabilities(subject.plugin.as_ref(), Abstraction::TimeSeries);
    assert!(subject.plugin.time_series().is_some(), "a plugin declaring TIME_SERIES serves it");
}

pub async fn write_then_read_one_event(subject: Subject) {
    let c = Case::provision_ts(&subject, "write_then_read_one_event").await;
    let written = [event(
        "sensor-1",
        c.base - MINUTE,
        "e1",
        &[("unit", "C"), ("temp", "21.5")],
        &[("site", "berlin"), ("kind", "temperature")],
    )];
    c.write(&written).await;
    assert_eq!(c.series("sensor-1").await, newest_first(&written));
    assert_eq!(c.matching(None).await, newest_first(&written));
    assert_eq!(c.series("sensor-2").await, vec![], "another series is empty");
    c.write(&[]).await;
    assert_eq!(c.series("sensor-1").await, newest_first(&written), "a write of nothing changes nothing");
    c.finish().await;
}

/// One series comes back newest first, across hours, whatever the write
/// order; equal times are ordered by event id, as bytes.
pub async fn read_is_newest_first(subject: Subject) {
    let c = Case::provision_ts(&subject, "read_is_newest_first").await;
    let mut written: Vec<Event> = (0..12)
        .map(|i| (i * 5) % 12)
        .map(|k| event("s", c.base - k * 25 * MINUTE, &format!("e{k:02}"), &[("n", &k.to_string())], &[]))
        .collect();
    let tie = c.base - 88 * MINUTE;
    for id in ["b", "a", "a1", "A", "a-"] {
        written.push(event("s", tie, id, &[("id", id)], &[]));
    }
    c.write(&written[..8]).await;
    c.write(&written[8..]).await;
    let got = c.series("s").await;
    assert_eq!(got, newest_first(&written));
    let at_tie: Vec<&str> = got.iter().filter(|e| e.event_time == tie).map(|e| e.event_id.as_str()).collect();
    assert_eq!(at_tie, ["A", "a", "a-", "a1", "b"]);
    assert_eq!(got.first().map(|e| e.event_id.as_str()), Some("e00"));
    assert_eq!(got.last().map(|e| e.event_id.as_str()), Some("e11"));
    c.finish().await;
}

/// A search orders equal times by series, then event id (as bytes); a
/// read of one series keeps the same order.
pub async fn search_breaks_ties_by_series_then_event_id(subject: Subject) {
    let c = Case::provision_ts(&subject, "search_breaks_ties_by_series_then_event_id").await;
    let t = c.base - 10 * MINUTE;
    let mut written = Vec::new();
    for series in ["b", "a", "ab", "a-", "B"] {
        for id in ["2", "10", "1"] {
            written.push(event(series, t, id, &[("v", &format!("{series}{id}"))], &[("at", "t")]));
        }
    }
    written.push(event("a", t + 1, "9", &[("v", "newer")], &[]));
    written.push(event("b", t - 1, "0", &[("v", "older")], &[]));
    c.write(&written).await;
    let got = c.matching(None).await;
    assert_eq!(got, newest_first(&written));
    let want = [
        "a/9", "B/1", "B/10", "B/2", "a/1", "a/10", "a/2", "a-/1", "a-/10", "a-/2", "ab/1", "ab/10", "ab/2", "b/1",
        "b/10", "b/2", "b/0",
    ];
    assert_eq!(names(&got), want);
    assert_eq!(names(&c.series("a").await), ["a/9", "a/1", "a/10", "a/2"]);
    assert_eq!(names(&c.matching(Some(&eq("at", "t"))).await), want[1..16]);
    c.finish().await;
}

/// `[start, end)`: an event at `start` is in, one at `end` is out, the
/// widest interval holds everything, an empty or inverted one nothing (or
/// is refused as invalid).
pub async fn interval_is_half_open(subject: Subject) {
    let c = Case::provision_ts(&subject, "interval_is_half_open").await;
    let t = c.base - HOUR;
    let mut written: Vec<Event> =
        (0..5).map(|i| event("s", t - 2 + i, &format!("e{i}"), &[("i", &i.to_string())], &[("in", "s")])).collect();
    written.push(event("other", t, "x", &[("i", "x")], &[]));
    c.write(&written).await;
    let all = ["e4", "e3", "e2", "e1", "e0"];
    let cases: Vec<((Micros, Micros), Vec<&str>)> = vec![
        ((t, t + 2), vec!["e3", "e2"]),
        ((t - 1, t), vec!["e1"]),
        ((t, t + 1), vec!["e2"]),
        ((t - 2, t + 3), all.to_vec()),
        ((t - 2, t + 2), all[1..].to_vec()),
        ((t, t), vec![]),
        ((t + 3, c.base + DAY), vec![]),
        ((i64::MIN, i64::MAX), all.to_vec()),
        ((i64::MIN, t), vec!["e1", "e0"]),
        ((t + 2, i64::MAX), vec!["e4"]),
    ];
    for (interval, want) in cases {
        let read = c.read_events("s", interval, UNLIMITED, c.base).await;
        assert_eq!(ids(&read), want, "read of {interval:?}");
        let found = c.search_events(interval, Some(&eq("in", "s")), UNLIMITED, c.base).await;
        assert_eq!(ids(&found), want, "search of {interval:?}");
    }
    let other = c.search_events((t, t + 1), None, UNLIMITED, c.base).await;
    assert_eq!(names(&other), ["other/x", "s/e2"]);

    let ts = c.ts();
    let inverted = ts.query(&read("s", (t + 2, t), None, UNLIMITED), c.base).await;
    match inverted {
        Ok(page) => assert!(page.events.is_empty() && page.next.is_none(), "an inverted interval selects nothing"),
        Err(PluginError::InvalidArgument { .. }) => {}
        Err(e) => panic!("an inverted read: want nothing or InvalidArgument, got {e:?}"),
    }
    match ts.query(&search((t + 2, t), None, None, UNLIMITED), c.base).await {
        Ok(page) => assert!(page.events.is_empty() && page.next.is_none(), "an inverted interval selects nothing"),
        Err(PluginError::InvalidArgument { .. }) => {}
        Err(e) => panic!("an inverted search: want nothing or InvalidArgument, got {e:?}"),
    }

    // Around a whole hour, where time-partitioned stores cut.
    let hour = c.base - c.base.rem_euclid(HOUR) - HOUR;
    let edges = [plain("edge", hour - 1, "before"), plain("edge", hour, "at"), plain("edge", hour + 1, "after")];
    c.write(&edges).await;
    let edge = |interval| c.read_events("edge", interval, UNLIMITED, c.base);
    assert_eq!(ids(&edge((hour, hour + 1)).await), ["at"]);
    assert_eq!(ids(&edge((hour - 1, hour)).await), ["before"]);
    assert_eq!(ids(&edge((hour - 1, hour + 2)).await), ["after", "at", "before"]);
    assert_eq!(ids(&edge((hour - HOUR, hour)).await), ["before"]);
    assert_eq!(ids(&edge((hour + 1, hour + HOUR)).await), ["after"]);
    c.finish().await;
}

/// Writing an event again — whatever its values — changes nothing: the
/// first write wins, also within one write and within one event.
pub async fn rewriting_an_event_changes_nothing(subject: Subject) {
    let c = Case::provision_ts(&subject, "rewriting_an_event_changes_nothing").await;
    let t = c.base - MINUTE;
    let first = event("s", t, "e", &[("a", "1"), ("b", "2")], &[("k", "v")]);
    c.write(std::slice::from_ref(&first)).await;
    c.write(std::slice::from_ref(&first)).await;
    c.write(&[event("s", t, "e", &[("a", "changed"), ("b", "changed")], &[("k", "v")])]).await;
    assert_eq!(c.series("s").await, newest_first(std::slice::from_ref(&first)));

    let twice = [
        event("s", t + 1, "d", &[("a", "first"), ("a", "second")], &[]),
        event("s", t + 1, "d", &[("a", "third")], &[]),
    ];
    c.write(&twice).await;
    let want = newest_first(&[event("s", t + 1, "d", &[("a", "first")], &[]), first]);
    assert_eq!(c.series("s").await, want);
    assert_eq!(c.matching(None).await, want);
    c.finish().await;
}

/// The same event (series, time, id) written with a new item key gains
/// that item and stays one event; the same id at another time or in
/// another series is another event.
pub async fn new_item_key_adds_to_the_event(subject: Subject) {
    let c = Case::provision_ts(&subject, "new_item_key_adds_to_the_event").await;
    let t = c.base - MINUTE;
    c.write(&[event("s", t, "e", &[("a", "1")], &[("k", "v")])]).await;
    c.write(&[event("s", t, "e", &[("a", "other"), ("b", "2")], &[("k", "v")])]).await;
    let want = vec![event("s", t, "e", &[("a", "1"), ("b", "2")], &[("k", "v")])];
    assert_eq!(c.series("s").await, want);
    assert_eq!(c.matching(Some(&eq("k", "v"))).await, want);
    c.write(&[event("s", t - 1, "e", &[("c", "3")], &[("k", "v")]), event("s2", t, "e", &[("d", "4")], &[])]).await;
    assert_eq!(names(&c.matching(None).await), ["s/e", "s2/e", "s/e"]);
    assert_eq!(c.series("s").await.len(), 2);
    c.finish().await;
}

/// Every item and every tag comes back, by read and by search (filtered
/// on one tag or not), on a page of any size.
pub async fn events_come_back_whole(subject: Subject) {
    let c = Case::provision_ts(&subject, "events_come_back_whole").await;
    let t = c.base - MINUTE;
    let mut items: Vec<(Vec<u8>, Vec<u8>)> =
        (0..40).map(|i| (format!("item-{i:02}").into_bytes(), pattern(i * 53 % 2000, i as u8))).collect();
    items.extend([(vec![], b"empty key".to_vec()), (b"\0".to_vec(), vec![]), (vec![0xff, 0], b"x".to_vec())]);
    let mut tags: BTreeMap<String, String> = (0..30).map(|i| (format!("tag-{i:02}"), format!("value-{i}"))).collect();
    tags.insert("empty".into(), String::new());
    tags.insert("ünï".into(), "cödé ✓".into());
    let whole = Event { time_series_id: "s".into(), event_time: t, event_id: "whole".into(), items, tags };
    let small = event("s", t - 1, "small", &[("k", "v")], &[("tag-00", "other")]);
    c.write(&[whole.clone(), small.clone()]).await;
    let want = newest_first(&[whole.clone(), small]);
    assert_eq!(c.series("s").await, want);
    assert_eq!(c.matching(None).await, want);
    assert_eq!(c.matching(Some(&eq("tag-07", "value-7"))).await, want[..1]);
    assert_eq!(c.matching(Some(&eq("ünï", "cödé ✓"))).await, want[..1]);
    assert_eq!(c.read_events("s", c.around(), bytes_limit(1), c.base).await, want);
    assert_eq!(c.search_events(c.around(), None, bytes_limit(100), c.base).await, want);
    c.finish().await;
}

/// Series are compared whole: one that another's id prefixes, or that
/// differs in case, is another series.
pub async fn same_ids_in_other_series_are_other_events(subject: Subject) {
    let c = Case::provision_ts(&subject, "same_ids_in_other_series_are_other_events").await;
    let t = c.base - MINUTE;
    let series = ["s", "s1", "s-", "S", "s s", "ss"];
    let written: Vec<Event> = series.iter().map(|s| event(s, t, "e", &[("from", s)], &[("series", s)])).collect();
    c.write(&written).await;
    for (s, e) in series.iter().zip(&written) {
        assert_eq!(c.series(s).await, newest_first(std::slice::from_ref(e)), "series {s:?}");
    }
    assert_eq!(c.series("s2").await, vec![]);
    assert_eq!(c.matching(None).await, newest_first(&written));
    c.finish().await;
}

/// Three series at interleaved times, tagged `host` a or b.
fn three_series(base: Micros) -> Vec<Event> {
    let mut written = Vec::new();
    for (n, s) in ["cpu", "disk", "net"].iter().enumerate() {
        for i in 0..6_i64 {
            let time = base - (i * 37 + n as i64 * 11) * MINUTE;
            let host = if i % 2 == 0 { "a" } else { "b" };
            written.push(event(s, time, &format!("{s}-{i}"), &[("v", &i.to_string())], &[("host", host)]));
        }
    }
    written
}

pub async fn search_without_filter_returns_every_event(subject: Subject) {
    let c = Case::provision_ts(&subject, "search_without_filter_returns_every_event").await;
    let written = three_series(c.base);
    c.write(&written).await;
    assert_eq!(c.matching(None).await, newest_first(&written));
    let (start, end) = (c.base - 120 * MINUTE, c.base - 30 * MINUTE);
    let want: Vec<Event> =
        newest_first(&written).into_iter().filter(|e| e.event_time >= start && e.event_time < end).collect();
    assert!(!want.is_empty() && want.len() < written.len());
    assert_eq!(c.search_events((start, end), None, UNLIMITED, c.base).await, want);
    assert_eq!(c.search_events((c.base + MINUTE, c.base + HOUR), None, UNLIMITED, c.base).await, vec![]);
    c.finish().await;
}

/// Eight events, newest first `e1` … `e8`, in two series, with the tags
/// the filter cases look at.
fn tagged(base: Micros) -> Vec<Event> {
    let spec: [(&str, &[(&str, &str)]); 8] = [
        ("e1", &[("env", "prod"), ("region", "eu"), ("team", "core")]),
        ("e2", &[("env", "prod"), ("region", "us")]),
        ("e3", &[("env", "dev"), ("region", "eu")]),
        ("e4", &[("env", "dev")]),
        ("e5", &[("env", "test"), ("region", "us"), ("team", "core")]),
        ("e6", &[]),
        ("e7", &[("env", ""), ("region", "eu")]),
        ("e8", &[("Env", "prod"), ("region", "EU")]),
    ];
    let series = |i: usize| if i.is_multiple_of(2) { "a" } else { "b" };
    spec.iter()
        .enumerate()
        .map(|(i, (id, tags))| event(series(i), base - i as i64 * MINUTE, id, &[("id", id)], tags))
        .collect()
}

/// Runs each filter over [`tagged`] events: the ids must be `want`, and
/// agree with [`TagFilter::matches`], on one page or many.
async fn check_filters(subject: &Subject, case: &str, filters: Vec<(TagFilter, Vec<&str>)>) {
    let c = Case::provision_ts(subject, case).await;
    let written = tagged(c.base - HOUR);
    c.write(&written).await;
    for (filter, want) in filters {
        let got = c.matching(Some(&filter)).await;
        assert_eq!(ids(&got), want, "{filter:?}");
        let by_contract: Vec<Event> = newest_first(&written).into_iter().filter(|e| filter.matches(&e.tags)).collect();
        assert_eq!(got, by_contract, "{filter:?} against TagFilter::matches");
        let paged = c.search_events(c.around(), Some(&filter), bytes_limit(1), c.base).await;
        assert_eq!(paged, got, "{filter:?} one event a page");
    }
    c.finish().await;
}

pub async fn search_filters_by_tag_equals(subject: Subject) {
    let filters = vec![
        (eq("env", "prod"), vec!["e1", "e2"]),
        (eq("region", "eu"), vec!["e1", "e3", "e7"]),
        (eq("team", "core"), vec!["e1", "e5"]),
        // An empty value matches a tag set to "", not a missing tag.
        (eq("env", ""), vec!["e7"]),
        // Keys and values are compared exactly.
        (eq("env", "Prod"), vec![]),
        (eq("Env", "prod"), vec!["e8"]),
        (eq("region", "EU"), vec!["e8"]),
        (eq("env", "prod "), vec![]),
    ];
    check_filters(&subject, "search_filters_by_tag_equals", filters).await;
}

pub async fn search_filters_by_tag_in(subject: Subject) {
    let filters = vec![
        (any_of("env", &["prod", "test"]), vec!["e1", "e2", "e5"]),
        (any_of("region", &["us"]), vec!["e2", "e5"]),
        (any_of("env", &["", "dev"]), vec!["e3", "e4", "e7"]),
        (any_of("env", &["staging"]), vec![]),
        (any_of("env", &[]), vec![]),
        (any_of("env", &["prod", "prod", "dev"]), vec!["e1", "e2", "e3", "e4"]),
    ];
    check_filters(&subject, "search_filters_by_tag_in", filters).await;
}

/// `and` and `or`, nested.
pub async fn search_combines_filters_with_and_or(subject: Subject) {
    let filters = vec![
        (and(vec![eq("env", "prod"), eq("region", "eu")]), vec!["e1"]),
        (or(vec![eq("env", "dev"), eq("team", "core")]), vec!["e1", "e3", "e4", "e5"]),
        (
            and(vec![any_of("env", &["prod", "dev", "test"]), or(vec![eq("region", "eu"), eq("team", "core")])]),
            vec!["e1", "e3", "e5"],
        ),
        (
            or(vec![
                and(vec![eq("env", "prod"), eq("region", "us")]),
                and(vec![eq("env", "dev"), or(vec![eq("region", "eu"), eq("region", "us")])]),
            ]),
            vec!["e2", "e3"],
        ),
        (and(vec![eq("env", "prod"), eq("env", "dev")]), vec![]),
        (or(vec![eq("nope", "x"), eq("team", "core")]), vec!["e1", "e5"]),
        (and(vec![or(vec![eq("region", "eu")])]), vec!["e1", "e3", "e7"]),
    ];
    check_filters(&subject, "search_combines_filters_with_and_or", filters).await;
}

/// A predicate on a tag an event lacks is false, even `= ""`.
pub async fn filter_on_a_missing_tag_matches_nothing(subject: Subject) {
    let filters = vec![
        (eq("missing", ""), vec![]),
        (eq("missing", "x"), vec![]),
        (any_of("missing", &["", "x"]), vec![]),
        (eq("team", ""), vec![]),
        (and(vec![eq("missing", "")]), vec![]),
        (or(vec![eq("missing", "x"), eq("team", "")]), vec![]),
        (and(vec![eq("env", "prod"), eq("team", "")]), vec![]),
    ];
    check_filters(&subject, "filter_on_a_missing_tag_matches_nothing", filters).await;
}

/// An event of a size that varies with `i`: one to three items, zero to
/// two tags.
fn sized_event(series: &str, time: Micros, i: usize) -> Event {
    let items: Vec<(Vec<u8>, Vec<u8>)> =
        (0..1 + i % 3).map(|j| (format!("k{j}").into_bytes(), pattern(1 + (i * 37 + j * 11) % 120, i as u8))).collect();
    let tags: BTreeMap<String, String> = (0..i % 3)
        .map(|j| (format!("t{j}"), "x".repeat(j * 5)))
        .chain([("parity".into(), (i % 2).to_string())])
        .collect();
    Event { time_series_id: series.into(), event_time: time, event_id: format!("e{i:02}"), items, tags }
}

/// Pages by bytes: each stops once it reaches the bound, with the event
/// that crossed it; together they are every event once, equal times
/// included.
pub async fn read_pages_by_bytes(subject: Subject) {
    let c = Case::provision_ts(&subject, "read_pages_by_bytes").await;
    // Three events at each time, so pages also end between equal times.
    let written: Vec<Event> = (0..40).map(|i| sized_event("s", c.base - (i as i64 / 3) * MINUTE, i)).collect();
    c.write(&written).await;
    let want = newest_first(&written);
    let total: u64 = written.iter().map(event_bytes).sum();
    for max_bytes in [1, 7, 50, 299, 300, total - 1, total, total + 1] {
        assert_eq!(c.read_events("s", c.around(), bytes_limit(max_bytes), c.base).await, want, "max_bytes {max_bytes}");
    }
    c.finish().await;
}

pub async fn search_pages_by_bytes(subject: Subject) {
    let c = Case::provision_ts(&subject, "search_pages_by_bytes").await;
    // Equal times across series, so pages also end between them.
    let written: Vec<Event> = ["a", "b", "c"]
        .iter()
        .flat_map(|s| (0..20).map(move |i| (s, i)))
        .map(|(s, i)| sized_event(s, c.base - (i as i64 / 2) * MINUTE, i))
        .collect();
    c.write(&written).await;
    let want = newest_first(&written);
    let even: Vec<Event> = want.iter().filter(|e| e.tags.get("parity").is_some_and(|p| p == "0")).cloned().collect();
    for limits in [bytes_limit(1), bytes_limit(64), bytes_limit(256), bytes_limit(1000), PageLimits::new(100, Some(4))]
    {
        assert_eq!(c.search_events(c.around(), None, limits, c.base).await, want, "{limits:?}");
        assert_eq!(c.search_events(c.around(), Some(&eq("parity", "0")), limits, c.base).await, even, "{limits:?}");
    }
    c.finish().await;
}

pub async fn pages_by_event_count(subject: Subject) {
    let c = Case::provision_ts(&subject, "pages_by_event_count").await;
    let mut written: Vec<Event> = (0..25).map(|i| sized_event("s", c.base - (i as i64 / 2) * MINUTE, i)).collect();
    written.extend((0..10).map(|i| sized_event("t", c.base - i as i64 * MINUTE, i)));
    c.write(&written).await;
    let all = newest_first(&written);
    let series: Vec<Event> = all.iter().filter(|e| e.time_series_id == "s").cloned().collect();
    for limits in [count_limit(7), count_limit(1), PageLimits::new(100, Some(3)), count_limit(25)] {
        assert_eq!(c.read_events("s", c.around(), limits, c.base).await, series, "{limits:?}");
        assert_eq!(c.search_events(c.around(), None, limits, c.base).await, all, "{limits:?}");
    }
    let (start, end) = c.around();
    let page = c.ts().query(&read("s", (start, end), None, count_limit(7)), c.base).await.expect("read");
    assert_eq!(page.events.len(), 7);
    assert_eq!(page.next, Some(cursor(&series[6])));
    let page = c.ts().query(&search((start, end), None, None, count_limit(7)), c.base).await.expect("search");
    assert_eq!(page.events.len(), 7);
    assert_eq!(page.next, Some(cursor(&all[6])));
    c.finish().await;
}

/// An event bigger than the page bound is never split: it comes alone;
/// after smaller ones, it is the one that crosses the bound.
pub async fn event_larger_than_page_comes_alone(subject: Subject) {
    let c = Case::provision_ts(&subject, "event_larger_than_page_comes_alone").await;
    let big: Vec<Event> = (0..5_i64)
        .map(|i| Event {
            time_series_id: "big".into(),
            event_time: c.base - i * MINUTE,
            event_id: format!("big{i}"),
            items: vec![(b"v".to_vec(), pattern(1000, i as u8))],
            tags: BTreeMap::new(),
        })
        .collect();
    c.write(&big).await;
    let (start, end) = c.around();
    let mut after: Option<EventCursor> = None;
    let mut pages = Vec::new();
    loop {
        let page =
            c.ts().query(&read("big", (start, end), after.as_ref(), bytes_limit(10)), c.base).await.expect("read");
        if !page.events.is_empty() {
            pages.push(ids(&page.events).join(","));
        }
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
        assert!(pages.len() <= big.len(), "more pages than events");
    }
    assert_eq!(pages, ["big0", "big1", "big2", "big3", "big4"]);

    // 10 + 10 bytes, then 1000: the third crosses a bound of 25.
    let t = c.base - HOUR;
    let mixed = [
        event("mixed", t, "a", &[("a", "123456789")], &[]),
        event("mixed", t - 1, "b", &[("b", "12345")], &[("t", "123")]),
        Event { items: vec![(b"c".to_vec(), pattern(999, 1))], ..event("mixed", t - 2, "c", &[], &[]) },
        event("mixed", t - 3, "d", &[("d", "123456789")], &[]),
    ];
    c.write(&mixed).await;
    let page = c.ts().query(&read("mixed", (start, end), None, bytes_limit(25)), c.base).await.expect("read");
    assert_eq!(ids(&page.events), ["a", "b", "c"]);
    assert_eq!(page.next, Some(cursor(&mixed[2])));
    let page = c.ts().query(&search((t - 3, t + 1), None, None, bytes_limit(25)), c.base).await.expect("search");
    assert_eq!(ids(&page.events), ["a", "b", "c"]);
    assert_eq!(page.next, Some(cursor(&mixed[2])));
    c.finish().await;
}

/// Past its soft deadline a page ends early, between events, with `next`
/// its last event, so the pages that follow yield every event once, in
/// order: reads and searches (with a filter too), each with events charged
/// so that three reach the deadline ([`crate::pace`]).
pub async fn pages_end_early_at_the_soft_deadline(subject: Subject) {
    let c = Case::provision_ts(&subject, "pages_end_early_at_the_soft_deadline").await;
    let mut written: Vec<Event> = (0..10).map(|i| sized_event("s", c.base - (i as i64 / 2) * MINUTE, i)).collect();
    written.extend((0..4).map(|i| sized_event("t", c.base - i as i64 * MINUTE, i)));
    c.write(&written).await;
    let all = newest_first(&written);
    let series: Vec<Event> = all.iter().filter(|e| e.time_series_id == "s").cloned().collect();
    let limits = paced(UNLIMITED);
    let (start, end) = c.around();
    for (what, query) in
        [("read", read("s", (start, end), None, limits)), ("search", search((start, end), None, None, limits))]
    {
        let mut sizes = Vec::new();
        let mut after: Option<EventCursor> = None;
        loop {
            let page = c.ts().query(&Query { after: after.clone(), ..query.clone() }, c.base).await.expect(what);
            sizes.push(page.events.len());
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        check_paced(what, &sizes);
    }
    assert_eq!(c.read_events("s", c.around(), limits, c.base).await, series);
    assert_eq!(c.search_events(c.around(), None, limits, c.base).await, all);
    let even = eq("parity", "0");
    let matching: Vec<Event> = all.iter().filter(|e| even.matches(&e.tags)).cloned().collect();
    assert_eq!(c.search_events(c.around(), Some(&even), limits, c.base).await, matching);
    c.finish().await;
}

/// A read or search whose hard deadline has passed gives up with
/// UNAVAILABLE: nobody waits for its answer.
pub async fn reads_past_the_hard_deadline_give_up(subject: Subject) {
    let c = Case::provision_ts(&subject, "reads_past_the_hard_deadline_give_up").await;
    c.write(&(0..3).map(|i| sized_event("s", c.base - i as i64 * MINUTE, i)).collect::<Vec<_>>()).await;
    let (start, end) = c.around();
    let late = overdue(UNLIMITED);
    assert_gave_up("read", c.ts().query(&read("s", (start, end), None, late), c.base).await);
    assert_gave_up("search", c.ts().query(&search((start, end), None, None, late), c.base).await);
    c.finish().await;
}

/// A page whose events all fit without reaching a bound says nothing
/// follows.
pub async fn last_page_has_no_next(subject: Subject) {
    let c = Case::provision_ts(&subject, "last_page_has_no_next").await;
    let t = c.base - MINUTE;
    let written = [
        event("s", t, "1", &[("k", "v")], &[("x", "1")]),
        event("s", t - 1, "2", &[("k", "v")], &[("x", "2")]),
        event("s", t - 2, "3", &[("k", "v")], &[("x", "1")]),
    ];
    c.write(&written).await;
    let roomy = PageLimits::new(1000, Some(10));
    let (start, end) = c.around();
    let ts = c.ts();
    let page = ts.query(&read("s", (start, end), None, roomy), c.base).await.expect("read");
    assert_eq!((page.events.len(), page.next), (3, None));
    let page = ts.query(&read("s", (start, end), Some(&cursor(&written[0])), roomy), c.base).await.expect("read");
    assert_eq!((page.events.len(), page.next), (2, None));
    let page = ts.query(&search((start, end), None, None, roomy), c.base).await.expect("search");
    assert_eq!((page.events.len(), page.next), (3, None));
    let page = ts.query(&search((start, end), Some(&eq("x", "1")), None, roomy), c.base).await.expect("search");
    assert_eq!((page.events.len(), page.next), (2, None));
    let page = ts.query(&read("empty", (start, end), None, roomy), c.base).await.expect("read");
    assert_eq!((page.events.len(), page.next), (0, None));
    c.finish().await;
}

/// `after` skips every event up to and including it in the contract's
/// order, whether or not an event is stored at the cursor.
pub async fn reads_continue_after_cursor(subject: Subject) {
    let c = Case::provision_ts(&subject, "reads_continue_after_cursor").await;
    let t = c.base - HOUR;
    let written: Vec<Event> = [("a", t, "1"), ("a", t, "2"), ("a", t, "3"), ("b", t, "1"), ("b", t, "2")]
        .into_iter()
        .chain([("c", t, "1"), ("a", t - 1, "1"), ("b", t - 1, "1")])
        .map(|(s, time, id)| plain(s, time, id))
        .collect();
    c.write(&written).await;
    let (start, end) = c.around();
    let ts = c.ts();
    let searches: Vec<(EventCursor, Vec<&str>)> = vec![
        (at(t, "b", "1"), vec!["b/2", "c/1", "a/1", "b/1"]),
        (at(t, "b", "0"), vec!["b/1", "b/2", "c/1", "a/1", "b/1"]),
        (at(t, "a", "9"), vec!["b/1", "b/2", "c/1", "a/1", "b/1"]),
        (at(t, "", ""), vec!["a/1", "a/2", "a/3", "b/1", "b/2", "c/1", "a/1", "b/1"]),
        (at(t + 5, "z", "z"), vec!["a/1", "a/2", "a/3", "b/1", "b/2", "c/1", "a/1", "b/1"]),
        (at(t, "c", "1"), vec!["a/1", "b/1"]),
        (at(t - 1, "b", "1"), vec![]),
        (at(t - 2, "", ""), vec![]),
    ];
    for (after, want) in searches {
        let page = ts.query(&search((start, end), None, Some(&after), UNLIMITED), c.base).await.expect("search");
        assert_eq!(names(&page.events), want, "search after {after:?}");
        assert_eq!(page.next, None);
    }
    let reads: Vec<(EventCursor, Vec<&str>)> = vec![
        (at(t, "a", "1"), vec!["a/2", "a/3", "a/1"]),
        (at(t, "a", "25"), vec!["a/3", "a/1"]),
        (at(t, "a", "3"), vec!["a/1"]),
        (at(t, "", "9"), vec!["a/1", "a/2", "a/3", "a/1"]),
        (at(t, "b", "0"), vec!["a/1"]),
        (at(t - 1, "a", "1"), vec![]),
    ];
    for (after, want) in reads {
        let page = ts.query(&read("a", (start, end), Some(&after), UNLIMITED), c.base).await.expect("read");
        assert_eq!(names(&page.events), want, "read after {after:?}");
        assert_eq!(page.next, None);
    }
    c.finish().await;
}

/// An export, page by page from no cursor to the page without a next,
/// returns every event within retention: folded in the order returned
/// (the first part of an item key wins), they are what a search of all
/// time serves. Pages hold at most `max_items` events. A cursor that is
/// not one is refused, naming `cursor`.
pub async fn export_walks_every_event_in_pages(subject: Subject) {
    let c = Case::provision_ts_retaining(&subject, "export_walks_every_event_in_pages", Some(DAY)).await;
    let t = c.base - HOUR;
    let written: Vec<Event> = (0..23)
        .map(|i| {
            let site = if i % 2 == 0 { "a" } else { "b" };
            event(
                &format!("s{}", i % 4),
                t - i * 7 * MINUTE,
                &format!("e{i}"),
                &[("k", &format!("v{i}"))],
                &[("site", site)],
            )
        })
        .collect();
    for batch in written.chunks(6) {
        c.write(batch).await;
    }
    // Written again (nothing changes), written with another item (added),
    // and past retention (never exported).
    c.write(&[written[3].clone(), event("s1", t - 7 * MINUTE, "e1", &[("extra", "x")], &[("site", "b")])]).await;
    c.write(&[plain("s0", c.base - 2 * DAY, "old")]).await;
    let ts = c.ts();
    let mut folded: BTreeMap<(Micros, String, String), Event> = BTreeMap::new();
    let (mut after, mut pages) = (None::<Vec<u8>>, 0);
    loop {
        let page = ts.export(after.as_deref(), count_limit(5), c.base).await.expect("export");
        assert!(page.events.len() <= 5, "a page of {} events", page.events.len());
        pages += 1;
        for part in page.events {
            let key = (part.event_time, part.time_series_id.clone(), part.event_id.clone());
            match folded.get_mut(&key) {
                Some(event) => {
                    for (k, v) in part.items {
                        if !event.items.iter().any(|(have, _)| *have == k) {
                            event.items.push((k, v));
                        }
                    }
                }
                None => {
                    folded.insert(key, part);
                }
            }
        }
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
        assert!(pages < 100, "the export ends");
    }
    assert!(pages >= 5, "23 events, five a page: {pages} pages");
    let exported: Vec<Event> = folded.into_values().collect();
    assert_eq!(newest_first(&exported), c.matching(None).await, "the export holds what a search serves");
    let refused = ts.export(Some(b"\xffnot a cursor"), count_limit(5), c.base).await.expect_err("a bad cursor");
    assert_eq!(refused.kind(), prism_proto::error::ErrorKind::InvalidArgument, "{refused:?}");
    assert!(format!("{:?}", refused.report()).contains("cursor"), "{refused:?}");
    c.finish().await;
}

/// Events of megabytes come back byte for byte, whole, on pages of any
/// size.
pub async fn large_events_round_trip(subject: Subject) {
    let c = Case::provision_ts(&subject, "large_events_round_trip").await;
    let t = c.base - MINUTE;
    let tags: BTreeMap<String, String> = [("size".to_owned(), "large".to_owned())].into();
    let one = Event {
        time_series_id: "s".into(),
        event_time: t,
        event_id: "one".into(),
        items: vec![(b"big".to_vec(), pattern(3 * MIB / 2, 1)), (b"small".to_vec(), b"x".to_vec())],
        tags: tags.clone(),
    };
    let parts = Event {
        event_id: "parts".into(),
        event_time: t - 1,
        items: (0..3).map(|i| (format!("part{i}").into_bytes(), pattern(MIB / 2, i))).collect(),
        ..one.clone()
    };
    c.write(std::slice::from_ref(&one)).await;
    c.write(std::slice::from_ref(&parts)).await;
    let want = newest_first(&[one, parts]);
    for limits in [UNLIMITED, bytes_limit(1), bytes_limit(MIB as u64)] {
        let got = c.read_events("s", c.around(), limits, c.base).await;
        assert!(got == want, "{limits:?}: the read differs from what was written");
        let got = c.search_events(c.around(), Some(&eq("size", "large")), limits, c.base).await;
        assert!(got == want, "{limits:?}: the search differs from what was written");
    }
    c.finish().await;
}

/// Writers racing to write one event: it is stored once, each item with
/// one writer's value, and gains every writer's new items.
pub async fn concurrent_writes_of_one_event_store_it_once(subject: Subject) {
    const WRITERS: i64 = 8;
    let c = Case::provision_ts(&subject, "concurrent_writes_of_one_event_store_it_once").await;
    let t = c.base - MINUTE;
    let mut tasks = Vec::new();
    for i in 0..WRITERS {
        let n = i.to_string();
        let events = vec![
            event("s", t, "shared", &[("k", &n), (&format!("own-{i}"), "x")], &[("tag", "v")]),
            event("s", t - 1 - i, &format!("own-{i}"), &[("k", &n)], &[]),
        ];
        let ts = c.ts().clone();
        tasks.push(tokio::spawn(async move { ts.write(&events).await }));
    }
    for task in tasks {
        task.await.expect("writer task").expect("write");
    }
    let got = c.series("s").await;
    assert_eq!(got.len(), 1 + WRITERS as usize);
    let shared = &got[0];
    assert_eq!(shared.event_id, "shared");
    let values: Vec<&Vec<u8>> = shared.items.iter().filter(|(k, _)| k == b"k").map(|(_, v)| v).collect();
    assert_eq!(values.len(), 1, "one value for the item every writer wrote");
    let writers: Vec<Vec<u8>> = (0..WRITERS).map(|i| i.to_string().into_bytes()).collect();
    assert!(writers.contains(values[0]), "the value is one writer's");
    let own: Vec<String> =
        shared.items.iter().filter(|(k, _)| k != b"k").map(|(k, _)| String::from_utf8_lossy(k).into_owned()).collect();
    let want: Vec<String> = (0..WRITERS).map(|i| format!("own-{i}")).collect();
    assert_eq!(own, want, "each writer's own item is there");
    assert_eq!(c.series("s").await, got, "reads are stable");
    c.finish().await;
}

/// With a retention `r`, an event with `event_time < now - r` is never
/// returned, by `now` as the caller gives it.
pub async fn retention_hides_events_past_it(subject: Subject) {
    let c = Case::provision_ts_retaining(&subject, "retention_hides_events_past_it", Some(HOUR)).await;
    let now = c.base;
    let written = [
        plain("s", now - 3 * HOUR, "old"),
        plain("s", now - HOUR - 1, "just-past"),
        plain("s", now - HOUR, "at-cutoff"),
        plain("s", now - 10 * MINUTE, "recent"),
        plain("t", now - 2 * HOUR, "other-old"),
        plain("t", now, "now"),
    ];
    c.write(&written).await;
    let read = |limits, now| c.read_events("s", c.around(), limits, now);
    let search = |limits, now| c.search_events(c.around(), None, limits, now);
    assert_eq!(ids(&read(UNLIMITED, now).await), ["recent", "at-cutoff"]);
    assert_eq!(ids(&read(bytes_limit(1), now).await), ["recent", "at-cutoff"]);
    assert_eq!(ids(&search(UNLIMITED, now).await), ["now", "recent", "at-cutoff"]);
    assert_eq!(ids(&search(count_limit(1), now).await), ["now", "recent", "at-cutoff"]);
    // An interval reaching past the cutoff is cut to it.
    let cut = c.read_events("s", (now - 5 * HOUR, now - 30 * MINUTE), UNLIMITED, now).await;
    assert_eq!(ids(&cut), ["at-cutoff"]);
    // Two hours earlier, more is within retention.
    assert_eq!(ids(&read(UNLIMITED, now - 2 * HOUR).await), ["recent", "at-cutoff", "just-past", "old"]);
    assert_eq!(search(UNLIMITED, now - 2 * HOUR).await, newest_first(&written));
    // Two hours later, nothing is.
    assert_eq!(read(UNLIMITED, now + 2 * HOUR).await, vec![]);
    assert_eq!(ids(&search(UNLIMITED, now + 2 * HOUR).await), Vec::<&str>::new());
    c.finish().await;
}

/// `reclaim(now)` removes events past retention, so a later read with an
/// older clock does not see them either; events within retention stay.
/// (Only events more than a day past the cutoff are checked gone: a
/// backend may keep the rest of a partially expired partition a while.)
pub async fn reclaim_removes_events_past_retention(subject: Subject) {
    let c = Case::provision_ts_retaining(&subject, "reclaim_removes_events_past_retention", Some(HOUR)).await;
    let now = c.base;
    let old = [
        plain("s", now - 3 * DAY, "old-1"),
        plain("t", now - 3 * DAY - 5 * HOUR, "old-2"),
        plain("s", now - 2 * DAY, "old-3"),
    ];
    let kept =
        [plain("s", now - 30 * MINUTE, "half-hour"), plain("s", now - 10 * MINUTE, "recent"), plain("t", now, "now")];
    c.write(&old).await;
    c.write(&kept).await;
    let early = now - 4 * DAY;
    let search = || c.search_events(c.around(), None, UNLIMITED, early);
    assert_eq!(ids(&search().await), ["now", "recent", "half-hour", "old-3", "old-1", "old-2"]);
    c.ts().reclaim(now).await.expect("reclaim");
    assert_eq!(ids(&search().await), ["now", "recent", "half-hour"]);
    assert_eq!(ids(&c.read_events("s", c.around(), UNLIMITED, early).await), ["recent", "half-hour"]);
    assert_eq!(c.read_events("t", c.around(), bytes_limit(1), now).await, newest_first(&kept[2..]));
    c.ts().reclaim(now).await.expect("reclaim again");
    assert_eq!(search().await, newest_first(&kept));
    // The store takes new events after reclaiming.
    c.write(&[plain("s", now - MINUTE, "later")]).await;
    assert_eq!(ids(&c.read_events("s", c.around(), UNLIMITED, now).await), ["later", "recent", "half-hour"]);
    c.finish().await;
}

/// Without retention — unset or zero — nothing is hidden or reclaimed,
/// however old.
pub async fn no_retention_keeps_everything(subject: Subject) {
    for retention in [None, Some(0)] {
        let c = Case::provision_ts_retaining(&subject, "no_retention_keeps_everything", retention).await;
        let now = c.base;
        let written =
            [plain("s", now - 400 * DAY, "ancient"), plain("s", now - 3 * DAY, "old"), plain("t", now, "now")];
        c.write(&written).await;
        let window = (now - 500 * DAY, now + DAY);
        assert_eq!(c.search_events(window, None, UNLIMITED, now).await, newest_first(&written), "{retention:?}");
        c.ts().reclaim(now).await.expect("reclaim");
        c.ts().reclaim(now + 1000 * DAY).await.expect("reclaim");
        assert_eq!(
            c.search_events(window, None, UNLIMITED, now + 1000 * DAY).await,
            newest_first(&written),
            "{retention:?}"
        );
        assert_eq!(ids(&c.read_events("s", window, UNLIMITED, now).await), ["old", "ancient"], "{retention:?}");
        c.finish().await;
    }
}

/// Same series and event ids in two namespaces are two events.
pub async fn namespaces_are_isolated(subject: Subject) {
    let a = Case::provision_ts(&subject, "namespaces_are_isolated").await;
    let b = Case::provision_ts(&subject, "namespaces_are_isolated").await;
    assert_ne!(a.ns.name, b.ns.name);
    let t = a.base - MINUTE;
    let in_a = [event("s", t, "e", &[("k", "from-a")], &[("ns", "a")]), event("only-a", t, "e", &[("k", "a")], &[])];
    let in_b = [event("s", t, "e", &[("k", "from-b")], &[("ns", "b")])];
    a.write(&in_a).await;
    b.write(&in_b).await;
    assert_eq!(a.series("s").await, newest_first(&in_a[..1]));
    assert_eq!(b.series("s").await, newest_first(&in_b));
    assert_eq!(b.matching(None).await, newest_first(&in_b));
    assert_eq!(b.series("only-a").await, vec![]);
    assert_eq!(b.matching(Some(&eq("ns", "a"))).await, vec![]);
    a.finish().await;
    assert_eq!(b.matching(None).await, newest_first(&in_b), "deprovisioning one namespace keeps the other");
    b.finish().await;
}

/// A namespace deleted and created again (same name, new create
/// revision) sees nothing of the old incarnation, and the old events do
/// not make the same identities no-ops.
pub async fn recreated_namespace_starts_empty(subject: Subject) {
    let first = Case::provision_ts(&subject, "recreated_namespace_starts_empty").await;
    let t = first.base - MINUTE;
    first.write(&[event("s", t, "e", &[("k", "old")], &[("v", "old")])]).await;
    first.plugin.deprovision(&first.ns).await.expect("deprovision");

    let mut ns = first.ns.clone();
    ns.create_revision += 1;
    let second = Case::provision_ns(&subject, ns.clone()).await;
    assert_eq!(second.series("s").await, vec![]);
    assert_eq!(second.matching(None).await, vec![]);
    let new = [event("s", t, "e", &[("k", "new")], &[("v", "new")])];
    second.write(&new).await;
    assert_eq!(second.series("s").await, newest_first(&new));

    // Created again without the previous one being deprovisioned first.
    ns.create_revision += 1;
    let third = Case::provision_ns(&subject, ns).await;
    assert_eq!(third.series("s").await, vec![]);
    assert_eq!(third.matching(None).await, vec![]);
    third.finish().await;
    second.finish().await;
}

/// Deprovisioning removes every event; it is idempotent, and a namespace
/// provisioned again starts empty.
pub async fn deprovision_removes_everything(subject: Subject) {
    let c = Case::provision_ts(&subject, "deprovision_removes_everything").await;
    let t = c.base - MINUTE;
    let written = [
        event("s", t, "e", &[("k", "v"), ("big", "x".repeat(100_000).as_str())], &[("tag", "v")]),
        plain("s", t - 2 * DAY, "old"),
        plain("u", t - 3 * HOUR, "e"),
    ];
    c.write(&written).await;
    c.plugin.deprovision(&c.ns).await.expect("deprovision");

    let ts = c.ts();
    let (start, end) = c.around();
    assert_not_provisioned("read", ts.query(&read("s", (start, end), None, UNLIMITED), c.base).await);
    assert_not_provisioned("search", ts.query(&search((start, end), None, None, UNLIMITED), c.base).await);
    assert_not_provisioned("write", ts.write(&written).await);
    assert_not_provisioned("reclaim", ts.reclaim(c.base).await);
    c.plugin.deprovision(&c.ns).await.expect("deprovision is idempotent");

    c.plugin.provision(&c.ns).await.expect("provision again");
    assert_eq!(c.matching(None).await, vec![]);
    let again = [event("s", t, "e", &[("k", "after")], &[])];
    c.write(&again).await;
    assert_eq!(c.series("s").await, newest_first(&again), "the old event was forgotten");
    c.finish().await;
}

pub async fn provision_is_idempotent(subject: Subject) {
    let c = Case::provision_ts(&subject, "provision_is_idempotent").await;
    c.plugin.provision(&c.ns).await.expect("provision twice");
    let written = [plain("s", c.base - MINUTE, "e")];
    c.write(&written).await;
    c.plugin.provision(&c.ns).await.expect("provision with data");
    assert_eq!(c.series("s").await, newest_first(&written), "provisioning again keeps the events");
    c.finish().await;
}

pub async fn unprovisioned_namespace_is_refused(subject: Subject) {
    let ns = ts_namespace(&subject, "unprovisioned_namespace_is_refused", Some(HOUR));
    let c = Case::unprovisioned(&subject, ns);
    let ts = c.ts();
    let (start, end) = c.around();
    let written = [plain("s", c.base, "e")];
    assert_not_provisioned("write", ts.write(&written).await);
    assert_not_provisioned("read", ts.query(&read("s", (start, end), None, UNLIMITED), c.base).await);
    assert_not_provisioned(
        "search",
        ts.query(&search((start, end), Some(&eq("k", "v")), None, UNLIMITED), c.base).await,
    );
    assert_not_provisioned("reclaim", ts.reclaim(c.base).await);
    c.plugin.deprovision(&c.ns).await.expect("deprovisioning what never was succeeds");
}

/// A backend that follows its writes ([`crate::ts::TimeSeriesHandle::follows`])
/// feeds every event written after `follow` returned — through this
/// handle or another opening of the namespace — each whole (items
/// compared sorted), in write order for one series, and nothing written
/// before. One that does not refuses to follow.
pub async fn a_feed_sees_what_is_written_after_it_started(subject: Subject) {
    let c = Case::provision_ts(&subject, "a_feed_sees_what_is_written_after_it_started").await;
    let t = c.base - MINUTE;
    c.write(&[event("s", t, "before", &[("k", "v")], &[])]).await;
    if !c.ts().follows() {
        assert!(c.ts().follow().await.is_err(), "a backend that does not follow refuses to");
        c.finish().await;
        return;
    }
    let mut feed = c.ts().follow().await.expect("follow");
    let here = event("s", t + 1, "here", &[("b", "2"), ("a", "1")], &[("site", "x")]);
    c.write(std::slice::from_ref(&here)).await;
    let other = subject.plugin.time_series().expect("time series").open(&c.ns).expect("open again");
    let there = event("s", t + 2, "there", &[("k", "2")], &[]);
    other.write(std::slice::from_ref(&there)).await.expect("write through another opening");
    let mut got = from_feed(&mut feed, 2).await;
    for e in &mut got {
        e.items.sort();
    }
    let mut want = vec![here, there];
    for e in &mut want {
        e.items.sort();
    }
    assert_eq!(got, want);
    drop(feed);
    c.finish().await;
}
