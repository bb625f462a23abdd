//! The embedded metadata store: one redb file in the data directory.
//!
//! redb gives ACID transactions with fsync on commit and MVCC readers, so a
//! snapshot is consistent at one revision without blocking writers, and a
//! restart finds every acknowledged commit. Writes are grouped
//! ([`super::group`]): one committer thread applies each group in one
//! write transaction, commits it with one fsync, broadcasts its deltas in
//! revision order and then answers the callers. Being the only writer, it
//! is what orders commits, so subscribers receive deltas in exactly
//! revision order; readers never wait for it.
//!
//! # Durability
//!
//! A group is one redb transaction at redb's default
//! `Durability::Immediate` (pages and a checksummed header slot written,
//! the header switched, the file fsynced before `commit` returns) holding,
//! for each of its commits, the objects, the delta in the change log, the
//! audit events and the new revision. The RPCs are answered, and the
//! deltas broadcast to watchers, only after it returns: what a client or a
//! watcher has seen survives the process being killed and the machine
//! losing power, so revisions never go back and a watcher resuming from
//! the last revision it applied gets exactly the deltas after it. A group
//! in flight when the process dies is there wholly or not at all, and none
//! of it was acknowledged. After a crash redb rebuilds its allocator state
//! on open, losing nothing committed. `cli/tests/crash.rs` kills a control
//! plane in the middle of commits and checks all of this (a kill, not a
//! power cut: that rests on the disk honouring fsync).

use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use prism_proto::control::{AuditEvent, Change, Delta, Namespace, Shard, Tenant, change};
use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, Table, TableDefinition, WriteTransaction};
use tokio::sync::mpsc;

use super::bus;
use super::group::{self, Failure, Groups, Queue, Write};
use super::{AuditFilter, Changes, Committed, Condition, Options, Put, SNAPSHOT_PART, SnapshotPart, Store, Txn};
use crate::error::{ControlPlaneError, Result};

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const TENANTS: TableDefinition<&str, &[u8]> = TableDefinition::new("tenants");
const NAMESPACES: TableDefinition<&str, &[u8]> = TableDefinition::new("namespaces");
const SHARDS: TableDefinition<&str, &[u8]> = TableDefinition::new("shards");
const CHANGES: TableDefinition<u64, &[u8]> = TableDefinition::new("changes");
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
/// Tenant id → how many of its namespaces are live (absent = 0).
const LIVE_NAMESPACES: TableDefinition<&str, u64> = TableDefinition::new("live_namespaces");

const REVISION: &str = "revision";
/// Every delta at or below this revision has been dropped from the log.
const COMPACTED: &str = "compacted";
const AUDIT_SEQUENCE: &str = "audit_sequence";
/// 1 once `LIVE_NAMESPACES` has been counted from the namespaces (stores
/// written before it existed are counted when first opened).
const LIVE_COUNTED: &str = "live_namespaces_counted";

/// File name of the store inside the data directory.
pub const FILE_NAME: &str = "control-plane.redb";

#[derive(Clone)]
pub struct FileStore {
    inner: Arc<Inner>,
    /// To the committer thread, which stops when the last clone is dropped.
    writes: Queue,
}

struct Inner {
    db: Database,
    deltas: bus::Bus,
    retention: u64,
}

fn corrupt(what: &str, e: prost::DecodeError) -> ControlPlaneError {
    ControlPlaneError::Corrupt(format!("{what} does not decode: {e}"))
}

fn storage(e: impl Into<redb::Error>) -> ControlPlaneError {
    ControlPlaneError::Store(e.into())
}

impl FileStore {
    /// Opens (creating if needed) the store in `dir`. `watch_buffer` bounds
    /// the deltas buffered per subscriber; `retention` is how many
    /// revisions the change log keeps.
    pub fn open(dir: &Path, watch_buffer: usize, retention: u64) -> Result<Self> {
        Self::open_with(dir, &Options { watch_buffer, retention, ..Options::default() })
    }

