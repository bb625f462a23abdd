//! Names of tenants, namespaces and shards: `[a-z0-9][a-z0-9-]{0,62}` per
//! part, namespaces written `tenant/name` (as Pulsar's `tenant/namespace`).

use std::fmt;

/// Longest part of a name, in bytes.
pub const MAX_PART_LEN: usize = 63;

/// Why a name was refused; `Display` says it for a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameError {
    Empty,
    TooLong(usize),
    BadFirst(char),
    BadChar(char),
    NotQualified,
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => write!(f, "must not be empty"),
            Self::TooLong(n) => write!(f, "is {n} bytes long, at most {MAX_PART_LEN} are allowed"),
            Self::BadFirst(c) => write!(f, "must start with a-z or 0-9, not {c:?}"),
            Self::BadChar(c) => write!(f, "may hold only a-z, 0-9 and '-', not {c:?}"),
            Self::NotQualified => write!(f, "must be written tenant/name"),
        }
    }
}

impl std::error::Error for NameError {}

/// Checks one part: a tenant id, a namespace's local name or a shard id.
pub fn validate_part(part: &str) -> Result<(), NameError> {
    let mut chars = part.chars();
    let Some(first) = chars.next() else {
        return Err(NameError::Empty);
    };
    if part.len() > MAX_PART_LEN {
        return Err(NameError::TooLong(part.len()));
    }
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return Err(NameError::BadFirst(first));
    }
    match chars.find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')) {
        Some(c) => Err(NameError::BadChar(c)),
        None => Ok(()),
    }
}

/// Checks a `host:port` address (a broker, a gateway's endpoint): a host of
/// letters, digits and `.-_[]:` (IPv6 in brackets), at most 253 bytes, and a
/// non-zero port. The error says what is wrong, quoting `s`.
pub fn validate_host_port(s: &str) -> Result<(), String> {
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(format!("{s:?} is not host:port"));
    };
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '[' | ']' | ':'));
    if !host_ok {
        return Err(format!("{s:?} has no valid host"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("{s:?} has no valid port")),
    }
}

/// Checks a server's endpoint as clients dial it: `host:port` or
/// `http://host:port` (plain text), or `https://host:port` (TLS).
pub fn validate_endpoint(s: &str) -> Result<(), String> {
    let rest = s.strip_prefix("https://").or_else(|| s.strip_prefix("http://")).unwrap_or(s);
    if rest.contains("://") {
        return Err(format!("{s:?} is not host:port, http://host:port or https://host:port"));
    }
    validate_host_port(rest).map_err(|_| format!("{s:?} is not host:port, http://host:port or https://host:port"))
}

/// A validated `tenant/name`, borrowed from the string it was parsed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NamespaceName<'a> {
    pub tenant: &'a str,
    pub name: &'a str,
}

impl<'a> NamespaceName<'a> {
    /// Parses and validates `tenant/name`.
    pub fn parse(full: &'a str) -> Result<Self, NameError> {
        if full.is_empty() {
            return Err(NameError::Empty);
        }
        let (tenant, name) = full.split_once('/').ok_or(NameError::NotQualified)?;
        validate_part(tenant)?;
        validate_part(name)?;
        Ok(Self { tenant, name })
    }
}

impl fmt::Display for NamespaceName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.tenant, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_may_name_their_scheme() {
        for ok in ["127.0.0.1:7401", "http://gw:7401", "https://gw.example.com:443", "https://[::1]:7401"] {
            assert_eq!(validate_endpoint(ok), Ok(()), "{ok}");
        }
        for bad in ["gw", "ftp://gw:21", "https://gw", "https://https://gw:1", "https://gw:1/path", ""] {
            assert!(validate_endpoint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn accepts_valid_names() {
        for ok in ["a", "0", "acme", "user-profiles", "a-", &"x".repeat(63)] {
            assert_eq!(validate_part(ok), Ok(()), "{ok}");
        }
        let ns = NamespaceName::parse("acme/user-profiles").expect("valid");
        assert_eq!((ns.tenant, ns.name), ("acme", "user-profiles"));
        assert_eq!(ns.to_string(), "acme/user-profiles");
    }

    #[test]
    fn refuses_invalid_names() {
        assert_eq!(validate_part(""), Err(NameError::Empty));
        assert_eq!(validate_part(&"x".repeat(64)), Err(NameError::TooLong(64)));
        assert_eq!(validate_part("-a"), Err(NameError::BadFirst('-')));
        assert_eq!(validate_part("Acme"), Err(NameError::BadFirst('A')));
        assert_eq!(validate_part("a_b"), Err(NameError::BadChar('_')));
        assert_eq!(validate_part("a'; drop table x;--"), Err(NameError::BadChar('\'')));
        assert_eq!(validate_part("é"), Err(NameError::BadFirst('é')));
        assert_eq!(NamespaceName::parse("acme"), Err(NameError::NotQualified));
        assert_eq!(NamespaceName::parse("acme/a/b"), Err(NameError::BadChar('/')));
        assert_eq!(NamespaceName::parse("/a"), Err(NameError::Empty));
        assert_eq!(NamespaceName::parse(""), Err(NameError::Empty));
    }
}
