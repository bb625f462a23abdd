//! The Postgres metadata store: several control-plane replicas on one
//! database, all taking reads and writes, every replica's watchers seeing
//! every commit exactly once, in revision order.
//!
//! # Layout
//!
//! Seven tables in one schema (default `prism_control`), created on open
//! (idempotently, under an advisory lock, so replicas starting together do
//! not race): `meta` (one row: revision, compacted, audit_sequence,
//! live_counted), `tenants`, `namespaces` and `shards` (key, revision,
//! encoded protobuf), `changes` (revision → encoded delta), `audit`
//! (sequence → encoded event, plus the columns the listing filters on) and
//! `live_namespaces` (tenant → how many of its namespaces are live). Keys are `text COLLATE "C"`, so
//! they sort by bytes, as the file store's do.
//!
//! # Commits
//!
//! Commits are grouped ([`super::group`]): one committer task per store
//! writes each group in one `READ COMMITTED` transaction. It first locks
//! the one `meta` row (`SELECT … FOR UPDATE`): the row lock serialises the
//! groups of every replica, and each later statement sees what the
//! previous holder committed. Then it reads, in one round trip per table,
//! the current revision of every object the group's conditions name and
//! the live state of every namespace it writes; checks each commit's
//! conditions in order, in memory, against those values as updated by the
//! commits before it in the group; and writes the outcome with one
//! statement per table (objects, deltas, audit events, live-namespace
//! counts, compaction), the new revision and sequence in `meta`, one
//! `pg_notify` of the last revision, and `COMMIT`: one flush for the whole
//! group. A failed condition writes nothing and takes no revision:
//! revisions stay contiguous.
//!
//! `live_namespaces` (tenant → live namespace count) is filled from the
//! namespaces when a store written before it existed is first opened, and
//! kept by every commit. Every replica sharing a database must therefore
//! run a version that keeps it: an older replica's namespace commits would
//! not be counted.
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

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use prism_proto::control::{AuditEvent, Change, Delta, Namespace, Shard, Tenant, change};
use prost::Message;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, IsolationLevel, NoTls};

use super::bus;
use super::group::{self, Failure, Groups, Queue, Write};
use super::{AuditFilter, Changes, Committed, Condition, Options, Put, SNAPSHOT_PART, SnapshotPart, Store, Txn};
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
    deltas: Arc<bus::Bus>,
    broadcaster: JoinHandle<()>,
    /// To the committer task, which stops when this is dropped.
    writes: Queue,
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
    live: String,
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
            live: t("live_namespaces"),
            schema: q,
        }
    }

    fn ddl(&self) -> String {
        let Self { schema, meta, tenants, namespaces, shards, changes, audit, live } = self;
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
            );
            CREATE TABLE IF NOT EXISTS {live} (
                tenant text COLLATE \"C\" PRIMARY KEY,
                live bigint NOT NULL
            );
            ALTER TABLE {meta} ADD COLUMN IF NOT EXISTS live_counted boolean NOT NULL DEFAULT false;"
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
        Self::open_with(dsn, schema, &Options { watch_buffer, retention, ..Options::default() }).await
    }

    /// [`open`](Self::open) with every option.
    pub async fn open_with(dsn: &str, schema: &str, options: &Options) -> Result<Self> {
        let mut config = parse_dsn(dsn)?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        let timeout = format!("-c statement_timeout={}", STATEMENT_TIMEOUT.as_millis());
        let options_flag = match config.get_options() {
            Some(given) if !given.trim().is_empty() => format!("{given} {timeout}"),
            _ => timeout,
        };
        config.options(options_flag);
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
            let sql = format!("SELECT revision, live_counted FROM {} WHERE id = 1 FOR UPDATE", tables.meta);
            let row = t.query_one(&sql, &[]).await.map_err(db)?;
            if !row.get::<_, bool>(1) {
                count_live_namespaces(&t, &tables).await?;
            }
            t.commit().await.map_err(db)?;
            from_db(row.get(0))?
        };
        let deltas = Arc::new(bus::Bus::new(options.watch_buffer, options.watch_buffer_bytes));
        let wake = Arc::new(Notify::new());
        let broadcaster =
            Broadcaster { config, tables: tables.clone(), deltas: deltas.clone(), wake: wake.clone(), last: revision };
        let broadcaster = tokio::spawn(broadcaster.run());
        let (writes, groups) = group::queue(options.max_commit_group);
        // The committer wakes the broadcaster after each group.
        let committer =
            Committer { pool: pool.clone(), tables: tables.clone(), retention: options.retention.max(1), wake };
        tokio::spawn(committer.run(groups));
        Ok(Self { inner: Arc::new(Inner { pool, tables, deltas, broadcaster, writes }) })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.inner.pool.get().await.map_err(pool_error)
    }
}

