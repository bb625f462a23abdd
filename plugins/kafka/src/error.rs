//! The kafka plugin's errors, and how they reach the gateway: as a
//! [`PluginError`] whose public message names no broker and no topic —
//! those stay in the source, for the server log. Whatever says the brokers
//! are down, unreachable, slow or overloaded is `Unavailable`, so the
//! client (or the gateway's write buffer) retries.

use prism_plugin_api::PluginError;
use rdkafka::error::{KafkaError as ClientError, RDKafkaErrorCode};

pub type Result<T, E = KafkaError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    /// A plugin setting is wrong; `field` names it.
    #[error("{field}: {description}")]
    Config { field: String, description: String },
    /// A namespace setting or a request the plugin cannot serve.
    #[error("{field}: {description}")]
    Invalid { field: String, description: String },
    #[error("namespace {0} is not provisioned")]
    NotProvisioned(String),
    /// librdkafka failed `what` (creating a client, producing, reading,
    /// an admin request).
    #[error("{what}: {source}")]
    Client {
        what: &'static str,
        #[source]
        source: ClientError,
    },
    /// A connection of the plugin's own ([`crate::admin`]) failed `what`.
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The broker refused to hold a setting of the namespace's spec;
    /// `field` names it as the spec does.
    #[error("{field}: {description}")]
    Refused { field: String, description: String },
    /// A step ran past the plugin's request timeout.
    #[error("{0} timed out")]
    Timeout(&'static str),
    /// A message that is not one of ours: a bug or someone else's producer.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// A read gave up: its caller dropped it or its deadline passed
    /// ([`prism_plugin_api::pace`]); already the error the gateway sees.
    #[error("{0}")]
    GaveUp(PluginError),
}

impl KafkaError {
    pub(crate) fn config(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::Config { field: field.into(), description: description.into() }
    }

    pub(crate) fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::Invalid { field: field.into(), description: description.into() }
    }

    pub(crate) fn client(what: &'static str) -> impl FnOnce(ClientError) -> Self {
        move |source| Self::Client { what, source }
    }

    /// The error the brokers gave one item (a topic) of an admin request.
    pub(crate) fn admin_op(what: &'static str, code: RDKafkaErrorCode) -> Self {
        Self::Client { what, source: ClientError::AdminOp(code) }
    }

    /// The broker's (or librdkafka's) error code, when there is one.
    pub fn code(&self) -> Option<RDKafkaErrorCode> {
        match self {
            Self::Client { source, .. } => source.rdkafka_error_code(),
            _ => None,
        }
    }
}

/// Codes that are the caller's fault, not the backend's state.
fn invalid_message(code: RDKafkaErrorCode) -> Option<&'static str> {
    match code {
        RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessageSize => {
            Some("the event is larger than the kafka backend accepts")
        }
        RDKafkaErrorCode::InvalidTimestamp => Some("the event time is outside what the kafka backend accepts"),
        _ => None,
    }
}

impl From<KafkaError> for PluginError {
    fn from(e: KafkaError) -> Self {
        match e {
            KafkaError::GaveUp(e) => e,
            KafkaError::Invalid { field, description } | KafkaError::Config { field, description } => {
                PluginError::invalid(field, description)
            }
            KafkaError::NotProvisioned(ns) => PluginError::NotProvisioned(ns),
            KafkaError::Refused { field, description } => PluginError::refused(field, description),
            KafkaError::Io { .. } => PluginError::unavailable("the kafka backend is unavailable", e),
            KafkaError::Corrupt(_) => PluginError::internal("the kafka backend holds data this gateway cannot read", e),
            KafkaError::Client { .. } | KafkaError::Timeout(_) => match e.code().and_then(invalid_message) {
                Some(message) => PluginError::invalid("events", message),
                None => PluginError::unavailable("the kafka backend is unavailable", e),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use prism_proto::error::ErrorKind;

    use super::*;

    #[test]
    fn kinds() {
        let down = KafkaError::Client {
            what: "produce",
            source: ClientError::MessageProduction(RDKafkaErrorCode::MessageTimedOut),
        };
        let public = PluginError::from(down);
        assert_eq!(public.kind(), ErrorKind::Unavailable);
        assert!(!public.report().message.contains("produce"));
        let big = KafkaError::Client {
            what: "produce",
            source: ClientError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge),
        };
        assert_eq!(PluginError::from(big).kind(), ErrorKind::InvalidArgument);
        assert_eq!(PluginError::from(KafkaError::Timeout("read")).kind(), ErrorKind::Unavailable);
        assert_eq!(PluginError::from(KafkaError::NotProvisioned("a/b".into())).kind(), ErrorKind::FailedPrecondition);
    }
}
