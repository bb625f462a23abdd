//! The KeyValue plugin trait (SPEC §3): namespace → record `id` → sorted
//! map of `key` → `value`.
//!
//! A plugin's [`KeyValue`] opens each namespace once into a
//! [`KeyValueHandle`], which serves the namespace's calls.
//!
//! Every write — put, delete, mutate — is one [`KeyValueHandle::mutate`] of one
//! record: atomic, stamped with a [`WriteStamp`]. Semantics every plugin
//! must give (the conformance suite checks each):
//!
//! - **Last writer wins per item** by `generation_time`: a put or delete of
//!   a key older than what the key last saw (value or tombstone, including a
//!   range or whole-record delete covering it) changes nothing. Equal times:
//!   the write already stored wins.
//! - **Idempotency**: a write whose token was already applied to the record
//!   is a no-op (tokens are remembered for at least the plugin's token
//!   retention).
//! - **All or nothing** per `mutate`.
//! - **TTL**: an item whose `expires_at` is at or before `now` is never
//!   returned; [`KeyValue::reclaim`] removes it from storage.
//! - **Pagination** by bytes (key + value) and optionally item count; a page
//!   never splits an item (the item that crosses the byte bound is
//!   included); `next` is where to continue. A page also ends early, at an
//!   item boundary, once its [`PageLimits::stop_by`] soft instant has passed
//!   and it holds an item ([`crate::pace`]), with `next` set the same way.
//! - **Chunking**: values of any size up to the namespace's max item size
//!   are stored and returned whole; the plugin splits large ones as its
//!   backend needs.
//! - **Versions** (for a live migration, ARCHITECTURE.md "The life of a
//!   migration"): [`KeyValueHandle::scan_versions`] pages through every
//!   stored [`Version`] — values with their generation time and expiry,
//!   point deletes and range deletes with theirs — and
//!   [`KeyValueHandle::restore`] writes versions into another namespace
//!   under the same last-writer-wins rule as a mutate, so a version
//!   copied over a newer one (a dual write that got there first) changes
//!   nothing, and a version copied twice changes nothing either.

use std::sync::Arc;

use async_trait::async_trait;

use crate::pace::{Pace, StopBy};
use crate::{Micros, Namespace, Result};

/// When and as what a write was made. The gateway fills `generation_time`
/// from its clock when the client sent no idempotency token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteStamp {
    pub generation_time: Micros,
    pub token: Option<String>,
}

/// An item to write. The gateway has turned TTLs into `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewItem {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub expires_at: Option<Micros>,
}

/// Keys in `[start, end)`; `end: None` = no upper bound.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyRange {
    pub start: Vec<u8>,
    pub end: Option<Vec<u8>>,
}

impl KeyRange {
    /// Every key.
    pub fn all() -> Self {
        Self::default()
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        key >= self.start.as_slice() && self.end.as_deref().is_none_or(|end| key < end)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mutation {
    Put(NewItem),
    Delete(Vec<u8>),
    DeleteRange(KeyRange),
}

/// Which items of a record a read wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// Every item.
    All,
    /// These keys (sorted and deduplicated by the gateway); absent ones are
    /// skipped.
    Keys(Vec<Vec<u8>>),
    Range(KeyRange),
}

/// How much one page may hold, and until when it may be filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageLimits {
    /// Stop once the page's keys and values reach this many bytes (> 0).
    pub max_bytes: u64,
    /// Stop at this many items.
    pub max_items: Option<u32>,
    /// Stop early once this says so ([`crate::pace`]); `None`: no
    /// deadline (the gateway always gives one).
    pub stop_by: Option<StopBy>,
}

impl PageLimits {
    /// `max_bytes` and `max_items`, no deadline.
    pub const fn new(max_bytes: u64, max_items: Option<u32>) -> Self {
        Self { max_bytes, max_items, stop_by: None }
    }

    /// These limits, stopping early as `stop_by` says.
    pub fn stopping(self, stop_by: Option<StopBy>) -> Self {
        Self { stop_by, ..self }
    }

