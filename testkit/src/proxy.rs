//! A TCP proxy on `127.0.0.1:<ephemeral>`: what an L4 load balancer in
//! front of several gateways does — each new connection goes to the next
//! backend in turn, bytes are copied both ways untouched (so HTTP/2, TLS
//! and gRPC pass through) — a link that a test can cut, and a network
//! that a test can break in the ways real ones break ([`Fault`]).
//!
//! A fault is switched on and off while connections are open and applies
//! to them at once, as it does to new ones: [`TcpProxy::set_fault`],
//! [`TcpProxy::heal`]. Put the proxy between a client and a server (a
//! gateway and PostgreSQL, a broker, the control plane) and the client
//! sees what it would see through a broken network, with nothing mocked on
//! either side.
//!
//! Servers that tell clients their own address (a Kafka broker's
//! advertised listener, a Pulsar lookup) must name the proxy instead, or
//! the client goes around it after the first answer: start a Kafka broker
//! advertising the proxy (bind the proxy's listener first, then
//! [`TcpProxy::on`]), and have the proxy rewrite a Pulsar broker's
//! address in what it sends ([`TcpProxy::rewrite_replies`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinHandle};

/// How the network between clients and backends misbehaves. Each applies
/// to both directions of every connection, open or new, until the next
/// [`TcpProxy::set_fault`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fault {
    /// Bytes pass untouched.
    #[default]
    None,
    /// Every chunk of bytes waits this long before it is passed on (chunks
    /// stay in order, so a stream's throughput drops too).
    Latency(Duration),
    /// At most this many bytes per second, each direction of each
    /// connection.
    Bandwidth(u64),
    /// Nothing passes either way and nothing is closed: open connections
    /// stall, new ones are accepted (the proxy's kernel answers the
    /// handshake) but the backend is not dialled. When the fault ends the
    /// stalled bytes flow again, as TCP retransmission would deliver them.
    Blackhole,
    /// The backend's bytes no longer reach the client while the client's
    /// still reach the backend: requests are delivered (and may be
    /// acted on) but never answered. A connection open under this fault
    /// stays that way until it is closed, even after the fault ends — its
    /// peer has forgotten it, as after a crash or a lost NAT entry — so a
    /// client must notice the dead connection and make a new one.
    HalfOpen,
    /// Every open connection is reset (RST, not FIN), and new ones are
    /// reset as soon as they are accepted.
    Reset,
}

/// A same-length substitution in what backends send ([`TcpProxy::rewrite_replies`]).
#[derive(Debug)]
struct Rewrite {
    from: Vec<u8>,
    to: Vec<u8>,
}

/// How long bytes that may be the start of a rewritten address wait for
/// the rest before they are passed on as they are.
const REWRITE_HOLD: Duration = Duration::from_millis(2);

/// How many bytes are read (and passed on) at a time.
const CHUNK: usize = 16 * 1024;

impl Rewrite {
    /// Rewrites every whole occurrence in `bytes` and returns how many of
    /// its last bytes must wait for the next read: the longest tail that
    /// begins an occurrence.
    fn apply(&self, bytes: &mut [u8]) -> usize {
        let n = self.from.len();
        let mut i = 0;
        while i + n <= bytes.len() {
            if bytes[i..i + n] == self.from[..] {
                bytes[i..i + n].copy_from_slice(&self.to);
                i += n;
            } else {
                i += 1;
            }
        }
        (1..n.min(bytes.len() + 1)).rev().find(|&k| bytes[bytes.len() - k..] == self.from[..k]).unwrap_or(0)
    }
}

#[derive(Debug)]
struct State {
    backends: Vec<SocketAddr>,
    next: AtomicUsize,
    cut: AtomicBool,
    /// Connections made so far, per backend (same order).
    connections: Vec<AtomicUsize>,
    open: Mutex<Vec<Open>>,
    fault: watch::Sender<Fault>,
    rewrite: Mutex<Option<Arc<Rewrite>>>,
}

