//! The gateway's view of metadata: **one** immutable [`Snapshot`] behind
//! **one** `ArcSwap`. The watch task builds each next snapshot and stores
//! it; request handlers only load. Maps are persistent (structurally
//! shared HAMTs), so applying a delta costs O(changes · log n) and the
//! previous snapshot stays valid for requests still holding it.
//!
//! A snapshot holds the revision, tenants, namespaces and the shard map.
//! The namespace map ([`Namespaces`]) is keyed by the entry itself, hashed
//! by its name, so a name is stored once. A [`NamespaceEntry`] caches its
//! tenant id and its plugin handle, opened by the first call that needs it
//! ([`NamespaceEntry::key_value`] / [`NamespaceEntry::time_series`]): a new
//! entry — a metadata change — opens anew, and no call re-derives settings.
//! What lives as long as the namespace's incarnation (in-flight count, quota
//! tracker, request series, what the provisioner did) is one [`Local`],
//! shared by that incarnation's entries. Memory per namespace is measured by
//! `scripts/bench-namespace-memory.sh` (`docs/benchmarks.md`).

use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use arc_swap::ArcSwap;
use prism_plugin_api::kv::KeyValueHandle;
use prism_plugin_api::ts::TimeSeriesHandle;
use prism_proto::control::{
    Backend, Delta, Migration, MigrationStep, Namespace, NamespaceStatus, Shard, SnapshotChunk, Tenant, TenantState,
    change,
};

use crate::error::{GatewayError, Result};
use crate::metrics::{NamespaceBook, RequestSeries, SeriesSlot};
use crate::plugins::Plugins;
use crate::quota::{Live, TrackerSlot};

/// The refusal of a namespace whose backend has no plugin serving
/// `abstraction` on this gateway.
fn not_served(backend: Backend, abstraction: &str) -> GatewayError {
    GatewayError::FailedPrecondition(format!(
        "backend {} does not serve {abstraction} on this gateway",
        prism_proto::capabilities::backend_name(backend)
    ))
}

/// What the gateway keeps for one incarnation of a namespace, across the
/// snapshots that hold it: one allocation per namespace, built empty and
/// filled by whoever needs its part.
#[derive(Debug, Default)]
pub struct Local {
    /// Requests in flight on this gateway, so deletion can drain them.
    pub in_flight: AtomicUsize,
    /// The quota tracker, once a request has looked it up.
    pub quota_tracker: TrackerSlot,
    /// The request metrics, once a request has counted into them (see
    /// `metrics::NamespaceBook`).
    pub metrics: SeriesSlot,
    /// The metadata revision the provisioner last acted on (0: none), so
    /// it does not provision twice for the same revision.
    pub handled_revision: AtomicU64,
    /// The owner epoch (`owner_since`) at which this shard last made sure
    /// the backend resources are there (0: never): a namespace that moves
    /// here ACTIVE (another shard provisioned it) is checked once.
    pub adopted_epoch: AtomicU64,
    /// The [`policy_fingerprint`] of the spec whose settings this gateway
    /// last pushed into the backend (0: none yet), so a changed spec is
    /// applied once, and a restarted gateway applies it again.
    pub applied_policy: AtomicU64,
    /// Shadow reads of the namespace's migration at VERIFY, until this
    /// gateway reports them.
    pub shadow: crate::migration::ShadowCounts,
    /// Reads of the namespace seen while shadow-reading, for sampling.
    pub shadow_seen: AtomicU64,
}

/// What of a spec the backend may hold — its policies and its backend
/// settings — hashed (xxHash64 of their encoding; never 0). A spec whose
/// fingerprint differs from [`Local::applied_policy`] is due to be
/// applied (`background/provision.rs`).
pub fn policy_fingerprint(spec: &prism_proto::control::NamespaceSpec) -> u64 {
    use prost::Message;
    let mut bytes = spec.policies.as_ref().map(|p| p.encode_to_vec()).unwrap_or_default();
    bytes.push(0xff); // where one part ends
    bytes.extend(spec.backend_config.as_ref().map(|c| c.encode_to_vec()).unwrap_or_default());
    twox_hash::XxHash64::oneshot(0, &bytes).max(1)
}

/// The latest version of a namespace's event schema, as the owner
/// validates writes against it: compiled (JSON Schema validators, protobuf
/// descriptors) by the first write that needs it, and shared by every
/// snapshot's entry of the namespace while it stays the latest version,
/// so a metadata change that is not a new schema compiles nothing.
#[derive(Debug)]
pub struct SchemaSlot {
    pub version: u32,
    schema: prism_proto::control::EventSchema,
    compiled: OnceLock<std::result::Result<Arc<prism_schema::Compiled>, String>>,
}

