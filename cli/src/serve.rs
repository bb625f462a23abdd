//! The server commands: `prism control-plane`, `prism gateway` and
//! `prism dev` (a control plane and two gateway shards in one process,
//! embedded storage, a generated admin token). Configuration comes from the
//! config file, then the environment, then flags; it is validated last.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use prism_control_plane::{ControlPlaneConfig, server};
use prism_gateway::{Gateway, GatewayConfig};
use prism_tls::ServerTlsConfig;
use tokio::net::TcpListener;

use crate::config_file::ConfigFile;
use crate::error::usage;
use crate::shutdown_signal;

/// Where the control plane listens when nothing else is said.
pub const DEFAULT_LISTEN: &str = prism_client::DEFAULT_CONTROL_PLANE;
/// `prism dev`'s first port: the control plane; the shards take the next two.
pub const DEV_PORT: u16 = 7400;
/// Shard ids `prism dev` runs.
pub const DEV_SHARDS: [&str; 2] = ["shard-0", "shard-1"];

#[derive(Debug, Clone, Args)]
pub struct ControlPlaneArgs {
    /// prism config file (its [control_plane] table)
    #[arg(long, value_name = "FILE", env = "PRISM_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to serve gRPC on
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_LISTEN)]
    pub listen: String,
    /// Directory of the metadata store (overrides the file)
    #[arg(long, value_name = "DIR", env = "PRISM_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// A shard id new namespaces are assigned to (repeat for more; replaces the file's list)
    #[arg(long = "shard", value_name = "ID")]
    pub shards: Vec<String>,
    /// PostgreSQL DSN of a shared metadata store, instead of the embedded one (overrides the file)
    #[arg(long = "store", value_name = "DSN", env = "PRISM_CONTROL_PLANE_STORE", hide_env_values = true)]
    pub store: Option<String>,
    /// Address (ip:port) to serve /metrics, /healthz and /readyz on (overrides the file)
    #[arg(long, value_name = "ADDR", env = "PRISM_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// Address (ip:port) to serve the operator console on (overrides the file; default: on the metrics listener)
    #[arg(long, value_name = "ADDR", env = "PRISM_CONSOLE_LISTEN")]
    pub console_listen: Option<String>,
    /// Serve without any key: every caller may do everything (INSECURE; tests and experiments only)
    #[arg(long)]
    pub insecure_no_auth: bool,
    #[command(flatten)]
    pub tls: ServerTlsArgs,
    #[command(flatten)]
    pub secret: AuthSecretArgs,
}

/// TLS on a server's gRPC port: the flags of `prism control-plane` and
/// `prism gateway`, overriding the file's `tls` table field by field.
#[derive(Debug, Clone, Default, Args)]
pub struct ServerTlsArgs {
    /// Serve TLS with this PEM certificate chain (with --tls-key; re-read when it changes)
    #[arg(long, value_name = "FILE", env = "PRISM_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert
    #[arg(long, value_name = "FILE", env = "PRISM_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Accept client certificates signed by these PEM CA certificates (mutual TLS)
    #[arg(long, value_name = "FILE", env = "PRISM_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// Refuse connections without such a client certificate
    #[arg(long)]
    pub tls_require_client_cert: bool,
}

impl ServerTlsArgs {
    /// `file`'s TLS table with the flags applied.
    fn apply(&self, file: Option<ServerTlsConfig>) -> anyhow::Result<Option<ServerTlsConfig>> {
        let given = self.tls_cert.is_some()
            || self.tls_key.is_some()
            || self.tls_client_ca.is_some()
            || self.tls_require_client_cert;
        if !given {
            return Ok(file);
        }
        let cert_file = self.tls_cert.clone().or_else(|| file.as_ref().map(|t| t.cert_file.clone()));
        let key_file = self.tls_key.clone().or_else(|| file.as_ref().map(|t| t.key_file.clone()));
        let (Some(cert_file), Some(key_file)) = (cert_file, key_file) else {
            return Err(usage("TLS needs both --tls-cert and --tls-key (or tls.cert_file and tls.key_file)"));
        };
        Ok(Some(ServerTlsConfig {
            cert_file,
            key_file,
            client_ca_file: self.tls_client_ca.clone().or_else(|| file.as_ref().and_then(|t| t.client_ca_file.clone())),
            require_client_cert: self.tls_require_client_cert || file.is_some_and(|t| t.require_client_cert),
        }))
    }
}

