//! Pins and dedicated shards: which namespaces are pinned where, and which
//! shards a namespace holds exclusively (`Placement.dedicated`).
//!
//! A *dedicated* shard is one pinned by a live (not DELETED) namespace
//! whose placement says `dedicated`: hashed namespaces are assigned by
//! rendezvous over the live shards minus the dedicated ones
//! (`crate::registry`, "Assignment"), and no other namespace may be pinned
//! to it. The set is a function of the published namespaces, so every
//! replica derives the same one at the same revision.
//!
//! Reading it must not cost a listing of every namespace: a create would
//! otherwise read a million of them. So each replica keeps [`Pins`], the
//! pinned namespaces as of a revision, read whole once and then brought up
//! to date from the change log ([`crate::store::Store::changes_since`]);
//! only when the log no longer reaches back is it read whole again.
//! Pinned namespaces are few (a pin is an operator's decision), so the
//! index is small. Catching up reads the deltas the store announces to
//! its watchers (its bus: decoded once, in memory); only a gap there (a
//! subscription that lagged) sends it to the log.
//!
//! Two commits about one shard must not both pass their checks unseen by
//! each other (a pin and a dedication of shard X, planned concurrently).
//! So every commit that pins a namespace to X, or dedicates X, rewrites X's
//! registered record (conditioned on its revision, [`touch`]): of two such
//! commits the second conflicts and is planned again against the first. A
//! hashed create conditions on the revision of the shard it picked, so one
//! planned before that shard was dedicated is planned again too; so is a
//! settling commit (it conditions on every shard). A static shard that no
//! gateway registered has no record to rewrite: its checks are as good as
//! the index at the time of planning.

use std::collections::{BTreeMap, BTreeSet};

use prism_proto::control::{Backend, Namespace, NamespaceSpec, NamespaceStatus, Shard, change};

use crate::error::{ControlPlaneError, Result};
use crate::plane::ControlPlane;
use crate::store::bus::Recv;
use crate::store::{Changes, Condition, Put, Txn};

/// Namespaces read at a time when the index is read whole.
const SCAN_PAGE: usize = 1000;
/// Deltas read at a time when the index catches up.
const CATCH_UP: usize = 1000;

/// Where a namespace is pinned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    pub shard: String,
    pub dedicated: bool,
}

impl Pin {
    /// The pin `spec` asks for, if any.
    pub fn of_spec(spec: &NamespaceSpec) -> Option<Self> {
        let placement = spec.placement.as_deref().filter(|p| !p.pinned_shard.is_empty())?;
        Some(Self { shard: placement.pinned_shard.clone(), dedicated: placement.dedicated })
    }
}

/// The pinned, live namespaces as of `revision`.
#[derive(Debug, Clone, Default)]
pub struct Pins {
    revision: u64,
    /// Whether it was ever read whole (else `revision` means nothing).
    loaded: bool,
    by_name: BTreeMap<String, Pin>,
}

impl Pins {
    /// The pin `ns`'s spec asks for, unless it has none or is DELETED.
    pub fn of(ns: &Namespace) -> Option<Pin> {
        if ns.status == NamespaceStatus::Deleted as i32 {
            return None;
        }
        ns.spec.as_ref().and_then(Pin::of_spec)
    }

    /// Records `ns` as it now is.
    pub fn apply(&mut self, ns: &Namespace) {
        match Self::of(ns) {
            Some(pin) => self.by_name.insert(ns.name.clone(), pin),
            None => self.by_name.remove(&ns.name),
        };
    }

    /// The shards a namespace holds as dedicated.
    pub fn dedicated(&self) -> BTreeSet<String> {
        self.by_name.values().filter(|p| p.dedicated).map(|p| p.shard.clone()).collect()
    }

    /// The namespace other than `except` that holds `shard` as dedicated.
    pub fn dedicated_by(&self, shard: &str, except: &str) -> Option<&str> {
        self.by_name.iter().find(|(n, p)| p.dedicated && p.shard == shard && *n != except).map(|(n, _)| n.as_str())
    }

    /// The namespaces other than `except` pinned to `shard`, in name order.
    pub fn pinned_to<'a>(&'a self, shard: &'a str, except: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.by_name.iter().filter(move |(n, p)| p.shard == shard && *n != except).map(|(n, _)| n.as_str())
    }
}

