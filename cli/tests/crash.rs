//! Crash consistency (issue 17): a gateway on the embedded store, and the
//! control plane on its file store, each killed with SIGKILL twenty times
//! in the middle of write load and restarted on the same data directory.
//!
//! After every restart:
//! - every acknowledged write is there: KeyValue items with the value
//!   last acknowledged (or none after an acknowledged delete), TimeSeries
//!   events exactly once (searched through the time index and read by
//!   series alike), tenants and namespaces with the spec, revisions and
//!   deletion the control plane acknowledged, and nothing else;
//! - a write that was in flight at the kill left its effect or none, and
//!   is there exactly once after the client sends it again (the same
//!   idempotency token, event identity or request);
//! - no two acknowledged commits share a revision, and a Watch resumed
//!   from the last revision it applied goes on with the next one (never a
//!   snapshot, which would mean the control plane lost what it streamed),
//!   each namespace created once;
//! - the store opens cleanly: the restarted process opens it, and redb's
//!   integrity check passes on a copy of the file exactly as the kill
//!   left it;
//! - a gateway keeps serving while its control plane is down and after
//!   it returns, and provisions and removes what changed meanwhile.
//!
//! The kill lands after a random number of acknowledged writes (counted,
//! never timed) while every writer has a request in flight.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail, ensure};
use prism_client::proto::control::watch_response::Event as WatchEvent;
use prism_client::proto::control::{
    Abstraction, Backend, CreateNamespaceRequest, CreateTenantRequest, DeleteNamespaceRequest, GetNamespaceRequest,
    GetTenantRequest, ListNamespacesRequest, ListShardsRequest, ListTenantsRequest, Namespace, NamespaceSpec,
    NamespaceStatus, Policies, QuotaSet, Tenant, UpdateNamespaceRequest, WatchRequest, change,
};
use prism_client::proto::{kv, timeseries as ts};
use prism_client::{ControlPlaneClient, KeyValueClient, TimeSeriesClient};
use prism_testkit::{admin_token, eventually};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::Code;

use crate::common::{control_plane, gateway_on};

/// Kills of each process.
const CYCLES: usize = 20;
const CONVERGE: Duration = Duration::from_secs(60);
const SHARD: &str = "shard-0";
/// The servers' log filter: with peers killed over and over, the survivors
/// warn at every turn (lost connections, retried steps); errors are what
/// is worth reading here.
const LOG: &str = "error";

fn now_micros() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

fn timestamp(micros: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1_000) as i32,
    }
}

/// Opens a copy of the redb file at `path` (as a kill left it: the copy
/// is taken while nothing has the file open) and runs redb's integrity
/// check, which verifies every page's checksum. The copy keeps the
/// restart itself the first to open the original.
fn check_image(path: &Path, scratch: &Path) -> anyhow::Result<()> {
    let image = scratch.join("image.redb");
    std::fs::copy(path, &image).with_context(|| format!("copy {}", path.display()))?;
    let result = (|| -> anyhow::Result<bool> {
        let mut db = redb::Database::open(&image).context("open the crash image")?;
        Ok(db.check_integrity()?)
    })();
    std::fs::remove_file(&image)?;
    ensure!(result.with_context(|| format!("{} after a kill", path.display()))?, "{} needed repair", path.display());
    Ok(())
}

/// Counts acknowledged writes; the kill waits for a number of them.
type Acks = Arc<watch::Sender<u64>>;

