//! The shard registry and the assignment it drives (SPEC §5).
//!
//! Gateways register `{shard_id, endpoint}` and get an instance id and a
//! lease; heartbeats renew the lease; an instance whose lease expired is
//! removed by the sweeper of any control-plane replica. Registrations,
//! renewals and removals are ordinary commits: the shard map is part of
//! the revisioned metadata and reaches every watcher in order.
//!
//! **Live shards** are the static shards of the configuration plus every
//! registered shard with at least one instance. Whenever that set changes,
//! the same commit reassigns every namespace whose rendezvous winner
//! changed (pins win over the hash). Namespaces on the embedded backend
//! keep their shard once provisioned: their data is on that shard's disk,
//! so moving them would lose it.
//!
//! Renewals are committed only when less than half of the lease is left,
//! so a gateway heartbeating every quarter lease commits about once per
//! half lease, and a lost heartbeat still leaves two more before expiry.
//! Several instances of one shard id are replicas. A snapshot carries the
//! shard map in its first chunk. Lease times are wall-clock: replicas of
//! the control plane need roughly synchronised clocks. `ResolveNamespace`
//! answers the static endpoints and the registered instances whose lease
//! has not expired.
//!
//! # Leases across a restart
//!
//! A stored lease end says when the instance last renewed, but a gateway
//! cannot renew while the control plane is down: it keeps serving from
//! its snapshot and heartbeats again as soon as it can (every eighth of a
//! lease after a failure). So a replica does not hold its own absence
//! against anyone: to it, no lease ends before one whole lease after it
//! started (`ControlPlane::lease_end`). Sweeping at start what expired
//! during the outage would instead remove every gateway that outlived it:
//! their embedded namespaces DEGRADED and refused, their shards gone from
//! the live set and every shared namespace moved away, then all of it
//! undone by the next heartbeats. A gateway that really died goes one
//! lease after the restart.
//!
//! # Assignment
//!
//! A new namespace goes to its pin, else to the rendezvous winner among
//! the *shared* live shards: those no namespace holds as dedicated
//! (`Placement.dedicated`, [`crate::dedicated`]). With none — no shard
//! live, or every live one dedicated — it waits unassigned in
//! PROVISIONING: to hashed namespaces a dedicated shard is as if it were
//! not live. The dedicated set is part of the shard map the settler
//! compares, so when a shard becomes dedicated the settler moves the
//! hashed namespaces on it to their new winners (its embedded ones, whose
//! data is on its disk, must be moved or deleted before it may), and when
//! the dedication ends about 1/N of them move back, as when a shard
//! joins. When a shard joins N others about 1/(N+1) of the
//! namespaces move (measured in `docs/benchmarks.md`); when one leaves,
//! only its own. Pins always win. A moved namespace keeps its status
//! (ACTIVE stays ACTIVE: a shared backend already has its resources); one
//! still PROVISIONING is provisioned by its new owner. That embedded
//! namespaces wait for their shard to come back is also why a replicated
//! shard should use a shared backend. A namespace's `shard_id` changes
//! only to its placement among the live shards as published at the
//! revision of that commit (or in its creation): the assignment is a
//! function of the published metadata, never of a replica's memory.
//!
//! # Bounded rebalances
//!
//! The commit that changes the live shards also moves the namespaces it
//! finds misplaced, but at most [`SETTLE_BATCH`] of them (and owner-store
//! changes count the same): a million namespaces are not rewritten in one
//! commit that every watcher must swallow whole, nor read into memory at
//! once (they are read in pages). What it leaves, the settler
//! ([`ControlPlane::settle_pending`], run by every replica whose last
//! settled shard map differs from the stored one: at start, when woken by
//! such a commit, and every quarter lease) moves in further commits of at
//! most [`SETTLE_BATCH`], each conditioned on every registered shard's
//! revision as it read them. A commit that changes the live set rewrites
//! every shard (bumping their revisions), so a settling commit planned
//! against an older map always conflicts and is planned again; a
//! heartbeat renewal makes it re-plan too, harmlessly. Until the settler
//! reaches it, a namespace stays on its recorded shard: served there if
//! that shard is still live (and forwarded from the new owner), or
//! answered UNAVAILABLE by its old owner's absence for the few commits it
//! takes to reach it. Any replica may settle; conditions make concurrent
//! runs harmless.
//!
//! # Handover
//!
//! When the delta arrives, the losing gateway's authorization forwards
//! the namespace's calls to the new owner (or, with forwarding off,
//! refuses them with WRONG_SHARD naming the new owner's endpoints), drops
//! its cached records and closes its tails; cache keys carry the revision
//! at which the namespace came to its shard, so a namespace that leaves
//! and returns is never answered from before. The winner checks the
//! backend once (the plugin's idempotent `provision`) and serves. Between
//! the two deltas — each gateway applies the commit when its own watch
//! delivers it, typically within a millisecond of the other — both may
//! serve the namespace: on a shared backend that is harmless for writes
//! (last writer wins by generation time), but a read served by the
//! loser's cache in that window can be stale by at most that window. A
//! `prism-client` sees at most one redirect per move.
//!
//! # One writer per embedded namespace
//!
//! A shard's instances are replicas, but an embedded namespace's data is on one instance's disk: if each
//! replica served it from its own store, a client spreading its calls
//! over them would read whichever store it reached. So an embedded
//! namespace has an *owner store* (`Namespace.owner_store_id`): the
//! `store_id` an instance registers, which names its data directory (kept
//! in it, so a gateway restarted on the same directory — at any address —
//! is the same owner, and a fresh directory never is). An endpoint would
//! not do: it names an address, not the disk, and a restart elsewhere or
//! a new gateway on a reused address would get it wrong. The owner is
//! decided here, in commits, as a pure function of the metadata
//! ([`settle_owner`]): picked by rendezvous hashing over the shard's
//! registered store ids when the namespace is placed (or, for namespaces
//! placed before the shard had any, by the commit that registers the
//! first), re-picked only while the namespace is still PROVISIONING (no
//! data yet). While the owner is not registered — stopped, or its lease
//! expired — an ACTIVE namespace is DEGRADED with a reason naming it, and
//! ACTIVE again in the commit that registers it back. Gateways serve an
//! owned namespace only on its owner; the others forward to it, or answer
//! UNAVAILABLE while it is away: never from their own, empty store.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use prism_proto::control::{
    AuditEvent, Backend, HeartbeatResponse, Namespace, NamespaceSpec, NamespaceStatus, RegisterShardResponse,
    ResolveNamespaceResponse, Shard, ShardInstance,
};

