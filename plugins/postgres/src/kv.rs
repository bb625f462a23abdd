//! KeyValue on PostgreSQL: four tables per namespace incarnation, one
//! transaction per mutate, last-writer-wins enforced by the SQL itself, and
//! the common calls in one round trip each.
//!
//! # Layout
//!
//! Each incarnation (name + create revision) has its own tables in the
//! schema its `backend_config` names, called `<base>_items`, `_chunks`,
//! `_ranges` and `_tokens` ([`names`]: readable, hashed, ≤ 63 bytes,
//! always quoted). Ids, keys and tokens are `bytea`, so the primary keys
//! sort exactly as the API does (bytes, a prefix first) whatever the
//! database's collation, and NULs are stored like any byte. A btree entry
//! holds at most a third of a page, so a record id and key (or token)
//! longer than [`MAX_ID_AND_KEY_BYTES`] together are refused as invalid.
//!
//! - `items (id, key) → generation, tombstone, expires_at, value, chunks,
//!   len`: one row per key that holds a value or remembers a point delete
//!   (`tombstone`, no value). `value` is inline when `chunks = 0`, else
//!   NULL and the value is `chunks` rows of `_chunks`. `len` is the value's
//!   length, so pages are cut without reading values.
//! - `chunks (id, key, idx) → data`, referencing its item `ON DELETE
//!   CASCADE`: deleting an item frees its chunks; overwriting one deletes
//!   them in the same statement.
//! - `ranges (id, start_key, end_key, generation)`: the range and
//!   whole-record deletes a record still remembers; a new one replaces
//!   those it covers at an older generation.
//! - `tokens (id, token) → forget_after`: applied idempotency tokens.
//!
//! `prism_kv_namespaces` in the same schema registers each incarnation's
//! base name: provisioning an incarnation drops the tables of older ones
//! of the same name (deleted ones: not those the caller names live, a
//! migration's source beside its target, `Plugin::provision_beside`), and a base name taken by another namespace (a hash
//! collision) is refused. Provisioning and deprovisioning are one
//! transaction each (DDL is transactional), under an advisory lock per
//! schema. Values and chunks are stored `EXTERNAL`: out of line and not
//! compressed, as values are opaque and often compressed already.
//!
//! # Writes
//!
//! A mutate is one `READ COMMITTED` transaction that first takes a
//! transaction-scoped advisory lock keyed by the hash of (tables, record
//! id): writers of one record — through this gateway or any other on the
//! same database — run one after the other, and each statement sees what
//! the previous writer committed. Writers of different records never wait
//! for each other. Then:
//!
//! 1. The token, if any: `INSERT … ON CONFLICT DO NOTHING RETURNING`; no
//!    row back means it was applied before, and nothing is written.
//! 2. The mutation list is reduced in memory to its net effect ([`Plan`]):
//!    all its mutations share one generation time and apply in order, so
//!    per key only the last put or delete counts, and a range delete of the
//!    list drops the puts and deletes before it that it covers.
//! 3. Every surviving put and point delete in one upsert whose conditions
//!    are last-writer-wins itself: the row is written only if no stored
//!    range delete at least as new covers the key (`WHERE NOT EXISTS`) and
//!    the stored version is strictly older (`ON CONFLICT (id, key) DO
//!    UPDATE … WHERE stored.generation < EXCLUDED.generation`; equal times
//!    keep what is stored). The keys that won come back, their old chunks
//!    are deleted in the same statement, their new chunks inserted.
//! 4. Each range delete removes the items in its range older than the
//!    mutate (`generation < $g`: the list's own writes survive) and is
//!    recorded in `ranges`.
//!
//! The order matters: step 3 sees only the range deletes stored before
//! this mutate, so the list's own range deletes do not stop its later
//! puts, and step 4 spares the rows step 3 wrote at the same generation.
//! This gives exactly the embedded store's rules (the conformance suite's
//! cases on ordering and equal times check both).
//!
//! A deadlock (possible only when a deprovisioning `DROP` races a write)
//! runs the whole transaction again, a few times at most.
//!
//! ## A put in one round trip
//!
//! The common mutate — puts and point deletes with inline values, with or
//! without a token — is one pipeline: `BEGIN`, the lock, the upsert and
//! `COMMIT` are written to the connection together and answered together
//! (`put_pipelined`). That needs no statement's parameters to depend on
//! an earlier statement's answer, so step 1 moves into step 3's statement
//! ([`KvStatements::upsert_once`]: a data-modifying CTE records the token,
//! and the items are written only if it returned a row). The server runs
//! the four statements in order, exactly as if they had come one by one:
//!
//! - **Isolation is unchanged.** Under `READ COMMITTED` each statement
//!   takes its snapshot when it starts. The lock statement blocks, on the
//!   server, until the record's previous writer has committed; the upsert
//!   starts after it returns, so its snapshot holds that commit, as in the
//!   interactive transaction. The lock cannot be folded into the upsert
//!   itself: one statement has one snapshot, taken before the lock would be
//!   granted, and it would miss a range delete committed while it waited
//!   (the race `a_racing_older_put_never_outlives_a_range_delete` runs).
//!   Nor can the lock go: the row lock of `ON CONFLICT DO UPDATE` orders
//!   two puts of a key, but a put and a range delete touch different rows
//!   and each would miss the other's uncommitted one.
//! - **Failure is atomic.** A failed statement (a timeout, a deadlock)
//!   aborts the transaction: the statements after it fail without effect
//!   and `COMMIT` rolls back. The first error is the call's; a deadlock
//!   runs the pipeline again.
//! - **Abandoning the call is harmless.** All four requests are written
//!   when the call's future is first polled, so a call given up later (the
//!   request timeout) still leaves the server a whole transaction that ends
//!   with its `COMMIT`; the connection goes back to the pool, and the next
//!   user's statements queue behind it on the wire.
//! - **The lock is held for server time only.** Between `BEGIN` and
//!   `COMMIT` nothing waits for the network or for a gateway thread, so
//!   writers of one record queue for each other's execution, not for round
//!   trips.
//!
//! Mutates with range deletes or chunked values keep the interactive
//! transaction: what they send next depends on what came back (which keys
//! won, which ranges are stored).
//!
//! # Reads
//!
//! A page is one snapshot. Rows are read in key (or id, key) order in
//! batches of metadata — with the value only when it is small — and the
//! page is cut in Rust by bytes and count, the item that crosses the bound
//! included; one row past the page says whether more follows. Memory holds
//! a batch of metadata and small values, and the page's large values,
//! never more.
//!
//! A page also ends early once its soft deadline has passed and it holds
//! an item ([`prism_plugin_api::pace`]: checked per row, with `next` its
//! last item), and a read whose hard deadline has passed gives up before
//! its next statement. A read dropped by its caller (cancelled, or cut off
//! at the deadline) stops at once; the one statement it had in flight — a
//! batch of at most `READ_BATCH` rows — finishes on its connection, whose
//! transaction is rolled back when dropped.
//!
//! A page that one statement answers — one batch that ends the data or
//! fills the page, every value in it inline — is that statement alone, in
//! no transaction: in PostgreSQL one statement reads one snapshot at any
//! isolation level. That is the common read (a record's items, a few
//! keys), and it is one round trip on a prepared statement, pipelined with
//! other such reads on a connection they share (`lanes.rs`). Any other page
//! is read again, from the start, in one `REPEATABLE READ READ ONLY`
//! transaction: the metadata batch by batch, then the values of the page's
//! larger items and chunks by key. Nothing of the first statement's answer
//! is kept — its snapshot cannot be extended, and mixing it with the
//! transaction's rows would mix two snapshots. That costs one statement
//! more on pages that span batches or hold large values, which cost
//! several anyway.
//!
//! # Statements on the wire
//!
//! The statements of the hot paths ([`KvStatements`], formatted once per
//! incarnation when its target is made) are prepared once per pooled
//! connection and kept with it (`prepared.rs`): a call pays no parse or
//! plan, and preparing happens on a connection's first use of a statement
//! only. The rest (transactions, reclamation, provisioning) are sent
//! unnamed with explicit types (`query_typed`: one round trip, nothing
//! kept). Only quoted identifiers are formatted into SQL.
//!
//! A pooler in transaction mode that does not track prepared statements
//! (PgBouncer before 1.21, or without `max_prepared_statements`) sends
//! each transaction to any server connection, where a statement of the
//! same name may be another client's, or missing. A namespace behind one
//! says `prepared_statements=false` in its DSN, and its statements go
//! unnamed. A server that answers "prepared statement does not exist" or
//! "already exists" switches the namespace to unnamed statements on this
//! gateway (with a warning) and the call runs again; nothing was applied.
//!
//! # Reclamation
//!
//! `reclaim(now)` visits the incarnations this plugin has provisioned or
//! served since it started, in batches of single statements that skip rows
//! a writer holds (`FOR UPDATE SKIP LOCKED`, so reclamation never waits
//! for, nor deadlocks with, a mutate): an expired item becomes a tombstone
//! carrying its generation time (so an older write arriving late still
//! loses) until that is past `tombstone_retention`, or goes at once if it
//! already is; tombstones and tokens past their retention are deleted.
//!
//! `storage_bytes` sums the lengths of every stored id, key, value, chunk,
//! range and token (plus a small per-row overhead) at the time of the call:
//! exact and never stale, at the cost of reading the namespace's rows; a
//! counter would make every writer of a namespace wait on one row.

