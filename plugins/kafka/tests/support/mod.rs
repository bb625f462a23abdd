//! What the kafka plugin's test binaries share: one tansu broker per
//! binary, and a plugin wrapper that gives every namespace the broker's
//! address.
//!
//! The conformance suite makes namespaces without a `backend_config` (it
//! is backend-neutral), while a kafka namespace must name its brokers:
//! [`Configured`] fills it in on every call, as the control plane's
//! metadata would.

#![allow(dead_code)] // each test binary uses its own part of this module

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use prism_plugin_api::kv::PageLimits;
use prism_plugin_api::ts::{Event, EventCursor, EventsPage, TagFilter, TimeSeries};
use prism_plugin_api::{Capabilities, Micros, Namespace, Plugin};
use prism_plugin_kafka::{KafkaPlugin, KafkaPluginConfig};
use prism_proto::control::backend_config::Config;
use prism_proto::control::{BackendConfig, KafkaConfig};
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

/// `ns` with `settings` as its backend_config.
pub fn with_settings(ns: &Namespace, settings: &KafkaConfig) -> Namespace {
    let mut ns = ns.clone();
    ns.spec.backend_config = Some(BackendConfig { config: Some(Config::Kafka(settings.clone())) });
    ns
}

/// A [`KafkaPlugin`] whose namespaces all use `settings`.
pub struct Configured {
    pub plugin: KafkaPlugin,
    pub settings: KafkaConfig,
}

impl Configured {
    pub fn new(settings: KafkaConfig, config: KafkaPluginConfig) -> Arc<Self> {
        let plugin = KafkaPlugin::new(config).expect("valid plugin config");
        Arc::new(Self { plugin, settings })
    }

    pub fn ns(&self, ns: &Namespace) -> Namespace {
        with_settings(ns, &self.settings)
    }
}

/// A plugin on the shared broker, with topics of `partitions`.
pub async fn fixture(partitions: u32) -> Arc<Configured> {
    Configured::new(settings(&broker().bootstrap(), partitions), KafkaPluginConfig::default())
}

#[async_trait]
impl Plugin for Configured {
    fn capabilities(&self) -> Capabilities {
        self.plugin.capabilities()
    }

    async fn provision(&self, ns: &Namespace) -> prism_plugin_api::Result<()> {
        self.plugin.provision(&self.ns(ns)).await
    }

    async fn deprovision(&self, ns: &Namespace) -> prism_plugin_api::Result<()> {
        self.plugin.deprovision(&self.ns(ns)).await
    }

    fn time_series(&self) -> Option<&dyn TimeSeries> {
        Some(self)
    }
}

#[async_trait]
impl TimeSeries for Configured {
    async fn write(&self, ns: &Namespace, events: &[Event]) -> prism_plugin_api::Result<()> {
        self.plugin.write(&self.ns(ns), events).await
    }

    async fn read(
        &self,
        ns: &Namespace,
        time_series_id: &str,
        start: Micros,
        end: Micros,
        after: Option<&EventCursor>,
        limits: PageLimits,
        now: Micros,
    ) -> prism_plugin_api::Result<EventsPage> {
        self.plugin.read(&self.ns(ns), time_series_id, start, end, after, limits, now).await
    }

    async fn search(
        &self,
        ns: &Namespace,
        start: Micros,
        end: Micros,
        filter: Option<&TagFilter>,
        after: Option<&EventCursor>,
        limits: PageLimits,
        now: Micros,
    ) -> prism_plugin_api::Result<EventsPage> {
        self.plugin.search(&self.ns(ns), start, end, filter, after, limits, now).await
    }

    async fn reclaim(&self, ns: &Namespace, now: Micros) -> prism_plugin_api::Result<u64> {
        self.plugin.reclaim(&self.ns(ns), now).await
    }
}
