//! The load loops. Closed loop: `--concurrency` workers, each sending its
//! next request when the previous answered. Open loop: requests scheduled at
//! fixed intervals from the start time whatever the latency, each timed from
//! its *intended* send time, so a stall shows up as latency of every request
//! it delayed instead of silently lowering the rate (no coordinated
//! omission).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use hdrhistogram::Histogram;
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::args::RunArgs;
use crate::report::{self, RunResult};
use crate::scenario::{Clients, ErrorLabel, Workload};

/// Latencies are recorded in nanoseconds, up to an hour, 3 significant digits.
pub const MAX_LATENCY_NS: u64 = 3_600_000_000_000;

/// What one phase (warm-up or measurement) saw: the latency of every
/// correct response, and the failures by label.
#[derive(Debug)]
pub struct Recorder {
    pub latencies: Mutex<Histogram<u64>>,
    pub ok: AtomicU64,
    pub errors: AtomicU64,
    pub errors_by_code: Mutex<BTreeMap<String, u64>>,
}

impl Recorder {
    pub fn new() -> anyhow::Result<Self> {
        Ok(Self {
            latencies: Mutex::new(Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3).context("histogram")?),
            ok: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            errors_by_code: Mutex::new(BTreeMap::new()),
        })
    }

    pub fn record(&self, latency: Duration, result: Result<(), ErrorLabel>) {
        match result {
            Ok(()) => {
                let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX).max(1);
                if let Ok(mut h) = self.latencies.lock() {
                    h.saturating_record(ns);
                }
                self.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(label) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut m) = self.errors_by_code.lock() {
                    *m.entry(label).or_default() += 1;
                }
            }
        }
    }

    pub fn histogram(&self) -> anyhow::Result<Histogram<u64>> {
        self.latencies.lock().map(|h| h.clone()).map_err(|_| anyhow::anyhow!("histogram lock poisoned"))
    }

    pub fn errors_by_code(&self) -> BTreeMap<String, u64> {
        self.errors_by_code.lock().map(|m| m.clone()).unwrap_or_default()
    }
}

/// The two recorders and the phase boundaries.
struct Phases {
    warmup: Recorder,
    measured: Recorder,
    measure_from: Instant,
    end: Instant,
}

impl Phases {
    /// Files a response under the phase its request was (meant to be) sent in.
    fn record(&self, sent: Instant, result: Result<(), ErrorLabel>) {
        let recorder = if sent >= self.measure_from { &self.measured } else { &self.warmup };
        recorder.record(sent.elapsed(), result);
    }
}

/// Connects, preloads what the scenario reads, runs the warm-up and the
/// measurement, and returns the results (without judging the error rate:
/// see [`report::check_error_rate`]).
pub async fn run_load(args: &RunArgs) -> anyhow::Result<RunResult> {
    args.validate()?;
    let workload = Arc::new(Workload::new(args));
    let clients = Clients::connect_all(
        args.scenario,
        &args.target,
        args.token.as_deref(),
        &args.namespace,
        args.connections,
        args.pool_size,
    )
    .await?;
    if workload.needs_preload() && !args.no_preload {
        preload(&workload, &clients, args.keys, args.concurrency).await?;
    }

    let start = Instant::now();
    let measure_from = start + args.warmup;
    let phases = Arc::new(Phases {
        warmup: Recorder::new()?,
        measured: Recorder::new()?,
        measure_from,
        end: measure_from + args.duration,
    });
    let (done, done_rx) = watch::channel(false);
    let progress = (!args.quiet).then(|| tokio::spawn(progress_line(phases.clone(), start, done_rx)));
    match args.rate {
        Some(rate) => open_loop(&workload, &clients, &phases, start, rate, args).await?,
        None => closed_loop(&workload, &clients, &phases, args).await?,
    }
    let _ = done.send(true);
    if let Some(progress) = progress {
        let _ = progress.await;
    }
    report::build(args, &phases.warmup, &phases.measured)
}

async fn preload(workload: &Arc<Workload>, clients: &[Clients], keys: u64, parallel: usize) -> anyhow::Result<()> {
    let parallel = (parallel as u64).clamp(1, keys);
    let per = keys.div_ceil(parallel);
    let mut tasks = JoinSet::new();
    for (i, first) in (0..keys).step_by(per as usize).enumerate() {
        let workload = workload.clone();
        let mut c = clients[i % clients.len()].clone();
        tasks.spawn(async move { workload.preload(&mut c, first..(first + per).min(keys)).await });
    }
    while let Some(done) = tasks.join_next().await {
        done.context("preload task")??;
    }
    Ok(())
}

