//! The data path of a KeyValue migration, embedded → PostgreSQL (a real
//! server), below the gateway's wiring (`gateway/src/migration.rs`):
//! writers dual-write every mutation to both sides with one stamp —
//! tokens, deletes, range deletes, retries and writes that arrive late
//! with old generation times among them — while the backfill copies the
//! source in small pages; afterwards both sides serve the same thing, by
//! digest and record by record. Removing the target (an abort) leaves the
//! source intact.

use std::sync::Arc;

use prism_gateway::migration::{backfill_page, compare, digest, shadow_read, target_namespace};
use prism_plugin_api::kv::{KeyRange, KeyValueHandle, Mutation, NewItem, PageLimits, Selector, WriteStamp};
use prism_plugin_api::{Namespace, Plugin, PluginError, now_micros};
use prism_plugin_embedded::{EmbeddedConfig, EmbeddedPlugin};
use prism_plugin_postgres::{PostgresPlugin, PostgresPluginConfig};
use prism_proto::control::backend_config::Config;
use prism_proto::control::{
    Abstraction, Backend, BackendConfig, Migration, MigrationTarget, NamespaceSpec, PostgresConfig,
};
use prism_testkit::postgres::{PostgresServer, skip_reason};

const RECORDS: usize = 12;
const KEYS: usize = 8;
const WRITERS: usize = 4;
const WRITES: usize = 150;
/// Small pages, so the backfill interleaves with the writers many times.
const PAGE: PageLimits = PageLimits::new(600, Some(5));
const WHOLE: PageLimits = PageLimits::new(1 << 20, None);

fn put(key: String, value: String) -> Mutation {
    Mutation::Put(NewItem { key: key.into_bytes(), value: value.into_bytes(), expires_at: None })
}

/// A deterministic mix of writes of `k` keys: mostly puts, some deletes,
/// a few range deletes.
fn mutation(writer: usize, n: usize) -> (String, Vec<Mutation>) {
    let id = format!("r{}", (writer * 7 + n) % RECORDS);
    let key = format!("k{}", (n * 3 + writer) % KEYS);
    let mutations = match n % 23 {
        // Every `k` key: `p` keys are the late writes' (see `preload`).
        0 => vec![Mutation::DeleteRange(KeyRange { start: b"k".to_vec(), end: Some(b"l".to_vec()) })],
        5 => vec![Mutation::DeleteRange(KeyRange { start: b"k2".to_vec(), end: Some(b"k5".to_vec()) })],
        m if m % 7 == 1 => vec![Mutation::Delete(key.into_bytes())],
        _ => vec![put(key, format!("w{writer}-{n}")), put(format!("k{}", n % KEYS), format!("also-{writer}-{n}"))],
    };
    (id, mutations)
}

struct Sides {
    source: Arc<dyn KeyValueHandle>,
    target: Arc<dyn KeyValueHandle>,
    target_plugin: Arc<dyn Plugin>,
    target_ns: Namespace,
}

async fn sides(server: &PostgresServer, dir: &std::path::Path, case: &str) -> anyhow::Result<Sides> {
    let source_plugin: Arc<dyn Plugin> = Arc::new(EmbeddedPlugin::open(EmbeddedConfig::new(dir))?);
    let source_ns = Namespace {
        name: format!("acme/{case}"),
        create_revision: 3,
        spec: NamespaceSpec {
            abstraction: Abstraction::KeyValue as i32,
            backend: Backend::Embedded as i32,
            ..NamespaceSpec::default()
        },
    };
    let config = PostgresConfig { dsn: server.dsn(), schema: "migration".into(), ..Default::default() };
    let migration = Migration {
        id: 11,
        target: Some(MigrationTarget {
            backend: Backend::Postgres as i32,
            backend_config: Some(BackendConfig { config: Some(Config::Postgres(config)) }),
            ..Default::default()
        }),
        ..Migration::default()
    };
    let target_ns = target_namespace(&source_ns, &migration);
    let target_plugin: Arc<dyn Plugin> = Arc::new(PostgresPlugin::new(PostgresPluginConfig::default())?);
    source_plugin.provision(&source_ns).await?;
    target_plugin.provision_beside(&target_ns, &[source_ns.create_revision]).await?;
    let open = |plugin: &Arc<dyn Plugin>, ns: &Namespace| -> anyhow::Result<Arc<dyn KeyValueHandle>> {
        let kv = plugin.key_value().ok_or_else(|| anyhow::anyhow!("no KeyValue"))?;
        Ok(kv.open(ns)?)
    };
    Ok(Sides {
        source: open(&source_plugin, &source_ns)?,
        target: open(&target_plugin, &target_ns)?,
        target_plugin,
        target_ns,
    })
}

