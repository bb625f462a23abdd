//! A real PostgreSQL server for tests: `initdb` + `pg_ctl` in a temp dir,
//! listening on `127.0.0.1:<ephemeral>`, trust authentication, stopped
//! when the handle is dropped.
//!
//! PostgreSQL refuses to run as root, and these machines run everything as
//! root: then the server runs as `nobody` (through `runuser`, else `su`),
//! owning its temp dir. The binaries are looked up on `PATH`, then under
//! `/usr/lib/postgresql/*/bin` (Debian's layout). When they are missing,
//! [`PostgresServer::start`] fails with the command that installs them;
//! [`PostgresServer::start_or_skip`] returns `None` instead unless
//! `PRISM_REQUIRE_SERVERS` is set (CI sets it, so nothing is skipped there).
//!
//! [`PostgresServer::start_tls`] starts one that also offers TLS, with a
//! certificate for `localhost` and `127.0.0.1` signed by a CA made for
//! that server alone ([`PostgresServer::ca_pem_path`]); plaintext stays
//! allowed, so a test can connect either way and see which the server saw.
//!
//! The calls block (they run `pg_ctl` and wait for it): that keeps the
//! fixture usable from any runtime or none, e.g. in a `OnceLock` shared by
//! every test of a binary. A shared server lives in a static and is never
//! dropped, so each server also has a watchdog process that stops it and
//! removes its directory once the test process is gone.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

/// What installs the binaries on Debian and Ubuntu.
pub const INSTALL_COMMAND: &str = "apt-get install -y postgresql";

/// Set (to anything but empty or `0`) where a missing server must fail a
/// test rather than skip it.
pub const REQUIRE_SERVERS_ENV: &str = "PRISM_REQUIRE_SERVERS";

/// The superuser `initdb` creates, which the DSN logs in as.
pub const SUPERUSER: &str = "postgres";

/// The unprivileged account the server runs as when the tests run as root.
const UNPRIVILEGED_USER: &str = "nobody";

/// Ports tried before giving up when another process takes the one picked.
const PORT_ATTEMPTS: usize = 5;

/// How long `pg_ctl` may wait for the server to start or stop, in seconds.
const PG_CTL_WAIT_SECONDS: &str = "60";

/// Lines of the server log quoted in an error.
const LOG_TAIL_LINES: usize = 30;

/// Whether a missing server binary must fail the test (`PRISM_REQUIRE_SERVERS`).
pub fn servers_required() -> bool {
    std::env::var_os(REQUIRE_SERVERS_ENV).is_some_and(|v| !v.is_empty() && v != "0")
}

/// Where `initdb` and `pg_ctl` are: the first directory on `PATH` that has
/// both, else the newest `/usr/lib/postgresql/<version>/bin`.
pub fn find_binaries() -> Option<PathBuf> {
    let has_both = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(path) = std::env::var_os("PATH")
        && let Some(dir) = std::env::split_paths(&path).find(|d| has_both(d))
    {
        return Some(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            has_both(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// How commands run: as this process's user, or as [`UNPRIVILEGED_USER`].
#[derive(Debug, Clone)]
enum RunAs {
    Me,
    Runuser(PathBuf),
    Su(PathBuf),
}

impl RunAs {
    fn detect() -> anyhow::Result<Self> {
        if !running_as_root() {
            return Ok(Self::Me);
        }
        if let Some(runuser) = find_on_path("runuser") {
            return Ok(Self::Runuser(runuser));
        }
        if let Some(su) = find_on_path("su") {
            return Ok(Self::Su(su));
        }
        bail!("running as root, and neither runuser nor su is there to start PostgreSQL as {UNPRIVILEGED_USER}")
    }

    /// `program args…` as the server's user, in `dir`.
    fn command(&self, program: &Path, args: &[String], dir: &Path) -> Command {
        let mut command = match self {
            Self::Me => {
                let mut c = Command::new(program);
                c.args(args);
                c
            }
            Self::Runuser(runuser) => {
                let mut c = Command::new(runuser);
                c.args(["-u", UNPRIVILEGED_USER, "--"]).arg(program).args(args);
                c
            }
            Self::Su(su) => {
                let line = std::iter::once(program.display().to_string())
                    .chain(args.iter().cloned())
                    .map(|word| shell_quote(&word))
                    .collect::<Vec<_>>()
                    .join(" ");
                let mut c = Command::new(su);
                c.args(["-s", "/bin/sh", UNPRIVILEGED_USER, "-c", &line]);
                c
            }
        };
        // The server's user may not be allowed into the caller's directory.
        command.current_dir(dir).stdin(Stdio::null());
        command
    }
}

fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    // `/proc/self` belongs to the effective user: no libc call needed.
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}

/// `'word'`, safe to paste into a `sh -c` line.
fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// `'value'` as a postgresql.conf string.
fn conf_quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', r"\\").replace('\'', "''"))
}

