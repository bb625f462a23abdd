//! Assembles a gateway shard: plugins, the metadata snapshot and its watch
//! task, the provisioner, the request pipeline, and the gRPC server with
//! health and reflection, on a listener the caller already bound.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use prism_plugin_api::Plugin;
use prism_plugin_embedded::{EmbeddedConfig, EmbeddedPlugin};
use prism_plugin_kafka::{KafkaPlugin, KafkaPluginConfig};
use prism_plugin_postgres::{PostgresPlugin, PostgresPluginConfig};
use prism_proto::control::Backend;
use prism_proto::kv::key_value_service_server::KeyValueServiceServer;
use tokio::net::TcpListener;

use crate::buffer::WriteBuffer;
use crate::cache::ReadCache;
use crate::config::GatewayConfig;
use crate::error::{GatewayError, Result};
use crate::kv_service::KvService;
use crate::layers::pipeline;
use crate::snapshot::Metadata;
use crate::tail::TailHub;
use crate::ts_service::TsService;
use crate::watcher::Changes;
use crate::{provision, watcher};
use prism_proto::timeseries::time_series_service_server::TimeSeriesServiceServer;

/// Largest message the gateway accepts: the largest item (64 MiB) plus
/// room for its request.
pub const MAX_MESSAGE_BYTES: usize = 72 << 20;

/// The backend plugins of this gateway, by backend.
#[derive(Clone, Default)]
pub struct Plugins(HashMap<i32, Arc<dyn Plugin>>);

impl std::fmt::Debug for Plugins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

impl Plugins {
    pub fn insert(&mut self, plugin: Arc<dyn Plugin>) {
        self.0.insert(plugin.capabilities().backend as i32, plugin);
    }

    pub fn get(&self, backend: Backend) -> Option<&Arc<dyn Plugin>> {
        self.0.get(&(backend as i32))
    }
}

/// What every part of the gateway shares.
#[derive(Debug)]
pub struct Shared {
    pub config: GatewayConfig,
    pub metadata: Arc<Metadata>,
    pub plugins: Plugins,
    pub cache: ReadCache,
    pub tails: TailHub,
    pub buffer: WriteBuffer,
    pub registration: crate::registration::Registration,
    /// Measured storage of this shard's namespaces with a storage quota.
    pub storage: crate::usage::StorageBook,
    /// Refused data requests on their way to the audit log.
    pub audit: Arc<crate::audit::AuditSink>,
    /// Rate and concurrency trackers; `quotas.set_share` is where this
    /// gateway's share of each limit is set.
    pub quotas: Arc<crate::quota::QuotaRegistry>,
}

/// A running gateway's handles, for callers that need more than `serve`.
#[derive(Debug, Clone)]
pub struct Gateway {
    pub shared: Arc<Shared>,
}

