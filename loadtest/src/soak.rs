//! `prism-loadtest soak`: hours-style load in minutes. It measures what the
//! gateway can do (a closed loop at `--capacity-concurrency`), then holds
//! it at `--load` (80 %) of that in an open loop for `--duration` (10
//! minutes), on a KeyValue and a TimeSeries namespace at once, checking
//! every response against what was written; every `--sample-every` (10 s)
//! it records the gateway process's resident memory and open descriptors
//! (its `/metrics`, or `/proc/PID` on this machine) and the window's
//! latency. It passes with no error at all and resident memory within
//! `--memory-tolerance` (±10 %) of its value at the end of `--warmup`.
//!
//! What "checked" means here is stronger than the single-scenario runs:
//! every write carries a stamp (microseconds, strictly increasing across
//! the run) as its idempotency token's generation time — so the newest
//! stamp wins whatever order writes land in — and in its value; a read
//! must return the stamp of the newest write acknowledged before the read
//! was sent, or a newer one. A TimeSeries read asks for the newest
//! acknowledged event of its series by its exact time and id, and must
//! find it with its value.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use clap::Args;
use hdrhistogram::Histogram;
use prism_proto::kv;
use prism_proto::timeseries as ts;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::report::{self, Latency};
use crate::runner::{MAX_LATENCY_NS, Recorder};
use crate::scenario::{Clients, ErrorLabel, Scenario, WRONG, client_label, record_id, status_label, value_for};
use crate::target::Target;

fn parse_target(s: &str) -> anyhow::Result<Target> {
    s.parse()
}

#[derive(Debug, Clone, Args)]
pub struct SoakArgs {
    /// A gateway endpoint (`host:port`), or `control-plane:ADDR` to route
    /// every call through `prism-client`.
    #[arg(long, value_parser = parse_target)]
    pub target: Target,
    /// KeyValue namespace (`tenant/name`) the soak reads and writes.
    #[arg(long, default_value = "loadtest/kv")]
    pub kv_namespace: String,
    /// TimeSeries namespace the soak writes and reads events of.
    #[arg(long, default_value = "loadtest/ts")]
    pub ts_namespace: String,
    /// Bearer token presented on every call.
    #[arg(long, env = "PRISM_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// How long the soak holds the load (after measuring capacity).
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// How long the closed loop that measures capacity runs first.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub capacity_duration: Duration,
    /// Requests in flight while measuring capacity.
    #[arg(long, default_value_t = 64)]
    pub capacity_concurrency: usize,
    /// Fraction of the measured capacity the soak sends (open loop).
    #[arg(long, default_value_t = 0.8)]
    pub load: f64,
    /// Open loop: upper bound on requests in flight.
    #[arg(long, default_value_t = 512)]
    pub concurrency: usize,
    /// HTTP/2 connections per abstraction the requests are spread over.
    #[arg(long, default_value_t = 2)]
    pub connections: usize,
    /// Distinct records, and distinct series.
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    /// Bytes per value (at least 64: a value names its record and stamp).
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    /// Fraction of operations on the KeyValue namespace (the rest are on
    /// the TimeSeries one).
    #[arg(long, default_value_t = 0.5)]
    pub kv_fraction: f64,
    /// Fraction of reads (gets, event reads) among each abstraction's
    /// operations; the rest are writes.
    #[arg(long, default_value_t = 0.8)]
    pub read_fraction: f64,
    /// How often memory, descriptors and the window's latency are sampled.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub sample_every: Duration,
    /// Time into the soak after which resident memory must stay within
    /// `--memory-tolerance` of the first sample taken then.
    #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Largest deviation of resident memory after warm-up, as a fraction.
    #[arg(long, default_value_t = 0.10)]
    pub memory_tolerance: f64,
    /// The gateway's metrics listener (`http://host:port/metrics` or
    /// `host:port`): its `process_resident_memory_bytes` and
    /// `process_open_fds` are sampled.
    #[arg(long)]
    pub metrics: Option<String>,
    /// Or the gateway process's id on this machine (`/proc/PID`).
    #[arg(long)]
    pub pid: Option<u32>,
    /// A request that takes longer counts as a `ClientTimeout` error.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
    /// Directory for `<label>.json` and `<label>.svg`.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// File name stem of the results.
    #[arg(long, default_value = "soak")]
    pub label: String,
    /// No line per sample on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// Seed of the key and operation draws.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// Smallest `--value-size`: `lt-<key>@<16-digit stamp>` and some filler.
const MIN_VALUE_SIZE: usize = 64;

impl SoakArgs {
    /// Says which argument is wrong, if one is.
    pub fn validate(&self) -> anyhow::Result<()> {
        use anyhow::ensure;
        ensure!(self.target.serves_time_series(), "a pg: target cannot soak: it serves KeyValue only");
        ensure!(self.metrics.is_some() || self.pid.is_some(), "say whose memory to sample: --metrics URL or --pid PID");
        ensure!(self.metrics.is_none() || self.pid.is_none(), "--metrics and --pid cannot both be given");
        ensure!(self.load > 0.0 && self.load <= 1.0, "--load must be within (0, 1] (got {})", self.load);
        ensure!(self.capacity_concurrency > 0, "--capacity-concurrency must be at least 1");
        ensure!(self.concurrency > 0, "--concurrency must be at least 1");
        ensure!(self.connections > 0, "--connections must be at least 1");
        ensure!(
            self.keys > 0 && self.keys <= crate::args::MAX_KEYS,
            "--keys must be within 1..={}",
            crate::args::MAX_KEYS
        );
        ensure!(self.value_size >= MIN_VALUE_SIZE, "--value-size must be at least {MIN_VALUE_SIZE}");
        ensure!((0.0..=1.0).contains(&self.kv_fraction), "--kv-fraction must be between 0 and 1");
        ensure!((0.0..=1.0).contains(&self.read_fraction), "--read-fraction must be between 0 and 1");
        ensure!(!self.capacity_duration.is_zero(), "--capacity-duration must be longer than 0");
        ensure!(!self.sample_every.is_zero(), "--sample-every must be longer than 0");
        ensure!(
            self.duration >= self.warmup + self.sample_every,
            "--duration must be at least --warmup plus --sample-every (a sample after warm-up to judge)"
        );
        ensure!(
            self.memory_tolerance > 0.0 && self.memory_tolerance.is_finite(),
            "--memory-tolerance must be a positive fraction"
        );
        ensure!(!self.request_timeout.is_zero(), "--request-timeout must be longer than 0");
        Ok(())
    }
}

/// One sample: the window since the previous one, and the gateway process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds into the soak.
    pub t_s: f64,
    pub ok: u64,
    pub errors: u64,
    pub ok_per_s: f64,
    /// Of the window's correct responses; 0 in the first sample.
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    /// `None` when the gateway's memory could not be read then.
    pub resident_bytes: Option<u64>,
    pub open_fds: Option<u64>,
}

