//! Test fixtures: Prism's servers started in-process on ephemeral ports in
//! temp dirs, each behind a handle that shuts it down, and a bounded
//! [`eventually`] poll instead of sleeps.
//!
//! - Here: the control plane, gateways and a two-shard `Cluster`, in
//!   process on `127.0.0.1:0`; every server also serves its metrics
//!   listener on port 0. A control plane started without a key is started
//!   explicitly open (`insecure_no_auth`). `Cluster::start_tls` runs the
//!   cluster with TLS on every hop (the control plane requiring client
//!   certificates, gateways presenting one per shard).
//! - Real backend servers: `postgres` (initdb + pg_ctl as an unprivileged
//!   user on an ephemeral port, `add_password_role` for a role that must
//!   log in with a password, restart for outage tests), `pulsar` (a
//!   pulsar-lite broker, stopped and restarted on the same port and
//!   `--db-path`), `kafka` (a tansu broker with in-memory storage, stopped
//!   and restarted on the same port, coming back empty).
//! - Observability: `prometheus` (Debian's Prometheus scraping the targets
//!   a test names, its query API, and `promtool`), `otlp` (an OTLP/gRPC
//!   trace receiver).
//! - `tls` (test PKIs: a CA, server and client certificates, expired ones,
//!   as PEM files), `proxy` (a TCP proxy: round-robin over several
//!   backends, like an L4 balancer in front of gateways, a link a test
//!   can cut, and network faults switched on and off: latency, a slow
//!   link, a blackhole, half-open connections, resets), `grpc` (gRPC
//!   clients that send a deadline without enforcing it, to see what a
//!   server answers and when), `h2load` (drives a gateway with h2load for
//!   the benches), `browser` (headless Debian chromium driven over
//!   WebDriver, for the console's tests).
//!
//! A test whose server binary is missing fails with the install command
//! when `PRISM_REQUIRE_SERVERS` is set (CI sets it), and skips, saying why,
//! otherwise. `tests/tidy.rs` is the tidy test.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use prism_client::ControlPlaneClient;
use prism_control_plane::{ControlPlane, ControlPlaneConfig, server};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// An in-process control plane on `127.0.0.1:<ephemeral>`.
pub struct ControlPlaneHandle {
    pub addr: SocketAddr,
    /// Where its `/metrics`, `/healthz` and `/readyz` are served.
    pub metrics_addr: SocketAddr,
    pub plane: ControlPlane,
    /// Whether it serves TLS (its endpoint is then `https://…`).
    tls: bool,
    /// How this handle's clients reach it over TLS.
    client_tls: prism_client::Tls,
    data_dir: PathBuf,
    /// A superuser token when the control plane checks tokens.
    token: Option<String>,
    _temp: Option<tempfile::TempDir>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<prism_control_plane::Result<()>>>,
}

