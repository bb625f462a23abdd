//! What the pulsar plugin's test binaries share: one pulsar-lite broker per
//! binary, and a plugin wrapper that gives every namespace the broker's
//! settings.
//!
//! The conformance suite makes namespaces without a `backend_config` (it
//! is backend-neutral), while a pulsar namespace must name its broker:
//! [`Configured`] fills it in on every call, as the control plane's
//! metadata would.

#![allow(dead_code)] // each test binary uses its own part of this module

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use prism_plugin_api::kv::PageLimits;
use prism_plugin_api::ts::{Event, EventCursor, EventsPage, TagFilter, TimeSeries};
use prism_plugin_api::{Capabilities, Micros, Namespace, Plugin};
use prism_plugin_pulsar::{PulsarPlugin, PulsarPluginConfig};
use prism_proto::control::backend_config::Config;
use prism_proto::control::{BackendConfig, PulsarConfig};
use prism_testkit::pulsar::PulsarBroker;

/// The broker every test of this binary shares, started on first use; it
/// never lives past the test process (the testkit's watchdog stops it).
/// Fails the test, with the install command, when pulsar-lite is missing.
pub fn broker() -> &'static PulsarBroker {
    static BROKER: OnceLock<Result<PulsarBroker, String>> = OnceLock::new();
    match BROKER.get_or_init(|| PulsarBroker::start().map_err(|e| format!("{e:#}"))) {
        Ok(broker) => broker,
        Err(e) => panic!("cannot start pulsar-lite: {e}"),
    }
}

/// The namespace settings pointing at `service_url`.
pub fn settings(service_url: &str) -> PulsarConfig {
    PulsarConfig { service_url: service_url.to_owned(), topic: String::new() }
}

/// `ns` with `settings` as its backend_config.
pub fn with_settings(ns: &Namespace, settings: &PulsarConfig) -> Namespace {
    let mut ns = ns.clone();
    ns.spec.backend_config = Some(BackendConfig { config: Some(Config::Pulsar(settings.clone())) });
    ns
}

/// A [`PulsarPlugin`] whose namespaces all use `settings`.
pub struct Configured {
    pub plugin: PulsarPlugin,
    pub settings: PulsarConfig,
}

impl Configured {
    pub fn new(settings: PulsarConfig, config: PulsarPluginConfig) -> Arc<Self> {
        Arc::new(Self { plugin: PulsarPlugin::new(config), settings })
    }

    pub fn ns(&self, ns: &Namespace) -> Namespace {
        with_settings(ns, &self.settings)
    }
}

/// A plugin on the shared broker.
pub async fn fixture() -> Arc<Configured> {
    // The suite checks semantics, not latency: on a loaded 2-core CI
    // machine a whole-topic read of the large-event case can take longer
    // than the production default of 10 s.
    let config = PulsarPluginConfig { request_timeout: std::time::Duration::from_secs(60), ..Default::default() };
    Configured::new(settings(&broker().service_url()), config)
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
