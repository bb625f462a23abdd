//! Where the control plane keeps its metadata: behind [`Store`], so the
//! embedded file store (the default) and the Postgres store (several
//! replicas on one database) are interchangeable.
//!
//! The model is a revisioned, typed key-value store in the manner of etcd:
//! every commit gets the next global revision, checks its [`Condition`]s
//! atomically (optimistic concurrency), writes objects, appends one
//! [`Delta`] to the change log and its audit events, and is announced to
//! subscribers in revision order.
//!
//! Both stores *group* commits ([`group`]): the commits that arrive while
//! one group is being made durable form the next, which is written with
//! one fsync (file store) or in one database transaction (Postgres). Each
//! commit of a group still gets its own revision, checks its conditions
//! against everything committed before it (earlier commits of the same
//! group included) and is announced on its own; a caller hears of its
//! commit only once the whole group is durable.
//!
//! Besides the objects, both stores keep how many *live* (not DELETED)
//! namespaces each tenant has, updated by every namespace put, so a quota
//! check is one read and one [`Condition::NamespaceRoom`], not a listing.

pub mod bus;
pub mod file;
pub mod group;
pub mod postgres;

use std::sync::Arc;

use async_trait::async_trait;
use prism_proto::control::{AuditEvent, Delta, Namespace, Shard, Tenant};
use tokio::sync::mpsc;

use crate::error::Result;

/// How a store is opened (every store takes the same).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Deltas kept for subscribers ([`bus`]).
    pub watch_buffer: usize,
    /// Encoded bytes of deltas kept for subscribers ([`bus`]).
    pub watch_buffer_bytes: usize,
    /// Revisions the change log keeps.
    pub retention: u64,
    /// Most writes committed together ([`group`]); 1 commits each alone.
    pub max_commit_group: usize,
    /// Bytes of the file store's page cache (unused by PostgreSQL).
    pub cache_bytes: u64,
}

/// The file store's page cache unless configured: redb's own default is
/// 1 GiB, which a control plane holding a million namespaces filled.
pub const DEFAULT_CACHE_BYTES: u64 = 256 << 20;

impl Default for Options {
    fn default() -> Self {
        Self {
            watch_buffer: 1024,
            watch_buffer_bytes: bus::DEFAULT_BYTES,
            retention: 100_000,
            max_commit_group: group::DEFAULT_MAX_GROUP,
            cache_bytes: DEFAULT_CACHE_BYTES,
        }
    }
}

impl Options {
    pub fn from_config(config: &crate::ControlPlaneConfig) -> Self {
        Self {
            watch_buffer: config.watch_buffer,
            watch_buffer_bytes: config.watch_buffer_bytes,
            retention: config.change_log_retention,
            max_commit_group: config.max_commit_group,
            cache_bytes: config.store_cache_bytes,
        }
    }
}

/// A precondition of a commit, checked atomically with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// The tenant's revision is this one; 0 = the tenant must not exist.
    Tenant { id: String, revision: u64 },
    /// The namespace's revision is this one; 0 = it must not exist.
    Namespace { name: String, revision: u64 },
    /// The shard's revision is this one; 0 = it must not exist.
    Shard { id: String, revision: u64 },
    /// The tenant has fewer than `limit` live namespaces: room for one
    /// more (a `max_namespaces` quota). Concurrent creates in one tenant
    /// conflict only when the last place is taken, not on every commit.
    NamespaceRoom { tenant: String, limit: u64 },
    /// The tenant has exactly `count` live namespaces: none was created
    /// since they were listed (a tenant deletion, which conditions each
    /// listed namespace on its revision, must also see no new one).
    LiveNamespaces { tenant: String, count: u64 },
}

impl Condition {
    /// Whether the condition holds when the value it is about (a revision,
    /// 0 for an absent object, or a tenant's live namespace count) is
    /// `current`.
    pub fn holds(&self, current: u64) -> bool {
        match self {
            Self::Tenant { revision, .. } | Self::Namespace { revision, .. } | Self::Shard { revision, .. } => {
                current == *revision
            }
            Self::NamespaceRoom { limit, .. } => current < *limit,
            Self::LiveNamespaces { count, .. } => current == *count,
        }
    }
}

/// The tenant a namespace name belongs to (the part before its `/`).
pub fn tenant_of_name(name: &str) -> &str {
    name.split_once('/').map_or(name, |(tenant, _)| tenant)
}

/// Whether a namespace counts towards its tenant's live namespaces.
pub fn is_live(ns: &Namespace) -> bool {
    ns.status != prism_proto::control::NamespaceStatus::Deleted as i32
}

/// A write of the store's objects.
// Puts are built once per commit and moved straight into the store: boxing
// the larger variant would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Put {
    Tenant(Tenant),
    /// A namespace; `create_revision == 0` means it is created by this
    /// commit and gets the commit's revision.
    Namespace(Namespace),
    /// A shard of the registry; one without instances is removed (the
    /// delta says `shard_removed`).
    Shard(Shard),
}