impl Gateway {
    /// Opens the plugins and builds the shared state (no task started yet).
    pub fn open(mut config: GatewayConfig) -> Result<Self> {
        config.validate()?;
        // Secret files are read once, here: an unreadable or weak one stops
        // the start, naming the setting.
        config.read_secret_files()?;
        let embedded = EmbeddedPlugin::open(EmbeddedConfig {
            data_dir: config.data_dir(),
            chunk_threshold_bytes: config.limits.chunk_threshold_bytes,
            ..EmbeddedConfig::default()
        })
        .map_err(|e| GatewayError::Internal(format!("cannot open the embedded store: {e}")))?;
        // Opens no connection: each postgres namespace names its server,
        // reached when the namespace is provisioned or used. The TLS CA
        // file is read here, so a bad one stops the gateway at startup.
        let postgres = PostgresPlugin::new(PostgresPluginConfig {
            chunk_threshold_bytes: config.limits.chunk_threshold_bytes,
            tls_ca_file: config.postgres_tls_ca_file.clone(),
            ..PostgresPluginConfig::default()
        })
        .map_err(|e| GatewayError::Internal(format!("cannot set up the postgres backend: {e}")))?
        // A namespace's `password_ref` resolves only to what is declared here.
        .with_secrets(Arc::new(prism_plugin_api::secrets::Secrets::new(config.secrets.clone())));
        // Opens no connection either: brokers are reached per namespace.
        let kafka = KafkaPlugin::new(KafkaPluginConfig::default())
            .map_err(|e| GatewayError::Internal(format!("cannot set up the kafka backend: {e}")))?;
        let mut plugins = Plugins::default();
        plugins.insert(Arc::new(embedded));
        plugins.insert(Arc::new(postgres));
        plugins.insert(Arc::new(kafka));
        // Built with feature `pulsar` only (its client needs protoc). Opens
        // no connection: each pulsar namespace names its broker.
        #[cfg(feature = "pulsar")]
        plugins.insert(Arc::new(prism_plugin_pulsar::PulsarPlugin::new(prism_plugin_pulsar::PulsarPluginConfig {
            request_timeout: config.request_timeout(),
            ..prism_plugin_pulsar::PulsarPluginConfig::default()
        })));
        Ok(Self::with_plugins(config, plugins))
    }

    /// Builds the shared state over the given plugins (tests, other backends).
    pub fn with_plugins(config: GatewayConfig, plugins: Plugins) -> Self {
        let cache = ReadCache::new(&config.cache);
        let buffer = WriteBuffer::new(config.limits.write_buffer_events);
        let shared = Shared {
            config,
            metadata: Arc::new(Metadata::default()),
            plugins,
            cache,
            tails: TailHub::default(),
            buffer,
            registration: Default::default(),
            audit: Default::default(),
            storage: Default::default(),
            quotas: Default::default(),
        };
        Self { shared: Arc::new(shared) }
    }

    /// Serves on `listener` until `shutdown` completes, with the watch
    /// task, the provisioner and expiry reclamation running alongside.
    pub async fn serve(self, listener: TcpListener, shutdown: impl Future<Output = ()>) -> Result<()> {
        let shared = self.shared;
        let endpoint = advertised_endpoint(&shared.config, &listener)?;
        let changes = Arc::new(Changes::default());
        let (stop, stopped) = tokio::sync::watch::channel(false);
        // Deregistration comes first on shutdown, while this gateway still
        // serves, so clients move on before connections are refused.
        let (leave, leaving) = tokio::sync::watch::channel(false);
        let membership = tokio::spawn(crate::registration::run(shared.clone(), endpoint, leaving));
        let shutdown = async move {
            shutdown.await;
            let _ = leave.send(true);
            let _ = membership.await;
        };
        let tasks = [
            tokio::spawn(watcher::run(shared.clone(), changes.clone(), stopped.clone())),
            tokio::spawn(provision::run(shared.clone(), changes, stopped.clone())),
            tokio::spawn(reclaim(shared.clone(), stopped.clone())),
            tokio::spawn(crate::quota::sweeper(shared.quotas.clone(), shared.metadata.clone(), stopped.clone())),
            tokio::spawn(crate::usage::run(shared.clone(), stopped.clone())),
            tokio::spawn(crate::audit::run(shared.clone(), stopped.clone())),
            tokio::spawn(crate::buffer::flush(shared.clone(), stopped)),
        ];
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<KeyValueServiceServer<KvService>>().await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(prism_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| GatewayError::Internal(format!("reflection descriptors: {e}")))?;
        health.set_serving::<TimeSeriesServiceServer<TsService>>().await;
        let pipeline = pipeline(&shared);
        let kv = KeyValueServiceServer::new(KvService::new(pipeline.clone()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let ts = TimeSeriesServiceServer::new(TsService::new(pipeline))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        tracing::info!(shard = %shared.config.shard_id, addr = ?listener.local_addr().ok(), "gateway serving");
        let served = server_builder(&shared.config)?
            .add_service(health_service)
            .add_service(reflection)
            .add_service(kv)
            .add_service(ts)
            .serve_with_incoming_shutdown(incoming(listener), shutdown)
            .await;
        let _ = stop.send(true);
        for task in tasks {
            let _ = task.await;
        }
        Ok(served?)
    }
}

/// Removes expired items periodically, in every KeyValue plugin, and
/// events past retention in this shard's TimeSeries namespaces.
async fn reclaim(shared: Arc<Shared>, mut stopped: tokio::sync::watch::Receiver<bool>) {
    let mut every = tokio::time::interval(Duration::from_secs(shared.config.limits.reclaim_interval_seconds));
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stopped.wait_for(|stop| *stop) => return,
        }
        for plugin in shared.plugins.0.values() {
            if let Some(kv) = plugin.key_value() {
                match kv.reclaim(prism_plugin_api::now_micros()).await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(removed = n, "reclaimed expired items"),
                    Err(e) => tracing::warn!(error = %e, "reclaiming expired items failed"),
                }
            }
        }
        let snapshot = shared.metadata.load_full();
        let now = prism_plugin_api::now_micros();
        for entry in snapshot.namespaces.values() {
            let owned_series = entry.shard_id == shared.config.shard_id
                && entry.status == prism_proto::control::NamespaceStatus::Active
                && entry.ns.spec.abstraction == prism_proto::control::Abstraction::TimeSeries as i32;
            let backend = Backend::try_from(entry.ns.spec.backend).unwrap_or(Backend::Unspecified);
            let plugin = shared.plugins.get(backend).and_then(|p| p.time_series());
            if let (true, Some(ts)) = (owned_series, plugin)
                && let Err(e) = ts.reclaim(&entry.ns, now).await
            {
                tracing::warn!(namespace = %entry.ns.name, error = %e, "dropping events past retention failed");
            }
        }
    }
}

