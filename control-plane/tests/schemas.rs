//! TimeSeries event schemas through the control plane's real gRPC server:
//! set, get and history; refusals of schemas that break the namespace's
//! compatibility mode (naming what breaks, writing nothing); who may set
//! them; and the audit trail.

mod common;

use common::{create_tenant, refused, revision, start};
use prism_proto::control::{
    Abstraction, Backend, Compatibility, CreateNamespaceRequest, CreateTenantRequest, EventSchema, GetSchemaRequest,
    ItemSchema, ItemType, JsonType, ListAuditEventsRequest, ListSchemaHistoryRequest, NamespaceSpec, SetSchemaRequest,
    item_type::Kind,
};
use tonic::Code;

fn ts_spec() -> NamespaceSpec {
    NamespaceSpec {
        abstraction: Abstraction::TimeSeries as i32,
        backend: Backend::Embedded as i32,
        ..NamespaceSpec::default()
    }
}

fn item(key: &str, kind: Kind, required: bool) -> ItemSchema {
    ItemSchema { key: key.into(), r#type: Some(ItemType { kind: Some(kind) }), required }
}

fn v1() -> EventSchema {
    EventSchema {
        items: vec![
            item("temp", Kind::Float64(Default::default()), true),
            item("note", Kind::Utf8(Default::default()), false),
        ],
        required_tags: vec!["region".into()],
        allowed_tags: vec!["host".into()],
    }
}

fn set(name: &str, schema: EventSchema, mode: Compatibility) -> SetSchemaRequest {
    SetSchemaRequest { name: name.into(), schema: Some(schema), compatibility: mode as i32, expected_revision: 0 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemas_are_versioned_and_read_back() -> anyhow::Result<()> {
    let (_cp, mut c) = start(&[]).await?;
    create_tenant(&mut c, "acme").await?;
    c.create_namespace(CreateNamespaceRequest { name: "acme/events".into(), spec: Some(ts_spec()) }).await?;

    // No schema yet.
    let none = c.get_schema(GetSchemaRequest { name: "acme/events".into(), version: 0 }).await;
    refused(none, Code::NotFound, None);

    // The first version takes BACKWARD when no mode is given.
    let first = c.set_schema(set("acme/events", v1(), Compatibility::Unspecified)).await?.into_inner();
    assert_eq!(first.version.as_ref().map(|v| v.version), Some(1));
    assert_eq!(first.compatibility, Compatibility::Backward as i32);
    assert_eq!(first.version.as_ref().map(|v| v.principal.as_str()), Some("anonymous"));

    // A compatible change: an optional item added, an optional one gone.
    let mut v2 = v1();
    v2.items[1] = item("doc", Kind::Json(JsonType { json_schema: r#"{"type":"object"}"#.into() }), false);
    let second = c.set_schema(set("acme/events", v2.clone(), Compatibility::Unspecified)).await?.into_inner();
    assert_eq!(second.version.as_ref().map(|v| v.version), Some(2));
    assert_eq!(second.compatibility, Compatibility::Backward as i32, "the mode is kept");

    let latest = c.get_schema(GetSchemaRequest { name: "acme/events".into(), version: 0 }).await?.into_inner();
    assert_eq!(latest.version.as_ref().and_then(|v| v.schema.clone()), Some(v2));
    let old = c.get_schema(GetSchemaRequest { name: "acme/events".into(), version: 1 }).await?.into_inner();
    assert_eq!(old.version.and_then(|v| v.schema), Some(v1()));
    let history = c.list_schema_history(ListSchemaHistoryRequest { name: "acme/events".into() }).await?.into_inner();
    assert_eq!(history.versions.iter().map(|v| v.version).collect::<Vec<_>>(), [1, 2]);

    // The history is part of the namespace the gateways watch.
    let ns = c.get_namespace(prism_proto::control::GetNamespaceRequest { name: "acme/events".into() }).await?;
    assert_eq!(ns.into_inner().schema.map(|s| s.versions.len()), Some(2));

    // Refusals write nothing: a bad schema names its field; KeyValue
    // namespaces have no schema; unknown namespaces and versions.
    let before = revision(&mut c).await?;
    let mut bad = v1();
    bad.items[0].r#type = None;
    refused(
        c.set_schema(set("acme/events", bad, Compatibility::None)).await,
        Code::InvalidArgument,
        Some("schema.items[0].type"),
    );
    let mut bad_json = v1();
    bad_json.items[1] = item("note", Kind::Json(JsonType { json_schema: "{not json".into() }), false);
    refused(
        c.set_schema(set("acme/events", bad_json, Compatibility::None)).await,
        Code::InvalidArgument,
        Some("schema.items[1].type.json.json_schema"),
    );
    c.create_namespace(CreateNamespaceRequest { name: "acme/kv".into(), spec: Some(common::kv_spec()) }).await?;
    let before_kv = revision(&mut c).await?;
    refused(c.set_schema(set("acme/kv", v1(), Compatibility::None)).await, Code::FailedPrecondition, None);
    refused(c.set_schema(set("acme/nope", v1(), Compatibility::None)).await, Code::NotFound, None);
    refused(c.get_schema(GetSchemaRequest { name: "acme/events".into(), version: 9 }).await, Code::NotFound, None);
    assert_eq!(revision(&mut c).await?, before_kv);
    assert!(before < before_kv);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_that_break_the_mode_are_refused_naming_what_breaks() -> anyhow::Result<()> {
    let (_cp, mut c) = start(&[]).await?;
    create_tenant(&mut c, "acme").await?;
    let mut new_required = v1();
    new_required.items.push(item("unit", Kind::Utf8(Default::default()), true));
    let mut fewer_tags = v1();
    fewer_tags.required_tags.clear();
    let mut retyped = v1();
    retyped.items[1] = item("note", Kind::Int64(Default::default()), false);

    // (mode, the change, what the refusal names; None = accepted)
    let cases = [
        (Compatibility::Backward, new_required.clone(), Some("item \"unit\"")),
        (Compatibility::Backward, fewer_tags.clone(), None),
        (Compatibility::Backward, retyped.clone(), Some("item \"note\" changes type from utf8 to int64")),
        (Compatibility::Forward, new_required.clone(), None),
        (Compatibility::Forward, fewer_tags.clone(), Some("tag \"region\"")),
        (Compatibility::Forward, retyped.clone(), Some("item \"note\"")),
        (Compatibility::Full, new_required.clone(), Some("item \"unit\"")),
        (Compatibility::Full, fewer_tags.clone(), Some("tag \"region\"")),
        (Compatibility::None, retyped.clone(), None),
    ];
    for (i, (mode, change, named)) in cases.into_iter().enumerate() {
        let name = format!("acme/ns-{i}");
        c.create_namespace(CreateNamespaceRequest { name: name.clone(), spec: Some(ts_spec()) }).await?;
        c.set_schema(set(&name, v1(), mode)).await?;
        let before = revision(&mut c).await?;
        let outcome = c.set_schema(set(&name, change, Compatibility::Unspecified)).await;
        match named {
            None => assert_eq!(outcome?.into_inner().version.map(|v| v.version), Some(2), "case {i}"),
            Some(what) => {
                let status = refused(outcome, Code::FailedPrecondition, None);
                assert!(status.message().contains(what), "case {i}: {status:?}");
                assert_eq!(revision(&mut c).await?, before, "case {i}: a refused schema wrote something");
                let history = c.list_schema_history(ListSchemaHistoryRequest { name }).await?.into_inner();
                assert_eq!(history.versions.len(), 1, "case {i}");
            }
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_namespace_admins_set_schemas_and_every_attempt_is_audited() -> anyhow::Result<()> {
    const SECRET: &str = "control-plane-schema-test-secret-0123";
    let mut config = prism_control_plane::ControlPlaneConfig::default();
    config.auth.hs256_secret = Some(SECRET.into());
    let cp = prism_testkit::ControlPlaneHandle::start_with(config).await?;
    let client = |sub: &str, roles: &[&str]| {
        let token = prism_auth::mint_hs256(SECRET, sub, None, roles, 60);
        let endpoint = cp.endpoint();
        async move { anyhow::Ok(prism_client::control_plane(&endpoint, Some(&token?)).await?) }
    };
    let mut root = client("root", &["admin"]).await?;
    let req = CreateTenantRequest { tenant_id: "acme".into(), admins: vec!["alice".into()], ..Default::default() };
    root.create_tenant(req).await?;
    root.create_namespace(CreateNamespaceRequest { name: "acme/events".into(), spec: Some(ts_spec()) }).await?;

    // Bob administers nothing of acme: refused, audited.
    let mut bob = client("bob", &[]).await?;
    refused(bob.set_schema(set("acme/events", v1(), Compatibility::Full)).await, Code::PermissionDenied, None);
    refused(
        bob.get_schema(GetSchemaRequest { name: "acme/events".into(), version: 0 }).await,
        Code::PermissionDenied,
        None,
    );
    // Alice, a tenant admin, sets it; a breaking update of hers is refused.
    let mut alice = client("alice", &[]).await?;
    alice.set_schema(set("acme/events", v1(), Compatibility::Full)).await?;
    let mut breaking = v1();
    breaking.required_tags.push("zone".into());
    refused(
        alice.set_schema(set("acme/events", breaking, Compatibility::Unspecified)).await,
        Code::FailedPrecondition,
        None,
    );
    let got = alice.get_schema(GetSchemaRequest { name: "acme/events".into(), version: 0 }).await?.into_inner();
    assert_eq!(got.version.map(|v| v.principal), Some("alice".to_owned()));

    let req = ListAuditEventsRequest { action: "SetSchema".into(), ..Default::default() };
    let events = root.list_audit_events(req).await?.into_inner().events;
    let seen: Vec<(&str, &str, &str)> =
        events.iter().map(|e| (e.principal.as_str(), e.target.as_str(), e.result.as_str())).collect();
    assert_eq!(
        seen,
        [
            ("alice", "acme/events", "failed_precondition"),
            ("alice", "acme/events", "ok"),
            ("bob", "acme/events", "permission_denied"),
        ]
    );
    assert!(events[1].detail.contains("schema version 1 under FULL"), "{:?}", events[1]);
    assert!(events[0].detail.contains("tag \"zone\""), "{:?}", events[0]);
    Ok(())
}
