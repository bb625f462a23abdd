//! A planted secret appears nowhere. A PostgreSQL role logs in with a
//! password only; the gateway process gets that password from its
//! environment and from a file, declared in its `[gateway.secrets]`, and
//! namespaces name it by reference. Everything that shows metadata is then
//! searched for the password (and for a second, wrong one that a namespace
//! also references): GetNamespace, ListNamespaces, Watch (snapshot and
//! change log), the audit list, `prism namespace get/list -o json`,
//! `prism audit list`, DEGRADED reasons, refusals of inline passwords, and
//! the control plane's and gateway's logs at debug level. The data path
//! works, so the password really was used.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use prism_client::proto::control::backend_config::Config;
use prism_client::proto::control::{
    Abstraction, Backend, BackendConfig, CreateNamespaceRequest, CreateTenantRequest, GetNamespaceRequest,
    ListAuditEventsRequest, ListNamespacesRequest, Namespace, NamespaceSpec, NamespaceStatus, PostgresConfig,
    WatchRequest, watch_response,
};
use prism_client::proto::kv;
use prism_testkit::postgres::{PostgresServer, skip_reason};
use prism_testkit::{TEST_SECRET, admin_token, eventually, token};

const PRISM: &str = env!("CARGO_BIN_EXE_prism");
/// The role's password: must never be seen.
const PLANTED: &str = "planted-Pg-Password-7c41e9";
/// A wrong password a namespace references: must never be seen either.
const PLANTED_WRONG: &str = "planted-Wrong-Password-3b8d02";
const CONVERGE: Duration = Duration::from_secs(60);

/// A `prism` server process, its stderr in a file, killed when dropped.
struct Process {
    child: Child,
    addr: String,
    log: PathBuf,
}

impl Process {
    /// Starts `prism args…` with `env`, waits for its "serving on ADDR" line.
    fn start(args: &[&str], env: &[(&str, &str)], log: PathBuf) -> anyhow::Result<Self> {
        let mut cmd = Command::new(PRISM);
        cmd.args(args).env("RUST_LOG", "debug").env_remove("PRISM_CONFIG").env_remove("PRISM_AUTH_SECRET");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let stderr = std::fs::File::create(&log).context("log file")?;
        let mut child = cmd.stdout(Stdio::piped()).stderr(stderr).spawn().context("spawn prism")?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let Some(addr) = line.trim().rsplit_once(" serving on ").map(|(_, a)| a.to_owned()) else {
            let _ = child.kill();
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            bail!("prism {args:?} did not say where it serves: {line:?}\n{log}");
        };
        Ok(Self { child, addr, log })
    }

