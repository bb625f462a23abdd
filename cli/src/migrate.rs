//! `prism namespace migrate …`: start a live migration of a namespace to
//! another backend or shard, follow it (`status --watch`: step, records
//! and bytes copied, rate, ETA, shadow-read mismatches, a progress bar on
//! a terminal) and abort it. ARCHITECTURE.md, "The life of a migration".

use std::io::IsTerminal;
use std::time::Duration;

use clap::{Args, Subcommand};
use prism_client::ControlPlaneClient;
use prism_proto::control::{
    AbortMigrationRequest, Backend, GetMigrationRequest, GetMigrationResponse, GetNamespaceRequest, GetUsageRequest,
    MigrateNamespaceRequest, Migration, MigrationStep, MigrationTarget, NamespaceSpec,
};
use serde_json::{Value, json};
use tonic::Code;

use crate::Global;
use crate::error::usage;
use crate::json::{self, names};
use crate::output::{self, Format};
use crate::spec_flags::{BackendArg, BackendArgs};

/// How often `--watch` reads the migration.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// `prism namespace migrate NAMESPACE --backend …|--pin …`, or
/// `prism namespace migrate status|abort NAMESPACE`.
#[derive(Debug, Clone, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct MigrateArgs {
    #[command(subcommand)]
    pub command: Option<MigrateCommand>,
    /// tenant/name
    #[arg(required = true)]
    pub name: Option<String>,
    /// The target's backend (default: the namespace's own, with new settings)
    #[arg(long, value_enum)]
    pub backend: Option<BackendArg>,
    /// The target backend's settings (`--dsn`, `--schema`, …), as for `create`
    #[command(flatten)]
    pub backend_config: BackendArgs,
    /// Move to this shard (default: where the namespace is placed now)
    #[arg(long = "pin", value_name = "SHARD")]
    pub pinned_shard: Option<String>,
    /// Start only if the namespace is at this revision
    #[arg(long, value_name = "N")]
    pub expected_revision: Option<u64>,
    /// Follow the migration until it ends (as `status --watch`)
    #[arg(long)]
    pub watch: bool,
}

#[derive(Debug, Clone, Subcommand)]
pub enum MigrateCommand {
    /// Show a namespace's migration: step, progress, rate, ETA, shadow reads
    Status {
        /// tenant/name
        name: String,
        /// Follow it until it ends (a progress bar on a terminal)
        #[arg(long)]
        watch: bool,
    },
    /// Abort a namespace's migration: the source stays authoritative, the target is removed
    Abort {
        /// tenant/name
        name: String,
        /// Abort only if the namespace is at this revision
        #[arg(long, value_name = "N")]
        expected_revision: Option<u64>,
        /// End a migration stuck removing what it leaves (ABORTING: its target; CLEANUP: its source) now, leaving those resources for you to remove
        #[arg(long)]
        force: bool,
    },
}

pub async fn run(global: &Global, args: MigrateArgs) -> anyhow::Result<()> {
    match args.command.clone() {
        Some(MigrateCommand::Status { name, watch: true }) => follow(global, &name).await,
        Some(MigrateCommand::Status { name, watch: false }) => {
            let mut client = global.connect().await?;
            let Some(m) = migration(&mut client, &name).await? else {
                return ended(global.output, &mut client, &name, None).await;
            };
            let storage = stored_bytes(&mut client, &name).await;
            let of = Of::read(&mut client, &name).await;
            show(global.output, &m, storage, &of)
        }
        Some(MigrateCommand::Abort { name, expected_revision, force }) => {
            let mut client = global.connect().await?;
            // A forced end at CLEANUP leaves the namespace on its target.
            let before = match force {
                true => migration(&mut client, &name).await?.and_then(|m| m.migration).map(|m| m.step),
                false => None,
            };
            let req =
                AbortMigrationRequest { name: name.clone(), expected_revision: expected_revision.unwrap_or(0), force };
            client.abort_migration(req).await?;
            let last = match before {
                Some(step) if step == MigrationStep::Cleanup as i32 => SOURCE_LEFT,
                _ => MigrationStep::Aborting as i32,
            };
            match migration(&mut client, &name).await? {
                Some(m) => show(global.output, &m, None, &Of::read(&mut client, &name).await),
                None => ended(global.output, &mut client, &name, Some(last)).await,
            }
        }
        None => start(global, args).await,
    }
}

