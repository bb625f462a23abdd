//! TimeSeries operations on the namespace's plugin: what is the same for
//! every backend, once — the accept window, buffered versus durable
//! writes, sealed page tokens, reads ended early before the call's
//! deadline, and handing durable events to the tails of backends that do
//! not follow their own writes (`tail.rs`); events convert in `ts_event.rs`.

use prism_plugin_api::Micros;
use prism_plugin_api::kv::PageLimits;
use prism_plugin_api::pace::StopBy;
use prism_plugin_api::ts::{self as pts, EventCursor, Query, TagFilter};
use prism_proto::timeseries::{self as ts, tag_filter};
use prism_telemetry::trace::TraceParent;

use crate::backend::{observed, write_context};
use crate::call::{Request, Resolved, Response};
use crate::error::{GatewayError, Result};
use crate::limits::DEFAULT_PAGE_BYTES;
use crate::metrics::Op;
use crate::operations::Operations;
use crate::page_token;
use crate::snapshot::NamespaceEntry;
use crate::ts_event::{micros, to_plugin, to_proto};

/// How far back an event may be when a namespace sets no accept limit.
pub const DEFAULT_ACCEPT_LIMIT_MICROS: i64 = 3_600_000_000;

/// Validates every event of a write against the namespace's latest
/// schema, before anything is stored; answers the version they are
/// written under, as its tag holds it (`None`: the namespace has no
/// schema).
fn check_schema(entry: &NamespaceEntry, events: &[ts::Event]) -> Result<Option<String>> {
    let Some(slot) = &entry.schema else {
        return Ok(None);
    };
    let compiled = slot.compiled()?;
    for (i, e) in events.iter().enumerate() {
        compiled.check_event(i, e).map_err(|v| GatewayError::invalid(v.field, v.description))?;
    }
    Ok(Some(slot.version.to_string()))
}

/// A validated proto filter as the plugins' filter.
pub fn filter(f: &ts::TagFilter) -> Option<TagFilter> {
    Some(match f.filter.as_ref()? {
        tag_filter::Filter::Equals(e) => TagFilter::Equals { key: e.key.clone(), value: e.value.clone() },
        tag_filter::Filter::In(i) => TagFilter::In { key: i.key.clone(), values: i.values.clone() },
        tag_filter::Filter::And(l) => TagFilter::And(l.filters.iter().filter_map(filter).collect()),
        tag_filter::Filter::Or(l) => TagFilter::Or(l.filters.iter().filter_map(filter).collect()),
    })
}

/// Refuses events older than the namespace's accept limit.
fn accept_window(entry: &NamespaceEntry, events: &[ts::Event], now: Micros) -> Result<()> {
    let limit = entry
        .ns
        .spec
        .policies
        .as_ref()
        .and_then(|p| p.accept_limit.as_ref())
        .map(|d| d.seconds.saturating_mul(1_000_000).saturating_add(i64::from(d.nanos) / 1_000))
        .filter(|l| *l > 0)
        .unwrap_or(DEFAULT_ACCEPT_LIMIT_MICROS);
    let oldest = now.saturating_sub(limit);
    match events.iter().position(|e| e.event_time.as_ref().map_or(0, micros) < oldest) {
        Some(i) => Err(GatewayError::invalid(
            format!("events[{i}].event_time"),
            format!("is older than the namespace accepts ({} s ago)", limit / 1_000_000),
        )),
        None => Ok(()),
    }
}

/// A page's limits: its bytes and count, and when it ends early
/// (`stop_by`, from the deadline layer).
fn limits(page_size_bytes: u64, limit: u32, stop_by: Option<StopBy>) -> PageLimits {
    PageLimits::new(
        if page_size_bytes == 0 { DEFAULT_PAGE_BYTES } else { page_size_bytes },
        (limit > 0).then_some(limit),
    )
    .stopping(stop_by)
}

fn cursor_bytes(c: &EventCursor) -> Vec<u8> {
    let mut out = c.event_time.to_be_bytes().to_vec();
    out.extend_from_slice(&page_token::scan_position(&c.time_series_id, c.event_id.as_bytes()));
    out
}

fn parse_cursor(bytes: &[u8]) -> Result<EventCursor> {
    let bad = || GatewayError::invalid("page_token", "is not a page token of this request");
    let (time, rest) = bytes.split_first_chunk::<8>().ok_or_else(bad)?;
    let (series, event_id) = page_token::parse_scan_position(rest)?;
    Ok(EventCursor {
        event_time: i64::from_be_bytes(*time),
        time_series_id: series,
        event_id: String::from_utf8(event_id).map_err(|_| bad())?,
    })
}

fn interval(start: Option<&prost_types::Timestamp>, end: Option<&prost_types::Timestamp>) -> (Micros, Micros) {
    (start.map_or(0, micros), end.map_or(i64::MAX, micros))
}

fn page(binding: u64, page: pts::EventsPage) -> (Vec<ts::Event>, String) {
    let next = page.next.map(|c| page_token::encode(binding, &cursor_bytes(&c))).unwrap_or_default();
    (page.events.into_iter().map(to_proto).collect(), next)
}

