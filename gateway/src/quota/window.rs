//! A sliding one-second window of ten 100 ms buckets, lock-free.
//!
//! Each bucket counts requests, read bytes and write bytes of one 100 ms
//! *slot* (milliseconds since the gateway's clock base / 100). The window
//! at slot `s` is the buckets of slots `s-9 ..= s`: nine full buckets and
//! the current, partial one. A bucket is reused lazily: the first add in a
//! new slot finds the bucket still tagged with the slot ten (or more) before
//! and rolls it over.
//!
//! Memory: a bucket is 16 bytes (an `AtomicU64` holding the slot tag in its
//! high half and the request count in its low half, and two `AtomicU32`
//! byte counters), so the window is 160 bytes, where a window of three
//! metrics with a mutex and `u64`/timestamp buckets costs ~1 KB (seeds/004).
//!
//! Exactness: the request count shares its word with the tag, so rolling a
//! bucket over and counting in it are one compare-and-swap. The byte
//! counters are zeroed just *after* the roll-over CAS; bytes another thread
//! adds in that instant (it must have seen the new tag already) are lost.
//! Byte counters saturate at `u32::MAX` per bucket (4 GiB per 100 ms on one
//! gateway, far beyond what one gateway moves).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// Buckets per window.
pub const BUCKETS: usize = 10;
/// Length of a bucket, in milliseconds.
pub const BUCKET_MS: u64 = 100;
/// Length of the window, in milliseconds.
pub const WINDOW_MS: u64 = BUCKETS as u64 * BUCKET_MS;

/// What a window counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    Requests,
    ReadBytes,
    WriteBytes,
}

/// The sums of a window at one slot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub requests: u64,
    pub read_bytes: u64,
    pub write_bytes: u64,
}

impl Usage {
    pub fn get(&self, metric: Metric) -> u64 {
        match metric {
            Metric::Requests => self.requests,
            Metric::ReadBytes => self.read_bytes,
            Metric::WriteBytes => self.write_bytes,
        }
    }
}

#[derive(Debug, Default)]
struct Bucket {
    /// `slot << 32 | requests`.
    tagged: AtomicU64,
    read: AtomicU32,
    write: AtomicU32,
}

fn tag(word: u64) -> u32 {
    (word >> 32) as u32
}

fn count(word: u64) -> u64 {
    word & u64::from(u32::MAX)
}

/// Whether a bucket tagged `tag` is in the window ending at `slot`.
fn in_window(tag: u32, slot: u32) -> bool {
    (slot.wrapping_sub(tag) as usize) < BUCKETS
}

fn saturating_add(counter: &AtomicU32, n: u64) {
    if n == 0 {
        return;
    }
    let n = u32::try_from(n).unwrap_or(u32::MAX);
    // Uncontended this is one load and one CAS, like a fetch_add.
    let _ = counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| Some(v.saturating_add(n)));
}

/// A sliding window of [`BUCKETS`] buckets. All methods take the current
/// slot (or time) as an argument, so tests drive time by hand.
#[derive(Debug, Default)]
pub struct Window {
    buckets: [Bucket; BUCKETS],
}

impl Window {
    /// The slot of a time in milliseconds.
    pub fn slot(now_ms: u64) -> u32 {
        // Wraps after 13.6 years of uptime; `in_window` uses wrapping
        // arithmetic, so only a bucket untouched for exactly that long
        // could be mistaken for a current one.
        (now_ms / BUCKET_MS) as u32
    }

    /// The sums of the window ending at `slot`.
    pub fn usage(&self, slot: u32) -> Usage {
        let mut usage = Usage::default();
        for b in &self.buckets {
            let word = b.tagged.load(Ordering::Acquire);
            if in_window(tag(word), slot) {
                usage.requests += count(word);
                usage.read_bytes += u64::from(b.read.load(Ordering::Acquire));
                usage.write_bytes += u64::from(b.write.load(Ordering::Acquire));
            }
        }
        usage
    }