impl SchemaSlot {
    fn new(version: prism_proto::control::SchemaVersion) -> Self {
        Self { version: version.version, schema: version.schema.unwrap_or_default(), compiled: OnceLock::new() }
    }

    /// The compiled version. The control plane compiled it before storing
    /// it, so a failure here is a disagreement between the two (another
    /// release): writes are refused as INTERNAL rather than let through.
    pub fn compiled(&self) -> Result<&prism_schema::Compiled> {
        let compiled = self.compiled.get_or_init(|| {
            prism_schema::Compiled::compile(self.version, &self.schema, "schema")
                .map(Arc::new)
                .map_err(|v| v.to_string())
        });
        compiled.as_deref().map_err(|e| {
            GatewayError::Internal(format!("schema version {} does not compile on this gateway: {e}", self.version))
        })
    }
}

/// A namespace as the gateway routes it.
#[derive(Debug)]
pub struct NamespaceEntry {
    /// What plugins see: name, the incarnation its data is keyed by
    /// (`data_revision`, else `create_revision`), spec.
    pub ns: prism_plugin_api::Namespace,
    /// The namespace's own incarnation (`create_revision`): what the
    /// control plane knows it by, and page tokens are bound to (they
    /// continue across a migration's cutover).
    pub incarnation: u64,
    /// Where the name's `/` is, found once when the entry is built: the
    /// request path reads the tenant without splitting the name.
    slash: usize,
    pub revision: u64,
    pub shard_id: String,
    /// The revision at which the namespace came to its current shard (of
    /// this incarnation). Cached reads are keyed by it, so a shard that
    /// loses a namespace and later gets it back never serves what it
    /// cached before.
    pub owner_since: u64,
    pub status: NamespaceStatus,
    pub status_reason: String,
    /// The store id of the one instance of the shard that holds the
    /// namespace's data (embedded namespaces; `Namespace.owner_store_id`),
    /// empty when every instance serves it. A boxed `str`: no heap and 16
    /// bytes for the many namespaces without one.
    pub owner_store: Box<str>,
    /// What the backend holds of the spec, as last reported
    /// (`Namespace.backend_settings`): the provisioner reports only what
    /// changes it.
    pub backend_settings: Box<[prism_proto::control::BackendSetting]>,
    /// The namespace's migration, while one runs (`Namespace.migration`,
    /// ARCHITECTURE.md "The life of a migration").
    pub migration: Option<Box<prism_proto::control::Migration>>,
    /// The latest version of the namespace's event schema, if it has one
    /// (only the latest: older versions are not needed to write, and reads
    /// find an event's version stored with it).
    pub schema: Option<Arc<SchemaSlot>>,
    /// What this gateway keeps for the namespace's incarnation, shared by
    /// every snapshot's entry of it (a new snapshot does not lose it).
    pub local: Arc<Local>,
    /// The namespace opened on its plugin, once a call has needed it: the
    /// plugin's per-namespace state (settings, pool, names, statements),
    /// worked out once per metadata change, not per call. Not shared with
    /// the next snapshot's entry, which may carry another spec: that one
    /// opens its own on first use. Lazily, because a gateway holds every
    /// namespace and calls few of them (see `prism_plugin_api`'s docs).
    opened: OnceLock<Opened>,
    /// The migration's target opened as KeyValue on its plugin, once a
    /// dual write needed it ([`Self::dual_write_target`]).
    target: OnceLock<Opened>,
}

/// A namespace opened on its plugin, as the abstraction it was opened for.
enum Opened {
    KeyValue(Arc<dyn KeyValueHandle>),
    TimeSeries(Arc<dyn TimeSeriesHandle>),
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::KeyValue(_) => "KeyValue",
            Self::TimeSeries(_) => "TimeSeries",
        })
    }
}