/// One atomic commit.
#[derive(Debug, Clone, Default)]
pub struct Txn {
    pub conditions: Vec<Condition>,
    pub puts: Vec<Put>,
    /// Recorded with the commit; the store fills `sequence` and `revision`.
    pub audit: Vec<AuditEvent>,
}

/// The outcome of a commit.
#[derive(Debug, Clone)]
pub enum Committed {
    /// Written at this revision; the objects as stored.
    Ok(Arc<Delta>),
    /// A condition did not hold; nothing was written.
    Conflict(Condition),
}

/// Every object at one revision.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub revision: u64,
    pub tenants: Vec<Tenant>,
    pub namespaces: Vec<Namespace>,
    pub shards: Vec<Shard>,
}

/// Namespaces per [`SnapshotPart`].
pub const SNAPSHOT_PART: usize = 512;

/// A snapshot as it is read ([`Store::stream_snapshot`]): the first part
/// holds the revision, every tenant and every shard; the others hold the
/// namespaces, at most [`SNAPSHOT_PART`] each, in name order.
#[derive(Debug, Clone, Default)]
pub struct SnapshotPart {
    pub revision: u64,
    pub tenants: Vec<Tenant>,
    pub shards: Vec<Shard>,
    pub namespaces: Vec<Namespace>,
}

/// The changes after a revision, read from the change log.
#[derive(Debug, Clone)]
pub enum Changes {
    /// Every delta after the requested revision, in order, up to the
    /// current revision when they were read.
    Deltas(Vec<Arc<Delta>>),
    /// The log no longer reaches back that far: read a snapshot instead.
    Compacted,
}

/// Filters of an audit listing.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub tenant_id: String,
    pub target: String,
    pub principal: String,
    pub action: String,
    /// Seconds since the Unix epoch; events earlier than this are skipped.
    pub since_seconds: i64,
    /// Only events with a sequence below this one (pagination).
    pub before_sequence: Option<u64>,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The revision of the last commit (0 before any).
    async fn revision(&self) -> Result<u64>;
    async fn get_tenant(&self, id: &str) -> Result<Option<Tenant>>;
    async fn get_namespace(&self, name: &str) -> Result<Option<Namespace>>;
    /// Tenants with ids greater than `after`, in id order, at most `limit`.
    async fn list_tenants(&self, after: &str, limit: usize) -> Result<Vec<Tenant>>;
    /// Namespaces with names greater than `after` (and, when `tenant` is
    /// not empty, of that tenant), in name order, at most `limit`.
    async fn list_namespaces(&self, tenant: &str, after: &str, limit: usize) -> Result<Vec<Namespace>>;
    /// Every registered shard (with at least one instance), in id order.
    async fn list_shards(&self) -> Result<Vec<Shard>>;
    /// How many live (not DELETED) namespaces the tenant has: one read of
    /// the count every namespace put keeps, not a listing.
    async fn live_namespaces(&self, tenant: &str) -> Result<u64>;
    /// Atomically checks the conditions and applies the transaction;
    /// returns once it is durable (it may share that with concurrent
    /// commits, see [`group`]).
    async fn commit(&self, txn: Txn) -> Result<Committed>;
    /// Every object, read at one revision, sent on `parts` as it is read
    /// (see [`SnapshotPart`]): a snapshot of a million namespaces is never
    /// whole in memory, only the parts the bounded channel holds. The read
    /// view is held until the last part is taken (or the receiver is
    /// dropped, which ends the read without an error).
    async fn stream_snapshot(&self, parts: mpsc::Sender<SnapshotPart>) -> Result<()>;
    /// Every object, read at one revision, whole.
    async fn snapshot(&self) -> Result<Snapshot> {
        let (tx, mut parts) = mpsc::channel::<SnapshotPart>(2);
        let collect = async {
            let mut snapshot = Snapshot::default();
            while let Some(part) = parts.recv().await {
                snapshot.revision = part.revision;
                snapshot.tenants.extend(part.tenants);
                snapshot.shards.extend(part.shards);
                snapshot.namespaces.extend(part.namespaces);
            }
            snapshot
        };
        let (read, snapshot) = tokio::join!(self.stream_snapshot(tx), collect);
        read.map(|()| snapshot)
    }
    /// The deltas after `revision`, at most `limit` of them.
    async fn changes_since(&self, revision: u64, limit: usize) -> Result<Changes>;
    /// Records audit events that changed nothing (refusals).
    async fn append_audit(&self, events: Vec<AuditEvent>) -> Result<()>;
    /// Audit events newest first, at most `limit`.
    async fn list_audit(&self, filter: AuditFilter, limit: usize) -> Result<Vec<AuditEvent>>;
    /// Every committed delta, in revision order, from the moment of the
    /// call. A subscriber that falls more than the buffer behind receives
    /// [`bus::Recv::Lagged`] and must catch up from the change log.
    fn subscribe(&self) -> bus::Receiver;
}
