//! What the embedded backend promises beyond the shared suites: data and
//! events survive a restart, one process owns a data directory, and the
//! background reclaimer frees expired data and stops with the plugin.

use std::sync::Arc;
use std::time::Duration;

use prism_plugin_api::conformance::Subject;
use prism_plugin_api::conformance::support::{
    Case, MINUTE, event, namespace, newest_first, pairs, pattern, put, put_expiring, ts_namespace,
};
use prism_plugin_api::kv::{KeyRange, Mutation};
use prism_plugin_api::{PluginError, now_micros};
use prism_plugin_embedded::{EmbeddedConfig, EmbeddedPlugin};

/// A plugin on `dir`; embedded namespaces need no backend settings.
fn open(dir: &std::path::Path) -> Subject {
    Subject::new(Arc::new(EmbeddedPlugin::open(EmbeddedConfig::new(dir)).expect("open the store")))
}

#[tokio::test]
async fn data_survives_reopening() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let subject = open(dir.path());
    let ns = namespace(&subject, "data_survives_reopening");
    let c = Case::unprovisioned(&subject, ns.clone());
    c.plugin.provision(&c.ns).await.expect("provision");
    let big = pattern(3 << 20, 9);
    c.mutate("r", &[put("k", "v"), put("big", &big)], &c.token(1, "tok")).await;
    c.mutate("r", &[Mutation::Delete(b"gone".to_vec())], &c.at(10)).await;
    c.mutate("s", &[Mutation::DeleteRange(KeyRange::all())], &c.at(10)).await;
    let stored = c.storage().await;
    let base = c.base;
    drop(c);

    drop(subject);
    let c = Case::resume(open(dir.path()).plugin, ns, base);
    assert_eq!(c.storage().await, stored);
    assert_eq!(c.entries("r").await, pairs(&[("big", big.as_slice()), ("k", b"v".as_slice())]));
    c.mutate("r", &[put("k", "retry")], &c.token(1, "tok")).await;
    c.put("r", &[("gone", "late")], 5).await;
    c.put("s", &[("x", "late")], 5).await;
    assert_eq!(
        c.entries("r").await,
        pairs(&[("big", big.as_slice()), ("k", b"v".as_slice())]),
        "token and tombstone survive"
    );
    assert_eq!(c.entries("s").await, vec![], "the record delete survives");
    c.finish().await;
}

#[tokio::test]
async fn events_survive_reopening() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let subject = open(dir.path());
    let ns = ts_namespace(&subject, "events_survive_reopening", None);
    let c = Case::provision_ns(&subject, ns.clone()).await;
    let mut written: Vec<_> = (0..20)
        .map(|i| {
            event(&format!("s{}", i % 3), c.base - i * 7 * MINUTE, &format!("e{i}"), &[("k", "v")], &[("tag", "x")])
        })
        .collect();
    written[0].items.push((b"big".to_vec(), pattern(2 << 20, 3)));
    c.write(&written).await;
    let stored = c.storage().await;
    let base = c.base;
    drop(c);

    drop(subject);
    let c = Case::resume(open(dir.path()).plugin, ns, base);
    assert_eq!(c.storage().await, stored);
    let want = newest_first(&written);
    assert!(c.matching(None).await == want, "every event comes back after reopening");
    let series: Vec<_> = want.iter().filter(|e| e.time_series_id == "s1").cloned().collect();
    assert_eq!(c.series("s1").await, series);
    // What was written is still what a repeated write cannot change.
    let mut again = written[1].clone();
    again.items = vec![(b"k".to_vec(), b"changed".to_vec())];
    c.write(&[again]).await;
    assert!(c.matching(None).await == want, "the first write still wins");
    c.finish().await;
}

#[tokio::test]
async fn one_process_owns_a_data_directory() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let _first = EmbeddedPlugin::open(EmbeddedConfig::new(dir.path())).expect("open");
    let second = EmbeddedPlugin::open(EmbeddedConfig::new(dir.path())).expect_err("the file is locked");
    let error = PluginError::from(second);
    assert!(error.could_retry(), "{error}");
    assert!(!error.report().message.contains(&dir.path().display().to_string()));
}

#[tokio::test]
async fn invalid_config_is_refused() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let config = EmbeddedConfig { chunk_threshold_bytes: 0, ..EmbeddedConfig::new(dir.path()) };
    let error = EmbeddedPlugin::open(config).expect_err("threshold 0 is invalid");
    assert!(error.to_string().contains("chunk_threshold_bytes"), "{error}");
}

#[tokio::test]
async fn reclaimer_frees_expired_data_and_stops_with_the_plugin() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let plugin = Arc::new(EmbeddedPlugin::open(EmbeddedConfig::new(dir.path())).expect("open"));
    let c = Case::provision(&Subject::new(plugin.clone()), "reclaimer").await;
    let value = pattern(64 << 10, 1);
    c.mutate("r", &[put_expiring("k", &value, now_micros() - 1), put("kept", "x")], &c.at(1)).await;
    let before = c.storage().await;

    let reclaimer = plugin.spawn_reclaimer(Duration::from_millis(5));
    // The first tick is at once; poll (each poll is a read of the store),
    // bounded in time, rather than sleep and hope.
    let started = std::time::Instant::now();
    let mut after = c.storage().await;
    while after >= before && started.elapsed() < Duration::from_secs(30) {
        tokio::task::yield_now().await;
        after = c.storage().await;
    }
    assert!(after + (64 << 10) <= before, "storage_bytes went from {before} to {after}");
    assert_eq!(c.entries("r").await, pairs(&[("kept", "x")]));

    c.finish().await;
    drop(plugin);
    tokio::time::timeout(Duration::from_secs(30), reclaimer)
        .await
        .expect("the reclaimer stops once the plugin is dropped")
        .expect("the reclaimer does not panic");
}

#[tokio::test]
async fn nul_in_a_record_id_is_invalid() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let c = Case::provision(&open(dir.path()), "nul_in_a_record_id_is_invalid").await;
    let result = c.kv().mutate("a\0b", &[put("k", "v")], &c.at(1)).await;
    assert!(matches!(result, Err(PluginError::InvalidArgument { .. })), "{result:?}");
    c.finish().await;
}
