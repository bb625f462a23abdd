//! The operator console against a test cluster (a control plane and two
//! gateway shards): over plain HTTP, what no token, a bad token and bad
//! query parameters get; in headless Chromium (testkit `browser`), what a
//! tenant admin and a superuser see, that HTML in names and audit details
//! stays text, and a screenshot of every page, written under
//! `target/tmp/console-screenshots/` (the path is printed).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, ensure};
use prism_proto::control::{
    Abstraction, Backend, BackendConfig, CreateNamespaceRequest, CreateTenantRequest, GetNamespaceRequest,
    MigrateNamespaceRequest, MigrationTarget, Namespace, NamespaceSpec, NamespaceStatus, Placement, PostgresConfig,
    backend_config,
};
use prism_testkit::browser::{self, Browser, fantoccini::Locator};
use prism_testkit::{Cluster, admin_token, eventually, token};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A tenant display name and a refused namespace name that carry HTML.
const TENANT_PROBE: &str = "<script>alert(\"tenant\")</script>";
const AUDIT_PROBE: &str = "acme/<img src=x onerror=alert(1)>";

fn kv_spec() -> NamespaceSpec {
    NamespaceSpec { abstraction: Abstraction::KeyValue as i32, backend: Backend::Embedded as i32, ..Default::default() }
}

/// A namespace whose backend cannot be reached: its shard reports it
/// DEGRADED with the reason.
fn unreachable_spec() -> NamespaceSpec {
    NamespaceSpec {
        backend: Backend::Postgres as i32,
        backend_config: Some(Box::new(BackendConfig {
            config: Some(backend_config::Config::Postgres(PostgresConfig {
                dsn: "postgres://prism@127.0.0.1:1/prism".into(),
                ..Default::default()
            })),
        })),
        ..kv_spec()
    }
}

/// Tenants `acme` (whose display name is an XSS probe) and `globex`, a
/// namespace of each, a DEGRADED one in acme, and a refused create whose
/// audit entry carries HTML. Returns the DEGRADED namespace.
async fn populate(cluster: &Cluster) -> anyhow::Result<Namespace> {
    let mut cp = cluster.control_plane.client().await?;
    for (id, name) in [("acme", TENANT_PROBE), ("globex", "Globex")] {
        cp.create_tenant(CreateTenantRequest { tenant_id: id.into(), display_name: name.into(), ..Default::default() })
            .await?;
    }
    for name in ["acme/orders", "globex/secret-ns"] {
        cp.create_namespace(CreateNamespaceRequest { name: name.into(), spec: Some(kv_spec()) }).await?;
    }
    cp.create_namespace(CreateNamespaceRequest { name: "acme/broken".into(), spec: Some(unreachable_spec()) }).await?;
    let refused = cp.create_namespace(CreateNamespaceRequest { name: AUDIT_PROBE.into(), spec: Some(kv_spec()) }).await;
    ensure!(refused.is_err(), "a name with HTML was accepted");
    eventually(Duration::from_secs(30), || {
        let mut cp = cp.clone();
        async move {
            let ns = cp.get_namespace(GetNamespaceRequest { name: "acme/broken".into() }).await?.into_inner();
            ensure!(ns.status == NamespaceStatus::Degraded as i32, "acme/broken is {}", ns.status);
            Ok(ns)
        }
    })
    .await
}

fn tenant_admin() -> String {
    token("alice", Some("acme"), &[prism_proto::access::TENANT_ADMIN_ROLE])
}

/// One HTTP/1.1 GET with an optional session cookie: status and body.
async fn get(addr: std::net::SocketAddr, path: &str, token: Option<&str>) -> anyhow::Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let cookie = token.map(|t| format!("cookie: prism_console_token={t}\r\n")).unwrap_or_default();
    stream.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n{cookie}connection: close\r\n\r\n").as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let status = response.get(9..12).and_then(|s| s.parse().ok()).context("no status line")?;
    Ok((status, response))
}

