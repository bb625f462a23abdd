//! prism-loadtest end to end: every scenario briefly against a real gateway
//! (a testkit cluster), `compare` against the echo baseline, and the bad
//! arguments that must fail with a message and a non-zero exit.

use std::process::Command as Process;

use clap::Parser;
use prism_loadtest::{Cli, Outcome, run};
use prism_proto::control::{Abstraction, Backend, NamespaceSpec};
use prism_testkit::{Cluster, admin_token};

fn spec(abstraction: Abstraction) -> NamespaceSpec {
    NamespaceSpec { abstraction: abstraction as i32, backend: Backend::Embedded as i32, ..Default::default() }
}

fn argv(words: &[&str]) -> Vec<String> {
    std::iter::once("prism-loadtest").chain(words.iter().copied()).map(String::from).collect()
}

async fn run_words(words: &[&str]) -> anyhow::Result<Outcome> {
    run(Cli::try_parse_from(argv(words))?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_runs_checks_and_writes_results_then_compares() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let kv_gw = cluster.active_namespace("lt/kv", spec(Abstraction::KeyValue)).await?;
    let ts_gw = cluster.active_namespace("lt/ts", spec(Abstraction::TimeSeries)).await?;
    let out = tempfile::tempdir()?;
    let out_dir = out.path().to_string_lossy().into_owned();
    let token = admin_token();

    let cases = [
        ("kv-get", "lt/kv", kv_gw.endpoint(), None),
        ("kv-put", "lt/kv", kv_gw.endpoint(), None),
        ("kv-mixed", "lt/kv", kv_gw.endpoint(), None),
        ("kv-get", "lt/kv", kv_gw.endpoint(), Some("200")),
        ("ts-write", "lt/ts", ts_gw.endpoint(), None),
        ("ts-read", "lt/ts", ts_gw.endpoint(), Some("100")),
    ];
    for (i, (scenario, ns, target, rate)) in cases.iter().enumerate() {
        let label = format!("{scenario}-{i}");
        let mut words = vec![
            "run",
            "--target",
            target,
            "--scenario",
            scenario,
            "--namespace",
            ns,
            "--token",
            &token,
            "--duration",
            "500ms",
            "--warmup",
            "100ms",
            "--keys",
            "50",
            "--concurrency",
            "4",
            "--value-size",
            "64",
            "--out",
            &out_dir,
            "--label",
            &label,
            "--quiet",
        ];
        if let Some(rate) = rate {
            words.extend(["--rate", rate]);
        }
        if i == 2 {
            words.extend(["--distribution", "zipf"]);
        }
        let Outcome::Run(result) = run_words(&words).await? else { anyhow::bail!("not a run") };
        assert!(result.ok > 0, "{label}: no requests answered");
        assert_eq!(result.errors + result.warmup_errors, 0, "{label}: {:?}", result.errors_by_code);
        assert!(result.latency.p50_us > 0.0, "{label}");
        let json = std::fs::read_to_string(out.path().join(format!("{label}.json")))?;
        let parsed: serde_json::Value = serde_json::from_str(&json)?;
        assert_eq!(parsed["scenario"], *scenario);
        assert_eq!(parsed["ok"].as_u64(), Some(result.ok));
        let svg = std::fs::read_to_string(out.path().join(format!("{label}.svg")))?;
        assert!(svg.starts_with("<svg") && svg.contains("<polyline"), "{label}");
        if let Some(rate) = rate {
            // Open loop: the schedule, not the latency, sets the count.
            let expected = rate.parse::<f64>()? * 0.5;
            assert!((result.requests as f64 - expected).abs() <= 2.0, "{label}: {} requests", result.requests);
        }
    }

    // A wrong response counts as an error: read, without preloading, keys
    // that hold 64-byte values while expecting 32-byte ones.
    let e = run_words(&[
        "run",
        "--target",
        &kv_gw.endpoint(),
        "--scenario",
        "kv-get",
        "--namespace",
        "lt/kv",
        "--token",
        &token,
        "--duration",
        "200ms",
        "--warmup",
        "0s",
        "--keys",
        "50",
        "--value-size",
        "32",
        "--no-preload",
        "--quiet",
    ])
    .await
    .expect_err("wrong values");
    assert!(format!("{e:#}").contains("WrongResponse"), "{e:#}");
    // Unwritten keys are wrong responses too, tolerated up to --max-error-rate.
    let Outcome::Run(result) = run_words(&[
        "run",
        "--target",
        &kv_gw.endpoint(),
        "--scenario",
        "kv-get",
        "--namespace",
        "lt/kv",
        "--token",
        &token,
        "--duration",
        "200ms",
        "--warmup",
        "0s",
        "--keys",
        "100",
        "--value-size",
        "64",
        "--no-preload",
        "--quiet",
        "--max-error-rate",
        "1",
    ])
    .await?
    else {
        anyhow::bail!("not a run")
    };
    assert!(result.errors > 0 && result.ok > 0, "{result:?}");
    assert_eq!(result.errors_by_code.keys().collect::<Vec<_>>(), ["WrongResponse"]);
    let Outcome::Run(result) = run_words(&[
        "run",
        "--target",
        &kv_gw.endpoint(),
        "--scenario",
        "kv-mixed",
        "--namespace",
        "lt/kv",
        "--token",
        &token,
        "--duration",
        "200ms",
        "--warmup",
        "0s",
        "--keys",
        "50",
        "--quiet",
    ])
    .await?
    else {
        anyhow::bail!("not a run")
    };
    assert_eq!(result.errors, 0, "{:?}", result.errors_by_code);
    // No token: every request fails, reported by its status code.
    let e = run_words(&[
        "run",
        "--target",
        &kv_gw.endpoint(),
        "--scenario",
        "kv-put",
        "--namespace",
        "lt/kv",
        "--duration",
        "200ms",
        "--warmup",
        "0s",
        "--quiet",
        "--token",
        "",
    ])
    .await
    .expect_err("unauthenticated");
    assert!(format!("{e:#}").contains("Unauthenticated"), "{e:#}");

    // compare: the gateway vs the echo baseline, 2 short rounds.
    let Outcome::Compare(cmp) = run_words(&[
        "compare",
        "--target",
        &kv_gw.endpoint(),
        "--scenario",
        "kv-get",
        "--namespace",
        "lt/kv",
        "--token",
        &token,
        "--duration",
        "300ms",
        "--warmup",
        "100ms",
        "--keys",
        "50",
        "--rounds",
        "2",
        "--out",
        &out_dir,
        "--quiet",
    ])
    .await?
    else {
        anyhow::bail!("not a comparison")
    };
    assert_eq!(cmp.rounds.len(), 2);
    assert_eq!(cmp.throughput_ratio.values.len(), 2);
    assert!(cmp.throughput_ratio.mean > 0.0 && cmp.throughput_ratio.mean.is_finite());
    assert!(cmp.p99_ratio.mean > 0.0 && cmp.p99_ratio.mean.is_finite());
    for round in &cmp.rounds {
        assert!(round.target.ok > 0 && round.baseline.ok > 0);
        assert_eq!(round.target.errors + round.baseline.errors, 0);
    }
    assert!(cmp.table().contains("throughput ratio"));
    let parsed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("kv-get-compare.json"))?)?;
    assert_eq!(parsed["rounds"].as_array().map(Vec::len), Some(2));
    assert!(out.path().join("kv-get-compare.svg").exists());
    Ok(())
}

