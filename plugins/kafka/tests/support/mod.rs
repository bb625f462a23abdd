//! What the kafka plugin's test binaries share: one tansu broker per
//! binary, and plugins whose namespaces name it ([`subject`]: the
//! conformance suite's [`Subject`], whose `backend_config` every namespace
//! a case makes carries).

#![allow(dead_code)] // each test binary uses its own part of this module

use std::sync::{Arc, OnceLock};

use prism_plugin_api::conformance::Subject;
use prism_plugin_kafka::{KafkaPlugin, KafkaPluginConfig};
use prism_proto::control::KafkaConfig;
use prism_proto::control::backend_config::Config;
use prism_testkit::kafka::KafkaBroker;

/// The broker every test of this binary shares, started on first use; it
/// never lives past the test process (the testkit's watchdog kills it).
/// Fails the test, with the install command, when tansu is missing.
pub fn broker() -> &'static KafkaBroker {
    static BROKER: OnceLock<Result<KafkaBroker, String>> = OnceLock::new();
    match BROKER.get_or_init(|| KafkaBroker::start().map_err(|e| format!("{e:#}"))) {
        Ok(broker) => broker,
        Err(e) => panic!("cannot start a kafka broker: {e}"),
    }
}

/// As [`broker`], but `None` when tansu is missing and
/// `PRISM_REQUIRE_SERVERS` is unset: the caller skips.
pub fn broker_or_skip() -> Option<&'static KafkaBroker> {
    static BROKER: OnceLock<Result<Option<KafkaBroker>, String>> = OnceLock::new();
    match BROKER.get_or_init(|| KafkaBroker::start_or_skip().map_err(|e| format!("{e:#}"))) {
        Ok(broker) => broker.as_ref(),
        Err(e) => panic!("cannot start a kafka broker: {e}"),
    }
}

/// The namespace settings pointing at `bootstrap`.
pub fn settings(bootstrap: &str, partitions: u32) -> KafkaConfig {
    KafkaConfig { bootstrap_servers: vec![bootstrap.to_owned()], partitions, replication_factor: 1 }
}

/// A [`KafkaPlugin`] of `config` whose namespaces carry `settings`, as the
/// control plane's metadata would give them.
pub fn subject(settings: KafkaConfig, config: KafkaPluginConfig) -> Subject {
    let plugin = KafkaPlugin::new(config).expect("valid plugin config");
    Subject::configured(Arc::new(plugin), Config::Kafka(settings))
}

/// A plugin on the shared broker, with topics of `partitions`.
pub async fn fixture(partitions: u32) -> Subject {
    subject(settings(&broker().bootstrap(), partitions), KafkaPluginConfig::default())
}
