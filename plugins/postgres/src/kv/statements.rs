//! Every SQL statement of one KeyValue namespace incarnation, formatted
//! once from its table names ([`KvStatements::new`]), with the parameter
//! types each is prepared with.
//!
//! The plugin sends exactly these texts; benchmarks and load baselines
//! (`prism-loadtest`'s `pg:` target and its pgbench scripts, the gateway's
//! postgres bench) import them instead of copying them, so a baseline
//! always runs the SQL the plugin runs. Only quoted identifiers are
//! formatted into a text; every value is a parameter.

use tokio_postgres::types::Type;

use super::names::TableNames;

/// Rows of metadata one read statement fetches at most: a page that needs
/// more is read in several statements, in one `REPEATABLE READ`
/// transaction.
pub const READ_BATCH: usize = 256;

/// Values up to this many bytes come with their row's metadata; longer
/// ones are fetched once the page is cut, so a batch holds at most
/// [`READ_BATCH`] of these. A page whose values are all this small (and
/// that one batch holds) is answered by one statement.
pub const SMALL_VALUE_BYTES: i64 = 8 << 10;

/// Takes the per-record lock that serialises writers of one record
/// (`$1`: [`TableNames::record_lock`]) until the transaction ends.
pub const LOCK: &str = "SELECT pg_advisory_xact_lock($1)";
pub const LOCK_TYPES: &[Type] = &[Type::INT8];

/// The parameters of [`KvStatements::upsert`]: record id, generation, then
/// one array per column of the written items (key, tombstone, expires_at,
/// value, chunk count, length).
pub const UPSERT_TYPES: &[Type] = &[
    Type::BYTEA,
    Type::INT8,
    Type::BYTEA_ARRAY,
    Type::BOOL_ARRAY,
    Type::INT8_ARRAY,
    Type::BYTEA_ARRAY,
    Type::INT4_ARRAY,
    Type::INT8_ARRAY,
];

/// Takes the advisory locks `$1` (an array, sorted so that two takers
/// never wait on each other in a cycle) until the transaction ends.
pub const LOCK_MANY: &str = "SELECT pg_advisory_xact_lock(k) FROM unnest($1::int8[]) AS k";

/// The parameters of [`KvStatements::restore`]: one array per column of
/// the restored rows (record id, key, generation, tombstone, expires_at,
/// value, length).
pub const RESTORE_TYPES: &[Type] = &[
    Type::BYTEA_ARRAY,
    Type::BYTEA_ARRAY,
    Type::INT8_ARRAY,
    Type::BOOL_ARRAY,
    Type::INT8_ARRAY,
    Type::BYTEA_ARRAY,
    Type::INT8_ARRAY,
];

/// [`UPSERT_TYPES`], then the idempotency token and when to forget it.
pub const UPSERT_ONCE_TYPES: &[Type] = &[
    Type::BYTEA,
    Type::INT8,
    Type::BYTEA_ARRAY,
    Type::BOOL_ARRAY,
    Type::INT8_ARRAY,
    Type::BYTEA_ARRAY,
    Type::INT4_ARRAY,
    Type::INT8_ARRAY,
    Type::BYTEA,
    Type::INT8,
];

/// The parameters of [`KvStatements::get_keys`]: record id, now, keys.
pub const GET_KEYS_TYPES: &[Type] = &[Type::BYTEA, Type::INT8, Type::BYTEA_ARRAY];

/// The parameters of each shape of [`KvStatements::get_range`], indexed
/// like it: id, now, start, then the end and the cursor if the shape has
/// them, then the limit.
const GET_RANGE_TYPES: [&[Type]; 4] = [
    &[Type::BYTEA, Type::INT8, Type::BYTEA, Type::INT8],
    &[Type::BYTEA, Type::INT8, Type::BYTEA, Type::BYTEA, Type::INT8],
    &[Type::BYTEA, Type::INT8, Type::BYTEA, Type::BYTEA, Type::INT8],
    &[Type::BYTEA, Type::INT8, Type::BYTEA, Type::BYTEA, Type::BYTEA, Type::INT8],
];

