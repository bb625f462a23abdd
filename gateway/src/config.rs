//! Gateway configuration (`[gateway]` in the `prism` config file),
//! overridden by environment and flags in the CLI. `validate` names the
//! wrong field; parsing has no side effects.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use prism_auth::SecretString;
use prism_plugin_api::secrets::{SecretEntry, Secrets};
use serde::Deserialize;

use crate::error::{GatewayError, Result};

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// The shard this gateway serves. Required; `[a-z0-9][a-z0-9-]{0,62}`.
    pub shard_id: String,
    /// `host:port` of the control plane, or `https://host:port` to reach it
    /// over TLS (see `control_plane_tls`). Default `127.0.0.1:7400`.
    pub control_plane: String,
    /// `host:port` clients reach this gateway at, registered with the
    /// control plane (as `https://host:port` when it serves TLS, so
    /// clients know to use it). Default: the address it listens on (a
    /// loopback address when it listens on every interface).
    pub advertise_endpoint: Option<String>,
    /// How often usage is reported to the control plane (which answers this
    /// instance's share of each tenant's limits), in milliseconds. Default
    /// 5 000; range 100..=600 000.
    pub usage_report_interval_ms: u64,
    /// How often the storage of namespaces with a `storage_bytes` quota
    /// (their own or their tenant's) is measured, in milliseconds. A
    /// measurement may read the whole namespace. Default 30 000; range
    /// 100..=3 600 000.
    pub storage_measure_interval_ms: u64,
    /// Token the gateway presents to the control plane (one with role
    /// `shard`), if it needs one. Default: none.
    pub control_plane_token: Option<SecretString>,
    /// A file holding that token instead (read once at startup, one
    /// trailing line ending ignored; not with `control_plane_token`).
    /// Default: none.
    pub control_plane_token_file: Option<PathBuf>,
    /// How the gateway reaches an `https://` control plane: the CAs its
    /// certificate must chain to (default: the system bundle) and the
    /// client certificate to present when it asks for one. Only with an
    /// `https://` `control_plane`. Default: none.
    pub control_plane_tls: Option<ClientTlsConfig>,
    /// Directory of the embedded backend's data. Default
    /// `./prism-data/<shard_id>`.
    pub data_dir: Option<PathBuf>,
    /// A PEM file of the CA certificates this gateway trusts to sign
    /// PostgreSQL servers' certificates, for the postgres namespaces that
    /// require TLS (`require_tls`, or `sslmode=require`/`verify-full` in
    /// their DSN). Read once at startup. Default: none, and such a
    /// namespace is DEGRADED ("no CA configured for postgres TLS").
    pub postgres_tls_ca_file: Option<PathBuf>,
    pub auth: AuthConfig,
    /// The secrets this gateway may hand to backend plugins, by name
    /// (`[gateway.secrets.NAME]`: `env` or `file`, and the `tenants` that
    /// may use it): what a namespace's `password_ref` can name (see
    /// `prism_plugin_api::secrets`). Default: none, and every reference is
    /// refused (the namespace is DEGRADED, naming it).
    pub secrets: BTreeMap<String, SecretEntry>,
    /// TLS on the gateway's gRPC port, and optionally mutual TLS. Default:
    /// none (plaintext).
    pub tls: Option<TlsConfig>,
    pub cache: CacheConfig,
    pub limits: Limits,
    /// `ip:port` of the metrics listener: `/metrics` (Prometheus text
    /// format), `/healthz`, `/readyz`. Default: none (no listener, and
    /// requests are not counted per namespace).
    pub metrics_listen: Option<String>,
    /// Namespaces whose requests get series of their own (`tenant` and
    /// `namespace` labels); requests of the others are counted under
    /// `namespace="_other"`. Bounds the metrics' cardinality. Default
    /// 1 000; range 0..=100 000.
    pub metrics_max_namespaces: usize,
    /// How long a gateway that is shutting down keeps serving after it
    /// turned NOT_SERVING (gRPC health, `/readyz`) and deregistered, so
    /// load balancers and clients notice before connections close, in
    /// milliseconds. Default 0; at most 600 000.
    pub drain_delay_ms: u64,
    pub forwarding: ForwardingConfig,
    /// Experimental (issue 16): take part in migrations, and say so when
    /// registering (`migrate-key-value`, `migrate-key-value-to-embedded`,
    /// `migrate-time-series`), so the control plane starts them: KeyValue
    /// to postgres or to embedded storage on another instance, TimeSeries
    /// to any TimeSeries backend but embedded. Default `false`: the
    /// control plane refuses every migration, naming this gateway.
    pub experimental_migrations: bool,
    /// How many batches of a page a migration's backfill restores into
    /// its target at once (each a round trip, a transaction on
    /// PostgreSQL, holding a pool connection the target's live dual writes
    /// then wait for). More copies faster and slows live writes more
    /// (docs/benchmarks.md, "Live migration").
    /// Default 4; range 1..=64.
    pub migration_backfill_parallelism: usize,
    /// The most records a migration's backfill copies per second on this
    /// gateway, so that a large copy leaves room for the live traffic of
    /// the source and the target; 0 (default): as fast as it goes.
    pub migration_backfill_records_per_second: u64,
}