/// Where a server's HS256 secret comes from, besides the config file.
#[derive(Debug, Clone, Default, Args)]
pub struct AuthSecretArgs {
    /// HS256 secret of bearer tokens, at least 32 bytes (prefer the env var or --auth-secret-file: flags show in `ps`)
    #[arg(long, value_name = "SECRET", env = "PRISM_AUTH_SECRET", hide_env_values = true)]
    pub auth_secret: Option<String>,
    /// A file holding the HS256 secret (read at startup)
    #[arg(long, value_name = "FILE", env = "PRISM_AUTH_SECRET_FILE", conflicts_with = "auth_secret")]
    pub auth_secret_file: Option<PathBuf>,
}

impl AuthSecretArgs {
    /// Replaces the file's secret setting, if a flag or variable gives one.
    fn apply(&self, auth: &mut prism_gateway::config::AuthConfig) {
        if let Some(secret) = &self.auth_secret {
            auth.hs256_secret = Some(secret.as_str().into());
            auth.hs256_secret_file = None;
        }
        if let Some(path) = &self.auth_secret_file {
            auth.hs256_secret_file = Some(path.clone());
            auth.hs256_secret = None;
        }
    }
}

impl ControlPlaneArgs {
    /// The configuration: the file's (or defaults), then `PRISM_DATA_DIR`
    /// and the flags (clap has already let a flag win over the
    /// environment), validated.
    pub fn config(&self) -> anyhow::Result<ControlPlaneConfig> {
        let mut config = ConfigFile::load(self.config.as_deref())?.control_plane.unwrap_or_default();
        if let Some(dir) = &self.data_dir {
            config.data_dir.clone_from(dir);
        }
        if !self.shards.is_empty() {
            config.shards.clone_from(&self.shards);
        }
        if let Some(dsn) = &self.store {
            config.store = Some(dsn.clone());
        }
        if let Some(addr) = &self.metrics_listen {
            config.metrics_listen = Some(addr.clone());
        }
        if let Some(addr) = &self.console_listen {
            config.console_listen = Some(addr.clone());
        }
        config.insecure_no_auth |= self.insecure_no_auth;
        config.tls = self.tls.apply(config.tls.take())?;
        self.secret.apply(&mut config.auth);
        config.validate().map_err(|e| usage(e.to_string()))?;
        Ok(config)
    }
}

/// Serves the control plane until Ctrl-C or SIGTERM.
pub async fn run(args: ControlPlaneArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    let data_dir = config.data_dir.clone();
    let listener =
        TcpListener::bind(&args.listen).await.with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr().context("listener address")?;
    let metrics = bind_metrics(config.metrics_listen.as_deref()).await?;
    let console = match config.console_listen.as_deref().filter(|_| config.console) {
        Some(addr) => {
            Some(TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr} (console_listen)"))?)
        }
        None => None,
    };
    let console_at = match (&console, &metrics) {
        _ if !config.console => None,
        (Some(l), _) | (None, Some(l)) => l.local_addr().ok(),
        (None, None) => None,
    };
    // Read before saying where it serves: a bad file stops it here.
    let tls = server::load_tls(&config).map_err(|e| usage(e.to_string()))?;
    let plane = if config.store.is_some() {
        // The DSN may hold a password: not for messages.
        server::open(config).await.context("cannot open the metadata store database")?
    } else {
        server::open(config)
            .await
            .with_context(|| format!("cannot open the metadata store in {}", data_dir.display()))?
    };
    let scheme = if tls.is_some() { "https://" } else { "" };
    let console_line = console_at.map(|a| format!("console on {}\n", console_url(a))).unwrap_or_default();
    crate::output::print(&format!(
        "control plane serving on {scheme}{addr}\n{}{console_line}",
        metrics_line(metrics.as_ref())
    ))?;
    server::serve_all(plane, listener, tls, server::HttpListeners { metrics, console }, shutdown_signal()).await?;
    tracing::info!("control plane stopped");
    Ok(())
}

