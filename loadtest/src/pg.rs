//! The PostgreSQL baseline (`--target pg:DSN`): what an application would
//! send instead of Prism for a KeyValue get and put of one record — the
//! postgres plugin's own statements ([`KvStatements`], imported, never
//! copied), each alone in autocommit, unnamed with explicit types
//! (`query_typed`: one round trip, nothing prepared, so it also runs
//! through PgBouncer in transaction mode), issued with tokio-postgres
//! through a deadpool pool of `--pool-size` connections. Pointed at
//! PgBouncer it is the PgBouncer baseline; `pgbench` runs the same
//! statements ([`crate::pgbench`]).
//!
//! The tables are the plugin's (its DDL, [`KvStatements::ddl`]) under the
//! fixed base name [`TABLES`] in the DSN's `public` schema.
//!
//! What the baseline leaves out, and the plugin does: the per-record lock
//! and the transaction around a put (which keep last-writer-wins against
//! concurrent range deletes), the idempotency token a routed client adds
//! to every put, and chunking (values here are small). A put here is the
//! upsert alone: an application that never deletes ranges needs no more.

use std::time::{Duration, SystemTime};

use anyhow::Context;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use prism_plugin_postgres::kv::statements::{READ_BATCH, UPSERT_TYPES};
use prism_plugin_postgres::{KvStatements, TableNames};
use tokio_postgres::NoTls;
use tokio_postgres::types::{ToSql, Type};

/// The base name of the baseline's tables (`prism_loadtest_items`, …).
pub const TABLES: &str = "prism_loadtest";
/// The schema of the baseline's tables.
pub const SCHEMA: &str = "public";
/// The plugin's timeouts: connecting, and waiting for a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The baseline's pool and statements. Shared by all workers.
pub struct PgKv {
    pool: Pool,
    sql: KvStatements,
}

impl std::fmt::Debug for PgKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgKv").field("pool", &self.pool.status()).finish_non_exhaustive()
    }
}

pub(crate) fn now_micros() -> i64 {
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(now.as_micros()).unwrap_or(i64::MAX)
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
        let sql = KvStatements::new(&TableNames::from_base(SCHEMA, TABLES.to_owned()));
        let client = pool.get().await.context("cannot connect")?;
        // One simple query: one transaction, so PgBouncer in transaction
        // mode runs all of it on one server connection. Two runs creating
        // the tables at once can race on the catalog; the loser finds them
        // there.
        if let Err(e) = client.batch_execute(&sql.ddl).await {
            let duplicate = e.code().is_some_and(|c| {
                *c == tokio_postgres::error::SqlState::UNIQUE_VIOLATION
                    || *c == tokio_postgres::error::SqlState::DUPLICATE_TABLE
            });
            anyhow::ensure!(duplicate, "creating the baseline's tables: {e}");
        }
        drop(client);
        Ok(Self { pool, sql })
    }

    /// A put of one item (`key`, `value`) of record `id`: the plugin's
    /// last-writer-wins upsert, alone, without a token.
    pub async fn put(&self, id: &str, key: &[u8], value: &[u8]) -> anyhow::Result<()> {
        let generation = now_micros();
        let id = id.as_bytes();
        let keys: Vec<&[u8]> = vec![key];
        let tombstones = vec![false];
        let expires: Vec<Option<i64>> = vec![None];
        let values: Vec<Option<&[u8]>> = vec![Some(value)];
        let chunk_counts = vec![0i32];
        let lens = vec![i64::try_from(value.len())?];
        let params: [&(dyn ToSql + Sync); 8] =
            [&id, &generation, &keys, &tombstones, &expires, &values, &chunk_counts, &lens];
        let typed: Vec<(&(dyn ToSql + Sync), Type)> = params.into_iter().zip(UPSERT_TYPES.iter().cloned()).collect();
        let client = self.pool.get().await?;
        client.query_typed(&self.sql.upsert, &typed).await?;
        Ok(())
    }

    /// The items (key, value) of record `id`, as the plugin's whole-record
    /// get reads them when one statement answers the page.
    pub async fn get(&self, id: &str) -> anyhow::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let id = id.as_bytes();
        let now = now_micros();
        let start: &[u8] = &[];
        let limit = READ_BATCH as i64;
        let (text, types) = self.sql.get_range(false, false);
        let params: [&(dyn ToSql + Sync); 4] = [&id, &now, &start, &limit];
        let typed: Vec<(&(dyn ToSql + Sync), Type)> = params.into_iter().zip(types.iter().cloned()).collect();
        let client = self.pool.get().await?;
        let rows = client.query_typed(text, &typed).await?;
        let mut items = Vec::with_capacity(rows.len());
        for row in &rows {
            let key: Vec<u8> = row.try_get(0)?;
            let value: Option<Vec<u8>> = row.try_get(4)?;
            items.push((key, value.unwrap_or_default()));
        }
        Ok(items)
    }
}
