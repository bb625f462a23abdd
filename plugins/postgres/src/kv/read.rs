//! Reads: a page that one statement answers is that statement alone, on
//! a prepared statement and in no transaction; any other page is one
//! `REPEATABLE READ READ ONLY` transaction: metadata in key order, batch by
//! batch, the page cut in Rust, then the values the metadata left out (see
//! the [module docs](super)).

use std::collections::HashMap;

use deadpool_postgres::ClientWrapper;
use prism_plugin_api::Micros;
use prism_plugin_api::kv::{
    Item, ItemsPage, KeyRange, PageLimits, Record, RecordVersions, RecordsPage, ScanCursor, Selector, Version,
    VersionCursor, VersionsPage,
};
use prism_plugin_api::pace::Pace;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{IsolationLevel, Row};

use super::Target;
use super::prepared::{self, Stmt};
use super::statements::{GET_KEYS_TYPES, READ_BATCH, VERSION_RANGES_TYPES, VERSIONS_TYPES};
use crate::error::{PostgresError, Result};

type Param<'a> = &'a (dyn ToSql + Sync);

/// Fills one page: stops once the bytes or the item count reach the
/// limits, with the item that reached them, or once the soft deadline has
/// passed with an item on the page ([`prism_plugin_api::pace`]: checked
/// per row, and the hard deadline before every statement).
struct Pager {
    max_bytes: u64,
    max_items: usize,
    bytes: u64,
    items: usize,
    pace: Pace,
    /// A further item exists past the page.
    more: bool,
}

impl Pager {
    fn new(limits: PageLimits) -> Self {
        // A zero limit would make pages that never advance: a page holds
        // at least one item.
        let max_items = limits.max_items.map_or(usize::MAX, |m| (m as usize).max(1));
        Self { max_bytes: limits.max_bytes.max(1), max_items, bytes: 0, items: 0, pace: limits.pace(), more: false }
    }

    /// Asked before each statement: an error once the hard deadline has
    /// passed (nobody waits for the answer).
    fn check(&self) -> Result<()> {
        self.pace.check().map_err(PostgresError::GaveUp)
    }

    /// Rows to fetch per statement: the page's item bound and one more.
    fn batch(&self) -> usize {
        self.max_items.saturating_add(1).min(READ_BATCH)
    }

    fn full(&self) -> bool {
        self.bytes >= self.max_bytes || self.items >= self.max_items || self.pace.should_end(self.items)
    }

    /// Offers one row; false (and `more`) once the page is complete.
    fn offer(&mut self, meta: &Meta) -> bool {
        if self.full() {
            self.more = true;
            return false;
        }
        self.bytes = self.bytes.saturating_add(meta.key.len() as u64).saturating_add(meta.len.unsigned_abs());
        self.items += 1;
        self.pace.added();
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
            .query_typed(&t.sql.fill_inline, &[(&inline_ids, Type::BYTEA_ARRAY), (&inline_keys, Type::BYTEA_ARRAY)])
            .await?;
        for row in rows {
            let value: Option<Vec<u8>> = row.try_get(2)?;
            found.insert((row.try_get(0)?, row.try_get(1)?), value.unwrap_or_default());
        }
    }
    if !chunk_keys.is_empty() {
        let rows = tx
            .query_typed(&t.sql.fill_chunks, &[(&chunk_ids, Type::BYTEA_ARRAY), (&chunk_keys, Type::BYTEA_ARRAY)])
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

/// The keys of a `Selector::Keys` read past `after`, sorted, each once.
fn wanted<'a>(keys: &'a [Vec<u8>], after: Option<&[u8]>) -> Vec<&'a [u8]> {
    let mut wanted: Vec<&[u8]> = keys.iter().map(Vec::as_slice).filter(|k| after.is_none_or(|a| *k > a)).collect();
    wanted.sort_unstable();
    wanted.dedup();
    wanted
}

/// The bounds of a `Selector::All` or `Selector::Range` read.
fn bounds(selector: &Selector) -> (&[u8], Option<&[u8]>) {
    match selector {
        Selector::Range(range) => (range.start.as_slice(), range.end.as_deref()),
        _ => (&[][..], None),
    }
}

/// The parameters of a range read, in the order of
/// `KvStatements::get_range`'s placeholders.
fn range_params<'a>(
    id: &'a &'a [u8],
    now: &'a Micros,
    (start, end): &'a (&'a [u8], Option<&'a [u8]>),
    cursor: Option<&'a Vec<u8>>,
    limit: &'a i64,
) -> Vec<Param<'a>> {
    let mut params: Vec<Param<'a>> = Vec::with_capacity(6);
    params.push(id);
    params.push(now);
    params.push(start);
    if let Some(end) = end {
        params.push(end);
    }
    if let Some(cursor) = cursor {
        params.push(cursor);
    }
    params.push(limit);
    params
}