    /// [`open`](Self::open) with every option.
    pub fn open_with(dir: &Path, options: &Options) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| storage(redb::StorageError::Io(e)))?;
        let cache = usize::try_from(options.cache_bytes).unwrap_or(usize::MAX);
        let db = Database::builder().set_cache_size(cache).create(dir.join(FILE_NAME)).map_err(storage)?;
        let w = db.begin_write().map_err(storage)?;
        {
            let mut meta = w.open_table(META).map_err(storage)?;
            w.open_table(TENANTS).map_err(storage)?;
            let namespaces = w.open_table(NAMESPACES).map_err(storage)?;
            w.open_table(SHARDS).map_err(storage)?;
            w.open_table(CHANGES).map_err(storage)?;
            w.open_table(AUDIT).map_err(storage)?;
            let mut live = w.open_table(LIVE_NAMESPACES).map_err(storage)?;
            if meta_get(&meta, LIVE_COUNTED)? == 0 {
                count_live_namespaces(&namespaces, &mut live)?;
                meta.insert(LIVE_COUNTED, 1).map_err(storage)?;
            }
        }
        w.commit().map_err(storage)?;
        let deltas = bus::Bus::new(options.watch_buffer, options.watch_buffer_bytes);
        let inner = Arc::new(Inner { db, deltas, retention: options.retention.max(1) });
        let (writes, groups) = group::queue(options.max_commit_group);
        let committer = inner.clone();
        std::thread::Builder::new()
            .name("prism-cp-commit".into())
            .spawn(move || committer.run(groups))
            .map_err(|e| storage(redb::StorageError::Io(e)))?;
        Ok(Self { inner, writes })
    }

    /// Runs a point read (one key, or the small shard map) on the calling
    /// task. redb's reads never wait for the writer (MVCC), and one key is
    /// a few page reads, most from redb's cache: handing such a read to the
    /// blocking pool cost more than the read (two thread handoffs; the
    /// four reads of a namespace create were most of its futex calls).
    /// Scans and snapshots still go to the pool ([`Self::blocking`]).
    fn point<T>(&self, f: impl FnOnce(&Inner) -> Result<T>) -> Result<T> {
        f(&self.inner)
    }

    async fn blocking<T: Send + 'static>(&self, f: impl FnOnce(&Inner) -> Result<T> + Send + 'static) -> Result<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner)).await?
    }
}

/// Fills the (empty) live-namespace counts from every stored namespace.
fn count_live_namespaces(
    namespaces: &impl ReadableTable<&'static str, &'static [u8]>,
    live: &mut Table<&'static str, u64>,
) -> Result<()> {
    let mut counts = std::collections::BTreeMap::<String, u64>::new();
    for entry in namespaces.iter().map_err(storage)? {
        let ns = decode_namespace(entry.map_err(storage)?.1.value())?;
        if super::is_live(&ns) {
            *counts.entry(super::tenant_of_name(&ns.name).to_owned()).or_default() += 1;
        }
    }
    for (tenant, count) in counts {
        live.insert(tenant.as_str(), count).map_err(storage)?;
    }
    Ok(())
}

fn meta_get(table: &impl ReadableTable<&'static str, u64>, key: &str) -> Result<u64> {
    Ok(table.get(key).map_err(storage)?.map(|v| v.value()).unwrap_or(0))
}

fn decode_tenant(bytes: &[u8]) -> Result<Tenant> {
    Tenant::decode(bytes).map_err(|e| corrupt("tenant", e))
}

fn decode_namespace(bytes: &[u8]) -> Result<Namespace> {
    Namespace::decode(bytes).map_err(|e| corrupt("namespace", e))
}

fn decode_shard(bytes: &[u8]) -> Result<Shard> {
    Shard::decode(bytes).map_err(|e| corrupt("shard", e))
}

/// The tables of one write transaction, open for a whole group.
struct Tables<'t> {
    meta: Table<'t, &'static str, u64>,
    tenants: Table<'t, &'static str, &'static [u8]>,
    namespaces: Table<'t, &'static str, &'static [u8]>,
    shards: Table<'t, &'static str, &'static [u8]>,
    changes: Table<'t, u64, &'static [u8]>,
    audit: Table<'t, u64, &'static [u8]>,
    live: Table<'t, &'static str, u64>,
}

impl<'t> Tables<'t> {
    fn open(w: &'t WriteTransaction) -> Result<Self> {
        Ok(Self {
            meta: w.open_table(META).map_err(storage)?,
            tenants: w.open_table(TENANTS).map_err(storage)?,
            namespaces: w.open_table(NAMESPACES).map_err(storage)?,
            shards: w.open_table(SHARDS).map_err(storage)?,
            changes: w.open_table(CHANGES).map_err(storage)?,
            audit: w.open_table(AUDIT).map_err(storage)?,
            live: w.open_table(LIVE_NAMESPACES).map_err(storage)?,
        })
    }

