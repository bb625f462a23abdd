//! Test fixtures: Prism's servers started in-process on ephemeral ports in
//! temp dirs, each behind a handle that shuts it down, and a bounded
//! [`eventually`] poll instead of sleeps.

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
    pub plane: ControlPlane,
    data_dir: PathBuf,
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

    /// Starts on `config.data_dir` as given (e.g. to restart on the same data).
    pub async fn start_in(config: ControlPlaneConfig) -> anyhow::Result<Self> {
        let data_dir = config.data_dir.clone();
        // After a restart the previous server's last tasks may still hold
        // the store open for a moment.
        let plane = eventually(Duration::from_secs(10), || {
            let config = config.clone();
            async move { server::open(config).context("open control plane") }
        })
        .await?;
        let listener = TcpListener::bind("127.0.0.1:0").await.context("bind")?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server::serve(plane.clone(), listener, async {
            let _ = stopped.await;
        }));
        Ok(Self { addr, plane, data_dir, _temp: None, stop: Some(stop), task: Some(task) })
    }

    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// A gRPC client of this control plane.
    pub async fn client(&self) -> anyhow::Result<ControlPlaneClient> {
        Ok(prism_client::control_plane(&self.endpoint(), None).await?)
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
    /// (on a new port); `config` supplies everything but the directory.
    pub async fn restart(mut self, mut config: ControlPlaneConfig) -> anyhow::Result<Self> {
        self.stop().await?;
        // The store's file must be closed before it is opened again.
        let temp = self._temp.take();
        config.data_dir = self.data_dir.clone();
        drop(self);
        let mut next = Self::start_in(config).await?;
        next._temp = temp;
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
