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
mod forward;
mod metrics;
mod quota;
mod shed;
mod trace;
mod validate;

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::{Either, Ready, ready};
use tower::util::BoxCloneSyncService;
use tower::{Layer, Service, ServiceBuilder};

pub use access_audit::{AccessAudit, AccessAuditLayer};
pub use authn::{Authenticate, AuthenticateLayer, VerifiedTokens};
pub use authz::{Authorize, AuthorizeLayer, allowed as authz_allowed};
pub use forward::{Forward, ForwardLayer};
pub use metrics::{Metrics, MetricsLayer};
pub use quota::{Admitted, Quota, QuotaLayer};
pub use shed::{DeadlineLayer, LoadShedLayer};
pub use trace::TraceLayer;
pub use validate::{Validate, ValidateLayer, limits, validate as validate_request};

use crate::call::{Call, Response};
use crate::error::{GatewayError, Result};
use crate::metrics::{Layer as RefusingLayer, Refusals};
use crate::router::Router;
use crate::server::Shared;

/// The assembled pipeline, cheap to clone per request.
pub type Pipeline = BoxCloneSyncService<Call, Response, GatewayError>;

/// Builds the pipeline; requests are counted per namespace when a metrics
/// listener serves them.
pub fn pipeline(shared: &Arc<Shared>) -> Pipeline {
    pipeline_counting(shared, shared.metrics.counts_requests())
}

/// Builds the pipeline, with the per-namespace request counting of
/// [`MetricsLayer`] or without (benchmarks compare the two). The order is
/// the design:
pub fn pipeline_counting(shared: &Arc<Shared>, count_requests: bool) -> Pipeline {
    let config = &shared.config;
    let refusals = shared.metrics.refusals.clone();
    let authenticate = Authenticate::new(&config.auth, shared.audit.clone());
    // The token cache's hits and misses are metrics; the first pipeline's
    // cache is the one that serves.
    let _ = shared.metrics.tokens.set(authenticate.tokens());
    let stack = ServiceBuilder::new()
        // Outermost, so every request is counted whatever refuses it, and
        // its latency is the whole pipeline's. Only when a metrics listener
        // serves the counts.
        .option_layer(count_requests.then(|| MetricsLayer::new(shared.clone())))
        // Then the span, so it and its outcome cover every refusal below,
        // including load shedding.
        .layer(TraceLayer)
        // Shed before any work is done: overload answers UNAVAILABLE at once
        // instead of queueing without bound.
        .layer(LoadShedLayer::new(config.limits.max_in_flight).counting(refusals.clone()))
        // Admitted requests get a deadline; a stuck backend cannot hold a
        // concurrency slot forever.
        .layer(DeadlineLayer::new(config.request_timeout()).counting(refusals.clone()))
        // Shape checks cost nothing and need no metadata: a malformed
        // request is refused before any token is verified.
        .layer(ValidateLayer::new(Validate).counting(RefusingLayer::Validate, refusals.clone()))
        // Who is calling (signature verification, the first real CPU cost).
        .layer(AuthenticateLayer::new(authenticate).counting(RefusingLayer::Authn, refusals.clone()))
        // Loads the metadata snapshot once: namespace, tenant, shard,
        // status, grants. Everything below reads the namespace it found.
        .layer(
            AuthorizeLayer::new(
                Authorize::new(shared.metadata.clone(), config.shard_id.clone(), shared.audit.clone())
                    .forwarding(config.forwarding.enabled),
            )
            .counting(RefusingLayer::Authz, refusals),
        )
        // A call authorization marked for another shard goes there, with
        // the caller's token, and comes back with the owner's answer; the
        // owner audits it and charges its quotas.
        .layer(ForwardLayer::new(shared.forwarder.clone()))
        // Needs the principal and the namespace (its audit rate); wraps
        // quota and backend, so only requests that succeeded are recorded.
        .layer(AccessAuditLayer::new(shared.audit.clone()))
        // Limits that depend on the namespace and tenant. After
        // authorization, so an unauthorized caller cannot spend a tenant's
        // quota; innermost, so the admission (a concurrency slot) is held
        // exactly while the backend works and read bytes are charged from
        // the response.
        .layer(QuotaLayer::new(shared.quotas.clone()).counting(shared.metrics.clone()))
        .service(Router::new(shared.clone()));
    BoxCloneSyncService::new(stack)
}

/// A synchronous step of the pipeline.
pub trait Step: Clone + Send + Sync + 'static {
    fn check(&self, call: &mut Call) -> Result<()>;
}

/// Builds [`Check`] services for one step.
#[derive(Debug, Clone)]
pub struct CheckLayer<S> {
    step: S,
    /// Which layer the step is, and where its refusals are counted.
    counted: Option<(RefusingLayer, Arc<Refusals>)>,
}

impl<S> CheckLayer<S> {
    pub fn new(step: S) -> Self {
        Self { step, counted: None }
    }

    /// Counts the step's refusals as `layer`'s into `refusals`.
    pub fn counting(mut self, layer: RefusingLayer, refusals: Arc<Refusals>) -> Self {
        self.counted = Some((layer, refusals));
        self
    }
}

impl<S: Clone, I> Layer<I> for CheckLayer<S> {
    type Service = Check<S, I>;

    fn layer(&self, inner: I) -> Self::Service {
        Check { step: self.step.clone(), counted: self.counted.clone(), inner }
    }
}

/// Runs a [`Step`], then the inner service.
#[derive(Debug, Clone)]
pub struct Check<S, I> {
    step: S,
    counted: Option<(RefusingLayer, Arc<Refusals>)>,
    inner: I,
}

impl<S, I> Service<Call> for Check<S, I>
where
    S: Step,
    I: Service<Call, Response = Response, Error = GatewayError>,
{
    type Response = Response;
    type Error = GatewayError;
    type Future = Either<Ready<Result<Response>>, I::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut call: Call) -> Self::Future {
        match self.step.check(&mut call) {
            Ok(()) => Either::Right(self.inner.call(call)),
            Err(e) => {
                if let Some((layer, refusals)) = &self.counted {
                    refusals.record(*layer, crate::metrics::reason(&e));
                }
                Either::Left(ready(Err(e)))
            }
        }
    }
}
