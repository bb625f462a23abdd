//! What flows through the request pipeline: a [`Call`] carrying the
//! client's request, and what each layer learned about it.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use prism_proto::kv;

use crate::auth::Principal;
use crate::snapshot::NamespaceEntry;

/// A KeyValue request as the client sent it.
#[derive(Debug, Clone)]
pub enum Request {
    Put(kv::PutItemsRequest),
    Get(kv::GetItemsRequest),
    Delete(kv::DeleteItemsRequest),
    Mutate(kv::MutateItemsRequest),
    Scan(kv::ScanItemsRequest),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Response {
    Put(kv::PutItemsResponse),
    Get(kv::GetItemsResponse),
    Delete(kv::DeleteItemsResponse),
    Mutate(kv::MutateItemsResponse),
    Scan(kv::ScanItemsResponse),
}

/// Whether a request reads or writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

impl Request {
    pub fn namespace(&self) -> &str {
        match self {
            Self::Put(r) => &r.namespace,
            Self::Get(r) => &r.namespace,
            Self::Delete(r) => &r.namespace,
            Self::Mutate(r) => &r.namespace,
            Self::Scan(r) => &r.namespace,
        }
    }

    /// The RPC name (a bounded label for spans, metrics and audit).
    pub fn rpc(&self) -> &'static str {
        match self {
            Self::Put(_) => "PutItems",
            Self::Get(_) => "GetItems",
            Self::Delete(_) => "DeleteItems",
            Self::Mutate(_) => "MutateItems",
            Self::Scan(_) => "ScanItems",
        }
    }

    pub fn access(&self) -> Access {
        match self {
            Self::Get(_) | Self::Scan(_) => Access::Read,
            Self::Put(_) | Self::Delete(_) | Self::Mutate(_) => Access::Write,
        }
    }
}

/// Counts a request against its namespace's in-flight total until dropped,
/// so deleting a namespace can drain the requests already admitted.
#[derive(Debug)]
pub struct InFlight(Arc<NamespaceEntry>);

impl InFlight {
    pub fn enter(entry: Arc<NamespaceEntry>) -> Self {
        entry.in_flight.fetch_add(1, Ordering::AcqRel);
        Self(entry)
    }

    pub fn entry(&self) -> &Arc<NamespaceEntry> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One request on its way through the pipeline.
#[derive(Debug)]
pub struct Call {
    pub request: Request,
    /// The `authorization` metadata, if any.
    pub authorization: Option<String>,
    /// Set by authentication.
    pub principal: Option<Principal>,
    /// Set by authorization: the namespace, counted in flight.
    pub namespace: Option<InFlight>,
}

impl Call {
    pub fn new(request: Request, authorization: Option<String>) -> Self {
        Self { request, authorization, principal: None, namespace: None }
    }
}
