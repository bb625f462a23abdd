//! What commands print: `--output table` (aligned columns for people) or
//! `--output json` (the response message as JSON, see [`crate::json`]).
//! Everything goes through a locked, explicitly flushed stdout so a pipe
//! (`| jq`) sees each line as it is written and a closed pipe is an error
//! rather than a panic.

use std::io::Write;

use prism_proto::capabilities;
use prism_proto::control::{
    Abstraction, AuditEvent, Backend, BackendSetting, Namespace, Tenant, WatchResponse, change, watch_response,
};
use serde_json::Value;

use crate::json::{self, names};

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns.
    #[default]
    Table,
    /// The response message as JSON (one object per line for `watch`).
    Json,
}

/// Writes `text` to stdout and flushes it.
pub fn print(text: &str) -> Result<(), StdoutError> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes()).and_then(|()| out.flush()).map_err(StdoutError)
}

/// Writing a command's result to stdout failed. Its own type, so that a
/// closed stdout (`| head`) is told apart from a broken connection to a
/// server, whose error may also say "broken pipe".
#[derive(Debug)]
pub struct StdoutError(pub std::io::Error);

impl StdoutError {
    /// Whether the reader of stdout went away.
    pub fn reader_gone(&self) -> bool {
        self.0.kind() == std::io::ErrorKind::BrokenPipe
    }
}

impl std::fmt::Display for StdoutError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot write to stdout: {}", self.0)
    }
}

impl std::error::Error for StdoutError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// Pretty-printed JSON and a newline.
pub fn print_json(value: &Value) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    Ok(print(&text)?)
}

/// Compact JSON on one line (for streams).
pub fn print_json_line(value: &Value) -> anyhow::Result<()> {
    let mut text = serde_json::to_string(value)?;
    text.push('\n');
    Ok(print(&text)?)
}

/// A table of aligned, left-justified columns.
#[derive(Debug, Clone, Default)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