/// The parameters of [`KvStatements::scan`]: now, then the cursor's id and
/// key if there is one, then the limit.
const SCAN_TYPES: [&[Type]; 2] = [&[Type::INT8, Type::INT8], &[Type::INT8, Type::BYTEA, Type::BYTEA, Type::INT8]];
/// Parameters of [`KvStatements::versions`]: [cursor id, cursor key],
/// limit.
pub const VERSIONS_TYPES: [&[Type]; 2] = [&[Type::INT8], &[Type::BYTEA, Type::BYTEA, Type::INT8]];
/// Parameters of [`KvStatements::version_ranges`]: [after id], records.
pub const VERSION_RANGES_TYPES: [&[Type]; 2] = [&[Type::INT8], &[Type::BYTEA, Type::INT8]];

/// The texts of one incarnation's statements, placeholders numbered in
/// the order their `*_TYPES` list them.
#[derive(Debug, Clone)]
pub struct KvStatements {
    /// Creates the tables and indexes (idempotent; several statements).
    pub ddl: String,
    /// Records an idempotency token (`$1` id, `$2` token, `$3`
    /// forget_after); a row back means it is new.
    pub token: String,
    /// The last-writer-wins upsert of puts and point deletes
    /// ([`UPSERT_TYPES`]); returns the keys that won and frees their old
    /// chunks.
    pub upsert: String,
    /// [`Self::upsert`] behind an idempotency token in the same statement
    /// ([`UPSERT_ONCE_TYPES`]): the token is recorded, and the items are
    /// written only if it was not recorded before.
    pub upsert_once: String,
    /// [`Self::upsert`] across records, each row at its own generation
    /// ([`RESTORE_TYPES`]; a migration's backfill, `kv::restore_records`):
    /// values stored inline and point deletes only; returns how many won.
    pub restore: String,
    /// Inserts the chunks of the values that won (`$1` id, arrays of keys,
    /// indexes and data).
    pub insert_chunks: String,
    /// Removes the items older than `$4` in the ranges `($2[i], $3[i])` of
    /// record `$1`.
    pub delete_range_items: String,
    /// The range deletes record `$1` remembers.
    pub select_ranges: String,
    /// Forgets every range delete of record `$1`.
    pub delete_ranges: String,
    /// Remembers range deletes (`$1` id, arrays of starts, ends,
    /// generations).
    pub insert_ranges: String,
    /// The metadata (and small values) of the keys `$3` of record `$1`
    /// visible at `$2`, in key order.
    pub get_keys: String,
    /// The same for a key range, in its four shapes ([`Self::get_range`]).
    get_range: [String; 4],
    /// Visible items of every record in (id, key) order, without and with
    /// a cursor ([`Self::scan`]).
    scan: [String; 2],
    /// Larger inline values by (id, key) (`$1`, `$2`: arrays).
    pub fill_inline: String,
    /// The chunks of values by (id, key) (`$1`, `$2`: arrays), in order.
    pub fill_chunks: String,
    /// Turns up to `$3` items expired at `$1` into tombstones (or removes
    /// them, if their generation is at or before `$2`); returns the count.
    pub reclaim_expired: String,
    /// Deletes up to `$2` point tombstones at or before `$1`.
    pub sweep_tombstones: String,
    /// Deletes up to `$2` range deletes at or before `$1`.
    pub sweep_ranges: String,
    /// Deletes up to `$2` tokens to forget at or before `$1`.
    pub sweep_tokens: String,
    /// The bytes the incarnation stores, with `$1` bytes per row.
    pub storage_bytes: String,
    /// Every item row — values (expired or not) and point deletes — with
    /// its generation, from the start or after a cursor
    /// ([`VERSIONS_TYPES`]; a migration's backfill, `read::scan_versions`).
    pub versions: [String; 2],
    /// The range deletes of the next `$n` records that remember some,
    /// from the start or after a record ([`VERSION_RANGES_TYPES`]).
    pub version_ranges: [String; 2],
}

