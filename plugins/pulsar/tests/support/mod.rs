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
    /// The conformance suite's turn on the shared broker (see [`fixture`]).
    _turn: Option<tokio::sync::MutexGuard<'static, ()>>,
}

impl Configured {
    pub fn new(settings: PulsarConfig, config: PulsarPluginConfig) -> Arc<Self> {
        Arc::new(Self { plugin: PulsarPlugin::new(config), settings, _turn: None })
    }

    pub fn ns(&self, ns: &Namespace) -> Namespace {
        with_settings(ns, &self.settings)
    }
}

/// A plugin on the shared broker, for one conformance case at a time.
///
/// The cases take turns (the plugin holds the turn until the case drops
/// it): `large_events_round_trip` scanning its 3 MB of events while any
/// other case reads the same pulsar-lite broker stalls its search for the
/// whole 60 s timeout — every time with two test threads, never alone or
/// with one (30 of 30 in 22 s). Whether pulsar-lite or the checksum relay
/// stalls is not known yet (see the closing notes of 2026-12-03); until
/// then the suite checks semantics one case at a time.
pub async fn fixture() -> Arc<Configured> {
    static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let turn = TURN.lock().await;
    // The suite checks semantics, not latency: on a loaded 2-core CI
    // machine a whole-topic read of the large-event case can take longer
    // than the production default of 10 s.
    let config = PulsarPluginConfig { request_timeout: std::time::Duration::from_secs(60), ..Default::default() };
    Arc::new(Configured {
        plugin: PulsarPlugin::new(config),
        settings: settings(&broker().service_url()),
        _turn: Some(turn),
    })
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
