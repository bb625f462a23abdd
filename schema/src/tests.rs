//! The schema rules on events and versions built here: each kind of bad
//! event and bad schema named by its field, and compatibility per mode.

use prism_proto::control::{Compatibility, EventSchema, ItemSchema, ItemType, JsonType, ProtobufType, item_type::Kind};
use prism_proto::timeseries::{Event, EventItem};
use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FieldDescriptorProto, FileDescriptorProto, FileDescriptorSet};

use super::*;

fn descriptor_set(fields: &[(&str, i32, Type)]) -> Vec<u8> {
    FileDescriptorSet {
        file: vec![FileDescriptorProto {
            name: Some("reading.proto".into()),
            package: Some("acme.v1".into()),
            syntax: Some("proto3".into()),
            message_type: vec![DescriptorProto {
                name: Some("Reading".into()),
                field: fields
                    .iter()
                    .map(|(name, number, ty)| FieldDescriptorProto {
                        name: Some((*name).into()),
                        number: Some(*number),
                        r#type: Some(*ty as i32),
                        label: Some(Label::Optional as i32),
                        json_name: Some((*name).into()),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

fn item(key: &str, kind: Kind, required: bool) -> ItemSchema {
    ItemSchema { key: key.into(), r#type: Some(ItemType { kind: Some(kind) }), required }
}

fn json(schema: &str) -> Kind {
    Kind::Json(JsonType { json_schema: schema.into() })
}

fn schema() -> EventSchema {
    EventSchema {
        items: vec![
            item("temp", Kind::Float64(Default::default()), true),
            item("count", Kind::Int64(Default::default()), false),
            item("doc", json(r#"{"type":"object","required":["a"],"properties":{"a":{"type":"string"}}}"#), false),
            item(
                "pb",
                Kind::Protobuf(ProtobufType {
                    descriptor_set: descriptor_set(&[("celsius", 1, Type::Double)]),
                    message_name: "acme.v1.Reading".into(),
                }),
                false,
            ),
        ],
        required_tags: vec!["region".into()],
        allowed_tags: vec!["host".into()],
    }
}

fn event(items: &[(&str, &[u8])], tags: &[(&str, &str)]) -> Event {
    Event {
        items: items.iter().map(|(k, v)| EventItem { key: (*k).into(), value: v.to_vec() }).collect(),
        tags: tags.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect(),
        ..Event::default()
    }
}

#[test]
fn valid_events_pass_and_each_kind_of_bad_one_is_named() {
    let compiled = Compiled::compile(2, &schema(), "schema").expect("compiles");
    let temp = 21.5f64.to_be_bytes();
    let pb = {
        // field 1, fixed64 wire type, 8 bytes
        let mut b = vec![0x09];
        b.extend_from_slice(&3.5f64.to_le_bytes());
        b
    };
    let ok = event(&[("temp", &temp), ("doc", br#"{"a":"x"}"#), ("pb", &pb)], &[("region", "eu"), ("host", "h")]);
    compiled.check_event(0, &ok).expect("valid");

    let cases: Vec<(Event, &str, &str)> = vec![
        (event(&[("temp", b"abc")], &[("region", "eu")]), "events[1].items[0]", "\"temp\""),
        (event(&[("count", &1i64.to_be_bytes())], &[("region", "eu")]), "events[1].items", "\"temp\""),
        (event(&[("temp", &temp), ("x", b"")], &[("region", "eu")]), "events[1].items[1]", "\"x\""),
        (event(&[("temp", &temp)], &[("region", "eu"), ("zone", "a")]), "events[1].tags[zone]", "\"zone\""),
        (event(&[("temp", &temp)], &[]), "events[1].tags", "\"region\""),
        (event(&[("temp", &temp), ("doc", b"{")], &[("region", "eu")]), "events[1].items[1]", "not JSON"),
        (event(&[("temp", &temp), ("doc", br#"{"a":1}"#)], &[("region", "eu")]), "events[1].items[1]", "JSON Schema"),
        (event(&[("temp", &temp), ("pb", &[0x09, 1])], &[("region", "eu")]), "events[1].items[1]", "acme.v1.Reading"),
    ];
    for (e, field, mention) in cases {
        let v = compiled.check_event(1, &e).expect_err("refused");
        assert_eq!(v.field, field, "{v}");
        assert!(v.description.contains(mention), "{v}");
    }
}

#[test]
fn bad_schemas_are_refused_with_the_field() {
    let mut s = schema();
    s.items.push(item("temp", Kind::Bytes(Default::default()), false));
    assert_eq!(Compiled::compile(1, &s, "schema").expect_err("dup").field, "schema.items[4].key");
    let s = EventSchema { items: vec![item("j", json("{\"type\": 3}"), false)], ..Default::default() };
    assert_eq!(Compiled::compile(1, &s, "schema").expect_err("bad").field, "schema.items[0].type.json.json_schema");
    let s = EventSchema {
        items: vec![item(
            "p",
            Kind::Protobuf(ProtobufType { descriptor_set: descriptor_set(&[]), message_name: "acme.v1.Nope".into() }),
            false,
        )],
        ..Default::default()
    };
    assert_eq!(
        Compiled::compile(1, &s, "schema").expect_err("bad").field,
        "schema.items[0].type.protobuf.message_name"
    );
    let s = EventSchema { required_tags: vec![VERSION_TAG.into()], ..Default::default() };
    assert_eq!(Compiled::compile(1, &s, "schema").expect_err("reserved").field, "schema.required_tags[0]");
}

#[test]
fn compatibility_follows_the_mode() {
    let old = schema();
    // A new required item: readers on the new version cannot read old
    // events (BACKWARD), old readers can read new ones (FORWARD).
    let mut added = old.clone();
    added.items.push(item("new", Kind::Bool(Default::default()), true));
    assert!(breaks(Compatibility::Backward, &old, &added)[0].contains("item \"new\""));
    assert!(breaks(Compatibility::Forward, &old, &added).is_empty());
    assert!(!breaks(Compatibility::Full, &old, &added).is_empty());
    assert!(breaks(Compatibility::None, &old, &added).is_empty());

    // Removing a required tag: fine BACKWARD, breaks FORWARD.
    let mut fewer = old.clone();
    fewer.required_tags.clear();
    assert!(breaks(Compatibility::Backward, &old, &fewer).is_empty());
    assert!(breaks(Compatibility::Forward, &old, &fewer)[0].contains("tag \"region\""));

    // A changed type breaks both.
    let mut retyped = old.clone();
    retyped.items[1] = item("count", Kind::Utf8(Default::default()), false);
    let why = breaks(Compatibility::Backward, &old, &retyped);
    assert_eq!(why, vec!["item \"count\" changes type from int64 to utf8".to_owned()]);
    assert_eq!(breaks(Compatibility::Forward, &old, &retyped), why);

    // JSON: a property newly required breaks BACKWARD only.
    let mut stricter = old.clone();
    stricter.items[2] =
        item("doc", json(r#"{"type":"object","required":["a","b"],"properties":{"a":{"type":"string"}}}"#), false);
    assert!(breaks(Compatibility::Backward, &old, &stricter)[0].contains("\"b\" becomes required"));
    assert!(breaks(Compatibility::Forward, &old, &stricter).is_empty());

    // Protobuf: an added field is fine, a removed or retyped one breaks.
    let pb = |fields: &[(&str, i32, Type)]| {
        item(
            "pb",
            Kind::Protobuf(ProtobufType {
                descriptor_set: descriptor_set(fields),
                message_name: "acme.v1.Reading".into(),
            }),
            false,
        )
    };
    let mut grown = old.clone();
    grown.items[3] = pb(&[("celsius", 1, Type::Double), ("unit", 2, Type::String)]);
    assert!(breaks(Compatibility::Full, &old, &grown).is_empty());
    let mut changed = old.clone();
    changed.items[3] = pb(&[("celsius", 1, Type::String)]);
    assert!(breaks(Compatibility::Backward, &old, &changed)[0].contains("protobuf field celsius"));
    let mut removed = old.clone();
    removed.items[3] = pb(&[("unit", 2, Type::String)]);
    assert!(breaks(Compatibility::Forward, &old, &removed)[0].contains("loses protobuf field celsius"));
}