use crate::assign;
use crate::error::{ControlPlaneError, Result};
use crate::plane::{ControlPlane, MAX_ATTEMPTS, Plan, Target};
use crate::store::{Committed, Condition, Put, Txn};
use crate::validate;

/// The principal of changes the control plane makes on its own (expired
/// leases).
pub const SYSTEM_PRINCIPAL: &str = "control-plane";

fn shard_id(field: &str, id: &str) -> Result<()> {
    prism_proto::names::validate_part(id).map_err(|e| ControlPlaneError::invalid(field, format!("shard id {e}")))
}

fn to_system_time(t: Option<&prost_types::Timestamp>) -> SystemTime {
    t.and_then(|t| SystemTime::try_from(*t).ok()).unwrap_or(SystemTime::UNIX_EPOCH)
}

/// A new, unique instance id: the registration time in microseconds and a
/// process-wide counter, in hex.
fn new_instance_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let micros = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_micros();
    format!("{micros:x}-{:x}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// The shards that can own namespaces: static ones and registered ones.
fn live_shards(static_shards: &[String], registered: &[Shard]) -> BTreeSet<String> {
    static_shards
        .iter()
        .cloned()
        .chain(registered.iter().filter(|s| !s.instances.is_empty()).map(|s| s.shard_id.clone()))
        .collect()
}

/// The shards hashed namespaces are assigned over: the live ones but
/// those a namespace holds as dedicated ([`crate::dedicated`]).
fn shared_shards(live: BTreeSet<String>, dedicated: &BTreeSet<String>) -> BTreeSet<String> {
    live.into_iter().filter(|s| !dedicated.contains(s)).collect()
}

/// The store ids registered for each shard.
type Stores = std::collections::BTreeMap<String, Vec<String>>;

fn stores_of(registered: &[Shard]) -> Stores {
    registered
        .iter()
        .map(|s| {
            let mut ids: Vec<String> =
                s.instances.iter().filter(|i| !i.store_id.is_empty()).map(|i| i.store_id.clone()).collect();
            ids.sort();
            ids.dedup();
            (s.shard_id.clone(), ids)
        })
        .filter(|(_, ids)| !ids.is_empty())
        .collect()
}

/// The start of the reason of an ACTIVE namespace made DEGRADED because its
/// owner store is not registered: only such a namespace is made ACTIVE
/// again when the store comes back (one DEGRADED by its backend stays so
/// until its gateway says otherwise).
pub const OWNER_AWAY: &str = "its data is on instance store ";

fn owner_away_reason(store: &str, shard: &str, last_endpoint: Option<&str>) -> String {
    let at = last_endpoint.map(|e| format!(", last at {e}")).unwrap_or_default();
    format!(
        "{OWNER_AWAY}{store} of shard {shard}{at}, which is not registered (stopped, or its lease expired); \
         it is served again when that instance is back"
    )
}

/// Whether `ns` keeps its data on one gateway's disk.
fn local_data(ns: &Namespace) -> bool {
    ns.spec.as_ref().is_some_and(|s| s.backend == Backend::Embedded as i32)
}

/// The owner store a new namespace of `shard` gets: the rendezvous winner
/// among the shard's registered store ids, empty when it has none.
fn pick_owner(name: &str, shard: &str, stores: &Stores) -> String {
    let here = stores.get(shard).map(Vec::as_slice).unwrap_or_default();
    assign::rendezvous(name, here.iter().map(String::as_str)).unwrap_or_default().to_owned()
}

/// Brings `ns`'s owner store and status in line with the registered
/// `stores` (see the module docs); returns whether it changed.
/// `last_endpoint` says where a store was last registered, for the reason.
pub fn settle_owner<'a>(ns: &mut Namespace, stores: &Stores, last_endpoint: impl Fn(&str) -> Option<&'a str>) -> bool {
    let status = NamespaceStatus::try_from(ns.status).unwrap_or(NamespaceStatus::Unspecified);
    if !local_data(ns) || ns.shard_id.is_empty() || status == NamespaceStatus::Deleted {
        return false;
    }
    let here = stores.get(&ns.shard_id).map(Vec::as_slice).unwrap_or_default();
    let present = here.contains(&ns.owner_store_id);
    // Unowned (placed before the shard had a store id), or nothing
    // provisioned yet: the owner may still be chosen.
    if ns.owner_store_id.is_empty() || (status == NamespaceStatus::Provisioning && !present) {
        let pick = pick_owner(&ns.name, &ns.shard_id, stores);
        if pick == ns.owner_store_id {
            return false;
        }
        ns.owner_store_id = pick;
        return true;
    }
    match status {
        NamespaceStatus::Active if !present => {
            ns.status = NamespaceStatus::Degraded as i32;
            ns.status_reason = owner_away_reason(&ns.owner_store_id, &ns.shard_id, last_endpoint(&ns.owner_store_id));
            true
        }
        NamespaceStatus::Degraded if present && ns.status_reason.starts_with(OWNER_AWAY) => {
            ns.status = NamespaceStatus::Active as i32;
            ns.status_reason = format!("instance store {} of shard {} is back", ns.owner_store_id, ns.shard_id);
            true
        }
        _ => false,
    }
}