pub(crate) mod lanes;
pub mod names;
pub(crate) mod prepared;
mod read;
pub mod statements;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashSet};
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::Pool;
use futures_util::future::{join4, try_join};
use prism_plugin_api::kv::{
    Held, ItemsPage, KeyRange, KeyValue, KeyValueHandle, Mutation, NewItem, PageLimits, RecordVersions, RecordsPage,
    ScanCursor, Selector, Version, VersionCursor, VersionsPage, WriteStamp, restore_plan,
};
use prism_plugin_api::{Micros, Namespace, now_micros};
use prism_proto::control::PostgresConfig;
use tokio_postgres::types::{ToSql, Type};

use self::lanes::Lanes;
pub use self::names::TableNames;
use self::names::{REGISTRY_TABLE, quote_ident, schema_lock};
use self::prepared::Stmt;
pub use self::statements::KvStatements;
use self::statements::{LOCK, LOCK_MANY, LOCK_TYPES, RESTORE_TYPES, UPSERT_ONCE_TYPES, UPSERT_TYPES};
use crate::config::{NamespaceSettings, PostgresPluginConfig};
use crate::error::{PostgresError, Result};
use crate::{Opened, PostgresPlugin};

/// Rows one reclamation statement handles at most, so that it never holds
/// many row locks for long.
const RECLAIM_BATCH: i64 = 1000;
/// Runs of a mutate that met a deadlock or serialization failure.
const MUTATE_ATTEMPTS: usize = 3;
/// Rough bytes of a row besides its ids, keys and values, for
/// `storage_bytes`.
const ROW_OVERHEAD: i64 = 32;
/// The longest record id and key (or id and token) together that this
/// backend stores: a btree entry holds at most 2704 bytes (a third of a
/// page), headers included, and the primary keys hold these bytes. The
/// gateway allows more (ids of 1 KiB, keys of 4 KiB), so a write past this
/// is refused as invalid rather than failing inside PostgreSQL.
pub const MAX_ID_AND_KEY_BYTES: usize = 2600;

