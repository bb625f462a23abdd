//! Writes the seed corpora of the fuzz targets (`fuzz/corpus/<target>/`):
//! a few real inputs of each format, made by the code that makes them in
//! production (prost encodings of requests, the page-token encoders,
//! `sign_hs256`, the spec-file parser, the stores' encoders), each prefixed
//! by the selector byte its target reads. A seed is accepted by its target
//! (decoded and valid) unless its name says `refused`; the replay test
//! checks both. Run it after a format changes:
//! `cargo run -p prism-fuzz-cases --example seed`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use prism_fuzz_cases::{CONTROL_REQUESTS, EMBEDDED_CODECS, GATEWAY_REQUESTS, JWT_SECRET};
use prism_proto::{control, kv, timeseries as ts};
use prost::Message;

const SPEC_YAML: &str = r#"namespace: acme/user-profiles
abstraction: keyvalue
backend: postgres
capacity: { estimated_read_rps: 5000, estimated_write_rps: 500, estimated_data_size_gb: 100 }
policies: { retention_days: null, consistency: strong, cache_enabled: true, cache_ttl_seconds: 300, data_access_audit_rate: 0.01 }
access:
  owners: [ user-service-team ]
  consumers:
    - { principal: user-api, access: read-write }
    - { principal: analytics-pipeline, access: read }
quotas: { profile: pro, requests_per_second: 1000 }
placement: { pinned_shard: shard-1 }
backend_config:
  postgres: { dsn: "postgres://prism@prod-postgres-1/prism", password_ref: "secret:pg-acme", pool_size: 20, schema: public }
"#;

const SPEC_JSON: &str = r#"{
    "abstraction": "time-series",
    "backend": "kafka",
    "policies": { "retention_days": 7, "accept_limit_seconds": 600, "accept_loss": true, "consistency": "eventual" },
    "backend_config": { "kafka": { "bootstrap_servers": ["broker-1:9092", "broker-2:9092"], "partitions": 6 } }
}"#;

const SPEC_PULSAR_YAML: &str = "abstraction: time-series\nbackend: pulsar\nbackend_config:\n  pulsar: { service_url: \"pulsar://localhost:6650\" }\n";

struct Corpus {
    dir: PathBuf,
    written: usize,
}

impl Corpus {
    fn new(root: &Path, target: &str) -> std::io::Result<Self> {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir)?;
        Ok(Self { dir, written: 0 })
    }

    fn put(&mut self, name: &str, selector: Option<usize>, bytes: &[u8]) -> std::io::Result<()> {
        let mut data = Vec::with_capacity(1 + bytes.len());
        if let Some(s) = selector {
            data.push(u8::try_from(s).map_err(std::io::Error::other)?);
        }
        data.extend_from_slice(bytes);
        std::fs::write(self.dir.join(format!("seed-{name}")), data)?;
        self.written += 1;
        Ok(())
    }
}

fn index(list: &[&str], name: &str) -> Option<usize> {
    list.iter().position(|n| *n == name)
}

fn time(seconds: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds, nanos: 0 })
}

fn spec(text: &str, format: prism_cli::spec_file::Format) -> anyhow::Result<control::NamespaceSpec> {
    prism_cli::spec_file::parse(text, format)?.to_spec()
}