#[derive(Debug, Clone, Args)]
pub struct GatewayArgs {
    /// prism config file (its [gateway] table)
    #[arg(long, value_name = "FILE", env = "PRISM_CONFIG")]
    pub config: Option<PathBuf>,
    /// The shard this gateway serves
    #[arg(long, value_name = "ID", env = "PRISM_SHARD_ID")]
    pub shard_id: Option<String>,
    /// Control plane address
    #[arg(long, value_name = "ADDR", env = "PRISM_CONTROL_PLANE")]
    pub control_plane: Option<String>,
    /// Address to serve gRPC on
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7401")]
    pub listen: String,
    /// host:port clients reach this gateway at, registered with the control plane (default: the listen address)
    #[arg(long, value_name = "HOST:PORT", env = "PRISM_ADVERTISE_ENDPOINT")]
    pub advertise_endpoint: Option<String>,
    /// Directory of the embedded backend's data (default ./prism-data/<shard-id>)
    #[arg(long, value_name = "DIR", env = "PRISM_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    #[command(flatten)]
    pub secret: AuthSecretArgs,
    /// Token presented to the control plane, with role `shard` (prefer the env var or the file)
    #[arg(long, value_name = "TOKEN", env = "PRISM_CONTROL_PLANE_TOKEN", hide_env_values = true)]
    pub control_plane_token: Option<String>,
    /// A file holding the token presented to the control plane (read at startup)
    #[arg(long, value_name = "FILE", env = "PRISM_CONTROL_PLANE_TOKEN_FILE", conflicts_with = "control_plane_token")]
    pub control_plane_token_file: Option<PathBuf>,
    /// Serve callers without a token as `anonymous` (insecure)
    #[arg(long)]
    pub allow_anonymous: bool,
    /// Address (ip:port) to serve /metrics, /healthz and /readyz on (overrides the file)
    #[arg(long, value_name = "ADDR", env = "PRISM_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    #[command(flatten)]
    pub tls: ServerTlsArgs,
    /// PEM CA certificates an https:// control plane must chain to (default: the system bundle)
    #[arg(long, value_name = "FILE", env = "PRISM_CONTROL_PLANE_CA")]
    pub control_plane_ca: Option<PathBuf>,
    /// PEM client certificate presented to an https:// control plane (with --control-plane-key)
    #[arg(long, value_name = "FILE", env = "PRISM_CONTROL_PLANE_CERT")]
    pub control_plane_cert: Option<PathBuf>,
    /// PEM private key of --control-plane-cert
    #[arg(long, value_name = "FILE", env = "PRISM_CONTROL_PLANE_KEY")]
    pub control_plane_key: Option<PathBuf>,
    /// Forward calls for namespaces of other shards to their owner (false: refuse them with WRONG_SHARD) [default: true]
    #[arg(long, value_name = "BOOL", env = "PRISM_FORWARDING")]
    pub forwarding: Option<bool>,
}

impl GatewayArgs {
    pub fn config(&self) -> anyhow::Result<GatewayConfig> {
        let mut config = ConfigFile::load(self.config.as_deref())?.gateway.unwrap_or_default();
        if let Some(id) = &self.shard_id {
            config.shard_id.clone_from(id);
        }
        if let Some(cp) = &self.control_plane {
            config.control_plane.clone_from(cp);
        }
        if let Some(dir) = &self.data_dir {
            config.data_dir = Some(dir.clone());
        }
        if let Some(endpoint) = &self.advertise_endpoint {
            config.advertise_endpoint = Some(endpoint.clone());
        }
        self.secret.apply(&mut config.auth);
        if let Some(token) = &self.control_plane_token {
            config.control_plane_token = Some(token.as_str().into());
            config.control_plane_token_file = None;
        }
        if let Some(path) = &self.control_plane_token_file {
            config.control_plane_token_file = Some(path.clone());
            config.control_plane_token = None;
        }
        config.auth.allow_anonymous |= self.allow_anonymous;
        if let Some(addr) = &self.metrics_listen {
            config.metrics_listen = Some(addr.clone());
        }
        if let Some(on) = self.forwarding {
            config.forwarding.enabled = on;
        }
        config.tls = self.tls.apply(config.tls.take())?;
        let flags = [&self.control_plane_ca, &self.control_plane_cert, &self.control_plane_key];
        if flags.iter().any(|f| f.is_some()) {
            let mut tls = config.control_plane_tls.take().unwrap_or_default();
            for (flag, field) in flags.into_iter().zip([&mut tls.ca_file, &mut tls.cert_file, &mut tls.key_file]) {
                if flag.is_some() {
                    field.clone_from(flag);
                }
            }
            config.control_plane_tls = Some(tls);
        }
        config.validate().map_err(|e| usage(e.to_string()))?;
        Ok(config)
    }
}

