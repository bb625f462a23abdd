//! The gateway's membership in the shard registry (SPEC §5): it registers
//! `{shard_id, advertised endpoint, store id}` with the control plane, heartbeats a
//! quarter of the lease apart, registers again when the control plane no
//! longer knows the instance (its lease expired while the two could not
//! talk), and deregisters on a clean shutdown so clients stop being sent
//! here at once instead of after a lease.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use prism_client::ControlPlaneClient;
use prism_proto::control::{DeregisterShardRequest, HeartbeatRequest, RegisterShardRequest};
use tokio::sync::watch;

use super::ControlPlane;
use crate::health::Readiness;

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long a clean shutdown waits for its deregistration.
const DEREGISTER_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a registration may wait for its answer before it is tried
/// again on a new connection. (A heartbeat waits at most its period.)
/// Without a bound, a call on a connection that stopped answering waits
/// for HTTP/2 keepalive to give up on it: longer than a lease.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(5);

/// This instance's registration, as far as it is known.
#[derive(Debug, Default)]
pub struct Registration {
    instance_id: ArcSwapOption<String>,
}

impl Registration {
    /// The instance id the control plane gave this gateway; `None` while
    /// unregistered.
    pub fn instance_id(&self) -> Option<Arc<String>> {
        self.instance_id.load_full()
    }
}

/// What the registration task uses.
#[derive(Debug)]
pub struct Member {
    pub link: Arc<ControlPlane>,
    pub shard_id: String,
    /// Its store id (`crate::store_id`), sent with every registration.
    pub store_id: String,
    /// The endpoint it registers.
    pub endpoint: String,
    /// What it does beyond serving (`RegisterShardRequest.features`).
    pub features: Vec<String>,
    pub registration: Arc<Registration>,
    pub readiness: Arc<Readiness>,
}

impl Member {
    async fn client(&self) -> Result<ControlPlaneClient, tonic::Status> {
        self.link.client().await.map_err(|e| tonic::Status::unavailable(e.to_string()))
    }

    /// Registers; returns the heartbeat period (a quarter lease).
    async fn register(&self) -> Result<Duration, tonic::Status> {
        let request = RegisterShardRequest {
            shard_id: self.shard_id.clone(),
            endpoint: self.endpoint.clone(),
            store_id: self.store_id.clone(),
            features: self.features.clone(),
        };
        let mut client = self.client().await?;
        let response = answered(REGISTER_TIMEOUT, client.register_shard(request)).await?.into_inner();
        let lease = response.lease_ttl.and_then(|d| Duration::try_from(d).ok()).unwrap_or(Duration::from_secs(10));
        tracing::info!(
            shard = %self.shard_id,
            endpoint = %self.endpoint,
            store = %self.store_id,
            instance = %response.instance_id,
            ?lease,
            "registered with the control plane"
        );
        self.registration.instance_id.store(Some(Arc::new(response.instance_id)));
        self.readiness.registered();
        Ok((lease / 4).max(Duration::from_millis(50)))
    }

    /// One heartbeat, answered within `period`: a later answer leaves too
    /// little of the lease to try again.
    async fn heartbeat(&self, instance_id: String, period: Duration) -> Result<(), tonic::Status> {
        let request = HeartbeatRequest { shard_id: self.shard_id.clone(), instance_id };
        let mut client = self.client().await?;
        answered(period, client.heartbeat(request)).await.map(|_| ())
    }

    async fn deregister(&self) {
        let Some(instance_id) = self.registration.instance_id.swap(None) else { return };
        let request = DeregisterShardRequest { shard_id: self.shard_id.clone(), instance_id: (*instance_id).clone() };
        let done = async {
            match self.client().await {
                Ok(mut client) => client.deregister_shard(request).await.map(|_| ()),
                Err(e) => Err(e),
            }
        };
        match tokio::time::timeout(DEREGISTER_TIMEOUT, done).await {
            Ok(Ok(())) => tracing::info!(instance = %instance_id, "deregistered from the control plane"),
            Ok(Err(e)) => tracing::warn!(error = %e, "deregistering failed; the lease will expire"),
            Err(_) => tracing::warn!("deregistering timed out; the lease will expire"),
        }
    }
}

/// `call`'s answer, or DEADLINE_EXCEEDED after `within`.
async fn answered<T>(
    within: Duration,
    call: impl std::future::Future<Output = Result<T, tonic::Status>>,
) -> Result<T, tonic::Status> {
    tokio::time::timeout(within, call)
        .await
        .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("the control plane did not answer in time")))
}

/// Keeps this gateway registered as `endpoint` until `shutdown`, then
/// deregisters it. It registers once it holds its first metadata
/// snapshot: registering gives it namespaces (a joining shard takes its
/// share) and sends clients its way, and a gateway that does not know a
/// namespace yet answers NOT_FOUND, which clients do not retry.
pub async fn run(member: Member, mut shutdown: watch::Receiver<bool>) {
    let mut state = member.readiness.subscribe();
    tokio::select! {
        loaded = state.wait_for(|s| s.snapshot) => if loaded.is_err() { return },
        _ = shutdown.wait_for(|stop| *stop) => return,
    }
    let mut backoff = MIN_BACKOFF;
    // The heartbeat period while registered.
    let mut registered: Option<Duration> = None;
    let mut wait = Duration::ZERO;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.wait_for(|stop| *stop) => break,
        }
        let instance = member.registration.instance_id();
        match (registered, instance) {
            (Some(period), Some(id)) => match member.heartbeat((*id).clone(), period).await {
                Ok(()) => wait = period,
                Err(s) if s.code() == tonic::Code::NotFound => {
                    tracing::warn!(instance = %id, "the control plane no longer knows this instance; registering again");
                    member.registration.instance_id.store(None);
                    registered = None;
                    wait = Duration::ZERO;
                }
                Err(s) => {
                    // The lease has three more periods: try again sooner.
                    tracing::warn!(error = %s, "heartbeat failed");
                    member.link.reset().await;
                    wait = (period / 2).max(MIN_BACKOFF);
                }
            },
            _ => match member.register().await {
                Ok(period) => {
                    registered = Some(period);
                    backoff = MIN_BACKOFF;
                    wait = period;
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "cannot register with the control plane");
                    member.link.reset().await;
                    wait = backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            },
        }
    }
    member.deregister().await;
}
