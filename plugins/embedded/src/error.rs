//! The embedded backend's errors, and how they reach the gateway: as a
//! [`PluginError`] whose public message names no path and no file.

use prism_plugin_api::PluginError;

pub type Result<T, E = EmbeddedError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    /// A setting is wrong; `field` names it.
    #[error("{field}: {description}")]
    Config { field: String, description: String },
    /// The data directory cannot be created.
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("storage: {0}")]
    Storage(#[from] redb::Error),
    /// Stored bytes that do not decode: a bug or a damaged file.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("namespace {0} is not provisioned")]
    NotProvisioned(String),
    /// The request is one the store cannot hold (the gateway should have
    /// refused it).
    #[error("{field}: {description}")]
    Invalid { field: &'static str, description: String },
    #[error("storage task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The plugin is being dropped.
    #[error("the store is shutting down")]
    ShuttingDown,
    /// A read gave up: its caller dropped it or its deadline passed
    /// ([`prism_plugin_api::pace`]); already the error the gateway sees.
    #[error("{0}")]
    GaveUp(PluginError),
}

/// Any redb error as an [`EmbeddedError`].
pub(crate) fn storage(e: impl Into<redb::Error>) -> EmbeddedError {
    EmbeddedError::Storage(e.into())
}

impl From<EmbeddedError> for PluginError {
    fn from(e: EmbeddedError) -> Self {
        match e {
            EmbeddedError::GaveUp(e) => e,
            EmbeddedError::NotProvisioned(name) => PluginError::NotProvisioned(name),
            EmbeddedError::Invalid { field, description } => PluginError::invalid(field, description),
            // The disk failed, or another process holds the file: retrying
            // (after an operator acts) may work.
            EmbeddedError::Storage(
                redb::Error::Io(_)
                | redb::Error::PreviousIo
                | redb::Error::DatabaseAlreadyOpen
                | redb::Error::LockProtocolMismatch,
            )
            | EmbeddedError::DataDir { .. }
            | EmbeddedError::ShuttingDown => PluginError::unavailable("embedded storage is unavailable", e),
            EmbeddedError::Corrupt(_) => PluginError::internal("embedded storage holds corrupt data", e),
            EmbeddedError::Config { .. } | EmbeddedError::Storage(_) | EmbeddedError::Task(_) => {
                PluginError::internal("embedded storage failed", e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_messages_name_no_path() {
        let e = EmbeddedError::DataDir {
            path: "/secret/place".into(),
            source: std::io::Error::new(std::io::ErrorKind::PermissionDenied, "denied"),
        };
        let report = PluginError::from(e).report();
        assert!(!report.message.contains("/secret"), "{}", report.message);
        let e = EmbeddedError::Storage(redb::Error::Io(std::io::Error::other("/secret/place: disk full")));
        let plugin = PluginError::from(e);
        assert!(plugin.could_retry());
        assert!(!plugin.report().message.contains("/secret"));
    }
}