/// Sends the log's deltas to the subscribers, in revision order.
struct Broadcaster {
    config: tokio_postgres::Config,
    tables: Tables,
    deltas: Arc<bus::Bus>,
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
                self.deltas.send(Arc::new(delta));
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

/// Fills the (empty) live-namespace counts from every stored namespace,
/// inside the open transaction that holds the `meta` row lock.
async fn count_live_namespaces(t: &deadpool_postgres::Transaction<'_>, tables: &Tables) -> Result<()> {
    let mut counts = BTreeMap::<String, i64>::new();
    for row in t.query(&format!("SELECT body FROM {}", tables.namespaces), &[]).await.map_err(db)? {
        let ns = decode_namespace(row.get(0))?;
        if super::is_live(&ns) {
            *counts.entry(super::tenant_of_name(&ns.name).to_owned()).or_default() += 1;
        }
    }
    let (tenants, live): (Vec<String>, Vec<i64>) = counts.into_iter().unzip();
    let Tables { meta, live: table, .. } = tables;
    t.execute(
        &format!(
            "INSERT INTO {table} (tenant, live) SELECT * FROM UNNEST($1::text[], $2::bigint[])
             ON CONFLICT (tenant) DO UPDATE SET live = EXCLUDED.live"
        ),
        &[&tenants, &live],
    )
    .await
    .map_err(db)?;
    t.execute(&format!("UPDATE {meta} SET live_counted = true WHERE id = 1"), &[]).await.map_err(db)?;
    Ok(())
}

/// Writes the queue's groups, one database transaction each.
struct Committer {
    pool: Pool,
    tables: Tables,
    retention: u64,
    /// Wakes the broadcaster after each group.
    wake: Arc<Notify>,
}

/// The state a group's conditions are checked against: what the database
/// held when the group took the lock, updated by each commit of the group
/// as it is accepted.
#[derive(Default)]
struct Known {
    /// Revision by id (absent: 0).
    tenants: HashMap<String, u64>,
    /// Revision and liveness by name (absent: 0, not live).
    namespaces: HashMap<String, (u64, bool)>,
    shards: HashMap<String, u64>,
    /// Live namespaces by tenant (absent: 0).
    live: HashMap<String, u64>,
}

impl Known {
    fn current(&self, condition: &Condition) -> u64 {
        match condition {
            Condition::Tenant { id, .. } => self.tenants.get(id).copied().unwrap_or(0),
            Condition::Namespace { name, .. } => self.namespaces.get(name).map_or(0, |(revision, _)| *revision),
            Condition::Shard { id, .. } => self.shards.get(id).copied().unwrap_or(0),
            Condition::NamespaceRoom { tenant, .. } | Condition::LiveNamespaces { tenant, .. } => {
                self.live.get(tenant).copied().unwrap_or(0)
            }
        }
    }
}

/// What a group writes: the last version of each object it put, every
/// delta and audit event, and the counts it changed.
#[derive(Default)]
struct Rows {
    tenants: BTreeMap<String, (i64, Vec<u8>)>,
    namespaces: BTreeMap<String, (i64, Vec<u8>)>,
    /// `None`: removed.
    shards: BTreeMap<String, Option<(i64, Vec<u8>)>>,
    changes: Vec<(i64, Vec<u8>)>,
    audit: Vec<AuditEvent>,
    live: BTreeMap<String, u64>,
}

/// The keys a group's conditions and namespace puts read.
#[derive(Default)]
struct Keys {
    tenants: Vec<String>,
    namespaces: Vec<String>,
    shards: Vec<String>,
    live: Vec<String>,
}

impl Keys {
    fn of(writes: &[&Write]) -> Self {
        let mut keys = Self::default();
        for write in writes {
            let Write::Commit(txn) = write else { continue };
            for condition in &txn.conditions {
                match condition {
                    Condition::Tenant { id, .. } => keys.tenants.push(id.clone()),
                    Condition::Namespace { name, .. } => keys.namespaces.push(name.clone()),
                    Condition::Shard { id, .. } => keys.shards.push(id.clone()),
                    Condition::NamespaceRoom { tenant, .. } | Condition::LiveNamespaces { tenant, .. } => {
                        keys.live.push(tenant.clone())
                    }
                }
            }
            for put in &txn.puts {
                if let Put::Namespace(ns) = put {
                    keys.namespaces.push(ns.name.clone());
                    keys.live.push(super::tenant_of_name(&ns.name).to_owned());
                }
            }
        }
        for list in [&mut keys.tenants, &mut keys.namespaces, &mut keys.shards, &mut keys.live] {
            list.sort_unstable();
            list.dedup();
        }
        keys
    }
}

/// An error before the commit: the transaction is rolled back.
fn nothing(e: ControlPlaneError) -> Failure {
    Failure::NothingWritten(e)
}

impl Committer {
    /// One group after another until the store is dropped.
    async fn run(self, mut groups: Groups) {
        while let Some(group) = groups.next().await {
            let outcome = self.commit_group(&group::writes(&group)).await;
            for alone in group::answer(group, outcome) {
                let outcome = self.commit_group(&[&alone.write]).await;
                group::answer(vec![alone], outcome);
            }
        }
    }

