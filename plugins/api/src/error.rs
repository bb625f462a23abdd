//! The one error type plugins return to the gateway. Each plugin crate
//! keeps its own error enum and converts into this at its boundary.

use prism_proto::error::{ErrorKind, Report};

pub type Result<T, E = PluginError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The request is wrong in a way only the backend can tell.
    #[error("{field}: {description}")]
    InvalidArgument { field: String, description: String },
    /// The namespace has no resources here (not provisioned, or removed).
    #[error("namespace {0} is not provisioned on this backend")]
    NotProvisioned(String),
    /// The backend refused to hold a setting of the namespace's spec
    /// (`field`, as the spec names it): the namespace cannot be served as
    /// specified until the spec or the backend changes.
    #[error("{field}: {description}")]
    Refused { field: String, description: String },
    /// The backend is down, overloaded or timed out: retry later.
    /// `public` is safe to show; `source` stays in the server log.
    #[error("{public}: {source}")]
    Unavailable {
        public: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A bug or corruption.
    #[error("{public}: {source}")]
    Internal {
        public: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl PluginError {
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::InvalidArgument { field: field.into(), description: description.into() }
    }

    pub fn refused(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::Refused { field: field.into(), description: description.into() }
    }

    pub fn unavailable(public: impl Into<String>, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::Unavailable { public: public.into(), source: source.into() }
    }

    pub fn internal(public: impl Into<String>, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::Internal { public: public.into(), source: source.into() }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::InvalidArgument { .. } => ErrorKind::InvalidArgument,
            Self::NotProvisioned(_) | Self::Refused { .. } => ErrorKind::FailedPrecondition,
            Self::Unavailable { .. } => ErrorKind::Unavailable,
            Self::Internal { .. } => ErrorKind::Internal,
        }
    }

    pub fn could_retry(&self) -> bool {
        self.kind().could_retry()
    }

    /// What the client sees: never the source (DSNs, SQL, addresses).
    pub fn report(&self) -> Report {
        match self {
            Self::InvalidArgument { field, description } => Report::bad_field(field.clone(), description.clone()),
            Self::NotProvisioned(_) | Self::Refused { .. } => Report::new(self.kind(), self.to_string()),
            Self::Unavailable { public, .. } | Self::Internal { public, .. } => {
                Report::new(self.kind(), public.clone())
            }
        }
    }
}
