//! Tests of the store's internals: all-or-nothing under a failure in the
//! middle of a mutate, reclamation of everything with a retention, the due
//! index staying exact, and the byte counter matching the tables.

use prism_plugin_api::kv::{KeyRange, NewItem};
use prism_plugin_api::pace::CancelOnDrop;
use prism_proto::control::NamespaceSpec;

use super::*;

const HOUR: Micros = 3_600_000_000;

fn open() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let config = EmbeddedConfig { chunk_threshold_bytes: 1024, ..EmbeddedConfig::new(dir.path()) };
    (Store::open(&config).expect("open"), dir)
}

fn incarnation(name: &str, revision: u64) -> Incarnation {
    let ns = Namespace { name: name.into(), create_revision: revision, spec: NamespaceSpec::default() };
    Incarnation::of(&ns).expect("valid name")
}

fn put(key: &str, value: &[u8], expires_at: Option<Micros>) -> Mutation {
    Mutation::Put(NewItem { key: key.as_bytes().to_vec(), value: value.to_vec(), expires_at })
}

fn at(generation: Micros) -> WriteStamp {
    WriteStamp { generation_time: generation, token: None }
}

fn keys(store: &Store, ns: &Incarnation, id: &str, now: Micros) -> Vec<String> {
    let limits = PageLimits::new(u64::MAX, None);
    let page = store.get(ns, id, &Selector::All, None, limits, now, &Cancelled::default()).expect("get");
    page.items.iter().map(|i| String::from_utf8_lossy(&i.key).into_owned()).collect()
}

/// Rows of `table` (any value type) under the namespace prefix.
fn rows<V: redb::Value + 'static>(store: &Store, table: TableDefinition<Bytes, V>, ns: &Incarnation) -> usize {
    let r = store.db.begin_read().expect("read");
    let table = r.open_table(table).expect("table");
    let end = prefix_end(&ns.prefix);
    let upper = end.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
    table.range::<&[u8]>((Bound::Included(ns.prefix.as_slice()), upper)).expect("range").count()
}

/// What the counter should say: every key and value of the data tables.
fn counted(store: &Store, ns: &Incarnation) -> u64 {
    let r = store.db.begin_read().expect("read");
    let end = prefix_end(&ns.prefix);
    let upper = || end.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
    let mut total = 0;
    for def in [ITEMS, CHUNKS, RANGES] {
        let table = r.open_table(def).expect("table");
        for entry in table.range::<&[u8]>((Bound::Included(ns.prefix.as_slice()), upper())).expect("range") {
            let (k, v) = entry.expect("entry");
            total += (k.value().len() + v.value().len()) as u64;
        }
    }
    let tokens = r.open_table(TOKENS).expect("table");
    for entry in tokens.range::<&[u8]>((Bound::Included(ns.prefix.as_slice()), upper())).expect("range") {
        total += (entry.expect("entry").0.value().len() + 8) as u64;
    }
    total
}

#[test]
fn a_failing_mutate_applies_nothing() {
    let (store, _dir) = open();
    let ns = incarnation("t/atomic", 1);
    store.provision(&ns, &[]).expect("provision");
    store.mutate(&ns, "r", &[put("b", b"old", None)], &at(1)).expect("mutate");
    let before = store.storage_bytes(&ns).expect("storage");

    // Damage b's stored header: the second mutation of the list fails
    // after the first one was written in the same transaction.
    let w = store.db.begin_write().expect("write");
    {
        let mut items = w.open_table(ITEMS).expect("items");
        let key = join(&record_key(&ns.prefix, "r").expect("record"), b"b");
        items.insert(key.as_slice(), b"\xffdamaged".as_slice()).expect("insert");
    }
    w.commit().expect("commit");

    let mutations = [put("a", &[7; 5000], None), put("b", b"new", None)];
    let result = store.mutate(&ns, "r", &mutations, &WriteStamp { generation_time: 2, token: Some("t".into()) });
    assert!(matches!(result, Err(EmbeddedError::Corrupt(_))), "{result:?}");
    let r = store.db.begin_read().expect("read");
    let items = r.open_table(ITEMS).expect("items");
    let a = join(&record_key(&ns.prefix, "r").expect("record"), b"a");
    assert!(items.get(a.as_slice()).expect("get").is_none(), "the first mutation was not applied");
    assert_eq!(rows(&store, CHUNKS, &ns), 0, "nor its chunks");
    assert_eq!(rows(&store, TOKENS, &ns), 0, "nor its token");
    assert_eq!(store.storage_bytes(&ns).expect("storage"), before);
}

