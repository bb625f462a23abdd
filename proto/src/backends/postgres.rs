//! The postgres backend: KeyValue and TimeSeries in a PostgreSQL server
//! the namespace names. The control plane checks these settings by shape;
//! the plugin (`prism-plugin-postgres`) reads its defaults and limits from
//! the constants here and checks what only a connection could tell.

use super::{BackendDescription, Change, Count, Kind, Presence, Setting, Switch, Telemetry, Text, field};
use crate::control::backend_config::Config;
use crate::control::{Abstraction, Backend, PostgresConfig};

/// Connections of a namespace's pool: 0 means 16, at most 1024.
pub const POOL_SIZE: Count =
    Count { default: 16, max: 1024, change: Change::Any, field: field!(Postgres.pool_size: u32, u32) };
/// The schema of a namespace whose settings name none.
pub const DEFAULT_SCHEMA: &str = "public";
/// Longest DSN, in bytes.
pub const MAX_DSN_LEN: usize = 4096;

pub const DESCRIPTION: BackendDescription = BackendDescription {
    backend: Backend::Postgres,
    name: "postgres",
    title: "Postgres",
    abstractions: &[Abstraction::KeyValue, Abstraction::TimeSeries],
    telemetry: Telemetry { system: "postgresql", messaging: false },
    settings: &[
        Setting {
            field: "dsn",
            flag: "dsn",
            value_name: "DSN",
            help: "PostgreSQL connection string or postgres:// URL, without a password",
            presence: Presence::Required { missing: "is required" },
            kind: Kind::Text(Text {
                max_len: Some(MAX_DSN_LEN),
                default: "",
                check: Some(check_dsn),
                field: field!(Postgres.dsn: str, String),
            }),
        },
        Setting {
            field: "password_ref",
            flag: "password-from",
            value_name: "REF",
            help: "Where the owning gateway finds the password: env:NAME, file:/path or secret:NAME (\"\" for \
                   none); never the password itself",
            presence: Presence::Optional,
            kind: Kind::Text(Text {
                max_len: None,
                default: "",
                check: Some(check_secret_ref),
                field: field!(Postgres.password_ref: str, String),
            }),
        },
        Setting {
            field: "pool_size",
            flag: "pool-size",
            value_name: "N",
            help: "Connections in the owning gateway's pool",
            presence: Presence::Optional,
            kind: Kind::Count(POOL_SIZE),
        },
        Setting {
            field: "schema",
            flag: "schema",
            value_name: "SCHEMA",
            help: "Schema of the namespace's tables, [a-z_][a-z0-9_]{0,62}",
            presence: Presence::Optional,
            kind: Kind::Text(Text {
                max_len: None,
                default: DEFAULT_SCHEMA,
                check: Some(check_schema),
                field: field!(Postgres.schema: str, String),
            }),
        },
        Setting {
            field: "require_tls",
            flag: "require-tls",
            value_name: "BOOL",
            help: "Require TLS to the server",
            presence: Presence::Optional,
            kind: Kind::Switch(Switch { field: field!(Postgres.require_tls: bool, bool) }),
        },
    ],
    empty: || Config::Postgres(PostgresConfig::default()),
};

/// A `postgres://` URL or a `key=value` string, with no control
/// characters and no password (credentials are named by `password_ref`).
fn check_dsn(dsn: &str) -> Result<(), String> {
    let trimmed = dsn.trim();
    let url = trimmed.starts_with("postgres://") || trimmed.starts_with("postgresql://");
    if !url && !trimmed.contains('=') {
        return Err("must be a postgres:// URL or key=value connection string".into());
    }
    if dsn.chars().any(char::is_control) {
        return Err("must not hold control characters".into());
    }
    // Never quoted back: the message names where the password was, not it.
    if crate::secrets::dsn_has_password(trimmed) {
        return Err("holds a password, which would be stored and shown as metadata; remove it and name where the \
                    gateway finds it with password_ref (env:NAME, file:/path or secret:NAME)"
            .into());
    }
    Ok(())
}

fn check_secret_ref(reference: &str) -> Result<(), String> {
    crate::secrets::SecretRef::parse(reference).map(|_| ())
}

/// `[a-z_][a-z0-9_]{0,62}`: a PostgreSQL identifier that needs no quoting.
fn check_schema(schema: &str) -> Result<(), String> {
    let ok = schema.len() <= 63
        && schema.starts_with(|ch: char| ch.is_ascii_lowercase() || ch == '_')
        && schema.chars().all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '_');
    if ok { Ok(()) } else { Err("must match [a-z_][a-z0-9_]{0,62}".into()) }
}
