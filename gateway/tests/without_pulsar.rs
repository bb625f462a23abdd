//! A gateway built without the `pulsar` feature (the default `cargo
//! build`) gives Pulsar namespaces an honest answer: DEGRADED, saying why,
//! and requests refused with FAILED_PRECONDITION.
#![cfg(not(feature = "pulsar"))]

use std::time::Duration;

use prism_proto::control::{
    Abstraction, Backend, BackendConfig, CreateNamespaceRequest, CreateTenantRequest, GetNamespaceRequest,
    NamespaceSpec, NamespaceStatus, PulsarConfig, backend_config,
};
use prism_testkit::{Cluster, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pulsar_namespace_is_degraded_without_the_plugin() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let mut cp = cluster.control_plane.client().await?;
    cp.create_tenant(CreateTenantRequest { tenant_id: "acme".into(), ..Default::default() }).await?;
    let spec = NamespaceSpec {
        abstraction: Abstraction::TimeSeries as i32,
        backend: Backend::Pulsar as i32,
        backend_config: Some(Box::new(BackendConfig {
            config: Some(backend_config::Config::Pulsar(PulsarConfig {
                service_url: "pulsar://broker:6650".into(),
                topic: String::new(),
            })),
        })),
        ..Default::default()
    };
    cp.create_namespace(CreateNamespaceRequest { name: "acme/events".into(), spec: Some(spec) }).await?;
    let ns = eventually(Duration::from_secs(10), || {
        let mut cp = cp.clone();
        async move {
            let ns = cp.get_namespace(GetNamespaceRequest { name: "acme/events".into() }).await?.into_inner();
            anyhow::ensure!(ns.status == NamespaceStatus::Degraded as i32, "status {}", ns.status);
            Ok(ns)
        }
    })
    .await?;
    assert!(ns.status_reason.contains("built without the pulsar plugin"), "{}", ns.status_reason);
    Ok(())
}
