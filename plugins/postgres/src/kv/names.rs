//! Table names of a namespace incarnation: deterministic, readable,
//! collision-free, within PostgreSQL's 63-byte identifier limit, and always
//! used quoted.
//!
//! `kv_<tenant>_<name>` (`-` as `_`, cut to 36 bytes) then `_` and 16 hex
//! digits of the xxHash64 of `name ‖ 0x00 ‖ create_revision`: the readable
//! part is for operators, the hash makes names and incarnations distinct
//! (`a-b/c` and `a/b-c` read alike; a namespace created again gets a new
//! revision, so new tables). The base is at most 56 bytes; each table adds
//! a suffix of at most 7 (`_chunks`), each index or constraint at most 6.
//! A hash collision is refused at provisioning (the registry's `base` is
//! unique), never shared.

use std::hash::Hasher;

use prism_plugin_api::Namespace;
use prism_proto::names::NamespaceName;
use twox_hash::XxHash64;

use crate::error::{PostgresError, Result};

/// PostgreSQL's longest identifier, in bytes (NAMEDATALEN - 1).
pub const MAX_IDENTIFIER_BYTES: usize = 63;

/// The readable part of a base name, in bytes.
const READABLE_BYTES: usize = 36;

/// The table, in the namespace's schema, that lists the incarnations
/// provisioned there and their base names.
pub const REGISTRY_TABLE: &str = "prism_kv_namespaces";

/// Seeds of the hashes, so that table names and lock keys never coincide.
const TABLE_SEED: u64 = 0x7072_6973_6d2d_6b76; // "prism-kv"
const RECORD_LOCK_SEED: u64 = 0x7265_636f_7264_6c6b; // "recordlk"
const SCHEMA_LOCK_SEED: u64 = 0x7363_6865_6d61_6c6b; // "schemalk"
const PARTITION_LOCK_SEED: u64 = 0x7061_7274_6974_6c6b; // "partitlk"

/// `"identifier"`, with any `"` doubled: safe whatever it holds (a NUL is
/// refused earlier, as PostgreSQL cannot store one).
pub fn quote_ident(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

/// The names of one namespace incarnation's tables in its schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableNames {
    pub schema: String,
    /// What every table, index and constraint name starts with.
    pub base: String,
}

impl TableNames {
    /// The names for `ns` in `schema`; refuses a namespace name that is
    /// not `tenant/name` as SPEC §2 allows (and so any SQL in it).
    pub fn of(ns: &Namespace, schema: &str) -> Result<Self> {
        let parsed = NamespaceName::parse(&ns.name)
            .map_err(|e| PostgresError::invalid("namespace", format!("{:?} {e}", ns.name)))?;
        let mut readable: String =
            format!("{}_{}", parsed.tenant, parsed.name).chars().map(|c| if c == '-' { '_' } else { c }).collect();
        // Validated names are ASCII: any byte is a char boundary.
        readable.truncate(READABLE_BYTES);
        let mut hashed = ns.name.as_bytes().to_vec();
        hashed.push(0);
        hashed.extend_from_slice(&ns.create_revision.to_be_bytes());
        let hash = XxHash64::oneshot(TABLE_SEED, &hashed);
        Ok(Self::from_base(schema, format!("kv_{readable}_{hash:016x}")))
    }

    /// Names whose base was read back from the registry.
    pub fn from_base(schema: &str, base: String) -> Self {
        Self { schema: schema.to_owned(), base }
    }

    fn name(&self, suffix: &str) -> String {
        format!("{}_{suffix}", self.base)
    }

    /// Items: values inline, chunk counts, point tombstones.
    pub fn items(&self) -> String {
        self.name("items")
    }

    /// Parts of values above the chunk threshold.
    pub fn chunks(&self) -> String {
        self.name("chunks")
    }

    /// Range and whole-record tombstones.
    pub fn ranges(&self) -> String {
        self.name("ranges")
    }

    /// Applied idempotency tokens.
    pub fn tokens(&self) -> String {
        self.name("tokens")
    }

    /// Every KeyValue table, in the order they may be dropped.
    pub fn tables(&self) -> [String; 4] {
        [self.chunks(), self.items(), self.ranges(), self.tokens()]
    }

    /// TimeSeries event heads (tags), partitioned by event time.
    pub fn ts_events(&self) -> String {
        self.name("tsev")
    }

    /// TimeSeries event items, partitioned like the heads.
    pub fn ts_items(&self) -> String {
        self.name("tsit")
    }

    /// The LISTEN/NOTIFY channel of the incarnation's tails, unquoted
    /// (as `pg_notify` takes it).
    pub fn tail_channel(&self) -> String {
        self.name("tail")
    }

    /// The trigger function that notifies [`Self::tail_channel`] of the
    /// events a statement stored (`crate::ts::follow`).
    pub fn tail_function(&self) -> String {
        self.name("tailn")
    }

    /// The partitions of [`Self::ts_events`] (`e`) or [`Self::ts_items`]
    /// (`i`) for `day` (days since the epoch, `0..100_000`): `_e01234`.
    pub fn ts_partition(&self, table: char, day: i64) -> String {
        self.name(&format!("{table}{day:05}"))
    }

