//! How the hot statements reach the server: prepared once per pooled
//! connection and kept in its statement cache, which lives as long as the
//! connection (pool recycling keeps it), so a call costs one Bind/Execute
//! and no parse or plan; or, for a namespace whose DSN says
//! `prepared_statements=false` (a server behind a pooler in transaction
//! mode that cannot keep them), sent unnamed with their parameter types,
//! still one round trip each.
//!
//! Each connection's cache is bounded: many namespaces on one server would
//! otherwise leave every one of their statements prepared on every
//! connection (and in the server's memory). Past [`MAX_PREPARED`] the cache
//! is emptied and refills with what is in use.

use deadpool_postgres::{ClientWrapper, Object, Pool};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Row, Statement};

use crate::error::Result;
use crate::lease::Lease;

/// Prepared statements one pooled connection keeps at most (a namespace in
/// use needs about three: its read, its upsert and the shared lock).
pub(crate) const MAX_PREPARED: usize = 128;
/// Counting a cache walks it: done on every this many uses of a
/// connection, so the bound is soft by at most that many calls' worth.
const CHECK_EVERY: usize = 32;

/// A connection of `pool` for one operation ([`Lease`]), its statement
/// cache within bounds.
pub(crate) async fn connection(pool: &Pool) -> Result<Lease> {
    crate::lease::lease_with(pool, bounded_cache).await
}

/// A connection of `pool` to share as a lane, its statement cache within
/// bounds.
pub(crate) async fn lane(pool: &Pool) -> Result<Object> {
    Ok(bounded_cache(pool.get().await?))
}

fn bounded_cache(client: Object) -> Object {
    if Object::metrics(&client).recycle_count.is_multiple_of(CHECK_EVERY)
        && client.statement_cache.size() > MAX_PREPARED
    {
        client.statement_cache.clear();
    }
    client
}

/// A statement ready to run on one connection.
pub(crate) enum Stmt<'a> {
    /// Prepared on this connection (cached there).
    Named(Statement),
    /// Sent with its text and parameter types each time.
    Unnamed(&'a str, &'a [Type]),
}

impl<'a> Stmt<'a> {
    /// `sql` on `client`: prepared (from the connection's cache, or
    /// prepared now: one round trip, once per connection) when `named`.
    pub(crate) async fn on(client: &ClientWrapper, named: bool, sql: &'a str, types: &'a [Type]) -> Result<Self> {
        if named {
            Ok(Self::Named(client.prepare_typed_cached(sql, types).await?))
        } else {
            Ok(Self::Unnamed(sql, types))
        }
    }

    /// Runs the statement with `params` (one per type): one round trip.
    /// The request is written when the future is first polled, so
    /// statements joined in one future are pipelined in polling order.
    pub(crate) async fn query(
        &self,
        client: &tokio_postgres::Client,
        params: &[&(dyn ToSql + Sync)],
    ) -> std::result::Result<Vec<Row>, tokio_postgres::Error> {
        match self {
            Self::Named(statement) => client.query(statement, params).await,
            Self::Unnamed(sql, types) => {
                let typed: Vec<(&(dyn ToSql + Sync), Type)> =
                    params.iter().copied().zip(types.iter().cloned()).collect();
                client.query_typed(sql, &typed).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use prism_plugin_api::kv::{KeyValue, Mutation, NewItem, PageLimits, Selector, WriteStamp};
    use prism_plugin_api::{Namespace, Plugin, now_micros};
    use prism_proto::control::backend_config::Config;
    use prism_proto::control::{BackendConfig, NamespaceSpec, PostgresConfig};
    use prism_testkit::postgres::{PostgresServer, skip_reason};

    use super::*;
    use crate::{PostgresPlugin, PostgresPluginConfig};

    fn namespace(dsn: String, schema: &str) -> Namespace {
        let pg = PostgresConfig { dsn, pool_size: 1, schema: schema.into(), require_tls: false, ..Default::default() };
        Namespace {
            name: "acme/prepared".into(),
            create_revision: 1,
            spec: NamespaceSpec {
                backend_config: Some(Box::new(BackendConfig { config: Some(Config::Postgres(pg)) })),
                ..Default::default()
            },
        }
    }

    /// What the server session of `client` has prepared.
    async fn prepared_on_server(client: &ClientWrapper) -> i64 {
        // A simple query: it prepares nothing itself.
        let messages = client.simple_query("SELECT count(*) FROM pg_prepared_statements").await.expect("count");
        messages
            .iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).and_then(|n| n.parse().ok()),
                _ => None,
            })
            .expect("a count")
    }

