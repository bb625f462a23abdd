//! Reads: one `REPEATABLE READ READ ONLY` transaction per page. Metadata
//! in key order, batch by batch, the page cut in Rust; then the values the
//! metadata left out (see the [module docs](super)).

use std::collections::HashMap;

use prism_plugin_api::Micros;
use prism_plugin_api::kv::{Item, ItemsPage, PageLimits, Record, RecordsPage, ScanCursor, Selector};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{IsolationLevel, Row};

use super::Target;
use crate::error::{PostgresError, Result};

/// Rows of metadata one read statement fetches at most.
const BATCH: usize = 256;
/// Values up to this many bytes come with their metadata; longer ones are
/// fetched once the page is cut, so a batch holds at most `BATCH` of these.
const SMALL_VALUE: i64 = 8 << 10;

type Param<'a> = (&'a (dyn ToSql + Sync), Type);

/// Fills one page: stops once the bytes or the item count reach the
/// limits, with the item that reached them.
struct Pager {
    max_bytes: u64,
    max_items: usize,
    bytes: u64,
    items: usize,
    /// A further item exists past the page.
    more: bool,
}

impl Pager {
    fn new(limits: PageLimits) -> Self {
        // A zero limit would make pages that never advance: a page holds
        // at least one item.
        let max_items = limits.max_items.map_or(usize::MAX, |m| (m as usize).max(1));
        Self { max_bytes: limits.max_bytes.max(1), max_items, bytes: 0, items: 0, more: false }
    }

    /// Rows to fetch per statement: the page's item bound and one more.
    fn batch(&self) -> usize {
        self.max_items.saturating_add(1).min(BATCH)
    }

    fn full(&self) -> bool {
        self.bytes >= self.max_bytes || self.items >= self.max_items
    }

    /// Offers one row; false (and `more`) once the page is complete.
    fn offer(&mut self, meta: &Meta) -> bool {
        if self.full() {
            self.more = true;
            return false;
        }
        self.bytes = self.bytes.saturating_add(meta.key.len() as u64).saturating_add(meta.len.unsigned_abs());
        self.items += 1;
        true
    }
}

/// An item as first read: everything but a large value.
#[derive(Debug)]
struct Meta {
    id: Vec<u8>,
    key: Vec<u8>,
    len: i64,
    chunks: i32,
    expires_at: Option<i64>,
    value: Option<Vec<u8>>,
}

impl Meta {
    /// From `[id,] key, len, chunks, expires_at, small value`.
    fn from_row(row: &Row, id: Option<&[u8]>) -> Result<Self> {
        let at = usize::from(id.is_none());
        Ok(Self {
            id: match id {
                Some(id) => id.to_vec(),
                None => row.try_get(0)?,
            },
            key: row.try_get(at)?,
            len: row.try_get(at + 1)?,
            chunks: row.try_get(at + 2)?,
            expires_at: row.try_get(at + 3)?,
            value: row.try_get(at + 4)?,
        })
    }

    fn into_item(self) -> Result<Item> {
        let value = self.value.ok_or_else(|| PostgresError::Corrupt("a value was not read".into()))?;
        if i64::try_from(value.len()).ok() != Some(self.len) {
            return Err(PostgresError::Corrupt("a value's length differs from its row".into()));
        }
        Ok(Item { key: self.key, value, expires_at: self.expires_at })
    }
}

/// The columns [`Meta::from_row`] reads after the id and key.
fn meta_columns() -> String {
    format!("len, chunks, expires_at, CASE WHEN chunks = 0 AND len <= {SMALL_VALUE} THEN value END")
}

/// The texts of [`get`]'s metadata reads for one incarnation, formatted
/// once: by a list of keys, and by a key range in each of its four shapes
/// (with or without an end, with or without a cursor).
pub(crate) struct GetStatements {
    keys: String,
    /// Indexed by [`GetStatements::shape`].
    range: [String; 4],
}