/// Writes to the source alone, as before the migration; returns the
/// generation time its `p` keys were written at. Besides the mixed
/// writes, every record gets `p0..p7`, then point deletes of `p1` and
/// `p3` and a range delete of `[p5, p7)`: keys no later write touches but
/// the late ones, so only a faithful copy of those deletes keeps the late
/// writes out of the target.
async fn preload(source: &dyn KeyValueHandle) -> anyhow::Result<i64> {
    let base = now_micros();
    let at = |offset: i64| WriteStamp { generation_time: base + offset, token: None };
    for r in 0..RECORDS {
        let id = format!("r{r}");
        let puts: Vec<Mutation> = (0..KEYS).map(|k| put(format!("p{k}"), format!("pre-{r}-{k}"))).collect();
        source.mutate(&id, &puts, &at(0)).await?;
        let deletes = [Mutation::Delete(b"p1".to_vec()), Mutation::Delete(b"p3".to_vec())];
        source.mutate(&id, &deletes, &at(1)).await?;
        let range = KeyRange { start: b"p5".to_vec(), end: Some(b"p7".to_vec()) };
        source.mutate(&id, &[Mutation::DeleteRange(range)], &at(2)).await?;
    }
    for n in 0..200 {
        let (id, mutations) = mutation(WRITERS, n);
        source.mutate(&id, &mutations, &at(3 + n as i64)).await?;
    }
    Ok(base)
}

/// Dual-writes as the router does from DUAL_WRITE on: the source, then
/// the target with the same stamp. Every seventh write is retried (same
/// token), and every eleventh is a late one: a write of a `p` key stamped
/// before the preload (a client's retry arriving long after), which loses
/// on both sides.
async fn dual_writer(
    source: Arc<dyn KeyValueHandle>,
    target: Arc<dyn KeyValueHandle>,
    writer: usize,
    preloaded_at: i64,
) -> anyhow::Result<()> {
    for n in 0..WRITES {
        let (id, mutations, generation_time) = if n % 11 == 0 {
            let late = vec![put(format!("p{}", (n + writer) % KEYS), format!("late-{writer}-{n}"))];
            (format!("r{}", (n / 11 + writer) % RECORDS), late, preloaded_at - 1_000_000)
        } else {
            let (id, mutations) = mutation(writer, n);
            (id, mutations, now_micros())
        };
        let stamp = WriteStamp { generation_time, token: Some(format!("w{writer}-{n}")) };
        let tries = if n % 7 == 0 { 2 } else { 1 };
        for _ in 0..tries {
            source.mutate(&id, &mutations, &stamp).await?;
            target.mutate(&id, &mutations, &stamp).await?;
        }
    }
    Ok(())
}

