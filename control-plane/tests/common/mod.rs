//! Helpers shared by the control plane's gRPC tests: starting a control
//! plane, namespace specs, and checks of refusals.

// Each test binary uses only some of these helpers.
#![allow(dead_code)]

use std::fmt::Debug;

use prism_client::ControlPlaneClient;
use prism_control_plane::ControlPlaneConfig;
use prism_proto::control::{
    Abstraction, Backend, CreateNamespaceRequest, CreateTenantRequest, Namespace, NamespaceSpec, Tenant, WatchRequest,
    watch_response::Event,
};
use prism_testkit::ControlPlaneHandle;
use tonic::{Code, Response, Status};
use tonic_types::StatusExt;

/// A control plane whose new namespaces are assigned to `shards`.
pub async fn start(shards: &[&str]) -> anyhow::Result<(ControlPlaneHandle, ControlPlaneClient)> {
    start_with(ControlPlaneConfig { shards: shards.iter().map(|s| s.to_string()).collect(), ..Default::default() })
        .await
}

pub async fn start_with(config: ControlPlaneConfig) -> anyhow::Result<(ControlPlaneHandle, ControlPlaneClient)> {
    let handle = ControlPlaneHandle::start_with(config).await?;
    let client = prism_client::control_plane(&handle.endpoint(), None).await?;
    Ok((handle, client))
}

/// An embedded KEY_VALUE namespace: valid everywhere.
pub fn kv_spec() -> NamespaceSpec {
    NamespaceSpec {
        abstraction: Abstraction::KeyValue as i32,
        backend: Backend::Embedded as i32,
        ..NamespaceSpec::default()
    }
}

pub async fn create_tenant(client: &mut ControlPlaneClient, id: &str) -> anyhow::Result<Tenant> {
    let req = CreateTenantRequest { tenant_id: id.into(), display_name: format!("tenant {id}"), ..Default::default() };
    Ok(client.create_tenant(req).await?.into_inner())
}

pub async fn create_namespace(client: &mut ControlPlaneClient, name: &str) -> anyhow::Result<Namespace> {
    let req = CreateNamespaceRequest { name: name.into(), spec: Some(kv_spec()) };
    Ok(client.create_namespace(req).await?.into_inner())
}

/// The control plane's revision, read through gRPC: the revision of a
/// fresh Watch snapshot.
pub async fn revision(client: &mut ControlPlaneClient) -> anyhow::Result<u64> {
    let mut stream = client.watch(WatchRequest { from_revision: 0 }).await?.into_inner();
    loop {
        match stream.message().await?.and_then(|m| m.event) {
            Some(Event::Snapshot(chunk)) if chunk.last => return Ok(chunk.revision),
            Some(Event::Snapshot(_)) => {}
            other => anyhow::bail!("a watch from 0 must start with a snapshot, got {other:?}"),
        }
    }
}

/// Asserts a call was refused with `code` and, for INVALID_ARGUMENT, a
/// `google.rpc.BadRequest` naming exactly `field`. Returns the status.
#[track_caller]
pub fn refused<T: Debug>(result: Result<Response<T>, Status>, code: Code, field: Option<&str>) -> Status {
    let status = result.expect_err("the call must be refused");
    assert_eq!(status.code(), code, "{status:?}");
    if code == Code::InvalidArgument {
        let bad = status.get_details_bad_request().unwrap_or_else(|| panic!("no BadRequest in {status:?}"));
        let fields: Vec<&str> = bad.field_violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, [field.expect("INVALID_ARGUMENT cases name their field")], "{status:?}");
    } else {
        assert!(field.is_none(), "only INVALID_ARGUMENT names a field");
    }
    status
}
