//! Settings: the plugin's own ([`PostgresPluginConfig`]: timeouts,
//! chunking, retention, the CAs trusted for TLS), the same for every
//! namespace the gateway serves from PostgreSQL, and each namespace's
//! ([`NamespaceSettings`]: DSN, pool size, schema, whether TLS is
//! required), read from its typed `backend_config` and checked without
//! connecting. Parsing has no side effects; errors name the wrong field and
//! never quote a DSN.

use std::path::PathBuf;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use prism_plugin_api::Namespace;
use prism_plugin_api::secrets::{Secret, Secrets};
use prism_proto::backends::postgres;
use prism_proto::control::PostgresConfig;
use prism_proto::control::backend_config::Config as BackendConfig;
use serde::{Deserialize, Deserializer};
use tokio_postgres::NoTls;
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::{PostgresError, Result};
use crate::kv::names::MAX_IDENTIFIER_BYTES;

/// Smallest and largest chunk threshold: small enough to test chunking
/// cheaply, far below PostgreSQL's 1 GB limit on one `bytea`.
const CHUNK_THRESHOLD: std::ops::RangeInclusive<u64> = 1024..=(256 << 20);

/// Shortest and longest retention of tombstones and tokens.
const RETENTION: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(10 * 365 * 24 * 60 * 60);

/// Shortest and longest timeout.
const TIMEOUT: std::ops::RangeInclusive<Duration> = Duration::from_millis(10)..=Duration::from_secs(3600);

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresPluginConfig {
    /// How long opening one connection may take before the backend counts
    /// as unreachable. A humantime duration (`5s`). Default `5s`.
    /// Range 10 ms..=1 h.
    #[serde(deserialize_with = "humantime_duration")]
    pub connect_timeout: Duration,
    /// The server cancels a statement running longer than this, waits
    /// for locks included (its `statement_timeout`). Default `10s`.
    /// Range 10 ms..=1 h.
    #[serde(deserialize_with = "humantime_duration")]
    pub statement_timeout: Duration,
    /// How long a request waits for a free connection of its namespace's
    /// pool before it fails as overloaded. Default `5s`. Range 10 ms..=1 h.
    #[serde(deserialize_with = "humantime_duration")]
    pub pool_wait_timeout: Duration,
    /// The whole of one plugin call (connecting, waiting, every statement),
    /// enforced on the client side too, so a server that stops answering
    /// cannot hang a request. Default `30s`. Range 10 ms..=1 h.
    #[serde(deserialize_with = "humantime_duration")]
    pub request_timeout: Duration,
    /// Values longer than this many bytes are stored as chunks of this
    /// size in the namespace's chunks table. Default 1 MiB (1 048 576).
    /// Range 1 KiB..=256 MiB.
    pub chunk_threshold_bytes: u64,
    /// How long a delete is remembered, so that an older write arriving
    /// later still loses to it: point and range tombstones are reclaimed
    /// once their generation time is this far in the past. Default `1h`.
    /// Range 1 s..=10 years.
    #[serde(deserialize_with = "humantime_duration")]
    pub tombstone_retention: Duration,
    /// How long an applied idempotency token is remembered, so that a retry
    /// is a no-op: from when it was applied (or its generation time, if
    /// later). Default `24h`. Range 1 s..=10 years.
    #[serde(deserialize_with = "humantime_duration")]
    pub token_retention: Duration,
    /// A PEM file of the CA certificates this gateway trusts to sign
    /// PostgreSQL servers' certificates, read once when the plugin starts.
    /// Used only for the namespaces that require TLS (`require_tls`, or
    /// `sslmode=require` / `verify-full` in the DSN): their server's
    /// certificate must chain to one of these and name the DSN's host.
    /// Default: none, and then a namespace that requires TLS is not served
    /// ("no CA configured for postgres TLS (tls_ca_file)"); the others
    /// connect in plaintext either way.
    pub tls_ca_file: Option<PathBuf>,
}

impl Default for PostgresPluginConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(10),
            pool_wait_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            chunk_threshold_bytes: 1 << 20,
            tombstone_retention: Duration::from_secs(60 * 60),
            token_retention: Duration::from_secs(24 * 60 * 60),
            tls_ca_file: None,
        }
    }
}

