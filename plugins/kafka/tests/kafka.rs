//! The kafka plugin against a real broker (tansu): outages, the layout on
//! the broker, and the plugin serving a namespace through a real gateway.

mod support;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use prism_plugin_api::PluginError;
use prism_plugin_api::conformance::Case;
use prism_plugin_api::conformance::support::{MINUTE, UNLIMITED, event};
use prism_plugin_api::ts::Query;
use prism_plugin_kafka::KafkaPluginConfig;
use prism_proto::control::backend_config::Config;
use prism_proto::control::{Abstraction, Backend, BackendConfig, NamespaceSpec, Policies};
use prism_proto::timeseries as ts;
use prism_testkit::kafka::{KafkaBroker, skip_reason};
use prism_testkit::{Cluster, GatewayHandle, admin_token, eventually};
use support::{broker_or_skip, settings, subject};
use tonic::Code;

/// The broker shared by this binary, or return after saying why not.
macro_rules! broker_or_skip {
    () => {
        match broker_or_skip() {
            Some(broker) => broker,
            None => {
                println!("{}", skip_reason());
                return;
            }
        }
    };
}

/// A broker of this test's own (it will be stopped), or return.
macro_rules! own_broker_or_skip {
    () => {
        match KafkaBroker::start_or_skip().expect("start a broker of this test's own") {
            Some(broker) => broker,
            None => {
                println!("{}", skip_reason());
                return;
            }
        }
    };
}

fn ids(events: &[prism_plugin_api::ts::Event]) -> Vec<&str> {
    events.iter().map(|e| e.event_id.as_str()).collect()
}

/// While the broker is down, writes and reads fail with Unavailable within
/// bounded time, naming no address; once a broker is back on the same
/// address (tansu keeps nothing in memory across a restart, so it comes
/// back empty) the plugin creates the namespace's topic again by itself
/// and serves writes and reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_fails_writes_in_bounded_time_and_heals_by_itself() {
    let mut broker = own_broker_or_skip!();
    let config = KafkaPluginConfig {
        message_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(2),
        ..KafkaPluginConfig::default()
    };
    let subject = subject(settings(&broker.bootstrap(), 2), config);
    let c = Case::provision_ts(&subject, "outage").await;
    let t = c.base - MINUTE;
    c.write(&[event("s", t, "before", &[("k", "v")], &[])]).await;
    assert_eq!(ids(&c.series("s").await), ["before"]);

    broker.stop();
    let ts = c.ts();
    // Bounded: the plugin's own timeouts (2 s each step here) end every
    // call well before this; how long is printed, not asserted (no timing
    // assertions in tests).
    let bound = Duration::from_secs(30);
    let during = [event("s", t + 1, "during", &[("k", "v")], &[])];
    for attempt in 0..2 {
        let started = std::time::Instant::now();
        let got = tokio::time::timeout(bound, ts.write(&during)).await.expect("a write returns");
        let error = got.expect_err("a write fails while the broker is down");
        assert!(matches!(error, PluginError::Unavailable { .. }), "write {attempt}: {error:?}");
        assert!(error.could_retry());
        let message = error.report().message;
        assert!(!message.contains(&broker.port().to_string()), "the message names the broker: {message}");
        println!("write {attempt} failed after {:?}", started.elapsed());
    }
    let got = tokio::time::timeout(bound, ts.query(&Query::series("s", (i64::MIN, i64::MAX), UNLIMITED), c.base))
        .await
        .expect("a read returns");
    assert!(matches!(got, Err(PluginError::Unavailable { .. })), "read: {got:?}");

    broker.restart().expect("restart the broker");
    let after = [event("s", t + 2, "after", &[("k", "v")], &[])];
    let after_ref = &after;
    eventually(Duration::from_secs(60), || async move { Ok(ts.write(after_ref).await?) })
        .await
        .expect("writes work again once the broker is back");
    assert_eq!(ids(&c.series("s").await), ["after"], "the restarted (in-memory) broker kept nothing else");
    c.finish().await;
}

