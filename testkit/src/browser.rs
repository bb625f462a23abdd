//! A real browser for tests: Debian's headless `chromium`, driven over
//! WebDriver through its `chromedriver` (package `chromium-driver`) with
//! `fantoccini`, on the tokio and hyper already in the build. The driver
//! runs on `127.0.0.1:<ephemeral>` with a fresh profile in a temp dir and
//! is killed when the handle is dropped.
//!
//! Chromium is started headless with everything that would reach the
//! network on its own switched off (no sync, no component updates, no
//! background networking, no QUIC): tests only ever load pages of servers
//! they started.
//!
//! When a binary is missing, [`Browser::start`] fails with the command
//! that installs it; [`Browser::start_or_skip`] returns `None` instead
//! unless `PRISM_REQUIRE_SERVERS` is set (CI sets it; `scripts/test.sh`
//! installs the packages).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
pub use fantoccini;
use fantoccini::{Client, ClientBuilder};

use crate::postgres::{REQUIRE_SERVERS_ENV, servers_required};

/// What installs the browser and its driver on Debian.
pub const INSTALL_COMMAND: &str = "apt-get install -y chromium chromium-driver";

/// Ports tried before giving up when another process takes the one picked.
const PORT_ATTEMPTS: usize = 5;

/// Chromium's switches: headless, and nothing that phones home.
const CHROMIUM_ARGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,1000",
];

/// Where `name` is: on `PATH`, else `/usr/bin`.
fn find_binary(name: &str) -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .and_then(|path| std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file()));
    on_path.or_else(|| Some(PathBuf::from("/usr/bin").join(name)).filter(|p| p.is_file()))
}

/// Why a test that needs a browser skipped.
pub fn skip_reason() -> String {
    format!(
        "skipped: chromium and chromedriver are not installed (install them with `{INSTALL_COMMAND}`; \
         set {REQUIRE_SERVERS_ENV}=1 to fail instead of skipping)"
    )
}

/// A running chromedriver and one browser session of it.
pub struct Browser {
    pub client: Client,
    driver: Child,
    /// The browser's profile and the driver's log; removed with the handle.
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for Browser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Browser").finish_non_exhaustive()
    }
}

impl Browser {
    /// Starts chromedriver and a headless chromium session, or fails —
    /// with the install command when a binary is missing.
    pub async fn start() -> anyhow::Result<Self> {
        match (find_binary("chromium"), find_binary("chromedriver")) {
            (Some(chromium), Some(driver)) => Self::start_with(chromium, driver).await,
            _ => bail!("chromium or chromedriver is not installed: run `{INSTALL_COMMAND}`"),
        }
    }

    /// As [`start`](Self::start), but `Ok(None)` when a binary is missing
    /// and `PRISM_REQUIRE_SERVERS` is not set: the caller skips its test
    /// and says so ([`skip_reason`]).
    pub async fn start_or_skip() -> anyhow::Result<Option<Self>> {
        match (find_binary("chromium"), find_binary("chromedriver")) {
            (Some(chromium), Some(driver)) => Self::start_with(chromium, driver).await.map(Some),
            _ if servers_required() => Self::start().await.map(Some),
            _ => Ok(None),
        }
    }

    async fn start_with(chromium: PathBuf, driver: PathBuf) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir().context("temp dir")?;
        let mut last = None;
        for _ in 0..PORT_ATTEMPTS {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .context("pick a port for chromedriver")?
                .port();
            let log = std::fs::File::create(dir.path().join("chromedriver.log")).context("driver log")?;
            let mut child = Command::new(&driver)
                .arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(log.try_clone().context("driver log")?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("start {}", driver.display()))?;
            match connect(port, &chromium, &dir).await {
                Ok(client) => return Ok(Self { client, driver: child, _dir: dir }),
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    last = Some(e);
                }
            }
        }
        let log = std::fs::read_to_string(dir.path().join("chromedriver.log")).unwrap_or_default();
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no attempt made")).context(format!("chromedriver log:\n{log}")))
    }

    /// Writes a PNG of the visible page to `path` (creating its directory).
    pub async fn screenshot(&self, path: &std::path::Path) -> anyhow::Result<()> {
        let png = self.client.screenshot().await.context("screenshot")?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        }
        std::fs::write(path, png).with_context(|| format!("write {}", path.display()))
    }

    /// Ends the browser session (the driver is killed on drop).
    pub async fn close(self) -> anyhow::Result<()> {
        self.client.clone().close().await.context("close the browser session")
    }
}

/// A session of the driver on `port` once it answers.
async fn connect(port: u16, chromium: &std::path::Path, dir: &tempfile::TempDir) -> anyhow::Result<Client> {
    let profile = dir.path().join("profile");
    let mut args: Vec<String> = CHROMIUM_ARGS.iter().map(|a| (*a).to_owned()).collect();
    args.push(format!("--user-data-dir={}", profile.display()));
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({ "binary": chromium.display().to_string(), "args": args }),
    );
    let url = format!("http://127.0.0.1:{port}");
    crate::eventually(Duration::from_secs(30), || {
        let (url, capabilities) = (url.clone(), capabilities.clone());
        async move {
            ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                .capabilities(capabilities)
                .connect(&url)
                .await
                .map_err(|e| anyhow::anyhow!("start a chromium session through chromedriver: {e}"))
        }
    })
    .await
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