/// Serves a gateway shard until Ctrl-C or SIGTERM.
pub async fn gateway(args: GatewayArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    let listener =
        TcpListener::bind(&args.listen).await.with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr().context("listener address")?;
    let metrics = bind_metrics(config.metrics_listen.as_deref()).await?;
    let shard = config.shard_id.clone();
    let gateway = Gateway::open(config).map_err(|e| match e {
        // A TLS file the gateway cannot use is the operator's to fix.
        prism_gateway::GatewayError::Config { .. } => usage(e.to_string()),
        e => anyhow::Error::new(e).context("cannot open the gateway"),
    })?;
    let scheme = if gateway.tls.is_some() { "https://" } else { "" };
    crate::output::print(&format!("gateway {shard} serving on {scheme}{addr}\n{}", metrics_line(metrics.as_ref())))?;
    gateway.serve_with_metrics(listener, metrics, shutdown_signal()).await?;
    tracing::info!("gateway stopped");
    Ok(())
}

/// Binds the metrics listener a configuration names, if any.
async fn bind_metrics(addr: Option<&str>) -> anyhow::Result<Option<TcpListener>> {
    let Some(addr) = addr else { return Ok(None) };
    let listener =
        TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr} (metrics_listen)"))?;
    Ok(Some(listener))
}

/// Where the console of a control plane whose console is on `addr` is.
fn console_url(addr: SocketAddr) -> String {
    format!("http://{addr}{}/", prism_control_plane::console::PREFIX)
}

/// "metrics on …" for a server's start-up lines.
fn metrics_line(listener: Option<&TcpListener>) -> String {
    match listener.and_then(|l| l.local_addr().ok()) {
        Some(addr) => format!("metrics on http://{addr}/metrics (and /healthz, /readyz)\n"),
        None => String::new(),
    }
}

#[derive(Debug, Clone, Args)]
pub struct DevArgs {
    /// Where everything is stored
    #[arg(long, value_name = "DIR", env = "PRISM_DATA_DIR", default_value = "prism-data")]
    pub data_dir: PathBuf,
    /// Address to listen on
    #[arg(long, value_name = "IP", default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// The control plane's port; shard-0 and shard-1 take the next two
    #[arg(long, value_name = "PORT", default_value_t = DEV_PORT)]
    pub port: u16,
    /// The control plane's metrics port (/metrics, /healthz, /readyz); the shards' take the next two (default: --port + 3)
    #[arg(long, value_name = "PORT")]
    pub metrics_port: Option<u16>,
    /// Serve no metrics (and count no requests per namespace)
    #[arg(long, conflicts_with = "metrics_port")]
    pub no_metrics: bool,
    /// Bytes of each shard's embedded store page cache (a gateway's
    /// `cache.store_bytes`; default 256 MiB)
    #[arg(long, value_name = "BYTES")]
    pub store_cache_bytes: Option<u64>,
    /// Let the shards take part in live migrations (`prism namespace migrate`; issue 16)
    #[arg(long)]
    pub experimental_migrations: bool,
}

/// The dev token's lifetime.
const DEV_TOKEN_SECONDS: u64 = 30 * 24 * 3600;