/// A series lives in the one partition its id hashes to, a topic per
/// incarnation, and deprovisioning removes the topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_of_one_series_finds_it_in_its_partition_among_many() {
    let broker = broker_or_skip!();
    let subject = subject(settings(&broker.bootstrap(), 8), KafkaPluginConfig::default());
    let c = Case::provision_ts(&subject, "partitions").await;
    let events: Vec<_> = (0..40)
        .map(|i| event(&format!("series-{}", i % 10), c.base - i * MINUTE, &format!("e{i}"), &[("i", "x")], &[]))
        .collect();
    c.write(&events).await;
    for s in 0..10 {
        let got = c.series(&format!("series-{s}")).await;
        let want: Vec<String> = (0..40).filter(|i| i % 10 == s).map(|i| format!("e{i}")).collect();
        assert_eq!(ids(&got), want, "series-{s}");
    }
    assert_eq!(c.matching(None).await.len(), 40);
    c.finish().await;
}

fn kafka_spec(bootstrap: &str, accept_loss: bool) -> NamespaceSpec {
    NamespaceSpec {
        abstraction: Abstraction::TimeSeries as i32,
        backend: Backend::Kafka as i32,
        backend_config: Some(Box::new(BackendConfig { config: Some(Config::Kafka(settings(bootstrap, 3))) })),
        policies: Some(Box::new(Policies { accept_loss, ..Default::default() })),
        ..Default::default()
    }
}

fn now_secs() -> i64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs() as i64
}

fn proto_event(series: &str, secs_ago: i64, id: &str, tags: &[(&str, &str)]) -> ts::Event {
    ts::Event {
        schema_version: 0,
        time_series_id: series.into(),
        event_time: Some(prost_types::Timestamp { seconds: now_secs() - secs_ago, nanos: 1_000 }),
        event_id: id.into(),
        items: vec![ts::EventItem { key: b"v".to_vec(), value: id.as_bytes().to_vec() }],
        tags: tags.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect::<HashMap<_, _>>(),
    }
}

fn write(ns: &str, events: Vec<ts::Event>) -> ts::WriteEventRecordsRequest {
    ts::WriteEventRecordsRequest { namespace: ns.into(), events }
}

fn proto_ids(events: &[ts::Event]) -> Vec<&str> {
    events.iter().map(|e| e.event_id.as_str()).collect()
}

type Client = ts::time_series_service_client::TimeSeriesServiceClient<tonic::transport::Channel>;

async fn client(gw: &GatewayHandle) -> Client {
    let channel = gw.channel().await.expect("connect");
    ts::time_series_service_client::TimeSeriesServiceClient::new(channel)
}

fn authed<T>(message: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    if let Ok(v) = format!("Bearer {}", admin_token()).parse() {
        req.metadata_mut().insert("authorization", v);
    }
    req
}

/// Through a real gateway: the owning shard provisions the namespace's
/// topic; WriteEventRecordsSync, ReadEventRecords and SearchEventRecords
/// serve it; bad events are refused with the field and store nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_serves_a_kafka_namespace() {
    let broker = broker_or_skip!();
    let cluster = Cluster::start().await.expect("start a control plane and two gateways");
    let ns = "acme/kafka-events";
    let gw = cluster.active_namespace(ns, kafka_spec(&broker.bootstrap(), false)).await.expect("ACTIVE");
    let mut c = client(gw).await;
    let events = vec![
        proto_event("user-1", 30, "a", &[("kind", "play")]),
        proto_event("user-1", 20, "b", &[("kind", "pause")]),
        proto_event("user-1", 10, "c", &[("kind", "play")]),
        proto_event("user-2", 15, "d", &[("kind", "play")]),
    ];
    let written = c.write_event_records_sync(authed(write(ns, events.clone()))).await.expect("write").into_inner();
    assert_eq!(written.accepted, 4);
    let mut changed = events[0].clone();
    changed.items[0].value = b"changed".to_vec();
    c.write_event_records_sync(authed(write(ns, vec![changed]))).await.expect("rewrite");

    let read = |limit, page_token: String| ts::ReadEventRecordsRequest {
        namespace: ns.into(),
        time_series_id: "user-1".into(),
        limit,
        page_token,
        ..Default::default()
    };
    let all = c.read_event_records(authed(read(0, String::new()))).await.expect("read").into_inner();
    assert_eq!(proto_ids(&all.events), ["c", "b", "a"], "newest first");
    assert_eq!(all.events[2].items[0].value, b"a", "the first write of an identity wins");
    assert_eq!(all.events[0].event_time, events[2].event_time, "the time comes back to the microsecond");
    let first = c.read_event_records(authed(read(2, String::new()))).await.expect("page 1").into_inner();
    assert_eq!(proto_ids(&first.events), ["c", "b"]);
    let rest = c.read_event_records(authed(read(2, first.next_page_token))).await.expect("page 2").into_inner();
    assert_eq!(proto_ids(&rest.events), ["a"]);
    assert!(rest.next_page_token.is_empty());

    let play = ts::TagFilter {
        filter: Some(ts::tag_filter::Filter::Equals(ts::TagEquals { key: "kind".into(), value: "play".into() })),
    };
    let search = ts::SearchEventRecordsRequest { namespace: ns.into(), filter: Some(play), ..Default::default() };
    let found = c.search_event_records(authed(search)).await.expect("search").into_inner();
    assert_eq!(proto_ids(&found.events), ["c", "d", "a"]);

    // Refused by the gateway before the plugin: nothing is stored.
    let e = c
        .write_event_records_sync(authed(write(ns, vec![proto_event("user-3", 7200, "old", &[])])))
        .await
        .expect_err("an event older than the accept window");
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = c
        .write_event_records(authed(write(ns, vec![proto_event("user-3", 0, "buffered", &[])])))
        .await
        .expect_err("buffered writes need a loss-tolerant namespace");
    assert_eq!(e.code(), Code::FailedPrecondition);
    let read3 =
        ts::ReadEventRecordsRequest { namespace: ns.into(), time_series_id: "user-3".into(), ..Default::default() };
    assert!(c.read_event_records(authed(read3)).await.expect("read").into_inner().events.is_empty());
}