    /// Stops the process and returns what it logged.
    fn stop(mut self) -> anyhow::Result<String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::fs::read_to_string(&self.log).context("read the log")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn postgres_spec(dsn: &str, password_ref: &str) -> NamespaceSpec {
    NamespaceSpec {
        abstraction: Abstraction::KeyValue as i32,
        backend: Backend::Postgres as i32,
        backend_config: Some(Box::new(BackendConfig {
            config: Some(Config::Postgres(PostgresConfig {
                dsn: dsn.into(),
                password_ref: password_ref.into(),
                pool_size: 2,
                ..Default::default()
            })),
        })),
        ..Default::default()
    }
}

/// Fails if `text` (from `what`) holds a planted secret.
fn clean(what: &str, text: &str) -> anyhow::Result<()> {
    for planted in [PLANTED, PLANTED_WRONG] {
        if let Some(at) = text.find(planted) {
            let from = text[..at].char_indices().rev().nth(200).map_or(0, |(i, _)| i);
            bail!("{what} shows a planted secret: …{}…", &text[from..(at + planted.len()).min(text.len())]);
        }
    }
    Ok(())
}

/// Runs the `prism` CLI against `cp` as the superuser.
fn cli(cp: &str, args: &[&str]) -> anyhow::Result<(Option<i32>, String, String)> {
    let out = Command::new(PRISM)
        .arg("--endpoint")
        .arg(cp)
        .args(args)
        .env("PRISM_TOKEN", admin_token())
        .env_remove("RUST_LOG")
        .output()
        .context("run prism")?;
    Ok((
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

async fn status_of(cp: &mut prism_client::ControlPlaneClient, name: &str) -> anyhow::Result<Namespace> {
    Ok(cp.get_namespace(GetNamespaceRequest { name: name.into() }).await?.into_inner())
}

/// Waits until `name` leaves PROVISIONING; its final state.
async fn settled(cp: &prism_client::ControlPlaneClient, name: &str) -> anyhow::Result<Namespace> {
    eventually(CONVERGE, || {
        let mut cp = cp.clone();
        async move {
            let ns = status_of(&mut cp, name).await?;
            ensure!(
                ns.status != NamespaceStatus::Provisioning as i32,
                "{name} still provisioning: {}",
                ns.status_reason
            );
            Ok(ns)
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planted_secret_appears_nowhere() -> anyhow::Result<()> {
    let Some(pg) = PostgresServer::start_or_skip()? else {
        println!("{}", skip_reason());
        return Ok(());
    };
    let dsn = pg.add_password_role("app", PLANTED)?;
    let dir = tempfile::tempdir()?;
    let path = |name: &str| dir.path().join(name);
    let text = |p: &Path| p.to_str().map(str::to_owned).context("utf-8 path");

    // The deployment's secrets, all from files and the environment.
    std::fs::write(path("auth-secret"), format!("{TEST_SECRET}\n"))?;
    std::fs::write(path("shard-token"), token("shard-0", None, &["shard"]))?;
    std::fs::write(path("pg-app"), format!("{PLANTED}\n"))?;
    let pg_file = text(&path("pg-app"))?;
    std::fs::write(
        path("prism.toml"),
        format!(
            "[gateway.secrets.pg-app]\nenv = \"PG_APP_PASSWORD\"\ntenants = [\"acme\"]\n\
             [gateway.secrets.pg-app-file]\nfile = {pg_file:?}\ntenants = [\"acme\"]\n\
             [gateway.secrets.wrong]\nenv = \"PG_WRONG_PASSWORD\"\ntenants = [\"*\"]\n"
        ),
    )?;
    let auth_file = text(&path("auth-secret"))?;
    let cp = Process::start(
        &["control-plane", "--listen", "127.0.0.1:0", "--data-dir", &text(&path("cp"))?],
        &[("PRISM_AUTH_SECRET_FILE", &auth_file)],
        path("control-plane.log"),
    )?;
    let gw = Process::start(
        &[
            "gateway",
            "--config",
            &text(&path("prism.toml"))?,
            "--shard-id",
            "shard-0",
            "--control-plane",
            &cp.addr,
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            &text(&path("gw"))?,
        ],
        &[
            ("PRISM_AUTH_SECRET_FILE", &auth_file),
            ("PRISM_CONTROL_PLANE_TOKEN_FILE", &text(&path("shard-token"))?),
            ("PG_APP_PASSWORD", PLANTED),
            ("PG_WRONG_PASSWORD", PLANTED_WRONG),
        ],
        path("gateway.log"),
    )?;

    let mut admin = prism_client::control_plane(&cp.addr, Some(&admin_token())).await?;
    for tenant in ["acme", "globex"] {
        admin.create_tenant(CreateTenantRequest { tenant_id: tenant.into(), ..Default::default() }).await?;
    }
    // Nothing is assigned before the gateway has registered its shard.
    eventually(CONVERGE, || {
        let mut admin = admin.clone();
        async move {
            let shards = admin.list_shards(prism_client::proto::control::ListShardsRequest {}).await?.into_inner();
            ensure!(!shards.shards.is_empty(), "no shard registered yet");
            Ok(())
        }
    })
    .await?;

    // By reference to the environment: served, with the password.
    let create = |name: &str, spec: NamespaceSpec| CreateNamespaceRequest { name: name.into(), spec: Some(spec) };
    admin.create_namespace(create("acme/env", postgres_spec(&dsn, "env:PG_APP_PASSWORD"))).await?;
    let ns = settled(&admin, "acme/env").await?;
    ensure!(ns.status == NamespaceStatus::Active as i32, "acme/env: {}", ns.status_reason);
    let mut data = prism_client::key_value(&gw.addr, Some(&admin_token())).await?;
    let item = kv::Item { key: b"k".to_vec(), value: b"v".to_vec(), ttl: None };
    data.put_items(kv::PutItemsRequest {
        namespace: "acme/env".into(),
        id: "r".into(),
        items: vec![item],
        ..Default::default()
    })
    .await?;
    let got = data
        .get_items(kv::GetItemsRequest { namespace: "acme/env".into(), id: "r".into(), ..Default::default() })
        .await?;
    ensure!(got.into_inner().items.len() == 1, "the item written through the password-protected role");

    // By reference to a file, through the CLI's --password-from.
    let file_ref = format!("file:{pg_file}");
    let (code, _, stderr) = cli(
        &cp.addr,
        &[
            "namespace",
            "create",
            "acme/file",
            "--abstraction",
            "key-value",
            "--backend",
            "postgres",
            "--dsn",
            &dsn,
            "--password-from",
            &file_ref,
            "--wait",
            "--timeout",
            "60s",
        ],
    )?;
    ensure!(code == Some(0), "create acme/file: {stderr}");

    // References that do not resolve: DEGRADED, naming the reference.
    admin.create_namespace(create("acme/undeclared", postgres_spec(&dsn, "env:HOME"))).await?;
    admin.create_namespace(create("globex/borrowed", postgres_spec(&dsn, "secret:pg-app"))).await?;
    admin.create_namespace(create("acme/wrong", postgres_spec(&dsn, "secret:wrong"))).await?;
    for (name, needle) in [
        ("acme/undeclared", "env:HOME: is not declared in this gateway's [gateway.secrets]"),
        ("globex/borrowed", "secret:pg-app: is not declared for tenant globex"),
        ("acme/wrong", "refused the namespace's credentials"),
    ] {
        let ns = settled(&admin, name).await?;
        ensure!(ns.status == NamespaceStatus::Degraded as i32, "{name} is {}: {}", ns.status, ns.status_reason);
        ensure!(ns.status_reason.contains(needle), "{name}: {}", ns.status_reason);
    }

    // An inline password is refused, naming the field, not the password.
    let inline = dsn.replacen("app@", &format!("app:{PLANTED}@"), 1);
    let refused = admin.create_namespace(create("acme/inline", postgres_spec(&inline, ""))).await.expect_err("inline");
    ensure!(refused.code() == tonic::Code::InvalidArgument, "{refused:?}");
    ensure!(refused.message().contains("spec.backend_config.postgres.dsn"), "{}", refused.message());
    clean("the refusal", &format!("{refused:?}"))?;
    let (code, stdout, stderr) = cli(
        &cp.addr,
        &[
            "namespace",
            "create",
            "acme/inline2",
            "--abstraction",
            "key-value",
            "--backend",
            "postgres",
            "--dsn",
            &inline,
        ],
    )?;
    ensure!(code == Some(1) && stderr.contains("spec.backend_config.postgres.dsn"), "{code:?} {stderr}");
    clean("the CLI's refusal", &format!("{stdout}{stderr}"))?;

    // Every read path.
    let names = ["acme/env", "acme/file", "acme/undeclared", "globex/borrowed", "acme/wrong"];
    for name in names {
        clean(name, &format!("{:?}", status_of(&mut admin, name).await?))?;
        let (code, stdout, stderr) = cli(&cp.addr, &["namespace", "get", name, "-o", "json"])?;
        ensure!(code == Some(0) && stdout.contains("password_ref"), "prism namespace get {name}: {stderr}");
        clean(&format!("prism namespace get {name} -o json"), &stdout)?;
    }
    let list = admin.list_namespaces(ListNamespacesRequest::default()).await?.into_inner();
    ensure!(list.namespaces.len() == names.len(), "{} namespaces listed", list.namespaces.len());
    clean("ListNamespaces", &format!("{list:?}"))?;
    for args in
        [&["namespace", "list", "-o", "json"][..], &["audit", "list", "-o", "json", "--all-pages"], &["audit", "list"]]
    {
        let (code, stdout, stderr) = cli(&cp.addr, args)?;
        ensure!(code == Some(0), "prism {args:?}: {stderr}");
        clean(&format!("prism {args:?}"), &stdout)?;
    }
    let audit = admin.list_audit_events(ListAuditEventsRequest { page_size: 1000, ..Default::default() }).await?;
    let audit = audit.into_inner().events;
    ensure!(
        audit.iter().any(|e| e.action == "CreateNamespace" && e.result == "invalid_argument"),
        "the refusal is audited"
    );
    clean("the audit log", &format!("{audit:?}"))?;
    // Watch: a snapshot (from 0), then the change log (from 1) up to the
    // snapshot's revision.
    let mut head = 0;
    for from_revision in [0, 1] {
        let mut watch = admin.watch(WatchRequest { from_revision }).await?.into_inner();
        let mut seen = String::new();
        while let Some(m) = tokio::time::timeout(CONVERGE, watch.message()).await.context("watch went quiet")?? {
            seen.push_str(&format!("{m:?}"));
            let done = match &m.event {
                Some(watch_response::Event::Snapshot(chunk)) => {
                    head = chunk.revision;
                    chunk.last
                }
                Some(watch_response::Event::Delta(delta)) => delta.revision >= head,
                None => false,
            };
            if done {
                break;
            }
        }
        ensure!(seen.contains("acme/env"), "the watch from {from_revision} showed the namespaces");
        clean(&format!("Watch from {from_revision}"), &seen)?;
    }

    // The servers' own logs, at debug level.
    drop(data);
    let gw_log = gw.stop()?;
    let cp_log = cp.stop()?;
    for (what, log) in [("the gateway's log", &gw_log), ("the control plane's log", &cp_log)] {
        ensure!(log.contains("DEBUG"), "{what} is not at debug level:\n{log}");
        clean(what, log)?;
    }
    drop(pg);
    Ok(())
}