    async fn commit_group(&self, writes: &[&Write]) -> Result<Vec<Committed>, Failure> {
        let mut client = self.pool.get().await.map_err(|e| nothing(pool_error(e)))?;
        let t = client.transaction().await.map_err(|e| nothing(db(e)))?;
        // On an error the transaction is dropped, which rolls it back.
        let (committed, wrote) = self.apply(&t, writes).await.map_err(nothing)?;
        if !wrote {
            // Only conflicts: nothing to write.
            t.rollback().await.map_err(|e| nothing(db(e)))?;
            return Ok(committed);
        }
        t.commit().await.map_err(|e| Failure::Commit(db(e)))?;
        // The broadcaster sends the deltas, in order with every other
        // replica's.
        self.wake.notify_one();
        Ok(committed)
    }

    /// The group's writes inside `t`; returns each commit's outcome and
    /// whether anything is to be committed.
    async fn apply(&self, t: &deadpool_postgres::Transaction<'_>, writes: &[&Write]) -> Result<(Vec<Committed>, bool)> {
        let meta = &self.tables.meta;
        // The row lock serialises every group of every replica; it is
        // taken before anything is read.
        let sql = format!("SELECT revision, compacted, audit_sequence FROM {meta} WHERE id = 1 FOR UPDATE");
        let row = t.query_one(&sql, &[]).await.map_err(db)?;
        let (first, compacted, first_sequence) = (from_db(row.get(0))?, from_db(row.get(1))?, from_db(row.get(2))?);
        let mut known = self.read(t, &Keys::of(writes)).await?;
        let (mut revision, mut sequence) = (first, first_sequence);
        let mut rows = Rows::default();
        let mut committed = Vec::with_capacity(writes.len());
        for write in writes {
            match write {
                Write::Commit(txn) => {
                    if let Some(failed) = txn.conditions.iter().find(|c| !c.holds(known.current(c))) {
                        committed.push(Committed::Conflict(failed.clone()));
                        continue;
                    }
                    revision += 1;
                    let delta = accept(txn, revision, &mut sequence, &mut known, &mut rows)?;
                    committed.push(Committed::Ok(Arc::new(delta)));
                }
                Write::Audit(events) => {
                    for event in events {
                        sequence += 1;
                        rows.audit.push(AuditEvent { sequence, ..event.clone() });
                    }
                }
            }
        }
        if revision == first && sequence == first_sequence {
            return Ok((committed, false));
        }
        // As the file store: the log keeps `retention` revisions, and the
        // mark only moves forward (a longer retention cannot bring dropped
        // deltas back; a shorter one drops all it no longer keeps).
        let mut new_compacted = compacted;
        if revision > first && revision > self.retention {
            new_compacted = compacted.max(revision - self.retention);
        }
        // Deltas this very group compacts are not written at all.
        rows.changes.retain(|(r, _)| u64::try_from(*r).is_ok_and(|r| r > new_compacted));
        self.write(t, rows, (compacted, new_compacted)).await?;
        let sql = format!("UPDATE {meta} SET revision = $1, compacted = $2, audit_sequence = $3 WHERE id = 1");
        t.execute(&sql, &[&to_db(revision)?, &to_db(new_compacted)?, &to_db(sequence)?]).await.map_err(db)?;
        if revision > first {
            t.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &revision.to_string()]).await.map_err(db)?;
        }
        Ok((committed, true))
    }

    /// What the database holds for `keys`: one query per table. The cost
    /// is per group, not per commit.
    async fn read(&self, t: &deadpool_postgres::Transaction<'_>, keys: &Keys) -> Result<Known> {
        let Tables { tenants, namespaces, shards, live, .. } = &self.tables;
        let mut known = Known::default();
        for row in rows(t, format!("SELECT id, revision FROM {tenants} WHERE id = ANY($1)"), &keys.tenants).await? {
            known.tenants.insert(row.get(0), from_db(row.get(1))?);
        }
        let sql = format!("SELECT name, revision, body FROM {namespaces} WHERE name = ANY($1)");
        for row in rows(t, sql, &keys.namespaces).await? {
            let live = super::is_live(&decode_namespace(row.get(2))?);
            known.namespaces.insert(row.get(0), (from_db(row.get(1))?, live));
        }
        for row in rows(t, format!("SELECT id, revision FROM {shards} WHERE id = ANY($1)"), &keys.shards).await? {
            known.shards.insert(row.get(0), from_db(row.get(1))?);
        }
        for row in rows(t, format!("SELECT tenant, live FROM {live} WHERE tenant = ANY($1)"), &keys.live).await? {
            known.live.insert(row.get(0), from_db(row.get(1))?);
        }
        Ok(known)
    }

    /// Writes a group's rows: one statement per table (the cost is per
    /// group, not per commit).
    async fn write(
        &self,
        t: &deadpool_postgres::Transaction<'_>,
        rows: Rows,
        (compacted, new_compacted): (u64, u64),
    ) -> Result<()> {
        let Tables { tenants, namespaces, shards, changes, audit, live, .. } = &self.tables;
        let upsert = |table: &str, key: &str, objects: BTreeMap<String, (i64, Vec<u8>)>| {
            let sql = format!(
                "INSERT INTO {table} ({key}, revision, body)
                 SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::bytea[])
                 ON CONFLICT ({key}) DO UPDATE SET revision = EXCLUDED.revision, body = EXCLUDED.body"
            );
            async move {
                if objects.is_empty() {
                    return Ok(());
                }
                let (mut keys, mut revisions, mut bodies) = (Vec::new(), Vec::new(), Vec::new());
                for (key, (revision, body)) in objects {
                    keys.push(key);
                    revisions.push(revision);
                    bodies.push(body);
                }
                t.execute(&sql, &[&keys, &revisions, &bodies]).await.map(drop).map_err(db)
            }
        };
        upsert(tenants, "id", rows.tenants).await?;
        upsert(namespaces, "name", rows.namespaces).await?;
        let (removed, kept): (Vec<_>, Vec<_>) = rows.shards.into_iter().partition(|(_, shard)| shard.is_none());
        upsert(shards, "id", kept.into_iter().filter_map(|(id, shard)| shard.map(|s| (id, s))).collect()).await?;
        if !removed.is_empty() {
            let removed: Vec<String> = removed.into_iter().map(|(id, _)| id).collect();
            t.execute(&format!("DELETE FROM {shards} WHERE id = ANY($1)"), &[&removed]).await.map_err(db)?;
        }
        if new_compacted > compacted {
            let sql = format!("DELETE FROM {changes} WHERE revision > $1 AND revision <= $2");
            t.execute(&sql, &[&to_db(compacted)?, &to_db(new_compacted)?]).await.map_err(db)?;
        }
        if !rows.changes.is_empty() {
            let (revisions, bodies): (Vec<i64>, Vec<Vec<u8>>) = rows.changes.into_iter().unzip();
            let sql = format!("INSERT INTO {changes} (revision, body) SELECT * FROM UNNEST($1::bigint[], $2::bytea[])");
            t.execute(&sql, &[&revisions, &bodies]).await.map_err(db)?;
        }
        if !rows.audit.is_empty() {
            let n = rows.audit.len();
            let (mut sequences, mut tenant_ids, mut targets, mut principals, mut actions, mut times, mut bodies) = (
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
            );
            for event in &rows.audit {
                sequences.push(to_db(event.sequence)?);
                tenant_ids.push(event.tenant_id.as_str());
                targets.push(event.target.as_str());
                principals.push(event.principal.as_str());
                actions.push(event.action.as_str());
                times.push(event.time.as_ref().map_or(0, |t| t.seconds));
                bodies.push(event.encode_to_vec());
            }
            let sql = format!(
                "INSERT INTO {audit} (sequence, tenant_id, target, principal, action, time_seconds, body)
                 SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[],
                                      $6::bigint[], $7::bytea[])"
            );
            t.execute(&sql, &[&sequences, &tenant_ids, &targets, &principals, &actions, &times, &bodies])
                .await
                .map_err(db)?;
        }
        if !rows.live.is_empty() {
            let (tenant_ids, counts): (Vec<String>, Vec<i64>) = rows
                .live
                .into_iter()
                .map(|(tenant, n)| to_db(n).map(|n| (tenant, n)))
                .collect::<Result<Vec<_>>>()?
                .into_iter()
                .unzip();
            let sql = format!(
                "INSERT INTO {live} (tenant, live) SELECT * FROM UNNEST($1::text[], $2::bigint[])
                 ON CONFLICT (tenant) DO UPDATE SET live = EXCLUDED.live"
            );
            t.execute(&sql, &[&tenant_ids, &counts]).await.map_err(db)?;
        }
        Ok(())
    }
}

