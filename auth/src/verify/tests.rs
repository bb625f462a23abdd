//! Unit tests of token verification: HS256 and RS256/ES256 keys from a
//! JWKS file or URL, refused tokens and algorithm confusion, and the
//! configuration's validation.

use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{EncodingKey, Header};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::{Claims, mint_hs256, sign_hs256, unix_now};

const SECRET: &str = "0123456789abcdef0123456789abcdef";

fn hs_config() -> AuthConfig {
    AuthConfig { hs256_secret: Some(SECRET.into()), ..AuthConfig::default() }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn refused(a: &Authenticator, header: Option<&str>) -> String {
    match a.authenticate(header) {
        Err(AuthError::Unauthenticated(why)) => why,
        other => panic!("expected UNAUTHENTICATED for {header:?}, got {other:?}"),
    }
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// An RS256 or ES256 signing key and its public JWK.
struct TestKey {
    alg: Algorithm,
    kid: String,
    encoding: EncodingKey,
    jwk: serde_json::Value,
}

impl TestKey {
    fn rsa(kid: &str) -> Self {
        use rsa::pkcs1::EncodeRsaPrivateKey;
        use rsa::traits::PublicKeyParts;
        // 1024 bits keeps key generation fast in unoptimised test builds;
        // verification does not care about the size.
        let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 1024).expect("rsa key");
        let der = key.to_pkcs1_der().expect("pkcs1");
        let jwk = serde_json::json!({
            "kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig",
            "n": b64(&key.n().to_bytes_be()), "e": b64(&key.e().to_bytes_be()),
        });
        Self { alg: Algorithm::RS256, kid: kid.into(), encoding: EncodingKey::from_rsa_der(der.as_bytes()), jwk }
    }

    fn ec(kid: &str) -> Self {
        use p256::elliptic_curve::sec1::ToEncodedPoint;
        use p256::pkcs8::EncodePrivateKey;
        let key = p256::SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
        let der = key.to_pkcs8_der().expect("pkcs8");
        let point = key.public_key().to_encoded_point(false);
        let jwk = serde_json::json!({
            "kty": "EC", "kid": kid, "crv": "P-256",
            "x": b64(point.x().expect("x")), "y": b64(point.y().expect("y")),
        });
        Self { alg: Algorithm::ES256, kid: kid.into(), encoding: EncodingKey::from_ec_der(der.as_bytes()), jwk }
    }

    fn sign(&self, claims: &Claims) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("sign")
    }
}

fn jwks(keys: &[&TestKey]) -> String {
    serde_json::json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() }).to_string()
}

fn claims(sub: &str) -> Claims {
    Claims::new(sub, Some("acme"), &["tenant-admin"], 600)
}

/// Base64url of a JSON object: handcrafted token parts.
fn part(json: &str) -> String {
    b64(json.as_bytes())
}

#[test]
fn accepts_a_valid_token() {
    let t = mint_hs256(SECRET, "alice", Some("acme"), &["admin"], 60).expect("mint");
    let p = Authenticator::new(&hs_config()).authenticate(Some(&bearer(&t))).expect("valid");
    assert_eq!(p, Principal { sub: "alice".into(), tenant: Some("acme".into()), roles: vec!["admin".into()] });
}

