//! Refused data requests reach the control plane's audit log: who, which
//! RPC, which namespace, and the refusal.

use std::time::Duration;

use prism_proto::control::{
    Abstraction, AppendAuditRequest, AuditEvent, Backend, ListAuditEventsRequest, NamespaceSpec,
};
use prism_proto::kv;
use prism_testkit::{Cluster, eventually, token};
use tonic::Code;
use tonic_types::StatusExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_data_requests_are_audited() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let spec = NamespaceSpec {
        abstraction: Abstraction::KeyValue as i32,
        backend: Backend::Embedded as i32,
        ..Default::default()
    };
    let gw = cluster.active_namespace("acme/secrets", spec).await?;
    let get = kv::GetItemsRequest { namespace: "acme/secrets".into(), id: "r".into(), ..Default::default() };

    let stranger = token("mallory", Some("globex"), &[]);
    let e = gw.kv(Some(&stranger)).await?.get_items(get.clone()).await.expect_err("denied");
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = gw.kv(Some("not-a-jwt")).await?.get_items(get).await.expect_err("unauthenticated");
    assert_eq!(e.code(), Code::Unauthenticated);

    let cp = cluster.control_plane.client().await?;
    let events = eventually(Duration::from_secs(20), || {
        let mut cp = cp.clone();
        async move {
            let req = ListAuditEventsRequest {
                target: "acme/secrets".into(),
                action: "GetItems".into(),
                ..Default::default()
            };
            let events = cp.list_audit_events(req).await?.into_inner().events;
            anyhow::ensure!(events.len() >= 2, "audited so far: {events:?}");
            Ok(events)
        }
    })
    .await?;
    let denied = events.iter().find(|e| e.result == "PERMISSION_DENIED").expect("the denial");
    assert_eq!((denied.principal.as_str(), denied.tenant_id.as_str()), ("mallory", "acme"));
    assert!(denied.detail.contains("may not read"), "{}", denied.detail);
    let unauthenticated = events.iter().find(|e| e.result == "UNAUTHENTICATED").expect("the unauthenticated call");
    assert_eq!(unauthenticated.principal, "");
    // The gateway counts them once the control plane has answered.
    eventually(Duration::from_secs(10), || async {
        let sent = gw.gateway.shared.audit.sent.load(std::sync::atomic::Ordering::Relaxed);
        anyhow::ensure!(sent >= 2, "{sent} sent");
        Ok(())
    })
    .await?;

    // Only shards (and admins) append; appended events are checked.
    let event = |detail: &str| AuditEvent { action: "GetItems".into(), detail: detail.into(), ..Default::default() };
    let mut user = cluster.control_plane.client_as(Some(&token("alice", Some("acme"), &["tenant-admin"]))).await?;
    let e = user.append_audit(AppendAuditRequest { events: vec![event("x")] }).await.expect_err("not a shard");
    assert_eq!(e.code(), Code::PermissionDenied);
    let mut shard = cluster.control_plane.client_as(Some(&token("shard-0", None, &["shard"]))).await?;
    let e = shard.append_audit(AppendAuditRequest { events: vec![event("ok"), event("a\nb")] }).await.expect_err("bad");
    assert_eq!(e.code(), Code::InvalidArgument);
    let field = e.get_details_bad_request().and_then(|b| b.field_violations.first().map(|v| v.field.clone()));
    assert_eq!(field.as_deref(), Some("events[1].detail"));
    Ok(())
}