async fn start(global: &Global, args: MigrateArgs) -> anyhow::Result<()> {
    let name = args.name.clone().ok_or_else(|| usage("the namespace (tenant/name) is required"))?;
    let given = args.backend_config != BackendArgs::default();
    if args.backend.is_none() && !given && args.pinned_shard.is_none() {
        return Err(usage("nothing to migrate to: give --backend and its settings, --pin, or both"));
    }
    let mut client = global.connect().await?;
    let mut target = MigrationTarget {
        backend: args.backend.map_or(Backend::Unspecified, Backend::from) as i32,
        pinned_shard: args.pinned_shard.clone().unwrap_or_default(),
        ..MigrationTarget::default()
    };
    if given {
        // The settings are checked against the target's backend: the one
        // given, or the namespace's own.
        let backend = match args.backend {
            Some(b) => Backend::from(b) as i32,
            None => {
                let ns = client.get_namespace(GetNamespaceRequest { name: name.clone() }).await?.into_inner();
                ns.spec.map_or(0, |s| s.backend)
            }
        };
        let mut spec = NamespaceSpec { backend, ..NamespaceSpec::default() };
        args.backend_config.apply(&mut spec)?;
        target.backend_config = spec.backend_config.map(|c| *c);
    }
    let req = MigrateNamespaceRequest {
        name: name.clone(),
        target: Some(target),
        expected_revision: args.expected_revision.unwrap_or(0),
    };
    client.migrate_namespace(req).await?;
    if args.watch {
        return follow(global, &name).await;
    }
    match migration(&mut client, &name).await? {
        Some(m) => show(global.output, &m, None, &Of::read(&mut client, &name).await),
        // Already over (it cannot be, this fast, but say what is).
        None => ended(global.output, &mut client, &name, Some(MigrationStep::Cleanup as i32)).await,
    }
}

/// The namespace's running migration; `None` when it has none (the
/// namespace exists: an unknown one is an error).
async fn migration(client: &mut ControlPlaneClient, name: &str) -> anyhow::Result<Option<GetMigrationResponse>> {
    match client.get_migration(GetMigrationRequest { name: name.to_owned() }).await {
        Ok(m) => Ok(Some(m.into_inner()).filter(|m| m.migration.is_some())),
        Err(status) if status.code() == Code::NotFound => {
            // Which is missing: the namespace (an error) or its migration.
            client.get_namespace(GetNamespaceRequest { name: name.to_owned() }).await?;
            Ok(None)
        }
        Err(status) => Err(status.into()),
    }
}

/// The namespace's stored bytes as its gateways last reported them (the
/// ETA's whole), if any.
async fn stored_bytes(client: &mut ControlPlaneClient, name: &str) -> Option<u64> {
    let usage = client.get_usage(GetUsageRequest { target: name.to_owned() }).await.ok()?.into_inner();
    let bytes = usage.namespaces.iter().find(|n| n.namespace == name)?.storage_bytes;
    u64::try_from(bytes).ok().filter(|b| *b > 0)
}

/// What a migration's counts are of — records (KeyValue) or events
/// (TimeSeries) — and the namespace's backend, which a target that only
/// changes the shard keeps: read once from the namespace.
#[derive(Debug, Clone, Copy, Default)]
struct Of {
    time_series: bool,
    /// `Backend` (0: not known).
    backend: i32,
}

impl Of {
    /// Of namespace `name`; the default (KeyValue, backend unknown) when
    /// it cannot be read (the status still shows).
    async fn read(client: &mut ControlPlaneClient, name: &str) -> Self {
        let Ok(ns) = client.get_namespace(GetNamespaceRequest { name: name.to_owned() }).await else {
            return Self::default();
        };
        let spec = ns.into_inner().spec.unwrap_or_default();
        Self {
            time_series: spec.abstraction == prism_proto::control::Abstraction::TimeSeries as i32,
            backend: spec.backend,
        }
    }

    /// What is copied and verified.
    fn unit(&self) -> &'static str {
        if self.time_series { "events" } else { "records" }
    }

    /// What differs when a comparison finds a difference: records, or
    /// hours of events (a TimeSeries comparison goes by time range).
    fn differing(&self) -> &'static str {
        if self.time_series { "hours" } else { "records" }
    }
}

/// Prints one reading of a migration.
fn show(format: Format, m: &GetMigrationResponse, storage: Option<u64>, of: &Of) -> anyhow::Result<()> {
    match format {
        Format::Json => output::print_json(&to_json(m, storage)),
        Format::Table => Ok(output::print(&text(m, storage, of))?),
    }
}