/// A page's items once its metadata is complete and every value is
/// read.
fn items_page(metas: Vec<Meta>, more: bool) -> Result<ItemsPage> {
    let mut page = ItemsPage::default();
    for meta in metas {
        page.items.push(meta.into_item()?);
    }
    if more {
        page.next = page.items.last().map(|i| i.key.clone());
    }
    Ok(page)
}

/// Offers `rows` to `pager` until the page is complete; `Some(metas)` when
/// one statement answered the page: it is complete within these rows (or
/// they are all there is: `ended`) and every value came inline.
fn whole(rows: &[Row], id: Option<&[u8]>, pager: &mut Pager, ended: bool) -> Result<Option<Vec<Meta>>> {
    let mut metas = Vec::with_capacity(rows.len());
    for row in rows {
        let meta = Meta::from_row(row, id)?;
        if !pager.offer(&meta) {
            break;
        }
        if meta.value.is_none() {
            return Ok(None);
        }
        metas.push(meta);
    }
    Ok((pager.more || ended).then_some(metas))
}

pub(super) async fn get(
    t: &Target,
    id: &str,
    selector: &Selector,
    after: Option<&[u8]>,
    limits: PageLimits,
    now: Micros,
) -> Result<ItemsPage> {
    Pager::new(limits).check()?;
    if matches!(selector, Selector::Keys(keys) if keys.is_empty()) {
        return Ok(ItemsPage::default());
    }
    let id = id.as_bytes();
    // One statement, on a shared lane if the pool has some, else on the
    // connection the transaction would use.
    let lane = t.lanes.get().await?;
    if let Some(lane) = &lane
        && let Some(page) = get_in_one_statement(lane, t, id, selector, after, limits, now).await?
    {
        return Ok(page);
    }
    let mut client = prepared::connection(&t.pool).await?;
    if lane.is_none()
        && let Some(page) = get_in_one_statement(&client, t, id, selector, after, limits, now).await?
    {
        return Ok(page);
    }
    let tx = client.build_transaction().isolation_level(IsolationLevel::RepeatableRead).read_only(true).start().await?;
    let mut pager = Pager::new(limits);
    let mut metas: Vec<Meta> = Vec::new();
    match selector {
        Selector::Keys(keys) => {
            // Each key is sent once, in sorted slices of a batch: a long
            // list costs its own size, not that times the batches.
            'keys: for slice in wanted(keys, after).chunks(READ_BATCH) {
                pager.check()?;
                let rows = tx
                    .query_typed(
                        &t.sql.get_keys,
                        &[(&id, Type::BYTEA), (&now, Type::INT8), (&slice, Type::BYTEA_ARRAY)],
                    )
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
            let bounds = bounds(selector);
            let batch = pager.batch();
            let limit = batch as i64;
            let mut cursor: Option<Vec<u8>> = after.map(<[u8]>::to_vec);
            'batches: loop {
                pager.check()?;
                let (text, types) = t.sql.get_range(bounds.1.is_some(), cursor.is_some());
                let params = range_params(&id, &now, &bounds, cursor.as_ref(), &limit);
                let typed: Vec<(Param<'_>, Type)> = params.into_iter().zip(types.iter().cloned()).collect();
                let rows = tx.query_typed(text, &typed).await?;
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
    items_page(metas, pager.more)
}

/// The page in one statement, outside any transaction, if one statement
/// answers it; `None` when it takes several (the answer is dropped: see
/// the module docs).
async fn get_in_one_statement(
    client: &ClientWrapper,
    t: &Target,
    id: &[u8],
    selector: &Selector,
    after: Option<&[u8]>,
    limits: PageLimits,
    now: Micros,
) -> Result<Option<ItemsPage>> {
    let mut pager = Pager::new(limits);
    let named = t.named();
    let metas = match selector {
        Selector::Keys(keys) => {
            let wanted = wanted(keys, after);
            if wanted.len() > READ_BATCH {
                return Ok(None);
            }
            if wanted.is_empty() {
                return Ok(Some(ItemsPage::default()));
            }
            let statement = Stmt::on(client, named, &t.sql.get_keys, GET_KEYS_TYPES).await?;
            let rows = statement.query(client, &[&id, &now, &wanted]).await?;
            // No limit: the rows are every wanted key there is.
            whole(&rows, Some(id), &mut pager, true)?
        }
        Selector::All | Selector::Range(_) => {
            let bounds = bounds(selector);
            let cursor = after.map(<[u8]>::to_vec);
            let batch = pager.batch();
            let limit = batch as i64;
            let (text, types) = t.sql.get_range(bounds.1.is_some(), cursor.is_some());
            let statement = Stmt::on(client, named, text, types).await?;
            let rows = statement.query(client, &range_params(&id, &now, &bounds, cursor.as_ref(), &limit)).await?;
            whole(&rows, Some(id), &mut pager, rows.len() < batch)?
        }
    };
    metas.map(|metas| items_page(metas, pager.more)).transpose()
}

/// A page of records once its metadata is complete and every value is
/// read.
fn records_page(metas: Vec<Meta>, more: bool) -> Result<RecordsPage> {
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
    if more {
        page.next = page
            .records
            .last()
            .and_then(|r| r.items.last().map(|i| ScanCursor { id: r.id.clone(), key: i.key.clone() }));
    }
    Ok(page)
}

/// The parameters of a scan read, in the order of `KvStatements::scan`'s
/// placeholders.
fn scan_params<'a>(now: &'a Micros, cursor: Option<&'a (Vec<u8>, Vec<u8>)>, limit: &'a i64) -> Vec<Param<'a>> {
    match cursor {
        Some((id, key)) => vec![now, id, key, limit],
        None => vec![now, limit],
    }
}

/// The page of records in one statement, outside any transaction, if one
/// statement answers it.
async fn scan_in_one_statement(
    client: &ClientWrapper,
    t: &Target,
    cursor: Option<&(Vec<u8>, Vec<u8>)>,
    limits: PageLimits,
    now: Micros,
) -> Result<Option<RecordsPage>> {
    let mut pager = Pager::new(limits);
    let batch = pager.batch();
    let limit = batch as i64;
    let (text, types) = t.sql.scan(cursor.is_some());
    let statement = Stmt::on(client, t.named(), text, types).await?;
    let rows = statement.query(client, &scan_params(&now, cursor, &limit)).await?;
    match whole(&rows, None, &mut pager, rows.len() < batch)? {
        Some(metas) => records_page(metas, pager.more).map(Some),
        None => Ok(None),
    }
}

pub(super) async fn scan(
    t: &Target,
    after: Option<&ScanCursor>,
    limits: PageLimits,
    now: Micros,
) -> Result<RecordsPage> {
    Pager::new(limits).check()?;
    let mut cursor: Option<(Vec<u8>, Vec<u8>)> = after.map(|c| (c.id.as_bytes().to_vec(), c.key.clone()));
    // One statement, on a shared lane if the pool has some, else on the
    // connection the transaction would use.
    let lane = t.lanes.get().await?;
    if let Some(lane) = &lane
        && let Some(page) = scan_in_one_statement(lane, t, cursor.as_ref(), limits, now).await?
    {
        return Ok(page);
    }
    let mut client = prepared::connection(&t.pool).await?;
    if lane.is_none()
        && let Some(page) = scan_in_one_statement(&client, t, cursor.as_ref(), limits, now).await?
    {
        return Ok(page);
    }
    let mut pager = Pager::new(limits);
    let batch = pager.batch();
    let limit = batch as i64;
    let tx = client.build_transaction().isolation_level(IsolationLevel::RepeatableRead).read_only(true).start().await?;
    let mut metas: Vec<Meta> = Vec::new();
    'pages: loop {
        pager.check()?;
        let (text, types) = t.sql.scan(cursor.is_some());
        let params = scan_params(&now, cursor.as_ref(), &limit);
        let typed: Vec<(Param<'_>, Type)> = params.into_iter().zip(types.iter().cloned()).collect();
        let rows = tx.query_typed(text, &typed).await?;
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
    records_page(metas, pager.more)
}

/// Adds `version` of record `id` to the page.
fn push_version(page: &mut VersionsPage, id: String, version: Version) {
    match page.records.last_mut() {
        Some(record) if record.id == id => record.versions.push(version),
        _ => page.records.push(RecordVersions { id, versions: vec![version] }),
    }
}

fn text_id(id: Vec<u8>) -> Result<String> {
    String::from_utf8(id).map_err(|_| PostgresError::Corrupt("a record id is not UTF-8".into()))
}

/// One page of every version (`KeyValueHandle::scan_versions`): the item
/// rows (values and point deletes) in (id, key) order, then the range
/// deletes record by record, in one `REPEATABLE READ READ ONLY`
/// transaction. Not a hot path: statements go unnamed.
pub(super) async fn scan_versions(
    t: &Target,
    after: Option<&VersionCursor>,
    limits: PageLimits,
) -> Result<VersionsPage> {
    let mut pager = Pager::new(limits);
    pager.check()?;
    let mut client = crate::lease::lease(&t.pool).await?;
    let tx = client.build_transaction().isolation_level(IsolationLevel::RepeatableRead).read_only(true).start().await?;
    let mut page = VersionsPage::default();
    let ranges_after = match after {
        None | Some(VersionCursor::Item { .. }) => {
            let mut cursor: Option<(Vec<u8>, Vec<u8>)> = match after {
                Some(VersionCursor::Item { id, key }) => Some((id.as_bytes().to_vec(), key.clone())),
                _ => None,
            };
            let batch = pager.batch();
            let limit = batch as i64;
            // (meta, generation, tombstone) of each row on the page.
            let mut rows_of_page: Vec<(Meta, i64, bool)> = Vec::new();
            'rows: loop {
                pager.check()?;
                let shape = usize::from(cursor.is_some());
                let params: Vec<Param<'_>> = match &cursor {
                    Some((id, key)) => vec![id, key, &limit],
                    None => vec![&limit],
                };
                let typed: Vec<(Param<'_>, Type)> =
                    params.into_iter().zip(VERSIONS_TYPES[shape].iter().cloned()).collect();
                let rows = tx.query_typed(&t.sql.versions[shape], &typed).await?;
                let fetched = rows.len();
                for row in &rows {
                    let mut meta = Meta::from_row(row, None)?;
                    let (generation, tombstone): (i64, bool) = (row.try_get(6)?, row.try_get(7)?);
                    if tombstone {
                        meta.value = Some(Vec::new());
                    }
                    if !pager.offer(&meta) {
                        break 'rows;
                    }
                    rows_of_page.push((meta, generation, tombstone));
                }
                if fetched < batch {
                    break;
                }
                cursor = rows_of_page.last().map(|(m, ..)| (m.id.clone(), m.key.clone()));
            }
            let (mut metas, stamps): (Vec<Meta>, Vec<(i64, bool)>) =
                rows_of_page.into_iter().map(|(m, g, t)| (m, (g, t))).unzip();
            fill_values(&tx, t, &mut metas).await?;
            for (meta, (generation, tombstone)) in metas.into_iter().zip(stamps) {
                let id = text_id(meta.id.clone())?;
                let version = if tombstone {
                    Version::Tombstone { key: meta.key, generation }
                } else {
                    let item = meta.into_item()?;
                    Version::Item { key: item.key, value: item.value, expires_at: item.expires_at, generation }
                };
                push_version(&mut page, id, version);
            }
            if pager.more {
                page.next = page.records.last().and_then(|r| match r.versions.last() {
                    Some(Version::Item { key, .. } | Version::Tombstone { key, .. }) => {
                        Some(VersionCursor::Item { id: r.id.clone(), key: key.clone() })
                    }
                    _ => None,
                });
                tx.commit().await?;
                return Ok(page);
            }
            // The items are done: the range deletes follow, on this page
            // if it has room.
            page.next = Some(VersionCursor::Ranges { after: None });
            None
        }
        Some(VersionCursor::Ranges { after }) => after.as_ref().map(|id| id.as_bytes().to_vec()),
    };
    if !pager.full() {
        // A record's range deletes come whole; the records come a batch
        // at a time, the page cut after the record that fills it.
        let records = pager.batch().min(READ_BATCH) as i64;
        let shape = usize::from(ranges_after.is_some());
        let params: Vec<Param<'_>> = match &ranges_after {
            Some(id) => vec![id, &records],
            None => vec![&records],
        };
        let typed: Vec<(Param<'_>, Type)> =
            params.into_iter().zip(VERSION_RANGES_TYPES[shape].iter().cloned()).collect();
        let rows = tx.query_typed(&t.sql.version_ranges[shape], &typed).await?;
        let mut seen = 0usize;
        let mut last: Option<String> = None;
        let mut cut = false;
        for row in &rows {
            let id = text_id(row.try_get(0)?)?;
            if last.as_deref() != Some(id.as_str()) {
                if pager.full() {
                    cut = true;
                    break;
                }
                seen += 1;
                last = Some(id.clone());
            }
            let range = KeyRange { start: row.try_get(1)?, end: row.try_get(2)? };
            let version = Version::Range { range, generation: row.try_get(3)? };
            let bytes = version.bytes();
            pager.bytes = pager.bytes.saturating_add(bytes);
            pager.items += 1;
            push_version(&mut page, id, version);
        }
        let more = cut || seen as i64 == records;
        page.next = match (more, last) {
            (true, Some(id)) => Some(VersionCursor::Ranges { after: Some(id) }),
            (true, None) => page.next.take(),
            (false, _) => None,
        };
    }
    tx.commit().await?;
    Ok(page)
}
