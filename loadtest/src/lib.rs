//! `prism-loadtest`: open- and closed-loop load against a Prism gateway,
//! every response checked, with HDR latency histograms, JSON and SVG
//! results, and a bare gRPC echo server as the baseline measured in the
//! same run (`compare`).
//!
//! The binary only parses flags and calls [`run`]; tests call the same
//! functions.

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
    }
}
