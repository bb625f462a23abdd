//! A latency histogram that costs a request three relaxed atomic adds and
//! no lock.
//!
//! `prometheus-client`'s `Histogram` takes a mutex per observation; on the
//! gateway's request path that is a lock every request takes, shared by
//! every thread serving a namespace. This one keeps per-bucket counts, the
//! count and the sum (integer nanoseconds) in atomics and turns them into
//! the exposition only when scraped (through `prometheus-client`'s encoder:
//! nothing of the text format is written here). A scrape may see a count
//! one observation ahead of a bucket; Prometheus tolerates that skew, and
//! the next scrape is consistent again.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Upper bounds of the latency buckets, in seconds: 100 µs to 10 s, the
/// range of a cache hit to a request at the default timeout.
pub const LATENCY_BOUNDS: [f64; 16] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

const BOUNDS_NANOS: [u64; 16] = [
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// Buckets of [`LATENCY_BOUNDS`] plus `+Inf`.
const BUCKETS: usize = LATENCY_BOUNDS.len() + 1;

/// Durations in the [`LATENCY_BOUNDS`] buckets.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; BUCKETS],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

/// What a histogram held when it was read.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub sum_seconds: f64,
    pub count: u64,
    /// `(upper bound, observations in this bucket)`, the last bound
    /// infinite: the shape `prometheus-client`'s encoder takes.
    pub buckets: Vec<(f64, u64)>,
}

impl LatencyHistogram {
    pub fn observe(&self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let bucket = BOUNDS_NANOS.partition_point(|bound| *bound < nanos);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn snapshot(&self) -> Snapshot {
        let buckets = LATENCY_BOUNDS
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(&self.buckets)
            .map(|(bound, n)| (bound, n.load(Ordering::Relaxed)))
            .collect();
        Snapshot {
            sum_seconds: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            count: self.count.load(Ordering::Relaxed),
            buckets,
        }
    }

    /// Writes this histogram as one sample set of a metric family.
    pub fn encode_into(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let s = self.snapshot();
        encoder.encode_histogram::<NoLabelSet>(s.sum_seconds, s.count, &s.buckets, None)
    }
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.encode_into(encoder)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_bucket_whose_bound_includes_them() {
        let h = LatencyHistogram::default();
        h.observe(Duration::from_micros(100)); // exactly on the first bound: le="0.0001"
        h.observe(Duration::from_micros(101));
        h.observe(Duration::from_secs(60)); // past the last bound: +Inf only
        let s = h.snapshot();
        assert_eq!(s.count, 3);
        assert_eq!(s.buckets[0], (0.0001, 1));
        assert_eq!(s.buckets[1], (0.00025, 1));
        assert_eq!(s.buckets.last(), Some(&(f64::INFINITY, 1)));
        assert!((s.sum_seconds - 60.000201).abs() < 1e-9, "{}", s.sum_seconds);
    }

    #[test]
    fn encodes_as_a_prometheus_histogram() -> Result<(), std::fmt::Error> {
        let mut registry = prometheus_client::registry::Registry::default();
        let h = LatencyHistogram::default();
        h.observe(Duration::from_millis(3));
        registry.register("latency_seconds", "latency", h);
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)?;
        assert!(text.contains("# TYPE latency_seconds histogram"), "{text}");
        assert!(text.contains("latency_seconds_bucket{le=\"0.0025\"} 0"), "{text}");
        assert!(text.contains("latency_seconds_bucket{le=\"0.005\"} 1"), "{text}");
        assert!(text.contains("latency_seconds_bucket{le=\"+Inf\"} 1"), "{text}");
        assert!(text.contains("latency_seconds_count 1"), "{text}");
        Ok(())
    }
}