/// What the capacity phase measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Capacity {
    pub concurrency: usize,
    pub duration_s: f64,
    pub ok: u64,
    pub errors: u64,
    pub errors_by_code: BTreeMap<String, u64>,
    pub ok_per_s: f64,
    pub latency: Latency,
}

/// The pass criteria, computed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Verdict {
    pub pass: bool,
    /// Errors of the capacity phase and of the soak.
    pub errors: u64,
    /// Resident memory of the first sample at or after warm-up.
    pub memory_reference_bytes: Option<u64>,
    pub memory_min_bytes: Option<u64>,
    pub memory_max_bytes: Option<u64>,
    /// Largest |sample − reference| / reference after warm-up.
    pub memory_max_deviation: Option<f64>,
    pub memory_tolerance: f64,
    /// Why it failed (empty when it passed).
    pub failures: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SoakResult {
    pub target: String,
    pub kv_namespace: String,
    pub ts_namespace: String,
    pub capacity: Capacity,
    pub load: f64,
    /// Requests per second of the soak: `load` × the capacity.
    pub rate: u64,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub sample_every_s: f64,
    pub keys: u64,
    pub value_size: usize,
    pub kv_fraction: f64,
    pub read_fraction: f64,
    pub requests: u64,
    pub ok: u64,
    pub errors: u64,
    pub errors_by_code: BTreeMap<String, u64>,
    pub ok_per_s: f64,
    /// Of every correct response of the soak.
    pub latency: Latency,
    pub samples: Vec<Sample>,
    pub verdict: Verdict,
}

