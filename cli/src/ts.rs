//! `prism ts write|read|search|tail`: TimeSeries calls through
//! `prism-client`, routed to the gateway shard that owns the namespace
//! like `prism kv`. Times are RFC 3339
//! (`2026-11-22T10:00:00Z`), `now`, or an age (`15m` = 15 minutes ago).
//!
//! Item values are text. When the namespace's latest schema declares an
//! item int64, float64 or bool, `write` encodes its text as the schema
//! says (`temp=21.5` becomes 8 bytes big-endian) and the tables show such
//! values as text again; JSON output keeps the stored bytes.

use std::collections::HashMap;
use std::time::SystemTime;

use clap::{Args, Subcommand};
use prism_proto::timeseries::{self as ts, tag_filter};
use serde_json::{Value, json};

use crate::Global;
use crate::error::usage;
use crate::kv::{Paging, Target, bytes_json, done, next_hint, text};
use crate::output::{Format, Table, print, print_json, print_json_line};

/// A point in time: RFC 3339, `now`, or an age such as `15m`.
fn parse_time(s: &str) -> Result<SystemTime, String> {
    if s == "now" {
        return Ok(SystemTime::now());
    }
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Ok(t);
    }
    let age =
        humantime::parse_duration(s).map_err(|_| format!("{s:?} is neither RFC 3339, now, nor an age like 15m"))?;
    SystemTime::now().checked_sub(age).ok_or_else(|| format!("{s:?} is too long ago"))
}

fn tag(s: &str) -> Result<(String, String), String> {
    s.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())).ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

#[derive(Debug, Clone, Args)]
pub struct Interval {
    /// Events at or after this time (default: the beginning)
    #[arg(long, value_parser = parse_time)]
    pub start: Option<SystemTime>,
    /// Events before this time (default: no end)
    #[arg(long, value_parser = parse_time)]
    pub end: Option<SystemTime>,
}

#[derive(Debug, Clone, Args)]
pub struct Filter {
    /// Only events with this tag (repeat: all must match)
    #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = tag)]
    pub tags: Vec<(String, String)>,
    /// Only events whose tag KEY is one of the values (repeat: all must match)
    #[arg(long = "tag-in", value_name = "KEY=V1,V2", value_parser = tag)]
    pub tag_in: Vec<(String, String)>,
}

