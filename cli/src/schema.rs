//! `prism schema set|get|history`: a TimeSeries namespace's event schema
//! (`docs/schemas.md`). `set` reads a JSON schema file:
//!
//! ```json
//! { "items": [ { "key": "temp", "type": "float64", "required": true },
//!              { "key": "doc", "type": "json", "json_schema": { "type": "object" } },
//!              { "key": "pb", "type": "protobuf", "descriptor_set_file": "reading.pb",
//!                "message": "acme.v1.Reading" } ],
//!   "required_tags": [ "region" ], "allowed_tags": [ "host" ] }
//! ```
//!
//! Types: `bytes`, `utf8`, `int64`, `float64`, `bool`, `json` (with an
//! optional `json_schema`, an object or its text) and `protobuf` (a
//! descriptor set file, relative to the schema file, and a message name).
//! Unknown fields are errors.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Subcommand, ValueEnum};
use prism_proto::control::{
    Compatibility, EventSchema, GetSchemaRequest, ItemSchema, ItemType, JsonType, ListSchemaHistoryRequest,
    ProtobufType, SchemaVersion, SetSchemaRequest, item_type::Kind,
};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::output::{self, Table};
use crate::{Format, Global, json as js};

#[derive(Debug, Subcommand)]
pub enum SchemaCommand {
    /// Add a version of a TimeSeries namespace's event schema
    Set {
        /// The namespace, tenant/name
        name: String,
        /// The schema, a JSON file (see `prism schema --help`)
        #[arg(long, short = 'f', value_name = "FILE")]
        file: PathBuf,
        /// The compatibility mode this and later versions are checked under (default: the namespace's, BACKWARD for a first schema)
        #[arg(long, value_enum)]
        compatibility: Option<CompatibilityArg>,
        /// Refuse unless the namespace is at this revision
        #[arg(long, value_name = "REVISION")]
        expected_revision: Option<u64>,
    },
    /// Show a version of a namespace's schema (default: the latest)
    Get {
        name: String,
        /// The version (`--version` is the program's)
        #[arg(value_name = "VERSION")]
        number: Option<u32>,
    },
    /// List every kept version of a namespace's schema, oldest first
    History { name: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompatibilityArg {
    None,
    Backward,
    Forward,
    Full,
}

impl From<CompatibilityArg> for Compatibility {
    fn from(c: CompatibilityArg) -> Self {
        match c {
            CompatibilityArg::None => Self::None,
            CompatibilityArg::Backward => Self::Backward,
            CompatibilityArg::Forward => Self::Forward,
            CompatibilityArg::Full => Self::Full,
        }
    }
}

/// A schema file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SchemaFile {
    #[serde(default)]
    items: Vec<ItemFile>,
    #[serde(default)]
    required_tags: Vec<String>,
    #[serde(default)]
    allowed_tags: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ItemFile {
    key: String,
    r#type: String,
    #[serde(default)]
    required: bool,
    /// `json`: an object, or its text.
    json_schema: Option<Value>,
    /// `protobuf`: relative to the schema file.
    descriptor_set_file: Option<PathBuf>,
    /// `protobuf`.
    message: Option<String>,
}

fn item(dir: &Path, i: usize, f: ItemFile) -> anyhow::Result<ItemSchema> {
    let at = || format!("items[{i}] ({})", f.key);
    let only = |allowed: bool, what: &str| {
        anyhow::ensure!(
            allowed,
            "{}: {what} is only for type {}",
            at(),
            if what == "json_schema" { "json" } else { "protobuf" }
        );
        Ok(())
    };
    only(f.json_schema.is_none() || f.r#type == "json", "json_schema")?;
    only(
        f.descriptor_set_file.is_none() && f.message.is_none() || f.r#type == "protobuf",
        "descriptor_set_file/message",
    )?;
    let kind = match f.r#type.as_str() {
        "bytes" => Kind::Bytes(Default::default()),
        "utf8" => Kind::Utf8(Default::default()),
        "int64" => Kind::Int64(Default::default()),
        "float64" => Kind::Float64(Default::default()),
        "bool" => Kind::Bool(Default::default()),
        "json" => Kind::Json(JsonType {
            json_schema: match &f.json_schema {
                None => String::new(),
                Some(Value::String(text)) => text.clone(),
                Some(schema) => schema.to_string(),
            },
        }),
        "protobuf" => {
            let file =
                f.descriptor_set_file.as_ref().with_context(|| format!("{}: descriptor_set_file is required", at()))?;
            let path = dir.join(file);
            Kind::Protobuf(ProtobufType {
                descriptor_set: std::fs::read(&path)
                    .with_context(|| format!("{}: reading {}", at(), path.display()))?,
                message_name: f.message.clone().with_context(|| format!("{}: message is required", at()))?,
            })
        }
        other => {
            anyhow::bail!("{}: type {other:?} is not one of bytes, utf8, int64, float64, bool, json, protobuf", at())
        }
    };
    Ok(ItemSchema { key: f.key.into_bytes(), r#type: Some(ItemType { kind: Some(kind) }), required: f.required })
}

/// The schema in `file`.
pub fn read(file: &Path) -> anyhow::Result<EventSchema> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let parsed: SchemaFile =
        serde_json::from_str(&text).with_context(|| format!("{} is not a schema", file.display()))?;
    let dir = file.parent().unwrap_or(Path::new("."));
    let items = parsed.items.into_iter().enumerate().map(|(i, f)| item(dir, i, f)).collect::<anyhow::Result<_>>()?;
    Ok(EventSchema { items, required_tags: parsed.required_tags, allowed_tags: parsed.allowed_tags })
}

fn mode(v: i32) -> String {
    Compatibility::try_from(v)
        .map(|c| c.as_str_name().trim_start_matches("COMPATIBILITY_").to_owned())
        .unwrap_or_else(|_| v.to_string())
}

fn key(k: &[u8]) -> String {
    String::from_utf8_lossy(k).into_owned()
}

/// An item's type as JSON, in the schema file's shape (a descriptor set
/// as its size: it is binary).
fn item_json(i: &ItemSchema) -> Value {
    let kind = i.r#type.as_ref().and_then(|t| t.kind.as_ref());
    let mut v = json!({ "key": key(&i.key), "type": prism_schema::kind_name(kind), "required": i.required });
    match kind {
        Some(Kind::Json(j)) if !j.json_schema.is_empty() => {
            v["json_schema"] = serde_json::from_str(&j.json_schema).unwrap_or(Value::String(j.json_schema.clone()));
        }
        Some(Kind::Protobuf(p)) => {
            v["message"] = Value::String(p.message_name.clone());
            v["descriptor_set_bytes"] = Value::from(p.descriptor_set.len());
        }
        _ => {}
    }
    v
}

fn version_json(v: &SchemaVersion) -> Value {
    let schema = v.schema.clone().unwrap_or_default();
    json!({
        "version": v.version,
        "create_time": js::timestamp(v.create_time.as_ref()),
        "principal": v.principal,
        "items": schema.items.iter().map(item_json).collect::<Vec<_>>(),
        "required_tags": schema.required_tags,
        "allowed_tags": schema.allowed_tags,
    })
}

fn when(v: &SchemaVersion) -> String {
    v.create_time.as_ref().and_then(|t| js::rfc3339(t, false)).unwrap_or_default()
}

/// One version as text: a header line, then its items and tags.
fn version_text(name: &str, compatibility: i32, v: &SchemaVersion) -> String {
    let schema = v.schema.clone().unwrap_or_default();
    let mut out = format!(
        "{name} schema version {} ({} compatibility), set {} by {}\n\n",
        v.version,
        mode(compatibility),
        when(v),
        v.principal
    );
    let mut items = Table::new(&["ITEM", "TYPE", "REQUIRED", "DETAIL"]);
    for i in &schema.items {
        let kind = i.r#type.as_ref().and_then(|t| t.kind.as_ref());
        let detail = match kind {
            Some(Kind::Json(j)) if !j.json_schema.is_empty() => "JSON Schema".to_owned(),
            Some(Kind::Protobuf(p)) => p.message_name.clone(),
            _ => String::new(),
        };
        items.push(vec![key(&i.key), prism_schema::kind_name(kind).to_owned(), i.required.to_string(), detail]);
    }
    out.push_str(&items.render());
    out.push_str(&format!(
        "\nrequired tags: {}\nallowed tags: {}\n",
        schema.required_tags.join(", "),
        schema.allowed_tags.join(", ")
    ));
    out
}

pub async fn run(global: &Global, cmd: SchemaCommand) -> anyhow::Result<()> {
    let mut client = global.connect().await?;
    match cmd {
        SchemaCommand::Set { name, file, compatibility, expected_revision } => {
            let req = SetSchemaRequest {
                name,
                schema: Some(read(&file)?),
                compatibility: compatibility.map_or(Compatibility::Unspecified, Compatibility::from) as i32,
                expected_revision: expected_revision.unwrap_or(0),
            };
            let r = client.set_schema(req).await?.into_inner();
            let v = r.version.unwrap_or_default();
            match global.output {
                Format::Json => output::print_json(&json!({
                    "name": r.name,
                    "compatibility": mode(r.compatibility),
                    "revision": r.revision,
                    "version": version_json(&v),
                })),
                Format::Table => {
                    let text = format!(
                        "{} schema version {} set ({} compatibility)\n",
                        r.name,
                        v.version,
                        mode(r.compatibility)
                    );
                    Ok(output::print(&text)?)
                }
            }
        }
        SchemaCommand::Get { name, number } => {
            let r = client.get_schema(GetSchemaRequest { name, version: number.unwrap_or(0) }).await?.into_inner();
            let v = r.version.unwrap_or_default();
            match global.output {
                Format::Json => output::print_json(&json!({
                    "name": r.name,
                    "compatibility": mode(r.compatibility),
                    "revision": r.revision,
                    "version": version_json(&v),
                })),
                Format::Table => Ok(output::print(&version_text(&r.name, r.compatibility, &v))?),
            }
        }
        SchemaCommand::History { name } => {
            let r = client.list_schema_history(ListSchemaHistoryRequest { name }).await?.into_inner();
            match global.output {
                Format::Json => output::print_json(&json!({
                    "name": r.name,
                    "compatibility": mode(r.compatibility),
                    "versions": r.versions.iter().map(version_json).collect::<Vec<_>>(),
                })),
                Format::Table => {
                    let mut t = Table::new(&["VERSION", "SET", "BY", "ITEMS", "REQUIRED TAGS"]);
                    for v in &r.versions {
                        let schema = v.schema.clone().unwrap_or_default();
                        t.push(vec![
                            v.version.to_string(),
                            when(v),
                            v.principal.clone(),
                            schema.items.iter().map(|i| key(&i.key)).collect::<Vec<_>>().join(", "),
                            schema.required_tags.join(", "),
                        ]);
                    }
                    let text = format!("{} ({} compatibility)\n{}", r.name, mode(r.compatibility), t.render());
                    Ok(output::print(&text)?)
                }
            }
        }
    }
}
