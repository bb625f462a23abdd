//! What flows through the request pipeline: a [`Call`] carrying the
//! client's request, and what each layer learned about it.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use prism_proto::control::{Abstraction, NamespaceStatus, Tenant};
use prism_proto::{kv, timeseries as ts};

use crate::auth::Principal;
use crate::error::GatewayError;
use crate::snapshot::{Metadata, NamespaceEntry, Snapshot};

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

/// A namespace name validation accepted, borrowed from the request: the
/// whole `tenant/name` and where its `/` is, so nothing after validation
/// splits the name again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Name<'a> {
    full: &'a str,
    slash: usize,
}

impl<'a> Name<'a> {
    /// `tenant/name`, as the client wrote it.
    pub fn as_str(&self) -> &'a str {
        self.full
    }

    pub fn tenant(&self) -> &'a str {
        self.full.get(..self.slash).unwrap_or_default()
    }
}

impl std::fmt::Display for Name<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.full)
    }
}

/// What validation learned of the request's namespace name: that it is a
/// valid `tenant/name`, and where its `/` is (a part is at most 63 bytes).
/// Only [`Call::validated`] makes one, from the parsed name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validated {
    slash: u8,
}

/// The snapshot a call is decided on, loaded once per request by the first
/// layer that needs it (the metrics layer when it counts per namespace,
/// else authorization), with the request's namespace as found in it (not
/// deleted). Authorization takes it and drops it before the call leaves
/// the synchronous layers, so the guard is held only briefly, as
/// `arc_swap` asks.
#[derive(Debug)]
pub struct Loaded {
    pub snapshot: arc_swap::Guard<Arc<Snapshot>>,
    pub entry: Option<Arc<NamespaceEntry>>,
}

impl Loaded {
    pub fn new(metadata: &Metadata, name: &str) -> Self {
        let snapshot = metadata.load();
        let entry = snapshot.namespace(name).filter(|e| e.status != NamespaceStatus::Deleted).cloned();
        Self { snapshot, entry }
    }
}

/// What authorization resolved for a call of one of this shard's
/// namespaces, all from one snapshot; the quota layer, the access audit,
/// the operations and the plugin call read it, and nothing after
/// authorization looks the snapshot up again.
///
/// It holds the namespace's entry and its tenant, not the snapshot: they
/// are all that is read later, and as `Arc`s of that one snapshot they
/// cannot come from two revisions (a request never sees a newer tenant
/// with an older namespace). Keeping the snapshot too would cost an atomic
/// increment and decrement per request, or an `arc_swap` guard held across
/// the backend call.
#[derive(Debug)]
pub struct Resolved {
    /// The namespace, counted in flight while the call holds it.
    pub namespace: InFlight,
    /// Its tenant (ACTIVE: authorization refused any other state).
    pub tenant: Arc<Tenant>,
    /// Who is calling.
    pub principal: Principal,
}

impl Resolved {
    pub fn entry(&self) -> &Arc<NamespaceEntry> {
        self.namespace.entry()
    }
}

/// One request on its way through the pipeline.
#[derive(Debug)]
pub struct Call {
    pub request: Request,
    /// The `authorization` metadata, if any.
    pub authorization: Option<String>,
    /// The common name of the verified client certificate (mTLS), if any.
    pub client_cert: Option<String>,
    /// Where the call came from (the TCP peer), for the audit log.
    pub client_addr: Option<std::net::SocketAddr>,
    /// Set by validation: the namespace name is valid ([`Call::namespace`]).
    validated: Option<Validated>,
    /// Set by authentication; authorization moves it into the context.
    pub principal: Option<Principal>,
    /// The snapshot, once a layer has loaded it ([`Call::load`]).
    pub loaded: Option<Loaded>,
    /// Set by authorization for a call this shard serves.
    pub resolved: Option<Resolved>,
    /// The caller's W3C trace context (`traceparent`, `tracestate`), if
    /// it sent a valid one: the request's span continues that trace.
    pub trace: Option<prism_telemetry::trace::TraceParent>,
    /// When the caller stops waiting (its `grpc-timeout`), if it said.
    pub deadline: Option<tokio::time::Instant>,
    /// Whether another gateway forwarded this call here
    /// ([`crate::forward::FORWARDED_BY`]): it is not forwarded again.
    pub forwarded: bool,
    /// Set by authorization when another shard owns the namespace and the
    /// call goes there ([`crate::layers::Forward`]).
    pub forward: Option<crate::forward::Destination>,
}

impl Call {
    pub fn new(request: Request, authorization: Option<String>) -> Self {
        Self {
            request,
            authorization,
            client_cert: None,
            client_addr: None,
            validated: None,
            principal: None,
            loaded: None,
            resolved: None,
            trace: None,
            deadline: None,
            forwarded: false,
            forward: None,
        }
    }

