//! The Watch stream through the real gRPC server: concurrent writers and
//! reconnecting watchers, a watcher too slow to keep up, a change log
//! compacted under a resuming watcher, and a restart on the same data.
//!
//! Every watcher here applies the stream the way a gateway must: the first
//! chunk of a snapshot clears its state, a delta's changes replace objects
//! by key. It asserts the stream's contract as it goes: deltas strictly
//! increasing and contiguous, none applied twice, never a delta inside a
//! snapshot, never a snapshot older than what it already applied.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use common::{create_namespace, create_tenant, kv_spec, revision, start, start_with};
use prism_client::ControlPlaneClient;
use prism_control_plane::ControlPlaneConfig;
use prism_control_plane::store::{Put, Txn};
use prism_proto::control::{
    Access, AccessLevel, Capacity, CreateNamespaceRequest, DeleteNamespaceRequest, GrantAccessRequest,
    ListNamespacesRequest, ListTenantsRequest, Namespace, NamespaceStatus, ReportNamespaceStatusRequest, Tenant,
    UpdateNamespaceRequest, UpdateTenantRequest, WatchRequest, WatchResponse, change, watch_response::Event,
};
use prism_testkit::{ControlPlaneHandle, eventually};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::Code;
use tonic::codec::Streaming;
use tonic_types::StatusExt;

/// How long a watcher may take to catch up once writers are done.
const CATCH_UP: Duration = Duration::from_secs(60);

/// What a watcher knows: every object, as of `revision`.
#[derive(Debug, Default, Clone, PartialEq)]
struct View {
    revision: u64,
    tenants: BTreeMap<String, Tenant>,
    namespaces: BTreeMap<String, Namespace>,
}

impl View {
    /// The store's own state, read directly (not through the stream).
    async fn of(cp: &ControlPlaneHandle) -> anyhow::Result<Self> {
        let s = cp.plane.store().snapshot().await?;
        Ok(Self {
            revision: s.revision,
            tenants: s.tenants.into_iter().map(|t| (t.id.clone(), t)).collect(),
            namespaces: s.namespaces.into_iter().map(|n| (n.name.clone(), n)).collect(),
        })
    }
}

/// Applies a Watch stream and checks its contract.
#[derive(Debug, Default)]
struct Applier {
    view: View,
    /// The revision of the snapshot being received, between its first and
    /// last chunk.
    in_snapshot: Option<u64>,
    /// Every delta revision ever applied.
    applied: BTreeSet<u64>,
    snapshots: usize,
}

impl Applier {
    fn apply(&mut self, message: WatchResponse) -> anyhow::Result<()> {
        match message.event.context("a message without an event")? {
            Event::Snapshot(chunk) => {
                match self.in_snapshot {
                    None => {
                        ensure!(
                            chunk.revision >= self.view.revision,
                            "a snapshot at {} after applying {}",
                            chunk.revision,
                            self.view.revision
                        );
                        self.view = View::default();
                        self.in_snapshot = Some(chunk.revision);
                    }
                    Some(r) => ensure!(chunk.revision == r, "snapshot chunks at {r} and {}", chunk.revision),
                }
                self.view.tenants.extend(chunk.tenants.into_iter().map(|t| (t.id.clone(), t)));
                self.view.namespaces.extend(chunk.namespaces.into_iter().map(|n| (n.name.clone(), n)));
                if chunk.last {
                    self.view.revision = chunk.revision;
                    self.in_snapshot = None;
                    self.snapshots += 1;
                }
            }
            Event::Delta(delta) => {
                ensure!(self.in_snapshot.is_none(), "delta {} inside a snapshot", delta.revision);
                ensure!(
                    delta.revision == self.view.revision + 1,
                    "delta {} after revision {}: deltas must be contiguous",
                    delta.revision,
                    self.view.revision
                );
                ensure!(self.applied.insert(delta.revision), "delta {} applied twice", delta.revision);
                ensure!(!delta.changes.is_empty(), "delta {} changes nothing", delta.revision);
                for c in delta.changes {
                    match c.change.context("a change without content")? {
                        change::Change::Tenant(t) => {
                            ensure!(
                                t.revision == delta.revision,
                                "tenant {} at {} in {}",
                                t.id,
                                t.revision,
                                delta.revision
                            );
                            self.view.tenants.insert(t.id.clone(), t);
                        }
                        change::Change::Namespace(n) => {
                            ensure!(n.revision == delta.revision, "{} at {} in {}", n.name, n.revision, delta.revision);
                            self.view.namespaces.insert(n.name.clone(), n);
                        }
                        other => bail!("unexpected change {other:?}: no shard registry yet"),
                    }
                }
                self.view.revision = delta.revision;
            }
        }
        Ok(())
    }

