//! A gateway's part of a live KeyValue migration (ARCHITECTURE.md, "The
//! life of a migration"), the pieces that do not depend on who runs them:
//! the target as its plugin sees it ([`target_namespace`]), one page of
//! the backfill ([`backfill_page`]) and the verify digest ([`digest`]).
//!
//! Who runs them: `background/migrate.rs` (PREPARE, BACKFILL, VERIFY,
//! ABORTING) and the router's dual write, on a gateway that sets
//! `experimental_migrations` (it then advertises `migrate-key-value`).

use prism_plugin_api::kv::{KeyValueHandle, PageLimits, ScanCursor, Selector, VersionCursor};
use prism_plugin_api::{Micros, Namespace};
use prism_proto::control::Migration;
use std::hash::Hasher;
use twox_hash::XxHash64;

use crate::error::Result;

/// The migration's target as a plugin sees it: the source's name and
/// spec, with the target's backend, settings and pin, and the migration's
/// id as its incarnation, so its data shares nothing with the source's.
///
/// The target's backend UNSPECIFIED is the source's backend, and then
/// unset settings are the source's settings (`MigrationTarget`).
pub fn target_namespace(source: &Namespace, migration: &Migration) -> Namespace {
    let target = migration.target.clone().unwrap_or_default();
    let spec = prism_proto::migration::target_spec(&source.spec, &target);
    Namespace { name: source.name.clone(), create_revision: migration.id, spec }
}

/// What one page of the backfill copied, and where the next one starts
/// (`None`: the backfill is complete).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Copied {
    pub records: u64,
    pub versions: u64,
    pub bytes: u64,
    pub next: Option<VersionCursor>,
}

/// Copies one page of `source`'s versions, from `after`, into `target`,
/// each only where it is newer than what the target holds (a dual write
/// that got there first wins): a page copied twice changes nothing, so a
/// runner resumes from the last cursor it recorded.
pub async fn backfill_page(
    source: &dyn KeyValueHandle,
    target: &dyn KeyValueHandle,
    after: Option<&VersionCursor>,
    limits: PageLimits,
) -> Result<Copied> {
    let page = source.scan_versions(after, limits).await?;
    let mut copied = Copied { next: page.next, ..Copied::default() };
    for record in &page.records {
        target.restore(&record.id, &record.versions).await?;
        copied.records += 1;
        copied.versions += record.versions.len() as u64;
        copied.bytes += record.versions.iter().map(|v| v.bytes()).sum::<u64>();
    }
    Ok(copied)
}

/// The most items a shadow read compares: a sample, not a scan.
const SHADOW_PAGE: PageLimits = PageLimits::new(1 << 20, Some(64));

/// One shadow read (VERIFY): reads record `id`'s items selected by
/// `selector` from both sides and says whether they served the same
/// (keys, values and expiries; the first page of each). Live writes race
/// the two reads, so a difference is read again, and only one that is
/// still there counts: `Ok(false)`.
pub async fn shadow_read(
    source: &dyn KeyValueHandle,
    target: &dyn KeyValueHandle,
    id: &str,
    selector: &Selector,
) -> Result<bool> {
    for _ in 0..2 {
        let now = prism_plugin_api::now_micros();
        let a = source.get(id, selector, None, SHADOW_PAGE, now).await?;
        let b = target.get(id, selector, None, SHADOW_PAGE, now).await?;
        // Pages may end at different places (a backend's own byte
        // accounting); what both returned must agree, and one that ended
        // without more must not have fewer.
        let n = a.items.len().min(b.items.len());
        let complete = a.items.len() == b.items.len() || a.next.is_some() || b.next.is_some();
        if a.items[..n] == b.items[..n] && complete {
            return Ok(true);
        }
    }
    Ok(false)
}

/// A migrating namespace's shadow reads on this gateway since its last
/// VERIFY report (`snapshot::Local`): counted by the reads' tasks, taken
/// by the report.
#[derive(Debug, Default)]
pub struct ShadowCounts {
    inner: std::sync::Mutex<(u64, u64, u64)>,
}