#[tokio::test]
async fn no_token_bad_tokens_and_bad_parameters_never_show_data() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    populate(&cluster).await?;
    let at = cluster.control_plane.metrics_addr;
    let alice = tenant_admin();

    // No token, or one the API refuses: the sign-in page and nothing else.
    let admin = admin_token();
    let truncated = &admin[..admin.len() - 2];
    for token in [None, Some("not-a-jwt"), Some(truncated)] {
        for path in ["/console/", "/console/namespaces", "/console/audit", "/console/namespaces/acme/broken"] {
            let (status, body) = get(at, path, token).await?;
            assert_eq!(status, 401, "{path} with {token:?}: {body}");
            assert!(body.contains("name=\"token\"") && !body.contains("acme/"), "{path} with {token:?}: {body}");
        }
    }
    let signed = |path: &'static str| {
        let alice = alice.clone();
        async move { get(at, path, Some(&alice)).await }
    };
    let (status, body) = signed("/console/").await?;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("acme/broken"), "{body}");

    // Bad parameters: a 400 naming the parameter, never a 500.
    for (path, name) in [
        ("/console/namespaces?page_size=0", "page_size"),
        ("/console/namespaces?page_size=abc", "page_size"),
        ("/console/namespaces?page_size=100000000000000000000000", "page_size"),
        ("/console/namespaces?status=HAPPY", "status"),
        ("/console/namespaces?tenant=NOT%20A%20TENANT", "tenant"),
        ("/console/namespaces?bogus=1", "bogus"),
        ("/console/namespaces?q=a&q=b", "q"),
        ("/console/audit?since=yesterday", "since"),
        ("/console/audit?namespace=no-slash", "namespace"),
        ("/console/audit?before=-1", "before"),
        ("/console/tenants?after=%ZZ", "after"),
        ("/console/usage?namespace=globex/x&bogus", "bogus"),
    ] {
        let (status, body) = signed(path).await?;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains(&format!("`{name}`")), "{path} does not name {name}: {body}");
    }
    // An unknown tenant is said to be so (or not to be the caller's).
    let (status, body) = get(at, "/console/namespaces?tenant=nope", Some(&admin_token())).await?;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("tenant nope not found"), "{body}");
    let (status, body) = signed("/console/usage?tenant=globex").await?;
    assert_eq!(status, 403, "{body}");
    // Another tenant's namespace, by its URL: refused, not shown.
    let (status, body) = signed("/console/namespaces/globex/secret-ns").await?;
    assert_eq!(status, 403, "{body}");
    assert!(!body.contains("EMBEDDED") && !body.contains("shard-"), "{body}");
    // HTML in a path is escaped in the message that names it.
    let (status, body) = signed("/console/namespaces/acme/%3Cscript%3Ealert(1)%3C%2Fscript%3E").await?;
    assert!(status == 400 || status == 403, "{status}: {body}");
    assert!(!body.contains("<script>"), "{body}");
    Ok(())
}

/// Where the screenshots go.
fn screenshots() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots")
}

/// The text of `css`, waiting for it to appear: a click that submits a
/// form returns before the next page has loaded.
async fn text(b: &Browser, css: &str) -> anyhow::Result<String> {
    b.client
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css(css))
        .await
        .with_context(|| format!("no {css} on the page"))?
        .text()
        .await
        .context("text")
}

/// Clicks `css` (a form's button) and waits until the page it submitted
/// replaced this one: the click returns before the next page has loaded,
/// and a `goto` issued before the response set its cookie would race it.
async fn submit(b: &Browser, css: &str) -> anyhow::Result<()> {
    let page = b.client.find(Locator::Css("html")).await?;
    b.client.find(Locator::Css(css)).await?.click().await?;
    eventually(Duration::from_secs(10), || async {
        ensure!(page.tag_name().await.is_err(), "the page was not replaced yet");
        Ok(())
    })
    .await
}

async fn sign_in(b: &Browser, base: &str, token: &str) -> anyhow::Result<()> {
    b.client.goto(&format!("{base}/console/signin")).await?;
    b.client.find(Locator::Css("#token")).await?.send_keys(token).await?;
    submit(b, "#signin").await
}

async fn sign_out(b: &Browser) -> anyhow::Result<()> {
    submit(b, "header form button").await
}

/// No script ran: an XSS probe that executed would have opened an alert.
async fn no_alert(b: &Browser) -> anyhow::Result<()> {
    if let Ok(text) = b.client.get_alert_text().await {
        anyhow::bail!("a script ran and opened an alert: {text}");
    }
    Ok(())
}

