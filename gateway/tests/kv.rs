//! KeyValue end to end: a control plane and two gateway shards in process,
//! driven over gRPC with real tokens.

use std::time::{Duration, SystemTime};

use anyhow::Context;
use prism_proto::control::{
    Abstraction, Access, AccessLevel, Backend, BackendConfig, DeleteNamespaceRequest, GetNamespaceRequest, Grant,
    NamespaceSpec, NamespaceStatus, Policies, PostgresConfig, SetTenantStateRequest, TenantState, backend_config,
};
use prism_proto::kv::{self, get_items_request, mutation};
use prism_testkit::{Cluster, admin_token, eventually, token};
use tonic::Code;
use tonic_types::StatusExt;

fn kv_spec() -> NamespaceSpec {
    NamespaceSpec { abstraction: Abstraction::KeyValue as i32, backend: Backend::Embedded as i32, ..Default::default() }
}

fn item(key: &str, value: &str) -> kv::Item {
    kv::Item { key: key.as_bytes().to_vec(), value: value.as_bytes().to_vec(), ttl: None }
}

fn put(ns: &str, id: &str, items: Vec<kv::Item>) -> kv::PutItemsRequest {
    kv::PutItemsRequest { namespace: ns.into(), id: id.into(), items, idempotency_token: None }
}

fn get_all(ns: &str, id: &str) -> kv::GetItemsRequest {
    kv::GetItemsRequest { namespace: ns.into(), id: id.into(), ..Default::default() }
}

fn keys(items: &[kv::Item]) -> Vec<String> {
    items.iter().map(|i| String::from_utf8_lossy(&i.key).into_owned()).collect()
}

/// The field named by a status's BadRequest detail.
fn bad_field(status: &tonic::Status) -> String {
    status
        .get_details_bad_request()
        .and_then(|b| b.field_violations.first().map(|v| v.field.clone()))
        .unwrap_or_default()
}

