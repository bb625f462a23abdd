//! The Postgres metadata store: several control-plane replicas on one
//! database, all taking reads and writes, every replica's watchers seeing
//! every commit exactly once, in revision order.
//!
//! # Layout
//!
//! Five tables in one schema (default `prism_control`), created on open
//! (idempotently, under an advisory lock, so replicas starting together do
//! not race): `meta` (one row: revision, compacted, audit_sequence),
//! `tenants` and `namespaces` (key, revision, encoded protobuf), `changes`
//! (revision → encoded delta) and `audit` (sequence → encoded event, plus
//! the columns the listing filters on). Keys are `text COLLATE "C"`, so
//! they sort by bytes, as the file store's do.
//!
//! # Commits
//!
//! A commit is one `READ COMMITTED` transaction that first increments the
//! revision in `meta` (`UPDATE … RETURNING`): the row lock serialises
//! commits across every replica, and each later statement sees what the
//! previous committer wrote. Then it checks the conditions, writes the
//! objects, the delta, the compaction and the audit events exactly as the
//! file store does, `pg_notify`s the revision and commits. A failed
//! condition rolls back, increment included: revisions stay contiguous.
//!
//! # Ordered broadcast
//!
//! Commits are never broadcast from the commit path. One task per store
//! holds a dedicated connection that `LISTEN`s; on a notification (any
//! replica's), on a local commit, every [`POLL`] and after each reconnect,
//! it reads `changes` after the last revision it sent, in order, and sends
//! only the contiguous run that follows it. A revision that is not visible
//! yet stops the run until it is; nothing is sent twice or out of order.
//! A broadcaster that fell behind the compacted log jumps over the hole:
//! watchers see the gap and rebuild from the log or a snapshot (watch.rs).
//!
//! Connection failures are UNAVAILABLE and never name the DSN.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use prism_proto::control::{AuditEvent, Change, Delta, Namespace, Shard, Tenant, change};
use prost::Message;
use tokio::sync::{Notify, broadcast};
use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, IsolationLevel, NoTls};

use super::{AuditFilter, Changes, Committed, Condition, Put, Snapshot, Store, Txn};
use crate::error::{ControlPlaneError, Result};

/// The schema when the configuration names none.
pub const DEFAULT_SCHEMA: &str = "prism_control";
/// The channel commits are announced on (payload: the revision). Shared by
/// every schema of a database: a wake-up for another schema only costs an
/// empty read.
const CHANNEL: &str = "prism_control_changes";
/// How often the broadcaster reads the log without a notification: the
/// bound on how late a lost notification makes a delta.
const POLL: Duration = Duration::from_millis(500);
/// Deltas read from the log per broadcaster query.
const BROADCAST_BATCH: i64 = 1000;
/// Connections of the store's pool (the broadcaster has its own).
const POOL_SIZE: usize = 8;
/// Connecting, and waiting for a pooled connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Statements end at the server after this long.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest pause between the broadcaster's reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    tables: Tables,
    deltas: broadcast::Sender<Arc<Delta>>,
    /// Wakes the broadcaster (a local commit).
    wake: Arc<Notify>,
    retention: u64,
    broadcaster: JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.broadcaster.abort();
    }
}

/// Quoted, schema-qualified table names, ready for SQL.
#[derive(Clone)]
struct Tables {
    schema: String,
    meta: String,
    tenants: String,
    namespaces: String,
    shards: String,
    changes: String,
    audit: String,
}

impl Tables {
    fn new(schema: &str) -> Self {
        let q = quote_ident(schema);
        let t = |name: &str| format!("{q}.{}", quote_ident(name));
        Self {
            meta: t("meta"),
            tenants: t("tenants"),
            namespaces: t("namespaces"),
            shards: t("shards"),
            changes: t("changes"),
            audit: t("audit"),
            schema: q,
        }
    }

