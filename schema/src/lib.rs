//! TimeSeries event schemas (`docs/schemas.md`), in one place for the
//! control plane and the gateway: [`Compiled::compile`] checks a schema
//! when it is set and builds what validates events (JSON Schema
//! validators, protobuf message descriptors) once per version;
//! [`Compiled::check_event`] validates one event on the write path;
//! [`breaks`] says what a new version breaks under a compatibility mode.
//!
//! Item values are bytes on the wire; a schema says how to read them:
//! `int64` and `float64` are 8 bytes big-endian, `bool` one byte 0 or 1,
//! `utf8` valid UTF-8, `json` a JSON document (optionally valid under a
//! JSON Schema), `protobuf` an encoded message of the named type.

mod compat;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};

use prism_proto::control::{EventSchema, ItemType, item_type::Kind};
use prism_proto::timeseries::Event;

pub use compat::breaks;

/// Most items a schema declares.
pub const MAX_ITEMS: usize = 256;
/// Most tags a schema requires.
pub const MAX_REQUIRED_TAGS: usize = 64;
/// Most tags a schema allows besides the required ones.
pub const MAX_ALLOWED_TAGS: usize = 256;
/// Longest item key or tag name.
pub const MAX_NAME_BYTES: usize = 256;
/// Largest JSON Schema of one item.
pub const MAX_JSON_SCHEMA_BYTES: usize = 64 * 1024;
/// Largest protobuf descriptor set of one item.
pub const MAX_DESCRIPTOR_SET_BYTES: usize = 1024 * 1024;
/// Versions a namespace's history keeps (the oldest are dropped past it).
pub const MAX_VERSIONS: usize = 100;
/// Tag keys with this prefix are Prism's own: clients may not write them.
pub const RESERVED_TAG_PREFIX: &str = "prism:";
/// The reserved tag that stores, with each event in its backend, the
/// schema version it was written under (removed again on reads).
pub const VERSION_TAG: &str = "prism:schema-version";
/// Longest description of a bad value (a JSON Schema error can quote a
/// whole document).
const MAX_DESCRIPTION: usize = 512;

/// What is wrong, and where: a field path (`events[3].items[1]`,
/// `schema.items[0].type`) and a description naming the item or tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub field: String,
    pub description: String,
}

impl Violation {
    fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        let mut description = description.into();
        if description.len() > MAX_DESCRIPTION {
            let mut end = MAX_DESCRIPTION;
            while !description.is_char_boundary(end) {
                end -= 1;
            }
            description.truncate(end);
            description.push('…');
        }
        Self { field: field.into(), description }
    }
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.description)
    }
}

/// An item key as messages show it: quoted text, or hex when not UTF-8.
pub fn show_key(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(s) => format!("{s:?}"),
        Err(_) => format!("0x{}", key.iter().map(|b| format!("{b:02x}")).collect::<String>()),
    }
}

/// The name of an item type, as messages and the CLI show it.
pub fn kind_name(kind: Option<&Kind>) -> &'static str {
    match kind {
        None => "unset",
        Some(Kind::Bytes(_)) => "bytes",
        Some(Kind::Utf8(_)) => "utf8",
        Some(Kind::Int64(_)) => "int64",
        Some(Kind::Float64(_)) => "float64",
        Some(Kind::Bool(_)) => "bool",
        Some(Kind::Json(_)) => "json",
        Some(Kind::Protobuf(_)) => "protobuf",
    }
}

/// How one item's value is checked.
enum Check {
    Bytes,
    Utf8,
    Int64,
    Float64,
    Bool,
    Json(Option<Box<jsonschema::Validator>>),
    Protobuf(prost_reflect::MessageDescriptor),
}

impl Check {
    fn compile(field: &str, kind: Option<&Kind>) -> Result<Self, Violation> {
        Ok(match kind {
            None => return Err(Violation::new(field, "is required")),
            Some(Kind::Bytes(_)) => Self::Bytes,
            Some(Kind::Utf8(_)) => Self::Utf8,
            Some(Kind::Int64(_)) => Self::Int64,
            Some(Kind::Float64(_)) => Self::Float64,
            Some(Kind::Bool(_)) => Self::Bool,
            Some(Kind::Json(json)) => {
                Self::Json(json_validator(&format!("{field}.json.json_schema"), &json.json_schema)?)
            }
            Some(Kind::Protobuf(pb)) => {
                Self::Protobuf(message_descriptor(field, &pb.descriptor_set, &pb.message_name)?)
            }
        })
    }