    /// Parses and checks the namespace name, once: validation's first step.
    pub fn validate_namespace(&mut self) -> Result<(), prism_proto::names::NameError> {
        let name = prism_proto::names::NamespaceName::parse(self.request.namespace())?;
        let slash = u8::try_from(name.tenant.len()).map_err(|_| prism_proto::names::NameError::TooLong(name.tenant.len()))?;
        self.validated = Some(Validated { slash });
        Ok(())
    }

    /// The namespace name, once validation accepted it.
    pub fn namespace(&self) -> Option<Name<'_>> {
        self.validated.map(|v| Name { full: self.request.namespace(), slash: usize::from(v.slash) })
    }

    /// The namespace name, or an internal error for a layer that runs
    /// before validation (a bug).
    pub fn name(&self) -> crate::error::Result<Name<'_>> {
        self.namespace().ok_or_else(|| GatewayError::Internal("a layer ran before validation".into()))
    }

    /// The snapshot this call is decided on, loaded now if no layer has.
    pub fn load(&mut self, metadata: &Metadata) -> &Loaded {
        self.loaded.get_or_insert_with(|| Loaded::new(metadata, self.request.namespace()))
    }

    /// What authorization resolved, or an internal error for a layer that
    /// runs before it (a bug).
    pub fn resolved(&self) -> crate::error::Result<&Resolved> {
        self.resolved.as_ref().ok_or_else(|| GatewayError::Internal("a layer ran before authorization".into()))
    }
}

/// Runs one gRPC request through the pipeline: the shared edge of the
/// KeyValue and TimeSeries services, where errors become statuses.
pub async fn run<T>(
    pipeline: &crate::layers::Pipeline,
    req: tonic::Request<T>,
    wrap: fn(T) -> Request,
) -> Result<Response, tonic::Status> {
    use tower::ServiceExt;
    let authorization = req.metadata().get("authorization").and_then(|v| v.to_str().ok()).map(str::to_owned);
    // Certificates are there only when TLS verified them against the
    // configured client CA.
    let client_cert = req.peer_certs().and_then(|certs| certs.first().and_then(|c| prism_tls::common_name(c.as_ref())));
    let trace = trace_context(req.metadata());
    let client_addr = req.remote_addr();
    let deadline = req
        .metadata()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
        .and_then(|t| tokio::time::Instant::now().checked_add(t));
    let forwarded = req.metadata().contains_key(crate::forward::FORWARDED_BY);
    let mut call = Call::new(wrap(req.into_inner()), authorization);
    call.client_cert = client_cert;
    call.trace = trace;
    call.client_addr = client_addr;
    call.deadline = deadline;
    call.forwarded = forwarded;
    pipeline.clone().oneshot(call).await.map_err(crate::error::GatewayError::into_status)
}

/// A `grpc-timeout` value (at most 8 digits and a unit: `H`, `M`, `S`,
/// `m`, `u`, `n`), as gRPC over HTTP/2 defines it; `None` when malformed.
pub fn parse_grpc_timeout(value: &str) -> Option<std::time::Duration> {
    use std::time::Duration;
    let unit = value.chars().last()?;
    let digits = &value[..value.len() - unit.len_utf8()];
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        'H' => Duration::from_secs(n * 3600),
        'M' => Duration::from_secs(n * 60),
        'S' => Duration::from_secs(n),
        'm' => Duration::from_millis(n),
        'u' => Duration::from_micros(n),
        'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The caller's `traceparent` / `tracestate`, when valid (an invalid one
/// is ignored: the request starts a trace of its own, as W3C asks).
fn trace_context(metadata: &tonic::metadata::MetadataMap) -> Option<prism_telemetry::trace::TraceParent> {
    use prism_telemetry::trace::{TRACEPARENT, TRACESTATE, TraceParent};
    let parent = metadata.get(TRACEPARENT)?.to_str().ok()?;
    TraceParent::parse(parent, metadata.get(TRACESTATE).and_then(|v| v.to_str().ok()))
}

/// The status for a pipeline that answered a different RPC (a bug).
pub fn unexpected() -> tonic::Status {
    crate::error::GatewayError::Internal("the pipeline answered another rpc".into()).into_status()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::parse_grpc_timeout;

    #[test]
    fn reads_grpc_timeouts_and_refuses_malformed_ones() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("99999999u"), Some(Duration::from_micros(99_999_999)));
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("1M"), Some(Duration::from_secs(60)));
        assert_eq!(parse_grpc_timeout("7n"), Some(Duration::from_nanos(7)));
        for bad in ["", "S", "123456789S", "5s", "-5S", "5 S", "5", "é", "5é"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }
}
