//! `prism.timeseries.v1.TimeSeriesService` over gRPC: wraps each request in
//! a [`Call`] and runs it through the same pipeline as KeyValue. Errors
//! become statuses here, at the edge.

use prism_proto::timeseries::time_series_service_server::TimeSeriesService;
use prism_proto::timeseries::*;
use tonic::{Request, Response, Status};
use tower::ServiceExt;

use crate::call::{self, Call, TailStream};
use crate::error::GatewayError;
use crate::layers::Pipeline;

#[derive(Clone)]
pub struct TsService {
    pipeline: Pipeline,
}

impl TsService {
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
impl TimeSeriesService for TsService {
    async fn write_event_records_sync(
        &self,
        req: Request<WriteEventRecordsRequest>,
    ) -> Result<Response<WriteEventRecordsResponse>, Status> {
        match self.run(req, call::Request::WriteSync).await? {
            call::Response::Write(r) => Ok(Response::new(r)),
            _ => Err(unexpected()),
        }
    }

    async fn write_event_records(
        &self,
        req: Request<WriteEventRecordsRequest>,
    ) -> Result<Response<WriteEventRecordsResponse>, Status> {
        match self.run(req, call::Request::WriteBuffered).await? {
            call::Response::Write(r) => Ok(Response::new(r)),
            _ => Err(unexpected()),
        }
    }

    async fn read_event_records(
        &self,
        req: Request<ReadEventRecordsRequest>,
    ) -> Result<Response<ReadEventRecordsResponse>, Status> {
        match self.run(req, call::Request::Read).await? {
            call::Response::Read(r) => Ok(Response::new(r)),
            _ => Err(unexpected()),
        }
    }

    async fn search_event_records(
        &self,
        req: Request<SearchEventRecordsRequest>,
    ) -> Result<Response<SearchEventRecordsResponse>, Status> {
        match self.run(req, call::Request::Search).await? {
            call::Response::Search(r) => Ok(Response::new(r)),
            _ => Err(unexpected()),
        }
    }

    async fn tail_event_records(&self, req: Request<TailEventRecordsRequest>) -> Result<Response<TailStream>, Status> {
        match self.run(req, call::Request::Tail).await? {
            call::Response::Tail(stream) => Ok(Response::new(stream)),
            _ => Err(unexpected()),
        }
    }
}
