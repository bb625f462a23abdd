//! The Postgres metadata store against a real PostgreSQL server: the same
//! store-level behaviour as the embedded file store (one set of checks run
//! against both, group commit under concurrency included), and several
//! control-plane replicas on one database whose watchers all see every
//! change exactly once, in revision order, while one replica restarts
//! mid-run.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail, ensure};
use prism_client::ControlPlaneClient;
use prism_control_plane::ControlPlaneConfig;
use prism_control_plane::store::bus::Recv;
use prism_control_plane::store::file::FileStore;
use prism_control_plane::store::postgres::PgStore;
use prism_control_plane::store::{
    AuditFilter, Changes, Committed, Condition, Options, Put, SNAPSHOT_PART, SnapshotPart, Store, Txn,
};
use prism_proto::control::{
    Abstraction, AuditEvent, Backend, CreateNamespaceRequest, CreateTenantRequest, Delta, GetNamespaceRequest,
    Namespace, NamespaceSpec, NamespaceStatus, Shard, ShardInstance, Tenant, UpdateNamespaceRequest,
    UpdateTenantRequest, WatchRequest, WatchResponse, change, watch_response::Event,
};
use prism_testkit::postgres::{PostgresServer, skip_reason};
use prism_testkit::{ControlPlaneHandle, eventually};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;

/// How long anything may take to converge.
const CONVERGE: Duration = Duration::from_secs(60);

/// The server every test of this binary shares; `None` (skip) when
/// PostgreSQL is missing and `PRISM_REQUIRE_SERVERS` is unset.
fn server_or_skip() -> Option<&'static PostgresServer> {
    static SERVER: OnceLock<Result<Option<PostgresServer>, String>> = OnceLock::new();
    match SERVER.get_or_init(|| PostgresServer::start_or_skip().map_err(|e| format!("{e:#}"))) {
        Ok(server) => server.as_ref(),
        Err(e) => panic!("cannot start PostgreSQL: {e}"),
    }
}

macro_rules! server_or_skip {
    () => {
        match server_or_skip() {
            Some(server) => server,
            None => {
                println!("{}", skip_reason());
                return Ok(());
            }
        }
    };
}

// ---------------------------------------------------------------------------
// Store-level behaviour, shared by both stores
// ---------------------------------------------------------------------------

fn tenant(id: &str, display_name: &str) -> Put {
    Put::Tenant(Tenant { id: id.into(), display_name: display_name.into(), ..Tenant::default() })
}

fn namespace(name: &str, create_revision: u64) -> Put {
    Put::Namespace(Namespace { name: name.into(), create_revision, ..Namespace::default() })
}

fn event(tenant: &str, target: &str, action: &str) -> AuditEvent {
    AuditEvent {
        time: Some(SystemTime::now().into()),
        principal: "alice".into(),
        action: action.into(),
        tenant_id: tenant.into(),
        target: target.into(),
        result: "ok".into(),
        ..AuditEvent::default()
    }
}

async fn commit(store: &dyn Store, conditions: Vec<Condition>, puts: Vec<Put>, audit: Vec<AuditEvent>) -> Committed {
    store.commit(Txn { conditions, puts, audit }).await.expect("commit")
}

async fn committed(store: &dyn Store, conditions: Vec<Condition>, puts: Vec<Put>, audit: Vec<AuditEvent>) -> u64 {
    match commit(store, conditions, puts, audit).await {
        Committed::Ok(delta) => delta.revision,
        Committed::Conflict(c) => panic!("unexpected conflict on {c:?}"),
    }
}

/// Commits, conflicts, revisions, listings, the broadcast, snapshot,
/// change log with compaction (retention 5) and audit.
///
/// `broadcast_lags`: whether the store's broadcast runs behind its commits
/// (the Postgres store's broadcaster reads the change log after the fact).
/// Such a store may skip revisions that compaction removed before it read
/// them — watchers then rebuild from a snapshot — but nothing else.
fn received(r: Recv) -> anyhow::Result<Arc<Delta>> {
    match r {
        Recv::Delta(delta) => Ok(delta),
        other => bail!("expected a delta, got {other:?}"),
    }
}

