//! The request pipeline: one tower `Layer` per cross-cutting concern,
//! assembled in [`pipeline`] and nowhere else.
//!
//! The synchronous checks (validate, authenticate, authorize) share one
//! service type, [`Check`], parameterised by the check: it runs the check
//! and either refuses at once or passes the call on, with no boxing. The
//! quota layer also needs the response (read bytes, concurrency), so it is
//! its own service, equally without boxing.

mod access_audit;
mod authn;
mod authz;
mod check;
mod forward;
mod metrics;
mod quota;
mod shed;
mod trace;
mod validate;

use std::sync::Arc;

use tower::ServiceBuilder;
use tower::util::BoxCloneSyncService;

pub use access_audit::{AccessAudit, AccessAuditLayer};
pub use authn::{Authenticate, AuthenticateLayer, VerifiedTokens};
pub use authz::{Authorize, AuthorizeLayer, allowed as authz_allowed};
pub use check::{Check, CheckLayer, Step};
pub use forward::{Forward, ForwardLayer};
pub use metrics::{Metrics, MetricsLayer};
pub use quota::{Admitted, Quota, QuotaLayer};
pub use shed::{DeadlineLayer, LoadShedLayer};
pub use trace::TraceLayer;
pub use validate::{Validate, ValidateLayer, validate as validate_request};

use crate::audit::AuditSink;
use crate::call::{Call, Response};
use crate::config::GatewayConfig;
use crate::error::GatewayError;
use crate::forward::Forwarder;
use crate::metrics::{GatewayMetrics, Layer as RefusingLayer};
use crate::operations::Operations;
use crate::quota::QuotaRegistry;
use crate::router::Router;
use crate::snapshot::Metadata;

/// The assembled pipeline, cheap to clone per request.
pub type Pipeline = BoxCloneSyncService<Call, Response, GatewayError>;

/// What the pipeline is built from; each layer is given its part.
#[derive(Debug, Clone)]
pub struct Parts<'a> {
    pub config: &'a GatewayConfig,
    /// This instance's store id: authorization forwards an embedded
    /// namespace another instance owns to it.
    pub store_id: Arc<str>,
    pub metadata: Arc<Metadata>,
    pub metrics: Arc<GatewayMetrics>,
    pub audit: Arc<AuditSink>,
    /// The verified-token cache every pipeline of the gateway shares.
    pub tokens: Arc<VerifiedTokens>,
    pub quotas: Arc<QuotaRegistry>,
    pub forwarder: Arc<Forwarder>,
    pub operations: Arc<Operations>,
}

/// Builds the pipeline; requests are counted per namespace when a metrics
/// listener serves them.
pub fn pipeline(parts: Parts<'_>) -> Pipeline {
    let count_requests = parts.metrics.counts_requests();
    pipeline_counting(parts, count_requests)
}

/// Builds the pipeline, with the per-namespace request counting of
/// [`MetricsLayer`] or without (benchmarks compare the two). The order is
/// the design:
pub fn pipeline_counting(parts: Parts<'_>, count_requests: bool) -> Pipeline {
    let Parts { config, store_id, metadata, metrics, audit, tokens, quotas, forwarder, operations } = parts;
    let refusals = metrics.refusals.clone();
    let authenticate = Authenticate::new(&config.auth, audit.clone()).sharing(tokens);
    let stack = ServiceBuilder::new()
        // Outermost, so every request is counted whatever refuses it, and
        // its latency is the whole pipeline's. Only when a metrics listener
        // serves the counts. It loads the call's snapshot for its label;
        // authorization decides on that same load.
        .option_layer(count_requests.then(|| MetricsLayer::new(metadata.clone(), metrics.clone())))
        // Then the span, so it and its outcome cover every refusal below,
        // including load shedding.
        .layer(TraceLayer)
        // Shed before any work is done: overload answers UNAVAILABLE at once
        // instead of queueing without bound.
        .layer(LoadShedLayer::new(config.limits.max_in_flight).counting(refusals.clone()))
        // Admitted requests get a deadline (the caller's, or the gateway's
        // own bound): reads end their page early before it, and a stuck
        // backend cannot hold a concurrency slot forever.
        .layer(
            DeadlineLayer::new(config.request_timeout())
                .charging(config.limits.read_charge_per_item)
                .counting(refusals.clone()),
        )
        // Shape checks cost nothing and need no metadata: a malformed
        // request is refused before any token is verified. The namespace
        // name is parsed here, once.
        .layer(ValidateLayer::new(Validate).counting(RefusingLayer::Validate, refusals.clone()))
        // Who is calling (signature verification, the first real CPU cost).
        .layer(AuthenticateLayer::new(authenticate).counting(RefusingLayer::Authn, refusals.clone()))
        // Decides on the call's one snapshot load: namespace, tenant,
        // shard, status, grants. Everything below reads the context it
        // attaches (entry, tenant, principal).
        .layer(
            AuthorizeLayer::new(
                Authorize::new(metadata, config.shard_id.clone(), audit.clone())
                    .store(store_id)
                    .forwarding(config.forwarding.enabled),
            )
            .counting(RefusingLayer::Authz, refusals),
        )
        // A call authorization marked for another shard goes there, with
        // the caller's token, and comes back with the owner's answer; the
        // owner audits it and charges its quotas.
        .layer(ForwardLayer::new(forwarder))
        // Needs the principal and the namespace (its audit rate); wraps
        // quota and backend, so only requests that succeeded are recorded.
        .layer(AccessAuditLayer::new(audit))
        // Limits that depend on the namespace and tenant. After
        // authorization, so an unauthorized caller cannot spend a tenant's
        // quota; innermost, so the admission (a concurrency slot) is held
        // exactly while the backend works and read bytes are charged from
        // the response.
        .layer(QuotaLayer::new(quotas).counting(metrics))
        .service(Router::new(operations));
    BoxCloneSyncService::new(stack)
}