/// Adds to `txn` a condition on `shard`'s record as read in `registered`
/// (absent: that it still is), and with `rewrite` the record itself, so a
/// concurrent commit about the same shard conflicts (see the module docs).
pub(crate) fn touch(txn: &mut Txn, registered: &[Shard], shard: &str, rewrite: bool) {
    match registered.iter().find(|s| s.shard_id == shard) {
        Some(s) => {
            txn.conditions.push(Condition::Shard { id: s.shard_id.clone(), revision: s.revision });
            if rewrite {
                txn.puts.push(Put::Shard(s.clone()));
            }
        }
        None => txn.conditions.push(Condition::Shard { id: shard.to_owned(), revision: 0 }),
    }
}

/// `"acme/a"`, or `"acme/a and 2 others"`.
fn one_of(first: &str, count: usize) -> String {
    match count {
        0 | 1 => first.to_owned(),
        2 => format!("{first} and 1 other"),
        n => format!("{first} and {} others", n - 1),
    }
}

fn refuse(field: &str, why: String) -> ControlPlaneError {
    ControlPlaneError::FailedPrecondition(format!("{field}: {why}"))
}

/// The index a replica keeps; see the module docs.
#[derive(Debug, Default)]
pub struct PinIndex(tokio::sync::Mutex<Index>);

#[derive(Default)]
struct Index {
    pins: Pins,
    /// The store's announced deltas, already decoded: most catch-ups need
    /// nothing else (a create under load would otherwise read and decode
    /// from the log every delta since the last create).
    live: Option<crate::store::bus::Receiver>,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index").field("pins", &self.pins).finish_non_exhaustive()
    }
}

impl Index {
    /// Applies the announced deltas that follow the index's revision,
    /// up to `now`; stops at a gap (a delta evicted, or announced before
    /// the subscription), which the change log fills.
    fn catch_up_live(&mut self, now: u64) {
        let Some(live) = self.live.as_mut() else { return };
        while self.pins.revision < now {
            match live.try_recv() {
                Some(Recv::Delta(delta)) if delta.revision <= self.pins.revision => {}
                Some(Recv::Delta(delta)) if delta.revision == self.pins.revision + 1 => {
                    for c in &delta.changes {
                        if let Some(change::Change::Namespace(ns)) = &c.change {
                            self.pins.apply(ns);
                        }
                    }
                    self.pins.revision = delta.revision;
                }
                // A gap: the log has what is missing (and this delta).
                Some(Recv::Delta(_)) => return,
                Some(Recv::Lagged) => {
                    self.live = None;
                    return;
                }
                Some(Recv::Closed) | None => return,
            }
        }
    }
}

impl ControlPlane {
    /// The pinned namespaces as of the store's current revision (or later).
    pub(crate) async fn pins(&self) -> Result<Pins> {
        let mut index = self.pin_index().0.lock().await;
        if index.live.is_none() {
            // Subscribed before reading: nothing committed after the read
            // can be missed (what came before is skipped by revision).
            index.live = Some(self.store().subscribe());
        }
        let mut now = self.store().revision().await?;
        if !index.pins.loaded {
            index.pins = self.read_pins(now).await?;
            // Commits made while reading are applied below (applying one
            // twice is harmless: the last state wins).
            now = self.store().revision().await?;
        }
        index.catch_up_live(now);
        let pins = &mut index.pins;
        while pins.revision < now {
            match self.store().changes_since(pins.revision, CATCH_UP).await? {
                Changes::Compacted => {
                    *pins = self.read_pins(now).await?;
                    now = self.store().revision().await?;
                }
                Changes::Deltas(deltas) if deltas.is_empty() => break,
                Changes::Deltas(deltas) => {
                    for delta in deltas {
                        for c in &delta.changes {
                            if let Some(change::Change::Namespace(ns)) = &c.change {
                                pins.apply(ns);
                            }
                        }
                        pins.revision = delta.revision;
                    }
                }
            }
        }
        Ok(pins.clone())
    }