impl GetStatements {
    pub(super) fn new(items: &str) -> Self {
        let visible = format!(
            "SELECT key, {} FROM {} WHERE id = $1 AND NOT tombstone AND (expires_at IS NULL OR expires_at > $2)",
            meta_columns(),
            items
        );
        let range = |end: bool, cursor: bool| {
            // Placeholders in the order `get` binds: id, now, start, then
            // the end and the cursor if present, then the limit.
            let mut next = 3;
            let mut placeholder = || {
                let p = format!("${next}");
                next += 1;
                p
            };
            let mut sql = visible.clone();
            sql.push_str(&format!(" AND key >= {}", placeholder()));
            if end {
                sql.push_str(&format!(" AND key < {}", placeholder()));
            }
            if cursor {
                sql.push_str(&format!(" AND key > {}", placeholder()));
            }
            sql.push_str(&format!(" ORDER BY key LIMIT {}", placeholder()));
            sql
        };
        Self {
            keys: format!("{visible} AND key = ANY($3) ORDER BY key"),
            range: [range(false, false), range(true, false), range(false, true), range(true, true)],
        }
    }

    fn shape(end: bool, cursor: bool) -> usize {
        usize::from(end) + 2 * usize::from(cursor)
    }
}

/// Builds a statement's parameters as its text is written.
struct Params<'a> {
    params: Vec<Param<'a>>,
}

impl<'a> Params<'a> {
    fn new() -> Self {
        Self { params: Vec::new() }
    }

    /// Adds a parameter; returns its placeholder.
    fn bind(&mut self, value: &'a (dyn ToSql + Sync), ty: Type) -> String {
        self.params.push((value, ty));
        format!("${}", self.params.len())
    }
}

/// Reads the values the metadata rows left out: larger inline values by
/// key, chunked ones from their chunks.
async fn fill_values(tx: &tokio_postgres::Transaction<'_>, t: &Target, metas: &mut [Meta]) -> Result<()> {
    let (mut inline_ids, mut inline_keys, mut chunk_ids, mut chunk_keys) = (vec![], vec![], vec![], vec![]);
    for meta in metas.iter().filter(|m| m.value.is_none()) {
        let (ids, keys) =
            if meta.chunks == 0 { (&mut inline_ids, &mut inline_keys) } else { (&mut chunk_ids, &mut chunk_keys) };
        ids.push(meta.id.as_slice());
        keys.push(meta.key.as_slice());
    }
    let mut found: HashMap<(Vec<u8>, Vec<u8>), Vec<u8>> = HashMap::new();
    if !inline_keys.is_empty() {
        let rows = tx
            .query_typed(
                &format!(
                    "SELECT i.id, i.key, i.value FROM {} i
                     JOIN unnest($1::bytea[], $2::bytea[]) AS w (id, key) ON i.id = w.id AND i.key = w.key",
                    t.items
                ),
                &[(&inline_ids, Type::BYTEA_ARRAY), (&inline_keys, Type::BYTEA_ARRAY)],
            )
            .await?;
        for row in rows {
            let value: Option<Vec<u8>> = row.try_get(2)?;
            found.insert((row.try_get(0)?, row.try_get(1)?), value.unwrap_or_default());
        }
    }
    if !chunk_keys.is_empty() {
        let rows = tx
            .query_typed(
                &format!(
                    "SELECT c.id, c.key, c.idx, c.data FROM {} c
                     JOIN unnest($1::bytea[], $2::bytea[]) AS w (id, key) ON c.id = w.id AND c.key = w.key
                     ORDER BY c.id, c.key, c.idx",
                    t.chunks
                ),
                &[(&chunk_ids, Type::BYTEA_ARRAY), (&chunk_keys, Type::BYTEA_ARRAY)],
            )
            .await?;
        let mut next_index: HashMap<(Vec<u8>, Vec<u8>), i32> = HashMap::new();
        for row in rows {
            let at: (Vec<u8>, Vec<u8>) = (row.try_get(0)?, row.try_get(1)?);
            let (index, data): (i32, Vec<u8>) = (row.try_get(2)?, row.try_get(3)?);
            let expected = next_index.entry(at.clone()).or_insert(0);
            if index != *expected {
                return Err(PostgresError::Corrupt(format!("chunk {expected} of a value is missing")));
            }
            *expected += 1;
            found.entry(at).or_default().extend_from_slice(&data);
        }
        for meta in metas.iter().filter(|m| m.value.is_none() && m.chunks > 0) {
            let at = (meta.id.clone(), meta.key.clone());
            if next_index.get(&at).copied().unwrap_or(0) != meta.chunks {
                return Err(PostgresError::Corrupt("a chunked value's chunk count differs from its row".into()));
            }
        }
    }
    for meta in metas.iter_mut().filter(|m| m.value.is_none()) {
        meta.value = found.remove(&(meta.id.clone(), meta.key.clone()));
    }
    Ok(())
}

