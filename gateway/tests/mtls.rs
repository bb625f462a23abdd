//! TLS and mutual TLS on the gateway: a client certificate signed by the
//! configured CA names the principal of calls without a bearer token.

use std::path::Path;

use anyhow::Context;
use prism_gateway::config::TlsConfig;
use prism_proto::control::{AccessLevel, GrantAccessRequest, NamespaceSpec};
use prism_proto::kv::{self, key_value_service_client::KeyValueServiceClient};
use prism_testkit::{Cluster, admin_token};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

struct Pki {
    ca: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Pki {
    fn new(name: &str) -> anyhow::Result<Self> {
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
        let ca = params.self_signed(&key)?.pem();
        Ok(Self { ca, issuer: rcgen::Issuer::new(params, key) })
    }

    /// (certificate PEM, key PEM) for `cn` with the given SANs.
    fn leaf(&self, cn: &str, sans: &[&str]) -> anyhow::Result<(String, String)> {
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(sans.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())?;
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

async fn connect(addr: &str, ca: &str, client: Option<&(String, String)>) -> anyhow::Result<Channel> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).domain_name("localhost");
    if let Some((cert, key)) = client {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Ok(Endpoint::from_shared(format!("https://{addr}"))?.tls_config(tls)?.connect().await?)
}

fn write(dir: &Path, name: &str, pem: &str) -> anyhow::Result<std::path::PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, pem)?;
    Ok(path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verified_client_certificate_names_the_principal() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let pki = Pki::new("prism test CA")?;
    let (server_cert, server_key) = pki.leaf("gateway", &["localhost", "127.0.0.1"])?;
    let tls = TlsConfig {
        cert_file: write(dir.path(), "server.crt", &server_cert)?,
        key_file: write(dir.path(), "server.key", &server_key)?,
        client_ca_file: Some(write(dir.path(), "ca.crt", &pki.ca)?),
        require_client_cert: false,
    };
    let cluster = Cluster::start_with(|c| c.tls = Some(tls.clone())).await?;
    let spec = NamespaceSpec {
        abstraction: prism_proto::control::Abstraction::KeyValue as i32,
        backend: prism_proto::control::Backend::Embedded as i32,
        ..Default::default()
    };
    let gw = cluster.active_namespace("acme/orders", spec).await?;
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
    let put = kv::PutItemsRequest {
        namespace: "acme/orders".into(),
        id: "o-1".into(),
        items: vec![kv::Item { key: b"k".to_vec(), value: b"v".to_vec(), ..Default::default() }],
        ..Default::default()
    };

    // The granted service, by its certificate alone.
    let billing = pki.leaf("svc-billing", &[])?;
    let mut c = KeyValueServiceClient::new(connect(&addr, &pki.ca, Some(&billing)).await?);
    c.put_items(put.clone()).await.context("svc-billing writes with its certificate")?;

    // Another certificate of the same CA: authenticated, not authorized.
    let other = pki.leaf("svc-other", &[])?;
    let mut c = KeyValueServiceClient::new(connect(&addr, &pki.ca, Some(&other)).await?);
    assert_eq!(c.put_items(put.clone()).await.expect_err("no grant").code(), Code::PermissionDenied);

    // No certificate and no token: unauthenticated; a token still works
    // over TLS.
    let mut c = KeyValueServiceClient::new(connect(&addr, &pki.ca, None).await?);
    assert_eq!(c.put_items(put.clone()).await.expect_err("anonymous").code(), Code::Unauthenticated);
    let mut req = tonic::Request::new(put.clone());
    req.metadata_mut().insert("authorization", format!("Bearer {}", admin_token()).parse()?);
    c.put_items(req).await.context("a bearer token over TLS")?;

    // A certificate from a CA the gateway does not trust never connects.
    let rogue_ca = Pki::new("rogue CA")?;
    let rogue = rogue_ca.leaf("svc-billing", &[])?;
    let refused = match connect(&addr, &pki.ca, Some(&rogue)).await {
        Err(_) => true,
        Ok(ch) => KeyValueServiceClient::new(ch).put_items(put).await.is_err(),
    };
    assert!(refused, "a certificate of an untrusted CA must not be accepted");
    Ok(())
}