/// A cell as one line: control characters (newlines in a reason) become
/// spaces, and an empty value shows as `-` so columns stay readable.
fn cell(value: &str) -> String {
    if value.is_empty() {
        return "-".to_owned();
    }
    value.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Self { header: header.iter().map(|h| (*h).to_owned()).collect(), rows: Vec::new() }
    }

    pub fn push(&mut self, row: Vec<String>) {
        self.rows.push(row.iter().map(|c| cell(c)).collect());
    }

    /// The table as text, one line per row, header first. The last column
    /// is not padded (no trailing spaces).
    pub fn render(&self) -> String {
        let columns = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, c) in row.iter().enumerate().take(columns) {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for (i, c) in row.iter().enumerate().take(columns) {
                if i + 1 == columns {
                    line.push_str(c);
                } else {
                    let pad = widths[i] - c.chars().count();
                    line.push_str(c);
                    line.extend(std::iter::repeat_n(' ', pad + 2));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

fn limit(value: Option<i64>) -> String {
    match value {
        None => String::new(),
        Some(prism_proto::quotas::UNLIMITED) => "unlimited".to_owned(),
        Some(v) => v.to_string(),
    }
}

fn abstraction_name(v: i32) -> String {
    Abstraction::try_from(v).map_or_else(|_| names::abstraction(v), |a| capabilities::abstraction_name(a).to_owned())
}

fn backend_name(v: i32) -> String {
    Backend::try_from(v).map_or_else(|_| names::backend(v), |b| capabilities::backend_name(b).to_owned())
}

pub fn tenants_table(tenants: &[Tenant]) -> Table {
    let mut t = Table::new(&["ID", "STATE", "PROFILE", "NAMESPACES-LIMIT", "REVISION", "DISPLAY-NAME", "REASON"]);
    for tenant in tenants {
        let quotas = tenant.quotas.unwrap_or_default();
        t.push(vec![
            tenant.id.clone(),
            names::tenant_state(tenant.state),
            names::quota_profile(quotas.profile),
            limit(quotas.max_namespaces),
            tenant.revision.to_string(),
            tenant.display_name.clone(),
            tenant.state_reason.clone(),
        ]);
    }
    t
}

pub fn namespaces_table(namespaces: &[Namespace]) -> Table {
    let mut t = Table::new(&["NAME", "ABSTRACTION", "BACKEND", "SHARD", "STATUS", "REVISION", "REASON"]);
    for ns in namespaces {
        let spec = ns.spec.clone().unwrap_or_default();
        // A dedicated shard says so where the namespace is: one word, so
        // the columns still split on spaces.
        let dedicated = spec.placement.as_deref().is_some_and(|p| p.dedicated && p.pinned_shard == ns.shard_id);
        t.push(vec![
            ns.name.clone(),
            abstraction_name(spec.abstraction),
            backend_name(spec.backend),
            if dedicated { format!("{}(dedicated)", ns.shard_id) } else { ns.shard_id.clone() },
            names::namespace_status(ns.status),
            ns.revision.to_string(),
            ns.status_reason.clone(),
        ]);
    }
    t
}

/// What a namespace's backend holds of its spec
/// (`Namespace.backend_settings`).
pub fn backend_settings_table(settings: &[BackendSetting]) -> Table {
    let mut t = Table::new(&["BACKEND SETTING", "VALUE", "DETAIL"]);
    for s in settings {
        t.push(vec![s.name.clone(), s.value.clone(), s.detail.clone()]);
    }
    t
}

pub fn audit_table(events: &[AuditEvent]) -> Table {
    let mut t = Table::new(&["SEQ", "TIME", "PRINCIPAL", "CLIENT", "ACTION", "TARGET", "RESULT", "REVISION", "DETAIL"]);
    for e in events {
        t.push(vec![
            e.sequence.to_string(),
            e.time.as_ref().and_then(|ts| json::rfc3339(ts, false)).unwrap_or_default(),
            e.principal.clone(),
            if e.client_address.is_empty() { "-".to_owned() } else { e.client_address.clone() },
            e.action.clone(),
            e.target.clone(),
            e.result.clone(),
            if e.revision == 0 { String::new() } else { e.revision.to_string() },
            e.detail.clone(),
        ]);
    }
    t
}

/// One Watch message for people: a heading line, then one indented line
/// per tenant, namespace or shard it carries.
pub fn watch_text(w: &WatchResponse) -> String {
    let mut out = String::new();
    let mut line = |text: String| {
        out.push_str(&text);
        out.push('\n');
    };
    let tenant = |t: &Tenant| format!("  tenant {} {} r{}", t.id, names::tenant_state(t.state), t.revision);
    let namespace = |n: &Namespace| {
        let shard = if n.shard_id.is_empty() { "-" } else { &n.shard_id };
        format!("  namespace {} {} shard={} r{}", n.name, names::namespace_status(n.status), shard, n.revision)
    };
    let shard = |s: &prism_proto::control::Shard| {
        let endpoints: Vec<&str> = s.instances.iter().map(|i| i.endpoint.as_str()).collect();
        format!("  shard {} [{}]", s.shard_id, endpoints.join(", "))
    };
    match &w.event {
        None => line("(empty message)".to_owned()),
        Some(watch_response::Event::Snapshot(s)) => {
            let last = if s.last { " (last chunk)" } else { "" };
            line(format!(
                "snapshot at revision {}: {} tenants, {} namespaces, {} shards{last}",
                s.revision,
                s.tenants.len(),
                s.namespaces.len(),
                s.shards.len()
            ));
            s.tenants.iter().map(tenant).for_each(&mut line);
            s.namespaces.iter().map(namespace).for_each(&mut line);
            s.shards.iter().map(shard).for_each(&mut line);
        }
        Some(watch_response::Event::Delta(d)) => {
            let at = d.commit_time.as_ref().and_then(|t| json::rfc3339(t, false)).unwrap_or_default();
            line(format!("revision {} {at}", d.revision).trim_end().to_owned());
            for c in &d.changes {
                line(match &c.change {
                    None => "  (empty change)".to_owned(),
                    Some(change::Change::Tenant(t)) => tenant(t),
                    Some(change::Change::Namespace(n)) => namespace(n),
                    Some(change::Change::Shard(s)) => shard(s),
                    Some(change::Change::ShardRemoved(id)) => format!("  shard {id} removed"),
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_without_trailing_spaces() {
        let mut t = Table::new(&["NAME", "STATUS", "REASON"]);
        t.push(vec!["acme/profiles".into(), "ACTIVE".into(), String::new()]);
        t.push(vec!["a/b".into(), "DEGRADED".into(), "no\nroute".into()]);
        assert_eq!(
            t.render(),
            "NAME           STATUS    REASON\n\
             acme/profiles  ACTIVE    -\n\
             a/b            DEGRADED  no route\n"
        );
    }
}
