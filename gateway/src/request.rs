//! A KeyValue or TimeSeries request as the client sent it, its response,
//! and what the pipeline asks of every request (its RPC, abstraction,
//! whether it reads or writes).

use prism_proto::control::Abstraction;
use prism_proto::{kv, timeseries as ts};

/// A KeyValue or TimeSeries request as the client sent it.
#[derive(Debug, Clone)]
pub enum Request {
    Put(kv::PutItemsRequest),
    Get(kv::GetItemsRequest),
    Delete(kv::DeleteItemsRequest),
    Mutate(kv::MutateItemsRequest),
    Scan(kv::ScanItemsRequest),
    WriteSync(ts::WriteEventRecordsRequest),
    WriteBuffered(ts::WriteEventRecordsRequest),
    Read(ts::ReadEventRecordsRequest),
    Search(ts::SearchEventRecordsRequest),
    Tail(ts::TailEventRecordsRequest),
}

/// The events a tail streams.
pub type TailStream = futures_util::stream::BoxStream<'static, Result<ts::TailEventRecordsResponse, tonic::Status>>;

pub enum Response {
    Put(kv::PutItemsResponse),
    Get(kv::GetItemsResponse),
    Delete(kv::DeleteItemsResponse),
    Mutate(kv::MutateItemsResponse),
    Scan(kv::ScanItemsResponse),
    Write(ts::WriteEventRecordsResponse),
    Read(ts::ReadEventRecordsResponse),
    Search(ts::SearchEventRecordsResponse),
    Tail(TailStream),
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Put(r) => r.fmt(f),
            Self::Get(r) => r.fmt(f),
            Self::Delete(r) => r.fmt(f),
            Self::Mutate(r) => r.fmt(f),
            Self::Scan(r) => r.fmt(f),
            Self::Write(r) => r.fmt(f),
            Self::Read(r) => r.fmt(f),
            Self::Search(r) => r.fmt(f),
            Self::Tail(_) => f.write_str("Tail(..)"),
        }
    }
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
            Self::WriteSync(r) | Self::WriteBuffered(r) => &r.namespace,
            Self::Read(r) => &r.namespace,
            Self::Search(r) => &r.namespace,
            Self::Tail(r) => &r.namespace,
        }
    }

    /// The abstraction the request belongs to.
    pub fn abstraction(&self) -> Abstraction {
        match self {
            Self::Put(_) | Self::Get(_) | Self::Delete(_) | Self::Mutate(_) | Self::Scan(_) => Abstraction::KeyValue,
            _ => Abstraction::TimeSeries,
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
            Self::WriteSync(_) => "WriteEventRecordsSync",
            Self::WriteBuffered(_) => "WriteEventRecords",
            Self::Read(_) => "ReadEventRecords",
            Self::Search(_) => "SearchEventRecords",
            Self::Tail(_) => "TailEventRecords",
        }
    }

    /// The RPC as an index of [`crate::metrics::RPCS`].
    pub fn index(&self) -> usize {
        match self {
            Self::Put(_) => 0,
            Self::Get(_) => 1,
            Self::Delete(_) => 2,
            Self::Mutate(_) => 3,
            Self::Scan(_) => 4,
            Self::WriteSync(_) => 5,
            Self::WriteBuffered(_) => 6,
            Self::Read(_) => 7,
            Self::Search(_) => 8,
            Self::Tail(_) => 9,
        }
    }

    pub fn access(&self) -> Access {
        match self {
            Self::Get(_) | Self::Scan(_) | Self::Read(_) | Self::Search(_) | Self::Tail(_) => Access::Read,
            Self::Put(_) | Self::Delete(_) | Self::Mutate(_) | Self::WriteSync(_) | Self::WriteBuffered(_) => {
                Access::Write
            }
        }
    }
}
