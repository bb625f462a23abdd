//! KeyValue on redb: one file, one write transaction per mutate.
//!
//! # Layout
//!
//! Every key starts with the namespace *incarnation* prefix
//! `name ‖ 0x00 ‖ create_revision (u64 BE)`, so deprovisioning deletes one
//! key range per table and a namespace created again (new revision) starts
//! empty. Tables:
//!
//! - `kv_namespaces`: prefix → bytes stored. A namespace is provisioned
//!   exactly when it has an entry, whatever its abstraction: TimeSeries
//!   ([`crate::ts`]) shares this registry, and provisioning and
//!   deprovisioning here clear its tables too. The counter is kept in every
//!   write transaction (keys + values of the four data tables below, or of
//!   the TimeSeries event tables), so `storage_bytes` is one read.
//! - `kv_items`: `prefix ‖ id ‖ 0x00 ‖ key` → header ‖ inline value. Ids
//!   never hold NUL (refused as invalid), so byte order is (id, key) order
//!   and a record is the range `prefix ‖ id ‖ 0x00 ..`. The header holds
//!   the generation time, `expires_at`, a tombstone flag, the chunk count
//!   and the value length (`codec::Header`).
//! - `kv_chunks`: `item key ‖ index (u32 BE)` → up to `chunk_threshold_bytes`
//!   of a value longer than the threshold. Chunks are always addressed one
//!   by one from the header's count, so a rewrite or delete frees exactly
//!   the old ones.
//! - `kv_range_tombstones`: `prefix ‖ id ‖ 0x00` → the record's range
//!   deletes still remembered, `(start, end, generation)` each; a new one
//!   replaces those it covers at an older generation.
//! - `kv_tokens`: `prefix ‖ id ‖ 0x00 ‖ token` → when the token may be
//!   forgotten: `max(applied at, generation time) + token_retention`.
//! - `kv_due`: `prefix ‖ kind ‖ when (i64, sortable) ‖ rest` → (): what falls
//!   due when (an item's expiry, a tombstone's or token's end of
//!   retention), so reclamation reads only what is due. An entry is a hint:
//!   reclamation re-checks the thing it names.
//!
//! # Writes
//!
//! A mutate is one write transaction (all or nothing; redb serialises
//! writers). If the stamp's token is already in `kv_tokens`, nothing
//! happens. Each mutation then wins against the state before the mutate —
//! the item's stored generation (value or point tombstone) and any range
//! tombstone covering the key, equal times keeping what is stored — or
//! always wins over an earlier mutation of the same list (they share one
//! generation time and apply in order). A winning delete writes a point
//! tombstone; a range delete removes the older items in its range and
//! records a range tombstone.
//!
//! # Reclamation
//!
//! `reclaim(now)` walks the due entries up to `now`, in batches of one
//! transaction each: an expired item becomes a tombstone carrying its
//! generation time (so an older write arriving late still loses) until
//! that is past `tombstone_retention`; tombstones and tokens past their
//! retention are removed.
//!
//! # Concurrency
//!
//! Reads are redb read transactions: a consistent snapshot, never blocked
//! by the writer, at most `max_concurrent_reads` at once. Writes (mutate,
//! provision, deprovision, each reclaim batch) take turns on one async
//! permit before they occupy a blocking thread, since redb runs one write
//! transaction at a time anyway; every commit is fsynced.
//!
//! `storage_bytes` counts the keys and values of the four data tables
//! (items with their headers, chunks, range tombstones, tokens), not the
//! due index nor redb's own pages.

// Public, hidden, for the fuzz targets (fuzz/cases): they decode arbitrary
// bytes with the store's own codecs. Not an API.
#[doc(hidden)]
pub mod codec;
#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::ops::Bound;
use std::sync::Arc;

use async_trait::async_trait;
use prism_plugin_api::kv::{
    Held, Item, ItemsPage, KeyRange, KeyValue, KeyValueHandle, Mutation, PageLimits, Record, RecordVersions,
    RecordsPage, ScanCursor, Selector, Version, VersionCursor, VersionsPage, WriteStamp, restore_plan,
};
use prism_plugin_api::pace::{Cancelled, Pace};
use prism_plugin_api::{Micros, Namespace, now_micros};
use redb::{Database, ReadableDatabase, ReadableTable, Table, TableDefinition, WriteTransaction};

use self::codec::{
    Due, Header, RangeTombstone, chunk_key, due_key, due_rest, join, name_prefix, namespace_prefix, prefix_end,
    record_key, split_item,
};
use crate::config::EmbeddedConfig;
use crate::error::{EmbeddedError, Result, storage};
use crate::{EmbeddedPlugin, Opened};

/// File name of the store inside the data directory.
pub const FILE_NAME: &str = "embedded.redb";

pub(crate) type Bytes = &'static [u8];

/// The namespace registry, shared with TimeSeries (see the module docs).
pub(crate) const NAMESPACES: TableDefinition<Bytes, u64> = TableDefinition::new("kv_namespaces");
const ITEMS: TableDefinition<Bytes, Bytes> = TableDefinition::new("kv_items");
const CHUNKS: TableDefinition<Bytes, Bytes> = TableDefinition::new("kv_chunks");
const RANGES: TableDefinition<Bytes, Bytes> = TableDefinition::new("kv_range_tombstones");
const TOKENS: TableDefinition<Bytes, i64> = TableDefinition::new("kv_tokens");
const DUE: TableDefinition<Bytes, ()> = TableDefinition::new("kv_due");

