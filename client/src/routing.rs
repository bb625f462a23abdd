//! The routing table: which shard owns each namespace, where each shard's
//! replicas are, and which endpoints recently could not be reached. Pure
//! data and rules — no I/O — so every rule has a unit test; the client
//! keeps it behind a mutex that is never held across an `.await`.
//!
//! Entries come from four sources, newest revision first: the Watch stream
//! (current while the stream is), `ResolveNamespace` answers and WRONG_SHARD
//! redirects (both current for `resolve_ttl`).
//!
//! An embedded namespace is served by one instance of its shard, its owner
//! store (`Namespace.owner_store_id`): when the watch has told the table
//! both the owner and the store of each of the shard's instances, calls
//! go straight to the owner; otherwise replicas take turns and the others
//! forward to it (one hop).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use prism_proto::control::{Namespace, NamespaceStatus, Shard};

#[derive(Debug, Clone)]
struct NamespaceRoute {
    shard_id: String,
    /// The store id of the one instance that serves the namespace (empty:
    /// every instance of the shard does).
    owner_store: String,
    /// The metadata revision the entry was learned at: an older answer
    /// never replaces a newer one.
    revision: u64,
    /// `None` for entries the Watch stream keeps current.
    expires: Option<Instant>,
}

#[derive(Debug, Clone)]
struct ShardRoute {
    endpoints: Vec<String>,
    /// Each endpoint's store id, in the same order, when the watch said
    /// (empty otherwise).
    stores: Vec<String>,
    expires: Option<Instant>,
    /// Round-robin position.
    next: usize,
}

/// Where a call goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub shard_id: String,
    pub endpoint: String,
}

#[derive(Debug, Default)]
pub struct RoutingTable {
    namespaces: HashMap<String, NamespaceRoute>,
    shards: HashMap<String, ShardRoute>,
    /// Endpoints that failed to connect, and until when they are skipped.
    down: Cooldowns,
}

/// Endpoints that recently could not be reached, each skipped until its
/// pause ends; and the rule that picks a replica around them. Shared by
/// the client's routing table and the gateway's forwarding, so both choose
/// alike.
#[derive(Debug, Default)]
pub struct Cooldowns(HashMap<String, Instant>);

impl Cooldowns {
    /// Skips `endpoint` until `until`.
    pub fn mark_down(&mut self, endpoint: &str, until: Instant) {
        self.0.insert(endpoint.to_owned(), until);
    }

    /// `endpoint` answered: it is not skipped any more.
    pub fn mark_up(&mut self, endpoint: &str) {
        if !self.0.is_empty() {
            self.0.remove(endpoint);
        }
    }

    /// Forgets pauses that ended.
    pub fn purge(&mut self, now: Instant) {
        self.0.retain(|_, until| now < *until);
    }

    fn paused_until(&self, endpoint: &str, now: Instant) -> Option<Instant> {
        self.0.get(endpoint).copied().filter(|until| now < *until)
    }

    /// Which of `endpoints` to call next, taking turns from `start`: the
    /// first not paused at `now`, or, when all are, the one whose pause
    /// ends first (rather than none). `None` only for an empty list.
    pub fn choose(&self, endpoints: &[String], start: usize, now: Instant) -> Option<usize> {
        let n = endpoints.len();
        if n == 0 {
            return None;
        }
        let start = start % n;
        (0..n)
            .map(|i| (start + i) % n)
            .find(|&i| self.paused_until(&endpoints[i], now).is_none())
            .or_else(|| (0..n).min_by_key(|&i| self.paused_until(&endpoints[i], now)))
    }
}

fn live(expires: Option<Instant>, now: Instant) -> bool {
    expires.is_none_or(|at| now < at)
}

impl RoutingTable {
    /// The endpoint for the next call on `namespace`, if the table knows
    /// its shard and one of the shard's endpoints: replicas in turn,
    /// skipping those that recently failed to connect (unless all did:
    /// then the one whose pause ends first, rather than none).
    pub fn pick(&mut self, namespace: &str, now: Instant) -> Option<Route> {
        let ns = self.namespaces.get(namespace).filter(|r| live(r.expires, now))?;
        let shard_id = ns.shard_id.clone();
        let shard = self.shards.get_mut(&shard_id).filter(|s| live(s.expires, now) && !s.endpoints.is_empty())?;
        // The one instance that holds the namespace, when known: any other
        // would forward there.
        if !ns.owner_store.is_empty()
            && let Some(i) = shard.stores.iter().position(|s| *s == ns.owner_store)
        {
            return Some(Route { shard_id, endpoint: shard.endpoints[i].clone() });
        }
        let chosen = self.down.choose(&shard.endpoints, shard.next, now)?;
        shard.next = chosen + 1;
        Some(Route { shard_id, endpoint: shard.endpoints[chosen].clone() })
    }

