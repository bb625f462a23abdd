//! This gateway's part of the KeyValue migrations it takes part in
//! (ARCHITECTURE.md, "The life of a migration"), each step reported to
//! the control plane, which advances the migration:
//!
//! - `PREPARE`, on the target's shard: provisions the target (the
//!   migration's incarnation of the namespace on the target's backend);
//! - `DUAL_WRITE`, on every instance of the source's shard: the router
//!   dual-writes from the revision this instance applied; once every
//!   request admitted before it has ended (at most the request timeout),
//!   no write can land in the source alone any more, and it reports;
//! - `BACKFILL`, on the source's holders: copies the source into the
//!   target page by page from the recorded cursor
//!   ([`crate::migration::backfill_page`]), reporting the cursor as it
//!   goes, then the end;
//! - `VERIFY`, on every instance of the source's shard: the router sends
//!   a sampled fraction of reads to both sides for the migration's window
//!   ([`crate::migration::shadow_read`]); then the source's holders also
//!   compare both sides item by item ([`crate::migration::compare`]),
//!   comparing again later while any record differs, and each instance reports
//!   its shadow reads, again after another window while any differed;
//! - `CUTOVER`, on every instance of the source's shard: the router reads
//!   the target and writes it first from the revision this instance
//!   applied; once every request admitted before it (which may read the
//!   source) has ended, it reports;
//! - `CLEANUP`, on the source's holder: once the recorded
//!   `cleanup_after` has passed (and at least the request timeout since
//!   this instance saw the step: an instance still at CUTOVER writes the
//!   source), removes the source's incarnation and reports;
//! - `ABORTING`, on the target's shard: once the writes admitted before
//!   the abort have ended (at most the request timeout; they may still
//!   be writing the target), removes the target and reports.
//!
//! One task does it all, one step at a time: a long backfill holds back
//! the other migrations' steps on this instance until it ends.
//!
//! Targets: a backend shared by the shard's instances (postgres), or one
//! instance's disk (embedded, `Migration.target_owner_store_id`: that
//! instance provisions and removes it, and the source's holders reach it
//! through it, `crate::peer`), whatever the source's backend (embedded →
//! postgres or → embedded on another shard, postgres → postgres in
//! another database or schema, or the same one). The target may be in
//! the source's very store: it is a newer incarnation of the name,
//! provisioned with the source's named live (`Plugin::provision_beside`),
//! so the plugin removes nothing of the source.
//!
//! Nothing is kept but in memory of this task, keyed by the migration's
//! id and step: a restarted gateway does its part again (provisioning,
//! restoring and reporting are idempotent; the backfill resumes from the
//! recorded cursor).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use prism_plugin_api::kv::{PageLimits, VersionCursor};
use prism_proto::control::{Abstraction, Backend, Migration, MigrationProgress, MigrationStep, ReportMigrationRequest};
use tokio::sync::watch;
use tokio::time::Instant;

use super::ControlPlane;
use super::registration::Registration;
use crate::migration::{backfill_page, compare, target_namespace};
use crate::plugins::Plugins;
use crate::snapshot::{Metadata, NamespaceEntry};

/// The feature a gateway registers when it takes part in KeyValue
/// migrations (`prism_control_plane::migration::MIGRATE_KEY_VALUE`: the
/// gateway does not depend on the control plane's crate).
pub const MIGRATE_KEY_VALUE: &str = "migrate-key-value";

/// The feature a gateway registers when it also holds migration targets
/// on its own disk (embedded), reached by the source's holders through
/// it (`crate::peer`; `prism_control_plane::migration::MIGRATE_TO_EMBEDDED`).
pub const MIGRATE_TO_EMBEDDED: &str = "migrate-key-value-to-embedded";

/// The feature a gateway registers when it also takes part in TimeSeries
/// migrations (`prism_control_plane::migration::MIGRATE_TIME_SERIES`).
pub const MIGRATE_TIME_SERIES: &str = "migrate-time-series";

