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
    // The namespace shows that the broker holds none of its policies:
    // Prism enforces retention itself (`plugins/pulsar/src/lib.rs`).
    let mut cp = cluster.control_plane.client().await.expect("control plane client");
    let ns = cp
        .get_namespace(prism_proto::control::GetNamespaceRequest { name: name.into() })
        .await
        .expect("get the namespace")
        .into_inner();
    let retention = ns.backend_settings.iter().find(|s| s.name == "retention").expect("a retention setting");
    assert!(retention.value.starts_with("not pushed"), "{retention:?}");
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
            schema_version: 0,
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

/// A read whose deadline is too short for the whole page returns the
/// events it has and a token (SPEC §3): the gateways charge 3 s for every
/// event a read puts on its page (a test-only setting, so the page ends
/// early whatever the machine's speed), and a 10 s deadline ends each page
/// after at most four. Following the tokens yields every event once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulsar_pages_end_at_the_callers_deadline() {
    let broker = PulsarBroker::start().expect("start pulsar-lite");
    let settings = PulsarConfig { service_url: broker.service_url(), topic: String::new() };
    let spec = NamespaceSpec {
        abstraction: Abstraction::TimeSeries as i32,
        backend: Backend::Pulsar as i32,
        backend_config: Some(Box::new(BackendConfig { config: Some(Config::Pulsar(settings)) })),
        ..NamespaceSpec::default()
    };
    let cluster =
        prism_testkit::Cluster::start_with(|c| c.limits.read_charge_per_item = std::time::Duration::from_secs(3))
            .await
            .expect("start a control plane and two gateways");
    let name = "acme/pulsar-paced";
    let gateway = cluster.active_namespace(name, spec).await.expect("the namespace becomes ACTIVE");
    let mut ts =
        prism_client::time_series(&gateway.endpoint(), Some(&prism_testkit::admin_token())).await.expect("client");
    let seconds = now_micros() / 1_000_000;
    let at = |ago: i64| Some(prost_types::Timestamp { seconds: seconds - ago, nanos: 0 });
    let events: Vec<pb::Event> = (0..10)
        .map(|i| pb::Event {
            time_series_id: "sensor-1".into(),
            event_time: at(i),
            event_id: format!("e{i}"),
            items: vec![pb::EventItem { key: b"temp".to_vec(), value: b"20".to_vec() }],
            tags: Default::default(),
            schema_version: 0,
        })
        .collect();
    let write = pb::WriteEventRecordsRequest { namespace: name.into(), events: events.clone() };
    ts.write_event_records_sync(write).await.expect("durable write");

    let (mut got, mut sizes, mut token) = (Vec::new(), Vec::new(), String::new());
    loop {
        let read = pb::ReadEventRecordsRequest {
            namespace: name.into(),
            time_series_id: "sensor-1".into(),
            start: at(60),
            end: at(-60),
            page_token: token,
            ..Default::default()
        };
        let mut request = tonic::Request::new(read);
        request.set_timeout(std::time::Duration::from_secs(10));
        let page = ts.read_event_records(request).await.expect("read").into_inner();
        sizes.push(page.events.len());
        got.extend(page.events.into_iter().map(|e| e.event_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let (_, early) = sizes.split_last().unwrap_or((&0, &[]));
    assert!(sizes.len() >= 3 && early.iter().all(|n| (1..=4).contains(n)), "pages of {sizes:?}");
    assert_eq!(got, (0..10).map(|i| format!("e{i}")).collect::<Vec<_>>(), "every event once, newest first");
}
