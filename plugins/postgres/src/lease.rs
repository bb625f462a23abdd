//! Pooled connections that go back to the pool only when the operation
//! that took them finished: a connection left behind by an operation that
//! was dropped half-way (a deadline, the request timeout) is closed
//! instead.
//!
//! *Why.* A statement whose caller stopped waiting is still in flight on
//! its connection. When the server (or the network) has merely been
//! slow, its answer arrives later and tokio-postgres throws it away; but
//! when the connection is dead without being closed — a server process
//! that hangs, a peer gone behind a middlebox that still holds the TCP
//! connection, a link that stopped one way — no answer ever comes, TCP
//! keepalives are answered by whoever holds the socket, and the pool's
//! recycling check (`is_closed`) passes. Returned to the pool, such a
//! connection would hang every later request that draws it, until the
//! request timeout, forever: the pool never notices a dead peer. So an
//! operation that does not finish takes its connections with it, as pgx
//! closes a connection whose query's context is cancelled; the next
//! request opens a fresh one. A connection that was only slow costs one
//! reconnect.
//!
//! *How.* [`operation`] runs a plugin call as one operation (every call
//! goes through it, inside its timeout). A [`Lease`] (a connection of the
//! pool) or a [`LaneLease`] (a shared lane, `kv/lanes.rs`) taken inside
//! it is handed to the operation when dropped, not to the pool: when the
//! operation finishes, its connections go back; when it is dropped
//! unfinished, pooled connections are closed and lanes retired (the next
//! read opens another lane; the old one is closed once its last reader
//! lets go). A lease taken outside any operation behaves as a plain
//! pooled connection.
//!
//! An operation that takes a connection again (a write run again after a
//! conflict or a lost prepared statement, a TimeSeries write after making
//! its partitions) gets back the one it let go of, if it has one of that
//! pool: otherwise each attempt would hold one connection idle while it
//! waits for another, and as many such operations as the pool has
//! connections would wait on each other until the pool's timeout.

use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use deadpool_postgres::{Object, Pool};

use crate::error::Result;

tokio::task_local! {
    static OPERATION: Arc<Operation>;
}

/// Runs `call` as one operation: the connections it leases go back to the
/// pool once it has finished, and are closed if it is dropped before.
pub(crate) async fn operation<T>(call: impl Future<Output = T>) -> T {
    let operation = Arc::new(Operation::default());
    let out = OPERATION.scope(operation.clone(), call).await;
    operation.finish();
    out
}

/// What one operation holds of the connections it leased.
#[derive(Default)]
struct Operation {
    finished: AtomicBool,
    parked: Mutex<Parked>,
}

/// The connections an operation's leases let go of before it ended, each
/// pooled one with its pool ([`PoolKey`]).
#[derive(Default)]
struct Parked {
    pooled: Vec<(PoolKey, Object)>,
    lanes: Vec<Arc<Shared>>,
}

/// Which pool a connection came from: the pool's address, stable while
/// the operation borrows it (an operation runs on one namespace's target).
type PoolKey = usize;

fn key(pool: &Pool) -> PoolKey {
    std::ptr::from_ref(pool) as usize
}

impl Operation {
    fn current() -> Option<Arc<Self>> {
        OPERATION.try_with(Arc::clone).ok()
    }

    /// Keeps what a lease let go of until the operation ends; once it
    /// has, what is let go goes as it is.
    fn park(&self, keep: impl FnOnce(&mut Parked)) {
        if self.finished.load(Ordering::Acquire) {
            return;
        }
        keep(&mut self.parked.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    }

    /// A connection of `pool` this operation let go of, to use again.
    fn unpark(&self, pool: PoolKey) -> Option<Object> {
        let mut parked = self.parked.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let at = parked.pooled.iter().position(|(from, _)| *from == pool)?;
        Some(parked.pooled.swap_remove(at).1)
    }

    /// The operation is done: its connections go back.
    fn finish(&self) {
        self.finished.store(true, Ordering::Release);
        let parked = std::mem::take(&mut *self.parked.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        drop(parked);
    }
}

impl Drop for Operation {
    fn drop(&mut self) {
        if self.finished.load(Ordering::Acquire) {
            return;
        }
        let parked = std::mem::take(self.parked.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner));
        if !parked.pooled.is_empty() || !parked.lanes.is_empty() {
            tracing::debug!(
                connections = parked.pooled.len(),
                lanes = parked.lanes.len(),
                "closing the connections of an operation left unfinished"
            );
        }
        for (_, object) in parked.pooled {
            // Out of the pool; dropping it closes the connection.
            drop(Object::take(object));
        }
        for shared in parked.lanes {
            shared.retire();
        }
    }
}

/// A connection of `pool` for the current operation: one it let go of
/// already, or one from the pool.
pub(crate) async fn lease(pool: &Pool) -> Result<Lease> {
    lease_with(pool, |object| object).await
}

/// [`lease`], with `fresh` applied to a connection just taken from the
/// pool.
pub(crate) async fn lease_with(pool: &Pool, fresh: impl FnOnce(Object) -> Object) -> Result<Lease> {
    let operation = Operation::current();
    let pool_key = key(pool);
    let object = match operation.as_ref().and_then(|o| o.unpark(pool_key)) {
        Some(object) => object,
        None => fresh(pool.get().await?),
    };
    Ok(Lease { object: Some(object), pool: pool_key, operation })
}

/// A connection of the pool, taken for one operation.
pub(crate) struct Lease {
    object: Option<Object>,
    pool: PoolKey,
    operation: Option<Arc<Operation>>,
}

impl Deref for Lease {
    type Target = Object;