fn micros(d: Duration) -> Micros {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// The create revision as PostgreSQL stores it.
pub(crate) fn revision(ns: &Namespace) -> Result<i64> {
    i64::try_from(ns.create_revision)
        .map_err(|_| PostgresError::invalid("namespace.create_revision", "is larger than 2^63 - 1"))
}

/// One namespace incarnation as the plugin reaches it.
pub(crate) struct Target {
    pub(crate) name: String,
    pub(crate) revision: i64,
    pub(crate) settings: NamespaceSettings,
    /// The `backend_config` `settings` were read from, as given: a call
    /// with the same one reuses this target without parsing it again.
    pub(crate) backend: PostgresConfig,
    pub(crate) pool: Pool,
    /// The pool's connections that one-statement reads share.
    pub(crate) lanes: Arc<Lanes>,
    /// A TIME_SERIES namespace: its tables are [`crate::ts`]'s, not these.
    pub(crate) time_series: bool,
    /// The days whose TimeSeries partitions this plugin knows exist.
    pub(crate) ts_days: std::sync::Mutex<HashSet<i64>>,
    pub(crate) names: TableNames,
    /// Quoted, schema-qualified name of the registry, ready for SQL.
    registry: String,
    /// Every statement of the incarnation, built once (only the quoted
    /// names vary): the texts are the same on every call.
    pub(crate) sql: KvStatements,
    /// The hot statements are prepared per connection (see the module
    /// docs): on unless the DSN says otherwise, and off for good once the
    /// server has lost or confused one (a pooler in transaction mode).
    named: AtomicBool,
    chunk_threshold: usize,
    tombstone_retention: Micros,
    token_retention: Micros,
}

impl Target {
    pub(crate) fn new(
        ns: &Namespace,
        revision: i64,
        settings: NamespaceSettings,
        backend: PostgresConfig,
        pool: Pool,
        lanes: Arc<Lanes>,
        config: &PostgresPluginConfig,
    ) -> Result<Self> {
        let names = TableNames::of(ns, &settings.schema)?;
        Ok(Self {
            name: ns.name.clone(),
            revision,
            sql: KvStatements::new(&names),
            registry: names.qualified(REGISTRY_TABLE),
            ts_days: std::sync::Mutex::default(),
            time_series: ns.spec.abstraction == prism_proto::control::Abstraction::TimeSeries as i32,
            named: AtomicBool::new(settings.prepared_statements),
            names,
            settings,
            backend,
            pool,
            lanes,
            chunk_threshold: usize::try_from(config.chunk_threshold_bytes).unwrap_or(usize::MAX).max(1),
            tombstone_retention: micros(config.tombstone_retention),
            token_retention: micros(config.token_retention),
        })
    }

    /// Whether the hot statements go prepared.
    pub(crate) fn named(&self) -> bool {
        self.named.load(Ordering::Relaxed)
    }

    /// Runs `call` (which sends prepared statements while [`Self::named`]),
    /// and once more with unnamed ones if the server lost or confused a
    /// prepared statement: a pooler in transaction mode between this
    /// gateway and the server. Such an error comes before anything is
    /// applied (the statement never ran), so running the call again is
    /// safe.
    pub(crate) async fn unless_unprepared<T, F, Fut>(&self, call: F) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        match call().await {
            // Calls that started before the switch may meet the error too:
            // each runs again, unnamed.
            Err(e) if e.is_unprepared() => {
                if self.named.swap(false, Ordering::Relaxed) {
                    tracing::warn!(
                        namespace = %self.name,
                        error = %e,
                        "the postgres server lost a prepared statement (a pooler in transaction mode?); \
                         sending this namespace's statements unnamed from now on (prepared_statements=false in the DSN says so up front)"
                    );
                }
                call().await
            }
            other => other,
        }
    }

    /// Drops the incarnation's tables and the function of their tail
    /// triggers (`ts::follow`), which dropping the tables leaves.
    fn drop_tables(names: &TableNames) -> String {
        let tables: Vec<String> = names.all_tables().iter().map(|t| names.qualified(t)).collect();
        format!(
            "DROP TABLE IF EXISTS {}; DROP FUNCTION IF EXISTS {}()",
            tables.join(", "),
            names.qualified(&names.tail_function())
        )
    }
}