impl ControlPlaneHandle {
    /// Starts a control plane with a fresh temp data directory.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(ControlPlaneConfig::default()).await
    }

    /// Starts with `config`; its `data_dir` is replaced by a temp dir.
    pub async fn start_with(mut config: ControlPlaneConfig) -> anyhow::Result<Self> {
        let temp = tempfile::tempdir().context("temp dir")?;
        config.data_dir = temp.path().join("control-plane");
        let mut handle = Self::start_in(config).await?;
        handle._temp = Some(temp);
        Ok(handle)
    }

    /// Starts on `config.data_dir` as given (e.g. to restart on the same
    /// data). A configuration without a key is started explicitly open
    /// (`insecure_no_auth`), as tests of the rules without tokens need.
    pub async fn start_in(config: ControlPlaneConfig) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await.context("bind")?;
        Self::start_on(config, listener).await
    }

    /// Starts serving on `listener` (bound by the caller, e.g. before a
    /// gateway that must wait for it is started), on `config.data_dir` as
    /// given.
    pub async fn start_on(mut config: ControlPlaneConfig, listener: TcpListener) -> anyhow::Result<Self> {
        if !config.auth.verifies_tokens() {
            config.insecure_no_auth = true;
        }
        let data_dir = config.data_dir.clone();
        let tls = config.tls.is_some();
        let token = match &config.auth.hs256_secret {
            Some(secret) => Some(prism_auth::sign_hs256(secret, &claims("test-admin", None, &["admin"]))?),
            None => None,
        };
        // After a restart the previous server's last tasks may still hold
        // the store open for a moment.
        let plane = eventually(Duration::from_secs(10), || {
            let config = config.clone();
            async move { server::open(config).await.context("open control plane") }
        })
        .await?;
        let addr = listener.local_addr()?;
        let metrics = TcpListener::bind("127.0.0.1:0").await.context("bind metrics")?;
        let metrics_addr = metrics.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server::serve_with_metrics(plane.clone(), listener, Some(metrics), async {
            let _ = stopped.await;
        }));
        Ok(Self {
            addr,
            metrics_addr,
            plane,
            tls,
            client_tls: prism_client::Tls::default(),
            data_dir,
            token,
            _temp: None,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// How [`client`](Self::client) and [`client_as`](Self::client_as)
    /// reach a control plane that serves TLS (e.g. a client of
    /// [`tls::Pki::trust`]).
    pub fn with_client_tls(mut self, tls: prism_client::Tls) -> Self {
        self.client_tls = tls;
        self
    }

    /// `127.0.0.1:port`, or `https://127.0.0.1:port` when it serves TLS.
    pub fn endpoint(&self) -> String {
        if self.tls { format!("https://{}", self.addr) } else { self.addr.to_string() }
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Creates `name` with `spec` (and its tenant, if missing), waits
    /// until it is ACTIVE and every one of `gateways` has caught up to
    /// that revision, and returns it.
    pub async fn create_active(
        &self,
        name: &str,
        spec: prism_proto::control::NamespaceSpec,
        gateways: &[&GatewayHandle],
    ) -> anyhow::Result<prism_proto::control::Namespace> {
        use prism_proto::control::{CreateNamespaceRequest, CreateTenantRequest, GetNamespaceRequest, NamespaceStatus};
        let mut cp = self.client().await?;
        let tenant = name.split_once('/').map_or(name, |(t, _)| t);
        let created = cp.create_tenant(CreateTenantRequest { tenant_id: tenant.into(), ..Default::default() }).await;
        if let Err(s) = created {
            anyhow::ensure!(s.code() == tonic::Code::AlreadyExists, "create tenant: {s}");
        }
        cp.create_namespace(CreateNamespaceRequest { name: name.into(), spec: Some(spec) }).await?;
        let ns = eventually(Duration::from_secs(20), || {
            let mut cp = cp.clone();
            async move {
                let ns = cp.get_namespace(GetNamespaceRequest { name: name.into() }).await?.into_inner();
                anyhow::ensure!(
                    ns.status == NamespaceStatus::Active as i32,
                    "namespace is {:?}: {}",
                    NamespaceStatus::try_from(ns.status),
                    ns.status_reason
                );
                Ok(ns)
            }
        })
        .await?;
        for g in gateways {
            g.caught_up(ns.revision).await?;
        }
        Ok(ns)
    }

    /// A gRPC client of this control plane, as the superuser when it
    /// checks tokens.
    pub async fn client(&self) -> anyhow::Result<ControlPlaneClient> {
        self.client_as(self.token.as_deref()).await
    }

    /// A gRPC client of this control plane presenting `token`.
    pub async fn client_as(&self, token: Option<&str>) -> anyhow::Result<ControlPlaneClient> {
        Ok(prism_client::control_plane_with(&self.endpoint(), token, &self.client_tls).await?)
    }

    /// Stops serving and waits for the server to finish; the data
    /// directory (if a temp dir) is kept until the handle is dropped.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.context("server task")?.context("server")?;
        }
        Ok(())
    }

    /// Stops the server and starts a new one on the same data directory
    /// and the same port, so gateways watching it reconnect to it;
    /// `config` supplies everything but the directory.
    pub async fn restart_on_same_port(mut self, mut config: ControlPlaneConfig) -> anyhow::Result<Self> {
        let addr = self.addr;
        self.stop().await?;
        let temp = self._temp.take();
        config.data_dir = self.data_dir.clone();
        drop(self);
        // The port was just released; binding it again can only fail if
        // another process took it meanwhile.
        let listener = eventually(Duration::from_secs(10), || async move {
            TcpListener::bind(addr).await.with_context(|| format!("bind {addr} again"))
        })
        .await?;
        let mut next = Self::start_on(config, listener).await?;
        next._temp = temp;
        Ok(next)
    }

    /// Stops the server and starts a new one on the same data directory
    /// (on a new port); `config` supplies everything but the directory.
    pub async fn restart(mut self, mut config: ControlPlaneConfig) -> anyhow::Result<Self> {
        self.stop().await?;
        // The store's file must be closed before it is opened again.
        let temp = self._temp.take();
        config.data_dir = self.data_dir.clone();
        let client_tls = self.client_tls.clone();
        drop(self);
        let mut next = Self::start_in(config).await?;
        next._temp = temp;
        next.client_tls = client_tls;
        Ok(next)
    }
}