    fn deref(&self) -> &Object {
        // Taken only in `drop`.
        self.object.as_ref().unwrap_or_else(|| unreachable!("a lease holds its connection until dropped"))
    }
}

impl DerefMut for Lease {
    fn deref_mut(&mut self) -> &mut Object {
        self.object.as_mut().unwrap_or_else(|| unreachable!("a lease holds its connection until dropped"))
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let (Some(object), Some(operation)) = (self.object.take(), &self.operation) {
            operation.park(|parked| parked.pooled.push((self.pool, object)));
        }
    }
}

/// A lane's connection, shared by the reads sent on it.
pub(crate) struct Shared {
    object: Option<Object>,
    /// An operation that used it was left unfinished: it may be dead.
    retired: AtomicBool,
}

impl Shared {
    pub(crate) fn new(object: Object) -> Self {
        Self { object: Some(object), retired: AtomicBool::new(false) }
    }

    /// Whether reads may still be sent on it: open and not retired.
    pub(crate) fn usable(&self) -> bool {
        !self.retired.load(Ordering::Acquire) && !self.is_closed()
    }

    fn retire(&self) {
        self.retired.store(true, Ordering::Release);
    }
}

impl Deref for Shared {
    type Target = Object;

    fn deref(&self) -> &Object {
        self.object.as_ref().unwrap_or_else(|| unreachable!("a lane holds its connection until dropped"))
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(object) = self.object.take()
            && self.retired.load(Ordering::Acquire)
        {
            drop(Object::take(object));
        }
    }
}

/// A lane taken for one read.
#[derive(Clone)]
pub(crate) struct LaneLease {
    shared: Option<Arc<Shared>>,
    operation: Option<Arc<Operation>>,
}

impl LaneLease {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared: Some(shared), operation: Operation::current() }
    }
}

impl Deref for LaneLease {
    type Target = Object;

    fn deref(&self) -> &Object {
        match &self.shared {
            Some(shared) => shared,
            None => unreachable!("a lane lease holds its lane until dropped"),
        }
    }
}

impl Drop for LaneLease {
    fn drop(&mut self) {
        if let (Some(shared), Some(operation)) = (self.shared.take(), &self.operation) {
            operation.park(|parked| parked.lanes.push(shared));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use deadpool_postgres::{Manager, Pool};
    use prism_testkit::postgres::{PostgresServer, skip_reason};
    use tokio_postgres::NoTls;

    use super::*;
    use crate::kv::lanes::Lanes;

    /// The server process behind `client`.
    async fn pid(client: &Object) -> i32 {
        client.query_one("SELECT pg_backend_pid()", &[]).await.expect("pid").get(0)
    }

    /// The server process behind the lane a read gets.
    async fn lane_pid(lanes: &Lanes) -> i32 {
        let lane = lanes.get().await.expect("lane").expect("one lane");
        pid(&lane).await
    }

    /// A statement that outlives the test's patience.
    async fn stall(client: &Object) {
        let _ = client.simple_query("SELECT pg_sleep(5)").await;
    }

    /// What a call leaves in the pool: its connection when it finished,
    /// nothing when it was dropped half-way (the connection is closed);
    /// and a lane a dropped call used is not handed out again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unfinished_operation_closes_its_connections() {
        let Some(server) = PostgresServer::start_or_skip().expect("start PostgreSQL") else {
            println!("{}", skip_reason());
            return;
        };
        let config: tokio_postgres::Config = server.dsn().parse().expect("dsn");
        let pool = Pool::builder(Manager::new(config, NoTls)).max_size(4).build().expect("pool");
        let patience = Duration::from_millis(300);

        let first = operation(async { pid(&lease(&pool).await.expect("lease")).await }).await;
        assert_eq!((pool.status().size, pool.status().available), (1, 1), "a finished call's connection is pooled");

        let abandoned = operation(async { stall(&lease(&pool).await.expect("lease")).await });
        assert!(tokio::time::timeout(patience, abandoned).await.is_err(), "the statement outlives the call");
        assert_eq!(pool.status().size, 0, "an unfinished call's connection is closed, not pooled");
        let again = operation(async { pid(&lease(&pool).await.expect("lease")).await }).await;
        assert_ne!(again, first, "the next call gets a new connection");

        let lanes = Lanes::new(pool.clone(), 1);
        let used = operation(lane_pid(&lanes)).await;
        assert_eq!(operation(lane_pid(&lanes)).await, used, "a lane is shared while calls finish");
        let abandoned = operation(async {
            let lane = lanes.get().await.expect("lane").expect("one lane");
            stall(&lane).await;
        });
        assert!(tokio::time::timeout(patience, abandoned).await.is_err(), "the statement outlives the call");
        assert_ne!(operation(lane_pid(&lanes)).await, used, "a lane an unfinished call used is replaced");
    }

    /// An operation that takes a connection again (a write run again)
    /// gets back the one it let go of: with one connection in the pool it
    /// does not wait on itself.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_operation_taking_a_connection_again_gets_its_own_back() {
        let Some(server) = PostgresServer::start_or_skip().expect("start PostgreSQL") else {
            println!("{}", skip_reason());
            return;
        };
        let config: tokio_postgres::Config = server.dsn().parse().expect("dsn");
        let pool = Pool::builder(Manager::new(config, NoTls)).max_size(1).build().expect("pool");
        let twice = operation(async {
            let first = pid(&lease(&pool).await.expect("lease")).await;
            let second = pid(&lease(&pool).await.expect("lease again")).await;
            (first, second)
        });
        // A hang detector, not a timing assertion.
        let (first, second) = tokio::time::timeout(Duration::from_secs(30), twice).await.expect("no wait on itself");
        assert_eq!(first, second, "the same connection, taken again");
        assert_eq!((pool.status().size, pool.status().available), (1, 1), "back in the pool once finished");
    }
}
