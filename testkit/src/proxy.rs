//! A TCP proxy on `127.0.0.1:<ephemeral>`: what an L4 load balancer in
//! front of several gateways does — each new connection goes to the next
//! backend in turn, bytes are copied both ways untouched (so HTTP/2, TLS
//! and gRPC pass through) — and a link that a test can cut.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle};

#[derive(Debug)]
struct State {
    backends: Vec<SocketAddr>,
    next: AtomicUsize,
    cut: AtomicBool,
    /// Connections made so far, per backend (same order).
    connections: Vec<AtomicUsize>,
    open: Mutex<Vec<AbortHandle>>,
}

/// A running proxy; stops (and drops its connections) when dropped.
#[derive(Debug)]
pub struct TcpProxy {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl TcpProxy {
    /// Proxies each new connection to the next of `backends` in turn.
    pub async fn round_robin(backends: Vec<SocketAddr>) -> anyhow::Result<Self> {
        anyhow::ensure!(!backends.is_empty(), "a proxy needs a backend");
        let listener = TcpListener::bind("127.0.0.1:0").await.context("bind proxy")?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            connections: backends.iter().map(|_| AtomicUsize::new(0)).collect(),
            backends,
            next: AtomicUsize::new(0),
            cut: AtomicBool::new(false),
            open: Mutex::default(),
        });
        let task = tokio::spawn(accept(listener, state.clone()));
        Ok(Self { addr, state, task })
    }

    /// `127.0.0.1:port`.
    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    /// Connections proxied so far to each backend, in the order given.
    pub fn connections(&self) -> Vec<usize> {
        self.state.connections.iter().map(|n| n.load(Ordering::Relaxed)).collect()
    }

    /// Drops every open connection and closes new ones at once, until
    /// [`restore`](Self::restore): a network partition.
    pub fn cut(&self) {
        self.state.cut.store(true, Ordering::Release);
        for conn in self.state.open.lock().map(|mut o| std::mem::take(&mut *o)).unwrap_or_default() {
            conn.abort();
        }
    }

    pub fn restore(&self) {
        self.state.cut.store(false, Ordering::Release);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut();
    }
}

async fn accept(listener: TcpListener, state: Arc<State>) {
    loop {
        let Ok((client, _)) = listener.accept().await else { continue };
        if state.cut.load(Ordering::Acquire) {
            drop(client);
            continue;
        }
        let i = state.next.fetch_add(1, Ordering::Relaxed) % state.backends.len();
        state.connections[i].fetch_add(1, Ordering::Relaxed);
        let backend = state.backends[i];
        let conn = tokio::spawn(relay(client, backend));
        if let Ok(mut open) = state.open.lock() {
            open.retain(|c| !c.is_finished());
            open.push(conn.abort_handle());
        }
    }
}

async fn relay(mut client: TcpStream, backend: SocketAddr) {
    let _ = client.set_nodelay(true);
    let Ok(mut server) = TcpStream::connect(backend).await else { return };
    let _ = server.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
}
