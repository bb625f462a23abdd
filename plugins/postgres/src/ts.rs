//! TimeSeries on PostgreSQL: two tables per namespace incarnation, both
//! declaratively partitioned by day of `event_time`.
//!
//! # Layout
//!
//! Named like the KeyValue tables ([`crate::kv::names`]), in the
//! namespace's schema, created at provisioning of a TIME_SERIES namespace
//! (which gets no KeyValue tables) and dropped at deprovisioning:
//!
//! - `<base>_tsev (time_series_id, event_time, event_id) → tags`: one row
//!   per event (its *head*), `tags` a `jsonb` object with a GIN index
//!   (`jsonb_path_ops`) for tag searches, and an index in the search order.
//! - `<base>_tsit (time_series_id, event_time, event_id, key) → value`:
//!   one row per event item; the primary key is the item's identity.
//!
//! `event_time` is `int8` microseconds, so the whole `i64` range is
//! stored as given. Ids are `text COLLATE "C"`: they order as bytes, the
//! contract's order, whatever the database's collation. Both tables are
//! `PARTITION BY RANGE (event_time)`: `_e<day>` / `_i<day>` (five digits,
//! days since the epoch) hold one UTC day each, made on demand when a write
//! needs them; `_elo`/`_ilo` (before 1970) and `_ehi`/`_ihi` (from day
//! 100 000, the year 2243) are made at provisioning, so every time has a
//! partition and a day's name always fits an identifier. There is no
//! default partition: a write to a day whose partition is missing fails
//! (and the partition is made, and the write runs again) rather than
//! landing where a later partition could not be attached.
//!
//! # Writes
//!
//! The day partitions a write needs are made first — each in its own
//! short transaction under an advisory lock per incarnation, with `CREATE
//! TABLE IF NOT EXISTS … PARTITION OF`, so gateways racing to make one
//! never fail — and remembered. Then one `READ COMMITTED` transaction
//! inserts the heads and then the items, each one statement, with `ON
//! CONFLICT DO NOTHING`: what is stored stays (the first write wins),
//! a new item key of a stored event is added. Rows are deduplicated (first
//! wins) and sorted by identity in Rust, so concurrent writers lock in one
//! order. A deadlock, or a partition dropped by a concurrent reclamation,
//! runs the write again, a few times at most. Before it commits, the
//! transaction notifies the incarnation's tails of the events it stored
//! anything new of ([`follow`]).
//!
//! # Reads
//!
//! A read or search is one `REPEATABLE READ READ ONLY` transaction. The
//! interval is cut to retention at `now` and to the cursor before any
//! row is read, so events past retention never come back. Heads come in
//! the contract's order in batches, each with its items' byte count
//! (`octet_length`, which does not detoast); the page is cut in Rust by
//! bytes and count, whole events, the crossing one included, and ended
//! early past the soft deadline ([`prism_plugin_api::pace`]; the hard one
//! is checked before every statement); then the items of the page's
//! events are fetched.
//!
//! # Retention
//!
//! `reclaim(now)` drops the day partitions (both tables) wholly older than
//! `now - retention`, under the partition lock, counting their events
//! from the planner's estimate; then deletes the older rows of the
//! partitions the cutoff falls in (and of `_elo`), in batches. When the
//! owner applies a spec (`Plugin::apply_policies`: at provisioning, and
//! when the retention changes), the whole partitions past the new
//! retention are dropped at once, and the day partitions left are what
//! the namespace shows the backend holds.

mod filter;
pub(crate) mod follow;

use std::collections::{BTreeMap, HashSet};
use std::sync::PoisonError;

use async_trait::async_trait;
use prism_plugin_api::Micros;
use prism_plugin_api::pace::Pace;
use prism_plugin_api::ts::{Event, EventCursor, EventsPage, Feed, Query, TimeSeriesHandle};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{IsolationLevel, Row, Transaction};

use self::filter::Arg;
use crate::Opened;
use crate::error::{PostgresError, Result};
use crate::kv::{TableNames, Target};

/// A partition's span of event times: one UTC day.
const DAY: Micros = 86_400_000_000;
/// Days with partitions of their own: `0..LAST_DAY` (five digits).
const LAST_DAY: i64 = 100_000;
/// Heads one read statement fetches at most.
const BATCH: usize = 128;
/// Rows one reclamation statement deletes at most.
const RECLAIM_BATCH: i64 = 1000;
/// Runs of a write that met a deadlock or a missing partition.
const WRITE_ATTEMPTS: usize = 4;

