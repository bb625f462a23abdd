//! End-to-end: the real `prism` binary against an in-process control plane
//! with shards `shard-0` and `shard-1` (no gateway runs, so namespaces stay
//! PROVISIONING unless a test reports for their shard).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, ensure};
use prism_control_plane::ControlPlaneConfig;
use prism_proto::control::{GetNamespaceRequest, NamespaceStatus, ReportNamespaceStatusRequest};
use prism_testkit::{ControlPlaneHandle, eventually};
use serde_json::Value;

const PRISM: &str = env!("CARGO_BIN_EXE_prism");

async fn start() -> anyhow::Result<ControlPlaneHandle> {
    let shards = vec!["shard-0".to_owned(), "shard-1".to_owned()];
    ControlPlaneHandle::start_with(ControlPlaneConfig { shards, ..ControlPlaneConfig::default() }).await
}

/// A finished `prism` run.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(self) -> anyhow::Result<Self> {
        ensure!(self.code == Some(0), "prism failed ({:?}): {}", self.code, self.stderr);
        Ok(self)
    }

    /// Fails unless the run exited with `code` and its stderr holds `needle`.
    fn failed(self, code: i32, needle: &str) -> anyhow::Result<Self> {
        ensure!(self.code == Some(code), "expected exit {code}, got {:?}: {}{}", self.code, self.stdout, self.stderr);
        ensure!(self.stderr.contains(needle), "stderr lacks {needle:?}: {}", self.stderr);
        Ok(self)
    }

    fn json(&self) -> anyhow::Result<Value> {
        serde_json::from_str(&self.stdout).with_context(|| format!("not JSON: {}", self.stdout))
    }
}

/// A `prism --endpoint <endpoint>` command with a clean environment.
fn command(endpoint: &str) -> Command {
    let mut cmd = Command::new(PRISM);
    cmd.arg("--endpoint").arg(endpoint);
    for var in ["PRISM_TOKEN", "PRISM_ENDPOINT", "PRISM_DATA_DIR", "RUST_LOG"] {
        cmd.env_remove(var);
    }
    cmd
}