    /// The partitions before the first day (`lo`) or from the last
    /// (`hi`): `_elo`, `_ihi`.
    pub fn ts_edge(&self, table: char, edge: &str) -> String {
        self.name(&format!("{table}{edge}"))
    }

    /// Every table of both abstractions, in the order they may be dropped
    /// (a partitioned table goes with its partitions).
    pub fn all_tables(&self) -> Vec<String> {
        let mut all = self.tables().to_vec();
        all.extend([self.ts_events(), self.ts_items()]);
        all
    }

    /// `"schema"."<base>_<suffix>"`.
    pub fn qualified(&self, table: &str) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(table))
    }

    /// An index or constraint name: `<base>_<suffix>` (suffix ≤ 5 bytes).
    pub(crate) fn object(&self, suffix: &str) -> String {
        quote_ident(&self.name(suffix))
    }

    /// The advisory lock key that serialises writes to record `id`
    /// (the parameter of [`super::statements::LOCK`]). A collision only
    /// makes two records wait for each other.
    pub fn record_lock(&self, id: &[u8]) -> i64 {
        // Streamed: the hash of `base ‖ 0x00 ‖ id`, as one buffer would give.
        let mut hasher = XxHash64::with_seed(RECORD_LOCK_SEED);
        hasher.write(self.base.as_bytes());
        hasher.write(&[0]);
        hasher.write(id);
        hasher.finish() as i64
    }
}

impl TableNames {
    /// The advisory lock key that serialises creating and dropping the
    /// TimeSeries partitions of this incarnation.
    pub(crate) fn partition_lock(&self) -> i64 {
        XxHash64::oneshot(PARTITION_LOCK_SEED, self.base.as_bytes()) as i64
    }
}

/// The advisory lock key that serialises provisioning in `schema`, so two
/// gateways never create the registry or drop tables at once.
pub(crate) fn schema_lock(schema: &str) -> i64 {
    XxHash64::oneshot(SCHEMA_LOCK_SEED, schema.as_bytes()) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(name: &str, create_revision: u64) -> Namespace {
        Namespace { name: name.into(), create_revision, spec: Default::default() }
    }

    fn base(name: &str, revision: u64) -> String {
        TableNames::of(&ns(name, revision), "public").expect("valid name").base
    }

    #[test]
    fn names_are_readable_deterministic_and_distinct() {
        let a = base("acme/user-profiles", 7);
        assert!(a.starts_with("kv_acme_user_profiles_"), "{a}");
        assert_eq!(a, base("acme/user-profiles", 7), "deterministic");
        assert_ne!(a, base("acme/user-profiles", 8), "a new incarnation gets new tables");
        assert_ne!(base("a-b/c", 1), base("a/b-c", 1), "names that read alike differ");
    }

    #[test]
    fn every_name_fits_an_identifier() {
        let long = format!("{}/{}", "t".repeat(63), "n".repeat(63));
        let names = TableNames::of(&ns(&long, u64::MAX), "public").expect("valid name");
        for table in names.tables() {
            assert!(table.len() <= MAX_IDENTIFIER_BYTES, "{table} is {} bytes", table.len());
        }
        assert!(names.base.len() + "_itomb".len() <= MAX_IDENTIFIER_BYTES);
        for table in names.all_tables() {
            assert!(table.len() <= MAX_IDENTIFIER_BYTES, "{table} is {} bytes", table.len());
        }
        for partition in [names.ts_partition('e', 99_999), names.ts_edge('i', "hi")] {
            assert!(partition.len() <= MAX_IDENTIFIER_BYTES, "{partition} is {} bytes", partition.len());
        }
        let other = format!("{}/{}", "t".repeat(63), "n".repeat(62));
        assert_ne!(names.base, base(&other, u64::MAX), "names equal after the cut still differ");
    }

    #[test]
    fn names_with_sql_are_refused() {
        for bad in ["acme/x\"; DROP TABLE t; --", "acme/X", "acme", "acme/a b", "a'b/c", "acme/\0"] {
            match TableNames::of(&ns(bad, 1), "public") {
                Err(PostgresError::Invalid { field, .. }) => assert_eq!(field, "namespace"),
                other => panic!("{bad:?}: want Invalid, got {other:?}"),
            }
        }
    }

    #[test]
    fn record_locks_hash_base_nul_and_id() {
        let names = TableNames::from_base("public", "kv_x".into());
        for id in [&b""[..], b"r", b"record-000123"] {
            let mut data = b"kv_x\0".to_vec();
            data.extend_from_slice(id);
            assert_eq!(names.record_lock(id), XxHash64::oneshot(RECORD_LOCK_SEED, &data) as i64);
        }
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("plain"), "\"plain\"");
        assert_eq!(quote_ident("a\"; DROP TABLE t; --"), "\"a\"\"; DROP TABLE t; --\"");
        let names = TableNames::from_base("we\"ird", "kv_x".into());
        assert_eq!(names.qualified(&names.items()), "\"we\"\"ird\".\"kv_x_items\"");
    }
}