    /// On a pool of one connection, handed out and recycled for every
    /// call: the hot statements (the lock, the upsert, the read) are
    /// prepared on the first calls and reused by all later ones, in the
    /// connection's cache and on the server; none with
    /// `prepared_statements=false`.
    #[tokio::test]
    async fn hot_statements_are_prepared_once_per_connection() {
        let Some(server) = PostgresServer::start_or_skip().expect("start PostgreSQL") else {
            println!("{}", skip_reason());
            return;
        };
        for (dsn, schema, want) in [
            (server.dsn(), "prism-prepared", 3),
            (format!("{}?prepared_statements=false", server.dsn()), "prism-unnamed", 0),
        ] {
            let plugin = PostgresPlugin::new(PostgresPluginConfig::default()).expect("valid config");
            let ns = namespace(dsn, schema);
            plugin.provision(&ns).await.expect("provision");
            let kv = KeyValue::open(&plugin, &ns).expect("open");
            let base = now_micros();
            for n in 0..5 {
                let put =
                    Mutation::Put(NewItem { key: b"k".to_vec(), value: n.to_string().into_bytes(), expires_at: None });
                let stamp = WriteStamp { generation_time: base + n, token: None };
                kv.mutate("r", &[put], &stamp).await.expect("mutate");
                let limits = PageLimits::new(u64::MAX, None);
                let page = kv.get("r", &Selector::All, None, limits, base + n).await.expect("get");
                assert_eq!(page.items.first().map(|i| i.value.clone()), Some(n.to_string().into_bytes()));
            }
            let target = plugin.target(&ns).expect("target");
            let client = target.pool.get().await.expect("the pool's connection");
            assert!(Object::metrics(&client).recycle_count >= 10, "one connection served every call");
            assert_eq!(client.statement_cache.size(), want as usize, "{schema}: cached");
            assert_eq!(prepared_on_server(&client).await, want, "{schema}: prepared on the server");
            drop(client);
            plugin.deprovision(&ns).await.expect("deprovision");
        }
    }

    /// A connection's cache is emptied once it holds more than
    /// [`MAX_PREPARED`] statements, and the server forgets them too.
    #[tokio::test]
    async fn the_statement_cache_is_bounded() {
        let Some(server) = PostgresServer::start_or_skip().expect("start PostgreSQL") else {
            println!("{}", skip_reason());
            return;
        };
        let plugin = PostgresPlugin::new(PostgresPluginConfig::default()).expect("valid config");
        let target = plugin.target(&namespace(server.dsn(), "public")).expect("target");
        let client = connection(&target.pool).await.expect("connect");
        for n in 0..=MAX_PREPARED {
            client.prepare_typed_cached(&format!("SELECT {n}"), &[]).await.expect("prepare");
        }
        assert_eq!(client.statement_cache.size(), MAX_PREPARED + 1);
        drop(client);
        for _ in 0..CHECK_EVERY {
            drop(connection(&target.pool).await.expect("recycle"));
        }
        let client = target.pool.get().await.expect("the pool's connection");
        assert_eq!(client.statement_cache.size(), 0, "emptied");
        assert_eq!(prepared_on_server(&client).await, 0, "closed on the server");
    }
}