/// The dev HS256 secret, made once and kept in the data directory so
/// tokens stay valid across restarts.
fn dev_secret(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join("dev-secret");
    match std::fs::read_to_string(&path) {
        Ok(s) if s.trim().len() >= 32 => return Ok(s.trim().to_owned()),
        Ok(_) => anyhow::bail!("{} is too short; delete it to make a new one", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    let secret: String = (0..32).map(|_| format!("{:02x}", rand::random::<u8>())).collect();
    std::fs::create_dir_all(data_dir).with_context(|| format!("cannot create {}", data_dir.display()))?;
    std::fs::write(&path, &secret).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(secret)
}

/// Runs a control plane and two gateway shards in this process until
/// Ctrl-C, printing the endpoints and a dev admin token.
pub async fn dev(args: DevArgs) -> anyhow::Result<()> {
    let port = |offset: u16| {
        args.port.checked_add(offset).map(|p| SocketAddr::new(args.host, p)).ok_or_else(|| usage("--port is too high"))
    };
    let secret = dev_secret(&args.data_dir)?;
    let token = prism_gateway::auth::mint_hs256(&secret, "dev-admin", None, &["admin"], DEV_TOKEN_SECONDS)?;

    let cp_addr = port(0)?;
    let shard_addrs = [port(1)?, port(2)?];
    // Metrics listeners next to the gRPC ones: control plane, shard-0, shard-1.
    let metrics_addrs = match (args.no_metrics, args.metrics_port) {
        (true, _) => None,
        (false, first) => {
            let first =
                first.map_or_else(|| args.port.checked_add(3), Some).ok_or_else(|| usage("--port is too high"))?;
            let at = |offset: u16| {
                first
                    .checked_add(offset)
                    .map(|p| SocketAddr::new(args.host, p))
                    .ok_or_else(|| usage("--metrics-port is too high"))
            };
            Some([at(0)?, at(1)?, at(2)?])
        }
    };
    let metrics_listener = |i: usize| {
        let addr = metrics_addrs.map(|a| a[i]);
        async move {
            match addr {
                Some(addr) => Ok::<_, anyhow::Error>(Some(
                    TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr} (metrics)"))?,
                )),
                None => Ok(None),
            }
        }
    };
    let mut cp_config = ControlPlaneConfig {
        data_dir: args.data_dir.join("control-plane"),
        shards: DEV_SHARDS.map(str::to_owned).to_vec(),
        ..ControlPlaneConfig::default()
    };
    // The shards are static (namespaces are assigned to them even before
    // the gateways are up); their endpoints come from registration.
    cp_config.auth.hs256_secret = Some(secret.as_str().into());
    let cp_listener = TcpListener::bind(cp_addr).await.with_context(|| format!("cannot listen on {cp_addr}"))?;
    let cp_metrics = metrics_listener(0).await?;
    let plane = server::open(cp_config).await.context("cannot open the control plane's store")?;

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until_stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(async move {
        server::serve_with_metrics(plane, cp_listener, cp_metrics, until_stopped(stopped.clone()))
            .await
            .map_err(anyhow::Error::from)
    });
    let mut lines = vec![format!("  control plane    {cp_addr:<16} tenants, namespaces, audit (prism.control.v1)")];
    for (i, (shard, addr)) in DEV_SHARDS.iter().zip(shard_addrs).enumerate() {
        let mut config = GatewayConfig {
            shard_id: (*shard).to_owned(),
            control_plane: cp_addr.to_string(),
            data_dir: Some(args.data_dir.join(shard)),
            ..GatewayConfig::default()
        };
        config.auth.hs256_secret = Some(secret.as_str().into());
        if let Some(bytes) = args.store_cache_bytes {
            config.cache.store_bytes = bytes;
        }
        config.experimental_migrations = args.experimental_migrations;
        // Each shard calls the control plane (watch, status reports) as itself.
        config.control_plane_token =
            Some(prism_gateway::auth::mint_hs256(&secret, shard, None, &["shard"], DEV_TOKEN_SECONDS)?.into());
        let listener = TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
        let gateway = Gateway::open(config).with_context(|| format!("cannot open gateway {shard}"))?;
        let metrics = metrics_listener(i + 1).await?;
        let rx = stop.subscribe();
        tasks.spawn(async move {
            gateway.serve_with_metrics(listener, metrics, until_stopped(rx)).await.map_err(anyhow::Error::from)
        });
        lines.push(format!("  gateway {shard}  {addr:<16} KeyValue, TimeSeries (prism.kv.v1, prism.timeseries.v1)"));
    }

    if let Some([cp, s0, s1]) = metrics_addrs {
        lines.push(format!(
            "  metrics          http://{cp}/metrics (control plane), http://{s0}/metrics (shard-0), \
             http://{s1}/metrics (shard-1); /healthz and /readyz on each"
        ));
        lines.push(format!("  console          {} (sign in with the PRISM_TOKEN below)", console_url(cp)));
    }
    let endpoint = if cp_addr.to_string() == DEFAULT_LISTEN {
        String::new()
    } else {
        format!("export PRISM_ENDPOINT={cp_addr}\n")
    };
    let secret_file = args.data_dir.join("dev-secret");
    crate::output::print(&format!(
        "prism dev is running; data in {}\n{}\n\n{endpoint}export PRISM_TOKEN={token}\n\nthen, in another terminal:\n  \
         prism tenant create acme\n  \
         prism namespace create acme/profiles --abstraction key-value --wait\n  \
         prism kv put acme/profiles user-1 name=Ada && prism kv get acme/profiles user-1\n\n\
         tokens for other principals, e.g. svc-a of tenant acme (grant it with prism namespace grant acme/profiles acme:svc-a):\n  \
         prism token create --secret-file {} --sub svc-a --tenant acme --ttl 24h\n",
        args.data_dir.display(),
        lines.join("\n"),
        secret_file.display(),
    ))?;

    // Run until a signal, or until any server fails.
    let failed = tokio::select! {
        () = shutdown_signal() => None,
        Some(done) = tasks.join_next() => Some(done),
    };
    let _ = stop.send(true);
    while let Some(done) = tasks.join_next().await {
        done.context("server task")??;
    }
    if let Some(done) = failed {
        done.context("server task")??;
        anyhow::bail!("a server stopped unexpectedly");
    }
    tracing::info!("prism dev stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> ControlPlaneArgs {
        ControlPlaneArgs {
            config: None,
            listen: DEFAULT_LISTEN.into(),
            data_dir: None,
            shards: Vec::new(),
            store: None,
            metrics_listen: None,
            console_listen: None,
            insecure_no_auth: true,
            tls: ServerTlsArgs::default(),
            secret: AuthSecretArgs::default(),
        }
    }

    #[test]
    fn flags_override_the_file() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("prism.toml");
        std::fs::write(&file, "[control_plane]\ndata_dir = \"from-file\"\nshards = [\"a\"]\nwatch_buffer = 8\n")?;
        let from_file = ControlPlaneArgs { config: Some(file.clone()), ..args() }.config()?;
        assert_eq!(
            (from_file.data_dir, from_file.shards, from_file.watch_buffer),
            ("from-file".into(), vec!["a".to_owned()], 8)
        );
        let flags = ControlPlaneArgs {
            config: Some(file),
            data_dir: Some("from-flag".into()),
            shards: vec!["b".into(), "c".into()],
            ..args()
        }
        .config()?;
        assert_eq!(
            (flags.data_dir, flags.shards, flags.watch_buffer),
            ("from-flag".into(), vec!["b".to_owned(), "c".to_owned()], 8)
        );
        Ok(())
    }

    #[test]
    fn a_flag_mends_a_bad_file_value() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("prism.toml");
        std::fs::write(&file, "[control_plane]\nshards = [\"Bad\"]\n")?;
        let err = ControlPlaneArgs { config: Some(file.clone()), ..args() }.config().expect_err("bad shard");
        assert!(err.to_string().contains("shards[0]"), "{err}");
        ControlPlaneArgs { config: Some(file), shards: vec!["good".into()], ..args() }.config()?;
        Ok(())
    }

    #[test]
    fn bad_settings_are_usage_errors_naming_the_field() {
        let err = ControlPlaneArgs { shards: vec!["Bad".into()], ..args() }.config().expect_err("bad shard id");
        assert!(err.to_string().contains("shards[0]"), "{err}");
        assert_eq!(crate::error::exit_code(&err), crate::error::EXIT_USAGE);
    }

    #[test]
    fn a_bad_metrics_address_is_a_usage_error_naming_it() {
        let err =
            ControlPlaneArgs { metrics_listen: Some("not-an-address".into()), ..args() }.config().expect_err("bad");
        assert!(err.to_string().contains("metrics_listen"), "{err}");
        assert_eq!(crate::error::exit_code(&err), crate::error::EXIT_USAGE);
    }

    #[test]
    fn a_control_plane_without_a_key_needs_the_insecure_flag() {
        let err = ControlPlaneArgs { insecure_no_auth: false, ..args() }.config().expect_err("no key");
        assert!(err.to_string().contains("--insecure-no-auth"), "{err}");
        assert_eq!(crate::error::exit_code(&err), crate::error::EXIT_USAGE);
    }

    #[test]
    fn tls_flags_override_the_file_field_by_field() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("prism.toml");
        std::fs::write(&file, "[control_plane]\ntls = { cert_file = \"file.crt\", key_file = \"file.key\" }\n")?;
        let tls = ServerTlsArgs { tls_cert: Some("flag.crt".into()), ..ServerTlsArgs::default() };
        let config = ControlPlaneArgs { config: Some(file), tls, ..args() }.config()?;
        let tls = config.tls.context("tls")?;
        assert_eq!((tls.cert_file, tls.key_file), ("flag.crt".into(), "file.key".into()));
        let half = ServerTlsArgs { tls_key: Some("k".into()), ..ServerTlsArgs::default() };
        let err = ControlPlaneArgs { tls: half, ..args() }.config().expect_err("a key without a certificate");
        assert!(err.to_string().contains("--tls-cert"), "{err}");
        Ok(())
    }

    #[test]
    fn gateways_need_a_secret_or_explicit_anonymous_access() {
        let g = GatewayArgs {
            config: None,
            shard_id: Some("shard-0".into()),
            control_plane: None,
            listen: "127.0.0.1:0".into(),
            advertise_endpoint: None,
            data_dir: None,
            secret: AuthSecretArgs::default(),
            control_plane_token: None,
            control_plane_token_file: None,
            allow_anonymous: false,
            metrics_listen: None,
            tls: ServerTlsArgs::default(),
            control_plane_ca: None,
            control_plane_cert: None,
            control_plane_key: None,
            forwarding: None,
        };
        let err = g.config().expect_err("no secret");
        assert!(err.to_string().contains("auth.hs256_secret"), "{err}");
        assert!(GatewayArgs { allow_anonymous: true, ..g.clone() }.config().is_ok());
        let secret = |s: &str| AuthSecretArgs { auth_secret: Some(s.into()), auth_secret_file: None };
        let err = GatewayArgs { secret: secret("0123456789abcdef-secret"), ..g.clone() }.config().expect_err("weak");
        assert!(err.to_string().contains("auth.hs256_secret: is a 23-byte secret"), "{err}");
        let good = GatewayArgs { secret: secret("0123456789abcdef0123456789abcdef"), ..g };
        assert!(good.config().is_ok_and(|c| c.forwarding.enabled), "forwarding is on by default");
        let off = GatewayArgs { forwarding: Some(false), ..good }.config();
        assert!(off.is_ok_and(|c| !c.forwarding.enabled), "--forwarding false turns it off");
    }

    #[test]
    fn secret_settings_come_from_files_named_by_flags() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let (secret, token) = (dir.path().join("secret"), dir.path().join("token"));
        std::fs::write(&secret, "0123456789abcdef0123456789abcdef\n")?;
        std::fs::write(&token, "eyJhbGciOiJIUzI1NiJ9.e30.sig\n")?;
        let file = dir.path().join("prism.toml");
        std::fs::write(&file, "[gateway]\nshard_id = \"shard-0\"\ncontrol_plane_token = \"from-the-file\"\n")?;
        let g = GatewayArgs {
            config: Some(file),
            shard_id: None,
            control_plane: None,
            listen: "127.0.0.1:0".into(),
            advertise_endpoint: None,
            data_dir: Some(dir.path().join("data")),
            secret: AuthSecretArgs { auth_secret: None, auth_secret_file: Some(secret) },
            control_plane_token: None,
            control_plane_token_file: Some(token),
            allow_anonymous: false,
            metrics_listen: None,
            tls: ServerTlsArgs::default(),
            control_plane_ca: None,
            control_plane_cert: None,
            control_plane_key: None,
            forwarding: None,
        };
        let mut config = g.config()?;
        assert_eq!(config.control_plane_token, None, "the flag's file replaces the file's token");
        config.read_secret_files()?;
        assert_eq!(config.auth.hs256_secret.as_deref(), Some("0123456789abcdef0123456789abcdef"));
        assert_eq!(config.control_plane_token.as_deref(), Some("eyJhbGciOiJIUzI1NiJ9.e30.sig"));
        let missing = GatewayArgs { control_plane_token_file: Some(dir.path().join("nope")), ..g };
        let err = missing.config()?.read_secret_files().expect_err("unreadable");
        assert!(err.to_string().contains("control_plane_token_file") && err.to_string().contains("nope"), "{err}");
        Ok(())
    }
}
