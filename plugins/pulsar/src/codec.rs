//! What the topics hold. Every message's payload is one protobuf
//! [`Record`] (prost, derived here: no `.proto` file and no build step):
//!
//! - on the data topic, `Record::Event`: one whole event as written (its
//!   series, event time in microseconds, id, items and tags), or
//!   `Record::Fence`: an empty marker a read publishes to learn where the
//!   topic ends when the broker cannot say (an empty topic; see
//!   `PulsarState::scan` in `lib.rs`), and every read published before
//!   reads used the broker's last message id;
//! - on the lifecycle topic, `Record::Lifecycle`.
//!
//! Data messages also carry, for other Pulsar tools, the message key
//! (`partition_key`) = time_series_id and the `event_time` metadata = the
//! event time in milliseconds (when not before 1970), and the property
//! `prism-epoch` = the provisioning epoch they were written in.

use std::collections::BTreeMap;

use prism_plugin_api::ts::Event;

/// One message's payload.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Record {
    #[prost(oneof = "record::Body", tags = "1, 2, 3")]
    pub body: Option<record::Body>,
}

pub mod record {
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Body {
        #[prost(message, tag = "1")]
        Event(super::StoredEvent),
        #[prost(message, tag = "2")]
        Fence(super::Fence),
        #[prost(message, tag = "3")]
        Lifecycle(super::Lifecycle),
    }
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct StoredEvent {
    /// The provisioning epoch it was written in (see [`Lifecycle`]).
    #[prost(uint64, tag = "1")]
    pub epoch: u64,
    #[prost(string, tag = "2")]
    pub time_series_id: String,
    #[prost(int64, tag = "3")]
    pub event_time: i64,
    #[prost(string, tag = "4")]
    pub event_id: String,
    #[prost(message, repeated, tag = "5")]
    pub items: Vec<StoredItem>,
    #[prost(btree_map = "string, string", tag = "6")]
    pub tags: BTreeMap<String, String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct StoredItem {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Fence {}

/// A change of an incarnation's state. Folded in topic order: `Provisioned`
/// while not provisioned starts the next epoch (events of earlier epochs
/// are never read again); `Deprovisioned` ends it; `Reclaimed` hides the
/// current epoch's events older than `before`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Lifecycle {
    #[prost(enumeration = "LifecycleKind", tag = "1")]
    pub kind: i32,
    #[prost(int64, tag = "2")]
    pub before: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum LifecycleKind {
    Unspecified = 0,
    Provisioned = 1,
    Deprovisioned = 2,
    Reclaimed = 3,
}

impl StoredEvent {
    pub fn of(event: &Event, epoch: u64) -> Self {
        Self {
            epoch,
            time_series_id: event.time_series_id.clone(),
            event_time: event.event_time,
            event_id: event.event_id.clone(),
            items: event.items.iter().map(|(k, v)| StoredItem { key: k.clone(), value: v.clone() }).collect(),
            tags: event.tags.clone(),
        }
    }
}

/// `record` as a payload.
pub fn encode(body: record::Body) -> Vec<u8> {
    prost::Message::encode_to_vec(&Record { body: Some(body) })
}

/// A payload as a record.
pub fn decode(payload: &[u8]) -> Result<record::Body, String> {
    let record: Record = prost::Message::decode(payload).map_err(|e| e.to_string())?;
    record.body.ok_or_else(|| "a record without a body".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip() {
        let event = Event {
            time_series_id: "s".into(),
            event_time: -5,
            event_id: "e".into(),
            items: vec![(vec![], vec![0xff]), (b"k".to_vec(), vec![])],
            tags: [("t".to_owned(), "ü".to_owned())].into(),
        };
        let payload = encode(record::Body::Event(StoredEvent::of(&event, 3)));
        match decode(&payload) {
            Ok(record::Body::Event(stored)) => {
                assert_eq!(stored, StoredEvent::of(&event, 3));
            }
            other => panic!("{other:?}"),
        }
        assert!(decode(&[0xff, 0xff]).is_err());
        assert!(decode(&[]).is_err(), "an empty payload has no body");
    }
}