/// Due entries one reclaim transaction handles at most, so that it never
/// holds writers back for long.
const RECLAIM_BATCH: usize = 4096;

/// The redb database and the settings the KeyValue code needs.
pub(crate) struct Store {
    pub(crate) db: Database,
    chunk_threshold: usize,
    tombstone_retention: Micros,
    token_retention: Micros,
}

fn micros(d: std::time::Duration) -> Micros {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// A namespace incarnation as the store addresses it.
pub(crate) struct Incarnation {
    pub(crate) prefix: Vec<u8>,
    pub(crate) name: String,
    name_prefix: Vec<u8>,
}

impl Incarnation {
    pub(crate) fn of(ns: &Namespace) -> Result<Self> {
        Ok(Self { prefix: namespace_prefix(ns)?, name: ns.name.clone(), name_prefix: name_prefix(ns) })
    }
}

/// Every table, opened in one write transaction.
struct Tables<'t> {
    namespaces: Table<'t, Bytes, u64>,
    items: Table<'t, Bytes, Bytes>,
    chunks: Table<'t, Bytes, Bytes>,
    ranges: Table<'t, Bytes, Bytes>,
    tokens: Table<'t, Bytes, i64>,
    due: Table<'t, Bytes, ()>,
}

impl<'t> Tables<'t> {
    fn open(w: &'t WriteTransaction) -> Result<Self> {
        Ok(Self {
            namespaces: w.open_table(NAMESPACES).map_err(storage)?,
            items: w.open_table(ITEMS).map_err(storage)?,
            chunks: w.open_table(CHUNKS).map_err(storage)?,
            ranges: w.open_table(RANGES).map_err(storage)?,
            tokens: w.open_table(TOKENS).map_err(storage)?,
            due: w.open_table(DUE).map_err(storage)?,
        })
    }

    /// Removes every key of the incarnation `prefix`, and its registration.
    fn purge(&mut self, prefix: &[u8]) -> Result<()> {
        purge_range(&mut self.items, prefix)?;
        purge_range(&mut self.chunks, prefix)?;
        purge_range(&mut self.ranges, prefix)?;
        purge_range(&mut self.tokens, prefix)?;
        purge_range(&mut self.due, prefix)?;
        self.namespaces.remove(prefix).map_err(storage)?;
        Ok(())
    }
}

/// The create revision an incarnation's prefix ends with
/// (`name ‖ 0x00 ‖ create_revision`, u64 BE).
fn revision_of(prefix: &[u8]) -> u64 {
    let tail: [u8; 8] = prefix[prefix.len().saturating_sub(8)..].try_into().unwrap_or_default();
    u64::from_be_bytes(tail)
}

/// Removes every key of `table` starting with `prefix`; returns the bytes
/// (keys and values) it held.
pub(crate) fn purge_range<V: redb::Value + 'static>(table: &mut Table<'_, Bytes, V>, prefix: &[u8]) -> Result<u64> {
    let end = prefix_end(prefix);
    let upper = end.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
    let mut freed = 0u64;
    table
        .retain_in::<&[u8], _>((Bound::Included(prefix), upper), |key, value| {
            freed += (key.len() + V::as_bytes(&value).as_ref().len()) as u64;
            false
        })
        .map_err(storage)?;
    Ok(freed)
}

/// Adds `delta` to the bytes the namespace `prefix` stores.
pub(crate) fn count_bytes(namespaces: &mut Table<'_, Bytes, u64>, prefix: &[u8], delta: i64) -> Result<()> {
    if delta == 0 {
        return Ok(());
    }
    let current = namespaces.get(prefix).map_err(storage)?.map(|g| g.value()).unwrap_or(0);
    namespaces.insert(prefix, current.saturating_add_signed(delta)).map_err(storage)?;
    Ok(())
}

/// The bytes stored in the namespace, or `NotProvisioned`.
pub(crate) fn registered(table: &impl ReadableTable<Bytes, u64>, ns: &Incarnation) -> Result<u64> {
    match table.get(ns.prefix.as_slice()).map_err(storage)? {
        Some(bytes) => Ok(bytes.value()),
        None => Err(EmbeddedError::NotProvisioned(ns.name.clone())),
    }
}

fn insert_counted(table: &mut Table<'_, Bytes, Bytes>, key: &[u8], value: &[u8], delta: &mut i64) -> Result<()> {
    let old = table.insert(key, value).map_err(storage)?.map(|old| old.value().len());
    *delta += (key.len() + value.len()) as i64 - old.map_or(0, |len| (key.len() + len) as i64);
    Ok(())
}

fn remove_counted(table: &mut Table<'_, Bytes, Bytes>, key: &[u8], delta: &mut i64) -> Result<()> {
    if let Some(old) = table.remove(key).map_err(storage)? {
        *delta -= (key.len() + old.value().len()) as i64;
    }
    Ok(())
}