/// Reads the migration every [`WATCH_INTERVAL`] until it ends: on a
/// terminal one line redrawn in place (a progress bar during BACKFILL),
/// elsewhere a line (or a JSON object) whenever it changed. Ends with how
/// it ended: done (the namespace is on the target: CLEANUP, whose
/// removal of the source after the grace period is not waited for) or
/// aborted.
async fn follow(global: &Global, name: &str) -> anyhow::Result<()> {
    let mut client = global.connect().await?;
    let redraw = global.output == Format::Table && std::io::stdout().is_terminal();
    let stop = crate::shutdown_signal();
    tokio::pin!(stop);
    let mut last_step: Option<i32> = None;
    let mut last_line = String::new();
    let of = Of::read(&mut client, name).await;
    loop {
        let read = match migration(&mut client, name).await {
            // A control plane restarting is not the migration failing.
            Err(e) if e.downcast_ref::<tonic::Status>().is_some_and(|s| s.code() == Code::Unavailable) => {
                tracing::warn!(error = %e, "control plane unavailable while watching, retrying");
                tokio::time::sleep(WATCH_INTERVAL).await;
                continue;
            }
            read => read?,
        };
        let Some((m, migration)) = read.as_ref().and_then(|m| Some((m, m.migration.as_ref()?))) else {
            if redraw && !last_line.is_empty() {
                output::print("\n")?;
            }
            return ended(global.output, &mut client, name, last_step).await;
        };
        last_step = Some(migration.step);
        // From CLEANUP on the namespace is on its target: what is left is
        // removing the source after the grace period.
        if migration.step == MigrationStep::Cleanup as i32 {
            if redraw && !last_line.is_empty() {
                output::print("\n")?;
            }
            return ended(global.output, &mut client, name, last_step).await;
        }
        let storage =
            if migration.step == MigrationStep::Backfill as i32 { stored_bytes(&mut client, name).await } else { None };
        match global.output {
            Format::Json => {
                let value = to_json(m, storage);
                let line = serde_json::to_string(&value)?;
                if line != last_line {
                    output::print_json_line(&value)?;
                    last_line = line;
                }
            }
            Format::Table => {
                let line = one_line(migration, storage, &of);
                if redraw {
                    output::print(&format!("\r\x1b[2K{line}"))?;
                } else if line != last_line {
                    output::print(&format!("{line}\n"))?;
                }
                last_line = line;
            }
        }
        tokio::select! {
            () = &mut stop => {
                if redraw {
                    output::print("\n")?;
                }
                return Ok(());
            }
            () = tokio::time::sleep(WATCH_INTERVAL) => {}
        }
    }
}

/// How a followed migration ended, from the last step seen: after
/// ABORTING the source serves; otherwise the namespace is where it went.
/// `ended`'s last step for a migration force-ended at CLEANUP: done, its
/// source left in place.
const SOURCE_LEFT: i32 = -1;

async fn ended(
    format: Format,
    client: &mut ControlPlaneClient,
    name: &str,
    last_step: Option<i32>,
) -> anyhow::Result<()> {
    let ns = client.get_namespace(GetNamespaceRequest { name: name.to_owned() }).await?.into_inner();
    let spec = ns.spec.clone().unwrap_or_default();
    // At CLEANUP: when the source goes.
    let source_removed = ns.migration.as_deref().and_then(|m| m.cleanup_after.as_ref()).map(|t| time(Some(t)));
    let outcome = match last_step {
        None => "none",
        Some(s) if s == MigrationStep::Aborting as i32 => "aborted",
        Some(SOURCE_LEFT) => "done_source_left",
        Some(_) => "done",
    };
    match format {
        Format::Json => output::print_json_line(&json!({
            "name": name,
            "migration": ns.migration.as_deref().map_or(Value::Null, json::migration),
            "outcome": outcome,
            "source_removed_after": source_removed,
            "namespace": json::namespace(&ns),
        })),
        Format::Table => {
            let whereabouts =
                format!("{} on {}, revision {}", names::backend(spec.backend).to_lowercase(), ns.shard_id, ns.revision);
            let line = match outcome {
                "none" => format!("{name}: no migration running; it is {whereabouts}\n"),
                "aborted" => format!("{name}: migration aborted; it stays {whereabouts}\n"),
                "done_source_left" => format!(
                    "{name}: migration ended; it is now {whereabouts}; its source was left in place for you to \
                     remove (the audit log names it)\n"
                ),
                _ => match &source_removed {
                    Some(after) => format!(
                        "{name}: migration done; it is now {whereabouts}; its source is removed after {after}\n"
                    ),
                    None => format!("{name}: migration done; it is now {whereabouts}\n"),
                },
            };
            Ok(output::print(&line)?)
        }
    }
}

