//! The client's one error type: what went wrong before a call could be
//! made (a bad address or token) or the status the servers answered with
//! after routing and retries.

use prism_proto::error::ErrorKind;
use tonic::Code;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint { endpoint: String, reason: String },
    #[error("the token cannot be sent as a header: {0}")]
    InvalidToken(String),
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
    },
    /// A TLS setting or file that cannot be used (names both).
    #[error("tls {0}")]
    Tls(#[from] prism_tls::TlsError),
    /// The routing client needs a tokio runtime for its channels and its
    /// watch task.
    #[error("the client must be built inside a tokio runtime")]
    NoRuntime,
    /// The final answer of a call, after redirects and retries: the
    /// server's status (or the transport's, as UNAVAILABLE, or
    /// DEADLINE_EXCEEDED when the call's overall deadline passed).
    #[error("{}: {}", code_name(.0.code()), .0.message())]
    Status(tonic::Status),
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

impl ClientError {
    /// The status a server (or the transport) answered, if that is what
    /// this error is.
    pub fn status(&self) -> Option<&tonic::Status> {
        match self {
            Self::Status(s) => Some(s),
            _ => None,
        }
    }

    /// The gRPC code callers branch on; errors raised before any call are
    /// `INVALID_ARGUMENT` (bad address or token) or `UNAVAILABLE` (cannot
    /// connect).
    pub fn code(&self) -> Code {
        match self {
            Self::InvalidEndpoint { .. } | Self::InvalidToken(_) | Self::Tls(_) => Code::InvalidArgument,
            Self::Connect { .. } => Code::Unavailable,
            Self::NoRuntime => Code::Internal,
            Self::Status(s) => s.code(),
        }
    }

    /// The kind, as every Prism crate names failures.
    pub fn kind(&self) -> ErrorKind {
        prism_proto::error::kind_of(self.code())
    }

    /// Whether the same call may succeed later. The client has already
    /// retried what it safely could, so this is for the caller's own
    /// policy (e.g. a job queue).
    pub fn could_retry(&self) -> bool {
        self.kind().could_retry()
    }

    /// As a `tonic::Status` (for servers that call Prism and answer with
    /// what they got).
    pub fn into_status(self) -> tonic::Status {
        match self {
            Self::Status(s) => s,
            other => tonic::Status::new(other.code(), other.to_string()),
        }
    }
}

impl From<tonic::Status> for ClientError {
    fn from(status: tonic::Status) -> Self {
        Self::Status(status)
    }
}

/// The canonical name of a gRPC code, as in `google.rpc.Code`.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}