impl NamespaceEntry {
    fn new(meta: Namespace, previous: Option<&NamespaceEntry>) -> Self {
        // The incarnation plugins key the data by: the namespace's, or a
        // migration's target once it cleaned up (`Namespace.data_revision`).
        let data_revision = if meta.data_revision == 0 { meta.create_revision } else { meta.data_revision };
        // What this gateway keeps goes with the data: a migrated namespace
        // starts afresh (its policies applied to the target, its resources
        // adopted, its cache keyed anew).
        let same_incarnation =
            previous.filter(|p| p.incarnation == meta.create_revision && p.ns.create_revision == data_revision);
        let local = same_incarnation.map_or_else(Default::default, |p| p.local.clone());
        let owner_since =
            same_incarnation.filter(|p| p.shard_id == meta.shard_id).map_or(meta.revision, |p| p.owner_since);
        // Names come validated from the control plane; one without a `/`
        // is its own tenant, as `prism_plugin_api::Namespace::tenant` says.
        let slash = meta.name.find('/').unwrap_or(meta.name.len());
        let latest = meta.schema.and_then(|history| history.versions.into_iter().last());
        let schema = latest.map(|latest| {
            let kept = same_incarnation.and_then(|p| p.schema.clone()).filter(|s| s.version == latest.version);
            kept.unwrap_or_else(|| Arc::new(SchemaSlot::new(latest)))
        });
        Self {
            schema,
            slash,
            ns: prism_plugin_api::Namespace {
                name: meta.name,
                create_revision: data_revision,
                spec: meta.spec.unwrap_or_default(),
            },
            incarnation: meta.create_revision,
            revision: meta.revision,
            shard_id: meta.shard_id,
            owner_since,
            status: NamespaceStatus::try_from(meta.status).unwrap_or(NamespaceStatus::Unspecified),
            status_reason: meta.status_reason,
            owner_store: meta.owner_store_id.into_boxed_str(),
            backend_settings: meta.backend_settings.into_boxed_slice(),
            migration: meta.migration,
            local,
            opened: OnceLock::new(),
            target: OnceLock::new(),
        }
    }

    /// The store id of the one instance that holds the namespace's data,
    /// if one does (see [`Self::owner_store`]).
    pub fn owner(&self) -> Option<&str> {
        Some(&*self.owner_store).filter(|s| !s.is_empty())
    }

    /// Whether the instance `store_id` of shard `shard_id` serves, provisions
    /// and deletes this namespace: its shard's, and its owner when it has
    /// one (the other instances forward to the owner).
    pub fn held_by(&self, shard_id: &str, store_id: &str) -> bool {
        self.shard_id == shard_id && self.owner().is_none_or(|owner| owner == store_id)
    }

    /// The namespace's backend.
    pub fn backend(&self) -> Backend {
        Backend::try_from(self.ns.spec.backend).unwrap_or(Backend::Unspecified)
    }

    /// The namespace opened as KeyValue on its plugin of `plugins`: opened
    /// by the first call, kept for the calls after. A failure to open is
    /// not kept: each call tries again, and answers it.
    pub fn key_value(&self, plugins: &Plugins) -> Result<&dyn KeyValueHandle> {
        Ok(self.open_key_value(plugins)?.as_ref())
    }

    /// [`Self::key_value`], shared (for a call that outlives the snapshot
    /// it found the entry in).
    pub fn key_value_arc(&self, plugins: &Plugins) -> Result<Arc<dyn KeyValueHandle>> {
        Ok(self.open_key_value(plugins)?.clone())
    }

    fn open_key_value(&self, plugins: &Plugins) -> Result<&Arc<dyn KeyValueHandle>> {
        if self.opened.get().is_none() {
            let backend = self.backend();
            let plugin = plugins.get(backend).and_then(|p| p.key_value());
            let handle = plugin.ok_or_else(|| not_served(backend, "KEY_VALUE"))?.open(&self.ns)?;
            // A racing call may have opened it too: either handle serves.
            let _ = self.opened.set(Opened::KeyValue(handle));
        }
        match self.opened.get() {
            Some(Opened::KeyValue(handle)) => Ok(handle),
            _ => Err(GatewayError::Internal(format!("namespace {} is not open as KEY_VALUE", self.ns.name))),
        }
    }

    /// The migration's step, while one runs.
    pub fn migration_step(&self) -> Option<MigrationStep> {
        self.migration.as_ref().map(|m| MigrationStep::try_from(m.step).unwrap_or(MigrationStep::Unspecified))
    }

    /// Where writes go besides the source while the namespace migrates:
    /// the target ([`Self::migration_target`]), from DUAL_WRITE through
    /// CUTOVER (ARCHITECTURE.md, "The life of a migration"); `None` at any
    /// other step.
    pub fn dual_write_target(&self, plugins: &Plugins) -> Result<Option<&dyn KeyValueHandle>> {
        match self.dual_writing() {
            Some(migration) => Ok(Some(self.open_target(plugins, migration)?.as_ref())),
            None => Ok(None),
        }
    }

    /// The migration whose target writes also go to: from DUAL_WRITE
    /// through CUTOVER.
    fn dual_writing(&self) -> Option<&Migration> {
        let dual = matches!(
            self.migration_step(),
            Some(MigrationStep::DualWrite | MigrationStep::Backfill | MigrationStep::Verify | MigrationStep::Cutover)
        );
        self.migration.as_deref().filter(|_| dual)
    }