    /// What `condition` is about, as it stands now (earlier commits of
    /// the group included: a write transaction reads its own writes).
    fn current(&self, condition: &Condition) -> Result<u64> {
        Ok(match condition {
            Condition::Tenant { id, .. } => match self.tenants.get(id.as_str()).map_err(storage)? {
                Some(v) => decode_tenant(v.value())?.revision,
                None => 0,
            },
            Condition::Namespace { name, .. } => match self.namespaces.get(name.as_str()).map_err(storage)? {
                Some(v) => decode_namespace(v.value())?.revision,
                None => 0,
            },
            Condition::Shard { id, .. } => match self.shards.get(id.as_str()).map_err(storage)? {
                Some(v) => decode_shard(v.value())?.revision,
                None => 0,
            },
            Condition::NamespaceRoom { tenant, .. } | Condition::LiveNamespaces { tenant, .. } => {
                self.live.get(tenant.as_str()).map_err(storage)?.map_or(0, |v| v.value())
            }
        })
    }

    /// Writes a namespace and keeps its tenant's live count.
    fn put_namespace(&mut self, ns: &Namespace) -> Result<()> {
        let was_live = match self.namespaces.insert(ns.name.as_str(), ns.encode_to_vec().as_slice()).map_err(storage)? {
            Some(old) => super::is_live(&decode_namespace(old.value())?),
            None => false,
        };
        let live = super::is_live(ns);
        if was_live != live {
            let tenant = super::tenant_of_name(&ns.name);
            let count = self.live.get(tenant).map_err(storage)?.map_or(0, |v| v.value());
            let count = if live { count + 1 } else { count.saturating_sub(1) };
            if count == 0 {
                self.live.remove(tenant).map_err(storage)?;
            } else {
                self.live.insert(tenant, count).map_err(storage)?;
            }
        }
        Ok(())
    }

    /// Applies one commit at `revision` (its conditions already hold).
    fn apply(&mut self, txn: &Txn, revision: u64, sequence: &mut u64) -> Result<Delta> {
        let now = SystemTime::now();
        let mut delta = Delta { revision, changes: Vec::with_capacity(txn.puts.len()), commit_time: Some(now.into()) };
        for put in &txn.puts {
            match put {
                Put::Tenant(t) => {
                    let mut t = t.clone();
                    t.revision = revision;
                    self.tenants.insert(t.id.as_str(), t.encode_to_vec().as_slice()).map_err(storage)?;
                    delta.changes.push(Change { change: Some(change::Change::Tenant(t)) });
                }
                Put::Namespace(ns) => {
                    let mut ns = ns.clone();
                    ns.revision = revision;
                    if ns.create_revision == 0 {
                        ns.create_revision = revision;
                    }
                    self.put_namespace(&ns)?;
                    delta.changes.push(Change { change: Some(change::Change::Namespace(ns)) });
                }
                Put::Shard(shard) if shard.instances.is_empty() => {
                    self.shards.remove(shard.shard_id.as_str()).map_err(storage)?;
                    delta.changes.push(Change { change: Some(change::Change::ShardRemoved(shard.shard_id.clone())) });
                }
                Put::Shard(shard) => {
                    let mut shard = shard.clone();
                    shard.revision = revision;
                    self.shards.insert(shard.shard_id.as_str(), shard.encode_to_vec().as_slice()).map_err(storage)?;
                    delta.changes.push(Change { change: Some(change::Change::Shard(shard)) });
                }
            }
        }
        self.changes.insert(revision, delta.encode_to_vec().as_slice()).map_err(storage)?;
        for event in &txn.audit {
            let mut event = event.clone();
            *sequence += 1;
            event.sequence = *sequence;
            event.revision = revision;
            self.audit.insert(*sequence, event.encode_to_vec().as_slice()).map_err(storage)?;
        }
        Ok(delta)
    }
}

impl Inner {
    /// The committer thread: one group after another until every queue is
    /// dropped.
    fn run(&self, mut groups: Groups) {
        while let Some(group) = groups.blocking_next() {
            let outcome = self.commit_group(&group::writes(&group));
            for alone in group::answer(group, outcome) {
                let outcome = self.commit_group(&[&alone.write]);
                group::answer(vec![alone], outcome);
            }
        }
    }

