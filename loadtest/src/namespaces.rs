//! `prism-loadtest namespaces`: the metadata scenario. Creates many
//! namespaces through the control plane's admin API, as a user would
//! (`--concurrency` creations in flight), for measuring what each costs a
//! gateway (`scripts/bench-namespace-memory.sh`) and the control plane
//! (`scripts/bench-group-commit.sh`); then, optionally, what the metadata
//! costs to follow at that size:
//!
//! - `--snapshot`: a new watcher's snapshot (from revision 0): its bytes,
//!   messages, namespaces and the time to receive all of it, as a gateway
//!   starting up would.
//! - `--watch-probes N`: N more creates, one at a time, each timed until
//!   its delta arrives on a Watch stream opened before (the delta latency
//!   a gateway sees), and until the create was acknowledged.
//! - `--join-shard ID`: a rebalance. Registers an instance of a new shard
//!   (and heartbeats it), then follows the watch until every namespace
//!   that shard wins (by the control plane's rendezvous hashing over the
//!   live shards) has arrived there: the number of commits that moved
//!   them, the largest, the time until the last, and how far behind the
//!   commits the watcher was. Needs `--shared`: embedded namespaces never
//!   move.
//!
//! Namespaces are `<tenant-prefix>-<t>/<prefix>-<i>`, spread evenly over
//! `--tenants` tenants (each created with a `max_namespaces` quota large
//! enough for its share). One that already exists counts as created, so a
//! run can be resumed; a lost race (`ABORTED`) is tried again and counted
//! (a control plane that groups commits loses none); any other refusal
//! stops the run with its status. Probes go to tenant
//! `<tenant-prefix>-probe`, which has no quota.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use prism_proto::control::backend_config::Config;
use prism_proto::control::control_plane_service_client::ControlPlaneServiceClient;
use prism_proto::control::{
    Abstraction, Backend, BackendConfig, CreateNamespaceRequest, CreateTenantRequest, HeartbeatRequest,
    ListShardsRequest, NamespaceSpec, PostgresConfig, QuotaSet, RegisterShardRequest, WatchRequest, change,
    watch_response,
};
use prost::Message;
use tonic::transport::Channel;

/// The abstraction of the namespaces created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    KeyValue,
    TimeSeries,
}

#[derive(Debug, Clone, Args)]
pub struct NamespacesArgs {
    /// Control plane address (`host:port` or `http://host:port`).
    #[arg(long)]
    pub control_plane: String,
    /// Bearer token of a superuser (or none, against `--insecure-no-auth`).
    #[arg(long, env = "PRISM_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Namespaces to create.
    #[arg(long)]
    pub count: u64,
    /// Tenants they are spread over.
    #[arg(long, default_value_t = 100)]
    pub tenants: u64,
    /// Creations in flight.
    #[arg(long, default_value_t = 32)]
    pub concurrency: u64,
    /// First part of each tenant id.
    #[arg(long, default_value = "scale")]
    pub tenant_prefix: String,
    /// First part of each namespace's local name.
    #[arg(long, default_value = "ns")]
    pub prefix: String,
    /// Abstraction of every namespace.
    #[arg(long, value_enum, default_value_t = Kind::KeyValue)]
    pub abstraction: Kind,
    /// Put the namespaces on a shared backend (a PostgreSQL DSN nothing
    /// connects to while no gateway serves the shards) instead of the
    /// embedded one, so they move when shards change.
    #[arg(long)]
    pub shared: bool,
    /// Then register an instance of this new shard and measure the
    /// rebalance it causes (see the module docs).
    #[arg(long, value_name = "SHARD_ID", requires = "shared")]
    pub join_shard: Option<String>,
    /// Then read a full snapshot, as a new gateway does, and report its
    /// size and the time it took.
    #[arg(long)]
    pub snapshot: bool,
    /// Then create this many namespaces one at a time, each timed until
    /// its delta reaches a watcher.
    #[arg(long, default_value_t = 0)]
    pub watch_probes: u64,
}

