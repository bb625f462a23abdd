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
use crate::metrics::{Layer as Refuser, Refusals};

#[derive(Debug, Clone)]
pub struct LoadShedLayer {
    permits: Arc<Semaphore>,
    refusals: Arc<Refusals>,
}

impl LoadShedLayer {
    pub fn new(max_in_flight: usize) -> Self {
        Self { permits: Arc::new(Semaphore::new(max_in_flight)), refusals: Arc::default() }
    }

    /// Counts refusals into `refusals` (the gateway's metrics).
    pub fn counting(mut self, refusals: Arc<Refusals>) -> Self {
        self.refusals = refusals;
        self
    }
}

impl<I> Layer<I> for LoadShedLayer {
    type Service = LoadShed<I>;

    fn layer(&self, inner: I) -> Self::Service {
        LoadShed { permits: self.permits.clone(), refusals: self.refusals.clone(), inner }
    }
}

#[derive(Debug, Clone)]
pub struct LoadShed<I> {
    permits: Arc<Semaphore>,
    refusals: Arc<Refusals>,
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
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let fut = self.inner.call(call);
                Box::pin(async move {
                    let response = fut.await;
                    // Held until the request is done, not just admitted.
                    drop(permit);
                    response
                })
            }
            Err(_) => {
                self.refusals.record(Refuser::Shed, "overloaded");
                Box::pin(async { Err(GatewayError::Overloaded) })
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct DeadlineLayer {
    timeout: Duration,
    refusals: Arc<Refusals>,
}

impl DeadlineLayer {
    pub fn new(timeout: Duration) -> Self {
        Self { timeout, refusals: Arc::default() }
    }

    /// Counts requests cut off into `refusals` (the gateway's metrics).
    pub fn counting(mut self, refusals: Arc<Refusals>) -> Self {
        self.refusals = refusals;
        self
    }
}

impl<I> Layer<I> for DeadlineLayer {
    type Service = Deadline<I>;

    fn layer(&self, inner: I) -> Self::Service {
        Deadline { timeout: self.timeout, refusals: self.refusals.clone(), inner }
    }
}

#[derive(Debug, Clone)]
pub struct Deadline<I> {
    timeout: Duration,
    refusals: Arc<Refusals>,
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
        let refusals = self.refusals.clone();
        let fut = self.inner.call(call);
        Box::pin(async move {
            tokio::time::timeout(timeout, fut).await.map_err(|_| {
                refusals.record(Refuser::Deadline, "timeout");
                GatewayError::Timeout(timeout)
            })?
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use prism_proto::kv::ScanItemsRequest;
    use tokio::sync::Notify;
    use tower::{Layer, ServiceExt};

    use super::*;
    use crate::call::Request;

    fn call() -> Call {
        Call::new(Request::Scan(ScanItemsRequest { namespace: "a/b".into(), ..Default::default() }), None)
    }

    #[tokio::test]
    async fn sheds_while_the_limit_is_held_and_admits_again_after() {
        let release = Arc::new(Notify::new());
        let started = Arc::new(Notify::new());
        let inner = {
            let (release, started) = (release.clone(), started.clone());
            tower::service_fn(move |_: Call| {
                let (release, started) = (release.clone(), started.clone());
                async move {
                    started.notify_one();
                    release.notified().await;
                    Ok::<_, GatewayError>(Response::Scan(Default::default()))
                }
            })
        };
        let svc = LoadShedLayer::new(1).layer(inner);
        let first = tokio::spawn(svc.clone().oneshot(call()));
        started.notified().await;
        let refused = svc.clone().oneshot(call()).await;
        assert!(matches!(refused, Err(GatewayError::Overloaded)), "second request admitted past the limit");
        release.notify_one();
        assert!(first.await.is_ok_and(|r| r.is_ok()));
        // The permit came back with the first response.
        let again = tokio::spawn(svc.oneshot(call()));
        started.notified().await;
        release.notify_one();
        assert!(again.await.is_ok_and(|r| r.is_ok()));
    }
}