    /// The shard the table currently routes `namespace` to.
    pub fn shard_of(&self, namespace: &str, now: Instant) -> Option<&str> {
        self.namespaces.get(namespace).filter(|r| live(r.expires, now)).map(|r| r.shard_id.as_str())
    }

    /// Whether `shard_id`'s endpoints are known and current.
    pub fn knows_shard(&self, shard_id: &str, now: Instant) -> bool {
        self.shards.get(shard_id).is_some_and(|s| live(s.expires, now) && !s.endpoints.is_empty())
    }

    /// Whether `shard_id`'s endpoints come from the watch stream (and so
    /// are current while it is).
    pub fn watched_shard(&self, shard_id: &str) -> bool {
        self.shards.get(shard_id).is_some_and(|s| s.expires.is_none() && !s.endpoints.is_empty())
    }

    /// Routes `namespace` to `shard_id` (learned at `revision`, 0 = unknown)
    /// until `expires` (`None`: until the watch says otherwise). Ignored
    /// when the table holds a newer answer.
    pub fn learn_namespace(&mut self, namespace: &str, shard_id: &str, revision: u64, expires: Option<Instant>) {
        self.learn(namespace, shard_id, None, revision, expires);
    }

    /// Routes `namespace` to `shard_id`; `owner_store` is what the watch
    /// says of its owner store (`None`: a resolve answer or redirect,
    /// which do not say, so an owner known for the same shard stays).
    fn learn(
        &mut self,
        namespace: &str,
        shard_id: &str,
        owner_store: Option<&str>,
        revision: u64,
        expires: Option<Instant>,
    ) {
        let old = self.namespaces.get_mut(namespace);
        let same_shard = old.as_ref().is_some_and(|o| o.shard_id == shard_id);
        if let Some(old) = old
            && revision != 0
            && revision < old.revision
        {
            // Resolve answers carry the global revision, the watch the
            // namespace's own, and only the watch names the owner store:
            // its owner for the same shard is taken whatever the revisions.
            if let Some(owner) = owner_store.filter(|_| same_shard) {
                owner.clone_into(&mut old.owner_store);
            }
            return;
        }
        let owner_store = match (owner_store, self.namespaces.get(namespace)) {
            (Some(owner), _) => owner.to_owned(),
            (None, Some(old)) if same_shard => old.owner_store.clone(),
            (None, _) => String::new(),
        };
        let route = NamespaceRoute { shard_id: shard_id.to_owned(), owner_store, revision, expires };
        self.namespaces.insert(namespace.to_owned(), route);
    }

    /// Sets `shard_id`'s endpoints (kept in the order given, so replicas
    /// are tried in turn). An empty list forgets the shard.
    pub fn learn_shard(&mut self, shard_id: &str, endpoints: Vec<String>, expires: Option<Instant>) {
        self.learn_instances(shard_id, endpoints, Vec::new(), expires);
    }

    /// [`learn_shard`](Self::learn_shard), with each endpoint's store id.
    fn learn_instances(
        &mut self,
        shard_id: &str,
        endpoints: Vec<String>,
        stores: Vec<String>,
        expires: Option<Instant>,
    ) {
        if endpoints.is_empty() {
            self.shards.remove(shard_id);
            return;
        }
        let next = self.shards.get(shard_id).map_or(0, |s| s.next);
        self.shards.insert(shard_id.to_owned(), ShardRoute { endpoints, stores, expires, next });
    }

    /// Forgets where `namespace` lives, so the next call asks again.
    pub fn forget_namespace(&mut self, namespace: &str) {
        self.namespaces.remove(namespace);
    }

    pub fn forget_shard(&mut self, shard_id: &str) {
        self.shards.remove(shard_id);
    }

    /// Skips `endpoint` until `until`.
    pub fn mark_down(&mut self, endpoint: &str, until: Instant) {
        self.down.mark_down(endpoint, until);
    }

    /// `endpoint` answered: it is not skipped any more.
    pub fn mark_up(&mut self, endpoint: &str) {
        self.down.mark_up(endpoint);
    }

    /// Applies one namespace's state from the watch stream: live
    /// namespaces with a shard are routed, others forgotten.
    pub fn apply_namespace(&mut self, ns: &Namespace) {
        let gone = ns.status == NamespaceStatus::Deleted as i32 || ns.shard_id.is_empty();
        if gone {
            if self.namespaces.get(&ns.name).is_none_or(|old| old.revision <= ns.revision) {
                self.namespaces.remove(&ns.name);
            }
        } else {
            self.learn(&ns.name, &ns.shard_id, Some(&ns.owner_store_id), ns.revision, None);
        }
    }

