//! The KeyValue conformance cases: SPEC §3 and the contract written in
//! [`crate::kv`], one `pub async fn` per case (only cases are `pub async
//! fn` here: a unit test checks each is listed in the macro).

use prism_proto::control::Abstraction;

use super::Subject;
use super::support::{
    Case, DAY, HOUR, KIB, MIB, UNLIMITED, assert_gave_up, assert_not_provisioned, check_capabilities, check_paced,
    delete, namespace, overdue, paced, pairs, pattern, put, put_expiring,
};
use crate::kv::{Item, KeyRange, Mutation, PageLimits, Selector, Version};
use crate::{PluginError, now_micros};

/// Every case's name, in the macro's order.
pub const CASES: &[&str] = crate::__key_value_cases!((names));

fn range(start: &str, end: Option<&str>) -> KeyRange {
    KeyRange { start: start.as_bytes().to_vec(), end: end.map(|e| e.as_bytes().to_vec()) }
}

fn keys(keys: &[&str]) -> Selector {
    Selector::Keys(keys.iter().map(|k| k.as_bytes().to_vec()).collect())
}

fn bytes_limit(max_bytes: u64) -> PageLimits {
    PageLimits::new(max_bytes, None)
}

fn key_names(entries: &[(Vec<u8>, Vec<u8>)]) -> Vec<String> {
    entries.iter().map(|(k, _)| String::from_utf8_lossy(k).into_owned()).collect()
}

/// The backend's declared abstractions are exactly the control plane's
/// static table, so the two cannot drift.
pub async fn capabilities_match_static_table(subject: Subject) {
    check_capabilities(subject.plugin.as_ref(), Abstraction::KeyValue);
    assert!(subject.plugin.key_value().is_some(), "a plugin declaring KEY_VALUE serves it");
}

pub async fn put_then_get_one_item(subject: Subject) {
    let c = Case::provision(&subject, "put_then_get_one_item").await;
    c.put("user-1", &[("name", "ada")], 1).await;
    let items = c.read("user-1", &Selector::All, UNLIMITED, c.base).await;
    assert_eq!(items, vec![Item { key: b"name".to_vec(), value: b"ada".to_vec(), expires_at: None }]);
    c.finish().await;
}

/// Keys are compared as bytes: NUL and 0xff included, a prefix first.
pub async fn record_items_come_back_in_key_order(subject: Subject) {
    let c = Case::provision(&subject, "record_items_come_back_in_key_order").await;
    let odd: Vec<&[u8]> = vec![b"m", b"a", b"\xff", b"\x00", b"\x00\x00", b"", b"a\x00", b"Z", b"zz", b"\x7f\xff"];
    let first: Vec<Mutation> = odd[..5].iter().map(|k| put(k, *k)).collect();
    let second: Vec<Mutation> = odd[5..].iter().map(|k| put(k, *k)).collect();
    c.mutate("r", &first, &c.at(1)).await;
    c.mutate("r", &second, &c.at(2)).await;
    let mut want: Vec<(Vec<u8>, Vec<u8>)> = odd.iter().map(|k| (k.to_vec(), k.to_vec())).collect();
    want.sort();
    assert_eq!(c.entries("r").await, want);

    // Many keys written out of order.
    let many: Vec<Mutation> =
        (0..100).map(|i| (i * 37) % 100).map(|i| put(format!("k{i:03}"), format!("v{i}"))).collect();
    c.mutate("many", &many, &c.at(1)).await;
    let want: Vec<(Vec<u8>, Vec<u8>)> =
        (0..100).map(|i| (format!("k{i:03}").into_bytes(), format!("v{i}").into_bytes())).collect();
    assert_eq!(c.entries("many").await, want);
    c.finish().await;
}

/// A plain key-value pair is a record with one empty key.
pub async fn empty_key_is_a_plain_pair(subject: Subject) {
    let c = Case::provision(&subject, "empty_key_is_a_plain_pair").await;
    c.put("config", &[("", "v1")], 1).await;
    assert_eq!(c.entries("config").await, pairs(&[("", "v1")]));
    assert_eq!(c.entries_of("config", &keys(&[""])).await, pairs(&[("", "v1")]));
    c.put("config", &[("", "v2")], 2).await;
    assert_eq!(c.entries("config").await, pairs(&[("", "v2")]));
    c.mutate("config", &[delete("")], &c.at(3)).await;
    assert_eq!(c.entries("config").await, vec![]);
    c.finish().await;
}

pub async fn empty_value_is_stored(subject: Subject) {
    let c = Case::provision(&subject, "empty_value_is_stored").await;
    c.put("r", &[("k", "")], 1).await;
    assert_eq!(c.entries("r").await, pairs(&[("k", "")]));
    assert_eq!(c.entries_of("r", &keys(&["k"])).await, pairs(&[("k", "")]));
    c.finish().await;
}

pub async fn upsert_overwrites(subject: Subject) {
    let c = Case::provision(&subject, "upsert_overwrites").await;
    c.put("r", &[("a", "1"), ("b", "2")], 1).await;
    c.put("r", &[("b", "3"), ("c", "4")], 2).await;
    assert_eq!(c.entries("r").await, pairs(&[("a", "1"), ("b", "3"), ("c", "4")]));
    c.finish().await;
}

pub async fn absent_record_reads_empty(subject: Subject) {
    let c = Case::provision(&subject, "absent_record_reads_empty").await;
    c.put("present", &[("k", "v")], 1).await;
    for selector in [Selector::All, keys(&["k"]), Selector::Range(KeyRange::all())] {
        let page = c.kv().get("absent", &selector, None, UNLIMITED, c.base).await.expect("get");
        assert_eq!(page.items, vec![], "{selector:?}");
        assert_eq!(page.next, None, "{selector:?}");
    }
    c.finish().await;
}

pub async fn keys_selector_skips_absent_keys(subject: Subject) {
    let c = Case::provision(&subject, "keys_selector_skips_absent_keys").await;
    c.put("r", &[("a", "1"), ("c", "3"), ("e", "5")], 1).await;
    let got = c.entries_of("r", &keys(&["a", "b", "c", "d", "e", "f"])).await;
    assert_eq!(got, pairs(&[("a", "1"), ("c", "3"), ("e", "5")]));
    assert_eq!(c.entries_of("r", &keys(&["c"])).await, pairs(&[("c", "3")]));
    assert_eq!(c.entries_of("r", &keys(&["x", "y"])).await, vec![]);
    assert_eq!(c.entries_of("r", &Selector::Keys(vec![])).await, vec![]);
    c.finish().await;
}

/// `[start, end)`: start included, end excluded, `None` unbounded; an
/// empty or inverted range selects nothing (or is refused as invalid).
pub async fn range_selector_is_half_open(subject: Subject) {
    let c = Case::provision(&subject, "range_selector_is_half_open").await;
    c.put("r", &[("a", "1"), ("b", "2"), ("c", "3"), ("d", "4"), ("e", "5")], 1).await;
    let cases: Vec<(KeyRange, Vec<&str>)> = vec![
        (range("b", Some("d")), vec!["b", "c"]),
        (range("b", None), vec!["b", "c", "d", "e"]),
        (range("", None), vec!["a", "b", "c", "d", "e"]),
        (range("", Some("c")), vec!["a", "b"]),
        (range("bb", Some("cc")), vec!["c"]),
        (range("b\0", Some("c")), vec![]),
        (range("c", Some("c")), vec![]),
        (range("f", None), vec![]),
    ];
    for (r, want) in cases {
        let got = c.entries_of("r", &Selector::Range(r.clone())).await;
        assert_eq!(key_names(&got), want, "{r:?}");
    }
    let inverted = Selector::Range(range("d", Some("b")));
    match c.kv().get("r", &inverted, None, UNLIMITED, c.base).await {
        Ok(page) => assert_eq!(page.items, vec![], "an inverted range selects nothing"),
        Err(PluginError::InvalidArgument { .. }) => {}
        Err(e) => panic!("an inverted range: want nothing or InvalidArgument, got {e:?}"),
    }
    c.finish().await;
}

