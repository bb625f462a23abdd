//! TLS on every hop, through real servers: clients over `https://` to the
//! control plane and the gateways, gateways to the control plane with a
//! client certificate, what each end refuses, mutual TLS naming the
//! principal, and a certificate rotated while serving.

use std::time::Duration;

use anyhow::Context;
use prism_client::{Prism, Tls};
use prism_proto::control::{AccessLevel, GrantAccessRequest, ListShardsRequest, ListTenantsRequest, NamespaceSpec};
use prism_proto::kv;
use prism_testkit::tls::Pki;
use prism_testkit::{Cluster, admin_token, eventually};
use tonic::Code;

fn spec() -> NamespaceSpec {
    NamespaceSpec {
        abstraction: prism_proto::control::Abstraction::KeyValue as i32,
        backend: prism_proto::control::Backend::Embedded as i32,
        ..Default::default()
    }
}

fn put(namespace: &str, id: &str) -> kv::PutItemsRequest {
    kv::PutItemsRequest {
        namespace: namespace.into(),
        id: id.into(),
        items: vec![kv::Item { key: b"k".to_vec(), value: b"v".to_vec(), ..Default::default() }],
        ..Default::default()
    }
}

/// Whether a control-plane call over `tls` (as the admin) is refused.
async fn control_plane_refuses(cluster: &Cluster, tls: &Tls) -> bool {
    let endpoint = cluster.control_plane.endpoint();
    match prism_client::control_plane_with(&endpoint, Some(&admin_token()), tls).await {
        Err(_) => true,
        Ok(mut c) => c.list_tenants(ListTenantsRequest::default()).await.is_err(),
    }
}

/// The services a server's reflection lists, sorted.
async fn reflected(channel: tonic::transport::Channel) -> anyhow::Result<Vec<String>> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses =
        ServerReflectionClient::new(channel).server_reflection_info(tokio_stream::iter([req])).await?.into_inner();
    let response = responses.message().await?.context("one response")?;
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        anyhow::bail!("unexpected reflection response {response:?}");
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort_unstable();
    Ok(names)
}