/// Creates the incarnation's tables (and its schema and the registry if
/// needed), dropping older incarnations of the same name but the `live`
/// ones (a migration's source, while `t` is its target).
pub(crate) async fn provision(plugin: &PostgresPlugin, t: &Target, live: &[i64]) -> Result<()> {
    let mut client = crate::lease::lease(&t.pool).await?;
    let tx = client.build_transaction().start().await?;
    let schema = &t.settings.schema;
    tx.execute_typed(LOCK, &[(&schema_lock(schema), Type::INT8)]).await?;
    // Checked first: CREATE SCHEMA IF NOT EXISTS needs a privilege that
    // using an existing schema does not.
    let found = tx.query_typed("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[(schema, Type::TEXT)]).await?;
    if found.is_empty() {
        tx.batch_execute(&format!("CREATE SCHEMA {}", quote_ident(schema))).await?;
    }
    tx.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {} (
            name text NOT NULL,
            create_revision int8 NOT NULL,
            base text NOT NULL UNIQUE,
            created_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (name, create_revision))",
        t.registry
    ))
    .await?;
    // The older incarnations of the name were deleted, but the live ones.
    let dead = "name = $1 AND create_revision < $2 AND create_revision <> ALL($3)";
    let older = tx
        .query_typed(
            &format!("SELECT base FROM {} WHERE {dead}", t.registry),
            &[(&t.name, Type::TEXT), (&t.revision, Type::INT8), (&live, Type::INT8_ARRAY)],
        )
        .await?;
    for row in older {
        let base: String = row.try_get(0)?;
        tracing::info!(namespace = %t.name, "dropping the tables of an older incarnation");
        tx.batch_execute(&Target::drop_tables(&TableNames::from_base(schema, base))).await?;
    }
    tx.execute_typed(
        &format!("DELETE FROM {} WHERE {dead}", t.registry),
        &[(&t.name, Type::TEXT), (&t.revision, Type::INT8), (&live, Type::INT8_ARRAY)],
    )
    .await?;
    let holder = tx
        .query_typed(
            &format!("SELECT name, create_revision FROM {} WHERE base = $1", t.registry),
            &[(&t.names.base, Type::TEXT)],
        )
        .await?;
    let registered = match holder.first() {
        Some(row) => {
            let (name, revision): (String, i64) = (row.try_get(0)?, row.try_get(1)?);
            if (name.as_str(), revision) != (t.name.as_str(), t.revision) {
                return Err(PostgresError::NameTaken(t.names.base.clone()));
            }
            true
        }
        None => false,
    };
    let main = t.names.qualified(&if t.time_series { t.names.ts_events() } else { t.names.items() });
    let exists: bool =
        tx.query_typed_one("SELECT to_regclass($1) IS NOT NULL", &[(&main, Type::TEXT)]).await?.try_get(0)?;
    // Provisioning again leaves a provisioned namespace's tables alone (the
    // ALTERs would lock them against its traffic).
    if !(registered && exists) {
        let ddl = if t.time_series { crate::ts::ddl(&t.names) } else { t.sql.ddl.clone() };
        tx.batch_execute(&ddl).await?;
        tx.execute_typed(
            &format!(
                "INSERT INTO {} (name, create_revision, base) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                t.registry
            ),
            &[(&t.name, Type::TEXT), (&t.revision, Type::INT8), (&t.names.base, Type::TEXT)],
        )
        .await?;
    }
    tx.commit().await?;
    plugin.forget_older(&t.name, t.revision, live);
    Ok(())
}

/// Drops the incarnation's tables and its registration.
pub(crate) async fn deprovision(t: &Target) -> Result<()> {
    let mut client = crate::lease::lease(&t.pool).await?;
    let tx = client.build_transaction().start().await?;
    let schema = &t.settings.schema;
    tx.execute_typed(LOCK, &[(&schema_lock(schema), Type::INT8)]).await?;
    tx.batch_execute(&Target::drop_tables(&t.names)).await?;
    let registry: bool =
        tx.query_typed_one("SELECT to_regclass($1) IS NOT NULL", &[(&t.registry, Type::TEXT)]).await?.try_get(0)?;
    if registry {
        tx.execute_typed(
            &format!("DELETE FROM {} WHERE name = $1 AND create_revision = $2", t.registry),
            &[(&t.name, Type::TEXT), (&t.revision, Type::INT8)],
        )
        .await?;
    }
    tx.commit().await?;
    // A handle that keeps this target must make its partitions again if
    // the namespace is provisioned again.
    t.ts_days.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clear();
    Ok(())
}

/// What a put or a point delete leaves of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Write<'a> {
    Put(&'a NewItem),
    Delete,
}

/// The net effect of a mutation list, all at one generation time.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan<'a> {
    /// Per key, the last put or delete of the list; `None` when a range
    /// delete later in the list covers it (the range delete decides).
    pub(crate) writes: BTreeMap<&'a [u8], Option<Write<'a>>>,
    /// The non-empty range deletes, in order.
    pub(crate) ranges: Vec<&'a KeyRange>,
}

impl<'a> Plan<'a> {
    pub(crate) fn new(mutations: &'a [Mutation]) -> Self {
        let mut plan = Self::default();
        for mutation in mutations {
            match mutation {
                Mutation::Put(item) => {
                    plan.writes.insert(&item.key, Some(Write::Put(item)));
                }
                Mutation::Delete(key) => {
                    plan.writes.insert(key, Some(Write::Delete));
                }
                Mutation::DeleteRange(range) => {
                    if range.end.as_ref().is_some_and(|end| *end <= range.start) {
                        continue; // empty: deletes nothing, remembers nothing
                    }
                    let upper = range.end.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
                    for (_, write) in plan.writes.range_mut::<[u8], _>((Bound::Included(range.start.as_slice()), upper))
                    {
                        *write = None;
                    }
                    plan.ranges.push(range);
                }
            }
        }
        plan
    }
}

/// A remembered range delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RangeTombstone {
    pub(crate) start: Vec<u8>,
    pub(crate) end: Option<Vec<u8>>,
    pub(crate) generation: Micros,
}

impl RangeTombstone {
    /// Whether `self` makes `other` useless: it covers all of it and is at
    /// least as new.
    pub(crate) fn dominates(&self, other: &RangeTombstone) -> bool {
        let covers_end = match (&self.end, &other.end) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(mine), Some(theirs)) => theirs <= mine,
        };
        self.generation >= other.generation && self.start <= other.start && covers_end
    }
}

