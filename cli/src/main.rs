//! The `prism` binary: sets up tracing, parses flags and runs the command;
//! everything else lives in the `prism_cli` library.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::Parser;
use prism_cli::{Cli, error};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // Servers say what they do; an admin command's stdout is its result,
    // so it logs only warnings (to stderr) unless RUST_LOG says otherwise.
    let default = if cli.command.is_server() { LevelFilter::INFO } else { LevelFilter::WARN };
    let filter = EnvFilter::builder().with_default_directive(default.into()).from_env_lossy();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();

    match prism_cli::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of stdout went away (`| head`): not a failure.
        Err(e) if error::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "{}", error::render(&e));
            ExitCode::from(error::exit_code(&e))
        }
    }
}