/// `soak`, for a few seconds: capacity measured, then the open loop at
/// 80 % of it over a KeyValue and a TimeSeries namespace, every response
/// checked; the gateway's memory and descriptors (its `/metrics`, or
/// `/proc/PID`) and each window's latency sampled into the JSON and the
/// SVG; the verdict computed. (Memory over seconds of an in-process
/// cluster says nothing, so the tolerance is wide here: the verdict's
/// arithmetic is unit-tested in `soak.rs`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_soak_checks_every_response_and_samples_the_gateway() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let gw = cluster.active_namespace("soak/kv", spec(Abstraction::KeyValue)).await?;
    cluster.active_namespace("soak/ts", spec(Abstraction::TimeSeries)).await?;
    let out = tempfile::tempdir()?;
    let out_dir = out.path().to_string_lossy().into_owned();
    let (token, endpoint) = (admin_token(), gw.endpoint());
    let metrics = format!("http://{}/metrics", gw.metrics_addr);
    let common = [
        "soak",
        "--target",
        &endpoint,
        "--kv-namespace",
        "soak/kv",
        "--ts-namespace",
        "soak/ts",
        "--token",
        &token,
        "--capacity-concurrency",
        "4",
        "--concurrency",
        "16",
        "--keys",
        "50",
        "--memory-tolerance",
        "10",
        "--quiet",
    ];
    let mut words = common.to_vec();
    words.extend([
        "--duration",
        "3s",
        "--capacity-duration",
        "500ms",
        "--sample-every",
        "500ms",
        "--warmup",
        "1s",
        "--metrics",
        &metrics,
        "--out",
        &out_dir,
    ]);
    let Outcome::Soak(result) = run_words(&words).await? else { anyhow::bail!("not a soak") };
    assert!(result.capacity.ok > 0 && result.ok > 0, "{result:?}");
    assert_eq!(
        result.capacity.errors + result.errors,
        0,
        "{:?} {:?}",
        result.capacity.errors_by_code,
        result.errors_by_code
    );
    assert_eq!(result.rate, (result.capacity.ok_per_s * 0.8).floor() as u64);
    assert!(result.samples.len() >= 6, "{} samples", result.samples.len());
    for s in &result.samples {
        assert!(s.resident_bytes.is_some_and(|b| b > 0) && s.open_fds.is_some_and(|n| n > 0), "{s:?}");
    }
    assert!(result.samples.iter().skip(1).any(|s| s.ok > 0 && s.p99_us > 0.0 && s.p99_us >= s.p50_us));
    assert!(result.verdict.pass, "{:?}", result.verdict);
    assert!(result.verdict.memory_reference_bytes.is_some() && result.verdict.memory_max_deviation.is_some());
    assert!(result.summary().contains("PASS"));
    let parsed: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.path().join("soak.json"))?)?;
    assert_eq!(parsed["samples"].as_array().map(Vec::len), Some(result.samples.len()));
    assert_eq!(parsed["verdict"]["pass"], true);
    let svg = std::fs::read_to_string(out.path().join("soak.svg"))?;
    // ok/s, p50, p99, resident memory, open fds.
    assert_eq!(svg.matches("<polyline").count(), 5, "{svg}");

    // The same through /proc/PID (this process: the gateway is in it).
    let pid = std::process::id().to_string();
    let mut words = common.to_vec();
    words.extend([
        "--duration",
        "1s",
        "--capacity-duration",
        "200ms",
        "--sample-every",
        "500ms",
        "--warmup",
        "0s",
        "--pid",
        &pid,
    ]);
    let Outcome::Soak(result) = run_words(&words).await? else { anyhow::bail!("not a soak") };
    assert!(result.verdict.pass, "{:?}", result.verdict);
    assert!(result.samples.iter().all(|s| s.resident_bytes.is_some_and(|b| b > 0)));

    // Whose memory to sample must be said.
    let e = run_words(&["soak", "--target", &endpoint, "--token", &token]).await.expect_err("no probe");
    assert!(e.to_string().contains("--metrics URL or --pid PID"), "{e}");
    Ok(())
}