    /// The migration's target as KeyValue, whatever the step (`None`
    /// without a migration): opened on its plugin, or, held by another
    /// instance (an embedded target on another instance's disk), reached
    /// through it ([`crate::peer::RemoteTarget`]). Opened once, by the
    /// first call that needs it.
    pub fn migration_target(&self, plugins: &Plugins) -> Result<Option<Arc<dyn KeyValueHandle>>> {
        match self.migration.as_deref() {
            Some(migration) => Ok(Some(self.open_target(plugins, migration)?.clone())),
            None => Ok(None),
        }
    }

    /// As [`Self::dual_write_target`], as TimeSeries: where events are
    /// written besides the source, from DUAL_WRITE through CUTOVER.
    pub fn time_series_target(&self, plugins: &Plugins) -> Result<Option<&dyn TimeSeriesHandle>> {
        match self.dual_writing() {
            Some(migration) => Ok(Some(self.open_time_series_target(plugins, migration)?.as_ref())),
            None => Ok(None),
        }
    }

    /// The sides a TimeSeries call uses, as [`Self::key_value_sides`]:
    /// the one it reads (and writes first) and the one it also writes.
    /// From CUTOVER the target reads; events are idempotent by identity,
    /// so the order of the two writes matters only to reads, and a
    /// gateway still before the cutover, reading the source, sees every
    /// acknowledged write.
    pub fn time_series_sides(
        &self,
        plugins: &Plugins,
    ) -> Result<(&dyn TimeSeriesHandle, Option<&dyn TimeSeriesHandle>)> {
        let source = self.time_series(plugins)?;
        match self.time_series_target(plugins)? {
            Some(target) if self.migration_step() == Some(MigrationStep::Cutover) => Ok((target, Some(source))),
            target => Ok((source, target)),
        }
    }

    /// The incarnation the namespace's reads are served from: the
    /// migration's target from CUTOVER on (it becomes the namespace's own
    /// at the cleanup commit, under the same incarnation), else the
    /// namespace's data. Tails are keyed by it (`tail.rs`): one that
    /// followed the source ends at CUTOVER, one that follows the target
    /// goes on after the cleanup commit.
    pub fn reading_revision(&self) -> u64 {
        match self.migration.as_deref() {
            Some(m) if m.step == MigrationStep::Cutover as i32 => m.id,
            _ => self.ns.create_revision,
        }
    }

    fn open_time_series_target(&self, plugins: &Plugins, migration: &Migration) -> Result<&Arc<dyn TimeSeriesHandle>> {
        if self.target.get().is_none() {
            let owner = migration.target_owner_store_id.as_str();
            if !owner.is_empty() && !plugins.is_local_store(owner) {
                // The control plane starts no such migration: the peer
                // service carries KeyValue only.
                return Err(GatewayError::FailedPrecondition(format!(
                    "namespace {} is migrating to a store of one instance ({owner}); TimeSeries targets there are \
                     not supported",
                    self.ns.name
                )));
            }
            let target = crate::migration::target_namespace(&self.ns, migration);
            let backend = Backend::try_from(target.spec.backend).unwrap_or(Backend::Unspecified);
            let plugin = plugins.get(backend).and_then(|p| p.time_series());
            let handle = plugin.ok_or_else(|| not_served(backend, "TIME_SERIES"))?.open(&target)?;
            let _ = self.target.set(Opened::TimeSeries(handle));
        }
        match self.target.get() {
            Some(Opened::TimeSeries(handle)) => Ok(handle),
            _ => Err(GatewayError::Internal(format!("the target of {} is not open as TIME_SERIES", self.ns.name))),
        }
    }

    fn open_target(&self, plugins: &Plugins, migration: &Migration) -> Result<&Arc<dyn KeyValueHandle>> {
        if self.target.get().is_none() {
            let owner = migration.target_owner_store_id.as_str();
            let handle: Arc<dyn KeyValueHandle> = if owner.is_empty() || plugins.is_local_store(owner) {
                let target = crate::migration::target_namespace(&self.ns, migration);
                let backend = Backend::try_from(target.spec.backend).unwrap_or(Backend::Unspecified);
                let plugin = plugins.get(backend).and_then(|p| p.key_value());
                plugin.ok_or_else(|| not_served(backend, "KEY_VALUE"))?.open(&target)?
            } else {
                let peers = plugins.peers().ok_or_else(|| {
                    GatewayError::Unavailable(format!(
                        "namespace {} is migrating to a store of one instance ({owner}), which this gateway cannot reach",
                        self.ns.name
                    ))
                })?;
                peers.target(&self.ns.name, migration)
            };
            let _ = self.target.set(Opened::KeyValue(handle));
        }
        match self.target.get() {
            Some(Opened::KeyValue(handle)) => Ok(handle),
            _ => Err(GatewayError::Internal(format!("the target of {} is not open as KEY_VALUE", self.ns.name))),
        }
    }