/// `list` with `added` merged in; `None` when nothing changes.
pub(crate) fn merge_ranges(mut list: Vec<RangeTombstone>, added: Vec<RangeTombstone>) -> Option<Vec<RangeTombstone>> {
    let mut changed = false;
    for new in added {
        if list.iter().any(|old| old.dominates(&new)) {
            continue;
        }
        list.retain(|old| !new.dominates(old));
        list.push(new);
        changed = true;
    }
    changed.then_some(list)
}

/// Refuses a write whose id and key (or token) do not fit an index entry.
fn check_sizes(id: &str, mutations: &[Mutation], stamp: &WriteStamp) -> Result<()> {
    let too_long = |field: &str, len: usize| {
        PostgresError::invalid(
            field,
            format!(
                "the record id and {field} are {} bytes together; the postgres backend stores at most {MAX_ID_AND_KEY_BYTES}",
                id.len() + len
            ),
        )
    };
    for mutation in mutations {
        let key = match mutation {
            Mutation::Put(item) => &item.key,
            Mutation::Delete(key) => key,
            // Range bounds are compared, never indexed.
            Mutation::DeleteRange(_) => continue,
        };
        if id.len() + key.len() > MAX_ID_AND_KEY_BYTES {
            return Err(too_long("key", key.len()));
        }
    }
    if let Some(token) = &stamp.token
        && id.len() + token.len() > MAX_ID_AND_KEY_BYTES
    {
        return Err(too_long("idempotency token", token.len()));
    }
    Ok(())
}

async fn mutate(t: &Target, id: &str, mutations: &[Mutation], stamp: &WriteStamp) -> Result<()> {
    check_sizes(id, mutations, stamp)?;
    let plan = Plan::new(mutations);
    let columns = Columns::of(&plan, t.chunk_threshold)?;
    again_if_conflicted(t, "mutate", || t.unless_unprepared(|| mutate_once(t, id, &plan, &columns, stamp))).await
}

