//! Assembles the control plane's gRPC server: the service, gRPC health and
//! reflection, on a listener the caller already bound (so tests bind
//! `127.0.0.1:0` and never race for a port).
//!
//! Reflection lists exactly the services served. The server also runs the
//! lease sweeper (every quarter lease: any replica's sweep removes expired
//! shard instances, and conditions make concurrent sweeps harmless) and the
//! settler (namespaces a rebalance left for later commits), serves
//! TLS when `tls` is configured ([`load_tls`] reads the files before
//! anything is served) and, given a metrics listener, `/metrics`,
//! `/healthz` and `/readyz`, with the console ([`crate::console`]) there
//! or on a listener of its own ([`HttpListeners`]). [`open`] reads secret files
//! (`auth.hs256_secret_file`) and blanks passwords that namespaces stored
//! by older versions still hold in their DSN
//! ([`ControlPlane::redact_stored_passwords`](crate::plane::ControlPlane::redact_stored_passwords));
//! `Watch` blanks them in what it sends too, since the change log may hold
//! deltas from before.

use std::future::Future;
use std::sync::Arc;

use prism_proto::control::control_plane_service_server::ControlPlaneServiceServer;
use tokio::net::TcpListener;

use crate::config::ControlPlaneConfig;
use crate::error::{ControlPlaneError, Result};
use crate::plane::ControlPlane;
use crate::service::Service;
use crate::store::Options;
use crate::store::Store;
use crate::store::file::FileStore;
use crate::store::postgres::PgStore;

