//! When a call is sent again: the retry policy (bounded attempts,
//! exponential backoff with jitter, an overall deadline), what each failure
//! means for routing, and the idempotency tokens that make a retried write
//! apply once.

use std::error::Error as _;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use prism_proto::kv::IdempotencyToken;
use tonic::{Code, Status};
use tonic_types::StatusExt;

/// The `google.rpc.ErrorInfo` reason of a gateway that does not own the
/// namespace it was asked about.
pub const WRONG_SHARD: &str = "WRONG_SHARD";

/// How hard a call tries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per call, the first included, redirects included.
    /// Default 5; 1 = never retry.
    pub max_attempts: u32,
    /// Pause before the first retry; doubled each retry. Default 50 ms.
    pub initial_backoff: Duration,
    /// Longest pause between attempts. Default 2 s.
    pub max_backoff: Duration,
    /// Bound on a whole call, retries and pauses included (not on a tail
    /// stream once it is open). Default 15 s.
    pub deadline: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
            deadline: Duration::from_secs(15),
        }
    }
}

impl RetryPolicy {
    /// One attempt, no retries: for callers that run their own policy.
    pub fn never() -> Self {
        Self { max_attempts: 1, ..Self::default() }
    }

    /// The pause before retry number `retry` (1-based): "equal jitter" —
    /// half the exponential step fixed, half random — so clients that
    /// failed together do not retry together, yet never retry at once.
    pub fn backoff(&self, retry: u32) -> Duration {
        let step = self
            .initial_backoff
            .saturating_mul(1u32.checked_shl(retry.saturating_sub(1).min(20)).unwrap_or(u32::MAX))
            .min(self.max_backoff);
        let half = step / 2;
        let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(random_u64() % nanos.saturating_add(1))
    }
}

/// A random number without a `rand` dependency: std's `RandomState` is
/// seeded randomly per process and re-keyed per instance, and a counter
/// makes successive values differ.
pub(crate) fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.finish()
}

/// Fills an absent idempotency token with the current time and a unique
/// token, so the write is applied once however often it is sent. A token
/// the caller set is kept as it is.
pub fn ensure_token(token: &mut Option<IdempotencyToken>) {
    if token.as_ref().is_some_and(|t| !t.token.is_empty()) {
        return;
    }
    let now = SystemTime::now();
    let micros = now.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_micros();
    *token = Some(IdempotencyToken {
        generation_time: Some(prost_types::Timestamp::from(now)),
        token: format!("{micros:x}-{:016x}{:016x}", random_u64(), random_u64()),
    });
}

/// A gateway's WRONG_SHARD answer: who owns the namespace, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Misroute {
    pub shard_id: String,
    /// `host:port` of the owner's live instances; empty when the gateway
    /// did not say (then the control plane is asked).
    pub endpoints: Vec<String>,
    /// The gateway's metadata revision; 0 when it did not say.
    pub revision: u64,
}

impl Misroute {
    /// The redirect carried by `status`, if it is a WRONG_SHARD refusal.
    pub fn from_status(status: &Status) -> Option<Self> {
        if status.code() != Code::FailedPrecondition {
            return None;
        }
        let info = status.get_details_error_info()?;
        if info.reason != WRONG_SHARD {
            return None;
        }
        let shard_id = info.metadata.get("shard_id").cloned().unwrap_or_default();
        let endpoints = info
            .metadata
            .get("endpoints")
            .map(|list| list.split(',').map(str::trim).filter(|e| !e.is_empty()).map(str::to_owned).collect())
            .unwrap_or_default();
        let revision = info.metadata.get("revision").and_then(|r| r.parse().ok()).unwrap_or(0);
        Some(Self { shard_id, endpoints, revision })
    }
}

/// What a failed attempt means for the next one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The gateway does not own the namespace: nothing was applied.
    Misrouted(Misroute),
    /// The endpoint could not be reached (the request may not have left
    /// this process): skip the endpoint for a while, try another replica.
    Unreachable,
    /// The server said UNAVAILABLE (overloaded, backend down, no live
    /// instance): try again later, possibly on another replica.
    Unavailable,
    /// Anything else: the answer, returned to the caller as it is.
    Final,
}

impl Failure {
    pub fn of(status: &Status) -> Self {
        if let Some(m) = Misroute::from_status(status) {
            return Self::Misrouted(m);
        }
        match status.code() {
            // A status the transport made (connection refused, reset,
            // TLS) carries its cause as a source; one decoded from a
            // server's trailers has none.
            Code::Unavailable if status.source().is_some() => Self::Unreachable,
            Code::Unavailable => Self::Unavailable,
            // tonic reports some connection failures (e.g. the peer went
            // away mid-stream) as UNKNOWN with a transport source.
            Code::Unknown if status.source().is_some_and(is_transport) => Self::Unreachable,
            // hyper cancels the requests still queued on a connection that
            // closes under them (a replica killed): they never left this
            // process. A CANCELLED a server sent has no source.
            Code::Cancelled if status.source().is_some() => Self::Unreachable,
            _ => Self::Final,
        }
    }
}

