//! h2load (Debian's `nghttp2-client`), an HTTP/2 load generator in C, for
//! benchmarks: it sends one gRPC request body over and over at a fixed
//! concurrency, at a small fraction of a gRPC client's CPU per request, so
//! a benchmark measures the server rather than its own client.
//!
//! h2load counts HTTP status codes, and a gRPC error is a 200 with a
//! `grpc-status` trailer: a benchmark checks the outcome another way (the
//! backend's own count of what was written), and sends the request once
//! through a real client first.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::Context;

/// What installs h2load.
pub const INSTALL_COMMAND: &str = "apt-get install -y nghttp2-client";

/// Whether `h2load` is on `PATH`.
pub fn installed() -> bool {
    Command::new("h2load").arg("--version").output().is_ok_and(|o| o.status.success())
}

/// `message` as a gRPC request body: the 5-byte prefix (not compressed,
/// length big-endian), then the message.
pub fn grpc_body(message: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(5 + message.len());
    body.push(0);
    body.extend_from_slice(&u32::try_from(message.len()).unwrap_or(u32::MAX).to_be_bytes());
    body.extend_from_slice(message);
    body
}

/// One h2load run: `requests` requests of `body` to `http://{endpoint}{path}`
/// over `connections` connections, one request in flight on each.
#[derive(Debug, Clone)]
pub struct Load<'a> {
    pub endpoint: &'a str,
    /// `/package.Service/Method`.
    pub path: &'a str,
    /// A file holding the request body ([`grpc_body`]).
    pub body: &'a Path,
    pub token: &'a str,
    pub connections: usize,
    pub requests: usize,
}

/// What h2load reports, and what it cost.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    /// Requests answered with HTTP 2xx.
    pub succeeded: u64,
    pub failed: u64,
    pub per_second: f64,
    pub mean_latency: Duration,
    /// Bytes of response bodies (HTTP/2 DATA payload) received: a check
    /// of answers whose size is known (a gRPC error has no body).
    pub data_bytes: u64,
    /// h2load's own CPU time (user + system).
    pub cpu: Duration,
}

/// `1.23ms`, `850us`, `1.2s` as a duration.
fn parse_duration(text: &str) -> Option<Duration> {
    let (number, unit) = text.find(|c: char| c.is_ascii_alphabetic()).map(|i| text.split_at(i))?;
    let n: f64 = number.parse().ok()?;
    let seconds = match unit {
        "us" => n / 1e6,
        "ms" => n / 1e3,
        "s" => n,
        _ => return None,
    };
    Some(Duration::from_secs_f64(seconds))
}

/// The numbers of h2load's report: succeeded, failed, requests per second,
/// mean latency, data bytes.
fn parse(report: &str) -> anyhow::Result<(u64, u64, f64, Duration, u64)> {
    let line = |start: &str| report.lines().find(|l| l.trim_start().starts_with(start));
    let finished = line("finished in").context("no 'finished in' line")?;
    let per_second = finished
        .split(',')
        .find_map(|part| part.trim().strip_suffix(" req/s").and_then(|n| n.trim().parse().ok()))
        .context("no req/s")?;
    let requests = line("requests:").context("no 'requests:' line")?;
    let count = |what: &str| {
        requests.split(',').find_map(|part| part.trim().strip_suffix(what).and_then(|n| n.trim().parse::<u64>().ok()))
    };
    let succeeded = count(" succeeded").context("no succeeded count")?;
    let failed = count(" failed").unwrap_or(0) + count(" errored").unwrap_or(0) + count(" timeout").unwrap_or(0);
    let times = line("time for request:").context("no 'time for request:' line")?;
    // min, max, mean, sd, +/- sd
    let mean = times
        .split_once(':')
        .and_then(|(_, rest)| rest.split_whitespace().nth(2))
        .and_then(parse_duration)
        .context("no mean time for request")?;
    // `traffic: 1.2MB (1234567) total, 12KB (12345) headers (space savings 90%), 1.1MB (1100000) data`
    let traffic = line("traffic:").context("no 'traffic:' line")?;
    let data = traffic
        .rsplit_once(") data")
        .and_then(|(before, _)| before.rsplit_once('('))
        .and_then(|(_, n)| n.parse().ok())
        .context("no data bytes")?;
    Ok((succeeded, failed, per_second, mean, data))
}

