//! Assembles a gateway shard — plugins, the metadata snapshot, the
//! request pipeline, the background tasks and the gRPC server with health
//! and reflection, on a listener the caller already bound — and is the
//! only module that sees all of it.
//!
//! Every part sits behind its own handle (snapshot, plugins, cache,
//! buffer, tails, quotas, metrics, audit sink, the control-plane link);
//! [`Gateway::pipeline`] gives each layer its part and the operations an
//! `Operations`, and each background task gets a struct of exactly what it
//! uses. It also holds the TLS of the gRPC port (read at open): a gateway
//! serving TLS registers `https://host:port`, so clients dial it with TLS.
//! Reflection lists exactly health, reflection, KeyValue and TimeSeries.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use prism_proto::kv::key_value_service_server::KeyValueServiceServer;
use prism_proto::peer::migration_peer_server::MigrationPeerServer;
use prism_proto::timeseries::time_series_service_server::TimeSeriesServiceServer;
use tokio::net::TcpListener;

use crate::audit::AuditSink;
use crate::background::migrate::{self, Migrating};
use crate::background::provision::{self, Provisioning};
use crate::background::reclaim::{self, Reclaim};
use crate::background::registration::{self, Member, Registration};
use crate::background::usage::{self, StorageBook, Usage};
use crate::background::watcher::{self, Changes, Watcher};
use crate::background::{ControlPlane, audit};
use crate::buffer::{Flusher, WriteBuffer};
use crate::cache::ReadCache;
use crate::config::GatewayConfig;
use crate::error::{GatewayError, Result};
use crate::forward::Forwarder;
use crate::health::Readiness;
use crate::kv_service::KvService;
use crate::layers::{Parts, Pipeline, VerifiedTokens};
use crate::metrics::GatewayMetrics;
use crate::metrics::collector::Sources;
use crate::operations::Operations;
use crate::quota::QuotaRegistry;
use crate::snapshot::Metadata;
use crate::tail::TailHub;
use crate::transport::{Accepted, ConnectionStats, ReadLimits};
use crate::ts_service::TsService;

pub use crate::limits::MAX_MESSAGE_BYTES;

/// Streams a client may reset before the gateway accepted them, per
/// connection, before it gets GOAWAY (h2's default; CVE-2023-44487).
pub const MAX_PENDING_ACCEPT_RESETS: usize = 20;
/// Streams the gateway may reset for a client's protocol errors, per
/// connection, before it gets GOAWAY (hyper's default).
pub const MAX_LOCAL_ERROR_RESETS: usize = 1024;
pub use crate::plugins::Plugins;

/// A gateway shard, assembled: every part, each behind its own handle.
/// Only this module wires them: each background task and the pipeline is
/// given the parts it uses ([`crate::background`], [`Gateway::pipeline`]),
/// and no other module imports this one.
#[derive(Debug, Clone)]
pub struct Gateway {
    pub config: Arc<GatewayConfig>,
    /// This instance's store id (`crate::store_id`): what makes it the one
    /// instance of its shard that serves the embedded namespaces it owns.
    /// Empty for a gateway built over given plugins, which owns none.
    pub store_id: Arc<str>,
    pub metadata: Arc<Metadata>,
    pub plugins: Plugins,
    pub cache: Arc<ReadCache>,
    pub tails: Arc<TailHub>,
    pub buffer: Arc<WriteBuffer>,
    pub registration: Arc<Registration>,
    /// Measured storage of this shard's namespaces with a storage quota.
    pub storage: Arc<StorageBook>,
    /// Refused data requests on their way to the audit log.
    pub audit: Arc<AuditSink>,
    /// Rate and concurrency trackers; `quotas.set_share` is where this
    /// gateway's share of each limit is set.
    pub quotas: Arc<QuotaRegistry>,
    /// What the request path and the tasks count for `/metrics`.
    pub metrics: Arc<GatewayMetrics>,
    /// The verified bearer tokens every pipeline of this gateway shares.
    pub tokens: Arc<VerifiedTokens>,
    /// Snapshot held, registered, not draining: gRPC health and `/readyz`.
    pub readiness: Arc<Readiness>,
    /// TLS of the gRPC port (`[gateway.tls]`), its files loaded at open.
    pub tls: Option<prism_tls::ServerTls>,
    /// The one link to the control plane the background tasks share (its
    /// address, token and `control_plane_tls`).
    pub control_plane: Arc<ControlPlane>,
    /// Sends calls for other shards' namespaces to their owners.
    pub forwarder: Arc<Forwarder>,
    /// Connections open and what the connection and message limits
    /// (`[gateway.limits]`, `transport.rs`) refused.
    pub connections: Arc<ConnectionStats>,
}

