//! The gateway's background tasks, together, and the one link to the
//! control plane they share:
//!
//! - [`watcher`] keeps the metadata snapshot current (the only writer);
//! - [`registration`] keeps this instance in the shard registry;
//! - [`provision`] creates and removes backend resources and reports the
//!   namespaces' status;
//! - [`migrate`] does this instance's part of the migrations it takes
//!   part in, and reports each step;
//! - [`usage`] reports what the namespaces used and applies tenant shares;
//! - [`audit`] ships the audit sink's events to the audit log;
//! - [`reclaim`] removes expired items and events past retention.
//!
//! Each task is given what it uses, nothing more. The request path never
//! imports this module: it reads what the tasks keep current (the
//! snapshot, quota shares) through the values they share.

pub mod audit;
pub mod migrate;
pub mod provision;
pub mod reclaim;
pub mod registration;
pub mod usage;
pub mod watcher;

use prism_client::ControlPlaneClient;

/// The gateway's link to the control plane, as this gateway (its token,
/// its TLS): connected on first use and shared by every task — one
/// HTTP/2 connection that the watch stream, heartbeats and reports
/// multiplex — until a task finds it broken and drops it; the next use
/// connects again, and the watch stream follows on the new connection
/// ([`resets`](Self::resets)): a connection that stopped answering one
/// task (a heartbeat past its period) answers none, and the stream would
/// otherwise wait on it for HTTP/2 keepalive to give up.
#[derive(Debug)]
pub struct ControlPlane {
    address: String,
    token: Option<prism_auth::SecretString>,
    tls: prism_client::Tls,
    client: tokio::sync::Mutex<Option<ControlPlaneClient>>,
    /// How many times the connection was dropped.
    resets: tokio::sync::watch::Sender<u64>,
}

impl ControlPlane {
    pub fn new(address: String, token: Option<prism_auth::SecretString>, tls: prism_client::Tls) -> Self {
        Self { address, token, tls, client: tokio::sync::Mutex::new(None), resets: tokio::sync::watch::Sender::new(0) }
    }

    /// Changes when a task drops the connection (from now on).
    pub fn resets(&self) -> tokio::sync::watch::Receiver<u64> {
        self.resets.subscribe()
    }

    /// A client on the shared connection, connecting it first if there is
    /// none (one task connects; the others wait for its outcome).
    pub async fn client(&self) -> prism_client::Result<ControlPlaneClient> {
        let mut client = self.client.lock().await;
        if let Some(c) = client.as_ref() {
            return Ok(c.clone());
        }
        let c = prism_client::control_plane_with(&self.address, self.token.as_deref(), &self.tls).await?;
        *client = Some(c.clone());
        Ok(c)
    }

    /// Drops the connection after a failure that may be the connection's:
    /// the next [`client`](Self::client) connects again.
    pub async fn reset(&self) {
        *self.client.lock().await = None;
        self.resets.send_modify(|n| *n += 1);
    }
}
