//! `prism.timeseries.v1.TimeSeriesService` over gRPC: wraps each request in
//! a [`call::Call`] and runs it through the same pipeline as KeyValue. Errors
//! become statuses here, at the edge.

use prism_proto::timeseries::time_series_service_server::TimeSeriesService;
use prism_proto::timeseries::*;
use tonic::{Request, Response, Status};

use crate::call::{self, TailStream};
use crate::edge;
use crate::layers::Pipeline;

#[derive(Clone)]
pub struct TsService {
    pipeline: Pipeline,
}

impl TsService {
    pub fn new(pipeline: Pipeline) -> Self {
        Self { pipeline }
    }
}

#[tonic::async_trait]
impl TimeSeriesService for TsService {
    async fn write_event_records_sync(
        &self,
        req: Request<WriteEventRecordsRequest>,
    ) -> Result<Response<WriteEventRecordsResponse>, Status> {
        match edge::run(&self.pipeline, req, call::Request::WriteSync).await? {
            call::Response::Write(r) => Ok(Response::new(r)),
            _ => Err(edge::unexpected()),
        }
    }

    async fn write_event_records(
        &self,
        req: Request<WriteEventRecordsRequest>,
    ) -> Result<Response<WriteEventRecordsResponse>, Status> {
        match edge::run(&self.pipeline, req, call::Request::WriteBuffered).await? {
            call::Response::Write(r) => Ok(Response::new(r)),
            _ => Err(edge::unexpected()),
        }
    }

    async fn read_event_records(
        &self,
        req: Request<ReadEventRecordsRequest>,
    ) -> Result<Response<ReadEventRecordsResponse>, Status> {
        match edge::run(&self.pipeline, req, call::Request::Read).await? {
            call::Response::Read(r) => Ok(Response::new(r)),
            _ => Err(edge::unexpected()),
        }
    }

    async fn search_event_records(
        &self,
        req: Request<SearchEventRecordsRequest>,
    ) -> Result<Response<SearchEventRecordsResponse>, Status> {
        match edge::run(&self.pipeline, req, call::Request::Search).await? {
            call::Response::Search(r) => Ok(Response::new(r)),
            _ => Err(edge::unexpected()),
        }
    }

    async fn tail_event_records(&self, req: Request<TailEventRecordsRequest>) -> Result<Response<TailStream>, Status> {
        match edge::run(&self.pipeline, req, call::Request::Tail).await? {
            call::Response::Tail(stream) => Ok(Response::new(stream)),
            _ => Err(edge::unexpected()),
        }
    }
}