impl PostgresPluginConfig {
    /// Checks every field; the error names the first wrong one.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, description: String| PostgresError::Config { field: field.into(), description };
        for (field, value) in [
            ("connect_timeout", self.connect_timeout),
            ("statement_timeout", self.statement_timeout),
            ("pool_wait_timeout", self.pool_wait_timeout),
            ("request_timeout", self.request_timeout),
        ] {
            if !TIMEOUT.contains(&value) {
                return Err(bad(field, format!("{} is outside 10ms..=1h", humantime::format_duration(value))));
            }
        }
        if !CHUNK_THRESHOLD.contains(&self.chunk_threshold_bytes) {
            return Err(bad(
                "chunk_threshold_bytes",
                format!(
                    "{} is outside {}..={}",
                    self.chunk_threshold_bytes,
                    CHUNK_THRESHOLD.start(),
                    CHUNK_THRESHOLD.end()
                ),
            ));
        }
        for (field, value) in
            [("tombstone_retention", self.tombstone_retention), ("token_retention", self.token_retention)]
        {
            if !RETENTION.contains(&value) {
                return Err(bad(field, format!("{} is outside 1s..=10 years", humantime::format_duration(value))));
            }
        }
        if self.tls_ca_file.as_ref().is_some_and(|path| path.as_os_str().is_empty()) {
            return Err(bad("tls_ca_file", "is empty: name a PEM file, or leave it out".into()));
        }
        Ok(())
    }
}

/// Connections of a namespace's pool when its settings say 0 (the
/// backend's description, shared with the control plane and the CLI).
pub const DEFAULT_POOL_SIZE: usize = postgres::POOL_SIZE.default as usize;
/// The largest pool a namespace may ask for.
pub const MAX_POOL_SIZE: usize = postgres::POOL_SIZE.max as usize;
/// The schema of a namespace whose settings name none.
pub const DEFAULT_SCHEMA: &str = postgres::DEFAULT_SCHEMA;

/// A namespace's postgres settings, from its typed `backend_config`,
/// checked and with defaults applied, and its password resolved from
/// `password_ref`. `Debug` leaves out the DSN and the password.
#[derive(Clone, PartialEq, Eq)]
pub struct NamespaceSettings {
    dsn: String,
    /// Resolved on this gateway from `password_ref`; never in the DSN.
    password: Option<Secret>,
    pub pool_size: usize,
    pub schema: String,
    /// The namespace requires TLS (`require_tls`, or an `sslmode` of
    /// `require`, `verify-ca` or `verify-full`): its connections are
    /// verified TLS or nothing. Otherwise they are plaintext: no
    /// opportunistic TLS, which would protect against nothing that
    /// matters (it yields to an attacker who says "no TLS").
    pub require_tls: bool,
    /// The hot statements are prepared once per connection (the default),
    /// unless the DSN says `prepared_statements=false`: for a server
    /// behind a pooler in transaction mode that does not keep them (see
    /// [`crate::kv`], "Statements on the wire").
    pub prepared_statements: bool,
}

/// The key of the pool that serves a namespace's settings: namespaces
/// share a pool only when they connect with the same credentials.
pub(crate) type PoolKey = (String, usize, bool, Option<Secret>);

impl std::fmt::Debug for NamespaceSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NamespaceSettings")
            .field("pool_size", &self.pool_size)
            .field("schema", &self.schema)
            .field("require_tls", &self.require_tls)
            .field("prepared_statements", &self.prepared_statements)
            .finish()
    }
}

