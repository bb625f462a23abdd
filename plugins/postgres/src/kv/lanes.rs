//! Connections that concurrent one-statement reads share, pipelined.
//!
//! A read that one statement answers needs no connection of its own: it
//! is one Bind/Execute/Sync in no transaction, and tokio-postgres lets
//! many such requests be in flight on one connection, answered in order.
//! So a few connections of each pool (its *lanes*, [`Lanes::count`]) are
//! kept aside and every such read is sent on one of them, in turn; the
//! rest of the pool serves writes and multi-statement reads, one caller at
//! a time as before.
//!
//! *Why:* sixteen concurrent readers on sixteen connections keep sixteen
//! server processes waking for one statement each; the same reads queued
//! on two connections reach the server a batch per read system call and
//! are answered a batch per write, on two processes that stay busy. On
//! the 2-CPU machine of `docs/benchmarks.md`, 16 clients reading one
//! record through a gateway, in one run of 4 alternating rounds: a
//! connection per read 1.06× PgBouncer's throughput, 4 lanes 1.15×, 2
//! lanes (a pool of 16's) 1.37×, 1 lane 1.53×. Fewer lanes do better on
//! two CPUs; a server with more has more to give a lane each, so the
//! count grows with the pool.
//!
//! *Why that is safe:* each read is one statement in autocommit, so it
//! sees one snapshot and nothing of another request's session; an error
//! fails only its own request (each ends with its own Sync). Lanes use
//! the same prepared statements, cached with the connection, bounded like
//! any pooled connection's. A lane whose connection closed is replaced on
//! its next use. A slow read delays the reads queued behind it on its
//! lane, which is why only reads one statement answers (at most a batch
//! of metadata and small values) go there.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use deadpool_postgres::{Object, Pool};

use super::prepared::{self, MAX_PREPARED};
use crate::error::Result;

/// Lane uses between two looks at a lane's statement cache.
const CHECK_EVERY: usize = 256;

/// The shared connections of one pool.
pub(crate) struct Lanes {
    pool: Pool,
    /// Each lane's connection once opened; `None` until then.
    lanes: Vec<RwLock<Option<Arc<Object>>>>,
    next: AtomicUsize,
}

impl std::fmt::Debug for Lanes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lanes").field("lanes", &self.lanes.len()).finish_non_exhaustive()
    }
}

impl Lanes {
    /// Lanes of a pool of `pool_size` connections: one per eight, at most
    /// four, and none for pools under eight, which keep every connection
    /// for callers of their own.
    pub(crate) fn count(pool_size: usize) -> usize {
        (pool_size / 8).min(4)
    }

    /// `count` lanes of `pool`, opened when first used.
    pub(crate) fn new(pool: Pool, count: usize) -> Self {
        Self { pool, lanes: (0..count).map(|_| RwLock::new(None)).collect(), next: AtomicUsize::new(0) }
    }

    /// A connection to send one read on, shared with other reads; `None`
    /// when this pool has no lanes.
    pub(crate) async fn get(&self) -> Result<Option<Arc<Object>>> {
        if self.lanes.is_empty() {
            return Ok(None);
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        let lane = &self.lanes[turn % self.lanes.len()];
        let open = read(lane).as_ref().filter(|c| !c.is_closed()).cloned();
        if let Some(connection) = open {
            if turn % CHECK_EVERY < self.lanes.len() && connection.statement_cache.size() > MAX_PREPARED {
                connection.statement_cache.clear();
            }
            return Ok(Some(connection));
        }
        // Not opened yet, or its connection closed: a fresh one from the
        // pool (a closed one goes back and is discarded when the last read
        // on it lets go).
        let fresh = Arc::new(prepared::connection(&self.pool).await?);
        let mut slot = lane.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        match slot.as_ref().filter(|c| !c.is_closed()) {
            // Another read opened it meanwhile: ours goes back to the pool.
            Some(current) => Ok(Some(current.clone())),
            None => {
                *slot = Some(fresh.clone());
                Ok(Some(fresh))
            }
        }
    }
}

/// Reads a lane; a panic never leaves one half-written (every write is one
/// assignment), so a poisoned lock is still good.
fn read(lane: &RwLock<Option<Arc<Object>>>) -> std::sync::RwLockReadGuard<'_, Option<Arc<Object>>> {
    lane.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use prism_plugin_api::kv::{KeyValue, Mutation, NewItem, PageLimits, Selector, WriteStamp};
    use prism_plugin_api::{Namespace, Plugin, now_micros};
    use prism_proto::control::backend_config::Config;
    use prism_proto::control::{BackendConfig, NamespaceSpec, PostgresConfig};
    use prism_testkit::postgres::{PostgresServer, skip_reason};

