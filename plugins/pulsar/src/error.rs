//! The pulsar plugin's errors, and how they reach the gateway: as a
//! [`PluginError`] whose public message names no broker address and no
//! topic. Whatever says the broker is down, unreachable or slow is
//! `Unavailable`, so the client (or the write buffer) retries.

use prism_plugin_api::PluginError;

pub type Result<T, E = PulsarError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum PulsarError {
    /// A namespace setting or a request the plugin cannot serve; `field`
    /// names it.
    #[error("{field}: {description}")]
    Invalid { field: String, description: String },
    #[error("namespace {0} is not provisioned")]
    NotProvisioned(String),
    /// The client library failed: connecting, producing or reading.
    #[error("pulsar: {0}")]
    Client(#[from] pulsar::Error),
    /// The whole call ran past the plugin's request timeout.
    #[error("{0} timed out")]
    Timeout(&'static str),
    /// A message of ours that does not decode: a bug or a foreign writer.
    #[error("stored message is corrupt: {0}")]
    Corrupt(String),
    /// A read gave up at its deadline ([`prism_plugin_api::pace`]);
    /// already the error the gateway sees.
    #[error("{0}")]
    GaveUp(PluginError),
}

impl PulsarError {
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::Invalid { field: field.into(), description: description.into() }
    }
}

impl From<PulsarError> for PluginError {
    fn from(e: PulsarError) -> Self {
        match e {
            PulsarError::GaveUp(e) => e,
            PulsarError::Invalid { field, description } => PluginError::invalid(field, description),
            PulsarError::NotProvisioned(name) => PluginError::NotProvisioned(name),
            e @ (PulsarError::Client(_) | PulsarError::Timeout(_)) => {
                PluginError::unavailable("the pulsar broker is unavailable", e)
            }
            e @ PulsarError::Corrupt(_) => PluginError::internal("stored events are corrupt", e),
        }
    }
}

#[cfg(test)]
mod tests {
    use prism_proto::error::ErrorKind;

    use super::*;

    #[test]
    fn broker_failures_are_unavailable_and_say_no_address() {
        let e: PluginError = PulsarError::Timeout("writing").into();
        assert_eq!(e.kind(), ErrorKind::Unavailable);
        let e: PluginError =
            PulsarError::Client(pulsar::Error::Custom("connect to pulsar://10.0.0.1:6650".into())).into();
        assert_eq!(e.kind(), ErrorKind::Unavailable);
        assert!(!e.report().message.contains("10.0.0.1"), "{}", e.report().message);
        let e: PluginError = PulsarError::NotProvisioned("a/b".into()).into();
        assert_eq!(e.kind(), ErrorKind::FailedPrecondition);
    }
}