/// A value as stored: inline after its header, or in its chunks.
fn read_value(
    header: &Header,
    inline: &[u8],
    item_key: &[u8],
    chunks: &impl ReadableTable<Bytes, Bytes>,
) -> Result<Vec<u8>> {
    if header.chunks == 0 {
        return Ok(inline.to_vec());
    }
    let len = usize::try_from(header.len).map_err(|_| EmbeddedError::Corrupt("a value length overflows".into()))?;
    let mut value = Vec::with_capacity(len.min(1 << 30));
    for index in 0..header.chunks {
        let chunk = chunks
            .get(chunk_key(item_key, index).as_slice())
            .map_err(storage)?
            .ok_or_else(|| EmbeddedError::Corrupt(format!("chunk {index} of a value is missing")))?;
        value.extend_from_slice(chunk.value());
    }
    if value.len() != len {
        return Err(EmbeddedError::Corrupt("a chunked value's length differs from its header".into()));
    }
    Ok(value)
}

/// Fills one page: stops once the bytes or the item count reach the
/// limits, with the item that reached them, or once the soft deadline has
/// passed with an item on the page ([`prism_plugin_api::pace`]).
pub(crate) struct Pager {
    max_bytes: u64,
    max_items: usize,
    bytes: u64,
    items: usize,
    pace: Pace,
    /// A further item exists past the page.
    pub(crate) more: bool,
}

impl Pager {
    /// A page of `limits`; the read gives up once `cancelled` is raised
    /// (its caller dropped it) or its hard deadline passes.
    pub(crate) fn new(limits: PageLimits, cancelled: &Cancelled) -> Self {
        // A zero limit would make pages that never advance: a page holds
        // at least one item.
        let max_items = limits.max_items.map_or(usize::MAX, |m| (m as usize).max(1));
        let pace = limits.pace().cancelled_by(cancelled.clone());
        Self { max_bytes: limits.max_bytes.max(1), max_items, bytes: 0, items: 0, pace, more: false }
    }

    /// Whether the page takes no further item: a bound is reached, or the
    /// soft deadline has passed.
    pub(crate) fn full(&self) -> bool {
        self.bytes >= self.max_bytes || self.items >= self.max_items || self.pace.should_end(self.items)
    }

    /// Counts one item (or event) of `bytes` into the page.
    pub(crate) fn add(&mut self, bytes: usize) {
        self.bytes = self.bytes.saturating_add(bytes as u64);
        self.items += 1;
        self.pace.added();
    }

    /// Asked before each record the read looks at, visible or not: an
    /// error once the read should give up (a loop over expired items or a
    /// selective filter stops too).
    pub(crate) fn check(&self) -> Result<()> {
        self.pace.check().map_err(EmbeddedError::GaveUp)
    }
}

/// One namespace's share of a write transaction: every change of its
/// stored bytes lands in `delta`, written to its counter by [`Self::finish`].
struct Scope<'a, 't> {
    t: &'a mut Tables<'t>,
    prefix: &'a [u8],
    store: &'a Store,
    delta: i64,
}

impl<'a, 't> Scope<'a, 't> {
    fn new(t: &'a mut Tables<'t>, prefix: &'a [u8], store: &'a Store) -> Self {
        Self { t, prefix, store, delta: 0 }
    }