    use crate::{PostgresPlugin, PostgresPluginConfig};

    #[test]
    fn small_pools_have_no_lanes() {
        let counts: Vec<usize> = [1, 4, 7, 8, 16, 31, 32, 64, 1024].iter().map(|&n| super::Lanes::count(n)).collect();
        assert_eq!(counts, [0, 0, 0, 1, 2, 3, 4, 4, 4]);
    }

    /// Concurrent reads share the pool's lanes (and get what was written),
    /// writes go on around them, and a lane whose connection the server
    /// closed is replaced by the next read.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_share_lanes_and_a_lost_lane_is_replaced() {
        let Some(server) = PostgresServer::start_or_skip().expect("start PostgreSQL") else {
            println!("{}", skip_reason());
            return;
        };
        let pg = PostgresConfig {
            dsn: server.dsn(),
            pool_size: 8,
            schema: "prism-lanes".into(),
            require_tls: false,
            ..Default::default()
        };
        let ns = Namespace {
            name: "acme/lanes".into(),
            create_revision: 1,
            spec: NamespaceSpec {
                backend_config: Some(Box::new(BackendConfig { config: Some(Config::Postgres(pg)) })),
                ..Default::default()
            },
        };
        let plugin = std::sync::Arc::new(PostgresPlugin::new(PostgresPluginConfig::default()).expect("valid config"));
        plugin.provision(&ns).await.expect("provision");
        let kv = KeyValue::open(plugin.as_ref(), &ns).expect("open");
        let base = now_micros();
        let limits = PageLimits::new(u64::MAX, None);
        let round = |n: i64| {
            let kv = kv.clone();
            async move {
                let mut tasks = Vec::new();
                for r in 0..16 {
                    let kv = kv.clone();
                    tasks.push(tokio::spawn(async move {
                        let id = format!("r{r}");
                        let value = format!("{n}").into_bytes();
                        let put = Mutation::Put(NewItem { key: b"k".to_vec(), value: value.clone(), expires_at: None });
                        let stamp = WriteStamp { generation_time: base + n, token: None };
                        kv.mutate(&id, &[put], &stamp).await.expect("mutate");
                        let page = kv.get(&id, &Selector::All, None, limits, base).await.expect("get");
                        assert_eq!(page.items.iter().map(|i| i.value.clone()).collect::<Vec<_>>(), vec![value]);
                    }));
                }
                for task in tasks {
                    task.await.expect("read task");
                }
            }
        };
        round(1).await;
        let target = plugin.target(&ns).expect("target");
        let lane = target.lanes.get().await.expect("a lane").expect("a pool of 8 has a lane");
        assert!(lane.statement_cache.size() >= 1, "the lane's read is prepared there");
        // The server ends the lane's session: the next reads open another.
        let pid: i32 = lane.query_one("SELECT pg_backend_pid()", &[]).await.expect("pid").get(0);
        let admin = plugin.target(&ns).expect("target").pool.get().await.expect("a connection");
        admin.execute("SELECT pg_terminate_backend($1)", &[&pid]).await.expect("terminate");
        drop(admin);
        prism_testkit::eventually(std::time::Duration::from_secs(10), || {
            let lane = lane.clone();
            async move {
                anyhow::ensure!(lane.is_closed(), "still open");
                Ok(())
            }
        })
        .await
        .expect("the client sees its connection closed");
        drop(lane);
        round(2).await;
        let replaced = target.lanes.get().await.expect("a lane").expect("a lane");
        assert!(!replaced.is_closed());
        drop(replaced);
        plugin.deprovision(&ns).await.expect("deprovision");
    }
}