/// How often the task looks for migration work.
const TICK: Duration = Duration::from_millis(200);
/// How long a failed step waits before it is tried again, the first
/// time; each next failure of the same step doubles it, up to
/// [`MAX_RETRY`] ([`retry_after`]).
const RETRY: Duration = Duration::from_secs(2);
const MAX_RETRY: Duration = Duration::from_secs(30);
/// One page of the backfill and of the digest.
const PAGE: PageLimits = PageLimits::new(256 << 10, Some(512));
/// The longest reason the control plane records in a migration
/// (`prism_control_plane::migration`'s limit).
const MAX_REASON_BYTES: usize = 1024;
/// How often an instance reports again a step every instance of its
/// shard must reach, while the migration waits there.
const REPORT_AGAIN: Duration = Duration::from_secs(10);
/// The backfill reports its cursor at most this often: each report is a
/// commit every watcher receives.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// What the migration task uses.
#[derive(Debug)]
pub struct Migrating {
    pub link: Arc<ControlPlane>,
    pub metadata: Arc<Metadata>,
    pub shard_id: String,
    pub store_id: Arc<str>,
    pub plugins: Plugins,
    pub registration: Arc<Registration>,
    /// `request_timeout_ms`: how long requests admitted before DUAL_WRITE
    /// may still run.
    pub request_timeout: Duration,
    /// `migration_backfill_parallelism`: batches of a page restored at
    /// once.
    pub backfill_parallelism: usize,
    /// `migration_backfill_records_per_second`: the most records (or
    /// events) copied a second (0: no limit).
    pub backfill_rate: u64,
    /// The `WriteEventRecords` buffer: DUAL_WRITE and CUTOVER also wait
    /// for the write it had under way when they were applied.
    pub buffer: Arc<crate::buffer::WriteBuffer>,
    /// Where copies, failures and comparisons are counted.
    pub metrics: Arc<crate::metrics::GatewayMetrics>,
    /// The failure last reported per (namespace, migration, step): a step
    /// that keeps failing the same way (retried every [`RETRY`]) is not
    /// reported again, as each report is a commit every watcher receives.
    pub failures: std::sync::Mutex<HashMap<(String, u64, i32), String>>,
}

/// What became of this instance's part of a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// Done and reported.
    Done,
    /// Not yet: try again at the next tick.
    Waiting,
    /// Reported, but not done: do it again from the step's start (a
    /// VERIFY window whose shadow reads differed).
    Again,
}

/// Where this instance is with one step of one migration.
#[derive(Debug, Clone, Copy)]
enum Progress {
    /// First seen then (DUAL_WRITE drains from there).
    Seen(Instant),
    /// Failed this many times in a row; try again from then.
    Retry(Instant, u32),
    /// Reported: nothing more to do at this step.
    Done,
}

pub async fn run(parts: Migrating, mut shutdown: watch::Receiver<bool>) {
    let mut steps: HashMap<(String, u64, i32), Progress> = HashMap::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        let Some(instance_id) = parts.registration.instance_id() else { continue };
        let migrating: Vec<Arc<NamespaceEntry>> =
            parts.metadata.load().namespaces.values().filter(|e| e.migration.is_some()).cloned().collect();
        // Forget the steps no migration is at any more.
        let current = |(name, id, step): &(String, u64, i32)| {
            migrating
                .iter()
                .any(|e| e.ns.name == *name && e.migration.as_deref().is_some_and(|m| m.id == *id && m.step == *step))
        };
        steps.retain(|key, _| current(key));
        parts.failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner).retain(|key, _| current(key));
        for entry in migrating {
            let Some(migration) = entry.migration.as_deref() else { continue };
            let key = (entry.ns.name.clone(), migration.id, migration.step);
            let now = Instant::now();
            let progress = *steps.entry(key.clone()).or_insert(Progress::Seen(now));
            match progress {
                Progress::Done => continue,
                Progress::Retry(at, _) if at > now => continue,
                _ => {}
            }
            let outcome = tokio::select! {
                outcome = parts.step(&entry, migration, &instance_id, progress) => outcome,
                _ = shutdown.wait_for(|stop| *stop) => return,
            };
            match outcome {
                // A step every instance of the shard must reach is
                // reported again while the migration waits at it: an
                // instance that left the shard since the others reported
                // no longer holds it up once someone reports again.
                Ok(Part::Done)
                    if [MigrationStep::DualWrite, MigrationStep::Verify, MigrationStep::Cutover]
                        .iter()
                        .any(|s| *s as i32 == migration.step) =>
                {
                    steps.insert(key, Progress::Retry(now + REPORT_AGAIN, 0));
                }
                Ok(Part::Done) => {
                    steps.insert(key, Progress::Done);
                }
                Ok(Part::Waiting) => {}
                // From the start of the step again (its wait).
                Ok(Part::Again) => {
                    steps.insert(key, Progress::Seen(Instant::now()));
                }
                Err(e) => {
                    let failures = match progress {
                        Progress::Retry(_, n) => n.saturating_add(1),
                        _ => 1,
                    };
                    // A comparison that keeps differing is not run back
                    // to back: its next try waits at least as long as it
                    // took. (A backfill that failed resumes where it got.)
                    let took =
                        if migration.step == MigrationStep::Verify as i32 { now.elapsed() } else { Duration::ZERO };
                    let wait = retry_after(failures, took);
                    parts.metrics.migration.step_failed(migration.step);
                    tracing::warn!(namespace = %entry.ns.name, migration = migration.id, error = %e, failures, retry_in = ?wait, "a migration step failed; will retry");
                    steps.insert(key, Progress::Retry(Instant::now() + wait, failures));
                }
            }
        }
    }
}

