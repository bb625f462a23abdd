//! The metrics listener every server runs on its `metrics_listen` address:
//!
//! - `GET /metrics` — the server's registry in the Prometheus text format
//!   (version 0.0.4), encoded by `prometheus-client`;
//! - `GET /healthz` — liveness: 200 while the process answers;
//! - `GET /readyz` — readiness: 200 when the server says it is ready (a
//!   gateway: it holds a snapshot, is registered and is not draining),
//!   503 otherwise, for Kubernetes probes and load balancers.
//!
//! HTTP/1 only (what scrapers and probes speak), served by axum, which is
//! already in the build through tonic. A server may mount more routes on
//! the same listener ([`serve_with_routes`]: the control plane's console).

use std::future::Future;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

/// A `metrics_listen` value: an `ip:port` to bind (port 0 picks one).
pub fn parse_listen(addr: &str) -> Result<std::net::SocketAddr, String> {
    addr.parse().map_err(|_| format!("{addr:?} is not an ip:port address (e.g. 127.0.0.1:9464)"))
}

/// Whether the server is ready for traffic, asked on each `/readyz`.
pub type Readiness = Arc<dyn Fn() -> bool + Send + Sync>;

#[derive(Clone)]
struct Served {
    registry: Arc<Registry>,
    ready: Readiness,
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until
/// `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    ready: Readiness,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with_routes(listener, registry, ready, axum::Router::new(), shutdown).await
}

/// As [`serve`], with `routes` served beside `/metrics`, `/healthz` and
/// `/readyz` (which they must not name).
pub async fn serve_with_routes(
    listener: TcpListener,
    registry: Arc<Registry>,
    ready: Readiness,
    routes: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(Served { registry, ready })
        .merge(routes);
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

async fn metrics(State(served): State<Served>) -> axum::response::Response {
    let mut text = String::with_capacity(16 * 1024);
    match prometheus_client::encoding::prometheus_text::encode(&mut text, &served.registry) {
        Ok(()) => {
            ([(header::CONTENT_TYPE, prometheus_client::encoding::prometheus_text::CONTENT_TYPE)], text).into_response()
        }
        Err(_) => {
            tracing::error!("encoding metrics failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "encoding metrics failed\n").into_response()
        }
    }
}

async fn readyz(State(served): State<Served>) -> (StatusCode, &'static str) {
    if (served.ready)() { (StatusCode::OK, "ready\n") } else { (StatusCode::SERVICE_UNAVAILABLE, "not ready\n") }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn get(addr: std::net::SocketAddr, path: &str) -> anyhow::Result<String> {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes()).await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        Ok(response)
    }

    #[tokio::test]
    async fn serves_metrics_health_and_readiness() -> anyhow::Result<()> {
        let mut registry = Registry::default();
        let counter = prometheus_client::metrics::counter::Counter::<u64>::default();
        registry.register("prism_test_things", "things", counter.clone());
        counter.inc_by(3);
        let ready = Arc::new(AtomicBool::new(false));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let flag = ready.clone();
        let server =
            tokio::spawn(serve(listener, Arc::new(registry), Arc::new(move || flag.load(Ordering::Relaxed)), async {
                let _ = stopped.await;
            }));
        let metrics = get(addr, "/metrics").await?;
        assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
        assert!(metrics.contains("text/plain; version=0.0.4"), "{metrics}");
        assert!(metrics.contains("prism_test_things_total 3"), "{metrics}");
        assert!(get(addr, "/healthz").await?.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/readyz").await?.starts_with("HTTP/1.1 503"));
        ready.store(true, Ordering::Relaxed);
        assert!(get(addr, "/readyz").await?.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/nope").await?.starts_with("HTTP/1.1 404"));
        let _ = stop.send(());
        server.await??;
        Ok(())
    }
}
