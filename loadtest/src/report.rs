//! Results: the JSON document of a run, its one-paragraph summary, and a
//! hand-written SVG of the latency percentile curve (x: percentile on a
//! log scale of 1 − p, 0 … 99.99; y: latency in µs).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::args::RunArgs;
use crate::runner::Recorder;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Latency {
    pub min_us: f64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub p9999_us: f64,
    pub max_us: f64,
}

/// One point of the percentile curve.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Point {
    pub percentile: f64,
    pub latency_us: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResult {
    pub scenario: String,
    pub target: String,
    pub namespace: String,
    /// `open` (fixed rate) or `closed` (fixed concurrency).
    pub mode: String,
    pub rate: Option<u64>,
    pub concurrency: usize,
    pub connections: usize,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub keys: u64,
    pub distribution: String,
    pub value_size: usize,
    /// Requests whose (intended) send time fell in the measured window.
    pub requests: u64,
    pub ok: u64,
    pub errors: u64,
    pub errors_by_code: BTreeMap<String, u64>,
    pub warmup_requests: u64,
    pub warmup_errors: u64,
    pub warmup_errors_by_code: BTreeMap<String, u64>,
    /// Correct responses per second of the measured window.
    pub throughput_ops_per_s: f64,
    /// Of correct responses only.
    pub latency: Latency,
    pub percentiles: Vec<Point>,
}

impl RunResult {
    /// Errors over requests, warm-up included.
    pub fn error_rate(&self) -> f64 {
        let requests = self.requests + self.warmup_requests;
        if requests == 0 { 0.0 } else { (self.errors + self.warmup_errors) as f64 / requests as f64 }
    }

    pub fn summary(&self) -> String {
        let l = &self.latency;
        let load = match self.rate {
            Some(rate) => format!("open loop at {rate}/s"),
            None => format!("closed loop at concurrency {}", self.concurrency),
        };
        let mut s = format!(
            "{} against {} ({load}, {:.1}s): {} ok, {} errors, {:.0} ok/s\n  latency µs: p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}",
            self.scenario,
            self.target,
            self.duration_s,
            self.ok,
            self.errors,
            self.throughput_ops_per_s,
            l.p50_us,
            l.p90_us,
            l.p99_us,
            l.p999_us,
            l.max_us
        );
        for (code, n) in self.errors_by_code.iter().chain(&self.warmup_errors_by_code) {
            let _ = write!(s, "\n  error {code}: {n}");
        }
        s
    }
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

/// The percentiles the curve is sampled at: evenly spaced in −log10(1 − p).
fn curve(h: &Histogram<u64>) -> Vec<Point> {
    (0..=80)
        .map(|i| {
            let nines = f64::from(i) / 20.0;
            let percentile = 100.0 * (1.0 - 10f64.powf(-nines));
            Point { percentile, latency_us: us(h.value_at_quantile(percentile / 100.0)) }
        })
        .collect()
}

pub fn build(args: &RunArgs, warmup: &Recorder, measured: &Recorder) -> anyhow::Result<RunResult> {
    use std::sync::atomic::Ordering::Relaxed;
    let h = measured.histogram()?;
    let (ok, errors) = (measured.ok.load(Relaxed), measured.errors.load(Relaxed));
    let (warm_ok, warm_errors) = (warmup.ok.load(Relaxed), warmup.errors.load(Relaxed));
    let q = |p: f64| us(h.value_at_quantile(p));
    Ok(RunResult {
        scenario: args.scenario.name().into(),
        target: args.target.to_string(),
        namespace: args.namespace.clone(),
        mode: if args.rate.is_some() { "open" } else { "closed" }.into(),
        rate: args.rate,
        concurrency: args.concurrency,
        connections: args.connections,
        duration_s: args.duration.as_secs_f64(),
        warmup_s: args.warmup.as_secs_f64(),
        keys: args.keys,
        distribution: format!("{:?}", args.distribution).to_lowercase(),
        value_size: args.value_size,
        requests: ok + errors,
        ok,
        errors,
        errors_by_code: measured.errors_by_code(),
        warmup_requests: warm_ok + warm_errors,
        warmup_errors: warm_errors,
        warmup_errors_by_code: warmup.errors_by_code(),
        throughput_ops_per_s: ok as f64 / args.duration.as_secs_f64(),
        latency: Latency {
            min_us: us(h.min()),
            mean_us: h.mean() / 1000.0,
            p50_us: q(0.5),
            p90_us: q(0.9),
            p99_us: q(0.99),
            p999_us: q(0.999),
            p9999_us: q(0.9999),
            max_us: us(h.max()),
        },
        percentiles: curve(&h),
    })
}

/// Fails when more than `max` of the requests failed, naming the codes.
pub fn check_error_rate(result: &RunResult, max: f64) -> anyhow::Result<()> {
    let rate = result.error_rate();
    if rate > max {
        let mut codes = result.errors_by_code.clone();
        for (code, n) in &result.warmup_errors_by_code {
            *codes.entry(code.clone()).or_default() += n;
        }
        let codes: Vec<String> = codes.iter().map(|(c, n)| format!("{c}: {n}")).collect();
        anyhow::bail!(
            "{} of {} requests failed ({:.4} > --max-error-rate {max}): {}",
            result.errors + result.warmup_errors,
            result.requests + result.warmup_requests,
            rate,
            codes.join(", ")
        );
    }
    Ok(())
}

/// Writes `<label>.json` and `<label>.svg` into `dir` (created if missing);
/// returns their paths.
pub fn write(dir: &Path, label: &str, result: &RunResult) -> anyhow::Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let json = dir.join(format!("{label}.json"));
    let svg = dir.join(format!("{label}.svg"));
    let text = serde_json::to_string_pretty(result).context("encode results")?;
    std::fs::write(&json, text).with_context(|| format!("write {}", json.display()))?;
    let title = format!("{} — {}", result.scenario, result.target);
    std::fs::write(&svg, plot(&title, &[(result.target.as_str(), &result.percentiles)]))
        .with_context(|| format!("write {}", svg.display()))?;
    Ok((json, svg))
}

