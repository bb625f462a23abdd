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
pub use authn::{Authenticate, AuthenticateLayer};
pub use authz::{Authorize, AuthorizeLayer, allowed as authz_allowed};
pub use quota::{Admitted, Quota, QuotaLayer};
pub use shed::{DeadlineLayer, LoadShedLayer};
pub use trace::TraceLayer;
pub use validate::{Validate, ValidateLayer, limits};

use crate::call::{Call, Response};
use crate::error::{GatewayError, Result};
use crate::router::Router;
use crate::server::Shared;

/// The assembled pipeline, cheap to clone per request.
pub type Pipeline = BoxCloneSyncService<Call, Response, GatewayError>;

/// Builds the pipeline. The order is the design:
pub fn pipeline(shared: &Arc<Shared>) -> Pipeline {
    let config = &shared.config;
    let stack = ServiceBuilder::new()
        // Outermost, so the span and its outcome cover every refusal below,
        // including load shedding.
        .layer(TraceLayer)
        // Shed before any work is done: overload answers UNAVAILABLE at once
        // instead of queueing without bound.
        .layer(LoadShedLayer::new(config.limits.max_in_flight))
        // Admitted requests get a deadline; a stuck backend cannot hold a
        // concurrency slot forever.
        .layer(DeadlineLayer::new(config.request_timeout()))
        // Shape checks cost nothing and need no metadata: a malformed
        // request is refused before any token is verified.
        .layer(ValidateLayer::new(Validate))
        // Who is calling (signature verification, the first real CPU cost).
        .layer(AuthenticateLayer::new(Authenticate::new(&config.auth, shared.audit.clone())))
        // Loads the metadata snapshot once: namespace, tenant, shard,
        // status, grants. Everything below reads the namespace it found.
        .layer(AuthorizeLayer::new(Authorize::new(
            shared.metadata.clone(),
            config.shard_id.clone(),
            shared.audit.clone(),
        )))
        // Needs the principal and the namespace (its audit rate); wraps
        // quota and backend, so only requests that succeeded are recorded.
        .layer(AccessAuditLayer::new(shared.audit.clone()))
        // Limits that depend on the namespace and tenant. After
        // authorization, so an unauthorized caller cannot spend a tenant's
        // quota; innermost, so the admission (a concurrency slot) is held
        // exactly while the backend works and read bytes are charged from
        // the response.
        .layer(QuotaLayer::new(shared.quotas.clone(), shared.metadata.clone()))
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
}

impl<S> CheckLayer<S> {
    pub fn new(step: S) -> Self {
        Self { step }
    }
}

impl<S: Clone, I> Layer<I> for CheckLayer<S> {
    type Service = Check<S, I>;

    fn layer(&self, inner: I) -> Self::Service {
        Check { step: self.step.clone(), inner }
    }
}

/// Runs a [`Step`], then the inner service.
#[derive(Debug, Clone)]
pub struct Check<S, I> {
    step: S,
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
            Err(e) => Either::Left(ready(Err(e))),
        }
    }
}