/// `after` skips every key up to and including it, with any selector.
pub async fn reads_continue_after_key(subject: Subject) {
    let c = Case::provision(&subject, "reads_continue_after_key").await;
    c.put("r", &[("a", "1"), ("b", "2"), ("c", "3"), ("d", "4"), ("e", "5")], 1).await;
    let cases: Vec<(Selector, &str, Vec<&str>)> = vec![
        (Selector::All, "b", vec!["c", "d", "e"]),
        (Selector::All, "bb", vec!["c", "d", "e"]),
        (Selector::All, "", vec!["a", "b", "c", "d", "e"]),
        (Selector::All, "e", vec![]),
        (keys(&["a", "c", "e"]), "c", vec!["e"]),
        (keys(&["a", "c", "e"]), "b", vec!["c", "e"]),
        (Selector::Range(range("a", Some("d"))), "a", vec!["b", "c"]),
        (Selector::Range(range("c", None)), "a", vec!["c", "d", "e"]),
    ];
    for (selector, after, want) in cases {
        let page = c.kv().get("r", &selector, Some(after.as_bytes()), UNLIMITED, c.base).await.expect("get");
        let got: Vec<String> = page.items.iter().map(|i| String::from_utf8_lossy(&i.key).into_owned()).collect();
        assert_eq!(got, want, "{selector:?} after {after:?}");
        assert_eq!(page.next, None);
    }
    c.finish().await;
}

pub async fn delete_keys(subject: Subject) {
    let c = Case::provision(&subject, "delete_keys").await;
    c.put("r", &[("a", "1"), ("b", "2"), ("c", "3")], 1).await;
    c.mutate("r", &[delete("a"), delete("c"), delete("never-written")], &c.at(2)).await;
    assert_eq!(c.entries("r").await, pairs(&[("b", "2")]));
    c.finish().await;
}

pub async fn delete_range(subject: Subject) {
    let c = Case::provision(&subject, "delete_range").await;
    c.put("r", &[("a", "1"), ("b", "2"), ("bb", "x"), ("c", "3"), ("d", "4"), ("e", "5")], 1).await;
    c.put("other", &[("b", "kept")], 1).await;
    c.mutate("r", &[Mutation::DeleteRange(range("b", Some("d")))], &c.at(2)).await;
    assert_eq!(key_names(&c.entries("r").await), ["a", "d", "e"]);
    c.mutate("r", &[Mutation::DeleteRange(range("d", None))], &c.at(3)).await;
    assert_eq!(c.entries("r").await, pairs(&[("a", "1")]));
    assert_eq!(c.entries("other").await, pairs(&[("b", "kept")]), "a range delete stays in its record");
    c.finish().await;
}

pub async fn delete_whole_record(subject: Subject) {
    let c = Case::provision(&subject, "delete_whole_record").await;
    c.put("r1", &[("", "0"), ("a", "1"), ("b", "2")], 1).await;
    c.put("r2", &[("a", "x")], 1).await;
    c.put("r10", &[("a", "y")], 1).await;
    c.mutate("r1", &[Mutation::DeleteRange(KeyRange::all())], &c.at(2)).await;
    assert_eq!(c.entries("r1").await, vec![]);
    assert_eq!(c.entries("r2").await, pairs(&[("a", "x")]));
    assert_eq!(c.entries("r10").await, pairs(&[("a", "y")]), "deleting r1 leaves r10, which it prefixes");
    let ids: Vec<String> = c.scan(UNLIMITED, c.base).await.into_iter().map(|(id, _)| id).collect();
    assert_eq!(ids, ["r10", "r2"]);
    c.finish().await;
}

/// One stamp for the whole list, applied in order: a later mutation of
/// the list overrides an earlier one at the same generation time.
pub async fn mutate_applies_in_order(subject: Subject) {
    let c = Case::provision(&subject, "mutate_applies_in_order").await;
    c.put("r", &[("x", "old"), ("y", "old")], 1).await;
    let mutations = vec![
        put("a", "1"),
        put("a", "2"),
        put("b", "1"),
        delete("b"),
        put("c", "1"),
        Mutation::DeleteRange(range("c", Some("d"))),
        put("c", "3"),
        put("d", "1"),
        Mutation::DeleteRange(range("d", Some("e"))),
        put("e", "1"),
        delete("e"),
        put("e", "2"),
        put("x", "new"),
        delete("y"),
    ];
    c.mutate("r", &mutations, &c.at(2)).await;
    assert_eq!(c.entries("r").await, pairs(&[("a", "2"), ("c", "3"), ("e", "2"), ("x", "new")]));
    c.finish().await;
}

/// A mutate that succeeds applied every one of its mutations (all or
/// nothing: a failed one applied none, which only a backend's own tests
/// can provoke).
pub async fn mutate_applies_everything(subject: Subject) {
    let c = Case::provision(&subject, "mutate_applies_everything").await;
    let first: Vec<Mutation> = (0..100).map(|i| put(format!("k{i:03}"), "old")).collect();
    c.mutate("r", &first, &c.at(1)).await;
    let mut second: Vec<Mutation> = (0..50).map(|i| delete(format!("k{i:03}"))).collect();
    second.extend((50..150).map(|i| put(format!("k{i:03}"), format!("new{i}"))));
    c.mutate("r", &second, &c.at(2)).await;
    let want: Vec<(Vec<u8>, Vec<u8>)> =
        (50..150).map(|i| (format!("k{i:03}").into_bytes(), format!("new{i}").into_bytes())).collect();
    assert_eq!(c.entries("r").await, want);
    c.finish().await;
}

/// Last writer wins per item: an older put loses to what is stored, and
/// only for the items it is older than.
pub async fn older_put_is_ignored(subject: Subject) {
    let c = Case::provision(&subject, "older_put_is_ignored").await;
    c.put("r", &[("k", "v2")], 10).await;
    c.put("r", &[("k", "v1"), ("j", "late")], 5).await;
    assert_eq!(c.entries("r").await, pairs(&[("j", "late"), ("k", "v2")]));
    c.finish().await;
}

pub async fn older_delete_is_ignored(subject: Subject) {
    let c = Case::provision(&subject, "older_delete_is_ignored").await;
    c.put("r", &[("k", "v"), ("old", "o")], 10).await;
    c.put("r", &[("old", "o1")], 1).await; // older: ignored
    c.mutate("r", &[delete("k")], &c.at(5)).await;
    assert_eq!(c.entries("r").await, pairs(&[("k", "v"), ("old", "o")]));
    c.mutate("r", &[Mutation::DeleteRange(range("j", Some("l")))], &c.at(6)).await;
    assert_eq!(c.entries("r").await, pairs(&[("k", "v"), ("old", "o")]));
    c.mutate("r", &[Mutation::DeleteRange(KeyRange::all())], &c.at(7)).await;
    assert_eq!(c.entries("r").await, pairs(&[("k", "v"), ("old", "o")]), "a late record delete keeps newer items");
    c.finish().await;
}

/// A delete leaves its generation time behind: an older put arriving
/// later stays deleted, a newer one is visible.
pub async fn newer_put_after_delete_is_visible(subject: Subject) {
    let c = Case::provision(&subject, "newer_put_after_delete_is_visible").await;
    c.put("r", &[("k", "v1")], 1).await;
    c.mutate("r", &[delete("k")], &c.at(5)).await;
    assert_eq!(c.entries("r").await, vec![]);
    c.put("r", &[("k", "v0")], 3).await;
    assert_eq!(c.entries("r").await, vec![], "a put older than the delete stays deleted");
    c.put("r", &[("k", "v2")], 10).await;
    assert_eq!(c.entries("r").await, pairs(&[("k", "v2")]));

    // A delete of a key never written counts too.
    c.mutate("r", &[delete("j")], &c.at(5)).await;
    c.put("r", &[("j", "early")], 4).await;
    assert_eq!(c.entries_of("r", &keys(&["j"])).await, vec![]);
    c.put("r", &[("j", "later")], 6).await;
    assert_eq!(c.entries_of("r", &keys(&["j"])).await, pairs(&[("j", "later")]));
    c.finish().await;
}

