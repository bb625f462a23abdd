//! A real Kafka-protocol broker for tests: [tansu](https://tansu.io) with
//! its in-memory storage engine, listening on `127.0.0.1:<ephemeral>`,
//! killed when the handle is dropped.
//!
//! The binary is looked up on `PATH`, then in `$CARGO_HOME/bin` (or
//! `~/.cargo/bin`), where `cargo install` puts it. When it is missing,
//! [`KafkaBroker::start`] fails with the command that installs it;
//! [`KafkaBroker::start_or_skip`] returns `None` instead unless
//! `PRISM_REQUIRE_SERVERS` is set (CI sets it, so nothing is skipped there).
//!
//! [`KafkaBroker::stop`] and [`KafkaBroker::restart`] take the broker away
//! and bring it back on the same port, for outage tests.
//! [`KafkaBroker::start_or_skip_advertising`] starts one that tells clients
//! to reach it at another address (a [`proxy`](crate::proxy) in front of
//! it), so they never go around the proxy. The storage is in
//! memory, so a restarted broker is **empty**: no topics, no messages.
//!
//! The calls block (they spawn the process and poll its port), so the
//! fixture works from any runtime or none, e.g. in a `OnceLock` shared by
//! every test of a binary. A shared broker lives in a static and is never
//! dropped, so each broker process also has a watchdog that kills it once
//! the test process is gone.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::postgres::{REQUIRE_SERVERS_ENV, servers_required};

/// What installs the broker (8–15 minutes on a fresh machine).
pub const INSTALL_COMMAND: &str = "cargo install tansu --locked --features dynostore";

/// Ports tried before giving up when another process takes the one picked.
const PORT_ATTEMPTS: usize = 5;

/// How long the broker may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Bytes of the broker log quoted in an error.
const LOG_TAIL_BYTES: usize = 4000;

/// Where `tansu` is: on `PATH`, else in cargo's bin directory.
pub fn find_binary() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .and_then(|path| std::env::split_paths(&path).map(|d| d.join("tansu")).find(|p| p.is_file()));
    on_path.or_else(|| {
        let cargo_home = std::env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
        Some(cargo_home.join("bin").join("tansu")).filter(|p| p.is_file())
    })
}

/// A running (or stopped) tansu broker.
pub struct KafkaBroker {
    bin: PathBuf,
    port: u16,
    /// Where clients are told to reach it, when not at its own port.
    advertised: Option<SocketAddr>,
    child: Option<Child>,
    /// Holds the broker's log; removed on drop.
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for KafkaBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaBroker").field("port", &self.port).field("running", &self.is_running()).finish()
    }
}

impl KafkaBroker {
    /// Starts a fresh broker, or fails — with the install command when the
    /// binary is missing.
    pub fn start() -> anyhow::Result<Self> {
        match find_binary() {
            Some(bin) => Self::start_with(bin, None),
            None => Err(not_installed()),
        }
    }

    /// As [`start`](Self::start), but `Ok(None)` when the binary is
    /// missing and [`servers_required`] is false: the caller skips its test
    /// and says so ([`skip_reason`]).
    pub fn start_or_skip() -> anyhow::Result<Option<Self>> {
        Self::start_or_skip_advertising(None)
    }

    /// As [`start_or_skip`](Self::start_or_skip), with the broker telling
    /// clients (its advertised listener) to reach it at `advertised`, e.g.
    /// a proxy in front of it, when given.
    pub fn start_or_skip_advertising(advertised: Option<SocketAddr>) -> anyhow::Result<Option<Self>> {
        match find_binary() {
            Some(bin) => Self::start_with(bin, advertised).map(Some),
            None if servers_required() => Err(not_installed()),
            None => Ok(None),
        }
    }