fn token_at(secs_from_now: i64, token: &str) -> kv::IdempotencyToken {
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
    kv::IdempotencyToken {
        generation_time: Some(prost_types::Timestamp { seconds: now + secs_from_now, nanos: 0 }),
        token: token.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kv_rpc_works_through_a_gateway() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let gw = cluster.active_namespace("acme/profiles", kv_spec()).await?;
    let admin = admin_token();
    let mut kv = gw.kv(Some(&admin)).await?;
    let ns = "acme/profiles";

    kv.put_items(put(ns, "user-1", vec![item("b", "2"), item("a", "1"), item("c", "3")])).await?;
    let got = kv.get_items(get_all(ns, "user-1")).await?.into_inner();
    assert_eq!(keys(&got.items), ["a", "b", "c"]);
    assert!(got.next_page_token.is_empty());

    // Key selection, range selection.
    let mut by_keys = get_all(ns, "user-1");
    by_keys.selector = Some(get_items_request::Selector::Keys(kv::KeyList {
        keys: vec![b"c".to_vec(), b"zz".to_vec(), b"a".to_vec()],
    }));
    assert_eq!(keys(&kv.get_items(by_keys).await?.into_inner().items), ["a", "c"]);
    let mut by_range = get_all(ns, "user-1");
    by_range.selector = Some(get_items_request::Selector::Range(kv::KeyRange { start: b"b".to_vec(), end: vec![] }));
    assert_eq!(keys(&kv.get_items(by_range).await?.into_inner().items), ["b", "c"]);

    // Pagination by items and bytes, with opaque tokens.
    let mut paged = get_all(ns, "user-1");
    paged.limit = 2;
    let first = kv.get_items(paged.clone()).await?.into_inner();
    assert_eq!(keys(&first.items), ["a", "b"]);
    assert!(!first.next_page_token.is_empty());
    paged.page_token = first.next_page_token.clone();
    let second = kv.get_items(paged.clone()).await?.into_inner();
    assert_eq!(keys(&second.items), ["c"]);
    // A token of another request, and a forged one, are refused.
    let mut foreign = get_all(ns, "user-2");
    foreign.page_token = first.next_page_token.clone();
    let e = kv.get_items(foreign).await.expect_err("foreign token");
    assert_eq!((e.code(), bad_field(&e).as_str()), (Code::InvalidArgument, "page_token"));
    paged.page_token = format!("{}x", first.next_page_token);
    let e = kv.get_items(paged).await.expect_err("forged token");
    assert_eq!((e.code(), bad_field(&e).as_str()), (Code::InvalidArgument, "page_token"));

    // Mutate: all applied in order.
    let mutations = vec![
        kv::Mutation { operation: Some(mutation::Operation::DeleteKey(b"a".to_vec())) },
        kv::Mutation { operation: Some(mutation::Operation::Put(item("d", "4"))) },
        kv::Mutation {
            operation: Some(mutation::Operation::DeleteRange(kv::KeyRange {
                start: b"b".to_vec(),
                end: b"c".to_vec(),
            })),
        },
    ];
    kv.mutate_items(kv::MutateItemsRequest {
        namespace: ns.into(),
        id: "user-1".into(),
        mutations,
        idempotency_token: None,
    })
    .await?;
    assert_eq!(keys(&kv.get_items(get_all(ns, "user-1")).await?.into_inner().items), ["c", "d"]);

    // Scan sees every record; delete of the whole record.
    kv.put_items(put(ns, "user-2", vec![item("", "plain value")])).await?;
    let scan = kv.scan_items(kv::ScanItemsRequest { namespace: ns.into(), ..Default::default() }).await?.into_inner();
    let ids: Vec<_> = scan.records.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["user-1", "user-2"]);
    kv.delete_items(kv::DeleteItemsRequest { namespace: ns.into(), id: "user-1".into(), ..Default::default() }).await?;
    assert!(kv.get_items(get_all(ns, "user-1")).await?.into_inner().items.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_last_writer_wins_and_ttl() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let gw = cluster.active_namespace("acme/lww", kv_spec()).await?;
    let mut kv = gw.kv(Some(&admin_token())).await?;
    let ns = "acme/lww";
    let read = |kv: &mut prism_client::KeyValueClient| {
        let mut kv = kv.clone();
        async move { anyhow::Ok(kv.get_items(get_all(ns, "r")).await?.into_inner().items) }
    };

    let mut newer = put(ns, "r", vec![item("k", "newer")]);
    newer.idempotency_token = Some(token_at(-1, "t-newer"));
    kv.put_items(newer).await?;
    let mut older = put(ns, "r", vec![item("k", "older")]);
    older.idempotency_token = Some(token_at(-60, "t-older"));
    kv.put_items(older).await?;
    assert_eq!(read(&mut kv).await?[0].value, b"newer", "an older write loses");

    // A retry of an applied token is a no-op even with other content.
    let mut retry = put(ns, "r", vec![item("k", "retried")]);
    retry.idempotency_token = Some(token_at(0, "t-newer"));
    kv.put_items(retry).await?;
    assert_eq!(read(&mut kv).await?[0].value, b"newer");

    // Too far in the future: refused, nothing written.
    let mut future = put(ns, "r", vec![item("k", "future")]);
    future.idempotency_token = Some(token_at(3600, "t-future"));
    let e = kv.put_items(future).await.expect_err("clock skew");
    assert_eq!((e.code(), bad_field(&e).as_str()), (Code::InvalidArgument, "idempotency_token.generation_time"));
    assert_eq!(read(&mut kv).await?[0].value, b"newer");

    // A one-second TTL: the item is returned with its time left, then never.
    let mut short =
        put(ns, "r", vec![kv::Item { ttl: Some(prost_types::Duration { seconds: 1, nanos: 0 }), ..item("ttl", "v") }]);
    short.idempotency_token = None;
    kv.put_items(short).await?;
    let items = read(&mut kv).await?;
    let ttl = items.iter().find(|i| i.key == b"ttl").and_then(|i| i.ttl).context("ttl returned")?;
    assert!(ttl.seconds <= 1);
    eventually(Duration::from_secs(5), || async {
        let items = read(&mut kv.clone()).await?;
        anyhow::ensure!(items.iter().all(|i| i.key != b"ttl"), "expired item still returned");
        Ok(())
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_the_field_and_changes_nothing() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let mut spec = kv_spec();
    spec.policies = Some(Box::new(Policies { max_item_size_bytes: 1024, ..Default::default() }));
    let gw = cluster.active_namespace("acme/strict", spec).await?;
    let mut kv = gw.kv(Some(&admin_token())).await?;
    let ns = "acme/strict";
    kv.put_items(put(ns, "r", vec![item("k", "original")])).await?;

    let cases: Vec<(kv::PutItemsRequest, Code, &str)> = vec![
        (put(ns, "", vec![item("k", "v")]), Code::InvalidArgument, "id"),
        (put(ns, &"x".repeat(1025), vec![item("k", "v")]), Code::InvalidArgument, "id"),
        (put(ns, "a\0b", vec![item("k", "v")]), Code::InvalidArgument, "id"),
        (put(ns, "r", vec![item(&"k".repeat(4097), "v")]), Code::InvalidArgument, "items[0].key"),
        (put(ns, "r", vec![item("k", &"v".repeat(2000))]), Code::InvalidArgument, "items[0].value"),
        (put(ns, "r", vec![]), Code::InvalidArgument, "items"),
        (put("Acme/strict", "r", vec![item("k", "v")]), Code::InvalidArgument, "namespace"),
        (put("acme/missing", "r", vec![item("k", "v")]), Code::NotFound, ""),
    ];
    for (request, code, field) in cases {
        let e = kv.put_items(request).await.expect_err("refused");
        assert_eq!(e.code(), code, "{e:?}");
        assert_eq!(bad_field(&e), field, "{e:?}");
    }
    let mut bad_range = get_all(ns, "r");
    bad_range.selector =
        Some(get_items_request::Selector::Range(kv::KeyRange { start: b"z".to_vec(), end: b"a".to_vec() }));
    let e = kv.get_items(bad_range).await.expect_err("inverted range");
    assert_eq!(bad_field(&e), "range.end");
    let mut huge_page = get_all(ns, "r");
    huge_page.page_size_bytes = 1 << 40;
    assert_eq!(bad_field(&kv.get_items(huge_page).await.expect_err("page size")), "page_size_bytes");

    // A TIME_SERIES namespace used as KeyValue.
    let ts = NamespaceSpec { abstraction: Abstraction::TimeSeries as i32, ..kv_spec() };
    let ts_gw = cluster.active_namespace("acme/events", ts).await?;
    let mut ts_kv = ts_gw.kv(Some(&admin_token())).await?;
    let e = ts_kv.put_items(put("acme/events", "r", vec![item("k", "v")])).await.expect_err("wrong abstraction");
    assert_eq!((e.code(), bad_field(&e).as_str()), (Code::InvalidArgument, "namespace"));

    let items = kv.get_items(get_all(ns, "r")).await?.into_inner().items;
    assert_eq!(items, vec![item("k", "original")], "nothing stored changed");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_authorization_and_routing() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let mut spec = kv_spec();
    spec.access = Some(Box::new(Access {
        owners: vec!["alice".into()],
        consumers: vec![Grant { principal: "reader".into(), level: AccessLevel::Read as i32 }],
    }));
    let gw = cluster.active_namespace("acme/private", spec).await?;
    let ns = "acme/private";

    let e = gw.kv(None).await?.put_items(put(ns, "r", vec![item("k", "v")])).await.expect_err("no token");
    assert_eq!(e.code(), Code::Unauthenticated);
    let e = gw.kv(Some("not-a-jwt")).await?.get_items(get_all(ns, "r")).await.expect_err("bad token");
    assert_eq!(e.code(), Code::Unauthenticated);

    let alice = token("alice", Some("acme"), &[]);
    gw.kv(Some(&alice)).await?.put_items(put(ns, "r", vec![item("k", "v")])).await?;
    let reader = token("reader", Some("acme"), &[]);
    let mut as_reader = gw.kv(Some(&reader)).await?;
    assert_eq!(as_reader.get_items(get_all(ns, "r")).await?.into_inner().items.len(), 1);
    let e = as_reader.put_items(put(ns, "r", vec![item("k", "w")])).await.expect_err("read only");
    assert_eq!(e.code(), Code::PermissionDenied);
    let stranger = token("mallory", Some("globex"), &["tenant-admin"]);
    let e = gw.kv(Some(&stranger)).await?.get_items(get_all(ns, "r")).await.expect_err("other tenant");
    assert_eq!(e.code(), Code::PermissionDenied);
    let acme_admin = token("bob", Some("acme"), &["tenant-admin"]);
    gw.kv(Some(&acme_admin)).await?.get_items(get_all(ns, "r")).await?;

    // The other shard forwards to the owner: the same answers, refusals
    // included (forwarding off, it names the owner: tests/sharding.rs).
    let other = cluster.gateways.iter().find(|g| g.addr != gw.addr).context("second gateway")?;
    other.caught_up(gw.gateway.metadata.load().revision).await?;
    assert_eq!(other.kv(Some(&reader)).await?.get_items(get_all(ns, "r")).await?.into_inner().items.len(), 1);
    let e = other.kv(Some(&reader)).await?.put_items(put(ns, "r", vec![item("k", "w")])).await.expect_err("read only");
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = other.kv(Some(&stranger)).await?.get_items(get_all(ns, "r")).await.expect_err("other tenant");
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = other.kv(None).await?.get_items(get_all(ns, "r")).await.expect_err("no token");
    assert_eq!(e.code(), Code::Unauthenticated);

    // A suspended tenant's requests are refused.
    let mut cp = cluster.control_plane.client().await?;
    let t = cp
        .set_tenant_state(SetTenantStateRequest {
            tenant_id: "acme".into(),
            state: TenantState::Suspended as i32,
            ..Default::default()
        })
        .await?
        .into_inner();
    gw.caught_up(t.revision).await?;
    let e = gw.kv(Some(&alice)).await?.get_items(get_all(ns, "r")).await.expect_err("suspended");
    assert_eq!(e.code(), Code::FailedPrecondition);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_that_cannot_be_provisioned_are_degraded_and_refused() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let mut cp = cluster.control_plane.client().await?;
    cp.create_tenant(prism_proto::control::CreateTenantRequest { tenant_id: "acme".into(), ..Default::default() })
        .await?;
    let spec = NamespaceSpec {
        backend: Backend::Postgres as i32,
        backend_config: Some(Box::new(BackendConfig {
            config: Some(backend_config::Config::Postgres(PostgresConfig {
                dsn: "postgres://db/prism".into(),
                ..Default::default()
            })),
        })),
        ..kv_spec()
    };
    let created = cp
        .create_namespace(prism_proto::control::CreateNamespaceRequest { name: "acme/pg".into(), spec: Some(spec) })
        .await?
        .into_inner();
    let ns = eventually(Duration::from_secs(10), || {
        let mut cp = cp.clone();
        async move {
            let ns = cp.get_namespace(GetNamespaceRequest { name: "acme/pg".into() }).await?.into_inner();
            anyhow::ensure!(ns.status == NamespaceStatus::Degraded as i32, "status {}", ns.status);
            Ok(ns)
        }
    })
    .await?;
    assert!(ns.status_reason.contains("postgres"), "{}", ns.status_reason);
    let gw = cluster.gateway(&created.shard_id).context("owner")?;
    gw.caught_up(ns.revision).await?;
    let e = gw.kv(Some(&admin_token())).await?.get_items(get_all("acme/pg", "r")).await.expect_err("degraded");
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("DEGRADED"), "{}", e.message());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_drains_removes_data_and_reports_deleted() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let gw = cluster.active_namespace("acme/doomed", kv_spec()).await?;
    let mut kv = gw.kv(Some(&admin_token())).await?;
    kv.put_items(put("acme/doomed", "r", vec![item("k", "v")])).await?;

    let mut cp = cluster.control_plane.client().await?;
    cp.delete_namespace(DeleteNamespaceRequest { name: "acme/doomed".into(), expected_revision: 0 }).await?;
    let deleted = eventually(Duration::from_secs(10), || {
        let mut cp = cp.clone();
        async move {
            let ns = cp.get_namespace(GetNamespaceRequest { name: "acme/doomed".into() }).await?.into_inner();
            anyhow::ensure!(ns.status == NamespaceStatus::Deleted as i32, "status {}", ns.status);
            Ok(ns)
        }
    })
    .await?;
    gw.caught_up(deleted.revision).await?;
    let e = kv.get_items(get_all("acme/doomed", "r")).await.expect_err("deleted");
    assert_eq!(e.code(), Code::NotFound);

    // Created again: a new incarnation that starts empty.
    let again = cluster.active_namespace("acme/doomed", kv_spec()).await?;
    let items = again.kv(Some(&admin_token())).await?.get_items(get_all("acme/doomed", "r")).await?.into_inner().items;
    assert!(items.is_empty(), "old data visible in a re-created namespace");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_reads_hit_and_writes_invalidate() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let mut spec = kv_spec();
    spec.policies = Some(Box::new(Policies { cache_enabled: true, ..Default::default() }));
    let gw = cluster.active_namespace("acme/cached", spec).await?;
    let mut kv = gw.kv(Some(&admin_token())).await?;
    let ns = "acme/cached";
    let stats = &gw.gateway.cache.stats;
    let hits = || stats.hits.load(std::sync::atomic::Ordering::Relaxed);

    kv.put_items(put(ns, "r", vec![item("k", "one")])).await?;
    assert_eq!(kv.get_items(get_all(ns, "r")).await?.into_inner().items[0].value, b"one");
    let before = hits();
    assert_eq!(kv.get_items(get_all(ns, "r")).await?.into_inner().items[0].value, b"one");
    assert_eq!(hits(), before + 1, "second read is a cache hit");

    kv.put_items(put(ns, "r", vec![item("k", "two")])).await?;
    assert_eq!(kv.get_items(get_all(ns, "r")).await?.into_inner().items[0].value, b"two", "write invalidated");

    // Concurrent misses on one record make one backend read.
    kv.put_items(put(ns, "hot", vec![item("k", "v")])).await?;
    let loads_before = stats.loads.load(std::sync::atomic::Ordering::Relaxed);
    let reads: Vec<_> = (0..16)
        .map(|_| {
            let mut kv = kv.clone();
            tokio::spawn(async move { kv.get_items(get_all(ns, "hot")).await })
        })
        .collect();
    for r in reads {
        assert_eq!(r.await??.into_inner().items.len(), 1);
    }
    let loads = stats.loads.load(std::sync::atomic::Ordering::Relaxed) - loads_before;
    assert_eq!(loads, 1, "16 concurrent reads of a cold record made {loads} backend reads");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_values_and_scans_page_through_the_gateway() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let mut spec = kv_spec();
    spec.policies = Some(Box::new(Policies { max_item_size_bytes: 4 << 20, ..Default::default() }));
    let gw = cluster.active_namespace("acme/blobs", spec).await?;
    let mut kv = gw.kv(Some(&admin_token())).await?;
    let ns = "acme/blobs";

    // 3 MiB is above the 1 MiB chunk threshold: stored in chunks, read whole.
    let big: Vec<u8> = (0..3 << 20).map(|i: u32| (i % 251) as u8).collect();
    kv.put_items(put(ns, "blob", vec![kv::Item { key: b"data".to_vec(), value: big.clone(), ttl: None }])).await?;
    let got = kv.get_items(get_all(ns, "blob")).await?.into_inner().items;
    assert_eq!(got.len(), 1);
    assert!(got[0].value == big, "chunked value read back changed");

    // 30 records of 10 items, scanned in 4 KiB pages: every item exactly once, in order.
    for r in 0..30 {
        let items = (0..10).map(|k| item(&format!("k{k:02}"), &"v".repeat(100))).collect();
        kv.put_items(put(ns, &format!("rec-{r:02}"), items)).await?;
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = kv
            .scan_items(kv::ScanItemsRequest {
                namespace: ns.into(),
                page_size_bytes: 4096,
                limit: 0,
                page_token: token,
            })
            .await?
            .into_inner();
        pages += 1;
        for rec in page.records {
            seen.extend(rec.items.iter().map(|i| (rec.id.clone(), String::from_utf8_lossy(&i.key).into_owned())));
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let expected: Vec<_> = std::iter::once(("blob".to_owned(), "data".to_owned()))
        .chain((0..30).flat_map(|r| (0..10).map(move |k| (format!("rec-{r:02}"), format!("k{k:02}")))))
        .collect();
    assert_eq!(seen, expected);
    assert!(pages > 5, "only {pages} pages");
    Ok(())
}
