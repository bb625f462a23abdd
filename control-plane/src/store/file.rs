//! The embedded metadata store: one redb file in the data directory.
//!
//! redb gives ACID transactions with fsync on commit and MVCC readers, so a
//! snapshot is consistent at one revision without blocking writers, and a
//! restart finds every acknowledged commit. Commits are serialised by a
//! mutex held from `begin_write` to the broadcast, so subscribers receive
//! deltas in exactly revision order.
//!
//! # Durability
//!
//! A commit is one redb transaction at redb's default
//! `Durability::Immediate` (pages and a checksummed header slot written,
//! the header switched, the file fsynced before `commit` returns) holding
//! the objects, the delta in the change log, the audit events and the new
//! revision. The RPC is answered, and the delta broadcast to watchers,
//! only after it returns: what a client or a watcher has seen survives
//! the process being killed and the machine losing power, so revisions
//! never go back and a watcher resuming from the last revision it applied
//! gets exactly the deltas after it. A commit in flight when the process
//! dies is there wholly or not at all. After a crash redb rebuilds its
//! allocator state on open, losing nothing committed.
//! `cli/tests/crash.rs` kills a control plane in the middle of commits and
//! checks all of this (a kill, not a power cut: that rests on the disk
//! honouring fsync).

use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;
use prism_proto::control::{AuditEvent, Change, Delta, Namespace, Shard, Tenant, change};
use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::broadcast;

use super::{AuditFilter, Changes, Committed, Condition, Put, Snapshot, Store, Txn};
use crate::error::{ControlPlaneError, Result};

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const TENANTS: TableDefinition<&str, &[u8]> = TableDefinition::new("tenants");
const NAMESPACES: TableDefinition<&str, &[u8]> = TableDefinition::new("namespaces");
const SHARDS: TableDefinition<&str, &[u8]> = TableDefinition::new("shards");
const CHANGES: TableDefinition<u64, &[u8]> = TableDefinition::new("changes");
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");

const REVISION: &str = "revision";
/// Every delta at or below this revision has been dropped from the log.
const COMPACTED: &str = "compacted";
const AUDIT_SEQUENCE: &str = "audit_sequence";

/// File name of the store inside the data directory.
pub const FILE_NAME: &str = "control-plane.redb";

#[derive(Clone)]
pub struct FileStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    /// Held from the start of a write transaction until its delta is
    /// broadcast; only ever taken on blocking threads.
    commit_lock: Mutex<()>,
    deltas: broadcast::Sender<Arc<Delta>>,
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
        std::fs::create_dir_all(dir).map_err(|e| storage(redb::StorageError::Io(e)))?;
        let db = Database::create(dir.join(FILE_NAME)).map_err(storage)?;
        let w = db.begin_write().map_err(storage)?;
        {
            w.open_table(META).map_err(storage)?;
            w.open_table(TENANTS).map_err(storage)?;
            w.open_table(NAMESPACES).map_err(storage)?;
            w.open_table(SHARDS).map_err(storage)?;
            w.open_table(CHANGES).map_err(storage)?;
            w.open_table(AUDIT).map_err(storage)?;
        }
        w.commit().map_err(storage)?;
        let (deltas, _) = broadcast::channel(watch_buffer.max(1));
        Ok(Self { inner: Arc::new(Inner { db, commit_lock: Mutex::new(()), deltas, retention: retention.max(1) }) })
    }

    async fn blocking<T: Send + 'static>(&self, f: impl FnOnce(&Inner) -> Result<T> + Send + 'static) -> Result<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner)).await?
    }
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

