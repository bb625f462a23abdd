//! The synchronous steps of the pipeline (validate, authenticate,
//! authorize) share one service type, [`Check`], parameterised by the
//! step: it runs the step and either refuses at once or passes the call
//! on, with no boxing.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::{Either, Ready, ready};
use tower::{Layer, Service};

use crate::call::{Call, Response};
use crate::error::{GatewayError, Result};
use crate::metrics::{Layer as RefusingLayer, Refusals};

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
