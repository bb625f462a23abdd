//! A namespace spec from command-line flags: `create` builds one from
//! them, `update` applies only the flags given to the current spec.

use std::time::Duration;

use clap::{Args, ValueEnum};
use prism_proto::control::{Abstraction, Backend, Consistency, Grant, NamespaceSpec, Placement};

pub use crate::backend_settings::{BackendArgs, BackendName as BackendArg};
use crate::error::usage;
use crate::flags::{NamespaceQuotaArgs, parse_duration, parse_grant, proto_duration};
use crate::spec_file::BYTES_PER_GB;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AbstractionArg {
    #[value(alias = "keyvalue")]
    KeyValue,
    #[value(alias = "timeseries")]
    TimeSeries,
}

impl From<AbstractionArg> for Abstraction {
    fn from(a: AbstractionArg) -> Self {
        match a {
            AbstractionArg::KeyValue => Self::KeyValue,
            AbstractionArg::TimeSeries => Self::TimeSeries,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ConsistencyArg {
    Eventual,
    Strong,
}

/// Every flag of a namespace spec. All optional: on `update` only the
/// ones given change the stored spec.
#[derive(Debug, Clone, Default, PartialEq, Args)]
pub struct SpecArgs {
    /// Data model (immutable after creation)
    #[arg(long, value_enum)]
    pub abstraction: Option<AbstractionArg>,
    /// Storage backend (immutable after creation; default embedded on create)
    #[arg(long, value_enum)]
    pub backend: Option<BackendArg>,

    /// Each backend's settings (`--dsn`, `--bootstrap-server`, …), as the
    /// backends' descriptions say.
    #[command(flatten)]
    pub backend_config: BackendArgs,

    /// Estimated reads per second
    #[arg(long, value_name = "N", help_heading = "Capacity")]
    pub estimated_read_rps: Option<u64>,
    /// Estimated writes per second
    #[arg(long, value_name = "N", help_heading = "Capacity")]
    pub estimated_write_rps: Option<u64>,
    /// Estimated data size in GiB
    #[arg(long, value_name = "GB", help_heading = "Capacity")]
    pub estimated_data_size_gb: Option<f64>,

    /// Serve KeyValue reads from the gateway cache (`--cache=false` to turn off)
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", help_heading = "Policies")]
    pub cache: Option<bool>,
    /// Lifetime of a cached read, e.g. 60s (at most 1 day)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, help_heading = "Policies")]
    pub cache_ttl: Option<Duration>,
    /// How long data is kept, e.g. 7d (0s = forever)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, help_heading = "Policies")]
    pub retention: Option<Duration>,
    /// TTL of items written without one, e.g. 1h (0s = no expiry)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, help_heading = "Policies")]
    pub default_item_ttl: Option<Duration>,
    /// Largest item or event in bytes (0 = default 1 MiB, at most 64 MiB)
    #[arg(long, value_name = "N", help_heading = "Policies")]
    pub max_item_size_bytes: Option<i64>,
    /// TimeSeries: refuse events older than this, e.g. 1h
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, help_heading = "Policies")]
    pub accept_limit: Option<Duration>,
    /// TimeSeries: tolerate losing acknowledged events (`--accept-loss=false` to turn off)
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", help_heading = "Policies")]
    pub accept_loss: Option<bool>,
    /// Read consistency
    #[arg(long, value_enum, help_heading = "Policies")]
    pub consistency: Option<ConsistencyArg>,
    /// Fraction of successful data requests written to the audit log, 0 to 1 (default 0: none)
    #[arg(long, value_name = "RATE", help_heading = "Policies")]
    pub data_access_audit_rate: Option<f64>,

    /// An owning principal (repeat for more; replaces the owners on update)
    #[arg(long = "owner", value_name = "PRINCIPAL", help_heading = "Access")]
    pub owners: Vec<String>,
    /// A consumer, PRINCIPAL=read|read-write (repeat for more; replaces the consumers on update)
    #[arg(long = "consumer", value_name = "PRINCIPAL=ACCESS", value_parser = parse_grant, help_heading = "Access")]
    pub consumers: Vec<Grant>,

    /// Pin the namespace to this shard instead of the hash-chosen one
    #[arg(long = "pin", value_name = "SHARD", help_heading = "Placement")]
    pub pinned_shard: Option<String>,
    /// Make the pinned shard serve this namespace only: no hashed namespace is assigned to it and no other may be pinned to it (`--dedicated=false` to share it again)
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", help_heading = "Placement")]
    pub dedicated: Option<bool>,

    #[command(flatten)]
    pub quotas: NamespaceQuotaArgs,
}

impl SpecArgs {
    /// A new spec from the flags; `--abstraction` is required, the backend
    /// defaults to embedded.
    pub fn to_new_spec(&self) -> anyhow::Result<NamespaceSpec> {
        if self.abstraction.is_none() {
            return Err(usage("--abstraction key-value|time-series is required (or use --file)"));
        }
        let mut spec = NamespaceSpec { backend: Backend::Embedded as i32, ..NamespaceSpec::default() };
        self.apply(&mut spec)?;
        Ok(spec)
    }

