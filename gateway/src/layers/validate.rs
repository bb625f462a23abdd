//! Shape checks that need no metadata: names, sizes and counts against the
//! absolute limits of [`crate::limits`], page sizes, well-formed selectors
//! and tokens. Every refusal names the field as the client wrote it.

use prism_proto::kv::{
    GetItemsRequest, IdempotencyToken, Item, KeyRange, Mutation, delete_items_request, get_items_request, mutation,
};

use super::check::{CheckLayer, Step};
use crate::call::{Call, Request};
use crate::error::{GatewayError, Result};

use crate::limits::*;

pub type ValidateLayer = CheckLayer<Validate>;

#[derive(Debug, Clone, Copy)]
pub struct Validate;

impl Step for Validate {
    fn check(&self, call: &mut Call) -> Result<()> {
        // The name is parsed once, here, and kept on the call: nothing
        // after validation splits it again.
        call.validate_namespace().map_err(bad_namespace)?;
        fields(&call.request)
    }
}

fn bad_namespace(e: prism_proto::names::NameError) -> GatewayError {
    invalid("namespace", format!("namespace name {e}"))
}

fn invalid(field: impl Into<String>, description: impl Into<String>) -> GatewayError {
    GatewayError::invalid(field, description)
}

/// Every shape check of a request, its namespace name included.
pub fn validate(request: &Request) -> Result<()> {
    prism_proto::names::NamespaceName::parse(request.namespace()).map_err(bad_namespace)?;
    fields(request)
}

/// The shape checks of everything but the namespace name.
fn fields(request: &Request) -> Result<()> {
    match request {
        Request::Put(r) => {
            id(&r.id)?;
            count("items", r.items.len())?;
            if r.items.is_empty() {
                return Err(invalid("items", "must hold at least one item"));
            }
            for (i, item) in r.items.iter().enumerate() {
                self::item(&format!("items[{i}]"), item)?;
            }
            token(r.idempotency_token.as_ref())
        }
        Request::Get(r) => {
            id(&r.id)?;
            get_selector(r)?;
            page(r.page_size_bytes, r.limit)
        }
        Request::Delete(r) => {
            id(&r.id)?;
            match &r.selector {
                Some(delete_items_request::Selector::Keys(k)) => keys("keys.keys", &k.keys)?,
                Some(delete_items_request::Selector::Range(range)) => self::range("range", range)?,
                None => {}
            }
            token(r.idempotency_token.as_ref())
        }
        Request::Mutate(r) => {
            id(&r.id)?;
            count("mutations", r.mutations.len())?;
            if r.mutations.is_empty() {
                return Err(invalid("mutations", "must hold at least one mutation"));
            }
            for (i, m) in r.mutations.iter().enumerate() {
                mutation_op(&format!("mutations[{i}]"), m)?;
            }
            token(r.idempotency_token.as_ref())
        }
        Request::Scan(r) => page(r.page_size_bytes, r.limit),
        Request::WriteSync(r) | Request::WriteBuffered(r) => {
            count("events", r.events.len())?;
            if r.events.is_empty() {
                return Err(invalid("events", "must hold at least one event"));
            }
            r.events.iter().enumerate().try_for_each(|(i, e)| event(&format!("events[{i}]"), e))
        }
        Request::Read(r) => {
            name_part("time_series_id", &r.time_series_id, MAX_SERIES_ID_BYTES)?;
            interval(r.start.as_ref(), r.end.as_ref())?;
            page(r.page_size_bytes, r.limit)
        }
        Request::Search(r) => {
            interval(r.start.as_ref(), r.end.as_ref())?;
            if let Some(f) = &r.filter {
                filter(f)?;
            }
            page(r.page_size_bytes, r.limit)
        }
        Request::Tail(r) => {
            if !r.time_series_id.is_empty() {
                name_part("time_series_id", &r.time_series_id, MAX_SERIES_ID_BYTES)?;
            }
            r.filter.as_ref().map_or(Ok(()), filter)
        }
    }
}

/// A series or event id: 1..=max bytes, no NUL (a storage separator).
fn name_part(field: &str, value: &str, max: usize) -> Result<()> {
    if value.is_empty() || value.len() > max {
        return Err(invalid(field, format!("must be 1..={max} bytes")));
    }
    if value.contains('\0') {
        return Err(invalid(field, "must not contain NUL"));
    }
    Ok(())
}