/// The `[gateway.forwarding]` table: what this gateway does with a call for
/// a namespace that another shard owns.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ForwardingConfig {
    /// Forward such a call to one of the owner's instances and relay its
    /// answer (`true`), or refuse it with FAILED_PRECONDITION / WRONG_SHARD
    /// naming the owner (`false`). Default `true`.
    pub enabled: bool,
    /// How `https://` peer gateways are reached: the CAs their
    /// certificates must chain to and the client certificate to present.
    /// Default: `control_plane_tls` when set, else the system CA bundle.
    pub tls: Option<ClientTlsConfig>,
}

impl Default for ForwardingConfig {
    fn default() -> Self {
        Self { enabled: true, tls: None }
    }
}

/// The `[gateway.control_plane_tls]` table.
pub use prism_tls::ClientTlsConfig;
/// The `[gateway.tls]` table: certificate, key and optionally the client
/// CA bundle (mutual TLS), all re-read when their files change.
pub use prism_tls::ServerTlsConfig as TlsConfig;

/// The `[gateway.auth]` table: a secret or a JWKS is required unless
/// `allow_anonymous` is set (callers without a token are then `anonymous`
/// with no roles, and still need grants).
pub use prism_auth::AuthConfig;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Bytes of record data the read cache holds at most. Default 64 MiB;
    /// 0 disables the cache.
    pub max_bytes: u64,
    /// Records larger than this are not cached. Default 1 MiB.
    pub max_record_bytes: u64,
    /// Bytes of the embedded store's own page cache (redb's) at most: the
    /// pages it read or wrote last, kept in memory; the rest are read from
    /// the file (and the OS's page cache). Resident memory grows with the
    /// stored data until this is full. Default 256 MiB; range
    /// 1 MiB..=1 TiB.
    pub store_bytes: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self { max_bytes: 64 << 20, max_record_bytes: 1 << 20, store_bytes: 256 << 20 }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Requests in flight at once; more are shed with UNAVAILABLE.
    /// Default 4096.
    pub max_in_flight: usize,
    /// Longest a request may take, in milliseconds (less when its caller's
    /// `grpc-timeout` is shorter); it is then answered UNAVAILABLE.
    /// Default 30 000.
    pub request_timeout_ms: u64,
    /// How far in the future an idempotency token's generation time may
    /// be, in milliseconds. Default 5 000.
    pub max_clock_skew_ms: u64,
    /// Values above this many bytes are stored in chunks. Default 1 MiB.
    pub chunk_threshold_bytes: u64,
    /// How often expired items are reclaimed, in seconds. Default 60.
    pub reclaim_interval_seconds: u64,
    /// Events `WriteEventRecords` may hold before they are written; more
    /// are refused with RESOURCE_EXHAUSTED. Default 65 536.
    pub write_buffer_events: usize,
    /// Tests only, never read from a file: time charged for every item a
    /// read puts on its page, as if the backend had taken that long
    /// (`prism_plugin_api::pace`), so a test makes pages end at their
    /// deadline the same way on any machine. Zero.
    #[serde(skip)]
    pub read_charge_per_item: Duration,
    /// Largest request message (its length as the gRPC frame declares it),
    /// in bytes. A larger one is refused with RESOURCE_EXHAUSTED naming
    /// this setting as soon as its 5-byte frame header arrives, before
    /// anything of it is buffered. A request in flight can hold up to this
    /// much memory while it arrives, so with `max_concurrent_streams` and
    /// `max_connections` it bounds what senders can pin. Default 75 497 472
    /// (72 MiB: the largest item, 64 MiB, and room for its request); range
    /// 65 536..=75 497 472.
    pub max_message_bytes: usize,
    /// Client connections open at once (counted once their TLS handshake,
    /// if any, completed; handshakes in progress are bounded on their own,
    /// 1 024 at most, each within 10 s). A connection over the limit is
    /// closed as soon as it is accepted: the client sees the connection
    /// fail (UNAVAILABLE) at once rather than wait. Keep it below the
    /// process's open-file limit (`ulimit -n`) less what the backends use.
    /// Default 10 000; range 1..=1 000 000.
    pub max_connections: usize,
    /// HTTP/2 streams (requests, tails) one connection may have open at
    /// once (`SETTINGS_MAX_CONCURRENT_STREAMS`). A client opening more gets
    /// those streams refused (`REFUSED_STREAM`, which gRPC clients retry
    /// or queue); well-behaved clients queue them. Default 256; range
    /// 1..=65 535.
    pub max_concurrent_streams: u32,
    /// Largest header block of one request (`SETTINGS_MAX_HEADER_LIST_SIZE`),
    /// in bytes: path, metadata, bearer token. A larger one is refused.
    /// Default 16 384; range 1 024..=1 048 576.
    pub max_header_list_bytes: u32,
    /// Longest a new connection may take to send the HTTP/2 connection
    /// preface (after its TLS handshake, if any), in milliseconds; a
    /// connection that says nothing, or too little, is closed then.
    /// Default 10 000; range 1..=600 000.
    pub handshake_timeout_ms: u64,
    /// Longest a request's message may take to arrive in full, counted from
    /// when the gateway first waits for it, in milliseconds. A request
    /// whose body stalls is answered UNAVAILABLE naming this setting and
    /// its stream released (slow or stalled senders cannot hold streams).
    /// Default 10 000; range 1..=600 000.
    pub request_read_timeout_ms: u64,
    /// How long a connection may stay silent before the gateway sends an
    /// HTTP/2 PING, in milliseconds. A client that does not answer within
    /// `keepalive_timeout_ms` is disconnected, so a peer that vanished, or
    /// one that opened a connection and went quiet, holds it about
    /// `keepalive_interval_ms + keepalive_timeout_ms`. Default 30 000;
    /// range 100..=86 400 000.
    pub keepalive_interval_ms: u64,
    /// How long the gateway waits for the answer to its PING, in
    /// milliseconds. Default 10 000; range 100..=600 000.
    pub keepalive_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_in_flight: 4096,
            request_timeout_ms: 30_000,
            max_clock_skew_ms: 5_000,
            chunk_threshold_bytes: 1 << 20,
            reclaim_interval_seconds: 60,
            write_buffer_events: 65_536,
            read_charge_per_item: Duration::ZERO,
            max_message_bytes: crate::limits::MAX_MESSAGE_BYTES,
            max_connections: 10_000,
            max_concurrent_streams: 256,
            max_header_list_bytes: 16 << 10,
            handshake_timeout_ms: 10_000,
            request_read_timeout_ms: 10_000,
            keepalive_interval_ms: 30_000,
            keepalive_timeout_ms: 10_000,
        }
    }
}