/// What a run measured.
#[derive(Debug, Clone, Default)]
pub struct NamespacesResult {
    pub created: u64,
    pub elapsed: Duration,
    /// Creates per second over the whole run.
    pub rate: f64,
    /// Per-create latency, microseconds: p50, p99, max.
    pub create_us: [u64; 3],
    /// `ABORTED` answers tried again.
    pub retries: u64,
    pub snapshot: Option<SnapshotMeasure>,
    /// Create sent → delta at a watcher, microseconds: p50, p99, max.
    pub delta_us: Option<[u64; 3]>,
    /// Create acknowledged → delta at a watcher (0 when the delta came
    /// first), microseconds: p50, p99, max.
    pub delta_after_ack_us: Option<[u64; 3]>,
    pub rebalance: Option<RebalanceMeasure>,
}

/// A shard joining, as a watcher sees it.
#[derive(Debug, Clone, Default)]
pub struct RebalanceMeasure {
    /// Namespaces the joining shard wins, all of which arrived.
    pub moved: u64,
    /// Commits that moved them, and the most one moved.
    pub commits: u64,
    pub largest_commit: u64,
    /// Registration sent → the last move's delta at the watcher.
    pub elapsed: Duration,
    /// Commit time → delta at the watcher, microseconds: p50, p99, max
    /// (wall clocks of one machine).
    pub lag_us: [u64; 3],
}

/// A full snapshot as a new watcher receives it.
#[derive(Debug, Clone, Default)]
pub struct SnapshotMeasure {
    pub revision: u64,
    pub namespaces: u64,
    pub messages: u64,
    /// Encoded bytes of every message.
    pub bytes: u64,
    /// The largest message, encoded.
    pub largest: u64,
    pub elapsed: Duration,
}

fn endpoint(addr: &str) -> String {
    if addr.contains("://") { addr.to_owned() } else { format!("http://{addr}") }
}

fn request<T>(message: T, token: Option<&str>) -> anyhow::Result<tonic::Request<T>> {
    let mut req = tonic::Request::new(message);
    if let Some(token) = token {
        let value = format!("Bearer {token}").parse().context("--token is not valid in a header")?;
        req.metadata_mut().insert("authorization", value);
    }
    req.set_timeout(Duration::from_secs(30));
    Ok(req)
}

fn histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 600_000_000, 3).context("histogram")
}

