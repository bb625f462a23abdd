//! The read cache of KeyValue records, for namespaces with
//! `cache_enabled`. The unit is a whole record (when it is at most
//! `max_record_bytes`), so a write invalidates exactly one entry and any
//! selector or page of that record is answered from it.
//!
//! - Bounded in bytes (moka weigher), per-namespace TTL (`cache_ttl`).
//! - Concurrent misses on one record make one backend read (moka's
//!   single-flight `try_get_with`).
//! - A read that raced a write cannot leave stale data behind: writers bump
//!   a striped counter after the backend write and then invalidate; every
//!   reader notes the counter before its load and, if it moved, invalidates
//!   what it may have inserted.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::future::Cache;
use moka::notification::RemovalCause;
use prism_plugin_api::PluginError;
use prism_plugin_api::kv::Item;

use crate::config::CacheConfig;
use crate::snapshot::NamespaceEntry;

const STRIPES: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct RecordKey {
    namespace: String,
    create_revision: u64,
    owner_since: u64,
    id: String,
}

/// A [`RecordKey`] borrowed from the request: a hit looks the record up
/// without copying the namespace name and id (issue 14, item 8). Its
/// fields hash in the same order as the key's, and `str` hashes as
/// `String` does, so both find the same entry.
#[derive(Debug, Clone, Copy, Hash)]
struct RecordRef<'a> {
    namespace: &'a str,
    create_revision: u64,
    owner_since: u64,
    id: &'a str,
}

impl<'a> RecordRef<'a> {
    fn new(entry: &'a NamespaceEntry, id: &'a str) -> Self {
        Self {
            namespace: &entry.ns.name,
            create_revision: entry.ns.create_revision,
            owner_since: entry.owner_since,
            id,
        }
    }

    fn to_key(self) -> RecordKey {
        RecordKey {
            namespace: self.namespace.to_owned(),
            create_revision: self.create_revision,
            owner_since: self.owner_since,
            id: self.id.to_owned(),
        }
    }
}

impl equivalent::Equivalent<RecordKey> for RecordRef<'_> {
    fn equivalent(&self, key: &RecordKey) -> bool {
        self.id == key.id
            && self.create_revision == key.create_revision
            && self.owner_since == key.owner_since
            && self.namespace == key.namespace
    }
}

/// What the cache holds for a record.
#[derive(Debug, Clone)]
pub enum Cached {
    /// Every item of the record, in key order (possibly none).
    Items(Arc<Vec<Item>>),
    /// Larger than `max_record_bytes`: read it from the backend.
    TooLarge,
}

#[derive(Debug, Clone)]
struct Entry {
    value: Cached,
    ttl: Duration,
    weight: u32,
}

struct PerEntryTtl;

impl Expiry<RecordKey, Entry> for PerEntryTtl {
    fn expire_after_create(&self, _: &RecordKey, value: &Entry, _: Instant) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// Hit, miss and eviction counters.
#[derive(Debug, Default)]
pub struct CacheStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    /// Backend reads made to fill the cache (concurrent misses share one).
    pub loads: AtomicU64,
    pub evictions: Arc<AtomicU64>,
}

/// Keys are hashed with xxhash64 under a per-process random seed: the id
/// is the client's, so the hash must be keyed (no crafted collisions), and
/// it costs less than std's SipHash on every cached read (issue 14).
type KeyHasher = twox_hash::xxhash64::State;

pub struct ReadCache {
    cache: Option<Cache<RecordKey, Entry, KeyHasher>>,
    stripes: Vec<AtomicU64>,
    max_record_bytes: u64,
    pub stats: CacheStats,
}

impl std::fmt::Debug for ReadCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadCache").field("stats", &self.stats).finish_non_exhaustive()
    }
}

impl ReadCache {
    pub fn new(config: &CacheConfig) -> Self {
        let stats = CacheStats::default();
        let evictions = stats.evictions.clone();
        let cache = (config.max_bytes > 0).then(|| {
            Cache::builder()
                .max_capacity(config.max_bytes)
                .weigher(|_: &RecordKey, e: &Entry| e.weight)
                .expire_after(PerEntryTtl)
                .support_invalidation_closures()
                .eviction_listener(move |_, _, cause| {
                    if cause == RemovalCause::Size {
                        evictions.fetch_add(1, Ordering::Relaxed);
                    }
                })
                .build_with_hasher(KeyHasher::with_seed(rand::random()))
        });
        Self {
            cache,
            stripes: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            max_record_bytes: config.max_record_bytes,
            stats,
        }
    }