    /// Refuses pinning namespace `name` as `pin` says when that takes a
    /// shard another namespace holds as dedicated, or dedicates one that
    /// other namespaces use. `shared` are the live shards no namespace
    /// dedicates; `was_dedicated` the shard `name` already dedicates (an
    /// update), whose users were checked when it became dedicated.
    /// Refusals are FAILED_PRECONDITION naming `fields`: the pin's field,
    /// then the dedication's (`spec.placement.pinned_shard` and
    /// `spec.placement.dedicated`; a migration has `target.pinned_shard`
    /// for both).
    pub(crate) async fn check_pin(
        &self,
        name: &str,
        pin: &Pin,
        fields: [&str; 2],
        pins: &Pins,
        shared: &BTreeSet<String>,
        was_dedicated: Option<&str>,
    ) -> Result<()> {
        let shard = pin.shard.as_str();
        if let Some(holder) = pins.dedicated_by(shard, name) {
            return Err(refuse(
                fields[0],
                format!("shard {shard} is dedicated to namespace {holder}: no other namespace may be pinned to it"),
            ));
        }
        if !pin.dedicated || was_dedicated == Some(shard) {
            return Ok(());
        }
        let field = fields[1];
        let others: Vec<&str> = pins.pinned_to(shard, name).collect();
        if let Some(first) = others.first() {
            return Err(refuse(
                field,
                format!(
                    "namespace {} pinned to shard {shard}: a dedicated shard serves one namespace only; pin them elsewhere first",
                    one_of(first, others.len())
                ),
            ));
        }
        // Hashed namespaces on the shard: the settler moves them, except
        // those whose data is on its disk. A listing: dedicating a shard is
        // rare.
        let (mut embedded, mut hashed) = (Vec::new(), 0usize);
        let mut after = String::new();
        loop {
            let page = self.store().list_namespaces("", &after, SCAN_PAGE).await?;
            for ns in &page {
                if ns.shard_id != shard || ns.name == name || Pins::of(ns).is_some() || !crate::store::is_live(ns) {
                    continue;
                }
                hashed += 1;
                let local = ns.spec.as_ref().is_some_and(|s| s.backend == Backend::Embedded as i32);
                if local && ns.status != NamespaceStatus::Provisioning as i32 {
                    embedded.push(ns.name.clone());
                }
            }
            match page.last() {
                Some(last) if page.len() == SCAN_PAGE => after.clone_from(&last.name),
                _ => break,
            }
        }
        if let Some(first) = embedded.first() {
            return Err(refuse(
                field,
                format!(
                    "shard {shard} holds hashed embedded namespace {}, whose data is on its disk and cannot be moved to another shard by the control plane: move or delete them first",
                    one_of(first, embedded.len())
                ),
            ));
        }
        if hashed > 0 && shared.iter().all(|s| s == shard) {
            return Err(refuse(
                field,
                format!("no other live shard would be left for the {hashed} hashed namespaces on shard {shard}"),
            ));
        }
        Ok(())
    }