pub(super) async fn get(
    t: &Target,
    id: &str,
    selector: &Selector,
    after: Option<&[u8]>,
    limits: PageLimits,
    now: Micros,
) -> Result<ItemsPage> {
    if matches!(selector, Selector::Keys(keys) if keys.is_empty()) {
        return Ok(ItemsPage::default());
    }
    let id = id.as_bytes();
    let mut client = t.pool.get().await?;
    let tx = client.build_transaction().isolation_level(IsolationLevel::RepeatableRead).read_only(true).start().await?;
    let mut pager = Pager::new(limits);
    let mut metas: Vec<Meta> = Vec::new();
    let sql = &t.sql.get;
    match selector {
        Selector::Keys(keys) => {
            // Each key is sent once, in sorted slices of a batch: a long
            // list costs its own size, not that times the batches.
            let mut wanted: Vec<&[u8]> =
                keys.iter().map(Vec::as_slice).filter(|k| after.is_none_or(|a| *k > a)).collect();
            wanted.sort_unstable();
            wanted.dedup();
            'keys: for slice in wanted.chunks(BATCH) {
                let rows = tx
                    .query_typed(&sql.keys, &[(&id, Type::BYTEA), (&now, Type::INT8), (&slice, Type::BYTEA_ARRAY)])
                    .await?;
                for row in &rows {
                    let meta = Meta::from_row(row, Some(id))?;
                    if !pager.offer(&meta) {
                        break 'keys;
                    }
                    metas.push(meta);
                }
            }
        }
        Selector::All | Selector::Range(_) => {
            let (start, end) = match selector {
                Selector::Range(range) => (range.start.as_slice(), range.end.as_deref()),
                _ => (&[][..], None),
            };
            let batch = pager.batch();
            let limit = batch as i64;
            let mut cursor: Option<Vec<u8>> = after.map(<[u8]>::to_vec);
            'batches: loop {
                // Bound in the order of `GetStatements::new`'s placeholders.
                let mut params: Vec<Param<'_>> = Vec::with_capacity(6);
                params.push((&id, Type::BYTEA));
                params.push((&now, Type::INT8));
                params.push((&start, Type::BYTEA));
                if let Some(end) = &end {
                    params.push((end, Type::BYTEA));
                }
                if let Some(cursor) = &cursor {
                    params.push((cursor, Type::BYTEA));
                }
                params.push((&limit, Type::INT8));
                let text = &sql.range[GetStatements::shape(end.is_some(), cursor.is_some())];
                let rows = tx.query_typed(text, &params).await?;
                for row in &rows {
                    let meta = Meta::from_row(row, Some(id))?;
                    if !pager.offer(&meta) {
                        break 'batches;
                    }
                    metas.push(meta);
                }
                if rows.len() < batch {
                    break;
                }
                cursor = metas.last().map(|m| m.key.clone());
            }
        }
    }
    fill_values(&tx, t, &mut metas).await?;
    tx.commit().await?;
    let mut page = ItemsPage::default();
    for meta in metas {
        page.items.push(meta.into_item()?);
    }
    if pager.more {
        page.next = page.items.last().map(|i| i.key.clone());
    }
    Ok(page)
}

