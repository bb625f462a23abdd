//! Load shedding and deadlines. A full gateway refuses at once with
//! UNAVAILABLE (retryable) rather than queueing: the concurrency limit is a
//! semaphore whose permits are tried, never awaited.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::Semaphore;
use tower::{Layer, Service};

use crate::call::{Call, Response};
use crate::error::{GatewayError, Result};

#[derive(Debug, Clone)]
pub struct LoadShedLayer {
    permits: Arc<Semaphore>,
}

impl LoadShedLayer {
    pub fn new(max_in_flight: usize) -> Self {
        Self { permits: Arc::new(Semaphore::new(max_in_flight)) }
    }
}

impl<I> Layer<I> for LoadShedLayer {
    type Service = LoadShed<I>;

    fn layer(&self, inner: I) -> Self::Service {
        LoadShed { permits: self.permits.clone(), inner }
    }
}

#[derive(Debug, Clone)]
pub struct LoadShed<I> {
    permits: Arc<Semaphore>,
    inner: I,
}

impl<I> Service<Call> for LoadShed<I>
where
    I: Service<Call, Response = Response, Error = GatewayError> + Send + 'static,
    I::Future: Send + 'static,
{
    type Response = Response;
    type Error = GatewayError;
    type Future = BoxFuture<'static, Result<Response>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, call: Call) -> Self::Future {
        let permit = self.permits.clone().try_acquire_owned();
        let fut = permit.map(|_| self.inner.call(call));
        Box::pin(async move {
            match fut {
                // The permit lives as long as the request.
                Ok(fut) => fut.await,
                Err(_) => Err(GatewayError::Overloaded),
            }
        })
    }
}

#[derive(Debug, Clone)]
pub struct DeadlineLayer {
    timeout: Duration,
}

impl DeadlineLayer {
    pub fn new(timeout: Duration) -> Self {
        Self { timeout }
    }
}

impl<I> Layer<I> for DeadlineLayer {
    type Service = Deadline<I>;

    fn layer(&self, inner: I) -> Self::Service {
        Deadline { timeout: self.timeout, inner }
    }
}

#[derive(Debug, Clone)]
pub struct Deadline<I> {
    timeout: Duration,
    inner: I,
}

impl<I> Service<Call> for Deadline<I>
where
    I: Service<Call, Response = Response, Error = GatewayError> + Send + 'static,
    I::Future: Send + 'static,
{
    type Response = Response;
    type Error = GatewayError;
    type Future = BoxFuture<'static, Result<Response>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, call: Call) -> Self::Future {
        let timeout = self.timeout;
        let fut = self.inner.call(call);
        Box::pin(async move { tokio::time::timeout(timeout, fut).await.map_err(|_| GatewayError::Timeout(timeout))? })
    }
}