pub async fn execute(
    ops: &Operations,
    resolved: &Resolved,
    request: Request,
    caller: Option<&TraceParent>,
    stop_by: Option<StopBy>,
    now: Micros,
) -> Result<Response> {
    let entry = resolved.entry();
    let rev = entry.incarnation.to_be_bytes();
    match request {
        Request::WriteSync(r) => {
            let (first, _) = entry.time_series_sides(&ops.plugins)?;
            accept_window(entry, &r.events, now)?;
            let version = check_schema(entry, &r.events)?;
            let events: Vec<_> = r.events.iter().map(|e| to_plugin(e, version.as_deref())).collect();
            crate::backend::write_events(&ops.plugins, &ops.metrics, entry, &events, |span| {
                write_context(span, caller)
            })
            .await?;
            if ops.tails.watched(entry, first) {
                // As stored (microseconds), so a tail and a read agree.
                ops.tails.publish(entry, events.iter().cloned().map(to_proto).collect());
            }
            Ok(Response::Write(ts::WriteEventRecordsResponse { accepted: events.len() as u32 }))
        }
        Request::WriteBuffered(r) => {
            let (first, _) = entry.time_series_sides(&ops.plugins)?;
            if !entry.ns.spec.policies.as_deref().is_some_and(|p| p.accept_loss) {
                return Err(GatewayError::FailedPrecondition(format!(
                    "namespace {} does not accept loss; use WriteEventRecordsSync",
                    entry.ns.name
                )));
            }
            accept_window(entry, &r.events, now)?;
            let version = check_schema(entry, &r.events)?;
            let events: Vec<_> = r.events.iter().map(|e| to_plugin(e, version.as_deref())).collect();
            let n = events.len() as u32;
            let published = ops.tails.watched(entry, first).then(|| events.iter().cloned().map(to_proto).collect());
            // Written later, outside this request: the events keep its
            // trace context (the request span's when exported).
            let context = write_context(&tracing::Span::current(), caller);
            ops.buffer.offer(entry.clone(), events, published, context).inspect_err(|_| {
                ops.metrics.refusals.record(crate::metrics::Layer::Buffer, "write_buffer_full");
            })?;
            Ok(Response::Write(ts::WriteEventRecordsResponse { accepted: n }))
        }
        Request::Read(r) => {
            let (plugin, also) = entry.time_series_sides(&ops.plugins)?;
            let (start, end) = interval(r.start.as_ref(), r.end.as_ref());
            let binding = page_token::binding(&[
                entry.ns.name.as_bytes(),
                &rev,
                b"read",
                r.time_series_id.as_bytes(),
                &start.to_be_bytes(),
                &end.to_be_bytes(),
            ]);
            let after = page_token::decode(binding, &r.page_token)?.map(|b| parse_cursor(&b)).transpose()?;
            let query = Query {
                after,
                ..Query::series(r.time_series_id, (start, end), limits(r.page_size_bytes, r.limit, stop_by))
            };
            if also.is_some() && entry.shadow_sampled() {
                shadow(ops, resolved.entry().clone(), query.clone(), now);
            }
            let got = observed(&ops.metrics, entry, Op::Read, |_| plugin.query(&query, now)).await?;
            let (events, next_page_token) = page(binding, got);
            Ok(Response::Read(ts::ReadEventRecordsResponse { events, next_page_token }))
        }
        Request::Search(r) => {
            let (plugin, _) = entry.time_series_sides(&ops.plugins)?;
            let (start, end) = interval(r.start.as_ref(), r.end.as_ref());
            let encoded_filter = r.filter.as_ref().map(prost::Message::encode_to_vec).unwrap_or_default();
            let binding = page_token::binding(&[
                entry.ns.name.as_bytes(),
                &rev,
                b"search",
                &start.to_be_bytes(),
                &end.to_be_bytes(),
                &encoded_filter,
            ]);
            let after = page_token::decode(binding, &r.page_token)?.map(|b| parse_cursor(&b)).transpose()?;
            let tag_filter = r.filter.as_ref().and_then(filter);
            let query =
                Query { after, ..Query::search(tag_filter, (start, end), limits(r.page_size_bytes, r.limit, stop_by)) };
            let got = observed(&ops.metrics, entry, Op::Search, |_| plugin.query(&query, now)).await?;
            let (events, next_page_token) = page(binding, got);
            Ok(Response::Search(ts::SearchEventRecordsResponse { events, next_page_token }))
        }
        Request::Tail(r) => {
            let (plugin, _) = entry.time_series_sides(&ops.plugins)?;
            let tag_filter = r.filter.as_ref().and_then(filter);
            Ok(Response::Tail(ops.tails.subscribe(entry, plugin, r.time_series_id, tag_filter).await?))
        }
        _ => Err(GatewayError::Internal("a KeyValue request reached the TimeSeries router".into())),
    }
}

/// Sends a sampled read to both sides of the namespace's migration, off
/// the request's path, and counts whether they served the same
/// (ARCHITECTURE.md, "The life of a migration", VERIFY).
fn shadow(ops: &Operations, entry: std::sync::Arc<NamespaceEntry>, query: Query, now: Micros) {
    let (plugins, metrics) = (ops.plugins.clone(), ops.metrics.clone());
    tokio::spawn(async move {
        let Some(migration) = entry.migration.as_deref().map(|m| m.id) else { return };
        let (source, target) = match entry.time_series_sides(&plugins) {
            Ok((source, Some(target))) => (source, target),
            _ => return,
        };
        let outcome = crate::ts_migration::shadow_read(source, target, &query, now).await;
        let series = query.series.as_deref().unwrap_or_default();
        crate::backend::count_shadow_read(&metrics, &entry, migration, outcome, format_args!("series {series}"));
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ts_event::timestamp;

    #[test]
    fn cursors_and_times_round_trip() {
        let c = EventCursor { event_time: 1_700_000_000_123_456, time_series_id: "s/1".into(), event_id: "e-9".into() };
        assert_eq!(parse_cursor(&cursor_bytes(&c)).expect("valid"), c);
        assert!(parse_cursor(b"short").is_err());
        let t = timestamp(-1);
        assert_eq!((t.seconds, t.nanos), (-1, 999_999_000));
        assert_eq!(micros(&timestamp(1_234_567)), 1_234_567);
    }
}