    /// Whether this read is one of the sampled fraction a migration at
    /// VERIFY also sends to its target (`Migration.shadow_read_fraction`):
    /// every n-th read of the namespace on this gateway.
    pub fn shadow_sampled(&self) -> bool {
        let Some(m) = self.migration.as_deref() else { return false };
        if m.step != MigrationStep::Verify as i32
            || !m.shadow_read_fraction.is_finite()
            || m.shadow_read_fraction <= 0.0
        {
            return false;
        }
        let every = (1.0 / m.shadow_read_fraction.min(1.0)).round().max(1.0) as u64;
        self.local.shadow_seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed).is_multiple_of(every)
    }

    /// The sides a KeyValue call uses: the one it reads (and writes
    /// first) and the one it also writes, if any. The source, then the
    /// target while the namespace migrates; from CUTOVER the target reads
    /// and is written first, the source written after it, so a gateway
    /// still before the cutover, reading the source, sees every
    /// acknowledged write.
    pub fn key_value_sides(&self, plugins: &Plugins) -> Result<(&dyn KeyValueHandle, Option<&dyn KeyValueHandle>)> {
        let source = self.key_value(plugins)?;
        match self.dual_write_target(plugins)? {
            Some(target) if self.migration_step() == Some(MigrationStep::Cutover) => Ok((target, Some(source))),
            target => Ok((source, target)),
        }
    }

    /// A migrated namespace's source as its plugin sees it, from the
    /// cleanup commit until the source is removed (`Migration.source`).
    pub fn migration_source(&self) -> Option<prism_plugin_api::Namespace> {
        let source = self.migration.as_deref()?.source.as_ref()?;
        Some(prism_plugin_api::Namespace {
            name: self.ns.name.clone(),
            create_revision: source.data_revision,
            spec: source.spec.clone().unwrap_or_default(),
        })
    }

    /// As [`Self::key_value`], as TimeSeries.
    pub fn time_series(&self, plugins: &Plugins) -> Result<&dyn TimeSeriesHandle> {
        if self.opened.get().is_none() {
            let backend = self.backend();
            let plugin = plugins.get(backend).and_then(|p| p.time_series());
            let handle = plugin.ok_or_else(|| not_served(backend, "TIME_SERIES"))?.open(&self.ns)?;
            let _ = self.opened.set(Opened::TimeSeries(handle));
        }
        match self.opened.get() {
            Some(Opened::TimeSeries(handle)) => Ok(handle.as_ref()),
            _ => Err(GatewayError::Internal(format!("namespace {} is not open as TIME_SERIES", self.ns.name))),
        }
    }

    /// What quota admission needs of this namespace.
    pub fn admitting(&self) -> crate::quota::Admitting<'_> {
        crate::quota::Admitting {
            ns: &self.ns,
            tenant: self.tenant(),
            tracker_slot: &self.local.quota_tracker,
            alone: self.owner().is_some(),
        }
    }

    /// The namespace's tenant id.
    pub fn tenant(&self) -> &str {
        self.ns.name.get(..self.slash).unwrap_or_default()
    }

    /// The namespace's request series in `book`: the one cached in its
    /// [`Local`], else made there.
    pub fn request_series(&self, book: &NamespaceBook) -> Arc<RequestSeries> {
        book.of(&self.ns.name, self.tenant(), &self.local.metrics)
    }

    /// An ACTIVE entry of no shard, for unit tests.
    #[cfg(test)]
    pub(crate) fn for_tests(name: &str, create_revision: u64) -> Self {
        let ns = Namespace {
            name: name.into(),
            revision: create_revision,
            create_revision,
            status: NamespaceStatus::Active as i32,
            ..Namespace::default()
        };
        Self::new(ns, None)
    }
}

/// The state of a tenant as the snapshot has it (`None`: not in it).
pub fn state_of(tenant: Option<&Tenant>) -> TenantState {
    tenant.and_then(|t| TenantState::try_from(t.state).ok()).unwrap_or(TenantState::Unspecified)
}

/// The namespaces of a snapshot, by name. The key is the entry itself
/// (hashed and compared by its name), so a name is stored once, in its
/// entry, and a map slot is one pointer.
#[derive(Debug, Clone, Default)]
pub struct Namespaces(imbl::HashMap<ByName, ()>);

/// An entry as its own key.
#[derive(Debug, Clone)]
struct ByName(Arc<NamespaceEntry>);

impl std::hash::Hash for ByName {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // As `str` hashes, so lookups by `&str` find it (`Borrow`).
        self.0.ns.name.as_str().hash(state);
    }
}

impl PartialEq for ByName {
    fn eq(&self, other: &Self) -> bool {
        self.0.ns.name == other.0.ns.name
    }
}

