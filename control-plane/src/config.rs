//! Control-plane configuration: a TOML table (`[control_plane]` in the
//! `prism` config file), overridden by environment and flags in the CLI.
//! Parsing has no side effects; `validate` names the wrong field.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::error::{ControlPlaneError, Result};

// `Debug` is written by hand: `store` may hold a password.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ControlPlaneConfig {
    /// Directory of the embedded metadata store (created if missing).
    /// Unused when `store` names a database. Default:
    /// `./prism-data/control-plane`.
    pub data_dir: PathBuf,
    /// A PostgreSQL DSN (`postgres://user:password@host:port/db`) to keep
    /// the metadata in instead of the embedded store; several replicas may
    /// share one database. Default: none (the embedded store in
    /// `data_dir`).
    pub store: Option<String>,
    /// Schema of the metadata tables in the `store` database (created if
    /// missing). Default: `prism_control`. At most 63 bytes.
    pub store_schema: String,
    /// Shard ids new namespaces are assigned to, by rendezvous hashing,
    /// until gateways register their shards. Default: none (namespaces wait
    /// in PROVISIONING for a shard).
    pub shards: Vec<String>,
    /// Gateway endpoints (`host:port`) of each static shard, answered by
    /// `ResolveNamespace` until gateways register themselves. Keys must be
    /// listed in `shards`. Default: none.
    pub shard_endpoints: BTreeMap<String, Vec<String>>,
    /// Lease of a registered gateway instance, in milliseconds: an instance
    /// that has not heartbeat for this long is removed. Gateways heartbeat
    /// every quarter of it. Default 10 000; range 200..=600 000.
    pub shard_lease_ttl_ms: u64,
    /// Deltas buffered for each watcher; a watcher further behind is cut
    /// off and resumes from its revision. Default: 1024. Range 1..=1 000 000.
    pub watch_buffer: usize,
    /// Encoded bytes of the deltas kept for watchers: a watcher further
    /// behind than this is cut off too, whatever the count, so a slow
    /// watcher never holds more. Default: 32 MiB. Range 1 MiB..=4 GiB.
    pub watch_buffer_bytes: usize,
    /// How long a migrated namespace's source is kept after the commit
    /// that makes its target the namespace's placement (the migration's
    /// CLEANUP step), in milliseconds, before its holder removes it.
    /// Default 3 600 000 (an hour); range 0..=2 592 000 000 (30 days).
    pub migration_cleanup_grace_ms: u64,
    /// The fraction of a migrating namespace's live reads that its
    /// gateways also send to the target during the migration's VERIFY
    /// step, comparing the answers (shadow reads). Default 0.01; range
    /// 0..=1 (0: none).
    pub migration_shadow_read_fraction: f64,
    /// How long each gateway of a migrating namespace's shard shadow-reads
    /// at VERIFY before it reports, in milliseconds: the least time a
    /// migration spends verifying. Default 30 000; range 0..=86 400 000.
    pub migration_verify_window_ms: u64,
    /// Revisions kept in the change log, so a reconnecting watcher can
    /// resume without a full snapshot. Default: 100 000. At least 1.
    pub change_log_retention: u64,
    /// Most commits written together: the commits that arrive while the
    /// store makes one group durable share the next fsync (embedded store)
    /// or database transaction (PostgreSQL). 1 writes every commit on its
    /// own. Default: 256. Range 1..=10 000.
    pub max_commit_group: usize,
    /// Bytes of the embedded store's page cache (redb's pages read or
    /// written last); the rest of the store is read from its file. Unused
    /// when `store` names a database. Default: 256 MiB. Range 1 MiB..=1 TiB.
    pub store_cache_bytes: u64,
    /// Bearer-token authentication of every call. With `hs256_secret` or a
    /// JWKS set, a call needs a valid token unless `allow_anonymous`, and
    /// each RPC is authorized (the table in `prism_proto::access`, "Who
    /// may call what"). Without either the control plane refuses to start,
    /// unless `insecure_no_auth`.
    pub auth: prism_auth::AuthConfig,
    /// `ip:port` of the metrics listener: `/metrics` (Prometheus text
    /// format), `/healthz`, `/readyz`. Default: none.
    pub metrics_listen: Option<String>,
    /// Serve the operator console (read-only HTML pages under
    /// `/console/`, signed in with the API's bearer tokens; see
    /// `docs/console.md`): on `console_listen` when set, else on the
    /// metrics listener. Default true.
    pub console: bool,
    /// `ip:port` of a listener of the console's own (plain HTTP), so the
    /// pages need not share the metrics port. Default: none (the console
    /// is on the metrics listener, when there is one).
    pub console_listen: Option<String>,
    /// Serve without any key: every caller, token or not, is an unchecked
    /// `anonymous` that may do everything (tests, local experiments;
    /// warned at startup). Default false. Ignored when a key is configured.
    pub insecure_no_auth: bool,
    /// TLS on the gRPC port, and optionally mutual TLS (only clients with
    /// a certificate the client CA signed may connect; the bearer token
    /// still says who calls). Files are re-read when they change. Default:
    /// none (plain text).
    pub tls: Option<prism_tls::ServerTlsConfig>,
}

