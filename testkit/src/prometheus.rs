//! A real Prometheus server for tests: Debian's `prometheus` binary on
//! `127.0.0.1:<ephemeral>` with its data in a temp dir, scraping the
//! targets a test names, killed when the handle is dropped.
//!
//! When the binary is missing, [`PrometheusServer::start`] fails with the
//! command that installs it; [`PrometheusServer::start_or_skip`] returns
//! `None` instead unless `PRISM_REQUIRE_SERVERS` is set (CI sets it;
//! `scripts/test.sh` installs the package).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::postgres::{REQUIRE_SERVERS_ENV, servers_required};

/// What installs the server (and `promtool`).
pub const INSTALL_COMMAND: &str = "apt-get install -y prometheus";

/// Ports tried before giving up when another process takes the one picked.
const PORT_ATTEMPTS: usize = 5;

/// Where `name` (`prometheus`, `promtool`) is: on `PATH`, else `/usr/bin`.
pub fn find_binary(name: &str) -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .and_then(|path| std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file()));
    on_path.or_else(|| Some(PathBuf::from("/usr/bin").join(name)).filter(|p| p.is_file()))
}

/// Why a test skipped.
pub fn skip_reason() -> String {
    format!(
        "skipped: Prometheus is not installed (install it with `{INSTALL_COMMAND}`; \
         set {REQUIRE_SERVERS_ENV}=1 to fail instead of skipping)"
    )
}

fn not_installed() -> anyhow::Error {
    anyhow::anyhow!("prometheus is not installed: run `{INSTALL_COMMAND}`")
}

/// A running Prometheus server.
pub struct PrometheusServer {
    child: Child,
    /// `127.0.0.1:<port>` of its web server and API.
    pub addr: String,
    /// Its config, data and log; removed with the handle.
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for PrometheusServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrometheusServer").field("addr", &self.addr).finish()
    }
}

/// One sample of an instant query: its labels and value.
pub type Sample = (BTreeMap<String, String>, f64);

impl PrometheusServer {
    /// Starts a server scraping `targets` (`host:port` of `/metrics`
    /// listeners) every `scrape_interval` (e.g. `"1s"`), or fails — with
    /// the install command when the binary is missing.
    pub async fn start(targets: &[String], scrape_interval: &str) -> anyhow::Result<Self> {
        match find_binary("prometheus") {
            Some(bin) => Self::start_with(bin, targets, scrape_interval).await,
            None => Err(not_installed()),
        }
    }

    /// As [`start`](Self::start), but `Ok(None)` when the binary is missing
    /// and [`servers_required`] is false: the caller skips its test and
    /// says so ([`skip_reason`]).
    pub async fn start_or_skip(targets: &[String], scrape_interval: &str) -> anyhow::Result<Option<Self>> {
        match find_binary("prometheus") {
            Some(bin) => Self::start_with(bin, targets, scrape_interval).await.map(Some),
            None if servers_required() => Err(not_installed()),
            None => Ok(None),
        }
    }

    async fn start_with(bin: PathBuf, targets: &[String], scrape_interval: &str) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("prism-prometheus-").tempdir().context("temp dir")?;
        let config = dir.path().join("prometheus.yml");
        let targets = targets.iter().map(|t| format!("'{t}'")).collect::<Vec<_>>().join(", ");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: {scrape_interval}\n  evaluation_interval: {scrape_interval}\n\
                 scrape_configs:\n  - job_name: prism\n    static_configs:\n      - targets: [{targets}]\n"
            ),
        )
        .context("write the scrape config")?;
        let mut last = None;
        for _ in 0..PORT_ATTEMPTS {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let addr = format!("127.0.0.1:{port}");
            let log_path = dir.path().join("prometheus.log");
            let log = std::fs::File::create(&log_path).context("log file")?;
            let mut child = Command::new(&bin)
                .arg(format!("--config.file={}", config.display()))
                .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
                .arg(format!("--web.listen-address={addr}"))
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("spawn {}", bin.display()))?;
            match wait_ready(&mut child, &addr).await {
                Ok(()) => return Ok(Self { child, addr, _dir: dir }),
                Err(e) => {
                    let exited = child.try_wait().ok().flatten().is_some();
                    let _ = child.kill();
                    let _ = child.wait();
                    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                    let tail = log.get(log.len().saturating_sub(2000)..).unwrap_or_default().to_owned();
                    if !exited {
                        bail!("prometheus did not become ready: {e}\n{tail}");
                    }
                    // Most likely the port was taken between probe and bind.
                    last = Some(anyhow::anyhow!("prometheus exited: {tail}"));
                }
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no attempt was made")).context("starting prometheus"))
    }

    /// An instant query's samples.
    pub async fn query(&self, promql: &str) -> anyhow::Result<Vec<Sample>> {
        let path = format!("/api/v1/query?query={}", crate::http::encode_query(promql));
        let (status, body) = crate::http::get(&self.addr, &path).await?;
        anyhow::ensure!(status == 200, "query {promql:?}: {status} {body}");
        let json: serde_json::Value = serde_json::from_str(&body).context("query answer")?;
        let result = json["data"]["result"].as_array().context("no data.result")?;
        result
            .iter()
            .map(|s| {
                let labels = s["metric"]
                    .as_object()
                    .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned())).collect())
                    .unwrap_or_default();
                let value = s["value"][1].as_str().context("no value")?.parse::<f64>().context("value")?;
                Ok((labels, value))
            })
            .collect()
    }

    /// The single value of a query that yields at most one sample (e.g. a
    /// `sum(…)`); `None` when it yields none.
    pub async fn value(&self, promql: &str) -> anyhow::Result<Option<f64>> {
        let samples = self.query(promql).await?;
        anyhow::ensure!(samples.len() <= 1, "{promql:?} yields {} samples", samples.len());
        Ok(samples.first().map(|(_, v)| *v))
    }
}

/// Waits until `/-/ready` answers 200, or the process exits.
async fn wait_ready(child: &mut Child, addr: &str) -> anyhow::Result<()> {
    let mut exited = false;
    crate::eventually(Duration::from_secs(30), || {
        exited = exited || child.try_wait().ok().flatten().is_some();
        let gone = exited;
        let addr = addr.to_owned();
        async move {
            if gone {
                return Ok(());
            }
            let (status, body) = crate::http::get(&addr, "/-/ready").await?;
            anyhow::ensure!(status == 200, "not ready: {status} {body}");
            Ok(())
        }
    })
    .await?;
    anyhow::ensure!(!exited, "prometheus exited");
    Ok(())
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `promtool args…`; fails with its output unless it succeeds.
pub fn promtool(args: &[&str]) -> anyhow::Result<String> {
    let bin = find_binary("promtool").ok_or_else(not_installed)?;
    let out = Command::new(&bin).args(args).output().with_context(|| format!("run {}", bin.display()))?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    anyhow::ensure!(out.status.success(), "promtool {args:?} failed:\n{text}");
    Ok(text)
}