/// Waits until `acks` reach `target`, bounded.
async fn acknowledged(acks: &Acks, target: u64) -> anyhow::Result<()> {
    let mut seen = acks.subscribe();
    let reached = tokio::time::timeout(CONVERGE, seen.wait_for(|n| *n >= target)).await;
    ensure!(
        matches!(reached, Ok(Ok(_))),
        "fewer than {target} writes acknowledged in {CONVERGE:?}: {}",
        *acks.borrow()
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// The gateway and its embedded store
// ---------------------------------------------------------------------------

const KV_NS: &str = "acme/kv";
const TS_NS: &str = "acme/events";
const KV_WRITERS: u64 = 3;
const TS_WRITERS: u64 = 3;
/// Keys each KeyValue writer takes in turn, so later writes overwrite
/// earlier ones and a lost write would show as an older value.
const KEYS_PER_WRITER: u64 = 40;

/// One logical write, as the client sends it (and sends it again).
#[derive(Debug, Clone)]
enum Write {
    Put(kv::PutItemsRequest),
    Delete(kv::DeleteItemsRequest),
    Event(ts::WriteEventRecordsRequest),
}

impl Write {
    async fn send(&self, kv: &mut KeyValueClient, ts: &mut TimeSeriesClient) -> Result<(), tonic::Status> {
        match self {
            Self::Put(put) => kv.put_items(put.clone()).await.map(drop),
            Self::Delete(delete) => kv.delete_items(delete.clone()).await.map(drop),
            Self::Event(write) => ts.write_event_records_sync(write.clone()).await.map(drop),
        }
    }

    /// What the write leaves of each item it touches: a value, or none.
    fn items(&self) -> Vec<(ItemKey, Option<Vec<u8>>)> {
        match self {
            Self::Put(put) => {
                put.items.iter().map(|i| ((put.id.clone(), i.key.clone()), Some(i.value.clone()))).collect()
            }
            Self::Delete(kv::DeleteItemsRequest {
                id,
                selector: Some(kv::delete_items_request::Selector::Keys(list)),
                ..
            }) => list.keys.iter().map(|k| ((id.clone(), k.clone()), None)).collect(),
            Self::Delete(_) | Self::Event(_) => Vec::new(),
        }
    }

    fn events(&self) -> &[ts::Event] {
        match self {
            Self::Event(w) => &w.events,
            Self::Put(_) | Self::Delete(_) => &[],
        }
    }
}

/// (record id, key) of an item.
type ItemKey = (String, Vec<u8>);
/// (series, event id) of an event.
type EventKey = (String, String);

fn event_key(e: &ts::Event) -> EventKey {
    (e.time_series_id.clone(), e.event_id.clone())
}

/// One writer: its own record (KeyValue) or series (TimeSeries), a
/// sequence number that makes every token and event id unique, and the
/// last generation time, so its writes are ordered even if the clock is
/// not.
struct Writer {
    n: u64,
    kv: bool,
    seq: u64,
    generation: i64,
}

impl Writer {
    fn new(n: u64, kv: bool) -> Self {
        Self { n, kv, seq: 0, generation: 0 }
    }

    fn next(&mut self) -> Write {
        self.seq += 1;
        self.generation = now_micros().max(self.generation + 1);
        let (n, seq) = (self.n, self.seq);
        let name = format!("w{n}-s{seq}");
        let token =
            Some(kv::IdempotencyToken { generation_time: Some(timestamp(self.generation)), token: name.clone() });
        let key = format!("k{}", seq % KEYS_PER_WRITER).into_bytes();
        if self.kv && seq.is_multiple_of(5) {
            Write::Delete(kv::DeleteItemsRequest {
                namespace: KV_NS.into(),
                id: format!("w{n}"),
                selector: Some(kv::delete_items_request::Selector::Keys(kv::KeyList { keys: vec![key] })),
                idempotency_token: token,
            })
        } else if self.kv {
            Write::Put(kv::PutItemsRequest {
                namespace: KV_NS.into(),
                id: format!("w{n}"),
                items: vec![kv::Item { key, value: name.into_bytes(), ttl: None }],
                idempotency_token: token,
            })
        } else {
            Write::Event(ts::WriteEventRecordsRequest {
                namespace: TS_NS.into(),
                events: vec![ts::Event {
                    schema_version: 0,
                    time_series_id: format!("s{n}"),
                    event_time: Some(timestamp(self.generation)),
                    event_id: name.clone(),
                    items: vec![ts::EventItem { key: b"v".to_vec(), value: name.into_bytes() }],
                    tags: [("writer".to_owned(), n.to_string())].into(),
                }],
            })
        }
    }
}

/// What a writer did until its gateway died: the writes acknowledged, in
/// order, and the one in flight (with how it failed).
struct Run {
    writer: Writer,
    acked: Vec<Write>,
    in_flight: Option<(Write, tonic::Status)>,
}

/// Writes until a write fails (the gateway was killed).
async fn write(
    mut writer: Writer,
    (mut kv_client, mut ts_client): (KeyValueClient, TimeSeriesClient),
    acks: Acks,
) -> Run {
    let mut acked = Vec::new();
    loop {
        let next = writer.next();
        match next.send(&mut kv_client, &mut ts_client).await {
            Ok(()) => {
                acked.push(next);
                acks.send_modify(|n| *n += 1);
            }
            Err(status) => return Run { writer, acked, in_flight: Some((next, status)) },
        }
    }
}

/// What the client knows: every acknowledged write, and the writes whose
/// outcome it does not know (in flight at a kill).
#[derive(Default)]
struct Ledger {
    /// What the last acknowledged write left of each item: its value, or
    /// none (deleted).
    items: BTreeMap<ItemKey, Option<Vec<u8>>>,
    events: BTreeMap<EventKey, ts::Event>,
    unknown: Vec<Write>,
    acked_writes: u64,
    retried_writes: u64,
    checked_items: u64,
}

/// The keys whose stored state is not one of those `allowed`: the state
/// after the last acknowledged write (nothing, for a key never
/// acknowledged) or after one of unknown outcome.
fn differences<K: Ord + Clone + std::fmt::Debug, V: PartialEq + std::fmt::Debug>(
    acked: &BTreeMap<K, Option<V>>,
    unknown: &BTreeMap<K, Vec<Option<V>>>,
    stored: &BTreeMap<K, V>,
) -> Vec<String> {
    let keys: BTreeSet<&K> = acked.keys().chain(unknown.keys()).chain(stored.keys()).collect();
    let mut out = Vec::new();
    for key in keys {
        let (last, got) = (acked.get(key).and_then(Option::as_ref), stored.get(key));
        let maybe = unknown.get(key).is_some_and(|states| states.iter().any(|s| s.as_ref() == got));
        if got != last && !maybe {
            out.push(format!("{key:?}: acknowledged {last:?}, stored {got:?}"));
        }
    }
    out
}

impl Ledger {
    fn acknowledge(&mut self, write: Write) {
        self.acked_writes += 1;
        self.items.extend(write.items());
        self.events.extend(write.events().iter().map(|e| (event_key(e), e.clone())));
    }

    /// The store holds what the acknowledged writes left, each event once,
    /// and nothing else but what a write of unknown outcome may have left.
    fn check(
        &mut self,
        items: &BTreeMap<ItemKey, Vec<u8>>,
        events: &BTreeMap<EventKey, ts::Event>,
    ) -> anyhow::Result<()> {
        let mut unknown_items: BTreeMap<ItemKey, Vec<Option<Vec<u8>>>> = BTreeMap::new();
        let mut unknown_events: BTreeMap<EventKey, Vec<Option<ts::Event>>> = BTreeMap::new();
        for write in &self.unknown {
            for (key, state) in write.items() {
                unknown_items.entry(key).or_default().push(state);
            }
            for e in write.events() {
                unknown_events.entry(event_key(e)).or_default().push(Some(e.clone()));
            }
        }
        let acked_events = self.events.iter().map(|(k, e)| (k.clone(), Some(e.clone()))).collect();
        let mut problems = differences(&self.items, &unknown_items, items);
        problems.extend(differences(&acked_events, &unknown_events, events));
        self.checked_items += (self.items.len() + self.events.len()) as u64;
        ensure!(problems.is_empty(), "{} problems, first: {:#?}", problems.len(), &problems[..problems.len().min(10)]);
        Ok(())
    }
}

/// Every item of the KeyValue namespace; an item twice is an error.
async fn scan(client: &mut KeyValueClient) -> anyhow::Result<BTreeMap<ItemKey, Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut page_token = String::new();
    loop {
        let req = kv::ScanItemsRequest {
            namespace: KV_NS.into(),
            page_size_bytes: 4 << 20,
            limit: 0,
            page_token: page_token.clone(),
        };
        let page = client.scan_items(req).await?.into_inner();
        for record in page.records {
            for item in record.items {
                let key = (record.id.clone(), item.key);
                ensure!(out.insert(key.clone(), item.value).is_none(), "item {key:?} scanned twice");
            }
        }
        if page.next_page_token.is_empty() {
            return Ok(out);
        }
        page_token = page.next_page_token;
    }
}

/// Every event of the TimeSeries namespace since `since`; an event twice
/// is an error.
async fn search(client: &mut TimeSeriesClient, since: i64) -> anyhow::Result<BTreeMap<EventKey, ts::Event>> {
    let mut out = BTreeMap::new();
    let mut page_token = String::new();
    let end = now_micros() + 3_600_000_000;
    loop {
        let req = ts::SearchEventRecordsRequest {
            namespace: TS_NS.into(),
            start: Some(timestamp(since)),
            end: Some(timestamp(end)),
            filter: None,
            page_size_bytes: 4 << 20,
            limit: 0,
            page_token: page_token.clone(),
        };
        let page = client.search_event_records(req).await?.into_inner();
        for event in page.events {
            let key = event_key(&event);
            ensure!(out.insert(key.clone(), event).is_none(), "event {key:?} read twice");
        }
        if page.next_page_token.is_empty() {
            return Ok(out);
        }
        page_token = page.next_page_token;
    }
}

/// The events of one series since `since`, read by the series' own keys
/// (a search reads through the time index).
async fn read_series(client: &mut TimeSeriesClient, series: &str, since: i64) -> anyhow::Result<Vec<ts::Event>> {
    let mut out = Vec::new();
    let mut page_token = String::new();
    let end = now_micros() + 3_600_000_000;
    loop {
        let req = ts::ReadEventRecordsRequest {
            namespace: TS_NS.into(),
            time_series_id: series.into(),
            start: Some(timestamp(since)),
            end: Some(timestamp(end)),
            page_size_bytes: 4 << 20,
            limit: 0,
            page_token: page_token.clone(),
        };
        let page = client.read_event_records(req).await?.into_inner();
        out.extend(page.events);
        if page.next_page_token.is_empty() {
            return Ok(out);
        }
        page_token = page.next_page_token;
    }
}

/// Every event since `since`, searched; each series read by its own keys
/// must hold the same events.
async fn stored_events(client: &mut TimeSeriesClient, since: i64) -> anyhow::Result<BTreeMap<EventKey, ts::Event>> {
    let all = search(client, since).await?;
    for n in 0..TS_WRITERS {
        let series = format!("s{n}");
        let read = read_series(client, &series, since).await?;
        let searched: Vec<&ts::Event> = all.values().filter(|e| e.time_series_id == series).collect();
        let same = read.len() == searched.len() && searched.iter().all(|e| read.contains(e));
        ensure!(same, "series {series}: read {} events, searched {}", read.len(), searched.len());
    }
    Ok(all)
}

/// Clients of a (re)started gateway, once it serves both namespaces.
async fn serving(addr: &str, since: i64) -> anyhow::Result<(KeyValueClient, TimeSeriesClient)> {
    let token = admin_token();
    eventually(CONVERGE, || async {
        let mut kv = prism_client::key_value(addr, Some(&token)).await?;
        let mut ts = prism_client::time_series(addr, Some(&token)).await?;
        let probe = kv::GetItemsRequest { namespace: KV_NS.into(), id: "probe".into(), ..Default::default() };
        kv.get_items(probe).await?;
        search(&mut ts, since).await?;
        Ok((kv, ts))
    })
    .await
}

/// After a restart: the store holds what the ledger says; the writes of
/// unknown outcome, sent again as they were, succeed; then it holds
/// exactly what the ledger says.
async fn settle(
    ledger: &mut Ledger,
    kv: &mut KeyValueClient,
    ts: &mut TimeSeriesClient,
    since: i64,
) -> anyhow::Result<()> {
    ledger.check(&scan(kv).await?, &stored_events(ts, since).await?).context("before the retries")?;
    for write in std::mem::take(&mut ledger.unknown) {
        write.send(kv, ts).await.with_context(|| format!("retry of {write:?}"))?;
        ledger.retried_writes += 1;
        ledger.acknowledge(write);
    }
    ledger.check(&scan(kv).await?, &stored_events(ts, since).await?).context("after the retries")
}

fn embedded_spec(abstraction: Abstraction) -> NamespaceSpec {
    NamespaceSpec { abstraction: abstraction as i32, backend: Backend::Embedded as i32, ..Default::default() }
}

/// Waits until the gateway has registered its shard, so that new
/// namespaces have an owner.
async fn registered(cp: &mut ControlPlaneClient) -> anyhow::Result<()> {
    eventually(CONVERGE, || {
        let mut cp = cp.clone();
        async move {
            let shards = cp.list_shards(ListShardsRequest {}).await?.into_inner().shards;
            ensure!(shards.iter().any(|s| s.shard_id == SHARD && !s.instances.is_empty()), "{shards:?}");
            Ok(())
        }
    })
    .await
}

/// Waits until every namespace in `names` is ACTIVE.
async fn active(cp: &mut ControlPlaneClient, names: &[&str]) -> anyhow::Result<()> {
    eventually(CONVERGE, || {
        let mut cp = cp.clone();
        async move {
            for name in names {
                let ns = cp.get_namespace(GetNamespaceRequest { name: (*name).into() }).await?.into_inner();
                ensure!(ns.status == NamespaceStatus::Active as i32, "{name}: {}", ns.status_reason);
            }
            Ok(())
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_a_gateway_killed_mid_write_twenty_times() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cp_proc = control_plane(dir.path(), "127.0.0.1:0", LOG)?;
    let cp = cp_proc.addr.clone();
    let data = dir.path().join("gateway");
    let mut gateway = gateway_on(&cp, SHARD, dir.path(), &data, LOG)?;
    let token = admin_token();
    let mut admin = prism_client::control_plane(&cp, Some(&token)).await?;
    admin.create_tenant(CreateTenantRequest { tenant_id: "acme".into(), ..Default::default() }).await?;
    registered(&mut admin).await?;
    for (name, abstraction) in [(KV_NS, Abstraction::KeyValue), (TS_NS, Abstraction::TimeSeries)] {
        let req = CreateNamespaceRequest { name: name.into(), spec: Some(embedded_spec(abstraction)) };
        admin.create_namespace(req).await?;
    }
    active(&mut admin, &[KV_NS, TS_NS]).await?;

    let since = now_micros() - 1_000_000;
    let mut ledger = Ledger::default();
    let mut writers: Vec<Writer> =
        (0..KV_WRITERS).map(|n| Writer::new(n, true)).chain((0..TS_WRITERS).map(|n| Writer::new(n, false))).collect();
    let mut targets = Vec::new();
    for cycle in 0..CYCLES {
        let (mut kv, mut ts) =
            serving(&gateway.addr, since).await.with_context(|| format!("cycle {cycle}: restart"))?;
        settle(&mut ledger, &mut kv, &mut ts, since).await.with_context(|| format!("cycle {cycle}"))?;

        let acks: Acks = Arc::new(watch::channel(0).0);
        // Connected before the count starts: the kill can come before a
        // writer's first request, never before its connection.
        let tasks: Vec<JoinHandle<Run>> =
            writers.drain(..).map(|w| tokio::spawn(write(w, (kv.clone(), ts.clone()), acks.clone()))).collect();
        let target = rand::random_range(10..=60);
        targets.push(target);
        let reached = acknowledged(&acks, target).await;
        gateway.kill();
        for task in tasks {
            let run = task.await?;
            for write in run.acked {
                ledger.acknowledge(write);
            }
            if let Some((write, status)) = run.in_flight {
                // The kill breaks the connection; any other failure is
                // one of its own.
                ensure!(
                    matches!(status.code(), Code::Unavailable | Code::Unknown | Code::Cancelled),
                    "cycle {cycle}: {write:?} failed before the kill: {status:?}"
                );
                ledger.unknown.push(write);
            }
            writers.push(run.writer);
        }
        reached.with_context(|| format!("cycle {cycle}"))?;
        check_image(&data.join("embedded.redb"), dir.path()).with_context(|| format!("cycle {cycle}"))?;
        gateway = gateway_on(&cp, SHARD, dir.path(), &data, LOG).with_context(|| format!("cycle {cycle}: restart"))?;
    }
    let (mut kv, mut ts) = serving(&gateway.addr, since).await.context("the last restart")?;
    settle(&mut ledger, &mut kv, &mut ts, since).await.context("after the last kill")?;
    println!(
        "{CYCLES} kills after {targets:?} acknowledged writes; {} writes acknowledged ({} of them retries of writes \
         in flight at a kill), {} items ({} deleted) and {} events at the end, {} item and event checks",
        ledger.acked_writes,
        ledger.retried_writes,
        ledger.items.len(),
        ledger.items.values().filter(|v| v.is_none()).count(),
        ledger.events.len(),
        ledger.checked_items
    );
    drop(gateway);
    drop(cp_proc);
    Ok(())
}

// ---------------------------------------------------------------------------
// The control plane and its file store
// ---------------------------------------------------------------------------

const CP_WRITERS: u64 = 4;
/// An embedded namespace the gateway serves while the control plane is
/// down.
const STEADY: &str = "acme/steady";

/// One metadata change, as the client sends it (and sends it again).
#[derive(Debug, Clone)]
enum Change {
    CreateTenant(CreateTenantRequest),
    CreateNamespace(CreateNamespaceRequest),
    UpdateNamespace(UpdateNamespaceRequest),
    DeleteNamespace(DeleteNamespaceRequest),
}

/// What the control plane answered.
#[derive(Debug)]
enum Answer {
    Tenant(Tenant),
    Namespace(Namespace),
}

impl Change {
    /// The tenant or namespace it changes.
    fn object(&self) -> &str {
        match self {
            Self::CreateTenant(r) => &r.tenant_id,
            Self::CreateNamespace(r) => &r.name,
            Self::UpdateNamespace(r) => &r.name,
            Self::DeleteNamespace(r) => &r.name,
        }
    }

    async fn send(&self, cp: &mut ControlPlaneClient) -> Result<Answer, tonic::Status> {
        Ok(match self {
            Self::CreateTenant(r) => Answer::Tenant(cp.create_tenant(r.clone()).await?.into_inner()),
            Self::CreateNamespace(r) => Answer::Namespace(cp.create_namespace(r.clone()).await?.into_inner()),
            Self::UpdateNamespace(r) => Answer::Namespace(cp.update_namespace(r.clone()).await?.into_inner()),
            Self::DeleteNamespace(r) => Answer::Namespace(cp.delete_namespace(r.clone()).await?.into_inner()),
        })
    }
}

/// A KeyValue namespace on the embedded store, told apart from the others
/// by its request rate quota.
fn marked_spec(mark: i64) -> NamespaceSpec {
    NamespaceSpec {
        quotas: Some(QuotaSet { requests_per_second: Some(mark), ..Default::default() }),
        policies: Some(Box::new(Policies::default())),
        ..embedded_spec(Abstraction::KeyValue)
    }
}

fn mark(spec: Option<&NamespaceSpec>) -> Option<i64> {
    spec.and_then(|s| s.quotas.as_ref()).and_then(|q| q.requests_per_second)
}

/// The changes of a writer's `i`-th round: a tenant every fourth round, a
/// namespace every round, updated every third and deleted every fifth.
fn round(n: u64, i: u64) -> Vec<Change> {
    let name = format!("acme/w{n}-{i}");
    let mut out = Vec::new();
    if i.is_multiple_of(4) {
        out.push(Change::CreateTenant(CreateTenantRequest {
            tenant_id: format!("t-w{n}-{i}"),
            display_name: format!("tenant {n}/{i}"),
            ..Default::default()
        }));
    }
    out.push(Change::CreateNamespace(CreateNamespaceRequest {
        name: name.clone(),
        spec: Some(marked_spec(i as i64 + 1)),
    }));
    if i % 3 == 1 {
        out.push(Change::UpdateNamespace(UpdateNamespaceRequest {
            name: name.clone(),
            spec: Some(marked_spec(1_000_000 + i as i64)),
            expected_revision: 0,
        }));
    }
    if i % 5 == 2 {
        out.push(Change::DeleteNamespace(DeleteNamespaceRequest { name, expected_revision: 0 }));
    }
    out
}

struct CpWriter {
    n: u64,
    round: u64,
    /// What is left of the current round.
    queue: Vec<Change>,
}

struct CpRun {
    writer: CpWriter,
    acked: Vec<(Change, Answer)>,
    in_flight: Option<(Change, tonic::Status)>,
}

/// Changes metadata until a change fails (the control plane was killed).
async fn change(mut writer: CpWriter, mut cp: ControlPlaneClient, acks: Acks) -> CpRun {
    let mut acked = Vec::new();
    loop {
        if writer.queue.is_empty() {
            writer.round += 1;
            writer.queue = round(writer.n, writer.round);
            writer.queue.reverse();
        }
        let Some(next) = writer.queue.pop() else { continue };
        match next.send(&mut cp).await {
            Ok(answer) => {
                acked.push((next, answer));
                acks.send_modify(|n| *n += 1);
            }
            Err(status) => return CpRun { writer, acked, in_flight: Some((next, status)) },
        }
    }
}

/// What the client knows of the metadata.
#[derive(Default)]
struct Book {
    tenants: BTreeMap<String, Tenant>,
    /// Each namespace as last acknowledged (or, after a change of unknown
    /// outcome was settled, as read back).
    namespaces: BTreeMap<String, Namespace>,
    deleted: BTreeSet<String>,
    /// The commit revision of every acknowledged change: a revision twice
    /// would mean a commit acknowledged, lost and its revision reused.
    revisions: BTreeMap<u64, String>,
    unknown: Vec<Change>,
    acked_changes: u64,
    retried_changes: u64,
    checked_objects: u64,
}

impl Book {
    fn acknowledge(&mut self, change: &Change, answer: Answer) -> anyhow::Result<()> {
        self.acked_changes += 1;
        let (revision, what) = match answer {
            Answer::Tenant(t) => {
                let out = (t.revision, format!("{change:?}"));
                self.tenants.insert(t.id.clone(), t);
                out
            }
            Answer::Namespace(ns) => {
                if let Change::DeleteNamespace(_) = change {
                    self.deleted.insert(ns.name.clone());
                }
                let out = (ns.revision, format!("{change:?}"));
                self.namespaces.insert(ns.name.clone(), ns);
                out
            }
        };
        if let Some(before) = self.revisions.insert(revision, what.clone()) {
            bail!("revision {revision} acknowledged twice: {before} and {what}");
        }
        Ok(())
    }

    /// Sends a change of unknown outcome again: it is applied now, or was
    /// before (then the create is refused as existing and the object is
    /// what the change made of it).
    async fn settle(&mut self, cp: &mut ControlPlaneClient, change: Change) -> anyhow::Result<()> {
        self.retried_changes += 1;
        match (change.send(cp).await, &change) {
            (Ok(answer), _) => return self.acknowledge(&change, answer),
            (Err(s), Change::CreateTenant(r)) if s.code() == Code::AlreadyExists => {
                let t = cp.get_tenant(GetTenantRequest { tenant_id: r.tenant_id.clone() }).await?.into_inner();
                ensure!(t.display_name == r.display_name, "{change:?} made {t:?}");
                self.tenants.insert(t.id.clone(), t);
            }
            (Err(s), Change::CreateNamespace(r)) if s.code() == Code::AlreadyExists => {
                let ns = cp.get_namespace(GetNamespaceRequest { name: r.name.clone() }).await?.into_inner();
                ensure!(mark(ns.spec.as_ref()) == mark(r.spec.as_ref()), "{change:?} made {ns:?}");
                self.namespaces.insert(ns.name.clone(), ns);
            }
            (Err(s), Change::DeleteNamespace(r)) if matches!(s.code(), Code::FailedPrecondition | Code::NotFound) => {
                let ns = cp.get_namespace(GetNamespaceRequest { name: r.name.clone() }).await?.into_inner();
                let gone = [NamespaceStatus::Deleting as i32, NamespaceStatus::Deleted as i32].contains(&ns.status);
                ensure!(gone, "{change:?} refused ({s:?}) but {ns:?}");
                self.deleted.insert(ns.name.clone());
                self.namespaces.insert(ns.name.clone(), ns);
            }
            (Err(s), _) => bail!("retry of {change:?}: {s:?}"),
        }
        Ok(())
    }

    /// The control plane holds every acknowledged change exactly once, and
    /// nothing it was not asked for. Objects a change of unknown outcome
    /// touched are left for after it is settled.
    async fn check(&mut self, cp: &mut ControlPlaneClient) -> anyhow::Result<()> {
        let unsettled: BTreeSet<&str> = self.unknown.iter().map(Change::object).collect();
        let mut problems = Vec::new();
        let mut tenants: BTreeMap<String, Tenant> = BTreeMap::new();
        let mut page_token = String::new();
        loop {
            let req = ListTenantsRequest { page_size: 1000, page_token: page_token.clone(), include_deleted: true };
            let page = cp.list_tenants(req).await?.into_inner();
            for t in page.tenants {
                if let Some(before) = tenants.insert(t.id.clone(), t) {
                    problems.push(format!("tenant {} listed twice", before.id));
                }
            }
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        let mut namespaces: BTreeMap<String, Namespace> = BTreeMap::new();
        let mut page_token = String::new();
        loop {
            let req = ListNamespacesRequest {
                tenant_id: "acme".into(),
                page_size: 1000,
                page_token: page_token.clone(),
                include_deleted: true,
            };
            let page = cp.list_namespaces(req).await?.into_inner();
            for ns in page.namespaces {
                if let Some(before) = namespaces.insert(ns.name.clone(), ns) {
                    problems.push(format!("namespace {} listed twice", before.name));
                }
            }
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        for (id, want) in self.tenants.iter().filter(|(id, _)| !unsettled.contains(id.as_str())) {
            match tenants.get(id) {
                Some(got) if got.display_name == want.display_name && got.revision >= want.revision => {}
                got => problems.push(format!("tenant {id}: acknowledged {want:?}, stored {got:?}")),
            }
        }
        for id in tenants.keys() {
            if !self.tenants.contains_key(id) && !unsettled.contains(id.as_str()) {
                problems.push(format!("tenant {id} was never created"));
            }
        }
        for (name, want) in self.namespaces.iter().filter(|(name, _)| !unsettled.contains(name.as_str())) {
            let Some(got) = namespaces.get(name) else {
                problems.push(format!("namespace {name} is gone"));
                continue;
            };
            let gone = [NamespaceStatus::Deleting as i32, NamespaceStatus::Deleted as i32].contains(&got.status);
            if got.spec != want.spec
                || got.create_revision != want.create_revision
                || got.revision < want.revision
                || gone != self.deleted.contains(name)
            {
                problems.push(format!("namespace {name}: acknowledged {want:?}, stored {got:?}"));
            }
        }
        for name in namespaces.keys() {
            if !self.namespaces.contains_key(name) && !unsettled.contains(name.as_str()) {
                problems.push(format!("namespace {name} was never created"));
            }
        }
        self.checked_objects += (self.tenants.len() + self.namespaces.len()) as u64;
        ensure!(problems.is_empty(), "{} problems, first: {:#?}", problems.len(), &problems[..problems.len().min(10)]);
        Ok(())
    }
}

/// What a Watch stream has shown, across the control plane's restarts.
#[derive(Default)]
struct Watched {
    /// The last revision applied.
    revision: u64,
    namespaces: BTreeMap<String, Namespace>,
    /// Deltas that created each namespace: exactly one each.
    creations: BTreeMap<String, u32>,
    in_snapshot: bool,
    snapshots: u32,
    violations: Vec<String>,
}

/// Opens a Watch from the last revision applied and follows it, in a task,
/// until the stream breaks (the control plane was killed).
async fn follow(
    cp: &mut ControlPlaneClient,
    watched: &Arc<Mutex<Watched>>,
) -> anyhow::Result<JoinHandle<anyhow::Result<()>>> {
    let from = watched.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.revision;
    let stream = cp.watch(WatchRequest { from_revision: from }).await?.into_inner();
    Ok(tokio::spawn(apply(stream, from, watched.clone())))
}

async fn apply(
    mut stream: tonic::Streaming<prism_client::proto::control::WatchResponse>,
    from: u64,
    watched: Arc<Mutex<Watched>>,
) -> anyhow::Result<()> {
    while let Some(message) = stream.message().await? {
        let mut w = watched.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        match message.event {
            Some(WatchEvent::Snapshot(chunk)) => {
                if from != 0 {
                    w.violations.push(format!("a snapshot at {} after resuming from {from}", chunk.revision));
                }
                if !w.in_snapshot {
                    w.in_snapshot = true;
                    w.snapshots += 1;
                    w.namespaces.clear();
                }
                for ns in chunk.namespaces {
                    w.creations.entry(ns.name.clone()).or_insert(1);
                    w.namespaces.insert(ns.name.clone(), ns);
                }
                if chunk.last {
                    w.in_snapshot = false;
                    w.revision = chunk.revision;
                }
            }
            Some(WatchEvent::Delta(delta)) => {
                if delta.revision != w.revision + 1 {
                    let msg = format!("delta {} after revision {} (resumed from {from})", delta.revision, w.revision);
                    w.violations.push(msg);
                }
                w.revision = delta.revision;
                for c in delta.changes {
                    if let Some(change::Change::Namespace(ns)) = c.change {
                        if ns.create_revision == delta.revision {
                            *w.creations.entry(ns.name.clone()).or_default() += 1;
                        }
                        w.namespaces.insert(ns.name.clone(), ns);
                    }
                }
            }
            None => w.violations.push("an empty watch message".into()),
        }
    }
    Ok(())
}

/// A put and a read back on the steady namespace, straight to the gateway.
async fn serves(gateway: &str, value: &str) -> anyhow::Result<()> {
    let mut kv = prism_client::key_value(gateway, Some(&admin_token())).await?;
    let put = kv::PutItemsRequest {
        namespace: STEADY.into(),
        id: "steady".into(),
        items: vec![kv::Item { key: Vec::new(), value: value.as_bytes().to_vec(), ttl: None }],
        idempotency_token: None,
    };
    kv.put_items(put).await?;
    let get = kv::GetItemsRequest { namespace: STEADY.into(), id: "steady".into(), ..Default::default() };
    let items = kv.get_items(get).await?.into_inner().items;
    ensure!(items.first().is_some_and(|i| i.value == value.as_bytes()), "read {items:?} after writing {value}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_metadata_survives_a_control_plane_killed_mid_commit_twenty_times() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut cp_proc = control_plane(dir.path(), "127.0.0.1:0", LOG)?;
    // Restarts listen where the gateway looks for it.
    let cp = cp_proc.addr.clone();
    let store = dir.path().join("control-plane").join("control-plane.redb");
    let gateway = gateway_on(&cp, SHARD, dir.path(), &dir.path().join("gateway"), LOG)?;
    let token = admin_token();
    let mut admin = prism_client::control_plane(&cp, Some(&token)).await?;
    let mut book = Book::default();
    let tenant = Change::CreateTenant(CreateTenantRequest { tenant_id: "acme".into(), ..Default::default() });
    let answer = tenant.send(&mut admin).await?;
    book.acknowledge(&tenant, answer)?;
    registered(&mut admin).await?;
    let steady = Change::CreateNamespace(CreateNamespaceRequest {
        name: STEADY.into(),
        spec: Some(embedded_spec(Abstraction::KeyValue)),
    });
    let answer = steady.send(&mut admin).await?;
    book.acknowledge(&steady, answer)?;
    active(&mut admin, &[STEADY]).await?;
    serves(&gateway.addr, "before").await?;

    let watched = Arc::new(Mutex::new(Watched::default()));
    let mut writers: Vec<CpWriter> = (0..CP_WRITERS).map(|n| CpWriter { n, round: 0, queue: Vec::new() }).collect();
    let mut targets = Vec::new();
    for cycle in 0..CYCLES {
        let mut admin = eventually(CONVERGE, || async { Ok(prism_client::control_plane(&cp, Some(&token)).await?) })
            .await
            .with_context(|| format!("cycle {cycle}: restart"))?;
        let follower = follow(&mut admin, &watched).await.with_context(|| format!("cycle {cycle}: watch"))?;
        book.check(&mut admin).await.with_context(|| format!("cycle {cycle}: before the retries"))?;
        for change in std::mem::take(&mut book.unknown) {
            book.settle(&mut admin, change).await.with_context(|| format!("cycle {cycle}"))?;
        }
        book.check(&mut admin).await.with_context(|| format!("cycle {cycle}: after the retries"))?;
        serves(&gateway.addr, &format!("restarted {cycle}")).await.with_context(|| format!("cycle {cycle}"))?;

        let acks: Acks = Arc::new(watch::channel(0).0);
        let tasks: Vec<JoinHandle<CpRun>> =
            writers.drain(..).map(|w| tokio::spawn(change(w, admin.clone(), acks.clone()))).collect();
        let target = rand::random_range(5..=30);
        targets.push(target);
        let reached = acknowledged(&acks, target).await;
        cp_proc.kill();
        for task in tasks {
            let run = task.await?;
            for (change, answer) in run.acked {
                book.acknowledge(&change, answer).with_context(|| format!("cycle {cycle}"))?;
            }
            if let Some((change, status)) = run.in_flight {
                // As for the gateway: only the kill may fail a change.
                ensure!(
                    matches!(status.code(), Code::Unavailable | Code::Unknown | Code::Cancelled),
                    "cycle {cycle}: {change:?} failed before the kill: {status:?}"
                );
                book.unknown.push(change);
            }
            writers.push(run.writer);
        }
        reached.with_context(|| format!("cycle {cycle}"))?;
        // The stream breaks with the process.
        let _ = tokio::time::timeout(CONVERGE, follower).await.context("the watch outlived its control plane")?;
        {
            let w = watched.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            ensure!(w.violations.is_empty(), "cycle {cycle}: watch: {:?}", w.violations);
        }
        check_image(&store, dir.path()).with_context(|| format!("cycle {cycle}"))?;
        // The gateway serves on what it holds while its control plane is
        // away.
        serves(&gateway.addr, &format!("killed {cycle}"))
            .await
            .with_context(|| format!("cycle {cycle}: no control plane"))?;
        cp_proc = eventually(CONVERGE, || async { control_plane(dir.path(), &cp, LOG) })
            .await
            .with_context(|| format!("cycle {cycle}: restart"))?;
    }

    let mut admin =
        eventually(CONVERGE, || async { Ok(prism_client::control_plane(&cp, Some(&token)).await?) }).await?;
    let follower = follow(&mut admin, &watched).await.context("watch")?;
    book.check(&mut admin).await.context("after the last kill, before the retries")?;
    for change in std::mem::take(&mut book.unknown) {
        book.settle(&mut admin, change).await.context("after the last kill")?;
    }
    book.check(&mut admin).await.context("after the last kill")?;
    // The gateway follows the restarted control plane: it provisions every
    // namespace created meanwhile and removes every one deleted.
    let names: Vec<String> = book.namespaces.keys().cloned().collect();
    eventually(CONVERGE, || {
        let (mut admin, names, deleted) = (admin.clone(), names.clone(), book.deleted.clone());
        async move {
            for name in names {
                let ns = admin.get_namespace(GetNamespaceRequest { name: name.clone() }).await?.into_inner();
                let want = if deleted.contains(&name) { NamespaceStatus::Deleted } else { NamespaceStatus::Active };
                ensure!(ns.status == want as i32, "{name}: {:?} ({})", ns.status(), ns.status_reason);
            }
            Ok(())
        }
    })
    .await?;
    serves(&gateway.addr, "at the end").await?;
    // The watch, resumed across every restart, saw what the store holds:
    // each namespace created once, and in its current state.
    let listed = {
        let req = ListNamespacesRequest {
            tenant_id: "acme".into(),
            page_size: 1000,
            include_deleted: true,
            ..Default::default()
        };
        admin.list_namespaces(req).await?.into_inner().namespaces
    };
    let max_acked = book.revisions.keys().next_back().copied().unwrap_or(0);
    eventually(CONVERGE, || {
        let (watched, listed) = (watched.clone(), &listed);
        async move {
            let w = watched.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            ensure!(w.violations.is_empty(), "watch: {:?}", w.violations);
            ensure!(w.revision >= max_acked, "watched up to {}, acknowledged up to {max_acked}", w.revision);
            for ns in listed {
                ensure!(
                    w.namespaces.get(&ns.name) == Some(ns),
                    "watch has {:?}, store {ns:?}",
                    w.namespaces.get(&ns.name)
                );
                ensure!(
                    w.creations.get(&ns.name) == Some(&1),
                    "{} created {:?} times",
                    ns.name,
                    w.creations.get(&ns.name)
                );
            }
            ensure!(w.namespaces.len() == listed.len(), "watch holds {} namespaces", w.namespaces.len());
            Ok(())
        }
    })
    .await?;
    let (snapshots, revision) = {
        let w = watched.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        (w.snapshots, w.revision)
    };
    ensure!(snapshots == 1, "{snapshots} snapshots: only the first watch starts with one");
    follower.abort();
    println!(
        "{CYCLES} kills after {targets:?} acknowledged changes; {} changes acknowledged ({} of them settled after a \
         kill), {} tenants and {} namespaces at the end ({} deleted), {} object checks, store at revision {revision}",
        book.acked_changes,
        book.retried_changes,
        book.tenants.len(),
        book.namespaces.len(),
        book.deleted.len(),
        book.checked_objects
    );
    drop(gateway);
    drop(cp_proc);
    Ok(())
}