/// Buffered writes while the broker is down are held, not dropped, and
/// flushed once it is back; synchronous writes meanwhile fail with
/// UNAVAILABLE. The restarted broker is empty (in memory): the plugin
/// creates the namespace's topic again, so what is read afterwards is
/// exactly what the buffer held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_writes_wait_out_an_outage() {
    let mut broker = own_broker_or_skip!();
    let cluster = Cluster::start().await.expect("start a control plane and two gateways");
    let ns = "acme/kafka-buffered";
    let gw = cluster.active_namespace(ns, kafka_spec(&broker.bootstrap(), true)).await.expect("ACTIVE");
    let mut c = client(gw).await;
    c.write_event_records_sync(authed(write(ns, vec![proto_event("s", 5, "before", &[])]))).await.expect("write");

    broker.stop();
    let e = c
        .write_event_records_sync(authed(write(ns, vec![proto_event("s", 4, "sync", &[])])))
        .await
        .expect_err("a synchronous write fails while the broker is down");
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    let held = vec![proto_event("s", 3, "held-1", &[]), proto_event("s", 2, "held-2", &[])];
    let accepted = c.write_event_records(authed(write(ns, held))).await.expect("accepted into the buffer");
    assert_eq!(accepted.into_inner().accepted, 2);
    let stats = &gw.gateway.buffer.stats;
    assert_eq!(stats.flushed.load(Ordering::Relaxed), 0, "nothing can be flushed while the broker is down");

    broker.restart().expect("restart the broker");
    let read = ts::ReadEventRecordsRequest { namespace: ns.into(), time_series_id: "s".into(), ..Default::default() };
    let got = eventually(Duration::from_secs(90), || {
        let (mut c, read) = (c.clone(), read.clone());
        async move {
            let events = c.read_event_records(authed(read)).await?.into_inner().events;
            anyhow::ensure!(events.len() >= 2, "{} of 2 flushed", events.len());
            Ok(events)
        }
    })
    .await
    .expect("the held events are flushed once the broker is back");
    assert_eq!(proto_ids(&got), ["held-2", "held-1"]);
    assert_eq!(stats.flushed.load(Ordering::Relaxed), 2);
    assert_eq!(stats.dropped.load(Ordering::Relaxed), 0);
}

