//! Quotas that depend on the namespace: the largest item (the namespace's
//! `max_item_size_bytes` policy, capped by the namespace's and the tenant's
//! `max_item_size_bytes` quotas). Rates, storage and concurrency quotas
//! arrive with the tenancy issue, in this layer.

use prism_proto::kv::mutation;

use super::{CheckLayer, Step};
use crate::call::{Call, Request};
use crate::error::{GatewayError, Result};
use crate::snapshot::NamespaceEntry;

pub type QuotaLayer = CheckLayer<Quota>;

/// A namespace's item size when its policy says 0.
pub const DEFAULT_MAX_ITEM_BYTES: i64 = 1 << 20;

#[derive(Debug, Clone, Copy)]
pub struct Quota;

/// The largest key + value the namespace accepts.
pub fn max_item_bytes(entry: &NamespaceEntry) -> u64 {
    let spec = &entry.ns.spec;
    let policy = spec.policies.as_ref().map_or(0, |p| p.max_item_size_bytes);
    let mut max = if policy > 0 { policy } else { DEFAULT_MAX_ITEM_BYTES };
    if let Some(q) = spec.quotas.as_ref().and_then(|q| q.max_item_size_bytes).filter(|q| *q >= 0) {
        max = max.min(q);
    }
    u64::try_from(max).unwrap_or(0)
}

/// An event's size: its items' keys and values and its tags.
pub fn event_bytes(e: &prism_proto::timeseries::Event) -> usize {
    e.items.iter().map(|i| i.key.len() + i.value.len()).sum::<usize>()
        + e.tags.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
}

impl Step for Quota {
    fn check(&self, call: &mut Call) -> Result<()> {
        let Some(entry) = call.namespace.as_ref().map(|f| f.entry()) else {
            return Err(GatewayError::Internal("quota before authorization".into()));
        };
        let max = max_item_bytes(entry);
        let fits = |item: &prism_proto::kv::Item| (item.key.len() + item.value.len()) as u64 <= max;
        // Field names are formatted only for a refusal: nothing is
        // allocated on the accepted path.
        let refuse = |field: String, item: &prism_proto::kv::Item| {
            let size = item.key.len() + item.value.len();
            GatewayError::invalid(field, format!("item is {size} bytes, the namespace allows {max}"))
        };
        match &call.request {
            Request::Put(r) => {
                if let Some((i, item)) = r.items.iter().enumerate().find(|(_, it)| !fits(it)) {
                    return Err(refuse(format!("items[{i}].value"), item));
                }
            }
            Request::Mutate(r) => {
                let oversize = r.mutations.iter().enumerate().find_map(|(i, m)| match &m.operation {
                    Some(mutation::Operation::Put(it)) if !fits(it) => Some((i, it)),
                    _ => None,
                });
                if let Some((i, item)) = oversize {
                    return Err(refuse(format!("mutations[{i}].put.value"), item));
                }
            }
            Request::WriteSync(r) | Request::WriteBuffered(r) => {
                if let Some((i, size)) =
                    r.events.iter().map(event_bytes).enumerate().find(|(_, size)| *size as u64 > max)
                {
                    return Err(GatewayError::invalid(
                        format!("events[{i}]"),
                        format!("event is {size} bytes, the namespace allows {max}"),
                    ));
                }
            }
            _ => {}
        }
        Ok(())
    }
}