impl Drop for ControlPlaneHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Polls `check` until it returns `Ok`, at most `timeout`; returns the last
/// error when time runs out. The only way tests wait for something.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    loop {
        match check().await {
            Ok(v) => return Ok(v),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(e.context(format!("still failing after {timeout:?}")));
            }
            Err(_) => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(200));
            }
        }
    }
}

/// The HS256 secret every testkit gateway accepts.
pub const TEST_SECRET: &str = "prism-testkit-secret-0123456789abcdef";

/// The `iss` of every testkit token (checked only where configured).
pub const TEST_ISSUER: &str = "prism-testkit";
/// The `aud` of every testkit token (checked only where configured).
pub const TEST_AUDIENCE: &str = "prism";

/// The claims of [`token`]: an hour from now, with [`TEST_ISSUER`] and
/// [`TEST_AUDIENCE`].
pub fn claims(sub: &str, tenant: Option<&str>, roles: &[&str]) -> prism_auth::Claims {
    prism_auth::Claims {
        iss: Some(TEST_ISSUER.into()),
        aud: Some(TEST_AUDIENCE.into()),
        ..prism_auth::Claims::new(sub, tenant, roles, 3600)
    }
}

/// A token for `sub` with `roles` (and optionally a tenant), signed with
/// [`TEST_SECRET`], valid for an hour.
pub fn token(sub: &str, tenant: Option<&str>, roles: &[&str]) -> String {
    prism_auth::sign_hs256(TEST_SECRET, &claims(sub, tenant, roles)).unwrap_or_default()
}

/// A superuser token.
pub fn admin_token() -> String {
    token("test-admin", None, &["admin"])
}

/// An in-process gateway shard on `127.0.0.1:<ephemeral>` with its own
/// temp data directory.
pub struct GatewayHandle {
    pub addr: SocketAddr,
    /// Where its `/metrics`, `/healthz` and `/readyz` are served.
    pub metrics_addr: SocketAddr,
    pub gateway: prism_gateway::Gateway,
    /// How this handle's clients reach it when it serves TLS.
    client_tls: prism_client::Tls,
    _temp: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<prism_gateway::Result<()>>>,
}

impl GatewayHandle {
    /// Starts shard `shard_id` watching `control_plane`.
    pub async fn start(control_plane: &str, shard_id: &str) -> anyhow::Result<Self> {
        Self::start_with(control_plane, shard_id, |_| {}).await
    }

    /// Starts two instances (replicas) of shard `shard_id`, each with a
    /// data directory of its own, and waits until both are registered.
    pub async fn start_replicas(cp: &ControlPlaneHandle, shard_id: &str) -> anyhow::Result<[Self; 2]> {
        let gateways = [Self::start(&cp.endpoint(), shard_id).await?, Self::start(&cp.endpoint(), shard_id).await?];
        eventually(Duration::from_secs(20), || async {
            let req = prism_proto::control::ListShardsRequest {};
            let shards = cp.client().await?.list_shards(req).await?.into_inner().shards;
            let n = shards.iter().find(|s| s.shard_id == shard_id).map_or(0, |s| s.instances.len());
            anyhow::ensure!(n == 2, "{n} instances of {shard_id} registered");
            Ok(())
        })
        .await?;
        Ok(gateways)
    }

