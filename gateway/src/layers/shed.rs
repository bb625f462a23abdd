//! Load shedding and deadlines. A full gateway refuses at once with
//! UNAVAILABLE (retryable) rather than queueing: the concurrency limit is a
//! semaphore whose permits are tried, never awaited. An admitted request
//! gets `request_timeout_ms`, or less when its caller waits less (its
//! `grpc-timeout`), and is answered UNAVAILABLE when that runs out,
//! whatever its backend is doing.
//!
//! Neither layer boxes its future (two allocations per request, issue 14),
//! and a deadline arms a timer only once the request has had to wait: a
//! request answered on its first poll (a cache hit) never touches the
//! timer wheel.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::{Either, Ready, ready};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
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
    I: Service<Call, Response = Response, Error = GatewayError>,
{
    type Response = Response;
    type Error = GatewayError;
    type Future = Either<Ready<Result<Response>>, Permitted<I::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, call: Call) -> Self::Future {
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => Either::Right(Permitted { inner: self.inner.call(call), permit: Some(permit) }),
            Err(_) => {
                self.refusals.record(Refuser::Shed, "overloaded");
                Either::Left(ready(Err(GatewayError::Overloaded)))
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// An admitted request; holds its permit until the request is done,
    /// not just admitted (or until it is dropped).
    #[derive(Debug)]
    pub struct Permitted<F> {
        #[pin]
        inner: F,
        permit: Option<OwnedSemaphorePermit>,
    }
}

impl<F: Future<Output = Result<Response>>> Future for Permitted<F> {
    type Output = Result<Response>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = std::task::ready!(this.inner.poll(cx));
        this.permit.take();
        Poll::Ready(out)
    }
}

/// How much sooner than the caller's own deadline (its `grpc-timeout`) a
/// request is given up. tonic's server also stops at the caller's
/// deadline, counted from a moment just before the gateway saw the
/// request, and answers CANCELLED, which says nothing of why; a gateway
/// that gives up first answers UNAVAILABLE, as for any backend that did
/// not answer in time, and stops the backend call either way.
const BEFORE_CALLER: Duration = Duration::from_millis(5);

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
    I: Service<Call, Response = Response, Error = GatewayError>,
{
    type Response = Response;
    type Error = GatewayError;
    type Future = Deadlined<I::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, call: Call) -> Self::Future {
        // The deadline counts from admission, as `tokio::time::timeout` did,
        // unless the caller stops waiting sooner.
        let now = Instant::now();
        let (deadline, timeout) = match call.deadline.and_then(|theirs| theirs.checked_sub(BEFORE_CALLER)) {
            Some(theirs) if theirs < now + self.timeout => (theirs, theirs.saturating_duration_since(now)),
            _ => (now + self.timeout, self.timeout),
        };
        Deadlined { inner: self.inner.call(call), timeout, deadline, sleep: None, refusals: self.refusals.clone() }
    }
}

pin_project_lite::pin_project! {
    /// A request with a deadline: the inner future is polled first, and a
    /// timer is armed only when it is still pending.
    #[derive(Debug)]
    pub struct Deadlined<F> {
        #[pin]
        inner: F,
        timeout: Duration,
        deadline: Instant,
        sleep: Option<Pin<Box<Sleep>>>,
        refusals: Arc<Refusals>,
    }
}

impl<F: Future<Output = Result<Response>>> Future for Deadlined<F> {
    type Output = Result<Response>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.inner.poll(cx) {
            return Poll::Ready(out);
        }
        let deadline = *this.deadline;
        let sleep = this.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        std::task::ready!(sleep.as_mut().poll(cx));
        this.refusals.record(Refuser::Deadline, "timeout");
        Poll::Ready(Err(GatewayError::Timeout(*this.timeout)))
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

    #[tokio::test]
    async fn a_caller_that_waits_less_is_answered_before_it_gives_up() {
        let never = tower::service_fn(|_: Call| std::future::pending::<Result<Response>>());
        let svc = DeadlineLayer::new(Duration::from_secs(30)).layer(never);
        let mut waiting = call();
        waiting.deadline = Some(Instant::now() + Duration::from_millis(100));
        // A hang detector, not a timing assertion.
        let answered = tokio::time::timeout(Duration::from_secs(10), svc.oneshot(waiting)).await;
        match answered {
            Ok(Err(GatewayError::Timeout(granted))) => {
                assert!(granted < Duration::from_millis(100), "granted {granted:?}, past the caller's deadline");
            }
            other => panic!("want the caller's deadline to end the request, got {other:?}"),
        }
    }
}