type Param<'a> = (&'a (dyn ToSql + Sync), Type);

/// The statements that create an incarnation's TimeSeries tables
/// (idempotent).
pub(crate) fn ddl(names: &TableNames) -> String {
    let events = names.qualified(&names.ts_events());
    let items = names.qualified(&names.ts_items());
    let part = |table: char, edge: &str| names.qualified(&names.ts_edge(table, edge));
    let high = LAST_DAY * DAY;
    format!(
        "CREATE TABLE IF NOT EXISTS {events} (
            time_series_id text COLLATE \"C\" NOT NULL,
            event_time int8 NOT NULL,
            event_id text COLLATE \"C\" NOT NULL,
            tags jsonb NOT NULL,
            CONSTRAINT {epk} PRIMARY KEY (time_series_id, event_time, event_id))
            PARTITION BY RANGE (event_time);
        CREATE INDEX IF NOT EXISTS {etime} ON {events} (event_time DESC, time_series_id, event_id);
        CREATE INDEX IF NOT EXISTS {etags} ON {events} USING gin (tags jsonb_path_ops);
        CREATE TABLE IF NOT EXISTS {items} (
            time_series_id text COLLATE \"C\" NOT NULL,
            event_time int8 NOT NULL,
            event_id text COLLATE \"C\" NOT NULL,
            key bytea NOT NULL,
            value bytea NOT NULL,
            CONSTRAINT {ipk} PRIMARY KEY (time_series_id, event_time, event_id, key))
            PARTITION BY RANGE (event_time);
        CREATE TABLE IF NOT EXISTS {elo} PARTITION OF {events} FOR VALUES FROM (MINVALUE) TO (0);
        CREATE TABLE IF NOT EXISTS {ilo} PARTITION OF {items} FOR VALUES FROM (MINVALUE) TO (0);
        CREATE TABLE IF NOT EXISTS {ehi} PARTITION OF {events} FOR VALUES FROM ({high}) TO (MAXVALUE);
        CREATE TABLE IF NOT EXISTS {ihi} PARTITION OF {items} FOR VALUES FROM ({high}) TO (MAXVALUE);
        {notify}",
        notify = follow::ddl(names),
        epk = names.object("tepk"),
        etime = names.object("tetm"),
        etags = names.object("tetg"),
        ipk = names.object("tipk"),
        elo = part('e', "lo"),
        ilo = part('i', "lo"),
        ehi = part('e', "hi"),
        ihi = part('i', "hi"),
    )
}

/// The day partition holding `time`; `None` for the edge partitions.
fn day_of(time: Micros) -> Option<i64> {
    let day = time.div_euclid(DAY);
    (0..LAST_DAY).contains(&day).then_some(day)
}

/// Refuses what PostgreSQL `text` cannot hold.
fn check_text(field: &str, value: &str) -> Result<()> {
    if value.contains('\0') {
        return Err(PostgresError::invalid(field, "holds a NUL character, which the postgres backend cannot store"));
    }
    Ok(())
}

fn check_events(events: &[Event]) -> Result<()> {
    for event in events {
        check_text("time_series_id", &event.time_series_id)?;
        check_text("event_id", &event.event_id)?;
        for (key, value) in &event.tags {
            check_text("tags", key)?;
            check_text("tags", value)?;
        }
    }
    Ok(())
}

fn tags_json(tags: &BTreeMap<String, String>) -> Result<String> {
    serde_json::to_string(tags).map_err(|e| PostgresError::invalid("tags", e.to_string()))
}

impl Target {
    fn ts_events(&self) -> String {
        self.names.qualified(&self.names.ts_events())
    }

    fn ts_items(&self) -> String {
        self.names.qualified(&self.names.ts_items())
    }