    fn ddl(&self) -> String {
        let Self { schema, meta, tenants, namespaces, shards, changes, audit } = self;
        format!(
            "CREATE SCHEMA IF NOT EXISTS {schema};
            CREATE TABLE IF NOT EXISTS {meta} (
                id smallint PRIMARY KEY CHECK (id = 1),
                revision bigint NOT NULL,
                compacted bigint NOT NULL,
                audit_sequence bigint NOT NULL
            );
            INSERT INTO {meta} (id, revision, compacted, audit_sequence) VALUES (1, 0, 0, 0)
                ON CONFLICT (id) DO NOTHING;
            CREATE TABLE IF NOT EXISTS {tenants} (
                id text COLLATE \"C\" PRIMARY KEY,
                revision bigint NOT NULL,
                body bytea NOT NULL
            );
            CREATE TABLE IF NOT EXISTS {namespaces} (
                name text COLLATE \"C\" PRIMARY KEY,
                revision bigint NOT NULL,
                body bytea NOT NULL
            );
            CREATE TABLE IF NOT EXISTS {shards} (
                id text COLLATE \"C\" PRIMARY KEY,
                revision bigint NOT NULL,
                body bytea NOT NULL
            );
            CREATE TABLE IF NOT EXISTS {changes} (
                revision bigint PRIMARY KEY,
                body bytea NOT NULL
            );
            CREATE TABLE IF NOT EXISTS {audit} (
                sequence bigint PRIMARY KEY,
                tenant_id text NOT NULL,
                target text NOT NULL,
                principal text NOT NULL,
                action text NOT NULL,
                time_seconds bigint NOT NULL,
                body bytea NOT NULL
            );"
        )
    }
}

