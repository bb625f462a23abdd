//! Assembles the control plane's gRPC server: the service, gRPC health and
//! reflection, on a listener the caller already bound (so tests bind
//! `127.0.0.1:0` and never race for a port).

use std::future::Future;
use std::sync::Arc;

use prism_proto::control::control_plane_service_server::ControlPlaneServiceServer;
use tokio::net::TcpListener;

use crate::config::ControlPlaneConfig;
use crate::error::{ControlPlaneError, Result};
use crate::plane::ControlPlane;
use crate::service::Service;
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
        Some(dsn) => {
            Arc::new(PgStore::open(dsn, &config.store_schema, config.watch_buffer, config.change_log_retention).await?)
        }
        None => Arc::new(FileStore::open(&config.data_dir, config.watch_buffer, config.change_log_retention)?),
    };
    let plane = ControlPlane::new(store, config);
    plane.redact_stored_passwords().await?;
    Ok(plane)
}

/// Serves `plane` on `listener` until `shutdown` completes.
pub async fn serve(plane: ControlPlane, listener: TcpListener, shutdown: impl Future<Output = ()>) -> Result<()> {
    if !plane.config().auth.verifies_tokens() {
        tracing::warn!(
            "no auth.hs256_secret, auth.jwks_file or auth.jwks_url is configured: every caller is anonymous \
             and may do everything"
        );
    }
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<ControlPlaneServiceServer<Service>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(prism_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ControlPlaneError::Corrupt(format!("reflection descriptors: {e}")))?;
    let (stop_watchers, watchers_stop) = tokio::sync::watch::channel(false);
    let sweeper = tokio::spawn(sweep_leases(plane.clone(), watchers_stop.clone()));
    let shutdown = async move {
        shutdown.await;
        let _ = stop_watchers.send(true);
    };
    let service = ControlPlaneServiceServer::new(Service::new(plane, watchers_stop))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    tracing::info!(addr = ?listener.local_addr().ok(), "control plane serving");
    tonic::transport::Server::builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(service)
        .serve_with_incoming_shutdown(incoming(listener), shutdown)
        .await?;
    let _ = sweeper.await;
    Ok(())
}

/// Removes instances whose lease expired, every quarter lease, until
/// shutdown.
async fn sweep_leases(plane: ControlPlane, mut stop: tokio::sync::watch::Receiver<bool>) {
    let period = std::time::Duration::from_millis(plane.config().shard_lease_ttl_ms / 4);
    let mut every = tokio::time::interval(period);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        match plane.expire_leases().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(shards = n, "removed gateway instances whose lease expired"),
            Err(e) => tracing::warn!(error = %e, "sweeping expired shard leases failed"),
        }
    }
}

/// Accepted connections with `TCP_NODELAY`: tonic sets it only on
/// listeners it binds itself, and without it small responses wait for the
/// peer's delayed ACK (≈ 40 ms tails).
fn incoming(listener: TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}
