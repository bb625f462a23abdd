//! The PostgreSQL baseline (`--target pg:DSN`): what the postgres plugin
//! sends for a KeyValue get and put of one record, issued directly with
//! tokio-postgres through a deadpool pool of `--pool-size` connections.
//! Pointed at PgBouncer (transaction pooling) it is the PgBouncer baseline.
//!
//! The tables have the plugin's layout (`plugins/postgres/src/kv.rs`,
//! "Layout": `items`, `chunks`, `ranges`) under fixed names in the DSN's
//! default schema, and the statements are the plugin's texts (as in
//! `gateway/benches/postgres.rs`): a put is a `READ COMMITTED` transaction
//! of the record's advisory lock and the last-writer-wins upsert; a get is
//! a `REPEATABLE READ READ ONLY` transaction of one metadata-and-small-
//! values read. Every statement is `query_typed` (unnamed, one round trip,
//! nothing prepared), as the plugin's: that is also what lets it run
//! through PgBouncer in transaction mode.
//!
//! What the baseline leaves out, so the gateway's side does slightly more:
//! the idempotency-token insert a routed client (`control-plane:`) adds to
//! every put, and the plugin's chunking (values here are small).

use std::time::{Duration, SystemTime};

use anyhow::Context;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::types::Type;
use tokio_postgres::{IsolationLevel, NoTls};

const ITEMS: &str = "prism_loadtest_items";
const CHUNKS: &str = "prism_loadtest_chunks";
const RANGES: &str = "prism_loadtest_ranges";
/// Values up to this many bytes come with their row's metadata (the plugin's
/// `SMALL_VALUE`).
const SMALL_VALUE: i64 = 8 << 10;
/// The `LIMIT` of a whole-record get (the plugin's `READ_BATCH`).
const READ_BATCH: i64 = 256;
/// The plugin's timeouts: connecting, and `statement_timeout`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The baseline's pool and statement texts. Shared by all workers.
pub struct PgKv {
    pool: Pool,
    upsert: String,
    get: String,
}

impl std::fmt::Debug for PgKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgKv").field("pool", &self.pool.status()).finish_non_exhaustive()
    }
}

fn now_micros() -> i64 {
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(now.as_micros()).unwrap_or(i64::MAX)
}

/// The advisory lock key of a record: FNV-1a of `table ‖ 0 ‖ id`. The
/// plugin uses xxHash64; which hash makes the key does not matter to the
/// database's work.
fn record_lock(id: &[u8]) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in ITEMS.as_bytes().iter().chain([0u8].iter()).chain(id) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h as i64
}

