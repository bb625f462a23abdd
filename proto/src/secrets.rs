//! Backend credentials are never metadata (SPEC §6): a namespace's spec
//! names a *reference* to its credential, which only the owning gateway
//! resolves, and a connection string that carries a password is refused.
//! This module is the pure-data half both sides agree on: the grammar of
//! references ([`SecretRef`]), and how a password inside a PostgreSQL DSN
//! is found ([`dsn_has_password`]) and blanked ([`redact_dsn`]). Resolving
//! a reference is I/O and lives with the plugins
//! (`prism_plugin_api::secrets`).
//!
//! A reference is one of:
//!
//! - `env:NAME` — the gateway's environment variable `NAME`;
//! - `file:/absolute/path` — the content of a file on the gateway;
//! - `secret:NAME` — the entry `NAME` of the gateway's `[gateway.secrets]`.
//!
//! The gateway resolves only what its operator declared for the
//! namespace's tenant, so a namespace owner cannot make it read (and send
//! to a server of the owner's choosing) any other variable or file.
//! Today `PostgresConfig.password_ref` uses it; a Kafka SASL password or a
//! Pulsar token would be one more `*_ref` field of the same grammar.

use std::fmt;
use std::ops::Range;

use crate::control::Namespace;
use crate::control::backend_config::Config;

/// What replaces a password [`redact_dsn`] removes.
pub const REDACTED: &str = "REDACTED";

/// Longest reference, in bytes.
pub const MAX_REF_LEN: usize = 4096;

/// Where a secret is, on the owning gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretRef<'a> {
    /// `env:NAME`: an environment variable.
    Env(&'a str),
    /// `file:/path`: a file's content.
    File(&'a str),
    /// `secret:NAME`: an entry of the gateway's `[gateway.secrets]`.
    Named(&'a str),
}

impl<'a> SecretRef<'a> {
    /// Parses a reference; the error says what is wrong with it (and
    /// quotes it: a reference is not a secret).
    pub fn parse(text: &'a str) -> Result<Self, String> {
        if text.len() > MAX_REF_LEN {
            return Err(format!("is longer than {MAX_REF_LEN} bytes"));
        }
        let reference = if let Some(name) = text.strip_prefix("env:") {
            let ok = name.len() <= 255
                && name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ok {
                return Err(format!("{text:?} does not name an environment variable ([A-Za-z_][A-Za-z0-9_]*)"));
            }
            Self::Env(name)
        } else if let Some(path) = text.strip_prefix("file:") {
            if !path.starts_with('/') || path.chars().any(char::is_control) {
                return Err(format!("{text:?} does not name an absolute path (file:/run/secrets/pg)"));
            }
            Self::File(path)
        } else if let Some(name) = text.strip_prefix("secret:") {
            let ok = (1..=128).contains(&name.len())
                && name.starts_with(|c: char| c.is_ascii_alphanumeric())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            if !ok {
                return Err(format!("{text:?} does not name a secret ([A-Za-z0-9][A-Za-z0-9._-]*)"));
            }
            Self::Named(name)
        } else {
            return Err(format!("{text:?} is not env:NAME, file:/path or secret:NAME"));
        };
        Ok(reference)
    }
}

impl fmt::Display for SecretRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Env(name) => write!(f, "env:{name}"),
            Self::File(path) => write!(f, "file:{path}"),
            Self::Named(name) => write!(f, "secret:{name}"),
        }
    }
}

/// Whether a PostgreSQL DSN holds a password: in a URL's user info
/// (`postgres://user:password@host`), as a URL's `password` parameter, or
/// as a `password=` pair of a key=value string. It reads the DSN as the
/// gateway's client library (tokio-postgres) does, so whatever that would
/// send as a password is found; a DSN neither can parse holds none.
pub fn dsn_has_password(dsn: &str) -> bool {
    !password_spans(dsn).is_empty()
}

/// `dsn` with every password [`dsn_has_password`] finds replaced by
/// [`REDACTED`]; `None` when it holds none (or only [`REDACTED`] ones).
pub fn redact_dsn(dsn: &str) -> Option<String> {
    let spans = password_spans(dsn);
    if spans.iter().all(|span| &dsn[span.clone()] == REDACTED) {
        return None;
    }
    let mut out = String::with_capacity(dsn.len());
    let mut at = 0;
    for span in spans {
        out.push_str(&dsn[at..span.start]);
        out.push_str(REDACTED);
        at = span.end;
    }
    out.push_str(&dsn[at..]);
    Some(out)
}

/// Blanks a password in `ns`'s backend settings (a namespace stored before
/// passwords were refused); whether there was one.
pub fn redact_namespace(ns: &mut Namespace) -> bool {
    let config = ns.spec.as_mut().and_then(|s| s.backend_config.as_mut()).and_then(|c| c.config.as_mut());
    match config {
        Some(Config::Postgres(pg)) => match redact_dsn(&pg.dsn) {
            Some(redacted) => {
                pg.dsn = redacted;
                true
            }
            None => false,
        },
        _ => false,
    }
}

/// The byte ranges of the passwords in `dsn`, in order.
fn password_spans(dsn: &str) -> Vec<Range<usize>> {
    for scheme in ["postgres://", "postgresql://"] {
        if let Some(rest) = dsn.strip_prefix(scheme) {
            return url_password_spans(rest, scheme.len());
        }
    }
    key_value_password_spans(dsn)
}