/// The columns [`KvStatements::get_keys`] and its siblings read after the
/// id and key.
fn meta_columns() -> String {
    format!("len, chunks, expires_at, CASE WHEN chunks = 0 AND len <= {SMALL_VALUE_BYTES} THEN value END")
}

impl KvStatements {
    pub fn new(names: &TableNames) -> Self {
        let items = names.qualified(&names.items());
        let chunks = names.qualified(&names.chunks());
        let ranges = names.qualified(&names.ranges());
        let tokens = names.qualified(&names.tokens());
        // Last-writer-wins in SQL: a row is written only where no stored
        // range delete at least as new covers its key and the stored
        // version is strictly older. The old chunks of the rows that won go
        // in the same statement (a data-modifying CTE sees the rows as they
        // were before). `{gate}` is where the token's condition goes.
        let upsert = |head: &str, gate: &str| {
            format!(
                "WITH {head}won AS (
                    INSERT INTO {items} AS s (id, key, generation, tombstone, expires_at, value, chunks, len)
                    SELECT $1, w.key, $2, w.tombstone, w.expires_at, w.value, w.chunks, w.len
                    FROM unnest($3::bytea[], $4::bool[], $5::int8[], $6::bytea[], $7::int4[], $8::int8[])
                        AS w (key, tombstone, expires_at, value, chunks, len)
                    WHERE {gate}NOT EXISTS (
                        SELECT 1 FROM {ranges} r
                        WHERE r.id = $1 AND r.generation >= $2
                          AND r.start_key <= w.key AND (r.end_key IS NULL OR w.key < r.end_key))
                    ON CONFLICT (id, key) DO UPDATE
                    SET generation = EXCLUDED.generation, tombstone = EXCLUDED.tombstone,
                        expires_at = EXCLUDED.expires_at, value = EXCLUDED.value,
                        chunks = EXCLUDED.chunks, len = EXCLUDED.len
                    WHERE s.generation < EXCLUDED.generation
                    RETURNING key),
                freed AS (
                    DELETE FROM {chunks} c USING won WHERE c.id = $1 AND c.key = won.key)
                SELECT key FROM won"
            )
        };
        // The token's insert runs to completion before `won` reads its
        // output: no row from it means the token was applied before, and
        // then nothing is written.
        let fresh = format!(
            "fresh AS (
                    INSERT INTO {tokens} (id, token, forget_after) VALUES ($1, $9, $10)
                    ON CONFLICT (id, token) DO NOTHING RETURNING 1),
                "
        );
        let visible = format!(
            "SELECT key, {} FROM {items} WHERE id = $1 AND NOT tombstone AND (expires_at IS NULL OR expires_at > $2)",
            meta_columns()
        );
        let range = |end: bool, cursor: bool| {
            // Placeholders in the order of `GET_RANGE_TYPES`.
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
        let scan = |cursor: bool| {
            let mut sql = format!(
                "SELECT id, key, {} FROM {items} WHERE NOT tombstone AND (expires_at IS NULL OR expires_at > $1)",
                meta_columns()
            );
            sql.push_str(if cursor {
                " AND (id, key) > ($2, $3) ORDER BY id, key LIMIT $4"
            } else {
                " ORDER BY id, key LIMIT $2"
            });
            sql
        };
        let sweep = |table: &str, condition: &str| {
            format!(
                "DELETE FROM {table} WHERE ctid = ANY(ARRAY(
                    SELECT ctid FROM {table} WHERE {condition} LIMIT $2 FOR UPDATE SKIP LOCKED))"
            )
        };
        let versions = |cursor: bool| {
            format!(
                "SELECT id, key, {}, generation, tombstone FROM {items} {} ORDER BY id, key LIMIT {}",
                meta_columns(),
                if cursor { "WHERE (id, key) > ($1, $2)" } else { "" },
                if cursor { "$3" } else { "$1" },
            )
        };
        let version_ranges = |cursor: bool| {
            let (after, limit) = if cursor { ("WHERE id > $1", "$2") } else { ("", "$1") };
            format!(
                "SELECT id, start_key, end_key, generation FROM {ranges}
                 WHERE id IN (SELECT DISTINCT id FROM {ranges} {after} ORDER BY id LIMIT {limit})
                 ORDER BY id, start_key, generation"
            )
        };
        Self {
            versions: [versions(false), versions(true)],
            version_ranges: [version_ranges(false), version_ranges(true)],
            ddl: ddl(names, &items, &chunks, &ranges, &tokens),
            token: format!(
                "INSERT INTO {tokens} (id, token, forget_after) VALUES ($1, $2, $3)
                     ON CONFLICT (id, token) DO NOTHING RETURNING 1"
            ),
            upsert: upsert("", ""),
            restore: format!(
                "WITH won AS (
                    INSERT INTO {items} AS s (id, key, generation, tombstone, expires_at, value, chunks, len)
                    SELECT w.id, w.key, w.generation, w.tombstone, w.expires_at, w.value, 0, w.len
                    FROM unnest($1::bytea[], $2::bytea[], $3::int8[], $4::bool[], $5::int8[], $6::bytea[], $7::int8[])
                        AS w (id, key, generation, tombstone, expires_at, value, len)
                    WHERE NOT EXISTS (
                        SELECT 1 FROM {ranges} r
                        WHERE r.id = w.id AND r.generation >= w.generation
                          AND r.start_key <= w.key AND (r.end_key IS NULL OR w.key < r.end_key))
                    ON CONFLICT (id, key) DO UPDATE
                    SET generation = EXCLUDED.generation, tombstone = EXCLUDED.tombstone,
                        expires_at = EXCLUDED.expires_at, value = EXCLUDED.value,
                        chunks = EXCLUDED.chunks, len = EXCLUDED.len
                    WHERE s.generation < EXCLUDED.generation
                    RETURNING id, key),
                freed AS (
                    DELETE FROM {chunks} c USING won WHERE c.id = won.id AND c.key = won.key)
                SELECT count(*) FROM won"
            ),
            upsert_once: upsert(&fresh, "EXISTS (SELECT 1 FROM fresh) AND "),
            insert_chunks: format!(
                "INSERT INTO {chunks} (id, key, idx, data)
                 SELECT $1, c.key, c.idx, c.data FROM unnest($2::bytea[], $3::int4[], $4::bytea[]) AS c (key, idx, data)"
            ),
            delete_range_items: format!(
                "DELETE FROM {items} i USING unnest($2::bytea[], $3::bytea[]) AS r (start_key, end_key)
             WHERE i.id = $1 AND i.key >= r.start_key AND (r.end_key IS NULL OR i.key < r.end_key)
               AND i.generation < $4"
            ),
            select_ranges: format!("SELECT start_key, end_key, generation FROM {ranges} WHERE id = $1"),
            delete_ranges: format!("DELETE FROM {ranges} WHERE id = $1"),
            insert_ranges: format!(
                "INSERT INTO {ranges} (id, start_key, end_key, generation)
             SELECT $1, r.start_key, r.end_key, r.generation
             FROM unnest($2::bytea[], $3::bytea[], $4::int8[]) AS r (start_key, end_key, generation)"
            ),
            get_keys: format!("{visible} AND key = ANY($3) ORDER BY key"),
            get_range: [range(false, false), range(true, false), range(false, true), range(true, true)],
            scan: [scan(false), scan(true)],
            fill_inline: format!(
                "SELECT i.id, i.key, i.value FROM {items} i
                     JOIN unnest($1::bytea[], $2::bytea[]) AS w (id, key) ON i.id = w.id AND i.key = w.key"
            ),
            fill_chunks: format!(
                "SELECT c.id, c.key, c.idx, c.data FROM {chunks} c
                     JOIN unnest($1::bytea[], $2::bytea[]) AS w (id, key) ON c.id = w.id AND c.key = w.key
                     ORDER BY c.id, c.key, c.idx"
            ),
            reclaim_expired: format!(
                "WITH due AS (
                    SELECT id, key, generation FROM {items}
                    WHERE NOT tombstone AND expires_at <= $1
                    LIMIT $3 FOR UPDATE SKIP LOCKED),
                kept AS (
                    UPDATE {items} i SET tombstone = true, value = NULL, chunks = 0, len = 0, expires_at = NULL
                    FROM due WHERE i.id = due.id AND i.key = due.key AND due.generation > $2
                    RETURNING i.id, i.key),
                freed AS (
                    DELETE FROM {chunks} c USING kept WHERE c.id = kept.id AND c.key = kept.key),
                gone AS (
                    DELETE FROM {items} i USING due
                    WHERE i.id = due.id AND i.key = due.key AND due.generation <= $2)
                SELECT count(*) FROM due"
            ),
            sweep_tombstones: sweep(&items, "tombstone AND generation <= $1"),
            sweep_ranges: sweep(&ranges, "generation <= $1"),
            sweep_tokens: sweep(&tokens, "forget_after <= $1"),
            storage_bytes: format!(
                "SELECT
                    (SELECT coalesce(sum(octet_length(id) + octet_length(key) + coalesce(octet_length(value), 0) + $1), 0)::int8 FROM {items})
                  + (SELECT coalesce(sum(octet_length(id) + octet_length(key) + octet_length(data) + $1), 0)::int8 FROM {chunks})
                  + (SELECT coalesce(sum(octet_length(id) + octet_length(start_key) + coalesce(octet_length(end_key), 0) + $1), 0)::int8 FROM {ranges})
                  + (SELECT coalesce(sum(octet_length(id) + octet_length(token) + $1), 0)::int8 FROM {tokens})"
            ),
        }
    }

    /// The metadata read of a key range of one record: with an end
    /// (`key < end`) or not, after a cursor (`key > cursor`) or not, and
    /// its parameter types (id, now, start, [end], [cursor], limit).
    pub fn get_range(&self, end: bool, cursor: bool) -> (&str, &'static [Type]) {
        let shape = usize::from(end) + 2 * usize::from(cursor);
        (&self.get_range[shape], GET_RANGE_TYPES[shape])
    }

    /// The metadata read of every record from the start or after a cursor,
    /// and its parameter types (now, [cursor id, cursor key], limit).
    pub fn scan(&self, cursor: bool) -> (&str, &'static [Type]) {
        let shape = usize::from(cursor);
        (&self.scan[shape], SCAN_TYPES[shape])
    }
}