fn percentiles(h: &Histogram<u64>) -> [u64; 3] {
    [h.value_at_quantile(0.5), h.value_at_quantile(0.99), h.max()]
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

type Client = ControlPlaneServiceClient<Channel>;

async fn create_tenant(
    client: &Client,
    id: String,
    quotas: Option<QuotaSet>,
    token: Option<&str>,
) -> anyhow::Result<()> {
    let message = CreateTenantRequest { tenant_id: id.clone(), quotas, ..Default::default() };
    match client.clone().create_tenant(request(message, token)?).await {
        Ok(_) => Ok(()),
        Err(s) if s.code() == tonic::Code::AlreadyExists => Ok(()),
        Err(s) => bail!("creating tenant {id}: {} {}", s.code(), s.message()),
    }
}

/// Creates the tenants, then the namespaces, then measures what was
/// asked; prints every result.
pub async fn run(args: &NamespacesArgs) -> anyhow::Result<NamespacesResult> {
    if args.tenants == 0 || args.concurrency == 0 {
        bail!("--tenants and --concurrency must be at least 1");
    }
    let channel = Channel::from_shared(endpoint(&args.control_plane))
        .context("--control-plane is not an address")?
        .connect()
        .await
        .with_context(|| format!("cannot connect to {}", args.control_plane))?;
    // A snapshot of a million namespaces comes in many messages, each well
    // under the server's limit; the default 4 MiB suffices, but a server
    // configured otherwise is not refused here.
    let client = ControlPlaneServiceClient::new(channel).max_decoding_message_size(64 * 1024 * 1024);
    let token = args.token.as_deref();
    let per_tenant = args.count.div_ceil(args.tenants);
    for t in 0..args.tenants {
        let quotas =
            QuotaSet { max_namespaces: Some(i64::try_from(per_tenant).unwrap_or(i64::MAX)), ..Default::default() };
        create_tenant(&client, format!("{}-{t}", args.tenant_prefix), Some(quotas), token).await?;
    }
    let mut result = create_all(args, &client).await?;
    println!(
        "{} namespaces over {} tenants in {:.1} s ({:.0}/s); create p50 {} us, p99 {} us, max {} us; {} ABORTED retried",
        result.created,
        args.tenants,
        result.elapsed.as_secs_f64(),
        result.rate,
        result.create_us[0],
        result.create_us[1],
        result.create_us[2],
        result.retries,
    );
    if args.snapshot {
        let s = snapshot(&client, token).await?;
        println!(
            "snapshot at revision {}: {} namespaces, {} messages, {} bytes ({:.1} MiB, largest message {} bytes), \
             received in {:.2} s",
            s.revision,
            s.namespaces,
            s.messages,
            s.bytes,
            s.bytes as f64 / (1024.0 * 1024.0),
            s.largest,
            s.elapsed.as_secs_f64()
        );
        result.snapshot = Some(s);
    }
    if args.watch_probes > 0 {
        let (delta, after_ack) = watch_probes(args, &client).await?;
        println!(
            "{} probes: create sent -> delta at a watcher p50 {} us, p99 {} us, max {} us; \
             create acknowledged -> delta p50 {} us, p99 {} us, max {} us",
            args.watch_probes, delta[0], delta[1], delta[2], after_ack[0], after_ack[1], after_ack[2]
        );
        result.delta_us = Some(delta);
        result.delta_after_ack_us = Some(after_ack);
    }
    if let Some(shard) = &args.join_shard {
        let r = join_shard(args, &client, shard).await?;
        println!(
            "shard {shard} joined: {} namespaces moved in {} commits (largest {}), the last at the watcher {:.2} s \
             after the registration; commit -> watcher p50 {} us, p99 {} us, max {} us",
            r.moved,
            r.commits,
            r.largest_commit,
            r.elapsed.as_secs_f64(),
            r.lag_us[0],
            r.lag_us[1],
            r.lag_us[2]
        );
        result.rebalance = Some(r);
    }
    Ok(result)
}

fn spec(args: &NamespacesArgs) -> NamespaceSpec {
    let abstraction = match args.abstraction {
        Kind::KeyValue => Abstraction::KeyValue,
        Kind::TimeSeries => Abstraction::TimeSeries,
    };
    if args.shared {
        let postgres = PostgresConfig { dsn: "postgres://db.invalid/prism".into(), ..Default::default() };
        return NamespaceSpec {
            abstraction: abstraction as i32,
            backend: Backend::Postgres as i32,
            backend_config: Some(Box::new(BackendConfig { config: Some(Config::Postgres(postgres)) })),
            ..Default::default()
        };
    }
    NamespaceSpec { abstraction: abstraction as i32, backend: Backend::Embedded as i32, ..Default::default() }
}

/// The name of the `i`th namespace created.
fn name(args: &NamespacesArgs, i: u64) -> String {
    format!("{}-{}/{}-{i}", args.tenant_prefix, i % args.tenants, args.prefix)
}

/// Registers an instance of `shard`, keeps it alive, and follows the
/// watch until every created namespace it wins has moved to it.
async fn join_shard(args: &NamespacesArgs, client: &Client, shard: &str) -> anyhow::Result<RebalanceMeasure> {
    let token = args.token.as_deref();
    let live = client.clone().list_shards(request(ListShardsRequest {}, token)?).await?.into_inner().shards;
    let mut ids: Vec<String> = live.iter().map(|s| s.shard_id.clone()).collect();
    ids.push(shard.to_owned());
    let mut waiting: std::collections::HashSet<String> = (0..args.count)
        .map(|i| name(args, i))
        .filter(|n| prism_control_plane::assign::rendezvous(n, ids.iter().map(String::as_str)) == Some(shard))
        .collect();
    let mut measure = RebalanceMeasure { moved: waiting.len() as u64, ..RebalanceMeasure::default() };
    let from = {
        // The revision to follow from: a fresh snapshot's, without keeping it.
        let mut req = request(WatchRequest { from_revision: 0 }, token)?;
        req.set_timeout(Duration::from_secs(3600));
        let mut stream = client.clone().watch(req).await.context("watch")?.into_inner();
        loop {
            match stream.message().await?.and_then(|m| m.event) {
                Some(watch_response::Event::Snapshot(chunk)) if chunk.last => break chunk.revision,
                Some(watch_response::Event::Snapshot(_)) => {}
                other => bail!("a watch from revision 0 must start with a snapshot, got {other:?}"),
            }
        }
    };
    let mut req = request(WatchRequest { from_revision: from }, token)?;
    req.set_timeout(Duration::from_secs(3600));
    let mut stream = client.clone().watch(req).await.context("watch")?.into_inner();
    let started = Instant::now();
    let register =
        RegisterShardRequest { shard_id: shard.to_owned(), endpoint: "127.0.0.1:9".into(), ..Default::default() };
    let instance_id = client.clone().register_shard(request(register, token)?).await?.into_inner().instance_id;
    let beat = tokio::spawn({
        let (mut client, token, shard) = (client.clone(), args.token.clone(), shard.to_owned());
        async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let beat = HeartbeatRequest { shard_id: shard.clone(), instance_id: instance_id.clone() };
                if let Ok(req) = request(beat, token.as_deref()) {
                    // A lost beat is sent again at the next tick.
                    let _ = client.heartbeat(req).await;
                }
            }
        }
    });
    let mut lag = histogram()?;
    let outcome = async {
        while !waiting.is_empty() {
            let message = tokio::time::timeout(Duration::from_secs(120), stream.message())
                .await
                .with_context(|| format!("no delta within 120 s; {} namespaces have not moved", waiting.len()))??
                .context("the watch ended")?;
            let Some(watch_response::Event::Delta(delta)) = message.event else { continue };
            let arrived = std::time::SystemTime::now();
            let moved = delta
                .changes
                .iter()
                .filter(|c| matches!(&c.change, Some(change::Change::Namespace(ns)) if ns.shard_id == shard && waiting.remove(&ns.name)))
                .count() as u64;
            if moved == 0 {
                continue;
            }
            measure.commits += 1;
            measure.largest_commit = measure.largest_commit.max(moved);
            let committed = delta.commit_time.and_then(|t| std::time::SystemTime::try_from(t).ok());
            if let Some(lagged) = committed.and_then(|c| arrived.duration_since(c).ok()) {
                lag.record(micros(lagged)).context("record")?;
            }
        }
        anyhow::Ok(())
    }
    .await;
    beat.abort();
    outcome?;
    measure.elapsed = started.elapsed();
    measure.lag_us = percentiles(&lag);
    Ok(measure)
}

