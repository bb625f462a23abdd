//! `prism kv` end to end: the real binary against an in-process control
//! plane and two gateway shards.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, ensure};
use prism_testkit::{Cluster, admin_token, eventually};
use serde_json::Value;

const PRISM: &str = env!("CARGO_BIN_EXE_prism");

/// Runs `prism` with `--endpoint` and the admin token, off the runtime;
/// returns (exit code, stdout, stderr).
async fn prism(endpoint: &str, args: &[&str]) -> anyhow::Result<(i32, String, String)> {
    let mut cmd = Command::new(PRISM);
    cmd.arg("--endpoint").arg(endpoint).args(args).env("PRISM_TOKEN", admin_token());
    for var in ["PRISM_ENDPOINT", "PRISM_GATEWAY", "PRISM_DATA_DIR", "RUST_LOG"] {
        cmd.env_remove(var);
    }
    let out = tokio::task::spawn_blocking(move || cmd.output()).await??;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

async fn ok(endpoint: &str, args: &[&str]) -> anyhow::Result<String> {
    let (code, out, err) = prism(endpoint, args).await?;
    ensure!(code == 0, "prism {args:?} exited {code}: {err}");
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_created_with_the_cli_is_served_at_once() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let cp = cluster.control_plane.endpoint();
    ok(&cp, &["tenant", "create", "acme"]).await?;
    ok(&cp, &["namespace", "create", "acme/profiles", "--abstraction", "key-value", "--wait", "--timeout", "20s"])
        .await?;
    let ns: Value = serde_json::from_str(&ok(&cp, &["namespace", "get", "acme/profiles", "-o", "json"]).await?)?;
    let shard = ns["shard_id"].as_str().context("shard_id")?;
    let gateway = cluster.gateway(shard).context("owning gateway")?.endpoint();

    // The owner serves the namespace as soon as the ACTIVE delta reaches it
    // (one watch delivery): a bounded poll, no sleep.
    eventually(Duration::from_secs(5), || async {
        ok(&cp, &["kv", "put", "acme/profiles", "user-1", "name=Ada", "=plain", "--gateway", &gateway]).await.map(drop)
    })
    .await?;

    let got: Value = serde_json::from_str(
        &ok(&cp, &["kv", "get", "acme/profiles", "user-1", "--gateway", &gateway, "-o", "json"]).await?,
    )?;
    let items = got["items"].as_array().context("items")?;
    let pairs: Vec<(&str, &str)> =
        items.iter().filter_map(|i| Some((i["key"].as_str()?, i["value"].as_str()?))).collect();
    assert_eq!(pairs, [("", "plain"), ("name", "Ada")]);

    let table = ok(&cp, &["kv", "scan", "acme/profiles", "--gateway", &gateway]).await?;
    assert!(table.contains("user-1") && table.contains("Ada"), "{table}");
    ok(&cp, &["kv", "delete", "acme/profiles", "user-1", "--key", "name", "--gateway", &gateway]).await?;
    let got: Value = serde_json::from_str(
        &ok(&cp, &["kv", "get", "acme/profiles", "user-1", "--gateway", &gateway, "-o", "json"]).await?,
    )?;
    assert_eq!(got["items"].as_array().map(Vec::len), Some(1));

    // Refusals print the status and exit non-zero.
    let (code, _, err) = prism(&cp, &["kv", "get", "acme/profiles", "", "--gateway", &gateway]).await?;
    ensure!(code == 1 && err.contains("INVALID_ARGUMENT") && err.contains("id"), "{code}: {err}");
    let (code, _, err) =
        prism(&cp, &["kv", "put", "acme/profiles", "r", "no-equals-sign", "--gateway", &gateway]).await?;
    ensure!(code == 2 && err.contains("KEY=VALUE"), "{code}: {err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prism_ts_writes_reads_and_searches_events() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let cp = cluster.control_plane.endpoint();
    ok(&cp, &["tenant", "create", "acme"]).await?;
    ok(&cp, &["namespace", "create", "acme/plays", "--abstraction", "time-series", "--wait", "--timeout", "20s"])
        .await?;
    let ns: Value = serde_json::from_str(&ok(&cp, &["namespace", "get", "acme/plays", "-o", "json"]).await?)?;
    let gateway = cluster.gateway(ns["shard_id"].as_str().context("shard_id")?).context("owner")?.endpoint();
    let gw = |args: &[&str]| {
        let mut all: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        all.extend(["--gateway".to_owned(), gateway.clone()]);
        all
    };

    eventually(Duration::from_secs(5), || async {
        let args = gw(&[
            "ts",
            "write",
            "acme/plays",
            "user-1",
            "title=Up",
            "--event-id",
            "e1",
            "--time",
            "2m",
            "--tag",
            "kind=play",
        ]);
        ok(&cp, &args.iter().map(String::as_str).collect::<Vec<_>>()).await.map(drop)
    })
    .await?;
    let args = gw(&["ts", "write", "acme/plays", "user-1", "title=Heat", "--event-id", "e2", "--tag", "kind=pause"]);
    ok(&cp, &args.iter().map(String::as_str).collect::<Vec<_>>()).await?;

    let args = gw(&["ts", "read", "acme/plays", "user-1", "--start", "10m", "-o", "json"]);
    let read: Value = serde_json::from_str(&ok(&cp, &args.iter().map(String::as_str).collect::<Vec<_>>()).await?)?;
    let ids: Vec<&str> =
        read["events"].as_array().context("events")?.iter().filter_map(|e| e["event_id"].as_str()).collect();
    assert_eq!(ids, ["e2", "e1"], "newest first");

    let args = gw(&["ts", "search", "acme/plays", "--tag", "kind=play", "-o", "json"]);
    let found: Value = serde_json::from_str(&ok(&cp, &args.iter().map(String::as_str).collect::<Vec<_>>()).await?)?;
    assert_eq!(found["events"].as_array().map(Vec::len), Some(1));

    let args = gw(&["ts", "write", "acme/plays", "user-1", "x=1", "--time", "3h"]);
    let (code, _, err) = prism(&cp, &args.iter().map(String::as_str).collect::<Vec<_>>()).await?;
    ensure!(code == 1 && err.contains("events[0].event_time"), "{code}: {err}");
    Ok(())
}

/// `prism ts` with a schema: `write` encodes an int64, float64 or bool
/// item's text as the schema says, a table shows it as text again, and a
/// value that is not of its type is a local usage error naming the item.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prism_ts_writes_and_shows_typed_items_as_the_schema_says() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let cp = cluster.control_plane.endpoint();
    ok(&cp, &["tenant", "create", "acme"]).await?;
    ok(&cp, &["namespace", "create", "acme/temps", "--abstraction", "time-series", "--wait", "--timeout", "20s"])
        .await?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("schema.json");
    std::fs::write(
        &file,
        r#"{ "items": [ { "key": "temp", "type": "float64", "required": true },
                        { "key": "count", "type": "int64" }, { "key": "ok", "type": "bool" },
                        { "key": "note", "type": "utf8" } ] }"#,
    )?;
    ok(&cp, &["schema", "set", "acme/temps", "-f", file.to_str().context("utf-8 path")?]).await?;
    let ns: Value = serde_json::from_str(&ok(&cp, &["namespace", "get", "acme/temps", "-o", "json"]).await?)?;
    let gateway = cluster.gateway(ns["shard_id"].as_str().context("shard_id")?).context("owner")?.endpoint();
    let run = |args: &[&str]| {
        let mut all: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        all.extend(["--gateway".to_owned(), gateway.clone()]);
        all
    };

    // The owner validates against the schema once its delta arrives.
    eventually(Duration::from_secs(5), || async {
        let args = run(&["ts", "write", "acme/temps", "s1", "temp=21.5", "count=-3", "ok=true", "note=fine"]);
        ok(&cp, &args.iter().map(String::as_str).collect::<Vec<_>>()).await.map(drop)
    })
    .await?;
    let args = run(&["ts", "read", "acme/temps", "s1", "--start", "10m", "-o", "json"]);
    let read: Value = serde_json::from_str(&ok(&cp, &args.iter().map(String::as_str).collect::<Vec<_>>()).await?)?;
    let event = &read["events"][0];
    assert_eq!(event["schema_version"], 1);
    let items = event["items"].as_array().context("items")?;
    let temp = items.iter().find(|i| i["key"] == "temp").context("temp")?;
    // Stored as the schema says: 8 bytes big-endian, kept as bytes in JSON.
    assert_eq!(temp["value_base64"], "QDWAAAAAAAA=", "21.5 as float64");
    let args = run(&["ts", "read", "acme/temps", "s1", "--start", "10m"]);
    let table = ok(&cp, &args.iter().map(String::as_str).collect::<Vec<_>>()).await?;
    for shown in ["temp=21.5", "count=-3", "ok=true", "note=fine"] {
        ensure!(table.contains(shown), "{shown} in {table}");
    }

    let args = run(&["ts", "write", "acme/temps", "s1", "temp=warm"]);
    let (code, _, err) = prism(&cp, &args.iter().map(String::as_str).collect::<Vec<_>>()).await?;
    ensure!(code == 2 && err.contains("item temp") && err.contains("float64"), "{code}: {err}");
    Ok(())
}

