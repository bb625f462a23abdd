//! A live migration survives its processes failing (issue 16), through
//! real `prism` processes and a real PostgreSQL: an embedded namespace
//! migrates to PostgreSQL under write load while
//! - the control plane is killed (SIGKILL) and restarted during
//!   DUAL_WRITE: the gateways keep serving, their reports wait, and the
//!   migration goes on from the recorded step;
//! - the gateway is killed during BACKFILL and restarted on its data
//!   directory: it reads the step from its snapshot and the backfill
//!   resumes from the recorded cursor (the copied count never goes back);
//! - migrating embedded → embedded on another shard, the target's gateway
//!   (the target's only holder) is killed during BACKFILL and restarted.
//!
//! The writers send every write with an idempotency token and send it
//! again, the same, until it is acknowledged (the kill fails the ones in
//! flight); at the end the namespace is on PostgreSQL and serves every
//! acknowledged write: none is lost.

#[allow(dead_code)]
mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use prism_client::proto::control::{
    Abstraction, Backend, CreateNamespaceRequest, CreateTenantRequest, GetNamespaceRequest, ListShardsRequest,
    MigrationStep, Namespace, NamespaceSpec, NamespaceStatus,
};
use prism_client::proto::kv;
use prism_client::{ControlPlaneClient, KeyValueClient};
use prism_testkit::postgres::{PostgresServer, skip_reason};
use prism_testkit::{admin_token, eventually, token};

use crate::common::{Process, secret_file};

const NS: &str = "acme/moving";
const SHARD: &str = "shard-0";
const WAIT: Duration = Duration::from_secs(120);
/// Records written before the migration starts: enough that the backfill
/// takes a while, so the gateway is killed in the middle of it.
const PRELOAD: usize = 4_000;
/// Records written before a migration that is aborted during its
/// backfill: enough that the backfill lasts seconds after the first
/// progress report.
const ABORT_PRELOAD: usize = 4_000;
/// The gateway's backfill rate (`migration_backfill_records_per_second`):
/// a page of 512 records at once, then one every 1.3 s, so a backfill of
/// the preloaded records lasts seconds (unlimited, it lasts a fraction of
/// one, before its first progress report).
const BACKFILL_RATE: u64 = 400;
const WRITERS: usize = 2;
const LOG: &str = "error";

fn now_micros() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// The control plane, listening on `listen`, its store in
/// `dir/control-plane`: a short lease, and migrations that verify and
/// clean up in about a second.
fn control_plane(dir: &Path, listen: &str) -> anyhow::Result<Process> {
    let config = dir.join("control-plane.toml");
    std::fs::write(
        &config,
        "[control_plane]\nshard_lease_ttl_ms = 1500\nmigration_cleanup_grace_ms = 1000\n\
         migration_verify_window_ms = 1000\nmigration_shadow_read_fraction = 0.5\n",
    )?;
    let config = config.to_str().context("utf-8 path")?.to_owned();
    let secret = secret_file(dir)?;
    Process::start(
        &["control-plane", "--auth-secret-file", &secret, "--listen", listen, "--config", &config],
        &dir.join("control-plane"),
        LOG,
    )
}

/// The gateway of shard-0 on `dir/gateway`, listening on `listen`, taking
/// part in migrations; requests last at most 2 s, so the steps that drain
/// them (DUAL_WRITE, CUTOVER) wait that long.
fn gateway(dir: &Path, cp: &str, listen: &str) -> anyhow::Result<Process> {
    gateway_of(dir, cp, listen, SHARD, "gateway")
}

/// A gateway of `shard` as [`gateway`] starts shard-0's, its data in
/// `dir/data`.
fn gateway_of(dir: &Path, cp: &str, listen: &str, shard: &str, data: &str) -> anyhow::Result<Process> {
    let config = dir.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[gateway]\nexperimental_migrations = true\nmigration_backfill_records_per_second = {BACKFILL_RATE}\n\
             [gateway.limits]\nrequest_timeout_ms = 2000\n"
        ),
    )?;
    let token_file = dir.join(format!("{shard}.token"));
    std::fs::write(&token_file, format!("{}\n", token(shard, None, &["shard"])))?;
    let (config, token_file) =
        (config.to_str().context("utf-8 path")?.to_owned(), token_file.to_str().context("utf-8 path")?.to_owned());
    let secret = secret_file(dir)?;
    Process::start(
        &[
            "gateway",
            "--shard-id",
            shard,
            "--control-plane",
            cp,
            "--listen",
            listen,
            "--auth-secret-file",
            &secret,
            "--control-plane-token-file",
            &token_file,
            "--config",
            &config,
        ],
        &dir.join(data),
        LOG,
    )
}

