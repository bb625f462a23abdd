//! The event and schemas the schema benches measure, in one place: the
//! criterion bench here (`check_event` alone) and the gateway's end-to-end
//! bench (`gateway/benches/schema.rs`, which includes this file) validate
//! the same event against the same schemas.
//!
//! One event shape serves every variant, so a variant differs from another
//! only in how its schema reads the items: a sensor reading with tags
//! `region` and `host` and four items, `temp` (float64), `count` (int64),
//! `doc` (a 53-byte JSON object) and `pb` (a 16-byte protobuf
//! `acme.v1.Reading`).

use prism_proto::control::{EventSchema, ItemSchema, ItemType, JsonType, ProtobufType, item_type::Kind};
use prism_proto::timeseries::{Event, EventItem};
use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FieldDescriptorProto, FileDescriptorProto, FileDescriptorSet};

/// The JSON Schema of `doc`: an object with typed properties, two required.
pub const DOC_SCHEMA: &str = r#"{
  "type": "object",
  "required": ["id", "kind"],
  "properties": {
    "id": { "type": "string", "maxLength": 64 },
    "kind": { "type": "string", "enum": ["reading", "alarm"] },
    "level": { "type": "integer", "minimum": 0 },
    "ok": { "type": "boolean" }
  }
}"#;

/// The value of `doc`, valid under [`DOC_SCHEMA`].
pub const DOC: &[u8] = br#"{"id":"probe-1","kind":"reading","level":3,"ok":true}"#;

/// `acme.v1.Reading { double celsius = 1; string unit = 2; int64 seq = 3; }`
/// as an encoded `FileDescriptorSet`, built by hand as `protoc
/// --include_imports -o` would.
pub fn descriptor_set() -> Vec<u8> {
    let field = |name: &str, number: i32, ty: Type| FieldDescriptorProto {
        name: Some(name.into()),
        number: Some(number),
        r#type: Some(ty as i32),
        label: Some(Label::Optional as i32),
        json_name: Some(name.into()),
        ..Default::default()
    };
    FileDescriptorSet {
        file: vec![FileDescriptorProto {
            name: Some("reading.proto".into()),
            package: Some("acme.v1".into()),
            syntax: Some("proto3".into()),
            message_type: vec![DescriptorProto {
                name: Some("Reading".into()),
                field: vec![
                    field("celsius", 1, Type::Double),
                    field("unit", 2, Type::String),
                    field("seq", 3, Type::Int64),
                ],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

/// The value of `pb`: `Reading { celsius: 21.5, unit: "C", seq: 1234567 }`.
pub fn reading() -> Vec<u8> {
    let mut b = vec![0x09]; // field 1, fixed64
    b.extend_from_slice(&21.5f64.to_le_bytes());
    b.extend_from_slice(&[0x12, 1, b'C']); // field 2, length-delimited
    b.push(0x18); // field 3, varint
    let mut seq = 1_234_567u64;
    while seq >= 0x80 {
        b.push((seq as u8) | 0x80);
        seq >>= 7;
    }
    b.push(seq as u8);
    b
}

/// The event every variant writes, of series `series` with id `id`.
pub fn event(series: &str, id: &str, event_time: Option<prost_types::Timestamp>) -> Event {
    let item = |key: &str, value: &[u8]| EventItem { key: key.into(), value: value.to_vec() };
    Event {
        time_series_id: series.into(),
        event_time,
        event_id: id.into(),
        items: vec![
            item("temp", &21.5f64.to_be_bytes()),
            item("count", &42i64.to_be_bytes()),
            item("doc", DOC),
            item("pb", &reading()),
        ],
        tags: [("region", "eu-west"), ("host", "probe-host-17")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        schema_version: 0,
    }
}

/// What a schema makes of the event's `doc` and `pb` items (`temp` and
/// `count` are always float64 and int64, both required).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// `doc` utf8, `pb` bytes: plain types only.
    Plain,
    /// `doc` JSON under [`DOC_SCHEMA`], `pb` bytes.
    Json,
    /// `doc` utf8, `pb` a protobuf `acme.v1.Reading`.
    Protobuf,
}

impl Variant {
    pub const ALL: [Variant; 3] = [Variant::Plain, Variant::Json, Variant::Protobuf];

    pub fn name(self) -> &'static str {
        match self {
            Variant::Plain => "plain",
            Variant::Json => "json_schema",
            Variant::Protobuf => "protobuf",
        }
    }

    /// The schema, requiring tag `region` and allowing `host`.
    pub fn schema(self) -> EventSchema {
        let item = |key: &str, kind: Kind| ItemSchema {
            key: key.into(),
            r#type: Some(ItemType { kind: Some(kind) }),
            required: true,
        };
        let doc = match self {
            Variant::Json => Kind::Json(JsonType { json_schema: DOC_SCHEMA.into() }),
            Variant::Plain | Variant::Protobuf => Kind::Utf8(Default::default()),
        };
        let pb = match self {
            Variant::Protobuf => Kind::Protobuf(ProtobufType {
                descriptor_set: descriptor_set(),
                message_name: "acme.v1.Reading".into(),
            }),
            Variant::Plain | Variant::Json => Kind::Bytes(Default::default()),
        };
        EventSchema {
            items: vec![
                item("temp", Kind::Float64(Default::default())),
                item("count", Kind::Int64(Default::default())),
                item("doc", doc),
                item("pb", pb),
            ],
            required_tags: vec!["region".into()],
            allowed_tags: vec!["host".into()],
        }
    }
}
