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
//! # Assignment
//!
//! A new namespace goes to its pin, else to the rendezvous winner among
//! live shards ([`crate::assign`]); with none live it waits unassigned in
//! PROVISIONING. When a shard joins N others about 1/(N+1) of the
//! namespaces move (measured in `docs/benchmarks.md`); when one leaves,
//! only its own. Pins always win. A moved namespace keeps its status
//! (ACTIVE stays ACTIVE: a shared backend already has its resources); one
//! still PROVISIONING is provisioned by its new owner. That embedded
//! namespaces wait for their shard to come back is also why a replicated
//! shard should use a shared backend. A rebalance rewrites every moved
//! namespace in one commit, a cost linear in the number of namespaces
//! (fine at 10⁵). A namespace's `shard_id` therefore changes only in a
//! commit that also changes the set of live shards (or in its creation):
//! the assignment is a function of the published metadata, never of a
//! replica's memory.
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

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use prism_proto::control::{
    Backend, HeartbeatResponse, Namespace, NamespaceStatus, RegisterShardResponse, ResolveNamespaceResponse, Shard,
    ShardInstance,
};

use crate::assign;
use crate::error::{ControlPlaneError, Result};
use crate::plane::{ControlPlane, Plan, Target};
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

/// Where `ns` belongs among `live` shards, or `None` to leave it be.
pub fn placement(ns: &Namespace, live: &BTreeSet<String>) -> Option<String> {
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
    assign::rendezvous(&ns.name, live.iter().map(String::as_str)).map(str::to_owned)
}

impl ControlPlane {
    fn lease_ttl(&self) -> Duration {
        Duration::from_millis(self.config().shard_lease_ttl_ms)
    }

    /// Static and registered shard ids: what a pin may name.
    pub(crate) async fn known_shards(&self) -> Result<Vec<String>> {
        let registered = self.store().list_shards().await?;
        Ok(live_shards(&self.config().shards, &registered).into_iter().collect())
    }

    /// The shard a new namespace goes to: its pin, or the rendezvous choice
    /// among live shards (empty while there is none).
    pub(crate) async fn assign_new(&self, name: &str, spec: &prism_proto::control::NamespaceSpec) -> Result<String> {
        let pin = spec.placement.as_deref().map(|p| p.pinned_shard.as_str()).unwrap_or_default();
        if !pin.is_empty() {
            return Ok(pin.to_owned());
        }
        let registered = self.store().list_shards().await?;
        let live = live_shards(&self.config().shards, &registered);
        Ok(assign::rendezvous(name, live.iter().map(String::as_str)).unwrap_or_default().to_owned())
    }

    /// Adds to `txn` the reassignment of every namespace whose owner changes
    /// when the live shards go from `before` to `after`.
    async fn rebalance(&self, before: &BTreeSet<String>, after: &BTreeSet<String>, txn: &mut Txn) -> Result<usize> {
        if before == after || after.is_empty() {
            return Ok(0);
        }
        let now = Some(SystemTime::now().into());
        let mut moved = 0;
        for mut ns in self.store().list_namespaces("", "", usize::MAX).await? {
            let Some(owner) = placement(&ns, after) else { continue };
            if owner == ns.shard_id {
                continue;
            }
            txn.conditions.push(Condition::Namespace { name: ns.name.clone(), revision: ns.revision });
            let from = std::mem::replace(&mut ns.shard_id, owner);
            ns.status_reason = if ns.status == NamespaceStatus::Provisioning as i32 {
                format!("waiting for shard {} to provision the backend", ns.shard_id)
            } else {
                format!("moved from shard {from:?} to {} as shards changed", ns.shard_id)
            };
            ns.update_time = now;
            txn.puts.push(Put::Namespace(ns));
            moved += 1;
        }
        Ok(moved)
    }

    /// Plans a change of the shard map: `edit` gets every registered shard
    /// and returns the shard to write (no instances = remove it); live-set
    /// changes reassign namespaces in the same commit.
    async fn plan_shard_change(
        &self,
        id: &str,
        edit: impl FnOnce(&mut Vec<Shard>) -> Result<(Shard, String)>,
    ) -> Result<Plan> {
        let mut registered = self.store().list_shards().await?;
        let before = live_shards(&self.config().shards, &registered);
        let read_at = registered.iter().find(|s| s.shard_id == id).map_or(0, |s| s.revision);
        let (shard, detail) = edit(&mut registered)?;
        let mut txn = Txn::default();
        txn.conditions.push(Condition::Shard { id: id.to_owned(), revision: read_at });
        registered.retain(|s| s.shard_id != id);
        registered.push(shard.clone());
        let after = live_shards(&self.config().shards, &registered);
        txn.puts.push(Put::Shard(shard));
        let moved = self.rebalance(&before, &after, &mut txn).await?;
        let detail = if moved > 0 { format!("{detail}; {moved} namespaces moved") } else { detail };
        Ok(Plan { txn, detail })
    }

    /// Registers an instance of `shard` at `endpoint`. An instance already
    /// registered at that endpoint (a restarted gateway) is replaced, in
    /// whatever shard it was.
    pub async fn register_shard(&self, principal: &str, shard: &str, endpoint: &str) -> Result<RegisterShardResponse> {
        let valid = shard_id("shard_id", shard).is_ok() && validate::endpoint("endpoint", endpoint).is_ok();
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
            self.plan_shard_change(shard, |all| {
                let mut s = take(all, shard);
                s.instances.retain(|i| i.endpoint != endpoint);
                let now = SystemTime::now();
                s.instances.push(ShardInstance {
                    instance_id: instance_id.clone(),
                    endpoint: endpoint.to_owned(),
                    lease_expire_time: Some((now + ttl).into()),
                    register_time: Some(now.into()),
                });
                s.instances.sort_by(|a, b| a.endpoint.cmp(&b.endpoint));
                Ok((s, format!("instance {instance_id} at {endpoint}")))
            })
            .await
        })
        .await?;
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
        .await
        .map(|_| ())
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
        let expired = |i: &ShardInstance| to_system_time(i.lease_expire_time.as_ref()) <= now;
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
            endpoints.extend(
                s.instances
                    .into_iter()
                    .filter(|i| to_system_time(i.lease_expire_time.as_ref()) > now)
                    .map(|i| i.endpoint),
            );
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