/// How long a step that failed `failures` times in a row (at least one)
/// waits before it is tried again: at least `took`.
fn retry_after(failures: u32, took: Duration) -> Duration {
    let doubled = RETRY.saturating_mul(1u32 << failures.saturating_sub(1).min(8));
    doubled.min(MAX_RETRY).max(took)
}

/// Why the target's plugin failed, naming the migration's field: a field
/// of the target's spec (`spec.…`) as the migration's `target.…`, and
/// anything else (an unreachable server, a refusal) as its backend
/// settings, `target.backend_config`.
fn target_reason(e: &prism_plugin_api::PluginError) -> String {
    let report = e.report();
    match &report.detail {
        prism_proto::error::Detail::BadRequest { field, description } => {
            let field = field.strip_prefix("spec.").map_or_else(|| field.clone(), |f| format!("target.{f}"));
            format!("{field}: {description}")
        }
        _ => format!("target.backend_config: {}", report.message),
    }
}

impl Migrating {
    /// Does this instance's part of `migration`'s current step, if it has
    /// one, and where that part is.
    async fn step(
        &self,
        entry: &NamespaceEntry,
        migration: &Migration,
        instance_id: &str,
        progress: Progress,
    ) -> Result<Part, String> {
        let step = MigrationStep::try_from(migration.step).unwrap_or(MigrationStep::Unspecified);
        let on_target = migration.target_shard_id == self.shard_id
            && (migration.target_owner_store_id.is_empty() || *migration.target_owner_store_id == *self.store_id);
        let on_source = entry.shard_id == self.shard_id;
        let holds_source = entry.held_by(&self.shard_id, &self.store_id);
        // Of the instances holding a shared source, one copies and
        // compares: the runner, or any while it is not registered.
        let runs = holds_source
            && (entry.owner().is_some() || {
                let runner = &migration.runner_instance_id;
                runner.is_empty()
                    || runner == instance_id
                    || !self
                        .metadata
                        .load()
                        .shards
                        .get(&self.shard_id)
                        .is_some_and(|s| s.instances.iter().any(|i| i.instance_id == *runner))
            });
        let report = |done: bool, reason: String, progress: Option<MigrationProgress>| ReportMigrationRequest {
            name: entry.ns.name.clone(),
            shard_id: self.shard_id.clone(),
            instance_id: instance_id.to_owned(),
            migration_id: migration.id,
            step: migration.step,
            done,
            reason,
            progress,
        };
        match step {
            MigrationStep::Prepare if on_target => {
                let target = target_namespace(&entry.ns, migration);
                // The source is live, maybe in the very store the target
                // goes to: its incarnation must stay.
                let live = [entry.ns.create_revision];
                let outcome = match self.plugins.get(backend(&target.spec.backend)) {
                    Some(plugin) => plugin.provision_beside(&target, &live).await.map_err(|e| target_reason(&e)),
                    None => Err(format!("target.backend: this gateway has no {:?} plugin", target.spec.backend)),
                };
                match outcome {
                    Ok(()) => self.report(report(true, String::new(), None)).await?,
                    Err(reason) => {
                        self.report(report(false, reason.clone(), None)).await?;
                        return Err(reason);
                    }
                }
                Ok(Part::Done)
            }
            // DUAL_WRITE: requests admitted before this instance applied
            // the step ran without dual writes. CUTOVER: they read the
            // source, which the cleanup commit stops writing. Either way
            // they end within the request timeout (the deadline layer).
            // Buffered events (`WriteEventRecords`) are written by the
            // flusher, each write with the metadata of its start: the
            // one under way when the step was applied must end too.
            MigrationStep::DualWrite | MigrationStep::Cutover if on_source => {
                // A retry (its report failed) has drained already.
                if let Progress::Seen(since) = progress
                    && (since.elapsed() < self.request_timeout
                        || self.buffer.writing_since().is_some_and(|started| started <= since))
                {
                    return Ok(Part::Waiting);
                }
                self.report(report(true, String::new(), None)).await?;
                Ok(Part::Done)
            }
            MigrationStep::Backfill if runs => {
                self.backfill(entry, migration, |done, progress| report(done, String::new(), Some(progress))).await?;
                Ok(Part::Done)
            }
            MigrationStep::Verify if on_source => {
                // Shadow reads for the migration's window first (the
                // router samples them while the step lasts).
                let window =
                    migration.verify_window.map_or(Duration::ZERO, |w| Duration::try_from(w).unwrap_or(Duration::ZERO));
                if let Progress::Seen(since) = progress
                    && since.elapsed() < window
                {
                    return Ok(Part::Waiting);
                }
                let mut verified = MigrationProgress::default();
                if runs {
                    let compared = self.compare(entry).await?;
                    self.metrics.migration.compared(compared.differing == 0);
                    if compared.differing > 0 {
                        // Read again and still different: recorded, with
                        // where, and compared again later (a migration
                        // that never converges waits here until aborted).
                        let reason = format!(
                            "{} of {} {} differ between the source and the target; first: {}",
                            compared.differing,
                            compared.of,
                            compared.what,
                            compared.first.as_deref().unwrap_or("?")
                        );
                        let counts = MigrationProgress {
                            records_verified: compared.verified,
                            records_differing: compared.differing,
                            ..MigrationProgress::default()
                        };
                        self.report(report(false, reason.clone(), Some(counts))).await?;
                        return Err(reason);
                    }
                    verified.records_verified = compared.verified;
                }
                let (reads, mismatches) = entry.local.shadow.take(migration.id);
                verified.shadow_reads = reads;
                verified.shadow_mismatches = mismatches;
                if let Err(e) = self.report(report(true, String::new(), Some(verified))).await {
                    entry.local.shadow.restore(migration.id, reads, mismatches);
                    return Err(e);
                }
                if mismatches > 0 {
                    // Not verified: a whole window again, then report again.
                    tracing::warn!(namespace = %entry.ns.name, migration = migration.id, mismatches, reads, "shadow reads differed; verifying another window");
                    return Ok(Part::Again);
                }
                Ok(Part::Done)
            }
            MigrationStep::Cleanup => {
                let Some(source) = entry.migration_source() else { return Ok(Part::Done) };
                let holder = migration.source.as_ref().is_some_and(|s| {
                    s.shard_id == self.shard_id && (s.owner_store_id.is_empty() || *s.owner_store_id == *self.store_id)
                });
                if !holder {
                    return Ok(Part::Done);
                }
                // Kept for the grace period, and at least the request
                // timeout after this instance saw the step: an instance
                // still before the cleanup commit writes the source too.
                let after = migration.cleanup_after.and_then(|t| std::time::SystemTime::try_from(t).ok());
                let drained = match progress {
                    Progress::Seen(since) => since.elapsed() >= self.request_timeout,
                    _ => true,
                };
                if !drained || after.is_some_and(|after| std::time::SystemTime::now() < after) {
                    return Ok(Part::Waiting);
                }
                let plugin = self.plugins.get(backend(&source.spec.backend));
                let plugin =
                    plugin.ok_or_else(|| format!("source: this gateway has no {:?} plugin", source.spec.backend))?;
                if let Err(e) = plugin.deprovision(&source).await {
                    // Said in the migration, so `status` shows why it waits.
                    let reason = format!("cannot remove the source yet: {}", e.report().message);
                    self.report(report(false, reason.clone(), None)).await?;
                    return Err(reason);
                }
                tracing::info!(namespace = %entry.ns.name, migration = migration.id, "removed the migrated namespace's source");
                self.report(report(true, String::new(), None)).await?;
                Ok(Part::Done)
            }
            MigrationStep::Aborting if on_target => {
                // Writes admitted before the abort may still be writing
                // the target: removing it under them would fail them.
                if let Progress::Seen(since) = progress
                    && since.elapsed() < self.request_timeout
                {
                    return Ok(Part::Waiting);
                }
                let target = target_namespace(&entry.ns, migration);
                if let Some(plugin) = self.plugins.get(backend(&target.spec.backend))
                    && let Err(e) = plugin.deprovision(&target).await
                {
                    // Said in the migration, so `status` shows why it
                    // waits (and `abort --force` can end it).
                    let reason = format!("cannot remove the target yet: {}", target_reason(&e));
                    self.report(report(false, reason.clone(), None)).await?;
                    return Err(reason);
                }
                self.report(report(true, String::new(), None)).await?;
                Ok(Part::Done)
            }
            _ => Ok(Part::Done),
        }
    }

