//! A real Pulsar-protocol broker for tests: pulsar-lite (`pip install
//! pulsar-lite`), listening on `127.0.0.1:<ephemeral>` with its data in a
//! temp dir, killed when the handle is dropped. [`PulsarBroker::stop`] and
//! [`PulsarBroker::restart`] keep the port and the data (`--db-path`), for
//! outage and durability tests.
//!
//! The binary is looked up as `$PULSAR_LITE_BINARY`, then `pulsar-lite`
//! on `PATH`, then in the `pulsar_lite` Python package (`bin/pulsar-lite`
//! beside its `__init__.py`, where pip puts it). When it is missing,
//! [`PulsarBroker::start`] fails with the install command and
//! [`PulsarBroker::start_or_skip`] returns `None` unless
//! `PRISM_REQUIRE_SERVERS` is set, exactly like the PostgreSQL fixture.
//!
//! pulsar-lite serves Prometheus metrics on a fixed port (8080) unless
//! told not to: the fixture's config file turns them off, so brokers of
//! parallel tests do not fight over it.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::postgres::{REQUIRE_SERVERS_ENV, servers_required};

/// What installs the broker.
pub const INSTALL_COMMAND: &str = "pip install pulsar-lite";

/// How long a start may take before the fixture gives up.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Ports tried before giving up when another process takes the one picked.
const PORT_ATTEMPTS: usize = 5;

/// Lines of the broker log quoted in an error.
const LOG_TAIL_LINES: usize = 30;

/// Where the `pulsar-lite` binary is, if anywhere.
pub fn find_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PULSAR_LITE_BINARY").map(PathBuf::from)
        && path.is_file()
    {
        return Some(path);
    }
    if let Some(path) = std::env::var_os("PATH")
        && let Some(found) = std::env::split_paths(&path).map(|d| d.join("pulsar-lite")).find(|p| p.is_file())
    {
        return Some(found);
    }
    let output = Command::new("python3")
        .args(["-c", "import pulsar_lite, os; print(os.path.dirname(pulsar_lite.__file__))"])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let dir = String::from_utf8(output.stdout).ok()?;
    let binary = Path::new(dir.trim()).join("bin").join("pulsar-lite");
    (output.status.success() && binary.is_file()).then_some(binary)
}