    /// Applies `writes` in one write transaction, commits it (one fsync)
    /// and broadcasts the deltas in revision order.
    fn commit_group(&self, writes: &[&Write]) -> Result<Vec<Committed>, Failure> {
        let w = self.db.begin_write().map_err(|e| Failure::NothingWritten(storage(e)))?;
        let (committed, wrote) = match self.write_group(&w, writes) {
            Ok(done) => done,
            Err(e) => {
                // Dropping the transaction would roll it back as well;
                // aborting says so.
                let _ = w.abort();
                return Err(Failure::NothingWritten(e));
            }
        };
        if !wrote {
            // Only conflicts: nothing to make durable.
            w.abort().map_err(|e| Failure::NothingWritten(storage(e)))?;
            return Ok(committed);
        }
        w.commit().map_err(|e| Failure::Commit(storage(e)))?;
        for outcome in &committed {
            if let Committed::Ok(delta) = outcome {
                // No subscriber is not an error: watchers come and go.
                self.deltas.send(delta.clone());
            }
        }
        Ok(committed)
    }

    /// The group's writes, in order; returns each commit's outcome and
    /// whether anything was written.
    fn write_group(&self, w: &WriteTransaction, writes: &[&Write]) -> Result<(Vec<Committed>, bool)> {
        let mut tables = Tables::open(w)?;
        let first = meta_get(&tables.meta, REVISION)?;
        let mut revision = first;
        let mut sequence = meta_get(&tables.meta, AUDIT_SEQUENCE)?;
        let first_sequence = sequence;
        let mut committed = Vec::with_capacity(writes.len());
        for write in writes {
            match write {
                Write::Commit(txn) => {
                    let mut failed = None;
                    for condition in &txn.conditions {
                        if !condition.holds(tables.current(condition)?) {
                            failed = Some(condition.clone());
                            break;
                        }
                    }
                    if let Some(condition) = failed {
                        committed.push(Committed::Conflict(condition));
                        continue;
                    }
                    revision += 1;
                    let delta = tables.apply(txn, revision, &mut sequence)?;
                    committed.push(Committed::Ok(Arc::new(delta)));
                }
                Write::Audit(events) => {
                    for event in events {
                        let mut event = event.clone();
                        sequence += 1;
                        event.sequence = sequence;
                        tables.audit.insert(sequence, event.encode_to_vec().as_slice()).map_err(storage)?;
                    }
                }
            }
        }
        // The log keeps `retention` revisions. The retention may differ
        // from the previous run's, so the mark only ever moves forward (a
        // longer retention cannot bring back dropped deltas; moving the
        // mark back would let a watcher resume across the hole without a
        // snapshot), and a shorter one drops every entry it no longer
        // keeps.
        if revision > first && revision > self.retention {
            let drop_through = revision - self.retention;
            let compacted = meta_get(&tables.meta, COMPACTED)?;
            if drop_through > compacted {
                tables.changes.retain_in(compacted + 1..=drop_through, |_, _| false).map_err(storage)?;
                tables.meta.insert(COMPACTED, drop_through).map_err(storage)?;
            }
        }
        if sequence != first_sequence {
            tables.meta.insert(AUDIT_SEQUENCE, sequence).map_err(storage)?;
        }
        if revision != first {
            tables.meta.insert(REVISION, revision).map_err(storage)?;
        }
        Ok((committed, revision != first || sequence != first_sequence))
    }

    fn changes_since(&self, revision: u64, limit: usize) -> Result<Changes> {
        let r = self.db.begin_read().map_err(storage)?;
        let meta = r.open_table(META).map_err(storage)?;
        if revision < meta_get(&meta, COMPACTED)? {
            return Ok(Changes::Compacted);
        }
        let changes = r.open_table(CHANGES).map_err(storage)?;
        let mut out = Vec::new();
        for entry in changes.range((Bound::Excluded(revision), Bound::Unbounded)).map_err(storage)?.take(limit) {
            let (_, v) = entry.map_err(storage)?;
            out.push(Arc::new(Delta::decode(v.value()).map_err(|e| corrupt("delta", e))?));
        }
        Ok(Changes::Deltas(out))
    }

