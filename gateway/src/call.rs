//! What flows through the request pipeline: a [`Call`] carrying the
//! client's request, and what each layer learned about it — the parsed
//! namespace name, the snapshot load, the resolved context, or where to
//! forward it.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use prism_proto::control::{NamespaceStatus, Tenant};

pub use crate::request::{Access, Request, Response, TailStream};

use crate::auth::Principal;
use crate::error::GatewayError;
use crate::snapshot::{Metadata, NamespaceEntry, Snapshot};

/// Where authorization decided a call goes: another shard owns its
/// namespace ([`crate::forward`]).
#[derive(Debug, Clone)]
pub struct Destination {
    /// The namespace, as this gateway's snapshot has it.
    pub entry: Arc<NamespaceEntry>,
    /// The owner's registered instances.
    pub endpoints: Vec<String>,
    /// The snapshot's revision.
    pub revision: u64,
}

/// Counts a request against its namespace's in-flight total until dropped,
/// so deleting a namespace can drain the requests already admitted.
#[derive(Debug)]
pub struct InFlight(Arc<NamespaceEntry>);

impl InFlight {
    pub fn enter(entry: Arc<NamespaceEntry>) -> Self {
        entry.local.in_flight.fetch_add(1, Ordering::AcqRel);
        Self(entry)
    }

    pub fn entry(&self) -> &Arc<NamespaceEntry> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.local.in_flight.fetch_sub(1, Ordering::AcqRel);
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
    /// Who is calling (shared with the verified-token cache: no copy per
    /// request).
    pub principal: Arc<Principal>,
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
    pub principal: Option<Arc<Principal>>,
    /// The snapshot, once a layer has loaded it ([`Call::load`]).
    pub loaded: Option<Loaded>,
    /// Set by authorization for a call this shard serves.
    pub resolved: Option<Resolved>,
    /// The caller's W3C trace context (`traceparent`, `tracestate`), if
    /// it sent a valid one: the request's span continues that trace.
    pub trace: Option<prism_telemetry::trace::TraceParent>,
    /// When the caller stops waiting (its `grpc-timeout`), if it said.
    pub deadline: Option<tokio::time::Instant>,
    /// Set by the deadline layer: when a read ends its page early, and
    /// when the request is cut off (the caller's deadline or the gateway's
    /// own bound, whichever comes first).
    pub stop_by: Option<prism_plugin_api::pace::StopBy>,
    /// Whether another gateway forwarded this call here
    /// ([`crate::forward::FORWARDED_BY`]): it is not forwarded again.
    pub forwarded: bool,
    /// Set by authorization when another shard owns the namespace and the
    /// call goes there ([`crate::layers::Forward`]).
    pub forward: Option<Destination>,
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
            stop_by: None,
            forwarded: false,
            forward: None,
        }
    }

    /// Parses and checks the namespace name, once: validation's first step.
    pub fn validate_namespace(&mut self) -> Result<(), prism_proto::names::NameError> {
        let name = prism_proto::names::NamespaceName::parse(self.request.namespace())?;
        let slash =
            u8::try_from(name.tenant.len()).map_err(|_| prism_proto::names::NameError::TooLong(name.tenant.len()))?;
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
