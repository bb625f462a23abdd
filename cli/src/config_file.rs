//! The `prism` configuration file: one TOML file with a `[control_plane]`
//! and a `[gateway]` table (either may be absent). Values from it are
//! overridden by environment variables and then flags, and only then
//! validated, so a flag can mend a bad file value.

use std::path::Path;

use prism_control_plane::ControlPlaneConfig;
use prism_gateway::GatewayConfig;
use serde::Deserialize;

use crate::error::usage;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub control_plane: Option<ControlPlaneConfig>,
    #[serde(default)]
    pub gateway: Option<GatewayConfig>,
}

impl ConfigFile {
    /// Reads `path`, or the defaults when there is none.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        let Some(path) = path else { return Ok(Self::default()) };
        let text = std::fs::read_to_string(path).map_err(|e| usage(format!("cannot read {}: {e}", path.display())))?;
        Self::parse(&text).map_err(|e| usage(format!("{}: {e}", path.display())))
    }

    pub fn parse(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_optional_and_unknown_keys_are_named() {
        let c = ConfigFile::parse("[control_plane]\nshards = [\"a\"]\n[gateway]\nshard_id = \"a\"\n").expect("valid");
        assert_eq!(c.control_plane.map(|c| c.shards), Some(vec!["a".to_owned()]));
        assert_eq!(c.gateway.map(|g| g.shard_id), Some("a".to_owned()));
        assert!(ConfigFile::parse("").expect("empty").gateway.is_none());
        let e = ConfigFile::parse("[gateway]\nshard = \"a\"\n").expect_err("unknown");
        assert!(e.to_string().contains("unknown field `shard`"), "{e}");
        let e = ConfigFile::parse("[gatway]\n").expect_err("unknown table");
        assert!(e.to_string().contains("gatway"), "{e}");
    }
}