async fn store_behaves(store: Arc<dyn Store>, broadcast_lags: bool) -> anyhow::Result<()> {
    let s = store.as_ref();
    assert_eq!(s.revision().await?, 0);
    let mut live = s.subscribe();

    let cond_tenant = |revision| Condition::Tenant { id: "acme".into(), revision };
    let cond_ns = |name: &str, revision| Condition::Namespace { name: name.into(), revision };
    assert_eq!(committed(s, vec![cond_tenant(0)], vec![tenant("acme", "Acme")], vec![]).await, 1);
    match commit(s, vec![cond_tenant(0)], vec![tenant("acme", "again")], vec![]).await {
        Committed::Conflict(c) => assert_eq!(c, cond_tenant(0)),
        Committed::Ok(d) => bail!("a second create must conflict, got {d:?}"),
    }
    assert_eq!(s.revision().await?, 1, "a conflict commits nothing");
    assert_eq!(s.get_tenant("acme").await?.map(|t| (t.revision, t.display_name)), Some((1, "Acme".into())));
    assert_eq!(s.get_tenant("nobody").await?, None);

    let audit = vec![event("acme", "acme/a", "CreateNamespace")];
    assert_eq!(committed(s, vec![cond_ns("acme/a", 0)], vec![namespace("acme/a", 0)], audit).await, 2);
    let a = s.get_namespace("acme/a").await?.context("acme/a")?;
    assert_eq!((a.revision, a.create_revision), (2, 2), "created by the commit");
    assert_eq!(committed(s, vec![cond_ns("acme/a", 2)], vec![namespace("acme/a", 2)], vec![]).await, 3);
    let a = s.get_namespace("acme/a").await?.context("acme/a")?;
    assert_eq!((a.revision, a.create_revision), (3, 2), "an update keeps the create revision");
    match commit(s, vec![cond_ns("acme/a", 2)], vec![namespace("acme/a", 2)], vec![]).await {
        Committed::Conflict(c) => assert_eq!(c, cond_ns("acme/a", 2)),
        Committed::Ok(d) => bail!("a stale update must conflict, got {d:?}"),
    }
    let audit = vec![event("acme", "acme/b", "CreateNamespace"), event("acmf", "acmf/x", "CreateNamespace")];
    let puts = vec![namespace("acme/b", 0), namespace("acmf/x", 0), tenant("acmf", "Acmf")];
    assert_eq!(committed(s, vec![], puts, audit).await, 4);
    for i in 0..4 {
        committed(s, vec![], vec![tenant("acme", &format!("v{i}"))], vec![event("acme", "acme", "UpdateTenant")]).await;
    }
    assert_eq!(s.revision().await?, 8);

    // Listings, in byte order, by tenant and after a key.
    let names = |v: Vec<Namespace>| v.into_iter().map(|n| n.name).collect::<Vec<_>>();
    assert_eq!(names(s.list_namespaces("acme", "", 10).await?), ["acme/a", "acme/b"]);
    assert_eq!(names(s.list_namespaces("acme", "acme/a", 10).await?), ["acme/b"]);
    assert_eq!(names(s.list_namespaces("", "acme/a", 10).await?), ["acme/b", "acmf/x"]);
    assert_eq!(names(s.list_namespaces("", "", 1).await?), ["acme/a"]);
    let ids = |v: Vec<Tenant>| v.into_iter().map(|t| t.id).collect::<Vec<_>>();
    assert_eq!(ids(s.list_tenants("", 10).await?), ["acme", "acmf"]);
    assert_eq!(ids(s.list_tenants("acme", 10).await?), ["acmf"]);

    // Every commit was broadcast once, in order (a lagging broadcaster may
    // have skipped only what retention 5 compacted away: revisions 1..=3).
    let mut seen = Vec::new();
    while seen.last() != Some(&8) {
        let delta = received(tokio::time::timeout(CONVERGE, live.recv()).await.context("broadcast")?)?;
        seen.push(delta.revision);
    }
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "in order, once each: {seen:?}");
    let skipped: Vec<u64> = (1..=8).filter(|r| !seen.contains(r)).collect();
    if broadcast_lags {
        assert!(skipped.iter().all(|r| *r <= 3), "skipped revisions that were never compacted: {skipped:?}");
    } else {
        assert!(skipped.is_empty(), "skipped {skipped:?}");
    }
    assert!(live.try_recv().is_none(), "nothing more");

    let snapshot = s.snapshot().await?;
    assert_eq!(snapshot.revision, 8);
    assert_eq!(ids(snapshot.tenants.clone()), ["acme", "acmf"]);
    assert_eq!(names(snapshot.namespaces.clone()), ["acme/a", "acme/b", "acmf/x"]);
    assert_eq!(snapshot.tenants[0].revision, 8);

    // Retention 5: the log holds 4..=8.
    assert!(matches!(s.changes_since(2, 100).await?, Changes::Compacted));
    let Changes::Deltas(deltas) = s.changes_since(3, 100).await? else { bail!("3 is still in the log") };
    assert_eq!(deltas.iter().map(|d| d.revision).collect::<Vec<_>>(), [4, 5, 6, 7, 8]);
    let Changes::Deltas(deltas) = s.changes_since(5, 2).await? else { bail!("5 is in the log") };
    assert_eq!(deltas.iter().map(|d| d.revision).collect::<Vec<_>>(), [6, 7]);
    let Changes::Deltas(deltas) = s.changes_since(8, 100).await? else { bail!("8 is the head") };
    assert!(deltas.is_empty());
    let Some(change::Change::Namespace(ns)) = s.changes_since(3, 1).await.map(|c| match c {
        Changes::Deltas(d) => d.first().and_then(|d| d.changes.first().and_then(|c| c.change.clone())),
        Changes::Compacted => None,
    })?
    else {
        bail!("delta 4 starts with acme/b")
    };
    assert_eq!((ns.name.as_str(), ns.revision, ns.create_revision), ("acme/b", 4, 4));

    // Audit: sequence and revision filled, newest first, filters.
    s.append_audit(vec![event("acme", "acme/z", "DeleteNamespace")]).await?;
    let all = s.list_audit(AuditFilter::default(), 100).await?;
    assert_eq!(all.iter().map(|e| e.sequence).collect::<Vec<_>>(), [8, 7, 6, 5, 4, 3, 2, 1]);
    assert_eq!(all.iter().map(|e| e.revision).collect::<Vec<_>>(), [0, 8, 7, 6, 5, 4, 4, 2]);
    let by = |f: AuditFilter| async move { s.list_audit(f, 100).await.map(|v| v.len()) };
    assert_eq!(by(AuditFilter { tenant_id: "acmf".into(), ..Default::default() }).await?, 1);
    assert_eq!(by(AuditFilter { action: "UpdateTenant".into(), ..Default::default() }).await?, 4);
    assert_eq!(by(AuditFilter { target: "acme/z".into(), ..Default::default() }).await?, 1);
    assert_eq!(by(AuditFilter { principal: "bob".into(), ..Default::default() }).await?, 0);
    assert_eq!(by(AuditFilter { before_sequence: Some(3), ..Default::default() }).await?, 2);
    assert_eq!(by(AuditFilter { since_seconds: i64::MAX, ..Default::default() }).await?, 0);
    assert_eq!(s.list_audit(AuditFilter::default(), 2).await?.len(), 2);

    // Shards: conditioned like the rest, listed in id order, in the
    // snapshot, and removed (with `shard_removed`) when their last
    // instance goes.
    let shard = |id: &str, endpoints: &[&str]| {
        Put::Shard(Shard {
            shard_id: id.into(),
            instances: endpoints
                .iter()
                .map(|e| ShardInstance { instance_id: format!("i-{e}"), endpoint: (*e).into(), ..Default::default() })
                .collect(),
            revision: 0,
        })
    };
    let cond_shard = |id: &str, revision| Condition::Shard { id: id.into(), revision };
    assert_eq!(committed(s, vec![cond_shard("s-b", 0)], vec![shard("s-b", &["h:2"])], vec![]).await, 9);
    assert_eq!(committed(s, vec![cond_shard("s-a", 0)], vec![shard("s-a", &["h:1", "h:3"])], vec![]).await, 10);
    match commit(s, vec![cond_shard("s-a", 0)], vec![shard("s-a", &["h:9"])], vec![]).await {
        Committed::Conflict(c) => assert_eq!(c, cond_shard("s-a", 0)),
        Committed::Ok(d) => bail!("registering over a newer shard must conflict, got {d:?}"),
    }
    let listed = s.list_shards().await?;
    assert_eq!(listed.iter().map(|x| (x.shard_id.as_str(), x.revision)).collect::<Vec<_>>(), [("s-a", 10), ("s-b", 9)]);
    assert_eq!(listed[0].instances.len(), 2);
    assert_eq!(s.snapshot().await?.shards, listed);
    let Committed::Ok(delta) = commit(s, vec![cond_shard("s-b", 9)], vec![shard("s-b", &[])], vec![]).await else {
        bail!("removing s-b at its revision must commit")
    };
    assert!(matches!(&delta.changes[0].change, Some(change::Change::ShardRemoved(id)) if id == "s-b"));
    assert_eq!(s.list_shards().await?.len(), 1);
    assert_eq!(s.get_namespace("acme/a").await?.map(|n| n.revision), Some(3), "shards touch no namespace");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_store_passes_the_store_checks() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    store_behaves(Arc::new(FileStore::open(dir.path(), 64, 5)?), false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_store_passes_the_store_checks() -> anyhow::Result<()> {
    let server = server_or_skip!();
    store_behaves(Arc::new(PgStore::open(&server.dsn(), "store \"checks\"", 64, 5).await?), true).await?;
    // Reopened, it finds everything; the broadcast starts after it.
    let store = PgStore::open(&server.dsn(), "store \"checks\"", 64, 5).await?;
    assert_eq!(store.revision().await?, 11);
    assert_eq!(store.snapshot().await?.namespaces.len(), 3);
    assert_eq!(store.snapshot().await?.shards.len(), 1);
    Ok(())
}

// ---------------------------------------------------------------------------
// Group commit, shared by both stores
// ---------------------------------------------------------------------------

/// Opens (again) the store a group-commit check runs on.
type Open = Box<dyn Fn() -> Pin<Box<dyn Future<Output = anyhow::Result<Arc<dyn Store>>> + Send>> + Send + Sync>;

/// Tasks committing at once, and the distinct namespaces each creates.
const TASKS: usize = 64;
const EACH: usize = 8;

/// What one committing task was told.
struct Told {
    acknowledged: Vec<(String, u64)>,
    contested: Committed,
    room: Committed,
}

async fn commit_from_one_task(store: Arc<dyn Store>, task: usize) -> anyhow::Result<Told> {
    let s = store.as_ref();
    let mut acknowledged = Vec::new();
    for i in 0..EACH {
        let name = format!("many/t{task:02}-{i}");
        let audit = vec![event("many", &name, "CreateNamespace")];
        let condition = Condition::Namespace { name: name.clone(), revision: 0 };
        acknowledged.push((name.clone(), committed(s, vec![condition], vec![namespace(&name, 0)], audit).await));
    }
    // Every task races for one name, and for a tenant's ten places.
    let contested = Condition::Namespace { name: "race/one".into(), revision: 0 };
    let contested = commit(s, vec![contested], vec![namespace("race/one", 0)], vec![]).await;
    let room = Condition::NamespaceRoom { tenant: "room".into(), limit: 10 };
    let room = commit(s, vec![room], vec![namespace(&format!("room/t{task:02}"), 0)], vec![]).await;
    // Refusals are audited through the same queue.
    s.append_audit(vec![event("many", "many", "Refused")]).await?;
    Ok(Told { acknowledged, contested, room })
}

/// `TASKS` tasks commit at once on a fresh store: every acknowledged
/// commit has its own revision with none skipped, the subscription
/// delivers each once in order, conflicting commits have exactly the
/// winners their conditions allow, audit sequences stay contiguous, the
/// live-namespace counts follow, and after reopening the store every
/// acknowledged commit is there.
async fn group_commit_behaves(open: Open) -> anyhow::Result<()> {
    let store = open().await?;
    assert_eq!(store.revision().await?, 0, "a fresh store");
    let mut live = store.subscribe();
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..TASKS {
        tasks.spawn(commit_from_one_task(store.clone(), task));
    }
    let told = tasks.join_all().await.into_iter().collect::<anyhow::Result<Vec<Told>>>()?;

    let contested = Condition::Namespace { name: "race/one".into(), revision: 0 };
    let room = Condition::NamespaceRoom { tenant: "room".into(), limit: 10 };
    let mut revisions = Vec::new();
    let (mut contested_won, mut room_won) = (0, 0);
    for t in &told {
        revisions.extend(t.acknowledged.iter().map(|(_, r)| *r));
        for (outcome, condition, won) in
            [(&t.contested, &contested, &mut contested_won), (&t.room, &room, &mut room_won)]
        {
            match outcome {
                Committed::Ok(delta) => {
                    revisions.push(delta.revision);
                    *won += 1;
                }
                Committed::Conflict(c) => assert_eq!(c, condition),
            }
        }
    }
    assert_eq!((contested_won, room_won), (1, 10), "one name has one winner; ten places have ten");
    revisions.sort_unstable();
    let last = (TASKS * EACH + 1 + 10) as u64;
    assert_eq!(revisions, (1..=last).collect::<Vec<_>>(), "one revision per commit, none skipped");
    assert_eq!(store.revision().await?, last);

    let mut delivered = Vec::new();
    while delivered.last() != Some(&last) {
        let delta = received(tokio::time::timeout(CONVERGE, live.recv()).await.context("broadcast")?)?;
        delivered.push(delta.revision);
    }
    assert_eq!(delivered, (1..=last).collect::<Vec<_>>(), "each commit delivered once, in order");

    let sequences: Vec<u64> =
        store.list_audit(AuditFilter::default(), 10_000).await?.iter().map(|e| e.sequence).collect();
    let events = (TASKS * EACH + TASKS) as u64;
    assert_eq!(sequences, (1..=events).rev().collect::<Vec<_>>(), "audit sequences contiguous");

    let count = |tenant: &'static str| {
        let store = store.clone();
        async move { store.live_namespaces(tenant).await }
    };
    assert_eq!((count("many").await?, count("race").await?, count("room").await?), ((TASKS * EACH) as u64, 1, 10));
    assert_eq!(count("nobody").await?, 0);
    let s = store.as_ref();
    let exactly = |count| Condition::LiveNamespaces { tenant: "room".into(), count };
    assert_eq!(committed(s, vec![exactly(10)], vec![tenant("room", "Room")], vec![]).await, last + 1);
    assert!(matches!(commit(s, vec![exactly(9)], vec![tenant("room", "Room")], vec![]).await, Committed::Conflict(_)));
    // A DELETED namespace no longer counts; an update of a live one does
    // not count twice.
    let room_member = s.list_namespaces("room", "", 1).await?.remove(0);
    let mut deleted = room_member.clone();
    deleted.status = NamespaceStatus::Deleted as i32;
    let puts = vec![Put::Namespace(deleted), namespace("many/t00-0", 1)];
    committed(s, vec![], puts, vec![]).await;
    assert_eq!((count("room").await?, count("many").await?), (9, (TASKS * EACH) as u64));

    // Reopened, every acknowledged commit is there at its revision.
    let final_revision = store.revision().await?;
    drop((live, store));
    let store = eventually(CONVERGE, &open).await?;
    assert_eq!(store.revision().await?, final_revision);
    for (name, revision) in told.iter().flat_map(|t| &t.acknowledged) {
        let ns = store.get_namespace(name).await?.with_context(|| format!("{name} after reopening"))?;
        if name != "many/t00-0" {
            assert_eq!(ns.revision, *revision, "{name}");
        }
    }
    assert_eq!(store.live_namespaces("room").await?, 9);
    assert_eq!(store.live_namespaces("many").await?, (TASKS * EACH) as u64);
    Ok(())
}