    /// What follows the namespace prefix in `key`.
    fn rest<'k>(&self, key: &'k [u8]) -> &'k [u8] {
        key.get(self.prefix.len()..).unwrap_or_default()
    }

    fn load(&self, item_key: &[u8]) -> Result<Option<Header>> {
        match self.t.items.get(item_key).map_err(storage)? {
            Some(stored) => Ok(Some(Header::decode(stored.value())?.0)),
            None => Ok(None),
        }
    }

    /// The due entry an item with `header` has, if any.
    fn due_of(&self, item_key: &[u8], header: &Header) -> Option<Vec<u8>> {
        let rest = self.rest(item_key);
        if header.tombstone {
            let when = header.generation.saturating_add(self.store.tombstone_retention);
            Some(due_key(self.prefix, Due::Tombstone, when, rest))
        } else {
            header.expires_at.map(|at| due_key(self.prefix, Due::Expiry, at, rest))
        }
    }

    /// Frees what an item's old version holds besides its entry: chunks
    /// and due entry.
    fn release(&mut self, item_key: &[u8], old: &Header) -> Result<()> {
        for index in 0..old.chunks {
            remove_counted(&mut self.t.chunks, &chunk_key(item_key, index), &mut self.delta)?;
        }
        if let Some(due) = self.due_of(item_key, old) {
            self.t.due.remove(due.as_slice()).map_err(storage)?;
        }
        Ok(())
    }

    /// Writes an item (value or tombstone), replacing any old version.
    fn store(&mut self, item_key: &[u8], mut header: Header, value: &[u8]) -> Result<()> {
        if let Some(old) = self.load(item_key)? {
            self.release(item_key, &old)?;
        }
        header.len = value.len() as u64;
        let threshold = self.store.chunk_threshold;
        if value.len() > threshold {
            let invalid = || EmbeddedError::Invalid { field: "value", description: "is too large to store".into() };
            header.chunks = u32::try_from(value.len().div_ceil(threshold)).map_err(|_| invalid())?;
            for (index, part) in (0..header.chunks).zip(value.chunks(threshold)) {
                insert_counted(&mut self.t.chunks, &chunk_key(item_key, index), part, &mut self.delta)?;
            }
            insert_counted(&mut self.t.items, item_key, &header.encode(&[]), &mut self.delta)?;
        } else {
            header.chunks = 0;
            insert_counted(&mut self.t.items, item_key, &header.encode(value), &mut self.delta)?;
        }
        if let Some(due) = self.due_of(item_key, &header) {
            self.t.due.insert(due.as_slice(), ()).map_err(storage)?;
        }
        Ok(())
    }

    fn remove(&mut self, item_key: &[u8]) -> Result<()> {
        if let Some(old) = self.load(item_key)? {
            self.release(item_key, &old)?;
            remove_counted(&mut self.t.items, item_key, &mut self.delta)?;
        }
        Ok(())
    }

    fn load_ranges(&self, record: &[u8]) -> Result<Vec<RangeTombstone>> {
        match self.t.ranges.get(record).map_err(storage)? {
            Some(stored) => RangeTombstone::decode_all(stored.value()),
            None => Ok(Vec::new()),
        }
    }

    fn save_ranges(&mut self, record: &[u8], list: &[RangeTombstone]) -> Result<()> {
        if list.is_empty() {
            remove_counted(&mut self.t.ranges, record, &mut self.delta)
        } else {
            insert_counted(&mut self.t.ranges, record, &RangeTombstone::encode_all(list), &mut self.delta)
        }
    }

    /// Applies `mutations` to `record` at `generation` (see the module
    /// docs for who wins).
    fn apply(&mut self, record: &[u8], mutations: &[Mutation], generation: Micros) -> Result<()> {
        let ranges_before = self.load_ranges(record)?;
        let covered = |key: &[u8]| ranges_before.iter().any(|r| r.generation >= generation && r.contains(key));
        let mut added: Vec<RangeTombstone> = Vec::new();
        // Keys this mutate wrote: later mutations of the list override them.
        let mut touched: BTreeSet<Vec<u8>> = BTreeSet::new();
        for mutation in mutations {
            match mutation {
                Mutation::Put(item) => {
                    let item_key = join(record, &item.key);
                    let wins = touched.contains(&item.key)
                        || (self.load(&item_key)?.is_none_or(|h| h.generation < generation) && !covered(&item.key));
                    if wins {
                        let header =
                            Header { generation, expires_at: item.expires_at, tombstone: false, chunks: 0, len: 0 };
                        self.store(&item_key, header, &item.value)?;
                        touched.insert(item.key.clone());
                    }
                }
                Mutation::Delete(key) => {
                    let item_key = join(record, key);
                    let wins = touched.contains(key)
                        || match self.load(&item_key)? {
                            Some(h) => h.generation < generation,
                            // Remember the delete unless a newer range
                            // delete already does.
                            None => !covered(key),
                        };
                    if wins {
                        self.store(&item_key, Header::tombstone(generation), &[])?;
                        touched.insert(key.clone());
                    }
                }
                Mutation::DeleteRange(range) => {
                    if range.end.as_ref().is_some_and(|end| *end <= range.start) {
                        continue; // empty
                    }
                    let lower = join(record, &range.start);
                    let upper = match &range.end {
                        Some(end) => Some(join(record, end)),
                        None => prefix_end(record),
                    };
                    let upper_bound = upper.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
                    let mut older = Vec::new();
                    for entry in self
                        .t
                        .items
                        .range::<&[u8]>((Bound::Included(lower.as_slice()), upper_bound))
                        .map_err(storage)?
                    {
                        let (key, stored) = entry.map_err(storage)?;
                        let key = key.value();
                        let (header, _) = Header::decode(stored.value())?;
                        let user_key = key.get(record.len()..).unwrap_or_default();
                        if header.generation < generation || touched.contains(user_key) {
                            older.push(key.to_vec());
                        }
                    }
                    for key in older {
                        self.remove(&key)?;
                    }
                    added.push(RangeTombstone { start: range.start.clone(), end: range.end.clone(), generation });
                }
            }
        }
        if !added.is_empty() {
            let mut list = ranges_before;
            for new in added {
                if list.iter().any(|old| old.dominates(&new)) {
                    continue;
                }
                list.retain(|old| !new.dominates(old));
                let when = new.generation.saturating_add(self.store.tombstone_retention);
                let due = due_key(self.prefix, Due::RangeTombstone, when, self.rest(record));
                self.t.due.insert(due.as_slice(), ()).map_err(storage)?;
                list.push(new);
            }
            self.save_ranges(record, &list)?;
        }
        Ok(())
    }

    fn remember_token(&mut self, token_key: &[u8], generation: Micros) -> Result<()> {
        let forget_after = now_micros().max(generation).saturating_add(self.store.token_retention);
        let old = self.t.tokens.insert(token_key, forget_after).map_err(storage)?.map(|g| g.value());
        if old.is_none() {
            self.delta += (token_key.len() + 8) as i64;
        }
        let due = due_key(self.prefix, Due::Token, forget_after, self.rest(token_key));
        self.t.due.insert(due.as_slice(), ()).map_err(storage)?;
        Ok(())
    }

    /// Handles one due entry of `kind` naming `prefix ‖ rest`; returns how
    /// many expired items it removed.
    /// A `held` namespace keeps its deletes ([`KeyValue::reclaim`]): an
    /// expired item always becomes a tombstone.
    fn settle(&mut self, kind: Due, rest: &[u8], now: Micros, held: bool) -> Result<u64> {
        let key = join(self.prefix, rest);
        let retention = self.store.tombstone_retention;
        match kind {
            Due::Expiry => {
                if let Some(h) = self.load(&key)?
                    && !h.tombstone
                    && h.expires_at.is_some_and(|at| at <= now)
                {
                    if held || h.generation.saturating_add(retention) > now {
                        self.store(&key, Header::tombstone(h.generation), &[])?;
                    } else {
                        self.remove(&key)?;
                    }
                    return Ok(1);
                }
            }
            Due::Tombstone => {
                if let Some(h) = self.load(&key)?
                    && h.tombstone
                    && h.generation.saturating_add(retention) <= now
                {
                    self.remove(&key)?;
                }
            }
            Due::RangeTombstone => {
                let list = self.load_ranges(&key)?;
                let kept: Vec<RangeTombstone> =
                    list.iter().filter(|r| r.generation.saturating_add(retention) > now).cloned().collect();
                if kept.len() != list.len() {
                    self.save_ranges(&key, &kept)?;
                }
            }
            Due::Token => {
                let expired = self.t.tokens.get(key.as_slice()).map_err(storage)?.is_some_and(|at| at.value() <= now);
                if expired {
                    self.t.tokens.remove(key.as_slice()).map_err(storage)?;
                    self.delta -= (key.len() + 8) as i64;
                }
            }
        }
        Ok(0)
    }

    /// Adds the changes to the namespace's byte counter.
    fn finish(self) -> Result<()> {
        count_bytes(&mut self.t.namespaces, self.prefix, self.delta)
    }
}