#[tokio::test]
async fn a_browser_sees_what_its_principal_may_see() -> anyhow::Result<()> {
    let Some(b) = Browser::start_or_skip().await? else {
        eprintln!("{}", browser::skip_reason());
        return Ok(());
    };
    let cluster = Cluster::start().await?;
    let degraded = populate(&cluster).await?;
    let base = format!("http://{}", cluster.control_plane.metrics_addr);
    let shots = screenshots();
    eprintln!("console screenshots: {}", shots.display());

    // Without a token: the sign-in page, no data.
    b.client.goto(&format!("{base}/console/")).await?;
    b.client.find(Locator::Css("#token")).await.context("the sign-in form")?;
    ensure!(!b.client.source().await?.contains("acme/"), "data before signing in");
    b.screenshot(&shots.join("signin.png")).await?;
    // A token the API refuses: the sign-in page again, saying so.
    sign_in(&b, &base, "not-a-jwt").await?;
    ensure!(!text(&b, "#signin-error").await?.is_empty(), "no reason given");
    ensure!(!b.client.source().await?.contains("acme/"), "data for a bad token");

    // A tenant admin of acme.
    sign_in(&b, &base, &tenant_admin()).await?;
    let table = text(&b, "#degraded").await?;
    ensure!(table.contains("acme/broken"), "the overview lists no DEGRADED namespace: {table}");
    ensure!(table.contains(&degraded.status_reason), "the reason {:?} is missing: {table}", degraded.status_reason);
    ensure!(text(&b, ".who").await?.contains("acme:alice"), "who is signed in");
    b.screenshot(&shots.join("overview.png")).await?;

    b.client.goto(&format!("{base}/console/namespaces")).await?;
    let listed = text(&b, "#namespaces").await?;
    ensure!(listed.contains("acme/orders") && listed.contains("acme/broken"), "acme's namespaces: {listed}");
    ensure!(!b.client.source().await?.contains("globex"), "a tenant admin of acme sees globex: {listed}");
    b.screenshot(&shots.join("namespaces.png")).await?;

    b.client.goto(&format!("{base}/console/namespaces/acme/broken")).await?;
    ensure!(text(&b, "#status-reason").await? == degraded.status_reason, "the namespace page's reason");
    b.screenshot(&shots.join("namespace.png")).await?;
    b.client.goto(&format!("{base}/console/namespaces/globex/secret-ns")).await?;
    ensure!(text(&b, "#message").await?.contains("may not"), "another tenant's namespace was shown");

    // HTML in a tenant's display name and in an audit detail stays text.
    b.client.goto(&format!("{base}/console/tenants")).await?;
    ensure!(text(&b, "#tenants").await?.contains(TENANT_PROBE), "the display name is not shown as text");
    no_alert(&b).await?;
    b.screenshot(&shots.join("tenants.png")).await?;
    b.client.goto(&format!("{base}/console/audit")).await?;
    ensure!(text(&b, "#audit").await?.contains(AUDIT_PROBE), "the refused name is not in the audit page as text");
    ensure!(b.client.find_all(Locator::Css("#audit img")).await?.is_empty(), "HTML from the audit log was rendered");
    no_alert(&b).await?;

    // The audit page filters by namespace.
    b.client.find(Locator::Css("#filter-namespace")).await?.send_keys("acme/orders").await?;
    submit(&b, "#filter").await?;
    // The click submits the form; the filtered page replaces this one.
    eventually(Duration::from_secs(10), || async {
        let url = b.client.current_url().await?;
        ensure!(url.query().is_some_and(|q| q.contains("namespace=acme%2Forders")), "still at {url}");
        let mut targets = Vec::new();
        for t in b.client.find_all(Locator::Css("#audit td.target")).await? {
            targets.push(t.text().await?);
        }
        ensure!(!targets.is_empty(), "no audit event of acme/orders");
        ensure!(targets.iter().all(|t| t == "acme/orders"), "the namespace filter let through: {targets:?}");
        Ok(())
    })
    .await?;
    b.screenshot(&shots.join("audit.png")).await?;

    b.client.goto(&format!("{base}/console/usage?tenant=acme")).await?;
    b.client.find(Locator::Css("table.quotas")).await.context("acme's quotas")?;
    b.screenshot(&shots.join("usage.png")).await?;
    b.client.goto(&format!("{base}/console/namespaces?page_size=0")).await?;
    ensure!(text(&b, "#message").await?.contains("page_size"), "a bad page size is not named");
    b.screenshot(&shots.join("bad-parameter.png")).await?;

    // Signing out forgets the token.
    b.client.goto(&format!("{base}/console/")).await?;
    sign_out(&b).await?;
    b.client.goto(&format!("{base}/console/namespaces")).await?;
    b.client.find(Locator::Css("#token")).await.context("the sign-in form after signing out")?;

    // A superuser sees every tenant's namespaces.
    sign_in(&b, &base, &admin_token()).await?;
    b.client.goto(&format!("{base}/console/namespaces")).await?;
    let listed = text(&b, "#namespaces").await?;
    ensure!(listed.contains("globex/secret-ns") && listed.contains("acme/orders"), "the superuser's list: {listed}");
    no_alert(&b).await?;
    b.close().await
}