impl Filter {
    fn to_proto(&self) -> Option<ts::TagFilter> {
        let equals = self
            .tags
            .iter()
            .map(|(key, value)| tag_filter::Filter::Equals(ts::TagEquals { key: key.clone(), value: value.clone() }));
        let ins = self.tag_in.iter().map(|(key, values)| {
            tag_filter::Filter::In(ts::TagIn {
                key: key.clone(),
                values: values.split(',').map(str::to_owned).collect(),
            })
        });
        let mut all: Vec<ts::TagFilter> = equals.chain(ins).map(|f| ts::TagFilter { filter: Some(f) }).collect();
        match all.len() {
            0 => None,
            1 => all.pop(),
            _ => Some(ts::TagFilter { filter: Some(tag_filter::Filter::And(ts::TagFilterList { filters: all })) }),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum TsCommand {
    /// Write one event: items as KEY=VALUE
    Write {
        #[command(flatten)]
        target: Target,
        /// Time series id
        series: String,
        /// Items as KEY=VALUE
        #[arg(value_name = "KEY=VALUE")]
        items: Vec<String>,
        /// Event id (default: made from the time and a random number)
        #[arg(long)]
        event_id: Option<String>,
        /// Event time (default: now)
        #[arg(long, value_parser = parse_time)]
        time: Option<SystemTime>,
        /// A tag (repeat for more)
        #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = tag)]
        tags: Vec<(String, String)>,
        /// Buffered (acknowledged at once; loss-tolerant namespaces only)
        #[arg(long)]
        buffered: bool,
    },
    /// Events of one series, newest first
    Read {
        #[command(flatten)]
        target: Target,
        /// Time series id
        series: String,
        #[command(flatten)]
        interval: Interval,
        #[command(flatten)]
        paging: Paging,
    },
    /// Events of any series matching tags, newest first
    Search {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        interval: Interval,
        #[command(flatten)]
        filter: Filter,
        #[command(flatten)]
        paging: Paging,
    },
    /// Stream new events until Ctrl-C
    Tail {
        #[command(flatten)]
        target: Target,
        /// Only this series
        #[arg(long)]
        series: Option<String>,
        #[command(flatten)]
        filter: Filter,
    },
}

/// A fixed-width type the latest schema gives an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Typed {
    Int64,
    Float64,
    Bool,
}

/// The fixed-width item types of a namespace's latest schema, by key.
#[derive(Debug, Default)]
struct Types(HashMap<Vec<u8>, Typed>);

impl Types {
    /// Read from the control plane. Empty when the namespace has no schema
    /// or the caller may not read it: values then go as text, and the
    /// gateway still checks every write.
    async fn of(global: &Global, namespace: &str) -> Self {
        use prism_proto::control::item_type::Kind;
        let request = prism_proto::control::GetSchemaRequest { name: namespace.to_owned(), version: 0 };
        let Ok(mut client) = global.connect().await else { return Self::default() };
        let Ok(found) = client.get_schema(request).await else { return Self::default() };
        let schema = found.into_inner().version.and_then(|v| v.schema).unwrap_or_default();
        let typed = schema.items.into_iter().filter_map(|i| {
            let t = match i.r#type.and_then(|t| t.kind)? {
                Kind::Int64(_) => Typed::Int64,
                Kind::Float64(_) => Typed::Float64,
                Kind::Bool(_) => Typed::Bool,
                _ => return None,
            };
            Some((i.key, t))
        });
        Self(typed.collect())
    }

    /// The bytes of item `key` written as `value`.
    fn encode(&self, key: &str, value: &str) -> anyhow::Result<Vec<u8>> {
        let bad = |what: &str| usage(format!("item {key}: {value:?} is not {what}, as the namespace's schema says"));
        Ok(match self.0.get(key.as_bytes()) {
            None => value.as_bytes().to_vec(),
            Some(Typed::Int64) => value.parse::<i64>().map_err(|_| bad("an int64"))?.to_be_bytes().to_vec(),
            Some(Typed::Float64) => value.parse::<f64>().map_err(|_| bad("a float64"))?.to_be_bytes().to_vec(),
            Some(Typed::Bool) => match value {
                "true" | "1" => vec![1],
                "false" | "0" => vec![0],
                _ => return Err(bad("a bool (true, false, 1 or 0)")),
            },
        })
    }

    /// Item `key`'s value as text: decoded when the schema types it and it
    /// has that type's width (an event written before may not).
    fn show(&self, key: &[u8], value: &[u8]) -> String {
        match (self.0.get(key), <[u8; 8]>::try_from(value), value) {
            (Some(Typed::Int64), Ok(b), _) => i64::from_be_bytes(b).to_string(),
            (Some(Typed::Float64), Ok(b), _) => f64::from_be_bytes(b).to_string(),
            (Some(Typed::Bool), _, [b @ (0 | 1)]) => (*b == 1).to_string(),
            _ => text(value),
        }
    }
}

fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(t)
}

fn event_json(e: &ts::Event) -> Value {
    let items: Vec<Value> = e
        .items
        .iter()
        .map(|i| Value::Object([bytes_json("key", &i.key), bytes_json("value", &i.value)].into_iter().collect()))
        .collect();
    let mut tags: Vec<_> = e.tags.iter().collect();
    tags.sort();
    json!({
        "time_series_id": e.time_series_id,
        "event_time": crate::json::timestamp(e.event_time.as_ref()),
        "event_id": e.event_id,
        "items": items,
        "tags": tags.into_iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "schema_version": e.schema_version,
    })
}

fn events_table(events: &[ts::Event], types: &Types) -> String {
    let mut table = Table::new(&["TIME", "SERIES", "EVENT", "ITEMS", "TAGS"]);
    for e in events {
        let items: Vec<String> =
            e.items.iter().map(|i| format!("{}={}", text(&i.key), types.show(&i.key, &i.value))).collect();
        let mut tags: Vec<String> = e.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
        tags.sort();
        table.push(vec![
            e.event_time.as_ref().and_then(|t| crate::json::rfc3339(t, true)).unwrap_or_default(),
            e.time_series_id.clone(),
            e.event_id.clone(),
            items.join(" "),
            tags.join(" "),
        ]);
    }
    table.render()
}