    /// Compares both sides of the migration: KeyValue item by item,
    /// TimeSeries by time range (`crate::ts_migration::compare`).
    async fn compare(&self, entry: &NamespaceEntry) -> Result<Comparison, String> {
        if entry.ns.spec.abstraction == Abstraction::TimeSeries as i32 {
            let source = entry.time_series(&self.plugins).map_err(|e| e.to_string())?;
            let target = entry.time_series_target(&self.plugins).map_err(|e| e.to_string())?;
            let target = target.ok_or("the target is not open at VERIFY")?;
            let compared = crate::ts_migration::compare(source, target, crate::ts_migration::PAGE)
                .await
                .map_err(|e| e.to_string())?;
            return Ok(Comparison {
                verified: compared.events,
                differing: compared.differing,
                of: compared.ranges,
                what: "hours of events",
                first: compared.first,
            });
        }
        let source = entry.key_value(&self.plugins).map_err(|e| e.to_string())?;
        let target = entry.dual_write_target(&self.plugins).map_err(|e| e.to_string())?;
        let target = target.ok_or("the target is not open at VERIFY")?;
        let compared = compare(source, target, PAGE).await.map_err(|e| e.to_string())?;
        Ok(Comparison {
            verified: compared.items,
            differing: compared.differing,
            of: compared.items,
            what: "records",
            first: compared.first,
        })
    }

