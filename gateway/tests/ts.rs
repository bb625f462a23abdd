//! TimeSeries end to end: a control plane and two gateway shards in
//! process, driven over gRPC.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use prism_proto::control::{Abstraction, Backend, NamespaceSpec, Policies};
use prism_proto::timeseries::{self as ts, tag_filter};
use prism_testkit::{Cluster, GatewayHandle, admin_token, eventually};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_types::StatusExt;

fn ts_spec(accept_loss: bool) -> NamespaceSpec {
    NamespaceSpec {
        abstraction: Abstraction::TimeSeries as i32,
        backend: Backend::Embedded as i32,
        policies: Some(Box::new(Policies { accept_loss, ..Default::default() })),
        ..Default::default()
    }
}

fn now_secs() -> i64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs() as i64
}

fn event(series: &str, secs_ago: i64, id: &str, tags: &[(&str, &str)]) -> ts::Event {
    ts::Event {
        schema_version: 0,
        time_series_id: series.into(),
        event_time: Some(prost_types::Timestamp { seconds: now_secs() - secs_ago, nanos: 0 }),
        event_id: id.into(),
        items: vec![ts::EventItem { key: b"v".to_vec(), value: id.as_bytes().to_vec() }],
        tags: tags.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect::<HashMap<_, _>>(),
    }
}

fn write(ns: &str, events: Vec<ts::Event>) -> ts::WriteEventRecordsRequest {
    ts::WriteEventRecordsRequest { namespace: ns.into(), events }
}

fn ids(events: &[ts::Event]) -> Vec<&str> {
    events.iter().map(|e| e.event_id.as_str()).collect()
}

fn bad_field(status: &tonic::Status) -> String {
    status
        .get_details_bad_request()
        .and_then(|b| b.field_violations.first().map(|v| v.field.clone()))
        .unwrap_or_default()
}

async fn client(
    gw: &GatewayHandle,
) -> anyhow::Result<ts::time_series_service_client::TimeSeriesServiceClient<tonic::transport::Channel>> {
    let channel = prism_client::endpoint(&gw.endpoint())?.connect().await?;
    Ok(ts::time_series_service_client::TimeSeriesServiceClient::new(channel))
}

