//! Byte layouts of the TimeSeries tables (the design is in [`super`]).
//! Times and partitions are stored bitwise-inverted big-endian, so that
//! ascending key order is newest first.

use std::collections::BTreeMap;

use prism_plugin_api::Micros;

use crate::error::{EmbeddedError, Result};
use crate::kv::codec::{Reader, SEPARATOR, join, sortable};

/// The width of a time partition: one hour. Fixed, because it is baked
/// into every stored key; reclamation drops whole partitions.
pub const PARTITION: Micros = 3_600_000_000;

/// What follows an event key: its head (the tags) sorts before its items.
const HEAD: u8 = 0x00;
const ITEM: u8 = 0x01;

/// The partition holding `time` (floor division, so negative times work).
pub fn partition(time: Micros) -> i64 {
    time.div_euclid(PARTITION)
}

/// `value` as 8 bytes that sort in *descending* numeric order.
pub fn newest_first(value: i64) -> [u8; 8] {
    (!u64::from_be_bytes(sortable(value))).to_be_bytes()
}

/// The inverse of [`newest_first`].
pub fn from_newest_first(bytes: [u8; 8]) -> i64 {
    ((!u64::from_be_bytes(bytes)) ^ (1 << 63)) as i64
}

/// `prefix ‖ !partition`: every key of one partition starts with it.
pub fn partition_key(prefix: &[u8], partition: i64) -> Vec<u8> {
    join(prefix, &newest_first(partition))
}

/// Refuses an id holding the NUL the keys use as a separator.
pub fn check_id(field: &'static str, id: &str) -> Result<()> {
    if id.as_bytes().contains(&SEPARATOR) {
        return Err(EmbeddedError::Invalid { field, description: "must not contain NUL".into() });
    }
    Ok(())
}

/// `partition_key ‖ series ‖ 0x00`: one series' events in one partition.
pub fn series_key(partition_key: &[u8], series: &str) -> Vec<u8> {
    let mut key = join(partition_key, series.as_bytes());
    key.push(SEPARATOR);
    key
}

/// `series_key ‖ !event_time`: one series' events at one time.
pub fn series_time_key(series_key: &[u8], time: Micros) -> Vec<u8> {
    join(series_key, &newest_first(time))
}

/// `series_key ‖ !event_time ‖ event_id ‖ 0x00`: every row of one event
/// (its head and its items) starts with it, and no other event's.
pub fn event_key(series_key: &[u8], time: Micros, event_id: &str) -> Vec<u8> {
    let mut key = series_time_key(series_key, time);
    key.extend_from_slice(event_id.as_bytes());
    key.push(SEPARATOR);
    key
}

/// The key of an event's head row, whose value is the encoded tags.
pub fn head_key(event_key: &[u8]) -> Vec<u8> {
    join(event_key, &[HEAD])
}

/// The first bytes of every item row of an event.
pub fn items_key(event_key: &[u8]) -> Vec<u8> {
    join(event_key, &[ITEM])
}

pub fn item_key(event_key: &[u8], key: &[u8]) -> Vec<u8> {
    let mut row = items_key(event_key);
    row.extend_from_slice(key);
    row
}

/// `partition_key ‖ !event_time ‖ series ‖ 0x00 ‖ event_id`: the search
/// index, in the order of the contract (time descending, then series, then
/// event id; ids hold no NUL, so the separator keeps (series, id) order).
pub fn index_key(prefix: &[u8], time: Micros, series: &str, event_id: &str) -> Vec<u8> {
    let mut key = index_time_key(prefix, time);
    key.extend_from_slice(series.as_bytes());
    key.push(SEPARATOR);
    key.extend_from_slice(event_id.as_bytes());
    key
}

/// `partition_key ‖ !event_time`: every index entry at `time`.
pub fn index_time_key(prefix: &[u8], time: Micros) -> Vec<u8> {
    let mut key = partition_key(prefix, partition(time));
    key.extend_from_slice(&newest_first(time));
    key
}

fn time_of(bytes: &[u8]) -> Result<Micros> {
    let array: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| EmbeddedError::Corrupt("an event key is too short".into()))?;
    Ok(from_newest_first(array))
}

fn text(bytes: &[u8], what: &str) -> Result<String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| EmbeddedError::Corrupt(format!("{what} is not UTF-8")))
}

/// An index entry, decoded: (event_time, series, event_id).
pub fn split_index(rest: &[u8]) -> Result<(Micros, String, String)> {
    // `rest` follows the namespace prefix: partition, time, series ‖ 0 ‖ id.
    let time = time_of(rest.get(8..).unwrap_or_default())?;
    let ids = rest.get(16..).unwrap_or_default();
    let at = ids
        .iter()
        .position(|b| *b == SEPARATOR)
        .ok_or_else(|| EmbeddedError::Corrupt("an index key has no series separator".into()))?;
    Ok((time, text(&ids[..at], "a series id")?, text(&ids[at + 1..], "an event id")?))
}