/// A PostgreSQL server on `127.0.0.1:<port>` in a temp dir.
#[derive(Debug)]
pub struct PostgresServer {
    port: u16,
    bin: PathBuf,
    run_as: RunAs,
    /// Holds `data/` (the cluster), `socket/` and `server.log` (and the
    /// TLS files, `tls/`); removed on drop.
    dir: Option<tempfile::TempDir>,
    root: PathBuf,
    running: bool,
    /// Whether the server offers TLS.
    tls: bool,
}

impl PostgresServer {
    /// Starts a fresh server, or fails — with the install command when the
    /// binaries are missing.
    pub fn start() -> anyhow::Result<Self> {
        match find_binaries() {
            Some(bin) => Self::start_with(bin, free_port, false),
            None => Err(not_installed()),
        }
    }

    /// As [`start`](Self::start), but `Ok(None)` when the binaries are
    /// missing and [`servers_required`] is false: the caller skips its test
    /// and says so ([`skip_reason`]).
    pub fn start_or_skip() -> anyhow::Result<Option<Self>> {
        match find_binaries() {
            Some(bin) => Self::start_with(bin, free_port, false).map(Some),
            None => when_missing(servers_required()),
        }
    }

    /// As [`start`](Self::start), and the server offers TLS (`ssl = on`)
    /// with a certificate for `localhost` and `127.0.0.1`, signed by the CA
    /// at [`ca_pem_path`](Self::ca_pem_path).
    pub fn start_tls() -> anyhow::Result<Self> {
        match find_binaries() {
            Some(bin) => Self::start_with(bin, free_port, true),
            None => Err(not_installed()),
        }
    }

    /// As [`start_tls`](Self::start_tls), but `Ok(None)` when the binaries
    /// are missing and [`servers_required`] is false.
    pub fn start_tls_or_skip() -> anyhow::Result<Option<Self>> {
        match find_binaries() {
            Some(bin) => Self::start_with(bin, free_port, true).map(Some),
            None => when_missing(servers_required()),
        }
    }

    /// Starts on the first port `next_port` gives that the server can bind.
    fn start_with(bin: PathBuf, mut next_port: impl FnMut() -> anyhow::Result<u16>, tls: bool) -> anyhow::Result<Self> {
        let run_as = RunAs::detect()?;
        let dir = tempfile::Builder::new().prefix("prism-postgres-").tempdir().context("temp dir")?;
        let root = dir.path().to_path_buf();
        let mut server = Self { port: 0, bin, run_as, dir: Some(dir), root, running: false, tls };
        server.init()?;
        server.watch();
        let mut last = None;
        for _ in 0..PORT_ATTEMPTS {
            server.port = next_port()?;
            match server.pg_ctl_start() {
                Ok(()) => {
                    server.running = true;
                    server.check_accepts().map_err(|e| server.with_log(e))?;
                    return Ok(server);
                }
                // Another process took the port between our probe and the
                // server's bind: try another one.
                Err(e) if server.log_tail().contains("could not bind") => last = Some(e),
                Err(e) => return Err(server.with_log(e)),
            }
        }
        let e = last.unwrap_or_else(|| anyhow::anyhow!("no port attempt was made"));
        Err(server.with_log(e.context(format!("no free port after {PORT_ATTEMPTS} attempts"))))
    }

