//! Namespace spec files (`prism namespace create --file spec.yaml`), in the
//! shape of ADR-006's "Namespace Configuration" with Prism's field names.
//! Unknown fields are errors that name the field; the file is converted to
//! the typed `NamespaceSpec` the control plane validates.
//!
//! ```yaml
//! namespace: acme/user-profiles   # optional; must match the CLI argument
//! abstraction: key-value          # key-value | time-series (keyvalue, timeseries)
//! backend: postgres               # a backend's name: embedded | postgres | kafka | pulsar
//! capacity: { estimated_read_rps: 5000, estimated_write_rps: 500, estimated_data_size_gb: 100 }
//! policies: { retention_days: null, consistency: strong, cache_enabled: true, cache_ttl_seconds: 300 }
//! access:
//!   owners: [ user-service-team ]
//!   consumers:
//!     - { principal: user-api, access: read-write }
//! quotas: { profile: pro, requests_per_second: 1000 }
//! placement: { pinned_shard: shard-1, dedicated: false }
//! backend_config:
//!   postgres: { dsn: "postgres://prism@prod-postgres-1/prism", password_ref: "env:PG_PASSWORD", pool_size: 20 }
//! ```

use std::path::Path;
use std::time::Duration;

use prism_proto::control::{
    Abstraction, AccessLevel, Backend, Capacity, Consistency, Grant, NamespaceSpec, Placement, Policies, QuotaProfile,
    QuotaSet,
};
use serde::Deserialize;

pub use crate::backend_settings::{BackendConfigFile, BackendName};
use crate::error::usage;
use crate::flags::proto_duration;

/// Bytes in one `estimated_data_size_gb` (a GiB).
pub const BYTES_PER_GB: f64 = (1u64 << 30) as f64;
/// Largest spec file read, in bytes (a spec is a few hundred bytes).
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// The format of a spec file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// YAML; also parses JSON, which is YAML.
    Yaml,
    Json,
}

impl Format {
    /// By extension: `.yaml`/`.yml` or `.json`.
    pub fn of_path(path: &Path) -> anyhow::Result<Self> {
        match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("yaml" | "yml") => Ok(Self::Yaml),
            Some("json") => Ok(Self::Json),
            _ => Err(usage(format!("{}: a spec file must end in .yaml, .yml or .json", path.display()))),
        }
    }
}