/// Runs `call` (a transaction named `what` in the log) up to
/// [`MUTATE_ATTEMPTS`] times while it meets a deadlock or a serialization
/// failure.
async fn again_if_conflicted<T, F, Fut>(t: &Target, what: &str, call: F) -> Result<T>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut attempt = 1;
    loop {
        match call().await {
            Err(e) if e.is_transient() && attempt < MUTATE_ATTEMPTS => {
                tracing::debug!(namespace = %t.name, error = %e, attempt, "{what} conflicted; running it again");
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// The columns of step 3's upsert: one entry per surviving put or point
/// delete, in key order, and the puts whose values are chunked.
struct Columns<'a> {
    keys: Vec<&'a [u8]>,
    tombstones: Vec<bool>,
    expires: Vec<Option<i64>>,
    /// `None` for a delete and for a chunked value (it goes to `_chunks`).
    values: Vec<Option<&'a [u8]>>,
    chunk_counts: Vec<i32>,
    lens: Vec<i64>,
    /// `(key, value)` of each put stored in chunks.
    chunked: Vec<(&'a [u8], &'a [u8])>,
}

impl<'a> Columns<'a> {
    fn of(plan: &Plan<'a>, threshold: usize) -> Result<Self> {
        let n = plan.writes.len();
        let mut c = Self {
            keys: Vec::with_capacity(n),
            tombstones: Vec::with_capacity(n),
            expires: Vec::with_capacity(n),
            values: Vec::with_capacity(n),
            chunk_counts: Vec::with_capacity(n),
            lens: Vec::with_capacity(n),
            chunked: Vec::new(),
        };
        for (key, write) in plan.writes.iter().filter_map(|(k, w)| w.map(|w| (*k, w))) {
            c.keys.push(key);
            match write {
                Write::Put(item) => {
                    let chunked = item.value.len() > threshold;
                    let count = if chunked {
                        c.chunked.push((key, item.value.as_slice()));
                        i32::try_from(item.value.len().div_ceil(threshold))
                            .map_err(|_| PostgresError::invalid("value", "is too large to store"))?
                    } else {
                        0
                    };
                    c.tombstones.push(false);
                    c.expires.push(item.expires_at);
                    c.values.push((!chunked).then_some(item.value.as_slice()));
                    c.chunk_counts.push(count);
                    c.lens.push(i64::try_from(item.value.len()).unwrap_or(i64::MAX));
                }
                Write::Delete => {
                    c.tombstones.push(true);
                    c.expires.push(None);
                    c.values.push(None);
                    c.chunk_counts.push(0);
                    c.lens.push(0);
                }
            }
        }
        Ok(c)
    }

    /// The upsert's parameters after the id and generation.
    fn params(&self) -> [&(dyn ToSql + Sync); 6] {
        [&self.keys, &self.tombstones, &self.expires, &self.values, &self.chunk_counts, &self.lens]
    }
}

async fn mutate_once(t: &Target, id: &str, plan: &Plan<'_>, columns: &Columns<'_>, stamp: &WriteStamp) -> Result<()> {
    let generation = stamp.generation_time;
    let id = id.as_bytes();
    // An empty token is no token: it could never tell retries apart.
    let token = stamp.token.as_deref().filter(|t| !t.is_empty()).map(str::as_bytes);
    let forget_after = now_micros().max(generation).saturating_add(t.token_retention);
    let mut client = prepared::connection(&t.pool).await?;
    if plan.ranges.is_empty() && columns.chunked.is_empty() && !columns.keys.is_empty() {
        return put_pipelined(&client, t, id, generation, token.map(|token| (token, forget_after)), columns).await;
    }
    let tx = client.build_transaction().start().await?;
    tx.execute_typed(LOCK, &[(&t.names.record_lock(id), Type::INT8)]).await?;
    if let Some(token) = token {
        let fresh = tx
            .query_typed(&t.sql.token, &[(&id, Type::BYTEA), (&token, Type::BYTEA), (&forget_after, Type::INT8)])
            .await?;
        if fresh.is_empty() {
            tx.rollback().await?;
            return Ok(()); // applied before
        }
    }
    if !columns.keys.is_empty() {
        write_items(&tx, t, id, generation, columns).await?;
    }
    if !plan.ranges.is_empty() {
        delete_ranges(&tx, t, id, generation, &plan.ranges).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Steps 1 and 3 of the module docs in one round trip: `BEGIN`, the
/// record's lock, the (token-gated) upsert and `COMMIT`, pipelined. See
/// "A put in one round trip" for why that is the same transaction as the
/// interactive one.
async fn put_pipelined(
    client: &deadpool_postgres::ClientWrapper,
    t: &Target,
    id: &[u8],
    generation: Micros,
    token: Option<(&[u8], Micros)>,
    columns: &Columns<'_>,
) -> Result<()> {
    let lock_key = t.names.record_lock(id);
    let (sql, types) = match token {
        Some(_) => (t.sql.upsert_once.as_str(), UPSERT_ONCE_TYPES),
        None => (t.sql.upsert.as_str(), UPSERT_TYPES),
    };
    let named = t.named();
    // Cached after a connection's first put: no round trip.
    let (lock, upsert) =
        try_join(Stmt::on(client, named, LOCK, LOCK_TYPES), Stmt::on(client, named, sql, types)).await?;
    let mut params: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(UPSERT_ONCE_TYPES.len());
    params.extend([&id as &(dyn ToSql + Sync), &generation]);
    params.extend(columns.params());
    if let Some((token, forget_after)) = &token {
        params.extend([token as &(dyn ToSql + Sync), forget_after]);
    }
    // Written in this order on the first poll; answered in this order.
    let (begun, locked, upserted, committed) = join4(
        client.batch_execute("BEGIN"),
        lock.query(client, &[&lock_key]),
        upsert.query(client, &params),
        client.batch_execute("COMMIT"),
    )
    .await;
    // The first failure is the cause; the ones after it say the
    // transaction was aborted, and COMMIT rolled it back.
    begun?;
    locked?;
    upserted?;
    committed?;
    Ok(())
}

/// Step 3 of the module docs inside an interactive transaction (a mutate
/// with chunked values or range deletes): every put and point delete in
/// one conditional upsert, then the chunks of the values that won.
async fn write_items(
    tx: &tokio_postgres::Transaction<'_>,
    t: &Target,
    id: &[u8],
    generation: Micros,
    columns: &Columns<'_>,
) -> Result<()> {
    let mut params: Vec<(&(dyn ToSql + Sync), Type)> = vec![(&id, Type::BYTEA), (&generation, Type::INT8)];
    params.extend(columns.params().into_iter().zip(UPSERT_TYPES[2..].iter().cloned()));
    // Last-writer-wins in SQL (`KvStatements::upsert`).
    let won = tx.query_typed(&t.sql.upsert, &params).await?;
    // Only chunked values need to know which keys won.
    if columns.chunked.is_empty() {
        return Ok(());
    }
    let won: HashSet<Vec<u8>> =
        won.iter().map(|row| row.try_get::<_, Vec<u8>>(0)).collect::<std::result::Result<_, _>>()?;
    let threshold = t.chunk_threshold;
    let mut chunk_keys: Vec<&[u8]> = Vec::new();
    let mut chunk_indexes: Vec<i32> = Vec::new();
    let mut chunk_data: Vec<&[u8]> = Vec::new();
    for (key, value) in columns.chunked.iter().filter(|(key, _)| won.contains(*key)) {
        for (index, part) in (0i32..).zip(value.chunks(threshold)) {
            chunk_keys.push(key);
            chunk_indexes.push(index);
            chunk_data.push(part);
        }
    }
    if !chunk_keys.is_empty() {
        tx.execute_typed(
            &t.sql.insert_chunks,
            &[
                (&id, Type::BYTEA),
                (&chunk_keys, Type::BYTEA_ARRAY),
                (&chunk_indexes, Type::INT4_ARRAY),
                (&chunk_data, Type::BYTEA_ARRAY),
            ],
        )
        .await?;
    }
    Ok(())
}

/// Step 4 of the module docs: removes the items older than the mutate in
/// the ranges (their chunks cascade; the list's own writes, at this
/// generation, stay), and remembers the ranges.
async fn delete_ranges(
    tx: &tokio_postgres::Transaction<'_>,
    t: &Target,
    id: &[u8],
    generation: Micros,
    ranges: &[&KeyRange],
) -> Result<()> {
    let starts: Vec<&[u8]> = ranges.iter().map(|r| r.start.as_slice()).collect();
    let ends: Vec<Option<&[u8]>> = ranges.iter().map(|r| r.end.as_deref()).collect();
    tx.execute_typed(
        &t.sql.delete_range_items,
        &[(&id, Type::BYTEA), (&starts, Type::BYTEA_ARRAY), (&ends, Type::BYTEA_ARRAY), (&generation, Type::INT8)],
    )
    .await?;
    // The record lock keeps this list stable until the commit.
    let stored = tx
        .query_typed(&t.sql.select_ranges, &[(&id, Type::BYTEA)])
        .await?
        .iter()
        .map(|row| Ok(RangeTombstone { start: row.try_get(0)?, end: row.try_get(1)?, generation: row.try_get(2)? }))
        .collect::<Result<Vec<_>>>()?;
    let added =
        ranges.iter().map(|r| RangeTombstone { start: r.start.clone(), end: r.end.clone(), generation }).collect();
    let Some(list) = merge_ranges(stored, added) else {
        return Ok(());
    };
    let starts: Vec<&[u8]> = list.iter().map(|r| r.start.as_slice()).collect();
    let ends: Vec<Option<&[u8]>> = list.iter().map(|r| r.end.as_deref()).collect();
    let generations: Vec<i64> = list.iter().map(|r| r.generation).collect();
    tx.execute_typed(&t.sql.delete_ranges, &[(&id, Type::BYTEA)]).await?;
    tx.execute_typed(
        &t.sql.insert_ranges,
        &[
            (&id, Type::BYTEA),
            (&starts, Type::BYTEA_ARRAY),
            (&ends, Type::BYTEA_ARRAY),
            (&generations, Type::INT8_ARRAY),
        ],
    )
    .await?;
    Ok(())
}

/// Writes `versions` into record `id`: one mutate per generation time
/// ([`restore_plan`]), whose SQL keeps last-writer-wins, without a token.
/// Each is its own transaction: restoring is idempotent, so a restore cut
/// short is simply run again.
async fn restore(t: &Target, id: &str, versions: &[Version]) -> Result<()> {
    for (generation, mutations) in restore_plan(versions) {
        mutate(t, id, &mutations, &WriteStamp { generation_time: generation, token: None }).await?;
    }
    Ok(())
}

/// Restores `records` (`KeyValueHandle::restore_records`). Those whose
/// versions are values stored inline and point deletes, in key order
/// (what `scan_versions` pages hold but for range deletes and large
/// values), go in one transaction: their records' locks, in order, then
/// one last-writer-wins upsert of every row across them
/// (`KvStatements::restore`), the rule a mutate applies, row by row. The
/// others go one by one, as [`restore`]. A backfill thus pays a round trip
/// per page, not per record (docs/benchmarks.md, "Live migration").
async fn restore_records(t: &Target, records: &[RecordVersions]) -> Result<()> {
    let (rows, others): (Vec<&RecordVersions>, Vec<&RecordVersions>) =
        records.iter().partition(|r| RestoreRows::fits(r, t.chunk_threshold));
    if !rows.is_empty() {
        let rows = RestoreRows::of(t, &rows);
        again_if_conflicted(t, "restore", || restore_rows_once(t, &rows)).await?;
    }
    for record in others {
        restore(t, &record.id, &record.versions).await?;
    }
    Ok(())
}

/// The columns of [`KvStatements::restore`], and the records' locks.
struct RestoreRows<'a> {
    locks: Vec<i64>,
    ids: Vec<&'a [u8]>,
    keys: Vec<&'a [u8]>,
    generations: Vec<i64>,
    tombstones: Vec<bool>,
    expires: Vec<Option<i64>>,
    values: Vec<Option<&'a [u8]>>,
    lens: Vec<i64>,
}

impl<'a> RestoreRows<'a> {
    /// Whether `record` restores as rows: only values of at most
    /// `threshold` bytes (larger ones are chunked) and point deletes, keys
    /// strictly ascending (the upsert must not meet a key twice) and short
    /// enough to store ([`check_sizes`] refuses the others on their way).
    fn fits(record: &RecordVersions, threshold: usize) -> bool {
        let mut last: Option<&[u8]> = None;
        record.versions.iter().all(|version| {
            let key = match version {
                Version::Item { key, value, .. } if value.len() <= threshold => key,
                Version::Tombstone { key, .. } => key,
                _ => return false,
            };
            let ascending = last.is_none_or(|last| last < key.as_slice());
            last = Some(key);
            ascending && record.id.len() + key.len() <= MAX_ID_AND_KEY_BYTES
        })
    }

    fn of(t: &Target, records: &[&'a RecordVersions]) -> Self {
        let n = records.iter().map(|r| r.versions.len()).sum();
        let mut rows = Self {
            locks: records.iter().map(|r| t.names.record_lock(r.id.as_bytes())).collect(),
            ids: Vec::with_capacity(n),
            keys: Vec::with_capacity(n),
            generations: Vec::with_capacity(n),
            tombstones: Vec::with_capacity(n),
            expires: Vec::with_capacity(n),
            values: Vec::with_capacity(n),
            lens: Vec::with_capacity(n),
        };
        rows.locks.sort_unstable();
        rows.locks.dedup();
        for record in records {
            for version in &record.versions {
                let (key, tombstone, expires_at, value) = match version {
                    Version::Item { key, value, expires_at, .. } => (key, false, *expires_at, Some(value.as_slice())),
                    Version::Tombstone { key, .. } => (key, true, None, None),
                    // `fits` let none through: restored one record at a
                    // time, by `restore`.
                    Version::Range { .. } => continue,
                };
                rows.ids.push(record.id.as_bytes());
                rows.keys.push(key);
                rows.generations.push(version.generation());
                rows.tombstones.push(tombstone);
                rows.expires.push(expires_at);
                rows.lens.push(value.map_or(0, |v| i64::try_from(v.len()).unwrap_or(i64::MAX)));
                rows.values.push(value);
            }
        }
        rows
    }
}

async fn restore_rows_once(t: &Target, rows: &RestoreRows<'_>) -> Result<()> {
    let mut client = prepared::connection(&t.pool).await?;
    let tx = client.build_transaction().start().await?;
    tx.execute_typed(LOCK_MANY, &[(&rows.locks, Type::INT8_ARRAY)]).await?;
    let columns: [&(dyn ToSql + Sync); 7] =
        [&rows.ids, &rows.keys, &rows.generations, &rows.tombstones, &rows.expires, &rows.values, &rows.lens];
    let params: Vec<(&(dyn ToSql + Sync), Type)> = columns.into_iter().zip(RESTORE_TYPES.iter().cloned()).collect();
    tx.execute_typed(&t.sql.restore, &params).await?;
    tx.commit().await?;
    Ok(())
}

/// Reclaims one incarnation; returns the expired items removed.
/// A `held` namespace keeps its deletes ([`KeyValue::reclaim`]): every
/// expired item becomes a tombstone, and no tombstone or range is swept.
async fn reclaim_one(t: &Target, now: Micros, held: bool) -> Result<u64> {
    let client = crate::lease::lease(&t.pool).await?;
    let tombstone_cut = if held { Micros::MIN } else { now.saturating_sub(t.tombstone_retention) };
    let mut removed = 0u64;
    // Expired items: a tombstone with the item's generation while that is
    // within retention, else gone (chunks cascade, or are freed here).
    loop {
        let row = client
            .query_typed_one(
                &t.sql.reclaim_expired,
                &[(&now, Type::INT8), (&tombstone_cut, Type::INT8), (&RECLAIM_BATCH, Type::INT8)],
            )
            .await?;
        let count: i64 = row.try_get(0)?;
        removed += count.unsigned_abs();
        if count < RECLAIM_BATCH {
            break;
        }
    }
    // Held: the cut is before any generation, so the sweeps of deletes
    // find nothing.
    let sweeps =
        [(&t.sql.sweep_tombstones, tombstone_cut), (&t.sql.sweep_ranges, tombstone_cut), (&t.sql.sweep_tokens, now)];
    for (sweep, cut) in sweeps {
        loop {
            let deleted = client.execute_typed(sweep, &[(&cut, Type::INT8), (&RECLAIM_BATCH, Type::INT8)]).await?;
            if deleted < RECLAIM_BATCH.unsigned_abs() {
                break;
            }
        }
    }
    Ok(removed)
}

async fn storage_bytes(t: &Target) -> Result<u64> {
    let client = crate::lease::lease(&t.pool).await?;
    // Each sum is numeric in SQL; a namespace stores far below 2^63 bytes.
    let row = client.query_typed_one(&t.sql.storage_bytes, &[(&ROW_OVERHEAD, Type::INT8)]).await?;
    let total: i64 = row.try_get(0)?;
    Ok(total.unsigned_abs())
}

#[async_trait]
impl KeyValue for PostgresPlugin {
    fn open(&self, ns: &Namespace) -> prism_plugin_api::Result<Arc<dyn KeyValueHandle>> {
        Ok(Arc::new(self.opened(ns)?))
    }

    async fn reclaim(&self, now: Micros, held: &Held) -> prism_plugin_api::Result<u64> {
        let mut removed = 0;
        let mut first_error = None;
        // Servers that could not be reached this round: their other
        // namespaces wait for the next one rather than each time out.
        let mut unreachable = std::collections::HashSet::new();
        // One namespace failing (its server down) does not stop the others.
        // TimeSeries namespaces have no KeyValue tables: `TimeSeriesHandle::reclaim`.
        for t in self.known().into_iter().filter(|t| !t.time_series) {
            let pool = t.settings.pool_key();
            if unreachable.contains(&pool) {
                continue;
            }
            match self.bounded("reclaim", reclaim_one(&t, now, held.contains(&t.name))).await {
                Ok(n) => removed += n,
                Err(e) if e.is_missing_table() => self.forget(&t),
                Err(e) => {
                    tracing::warn!(namespace = %t.name, error = %e, "reclaiming expired items failed");
                    if matches!(e, PostgresError::Pool(_) | PostgresError::Timeout(_)) {
                        unreachable.insert(pool);
                    }
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e.into()),
            None => Ok(removed),
        }
    }
}

#[async_trait]
impl KeyValueHandle for Opened {
    async fn mutate(&self, id: &str, mutations: &[Mutation], stamp: &WriteStamp) -> prism_plugin_api::Result<()> {
        self.run("mutate", mutate(&self.target, id, mutations, stamp)).await
    }

    async fn get(
        &self,
        id: &str,
        selector: &Selector,
        after: Option<&[u8]>,
        limits: PageLimits,
        now: Micros,
    ) -> prism_plugin_api::Result<ItemsPage> {
        let t = &self.target;
        self.run("get", t.unless_unprepared(|| read::get(t, id, selector, after, limits, now))).await
    }

    async fn scan(
        &self,
        after: Option<&ScanCursor>,
        limits: PageLimits,
        now: Micros,
    ) -> prism_plugin_api::Result<RecordsPage> {
        let t = &self.target;
        self.run("scan", t.unless_unprepared(|| read::scan(t, after, limits, now))).await
    }

    async fn storage_bytes(&self) -> prism_plugin_api::Result<u64> {
        self.run("storage_bytes", storage_bytes(&self.target)).await
    }

    async fn scan_versions(
        &self,
        after: Option<&VersionCursor>,
        limits: PageLimits,
    ) -> prism_plugin_api::Result<VersionsPage> {
        self.run("scan_versions", read::scan_versions(&self.target, after, limits)).await
    }

    async fn restore(&self, id: &str, versions: &[Version]) -> prism_plugin_api::Result<()> {
        self.run("restore", restore(&self.target, id, versions)).await
    }

    async fn restore_records(&self, records: &[RecordVersions]) -> prism_plugin_api::Result<()> {
        self.run("restore_records", restore_records(&self.target, records)).await
    }
}