fn authed<T>(message: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    if let Ok(v) = format!("Bearer {}", admin_token()).parse() {
        req.metadata_mut().insert("authorization", v);
    }
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_read_search_and_page_events() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let gw = cluster.active_namespace("acme/events", ts_spec(false)).await?;
    let mut c = client(gw).await?;
    let ns = "acme/events";
    let events = vec![
        event("user-1", 30, "a", &[("kind", "play")]),
        event("user-1", 20, "b", &[("kind", "pause")]),
        event("user-1", 10, "c", &[("kind", "play"), ("device", "tv")]),
        event("user-2", 15, "d", &[("kind", "play")]),
    ];
    let written = c.write_event_records_sync(authed(write(ns, events.clone()))).await?.into_inner();
    assert_eq!(written.accepted, 4);
    // Writing an event identity again is a no-op.
    let mut changed = events[0].clone();
    changed.items[0].value = b"changed".to_vec();
    c.write_event_records_sync(authed(write(ns, vec![changed]))).await?;

    let read = |limit| ts::ReadEventRecordsRequest {
        namespace: ns.into(),
        time_series_id: "user-1".into(),
        limit,
        ..Default::default()
    };
    let all = c.read_event_records(authed(read(0))).await?.into_inner();
    assert_eq!(ids(&all.events), ["c", "b", "a"], "newest first");
    assert_eq!(all.events[2].items[0].value, b"a", "the first write of an identity wins");
    assert_eq!(all.events[0].tags.get("device").map(String::as_str), Some("tv"));

    let first = c.read_event_records(authed(read(2))).await?.into_inner();
    assert_eq!(ids(&first.events), ["c", "b"]);
    let mut next = read(2);
    next.page_token = first.next_page_token.clone();
    assert_eq!(ids(&c.read_event_records(authed(next)).await?.into_inner().events), ["a"]);
    let mut forged = read(2);
    forged.page_token = format!("{}A", first.next_page_token);
    let e = c.read_event_records(authed(forged)).await.expect_err("forged token");
    assert_eq!((e.code(), bad_field(&e).as_str()), (Code::InvalidArgument, "page_token"));

    let filter = ts::TagFilter {
        filter: Some(tag_filter::Filter::And(ts::TagFilterList {
            filters: vec![
                ts::TagFilter {
                    filter: Some(tag_filter::Filter::Equals(ts::TagEquals {
                        key: "kind".into(),
                        value: "play".into(),
                    })),
                },
                ts::TagFilter {
                    filter: Some(tag_filter::Filter::In(ts::TagIn {
                        key: "device".into(),
                        values: vec!["tv".into(), "phone".into()],
                    })),
                },
            ],
        })),
    };
    let search = ts::SearchEventRecordsRequest { namespace: ns.into(), filter: Some(filter), ..Default::default() };
    assert_eq!(ids(&c.search_event_records(authed(search)).await?.into_inner().events), ["c"]);
    let everything = ts::SearchEventRecordsRequest { namespace: ns.into(), ..Default::default() };
    assert_eq!(ids(&c.search_event_records(authed(everything)).await?.into_inner().events), ["c", "d", "b", "a"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_events_and_filters_are_refused_with_the_field() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let gw = cluster.active_namespace("acme/strict", ts_spec(false)).await?;
    let mut c = client(gw).await?;
    let ns = "acme/strict";
    let mut no_time = event("s", 0, "e", &[]);
    no_time.event_time = None;
    let cases = vec![
        (vec![event("s", 7200, "old", &[])], "events[0].event_time"),
        (vec![no_time], "events[0].event_time"),
        (vec![event("", 0, "e", &[])], "events[0].time_series_id"),
        (vec![event("s", 0, "a\0b", &[])], "events[0].event_id"),
        (vec![event("s", 0, "e", &[("", "v")])], "events[0].tags"),
        (vec![], "events"),
    ];
    for (events, field) in cases {
        let e = c.write_event_records_sync(authed(write(ns, events))).await.expect_err("refused");
        assert_eq!((e.code(), bad_field(&e).as_str()), (Code::InvalidArgument, field), "{e:?}");
    }
    let empty_and = ts::TagFilter { filter: Some(tag_filter::Filter::And(ts::TagFilterList { filters: vec![] })) };
    let search = ts::SearchEventRecordsRequest { namespace: ns.into(), filter: Some(empty_and), ..Default::default() };
    let e = c.search_event_records(authed(search)).await.expect_err("empty and");
    assert_eq!(bad_field(&e), "filter.and.filters");
    let t = |s| Some(prost_types::Timestamp { seconds: s, nanos: 0 });
    let backwards = ts::ReadEventRecordsRequest {
        namespace: ns.into(),
        time_series_id: "s".into(),
        start: t(10),
        end: t(5),
        ..Default::default()
    };
    assert_eq!(bad_field(&c.read_event_records(authed(backwards)).await.expect_err("end before start")), "end");
    // Buffered writes need a loss-tolerant namespace.
    let e = c.write_event_records(authed(write(ns, vec![event("s", 0, "e", &[])]))).await.expect_err("no loss allowed");
    assert_eq!(e.code(), Code::FailedPrecondition);
    // Nothing was stored.
    let read = ts::ReadEventRecordsRequest { namespace: ns.into(), time_series_id: "s".into(), ..Default::default() };
    assert!(c.read_event_records(authed(read)).await?.into_inner().events.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_writes_are_flushed_and_a_full_buffer_refuses() -> anyhow::Result<()> {
    let cluster = Cluster::start_with(|c| c.limits.write_buffer_events = 4).await?;
    let gw = cluster.active_namespace("acme/lossy", ts_spec(true)).await?;
    let mut c = client(gw).await?;
    let ns = "acme/lossy";
    let accepted =
        c.write_event_records(authed(write(ns, vec![event("s", 1, "e1", &[]), event("s", 0, "e2", &[])]))).await?;
    assert_eq!(accepted.into_inner().accepted, 2);
    let read = ts::ReadEventRecordsRequest { namespace: ns.into(), time_series_id: "s".into(), ..Default::default() };
    eventually(Duration::from_secs(10), || {
        let (mut c, read) = (c.clone(), read.clone());
        async move {
            let events = c.read_event_records(authed(read)).await?.into_inner().events;
            anyhow::ensure!(events.len() == 2, "{} of 2 flushed", events.len());
            Ok(())
        }
    })
    .await?;
    let too_many: Vec<_> = (0..5).map(|i| event("s", 0, &format!("x{i}"), &[])).collect();
    let e = c.write_event_records(authed(write(ns, too_many))).await.expect_err("buffer full");
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(e.get_details_retry_info().is_some(), "says when to retry");
    let stats = &gw.gateway.buffer.stats;
    assert_eq!(stats.flushed.load(std::sync::atomic::Ordering::Relaxed), 2);
    assert_eq!(stats.dropped.load(std::sync::atomic::Ordering::Relaxed), 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tails_stream_new_events_of_their_series() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let gw = cluster.active_namespace("acme/live", ts_spec(false)).await?;
    let mut c = client(gw).await?;
    let ns = "acme/live";
    let tail = ts::TailEventRecordsRequest { namespace: ns.into(), time_series_id: "wanted".into(), filter: None };
    let mut stream = c.tail_event_records(authed(tail)).await?.into_inner();
    // The subscription exists once the response headers are back; events
    // written from now on reach it.
    c.write_event_records_sync(authed(write(ns, vec![event("other", 0, "x", &[]), event("wanted", 0, "y", &[])])))
        .await?;
    let got = tokio::time::timeout(Duration::from_secs(10), stream.next()).await?.context("stream ended")??;
    assert_eq!(ids(&got.events), ["y"]);

    // A KeyValue namespace is not a TimeSeries one.
    let kv = NamespaceSpec {
        abstraction: Abstraction::KeyValue as i32,
        backend: Backend::Embedded as i32,
        ..Default::default()
    };
    let kv_gw = cluster.active_namespace("acme/kv", kv).await?;
    let e = client(kv_gw)
        .await?
        .write_event_records_sync(authed(write("acme/kv", vec![event("s", 0, "e", &[])])))
        .await
        .expect_err("kv");
    assert_eq!((e.code(), bad_field(&e).as_str()), (Code::InvalidArgument, "namespace"));
    Ok(())
}

/// A descriptor set of `acme.v1.Reading { double celsius = 1; }`.
fn reading_descriptor_set() -> Vec<u8> {
    use prost::Message;
    use prost_types::field_descriptor_proto::{Label, Type};
    prost_types::FileDescriptorSet {
        file: vec![prost_types::FileDescriptorProto {
            name: Some("reading.proto".into()),
            package: Some("acme.v1".into()),
            syntax: Some("proto3".into()),
            message_type: vec![prost_types::DescriptorProto {
                name: Some("Reading".into()),
                field: vec![prost_types::FieldDescriptorProto {
                    name: Some("celsius".into()),
                    number: Some(1),
                    r#type: Some(Type::Double as i32),
                    label: Some(Label::Optional as i32),
                    json_name: Some("celsius".into()),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

fn sensor_schema() -> prism_proto::control::EventSchema {
    use prism_proto::control::{ItemSchema, ItemType, JsonType, ProtobufType, item_type::Kind};
    let item = |key: &str, kind: Kind, required: bool| ItemSchema {
        key: key.into(),
        r#type: Some(ItemType { kind: Some(kind) }),
        required,
    };
    prism_proto::control::EventSchema {
        items: vec![
            item("temp", Kind::Float64(Default::default()), true),
            item("doc", Kind::Json(JsonType { json_schema: r#"{"type":"object","required":["a"]}"#.into() }), false),
            item(
                "pb",
                Kind::Protobuf(ProtobufType {
                    descriptor_set: reading_descriptor_set(),
                    message_name: "acme.v1.Reading".into(),
                }),
                false,
            ),
        ],
        required_tags: vec!["region".into()],
        allowed_tags: vec!["host".into()],
    }
}

/// An event of `acme/sensors`: `temp` plus `extra` items, and `tags`.
fn reading(id: &str, extra: &[(&str, &[u8])], tags: &[(&str, &str)]) -> ts::Event {
    let mut e = event("probe-1", 5, id, tags);
    e.items = vec![ts::EventItem { key: b"temp".to_vec(), value: 21.5f64.to_be_bytes().to_vec() }];
    e.items.extend(extra.iter().map(|(k, v)| ts::EventItem { key: k.as_bytes().to_vec(), value: v.to_vec() }));
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemas_validate_writes_and_reads_tell_each_events_version() -> anyhow::Result<()> {
    use prism_proto::control::{Compatibility, SetSchemaRequest};
    let cluster = Cluster::start().await?;
    let ns = "acme/sensors";
    let gw = cluster.active_namespace(ns, ts_spec(false)).await?;
    let mut c = client(gw).await?;
    let mut cp = cluster.control_plane.client().await?;

    // Before any schema: anything goes, and the event has no version.
    c.write_event_records_sync(authed(write(ns, vec![event("probe-1", 9, "before", &[])]))).await?;

    let set = |schema| SetSchemaRequest {
        name: ns.into(),
        schema: Some(schema),
        compatibility: Compatibility::Backward as i32,
        expected_revision: 0,
    };
    let v1 = cp.set_schema(set(sensor_schema())).await?.into_inner();
    gw.caught_up(v1.revision).await?;

    let pb = [&[0x09u8][..], &3.5f64.to_le_bytes()].concat();
    let good = vec![
        reading("good-1", &[("doc", br#"{"a":1}"#)], &[("region", "eu")]),
        reading("good-2", &[("pb", &pb)], &[("region", "eu"), ("host", "h1")]),
    ];
    let written = c.write_event_records_sync(authed(write(ns, good.clone()))).await?.into_inner();
    assert_eq!(written.accepted, 2);

    // Each kind of bad event, second in its request after a good one:
    // refused naming events[1] and the item or tag, nothing stored.
    let mut missing_temp = reading("bad", &[], &[("region", "eu")]);
    missing_temp.items.clear();
    let mut wrong_type = reading("bad", &[], &[("region", "eu")]);
    wrong_type.items[0].value = b"hot".to_vec();
    let cases = vec![
        (wrong_type, "events[1].items[0]", "\"temp\""),
        (missing_temp, "events[1].items", "\"temp\""),
        (reading("bad", &[("other", b"x")], &[("region", "eu")]), "events[1].items[1]", "\"other\""),
        (reading("bad", &[("doc", b"{\"b\":1}")], &[("region", "eu")]), "events[1].items[1]", "JSON Schema"),
        (reading("bad", &[("doc", b"not json")], &[("region", "eu")]), "events[1].items[1]", "not JSON"),
        (reading("bad", &[("pb", &[0x09, 0x01])], &[("region", "eu")]), "events[1].items[1]", "acme.v1.Reading"),
        (reading("bad", &[], &[("region", "eu"), ("zone", "a")]), "events[1].tags[zone]", "\"zone\""),
        (reading("bad", &[], &[]), "events[1].tags", "\"region\""),
        (
            reading("bad", &[], &[("region", "eu"), ("prism:schema-version", "9")]),
            "events[1].tags[prism:schema-version]",
            "reserved",
        ),
    ];
    for (bad, field, named) in cases {
        let request = write(ns, vec![reading("ok-too", &[], &[("region", "eu")]), bad]);
        let e = c.write_event_records_sync(authed(request)).await.expect_err("refused");
        assert_eq!((e.code(), bad_field(&e).as_str()), (Code::InvalidArgument, field), "{e:?}");
        let description = e.get_details_bad_request().and_then(|b| b.field_violations.first().cloned());
        assert!(description.is_some_and(|v| v.description.contains(named)), "{field}: {e:?}");
    }

    // A compatible version 2 (an optional item more); later events are
    // written under it, and each event reads back with its own version.
    let mut next = sensor_schema();
    next.items.push(prism_proto::control::ItemSchema {
        key: b"note".to_vec(),
        r#type: Some(prism_proto::control::ItemType {
            kind: Some(prism_proto::control::item_type::Kind::Utf8(Default::default())),
        }),
        required: false,
    });
    let v2 = cp.set_schema(set(next)).await?.into_inner();
    gw.caught_up(v2.revision).await?;
    let mut late = reading("late", &[("note", b"hello")], &[("region", "us")]);
    late.event_time = Some(prost_types::Timestamp { seconds: now_secs() - 1, nanos: 0 });
    c.write_event_records_sync(authed(write(ns, vec![late]))).await?;

    let read =
        ts::ReadEventRecordsRequest { namespace: ns.into(), time_series_id: "probe-1".into(), ..Default::default() };
    let events = c.read_event_records(authed(read)).await?.into_inner().events;
    let mut seen: Vec<(&str, u32)> = events.iter().map(|e| (e.event_id.as_str(), e.schema_version)).collect();
    seen.sort();
    assert_eq!(seen, [("before", 0), ("good-1", 1), ("good-2", 1), ("late", 2)], "nothing of a refused request");
    assert!(events.iter().all(|e| !e.tags.keys().any(|k| k.starts_with("prism:"))), "{events:?}");
    let good_2 = events.iter().find(|e| e.event_id == "good-2");
    assert_eq!(good_2.and_then(|e| e.tags.get("host")).map(String::as_str), Some("h1"));

    // Buffered writes are validated before they are accepted too.
    let lossy = "acme/lossy-sensors";
    let gw = cluster.active_namespace(lossy, ts_spec(true)).await?;
    let mut c = client(gw).await?;
    let set = SetSchemaRequest { name: lossy.into(), ..set(sensor_schema()) };
    gw.caught_up(cp.set_schema(set).await?.into_inner().revision).await?;
    let bad = write(lossy, vec![reading("ok", &[], &[("region", "eu")]), reading("bad", &[], &[])]);
    let e = c.write_event_records(authed(bad)).await.expect_err("refused");
    assert_eq!((e.code(), bad_field(&e).as_str()), (Code::InvalidArgument, "events[1].tags"));
    Ok(())
}