impl SoakResult {
    pub fn summary(&self) -> String {
        let c = &self.capacity;
        let v = &self.verdict;
        let mib = |b: Option<u64>| b.map_or("?".to_owned(), |b| format!("{:.1} MiB", b as f64 / 1048576.0));
        let after: Vec<&Sample> = self.samples.iter().filter(|s| s.t_s >= self.warmup_s).collect();
        let fds = |s: Option<&&Sample>| s.and_then(|s| s.open_fds).map_or("?".to_owned(), |n| n.to_string());
        let max_fds = self.samples.iter().filter_map(|s| s.open_fds).max();
        let worst_p99 = self.samples.iter().map(|s| s.p99_us).fold(0.0, f64::max);
        let mut s = format!(
            "soak against {} ({} + {}): capacity {:.0} ok/s (closed loop at {}, {:.1}s, {} errors), \
             then {:.0}s open loop at {}/s ({:.0} % of it)\n  \
             {} ok, {} errors, {:.0} ok/s; latency µs p50 {:.1} p99 {:.1} p99.9 {:.1} max {:.1}; worst 10 s window p99 {:.1}\n  \
             resident memory after warm-up ({:.0}s): {} → {} (min {}, max {}, largest deviation {}, limit ±{:.0} %)\n  \
             open fds after warm-up: {} → {} (max {})",
            self.target,
            self.kv_namespace,
            self.ts_namespace,
            c.ok_per_s,
            c.concurrency,
            c.duration_s,
            c.errors,
            self.duration_s,
            self.rate,
            self.load * 100.0,
            self.ok,
            self.errors,
            self.ok_per_s,
            self.latency.p50_us,
            self.latency.p99_us,
            self.latency.p999_us,
            self.latency.max_us,
            worst_p99,
            self.warmup_s,
            mib(v.memory_reference_bytes),
            mib(after.last().and_then(|s| s.resident_bytes)),
            mib(v.memory_min_bytes),
            mib(v.memory_max_bytes),
            v.memory_max_deviation.map_or("?".to_owned(), |d| format!("{:.1} %", d * 100.0)),
            v.memory_tolerance * 100.0,
            fds(after.first()),
            fds(after.last()),
            max_fds.map_or("?".to_owned(), |n| n.to_string()),
        );
        for (code, n) in c.errors_by_code.iter().chain(&self.errors_by_code) {
            s.push_str(&format!("\n  error {code}: {n}"));
        }
        if v.pass {
            s.push_str("\n  PASS: no errors, resident memory steady after warm-up");
        } else {
            s.push_str(&format!("\n  FAIL: {}", v.failures.join("; ")));
        }
        s
    }
}

/// Computes the pass criteria: no error, and every sample at or after
/// `warmup_s` holding resident memory within `tolerance` of the first
/// of them.
pub fn judge(samples: &[Sample], warmup_s: f64, tolerance: f64, errors: u64) -> Verdict {
    let mut failures = Vec::new();
    if errors > 0 {
        failures.push(format!("{errors} requests failed"));
    }
    let after: Vec<&Sample> = samples.iter().filter(|s| s.t_s >= warmup_s).collect();
    let memory: Vec<u64> = after.iter().filter_map(|s| s.resident_bytes).collect();
    let reference = memory.first().copied();
    if after.is_empty() {
        failures.push("no sample after warm-up".into());
    } else if memory.len() < after.len() {
        failures.push(format!(
            "resident memory unreadable in {} of {} samples",
            after.len() - memory.len(),
            after.len()
        ));
    }
    let deviation = reference
        .filter(|r| *r > 0)
        .map(|r| memory.iter().map(|m| (*m as f64 - r as f64).abs() / r as f64).fold(0.0, f64::max));
    if let (Some(d), Some(r)) = (deviation, reference)
        && d > tolerance
    {
        failures.push(format!(
            "resident memory moved {:.1} % from {:.1} MiB after warm-up (limit ±{:.0} %)",
            d * 100.0,
            r as f64 / 1048576.0,
            tolerance * 100.0
        ));
    }
    Verdict {
        pass: failures.is_empty(),
        errors,
        memory_reference_bytes: reference,
        memory_min_bytes: memory.iter().copied().min(),
        memory_max_bytes: memory.iter().copied().max(),
        memory_max_deviation: deviation,
        memory_tolerance: tolerance,
        failures,
    }
}

/// Strictly increasing microsecond stamps near the wall clock: a write's
/// idempotency generation time, event time and the number in its value.
#[derive(Debug, Default)]
struct Clock {
    last: AtomicU64,
}

impl Clock {
    fn next(&self) -> u64 {
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64);
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let next = now.max(last + 1);
            match self.last.compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return next,
                Err(seen) => last = seen,
            }
        }
    }
}

fn timestamp(micros: u64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: (micros / 1_000_000) as i64, nanos: ((micros % 1_000_000) * 1000) as i32 }
}

/// The value written with `stamp`: `<id>@<stamp>`, then filler.
fn stamped_value(id: &str, stamp: u64, size: usize) -> Vec<u8> {
    value_for(&format!("{id}@{stamp}"), size)
}

