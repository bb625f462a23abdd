//! gRPC clients for tests that watch whether a server keeps a caller's
//! deadline: one plain HTTP/2 connection that tonic's generated clients
//! use, which sends a request's `grpc-timeout` and then waits for whatever
//! the server answers.
//!
//! *Why not tonic's channel.* It enforces `grpc-timeout` on the client's
//! side too, answering CANCELLED ("Timeout expired") itself when the
//! deadline passes: a test through it always gets an answer at the
//! deadline and never learns whether the server would have answered at
//! all, or with what. Through this one, a server that does not answer
//! leaves the call pending, which the test's own bound can catch.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use anyhow::Context as _;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prism_client::BearerToken;
use prism_proto::kv::key_value_service_client::KeyValueServiceClient;
use prism_proto::timeseries::time_series_service_client::TimeSeriesServiceClient;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::service::interceptor::InterceptedService;

/// One HTTP/2 connection to a plain-text gRPC server; clones share it.
#[derive(Debug, Clone)]
pub struct Channel {
    sender: SendRequest<Body>,
}

impl Channel {
    /// Connects to `addr` (no TLS).
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<Self> {
        let stream = tokio::net::TcpStream::connect(addr).await.with_context(|| format!("connect to {addr}"))?;
        stream.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .context("http/2 handshake")?;
        // Runs until the connection closes (when the last clone is gone).
        tokio::spawn(connection);
        Ok(Self { sender })
    }
}

impl tonic::codegen::Service<http::Request<Body>> for Channel {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.sender.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        Box::pin(self.sender.send_request(request))
    }
}

/// A KeyValue client of the gateway at `addr`, presenting `token`.
pub async fn key_value(
    addr: SocketAddr,
    token: Option<&str>,
) -> anyhow::Result<KeyValueServiceClient<InterceptedService<Channel, BearerToken>>> {
    let channel = InterceptedService::new(Channel::connect(addr).await?, BearerToken::new(token)?);
    Ok(KeyValueServiceClient::with_origin(channel, origin(addr)?))
}

/// A TimeSeries client of the gateway at `addr`, presenting `token`.
pub async fn time_series(
    addr: SocketAddr,
    token: Option<&str>,
) -> anyhow::Result<TimeSeriesServiceClient<InterceptedService<Channel, BearerToken>>> {
    let channel = InterceptedService::new(Channel::connect(addr).await?, BearerToken::new(token)?);
    Ok(TimeSeriesServiceClient::with_origin(channel, origin(addr)?))
}

fn origin(addr: SocketAddr) -> anyhow::Result<http::Uri> {
    format!("http://{addr}").parse().context("origin")
}