    /// Every pinned namespace, read in pages; `revision` was read before.
    async fn read_pins(&self, revision: u64) -> Result<Pins> {
        let mut pins = Pins { revision, loaded: true, by_name: BTreeMap::new() };
        let mut after = String::new();
        loop {
            let page = self.store().list_namespaces("", &after, SCAN_PAGE).await?;
            for ns in &page {
                pins.apply(ns);
            }
            match page.last() {
                Some(last) if page.len() == SCAN_PAGE => after.clone_from(&last.name),
                _ => return Ok(pins),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use prism_proto::control::{NamespaceSpec, Placement};

    use super::*;

    fn ns(name: &str, shard: &str, dedicated: bool) -> Namespace {
        let placement = Placement { pinned_shard: shard.into(), dedicated };
        Namespace {
            name: name.into(),
            spec: Some(NamespaceSpec { placement: Some(Box::new(placement)), ..Default::default() }),
            status: NamespaceStatus::Active as i32,
            ..Default::default()
        }
    }

    async fn put(store: &crate::store::file::FileStore, ns: Namespace) -> anyhow::Result<()> {
        use crate::store::Store;
        let committed = store.commit(Txn { puts: vec![Put::Namespace(ns)], ..Txn::default() }).await?;
        anyhow::ensure!(matches!(committed, crate::store::Committed::Ok(_)), "{committed:?}");
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_index_catches_up_from_the_log_and_reads_again_once_it_is_compacted() -> anyhow::Result<()> {
        // A bus of one delta: the index's subscription lags behind two
        // commits, so it catches up from the log.
        let dir = tempfile::tempdir()?;
        let store = Arc::new(crate::store::file::FileStore::open(dir.path(), 1, 3)?);
        put(&store, ns("acme/a", "shard-1", true)).await?;
        let plane = ControlPlane::new(store.clone(), crate::ControlPlaneConfig::default());
        assert_eq!(plane.pins().await?.dedicated(), BTreeSet::from(["shard-1".to_owned()]), "read whole");
        // Two commits: within the log's reach.
        put(&store, ns("acme/b", "shard-2", true)).await?;
        put(&store, ns("acme/a", "shard-1", false)).await?;
        assert_eq!(plane.pins().await?.dedicated(), BTreeSet::from(["shard-2".to_owned()]), "from the log");
        // More commits than the log keeps: read whole again.
        put(&store, ns("acme/c", "shard-3", true)).await?;
        for i in 0..5 {
            put(&store, ns(&format!("acme/hashed-{i}"), "", false)).await?;
        }
        let gone = crate::store::Store::changes_since(store.as_ref(), 3, 10).await?;
        assert!(matches!(gone, Changes::Compacted), "the test needs a compacted log");
        let want = BTreeSet::from(["shard-2".to_owned(), "shard-3".to_owned()]);
        assert_eq!(plane.pins().await?.dedicated(), want, "after compaction");
        Ok(())
    }

    /// The same commits, announced on a bus that keeps them all: the index
    /// follows the bus, and agrees with the log at every step.
    #[tokio::test]
    async fn the_index_follows_the_announced_deltas() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = Arc::new(crate::store::file::FileStore::open(dir.path(), 64, 3)?);
        put(&store, ns("acme/a", "shard-1", true)).await?;
        let plane = ControlPlane::new(store.clone(), crate::ControlPlaneConfig::default());
        assert_eq!(plane.pins().await?.dedicated(), BTreeSet::from(["shard-1".to_owned()]));
        put(&store, ns("acme/b", "shard-2", true)).await?;
        put(&store, ns("acme/a", "shard-1", false)).await?;
        assert_eq!(plane.pins().await?.dedicated(), BTreeSet::from(["shard-2".to_owned()]));
        put(&store, ns("acme/c", "shard-3", true)).await?;
        for i in 0..5 {
            put(&store, ns(&format!("acme/hashed-{i}"), "", false)).await?;
        }
        let pins = plane.pins().await?;
        assert_eq!(pins.dedicated(), BTreeSet::from(["shard-2".to_owned(), "shard-3".to_owned()]));
        assert_eq!(pins.revision, crate::store::Store::revision(store.as_ref()).await?, "caught up");
        Ok(())
    }

    #[test]
    fn the_dedicated_set_follows_the_namespaces_as_they_change() {
        let mut pins = Pins::default();
        pins.apply(&ns("acme/a", "shard-1", true));
        pins.apply(&ns("acme/b", "shard-2", false));
        pins.apply(&ns("acme/c", "", false));
        assert_eq!(pins.dedicated(), BTreeSet::from(["shard-1".to_owned()]));
        assert_eq!(pins.dedicated_by("shard-1", "acme/x"), Some("acme/a"));
        assert_eq!(pins.dedicated_by("shard-1", "acme/a"), None, "its own shard");
        assert_eq!(pins.pinned_to("shard-2", "").collect::<Vec<_>>(), ["acme/b"]);
        // Deleted: the shard is shared again.
        let mut gone = ns("acme/a", "shard-1", true);
        gone.status = NamespaceStatus::Deleted as i32;
        pins.apply(&gone);
        assert!(pins.dedicated().is_empty());
        // Dedication removed by an update.
        pins.apply(&ns("acme/b", "shard-2", true));
        pins.apply(&ns("acme/b", "shard-2", false));
        assert!(pins.dedicated().is_empty());
        assert_eq!(pins.pinned_to("shard-2", "").count(), 1);
    }
}
