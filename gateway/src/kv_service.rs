//! `prism.kv.v1.KeyValueService` over gRPC: wraps each request in a
//! [`call::Call`] and runs it through the pipeline ([`edge`]). Errors
//! become statuses there, at the edge, and nowhere else.

use prism_proto::kv::key_value_service_server::KeyValueService;
use prism_proto::kv::*;
use tonic::{Request, Response, Status};

use crate::layers::Pipeline;
use crate::{call, edge};

#[derive(Clone)]
pub struct KvService {
    pipeline: Pipeline,
}

impl KvService {
    pub fn new(pipeline: Pipeline) -> Self {
        Self { pipeline }
    }
}

#[tonic::async_trait]
impl KeyValueService for KvService {
    async fn put_items(&self, req: Request<PutItemsRequest>) -> Result<Response<PutItemsResponse>, Status> {
        match edge::run(&self.pipeline, req, call::Request::Put).await? {
            call::Response::Put(r) => Ok(Response::new(r)),
            _ => Err(edge::unexpected()),
        }
    }

    async fn get_items(&self, req: Request<GetItemsRequest>) -> Result<Response<GetItemsResponse>, Status> {
        match edge::run(&self.pipeline, req, call::Request::Get).await? {
            call::Response::Get(r) => Ok(Response::new(r)),
            _ => Err(edge::unexpected()),
        }
    }

    async fn delete_items(&self, req: Request<DeleteItemsRequest>) -> Result<Response<DeleteItemsResponse>, Status> {
        match edge::run(&self.pipeline, req, call::Request::Delete).await? {
            call::Response::Delete(r) => Ok(Response::new(r)),
            _ => Err(edge::unexpected()),
        }
    }

    async fn mutate_items(&self, req: Request<MutateItemsRequest>) -> Result<Response<MutateItemsResponse>, Status> {
        match edge::run(&self.pipeline, req, call::Request::Mutate).await? {
            call::Response::Mutate(r) => Ok(Response::new(r)),
            _ => Err(edge::unexpected()),
        }
    }

    async fn scan_items(&self, req: Request<ScanItemsRequest>) -> Result<Response<ScanItemsResponse>, Status> {
        match edge::run(&self.pipeline, req, call::Request::Scan).await? {
            call::Response::Scan(r) => Ok(Response::new(r)),
            _ => Err(edge::unexpected()),
        }
    }
}