/// A server builder with the configured TLS (read from its files now, so a
/// bad file stops the gateway at startup).
fn server_builder(config: &crate::GatewayConfig) -> Result<tonic::transport::Server> {
    let builder = tonic::transport::Server::builder();
    let Some(tls) = &config.tls else { return Ok(builder) };
    let read = |field: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| GatewayError::Config {
            field: format!("tls.{field}"),
            description: format!("cannot read {}: {e}", path.display()),
        })
    };
    let identity =
        tonic::transport::Identity::from_pem(read("cert_file", &tls.cert_file)?, read("key_file", &tls.key_file)?);
    let mut server_tls = tonic::transport::ServerTlsConfig::new().identity(identity);
    if let Some(ca) = &tls.client_ca_file {
        server_tls = server_tls
            .client_ca_root(tonic::transport::Certificate::from_pem(read("client_ca_file", ca)?))
            .client_auth_optional(!tls.require_client_cert);
    }
    builder.tls_config(server_tls).map_err(|e| GatewayError::Config { field: "tls".into(), description: e.to_string() })
}

/// The `host:port` this gateway registers: `advertise_endpoint`, else the
/// listener's address (with a loopback host when it listens on every
/// interface, which suits one machine only).
fn advertised_endpoint(config: &crate::GatewayConfig, listener: &TcpListener) -> Result<String> {
    if let Some(endpoint) = &config.advertise_endpoint {
        return Ok(endpoint.clone());
    }
    let mut addr = listener.local_addr().map_err(|e| GatewayError::Internal(format!("listener address: {e}")))?;
    if addr.ip().is_unspecified() {
        tracing::warn!(
            %addr,
            "listening on every interface without advertise_endpoint: registering a loopback address, \
             which other machines cannot reach"
        );
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    Ok(addr.to_string())
}

/// Accepted connections with `TCP_NODELAY`: tonic sets it only on
/// listeners it binds itself, and without it small responses wait for the
/// peer's delayed ACK (≈ 40 ms tails).
fn incoming(listener: TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}