    /// Reads every object at one revision into `parts` (blocking while the
    /// channel is full); stops quietly when the receiver is gone.
    fn stream_snapshot(&self, parts: &mpsc::Sender<SnapshotPart>) -> Result<()> {
        let r = self.db.begin_read().map_err(storage)?;
        let revision = meta_get(&r.open_table(META).map_err(storage)?, REVISION)?;
        let mut tenants = Vec::new();
        for entry in r.open_table(TENANTS).map_err(storage)?.iter().map_err(storage)? {
            tenants.push(decode_tenant(entry.map_err(storage)?.1.value())?);
        }
        let first = SnapshotPart { revision, tenants, shards: list_shards(&r)?, namespaces: Vec::new() };
        if parts.blocking_send(first).is_err() {
            return Ok(());
        }
        let mut namespaces = Vec::with_capacity(SNAPSHOT_PART);
        for entry in r.open_table(NAMESPACES).map_err(storage)?.iter().map_err(storage)? {
            namespaces.push(decode_namespace(entry.map_err(storage)?.1.value())?);
            if namespaces.len() == SNAPSHOT_PART {
                let part = SnapshotPart { revision, namespaces, ..SnapshotPart::default() };
                if parts.blocking_send(part).is_err() {
                    return Ok(());
                }
                namespaces = Vec::with_capacity(SNAPSHOT_PART);
            }
        }
        if !namespaces.is_empty() {
            let _ = parts.blocking_send(SnapshotPart { revision, namespaces, ..SnapshotPart::default() });
        }
        Ok(())
    }

    fn list_namespaces(&self, tenant: &str, after: &str, limit: usize) -> Result<Vec<Namespace>> {
        let r = self.db.begin_read().map_err(storage)?;
        let table = r.open_table(NAMESPACES).map_err(storage)?;
        // '0' is the byte after '/': `tenant/` .. `tenant0` holds exactly
        // the tenant's names.
        let (prefix, end) = (format!("{tenant}/"), format!("{tenant}0"));
        let start = if !tenant.is_empty() && after < prefix.as_str() {
            Bound::Included(prefix.as_str())
        } else if after.is_empty() {
            Bound::Unbounded
        } else {
            Bound::Excluded(after)
        };
        let end = if tenant.is_empty() { Bound::Unbounded } else { Bound::Excluded(end.as_str()) };
        let mut out = Vec::new();
        for entry in table.range::<&str>((start, end)).map_err(storage)?.take(limit) {
            out.push(decode_namespace(entry.map_err(storage)?.1.value())?);
        }
        Ok(out)
    }

