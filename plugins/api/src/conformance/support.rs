//! What the conformance cases share: a fresh namespace per case, writes
//! stamped near the real clock, and reads that follow every page and check
//! each against the pagination rules of [`crate::kv`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prism_proto::control::{Abstraction, NamespaceSpec, Policies};

use crate::kv::{Item, KeyValue, Mutation, NewItem, PageLimits, ScanCursor, Selector, WriteStamp};
use crate::{Micros, Namespace, Plugin, PluginError, now_micros};

pub const KIB: usize = 1 << 10;
pub const MIB: usize = 1 << 20;

/// Max item size of the namespaces the cases make: room for a 3 MiB value.
pub const MAX_ITEM_SIZE: i64 = 4 << 20;

/// An hour in microseconds: how far in the future "not yet expired" is.
pub const HOUR: Micros = 3_600_000_000;

/// Limits no case's data reaches: one page holds everything.
pub const UNLIMITED: PageLimits = PageLimits { max_bytes: u64::MAX, max_items: None };

/// Pages a read may take before the suite calls it an endless loop.
const MAX_PAGES: usize = 100_000;

static SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// A key-value namespace named after `case` and unique across processes
/// and runs, not yet provisioned.
pub fn namespace(plugin: &dyn Plugin, case: &str) -> Namespace {
    let seq = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    let stamp = u64::try_from(now_micros()).unwrap_or_default();
    let mut part: String = case.chars().map(|c| if c == '_' { '-' } else { c }).take(36).collect();
    part = part.trim_end_matches('-').to_owned();
    Namespace {
        name: format!("conf/{part}-{stamp:x}-{seq}"),
        create_revision: stamp.max(1),
        spec: NamespaceSpec {
            abstraction: Abstraction::KeyValue as i32,
            backend: plugin.capabilities().backend as i32,
            policies: Some(Policies { max_item_size_bytes: MAX_ITEM_SIZE, ..Policies::default() }),
            ..NamespaceSpec::default()
        },
    }
}

/// `len` bytes that differ with `seed` and with position, so a misplaced
/// chunk or byte shows.
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
/// follows has reached a bound; no page went on after reaching one; an
/// empty page is the last.
pub fn check_page(what: &str, items: &[&Item], limits: PageLimits, has_next: bool) {
    let total: u64 = items.iter().map(|i| item_bytes(i)).sum();
    if let Some(max) = limits.max_items {
        assert!(items.len() <= max as usize, "{what}: {} items on a page of at most {max}", items.len());
    }
    if has_next {
        assert!(!items.is_empty(), "{what}: an empty page says more follows");
        let full = total >= limits.max_bytes || limits.max_items.is_some_and(|m| items.len() >= m as usize);
        assert!(full, "{what}: a page of {total} bytes, {} items says more follows but reached no bound", items.len());
    }
    if let Some((last, before)) = items.split_last() {
        let before_bytes: u64 = before.iter().map(|i| item_bytes(i)).sum();
        assert!(
            before_bytes < limits.max_bytes,
            "{what}: the page went on after reaching {} bytes ({before_bytes} before its last item of {})",
            limits.max_bytes,
            item_bytes(last)
        );
    }
}

/// One case's namespace on one plugin.
pub struct Case {
    pub plugin: Arc<dyn Plugin>,
    pub ns: Namespace,
    /// The case's clock: generation times are `base + offset`.
    pub base: Micros,
}

impl Case {
    /// A fresh namespace named after `case`, provisioned.
    pub async fn provision(plugin: Arc<dyn Plugin>, case: &str) -> Self {
        let ns = namespace(plugin.as_ref(), case);
        let case = Self::unprovisioned(plugin, ns);
        case.plugin.provision(&case.ns).await.expect("provision");
        case
    }

    /// A case on `ns`, which the caller provisions (or not).
    pub fn unprovisioned(plugin: Arc<dyn Plugin>, ns: Namespace) -> Self {
        Self { plugin, ns, base: now_micros() }
    }

    pub fn kv(&self) -> &dyn KeyValue {
        self.plugin.key_value().expect("a plugin under the KeyValue suite serves KeyValue")
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
        self.kv().mutate(&self.ns, id, mutations, stamp).await.expect("mutate");
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
            let page = self.kv().get(&self.ns, id, selector, after.as_deref(), limits, now).await.expect("get");
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
            let page = self.kv().scan(&self.ns, after.as_ref(), limits, now).await.expect("scan");
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
        self.kv().storage_bytes(&self.ns).await.expect("storage_bytes")
    }

    /// Deprovisions the namespace.
    pub async fn finish(self) {
        self.plugin.deprovision(&self.ns).await.expect("deprovision");
    }
}

/// Asserts `result` failed with [`PluginError::NotProvisioned`].
pub fn assert_not_provisioned<T: std::fmt::Debug>(what: &str, result: crate::Result<T>) {
    match result {
        Err(PluginError::NotProvisioned(_)) => {}
        other => panic!("{what}: want NotProvisioned, got {other:?}"),
    }
}