/// The stamp of a value [`stamped_value`] made for `id`, if it is one.
fn stamp_of(id: &str, value: &[u8], size: usize) -> Option<u64> {
    if value.len() != size {
        return None;
    }
    let rest = value.strip_prefix(id.as_bytes())?.strip_prefix(b"@")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || rest[digits..].iter().any(|b| *b != b'.') {
        return None;
    }
    std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
}

#[derive(Debug, Clone, Copy)]
enum Op {
    KvGet(u64),
    KvPut(u64),
    TsWrite(u64),
    TsRead(u64),
}

/// The clients of one connection of each abstraction.
#[derive(Clone)]
struct Pair {
    kv: Clients,
    ts: Clients,
}

/// What every request shares: the namespaces, the mix, and the newest
/// acknowledged write of every record and series.
#[derive(Debug)]
struct Workload {
    kv_namespace: String,
    ts_namespace: String,
    value_size: usize,
    kv_fraction: f64,
    read_fraction: f64,
    keys: u64,
    timeout: Duration,
    kv_written: Vec<AtomicU64>,
    ts_written: Vec<AtomicU64>,
    clock: Clock,
}

impl Workload {
    fn new(args: &SoakArgs) -> Self {
        let slots = || (0..args.keys).map(|_| AtomicU64::new(0)).collect();
        Self {
            kv_namespace: args.kv_namespace.clone(),
            ts_namespace: args.ts_namespace.clone(),
            value_size: args.value_size,
            kv_fraction: args.kv_fraction,
            read_fraction: args.read_fraction,
            keys: args.keys,
            timeout: args.request_timeout,
            kv_written: slots(),
            ts_written: slots(),
            clock: Clock::default(),
        }
    }

    fn next_op(&self, rng: &mut StdRng) -> Op {
        let key = rng.random_range(0..self.keys);
        let read = rng.random::<f64>() < self.read_fraction;
        match (rng.random::<f64>() < self.kv_fraction, read) {
            (true, true) => Op::KvGet(key),
            (true, false) => Op::KvPut(key),
            (false, true) => Op::TsRead(key),
            (false, false) => Op::TsWrite(key),
        }
    }

    async fn execute(&self, pair: &mut Pair, op: Op) -> Result<(), ErrorLabel> {
        let call = async {
            match op {
                Op::KvGet(key) => self.kv_get(&mut pair.kv, key).await,
                Op::KvPut(key) => self.kv_put(&mut pair.kv, key).await,
                Op::TsWrite(key) => self.ts_write(&mut pair.ts, key).await,
                Op::TsRead(key) => self.ts_read(&mut pair.ts, key).await,
            }
        };
        tokio::time::timeout(self.timeout, call).await.unwrap_or_else(|_| Err("ClientTimeout".to_owned()))
    }

    async fn kv_get(&self, clients: &mut Clients, key: u64) -> Result<(), ErrorLabel> {
        // Read before sending: any write acknowledged by now must show.
        let floor = self.kv_written[key as usize].load(Ordering::Acquire);
        let id = record_id(key);
        let request =
            kv::GetItemsRequest { namespace: self.kv_namespace.clone(), id: id.clone(), ..Default::default() };
        let items = match clients {
            Clients::Kv(c) => c.get_items(request).await.map_err(|s| status_label(&s))?.into_inner().items,
            Clients::RoutedKv(c) => c.get_items(request).await.map_err(|e| client_label(&e))?.items,
            _ => return Err(WRONG.into()),
        };
        match items.as_slice() {
            [item] if item.key.is_empty() => match stamp_of(&id, &item.value, self.value_size) {
                Some(stamp) if stamp >= floor => Ok(()),
                _ => Err(WRONG.into()),
            },
            _ => Err(WRONG.into()),
        }
    }

    async fn kv_put(&self, clients: &mut Clients, key: u64) -> Result<(), ErrorLabel> {
        let stamp = self.clock.next();
        let id = record_id(key);
        let request = kv::PutItemsRequest {
            namespace: self.kv_namespace.clone(),
            items: vec![kv::Item { key: Vec::new(), value: stamped_value(&id, stamp, self.value_size), ttl: None }],
            id,
            // The stamp as the generation time: last writer wins by it, so
            // the newest stamp stays whatever order writes land in.
            idempotency_token: Some(kv::IdempotencyToken {
                generation_time: Some(timestamp(stamp)),
                token: format!("soak-{stamp}"),
            }),
        };
        match clients {
            Clients::Kv(c) => drop(c.put_items(request).await.map_err(|s| status_label(&s))?),
            Clients::RoutedKv(c) => drop(c.put_items(request).await.map_err(|e| client_label(&e))?),
            _ => return Err(WRONG.into()),
        }
        self.kv_written[key as usize].fetch_max(stamp, Ordering::Release);
        Ok(())
    }