/// A whole-record delete covers every key, also keys it never saw.
pub async fn put_older_than_record_delete_is_ignored(subject: Subject) {
    let c = Case::provision(&subject, "put_older_than_record_delete_is_ignored").await;
    c.put("r", &[("a", "1"), ("b", "2")], 1).await;
    c.mutate("r", &[Mutation::DeleteRange(KeyRange::all())], &c.at(5)).await;
    c.put("r", &[("a", "3")], 3).await;
    c.put("r", &[("c", "never-seen")], 4).await;
    assert_eq!(c.entries("r").await, vec![]);
    c.put("r", &[("c", "6")], 6).await;
    assert_eq!(c.entries("r").await, pairs(&[("c", "6")]));
    // A late record delete removes what is older and keeps what is newer.
    c.put("r", &[("d", "20")], 20).await;
    c.mutate("r", &[Mutation::DeleteRange(KeyRange::all())], &c.at(15)).await;
    assert_eq!(c.entries("r").await, pairs(&[("d", "20")]));
    c.put("r", &[("c", "14")], 14).await;
    assert_eq!(c.entries("r").await, pairs(&[("d", "20")]), "the later record delete still covers c");
    c.finish().await;
}

pub async fn put_older_than_range_delete_is_ignored(subject: Subject) {
    let c = Case::provision(&subject, "put_older_than_range_delete_is_ignored").await;
    c.put("r", &[("a", "1"), ("b", "1"), ("c", "1"), ("d", "1")], 1).await;
    c.mutate("r", &[Mutation::DeleteRange(range("b", Some("d")))], &c.at(5)).await;
    c.put("r", &[("b", "3"), ("bb", "3"), ("d", "3"), ("a", "3")], 3).await;
    assert_eq!(c.entries("r").await, pairs(&[("a", "3"), ("d", "3")]), "only keys outside the range take the put");
    c.put("r", &[("b", "6")], 6).await;
    assert_eq!(c.entries("r").await, pairs(&[("a", "3"), ("b", "6"), ("d", "3")]));
    c.finish().await;
}

/// Equal generation times: what is stored wins, whether a value, a point
/// delete or a range delete.
pub async fn equal_generation_time_keeps_stored(subject: Subject) {
    let c = Case::provision(&subject, "equal_generation_time_keeps_stored").await;
    c.put("r", &[("k", "first")], 7).await;
    c.put("r", &[("k", "second")], 7).await;
    assert_eq!(c.entries("r").await, pairs(&[("k", "first")]));
    c.mutate("r", &[delete("k")], &c.at(7)).await;
    assert_eq!(c.entries("r").await, pairs(&[("k", "first")]));
    c.mutate("r", &[delete("j")], &c.at(7)).await;
    c.put("r", &[("j", "same-time")], 7).await;
    assert_eq!(c.entries("r").await, pairs(&[("k", "first")]));
    c.mutate("r", &[Mutation::DeleteRange(KeyRange::all())], &c.at(8)).await;
    c.put("r", &[("m", "same-time")], 8).await;
    assert_eq!(c.entries("r").await, vec![]);
    c.finish().await;
}

/// Writers racing on one record, stamped out of order: every write lands
/// whole and the newest wins each item.
pub async fn concurrent_writers_keep_last_writer(subject: Subject) {
    const WRITERS: i64 = 16;
    let c = Case::provision(&subject, "concurrent_writers_keep_last_writer").await;
    let mut tasks = Vec::new();
    for record in ["r0", "r1", "r2"] {
        for i in 0..WRITERS {
            // A permutation of 1..=WRITERS: spawn order is not time order.
            let offset = 1 + (i * 7 + record.len() as i64) % WRITERS;
            let contested = if offset % 5 == 0 { delete("k") } else { put("k", offset.to_string()) };
            let mutations = vec![contested, put(format!("own-{offset:02}"), "x")];
            let (kv, stamp) = (c.kv().clone(), c.at(offset));
            tasks.push(tokio::spawn(async move { kv.mutate(record, &mutations, &stamp).await }));
        }
    }
    for task in tasks {
        task.await.expect("writer task").expect("mutate");
    }
    for record in ["r0", "r1", "r2"] {
        let got = c.entries(record).await;
        let mut want: Vec<(Vec<u8>, Vec<u8>)> =
            (1..=WRITERS).map(|o| (format!("own-{o:02}").into_bytes(), b"x".to_vec())).collect();
        want.insert(0, (b"k".to_vec(), WRITERS.to_string().into_bytes()));
        want.sort();
        assert_eq!(got, want, "record {record}");
    }
    c.finish().await;
}

/// A retry with the same token is applied once, whatever it carries.
pub async fn same_token_applies_once(subject: Subject) {
    let c = Case::provision(&subject, "same_token_applies_once").await;
    c.mutate("r", &[put("k", "first")], &c.token(1, "t-1")).await;
    c.mutate("r", &[put("k", "second")], &c.token(1, "t-1")).await;
    assert_eq!(c.entries("r").await, pairs(&[("k", "first")]));
    c.mutate("r", &[put("k", "third"), put("j", "x")], &c.token(2, "t-1")).await;
    c.mutate("r", &[delete("k")], &c.token(3, "t-1")).await;
    assert_eq!(c.entries("r").await, pairs(&[("k", "first")]), "a token already applied makes any write a no-op");
    c.finish().await;
}

pub async fn different_tokens_both_apply(subject: Subject) {
    let c = Case::provision(&subject, "different_tokens_both_apply").await;
    c.mutate("r", &[put("a", "1")], &c.token(1, "t-a")).await;
    c.mutate("r", &[put("b", "2")], &c.token(2, "t-b")).await;
    assert_eq!(c.entries("r").await, pairs(&[("a", "1"), ("b", "2")]));
    c.mutate("r", &[put("a", "3")], &c.token(3, "t-c")).await;
    c.mutate("r", &[delete("b")], &c.token(4, "t-d")).await;
    assert_eq!(c.entries("r").await, pairs(&[("a", "3")]));
    c.finish().await;
}

pub async fn tokens_are_per_record(subject: Subject) {
    let c = Case::provision(&subject, "tokens_are_per_record").await;
    c.mutate("r1", &[put("k", "1")], &c.token(1, "shared")).await;
    c.mutate("r2", &[put("k", "2")], &c.token(1, "shared")).await;
    assert_eq!(c.entries("r1").await, pairs(&[("k", "1")]));
    assert_eq!(c.entries("r2").await, pairs(&[("k", "2")]));
    c.finish().await;
}

/// An item is visible while `now < expires_at`, by the reader's `now`.
pub async fn expired_items_are_not_returned(subject: Subject) {
    let c = Case::provision(&subject, "expired_items_are_not_returned").await;
    let t = c.base + HOUR;
    c.mutate("r", &[put_expiring("a", "1", t), put("b", "2"), put_expiring("c", "3", t + 10)], &c.at(1)).await;
    let at = |now| c.read("r", &Selector::All, UNLIMITED, now);
    let items = at(t - 1).await;
    let want = vec![
        Item { key: b"a".to_vec(), value: b"1".to_vec(), expires_at: Some(t) },
        Item { key: b"b".to_vec(), value: b"2".to_vec(), expires_at: None },
        Item { key: b"c".to_vec(), value: b"3".to_vec(), expires_at: Some(t + 10) },
    ];
    assert_eq!(items, want);
    let names =
        |items: Vec<Item>| items.into_iter().map(|i| String::from_utf8_lossy(&i.key).into_owned()).collect::<Vec<_>>();
    assert_eq!(names(at(t).await), ["b", "c"]);
    assert_eq!(names(at(t + 10).await), ["b"]);
    assert_eq!(names(c.read("r", &keys(&["a", "b"]), UNLIMITED, t).await), ["b"]);
    assert_eq!(names(c.read("r", &Selector::Range(range("a", Some("c"))), UNLIMITED, t).await), ["b"]);
    assert_eq!(names(c.read("r", &Selector::All, PageLimits::new(1, None), t).await), ["b", "c"]);
    // A newer put without expiry makes the key live again.
    c.put("r", &[("a", "again")], 2).await;
    assert_eq!(names(at(t + 20).await), ["a", "b"]);
    c.finish().await;
}