/// The same through `grpc.reflection.v1alpha`, which many tools ask first.
async fn reflected_v1alpha(channel: tonic::transport::Channel) -> anyhow::Result<Vec<String>> {
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses =
        ServerReflectionClient::new(channel).server_reflection_info(tokio_stream::iter([req])).await?.into_inner();
    let response = responses.message().await?.context("one response")?;
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        anyhow::bail!("unexpected reflection response {response:?}");
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort_unstable();
    Ok(names)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hop_speaks_tls() -> anyhow::Result<()> {
    let (servers, clients, rogue) = (Pki::new("servers")?, Pki::new("clients")?, Pki::new("rogue")?);
    let cluster = Cluster::start_tls(&servers, &clients).await?;
    // ACTIVE: the owning gateway watched the control plane and reported
    // to it, over TLS with its client certificate.
    let gw = cluster.active_namespace("acme/orders", spec()).await?;
    assert!(gw.endpoint().starts_with("https://"), "{}", gw.endpoint());
    let mut cp = cluster.control_plane.client().await?;
    let shards = cp.list_shards(ListShardsRequest {}).await?.into_inner().shards;
    let endpoints: Vec<&str> = shards.iter().flat_map(|s| s.instances.iter().map(|i| i.endpoint.as_str())).collect();
    assert!(!endpoints.is_empty() && endpoints.iter().all(|e| e.starts_with("https://")), "{endpoints:?}");

    // The routing client finds the gateway through the control plane and
    // reaches both over https.
    let tls = Tls::new(&servers.client(&clients, "test-admin", false)?)?;
    let token = admin_token();
    let prism = Prism::builder(&cluster.control_plane.endpoint()).token(Some(&token)).tls(tls.clone()).build()?;
    prism.kv().put_items(put("acme/orders", "o-1")).await.context("put over https")?;
    let got = prism
        .kv()
        .get_items(kv::GetItemsRequest { namespace: "acme/orders".into(), id: "o-1".into(), ..Default::default() })
        .await?;
    assert_eq!(got.items.len(), 1);

    // Reflection over TLS lists exactly what the gateway answers.
    // Any gateway forwards to the owner over TLS, presenting the
    // certificate it presents to the control plane.
    let other = cluster.gateways.iter().find(|g| g.addr != gw.addr).context("second gateway")?;
    other.caught_up(gw.gateway.metadata.load().revision).await?;
    let mut c = prism_client::key_value_with(&other.endpoint(), Some(&token), &tls).await?;
    let get = kv::GetItemsRequest { namespace: "acme/orders".into(), id: "o-1".into(), ..Default::default() };
    assert_eq!(c.get_items(get).await.context("forwarded over TLS")?.into_inner().items.len(), 1);

    let channel = prism_client::channel(&gw.endpoint(), &tls).await?;
    assert_eq!(reflected_v1alpha(channel.clone()).await?, reflected(channel.clone()).await?);
    assert_eq!(
        reflected(channel).await?,
        [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
            "prism.kv.v1.KeyValueService",
            "prism.timeseries.v1.TimeSeriesService"
        ]
    );

    // The control plane requires a client certificate of its CA, valid now.
    assert!(!control_plane_refuses(&cluster, &tls).await, "a good certificate");
    assert!(control_plane_refuses(&cluster, &Tls::new(&servers.trust())?).await, "no certificate");
    assert!(
        control_plane_refuses(&cluster, &Tls::new(&servers.client(&rogue, "test-admin", false)?)?).await,
        "untrusted CA"
    );
    assert!(
        control_plane_refuses(&cluster, &Tls::new(&servers.client(&clients, "test-admin", true)?)?).await,
        "expired"
    );
    // A client refuses servers its CAs did not sign, and plain text gets
    // nothing from a TLS port.
    assert!(
        control_plane_refuses(&cluster, &Tls::new(&rogue.client(&clients, "test-admin", false)?)?).await,
        "untrusted server"
    );
    let plain = format!("http://{}", cluster.control_plane.addr);
    let refused = match prism_client::control_plane(&plain, Some(&token)).await {
        Err(_) => true,
        Ok(mut c) => c.list_tenants(ListTenantsRequest::default()).await.is_err(),
    };
    assert!(refused, "plain text to a TLS port");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verified_client_certificate_names_the_principal() -> anyhow::Result<()> {
    let (servers, clients, rogue) = (Pki::new("servers")?, Pki::new("clients")?, Pki::new("rogue")?);
    let tls = servers.server("gateway", Some((&clients, false)))?;
    // Gateways reach each other (forwarding) trusting the servers' CA.
    let cluster = Cluster::start_with(|c| {
        c.tls = Some(tls.clone());
        c.forwarding.tls = Some(servers.trust());
    })
    .await?;
    let gw = cluster.active_namespace("acme/orders", spec()).await?;
    let mut cp = cluster.control_plane.client().await?;
    let grant = GrantAccessRequest {
        name: "acme/orders".into(),
        principal: "svc-billing".into(),
        level: AccessLevel::ReadWrite as i32,
        ..Default::default()
    };
    let granted = cp.grant_access(grant).await?.into_inner();
    gw.caught_up(granted.revision).await?;
    let addr = gw.endpoint();
    let as_client = |tls: prism_client::ClientTlsConfig| {
        let addr = addr.clone();
        async move { anyhow::Ok(prism_client::key_value_with(&addr, None, &Tls::new(&tls)?).await?) }
    };

    // The granted service, by its certificate alone.
    let mut c = as_client(servers.client(&clients, "svc-billing", false)?).await?;
    c.put_items(put("acme/orders", "o-1")).await.context("svc-billing writes with its certificate")?;

    // Another certificate of the same CA: authenticated, not authorized.
    let mut c = as_client(servers.client(&clients, "svc-other", false)?).await?;
    assert_eq!(c.put_items(put("acme/orders", "o-1")).await.expect_err("no grant").code(), Code::PermissionDenied);

    // No certificate and no token: unauthenticated; a token still works
    // over TLS.
    let mut c = as_client(servers.trust()).await?;
    assert_eq!(c.put_items(put("acme/orders", "o-1")).await.expect_err("anonymous").code(), Code::Unauthenticated);
    let mut c = prism_client::key_value_with(&addr, Some(&admin_token()), &Tls::new(&servers.trust())?).await?;
    c.put_items(put("acme/orders", "o-1")).await.context("a bearer token over TLS")?;

    // Through the other gateway a token is forwarded to the owner (over
    // TLS); a caller known only by its certificate cannot be vouched for
    // to another gateway, and is sent to the owner instead.
    let other = cluster.gateways.iter().find(|g| g.addr != gw.addr).context("second gateway")?;
    other.caught_up(granted.revision).await?;
    let trust = Tls::new(&servers.trust())?;
    let mut c = prism_client::key_value_with(&other.endpoint(), Some(&admin_token()), &trust).await?;
    c.put_items(put("acme/orders", "o-2")).await.context("a token forwarded over TLS")?;
    let billing = Tls::new(&servers.client(&clients, "svc-billing", false)?)?;
    let mut c = prism_client::key_value_with(&other.endpoint(), None, &billing).await?;
    let e = c.put_items(put("acme/orders", "o-3")).await.expect_err("a certificate is not forwarded");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    let info = tonic_types::StatusExt::get_details_error_info(&e).context("error info")?;
    assert_eq!((info.reason.as_str(), info.metadata.get("endpoints")), ("WRONG_SHARD", Some(&gw.endpoint())));

    // Certificates of an untrusted CA, or expired ones, never connect.
    for (why, tls) in [
        ("untrusted CA", servers.client(&rogue, "svc-billing", false)?),
        ("expired", servers.client(&clients, "svc-billing", true)?),
    ] {
        let refused = match as_client(tls).await {
            Err(_) => true,
            Ok(mut c) => c.put_items(put("acme/orders", "o-1")).await.is_err(),
        };
        assert!(refused, "{why}: must not be accepted");
    }
    Ok(())
}

/// The common name of the certificate a server presents to a new
/// connection.
async fn presented(addr: std::net::SocketAddr, trust: &prism_tls::ClientTls) -> anyhow::Result<String> {
    let stream = trust.connect("127.0.0.1", addr.port()).await?;
    let cert = stream.get_ref().1.peer_certificates().and_then(|c| c.first()).context("a certificate")?;
    prism_tls::common_name(cert).context("a common name")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_is_served_without_a_restart() -> anyhow::Result<()> {
    let (servers, clients) = (Pki::new("servers")?, Pki::new("clients")?);
    let cluster = Cluster::start_tls(&servers, &clients).await?;
    let gw = cluster.active_namespace("acme/orders", spec()).await?;
    let trust = prism_tls::ClientTls::new(&servers.trust())?;
    let shard = gw.gateway.config.shard_id.clone();
    assert_eq!(presented(gw.addr, &trust).await?, shard);

    // The operator replaces the certificate and key files in place.
    let tls = gw.gateway.config.tls.clone().context("tls")?;
    let (cert, key) = servers.ca().leaf("rotated", false)?;
    std::fs::write(&tls.cert_file, cert)?;
    std::fs::write(&tls.key_file, key)?;
    eventually(Duration::from_secs(10), || async {
        let name = presented(gw.addr, &trust).await?;
        anyhow::ensure!(name == "rotated", "still {name}");
        Ok(())
    })
    .await?;
    // New connections are served with it.
    let mut c = gw.kv(Some(&admin_token())).await?;
    c.put_items(put("acme/orders", "o-2")).await.context("a call on a new connection")?;
    Ok(())
}
