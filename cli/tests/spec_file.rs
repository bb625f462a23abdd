//! Spec files: ADR-006-shaped YAML and JSON become the typed
//! `NamespaceSpec`; unknown fields are errors naming the field.

use std::path::Path;

use prism_cli::error::{EXIT_USAGE, exit_code};
use prism_cli::spec_file::{self, Format, namespace_name, parse};
use prism_proto::control::{
    Abstraction, Access, AccessLevel, Backend, BackendConfig, Capacity, Consistency, Grant, NamespaceSpec, Placement,
    Policies, PostgresConfig, QuotaProfile, QuotaSet, backend_config,
};

const ADR_006_YAML: &str = r#"
namespace: acme/user-profiles
abstraction: keyvalue
backend: postgres
capacity:
  estimated_read_rps: 5000
  estimated_write_rps: 500
  estimated_data_size_gb: 100
policies:
  retention_days: null  # keep forever
  consistency: strong
  cache_enabled: true
  cache_ttl_seconds: 300
  default_item_ttl_seconds: 0
  max_item_size_bytes: 0
  accept_limit_seconds: 3600
  accept_loss: false
  data_access_audit_rate: 0.01
access:
  owners: [ user-service-team ]
  consumers:
    - { principal: user-api, access: read-write }
    - { principal: analytics-pipeline, access: read }
quotas: { profile: pro, requests_per_second: 1000 }
placement: { pinned_shard: shard-1 }
backend_config:
  postgres: { dsn: "postgres://prism@prod-postgres-1/prism", password_ref: "secret:pg-acme", pool_size: 20, schema: public }
"#;

fn seconds(s: i64) -> prost_types::Duration {
    prost_types::Duration { seconds: s, nanos: 0 }
}

fn expected() -> NamespaceSpec {
    NamespaceSpec {
        abstraction: Abstraction::KeyValue as i32,
        backend: Backend::Postgres as i32,
        backend_config: Some(Box::new(BackendConfig {
            config: Some(backend_config::Config::Postgres(PostgresConfig {
                dsn: "postgres://prism@prod-postgres-1/prism".into(),
                pool_size: 20,
                schema: "public".into(),
                require_tls: false,
                password_ref: "secret:pg-acme".into(),
            })),
        })),
        capacity: Some(Box::new(Capacity {
            estimated_read_rps: 5000,
            estimated_write_rps: 500,
            estimated_data_size_bytes: 100 << 30,
        })),
        policies: Some(Box::new(Policies {
            retention: None,
            consistency: Consistency::Strong as i32,
            cache_enabled: true,
            cache_ttl: Some(seconds(300)),
            default_item_ttl: Some(seconds(0)),
            max_item_size_bytes: 0,
            accept_limit: Some(seconds(3600)),
            accept_loss: false,
            data_access_audit_rate: 0.01,
        })),
        access: Some(Box::new(Access {
            owners: vec!["user-service-team".into()],
            consumers: vec![
                Grant { principal: "user-api".into(), level: AccessLevel::ReadWrite as i32 },
                Grant { principal: "analytics-pipeline".into(), level: AccessLevel::Read as i32 },
            ],
        })),
        quotas: Some(QuotaSet {
            profile: QuotaProfile::Pro as i32,
            requests_per_second: Some(1000),
            ..QuotaSet::default()
        }),
        placement: Some(Box::new(Placement { pinned_shard: "shard-1".into(), ..Default::default() })),
    }
}

#[test]
fn adr_006_shaped_yaml_becomes_the_typed_spec() -> anyhow::Result<()> {
    let file = parse(ADR_006_YAML, Format::Yaml)?;
    assert_eq!(file.namespace.as_deref(), Some("acme/user-profiles"));
    assert_eq!(file.to_spec()?, expected());
    Ok(())
}

