//! `prism-loadtest`: open- and closed-loop load against a gateway with
//! baselines measured in the same run. Not built yet (the loadtest issue):
//! until then it says so and exits with an error instead of pretending to
//! have measured something.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!(
        "prism-loadtest is not implemented yet; see docs/benchmarks.md for the criterion benchmarks \
         (cargo bench -p prism-gateway, cargo bench -p prism-control-plane)"
    );
    ExitCode::from(2)
}