fn is_transport(e: &(dyn std::error::Error + 'static)) -> bool {
    e.downcast_ref::<tonic::transport::Error>().is_some()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use tonic_types::ErrorDetails;

    use super::*;

    #[test]
    fn backoff_grows_to_its_bound_with_jitter_in_the_upper_half() {
        let p = RetryPolicy::default();
        for retry in 1..=12 {
            let step = (p.initial_backoff * 2u32.pow(retry - 1)).min(p.max_backoff);
            let pause = p.backoff(retry);
            assert!(pause >= step / 2 && pause <= step, "retry {retry}: {pause:?} not within {step:?}");
        }
        assert!(p.backoff(u32::MAX) <= p.max_backoff);
        let distinct: std::collections::HashSet<_> = (0..20).map(|_| p.backoff(5)).collect();
        assert!(distinct.len() > 1, "jittered");
    }

    #[test]
    fn tokens_are_filled_once_and_unique_and_a_callers_token_is_kept() {
        let mut a = None;
        ensure_token(&mut a);
        let first = a.clone();
        ensure_token(&mut a);
        assert_eq!(a, first, "a filled token is not replaced on a retry");
        let t = a.as_ref().map(|t| t.token.clone()).unwrap_or_default();
        assert!(!t.is_empty() && t.len() <= 128, "{t}");
        assert!(a.as_ref().is_some_and(|t| t.generation_time.is_some()));

        let mut b = None;
        ensure_token(&mut b);
        assert_ne!(a.map(|t| t.token), b.map(|t| t.token));

        let mine = IdempotencyToken { generation_time: None, token: "mine".into() };
        let mut c = Some(mine.clone());
        ensure_token(&mut c);
        assert_eq!(c, Some(mine));

        // An empty token is no token (the gateway ignores it): fill it.
        let mut d = Some(IdempotencyToken::default());
        ensure_token(&mut d);
        assert!(d.is_some_and(|t| !t.token.is_empty()));
    }

    fn wrong_shard(metadata: &[(&str, &str)]) -> Status {
        let metadata: HashMap<String, String> =
            metadata.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        Status::with_error_details(
            Code::FailedPrecondition,
            "namespace a/b is served by shard shard-1",
            ErrorDetails::with_error_info(WRONG_SHARD, "prism", metadata),
        )
    }

    #[test]
    fn wrong_shard_answers_are_redirects() {
        let s =
            wrong_shard(&[("shard_id", "shard-1"), ("endpoints", "10.0.0.1:7401, 10.0.0.2:7401"), ("revision", "42")]);
        assert_eq!(
            Failure::of(&s),
            Failure::Misrouted(Misroute {
                shard_id: "shard-1".into(),
                endpoints: vec!["10.0.0.1:7401".into(), "10.0.0.2:7401".into()],
                revision: 42,
            })
        );
        // Today's gateways send only the owner.
        let s = wrong_shard(&[("shard_id", "shard-1"), ("endpoints", "")]);
        assert_eq!(
            Failure::of(&s),
            Failure::Misrouted(Misroute { shard_id: "shard-1".into(), endpoints: vec![], revision: 0 })
        );
        // Other preconditions are answers.
        assert_eq!(Failure::of(&Status::failed_precondition("namespace is PROVISIONING")), Failure::Final);
    }

    #[test]
    fn only_unavailable_is_retried() {
        assert_eq!(Failure::of(&Status::unavailable("overloaded")), Failure::Unavailable);
        for s in [
            Status::invalid_argument("id: empty"),
            Status::permission_denied("no"),
            Status::not_found("no such namespace"),
            Status::resource_exhausted("quota"),
            Status::unauthenticated("token"),
            Status::internal("bug"),
            Status::cancelled("the server gave up"),
        ] {
            assert_eq!(Failure::of(&s), Failure::Final, "{s:?}");
        }
    }

    #[test]
    fn statuses_the_transport_made_mean_the_endpoint_is_unreachable() {
        let cause: std::sync::Arc<dyn std::error::Error + Send + Sync> =
            std::sync::Arc::new(std::io::Error::other("connection closed"));
        for mut s in [Status::unavailable("connection refused"), Status::cancelled("operation was canceled")] {
            s.set_source(cause.clone());
            assert_eq!(Failure::of(&s), Failure::Unreachable, "{s:?}");
        }
    }
}
