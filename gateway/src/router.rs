//! The innermost service: turns an admitted, validated, authorized call
//! into plugin operations on the namespace's backend, through the read
//! cache where the namespace enables it, and builds the response.
//!
//! What is the same for every backend happens here, once: TTLs become
//! expiry times, writes are stamped (idempotency token or the gateway's
//! clock, bounded by the clock-skew limit), page tokens are sealed and
//! checked, reads get the call's deadline (a page ends early before it,
//! with a token, [`prism_plugin_api::pace`]), and deletes and puts become
//! one atomic mutation list.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
use prism_plugin_api::kv::{
    self as pkv, KeyRange, KeyValueHandle, Mutation, NewItem, PageLimits, Selector, WriteStamp,
};
use prism_plugin_api::pace::StopBy;
use prism_plugin_api::{Micros, now_micros};
use prism_proto::kv;
use tower::Service;

use crate::backend::observed;
use crate::cache::Cached;
use crate::call::{Call, Request, Resolved, Response};
use crate::error::{GatewayError, Result};
use crate::limits::DEFAULT_PAGE_BYTES;
use crate::metrics::Op;
use crate::operations::Operations;
use crate::page_token;
use crate::snapshot::NamespaceEntry;

/// Cache TTL when a namespace enables the cache without one.
const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct Router {
    ops: Arc<Operations>,
}

impl Router {
    pub fn new(ops: Arc<Operations>) -> Self {
        Self { ops }
    }
}

impl Service<Call> for Router {
    type Response = Response;
    type Error = GatewayError;
    type Future = BoxFuture<'static, Result<Response>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: Call) -> Self::Future {
        // One box per call, sized to its own path: a KeyValue call does not
        // carry the TimeSeries path's state, nor the other way round (a
        // smaller allocation and smaller copies on every request).
        let ops = self.ops.clone();
        if call.request.abstraction() == prism_proto::control::Abstraction::TimeSeries {
            Box::pin(execute_ts(ops, call))
        } else {
            Box::pin(execute(ops, call))
        }
    }
}

fn micros(d: &prost_types::Duration) -> i64 {
    d.seconds.saturating_mul(1_000_000).saturating_add(i64::from(d.nanos) / 1_000)
}

fn timestamp_micros(t: &prost_types::Timestamp) -> i64 {
    t.seconds.saturating_mul(1_000_000).saturating_add(i64::from(t.nanos) / 1_000)
}

fn proto_duration(us: i64) -> prost_types::Duration {
    prost_types::Duration { seconds: us / 1_000_000, nanos: ((us % 1_000_000) * 1_000) as i32 }
}

/// The write stamp: the client's idempotency token, or the gateway clock.
fn stamp(token: Option<kv::IdempotencyToken>, now: Micros, max_skew: Duration) -> Result<WriteStamp> {
    let Some(t) = token else {
        return Ok(WriteStamp { generation_time: now, token: None });
    };
    let generation_time = t.generation_time.as_ref().map_or(now, timestamp_micros);
    let skew = i64::try_from(max_skew.as_micros()).unwrap_or(i64::MAX);
    if generation_time > now.saturating_add(skew) {
        return Err(GatewayError::invalid(
            "idempotency_token.generation_time",
            format!("is more than {max_skew:?} in the future (clock skew bound)"),
        ));
    }
    Ok(WriteStamp { generation_time, token: Some(t.token) })
}

fn new_item(item: kv::Item, now: Micros, default_ttl: Option<i64>) -> NewItem {
    let ttl = item.ttl.as_ref().map(micros).or(default_ttl);
    NewItem { key: item.key, value: item.value, expires_at: ttl.map(|t| now.saturating_add(t)) }
}

fn range(r: kv::KeyRange) -> KeyRange {
    KeyRange { start: r.start, end: (!r.end.is_empty()).then_some(r.end) }
}

