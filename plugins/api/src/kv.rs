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
    async fn reclaim(&self, now: Micros) -> Result<u64>;
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
}