impl std::fmt::Debug for ControlPlaneConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlaneConfig")
            .field("data_dir", &self.data_dir)
            .field("store", &self.store.as_ref().map(|_| "<redacted>"))
            .field("store_schema", &self.store_schema)
            .field("shards", &self.shards)
            .field("shard_endpoints", &self.shard_endpoints)
            .field("shard_lease_ttl_ms", &self.shard_lease_ttl_ms)
            .field("watch_buffer", &self.watch_buffer)
            .field("watch_buffer_bytes", &self.watch_buffer_bytes)
            .field("migration_cleanup_grace_ms", &self.migration_cleanup_grace_ms)
            .field("migration_shadow_read_fraction", &self.migration_shadow_read_fraction)
            .field("migration_verify_window_ms", &self.migration_verify_window_ms)
            .field("change_log_retention", &self.change_log_retention)
            .field("max_commit_group", &self.max_commit_group)
            .field("store_cache_bytes", &self.store_cache_bytes)
            .field("auth.hs256_secret", &self.auth.hs256_secret.as_ref().map(|_| "<redacted>"))
            .field("auth.hs256_secret_file", &self.auth.hs256_secret_file)
            .field("auth.jwks_file", &self.auth.jwks_file)
            .field("auth.jwks_url", &self.auth.jwks_url)
            .field("auth.issuer", &self.auth.issuer)
            .field("auth.audience", &self.auth.audience)
            .field("auth.allow_anonymous", &self.auth.allow_anonymous)
            .field("metrics_listen", &self.metrics_listen)
            .field("console", &self.console)
            .field("console_listen", &self.console_listen)
            .field("insecure_no_auth", &self.insecure_no_auth)
            .field("tls", &self.tls)
            .finish()
    }
}

/// Longest `migration_cleanup_grace_ms`: 30 days.
const MAX_CLEANUP_GRACE_MS: u64 = 30 * 24 * 3_600_000;

/// The setting that lets a control plane serve without a key; its flag is
/// `--insecure-no-auth`.
pub const INSECURE_NO_AUTH: &str = "insecure_no_auth";

impl Default for ControlPlaneConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("prism-data/control-plane"),
            store: None,
            store_schema: crate::store::postgres::DEFAULT_SCHEMA.to_owned(),
            shards: Vec::new(),
            shard_endpoints: BTreeMap::new(),
            shard_lease_ttl_ms: 10_000,
            watch_buffer: 1024,
            watch_buffer_bytes: crate::store::bus::DEFAULT_BYTES,
            migration_cleanup_grace_ms: 3_600_000,
            migration_shadow_read_fraction: 0.01,
            migration_verify_window_ms: 30_000,
            change_log_retention: 100_000,
            max_commit_group: crate::store::group::DEFAULT_MAX_GROUP,
            store_cache_bytes: crate::store::DEFAULT_CACHE_BYTES,
            auth: prism_auth::AuthConfig::default(),
            metrics_listen: None,
            console: true,
            console_listen: None,
            insecure_no_auth: false,
            tls: None,
        }
    }
}

