//! Process metrics with the names every Prometheus client uses
//! (`process_resident_memory_bytes`, `process_cpu_seconds_total`,
//! `process_open_fds`, …), read from `/proc/self` when scraped: nothing
//! is sampled in between. Where `/proc` is missing (not Linux) the
//! metrics are simply absent.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Clock ticks per second of `/proc/<pid>/stat` times: Linux fixes
/// USER_HZ at 100 for its userspace ABI (what `getconf CLK_TCK` prints),
/// so it needs no `sysconf` call (which would need `unsafe`).
const USER_HZ: f64 = 100.0;

/// Registers the process metrics on `registry`.
pub fn register(registry: &mut prometheus_client::registry::Registry) {
    registry.register_collector(Box::new(ProcessCollector));
}

#[derive(Debug)]
pub struct ProcessCollector;

/// What `/proc/self` says.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ProcessStats {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub threads: u64,
    pub open_fds: u64,
    pub max_fds: Option<u64>,
    pub start_time_seconds: Option<f64>,
}

impl ProcessStats {
    /// Reads `/proc/self`; `None` where there is none.
    pub fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let mut stats = parse_stat(&stat)?;
        stats.resident_bytes = status_kib(&status, "VmRSS:").unwrap_or(0) * 1024;
        stats.virtual_bytes = status_kib(&status, "VmSize:").unwrap_or(0) * 1024;
        stats.open_fds = std::fs::read_dir("/proc/self/fd").map(|d| d.count() as u64).unwrap_or(0);
        stats.max_fds = std::fs::read_to_string("/proc/self/limits").ok().as_deref().and_then(max_open_files);
        let boot = std::fs::read_to_string("/proc/stat").ok().as_deref().and_then(boot_time);
        stats.start_time_seconds = stats.start_time_seconds.zip(boot).map(|(since_boot, boot)| boot + since_boot);
        Some(stats)
    }
}

/// utime, stime, threads and start time (seconds after boot, for now) of
/// `/proc/self/stat`; the command name may hold spaces and parentheses, so
/// fields are counted after its last `)`.
fn parse_stat(stat: &str) -> Option<ProcessStats> {
    let (_, rest) = stat.rsplit_once(')')?;
    // rest starts at field 3 (state).
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    let ticks = field(14)? + field(15)?;
    Some(ProcessStats {
        cpu_seconds: ticks as f64 / USER_HZ,
        threads: field(20).unwrap_or(0),
        start_time_seconds: field(22).map(|t| t as f64 / USER_HZ),
        ..ProcessStats::default()
    })
}

fn status_kib(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

fn max_open_files(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}

fn boot_time(stat: &str) -> Option<f64> {
    stat.lines().find_map(|l| l.strip_prefix("btime "))?.trim().parse::<u64>().ok().map(|s| s as f64)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(s) = ProcessStats::read() else { return Ok(()) };
        let cpu = ConstCounter::new(s.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            cpu.metric_type(),
        )?)?;
        let gauges = [
            ("process_resident_memory_bytes", "Resident memory size in bytes", s.resident_bytes as f64),
            ("process_virtual_memory_bytes", "Virtual memory size in bytes", s.virtual_bytes as f64),
            ("process_open_fds", "Number of open file descriptors", s.open_fds as f64),
            ("process_threads", "Number of OS threads in the process", s.threads as f64),
        ];
        let optional = [
            ("process_max_fds", "Maximum number of open file descriptors", s.max_fds.map(|v| v as f64)),
            (
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
                s.start_time_seconds,
            ),
        ];
        let present = optional.into_iter().filter_map(|(n, h, v)| v.map(|v| (n, h, v)));
        for (name, help, value) in gauges.into_iter().chain(present) {
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_a_command_holding_spaces_and_parentheses() {
        // Fields 3.. of a real line, with utime 250 and stime 150 ticks.
        let stat = "4242 (prism (dev) x) S 1 4242 4242 0 -1 4194304 500 0 0 0 250 150 0 0 20 0 7 0 1000 \
                    123456789 3000 18446744073709551615";
        let s = parse_stat(stat).expect("parses");
        assert_eq!(s.cpu_seconds, 4.0);
        assert_eq!(s.threads, 7);
        assert_eq!(s.start_time_seconds, Some(10.0));
        assert_eq!(parse_stat("no parenthesis"), None);
    }

    #[test]
    fn reads_this_process_on_linux() {
        let Some(s) = ProcessStats::read() else { return };
        assert!(s.resident_bytes > 0 && s.open_fds > 0 && s.threads > 0, "{s:?}");
        assert!(s.max_fds.is_some_and(|m| m >= s.open_fds), "{s:?}");
        assert!(s.start_time_seconds.is_some_and(|t| t > 1.0e9), "{s:?}");
    }

    #[test]
    fn encodes_the_usual_names() -> Result<(), std::fmt::Error> {
        let mut registry = prometheus_client::registry::Registry::default();
        register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)?;
        if ProcessStats::read().is_some() {
            for name in ["process_cpu_seconds_total ", "process_resident_memory_bytes ", "process_open_fds "] {
                assert!(text.contains(name), "{name} missing from {text}");
            }
        }
        Ok(())
    }
}