impl Eq for ByName {}

impl std::borrow::Borrow<str> for ByName {
    fn borrow(&self) -> &str {
        &self.0.ns.name
    }
}

impl Namespaces {
    pub fn get(&self, name: &str) -> Option<&Arc<NamespaceEntry>> {
        self.0.get_key_value(name).map(|(k, ())| &k.0)
    }

    /// Adds `entry`, replacing the entry of the same name.
    pub fn insert(&mut self, entry: Arc<NamespaceEntry>) {
        // imbl's `insert` replaces the key as well as the value (unlike
        // std's), so the map holds the new entry.
        self.0.insert(ByName(entry), ());
    }

    pub fn values(&self) -> impl Iterator<Item = &Arc<NamespaceEntry>> {
        self.0.keys().map(|k| &k.0)
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(|k| k.0.ns.name.as_str())
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Tenants, namespaces and the shard map at one revision.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub revision: u64,
    pub tenants: imbl::HashMap<String, Arc<Tenant>>,
    pub namespaces: Namespaces,
    pub shards: imbl::HashMap<String, Arc<Shard>>,
}

impl Snapshot {
    pub fn namespace(&self, name: &str) -> Option<&Arc<NamespaceEntry>> {
        self.namespaces.get(name)
    }

    pub fn tenant(&self, id: &str) -> Option<&Arc<Tenant>> {
        self.tenants.get(id)
    }

    /// `host:port` of every registered instance of `shard_id`.
    pub fn endpoints(&self, shard_id: &str) -> Vec<String> {
        self.shards.get(shard_id).map(|s| s.instances.iter().map(|i| i.endpoint.clone()).collect()).unwrap_or_default()
    }

    /// The endpoint of the registered instance of `shard_id` whose store is
    /// `store_id`, if it is registered.
    pub fn store_endpoint(&self, shard_id: &str, store_id: &str) -> Option<String> {
        let shard = self.shards.get(shard_id)?;
        shard.instances.iter().find(|i| i.store_id == store_id).map(|i| i.endpoint.clone())
    }

    pub fn tenant_state(&self, id: &str) -> TenantState {
        state_of(self.tenant(id).map(Arc::as_ref))
    }

    /// The next snapshot: this one with `delta` applied. Returns the names
    /// of namespaces that changed.
    pub fn apply(&self, delta: &Delta) -> (Snapshot, Vec<String>) {
        let mut next = self.clone();
        next.revision = delta.revision;
        let mut changed = Vec::new();
        for c in &delta.changes {
            match &c.change {
                Some(change::Change::Tenant(t)) => {
                    next.tenants.insert(t.id.clone(), Arc::new(t.clone()));
                }
                Some(change::Change::Namespace(n)) => {
                    changed.push(n.name.clone());
                    let entry = NamespaceEntry::new(n.clone(), self.namespaces.get(&n.name).map(Arc::as_ref));
                    next.namespaces.insert(Arc::new(entry));
                }
                Some(change::Change::Shard(s)) => {
                    next.shards.insert(s.shard_id.clone(), Arc::new(s.clone()));
                }
                Some(change::Change::ShardRemoved(id)) => {
                    next.shards.remove(id);
                }
                None => {}
            }
        }
        (next, changed)
    }
}

/// The quota sweep's question: is a tracker's subject still served here.
impl Live for Snapshot {
    fn namespace_live(&self, name: &str, incarnation: u64) -> bool {
        self.namespace(name)
            .is_some_and(|e| e.ns.create_revision == incarnation && e.status != NamespaceStatus::Deleted)
    }

    fn tenant_live(&self, id: &str) -> bool {
        self.tenant(id).is_some() && self.tenant_state(id) != TenantState::Deleted
    }
}

/// Builds a snapshot from a Watch stream's snapshot chunks.
#[derive(Debug)]
pub struct SnapshotBuilder {
    revision: u64,
    tenants: imbl::HashMap<String, Arc<Tenant>>,
    namespaces: Namespaces,
    shards: imbl::HashMap<String, Arc<Shard>>,
}

impl SnapshotBuilder {
    pub fn new(revision: u64) -> Self {
        Self { revision, tenants: Default::default(), namespaces: Default::default(), shards: Default::default() }
    }

    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Adds a chunk; entries of `previous` keep their in-flight counters.
    pub fn add(&mut self, chunk: SnapshotChunk, previous: &Snapshot) {
        for t in chunk.tenants {
            self.tenants.insert(t.id.clone(), Arc::new(t));
        }
        for s in chunk.shards {
            self.shards.insert(s.shard_id.clone(), Arc::new(s));
        }
        for n in chunk.namespaces {
            let prev = previous.namespaces.get(&n.name).map(Arc::as_ref);
            let entry = NamespaceEntry::new(n, prev);
            self.namespaces.insert(Arc::new(entry));
        }
    }