    /// `initdb` into `data/` and the test settings into its postgresql.conf.
    fn init(&mut self) -> anyhow::Result<()> {
        for sub in ["data", "socket"] {
            std::fs::create_dir(self.root.join(sub)).with_context(|| format!("create {sub}/"))?;
        }
        if !matches!(self.run_as, RunAs::Me) {
            let (uid, gid) = unprivileged_ids()?;
            for path in [self.root.clone(), self.root.join("data"), self.root.join("socket")] {
                std::os::unix::fs::chown(&path, Some(uid), Some(gid))
                    .with_context(|| format!("chown {} to {UNPRIVILEGED_USER}", path.display()))?;
            }
        }
        let args: Vec<String> = vec![
            "-D".into(),
            self.data_dir().display().to_string(),
            "-U".into(),
            SUPERUSER.into(),
            "-A".into(),
            "trust".into(),
            "-E".into(),
            "UTF8".into(),
            "--no-locale".into(),
            // Test clusters are thrown away: no need to wait for the disk.
            "--no-sync".into(),
        ];
        self.run("initdb", &args)?;
        let socket = self.root.join("socket").display().to_string();
        let settings = [
            "listen_addresses = '127.0.0.1'".to_owned(),
            format!("unix_socket_directories = {}", conf_quote(&socket)),
            // Durability is pointless for a throwaway cluster; speed is not.
            "fsync = off".to_owned(),
            "synchronous_commit = off".to_owned(),
            "full_page_writes = off".to_owned(),
            "max_connections = 200".to_owned(),
            "shared_buffers = 32MB".to_owned(),
        ];
        let settings = if self.tls {
            let (cert, key) = self.write_tls_files()?;
            let tls = [
                "ssl = on".to_owned(),
                format!("ssl_cert_file = {}", conf_quote(&cert.display().to_string())),
                format!("ssl_key_file = {}", conf_quote(&key.display().to_string())),
            ];
            [settings.as_slice(), &tls].concat()
        } else {
            settings.to_vec()
        };
        let conf = self.data_dir().join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).context("read postgresql.conf")?;
        text.push_str("\n# prism-testkit\n");
        for line in settings {
            text.push_str(&line);
            text.push('\n');
        }
        std::fs::write(&conf, text).context("write postgresql.conf")?;
        Ok(())
    }

    /// A watchdog that stops the server (SIGQUIT: immediate shutdown) and
    /// removes its directory once this process is gone, for servers that
    /// are never dropped (statics) or a test process that was killed.
    fn watch(&self) {
        let script = r#"while kill -0 "$1" 2>/dev/null && [ -d "$2" ]; do sleep 1; done
if [ -d "$2" ]; then
  pid=$(head -n 1 "$2/data/postmaster.pid" 2>/dev/null) && [ -n "$pid" ] && kill -QUIT "$pid" 2>/dev/null
  rm -rf "$2"
fi"#;
        let spawned = Command::new("sh")
            .args(["-c", script, "prism-postgres-watchdog"])
            .arg(std::process::id().to_string())
            .arg(&self.root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        // Without it a leaked server is the only cost: not worth failing for.
        if let Err(error) = spawned {
            eprintln!("prism-testkit: no watchdog for the postgres server: {error}");
        }
    }

    /// A fresh CA, and a server certificate for `localhost` and
    /// `127.0.0.1` signed by it, into `tls/`: the CA's certificate for
    /// clients, the server's certificate and key for the server. Returns
    /// the paths of the server's certificate and key.
    fn write_tls_files(&self) -> anyhow::Result<(PathBuf, PathBuf)> {
        let dir = self.root.join("tls");
        std::fs::create_dir(&dir).context("create tls/")?;
        let ca = crate::tls::Ca::new("prism-testkit CA")?;
        let (cert, server_key) = ca.leaf("prism-testkit postgres", false)?;
        let (cert_path, key_path) = (dir.join("server.crt"), dir.join("server.key"));
        std::fs::write(self.ca_pem_path_in(&dir), ca.pem()).context("write ca.crt")?;
        std::fs::write(&cert_path, cert).context("write server.crt")?;
        // PostgreSQL refuses a key that its group or others may read.
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&key_path)
                .context("create server.key")?;
            file.write_all(server_key.as_bytes()).context("write server.key")?;
        }
        if !matches!(self.run_as, RunAs::Me) {
            let (uid, gid) = unprivileged_ids()?;
            for path in [&dir, &cert_path, &key_path] {
                std::os::unix::fs::chown(path, Some(uid), Some(gid))
                    .with_context(|| format!("chown {} to {UNPRIVILEGED_USER}", path.display()))?;
            }
        }
        Ok((cert_path, key_path))
    }

    fn ca_pem_path_in(&self, tls_dir: &Path) -> PathBuf {
        tls_dir.join("ca.crt")
    }

    /// The PEM certificate of the CA that signed this server's certificate,
    /// for a client's trusted roots; `None` when the server has no TLS
    /// ([`start`](Self::start)).
    pub fn ca_pem_path(&self) -> Option<PathBuf> {
        self.tls.then(|| self.ca_pem_path_in(&self.root.join("tls")))
    }

    fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    fn log_file(&self) -> PathBuf {
        self.root.join("server.log")
    }

    fn run(&self, program: &str, args: &[String]) -> anyhow::Result<()> {
        self.run_program(&self.bin.join(program), args)
    }

    fn run_program(&self, path: &Path, args: &[String]) -> anyhow::Result<()> {
        let program = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let output = self.run_as.command(path, args, &self.root).output().with_context(|| format!("run {program}"))?;
        if !output.status.success() {
            bail!(
                "{program} failed ({}): {}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout).trim(),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(())
    }

    fn pg_ctl_start(&self) -> anyhow::Result<()> {
        let args: Vec<String> = vec![
            "-D".into(),
            self.data_dir().display().to_string(),
            "-l".into(),
            self.log_file().display().to_string(),
            "-o".into(),
            format!("-p {}", self.port),
            "-w".into(),
            "-t".into(),
            PG_CTL_WAIT_SECONDS.into(),
            "start".into(),
        ];
        self.run("pg_ctl", &args)
    }

    fn pg_ctl_stop(&self, mode: &str) -> anyhow::Result<()> {
        let args: Vec<String> = vec![
            "-D".into(),
            self.data_dir().display().to_string(),
            "-m".into(),
            mode.into(),
            "-w".into(),
            "-t".into(),
            PG_CTL_WAIT_SECONDS.into(),
            "stop".into(),
        ];
        self.run("pg_ctl", &args)
    }

    /// `pg_ctl -w` has seen the server ready; one TCP connect confirms
    /// that it listens where the DSN points.
    fn check_accepts(&self) -> anyhow::Result<()> {
        TcpStream::connect_timeout(&self.addr(), Duration::from_secs(5))
            .map(drop)
            .with_context(|| format!("the server does not accept connections on {}", self.addr()))
    }

    /// The last lines of the server log.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_file()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }

    fn with_log(&self, error: anyhow::Error) -> anyhow::Error {
        error.context(format!("postgres server in {}; log tail:\n{}", self.root.display(), self.log_tail()))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres` (trust auth: no
    /// password).
    pub fn dsn(&self) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/postgres", self.port)
    }

    /// Whether the server was started and not stopped since.
    pub fn is_running(&self) -> bool {
        self.running
    }

    /// Stops the server (fast shutdown: open connections are closed) and
    /// waits until it is down. The data stays for [`restart`](Self::restart).
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if self.running {
            self.pg_ctl_stop("fast").map_err(|e| self.with_log(e))?;
            self.running = false;
        }
        Ok(())
    }

    /// Creates a role that logs in with `password` only (SCRAM over TCP;
    /// every other role keeps trust authentication) and owns a database of
    /// its name, and returns the DSN of that database — without the
    /// password, which the caller hands over some other way (a secret
    /// reference). `role` is `[a-z_][a-z0-9_]*`.
    pub fn add_password_role(&self, role: &str, password: &str) -> anyhow::Result<String> {
        let simple = role.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && role.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        anyhow::ensure!(simple, "role {role:?} is not [a-z_][a-z0-9_]*");
        let literal = format!("'{}'", password.replace('\'', "''"));
        let socket = self.root.join("socket").display().to_string();
        let mut args: Vec<String> = vec![
            "-X".into(),
            "-q".into(),
            "-v".into(),
            "ON_ERROR_STOP=1".into(),
            "-h".into(),
            socket,
            "-p".into(),
            self.port.to_string(),
            "-U".into(),
            SUPERUSER.into(),
            "-d".into(),
            "postgres".into(),
        ];
        for statement in
            [format!("CREATE ROLE {role} LOGIN PASSWORD {literal}"), format!("CREATE DATABASE {role} OWNER {role}")]
        {
            args.push("-c".into());
            args.push(statement);
        }
        self.run_program(&self.psql()?, &args).context("create the role")?;
        // First match wins: this role's TCP logins need the password.
        let hba = self.data_dir().join("pg_hba.conf");
        let text = std::fs::read_to_string(&hba).context("read pg_hba.conf")?;
        std::fs::write(&hba, format!("host all {role} 127.0.0.1/32 scram-sha-256\n{text}"))
            .context("write pg_hba.conf")?;
        let reload: Vec<String> = vec!["-D".into(), self.data_dir().display().to_string(), "reload".into()];
        self.run("pg_ctl", &reload)?;
        Ok(format!("postgres://{role}@127.0.0.1:{}/{role}", self.port))
    }

    /// Runs `sql` in `database` as the superuser and returns what it
    /// selected: rows a line each, columns separated by `|` (psql's
    /// unaligned, tuples-only output).
    pub fn query(&self, database: &str, sql: &str) -> anyhow::Result<String> {
        let args: Vec<String> = vec![
            "-X".into(),
            "-q".into(),
            "-A".into(),
            "-t".into(),
            "-v".into(),
            "ON_ERROR_STOP=1".into(),
            "-h".into(),
            self.root.join("socket").display().to_string(),
            "-p".into(),
            self.port.to_string(),
            "-U".into(),
            SUPERUSER.into(),
            "-d".into(),
            database.into(),
            "-c".into(),
            sql.into(),
        ];
        let output = self.run_as.command(&self.psql()?, &args, &self.root).output().context("run psql")?;
        if !output.status.success() {
            bail!("psql failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    /// `psql`: beside `initdb` (following its link), else on `PATH`.
    fn psql(&self) -> anyhow::Result<PathBuf> {
        let beside = |dir: &Path| Some(dir.join("psql")).filter(|p| p.is_file());
        let linked = std::fs::canonicalize(self.bin.join("initdb")).ok();
        beside(&self.bin)
            .or_else(|| linked.as_deref().and_then(Path::parent).and_then(beside))
            .or_else(|| find_on_path("psql"))
            .with_context(|| {
                format!("no psql beside {} nor on PATH; install it with `{INSTALL_COMMAND}`", self.bin.display())
            })
    }

    /// Starts the server again on the same data and port (after
    /// [`stop`](Self::stop)), and waits until it accepts connections.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop()?;
        self.pg_ctl_start().map_err(|e| self.with_log(e.context(format!("restart on port {}", self.port))))?;
        self.running = true;
        self.check_accepts().map_err(|e| self.with_log(e))
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        if self.running {
            // Immediate: nothing of a test cluster is worth a clean shutdown.
            if let Err(error) = self.pg_ctl_stop("immediate") {
                eprintln!("prism-testkit: stopping the postgres server failed: {error:#}");
            }
        }
        if let Some(dir) = self.dir.take() {
            // The cluster's files belong to the server's user; we are root
            // (or that user) and may remove them.
            let _ = dir.close();
        }
    }
}

fn not_installed() -> anyhow::Error {
    anyhow::anyhow!(
        "PostgreSQL is not installed (no initdb/pg_ctl on PATH nor under /usr/lib/postgresql/*/bin); \
         install it with `{INSTALL_COMMAND}`"
    )
}

/// What [`PostgresServer::start_or_skip`] gives without the binaries: an
/// error where servers are required, else "skip".
fn when_missing<T>(required: bool) -> anyhow::Result<Option<T>> {
    if required { Err(not_installed()) } else { Ok(None) }
}

/// A line saying why a test that needs PostgreSQL was skipped.
pub fn skip_reason() -> String {
    format!(
        "skipped: PostgreSQL is not installed (install it with `{INSTALL_COMMAND}`; \
         set {REQUIRE_SERVERS_ENV}=1 to fail instead of skipping)"
    )
}

/// The PEM certificate of a fresh CA that signed nothing: a trusted root
/// that no server's certificate chains to.
pub fn generate_ca_pem() -> anyhow::Result<String> {
    crate::tls::Ca::new("prism-testkit CA").map(|ca| ca.pem().to_owned())
}

/// A port that was free a moment ago: bind `127.0.0.1:0`, read, release.
fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
    Ok(listener.local_addr().context("local addr")?.port())
}

/// The uid and gid of [`UNPRIVILEGED_USER`], from `id`.
fn unprivileged_ids() -> anyhow::Result<(u32, u32)> {
    let id = |flag: &str| -> anyhow::Result<u32> {
        let output = Command::new("id").args([flag, UNPRIVILEGED_USER]).output().context("run id")?;
        anyhow::ensure!(output.status.success(), "user {UNPRIVILEGED_USER} does not exist");
        String::from_utf8_lossy(&output.stdout).trim().parse::<u32>().context("parse the output of id")
    };
    Ok((id("-u")?, id("-g")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_for_the_shell_and_the_config() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(conf_quote(r"/tmp/o'k\x"), r"'/tmp/o''k\\x'");
    }

    /// Both ways of becoming the unprivileged user pass arguments intact.
    #[test]
    fn commands_run_as_the_unprivileged_user_with_their_arguments() -> anyhow::Result<()> {
        if !running_as_root() {
            return Ok(()); // commands run as this user: nothing to switch
        }
        let ways = [find_on_path("runuser").map(RunAs::Runuser), find_on_path("su").map(RunAs::Su)];
        for run_as in ways.into_iter().flatten() {
            let args = vec!["-c".to_owned(), r#"printf '%s|' "$(id -un)" "$@""#.to_owned(), "sh".into()];
            let args = [args, vec!["a b".into(), "it's".into(), "$HOME".into()]].concat();
            let output = run_as.command(Path::new("/bin/sh"), &args, Path::new("/")).output()?;
            let stdout = String::from_utf8_lossy(&output.stdout);
            assert_eq!(stdout, format!("{UNPRIVILEGED_USER}|a b|it's|$HOME|"), "{run_as:?}: {output:?}");
        }
        Ok(())
    }

    #[test]
    fn missing_binaries_fail_with_the_install_command_or_skip() {
        let error = when_missing::<()>(true).expect_err("required");
        assert!(error.to_string().contains(INSTALL_COMMAND), "{error}");
        assert!(when_missing::<()>(false).expect("not required").is_none());
        assert!(skip_reason().contains(INSTALL_COMMAND) && skip_reason().contains(REQUIRE_SERVERS_ENV));
    }

    /// A port taken between the probe and the server's bind is retried
    /// with another.
    #[test]
    fn a_taken_port_is_retried() -> anyhow::Result<()> {
        let Some(bin) = find_binaries() else {
            println!("{}", skip_reason());
            return Ok(());
        };
        let taken = TcpListener::bind("127.0.0.1:0")?;
        let mut ports = vec![taken.local_addr()?.port()].into_iter();
        let server = PostgresServer::start_with(bin, || ports.next().map_or_else(free_port, Ok), false)?;
        assert_ne!(server.port(), taken.local_addr()?.port());
        TcpStream::connect(server.addr()).context("connect")?;
        Ok(())
    }

    /// A TLS server answers the protocol's TLS request with "yes", from a
    /// key only its user may read, and hands out the CA that signed it.
    #[test]
    fn a_tls_server_offers_tls_and_its_ca() -> anyhow::Result<()> {
        use std::io::{Read, Write};
        use std::os::unix::fs::PermissionsExt;
        let Some(server) = PostgresServer::start_tls_or_skip()? else {
            println!("{}", skip_reason());
            return Ok(());
        };
        let ca = server.ca_pem_path().context("a TLS server has a CA")?;
        assert!(std::fs::read_to_string(&ca)?.contains("BEGIN CERTIFICATE"), "{}", ca.display());
        let mode = std::fs::metadata(server.root.join("tls/server.key"))?.permissions().mode();
        assert_eq!(mode & 0o077, 0, "the key is private: {mode:o}");
        // SSLRequest: length 8, then the code 80877103; the server answers
        // one byte, `S` (TLS follows) or `N`.
        let mut stream = TcpStream::connect(server.addr()).context("connect")?;
        stream.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])?;
        let mut answer = [0u8; 1];
        stream.read_exact(&mut answer)?;
        assert_eq!(&answer, b"S", "the server offers TLS");
        assert!(generate_ca_pem()?.contains("BEGIN CERTIFICATE"));
        Ok(())
    }

    /// One server through its whole life: start, accept connections,
    /// stop, restart on the same port, and leave nothing behind.
    #[test]
    fn starts_stops_restarts_and_cleans_up() -> anyhow::Result<()> {
        let Some(mut server) = PostgresServer::start_or_skip()? else {
            println!("{}", skip_reason());
            return Ok(());
        };
        let port = server.port();
        assert!(server.dsn().contains(&format!("127.0.0.1:{port}")), "{}", server.dsn());
        TcpStream::connect(server.addr()).context("connect while running")?;
        assert_eq!(server.ca_pem_path(), None, "no TLS unless asked for");
        server.stop()?;
        assert!(TcpStream::connect(server.addr()).is_err(), "the port is closed after stop");
        server.restart()?;
        assert_eq!(server.port(), port, "restart keeps the port");
        TcpStream::connect(server.addr()).context("connect after restart")?;
        let root = server.root.clone();
        drop(server);
        assert!(!root.exists(), "the temp dir is removed on drop");
        assert!(TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).is_err(), "nothing left listening");
        Ok(())
    }
}