impl Store {
    /// Opens (creating if needed) `<data_dir>/embedded.redb`. Blocking.
    pub(crate) fn open(config: &EmbeddedConfig) -> Result<Self> {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|source| EmbeddedError::DataDir { path: config.data_dir.clone(), source })?;
        let cache = usize::try_from(config.cache_bytes).unwrap_or(usize::MAX);
        let db = Database::builder().set_cache_size(cache).create(config.data_dir.join(FILE_NAME)).map_err(storage)?;
        let w = db.begin_write().map_err(storage)?;
        // Every table exists from the start, so read transactions never
        // meet a missing one.
        Tables::open(&w)?;
        crate::ts::create_tables(&w)?;
        w.commit().map_err(storage)?;
        Ok(Self {
            db,
            chunk_threshold: usize::try_from(config.chunk_threshold_bytes).unwrap_or(usize::MAX).max(1),
            tombstone_retention: micros(config.tombstone_retention),
            token_retention: micros(config.token_retention),
        })
    }

    /// Registers the incarnation `ns`, removing what is left of the older
    /// incarnations of its name (deleted ones) but those whose create
    /// revisions are in `live` (a migration's source, while `ns` is its
    /// target): they and their data stay.
    pub(crate) fn provision(&self, ns: &Incarnation, live: &[u64]) -> Result<()> {
        let w = self.db.begin_write().map_err(storage)?;
        {
            let mut t = Tables::open(&w)?;
            if t.namespaces.get(ns.prefix.as_slice()).map_err(storage)?.is_some() {
                return Ok(());
            }
            // An older incarnation of the name was deleted before this one
            // was created: whatever of it is left goes now. Not a live one:
            // a migration's target is provisioned beside its source.
            let end = prefix_end(&ns.name_prefix);
            let upper = end.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
            let mut older = Vec::new();
            for entry in
                t.namespaces.range::<&[u8]>((Bound::Included(ns.name_prefix.as_slice()), upper)).map_err(storage)?
            {
                let prefix = entry.map_err(storage)?.0.value().to_vec();
                if prefix.len() == ns.prefix.len() && prefix < ns.prefix && !live.contains(&revision_of(&prefix)) {
                    older.push(prefix);
                }
            }
            for prefix in older {
                tracing::info!(namespace = %ns.name, "removing the data of an older incarnation");
                t.purge(&prefix)?;
                crate::ts::purge(&w, &prefix)?;
            }
            t.namespaces.insert(ns.prefix.as_slice(), 0).map_err(storage)?;
        }
        w.commit().map_err(storage)
    }

    pub(crate) fn deprovision(&self, ns: &Incarnation) -> Result<()> {
        let w = self.db.begin_write().map_err(storage)?;
        Tables::open(&w)?.purge(&ns.prefix)?;
        crate::ts::purge(&w, &ns.prefix)?;
        w.commit().map_err(storage)
    }

    fn mutate(&self, ns: &Incarnation, id: &str, mutations: &[Mutation], stamp: &WriteStamp) -> Result<()> {
        let record = record_key(&ns.prefix, id)?;
        // An empty token is no token: it could never tell retries apart.
        let token_key = stamp.token.as_deref().filter(|t| !t.is_empty()).map(|t| join(&record, t.as_bytes()));
        let w = self.db.begin_write().map_err(storage)?;
        {
            let mut t = Tables::open(&w)?;
            registered(&t.namespaces, ns)?;
            if let Some(token_key) = &token_key
                && t.tokens.get(token_key.as_slice()).map_err(storage)?.is_some()
            {
                return Ok(()); // applied before: dropping `w` aborts
            }
            let mut scope = Scope::new(&mut t, &ns.prefix, self);
            scope.apply(&record, mutations, stamp.generation_time)?;
            if let Some(token_key) = &token_key {
                scope.remember_token(token_key, stamp.generation_time)?;
            }
            scope.finish()?;
        }
        w.commit().map_err(storage)
    }

    #[allow(clippy::too_many_arguments)]
    fn get(
        &self,
        ns: &Incarnation,
        id: &str,
        selector: &Selector,
        after: Option<&[u8]>,
        limits: PageLimits,
        now: Micros,
        cancelled: &Cancelled,
    ) -> Result<ItemsPage> {
        let record = record_key(&ns.prefix, id)?;
        let mut pager = Pager::new(limits, cancelled);
        pager.check()?;
        let r = self.db.begin_read().map_err(storage)?;
        registered(&r.open_table(NAMESPACES).map_err(storage)?, ns)?;
        let items = r.open_table(ITEMS).map_err(storage)?;
        let chunks = r.open_table(CHUNKS).map_err(storage)?;
        let mut page = ItemsPage::default();
        // Offers one stored item; false once the page is complete.
        let mut offer = |item_key: &[u8], stored: &[u8], pager: &mut Pager| -> Result<bool> {
            pager.check()?;
            let (header, inline) = Header::decode(stored)?;
            if !header.visible(now) {
                return Ok(true);
            }
            if pager.full() {
                pager.more = true;
                return Ok(false);
            }
            let key = item_key.get(record.len()..).unwrap_or_default().to_vec();
            let value = read_value(&header, inline, item_key, &chunks)?;
            pager.add(key.len() + value.len());
            page.items.push(Item { key, value, expires_at: header.expires_at });
            Ok(true)
        };
        match selector {
            Selector::Keys(keys) => {
                let mut keys: Vec<&[u8]> =
                    keys.iter().map(Vec::as_slice).filter(|k| after.is_none_or(|a| *k > a)).collect();
                keys.sort_unstable();
                keys.dedup();
                for key in keys {
                    let item_key = join(&record, key);
                    let Some(stored) = items.get(item_key.as_slice()).map_err(storage)? else { continue };
                    if !offer(&item_key, stored.value(), &mut pager)? {
                        break;
                    }
                }
            }
            Selector::All | Selector::Range(_) => {
                let (start, end) = match selector {
                    Selector::Range(range) => (range.start.as_slice(), range.end.as_deref()),
                    _ => (&[][..], None),
                };
                let lower = match after {
                    Some(after) if after >= start => Bound::Excluded(join(&record, after)),
                    _ => Bound::Included(join(&record, start)),
                };
                let upper = match end {
                    Some(end) => Some(join(&record, end)),
                    None => prefix_end(&record),
                };
                let empty = match (&lower, &upper) {
                    (Bound::Included(l) | Bound::Excluded(l), Some(u)) => l >= u,
                    _ => false,
                };
                if !empty {
                    let bounds =
                        (lower.as_ref().map(Vec::as_slice), upper.as_deref().map_or(Bound::Unbounded, Bound::Excluded));
                    for entry in items.range::<&[u8]>(bounds).map_err(storage)? {
                        let (key, stored) = entry.map_err(storage)?;
                        if !offer(key.value(), stored.value(), &mut pager)? {
                            break;
                        }
                    }
                }
            }
        }
        if pager.more {
            page.next = page.items.last().map(|i| i.key.clone());
        }
        Ok(page)
    }

    fn scan(
        &self,
        ns: &Incarnation,
        after: Option<&ScanCursor>,
        limits: PageLimits,
        now: Micros,
        cancelled: &Cancelled,
    ) -> Result<RecordsPage> {
        let mut pager = Pager::new(limits, cancelled);
        pager.check()?;
        let r = self.db.begin_read().map_err(storage)?;
        registered(&r.open_table(NAMESPACES).map_err(storage)?, ns)?;
        let items = r.open_table(ITEMS).map_err(storage)?;
        let chunks = r.open_table(CHUNKS).map_err(storage)?;
        let lower = match after {
            Some(cursor) => Bound::Excluded(join(&record_key(&ns.prefix, &cursor.id)?, &cursor.key)),
            None => Bound::Included(ns.prefix.clone()),
        };
        let end = prefix_end(&ns.prefix);
        let bounds = (lower.as_ref().map(Vec::as_slice), end.as_deref().map_or(Bound::Unbounded, Bound::Excluded));
        let mut page = RecordsPage::default();
        for entry in items.range::<&[u8]>(bounds).map_err(storage)? {
            pager.check()?;
            let (key, stored) = entry.map_err(storage)?;
            let (header, inline) = Header::decode(stored.value())?;
            if !header.visible(now) {
                continue;
            }
            if pager.full() {
                pager.more = true;
                break;
            }
            let item_key = key.value();
            let (id, key) = split_item(item_key.get(ns.prefix.len()..).unwrap_or_default())?;
            let value = read_value(&header, inline, item_key, &chunks)?;
            pager.add(key.len() + value.len());
            let item = Item { key: key.to_vec(), value, expires_at: header.expires_at };
            match page.records.last_mut() {
                Some(record) if record.id == id => record.items.push(item),
                _ => page.records.push(Record { id: id.to_owned(), items: vec![item] }),
            }
        }
        if pager.more {
            page.next = page
                .records
                .last()
                .and_then(|r| r.items.last().map(|i| ScanCursor { id: r.id.clone(), key: i.key.clone() }));
        }
        Ok(page)
    }

    /// One page of every version: items and point tombstones in (id, key)
    /// order, then range tombstones record by record (see
    /// [`VersionCursor`]). The ranges table's key is the record key, which
    /// sorts before the record's items, so one raw lower bound serves both.
    fn scan_versions(
        &self,
        ns: &Incarnation,
        after: Option<&VersionCursor>,
        limits: PageLimits,
        cancelled: &Cancelled,
    ) -> Result<VersionsPage> {
        let mut pager = Pager::new(limits, cancelled);
        pager.check()?;
        let r = self.db.begin_read().map_err(storage)?;
        registered(&r.open_table(NAMESPACES).map_err(storage)?, ns)?;
        let end = prefix_end(&ns.prefix);
        let upper = end.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
        let mut page = VersionsPage::default();
        let push = |page: &mut VersionsPage, id: &str, version: Version| match page.records.last_mut() {
            Some(record) if record.id == id => record.versions.push(version),
            _ => page.records.push(RecordVersions { id: id.to_owned(), versions: vec![version] }),
        };
        let ranges_after = match after {
            None | Some(VersionCursor::Item { .. }) => {
                let items = r.open_table(ITEMS).map_err(storage)?;
                let chunks = r.open_table(CHUNKS).map_err(storage)?;
                let lower = match after {
                    Some(VersionCursor::Item { id, key }) => Bound::Excluded(join(&record_key(&ns.prefix, id)?, key)),
                    _ => Bound::Included(ns.prefix.clone()),
                };
                for entry in items.range::<&[u8]>((lower.as_ref().map(Vec::as_slice), upper)).map_err(storage)? {
                    pager.check()?;
                    if pager.full() {
                        pager.more = true;
                        break;
                    }
                    let (item_key, stored) = entry.map_err(storage)?;
                    let item_key = item_key.value();
                    let (header, inline) = Header::decode(stored.value())?;
                    let (id, key) = split_item(item_key.get(ns.prefix.len()..).unwrap_or_default())?;
                    let version = if header.tombstone {
                        Version::Tombstone { key: key.to_vec(), generation: header.generation }
                    } else {
                        let value = read_value(&header, inline, item_key, &chunks)?;
                        Version::Item {
                            key: key.to_vec(),
                            value,
                            expires_at: header.expires_at,
                            generation: header.generation,
                        }
                    };
                    pager.add(version.bytes() as usize);
                    push(&mut page, id, version);
                }
                if pager.more {
                    page.next = page.records.last().and_then(|r| {
                        r.versions.last().map(|v| match v {
                            Version::Item { key, .. } | Version::Tombstone { key, .. } => {
                                VersionCursor::Item { id: r.id.clone(), key: key.clone() }
                            }
                            // Not met in this pass.
                            Version::Range { .. } => VersionCursor::Ranges { after: None },
                        })
                    });
                    return Ok(page);
                }
                // The items are done: the ranges follow, on this page if
                // it has room.
                page.next = Some(VersionCursor::Ranges { after: None });
                None
            }
            Some(VersionCursor::Ranges { after }) => after.as_deref(),
        };
        let ranges = r.open_table(RANGES).map_err(storage)?;
        let lower = match ranges_after {
            Some(id) => Bound::Excluded(record_key(&ns.prefix, id)?),
            None => Bound::Included(ns.prefix.clone()),
        };
        let mut more = false;
        for entry in ranges.range::<&[u8]>((lower.as_ref().map(Vec::as_slice), upper)).map_err(storage)? {
            pager.check()?;
            if pager.full() {
                more = true;
                break;
            }
            let (record, stored) = entry.map_err(storage)?;
            let (id, _) = split_item(record.value().get(ns.prefix.len()..).unwrap_or_default())?;
            for range in RangeTombstone::decode_all(stored.value())? {
                let version = Version::Range {
                    range: KeyRange { start: range.start, end: range.end },
                    generation: range.generation,
                };
                pager.add(version.bytes() as usize);
                push(&mut page, id, version);
            }
            page.next = Some(VersionCursor::Ranges { after: Some(id.to_owned()) });
        }
        if !more {
            page.next = None;
        }
        Ok(page)
    }

    /// Writes `versions` into record `id`, each at its own generation,
    /// with a mutate's rules, in one transaction.
    fn restore(&self, ns: &Incarnation, id: &str, versions: &[Version]) -> Result<()> {
        let record = record_key(&ns.prefix, id)?;
        let w = self.db.begin_write().map_err(storage)?;
        {
            let mut t = Tables::open(&w)?;
            registered(&t.namespaces, ns)?;
            let mut scope = Scope::new(&mut t, &ns.prefix, self);
            for (generation, mutations) in restore_plan(versions) {
                scope.apply(&record, &mutations, generation)?;
            }
            scope.finish()?;
        }
        w.commit().map_err(storage)
    }

    #[cfg(test)]
    fn reclaim(&self, now: Micros) -> Result<u64> {
        let mut removed = 0;
        loop {
            let (n, more) = self.reclaim_batch(now, RECLAIM_BATCH, &Held::none())?;
            removed += n;
            if !more {
                return Ok(removed);
            }
        }
    }

    /// One transaction of reclamation: at most `budget` due entries.
    /// Returns the expired items removed and whether more may be due. The
    /// deletes of `held` namespaces stay, their due entries with them.
    pub(crate) fn reclaim_batch(&self, now: Micros, budget: usize, held: &Held) -> Result<(u64, bool)> {
        let w = self.db.begin_write().map_err(storage)?;
        let (removed, more) = {
            let mut t = Tables::open(&w)?;
            let mut prefixes = Vec::new();
            for entry in t.namespaces.iter().map_err(storage)? {
                prefixes.push(entry.map_err(storage)?.0.value().to_vec());
            }
            let (mut removed, mut left) = (0, budget);
            for prefix in &prefixes {
                // `name ‖ 0x00 ‖ create_revision`: the name is all but 9 bytes.
                let name = prefix.get(..prefix.len().saturating_sub(9)).unwrap_or_default();
                let held = std::str::from_utf8(name).is_ok_and(|name| held.contains(name));
                let mut scope = Scope::new(&mut t, prefix, self);
                for kind in Due::ALL {
                    if held && matches!(kind, Due::Tombstone | Due::RangeTombstone) {
                        continue;
                    }
                    let lower = due_key(prefix, kind, i64::MIN, b"");
                    // Everything due at or before `now`.
                    let upper = match now.checked_add(1) {
                        Some(after_now) => due_key(prefix, kind, after_now, b""),
                        None => join(prefix, &[kind as u8 + 1]),
                    };
                    let mut due = Vec::new();
                    for entry in
                        scope.t.due.range::<&[u8]>(lower.as_slice()..upper.as_slice()).map_err(storage)?.take(left)
                    {
                        due.push(entry.map_err(storage)?.0.value().to_vec());
                    }
                    left -= due.len();
                    for key in due {
                        scope.t.due.remove(key.as_slice()).map_err(storage)?;
                        removed += scope.settle(kind, due_rest(prefix.len(), &key)?, now, held)?;
                    }
                    if left == 0 {
                        break;
                    }
                }
                scope.finish()?;
                if left == 0 {
                    break;
                }
            }
            (removed, left == 0)
        };
        w.commit().map_err(storage)?;
        Ok((removed, more))
    }

    /// The bytes the namespace stores, or `NotProvisioned`.
    pub(crate) fn storage_bytes(&self, ns: &Incarnation) -> Result<u64> {
        let r = self.db.begin_read().map_err(storage)?;
        registered(&r.open_table(NAMESPACES).map_err(storage)?, ns)
    }
}