/// Runs `prism` to completion off the async runtime.
async fn prism(endpoint: String, args: &[&str]) -> anyhow::Result<Run> {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let output = tokio::task::spawn_blocking(move || command(&endpoint).args(&args).output()).await??;
    Ok(Run {
        code: output.status.code(),
        stdout: String::from_utf8(output.stdout)?,
        stderr: String::from_utf8(output.stderr)?,
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_commands_end_to_end() -> anyhow::Result<()> {
    let cp = start().await?;
    let ep = || cp.endpoint();

    prism(ep(), &["tenant", "create", "acme", "--admin", "alice", "--profile", "pro"]).await?.ok()?;
    let created =
        prism(ep(), &["namespace", "create", "acme/profiles", "--abstraction", "key-value", "--backend", "embedded"])
            .await?
            .ok()?;
    ensure!(created.stdout.starts_with("NAME"), "a table: {}", created.stdout);
    ensure!(created.stdout.contains("acme/profiles"), "{}", created.stdout);

    let list = prism(ep(), &["namespace", "list", "--output", "json"]).await?.ok()?.json()?;
    let namespaces = list["namespaces"].as_array().context("namespaces")?;
    let ns = namespaces.iter().find(|n| n["name"] == "acme/profiles").context("acme/profiles listed")?;
    assert_eq!(ns["status"], "PROVISIONING");
    assert!(ns["shard_id"] == "shard-0" || ns["shard_id"] == "shard-1", "{ns}");
    assert_eq!(ns["spec"]["abstraction"], "KEY_VALUE");
    assert_eq!(ns["spec"]["backend"], "EMBEDDED");

    // Refusals print the gRPC code, message and field violations, exit 1.
    prism(ep(), &["namespace", "create", "acme/profiles", "--abstraction", "key-value"])
        .await?
        .failed(1, "ALREADY_EXISTS")?;
    let kafka = ["namespace", "create", "acme/x", "--abstraction", "key-value", "--backend", "kafka"];
    let kafka = prism(ep(), &[&kafka[..], &["--bootstrap-server", "localhost:9092"]].concat()).await?;
    kafka.failed(1, "INVALID_ARGUMENT")?.failed(1, "field spec.backend:")?;
    prism(ep(), &["namespace", "create", "Acme/x", "--abstraction", "key-value"]).await?.failed(1, "field name:")?;
    // Usage errors are found before anything is sent, exit 2.
    prism(ep(), &["namespace", "create", "acme/y", "--abstraction", "key-value", "--dsn", "postgres://db/x"])
        .await?
        .failed(2, "--dsn")?;
    prism(ep(), &["namespace", "create", "acme/y", "--file", "x.yaml", "--backend", "embedded"])
        .await?
        .failed(2, "--file")?;

    // A spec file names the namespace itself.
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("user-profiles.yaml");
    std::fs::write(
        &file,
        "namespace: acme/user-profiles\n\
         abstraction: keyvalue\n\
         backend: postgres\n\
         capacity: { estimated_read_rps: 5000, estimated_write_rps: 500, estimated_data_size_gb: 100 }\n\
         policies: { retention_days: null, consistency: strong, cache_enabled: true, cache_ttl_seconds: 300 }\n\
         access:\n  owners: [ user-service-team ]\n  consumers:\n    - { principal: user-api, access: read-write }\n\
         placement: { pinned_shard: shard-1 }\n\
         backend_config:\n  postgres: { dsn: \"postgres://prod-postgres-1/prism\", pool_size: 20 }\n",
    )?;
    let path = file.to_str().context("utf-8 path")?;
    let from_file = prism(ep(), &["namespace", "create", "--file", path, "-o", "json"]).await?.ok()?.json()?;
    assert_eq!(from_file["name"], "acme/user-profiles");
    assert_eq!(from_file["shard_id"], "shard-1");
    assert_eq!(from_file["spec"]["policies"]["cache_ttl"], "5m");
    assert_eq!(from_file["spec"]["backend_config"]["postgres"]["pool_size"], 20);
    assert_eq!(from_file["spec"]["access"]["consumers"][0]["level"], "READ_WRITE");

    // Updates keep what they do not name.
    let updated = prism(ep(), &["namespace", "update", "acme/user-profiles", "--cache-ttl", "60s", "-o", "json"])
        .await?
        .ok()?
        .json()?;
    assert_eq!(updated["spec"]["policies"]["cache_ttl"], "1m");
    assert_eq!(updated["spec"]["policies"]["cache_enabled"], true);
    assert_eq!(updated["spec"]["access"]["owners"][0], "user-service-team");
    let granted = prism(ep(), &["namespace", "grant", "acme/user-profiles", "bob", "--access", "read", "-o", "json"])
        .await?
        .ok()?
        .json()?;
    assert_eq!(granted["spec"]["access"]["consumers"][1]["principal"], "bob");
    let tenant =
        prism(ep(), &["tenant", "update", "acme", "--display-name", "Acme Corp", "-o", "json"]).await?.ok()?.json()?;
    assert_eq!((&tenant["display_name"], &tenant["admins"][0]), (&"Acme Corp".into(), &"alice".into()));
    assert_eq!(tenant["quotas"]["profile"], "PRO");

    prism(ep(), &["tenant", "suspend", "acme", "--reason", "unpaid invoice"]).await?.ok()?;
    let tenant = prism(ep(), &["tenant", "get", "acme", "--output", "json"]).await?.ok()?.json()?;
    assert_eq!(tenant["state"], "SUSPENDED");
    assert_eq!(tenant["state_reason"], "unpaid invoice");
    prism(ep(), &["namespace", "create", "acme/later", "--abstraction", "key-value"])
        .await?
        .failed(1, "FAILED_PRECONDITION")?;
    let tenants = prism(ep(), &["tenant", "list"]).await?.ok()?;
    ensure!(tenants.stdout.lines().any(|l| l.starts_with("acme ") && l.contains("SUSPENDED")), "{}", tenants.stdout);

    let audit = prism(ep(), &["audit", "list", "--output", "json", "--since", "1h"]).await?.ok()?.json()?;
    let events = audit["events"].as_array().context("events")?;
    let has = |action: &str, target: &str, result: &str| {
        events.iter().any(|e| e["action"] == action && e["target"] == target && e["result"] == result)
    };
    assert!(has("CreateTenant", "acme", "ok"), "{audit}");
    assert!(has("CreateNamespace", "acme/profiles", "ok"), "{audit}");
    assert!(has("CreateNamespace", "acme/profiles", "already_exists"), "{audit}");
    assert!(has("SuspendTenant", "acme", "ok"), "{audit}");
    let filtered = prism(ep(), &["audit", "list", "--action", "CreateTenant", "-o", "json"]).await?.ok()?.json()?;
    assert_eq!(filtered["events"].as_array().map(Vec::len), Some(1), "{filtered}");
    Ok(())
}

/// Reports `status` for a namespace as its owning shard would, once the
/// namespace exists.
async fn report(cp: &ControlPlaneHandle, name: &str, status: NamespaceStatus, reason: &str) -> anyhow::Result<()> {
    let mut client = cp.client().await?;
    let ns = eventually(Duration::from_secs(10), || {
        let mut client = client.clone();
        async move { Ok(client.get_namespace(GetNamespaceRequest { name: name.into() }).await?.into_inner()) }
    })
    .await?;
    let req = ReportNamespaceStatusRequest {
        name: name.into(),
        shard_id: ns.shard_id,
        create_revision: ns.create_revision,
        status: status as i32,
        reason: reason.into(),
        ..Default::default()
    };
    client.report_namespace_status(req).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn create_wait_ends_on_active_degraded_or_timeout() -> anyhow::Result<()> {
    let cp = start().await?;
    prism(cp.endpoint(), &["tenant", "create", "acme"]).await?.ok()?;
    let create = |name: &'static str, timeout: &'static str| {
        let endpoint = cp.endpoint();
        tokio::spawn(async move {
            let args = ["namespace", "create", name, "--abstraction", "key-value", "--wait", "--timeout", timeout];
            prism(endpoint, &[&args[..], &["-o", "json"]].concat()).await
        })
    };

    let ready = create("acme/ready", "30s");
    report(&cp, "acme/ready", NamespaceStatus::Active, "").await?;
    assert_eq!(ready.await??.ok()?.json()?["status"], "ACTIVE");

    let broken = create("acme/broken", "30s");
    report(&cp, "acme/broken", NamespaceStatus::Degraded, "cannot reach the backend").await?;
    broken.await??.failed(1, "DEGRADED: cannot reach the backend")?;

    create("acme/slow", "300ms").await??.failed(1, "is not ACTIVE after 300ms; it is PROVISIONING")?;
    Ok(())
}

/// Kills the child when dropped, so a failing test leaves no process.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_prints_the_snapshot_then_each_change() -> anyhow::Result<()> {
    let cp = start().await?;
    prism(cp.endpoint(), &["tenant", "create", "acme"]).await?.ok()?;
    let mut child = command(&cp.endpoint())
        .args(["namespace", "watch", "--output", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let _child = KillOnDrop(child);
    let (lines, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::task::spawn_blocking(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    // Next JSON line from the watcher, bounded so a silent watcher fails the test.
    let mut next = async || -> anyhow::Result<Value> {
        let line = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await?.context("watch ended")?;
        serde_json::from_str(&line).with_context(|| format!("not JSON: {line}"))
    };

    let snapshot = next().await?;
    assert_eq!(snapshot["snapshot"]["last"], true, "{snapshot}");
    assert_eq!(snapshot["snapshot"]["tenants"][0]["id"], "acme", "{snapshot}");

    prism(cp.endpoint(), &["namespace", "create", "acme/events", "--abstraction", "time-series"]).await?.ok()?;
    let delta = next().await?;
    let change = &delta["delta"]["changes"][0]["namespace"];
    assert_eq!(change["name"], "acme/events", "{delta}");
    assert_eq!(change["spec"]["abstraction"], "TIME_SERIES", "{delta}");
    assert!(delta["delta"]["revision"].as_u64() > snapshot["snapshot"]["revision"].as_u64(), "{delta}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dedicated_pin_round_trips_and_keeps_other_pins_off_its_shard() -> anyhow::Result<()> {
    let cp = start().await?;
    let ep = || cp.endpoint();
    prism(ep(), &["tenant", "create", "acme"]).await?.ok()?;
    let create = ["namespace", "create", "acme/solo", "--abstraction", "key-value", "--pin", "shard-1", "--dedicated"];
    let created = prism(ep(), &[&create[..], &["-o", "json"]].concat()).await?.ok()?.json()?;
    assert_eq!(created["spec"]["placement"]["pinned_shard"], "shard-1", "{created}");
    assert_eq!(created["spec"]["placement"]["dedicated"], true, "{created}");
    assert_eq!(created["shard_id"], "shard-1", "{created}");
    let table = prism(ep(), &["namespace", "get", "acme/solo"]).await?.ok()?.stdout;
    ensure!(table.lines().nth(1).is_some_and(|l| l.contains("shard-1(dedicated)")), "the SHARD column: {table}");

    // Another pin to it, and a dedication without a pin, are refused by
    // the control plane naming the field.
    prism(ep(), &["namespace", "create", "acme/other", "--abstraction", "key-value", "--pin", "shard-1"])
        .await?
        .failed(1, "spec.placement.pinned_shard")?
        .failed(1, "acme/solo")?;
    prism(ep(), &["namespace", "create", "acme/loose", "--abstraction", "key-value", "--dedicated"])
        .await?
        .failed(1, "spec.placement.dedicated")?;

    // `--dedicated false` shares it again and keeps the pin.
    let updated =
        prism(ep(), &["namespace", "update", "acme/solo", "--dedicated", "false", "-o", "json"]).await?.ok()?.json()?;
    assert_eq!(updated["spec"]["placement"]["dedicated"], false, "{updated}");
    assert_eq!(updated["spec"]["placement"]["pinned_shard"], "shard-1", "{updated}");
    prism(ep(), &["namespace", "create", "acme/other", "--abstraction", "key-value", "--pin", "shard-1"])
        .await?
        .ok()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn pins_round_trip_and_shard_list_prints_the_servers_answer() -> anyhow::Result<()> {
    let cp = start().await?;
    let ep = || cp.endpoint();
    prism(ep(), &["tenant", "create", "acme"]).await?.ok()?;
    for shard in ["shard-0", "shard-1"] {
        let name = format!("acme/on-{shard}");
        let created =
            prism(ep(), &["namespace", "create", &name, "--abstraction", "key-value", "--pin", shard, "-o", "json"])
                .await?
                .ok()?
                .json()?;
        assert_eq!(created["spec"]["placement"]["pinned_shard"], shard, "{created}");
        assert_eq!(created["shard_id"], shard, "the pin overrides the hash");
        let got = prism(ep(), &["namespace", "get", &name, "-o", "json"]).await?.ok()?.json()?;
        assert_eq!(got["spec"]["placement"]["pinned_shard"], shard, "stored: {got}");
        let table = prism(ep(), &["namespace", "get", &name]).await?.ok()?.stdout;
        ensure!(table.lines().nth(1).is_some_and(|l| l.contains(shard)), "the SHARD column: {table}");
    }

    // The configured (static) shards are listed, each owning its pinned
    // namespace.
    let listed = prism(ep(), &["shard", "list"]).await?.ok()?.stdout;
    ensure!(listed.starts_with("SHARD"), "a table: {listed}");
    for shard in ["shard-0", "shard-1"] {
        ensure!(listed.lines().any(|l| l.starts_with(shard)), "{shard} listed: {listed}");
    }
    let json = prism(ep(), &["shard", "list", "-o", "json"]).await?.ok()?.json()?;
    assert_eq!(json["shards"].as_array().map(Vec::len), Some(2), "{json}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn schema_set_get_and_history() -> anyhow::Result<()> {
    let cp = start().await?;
    let ep = || cp.endpoint();
    prism(ep(), &["tenant", "create", "acme"]).await?.ok()?;
    prism(ep(), &["namespace", "create", "acme/events", "--abstraction", "time-series", "--backend", "embedded"])
        .await?
        .ok()?;

    let dir = tempfile::tempdir()?;
    let write = |name: &str, text: &str| -> anyhow::Result<String> {
        let file = dir.path().join(name);
        std::fs::write(&file, text)?;
        Ok(file.to_str().context("utf-8 path")?.to_owned())
    };
    let v1 = write(
        "v1.json",
        r#"{ "items": [ { "key": "temp", "type": "float64", "required": true },
                        { "key": "doc", "type": "json", "json_schema": { "type": "object" } } ],
             "required_tags": [ "region" ], "allowed_tags": [ "host" ] }"#,
    )?;
    let set = prism(ep(), &["schema", "set", "acme/events", "--file", &v1, "--compatibility", "full"]).await?.ok()?;
    ensure!(set.stdout.contains("acme/events schema version 1 set (FULL compatibility)"), "{}", set.stdout);

    // A version that breaks FULL: refused, naming what breaks, exit 1.
    let breaking = write(
        "v2.json",
        r#"{ "items": [ { "key": "temp", "type": "utf8", "required": true } ], "required_tags": [ "region" ] }"#,
    )?;
    prism(ep(), &["schema", "set", "acme/events", "-f", &breaking])
        .await?
        .failed(1, "FAILED_PRECONDITION")?
        .failed(1, "item \"temp\" changes type from float64 to utf8")?;
    // A file that is not a schema is a local error.
    let typo = write("typo.json", r#"{ "items": [ { "key": "t", "type": "float" } ] }"#)?;
    prism(ep(), &["schema", "set", "acme/events", "-f", &typo]).await?.failed(1, "is not one of")?;

    // A compatible version: one optional item more.
    let v2 = write(
        "v2ok.json",
        r#"{ "items": [ { "key": "temp", "type": "float64", "required": true },
                        { "key": "doc", "type": "json", "json_schema": { "type": "object" } },
                        { "key": "note", "type": "utf8" } ],
             "required_tags": [ "region" ], "allowed_tags": [ "host" ] }"#,
    )?;
    prism(ep(), &["schema", "set", "acme/events", "-f", &v2]).await?.ok()?;

    let latest = prism(ep(), &["schema", "get", "acme/events", "-o", "json"]).await?.ok()?.json()?;
    assert_eq!(latest["compatibility"], "FULL");
    assert_eq!(latest["version"]["version"], 2);
    assert_eq!(latest["version"]["items"][2]["key"], "note");
    assert_eq!(latest["version"]["items"][1]["json_schema"]["type"], "object");
    let table = prism(ep(), &["schema", "get", "acme/events", "1"]).await?.ok()?;
    ensure!(table.stdout.starts_with("acme/events schema version 1 (FULL compatibility)"), "{}", table.stdout);
    ensure!(table.stdout.contains("temp") && table.stdout.contains("float64"), "{}", table.stdout);
    ensure!(!table.stdout.contains("note"), "{}", table.stdout);

    let history = prism(ep(), &["schema", "history", "acme/events", "-o", "json"]).await?.ok()?.json()?;
    let versions: Vec<&Value> = history["versions"].as_array().context("versions")?.iter().collect();
    assert_eq!(versions.iter().map(|v| v["version"].as_u64()).collect::<Vec<_>>(), [Some(1), Some(2)]);
    let table = prism(ep(), &["schema", "history", "acme/events"]).await?.ok()?;
    ensure!(table.stdout.lines().nth(1).is_some_and(|l| l.starts_with("VERSION")), "{}", table.stdout);

    prism(ep(), &["schema", "get", "acme/none"]).await?.failed(1, "NOT_FOUND")?;
    Ok(())
}

/// `namespace migrate`: refusals name what is wrong (a usage error for
/// the flags, the control plane's reason otherwise) and `status` of a
/// namespace with none says so. A migration that runs is followed
/// through real processes in `migration_faults.rs`.
#[tokio::test(flavor = "multi_thread")]
async fn migrate_refusals_name_the_cause_and_status_says_when_none_runs() -> anyhow::Result<()> {
    let cp = start().await?;
    let ep = || cp.endpoint();
    prism(ep(), &["tenant", "create", "acme"]).await?.ok()?;
    prism(ep(), &["namespace", "create", "acme/a", "--abstraction", "key-value", "--pin", "shard-0"]).await?.ok()?;

    prism(ep(), &["namespace", "migrate", "acme/a"]).await?.failed(2, "nothing to migrate to")?;
    // The namespace is embedded: settings of PostgreSQL need --backend.
    prism(ep(), &["namespace", "migrate", "acme/a", "--dsn", "host=db"]).await?.failed(2, "--dsn")?;
    prism(ep(), &["namespace", "migrate", "acme/a", "--pin", "shard-1"])
        .await?
        .failed(1, "a migration starts from an ACTIVE namespace")?;
    report(&cp, "acme/a", NamespaceStatus::Active, "").await?;
    prism(ep(), &["namespace", "migrate", "acme/a", "--pin", "shard-9"]).await?.failed(1, "target.pinned_shard")?;
    // No gateway of either shard takes part in migrations.
    prism(ep(), &["namespace", "migrate", "acme/a", "--pin", "shard-1"]).await?.failed(1, "no instance registered")?;

    let none = prism(ep(), &["namespace", "migrate", "status", "acme/a"]).await?.ok()?;
    ensure!(none.stdout.starts_with("acme/a: no migration running; it is embedded on shard-0"), "{}", none.stdout);
    let none = prism(ep(), &["namespace", "migrate", "status", "acme/a", "-o", "json"]).await?.ok()?.json()?;
    assert_eq!((none["outcome"].as_str(), none["namespace"]["name"].as_str()), (Some("none"), Some("acme/a")));
    prism(ep(), &["namespace", "migrate", "status", "acme/nope"]).await?.failed(1, "acme/nope")?;
    prism(ep(), &["namespace", "migrate", "abort", "acme/a"]).await?.failed(1, "has no migration running")?;
    Ok(())
}
