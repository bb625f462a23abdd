//! The shared KeyValue conformance suite against a real PostgreSQL server
//! (one per test binary, started by the testkit): with the default 1 MiB
//! chunk threshold, again with a 1 KiB one so that most of the suite's
//! values are chunked, and again with every statement unnamed
//! (`prepared_statements=false` in the DSN); and the TimeSeries suite once
//! (it does not chunk).
//! The schema's name is full of SQL metacharacters, so
//! every statement of the suite also proves that identifiers are quoted.

mod support;

const SCHEMA: &str = "prism \"conformance\"; --";

prism_plugin_api::key_value_conformance!(support::fixture(SCHEMA, 1 << 20));

mod small_chunks {
    prism_plugin_api::key_value_conformance!(super::support::fixture(super::SCHEMA, 1024));
}

mod unnamed_statements {
    prism_plugin_api::key_value_conformance!(super::support::fixture_unnamed(super::SCHEMA));
}

mod time_series {
    prism_plugin_api::time_series_conformance!(super::support::fixture(super::SCHEMA, 1 << 20));
}
