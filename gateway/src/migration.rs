//! A gateway's part of a live KeyValue migration (ARCHITECTURE.md, "The
//! life of a migration"), the pieces that do not depend on who runs them:
//! the target as its plugin sees it ([`target_namespace`]), one page of
//! the backfill ([`backfill_page`]) and the verify comparison
//! ([`compare`]; [`digest`] sums a side up).
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
/// runner resumes from the last cursor it recorded. The page is split
/// into up to `parallelism` batches (at least one), restored at once
/// (`KeyValueHandle::restore_records`; each record is in a page once, and
/// the order of restores does not matter: each keeps the newer). On
/// PostgreSQL a batch is one transaction; a restore per record ran at
/// 1/59 of a plain copy (docs/benchmarks.md, "Live migration").
pub async fn backfill_page(
    source: &dyn KeyValueHandle,
    target: &dyn KeyValueHandle,
    after: Option<&VersionCursor>,
    limits: PageLimits,
    parallelism: usize,
) -> Result<Copied> {
    let page = source.scan_versions(after, limits).await?;
    let batch = page.records.len().div_ceil(parallelism.max(1)).max(1);
    let batches = page.records.chunks(batch).map(|records| target.restore_records(records));
    futures_util::future::try_join_all(batches).await?;
    let versions = page.records.iter().flat_map(|r| &r.versions);
    Ok(Copied {
        records: page.records.len() as u64,
        versions: versions.clone().count() as u64,
        bytes: versions.map(|v| v.bytes()).sum(),
        next: page.next,
    })
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

/// Reads `handle`'s live items in order, (record id, item) at a time, a
/// page of `limits` at a time.
struct Items<'a> {
    handle: &'a dyn KeyValueHandle,
    limits: PageLimits,
    now: Micros,
    page: std::vec::IntoIter<(String, prism_plugin_api::kv::Item)>,
    next: Option<ScanCursor>,
    started: bool,
}

impl<'a> Items<'a> {
    fn new(handle: &'a dyn KeyValueHandle, limits: PageLimits, now: Micros) -> Self {
        Self { handle, limits, now, page: Vec::new().into_iter(), next: None, started: false }
    }

    async fn next(&mut self) -> Result<Option<(String, prism_plugin_api::kv::Item)>> {
        loop {
            if let Some(item) = self.page.next() {
                return Ok(Some(item));
            }
            if self.started && self.next.is_none() {
                return Ok(None);
            }
            self.started = true;
            let page = self.handle.scan(self.next.as_ref(), self.limits, self.now).await?;
            self.next = page.next;
            let items: Vec<_> =
                page.records.into_iter().flat_map(|r| r.items.into_iter().map(move |i| (r.id.clone(), i))).collect();
            self.page = items.into_iter();
        }
    }
}

/// What VERIFY found comparing both sides of a migration ([`compare`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Compared {
    /// The live items the source served.
    pub items: u64,
    /// Records that still differed when read again, and the first of
    /// them, described.
    pub differing: u64,
    pub first: Option<String>,
}

/// Records that differed in the scan and are read again, at most: more
/// than this and the sides are not converging (a runner compares again
/// later).
const RECHECK_AT_MOST: usize = 10_000;
/// How often a differing record is read again before it counts.
const RECHECK_TIMES: usize = 3;

