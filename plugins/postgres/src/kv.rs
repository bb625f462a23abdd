//! KeyValue on PostgreSQL: four tables per namespace incarnation, one
//! transaction per mutate, last-writer-wins enforced by the SQL itself.
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
//! of the same name, and a base name taken by another namespace (a hash
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
//!    row back means it was applied before, and the transaction rolls back.
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
//! # Reads
//!
//! A get or scan is one `REPEATABLE READ READ ONLY` transaction, so a page
//! is one snapshot. Rows are read in key (or id, key) order in batches of
//! metadata — with the value only when it is small — and the page is cut
//! in Rust by bytes and count, the item that crosses the bound included;
//! one row past the page says whether more follows. Then the values of the
//! page's larger items and chunks are fetched by key: memory holds a batch
//! of metadata and small values, and the page's large values, never more.
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
//!
//! All SQL is parameterised with explicit types (`query_typed`: one round
//! trip, nothing prepared per connection, so the many namespaces' texts do
//! not pile up in statement caches); only quoted identifiers are formatted
//! into it. The texts of the put and get paths (`Statements`) are
//! formatted once per incarnation, when its target is made, not per call.

pub mod names;
mod read;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashSet};
use std::ops::Bound;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::Pool;
use prism_plugin_api::kv::{
    ItemsPage, KeyRange, KeyValue, Mutation, NewItem, PageLimits, RecordsPage, ScanCursor, Selector, WriteStamp,
};
use prism_plugin_api::{Micros, Namespace, now_micros};
use prism_proto::control::PostgresConfig;
use tokio_postgres::types::Type;

pub use self::names::TableNames;
use self::names::{REGISTRY_TABLE, quote_ident, schema_lock};
use crate::PostgresPlugin;
use crate::config::{NamespaceSettings, PostgresPluginConfig};
use crate::error::{PostgresError, Result};

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

/// The texts of the statements a mutate or a get runs, for one
/// incarnation: formatted once, when its [`Target`] is made.
pub(crate) struct Statements {
    /// Records an idempotency token (step 1 of the module docs).
    token: String,
    /// The last-writer-wins upsert (step 3).
    upsert: String,
    /// The metadata reads of [`read::get`].
    pub(crate) get: read::GetStatements,
}