/// What the writers had acknowledged: each record's last value.
#[derive(Default)]
struct Ledger {
    acked: Mutex<BTreeMap<String, String>>,
    writes: AtomicU64,
    retries: AtomicU64,
    stop: AtomicBool,
}

fn put(id: &str, value: &str, token: &str, generation_time: i64) -> kv::PutItemsRequest {
    kv::PutItemsRequest {
        namespace: NS.into(),
        id: id.into(),
        items: vec![kv::Item { key: b"k".to_vec(), value: value.as_bytes().to_vec(), ttl: None }],
        idempotency_token: Some(kv::IdempotencyToken {
            generation_time: Some(prost_types::Timestamp {
                seconds: generation_time / 1_000_000,
                nanos: (generation_time % 1_000_000 * 1_000) as i32,
            }),
            token: token.into(),
        }),
    }
}

/// Writer `me`: puts `w{me}-r{n % 50}` = `v{n}`, each sent again (the
/// same request: token and generation time) until acknowledged.
async fn writer(addr: String, me: usize, ledger: Arc<Ledger>) -> anyhow::Result<()> {
    let mut client: Option<KeyValueClient> = None;
    let mut n = 0u64;
    while !ledger.stop.load(Ordering::Relaxed) {
        let id = format!("w{me}-r{}", n % 50);
        let value = format!("v{n}");
        let request = put(&id, &value, &format!("w{me}-t{n}"), now_micros());
        loop {
            let c = match client.as_mut() {
                Some(c) => c,
                None => match prism_client::key_value(&addr, Some(&admin_token())).await {
                    Ok(c) => client.insert(c),
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            match c.put_items(request.clone()).await {
                Ok(_) => break,
                Err(status) => {
                    // The kill, or the gateway not back yet: the same
                    // request again.
                    anyhow::ensure!(
                        matches!(
                            status.code(),
                            tonic::Code::Unavailable
                                | tonic::Code::Unknown
                                | tonic::Code::Cancelled
                                | tonic::Code::DeadlineExceeded
                        ),
                        "put {id} failed: {status:?}"
                    );
                    ledger.retries.fetch_add(1, Ordering::Relaxed);
                    client = None;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        ledger.acked.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.insert(id, value);
        ledger.writes.fetch_add(1, Ordering::Relaxed);
        n += 1;
    }
    Ok(())
}

/// Runs the `prism` CLI against the control plane `cp` as the admin;
/// returns what it printed.
fn prism(cp: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_prism"))
        .args(["--endpoint", cp, "--token", &admin_token()])
        .args(args)
        .env_remove("PRISM_CONFIG")
        .output()?;
    anyhow::ensure!(out.status.success(), "prism {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8(out.stdout)?)
}

async fn namespace(cp: &str) -> anyhow::Result<Namespace> {
    let mut c = prism_client::control_plane(cp, Some(&admin_token())).await?;
    Ok(c.get_namespace(GetNamespaceRequest { name: NS.into() }).await?.into_inner())
}

fn step(ns: &Namespace) -> Option<MigrationStep> {
    ns.migration.as_deref().and_then(|m| MigrationStep::try_from(m.step).ok())
}

/// Waits until the namespace's migration is at `wanted` (and `also`
/// holds); returns the namespace.
async fn at(cp: &str, wanted: MigrationStep, also: impl Fn(&Namespace) -> bool) -> anyhow::Result<Namespace> {
    eventually(WAIT, || async {
        let ns = namespace(cp).await?;
        anyhow::ensure!(step(&ns) == Some(wanted) && also(&ns), "at {:?}", step(&ns));
        Ok(ns)
    })
    .await
}

/// Waits for a migration whose gateway was killed with `copied_at_kill`
/// records copied to end, and checks that its backfill resumed: the
/// count never went back. Returns the namespace as it ended.
async fn resumed_to_the_end(cp: &str, copied_at_kill: u64) -> anyhow::Result<Namespace> {
    let lowest = AtomicU64::new(u64::MAX);
    let done = eventually(WAIT, || async {
        let ns = namespace(cp).await?;
        if step(&ns) == Some(MigrationStep::Backfill) {
            lowest.fetch_min(copied(&ns), Ordering::Relaxed);
        }
        if let Some(m) = ns.migration.as_deref() {
            anyhow::bail!("at {:?}: {} {:?}", step(&ns), m.reason, m.progress);
        }
        Ok(ns)
    })
    .await?;
    let lowest = lowest.into_inner();
    anyhow::ensure!(
        lowest == u64::MAX || lowest >= copied_at_kill,
        "records copied went back: {lowest} < {copied_at_kill}"
    );
    Ok(done)
}

fn copied(ns: &Namespace) -> u64 {
    ns.migration.as_deref().and_then(|m| m.progress.as_ref()).map_or(0, |p| p.records_copied)
}

/// Every record's `k`, as the gateway serves it.
async fn served(addr: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let mut c = prism_client::key_value(addr, Some(&admin_token())).await?;
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

async fn registered(cp: &mut ControlPlaneClient) -> anyhow::Result<()> {
    registered_shard(cp, SHARD).await
}

async fn registered_shard(cp: &mut ControlPlaneClient, shard: &str) -> anyhow::Result<()> {
    eventually(WAIT, || {
        let mut cp = cp.clone();
        async move {
            let shards = cp.list_shards(ListShardsRequest::default()).await?.into_inner().shards;
            anyhow::ensure!(shards.iter().any(|s| s.shard_id == shard && !s.instances.is_empty()), "not registered");
            Ok(())
        }
    })
    .await
}

/// A control plane and a gateway of shard-0 (processes), a PostgreSQL
/// to migrate to, the embedded namespace `NS` holding `preload` records
/// of their own (never written again), and the writers writing.
struct Rig {
    dir: tempfile::TempDir,
    server: PostgresServer,
    cp_proc: Process,
    cp: String,
    gw: Process,
    addr: String,
    preloaded: BTreeMap<String, String>,
    ledger: Arc<Ledger>,
    writers: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Rig {
    async fn start(preload: usize) -> anyhow::Result<Option<Self>> {
        let Some(server) = PostgresServer::start_or_skip()? else {
            println!("{}", skip_reason());
            return Ok(None);
        };
        let dir = tempfile::tempdir()?;
        let cp_proc = control_plane(dir.path(), "127.0.0.1:0")?;
        let cp = cp_proc.addr.clone();
        let gw = gateway(dir.path(), &cp, "127.0.0.1:0")?;
        let addr = gw.addr.clone();
        let mut admin = prism_client::control_plane(&cp, Some(&admin_token())).await?;
        admin.create_tenant(CreateTenantRequest { tenant_id: "acme".into(), ..Default::default() }).await?;
        registered(&mut admin).await?;
        let spec = NamespaceSpec {
            abstraction: Abstraction::KeyValue as i32,
            backend: Backend::Embedded as i32,
            ..Default::default()
        };
        admin.create_namespace(CreateNamespaceRequest { name: NS.into(), spec: Some(spec) }).await?;
        eventually(WAIT, || async {
            let ns = namespace(&cp).await?;
            anyhow::ensure!(ns.status == NamespaceStatus::Active as i32, "{}", ns.status_reason);
            Ok(())
        })
        .await?;

        // History for the backfill, written by a few clients at once.
        let mut loaders = Vec::new();
        for part in 0..8 {
            let mut c = prism_client::key_value(&addr, Some(&admin_token())).await?;
            loaders.push(tokio::spawn(async move {
                let mut written = Vec::new();
                for n in (part..preload).step_by(8) {
                    let (id, value) = (format!("pre-{n:06}"), format!("p{n}"));
                    c.put_items(put(&id, &value, &format!("pre-{n}"), now_micros())).await?;
                    written.push((id, value));
                }
                anyhow::Ok(written)
            }));
        }
        let mut preloaded = BTreeMap::new();
        for loader in loaders {
            preloaded.extend(loader.await??);
        }
        let ledger = Arc::new(Ledger::default());
        let writers = (0..WRITERS).map(|me| tokio::spawn(writer(addr.clone(), me, ledger.clone()))).collect();
        Ok(Some(Self { dir, server, cp_proc, cp, gw, addr, preloaded, ledger, writers }))
    }

    /// Starts the migration to PostgreSQL (schema `moved`) with the CLI,
    /// as an operator would.
    fn migrate(&self) -> anyhow::Result<()> {
        let dsn = self.server.dsn();
        let args = ["namespace", "migrate", NS, "--backend", "postgres", "--dsn", &dsn, "--schema", "moved"];
        let started = prism(&self.cp, &args)?;
        anyhow::ensure!(started.contains("STEP") && started.contains("postgres on shard-0"), "{started}");
        Ok(())
    }

    /// Once the migration has ended: a few more writes, the writers
    /// stopped, and every acknowledged write served (none lost), nothing
    /// else. Returns how many writes were acknowledged.
    async fn check(self) -> anyhow::Result<u64> {
        let ledger = self.ledger.clone();
        let at_end = ledger.writes.load(Ordering::Relaxed);
        eventually(WAIT, || async {
            anyhow::ensure!(ledger.writes.load(Ordering::Relaxed) >= at_end + 50, "few writes since the end");
            Ok(())
        })
        .await?;
        ledger.stop.store(true, Ordering::Relaxed);
        for w in self.writers {
            w.await??;
        }
        let mut expected = self.preloaded;
        expected.extend(ledger.acked.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.clone());
        let served = served(&self.addr).await?;
        let lost: Vec<_> = expected.iter().filter(|(id, v)| served.get(*id) != Some(*v)).take(5).collect();
        assert!(lost.is_empty(), "acknowledged writes not served: {lost:?} (of {})", expected.len());
        assert_eq!(served.len(), expected.len(), "nothing but what was acknowledged");
        drop(self.gw);
        drop(self.cp_proc);
        drop(self.dir);
        Ok(ledger.writes.load(Ordering::Relaxed))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_resumes_after_its_control_plane_and_its_gateway_are_killed() -> anyhow::Result<()> {
    let Some(mut rig) = Rig::start(PRELOAD).await? else { return Ok(()) };
    let (cp, addr) = (rig.cp.clone(), rig.addr.clone());
    rig.migrate()?;

    // The control plane dies during DUAL_WRITE (which waits 2 s for the
    // requests admitted before it) and comes back where it listened.
    at(&cp, MigrationStep::DualWrite, |_| true).await?;
    rig.cp_proc.kill();
    let writes_while_down = rig.ledger.writes.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    anyhow::ensure!(
        rig.ledger.writes.load(Ordering::Relaxed) > writes_while_down,
        "the gateway served no write while its control plane was down"
    );
    rig.cp_proc = control_plane(rig.dir.path(), &cp)?;

    // The gateway dies during BACKFILL, once a cursor is recorded, and
    // comes back on its data directory and address.
    let before = at(&cp, MigrationStep::Backfill, |ns| copied(ns) > 0).await?;
    rig.gw.kill();
    let copied_at_kill = copied(&before);
    let status: serde_json::Value =
        serde_json::from_str(&prism(&cp, &["--output", "json", "namespace", "migrate", "status", NS])?)?;
    anyhow::ensure!(status["migration"]["progress"]["records_copied"].as_u64() >= Some(copied_at_kill), "{status}");
    rig.gw = gateway(rig.dir.path(), &cp, &addr)?;
    let done = resumed_to_the_end(&cp, copied_at_kill).await?;
    assert_eq!(done.spec.as_ref().map(|s| s.backend), Some(Backend::Postgres as i32), "on PostgreSQL now");
    let status = prism(&cp, &["namespace", "migrate", "status", NS])?;
    anyhow::ensure!(status.contains("no migration running; it is postgres on shard-0"), "{status}");
    let retries = rig.ledger.retries.load(Ordering::Relaxed);
    let writes = rig.check().await?;
    println!(
        "{writes} writes acknowledged during the migration ({retries} sends again after a failure), {PRELOAD} \
         preloaded, {copied_at_kill} records copied when the gateway was killed"
    );
    Ok(())
}

/// Embedded on shard-0 to embedded on shard-1 (the target on shard-1's
/// disk, reached through its gateway), and that gateway, the target's
/// only holder, killed during BACKFILL and restarted on its data
/// directory: the runner's copies and the dual writes fail while it is
/// away (the writers send theirs again), the backfill resumes from the
/// recorded cursor, and at the end shard-1 serves every acknowledged
/// write, forwarded from shard-0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_migration_to_another_shard_survives_its_target_gateway_killed() -> anyhow::Result<()> {
    let Some(rig) = Rig::start(PRELOAD).await? else { return Ok(()) };
    let cp = rig.cp.clone();
    // Shard-1 joins once the namespace is on shard-0 (an embedded
    // namespace stays where its data is).
    let mut target = gateway_of(rig.dir.path(), &cp, "127.0.0.1:0", "shard-1", "gateway-1")?;
    let target_addr = target.addr.clone();
    registered_shard(&mut prism_client::control_plane(&cp, Some(&admin_token())).await?, "shard-1").await?;
    let started = prism(&cp, &["namespace", "migrate", NS, "--pin", "shard-1"])?;
    anyhow::ensure!(started.contains("embedded (the namespace's own backend) on shard-1"), "{started}");
    let before = at(&cp, MigrationStep::Backfill, |ns| copied(ns) > 0).await?;
    target.kill();
    let copied_at_kill = copied(&before);
    let target = gateway_of(rig.dir.path(), &cp, &target_addr, "shard-1", "gateway-1")?;
    let done = resumed_to_the_end(&cp, copied_at_kill).await?;
    assert_eq!(done.shard_id, "shard-1", "on shard-1 now");
    assert_eq!(done.spec.as_ref().map(|s| s.backend), Some(Backend::Embedded as i32));
    let retries = rig.ledger.retries.load(Ordering::Relaxed);
    let writes = rig.check().await?;
    drop(target);
    println!(
        "{writes} writes acknowledged ({retries} sent again after a failure), {PRELOAD} preloaded, \
         {copied_at_kill} records copied when the target's gateway was killed"
    );
    Ok(())
}

/// Aborted during BACKFILL (with the CLI): the source stays whole and
/// serving, the target's tables are dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_aborted_during_its_backfill_leaves_the_source_whole_and_removes_the_target() -> anyhow::Result<()>
{
    let Some(rig) = Rig::start(ABORT_PRELOAD).await? else { return Ok(()) };
    let cp = rig.cp.clone();
    rig.migrate()?;
    at(&cp, MigrationStep::Backfill, |ns| copied(ns) > 0).await?;
    // The namespace's tables (the schema's registry of incarnations, the
    // plugin's own, stays).
    let tables = "SELECT count(*) FROM pg_tables WHERE schemaname = 'moved' AND tablename <> 'prism_kv_namespaces'";
    anyhow::ensure!(rig.server.query("postgres", tables)? != "0", "the target has tables while it is copied to");
    let aborted = prism(&cp, &["namespace", "migrate", "abort", NS])?;
    anyhow::ensure!(aborted.contains("aborted by test-admin at step BACKFILL"), "{aborted}");
    let followed = prism(&cp, &["namespace", "migrate", "status", NS, "--watch"])?;
    anyhow::ensure!(followed.contains("migration aborted; it stays embedded on shard-0"), "{followed}");
    assert_eq!(rig.server.query("postgres", tables)?, "0", "the target's tables are dropped");
    let registered = "SELECT count(*) FROM moved.prism_kv_namespaces WHERE name = 'acme/moving'";
    assert_eq!(rig.server.query("postgres", registered)?, "0", "and it is no longer registered");
    assert_eq!(namespace(&cp).await?.spec.map(|s| s.backend), Some(Backend::Embedded as i32));
    rig.check().await?;
    Ok(())
}