impl Gateway {
    /// Opens the plugins and builds the gateway's parts (no task started yet).
    pub fn open(mut config: GatewayConfig) -> Result<Self> {
        config.validate()?;
        // Secret files are read once, here: an unreadable or weak one stops
        // the start, naming the setting.
        config.read_secret_files()?;
        // The one list of plugins (`plugins::REGISTERED`).
        let plugins = crate::plugins::open(&config)?;
        // Read after the embedded store is open: its file lock makes this
        // gateway the only one running on the directory.
        let store_id: Arc<str> = crate::store_id::load_or_create(&config.data_dir())?.into();
        let gw = Self::with_plugins(config, plugins)?;
        if let Some(peers) = gw.plugins.peers() {
            peers.set_store_id(store_id.clone());
        }
        Ok(Self { store_id, ..gw })
    }

    /// Builds the gateway's parts over the given plugins (tests, other
    /// backends), reading the TLS files (a bad one stops the gateway here,
    /// naming the setting and the file).
    pub fn with_plugins(config: GatewayConfig, mut plugins: Plugins) -> Result<Self> {
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
        let metrics = Arc::new(GatewayMetrics::new(config.metrics_max_namespaces));
        let forwarder = Arc::new(Forwarder::new(&config.shard_id, peer_tls, config.request_timeout(), metrics.clone()));
        let metadata = Arc::new(Metadata::default());
        // A migration's target held by another instance is reached through
        // it, as this gateway (`crate::peer`).
        let token = config.control_plane_token.as_deref();
        let peers = crate::peer::Peers::new(forwarder.clone(), metadata.clone(), token, config.request_timeout());
        plugins.set_peers(Arc::new(peers));
        let control_plane =
            ControlPlane::new(config.control_plane.clone(), config.control_plane_token.clone(), control_plane_tls);
        Ok(Self {
            store_id: Arc::from(""),
            metadata,
            plugins,
            cache: Arc::new(ReadCache::new(&config.cache)),
            tails: Arc::default(),
            buffer: Arc::new(WriteBuffer::new(config.limits.write_buffer_events)),
            registration: Arc::default(),
            audit: Arc::default(),
            storage: Arc::default(),
            quotas: Arc::default(),
            metrics,
            tokens: Arc::default(),
            readiness: Arc::default(),
            tls,
            control_plane: Arc::new(control_plane),
            forwarder,
            connections: Arc::new(ConnectionStats::new(config.limits.max_connections)),
            config: Arc::new(config),
        })
    }

    /// The request pipeline over this gateway's parts; requests are
    /// counted per namespace when a metrics listener serves them.
    pub fn pipeline(&self) -> Pipeline {
        self.pipeline_counting(self.metrics.counts_requests())
    }