/// `identifier` as a quoted SQL identifier.
fn quote_ident(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

/// An error of the database: UNAVAILABLE when it is down, unreachable,
/// overloaded or shutting down, else internal. The detail (which may name
/// the server) stays in the server's log.
fn db(e: tokio_postgres::Error) -> ControlPlaneError {
    let unavailable = match e.code() {
        // No answer from the server at all.
        None => true,
        Some(code) => {
            *code == SqlState::QUERY_CANCELED
                || matches!(code.code().get(..2), Some("08" | "57" | "53" | "40" | "28" | "3D"))
        }
    };
    if unavailable {
        ControlPlaneError::StoreUnavailable(e.to_string())
    } else {
        ControlPlaneError::Database(e.to_string())
    }
}

fn pool_error(e: PoolError) -> ControlPlaneError {
    match e {
        PoolError::Backend(e) => db(e),
        PoolError::Timeout(_) | PoolError::Closed => ControlPlaneError::StoreUnavailable(e.to_string()),
        other => ControlPlaneError::Database(other.to_string()),
    }
}

fn corrupt(what: &str, e: prost::DecodeError) -> ControlPlaneError {
    ControlPlaneError::Corrupt(format!("{what} does not decode: {e}"))
}

fn to_db(n: u64) -> Result<i64> {
    i64::try_from(n).map_err(|_| ControlPlaneError::Corrupt(format!("{n} does not fit a bigint")))
}

fn from_db(n: i64) -> Result<u64> {
    u64::try_from(n).map_err(|_| ControlPlaneError::Corrupt(format!("negative revision or sequence {n}")))
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

fn decode_delta(bytes: &[u8]) -> Result<Delta> {
    Delta::decode(bytes).map_err(|e| corrupt("delta", e))
}

/// Parses a DSN without keeping the parser's message (it may quote it).
pub fn parse_dsn(dsn: &str) -> Result<tokio_postgres::Config> {
    let shape_ok = dsn.starts_with("postgres://") || dsn.starts_with("postgresql://");
    match dsn.parse::<tokio_postgres::Config>() {
        Ok(config) if shape_ok => Ok(config),
        _ => Err(ControlPlaneError::Config {
            field: "store".into(),
            description: "is not a valid postgres:// or postgresql:// URL".into(),
        }),
    }
}

impl PgStore {
    /// Connects to `dsn`, creates the tables in `schema` if needed and
    /// starts the broadcaster. `watch_buffer` bounds the deltas buffered
    /// per subscriber; `retention` is how many revisions the change log
    /// keeps.
    pub async fn open(dsn: &str, schema: &str, watch_buffer: usize, retention: u64) -> Result<Self> {
        let mut config = parse_dsn(dsn)?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        let timeout = format!("-c statement_timeout={}", STATEMENT_TIMEOUT.as_millis());
        let options = match config.get_options() {
            Some(given) if !given.trim().is_empty() => format!("{given} {timeout}"),
            _ => timeout,
        };
        config.options(options);
        if config.get_application_name().is_none() {
            config.application_name("prism-control-plane");
        }
        // A peer that vanished without closing is noticed.
        config.keepalives(true).keepalives_idle(Duration::from_secs(30));
        let manager =
            Manager::from_config(config.clone(), NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| ControlPlaneError::Config { field: "store".into(), description: e.to_string() })?;
        let tables = Tables::new(schema);
        let revision = {
            let mut client = pool.get().await.map_err(pool_error)?;
            let t = client.transaction().await.map_err(db)?;
            // Replicas starting together would race on the catalog.
            t.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&schema]).await.map_err(db)?;
            t.batch_execute(&tables.ddl()).await.map_err(db)?;
            let row =
                t.query_one(&format!("SELECT revision FROM {} WHERE id = 1", tables.meta), &[]).await.map_err(db)?;
            t.commit().await.map_err(db)?;
            from_db(row.get(0))?
        };
        let (deltas, _) = broadcast::channel(watch_buffer.max(1));
        let wake = Arc::new(Notify::new());
        let broadcaster =
            Broadcaster { config, tables: tables.clone(), deltas: deltas.clone(), wake: wake.clone(), last: revision };
        let broadcaster = tokio::spawn(broadcaster.run());
        Ok(Self { inner: Arc::new(Inner { pool, tables, deltas, wake, retention: retention.max(1), broadcaster }) })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.inner.pool.get().await.map_err(pool_error)
    }
}

/// Sends the log's deltas to the subscribers, in revision order.
struct Broadcaster {
    config: tokio_postgres::Config,
    tables: Tables,
    deltas: broadcast::Sender<Arc<Delta>>,
    wake: Arc<Notify>,
    /// The last revision sent (or known to every subscriber: the revision
    /// when the store was opened).
    last: u64,
}

impl Broadcaster {
    async fn run(mut self) {
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.listen().await {
                Ok(()) => return,
                Err(error) => {
                    tracing::warn!(%error, "control-plane store broadcaster lost its connection; reconnecting");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// One connection's life: LISTEN, then read the log on every wake-up
    /// until the connection fails.
    async fn listen(&mut self) -> Result<()> {
        let (client, mut connection) = self.config.connect(NoTls).await.map_err(db)?;
        let wake = self.wake.clone();
        // The connection delivers notifications; it ends when it fails.
        let mut connection = tokio::spawn(async move {
            loop {
                match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                    Some(Ok(AsyncMessage::Notification(_))) => wake.notify_one(),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return db(e),
                    None => return ControlPlaneError::StoreUnavailable("the listening connection closed".into()),
                }
            }
        });
        let outcome = async {
            client.batch_execute(&format!("LISTEN {}", quote_ident(CHANNEL))).await.map_err(db)?;
            let mut poll = tokio::time::interval(POLL);
            poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                // Read first: commits made while disconnected are caught up.
                self.drain(&client).await?;
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = poll.tick() => {}
                    ended = &mut connection => {
                        return Err(ended.unwrap_or_else(ControlPlaneError::from));
                    }
                }
            }
        }
        .await;
        connection.abort();
        outcome
    }