async fn backfill(source: &dyn KeyValueHandle, target: &dyn KeyValueHandle) -> anyhow::Result<u64> {
    let (mut cursor, mut pages) = (None, 0u64);
    loop {
        let copied = backfill_page(source, target, cursor.as_ref(), PAGE, 4).await?;
        pages += 1;
        match copied.next {
            Some(next) => cursor = Some(next),
            None => return Ok(pages),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_racing_dual_writes_leaves_the_target_equal_to_the_source() -> anyhow::Result<()> {
    let Some(server) = PostgresServer::start_or_skip()? else {
        println!("{}", skip_reason());
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let s = sides(&server, dir.path(), "racing").await?;
    let preloaded_at = preload(s.source.as_ref()).await?;

    let writers: Vec<_> =
        (0..WRITERS).map(|w| tokio::spawn(dual_writer(s.source.clone(), s.target.clone(), w, preloaded_at))).collect();
    let pages = backfill(s.source.as_ref(), s.target.as_ref()).await?;
    for writer in writers {
        writer.await??;
    }
    assert!(pages > 10, "the backfill took {pages} pages: too few to interleave with the writers");

    let now = now_micros();
    let (source, target) = (digest(s.source.as_ref(), PAGE, now).await?, digest(s.target.as_ref(), PAGE, now).await?);
    assert!(source.items > 0);
    assert_eq!(target, source, "the target serves what the source does");
    for r in 0..RECORDS {
        let id = format!("r{r}");
        let read = |kv: Arc<dyn KeyValueHandle>| {
            let id = id.clone();
            async move { kv.get(&id, &Selector::All, None, WHOLE, now).await.map(|p| p.items) }
        };
        assert_eq!(read(s.target.clone()).await?, read(s.source.clone()).await?, "record {id}");
    }
    Ok(())
}

/// A shadow read agrees where both sides hold the same, whatever the
/// selector, and counts a record whose target lost a write or holds a
/// stray value; so does VERIFY's full comparison, which live writes do
/// not fool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_read_tells_a_differing_record() -> anyhow::Result<()> {
    let Some(server) = PostgresServer::start_or_skip()? else {
        println!("{}", skip_reason());
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let s = sides(&server, dir.path(), "shadowed").await?;
    let preloaded_at = preload(s.source.as_ref()).await?;
    backfill(s.source.as_ref(), s.target.as_ref()).await?;
    let (source, target) = (s.source.as_ref(), s.target.as_ref());
    let same = compare(source, target, PAGE).await?;
    assert!(same.items > 0 && same.differing == 0 && same.first.is_none(), "{same:?}");
    // Writes landing on both sides, one after the other, while VERIFY
    // compares: what differed in the scan is read again, and agrees.
    let writer = tokio::spawn(dual_writer(s.source.clone(), s.target.clone(), 0, preloaded_at));
    let racing = compare(source, target, PAGE).await?;
    writer.await??;
    assert_eq!(racing.differing, 0, "{racing:?}");
    let p2 = Selector::Keys(vec![b"p2".to_vec()]);
    let range = Selector::Range(KeyRange { start: b"k".to_vec(), end: Some(b"q".to_vec()) });
    for r in 0..RECORDS {
        let id = format!("r{r}");
        for selector in [&Selector::All, &p2, &range] {
            assert!(shadow_read(source, target, &id, selector).await?, "{id} {selector:?}");
        }
    }
    assert!(shadow_read(source, target, "absent", &Selector::All).await?, "absent on both sides");

    // The target lost a write; then holds a value the source never had.
    let stamp = || WriteStamp { generation_time: now_micros(), token: None };
    source.mutate("r1", &[put("p2".into(), "only-in-source".into())], &stamp()).await?;
    assert!(!shadow_read(source, target, "r1", &Selector::All).await?);
    assert!(!shadow_read(source, target, "r1", &p2).await?);
    assert!(shadow_read(source, target, "r2", &Selector::All).await?, "another record still agrees");
    target.mutate("r3", &[put("z".into(), "stray".into())], &stamp()).await?;
    assert!(!shadow_read(source, target, "r3", &Selector::All).await?);
    // The full comparison counts both records, naming the first.
    let differing = compare(source, target, PAGE).await?;
    assert_eq!(differing.differing, 2, "{differing:?}");
    assert!(differing.first.as_deref().is_some_and(|f| f.starts_with("record r1 key \"p2\"")), "{differing:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_the_target_leaves_the_source_intact() -> anyhow::Result<()> {
    let Some(server) = PostgresServer::start_or_skip()? else {
        println!("{}", skip_reason());
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let s = sides(&server, dir.path(), "aborted").await?;
    let preloaded_at = preload(s.source.as_ref()).await?;
    let before = digest(s.source.as_ref(), PAGE, now_micros()).await?;
    // Aborted midway: dual writes happened and part of the backfill ran.
    dual_writer(s.source.clone(), s.target.clone(), 0, preloaded_at).await?;
    let after_writes = digest(s.source.as_ref(), PAGE, now_micros()).await?;
    assert_ne!(after_writes, before);
    backfill_page(s.source.as_ref(), s.target.as_ref(), None, PAGE, 1).await?;

    s.target_plugin.deprovision(&s.target_ns).await?;
    let gone = s.target.get("r1", &Selector::All, None, WHOLE, now_micros()).await;
    assert!(matches!(gone, Err(PluginError::NotProvisioned(_))), "{gone:?}");
    assert_eq!(digest(s.source.as_ref(), PAGE, now_micros()).await?, after_writes, "the source is untouched");
    Ok(())
}

/// Through real servers: a control plane, two gateways that take part in
/// migrations (`experimental_migrations`), PostgreSQL. A client keeps
/// writing (with idempotency tokens) and reading its writes back while
/// the namespace migrates from embedded to postgres.
mod end_to_end {
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::time::Duration;

    use anyhow::Context;
    use prism_gateway::migration::target_namespace;
    use prism_plugin_api::kv::ScanCursor;
    use prism_plugin_api::{Namespace, Plugin, PluginError, now_micros};
    use prism_plugin_postgres::{PostgresPlugin, PostgresPluginConfig};
    use prism_proto::control::backend_config::Config;
    use prism_proto::control::{
        AbortMigrationRequest, Abstraction, Backend, BackendConfig, GetNamespaceRequest, MigrateNamespaceRequest,
        MigrationStep, MigrationTarget, NamespaceSpec, Placement, PostgresConfig,
    };
    use prism_proto::kv;
    use prism_testkit::postgres::{PostgresServer, skip_reason};
    use prism_testkit::{Cluster, admin_token, eventually};

    use super::WHOLE;

    const NS: &str = "acme/orders";
    const WAIT: Duration = Duration::from_secs(60);

    /// What the client saw: acknowledged writes (the last value per
    /// record), failed requests, and reads that missed a write.
    #[derive(Default)]
    struct Load {
        acknowledged: std::sync::Mutex<BTreeMap<String, String>>,
        writes: AtomicU64,
        failed: AtomicU64,
        stale_reads: AtomicU64,
        stop: AtomicBool,
    }

    /// Client `me`: put `c{me}-r{n % 40}` = `v{n}` with a token of its
    /// own, then read it back (read-your-writes: the records are this
    /// client's alone), until stopped.
    async fn client(mut c: prism_client::KeyValueClient, me: usize, load: Arc<Load>) {
        let mut n = 0u64;
        while !load.stop.load(Ordering::Relaxed) {
            let id = format!("c{me}-r{}", n % 40);
            let value = format!("v{n}");
            let now = now_micros();
            let put = kv::PutItemsRequest {
                namespace: NS.into(),
                id: id.clone(),
                items: vec![kv::Item { key: b"k".to_vec(), value: value.clone().into_bytes(), ttl: None }],
                idempotency_token: Some(kv::IdempotencyToken {
                    generation_time: Some(prost_types::Timestamp {
                        seconds: now / 1_000_000,
                        nanos: (now % 1_000_000 * 1_000) as i32,
                    }),
                    token: format!("c{me}-t{n}"),
                }),
            };
            match c.put_items(put).await {
                Ok(_) => {
                    load.writes.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut acked) = load.acknowledged.lock() {
                        acked.insert(id.clone(), value.clone());
                    }
                }
                Err(s) => {
                    eprintln!("put {id} failed: {s}");
                    load.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            let get = kv::GetItemsRequest { namespace: NS.into(), id: id.clone(), ..Default::default() };
            match c.get_items(get).await {
                Ok(r) => {
                    let read = r.into_inner().items.first().map(|i| String::from_utf8_lossy(&i.value).into_owned());
                    if read.as_deref() != Some(value.as_str()) {
                        load.stale_reads.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(s) => {
                    eprintln!("get {id} failed: {s}");
                    load.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            n += 1;
        }
    }

    /// Every record's `k` as the gateway serves it (the source).
    async fn served(c: &mut prism_client::KeyValueClient) -> anyhow::Result<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        let mut token = String::new();
        loop {
            let req = kv::ScanItemsRequest { namespace: NS.into(), page_token: token, ..Default::default() };
            let page = c.scan_items(req).await?.into_inner();
            for record in page.records {
                for item in record.items {
                    out.insert(record.id.clone(), String::from_utf8_lossy(&item.value).into_owned());
                }
            }
            if page.next_page_token.is_empty() {
                return Ok(out);
            }
            token = page.next_page_token;
        }
    }

    /// Every record's `k` in the target, read from PostgreSQL directly.
    async fn in_target(target: &dyn prism_plugin_api::kv::KeyValueHandle) -> anyhow::Result<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        let mut after: Option<ScanCursor> = None;
        loop {
            let page = target.scan(after.as_ref(), WHOLE, now_micros()).await?;
            for record in page.records {
                for item in record.items {
                    out.insert(record.id.clone(), String::from_utf8_lossy(&item.value).into_owned());
                }
            }
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(out),
            }
        }
    }

    struct Running {
        cluster: Cluster,
        load: Arc<Load>,
        clients: Vec<tokio::task::JoinHandle<()>>,
    }

    /// PostgreSQL settings: `dsn` and `schema`, defaults for the rest.
    fn at(dsn: String, schema: &str) -> PostgresConfig {
        PostgresConfig { dsn, schema: schema.into(), ..Default::default() }
    }

    /// Where the namespace starts.
    enum Source {
        Embedded,
        /// PostgreSQL, at this DSN and schema.
        Postgres(String, String),
    }

    /// Starts the cluster and the clients on a namespace at `source`, and
    /// once they have written a while, migrates it to PostgreSQL with the
    /// `target` settings.
    async fn start(source: Source, target: PostgresConfig) -> anyhow::Result<Running> {
        start_to(source, target, "").await
    }

    /// As [`start`], to the embedded store of shard `pin`'s instance.
    async fn start_to_embedded(source: Source, pin: &str) -> anyhow::Result<Running> {
        start_on(source, None, pin, false).await
    }

    /// As [`start`], to the shard `pin` (empty: the source's).
    async fn start_to(source: Source, target: PostgresConfig, pin: &str) -> anyhow::Result<Running> {
        start_on(source, Some(target), pin, false).await
    }

    /// As [`start_to`] (`target` `None`: embedded); with `replica`, shard-0
    /// has a second instance, and the second client writes through it.
    async fn start_on(
        source: Source,
        target: Option<PostgresConfig>,
        pin: &str,
        replica: bool,
    ) -> anyhow::Result<Running> {
        let gateway_config = |c: &mut prism_gateway::GatewayConfig| {
            c.experimental_migrations = true;
            // DUAL_WRITE and CUTOVER wait this long for requests
            // admitted before them.
            c.limits.request_timeout_ms = 2_000;
        };
        let mut cluster = Cluster::start_configured(
            |c| {
                // The source is removed this long after the cleanup commit.
                c.migration_cleanup_grace_ms = 1_000;
                // Every read at VERIFY is a shadow read, for a second.
                c.migration_shadow_read_fraction = 1.0;
                c.migration_verify_window_ms = 1_000;
            },
            gateway_config,
        )
        .await?;
        if replica {
            let endpoint = cluster.control_plane.endpoint();
            cluster
                .gateways
                .push(prism_testkit::GatewayHandle::start_with(&endpoint, "shard-0", gateway_config).await?);
            eventually(WAIT, || async {
                let req = prism_proto::control::ListShardsRequest {};
                let shards = cluster.control_plane.client().await?.list_shards(req).await?.into_inner().shards;
                let n = shards.iter().find(|s| s.shard_id == "shard-0").map_or(0, |s| s.instances.len());
                anyhow::ensure!(n == 2, "{n} instances of shard-0");
                Ok(())
            })
            .await?;
        }
        let (backend, backend_config) = match source {
            Source::Embedded => (Backend::Embedded, None),
            Source::Postgres(dsn, schema) => {
                let config = at(dsn, &schema);
                (Backend::Postgres, Some(Box::new(BackendConfig { config: Some(Config::Postgres(config)) })))
            }
        };
        let spec = NamespaceSpec {
            abstraction: Abstraction::KeyValue as i32,
            backend: backend as i32,
            backend_config,
            placement: Some(Box::new(Placement { pinned_shard: "shard-0".into(), ..Default::default() })),
            ..Default::default()
        };
        let gw = cluster.active_namespace(NS, spec).await?;
        let load = Arc::new(Load::default());
        let mut clients = Vec::new();
        let second = cluster.gateways.iter().filter(|g| g.gateway.config.shard_id == "shard-0").nth(1);
        for (me, gw) in [gw, second.filter(|_| replica).unwrap_or(gw)].into_iter().enumerate() {
            if let Some(revision) = cluster
                .control_plane
                .client()
                .await?
                .get_namespace(GetNamespaceRequest { name: NS.into() })
                .await
                .ok()
                .map(|n| n.into_inner().revision)
            {
                gw.caught_up(revision).await?;
            }
            clients.push(tokio::spawn(client(gw.kv(Some(&admin_token())).await?, me, load.clone())));
        }
        // Some history before the migration starts.
        eventually(WAIT, || async {
            anyhow::ensure!(load.writes.load(Ordering::Relaxed) >= 200, "few writes yet");
            Ok(())
        })
        .await?;
        let migrate = MigrateNamespaceRequest {
            name: NS.into(),
            target: Some(MigrationTarget {
                backend: if target.is_some() { Backend::Postgres } else { Backend::Embedded } as i32,
                backend_config: target.map(|t| BackendConfig { config: Some(Config::Postgres(t)) }),
                pinned_shard: pin.into(),
            }),
            expected_revision: 0,
        };
        cluster.control_plane.client().await?.migrate_namespace(migrate).await?;
        Ok(Running { cluster, load, clients })
    }

    /// The target as the test reads it: the migration's incarnation on a
    /// plugin of its own.
    fn target_of(ns: &prism_proto::control::Namespace) -> anyhow::Result<(Arc<dyn Plugin>, Namespace)> {
        let source = Namespace {
            name: ns.name.clone(),
            create_revision: ns.create_revision,
            spec: ns.spec.clone().unwrap_or_default(),
        };
        let migration = ns.migration.as_deref().context("no migration")?;
        let plugin: Arc<dyn Plugin> = Arc::new(PostgresPlugin::new(PostgresPluginConfig::default())?);
        Ok((plugin, target_namespace(&source, migration)))
    }

    async fn stop(running: &mut Running) -> anyhow::Result<()> {
        running.load.stop.store(true, Ordering::Relaxed);
        for c in running.clients.drain(..) {
            c.await?;
        }
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn embedded_to_postgres_under_load_loses_no_write() -> anyhow::Result<()> {
        let Some(server) = PostgresServer::start_or_skip()? else {
            println!("{}", skip_reason());
            return Ok(());
        };
        let running = start(Source::Embedded, at(server.dsn(), "e2e_migrated")).await?;
        to_the_end(running).await
    }

    /// Embedded on shard-0 to PostgreSQL pinned to shard-1: from the
    /// cleanup commit shard-1 serves it, and the clients, connected to
    /// shard-0, are forwarded there.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn embedded_to_postgres_on_another_shard_under_load_loses_no_write() -> anyhow::Result<()> {
        let Some(server) = PostgresServer::start_or_skip()? else {
            println!("{}", skip_reason());
            return Ok(());
        };
        let running = start_to(Source::Embedded, at(server.dsn(), "e2e_moved"), "shard-1").await?;
        to_the_end(running).await
    }

    /// Embedded on shard-0 to embedded on shard-1 (the issue's "embedded
    /// on shard A → embedded on shard B", and a shard being retired): the
    /// target is on shard-1's instance's disk, so shard-0 dual-writes,
    /// copies and compares through that instance (`prism.peer.v1`), reads
    /// it at CUTOVER, and from the cleanup commit forwards the clients to
    /// it. No PostgreSQL.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn embedded_to_embedded_on_another_shard_under_load_loses_no_write() -> anyhow::Result<()> {
        let running = start_to_embedded(Source::Embedded, "shard-1").await?;
        to_the_end(running).await
    }

    /// The internal service a migration's target answers through refuses
    /// whoever is not a gateway (role `shard`), and a target the instance
    /// does not hold, each with the code that says so.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_peer_service_answers_only_gateways_and_only_for_targets_it_holds() -> anyhow::Result<()> {
        use prism_proto::peer::migration_peer_client::MigrationPeerClient;
        use prism_proto::peer::{GetRequest, PageLimits as Limits, Selector as Sel, TargetRef, selector};
        let cluster = Cluster::start_configured(|_| {}, |c| c.experimental_migrations = true).await?;
        let spec = NamespaceSpec {
            abstraction: Abstraction::KeyValue as i32,
            backend: Backend::Embedded as i32,
            placement: Some(Box::new(Placement { pinned_shard: "shard-0".into(), ..Default::default() })),
            ..Default::default()
        };
        let gw = cluster.active_namespace(NS, spec).await?;
        let mut peer = MigrationPeerClient::new(gw.channel().await?);
        let get = |token: &str, migration_id: u64| {
            let mut request = tonic::Request::new(GetRequest {
                target: Some(TargetRef { namespace: NS.into(), migration_id }),
                id: "r".into(),
                selector: Some(Sel { selector: Some(selector::Selector::All(true)) }),
                after: None,
                limits: Some(Limits { max_bytes: 1 << 20, max_items: None }),
                now: now_micros(),
            });
            let header = format!("Bearer {token}").parse().expect("ascii");
            request.metadata_mut().insert("authorization", header);
            request
        };
        let owner = prism_testkit::token("alice", Some("acme"), &[]);
        let refused = peer.get(get(&owner, 1)).await.expect_err("a user is not a gateway");
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
        assert!(refused.message().contains("role shard"), "{refused:?}");
        let shard = prism_testkit::token("shard-9", None, &["shard"]);
        let refused = peer.get(get(&shard, 1)).await.expect_err("no such migration");
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");
        assert!(refused.message().contains("does not hold the target of migration 1"), "{refused:?}");
        let mut unnamed = get(&shard, 1);
        unnamed.get_mut().target = None;
        let refused = peer.get(unnamed).await.expect_err("no target named");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
        Ok(())
    }

    /// PostgreSQL to another database of the same server (the issue's
    /// "postgres → postgres (another database)"): the same backend, which
    /// PREPARE refused while provisioning a target could remove its
    /// source's data.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_to_another_database_under_load_loses_no_write() -> anyhow::Result<()> {
        let Some(server) = PostgresServer::start_or_skip()? else {
            println!("{}", skip_reason());
            return Ok(());
        };
        let (admin, connection) = tokio_postgres::connect(&server.dsn(), tokio_postgres::NoTls).await?;
        let connection = tokio::spawn(connection);
        admin.batch_execute("CREATE DATABASE migrated").await?;
        drop(admin);
        connection.await??;
        let target_dsn = server.dsn().rsplit_once('/').map(|(base, _)| format!("{base}/migrated")).context("dsn")?;
        let source = Source::Postgres(server.dsn(), "e2e_source".into());
        let running = start(source, at(target_dsn, "e2e_source")).await?;
        to_the_end(running).await
    }

    /// PostgreSQL served by two instances of its shard, to another schema:
    /// both dual-write, one (the runner) copies and compares.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_on_two_replicas_is_copied_by_one_under_load_loses_no_write() -> anyhow::Result<()> {
        let Some(server) = PostgresServer::start_or_skip()? else {
            println!("{}", skip_reason());
            return Ok(());
        };
        let source = Source::Postgres(server.dsn(), "e2e_replicated".into());
        let running = start_on(source, Some(at(server.dsn(), "e2e_replicated_to")), "", true).await?;
        to_the_end(running).await
    }

    /// PostgreSQL to the very schema it is in, only its pool size changed:
    /// the target's tables sit beside the source's, registered in the same
    /// registry, as a newer incarnation of the name, which a plain
    /// provisioning would have removed the source's tables for.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_to_its_own_schema_under_load_loses_no_write() -> anyhow::Result<()> {
        let Some(server) = PostgresServer::start_or_skip()? else {
            println!("{}", skip_reason());
            return Ok(());
        };
        let source = Source::Postgres(server.dsn(), "e2e_shared".into());
        let target = PostgresConfig { pool_size: 3, ..at(server.dsn(), "e2e_shared") };
        let running = start(source, target).await?;
        to_the_end(running).await
    }

    /// Runs the migration through every step under the clients' load:
    /// at VERIFY the target equals the source; at the end the namespace's
    /// placement is the target, no request failed, no read missed the
    /// client's own write, the gateway serves every acknowledged write, and
    /// the source is removed.
    async fn to_the_end(mut running: Running) -> anyhow::Result<()> {
        // The clients write on through every step, the cutover, the
        // cleanup commit and the source's removal. The last step seen
        // before the end is CUTOVER or CLEANUP (each lasts at least the
        // request timeout), with the backfill's counts.
        let seen = std::sync::Mutex::new(None);
        // BACKFILL as polled: one runner, whose count never goes back.
        let backfill = std::sync::Mutex::new((None::<String>, 0u64, Vec::<String>::new()));
        let done = eventually(WAIT, || async {
            let mut cp = running.cluster.control_plane.client().await?;
            let ns = cp.get_namespace(GetNamespaceRequest { name: NS.into() }).await?.into_inner();
            if let Some(m) = ns.migration.as_deref() {
                let step = m.step;
                if step == MigrationStep::Backfill as i32 {
                    let copied = m.progress.as_ref().map_or(0, |p| p.records_copied);
                    let mut b = backfill.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
                    let runner = b.0.get_or_insert_with(|| m.runner_instance_id.clone()).clone();
                    if runner != m.runner_instance_id || copied < b.1 {
                        let before = b.1;
                        b.2.push(format!("runner {} copied {copied} after {runner} {before}", m.runner_instance_id));
                    }
                    b.1 = b.1.max(copied);
                }
                if step >= MigrationStep::Cutover as i32 && m.source.is_none() {
                    *seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))? = Some(ns.clone());
                }
                anyhow::bail!("at step {:?} ({})", MigrationStep::try_from(step), m.reason);
            }
            Ok(ns)
        })
        .await?;
        let ns = seen.into_inner().map_err(|_| anyhow::anyhow!("poisoned"))?.context("CUTOVER never seen")?;
        let (_, _, went_back) = backfill.into_inner().map_err(|_| anyhow::anyhow!("poisoned"))?;
        assert!(went_back.is_empty(), "the backfill changed runner or went back: {went_back:?}");
        let migration = ns.migration.as_deref().cloned().context("no migration")?;
        let progress = migration.progress.clone().unwrap_or_default();
        assert!(progress.records_copied > 0, "{progress:?}");
        assert_eq!(progress.records_differing, 0, "{progress:?}");
        assert!(progress.shadow_reads > 0, "{progress:?}");
        assert_eq!(progress.shadow_mismatches, 0, "{progress:?}");
        // What the source's gateways did shows in their metrics.
        let (mut copied, mut shadow, mut compared) = (0u64, 0u64, 0u64);
        for gw in running.cluster.gateways.iter().filter(|g| g.gateway.config.shard_id == "shard-0") {
            let text = gw.metrics().await?;
            copied += sample(&text, "prism_gateway_migration_copied_records_total")?;
            shadow += sample(&text, "prism_gateway_migration_shadow_reads_total{result=\"same\"}")?;
            compared += sample(&text, "prism_gateway_migration_comparisons_total{result=\"same\"}")?;
            assert_eq!(sample(&text, "prism_gateway_migration_shadow_reads_total{result=\"differ\"}")?, 0);
        }
        assert!(copied >= progress.records_copied, "{copied} copied records counted, {progress:?}");
        assert!(shadow >= progress.shadow_reads, "{shadow} shadow reads counted, {progress:?}");
        assert!(compared >= 1, "no comparison counted");
        let writes_at_end = running.load.writes.load(Ordering::Relaxed);
        running.cluster.gateway("shard-0").context("shard-0")?.caught_up(done.revision).await?;
        eventually(WAIT, || async {
            let more = running.load.writes.load(Ordering::Relaxed) - writes_at_end;
            anyhow::ensure!(more >= 100, "{more} writes since the end");
            Ok(())
        })
        .await?;
        stop(&mut running).await?;
        let load = &running.load;
        assert_eq!(load.failed.load(Ordering::Relaxed), 0, "failed requests");
        assert_eq!(load.stale_reads.load(Ordering::Relaxed), 0, "reads that missed the client's own write");

        // The target is the namespace now, and holds every acknowledged
        // write.
        let backend = migration.target.as_ref().map_or(0, |t| t.backend);
        assert_eq!(done.spec.as_ref().map(|s| s.backend), Some(backend));
        assert_eq!(done.shard_id, migration.target_shard_id);
        assert_eq!((done.data_revision, done.create_revision), (migration.id, ns.create_revision));
        let gw = running.cluster.gateway("shard-0").context("shard-0")?;
        let served = served(&mut gw.kv(Some(&admin_token())).await?).await?;
        let acknowledged = load.acknowledged.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.clone();
        assert_eq!(served, acknowledged, "the target holds every acknowledged write");
        if backend == Backend::Embedded as i32 {
            // On the target instance's disk: what it serves is all there is.
            return Ok(());
        }
        let (plugin, target) = target_of(&ns)?;
        let handle = plugin.key_value().context("KeyValue")?.open(&target)?;
        assert_eq!(in_target(handle.as_ref()).await?, served, "what is served is the target's");

        // The source is gone (a PostgreSQL one is seen from here; an
        // embedded one is in the gateway's own store).
        if ns.spec.as_ref().is_some_and(|s| s.backend == Backend::Postgres as i32) {
            let source = Namespace {
                name: NS.into(),
                create_revision: ns.create_revision,
                spec: ns.spec.clone().unwrap_or_default(),
            };
            let handle = plugin.key_value().context("KeyValue")?.open(&source)?;
            let gone = handle.get("c0-r1", &prism_plugin_api::kv::Selector::All, None, WHOLE, now_micros()).await;
            assert!(matches!(gone, Err(PluginError::NotProvisioned(_))), "the source is removed: {gone:?}");
        }
        Ok(())
    }

    /// The value of the sample `series` (name and labels, as exposed) in
    /// a `/metrics` text.
    fn sample(text: &str, series: &str) -> anyhow::Result<u64> {
        let line = text.lines().find(|l| l.strip_prefix(series).is_some_and(|rest| rest.starts_with(' ')));
        let value = line.and_then(|l| l.rsplit(' ').next()).with_context(|| format!("no {series} in {text}"))?;
        Ok(value.parse::<f64>().with_context(|| format!("{series} = {value}"))? as u64)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_abort_during_the_migration_keeps_the_source_and_removes_the_target() -> anyhow::Result<()> {
        let Some(server) = PostgresServer::start_or_skip()? else {
            println!("{}", skip_reason());
            return Ok(());
        };
        let mut running = start(Source::Embedded, at(server.dsn(), "e2e_aborted")).await?;
        // Aborted while it dual-writes (the step lasts the request
        // timeout, its drain): from CUTOVER on, abort is refused.
        let ns = eventually(WAIT, || async {
            let mut cp = running.cluster.control_plane.client().await?;
            let ns = cp.get_namespace(GetNamespaceRequest { name: NS.into() }).await?.into_inner();
            let step = ns.migration.as_deref().map(|m| m.step).unwrap_or_default();
            anyhow::ensure!(step == MigrationStep::DualWrite as i32, "at step {step}");
            Ok(ns)
        })
        .await?;
        let mut cp = running.cluster.control_plane.client().await?;
        cp.abort_migration(AbortMigrationRequest { name: NS.into(), expected_revision: 0, force: false }).await?;
        eventually(WAIT, || {
            let mut cp = cp.clone();
            async move {
                let ns = cp.get_namespace(GetNamespaceRequest { name: NS.into() }).await?.into_inner();
                anyhow::ensure!(ns.migration.is_none(), "still migrating");
                Ok(())
            }
        })
        .await?;
        stop(&mut running).await?;
        let load = &running.load;
        assert_eq!(load.failed.load(Ordering::Relaxed), 0, "failed requests");
        assert_eq!(load.stale_reads.load(Ordering::Relaxed), 0, "reads that missed the client's own write");

        let gw = running.cluster.gateway("shard-0").context("shard-0")?;
        let source = served(&mut gw.kv(Some(&admin_token())).await?).await?;
        let acknowledged = load.acknowledged.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.clone();
        assert_eq!(source, acknowledged, "the source holds every acknowledged write");
        let (plugin, target) = target_of(&ns)?;
        let handle = plugin.key_value().context("KeyValue")?.open(&target)?;
        let gone = handle.get("r1", &prism_plugin_api::kv::Selector::All, None, WHOLE, now_micros()).await;
        assert!(matches!(gone, Err(PluginError::NotProvisioned(_))), "the target is removed: {gone:?}");
        Ok(())
    }
}
