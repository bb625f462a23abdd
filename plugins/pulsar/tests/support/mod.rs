//! What the pulsar plugin's test binaries share: one pulsar-lite broker per
//! binary, and plugins whose namespaces name it ([`subject`]: the
//! conformance suite's [`Subject`], whose `backend_config` every namespace
//! a case makes carries).

#![allow(dead_code)] // each test binary uses its own part of this module

use std::sync::{Arc, OnceLock};

use prism_plugin_api::conformance::Subject;
use prism_plugin_pulsar::{PulsarPlugin, PulsarPluginConfig};
use prism_proto::control::PulsarConfig;
use prism_proto::control::backend_config::Config;
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

/// A [`PulsarPlugin`] of `config` whose namespaces carry `settings`, as
/// the control plane's metadata would give them.
pub fn subject(settings: PulsarConfig, config: PulsarPluginConfig) -> Subject {
    Subject::configured(Arc::new(PulsarPlugin::new(config)), Config::Pulsar(settings))
}

/// A plugin on the shared broker, for one conformance case at a time: the
/// case's turn is the guard, held until the case ends.
///
/// The cases take turns: `large_events_round_trip` scanning its 3 MB of
/// events while any other case reads the same pulsar-lite broker stalls
/// its search for the whole 60 s timeout — every time with two test
/// threads, never alone or with one (30 of 30 in 22 s). Whether
/// pulsar-lite or the checksum relay stalls is not known yet (see the
/// closing notes of 2026-12-03); until then the suite checks semantics one
/// case at a time.
pub async fn fixture() -> (Subject, tokio::sync::MutexGuard<'static, ()>) {
    static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let turn = TURN.lock().await;
    // The suite checks semantics, not latency: on a loaded 2-core CI
    // machine a whole-topic read of the large-event case can take longer
    // than the production default of 10 s.
    let config = PulsarPluginConfig { request_timeout: std::time::Duration::from_secs(60), ..Default::default() };
    (subject(settings(&broker().service_url()), config), turn)
}
