//! The gateway's one error type and what each variant tells a client.

use prism_plugin_api::PluginError;
use prism_proto::error::{Detail, ErrorKind, Report};

pub type Result<T, E = GatewayError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("{field}: {description}")]
    InvalidArgument { field: String, description: String },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// The namespace belongs to another shard.
    #[error("namespace {namespace} is served by shard {owner}")]
    WrongShard { namespace: String, owner: String, endpoints: Vec<String>, revision: u64 },
    /// `quota` names the limit (`requests_per_second`, …, or
    /// `write_buffer`): the metric label of the refusal.
    #[error("{subject}: {description}")]
    QuotaExceeded {
        subject: String,
        description: String,
        retry_after: Option<std::time::Duration>,
        quota: &'static str,
    },
    #[error("the gateway is overloaded")]
    Overloaded,
    /// Try again later (a forwarded call whose owner could not be reached,
    /// or that reached a gateway with another view of the owner).
    #[error("{0}")]
    Unavailable(String),
    /// The owning gateway's answer to a forwarded call, relayed as it is.
    #[error("{}", .0.message())]
    Relayed(tonic::Status),
    #[error("the request took longer than {0:?}")]
    Timeout(std::time::Duration),
    /// A request message declared larger than `limits.max_message_bytes`.
    #[error("the request message is {size} bytes, above the gateway's limits.max_message_bytes of {limit}")]
    MessageTooLarge { size: u64, limit: usize },
    /// A request body that did not arrive in full in time.
    #[error("the request message did not arrive in full within {0:?} (limits.request_read_timeout_ms)")]
    ReadTimeout(std::time::Duration),
    #[error(transparent)]
    Plugin(#[from] PluginError),
    /// A plugin error shared by the requests that waited on one load.
    #[error(transparent)]
    SharedPlugin(std::sync::Arc<PluginError>),
    #[error("invalid configuration: {field}: {description}")]
    Config { field: String, description: String },
    #[error("{0}")]
    Internal(String),
    #[error("server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

impl GatewayError {
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::InvalidArgument { field: field.into(), description: description.into() }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::InvalidArgument { .. } | Self::Config { .. } => ErrorKind::InvalidArgument,
            Self::NotFound(_) => ErrorKind::NotFound,
            Self::Unauthenticated(_) => ErrorKind::Unauthenticated,
            Self::PermissionDenied(_) => ErrorKind::PermissionDenied,
            Self::FailedPrecondition(_) | Self::WrongShard { .. } => ErrorKind::FailedPrecondition,
            Self::QuotaExceeded { .. } | Self::MessageTooLarge { .. } => ErrorKind::ResourceExhausted,
            Self::Overloaded | Self::Timeout(_) | Self::ReadTimeout(_) | Self::Unavailable(_) => ErrorKind::Unavailable,
            Self::Relayed(status) => prism_proto::error::kind_of(status.code()),
            Self::Plugin(e) => e.kind(),
            Self::SharedPlugin(e) => e.kind(),
            Self::Internal(_) | Self::Transport(_) => ErrorKind::Internal,
        }
    }

    pub fn could_retry(&self) -> bool {
        self.kind().could_retry()
    }

    /// What the client is told.
    pub fn report(&self) -> Report {
        match self {
            Self::InvalidArgument { field, description } => Report::bad_field(field.clone(), description.clone()),
            Self::WrongShard { owner, endpoints, revision, .. } => Report {
                kind: ErrorKind::FailedPrecondition,
                message: self.to_string(),
                detail: Detail::Info {
                    reason: "WRONG_SHARD".into(),
                    metadata: vec![
                        ("shard_id".into(), owner.clone()),
                        ("endpoints".into(), endpoints.join(",")),
                        ("revision".into(), revision.to_string()),
                    ],
                },
            },
            Self::QuotaExceeded { subject, description, retry_after, .. } => Report {
                kind: ErrorKind::ResourceExhausted,
                message: self.to_string(),
                detail: Detail::Quota {
                    subject: subject.clone(),
                    description: description.clone(),
                    retry_after: *retry_after,
                },
            },
            // Which limit, as a QuotaFailure; no RetryInfo: the same
            // message will never fit.
            Self::MessageTooLarge { .. } => Report {
                kind: ErrorKind::ResourceExhausted,
                message: self.to_string(),
                detail: Detail::Quota {
                    subject: "limits.max_message_bytes".into(),
                    description: self.to_string(),
                    retry_after: None,
                },
            },
            Self::Plugin(e) => e.report(),
            Self::SharedPlugin(e) => e.report(),
            Self::Internal(_) | Self::Transport(_) => Report::new(ErrorKind::Internal, "internal error"),
            other => Report::new(other.kind(), other.to_string()),
        }
    }

    /// The gRPC code the client gets.
    pub fn code(&self) -> tonic::Code {
        match self {
            Self::Relayed(status) => status.code(),
            other => prism_proto::error::code(other.kind()),
        }
    }

    /// The one conversion to a gRPC status, logging what the client does
    /// not see.
    pub fn into_status(self) -> tonic::Status {
        if let Self::Relayed(status) = self {
            // The owner logged it; the client gets its code, message and
            // details (not its other trailers).
            return tonic::Status::with_details(status.code(), status.message(), status.details().to_vec().into());
        }
        match self.kind() {
            ErrorKind::Internal => tracing::error!(error = %self, "request failed"),
            ErrorKind::Unavailable => tracing::warn!(error = %self, "request failed"),
            _ => {}
        }
        prism_proto::error::into_status(self.report())
    }
}