    /// The revision to resume from after dropping the stream: the last one
    /// applied, or 0 when a snapshot was cut off half-way (its state is
    /// incomplete and must be rebuilt).
    fn resume_from(&mut self) -> u64 {
        if self.in_snapshot.take().is_some() {
            self.view = View::default();
        }
        self.view.revision
    }
}

async fn watch(client: &mut ControlPlaneClient, from_revision: u64) -> anyhow::Result<Streaming<WatchResponse>> {
    Ok(client.watch(WatchRequest { from_revision }).await?.into_inner())
}

/// Reads and applies messages until the view reaches `revision`.
async fn follow_to(stream: &mut Streaming<WatchResponse>, applier: &mut Applier, revision: u64) -> anyhow::Result<()> {
    tokio::time::timeout(CATCH_UP, async {
        while applier.view.revision < revision || applier.in_snapshot.is_some() {
            let message = stream.message().await?.context("the stream ended")?;
            applier.apply(message)?;
        }
        anyhow::Ok(())
    })
    .await
    .context("the watcher did not catch up")?
}

// ---------------------------------------------------------------------------
// Concurrent writers, reconnecting watchers
// ---------------------------------------------------------------------------

const WRITERS: usize = 4;
const MUTATIONS_PER_WRITER: usize = 50;
const WATCHERS: usize = 6;
const TENANTS: [&str; 2] = ["alpha", "beta"];

/// Makes `MUTATIONS_PER_WRITER` commits: creates, updates, grants and
/// deletes of namespaces only this writer touches (so each must succeed),
/// and updates of the shared tenants (which race with other writers).
async fn writer(endpoint: String, id: usize, seed: u64) -> anyhow::Result<usize> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut c = prism_client::control_plane(&endpoint, None).await?;
    let names: Vec<String> = TENANTS.iter().flat_map(|t| (0..4).map(move |k| format!("{t}/w{id}-{k}"))).collect();
    let mut live: BTreeMap<String, u64> = BTreeMap::new(); // name -> revision
    for i in 0..MUTATIONS_PER_WRITER {
        let name = names[rng.random_range(0..names.len())].clone();
        let Some(&rev) = live.get(&name) else {
            let mut spec = kv_spec();
            spec.capacity =
                Some(Box::new(Capacity { estimated_read_rps: rng.random_range(0..1000), ..Capacity::default() }));
            let ns = c.create_namespace(CreateNamespaceRequest { name: name.clone(), spec: Some(spec) }).await?;
            live.insert(name, ns.into_inner().revision);
            continue;
        };
        match rng.random_range(0..10) {
            0 => {
                let tenant = TENANTS[rng.random_range(0..TENANTS.len())];
                let req = UpdateTenantRequest {
                    tenant_id: tenant.into(),
                    display_name: format!("updated by writer {id} at step {i}"),
                    ..Default::default()
                };
                c.update_tenant(req).await?;
            }
            1..=3 => {
                let mut spec = kv_spec();
                spec.capacity =
                    Some(Box::new(Capacity { estimated_write_rps: rng.random_range(0..1000), ..Capacity::default() }));
                let req = UpdateNamespaceRequest { name: name.clone(), spec: Some(spec), expected_revision: rev };
                live.insert(name, c.update_namespace(req).await?.into_inner().revision);
            }
            4..=6 => {
                let req = GrantAccessRequest {
                    name: name.clone(),
                    principal: format!("reader-{}", rng.random_range(0..5)),
                    level: rng.random_range(1..=2),
                    expected_revision: rev,
                };
                live.insert(name, c.grant_access(req).await?.into_inner().revision);
            }
            _ => {
                // No shards are configured, so the namespace is DELETED at
                // once and its name can be created again.
                c.delete_namespace(DeleteNamespaceRequest { name: name.clone(), expected_revision: rev }).await?;
                live.remove(&name);
            }
        }
    }
    Ok(MUTATIONS_PER_WRITER)
}

