//! Shape checks that need no metadata: names, sizes and counts against the
//! absolute limits below, page sizes, well-formed selectors and tokens.
//! Every refusal names the field as the client wrote it.

use prism_proto::kv::{
    GetItemsRequest, IdempotencyToken, Item, KeyRange, Mutation, delete_items_request, get_items_request, mutation,
};

use super::{CheckLayer, Step};
use crate::call::{Call, Request};
use crate::error::{GatewayError, Result};

/// The documented absolute limits (proto/prism/kv/v1/kv.proto).
pub mod limits {
    pub const MAX_ID_BYTES: usize = 1024;
    pub const MAX_KEY_BYTES: usize = 4096;
    /// The largest value any namespace may allow (its own limit is lower).
    pub const MAX_VALUE_BYTES: usize = 64 << 20;
    pub const MAX_ITEMS_PER_REQUEST: usize = 10_000;
    pub const MAX_PAGE_BYTES: u64 = 16 << 20;
    pub const DEFAULT_PAGE_BYTES: u64 = 1 << 20;
    pub const MAX_PAGE_ITEMS: u32 = 10_000;
    pub const MAX_TOKEN_BYTES: usize = 128;
}
use limits::*;

pub type ValidateLayer = CheckLayer<Validate>;

#[derive(Debug, Clone, Copy)]
pub struct Validate;

impl Step for Validate {
    fn check(&self, call: &mut Call) -> Result<()> {
        validate(&call.request)
    }
}

fn invalid(field: impl Into<String>, description: impl Into<String>) -> GatewayError {
    GatewayError::invalid(field, description)
}

pub fn validate(request: &Request) -> Result<()> {
    prism_proto::names::NamespaceName::parse(request.namespace())
        .map_err(|e| invalid("namespace", format!("namespace name {e}")))?;
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
    }
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
