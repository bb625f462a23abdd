//! `prism-loadtest pgbench-script`: a pgbench script that runs the
//! postgres plugin's read or write statement of one record as a single
//! statement — the texts of [`KvStatements`], imported, with their `$n`
//! placeholders turned into pgbench variables — and the `-D` definitions of
//! those variables. What an application would send instead of Prism, for
//! `pgbench -M extended` (or `prepared`), directly or through PgBouncer.
//!
//! - `kv-get`: the read of record `--id` (`get_range`, no end, no cursor:
//!   what a whole-record `GetItems` runs when one statement answers it).
//! - `kv-put`: the last-writer-wins upsert of one item (`--key`, a value of
//!   `--value-size` bytes) into record `--id-base` + `:client_id` (each
//!   pgbench client writes its own record, like one writer per record), its generation a
//!   per-client counter starting at the current time in microseconds, so
//!   every write is newer than the last and wins.
//!
//! pgbench sends variables as untyped text; the server infers each one's
//! type from the statement (`bytea`, `int8`, the arrays), as it would for
//! any driver that does not name types.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use prism_plugin_postgres::kv::statements::READ_BATCH;
use prism_plugin_postgres::{KvStatements, TableNames};

use crate::scenario::{Scenario, value_for};

#[derive(Debug, Clone, Args)]
pub struct PgbenchArgs {
    /// kv-get or kv-put.
    #[arg(long, value_enum)]
    pub scenario: Scenario,
    /// The tables' base name: a namespace's, as its schema's
    /// `prism_kv_namespaces` lists it, or the loadtest's own
    /// (`prism_loadtest`).
    #[arg(long, default_value = crate::pg::TABLES)]
    pub tables: String,
    /// The tables' schema.
    #[arg(long, default_value = crate::pg::SCHEMA)]
    pub schema: String,
    /// kv-get: the record read.
    #[arg(long, default_value = "0")]
    pub id: String,
    /// The item's key.
    #[arg(long, default_value = "")]
    pub key: String,
    /// kv-put: pgbench client N writes record `id_base + N`.
    #[arg(long, default_value_t = 1000)]
    pub id_base: u64,
    /// kv-put: bytes of the value written.
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    /// Where to write the script; the `-D` options are printed on stdout,
    /// one a line.
    #[arg(long)]
    pub out: PathBuf,
}

/// `$n` → `:p<n>`, longest number first, so `$10` is not read as `$1`.
fn with_variables(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push_str(":p");
            while let Some(d) = chars.next_if(char::is_ascii_digit) {
                out.push(d);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A `bytea` as PostgreSQL's hex text input, inside an array literal.
fn bytea_element(bytes: &[u8]) -> String {
    let mut s = String::from("\"\\\\x");
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s.push('"');
    s
}

/// The script and its `-D name=value` definitions.
pub fn script(args: &PgbenchArgs) -> anyhow::Result<(String, Vec<String>)> {
    let sql = KvStatements::new(&TableNames::from_base(&args.schema, args.tables.clone()));
    let now = crate::pg::now_micros();
    match args.scenario {
        Scenario::KvGet => {
            let (text, _) = sql.get_range(false, false);
            let script = format!(
                "-- prism-loadtest pgbench-script kv-get: the postgres plugin's read of one record, one statement\n{};\n",
                with_variables(text)
            );
            let defines = vec![
                format!("p1={}", args.id),
                format!("p2={now}"),
                // The empty start key, as bytea hex (pgbench refuses an
                // empty value).
                "p3=\\x".to_owned(),
                format!("p4={READ_BATCH}"),
            ];
            Ok((script, defines))
        }
        Scenario::KvPut => {
            let value = value_for(&args.id, args.value_size);
            let script = format!(
                "-- prism-loadtest pgbench-script kv-put: the postgres plugin's upsert of one item, one statement\n\
                 \\set p1 :client_id + {}\n\\set p2 :p2 + 1\n{};\n",
                args.id_base,
                with_variables(&sql.upsert)
            );
            let defines = vec![
                format!("p2={now}"),
                format!("p3={{{}}}", bytea_element(args.key.as_bytes())),
                "p4={f}".to_owned(),
                "p5={NULL}".to_owned(),
                format!("p6={{{}}}", bytea_element(&value)),
                "p7={0}".to_owned(),
                format!("p8={{{}}}", value.len()),
            ];
            Ok((script, defines))
        }
        other => anyhow::bail!("pgbench-script makes kv-get and kv-put scripts, not {}", other.name()),
    }
}

/// Writes the script to `--out` and prints the `-D` options.
pub fn run(args: &PgbenchArgs) -> anyhow::Result<()> {
    let (script, defines) = script(args)?;
    std::fs::write(&args.out, script).with_context(|| format!("write {}", args.out.display()))?;
    for define in defines {
        println!("-D{define}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_variables() {
        assert_eq!(with_variables("a = $1 AND b = $10::int8[] AND c = $2"), "a = :p1 AND b = :p10::int8[] AND c = :p2");
        assert_eq!(with_variables("cost $ 5"), "cost $ 5");
    }

    #[test]
    fn bytea_elements_are_hex_in_quotes() {
        assert_eq!(bytea_element(b"ab"), "\"\\\\x6162\"");
        assert_eq!(bytea_element(b""), "\"\\\\x\"");
    }

    #[test]
    fn the_scripts_hold_the_plugins_statements() -> anyhow::Result<()> {
        let args = |scenario| PgbenchArgs {
            scenario,
            tables: "kv_t".into(),
            schema: "public".into(),
            id: "0".into(),
            key: String::new(),
            id_base: 1000,
            value_size: 4,
            out: PathBuf::new(),
        };
        let sql = KvStatements::new(&TableNames::from_base("public", "kv_t".into()));
        let (get, defines) = script(&args(Scenario::KvGet))?;
        assert!(get.contains(&with_variables(sql.get_range(false, false).0)));
        assert_eq!(defines.len(), 4);
        let (put, defines) = script(&args(Scenario::KvPut))?;
        assert!(put.contains(&with_variables(&sql.upsert)));
        assert!(put.contains("\\set p1 :client_id + 1000\n"), "{put}");
        assert!(defines.contains(&"p6={\"\\\\x302e2e2e\"}".to_owned()), "{defines:?}");
        assert!(script(&args(Scenario::TsWrite)).is_err());
        Ok(())
    }
}
