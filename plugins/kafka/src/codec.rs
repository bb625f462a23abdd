//! How a namespace and its events are laid out in Kafka: the topic name,
//! the partition of a series, and the message of an event.
//!
//! - **Topic**: `prism.{tenant}.{name}.{create_revision}`. Name parts are
//!   `[a-z0-9][a-z0-9-]{0,62}`, so the name is a valid Kafka topic name
//!   (at most 6 + 63 + 1 + 63 + 1 + 20 = 154 of the allowed 249
//!   characters), readable, deterministic, and new for each incarnation: a
//!   namespace deleted and created again never sees the old events, even
//!   if the old topic was not deleted.
//! - **Partition**: xxHash64 (seed 0) of the `time_series_id`, modulo the
//!   topic's partitions, chosen by the plugin (not librdkafka's
//!   partitioner), so a read of one series knows the one partition to
//!   read. A golden test pins it.
//! - **Message**: key = `time_series_id` (UTF-8); timestamp (CreateTime) =
//!   `event_time` in milliseconds, rounded down (so a time seek is a lower
//!   bound); value = [`EventRecord`], protobuf (prost): the exact
//!   microsecond time, the event id, the items, the tags. The series is not
//!   repeated in the value: it is the key.

use std::collections::BTreeMap;

use prism_plugin_api::ts::Event;
use prism_plugin_api::{Micros, Namespace};
use prost::Message;
use twox_hash::XxHash64;

use crate::error::{KafkaError, Result};

/// The value of one message: one event as written (before any merge with
/// other writes of the same event).
#[derive(Clone, PartialEq, Message)]
pub struct EventRecord {
    /// Microseconds since the epoch.
    #[prost(sint64, tag = "1")]
    pub event_time: i64,
    #[prost(string, tag = "2")]
    pub event_id: String,
    #[prost(message, repeated, tag = "3")]
    pub items: Vec<Item>,
    #[prost(btree_map = "string, string", tag = "4")]
    pub tags: BTreeMap<String, String>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Item {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

/// The topic of a namespace incarnation.
pub fn topic(ns: &Namespace) -> String {
    format!("prism.{}.{}.{}", ns.tenant(), ns.local_name(), ns.create_revision)
}

/// The partition `time_series_id` lives in, of `partitions`.
pub fn partition(time_series_id: &str, partitions: i32) -> i32 {
    let n = u64::try_from(partitions.max(1)).unwrap_or(1);
    // The remainder is below `partitions`, an i32.
    (XxHash64::oneshot(0, time_series_id.as_bytes()) % n) as i32
}

/// The message timestamp of an event: milliseconds, rounded down; never
/// negative (Kafka has no timestamps before 1970, and the gateway's accept
/// window keeps events near now anyway).
pub fn timestamp_ms(event_time: Micros) -> i64 {
    event_time.div_euclid(1_000).max(0)
}

pub fn encode(event: &Event) -> Vec<u8> {
    EventRecord {
        event_time: event.event_time,
        event_id: event.event_id.clone(),
        items: event.items.iter().map(|(key, value)| Item { key: key.clone(), value: value.clone() }).collect(),
        tags: event.tags.clone(),
    }
    .encode_to_vec()
}

pub fn decode(key: Option<&[u8]>, value: Option<&[u8]>) -> Result<Event> {
    let series = key.ok_or_else(|| KafkaError::Corrupt("a message without a key".into()))?;
    let series = String::from_utf8(series.to_vec())
        .map_err(|_| KafkaError::Corrupt("a message key that is not UTF-8".into()))?;
    let record = EventRecord::decode(value.unwrap_or_default())
        .map_err(|e| KafkaError::Corrupt(format!("a message value that is not an event: {e}")))?;
    Ok(Event {
        time_series_id: series,
        event_time: record.event_time,
        event_id: record.event_id,
        items: record.items.into_iter().map(|i| (i.key, i.value)).collect(),
        tags: record.tags,
    })
}

#[cfg(test)]
mod tests {
    use prism_proto::control::NamespaceSpec;

    use super::*;

    #[test]
    fn topic_names_the_incarnation() {
        let ns = Namespace { name: "acme/metrics".into(), create_revision: 42, spec: NamespaceSpec::default() };
        assert_eq!(topic(&ns), "prism.acme.metrics.42");
    }

    /// Moving a series to another partition would hide its events from
    /// reads: the hash must never change.
    #[test]
    fn partition_golden() {
        let got: Vec<i32> = ["", "a", "sensor-1", "cpu"].iter().map(|s| partition(s, 1024)).collect();
        assert_eq!(got, GOLDEN);
        assert_eq!(partition("anything", 1), 0);
        assert_eq!(partition("anything", 0), 0);
    }

    /// xxHash64 of "" and "a" are the published test vectors
    /// (0xef46db3751d8e999, 0xd24ec4f1a98c6e5b), modulo 1024.
    const GOLDEN: [i32; 4] = [409, 603, 961, 411];

    #[test]
    fn round_trip() {
        let event = Event {
            time_series_id: "s".into(),
            event_time: -5,
            event_id: "e".into(),
            items: vec![(b"k".to_vec(), vec![0, 1]), (vec![], vec![])],
            tags: [("a".to_owned(), "b".to_owned())].into(),
        };
        let back = decode(Some(b"s"), Some(&encode(&event))).expect("decode");
        assert_eq!(back, event);
        assert_eq!(timestamp_ms(-5), 0);
        assert_eq!(timestamp_ms(1_999), 1);
        assert!(decode(None, Some(b"")).is_err());
    }
}
