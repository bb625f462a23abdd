//! Byte layouts of the embedded store's keys and values. Integers are
//! big-endian (times offset so that negative ones sort first), so byte
//! order is the order the store needs.

use prism_plugin_api::{Micros, Namespace};

use crate::error::{EmbeddedError, Result};

/// Separates a record id from an item key; ids never contain it.
pub const SEPARATOR: u8 = 0x00;

/// `name ‖ 0x00 ‖ create_revision`: every key of one namespace incarnation
/// starts with it, and no incarnation's prefix starts another's (names
/// hold no NUL and the revision has a fixed width).
pub fn namespace_prefix(ns: &Namespace) -> Result<Vec<u8>> {
    if ns.name.as_bytes().contains(&SEPARATOR) {
        return Err(EmbeddedError::Invalid { field: "namespace", description: "must not contain NUL".into() });
    }
    let mut prefix = Vec::with_capacity(ns.name.len() + 9);
    prefix.extend_from_slice(ns.name.as_bytes());
    prefix.push(SEPARATOR);
    prefix.extend_from_slice(&ns.create_revision.to_be_bytes());
    Ok(prefix)
}

/// The first bytes of every name-mate incarnation's prefix: `name ‖ 0x00`.
pub fn name_prefix(ns: &Namespace) -> Vec<u8> {
    let mut prefix = ns.name.as_bytes().to_vec();
    prefix.push(SEPARATOR);
    prefix
}

/// `prefix ‖ id ‖ 0x00`: every item key of the record starts with it, and
/// keys sort by (id, key).
pub fn record_key(prefix: &[u8], id: &str) -> Result<Vec<u8>> {
    if id.as_bytes().contains(&SEPARATOR) {
        return Err(EmbeddedError::Invalid { field: "id", description: "must not contain NUL".into() });
    }
    let mut key = Vec::with_capacity(prefix.len() + id.len() + 1);
    key.extend_from_slice(prefix);
    key.extend_from_slice(id.as_bytes());
    key.push(SEPARATOR);
    Ok(key)
}

pub fn join(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(a.len() + b.len());
    key.extend_from_slice(a);
    key.extend_from_slice(b);
    key
}

/// `item_key ‖ index`. Chunks are always addressed one by one (their count
/// is in the item's header), never by range: an item key may prefix
/// another's.
pub fn chunk_key(item_key: &[u8], index: u32) -> Vec<u8> {
    join(item_key, &index.to_be_bytes())
}

/// The first key after every key starting with `prefix`; `None` when no
/// such key exists (the prefix is all 0xff).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Splits the part of an item key after the namespace prefix into
/// (record id, item key).
pub fn split_item(rest: &[u8]) -> Result<(&str, &[u8])> {
    let at = rest
        .iter()
        .position(|b| *b == SEPARATOR)
        .ok_or_else(|| EmbeddedError::Corrupt("an item key has no record separator".into()))?;
    let id = std::str::from_utf8(&rest[..at]).map_err(|_| EmbeddedError::Corrupt("a record id is not UTF-8".into()))?;
    Ok((id, &rest[at + 1..]))
}

/// A time as 8 bytes that sort like the number.
pub fn sortable(time: Micros) -> [u8; 8] {
    ((time as u64) ^ (1 << 63)).to_be_bytes()
}

/// What a `due` entry says falls due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Due {
    /// An item's `expires_at`.
    Expiry = 0,
    /// A point tombstone's generation time + tombstone retention.
    Tombstone = 1,
    /// A record's range tombstone: its generation time + retention.
    RangeTombstone = 2,
    /// When an idempotency token may be forgotten.
    Token = 3,
}

impl Due {
    pub const ALL: [Due; 4] = [Due::Expiry, Due::Tombstone, Due::RangeTombstone, Due::Token];
}

/// `prefix ‖ kind ‖ when ‖ rest`, `rest` being what follows the prefix in
/// the key of the thing that falls due.
pub fn due_key(prefix: &[u8], kind: Due, when: Micros, rest: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + 9 + rest.len());
    key.extend_from_slice(prefix);
    key.push(kind as u8);
    key.extend_from_slice(&sortable(when));
    key.extend_from_slice(rest);
    key
}

