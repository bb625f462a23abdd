//! Which abstractions each backend serves, and the names users write, as
//! [`crate::backends`] describes them. The control plane refuses a
//! namespace whose backend lacks the capability without loading any backend
//! code; the conformance suite checks that every plugin declares what the
//! description says, so the two cannot drift apart.

use crate::backends;
use crate::control::{Abstraction, Backend};

/// The abstractions `backend` can serve.
pub fn abstractions(backend: Backend) -> &'static [Abstraction] {
    backends::describe(backend).map_or(&[], |d| d.abstractions)
}

/// Whether `backend` can serve `abstraction`.
pub fn supports(backend: Backend, abstraction: Abstraction) -> bool {
    abstractions(backend).contains(&abstraction)
}

/// The name users write for a backend (`embedded`, `postgres`, …).
pub fn backend_name(backend: Backend) -> &'static str {
    backends::describe(backend).map_or("unspecified", |d| d.name)
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
