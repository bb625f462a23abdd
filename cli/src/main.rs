//! The `prism` binary: sets up tracing (and, for servers, OpenTelemetry
//! export when the `OTEL_*` variables ask for it), parses flags and runs
//! the command; everything else lives in the `prism_cli` library.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::Parser;
use prism_cli::{Cli, error};
use prism_telemetry::otel::{OtelConfig, OtelGuard};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let otel = match tracing(&cli) {
        Ok(otel) => otel,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: {e}");
            return ExitCode::from(error::EXIT_USAGE);
        }
    };

    let code = match prism_cli::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of stdout went away (`| head`): not a failure.
        Err(e) if error::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "{}", error::render(&e));
            ExitCode::from(error::exit_code(&e))
        }
    };
    if let Some(otel) = otel {
        // Exports the spans still buffered; blocking, so off the runtime.
        let _ = tokio::task::spawn_blocking(move || otel.shutdown()).await;
    }
    code
}

/// Logs to stderr, and for servers trace export if `OTEL_*` asks for it.
/// An unusable `OTEL_*` value is an error naming the variable.
fn tracing(cli: &Cli) -> Result<Option<OtelGuard>, prism_telemetry::TelemetryError> {
    // Servers say what they do; an admin command's stdout is its result,
    // so it logs only warnings (to stderr) unless RUST_LOG says otherwise.
    let default = if cli.command.is_server() { LevelFilter::INFO } else { LevelFilter::WARN };
    let filter = EnvFilter::builder().with_default_directive(default.into()).from_env_lossy();
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_filter(filter);
    let otel = if cli.command.is_server() {
        OtelConfig::from_env(|name| std::env::var(name).ok(), cli.command.service_name())?
    } else {
        None
    };
    match otel {
        Some(config) => {
            let (export, guard) = config.install()?;
            let _ = tracing_subscriber::registry().with(logs).with(export).try_init();
            tracing::info!(
                endpoint = %config.endpoint,
                service = %config.service_name,
                sampler = ?config.sampler,
                "exporting traces over OTLP"
            );
            Ok(Some(guard))
        }
        None => {
            let _ = tracing_subscriber::registry().with(logs).try_init();
            Ok(None)
        }
    }
}