    /// Sends every delta after `last` that follows it without a gap.
    async fn drain(&mut self, client: &tokio_postgres::Client) -> Result<()> {
        let sql = format!(
            "SELECT revision, body FROM {} WHERE revision > $1 ORDER BY revision LIMIT $2",
            self.tables.changes
        );
        loop {
            let rows = client.query(&sql, &[&to_db(self.last)?, &BROADCAST_BATCH]).await.map_err(db)?;
            let full = rows.len() as i64 == BROADCAST_BATCH;
            let mut gap = false;
            for row in &rows {
                let revision = from_db(row.get(0))?;
                if revision != self.last + 1 {
                    gap = true;
                    break;
                }
                let delta = decode_delta(row.get(1))?;
                // No subscriber is not an error: watchers come and go.
                let _ = self.deltas.send(Arc::new(delta));
                self.last = revision;
            }
            if gap || rows.is_empty() {
                // Compacted past what was sent: the log cannot fill the
                // hole, so jump it (watchers rebuild across it); else the
                // missing revision is not visible yet and will be.
                let sql = format!("SELECT compacted FROM {} WHERE id = 1", self.tables.meta);
                let compacted = from_db(client.query_one(&sql, &[]).await.map_err(db)?.get(0))?;
                if compacted > self.last {
                    tracing::warn!(from = self.last, to = compacted, "broadcaster fell behind the change log");
                    self.last = compacted;
                    continue;
                }
                return Ok(());
            }
            if !full {
                return Ok(());
            }
        }
    }
}