/// Records copied per second during BACKFILL (over the step so far), if
/// the step has run long enough to say.
fn rate(m: &Migration) -> Option<(f64, f64)> {
    let p = m.progress.as_ref()?;
    let since = std::time::SystemTime::try_from(m.step_time?).ok()?;
    let until = std::time::SystemTime::try_from(p.update_time?).ok()?;
    let secs = until.duration_since(since).ok()?.as_secs_f64();
    (secs >= 0.5).then(|| (p.records_copied as f64 / secs, p.bytes_copied as f64 / secs))
}

/// The backfill's fraction done and its ETA, against the namespace's
/// stored bytes: an estimate (versions and the backend's own accounting
/// differ), capped below 100 % until the backfill reports its end.
fn eta(m: &Migration, storage: Option<u64>) -> Option<(f64, Option<Duration>)> {
    let p = m.progress.as_ref()?;
    let total = storage? as f64;
    let done = (p.bytes_copied as f64 / total).min(0.99);
    let left = (total - p.bytes_copied as f64).max(0.0);
    let eta = rate(m).and_then(|(_, bytes)| (bytes > 0.0).then(|| Duration::from_secs_f64(left / bytes)));
    Some((done, eta))
}

fn bar(done: f64) -> String {
    const WIDTH: usize = 24;
    let filled = ((done * WIDTH as f64).round() as usize).min(WIDTH);
    format!("[{}{}] {:>3.0}%", "#".repeat(filled), "-".repeat(WIDTH - filled), done * 100.0)
}

/// One line: the step, then what it has done.
fn one_line(m: &Migration, storage: Option<u64>, of: &Of) -> String {
    let p = m.progress.clone().unwrap_or_default();
    let mut line = format!("{:<10}", names::migration_step(m.step));
    if m.step == MigrationStep::Backfill as i32 {
        if let Some((done, eta)) = eta(m, storage) {
            line.push_str(&format!(" {}", bar(done)));
            if let Some(eta) = eta {
                line.push_str(&format!(" ETA {}", humantime::format_duration(Duration::from_secs(eta.as_secs()))));
            }
        }
        line.push_str(&format!(" {} {}, {} copied", p.records_copied, of.unit(), bytes(p.bytes_copied)));
        if let Some((records, _)) = rate(m) {
            line.push_str(&format!(" ({records:.0} {}/s)", of.unit()));
        }
    }
    if m.step == MigrationStep::Verify as i32 || p.shadow_reads > 0 {
        line.push_str(&format!(" shadow reads {} ({} mismatched)", p.shadow_reads, p.shadow_mismatches));
    }
    if p.records_verified > 0 || p.records_differing > 0 {
        line.push_str(&format!(" {} {} verified", p.records_verified, of.unit()));
        line.push_str(&format!(" ({} {} differ)", p.records_differing, of.differing()));
    }
    if !m.reason.is_empty() {
        line.push_str(&format!(" — {}", m.reason.replace(['\n', '\r'], " ")));
    }
    line
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[unit]) }
}

fn time(ts: Option<&prost_types::Timestamp>) -> String {
    ts.and_then(|t| json::rfc3339(t, false)).unwrap_or_else(|| "-".to_owned())
}