    pub fn build(self) -> Snapshot {
        Snapshot { revision: self.revision, tenants: self.tenants, namespaces: self.namespaces, shards: self.shards }
    }
}

/// The shared, hot-swapped snapshot plus how fresh it is.
#[derive(Debug)]
pub struct Metadata {
    current: ArcSwap<Snapshot>,
    /// When the watch stream was last known healthy (its last message);
    /// `None` while connected.
    disconnected_since: std::sync::Mutex<Option<Instant>>,
    /// When the last message of the watch stream arrived.
    last_message: std::sync::Mutex<Instant>,
}

impl Default for Metadata {
    fn default() -> Self {
        Self {
            current: ArcSwap::from_pointee(Snapshot::default()),
            disconnected_since: std::sync::Mutex::new(Some(Instant::now())),
            last_message: std::sync::Mutex::new(Instant::now()),
        }
    }
}

impl Metadata {
    /// The current snapshot (lock-free).
    pub fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }

    pub fn load_full(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    pub(crate) fn store(&self, next: Snapshot) {
        self.current.store(Arc::new(next));
    }

    pub(crate) fn set_connected(&self, connected: bool) {
        let last = self.last_message.lock().map_or_else(|_| Instant::now(), |t| *t);
        if let Ok(mut since) = self.disconnected_since.lock() {
            match (connected, since.is_some()) {
                (true, _) => *since = None,
                // Stale since the last message heard, not since the loss
                // was noticed (a dead connection can take a keep-alive
                // timeout to notice).
                (false, false) => *since = Some(last),
                (false, true) => {}
            }
        }
    }

    /// Notes a message from the control plane (the stream is alive).
    pub(crate) fn heard(&self) {
        if let Ok(mut last) = self.last_message.lock() {
            *last = Instant::now();
        }
    }

    /// How long the snapshot may have been missing changes: zero while the
    /// watch stream is connected, else the time since its last message.
    pub fn staleness(&self) -> std::time::Duration {
        self.disconnected_since.lock().ok().and_then(|s| s.map(|t| t.elapsed())).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prism_proto::control::Change;

    fn ns(name: &str, rev: u64, create: u64) -> Namespace {
        Namespace { name: name.into(), revision: rev, create_revision: create, ..Namespace::default() }
    }

    fn delta(rev: u64, changes: Vec<change::Change>) -> Delta {
        Delta {
            revision: rev,
            changes: changes.into_iter().map(|c| Change { change: Some(c) }).collect(),
            commit_time: None,
        }
    }

    #[test]
    fn deltas_replace_objects_and_keep_old_snapshots_intact() {
        let s0 = Snapshot::default();
        let (s1, changed) = s0.apply(&delta(1, vec![change::Change::Namespace(ns("a/x", 1, 1))]));
        assert_eq!(changed, ["a/x"]);
        let (s2, _) = s1.apply(&delta(2, vec![change::Change::Namespace(ns("a/x", 2, 1))]));
        assert_eq!(s1.namespace("a/x").map(|e| e.revision), Some(1));
        assert_eq!(s2.namespace("a/x").map(|e| e.revision), Some(2));
        assert_eq!(s2.revision, 2);
        assert!(s0.namespace("a/x").is_none());
    }

    #[test]
    fn local_state_follows_the_incarnation() {
        let (s1, _) = Snapshot::default().apply(&delta(1, vec![change::Change::Namespace(ns("a/x", 1, 1))]));
        let (s2, _) = s1.apply(&delta(2, vec![change::Change::Namespace(ns("a/x", 2, 1))]));
        let (s3, _) = s2.apply(&delta(3, vec![change::Change::Namespace(ns("a/x", 3, 3))]));
        let [e1, e2, e3] = [&s1, &s2, &s3].map(|s| s.namespace("a/x").cloned().expect("present"));
        assert!(Arc::ptr_eq(&e1.local, &e2.local));
        assert!(!Arc::ptr_eq(&e2.local, &e3.local));
    }

    #[test]
    fn a_schema_version_is_compiled_once_across_snapshots() {
        use prism_proto::control::{SchemaHistory, SchemaVersion};
        let with = |rev: u64, create: u64, versions: &[u32]| {
            let history = SchemaHistory {
                versions: versions.iter().map(|v| SchemaVersion { version: *v, ..Default::default() }).collect(),
                ..Default::default()
            };
            change::Change::Namespace(Namespace { schema: Some(Box::new(history)), ..ns("a/x", rev, create) })
        };
        let (s1, _) = Snapshot::default().apply(&delta(1, vec![with(1, 1, &[1])]));
        let (s2, _) = s1.apply(&delta(2, vec![with(2, 1, &[1])]));
        let (s3, _) = s2.apply(&delta(3, vec![with(3, 1, &[1, 2])]));
        let (s4, _) = s3.apply(&delta(4, vec![with(4, 4, &[1, 2])]));
        let (s5, _) = s4.apply(&delta(5, vec![change::Change::Namespace(ns("a/x", 5, 4))]));
        let slot = |s: &Snapshot| s.namespace("a/x").and_then(|e| e.schema.clone());
        let [v1, v1_again, v2, v2_reborn] = [&s1, &s2, &s3, &s4].map(|s| slot(s).expect("a schema"));
        v1.compiled().expect("compiles");
        assert!(Arc::ptr_eq(&v1, &v1_again), "a change that is not a new version compiles nothing");
        assert_eq!((v2.version, Arc::ptr_eq(&v1, &v2)), (2, false));
        assert!(!Arc::ptr_eq(&v2, &v2_reborn), "a new incarnation starts afresh");
        assert!(slot(&s5).is_none());
    }

    #[test]
    fn the_owner_epoch_moves_only_with_the_shard() {
        let on = |rev: u64, create: u64, shard: &str| {
            change::Change::Namespace(Namespace { shard_id: shard.into(), ..ns("a/x", rev, create) })
        };
        let (s1, _) = Snapshot::default().apply(&delta(1, vec![on(1, 1, "s-0")]));
        let (s2, _) = s1.apply(&delta(2, vec![on(2, 1, "s-0")]));
        let (s3, _) = s2.apply(&delta(3, vec![on(3, 1, "s-1")]));
        let (s4, _) = s3.apply(&delta(4, vec![on(4, 1, "s-0")]));
        let epoch = |s: &Snapshot| s.namespace("a/x").map(|e| e.owner_since);
        assert_eq!([epoch(&s1), epoch(&s2), epoch(&s3), epoch(&s4)], [Some(1), Some(1), Some(3), Some(4)]);
    }

    #[test]
    fn a_namespace_is_opened_once_per_entry() {
        use prism_plugin_embedded::{EmbeddedConfig, EmbeddedPlugin};
        use prism_proto::control::{Abstraction, NamespaceSpec};
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut plugins = Plugins::default();
        plugins.insert(Arc::new(EmbeddedPlugin::open(EmbeddedConfig::new(dir.path())).expect("open the store")));
        let spec = NamespaceSpec {
            abstraction: Abstraction::KeyValue as i32,
            backend: Backend::Embedded as i32,
            ..NamespaceSpec::default()
        };
        let at = |rev: u64| change::Change::Namespace(Namespace { spec: Some(spec.clone()), ..ns("a/x", rev, 1) });
        let (s1, _) = Snapshot::default().apply(&delta(1, vec![at(1)]));
        let (s2, _) = s1.apply(&delta(2, vec![at(2)]));
        let [e1, e2] = [&s1, &s2].map(|s| s.namespace("a/x").cloned().expect("present"));
        let first = e1.key_value(&plugins).expect("opened");
        let again = e1.key_value(&plugins).expect("kept");
        assert!(std::ptr::addr_eq(first, again), "one handle per entry");
        let next = e2.key_value(&plugins).expect("opened");
        assert!(!std::ptr::addr_eq(first, next), "a metadata change opens anew");
        assert!(matches!(e1.time_series(&plugins), Err(GatewayError::Internal(_))), "opened as KeyValue");
        let none = Snapshot::default().apply(&delta(1, vec![at(1)])).0;
        let refused = none.namespace("a/x").expect("present").key_value(&Plugins::default()).err();
        assert!(matches!(refused, Some(GatewayError::FailedPrecondition(_))), "no plugin for the backend");
    }

    #[test]
    fn shard_changes_maintain_the_shard_map() {
        let shard = |id: &str, endpoint: &str| {
            change::Change::Shard(Shard {
                shard_id: id.into(),
                instances: vec![prism_proto::control::ShardInstance {
                    endpoint: endpoint.into(),
                    ..Default::default()
                }],
                revision: 0,
            })
        };
        let (s1, _) = Snapshot::default().apply(&delta(1, vec![shard("s-0", "h:1"), shard("s-1", "h:2")]));
        assert_eq!(s1.endpoints("s-1"), ["h:2"]);
        let (s2, _) = s1.apply(&delta(2, vec![change::Change::ShardRemoved("s-1".into())]));
        assert!(s2.endpoints("s-1").is_empty());
        assert_eq!(s2.endpoints("s-0"), ["h:1"]);
    }
}