    async fn ts_write(&self, clients: &mut Clients, key: u64) -> Result<(), ErrorLabel> {
        let stamp = self.clock.next();
        let series = record_id(key);
        let event = ts::Event {
            items: vec![ts::EventItem { key: b"v".to_vec(), value: stamped_value(&series, stamp, self.value_size) }],
            time_series_id: series,
            event_time: Some(timestamp(stamp)),
            event_id: format!("e-{stamp}"),
            tags: Default::default(),
            schema_version: 0,
        };
        let request = ts::WriteEventRecordsRequest { namespace: self.ts_namespace.clone(), events: vec![event] };
        let response = match clients {
            Clients::Ts(c) => c.write_event_records_sync(request).await.map_err(|s| status_label(&s))?.into_inner(),
            Clients::RoutedTs(c) => c.write_event_records_sync(request).await.map_err(|e| client_label(&e))?,
            _ => return Err(WRONG.into()),
        };
        if response.accepted != 1 {
            return Err(WRONG.into());
        }
        self.ts_written[key as usize].fetch_max(stamp, Ordering::Release);
        Ok(())
    }

    async fn ts_read(&self, clients: &mut Clients, key: u64) -> Result<(), ErrorLabel> {
        let stamp = self.ts_written[key as usize].load(Ordering::Acquire);
        let series = record_id(key);
        // Exactly the newest acknowledged event's microsecond.
        let request = ts::ReadEventRecordsRequest {
            namespace: self.ts_namespace.clone(),
            time_series_id: series.clone(),
            start: Some(timestamp(stamp)),
            end: Some(timestamp(stamp + 1)),
            ..Default::default()
        };
        let response = match clients {
            Clients::Ts(c) => c.read_event_records(request).await.map_err(|s| status_label(&s))?.into_inner(),
            Clients::RoutedTs(c) => c.read_event_records(request).await.map_err(|e| client_label(&e))?,
            _ => return Err(WRONG.into()),
        };
        let (event_id, value) = (format!("e-{stamp}"), stamped_value(&series, stamp, self.value_size));
        let found = response.events.iter().any(|e| {
            e.time_series_id == series
                && e.event_id == event_id
                && matches!(e.items.as_slice(), [item] if item.key == b"v" && item.value == value)
        });
        if found { Ok(()) } else { Err(WRONG.into()) }
    }
}

/// One window's responses, taken and reset by each sample.
struct Window {
    latencies: Histogram<u64>,
    ok: u64,
    errors: u64,
}

impl Window {
    fn new() -> anyhow::Result<Self> {
        Ok(Self { latencies: Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3).context("histogram")?, ok: 0, errors: 0 })
    }
}

/// Where the gateway's memory and descriptors are read.
#[derive(Debug, Clone)]
enum Probe {
    /// `host:port` and path of a Prometheus text endpoint.
    Metrics {
        addr: String,
        path: String,
    },
    Pid(u32),
}

impl Probe {
    fn of(args: &SoakArgs) -> anyhow::Result<Self> {
        if let Some(pid) = args.pid {
            return Ok(Self::Pid(pid));
        }
        let url = args.metrics.as_deref().context("--metrics or --pid")?;
        let rest = url.strip_prefix("http://").unwrap_or(url);
        anyhow::ensure!(!rest.contains("://"), "--metrics must be an http:// URL or host:port (got {url})");
        let (addr, path) = match rest.split_once('/') {
            Some((addr, path)) => (addr.to_owned(), format!("/{path}")),
            None => (rest.to_owned(), "/metrics".to_owned()),
        };
        anyhow::ensure!(!addr.is_empty(), "--metrics has no host:port (got {url})");
        Ok(Self::Metrics { addr, path })
    }

    /// Resident bytes and open descriptors, now.
    async fn read(&self) -> anyhow::Result<(u64, u64)> {
        match self {
            Self::Pid(pid) => {
                let status = tokio::fs::read_to_string(format!("/proc/{pid}/status"))
                    .await
                    .with_context(|| format!("read /proc/{pid}/status"))?;
                let kib = status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.split_whitespace().next())
                    .and_then(|v| v.parse::<u64>().ok())
                    .context("no VmRSS")?;
                let mut fds = 0;
                let mut dir = tokio::fs::read_dir(format!("/proc/{pid}/fd")).await.context("read /proc/PID/fd")?;
                while dir.next_entry().await?.is_some() {
                    fds += 1;
                }
                Ok((kib * 1024, fds))
            }
            Self::Metrics { addr, path } => {
                let text = tokio::time::timeout(Duration::from_secs(5), http_get(addr, path))
                    .await
                    .map_err(|_| anyhow::anyhow!("GET {path} on {addr} took over 5 s"))??;
                let value = |name: &str| {
                    text.lines()
                        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                        .and_then(|v| v.trim().parse::<f64>().ok())
                        .map(|v| v as u64)
                        .with_context(|| format!("{name} is not in {path} on {addr}"))
                };
                Ok((value("process_resident_memory_bytes")?, value("process_open_fds")?))
            }
        }
    }
}