    /// Copies the source into the target from the recorded cursor,
    /// reporting the cursor at most every [`PROGRESS_EVERY`], then the end.
    async fn backfill(
        &self,
        entry: &NamespaceEntry,
        migration: &Migration,
        report: impl Fn(bool, MigrationProgress) -> ReportMigrationRequest,
    ) -> Result<(), String> {
        let pages = Pages::open(entry, &self.plugins, self.backfill_parallelism)?;
        let mut progress = migration.progress.clone().unwrap_or_default();
        let mut cursor = pages.decode(&progress.cursor)?;
        let mut reported = Instant::now();
        let (started, mut copied_here) = (Instant::now(), 0u64);
        loop {
            let copied = pages.copy(cursor.as_deref()).await?;
            progress.records_copied += copied.records;
            copied_here += copied.records;
            progress.bytes_copied += copied.bytes;
            self.metrics.migration.copied(copied.records, copied.bytes);
            cursor = copied.next;
            progress.cursor = cursor.clone().unwrap_or_default();
            if cursor.is_none() {
                return self.report(report(true, progress)).await;
            }
            if reported.elapsed() >= PROGRESS_EVERY {
                self.report(report(false, progress.clone())).await?;
                reported = Instant::now();
            }
            if self.backfill_rate > 0 {
                // Not ahead of the rate: the next page waits until the
                // records copied so far were due.
                let due = Duration::from_secs_f64(copied_here as f64 / self.backfill_rate as f64);
                tokio::time::sleep_until(started + due).await;
            }
        }
    }

    async fn report(&self, mut request: ReportMigrationRequest) -> Result<(), String> {
        // A reason may quote a key or a backend's message: the control
        // plane records at most MAX_REASON_BYTES.
        request.reason = crate::audit::truncate(std::mem::take(&mut request.reason), MAX_REASON_BYTES);
        let key = (request.name.clone(), request.migration_id, request.step);
        let failure = (!request.done && !request.reason.is_empty()).then(|| request.reason.clone());
        {
            let failures = self.failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if failure.is_some() && failures.get(&key) == failure.as_ref() {
                return Ok(());
            }
        }
        let mut client = self.link.client().await.map_err(|e| e.to_string())?;
        let (name, step, done) = (request.name.clone(), request.step, request.done);
        match client.report_migration(request).await {
            Ok(_) => {
                tracing::info!(namespace = %name, step, done, "reported a migration step");
                let mut failures = self.failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                match failure {
                    Some(reason) => failures.insert(key, reason),
                    None => failures.remove(&key),
                };
                Ok(())
            }
            // The migration moved on (another instance reported, it was
            // aborted) or refuses the report (too early): the next
            // snapshot says what to do.
            Err(s)
                if matches!(
                    s.code(),
                    tonic::Code::FailedPrecondition | tonic::Code::Aborted | tonic::Code::NotFound
                ) =>
            {
                tracing::info!(namespace = %name, step, status = %s.message(), "migration report no longer applies");
                Ok(())
            }
            Err(s) => {
                self.link.reset().await;
                Err(s.message().to_owned())
            }
        }
    }
}