impl PgStore {
    async fn commit_txn(&self, txn: Txn) -> Result<Committed> {
        let Tables { meta, tenants, namespaces, shards, changes, audit, .. } = &self.inner.tables;
        let mut client = self.client().await?;
        let t = client.transaction().await.map_err(db)?;
        // The row lock serialises every commit of every replica.
        let row = t
            .query_one(
                &format!("UPDATE {meta} SET revision = revision + 1 WHERE id = 1 RETURNING revision, compacted, audit_sequence"),
                &[],
            )
            .await
            .map_err(db)?;
        let revision = from_db(row.get(0))?;
        let compacted = from_db(row.get(1))?;
        let mut sequence = from_db(row.get(2))?;

        for condition in &txn.conditions {
            let (sql, key, expected) = match condition {
                Condition::Tenant { id, revision } => {
                    (format!("SELECT revision FROM {tenants} WHERE id = $1"), id, *revision)
                }
                Condition::Namespace { name, revision } => {
                    (format!("SELECT revision FROM {namespaces} WHERE name = $1"), name, *revision)
                }
                Condition::Shard { id, revision } => {
                    (format!("SELECT revision FROM {shards} WHERE id = $1"), id, *revision)
                }
            };
            let current = match t.query_opt(&sql, &[key]).await.map_err(db)? {
                Some(row) => from_db(row.get(0))?,
                None => 0,
            };
            if current != expected {
                t.rollback().await.map_err(db)?;
                return Ok(Committed::Conflict(condition.clone()));
            }
        }

        let db_revision = to_db(revision)?;
        let now = SystemTime::now();
        let mut delta = Delta { revision, changes: Vec::with_capacity(txn.puts.len()), commit_time: Some(now.into()) };
        let put_tenant = format!(
            "INSERT INTO {tenants} (id, revision, body) VALUES ($1, $2, $3)
             ON CONFLICT (id) DO UPDATE SET revision = EXCLUDED.revision, body = EXCLUDED.body"
        );
        let put_namespace = format!(
            "INSERT INTO {namespaces} (name, revision, body) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO UPDATE SET revision = EXCLUDED.revision, body = EXCLUDED.body"
        );
        let put_shard = format!(
            "INSERT INTO {shards} (id, revision, body) VALUES ($1, $2, $3)
             ON CONFLICT (id) DO UPDATE SET revision = EXCLUDED.revision, body = EXCLUDED.body"
        );
        for put in txn.puts {
            match put {
                Put::Tenant(mut tenant) => {
                    tenant.revision = revision;
                    t.execute(&put_tenant, &[&tenant.id, &db_revision, &tenant.encode_to_vec()]).await.map_err(db)?;
                    delta.changes.push(Change { change: Some(change::Change::Tenant(tenant)) });
                }
                Put::Namespace(mut ns) => {
                    ns.revision = revision;
                    if ns.create_revision == 0 {
                        ns.create_revision = revision;
                    }
                    t.execute(&put_namespace, &[&ns.name, &db_revision, &ns.encode_to_vec()]).await.map_err(db)?;
                    delta.changes.push(Change { change: Some(change::Change::Namespace(ns)) });
                }
                Put::Shard(shard) if shard.instances.is_empty() => {
                    t.execute(&format!("DELETE FROM {shards} WHERE id = $1"), &[&shard.shard_id]).await.map_err(db)?;
                    delta.changes.push(Change { change: Some(change::Change::ShardRemoved(shard.shard_id)) });
                }
                Put::Shard(mut shard) => {
                    shard.revision = revision;
                    t.execute(&put_shard, &[&shard.shard_id, &db_revision, &shard.encode_to_vec()])
                        .await
                        .map_err(db)?;
                    delta.changes.push(Change { change: Some(change::Change::Shard(shard)) });
                }
            }
        }
        t.execute(
            &format!("INSERT INTO {changes} (revision, body) VALUES ($1, $2)"),
            &[&db_revision, &delta.encode_to_vec()],
        )
        .await
        .map_err(db)?;
        // As the file store: the log keeps `retention` revisions, and the
        // mark only moves forward (a longer retention cannot bring dropped
        // deltas back; a shorter one drops all it no longer keeps).
        let mut new_compacted = compacted;
        if revision > self.inner.retention {
            let drop_through = revision - self.inner.retention;
            if drop_through > compacted {
                t.execute(
                    &format!("DELETE FROM {changes} WHERE revision > $1 AND revision <= $2"),
                    &[&to_db(compacted)?, &to_db(drop_through)?],
                )
                .await
                .map_err(db)?;
                new_compacted = drop_through;
            }
        }
        for mut event in txn.audit {
            sequence += 1;
            event.sequence = sequence;
            event.revision = revision;
            insert_audit(&t, audit, &event).await?;
        }
        t.execute(
            &format!("UPDATE {meta} SET compacted = $1, audit_sequence = $2 WHERE id = 1"),
            &[&to_db(new_compacted)?, &to_db(sequence)?],
        )
        .await
        .map_err(db)?;
        t.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &revision.to_string()]).await.map_err(db)?;
        t.commit().await.map_err(db)?;
        // The broadcaster sends it, in order with every other replica's.
        self.inner.wake.notify_one();
        Ok(Committed::Ok(Arc::new(delta)))
    }
}

async fn insert_audit(t: &deadpool_postgres::Transaction<'_>, table: &str, event: &AuditEvent) -> Result<()> {
    let seconds = event.time.as_ref().map_or(0, |t| t.seconds);
    t.execute(
        &format!(
            "INSERT INTO {table} (sequence, tenant_id, target, principal, action, time_seconds, body)
             VALUES ($1, $2, $3, $4, $5, $6, $7)"
        ),
        &[
            &to_db(event.sequence)?,
            &event.tenant_id,
            &event.target,
            &event.principal,
            &event.action,
            &seconds,
            &event.encode_to_vec(),
        ],
    )
    .await
    .map_err(db)?;
    Ok(())
}

#[async_trait]
impl Store for PgStore {
    async fn revision(&self) -> Result<u64> {
        let client = self.client().await?;
        let sql = format!("SELECT revision FROM {} WHERE id = 1", self.inner.tables.meta);
        from_db(client.query_one(&sql, &[]).await.map_err(db)?.get(0))
    }

