//! The crate's one error: a TLS setting, or the file it names, that cannot
//! be used.

/// What is wrong, naming the setting (relative to its TLS table, e.g.
/// `cert_file`) and, in the description, the file.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TlsError {
    #[error("{field}: {description}")]
    Config { field: String, description: String },
}

pub type Result<T, E = TlsError> = std::result::Result<T, E>;

impl TlsError {
    pub(crate) fn config(field: &str, description: impl Into<String>) -> Self {
        Self::Config { field: field.to_owned(), description: description.into() }
    }

    /// The setting that is wrong, relative to its TLS table.
    pub fn field(&self) -> &str {
        match self {
            Self::Config { field, .. } => field,
        }
    }

    /// What is wrong with it.
    pub fn description(&self) -> &str {
        match self {
            Self::Config { description, .. } => description,
        }
    }

    /// The same error with the setting named inside `table` (`tls` →
    /// `tls.cert_file`), for configurations that nest the TLS table.
    pub fn within(self, table: &str) -> Self {
        match self {
            Self::Config { field, description } => Self::Config { field: format!("{table}.{field}"), description },
        }
    }
}
