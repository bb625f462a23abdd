//! The pulsar plugin against brokers of its own (one per test, so they can
//! be stopped and restarted): durability of acknowledged writes across a
//! broker restart, and a broker outage that fails calls as UNAVAILABLE in
//! bounded time and heals on its own.

mod support;

use std::time::{Duration, Instant};

use anyhow::ensure;
use prism_plugin_api::conformance::support::{event, ts_namespace};
use prism_plugin_api::kv::PageLimits;
use prism_plugin_api::ts::{Event, TimeSeries};
use prism_plugin_api::{Micros, Namespace, Plugin, now_micros};
use prism_plugin_pulsar::PulsarPluginConfig;
use prism_proto::error::ErrorKind;
use prism_testkit::eventually;
use prism_testkit::pulsar::PulsarBroker;
use support::{Configured, settings};

const LIMITS: PageLimits = PageLimits { max_bytes: u64::MAX, max_items: None };

fn config() -> PulsarPluginConfig {
    PulsarPluginConfig { request_timeout: Duration::from_secs(3), connect_timeout: Duration::from_millis(500) }
}

async fn read_all(plugin: &Configured, ns: &Namespace, series: &str, now: Micros) -> anyhow::Result<Vec<Event>> {
    let page = plugin.read(ns, series, now - 3_600_000_000, now + 3_600_000_000, None, LIMITS, now).await?;
    Ok(page.events)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_a_broker_restart() {
    let mut broker = PulsarBroker::start().expect("start pulsar-lite");
    let plugin = Configured::new(settings(&broker.service_url()), config());
    let ns = ts_namespace(&plugin.plugin, "durable", None);
    plugin.provision(&ns).await.expect("provision");
    let now = now_micros();
    let written: Vec<Event> =
        (0..5).map(|i| event("s", now - i * 1_000, &format!("e{i}"), &[("k", &format!("v{i}"))], &[])).collect();
    plugin.write(&ns, &written).await.expect("write is acknowledged");

    broker.restart().expect("restart on the same data");

    // A fresh plugin (a gateway started after the restart) reads them all.
    let fresh = Configured::new(settings(&broker.service_url()), config());
    let events = eventually(Duration::from_secs(20), || read_all(&fresh, &ns, "s", now)).await.expect("read");
    assert_eq!(events, written, "every acknowledged event, newest first");
    // And the plugin that wrote them reconnects and reads them too.
    let events = eventually(Duration::from_secs(20), || read_all(&plugin, &ns, "s", now)).await.expect("read");
    assert_eq!(events, written);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_fails_calls_as_unavailable_in_bounded_time_and_heals() {
    let mut broker = PulsarBroker::start().expect("start pulsar-lite");
    let plugin = Configured::new(settings(&broker.service_url()), config());
    let ns = ts_namespace(&plugin.plugin, "outage", None);
    plugin.provision(&ns).await.expect("provision");
    let now = now_micros();
    let before = event("s", now, "before", &[("k", "v")], &[]);
    plugin.write(&ns, std::slice::from_ref(&before)).await.expect("write");

    broker.stop();
    let during = event("s", now - 1, "during", &[("k", "v")], &[]);
    let started = Instant::now();
    let e = plugin.write(&ns, std::slice::from_ref(&during)).await.expect_err("the broker is down");
    let took = started.elapsed();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(took <= config().request_timeout + Duration::from_secs(1), "failed only after {took:?}");
    let e = plugin.read(&ns, "s", now - 1_000, now + 1, None, LIMITS, now).await.expect_err("the broker is down");
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");

    broker.restart().expect("restart");
    eventually(Duration::from_secs(20), || async {
        plugin.write(&ns, std::slice::from_ref(&during)).await?;
        let ids: Vec<String> = read_all(&plugin, &ns, "s", now).await?.into_iter().map(|e| e.event_id).collect();
        ensure!(ids == ["before", "during"], "read {ids:?}");
        Ok(())
    })
    .await
    .expect("the same plugin works again once the broker is back");
}

/// End to end: a control plane and two gateways (built with the pulsar
/// feature) put a Pulsar namespace ACTIVE on the broker, and a client
/// writes events durably and reads them back through the gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_serves_a_pulsar_namespace() {
    use prism_proto::control::backend_config::Config;
    use prism_proto::control::{Abstraction, Backend, BackendConfig, NamespaceSpec};
    use prism_proto::timeseries as pb;

    let broker = support::broker();
    let spec = NamespaceSpec {
        abstraction: Abstraction::TimeSeries as i32,
        backend: Backend::Pulsar as i32,
        backend_config: Some(BackendConfig { config: Some(Config::Pulsar(settings(&broker.service_url()))) }),
        ..NamespaceSpec::default()
    };
    let cluster = prism_testkit::Cluster::start().await.expect("start a control plane and two gateways");
    let name = "acme/pulsar-events";
    let gateway = cluster.active_namespace(name, spec).await.expect("the namespace becomes ACTIVE");
    let mut ts =
        prism_client::time_series(&gateway.endpoint(), Some(&prism_testkit::admin_token())).await.expect("client");

    let seconds = now_micros() / 1_000_000;
    let at = |ago: i64| Some(prost_types::Timestamp { seconds: seconds - ago, nanos: 0 });
    let events: Vec<pb::Event> = (0..3)
        .map(|i| pb::Event {
            time_series_id: "sensor-1".into(),
            event_time: at(i),
            event_id: format!("e{i}"),
            items: vec![pb::EventItem { key: b"temp".to_vec(), value: format!("{}", 20 + i).into_bytes() }],
            tags: [("site".to_owned(), "lab".to_owned())].into(),
        })
        .collect();
    let write = pb::WriteEventRecordsRequest { namespace: name.into(), events: events.clone() };
    let accepted = ts.write_event_records_sync(write).await.expect("durable write").into_inner().accepted;
    assert_eq!(accepted, 3);

    let read = pb::ReadEventRecordsRequest {
        namespace: name.into(),
        time_series_id: "sensor-1".into(),
        start: at(60),
        end: at(-60),
        ..Default::default()
    };
    let got = ts.read_event_records(read).await.expect("read").into_inner();
    assert_eq!(got.events, events, "every event, newest first");
    assert!(got.next_page_token.is_empty());
}