fn timestamp(field: &str, t: &prost_types::Timestamp) -> Result<()> {
    // Microsecond times must fit in an i64: years 1970..=2262 are plenty.
    if t.seconds < 0 || t.seconds > 9_000_000_000 || !(0..1_000_000_000).contains(&t.nanos) {
        return Err(invalid(field, "is not a valid time (1970 to 2255)"));
    }
    Ok(())
}

fn interval(start: Option<&prost_types::Timestamp>, end: Option<&prost_types::Timestamp>) -> Result<()> {
    if let Some(t) = start {
        timestamp("start", t)?;
    }
    if let Some(t) = end {
        timestamp("end", t)?;
    }
    if let (Some(s), Some(e)) = (start, end)
        && (e.seconds, e.nanos) <= (s.seconds, s.nanos)
    {
        return Err(invalid("end", "must be after start"));
    }
    Ok(())
}

fn event(field: &str, e: &prism_proto::timeseries::Event) -> Result<()> {
    name_part(&format!("{field}.time_series_id"), &e.time_series_id, MAX_SERIES_ID_BYTES)?;
    name_part(&format!("{field}.event_id"), &e.event_id, MAX_EVENT_ID_BYTES)?;
    match &e.event_time {
        None => return Err(invalid(format!("{field}.event_time"), "is required")),
        Some(t) => timestamp(&format!("{field}.event_time"), t)?,
    }
    count(&format!("{field}.items"), e.items.len())?;
    for (j, item) in e.items.iter().enumerate() {
        key(&format!("{field}.items[{j}].key"), &item.key)?;
        if item.value.len() > MAX_VALUE_BYTES {
            return Err(invalid(
                format!("{field}.items[{j}].value"),
                format!("is larger than {MAX_VALUE_BYTES} bytes"),
            ));
        }
    }
    if e.tags.len() > MAX_TAGS_PER_EVENT {
        return Err(invalid(format!("{field}.tags"), format!("holds more than {MAX_TAGS_PER_EVENT} tags")));
    }
    for (k, v) in &e.tags {
        if k.is_empty() || k.len() > MAX_TAG_BYTES || v.len() > MAX_TAG_BYTES {
            return Err(invalid(
                format!("{field}.tags"),
                format!("tag keys must be 1..={MAX_TAG_BYTES} bytes, values at most {MAX_TAG_BYTES}"),
            ));
        }
        // Prism's own (the schema version an event is stored with).
        if k.starts_with(prism_schema::RESERVED_TAG_PREFIX) {
            return Err(invalid(
                format!("{field}.tags[{k}]"),
                format!("tag keys starting with {:?} are reserved", prism_schema::RESERVED_TAG_PREFIX),
            ));
        }
    }
    Ok(())
}

/// A tag filter: every node set, at most 64 predicates, at most 8 deep.
fn filter(f: &prism_proto::timeseries::TagFilter) -> Result<()> {
    use prism_proto::timeseries::tag_filter::Filter;
    fn walk(f: &prism_proto::timeseries::TagFilter, field: &str, depth: usize, predicates: &mut usize) -> Result<()> {
        if depth > MAX_FILTER_DEPTH {
            return Err(invalid(field, format!("nests deeper than {MAX_FILTER_DEPTH}")));
        }
        *predicates += 1;
        if *predicates > MAX_FILTER_PREDICATES {
            return Err(invalid("filter", format!("holds more than {MAX_FILTER_PREDICATES} predicates")));
        }
        match &f.filter {
            None => Err(invalid(field, "must set equals, in, and or or")),
            Some(Filter::Equals(e)) if e.key.is_empty() => {
                Err(invalid(format!("{field}.equals.key"), "must not be empty"))
            }
            Some(Filter::In(i)) if i.key.is_empty() => Err(invalid(format!("{field}.in.key"), "must not be empty")),
            Some(Filter::In(i)) if i.values.is_empty() => {
                Err(invalid(format!("{field}.in.values"), "must not be empty"))
            }
            Some(Filter::Equals(_) | Filter::In(_)) => Ok(()),
            Some(Filter::And(list)) | Some(Filter::Or(list)) => {
                let op = if matches!(f.filter, Some(Filter::And(_))) { "and" } else { "or" };
                if list.filters.is_empty() {
                    return Err(invalid(format!("{field}.{op}.filters"), "must not be empty"));
                }
                list.filters
                    .iter()
                    .enumerate()
                    .try_for_each(|(i, sub)| walk(sub, &format!("{field}.{op}.filters[{i}]"), depth + 1, predicates))
            }
        }
    }
    walk(f, "filter", 1, &mut 0)
}

