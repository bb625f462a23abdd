//! Which abstractions each backend serves. The control plane refuses a
//! namespace whose backend lacks the capability without loading any backend
//! code; every plugin crate has a test that its own declaration matches this
//! table, so the two cannot drift apart.

use crate::control::{Abstraction, Backend};

/// The abstractions `backend` can serve.
pub fn abstractions(backend: Backend) -> &'static [Abstraction] {
    match backend {
        Backend::Unspecified => &[],
        Backend::Embedded | Backend::Postgres => &[Abstraction::KeyValue, Abstraction::TimeSeries],
        Backend::Kafka | Backend::Pulsar => &[Abstraction::TimeSeries],
    }
}

/// Whether `backend` can serve `abstraction`.
pub fn supports(backend: Backend, abstraction: Abstraction) -> bool {
    abstractions(backend).contains(&abstraction)
}

/// The name users write for a backend (`embedded`, `postgres`, …).
pub fn backend_name(backend: Backend) -> &'static str {
    match backend {
        Backend::Unspecified => "unspecified",
        Backend::Embedded => "embedded",
        Backend::Postgres => "postgres",
        Backend::Kafka => "kafka",
        Backend::Pulsar => "pulsar",
    }
}

/// The name users write for an abstraction (`key-value`, `time-series`).
pub fn abstraction_name(abstraction: Abstraction) -> &'static str {
    match abstraction {
        Abstraction::Unspecified => "unspecified",
        Abstraction::KeyValue => "key-value",
        Abstraction::TimeSeries => "time-series",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_backends_serve_time_series_only() {
        assert!(supports(Backend::Embedded, Abstraction::KeyValue));
        assert!(supports(Backend::Postgres, Abstraction::TimeSeries));
        assert!(!supports(Backend::Kafka, Abstraction::KeyValue));
        assert!(!supports(Backend::Pulsar, Abstraction::KeyValue));
        assert!(supports(Backend::Pulsar, Abstraction::TimeSeries));
        assert!(!supports(Backend::Unspecified, Abstraction::KeyValue));
    }
}
