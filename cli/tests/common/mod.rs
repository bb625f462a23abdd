//! What the multi-process tests share: a `prism` server as a child process
//! (killed with SIGKILL, never asked to stop), the deployment's secret in a
//! file, and a gateway process on a given data directory.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use anyhow::{Context, bail};
use prism_testkit::{TEST_SECRET, token};

const PRISM: &str = env!("CARGO_BIN_EXE_prism");

/// A `prism` server process, killed when dropped.
pub struct Process {
    child: Child,
    pub addr: String,
}

impl Process {
    /// Starts `prism args…`, logging at `log` (a `RUST_LOG` filter) to
    /// the test's stderr, and waits for its "serving on ADDR" line.
    pub fn start(args: &[&str], data_dir: &Path, log: &str) -> anyhow::Result<Self> {
        let mut child = Command::new(PRISM)
            .args(args)
            .env("PRISM_DATA_DIR", data_dir)
            .env("RUST_LOG", log)
            .env_remove("PRISM_CONFIG")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawn prism")?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let Some(addr) = line.trim().rsplit_once(" serving on ").map(|(_, a)| a.to_owned()) else {
            let _ = child.kill();
            let _ = child.wait();
            bail!("prism {args:?} did not say where it serves: {line:?}");
        };
        Ok(Self { child, addr })
    }

    /// SIGKILL (what `Child::kill` sends on Unix): no shutdown path runs,
    /// nothing is flushed or deregistered. Returns once the process is
    /// reaped, so its files and ports are free.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The deployment's HS256 secret, in a file as an operator keeps it.
pub fn secret_file(dir: &Path) -> anyhow::Result<String> {
    let path = dir.join("hs256-secret");
    std::fs::write(&path, format!("{TEST_SECRET}\n"))?;
    Ok(path.to_str().context("utf-8 path")?.to_owned())
}

/// A gateway of `shard` on the data directory `data` (its embedded store
/// and its store id), calling the control plane with a shard token read
/// from a file (`prism token create … --role shard > file`), logging at
/// `log`.
pub fn gateway_on(cp: &str, shard: &str, dir: &Path, data: &Path, log: &str) -> anyhow::Result<Process> {
    let token_file = dir.join(format!("{shard}.token"));
    std::fs::write(&token_file, format!("{}\n", token(shard, None, &["shard"])))?;
    Process::start(
        &[
            "gateway",
            "--shard-id",
            shard,
            "--control-plane",
            cp,
            "--listen",
            "127.0.0.1:0",
            "--auth-secret-file",
            &secret_file(dir)?,
            "--control-plane-token-file",
            token_file.to_str().context("utf-8 path")?,
        ],
        data,
        log,
    )
}

/// A control plane process listening on `listen`, its store in
/// `dir/control-plane`, with a short lease (1.5 s), so a killed gateway
/// leaves the registry quickly; logging at `log`.
pub fn control_plane(dir: &Path, listen: &str, log: &str) -> anyhow::Result<Process> {
    let config = dir.join("prism.toml");
    std::fs::write(&config, "[control_plane]\nshard_lease_ttl_ms = 1500\n")?;
    Process::start(
        &[
            "control-plane",
            "--auth-secret-file",
            &secret_file(dir)?,
            "--listen",
            listen,
            "--config",
            config.to_str().context("utf-8 path")?,
        ],
        &dir.join("control-plane"),
        log,
    )
}