/// Writes a soak's `<label>.json` and `<label>.svg` (its samples over
/// time) into `dir` (created if missing); returns their paths.
pub fn write_soak(dir: &Path, label: &str, result: &crate::soak::SoakResult) -> anyhow::Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let json = dir.join(format!("{label}.json"));
    let svg = dir.join(format!("{label}.svg"));
    let text = serde_json::to_string_pretty(result).context("encode results")?;
    std::fs::write(&json, text).with_context(|| format!("write {}", json.display()))?;
    // The first sample is taken at the start, before any response.
    let samples: Vec<&crate::soak::Sample> = result.samples.iter().filter(|s| s.t_s > 0.0).collect();
    let points = |f: &dyn Fn(&crate::soak::Sample) -> Option<f64>| -> Vec<(f64, f64)> {
        samples.iter().filter_map(|s| f(s).map(|v| (s.t_s, v))).collect()
    };
    let mib = |b: u64| b as f64 / 1048576.0;
    let band = result.verdict.memory_reference_bytes.map_or_else(Vec::new, |r| {
        let t = result.verdict.memory_tolerance;
        vec![mib(r) * (1.0 - t), mib(r) * (1.0 + t)]
    });
    let all = |f: &dyn Fn(&crate::soak::Sample) -> Option<f64>| -> Vec<(f64, f64)> {
        result.samples.iter().filter_map(|s| f(s).map(|v| (s.t_s, v))).collect()
    };
    let panels = [
        Panel { y_label: "ok/s", series: vec![("ok/s", points(&|s| Some(s.ok_per_s)))], guides: vec![] },
        Panel {
            y_label: "latency (µs)",
            series: vec![("p50", points(&|s| Some(s.p50_us))), ("p99", points(&|s| Some(s.p99_us)))],
            guides: vec![],
        },
        Panel {
            y_label: "resident (MiB)",
            series: vec![("resident memory", all(&|s| s.resident_bytes.map(mib)))],
            guides: band,
        },
        Panel {
            y_label: "open fds",
            series: vec![("open fds", all(&|s| s.open_fds.map(|n| n as f64)))],
            guides: vec![],
        },
    ];
    let verdict = if result.verdict.pass { "PASS" } else { "FAIL" };
    let title = format!("soak — {} at {}/s — {verdict}", result.target, result.rate);
    std::fs::write(&svg, timeline(&title, result.duration_s, Some(result.warmup_s), &panels))
        .with_context(|| format!("write {}", svg.display()))?;
    Ok((json, svg))
}

