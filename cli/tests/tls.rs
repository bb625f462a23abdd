//! The `prism` binary and TLS: admin and data commands over `https://`
//! with a CA file and a client certificate (flags, or `PRISM_*`
//! variables), what it refuses, and the servers' startup refusals — no key
//! without `--insecure-no-auth`, TLS files that cannot be used.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, ensure};
use prism_testkit::tls::Pki;
use prism_testkit::{Cluster, TEST_SECRET, admin_token};
use serde_json::Value;

const PRISM: &str = env!("CARGO_BIN_EXE_prism");

/// Variables a test must not inherit.
const CLEAN: &[&str] = &[
    "PRISM_ENDPOINT",
    "PRISM_GATEWAY",
    "PRISM_TOKEN",
    "PRISM_CONFIG",
    "PRISM_CA_FILE",
    "PRISM_CLIENT_CERT",
    "PRISM_CLIENT_KEY",
    "PRISM_TLS_CERT",
    "PRISM_TLS_KEY",
    "PRISM_TLS_CLIENT_CA",
    "PRISM_AUTH_SECRET",
    "PRISM_CONTROL_PLANE",
    "PRISM_CONTROL_PLANE_CA",
    "PRISM_CONTROL_PLANE_CERT",
    "PRISM_CONTROL_PLANE_KEY",
    "PRISM_DATA_DIR",
    "PRISM_SHARD_ID",
    "RUST_LOG",
];