/// A namespace spec file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecFile {
    /// `tenant/name`. Optional; when the command also names the namespace
    /// the two must be equal.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Data model. Required.
    pub abstraction: AbstractionName,
    /// Storage backend. Required.
    pub backend: BackendName,
    #[serde(default)]
    pub capacity: Option<CapacityFile>,
    #[serde(default)]
    pub policies: Option<PoliciesFile>,
    #[serde(default)]
    pub access: Option<AccessFile>,
    #[serde(default)]
    pub quotas: Option<QuotasFile>,
    #[serde(default)]
    pub placement: Option<PlacementFile>,
    /// Settings of the backend: a map with one key, the backend's name
    /// (see [`BackendConfigFile`]).
    #[serde(default)]
    pub backend_config: Option<BackendConfigFile>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum AbstractionName {
    #[serde(rename = "key-value", alias = "keyvalue", alias = "key_value", alias = "KEY_VALUE")]
    KeyValue,
    #[serde(rename = "time-series", alias = "timeseries", alias = "time_series", alias = "TIME_SERIES")]
    TimeSeries,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapacityFile {
    #[serde(default)]
    pub estimated_read_rps: u64,
    #[serde(default)]
    pub estimated_write_rps: u64,
    /// In GiB (2^30 bytes); may be fractional.
    #[serde(default)]
    pub estimated_data_size_gb: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConsistencyName {
    Eventual,
    Strong,
}

/// Every field is optional; unset fields keep the server's defaults.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoliciesFile {
    /// Days data is kept; `null` or 0 = forever.
    pub retention_days: Option<u64>,
    /// Default strong.
    pub consistency: Option<ConsistencyName>,
    /// Serve KeyValue reads from the gateway cache. Default false.
    pub cache_enabled: Option<bool>,
    /// Lifetime of a cached read, seconds. Default 60, at most 86400.
    pub cache_ttl_seconds: Option<u64>,
    /// TTL of items written without one, seconds; 0 = no expiry.
    pub default_item_ttl_seconds: Option<u64>,
    /// Largest item/event in bytes; 0 = default (1 MiB).
    pub max_item_size_bytes: Option<i64>,
    /// TimeSeries: events older than this many seconds are refused.
    /// Default 3600.
    pub accept_limit_seconds: Option<u64>,
    /// TimeSeries: acknowledged events may be lost (allows buffered writes).
    pub accept_loss: Option<bool>,
    /// Fraction (0 to 1) of successful data requests written to the audit
    /// log. Default 0.
    pub data_access_audit_rate: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessFile {
    /// Principals that administer, read and write.
    #[serde(default)]
    pub owners: Vec<String>,
    #[serde(default)]
    pub consumers: Vec<ConsumerFile>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerFile {
    pub principal: String,
    pub access: AccessName,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum AccessName {
    #[serde(rename = "read", alias = "read-only", alias = "readonly", alias = "READ")]
    Read,
    #[serde(rename = "read-write", alias = "readwrite", alias = "read_write", alias = "READ_WRITE")]
    ReadWrite,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProfileName {
    Free,
    Pro,
    Enterprise,
    Custom,
}

/// Quotas; -1 = unlimited; unset fields come from the profile.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotasFile {
    pub profile: Option<ProfileName>,
    pub requests_per_second: Option<i64>,
    pub read_bytes_per_second: Option<i64>,
    pub write_bytes_per_second: Option<i64>,
    pub storage_bytes: Option<i64>,
    pub concurrent_requests: Option<i64>,
    pub max_item_size_bytes: Option<i64>,
    /// TimeSeries events written per second.
    pub events_per_second: Option<i64>,
    /// TimeSeries event bytes written per second.
    pub event_bytes_per_second: Option<i64>,
    /// TimeSeries tails open at once.
    pub open_tails: Option<i64>,
    /// Partitions the namespace may ask for.
    pub max_partitions: Option<i64>,
    /// Longest TimeSeries retention, in seconds.
    pub max_retention_seconds: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlacementFile {
    /// Pin to this shard instead of the hash-chosen one.
    pub pinned_shard: Option<String>,
    /// The pinned shard serves this namespace only (default false).
    pub dedicated: Option<bool>,
}

/// Parses a spec file's text. Errors are usage errors naming the field
/// (and, where the parser knows it, the line).
pub fn parse(text: &str, format: Format) -> anyhow::Result<SpecFile> {
    match format {
        Format::Yaml => serde_yaml::from_str(text).map_err(|e| usage(e.to_string())),
        Format::Json => serde_json::from_str(text).map_err(|e| usage(e.to_string())),
    }
}

/// Reads and parses `path`, or standard input (as YAML) when it is `-`.
pub fn read(path: &Path) -> anyhow::Result<SpecFile> {
    use std::io::Read;
    let (format, reader): (_, Box<dyn Read>) = if path == Path::new("-") {
        (Format::Yaml, Box::new(std::io::stdin().lock()))
    } else {
        let format = Format::of_path(path)?;
        let file = std::fs::File::open(path).map_err(|e| usage(format!("cannot read {}: {e}", path.display())))?;
        (format, Box::new(file))
    };
    let mut text = String::new();
    reader
        .take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| usage(format!("cannot read {}: {e}", path.display())))?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(usage(format!("{} is larger than {MAX_FILE_BYTES} bytes", path.display())));
    }
    parse(&text, format).map_err(|e| e.context(format!("{}", path.display())))
}

/// The namespace to act on: the command's argument and the file's
/// `namespace`, which must agree when both are given.
pub fn namespace_name(argument: Option<&str>, file: Option<&SpecFile>) -> anyhow::Result<String> {
    match (argument, file.and_then(|f| f.namespace.as_deref())) {
        (Some(a), Some(f)) if a != f => {
            Err(usage(format!("the spec file is for namespace {f:?} but the command names {a:?}")))
        }
        (Some(name), _) | (None, Some(name)) => Ok(name.to_owned()),
        (None, None) => Err(usage("name the namespace (tenant/name) as an argument or as `namespace:` in the file")),
    }
}

fn seconds(s: u64) -> prost_types::Duration {
    proto_duration(Duration::from_secs(s))
}

impl SpecFile {
    /// The typed spec. Fails only on values no spec can hold (a negative
    /// or non-finite data size); the control plane checks the rest.
    pub fn to_spec(&self) -> anyhow::Result<NamespaceSpec> {
        let abstraction = match self.abstraction {
            AbstractionName::KeyValue => Abstraction::KeyValue,
            AbstractionName::TimeSeries => Abstraction::TimeSeries,
        };
        let backend = Backend::from(self.backend);
        let capacity = self.capacity.as_ref().map(CapacityFile::to_proto).transpose()?.map(Box::new);
        Ok(NamespaceSpec {
            abstraction: abstraction as i32,
            backend: backend as i32,
            backend_config: match &self.backend_config {
                Some(c) => c.to_proto()?.map(Box::new),
                None => None,
            },
            capacity,
            policies: self.policies.as_ref().map(PoliciesFile::to_proto).map(Box::new),
            access: self.access.as_ref().map(|a| {
                Box::new(prism_proto::control::Access {
                    owners: a.owners.clone(),
                    consumers: a
                        .consumers
                        .iter()
                        .map(|c| Grant {
                            principal: c.principal.clone(),
                            level: match c.access {
                                AccessName::Read => AccessLevel::Read,
                                AccessName::ReadWrite => AccessLevel::ReadWrite,
                            } as i32,
                        })
                        .collect(),
                })
            }),
            quotas: self.quotas.as_ref().map(QuotasFile::to_proto),
            placement: self.placement.as_ref().map(|p| {
                Box::new(Placement {
                    pinned_shard: p.pinned_shard.clone().unwrap_or_default(),
                    dedicated: p.dedicated.unwrap_or_default(),
                })
            }),
        })
    }
}

impl CapacityFile {
    fn to_proto(&self) -> anyhow::Result<Capacity> {
        let gb = self.estimated_data_size_gb;
        let bytes = gb * BYTES_PER_GB;
        if !bytes.is_finite() || bytes < 0.0 || bytes >= u64::MAX as f64 {
            return Err(usage(format!("capacity.estimated_data_size_gb: {gb} is not a size in GiB")));
        }
        Ok(Capacity {
            estimated_read_rps: self.estimated_read_rps,
            estimated_write_rps: self.estimated_write_rps,
            // In range and non-negative (checked above).
            estimated_data_size_bytes: bytes.round() as u64,
        })
    }
}

impl PoliciesFile {
    fn to_proto(&self) -> Policies {
        Policies {
            retention: self.retention_days.map(|d| seconds(d.saturating_mul(86_400))),
            consistency: match self.consistency {
                None => Consistency::Unspecified,
                Some(ConsistencyName::Eventual) => Consistency::Eventual,
                Some(ConsistencyName::Strong) => Consistency::Strong,
            } as i32,
            cache_enabled: self.cache_enabled.unwrap_or(false),
            cache_ttl: self.cache_ttl_seconds.map(seconds),
            default_item_ttl: self.default_item_ttl_seconds.map(seconds),
            max_item_size_bytes: self.max_item_size_bytes.unwrap_or(0),
            accept_limit: self.accept_limit_seconds.map(seconds),
            accept_loss: self.accept_loss.unwrap_or(false),
            data_access_audit_rate: self.data_access_audit_rate.unwrap_or(0.0),
        }
    }
}

impl QuotasFile {
    fn to_proto(&self) -> QuotaSet {
        QuotaSet {
            profile: match self.profile {
                None | Some(ProfileName::Custom) => QuotaProfile::Custom,
                Some(ProfileName::Free) => QuotaProfile::Free,
                Some(ProfileName::Pro) => QuotaProfile::Pro,
                Some(ProfileName::Enterprise) => QuotaProfile::Enterprise,
            } as i32,
            requests_per_second: self.requests_per_second,
            read_bytes_per_second: self.read_bytes_per_second,
            write_bytes_per_second: self.write_bytes_per_second,
            storage_bytes: self.storage_bytes,
            concurrent_requests: self.concurrent_requests,
            max_namespaces: None,
            max_item_size_bytes: self.max_item_size_bytes,
            events_per_second: self.events_per_second,
            event_bytes_per_second: self.event_bytes_per_second,
            open_tails: self.open_tails,
            max_partitions: self.max_partitions,
            max_retention_seconds: self.max_retention_seconds,
        }
    }
}
