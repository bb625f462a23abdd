//! The `prism` command line as a library: the flags of every subcommand
//! (clap derive) and the code behind them, so `main.rs` stays thin and
//! tests can call the same code.
//!
//! - [`serve`]: `prism dev`, `prism control-plane`, `prism gateway`
//!   (configured by [`config_file`], the environment and flags).
//! - [`tenant`], [`namespace`] (and [`migrate`]), [`shard`], [`audit`]: admin commands over
//!   gRPC.
//! - [`schema`]: `prism schema set|get|history`, TimeSeries event schemas.
//! - [`kv`], [`ts`]: KeyValue and TimeSeries calls, routed by
//!   `prism-client` to the gateway shard that owns the namespace.
//! - [`token`]: `prism token create`, signing HS256 tokens locally.
//! - [`spec_file`], [`spec_flags`]: a namespace spec from a file or flags;
//!   [`backend_settings`]: their per-backend parts (and JSON's), from the
//!   backends' descriptions.
//! - [`output`], [`json`]: tables and JSON; [`error`]: what a failure prints.
//!
//! Spec files in the ADR-006 shape map to `NamespaceSpec` (unknown fields
//! are errors); a test runs clap's `debug_assert`, so no backend's flag
//! collides with another. Data commands resolve on demand, with no watch
//! (one command makes few calls; `--gateway` is where routing starts).
//! `prism shard list` joins ListShards with ListNamespaces counts per
//! `shard_id`; `prism token create` signs locally from the deployment's
//! secret file (nothing is sent). The server commands take every secret
//! setting from the file, the environment or a flag, by value or by file
//! (`--auth-secret-file`, `--control-plane-token-file`, `PRISM_*_FILE`).

pub mod audit;
pub mod backend_settings;
pub mod config_file;
pub mod error;
pub mod flags;
pub mod json;
pub mod kv;
pub mod migrate;
pub mod namespace;
pub mod output;
pub mod schema;
pub mod serve;
pub mod shard;
pub mod spec_file;
pub mod spec_flags;
pub mod tenant;
pub mod token;
pub mod ts;
pub mod usage;

use clap::{Args, Parser, Subcommand};
use prism_client::ControlPlaneClient;

pub use output::Format;

/// Prism, a sharded data gateway: run its servers and administer its
/// tenants and namespaces.
#[derive(Debug, Parser)]
#[command(name = "prism", version, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every admin command takes.
#[derive(Debug, Clone, Args)]
pub struct Global {
    /// Control plane address: host:port, http://host:port, or https://host:port for TLS
    #[arg(long, global = true, env = "PRISM_ENDPOINT", default_value = prism_client::DEFAULT_CONTROL_PLANE)]
    pub endpoint: String,
    /// Bearer token sent with every request
    #[arg(long, global = true, env = "PRISM_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM CA certificates that https:// servers must chain to (default: the system bundle)
    #[arg(long, global = true, value_name = "FILE", env = "PRISM_CA_FILE")]
    pub ca_file: Option<std::path::PathBuf>,
    /// PEM client certificate presented to https:// servers that ask for one (with --client-key)
    #[arg(long, global = true, value_name = "FILE", env = "PRISM_CLIENT_CERT")]
    pub client_cert: Option<std::path::PathBuf>,
    /// PEM private key of --client-cert
    #[arg(long, global = true, value_name = "FILE", env = "PRISM_CLIENT_KEY")]
    pub client_key: Option<std::path::PathBuf>,
    /// How results are printed
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

impl Global {
    /// How `https://` endpoints are reached: `--ca-file`, `--client-cert`
    /// and `--client-key`, read now (a bad file is a usage error naming
    /// the flag and the file).
    pub fn tls(&self) -> anyhow::Result<prism_client::Tls> {
        let config = prism_client::ClientTlsConfig {
            ca_file: self.ca_file.clone(),
            cert_file: self.client_cert.clone(),
            key_file: self.client_key.clone(),
        };
        if config == prism_client::ClientTlsConfig::default() {
            // The system bundle, read only if an https:// endpoint is used.
            return Ok(prism_client::Tls::default());
        }
        prism_client::Tls::new(&config).map_err(|e| match e {
            prism_client::ClientError::Tls(e) => {
                let flag = match e.field() {
                    "ca_file" => "--ca-file",
                    "cert_file" => "--client-cert",
                    _ => "--client-key",
                };
                error::usage(format!("{flag}: {}", e.description()))
            }
            other => other.into(),
        })
    }