impl ControlPlaneConfig {
    /// Parses a TOML document holding these fields.
    pub fn from_toml(text: &str) -> Result<Self> {
        let config: Self = toml::from_str(text).map_err(|e| ControlPlaneError::Config {
            field: e.span().map(|s| format!("bytes {}..{}", s.start, s.end)).unwrap_or_default(),
            description: e.message().to_owned(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every field; the error names the first wrong one.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, description: String| ControlPlaneError::Config { field: field.into(), description };
        if self.data_dir.as_os_str().is_empty() {
            return Err(bad("data_dir", "must not be empty".into()));
        }
        if let Some(dsn) = &self.store {
            // Shape only: nothing is connected before the store opens.
            crate::store::postgres::parse_dsn(dsn)?;
        }
        if self.store_schema.is_empty() || self.store_schema.len() > 63 {
            return Err(bad("store_schema", "must be 1 to 63 bytes".into()));
        }
        for (i, shard) in self.shards.iter().enumerate() {
            prism_proto::names::validate_part(shard).map_err(|e| bad(&format!("shards[{i}]"), e.to_string()))?;
            if self.shards[..i].contains(shard) {
                return Err(bad(&format!("shards[{i}]"), format!("{shard:?} is listed twice")));
            }
        }
        for (shard, endpoints) in &self.shard_endpoints {
            if !self.shards.contains(shard) {
                return Err(bad(&format!("shard_endpoints.{shard}"), "names a shard not listed in shards".into()));
            }
            for (i, e) in endpoints.iter().enumerate() {
                crate::validate::endpoint("", e).map_err(|_| {
                    bad(
                        &format!("shard_endpoints.{shard}[{i}]"),
                        format!("{e:?} is not host:port or https://host:port"),
                    )
                })?;
            }
        }
        if !(200..=600_000).contains(&self.shard_lease_ttl_ms) {
            return Err(bad("shard_lease_ttl_ms", format!("{} is outside 200..=600000", self.shard_lease_ttl_ms)));
        }
        if !(1..=1_000_000).contains(&self.watch_buffer) {
            return Err(bad("watch_buffer", format!("{} is outside 1..=1000000", self.watch_buffer)));
        }
        if !((1 << 20)..=(4 << 30)).contains(&self.watch_buffer_bytes) {
            return Err(bad(
                "watch_buffer_bytes",
                format!("{} is outside 1048576..=4294967296 (1 MiB to 4 GiB)", self.watch_buffer_bytes),
            ));
        }
        if self.migration_cleanup_grace_ms > MAX_CLEANUP_GRACE_MS {
            return Err(bad(
                "migration_cleanup_grace_ms",
                format!("{} is outside 0..={MAX_CLEANUP_GRACE_MS} (30 days)", self.migration_cleanup_grace_ms),
            ));
        }
        if !(0.0..=1.0).contains(&self.migration_shadow_read_fraction) {
            return Err(bad(
                "migration_shadow_read_fraction",
                format!("{} is outside 0..=1", self.migration_shadow_read_fraction),
            ));
        }
        if self.migration_verify_window_ms > 86_400_000 {
            return Err(bad(
                "migration_verify_window_ms",
                format!("{} is outside 0..=86400000 (a day)", self.migration_verify_window_ms),
            ));
        }
        if let Err(prism_auth::AuthError::Config { field, description }) = self.auth.validate() {
            return Err(bad(&format!("auth.{field}"), description));
        }
        if !self.auth.verifies_tokens() && !self.insecure_no_auth {
            return Err(bad(
                "auth",
                format!(
                    "no key is configured (auth.hs256_secret, auth.jwks_file or auth.jwks_url), so no caller \
                     could be checked; refusing to let every caller act as superuser. Set a key, or start \
                     with --insecure-no-auth ({INSECURE_NO_AUTH} = true) to serve without one"
                ),
            ));
        }
        if let Some(tls) = &self.tls {
            tls.validate().map_err(|e| {
                let e = e.within("tls");
                bad(e.field(), e.description().to_owned())
            })?;
        }
        if self.change_log_retention == 0 {
            return Err(bad("change_log_retention", "must be at least 1".into()));
        }
        if !(1..=10_000).contains(&self.max_commit_group) {
            return Err(bad("max_commit_group", format!("{} is outside 1..=10000", self.max_commit_group)));
        }
        if !(1 << 20..=1 << 40).contains(&self.store_cache_bytes) {
            return Err(bad("store_cache_bytes", format!("{} is outside 1 MiB..=1 TiB", self.store_cache_bytes)));
        }
        if let Some(addr) = &self.metrics_listen {
            prism_telemetry::http::parse_listen(addr).map_err(|d| bad("metrics_listen", d))?;
        }
        if let Some(addr) = &self.console_listen {
            prism_telemetry::http::parse_listen(addr).map_err(|d| bad("console_listen", d))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_store_dsn() {
        let c = ControlPlaneConfig { store: Some("postgres://u:hunter2@db/x".into()), ..Default::default() };
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2") && shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn refuses_to_serve_without_a_key_unless_told_it_is_insecure() {
        let e = ControlPlaneConfig::from_toml("").expect_err("no key");
        assert!(e.to_string().contains("--insecure-no-auth"), "{e}");
        ControlPlaneConfig::from_toml("insecure_no_auth = true").expect("explicitly open");
        ControlPlaneConfig::from_toml("[auth]\nhs256_secret = \"0123456789abcdef0123456789abcdef\"").expect("a key");
        let e = ControlPlaneConfig::from_toml(
            "insecure_no_auth = true\n[tls]\ncert_file = \"c\"\nkey_file = \"k\"\nrequire_client_cert = true",
        )
        .expect_err("no client CA");
        assert!(e.to_string().contains("tls.require_client_cert"), "{e}");
    }

    #[test]
    fn parses_and_defaults() {
        let c = ControlPlaneConfig::from_toml("insecure_no_auth = true\nshards = [\"a\", \"b\"]").expect("valid");
        assert_eq!(c.shards, ["a", "b"]);
        assert_eq!(c.watch_buffer, 1024);
        assert_eq!(c.max_commit_group, 256);
        assert_eq!(c.store_cache_bytes, 256 << 20);
    }

    #[test]
    fn names_the_wrong_field() {
        let e = ControlPlaneConfig::from_toml("shard = []").expect_err("unknown field");
        assert!(e.to_string().contains("unknown field `shard`"), "{e}");
        let e = ControlPlaneConfig::from_toml("shards = [\"ok\", \"Bad\"]").expect_err("bad shard");
        assert!(e.to_string().contains("shards[1]"), "{e}");
        let e = ControlPlaneConfig::from_toml("insecure_no_auth = true\nmetrics_listen = \"localhost\"")
            .expect_err("no port");
        assert!(e.to_string().contains("metrics_listen"), "{e}");
        let e =
            ControlPlaneConfig::from_toml("insecure_no_auth = true\nconsole_listen = \"nope\"").expect_err("no port");
        assert!(e.to_string().contains("console_listen"), "{e}");
        let e = ControlPlaneConfig::from_toml("watch_buffer = 0").expect_err("zero");
        assert!(e.to_string().contains("watch_buffer"), "{e}");
        let e = ControlPlaneConfig::from_toml("watch_buffer_bytes = 1000").expect_err("too small");
        assert!(e.to_string().contains("watch_buffer_bytes"), "{e}");
        let e = ControlPlaneConfig::from_toml("insecure_no_auth = true\nmax_commit_group = 0").expect_err("zero");
        assert!(e.to_string().contains("max_commit_group"), "{e}");
        let e = ControlPlaneConfig::from_toml("insecure_no_auth = true\nstore_cache_bytes = 4096").expect_err("small");
        assert!(e.to_string().contains("store_cache_bytes"), "{e}");
        let e = ControlPlaneConfig::from_toml("store = \"mysql://u:secret@h/db\"").expect_err("not postgres");
        assert!(e.to_string().contains("store") && !e.to_string().contains("secret"), "{e}");
        let c = ControlPlaneConfig::from_toml("insecure_no_auth = true\nstore = \"postgres://u@h:5432/db\"")
            .expect("a postgres DSN");
        assert_eq!(c.store_schema, "prism_control");
    }
}