impl NamespaceSettings {
    /// Checks `ns`'s postgres settings without connecting, and resolves
    /// its `password_ref` through `secrets`. Errors name the field (and
    /// the reference) and never quote the DSN or a secret.
    pub fn of(ns: &Namespace, secrets: &Secrets) -> Result<Self> {
        const FIELD: &str = "spec.backend_config.postgres";
        let Some(pg) = postgres_config(ns) else {
            return Err(PostgresError::invalid(FIELD, "is required for a postgres namespace"));
        };
        let Dsn { config: parsed, requires_tls: dsn_requires_tls, prepared_statements } = parse_dsn(&pg.dsn)?;
        // A namespace stored before inline passwords were refused: its
        // password was metadata, streamed to every gateway; not used.
        if parsed.get_password().is_some() {
            return Err(PostgresError::InlinePassword);
        }
        let password = secrets.resolve(&format!("{FIELD}.password_ref"), ns.tenant(), &pg.password_ref)?;
        if pg.require_tls && parsed.get_ssl_mode() == SslMode::Disable {
            return Err(PostgresError::invalid(
                format!("{FIELD}.dsn"),
                "says sslmode=disable, which contradicts require_tls",
            ));
        }
        let pool_size = match usize::try_from(pg.pool_size).unwrap_or(usize::MAX) {
            0 => DEFAULT_POOL_SIZE,
            n if n > MAX_POOL_SIZE => {
                return Err(PostgresError::invalid(format!("{FIELD}.pool_size"), format!("is above {MAX_POOL_SIZE}")));
            }
            n => n,
        };
        let schema = if pg.schema.is_empty() { DEFAULT_SCHEMA.to_owned() } else { pg.schema.clone() };
        if schema.len() > MAX_IDENTIFIER_BYTES || schema.contains('\0') {
            return Err(PostgresError::invalid(
                format!("{FIELD}.schema"),
                format!("must be at most {MAX_IDENTIFIER_BYTES} bytes and hold no NUL"),
            ));
        }
        Ok(Self {
            dsn: pg.dsn.clone(),
            password,
            pool_size,
            schema,
            require_tls: pg.require_tls || dsn_requires_tls,
            prepared_statements,
        })
    }

    pub(crate) fn pool_key(&self) -> PoolKey {
        (self.dsn.clone(), self.pool_size, self.require_tls, self.password.clone())
    }

    /// How a connection for these settings is made: the plugin's
    /// timeouts on every one, and TLS through `tls` (the gateway's
    /// trusted CAs) if the namespace requires it (`Some` then); without
    /// `tls` such a namespace is not served.
    pub(crate) fn connection(
        &self,
        config: &PostgresPluginConfig,
        tls: Option<&MakeRustlsConnect>,
    ) -> Result<(tokio_postgres::Config, Option<MakeRustlsConnect>)> {
        let mut pg = parse_dsn(&self.dsn)?.config;
        if let Some(password) = &self.password {
            pg.password(password.as_bytes());
        }
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(config.connect_timeout);
        }
        // Statements, and their waits for locks, end at the server too.
        let timeouts = format!("-c statement_timeout={}", config.statement_timeout.as_millis());
        let options = match pg.get_options() {
            Some(given) if !given.trim().is_empty() => format!("{given} {timeouts}"),
            _ => timeouts,
        };
        pg.options(options);
        if pg.get_application_name().is_none() {
            pg.application_name("prism-gateway");
        }
        // A peer that vanished without closing is noticed.
        pg.keepalives(true).keepalives_idle(Duration::from_secs(30));
        match (self.require_tls, tls) {
            (false, _) => Ok((pg, None)),
            (true, Some(tls)) => {
                // `verify-*` was read as `require`, and a `prefer` DSN with
                // `require_tls` must not fall back to plaintext.
                pg.ssl_mode(SslMode::Require);
                Ok((pg, Some(tls.clone())))
            }
            (true, None) => Err(PostgresError::NoTlsRoots),
        }
    }

    /// A pool for these settings ([`Self::connection`]); connects only
    /// when a connection is asked for.
    pub(crate) fn make_pool(&self, config: &PostgresPluginConfig, tls: Option<&MakeRustlsConnect>) -> Result<Pool> {
        let recycling = ManagerConfig { recycling_method: RecyclingMethod::Fast };
        let manager = match self.connection(config, tls)? {
            (pg, None) => Manager::from_config(pg, NoTls, recycling),
            (pg, Some(tls)) => Manager::from_config(pg, tls, recycling),
        };
        Pool::builder(manager)
            .max_size(self.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(config.pool_wait_timeout))
            .create_timeout(Some(config.connect_timeout))
            .recycle_timeout(Some(config.connect_timeout))
            .build()
            .map_err(|e| PostgresError::Config { field: "pool".into(), description: e.to_string() })
    }
}