impl Inner {
    fn commit(&self, txn: Txn) -> Result<Committed> {
        let _serialised =
            self.commit_lock.lock().map_err(|_| ControlPlaneError::Corrupt("commit lock poisoned".into()))?;
        let w = self.db.begin_write().map_err(storage)?;
        let delta = {
            let mut meta = w.open_table(META).map_err(storage)?;
            let mut tenants = w.open_table(TENANTS).map_err(storage)?;
            let mut namespaces = w.open_table(NAMESPACES).map_err(storage)?;
            let mut shards = w.open_table(SHARDS).map_err(storage)?;
            let mut changes = w.open_table(CHANGES).map_err(storage)?;
            let mut audit = w.open_table(AUDIT).map_err(storage)?;

            for condition in &txn.conditions {
                let current = match condition {
                    Condition::Tenant { id, .. } => match tenants.get(id.as_str()).map_err(storage)? {
                        Some(v) => decode_tenant(v.value())?.revision,
                        None => 0,
                    },
                    Condition::Namespace { name, .. } => match namespaces.get(name.as_str()).map_err(storage)? {
                        Some(v) => decode_namespace(v.value())?.revision,
                        None => 0,
                    },
                    Condition::Shard { id, .. } => match shards.get(id.as_str()).map_err(storage)? {
                        Some(v) => decode_shard(v.value())?.revision,
                        None => 0,
                    },
                };
                if current != condition.revision() {
                    drop((meta, tenants, namespaces, shards, changes, audit));
                    w.abort().map_err(storage)?;
                    return Ok(Committed::Conflict(condition.clone()));
                }
            }

            let revision = meta_get(&meta, REVISION)? + 1;
            let now = SystemTime::now();
            let mut delta =
                Delta { revision, changes: Vec::with_capacity(txn.puts.len()), commit_time: Some(now.into()) };
            for put in txn.puts {
                match put {
                    Put::Tenant(mut t) => {
                        t.revision = revision;
                        tenants.insert(t.id.as_str(), t.encode_to_vec().as_slice()).map_err(storage)?;
                        delta.changes.push(Change { change: Some(change::Change::Tenant(t)) });
                    }
                    Put::Namespace(mut ns) => {
                        ns.revision = revision;
                        if ns.create_revision == 0 {
                            ns.create_revision = revision;
                        }
                        namespaces.insert(ns.name.as_str(), ns.encode_to_vec().as_slice()).map_err(storage)?;
                        delta.changes.push(Change { change: Some(change::Change::Namespace(ns)) });
                    }
                    Put::Shard(mut shard) if shard.instances.is_empty() => {
                        shards.remove(shard.shard_id.as_str()).map_err(storage)?;
                        let id = std::mem::take(&mut shard.shard_id);
                        delta.changes.push(Change { change: Some(change::Change::ShardRemoved(id)) });
                    }
                    Put::Shard(mut shard) => {
                        shard.revision = revision;
                        shards.insert(shard.shard_id.as_str(), shard.encode_to_vec().as_slice()).map_err(storage)?;
                        delta.changes.push(Change { change: Some(change::Change::Shard(shard)) });
                    }
                }
            }
            changes.insert(revision, delta.encode_to_vec().as_slice()).map_err(storage)?;
            // One delta in, one out: the log stays at `retention` entries.
            // The retention may differ from the previous run's, so the mark
            // only ever moves forward (a longer retention cannot bring back
            // dropped deltas; moving the mark back would let a watcher
            // resume across the hole without a snapshot), and a shorter one
            // drops every entry it no longer keeps, not just one.
            if revision > self.retention {
                let drop_through = revision - self.retention;
                let compacted = meta_get(&meta, COMPACTED)?;
                if drop_through > compacted {
                    changes.retain_in(compacted + 1..=drop_through, |_, _| false).map_err(storage)?;
                    meta.insert(COMPACTED, drop_through).map_err(storage)?;
                }
            }
            let mut sequence = meta_get(&meta, AUDIT_SEQUENCE)?;
            for mut event in txn.audit {
                sequence += 1;
                event.sequence = sequence;
                event.revision = revision;
                audit.insert(sequence, event.encode_to_vec().as_slice()).map_err(storage)?;
            }
            meta.insert(AUDIT_SEQUENCE, sequence).map_err(storage)?;
            meta.insert(REVISION, revision).map_err(storage)?;
            delta
        };
        w.commit().map_err(storage)?;
        let delta = Arc::new(delta);
        // No subscriber is not an error: watchers come and go.
        let _ = self.deltas.send(delta.clone());
        Ok(Committed::Ok(delta))
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

    fn snapshot(&self) -> Result<Snapshot> {
        let r = self.db.begin_read().map_err(storage)?;
        let revision = meta_get(&r.open_table(META).map_err(storage)?, REVISION)?;
        let mut snapshot = Snapshot { revision, ..Snapshot::default() };
        for entry in r.open_table(TENANTS).map_err(storage)?.iter().map_err(storage)? {
            snapshot.tenants.push(decode_tenant(entry.map_err(storage)?.1.value())?);
        }
        for entry in r.open_table(NAMESPACES).map_err(storage)?.iter().map_err(storage)? {
            snapshot.namespaces.push(decode_namespace(entry.map_err(storage)?.1.value())?);
        }
        snapshot.shards = list_shards(&r)?;
        Ok(snapshot)
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

    fn append_audit(&self, events: Vec<AuditEvent>) -> Result<()> {
        let _serialised =
            self.commit_lock.lock().map_err(|_| ControlPlaneError::Corrupt("commit lock poisoned".into()))?;
        let w = self.db.begin_write().map_err(storage)?;
        {
            let mut meta = w.open_table(META).map_err(storage)?;
            let mut audit = w.open_table(AUDIT).map_err(storage)?;
            let mut sequence = meta_get(&meta, AUDIT_SEQUENCE)?;
            for mut event in events {
                sequence += 1;
                event.sequence = sequence;
                audit.insert(sequence, event.encode_to_vec().as_slice()).map_err(storage)?;
            }
            meta.insert(AUDIT_SEQUENCE, sequence).map_err(storage)?;
        }
        w.commit().map_err(storage)
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
        self.blocking(|s| {
            let r = s.db.begin_read().map_err(storage)?;
            meta_get(&r.open_table(META).map_err(storage)?, REVISION)
        })
        .await
    }

    async fn get_tenant(&self, id: &str) -> Result<Option<Tenant>> {
        let id = id.to_owned();
        self.blocking(move |s| {
            let r = s.db.begin_read().map_err(storage)?;
            let table = r.open_table(TENANTS).map_err(storage)?;
            table.get(id.as_str()).map_err(storage)?.map(|v| decode_tenant(v.value())).transpose()
        })
        .await
    }

    async fn get_namespace(&self, name: &str) -> Result<Option<Namespace>> {
        let name = name.to_owned();
        self.blocking(move |s| {
            let r = s.db.begin_read().map_err(storage)?;
            let table = r.open_table(NAMESPACES).map_err(storage)?;
            table.get(name.as_str()).map_err(storage)?.map(|v| decode_namespace(v.value())).transpose()
        })
        .await
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
        self.blocking(|s| list_shards(&s.db.begin_read().map_err(storage)?)).await
    }

    async fn commit(&self, txn: Txn) -> Result<Committed> {
        self.blocking(move |s| s.commit(txn)).await
    }

    async fn snapshot(&self) -> Result<Snapshot> {
        self.blocking(|s| s.snapshot()).await
    }

    async fn changes_since(&self, revision: u64, limit: usize) -> Result<Changes> {
        self.blocking(move |s| s.changes_since(revision, limit)).await
    }

    async fn append_audit(&self, events: Vec<AuditEvent>) -> Result<()> {
        self.blocking(move |s| s.append_audit(events)).await
    }

    async fn list_audit(&self, filter: AuditFilter, limit: usize) -> Result<Vec<AuditEvent>> {
        self.blocking(move |s| s.list_audit(&filter, limit)).await
    }

    fn subscribe(&self) -> broadcast::Receiver<Arc<Delta>> {
        self.inner.deltas.subscribe()
    }
}
