//! Command-line arguments, and the checks that turn a nonsensical request
//! (a rate of 0, no keys, an error budget above 1) into a clear error before
//! anything is sent.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::scenario::Scenario;
use crate::target::Target;

fn parse_target(s: &str) -> anyhow::Result<Target> {
    s.parse()
}

/// What `compare` measures the target against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Baseline {
    /// The bare echo server, started in process.
    Echo,
    Target(Target),
}

fn parse_baseline(s: &str) -> anyhow::Result<Baseline> {
    Ok(if s.trim() == "echo" { Baseline::Echo } else { Baseline::Target(s.parse()?) })
}

/// Largest key space the zipf sampler precomputes a CDF for (8 bytes a key).
pub const MAX_KEYS: u64 = 10_000_000;

#[derive(Debug, Parser)]
#[command(
    name = "prism-loadtest",
    version,
    about = "Open- and closed-loop load against a Prism gateway, with a bare gRPC echo baseline"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Runs one scenario against one endpoint.
    Run(RunArgs),
    /// Runs a scenario against the target and a baseline alternately, several
    /// rounds, and prints target/baseline ratios with their spread.
    Compare(CompareArgs),
    /// Serves the bare echo baseline (KeyValue GetItems/PutItems, no work).
    Echo(EchoArgs),
    /// Writes a pgbench script of the postgres plugin's read or write
    /// statement, and prints its `-D` variables.
    PgbenchScript(crate::pgbench::PgbenchArgs),
    /// Writes one gRPC request body for `h2load -d`, and prints its path.
    GrpcFrame(crate::frame::FrameArgs),
    /// Creates many (embedded) namespaces through the control plane, for
    /// measuring what each costs.
    Namespaces(crate::namespaces::NamespacesArgs),
    /// Measures capacity, then holds mixed KeyValue and TimeSeries load at
    /// 80 % of it (10 minutes by default), every response checked, sampling
    /// the gateway's memory, descriptors and latency; passes with no error
    /// and steady memory.
    Soak(crate::soak::SoakArgs),
    /// Runs bad input against a gateway (oversized and deeply nested
    /// messages, a stream flood, slowloris connections), one attack a
    /// phase, measuring another tenant's requests during each.
    Abuse(crate::abuse::AbuseArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Distribution {
    Uniform,
    Zipf,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Where the load goes: a gateway endpoint (`host:port` or
    /// `http://host:port`); `control-plane:ADDR` to route every call
    /// through the `prism-client` routing client (resolve, watch,
    /// redirects, retries); or `pg:DSN` for the PostgreSQL baseline (the
    /// postgres plugin's KeyValue SQL sent directly; a DSN of PgBouncer
    /// makes the PgBouncer baseline). kv-* scenarios only for `pg:`.
    #[arg(long, value_parser = parse_target)]
    pub target: Target,
    /// What to send: kv-get, kv-put, kv-mixed, ts-write, ts-read.
    #[arg(long, value_enum)]
    pub scenario: Scenario,
    /// Namespace (`tenant/name`) the scenario reads and writes.
    #[arg(long, default_value = "loadtest/kv")]
    pub namespace: String,
    /// Bearer token presented on every call.
    #[arg(long, env = "PRISM_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Open loop: requests per second, sent on a fixed schedule whatever the
    /// latency (latency is measured from the intended send time). Without it
    /// the run is a closed loop at `--concurrency`.
    #[arg(long)]
    pub rate: Option<u64>,
    /// Closed loop: requests in flight. Open loop: upper bound on requests in
    /// flight (a late request still counts from its intended send time).
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// HTTP/2 connections the requests are spread over (per gateway with
    /// `control-plane:`). Not used by `pg:`.
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// `pg:` targets: connections of the pool (as a postgres namespace's
    /// `pool_size`, default 16).
    #[arg(long, default_value_t = 16)]
    pub pool_size: usize,
    /// Measured time.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Load sent before measuring starts (checked, not measured).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Distinct keys (records, or series for ts-*).
    #[arg(long, default_value_t = 1000)]
    pub keys: u64,
    /// How keys are drawn.
    #[arg(long, value_enum, default_value_t = Distribution::Uniform)]
    pub distribution: Distribution,
    /// Zipf exponent (`--distribution zipf`).
    #[arg(long, default_value_t = 0.99)]
    pub zipf_exponent: f64,
    /// Bytes per value.
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    /// kv-mixed: fraction of gets (the rest are puts).
    #[arg(long, default_value_t = 0.9)]
    pub read_fraction: f64,
    /// A request that takes longer counts as a `ClientTimeout` error.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
    /// Fail (non-zero exit) when errors / requests exceeds this.
    #[arg(long, default_value_t = 0.0)]
    pub max_error_rate: f64,
    /// Directory for `<label>.json` and `<label>.svg`.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// File name stem of the results (default: the scenario's name).
    #[arg(long)]
    pub label: Option<String>,
    /// Do not write the keys the reads check first: they were written by an
    /// earlier run with the same `--keys` and `--value-size`.
    #[arg(long)]
    pub no_preload: bool,
    /// No live progress line.
    #[arg(long)]
    pub quiet: bool,
    /// Seed of the key and operation draws.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

#[derive(Debug, Clone, Args)]
pub struct CompareArgs {
    #[command(flatten)]
    pub run: RunArgs,
    /// Baseline: `echo` for the bare echo server started in process on
    /// 127.0.0.1 (KeyValue scenarios only), or anything `--target` takes
    /// (a gateway or echo endpoint, `control-plane:ADDR`, `pg:DSN`).
    #[arg(long, default_value = "echo", value_parser = parse_baseline)]
    pub baseline: Baseline,
    /// Rounds; each runs the target and the baseline once, alternating
    /// which goes first.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
}

#[derive(Debug, Clone, Args)]
pub struct EchoArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7500")]
    pub listen: SocketAddr,
    /// Bytes of the value GetItems answers with (match the loadtest's
    /// `--value-size`).
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
}

impl RunArgs {
    /// Says which argument is wrong, if one is.
    pub fn validate(&self) -> anyhow::Result<()> {
        use anyhow::ensure;
        if let Some(rate) = self.rate {
            ensure!(rate > 0, "--rate must be at least 1 request per second (got 0); omit it for a closed loop");
            ensure!(rate <= 10_000_000, "--rate {rate} is above the 10 000 000/s this generator can schedule");
        }
        ensure!(self.concurrency > 0, "--concurrency must be at least 1");
        ensure!(self.connections > 0, "--connections must be at least 1");
        ensure!(self.pool_size > 0, "--pool-size must be at least 1");
        ensure!(
            self.target.serves_time_series() || self.scenario.is_kv(),
            "a pg: target serves KeyValue only; use a kv-* scenario"
        );
        ensure!(!self.duration.is_zero(), "--duration must be longer than 0");
        ensure!(self.keys > 0, "--keys must be at least 1");
        ensure!(self.keys <= MAX_KEYS, "--keys must be at most {MAX_KEYS}");
        ensure!(
            self.zipf_exponent.is_finite() && self.zipf_exponent > 0.0,
            "--zipf-exponent must be a positive number"
        );
        ensure!(
            (0.0..=1.0).contains(&self.read_fraction),
            "--read-fraction must be between 0 and 1 (got {})",
            self.read_fraction
        );
        ensure!(
            (0.0..=1.0).contains(&self.max_error_rate),
            "--max-error-rate must be between 0 and 1 (got {})",
            self.max_error_rate
        );
        ensure!(!self.request_timeout.is_zero(), "--request-timeout must be longer than 0");
        ensure!(!self.namespace.is_empty(), "--namespace must not be empty");
        Ok(())
    }

    /// The results' file name stem.
    pub fn label(&self) -> String {
        self.label.clone().unwrap_or_else(|| self.scenario.name().to_owned())
    }
}

impl CompareArgs {
    pub fn validate(&self) -> anyhow::Result<()> {
        self.run.validate()?;
        anyhow::ensure!(self.rounds > 0, "--rounds must be at least 1");
        match &self.baseline {
            Baseline::Echo => anyhow::ensure!(
                self.run.scenario.is_kv(),
                "the echo baseline only serves KeyValue; use a kv-* scenario or --baseline <endpoint>"
            ),
            Baseline::Target(t) => anyhow::ensure!(
                t.serves_time_series() || self.run.scenario.is_kv(),
                "a pg: baseline serves KeyValue only; use a kv-* scenario"
            ),
        }
        Ok(())
    }
}
