//! The shared conformance suites against the embedded backend: KeyValue
//! with the default 1 MiB chunk threshold, and again with a 1 KiB one so
//! that most of the suite's values are chunked; TimeSeries once (it does
//! not chunk).

use std::sync::Arc;

use prism_plugin_embedded::{EmbeddedConfig, EmbeddedPlugin};

/// A plugin on a fresh temporary directory, removed after the case.
async fn open(chunk_threshold_bytes: u64) -> (Arc<EmbeddedPlugin>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let config = EmbeddedConfig { chunk_threshold_bytes, ..EmbeddedConfig::new(dir.path()) };
    (Arc::new(EmbeddedPlugin::open(config).expect("open the store")), dir)
}

prism_plugin_api::key_value_conformance!(open(1 << 20));

mod small_chunks {
    prism_plugin_api::key_value_conformance!(super::open(1024));
}

mod time_series {
    prism_plugin_api::time_series_conformance!(super::open(1 << 20));
}