    /// Applies the flags given to `spec`, leaving everything else as is.
    pub fn apply(&self, spec: &mut NamespaceSpec) -> anyhow::Result<()> {
        if let Some(a) = self.abstraction {
            spec.abstraction = Abstraction::from(a) as i32;
        }
        if let Some(b) = self.backend {
            spec.backend = Backend::from(b) as i32;
        }
        self.backend_config.apply(spec)?;
        self.apply_capacity(spec)?;
        self.apply_policies(spec);
        if !self.owners.is_empty() {
            spec.access.get_or_insert_default().owners.clone_from(&self.owners);
        }
        if !self.consumers.is_empty() {
            spec.access.get_or_insert_default().consumers.clone_from(&self.consumers);
        }
        // Each flag changes its own field: `--pin` keeps a dedication,
        // `--dedicated` keeps the pin.
        if let Some(pin) = &self.pinned_shard {
            spec.placement.get_or_insert_with(|| Box::new(Placement::default())).pinned_shard.clone_from(pin);
        }
        if let Some(dedicated) = self.dedicated {
            spec.placement.get_or_insert_with(|| Box::new(Placement::default())).dedicated = dedicated;
        }
        if let Some(q) = self.quotas.to_quotas(spec.quotas.as_ref()) {
            spec.quotas = Some(q);
        }
        Ok(())
    }

    fn apply_capacity(&self, spec: &mut NamespaceSpec) -> anyhow::Result<()> {
        if self.estimated_read_rps.is_none()
            && self.estimated_write_rps.is_none()
            && self.estimated_data_size_gb.is_none()
        {
            return Ok(());
        }
        let c = spec.capacity.get_or_insert_default();
        if let Some(n) = self.estimated_read_rps {
            c.estimated_read_rps = n;
        }
        if let Some(n) = self.estimated_write_rps {
            c.estimated_write_rps = n;
        }
        if let Some(gb) = self.estimated_data_size_gb {
            let bytes = gb * BYTES_PER_GB;
            if !bytes.is_finite() || bytes < 0.0 || bytes >= u64::MAX as f64 {
                return Err(usage(format!("--estimated-data-size-gb {gb} is not a size in GiB")));
            }
            // In range and non-negative (checked above).
            c.estimated_data_size_bytes = bytes.round() as u64;
        }
        Ok(())
    }

    fn apply_policies(&self, spec: &mut NamespaceSpec) {
        let given = self.cache.is_some()
            || self.cache_ttl.is_some()
            || self.retention.is_some()
            || self.default_item_ttl.is_some()
            || self.max_item_size_bytes.is_some()
            || self.accept_limit.is_some()
            || self.accept_loss.is_some()
            || self.consistency.is_some()
            || self.data_access_audit_rate.is_some();
        if !given {
            return;
        }
        let p = spec.policies.get_or_insert_default();
        if let Some(on) = self.cache {
            p.cache_enabled = on;
        }
        if let Some(d) = self.cache_ttl {
            p.cache_ttl = Some(proto_duration(d));
        }
        if let Some(d) = self.retention {
            p.retention = Some(proto_duration(d));
        }
        if let Some(d) = self.default_item_ttl {
            p.default_item_ttl = Some(proto_duration(d));
        }
        if let Some(n) = self.max_item_size_bytes {
            p.max_item_size_bytes = n;
        }
        if let Some(d) = self.accept_limit {
            p.accept_limit = Some(proto_duration(d));
        }
        if let Some(on) = self.accept_loss {
            p.accept_loss = on;
        }
        if let Some(rate) = self.data_access_audit_rate {
            p.data_access_audit_rate = rate;
        }
        if let Some(c) = self.consistency {
            p.consistency = match c {
                ConsistencyArg::Eventual => Consistency::Eventual,
                ConsistencyArg::Strong => Consistency::Strong,
            } as i32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_needs_an_abstraction_and_defaults_to_embedded() {
        assert!(SpecArgs::default().to_new_spec().is_err());
        let args = SpecArgs { abstraction: Some(AbstractionArg::KeyValue), ..SpecArgs::default() };
        let spec = args.to_new_spec().expect("valid");
        assert_eq!(spec.backend, Backend::Embedded as i32);
        assert_eq!(spec.backend_config, None);
    }

    use prism_proto::control::PostgresConfig;
    use prism_proto::control::backend_config::Config;

    #[test]
    fn backend_flags_must_match_the_backend() {
        let backend_config = BackendArgs::default()
            .with("dsn", prism_proto::backends::Value::Text("postgres://db/prism".into()))
            .expect("--dsn is a flag");
        let args = SpecArgs { abstraction: Some(AbstractionArg::KeyValue), backend_config, ..SpecArgs::default() };
        let err = args.to_new_spec().expect_err("dsn on embedded");
        assert!(err.to_string().contains("--dsn"), "{err}");
        let args = SpecArgs { backend: Some(BackendArg(Backend::Postgres)), ..args };
        let spec = args.to_new_spec().expect("valid");
        assert!(matches!(
            spec.backend_config.and_then(|c| c.config),
            Some(Config::Postgres(PostgresConfig { ref dsn, .. })) if dsn == "postgres://db/prism"
        ));
    }

    #[test]
    fn update_changes_only_what_was_given() {
        let mut spec = SpecArgs {
            abstraction: Some(AbstractionArg::KeyValue),
            cache: Some(true),
            cache_ttl: Some(Duration::from_secs(60)),
            owners: vec!["team-a".into()],
            ..SpecArgs::default()
        }
        .to_new_spec()
        .expect("valid");
        let update = SpecArgs { cache_ttl: Some(Duration::from_secs(300)), ..SpecArgs::default() };
        update.apply(&mut spec).expect("valid");
        let p = spec.policies.expect("policies");
        assert!(p.cache_enabled);
        assert_eq!(p.cache_ttl, Some(prost_types::Duration { seconds: 300, nanos: 0 }));
        assert_eq!(spec.access.expect("access").owners, ["team-a"]);
    }
}
