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
    /// What the request path and the tasks count for `/metrics`.
    pub metrics: Arc<crate::metrics::GatewayMetrics>,
    /// Snapshot held, registered, not draining: gRPC health and `/readyz`.
    pub readiness: crate::health::Readiness,
    /// TLS of the gRPC port (`[gateway.tls]`), its files loaded at open.
    pub tls: Option<prism_tls::ServerTls>,
    /// How an `https://` control plane is reached (`control_plane_tls`).
    pub control_plane_tls: prism_client::Tls,
    /// Sends calls for other shards' namespaces to their owners.
    pub forwarder: Arc<crate::forward::Forwarder>,
}

impl Shared {
    /// A new connection to the control plane, as this gateway (its token,
    /// its TLS).
    pub async fn control_plane(&self) -> prism_client::Result<prism_client::ControlPlaneClient> {
        let config = &self.config;
        prism_client::control_plane_with(
            &config.control_plane,
            config.control_plane_token.as_deref(),
            &self.control_plane_tls,
        )
        .await
    }
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
        Self::with_plugins(config, plugins)
    }

    /// Builds the shared state over the given plugins (tests, other
    /// backends), reading the TLS files (a bad one stops the gateway here,
    /// naming the setting and the file).
    pub fn with_plugins(config: GatewayConfig, plugins: Plugins) -> Result<Self> {
        let tls_error = |e: prism_tls::TlsError, table: &str| {
            let e = e.within(table);
            GatewayError::Config { field: e.field().to_owned(), description: e.description().to_owned() }
        };
        let tls = config.tls.as_ref().map(prism_tls::ServerTls::new).transpose().map_err(|e| tls_error(e, "tls"))?;
        let client_tls = |settings: &prism_client::ClientTlsConfig, table: &str| {
            prism_client::Tls::new(settings).map_err(|e| match e {
                prism_client::ClientError::Tls(e) => tls_error(e, table),
                other => GatewayError::Internal(other.to_string()),
            })
        };
        let control_plane_tls = match &config.control_plane_tls {
            Some(settings) => client_tls(settings, "control_plane_tls")?,
            // An https:// control plane without settings: the system CAs,
            // read now so a missing bundle stops the gateway at startup.
            None if config.control_plane.starts_with("https://") => {
                client_tls(&Default::default(), "control_plane_tls")?
            }
            None => prism_client::Tls::default(),
        };
        // Peers are reached like the control plane unless told otherwise
        // (one internal CA, this gateway's one client certificate).
        let peer_tls = match &config.forwarding.tls {
            Some(settings) => client_tls(settings, "forwarding.tls")?,
            None => control_plane_tls.clone(),
        };
        let cache = ReadCache::new(&config.cache);
        let buffer = WriteBuffer::new(config.limits.write_buffer_events);
        let metrics = Arc::new(crate::metrics::GatewayMetrics::new(config.metrics_max_namespaces));
        let forwarder =
            crate::forward::Forwarder::new(&config.shard_id, peer_tls, config.request_timeout(), metrics.clone());
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
            metrics,
            readiness: Default::default(),
            tls,
            control_plane_tls,
            forwarder: Arc::new(forwarder),
        };
        Ok(Self { shared: Arc::new(shared) })
    }

    /// Serves on `listener` until `shutdown` completes, with the watch
    /// task, the provisioner and expiry reclamation running alongside.
    pub async fn serve(self, listener: TcpListener, shutdown: impl Future<Output = ()>) -> Result<()> {
        self.serve_with_metrics(listener, None, shutdown).await
    }

    /// As [`serve`](Self::serve), and `/metrics`, `/healthz` and `/readyz`
    /// on `metrics` when given (then every request is also counted per
    /// namespace).
    pub async fn serve_with_metrics(
        self,
        listener: TcpListener,
        metrics: Option<TcpListener>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<()> {
        let shared = self.shared;
        let endpoint = advertised_endpoint(&shared, &listener)?;
        let changes = Arc::new(Changes::default());
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let metrics_server = match metrics {
            Some(metrics_listener) => {
                shared.metrics.count_requests();
                let addr = metrics_listener.local_addr().ok();
                tracing::info!(shard = %shared.config.shard_id, addr = ?addr, "gateway metrics serving");
                let registry = Arc::new(crate::metrics::registry(&shared));
                let ready_of = shared.clone();
                let mut until = stopped.clone();
                Some(tokio::spawn(prism_telemetry::http::serve(
                    metrics_listener,
                    registry,
                    Arc::new(move || ready_of.readiness.ready()),
                    async move {
                        let _ = until.wait_for(|s| *s).await;
                    },
                )))
            }
            None => None,
        };
        // Deregistration comes first on shutdown, while this gateway still
        // serves, so clients move on before connections are refused; and
        // before it, health says NOT_SERVING, so load balancers (probes of
        // gRPC health or /readyz) stop sending first. `drain_delay_ms`
        // gives them time to notice.
        let (leave, leaving) = tokio::sync::watch::channel(false);
        let membership = tokio::spawn(crate::registration::run(shared.clone(), endpoint, leaving));
        let draining = shared.clone();
        let shutdown = async move {
            shutdown.await;
            draining.readiness.draining();
            tracing::info!(delay = ?draining.config.drain_delay(), "gateway draining");
            let _ = leave.send(true);
            let _ = membership.await;
            tokio::time::sleep(draining.config.drain_delay()).await;
        };
        let tasks = [
            tokio::spawn(watcher::run(shared.clone(), changes.clone(), stopped.clone())),
            tokio::spawn(provision::run(shared.clone(), changes, stopped.clone())),
            tokio::spawn(reclaim(shared.clone(), stopped.clone())),
            tokio::spawn(crate::quota::sweeper(shared.quotas.clone(), shared.metadata.clone(), stopped.clone())),
            tokio::spawn(crate::usage::run(shared.clone(), stopped.clone())),
            tokio::spawn(crate::audit::run(shared.clone(), stopped.clone())),
            tokio::spawn(crate::buffer::flush(shared.clone(), stopped.clone())),
        ];
        let (health, health_service) = tonic_health::server::health_reporter();
        let health_task = tokio::spawn(crate::health::report(shared.clone(), health, stopped));
        let pipeline = pipeline(&shared);
        let kv = KeyValueServiceServer::new(KvService::new(pipeline.clone()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let ts = TimeSeriesServiceServer::new(TsService::new(pipeline))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        // Reflection lists exactly what this server answers.
        let (reflection, reflection_v1alpha) =
            reflection([service_name(&health_service), service_name(&kv), service_name(&ts)])?;
        tracing::info!(
            shard = %shared.config.shard_id,
            addr = ?listener.local_addr().ok(),
            tls = shared.tls.is_some(),
            "gateway serving"
        );
        let services = Services {
            kv,
            ts,
            rest: tonic::service::Routes::new(health_service)
                .add_service(reflection)
                .add_service(reflection_v1alpha)
                .prepare(),
        };
        let server = tonic::transport::Server::builder();
        let served = match &shared.tls {
            Some(tls) => server.serve_with_incoming_shutdown(services, tls.incoming(listener), shutdown).await,
            None => server.serve_with_incoming_shutdown(services, incoming(listener), shutdown).await,
        };
        let _ = stop.send(true);
        for task in tasks {
            let _ = task.await;
        }
        let _ = health_task.await;
        if let Some(server) = metrics_server {
            match server.await {
                Ok(Err(e)) => tracing::warn!(error = %e, "the metrics listener failed"),
                Err(e) => tracing::warn!(error = %e, "the metrics listener task failed"),
                Ok(Ok(())) => {}
            }
        }
        Ok(served?)
    }
}

/// The gateway's gRPC services by path. KeyValue and TimeSeries calls go
/// straight to their generated servers, which match the method; the rest
/// (health, reflection) through tonic's router. Routing every call through
/// tonic's router (axum: a path match, URL parameters, two body
/// re-boxings) cost ~3 K instructions of a cache-hit GetItems' ~80 K
/// (issue 14). An unknown method of either service is UNIMPLEMENTED as
/// before: the generated server answers it.
#[derive(Clone)]
struct Services {
    kv: KeyValueServiceServer<KvService>,
    ts: TimeSeriesServiceServer<TsService>,
    rest: tonic::service::Routes,
}

type HttpRequest = tonic::codegen::http::Request<tonic::body::Body>;
type HttpResponse = tonic::codegen::http::Response<tonic::body::Body>;

/// Which service a gRPC path (`/package.Service/Method`) names.
fn service_of(path: &str) -> &str {
    path.strip_prefix('/').and_then(|p| p.split_once('/')).map_or("", |(service, _)| service)
}

impl tower::Service<HttpRequest> for Services {
    type Response = HttpResponse;
    type Error = std::convert::Infallible;
    type Future = futures_util::future::Either<
        tonic::codegen::BoxFuture<HttpResponse, std::convert::Infallible>,
        <tonic::service::Routes as tower::Service<HttpRequest>>::Future,
    >;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::result::Result<(), Self::Error>> {
        // The generated servers are always ready; the router says.
        tower::Service::<HttpRequest>::poll_ready(&mut self.rest, cx)
    }

    fn call(&mut self, req: HttpRequest) -> Self::Future {
        use futures_util::future::Either;
        use tonic::server::NamedService;
        match service_of(req.uri().path()) {
            KeyValueServiceServer::<KvService>::NAME => Either::Left(self.kv.call(req)),
            TimeSeriesServiceServer::<TsService>::NAME => Either::Left(self.ts.call(req)),
            _ => Either::Right(self.rest.call(req)),
        }
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
            let served = shared.plugins.get(entry.backend()).and_then(|p| p.time_series()).is_some();
            if !(owned_series && served) {
                continue;
            }
            let reclaimed = match entry.time_series(&shared.plugins) {
                Ok(ts) => ts.reclaim(now).await.map_err(GatewayError::from),
                Err(e) => Err(e),
            };
            if let Err(e) = reclaimed {
                tracing::warn!(namespace = %entry.ns.name, error = %e, "dropping events past retention failed");
            }
        }
    }
}

/// The name a gRPC service is served under.
fn service_name<S: tonic::server::NamedService>(_: &S) -> &'static str {
    S::NAME
}