/// What VERIFY's comparison found, for either abstraction.
struct Comparison {
    /// Records (KeyValue) or events (TimeSeries) the source served.
    verified: u64,
    /// Parts that still differed when read again: records, or hours of
    /// events; of how many.
    differing: u64,
    of: u64,
    what: &'static str,
    first: Option<String>,
}

/// What one page of a backfill copied, and its next cursor as the
/// migration records it (`None`: done).
struct Page {
    records: u64,
    bytes: u64,
    next: Option<Vec<u8>>,
}

/// The two sides of a backfill, opened as the namespace's abstraction.
enum Pages<'a> {
    KeyValue(&'a dyn prism_plugin_api::kv::KeyValueHandle, &'a dyn prism_plugin_api::kv::KeyValueHandle, usize),
    TimeSeries(&'a dyn prism_plugin_api::ts::TimeSeriesHandle, &'a dyn prism_plugin_api::ts::TimeSeriesHandle),
}

impl<'a> Pages<'a> {
    fn open(entry: &'a NamespaceEntry, plugins: &Plugins, parallelism: usize) -> Result<Self, String> {
        if entry.ns.spec.abstraction == Abstraction::TimeSeries as i32 {
            let source = entry.time_series(plugins).map_err(|e| e.to_string())?;
            let target = entry.time_series_target(plugins).map_err(|e| e.to_string())?;
            return Ok(Self::TimeSeries(source, target.ok_or("the target is not open at BACKFILL")?));
        }
        let source = entry.key_value(plugins).map_err(|e| e.to_string())?;
        let target = entry.dual_write_target(plugins).map_err(|e| e.to_string())?;
        Ok(Self::KeyValue(source, target.ok_or("the target is not open at BACKFILL")?, parallelism))
    }

    /// The cursor a report recorded (empty: from the start).
    fn decode(&self, bytes: &[u8]) -> Result<Option<Vec<u8>>, String> {
        let valid = match self {
            Self::KeyValue(..) => VersionCursor::decode(bytes).map_err(|e| e.to_string())?.is_some(),
            // The source's export cursor: its plugin checks it.
            Self::TimeSeries(..) => !bytes.is_empty(),
        };
        Ok(valid.then(|| bytes.to_vec()))
    }

    async fn copy(&self, after: Option<&[u8]>) -> Result<Page, String> {
        match self {
            Self::KeyValue(source, target, parallelism) => {
                let after = after.map(VersionCursor::decode).transpose().map_err(|e| e.to_string())?.flatten();
                let copied = backfill_page(*source, *target, after.as_ref(), PAGE, *parallelism)
                    .await
                    .map_err(|e| e.to_string())?;
                let next = copied.next.as_ref().map(VersionCursor::encode);
                Ok(Page { records: copied.records, bytes: copied.bytes, next })
            }
            Self::TimeSeries(source, target) => {
                let copied = crate::ts_migration::backfill_page(*source, *target, after, crate::ts_migration::PAGE)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(Page { records: copied.events, bytes: copied.bytes, next: copied.next })
            }
        }
    }
}

fn backend(backend: &i32) -> Backend {
    Backend::try_from(*backend).unwrap_or(Backend::Unspecified)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_step_waits_twice_as_long_each_time_up_to_the_cap_and_never_less_than_it_took() {
        let waits: Vec<u64> = (1..=6).map(|n| retry_after(n, Duration::ZERO).as_secs()).collect();
        assert_eq!(waits, [2, 4, 8, 16, 30, 30]);
        assert_eq!(retry_after(u32::MAX, Duration::ZERO), MAX_RETRY);
        assert_eq!(retry_after(1, Duration::from_secs(90)), Duration::from_secs(90));
    }
}