/// The `rest` of a due key (see [`due_key`]).
pub fn due_rest(prefix_len: usize, key: &[u8]) -> Result<&[u8]> {
    key.get(prefix_len + 9..).ok_or_else(|| EmbeddedError::Corrupt("a due entry is too short".into()))
}

const VERSION: u8 = 1;
const TOMBSTONE: u8 = 1;
const EXPIRES: u8 = 2;

/// What an item's stored value starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub generation: Micros,
    pub expires_at: Option<Micros>,
    /// A delete: no value, only its generation time.
    pub tombstone: bool,
    /// How many chunks hold the value; 0 = the value follows the header.
    pub chunks: u32,
    /// The value's length in bytes.
    pub len: u64,
}

impl Header {
    /// version, flags, generation, expires_at, chunks, len.
    pub const LEN: usize = 1 + 1 + 8 + 8 + 4 + 8;

    pub fn tombstone(generation: Micros) -> Self {
        Self { generation, expires_at: None, tombstone: true, chunks: 0, len: 0 }
    }

    /// Whether a read at `now` returns the item.
    pub fn visible(&self, now: Micros) -> bool {
        !self.tombstone && self.expires_at.is_none_or(|at| at > now)
    }

    pub fn encode(&self, inline: &[u8]) -> Vec<u8> {
        let mut flags = 0;
        if self.tombstone {
            flags |= TOMBSTONE;
        }
        if self.expires_at.is_some() {
            flags |= EXPIRES;
        }
        let mut out = Vec::with_capacity(Self::LEN + inline.len());
        out.push(VERSION);
        out.push(flags);
        out.extend_from_slice(&self.generation.to_be_bytes());
        out.extend_from_slice(&self.expires_at.unwrap_or(0).to_be_bytes());
        out.extend_from_slice(&self.chunks.to_be_bytes());
        out.extend_from_slice(&self.len.to_be_bytes());
        out.extend_from_slice(inline);
        out
    }

    /// The header and the inline value that follows it.
    pub fn decode(bytes: &[u8]) -> Result<(Self, &[u8])> {
        let corrupt = |what: &str| EmbeddedError::Corrupt(format!("item header: {what}"));
        let mut r = Reader(bytes);
        if r.u8()? != VERSION {
            return Err(corrupt("unknown version"));
        }
        let flags = r.u8()?;
        let generation = r.i64()?;
        let expires_at = r.i64()?;
        let chunks = r.u32()?;
        let len = r.u64()?;
        let header = Self {
            generation,
            expires_at: (flags & EXPIRES != 0).then_some(expires_at),
            tombstone: flags & TOMBSTONE != 0,
            chunks,
            len,
        };
        let inline = r.0;
        if chunks == 0 && inline.len() as u64 != len {
            return Err(corrupt("inline value length differs from the header"));
        }
        if chunks > 0 && !inline.is_empty() {
            return Err(corrupt("a chunked value has inline bytes"));
        }
        Ok((header, inline))
    }
}

/// A delete of the keys `[start, end)` of one record at `generation`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeTombstone {
    pub start: Vec<u8>,
    pub end: Option<Vec<u8>>,
    pub generation: Micros,
}

impl RangeTombstone {
    pub fn contains(&self, key: &[u8]) -> bool {
        key >= self.start.as_slice() && self.end.as_deref().is_none_or(|end| key < end)
    }

