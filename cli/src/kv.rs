//! `prism kv put|get|delete|scan`: KeyValue calls through `prism-client`,
//! which finds the gateway shard that owns the namespace (asking the
//! control plane, or starting at `--gateway`), follows a WRONG_SHARD
//! redirect and retries on UNAVAILABLE. Keys and values are UTF-8 text on
//! the command line; output shows bytes that are not UTF-8 as base64.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use clap::{Args, Subcommand};
use prism_proto::kv::{self, delete_items_request, get_items_request};
use serde_json::{Value, json};

use crate::Global;
use crate::error::usage;
use crate::flags::parse_duration;
use crate::output::{Format, Table, print, print_json};

#[derive(Debug, Clone, Args)]
pub struct Target {
    /// Namespace, tenant/name
    pub namespace: String,
    /// Gateway to call first instead of asking the control plane which shard owns the namespace (a WRONG_SHARD answer is still followed)
    #[arg(long, value_name = "ADDR", env = "PRISM_GATEWAY")]
    pub gateway: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct Selection {
    /// Only these keys (repeat for more)
    #[arg(long = "key", value_name = "KEY", conflicts_with_all = ["start", "end"])]
    pub keys: Vec<String>,
    /// Keys from this one (inclusive)
    #[arg(long, value_name = "KEY")]
    pub start: Option<String>,
    /// Keys before this one (exclusive)
    #[arg(long, value_name = "KEY")]
    pub end: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct Paging {
    /// Bytes of keys and values per page (default 1 MiB)
    #[arg(long, value_name = "BYTES", default_value_t = 0)]
    pub page_size_bytes: u64,
    /// Items per page (default: no limit)
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub limit: u32,
    /// Continue from this page token
    #[arg(long, value_name = "TOKEN", default_value = "")]
    pub page_token: String,
    /// Follow page tokens to the end
    #[arg(long)]
    pub all_pages: bool,
}

#[derive(Debug, Subcommand)]
pub enum KvCommand {
    /// Write items of a record: KEY=VALUE (an empty KEY makes a plain key-value pair)
    Put {
        #[command(flatten)]
        target: Target,
        /// Record id
        id: String,
        /// Items as KEY=VALUE
        #[arg(required = true, value_name = "KEY=VALUE")]
        items: Vec<String>,
        /// Time to live of the items, e.g. 10m
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
    },
    /// Read items of a record
    Get {
        #[command(flatten)]
        target: Target,
        /// Record id
        id: String,
        #[command(flatten)]
        selection: Selection,
        #[command(flatten)]
        paging: Paging,
    },
    /// Delete keys, a key range, or the whole record
    Delete {
        #[command(flatten)]
        target: Target,
        /// Record id
        id: String,
        #[command(flatten)]
        selection: Selection,
    },
    /// Read every record of a namespace
    Scan {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        paging: Paging,
    },
}

impl Target {
    /// A routing client for this target's calls.
    pub fn prism(&self, global: &Global) -> anyhow::Result<prism_client::Prism> {
        global.prism(self.gateway.as_deref())
    }
}

fn item(text: &str, ttl: Option<Duration>) -> anyhow::Result<kv::Item> {
    let (key, value) = text.split_once('=').ok_or_else(|| usage(format!("{text:?} is not KEY=VALUE")))?;
    Ok(kv::Item {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        ttl: ttl.map(crate::flags::proto_duration),
    })
}

/// Bytes as text when they are UTF-8, else as base64.
pub fn text(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_owned(),
        Err(_) => format!("base64:{}", STANDARD.encode(bytes)),
    }
}

pub fn bytes_json(name: &str, bytes: &[u8]) -> (String, Value) {
    match std::str::from_utf8(bytes) {
        Ok(s) => (name.to_owned(), json!(s)),
        Err(_) => (format!("{name}_base64"), json!(STANDARD.encode(bytes))),
    }
}

fn item_json(i: &kv::Item) -> Value {
    let mut m = serde_json::Map::new();
    for (k, v) in [bytes_json("key", &i.key), bytes_json("value", &i.value)] {
        m.insert(k, v);
    }
    m.insert("ttl".into(), crate::json::duration(i.ttl.as_ref()));
    Value::Object(m)
}

/// Time left, to the second (`-` when the item does not expire).
fn ttl_text(i: &kv::Item) -> String {
    let rounded = i
        .ttl
        .as_ref()
        .map(|d| prost_types::Duration { seconds: d.seconds + i64::from(d.nanos >= 500_000_000), nanos: 0 });
    rounded.as_ref().and_then(crate::json::humantime_duration).unwrap_or_else(|| "-".into())
}

fn get_selector(s: &Selection) -> Option<get_items_request::Selector> {
    if !s.keys.is_empty() {
        let keys = s.keys.iter().map(|k| k.as_bytes().to_vec()).collect();
        return Some(get_items_request::Selector::Keys(kv::KeyList { keys }));
    }
    (s.start.is_some() || s.end.is_some()).then(|| {
        get_items_request::Selector::Range(kv::KeyRange {
            start: s.start.clone().unwrap_or_default().into_bytes(),
            end: s.end.clone().unwrap_or_default().into_bytes(),
        })
    })
}

pub async fn run(global: &Global, command: KvCommand) -> anyhow::Result<()> {
    match command {
        KvCommand::Put { target, id, items, ttl } => {
            let items = items.iter().map(|i| item(i, ttl)).collect::<anyhow::Result<Vec<_>>>()?;
            let n = items.len();
            let client = target.prism(global)?.kv();
            client
                .put_items(kv::PutItemsRequest {
                    namespace: target.namespace.clone(),
                    id,
                    items,
                    idempotency_token: None,
                })
                .await?;
            done(global.output, json!({ "written": n }), &format!("wrote {n} item(s)\n"))
        }
        KvCommand::Delete { target, id, selection } => {
            let selector = get_selector(&selection).map(|s| match s {
                get_items_request::Selector::Keys(k) => delete_items_request::Selector::Keys(k),
                get_items_request::Selector::Range(r) => delete_items_request::Selector::Range(r),
            });
            let client = target.prism(global)?.kv();
            client
                .delete_items(kv::DeleteItemsRequest {
                    namespace: target.namespace.clone(),
                    id,
                    selector,
                    idempotency_token: None,
                })
                .await?;
            done(global.output, json!({ "deleted": true }), "deleted\n")
        }
        KvCommand::Get { target, id, selection, paging } => {
            let client = target.prism(global)?.kv();
            let mut request = kv::GetItemsRequest {
                namespace: target.namespace.clone(),
                id,
                selector: get_selector(&selection),
                page_size_bytes: paging.page_size_bytes,
                limit: paging.limit,
                page_token: paging.page_token.clone(),
            };
            let mut items = Vec::new();
            let next = loop {
                let page = client.get_items(request.clone()).await?;
                items.extend(page.items);
                if !paging.all_pages || page.next_page_token.is_empty() {
                    break page.next_page_token;
                }
                request.page_token = page.next_page_token;
            };
            match global.output {
                Format::Json => print_json(&json!({
                    "items": items.iter().map(item_json).collect::<Vec<_>>(),
                    "next_page_token": next,
                })),
                Format::Table => {
                    let mut table = Table::new(&["KEY", "VALUE", "TTL"]);
                    for i in &items {
                        table.push(vec![text(&i.key), text(&i.value), ttl_text(i)]);
                    }
                    print(&table.render())?;
                    next_hint(&next)
                }
            }
        }
        KvCommand::Scan { target, paging } => {
            let client = target.prism(global)?.kv();
            let mut request = kv::ScanItemsRequest {
                namespace: target.namespace.clone(),
                page_size_bytes: paging.page_size_bytes,
                limit: paging.limit,
                page_token: paging.page_token.clone(),
            };
            let mut records = Vec::new();
            let next = loop {
                let page = client.scan_items(request.clone()).await?;
                records.extend(page.records);
                if !paging.all_pages || page.next_page_token.is_empty() {
                    break page.next_page_token;
                }
                request.page_token = page.next_page_token;
            };
            match global.output {
                Format::Json => print_json(&json!({
                    "records": records
                        .iter()
                        .map(|r| json!({ "id": r.id, "items": r.items.iter().map(item_json).collect::<Vec<_>>() }))
                        .collect::<Vec<_>>(),
                    "next_page_token": next,
                })),
                Format::Table => {
                    let mut table = Table::new(&["ID", "KEY", "VALUE", "TTL"]);
                    for r in &records {
                        for i in &r.items {
                            table.push(vec![r.id.clone(), text(&i.key), text(&i.value), ttl_text(i)]);
                        }
                    }
                    print(&table.render())?;
                    next_hint(&next)
                }
            }
        }
    }
}

pub fn done(format: Format, value: Value, text: &str) -> anyhow::Result<()> {
    match format {
        Format::Json => print_json(&value),
        Format::Table => Ok(print(text)?),
    }
}

pub fn next_hint(next: &str) -> anyhow::Result<()> {
    if !next.is_empty() {
        eprintln!("more: --page-token {next} (or --all-pages)");
    }
    Ok(())
}