#[test]
fn refuses_missing_malformed_forged_expired_early_and_unsigned_tokens() {
    let a = Authenticator::new(&hs_config());
    refused(&a, None);
    for header in ["Basic abc", "Bearer", "Bearer ", "Bearer not.a.jwt", "Bearer a.b", "bearer ...", "Token x"] {
        refused(&a, Some(header));
    }
    let other = mint_hs256("another-secret-of-16-bytes", "alice", None, &[], 60).expect("mint");
    refused(&a, Some(&bearer(&other)));
    let now = unix_now();
    let expired = Claims { exp: now - 3600, ..claims("a") };
    refused(&a, Some(&bearer(&sign_hs256(SECRET, &expired).expect("sign"))));
    let early = Claims { nbf: Some(now + 3600), ..claims("a") };
    refused(&a, Some(&bearer(&sign_hs256(SECRET, &early).expect("sign"))));
    // Within the leeway both are fine.
    let edge = Claims { exp: now - 5, nbf: Some(now + 5), ..claims("a") };
    a.authenticate(Some(&bearer(&sign_hs256(SECRET, &edge).expect("sign")))).expect("within leeway");
    // alg: none, with and without a signature part.
    let body = part(&format!(r#"{{"sub":"a","roles":["admin"],"exp":{}}}"#, now + 600));
    for alg in ["none", "None", "NONE"] {
        let head = part(&format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#));
        refused(&a, Some(&bearer(&format!("{head}.{body}."))));
        refused(&a, Some(&bearer(&format!("{head}.{body}"))));
    }
    // A valid token with its signature stripped.
    let t = mint_hs256(SECRET, "a", None, &["admin"], 60).expect("mint");
    let unsigned = &t[..=t.rfind('.').expect("dot")];
    refused(&a, Some(&bearer(unsigned)));
    // Empty sub.
    refused(&a, Some(&bearer(&sign_hs256(SECRET, &claims("")).expect("sign"))));
}

#[test]
fn anonymous_only_when_allowed() {
    let a = Authenticator::new(&AuthConfig { allow_anonymous: true, ..AuthConfig::default() });
    assert_eq!(a.authenticate(None).expect("anonymous").sub, "anonymous");
    // A token is still verified when presented.
    refused(&a, Some("Bearer garbage"));
}

#[test]
fn issuer_and_audience_are_required_when_configured() {
    let a = Authenticator::new(&AuthConfig {
        issuer: Some("https://issuer.example".into()),
        audience: Some("prism".into()),
        ..hs_config()
    });
    let good = Claims { iss: Some("https://issuer.example".into()), aud: Some("prism".into()), ..claims("a") };
    a.authenticate(Some(&bearer(&sign_hs256(SECRET, &good).expect("sign")))).expect("right iss and aud");
    for bad in [
        Claims { iss: Some("https://evil.example".into()), ..good.clone() },
        Claims { aud: Some("other".into()), ..good.clone() },
        Claims { iss: None, ..good.clone() },
        Claims { aud: None, ..good.clone() },
    ] {
        refused(&a, Some(&bearer(&sign_hs256(SECRET, &bad).expect("sign"))));
    }
    // Without an audience configured, a token that has one still passes.
    let plain = Authenticator::new(&hs_config());
    plain.authenticate(Some(&bearer(&sign_hs256(SECRET, &good).expect("sign")))).expect("aud not checked");
}

/// Found by the fuzz seeds (fuzz/corpus/jwt/seed-claims-odd): identity
/// providers send `aud` as an array; one of its audiences is the
/// configured one, so the token is accepted.
#[test]
fn an_audience_array_naming_the_audience_is_accepted() {
    let a = Authenticator::new(&AuthConfig { audience: Some("prism".into()), ..hs_config() });
    let sign = |aud: &str| {
        let claims = format!(r#"{{"sub":"svc","exp":{},"aud":{aud},"roles":["reader"]}}"#, unix_now() + 60);
        let claims: serde_json::Value = serde_json::from_str(&claims).expect("json");
        bearer(
            &jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &claims,
                &EncodingKey::from_secret(SECRET.as_bytes()),
            )
            .expect("sign"),
        )
    };
    let p = a.authenticate(Some(&sign(r#"["other","prism"]"#))).expect("an array naming prism");
    assert_eq!((p.sub.as_str(), p.roles.as_slice()), ("svc", ["reader".to_owned()].as_slice()));
    refused(&a, Some(&sign(r#"["other","another"]"#)));
    refused(&a, Some(&sign("[]")));
}

fn jwks_file_config(dir: &tempfile::TempDir, document: &str) -> AuthConfig {
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, document).expect("write jwks");
    AuthConfig { jwks_file: Some(path), ..AuthConfig::default() }
}

#[test]
fn rs256_and_es256_verify_against_the_jwks_file() {
    let (rsa, ec) = (TestKey::rsa("r1"), TestKey::ec("e1"));
    let dir = tempfile::tempdir().expect("dir");
    let a = Authenticator::new(&jwks_file_config(&dir, &jwks(&[&rsa, &ec])));
    assert_eq!(a.jwks().map(|k| k.len()), Some(2));
    for key in [&rsa, &ec] {
        let p = a.authenticate(Some(&bearer(&key.sign(&claims("svc"))))).expect("valid");
        assert_eq!((p.sub.as_str(), p.tenant.as_deref()), ("svc", Some("acme")));
    }
    // A key not in the set, even under a known kid.
    let stranger = TestKey::ec("e1");
    refused(&a, Some(&bearer(&stranger.sign(&claims("svc")))));
    // HS256 is not accepted without a secret.
    refused(&a, Some(&bearer(&mint_hs256(SECRET, "svc", None, &["admin"], 60).expect("mint"))));
    // Expired RS256.
    let expired = Claims { exp: unix_now() - 3600, ..claims("svc") };
    refused(&a, Some(&bearer(&rsa.sign(&expired))));
}

#[test]
fn algorithm_confusion_is_refused() {
    let (rsa, ec) = (TestKey::rsa("r1"), TestKey::ec("e1"));
    let dir = tempfile::tempdir().expect("dir");
    let config = AuthConfig { hs256_secret: Some(SECRET.into()), ..jwks_file_config(&dir, &jwks(&[&rsa, &ec])) };
    let a = Authenticator::new(&config);
    // The classic attack: HS256 "signed" with the public RSA key's bytes,
    // under the RSA key's kid.
    let public_n = rsa.jwk["n"].as_str().expect("n").to_owned();
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("r1".into());
    let forged = jsonwebtoken::encode(&header, &claims("mallory"), &EncodingKey::from_secret(public_n.as_bytes()))
        .expect("sign");
    refused(&a, Some(&bearer(&forged)));
    // An RS256 header on an ES256 signature, and the ES key's kid under RS256.
    let es = ec.sign(&claims("mallory"));
    let (_, rest) = es.split_once('.').expect("dot");
    refused(&a, Some(&bearer(&format!("{}.{rest}", part(r#"{"alg":"RS256","kid":"e1"}"#)))));
    refused(&a, Some(&bearer(&format!("{}.{rest}", part(r#"{"alg":"RS256","kid":"r1"}"#)))));
    // Algorithms Prism does not accept at all.
    for alg in ["HS384", "HS512", "RS512", "PS256", "EdDSA"] {
        refused(&a, Some(&bearer(&format!("{}.{rest}", part(&format!(r#"{{"alg":"{alg}","kid":"r1"}}"#))))));
    }
}

#[test]
fn symmetric_and_foreign_jwks_entries_are_never_loaded() {
    let ec = TestKey::ec("e1");
    let doc = serde_json::json!({ "keys": [
        { "kty": "oct", "kid": "h1", "k": b64(SECRET.as_bytes()) },
        { "kty": "EC", "kid": "enc", "crv": "P-256", "use": "enc", "x": ec.jwk["x"], "y": ec.jwk["y"] },
        { "kty": "EC", "kid": "wrong-alg", "crv": "P-256", "alg": "RS256", "x": ec.jwk["x"], "y": ec.jwk["y"] },
        ec.jwk,
    ]});
    let set = crate::jwks::KeySet::parse(doc.to_string().as_bytes()).expect("one usable key");
    assert_eq!(set.len(), 1);
    let only_oct = serde_json::json!({ "keys": [{ "kty": "oct", "kid": "h1", "k": b64(SECRET.as_bytes()) }] });
    assert!(crate::jwks::KeySet::parse(only_oct.to_string().as_bytes()).is_err());
    assert!(crate::jwks::KeySet::parse(b"{not json").is_err());
}

#[test]
fn config_validation_names_the_field() {
    let field = |c: AuthConfig| match c.validate() {
        Err(AuthError::Config { field, .. }) => field,
        other => panic!("expected a config error, got {other:?}"),
    };
    assert_eq!(field(AuthConfig { hs256_secret: Some("short".into()), ..Default::default() }), "hs256_secret");
    // 31 bytes: below RFC 7518's 256 bits.
    let weak = AuthConfig { hs256_secret: Some("0123456789abcdef0123456789abcde".into()), ..Default::default() };
    assert_eq!(field(weak), "hs256_secret");
    let both = AuthConfig { hs256_secret_file: Some("s".into()), ..hs_config() };
    assert_eq!(field(both), "hs256_secret_file");
    assert_eq!(field(AuthConfig { jwks_url: Some("ftp://x/y".into()), ..Default::default() }), "jwks_url");
    assert_eq!(
        field(AuthConfig {
            jwks_url: Some("http://x/y".into()),
            jwks_file: Some("k.json".into()),
            ..Default::default()
        }),
        "jwks_url"
    );
    assert_eq!(field(AuthConfig { jwks_refresh_seconds: Some(0), ..Default::default() }), "jwks_refresh_seconds");
    assert_eq!(field(AuthConfig { leeway_seconds: Some(3600), ..Default::default() }), "leeway_seconds");
    assert_eq!(field(AuthConfig { issuer: Some(String::new()), ..Default::default() }), "issuer");
    AuthConfig { jwks_url: Some("http://127.0.0.1:8080/.well-known/jwks.json".into()), ..hs_config() }
        .validate()
        .expect("valid");
}

/// A tiny HTTP/1.1 server (optionally over TLS) answering every request
/// with `document` (or 500 when it is `None`), counting connections.
struct JwksServer {
    url: String,
    document: Arc<Mutex<Option<String>>>,
    hits: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    async fn start(document: String) -> Self {
        Self::start_with(document, None).await
    }

    /// As [`start`](Self::start), over TLS with a certificate for
    /// `localhost`; returns the CA certificate (PEM) that signed it.
    async fn start_tls(document: String) -> (Self, String) {
        let ca_key = rcgen::KeyPair::generate().expect("ca key");
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
        let ca_pem = ca.self_signed(&ca_key).expect("ca").pem();
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .expect("params")
            .signed_by(&key, &issuer)
            .expect("sign");
        let der_key = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).expect("key der");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], der_key)
            .expect("server config");
        let server = Self::start_with(document, Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))).await;
        (server, ca_pem)
    }

    async fn start_with(document: String, tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let url = match tls {
            Some(_) => format!("https://localhost:{port}/.well-known/jwks.json"),
            None => format!("http://127.0.0.1:{port}/.well-known/jwks.json"),
        };
        let document = Arc::new(Mutex::new(Some(document)));
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (doc, count) = (document.clone(), hits.clone());
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                // One request per connection: a connection is a hit, even
                // one whose TLS handshake then fails.
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                match &tls {
                    Some(acceptor) => {
                        if let Ok(conn) = acceptor.accept(conn).await {
                            answer(conn, &doc).await;
                        }
                    }
                    None => answer(conn, &doc).await,
                }
            }
        });
        Self { url, document, hits, task }
    }

    fn serve(&self, document: Option<String>) {
        *self.document.lock().expect("lock") = document;
    }

    fn hits(&self) -> usize {
        self.hits.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Reads one request and answers it with `doc` (500 when `None`).
async fn answer<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut conn: S, doc: &Mutex<Option<String>>) {
    let mut buf = vec![0u8; 4096];
    let mut read = 0;
    while !buf[..read].windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf[read..]).await {
            Ok(0) | Err(_) => break,
            Ok(n) => read += n,
        }
    }
    let body = doc.lock().expect("lock").clone();
    let response = match body {
        Some(b) => format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{b}",
            b.len()
        ),
        None => "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".into(),
    };
    let _ = conn.write_all(response.as_bytes()).await;
    let _ = conn.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_jwks_url_is_verified_against_the_configured_ca() {
    let key = TestKey::ec("tls");
    let (server, ca_pem) = JwksServer::start_tls(jwks(&[&key])).await;
    let dir = tempfile::tempdir().expect("dir");
    let ca_file = dir.path().join("ca.crt");
    std::fs::write(&ca_file, &ca_pem).expect("write ca");
    let a = Authenticator::new(&AuthConfig {
        jwks_url: Some(server.url.clone()),
        jwks_ca_file: Some(ca_file),
        ..AuthConfig::default()
    });
    let token = bearer(&key.sign(&claims("svc")));
    eventually(|| a.authenticate(Some(&token)).is_ok()).await;

    // Another CA: the server is not trusted, nothing is fetched, and no
    // token verifies.
    let (_, other_ca) = JwksServer::start_tls(jwks(&[&key])).await;
    let other_file = dir.path().join("other.crt");
    std::fs::write(&other_file, &other_ca).expect("write ca");
    let b = Authenticator::new(&AuthConfig {
        jwks_url: Some(server.url.clone()),
        jwks_ca_file: Some(other_file),
        jwks_refresh_seconds: Some(1),
        ..AuthConfig::default()
    });
    let served = server.hits();
    eventually(|| server.hits() > served).await;
    assert!(b.authenticate(Some(&token)).is_err(), "a JWKS from an untrusted server must not be used");
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Polls `check` for up to 10 s (the auth crate cannot use the testkit,
/// which depends on it).
async fn eventually(mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "condition not reached in 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_url_is_fetched_refreshed_on_unknown_kid_and_kept_on_failure() {
    let (old, new) = (TestKey::ec("old"), TestKey::rsa("new"));
    let server = JwksServer::start(jwks(&[&old])).await;
    let a = Authenticator::new(&AuthConfig {
        jwks_url: Some(server.url.clone()),
        jwks_min_refresh_seconds: Some(0),
        ..AuthConfig::default()
    });
    let old_token = bearer(&old.sign(&claims("svc")));
    eventually(|| a.authenticate(Some(&old_token)).is_ok()).await;

    // Rotation: the new key is only known after a refresh, which the
    // unknown kid itself triggers.
    server.serve(Some(jwks(&[&old, &new])));
    let new_token = bearer(&new.sign(&claims("svc")));
    eventually(|| a.authenticate(Some(&new_token)).is_ok()).await;

    // The server fails: the last good keys stay.
    server.serve(None);
    let before = server.hits();
    let unknown = bearer(&TestKey::ec("unknown").sign(&claims("svc")));
    refused(&a, Some(&unknown));
    eventually(|| server.hits() > before).await;
    a.authenticate(Some(&old_token)).expect("last good keys kept");
    a.authenticate(Some(&new_token)).expect("last good keys kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kids_refresh_at_most_once_per_min_gap() {
    let key = TestKey::ec("k");
    let server = JwksServer::start(jwks(&[&key])).await;
    let a = Authenticator::new(&AuthConfig {
        jwks_url: Some(server.url.clone()),
        jwks_min_refresh_seconds: Some(3600),
        ..AuthConfig::default()
    });
    let good = bearer(&key.sign(&claims("svc")));
    eventually(|| a.authenticate(Some(&good)).is_ok()).await;
    let unknown = bearer(&TestKey::ec("unknown").sign(&claims("svc")));
    for _ in 0..100 {
        refused(&a, Some(&unknown));
    }
    // The wakes are coalesced and wait out the gap: the key set is not
    // re-fetched (an eager refresher would have raced these 100 calls).
    assert_eq!(server.hits(), 1, "one fetch at start, none for unknown kids within the gap");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_file_is_re_read() {
    let (first, second) = (TestKey::ec("first"), TestKey::ec("second"));
    let dir = tempfile::tempdir().expect("dir");
    let mut config = jwks_file_config(&dir, &jwks(&[&first]));
    config.jwks_refresh_seconds = Some(1);
    let a = Authenticator::new(&config);
    a.authenticate(Some(&bearer(&first.sign(&claims("svc"))))).expect("read at start");
    let path = config.jwks_file.clone().expect("path");
    std::fs::write(&path, jwks(&[&second])).expect("rewrite");
    let token = bearer(&second.sign(&claims("svc")));
    eventually(|| a.authenticate(Some(&token)).is_ok()).await;
    // A broken file keeps the last good keys.
    std::fs::write(&path, "{broken").expect("rewrite");
    a.authenticate(Some(&token)).expect("still the last good keys");
}

#[test]
fn the_secret_can_come_from_a_file_and_a_bad_one_is_named() {
    let dir = tempfile::tempdir().expect("temp dir");
    let good = dir.path().join("good");
    std::fs::write(&good, format!("{SECRET}\n")).expect("write");
    let mut config = AuthConfig { hs256_secret_file: Some(good), ..AuthConfig::default() };
    assert!(config.verifies_tokens());
    config.validate().expect("valid shape");
    config.read_secret_file().expect("readable");
    assert_eq!(config.hs256_secret.as_deref(), Some(SECRET), "the line ending is not part of it");
    assert_eq!(config.hs256_secret_file, None);
    let token = mint_hs256(SECRET, "ada", None, &[], 60).expect("sign");
    Authenticator::new(&config).authenticate(Some(&bearer(&token))).expect("verifies with the file's secret");
    assert_eq!(format!("{:?}", config.hs256_secret), "Some(<redacted>)");

    let weak = dir.path().join("weak");
    std::fs::write(&weak, "too-short-a-secret").expect("write");
    for (path, needle) in [(weak, "18-byte"), (dir.path().join("missing"), "cannot read")] {
        let mut config = AuthConfig { hs256_secret_file: Some(path.clone()), ..AuthConfig::default() };
        match config.read_secret_file() {
            Err(AuthError::Config { field, description }) => {
                assert_eq!(field, "hs256_secret_file");
                assert!(
                    description.contains(&path.display().to_string()) && description.contains(needle),
                    "{description}"
                );
                assert!(!description.contains("too-short"), "the secret is not quoted: {description}");
            }
            other => panic!("expected a config error, got {other:?}"),
        }
    }
}
