//! Control-plane configuration: a TOML table (`[control_plane]` in the
//! `prism` config file), overridden by environment and flags in the CLI.
//! Parsing has no side effects; `validate` names the wrong field.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::error::{ControlPlaneError, Result};

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ControlPlaneConfig {
    /// Directory of the embedded metadata store (created if missing).
    /// Default: `./prism-data/control-plane`.
    pub data_dir: PathBuf,
    /// Shard ids new namespaces are assigned to, by rendezvous hashing,
    /// until gateways register their shards. Default: none (namespaces wait
    /// in PROVISIONING for a shard).
    pub shards: Vec<String>,
    /// Gateway endpoints (`host:port`) of each static shard, answered by
    /// `ResolveNamespace` until gateways register themselves. Keys must be
    /// listed in `shards`. Default: none.
    pub shard_endpoints: BTreeMap<String, Vec<String>>,
    /// Deltas buffered for each watcher; a watcher further behind is cut
    /// off and resumes from its revision. Default: 1024. Range 1..=1 000 000.
    pub watch_buffer: usize,
    /// Revisions kept in the change log, so a reconnecting watcher can
    /// resume without a full snapshot. Default: 100 000. At least 1.
    pub change_log_retention: u64,
}

impl Default for ControlPlaneConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("prism-data/control-plane"),
            shards: Vec::new(),
            shard_endpoints: BTreeMap::new(),
            watch_buffer: 1024,
            change_log_retention: 100_000,
        }
    }
}

impl ControlPlaneConfig {
    /// Parses a TOML document holding these fields.
    pub fn from_toml(text: &str) -> Result<Self> {
        let config: Self = toml::from_str(text).map_err(|e| ControlPlaneError::Config {
            field: e.span().map(|s| format!("bytes {}..{}", s.start, s.end)).unwrap_or_default(),
            description: e.message().to_owned(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every field; the error names the first wrong one.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, description: String| ControlPlaneError::Config { field: field.into(), description };
        if self.data_dir.as_os_str().is_empty() {
            return Err(bad("data_dir", "must not be empty".into()));
        }
        for (i, shard) in self.shards.iter().enumerate() {
            prism_proto::names::validate_part(shard).map_err(|e| bad(&format!("shards[{i}]"), e.to_string()))?;
            if self.shards[..i].contains(shard) {
                return Err(bad(&format!("shards[{i}]"), format!("{shard:?} is listed twice")));
            }
        }
        for (shard, endpoints) in &self.shard_endpoints {
            if !self.shards.contains(shard) {
                return Err(bad(&format!("shard_endpoints.{shard}"), "names a shard not listed in shards".into()));
            }
            for (i, e) in endpoints.iter().enumerate() {
                let port_ok =
                    e.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
                if !port_ok {
                    return Err(bad(&format!("shard_endpoints.{shard}[{i}]"), format!("{e:?} is not host:port")));
                }
            }
        }
        if !(1..=1_000_000).contains(&self.watch_buffer) {
            return Err(bad("watch_buffer", format!("{} is outside 1..=1000000", self.watch_buffer)));
        }
        if self.change_log_retention == 0 {
            return Err(bad("change_log_retention", "must be at least 1".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_defaults() {
        let c = ControlPlaneConfig::from_toml("shards = [\"a\", \"b\"]").expect("valid");
        assert_eq!(c.shards, ["a", "b"]);
        assert_eq!(c.watch_buffer, 1024);
    }

    #[test]
    fn names_the_wrong_field() {
        let e = ControlPlaneConfig::from_toml("shard = []").expect_err("unknown field");
        assert!(e.to_string().contains("unknown field `shard`"), "{e}");
        let e = ControlPlaneConfig::from_toml("shards = [\"ok\", \"Bad\"]").expect_err("bad shard");
        assert!(e.to_string().contains("shards[1]"), "{e}");
        let e = ControlPlaneConfig::from_toml("watch_buffer = 0").expect_err("zero");
        assert!(e.to_string().contains("watch_buffer"), "{e}");
    }
}
