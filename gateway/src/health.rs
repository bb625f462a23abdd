//! Whether this gateway is ready for traffic, told the same way to gRPC
//! health (`grpc.health.v1`, per service) and to `/readyz`:
//!
//! - NOT_SERVING until it holds its first metadata snapshot *and* has
//!   registered with the control plane (before that it would refuse every
//!   namespace, or clients could not find it);
//! - SERVING after — and it stays SERVING while the control plane is
//!   unreachable: serving from the last snapshot is the point of holding
//!   one, and `prism_gateway_metadata_staleness_seconds` says how old it is;
//! - NOT_SERVING again from the moment shutdown begins (draining), so
//!   load balancers and clients move away before connections close.

use std::sync::Arc;

use prism_proto::kv::key_value_service_server::KeyValueServiceServer;
use prism_proto::timeseries::time_series_service_server::TimeSeriesServiceServer;
use tokio::sync::watch;

use crate::kv_service::KvService;
use crate::ts_service::TsService;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct State {
    pub snapshot: bool,
    pub registered: bool,
    pub draining: bool,
}

impl State {
    pub fn ready(&self) -> bool {
        self.snapshot && self.registered && !self.draining
    }
}

/// The gateway's readiness; the watcher, the registration and shutdown
/// move it forward, never back (except draining, which is final).
#[derive(Debug)]
pub struct Readiness {
    state: watch::Sender<State>,
}

impl Default for Readiness {
    fn default() -> Self {
        Self { state: watch::Sender::new(State::default()) }
    }
}

impl Readiness {
    pub fn snapshot_loaded(&self) {
        self.state.send_if_modified(|s| !std::mem::replace(&mut s.snapshot, true));
    }

    pub fn registered(&self) {
        self.state.send_if_modified(|s| !std::mem::replace(&mut s.registered, true));
    }

    pub fn draining(&self) {
        self.state.send_if_modified(|s| !std::mem::replace(&mut s.draining, true));
    }

    pub fn state(&self) -> State {
        *self.state.borrow()
    }

    pub fn ready(&self) -> bool {
        self.state().ready()
    }

    pub fn subscribe(&self) -> watch::Receiver<State> {
        self.state.subscribe()
    }
}

/// Keeps gRPC health in step with `readiness` (the overall `""` service
/// and both data services) until `stopped`.
pub async fn report(
    readiness: Arc<Readiness>,
    reporter: tonic_health::server::HealthReporter,
    mut stopped: watch::Receiver<bool>,
) {
    let mut state = readiness.subscribe();
    loop {
        let ready = state.borrow_and_update().ready();
        if ready {
            reporter.set_serving::<KeyValueServiceServer<KvService>>().await;
            reporter.set_serving::<TimeSeriesServiceServer<TsService>>().await;
            reporter.set_service_status("", tonic_health::ServingStatus::Serving).await;
        } else {
            reporter.set_not_serving::<KeyValueServiceServer<KvService>>().await;
            reporter.set_not_serving::<TimeSeriesServiceServer<TsService>>().await;
            reporter.set_service_status("", tonic_health::ServingStatus::NotServing).await;
        }
        tokio::select! {
            changed = state.changed() => if changed.is_err() { return },
            _ = stopped.wait_for(|s| *s) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_needs_a_snapshot_and_a_registration_and_no_drain() {
        let r = Readiness::default();
        assert!(!r.ready());
        r.snapshot_loaded();
        assert!(!r.ready());
        r.registered();
        assert!(r.ready());
        r.draining();
        assert!(!r.ready());
        r.registered();
        assert!(!r.ready(), "draining is final");
    }
}