/// A namespace's page shows its migration while one runs: here stuck at
/// PREPARE, its target's PostgreSQL unreachable, with the reason naming
/// the field (`target.backend_config`); the source keeps serving.
#[tokio::test]
async fn a_namespace_page_shows_its_migration() -> anyhow::Result<()> {
    let cluster = Cluster::start_with(|c| c.experimental_migrations = true).await?;
    let mut cp = cluster.control_plane.client().await?;
    cp.create_tenant(CreateTenantRequest { tenant_id: "acme".into(), ..Default::default() }).await?;
    let gw = cluster.active_namespace("acme/moving", kv_spec()).await?;
    let unreachable = unreachable_spec();
    let target = MigrationTarget {
        backend: unreachable.backend,
        backend_config: unreachable.backend_config.map(|c| *c),
        ..Default::default()
    };
    let req = MigrateNamespaceRequest { name: "acme/moving".into(), target: Some(target), expected_revision: 0 };
    cp.migrate_namespace(req).await?;
    let at = cluster.control_plane.metrics_addr;
    let body = eventually(Duration::from_secs(30), || async {
        let (status, body) = get(at, "/console/namespaces/acme/moving", Some(&tenant_admin())).await?;
        ensure!(status == 200, "{status}: {body}");
        ensure!(body.contains("id=\"migration-step\">PREPARE<"), "no step: {body}");
        ensure!(body.contains("id=\"migration-reason\">target.backend_config: "), "no reason naming the field yet");
        Ok(body)
    })
    .await?;
    assert!(body.contains("postgres on shard-"), "{body}");
    assert!(body.contains("id=\"placement\">hashed over the shared shards<"), "{body}");
    // A namespace holding the other shard alone says so.
    let other = if gw.gateway.config.shard_id == "shard-0" { "shard-1" } else { "shard-0" };
    let placement = Placement { pinned_shard: other.into(), dedicated: true };
    let spec = NamespaceSpec { placement: Some(Box::new(placement)), ..kv_spec() };
    cp.create_namespace(CreateNamespaceRequest { name: "acme/alone".into(), spec: Some(spec) }).await?;
    let (_, alone) = get(at, "/console/namespaces/acme/alone", Some(&tenant_admin())).await?;
    let want = format!("id=\"placement\">pinned to {other}, dedicated (no other namespace on it)<");
    assert!(alone.contains(&want), "{alone}");
    // The source serves meanwhile.
    let mut kv = gw.kv(Some(&admin_token())).await?;
    let item = prism_proto::kv::Item { key: b"k".to_vec(), value: b"v".to_vec(), ttl: None };
    let put = prism_proto::kv::PutItemsRequest {
        namespace: "acme/moving".into(),
        id: "r".into(),
        items: vec![item],
        ..Default::default()
    };
    kv.put_items(put).await?;
    let get =
        prism_proto::kv::GetItemsRequest { namespace: "acme/moving".into(), id: "r".into(), ..Default::default() };
    assert_eq!(kv.get_items(get).await?.into_inner().items.len(), 1);
    Ok(())
}