/// `ns`'s postgres `backend_config` as given, if it has one.
pub(crate) fn postgres_config(ns: &Namespace) -> Option<&PostgresConfig> {
    match ns.spec.backend_config.as_deref().and_then(|c| c.config.as_ref()) {
        Some(BackendConfig::Postgres(pg)) => Some(pg),
        _ => None,
    }
}

/// The `sslmode`s of libpq that tokio-postgres 0.7 does not parse. Both
/// ask for a verified server, which is what TLS here always is (chain and
/// host name: stricter than `verify-ca`), so both read as `require`.
const VERIFYING_SSL_MODES: [&str; 2] = ["sslmode=verify-full", "sslmode=verify-ca"];

/// A namespace's DSN as the plugin reads it.
struct Dsn {
    config: tokio_postgres::Config,
    /// It asks for TLS.
    requires_tls: bool,
    /// It does not say `prepared_statements=false`.
    prepared_statements: bool,
}

/// The DSN parameter, Prism's own, that turns prepared statements off.
const PREPARED_STATEMENTS: &str = "prepared_statements";

/// `dsn` without the [`PREPARED_STATEMENTS`] parameter (which
/// tokio-postgres would refuse), and its value: true unless it says
/// `false`, `off` or `0`. Both DSN forms: a `postgres://` URL's query
/// (`?…&prepared_statements=false`) and a `key=value` string.
fn take_prepared_statements(dsn: &str) -> Result<(String, bool)> {
    let mut value = None;
    let mut keep = |pair: &str| match pair.split_once('=') {
        Some((key, v)) if key.trim() == PREPARED_STATEMENTS => {
            value = Some(v.trim().to_ascii_lowercase());
            false
        }
        _ => true,
    };
    let rest = if dsn.starts_with("postgres://") || dsn.starts_with("postgresql://") {
        match dsn.split_once('?') {
            Some((base, query)) => {
                let query: Vec<&str> = query.split('&').filter(|pair| keep(pair)).collect();
                if query.is_empty() { base.to_owned() } else { format!("{base}?{}", query.join("&")) }
            }
            None => dsn.to_owned(),
        }
    } else {
        dsn.split_whitespace().filter(|pair| keep(pair)).collect::<Vec<_>>().join(" ")
    };
    let prepared = match value.as_deref() {
        None | Some("true" | "on" | "1") => true,
        Some("false" | "off" | "0") => false,
        Some(_) => {
            return Err(PostgresError::invalid(
                "spec.backend_config.postgres.dsn",
                format!("{PREPARED_STATEMENTS} must be true or false"),
            ));
        }
    };
    Ok((rest, prepared))
}

/// `dsn` parsed: what it asks of TLS and of prepared statements.
fn parse_dsn(dsn: &str) -> Result<Dsn> {
    let (mut text, prepared_statements) = take_prepared_statements(dsn)?;
    let mut verifying = false;
    for mode in VERIFYING_SSL_MODES {
        if text.contains(mode) {
            text = text.replace(mode, "sslmode=require");
            verifying = true;
        }
    }
    // The parser's message may quote the DSN: it is not kept.
    let parsed = text.parse::<tokio_postgres::Config>().map_err(|_| {
        PostgresError::invalid(
            "spec.backend_config.postgres.dsn",
            "is not a valid postgres:// URL or key=value connection string",
        )
    })?;
    let requires_tls = verifying || parsed.get_ssl_mode() == SslMode::Require;
    Ok(Dsn { config: parsed, requires_tls, prepared_statements })
}