    /// The read's [`Pace`], from `stop_by`.
    pub fn pace(&self) -> Pace {
        Pace::new(self.stop_by)
    }
}

/// A stored item as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub expires_at: Option<Micros>,
}

/// One page of a record's items. `next` is the last key returned, when
/// more may follow (a bound or the soft deadline ended the page): the next
/// page starts after it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ItemsPage {
    pub items: Vec<Item>,
    pub next: Option<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub id: String,
    pub items: Vec<Item>,
}

/// Where a scan continues: after item `key` of record `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanCursor {
    pub id: String,
    pub key: Vec<u8>,
}

/// One page of a scan: records in id order; a record whose items span
/// pages appears in each.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RecordsPage {
    pub records: Vec<Record>,
    pub next: Option<ScanCursor>,
}

/// One stored version of a key or a key range, as a migration copies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Version {
    /// A value, written at `generation`. Expired values not yet reclaimed
    /// are versions too (the target expires them the same way).
    Item { key: Vec<u8>, value: Vec<u8>, expires_at: Option<Micros>, generation: Micros },
    /// A point delete remembered at `generation`.
    Tombstone { key: Vec<u8>, generation: Micros },
    /// A range (or whole-record) delete remembered at `generation`.
    Range { range: KeyRange, generation: Micros },
}

impl Version {
    pub fn generation(&self) -> Micros {
        match self {
            Self::Item { generation, .. } | Self::Tombstone { generation, .. } | Self::Range { generation, .. } => {
                *generation
            }
        }
    }

    /// Bytes the version counts for in a page: its key (or range bounds)
    /// and value.
    pub fn bytes(&self) -> u64 {
        let n = match self {
            Self::Item { key, value, .. } => key.len() + value.len(),
            Self::Tombstone { key, .. } => key.len(),
            Self::Range { range, .. } => range.start.len() + range.end.as_ref().map_or(0, Vec::len),
        };
        n as u64
    }

    /// The mutation that writes this version, applied at
    /// [`Self::generation`]: a mutate's last-writer-wins rule is exactly
    /// "only where newer".
    pub fn mutation(&self) -> Mutation {
        match self {
            Self::Item { key, value, expires_at, .. } => {
                Mutation::Put(NewItem { key: key.clone(), value: value.clone(), expires_at: *expires_at })
            }
            Self::Tombstone { key, .. } => Mutation::Delete(key.clone()),
            Self::Range { range, .. } => Mutation::DeleteRange(range.clone()),
        }
    }
}

/// The versions of one record on a page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordVersions {
    pub id: String,
    pub versions: Vec<Version>,
}

/// Where [`KeyValueHandle::scan_versions`] continues. A scan goes through
/// the items and point deletes first, in (id, key) order, then through
/// the range deletes, record by record in id order (restoring is order
/// independent, so the two passes need not be interleaved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionCursor {
    /// After item (or point delete) `key` of record `id`.
    Item { id: String, key: Vec<u8> },
    /// Every item done; the range deletes of the records after `after`
    /// (`None`: from the first record) follow.
    Ranges { after: Option<String> },
}

impl VersionCursor {
    /// The cursor as bytes, for `MigrationProgress.cursor`: a tag, then
    /// length-prefixed fields.
    pub fn encode(&self) -> Vec<u8> {
        fn field(out: &mut Vec<u8>, bytes: &[u8]) {
            out.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
            out.extend_from_slice(bytes);
        }
        let mut out = Vec::new();
        match self {
            Self::Item { id, key } => {
                out.push(1);
                field(&mut out, id.as_bytes());
                field(&mut out, key);
            }
            Self::Ranges { after: None } => out.push(2),
            Self::Ranges { after: Some(id) } => {
                out.push(3);
                field(&mut out, id.as_bytes());
            }
        }
        out
    }