/// The reflection services, `grpc.reflection.v1` and the older `v1alpha`
/// that many tools still ask first (Python's grpcio-reflection, Evans,
/// older grpcurl), each listing `services` and both reflection services,
/// and describing Prism's and the health service's types.
fn reflection(
    services: [&'static str; 3],
) -> Result<(
    tonic_reflection::server::v1::ServerReflectionServer<impl tonic_reflection::server::v1::ServerReflection>,
    tonic_reflection::server::v1alpha::ServerReflectionServer<impl tonic_reflection::server::v1alpha::ServerReflection>,
)> {
    let builder = || {
        let mut builder = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(prism_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
        for name in services.into_iter().chain(REFLECTION_SERVICES) {
            builder = builder.with_service_name(name);
        }
        builder
    };
    let failed = |e: tonic_reflection::server::Error| GatewayError::Internal(format!("reflection descriptors: {e}"));
    Ok((builder().build_v1().map_err(failed)?, builder().build_v1alpha().map_err(failed)?))
}

/// The reflection services' own names (tonic-reflection registers their
/// descriptors but lists them only when asked to).
pub const REFLECTION_SERVICES: [&str; 2] =
    ["grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"];

/// The endpoint this gateway registers: `advertise_endpoint`, else the
/// listener's address (with a loopback host when it listens on every
/// interface, which suits one machine only); as `https://host:port` when
/// it serves TLS, so clients dial it with TLS.
fn advertised_endpoint(shared: &Shared, listener: &TcpListener) -> Result<String> {
    let endpoint = host_port(&shared.config, listener)?;
    Ok(match &shared.tls {
        Some(_) if !endpoint.contains("://") => format!("https://{endpoint}"),
        _ => endpoint,
    })
}

fn host_port(config: &crate::GatewayConfig, listener: &TcpListener) -> Result<String> {
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