/// Runs h2load (blocking) and reads its report; fails unless it ran.
pub fn run(load: &Load<'_>) -> anyhow::Result<Outcome> {
    let url = format!("http://{}{}", load.endpoint, load.path);
    // The shell reports its children's CPU time (`cutime`, `cstime` of its
    // /proc stat) once h2load is done.
    let out = Command::new("sh")
        .args(["-c", "h2load \"$@\"; status=$?; echo; cat /proc/$$/stat; exit $status", "sh"])
        .args(["-n", &load.requests.to_string(), "-c", &load.connections.to_string(), "-m", "1"])
        .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
        .args(["-H", &format!("authorization: Bearer {}", load.token)])
        .arg("-d")
        .arg(load.body)
        .arg(&url)
        .output()
        .context("run h2load")?;
    let text = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(out.status.success(), "h2load failed: {text} {}", String::from_utf8_lossy(&out.stderr));
    let (report, stat) = text.trim_end().rsplit_once('\n').context("no stat line after h2load's report")?;
    let (succeeded, failed, per_second, mean_latency, data_bytes) =
        parse(report).with_context(|| format!("unexpected h2load report: {report}"))?;
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, f)| f.split_whitespace().collect()).unwrap_or_default();
    // Fields after the name: state is the 3rd, cutime the 16th, cstime the 17th.
    let ticks: u64 = [13, 14].iter().filter_map(|&i| fields.get(i)?.parse::<u64>().ok()).sum();
    Ok(Outcome { succeeded, failed, per_second, mean_latency, data_bytes, cpu: Duration::from_millis(ticks * 10) })
}

/// Runs every load at once, one h2load process each (so each can send its
/// own body: one client per series or record), and adds them up: requests
/// per second over the wall time of the whole, the mean of the means
/// weighted by requests, the CPU of all.
pub fn run_all(loads: &[Load<'_>]) -> anyhow::Result<Outcome> {
    let started = std::time::Instant::now();
    let outcomes: Vec<anyhow::Result<Outcome>> = std::thread::scope(|scope| {
        let handles: Vec<_> = loads.iter().map(|load| scope.spawn(move || run(load))).collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("an h2load thread panicked"))))
            .collect()
    });
    let wall = started.elapsed().as_secs_f64();
    let mut total = Outcome {
        succeeded: 0,
        failed: 0,
        per_second: 0.0,
        mean_latency: Duration::ZERO,
        data_bytes: 0,
        cpu: Duration::ZERO,
    };
    let mut latency_sum = 0.0;
    for outcome in outcomes {
        let outcome = outcome?;
        total.succeeded += outcome.succeeded;
        total.failed += outcome.failed;
        total.data_bytes += outcome.data_bytes;
        total.cpu += outcome.cpu;
        latency_sum += outcome.mean_latency.as_secs_f64() * outcome.succeeded as f64;
    }
    total.per_second = total.succeeded as f64 / wall;
    total.mean_latency = Duration::from_secs_f64(latency_sum / total.succeeded.max(1) as f64);
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_report() -> anyhow::Result<()> {
        let report = "finished in 1.02s, 7843.14 req/s, 1.01MB/s\n\
                      requests: 8000 total, 8000 started, 8000 done, 7990 succeeded, 10 failed, 0 errored, 0 timeout\n\
                      status codes: 7990 2xx, 0 3xx, 0 4xx, 10 5xx\n\
                      traffic: 1.03MB (1082153) total, 122.38KB (125315) headers (space savings 95.61%), 824.22KB (844000) data\n\
                      time for request:      612us     12.04ms      2.03ms       845us    71.23%\n";
        let (succeeded, failed, per_second, mean, data) = parse(report)?;
        assert_eq!((succeeded, failed, data), (7990, 10, 844000));
        assert!((per_second - 7843.14).abs() < 1e-6);
        assert_eq!(mean, Duration::from_micros(2030));
        assert_eq!(parse_duration("845us"), Some(Duration::from_micros(845)));
        assert_eq!(grpc_body(b"ab"), vec![0, 0, 0, 0, 2, b'a', b'b']);
        Ok(())
    }
}
