//! Unit tests of every validation rule: each refusal must name the exact
//! field path a client wrote, and the boundary values just inside each
//! limit must pass.

use prism_proto::backends::postgres::MAX_DSN_LEN;
use prism_proto::control::backend_config::Config;
use prism_proto::control::{
    Access, BackendConfig, Grant, KafkaConfig, Placement, Policies, PostgresConfig, PulsarConfig,
};

use super::*;

/// The field a refusal names; panics (failing the test) on any other error.
fn field_of(result: Result<impl std::fmt::Debug>) -> String {
    match result {
        Err(ControlPlaneError::InvalidArgument { field, .. }) => field,
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    }
}

fn kv_embedded() -> NamespaceSpec {
    NamespaceSpec {
        abstraction: Abstraction::KeyValue as i32,
        backend: Backend::Embedded as i32,
        ..NamespaceSpec::default()
    }
}

fn ts(backend: Backend, config: Config) -> NamespaceSpec {
    NamespaceSpec {
        abstraction: Abstraction::TimeSeries as i32,
        backend: backend as i32,
        backend_config: Some(Box::new(BackendConfig { config: Some(config) })),
        ..NamespaceSpec::default()
    }
}

fn postgres_spec(config: PostgresConfig) -> NamespaceSpec {
    NamespaceSpec {
        abstraction: Abstraction::KeyValue as i32,
        backend: Backend::Postgres as i32,
        backend_config: Some(Box::new(BackendConfig { config: Some(Config::Postgres(config)) })),
        ..NamespaceSpec::default()
    }
}

fn kafka_spec(servers: &[&str]) -> NamespaceSpec {
    ts(
        Backend::Kafka,
        Config::Kafka(KafkaConfig {
            bootstrap_servers: servers.iter().map(|s| s.to_string()).collect(),
            ..KafkaConfig::default()
        }),
    )
}

fn pulsar_spec(url: &str) -> NamespaceSpec {
    ts(Backend::Pulsar, Config::Pulsar(PulsarConfig { service_url: url.into(), topic: String::new() }))
}

fn with_policies(mut spec: NamespaceSpec, policies: Policies) -> NamespaceSpec {
    spec.policies = Some(Box::new(policies));
    spec
}

fn secs(seconds: i64, nanos: i32) -> Option<prost_types::Duration> {
    Some(prost_types::Duration { seconds, nanos })
}

fn check(spec: &NamespaceSpec) -> Result<()> {
    namespace_spec(spec, &[])
}

#[test]
fn a_complete_valid_spec_passes() {
    let mut spec = kv_embedded();
    spec.policies = Some(Box::new(Policies {
        retention: secs(86_400 * 30, 0),
        consistency: Consistency::Eventual as i32,
        cache_enabled: true,
        cache_ttl: secs(MAX_CACHE_TTL_SECONDS, 0),
        default_item_ttl: secs(3600, 500),
        max_item_size_bytes: MAX_ITEM_SIZE,
        accept_limit: None,
        accept_loss: false,
        data_access_audit_rate: 0.25,
    }));
    spec.access = Some(Box::new(Access {
        owners: vec!["alice".into(), "svc:billing@acme".into()],
        consumers: vec![
            Grant { principal: "bob".into(), level: AccessLevel::Read as i32 },
            Grant { principal: "carol".into(), level: AccessLevel::ReadWrite as i32 },
        ],
    }));
    spec.quotas =
        Some(QuotaSet { requests_per_second: Some(UNLIMITED), storage_bytes: Some(0), ..QuotaSet::default() });
    spec.placement = Some(Box::new(Placement { pinned_shard: "shard-1".into(), ..Default::default() }));
    let shards = ["shard-0".to_owned(), "shard-1".to_owned()];
    namespace_spec(&spec, &shards).expect("valid spec");
    // Embedded may be given its (empty) settings explicitly too.
    spec.backend_config = Some(Box::new(BackendConfig { config: Some(Config::Embedded(Default::default())) }));
    namespace_spec(&spec, &shards).expect("explicit embedded settings");
}

