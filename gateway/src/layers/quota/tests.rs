//! Unit tests of the quota layer: admissions held until the response is
//! ready with read bytes charged then, and the largest item allowed.

use std::sync::Arc;

use prism_proto::control::{Change, Delta, Namespace, NamespaceSpec, NamespaceStatus, QuotaSet, change};
use prism_proto::kv::{self, GetItemsRequest};
use tokio::sync::Notify;
use tower::ServiceExt;

use super::*;
use crate::call::{InFlight, Resolved};
use crate::snapshot::{Metadata, Snapshot};

fn metadata(quotas: QuotaSet) -> Arc<Metadata> {
    let ns = Namespace {
        name: "acme/held".into(),
        create_revision: 1,
        status: NamespaceStatus::Active as i32,
        spec: Some(NamespaceSpec { quotas: Some(quotas), ..Default::default() }),
        ..Default::default()
    };
    let delta =
        Delta { revision: 1, changes: vec![Change { change: Some(change::Change::Namespace(ns)) }], commit_time: None };
    let metadata = Arc::new(Metadata::default());
    metadata.store(Snapshot::default().apply(&delta).0);
    metadata
}

fn call(metadata: &Metadata) -> Call {
    let mut call = Call::new(
        Request::Get(GetItemsRequest { namespace: "acme/held".into(), id: "x".into(), ..Default::default() }),
        None,
    );
    let snapshot = metadata.load();
    call.resolved = snapshot.namespace("acme/held").cloned().map(|entry| Resolved {
        namespace: InFlight::enter(entry),
        // No tenant in the snapshot: no tenant quotas.
        tenant: snapshot.tenant("acme").cloned().unwrap_or_default(),
        principal: Arc::new(crate::auth::Principal { sub: "ada".into(), tenant: None, roles: Vec::new() }),
    });
    call
}

#[tokio::test]
async fn concurrent_requests_are_held_until_their_response_and_read_bytes_charged() {
    let quotas = QuotaSet { concurrent_requests: Some(1), read_bytes_per_second: Some(10), ..Default::default() };
    let metadata = metadata(quotas);
    let registry = Arc::new(QuotaRegistry::default());
    let release = Arc::new(Notify::new());
    let started = Arc::new(Notify::new());
    let inner = {
        let (release, started) = (release.clone(), started.clone());
        tower::service_fn(move |_: Call| {
            let (release, started) = (release.clone(), started.clone());
            Box::pin(async move {
                started.notify_one();
                release.notified().await;
                let item = kv::Item { key: b"k".to_vec(), value: vec![0; 20], ttl: None };
                Ok::<_, GatewayError>(Response::Get(kv::GetItemsResponse { items: vec![item], ..Default::default() }))
            })
        })
    };
    let svc = QuotaLayer::new(registry.clone()).layer(inner);
    let first = tokio::spawn(svc.clone().oneshot(call(&metadata)));
    started.notified().await;
    let refused = svc.clone().oneshot(call(&metadata)).await;
    match refused {
        Err(GatewayError::QuotaExceeded { subject, description, retry_after, .. }) => {
            assert_eq!(subject, "namespace:acme/held");
            assert!(description.contains("concurrent_requests"), "{description}");
            assert!(retry_after.is_some());
        }
        other => panic!("second request admitted past the concurrency quota: {other:?}"),
    }
    release.notify_one();
    assert!(first.await.is_ok_and(|r| r.is_ok()));
    // The slot came back with the response, and its 21 bytes were charged
    // to a 10 bytes/s read quota: the next read waits for the window.
    match svc.oneshot(call(&metadata)).await {
        Err(GatewayError::QuotaExceeded { description, .. }) => {
            assert!(description.contains("read_bytes_per_second"), "{description}")
        }
        other => panic!("expected the read rate to refuse, got {other:?}"),
    }
    assert_eq!(registry.tracker(crate::quota::Subject::Namespace("acme/held")).map(|t| t.concurrent()), Some(0));
}

#[tokio::test]
async fn the_largest_item_is_the_smaller_of_the_namespace_and_tenant_quotas() {
    let metadata = metadata(QuotaSet { max_item_size_bytes: Some(100), ..Default::default() });
    let registry = QuotaRegistry::default();
    let mut c = call(&metadata);
    c.request = Request::Put(kv::PutItemsRequest {
        namespace: "acme/held".into(),
        id: "x".into(),
        items: vec![kv::Item { key: b"k".to_vec(), value: vec![0; 60], ttl: None }],
        idempotency_token: None,
    });
    let snapshot = metadata.load();
    let entry = snapshot.namespace("acme/held").cloned().unwrap_or_else(|| panic!("namespace"));
    assert!(admit(&registry, &entry, None, &c).is_ok());
    let tenant = QuotaSet { max_item_size_bytes: Some(50), ..Default::default() };
    match admit(&registry, &entry, Some(&tenant), &c) {
        Err(GatewayError::InvalidArgument { field, .. }) => assert_eq!(field, "items[0].value"),
        other => panic!("expected the tenant's item size to refuse, got {other:?}"),
    }
}