    /// A client of the control plane at `--endpoint`.
    pub async fn connect(&self) -> anyhow::Result<ControlPlaneClient> {
        Ok(prism_client::control_plane_with(&self.endpoint, self.token.as_deref(), &self.tls()?).await?)
    }

    /// A routing client for data calls: it asks the control plane at
    /// `--endpoint` which shard owns a namespace (or starts at `gateway`
    /// when given), follows redirects and retries. One command makes few
    /// calls, so it resolves on demand instead of watching.
    pub fn prism(&self, gateway: Option<&str>) -> anyhow::Result<prism_client::Prism> {
        Ok(prism_client::Prism::builder(&self.endpoint)
            .token(self.token.as_deref())
            .tls(self.tls()?)
            .watch(false)
            .gateway(gateway)
            .build()?)
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a control plane and two gateway shards in this process (embedded storage)
    Dev(serve::DevArgs),
    /// Run the control plane
    ControlPlane(serve::ControlPlaneArgs),
    /// Run a gateway shard
    Gateway(serve::GatewayArgs),
    /// Manage tenants
    #[command(subcommand)]
    Tenant(tenant::TenantCommand),
    /// Manage namespaces
    #[command(subcommand)]
    Namespace(Box<namespace::NamespaceCommand>),
    /// Show the shards, their gateway instances and namespaces
    #[command(subcommand)]
    Shard(shard::ShardCommand),
    /// Show current usage and quota utilization of tenants and namespaces
    Usage(usage::UsageArgs),
    /// Read the audit log
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Read and write KeyValue data
    #[command(subcommand)]
    Kv(kv::KvCommand),
    /// Write, read, search and tail TimeSeries events
    #[command(subcommand)]
    Ts(ts::TsCommand),
    /// Set and read a TimeSeries namespace's versioned event schema
    #[command(subcommand)]
    Schema(schema::SchemaCommand),
    /// Sign bearer tokens with the deployment's HS256 secret
    #[command(subcommand)]
    Token(token::TokenCommand),
}

impl Command {
    /// Whether the command runs a server (logs at info by default) rather
    /// than one admin call (logs warnings only).
    pub fn is_server(&self) -> bool {
        matches!(self, Self::Dev(_) | Self::ControlPlane(_) | Self::Gateway(_))
    }

    /// The OpenTelemetry `service.name` of a server command, unless
    /// `OTEL_SERVICE_NAME` says otherwise.
    pub fn service_name(&self) -> &'static str {
        match self {
            Self::ControlPlane(_) => "prism-control-plane",
            Self::Gateway(_) => "prism-gateway",
            _ => "prism",
        }
    }
}

/// Runs one command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Dev(args) => serve::dev(args).await,
        Command::ControlPlane(args) => serve::run(args).await,
        Command::Gateway(args) => serve::gateway(args).await,
        Command::Tenant(cmd) => tenant::run(&cli.global, cmd).await,
        Command::Namespace(cmd) => namespace::run(&cli.global, *cmd).await,
        Command::Shard(cmd) => shard::run(&cli.global, cmd).await,
        Command::Usage(args) => usage::run(&cli.global, args).await,
        Command::Audit(cmd) => audit::run(&cli.global, cmd).await,
        Command::Kv(cmd) => kv::run(&cli.global, cmd).await,
        Command::Ts(cmd) => ts::run(&cli.global, cmd).await,
        Command::Schema(cmd) => schema::run(&cli.global, cmd).await,
        Command::Token(cmd) => token::run(cli.global.output, cmd),
    }
}

/// Completes on Ctrl-C (or SIGTERM on Unix). If the signal handlers cannot
/// be installed it never completes: the process then stops only when
/// killed, instead of stopping at once.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for sigterm");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