#[test]
fn storage_counter_matches_the_tables() {
    let (store, _dir) = open();
    let ns = incarnation("t/counter", 1);
    store.provision(&ns, &[]).expect("provision");
    let check = |what: &str| assert_eq!(store.storage_bytes(&ns).expect("storage"), counted(&store, &ns), "{what}");
    let big = vec![3; 5000];
    store.mutate(&ns, "r", &[put("a", &big, None), put("b", b"x", Some(10))], &at(1)).expect("mutate");
    check("puts");
    store.mutate(&ns, "r", &[put("a", b"small", None)], &at(2)).expect("mutate");
    check("overwrite");
    let stamp = WriteStamp { generation_time: 3, token: Some("tok".into()) };
    store.mutate(&ns, "r", &[Mutation::Delete(b"a".to_vec()), put("c", &big, None)], &stamp).expect("mutate");
    check("delete with token");
    store
        .mutate(&ns, "r", &[Mutation::DeleteRange(KeyRange { start: b"c".to_vec(), end: None })], &at(4))
        .expect("mutate");
    check("range delete");
    store.reclaim(20).expect("reclaim");
    check("reclaim");
    store.reclaim(i64::MAX).expect("reclaim");
    check("reclaim all");
}

#[test]
fn reclaim_forgets_everything_past_retention() {
    let (store, _dir) = open();
    let ns = incarnation("t/retention", 1);
    store.provision(&ns, &[]).expect("provision");
    let now = now_micros();
    let stamp = WriteStamp { generation_time: now, token: Some("tok".into()) };
    let mutations = [
        put("expiring", &[1; 3000], Some(now + 10)),
        put("deleted", b"x", None),
        Mutation::Delete(b"deleted".to_vec()),
        Mutation::DeleteRange(KeyRange { start: b"m".to_vec(), end: Some(b"n".to_vec()) }),
    ];
    store.mutate(&ns, "r", &mutations, &stamp).expect("mutate");
    assert_eq!(keys(&store, &ns, "r", now), ["expiring"]);

    // Expired, but its tombstone keeps older writes out for a while.
    assert_eq!(store.reclaim(now + 10).expect("reclaim"), 1);
    assert_eq!(rows(&store, CHUNKS, &ns), 0);
    store.mutate(&ns, "r", &[put("expiring", b"older", None)], &at(now - 1)).expect("mutate");
    assert_eq!(keys(&store, &ns, "r", now + 10), Vec::<String>::new());

    // Two days on, tombstones, range tombstones and tokens are gone.
    assert_eq!(store.reclaim(now + 48 * HOUR).expect("reclaim"), 0);
    assert_eq!(store.storage_bytes(&ns).expect("storage"), 0);
    assert_eq!(rows(&store, ITEMS, &ns), 0);
    assert_eq!(rows(&store, DUE, &ns), 0);
    store.mutate(&ns, "r", &[put("deleted", b"back", None), put("m1", b"back", None)], &stamp).expect("mutate");
    assert_eq!(keys(&store, &ns, "r", now), ["deleted", "m1"], "the token and both deletes are forgotten");
}

#[test]
fn reclaim_works_through_many_batches() {
    let (store, _dir) = open();
    let ns = incarnation("t/batches", 1);
    store.provision(&ns, &[]).expect("provision");
    let n = RECLAIM_BATCH * 2 + 10;
    let mutations: Vec<Mutation> = (0..n).map(|i| put(&format!("k{i:05}"), b"v", Some(100))).collect();
    store.mutate(&ns, "r", &mutations, &at(1)).expect("mutate");
    store.mutate(&ns, "other", &[put("k", b"v", Some(100))], &at(1)).expect("mutate");
    assert_eq!(store.reclaim(100).expect("reclaim"), n as u64 + 1);
    assert_eq!(keys(&store, &ns, "r", 0), Vec::<String>::new());
}

#[test]
fn the_due_index_follows_rewrites() {
    let (store, _dir) = open();
    let ns = incarnation("t/due", 1);
    store.provision(&ns, &[]).expect("provision");
    store.mutate(&ns, "r", &[put("a", b"1", Some(100)), put("b", b"1", Some(100))], &at(1)).expect("mutate");
    assert_eq!(rows(&store, DUE, &ns), 2);
    store.mutate(&ns, "r", &[put("a", b"2", None), put("b", b"2", Some(200))], &at(2)).expect("mutate");
    assert_eq!(rows(&store, DUE, &ns), 1, "a no longer expires; b expires once, later");
    store.deprovision(&ns).expect("deprovision");
    assert_eq!(rows(&store, DUE, &ns), 0);
}