    /// As [`start`](Self::start), with `adjust` applied to the config.
    pub async fn start_with(
        control_plane: &str,
        shard_id: &str,
        adjust: impl FnOnce(&mut prism_gateway::GatewayConfig),
    ) -> anyhow::Result<Self> {
        let temp = tempfile::tempdir().context("temp dir")?;
        let mut config = prism_gateway::GatewayConfig {
            shard_id: shard_id.into(),
            control_plane: control_plane.into(),
            data_dir: Some(temp.path().join(shard_id)),
            ..Default::default()
        };
        config.auth.hs256_secret = Some(TEST_SECRET.into());
        // What `prism dev` gives its gateways: a `shard` token.
        config.control_plane_token = Some(token(shard_id, None, &[prism_proto::access::SHARD_ROLE]).into());
        adjust(&mut config);
        let gateway = prism_gateway::Gateway::open(config).context("open gateway")?;
        let listener = TcpListener::bind("127.0.0.1:0").await.context("bind")?;
        let addr = listener.local_addr()?;
        let metrics = TcpListener::bind("127.0.0.1:0").await.context("bind metrics")?;
        let metrics_addr = metrics.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(gateway.clone().serve_with_metrics(listener, Some(metrics), async {
            let _ = stopped.await;
        }));
        Ok(Self {
            addr,
            metrics_addr,
            gateway,
            client_tls: prism_client::Tls::default(),
            _temp: temp,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// How [`kv`](Self::kv) reaches this gateway when it serves TLS.
    pub fn with_client_tls(mut self, tls: prism_client::Tls) -> Self {
        self.client_tls = tls;
        self
    }

    /// `127.0.0.1:port`, or `https://127.0.0.1:port` when it serves TLS
    /// (what it registers).
    pub fn endpoint(&self) -> String {
        if self.gateway.tls.is_some() { format!("https://{}", self.addr) } else { self.addr.to_string() }
    }

    /// A KeyValue client presenting `token`.
    pub async fn kv(&self, token: Option<&str>) -> anyhow::Result<prism_client::KeyValueClient> {
        Ok(prism_client::key_value_with(&self.endpoint(), token, &self.client_tls).await?)
    }

    /// A connected channel to it, for tests and benches that make their
    /// own tonic clients (plugins' tests reach a gateway through the
    /// testkit, never through `prism-client` themselves).
    pub async fn channel(&self) -> anyhow::Result<tonic::transport::Channel> {
        Ok(prism_client::channel(&self.endpoint(), &self.client_tls).await?)
    }

    /// The text of its `/metrics`.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        let (status, body) = http::get(&self.metrics_addr.to_string(), "/metrics").await?;
        anyhow::ensure!(status == 200, "/metrics answered {status}: {body}");
        Ok(body)
    }

    /// Asks it to stop (as a signal would) without waiting: it drains
    /// (`drain_delay_ms`) while the caller watches. [`stop`](Self::stop)
    /// waits for the end.
    pub fn begin_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Waits until this gateway's snapshot has reached `revision`.
    pub async fn caught_up(&self, revision: u64) -> anyhow::Result<()> {
        eventually(Duration::from_secs(10), || async {
            let have = self.gateway.metadata.load().revision;
            anyhow::ensure!(have >= revision, "gateway at revision {have}, want {revision}");
            Ok(())
        })
        .await
    }

    pub async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.context("gateway task")?.context("gateway")?;
        }
        Ok(())
    }
}