/// A port nothing listens on: bound, read, released.
fn closed_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

fn binary(words: &[&str]) -> anyhow::Result<(i32, String)> {
    let out = Process::new(env!("CARGO_BIN_EXE_prism-loadtest")).args(words).env_remove("PRISM_TOKEN").output()?;
    Ok((out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned()))
}

#[test]
fn bad_arguments_say_what_is_wrong_and_exit_non_zero() -> anyhow::Result<()> {
    let target = format!("127.0.0.1:{}", closed_port()?);
    let cp = format!("control-plane:{target}");
    let pg = format!("pg:postgres://postgres@{target}/postgres");
    let cases: [(&[&str], &str); 11] = [
        (&["run", "--target", &cp, "--scenario", "kv-get", "--duration", "1s"], "is unreachable"),
        (&["run", "--target", &pg, "--scenario", "kv-get", "--duration", "1s"], "is unreachable"),
        (&["run", "--target", "pg:host=x port=notaport", "--scenario", "kv-get"], "PostgreSQL DSN is invalid"),
        (&["run", "--target", "control-plane:", "--scenario", "kv-get"], "control-plane address is empty"),
        (&["run", "--target", &pg, "--scenario", "kv-get", "--pool-size", "0"], "--pool-size must be at least 1"),
        (&["compare", "--target", &target, "--baseline", &pg, "--scenario", "ts-write"], "KeyValue only"),
        (&["run", "--target", &target, "--scenario", "kv-get", "--rate", "0"], "--rate must be at least 1"),
        (&["run", "--target", &target, "--scenario", "kv-fly"], "invalid value 'kv-fly' for '--scenario"),
        (&["run", "--target", &target, "--scenario", "kv-get", "--duration", "1s"], "is unreachable"),
        (&["run", "--target", &target, "--scenario", "kv-get", "--max-error-rate", "2"], "--max-error-rate"),
        (&["compare", "--target", &target, "--scenario", "ts-read"], "echo baseline only serves KeyValue"),
    ];
    for (words, message) in cases {
        let (code, stderr) = binary(words)?;
        assert_ne!(code, 0, "{words:?} succeeded");
        assert!(stderr.contains(message), "{words:?}: {stderr}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_library_refuses_bad_arguments_too() -> anyhow::Result<()> {
    let target = format!("127.0.0.1:{}", closed_port()?);
    let e = run_words(&["run", "--target", &target, "--scenario", "kv-get", "--rate", "0"]).await.expect_err("rate 0");
    assert!(e.to_string().contains("--rate"), "{e}");
    let e = run_words(&["run", "--target", &target, "--scenario", "kv-get"]).await.expect_err("unreachable");
    assert!(format!("{e:#}").contains("unreachable"), "{e:#}");
    assert!(Cli::try_parse_from(argv(&["run", "--target", &target, "--scenario", "nope"])).is_err());
    Ok(())
}

/// `--target control-plane:ADDR`: every call through the routing client,
/// which finds the owning gateway itself (resolve + watch). No errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_through_the_routing_client_via_the_control_plane() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    cluster.active_namespace("lt/routed", spec(Abstraction::KeyValue)).await?;
    cluster.active_namespace("lt/routed-ts", spec(Abstraction::TimeSeries)).await?;
    let token = admin_token();
    let target = format!("control-plane:{}", cluster.control_plane.endpoint());
    for (scenario, ns) in [("kv-mixed", "lt/routed"), ("ts-write", "lt/routed-ts")] {
        let Outcome::Run(result) = run_words(&[
            "run",
            "--target",
            &target,
            "--scenario",
            scenario,
            "--namespace",
            ns,
            "--token",
            &token,
            "--duration",
            "500ms",
            "--warmup",
            "100ms",
            "--keys",
            "50",
            "--concurrency",
            "4",
            "--connections",
            "2",
            "--quiet",
        ])
        .await?
        else {
            anyhow::bail!("not a run")
        };
        assert!(result.ok > 0, "{scenario}: no requests answered");
        assert_eq!(result.errors + result.warmup_errors, 0, "{scenario}: {:?}", result.errors_by_code);
        assert_eq!(result.target, target);
    }
    // A namespace the control plane does not know fails before the clock
    // starts, naming it.
    let e = run_words(&[
        "run",
        "--target",
        &target,
        "--scenario",
        "kv-get",
        "--namespace",
        "lt/missing",
        "--token",
        &token,
        "--quiet",
    ])
    .await
    .expect_err("unknown namespace");
    assert!(format!("{e:#}").contains("cannot resolve namespace lt/missing"), "{e:#}");
    Ok(())
}

/// Stops the PgBouncer that `scripts/pgbouncer.sh` started, and removes its dir.
struct PgBouncer {
    dsn: String,
    pid: String,
    dir: String,
}

impl PgBouncer {
    fn start(port: u16) -> anyhow::Result<Self> {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/pgbouncer.sh");
        let out = Process::new("bash").args([script, "127.0.0.1", &port.to_string(), "4"]).output()?;
        anyhow::ensure!(out.status.success(), "pgbouncer.sh: {}", String::from_utf8_lossy(&out.stderr));
        let stdout = String::from_utf8(out.stdout)?;
        let mut lines = stdout.lines().map(str::to_owned);
        let (Some(dsn), Some(pid), Some(dir)) = (lines.next(), lines.next(), lines.next()) else {
            anyhow::bail!("pgbouncer.sh printed {stdout:?}")
        };
        Ok(Self { dsn, pid, dir })
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = Process::new("kill").arg(&self.pid).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `pg:DSN`: the postgres plugin's get and put sent directly, to
/// PostgreSQL and through PgBouncer in transaction mode, checked like any
/// target; and `compare` takes either as its baseline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_and_pgbouncer_baselines_run_and_compare() -> anyhow::Result<()> {
    let Some(server) = tokio::task::spawn_blocking(prism_testkit::postgres::PostgresServer::start_or_skip).await??
    else {
        eprintln!("skipped: {}", prism_testkit::postgres::skip_reason());
        return Ok(());
    };
    let direct = format!("pg:{}", server.dsn());
    let pgbouncer_installed = std::path::Path::new("/usr/sbin/pgbouncer").exists();
    let bouncer = if pgbouncer_installed { Some(PgBouncer::start(server.port())?) } else { None };
    let mut targets = vec![direct.clone()];
    targets.extend(bouncer.as_ref().map(|b| format!("pg:{}", b.dsn)));
    for target in &targets {
        for scenario in ["kv-put", "kv-mixed", "kv-get"] {
            let Outcome::Run(result) = run_words(&[
                "run",
                "--target",
                target,
                "--scenario",
                scenario,
                "--duration",
                "400ms",
                "--warmup",
                "100ms",
                "--keys",
                "50",
                "--concurrency",
                "8",
                "--pool-size",
                "4",
                "--quiet",
            ])
            .await?
            else {
                anyhow::bail!("not a run")
            };
            assert!(result.ok > 0, "{target} {scenario}: no requests answered");
            assert_eq!(result.errors + result.warmup_errors, 0, "{target} {scenario}: {:?}", result.errors_by_code);
            assert!(!result.target.contains("postgres@"), "the DSN is not echoed: {}", result.target);
        }
    }
    let baseline = targets.last().cloned().unwrap_or_default();
    let Outcome::Compare(cmp) = run_words(&[
        "compare",
        "--target",
        &direct,
        "--baseline",
        &baseline,
        "--scenario",
        "kv-get",
        "--duration",
        "300ms",
        "--warmup",
        "100ms",
        "--keys",
        "20",
        "--pool-size",
        "4",
        "--rounds",
        "2",
        "--quiet",
    ])
    .await?
    else {
        anyhow::bail!("not a comparison")
    };
    assert_eq!(cmp.rounds.len(), 2);
    assert!(cmp.throughput_ratio.mean > 0.0 && cmp.throughput_ratio.mean.is_finite());
    // KeyValue only.
    let e = run_words(&["run", "--target", &direct, "--scenario", "ts-read", "--quiet"]).await.expect_err("ts on pg");
    assert!(e.to_string().contains("KeyValue only"), "{e}");
    Ok(())
}

/// `grpc-frame --check`: the request is sent once through a client and
/// must succeed (a namespace the gateway does not serve fails), and the
/// file is the prefixed request h2load sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_frames_are_checked_requests() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let gw = cluster.active_namespace("lt/frames", spec(Abstraction::KeyValue)).await?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("put.grpc");
    let (endpoint, token, path) = (gw.endpoint(), admin_token(), file.to_string_lossy().into_owned());
    let frame = |call: &'static str, ns: &'static str| {
        let (endpoint, token, path) = (endpoint.clone(), token.clone(), path.clone());
        async move {
            run_words(&[
                "grpc-frame",
                "--call",
                call,
                "--namespace",
                ns,
                "--id",
                "7",
                "--out",
                &path,
                "--check",
                &endpoint,
                "--token",
                &token,
            ])
            .await
        }
    };
    assert!(matches!(frame("put-items", "lt/frames").await?, Outcome::Written));
    let body = std::fs::read(&file)?;
    assert_eq!(body[0], 0, "not compressed");
    assert_eq!(u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize, body.len() - 5);
    assert!(matches!(frame("get-items", "lt/frames").await?, Outcome::Written));
    let e = frame("get-items", "lt/nowhere").await.expect_err("an unknown namespace");
    assert!(format!("{e:#}").contains("check"), "{e:#}");
    Ok(())
}

/// `pgbench-script`: the plugin's read and upsert run by pgbench as single
/// statements, against the tables the `pg:` baseline creates; the upsert
/// writes one record per client, each write newer than the last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_runs_the_plugins_statements() -> anyhow::Result<()> {
    let Some(server) = tokio::task::spawn_blocking(prism_testkit::postgres::PostgresServer::start_or_skip).await??
    else {
        eprintln!("skipped: {}", prism_testkit::postgres::skip_reason());
        return Ok(());
    };
    // On PATH (Debian's wrapper), else beside the server's binaries.
    let on_path = std::env::var_os("PATH")
        .and_then(|path| std::env::split_paths(&path).map(|d| d.join("pgbench")).find(|p| p.is_file()));
    let pgbench = on_path
        .or_else(|| prism_testkit::postgres::find_binaries().map(|dir| dir.join("pgbench")).filter(|p| p.is_file()));
    let Some(pgbench) = pgbench else {
        anyhow::ensure!(
            !prism_testkit::postgres::servers_required(),
            "pgbench is missing: apt-get install -y postgresql-client"
        );
        eprintln!("skipped: pgbench is not installed");
        return Ok(());
    };
    let dsn = server.dsn();
    // Creates the tables, and the record the read reads.
    prism_loadtest::pg::PgKv::connect(&dsn, 1).await?.put("0", b"", b"value").await?;
    let dir = tempfile::tempdir()?;
    for scenario in ["kv-get", "kv-put"] {
        let script = dir.path().join(format!("{scenario}.sql"));
        let out = Process::new(env!("CARGO_BIN_EXE_prism-loadtest"))
            .args(["pgbench-script", "--scenario", scenario, "--out"])
            .arg(&script)
            .output()?;
        anyhow::ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let defines: Vec<String> = String::from_utf8(out.stdout)?.lines().map(str::to_owned).collect();
        let run = Process::new(&pgbench)
            .args(["-n", "-M", "extended", "-c", "2", "-t", "20", "-f"])
            .arg(&script)
            .args(&defines)
            .args(["-h", "127.0.0.1", "-p", &server.port().to_string(), "-U", "postgres", "postgres"])
            .output()?;
        let report = String::from_utf8_lossy(&run.stdout);
        anyhow::ensure!(
            run.status.success() && report.contains("number of failed transactions: 0"),
            "{scenario}: {report} {}",
            String::from_utf8_lossy(&run.stderr)
        );
    }
    let (client, connection) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    let rows = client
        .query("SELECT id, value FROM prism_loadtest_items WHERE id IN ('1000'::bytea, '1001'::bytea) ORDER BY id", &[])
        .await?;
    let written: Vec<(Vec<u8>, Vec<u8>)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(written.len(), 2, "one record per pgbench client");
    assert!(written.iter().all(|(_, v)| v.len() == 100), "the value of --value-size bytes");
    Ok(())
}