/// Where `ns` belongs, or `None` to leave it be: its pin, else the
/// rendezvous winner among `shared` (the live shards no namespace holds as
/// dedicated).
///
/// A namespace being migrated is left where it is: its migration was
/// planned against this placement (the source's holders dual-write and
/// run the backfill, the target was placed beside it), and moving it
/// midway would hand the source to gateways that never took part in the
/// migration's steps. Its placement changes at the cleanup commit (the
/// target's, placed when the migration started), or not at all if it is
/// aborted; the settler places it again once the migration ends.
pub fn placement(ns: &Namespace, shared: &BTreeSet<String>) -> Option<String> {
    if ns.migration.is_some() {
        return None;
    }
    let spec = ns.spec.as_ref();
    let pin = spec.and_then(|s| s.placement.as_deref()).map(|p| p.pinned_shard.as_str()).unwrap_or_default();
    if !pin.is_empty() {
        return Some(pin.to_owned());
    }
    let status = NamespaceStatus::try_from(ns.status).unwrap_or(NamespaceStatus::Unspecified);
    let local_data = spec.is_some_and(|s| s.backend == Backend::Embedded as i32);
    if status == NamespaceStatus::Deleted
        || (local_data && !ns.shard_id.is_empty() && status != NamespaceStatus::Provisioning)
    {
        return None;
    }
    assign::rendezvous(&ns.name, shared.iter().map(String::as_str)).map(str::to_owned)
}

/// Most namespaces one commit settles against the shard map; a rebalance
/// that changes more continues in further commits of this size.
pub const SETTLE_BATCH: usize = 1000;

/// Namespaces read at a time while settling.
const SETTLE_PAGE: usize = 1000;

/// The shard map a settling pass places against.
struct Map<'a> {
    /// The shards hashed namespaces go to ([`shared_shards`]).
    shared: &'a BTreeSet<String>,
    /// Whether namespaces move (else only owner stores settle).
    placing: bool,
    stores: &'a Stores,
}

/// What placement depends on: the live shards, their store ids and the
/// dedicated ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapKey(BTreeSet<String>, Stores, BTreeSet<String>);

impl MapKey {
    fn of(static_shards: &[String], registered: &[Shard], dedicated: BTreeSet<String>) -> Self {
        Self(live_shards(static_shards, registered), stores_of(registered), dedicated)
    }
}

/// The shard map this replica last finished settling against, and a wake-up
/// for the settler when a commit left namespaces unsettled.
#[derive(Debug, Default)]
pub struct SettleState {
    settled: std::sync::Mutex<Option<MapKey>>,
    pub(crate) wake: tokio::sync::Notify,
}

impl SettleState {
    /// Makes the settler look at every namespace again soon: one that the
    /// settler had to leave where it was (a migration running) may be
    /// placed now.
    pub(crate) fn resettle(&self) {
        self.settled(None);
        self.wake.notify_one();
    }

    fn settled(&self, key: Option<MapKey>) {
        if let Ok(mut s) = self.settled.lock() {
            *s = key;
        }
    }

    fn is_settled(&self, key: &MapKey) -> bool {
        self.settled.lock().is_ok_and(|s| s.as_ref() == Some(key))
    }
}

impl ControlPlane {
    fn lease_ttl(&self) -> Duration {
        Duration::from_millis(self.config().shard_lease_ttl_ms)
    }