    fn known_days(&self) -> std::sync::MutexGuard<'_, HashSet<i64>> {
        // Every critical section is one insert, remove or lookup.
        self.ts_days.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Makes the day partitions of `days` that this plugin has not seen yet.
async fn ensure_partitions(t: &Target, days: &HashSet<i64>) -> Result<()> {
    let missing: Vec<i64> = {
        let known = t.known_days();
        let mut missing: Vec<i64> = days.iter().copied().filter(|d| !known.contains(d)).collect();
        missing.sort_unstable();
        missing
    };
    if missing.is_empty() {
        return Ok(());
    }
    let mut client = crate::lease::lease(&t.pool).await?;
    for day in missing {
        let tx = client.build_transaction().start().await?;
        tx.execute_typed(crate::kv::statements::LOCK, &[(&t.names.partition_lock(), Type::INT8)]).await?;
        let (from, to) = (day * DAY, (day + 1) * DAY);
        let names = &t.names;
        tx.batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {e} PARTITION OF {events} FOR VALUES FROM ({from}) TO ({to});
             CREATE TABLE IF NOT EXISTS {i} PARTITION OF {items} FOR VALUES FROM ({from}) TO ({to});",
            e = names.qualified(&names.ts_partition('e', day)),
            i = names.qualified(&names.ts_partition('i', day)),
            events = t.ts_events(),
            items = t.ts_items(),
        ))
        .await?;
        tx.commit().await?;
        t.known_days().insert(day);
    }
    Ok(())
}

/// A write's rows: heads and items, deduplicated (first wins) and sorted
/// by identity.
struct Rows<'a> {
    series: Vec<&'a str>,
    times: Vec<i64>,
    ids: Vec<&'a str>,
    tags: Vec<String>,
    item_series: Vec<&'a str>,
    item_times: Vec<i64>,
    item_ids: Vec<&'a str>,
    keys: Vec<&'a [u8]>,
    values: Vec<&'a [u8]>,
}

impl<'a> Rows<'a> {
    fn of(events: &'a [Event]) -> Result<Self> {
        let mut heads: BTreeMap<(&str, i64, &str), &BTreeMap<String, String>> = BTreeMap::new();
        let mut items: BTreeMap<(&str, i64, &str, &[u8]), &[u8]> = BTreeMap::new();
        for e in events {
            let id = (e.time_series_id.as_str(), e.event_time, e.event_id.as_str());
            heads.entry(id).or_insert(&e.tags);
            for (key, value) in &e.items {
                items.entry((id.0, id.1, id.2, key.as_slice())).or_insert(value.as_slice());
            }
        }
        let mut rows = Rows {
            series: Vec::with_capacity(heads.len()),
            times: Vec::with_capacity(heads.len()),
            ids: Vec::with_capacity(heads.len()),
            tags: Vec::with_capacity(heads.len()),
            item_series: Vec::with_capacity(items.len()),
            item_times: Vec::with_capacity(items.len()),
            item_ids: Vec::with_capacity(items.len()),
            keys: Vec::with_capacity(items.len()),
            values: Vec::with_capacity(items.len()),
        };
        for ((series, time, id), tags) in heads {
            rows.series.push(series);
            rows.times.push(time);
            rows.ids.push(id);
            rows.tags.push(tags_json(tags)?);
        }
        for ((series, time, id, key), value) in items {
            rows.item_series.push(series);
            rows.item_times.push(time);
            rows.item_ids.push(id);
            rows.keys.push(key);
            rows.values.push(value);
        }
        Ok(rows)
    }
}

async fn write(t: &Target, events: &[Event]) -> Result<()> {
    if events.is_empty() {
        // Nothing to store, but the namespace must exist.
        let client = crate::lease::lease(&t.pool).await?;
        client.query_typed(&format!("SELECT 1 FROM {} WHERE false", t.ts_events()), &[]).await?;
        return Ok(());
    }
    check_events(events)?;
    let rows = Rows::of(events)?;
    let days: HashSet<i64> = rows.times.iter().filter_map(|t| day_of(*t)).collect();
    let mut attempt = 1;
    loop {
        ensure_partitions(t, &days).await?;
        match write_once(t, &rows).await {
            Err(e) if attempt < WRITE_ATTEMPTS && e.code() == Some(&SqlState::CHECK_VIOLATION) => {
                // A concurrent reclamation dropped a partition this plugin
                // remembered: make it again.
                tracing::debug!(namespace = %t.name, error = %e, attempt, "a partition went missing; writing again");
                t.known_days().retain(|d| !days.contains(d));
                attempt += 1;
            }
            Err(e) if attempt < WRITE_ATTEMPTS && e.is_transient() => {
                tracing::debug!(namespace = %t.name, error = %e, attempt, "write conflicted; running it again");
                attempt += 1;
            }
            other => return other,
        }
    }
}