impl Statements {
    fn new(items: &str, chunks: &str, ranges: &str, tokens: &str) -> Self {
        Self {
            token: format!(
                "INSERT INTO {tokens} (id, token, forget_after) VALUES ($1, $2, $3)
                     ON CONFLICT (id, token) DO NOTHING RETURNING 1"
            ),
            // Last-writer-wins in SQL: a row is written only where no stored
            // range delete at least as new covers its key and the stored
            // version is strictly older. The old chunks of the rows that won
            // go in the same statement (a data-modifying CTE sees the rows as
            // they were before).
            upsert: format!(
                "WITH won AS (
                    INSERT INTO {items} AS s (id, key, generation, tombstone, expires_at, value, chunks, len)
                    SELECT $1, w.key, $2, w.tombstone, w.expires_at, w.value, w.chunks, w.len
                    FROM unnest($3::bytea[], $4::bool[], $5::int8[], $6::bytea[], $7::int4[], $8::int8[])
                        AS w (key, tombstone, expires_at, value, chunks, len)
                    WHERE NOT EXISTS (
                        SELECT 1 FROM {ranges} r
                        WHERE r.id = $1 AND r.generation >= $2
                          AND r.start_key <= w.key AND (r.end_key IS NULL OR w.key < r.end_key))
                    ON CONFLICT (id, key) DO UPDATE
                    SET generation = EXCLUDED.generation, tombstone = EXCLUDED.tombstone,
                        expires_at = EXCLUDED.expires_at, value = EXCLUDED.value,
                        chunks = EXCLUDED.chunks, len = EXCLUDED.len
                    WHERE s.generation < EXCLUDED.generation
                    RETURNING key),
                freed AS (
                    DELETE FROM {chunks} c USING won WHERE c.id = $1 AND c.key = won.key)
                SELECT key FROM won"
            ),
            get: read::GetStatements::new(items),
        }
    }
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
    /// A TIME_SERIES namespace: its tables are [`crate::ts`]'s, not these.
    pub(crate) time_series: bool,
    /// The days whose TimeSeries partitions this plugin knows exist.
    pub(crate) ts_days: std::sync::Mutex<HashSet<i64>>,
    pub(crate) names: TableNames,
    /// Quoted, schema-qualified names, ready for SQL.
    items: String,
    chunks: String,
    ranges: String,
    tokens: String,
    registry: String,
    /// The statements of the hot paths, built once per incarnation (only
    /// the quoted names vary): the texts are the same on every call.
    sql: Statements,
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
        config: &PostgresPluginConfig,
    ) -> Result<Self> {
        let names = TableNames::of(ns, &settings.schema)?;
        let (items, chunks, ranges, tokens) = (
            names.qualified(&names.items()),
            names.qualified(&names.chunks()),
            names.qualified(&names.ranges()),
            names.qualified(&names.tokens()),
        );
        Ok(Self {
            name: ns.name.clone(),
            revision,
            sql: Statements::new(&items, &chunks, &ranges, &tokens),
            items,
            chunks,
            ranges,
            tokens,
            registry: names.qualified(REGISTRY_TABLE),
            ts_days: std::sync::Mutex::default(),
            time_series: ns.spec.abstraction == prism_proto::control::Abstraction::TimeSeries as i32,
            names,
            settings,
            backend,
            pool,
            chunk_threshold: usize::try_from(config.chunk_threshold_bytes).unwrap_or(usize::MAX).max(1),
            tombstone_retention: micros(config.tombstone_retention),
            token_retention: micros(config.token_retention),
        })
    }

    /// The statements that create the tables (idempotent).
    fn ddl(&self) -> String {
        let (items, chunks, ranges, tokens) = (&self.items, &self.chunks, &self.ranges, &self.tokens);
        let object = |suffix: &str| self.names.object(suffix);
        format!(
            "CREATE TABLE IF NOT EXISTS {items} (
                id bytea NOT NULL,
                key bytea NOT NULL,
                generation int8 NOT NULL,
                tombstone bool NOT NULL,
                expires_at int8,
                value bytea,
                chunks int4 NOT NULL,
                len int8 NOT NULL,
                CONSTRAINT {ipk} PRIMARY KEY (id, key));
            ALTER TABLE {items} ALTER COLUMN value SET STORAGE EXTERNAL;
            CREATE INDEX IF NOT EXISTS {iexp} ON {items} (expires_at) WHERE NOT tombstone AND expires_at IS NOT NULL;
            CREATE INDEX IF NOT EXISTS {itomb} ON {items} (generation) WHERE tombstone;
            CREATE TABLE IF NOT EXISTS {chunks} (
                id bytea NOT NULL,
                key bytea NOT NULL,
                idx int4 NOT NULL,
                data bytea NOT NULL,
                CONSTRAINT {cpk} PRIMARY KEY (id, key, idx),
                CONSTRAINT {cfk} FOREIGN KEY (id, key) REFERENCES {items} (id, key) ON DELETE CASCADE);
            ALTER TABLE {chunks} ALTER COLUMN data SET STORAGE EXTERNAL;
            CREATE TABLE IF NOT EXISTS {ranges} (
                id bytea NOT NULL,
                start_key bytea NOT NULL,
                end_key bytea,
                generation int8 NOT NULL);
            CREATE INDEX IF NOT EXISTS {rid} ON {ranges} (id);
            CREATE TABLE IF NOT EXISTS {tokens} (
                id bytea NOT NULL,
                token bytea NOT NULL,
                forget_after int8 NOT NULL,
                CONSTRAINT {tpk} PRIMARY KEY (id, token));
            CREATE INDEX IF NOT EXISTS {texp} ON {tokens} (forget_after);",
            ipk = object("ipk"),
            iexp = object("iexp"),
            itomb = object("itomb"),
            cpk = object("cpk"),
            cfk = object("cfk"),
            rid = object("rid"),
            tpk = object("tpk"),
            texp = object("texp"),
        )
    }

    fn drop_tables(names: &TableNames) -> String {
        let tables: Vec<String> = names.all_tables().iter().map(|t| names.qualified(t)).collect();
        format!("DROP TABLE IF EXISTS {}", tables.join(", "))
    }
}

