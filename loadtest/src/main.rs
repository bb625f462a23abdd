//! `prism-loadtest`: parses flags and calls [`prism_loadtest::run`]. A bad
//! argument or a failed run is a message on stderr and a non-zero exit.

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")))
        .with_writer(std::io::stderr)
        .init();
    let cli = match prism_loadtest::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(2) } else { ExitCode::SUCCESS };
        }
    };
    match prism_loadtest::run(cli).await {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("prism-loadtest: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