    fn start_with(bin: PathBuf, advertised: Option<SocketAddr>) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("prism-kafka-").tempdir().context("temp dir")?;
        let mut broker = Self { bin, port: 0, advertised, child: None, dir };
        let mut last = None;
        for _ in 0..PORT_ATTEMPTS {
            broker.port = free_port()?;
            match broker.spawn() {
                Ok(()) => return Ok(broker),
                // Another process took the port between our probe and the
                // broker's bind (the broker exited): try another one.
                Err(e) if broker.child.is_none() => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        let e = last.unwrap_or_else(|| anyhow::anyhow!("no port attempt was made"));
        Err(e.context(format!("no free port after {PORT_ATTEMPTS} attempts")))
    }

    /// Starts the process on `self.port` and waits until it accepts
    /// connections. On failure `child` is `None` if the process exited.
    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .context("open the broker log")?;
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let advertised = self.advertised.map_or_else(|| url.clone(), |addr| format!("tcp://{addr}"));
        let child = Command::new(&self.bin)
            .arg("broker")
            .args(["--listener-url", &url, "--advertised-listener-url", &advertised])
            .args(["--storage-engine", "memory://tansu/"])
            .env_remove("STORAGE_ENGINE")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("log")?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawn {}", self.bin.display()))?;
        watch(child.id());
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        let mut pause = Duration::from_millis(5);
        loop {
            if TcpStream::connect_timeout(&self.addr(), Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                bail!("tansu exited ({status}) before listening on {}; log:\n{}", self.addr(), self.log_tail());
            }
            if Instant::now() >= deadline {
                self.kill();
                bail!("tansu did not listen on {} within {START_TIMEOUT:?}; log:\n{}", self.addr(), self.log_tail());
            }
            // Bounded polling of a process we started: the port is the
            // only sign of readiness tansu gives.
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("tansu.log")
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let cut = text.len().saturating_sub(LOG_TAIL_BYTES);
        text.get(cut..).unwrap_or(&text).to_owned()
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `127.0.0.1:<port>`, for `bootstrap_servers`.
    pub fn bootstrap(&self) -> String {
        self.addr().to_string()
    }

    /// Whether the broker was started and not stopped since.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the broker and waits until it is gone. Everything it stored
    /// is lost (in-memory storage).
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Starts an empty broker again on the same port (after
    /// [`stop`](Self::stop)) and waits until it accepts connections.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn().with_context(|| format!("restart on port {}", self.port))
    }
}

impl Drop for KafkaBroker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Kills `pid` once this (the test) process is gone: a broker in a static
/// is never dropped.
fn watch(pid: u32) {
    let script = r#"while kill -0 "$1" 2>/dev/null && kill -0 "$2" 2>/dev/null; do sleep 1; done
kill -9 "$2" 2>/dev/null"#;
    let spawned = Command::new("sh")
        .args(["-c", script, "prism-kafka-watchdog"])
        .arg(std::process::id().to_string())
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    // Without it a leaked broker is the only cost: not worth failing for.
    if let Err(error) = spawned {
        eprintln!("prism-testkit: no watchdog for the kafka broker: {error}");
    }
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
    Ok(listener.local_addr().context("local addr")?.port())
}

fn not_installed() -> anyhow::Error {
    anyhow::anyhow!("tansu (a Kafka-protocol broker) is not installed; install it with `{INSTALL_COMMAND}`")
}

/// A line saying why a test that needs a Kafka broker was skipped.
pub fn skip_reason() -> String {
    format!(
        "skipped: tansu is not installed (install it with `{INSTALL_COMMAND}`; \
         set {REQUIRE_SERVERS_ENV}=1 to fail instead of skipping)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_binary_fails_with_the_install_command_or_skips() {
        assert!(not_installed().to_string().contains(INSTALL_COMMAND));
        assert!(skip_reason().contains(INSTALL_COMMAND) && skip_reason().contains(REQUIRE_SERVERS_ENV));
    }

    #[test]
    fn starts_stops_and_restarts_on_the_same_port() -> anyhow::Result<()> {
        let Some(mut broker) = KafkaBroker::start_or_skip()? else {
            println!("{}", skip_reason());
            return Ok(());
        };
        let port = broker.port();
        assert!(TcpStream::connect(broker.addr()).is_ok());
        broker.stop();
        assert!(!broker.is_running());
        assert!(TcpStream::connect(broker.addr()).is_err(), "a stopped broker refuses connections");
        broker.restart()?;
        assert_eq!(broker.port(), port);
        assert!(TcpStream::connect(broker.addr()).is_ok());
        Ok(())
    }
}