async fn closed_loop(
    workload: &Arc<Workload>,
    clients: &[Clients],
    phases: &Arc<Phases>,
    args: &RunArgs,
) -> anyhow::Result<()> {
    let mut workers = JoinSet::new();
    for w in 0..args.concurrency {
        let (workload, phases) = (workload.clone(), phases.clone());
        let mut c = clients[w % clients.len()].clone();
        let mut rng = StdRng::seed_from_u64(args.seed.wrapping_mul(1_000_003).wrapping_add(w as u64));
        workers.spawn(async move {
            loop {
                let sent = Instant::now();
                if sent >= phases.end {
                    break;
                }
                let op = workload.next_op(&mut rng);
                let result = workload.execute(&mut c, op).await;
                phases.record(sent, result);
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        done.context("worker")?;
    }
    Ok(())
}

async fn open_loop(
    workload: &Arc<Workload>,
    clients: &[Clients],
    phases: &Arc<Phases>,
    start: Instant,
    rate: u64,
    args: &RunArgs,
) -> anyhow::Result<()> {
    let in_flight = Arc::new(Semaphore::new(args.concurrency));
    let mut rng = StdRng::seed_from_u64(args.seed);
    let mut requests = JoinSet::new();
    let (scheduler, mut sends) = schedule(start, phases.end, rate)?;
    while let Some((i, intended)) = sends.recv().await {
        // Waiting here for a slot delays the send, not the clock: the
        // request is still timed from `intended`.
        let permit = in_flight.clone().acquire_owned().await.context("in-flight limit")?;
        let op = workload.next_op(&mut rng);
        let (workload, phases) = (workload.clone(), phases.clone());
        let mut c = clients[(i % clients.len() as u64) as usize].clone();
        requests.spawn(async move {
            let result = workload.execute(&mut c, op).await;
            phases.record(intended, result);
            drop(permit);
        });
        while let Some(done) = requests.try_join_next() {
            done.context("request task")?;
        }
    }
    scheduler.join().map_err(|_| anyhow::anyhow!("the schedule thread panicked"))?;
    while let Some(done) = requests.join_next().await {
        done.context("request task")?;
    }
    Ok(())
}

/// What [`schedule`] hands back: the thread keeping it, and what is due.
pub type Schedule = (std::thread::JoinHandle<()>, tokio::sync::mpsc::UnboundedReceiver<(u64, Instant)>);

/// The schedule of an open loop: `(i, intended send time)` of request `i`
/// at `rate` per second from `start` until `end`, each sent when due.
///
/// It is kept by a thread of its own: tokio's timers tick in
/// milliseconds, so above ~1000/s a timer per request would send in
/// bursts once a millisecond and charge every request up to 1 ms of the
/// generator's own lateness. `std::thread::sleep` wakes within tens of
/// microseconds; what is due is handed to the runtime at once. The thread
/// ends at `end` or when the receiver is dropped.
pub fn schedule(start: Instant, end: Instant, rate: u64) -> anyhow::Result<Schedule> {
    let (due, sends) = tokio::sync::mpsc::unbounded_channel::<(u64, Instant)>();
    let (start_std, end_std) = (start.into_std(), end.into_std());
    let rate = rate.max(1);
    let scheduler = std::thread::Builder::new()
        .name("loadtest-schedule".into())
        .spawn(move || {
            for i in 0u64.. {
                // From the start time, not from the previous send: no drift.
                let offset = Duration::from_nanos(
                    u64::try_from(u128::from(i) * 1_000_000_000 / u128::from(rate)).unwrap_or(u64::MAX),
                );
                let intended = start_std + offset;
                if intended >= end_std {
                    break;
                }
                let now = std::time::Instant::now();
                if intended > now {
                    std::thread::sleep(intended - now);
                }
                if due.send((i, Instant::from_std(intended))).is_err() {
                    break;
                }
            }
        })
        .context("start the schedule thread")?;
    Ok((scheduler, sends))
}

/// Rewrites one line on stderr every second until `done`.
async fn progress_line(phases: Arc<Phases>, start: Instant, mut done: watch::Receiver<bool>) {
    use std::io::Write;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let total = phases.end - start;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = done.changed() => break,
        }
        let now = Instant::now();
        let (phase, recorder, since) = if now < phases.measure_from {
            ("warm-up", &phases.warmup, start)
        } else {
            ("measuring", &phases.measured, phases.measure_from)
        };
        let ok = recorder.ok.load(Ordering::Relaxed);
        let errors = recorder.errors.load(Ordering::Relaxed);
        let secs = (now - since).as_secs_f64().max(1e-9);
        let p99 = recorder.histogram().map(|h| h.value_at_quantile(0.99) as f64 / 1000.0).unwrap_or(0.0);
        eprint!(
            "\r[{:>6.1}s/{:.1}s] {phase:<9} ok={ok} errors={errors} {:.0} req/s p99={p99:.0}µs   ",
            (now - start).as_secs_f64(),
            total.as_secs_f64(),
            (ok + errors) as f64 / secs,
        );
        let _ = std::io::stderr().flush();
    }
    eprintln!();
}