#[async_trait]
impl KeyValue for EmbeddedPlugin {
    fn open(&self, ns: &Namespace) -> prism_plugin_api::Result<Arc<dyn KeyValueHandle>> {
        Ok(Arc::new(Opened::of(&self.turns, ns)?))
    }

    async fn reclaim(&self, now: Micros, held: &Held) -> prism_plugin_api::Result<u64> {
        // One transaction per batch, each taking its turn among writers.
        let mut removed = 0;
        loop {
            let held = held.clone();
            let (n, more) = self.write_turn(move |s| s.reclaim_batch(now, RECLAIM_BATCH, &held)).await?;
            removed += n;
            if !more {
                return Ok(removed);
            }
        }
    }
}

#[async_trait]
impl KeyValueHandle for Opened {
    async fn mutate(&self, id: &str, mutations: &[Mutation], stamp: &WriteStamp) -> prism_plugin_api::Result<()> {
        let (ns, id, mutations, stamp) = (self.ns.clone(), id.to_owned(), mutations.to_vec(), stamp.clone());
        Ok(self.turns.write_turn(move |s| s.mutate(&ns, &id, &mutations, &stamp)).await?)
    }

    async fn get(
        &self,
        id: &str,
        selector: &Selector,
        after: Option<&[u8]>,
        limits: PageLimits,
        now: Micros,
    ) -> prism_plugin_api::Result<ItemsPage> {
        let (ns, id, selector, after) = (self.ns.clone(), id.to_owned(), selector.clone(), after.map(<[u8]>::to_vec));
        Ok(self
            .turns
            .read_turn_cancellable(move |s, cancelled| {
                s.get(&ns, &id, &selector, after.as_deref(), limits, now, cancelled)
            })
            .await?)
    }

