//! Through real handshakes on loopback: what each end accepts and refuses,
//! what a bad file says, and that rotated files are used without a
//! restart.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_stream::StreamExt;

use super::*;

/// A CA that signs leaves.
struct Ca {
    pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Ca {
    fn new(name: &str) -> anyhow::Result<Self> {
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
        let pem = params.self_signed(&key)?.pem();
        Ok(Self { pem, issuer: rcgen::Issuer::new(params, key) })
    }

    /// (certificate PEM, key PEM) for `cn`, valid for localhost and
    /// 127.0.0.1; `expired` puts its validity in the past.
    fn leaf(&self, cn: &str, expired: bool) -> anyhow::Result<(String, String)> {
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        if expired {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        }
        Ok((params.signed_by(&key, &self.issuer)?.pem(), key.serialize_pem()))
    }
}

fn write(dir: &Path, name: &str, contents: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, contents)?;
    Ok(path)
}

fn server_config(dir: &Path, leaf: &(String, String), client_ca: Option<&Ca>) -> anyhow::Result<ServerTlsConfig> {
    Ok(ServerTlsConfig {
        cert_file: write(dir, "server.crt", &leaf.0)?,
        key_file: write(dir, "server.key", &leaf.1)?,
        client_ca_file: client_ca.map(|ca| write(dir, "clients.crt", &ca.pem)).transpose()?,
        require_client_cert: client_ca.is_some(),
    })
}

fn client_config(dir: &Path, trusted: &Ca, identity: Option<&(String, String)>) -> anyhow::Result<ClientTlsConfig> {
    let ca_file = Some(write(dir, "client-ca.crt", &trusted.pem)?);
    let Some((cert, key)) = identity else { return Ok(ClientTlsConfig { ca_file, ..Default::default() }) };
    Ok(ClientTlsConfig {
        ca_file,
        cert_file: Some(write(dir, "client.crt", cert)?),
        key_file: Some(write(dir, "client.key", key)?),
    })
}