/// A pulsar-lite broker on `127.0.0.1:<port>` with its data in a temp dir.
#[derive(Debug)]
pub struct PulsarBroker {
    binary: PathBuf,
    port: u16,
    /// Holds `data/`, `broker.toml` and `broker.log`; removed on
    /// drop.
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl PulsarBroker {
    /// Starts a fresh broker, or fails — with the install command when the
    /// binary is missing.
    pub fn start() -> anyhow::Result<Self> {
        match find_binary() {
            Some(binary) => Self::start_with(binary),
            None => Err(not_installed()),
        }
    }

    /// As [`start`](Self::start), but `Ok(None)` when the binary is missing
    /// and [`servers_required`] is false: the caller skips its test and
    /// says so ([`skip_reason`]).
    pub fn start_or_skip() -> anyhow::Result<Option<Self>> {
        match find_binary() {
            Some(binary) => Self::start_with(binary).map(Some),
            None if servers_required() => Err(not_installed()),
            None => Ok(None),
        }
    }

    fn start_with(binary: PathBuf) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("prism-pulsar-").tempdir().context("temp dir")?;
        std::fs::write(dir.path().join("broker.toml"), "[metrics]\nenabled = false\n").context("write broker.toml")?;
        std::fs::create_dir(dir.path().join("data")).context("create data/")?;
        let mut broker = Self { binary, port: 0, dir, child: None };
        let mut last = None;
        for _ in 0..PORT_ATTEMPTS {
            broker.port = free_port()?;
            match broker.spawn() {
                Ok(()) => return Ok(broker),
                // Another process may have taken the port in between.
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no port attempt was made")))
    }

    /// Runs the broker and waits (bounded) until it accepts connections.
    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("broker.log"))
            .context("open broker.log")?;
        let child = Command::new(&self.binary)
            .arg("--config")
            .arg(self.dir.path().join("broker.toml"))
            .arg("--addr")
            .arg(self.addr().to_string())
            // pulsar-lite makes `<db-path>.rocksdb` (and metadata beside it).
            .arg("--db-path")
            .arg(self.db_path().join("broker"))
            .arg("--log-level")
            .arg(std::env::var("PRISM_PULSAR_LOG").unwrap_or_else(|_| "warn".into()))
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("clone the log handle")?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("run {}", self.binary.display()))?;
        watch(child.id(), self.dir.path());
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if TcpStream::connect_timeout(&self.addr(), Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait().context("wait for the broker")?
            {
                self.child = None;
                bail!("pulsar-lite exited with {status}; log tail:\n{}", self.log_tail());
            }
            if Instant::now() > deadline {
                self.kill();
                bail!(
                    "pulsar-lite did not accept connections within {START_TIMEOUT:?}; log tail:\n{}",
                    self.log_tail()
                );
            }
            // Bounded polling of a process we cannot be notified about.
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("broker.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `pulsar://127.0.0.1:<port>`.
    pub fn service_url(&self) -> String {
        format!("pulsar://127.0.0.1:{}", self.port)
    }

    /// The directory where the broker keeps its data.
    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the broker (an outage, not a clean shutdown) and waits until
    /// it is gone. The data stays for [`restart`](Self::restart).
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Starts the broker again on the same port and data, and waits until
    /// it accepts connections.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn().with_context(|| format!("restart on port {}", self.port))
    }
}

impl Drop for PulsarBroker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A watchdog that kills broker `pid` once this process is gone, for
/// brokers that are never dropped (statics) or a killed test process.
fn watch(pid: u32, dir: &Path) {
    let script = r#"while kill -0 "$1" 2>/dev/null && kill -0 "$2" 2>/dev/null; do sleep 1; done
kill -9 "$2" 2>/dev/null; [ -d "$3" ] && ! kill -0 "$1" 2>/dev/null && rm -rf "$3"; true"#;
    let spawned = Command::new("sh")
        .args(["-c", script, "prism-pulsar-watchdog"])
        .arg(std::process::id().to_string())
        .arg(pid.to_string())
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    if let Err(error) = spawned {
        eprintln!("prism-testkit: no watchdog for the pulsar broker: {error}");
    }
}

fn not_installed() -> anyhow::Error {
    anyhow::anyhow!(
        "pulsar-lite is not installed (no $PULSAR_LITE_BINARY, no pulsar-lite on PATH, no python package \
         pulsar_lite); install it with `{INSTALL_COMMAND}`"
    )
}

/// A line saying why a test that needs a Pulsar broker was skipped.
pub fn skip_reason() -> String {
    format!(
        "skipped: pulsar-lite is not installed (install it with `{INSTALL_COMMAND}`; \
         set {REQUIRE_SERVERS_ENV}=1 to fail instead of skipping)"
    )
}

/// A port that was free a moment ago: bind `127.0.0.1:0`, read, release.
fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
    Ok(listener.local_addr().context("local addr")?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One broker through its whole life: start, accept connections,
    /// stop, restart on the same port and data, and leave nothing behind.
    #[test]
    fn starts_stops_restarts_and_cleans_up() -> anyhow::Result<()> {
        let Some(mut broker) = PulsarBroker::start_or_skip()? else {
            println!("{}", skip_reason());
            return Ok(());
        };
        let port = broker.port();
        assert_eq!(broker.service_url(), format!("pulsar://127.0.0.1:{port}"));
        TcpStream::connect(broker.addr()).context("connect while running")?;
        broker.stop();
        assert!(!broker.is_running());
        assert!(TcpStream::connect(broker.addr()).is_err(), "the port is closed after stop");
        broker.restart()?;
        assert_eq!(broker.port(), port, "restart keeps the port");
        TcpStream::connect(broker.addr()).context("connect after restart")?;
        assert!(std::fs::read_dir(broker.db_path())?.next().is_some(), "the data is kept");
        let root = broker.dir.path().to_path_buf();
        drop(broker);
        assert!(!root.exists(), "the temp dir is removed on drop");
        assert!(TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).is_err(), "nothing left listening");
        Ok(())
    }

    #[test]
    fn a_missing_binary_names_the_install_command() {
        assert!(not_installed().to_string().contains(INSTALL_COMMAND));
        assert!(skip_reason().contains(INSTALL_COMMAND) && skip_reason().contains(REQUIRE_SERVERS_ENV));
    }
}