impl Drop for GatewayHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A control plane with shards `shard-0` and `shard-1` and one gateway for
/// each: what `prism dev` runs, on ephemeral ports, with authentication
/// on everywhere ([`TEST_SECRET`]): the control plane's own
/// [`client`](ControlPlaneHandle::client) is the superuser, gateways
/// present `shard` tokens.
pub struct Cluster {
    pub control_plane: ControlPlaneHandle,
    pub gateways: Vec<GatewayHandle>,
}

impl Cluster {
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(|_| {}).await
    }

    /// As [`start`](Self::start), with `adjust` applied to every gateway's
    /// configuration.
    pub async fn start_with(adjust: impl Fn(&mut prism_gateway::GatewayConfig)) -> anyhow::Result<Self> {
        Self::start_configured(|_| {}, adjust).await
    }

    /// As [`start_with`](Self::start_with), with `adjust_control_plane`
    /// applied to the control plane's configuration too.
    pub async fn start_configured(
        adjust_control_plane: impl FnOnce(&mut ControlPlaneConfig),
        adjust: impl Fn(&mut prism_gateway::GatewayConfig),
    ) -> anyhow::Result<Self> {
        let mut config = ControlPlaneConfig { shards: vec!["shard-0".into(), "shard-1".into()], ..Default::default() };
        config.auth.hs256_secret = Some(TEST_SECRET.into());
        adjust_control_plane(&mut config);
        let control_plane = ControlPlaneHandle::start_with(config).await?;
        let mut gateways = Vec::new();
        for shard in ["shard-0", "shard-1"] {
            gateways.push(GatewayHandle::start_with(&control_plane.endpoint(), shard, &adjust).await?);
        }
        Ok(Self { control_plane, gateways })
    }

    /// What `prism dev` runs, with TLS on every hop: the control plane and
    /// the gateways serve certificates of `servers`; the control plane
    /// requires client certificates of `clients`, and each gateway presents
    /// one named after its shard; the handles' clients trust `servers`
    /// (and present `test-admin` certificates to the control plane).
    pub async fn start_tls(servers: &tls::Pki, clients: &tls::Pki) -> anyhow::Result<Self> {
        let cp_tls = servers.server("control-plane", Some((clients, true)))?;
        let client = prism_client::Tls::new(&servers.client(clients, "test-admin", false)?)?;
        let mut config = ControlPlaneConfig {
            shards: vec!["shard-0".into(), "shard-1".into()],
            tls: Some(cp_tls),
            ..Default::default()
        };
        config.auth.hs256_secret = Some(TEST_SECRET.into());
        let control_plane = ControlPlaneHandle::start_with(config).await?.with_client_tls(client.clone());
        let mut gateways = Vec::new();
        for shard in ["shard-0", "shard-1"] {
            let tls = servers.server(shard, None)?;
            let to_control_plane = servers.client(clients, shard, false)?;
            let gateway = GatewayHandle::start_with(&control_plane.endpoint(), shard, |c| {
                c.tls = Some(tls);
                c.control_plane_tls = Some(to_control_plane);
            })
            .await?;
            gateways.push(gateway.with_client_tls(client.clone()));
        }
        Ok(Self { control_plane, gateways })
    }

    /// The gateway of `shard_id`.
    pub fn gateway(&self, shard_id: &str) -> Option<&GatewayHandle> {
        self.gateways.iter().find(|g| g.gateway.config.shard_id == shard_id)
    }

    /// Creates `name` with `spec`, waits until it is ACTIVE, and returns the
    /// gateway that owns it, caught up to the ACTIVE revision.
    pub async fn active_namespace(
        &self,
        name: &str,
        spec: prism_proto::control::NamespaceSpec,
    ) -> anyhow::Result<&GatewayHandle> {
        let ns = self.control_plane.create_active(name, spec, &[]).await?;
        let gateway = self.gateway(&ns.shard_id).context("owning gateway")?;
        gateway.caught_up(ns.revision).await?;
        Ok(gateway)
    }
}
pub mod browser;
pub mod cpu;
pub mod grpc;
pub mod h2load;
pub mod http;
pub mod kafka;
pub mod otlp;
pub mod postgres;
pub mod prometheus;
pub mod proxy;
pub mod pulsar;
pub mod tls;