#[test]
fn abstraction_and_backend_must_be_specified_and_known() {
    let mut spec = kv_embedded();
    spec.abstraction = Abstraction::Unspecified as i32;
    assert_eq!(field_of(check(&spec)), "spec.abstraction");
    spec.abstraction = 99;
    assert_eq!(field_of(check(&spec)), "spec.abstraction");

    let mut spec = kv_embedded();
    spec.backend = Backend::Unspecified as i32;
    assert_eq!(field_of(check(&spec)), "spec.backend");
    spec.backend = 99;
    assert_eq!(field_of(check(&spec)), "spec.backend");
}

#[test]
fn a_backend_must_serve_the_abstraction() {
    for spec in [kafka_spec(&["broker:9092"]), pulsar_spec("pulsar://broker:6650")] {
        let mut spec = spec;
        spec.abstraction = Abstraction::KeyValue as i32;
        let err = check(&spec).expect_err("stream backends cannot serve key-value");
        assert!(err.to_string().contains("cannot serve key-value"), "{err}");
        assert_eq!(field_of(Err::<(), _>(err)), "spec.backend");
    }
    // And the same backends do serve TIME_SERIES.
    check(&kafka_spec(&["broker:9092"])).expect("kafka serves time-series");
    check(&pulsar_spec("pulsar://broker:6650")).expect("pulsar serves time-series");
    let mut pg = postgres_spec(PostgresConfig { dsn: "postgres://db/x".into(), ..PostgresConfig::default() });
    pg.abstraction = Abstraction::TimeSeries as i32;
    check(&pg).expect("postgres serves time-series");
}

#[test]
fn backend_config_case_must_match_the_backend() {
    // Kafka settings on a postgres namespace.
    let mut spec = postgres_spec(PostgresConfig::default());
    spec.backend_config = Some(Box::new(BackendConfig {
        config: Some(Config::Kafka(KafkaConfig { bootstrap_servers: vec!["b:9092".into()], ..KafkaConfig::default() })),
    }));
    assert_eq!(field_of(check(&spec)), "spec.backend_config");
    // Postgres settings on an embedded namespace.
    let mut spec = kv_embedded();
    spec.backend_config = Some(Box::new(BackendConfig {
        config: Some(Config::Postgres(PostgresConfig { dsn: "postgres://db".into(), ..PostgresConfig::default() })),
    }));
    assert_eq!(field_of(check(&spec)), "spec.backend_config");
    // Pulsar settings on a kafka namespace.
    let mut spec = kafka_spec(&["b:9092"]);
    spec.backend_config = pulsar_spec("pulsar://b:6650").backend_config;
    assert_eq!(field_of(check(&spec)), "spec.backend_config");
}

#[test]
fn backends_with_required_settings_need_them() {
    let mut spec = postgres_spec(PostgresConfig::default());
    spec.backend_config = None;
    assert_eq!(field_of(check(&spec)), "spec.backend_config.postgres");
    // An empty oneof is the same as no settings.
    spec.backend_config = Some(Box::new(BackendConfig { config: None }));
    assert_eq!(field_of(check(&spec)), "spec.backend_config.postgres");
    let mut spec = kafka_spec(&[]);
    spec.backend_config = None;
    assert_eq!(field_of(check(&spec)), "spec.backend_config.kafka");
    let mut spec = pulsar_spec("");
    spec.backend_config = None;
    assert_eq!(field_of(check(&spec)), "spec.backend_config.pulsar");
}