    /// When `instance`'s lease ends for this replica: as stored, but never
    /// before a whole lease after the replica started (see "Leases across
    /// a restart").
    pub(crate) fn lease_end(&self, instance: &ShardInstance) -> SystemTime {
        to_system_time(instance.lease_expire_time.as_ref()).max(self.started() + self.lease_ttl())
    }

    /// Static and registered shard ids, given the registered shards: what a
    /// pin may name.
    pub(crate) fn known_shards_of(&self, registered: &[Shard]) -> Vec<String> {
        live_shards(&self.config().shards, registered).into_iter().collect()
    }

    /// The shards hashed namespaces are assigned over, given the registered
    /// shards and the `dedicated` ones.
    pub(crate) fn shared_shards_of(&self, registered: &[Shard], dedicated: &BTreeSet<String>) -> BTreeSet<String> {
        shared_shards(live_shards(&self.config().shards, registered), dedicated)
    }

    /// Where a new namespace goes, given the registered shards and the
    /// `dedicated` ones: its pin, or the rendezvous choice among the live
    /// shards not dedicated (empty while there is none); and its owner
    /// store, empty unless it keeps its data on one gateway's disk (see
    /// the module docs).
    pub(crate) fn place_new(
        &self,
        name: &str,
        spec: &NamespaceSpec,
        registered: &[Shard],
        dedicated: &BTreeSet<String>,
    ) -> (String, String) {
        let pin = spec.placement.as_deref().map(|p| p.pinned_shard.as_str()).unwrap_or_default();
        let shard = if pin.is_empty() {
            let shared = shared_shards(live_shards(&self.config().shards, registered), dedicated);
            assign::rendezvous(name, shared.iter().map(String::as_str)).unwrap_or_default().to_owned()
        } else {
            pin.to_owned()
        };
        let owner = if spec.backend != Backend::Embedded as i32 || shard.is_empty() {
            String::new()
        } else {
            pick_owner(name, &shard, &stores_of(registered))
        };
        (shard, owner)
    }

    /// Adds to `txn` what the shard map going from `before` to `after`
    /// changes in namespaces: the reassignment of every namespace whose
    /// shard changes with the live shards, and the owner stores (and their
    /// ACTIVE / DEGRADED status) of embedded namespaces ([`settle_owner`]),
    /// at most [`SETTLE_BATCH`] of them. Returns how many namespaces moved,
    /// how many changed owner store or status, and whether that was all
    /// (otherwise the settler finishes, "Bounded rebalances").
    async fn settle(
        &self,
        before: &[Shard],
        after: &[Shard],
        dedicated: &BTreeSet<String>,
        txn: &mut Txn,
    ) -> Result<(usize, usize, bool)> {
        let (live_before, live_after) =
            (live_shards(&self.config().shards, before), live_shards(&self.config().shards, after));
        let placing = live_before != live_after && !live_after.is_empty();
        let shared = shared_shards(live_after, dedicated);
        let stores = stores_of(after);
        if !placing && stores == stores_of(before) {
            return Ok((0, 0, true));
        }
        let last_endpoint = |store: &str| {
            before.iter().flat_map(|s| &s.instances).find(|i| i.store_id == store).map(|i| i.endpoint.as_str())
        };
        let map = Map { shared: &shared, placing, stores: &stores };
        let (moved, owners, next) = self.settle_page("", &map, last_endpoint, txn).await?;
        Ok((moved, owners, next.is_none()))
    }

