//! Whether a new schema version keeps a namespace's compatibility mode
//! (`docs/schemas.md`, "Compatibility"). A reader on schema R can read
//! events written under schema W when every item and tag R requires was
//! required by W and every item both declare has the same type; items and
//! tags that R does not declare are ignored by its readers.
//!
//! - BACKWARD: R = the new version, W = the previous one.
//! - FORWARD: R = the previous version, W = the new one.
//! - FULL: both. NONE: nothing is checked.
//!
//! Item types: the kind must not change. A JSON item whose JSON Schema
//! changes is checked at the top level only: a property newly required
//! (BACKWARD), no longer required (FORWARD), or whose `type` changes
//! (both) breaks; a schema gained (BACKWARD) or dropped (FORWARD) breaks.
//! A protobuf item must keep its message name, and every field of the
//! previous message must remain with the same number, kind and
//! cardinality (a removed or retyped field breaks; added fields are fine).

use std::collections::BTreeSet;

use prism_proto::control::{Compatibility, EventSchema, ItemType, item_type::Kind};

use crate::{item_types, kind_name, show_key};

/// What `next` breaks against `previous` under `mode`, one sentence each;
/// empty when it keeps the mode.
pub fn breaks(mode: Compatibility, previous: &EventSchema, next: &EventSchema) -> Vec<String> {
    let backward = matches!(mode, Compatibility::Backward | Compatibility::Full);
    let forward = matches!(mode, Compatibility::Forward | Compatibility::Full);
    let mut out = Vec::new();
    if backward {
        required(next, previous, "BACKWARD", "the new version", "the previous one", &mut out);
    }
    if forward {
        required(previous, next, "FORWARD", "the previous version", "the new one", &mut out);
    }
    if backward || forward {
        let before = item_types(previous);
        for item in &next.items {
            let Some((_, old)) = before.get(item.key.as_slice()) else { continue };
            let key = show_key(&item.key);
            for why in type_breaks(*old, item.r#type.as_ref(), backward, forward) {
                out.push(format!("item {key} {why}"));
            }
        }
    }
    out
}

/// What a reader on `reader` cannot read of events written under
/// `writer`: the items and tags it requires that the writer did not.
fn required(reader: &EventSchema, writer: &EventSchema, mode: &str, r: &str, w: &str, out: &mut Vec<String>) {
    let written = item_types(writer);
    for item in reader.items.iter().filter(|i| i.required) {
        if !written.get(item.key.as_slice()).is_some_and(|(w, _)| w.required) {
            out.push(format!("{mode}: item {} is required by {r} but not by {w}", show_key(&item.key)));
        }
    }
    for tag in &reader.required_tags {
        if !writer.required_tags.contains(tag) {
            out.push(format!("{mode}: tag {tag:?} is required by {r} but not by {w}"));
        }
    }
}

fn type_breaks(old: Option<&ItemType>, new: Option<&ItemType>, backward: bool, forward: bool) -> Vec<String> {
    let (old, new) = (old.and_then(|t| t.kind.as_ref()), new.and_then(|t| t.kind.as_ref()));
    match (old, new) {
        (Some(Kind::Json(a)), Some(Kind::Json(b))) => json_breaks(&a.json_schema, &b.json_schema, backward, forward),
        (Some(Kind::Protobuf(a)), Some(Kind::Protobuf(b))) => protobuf_breaks(a, b),
        _ if kind_name(old) != kind_name(new) => {
            vec![format!("changes type from {} to {}", kind_name(old), kind_name(new))]
        }
        _ => Vec::new(),
    }
}

/// A JSON Schema's top-level `required` names and `properties` types.
fn top_level(text: &str) -> Option<(BTreeSet<String>, serde_json::Map<String, serde_json::Value>)> {
    let schema: serde_json::Value = serde_json::from_str(text).ok()?;
    let required = schema
        .get("required")
        .and_then(|r| r.as_array())
        .map(|r| r.iter().filter_map(|n| n.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    let properties = schema.get("properties").and_then(|p| p.as_object()).cloned().unwrap_or_default();
    Some((required, properties))
}

fn json_breaks(old: &str, new: &str, backward: bool, forward: bool) -> Vec<String> {
    if old == new {
        return Vec::new();
    }
    let mut out = Vec::new();
    match (old.is_empty(), new.is_empty()) {
        (true, false) if backward => out.push("gains a JSON Schema (BACKWARD)".to_owned()),
        (false, true) if forward => out.push("drops its JSON Schema (FORWARD)".to_owned()),
        (false, false) => {
            let (Some((old_required, old_props)), Some((new_required, new_props))) = (top_level(old), top_level(new))
            else {
                return vec!["has a JSON Schema that is not JSON".to_owned()];
            };
            if backward {
                for p in new_required.difference(&old_required) {
                    out.push(format!("JSON property {p:?} becomes required (BACKWARD)"));
                }
            }
            if forward {
                for p in old_required.difference(&new_required) {
                    out.push(format!("JSON property {p:?} is no longer required (FORWARD)"));
                }
            }
            for (p, schema) in &new_props {
                let (Some(before), Some(after)) = (old_props.get(p).and_then(|s| s.get("type")), schema.get("type"))
                else {
                    continue;
                };
                if before != after {
                    out.push(format!("JSON property {p:?} changes type from {before} to {after}"));
                }
            }
        }
        _ => {}
    }
    out
}

fn protobuf_breaks(old: &prism_proto::control::ProtobufType, new: &prism_proto::control::ProtobufType) -> Vec<String> {
    if old.message_name != new.message_name {
        return vec![format!("changes protobuf message from {:?} to {:?}", old.message_name, new.message_name)];
    }
    if old.descriptor_set == new.descriptor_set {
        return Vec::new();
    }
    let message = |p: &prism_proto::control::ProtobufType| {
        prost_reflect::DescriptorPool::decode(p.descriptor_set.as_slice())
            .ok()
            .and_then(|pool| pool.get_message_by_name(&p.message_name))
    };
    let (Some(before), Some(after)) = (message(old), message(new)) else {
        return vec!["has a descriptor set that does not decode".to_owned()];
    };
    let shape = |f: &prost_reflect::FieldDescriptor| (format!("{:?}", f.kind()), f.cardinality());
    let mut out = Vec::new();
    for field in before.fields() {
        match after.get_field(field.number()) {
            None => out.push(format!("loses protobuf field {} ({})", field.name(), field.number())),
            Some(now) if shape(&now) != shape(&field) => out.push(format!(
                "changes protobuf field {} ({}) from {:?} to {:?}",
                field.name(),
                field.number(),
                field.kind(),
                now.kind()
            )),
            Some(_) => {}
        }
    }
    out
}