/// `prism kv` without `--gateway`: the control plane says which shard owns
/// each namespace and the client routes there. Gateways do not register
/// themselves yet, so the control plane is restarted with static
/// `shard_endpoints` naming them (the gateways keep serving from their
/// last snapshot).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prism_kv_reaches_whichever_shard_owns_the_namespace() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let cp = cluster.control_plane.endpoint();
    ok(&cp, &["tenant", "create", "acme"]).await?;
    let mut revision = 0;
    for shard in ["shard-0", "shard-1"] {
        let name = format!("acme/on-{shard}");
        let args = ["namespace", "create", &name, "--abstraction", "key-value", "--pin", shard, "--wait", "-o", "json"];
        let ns: Value = serde_json::from_str(&ok(&cp, &args).await?)?;
        revision = revision.max(ns["revision"].as_u64().context("revision")?);
    }
    for g in &cluster.gateways {
        g.caught_up(revision).await?;
    }
    let endpoints = ["shard-0", "shard-1"]
        .into_iter()
        .map(|s| Ok((s.to_owned(), vec![cluster.gateway(s).context("gateway")?.endpoint()])))
        .collect::<anyhow::Result<_>>()?;
    let config = prism_control_plane::ControlPlaneConfig {
        shards: vec!["shard-0".into(), "shard-1".into()],
        shard_endpoints: endpoints,
        ..Default::default()
    };
    let Cluster { control_plane, gateways } = cluster;
    let cluster = Cluster { control_plane: control_plane.restart(config).await?, gateways };
    let cp = cluster.control_plane.endpoint();

    for shard in ["shard-0", "shard-1"] {
        let name = format!("acme/on-{shard}");
        ok(&cp, &["kv", "put", &name, "r", &format!("v={shard}")]).await?;
        let got: Value = serde_json::from_str(&ok(&cp, &["kv", "get", &name, "r", "-o", "json"]).await?)?;
        assert_eq!(got["items"][0]["value"], shard, "{got}");
        let table = ok(&cp, &["kv", "scan", &name]).await?;
        assert!(table.contains(shard), "{table}");
    }
    // `--gateway` naming the other shard's gateway: the redirect is followed.
    let shard_0 = cluster.gateway("shard-0").context("gateway")?.endpoint();
    let got: Value = serde_json::from_str(
        &ok(&cp, &["kv", "get", "acme/on-shard-1", "r", "--gateway", &shard_0, "-o", "json"]).await?,
    )?;
    assert_eq!(got["items"][0]["value"], "shard-1", "{got}");

    let (code, _, err) = prism(&cp, &["kv", "get", "acme/nope", "r"]).await?;
    ensure!(code == 1 && err.contains("NOT_FOUND"), "{code}: {err}");
    Ok(())
}
