//! A gateway built with the `pulsar` feature serves Pulsar namespaces end
//! to end, against a pulsar-lite broker the test starts. It lives here, not
//! in `plugins/pulsar`, because plugins know only the plugin API (their
//! tests included): a test that needs the gateway itself, or one of its
//! features, is the gateway's.
//!
//! `cargo test -p prism-gateway --features pulsar --test pulsar`
//! (`scripts/test.sh` runs it); without the feature the binary is empty
//! and `without_pulsar.rs` checks the other side.
#![cfg(feature = "pulsar")]

use prism_plugin_api::now_micros;
use prism_proto::control::backend_config::Config;
use prism_proto::control::{Abstraction, Backend, BackendConfig, NamespaceSpec, PulsarConfig};
use prism_proto::timeseries as pb;
use prism_testkit::pulsar::PulsarBroker;

/// End to end: a control plane and two gateways (built with the pulsar
/// feature) put a Pulsar namespace ACTIVE on the broker, and a client
/// writes events durably and reads them back through the gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_serves_a_pulsar_namespace() {
    let broker = PulsarBroker::start().expect("start pulsar-lite");
    let settings = PulsarConfig { service_url: broker.service_url(), topic: String::new() };
    let spec = NamespaceSpec {
        abstraction: Abstraction::TimeSeries as i32,
        backend: Backend::Pulsar as i32,
        backend_config: Some(Box::new(BackendConfig { config: Some(Config::Pulsar(settings)) })),
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