fn humantime_duration<'de, D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    humantime::parse_duration(&text).map_err(|e| serde::de::Error::custom(format!("{e} (examples: 90s, 15m, 1h, 7d)")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_defaults() {
        let c: PostgresPluginConfig =
            toml::from_str("statement_timeout = \"2s\"\ntoken_retention = \"2h 30m\"").expect("valid config");
        assert_eq!(c.statement_timeout, Duration::from_secs(2));
        assert_eq!(c.token_retention, Duration::from_secs(9000));
        assert_eq!(c.connect_timeout, Duration::from_secs(5));
        assert_eq!(c.chunk_threshold_bytes, 1 << 20);
        c.validate().expect("valid");
        PostgresPluginConfig::default().validate().expect("defaults are valid");
    }

    #[test]
    fn reads_the_ca_file_and_which_dsns_require_tls() {
        let c: PostgresPluginConfig = toml::from_str("tls_ca_file = \"/etc/prism/pg-ca.pem\"").expect("valid config");
        assert_eq!(c.tls_ca_file, Some(PathBuf::from("/etc/prism/pg-ca.pem")));
        c.validate().expect("valid");
        let empty = PostgresPluginConfig { tls_ca_file: Some(PathBuf::new()), ..PostgresPluginConfig::default() };
        assert!(matches!(empty.validate(), Err(PostgresError::Config { field, .. }) if field == "tls_ca_file"));
        for (dsn, requires) in [
            ("postgres://u@db/x", false),
            ("postgres://u@db/x?sslmode=prefer", false),
            ("postgres://u@db/x?sslmode=disable", false),
            ("postgres://u@db/x?sslmode=require", true),
            ("postgres://u@db/x?application_name=a&sslmode=verify-full", true),
            ("host=db user=u sslmode=verify-ca", true),
            ("host=db user=u sslmode=require", true),
        ] {
            let got = parse_dsn(dsn).expect("valid DSN");
            assert_eq!(got.requires_tls, requires, "{dsn}");
        }
    }

    #[test]
    fn the_dsn_can_turn_prepared_statements_off() {
        for (dsn, prepared, host) in [
            ("postgres://u@db/x", true, "db"),
            ("postgres://u@bouncer:6432/x?prepared_statements=false", false, "bouncer"),
            ("postgresql://u@db/x?sslmode=disable&prepared_statements=off&application_name=a", false, "db"),
            ("postgres://u@db/x?prepared_statements=true", true, "db"),
            ("host=bouncer port=6432 prepared_statements=0 user=u", false, "bouncer"),
            ("host=db user=u", true, "db"),
        ] {
            let got = parse_dsn(dsn).expect("valid DSN");
            assert_eq!(got.prepared_statements, prepared, "{dsn}");
            let hosts = got.config.get_hosts();
            assert!(matches!(hosts.first(), Some(tokio_postgres::config::Host::Tcp(h)) if h == host), "{dsn}");
        }
        let url = parse_dsn("postgresql://u@db/x?sslmode=disable&prepared_statements=off&application_name=a")
            .expect("valid DSN");
        assert_eq!(url.config.get_application_name(), Some("a"), "the other parameters stay");
        assert_eq!(url.config.get_ssl_mode(), SslMode::Disable);
        match parse_dsn("postgres://u:secret@db/x?prepared_statements=maybe") {
            Err(PostgresError::Invalid { field, description }) => {
                assert_eq!(field, "spec.backend_config.postgres.dsn");
                assert!(!description.contains("secret"), "{description}");
            }
            other => panic!("want an invalid DSN, got {:?}", other.map(|d| d.prepared_statements)),
        }
    }

    #[test]
    fn refuses_unknown_fields_and_bad_durations() {
        assert!(toml::from_str::<PostgresPluginConfig>("dsn = \"postgres://x\"").is_err());
        assert!(toml::from_str::<PostgresPluginConfig>("connect_timeout = \"soon\"").is_err());
    }

    #[test]
    fn validate_names_the_field() {
        let field = |c: PostgresPluginConfig| match c.validate() {
            Err(PostgresError::Config { field, .. }) => field,
            other => panic!("want a config error, got {other:?}"),
        };
        let base = PostgresPluginConfig::default();
        assert_eq!(field(PostgresPluginConfig { connect_timeout: Duration::ZERO, ..base.clone() }), "connect_timeout");
        assert_eq!(
            field(PostgresPluginConfig { request_timeout: Duration::from_secs(7200), ..base.clone() }),
            "request_timeout"
        );
        assert_eq!(field(PostgresPluginConfig { chunk_threshold_bytes: 10, ..base.clone() }), "chunk_threshold_bytes");
        assert_eq!(
            field(PostgresPluginConfig { tombstone_retention: Duration::ZERO, ..base.clone() }),
            "tombstone_retention"
        );
        assert_eq!(field(PostgresPluginConfig { token_retention: Duration::MAX, ..base }), "token_retention");
    }
}