pub(super) async fn scan(
    t: &Target,
    after: Option<&ScanCursor>,
    limits: PageLimits,
    now: Micros,
) -> Result<RecordsPage> {
    let mut client = t.pool.get().await?;
    let tx = client.build_transaction().isolation_level(IsolationLevel::RepeatableRead).read_only(true).start().await?;
    let mut pager = Pager::new(limits);
    let batch = pager.batch();
    let limit = batch as i64;
    let mut metas: Vec<Meta> = Vec::new();
    let mut cursor: Option<(Vec<u8>, Vec<u8>)> = after.map(|c| (c.id.as_bytes().to_vec(), c.key.clone()));
    'pages: loop {
        let mut p = Params::new();
        let mut sql = format!(
            "SELECT id, key, {} FROM {} WHERE NOT tombstone AND (expires_at IS NULL OR expires_at > {})",
            meta_columns(),
            t.items,
            p.bind(&now, Type::INT8),
        );
        if let Some((id, key)) = &cursor {
            let (id, key) = (p.bind(id, Type::BYTEA), p.bind(key, Type::BYTEA));
            sql.push_str(&format!(" AND (id, key) > ({id}, {key})"));
        }
        sql.push_str(&format!(" ORDER BY id, key LIMIT {}", p.bind(&limit, Type::INT8)));
        let rows = tx.query_typed(&sql, &p.params).await?;
        let fetched = rows.len();
        for row in &rows {
            let meta = Meta::from_row(row, None)?;
            if !pager.offer(&meta) {
                break 'pages;
            }
            metas.push(meta);
        }
        if fetched < batch {
            break;
        }
        cursor = metas.last().map(|m| (m.id.clone(), m.key.clone()));
    }
    fill_values(&tx, t, &mut metas).await?;
    tx.commit().await?;
    let mut page = RecordsPage::default();
    for meta in metas {
        let id = String::from_utf8(meta.id.clone())
            .map_err(|_| PostgresError::Corrupt("a record id is not UTF-8".into()))?;
        let item = meta.into_item()?;
        match page.records.last_mut() {
            Some(record) if record.id == id => record.items.push(item),
            _ => page.records.push(Record { id, items: vec![item] }),
        }
    }
    if pager.more {
        page.next = page
            .records
            .last()
            .and_then(|r| r.items.last().map(|i| ScanCursor { id: r.id.clone(), key: i.key.clone() }));
    }
    Ok(page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_statements_number_their_placeholders_as_bound() {
        let sql = GetStatements::new("\"s\".\"t\"");
        let visible = "SELECT key, len, chunks, expires_at, CASE WHEN chunks = 0 AND len <= 8192 THEN value END \
                       FROM \"s\".\"t\" WHERE id = $1 AND NOT tombstone AND (expires_at IS NULL OR expires_at > $2)";
        assert_eq!(sql.keys, format!("{visible} AND key = ANY($3) ORDER BY key"));
        let shapes = [
            ((false, false), " AND key >= $3 ORDER BY key LIMIT $4"),
            ((true, false), " AND key >= $3 AND key < $4 ORDER BY key LIMIT $5"),
            ((false, true), " AND key >= $3 AND key > $4 ORDER BY key LIMIT $5"),
            ((true, true), " AND key >= $3 AND key < $4 AND key > $5 ORDER BY key LIMIT $6"),
        ];
        for ((end, cursor), tail) in shapes {
            assert_eq!(sql.range[GetStatements::shape(end, cursor)], format!("{visible}{tail}"), "{end} {cursor}");
        }
    }
}