/// Compares everything both sides serve, item by item in order (record
/// id, key, value, expiry), reading them in lockstep a page at a time.
/// Live writes race the comparison (each lands on both sides, one after
/// the other), so a record that differs in the scan is read again from
/// both sides, a few times, and only one that still differs counts.
pub async fn compare(source: &dyn KeyValueHandle, target: &dyn KeyValueHandle, limits: PageLimits) -> Result<Compared> {
    let now = prism_plugin_api::now_micros();
    let (mut a, mut b) = (Items::new(source, limits, now), Items::new(target, limits, now));
    let (mut x, mut y) = (a.next().await?, b.next().await?);
    let mut suspects = std::collections::BTreeSet::new();
    let mut compared = Compared::default();
    loop {
        let order = match (&x, &y) {
            (None, None) => break,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some((i, p)), Some((j, q))) => (i, &p.key).cmp(&(j, &q.key)),
        };
        match order {
            std::cmp::Ordering::Equal => {
                if let (Some((id, p)), Some((_, q))) = (&x, &y)
                    && p != q
                {
                    suspects.insert(id.clone());
                }
                compared.items += 1;
                (x, y) = (a.next().await?, b.next().await?);
            }
            // An item only the source serves, or only the target.
            std::cmp::Ordering::Less => {
                if let Some((id, _)) = x.take() {
                    suspects.insert(id);
                }
                compared.items += 1;
                x = a.next().await?;
            }
            std::cmp::Ordering::Greater => {
                if let Some((id, _)) = y.take() {
                    suspects.insert(id);
                }
                y = b.next().await?;
            }
        }
        if suspects.len() > RECHECK_AT_MOST {
            compared.differing = suspects.len() as u64;
            compared.first = Some(format!("more than {RECHECK_AT_MOST} records differ in one scan"));
            return Ok(compared);
        }
    }
    for id in suspects {
        if let Some(what) = recheck(source, target, &id, limits).await? {
            compared.differing += 1;
            compared.first.get_or_insert(what);
        }
    }
    Ok(compared)
}

/// Reads record `id` from both sides again, a few times: `None` once they
/// serve the same, else how they differed the last time.
async fn recheck(
    source: &dyn KeyValueHandle,
    target: &dyn KeyValueHandle,
    id: &str,
    limits: PageLimits,
) -> Result<Option<String>> {
    let mut what = None;
    for attempt in 0..RECHECK_TIMES {
        if attempt > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let now = prism_plugin_api::now_micros();
        let (p, q) = (record(source, id, limits, now).await?, record(target, id, limits, now).await?);
        if p == q {
            return Ok(None);
        }
        what = Some(describe(id, &p, &q));
    }
    Ok(what)
}

/// Every live item of record `id` at `now`.
async fn record(
    handle: &dyn KeyValueHandle,
    id: &str,
    limits: PageLimits,
    now: Micros,
) -> Result<Vec<prism_plugin_api::kv::Item>> {
    let mut items = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = handle.get(id, &Selector::All, after.as_deref(), limits, now).await?;
        items.extend(page.items);
        match page.next {
            Some(next) => after = Some(next),
            None => return Ok(items),
        }
    }
}

/// How record `id`'s items differ between the source (`p`) and the
/// target (`q`): the first item that does.
fn describe(id: &str, p: &[prism_plugin_api::kv::Item], q: &[prism_plugin_api::kv::Item]) -> String {
    let key = |k: &[u8]| String::from_utf8_lossy(k).into_owned();
    let (mut i, mut j) = (p.iter().peekable(), q.iter().peekable());
    loop {
        match (i.peek(), j.peek()) {
            (Some(x), Some(y)) if x == y => {
                i.next();
                j.next();
            }
            (Some(x), Some(y)) if x.key == y.key => {
                return if x.value != y.value {
                    format!(
                        "record {id} key {:?}: the values differ ({} and {} bytes)",
                        key(&x.key),
                        x.value.len(),
                        y.value.len()
                    )
                } else {
                    format!(
                        "record {id} key {:?}: the expiries differ ({:?} and {:?})",
                        key(&x.key),
                        x.expires_at,
                        y.expires_at
                    )
                };
            }
            (Some(x), Some(y)) if x.key < y.key => {
                return format!("record {id} key {:?}: in the source only", key(&x.key));
            }
            (Some(x), None) => return format!("record {id} key {:?}: in the source only", key(&x.key)),
            (_, Some(y)) => return format!("record {id} key {:?}: in the target only", key(&y.key)),
            (None, None) => return format!("record {id}: read differently"),
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
