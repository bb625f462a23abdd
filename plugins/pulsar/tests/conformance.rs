//! The shared TimeSeries conformance suite against a real pulsar-lite
//! broker (one per test binary, started by the testkit).

mod support;

prism_plugin_api::time_series_conformance!(support::fixture());
