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

/// A written event as the plugins take it (times in microseconds).
pub(crate) fn to_plugin(e: &ts::Event) -> pts::Event {
    pts::Event {
        time_series_id: e.time_series_id.clone(),
        event_time: e.event_time.as_ref().map_or(0, micros),
        event_id: e.event_id.clone(),
        items: e.items.iter().map(|i| (i.key.clone(), i.value.clone())).collect(),
        tags: e.tags.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    }
}

/// An event as a read (and a tail) returns it.
pub(crate) fn to_proto(e: pts::Event) -> ts::Event {
    ts::Event {
        time_series_id: e.time_series_id,
        event_time: Some(timestamp(e.event_time)),
        event_id: e.event_id,
        items: e.items.into_iter().map(|(key, value)| ts::EventItem { key, value }).collect(),
        tags: e.tags.into_iter().collect(),
    }
}
