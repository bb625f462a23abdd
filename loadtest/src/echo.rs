//! The baseline: a bare tonic server of the same KeyValue RPCs the gateway
//! serves, doing no work — no auth, no routing, no storage — so a run
//! against it measures one gRPC hop on this machine (encoding, HTTP/2,
//! loopback TCP, the tokio scheduler) and nothing else.
//!
//! PutItems answers an empty success. GetItems answers one item holding
//! [`value_for`] the requested id: the loadtest checks that a get returns
//! the value written for *that* key, so the echo must echo the id; building
//! a value of `--value-size` bytes is the only work it does, the same copy
//! a gateway answering from its cache does.

use std::net::SocketAddr;
use std::pin::Pin;

use anyhow::Context;
use prism_proto::kv::key_value_service_server::{KeyValueService, KeyValueServiceServer};
use prism_proto::kv::{
    DeleteItemsRequest, DeleteItemsResponse, GetItemsRequest, GetItemsResponse, Item, MutateItemsRequest,
    MutateItemsResponse, PutItemsRequest, PutItemsResponse, ScanItemsRequest, ScanItemsResponse,
};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::{Request, Response, Status};

use crate::scenario::value_for;

#[derive(Debug, Clone)]
pub struct Echo {
    value_size: usize,
}

impl Echo {
    pub fn new(value_size: usize) -> Self {
        Self { value_size }
    }
}

#[tonic::async_trait]
impl KeyValueService for Echo {
    async fn put_items(&self, _: Request<PutItemsRequest>) -> Result<Response<PutItemsResponse>, Status> {
        Ok(Response::new(PutItemsResponse {}))
    }

    async fn get_items(&self, request: Request<GetItemsRequest>) -> Result<Response<GetItemsResponse>, Status> {
        let value = value_for(&request.get_ref().id, self.value_size);
        Ok(Response::new(GetItemsResponse {
            items: vec![Item { key: Vec::new(), value, ttl: None }],
            next_page_token: String::new(),
        }))
    }

    async fn delete_items(&self, _: Request<DeleteItemsRequest>) -> Result<Response<DeleteItemsResponse>, Status> {
        Err(Status::unimplemented("the echo baseline serves GetItems and PutItems only"))
    }

    async fn mutate_items(&self, _: Request<MutateItemsRequest>) -> Result<Response<MutateItemsResponse>, Status> {
        Err(Status::unimplemented("the echo baseline serves GetItems and PutItems only"))
    }

    async fn scan_items(&self, _: Request<ScanItemsRequest>) -> Result<Response<ScanItemsResponse>, Status> {
        Err(Status::unimplemented("the echo baseline serves GetItems and PutItems only"))
    }
}

type Shutdown = Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Serves the echo on an already-bound listener until `shutdown` resolves.
pub async fn serve(listener: TcpListener, value_size: usize, shutdown: Shutdown) -> anyhow::Result<()> {
    // Served exactly as the gateway serves (an already-bound listener, tonic's
    // defaults), so the ratio isolates what the gateway does per request.
    tonic::transport::Server::builder()
        .add_service(
            KeyValueServiceServer::new(Echo::new(value_size))
                .max_decoding_message_size(prism_client::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(prism_client::MAX_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(incoming(listener), shutdown)
        .await
        .context("echo server")
}

/// An echo server running in this process on its own tokio runtime and
/// threads, as a gateway runs in its own process: sharing the load
/// generator's runtime would charge the baseline for the generator's work
/// (on 2 cores it then served less than half the gateway's rate, with a
/// 40 ms p99). Stops when dropped.
#[derive(Debug)]
pub struct EchoHandle {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EchoHandle {
    /// Starts an echo on `127.0.0.1:<ephemeral>`.
    pub async fn start(value_size: usize) -> anyhow::Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").context("bind the echo baseline")?;
        listener.set_nonblocking(true).context("echo listener")?;
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .thread_name("echo-baseline")
            .enable_all()
            .build()
            .context("echo runtime")?;
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("echo-baseline".into())
            .spawn(move || {
                let served = runtime.block_on(async move {
                    let listener = TcpListener::from_std(listener).context("echo listener")?;
                    serve(
                        listener,
                        value_size,
                        Box::pin(async {
                            let _ = stopped.await;
                        }),
                    )
                    .await
                });
                if let Err(e) = served {
                    tracing::error!("echo baseline stopped: {e:#}");
                }
            })
            .context("echo thread")?;
        Ok(Self { addr, stop: Some(stop), thread: Some(thread) })
    }

    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for EchoHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // Not joined: dropping must not block an async caller. The thread
        // ends once the server has drained.
        drop(self.thread.take());
    }
}

/// Accepted connections with `TCP_NODELAY`: tonic sets it only on
/// listeners it binds itself, and without it small responses wait for the
/// peer's delayed ACK (≈ 40 ms tails).
fn incoming(listener: TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}
