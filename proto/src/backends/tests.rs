//! The table is complete and consistent: every field of every backend's
//! config message is described once, every `oneof` case has its backend,
//! flags are unique, and the generic checks say what the old ones said.

use std::collections::HashSet;

use prost::Message;
use prost_types::FileDescriptorSet;

use super::*;
use crate::control::{KafkaConfig, PostgresConfig, PulsarConfig};

fn control_proto() -> prost_types::FileDescriptorProto {
    let set = FileDescriptorSet::decode(crate::FILE_DESCRIPTOR_SET).expect("the build's descriptor set decodes");
    set.file.into_iter().find(|f| f.package() == "prism.control.v1").expect("prism.control.v1 is in the set")
}

#[test]
fn every_oneof_case_and_config_field_is_described_once() {
    let file = control_proto();
    let message = |name: &str| {
        file.message_type.iter().find(|m| m.name() == name).unwrap_or_else(|| panic!("message {name}")).clone()
    };
    let cases = message("BackendConfig").field;
    assert_eq!(cases.len(), BACKENDS.len(), "one description per backend_config case");
    for case in &cases {
        let d =
            by_name(case.name()).unwrap_or_else(|| panic!("backend_config case {} has no description", case.name()));
        let config = message(case.type_name().rsplit('.').next().unwrap_or_default());
        let fields: HashSet<&str> = config.field.iter().map(|f| f.name()).collect();
        let described: HashSet<&str> = d.settings.iter().map(|s| s.field).collect();
        assert_eq!(described.len(), d.settings.len(), "{}: a field described twice", d.name);
        assert_eq!(fields, described, "{}: settings and {} fields differ", d.name, config.name());
        assert!(of_config(&(d.empty)()).is_some_and(|o| std::ptr::eq(o, d)), "{}: empty() is its own case", d.name);
    }
    for d in BACKENDS {
        let enum_name = format!("BACKEND_{}", d.name.to_ascii_uppercase());
        assert_eq!(d.backend.as_str_name(), enum_name, "{} is the Backend value of its name", d.name);
    }
}

#[test]
fn flags_are_unique_and_accessors_round_trip() {
    let mut flags = HashSet::new();
    for d in BACKENDS {
        for s in d.settings {
            assert!(flags.insert(s.flag), "--{} is used twice", s.flag);
            let mut config = (d.empty)();
            let value = match &s.kind {
                Kind::Text(_) => Value::Text("x".into()),
                Kind::Count(_) => Value::Count(7),
                Kind::Switch(_) => Value::Switch(true),
                Kind::List(_) => Value::List(vec!["x".into()]),
            };
            s.set(&mut config, value.clone()).expect("the setting's own kind");
            assert_eq!(s.value(&config), Some(value), "{}.{}", d.name, s.field);
            let other = BACKENDS.iter().find(|o| o.backend != d.backend).expect("another backend");
            assert_eq!(s.value(&(other.empty)()), None, "{}.{} on {}", d.name, s.field, other.name);
            assert!(s.set(&mut config, Value::Switch(false)).is_err() || matches!(s.kind, Kind::Switch(_)));
        }
    }
}

#[test]
fn missing_and_mismatched_configs_name_the_field() {
    let check = |backend, config: Option<Config>| {
        check_config(backend, config.map(|c| BackendConfig { config: Some(c) }).as_ref(), "spec.backend_config")
    };
    check(Backend::Embedded, None).expect("embedded needs no settings");
    let err = check(Backend::Postgres, None).expect_err("postgres needs its settings");
    assert_eq!(err.field, "spec.backend_config.postgres");
    assert_eq!(err.description, "is required for backend postgres");
    let err = check(Backend::Kafka, Some(Config::Pulsar(PulsarConfig::default()))).expect_err("another case");
    assert_eq!(err, invalid("spec.backend_config", "holds pulsar settings but the backend is kafka"));
    let err = check(Backend::Unspecified, None).expect_err("no backend");
    assert_eq!(err, invalid("spec.backend", format!("must be one of {}", names())));
    assert!(names().starts_with("embedded, postgres, kafka, pulsar"), "{}", names());
}

#[test]
fn limits_and_checks_keep_their_messages() {
    let pg = |c: PostgresConfig| {
        check_config(Backend::Postgres, Some(&BackendConfig { config: Some(Config::Postgres(c)) }), "s")
    };
    let err = pg(PostgresConfig { dsn: " ".into(), ..Default::default() }).expect_err("blank");
    assert_eq!(err, invalid("s.postgres.dsn", "is required"));
    let err = pg(PostgresConfig { dsn: "x".repeat(4097), ..Default::default() }).expect_err("long");
    assert_eq!(err, invalid("s.postgres.dsn", "is longer than 4096 bytes"));
    let err = pg(PostgresConfig { dsn: "host=db".into(), pool_size: 1025, ..Default::default() }).expect_err("big");
    assert_eq!(err, invalid("s.postgres.pool_size", "1025 is above 1024"));
    pg(PostgresConfig { dsn: "host=db".into(), pool_size: 1024, ..Default::default() }).expect("at the limit");
    let err = pg(PostgresConfig { dsn: "host=db".into(), schema: " ".into(), ..Default::default() })
        .expect_err("blank schema");
    assert_eq!(err.field, "s.postgres.schema");

    let kafka = |servers: Vec<String>| {
        let c = KafkaConfig { bootstrap_servers: servers, ..Default::default() };
        check_config(Backend::Kafka, Some(&BackendConfig { config: Some(Config::Kafka(c)) }), "s")
    };
    assert_eq!(kafka(vec![]).expect_err("none"), invalid("s.kafka.bootstrap_servers", "needs at least one host:port"));
    let many = vec!["b:1".to_owned(); 65];
    assert_eq!(kafka(many).expect_err("many"), invalid("s.kafka.bootstrap_servers", "lists more than 64 servers"));
    assert_eq!(kafka(vec!["b:1".into(), "b".into()]).expect_err("bad").field, "s.kafka.bootstrap_servers[1]");

    assert_eq!(kafka::PARTITIONS.resolve(0), Some(1));
    assert_eq!(kafka::PARTITIONS.resolve(1024), Some(1024));
    assert_eq!(kafka::PARTITIONS.resolve(1025), None);
}

#[test]
fn capabilities_come_from_the_table() {
    for d in BACKENDS {
        assert_eq!(describe(d.backend).map(|x| x.name), Some(d.name));
        assert_eq!(index(d.backend).map(|i| BACKENDS[i].name), Some(d.name));
    }
    assert!(describe(Backend::Unspecified).is_none());
    assert_eq!(and_list(&["a"]), "a");
    assert_eq!(and_list(&["a", "b", "c"]), "a, b and c");
}

#[test]
fn partitions_come_from_the_partitions_setting() {
    let kafka = |partitions| BackendConfig {
        config: Some(Config::Kafka(KafkaConfig { bootstrap_servers: vec![], partitions, replication_factor: 0 })),
    };
    let d = describe(Backend::Kafka).expect("kafka");
    assert_eq!(d.partitions(Some(&kafka(8))), (8, Some("partitions")));
    assert_eq!(d.partitions(Some(&kafka(0))), (1, Some("partitions")), "0 is the default");
    assert_eq!(d.partitions(None), (1, Some("partitions")));
    for other in [Backend::Embedded, Backend::Postgres, Backend::Pulsar] {
        assert_eq!(describe(other).map(|d| d.partitions(None)), Some((1, None)), "{other:?}");
    }
}
