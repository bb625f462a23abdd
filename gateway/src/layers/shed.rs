//! Load shedding and deadlines. A full gateway refuses at once with
//! UNAVAILABLE (retryable) rather than queueing: the concurrency limit is a
//! semaphore whose permits are tried, never awaited.
//!
//! A request's deadline is the caller's (`grpc-timeout`) or the gateway's
//! `request_timeout_ms` from admission, whichever comes first. The layer
//! gives the call a [`StopBy`]: reads end their page early at its soft
//! instant, [`response_margin`] before the deadline, and return what they
//! have with a continuation token (SPEC §3, [`prism_plugin_api::pace`]);
//! at the deadline itself whatever is still running is cut off (dropped,
//! so backend work stops) with UNAVAILABLE.
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
use prism_plugin_api::pace::StopBy;
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

/// The longest margin kept for a response: a read's page ends at most this
/// long before the deadline.
pub const MAX_RESPONSE_MARGIN: Duration = Duration::from_millis(500);

/// How long before its deadline a read ends its page, for a request with
/// `budget` left: a fifth of it, at most [`MAX_RESPONSE_MARGIN`] — the
/// time for the page to be encoded, to travel back (through a forwarding
/// gateway, too) and to be decoded.
pub fn response_margin(budget: Duration) -> Duration {
    (budget / 5).min(MAX_RESPONSE_MARGIN)
}

/// The [`StopBy`] of a request admitted at `now` whose deadline is
/// `hard`.
pub fn stop_by(now: Instant, hard: Instant, charge_per_item: Duration) -> StopBy {
    let margin = response_margin(hard.saturating_duration_since(now));
    let hard = hard.into_std();
    StopBy { soft: hard.checked_sub(margin).unwrap_or(hard), hard, charge_per_item }
}

#[derive(Debug, Clone)]
pub struct DeadlineLayer {
    timeout: Duration,
    charge_per_item: Duration,
    refusals: Arc<Refusals>,
}

impl DeadlineLayer {
    pub fn new(timeout: Duration) -> Self {
        Self { timeout, charge_per_item: Duration::ZERO, refusals: Arc::default() }
    }

    /// Charges reads this much per item ([`StopBy::charge_per_item`]):
    /// tests only (`limits.read_charge_per_item`).
    pub fn charging(mut self, per_item: Duration) -> Self {
        self.charge_per_item = per_item;
        self
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
        Deadline {
            timeout: self.timeout,
            charge_per_item: self.charge_per_item,
            refusals: self.refusals.clone(),
            inner,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Deadline<I> {
    timeout: Duration,
    charge_per_item: Duration,
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

    fn call(&mut self, mut call: Call) -> Self::Future {
        // The gateway's own bound counts from admission, as
        // `tokio::time::timeout` did; the caller's may come first.
        let now = Instant::now();
        let own = now + self.timeout;
        let deadline = call.deadline.map_or(own, |caller| caller.min(own));
        call.stop_by = Some(stop_by(now, deadline, self.charge_per_item));
        Deadlined {
            inner: self.inner.call(call),
            timeout: deadline.saturating_duration_since(now),
            deadline,
            sleep: None,
            refusals: self.refusals.clone(),
        }
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

    #[test]
    fn reads_stop_a_margin_before_the_deadline() {
        let now = Instant::now();
        let s = stop_by(now, now + Duration::from_secs(1), Duration::ZERO);
        assert_eq!(s.hard - s.soft, Duration::from_millis(200), "a fifth of a second");
        let s = stop_by(now, now + Duration::from_secs(30), Duration::ZERO);
        assert_eq!(s.hard - s.soft, MAX_RESPONSE_MARGIN);
        let s = stop_by(now, now, Duration::ZERO);
        assert_eq!(s.soft, s.hard, "no time left: both have passed");
    }

    #[tokio::test]
    async fn the_callers_deadline_applies_when_it_comes_first() {
        let inner = tower::service_fn(|call: Call| async move {
            let stop_by = call.stop_by.ok_or_else(|| GatewayError::Internal("no stop-by".into()))?;
            Ok::<_, GatewayError>(Response::Scan(prism_proto::kv::ScanItemsResponse {
                next_page_token: format!("{}", (stop_by.hard - std::time::Instant::now()).as_millis()),
                ..Default::default()
            }))
        });
        let svc = DeadlineLayer::new(Duration::from_secs(30)).layer(inner);
        let mut short = call();
        short.deadline = Some(Instant::now() + Duration::from_secs(2));
        let Ok(Response::Scan(r)) = svc.clone().oneshot(short).await else { panic!("scan") };
        let left: u64 = r.next_page_token.parse().expect("millis");
        assert!(left <= 2_000, "the caller's 2 s, not the gateway's 30 s: {left} ms");
        let Ok(Response::Scan(r)) = svc.oneshot(call()).await else { panic!("scan") };
        let left: u64 = r.next_page_token.parse().expect("millis");
        assert!(left > 2_000 && left <= 30_000, "the gateway's own bound: {left} ms");
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
