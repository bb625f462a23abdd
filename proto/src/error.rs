//! The closed set of error kinds every Prism crate maps its errors onto, and
//! the one function that turns a kind into a `tonic::Status` at the edge.
//!
//! A crate's error enum says its `kind()` and builds a [`Report`]: what the
//! client may see. `Display` of the source error (DSNs, SQL, addresses) never
//! reaches the client.

use std::time::Duration;

/// What went wrong, as a client should react to it. Also the metric label
/// for failures, so its cardinality is bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    Unauthenticated,
    PermissionDenied,
    ResourceExhausted,
    FailedPrecondition,
    /// A concurrency conflict: retry after re-reading.
    Aborted,
    Unavailable,
    Internal,
}

impl ErrorKind {
    /// Every kind, in declaration order (metric label sets, tests).
    pub const ALL: [ErrorKind; 10] = [
        Self::InvalidArgument,
        Self::NotFound,
        Self::AlreadyExists,
        Self::Unauthenticated,
        Self::PermissionDenied,
        Self::ResourceExhausted,
        Self::FailedPrecondition,
        Self::Aborted,
        Self::Unavailable,
        Self::Internal,
    ];
}

impl ErrorKind {
    /// Whether the same request may succeed if sent again unchanged.
    pub fn could_retry(self) -> bool {
        matches!(self, Self::Unavailable | Self::ResourceExhausted | Self::Aborted)
    }

    /// A stable lowercase label (metrics, audit results).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidArgument => "invalid_argument",
            Self::NotFound => "not_found",
            Self::AlreadyExists => "already_exists",
            Self::Unauthenticated => "unauthenticated",
            Self::PermissionDenied => "permission_denied",
            Self::ResourceExhausted => "resource_exhausted",
            Self::FailedPrecondition => "failed_precondition",
            Self::Aborted => "aborted",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
        }
    }
}

/// Structured detail attached to a refusal (`google.rpc.*`).
#[derive(Debug, Clone, PartialEq)]
pub enum Detail {
    None,
    /// `google.rpc.BadRequest`: which field is wrong and why.
    BadRequest {
        field: String,
        description: String,
    },
    /// `google.rpc.QuotaFailure` + `google.rpc.RetryInfo`.
    Quota {
        subject: String,
        description: String,
        retry_after: Option<Duration>,
    },
    /// `google.rpc.ErrorInfo`: a machine-readable reason and metadata.
    Info {
        reason: String,
        metadata: Vec<(String, String)>,
    },
}

/// What a client is told about a failure.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub kind: ErrorKind,
    /// Safe for the client: lowercase, no trailing period, no secrets.
    pub message: String,
    pub detail: Detail,
}

impl Report {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into(), detail: Detail::None }
    }

    /// An INVALID_ARGUMENT naming `field`.
    pub fn bad_field(field: impl Into<String>, description: impl Into<String>) -> Self {
        let (field, description) = (field.into(), description.into());
        Self {
            kind: ErrorKind::InvalidArgument,
            message: format!("{field}: {description}"),
            detail: Detail::BadRequest { field, description },
        }
    }
}

/// The one place a kind becomes a gRPC status code.
#[cfg(feature = "grpc")]
pub fn code(kind: ErrorKind) -> tonic::Code {
    use tonic::Code;
    match kind {
        ErrorKind::InvalidArgument => Code::InvalidArgument,
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::AlreadyExists => Code::AlreadyExists,
        ErrorKind::Unauthenticated => Code::Unauthenticated,
        ErrorKind::PermissionDenied => Code::PermissionDenied,
        ErrorKind::ResourceExhausted => Code::ResourceExhausted,
        ErrorKind::FailedPrecondition => Code::FailedPrecondition,
        ErrorKind::Aborted => Code::Aborted,
        ErrorKind::Unavailable => Code::Unavailable,
        ErrorKind::Internal => Code::Internal,
    }
}

/// The kind of a gRPC status another server answered: the inverse of
/// [`code`] (where several codes mean one kind, the kind).
#[cfg(feature = "grpc")]
pub fn kind_of(code: tonic::Code) -> ErrorKind {
    use tonic::Code;
    match code {
        Code::InvalidArgument | Code::OutOfRange => ErrorKind::InvalidArgument,
        Code::NotFound => ErrorKind::NotFound,
        Code::AlreadyExists => ErrorKind::AlreadyExists,
        Code::Unauthenticated => ErrorKind::Unauthenticated,
        Code::PermissionDenied => ErrorKind::PermissionDenied,
        Code::ResourceExhausted => ErrorKind::ResourceExhausted,
        Code::FailedPrecondition => ErrorKind::FailedPrecondition,
        Code::Aborted => ErrorKind::Aborted,
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => ErrorKind::Unavailable,
        Code::Ok | Code::Unknown | Code::Unimplemented | Code::Internal | Code::DataLoss => ErrorKind::Internal,
    }
}

/// The one function that turns a [`Report`] into a `tonic::Status`, with
/// its `google.rpc` details.
#[cfg(feature = "grpc")]
pub fn into_status(report: Report) -> tonic::Status {
    use tonic_types::{ErrorDetails, StatusExt};
    let details = match report.detail {
        Detail::None => return tonic::Status::new(code(report.kind), report.message),
        Detail::BadRequest { field, description } => ErrorDetails::with_bad_request_violation(field, description),
        Detail::Quota { subject, description, retry_after } => {
            let mut d = ErrorDetails::with_quota_failure_violation(subject, description);
            if let Some(after) = retry_after {
                d.set_retry_info(Some(after));
            }
            d
        }
        Detail::Info { reason, metadata } => ErrorDetails::with_error_info(
            reason,
            "prism",
            metadata.into_iter().collect::<std::collections::HashMap<_, _>>(),
        ),
    };
    tonic::Status::with_error_details(code(report.kind), report.message, details)
}

#[cfg(all(test, feature = "grpc"))]
mod tests {
    use super::*;

    #[test]
    fn kind_of_inverts_code() {
        for kind in ErrorKind::ALL {
            assert_eq!(kind_of(code(kind)), kind, "{kind:?}");
        }
        assert_eq!(kind_of(tonic::Code::DeadlineExceeded), ErrorKind::Unavailable);
        assert_eq!(kind_of(tonic::Code::Unimplemented), ErrorKind::Internal);
    }
}
