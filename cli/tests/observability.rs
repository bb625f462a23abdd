//! Observability of the `prism` binary as an operator runs it: the
//! metrics listener a flag names, OpenTelemetry export switched on by the
//! standard variables (and the spans reaching a real OTLP receiver), and
//! startup errors that name an unusable variable or address.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use prism_client::proto::control::{
    Abstraction, Backend, CreateNamespaceRequest, CreateTenantRequest, GetNamespaceRequest, NamespaceSpec,
    NamespaceStatus,
};
use prism_client::proto::kv;
use prism_testkit::otlp::OtlpReceiver;
use prism_testkit::{TEST_SECRET, admin_token, eventually, http};

const PRISM: &str = env!("CARGO_BIN_EXE_prism");
const WAIT: Duration = Duration::from_secs(60);

/// A `prism` server process, killed when dropped, and the lines it
/// printed before serving.
struct Process {
    child: Child,
    lines: Vec<String>,
}

impl Process {
    /// Starts `prism args…` with `env` and reads `lines` lines of stdout.
    fn start(args: &[&str], env: &[(&str, &str)], data_dir: &Path, lines: usize) -> anyhow::Result<Self> {
        let mut child = Command::new(PRISM)
            .args(args)
            .envs(env.iter().copied())
            .env("PRISM_DATA_DIR", data_dir)
            .env("RUST_LOG", "warn")
            .env_remove("PRISM_CONFIG")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawn prism")?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut reader = BufReader::new(stdout);
        let mut out = Vec::new();
        for _ in 0..lines {
            let mut line = String::new();
            reader.read_line(&mut line)?;
            out.push(line.trim().to_owned());
        }
        Ok(Self { child, lines: out })
    }