/// One panel of [`timeline`]: its series over time, and horizontal guide
/// lines (the memory tolerance band).
#[derive(Debug, Clone)]
pub struct Panel<'a> {
    pub y_label: &'a str,
    pub series: Vec<(&'a str, Vec<(f64, f64)>)>,
    pub guides: Vec<f64>,
}

/// Panels stacked over one time axis (seconds, 0 … `x_max`), with a
/// dashed vertical line at `marker` (the end of warm-up).
pub fn timeline(title: &str, x_max: f64, marker: Option<f64>, panels: &[Panel]) -> String {
    let (w, left, right, top, panel_h, gap, bottom) = (720.0, 80.0, 20.0, 40.0, 130.0, 24.0, 40.0);
    let h = top + panels.len() as f64 * (panel_h + gap) - gap + bottom;
    let pw = w - left - right;
    let x_max = x_max.max(1e-9);
    let x_of = |t: f64| left + pw * (t / x_max).clamp(0.0, 1.0);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(s, r#"<text x="{}" y="22" text-anchor="middle" font-size="14">{}</text>"#, w / 2.0, escape(title));
    for (p, panel) in panels.iter().enumerate() {
        let y0 = top + p as f64 * (panel_h + gap);
        let values = panel.series.iter().flat_map(|(_, pts)| pts.iter().map(|(_, v)| *v)).chain(panel.guides.clone());
        let max_y = values.fold(1e-9f64, f64::max) * 1.1;
        let y_of = |v: f64| y0 + panel_h * (1.0 - (v / max_y).clamp(0.0, 1.0));
        for i in 0..=4 {
            let v = max_y * f64::from(i) / 4.0;
            let y = y_of(v);
            let _ = writeln!(s, r##"<line x1="{left}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#eee"/>"##, left + pw);
            let _ = writeln!(s, r#"<text x="{}" y="{:.1}" text-anchor="end">{v:.0}</text>"#, left - 6.0, y + 4.0);
        }
        let _ = writeln!(
            s,
            r#"<text x="14" y="{0:.1}" text-anchor="middle" transform="rotate(-90 14 {0:.1})">{1}</text>"#,
            y0 + panel_h / 2.0,
            escape(panel.y_label)
        );
        let _ =
            writeln!(s, r##"<rect x="{left}" y="{y0}" width="{pw}" height="{panel_h}" fill="none" stroke="#444"/>"##);
        for g in &panel.guides {
            let y = y_of(*g);
            let _ = writeln!(
                s,
                r##"<line x1="{left}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#888" stroke-dasharray="4 3"/>"##,
                left + pw
            );
        }
        if let Some(m) = marker {
            let x = x_of(m);
            let _ = writeln!(
                s,
                r##"<line x1="{x:.1}" y1="{y0}" x2="{x:.1}" y2="{}" stroke="#888" stroke-dasharray="2 3"/>"##,
                y0 + panel_h
            );
        }
        for (i, (name, points)) in panel.series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let pts: Vec<String> = points.iter().map(|(t, v)| format!("{:.1},{:.1}", x_of(*t), y_of(*v))).collect();
            let _ =
                writeln!(s, r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#, pts.join(" "));
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" fill="{color}">{}</text>"#,
                left + 8.0 + 120.0 * i as f64,
                y0 + 14.0,
                escape(name)
            );
        }
    }
    let axis_y = top + panels.len() as f64 * (panel_h + gap) - gap;
    for i in 0..=5 {
        let t = x_max * f64::from(i) / 5.0;
        let _ = writeln!(s, r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{t:.0}</text>"#, x_of(t), axis_y + 16.0);
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">seconds into the soak</text>"#,
        left + pw / 2.0,
        h - 6.0
    );
    s.push_str("</svg>\n");
    s
}

const COLORS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A percentile-curve plot of one or more series.
pub fn plot(title: &str, series: &[(&str, &[Point])]) -> String {
    let (w, h, left, right, top, bottom) = (720.0, 420.0, 70.0, 20.0, 40.0, 50.0);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let max_nines = 4.0;
    let max_y = series.iter().flat_map(|(_, pts)| pts.iter().map(|p| p.latency_us)).fold(1.0f64, f64::max) * 1.05;
    let x_of = |percentile: f64| {
        let nines = -(1.0 - (percentile / 100.0).min(0.9999)).log10();
        left + pw * (nines / max_nines).clamp(0.0, 1.0)
    };
    let y_of = |latency: f64| top + ph * (1.0 - latency / max_y);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(s, r#"<text x="{}" y="22" text-anchor="middle" font-size="14">{}</text>"#, w / 2.0, escape(title));
    // Axes and grid.
    for (label, p) in [("0", 0.0), ("90", 90.0), ("99", 99.0), ("99.9", 99.9), ("99.99", 99.99)] {
        let x = x_of(p);
        let _ = writeln!(s, r##"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{}" stroke="#ddd"/>"##, top + ph);
        let _ = writeln!(s, r#"<text x="{x:.1}" y="{}" text-anchor="middle">{label}</text>"#, top + ph + 16.0);
    }
    for i in 0..=5 {
        let v = max_y * f64::from(i) / 5.0;
        let y = y_of(v);
        let _ = writeln!(s, r##"<line x1="{left}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#eee"/>"##, left + pw);
        let _ = writeln!(s, r#"<text x="{}" y="{:.1}" text-anchor="end">{v:.0}</text>"#, left - 6.0, y + 4.0);
    }
    let _ = writeln!(s, r#"<text x="{}" y="{}" text-anchor="middle">percentile</text>"#, left + pw / 2.0, h - 10.0);
    let _ = writeln!(
        s,
        r#"<text x="16" y="{}" text-anchor="middle" transform="rotate(-90 16 {})">latency (µs)</text>"#,
        top + ph / 2.0,
        top + ph / 2.0
    );
    let _ = writeln!(s, r##"<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#444"/>"##);
    for (i, (name, points)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts: Vec<String> =
            points.iter().map(|p| format!("{:.1},{:.1}", x_of(p.percentile), y_of(p.latency_us))).collect();
        let _ = writeln!(s, r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#, pts.join(" "));
        let ly = top + 16.0 + 16.0 * i as f64;
        let _ = writeln!(s, r#"<text x="{:.1}" y="{ly:.1}" fill="{color}">{}</text>"#, left + 10.0, escape(name));
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plot_is_an_svg_with_one_polyline_per_series() {
        let pts = [Point { percentile: 0.0, latency_us: 10.0 }, Point { percentile: 99.99, latency_us: 90.0 }];
        let svg = plot("a <b>", &[("x", &pts), ("y", &pts)]);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("a &lt;b&gt;"));
    }

    #[test]
    fn the_timeline_has_a_polyline_per_series_and_the_guides() {
        let pts = vec![(1.0, 10.0), (2.0, 12.0)];
        let panels = [
            Panel { y_label: "a", series: vec![("x", pts.clone()), ("y", pts.clone())], guides: vec![] },
            Panel { y_label: "b", series: vec![("z", pts)], guides: vec![9.0, 11.0] },
        ];
        let svg = timeline("t & u", 2.0, Some(1.0), &panels);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 3);
        assert_eq!(svg.matches("stroke-dasharray=\"4 3\"").count(), 2);
        assert!(svg.contains("t &amp; u"));
    }
}