/// Serves TLS on loopback: each connection is answered with the common
/// name of the client's certificate (or `-`) and the server's own.
async fn serve(tls: &ServerTls) -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let mut incoming = tls.incoming(listener);
    tokio::spawn(async move {
        while let Some(Ok(mut stream)) = incoming.next().await {
            let (_, session) = stream.get_ref();
            let peer = session.peer_certificates().and_then(|c| c.first()).and_then(|c| common_name(c));
            let answer = peer.unwrap_or_else(|| "-".to_owned());
            tokio::spawn(async move {
                let _ = stream.write_all(answer.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    Ok(port)
}

/// The server's answer and the common name of its certificate, or the
/// reason the connection failed.
async fn ask(client: &ClientTls, port: u16) -> anyhow::Result<(String, String)> {
    let mut stream = client.connect("127.0.0.1", port).await.context("handshake")?;
    let server =
        stream.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(|c| common_name(c)).unwrap_or_default();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.context("read")?;
    anyhow::ensure!(!answer.is_empty(), "the server closed the connection without answering");
    Ok((answer, server))
}

#[tokio::test]
async fn mutual_tls_accepts_only_valid_certificates_of_the_trusted_ca() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (ca, clients, rogue) = (Ca::new("server CA")?, Ca::new("client CA")?, Ca::new("rogue CA")?);
    let server = ServerTls::new(&server_config(dir.path(), &ca.leaf("gateway", false)?, Some(&clients))?)?;
    let port = serve(&server).await?;
    let client = |name: &str, trusted: &Ca, identity: Option<(String, String)>| {
        let sub = dir.path().join(name);
        std::fs::create_dir_all(&sub)?;
        anyhow::Ok(ClientTls::new(&client_config(&sub, trusted, identity.as_ref())?)?)
    };

    let good = client("good", &ca, Some(clients.leaf("svc-a", false)?))?;
    assert_eq!(ask(&good, port).await?, ("svc-a".to_owned(), "gateway".to_owned()));
    let anonymous = client("anonymous", &ca, None)?;
    assert!(ask(&anonymous, port).await.is_err(), "a required certificate is missing");
    let untrusted = client("untrusted", &ca, Some(rogue.leaf("svc-a", false)?))?;
    assert!(ask(&untrusted, port).await.is_err(), "a certificate of another CA");
    let expired = client("expired", &ca, Some(clients.leaf("svc-a", true)?))?;
    assert!(ask(&expired, port).await.is_err(), "an expired certificate");
    let wrong_roots = client("wrong-roots", &rogue, Some(clients.leaf("svc-a", false)?))?;
    assert!(ask(&wrong_roots, port).await.is_err(), "a server the client does not trust");

    // Optional client certificates: a client without one gets in.
    let optional = ServerTlsConfig { require_client_cert: false, ..server.settings().clone() };
    let port = serve(&ServerTls::new(&optional)?).await?;
    assert_eq!(ask(&anonymous, port).await?.0, "-");
    assert_eq!(ask(&good, port).await?.0, "svc-a");
    Ok(())
}

#[tokio::test]
async fn a_client_refuses_an_expired_server_certificate() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = Ca::new("server CA")?;
    let server = ServerTls::new(&server_config(dir.path(), &ca.leaf("gateway", true)?, None)?)?;
    let port = serve(&server).await?;
    let client = ClientTls::new(&client_config(dir.path(), &ca, None)?)?;
    let error = ask(&client, port).await.expect_err("expired");
    assert!(format!("{error:#}").contains("expired"), "{error:#}");
    Ok(())
}

/// Polls `check` for up to 10 s (the files are re-read every second).
async fn eventually<T, F: std::future::Future<Output = anyhow::Result<T>>>(
    mut check: impl FnMut() -> F,
) -> anyhow::Result<T> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match check().await {
            Ok(v) => return Ok(v),
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

#[tokio::test]
async fn rotated_files_are_used_without_a_restart() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (ca, clients) = (Ca::new("server CA")?, Ca::new("client CA")?);
    let settings = server_config(dir.path(), &ca.leaf("first", false)?, Some(&clients))?;
    let server = ServerTls::new(&settings)?;
    let port = serve(&server).await?;
    let client_dir = dir.path().join("client");
    std::fs::create_dir_all(&client_dir)?;
    let client_settings = client_config(&client_dir, &ca, Some(&clients.leaf("svc-a", false)?))?;
    let client = ClientTls::new(&client_settings)?;
    assert_eq!(ask(&client, port).await?, ("svc-a".to_owned(), "first".to_owned()));

    // The server's certificate.
    let (cert, key) = ca.leaf("second", false)?;
    std::fs::write(&settings.cert_file, cert)?;
    std::fs::write(&settings.key_file, key)?;
    eventually(|| async {
        let (_, server) = ask(&client, port).await?;
        anyhow::ensure!(server == "second", "still {server}");
        Ok(())
    })
    .await?;

    // A broken file is refused; the last good certificate stays, until
    // the file is whole again.
    std::fs::write(&settings.cert_file, "-----BEGIN CERTIFICATE-----\nnot base64\n")?;
    let error = server.reload().await.expect_err("a broken certificate");
    assert_eq!(error.field(), "cert_file", "{error}");
    assert_eq!(ask(&client, port).await?.1, "second");
    let (cert, key) = ca.leaf("third", false)?;
    std::fs::write(&settings.cert_file, cert)?;
    std::fs::write(&settings.key_file, key)?;
    assert!(server.reload().await?, "whole again");
    assert_eq!(ask(&client, port).await?.1, "third");
    assert!(!server.reload().await?, "nothing changed since");

    // The client's certificate.
    let (cert, key) = clients.leaf("svc-b", false)?;
    std::fs::write(client_settings.cert_file.as_ref().context("cert")?, cert)?;
    std::fs::write(client_settings.key_file.as_ref().context("key")?, key)?;
    eventually(|| async {
        let (seen, _) = ask(&client, port).await?;
        anyhow::ensure!(seen == "svc-b", "still {seen}");
        Ok(())
    })
    .await?;

    // The server's client CA bundle: certificates of the new CA get in,
    // those of the old one no longer do.
    let next = Ca::new("next client CA")?;
    std::fs::write(settings.client_ca_file.as_ref().context("ca")?, &next.pem)?;
    let (cert, key) = next.leaf("svc-c", false)?;
    std::fs::write(client_settings.cert_file.as_ref().context("cert")?, cert)?;
    std::fs::write(client_settings.key_file.as_ref().context("key")?, key)?;
    eventually(|| async {
        let (seen, _) = ask(&client, port).await?;
        anyhow::ensure!(seen == "svc-c", "still {seen}");
        Ok(())
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn bad_files_are_errors_naming_the_setting_and_the_file() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = Ca::new("CA")?;
    let (cert, key) = ca.leaf("gateway", false)?;
    let (_, other_key) = ca.leaf("other", false)?;
    let good = server_config(dir.path(), &(cert.clone(), key.clone()), Some(&ca))?;
    let cases = [
        (ServerTlsConfig { cert_file: dir.path().join("missing.crt"), ..good.clone() }, "cert_file", "cannot read"),
        (
            ServerTlsConfig { cert_file: write(dir.path(), "truncated.crt", &cert[..cert.len() / 2])?, ..good.clone() },
            "cert_file",
            "is not valid PEM",
        ),
        (
            ServerTlsConfig { cert_file: write(dir.path(), "key-as-cert.crt", &key)?, ..good.clone() },
            "cert_file",
            "holds no PEM certificate",
        ),
        (
            ServerTlsConfig { key_file: write(dir.path(), "cert-as-key.key", &cert)?, ..good.clone() },
            "key_file",
            "holds no PEM private key",
        ),
        (
            ServerTlsConfig { key_file: write(dir.path(), "other.key", &other_key)?, ..good.clone() },
            "key_file",
            "cannot serve the certificate",
        ),
        (
            ServerTlsConfig { client_ca_file: Some(write(dir.path(), "empty.crt", "")?), ..good.clone() },
            "client_ca_file",
            "holds no PEM certificate",
        ),
        (
            ServerTlsConfig { client_ca_file: None, require_client_cert: true, ..good.clone() },
            "require_client_cert",
            "needs client_ca_file",
        ),
    ];
    for (settings, field, needle) in cases {
        let error = ServerTls::new(&settings).expect_err(needle);
        assert_eq!(error.field(), field, "{error}");
        assert!(error.to_string().contains(needle), "{error}");
        let named = [&settings.cert_file, &settings.key_file].into_iter().chain(settings.client_ca_file.as_ref());
        assert!(
            field == "require_client_cert"
                || named.into_iter().any(|p| error.to_string().contains(&p.display().to_string())),
            "the error names the file: {error}"
        );
    }
    ServerTls::new(&good)?;

    let client = ClientTlsConfig { ca_file: Some(good.cert_file.clone()), ..Default::default() };
    let error = ClientTls::new(&ClientTlsConfig { key_file: Some(good.key_file.clone()), ..client.clone() })
        .expect_err("a key without a certificate");
    assert_eq!(error.field(), "key_file", "{error}");
    let error = ClientTls::new(&ClientTlsConfig { ca_file: Some(good.key_file.clone()), ..client.clone() })
        .expect_err("a key as the CA bundle");
    assert_eq!(error.field(), "ca_file", "{error}");
    assert_eq!(error.within("control_plane_tls").field(), "control_plane_tls.ca_file");
    Ok(())
}
