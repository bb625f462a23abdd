//! TimeSeries events between the wire (`prism_proto::timeseries`) and
//! the plugins (`prism_plugin_api::ts`), converted one way for writes,
//! reads and tails alike, so a tail and a read agree.

use prism_plugin_api::Micros;
use prism_plugin_api::ts as pts;
use prism_proto::timeseries as ts;

/// A wire time as microseconds (rounded down to one).
pub(crate) fn micros(t: &prost_types::Timestamp) -> Micros {
    t.seconds.saturating_mul(1_000_000).saturating_add(i64::from(t.nanos) / 1_000)
}

/// Microseconds as a wire time.
pub(crate) fn timestamp(us: Micros) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: us.div_euclid(1_000_000), nanos: (us.rem_euclid(1_000_000) * 1_000) as i32 }
}

/// A written event as the plugins take it (times in microseconds);
/// `schema_version` (when the namespace has a schema) goes with it as the
/// reserved tag [`prism_schema::VERSION_TAG`]: tags round-trip on every
/// backend (the conformance suite checks it), so reads find the version an
/// event was written under whatever stored it.
pub(crate) fn to_plugin(e: &ts::Event, schema_version: Option<&str>) -> pts::Event {
    let mut tags: std::collections::BTreeMap<String, String> =
        e.tags.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    if let Some(version) = schema_version {
        tags.insert(prism_schema::VERSION_TAG.to_owned(), version.to_owned());
    }
    pts::Event {
        time_series_id: e.time_series_id.clone(),
        event_time: e.event_time.as_ref().map_or(0, micros),
        event_id: e.event_id.clone(),
        items: e.items.iter().map(|i| (i.key.clone(), i.value.clone())).collect(),
        tags,
    }
}

/// An event as a read (and a tail) returns it: the reserved version tag
/// becomes `schema_version` (0: written while the namespace had no schema).
pub(crate) fn to_proto(e: pts::Event) -> ts::Event {
    let mut schema_version = 0;
    let tags = e
        .tags
        .into_iter()
        .filter(|(k, v)| {
            let reserved = k == prism_schema::VERSION_TAG;
            if reserved {
                schema_version = v.parse().unwrap_or(0);
            }
            !reserved
        })
        .collect();
    ts::Event {
        time_series_id: e.time_series_id,
        event_time: Some(timestamp(e.event_time)),
        event_id: e.event_id,
        items: e.items.into_iter().map(|(key, value)| ts::EventItem { key, value }).collect(),
        tags,
        schema_version,
    }
}