/// A row of the events table.
#[derive(Debug, PartialEq, Eq)]
pub enum Row<'a> {
    /// The head of an event: the row its tags are in.
    Head,
    /// An item of the event, by key.
    Item(&'a [u8]),
}

/// A row key of one series, decoded from what follows its
/// [`series_key`]: (event_time, event_id, row).
pub fn split_row(rest: &[u8]) -> Result<(Micros, &[u8], Row<'_>)> {
    let time = time_of(rest)?;
    let tail = rest.get(8..).unwrap_or_default();
    let at = tail
        .iter()
        .position(|b| *b == SEPARATOR)
        .ok_or_else(|| EmbeddedError::Corrupt("an event key has no event id separator".into()))?;
    let row = match tail.get(at + 1..) {
        Some([HEAD]) => Row::Head,
        Some([ITEM, key @ ..]) => Row::Item(key),
        _ => return Err(EmbeddedError::Corrupt("an event row is neither a head nor an item".into())),
    };
    Ok((time, &tail[..at], row))
}

/// `count ‖ (len ‖ key ‖ len ‖ value)*`, lengths u32 big-endian.
pub fn encode_tags(tags: &BTreeMap<String, String>) -> Result<Vec<u8>> {
    let too_long = || EmbeddedError::Invalid { field: "tags", description: "are too large to store".into() };
    let len = |s: &str| u32::try_from(s.len()).map_err(|_| too_long());
    let mut out = Vec::with_capacity(4 + tags.iter().map(|(k, v)| 8 + k.len() + v.len()).sum::<usize>());
    out.extend_from_slice(&u32::try_from(tags.len()).map_err(|_| too_long())?.to_be_bytes());
    for (key, value) in tags {
        out.extend_from_slice(&len(key)?.to_be_bytes());
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(&len(value)?.to_be_bytes());
        out.extend_from_slice(value.as_bytes());
    }
    Ok(out)
}

pub fn decode_tags(bytes: &[u8]) -> Result<BTreeMap<String, String>> {
    let mut r = Reader(bytes);
    let count = r.u32()?;
    let mut tags = BTreeMap::new();
    for _ in 0..count {
        let key_len = r.u32()? as usize;
        let key = text(r.take(key_len)?, "a tag key")?;
        let value_len = r.u32()? as usize;
        let value = text(r.take(value_len)?, "a tag value")?;
        tags.insert(key, value);
    }
    if !r.0.is_empty() {
        return Err(EmbeddedError::Corrupt("tags: trailing bytes".into()));
    }
    Ok(tags)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_first_sorts_descending_and_round_trips() {
        let values = [i64::MIN, -PARTITION - 1, -1, 0, 1, PARTITION, i64::MAX];
        for pair in values.windows(2) {
            assert!(newest_first(pair[0]) > newest_first(pair[1]), "{pair:?}");
        }
        for v in values {
            assert_eq!(from_newest_first(newest_first(v)), v);
        }
        assert_eq!(partition(-1), -1);
        assert_eq!(partition(0), 0);
        assert_eq!(partition(PARTITION - 1), 0);
        assert_eq!(partition(i64::MIN), i64::MIN.div_euclid(PARTITION));
    }

    #[test]
    fn keys_split_back() {
        let prefix = b"t/n\0\0\0\0\0\0\0\0\x01";
        let index = index_key(prefix, -5, "series", "event");
        let (time, series, id) = split_index(&index[prefix.len()..]).expect("splits");
        assert_eq!((time, series.as_str(), id.as_str()), (-5, "series", "event"));

        let series = series_key(&partition_key(prefix, partition(-5)), "series");
        let event = event_key(&series, -5, "event");
        let head = head_key(&event);
        assert_eq!(split_row(&head[series.len()..]).expect("splits"), (-5, &b"event"[..], Row::Head));
        let item = item_key(&event, b"\0key\xff");
        assert_eq!(split_row(&item[series.len()..]).expect("splits"), (-5, &b"event"[..], Row::Item(b"\0key\xff")));
        assert!(head < item, "the head sorts before the items");
    }

    #[test]
    fn damaged_keys_and_tags_are_errors_not_panics() {
        let tags: BTreeMap<String, String> = [("a".into(), "1".into()), ("".into(), "".into())].into();
        let encoded = encode_tags(&tags).expect("encodes");
        assert_eq!(decode_tags(&encoded).expect("decodes"), tags);
        for cut in 0..encoded.len() {
            assert!(decode_tags(&encoded[..cut]).is_err(), "cut at {cut}");
        }
        assert!(decode_tags(&[0xff; 8]).is_err());
        for bytes in [&b""[..], b"\0\0\0", b"12345678", b"12345678id", b"12345678id\0", b"12345678id\0\x07"] {
            assert!(split_row(bytes).is_err(), "{bytes:?}");
        }
        for bytes in [&b""[..], b"1234567812345678", b"1234567812345678series"] {
            assert!(split_index(bytes).is_err(), "{bytes:?}");
        }
    }
}
