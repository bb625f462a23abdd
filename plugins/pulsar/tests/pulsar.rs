//! The pulsar plugin against brokers of its own (one per test, so they can
//! be stopped and restarted): durability of acknowledged writes across a
//! broker restart, and a broker outage that fails calls as UNAVAILABLE in
//! bounded time and heals on its own.

mod support;

use std::time::{Duration, Instant};

use anyhow::ensure;
use prism_plugin_api::conformance::Subject;
use prism_plugin_api::conformance::support::{event, ts_namespace};
use prism_plugin_api::kv::PageLimits;
use prism_plugin_api::ts::{Event, Query, TimeSeriesHandle};
use prism_plugin_api::{Micros, Namespace, now_micros};
use prism_plugin_pulsar::PulsarPluginConfig;
use prism_proto::error::ErrorKind;
use prism_testkit::eventually;
use prism_testkit::pulsar::PulsarBroker;
use std::sync::Arc;
use support::{settings, subject};

const LIMITS: PageLimits = PageLimits::new(u64::MAX, None);

fn config() -> PulsarPluginConfig {
    PulsarPluginConfig { request_timeout: Duration::from_secs(3), connect_timeout: Duration::from_millis(500) }
}

async fn read_all(ts: &dyn TimeSeriesHandle, series: &str, now: Micros) -> anyhow::Result<Vec<Event>> {
    let query = Query::series(series, (now - 3_600_000_000, now + 3_600_000_000), LIMITS);
    let page = ts.query(&query, now).await?;
    Ok(page.events)
}

/// `ns` opened on `subject`'s plugin.
fn open(subject: &Subject, ns: &Namespace) -> Arc<dyn TimeSeriesHandle> {
    subject.plugin.time_series().expect("time_series").open(ns).expect("open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_a_broker_restart() {
    let mut broker = PulsarBroker::start().expect("start pulsar-lite");
    let subject = subject(settings(&broker.service_url()), config());
    let ns = ts_namespace(&subject, "durable", None);
    subject.plugin.provision(&ns).await.expect("provision");
    let plugin = open(&subject, &ns);
    let now = now_micros();
    let written: Vec<Event> =
        (0..5).map(|i| event("s", now - i * 1_000, &format!("e{i}"), &[("k", &format!("v{i}"))], &[])).collect();
    plugin.write(&written).await.expect("write is acknowledged");

    broker.restart().expect("restart on the same data");

    // A fresh plugin (a gateway started after the restart) reads them all.
    let fresh = support::subject(settings(&broker.service_url()), config());
    let fresh = open(&fresh, &ns);
    let events = eventually(Duration::from_secs(20), || read_all(fresh.as_ref(), "s", now)).await.expect("read");
    assert_eq!(events, written, "every acknowledged event, newest first");
    // And the plugin that wrote them reconnects and reads them too.
    let events = eventually(Duration::from_secs(20), || read_all(plugin.as_ref(), "s", now)).await.expect("read");
    assert_eq!(events, written);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_fails_calls_as_unavailable_in_bounded_time_and_heals() {
    let mut broker = PulsarBroker::start().expect("start pulsar-lite");
    let subject = subject(settings(&broker.service_url()), config());
    let ns = ts_namespace(&subject, "outage", None);
    subject.plugin.provision(&ns).await.expect("provision");
    let plugin = open(&subject, &ns);
    let now = now_micros();
    let before = event("s", now, "before", &[("k", "v")], &[]);
    plugin.write(std::slice::from_ref(&before)).await.expect("write");

    broker.stop();
    let during = event("s", now - 1, "during", &[("k", "v")], &[]);
    let started = Instant::now();
    let e = plugin.write(std::slice::from_ref(&during)).await.expect_err("the broker is down");
    let took = started.elapsed();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(took <= config().request_timeout + Duration::from_secs(1), "failed only after {took:?}");
    let query = Query::series("s", (now - 1_000, now + 1), LIMITS);
    let e = plugin.query(&query, now).await.expect_err("the broker is down");
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");

    broker.restart().expect("restart");
    eventually(Duration::from_secs(20), || async {
        plugin.write(std::slice::from_ref(&during)).await?;
        let ids: Vec<String> = read_all(plugin.as_ref(), "s", now).await?.into_iter().map(|e| e.event_id).collect();
        ensure!(ids == ["before", "during"], "read {ids:?}");
        Ok(())
    })
    .await
    .expect("the same plugin works again once the broker is back");
}