/// Runs `prism args…` with `env` off the runtime: (exit code, stdout, stderr).
async fn prism(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<(i32, String, String)> {
    let mut cmd = Command::new(PRISM);
    for var in CLEAN {
        cmd.env_remove(var);
    }
    cmd.args(args).envs(env.iter().copied());
    let out = tokio::task::spawn_blocking(move || cmd.output()).await??;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

fn path(p: &Option<std::path::PathBuf>) -> anyhow::Result<&str> {
    p.as_deref().and_then(Path::to_str).context("a UTF-8 path")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_and_data_commands_over_https() -> anyhow::Result<()> {
    let (servers, clients) = (Pki::new("servers")?, Pki::new("clients")?);
    let cluster = Cluster::start_tls(&servers, &clients).await?;
    let cp = cluster.control_plane.endpoint();
    ensure!(cp.starts_with("https://"), "{cp}");
    let me = servers.client(&clients, "test-admin", false)?;
    let token = admin_token();
    let (ca, cert, key) = (path(&me.ca_file)?, path(&me.cert_file)?, path(&me.key_file)?);
    let tls = ["--endpoint", &cp, "--ca-file", ca, "--client-cert", cert, "--client-key", key];
    let ok = |args: Vec<String>| {
        let token = token.clone();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let (code, out, err) = prism(&args, &[("PRISM_TOKEN", &token)]).await?;
            ensure!(code == 0, "prism {args:?} exited {code}: {err}");
            anyhow::Ok(out)
        }
    };
    let with = |rest: &[&str]| tls.iter().chain(rest).map(|s| (*s).to_owned()).collect::<Vec<String>>();

    ok(with(&["tenant", "create", "acme"])).await?;
    ok(with(&["namespace", "create", "acme/profiles", "--abstraction", "key-value", "--wait", "--timeout", "20s"]))
        .await?;
    // Routed through the control plane to the owning gateway's https://
    // endpoint.
    ok(with(&["kv", "put", "acme/profiles", "user-1", "name=Ada"])).await?;
    let got: Value = serde_json::from_str(&ok(with(&["kv", "get", "acme/profiles", "user-1", "-o", "json"])).await?)?;
    assert_eq!(got["items"][0]["value"], "Ada", "{got}");

    // The same settings from the environment.
    let env = [
        ("PRISM_ENDPOINT", cp.as_str()),
        ("PRISM_TOKEN", token.as_str()),
        ("PRISM_CA_FILE", ca),
        ("PRISM_CLIENT_CERT", cert),
        ("PRISM_CLIENT_KEY", key),
    ];
    let (code, out, err) = prism(&["namespace", "list"], &env).await?;
    ensure!(code == 0 && out.contains("acme/profiles"), "exited {code}: {out}{err}");

    // Refused: no client certificate (the control plane requires one), a
    // CA that did not sign the server (here the system bundle), a CA file
    // that is not there (a usage error naming the flag and the file).
    let (code, out, err) = prism(&["--endpoint", &cp, "--ca-file", ca, "tenant", "list"], &env[1..2]).await?;
    // TLS 1.3 completes the client's side of the handshake before the
    // server checks its certificate: the refusal arrives as the connection
    // closing (with or without the alert), so only the outcome is checked.
    ensure!(code == 1, "no client certificate: exited {code}: {out}{err}");
    let (code, _, err) =
        prism(&["--endpoint", &cp, "--client-cert", cert, "--client-key", key, "tenant", "list"], &env[1..2]).await?;
    // The client's own verification says why.
    ensure!(code == 1 && err.contains("UnknownIssuer"), "an untrusted server: exited {code}: {err}");
    let missing = servers.dir().join("missing.crt");
    let missing = missing.to_str().context("utf-8")?;
    let (code, _, err) = prism(&["--endpoint", &cp, "--ca-file", missing, "tenant", "list"], &env[1..2]).await?;
    ensure!(code == 2 && err.contains("--ca-file") && err.contains(missing), "exited {code}: {err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_refuse_to_start_insecurely_or_with_bad_tls_files() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().to_str().context("utf-8")?;
    let pki = Pki::new("servers")?;
    let (cert, key) = pki.issue("server", false)?;
    let (cert, key) = (cert.to_str().context("utf-8")?, key.to_str().context("utf-8")?);
    let listen = ["--listen", "127.0.0.1:0", "--data-dir", data];

    // No key, no flag saying it is insecure.
    let (code, _, err) = prism(&[&["control-plane"][..], &listen].concat(), &[]).await?;
    ensure!(code == 2 && err.contains("--insecure-no-auth"), "exited {code}: {err}");

    let garbage = dir.path().join("garbage.crt");
    std::fs::write(&garbage, "-----BEGIN CERTIFICATE-----\nnot base64 at all\n")?;
    let garbage = garbage.to_str().context("utf-8")?;
    let missing = dir.path().join("missing.key");
    let missing = missing.to_str().context("utf-8")?;
    let cases: [(&[&str], &str, &str); 4] = [
        (&["--tls-cert", garbage, "--tls-key", key], "tls.cert_file", garbage),
        (&["--tls-cert", cert, "--tls-key", cert], "tls.key_file", cert),
        (&["--tls-cert", cert, "--tls-key", missing], "tls.key_file", missing),
        (&["--tls-cert", cert], "--tls-key", "--tls-cert"),
    ];
    for (flags, setting, file) in cases {
        let args = [&["control-plane", "--insecure-no-auth"][..], &listen, flags].concat();
        let (code, _, err) = prism(&args, &[]).await?;
        ensure!(code == 2 && err.contains(setting) && err.contains(file), "{flags:?}: exited {code}: {err}");
        let gateway = ["gateway", "--shard-id", "shard-0", "--auth-secret", TEST_SECRET];
        let args = [&gateway[..], &listen, flags].concat();
        let (code, _, err) = prism(&args, &[]).await?;
        ensure!(code == 2 && err.contains(setting) && err.contains(file), "gateway {flags:?}: exited {code}: {err}");
    }
    // A gateway's way to the control plane, from the environment.
    let gateway =
        ["gateway", "--shard-id", "shard-0", "--auth-secret", TEST_SECRET, "--control-plane", "https://127.0.0.1:1"];
    let args = [&gateway[..], &listen].concat();
    let (code, _, err) = prism(&args, &[("PRISM_CONTROL_PLANE_CA", missing)]).await?;
    ensure!(code == 2 && err.contains("control_plane_tls.ca_file") && err.contains(missing), "exited {code}: {err}");
    Ok(())
}