/// As tokio-postgres reads a URL: the user info is everything up to the
/// first `@` (its password after the first `:`); parameters follow the
/// first `?` after it, `&`-separated `key=value`, keys percent-decoded.
fn url_password_spans(rest: &str, offset: usize) -> Vec<Range<usize>> {
    let mut spans = Vec::new();
    let mut after_creds = 0;
    if let Some(at) = rest.find('@') {
        if let Some(colon) = rest[..at].find(':') {
            spans.push(offset + colon + 1..offset + at);
        }
        after_creds = at + 1;
    }
    let Some(question) = rest[after_creds..].find('?') else { return spans };
    let mut pos = after_creds + question + 1;
    while pos < rest.len() {
        let Some(eq) = rest[pos..].find('=') else { break };
        let key = &rest[pos..pos + eq];
        let value_start = pos + eq + 1;
        let value_end = rest[value_start..].find('&').map_or(rest.len(), |amp| value_start + amp);
        if percent_decoded(key) == b"password" {
            spans.push(offset + value_start..offset + value_end);
        }
        pos = value_end + 1;
    }
    spans
}

fn percent_decoded(s: &str) -> Vec<u8> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// As tokio-postgres reads `key = value` pairs: keywords end at `=` or
/// whitespace; a value is `'quoted'` (backslash escapes) or runs to the
/// next whitespace (backslash escapes). The span of a `password` value
/// covers its quotes. A string that stops making sense ends the scan.
fn key_value_password_spans(dsn: &str) -> Vec<Range<usize>> {
    let mut spans = Vec::new();
    let bytes: Vec<(usize, char)> = dsn.char_indices().collect();
    let end_of = |i: usize| bytes.get(i).map_or(dsn.len(), |(at, _)| *at);
    let mut i = 0;
    let skip_ws = |mut i: usize| {
        while bytes.get(i).is_some_and(|(_, c)| c.is_whitespace()) {
            i += 1;
        }
        i
    };
    loop {
        i = skip_ws(i);
        let key_start = i;
        while bytes.get(i).is_some_and(|(_, c)| !c.is_whitespace() && *c != '=') {
            i += 1;
        }
        if i == key_start {
            return spans;
        }
        let key = &dsn[end_of(key_start)..end_of(i)];
        i = skip_ws(i);
        if bytes.get(i).map(|(_, c)| *c) != Some('=') {
            return spans;
        }
        i = skip_ws(i + 1);
        let value_start = i;
        if bytes.get(i).map(|(_, c)| *c) == Some('\'') {
            i += 1;
            loop {
                match bytes.get(i).map(|(_, c)| *c) {
                    None => {
                        // Unterminated: the rest is the value.
                        if key == "password" {
                            spans.push(end_of(value_start)..dsn.len());
                        }
                        return spans;
                    }
                    Some('\'') => break,
                    Some('\\') => i += 2,
                    Some(_) => i += 1,
                }
            }
            i += 1;
        } else {
            while let Some((_, c)) = bytes.get(i) {
                if c.is_whitespace() {
                    break;
                }
                i += if *c == '\\' { 2 } else { 1 };
            }
        }
        let value_end = end_of(i.min(bytes.len()));
        if key == "password" && value_end > end_of(value_start) {
            spans.push(end_of(value_start)..value_end);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_and_print() {
        for ok in ["env:PG_ACME_PASSWORD", "env:_x1", "file:/run/secrets/pg", "secret:pg-acme.v2"] {
            let r = SecretRef::parse(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
            assert_eq!(r.to_string(), ok);
        }
        assert_eq!(SecretRef::parse("env:PG"), Ok(SecretRef::Env("PG")));
        for bad in [
            "",
            "PG_PASSWORD",
            "env:",
            "env:1X",
            "env:A-B",
            "file:relative",
            "file:",
            "secret:",
            "secret:-x",
            "vault:x",
        ] {
            assert!(SecretRef::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn finds_passwords_where_the_client_library_would() {
        for (dsn, has) in [
            ("postgres://u@db/x", false),
            ("postgres://db:5432/x", false),
            ("postgres://u:hunter2@db/x", true),
            ("postgresql://u:@db/x", true),
            ("postgres://u@db/x?sslmode=require&password=hunter2", true),
            ("postgres://u@db/x?pass%77ord=hunter2", true),
            ("postgres://u@db/x?application_name=password", false),
            ("host=db user=u", false),
            ("host=db user=u password=hunter2", true),
            ("host=db password = 'hunter 2' user=u", true),
            ("password='it\\'s' host=db", true),
            ("host=db passwordx=1", false),
            ("not a dsn", false),
        ] {
            assert_eq!(dsn_has_password(dsn), has, "{dsn}");
        }
    }

    #[test]
    fn redaction_keeps_everything_but_the_password() {
        let r = |dsn: &str| redact_dsn(dsn).unwrap_or_else(|| dsn.to_owned());
        assert_eq!(r("postgres://u:hunter2@db:5432/x"), "postgres://u:REDACTED@db:5432/x");
        assert_eq!(
            r("postgres://u@db/x?password=hunter2&sslmode=require"),
            "postgres://u@db/x?password=REDACTED&sslmode=require"
        );
        assert_eq!(r("postgres://u:a@db/x?password=b"), "postgres://u:REDACTED@db/x?password=REDACTED");
        assert_eq!(r("host=db password='hunter 2' user=u"), "host=db password=REDACTED user=u");
        assert_eq!(r("host=db password=hunter2"), "host=db password=REDACTED");
        assert_eq!(r("password='unterminated host=db"), "password=REDACTED");
        assert_eq!(redact_dsn("postgres://u@db/x"), None);
        assert_eq!(redact_dsn("postgres://u:REDACTED@db/x?password=REDACTED"), None, "done once");
        // Redacted is still a password: the gateway refuses it too.
        assert!(dsn_has_password(&r("postgres://u:hunter2@db/x")));
    }
}