    async fn scan(
        &self,
        after: Option<&ScanCursor>,
        limits: PageLimits,
        now: Micros,
    ) -> prism_plugin_api::Result<RecordsPage> {
        let (ns, after) = (self.ns.clone(), after.cloned());
        Ok(self
            .turns
            .read_turn_cancellable(move |s, cancelled| s.scan(&ns, after.as_ref(), limits, now, cancelled))
            .await?)
    }

    async fn storage_bytes(&self) -> prism_plugin_api::Result<u64> {
        let ns = self.ns.clone();
        Ok(self.turns.read_turn(move |s| s.storage_bytes(&ns)).await?)
    }

    async fn scan_versions(
        &self,
        after: Option<&VersionCursor>,
        limits: PageLimits,
    ) -> prism_plugin_api::Result<VersionsPage> {
        let (ns, after) = (self.ns.clone(), after.cloned());
        Ok(self
            .turns
            .read_turn_cancellable(move |s, cancelled| s.scan_versions(&ns, after.as_ref(), limits, cancelled))
            .await?)
    }

    async fn restore(&self, id: &str, versions: &[Version]) -> prism_plugin_api::Result<()> {
        let (ns, id, versions) = (self.ns.clone(), id.to_owned(), versions.to_vec());
        Ok(self.turns.write_turn(move |s| s.restore(&ns, &id, &versions)).await?)
    }
}