    fn list_audit(&self, filter: &AuditFilter, limit: usize) -> Result<Vec<AuditEvent>> {
        let r = self.db.begin_read().map_err(storage)?;
        let table = r.open_table(AUDIT).map_err(storage)?;
        let end = filter.before_sequence.map_or(Bound::Unbounded, Bound::Excluded);
        let matches = |text: &str, want: &str| want.is_empty() || text == want;
        let mut out = Vec::new();
        for entry in table.range::<u64>((Bound::Unbounded, end)).map_err(storage)?.rev() {
            let event = AuditEvent::decode(entry.map_err(storage)?.1.value()).map_err(|e| corrupt("audit event", e))?;
            let seconds = event.time.as_ref().map_or(0, |t| t.seconds);
            if seconds < filter.since_seconds {
                break; // newest first: everything further is older still
            }
            if matches(&event.tenant_id, &filter.tenant_id)
                && matches(&event.target, &filter.target)
                && matches(&event.principal, &filter.principal)
                && matches(&event.action, &filter.action)
            {
                out.push(event);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }
}

fn list_shards(r: &redb::ReadTransaction) -> Result<Vec<Shard>> {
    let mut out = Vec::new();
    for entry in r.open_table(SHARDS).map_err(storage)?.iter().map_err(storage)? {
        out.push(decode_shard(entry.map_err(storage)?.1.value())?);
    }
    Ok(out)
}

#[async_trait]
impl Store for FileStore {
    async fn revision(&self) -> Result<u64> {
        self.point(|s| {
            let r = s.db.begin_read().map_err(storage)?;
            meta_get(&r.open_table(META).map_err(storage)?, REVISION)
        })
    }

    async fn get_tenant(&self, id: &str) -> Result<Option<Tenant>> {
        self.point(|s| {
            let r = s.db.begin_read().map_err(storage)?;
            let table = r.open_table(TENANTS).map_err(storage)?;
            table.get(id).map_err(storage)?.map(|v| decode_tenant(v.value())).transpose()
        })
    }

    async fn get_namespace(&self, name: &str) -> Result<Option<Namespace>> {
        self.point(|s| {
            let r = s.db.begin_read().map_err(storage)?;
            let table = r.open_table(NAMESPACES).map_err(storage)?;
            table.get(name).map_err(storage)?.map(|v| decode_namespace(v.value())).transpose()
        })
    }

    async fn list_tenants(&self, after: &str, limit: usize) -> Result<Vec<Tenant>> {
        let after = after.to_owned();
        self.blocking(move |s| {
            let r = s.db.begin_read().map_err(storage)?;
            let table = r.open_table(TENANTS).map_err(storage)?;
            let start = if after.is_empty() { Bound::Unbounded } else { Bound::Excluded(after.as_str()) };
            let mut out = Vec::new();
            for entry in table.range::<&str>((start, Bound::Unbounded)).map_err(storage)?.take(limit) {
                out.push(decode_tenant(entry.map_err(storage)?.1.value())?);
            }
            Ok(out)
        })
        .await
    }

    async fn list_namespaces(&self, tenant: &str, after: &str, limit: usize) -> Result<Vec<Namespace>> {
        let (tenant, after) = (tenant.to_owned(), after.to_owned());
        self.blocking(move |s| s.list_namespaces(&tenant, &after, limit)).await
    }

    async fn list_shards(&self) -> Result<Vec<Shard>> {
        self.point(|s| list_shards(&s.db.begin_read().map_err(storage)?))
    }

    async fn live_namespaces(&self, tenant: &str) -> Result<u64> {
        self.point(|s| {
            let r = s.db.begin_read().map_err(storage)?;
            let table = r.open_table(LIVE_NAMESPACES).map_err(storage)?;
            Ok(table.get(tenant).map_err(storage)?.map_or(0, |v| v.value()))
        })
    }

    async fn commit(&self, txn: Txn) -> Result<Committed> {
        self.writes.commit(txn).await
    }

    async fn stream_snapshot(&self, parts: mpsc::Sender<SnapshotPart>) -> Result<()> {
        self.blocking(move |s| s.stream_snapshot(&parts)).await
    }

    async fn changes_since(&self, revision: u64, limit: usize) -> Result<Changes> {
        self.blocking(move |s| s.changes_since(revision, limit)).await
    }

    async fn append_audit(&self, events: Vec<AuditEvent>) -> Result<()> {
        self.writes.append_audit(events).await
    }

    async fn list_audit(&self, filter: AuditFilter, limit: usize) -> Result<Vec<AuditEvent>> {
        self.blocking(move |s| s.list_audit(&filter, limit)).await
    }

    fn subscribe(&self) -> bus::Receiver {
        self.inner.deltas.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use prism_proto::control::NamespaceStatus;

    use super::*;

    fn namespace(name: &str, status: NamespaceStatus) -> Put {
        Put::Namespace(Namespace { name: name.into(), status: status as i32, ..Namespace::default() })
    }

    /// The store's inner part once `store` is dropped and its committer
    /// thread, whose queue that closes, has let go of it.
    async fn last_handle(store: FileStore) -> Arc<Inner> {
        let inner = store.inner.clone();
        drop(store);
        for _ in 0..1000 {
            if Arc::strong_count(&inner) == 1 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(Arc::strong_count(&inner), 1, "the committer thread stops when its queue closes");
        inner
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn live_namespaces_are_counted_when_a_store_without_counts_is_opened() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| storage(redb::StorageError::Io(e)))?;
        let store = FileStore::open(dir.path(), 8, 100)?;
        let puts = vec![
            namespace("acme/a", NamespaceStatus::Active),
            namespace("acme/b", NamespaceStatus::Deleting),
            namespace("acme/c", NamespaceStatus::Deleted),
            namespace("beta/a", NamespaceStatus::Provisioning),
        ];
        store.commit(Txn { puts, ..Txn::default() }).await?;
        assert_eq!((store.live_namespaces("acme").await?, store.live_namespaces("beta").await?), (2, 1));

        // Forget the counts, as a store written before they existed.
        let inner = last_handle(store).await;
        let w = inner.db.begin_write().map_err(storage)?;
        {
            w.open_table(META).map_err(storage)?.remove(LIVE_COUNTED).map_err(storage)?;
            w.open_table(LIVE_NAMESPACES).map_err(storage)?.retain(|_, _| false).map_err(storage)?;
        }
        w.commit().map_err(storage)?;
        drop(inner);

        let store = FileStore::open(dir.path(), 8, 100)?;
        assert_eq!((store.live_namespaces("acme").await?, store.live_namespaces("beta").await?), (2, 1));
        assert_eq!(store.live_namespaces("gamma").await?, 0);
        Ok(())
    }
}