#[test]
fn a_newer_incarnation_removes_older_ones() {
    let (store, _dir) = open();
    let old = incarnation("t/again", 1);
    let new = incarnation("t/again", 2);
    let other = incarnation("t/again-not", 1);
    for ns in [&old, &other] {
        store.provision(ns, &[]).expect("provision");
        store.mutate(ns, "r", &[put("k", &[1; 4000], None)], &at(1)).expect("mutate");
    }
    store.provision(&new, &[]).expect("provision");
    assert_eq!(rows(&store, ITEMS, &old), 0);
    assert_eq!(rows(&store, CHUNKS, &old), 0);
    assert!(matches!(store.storage_bytes(&old), Err(EmbeddedError::NotProvisioned(_))));
    assert_eq!(keys(&store, &other, "r", 0), ["k"], "a name the old one prefixes is untouched");
}

/// A migration's target (a newer incarnation) provisioned beside its live
/// source keeps the source whole; an older incarnation that is not live
/// still goes.
#[test]
fn a_newer_incarnation_beside_a_live_one_keeps_it() {
    let (store, _dir) = open();
    let dead = incarnation("t/moving", 1);
    let source = incarnation("t/moving", 2);
    let target = incarnation("t/moving", 9);
    // The newer first: provisioning the source would remove the dead one.
    for ns in [&source, &dead] {
        store.provision(ns, &[]).expect("provision");
    }
    store.mutate(&dead, "r", &[put("k", &[1; 4000], None)], &at(1)).expect("mutate");
    store.mutate(&source, "r", &[put("k", &[2; 4000], None), put("small", b"s", None)], &at(1)).expect("mutate");
    let bytes = store.storage_bytes(&source).expect("storage bytes");
    store.provision(&target, &[2]).expect("provision the target");
    assert_eq!(keys(&store, &source, "r", 0), ["k", "small"], "the live source keeps its data");
    assert_eq!(store.storage_bytes(&source).expect("still provisioned"), bytes);
    assert_eq!(rows(&store, ITEMS, &dead), 0, "a dead incarnation still goes");
    assert!(matches!(store.storage_bytes(&dead), Err(EmbeddedError::NotProvisioned(_))));
    assert_eq!(keys(&store, &target, "r", 0), Vec::<String>::new());
}

#[test]
fn zero_limits_still_make_progress() {
    let (store, _dir) = open();
    let ns = incarnation("t/limits", 1);
    store.provision(&ns, &[]).expect("provision");
    store.mutate(&ns, "r", &[put("a", b"1", None), put("b", b"2", None)], &at(1)).expect("mutate");
    let limits = PageLimits::new(0, Some(0));
    let page = store.get(&ns, "r", &Selector::All, None, limits, 0, &Cancelled::default()).expect("get");
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.next, Some(b"a".to_vec()));
    let page = store.scan(&ns, None, limits, 0, &Cancelled::default()).expect("scan");
    assert_eq!(page.records.len(), 1);
    assert!(page.next.is_some());
}

/// A read whose caller dropped it (the request was cancelled or timed
/// out) stops on its blocking thread instead of reading on: the flag its
/// future raised when dropped is read before every record.
#[test]
fn a_dropped_read_stops() {
    let (store, _dir) = open();
    let ns = incarnation("t/cancel", 1);
    store.provision(&ns, &[]).expect("provision");
    let items: Vec<Mutation> = (0..100).map(|i| put(&format!("k{i:03}"), b"v", None)).collect();
    store.mutate(&ns, "r", &items, &at(1)).expect("mutate");
    let (guard, cancelled) = CancelOnDrop::new();
    let limits = PageLimits::new(u64::MAX, None);
    let page = store.get(&ns, "r", &Selector::All, None, limits, 0, &cancelled).expect("get while waited for");
    assert_eq!(page.items.len(), 100);
    drop(guard);
    let gave_up = |r: Result<_>| matches!(r, Err(EmbeddedError::GaveUp(_)));
    assert!(gave_up(store.get(&ns, "r", &Selector::All, None, limits, 0, &cancelled).map(drop)));
    assert!(gave_up(store.scan(&ns, None, limits, 0, &cancelled).map(drop)));
}