/// Largest message the control plane accepts or sends (snapshot chunks
/// stay far below it).
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Opens the configured store (the Postgres database `store` names, else
/// the embedded file store in `data_dir`) and builds the control plane
/// over it.
pub async fn open(mut config: ControlPlaneConfig) -> Result<ControlPlane> {
    config.validate()?;
    // Secret files are read once, here: an unreadable or weak one stops
    // the start, naming the setting.
    if let Err(prism_auth::AuthError::Config { field, description }) = config.auth.read_secret_file() {
        return Err(ControlPlaneError::Config { field: format!("auth.{field}"), description });
    }
    let store: Arc<dyn Store> = match &config.store {
        Some(dsn) => Arc::new(PgStore::open_with(dsn, &config.store_schema, &Options::from_config(&config)).await?),
        None => Arc::new(FileStore::open_with(&config.data_dir, &Options::from_config(&config))?),
    };
    let plane = ControlPlane::new(store, config);
    plane.redact_stored_passwords().await?;
    Ok(plane)
}

/// The TLS of `config` with its files read now (a bad file is an error
/// naming the setting and the file), or `None` for plain text.
pub fn load_tls(config: &ControlPlaneConfig) -> Result<Option<prism_tls::ServerTls>> {
    config.tls.as_ref().map(prism_tls::ServerTls::new).transpose().map_err(|e| {
        let e = e.within("tls");
        ControlPlaneError::Config { field: e.field().to_owned(), description: e.description().to_owned() }
    })
}

/// Serves `plane` on `listener` until `shutdown` completes, with the TLS
/// of its configuration.
pub async fn serve(plane: ControlPlane, listener: TcpListener, shutdown: impl Future<Output = ()>) -> Result<()> {
    let tls = load_tls(plane.config())?;
    serve_with(plane, listener, tls, None, shutdown).await
}

/// As [`serve`], and `/metrics`, `/healthz` and `/readyz` on `metrics`
/// when given. Ready while serving; NOT_SERVING (gRPC health and
/// `/readyz`) from the moment shutdown begins.
pub async fn serve_with_metrics(
    plane: ControlPlane,
    listener: TcpListener,
    metrics: Option<TcpListener>,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let tls = load_tls(plane.config())?;
    serve_with(plane, listener, tls, metrics, shutdown).await
}

/// As [`serve_with_metrics`], over `tls` (from [`load_tls`]) when given.
pub async fn serve_with(
    plane: ControlPlane,
    listener: TcpListener,
    tls: Option<prism_tls::ServerTls>,
    metrics: Option<TcpListener>,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    serve_all(plane, listener, tls, HttpListeners { metrics, console: None }, shutdown).await
}

/// The HTTP listeners beside the gRPC port, bound by the caller.
#[derive(Debug, Default)]
pub struct HttpListeners {
    /// `/metrics`, `/healthz`, `/readyz`, and the console unless it has
    /// its own listener (or is switched off: `console = false`).
    pub metrics: Option<TcpListener>,
    /// The console's own listener (`console_listen`).
    pub console: Option<TcpListener>,
}

/// As [`serve_with`], with the console on `http.console` when given.
pub async fn serve_all(
    plane: ControlPlane,
    listener: TcpListener,
    tls: Option<prism_tls::ServerTls>,
    http: HttpListeners,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let HttpListeners { metrics, console } = http;
    if !plane.config().auth.verifies_tokens() {
        tracing::warn!(
            "insecure_no_auth: no auth.hs256_secret, auth.jwks_file or auth.jwks_url is configured, every \
             caller is anonymous and may do everything"
        );
    }
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<ControlPlaneServiceServer<Service>>().await;
    let (stop_watchers, watchers_stop) = tokio::sync::watch::channel(false);
    let sweeper = tokio::spawn(sweep_leases(plane.clone(), watchers_stop.clone()));
    let settler = tokio::spawn(settle_namespaces(plane.clone(), watchers_stop.clone()));
    let follower =
        tokio::spawn(crate::metrics::follow(plane.store().clone(), plane.metrics().clone(), watchers_stop.clone()));
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let (metrics_stop, metrics_stopped) = tokio::sync::watch::channel(false);
    // The console reads through the very service the gRPC port serves.
    let service = Service::new(plane.clone(), watchers_stop.clone());
    let console_routes = plane.config().console.then(|| crate::console::router(service.clone()));
    let (console_routes, console_server) = match (console_routes, console) {
        (Some(routes), Some(console_listener)) => {
            tracing::info!(addr = ?console_listener.local_addr().ok(), "control plane console serving");
            let mut until = metrics_stopped.clone();
            let server = tokio::spawn(async move {
                axum::serve(console_listener, routes)
                    .with_graceful_shutdown(async move {
                        let _ = until.wait_for(|s| *s).await;
                    })
                    .await
            });
            (None, Some(server))
        }
        (routes, _) => (routes, None),
    };
    let metrics_server = metrics.map(|metrics_listener| {
        tracing::info!(
            addr = ?metrics_listener.local_addr().ok(),
            console = console_routes.is_some(),
            "control plane metrics serving"
        );
        let registry = Arc::new(crate::metrics::registry(plane.metrics()));
        let ready = ready.clone();
        let mut until = metrics_stopped;
        tokio::spawn(prism_telemetry::http::serve_with_routes(
            metrics_listener,
            registry,
            Arc::new(move || ready.load(std::sync::atomic::Ordering::Relaxed)),
            console_routes.unwrap_or_default(),
            async move {
                let _ = until.wait_for(|s| *s).await;
            },
        ))
    });
    let draining = health.clone();
    let shutdown = async move {
        shutdown.await;
        ready.store(false, std::sync::atomic::Ordering::Relaxed);
        draining.set_not_serving::<ControlPlaneServiceServer<Service>>().await;
        draining.set_service_status("", tonic_health::ServingStatus::NotServing).await;
        let _ = stop_watchers.send(true);
    };
    let rpc_metrics = crate::metrics::RpcMetricsLayer::new(plane.metrics().clone());
    let service = ControlPlaneServiceServer::new(service)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    // Reflection (v1, and v1alpha for the tools that still ask it first)
    // lists exactly what this server answers.
    let health_name = service_name(&health_service);
    let control_name = service_name(&service);
    let builder = || {
        let mut builder = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(prism_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
        for name in [health_name, control_name].into_iter().chain(REFLECTION_SERVICES) {
            builder = builder.with_service_name(name);
        }
        builder
    };
    let failed =
        |e: tonic_reflection::server::Error| ControlPlaneError::Corrupt(format!("reflection descriptors: {e}"));
    let reflection = builder().build_v1().map_err(failed)?;
    let reflection_v1alpha = builder().build_v1alpha().map_err(failed)?;
    tracing::info!(addr = ?listener.local_addr().ok(), tls = tls.is_some(), "control plane serving");
    let router = tonic::transport::Server::builder()
        .layer(rpc_metrics)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(service);
    let served = match tls {
        Some(tls) => router.serve_with_incoming_shutdown(tls.incoming(listener), shutdown).await,
        None => router.serve_with_incoming_shutdown(incoming(listener), shutdown).await,
    };
    let _ = sweeper.await;
    let _ = settler.await;
    let _ = follower.await;
    let _ = metrics_stop.send(true);
    for (what, server) in [("metrics", metrics_server), ("console", console_server)] {
        let Some(server) = server else { continue };
        match server.await {
            Ok(Err(e)) => tracing::warn!(error = %e, listener = what, "an HTTP listener failed"),
            Err(e) => tracing::warn!(error = %e, listener = what, "an HTTP listener task failed"),
            Ok(Ok(())) => {}
        }
    }
    Ok(served?)
}

/// The name a gRPC service is served under.
fn service_name<S: tonic::server::NamedService>(_: &S) -> &'static str {
    S::NAME
}

/// The reflection services' own names (tonic-reflection registers their
/// descriptors but lists them only when asked to).
pub const REFLECTION_SERVICES: [&str; 2] =
    ["grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"];

/// Ticks every quarter lease, the first at once; a late tick delays the
/// next ones rather than bunching them.
fn every_quarter_lease(plane: &ControlPlane) -> tokio::time::Interval {
    let period = std::time::Duration::from_millis(plane.config().shard_lease_ttl_ms / 4);
    let mut every = tokio::time::interval(period);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every
}

/// Removes instances whose lease expired, every quarter lease, until
/// shutdown.
async fn sweep_leases(plane: ControlPlane, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut every = every_quarter_lease(&plane);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        match plane.expire_leases().await {
            Ok(0) => {}
            Ok(n) => {
                plane.metrics().leases_expired(n);
                tracing::info!(shards = n, "removed gateway instances whose lease expired");
            }
            Err(e) => tracing::warn!(error = %e, "sweeping expired shard leases failed"),
        }
    }
}

/// Settles namespaces against the shard map whenever it changed without
/// them being settled here: at start, when a rebalance was larger than one
/// commit, or after another replica's change (`crate::registry`, "Bounded
/// rebalances"); checked every quarter lease and when a commit wakes it.
async fn settle_namespaces(plane: ControlPlane, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut every = every_quarter_lease(&plane);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            () = plane.settle_state().wake.notified() => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        match plane.unsettled().await {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "reading the shard map to settle namespaces failed");
                continue;
            }
        }
        match plane.settle_pending().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(namespaces = n, "settled namespaces against the shard map"),
            Err(e) => tracing::warn!(error = %e, "settling namespaces against the shard map failed"),
        }
    }
}

/// Accepted connections with `TCP_NODELAY`: tonic sets it only on
/// listeners it binds itself, and without it small responses wait for the
/// peer's delayed ACK (≈ 40 ms tails).
fn incoming(listener: TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}
