//! Flag types and value parsers shared by several commands: durations
//! (`60s`, `7d`), quota limits (`-1` or `unlimited`), grants
//! (`principal=read-write`), and the quota flags of tenants and namespaces.

use std::time::Duration;

use clap::{Args, ValueEnum};
use prism_proto::control::{AccessLevel, Grant, QuotaProfile, QuotaSet};
use prism_proto::quotas::UNLIMITED;

/// A humantime duration: `60s`, `1h 30m`, `7d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 60s, 15m, 1h, 7d)"))
}

/// A `std::time::Duration` as a protobuf one.
pub fn proto_duration(d: Duration) -> prost_types::Duration {
    // Saturates instead of failing: only durations beyond 292 billion years
    // do not fit, and the server bounds what it accepts anyway.
    prost_types::Duration::try_from(d).unwrap_or(prost_types::Duration { seconds: i64::MAX, nanos: 999_999_999 })
}

/// A quota limit: a non-negative number, or `-1` / `unlimited`.
pub fn parse_limit(s: &str) -> Result<i64, String> {
    if s.eq_ignore_ascii_case("unlimited") {
        return Ok(UNLIMITED);
    }
    match s.parse::<i64>() {
        Ok(v) if v >= UNLIMITED => Ok(v),
        Ok(v) => Err(format!("{v} is negative; use -1 or `unlimited` for no limit")),
        Err(e) => Err(format!("{e}; expected a number, -1 or `unlimited`")),
    }
}

/// `read` or `read-write` (also `read-only`, `read_write`, `readwrite`).
pub fn parse_access(s: &str) -> Result<AccessLevel, String> {
    match s.to_ascii_lowercase().as_str() {
        "read" | "read-only" | "readonly" | "read_only" => Ok(AccessLevel::Read),
        "read-write" | "readwrite" | "read_write" => Ok(AccessLevel::ReadWrite),
        other => Err(format!("{other:?} is not an access level; use read or read-write")),
    }
}

