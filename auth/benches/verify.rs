//! What authenticating one request costs per algorithm: `Authenticator::
//! authenticate` on a valid bearer token (header parse, key selection,
//! signature check, claims), against a baseline measured in the same run
//! (parsing the same header without verifying it).
//!
//! - `verify/hs256` — HMAC-SHA256 with the configured secret.
//! - `verify/rs256` — RSA-2048 PKCS#1 v1.5 from a JWKS file.
//! - `verify/es256` — ECDSA P-256 from the same JWKS.
//! - `decode_header` — the baseline.
//!
//! `cargo bench -p prism-auth --bench verify -- --measurement-time 3 --warm-up-time 1`

use std::hint::black_box;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use criterion::{Criterion, criterion_group, criterion_main};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use prism_auth::{AuthConfig, Authenticator, Claims};

const SECRET: &str = "0123456789abcdef0123456789abcdef";

fn bench(c: &mut Criterion) {
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    use p256::pkcs8::EncodePrivateKey;
    use rsa::pkcs1::EncodeRsaPrivateKey;
    use rsa::traits::PublicKeyParts;

    let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
    let rsa = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).expect("rsa key");
    let ec = p256::SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
    let point = ec.public_key().to_encoded_point(false);
    let jwks = serde_json::json!({ "keys": [
        { "kty": "RSA", "kid": "r", "n": b64(&rsa.n().to_bytes_be()), "e": b64(&rsa.e().to_bytes_be()) },
        { "kty": "EC", "kid": "e", "crv": "P-256", "x": b64(point.x().expect("x")), "y": b64(point.y().expect("y")) },
    ]});
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, jwks.to_string()).expect("write");
    let auth = Authenticator::new(&AuthConfig {
        hs256_secret: Some(SECRET.into()),
        jwks_file: Some(path),
        ..AuthConfig::default()
    });

    let claims = Claims::new("svc", Some("acme"), &["tenant-admin"], 3600);
    let sign = |alg: Algorithm, kid: &str, key: &EncodingKey| {
        let mut header = Header::new(alg);
        header.kid = (!kid.is_empty()).then(|| kid.to_owned());
        format!("Bearer {}", jsonwebtoken::encode(&header, &claims, key).expect("sign"))
    };
    let rsa_der = rsa.to_pkcs1_der().expect("der");
    let ec_der = ec.to_pkcs8_der().expect("der");
    let tokens = [
        ("hs256", sign(Algorithm::HS256, "", &EncodingKey::from_secret(SECRET.as_bytes()))),
        ("rs256", sign(Algorithm::RS256, "r", &EncodingKey::from_rsa_der(rsa_der.as_bytes()))),
        ("es256", sign(Algorithm::ES256, "e", &EncodingKey::from_ec_der(ec_der.as_bytes()))),
    ];
    let mut group = c.benchmark_group("verify");
    for (name, token) in &tokens {
        auth.authenticate(Some(token)).expect("valid");
        group.bench_function(*name, |b| b.iter(|| auth.authenticate(black_box(Some(token.as_str())))));
    }
    group.finish();
    let raw = tokens[0].1.trim_start_matches("Bearer ");
    c.bench_function("decode_header", |b| b.iter(|| jsonwebtoken::decode_header(black_box(raw))));
}

criterion_group!(benches, bench);
criterion_main!(benches);
