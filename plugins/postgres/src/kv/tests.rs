//! Unit tests of what the KeyValue code decides before it talks to the
//! server: a mutation list's net effect and the range tombstone list.

use prism_plugin_api::kv::{KeyRange, Mutation, NewItem};

use super::{Plan, RangeTombstone, Write, merge_ranges};

fn put(key: &str) -> Mutation {
    Mutation::Put(NewItem { key: key.as_bytes().to_vec(), value: b"v".to_vec(), expires_at: None })
}

fn delete(key: &str) -> Mutation {
    Mutation::Delete(key.as_bytes().to_vec())
}

fn range(start: &str, end: Option<&str>) -> KeyRange {
    KeyRange { start: start.as_bytes().to_vec(), end: end.map(|e| e.as_bytes().to_vec()) }
}

/// Each key's fate as `key=put|delete|ranged`.
fn fates(plan: &Plan<'_>) -> Vec<String> {
    plan.writes
        .iter()
        .map(|(key, write)| {
            let fate = match write {
                Some(Write::Put(_)) => "put",
                Some(Write::Delete) => "delete",
                None => "ranged",
            };
            format!("{}={fate}", String::from_utf8_lossy(key))
        })
        .collect()
}

#[test]
fn the_last_write_of_a_key_counts() {
    let list = [put("a"), delete("a"), delete("b"), put("b"), put("c")];
    let plan = Plan::new(&list);
    assert_eq!(fates(&plan), ["a=delete", "b=put", "c=put"]);
    assert!(plan.ranges.is_empty());
}

#[test]
fn a_range_delete_drops_the_writes_before_it_only() {
    let list = [
        put("a"),
        put("b"),
        put("c"),
        Mutation::DeleteRange(range("b", Some("c"))),
        delete("x"),
        Mutation::DeleteRange(range("w", None)),
        put("z"),
    ];
    let plan = Plan::new(&list);
    assert_eq!(fates(&plan), ["a=put", "b=ranged", "c=put", "x=ranged", "z=put"]);
    assert_eq!(plan.ranges.len(), 2);
}

#[test]
fn empty_and_inverted_ranges_do_nothing() {
    let list = [put("c"), Mutation::DeleteRange(range("c", Some("c"))), Mutation::DeleteRange(range("d", Some("a")))];
    let plan = Plan::new(&list);
    assert_eq!(fates(&plan), ["c=put"]);
    assert!(plan.ranges.is_empty());
}

fn tombstone(start: &str, end: Option<&str>, generation: i64) -> RangeTombstone {
    RangeTombstone { start: start.as_bytes().to_vec(), end: end.map(|e| e.as_bytes().to_vec()), generation }
}

#[test]
fn newer_covering_ranges_replace_older_ones() {
    let old = vec![tombstone("b", Some("d"), 5), tombstone("x", None, 9)];
    // Covered by a newer, wider one: replaced.
    let merged = merge_ranges(old.clone(), vec![tombstone("a", Some("e"), 6)]).expect("changed");
    assert_eq!(merged, vec![tombstone("x", None, 9), tombstone("a", Some("e"), 6)]);
    // Dominated by what is stored: nothing changes.
    assert_eq!(merge_ranges(old.clone(), vec![tombstone("y", Some("z"), 8)]), None);
    // Overlapping without covering: both kept.
    let merged = merge_ranges(old, vec![tombstone("c", Some("f"), 7)]).expect("changed");
    assert_eq!(merged.len(), 3);
}