fn show(format: Format, events: &[ts::Event], next: &str, types: &Types) -> anyhow::Result<()> {
    match format {
        Format::Json => {
            print_json(&json!({ "events": events.iter().map(event_json).collect::<Vec<_>>(), "next_page_token": next }))
        }
        Format::Table => {
            print(&events_table(events, types))?;
            next_hint(next)
        }
    }
}

pub async fn run(global: &Global, command: TsCommand) -> anyhow::Result<()> {
    let target = match &command {
        TsCommand::Write { target, .. }
        | TsCommand::Read { target, .. }
        | TsCommand::Search { target, .. }
        | TsCommand::Tail { target, .. } => target.clone(),
    };
    let client = target.prism(global)?.ts();
    let namespace = target.namespace.clone();
    // Typed values matter to what is written, and to tables only.
    let types = match (&command, global.output) {
        (TsCommand::Write { .. }, _) | (_, Format::Table) => Types::of(global, &namespace).await,
        _ => Types::default(),
    };
    match command {
        TsCommand::Write { series, items, event_id, time, tags, buffered, .. } => {
            let items = items
                .iter()
                .map(|i| {
                    let (k, v) = i.split_once('=').ok_or_else(|| usage(format!("{i:?} is not KEY=VALUE")))?;
                    Ok(ts::EventItem { key: k.as_bytes().to_vec(), value: types.encode(k, v)? })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let time = time.unwrap_or_else(SystemTime::now);
            let event_id = event_id.unwrap_or_else(|| {
                let micros = time.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_micros();
                format!("{micros}-{:08x}", rand::random::<u32>())
            });
            let event = ts::Event {
                time_series_id: series,
                event_time: Some(timestamp(time)),
                event_id: event_id.clone(),
                items,
                tags: tags.into_iter().collect(),
                schema_version: 0,
            };
            let request = ts::WriteEventRecordsRequest { namespace, events: vec![event] };
            let accepted = if buffered {
                client.write_event_records(request).await?.accepted
            } else {
                client.write_event_records_sync(request).await?.accepted
            };
            done(
                global.output,
                json!({ "accepted": accepted, "event_id": event_id }),
                &format!("wrote event {event_id}\n"),
            )
        }
        TsCommand::Read { series, interval, paging, .. } => {
            let mut request = ts::ReadEventRecordsRequest {
                namespace,
                time_series_id: series,
                start: interval.start.map(timestamp),
                end: interval.end.map(timestamp),
                page_size_bytes: paging.page_size_bytes,
                limit: paging.limit,
                page_token: paging.page_token.clone(),
            };
            let mut events = Vec::new();
            let next = loop {
                let page = client.read_event_records(request.clone()).await?;
                events.extend(page.events);
                if !paging.all_pages || page.next_page_token.is_empty() {
                    break page.next_page_token;
                }
                request.page_token = page.next_page_token;
            };
            show(global.output, &events, &next, &types)
        }
        TsCommand::Search { interval, filter, paging, .. } => {
            let mut request = ts::SearchEventRecordsRequest {
                namespace,
                start: interval.start.map(timestamp),
                end: interval.end.map(timestamp),
                filter: filter.to_proto(),
                page_size_bytes: paging.page_size_bytes,
                limit: paging.limit,
                page_token: paging.page_token.clone(),
            };
            let mut events = Vec::new();
            let next = loop {
                let page = client.search_event_records(request.clone()).await?;
                events.extend(page.events);
                if !paging.all_pages || page.next_page_token.is_empty() {
                    break page.next_page_token;
                }
                request.page_token = page.next_page_token;
            };
            show(global.output, &events, &next, &types)
        }
        TsCommand::Tail { series, filter, .. } => {
            let request = ts::TailEventRecordsRequest {
                namespace,
                time_series_id: series.unwrap_or_default(),
                filter: filter.to_proto(),
            };
            let mut stream = client.tail_event_records(request).await?;
            loop {
                let message = tokio::select! {
                    m = stream.message() => m?,
                    () = crate::shutdown_signal() => return Ok(()),
                };
                let Some(batch) = message else { return Ok(()) };
                match global.output {
                    Format::Json => {
                        for e in &batch.events {
                            print_json_line(&event_json(e))?;
                        }
                    }
                    Format::Table => print(&events_table(&batch.events, &types))?,
                }
            }
        }
    }
}