/// Progress a watcher publishes for the test to poll.
#[derive(Debug, Default, Clone, Copy)]
struct Progress {
    revision: u64,
    in_snapshot: bool,
    connections: usize,
}

/// Follows the stream until `stop`, dropping it at random points and
/// reconnecting from the last applied revision (sometimes from 0, for a
/// fresh snapshot), on a fresh connection half of the time.
async fn watcher(
    endpoint: String,
    seed: u64,
    progress: Arc<Mutex<Progress>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Applier> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut applier = Applier::default();
    let mut client = prism_client::control_plane(&endpoint, None).await?;
    let mut from = 0;
    loop {
        if rng.random_bool(0.5) {
            client = prism_client::control_plane(&endpoint, None).await?;
        }
        let mut stream = watch(&mut client, from).await?;
        if let Ok(mut p) = progress.lock() {
            p.connections += 1;
        }
        loop {
            let message = tokio::select! {
                message = stream.message() => message,
                _ = stop.changed() => return Ok(applier),
            };
            match message {
                Ok(Some(message)) => applier.apply(message)?,
                Ok(None) => bail!("the stream ended without a status"),
                // Cut off for lagging: resume, as a gateway would.
                Err(status) if status.code() == Code::Aborted => break,
                Err(status) => return Err(status.into()),
            }
            if let Ok(mut p) = progress.lock() {
                p.revision = applier.view.revision;
                p.in_snapshot = applier.in_snapshot.is_some();
            }
            if rng.random_bool(1.0 / 12.0) {
                break;
            }
        }
        from = if rng.random_bool(0.15) {
            applier.resume_from();
            0
        } else {
            applier.resume_from()
        };
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_watchers_see_every_change_once_in_order() -> anyhow::Result<()> {
    let seed: u64 = rand::random();
    // Printed so a failure can be replayed with the same choices.
    println!("seed {seed}");
    let (cp, mut c) = start(&[]).await?;
    for t in TENANTS {
        create_tenant(&mut c, t).await?;
    }
    let first = revision(&mut c).await?;

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut watchers = Vec::new();
    let mut progress = Vec::new();
    for i in 0..WATCHERS {
        let p = Arc::new(Mutex::new(Progress::default()));
        progress.push(p.clone());
        watchers.push(tokio::spawn(watcher(cp.endpoint(), seed.wrapping_add(1_000 + i as u64), p, stopped.clone())));
    }
    let writers: Vec<_> =
        (0..WRITERS).map(|i| tokio::spawn(writer(cp.endpoint(), i, seed.wrapping_add(i as u64)))).collect();
    let mut commits = 0;
    for w in writers {
        commits += w.await??;
    }

    // Every mutation was exactly one commit.
    let last = cp.plane.store().revision().await?;
    assert_eq!(last, first + commits as u64);
    let caught_up = eventually(CATCH_UP, || {
        let progress: Vec<Progress> = progress.iter().map(|p| p.lock().map(|p| *p).unwrap_or_default()).collect();
        async move {
            for (i, p) in progress.iter().enumerate() {
                ensure!(p.revision == last && !p.in_snapshot, "watcher {i} is at {p:?}, the store at {last}");
            }
            Ok(progress)
        }
    })
    .await;
    let _ = stop.send(true);
    let mut views = Vec::new();
    for (i, w) in watchers.into_iter().enumerate() {
        views.push(w.await?.with_context(|| format!("watcher {i} (seed {seed})"))?);
    }
    let progress = caught_up?;

    let want = View::of(&cp).await?;
    assert_eq!(want.revision, last);
    assert_eq!(want.tenants.len(), 2);
    assert!(want.namespaces.len() > 8, "the writers created namespaces: {}", want.namespaces.len());
    for (i, applier) in views.iter().enumerate() {
        assert_eq!(applier.view, want, "watcher {i} (seed {seed})");
        println!(
            "watcher {i}: {} connections, {} snapshots, {} deltas",
            progress[i].connections,
            applier.snapshots,
            applier.applied.len()
        );
    }
    // The stream agrees with the listing API as well.
    let listed = c
        .list_namespaces(ListNamespacesRequest { include_deleted: true, page_size: 1000, ..Default::default() })
        .await?
        .into_inner()
        .namespaces;
    assert_eq!(listed, want.namespaces.values().cloned().collect::<Vec<_>>());
    let tenants = c.list_tenants(ListTenantsRequest { include_deleted: true, ..Default::default() }).await?;
    assert_eq!(tenants.into_inner().tenants, want.tenants.values().cloned().collect::<Vec<_>>());
    Ok(())
}

// ---------------------------------------------------------------------------
// A watcher too slow to keep up
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_watcher_is_cut_off_without_blocking_writers_and_resumes() -> anyhow::Result<()> {
    slow_watcher_is_cut_off(ControlPlaneConfig { watch_buffer: 8, ..Default::default() }).await
}

/// The same, bounded by bytes alone: a million deltas may be kept, but
/// only 1 MiB of them (about 20 of these), so a watcher of large deltas
/// cannot hold the control plane's memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_watcher_of_large_deltas_is_cut_off_by_the_byte_bound() -> anyhow::Result<()> {
    slow_watcher_is_cut_off(ControlPlaneConfig {
        watch_buffer: 1_000_000,
        watch_buffer_bytes: 1 << 20,
        ..Default::default()
    })
    .await
}

async fn slow_watcher_is_cut_off(config: ControlPlaneConfig) -> anyhow::Result<()> {
    let (_cp, mut c) = start_with(config).await?;
    create_tenant(&mut c, "acme").await?;
    // Big deltas (~50 KiB each: every change carries the whole namespace)
    // so that the transport's buffers (HTTP/2 windows, socket buffers) fill
    // long before the writers are done; small ones would all fit in them.
    let mut spec = kv_spec();
    spec.access = Some(Box::new(Access {
        owners: (0..256).map(|i| format!("owner-{i:03}-{}", "x".repeat(190))).collect(),
        consumers: vec![],
    }));
    let ns =
        c.create_namespace(CreateNamespaceRequest { name: "acme/big".into(), spec: Some(spec) }).await?.into_inner();
    let start = ns.revision;

    let mut slow = watch(&mut c, start).await?;
    // 200 commits while the watcher reads nothing: each must finish.
    let mut last_commit = start;
    for i in 0..200 {
        let req = GrantAccessRequest {
            name: "acme/big".into(),
            principal: format!("reader-{}", i % 50),
            level: (if i % 2 == 0 { AccessLevel::Read } else { AccessLevel::ReadWrite }) as i32,
            expected_revision: last_commit,
        };
        last_commit = c.grant_access(req).await?.into_inner().revision;
    }
    assert_eq!(last_commit, start + 200, "every commit finished while the watcher slept");

    // Now read: the buffered deltas, in order, then ABORTED.
    let mut applier = Applier { view: View { revision: start, ..View::default() }, ..Applier::default() };
    let status = tokio::time::timeout(CATCH_UP, async {
        loop {
            match slow.message().await {
                Ok(Some(message)) => applier.apply(message)?,
                Ok(None) => bail!("the stream ended without a status"),
                Err(status) => return Ok(status),
            }
        }
    })
    .await
    .context("the slow watcher was never cut off")??;
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    let info = status.get_details_error_info().context("ErrorInfo detail")?;
    assert_eq!(info.reason, "WATCH_LAGGED");
    let cut_at = applier.view.revision;
    assert_eq!(info.metadata.get("resume_from_revision"), Some(&cut_at.to_string()));
    assert!(cut_at < last_commit, "the watcher must have been cut off before the end (at {cut_at})");
    assert_eq!(applier.snapshots, 0);

    // Resuming from the last applied revision fills exactly the rest, from
    // the change log: no snapshot, no gap.
    let mut resumed = watch(&mut c, cut_at).await?;
    follow_to(&mut resumed, &mut applier, last_commit).await?;
    assert_eq!(applier.snapshots, 0);
    assert_eq!(applier.applied, (start + 1..=last_commit).collect());
    let ns = c.get_namespace(prism_proto::control::GetNamespaceRequest { name: "acme/big".into() }).await?;
    assert_eq!(applier.view.namespaces.get("acme/big"), Some(&ns.into_inner()));
    Ok(())
}

// ---------------------------------------------------------------------------
// Compaction
// ---------------------------------------------------------------------------

/// Makes `n` commits (tenant updates); returns the last revision.
async fn commits(c: &mut ControlPlaneClient, n: usize) -> anyhow::Result<u64> {
    let mut last = 0;
    for i in 0..n {
        let req = UpdateTenantRequest { tenant_id: "acme".into(), display_name: format!("v{i}"), ..Default::default() };
        last = c.update_tenant(req).await?.into_inner().revision;
    }
    Ok(last)
}

/// The first message of a watch from `from`.
async fn first_message(c: &mut ControlPlaneClient, from: u64) -> anyhow::Result<Event> {
    let mut stream = watch(c, from).await?;
    stream.message().await?.and_then(|m| m.event).context("no first message")
}

/// A snapshot of more namespaces than a store part and a watch chunk hold
/// is streamed in several chunks at one revision while commits go on;
/// the watcher then follows with exactly the deltas after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_snapshot_streams_in_chunks_while_commits_go_on() -> anyhow::Result<()> {
    let (cp, mut c) = start(&[]).await?;
    create_tenant(&mut c, "acme").await?;
    let store = cp.plane.store();
    let (blocks, each) = (13, 100);
    for block in 0..blocks {
        let puts = (0..each)
            .map(|i| Put::Namespace(Namespace { name: format!("acme/ns-{block:02}-{i:03}"), ..Namespace::default() }))
            .collect();
        store.commit(Txn { puts, ..Txn::default() }).await?;
    }
    let mut stream = watch(&mut c, 0).await?;
    let first = stream.message().await?.context("a first message")?;
    let Some(Event::Snapshot(chunk)) = &first.event else { bail!("a watch from 0 starts with a snapshot: {first:?}") };
    let at = chunk.revision;
    assert_eq!(at, 1 + blocks);
    let mut applier = Applier::default();
    applier.apply(first)?;
    // Commits while the rest of the snapshot is streamed.
    let last = commits(&mut c, 5).await?;
    let mut chunks = 1;
    while applier.in_snapshot.is_some() {
        applier.apply(stream.message().await?.context("the stream ended inside the snapshot")?)?;
        chunks += 1;
    }
    assert_eq!(applier.view.revision, at, "the snapshot is at the revision it started at");
    assert_eq!(applier.view.namespaces.len(), blocks as usize * each);
    assert!(chunks >= (blocks as usize * each).div_ceil(prism_control_plane::watch::SNAPSHOT_CHUNK), "{chunks} chunks");
    follow_to(&mut stream, &mut applier, last).await?;
    assert_eq!(applier.applied, (at + 1..=last).collect(), "then exactly the deltas after it");
    assert_eq!(applier.view, View::of(&cp).await?);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_older_than_the_log_gets_a_snapshot() -> anyhow::Result<()> {
    let (cp, mut c) = start_with(ControlPlaneConfig { change_log_retention: 10, ..Default::default() }).await?;
    create_tenant(&mut c, "acme").await?;
    create_namespace(&mut c, "acme/x").await?;
    // A watcher applies revisions 1 and 2, then goes away.
    let mut applier = Applier::default();
    let mut stream = watch(&mut c, 0).await?;
    follow_to(&mut stream, &mut applier, 2).await?;
    drop(stream);

    let last = commits(&mut c, 30).await?;
    assert_eq!(last, 32);
    // The log holds revisions 23..=32: a watcher at 22 can still resume,
    // one at 21 cannot.
    match first_message(&mut c, 22).await? {
        Event::Delta(d) => assert_eq!(d.revision, 23),
        other => bail!("a watcher inside the log resumes with deltas, got {other:?}"),
    }
    match first_message(&mut c, 21).await? {
        Event::Snapshot(s) => assert_eq!(s.revision, last),
        other => bail!("a watcher older than the log gets a snapshot, got {other:?}"),
    }

    // The watcher resumes from 2: a snapshot first, then live deltas.
    let mut stream = watch(&mut c, applier.resume_from()).await?;
    let first = stream.message().await?.context("first message")?;
    assert!(matches!(first.event, Some(Event::Snapshot(_))), "{first:?}");
    applier.apply(first)?;
    follow_to(&mut stream, &mut applier, last).await?;
    let more = commits(&mut c, 3).await?;
    follow_to(&mut stream, &mut applier, more).await?;
    assert_eq!(applier.view, View::of(&cp).await?);
    assert_eq!(applier.snapshots, 2);
    assert_eq!(applier.applied, (last + 1..=more).collect(), "deltas 3..=32 came inside the snapshot");

    // A watcher ahead of the store (it saw another store) rebuilds too.
    match first_message(&mut c, 10_000).await? {
        Event::Snapshot(s) => assert_eq!(s.revision, more),
        other => bail!("a watcher ahead of the store gets a snapshot, got {other:?}"),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_stays_gap_free_when_retention_changes_across_restarts() -> anyhow::Result<()> {
    let config = |retention| ControlPlaneConfig { change_log_retention: retention, ..Default::default() };
    let (cp, mut c) = start_with(config(10)).await?;
    create_tenant(&mut c, "acme").await?;
    let last = commits(&mut c, 59).await?;
    assert_eq!(last, 60); // the log holds 51..=60

    // A longer retention cannot bring dropped deltas back: a watcher at 40
    // must still get a snapshot, not delta 51.
    let cp = cp.restart(config(30)).await?;
    let mut c = prism_client::control_plane(&cp.endpoint(), None).await?;
    let last = commits(&mut c, 1).await?;
    assert_eq!(last, 61);
    for from in [40, 49] {
        match first_message(&mut c, from).await? {
            Event::Snapshot(s) => assert_eq!(s.revision, last, "from {from}"),
            other => bail!("from {from}: the log was compacted through 50, got {other:?}"),
        }
    }
    match first_message(&mut c, 50).await? {
        Event::Delta(d) => assert_eq!(d.revision, 51),
        other => bail!("from 50 the log still reaches, got {other:?}"),
    }

    // A shorter one drops everything it no longer keeps.
    let cp = cp.restart(config(5)).await?;
    let mut c = prism_client::control_plane(&cp.endpoint(), None).await?;
    let last = commits(&mut c, 1).await?;
    assert_eq!(last, 62); // the log holds 58..=62
    match first_message(&mut c, 56).await? {
        Event::Snapshot(s) => assert_eq!(s.revision, last),
        other => bail!("from 56 the log no longer reaches, got {other:?}"),
    }
    for from in [57, 61] {
        match first_message(&mut c, from).await? {
            Event::Delta(d) => assert_eq!(d.revision, from + 1),
            other => bail!("from {from} the log still reaches, got {other:?}"),
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Restart
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_every_object_and_revision_and_watchers_resume_exactly() -> anyhow::Result<()> {
    let shards = ["shard-0", "shard-1"];
    let config = ControlPlaneConfig { shards: shards.map(String::from).to_vec(), ..Default::default() };
    let (cp, mut c) = start_with(config.clone()).await?;
    create_tenant(&mut c, "acme").await?;
    create_tenant(&mut c, "globex").await?;
    let ns = create_namespace(&mut c, "acme/profiles").await?;
    let report = ReportNamespaceStatusRequest {
        name: ns.name.clone(),
        shard_id: ns.shard_id.clone(),
        create_revision: ns.create_revision,
        status: NamespaceStatus::Active as i32,
        reason: String::new(),
        ..Default::default()
    };
    c.report_namespace_status(report).await?;
    create_namespace(&mut c, "acme/sessions").await?;
    create_namespace(&mut c, "globex/events").await?;
    c.delete_namespace(DeleteNamespaceRequest { name: "globex/events".into(), expected_revision: 0 }).await?;
    let grant =
        GrantAccessRequest { name: "acme/sessions".into(), principal: "bob".into(), level: 1, expected_revision: 0 };
    c.grant_access(grant).await?;

    let before = revision(&mut c).await?;
    let list_all = |c: &ControlPlaneClient| {
        let mut c = c.clone();
        async move {
            let tenants = c.list_tenants(ListTenantsRequest { include_deleted: true, ..Default::default() }).await?;
            let namespaces =
                c.list_namespaces(ListNamespacesRequest { include_deleted: true, ..Default::default() }).await?;
            anyhow::Ok((tenants.into_inner().tenants, namespaces.into_inner().namespaces))
        }
    };
    let listed_before = list_all(&c).await?;
    let view_before = View::of(&cp).await?;

    // A watcher that has applied everything up to `before`.
    let mut applier = Applier::default();
    let mut old_stream = watch(&mut c, 0).await?;
    follow_to(&mut old_stream, &mut applier, before).await?;
    assert_eq!(applier.view, view_before);

    let cp = cp.restart(config).await?;
    // The old stream was ended by the shutdown, with a retryable status.
    let end = tokio::time::timeout(CATCH_UP, old_stream.message()).await.context("old stream still open")?;
    match end {
        Err(status) => assert_eq!(status.code(), Code::Unavailable, "{status:?}"),
        Ok(other) => bail!("the old stream must end with UNAVAILABLE, got {other:?}"),
    }

    let mut c = prism_client::control_plane(&cp.endpoint(), None).await?;
    assert_eq!(revision(&mut c).await?, before);
    assert_eq!(cp.plane.store().revision().await?, before);
    assert_eq!(list_all(&c).await?, listed_before);
    assert_eq!(View::of(&cp).await?, view_before);

    // Resume with the last applied revision: exactly the deltas after it.
    let mut stream = watch(&mut c, before).await?;
    let created = create_namespace(&mut c, "acme/after-restart").await?;
    assert_eq!(created.revision, before + 1);
    let message = stream.message().await?.context("the next delta")?;
    let Some(Event::Delta(delta)) = &message.event else { bail!("expected a delta, got {message:?}") };
    assert_eq!(delta.revision, before + 1);
    assert_eq!(delta.changes.len(), 1);
    assert_eq!(delta.changes[0].change, Some(change::Change::Namespace(created)));
    applier.apply(message)?;
    // And nothing else came in between: the next message is the next commit.
    let rename = UpdateTenantRequest { tenant_id: "globex".into(), display_name: "later".into(), ..Default::default() };
    let later = c.update_tenant(rename).await?.into_inner();
    let message = stream.message().await?.context("the following delta")?;
    applier.apply(message)?;
    assert_eq!(applier.view.revision, later.revision);
    assert_eq!(applier.view, View::of(&cp).await?);
    Ok(())
}

// ---------------------------------------------------------------------------
// Large metadata
// ---------------------------------------------------------------------------

/// The largest namespace validation allows in its access lists (~135 KiB):
/// 256 owners and 256 consumers of 256 bytes each.
fn largest_spec() -> prism_proto::control::NamespaceSpec {
    let principal = |kind: &str, i: usize| format!("{kind}-{i:03}-{}", "p".repeat(256 - kind.len() - 5));
    let mut spec = kv_spec();
    spec.access = Some(Box::new(Access {
        owners: (0..256).map(|i| principal("owner", i)).collect(),
        consumers: (0..256)
            .map(|i| prism_proto::control::Grant { principal: principal("reader", i), level: AccessLevel::Read as i32 })
            .collect(),
    }));
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_metadata_still_reaches_watchers() -> anyhow::Result<()> {
    let (cp, mut c) = start(&[]).await?;
    create_tenant(&mut c, "big").await?;
    // 130 of the largest namespaces: ~17 MiB, more than one gRPC message
    // may carry (16 MiB), so the snapshot must be chunked by size.
    let spec = largest_spec();
    let mut writers = Vec::new();
    for part in 0..2 {
        let (mut c, spec) = (c.clone(), spec.clone());
        writers.push(tokio::spawn(async move {
            for i in (part..130).step_by(2) {
                let req = CreateNamespaceRequest { name: format!("big/ns-{i:03}"), spec: Some(spec.clone()) };
                c.create_namespace(req).await?;
            }
            anyhow::Ok(())
        }));
    }
    for w in writers {
        w.await??;
    }
    let created = revision(&mut c).await?;
    let mut applier = Applier::default();
    let mut stream = watch(&mut c, 0).await?;
    follow_to(&mut stream, &mut applier, created).await?;
    assert_eq!(applier.view, View::of(&cp).await?);

    // Deleting the tenant rewrites all 130 namespaces in one commit: a
    // delta too big for one message. Watchers, live or resuming, must
    // still converge.
    let mut resumed = Applier { view: applier.view.clone(), ..Applier::default() };
    c.delete_tenant(prism_proto::control::DeleteTenantRequest { tenant_id: "big".into(), expected_revision: 0 })
        .await?;
    let deleted = created + 1;
    follow_to(&mut stream, &mut applier, deleted).await?;
    assert_eq!(applier.view, View::of(&cp).await?);
    assert_eq!(applier.snapshots, 2, "a snapshot stood in for the oversized delta");
    let mut stream = watch(&mut c, created).await?;
    follow_to(&mut stream, &mut resumed, deleted).await?;
    assert_eq!(resumed.view, View::of(&cp).await?);
    assert_eq!(resumed.snapshots, 1, "a snapshot stood in for the oversized delta");
    Ok(())
}