    /// The address after `marker` in the printed lines.
    fn address(&self, marker: &str) -> anyhow::Result<String> {
        let found = self.lines.iter().find_map(|l| l.split_once(marker).map(|(_, rest)| rest.to_owned()));
        let Some(rest) = found else { bail!("no {marker:?} in {:?}", self.lines) };
        Ok(rest.trim_start_matches("http://").split(['/', ' ']).next().unwrap_or_default().to_owned())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `prism control-plane` and `prism gateway` with `--metrics-listen`
/// print their metrics URL and serve it; a gateway started with
/// `OTEL_EXPORTER_OTLP_ENDPOINT` exports its request spans, continuing
/// the caller's `traceparent`, to a real receiver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_serve_metrics_and_export_traces_as_the_environment_says() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let receiver = OtlpReceiver::start().await?;
    let cp = Process::start(
        &[
            "control-plane",
            "--insecure-no-auth",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--shard",
            "shard-0",
        ],
        &[],
        &dir.path().join("cp"),
        2,
    )?;
    let cp_addr = cp.address(" serving on ")?;
    let cp_metrics = cp.address("metrics on ")?;
    let (status, text) = http::get(&cp_metrics, "/metrics").await?;
    assert_eq!(status, 200);
    assert!(text.contains("prism_control_plane_revision "), "{text}");

    let endpoint = receiver.endpoint();
    let gw = Process::start(
        &[
            "gateway",
            "--shard-id",
            "shard-0",
            "--control-plane",
            &cp_addr,
            "--listen",
            "127.0.0.1:0",
            "--auth-secret",
            TEST_SECRET,
            "--metrics-listen",
            "127.0.0.1:0",
        ],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint), ("OTEL_BSP_SCHEDULE_DELAY", "100")],
        &dir.path().join("gw"),
        2,
    )?;
    let gw_addr = gw.address(" serving on ")?;
    let gw_metrics = gw.address("metrics on ")?;

    let mut control = prism_client::control_plane(&cp_addr, None).await?;
    control.create_tenant(CreateTenantRequest { tenant_id: "acme".into(), ..Default::default() }).await?;
    let spec = NamespaceSpec {
        abstraction: Abstraction::KeyValue as i32,
        backend: Backend::Embedded as i32,
        ..Default::default()
    };
    control.create_namespace(CreateNamespaceRequest { name: "acme/ops".into(), spec: Some(spec) }).await?;
    eventually(WAIT, || {
        let mut control = control.clone();
        async move {
            let ns = control.get_namespace(GetNamespaceRequest { name: "acme/ops".into() }).await?.into_inner();
            anyhow::ensure!(ns.status == NamespaceStatus::Active as i32, "{}", ns.status_reason);
            Ok(())
        }
    })
    .await?;
    let mut client = prism_client::key_value(&gw_addr, Some(&admin_token())).await?;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    eventually(WAIT, || {
        let mut client = client.clone();
        async move {
            let mut request = tonic::Request::new(kv::PutItemsRequest {
                namespace: "acme/ops".into(),
                id: "r".into(),
                items: vec![kv::Item { key: b"k".to_vec(), value: b"v".to_vec(), ttl: None }],
                idempotency_token: None,
            });
            request.metadata_mut().insert("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01").parse()?);
            client.put_items(request).await?;
            Ok(())
        }
    })
    .await?;
    client
        .get_items(kv::GetItemsRequest { namespace: "acme/ops".into(), id: "r".into(), ..Default::default() })
        .await?;
    let span = eventually(WAIT, || async {
        receiver
            .spans()
            .into_iter()
            .find(|s| s.trace_id() == trace_id && s.attribute("rpc.method").as_deref() == Some("PutItems"))
            .context("no PutItems span of the trace yet")
    })
    .await?;
    assert_eq!(span.service.as_deref(), Some("prism-gateway"));
    assert_eq!(span.parent_span_id(), "00f067aa0ba902b7");
    let (status, text) = http::get(&gw_metrics, "/metrics").await?;
    assert_eq!(status, 200);
    let ok = [("rpc", "GetItems"), ("namespace", "acme/ops"), ("code", "OK")];
    assert_eq!(http::sample(&text, "prism_gateway_requests_total", &ok), Some(1.0), "{text}");
    assert_eq!(http::get(&gw_metrics, "/readyz").await?.0, 200);
    Ok(())
}

/// Runs `prism args…` with `env` to its end: exit code and stderr.
fn run(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<(i32, String)> {
    let out = Command::new(PRISM).args(args).envs(env.iter().copied()).env_remove("PRISM_CONFIG").output()?;
    Ok((out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned()))
}

/// An unusable `OTEL_*` value or metrics address stops a server at start
/// with an error naming it (exit status 2), before it serves anything.
#[test]
fn unusable_settings_stop_a_server_at_start_naming_them() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().display().to_string();
    let gateway = ["gateway", "--shard-id", "s0", "--listen", "127.0.0.1:0", "--allow-anonymous", "--data-dir", &data];
    for (name, value) in [
        ("OTEL_TRACES_SAMPLER", "sometimes"),
        ("OTEL_TRACES_SAMPLER_ARG", "2"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "not a url"),
        ("OTEL_RESOURCE_ATTRIBUTES", "novalue"),
    ] {
        let (code, stderr) = run(&gateway, &[(name, value), ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "")])?;
        assert_eq!(code, 2, "{name}={value}: {stderr}");
        assert!(stderr.contains(name), "{name}={value}: {stderr}");
    }
    let cp = [
        "control-plane",
        "--insecure-no-auth",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        &data,
        "--metrics-listen",
        "localhost",
    ];
    let (code, stderr) = run(&cp, &[])?;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("metrics_listen"), "{stderr}");
    let mut gateway_bad_metrics = gateway.to_vec();
    gateway_bad_metrics.extend(["--metrics-listen", "127.0.0.1:x"]);
    let (code, stderr) = run(&gateway_bad_metrics, &[])?;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("metrics_listen"), "{stderr}");
    Ok(())
}