    /// Settles namespaces after `start` against `map` into `txn` until
    /// [`SETTLE_BATCH`] changed or none is left; returns how many moved,
    /// how many changed owner store or status, and the last name looked
    /// at unless every namespace was.
    async fn settle_page<'a>(
        &self,
        start: &str,
        map: &Map<'_>,
        last_endpoint: impl Fn(&str) -> Option<&'a str> + Copy,
        txn: &mut Txn,
    ) -> Result<(usize, usize, Option<String>)> {
        let now = Some(SystemTime::now().into());
        let (mut moved, mut owners) = (0, 0);
        let mut after = start.to_owned();
        loop {
            let page = self.store().list_namespaces("", &after, SETTLE_PAGE).await?;
            let last_page = page.len() < SETTLE_PAGE;
            for mut ns in page {
                after.clone_from(&ns.name);
                let read_at = ns.revision;
                let mut changed = false;
                if let Some(owner) = placement(&ns, map.shared).filter(|o| map.placing && *o != ns.shard_id) {
                    let from = std::mem::replace(&mut ns.shard_id, owner);
                    ns.status_reason = if ns.status == NamespaceStatus::Provisioning as i32 {
                        format!("waiting for shard {} to provision the backend", ns.shard_id)
                    } else {
                        format!("moved from shard {from:?} to {} as shards changed", ns.shard_id)
                    };
                    moved += 1;
                    changed = true;
                }
                if settle_owner(&mut ns, map.stores, last_endpoint) {
                    owners += 1;
                    changed = true;
                }
                if changed {
                    txn.conditions.push(Condition::Namespace { name: ns.name.clone(), revision: read_at });
                    ns.update_time = now;
                    txn.puts.push(Put::Namespace(ns));
                    if moved + owners >= SETTLE_BATCH {
                        return Ok((moved, owners, Some(after)));
                    }
                }
            }
            if last_page {
                return Ok((moved, owners, None));
            }
        }
    }

    /// Plans a change of the shard map: `edit` gets every registered shard
    /// and returns the shard to write (no instances = remove it); what that
    /// changes in namespaces (placement, owner stores) is in the same
    /// commit, up to [`SETTLE_BATCH`] namespaces.
    async fn plan_shard_change(
        &self,
        id: &str,
        edit: impl FnOnce(&mut Vec<Shard>) -> Result<(Shard, String)>,
    ) -> Result<Plan> {
        let mut registered = self.store().list_shards().await?;
        let dedicated = self.pins().await?.dedicated();
        let before = registered.clone();
        let read_at = registered.iter().find(|s| s.shard_id == id).map_or(0, |s| s.revision);
        let (shard, detail) = edit(&mut registered)?;
        let mut txn = Txn::default();
        txn.conditions.push(Condition::Shard { id: id.to_owned(), revision: read_at });
        registered.retain(|s| s.shard_id != id);
        registered.push(shard.clone());
        registered.sort_by(|a, b| a.shard_id.cmp(&b.shard_id));
        if live_shards(&self.config().shards, &before) != live_shards(&self.config().shards, &registered) {
            // Every shard's revision moves with the live set, so a settling
            // commit planned against the old one (conditioned on them) is
            // planned again.
            for other in before.iter().filter(|s| s.shard_id != id) {
                txn.conditions.push(Condition::Shard { id: other.shard_id.clone(), revision: other.revision });
                txn.puts.push(Put::Shard(other.clone()));
            }
        }
        txn.puts.push(Put::Shard(shard));
        let (moved, owners, complete) = self.settle(&before, &registered, &dedicated, &mut txn).await?;
        let mut detail = detail;
        if moved > 0 {
            detail = format!("{detail}; {moved} namespaces moved");
        }
        if owners > 0 {
            detail = format!("{detail}; {owners} embedded namespaces changed owner store or status");
        }
        if complete {
            self.settle_state().settled(Some(MapKey::of(&self.config().shards, &registered, dedicated)));
        } else {
            self.settle_state().settled(None);
            detail = format!("{detail}; the rest follow in commits of at most {SETTLE_BATCH}");
        }
        Ok(Plan { txn, detail })
    }

    /// Finishes settling namespaces against the shard map (moves and owner
    /// stores) that the commits changing it left, in commits of at most
    /// [`SETTLE_BATCH`] namespaces, each conditioned on every registered
    /// shard as read: one planned against a shard map that changed since is
    /// planned again. Returns how many namespaces changed. Any replica may
    /// run it: conditions make concurrent runs harmless.
    pub async fn settle_pending(&self) -> Result<usize> {
        let mut start = String::new();
        // The map this pass settles against; when it changes, the pass
        // starts again (what it settled before was placed by the old one).
        let mut pass: Option<MapKey> = None;
        let mut total = 0;
        loop {
            let mut attempt = 0;
            let (changed, next) = loop {
                attempt += 1;
                let registered = self.store().list_shards().await?;
                let dedicated = self.pins().await?.dedicated();
                let key = MapKey::of(&self.config().shards, &registered, dedicated.clone());
                if pass.as_ref() != Some(&key) {
                    start.clear();
                    pass = Some(key);
                }
                let live = live_shards(&self.config().shards, &registered);
                let shared = shared_shards(live.clone(), &dedicated);
                let stores = stores_of(&registered);
                let map = Map { shared: &shared, placing: !live.is_empty(), stores: &stores };
                let mut txn = Txn::default();
                for s in &registered {
                    txn.conditions.push(Condition::Shard { id: s.shard_id.clone(), revision: s.revision });
                }
                let (moved, owners, next) = self.settle_page(&start, &map, |_| None, &mut txn).await?;
                if moved + owners == 0 {
                    break (0, next);
                }
                let names: Vec<&str> = txn
                    .puts
                    .iter()
                    .filter_map(|p| match p {
                        Put::Namespace(ns) => Some(ns.name.as_str()),
                        _ => None,
                    })
                    .collect();
                let target = format!("{}..={}", names.first().unwrap_or(&""), names.last().unwrap_or(&""));
                txn.audit.push(AuditEvent {
                    time: Some(SystemTime::now().into()),
                    principal: SYSTEM_PRINCIPAL.to_owned(),
                    action: "SettleShardMap".to_owned(),
                    target,
                    result: "ok".to_owned(),
                    detail: format!(
                        "{moved} namespaces moved, {owners} embedded namespaces changed owner store or status, \
                         following the shard map ({} live shards, {} dedicated)",
                        live.len(),
                        live.intersection(&dedicated).count()
                    ),
                    ..AuditEvent::default()
                });
                match self.store().commit(txn).await? {
                    Committed::Ok(_) => break (moved + owners, next),
                    Committed::Conflict(condition) if attempt < MAX_ATTEMPTS => {
                        tracing::debug!(?condition, "a settling commit lost a race, re-planning");
                    }
                    Committed::Conflict(condition) => {
                        return Err(ControlPlaneError::Conflict(format!(
                            "settling namespaces after {start:?} kept conflicting ({condition:?}); gave up after \
                             {MAX_ATTEMPTS} attempts"
                        )));
                    }
                }
            };
            total += changed;
            match next {
                Some(name) => start = name,
                None => {
                    self.settle_state().settled(pass);
                    return Ok(total);
                }
            }
        }
    }

    /// Whether the shard map has changed since namespaces were last
    /// settled against it by this replica (or it never settled).
    pub async fn unsettled(&self) -> Result<bool> {
        let registered = self.store().list_shards().await?;
        let dedicated = self.pins().await?.dedicated();
        Ok(!self.settle_state().is_settled(&MapKey::of(&self.config().shards, &registered, dedicated)))
    }

    /// Registers an instance of `shard` at `endpoint` with its `store_id`
    /// (may be empty). An instance already registered at that endpoint (a
    /// restarted gateway) is replaced, in whatever shard it was; so is one
    /// of the shard with the same store id (restarted at another address).
    /// `features` say what the instance can do beyond serving
    /// (`crate::migration`).
    pub async fn register_shard(
        &self,
        principal: &str,
        shard: &str,
        endpoint: &str,
        store_id: &str,
        features: &[String],
    ) -> Result<RegisterShardResponse> {
        let valid = shard_id("shard_id", shard).is_ok()
            && validate::endpoint("endpoint", endpoint).is_ok()
            && validate::store_id("store_id", store_id).is_ok()
            && validate::features("features", features).is_ok();
        if valid {
            let elsewhere = self
                .store()
                .list_shards()
                .await?
                .into_iter()
                .find(|s| s.shard_id != shard && s.instances.iter().any(|i| i.endpoint == endpoint));
            if let Some(other) = elsewhere {
                let detail = format!("instance at {endpoint} re-registers as shard {shard}");
                self.remove_instances(
                    principal,
                    "DeregisterShard",
                    &other.shard_id,
                    |i| i.endpoint == endpoint,
                    &detail,
                )
                .await?;
            }
        }
        let instance_id = new_instance_id();
        let ttl = self.lease_ttl();
        let target = Target { action: "RegisterShard", tenant: "", target: shard };
        self.mutate(principal, target, || async {
            shard_id("shard_id", shard)?;
            validate::endpoint("endpoint", endpoint)?;
            validate::store_id("store_id", store_id)?;
            validate::features("features", features)?;
            self.plan_shard_change(shard, |all| {
                let mut s = take(all, shard);
                s.instances.retain(|i| i.endpoint != endpoint && (store_id.is_empty() || i.store_id != store_id));
                let now = SystemTime::now();
                s.instances.push(ShardInstance {
                    instance_id: instance_id.clone(),
                    endpoint: endpoint.to_owned(),
                    lease_expire_time: Some((now + ttl).into()),
                    register_time: Some(now.into()),
                    store_id: store_id.to_owned(),
                    features: features.to_vec(),
                });
                s.instances.sort_by(|a, b| a.endpoint.cmp(&b.endpoint));
                let store = if store_id.is_empty() { String::new() } else { format!(", store {store_id}") };
                Ok((s, format!("instance {instance_id} at {endpoint}{store}")))
            })
            .await
        })
        .await?;
        self.settle_state().wake.notify_one();
        Ok(RegisterShardResponse { instance_id, lease_ttl: prost_types::Duration::try_from(ttl).ok() })
    }

    /// Removes the instances of `shard` that `gone` selects, in one audited
    /// commit; NOT_FOUND when none is selected.
    async fn remove_instances(
        &self,
        principal: &str,
        action: &'static str,
        shard: &str,
        gone: impl Fn(&ShardInstance) -> bool,
        detail: &str,
    ) -> Result<()> {
        let target = Target { action, tenant: "", target: shard };
        self.mutate(principal, target, || async {
            shard_id("shard_id", shard)?;
            self.plan_shard_change(shard, |all| {
                let mut s = take(all, shard);
                let removed: Vec<String> =
                    s.instances.iter().filter(|i| gone(i)).map(|i| i.instance_id.clone()).collect();
                if removed.is_empty() {
                    return Err(ControlPlaneError::NotFound(format!("shard {shard} has no such instance")));
                }
                s.instances.retain(|i| !gone(i));
                Ok((s, format!("{detail}: removed {}", removed.join(", "))))
            })
            .await
        })
        .await?;
        self.settle_state().wake.notify_one();
        Ok(())
    }

    /// Keeps an instance's lease alive. NOT_FOUND when the instance is not
    /// registered (its lease expired, or the control plane lost it): the
    /// gateway registers again.
    pub async fn heartbeat(&self, shard: &str, instance_id: &str) -> Result<HeartbeatResponse> {
        shard_id("shard_id", shard)?;
        validate::instance_id("instance_id", instance_id)?;
        let ttl = self.lease_ttl();
        for _ in 0..crate::plane::MAX_ATTEMPTS {
            let registered = self.store().list_shards().await?;
            let Some(mut s) = registered.into_iter().find(|s| s.shard_id == shard) else {
                return Err(not_registered(shard, instance_id));
            };
            let Some(instance) = s.instances.iter_mut().find(|i| i.instance_id == instance_id) else {
                return Err(not_registered(shard, instance_id));
            };
            let now = SystemTime::now();
            let expires = to_system_time(instance.lease_expire_time.as_ref());
            // Renewals are not commits unless the lease is half gone.
            if expires > now + ttl / 2 {
                return Ok(HeartbeatResponse { lease_expire_time: instance.lease_expire_time });
            }
            let renewed = Some((now + ttl).into());
            instance.lease_expire_time = renewed;
            // Not audited: a renewal changes no one's rights or data.
            let txn = Txn {
                conditions: vec![Condition::Shard { id: shard.to_owned(), revision: s.revision }],
                puts: vec![Put::Shard(s)],
                ..Txn::default()
            };
            match self.store().commit(txn).await? {
                Committed::Ok(_) => return Ok(HeartbeatResponse { lease_expire_time: renewed }),
                Committed::Conflict(_) => continue,
            }
        }
        Err(ControlPlaneError::Conflict(format!("shard {shard} kept changing; heartbeat again")))
    }

    /// Removes an instance at its gateway's request (a clean shutdown).
    pub async fn deregister_shard(&self, principal: &str, shard: &str, instance_id: &str) -> Result<()> {
        validate::instance_id("instance_id", instance_id)?;
        self.remove_instances(principal, "DeregisterShard", shard, |i| i.instance_id == instance_id, "deregistered")
            .await
    }

    /// Removes every instance whose lease has expired; returns how many
    /// shards lost instances. Any replica may run it: conditions make
    /// concurrent sweeps harmless.
    pub async fn expire_leases(&self) -> Result<usize> {
        let now = SystemTime::now();
        let expired = |i: &ShardInstance| self.lease_end(i) <= now;
        let mut swept = 0;
        for s in self.store().list_shards().await? {
            if !s.instances.iter().any(expired) {
                continue;
            }
            match self
                .remove_instances(SYSTEM_PRINCIPAL, "ExpireShardLease", &s.shard_id, expired, "lease expired")
                .await
            {
                Ok(()) => swept += 1,
                // Another replica swept it, or it renewed meanwhile.
                Err(ControlPlaneError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(swept)
    }

    /// Every shard: static ones (instances from the configuration, without
    /// leases) and registered ones.
    pub async fn list_shards(&self) -> Result<Vec<Shard>> {
        let mut shards: Vec<Shard> = self.store().list_shards().await?;
        for id in &self.config().shards {
            let endpoints = self.config().shard_endpoints.get(id).map(Vec::as_slice).unwrap_or_default();
            let registered = shards.iter().position(|s| &s.shard_id == id);
            let i = registered.unwrap_or_else(|| {
                shards.push(Shard { shard_id: id.clone(), ..Shard::default() });
                shards.len() - 1
            });
            for (n, e) in endpoints.iter().enumerate() {
                if !shards[i].instances.iter().any(|inst| &inst.endpoint == e) {
                    shards[i].instances.push(ShardInstance {
                        instance_id: format!("static-{n}"),
                        endpoint: e.clone(),
                        ..ShardInstance::default()
                    });
                }
            }
        }
        shards.sort_by(|a, b| a.shard_id.cmp(&b.shard_id));
        Ok(shards)
    }

    /// Which shard serves a namespace, and the endpoints of its live
    /// instances.
    pub async fn resolve_namespace(&self, name: &str) -> Result<ResolveNamespaceResponse> {
        validate::namespace_name("namespace", name)?;
        let revision = self.store().revision().await?;
        let ns = self
            .store()
            .get_namespace(name)
            .await?
            .filter(|n| n.status != NamespaceStatus::Deleted as i32)
            .ok_or_else(|| ControlPlaneError::NotFound(format!("namespace {name} not found")))?;
        if ns.shard_id.is_empty() {
            return Err(ControlPlaneError::FailedPrecondition(format!("namespace {name} has no shard yet")));
        }
        let now = SystemTime::now();
        let mut endpoints = self.config().shard_endpoints.get(&ns.shard_id).cloned().unwrap_or_default();
        for s in self.store().list_shards().await?.into_iter().filter(|s| s.shard_id == ns.shard_id) {
            endpoints.extend(s.instances.into_iter().filter(|i| self.lease_end(i) > now).map(|i| i.endpoint));
        }
        // Static endpoints first, then registered ones; each once.
        let mut seen = std::collections::HashSet::new();
        endpoints.retain(|e| seen.insert(e.clone()));
        if endpoints.is_empty() {
            return Err(ControlPlaneError::Unavailable(format!("no instance of shard {} is live", ns.shard_id)));
        }
        Ok(ResolveNamespaceResponse { namespace: ns.name, shard_id: ns.shard_id, endpoints, revision })
    }
}

fn not_registered(shard: &str, instance_id: &str) -> ControlPlaneError {
    ControlPlaneError::NotFound(format!("instance {instance_id} of shard {shard} is not registered; register again"))
}

/// Removes and returns shard `id` from `all` (a new empty one if absent).
fn take(all: &mut Vec<Shard>, id: &str) -> Shard {
    match all.iter().position(|s| s.shard_id == id) {
        Some(i) => all.remove(i),
        None => Shard { shard_id: id.to_owned(), ..Shard::default() },
    }
}

#[cfg(test)]
mod tests {
    use prism_proto::control::{Backend, Namespace, NamespaceSpec, NamespaceStatus};

    use super::*;

    fn ns(backend: Backend, status: NamespaceStatus, owner: &str) -> Namespace {
        Namespace {
            name: "acme/profiles".into(),
            spec: Some(NamespaceSpec { backend: backend as i32, ..Default::default() }),
            shard_id: "shard-a".into(),
            status: status as i32,
            status_reason: "provisioned by shard shard-a".into(),
            owner_store_id: owner.into(),
            ..Default::default()
        }
    }

    fn stores(ids: &[&str]) -> Stores {
        let mut ids: Vec<String> = ids.iter().map(|s| (*s).to_owned()).collect();
        ids.sort();
        if ids.is_empty() { Stores::new() } else { Stores::from([("shard-a".to_owned(), ids)]) }
    }

    fn nowhere(_: &str) -> Option<&'static str> {
        None
    }

    #[test]
    fn a_shared_backend_never_gets_an_owner() {
        let mut n = ns(Backend::Postgres, NamespaceStatus::Active, "");
        assert!(!settle_owner(&mut n, &stores(&["s1", "s2"]), nowhere));
        assert_eq!(n.owner_store_id, "");
    }

    #[test]
    fn an_unowned_namespace_is_claimed_by_a_rendezvous_pick_that_does_not_depend_on_order() {
        let mut n = ns(Backend::Embedded, NamespaceStatus::Active, "");
        assert!(settle_owner(&mut n, &stores(&["s1", "s2", "s3"]), nowhere));
        let mut again = ns(Backend::Embedded, NamespaceStatus::Active, "");
        settle_owner(&mut again, &stores(&["s3", "s1", "s2"]), nowhere);
        assert_eq!(n.owner_store_id, again.owner_store_id);
        assert_eq!(n.status, NamespaceStatus::Active as i32);
        // No store on the shard: nothing to claim with.
        let mut n = ns(Backend::Embedded, NamespaceStatus::Active, "");
        assert!(!settle_owner(&mut n, &stores(&[]), nowhere));
    }

    #[test]
    fn an_active_namespace_whose_owner_left_is_degraded_and_restored_when_it_is_back() {
        let mut n = ns(Backend::Embedded, NamespaceStatus::Active, "s1");
        assert!(settle_owner(&mut n, &stores(&["s2"]), |_| Some("10.0.0.1:7401")));
        assert_eq!(n.status, NamespaceStatus::Degraded as i32);
        assert_eq!(n.owner_store_id, "s1", "its data is there: the owner is kept");
        assert!(n.status_reason.starts_with(OWNER_AWAY), "{}", n.status_reason);
        assert!(n.status_reason.contains("s1 of shard shard-a, last at 10.0.0.1:7401"), "{}", n.status_reason);
        assert!(!settle_owner(&mut n, &stores(&["s2"]), nowhere), "settled");
        assert!(settle_owner(&mut n, &stores(&["s1", "s2"]), nowhere));
        assert_eq!(n.status, NamespaceStatus::Active as i32);
        assert_eq!(n.owner_store_id, "s1");
    }

    #[test]
    fn only_an_absence_is_undone_by_the_owner_coming_back() {
        let mut n = ns(Backend::Embedded, NamespaceStatus::Degraded, "s1");
        n.status_reason = "disk full".into();
        assert!(!settle_owner(&mut n, &stores(&["s1"]), nowhere));
        assert_eq!(n.status, NamespaceStatus::Degraded as i32);
        for status in [NamespaceStatus::Deleting, NamespaceStatus::Deleted] {
            let mut n = ns(Backend::Embedded, status, "s1");
            assert!(!settle_owner(&mut n, &stores(&["s2"]), nowhere), "{status:?} waits for its owner");
            assert_eq!(n.owner_store_id, "s1");
        }
    }

    #[test]
    fn a_namespace_with_no_data_yet_is_given_to_a_registered_store() {
        let mut n = ns(Backend::Embedded, NamespaceStatus::Provisioning, "gone");
        assert!(settle_owner(&mut n, &stores(&["s2"]), nowhere));
        assert_eq!(n.owner_store_id, "s2");
        assert_eq!(n.status, NamespaceStatus::Provisioning as i32);
        let mut n = ns(Backend::Embedded, NamespaceStatus::Provisioning, "gone");
        assert!(settle_owner(&mut n, &stores(&[]), nowhere), "no store: unowned until one registers");
        assert_eq!(n.owner_store_id, "");
    }
}