/// The rows of `sql` (one `= ANY($1)` over `keys`); none for no keys.
async fn rows(
    t: &deadpool_postgres::Transaction<'_>,
    sql: String,
    keys: &[String],
) -> Result<Vec<tokio_postgres::Row>> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    t.query(&sql, &[&keys]).await.map_err(db)
}

/// Accepts one commit whose conditions hold, at `revision`: its objects,
/// delta and audit events go to `rows`, and `known` learns what it wrote
/// (for the conditions of the commits after it).
fn accept(txn: &Txn, revision: u64, sequence: &mut u64, known: &mut Known, rows: &mut Rows) -> Result<Delta> {
    let db_revision = to_db(revision)?;
    let now = SystemTime::now();
    let mut delta = Delta { revision, changes: Vec::with_capacity(txn.puts.len()), commit_time: Some(now.into()) };
    for put in &txn.puts {
        match put {
            Put::Tenant(tenant) => {
                let mut tenant = tenant.clone();
                tenant.revision = revision;
                known.tenants.insert(tenant.id.clone(), revision);
                rows.tenants.insert(tenant.id.clone(), (db_revision, tenant.encode_to_vec()));
                delta.changes.push(Change { change: Some(change::Change::Tenant(tenant)) });
            }
            Put::Namespace(ns) => {
                let mut ns = ns.clone();
                ns.revision = revision;
                if ns.create_revision == 0 {
                    ns.create_revision = revision;
                }
                let live = super::is_live(&ns);
                let was_live = known.namespaces.insert(ns.name.clone(), (revision, live)).is_some_and(|(_, l)| l);
                if was_live != live {
                    let tenant = super::tenant_of_name(&ns.name);
                    let count = known.live.entry(tenant.to_owned()).or_default();
                    *count = if live { *count + 1 } else { count.saturating_sub(1) };
                    rows.live.insert(tenant.to_owned(), *count);
                }
                rows.namespaces.insert(ns.name.clone(), (db_revision, ns.encode_to_vec()));
                delta.changes.push(Change { change: Some(change::Change::Namespace(ns)) });
            }
            Put::Shard(shard) if shard.instances.is_empty() => {
                known.shards.insert(shard.shard_id.clone(), 0);
                rows.shards.insert(shard.shard_id.clone(), None);
                delta.changes.push(Change { change: Some(change::Change::ShardRemoved(shard.shard_id.clone())) });
            }
            Put::Shard(shard) => {
                let mut shard = shard.clone();
                shard.revision = revision;
                known.shards.insert(shard.shard_id.clone(), revision);
                rows.shards.insert(shard.shard_id.clone(), Some((db_revision, shard.encode_to_vec())));
                delta.changes.push(Change { change: Some(change::Change::Shard(shard)) });
            }
        }
    }
    rows.changes.push((db_revision, delta.encode_to_vec()));
    for event in &txn.audit {
        *sequence += 1;
        rows.audit.push(AuditEvent { sequence: *sequence, revision, ..event.clone() });
    }
    Ok(delta)
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

    async fn live_namespaces(&self, tenant: &str) -> Result<u64> {
        let client = self.client().await?;
        let sql = format!("SELECT live FROM {} WHERE tenant = $1", self.inner.tables.live);
        client.query_opt(&sql, &[&tenant]).await.map_err(db)?.map_or(Ok(0), |row| from_db(row.get(0)))
    }

    async fn commit(&self, txn: Txn) -> Result<Committed> {
        self.inner.writes.commit(txn).await
    }

    async fn stream_snapshot(&self, parts: mpsc::Sender<SnapshotPart>) -> Result<()> {
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
        let mut first = SnapshotPart { revision, ..SnapshotPart::default() };
        for row in t.query(&format!("SELECT body FROM {tenants} ORDER BY id"), &[]).await.map_err(db)? {
            first.tenants.push(decode_tenant(row.get(0))?);
        }
        for row in t.query(&format!("SELECT body FROM {shards} ORDER BY id"), &[]).await.map_err(db)? {
            first.shards.push(decode_shard(row.get(0))?);
        }
        if parts.send(first).await.is_err() {
            return Ok(());
        }
        // A portal reads the namespaces a part at a time.
        let statement = t.prepare(&format!("SELECT body FROM {namespaces} ORDER BY name")).await.map_err(db)?;
        let portal = t.bind(&statement, &[]).await.map_err(db)?;
        let page = i32::try_from(SNAPSHOT_PART).unwrap_or(i32::MAX);
        loop {
            let rows = t.query_portal(&portal, page).await.map_err(db)?;
            let done = rows.len() < SNAPSHOT_PART;
            if !rows.is_empty() {
                let namespaces = rows.iter().map(|row| decode_namespace(row.get(0))).collect::<Result<_>>()?;
                if parts.send(SnapshotPart { revision, namespaces, ..SnapshotPart::default() }).await.is_err() {
                    return Ok(());
                }
            }
            if done {
                break;
            }
        }
        t.commit().await.map_err(db)
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
        self.inner.writes.append_audit(events).await
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

    fn subscribe(&self) -> bus::Receiver {
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