/// The store options of the group-commit checks: every delta stays in the
/// log and in a subscriber's buffer.
fn group_options() -> Options {
    Options { watch_buffer: 4096, retention: 100_000, ..Options::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_store_groups_concurrent_commits() -> anyhow::Result<()> {
    let dir = Arc::new(tempfile::tempdir()?);
    group_commit_behaves(Box::new(move || {
        let dir = dir.clone();
        Box::pin(async move { Ok(Arc::new(FileStore::open_with(dir.path(), &group_options())?) as Arc<dyn Store>) })
    }))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_store_commits_alone_with_a_group_of_one() -> anyhow::Result<()> {
    let dir = Arc::new(tempfile::tempdir()?);
    group_commit_behaves(Box::new(move || {
        let dir = dir.clone();
        let options = Options { max_commit_group: 1, ..group_options() };
        Box::pin(async move { Ok(Arc::new(FileStore::open_with(dir.path(), &options)?) as Arc<dyn Store>) })
    }))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_store_groups_concurrent_commits() -> anyhow::Result<()> {
    let server = server_or_skip!();
    let dsn = server.dsn();
    let open: Open = Box::new(move || {
        let dsn = dsn.clone();
        Box::pin(async move {
            Ok(Arc::new(PgStore::open_with(&dsn, "group commit", &group_options()).await?) as Arc<dyn Store>)
        })
    });
    group_commit_behaves(open).await?;

    // A store written before the counts existed is counted when opened.
    let (client, connection) = tokio_postgres::connect(&server.dsn(), tokio_postgres::NoTls).await?;
    let connection = tokio::spawn(connection);
    client
        .batch_execute(
            "UPDATE \"group commit\".meta SET live_counted = false;
             DELETE FROM \"group commit\".live_namespaces;",
        )
        .await?;
    let store = PgStore::open_with(&server.dsn(), "group commit", &group_options()).await?;
    assert_eq!(store.live_namespaces("room").await?, 9);
    assert_eq!(store.live_namespaces("many").await?, (TASKS * EACH) as u64);
    drop(client);
    connection.abort();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_is_unavailable_and_names_no_dsn() -> anyhow::Result<()> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let dsn = format!("postgres://user:secret@127.0.0.1:{port}/db?connect_timeout=2");
    let Err(e) = PgStore::open(&dsn, "prism_control", 8, 10).await else { bail!("nothing listens there") };
    assert_eq!(e.kind(), prism_proto::error::ErrorKind::Unavailable, "{e}");
    let report = e.report();
    assert!(!report.message.contains("secret") && !report.message.contains(&port.to_string()), "{report:?}");
    Ok(())
}

// ---------------------------------------------------------------------------
// Streamed snapshots, shared by both stores
// ---------------------------------------------------------------------------

/// Namespaces in the streamed-snapshot checks: more than two parts.
const STREAMED: usize = 2 * SNAPSHOT_PART + 7;

/// A snapshot larger than a part is streamed in parts at one revision: the
/// first holds the revision, tenants and shards; the others at most
/// [`SNAPSHOT_PART`] namespaces each, in name order; commits made while
/// it is read are not in it; a receiver that goes away ends the read
/// without an error.
async fn snapshot_streams_in_parts(store: Arc<dyn Store>) -> anyhow::Result<()> {
    let s = store.as_ref();
    committed(s, vec![], vec![tenant("big", "Big")], vec![]).await;
    for chunk in (0..STREAMED).collect::<Vec<_>>().chunks(100) {
        let puts = chunk.iter().map(|i| namespace(&format!("big/ns-{i:05}"), 0)).collect();
        committed(s, vec![], puts, vec![]).await;
    }
    let at = store.revision().await?;

    // A channel of one part: the read waits for the receiver after each.
    let (tx, mut parts) = mpsc::channel::<SnapshotPart>(1);
    let read = tokio::spawn({
        let store = store.clone();
        async move { store.stream_snapshot(tx).await }
    });
    let first = parts.recv().await.context("a first part")?;
    assert_eq!((first.revision, first.tenants.len(), first.namespaces.len()), (at, 1, 0));
    // Written while the snapshot is read: not in it.
    committed(s, vec![], vec![namespace("big/ns-late", 0)], vec![]).await;
    let mut names = Vec::new();
    let mut sizes = Vec::new();
    while let Some(part) = parts.recv().await {
        assert_eq!(part.revision, at);
        assert!(part.tenants.is_empty() && part.shards.is_empty());
        sizes.push(part.namespaces.len());
        names.extend(part.namespaces.into_iter().map(|n| n.name));
    }
    read.await??;
    assert!(sizes.iter().all(|n| (1..=SNAPSHOT_PART).contains(n)), "{sizes:?}");
    assert_eq!(sizes.len(), STREAMED.div_ceil(SNAPSHOT_PART));
    assert_eq!(names, (0..STREAMED).map(|i| format!("big/ns-{i:05}")).collect::<Vec<_>>());

    // The whole snapshot, collected from the parts, has the late one.
    let whole = store.snapshot().await?;
    assert_eq!((whole.revision, whole.namespaces.len()), (at + 1, STREAMED + 1));

    // A receiver that leaves after the first part ends the read quietly.
    let (tx, mut parts) = mpsc::channel::<SnapshotPart>(1);
    let read = tokio::spawn({
        let store = store.clone();
        async move { store.stream_snapshot(tx).await }
    });
    parts.recv().await.context("a first part")?;
    drop(parts);
    tokio::time::timeout(CONVERGE, read).await.context("the read ends")???;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_store_streams_a_snapshot_in_parts() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    snapshot_streams_in_parts(Arc::new(FileStore::open_with(dir.path(), &group_options())?)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_store_streams_a_snapshot_in_parts() -> anyhow::Result<()> {
    let server = server_or_skip!();
    snapshot_streams_in_parts(Arc::new(PgStore::open_with(&server.dsn(), "streamed", &group_options()).await?)).await
}

// ---------------------------------------------------------------------------
// Three replicas, one restarted mid-run
// ---------------------------------------------------------------------------

/// What a watcher knows: every object, as of `revision`.
#[derive(Debug, Default, Clone, PartialEq)]
struct View {
    revision: u64,
    tenants: BTreeMap<String, Tenant>,
    namespaces: BTreeMap<String, Namespace>,
}

/// Applies a Watch stream and checks its contract on every message.
#[derive(Debug, Default)]
struct Applier {
    view: View,
    in_snapshot: Option<u64>,
    applied: BTreeSet<u64>,
    connections: usize,
}

impl Applier {
    fn apply(&mut self, message: WatchResponse) -> anyhow::Result<()> {
        match message.event.context("a message without an event")? {
            Event::Snapshot(chunk) => {
                match self.in_snapshot {
                    None => {
                        ensure!(chunk.revision >= self.view.revision, "a snapshot older than what was applied");
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
                for c in delta.changes {
                    match c.change.context("a change without content")? {
                        change::Change::Tenant(t) => {
                            self.view.tenants.insert(t.id.clone(), t);
                        }
                        change::Change::Namespace(n) => {
                            self.view.namespaces.insert(n.name.clone(), n);
                        }
                        other => bail!("unexpected change {other:?}"),
                    }
                }
                self.view.revision = delta.revision;
            }
        }
        Ok(())
    }

    fn resume_from(&mut self) -> u64 {
        if self.in_snapshot.take().is_some() {
            self.view = View::default();
        }
        self.view.revision
    }
}

/// A watcher's state, shared with the test; `error` is the first broken
/// contract it saw.
#[derive(Default)]
struct Watcher {
    applier: Applier,
    error: Option<String>,
}

/// The current endpoint of each replica (a restarted one moves).
type Endpoints = Arc<Mutex<Vec<String>>>;

fn endpoint(endpoints: &Endpoints, replica: usize) -> String {
    endpoints.lock().map(|e| e[replica].clone()).unwrap_or_default()
}

/// Follows replica `replica` forever, reconnecting (to wherever it now
/// is) with the last applied revision whenever the stream ends.
async fn watcher(endpoints: Endpoints, replica: usize, state: Arc<Mutex<Watcher>>) {
    loop {
        let from = state.lock().map(|mut s| s.applier.resume_from()).unwrap_or_default();
        let connected = eventually(CONVERGE, || {
            let endpoint = endpoint(&endpoints, replica);
            async move {
                let mut c = prism_client::control_plane(&endpoint, None).await?;
                Ok(c.watch(WatchRequest { from_revision: from }).await?.into_inner())
            }
        })
        .await;
        let Ok(mut stream) = connected else { continue };
        if let Ok(mut s) = state.lock() {
            s.applier.connections += 1;
        }
        while let Ok(Some(message)) = stream.message().await {
            let Ok(mut s) = state.lock() else { return };
            if let Err(e) = s.applier.apply(message) {
                s.error.get_or_insert(format!("{e:#}"));
                return;
            }
        }
    }
}

fn kv_spec(read_rps: u64) -> NamespaceSpec {
    NamespaceSpec {
        abstraction: Abstraction::KeyValue as i32,
        backend: Backend::Embedded as i32,
        capacity: Some(Box::new(prism_proto::control::Capacity { estimated_read_rps: read_rps, ..Default::default() })),
        ..NamespaceSpec::default()
    }
}

const TENANTS: [&str; 2] = ["alpha", "beta"];
const MUTATIONS_PER_WRITER: usize = 50;

/// Creates and updates namespaces only it touches, and sometimes a shared
/// tenant, through replica `replica`. A call that fails while the replica
/// restarts is not retried blindly: the writer reconnects and re-reads.
async fn writer(endpoints: Endpoints, replica: usize, seed: u64, done: Arc<AtomicUsize>) -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(seed);
    let names: Vec<String> = TENANTS.iter().flat_map(|t| (0..3).map(move |k| format!("{t}/r{replica}-{k}"))).collect();
    let mut live: BTreeMap<String, u64> = BTreeMap::new();
    let connect = || {
        let endpoints = endpoints.clone();
        async move {
            eventually(CONVERGE, || {
                let endpoint = endpoint(&endpoints, replica);
                async move { Ok(prism_client::control_plane(&endpoint, None).await?) }
            })
            .await
        }
    };
    let mut c: ControlPlaneClient = connect().await?;
    for i in 0..MUTATIONS_PER_WRITER {
        let name = names[rng.random_range(0..names.len())].clone();
        let outcome = match live.get(&name) {
            None => c
                .create_namespace(CreateNamespaceRequest { name: name.clone(), spec: Some(kv_spec(i as u64)) })
                .await
                .map(|r| Some(r.into_inner().revision)),
            Some(_) if rng.random_range(0..5) == 0 => {
                let tenant = TENANTS[rng.random_range(0..TENANTS.len())];
                let req = UpdateTenantRequest {
                    tenant_id: tenant.into(),
                    display_name: format!("replica {replica} step {i}"),
                    ..Default::default()
                };
                c.update_tenant(req).await.map(|_| None)
            }
            Some(&rev) => {
                let req = UpdateNamespaceRequest {
                    name: name.clone(),
                    spec: Some(kv_spec(i as u64)),
                    expected_revision: rev,
                };
                c.update_namespace(req).await.map(|r| Some(r.into_inner().revision))
            }
        };
        match outcome {
            Ok(Some(revision)) => {
                live.insert(name, revision);
            }
            Ok(None) => {}
            Err(status) => {
                // The replica went away (or the write raced its restart):
                // whatever happened is in the database; read it back.
                expect_refusal(&status);
                c = connect().await?;
                let got = c.get_namespace(GetNamespaceRequest { name: name.clone() }).await;
                match got {
                    Ok(ns) => {
                        live.insert(name, ns.into_inner().revision);
                    }
                    Err(s) if s.code() == tonic::Code::NotFound => {
                        live.remove(&name);
                    }
                    Err(s) => bail!("re-reading {name} after {status:?}: {s:?}"),
                }
            }
        }
        done.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// A refused write during the restart is expected; anything but a
/// retryable code is a bug.
fn expect_refusal(status: &tonic::Status) {
    use tonic::Code::*;
    assert!(
        matches!(status.code(), Unavailable | Unknown | Cancelled | Aborted | Internal | AlreadyExists),
        "unexpected refusal while a replica restarts: {status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_watchers_see_every_change_once_in_order_across_a_restart() -> anyhow::Result<()> {
    let server = server_or_skip!();
    let config = ControlPlaneConfig {
        store: Some(server.dsn()),
        store_schema: "three_replicas".into(),
        ..ControlPlaneConfig::default()
    };
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(ControlPlaneHandle::start_with(config.clone()).await?);
    }
    let endpoints: Endpoints = Arc::new(Mutex::new(replicas.iter().map(|r| r.endpoint()).collect()));
    let mut c = replicas[0].client().await?;
    for t in TENANTS {
        c.create_tenant(CreateTenantRequest { tenant_id: t.into(), ..Default::default() }).await?;
    }

    // Two watchers per replica, each building its state from a snapshot.
    let mut watchers = Vec::new();
    let mut tasks = Vec::new();
    for replica in 0..3 {
        for _ in 0..2 {
            let state = Arc::new(Mutex::new(Watcher::default()));
            tasks.push(tokio::spawn(watcher(endpoints.clone(), replica, state.clone())));
            watchers.push((replica, state));
        }
    }

    let seed: u64 = rand::rng().random();
    let done = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..3)
        .map(|replica| tokio::spawn(writer(endpoints.clone(), replica, seed + replica as u64, done.clone())))
        .collect();

    // Restart replica 1 once a third of the writes are in.
    eventually(CONVERGE, || {
        let done = done.load(Ordering::Relaxed);
        async move {
            ensure!(done >= MUTATIONS_PER_WRITER, "{done} writes so far");
            Ok(())
        }
    })
    .await?;
    let mut old = replicas.remove(1);
    old.stop().await?;
    drop(old);
    let restarted = ControlPlaneHandle::start_with(config.clone()).await?;
    if let Ok(mut e) = endpoints.lock() {
        e[1] = restarted.endpoint();
    }
    replicas.insert(1, restarted);

    for (i, w) in writers.into_iter().enumerate() {
        w.await?.with_context(|| format!("writer {i} (seed {seed})"))?;
    }
    let want = {
        let s = replicas[0].plane.store().snapshot().await?;
        View {
            revision: s.revision,
            tenants: s.tenants.into_iter().map(|t| (t.id.clone(), t)).collect(),
            namespaces: s.namespaces.into_iter().map(|n| (n.name.clone(), n)).collect(),
        }
    };
    assert!(want.revision >= 100, "the writers committed: revision {}", want.revision);
    for r in &replicas {
        assert_eq!(r.plane.store().revision().await?, want.revision, "every replica reads one database");
    }

    let converged = eventually(CONVERGE, || {
        let (watchers, want) = (&watchers, &want);
        async move {
            for (i, (replica, w)) in watchers.iter().enumerate() {
                let w = w.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
                if w.error.is_some() {
                    return Ok(()); // reported below
                }
                ensure!(
                    w.applier.view == *want,
                    "watcher {i} of replica {replica} at revision {}, want {}",
                    w.applier.view.revision,
                    want.revision
                );
            }
            Ok(())
        }
    })
    .await;
    for t in &tasks {
        t.abort();
    }
    for (i, (replica, w)) in watchers.iter().enumerate() {
        let w = w.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        if let Some(e) = &w.error {
            bail!("watcher {i} of replica {replica} (seed {seed}): {e}");
        }
        println!(
            "watcher {i} of replica {replica}: {} connections, {} deltas",
            w.applier.connections,
            w.applier.applied.len()
        );
    }
    converged.with_context(|| format!("seed {seed}"))?;
    // Replica 1's watchers lived through its restart.
    for (replica, w) in &watchers {
        if *replica == 1 {
            let w = w.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            assert!(w.applier.connections >= 2, "a watcher of the restarted replica reconnected");
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// TimeSeries schemas, kept by both stores
// ---------------------------------------------------------------------------

/// A schema history set through the control plane is what a store opened
/// again reads back, by name and in a snapshot (what gateways watch).
async fn schemas_survive_reopening(open: Open) -> anyhow::Result<()> {
    use prism_proto::control::{
        Compatibility, EventSchema, GetSchemaRequest, ItemSchema, ItemType, ListSchemaHistoryRequest, SetSchemaRequest,
        item_type::Kind,
    };
    let plane = prism_control_plane::ControlPlane::new(open().await?, ControlPlaneConfig::default());
    plane.create_tenant("root", "acme", "", &[], None).await?;
    let spec = NamespaceSpec {
        abstraction: Abstraction::TimeSeries as i32,
        backend: Backend::Embedded as i32,
        ..NamespaceSpec::default()
    };
    plane.create_namespace("root", "acme/events", Some(&spec)).await?;
    let item = |key: &str, required| ItemSchema {
        key: key.into(),
        r#type: Some(ItemType { kind: Some(Kind::Int64(Default::default())) }),
        required,
    };
    let v1 = EventSchema { items: vec![item("n", true)], required_tags: vec!["region".into()], allowed_tags: vec![] };
    let v2 = EventSchema { items: vec![item("n", true), item("m", false)], ..v1.clone() };
    for schema in [v1, v2.clone()] {
        let req = SetSchemaRequest {
            name: "acme/events".into(),
            schema: Some(schema),
            compatibility: Compatibility::Full as i32,
            expected_revision: 0,
        };
        plane.set_schema("root", &req).await?;
    }
    // The file store is one opener's at a time: it opens again once the
    // first one's committer has let go.
    drop(plane);

    let plane =
        prism_control_plane::ControlPlane::new(eventually(CONVERGE, &open).await?, ControlPlaneConfig::default());
    let history = plane.list_schema_history(&ListSchemaHistoryRequest { name: "acme/events".into() }).await?;
    assert_eq!(history.compatibility, Compatibility::Full as i32);
    assert_eq!(history.versions.iter().map(|v| v.version).collect::<Vec<_>>(), [1, 2]);
    let latest = plane.get_schema(&GetSchemaRequest { name: "acme/events".into(), version: 0 }).await?;
    assert_eq!(latest.version.and_then(|v| v.schema), Some(v2));
    let snapshot = plane.store().snapshot().await?;
    let ns = snapshot.namespaces.iter().find(|n| n.name == "acme/events").context("in the snapshot")?;
    assert_eq!(ns.schema.as_ref().map(|s| s.versions.len()), Some(2));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_store_keeps_schema_histories() -> anyhow::Result<()> {
    let dir = Arc::new(tempfile::tempdir()?);
    schemas_survive_reopening(Box::new(move || {
        let dir = dir.clone();
        Box::pin(async move { Ok(Arc::new(FileStore::open(dir.path(), 64, 100)?) as Arc<dyn Store>) })
    }))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_store_keeps_schema_histories() -> anyhow::Result<()> {
    let server = server_or_skip!();
    let dsn = server.dsn();
    schemas_survive_reopening(Box::new(move || {
        let dsn = dsn.clone();
        Box::pin(
            async move { Ok(Arc::new(PgStore::open(&dsn, "store \"schemas\"", 64, 100).await?) as Arc<dyn Store>) },
        )
    }))
    .await
}