    /// Why `value` is not of this type, if it is not.
    fn check(&self, value: &[u8]) -> Result<(), String> {
        match self {
            Self::Bytes => Ok(()),
            Self::Utf8 => std::str::from_utf8(value).map(drop).map_err(|_| "is not valid UTF-8".to_owned()),
            Self::Int64 | Self::Float64 if value.len() != 8 => {
                let name = if matches!(self, Self::Int64) { "an int64" } else { "a float64" };
                Err(format!("is not {name} (8 bytes big-endian): it has {} bytes", value.len()))
            }
            Self::Int64 | Self::Float64 => Ok(()),
            Self::Bool if value.len() == 1 && value[0] <= 1 => Ok(()),
            Self::Bool => Err("is not a bool (one byte, 0 or 1)".to_owned()),
            Self::Json(validator) => {
                let document: serde_json::Value =
                    serde_json::from_slice(value).map_err(|e| format!("is not JSON: {e}"))?;
                match validator {
                    Some(v) => v.validate(&document).map_err(|e| {
                        let at = e.instance_path().to_string();
                        let at = if at.is_empty() { "the top level".to_owned() } else { format!("`{at}`") };
                        format!("does not match its JSON Schema at {at}: {e}")
                    }),
                    None => Ok(()),
                }
            }
            Self::Protobuf(message) => prost_reflect::DynamicMessage::decode(message.clone(), value)
                .map(drop)
                .map_err(|e| format!("is not a valid protobuf {}: {e}", message.full_name())),
        }
    }
}

/// The JSON Schema validator of `text` (none for an empty schema). Patterns
/// run on the linear-time `regex` engine: a schema cannot make a write
/// backtrack for ever.
fn json_validator(field: &str, text: &str) -> Result<Option<Box<jsonschema::Validator>>, Violation> {
    if text.is_empty() {
        return Ok(None);
    }
    if text.len() > MAX_JSON_SCHEMA_BYTES {
        return Err(Violation::new(field, format!("is longer than {MAX_JSON_SCHEMA_BYTES} bytes")));
    }
    let schema: serde_json::Value =
        serde_json::from_str(text).map_err(|e| Violation::new(field, format!("is not JSON: {e}")))?;
    let validator = jsonschema::options()
        .with_pattern_options(jsonschema::PatternOptions::regex())
        .build(&schema)
        .map_err(|e| Violation::new(field, format!("is not a valid JSON Schema: {e}")))?;
    Ok(Some(Box::new(validator)))
}

/// The descriptor of message `name` in the encoded descriptor set.
fn message_descriptor(field: &str, set: &[u8], name: &str) -> Result<prost_reflect::MessageDescriptor, Violation> {
    if set.len() > MAX_DESCRIPTOR_SET_BYTES {
        return Err(Violation::new(
            format!("{field}.protobuf.descriptor_set"),
            format!("is larger than {MAX_DESCRIPTOR_SET_BYTES} bytes"),
        ));
    }
    let pool = prost_reflect::DescriptorPool::decode(set).map_err(|e| {
        Violation::new(format!("{field}.protobuf.descriptor_set"), format!("is not a valid FileDescriptorSet: {e}"))
    })?;
    pool.get_message_by_name(name).ok_or_else(|| {
        Violation::new(
            format!("{field}.protobuf.message_name"),
            format!("message {name:?} is not in the descriptor set"),
        )
    })
}

fn tag_name(field: &str, tag: &str) -> Result<(), Violation> {
    if tag.is_empty() || tag.len() > MAX_NAME_BYTES {
        return Err(Violation::new(field, format!("tag names must be 1..={MAX_NAME_BYTES} bytes")));
    }
    if tag.starts_with(RESERVED_TAG_PREFIX) {
        return Err(Violation::new(field, format!("tags starting with {RESERVED_TAG_PREFIX:?} are reserved")));
    }
    Ok(())
}

/// One schema version, ready to validate events: built once per version
/// (the gateway keeps it with the namespace), never per request.
pub struct Compiled {
    version: u32,
    items: HashMap<Vec<u8>, Check>,
    required_items: Vec<Vec<u8>>,
    required_tags: Vec<String>,
    declared_tags: HashSet<String>,
}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compiled").field("version", &self.version).field("items", &self.items.len()).finish()
    }
}

