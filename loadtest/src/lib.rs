//! `prism-loadtest`: open- and closed-loop load against a Prism gateway,
//! every response checked, with HDR latency histograms, JSON and SVG
//! results, and a bare gRPC echo server as the baseline measured in the
//! same run (`compare`).
//!
//! The binary only parses flags and calls [`run`]; tests call the same
//! functions.
//!
//! - **Targets** ([`target`]): one gateway endpoint; `control-plane:ADDR`,
//!   every call through the routing client `prism_client::Prism`; or
//!   `pg:DSN`, the postgres plugin's own statements (imported from
//!   `prism-plugin-postgres`) as single statements over tokio-postgres
//!   ([`pg`]; a PgBouncer DSN makes the PgBouncer baseline,
//!   `scripts/pgbouncer.sh` starts one). `pgbench-script` writes the same
//!   statements as a pgbench script and `grpc-frame` one gRPC request body
//!   for h2load; `scripts/bench-backends.sh` runs the backends against what
//!   a user would run instead.
//! - **Scenarios** ([`scenario`]): `kv-get`, `kv-put`, `kv-mixed`,
//!   `ts-write`, `ts-read`, with uniform or zipf keys.
//! - **Load** ([`runner`]): open loop at a fixed rate (a thread of its own
//!   keeps the schedule in microseconds; each request is timed from its
//!   scheduled send time, so no coordinated omission) or closed loop at a
//!   fixed concurrency, after a warm-up. Every response is checked (a get
//!   must return the value written for that key); failures are counted by
//!   status code, and the run fails above `--max-error-rate`.
//! - **Results** ([`report`]): HDR histograms, a summary, `<label>.json`
//!   and a hand-drawn `<label>.svg` percentile curve.
//! - **Soak** ([`soak`]): capacity measured by a closed loop, then mixed
//!   KeyValue and TimeSeries load at 80 % of it for minutes, reads checked
//!   against the newest acknowledged write, the gateway's resident memory,
//!   open descriptors and the latency of each 10 s window sampled into the
//!   JSON and an SVG over time; pass or fail printed.
//! - **Abuse** ([`abuse`]): oversized and deeply nested messages, a stream
//!   flood and slowloris connections against a gateway, one a phase, while
//!   another tenant's checked requests are measured.
//! - **Baseline** ([`echo`], also `prism-loadtest echo`): a bare tonic
//!   server of the KeyValue GetItems/PutItems that does no work;
//!   `compare` runs target and baseline alternately for several rounds
//!   and reports ratios with their spread.

pub mod abuse;
pub mod args;
pub mod compare;
pub mod echo;
pub mod frame;
pub mod namespaces;
pub mod pg;
pub mod pgbench;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod soak;
pub mod target;

pub use args::{Cli, Command, CompareArgs, RunArgs};
pub use compare::{CompareResult, compare};
pub use report::RunResult;
pub use runner::run_load;
pub use target::Target;

/// What a command produced.
#[derive(Debug)]
pub enum Outcome {
    Run(Box<RunResult>),
    Compare(Box<CompareResult>),
    Echo,
    /// A baseline's input was written (`pgbench-script`, `grpc-frame`).
    Written,
    Soak(Box<soak::SoakResult>),
    Abuse(Box<abuse::AbuseResult>),
}

/// Runs a `run`: the load, the summary on stdout, the files, then the
/// error-rate verdict (after the files, so a failed run can be inspected).
pub async fn run_scenario(args: &RunArgs) -> anyhow::Result<RunResult> {
    let result = run_load(args).await?;
    println!("{}", result.summary());
    if let Some(dir) = &args.out {
        let (json, svg) = report::write(dir, &args.label(), &result)?;
        println!("  results: {} {}", json.display(), svg.display());
    }
    report::check_error_rate(&result, args.max_error_rate)?;
    Ok(result)
}

/// Executes a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<Outcome> {
    match cli.command {
        Command::Run(args) => Ok(Outcome::Run(Box::new(run_scenario(&args).await?))),
        Command::Compare(args) => {
            let result = compare(&args).await?;
            print!("{}", result.table());
            Ok(Outcome::Compare(Box::new(result)))
        }
        Command::Echo(args) => {
            let listener = tokio::net::TcpListener::bind(args.listen)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.listen))?;
            eprintln!("echo baseline listening on {}", args.listen);
            echo::serve(
                listener,
                args.value_size,
                Box::pin(async {
                    let _ = tokio::signal::ctrl_c().await;
                }),
            )
            .await?;
            Ok(Outcome::Echo)
        }
        Command::PgbenchScript(args) => {
            pgbench::run(&args)?;
            Ok(Outcome::Written)
        }
        Command::GrpcFrame(args) => {
            frame::run(&args).await?;
            Ok(Outcome::Written)
        }
        Command::Namespaces(args) => {
            namespaces::run(&args).await?;
            Ok(Outcome::Written)
        }
        Command::Soak(args) => Ok(Outcome::Soak(Box::new(soak::run(&args).await?))),
        Command::Abuse(args) => Ok(Outcome::Abuse(Box::new(abuse::run(&args).await?))),
    }
}
