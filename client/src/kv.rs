//! The KeyValue API of a [`Prism`] client: each method takes the protobuf
//! request, routes it by `request.namespace` to the owning shard, and
//! retries as [`Prism::call`] says. Every KeyValue call is retried on
//! UNAVAILABLE: reads are idempotent, and writes get an idempotency token
//! (the current time and a unique token) when the caller left it empty,
//! so a retried write is applied once. The same token is sent on every
//! attempt.

use prism_proto::kv::key_value_service_client::KeyValueServiceClient;
use prism_proto::kv::{
    DeleteItemsRequest, DeleteItemsResponse, GetItemsRequest, GetItemsResponse, MutateItemsRequest,
    MutateItemsResponse, PutItemsRequest, PutItemsResponse, ScanItemsRequest, ScanItemsResponse,
};
use tonic::transport::Channel;

use crate::error::Result;
use crate::prism::{Prism, Retry};
use crate::retry::ensure_token;
use crate::{KeyValueClient, MAX_MESSAGE_BYTES};

/// KeyValue calls routed by namespace. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Kv {
    prism: Prism,
}

impl Kv {
    pub(crate) fn new(prism: Prism) -> Self {
        Self { prism }
    }

    fn client(&self, channel: Channel) -> KeyValueClient {
        KeyValueServiceClient::with_interceptor(channel, self.prism.auth())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// Upserts items of one record.
    pub async fn put_items(&self, mut request: PutItemsRequest) -> Result<PutItemsResponse> {
        ensure_token(&mut request.idempotency_token);
        let namespace = request.namespace.clone();
        self.prism
            .call(&namespace, Retry::Idempotent, |c| {
                let request = request.clone();
                async move { self.client(c).put_items(request).await }
            })
            .await
    }

    /// Items of one record, in key order, one page.
    pub async fn get_items(&self, request: GetItemsRequest) -> Result<GetItemsResponse> {
        let namespace = request.namespace.clone();
        self.prism
            .call(&namespace, Retry::Idempotent, |c| {
                let request = request.clone();
                async move { self.client(c).get_items(request).await }
            })
            .await
    }

    /// Deletes keys, a key range or the whole record.
    pub async fn delete_items(&self, mut request: DeleteItemsRequest) -> Result<DeleteItemsResponse> {
        ensure_token(&mut request.idempotency_token);
        let namespace = request.namespace.clone();
        self.prism
            .call(&namespace, Retry::Idempotent, |c| {
                let request = request.clone();
                async move { self.client(c).delete_items(request).await }
            })
            .await
    }

    /// Puts and deletes on one record, all or nothing.
    pub async fn mutate_items(&self, mut request: MutateItemsRequest) -> Result<MutateItemsResponse> {
        ensure_token(&mut request.idempotency_token);
        let namespace = request.namespace.clone();
        self.prism
            .call(&namespace, Retry::Idempotent, |c| {
                let request = request.clone();
                async move { self.client(c).mutate_items(request).await }
            })
            .await
    }

    /// Every record of the namespace, one page.
    pub async fn scan_items(&self, request: ScanItemsRequest) -> Result<ScanItemsResponse> {
        let namespace = request.namespace.clone();
        self.prism
            .call(&namespace, Retry::Idempotent, |c| {
                let request = request.clone();
                async move { self.client(c).scan_items(request).await }
            })
            .await
    }
}
