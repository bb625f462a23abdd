//! Settings of the embedded backend: where its file lives, when values are
//! chunked, and how long it remembers deletes and idempotency tokens.
//! Parsing has no side effects; `validate` names the wrong field.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::error::{EmbeddedError, Result};

/// Smallest and largest chunk threshold: small enough to test chunking
/// cheaply, at most a quarter of redb's largest value.
const CHUNK_THRESHOLD: std::ops::RangeInclusive<u64> = 1024..=(256 << 20);

/// Shortest and longest retention of tombstones and tokens.
const RETENTION: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(10 * 365 * 24 * 60 * 60);

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct EmbeddedConfig {
    /// Directory of the store (created if missing); the data is the file
    /// `embedded.redb` in it. Default `./prism-data/embedded`.
    pub data_dir: PathBuf,
    /// Values longer than this many bytes are stored as chunks of this
    /// size. Default 1 MiB (1 048 576). Range 1 KiB..=256 MiB.
    pub chunk_threshold_bytes: u64,
    /// How long a delete is remembered, so that an older write arriving
    /// later still loses to it: point and range tombstones are reclaimed
    /// once their generation time is this far in the past. A humantime
    /// duration (`90s`, `1h`). Default `1h`. Range 1 s..=10 years.
    #[serde(deserialize_with = "humantime_duration")]
    pub tombstone_retention: Duration,
    /// How long an applied idempotency token is remembered, so that a retry
    /// is a no-op: from when it was applied (or its generation time, if
    /// later). A humantime duration. Default `24h`. Range 1 s..=10 years.
    #[serde(deserialize_with = "humantime_duration")]
    pub token_retention: Duration,
    /// Reads (get, scan) running at once on the blocking thread pool; more
    /// wait their turn. Writes need no such bound: redb runs one write
    /// transaction at a time, so they wait asynchronously, one running.
    /// Default 64. Range 1..=1024.
    pub max_concurrent_reads: usize,
    /// Bytes of redb's page cache: the pages read or written last, kept in
    /// memory. Resident memory grows with the data until it is full.
    /// Default 256 MiB. Range 1 MiB..=1 TiB.
    pub cache_bytes: u64,
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        Self::new("prism-data/embedded")
    }
}

impl EmbeddedConfig {
    /// The default settings with the store in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            chunk_threshold_bytes: 1 << 20,
            tombstone_retention: Duration::from_secs(60 * 60),
            token_retention: Duration::from_secs(24 * 60 * 60),
            max_concurrent_reads: 64,
            cache_bytes: 256 << 20,
        }
    }

    /// Checks every field; the error names the first wrong one.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, description: String| EmbeddedError::Config { field: field.into(), description };
        if self.data_dir.as_os_str().is_empty() {
            return Err(bad("data_dir", "must not be empty".into()));
        }
        if !CHUNK_THRESHOLD.contains(&self.chunk_threshold_bytes) {
            return Err(bad(
                "chunk_threshold_bytes",
                format!(
                    "{} is outside {}..={}",
                    self.chunk_threshold_bytes,
                    CHUNK_THRESHOLD.start(),
                    CHUNK_THRESHOLD.end()
                ),
            ));
        }
        for (field, value) in
            [("tombstone_retention", self.tombstone_retention), ("token_retention", self.token_retention)]
        {
            if !RETENTION.contains(&value) {
                return Err(bad(field, format!("{} is outside 1s..=10 years", humantime::format_duration(value))));
            }
        }
        if !(1..=1024).contains(&self.max_concurrent_reads) {
            return Err(bad("max_concurrent_reads", format!("{} is outside 1..=1024", self.max_concurrent_reads)));
        }
        if !(1 << 20..=1 << 40).contains(&self.cache_bytes) {
            return Err(bad("cache_bytes", format!("{} is outside 1 MiB..=1 TiB", self.cache_bytes)));
        }
        Ok(())
    }
}

fn humantime_duration<'de, D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    humantime::parse_duration(&text).map_err(|e| serde::de::Error::custom(format!("{e} (examples: 90s, 15m, 1h, 7d)")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_defaults() {
        let c: EmbeddedConfig =
            toml::from_str("data_dir = \"/var/lib/prism\"\ntombstone_retention = \"2h 30m\"").expect("valid config");
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/prism"));
        assert_eq!(c.tombstone_retention, Duration::from_secs(9000));
        assert_eq!(c.token_retention, Duration::from_secs(86_400));
        assert_eq!(c.chunk_threshold_bytes, 1 << 20);
        c.validate().expect("valid");
        EmbeddedConfig::default().validate().expect("defaults are valid");
    }

    #[test]
    fn refuses_unknown_fields_and_bad_durations() {
        assert!(toml::from_str::<EmbeddedConfig>("data_dri = \"x\"").is_err());
        assert!(toml::from_str::<EmbeddedConfig>("token_retention = \"soon\"").is_err());
    }

    #[test]
    fn validate_names_the_field() {
        let field = |c: EmbeddedConfig| match c.validate() {
            Err(EmbeddedError::Config { field, .. }) => field,
            other => panic!("want a config error, got {other:?}"),
        };
        let base = EmbeddedConfig::new("/tmp/x");
        assert_eq!(field(EmbeddedConfig { data_dir: PathBuf::new(), ..base.clone() }), "data_dir");
        assert_eq!(field(EmbeddedConfig { chunk_threshold_bytes: 10, ..base.clone() }), "chunk_threshold_bytes");
        assert_eq!(
            field(EmbeddedConfig { tombstone_retention: Duration::ZERO, ..base.clone() }),
            "tombstone_retention"
        );
        assert_eq!(field(EmbeddedConfig { token_retention: Duration::MAX, ..base.clone() }), "token_retention");
        assert_eq!(field(EmbeddedConfig { max_concurrent_reads: 0, ..base.clone() }), "max_concurrent_reads");
        assert_eq!(field(EmbeddedConfig { cache_bytes: 4096, ..base }), "cache_bytes");
    }
}