    /// Whether `self` makes `other` useless: it covers all of it and is
    /// at least as new.
    pub fn dominates(&self, other: &RangeTombstone) -> bool {
        let covers_end = match (&self.end, &other.end) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(mine), Some(theirs)) => theirs <= mine,
        };
        self.generation >= other.generation && self.start <= other.start && covers_end
    }

    pub fn encode_all(list: &[RangeTombstone]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(list.len() as u32).to_be_bytes());
        for t in list {
            out.extend_from_slice(&t.generation.to_be_bytes());
            out.extend_from_slice(&(t.start.len() as u32).to_be_bytes());
            out.extend_from_slice(&t.start);
            match &t.end {
                None => out.push(0),
                Some(end) => {
                    out.push(1);
                    out.extend_from_slice(&(end.len() as u32).to_be_bytes());
                    out.extend_from_slice(end);
                }
            }
        }
        out
    }

    pub fn decode_all(bytes: &[u8]) -> Result<Vec<RangeTombstone>> {
        let mut r = Reader(bytes);
        let count = r.u32()?;
        // Bounded by the bytes present, not by what the count claims.
        let mut out = Vec::with_capacity((count as usize).min(bytes.len() / 13));
        for _ in 0..count {
            let generation = r.i64()?;
            let start_len = r.u32()?;
            let start = r.take(start_len as usize)?.to_vec();
            let end = match r.u8()? {
                0 => None,
                _ => {
                    let end_len = r.u32()?;
                    Some(r.take(end_len as usize)?.to_vec())
                }
            };
            out.push(RangeTombstone { start, end, generation });
        }
        if !r.0.is_empty() {
            return Err(EmbeddedError::Corrupt("range tombstones: trailing bytes".into()));
        }
        Ok(out)
    }
}

/// Reads big-endian fields off a slice, failing (never panicking) when it
/// runs out.
pub struct Reader<'a>(pub &'a [u8]);

impl<'a> Reader<'a> {
    pub fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(EmbeddedError::Corrupt("a stored value is truncated".into()));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    pub fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }

    pub fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    pub fn i64(&mut self) -> Result<i64> {
        Ok(i64::from_be_bytes(self.array()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let h = Header { generation: -5, expires_at: Some(0), tombstone: false, chunks: 0, len: 3 };
        let bytes = h.encode(b"abc");
        assert_eq!(Header::decode(&bytes).expect("decodes"), (h, &b"abc"[..]));
        let t = Header::tombstone(i64::MAX);
        assert_eq!(Header::decode(&t.encode(b"")).expect("decodes").0, t);
        let c = Header { generation: 1, expires_at: None, tombstone: false, chunks: 3, len: 5_000_000 };
        assert_eq!(Header::decode(&c.encode(b"")).expect("decodes").0, c);
    }

    #[test]
    fn damaged_bytes_are_errors_not_panics() {
        let good = Header { generation: 1, expires_at: None, tombstone: false, chunks: 0, len: 2 }.encode(b"hi");
        for cut in 0..good.len() {
            assert!(Header::decode(&good[..cut]).is_err(), "cut at {cut}");
        }
        let list = RangeTombstone::encode_all(&[
            RangeTombstone { start: b"a".to_vec(), end: None, generation: 1 },
            RangeTombstone { start: vec![], end: Some(b"zz".to_vec()), generation: -1 },
        ]);
        assert_eq!(RangeTombstone::decode_all(&list).expect("decodes").len(), 2);
        for cut in 0..list.len() {
            assert!(RangeTombstone::decode_all(&list[..cut]).is_err(), "cut at {cut}");
        }
        assert!(RangeTombstone::decode_all(&[0xff; 8]).is_err());
    }

    #[test]
    fn sortable_times_sort_like_numbers() {
        let times = [i64::MIN, -1_000, -1, 0, 1, 1_000, i64::MAX];
        for pair in times.windows(2) {
            assert!(sortable(pair[0]) < sortable(pair[1]));
        }
    }

    #[test]
    fn prefix_end_skips_every_key_with_the_prefix() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(b"a\xff\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }

    #[test]
    fn range_dominance() {
        let all = RangeTombstone { start: vec![], end: None, generation: 5 };
        let part = RangeTombstone { start: b"b".to_vec(), end: Some(b"d".to_vec()), generation: 4 };
        assert!(all.dominates(&part));
        assert!(!part.dominates(&all));
        let newer_part = RangeTombstone { generation: 6, ..part.clone() };
        assert!(!all.dominates(&newer_part));
    }
}
