//! Live namespace migration, the control plane's part (ARCHITECTURE.md,
//! "The life of a migration"): `MigrateNamespace` checks the target and
//! records a [`Migration`] in the namespace, `GetMigration` reads it,
//! `AbortMigration` turns it back, and `ReportMigration` — gateways
//! reporting their part of a step — advances it.
//!
//! Like a schema history, the migration is part of the namespace object:
//! both stores keep it with no schema of their own, every step is one
//! namespace commit through [`ControlPlane::mutate`] (authorized,
//! conditioned, audited), and the watch stream publishes it to every
//! gateway. The control plane keeps nothing of it in memory and runs no
//! timer: steps advance only on reports.
//!
//! Nothing starts that no gateway would carry out: an instance says in its
//! registration which migrations it performs ([`MIGRATE_KEY_VALUE`]), and
//! a migration is refused with FAILED_PRECONDITION, naming them, while an
//! instance of the source's or target's shard does not: KeyValue
//! namespaces need [`MIGRATE_KEY_VALUE`] (and [`MIGRATE_TO_EMBEDDED`] to
//! go to embedded storage), TimeSeries ones [`MIGRATE_TIME_SERIES`]. A
//! TimeSeries namespace cannot go to embedded storage yet (the peer
//! service that reaches a target on another instance's disk carries
//! KeyValue only).
//!
//! The steps: PREPARE (the target's holder provisions it), DUAL_WRITE
//! (every instance of the source's shard writes both sides), BACKFILL and
//! VERIFY (the source's holder copies and compares), CUTOVER (reads move
//! to the target; every instance drains), CLEANUP (one commit makes the
//! target the namespace's placement, [`cut_over`]; the source's holder
//! removes the source after the grace), or ABORTING before CUTOVER.

use std::time::{Duration, SystemTime};

use prism_proto::control::{
    AbortMigrationRequest, Abstraction, GetMigrationRequest, GetMigrationResponse, MigrateNamespaceRequest, Migration,
    MigrationSource, MigrationStep, MigrationTarget, Namespace, NamespaceStatus, ReportMigrationRequest, Shard,
};

use crate::error::{ControlPlaneError, Result};
use crate::plane::{ControlPlane, Plan, Target, check_expected, tenant_of, written_namespace};
use crate::store::{Condition, Put, Txn};
use crate::validate;

/// The feature of an instance that performs its part of KeyValue
/// migrations (`RegisterShardRequest.features`).
pub const MIGRATE_KEY_VALUE: &str = "migrate-key-value";

/// The feature of an instance that also takes part in KeyValue
/// migrations to embedded storage (a target on one instance's disk,
/// reached through that instance's peer service).
pub const MIGRATE_TO_EMBEDDED: &str = "migrate-key-value-to-embedded";

/// The feature of an instance that performs its part of TimeSeries
/// migrations (dual writes of events, buffered ones included; a backfill
/// and a comparison by time range; tails moved at CUTOVER).
pub const MIGRATE_TIME_SERIES: &str = "migrate-time-series";

/// Longest reason a report may give.
const MAX_REASON_LEN: usize = 1024;
/// Longest backfill cursor a report may record: it is metadata every
/// watcher receives. A Kafka source's export cursor holds an offset per
/// partition: 6 KiB and a byte at the most partitions (1024).
pub const MAX_CURSOR_LEN: usize = 8 << 10;

fn step_name(step: i32) -> &'static str {
    MigrationStep::try_from(step).map_or("UNKNOWN", |s| s.as_str_name().trim_start_matches("MIGRATION_STEP_"))
}

/// The instances of `shard` (`registered`), or none.
fn instances<'a>(registered: &'a [Shard], shard: &str) -> &'a [prism_proto::control::ShardInstance] {
    registered.iter().find(|s| s.shard_id == shard).map(|s| s.instances.as_slice()).unwrap_or_default()
}