/// The metadata scenario against a real control plane: every namespace is
/// created (no lost race to retry: commits in one tenant no longer
/// conflict), a new watcher's snapshot holds them all, and each probe's
/// delta reaches a watcher.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metadata_scenario_creates_reads_the_snapshot_and_times_deltas() -> anyhow::Result<()> {
    let cp = prism_testkit::ControlPlaneHandle::start().await?;
    let args = prism_loadtest::namespaces::NamespacesArgs {
        control_plane: cp.endpoint(),
        token: None,
        count: 300,
        tenants: 3,
        concurrency: 32,
        tenant_prefix: "meta".into(),
        prefix: "ns".into(),
        abstraction: prism_loadtest::namespaces::Kind::KeyValue,
        shared: false,
        join_shard: None,
        snapshot: true,
        watch_probes: 5,
    };
    let result = prism_loadtest::namespaces::run(&args).await?;
    assert_eq!((result.created, result.retries), (300, 0));
    let snapshot = result.snapshot.expect("asked for");
    assert_eq!(snapshot.namespaces, 300);
    assert!(snapshot.bytes > 300 * 20 && snapshot.messages >= 1, "{snapshot:?}");
    let delta = result.delta_us.expect("asked for");
    assert!(delta[0] >= 1 && delta[0] <= delta[2], "{delta:?}");
    // Run again on the same names: each already exists and counts as
    // created, so a run can be resumed.
    let again = prism_loadtest::namespaces::run(&prism_loadtest::namespaces::NamespacesArgs {
        snapshot: false,
        watch_probes: 0,
        ..args
    })
    .await?;
    assert_eq!(again.created, 300);
    Ok(())
}