    /// A cursor from [`Self::encode`]'s bytes; `None` for empty bytes (the
    /// start of the scan).
    pub fn decode(bytes: &[u8]) -> crate::Result<Option<Self>> {
        fn bad() -> crate::PluginError {
            crate::PluginError::invalid("cursor", "is not a version cursor")
        }
        fn field<'b>(rest: &mut &'b [u8]) -> crate::Result<&'b [u8]> {
            let (len, tail) = rest.split_first_chunk::<8>().ok_or_else(bad)?;
            let len = usize::try_from(u64::from_be_bytes(*len)).map_err(|_| bad())?;
            if tail.len() < len {
                return Err(bad());
            }
            let (value, tail) = tail.split_at(len);
            *rest = tail;
            Ok(value)
        }
        fn text(bytes: &[u8]) -> crate::Result<String> {
            String::from_utf8(bytes.to_vec()).map_err(|_| bad())
        }
        let Some((tag, mut rest)) = bytes.split_first() else {
            return Ok(None);
        };
        let cursor = match tag {
            1 => {
                let id = text(field(&mut rest)?)?;
                Self::Item { id, key: field(&mut rest)?.to_vec() }
            }
            2 => Self::Ranges { after: None },
            3 => Self::Ranges { after: Some(text(field(&mut rest)?)?) },
            _ => return Err(bad()),
        };
        if !rest.is_empty() {
            return Err(bad());
        }
        Ok(Some(cursor))
    }
}

/// One page of [`KeyValueHandle::scan_versions`]. `next: None` means the
/// scan is complete; a page may be empty and still have a `next` (the
/// turn from items to range deletes).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VersionsPage {
    pub records: Vec<RecordVersions>,
    pub next: Option<VersionCursor>,
}

/// Groups `versions` into the mutations that restore them, one list per
/// generation time, each with its range deletes first: applied at that
/// generation, a range delete then never removes a value of its own
/// generation, as in the source where a mutate's later put survives its
/// earlier range delete. Plugins restore with their mutate path.
pub fn restore_plan(versions: &[Version]) -> Vec<(Micros, Vec<Mutation>)> {
    let mut by_generation: std::collections::BTreeMap<Micros, (Vec<Mutation>, Vec<Mutation>)> =
        std::collections::BTreeMap::new();
    for version in versions {
        let (ranges, items) = by_generation.entry(version.generation()).or_default();
        match version {
            Version::Range { .. } => ranges.push(version.mutation()),
            _ => items.push(version.mutation()),
        }
    }
    by_generation
        .into_iter()
        .map(|(generation, (mut ranges, items))| {
            ranges.extend(items);
            (generation, ranges)
        })
        .collect()
}

/// Namespaces whose deletes [`KeyValue::reclaim`] keeps for now: those
/// being migrated, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Held(std::collections::BTreeSet<String>);

