//! What the postgres plugin's test binaries share: one PostgreSQL server
//! per binary, and plugins whose namespaces name it ([`subject`]: the
//! conformance suite's [`Subject`], whose `backend_config` every namespace
//! a case makes carries).

#![allow(dead_code)] // each test binary uses its own part of this module

use std::sync::{Arc, OnceLock};

use prism_plugin_api::Namespace;
use prism_plugin_api::conformance::Subject;
use prism_plugin_postgres::{PostgresPlugin, PostgresPluginConfig};
use prism_proto::control::backend_config::Config;
use prism_proto::control::{BackendConfig, PostgresConfig};
use prism_testkit::postgres::PostgresServer;

/// The server every test of this binary shares, started on first use; it
/// never lives past the test process (the testkit's watchdog stops it).
/// Fails the test, with the install command, when PostgreSQL is missing.
pub fn server() -> &'static PostgresServer {
    static SERVER: OnceLock<Result<PostgresServer, String>> = OnceLock::new();
    match SERVER.get_or_init(|| PostgresServer::start().map_err(|e| format!("{e:#}"))) {
        Ok(server) => server,
        Err(e) => panic!("cannot start PostgreSQL: {e}"),
    }
}

/// As [`server`], but `None` when PostgreSQL is missing and
/// `PRISM_REQUIRE_SERVERS` is unset: the caller skips.
pub fn server_or_skip() -> Option<&'static PostgresServer> {
    static SERVER: OnceLock<Result<Option<PostgresServer>, String>> = OnceLock::new();
    match SERVER.get_or_init(|| PostgresServer::start_or_skip().map_err(|e| format!("{e:#}"))) {
        Ok(server) => server.as_ref(),
        Err(e) => panic!("cannot start PostgreSQL: {e}"),
    }
}

/// A server that also offers TLS ([`PostgresServer::start_tls`]), shared
/// by every test of this binary; `None` when PostgreSQL is missing and
/// `PRISM_REQUIRE_SERVERS` is unset: the caller skips.
pub fn tls_server_or_skip() -> Option<&'static PostgresServer> {
    static SERVER: OnceLock<Result<Option<PostgresServer>, String>> = OnceLock::new();
    match SERVER.get_or_init(|| PostgresServer::start_tls_or_skip().map_err(|e| format!("{e:#}"))) {
        Ok(server) => server.as_ref(),
        Err(e) => panic!("cannot start PostgreSQL with TLS: {e}"),
    }
}

/// The namespace settings pointing at `dsn`.
pub fn settings(dsn: &str, schema: &str) -> PostgresConfig {
    PostgresConfig { dsn: dsn.to_owned(), schema: schema.to_owned(), ..PostgresConfig::default() }
}

/// `ns` with `settings` as its backend_config.
pub fn with_settings(ns: &Namespace, settings: &PostgresConfig) -> Namespace {
    let mut ns = ns.clone();
    ns.spec.backend_config = Some(Box::new(BackendConfig { config: Some(Config::Postgres(settings.clone())) }));
    ns
}

/// A [`PostgresPlugin`] of `config` whose namespaces carry `settings`, as
/// the control plane's metadata would give them.
pub fn subject(settings: PostgresConfig, config: PostgresPluginConfig) -> Subject {
    let plugin = PostgresPlugin::new(config).expect("valid plugin config");
    Subject::configured(Arc::new(plugin), Config::Postgres(settings))
}

/// A plugin on the shared server, in `schema`, with `chunk_threshold_bytes`.
pub async fn fixture(schema: &str, chunk_threshold_bytes: u64) -> Subject {
    let config = PostgresPluginConfig { chunk_threshold_bytes, ..PostgresPluginConfig::default() };
    subject(settings(&server().dsn(), schema), config)
}

/// As [`fixture`], on a DSN that says `prepared_statements=false`: every
/// statement unnamed, as behind a pooler in transaction mode.
pub async fn fixture_unnamed(schema: &str) -> Subject {
    let dsn = format!("{}?prepared_statements=false", server().dsn());
    subject(settings(&dsn, schema), PostgresPluginConfig::default())
}

/// A plain client of `server`, for checking what the plugin left in it.
pub async fn sql(server: &PostgresServer) -> tokio_postgres::Client {
    let (client, connection) =
        tokio_postgres::connect(&server.dsn(), tokio_postgres::NoTls).await.expect("connect to the test server");
    tokio::spawn(async move {
        // Ends when the client is dropped or the server goes away.
        let _ = connection.await;
    });
    client
}

/// PgBouncer in transaction pooling mode in front of a server, started by
/// `scripts/pgbouncer.sh` (a temp dir, an ephemeral port) and stopped on
/// drop: a pooler that does not keep prepared statements, between the
/// plugin and PostgreSQL.
pub struct Bouncer {
    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub dsn: String,
    pid: String,
    dir: std::path::PathBuf,
}

/// The command that installs PgBouncer.
pub const PGBOUNCER_INSTALL: &str = "apt-get install -y pgbouncer";

impl Bouncer {
    /// In front of `server`, with `pool` server connections. `None` when
    /// PgBouncer is not installed and `PRISM_REQUIRE_SERVERS` is unset
    /// (the caller skips); a failure to start fails the test.
    pub fn start(server: &PostgresServer, pool: usize) -> Option<Self> {
        let installed = std::process::Command::new("sh")
            .args(["-c", "command -v pgbouncer || test -x /usr/sbin/pgbouncer"])
            .stdout(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !installed {
            assert!(
                !prism_testkit::postgres::servers_required(),
                "PgBouncer is not installed: run `{PGBOUNCER_INSTALL}`"
            );
            println!("skipped: PgBouncer is not installed (install it with `{PGBOUNCER_INSTALL}`)");
            return None;
        }
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/pgbouncer.sh");
        let out = std::process::Command::new(&script)
            .args(["127.0.0.1", &server.port().to_string(), &pool.to_string()])
            .output()
            .expect("run scripts/pgbouncer.sh");
        assert!(out.status.success(), "pgbouncer.sh failed: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8(out.stdout).expect("pgbouncer.sh prints text");
        let mut lines = text.lines();
        let (Some(dsn), Some(pid), Some(dir)) = (lines.next(), lines.next(), lines.next()) else {
            panic!("pgbouncer.sh printed {text:?}, not a DSN, a PID and a directory");
        };
        Some(Self { dsn: dsn.to_owned(), pid: pid.trim().to_owned(), dir: dir.into() })
    }
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        // The PgBouncer this fixture started, by its PID.
        let _ = std::process::Command::new("kill").arg(&self.pid).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