    /// Counts `requests`, `read` and `write` bytes in the bucket of `slot`.
    pub fn add(&self, slot: u32, requests: u32, read: u64, write: u64) {
        let b = &self.buckets[slot as usize % BUCKETS];
        let mut word = b.tagged.load(Ordering::Acquire);
        loop {
            let t = tag(word);
            // The bucket already holds `slot`, or a later one (this thread
            // was preempted across a bucket boundary): count it there.
            if t == slot || (slot.wrapping_sub(t) as i32) < 0 {
                if requests > 0 {
                    b.tagged.fetch_add(u64::from(requests), Ordering::AcqRel);
                }
                break;
            }
            let fresh = (u64::from(slot) << 32) | u64::from(requests);
            match b.tagged.compare_exchange_weak(word, fresh, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    b.read.store(0, Ordering::Release);
                    b.write.store(0, Ordering::Release);
                    break;
                }
                Err(now) => word = now,
            }
        }
        saturating_add(&b.read, read);
        saturating_add(&b.write, write);
    }

    /// How long from `now_ms` until the window's `metric` has room for
    /// `cost` under `limit`: when enough of its oldest buckets have left
    /// it. A cost larger than the limit gets the time until the window is
    /// empty (an empty window admits anything once).
    pub fn retry_after(&self, now_ms: u64, metric: Metric, limit: u64, cost: u64) -> Duration {
        let slot = Self::slot(now_ms);
        let mut remaining = self.usage(slot).get(metric);
        // Oldest first: the bucket of slot `slot - age` leaves the window
        // when slot `slot - age + BUCKETS` begins.
        for age in (0..BUCKETS as u32).rev() {
            let s = slot.wrapping_sub(age);
            let b = &self.buckets[s as usize % BUCKETS];
            let word = b.tagged.load(Ordering::Acquire);
            if tag(word) != s {
                continue;
            }
            let amount = match metric {
                Metric::Requests => count(word),
                Metric::ReadBytes => u64::from(b.read.load(Ordering::Acquire)),
                Metric::WriteBytes => u64::from(b.write.load(Ordering::Acquire)),
            };
            remaining = remaining.saturating_sub(amount);
            if remaining == 0 || remaining.saturating_add(cost) <= limit {
                return until(now_ms, age);
            }
        }
        // Only buckets counted since `usage` was read remain: the whole
        // window.
        until(now_ms, 0)
    }

    /// The newest slot this window counted anything in, if any.
    pub fn last_slot(&self) -> Option<u32> {
        self.buckets.iter().map(|b| b.tagged.load(Ordering::Acquire)).filter(|w| *w != 0).map(tag).max_by_key(|t| *t)
    }
}

/// From `now_ms` until the bucket `age` slots old leaves the window, at
/// least 1 ms.
fn until(now_ms: u64, age: u32) -> Duration {
    let leaves = (now_ms / BUCKET_MS + BUCKETS as u64 - u64::from(age)) * BUCKET_MS;
    Duration::from_millis(leaves.saturating_sub(now_ms).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_holds_the_last_ten_slots() {
        let w = Window::default();
        for s in 100..110 {
            w.add(s, 1, 10, 20);
        }
        assert_eq!(w.usage(109), Usage { requests: 10, read_bytes: 100, write_bytes: 200 });
        // Slot 110 starts: slot 100 leaves, before anything is added.
        assert_eq!(w.usage(110).requests, 9);
        w.add(110, 3, 0, 0);
        assert_eq!(w.usage(110), Usage { requests: 12, read_bytes: 90, write_bytes: 180 });
        // Long idle: everything has left.
        assert_eq!(w.usage(500), Usage::default());
        assert_eq!(w.last_slot(), Some(110));
    }

    #[test]
    fn a_bucket_rolls_over_with_its_bytes() {
        let w = Window::default();
        w.add(7, 5, 1000, 1000);
        w.add(17, 1, 1, 0);
        assert_eq!(w.usage(17), Usage { requests: 1, read_bytes: 1, write_bytes: 0 });
    }

    #[test]
    fn a_late_add_counts_in_the_newer_bucket() {
        let w = Window::default();
        w.add(17, 1, 0, 0);
        // A thread that read the clock at slot 7 and was preempted.
        w.add(7, 1, 0, 0);
        assert_eq!(w.usage(17).requests, 2);
    }

    #[test]
    fn byte_counters_saturate() {
        let w = Window::default();
        w.add(1, 0, u64::MAX, 0);
        w.add(1, 0, 5, 0);
        assert_eq!(w.usage(1).read_bytes, u64::from(u32::MAX));
    }

    #[test]
    fn retry_after_is_when_the_oldest_buckets_leave() {
        let w = Window::default();
        // 4 requests at slot 10 (t = 1000..1100 ms), 6 at slot 15.
        w.add(10, 4, 0, 0);
        w.add(15, 6, 0, 0);
        let now = 1_650; // slot 16
        // Limit 10, one more request: room when slot 10 leaves, at 2000 ms.
        assert_eq!(w.retry_after(now, Metric::Requests, 10, 1), Duration::from_millis(350));
        // Limit 5: slot 15 must leave too, at 2500 ms.
        assert_eq!(w.retry_after(now, Metric::Requests, 5, 1), Duration::from_millis(850));
        // A cost above the limit waits for the empty window.
        assert_eq!(w.retry_after(now, Metric::Requests, 5, 100), Duration::from_millis(850));
    }

    #[test]
    fn concurrent_adds_are_all_counted() {
        let w = std::sync::Arc::new(Window::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let w = w.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000u32 {
                        // Each thread walks slots 1000..=1009; every
                        // bucket is rolled over from its initial tag by
                        // whichever thread comes first.
                        w.add(1000 + i / 1000, 1, 0, 0);
                    }
                })
            })
            .collect();
        for t in threads {
            assert!(t.join().is_ok());
        }
        assert_eq!(w.usage(1009).requests, 40_000);
    }
}