impl PgKv {
    /// Connects a pool to `dsn`, checks that the server answers, and
    /// creates the tables if they are missing.
    pub async fn connect(dsn: &str, pool_size: usize) -> anyhow::Result<Self> {
        let mut config: tokio_postgres::Config = dsn.parse().context("the PostgreSQL DSN is invalid")?;
        // As the plugin's `NamespaceSettings::make_pool`.
        config.connect_timeout(CONNECT_TIMEOUT);
        config.application_name("prism-loadtest");
        config.keepalives(true).keepalives_idle(Duration::from_secs(30));
        let manager = Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .context("PostgreSQL pool")?;
        let client = pool.get().await.context("cannot connect")?;
        // One statement at a time: PgBouncer in transaction mode hands each
        // to whichever server connection is free, and that is fine for DDL.
        for ddl in [
            format!(
                "CREATE TABLE IF NOT EXISTS {ITEMS} (id bytea NOT NULL, key bytea NOT NULL, generation int8 NOT NULL, \
                 tombstone bool NOT NULL, expires_at int8, value bytea, chunks int4 NOT NULL, len int8 NOT NULL, \
                 PRIMARY KEY (id, key))"
            ),
            format!("ALTER TABLE {ITEMS} ALTER COLUMN value SET STORAGE EXTERNAL"),
            format!(
                "CREATE INDEX IF NOT EXISTS {ITEMS}_exp ON {ITEMS} (expires_at) \
                 WHERE NOT tombstone AND expires_at IS NOT NULL"
            ),
            format!("CREATE INDEX IF NOT EXISTS {ITEMS}_tomb ON {ITEMS} (generation) WHERE tombstone"),
            format!(
                "CREATE TABLE IF NOT EXISTS {CHUNKS} (id bytea NOT NULL, key bytea NOT NULL, idx int4 NOT NULL, \
                 data bytea NOT NULL, PRIMARY KEY (id, key, idx), \
                 FOREIGN KEY (id, key) REFERENCES {ITEMS} (id, key) ON DELETE CASCADE)"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {RANGES} (id bytea NOT NULL, start_key bytea NOT NULL, end_key bytea, \
                 generation int8 NOT NULL)"
            ),
            format!("CREATE INDEX IF NOT EXISTS {RANGES}_id ON {RANGES} (id)"),
        ] {
            // Two runs creating the tables at once can race on the catalog;
            // the loser finds them there on the next statement.
            if let Err(e) = client.batch_execute(&ddl).await {
                let duplicate = e.code().is_some_and(|c| {
                    *c == tokio_postgres::error::SqlState::UNIQUE_VIOLATION
                        || *c == tokio_postgres::error::SqlState::DUPLICATE_TABLE
                });
                anyhow::ensure!(duplicate, "creating the baseline's tables: {e}");
            }
        }
        drop(client);
        // Byte for byte the plugin's texts (`kv.rs` `Statements::new`,
        // `kv/read.rs` `GetStatements` for a whole record, no cursor).
        let upsert = format!(
            "WITH won AS (
                    INSERT INTO {ITEMS} AS s (id, key, generation, tombstone, expires_at, value, chunks, len)
                    SELECT $1, w.key, $2, w.tombstone, w.expires_at, w.value, w.chunks, w.len
                    FROM unnest($3::bytea[], $4::bool[], $5::int8[], $6::bytea[], $7::int4[], $8::int8[])
                        AS w (key, tombstone, expires_at, value, chunks, len)
                    WHERE NOT EXISTS (
                        SELECT 1 FROM {RANGES} r
                        WHERE r.id = $1 AND r.generation >= $2
                          AND r.start_key <= w.key AND (r.end_key IS NULL OR w.key < r.end_key))
                    ON CONFLICT (id, key) DO UPDATE
                    SET generation = EXCLUDED.generation, tombstone = EXCLUDED.tombstone,
                        expires_at = EXCLUDED.expires_at, value = EXCLUDED.value,
                        chunks = EXCLUDED.chunks, len = EXCLUDED.len
                    WHERE s.generation < EXCLUDED.generation
                    RETURNING key),
                freed AS (
                    DELETE FROM {CHUNKS} c USING won WHERE c.id = $1 AND c.key = won.key)
                SELECT key FROM won"
        );
        let get = format!(
            "SELECT key, len, chunks, expires_at, CASE WHEN chunks = 0 AND len <= {SMALL_VALUE} THEN value END \
             FROM {ITEMS} WHERE id = $1 AND NOT tombstone AND (expires_at IS NULL OR expires_at > $2) \
             AND key >= $3 ORDER BY key LIMIT $4"
        );
        Ok(Self { pool, upsert, get })
    }

    /// A put of one item (`key`, `value`) of record `id`, as the plugin's
    /// `mutate_once` runs it without an idempotency token.
    pub async fn put(&self, id: &str, key: &[u8], value: &[u8]) -> anyhow::Result<()> {
        let generation = now_micros();
        let id = id.as_bytes();
        let mut client = self.pool.get().await?;
        let tx = client.build_transaction().start().await?;
        tx.execute_typed("SELECT pg_advisory_xact_lock($1)", &[(&record_lock(id), Type::INT8)]).await?;
        let keys: Vec<&[u8]> = vec![key];
        let tombstones = vec![false];
        let expires: Vec<Option<i64>> = vec![None];
        let values: Vec<Option<&[u8]>> = vec![Some(value)];
        let chunk_counts = vec![0i32];
        let lens = vec![i64::try_from(value.len())?];
        tx.query_typed(
            &self.upsert,
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
        tx.commit().await?;
        Ok(())
    }

    /// The items (key, value) of record `id`, as the plugin's whole-record
    /// get reads them.
    pub async fn get(&self, id: &str) -> anyhow::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let id = id.as_bytes();
        let now = now_micros();
        let start: &[u8] = &[];
        let mut client = self.pool.get().await?;
        let tx =
            client.build_transaction().isolation_level(IsolationLevel::RepeatableRead).read_only(true).start().await?;
        let rows = tx
            .query_typed(
                &self.get,
                &[(&id, Type::BYTEA), (&now, Type::INT8), (&start, Type::BYTEA), (&READ_BATCH, Type::INT8)],
            )
            .await?;
        let mut items = Vec::with_capacity(rows.len());
        for row in &rows {
            let key: Vec<u8> = row.try_get(0)?;
            let value: Option<Vec<u8>> = row.try_get(4)?;
            items.push((key, value.unwrap_or_default()));
        }
        tx.commit().await?;
        Ok(items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_locks_differ_by_record() {
        assert_ne!(record_lock(b"lt-1"), record_lock(b"lt-2"));
        assert_eq!(record_lock(b"lt-1"), record_lock(b"lt-1"));
    }
}