impl Limits {
    /// The connection and message limits' ranges: the wrong field and the
    /// range it must be within.
    fn validate_transport(&self) -> std::result::Result<(), (&'static str, &'static str)> {
        let within = |ok: bool, field, range| if ok { Ok(()) } else { Err((field, range)) };
        within(
            (64 << 10..=crate::limits::MAX_MESSAGE_BYTES).contains(&self.max_message_bytes),
            "max_message_bytes",
            "must be within 65536..=75497472",
        )?;
        within((1..=1_000_000).contains(&self.max_connections), "max_connections", "must be within 1..=1000000")?;
        within(
            (1..=65_535).contains(&self.max_concurrent_streams),
            "max_concurrent_streams",
            "must be within 1..=65535",
        )?;
        within(
            (1024..=1 << 20).contains(&self.max_header_list_bytes),
            "max_header_list_bytes",
            "must be within 1024..=1048576",
        )?;
        within(
            (1..=600_000).contains(&self.handshake_timeout_ms),
            "handshake_timeout_ms",
            "must be within 1..=600000",
        )?;
        within(
            (1..=600_000).contains(&self.request_read_timeout_ms),
            "request_read_timeout_ms",
            "must be within 1..=600000",
        )?;
        within(
            (100..=86_400_000).contains(&self.keepalive_interval_ms),
            "keepalive_interval_ms",
            "must be within 100..=86400000",
        )?;
        within(
            (100..=600_000).contains(&self.keepalive_timeout_ms),
            "keepalive_timeout_ms",
            "must be within 100..=600000",
        )
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            shard_id: String::new(),
            control_plane: "127.0.0.1:7400".into(),
            advertise_endpoint: None,
            usage_report_interval_ms: 5_000,
            storage_measure_interval_ms: 30_000,
            control_plane_token: None,
            control_plane_tls: None,
            control_plane_token_file: None,
            data_dir: None,
            postgres_tls_ca_file: None,
            auth: AuthConfig::default(),
            secrets: BTreeMap::new(),
            tls: None,
            cache: CacheConfig::default(),
            limits: Limits::default(),
            metrics_listen: None,
            metrics_max_namespaces: 1000,
            drain_delay_ms: 0,
            forwarding: ForwardingConfig::default(),
            experimental_migrations: false,
            migration_backfill_parallelism: 4,
            migration_backfill_records_per_second: 0,
        }
    }
}