    /// Applies one shard's state from the watch stream. A shard the watch
    /// lists without instances is left to `ResolveNamespace` (the control
    /// plane may know endpoints it does not stream, e.g. static ones).
    pub fn apply_shard(&mut self, shard: &Shard) {
        let (endpoints, stores): (Vec<String>, Vec<String>) = shard
            .instances
            .iter()
            .filter(|i| !i.endpoint.is_empty())
            .map(|i| (i.endpoint.clone(), i.store_id.clone()))
            .unzip();
        if !endpoints.is_empty() {
            self.learn_instances(&shard.shard_id, endpoints, stores, None);
        }
    }

    /// Replaces what the watch stream said before with a snapshot. Entries
    /// learned from answers with a TTL stay (they expire on their own).
    pub fn apply_snapshot(&mut self, namespaces: &[Namespace], shards: &[Shard]) {
        self.namespaces.retain(|_, r| r.expires.is_some());
        self.shards.retain(|_, s| s.expires.is_some());
        namespaces.iter().for_each(|n| self.apply_namespace(n));
        shards.iter().for_each(|s| self.apply_shard(s));
    }

    /// Drops expired entries and pauses, so the table stays bounded by
    /// what is in use.
    pub fn purge(&mut self, now: Instant) {
        self.namespaces.retain(|_, r| live(r.expires, now));
        self.shards.retain(|_, s| live(s.expires, now));
        self.down.purge(now);
    }
}

/// `now + ttl`, saturating far in the future.
pub fn expiry(now: Instant, ttl: Duration) -> Option<Instant> {
    Some(now.checked_add(ttl).unwrap_or(now + Duration::from_secs(86_400 * 365)))
}

#[cfg(test)]
mod tests {
    use prism_proto::control::ShardInstance;

    use super::*;

    fn endpoints(list: &[&str]) -> Vec<String> {
        list.iter().map(|e| (*e).to_owned()).collect()
    }

    fn picks(t: &mut RoutingTable, ns: &str, n: usize, now: Instant) -> Vec<String> {
        (0..n).filter_map(|_| t.pick(ns, now)).map(|r| r.endpoint).collect()
    }

    #[test]
    fn replicas_take_turns_and_unreachable_ones_are_skipped_for_a_while() {
        let now = Instant::now();
        let mut t = RoutingTable::default();
        t.learn_namespace("a/x", "shard-0", 1, None);
        t.learn_shard("shard-0", endpoints(&["e1", "e2", "e3"]), None);
        assert_eq!(picks(&mut t, "a/x", 4, now), ["e1", "e2", "e3", "e1"]);

        t.mark_down("e2", now + Duration::from_secs(2));
        assert_eq!(picks(&mut t, "a/x", 3, now), ["e3", "e1", "e3"]);
        // After the pause it is tried again.
        let later = now + Duration::from_secs(3);
        assert_eq!(picks(&mut t, "a/x", 3, later), ["e1", "e2", "e3"]);

        // All down: the one back soonest, not nothing.
        t.mark_down("e1", now + Duration::from_secs(5));
        t.mark_down("e2", now + Duration::from_secs(1));
        t.mark_down("e3", now + Duration::from_secs(9));
        assert_eq!(picks(&mut t, "a/x", 2, now), ["e2", "e2"]);
        t.mark_up("e3");
        assert_eq!(picks(&mut t, "a/x", 1, now), ["e3"]);
    }

    #[test]
    fn unknown_or_expired_routes_are_not_picked() {
        let now = Instant::now();
        let mut t = RoutingTable::default();
        assert_eq!(t.pick("a/x", now), None);
        t.learn_namespace("a/x", "shard-0", 1, expiry(now, Duration::from_secs(1)));
        assert_eq!(t.pick("a/x", now), None, "shard endpoints unknown");
        t.learn_shard("shard-0", endpoints(&["e1"]), expiry(now, Duration::from_secs(10)));
        assert!(t.pick("a/x", now).is_some());
        assert_eq!(t.pick("a/x", now + Duration::from_secs(2)), None, "namespace entry expired");
        t.purge(now + Duration::from_secs(2));
        assert_eq!(t.shard_of("a/x", now), None);
        assert!(t.knows_shard("shard-0", now));
    }