/// `principal=read` or `principal=read-write`.
pub fn parse_grant(s: &str) -> Result<Grant, String> {
    let (principal, level) = s.rsplit_once('=').ok_or_else(|| format!("{s:?} is not PRINCIPAL=read|read-write"))?;
    Ok(Grant { principal: principal.to_owned(), level: parse_access(level)? as i32 })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProfileArg {
    Free,
    Pro,
    Enterprise,
    /// No profile: fields not given are unlimited.
    Custom,
}

impl From<ProfileArg> for QuotaProfile {
    fn from(p: ProfileArg) -> Self {
        match p {
            ProfileArg::Free => Self::Free,
            ProfileArg::Pro => Self::Pro,
            ProfileArg::Enterprise => Self::Enterprise,
            ProfileArg::Custom => Self::Custom,
        }
    }
}

/// Picks one field of a quota set.
type QuotaField = fn(&mut QuotaSet) -> &mut Option<i64>;

/// The quota set to send, from a profile and the fields given on the
/// command line:
/// - nothing given: `None` (create: no quotas; update: keep them);
/// - a profile: that profile, with the given fields overriding it;
/// - only fields: `current` (the stored, fully resolved set, or none on
///   create) with the given fields replaced.
fn quota_set(
    profile: Option<ProfileArg>,
    given: [(QuotaField, Option<i64>); 12],
    current: Option<&QuotaSet>,
) -> Option<QuotaSet> {
    if profile.is_none() && given.iter().all(|(_, v)| v.is_none()) {
        return None;
    }
    let mut q = match profile {
        Some(p) => QuotaSet { profile: QuotaProfile::from(p) as i32, ..QuotaSet::default() },
        None => current.cloned().unwrap_or_default(),
    };
    for (field, value) in given {
        if let Some(v) = value {
            *field(&mut q) = Some(v);
        }
    }
    Some(q)
}

/// Quota flags of a tenant.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Quotas (-1 or `unlimited` = no limit)")]
pub struct TenantQuotaArgs {
    /// Quota profile; it fills the quota fields not given
    #[arg(long, value_enum)]
    pub profile: Option<ProfileArg>,
    /// Requests per second
    #[arg(long, value_name = "N", value_parser = parse_limit, allow_negative_numbers = true)]
    pub requests_per_second: Option<i64>,
    /// Bytes read per second
    #[arg(long, value_name = "N", value_parser = parse_limit, allow_negative_numbers = true)]
    pub read_bytes_per_second: Option<i64>,
    /// Bytes written per second
    #[arg(long, value_name = "N", value_parser = parse_limit, allow_negative_numbers = true)]
    pub write_bytes_per_second: Option<i64>,
    /// Stored bytes
    #[arg(long, value_name = "N", value_parser = parse_limit, allow_negative_numbers = true)]
    pub storage_bytes: Option<i64>,
    /// Requests in flight at once
    #[arg(long, value_name = "N", value_parser = parse_limit, allow_negative_numbers = true)]
    pub concurrent_requests: Option<i64>,
    /// Namespaces of the tenant
    #[arg(long, value_name = "N", value_parser = parse_limit, allow_negative_numbers = true)]
    pub max_namespaces: Option<i64>,
    /// Largest item or event, in bytes
    #[arg(long, value_name = "N", value_parser = parse_limit, allow_negative_numbers = true)]
    pub max_item_size_bytes: Option<i64>,
    /// TimeSeries events written per second (a write of N events counts N)
    #[arg(long, value_name = "N", value_parser = parse_limit, allow_negative_numbers = true)]
    pub events_per_second: Option<i64>,
    /// TimeSeries event bytes written per second
    #[arg(long, value_name = "N", value_parser = parse_limit, allow_negative_numbers = true)]
    pub event_bytes_per_second: Option<i64>,
    /// TimeSeries tails open at once
    #[arg(long, value_name = "N", value_parser = parse_limit, allow_negative_numbers = true)]
    pub open_tails: Option<i64>,
    /// Partitions a namespace may ask for
    #[arg(long, value_name = "N", value_parser = parse_limit, allow_negative_numbers = true)]
    pub max_partitions: Option<i64>,
    /// Longest TimeSeries retention a namespace may ask for, in seconds
    #[arg(long, value_name = "N", value_parser = parse_limit, allow_negative_numbers = true)]
    pub max_retention_seconds: Option<i64>,
}

impl TenantQuotaArgs {
    pub fn to_quotas(&self, current: Option<&QuotaSet>) -> Option<QuotaSet> {
        quota_set(
            self.profile,
            [
                (|q| &mut q.requests_per_second, self.requests_per_second),
                (|q| &mut q.read_bytes_per_second, self.read_bytes_per_second),
                (|q| &mut q.write_bytes_per_second, self.write_bytes_per_second),
                (|q| &mut q.storage_bytes, self.storage_bytes),
                (|q| &mut q.concurrent_requests, self.concurrent_requests),
                (|q| &mut q.max_namespaces, self.max_namespaces),
                (|q| &mut q.max_item_size_bytes, self.max_item_size_bytes),
                (|q| &mut q.events_per_second, self.events_per_second),
                (|q| &mut q.event_bytes_per_second, self.event_bytes_per_second),
                (|q| &mut q.open_tails, self.open_tails),
                (|q| &mut q.max_partitions, self.max_partitions),
                (|q| &mut q.max_retention_seconds, self.max_retention_seconds),
            ],
            current,
        )
    }
}

/// Quota flags of a namespace: a tenant's without `--max-namespaces`, and
/// the item-size quota is `--quota-max-item-size-bytes` because
/// `--max-item-size-bytes` is the namespace's policy.
#[derive(Debug, Clone, Default, PartialEq, Args)]
#[command(next_help_heading = "Quotas (-1 or `unlimited` = no limit)")]
pub struct NamespaceQuotaArgs {
    /// Quota profile; it fills the quota fields not given
    #[arg(long, value_enum)]
    pub profile: Option<ProfileArg>,
    /// Requests per second
    #[arg(long, value_name = "N", value_parser = parse_limit, allow_negative_numbers = true)]
    pub requests_per_second: Option<i64>,
    /// Bytes read per second
    #[arg(long, value_name = "N", value_parser = parse_limit, allow_negative_numbers = true)]
    pub read_bytes_per_second: Option<i64>,
    /// Bytes written per second
    #[arg(long, value_name = "N", value_parser = parse_limit, allow_negative_numbers = true)]
    pub write_bytes_per_second: Option<i64>,
    /// Stored bytes
    #[arg(long, value_name = "N", value_parser = parse_limit, allow_negative_numbers = true)]
    pub storage_bytes: Option<i64>,
    /// Requests in flight at once
    #[arg(long, value_name = "N", value_parser = parse_limit, allow_negative_numbers = true)]
    pub concurrent_requests: Option<i64>,
    /// Largest item or event, in bytes (quota)
    #[arg(long, value_name = "N", value_parser = parse_limit, allow_negative_numbers = true)]
    pub quota_max_item_size_bytes: Option<i64>,
    /// TimeSeries events written per second (a write of N events counts N)
    #[arg(long, value_name = "N", value_parser = parse_limit, allow_negative_numbers = true)]
    pub events_per_second: Option<i64>,
    /// TimeSeries event bytes written per second
    #[arg(long, value_name = "N", value_parser = parse_limit, allow_negative_numbers = true)]
    pub event_bytes_per_second: Option<i64>,
    /// TimeSeries tails open at once
    #[arg(long, value_name = "N", value_parser = parse_limit, allow_negative_numbers = true)]
    pub open_tails: Option<i64>,
    /// Partitions a namespace may ask for
    #[arg(long, value_name = "N", value_parser = parse_limit, allow_negative_numbers = true)]
    pub max_partitions: Option<i64>,
    /// Longest TimeSeries retention a namespace may ask for, in seconds
    #[arg(long, value_name = "N", value_parser = parse_limit, allow_negative_numbers = true)]
    pub max_retention_seconds: Option<i64>,
}

impl NamespaceQuotaArgs {
    pub fn to_quotas(&self, current: Option<&QuotaSet>) -> Option<QuotaSet> {
        quota_set(
            self.profile,
            [
                (|q| &mut q.requests_per_second, self.requests_per_second),
                (|q| &mut q.read_bytes_per_second, self.read_bytes_per_second),
                (|q| &mut q.write_bytes_per_second, self.write_bytes_per_second),
                (|q| &mut q.storage_bytes, self.storage_bytes),
                (|q| &mut q.concurrent_requests, self.concurrent_requests),
                (|q| &mut q.max_namespaces, None),
                (|q| &mut q.max_item_size_bytes, self.quota_max_item_size_bytes),
                (|q| &mut q.events_per_second, self.events_per_second),
                (|q| &mut q.event_bytes_per_second, self.event_bytes_per_second),
                (|q| &mut q.open_tails, self.open_tails),
                (|q| &mut q.max_partitions, self.max_partitions),
                (|q| &mut q.max_retention_seconds, self.max_retention_seconds),
            ],
            current,
        )
    }
}

/// Paging flags of list commands.
#[derive(Debug, Clone, Default, Args)]
pub struct PageArgs {
    /// Results per page (default 100, at most 1000)
    #[arg(long, value_name = "N")]
    pub page_size: Option<u32>,
    /// Fetch every page, not only the first
    #[arg(long)]
    pub all_pages: bool,
}

/// Fetches the first page, or every page with `all`: `fetch` gets a page
/// token and returns a page and the next token. Returns the items and the
/// token of the page after the last one fetched (empty at the end).
pub async fn pages<T, F, Fut>(all: bool, mut fetch: F) -> anyhow::Result<(Vec<T>, String)>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<(Vec<T>, String)>>,
{
    let mut items = Vec::new();
    let mut token = String::new();
    loop {
        let (mut page, next) = fetch(token.clone()).await?;
        items.append(&mut page);
        if !all || next.is_empty() {
            return Ok((items, next));
        }
        if next == token {
            anyhow::bail!("the server returned the same page token twice");
        }
        token = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_limits_grants_and_durations() {
        assert_eq!(parse_limit("unlimited"), Ok(-1));
        assert_eq!(parse_limit("-1"), Ok(-1));
        assert_eq!(parse_limit("5"), Ok(5));
        assert!(parse_limit("-2").is_err());
        let g = parse_grant("svc=a=read-write").expect("valid grant");
        assert_eq!((g.principal.as_str(), g.level), ("svc=a", AccessLevel::ReadWrite as i32));
        assert!(parse_grant("svc").is_err());
        assert!(parse_grant("svc=write").is_err());
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn quota_flags_keep_what_was_not_given() {
        let none = TenantQuotaArgs::default();
        assert_eq!(none.to_quotas(None), None);
        let current = prism_proto::quotas::profile(QuotaProfile::Pro);
        let rps = TenantQuotaArgs { requests_per_second: Some(7), ..TenantQuotaArgs::default() };
        let q = rps.to_quotas(Some(&current)).expect("changed");
        assert_eq!(q.requests_per_second, Some(7));
        assert_eq!(q.max_namespaces, current.max_namespaces);
        let free = TenantQuotaArgs { profile: Some(ProfileArg::Free), ..rps };
        let q = free.to_quotas(Some(&current)).expect("changed");
        assert_eq!(q.profile, QuotaProfile::Free as i32);
        assert_eq!((q.requests_per_second, q.max_namespaces), (Some(7), None));
    }
}