/// A namespace whose brokers cannot be reached ends up DEGRADED, with a
/// reason that does not name the brokers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_degrades_the_namespace_without_naming_it() {
    use prism_proto::control::{CreateNamespaceRequest, CreateTenantRequest, GetNamespaceRequest, NamespaceStatus};
    // Nothing listens on a port just released.
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let cluster = Cluster::start().await.expect("start a control plane and two gateways");
    let mut cp = cluster.control_plane.client().await.expect("control plane client");
    cp.create_tenant(CreateTenantRequest { tenant_id: "acme".into(), ..Default::default() }).await.expect("tenant");
    let name = "acme/kafka-unreachable";
    let spec = kafka_spec(&format!("127.0.0.1:{port}"), false);
    cp.create_namespace(CreateNamespaceRequest { name: name.into(), spec: Some(spec) }).await.expect("create");
    let reason = eventually(Duration::from_secs(60), || {
        let mut cp = cp.clone();
        async move {
            let ns = cp.get_namespace(GetNamespaceRequest { name: name.into() }).await?.into_inner();
            anyhow::ensure!(ns.status == NamespaceStatus::Degraded as i32, "status {}", ns.status);
            Ok(ns.status_reason)
        }
    })
    .await
    .expect("the namespace becomes DEGRADED");
    assert!(reason.contains("unavailable"), "{reason}");
    assert!(!reason.contains(&port.to_string()), "the reason names the broker: {reason}");
}

/// A feed follows the topic from its end: it sees, in order per series,
/// what this plugin, another plugin (another gateway) and a bare producer
/// (encoding as the plugin does) append after it started, each event
/// whole; nothing written before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_sees_every_producer_of_the_topic() {
    use rdkafka::ClientConfig;
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use rdkafka::util::Timeout;

    let broker = broker_or_skip!();
    let subject = subject(settings(&broker.bootstrap(), 2), KafkaPluginConfig::default());
    let c = Case::provision_ts(&subject, "follow").await;
    let t = c.base - MINUTE;
    c.write(&[event("s", t, "before", &[("k", "v")], &[])]).await;
    assert!(c.ts().follows());
    let mut feed = c.ts().follow().await.expect("follow");

    let here = event("s", t + 1, "here", &[("k", "1")], &[("site", "a")]);
    c.write(std::slice::from_ref(&here)).await;
    let other_gateway = support::subject(settings(&broker.bootstrap(), 2), KafkaPluginConfig::default());
    let other = other_gateway.plugin.time_series().expect("time series").open(&c.ns).expect("open");
    let there = event("s", t + 2, "there", &[("k", "2")], &[]);
    other.write(std::slice::from_ref(&there)).await.expect("write through another plugin");
    let direct = event("s", t + 3, "direct", &[("k", "3"), ("j", "4")], &[("site", "b")]);
    let producer: FutureProducer =
        ClientConfig::new().set("bootstrap.servers", broker.bootstrap()).create().expect("a producer");
    let topic = prism_plugin_kafka::codec::topic(&c.ns);
    let payload = prism_plugin_kafka::codec::encode(&direct);
    let record =
        FutureRecord::to(&topic).key("s").payload(&payload).partition(prism_plugin_kafka::codec::partition("s", 2));
    producer.send(record, Timeout::After(Duration::from_secs(10))).await.expect("a direct produce");

    let got = prism_plugin_api::conformance::support::from_feed(&mut feed, 3).await;
    assert_eq!(got, vec![here, there, direct]);
    // Deleting the topic stops the feed's reader first (a fetch in
    // flight on a deleted topic crashes librdkafka), feed dropped or not.
    c.finish().await;
    let end = tokio::time::timeout(Duration::from_secs(30), futures_util::StreamExt::next(&mut feed)).await;
    assert!(matches!(end, Ok(None)), "the feed ends once its reader stopped");
}

/// A feed whose broker goes away does not wait silently: once the broker
/// has failed for longer than the request timeout, it ends with
/// Unavailable, naming no address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_ends_unavailable_when_its_broker_stays_away() {
    use futures_util::StreamExt;
    let mut broker = own_broker_or_skip!();
    let config = KafkaPluginConfig {
        message_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(2),
        ..KafkaPluginConfig::default()
    };
    let subject = subject(settings(&broker.bootstrap(), 1), config);
    let c = Case::provision_ts(&subject, "follow-outage").await;
    let mut feed = c.ts().follow().await.expect("follow");
    broker.stop();
    let end = tokio::time::timeout(Duration::from_secs(60), feed.next()).await.expect("the feed ends within 60 s");
    match end {
        Some(Err(e @ PluginError::Unavailable { .. })) => {
            let message = e.report().message;
            assert!(!message.contains(&broker.port().to_string()), "the message names the broker: {message}");
        }
        other => panic!("the feed ends with Unavailable: {other:?}"),
    }
}
