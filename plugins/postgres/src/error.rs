//! The postgres plugin's errors, and how they reach the gateway: as a
//! [`PluginError`] whose public message names no DSN, no SQL, no table and
//! no server address — those stay in the source, for the server log.
//! Whatever says the server is down, unreachable, overloaded or slow is
//! `Unavailable`, so the client retries; so is a TLS connection that fails
//! (an untrusted certificate, a server without TLS) and a namespace that
//! requires TLS on a gateway without trusted CAs: an operator fixes those,
//! not the client, and another gateway may already be able to serve.

use deadpool_postgres::{PoolError, TimeoutType};
use prism_plugin_api::PluginError;
use tokio_postgres::error::SqlState;

pub type Result<T, E = PostgresError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum PostgresError {
    /// A plugin setting is wrong; `field` names it.
    #[error("{field}: {description}")]
    Config { field: String, description: String },
    /// A namespace setting or a request the plugin cannot serve; `field`
    /// names it, `description` never quotes a DSN.
    #[error("{field}: {description}")]
    Invalid { field: String, description: String },
    #[error("namespace {0} is not provisioned")]
    NotProvisioned(String),
    /// Getting a connection from the namespace's pool failed.
    #[error("connection pool: {0}")]
    Pool(#[from] PoolError),
    #[error("postgres: {0}")]
    Db(#[from] tokio_postgres::Error),
    /// The whole call ran past the plugin's request timeout.
    #[error("{0} timed out")]
    Timeout(&'static str),
    /// Stored rows that do not fit together: a bug or a damaged table.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// Two namespaces' names led to the same tables (a 64-bit hash
    /// collision): refused rather than shared.
    #[error("table name {0} is already taken by another namespace")]
    NameTaken(String),
    /// The namespace requires TLS and the plugin has no CA to verify its
    /// server with (`tls_ca_file` is unset).
    #[error("{}", crate::tls::NO_CA_MESSAGE)]
    NoTlsRoots,
    /// The namespace's `password_ref` does not resolve on this gateway;
    /// the message names the reference, never a value.
    #[error(transparent)]
    Secret(#[from] prism_plugin_api::secrets::SecretError),
    /// The DSN holds a password (a namespace stored before that was
    /// refused). Not `Invalid`, which means "never provisioned": such a
    /// namespace may well have tables (deprovisioning says so).
    #[error("spec.backend_config.postgres.dsn holds a password")]
    InlinePassword,
    /// A read gave up at its deadline ([`prism_plugin_api::pace`]);
    /// already the error the gateway sees.
    #[error("{0}")]
    GaveUp(PluginError),
}

/// Why a DSN with a password is not served.
pub(crate) const INLINE_PASSWORD: &str = "holds a password, which a namespace may no longer store: remove it and \
                                          name where the gateway finds it with password_ref (env:NAME, file:/path \
                                          or secret:NAME)";

impl PostgresError {
    pub(crate) fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::Invalid { field: field.into(), description: description.into() }
    }

    /// The server's SQLSTATE, if the server answered with an error.
    pub fn code(&self) -> Option<&SqlState> {
        match self {
            Self::Db(e) | Self::Pool(PoolError::Backend(e)) => e.code(),
            _ => None,
        }
    }

    /// The namespace's tables (or schema) do not exist.
    pub(crate) fn is_missing_table(&self) -> bool {
        matches!(self.code(), Some(c) if *c == SqlState::UNDEFINED_TABLE || *c == SqlState::INVALID_SCHEMA_NAME)
    }

    /// The server lost or confused a prepared statement: "does not exist"
    /// (26000) or "already exists" (42P05). Only a pooler between the
    /// plugin and the server that moves sessions' statements around
    /// (transaction pooling) causes that; the statement did not run.
    pub(crate) fn is_unprepared(&self) -> bool {
        matches!(self.code(), Some(c) if *c == SqlState::INVALID_SQL_STATEMENT_NAME || *c == SqlState::DUPLICATE_PSTATEMENT)
    }

    /// A conflict between concurrent transactions that running the
    /// transaction again resolves.
    pub(crate) fn is_transient(&self) -> bool {
        matches!(self.code(), Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED)
    }
}

/// What the client is told about an error of the server, by its SQLSTATE;
/// `None`: a failure of ours, not the backend's state.
fn unavailable_message(code: &SqlState) -> Option<&'static str> {
    if *code == SqlState::QUERY_CANCELED || *code == SqlState::LOCK_NOT_AVAILABLE {
        // statement_timeout or lock_timeout fired.
        return Some("the postgres backend timed out");
    }
    if *code == SqlState::INSUFFICIENT_PRIVILEGE {
        // The role cannot create or use the namespace's schema or tables.
        return Some("the postgres role of the namespace lacks a permission it needs");
    }
    Some(match code.code().get(..2).unwrap_or_default() {
        // Connection exceptions; the server shutting down or starting up.
        "08" | "57" => "the postgres backend is unavailable",
        // Out of connections, memory or disk.
        "53" => "the postgres backend is overloaded",
        // Serialization failures and deadlocks that outlived the retries.
        "40" => "the postgres backend is busy",
        // Authentication: an operator must fix the credentials.
        "28" => "the postgres backend refused the namespace's credentials",
        // The database the DSN names does not exist.
        "3D" => "the postgres database of the namespace does not exist",
        _ => return None,
    })
}

/// The server asked for a password and the namespace names none: the
/// client library says so in words only ("password missing").
fn missing_password(db: &tokio_postgres::Error) -> Option<&'static str> {
    std::error::Error::source(db)
        .is_some_and(|e| e.to_string() == "password missing")
        .then_some("the postgres server asks for a password and the namespace names none: set its password_ref")
}

impl From<PostgresError> for PluginError {
    fn from(e: PostgresError) -> Self {
        const UNREACHABLE: &str = "the postgres backend is unreachable";
        let e = match e {
            PostgresError::GaveUp(gave_up) => return gave_up,
            other => other,
        };
        let public = match &e {
            PostgresError::NotProvisioned(name) => return PluginError::NotProvisioned(name.clone()),
            PostgresError::Invalid { field, description } => return PluginError::invalid(field, description),
            PostgresError::InlinePassword => {
                return PluginError::invalid("spec.backend_config.postgres.dsn", INLINE_PASSWORD);
            }
            // An operator declares the secret (or a file appears): retry.
            PostgresError::Secret(secret) => {
                let public = secret.to_string();
                return PluginError::unavailable(public, e);
            }
            PostgresError::Timeout(_) => Some("the postgres backend timed out"),
            PostgresError::NoTlsRoots => Some(crate::tls::NO_CA_MESSAGE),
            PostgresError::Pool(PoolError::Timeout(TimeoutType::Wait)) => {
                Some("the postgres backend is overloaded: no free connection")
            }
            PostgresError::Pool(PoolError::Timeout(_) | PoolError::Closed) => Some(UNREACHABLE),
            // No answer from the server at all: it is down or unreachable.
            PostgresError::Db(db) | PostgresError::Pool(PoolError::Backend(db)) => match db.code() {
                Some(code) => unavailable_message(code),
                None => Some(missing_password(db).or_else(|| crate::tls::failure(db)).unwrap_or(UNREACHABLE)),
            },
            PostgresError::GaveUp(_)
            | PostgresError::Pool(_)
            | PostgresError::Config { .. }
            | PostgresError::Corrupt(_)
            | PostgresError::NameTaken(_) => None,
        };
        match (public, &e) {
            (Some(public), _) => PluginError::unavailable(public, e),
            (None, PostgresError::Corrupt(_)) => PluginError::internal("the postgres backend holds corrupt data", e),
            (None, _) => PluginError::internal("the postgres backend failed", e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_states_are_unavailable_and_bugs_internal() {
        let message = |code: SqlState| unavailable_message(&code);
        assert_eq!(message(SqlState::ADMIN_SHUTDOWN), Some("the postgres backend is unavailable"));
        assert_eq!(message(SqlState::CANNOT_CONNECT_NOW), Some("the postgres backend is unavailable"));
        assert_eq!(message(SqlState::QUERY_CANCELED), Some("the postgres backend timed out"));
        assert_eq!(message(SqlState::LOCK_NOT_AVAILABLE), Some("the postgres backend timed out"));
        assert_eq!(message(SqlState::TOO_MANY_CONNECTIONS), Some("the postgres backend is overloaded"));
        assert!(message(SqlState::INSUFFICIENT_PRIVILEGE).is_some_and(|m| m.contains("permission")));
        assert_eq!(message(SqlState::SYNTAX_ERROR), None);
        assert_eq!(message(SqlState::UNIQUE_VIOLATION), None);
    }

    #[test]
    fn public_messages_name_no_secret() {
        let e = PluginError::from(PostgresError::Timeout("connecting to postgres://user:secret@db.internal/x"));
        assert!(e.could_retry());
        assert_eq!(e.report().message, "the postgres backend timed out");
        let e = PluginError::from(PostgresError::Corrupt("table kv_secret_0123 row 7".into()));
        assert!(!e.report().message.contains("secret"), "{}", e.report().message);
        let e = PluginError::from(PostgresError::Pool(PoolError::Timeout(TimeoutType::Create)));
        assert_eq!(e.report().message, "the postgres backend is unreachable");
        let e = PluginError::from(PostgresError::invalid("spec.backend_config.postgres.dsn", "is not valid"));
        assert!(matches!(e, PluginError::InvalidArgument { .. }));
    }
}
