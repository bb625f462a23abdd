//! Deadline-aware pages (SPEC §3: "a request may return a short page
//! early rather than miss its deadline").
//!
//! The gateway hands every read a [`StopBy`] (in
//! [`PageLimits::stop_by`](crate::kv::PageLimits)): a *soft* instant, a
//! margin before the caller's deadline, and the *hard* deadline itself.
//! A backend's read loop keeps a [`Pace`] and asks it between records or
//! batches:
//!
//! - [`Pace::should_end`]: past the soft instant, a page that holds an item
//!   ends there, before taking another, and says where to continue (`next`
//!   is its last item, exactly as when a byte or count bound ends it), so
//!   the tokens that follow yield every item once. A page still empty goes
//!   on: a page holds at least one item when any is there, so a caller
//!   always makes progress.
//! - [`Pace::check`]: past the hard deadline nobody waits for the answer,
//!   and a read that is still looking gives up (UNAVAILABLE); so does a
//!   read whose caller dropped it ([`Cancelled`]), which matters only for a
//!   loop on a blocking thread: an async read stops when its future is
//!   dropped.
//!
//! Where the checks can sit is the backend's business, and its docs say
//! it: between records for the embedded store, between rows and statements
//! for PostgreSQL, between events once a broker's scan has ordered them for
//! Kafka and Pulsar (a scan read in log order cannot order a page before it
//! ends, so it is checked only against the hard deadline).
//!
//! [`StopBy::charge_per_item`] exists for tests: it charges a fixed time for
//! every item a read puts on its page against the soft instant, as if the
//! backend had taken that long, so a test makes pages end early
//! deterministically, whatever the machine's speed. It is zero in
//! production.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::{PluginError, Result};

/// When a read should stop filling its page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopBy {
    /// Past this, a page that holds an item ends at the next item
    /// boundary: what is left until `hard` is for the response.
    pub soft: Instant,
    /// The caller's deadline (or the gateway's own bound on a request):
    /// past it nobody waits for the answer, and a read gives up.
    pub hard: Instant,
    /// Tests only: time charged for every item a read puts on its page, on
    /// top of the time that really passed, against `soft` (a page ends
    /// early as if the backend were slow; `hard` stays the real deadline).
    /// Zero in production.
    pub charge_per_item: Duration,
}

impl StopBy {
    /// Soft at `soft`, hard at `hard`, nothing charged.
    pub fn new(soft: Instant, hard: Instant) -> Self {
        Self { soft, hard, charge_per_item: Duration::ZERO }
    }
}

/// A flag a blocking read loop reads to learn that the future waiting for
/// it was dropped (the request was cancelled or timed out). Made with
/// [`CancelOnDrop::new`].
#[derive(Debug, Clone, Default)]
pub struct Cancelled(Arc<AtomicBool>);

impl Cancelled {
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Raises its [`Cancelled`] flag when dropped: the future that waits for a
/// blocking loop holds it, so dropping that future stops the loop.
#[derive(Debug)]
pub struct CancelOnDrop(Cancelled);

impl CancelOnDrop {
    /// The guard, and the flag it raises.
    pub fn new() -> (Self, Cancelled) {
        let flag = Cancelled::default();
        (Self(flag.clone()), flag)
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.0.store(true, Ordering::Release);
    }
}

/// Why a read gave up (the source of its UNAVAILABLE error).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct GaveUp(&'static str);

/// A read's progress against its [`StopBy`]: one per read, asked between
/// records or batches (see the [module docs](self)).
#[derive(Debug, Clone, Default)]
pub struct Pace {
    stop_by: Option<StopBy>,
    /// What [`StopBy::charge_per_item`] has charged so far.
    charged: Duration,
    cancelled: Option<Cancelled>,
}

impl Pace {
    /// The pace of a read with `stop_by` (`None`: no deadline).
    pub fn new(stop_by: Option<StopBy>) -> Self {
        Self { stop_by, charged: Duration::ZERO, cancelled: None }
    }

    /// Also gives up once `flag` is raised.
    pub fn cancelled_by(mut self, flag: Cancelled) -> Self {
        self.cancelled = Some(flag);
        self
    }

    /// Whether a deadline applies at all.
    pub fn has_deadline(&self) -> bool {
        self.stop_by.is_some()
    }

    /// Counts one item put on the page.
    pub fn added(&mut self) {
        if let Some(s) = &self.stop_by {
            self.charged = self.charged.saturating_add(s.charge_per_item);
        }
    }

    /// The time as the soft instant sees it: now, plus what was charged.
    fn now(&self) -> Instant {
        let now = Instant::now();
        now.checked_add(self.charged).unwrap_or(now)
    }

    /// Whether a page that holds `items` items should end now, before
    /// taking another: the soft instant has passed and it holds one.
    pub fn should_end(&self, items: usize) -> bool {
        items > 0 && self.stop_by.is_some_and(|s| self.now() >= s.soft)
    }

    /// An UNAVAILABLE error once the read should give up: its caller
    /// dropped it, or its hard deadline has passed.
    pub fn check(&self) -> Result<()> {
        if self.cancelled.as_ref().is_some_and(Cancelled::is_set) {
            return Err(PluginError::unavailable("the read was cancelled", GaveUp("cancelled")));
        }
        if self.stop_by.is_some_and(|s| Instant::now() >= s.hard) {
            return Err(PluginError::unavailable(
                "the read reached its deadline before it found an item; retry with more time",
                GaveUp("deadline passed"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_end_past_the_soft_instant_only_with_an_item() {
        let now = Instant::now();
        let later = now + Duration::from_secs(3600);
        let relaxed = Pace::new(Some(StopBy::new(later, later)));
        assert!(!relaxed.should_end(5));
        assert!(relaxed.check().is_ok());
        let pressed = Pace::new(Some(StopBy::new(now, later)));
        assert!(!pressed.should_end(0), "an empty page goes on");
        assert!(pressed.should_end(1));
        assert!(pressed.check().is_ok());
        let late = Pace::new(Some(StopBy::new(now, now)));
        assert!(late.check().is_err());
        assert!(!Pace::new(None).should_end(usize::MAX));
    }

    #[test]
    fn charges_add_up_per_item() {
        let now = Instant::now();
        let mut pace = Pace::new(Some(StopBy {
            soft: now + Duration::from_secs(3600),
            hard: now + Duration::from_secs(7200),
            charge_per_item: Duration::from_secs(25 * 60),
        }));
        let mut items = 0;
        while !pace.should_end(items) {
            pace.added();
            items += 1;
        }
        assert_eq!(items, 3, "25 minutes an item, a soft hour");
        assert!(pace.check().is_ok());
    }

    #[test]
    fn a_dropped_guard_cancels() {
        let (guard, flag) = CancelOnDrop::new();
        let pace = Pace::new(None).cancelled_by(flag.clone());
        assert!(pace.check().is_ok());
        drop(guard);
        assert!(flag.is_set());
        assert!(pace.check().is_err());
    }
}
