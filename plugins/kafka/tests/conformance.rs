//! The shared TimeSeries conformance suite against a real Kafka-protocol
//! broker (tansu, one per test binary, started by the testkit): with
//! one-partition topics, and again with four partitions, so that a search
//! reads across partitions and a read finds its series' one partition.

mod support;

prism_plugin_api::time_series_conformance!(support::fixture(1));

mod four_partitions {
    prism_plugin_api::time_series_conformance!(super::support::fixture(4));
}
