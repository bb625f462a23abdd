//! `prism.kv.v1.KeyValueService` over gRPC: wraps each request in a
//! [`Call`] and runs it through the pipeline. Errors become statuses here,
//! at the edge, and nowhere else.

use prism_proto::kv::key_value_service_server::KeyValueService;
use prism_proto::kv::*;
use tonic::{Request, Response, Status};
use tower::ServiceExt;

use crate::call::{self, Call};
use crate::error::GatewayError;
use crate::layers::Pipeline;

#[derive(Clone)]
pub struct KvService {
    pipeline: Pipeline,
}

impl KvService {
    pub fn new(pipeline: Pipeline) -> Self {
        Self { pipeline }
    }

    async fn run<T>(&self, req: Request<T>, wrap: fn(T) -> call::Request) -> Result<call::Response, Status> {
        let authorization = req.metadata().get("authorization").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let call = Call::new(wrap(req.into_inner()), authorization);
        self.pipeline.clone().oneshot(call).await.map_err(GatewayError::into_status)
    }
}

fn unexpected() -> Status {
    GatewayError::Internal("the pipeline answered another rpc".into()).into_status()
}

#[tonic::async_trait]
impl KeyValueService for KvService {
    async fn put_items(&self, req: Request<PutItemsRequest>) -> Result<Response<PutItemsResponse>, Status> {
        match self.run(req, call::Request::Put).await? {
            call::Response::Put(r) => Ok(Response::new(r)),
            _ => Err(unexpected()),
        }
    }

    async fn get_items(&self, req: Request<GetItemsRequest>) -> Result<Response<GetItemsResponse>, Status> {
        match self.run(req, call::Request::Get).await? {
            call::Response::Get(r) => Ok(Response::new(r)),
            _ => Err(unexpected()),
        }
    }

    async fn delete_items(&self, req: Request<DeleteItemsRequest>) -> Result<Response<DeleteItemsResponse>, Status> {
        match self.run(req, call::Request::Delete).await? {
            call::Response::Delete(r) => Ok(Response::new(r)),
            _ => Err(unexpected()),
        }
    }

    async fn mutate_items(&self, req: Request<MutateItemsRequest>) -> Result<Response<MutateItemsResponse>, Status> {
        match self.run(req, call::Request::Mutate).await? {
            call::Response::Mutate(r) => Ok(Response::new(r)),
            _ => Err(unexpected()),
        }
    }

    async fn scan_items(&self, req: Request<ScanItemsRequest>) -> Result<Response<ScanItemsResponse>, Status> {
        match self.run(req, call::Request::Scan).await? {
            call::Response::Scan(r) => Ok(Response::new(r)),
            _ => Err(unexpected()),
        }
    }
}