/// The namespaces, `--concurrency` at a time.
async fn create_all(args: &NamespacesArgs, client: &Client) -> anyhow::Result<NamespacesResult> {
    let next = Arc::new(AtomicU64::new(0));
    let retries = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency.min(args.count.max(1)) {
        let (next, retries, mut client, args) = (next.clone(), retries.clone(), client.clone(), args.clone());
        workers.spawn(async move {
            let mut latencies = histogram()?;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= args.count {
                    return anyhow::Ok(latencies);
                }
                let name = name(&args, i);
                let spec = spec(&args);
                // ABORTED is a lost race with a concurrent creation in the
                // same tenant (a control plane without group commit):
                // tried again.
                let mut attempt = 0u32;
                let started = Instant::now();
                loop {
                    let message = CreateNamespaceRequest { name: name.clone(), spec: Some(spec.clone()) };
                    match client.create_namespace(request(message, args.token.as_deref())?).await {
                        Ok(_) => break,
                        Err(s) if s.code() == tonic::Code::AlreadyExists => break,
                        Err(s) if s.code() == tonic::Code::Aborted && attempt < 20 => {
                            attempt += 1;
                            retries.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(u64::from(attempt) * 5)).await;
                        }
                        Err(s) => bail!("creating {name}: {} {}", s.code(), s.message()),
                    }
                }
                latencies.record(micros(started.elapsed())).context("record")?;
            }
        });
    }
    let mut latencies = histogram()?;
    while let Some(done) = workers.join_next().await {
        latencies.add(done.context("a worker panicked")??).context("merge")?;
    }
    let elapsed = start.elapsed();
    Ok(NamespacesResult {
        created: args.count,
        elapsed,
        rate: args.count as f64 / elapsed.as_secs_f64().max(1e-9),
        create_us: percentiles(&latencies),
        retries: retries.load(Ordering::Relaxed),
        ..NamespacesResult::default()
    })
}