    /// [`pipeline`](Self::pipeline), with per-namespace counting or
    /// without (benchmarks compare the two).
    pub fn pipeline_counting(&self, count_requests: bool) -> Pipeline {
        let operations = Operations {
            plugins: self.plugins.clone(),
            cache: self.cache.clone(),
            buffer: self.buffer.clone(),
            tails: self.tails.clone(),
            metrics: self.metrics.clone(),
            max_clock_skew: Duration::from_millis(self.config.limits.max_clock_skew_ms),
        };
        let parts = Parts {
            config: &self.config,
            store_id: self.store_id.clone(),
            metadata: self.metadata.clone(),
            metrics: self.metrics.clone(),
            audit: self.audit.clone(),
            tokens: self.tokens.clone(),
            quotas: self.quotas.clone(),
            forwarder: self.forwarder.clone(),
            operations: Arc::new(operations),
        };
        crate::layers::pipeline_counting(parts, count_requests)
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
        let gw = self;
        let endpoint = advertised_endpoint(&gw, &listener)?;
        let changes = Arc::new(Changes::default());
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let metrics_server = match metrics {
            Some(metrics_listener) => {
                gw.metrics.count_requests();
                let addr = metrics_listener.local_addr().ok();
                tracing::info!(shard = %gw.config.shard_id, addr = ?addr, "gateway metrics serving");
                let registry = Arc::new(crate::metrics::collector::registry(Sources {
                    shard_id: gw.config.shard_id.clone(),
                    metrics: gw.metrics.clone(),
                    metadata: gw.metadata.clone(),
                    plugins: gw.plugins.clone(),
                    cache: gw.cache.clone(),
                    buffer: gw.buffer.clone(),
                    tails: gw.tails.clone(),
                    tokens: gw.tokens.clone(),
                    quotas: gw.quotas.clone(),
                    readiness: gw.readiness.clone(),
                    connections: gw.connections.clone(),
                }));
                let ready_of = gw.readiness.clone();
                let mut until = stopped.clone();
                Some(tokio::spawn(prism_telemetry::http::serve(
                    metrics_listener,
                    registry,
                    Arc::new(move || ready_of.ready()),
                    async move {
                        let _ = until.wait_for(|s| *s).await;
                    },
                )))
            }
            None => None,
        };
        let config = &gw.config;
        let shard_id = || config.shard_id.clone();
        // Deregistration comes first on shutdown, while this gateway still
        // serves, so clients move on before connections are refused; and
        // before it, health says NOT_SERVING, so load balancers (probes of
        // gRPC health or /readyz) stop sending first. `drain_delay_ms`
        // gives them time to notice.
        let (leave, leaving) = tokio::sync::watch::channel(false);
        let member = Member {
            link: gw.control_plane.clone(),
            shard_id: shard_id(),
            store_id: gw.store_id.to_string(),
            endpoint,
            // Migrations are experimental (issue 16): advertised only when
            // configured, so by default the control plane starts none.
            features: if config.experimental_migrations {
                use crate::background::migrate::{MIGRATE_KEY_VALUE, MIGRATE_TIME_SERIES, MIGRATE_TO_EMBEDDED};
                [MIGRATE_KEY_VALUE, MIGRATE_TO_EMBEDDED, MIGRATE_TIME_SERIES].map(str::to_owned).to_vec()
            } else {
                Vec::new()
            },
            registration: gw.registration.clone(),
            readiness: gw.readiness.clone(),
        };
        let membership = tokio::spawn(registration::run(member, leaving));
        let (readiness, drain_delay) = (gw.readiness.clone(), config.drain_delay());
        let shutdown = async move {
            shutdown.await;
            readiness.draining();
            tracing::info!(delay = ?drain_delay, "gateway draining");
            let _ = leave.send(true);
            let _ = membership.await;
            tokio::time::sleep(drain_delay).await;
        };
        let watcher = Watcher {
            link: gw.control_plane.clone(),
            metadata: gw.metadata.clone(),
            shard_id: shard_id(),
            store_id: gw.store_id.clone(),
            cache: gw.cache.clone(),
            tails: gw.tails.clone(),
            quotas: gw.quotas.clone(),
            metrics: gw.metrics.clone(),
            readiness: gw.readiness.clone(),
        };
        let provisioning = Provisioning {
            link: gw.control_plane.clone(),
            metadata: gw.metadata.clone(),
            shard_id: shard_id(),
            store_id: gw.store_id.clone(),
            plugins: gw.plugins.clone(),
            tails: gw.tails.clone(),
            request_timeout: config.request_timeout(),
        };
        let migrating = Migrating {
            link: gw.control_plane.clone(),
            metadata: gw.metadata.clone(),
            shard_id: shard_id(),
            store_id: gw.store_id.clone(),
            plugins: gw.plugins.clone(),
            registration: gw.registration.clone(),
            request_timeout: config.request_timeout(),
            backfill_parallelism: config.migration_backfill_parallelism,
            backfill_rate: config.migration_backfill_records_per_second,
            buffer: gw.buffer.clone(),
            metrics: gw.metrics.clone(),
            failures: std::sync::Mutex::default(),
        };
        let reclaim = Reclaim {
            metadata: gw.metadata.clone(),
            shard_id: shard_id(),
            store_id: gw.store_id.clone(),
            plugins: gw.plugins.clone(),
            every: Duration::from_secs(config.limits.reclaim_interval_seconds),
        };
        let usage = Usage {
            link: gw.control_plane.clone(),
            metadata: gw.metadata.clone(),
            shard_id: shard_id(),
            store_id: gw.store_id.clone(),
            plugins: gw.plugins.clone(),
            quotas: gw.quotas.clone(),
            storage: gw.storage.clone(),
            registration: gw.registration.clone(),
            report_every: Duration::from_millis(config.usage_report_interval_ms),
            measure_every: Duration::from_millis(config.storage_measure_interval_ms),
        };
        let flusher = Flusher {
            buffer: gw.buffer.clone(),
            metadata: gw.metadata.clone(),
            plugins: gw.plugins.clone(),
            tails: gw.tails.clone(),
            metrics: gw.metrics.clone(),
        };
        let tasks = [
            tokio::spawn(watcher::run(watcher, changes.clone(), stopped.clone())),
            tokio::spawn(provision::run(provisioning, changes, stopped.clone())),
            tokio::spawn(reclaim::run(reclaim, stopped.clone())),
            tokio::spawn(migrate::run(migrating, stopped.clone())),
            tokio::spawn(crate::quota::sweeper(
                gw.quotas.clone(),
                {
                    let metadata = gw.metadata.clone();
                    move || metadata.load_full()
                },
                stopped.clone(),
            )),
            tokio::spawn(usage::run(usage, stopped.clone())),
            tokio::spawn(audit::run(gw.audit.clone(), gw.control_plane.clone(), stopped.clone())),
            tokio::spawn(crate::buffer::flush(flusher, stopped.clone())),
        ];
        let (health, health_service) = tonic_health::server::health_reporter();
        let health_task = tokio::spawn(crate::health::report(gw.readiness.clone(), health, stopped));
        let pipeline = gw.pipeline();
        let limits = &config.limits;
        // Requests are held to `max_message_bytes` by `ReadLimits` (which
        // answers RESOURCE_EXHAUSTED naming it); tonic's own check stays
        // as a backstop. Answers are bounded by the page limits.
        let kv = KeyValueServiceServer::new(KvService::new(pipeline.clone()))
            .max_decoding_message_size(limits.max_message_bytes)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let ts = TimeSeriesServiceServer::new(TsService::new(pipeline))
            .max_decoding_message_size(limits.max_message_bytes)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        // Between gateways (a migration's target on this instance): not
        // in reflection, not for clients.
        let peer = MigrationPeerServer::new(crate::peer::PeerService::new(
            gw.metadata.clone(),
            gw.plugins.clone(),
            gw.config.shard_id.clone(),
            gw.store_id.clone(),
            &gw.config.auth,
        ))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
        // Reflection lists exactly what this server answers.
        let (reflection, reflection_v1alpha) =
            reflection([service_name(&health_service), service_name(&kv), service_name(&ts)])?;
        tracing::info!(
            shard = %gw.config.shard_id,
            addr = ?listener.local_addr().ok(),
            tls = gw.tls.is_some(),
            "gateway serving"
        );
        let services = Services {
            kv,
            ts,
            peer,
            rest: tonic::service::Routes::new(health_service)
                .add_service(reflection)
                .add_service(reflection_v1alpha)
                .prepare(),
            read: ReadLimits::new(limits, gw.connections.clone()),
        };
        // The limits hyper enforces for us; the rest are `transport.rs`'s.
        // HTTP/2 frames stay at the protocol's 16 KiB. The reset-flood
        // bounds are h2's and hyper's defaults, said here because tonic
        // passes `None` for the second, which turns it off: streams a
        // client resets before they are accepted ("rapid reset"), and
        // streams the gateway had to reset for a client's protocol error,
        // past which the connection gets GOAWAY.
        let server = tonic::transport::Server::builder()
            .max_concurrent_streams(limits.max_concurrent_streams)
            .http2_max_header_list_size(limits.max_header_list_bytes)
            .http2_keepalive_interval(Some(Duration::from_millis(limits.keepalive_interval_ms)))
            .http2_keepalive_timeout(Some(Duration::from_millis(limits.keepalive_timeout_ms)))
            .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_ACCEPT_RESETS))
            .http2_max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS));
        let served = match &gw.tls {
            Some(tls) => {
                let incoming = Accepted::new(tls.incoming(listener), limits, gw.connections.clone());
                server.serve_with_incoming_shutdown(services, incoming, shutdown).await
            }
            None => {
                let incoming = Accepted::new(incoming(listener), limits, gw.connections.clone());
                server.serve_with_incoming_shutdown(services, incoming, shutdown).await
            }
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
    peer: MigrationPeerServer<crate::peer::PeerService>,
    rest: tonic::service::Routes,
    /// Every request body is held to the message limits; the generated
    /// servers take any body, so KeyValue and TimeSeries bodies are not
    /// boxed again for it.
    read: ReadLimits,
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
        futures_util::future::MapOk<
            tonic::codegen::BoxFuture<HttpResponse, std::convert::Infallible>,
            fn(HttpResponse) -> HttpResponse,
        >,
        <tonic::service::Routes as tower::Service<HttpRequest>>::Future,
    >;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::result::Result<(), Self::Error>> {
        // The generated servers are always ready; the router says.
        tower::Service::<HttpRequest>::poll_ready(&mut self.rest, cx)
    }

    fn call(&mut self, mut req: HttpRequest) -> Self::Future {
        use futures_util::TryFutureExt;
        use futures_util::future::Either;
        use tonic::server::NamedService;
        // The caller's deadline counts from now, as tonic's timer for it
        // does (`edge::Arrived`); only requests that carry one pay for it.
        if req.headers().contains_key("grpc-timeout") {
            req.extensions_mut().insert(crate::edge::Arrived(tokio::time::Instant::now()));
        }
        let refine: fn(HttpResponse) -> HttpResponse = crate::transport::malformed_is_invalid_argument;
        match service_of(req.uri().path()) {
            KeyValueServiceServer::<KvService>::NAME => {
                Either::Left(self.kv.call(req.map(|body| self.read.limit(body))).map_ok(refine))
            }
            TimeSeriesServiceServer::<TsService>::NAME => {
                Either::Left(self.ts.call(req.map(|body| self.read.limit(body))).map_ok(refine))
            }
            MigrationPeerServer::<crate::peer::PeerService>::NAME => {
                Either::Left(self.peer.call(req.map(|body| self.read.limit(body))).map_ok(refine))
            }
            _ => Either::Right(self.rest.call(req.map(|body| tonic::body::Body::new(self.read.limit(body))))),
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
fn advertised_endpoint(gw: &Gateway, listener: &TcpListener) -> Result<String> {
    let endpoint = host_port(&gw.config, listener)?;
    Ok(match &gw.tls {
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