#[test]
fn postgres_settings() {
    let dsn = |dsn: &str| postgres_spec(PostgresConfig { dsn: dsn.into(), ..PostgresConfig::default() });
    for missing in ["", "   "] {
        assert_eq!(field_of(check(&dsn(missing))), "spec.backend_config.postgres.dsn", "{missing:?}");
    }
    for bad in ["mysql://db/x", "just-a-host", "postgres://db/x\n", &format!("postgres://{}", "h".repeat(MAX_DSN_LEN))]
    {
        assert_eq!(field_of(check(&dsn(bad))), "spec.backend_config.postgres.dsn", "{bad:?}");
    }
    for good in ["postgres://u@db:5432/x", "postgresql://db/x?sslmode=require", "host=db user=u dbname=x"] {
        check(&dsn(good)).expect(good);
    }
    // A password in the DSN would be metadata: refused, without quoting it.
    for inline in
        ["postgres://u:planted-pw@db:5432/x", "postgres://u@db/x?password=planted-pw", "host=db password=planted-pw"]
    {
        match check(&dsn(inline)) {
            Err(ControlPlaneError::InvalidArgument { field, description }) => {
                assert_eq!(field, "spec.backend_config.postgres.dsn", "{inline}");
                assert!(description.contains("password_ref") && !description.contains("planted"), "{description}");
            }
            other => panic!("{inline}: expected INVALID_ARGUMENT, got {other:?}"),
        }
    }
    let with_ref = |password_ref: &str| {
        postgres_spec(PostgresConfig {
            dsn: "postgres://u@db/x".into(),
            password_ref: password_ref.into(),
            ..PostgresConfig::default()
        })
    };
    for good in ["env:PG_ACME_PASSWORD", "file:/run/secrets/pg", "secret:pg-acme"] {
        check(&with_ref(good)).expect(good);
    }
    for bad in ["PG_PASSWORD", "env:PG-X", "file:relative/path", "secret:", "hunter2"] {
        assert_eq!(field_of(check(&with_ref(bad))), "spec.backend_config.postgres.password_ref", "{bad:?}");
    }

    let pool = |pool_size| {
        postgres_spec(PostgresConfig { dsn: "postgres://db".into(), pool_size, ..PostgresConfig::default() })
    };
    check(&pool(1024)).expect("1024 connections is the limit");
    assert_eq!(field_of(check(&pool(1025))), "spec.backend_config.postgres.pool_size");

    let schema = |schema: &str| {
        postgres_spec(PostgresConfig {
            dsn: "postgres://db".into(),
            schema: schema.into(),
            ..PostgresConfig::default()
        })
    };
    check(&schema("_tenant_01")).expect("valid schema");
    check(&schema(&"s".repeat(63))).expect("63 bytes is the limit");
    for bad in ["Public", "1abc", "a-b", "a;drop", &"s".repeat(64)] {
        assert_eq!(field_of(check(&schema(bad))), "spec.backend_config.postgres.schema", "{bad:?}");
    }
}

