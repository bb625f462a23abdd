//! Sends a call that authorization marked for another shard to that shard
//! ([`crate::forward`]); every other call goes on down the pipeline.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::{BoxFuture, Either};
use tower::{Layer, Service};

use crate::call::{Call, Response};
use crate::error::{GatewayError, Result};
use crate::forward::Forwarder;

#[derive(Debug, Clone)]
pub struct ForwardLayer {
    forwarder: Arc<Forwarder>,
}

impl ForwardLayer {
    pub fn new(forwarder: Arc<Forwarder>) -> Self {
        Self { forwarder }
    }
}

impl<I> Layer<I> for ForwardLayer {
    type Service = Forward<I>;

    fn layer(&self, inner: I) -> Self::Service {
        Forward { forwarder: self.forwarder.clone(), inner }
    }
}

#[derive(Debug, Clone)]
pub struct Forward<I> {
    forwarder: Arc<Forwarder>,
    inner: I,
}

impl<I> Service<Call> for Forward<I>
where
    I: Service<Call, Response = Response, Error = GatewayError>,
{
    type Response = Response;
    type Error = GatewayError;
    type Future = Either<I::Future, BoxFuture<'static, Result<Response>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut call: Call) -> Self::Future {
        match call.forward.take() {
            None => Either::Left(self.inner.call(call)),
            Some(to) => Either::Right(Box::pin(self.forwarder.clone().forward(call, to))),
        }
    }
}
