//! Usage reports (SPEC §6): every `usage_report_interval_ms` a registered
//! gateway sends the control plane what each namespace it tracks used over
//! its last one-second window, and applies the tenant shares the control
//! plane answers — its part of each tenant's limits, in proportion to where
//! the tenant's traffic is.

use std::sync::Arc;
use std::time::Duration;

use prism_client::ControlPlaneClient;
use prism_proto::control::{NamespaceUsage, ReportUsageRequest};
use tokio::sync::watch;

use crate::quota::{Metric, Subject, Window};
use crate::server::Shared;

/// What this gateway's namespaces used over the last second.
pub fn current(shared: &Shared) -> Vec<NamespaceUsage> {
    let slot = Window::slot(shared.quotas.clock().now_ms());
    shared
        .quotas
        .namespaces()
        .into_iter()
        .filter_map(|(name, tracker)| {
            let used = tracker.window().usage(slot);
            let concurrent = i64::from(tracker.concurrent());
            let requests = used.get(Metric::Requests);
            (requests > 0 || concurrent > 0).then(|| NamespaceUsage {
                namespace: name,
                requests_per_second: requests as f64,
                read_bytes_per_second: used.get(Metric::ReadBytes) as f64,
                write_bytes_per_second: used.get(Metric::WriteBytes) as f64,
                storage_bytes: 0,
                concurrent_requests: concurrent,
            })
        })
        .collect()
}

/// Reports usage until `shutdown`.
pub async fn run(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let every = Duration::from_millis(shared.config.usage_report_interval_ms);
    let mut client: Option<ControlPlaneClient> = None;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        let Some(instance_id) = shared.registration.instance_id() else { continue };
        if client.is_none() {
            let config = &shared.config;
            match prism_client::control_plane(&config.control_plane, config.control_plane_token.as_deref()).await {
                Ok(c) => client = Some(c),
                Err(e) => {
                    tracing::debug!(error = %e, "cannot reach the control plane to report usage");
                    continue;
                }
            }
        }
        let Some(c) = client.as_mut() else { continue };
        let request = ReportUsageRequest {
            shard_id: shared.config.shard_id.clone(),
            instance_id: (*instance_id).clone(),
            namespaces: current(&shared),
        };
        match c.report_usage(request).await {
            Ok(response) => {
                for s in response.into_inner().tenant_shares {
                    shared.quotas.set_share(Subject::Tenant(&s.tenant_id), s.share);
                }
            }
            Err(s) => {
                // NOT_FOUND: registration will notice and register again.
                tracing::debug!(status = %s, "usage report refused");
                if s.code() != tonic::Code::NotFound {
                    client = None;
                }
            }
        }
    }
}