    #[test]
    fn older_answers_do_not_replace_newer_ones() {
        let now = Instant::now();
        let mut t = RoutingTable::default();
        t.learn_namespace("a/x", "shard-1", 10, None);
        t.learn_namespace("a/x", "shard-0", 9, None);
        assert_eq!(t.shard_of("a/x", now), Some("shard-1"));
        // The owner store the watch names is taken for the same shard, even
        // at an older revision (resolve answers carry the global one).
        let owner = |t: &RoutingTable| t.namespaces.get("a/x").map(|r| r.owner_store.clone());
        t.learn("a/x", "shard-1", Some("s1"), 5, None);
        assert_eq!(owner(&t).as_deref(), Some("s1"));
        assert_eq!(t.namespaces.get("a/x").map(|r| r.revision), Some(10));
        t.learn("a/x", "shard-0", Some("s2"), 5, None);
        assert_eq!(owner(&t).as_deref(), Some("s1"), "another shard's is not");
        // A newer resolve answer for the same shard does not forget it.
        t.learn_namespace("a/x", "shard-1", 11, None);
        assert_eq!(owner(&t).as_deref(), Some("s1"));
        // The watch may: it says what the owner is now.
        t.learn("a/x", "shard-1", Some(""), 4, None);
        assert_eq!(owner(&t).as_deref(), Some(""));
        // A redirect without a revision is direct evidence: taken.
        t.learn_namespace("a/x", "shard-0", 0, None);
        assert_eq!(t.shard_of("a/x", now), Some("shard-0"));
    }

    fn namespace(name: &str, shard: &str, revision: u64, status: NamespaceStatus) -> Namespace {
        Namespace { name: name.into(), shard_id: shard.into(), revision, status: status as i32, ..Default::default() }
    }

    #[test]
    fn the_watch_keeps_namespaces_and_shards_current() {
        let now = Instant::now();
        let mut t = RoutingTable::default();
        t.learn_namespace("a/resolved", "shard-0", 3, expiry(now, Duration::from_secs(30)));
        t.learn_namespace("a/stale", "shard-0", 1, None);
        let shard = Shard {
            shard_id: "shard-1".into(),
            instances: vec![ShardInstance { endpoint: "e9".into(), ..Default::default() }],
            revision: 0,
        };
        t.apply_snapshot(&[namespace("a/x", "shard-1", 5, NamespaceStatus::Active)], &[shard]);
        assert_eq!(t.shard_of("a/stale", now), None, "not in the snapshot");
        assert_eq!(t.shard_of("a/resolved", now), Some("shard-0"), "answers with a TTL stay");
        assert_eq!(t.pick("a/x", now).map(|r| r.endpoint).as_deref(), Some("e9"));

        t.apply_namespace(&namespace("a/x", "shard-0", 6, NamespaceStatus::Active));
        assert_eq!(t.shard_of("a/x", now), Some("shard-0"));
        t.apply_namespace(&namespace("a/x", "shard-0", 7, NamespaceStatus::Deleted));
        assert_eq!(t.shard_of("a/x", now), None);

        // An embedded namespace goes to its owner store's instance, once
        // the watch names both; to the replicas in turn until then.
        let instance = |endpoint: &str, store: &str| ShardInstance {
            endpoint: endpoint.into(),
            store_id: store.into(),
            ..Default::default()
        };
        let owned =
            Namespace { owner_store_id: "s2".into(), ..namespace("a/own", "shard-2", 8, NamespaceStatus::Active) };
        t.apply_namespace(&owned);
        t.learn_shard("shard-2", endpoints(&["e1", "e2"]), None);
        assert_eq!(picks(&mut t, "a/own", 2, now), ["e1", "e2"]);
        let shard = Shard {
            shard_id: "shard-2".into(),
            instances: vec![instance("e1", "s1"), instance("e2", "s2")],
            revision: 9,
        };
        t.apply_shard(&shard);
        assert_eq!(picks(&mut t, "a/own", 3, now), ["e2", "e2", "e2"]);
        // Its owner gone from the shard: replicas in turn (they answer why).
        t.apply_shard(&Shard { shard_id: "shard-2".into(), instances: vec![instance("e1", "s1")], revision: 10 });
        assert_eq!(picks(&mut t, "a/own", 1, now), ["e1"]);

        // A shard listed without instances leaves resolved endpoints alone.
        t.learn_shard("shard-0", endpoints(&["e1"]), expiry(now, Duration::from_secs(30)));
        t.apply_shard(&Shard { shard_id: "shard-0".into(), ..Default::default() });
        assert!(t.knows_shard("shard-0", now));
        t.forget_shard("shard-0");
        assert!(!t.knows_shard("shard-0", now));
    }
}