/// Receives a full snapshot, as a gateway starting up does.
async fn snapshot(client: &Client, token: Option<&str>) -> anyhow::Result<SnapshotMeasure> {
    let start = Instant::now();
    let mut req = request(WatchRequest { from_revision: 0 }, token)?;
    // The stream outlives the unary deadline.
    req.set_timeout(Duration::from_secs(3600));
    let mut stream = client.clone().watch(req).await.context("watch")?.into_inner();
    let mut measure = SnapshotMeasure::default();
    while let Some(message) = stream.message().await.context("snapshot")? {
        let size = message.encoded_len() as u64;
        measure.messages += 1;
        measure.bytes += size;
        measure.largest = measure.largest.max(size);
        match message.event {
            Some(watch_response::Event::Snapshot(chunk)) => {
                measure.revision = chunk.revision;
                measure.namespaces += chunk.namespaces.len() as u64;
                if chunk.last {
                    measure.elapsed = start.elapsed();
                    return Ok(measure);
                }
            }
            other => bail!("a watch from revision 0 must start with a snapshot, got {other:?}"),
        }
    }
    bail!("the watch ended inside the snapshot")
}

/// Creates `--watch-probes` namespaces one at a time; returns the latency
/// from each create's start, and from its acknowledgement, until its
/// delta reached a watcher (µs: p50, p99, max).
async fn watch_probes(args: &NamespacesArgs, client: &Client) -> anyhow::Result<([u64; 3], [u64; 3])> {
    let token = args.token.as_deref();
    let tenant = format!("{}-probe", args.tenant_prefix);
    create_tenant(client, tenant.clone(), None, token).await?;
    let run = format!("{:x}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis());
    // The watch starts after a first, unmeasured probe, at its revision:
    // from revision 0 it would begin with a snapshot, which `--snapshot`
    // measures and which is not what is measured here.
    let first = CreateNamespaceRequest { name: format!("{tenant}/probe-{run}-first"), spec: Some(spec(args)) };
    let revision = client.clone().create_namespace(request(first, token)?).await?.into_inner().revision;
    let mut req = request(WatchRequest { from_revision: revision }, token)?;
    req.set_timeout(Duration::from_secs(3600));
    let mut stream = client.clone().watch(req).await.context("watch")?.into_inner();
    let (mut from_start, mut from_ack) = (histogram()?, histogram()?);
    for i in 0..args.watch_probes {
        let name = format!("{tenant}/probe-{run}-{i}");
        let message = CreateNamespaceRequest { name: name.clone(), spec: Some(spec(args)) };
        let (mut c, token) = (client.clone(), args.token.clone());
        let started = Instant::now();
        let create = tokio::spawn(async move {
            let outcome = c.create_namespace(request(message, token.as_deref())?).await;
            anyhow::Ok((outcome, Instant::now()))
        });
        // The delta that holds the probe (others may come first: the
        // shard's status reports, for one).
        let arrived = loop {
            let message = tokio::time::timeout(Duration::from_secs(60), stream.message())
                .await
                .context("no delta within 60 s")??
                .context("the watch ended")?;
            if let Some(watch_response::Event::Delta(delta)) = message.event {
                let holds = delta
                    .changes
                    .iter()
                    .any(|c| matches!(&c.change, Some(change::Change::Namespace(ns)) if ns.name == name));
                if holds {
                    break Instant::now();
                }
            }
        };
        let (outcome, acknowledged) = create.await.context("the create task panicked")??;
        outcome.map_err(|s| anyhow::anyhow!("creating {name}: {} {}", s.code(), s.message()))?;
        from_start.record(micros(arrived - started)).context("record")?;
        from_ack.record(micros(arrived.saturating_duration_since(acknowledged))).context("record")?;
    }
    Ok((percentiles(&from_start), percentiles(&from_ack)))
}