/// A connection being relayed.
#[derive(Debug)]
struct Open {
    task: AbortHandle,
    /// Set once it has been half-open: the backend's bytes are dropped.
    dead: Arc<AtomicBool>,
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
        let listener = TcpListener::bind("127.0.0.1:0").await.context("bind proxy")?;
        Self::on(listener, backends)
    }

    /// A proxy to one backend.
    pub async fn to(backend: SocketAddr) -> anyhow::Result<Self> {
        Self::round_robin(vec![backend]).await
    }

    /// Proxies connections accepted on `listener` (bound by the caller,
    /// e.g. before a server that must advertise the proxy's address is
    /// started) to `backends` in turn.
    pub fn on(listener: TcpListener, backends: Vec<SocketAddr>) -> anyhow::Result<Self> {
        anyhow::ensure!(!backends.is_empty(), "a proxy needs a backend");
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            connections: backends.iter().map(|_| AtomicUsize::new(0)).collect(),
            backends,
            next: AtomicUsize::new(0),
            cut: AtomicBool::new(false),
            open: Mutex::default(),
            fault: watch::Sender::new(Fault::None),
            rewrite: Mutex::default(),
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

    /// Replaces `from` with `to` wherever it appears in what backends send
    /// on connections made from now on: for a server that names its own
    /// address in its answers (a Pulsar broker's lookup), so clients keep
    /// coming through the proxy. The two must be the same length, so no
    /// framing around them changes.
    pub fn rewrite_replies(&self, from: &str, to: &str) -> anyhow::Result<()> {
        anyhow::ensure!(
            from.len() == to.len() && !from.is_empty(),
            "a rewrite keeps the length: {from:?} and {to:?} differ"
        );
        let rewrite = Rewrite { from: from.as_bytes().to_vec(), to: to.as_bytes().to_vec() };
        *self.state.rewrite.lock().map_err(|_| anyhow::anyhow!("rewrite lock poisoned"))? = Some(Arc::new(rewrite));
        Ok(())
    }

    /// Switches to `fault` (ending the one before), for open connections
    /// and new ones alike.
    pub fn set_fault(&self, fault: Fault) {
        if fault == Fault::HalfOpen
            && let Ok(open) = self.state.open.lock()
        {
            for conn in open.iter() {
                conn.dead.store(true, Ordering::Release);
            }
        }
        self.state.fault.send_replace(fault);
    }

    /// Ends the fault: bytes pass untouched again (connections that were
    /// half-open stay dead, see [`Fault::HalfOpen`]).
    pub fn heal(&self) {
        self.set_fault(Fault::None);
    }

    /// The fault in force.
    pub fn fault(&self) -> Fault {
        *self.state.fault.borrow()
    }

    /// Drops every open connection and closes new ones at once, until
    /// [`restore`](Self::restore): a network partition.
    pub fn cut(&self) {
        self.state.cut.store(true, Ordering::Release);
        for conn in self.state.open.lock().map(|mut o| std::mem::take(&mut *o)).unwrap_or_default() {
            conn.task.abort();
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
        let fault = *state.fault.borrow();
        if fault == Fault::Reset {
            let _ = client.set_zero_linger();
            drop(client);
            continue;
        }
        let i = state.next.fetch_add(1, Ordering::Relaxed) % state.backends.len();
        state.connections[i].fetch_add(1, Ordering::Relaxed);
        let dead = Arc::new(AtomicBool::new(fault == Fault::HalfOpen));
        let rewrite = state.rewrite.lock().ok().and_then(|r| r.clone());
        let link = Link { faults: state.fault.subscribe(), dead: dead.clone(), rewrite };
        let conn = tokio::spawn(relay(client, state.backends[i], link));
        if let Ok(mut open) = state.open.lock() {
            open.retain(|c| !c.task.is_finished());
            open.push(Open { task: conn.abort_handle(), dead });
        }
    }
}

/// What one relayed connection consults.
struct Link {
    faults: watch::Receiver<Fault>,
    dead: Arc<AtomicBool>,
    rewrite: Option<Arc<Rewrite>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Toward {
    Backend,
    Client,
}

async fn relay(mut client: TcpStream, backend: SocketAddr, mut link: Link) {
    let _ = client.set_nodelay(true);
    // Under a blackhole the handshake to the backend gets no answer until
    // the fault ends (or turns into a reset).
    let Ok(fault) = link.faults.wait_for(|f| *f != Fault::Blackhole).await.map(|f| *f) else { return };
    if fault == Fault::Reset {
        let _ = client.set_zero_linger();
        return;
    }
    let Ok(mut server) = TcpStream::connect(backend).await else {
        // What the client would have got from the backend itself.
        let _ = client.set_zero_linger();
        return;
    };
    let _ = server.set_nodelay(true);
    let mut faults = link.faults.clone();
    let reset = {
        let (from_client, to_client) = client.split();
        let (from_server, to_server) = server.split();
        let up = pump(from_client, to_server, Toward::Backend, &link);
        let down = pump(from_server, to_client, Toward::Client, &link);
        tokio::select! {
            _ = async { tokio::join!(up, down) } => false,
            reset = faults.wait_for(|f| *f == Fault::Reset) => reset.is_ok(),
        }
    };
    if reset {
        let _ = client.set_zero_linger();
        let _ = server.set_zero_linger();
    }
}

/// Copies `from` to `to` under the faults in force until `from` ends, then
/// passes the end on (unless the connection is dead that way).
async fn pump(mut from: impl AsyncRead + Unpin, mut to: impl AsyncWrite + Unpin, toward: Toward, link: &Link) {
    let mut faults = link.faults.clone();
    let rewrite = link.rewrite.as_deref().filter(|_| toward == Toward::Client);
    let dead = || toward == Toward::Client && link.dead.load(Ordering::Acquire);
    let mut buf = vec![0u8; CHUNK];
    let mut held = Vec::new();
    loop {
        let cap = match *faults.borrow() {
            // Small chunks, so a slow link trickles rather than bursts.
            Fault::Bandwidth(rate) => usize::try_from(rate / 10).unwrap_or(CHUNK).clamp(1, CHUNK),
            _ => CHUNK,
        };
        let read = if held.is_empty() {
            Some(from.read(&mut buf[..cap]).await)
        } else {
            tokio::time::timeout(REWRITE_HOLD, from.read(&mut buf[..cap])).await.ok()
        };
        let mut out = std::mem::take(&mut held);
        let ended = match read {
            Some(Ok(0) | Err(_)) => true,
            Some(Ok(n)) => {
                out.extend_from_slice(&buf[..n]);
                false
            }
            // Nothing more came: what was held goes as it is.
            None => false,
        };
        if let Some(rewrite) = rewrite
            && !ended
        {
            let hold = rewrite.apply(&mut out);
            held = out.split_off(out.len() - hold);
        }
        if !out.is_empty() {
            if !delay(&mut faults, out.len()).await {
                return;
            }
            if !dead() && to.write_all(&out).await.is_err() {
                return;
            }
        }
        if ended {
            break;
        }
    }
    if !dead() {
        let _ = to.shutdown().await;
    }
}

/// Holds `len` bytes as the fault in force says; false when the proxy is
/// gone.
async fn delay(faults: &mut watch::Receiver<Fault>, len: usize) -> bool {
    loop {
        let fault = *faults.borrow_and_update();
        match fault {
            Fault::Blackhole => {
                if faults.changed().await.is_err() {
                    return false;
                }
            }
            Fault::Latency(d) => {
                tokio::time::sleep(d).await;
                return true;
            }
            Fault::Bandwidth(rate) => {
                tokio::time::sleep(Duration::from_secs_f64(len as f64 / rate.max(1) as f64)).await;
                return true;
            }
            Fault::None | Fault::HalfOpen | Fault::Reset => return true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_whole_occurrences_and_holds_a_partial_one() {
        let rewrite = Rewrite { from: b"host:1234".to_vec(), to: b"host:9876".to_vec() };
        let mut bytes = b"xx host:1234 yy host:1234".to_vec();
        assert_eq!(rewrite.apply(&mut bytes), 0);
        assert_eq!(bytes, b"xx host:9876 yy host:9876");
        let mut bytes = b"xx hos".to_vec();
        assert_eq!(rewrite.apply(&mut bytes), 3, "the start of an address waits for the rest");
        let mut bytes = b"xx".to_vec();
        assert_eq!(rewrite.apply(&mut bytes), 0);
    }

    async fn echo() -> anyhow::Result<SocketAddr> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = conn.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        Ok(addr)
    }

    /// One round trip through the proxy on `conn`, bounded: `None` when
    /// nothing came back in time.
    async fn round_trip(conn: &mut TcpStream, within: Duration) -> Option<std::io::Result<Vec<u8>>> {
        let sent = conn.write_all(b"ping").await;
        if let Err(e) = sent {
            return Some(Err(e));
        }
        let mut got = [0u8; 4];
        tokio::time::timeout(within, conn.read_exact(&mut got)).await.ok().map(|r| r.map(|_| got.to_vec()))
    }

    #[tokio::test]
    async fn faults_break_the_link_and_healing_restores_it() -> anyhow::Result<()> {
        let proxy = TcpProxy::to(echo().await?).await?;
        let short = Duration::from_millis(200);
        let long = Duration::from_secs(10);

        let mut conn = TcpStream::connect(proxy.addr).await?;
        assert_eq!(round_trip(&mut conn, long).await.transpose()?, Some(b"ping".to_vec()));

        // A blackhole stalls the open connection; healing delivers.
        proxy.set_fault(Fault::Blackhole);
        assert!(round_trip(&mut conn, short).await.is_none(), "a blackhole passes nothing");
        proxy.heal();
        let mut rest = [0u8; 4];
        tokio::time::timeout(long, conn.read_exact(&mut rest)).await??;
        assert_eq!(&rest, b"ping", "the stalled bytes arrive once the blackhole ends");

        // Half-open: the connection stays dead after the fault; a new one works.
        proxy.set_fault(Fault::HalfOpen);
        assert!(round_trip(&mut conn, short).await.is_none(), "half-open: no answer");
        proxy.heal();
        assert!(round_trip(&mut conn, short).await.is_none(), "a half-open connection stays dead");
        let mut fresh = TcpStream::connect(proxy.addr).await?;
        assert_eq!(round_trip(&mut fresh, long).await.transpose()?, Some(b"ping".to_vec()));

        // A reset breaks the open connection with an error, not an end.
        proxy.set_fault(Fault::Reset);
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(long, fresh.read(&mut byte)).await?;
        assert_eq!(read.map_err(|e| e.kind()).err(), Some(std::io::ErrorKind::ConnectionReset));
        assert!(TcpStream::connect(proxy.addr).await?.read(&mut byte).await.is_err(), "new connections are reset");
        proxy.heal();
        let mut after = TcpStream::connect(proxy.addr).await?;
        assert_eq!(round_trip(&mut after, long).await.transpose()?, Some(b"ping".to_vec()));

        // Latency and bandwidth slow bytes down but deliver them.
        proxy.set_fault(Fault::Latency(Duration::from_millis(300)));
        assert!(round_trip(&mut after, Duration::from_millis(100)).await.is_none(), "delayed past 100 ms");
        let mut late = [0u8; 4];
        tokio::time::timeout(long, after.read_exact(&mut late)).await??;
        proxy.set_fault(Fault::Bandwidth(1_000));
        assert_eq!(round_trip(&mut after, long).await.transpose()?, Some(b"ping".to_vec()));
        proxy.heal();
        Ok(())
    }
}