impl GatewayConfig {
    pub fn from_toml(text: &str) -> Result<Self> {
        let config: Self = toml::from_str(text).map_err(|e| GatewayError::Config {
            field: e.span().map(|s| format!("bytes {}..{}", s.start, s.end)).unwrap_or_default(),
            description: e.message().to_owned(),
        })?;
        config.validate()?;
        Ok(config)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(|| PathBuf::from("prism-data").join(&self.shard_id))
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.limits.request_timeout_ms)
    }

    pub fn drain_delay(&self) -> Duration {
        Duration::from_millis(self.drain_delay_ms)
    }

    /// Reads the secret settings that name a file (`auth.hs256_secret_file`,
    /// `control_plane_token_file`) into their values; a gateway does it
    /// once, when it opens. Errors name the setting and the file, never
    /// the secret.
    pub fn read_secret_files(&mut self) -> Result<()> {
        if let Err(prism_auth::AuthError::Config { field, description }) = self.auth.read_secret_file() {
            return Err(GatewayError::Config { field: format!("auth.{field}"), description });
        }
        if let Some(path) = self.control_plane_token_file.take() {
            let token = prism_auth::read_secret(&path).map_err(|description| GatewayError::Config {
                field: "control_plane_token_file".into(),
                description,
            })?;
            if !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(GatewayError::Config {
                    field: "control_plane_token_file".into(),
                    description: format!("{} does not hold a bearer token (printable ASCII)", path.display()),
                });
            }
            self.control_plane_token = Some(token);
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, description: &str| GatewayError::Config {
            field: field.into(),
            description: description.into(),
        };
        if self.control_plane_token.is_some() && self.control_plane_token_file.is_some() {
            return Err(bad("control_plane_token_file", "cannot be set together with control_plane_token"));
        }
        prism_proto::names::validate_part(&self.shard_id).map_err(|e| bad("shard_id", &format!("shard id {e}")))?;
        prism_proto::names::validate_endpoint(&self.control_plane).map_err(|d| bad("control_plane", &d))?;
        if !(100..=600_000).contains(&self.usage_report_interval_ms) {
            return Err(bad("usage_report_interval_ms", "must be within 100..=600000"));
        }
        if !(1..=64).contains(&self.migration_backfill_parallelism) {
            return Err(bad("migration_backfill_parallelism", "must be within 1..=64"));
        }
        let tls_error = |e: prism_tls::TlsError, table: &str| {
            let e = e.within(table);
            GatewayError::Config { field: e.field().to_owned(), description: e.description().to_owned() }
        };
        if let Some(tls) = &self.tls {
            tls.validate().map_err(|e| tls_error(e, "tls"))?;
        }
        if let Some(tls) = &self.forwarding.tls {
            tls.validate().map_err(|e| tls_error(e, "forwarding.tls"))?;
        }
        if let Some(tls) = &self.control_plane_tls {
            tls.validate().map_err(|e| tls_error(e, "control_plane_tls"))?;
            if !self.control_plane.starts_with("https://") {
                return Err(bad("control_plane_tls", "is set but control_plane is not an https:// address"));
            }
        }
        if !(100..=3_600_000).contains(&self.storage_measure_interval_ms) {
            return Err(bad("storage_measure_interval_ms", "must be within 100..=3600000"));
        }
        if let Some(e) = &self.advertise_endpoint {
            prism_proto::names::validate_endpoint(e).map_err(|d| bad("advertise_endpoint", &d))?;
        }
        if !self.auth.verifies_tokens() && !self.auth.allow_anonymous {
            return Err(bad(
                "auth.hs256_secret",
                "is required, or auth.jwks_file / auth.jwks_url (or set auth.allow_anonymous for an insecure setup)",
            ));
        }
        if let Err(prism_auth::AuthError::Config { field, description }) = self.auth.validate() {
            return Err(bad(&format!("auth.{field}"), &description));
        }
        if let Err((field, description)) = Secrets::validate(&self.secrets) {
            return Err(bad(&format!("secrets.{field}"), &description));
        }
        if self.cache.max_record_bytes > self.cache.max_bytes && self.cache.max_bytes > 0 {
            return Err(bad("cache.max_record_bytes", "must not exceed cache.max_bytes"));
        }
        if !(1 << 20..=1 << 40).contains(&self.cache.store_bytes) {
            return Err(bad("cache.store_bytes", "must be within 1 MiB..=1 TiB"));
        }
        if self.limits.max_in_flight == 0 {
            return Err(bad("limits.max_in_flight", "must be at least 1"));
        }
        if self.limits.request_timeout_ms == 0 {
            return Err(bad("limits.request_timeout_ms", "must be at least 1"));
        }
        if !(1024..=64 << 20).contains(&self.limits.chunk_threshold_bytes) {
            return Err(bad("limits.chunk_threshold_bytes", "must be within 1 KiB..=64 MiB"));
        }
        if self.limits.write_buffer_events == 0 {
            return Err(bad("limits.write_buffer_events", "must be at least 1"));
        }
        if self.limits.reclaim_interval_seconds == 0 {
            return Err(bad("limits.reclaim_interval_seconds", "must be at least 1"));
        }
        self.limits.validate_transport().map_err(|(field, range)| bad(&format!("limits.{field}"), range))?;
        if let Some(addr) = &self.metrics_listen {
            prism_telemetry::http::parse_listen(addr).map_err(|d| bad("metrics_listen", &d))?;
        }
        if self.metrics_max_namespaces > 100_000 {
            return Err(bad("metrics_max_namespaces", "must be within 0..=100000"));
        }
        if self.drain_delay_ms > 600_000 {
            return Err(bad("drain_delay_ms", "must be within 0..=600000"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requires_a_secret_unless_anonymous_is_allowed() {
        let e = GatewayConfig::from_toml("shard_id = \"s0\"").expect_err("no secret");
        assert!(e.to_string().contains("auth.hs256_secret"), "{e}");
        let c = GatewayConfig::from_toml("shard_id = \"s0\"\n[auth]\nallow_anonymous = true").expect("valid");
        assert!(c.auth.allow_anonymous);
    }

    #[test]
    fn metrics_settings_are_checked() {
        let ok = "shard_id = \"s0\"\nmetrics_listen = \"127.0.0.1:9464\"\n[auth]\nallow_anonymous = true";
        let c = GatewayConfig::from_toml(ok).expect("valid");
        assert_eq!((c.metrics_listen.as_deref(), c.metrics_max_namespaces), (Some("127.0.0.1:9464"), 1000));
        for bad in
            ["metrics_listen = \"localhost\"", "metrics_listen = \"1.2.3.4:x\"", "metrics_max_namespaces = 100001"]
        {
            let text = format!("shard_id = \"s0\"\n{bad}\n[auth]\nallow_anonymous = true");
            let e = GatewayConfig::from_toml(&text).expect_err(bad);
            assert!(e.to_string().contains(bad.split(' ').next().unwrap_or_default()), "{e}");
        }
    }

    #[test]
    fn tls_settings_are_checked_by_shape() {
        let base = "shard_id = \"s0\"\n[auth]\nallow_anonymous = true\n";
        let e = GatewayConfig::from_toml(&format!(
            "{base}[tls]\ncert_file = \"c\"\nkey_file = \"k\"\nrequire_client_cert = true"
        ))
        .expect_err("no client CA");
        assert!(e.to_string().contains("tls.require_client_cert"), "{e}");
        let e = GatewayConfig::from_toml(&format!("control_plane_tls = {{ ca_file = \"ca\" }}\n{base}"))
            .expect_err("plain control plane");
        assert!(e.to_string().contains("control_plane_tls") && e.to_string().contains("https://"), "{e}");
        let e = GatewayConfig::from_toml(&format!(
            "control_plane = \"https://cp:7400\"\ncontrol_plane_tls = {{ cert_file = \"c\" }}\n{base}"
        ))
        .expect_err("a certificate without its key");
        assert!(e.to_string().contains("control_plane_tls.cert_file"), "{e}");
        GatewayConfig::from_toml(&format!(
            "control_plane = \"https://cp:7400\"\ncontrol_plane_tls = {{ ca_file = \"ca\" }}\n{base}"
        ))
        .expect("valid");
    }

    #[test]
    fn reads_the_secrets_table() {
        let base = "shard_id = \"s0\"\n[auth]\nallow_anonymous = true\n";
        let c = GatewayConfig::from_toml(&format!(
            "{base}[secrets.pg-acme]\nenv = \"PG_ACME_PASSWORD\"\ntenants = [\"acme\"]\n\
             [secrets.shared]\nfile = \"/run/secrets/pg\"\ntenants = [\"*\"]\n"
        ))
        .expect("valid");
        assert_eq!(c.secrets.len(), 2);
        assert_eq!(c.secrets["pg-acme"].env.as_deref(), Some("PG_ACME_PASSWORD"));
        let e = GatewayConfig::from_toml(&format!("{base}[secrets.x]\nenv = \"PG\"\n")).expect_err("no tenants");
        assert!(e.to_string().contains("tenants"), "{e}");
        let e = GatewayConfig::from_toml(&format!("{base}[secrets.x]\nenv = \"PG\"\ntenants = []\n"))
            .expect_err("empty tenants");
        assert!(e.to_string().contains("secrets.x.tenants"), "{e}");
        let e = GatewayConfig::from_toml(&format!("{base}[secrets.x]\nvalue = \"hunter2\"\ntenants = [\"*\"]\n"))
            .expect_err("inline values are not a source");
        assert!(e.to_string().contains("unknown field `value`"), "{e}");
    }

    #[test]
    fn forwarding_is_on_by_default_and_can_be_turned_off() {
        let base = "shard_id = \"s0\"\n[auth]\nallow_anonymous = true\n";
        let c = GatewayConfig::from_toml(base).expect("valid");
        assert!(c.forwarding.enabled && c.forwarding.tls.is_none());
        let c = GatewayConfig::from_toml(&format!("{base}[forwarding]\nenabled = false\n")).expect("valid");
        assert!(!c.forwarding.enabled);
        let e = GatewayConfig::from_toml(&format!("{base}[forwarding]\ntls = {{ cert_file = \"c\" }}\n"))
            .expect_err("a certificate without its key");
        assert!(e.to_string().contains("forwarding.tls.cert_file"), "{e}");
        let e = GatewayConfig::from_toml(&format!("{base}[forwarding]\nhops = 2\n")).expect_err("unknown");
        assert!(e.to_string().contains("unknown field `hops`"), "{e}");
    }

    #[test]
    fn connection_and_message_limits_have_defaults_and_ranges() {
        let base = "shard_id = \"s0\"\n[auth]\nallow_anonymous = true\n";
        let c = GatewayConfig::from_toml(base).expect("valid");
        let l = &c.limits;
        assert_eq!((l.max_message_bytes, l.max_connections, l.max_concurrent_streams), (72 << 20, 10_000, 256));
        assert_eq!(
            (l.max_header_list_bytes, l.handshake_timeout_ms, l.request_read_timeout_ms),
            (16384, 10_000, 10_000)
        );
        assert_eq!((l.keepalive_interval_ms, l.keepalive_timeout_ms), (30_000, 10_000));
        let c = GatewayConfig::from_toml(&format!(
            "{base}[limits]\nmax_message_bytes = 4194304\nmax_concurrent_streams = 100\n"
        ))
        .expect("valid");
        assert_eq!((c.limits.max_message_bytes, c.limits.max_concurrent_streams), (4 << 20, 100));
        for bad in [
            "max_message_bytes = 1024",
            "max_message_bytes = 75497473",
            "max_connections = 0",
            "max_concurrent_streams = 0",
            "max_concurrent_streams = 65536",
            "max_header_list_bytes = 100",
            "handshake_timeout_ms = 0",
            "request_read_timeout_ms = 600001",
            "keepalive_interval_ms = 10",
            "keepalive_timeout_ms = 0",
        ] {
            let e = GatewayConfig::from_toml(&format!("{base}[limits]\n{bad}\n")).expect_err(bad);
            let field = bad.split(' ').next().unwrap_or_default();
            assert!(e.to_string().contains(&format!("limits.{field}")), "{bad}: {e}");
        }
    }

    #[test]
    fn names_unknown_and_wrong_fields() {
        let e = GatewayConfig::from_toml("shard = \"s0\"").expect_err("unknown");
        assert!(e.to_string().contains("unknown field `shard`"), "{e}");
        let e = GatewayConfig::from_toml("shard_id = \"S0\"").expect_err("bad id");
        assert!(e.to_string().contains("shard_id"), "{e}");
        let e =
            GatewayConfig::from_toml("shard_id = \"s0\"\n[auth]\nallow_anonymous = true\n[cache]\nstore_bytes = 4096")
                .expect_err("small store cache");
        assert!(e.to_string().contains("cache.store_bytes"), "{e}");
        let c = GatewayConfig::from_toml(
            "shard_id = \"s0\"\n[auth]\nallow_anonymous = true\n[cache]\nstore_bytes = 16777216",
        )
        .expect("a store cache of 16 MiB");
        assert_eq!(c.cache.store_bytes, 16 << 20);
    }
}