    async fn get_tenant(&self, id: &str) -> Result<Option<Tenant>> {
        let client = self.client().await?;
        let sql = format!("SELECT body FROM {} WHERE id = $1", self.inner.tables.tenants);
        client.query_opt(&sql, &[&id]).await.map_err(db)?.map(|row| decode_tenant(row.get(0))).transpose()
    }

    async fn get_namespace(&self, name: &str) -> Result<Option<Namespace>> {
        let client = self.client().await?;
        let sql = format!("SELECT body FROM {} WHERE name = $1", self.inner.tables.namespaces);
        client.query_opt(&sql, &[&name]).await.map_err(db)?.map(|row| decode_namespace(row.get(0))).transpose()
    }

    async fn list_tenants(&self, after: &str, limit: usize) -> Result<Vec<Tenant>> {
        let client = self.client().await?;
        let sql = format!("SELECT body FROM {} WHERE id > $1 ORDER BY id LIMIT $2", self.inner.tables.tenants);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = client.query(&sql, &[&after, &limit]).await.map_err(db)?;
        rows.iter().map(|row| decode_tenant(row.get(0))).collect()
    }

    async fn list_namespaces(&self, tenant: &str, after: &str, limit: usize) -> Result<Vec<Namespace>> {
        let client = self.client().await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let table = &self.inner.tables.namespaces;
        let rows = if tenant.is_empty() {
            let sql = format!("SELECT body FROM {table} WHERE name > $1 ORDER BY name LIMIT $2");
            client.query(&sql, &[&after, &limit]).await.map_err(db)?
        } else {
            // '0' is the byte after '/': `tenant/` .. `tenant0` holds
            // exactly the tenant's names.
            let (prefix, end) = (format!("{tenant}/"), format!("{tenant}0"));
            let sql =
                format!("SELECT body FROM {table} WHERE name > $1 AND name >= $2 AND name < $3 ORDER BY name LIMIT $4");
            client.query(&sql, &[&after, &prefix, &end, &limit]).await.map_err(db)?
        };
        rows.iter().map(|row| decode_namespace(row.get(0))).collect()
    }

    async fn list_shards(&self) -> Result<Vec<Shard>> {
        let client = self.client().await?;
        let sql = format!("SELECT body FROM {} ORDER BY id", self.inner.tables.shards);
        let rows = client.query(&sql, &[]).await.map_err(db)?;
        rows.iter().map(|row| decode_shard(row.get(0))).collect()
    }

    async fn commit(&self, txn: Txn) -> Result<Committed> {
        self.commit_txn(txn).await
    }

    async fn snapshot(&self) -> Result<Snapshot> {
        let Tables { meta, tenants, namespaces, shards, .. } = &self.inner.tables;
        let mut client = self.client().await?;
        // One MVCC snapshot for every read: the objects at one revision.
        let t = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(db)?;
        let revision =
            from_db(t.query_one(&format!("SELECT revision FROM {meta} WHERE id = 1"), &[]).await.map_err(db)?.get(0))?;
        let mut snapshot = Snapshot { revision, ..Snapshot::default() };
        for row in t.query(&format!("SELECT body FROM {tenants} ORDER BY id"), &[]).await.map_err(db)? {
            snapshot.tenants.push(decode_tenant(row.get(0))?);
        }
        for row in t.query(&format!("SELECT body FROM {namespaces} ORDER BY name"), &[]).await.map_err(db)? {
            snapshot.namespaces.push(decode_namespace(row.get(0))?);
        }
        for row in t.query(&format!("SELECT body FROM {shards} ORDER BY id"), &[]).await.map_err(db)? {
            snapshot.shards.push(decode_shard(row.get(0))?);
        }
        t.commit().await.map_err(db)?;
        Ok(snapshot)
    }