/// Creates the incarnation's tables (and its schema and the registry if
/// needed), dropping older incarnations of the same name.
pub(crate) async fn provision(plugin: &PostgresPlugin, t: &Target) -> Result<()> {
    let mut client = t.pool.get().await?;
    let tx = client.build_transaction().start().await?;
    let schema = &t.settings.schema;
    tx.execute_typed("SELECT pg_advisory_xact_lock($1)", &[(&schema_lock(schema), Type::INT8)]).await?;
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
    let older = tx
        .query_typed(
            &format!("SELECT base FROM {} WHERE name = $1 AND create_revision < $2", t.registry),
            &[(&t.name, Type::TEXT), (&t.revision, Type::INT8)],
        )
        .await?;
    for row in older {
        let base: String = row.try_get(0)?;
        tracing::info!(namespace = %t.name, "dropping the tables of an older incarnation");
        tx.batch_execute(&Target::drop_tables(&TableNames::from_base(schema, base))).await?;
    }
    tx.execute_typed(
        &format!("DELETE FROM {} WHERE name = $1 AND create_revision < $2", t.registry),
        &[(&t.name, Type::TEXT), (&t.revision, Type::INT8)],
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
    let main = if t.time_series { t.names.qualified(&t.names.ts_events()) } else { t.items.clone() };
    let exists: bool =
        tx.query_typed_one("SELECT to_regclass($1) IS NOT NULL", &[(&main, Type::TEXT)]).await?.try_get(0)?;
    // Provisioning again leaves a provisioned namespace's tables alone (the
    // ALTERs would lock them against its traffic).
    if !(registered && exists) {
        let ddl = if t.time_series { crate::ts::ddl(&t.names) } else { t.ddl() };
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
    plugin.forget_older(&t.name, t.revision);
    Ok(())
}

/// Drops the incarnation's tables and its registration.
pub(crate) async fn deprovision(t: &Target) -> Result<()> {
    let mut client = t.pool.get().await?;
    let tx = client.build_transaction().start().await?;
    let schema = &t.settings.schema;
    tx.execute_typed("SELECT pg_advisory_xact_lock($1)", &[(&schema_lock(schema), Type::INT8)]).await?;
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
    let mut attempt = 1;
    loop {
        match mutate_once(t, id, &plan, stamp).await {
            Err(e) if e.is_transient() && attempt < MUTATE_ATTEMPTS => {
                tracing::debug!(namespace = %t.name, error = %e, attempt, "mutate conflicted; running it again");
                attempt += 1;
            }
            other => return other,
        }
    }
}

async fn mutate_once(t: &Target, id: &str, plan: &Plan<'_>, stamp: &WriteStamp) -> Result<()> {
    let generation = stamp.generation_time;
    let id = id.as_bytes();
    let mut client = t.pool.get().await?;
    let tx = client.build_transaction().start().await?;
    tx.execute_typed("SELECT pg_advisory_xact_lock($1)", &[(&t.names.record_lock(id), Type::INT8)]).await?;

    // An empty token is no token: it could never tell retries apart.
    if let Some(token) = stamp.token.as_deref().filter(|t| !t.is_empty()) {
        let forget_after = now_micros().max(generation).saturating_add(t.token_retention);
        let fresh = tx
            .query_typed(
                &t.sql.token,
                &[(&id, Type::BYTEA), (&token.as_bytes(), Type::BYTEA), (&forget_after, Type::INT8)],
            )
            .await?;
        if fresh.is_empty() {
            tx.rollback().await?;
            return Ok(()); // applied before
        }
    }
    let writes: Vec<(&[u8], Write<'_>)> = plan.writes.iter().filter_map(|(k, w)| w.map(|w| (*k, w))).collect();
    if !writes.is_empty() {
        write_items(&tx, t, id, generation, &writes).await?;
    }
    if !plan.ranges.is_empty() {
        delete_ranges(&tx, t, id, generation, &plan.ranges).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Step 3 of the module docs: every put and point delete in one
/// conditional upsert, then the chunks of the values that won.
async fn write_items(
    tx: &tokio_postgres::Transaction<'_>,
    t: &Target,
    id: &[u8],
    generation: Micros,
    writes: &[(&[u8], Write<'_>)],
) -> Result<()> {
    let threshold = t.chunk_threshold;
    let mut keys: Vec<&[u8]> = Vec::with_capacity(writes.len());
    let mut tombstones: Vec<bool> = Vec::with_capacity(writes.len());
    let mut expires: Vec<Option<i64>> = Vec::with_capacity(writes.len());
    let mut values: Vec<Option<&[u8]>> = Vec::with_capacity(writes.len());
    let mut chunk_counts: Vec<i32> = Vec::with_capacity(writes.len());
    let mut lens: Vec<i64> = Vec::with_capacity(writes.len());
    for (key, write) in writes {
        keys.push(key);
        match write {
            Write::Put(item) => {
                let chunked = item.value.len() > threshold;
                let count = if chunked {
                    i32::try_from(item.value.len().div_ceil(threshold))
                        .map_err(|_| PostgresError::invalid("value", "is too large to store"))?
                } else {
                    0
                };
                tombstones.push(false);
                expires.push(item.expires_at);
                values.push((!chunked).then_some(item.value.as_slice()));
                chunk_counts.push(count);
                lens.push(i64::try_from(item.value.len()).unwrap_or(i64::MAX));
            }
            Write::Delete => {
                tombstones.push(true);
                expires.push(None);
                values.push(None);
                chunk_counts.push(0);
                lens.push(0);
            }
        }
    }
    // Last-writer-wins in SQL (`Statements::upsert`).
    let won = tx
        .query_typed(
            &t.sql.upsert,
            &[
                (&id, Type::BYTEA),
                (&generation, Type::INT8),
                (&keys, Type::BYTEA_ARRAY),
                (&tombstones, Type::BOOL_ARRAY),
                (&expires, Type::INT8_ARRAY),
                (&values, Type::BYTEA_ARRAY),
                (&chunk_counts, Type::INT4_ARRAY),
                (&lens, Type::INT8_ARRAY),
            ],
        )
        .await?;
    // Only chunked values need to know which keys won.
    if chunk_counts.iter().all(|&count| count == 0) {
        return Ok(());
    }
    let won: HashSet<Vec<u8>> =
        won.iter().map(|row| row.try_get::<_, Vec<u8>>(0)).collect::<std::result::Result<_, _>>()?;
    let mut chunk_keys: Vec<&[u8]> = Vec::new();
    let mut chunk_indexes: Vec<i32> = Vec::new();
    let mut chunk_data: Vec<&[u8]> = Vec::new();
    for (key, write) in writes {
        if let Write::Put(item) = write
            && item.value.len() > threshold
            && won.contains(*key)
        {
            for (index, part) in (0i32..).zip(item.value.chunks(threshold)) {
                chunk_keys.push(key);
                chunk_indexes.push(index);
                chunk_data.push(part);
            }
        }
    }
    if !chunk_keys.is_empty() {
        tx.execute_typed(
            &format!(
                "INSERT INTO {} (id, key, idx, data)
                 SELECT $1, c.key, c.idx, c.data FROM unnest($2::bytea[], $3::int4[], $4::bytea[]) AS c (key, idx, data)",
                t.chunks
            ),
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
        &format!(
            "DELETE FROM {} i USING unnest($2::bytea[], $3::bytea[]) AS r (start_key, end_key)
             WHERE i.id = $1 AND i.key >= r.start_key AND (r.end_key IS NULL OR i.key < r.end_key)
               AND i.generation < $4",
            t.items
        ),
        &[(&id, Type::BYTEA), (&starts, Type::BYTEA_ARRAY), (&ends, Type::BYTEA_ARRAY), (&generation, Type::INT8)],
    )
    .await?;
    // The record lock keeps this list stable until the commit.
    let stored = tx
        .query_typed(
            &format!("SELECT start_key, end_key, generation FROM {} WHERE id = $1", t.ranges),
            &[(&id, Type::BYTEA)],
        )
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
    tx.execute_typed(&format!("DELETE FROM {} WHERE id = $1", t.ranges), &[(&id, Type::BYTEA)]).await?;
    tx.execute_typed(
        &format!(
            "INSERT INTO {} (id, start_key, end_key, generation)
             SELECT $1, r.start_key, r.end_key, r.generation
             FROM unnest($2::bytea[], $3::bytea[], $4::int8[]) AS r (start_key, end_key, generation)",
            t.ranges
        ),
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

/// Reclaims one incarnation; returns the expired items removed.
async fn reclaim_one(t: &Target, now: Micros) -> Result<u64> {
    let client = t.pool.get().await?;
    let tombstone_cut = now.saturating_sub(t.tombstone_retention);
    let mut removed = 0u64;
    // Expired items: a tombstone with the item's generation while that is
    // within retention, else gone (chunks cascade, or are freed here).
    loop {
        let row = client
            .query_typed_one(
                &format!(
                    "WITH due AS (
                        SELECT id, key, generation FROM {items}
                        WHERE NOT tombstone AND expires_at <= $1
                        LIMIT $3 FOR UPDATE SKIP LOCKED),
                    kept AS (
                        UPDATE {items} i SET tombstone = true, value = NULL, chunks = 0, len = 0, expires_at = NULL
                        FROM due WHERE i.id = due.id AND i.key = due.key AND due.generation > $2
                        RETURNING i.id, i.key),
                    freed AS (
                        DELETE FROM {chunks} c USING kept WHERE c.id = kept.id AND c.key = kept.key),
                    gone AS (
                        DELETE FROM {items} i USING due
                        WHERE i.id = due.id AND i.key = due.key AND due.generation <= $2)
                    SELECT count(*) FROM due",
                    items = t.items,
                    chunks = t.chunks,
                ),
                &[(&now, Type::INT8), (&tombstone_cut, Type::INT8), (&RECLAIM_BATCH, Type::INT8)],
            )
            .await?;
        let count: i64 = row.try_get(0)?;
        removed += count.unsigned_abs();
        if count < RECLAIM_BATCH {
            break;
        }
    }
    let sweeps = [
        (t.items.as_str(), "tombstone AND generation <= $1", tombstone_cut),
        (t.ranges.as_str(), "generation <= $1", tombstone_cut),
        (t.tokens.as_str(), "forget_after <= $1", now),
    ];
    for (table, condition, cut) in sweeps {
        loop {
            let deleted = client
                .execute_typed(
                    &format!(
                        "DELETE FROM {table} WHERE ctid = ANY(ARRAY(
                            SELECT ctid FROM {table} WHERE {condition} LIMIT $2 FOR UPDATE SKIP LOCKED))"
                    ),
                    &[(&cut, Type::INT8), (&RECLAIM_BATCH, Type::INT8)],
                )
                .await?;
            if deleted < RECLAIM_BATCH.unsigned_abs() {
                break;
            }
        }
    }
    Ok(removed)
}

async fn storage_bytes(t: &Target) -> Result<u64> {
    let client = t.pool.get().await?;
    // Each sum is numeric in SQL; a namespace stores far below 2^63 bytes.
    let row = client
        .query_typed_one(
            &format!(
                "SELECT
                    (SELECT coalesce(sum(octet_length(id) + octet_length(key) + coalesce(octet_length(value), 0) + $1), 0)::int8 FROM {items})
                  + (SELECT coalesce(sum(octet_length(id) + octet_length(key) + octet_length(data) + $1), 0)::int8 FROM {chunks})
                  + (SELECT coalesce(sum(octet_length(id) + octet_length(start_key) + coalesce(octet_length(end_key), 0) + $1), 0)::int8 FROM {ranges})
                  + (SELECT coalesce(sum(octet_length(id) + octet_length(token) + $1), 0)::int8 FROM {tokens})",
                items = t.items,
                chunks = t.chunks,
                ranges = t.ranges,
                tokens = t.tokens,
            ),
            &[(&ROW_OVERHEAD, Type::INT8)],
        )
        .await?;
    let total: i64 = row.try_get(0)?;
    Ok(total.unsigned_abs())
}

#[async_trait]
impl KeyValue for PostgresPlugin {
    async fn mutate(
        &self,
        ns: &Namespace,
        id: &str,
        mutations: &[Mutation],
        stamp: &WriteStamp,
    ) -> prism_plugin_api::Result<()> {
        let t = self.target(ns)?;
        let result = self.bounded("mutate", mutate(&t, id, mutations, stamp)).await;
        Ok(self.settle(&t, result)?)
    }

    async fn get(
        &self,
        ns: &Namespace,
        id: &str,
        selector: &Selector,
        after: Option<&[u8]>,
        limits: PageLimits,
        now: Micros,
    ) -> prism_plugin_api::Result<ItemsPage> {
        let t = self.target(ns)?;
        let result = self.bounded("get", read::get(&t, id, selector, after, limits, now)).await;
        Ok(self.settle(&t, result)?)
    }

    async fn scan(
        &self,
        ns: &Namespace,
        after: Option<&ScanCursor>,
        limits: PageLimits,
        now: Micros,
    ) -> prism_plugin_api::Result<RecordsPage> {
        let t = self.target(ns)?;
        let result = self.bounded("scan", read::scan(&t, after, limits, now)).await;
        Ok(self.settle(&t, result)?)
    }

    async fn reclaim(&self, now: Micros) -> prism_plugin_api::Result<u64> {
        let mut removed = 0;
        let mut first_error = None;
        // Servers that could not be reached this round: their other
        // namespaces wait for the next one rather than each time out.
        let mut unreachable = std::collections::HashSet::new();
        // One namespace failing (its server down) does not stop the others.
        // TimeSeries namespaces have no KeyValue tables: `TimeSeries::reclaim`.
        for t in self.known().into_iter().filter(|t| !t.time_series) {
            let pool = t.settings.pool_key();
            if unreachable.contains(&pool) {
                continue;
            }
            match self.bounded("reclaim", reclaim_one(&t, now)).await {
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

    async fn storage_bytes(&self, ns: &Namespace) -> prism_plugin_api::Result<u64> {
        let t = self.target(ns)?;
        let result = self.bounded("storage_bytes", storage_bytes(&t)).await;
        Ok(self.settle(&t, result)?)
    }
}

impl PostgresPlugin {
    /// Turns "the tables are not there" into `NotProvisioned`, forgetting
    /// the namespace.
    pub(crate) fn settle<T>(&self, t: &Target, result: Result<T>) -> Result<T> {
        result.map_err(|e| {
            if e.is_missing_table() {
                self.forget(t);
                PostgresError::NotProvisioned(t.name.clone())
            } else {
                e
            }
        })
    }
}