impl Held {
    /// No namespace held.
    pub fn none() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, name: impl Into<String>) {
        self.0.insert(name.into());
    }

    pub fn contains(&self, name: &str) -> bool {
        self.0.contains(name)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<S: Into<String>> FromIterator<S> for Held {
    fn from_iter<I: IntoIterator<Item = S>>(names: I) -> Self {
        Self(names.into_iter().map(Into::into).collect())
    }
}

/// A backend's KeyValue store: opens namespaces, and keeps every one of
/// them tidy.
#[async_trait]
pub trait KeyValue: Send + Sync {
    /// Opens namespace `ns`: works out once what every call on it needs
    /// (its resolved settings, its pool or client, its table names and
    /// statements), so that calls on the handle derive nothing again.
    /// Cheap and without I/O: a namespace's resources are checked by
    /// provisioning, and a handle of a namespace that is not provisioned
    /// answers [`PluginError::NotProvisioned`](crate::PluginError) when
    /// called. Settings that can never serve (a bad name, an invalid
    /// setting) fail here, as they would fail every call.
    ///
    /// A handle stays valid for the incarnation and the spec it was
    /// opened with, also across deprovisioning and provisioning again;
    /// a changed spec is opened anew.
    fn open(&self, ns: &Namespace) -> Result<Arc<dyn KeyValueHandle>>;

    /// Removes items expired at `now`, tombstones and idempotency tokens
    /// past their retention, in every namespace. Returns the items removed.
    ///
    /// The namespaces in `held` (by name, every incarnation) keep every
    /// delete they remember, point or range, however old, and an item of
    /// theirs that expires becomes a tombstone with its generation time
    /// rather than going: a migration's backfill must copy each delete, or
    /// a write older than it, dual-written to the target, would outlive it
    /// there.
    async fn reclaim(&self, now: Micros, held: &Held) -> Result<u64>;
}

/// One namespace of a [`KeyValue`] store, opened.
#[async_trait]
pub trait KeyValueHandle: Send + Sync {
    /// Applies `mutations`, in order, to record `id`: all or none.
    async fn mutate(&self, id: &str, mutations: &[Mutation], stamp: &WriteStamp) -> Result<()>;

    /// Items of record `id` chosen by `selector`, in key order, starting
    /// after key `after` when given; items expired at `now` are skipped.
    async fn get(
        &self,
        id: &str,
        selector: &Selector,
        after: Option<&[u8]>,
        limits: PageLimits,
        now: Micros,
    ) -> Result<ItemsPage>;

    /// Every record of the namespace, in id then key order, starting after
    /// `after` when given.
    async fn scan(&self, after: Option<&ScanCursor>, limits: PageLimits, now: Micros) -> Result<RecordsPage>;

    /// Bytes the namespace stores (for the storage quota).
    async fn storage_bytes(&self) -> Result<u64>;

    /// Every stored version of the namespace — values (expired or not,
    /// with their generation time and expiry), point deletes and range
    /// deletes — starting after `after` (see [`VersionCursor`]), a page
    /// bounded by `limits`. What a migration's backfill copies; reads one
    /// consistent snapshot per page.
    async fn scan_versions(&self, after: Option<&VersionCursor>, limits: PageLimits) -> Result<VersionsPage>;

    /// Writes `versions` into record `id`, each at its own generation
    /// time and under a mutate's last-writer-wins rule: a version older
    /// than (or as old as) what the key stores, or covered by a newer
    /// range delete, changes nothing. No idempotency token is recorded.
    async fn restore(&self, id: &str, versions: &[Version]) -> Result<()>;

    /// Restores each record of `records` as [`Self::restore`] does. Each
    /// record stands alone: a failure may leave some restored and others
    /// not, and restoring one again changes nothing, so the caller simply
    /// restores them all again. By default one record after the other; a
    /// backend may restore many in one round trip (PostgreSQL writes the
    /// records without range deletes or chunked values in one
    /// transaction).
    async fn restore_records(&self, records: &[RecordVersions]) -> Result<()> {
        for record in records {
            self.restore(&record.id, &record.versions).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_cursors_round_trip() {
        let cursors = [
            VersionCursor::Item { id: "r".into(), key: vec![] },
            VersionCursor::Item { id: "".into(), key: vec![0, 255, 3] },
            VersionCursor::Ranges { after: None },
            VersionCursor::Ranges { after: Some("a/b".into()) },
        ];
        for cursor in cursors {
            assert_eq!(VersionCursor::decode(&cursor.encode()).expect("decodes"), Some(cursor));
        }
        assert_eq!(VersionCursor::decode(&[]).expect("empty"), None);
        for bad in [&[9][..], &[1, 0], &[2, 0], &[1, 0, 0, 0, 0, 0, 0, 0, 9, b'x']] {
            assert!(VersionCursor::decode(bad).is_err(), "{bad:?} is refused");
        }
    }

    #[test]
    fn restore_plan_groups_by_generation_with_ranges_first() {
        let item = |key: &str, generation| Version::Item {
            key: key.as_bytes().to_vec(),
            value: b"v".to_vec(),
            expires_at: None,
            generation,
        };
        let range = Version::Range { range: KeyRange::all(), generation: 5 };
        let plan = restore_plan(&[item("a", 5), item("b", 3), range.clone()]);
        assert_eq!(
            plan,
            vec![(3, vec![item("b", 3).mutation()]), (5, vec![range.mutation(), item("a", 5).mutation()])]
        );
    }
}