/// The rebalance scenario: shared namespaces over two static shards, then
/// a third joins; every namespace it wins arrives at the watcher, in
/// commits of at most the control plane's bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rebalance_scenario_follows_a_joining_shard_commit_by_commit() -> anyhow::Result<()> {
    use prism_control_plane::registry::SETTLE_BATCH;
    let config = prism_control_plane::ControlPlaneConfig {
        shards: vec!["s-a".into(), "s-b".into()],
        ..prism_control_plane::ControlPlaneConfig::default()
    };
    let cp = prism_testkit::ControlPlaneHandle::start_with(config).await?;
    let args = prism_loadtest::namespaces::NamespacesArgs {
        control_plane: cp.endpoint(),
        token: None,
        count: 3500,
        tenants: 7,
        concurrency: 32,
        tenant_prefix: "move".into(),
        prefix: "ns".into(),
        abstraction: prism_loadtest::namespaces::Kind::KeyValue,
        shared: true,
        join_shard: Some("s-c".into()),
        snapshot: false,
        watch_probes: 0,
    };
    let r = prism_loadtest::namespaces::run(&args).await?.rebalance.expect("asked for");
    // About a third of them: more than one commit's worth.
    assert!((1000..=1400).contains(&r.moved), "{r:?}");
    assert!(r.largest_commit <= SETTLE_BATCH as u64, "{r:?}");
    assert!(r.commits >= r.moved.div_ceil(SETTLE_BATCH as u64), "{r:?}");
    assert!(r.lag_us[0] >= 1 && r.lag_us[0] <= r.lag_us[2], "{r:?}");
    Ok(())
}
