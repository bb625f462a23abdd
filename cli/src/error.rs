//! How a failed command is reported on stderr — `error: <CODE>: <message>`
//! for a gRPC status, plus its `google.rpc.BadRequest` field violations —
//! and which exit code it gets: 1 for failures, 2 for usage errors.

use std::fmt;

use tonic::Code;
use tonic_types::StatusExt;

/// Exit code of a command the server (or the network) refused.
pub const EXIT_FAILURE: u8 = 1;
/// Exit code of a command line or input file that makes no sense, as clap
/// uses for bad flags.
pub const EXIT_USAGE: u8 = 2;

/// The user's input is wrong (flags that do not fit together, a bad spec
/// file); nothing was sent.
#[derive(Debug)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// A usage error as an `anyhow::Error` (exit code 2).
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(UsageError(message.into()))
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

/// The text printed on stderr for `err`, without a trailing newline:
/// `error: …` and, for an INVALID_ARGUMENT with details, one indented
/// line per field violation.
pub fn render(err: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut violations = Vec::new();
    for cause in err.chain() {
        // The routing client's final answer is a status too.
        let status = cause
            .downcast_ref::<tonic::Status>()
            .or_else(|| cause.downcast_ref::<prism_client::ClientError>().and_then(|e| e.status()));
        if let Some(status) = status {
            let code = code_name(status.code());
            parts.push(if status.message().is_empty() {
                code.to_owned()
            } else {
                format!("{code}: {}", status.message())
            });
            if let Some(bad) = status.get_details_bad_request() {
                violations = bad.field_violations;
            }
            // A transport failure says why only in its sources (a TLS
            // alert: no client certificate, an unknown CA).
            let mut source = std::error::Error::source(status);
            while let Some(cause) = source {
                let text = cause.to_string();
                if !parts.iter().any(|p| p.contains(&text)) {
                    parts.push(text);
                }
                source = cause.source();
            }
            break;
        }
        let text = cause.to_string();
        // Errors that print their source (`cannot connect to x: {source}`)
        // would otherwise say it twice.
        if !parts.last().is_some_and(|p| p.contains(&text)) {
            parts.push(text);
        }
    }
    let mut out = format!("error: {}", parts.join(": "));
    for v in violations {
        out.push_str(&format!("\n  field {}: {}", v.field, v.description));
    }
    out
}

/// The exit code for `err`.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    if err.chain().any(|c| c.is::<UsageError>()) { EXIT_USAGE } else { EXIT_FAILURE }
}

/// Whether `err` is stdout having been closed by its reader (`| head`):
/// not a failure of the command. Only a failed write to stdout counts: a
/// connection the server closed (e.g. refusing a TLS client without a
/// certificate) can also end in "broken pipe", and is a failure.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|c| c.downcast_ref::<crate::output::StdoutError>().is_some_and(|e| e.reader_gone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::ErrorDetails;

    #[test]
    fn only_a_closed_stdout_is_a_broken_pipe() {
        let pipe = || std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        let stdout = anyhow::Error::new(crate::output::StdoutError(pipe())).context("printing");
        assert!(is_broken_pipe(&stdout));
        // A server closing the connection (a TLS refusal) is a failure.
        let connection = anyhow::Error::new(pipe()).context("transport error");
        assert!(!is_broken_pipe(&connection));
        let other = anyhow::Error::new(crate::output::StdoutError(std::io::Error::other("disk full")));
        assert!(!is_broken_pipe(&other));
    }

    #[test]
    fn statuses_print_code_message_and_violations() {
        let status = tonic::Status::with_error_details(
            Code::InvalidArgument,
            "spec.backend: nope",
            ErrorDetails::with_bad_request_violation("spec.backend", "nope"),
        );
        let err = anyhow::Error::new(status);
        assert_eq!(render(&err), "error: INVALID_ARGUMENT: spec.backend: nope\n  field spec.backend: nope");
        assert_eq!(exit_code(&err), EXIT_FAILURE);
        let err = anyhow::Error::new(tonic::Status::not_found("tenant x not found")).context("reading tenant x");
        assert_eq!(render(&err), "error: reading tenant x: NOT_FOUND: tenant x not found");
        let routed = prism_client::ClientError::Status(tonic::Status::unavailable("no live instance"));
        assert_eq!(render(&anyhow::Error::new(routed)), "error: UNAVAILABLE: no live instance");
    }

    #[test]
    fn usage_errors_exit_with_two() {
        let err = usage("--dsn applies to backend postgres");
        assert_eq!(render(&err), "error: --dsn applies to backend postgres");
        assert_eq!(exit_code(&err), EXIT_USAGE);
        assert_eq!(exit_code(&err.context("reading spec.yaml")), EXIT_USAGE);
    }
}