#[test]
fn json_specs_parse_as_json_and_as_yaml() -> anyhow::Result<()> {
    let json = r#"{
        "abstraction": "time-series",
        "backend": "kafka",
        "policies": { "retention_days": 7, "accept_limit_seconds": 600, "accept_loss": true, "consistency": "eventual" },
        "backend_config": { "kafka": { "bootstrap_servers": ["broker-1:9092", "broker-2:9092"], "partitions": 6 } }
    }"#;
    for format in [Format::Json, Format::Yaml] {
        let spec = parse(json, format)?.to_spec()?;
        assert_eq!(spec.abstraction, Abstraction::TimeSeries as i32);
        assert_eq!(spec.backend, Backend::Kafka as i32);
        let p = spec.policies.expect("policies");
        assert_eq!(p.retention, Some(seconds(7 * 86_400)));
        assert_eq!(p.accept_limit, Some(seconds(600)));
        assert!(p.accept_loss);
        assert_eq!(p.consistency, Consistency::Eventual as i32);
        let Some(backend_config::Config::Kafka(k)) = spec.backend_config.and_then(|c| c.config) else {
            anyhow::bail!("expected kafka settings");
        };
        assert_eq!(k.bootstrap_servers, ["broker-1:9092", "broker-2:9092"]);
        assert_eq!(k.partitions, 6);
    }
    Ok(())
}

#[test]
fn unknown_fields_are_usage_errors_naming_the_field() {
    let cases = [
        // A typo at the top level, in a section, and ADR-006 names we do not use.
        ("abstraction: key-value\nbackend: embedded\ncapacty: {}\n", "capacty"),
        ("abstraction: key-value\nbackend: embedded\npolicies: { cache_tll_seconds: 5 }\n", "cache_tll_seconds"),
        (
            "abstraction: key-value\nbackend: postgres\nbackend_config:\n  postgres: { connection_string: x }\n",
            "connection_string",
        ),
        (
            "abstraction: key-value\nbackend: postgres\nbackend_config:\n  postgres: { dsn: x, table_name: t }\n",
            "table_name",
        ),
        ("abstraction: key-value\nbackend: embedded\naccess:\n  owners:\n    - team: x\n", "owners"),
        ("abstraction: key-value\nbackend: mysql\n", "mysql"),
    ];
    for (yaml, field) in cases {
        let err = parse(yaml, Format::Yaml).expect_err(field);
        assert!(err.to_string().contains(field), "{field}: {err}");
        assert_eq!(exit_code(&err), EXIT_USAGE);
    }
    let err =
        parse(r#"{"abstraction": "key-value", "backend": "embedded", "extra": 1}"#, Format::Json).expect_err("json");
    assert!(err.to_string().contains("extra"), "{err}");
    let err = parse("backend: embedded\n", Format::Yaml).expect_err("abstraction is required");
    assert!(err.to_string().contains("abstraction"), "{err}");
}

#[test]
fn names_and_formats_are_checked() -> anyhow::Result<()> {
    let file = parse(ADR_006_YAML, Format::Yaml)?;
    assert_eq!(namespace_name(None, Some(&file))?, "acme/user-profiles");
    assert_eq!(namespace_name(Some("acme/user-profiles"), Some(&file))?, "acme/user-profiles");
    let err = namespace_name(Some("acme/other"), Some(&file)).expect_err("mismatch");
    assert!(err.to_string().contains("acme/other"), "{err}");
    assert!(namespace_name(None, None).is_err());
    assert_eq!(Format::of_path(Path::new("ns.yml"))?, Format::Yaml);
    assert_eq!(Format::of_path(Path::new("ns.JSON"))?, Format::Json);
    assert!(Format::of_path(Path::new("ns.toml")).is_err());
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("ns.yaml");
    std::fs::write(&path, ADR_006_YAML)?;
    assert_eq!(spec_file::read(&path)?.to_spec()?, expected());
    Ok(())
}

#[test]
fn a_placement_may_dedicate_its_shard() -> anyhow::Result<()> {
    let placement = |text: &str| -> anyhow::Result<Option<Placement>> {
        let spec = parse(&format!("abstraction: key-value\nbackend: embedded\n{text}"), Format::Yaml)?.to_spec()?;
        Ok(spec.placement.map(|p| *p))
    };
    let dedicated = placement("placement: { pinned_shard: shard-1, dedicated: true }")?;
    assert_eq!(dedicated, Some(Placement { pinned_shard: "shard-1".into(), dedicated: true }));
    // Unsaid is shared.
    let shared = placement("placement: { pinned_shard: shard-1 }")?;
    assert_eq!(shared, Some(Placement { pinned_shard: "shard-1".into(), dedicated: false }));
    Ok(())
}