/// The body of `GET path` (HTTP/1.0, so the server closes when done).
async fn http_get(addr: &str, path: &str) -> anyhow::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.with_context(|| format!("connect to {addr}"))?;
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").context("not an HTTP response")?;
    anyhow::ensure!(
        head.starts_with("HTTP/1.") && head.contains(" 200 "),
        "GET {path}: {}",
        head.lines().next().unwrap_or("")
    );
    Ok(body.to_owned())
}

async fn connect(args: &SoakArgs) -> anyhow::Result<Vec<Pair>> {
    let token = args.token.as_deref();
    let kv =
        Clients::connect_all(Scenario::KvGet, &args.target, token, &args.kv_namespace, args.connections, 1).await?;
    let ts =
        Clients::connect_all(Scenario::TsWrite, &args.target, token, &args.ts_namespace, args.connections, 1).await?;
    Ok(kv.into_iter().zip(ts).map(|(kv, ts)| Pair { kv, ts }).collect())
}

/// Writes every record and one event of every series, so every read has
/// something to check.
async fn preload(workload: &Arc<Workload>, pairs: &[Pair], parallel: usize) -> anyhow::Result<()> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for i in 0..parallel.clamp(1, 64) {
        let (workload, next, mut pair) = (workload.clone(), next.clone(), pairs[i % pairs.len()].clone());
        tasks.spawn(async move {
            loop {
                let key = next.fetch_add(1, Ordering::Relaxed);
                if key >= workload.keys {
                    return anyhow::Ok(());
                }
                for op in [Op::KvPut(key), Op::TsWrite(key)] {
                    workload
                        .execute(&mut pair, op)
                        .await
                        .map_err(|label| anyhow::anyhow!("preloading {op:?} failed: {label}"))?;
                }
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.context("preload task")??;
    }
    Ok(())
}

fn latency(h: &Histogram<u64>) -> Latency {
    let us = |ns: u64| ns as f64 / 1000.0;
    let q = |p: f64| us(h.value_at_quantile(p));
    Latency {
        min_us: us(h.min()),
        mean_us: h.mean() / 1000.0,
        p50_us: q(0.5),
        p90_us: q(0.9),
        p99_us: q(0.99),
        p999_us: q(0.999),
        p9999_us: q(0.9999),
        max_us: us(h.max()),
    }
}

/// The closed loop that measures capacity.
async fn measure_capacity(workload: &Arc<Workload>, pairs: &[Pair], args: &SoakArgs) -> anyhow::Result<Capacity> {
    let recorder = Arc::new(Recorder::new()?);
    let end = Instant::now() + args.capacity_duration;
    let mut workers = JoinSet::new();
    for w in 0..args.capacity_concurrency {
        let (workload, recorder) = (workload.clone(), recorder.clone());
        let mut pair = pairs[w % pairs.len()].clone();
        let mut rng = StdRng::seed_from_u64(args.seed.wrapping_mul(7_919).wrapping_add(w as u64));
        workers.spawn(async move {
            loop {
                let sent = Instant::now();
                if sent >= end {
                    break;
                }
                let op = workload.next_op(&mut rng);
                let result = workload.execute(&mut pair, op).await;
                recorder.record(sent.elapsed(), result);
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        done.context("capacity worker")?;
    }
    let ok = recorder.ok.load(Ordering::Relaxed);
    Ok(Capacity {
        concurrency: args.capacity_concurrency,
        duration_s: args.capacity_duration.as_secs_f64(),
        ok,
        errors: recorder.errors.load(Ordering::Relaxed),
        errors_by_code: recorder.errors_by_code(),
        ok_per_s: ok as f64 / args.capacity_duration.as_secs_f64(),
        latency: latency(&recorder.histogram()?),
    })
}

/// Takes a sample every `every` until `done`, the first at the start.
async fn sampler(
    probe: Probe,
    window: Arc<Mutex<Window>>,
    start: Instant,
    every: Duration,
    quiet: bool,
    mut done: watch::Receiver<bool>,
) -> anyhow::Result<Vec<Sample>> {
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval_at(start, every);
    let mut last = start;
    loop {
        let finished = tokio::select! {
            _ = tick.tick() => false,
            _ = done.changed() => true,
        };
        let now = Instant::now();
        let taken = {
            let mut w = window.lock().map_err(|_| anyhow::anyhow!("window lock poisoned"))?;
            std::mem::replace(&mut *w, Window::new()?)
        };
        let memory = probe.read().await;
        if let Err(e) = &memory {
            tracing::warn!(error = %format!("{e:#}"), "cannot read the gateway's memory");
        }
        let secs = (now - last).as_secs_f64();
        let h = &taken.latencies;
        let quantile = |q: f64| if h.is_empty() { 0.0 } else { h.value_at_quantile(q) as f64 / 1000.0 };
        let sample = Sample {
            t_s: (now - start).as_secs_f64(),
            ok: taken.ok,
            errors: taken.errors,
            ok_per_s: if secs > 0.0 { taken.ok as f64 / secs } else { 0.0 },
            p50_us: quantile(0.5),
            p99_us: quantile(0.99),
            max_us: if h.is_empty() { 0.0 } else { h.max() as f64 / 1000.0 },
            resident_bytes: memory.as_ref().ok().map(|m| m.0),
            open_fds: memory.as_ref().ok().map(|m| m.1),
        };
        if !quiet {
            eprintln!(
                "[{:>6.0}s] {:>8.0} ok/s  p50 {:>8.1} µs  p99 {:>9.1} µs  errors {}  rss {}  fds {}",
                sample.t_s,
                sample.ok_per_s,
                sample.p50_us,
                sample.p99_us,
                sample.errors,
                sample.resident_bytes.map_or("?".into(), |b| format!("{:.1} MiB", b as f64 / 1048576.0)),
                sample.open_fds.map_or("?".into(), |n| n.to_string()),
            );
        }
        samples.push(sample);
        last = now;
        if finished {
            return Ok(samples);
        }
    }
}

/// Measures capacity, soaks at `--load` of it, samples along the way, and
/// judges the result (without failing on the verdict: see [`run`]).
pub async fn soak(args: &SoakArgs) -> anyhow::Result<SoakResult> {
    args.validate()?;
    let probe = Probe::of(args)?;
    probe.read().await.context("cannot read the gateway's memory before starting")?;
    let workload = Arc::new(Workload::new(args));
    let pairs = connect(args).await?;
    preload(&workload, &pairs, args.capacity_concurrency).await?;
    let capacity = measure_capacity(&workload, &pairs, args).await?;
    let rate = (capacity.ok_per_s * args.load).floor().max(1.0) as u64;
    if !args.quiet {
        eprintln!(
            "capacity {:.0} ok/s (closed loop at {}); soaking at {rate}/s for {:?}",
            capacity.ok_per_s, args.capacity_concurrency, args.duration
        );
    }

    let total = Arc::new(Recorder::new()?);
    let window = Arc::new(Mutex::new(Window::new()?));
    let start = Instant::now();
    let end = start + args.duration;
    let (done, done_rx) = watch::channel(false);
    let sampling = tokio::spawn(sampler(probe, window.clone(), start, args.sample_every, args.quiet, done_rx));
    let in_flight = Arc::new(Semaphore::new(args.concurrency));
    let mut rng = StdRng::seed_from_u64(args.seed);
    let mut requests = JoinSet::new();
    let (scheduler, mut sends) = crate::runner::schedule(start, end, rate)?;
    while let Some((i, intended)) = sends.recv().await {
        // A late request still counts from its intended send time.
        let permit = in_flight.clone().acquire_owned().await.context("in-flight limit")?;
        let op = workload.next_op(&mut rng);
        let (workload, total, window) = (workload.clone(), total.clone(), window.clone());
        let mut pair = pairs[(i % pairs.len() as u64) as usize].clone();
        requests.spawn(async move {
            let result = workload.execute(&mut pair, op).await;
            let latency = intended.elapsed();
            if let Ok(mut w) = window.lock() {
                match &result {
                    Ok(()) => {
                        w.ok += 1;
                        w.latencies.saturating_record(u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX).max(1));
                    }
                    Err(_) => w.errors += 1,
                }
            }
            total.record(latency, result);
            drop(permit);
        });
        while let Some(finished) = requests.try_join_next() {
            finished.context("request task")?;
        }
    }
    scheduler.join().map_err(|_| anyhow::anyhow!("the schedule thread panicked"))?;
    while let Some(finished) = requests.join_next().await {
        finished.context("request task")?;
    }
    let _ = done.send(true);
    let samples = sampling.await.context("sampler")??;

    let ok = total.ok.load(Ordering::Relaxed);
    let errors = total.errors.load(Ordering::Relaxed);
    let verdict = judge(&samples, args.warmup.as_secs_f64(), args.memory_tolerance, errors + capacity.errors);
    Ok(SoakResult {
        target: args.target.to_string(),
        kv_namespace: args.kv_namespace.clone(),
        ts_namespace: args.ts_namespace.clone(),
        load: args.load,
        rate,
        duration_s: args.duration.as_secs_f64(),
        warmup_s: args.warmup.as_secs_f64(),
        sample_every_s: args.sample_every.as_secs_f64(),
        keys: args.keys,
        value_size: args.value_size,
        kv_fraction: args.kv_fraction,
        read_fraction: args.read_fraction,
        requests: ok + errors,
        ok,
        errors,
        errors_by_code: total.errors_by_code(),
        ok_per_s: ok as f64 / args.duration.as_secs_f64(),
        latency: latency(&total.histogram()?),
        capacity,
        samples,
        verdict,
    })
}

/// `prism-loadtest soak`: the soak, its summary on stdout, the files, then
/// the verdict (after the files, so a failed soak can be inspected).
pub async fn run(args: &SoakArgs) -> anyhow::Result<SoakResult> {
    let result = soak(args).await?;
    println!("{}", result.summary());
    if let Some(dir) = &args.out {
        let (json, svg) = report::write_soak(dir, &args.label, &result)?;
        println!("  results: {} {}", json.display(), svg.display());
    }
    anyhow::ensure!(result.verdict.pass, "the soak failed: {}", result.verdict.failures.join("; "));
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t_s: f64, mib: u64) -> Sample {
        Sample {
            t_s,
            ok: 1,
            errors: 0,
            ok_per_s: 1.0,
            p50_us: 1.0,
            p99_us: 2.0,
            max_us: 3.0,
            resident_bytes: Some(mib << 20),
            open_fds: Some(10),
        }
    }

    #[test]
    fn memory_is_judged_after_warm_up_against_its_first_sample() {
        // Growth during warm-up does not count; within ±10 % after it passes.
        let steady = [sample(0.0, 50), sample(10.0, 90), sample(20.0, 100), sample(30.0, 109), sample(40.0, 92)];
        let v = judge(&steady, 20.0, 0.10, 0);
        assert!(v.pass, "{:?}", v.failures);
        assert_eq!(v.memory_reference_bytes, Some(100 << 20));
        assert_eq!((v.memory_min_bytes, v.memory_max_bytes), (Some(92 << 20), Some(109 << 20)));
        assert!((v.memory_max_deviation.unwrap_or(0.0) - 0.09).abs() < 1e-9);

        let leaking = [sample(0.0, 50), sample(20.0, 100), sample(30.0, 105), sample(40.0, 111)];
        let v = judge(&leaking, 20.0, 0.10, 0);
        assert!(!v.pass);
        assert!(v.failures[0].contains("resident memory moved 11.0 %"), "{:?}", v.failures);

        let v = judge(&steady, 20.0, 0.10, 3);
        assert!(!v.pass && v.failures[0] == "3 requests failed", "{:?}", v.failures);
        let v = judge(&steady, 60.0, 0.10, 0);
        assert!(!v.pass && v.failures[0] == "no sample after warm-up", "{:?}", v.failures);
        let mut unreadable = steady.to_vec();
        unreadable[3].resident_bytes = None;
        assert!(!judge(&unreadable, 20.0, 0.10, 0).pass);
    }

    #[test]
    fn stamps_increase_and_values_carry_them() {
        let clock = Clock::default();
        let (a, b) = (clock.next(), clock.next());
        assert!(b > a && a > 1_600_000_000_000_000, "{a} {b}");
        let v = stamped_value("lt-7", a, 64);
        assert_eq!(v.len(), 64);
        assert_eq!(stamp_of("lt-7", &v, 64), Some(a));
        assert_eq!(stamp_of("lt-70", &v, 64), None, "another record's value");
        assert_eq!(stamp_of("lt-7", &v[..63], 64), None, "wrong size");
        let mut garbled = v.clone();
        garbled[63] = b'x';
        assert_eq!(stamp_of("lt-7", &garbled, 64), None);
        let t = timestamp(1_700_000_000_123_456);
        assert_eq!((t.seconds, t.nanos), (1_700_000_000, 123_456_000));
    }
}