async fn write_once(t: &Target, rows: &Rows<'_>) -> Result<()> {
    let mut client = crate::lease::lease(&t.pool).await?;
    let tx = client.build_transaction().start().await?;
    // Each statement's trigger notifies tails of what it stored
    // (`follow`), delivered at commit.
    tx.execute_typed(
        &format!(
            "INSERT INTO {} (time_series_id, event_time, event_id, tags)
             SELECT h.s, h.t, h.e, h.tags::jsonb FROM unnest($1::text[], $2::int8[], $3::text[], $4::text[])
                AS h (s, t, e, tags)
             ON CONFLICT DO NOTHING",
            t.ts_events()
        ),
        &[
            (&rows.series, Type::TEXT_ARRAY),
            (&rows.times, Type::INT8_ARRAY),
            (&rows.ids, Type::TEXT_ARRAY),
            (&rows.tags, Type::TEXT_ARRAY),
        ],
    )
    .await?;
    if !rows.keys.is_empty() {
        tx.execute_typed(
            &format!(
                "INSERT INTO {} (time_series_id, event_time, event_id, key, value)
                 SELECT * FROM unnest($1::text[], $2::int8[], $3::text[], $4::bytea[], $5::bytea[])
                 ON CONFLICT DO NOTHING",
                t.ts_items()
            ),
            &[
                (&rows.item_series, Type::TEXT_ARRAY),
                (&rows.item_times, Type::INT8_ARRAY),
                (&rows.item_ids, Type::TEXT_ARRAY),
                (&rows.keys, Type::BYTEA_ARRAY),
                (&rows.values, Type::BYTEA_ARRAY),
            ],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// One head as read, with its items' bytes.
struct Head {
    event: Event,
    bytes: u64,
}

impl Head {
    fn from_row(row: &Row) -> Result<Self> {
        let tags: String = row.try_get(3)?;
        let tags: BTreeMap<String, String> =
            serde_json::from_str(&tags).map_err(|e| PostgresError::Corrupt(format!("event tags: {e}")))?;
        let item_bytes: i64 = row.try_get(4)?;
        let tag_bytes: usize = tags.iter().map(|(k, v)| k.len() + v.len()).sum();
        Ok(Self {
            bytes: item_bytes.unsigned_abs().saturating_add(tag_bytes as u64),
            event: Event {
                time_series_id: row.try_get(0)?,
                event_time: row.try_get(1)?,
                event_id: row.try_get(2)?,
                items: Vec::new(),
                tags,
            },
        })
    }

    fn cursor(&self) -> EventCursor {
        EventCursor {
            event_time: self.event.event_time,
            time_series_id: self.event.time_series_id.clone(),
            event_id: self.event.event_id.clone(),
        }
    }
}

async fn page(t: &Target, query: &Query, now: Micros, retention: Option<Micros>) -> Result<EventsPage> {
    let mut pace = query.limits.pace();
    let check = |pace: &Pace| pace.check().map_err(PostgresError::GaveUp);
    check(&pace)?;
    let mut client = crate::lease::lease(&t.pool).await?;
    let tx = client.build_transaction().isolation_level(IsolationLevel::RepeatableRead).read_only(true).start().await?;
    let limits = query.limits;
    let Some((oldest, newest)) = query.window(now, retention) else {
        // Nothing to read, but the namespace must exist.
        tx.query_typed(&format!("SELECT 1 FROM {} WHERE false", t.ts_events()), &[]).await?;
        return Ok(EventsPage::default());
    };
    // A zero limit would make pages that never advance.
    let max_items = limits.max_items.map_or(usize::MAX, |m| (m as usize).max(1));
    let max_bytes = limits.max_bytes.max(1);
    let batch = max_items.saturating_add(1).min(BATCH);
    let (mut bytes, mut page, mut more) = (0u64, Vec::<Head>::new(), false);
    // Where the next batch continues: the cursor, then the last head read.
    let mut from = query.after.clone();
    // Full: a bound is reached, or the soft deadline has passed with an
    // event on the page (checked per head; the hard deadline before every
    // statement).
    let full = |bytes: u64, page: &[Head], pace: &Pace| {
        bytes >= max_bytes || page.len() >= max_items || pace.should_end(page.len())
    };
    'batches: loop {
        check(&pace)?;
        let heads = heads(&tx, t, query, (oldest, newest), from.as_ref(), batch).await?;
        let full_batch = heads.len() >= batch;
        for head in heads {
            if full(bytes, &page, &pace) {
                more = true;
                break 'batches;
            }
            bytes = bytes.saturating_add(head.bytes);
            from = Some(head.cursor());
            page.push(head);
            pace.added();
        }
        if !full_batch {
            break;
        }
        if full(bytes, &page, &pace) {
            // Full at a batch's end: more may follow.
            more = true;
            break;
        }
    }
    fill_items(&tx, t, &mut page).await?;
    let next = if more { page.last().map(Head::cursor) } else { None };
    Ok(EventsPage { events: page.into_iter().map(|h| h.event).collect(), next })
}

/// Up to `limit` heads in the contract's order, within the window and
/// after `after`.
async fn heads(
    tx: &Transaction<'_>,
    t: &Target,
    query: &Query,
    (oldest, newest): (Micros, Micros),
    after: Option<&EventCursor>,
    limit: usize,
) -> Result<Vec<Head>> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut params: Vec<Param<'_>> = vec![(&oldest, Type::INT8), (&newest, Type::INT8), (&limit, Type::INT8)];
    let mut conditions = vec!["e.event_time >= $1 AND e.event_time <= $2".to_owned()];
    if let Some(cursor) = after {
        let n = params.len();
        params.extend([
            (&cursor.event_time as &(dyn ToSql + Sync), Type::INT8),
            (&cursor.time_series_id, Type::TEXT),
            (&cursor.event_id, Type::TEXT),
        ]);
        conditions.push(format!(
            "(e.event_time < ${t} OR (e.event_time = ${t} AND (e.time_series_id, e.event_id) > (${s} COLLATE \"C\", ${i} COLLATE \"C\")))",
            t = n + 1,
            s = n + 2,
            i = n + 3,
        ));
    }
    let mut args = Vec::new();
    if let Some(series) = &query.series {
        params.push((series, Type::TEXT));
        conditions.push(format!("e.time_series_id = ${} COLLATE \"C\"", params.len()));
    }
    if let Some(tag_filter) = &query.filter {
        conditions.push(filter::condition(tag_filter, "e", params.len() + 1, &mut args));
    }
    for arg in &args {
        params.push(match arg {
            Arg::Json(value) | Arg::Text(value) => (value, Type::TEXT),
            Arg::TextArray(values) => (values, Type::TEXT_ARRAY),
        });
    }
    let sql = format!(
        "SELECT e.time_series_id, e.event_time, e.event_id, e.tags::text,
            (SELECT coalesce(sum(octet_length(i.key) + octet_length(i.value)), 0)::int8 FROM {items} i
             WHERE i.time_series_id = e.time_series_id AND i.event_time = e.event_time AND i.event_id = e.event_id)
         FROM {events} e
         WHERE {conditions}
         ORDER BY e.event_time DESC, e.time_series_id, e.event_id
         LIMIT $3",
        items = t.ts_items(),
        events = t.ts_events(),
        conditions = conditions.join(" AND "),
    );
    tx.query_typed(&sql, &params).await?.iter().map(Head::from_row).collect()
}

/// Reads the items of the page's events.
async fn fill_items(tx: &Transaction<'_>, t: &Target, page: &mut [Head]) -> Result<()> {
    let (Some(first), Some(last)) = (page.first(), page.last()) else {
        return Ok(());
    };
    let (newest, oldest) = (first.event.event_time, last.event.event_time);
    let series: Vec<&str> = page.iter().map(|h| h.event.time_series_id.as_str()).collect();
    let times: Vec<i64> = page.iter().map(|h| h.event.event_time).collect();
    let ids: Vec<&str> = page.iter().map(|h| h.event.event_id.as_str()).collect();
    let rows = tx
        .query_typed(
            &format!(
                "SELECT p.n, i.key, i.value
                 FROM unnest($1::text[], $2::int8[], $3::text[]) WITH ORDINALITY AS p (s, t, e, n)
                 JOIN {} i ON i.time_series_id = p.s COLLATE \"C\" AND i.event_time = p.t
                    AND i.event_id = p.e COLLATE \"C\"
                 WHERE i.event_time >= $4 AND i.event_time <= $5
                 ORDER BY p.n, i.key",
                t.ts_items()
            ),
            &[
                (&series, Type::TEXT_ARRAY),
                (&times, Type::INT8_ARRAY),
                (&ids, Type::TEXT_ARRAY),
                (&oldest, Type::INT8),
                (&newest, Type::INT8),
            ],
        )
        .await?;
    for row in rows {
        let n: i64 = row.try_get(0)?;
        let head = usize::try_from(n - 1)
            .ok()
            .and_then(|n| page.get_mut(n))
            .ok_or_else(|| PostgresError::Corrupt("an item of no event on the page".into()))?;
        head.event.items.push((row.try_get(1)?, row.try_get(2)?));
    }
    Ok(())
}

/// The day of a day partition's name, `None` for others.
fn partition_day(names: &TableNames, relname: &str) -> Option<i64> {
    let digits = relname.strip_prefix(names.base.as_str())?.strip_prefix("_e")?;
    if digits.len() != 5 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

async fn reclaim(t: &Target, now: Micros, retention: Option<Micros>) -> Result<u64> {
    let mut client = crate::lease::lease(&t.pool).await?;
    // Also checks the namespace exists.
    client.query_typed(&format!("SELECT 1 FROM {} WHERE false", t.ts_events()), &[]).await?;
    let Some(retention) = retention else {
        return Ok(0);
    };
    let cutoff = now.saturating_sub(retention);
    let mut removed = drop_partitions(t, &mut client, cutoff).await?;
    // What is left past the cutoff: the partition it falls in, and `_elo`.
    let deletes = [
        (t.ts_items(), "time_series_id, event_time, event_id, key", false),
        (t.ts_events(), "time_series_id, event_time, event_id", true),
    ];
    for (table, identity, counted) in deletes {
        loop {
            let deleted = client
                .execute_typed(
                    &format!(
                        "DELETE FROM {table} WHERE event_time < $1 AND ({identity}) IN (
                            SELECT {identity} FROM {table} WHERE event_time < $1 LIMIT $2)"
                    ),
                    &[(&cutoff, Type::INT8), (&RECLAIM_BATCH, Type::INT8)],
                )
                .await?;
            if counted {
                removed += deleted;
            }
            if deleted < RECLAIM_BATCH.unsigned_abs() {
                break;
            }
        }
    }
    Ok(removed)
}

/// Drops the day partitions (both tables) wholly older than `cutoff`,
/// each under the partition lock; returns the planner's estimate of their
/// events.
async fn drop_partitions(t: &Target, client: &mut deadpool_postgres::Object, cutoff: Micros) -> Result<u64> {
    let mut removed = 0u64;
    let partitions = client
        .query_typed(
            "SELECT c.relname::text, greatest(c.reltuples, 0)::int8 FROM pg_inherits h
             JOIN pg_class c ON c.oid = h.inhrelid WHERE h.inhparent = to_regclass($1)",
            &[(&t.ts_events(), Type::TEXT)],
        )
        .await?;
    let mut due: Vec<(i64, u64)> = Vec::new();
    for row in &partitions {
        let (relname, estimate): (String, i64) = (row.try_get(0)?, row.try_get(1)?);
        if let Some(day) = partition_day(&t.names, &relname)
            && (day + 1).saturating_mul(DAY) <= cutoff
        {
            due.push((day, estimate.unsigned_abs()));
        }
    }
    for (day, estimate) in due {
        let tx = client.build_transaction().start().await?;
        tx.execute_typed(crate::kv::statements::LOCK, &[(&t.names.partition_lock(), Type::INT8)]).await?;
        tx.batch_execute(&format!(
            "DROP TABLE IF EXISTS {}, {}",
            t.names.qualified(&t.names.ts_partition('e', day)),
            t.names.qualified(&t.names.ts_partition('i', day)),
        ))
        .await?;
        tx.commit().await?;
        t.known_days().remove(&day);
        removed += estimate;
    }
    Ok(removed)
}

/// Drops the day partitions wholly past `retention` at `now` and returns
/// what the database then holds: its day partitions
/// ([`prism_plugin_api::Plugin::apply_policies`]). Run when the owner
/// applies a spec, so a shorter retention frees the space at once rather
/// than at the next reclamation. Only whole partitions (a few DDL
/// statements): the rows past retention in the day the cutoff falls in
/// are left to [`reclaim`], whose batched deletes may take long.
pub(crate) async fn apply(
    t: &Target,
    now: Micros,
    retention: Option<Micros>,
) -> Result<Vec<prism_plugin_api::BackendSetting>> {
    let mut client = crate::lease::lease(&t.pool).await?;
    // Also checks the namespace exists.
    client.query_typed(&format!("SELECT 1 FROM {} WHERE false", t.ts_events()), &[]).await?;
    let dropped = match retention {
        Some(retention) => drop_partitions(t, &mut client, now.saturating_sub(retention)).await?,
        None => 0,
    };
    let partitions = client
        .query_typed(
            "SELECT c.relname::text FROM pg_inherits h
             JOIN pg_class c ON c.oid = h.inhrelid WHERE h.inhparent = to_regclass($1)",
            &[(&t.ts_events(), Type::TEXT)],
        )
        .await?;
    let mut days = Vec::new();
    for row in &partitions {
        if let Some(day) = partition_day(&t.names, &row.try_get::<_, String>(0)?) {
            days.push(day);
        }
    }
    days.sort_unstable();
    tracing::debug!(namespace = %t.name, dropped, days = days.len(), "applied the retention to the day partitions");
    let enforced = match retention {
        Some(_) => {
            "dropped whole once wholly past retention, by the owning gateway when the spec changes and at every reclamation"
        }
        None => "no retention: every day is kept",
    };
    let setting = |name: &str, value: String, detail: &str| prism_plugin_api::BackendSetting {
        name: name.into(),
        value,
        detail: detail.into(),
    };
    Ok(vec![
        setting("day_partitions", days.len().to_string(), enforced),
        setting("oldest_day_partition", days.first().map_or_else(|| "none".to_owned(), |d| date(*d)), "UTC"),
    ])
}

/// `YYYY-MM-DD` of a day since the epoch (Howard Hinnant's
/// `civil_from_days`).
fn date(day: i64) -> String {
    let z = day + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[async_trait]
impl TimeSeriesHandle for Opened {
    async fn write(&self, events: &[Event]) -> prism_plugin_api::Result<()> {
        self.run("write", write(&self.target, events)).await
    }

    async fn query(&self, query: &Query, now: Micros) -> prism_plugin_api::Result<EventsPage> {
        let what = if query.series.is_some() { "read" } else { "search" };
        self.run(what, page(&self.target, query, now, self.retention)).await
    }

    async fn reclaim(&self, now: Micros) -> prism_plugin_api::Result<u64> {
        self.run("reclaim", reclaim(&self.target, now, self.retention)).await
    }

    fn follows(&self) -> bool {
        true
    }

    /// Every write committed from now on, by any writer that notifies
    /// ([`follow`]).
    async fn follow(&self) -> prism_plugin_api::Result<Feed> {
        let started = follow::follow(self.target.clone(), &self.listen, self.request_timeout);
        self.run("follow", started).await
    }
}

#[cfg(test)]
mod tests {
    use prism_plugin_api::ts::read_window as window;

    use super::*;

    #[test]
    fn dates_of_days() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(19_876), "2024-06-02");
        assert_eq!(date(11_016), "2000-02-29");
        assert_eq!(date(99_999), "2243-10-16");
    }

    #[test]
    fn days_and_partition_names() {
        assert_eq!(day_of(0), Some(0));
        assert_eq!(day_of(-1), None);
        assert_eq!(day_of(DAY - 1), Some(0));
        assert_eq!(day_of(DAY), Some(1));
        assert_eq!(day_of(LAST_DAY * DAY), None);
        assert_eq!(day_of(i64::MIN), None);
        assert_eq!(day_of(i64::MAX), None);
        let names = TableNames::from_base("public", "kv_a_b_0123".into());
        assert_eq!(partition_day(&names, &names.ts_partition('e', 19_876)), Some(19_876));
        assert_eq!(partition_day(&names, &names.ts_partition('i', 19_876)), None);
        assert_eq!(partition_day(&names, &names.ts_edge('e', "lo")), None);
        assert_eq!(partition_day(&names, "kv_a_b_0123_e1234x"), None);
    }

    #[test]
    fn windows_cut_to_retention_and_cursor() {
        assert_eq!(window(10, 20, None, 100, None), Some((10, 19)));
        assert_eq!(window(10, 20, None, 100, Some(85)), Some((15, 19)));
        assert_eq!(window(10, 20, None, 100, Some(70)), None);
        assert_eq!(window(i64::MIN, i64::MAX, None, 0, None), Some((i64::MIN, i64::MAX - 1)));
        assert_eq!(window(5, i64::MIN, None, 0, None), None);
        let cursor = EventCursor { event_time: 12, time_series_id: "s".into(), event_id: "e".into() };
        assert_eq!(window(10, 20, Some(&cursor), 100, None), Some((10, 12)));
    }
}