fn id(id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(invalid("id", "must not be empty"));
    }
    if id.len() > MAX_ID_BYTES {
        return Err(invalid("id", format!("is {} bytes long, at most {MAX_ID_BYTES} are allowed", id.len())));
    }
    // NUL separates id from key in storage order.
    if id.contains('\0') {
        return Err(invalid("id", "must not contain NUL"));
    }
    Ok(())
}

fn count(field: &str, n: usize) -> Result<()> {
    if n > MAX_ITEMS_PER_REQUEST {
        return Err(invalid(field, format!("holds {n} entries, at most {MAX_ITEMS_PER_REQUEST} are allowed")));
    }
    Ok(())
}

fn key(field: &str, key: &[u8]) -> Result<()> {
    if key.len() > MAX_KEY_BYTES {
        return Err(invalid(field, format!("is {} bytes long, at most {MAX_KEY_BYTES} are allowed", key.len())));
    }
    Ok(())
}

fn keys(field: &str, keys: &[Vec<u8>]) -> Result<()> {
    count(field, keys.len())?;
    if keys.is_empty() {
        return Err(invalid(field, "must hold at least one key"));
    }
    keys.iter().enumerate().try_for_each(|(i, k)| key(&format!("{field}[{i}]"), k))
}

fn range(field: &str, r: &KeyRange) -> Result<()> {
    key(&format!("{field}.start"), &r.start)?;
    key(&format!("{field}.end"), &r.end)?;
    if !r.end.is_empty() && r.end <= r.start {
        return Err(invalid(format!("{field}.end"), "must be after start (or empty for no bound)"));
    }
    Ok(())
}

fn item(field: &str, item: &Item) -> Result<()> {
    key(&format!("{field}.key"), &item.key)?;
    if item.value.len() > MAX_VALUE_BYTES {
        return Err(invalid(format!("{field}.value"), format!("is larger than {MAX_VALUE_BYTES} bytes")));
    }
    let positive = |d: &prost_types::Duration| d.seconds >= 0 && d.nanos >= 0 && (d.seconds, d.nanos) != (0, 0);
    if item.ttl.as_ref().is_some_and(|ttl| !positive(ttl)) {
        return Err(invalid(format!("{field}.ttl"), "must be positive (leave it unset for the default)"));
    }
    Ok(())
}

fn mutation_op(field: &str, m: &Mutation) -> Result<()> {
    match &m.operation {
        Some(mutation::Operation::Put(i)) => item(&format!("{field}.put"), i),
        Some(mutation::Operation::DeleteKey(k)) => key(&format!("{field}.delete_key"), k),
        Some(mutation::Operation::DeleteRange(r)) => range(&format!("{field}.delete_range"), r),
        None => Err(invalid(field, "must set put, delete_key or delete_range")),
    }
}

fn token(t: Option<&IdempotencyToken>) -> Result<()> {
    let Some(t) = t else { return Ok(()) };
    if t.token.is_empty() || t.token.len() > MAX_TOKEN_BYTES {
        return Err(invalid("idempotency_token.token", format!("must be 1..={MAX_TOKEN_BYTES} bytes")));
    }
    match &t.generation_time {
        None => Err(invalid("idempotency_token.generation_time", "is required")),
        Some(ts) if !(0..1_000_000_000).contains(&ts.nanos) || ts.seconds < 0 => {
            Err(invalid("idempotency_token.generation_time", "is not a valid time"))
        }
        Some(_) => Ok(()),
    }
}

fn get_selector(r: &GetItemsRequest) -> Result<()> {
    match &r.selector {
        Some(get_items_request::Selector::Keys(k)) => keys("keys.keys", &k.keys),
        Some(get_items_request::Selector::Range(range)) => self::range("range", range),
        None => Ok(()),
    }
}

fn page(page_size_bytes: u64, limit: u32) -> Result<()> {
    if page_size_bytes > MAX_PAGE_BYTES {
        return Err(invalid("page_size_bytes", format!("must be at most {MAX_PAGE_BYTES}")));
    }
    if limit > MAX_PAGE_ITEMS {
        return Err(invalid("limit", format!("must be at most {MAX_PAGE_ITEMS}")));
    }
    Ok(())
}