/// `reclaim(now)` frees what expired by `now` and keeps everything else.
pub async fn reclaim_removes_expired_items(subject: Subject) {
    let c = Case::provision(&subject, "reclaim_removes_expired_items").await;
    let value = pattern(4 * KIB, 1);
    let now = now_micros();
    c.mutate(
        "r",
        &[
            put_expiring("a", &value, now - 1_000_000),
            put_expiring("b", &value, now - 1),
            put("c", &value),
            put_expiring("d", &value, c.base + 2 * HOUR),
        ],
        &c.at(1),
    )
    .await;
    c.mutate("gone", &[put_expiring("x", &value, now - 1)], &c.at(1)).await;
    let before = c.storage().await;
    assert!(before >= 20 * KIB as u64, "storage_bytes {before} counts five 4 KiB values");
    let removed = c.reclaim_expired(now_micros()).await;
    assert!(removed >= 3, "reclaim removed {removed} items, want at least this case's 3");
    let after = c.storage().await;
    assert!(before - after.min(before) >= 12 * KIB as u64, "storage_bytes went from {before} to {after}");
    assert_eq!(key_names(&c.entries("r").await), ["c", "d"]);
    assert_eq!(c.entries("r").await[0].1, value);
    assert_eq!(c.entries("gone").await, vec![]);
    c.reclaim_expired(now_micros()).await;
    assert!(c.storage().await >= 8 * KIB as u64, "the live values are still counted");
    assert_eq!(key_names(&c.entries("r").await), ["c", "d"]);
    c.finish().await;
}

fn sized_items(n: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
    (0..n).map(|i| (format!("k{i:03}").into_bytes(), pattern(1 + (i * 37) % 120, i as u8))).collect()
}

/// Pages by bytes: each stops once it reaches the bound, with the item
/// that crossed it; together they are every item once.
pub async fn get_pages_by_bytes(subject: Subject) {
    let c = Case::provision(&subject, "get_pages_by_bytes").await;
    let all = sized_items(60);
    let mutations: Vec<Mutation> = all.iter().map(|(k, v)| put(k, v)).collect();
    c.mutate("r", &mutations, &c.at(1)).await;
    let total: u64 = all.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum();
    for max_bytes in [1, 7, 50, 299, 300, total - 1, total, total + 1] {
        let items = c.read("r", &Selector::All, bytes_limit(max_bytes), c.base).await;
        let got: Vec<(Vec<u8>, Vec<u8>)> = items.into_iter().map(|i| (i.key, i.value)).collect();
        assert_eq!(got, all, "max_bytes {max_bytes}");
    }
    // Selected subsets page the same way.
    let every_other: Vec<Vec<u8>> = all.iter().step_by(2).map(|(k, _)| k.clone()).collect();
    let want: Vec<(Vec<u8>, Vec<u8>)> = all.iter().step_by(2).cloned().collect();
    let items = c.read("r", &Selector::Keys(every_other), bytes_limit(100), c.base).await;
    assert_eq!(items.into_iter().map(|i| (i.key, i.value)).collect::<Vec<_>>(), want);
    let items = c.read("r", &Selector::Range(range("k010", Some("k050"))), bytes_limit(100), c.base).await;
    assert_eq!(items.into_iter().map(|i| (i.key, i.value)).collect::<Vec<_>>(), all[10..50].to_vec());
    c.finish().await;
}

pub async fn get_pages_by_item_count(subject: Subject) {
    let c = Case::provision(&subject, "get_pages_by_item_count").await;
    let all = sized_items(25);
    let mutations: Vec<Mutation> = all.iter().map(|(k, v)| put(k, v)).collect();
    c.mutate("r", &mutations, &c.at(1)).await;
    for limits in [
        PageLimits::new(u64::MAX, Some(7)),
        PageLimits::new(u64::MAX, Some(1)),
        PageLimits::new(100, Some(3)),
        PageLimits::new(u64::MAX, Some(25)),
    ] {
        let items = c.read("r", &Selector::All, limits, c.base).await;
        assert_eq!(items.into_iter().map(|i| (i.key, i.value)).collect::<Vec<_>>(), all, "{limits:?}");
    }
    let page = c.kv().get("r", &Selector::All, None, PageLimits::new(u64::MAX, Some(7)), c.base).await.expect("get");
    assert_eq!(page.items.len(), 7);
    assert_eq!(page.next, Some(b"k006".to_vec()));
    c.finish().await;
}