fn to_proto(item: pkv::Item, now: Micros) -> kv::Item {
    kv::Item { key: item.key, value: item.value, ttl: item.expires_at.map(|at| proto_duration((at - now).max(0))) }
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

/// What authorization resolved for the call; held until the response is
/// built (its namespace is counted in flight: deletion drains these).
fn resolved(resolved: Option<Resolved>) -> Result<Resolved> {
    resolved.ok_or_else(|| GatewayError::Internal("routing an unauthorized call".into()))
}

async fn execute_ts(ops: Arc<Operations>, call: Call) -> Result<Response> {
    let resolved = resolved(call.resolved)?;
    crate::ts_router::execute(&ops, &resolved, call.request, call.trace.as_ref(), call.stop_by, now_micros()).await
}

async fn execute(ops: Arc<Operations>, call: Call) -> Result<Response> {
    let ops = &*ops;
    let resolved = resolved(call.resolved)?;
    let entry = resolved.entry();
    let now = now_micros();
    // Opened once per metadata change, kept with the entry; a migrating
    // namespace's writes go to both sides.
    let (kv, also) = entry.key_value_sides(&ops.plugins)?;
    let policies = entry.ns.spec.policies.as_deref();
    let default_ttl = policies.and_then(|p| p.default_item_ttl.as_ref()).map(micros).filter(|t| *t > 0);
    let skew = ops.max_clock_skew;
    match call.request {
        Request::Put(r) => {
            let stamp = stamp(r.idempotency_token, now, skew)?;
            let mutations: Vec<_> = r.items.into_iter().map(|i| Mutation::Put(new_item(i, now, default_ttl))).collect();
            write(ops, (kv, also), entry, &r.id, &mutations, &stamp).await?;
            Ok(Response::Put(kv::PutItemsResponse {}))
        }
        Request::Delete(r) => {
            let stamp = stamp(r.idempotency_token, now, skew)?;
            let mutations = match r.selector {
                Some(kv::delete_items_request::Selector::Keys(k)) => k.keys.into_iter().map(Mutation::Delete).collect(),
                Some(kv::delete_items_request::Selector::Range(rg)) => vec![Mutation::DeleteRange(range(rg))],
                None => vec![Mutation::DeleteRange(KeyRange::all())],
            };
            write(ops, (kv, also), entry, &r.id, &mutations, &stamp).await?;
            Ok(Response::Delete(kv::DeleteItemsResponse {}))
        }
        Request::Mutate(r) => {
            let stamp = stamp(r.idempotency_token, now, skew)?;
            let mutations: Vec<_> = r
                .mutations
                .into_iter()
                .filter_map(|m| match m.operation? {
                    kv::mutation::Operation::Put(i) => Some(Mutation::Put(new_item(i, now, default_ttl))),
                    kv::mutation::Operation::DeleteKey(k) => Some(Mutation::Delete(k)),
                    kv::mutation::Operation::DeleteRange(rg) => Some(Mutation::DeleteRange(range(rg))),
                })
                .collect();
            write(ops, (kv, also), entry, &r.id, &mutations, &stamp).await?;
            Ok(Response::Mutate(kv::MutateItemsResponse {}))
        }
        Request::Get(r) => {
            if entry.shadow_sampled() {
                shadow(ops, resolved.entry().clone(), r.id.clone(), selector(&r));
            }
            get(ops, kv, entry, r, call.stop_by, now).await.map(Response::Get)
        }
        Request::Scan(r) => scan(ops, kv, entry, r, call.stop_by, now).await.map(Response::Scan),
        _ => Err(GatewayError::Internal("a TimeSeries request reached the KeyValue router".into())),
    }
}

/// Sends a sampled read to both sides of the namespace's migration, off
/// the request's path, and counts whether they agreed (ARCHITECTURE.md,
/// "The life of a migration", VERIFY).
fn shadow(ops: &Operations, entry: Arc<NamespaceEntry>, id: String, selector: Selector) {
    let plugins = ops.plugins.clone();
    let metrics = ops.metrics.clone();
    tokio::spawn(async move {
        let Some(migration) = entry.migration.as_deref().map(|m| m.id) else { return };
        let (source, target) = match (entry.key_value(&plugins), entry.dual_write_target(&plugins)) {
            (Ok(source), Ok(Some(target))) => (source, target),
            _ => return,
        };
        let outcome = crate::migration::shadow_read(source, target, &id, &selector).await;
        crate::backend::count_shadow_read(&metrics, &entry, migration, outcome, format_args!("record {id}"));
    });
}

/// Writes, then invalidates the cached record whatever the outcome (a
/// timed-out write may still have been applied).
///
/// While the namespace migrates (from DUAL_WRITE on), the write goes to
/// both `sides` (the source first; from CUTOVER the target first:
/// [`NamespaceEntry::key_value_sides`]) with the same stamp, and is
/// acknowledged only when both applied it: a failed write to either
/// fails the call, and the client's retry carries the same stamp (with a
/// token, a side applies it once; without, last-writer-wins by the same
/// generation time makes it the same write).
async fn write(
    ops: &Operations,
    sides: (&dyn KeyValueHandle, Option<&dyn KeyValueHandle>),
    entry: &NamespaceEntry,
    id: &str,
    mutations: &[Mutation],
    stamp: &WriteStamp,
) -> Result<()> {
    let (first, also) = sides;
    let outcome = async {
        observed(&ops.metrics, entry, Op::Mutate, |_| first.mutate(id, mutations, stamp)).await?;
        if let Some(second) = also {
            observed(&ops.metrics, entry, Op::Mutate, |_| second.mutate(id, mutations, stamp)).await?;
        }
        Ok::<_, GatewayError>(())
    }
    .await;
    if entry.ns.spec.policies.as_deref().is_some_and(|p| p.cache_enabled) {
        ops.cache.invalidate(entry, id).await;
    }
    outcome
}

fn selector(r: &kv::GetItemsRequest) -> Selector {
    match &r.selector {
        Some(kv::get_items_request::Selector::Keys(k)) => {
            let mut keys = k.keys.clone();
            keys.sort_unstable();
            keys.dedup();
            Selector::Keys(keys)
        }
        Some(kv::get_items_request::Selector::Range(rg)) => Selector::Range(range(rg.clone())),
        None => Selector::All,
    }
}

/// Fingerprint of what a GetItems page token continues.
fn get_binding(entry: &NamespaceEntry, r: &kv::GetItemsRequest) -> u64 {
    let rev = entry.incarnation.to_be_bytes();
    let mut parts: Vec<&[u8]> = vec![entry.ns.name.as_bytes(), &rev, b"get", r.id.as_bytes()];
    match &r.selector {
        Some(kv::get_items_request::Selector::Keys(k)) => {
            parts.push(b"keys");
            parts.extend(k.keys.iter().map(Vec::as_slice));
        }
        Some(kv::get_items_request::Selector::Range(rg)) => parts.extend([b"range".as_slice(), &rg.start, &rg.end]),
        None => parts.push(b"all"),
    }
    page_token::binding(&parts)
}

async fn get(
    ops: &Operations,
    kv: &dyn KeyValueHandle,
    entry: &NamespaceEntry,
    r: kv::GetItemsRequest,
    stop_by: Option<StopBy>,
    now: Micros,
) -> Result<kv::GetItemsResponse> {
    // The fingerprint is needed only to check a page token or to seal the
    // next one: most reads have neither, and hashing it was ~1.6 K
    // instructions of a cache hit's ~80 K.
    let after = if r.page_token.is_empty() { None } else { page_token::decode(get_binding(entry, &r), &r.page_token)? };
    let selector = selector(&r);
    let limits = limits(r.page_size_bytes, r.limit, stop_by);
    let policies = entry.ns.spec.policies.as_deref();
    let page = match policies.filter(|p| p.cache_enabled) {
        Some(p) => {
            let ttl = p.cache_ttl.as_ref().map(|d| Duration::from_micros(micros(d).max(0) as u64));
            let ttl = ttl.filter(|t| !t.is_zero()).unwrap_or(DEFAULT_CACHE_TTL);
            let max_record = ops.cache.max_record_bytes();
            let cached = ops
                .cache
                .get_or_load(entry, &r.id, ttl, || async {
                    // The whole record, for every waiter: not cut by this
                    // caller's deadline (the deadline layer cuts it off).
                    let whole = PageLimits::new(max_record, None);
                    let page =
                        observed(&ops.metrics, entry, Op::Get, |_| kv.get(&r.id, &Selector::All, None, whole, now))
                            .await?;
                    Ok(if page.next.is_some() { Cached::TooLarge } else { Cached::Items(Arc::new(page.items)) })
                })
                .await
                .map_err(GatewayError::SharedPlugin)?;
            match cached {
                Some(Cached::Items(items)) => select_page(&items, &selector, after.as_deref(), limits, now),
                Some(Cached::TooLarge) | None => {
                    observed(&ops.metrics, entry, Op::Get, |_| kv.get(&r.id, &selector, after.as_deref(), limits, now))
                        .await?
                }
            }
        }
        None => {
            observed(&ops.metrics, entry, Op::Get, |_| kv.get(&r.id, &selector, after.as_deref(), limits, now)).await?
        }
    };
    Ok(kv::GetItemsResponse {
        next_page_token: page.next.map(|k| page_token::encode(get_binding(entry, &r), &k)).unwrap_or_default(),
        items: page.items.into_iter().map(|i| to_proto(i, now)).collect(),
    })
}

/// One page of a cached record, with the plugins' paging rules: key order,
/// after `after`, expired items skipped, stop once `max_bytes` is reached
/// (the crossing item included) or at `max_items`.
pub fn select_page(
    items: &[pkv::Item],
    selector: &Selector,
    after: Option<&[u8]>,
    limits: PageLimits,
    now: Micros,
) -> pkv::ItemsPage {
    let wanted = |item: &&pkv::Item| {
        after.is_none_or(|a| item.key.as_slice() > a)
            && item.expires_at.is_none_or(|at| at > now)
            && match selector {
                Selector::All => true,
                Selector::Keys(keys) => keys.binary_search(&item.key).is_ok(),
                Selector::Range(r) => r.contains(&item.key),
            }
    };
    let mut candidates = items.iter().filter(wanted).peekable();
    let mut page = pkv::ItemsPage::default();
    let mut bytes = 0u64;
    while let Some(item) = candidates.next() {
        bytes += (item.key.len() + item.value.len()) as u64;
        page.items.push(item.clone());
        let full = bytes >= limits.max_bytes || limits.max_items.is_some_and(|m| page.items.len() >= m as usize);
        if full {
            if candidates.peek().is_some() {
                page.next = Some(item.key.clone());
            }
            break;
        }
    }
    page
}

async fn scan(
    ops: &Operations,
    kv: &dyn KeyValueHandle,
    entry: &NamespaceEntry,
    r: kv::ScanItemsRequest,
    stop_by: Option<StopBy>,
    now: Micros,
) -> Result<kv::ScanItemsResponse> {
    let rev = entry.incarnation.to_be_bytes();
    let binding = page_token::binding(&[entry.ns.name.as_bytes(), &rev, b"scan"]);
    let after = page_token::decode(binding, &r.page_token)?
        .map(|p| page_token::parse_scan_position(&p).map(|(id, key)| pkv::ScanCursor { id, key }))
        .transpose()?;
    let limits = limits(r.page_size_bytes, r.limit, stop_by);
    let page = observed(&ops.metrics, entry, Op::Scan, |_| kv.scan(after.as_ref(), limits, now)).await?;
    Ok(kv::ScanItemsResponse {
        next_page_token: page
            .next
            .map(|c| page_token::encode(binding, &page_token::scan_position(&c.id, &c.key)))
            .unwrap_or_default(),
        records: page
            .records
            .into_iter()
            .map(|rec| kv::Record { id: rec.id, items: rec.items.into_iter().map(|i| to_proto(i, now)).collect() })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(k: &str, v: usize, expires_at: Option<i64>) -> pkv::Item {
        pkv::Item { key: k.as_bytes().to_vec(), value: vec![b'v'; v], expires_at }
    }

    #[test]
    fn cached_pages_follow_the_paging_rules() {
        let items = vec![item("a", 10, None), item("b", 10, Some(5)), item("c", 10, None), item("d", 10, None)];
        let lim = |b, n| PageLimits::new(b, n);
        // b expired at now = 5; crossing item included; next only when more follow.
        let p = select_page(&items, &Selector::All, None, lim(12, None), 5);
        assert_eq!(p.items.iter().map(|i| i.key[0]).collect::<Vec<_>>(), b"ac");
        assert_eq!(p.next.as_deref(), Some(b"c".as_slice()));
        let p = select_page(&items, &Selector::All, Some(b"c"), lim(12, None), 5);
        assert_eq!(p.items.len(), 1);
        assert_eq!(p.next, None);
        let p = select_page(&items, &Selector::Keys(vec![b"b".to_vec(), b"d".to_vec()]), None, lim(1 << 20, None), 0);
        assert_eq!(p.items.len(), 2);
        let r = Selector::Range(KeyRange { start: b"b".to_vec(), end: Some(b"d".to_vec()) });
        let p = select_page(&items, &r, None, lim(1 << 20, Some(1)), 0);
        assert_eq!((p.items.len(), p.next.as_deref()), (1, Some(b"b".as_slice())));
    }

    #[test]
    fn stamps_refuse_tokens_from_the_future() {
        let now = 1_000_000_000;
        let t = |secs| kv::IdempotencyToken {
            generation_time: Some(prost_types::Timestamp { seconds: secs, nanos: 0 }),
            token: "t".into(),
        };
        assert!(stamp(Some(t(1_000 + 1)), now, Duration::from_secs(5)).is_ok());
        let e = stamp(Some(t(1_000 + 60)), now, Duration::from_secs(5)).expect_err("future");
        assert!(e.to_string().contains("idempotency_token.generation_time"));
        assert_eq!(stamp(None, now, Duration::ZERO).expect("no token").generation_time, now);
    }
}
