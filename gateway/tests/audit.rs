//! Data requests reach the control plane's audit log: every refused one
//! (who, which RPC, which namespace, from where, and the refusal), and the
//! successful ones of namespaces that sample them.

use std::time::Duration;

use prism_proto::control::{
    Abstraction, Access, AccessLevel, AppendAuditRequest, AuditEvent, Backend, Grant, ListAuditEventsRequest,
    NamespaceSpec, Policies,
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
    let denied = events.iter().find(|e| e.result == "permission_denied").expect("the denial");
    // The principal as the log names it: its tenant, then its sub.
    assert_eq!((denied.principal.as_str(), denied.tenant_id.as_str()), ("globex:mallory", "acme"));
    assert!(denied.client_address.starts_with("127.0.0.1:"), "{}", denied.client_address);
    assert!(denied.detail.contains("may not read"), "{}", denied.detail);
    let unauthenticated = events.iter().find(|e| e.result == "unauthenticated").expect("the unauthenticated call");
    assert_eq!(unauthenticated.principal, "");
    // The gateway counts them once the control plane has answered.
    eventually(Duration::from_secs(10), || async {
        let sent = gw.gateway.audit.sent.load(std::sync::atomic::Ordering::Relaxed);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_can_have_their_successful_requests_audited() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let spec = |rate: f64| NamespaceSpec {
        abstraction: Abstraction::KeyValue as i32,
        backend: Backend::Embedded as i32,
        policies: Some(Box::new(Policies { data_access_audit_rate: rate, ..Default::default() })),
        access: Some(Box::new(Access {
            owners: vec![],
            consumers: vec![Grant { principal: "app".into(), level: AccessLevel::ReadWrite as i32 }],
        })),
        ..Default::default()
    };
    let audited = cluster.active_namespace("acme/audited", spec(1.0)).await?;
    let quiet = cluster.active_namespace("acme/quiet", spec(0.0)).await?;
    let app = token("app", Some("acme"), &[]);
    for (gw, ns) in [(&audited, "acme/audited"), (&quiet, "acme/quiet")] {
        let mut kv = gw.kv(Some(&app)).await?;
        let item = kv::Item { key: b"k".to_vec(), value: b"v".to_vec(), ttl: None };
        kv.put_items(kv::PutItemsRequest {
            namespace: ns.into(),
            id: "r".into(),
            items: vec![item],
            ..Default::default()
        })
        .await?;
        for _ in 0..3 {
            kv.get_items(kv::GetItemsRequest { namespace: ns.into(), id: "r".into(), ..Default::default() }).await?;
        }
    }

    let cp = cluster.control_plane.client().await?;
    let list = |target: &'static str| {
        let mut cp = cp.clone();
        async move {
            let req =
                ListAuditEventsRequest { target: target.into(), principal: "acme:app".into(), ..Default::default() };
            anyhow::Ok(cp.list_audit_events(req).await?.into_inner().events)
        }
    };
    let events = eventually(Duration::from_secs(20), || async {
        let events = list("acme/audited").await?;
        anyhow::ensure!(events.len() >= 4, "audited so far: {events:?}");
        Ok(events)
    })
    .await?;
    assert_eq!(events.len(), 4, "one event per request: {events:?}");
    let mut actions: Vec<&str> = events.iter().map(|e| e.action.as_str()).collect();
    actions.sort_unstable();
    assert_eq!(actions, ["GetItems", "GetItems", "GetItems", "PutItems"]);
    for e in &events {
        assert_eq!((e.result.as_str(), e.tenant_id.as_str()), ("ok", "acme"));
        assert!(e.client_address.starts_with("127.0.0.1:"), "{}", e.client_address);
    }
    // Events are queued before a response leaves the gateway: once every
    // queued one is sent, the quiet namespace's successes would be listed.
    for gw in &cluster.gateways {
        eventually(Duration::from_secs(10), || async {
            use std::sync::atomic::Ordering::Relaxed;
            let sink = &gw.gateway.audit;
            let (recorded, sent) = (sink.recorded.load(Relaxed), sink.sent.load(Relaxed));
            anyhow::ensure!(sent == recorded && sink.dropped.load(Relaxed) == 0, "{sent} of {recorded} sent");
            Ok(())
        })
        .await?;
    }
    assert!(list("acme/quiet").await?.is_empty(), "a namespace with rate 0 audits no success");
    Ok(())
}
