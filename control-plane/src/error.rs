//! The control plane's one error type, and what each variant tells a client.

use prism_proto::error::{Detail, ErrorKind, Report};

/// What a client is told when the metadata database cannot serve: no DSN,
/// no server address, no SQL.
pub const STORE_UNAVAILABLE: &str = "the metadata store is unavailable";

pub type Result<T, E = ControlPlaneError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    #[error("{field}: {description}")]
    InvalidArgument { field: String, description: String },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// The caller is authenticated but not allowed this call.
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// An `expected_revision` that is not the current one, or a commit that
    /// kept losing races.
    #[error("{0}")]
    Conflict(String),
    #[error("{subject}: {description}")]
    QuotaExceeded { subject: String, description: String },
    /// The watcher read slower than changes were made and was cut off.
    #[error("watcher fell behind the change stream; resume from revision {resume_from}")]
    WatchLagged { resume_from: u64 },
    #[error("the control plane is shutting down")]
    ShuttingDown,
    /// Something the request needs is not up (retryable).
    #[error("{0}")]
    Unavailable(String),
    #[error("invalid configuration: {field}: {description}")]
    Config { field: String, description: String },
    #[error("metadata store: {0}")]
    Store(#[from] redb::Error),
    #[error("metadata store: {0}")]
    Corrupt(String),
    /// The metadata database is down, unreachable, overloaded or shutting
    /// down (retryable). The detail is for the server's log only.
    #[error("metadata store unavailable: {0}")]
    StoreUnavailable(String),
    /// The metadata database refused a statement: a bug or a damaged schema.
    #[error("metadata database: {0}")]
    Database(String),
    #[error("metadata store task: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

impl ControlPlaneError {
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::InvalidArgument { field: field.into(), description: description.into() }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::InvalidArgument { .. } | Self::Config { .. } => ErrorKind::InvalidArgument,
            Self::NotFound(_) => ErrorKind::NotFound,
            Self::AlreadyExists(_) => ErrorKind::AlreadyExists,
            Self::PermissionDenied(_) => ErrorKind::PermissionDenied,
            Self::FailedPrecondition(_) => ErrorKind::FailedPrecondition,
            Self::Conflict(_) | Self::WatchLagged { .. } => ErrorKind::Aborted,
            Self::QuotaExceeded { .. } => ErrorKind::ResourceExhausted,
            Self::ShuttingDown | Self::Unavailable(_) | Self::StoreUnavailable(_) => ErrorKind::Unavailable,
            Self::Store(_) | Self::Corrupt(_) | Self::Database(_) | Self::Task(_) | Self::Transport(_) => {
                ErrorKind::Internal
            }
        }
    }

    pub fn could_retry(&self) -> bool {
        self.kind().could_retry()
    }

    /// What the client is told. Internal errors say only that they
    /// happened: paths and store messages stay in the server's log.
    pub fn report(&self) -> Report {
        match self {
            Self::InvalidArgument { field, description } => Report::bad_field(field.clone(), description.clone()),
            Self::QuotaExceeded { subject, description } => Report {
                kind: ErrorKind::ResourceExhausted,
                message: self.to_string(),
                detail: Detail::Quota { subject: subject.clone(), description: description.clone(), retry_after: None },
            },
            Self::WatchLagged { resume_from } => Report {
                kind: ErrorKind::Aborted,
                message: self.to_string(),
                detail: Detail::Info {
                    reason: "WATCH_LAGGED".into(),
                    metadata: vec![("resume_from_revision".into(), resume_from.to_string())],
                },
            },
            Self::Store(_) | Self::Corrupt(_) | Self::Database(_) | Self::Task(_) | Self::Transport(_) => {
                Report::new(ErrorKind::Internal, "internal error in the metadata store")
            }
            Self::StoreUnavailable(_) => Report::new(ErrorKind::Unavailable, STORE_UNAVAILABLE),
            other => Report::new(other.kind(), other.to_string()),
        }
    }

    pub fn into_status(self) -> tonic::Status {
        if self.kind() == ErrorKind::Internal {
            tracing::error!(error = %self, "request failed");
        } else if matches!(self, Self::StoreUnavailable(_)) {
            tracing::warn!(error = %self, "request failed");
        }
        prism_proto::error::into_status(self.report())
    }
}