/// The status as text, a field per line.
fn text(r: &GetMigrationResponse, storage: Option<u64>, of: &Of) -> String {
    let Some(m) = r.migration.as_ref() else {
        return format!("{}: no migration running (revision {})\n", r.name, r.revision);
    };
    let target = m.target.clone().unwrap_or_default();
    let p = m.progress.clone().unwrap_or_default();
    // A target that only changes the shard keeps the namespace's backend.
    let backend = match (target.backend, of.backend) {
        (0, 0) => "the namespace's own backend".to_owned(),
        (0, own) => format!("{} (the namespace's own backend)", names::backend(own).to_lowercase()),
        (backend, _) => names::backend(backend).to_lowercase(),
    };
    let mut rows = vec![
        ("NAMESPACE", r.name.clone()),
        ("MIGRATION", m.id.to_string()),
        ("STEP", format!("{} since {}", names::migration_step(m.step), time(m.step_time.as_ref()))),
        ("TARGET", format!("{backend} on {}", m.target_shard_id)),
        ("STARTED", format!("{} by {}", time(m.start_time.as_ref()), m.principal)),
        ("COPIED", format!("{} {}, {}", p.records_copied, of.unit(), bytes(p.bytes_copied))),
    ];
    if !m.runner_instance_id.is_empty() {
        rows.push(("RUNNER", format!("instance {} copies and compares", m.runner_instance_id)));
    }
    if let Some((records, bytes_per_s)) = rate(m).filter(|_| m.step == MigrationStep::Backfill as i32) {
        rows.push(("RATE", format!("{records:.0} {}/s, {}/s", of.unit(), bytes(bytes_per_s as u64))));
    }
    if let Some((done, eta)) = eta(m, storage).filter(|_| m.step == MigrationStep::Backfill as i32) {
        let eta =
            eta.map_or("-".to_owned(), |d| humantime::format_duration(Duration::from_secs(d.as_secs())).to_string());
        rows.push(("PROGRESS", format!("{} ETA {eta} (of {} stored)", bar(done), bytes(storage.unwrap_or(0)))));
    }
    rows.push(("SHADOW", format!("{} reads, {} mismatched", p.shadow_reads, p.shadow_mismatches)));
    rows.push((
        "VERIFIED",
        format!("{} {}, {} {} differ", p.records_verified, of.unit(), p.records_differing, of.differing()),
    ));
    if let Some(after) = m.cleanup_after.as_ref() {
        rows.push(("CLEANUP", format!("the source is removed after {}", time(Some(after)))));
    }
    rows.push(("REASON", if m.reason.is_empty() { "-".to_owned() } else { m.reason.clone() }));
    rows.push(("REVISION", r.revision.to_string()));
    let mut out = String::new();
    for (k, v) in rows {
        out.push_str(&format!("{k:<10} {}\n", v.replace(['\n', '\r'], " ")));
    }
    out
}

/// The status as JSON: the migration's fields, plus the rate and ETA.
fn to_json(r: &GetMigrationResponse, storage: Option<u64>) -> Value {
    let Some(m) = r.migration.as_ref() else {
        return json!({ "name": r.name, "revision": r.revision, "migration": Value::Null });
    };
    let rate = rate(m);
    json!({
        "name": r.name,
        "revision": r.revision,
        "migration": json::migration(m),
        "records_per_second": rate.map(|(r, _)| r),
        "bytes_per_second": rate.map(|(_, b)| b),
        "stored_bytes": storage,
        "eta_seconds": eta(m, storage).and_then(|(_, e)| e).map(|d| d.as_secs()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use prism_proto::control::MigrationProgress;

    fn at(secs: i64) -> prost_types::Timestamp {
        prost_types::Timestamp { seconds: 1_700_000_000 + secs, nanos: 0 }
    }

    #[test]
    fn rate_and_eta_come_from_the_step_so_far_and_the_stored_bytes() {
        let m = Migration {
            step: MigrationStep::Backfill as i32,
            step_time: Some(at(0)),
            progress: Some(MigrationProgress {
                records_copied: 1_000,
                bytes_copied: 40_000,
                update_time: Some(at(10)),
                ..MigrationProgress::default()
            }),
            ..Migration::default()
        };
        assert_eq!(rate(&m), Some((100.0, 4_000.0)));
        let (done, left) = eta(&m, Some(100_000)).expect("an estimate");
        assert!((done - 0.4).abs() < 1e-9);
        assert_eq!(left, Some(Duration::from_secs(15)));
        // Copied more than was reported stored: not done until it says so.
        assert_eq!(eta(&m, Some(10_000)).map(|(d, _)| d), Some(0.99));
        assert_eq!(eta(&m, None), None);
        let line = one_line(&m, Some(100_000), &Of::default());
        assert!(line.starts_with("BACKFILL"), "{line}");
        // Past VERIFY without shadow reads: no stray separator.
        let verified = Migration {
            step: MigrationStep::Cutover as i32,
            progress: Some(MigrationProgress { records_verified: 50, ..MigrationProgress::default() }),
            ..Migration::default()
        };
        assert_eq!(one_line(&verified, None, &Of::default()), "CUTOVER    50 records verified (0 records differ)");
        let events = Of { time_series: true, backend: Backend::Kafka as i32 };
        assert_eq!(one_line(&verified, None, &events), "CUTOVER    50 events verified (0 hours differ)");
        assert!(line.contains("40%") && line.contains("ETA 15s") && line.contains("100 records/s"), "{line}");
    }

    #[test]
    fn no_migration_reads_as_such() {
        let r = GetMigrationResponse { name: "acme/a".into(), revision: 7, migration: None };
        assert_eq!(text(&r, None, &Of::default()), "acme/a: no migration running (revision 7)\n");
        assert_eq!(to_json(&r, None)["migration"], Value::Null);
    }
}