/// The statements that create an incarnation's tables (idempotent).
fn ddl(names: &TableNames, items: &str, chunks: &str, ranges: &str, tokens: &str) -> String {
    let object = |suffix: &str| names.object(suffix);
    format!(
        "CREATE TABLE IF NOT EXISTS {items} (
            id bytea NOT NULL,
            key bytea NOT NULL,
            generation int8 NOT NULL,
            tombstone bool NOT NULL,
            expires_at int8,
            value bytea,
            chunks int4 NOT NULL,
            len int8 NOT NULL,
            CONSTRAINT {ipk} PRIMARY KEY (id, key));
        ALTER TABLE {items} ALTER COLUMN value SET STORAGE EXTERNAL;
        CREATE INDEX IF NOT EXISTS {iexp} ON {items} (expires_at) WHERE NOT tombstone AND expires_at IS NOT NULL;
        CREATE INDEX IF NOT EXISTS {itomb} ON {items} (generation) WHERE tombstone;
        CREATE TABLE IF NOT EXISTS {chunks} (
            id bytea NOT NULL,
            key bytea NOT NULL,
            idx int4 NOT NULL,
            data bytea NOT NULL,
            CONSTRAINT {cpk} PRIMARY KEY (id, key, idx),
            CONSTRAINT {cfk} FOREIGN KEY (id, key) REFERENCES {items} (id, key) ON DELETE CASCADE);
        ALTER TABLE {chunks} ALTER COLUMN data SET STORAGE EXTERNAL;
        CREATE TABLE IF NOT EXISTS {ranges} (
            id bytea NOT NULL,
            start_key bytea NOT NULL,
            end_key bytea,
            generation int8 NOT NULL);
        CREATE INDEX IF NOT EXISTS {rid} ON {ranges} (id);
        CREATE TABLE IF NOT EXISTS {tokens} (
            id bytea NOT NULL,
            token bytea NOT NULL,
            forget_after int8 NOT NULL,
            CONSTRAINT {tpk} PRIMARY KEY (id, token));
        CREATE INDEX IF NOT EXISTS {texp} ON {tokens} (forget_after);",
        ipk = object("ipk"),
        iexp = object("iexp"),
        itomb = object("itomb"),
        cpk = object("cpk"),
        cfk = object("cfk"),
        rid = object("rid"),
        tpk = object("tpk"),
        texp = object("texp"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The highest `$n` in `sql`.
    fn placeholders(sql: &str) -> usize {
        let mut highest = 0;
        let mut rest = sql;
        while let Some(at) = rest.find('$') {
            rest = &rest[at + 1..];
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            highest = highest.max(digits.parse().unwrap_or(0));
        }
        highest
    }

    #[test]
    fn get_statements_number_their_placeholders_as_bound() {
        let sql = KvStatements::new(&TableNames::from_base("s", "t".into()));
        let visible = "SELECT key, len, chunks, expires_at, CASE WHEN chunks = 0 AND len <= 8192 THEN value END \
                       FROM \"s\".\"t_items\" WHERE id = $1 AND NOT tombstone AND (expires_at IS NULL OR expires_at > $2)";
        assert_eq!(sql.get_keys, format!("{visible} AND key = ANY($3) ORDER BY key"));
        let shapes = [
            ((false, false), " AND key >= $3 ORDER BY key LIMIT $4"),
            ((true, false), " AND key >= $3 AND key < $4 ORDER BY key LIMIT $5"),
            ((false, true), " AND key >= $3 AND key > $4 ORDER BY key LIMIT $5"),
            ((true, true), " AND key >= $3 AND key < $4 AND key > $5 ORDER BY key LIMIT $6"),
        ];
        for ((end, cursor), tail) in shapes {
            let (text, types) = sql.get_range(end, cursor);
            assert_eq!(text, format!("{visible}{tail}"), "{end} {cursor}");
            assert_eq!(types.len(), placeholders(text), "{end} {cursor}");
        }
    }

    #[test]
    fn every_statement_has_a_type_per_placeholder() {
        let sql = KvStatements::new(&TableNames::from_base("s", "t".into()));
        assert_eq!(placeholders(LOCK), LOCK_TYPES.len());
        assert_eq!(placeholders(&sql.upsert), UPSERT_TYPES.len());
        assert_eq!(placeholders(&sql.upsert_once), UPSERT_ONCE_TYPES.len());
        assert_eq!(placeholders(&sql.get_keys), GET_KEYS_TYPES.len());
        for cursor in [false, true] {
            let (text, types) = sql.scan(cursor);
            assert_eq!(placeholders(text), types.len(), "scan, cursor {cursor}");
        }
        // The token-gated upsert is the plain one with the token in front.
        assert!(sql.upsert_once.contains("WHERE EXISTS (SELECT 1 FROM fresh) AND NOT EXISTS ("));
        assert_eq!(sql.upsert_once.matches("INSERT INTO").count(), 2);
    }
}