/// Past its soft deadline a page ends early, between items, with `next`
/// its last item, so the pages that follow yield every item once: a get
/// (every selector) and a scan, each with items charged so that three
/// reach the deadline ([`crate::pace`]).
pub async fn pages_end_early_at_the_soft_deadline(subject: Subject) {
    let c = Case::provision(&subject, "pages_end_early_at_the_soft_deadline").await;
    let all = sized_items(10);
    let mutations: Vec<Mutation> = all.iter().map(|(k, v)| put(k, v)).collect();
    c.mutate("r", &mutations, &c.at(1)).await;
    c.put("s", &[("a", "1"), ("b", "2")], 1).await;
    let limits = paced(UNLIMITED);
    let mut sizes = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = c.kv().get("r", &Selector::All, after.as_deref(), limits, c.base).await.expect("get");
        sizes.push(page.items.len());
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    check_paced("get", &sizes);
    assert_eq!(sizes.len(), 4, "10 items in pages of 3: {sizes:?}");
    let entries = |items: Vec<Item>| items.into_iter().map(|i| (i.key, i.value)).collect::<Vec<_>>();
    assert_eq!(entries(c.read("r", &Selector::All, limits, c.base).await), all);
    let some = keys(&["k001", "k002", "k004", "k005", "k007"]);
    assert_eq!(key_names(&entries(c.read("r", &some, limits, c.base).await)), ["k001", "k002", "k004", "k005", "k007"]);
    let within = Selector::Range(range("k002", Some("k009")));
    assert_eq!(entries(c.read("r", &within, limits, c.base).await), all[2..9].to_vec());
    let mut sizes = Vec::new();
    let mut after = None;
    loop {
        let page = c.kv().scan(after.as_ref(), limits, c.base).await.expect("scan");
        sizes.push(page.records.iter().map(|r| r.items.len()).sum());
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    check_paced("scan", &sizes);
    let scanned: Vec<(String, Vec<u8>)> = c.scan(limits, c.base).await.into_iter().map(|(id, i)| (id, i.key)).collect();
    let mut want: Vec<(String, Vec<u8>)> = all.iter().map(|(k, _)| ("r".to_owned(), k.clone())).collect();
    want.extend([("s".to_owned(), b"a".to_vec()), ("s".to_owned(), b"b".to_vec())]);
    assert_eq!(scanned, want);
    c.finish().await;
}

/// A read whose hard deadline has passed gives up with UNAVAILABLE:
/// nobody waits for its answer.
pub async fn reads_past_the_hard_deadline_give_up(subject: Subject) {
    let c = Case::provision(&subject, "reads_past_the_hard_deadline_give_up").await;
    let all = sized_items(5);
    let mutations: Vec<Mutation> = all.iter().map(|(k, v)| put(k, v)).collect();
    c.mutate("r", &mutations, &c.at(1)).await;
    let late = overdue(UNLIMITED);
    assert_gave_up("get", c.kv().get("r", &Selector::All, None, late, c.base).await);
    assert_gave_up("get of keys", c.kv().get("r", &keys(&["k001"]), None, late, c.base).await);
    assert_gave_up("scan", c.kv().scan(None, late, c.base).await);
    c.finish().await;
}

/// An item bigger than the page bound is never split: it comes alone.
pub async fn item_larger_than_page_comes_alone(subject: Subject) {
    let c = Case::provision(&subject, "item_larger_than_page_comes_alone").await;
    let big: Vec<(String, Vec<u8>)> = (0..5).map(|i| (format!("big{i}"), pattern(1000, i))).collect();
    let mutations: Vec<Mutation> = big.iter().map(|(k, v)| put(k, v)).collect();
    c.mutate("r", &mutations, &c.at(1)).await;
    let mut after: Option<Vec<u8>> = None;
    let mut pages = Vec::new();
    loop {
        let page = c.kv().get("r", &Selector::All, after.as_deref(), bytes_limit(10), c.base).await.expect("get");
        if !page.items.is_empty() {
            pages.push(page.items.clone());
        }
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
        assert!(pages.len() <= big.len(), "more pages than items");
    }
    assert_eq!(pages.len(), 5);
    for (page, (key, value)) in pages.iter().zip(&big) {
        assert_eq!(page.len(), 1);
        assert_eq!((&page[0].key, &page[0].value), (&key.as_bytes().to_vec(), value));
    }
    // A big item after small ones crosses the bound and is included.
    c.put("mixed", &[("a", "12345"), ("b", "12345")], 1).await;
    c.mutate("mixed", &[put("c", pattern(1000, 9)), put("d", "12345")], &c.at(1)).await;
    let page = c.kv().get("mixed", &Selector::All, None, bytes_limit(20), c.base).await.expect("get");
    assert_eq!(page.items.iter().map(|i| i.key.clone()).collect::<Vec<_>>(), [b"a", b"b", b"c"]);
    assert_eq!(page.next, Some(b"c".to_vec()));
    c.finish().await;
}

/// A read whose items all fit without reaching a bound says nothing
/// follows.
pub async fn last_page_has_no_next(subject: Subject) {
    let c = Case::provision(&subject, "last_page_has_no_next").await;
    c.put("r", &[("a", "1"), ("b", "2"), ("c", "3")], 1).await;
    let roomy = PageLimits::new(1000, Some(10));
    for selector in [Selector::All, keys(&["a", "c"]), Selector::Range(range("b", None))] {
        let page = c.kv().get("r", &selector, None, roomy, c.base).await.expect("get");
        assert!(!page.items.is_empty());
        assert_eq!(page.next, None, "{selector:?}");
    }
    let page = c.kv().get("r", &Selector::All, Some(b"a"), roomy, c.base).await.expect("get");
    assert_eq!(page.items.len(), 2);
    assert_eq!(page.next, None);
    let page = c.kv().scan(None, roomy, c.base).await.expect("scan");
    assert_eq!(page.records.len(), 1);
    assert_eq!(page.next, None);
    c.finish().await;
}

/// `(key, value)` pairs of one record.
type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

fn scan_fixture() -> Vec<(String, Pairs)> {
    let text = |items: &[(&str, &str)]| pairs(items);
    vec![
        // "a" < "a-1" < "a0" < "b": an id that prefixes another sorts
        // first whatever its keys.
        ("a".into(), text(&[("y", "1"), ("zzz", "2")])),
        ("a-1".into(), text(&[("", "plain")])),
        ("a0".into(), (1..=5).map(|i| (format!("k{i}").into_bytes(), pattern(20, i))).collect()),
        ("b".into(), (0..20).map(|i| (format!("k{i:02}").into_bytes(), pattern(1 + i * 7, i as u8))).collect()),
        ("c".into(), vec![(b"big".to_vec(), pattern(500, 3))]),
    ]
}

pub async fn scan_returns_every_item_once(subject: Subject) {
    let c = Case::provision(&subject, "scan_returns_every_item_once").await;
    let records = scan_fixture();
    for (id, items) in &records {
        let mutations: Vec<Mutation> = items.iter().map(|(k, v)| put(k, v)).collect();
        c.mutate(id, &mutations, &c.at(1)).await;
    }
    let want: Vec<(String, Vec<u8>, Vec<u8>)> =
        records.iter().flat_map(|(id, items)| items.iter().map(|(k, v)| (id.clone(), k.clone(), v.clone()))).collect();
    for limits in [
        UNLIMITED,
        bytes_limit(1),
        bytes_limit(64),
        bytes_limit(256),
        PageLimits::new(u64::MAX, Some(3)),
        PageLimits::new(100, Some(4)),
    ] {
        let got: Vec<(String, Vec<u8>, Vec<u8>)> =
            c.scan(limits, c.base).await.into_iter().map(|(id, i)| (id, i.key, i.value)).collect();
        assert_eq!(got, want, "{limits:?}");
    }
    c.finish().await;
}

pub async fn scan_skips_expired_items(subject: Subject) {
    let c = Case::provision(&subject, "scan_skips_expired_items").await;
    let t = c.base + HOUR;
    c.mutate("r1", &[put_expiring("a", "1", t), put("b", "2")], &c.at(1)).await;
    c.mutate("r2", &[put_expiring("c", "3", t)], &c.at(1)).await;
    c.mutate("r3", &[put("d", "4")], &c.at(1)).await;
    let ids = |got: Vec<(String, Item)>| {
        got.into_iter().map(|(id, i)| format!("{id}/{}", String::from_utf8_lossy(&i.key))).collect::<Vec<_>>()
    };
    assert_eq!(ids(c.scan(UNLIMITED, t - 1).await), ["r1/a", "r1/b", "r2/c", "r3/d"]);
    assert_eq!(ids(c.scan(UNLIMITED, t).await), ["r1/b", "r3/d"]);
    assert_eq!(ids(c.scan(bytes_limit(1), t).await), ["r1/b", "r3/d"]);
    c.finish().await;
}

pub async fn scan_of_empty_namespace_is_empty(subject: Subject) {
    let c = Case::provision(&subject, "scan_of_empty_namespace_is_empty").await;
    let page = c.kv().scan(None, UNLIMITED, c.base).await.expect("scan");
    assert_eq!(page.records, vec![]);
    assert_eq!(page.next, None);
    // Deleted items leave nothing a scan returns.
    c.put("r", &[("a", "1"), ("b", "2")], 1).await;
    c.mutate("r", &[delete("a"), Mutation::DeleteRange(range("b", None))], &c.at(2)).await;
    c.put("s", &[("a", "1")], 1).await;
    c.mutate("s", &[Mutation::DeleteRange(KeyRange::all())], &c.at(2)).await;
    assert_eq!(c.scan(UNLIMITED, c.base).await, vec![]);
    assert_eq!(c.scan(bytes_limit(1), c.base).await, vec![]);
    c.finish().await;
}

/// Values around the 1 MiB default chunk threshold and well above it come
/// back byte for byte, by get and by scan.
pub async fn large_values_round_trip(subject: Subject) {
    let c = Case::provision(&subject, "large_values_round_trip").await;
    let values: Vec<(&str, Vec<u8>)> = vec![
        ("a-small", pattern(10, 0)),
        ("b-below", pattern(MIB - 1, 1)),
        ("c-at", pattern(MIB, 2)),
        ("d-above", pattern(MIB + 1, 3)),
        ("e-two", pattern(2 * MIB, 4)),
        ("f-three", pattern(3 * MIB, 5)),
    ];
    for (i, (key, value)) in values.iter().enumerate() {
        c.mutate("big", &[put(key, value)], &c.at(1 + i as i64)).await;
    }
    let want: Vec<(Vec<u8>, Vec<u8>)> = values.iter().map(|(k, v)| (k.as_bytes().to_vec(), v.clone())).collect();
    let got = c.entries("big").await;
    assert_eq!(got.len(), want.len());
    for ((gk, gv), (wk, wv)) in got.iter().zip(&want) {
        assert_eq!(gk, wk);
        assert!(gv == wv, "value of {:?}: {} bytes back, {} written", String::from_utf8_lossy(wk), gv.len(), wv.len());
    }
    for (key, value) in &values {
        let got = c.entries_of("big", &keys(&[key])).await;
        assert!(got.len() == 1 && &got[0].1 == value, "get of {key} by key");
    }
    let scanned = c.scan(UNLIMITED, c.base).await;
    assert_eq!(scanned.len(), values.len());
    for ((id, item), (key, value)) in scanned.iter().zip(&values) {
        assert!(id == "big" && item.key == key.as_bytes() && &item.value == value, "scan of {key}");
    }
    c.finish().await;
}

pub async fn large_values_page_whole(subject: Subject) {
    let c = Case::provision(&subject, "large_values_page_whole").await;
    let values: Vec<Vec<u8>> = (0..3).map(|i| pattern(3 * MIB / 2, i)).collect();
    for (i, value) in values.iter().enumerate() {
        c.mutate("r", &[put(format!("k{i}"), value)], &c.at(1)).await;
    }
    for limits in [bytes_limit(1), bytes_limit(2 * MIB as u64)] {
        let items = c.read("r", &Selector::All, limits, c.base).await;
        assert_eq!(items.len(), 3);
        for (item, value) in items.iter().zip(&values) {
            assert!(&item.value == value, "{limits:?}: value of {:?}", item.key);
        }
        let scanned = c.scan(limits, c.base).await;
        assert_eq!(scanned.len(), 3);
        for ((_, item), value) in scanned.iter().zip(&values) {
            assert!(&item.value == value, "{limits:?}: scanned value of {:?}", item.key);
        }
    }
    c.finish().await;
}

/// Overwriting a chunked value with a smaller one leaves no stale chunk:
/// neither in what is read nor in what is stored.
pub async fn overwrite_large_with_small_frees_chunks(subject: Subject) {
    let c = Case::provision(&subject, "overwrite_large_with_small_frees_chunks").await;
    let three = pattern(3 * MIB, 1);
    c.mutate("r", &[put("k", &three)], &c.at(1)).await;
    let large = c.storage().await;
    assert!(large >= 3 * MIB as u64, "storage_bytes {large} counts a 3 MiB value");
    c.put("r", &[("k", "small")], 2).await;
    let small = c.storage().await;
    assert!(small + 2 * MIB as u64 <= large, "storage_bytes went from {large} to only {small}");
    assert_eq!(c.entries("r").await, pairs(&[("k", "small")]));

    // Shrinking from more chunks to fewer reads back only the new ones.
    c.mutate("r", &[put("k", &three)], &c.at(3)).await;
    let shorter = pattern(MIB + MIB / 5, 2);
    c.mutate("r", &[put("k", &shorter)], &c.at(4)).await;
    let got = c.entries("r").await;
    assert!(got.len() == 1 && got[0].1 == shorter, "the shorter value comes back alone and whole");
    let now = c.storage().await;
    assert!(now + MIB as u64 <= large, "storage_bytes {now} still counts the 3 MiB value ({large})");
    c.finish().await;
}

/// Point, range and whole-record deletes of chunked values free them.
pub async fn deleting_large_values_frees_storage(subject: Subject) {
    let c = Case::provision(&subject, "deleting_large_values_frees_storage").await;
    let three = pattern(3 * MIB, 7);
    for id in ["point", "range", "record"] {
        c.mutate(id, &[put("k", &three), put("small", "x")], &c.at(1)).await;
    }
    let mut last = c.storage().await;
    assert!(last >= 9 * MIB as u64, "storage_bytes {last} counts three 3 MiB values");
    let deletes = [
        ("point", delete("k")),
        ("range", Mutation::DeleteRange(range("a", Some("l")))),
        ("record", Mutation::DeleteRange(KeyRange::all())),
    ];
    for (id, deletion) in deletes {
        c.mutate(id, &[deletion], &c.at(2)).await;
        let now = c.storage().await;
        assert!(now + 2 * MIB as u64 <= last, "{id} delete: storage_bytes went from {last} to only {now}");
        last = now;
        let got = c.entries(id).await;
        assert!(got.iter().all(|(k, _)| k != b"k"), "{id}: the deleted value is gone");
    }
    c.finish().await;
}

/// `storage_bytes` counts at least every live key and value, and drops
/// when they are deleted.
pub async fn storage_bytes_counts_data(subject: Subject) {
    let c = Case::provision(&subject, "storage_bytes_counts_data").await;
    let empty = c.storage().await;
    let value = pattern(KIB, 0);
    let mutations: Vec<Mutation> = (0..10).map(|i| put(format!("k{i}"), &value)).collect();
    c.mutate("r", &mutations, &c.at(1)).await;
    let full = c.storage().await;
    assert!(full >= empty + 10 * (KIB as u64 + 2), "storage_bytes went from {empty} to only {full}");
    c.mutate("r", &[Mutation::DeleteRange(KeyRange::all())], &c.at(2)).await;
    let deleted = c.storage().await;
    assert!(deleted + 9 * KIB as u64 <= full, "storage_bytes went from {full} to only {deleted}");
    c.finish().await;
}

/// Same record ids in two namespaces are two records.
pub async fn namespaces_are_isolated(subject: Subject) {
    let a = Case::provision(&subject, "namespaces_are_isolated").await;
    let b = Case::provision(&subject, "namespaces_are_isolated").await;
    assert_ne!(a.ns.name, b.ns.name);
    a.put("r", &[("k", "from-a"), ("only-a", "1")], 1).await;
    b.put("r", &[("k", "from-b")], 1).await;
    assert_eq!(a.entries("r").await, pairs(&[("k", "from-a"), ("only-a", "1")]));
    assert_eq!(b.entries("r").await, pairs(&[("k", "from-b")]));
    assert_eq!(b.scan(UNLIMITED, b.base).await.len(), 1);
    a.mutate("r", &[Mutation::DeleteRange(KeyRange::all())], &a.at(2)).await;
    assert_eq!(b.entries("r").await, pairs(&[("k", "from-b")]));
    // A token used in one namespace is unknown in the other.
    a.mutate("t", &[put("k", "a")], &a.token(3, "tok")).await;
    b.mutate("t", &[put("k", "b")], &b.token(3, "tok")).await;
    assert_eq!(b.entries("t").await, pairs(&[("k", "b")]));
    a.finish().await;
    assert_eq!(b.entries("r").await, pairs(&[("k", "from-b")]), "deprovisioning one namespace keeps the other");
    b.finish().await;
}

/// A namespace deleted and created again (same name, new create
/// revision) sees nothing of the old incarnation.
pub async fn recreated_namespace_starts_empty(subject: Subject) {
    let first = Case::provision(&subject, "recreated_namespace_starts_empty").await;
    first.put("r", &[("k", "old")], 1).await;
    first.mutate("r", &[delete("tombstoned")], &first.at(5)).await;
    first.plugin.deprovision(&first.ns).await.expect("deprovision");

    let mut ns = first.ns.clone();
    ns.create_revision += 1;
    let second = Case::unprovisioned(&subject, ns.clone());
    second.plugin.provision(&second.ns).await.expect("provision");
    assert_eq!(second.entries("r").await, vec![]);
    assert_eq!(second.scan(UNLIMITED, second.base).await, vec![]);
    // Neither the old tombstone nor the old data bound the new incarnation.
    second.put("r", &[("tombstoned", "new")], -1_000).await;
    assert_eq!(second.entries("r").await, pairs(&[("tombstoned", "new")]));

    // Created again without the previous one being deprovisioned first.
    ns.create_revision += 1;
    let third = Case::unprovisioned(&subject, ns);
    third.plugin.provision(&third.ns).await.expect("provision");
    assert_eq!(third.entries("r").await, vec![]);
    assert_eq!(third.scan(UNLIMITED, third.base).await, vec![]);
    third.finish().await;
    second.finish().await;
}

/// A migration's target is a newer incarnation of the source's name,
/// perhaps in the source's own store: provisioned beside the live source
/// (`provision_beside`), it leaves every byte of the source alone —
/// values, large values, tombstones, range deletes, tokens — and so does
/// removing it (an abort). Once no incarnation is named live, a newer one
/// removes both, as a namespace created again does.
pub async fn a_newer_incarnation_beside_a_live_one_keeps_it(subject: Subject) {
    let source = Case::provision(&subject, "a_newer_incarnation_beside_a_live_one_keeps_it").await;
    let big = pattern(MIB + 3 * KIB, 7);
    write_versioned(&source, &big).await;
    source.mutate("tok", &[put("k", "once")], &source.token(6, "tok")).await;
    let versions = sorted(source.versions(UNLIMITED).await);

    let mut ns = source.ns.clone();
    ns.create_revision += 10;
    let target = Case::resume(source.plugin.clone(), ns.clone(), source.base);
    let live = [source.ns.create_revision];
    target.plugin.provision_beside(&target.ns, &live).await.expect("provision the target");
    target.plugin.provision_beside(&target.ns, &live).await.expect("provisioning the target is idempotent");
    assert_eq!(target.versions(UNLIMITED).await, vec![], "the target starts empty");
    assert_eq!(sorted(source.versions(UNLIMITED).await), versions, "the live source keeps every version");
    // Both serve, each its own data.
    target.put("r", &[("a", "target")], 10).await;
    source.put("r", &[("a", "source")], 10).await;
    assert_eq!(target.entries("r").await, pairs(&[("a", "target")]));
    assert_eq!(source.entries_of("r", &keys(&["a"])).await, pairs(&[("a", "source")]));
    // The source's token is still known: its retry applies nothing.
    source.mutate("tok", &[put("k", "twice")], &source.token(6, "tok")).await;
    assert_eq!(source.entries("tok").await, pairs(&[("k", "once")]));
    // The source provisioned again (a shard taking it over) keeps the target.
    source.plugin.provision(&source.ns).await.expect("provision the source again");
    assert_eq!(target.entries("r").await, pairs(&[("a", "target")]));

    // Aborted: removing the target leaves the source whole.
    target.plugin.deprovision(&target.ns).await.expect("deprovision the target");
    assert_eq!(source.entries_of("r", &keys(&["a"])).await, pairs(&[("a", "source")]));
    assert_eq!(source.entries("tok").await, pairs(&[("k", "once")]));

    // A target again, then an incarnation created with none live: both
    // older ones are removed.
    target.plugin.provision_beside(&target.ns, &live).await.expect("provision the target again");
    target.put("r", &[("a", "target")], 11).await;
    ns.create_revision += 1;
    let newer = Case::unprovisioned(&subject, ns);
    newer.plugin.provision(&newer.ns).await.expect("provision a newer incarnation");
    assert_eq!(newer.versions(UNLIMITED).await, vec![], "the newer incarnation starts empty");
    assert_not_provisioned("the source", source.kv().get("r", &Selector::All, None, UNLIMITED, source.base).await);
    assert_not_provisioned("the target", target.kv().get("r", &Selector::All, None, UNLIMITED, target.base).await);
    newer.finish().await;
    target.finish().await;
    source.finish().await;
}

/// Deprovisioning removes every byte: data, tombstones, tokens. It is
/// idempotent, and a namespace provisioned again starts empty.
pub async fn deprovision_removes_everything(subject: Subject) {
    let c = Case::provision(&subject, "deprovision_removes_everything").await;
    c.mutate("r", &[put("k", "v"), put("big", pattern(2 * MIB, 1))], &c.token(1, "tok")).await;
    c.mutate("r", &[delete("gone")], &c.at(10)).await;
    c.mutate("s", &[Mutation::DeleteRange(KeyRange::all())], &c.at(10)).await;
    c.plugin.deprovision(&c.ns).await.expect("deprovision");

    let kv = c.kv();
    assert_not_provisioned("get", kv.get("r", &Selector::All, None, UNLIMITED, c.base).await);
    assert_not_provisioned("scan", kv.scan(None, UNLIMITED, c.base).await);
    assert_not_provisioned("scan_versions", kv.scan_versions(None, UNLIMITED).await);
    let version = Version::Tombstone { key: b"k".to_vec(), generation: c.base };
    assert_not_provisioned("restore", kv.restore("r", &[version]).await);
    assert_not_provisioned("mutate", kv.mutate("r", &[put("k", "v")], &c.at(20)).await);
    match kv.storage_bytes().await {
        Ok(0) | Err(PluginError::NotProvisioned(_)) => {}
        other => panic!("storage_bytes after deprovision: want 0 or NotProvisioned, got {other:?}"),
    }
    c.plugin.deprovision(&c.ns).await.expect("deprovision is idempotent");

    c.plugin.provision(&c.ns).await.expect("provision again");
    assert_eq!(c.scan(UNLIMITED, c.base).await, vec![]);
    c.mutate("r", &[put("k", "after")], &c.token(1, "tok")).await;
    assert_eq!(c.entries("r").await, pairs(&[("k", "after")]), "the token was forgotten");
    c.put("r", &[("gone", "back")], 2).await;
    c.put("s", &[("x", "back")], 2).await;
    assert_eq!(c.entries("r").await, pairs(&[("gone", "back"), ("k", "after")]), "the tombstone was forgotten");
    assert_eq!(c.entries("s").await, pairs(&[("x", "back")]), "the record delete was forgotten");
    c.finish().await;
}

pub async fn provision_is_idempotent(subject: Subject) {
    let c = Case::provision(&subject, "provision_is_idempotent").await;
    c.plugin.provision(&c.ns).await.expect("provision twice");
    c.put("r", &[("k", "v")], 1).await;
    c.plugin.provision(&c.ns).await.expect("provision with data");
    assert_eq!(c.entries("r").await, pairs(&[("k", "v")]), "provisioning again keeps the data");
    c.finish().await;
}

pub async fn unprovisioned_namespace_is_refused(subject: Subject) {
    let ns = namespace(&subject, "unprovisioned_namespace_is_refused");
    let c = Case::unprovisioned(&subject, ns);
    let kv = c.kv();
    assert_not_provisioned("mutate", kv.mutate("r", &[put("k", "v")], &c.at(1)).await);
    assert_not_provisioned("get", kv.get("r", &Selector::All, None, UNLIMITED, c.base).await);
    assert_not_provisioned("scan", kv.scan(None, UNLIMITED, c.base).await);
    assert_not_provisioned("scan_versions", kv.scan_versions(None, UNLIMITED).await);
    let version = Version::Tombstone { key: b"k".to_vec(), generation: c.base };
    assert_not_provisioned("restore", kv.restore("r", &[version]).await);
    match kv.storage_bytes().await {
        Ok(0) | Err(PluginError::NotProvisioned(_)) => {}
        other => panic!("storage_bytes of an unprovisioned namespace: want 0 or NotProvisioned, got {other:?}"),
    }
    c.plugin.deprovision(&c.ns).await.expect("deprovisioning what never was succeeds");
}

/// `versions` in a fixed order, for comparing two scans.
fn sorted(mut versions: Vec<(String, Version)>) -> Vec<(String, Version)> {
    versions.sort_by_cached_key(|(id, v)| (id.clone(), format!("{v:?}")));
    versions
}

/// What the versions cases store in a source: values (one expiring, one
/// chunked on every backend), a point delete, a range delete, and a
/// record whose whole delete left nothing but its range.
async fn write_versioned(c: &Case, big: &[u8]) {
    c.put("r", &[("a", "1"), ("b", "2")], 1).await;
    c.mutate("r", &[put_expiring("t", "x", c.base + HOUR), put("big", big)], &c.at(2)).await;
    c.mutate("r", &[delete("b")], &c.at(3)).await;
    c.mutate("s", &[Mutation::DeleteRange(range("m", Some("p")))], &c.at(4)).await;
    c.put("gone", &[("k", "v")], 1).await;
    c.mutate("gone", &[Mutation::DeleteRange(KeyRange::all())], &c.at(5)).await;
}

/// A versions scan returns every value with its generation time and
/// expiry, every point delete and every range delete, page by page.
pub async fn versions_include_values_and_deletes(subject: Subject) {
    let c = Case::provision(&subject, "versions_include_values_and_deletes").await;
    let big = pattern(MIB + 3 * KIB, 4);
    write_versioned(&c, &big).await;
    let item = |key: &str, value: &[u8], expires_at, offset| Version::Item {
        key: key.as_bytes().to_vec(),
        value: value.to_vec(),
        expires_at,
        generation: c.base + offset,
    };
    let want = sorted(vec![
        ("r".into(), item("a", b"1", None, 1)),
        ("r".into(), item("big", &big, None, 2)),
        ("r".into(), item("t", b"x", Some(c.base + HOUR), 2)),
        ("r".into(), Version::Tombstone { key: b"b".to_vec(), generation: c.base + 3 }),
        ("s".into(), Version::Range { range: range("m", Some("p")), generation: c.base + 4 }),
        ("gone".into(), Version::Range { range: KeyRange::all(), generation: c.base + 5 }),
    ]);
    assert_eq!(sorted(c.versions(UNLIMITED).await), want, "one page");
    assert_eq!(sorted(c.versions(PageLimits::new(1, Some(1))).await), want, "a version a page");
    assert_eq!(sorted(c.versions(PageLimits::new(2 * KIB as u64, Some(3))).await), want, "pages by bytes");
    c.finish().await;
}

/// Copying every version into another namespace gives it the same
/// versions, so the same reads and the same last-writer-wins answers to
/// writes that come late.
pub async fn restore_copies_every_version(subject: Subject) {
    let source = Case::provision(&subject, "restore_copies_every_version").await;
    let target = source.beside(&subject, "restore_copies_every_version").await;
    let big = pattern(MIB + 3 * KIB, 5);
    write_versioned(&source, &big).await;
    source.copy_to(&target, PageLimits::new(2 * KIB as u64, Some(2))).await;
    assert_eq!(sorted(target.versions(UNLIMITED).await), sorted(source.versions(UNLIMITED).await));
    for id in ["r", "s", "gone"] {
        assert_eq!(target.entries(id).await, source.entries(id).await, "record {id}");
    }
    // Writes older than what was copied lose on both sides alike.
    for c in [&source, &target] {
        c.put("r", &[("b", "late")], 2).await;
        c.put("s", &[("n", "late")], 3).await;
        c.put("gone", &[("k", "late")], 4).await;
        assert_eq!(c.entries("s").await, vec![]);
        assert_eq!(c.entries("gone").await, vec![]);
    }
    assert_eq!(target.entries("r").await, source.entries("r").await);
    source.finish().await;
    target.finish().await;
}

/// Restoring a page's records together ends where restoring them one by
/// one does, on targets that already hold newer and older versions (dual
/// writes), with range deletes, point deletes, expiries and large values
/// among them.
pub async fn restore_records_restores_as_restore_does(subject: Subject) {
    let name = "restore_records_restores_as_restore_does";
    let source = Case::provision(&subject, name).await;
    let one_by_one = source.beside(&subject, name).await;
    let together = source.beside(&subject, name).await;
    write_versioned(&source, &pattern(MIB + 3 * KIB, 7)).await;
    for i in 0..40 {
        let id = format!("rec-{i:02}");
        source.put(&id, &[("k", "source"), ("j", "source")], 5).await;
        source.mutate(&id, &[delete("d")], &source.at(6)).await;
    }
    for target in [&one_by_one, &together] {
        // A dual write newer than the copy, one older, a newer delete and
        // a newer range delete over a copied key.
        target.put("rec-01", &[("k", "dual")], 9).await;
        target.put("rec-02", &[("k", "dual")], 2).await;
        target.mutate("rec-03", &[delete("j")], &target.at(9)).await;
        target.mutate("rec-04", &[Mutation::DeleteRange(range("a", Some("z")))], &target.at(9)).await;
        target.put("rec-05", &[("d", "dual")], 3).await;
    }
    source.copy_record_by_record(&one_by_one, PageLimits::new(64 * KIB as u64, Some(7))).await;
    source.copy_to(&together, PageLimits::new(64 * KIB as u64, Some(7))).await;
    assert_eq!(sorted(together.versions(UNLIMITED).await), sorted(one_by_one.versions(UNLIMITED).await));
    assert_eq!(together.entries("rec-01").await, pairs(&[("j", "source"), ("k", "dual")]));
    assert_eq!(together.entries("rec-02").await, pairs(&[("j", "source"), ("k", "source")]));
    assert_eq!(together.entries("rec-03").await, pairs(&[("k", "source")]));
    assert_eq!(together.entries("rec-04").await, vec![]);
    assert_eq!(together.entries("rec-05").await, pairs(&[("j", "source"), ("k", "source")]));
    for id in ["r", "s", "gone", "rec-00", "rec-39"] {
        assert_eq!(together.entries(id).await, source.entries(id).await, "record {id}");
    }
    source.finish().await;
    one_by_one.finish().await;
    together.finish().await;
}

/// A version older than (or as old as) what the target stores — a dual
/// write that arrived first — changes nothing; a newer one wins, deletes
/// included.
pub async fn restore_never_overwrites_newer(subject: Subject) {
    let source = Case::provision(&subject, "restore_never_overwrites_newer").await;
    let target = source.beside(&subject, "restore_never_overwrites_newer").await;
    source.put("r", &[("k", "old"), ("j", "old")], 5).await;
    source.mutate("r", &[delete("d")], &source.at(10)).await;
    source.mutate("r", &[Mutation::DeleteRange(range("x", Some("y")))], &source.at(10)).await;
    source.put("r", &[("e", "source")], 7).await;
    target.put("r", &[("k", "new")], 10).await;
    target.mutate("r", &[delete("j")], &target.at(10)).await;
    target.put("r", &[("d", "old"), ("x1", "old")], 5).await;
    target.put("r", &[("x2", "new")], 20).await;
    target.put("r", &[("e", "target")], 7).await;
    source.copy_to(&target, UNLIMITED).await;
    assert_eq!(target.entries("r").await, pairs(&[("e", "target"), ("k", "new"), ("x2", "new")]));
    source.finish().await;
    target.finish().await;
}

/// A page copied again (a backfill resumed from an older cursor) changes
/// nothing.
pub async fn restoring_twice_changes_nothing(subject: Subject) {
    let source = Case::provision(&subject, "restoring_twice_changes_nothing").await;
    let target = source.beside(&subject, "restoring_twice_changes_nothing").await;
    write_versioned(&source, &pattern(MIB + 3 * KIB, 6)).await;
    source.copy_to(&target, UNLIMITED).await;
    let (versions, storage) = (sorted(target.versions(UNLIMITED).await), target.storage().await);
    source.copy_to(&target, PageLimits::new(KIB as u64, Some(1))).await;
    assert_eq!(sorted(target.versions(UNLIMITED).await), versions);
    assert_eq!(target.storage().await, storage);
    source.finish().await;
    target.finish().await;
}

/// A copied value keeps its expiry: the target stops returning it when
/// the source does.
pub async fn restore_carries_expiry(subject: Subject) {
    let source = Case::provision(&subject, "restore_carries_expiry").await;
    let target = source.beside(&subject, "restore_carries_expiry").await;
    let expires_at = now_micros() + 2 * HOUR;
    source.mutate("r", &[put_expiring("k", "v", expires_at), put("stays", "v")], &source.at(1)).await;
    source.copy_to(&target, UNLIMITED).await;
    let want = Item { key: b"k".to_vec(), value: b"v".to_vec(), expires_at: Some(expires_at) };
    let items = target.read("r", &keys(&["k"]), UNLIMITED, target.base).await;
    assert_eq!(items, vec![want]);
    assert_eq!(target.read("r", &Selector::All, UNLIMITED, expires_at).await.len(), 1, "expired at its time");
    source.finish().await;
    target.finish().await;
}

/// While a namespace is held (a migration copies it), reclamation keeps
/// its deletes however old, and an expired item becomes a tombstone; once
/// released they go as usual.
pub async fn reclaim_keeps_the_deletes_of_held_namespaces(subject: Subject) {
    let c = Case::provision(&subject, "reclaim_keeps_the_deletes_of_held_namespaces").await;
    // Two days old: past any tombstone retention the suite runs with.
    let old = -2 * DAY;
    c.mutate("r", &[delete("gone")], &c.at(old)).await;
    c.mutate("r", &[put_expiring("expired", "v", now_micros() - 1), put("kept", "v")], &c.at(old)).await;
    c.mutate("s", &[Mutation::DeleteRange(KeyRange::all())], &c.at(old)).await;
    c.reclaim_holding(now_micros()).await;
    let held = sorted(c.versions(UNLIMITED).await);
    let tombstone = |key: &str| Version::Tombstone { key: key.as_bytes().to_vec(), generation: c.base + old };
    let kept =
        Version::Item { key: b"kept".to_vec(), value: b"v".to_vec(), expires_at: None, generation: c.base + old };
    let want = sorted(vec![
        ("r".into(), tombstone("expired")),
        ("r".into(), tombstone("gone")),
        ("r".into(), kept.clone()),
        ("s".into(), Version::Range { range: KeyRange::all(), generation: c.base + old }),
    ]);
    assert_eq!(held, want, "held: every delete stays");
    c.reclaim_expired(now_micros()).await;
    assert_eq!(c.versions(UNLIMITED).await, vec![("r".into(), kept)], "released: old deletes go");
    c.finish().await;
}