#[test]
fn kafka_settings() {
    for good in [&["broker:9092"][..], &["b-1.example.com:9092", "10.0.0.1:19092", "[::1]:9092"]] {
        check(&kafka_spec(good)).expect("valid servers");
    }
    assert_eq!(field_of(check(&kafka_spec(&[]))), "spec.backend_config.kafka.bootstrap_servers");
    for bad in ["broker", ":9092", "broker:", "broker:0", "broker:65536", "broker:http", "bro ker:9092", "b/r:1"] {
        assert_eq!(
            field_of(check(&kafka_spec(&["ok:9092", bad]))),
            "spec.backend_config.kafka.bootstrap_servers[1]",
            "{bad:?}"
        );
    }
    let many: Vec<String> = (0..65).map(|i| format!("b{i}:9092")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    assert_eq!(field_of(check(&kafka_spec(&many))), "spec.backend_config.kafka.bootstrap_servers");
    check(&kafka_spec(&many[..64])).expect("64 servers is the limit");

    let sized = |partitions, replication_factor| {
        ts(
            Backend::Kafka,
            Config::Kafka(KafkaConfig { bootstrap_servers: vec!["b:9092".into()], partitions, replication_factor }),
        )
    };
    check(&sized(1024, 16)).expect("limits are inclusive");
    assert_eq!(field_of(check(&sized(1025, 1))), "spec.backend_config.kafka.partitions");
    assert_eq!(field_of(check(&sized(1, 17))), "spec.backend_config.kafka.replication_factor");
}

#[test]
fn pulsar_settings() {
    for good in ["pulsar://broker:6650", "pulsar+ssl://broker.example.com:6651", "pulsar://broker:6650/"] {
        check(&pulsar_spec(good)).expect(good);
    }
    for bad in ["", "broker:6650", "http://broker:6650", "pulsar://broker", "pulsar://:6650", "pulsar://broker:0"] {
        assert_eq!(field_of(check(&pulsar_spec(bad))), "spec.backend_config.pulsar.service_url", "{bad:?}");
    }
    let topic = |topic: &str| {
        ts(Backend::Pulsar, Config::Pulsar(PulsarConfig { service_url: "pulsar://b:6650".into(), topic: topic.into() }))
    };
    check(&topic("events-2")).expect("valid topic");
    for bad in ["Events", "a/b", "persistent://x/y/z"] {
        assert_eq!(field_of(check(&topic(bad))), "spec.backend_config.pulsar.topic", "{bad:?}");
    }
}

#[test]
fn durations_must_not_be_negative() {
    type Setter = fn(&mut Policies, Option<prost_types::Duration>);
    let fields: [(&str, Setter); 4] = [
        ("spec.policies.retention", |p, d| p.retention = d),
        ("spec.policies.cache_ttl", |p, d| p.cache_ttl = d),
        ("spec.policies.default_item_ttl", |p, d| p.default_item_ttl = d),
        ("spec.policies.accept_limit", |p, d| p.accept_limit = d),
    ];
    for (field, set) in fields {
        // accept_limit applies to TIME_SERIES only; use a namespace where
        // every duration is allowed.
        let base = || {
            let mut s = kv_embedded();
            s.abstraction = Abstraction::TimeSeries as i32;
            s
        };
        for bad in [secs(-1, 0), secs(0, -1), secs(1, 1_000_000_000), secs(i64::MIN, 0)] {
            let mut p = Policies::default();
            set(&mut p, bad);
            assert_eq!(field_of(check(&with_policies(base(), p))), field, "{bad:?}");
        }
        let mut p = Policies::default();
        set(&mut p, secs(0, 0));
        check(&with_policies(base(), p)).expect("zero is allowed");
    }
}

#[test]
fn cache_ttl_is_at_most_one_day() {
    let ttl = |d| with_policies(kv_embedded(), Policies { cache_ttl: d, ..Policies::default() });
    check(&ttl(secs(MAX_CACHE_TTL_SECONDS, 0))).expect("exactly one day");
    assert_eq!(field_of(check(&ttl(secs(MAX_CACHE_TTL_SECONDS, 1)))), "spec.policies.cache_ttl");
    assert_eq!(field_of(check(&ttl(secs(MAX_CACHE_TTL_SECONDS + 1, 0)))), "spec.policies.cache_ttl");
    assert_eq!(field_of(check(&ttl(secs(i64::MAX, 0)))), "spec.policies.cache_ttl");
    // Other durations have no upper bound.
    let retention = with_policies(kv_embedded(), Policies { retention: secs(i64::MAX, 0), ..Policies::default() });
    check(&retention).expect("retention is unbounded");
}

#[test]
fn the_data_access_audit_rate_is_a_fraction() {
    let rate = |r| with_policies(kv_embedded(), Policies { data_access_audit_rate: r, ..Policies::default() });
    for good in [0.0, 0.001, 1.0] {
        check(&rate(good)).expect("a fraction");
    }
    for bad in [-0.1, 1.5, f64::NAN, f64::INFINITY] {
        assert_eq!(field_of(check(&rate(bad))), "spec.policies.data_access_audit_rate", "{bad}");
    }
}

#[test]
fn principals_are_written_sub_tenant_sub_or_colon_sub() {
    let owners = |o: &[&str]| {
        let mut spec = kv_embedded();
        spec.access = Some(Box::new(Access { owners: o.iter().map(|s| (*s).to_owned()).collect(), consumers: vec![] }));
        spec
    };
    check(&owners(&["svc-a", "acme:svc-a", ":system:sa", "globex:svc:x"])).expect("valid principals");
    for bad in ["acme:", ":", ""] {
        assert_eq!(field_of(check(&owners(&[bad]))), "spec.access.owners[0]", "{bad:?}");
    }
}

#[test]
fn max_item_size_is_in_range() {
    let size = |n| with_policies(kv_embedded(), Policies { max_item_size_bytes: n, ..Policies::default() });
    check(&size(0)).expect("0 = default");
    check(&size(MAX_ITEM_SIZE)).expect("64 MiB is the limit");
    for bad in [-1, MAX_ITEM_SIZE + 1, i64::MIN, i64::MAX] {
        assert_eq!(field_of(check(&size(bad))), "spec.policies.max_item_size_bytes", "{bad}");
    }
}

#[test]
fn policies_of_the_other_abstraction_are_refused() {
    let kv = |p| with_policies(kv_embedded(), p);
    let loss = Policies { accept_loss: true, ..Policies::default() };
    assert_eq!(field_of(check(&kv(loss))), "spec.policies.accept_loss");
    let limit = Policies { accept_limit: secs(60, 0), ..Policies::default() };
    assert_eq!(field_of(check(&kv(limit))), "spec.policies.accept_limit");

    let mut series = kafka_spec(&["b:9092"]);
    series.policies = Some(Box::new(Policies { accept_loss: true, accept_limit: secs(60, 0), ..Policies::default() }));
    check(&series).expect("time-series may accept loss");
    series.policies = Some(Box::new(Policies { cache_enabled: true, ..Policies::default() }));
    assert_eq!(field_of(check(&series)), "spec.policies.cache_enabled");

    let consistency = Policies { consistency: 7, ..Policies::default() };
    assert_eq!(field_of(check(&kv(consistency))), "spec.policies.consistency");
}

#[test]
fn quotas_below_minus_one_are_refused() {
    let with = |q: QuotaSet| {
        let mut s = kv_embedded();
        s.quotas = Some(q);
        s
    };
    assert_eq!(
        field_of(check(&with(QuotaSet { requests_per_second: Some(-2), ..QuotaSet::default() }))),
        "spec.quotas.requests_per_second"
    );
    check(&with(QuotaSet { requests_per_second: Some(-1), ..QuotaSet::default() })).expect("-1 = unlimited");
    check(&with(QuotaSet { requests_per_second: Some(0), ..QuotaSet::default() })).expect("0 is a limit");
    // Every field is checked and named.
    let all = prism_proto::quotas::fields(&QuotaSet::default()).map(|(name, _)| name);
    for (i, name) in all.iter().enumerate() {
        let mut values = [None; 12];
        values[i] = Some(i64::MIN);
        let [
            rps,
            read,
            write,
            storage,
            concurrent,
            namespaces,
            item,
            events,
            event_bytes,
            tails,
            partitions,
            retention,
        ] = values;
        let q = QuotaSet {
            profile: 0,
            requests_per_second: rps,
            read_bytes_per_second: read,
            write_bytes_per_second: write,
            storage_bytes: storage,
            concurrent_requests: concurrent,
            max_namespaces: namespaces,
            max_item_size_bytes: item,
            events_per_second: events,
            event_bytes_per_second: event_bytes,
            open_tails: tails,
            max_partitions: partitions,
            max_retention_seconds: retention,
        };
        assert_eq!(field_of(quotas("quotas", &q)), format!("quotas.{name}"));
        assert_eq!(field_of(check(&with(q))), format!("spec.quotas.{name}"));
    }
}

#[test]
fn unknown_quota_profiles_are_refused() {
    for bad in [4, -1, 99] {
        let q = QuotaSet { profile: bad, ..QuotaSet::default() };
        assert_eq!(field_of(quotas("quotas", &q)), "quotas.profile", "{bad}");
        let mut s = kv_embedded();
        s.quotas = Some(q);
        assert_eq!(field_of(check(&s)), "spec.quotas.profile", "{bad}");
    }
    for good in [QuotaProfile::Custom, QuotaProfile::Free, QuotaProfile::Pro, QuotaProfile::Enterprise] {
        quotas("quotas", &QuotaSet { profile: good as i32, ..QuotaSet::default() }).expect("known profile");
    }
}

#[test]
fn owners_and_consumers_are_unique_valid_principals() {
    let with = |access: Access| {
        let mut s = kv_embedded();
        s.access = Some(Box::new(access));
        s
    };
    let owners =
        |list: &[&str]| with(Access { owners: list.iter().map(|s| s.to_string()).collect(), consumers: vec![] });
    assert_eq!(field_of(check(&owners(&["alice", "bob", "alice"]))), "spec.access.owners[2]");
    for bad in ["", "al ice", "tab\there", "nul\0", &"p".repeat(MAX_PRINCIPAL_LEN + 1)] {
        assert_eq!(field_of(check(&owners(&["ok", bad]))), "spec.access.owners[1]", "{bad:?}");
    }
    check(&owners(&[&"p".repeat(MAX_PRINCIPAL_LEN)])).expect("256 bytes is the limit");
    let many: Vec<String> = (0..=MAX_PRINCIPALS).map(|i| format!("p{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    assert_eq!(field_of(check(&owners(&many))), "spec.access.owners");
    check(&owners(&many[..MAX_PRINCIPALS])).expect("256 principals is the limit");

    let grant = |p: &str, level: AccessLevel| Grant { principal: p.into(), level: level as i32 };
    let consumers = |list: Vec<Grant>| with(Access { owners: vec![], consumers: list });
    assert_eq!(
        field_of(check(&consumers(vec![grant("a", AccessLevel::Read), grant("a", AccessLevel::ReadWrite)]))),
        "spec.access.consumers[1]"
    );
    assert_eq!(field_of(check(&consumers(vec![grant("a b", AccessLevel::Read)]))), "spec.access.consumers[0]");
    assert_eq!(
        field_of(check(&consumers(vec![grant("a", AccessLevel::Read), grant("b", AccessLevel::Unspecified)]))),
        "spec.access.consumers[1].level"
    );
    let mut unknown_level = grant("a", AccessLevel::Read);
    unknown_level.level = 9;
    assert_eq!(field_of(check(&consumers(vec![unknown_level]))), "spec.access.consumers[0].level");
}

#[test]
fn pinned_shards() {
    let pinned = |shard: &str| {
        let mut s = kv_embedded();
        s.placement = Some(Box::new(Placement { pinned_shard: shard.into(), ..Default::default() }));
        s
    };
    let known = ["shard-0".to_owned(), "shard-1".to_owned()];
    namespace_spec(&pinned("shard-1"), &known).expect("known shard");
    namespace_spec(&pinned(""), &known).expect("empty = hash");
    assert_eq!(field_of(namespace_spec(&pinned("shard-9"), &known)), "spec.placement.pinned_shard");
    // A pin must name a shard that exists (static or registered) ...
    assert_eq!(field_of(namespace_spec(&pinned("shard-9"), &[])), "spec.placement.pinned_shard");
    // ... and a malformed one is refused as such.
    for bad in ["Shard-0", "shard_0", "-a", &"s".repeat(64)] {
        assert_eq!(field_of(namespace_spec(&pinned(bad), &[])), "spec.placement.pinned_shard", "{bad:?}");
        assert_eq!(field_of(namespace_spec(&pinned(bad), &known)), "spec.placement.pinned_shard", "{bad:?}");
    }
}

#[test]
fn a_dedicated_placement_needs_a_pin() {
    let placed = |shard: &str, dedicated: bool| {
        let mut s = kv_embedded();
        s.placement = Some(Box::new(Placement { pinned_shard: shard.into(), dedicated }));
        s
    };
    let known = ["shard-0".to_owned(), "shard-1".to_owned()];
    namespace_spec(&placed("shard-1", true), &known).expect("dedicated to a known shard");
    assert_eq!(field_of(namespace_spec(&placed("", true), &known)), "spec.placement.dedicated");
    // The pin is checked as any pin.
    assert_eq!(field_of(namespace_spec(&placed("shard-9", true), &known)), "spec.placement.pinned_shard");
}

#[test]
fn names_text_and_principals() {
    for bad in ["", "Acme", "a_b", "acme/x", "acme'; drop table tenants;--", &"a".repeat(64)] {
        assert_eq!(field_of(tenant_id("tenant_id", bad)), "tenant_id", "{bad:?}");
    }
    tenant_id("tenant_id", &"a".repeat(63)).expect("63 bytes is the limit");

    for bad in ["", "acme", "Acme/x", "acme/a/b", "acme/x';drop", "acme/", "/x", "acme/X", "acme/x y"] {
        assert_eq!(field_of(namespace_name("name", bad)), "name", "{bad:?}");
    }
    namespace_name("name", "acme/user-profiles").expect("valid");

    text("display_name", &"é".repeat(MAX_TEXT_LEN)).expect("the limit counts characters, not bytes");
    assert_eq!(field_of(text("display_name", &"x".repeat(MAX_TEXT_LEN + 1))), "display_name");
    assert_eq!(field_of(text("reason", "line\nbreak")), "reason");

    principal("principal", "svc:a@b").expect("valid");
    assert_eq!(field_of(principal("principal", "")), "principal");
    assert_eq!(field_of(principals("admins", ["a", "b", "a"].into_iter())), "admins[2]");
    assert_eq!(field_of(access_level("level", AccessLevel::Unspecified as i32)), "level");
    assert_eq!(access_level("level", AccessLevel::ReadWrite as i32).expect("valid"), AccessLevel::ReadWrite);
}

/// Partitions and retention against the quotas that cap them: the
/// namespace's own first, then its tenant's; the refusal names the field
/// and whose quota; an unset retention of a TimeSeries namespace becomes
/// the smallest maximum.
#[test]
fn partitions_and_retention_are_capped_by_quotas() {
    let kafka = |partitions| {
        ts(
            Backend::Kafka,
            Config::Kafka(KafkaConfig { bootstrap_servers: vec!["b:9092".into()], partitions, replication_factor: 0 }),
        )
    };
    let caps = |partitions, retention| QuotaSet {
        max_partitions: Some(partitions),
        max_retention_seconds: Some(retention),
        ..QuotaSet::default()
    };
    let refused = |result: Result<()>| match result {
        Err(ControlPlaneError::QuotaExceeded { subject, description }) => (subject, description),
        other => panic!("expected a quota refusal, got {other:?}"),
    };
    let tenant = caps(4, 3600);
    let (subject, description) = refused(within_quotas("acme/x", &mut kafka(8), Some(&tenant)));
    assert_eq!(subject, "tenant:acme");
    assert!(description.starts_with("spec.backend_config.kafka.partitions asks for 8"), "{description}");
    // 0 partitions means the backend's default, 1.
    let mut spec = kafka(0);
    within_quotas("acme/x", &mut spec, Some(&caps(1, 3600))).expect("the default fits");
    let retention = spec.policies.as_ref().and_then(|p| p.retention.as_ref()).map(|d| d.seconds);
    assert_eq!(retention, Some(3600), "no retention becomes the tenant's longest");

    let mut long = kafka(4);
    long.policies = Some(Box::new(Policies {
        retention: Some(prost_types::Duration { seconds: 3600, nanos: 1 }),
        ..Policies::default()
    }));
    let (_, description) = refused(within_quotas("acme/x", &mut long.clone(), Some(&tenant)));
    assert!(description.starts_with("spec.policies.retention"), "{description}");
    long.quotas = Some(caps(-1, 60));
    let (subject, _) = refused(within_quotas("acme/x", &mut long.clone(), None));
    assert_eq!(subject, "namespace:acme/x");

    // The smaller of the two maxima fills an unset retention; KeyValue
    // namespaces have none, and a backend without partitions counts one.
    let mut spec = kafka(2);
    spec.quotas = Some(caps(-1, 60));
    within_quotas("acme/x", &mut spec, Some(&tenant)).expect("within both");
    assert_eq!(spec.policies.and_then(|p| p.retention).map(|d| d.seconds), Some(60));
    let mut kv = kv_embedded();
    within_quotas("acme/kv", &mut kv, Some(&caps(1, 60))).expect("one partition, no retention");
    assert_eq!(kv.policies, None);
    let (_, description) = refused(within_quotas("acme/kv", &mut kv_embedded(), Some(&caps(0, 60))));
    assert!(description.starts_with("spec.backend asks for 1 partitions"), "{description}");
    // Unlimited caps nothing.
    within_quotas("acme/x", &mut kafka(1024), Some(&caps(-1, -1))).expect("unlimited");
}
