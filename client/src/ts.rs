//! The TimeSeries API of a [`Prism`] client: each method takes the
//! protobuf request and routes it by `request.namespace` to the owning
//! shard. Writes are retried on UNAVAILABLE like reads: an event is
//! identified by `(time_series_id, event_time, event_id, key)`, so writing
//! it again is a no-op. A tail is only routed (a redirect is followed
//! before the stream opens); a broken stream is the caller's to reopen.

use prism_proto::timeseries::time_series_service_client::TimeSeriesServiceClient;
use prism_proto::timeseries::{
    ReadEventRecordsRequest, ReadEventRecordsResponse, SearchEventRecordsRequest, SearchEventRecordsResponse,
    TailEventRecordsRequest, TailEventRecordsResponse, WriteEventRecordsRequest, WriteEventRecordsResponse,
};
use tonic::transport::Channel;

use crate::error::Result;
use crate::prism::{Prism, Retry};
use crate::{MAX_MESSAGE_BYTES, TimeSeriesClient};

/// TimeSeries calls routed by namespace. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Ts {
    prism: Prism,
}

impl Ts {
    pub(crate) fn new(prism: Prism) -> Self {
        Self { prism }
    }

    fn client(&self, channel: Channel) -> TimeSeriesClient {
        TimeSeriesServiceClient::with_interceptor(channel, self.prism.auth())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// Writes events, acknowledged once durable.
    pub async fn write_event_records_sync(
        &self,
        request: WriteEventRecordsRequest,
    ) -> Result<WriteEventRecordsResponse> {
        let namespace = request.namespace.clone();
        self.prism
            .call(&namespace, Retry::Idempotent, |c| {
                let request = request.clone();
                async move { self.client(c).write_event_records_sync(request).await }
            })
            .await
    }

    /// Writes events into the gateway's buffer (loss-tolerant namespaces).
    pub async fn write_event_records(&self, request: WriteEventRecordsRequest) -> Result<WriteEventRecordsResponse> {
        let namespace = request.namespace.clone();
        self.prism
            .call(&namespace, Retry::Idempotent, |c| {
                let request = request.clone();
                async move { self.client(c).write_event_records(request).await }
            })
            .await
    }

    /// Events of one series in an interval, newest first, one page.
    pub async fn read_event_records(&self, request: ReadEventRecordsRequest) -> Result<ReadEventRecordsResponse> {
        let namespace = request.namespace.clone();
        self.prism
            .call(&namespace, Retry::Idempotent, |c| {
                let request = request.clone();
                async move { self.client(c).read_event_records(request).await }
            })
            .await
    }

    /// Events of any series matching tags, newest first, one page.
    pub async fn search_event_records(&self, request: SearchEventRecordsRequest) -> Result<SearchEventRecordsResponse> {
        let namespace = request.namespace.clone();
        self.prism
            .call(&namespace, Retry::Idempotent, |c| {
                let request = request.clone();
                async move { self.client(c).search_event_records(request).await }
            })
            .await
    }

    /// A stream of new events of the namespace, from its owner.
    pub async fn tail_event_records(
        &self,
        request: TailEventRecordsRequest,
    ) -> Result<tonic::Streaming<TailEventRecordsResponse>> {
        let namespace = request.namespace.clone();
        self.prism
            .call(&namespace, Retry::RedirectsOnly, |c| {
                let request = request.clone();
                async move { self.client(c).tail_event_records(request).await }
            })
            .await
    }
}
