//! `compare`: the target and a baseline, run alternately for several rounds
//! (alternating which goes first, so neither always gets the warmer
//! machine), and the ratios target / baseline with their spread across
//! rounds.

use std::fmt::Write as _;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::args::{Baseline, CompareArgs};
use crate::echo::EchoHandle;
use crate::report::{self, RunResult};
use crate::runner::run_load;
use crate::target::Target;

/// Mean, extremes and sample standard deviation of one ratio over rounds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spread {
    pub mean: f64,
    pub min: f64,
    pub max: f64,
    pub stddev: f64,
    pub values: Vec<f64>,
}

impl Spread {
    pub fn of(values: Vec<f64>) -> Self {
        let n = values.len().max(1) as f64;
        let mean = values.iter().sum::<f64>() / n;
        let var =
            if values.len() > 1 { values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Self { mean, min, max, stddev: var.sqrt(), values }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Round {
    pub target: RunResult,
    pub baseline: RunResult,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompareResult {
    pub scenario: String,
    pub target: String,
    pub baseline: String,
    pub rounds: Vec<Round>,
    /// Target ok/s over baseline ok/s (higher is better; 1 = as fast as the baseline).
    pub throughput_ratio: Spread,
    /// Target p50 over baseline p50.
    pub p50_ratio: Spread,
    /// Target p99 over baseline p99.
    pub p99_ratio: Spread,
    /// Target p99 minus baseline p99, µs.
    pub added_p99_us: Spread,
}

impl CompareResult {
    pub fn table(&self) -> String {
        let mut s = format!(
            "{}: {} vs baseline {} over {} rounds\n{:<22} {:>9} {:>9} {:>9} {:>9}\n",
            self.scenario,
            self.target,
            self.baseline,
            self.rounds.len(),
            "",
            "mean",
            "min",
            "max",
            "stddev"
        );
        for (name, spread) in [
            ("throughput ratio", &self.throughput_ratio),
            ("p50 ratio", &self.p50_ratio),
            ("p99 ratio", &self.p99_ratio),
            ("added p99 (µs)", &self.added_p99_us),
        ] {
            let _ = writeln!(
                s,
                "{name:<22} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
                spread.mean, spread.min, spread.max, spread.stddev
            );
        }
        s
    }
}

/// Runs the comparison. Every run is checked against `--max-error-rate`:
/// a ratio over failed requests would mean nothing.
pub async fn compare(args: &CompareArgs) -> anyhow::Result<CompareResult> {
    args.validate()?;
    let echo = if args.baseline == Baseline::Echo { Some(EchoHandle::start(args.run.value_size).await?) } else { None };
    let baseline = match (&args.baseline, &echo) {
        (Baseline::Target(t), _) => t.clone(),
        (Baseline::Echo, Some(echo)) => Target::Gateway(echo.endpoint()),
        (Baseline::Echo, None) => anyhow::bail!("the echo baseline did not start"),
    };
    let mut rounds = Vec::with_capacity(args.rounds);
    for round in 0..args.rounds {
        let mut target_args = args.run.clone();
        target_args.out = None;
        let mut baseline_args = target_args.clone();
        baseline_args.target = baseline.clone();
        let run = |a: crate::args::RunArgs, which: &'static str| async move {
            let result = run_load(&a).await.with_context(|| format!("round {} {which}", round + 1))?;
            report::check_error_rate(&result, a.max_error_rate)
                .with_context(|| format!("round {} {which} ({})", round + 1, a.target))?;
            if !a.quiet {
                eprintln!("round {} {which}: {}", round + 1, result.summary());
            }
            anyhow::Ok(result)
        };
        let (target, baseline) = if round % 2 == 0 {
            let t = run(target_args, "target").await?;
            (t, run(baseline_args, "baseline").await?)
        } else {
            let b = run(baseline_args, "baseline").await?;
            (run(target_args, "target").await?, b)
        };
        rounds.push(Round { target, baseline });
    }
    let ratio = |f: fn(&RunResult) -> f64| {
        Spread::of(rounds.iter().map(|r| f(&r.target) / f(&r.baseline).max(f64::MIN_POSITIVE)).collect())
    };
    let result = CompareResult {
        scenario: args.run.scenario.name().into(),
        target: args.run.target.to_string(),
        baseline: if echo.is_some() { format!("echo ({baseline})") } else { baseline.to_string() },
        throughput_ratio: ratio(|r| r.throughput_ops_per_s),
        p50_ratio: ratio(|r| r.latency.p50_us),
        p99_ratio: ratio(|r| r.latency.p99_us),
        added_p99_us: Spread::of(rounds.iter().map(|r| r.target.latency.p99_us - r.baseline.latency.p99_us).collect()),
        rounds,
    };
    if let Some(dir) = &args.run.out {
        write(dir, &args.run.label(), &result)?;
    }
    Ok(result)
}

/// Writes `<label>-compare.json` and `<label>-compare.svg` (the last
/// round's two curves).
fn write(dir: &std::path::Path, label: &str, result: &CompareResult) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let json = dir.join(format!("{label}-compare.json"));
    std::fs::write(&json, serde_json::to_string_pretty(result)?)
        .with_context(|| format!("write {}", json.display()))?;
    if let Some(last) = result.rounds.last() {
        let svg = report::plot(
            &format!("{}: target vs baseline", result.scenario),
            &[
                (&format!("target {}", result.target), &last.target.percentiles),
                (&format!("baseline {}", result.baseline), &last.baseline.percentiles),
            ],
        );
        let path = dir.join(format!("{label}-compare.svg"));
        std::fs::write(&path, svg).with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_of_ratios() {
        let s = Spread::of(vec![0.8, 1.0, 1.2]);
        assert!((s.mean - 1.0).abs() < 1e-9);
        assert!((s.stddev - 0.2).abs() < 1e-9);
        assert_eq!((s.min, s.max), (0.8, 1.2));
    }
}