impl Compiled {
    /// Checks `schema` (fields named under `field`) and compiles it as
    /// version `version`.
    pub fn compile(version: u32, schema: &EventSchema, field: &str) -> Result<Self, Violation> {
        if schema.items.len() > MAX_ITEMS {
            return Err(Violation::new(format!("{field}.items"), format!("declares more than {MAX_ITEMS} items")));
        }
        if schema.required_tags.len() > MAX_REQUIRED_TAGS {
            return Err(Violation::new(
                format!("{field}.required_tags"),
                format!("requires more than {MAX_REQUIRED_TAGS} tags"),
            ));
        }
        if schema.allowed_tags.len() > MAX_ALLOWED_TAGS {
            return Err(Violation::new(
                format!("{field}.allowed_tags"),
                format!("allows more than {MAX_ALLOWED_TAGS} tags"),
            ));
        }
        let mut items = HashMap::with_capacity(schema.items.len());
        let mut required_items = Vec::new();
        for (j, item) in schema.items.iter().enumerate() {
            let at = format!("{field}.items[{j}]");
            if item.key.is_empty() || item.key.len() > MAX_NAME_BYTES {
                return Err(Violation::new(format!("{at}.key"), format!("must be 1..={MAX_NAME_BYTES} bytes")));
            }
            let check = Check::compile(&format!("{at}.type"), item.r#type.as_ref().and_then(|t| t.kind.as_ref()))?;
            if items.insert(item.key.clone(), check).is_some() {
                return Err(Violation::new(
                    format!("{at}.key"),
                    format!("item {} is declared twice", show_key(&item.key)),
                ));
            }
            if item.required {
                required_items.push(item.key.clone());
            }
        }
        for (j, tag) in schema.required_tags.iter().enumerate() {
            tag_name(&format!("{field}.required_tags[{j}]"), tag)?;
        }
        for (j, tag) in schema.allowed_tags.iter().enumerate() {
            tag_name(&format!("{field}.allowed_tags[{j}]"), tag)?;
        }
        let mut required_tags = schema.required_tags.clone();
        required_tags.sort();
        required_tags.dedup();
        let declared_tags = schema.required_tags.iter().chain(&schema.allowed_tags).cloned().collect();
        Ok(Self { version, items, required_items, required_tags, declared_tags })
    }

    /// The version this was compiled as.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Whether `event`, `events[index]` of a write, is valid under this
    /// version: every item declared and of its type, every required item
    /// and tag present, no undeclared tag. Field paths are only formatted
    /// for a refusal: the write path allocates nothing for a valid event.
    pub fn check_event(&self, index: usize, event: &Event) -> Result<(), Violation> {
        let version = self.version;
        for (j, item) in event.items.iter().enumerate() {
            let Some(check) = self.items.get(&item.key) else {
                return Err(Violation::new(
                    format!("events[{index}].items[{j}]"),
                    format!("item {} is not declared by schema version {version}", show_key(&item.key)),
                ));
            };
            check.check(&item.value).map_err(|why| {
                Violation::new(format!("events[{index}].items[{j}]"), format!("item {} {why}", show_key(&item.key)))
            })?;
        }
        if let Some(missing) = self.required_items.iter().find(|key| !event.items.iter().any(|i| &i.key == *key)) {
            return Err(Violation::new(
                format!("events[{index}].items"),
                format!("lacks item {}, required by schema version {version}", show_key(missing)),
            ));
        }
        // The smallest undeclared tag, so the answer does not depend on
        // the map's order.
        if let Some(tag) = event.tags.keys().filter(|t| !self.declared_tags.contains(*t)).min() {
            return Err(Violation::new(
                format!("events[{index}].tags[{tag}]"),
                format!("tag {tag:?} is not declared by schema version {version}"),
            ));
        }
        if let Some(missing) = self.required_tags.iter().find(|t| !event.tags.contains_key(*t)) {
            return Err(Violation::new(
                format!("events[{index}].tags"),
                format!("lacks tag {missing:?}, required by schema version {version}"),
            ));
        }
        Ok(())
    }
}

/// The item types of a schema, by key.
fn item_types(schema: &EventSchema) -> HashMap<&[u8], (&prism_proto::control::ItemSchema, Option<&ItemType>)> {
    schema.items.iter().map(|i| (i.key.as_slice(), (i, i.r#type.as_ref()))).collect()
}