impl ShadowCounts {
    /// Counts one shadow read of migration `id`; a count of another
    /// migration (an aborted one) is dropped.
    pub fn count(&self, id: u64, same: bool) {
        let mut c = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if c.0 != id {
            *c = (id, 0, 0);
        }
        c.1 += 1;
        c.2 += u64::from(!same);
    }

    /// Takes migration `id`'s counts (reads, mismatches), leaving none.
    pub fn take(&self, id: u64) -> (u64, u64) {
        let mut c = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let counts = if c.0 == id { (c.1, c.2) } else { (0, 0) };
        *c = (id, 0, 0);
        counts
    }

    /// Gives back counts a failed report took.
    pub fn restore(&self, id: u64, reads: u64, mismatches: u64) {
        let mut c = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if c.0 == id {
            c.1 += reads;
            c.2 += mismatches;
        }
    }
}

/// What a side of a migration serves, summed up: how many live items,
/// and a hash of every one of them — record id, key, value and expiry —
/// in order. Two sides that serve the same reads have the same digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Digest {
    pub items: u64,
    pub hash: u64,
}

/// The digest of what `handle` serves at `now`, read a page of `limits`
/// at a time. Live writes race it: a mismatch means "compare again", not
/// "differs" (the verify runner reads a differing side again).
pub async fn digest(handle: &dyn KeyValueHandle, limits: PageLimits, now: Micros) -> Result<Digest> {
    let mut hasher = XxHash64::with_seed(0);
    let mut items = 0u64;
    let mut after: Option<ScanCursor> = None;
    loop {
        let page = handle.scan(after.as_ref(), limits, now).await?;
        for record in &page.records {
            for item in &record.items {
                // Lengths first, so no two different sequences of fields
                // hash the same bytes.
                for field in [record.id.as_bytes(), &item.key, &item.value] {
                    hasher.write_u64(field.len() as u64);
                    hasher.write(field);
                }
                hasher.write_i64(item.expires_at.unwrap_or(Micros::MIN));
                items += 1;
            }
        }
        match page.next {
            Some(next) => after = Some(next),
            None => return Ok(Digest { items, hash: hasher.finish() }),
        }
    }
}

#[cfg(test)]
mod tests {
    use prism_proto::control::backend_config::Config;
    use prism_proto::control::{Backend, BackendConfig, MigrationTarget, NamespaceSpec, PostgresConfig};

    use super::*;

    fn postgres(dsn: &str) -> BackendConfig {
        BackendConfig { config: Some(Config::Postgres(PostgresConfig { dsn: dsn.into(), ..Default::default() })) }
    }

    #[test]
    fn the_target_is_the_source_with_the_targets_backend_under_the_migrations_id() {
        let source = Namespace {
            name: "acme/orders".into(),
            create_revision: 7,
            spec: NamespaceSpec {
                backend: Backend::Postgres as i32,
                backend_config: Some(Box::new(postgres("postgres://a/db"))),
                ..NamespaceSpec::default()
            },
        };
        let migration = |target: MigrationTarget| Migration { id: 42, target: Some(target), ..Migration::default() };

        // To embedded: the backend and its (absent) settings change.
        let t = target_namespace(
            &source,
            &migration(MigrationTarget { backend: Backend::Embedded as i32, ..Default::default() }),
        );
        assert_eq!((t.name.as_str(), t.create_revision), ("acme/orders", 42));
        assert_eq!((t.spec.backend, t.spec.backend_config), (Backend::Embedded as i32, None));

        // Same backend, other settings.
        let t = target_namespace(
            &source,
            &migration(MigrationTarget { backend_config: Some(postgres("postgres://b/db")), ..Default::default() }),
        );
        assert_eq!(t.spec.backend, Backend::Postgres as i32);
        assert_eq!(t.spec.backend_config.map(|c| *c), Some(postgres("postgres://b/db")));

        // Another shard only: everything else is the source's.
        let t = target_namespace(
            &source,
            &migration(MigrationTarget { pinned_shard: "shard-b".into(), ..Default::default() }),
        );
        assert_eq!(t.spec.backend_config, source.spec.backend_config);
        assert_eq!(t.spec.placement.map(|p| p.pinned_shard), Some("shard-b".into()));
    }
}