    /// Bytes the cache holds, as weighed (an estimate moka keeps).
    pub fn weighted_size(&self) -> u64 {
        self.cache.as_ref().map_or(0, |c| c.weighted_size())
    }

    /// Records the cache holds.
    pub fn entry_count(&self) -> u64 {
        self.cache.as_ref().map_or(0, |c| c.entry_count())
    }

    pub fn max_record_bytes(&self) -> u64 {
        self.max_record_bytes
    }

    fn stripe(&self, key: RecordRef<'_>) -> &AtomicU64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        &self.stripes[(h.finish() as usize) % STRIPES]
    }

    /// The cached record, loading it with `load` on a miss (one load for
    /// concurrent misses). `None` when the cache is off.
    pub async fn get_or_load<F, Fut>(
        &self,
        entry: &NamespaceEntry,
        id: &str,
        ttl: Duration,
        load: F,
    ) -> Result<Option<Cached>, Arc<PluginError>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Cached, PluginError>>,
    {
        let Some(cache) = &self.cache else { return Ok(None) };
        let key = RecordRef::new(entry, id);
        if let Some(hit) = cache.get(&key).await {
            self.stats.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(Some(hit.value));
        }
        self.stats.misses.fetch_add(1, Ordering::Relaxed);
        // Boxed: moka's loading future is large, and inline it would make
        // every caller's future (a hit's too) that large to allocate and
        // copy.
        Box::pin(self.load(cache, key, ttl, load)).await
    }

    /// A miss: one load for concurrent misses, then the race check.
    async fn load<F, Fut>(
        &self,
        cache: &Cache<RecordKey, Entry, KeyHasher>,
        key: RecordRef<'_>,
        ttl: Duration,
        load: F,
    ) -> Result<Option<Cached>, Arc<PluginError>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Cached, PluginError>>,
    {
        let stripe = self.stripe(key);
        let before = stripe.load(Ordering::Acquire);
        let loaded = cache
            .try_get_with(key.to_key(), async {
                self.stats.loads.fetch_add(1, Ordering::Relaxed);
                let value = load().await?;
                let weight = match &value {
                    Cached::Items(items) => {
                        items.iter().map(|i| i.key.len() + i.value.len() + 32).sum::<usize>() + key.id.len() + 64
                    }
                    Cached::TooLarge => key.id.len() + 64,
                };
                Ok(Entry { value, ttl, weight: u32::try_from(weight).unwrap_or(u32::MAX) })
            })
            .await?;
        if stripe.load(Ordering::Acquire) != before {
            // A write to this stripe finished while we loaded: what was
            // inserted may predate it.
            cache.invalidate(&key).await;
        }
        Ok(Some(loaded.value))
    }

    /// Forgets record `id` after a write to it (call after the backend
    /// write completes or fails).
    pub async fn invalidate(&self, entry: &NamespaceEntry, id: &str) {
        let Some(cache) = &self.cache else { return };
        let key = RecordRef::new(entry, id);
        self.stripe(key).fetch_add(1, Ordering::AcqRel);
        cache.invalidate(&key).await;
    }

    /// Drops every cached record of `namespace` (this shard lost it).
    pub fn drop_namespace(&self, namespace: &str) {
        if let Some(cache) = &self.cache {
            let namespace = namespace.to_owned();
            if let Err(e) = cache.invalidate_entries_if(move |k, _| k.namespace == namespace) {
                tracing::warn!(error = %e, "could not drop a lost namespace's cached records; they expire by TTL");
            }
        }
    }

    /// Drops every entry.
    pub fn clear(&self) {
        if let Some(cache) = &self.cache {
            cache.invalidate_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use super::*;

    #[test]
    fn a_borrowed_key_hashes_and_compares_as_its_owned_key() {
        let hasher = KeyHasher::with_seed(7);
        let borrowed = RecordRef { namespace: "acme/users", create_revision: 3, owner_since: 9, id: "ada" };
        let owned = borrowed.to_key();
        assert_eq!(hasher.hash_one(borrowed), hasher.hash_one(&owned));
        assert!(equivalent::Equivalent::equivalent(&borrowed, &owned));
        for other in [
            RecordRef { id: "bob", ..borrowed },
            RecordRef { namespace: "acme/other", ..borrowed },
            RecordRef { create_revision: 4, ..borrowed },
            RecordRef { owner_since: 10, ..borrowed },
        ] {
            assert!(!equivalent::Equivalent::equivalent(&other, &owned), "{other:?}");
        }
    }
}