    async fn changes_since(&self, revision: u64, limit: usize) -> Result<Changes> {
        let Tables { meta, changes, .. } = &self.inner.tables;
        let mut client = self.client().await?;
        // The mark and the log at one snapshot: a compaction in between
        // would otherwise hide a hole.
        let t = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(db)?;
        let compacted =
            from_db(t.query_one(&format!("SELECT compacted FROM {meta} WHERE id = 1"), &[]).await.map_err(db)?.get(0))?;
        if revision < compacted {
            t.commit().await.map_err(db)?;
            return Ok(Changes::Compacted);
        }
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let sql = format!("SELECT body FROM {changes} WHERE revision > $1 ORDER BY revision LIMIT $2");
        let rows = t.query(&sql, &[&to_db(revision)?, &limit]).await.map_err(db)?;
        t.commit().await.map_err(db)?;
        let deltas = rows.iter().map(|row| decode_delta(row.get(0)).map(Arc::new)).collect::<Result<_>>()?;
        Ok(Changes::Deltas(deltas))
    }

    async fn append_audit(&self, events: Vec<AuditEvent>) -> Result<()> {
        let Tables { meta, audit, .. } = &self.inner.tables;
        let n = to_db(events.len() as u64)?;
        let mut client = self.client().await?;
        let t = client.transaction().await.map_err(db)?;
        let sql =
            format!("UPDATE {meta} SET audit_sequence = audit_sequence + $1 WHERE id = 1 RETURNING audit_sequence");
        let last = from_db(t.query_one(&sql, &[&n]).await.map_err(db)?.get(0))?;
        let mut sequence = last - events.len() as u64;
        for mut event in events {
            sequence += 1;
            event.sequence = sequence;
            insert_audit(&t, audit, &event).await?;
        }
        t.commit().await.map_err(db)
    }

    async fn list_audit(&self, filter: AuditFilter, limit: usize) -> Result<Vec<AuditEvent>> {
        let client = self.client().await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let before = match filter.before_sequence {
            Some(s) => to_db(s)?,
            None => i64::MAX,
        };
        let sql = format!(
            "SELECT body FROM {} WHERE sequence < $1 AND time_seconds >= $2
                AND ($3 = '' OR tenant_id = $3) AND ($4 = '' OR target = $4)
                AND ($5 = '' OR principal = $5) AND ($6 = '' OR action = $6)
             ORDER BY sequence DESC LIMIT $7",
            self.inner.tables.audit
        );
        let rows = client
            .query(
                &sql,
                &[
                    &before,
                    &filter.since_seconds,
                    &filter.tenant_id,
                    &filter.target,
                    &filter.principal,
                    &filter.action,
                    &limit,
                ],
            )
            .await
            .map_err(db)?;
        rows.iter()
            .map(|row| AuditEvent::decode(row.get::<_, &[u8]>(0)).map_err(|e| corrupt("audit event", e)))
            .collect()
    }

    fn subscribe(&self) -> broadcast::Receiver<Arc<Delta>> {
        self.inner.deltas.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(Tables::new("x\"y").meta, "\"x\"\"y\".\"meta\"");
    }

    #[test]
    fn a_bad_dsn_is_refused_without_quoting_it() {
        let e = parse_dsn("mysql://user:secret@host/db").expect_err("not postgres");
        assert!(!e.to_string().contains("secret"), "{e}");
        assert!(parse_dsn("postgres://user:secret@127.0.0.1:5432/db").is_ok());
    }

    #[test]
    fn connection_failures_are_unavailable() {
        let e = ControlPlaneError::StoreUnavailable("connect to postgres://u:secret@h".into());
        assert_eq!(e.kind(), prism_proto::error::ErrorKind::Unavailable);
        assert!(!e.report().message.contains("secret"));
        assert_eq!(e.report().message, crate::error::STORE_UNAVAILABLE);
    }
}