/// Refuses unless every instance of `shards` is registered and performs
/// `feature`, naming every one that does not.
fn check_performers(registered: &[Shard], shards: &[&str], feature: &str) -> Result<()> {
    let mut missing = Vec::new();
    for shard in shards {
        let here = instances(registered, shard);
        if here.is_empty() {
            missing.push(format!("shard {shard} (no instance registered)"));
        }
        for i in here.iter().filter(|i| !i.features.iter().any(|f| f == feature)) {
            missing.push(format!("instance {} of shard {shard} at {}", i.instance_id, i.endpoint));
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    Err(ControlPlaneError::FailedPrecondition(format!(
        "no gateway would carry out this migration: {} do not perform {feature} \
         (gateways take part in migrations only with experimental_migrations set, issue 16)",
        missing.join(", ")
    )))
}

/// The cleanup commit (ARCHITECTURE.md, "The life of a migration", step
/// 6): the target becomes the namespace's placement — spec, shard, owner
/// store and data incarnation — and the source is kept in the migration
/// until its holder removes it, after `grace`.
fn cut_over(ns: &mut Namespace, migration: &mut Migration, now: SystemTime, grace: Duration) {
    let spec = ns.spec.take().unwrap_or_default();
    let target = migration.target.clone().unwrap_or_default();
    ns.spec = Some(prism_proto::migration::target_spec(&spec, &target));
    let data_revision = if ns.data_revision == 0 { ns.create_revision } else { ns.data_revision };
    migration.source = Some(MigrationSource {
        spec: Some(spec),
        shard_id: std::mem::replace(&mut ns.shard_id, migration.target_shard_id.clone()),
        owner_store_id: std::mem::replace(&mut ns.owner_store_id, migration.target_owner_store_id.clone()),
        data_revision,
    });
    ns.data_revision = migration.id;
    // What the source's backend held: the target's holder reports its own.
    ns.backend_settings.clear();
    // The last word was the source's provisioning; the target's holder
    // provisioned the target (PREPARE).
    let backend = ns.spec.as_ref().map_or(0, |s| s.backend);
    ns.status_reason =
        format!("migrated to {} on shard {} by migration {}", backend_name(backend), ns.shard_id, migration.id);
    migration.step = MigrationStep::Cleanup as i32;
    migration.step_time = Some(now.into());
    migration.cleanup_after = Some((now + grace).into());
    migration.reported.clear();
}

fn no_migration(name: &str) -> ControlPlaneError {
    ControlPlaneError::NotFound(format!("namespace {name} has no migration running"))
}

impl ControlPlane {
    /// Starts migrating a KEY_VALUE namespace to `req.target` (module docs):
    /// records the migration at step PREPARE, for the target's holder to
    /// provision.
    pub async fn migrate_namespace(&self, principal: &str, req: &MigrateNamespaceRequest) -> Result<Namespace> {
        let name = req.name.as_str();
        let target = Target { action: "MigrateNamespace", tenant: tenant_of(name), target: name };
        let delta = self
            .mutate(principal, target, || async {
                validate::namespace_name("name", name)?;
                let mut ns = self.live_namespace(name).await?;
                check_expected("namespace", name, req.expected_revision, ns.revision)?;
                let condition = Condition::Namespace { name: name.to_owned(), revision: ns.revision };
                let detail = self.begin_migration(&mut ns, req.target.as_ref(), principal).await?;
                ns.update_time = Some(SystemTime::now().into());
                Ok(Plan {
                    txn: Txn { conditions: vec![condition], puts: vec![Put::Namespace(ns)], ..Txn::default() },
                    detail,
                })
            })
            .await?;
        written_namespace(&delta, name)
    }

    /// Records a migration of `ns` to `target` at step PREPARE, after
    /// every check `MigrateNamespace` makes (also `UpdateNamespace`'s
    /// when it changes the pin); returns the audit detail.
    pub(crate) async fn begin_migration(
        &self,
        ns: &mut Namespace,
        target: Option<&MigrationTarget>,
        principal: &str,
    ) -> Result<String> {
        let name = ns.name.clone();
        if let Some(running) = &ns.migration {
            return Err(ControlPlaneError::FailedPrecondition(format!(
                "namespace {name} is already migrating (migration {}, step {}); abort it first",
                running.id,
                step_name(running.step)
            )));
        }
        if ns.status != NamespaceStatus::Active as i32 {
            return Err(ControlPlaneError::FailedPrecondition(format!(
                "namespace {name} is {}: a migration starts from an ACTIVE namespace",
                NamespaceStatus::try_from(ns.status).map_or("UNKNOWN", |s| s.as_str_name())
            )));
        }
        let source = ns.spec.clone().unwrap_or_default();
        let time_series = source.abstraction == Abstraction::TimeSeries as i32;
        let registered = self.store().list_shards().await?;
        let spec = validate::migration_target(&source, target, &self.known_shards_of(&registered))?;
        if time_series && spec.backend == prism_proto::control::Backend::Embedded as i32 {
            return Err(ControlPlaneError::invalid(
                "target.backend",
                format!(
                    "namespace {name} is TIME_SERIES: it cannot migrate to EMBEDDED storage yet (a target on one \
                     instance's disk is reached through a peer service that carries KeyValue only); choose KAFKA \
                     or PULSAR"
                ),
            ));
        }
        let pins = self.pins().await?;
        let dedicated = pins.dedicated();
        if let Some(pin) = crate::dedicated::Pin::of_spec(&spec) {
            // The target's placement becomes the namespace's: it may not
            // take another's dedicated shard, nor dedicate a used one.
            let shared = self.shared_shards_of(&registered, &dedicated);
            let was = crate::dedicated::Pin::of_spec(&source).filter(|p| p.dedicated).map(|p| p.shard);
            let fields = ["target.pinned_shard"; 2];
            self.check_pin(&name, &pin, fields, &pins, &shared, was.as_deref()).await?;
        }
        let (shard, owner) = self.place_new(&name, &spec, &registered, &dedicated);
        if shard.is_empty() {
            return Err(ControlPlaneError::FailedPrecondition(
                "no shard is available to hold the migration's target".into(),
            ));
        }
        if shard == ns.shard_id && spec.backend == source.backend && spec.backend_config == source.backend_config {
            return Err(ControlPlaneError::invalid(
                "target",
                format!("places the namespace where it is: backend and settings unchanged, on shard {shard}"),
            ));
        }
        let feature = if time_series { MIGRATE_TIME_SERIES } else { MIGRATE_KEY_VALUE };
        check_performers(&registered, &[ns.shard_id.as_str(), shard.as_str()], feature)?;
        // An embedded target is on one instance's disk: the source's
        // holders reach it through that instance (dual writes, backfill,
        // comparison), so both shards' gateways must do their part; refused
        // here rather than left waiting at PREPARE.
        let lacking = [ns.shard_id.as_str(), shard.as_str()]
            .into_iter()
            .find(|s| !instances(&registered, s).iter().all(|i| i.features.iter().any(|f| f == MIGRATE_TO_EMBEDDED)));
        if spec.backend == prism_proto::control::Backend::Embedded as i32
            && let Some(lacking) = lacking
        {
            return Err(ControlPlaneError::FailedPrecondition(format!(
                "target.backend: the gateways of shard {lacking} do not migrate to embedded storage (one \
                 instance's disk; feature {MIGRATE_TO_EMBEDDED}): upgrade them and set experimental_migrations"
            )));
        }
        let now = Some(SystemTime::now().into());
        let detail = format!("migration {} to shard {shard} started", ns.revision);
        ns.migration = Some(Box::new(Migration {
            // Unique among the namespace's migrations (the next
            // one starts from a later revision), and never its
            // data's incarnation: an ACTIVE namespace changed
            // after it was created.
            id: ns.revision,
            target: target.cloned(),
            target_shard_id: shard,
            target_owner_store_id: owner,
            step: MigrationStep::Prepare as i32,
            shadow_read_fraction: self.config().migration_shadow_read_fraction,
            verify_window: Some(prost_types::Duration {
                seconds: (self.config().migration_verify_window_ms / 1000) as i64,
                nanos: (self.config().migration_verify_window_ms % 1000 * 1_000_000) as i32,
            }),
            principal: principal.to_owned(),
            start_time: now,
            step_time: now,
            ..Migration::default()
        }));
        Ok(detail)
    }

    /// The namespace's running migration; NOT_FOUND when it has none.
    pub async fn get_migration(&self, req: &GetMigrationRequest) -> Result<GetMigrationResponse> {
        let name = req.name.as_str();
        let ns = self.live_namespace(name).await?;
        let migration = ns.migration.ok_or_else(|| no_migration(name))?;
        Ok(GetMigrationResponse { name: ns.name, revision: ns.revision, migration: Some(*migration) })
    }

    /// Aborts the namespace's migration (any step before CUTOVER: the
    /// source never stopped being authoritative, and no instance read the
    /// target; from CUTOVER on it is refused): the step becomes
    /// ABORTING, gateways stop writing to the target, and its holder
    /// removes it and reports.
    pub async fn abort_migration(&self, principal: &str, req: &AbortMigrationRequest) -> Result<Namespace> {
        let name = req.name.as_str();
        let target = Target { action: "AbortMigration", tenant: tenant_of(name), target: name };
        let delta = self
            .mutate(principal, target, || async {
                validate::namespace_name("name", name)?;
                let mut ns = self.live_namespace(name).await?;
                check_expected("namespace", name, req.expected_revision, ns.revision)?;
                let condition = Condition::Namespace { name: name.to_owned(), revision: ns.revision };
                let migration = ns.migration.as_deref_mut().ok_or_else(|| no_migration(name))?;
                let step = MigrationStep::try_from(migration.step).unwrap_or(MigrationStep::Unspecified);
                if req.force {
                    let detail = match step {
                        MigrationStep::Aborting => {
                            let target = migration.target.clone().unwrap_or_default();
                            let spec =
                                prism_proto::migration::target_spec(&ns.spec.clone().unwrap_or_default(), &target);
                            format!(
                                "migration {id} force-ended at ABORTING by {principal}; the target may remain: {} \
                                 incarnation {id} of {name} on shard {}",
                                backend_name(spec.backend),
                                migration.target_shard_id,
                                id = migration.id,
                            )
                        }
                        // The cleanup commit made the target the namespace:
                        // only the source's removal is left, and it is given up.
                        MigrationStep::Cleanup => {
                            let source = migration.source.clone().unwrap_or_default();
                            let backend = source.spec.as_ref().map_or(0, |s| s.backend);
                            format!(
                                "migration {} force-ended at CLEANUP by {principal}; the namespace stays on its \
                                 target, and the source may remain: {} incarnation {} of {name} on shard {}",
                                migration.id,
                                backend_name(backend),
                                source.data_revision,
                                source.shard_id,
                            )
                        }
                        _ => {
                            return Err(ControlPlaneError::FailedPrecondition(format!(
                                "migration {} of {name} is at step {}: force only ends a migration stuck removing \
                                 what it leaves behind (ABORTING: its target; CLEANUP: its source); abort it first",
                                migration.id,
                                step_name(migration.step)
                            )));
                        }
                    };
                    let last = if migration.reason.is_empty() {
                        String::new()
                    } else {
                        format!("; last reason: {}", migration.reason)
                    };
                    ns.migration = None;
                    ns.update_time = Some(SystemTime::now().into());
                    return Ok(Plan {
                        txn: Txn { conditions: vec![condition], puts: vec![Put::Namespace(ns)], ..Txn::default() },
                        detail: detail + &last,
                    });
                }
                match step {
                    MigrationStep::Prepare
                    | MigrationStep::DualWrite
                    | MigrationStep::Backfill
                    | MigrationStep::Verify => {}
                    MigrationStep::Aborting => {
                        return Err(ControlPlaneError::FailedPrecondition(format!(
                            "migration {} of {name} is already being aborted (--force ends it now if its target \
                             cannot be removed)",
                            migration.id
                        )));
                    }
                    MigrationStep::Cutover => {
                        return Err(ControlPlaneError::FailedPrecondition(format!(
                            "migration {} of {name} is cutting over: its target serves reads already, and the \
                             migration moves on to CLEANUP by itself once every instance of shard {} has drained \
                             (at most the request timeout); it can no longer be aborted",
                            migration.id, ns.shard_id
                        )));
                    }
                    MigrationStep::Cleanup => {
                        return Err(ControlPlaneError::FailedPrecondition(format!(
                            "migration {} of {name} is cleaning up: the namespace is on its target already, and the \
                             migration ends once its source is removed; it can no longer be aborted (--force ends it \
                             now, leaving the source, if the source cannot be removed)",
                            migration.id
                        )));
                    }
                    _ => {
                        return Err(ControlPlaneError::FailedPrecondition(format!(
                            "migration {} of {name} is at step {}: it can no longer be aborted",
                            migration.id,
                            step_name(migration.step)
                        )));
                    }
                }
                let now = Some(SystemTime::now().into());
                migration.step = MigrationStep::Aborting as i32;
                migration.step_time = now;
                migration.reported.clear();
                migration.reason = format!("aborted by {principal} at step {}", step_name(step as i32));
                let detail = format!("migration {} aborted at step {}", migration.id, step_name(step as i32));
                ns.update_time = now;
                Ok(Plan {
                    txn: Txn { conditions: vec![condition], puts: vec![Put::Namespace(ns)], ..Txn::default() },
                    detail,
                })
            })
            .await?;
        written_namespace(&delta, name)
    }

    /// A gateway reports its part of the current step (module docs): a
    /// failure is recorded as the migration's reason; PREPARE done by the
    /// target's holder starts DUAL_WRITE; DUAL_WRITE done by every instance
    /// of the source's shard starts BACKFILL; the backfill's progress is
    /// recorded, its end starts VERIFY; VERIFY done starts CUTOVER;
    /// CUTOVER done by every instance of the source's shard is the cleanup
    /// commit; CLEANUP done by the source's holder, not before
    /// `cleanup_after`, and ABORTING done by the target's holder end the
    /// migration.
    pub async fn report_migration(&self, principal: &str, req: &ReportMigrationRequest) -> Result<Namespace> {
        let name = req.name.as_str();
        let target = Target { action: "ReportMigration", tenant: tenant_of(name), target: name };
        let delta = self
            .mutate(principal, target, || async {
                validate::namespace_name("name", name)?;
                prism_proto::names::validate_part(&req.shard_id)
                    .map_err(|e| ControlPlaneError::invalid("shard_id", format!("shard id {e}")))?;
                validate::instance_id("instance_id", &req.instance_id)?;
                if req.reason.len() > MAX_REASON_LEN {
                    return Err(ControlPlaneError::invalid("reason", format!("is longer than {MAX_REASON_LEN} bytes")));
                }
                if req.progress.as_ref().is_some_and(|p| p.cursor.len() > MAX_CURSOR_LEN) {
                    return Err(ControlPlaneError::invalid(
                        "progress.cursor",
                        format!("is longer than {MAX_CURSOR_LEN} bytes"),
                    ));
                }
                let mut ns = self.get_namespace(name).await?;
                let mut conditions = vec![Condition::Namespace { name: name.to_owned(), revision: ns.revision }];
                let mut migration = ns.migration.take().ok_or_else(|| no_migration(name))?;
                if migration.id != req.migration_id || migration.step != req.step {
                    return Err(ControlPlaneError::Conflict(format!(
                        "namespace {name} is at migration {} step {}; the report is about migration {} step {}",
                        migration.id,
                        step_name(migration.step),
                        req.migration_id,
                        step_name(req.step)
                    )));
                }
                let step = MigrationStep::try_from(migration.step).unwrap_or(MigrationStep::Unspecified);
                let source = migration.source.clone().unwrap_or_default();
                // Who does the step, and the one instance store that must
                // when the side is on one instance's disk: the target's
                // holder prepares and removes the target, the source's
                // removes the source, the source's shard does the rest.
                let (doer, holder) = match step {
                    MigrationStep::Prepare | MigrationStep::Aborting => {
                        (migration.target_shard_id.clone(), migration.target_owner_store_id.clone())
                    }
                    MigrationStep::Cleanup => (source.shard_id.clone(), source.owner_store_id.clone()),
                    _ => (ns.shard_id.clone(), String::new()),
                };
                let registered = self.store().list_shards().await?;
                let shard = registered.iter().find(|s| s.shard_id == doer);
                let instance = shard.and_then(|s| s.instances.iter().find(|i| i.instance_id == req.instance_id));
                let Some((shard, instance)) = shard.zip(instance).filter(|_| req.shard_id == doer) else {
                    return Err(ControlPlaneError::FailedPrecondition(format!(
                        "instance {} of shard {} does not do step {} of {name}'s migration (shard {doer} does)",
                        req.instance_id,
                        req.shard_id,
                        step_name(req.step)
                    )));
                };
                if !holder.is_empty() && instance.store_id != holder {
                    return Err(ControlPlaneError::FailedPrecondition(format!(
                        "instance {} does not hold the side of the migration this step removes or prepares \
                         (store {holder} does)",
                        req.instance_id
                    )));
                }
                // One runner copies: another instance's report is refused
                // while the runner is registered, and makes it the runner
                // once it is not (it left, or its lease expired).
                if step == MigrationStep::Backfill && migration.runner_instance_id != req.instance_id {
                    let runner = &migration.runner_instance_id;
                    if !runner.is_empty() && shard.instances.iter().any(|i| i.instance_id == *runner) {
                        return Err(ControlPlaneError::FailedPrecondition(format!(
                            "instance {} does not run the backfill of {name}'s migration (instance {runner} does)",
                            req.instance_id
                        )));
                    }
                    migration.runner_instance_id.clone_from(&req.instance_id);
                }
                let now = SystemTime::now();
                if let Some(reported) = &req.progress {
                    let progress = migration.progress.get_or_insert_with(Default::default);
                    if step == MigrationStep::Verify {
                        // Each instance reports its own shadow reads, a
                        // window at a time; the runner, the comparison's
                        // counts.
                        progress.shadow_reads = progress.shadow_reads.saturating_add(reported.shadow_reads);
                        progress.shadow_mismatches =
                            progress.shadow_mismatches.saturating_add(reported.shadow_mismatches);
                        if reported.records_verified != 0 || reported.records_differing != 0 {
                            progress.records_verified = reported.records_verified;
                            progress.records_differing = reported.records_differing;
                        }
                    } else {
                        *progress = reported.clone();
                    }
                    progress.update_time = Some(now.into());
                }
                // An instance whose shadow reads differed has not verified:
                // the step stays, saying so, and it reads another window.
                let mismatched = step == MigrationStep::Verify
                    && req.progress.as_ref().is_some_and(|p| p.shadow_mismatches > 0);
                let id = migration.id;
                let detail;
                if mismatched {
                    let p = req.progress.clone().unwrap_or_default();
                    migration.reason = format!(
                        "instance {} of shard {}: {} of {} shadow reads differed between source and target",
                        req.instance_id, req.shard_id, p.shadow_mismatches, p.shadow_reads
                    );
                    migration.reported.retain(|i| *i != req.instance_id);
                    detail = format!("migration {id} step VERIFY: {}", migration.reason);
                    ns.migration = Some(migration);
                } else if !req.done {
                    // A progress report, or a failure that keeps the step.
                    migration.reason.clone_from(&req.reason);
                    detail = match req.reason.as_str() {
                        "" => format!("migration {id} progress at step {}", step_name(step as i32)),
                        why => format!("migration {id} step {} failed: {why}", step_name(step as i32)),
                    };
                    ns.migration = Some(migration);
                } else {
                    migration.reason.clear();
                    let next = match step {
                        MigrationStep::Prepare => Some(MigrationStep::DualWrite),
                        // Every instance of the source's shard must have
                        // reached the step and drained what it admitted
                        // before: conditioned on the instances as read.
                        MigrationStep::DualWrite | MigrationStep::Verify | MigrationStep::Cutover => {
                            if !migration.reported.contains(&req.instance_id) {
                                migration.reported.push(req.instance_id.clone());
                            }
                            conditions.push(Condition::Shard { id: shard.shard_id.clone(), revision: shard.revision });
                            let all = shard.instances.iter().all(|i| migration.reported.contains(&i.instance_id));
                            let next = match step {
                                MigrationStep::DualWrite => MigrationStep::Backfill,
                                MigrationStep::Verify => MigrationStep::Cutover,
                                _ => MigrationStep::Cleanup,
                            };
                            all.then_some(next)
                        }
                        MigrationStep::Backfill => Some(MigrationStep::Verify),
                        MigrationStep::Cleanup => {
                            let after = migration.cleanup_after.and_then(|t| SystemTime::try_from(t).ok());
                            if after.is_some_and(|after| now < after) {
                                return Err(ControlPlaneError::FailedPrecondition(format!(
                                    "migration {id} of {name}: its source is kept until its cleanup time"
                                )));
                            }
                            None
                        }
                        MigrationStep::Aborting => None,
                        _ => {
                            return Err(ControlPlaneError::FailedPrecondition(format!(
                                "migration {id} of {name} is at step {}, which no report advances",
                                step_name(step as i32)
                            )));
                        }
                    };
                    match (step, next) {
                        (MigrationStep::Aborting, _) => {
                            detail = format!("migration {id} aborted; target removed");
                        }
                        (MigrationStep::Cleanup, _) => {
                            detail = format!(
                                "migration {id} done; source removed (shard {}, data incarnation {})",
                                source.shard_id, source.data_revision
                            );
                        }
                        (_, Some(MigrationStep::Cleanup)) => {
                            let grace = Duration::from_millis(self.config().migration_cleanup_grace_ms);
                            detail = format!(
                                "migration {id} cut over: the namespace is on shard {} now; its source is removed after {}s",
                                migration.target_shard_id,
                                grace.as_secs()
                            );
                            cut_over(&mut ns, &mut migration, now, grace);
                            ns.migration = Some(migration);
                        }
                        (_, Some(next)) => {
                            if next == MigrationStep::Backfill {
                                // The runner: the source's owner, or (a
                                // shared backend) this instance, alive.
                                let owner = shard.instances.iter().find(|i| i.store_id == ns.owner_store_id);
                                migration.runner_instance_id = match owner {
                                    Some(i) if !ns.owner_store_id.is_empty() => i.instance_id.clone(),
                                    _ => req.instance_id.clone(),
                                };
                            }
                            migration.step = next as i32;
                            migration.step_time = Some(now.into());
                            migration.reported.clear();
                            detail = format!("migration {id} now at step {}", step_name(next as i32));
                            ns.migration = Some(migration);
                        }
                        (_, None) => {
                            detail =
                                format!("migration {id} step {} done by {}", step_name(step as i32), req.instance_id);
                            ns.migration = Some(migration);
                        }
                    }
                }
                let now = Some(now.into());
                ns.update_time = now;
                Ok(Plan { txn: Txn { conditions, puts: vec![Put::Namespace(ns)], ..Txn::default() }, detail })
            })
            .await?;
        let written = written_namespace(&delta, name)?;
        if written.migration.is_none() {
            // The settler left the namespace where it was while it
            // migrated (`registry::placement`); the shard map may have
            // moved on since.
            self.settle_state().resettle();
        }
        Ok(written)
    }
}

/// A backend's name as the audit log says it (`POSTGRES`).
fn backend_name(backend: i32) -> &'static str {
    prism_proto::control::Backend::try_from(backend)
        .map_or("UNKNOWN", |b| b.as_str_name().trim_start_matches("BACKEND_"))
}
