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
use prism_proto::control::control_plane_service_client::ControlPlaneServiceClient;
use prism_proto::control::{
    Abstraction, Backend, CreateNamespaceRequest, CreateTenantRequest, NamespaceSpec, QuotaSet, WatchRequest, change,
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
    /// Abstraction of every namespace (embedded backend).
    #[arg(long, value_enum, default_value_t = Kind::KeyValue)]
    pub abstraction: Kind,
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
    Ok(result)
}

fn spec(kind: Kind) -> NamespaceSpec {
    let abstraction = match kind {
        Kind::KeyValue => Abstraction::KeyValue,
        Kind::TimeSeries => Abstraction::TimeSeries,
    };
    NamespaceSpec { abstraction: abstraction as i32, backend: Backend::Embedded as i32, ..Default::default() }
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
                let name = format!("{}-{}/{}-{i}", args.tenant_prefix, i % args.tenants, args.prefix);
                let spec = spec(args.abstraction);
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
    let first =
        CreateNamespaceRequest { name: format!("{tenant}/probe-{run}-first"), spec: Some(spec(args.abstraction)) };
    let revision = client.clone().create_namespace(request(first, token)?).await?.into_inner().revision;
    let mut req = request(WatchRequest { from_revision: revision }, token)?;
    req.set_timeout(Duration::from_secs(3600));
    let mut stream = client.clone().watch(req).await.context("watch")?.into_inner();
    let (mut from_start, mut from_ack) = (histogram()?, histogram()?);
    for i in 0..args.watch_probes {
        let name = format!("{tenant}/probe-{run}-{i}");
        let message = CreateNamespaceRequest { name: name.clone(), spec: Some(spec(args.abstraction)) };
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