fn main() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let ns = "acme/profiles".to_owned();
    let item = |k: &str, v: &str| kv::Item { key: k.into(), value: v.into(), ttl: None };
    let token = Some(kv::IdempotencyToken { generation_time: time(1_700_000_000), token: "0b5e-7c1d".into() });
    let event = |series: &str, id: &str| ts::Event {
        schema_version: 0,
        time_series_id: series.into(),
        event_time: time(1_700_000_000),
        event_id: id.into(),
        items: vec![ts::EventItem { key: b"temp".to_vec(), value: b"21.5".to_vec() }],
        tags: [("region".to_owned(), "eu".to_owned())].into(),
    };
    let filter = ts::TagFilter {
        filter: Some(ts::tag_filter::Filter::And(ts::TagFilterList {
            filters: vec![
                ts::TagFilter {
                    filter: Some(ts::tag_filter::Filter::Equals(ts::TagEquals {
                        key: "region".into(),
                        value: "eu".into(),
                    })),
                },
                ts::TagFilter {
                    filter: Some(ts::tag_filter::Filter::In(ts::TagIn {
                        key: "host".into(),
                        values: vec!["a".into(), "b".into()],
                    })),
                },
            ],
        })),
    };

    let mut c = Corpus::new(&root, "gateway_request")?;
    let g = |name| index(&GATEWAY_REQUESTS, name);
    c.put(
        "put",
        g("Put"),
        &kv::PutItemsRequest {
            namespace: ns.clone(),
            id: "user-1".into(),
            items: vec![item("name", "ada"), item("email", "ada@example.com")],
            idempotency_token: token,
        }
        .encode_to_vec(),
    )?;
    c.put(
        "get",
        g("Get"),
        &kv::GetItemsRequest {
            namespace: ns.clone(),
            id: "user-1".into(),
            selector: Some(kv::get_items_request::Selector::Keys(kv::KeyList { keys: vec![b"name".to_vec()] })),
            page_size_bytes: 4096,
            limit: 10,
            page_token: String::new(),
        }
        .encode_to_vec(),
    )?;
    c.put(
        "delete",
        g("Delete"),
        &kv::DeleteItemsRequest {
            namespace: ns.clone(),
            id: "user-1".into(),
            selector: Some(kv::delete_items_request::Selector::Range(kv::KeyRange {
                start: b"a".to_vec(),
                end: b"m".to_vec(),
            })),
            idempotency_token: None,
        }
        .encode_to_vec(),
    )?;
    c.put(
        "mutate",
        g("Mutate"),
        &kv::MutateItemsRequest {
            namespace: ns.clone(),
            id: "user-1".into(),
            mutations: vec![
                kv::Mutation { operation: Some(kv::mutation::Operation::Put(item("name", "grace"))) },
                kv::Mutation { operation: Some(kv::mutation::Operation::DeleteKey(b"email".to_vec())) },
            ],
            idempotency_token: None,
        }
        .encode_to_vec(),
    )?;
    c.put(
        "scan",
        g("Scan"),
        &kv::ScanItemsRequest { namespace: ns.clone(), page_size_bytes: 0, limit: 100, page_token: String::new() }
            .encode_to_vec(),
    )?;
    let write = ts::WriteEventRecordsRequest {
        namespace: "acme/metrics".into(),
        events: vec![event("sensor-1", "e1"), event("sensor-2", "e2")],
    };
    c.put("write-sync", g("WriteSync"), &write.encode_to_vec())?;
    c.put("write-buffered", g("WriteBuffered"), &write.encode_to_vec())?;
    c.put(
        "read",
        g("Read"),
        &ts::ReadEventRecordsRequest {
            namespace: "acme/metrics".into(),
            time_series_id: "sensor-1".into(),
            start: time(1_600_000_000),
            end: time(1_800_000_000),
            page_size_bytes: 0,
            limit: 50,
            page_token: String::new(),
        }
        .encode_to_vec(),
    )?;
    c.put(
        "search",
        g("Search"),
        &ts::SearchEventRecordsRequest {
            namespace: "acme/metrics".into(),
            start: time(1_600_000_000),
            end: None,
            filter: Some(filter.clone()),
            page_size_bytes: 0,
            limit: 50,
            page_token: String::new(),
        }
        .encode_to_vec(),
    )?;
    c.put(
        "tail",
        g("Tail"),
        &ts::TailEventRecordsRequest {
            namespace: "acme/metrics".into(),
            time_series_id: String::new(),
            filter: Some(filter),
        }
        .encode_to_vec(),
    )?;

    let mut c = Corpus::new(&root, "control_request")?;
    let k = |name| index(&CONTROL_REQUESTS, name);
    let pg = spec(SPEC_YAML, prism_cli::spec_file::Format::Yaml)?;
    let kafka = spec(SPEC_JSON, prism_cli::spec_file::Format::Json)?;
    let pulsar = spec(SPEC_PULSAR_YAML, prism_cli::spec_file::Format::Yaml)?;
    c.put("spec-postgres", k("NamespaceSpec"), &pg.encode_to_vec())?;
    c.put("spec-kafka", k("NamespaceSpec"), &kafka.encode_to_vec())?;
    c.put("spec-pulsar", k("NamespaceSpec"), &pulsar.encode_to_vec())?;
    c.put(
        "create-namespace",
        k("CreateNamespace"),
        &control::CreateNamespaceRequest { name: "acme/user-profiles".into(), spec: Some(pg.clone()) }.encode_to_vec(),
    )?;
    c.put(
        "update-namespace",
        k("UpdateNamespace"),
        &control::UpdateNamespaceRequest { name: "acme/metrics".into(), spec: Some(kafka), expected_revision: 7 }
            .encode_to_vec(),
    )?;
    c.put(
        "create-tenant",
        k("CreateTenant"),
        &control::CreateTenantRequest {
            tenant_id: "acme".into(),
            display_name: "Acme Corp".into(),
            quotas: pg.quotas,
            admins: vec!["acme:alice".into(), "bob".into()],
        }
        .encode_to_vec(),
    )?;
    c.put(
        "update-tenant",
        k("UpdateTenant"),
        &control::UpdateTenantRequest {
            tenant_id: "acme".into(),
            display_name: "Acme".into(),
            quotas: None,
            admins: vec!["acme:carol".into()],
            expected_revision: 3,
        }
        .encode_to_vec(),
    )?;
    c.put(
        "grant-access",
        k("GrantAccess"),
        &control::GrantAccessRequest {
            name: "acme/user-profiles".into(),
            principal: "acme:user-api".into(),
            level: control::AccessLevel::ReadWrite as i32,
            ..Default::default()
        }
        .encode_to_vec(),
    )?;
    c.put(
        "list-namespaces",
        k("ListNamespaces"),
        &control::ListNamespacesRequest {
            tenant_id: "acme".into(),
            page_size: 100,
            page_token: prism_control_plane::page_token::encode(
                prism_control_plane::page_token::Listing::Namespaces,
                "acme/user-profiles",
            ),
            include_deleted: false,
        }
        .encode_to_vec(),
    )?;

    let mut c = Corpus::new(&root, "page_token")?;
    let binding = prism_gateway::page_token::binding(&[b"acme/fuzz", b"record"]);
    let position = prism_gateway::page_token::scan_position("user-1", b"email");
    c.put("scan-position", None, &position)?;
    c.put("gateway", None, prism_gateway::page_token::encode(binding, &position).as_bytes())?;
    c.put("gateway-key", None, prism_gateway::page_token::encode(binding, b"last-key").as_bytes())?;
    for (name, listing, key) in [
        ("tenants", prism_control_plane::page_token::Listing::Tenants, "acme"),
        ("namespaces", prism_control_plane::page_token::Listing::Namespaces, "acme/user-profiles"),
        ("audit", prism_control_plane::page_token::Listing::Audit, "00000000000000001234"),
    ] {
        c.put(name, None, prism_control_plane::page_token::encode(listing, key).as_bytes())?;
    }

    let mut c = Corpus::new(&root, "jwt")?;
    // Fixed times (valid until 2100), so that the seeds are the same on
    // every run and the bearer seeds keep passing the signature and time
    // checks, reaching the claim checks behind them.
    let mut claims = prism_auth::Claims::new("alice", Some("acme"), &["admin"], 0);
    claims.iat = Some(1_700_000_000);
    claims.exp = 4_102_444_800;
    claims.iss = Some("prism-fuzz".into());
    claims.aud = Some("prism".into());
    let signed = prism_auth::sign_hs256(JWT_SECRET, &claims)?;
    c.put("bearer", Some(0), format!("Bearer {signed}").as_bytes())?;
    c.put("bare", Some(0), signed.as_bytes())?;
    c.put("refused-wrong-secret", Some(0), prism_auth::sign_hs256(&"x".repeat(32), &claims)?.as_bytes())?;
    c.put("claims", Some(1), &serde_json::to_vec(&claims)?)?;
    c.put(
        "claims-odd",
        Some(1),
        br#"{"sub":"svc","exp":99999999999,"nbf":1,"iss":"prism-fuzz","aud":["prism","other"],"roles":["reader"]}"#,
    )?;

    let mut c = Corpus::new(&root, "jwks")?;
    // Public keys in the shapes JWKS endpoints serve (RFC 7517 examples).
    c.put(
        "rsa",
        None,
        br#"{"keys":[{"kty":"RSA","kid":"k1","use":"sig","alg":"RS256","n":"0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw","e":"AQAB"}]}"#,
    )?;
    c.put(
        "ec",
        None,
        br#"{"keys":[{"kty":"EC","crv":"P-256","kid":"k2","x":"MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4","y":"4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM"}]}"#,
    )?;
    c.put("refused-empty", None, br#"{"keys":[]}"#)?;

    let mut c = Corpus::new(&root, "spec_file")?;
    c.put("adr-006.yaml", Some(0), SPEC_YAML.as_bytes())?;
    c.put("kafka.json", Some(1), SPEC_JSON.as_bytes())?;
    c.put("pulsar.yaml", Some(0), SPEC_PULSAR_YAML.as_bytes())?;

    let mut c = Corpus::new(&root, "embedded_codec")?;
    {
        use prism_plugin_embedded::kv::codec::{Header, RangeTombstone};
        use prism_plugin_embedded::ts::codec as tsc;
        let e = |name| index(&EMBEDDED_CODECS, name);
        let header =
            Header { generation: 1_700_000_000_000_000, expires_at: None, tombstone: false, chunks: 0, len: 3 };
        c.put("header", e("item header"), &header.encode(b"ada"))?;
        let expiring = Header { expires_at: Some(1_800_000_000_000_000), chunks: 2, len: 1 << 20, ..header };
        c.put("header-chunked", e("item header"), &expiring.encode(&[]))?;
        c.put("header-tombstone", e("item header"), &Header::tombstone(42).encode(&[]))?;
        let ranges = [
            RangeTombstone { start: b"a".to_vec(), end: Some(b"m".to_vec()), generation: 5 },
            RangeTombstone { start: b"x".to_vec(), end: None, generation: 9 },
        ];
        c.put("range-tombstones", e("range tombstones"), &RangeTombstone::encode_all(&ranges))?;
        let tags: BTreeMap<String, String> = [("region".into(), "eu".into()), ("host".into(), "a".into())].into();
        c.put("tags", e("tags"), &tsc::encode_tags(&tags)?)?;
        let record = prism_plugin_embedded::kv::codec::record_key(&[], "user-1")?;
        c.put("item-key", e("item key"), &prism_plugin_embedded::kv::codec::join(&record, b"email"))?;
        c.put("index-key", e("index key"), &tsc::index_key(&[], 1_700_000_000_000_000, "sensor-1", "e1"))?;
        let mut event_key = tsc::newest_first(1_700_000_000_000_000).to_vec();
        event_key.extend_from_slice(b"e1\0");
        c.put("row-head", e("event row key"), &tsc::head_key(&event_key))?;
        c.put("row-item", e("event row key"), &tsc::item_key(&event_key, b"temp"))?;
        c.put("time", e("time"), &tsc::newest_first(-1))?;
    }

    let event = prism_plugin_api::ts::Event {
        time_series_id: "sensor-1".into(),
        event_time: 1_700_000_000_123_456,
        event_id: "e1".into(),
        items: vec![(b"temp".to_vec(), b"21.5".to_vec())],
        tags: [("region".to_owned(), "eu".to_owned())].into(),
    };
    let mut c = Corpus::new(&root, "kafka_codec")?;
    let mut message = vec![u8::try_from(event.time_series_id.len())?];
    message.extend_from_slice(event.time_series_id.as_bytes());
    message.extend_from_slice(&prism_plugin_kafka::codec::encode(&event));
    c.put("event", None, &message)?;

    let mut c = Corpus::new(&root, "pulsar_codec")?;
    {
        use prism_plugin_pulsar::codec::{self as pc, Fence, Lifecycle, LifecycleKind, StoredEvent, record::Body};
        c.put("event", None, &pc::encode(Body::Event(StoredEvent::of(&event, 3))))?;
        c.put("fence", None, &pc::encode(Body::Fence(Fence {})))?;
        c.put(
            "lifecycle",
            None,
            &pc::encode(Body::Lifecycle(Lifecycle { kind: LifecycleKind::Reclaimed as i32, before: 1_700_000_000 })),
        )?;
    }
    println!("seeded {}", root.display());
    Ok(())
}
