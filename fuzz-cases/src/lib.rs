//! The body of every fuzz target: arbitrary bytes through the real code
//! that reads untrusted input (requests, page tokens, bearer tokens, JWKS
//! documents, spec files, stored records), asserting it never panics and
//! that whatever decodes survives a re-encoding unchanged.
//!
//! `fuzz/fuzz_targets/*.rs` (cargo-fuzz, nightly) call these functions;
//! `tests/replay.rs` feeds them every file of `fuzz/corpus/<target>/` and
//! `fuzz/artifacts/<target>/` on stable, so a crash once found stays fixed
//! and the two never drift apart. The crate is a member of the main
//! workspace but not a default member (it decodes Pulsar records, whose
//! crate needs a system `protoc`). The seeds are written by the production
//! encoders (`examples/seed.rs`); how to run and what was run is in
//! `docs/benchmarks.md`, "Fuzzing".
//!
//! Where one target covers several formats, its first byte picks the format
//! and the rest is the input. Every body returns whether the input was
//! accepted (decoded and valid), so the replay test can also check that the
//! seeds still reach past the decoders.

use prism_auth::jwks::{KeySet, KeyStore};
use prism_auth::{AuthConfig, Authenticator};
use prism_gateway::call::Request;
use prism_gateway::error::GatewayError;
use prism_proto::{control, kv, timeseries as ts};
use prost::Message;

/// A target's body: the input, and whether it was accepted.
pub type Body = fn(&[u8]) -> bool;

/// Every target: its name (the directory of its corpus) and its body.
pub const TARGETS: &[(&str, Body)] = &[
    ("gateway_request", gateway_request),
    ("control_request", control_request),
    ("page_token", page_token),
    ("jwt", jwt),
    ("jwks", jwks),
    ("spec_file", spec_file),
    ("embedded_codec", embedded_codec),
    ("kafka_codec", kafka_codec),
    ("pulsar_codec", pulsar_codec),
];

fn decode<M: Message + Default>(bytes: &[u8]) -> Option<M> {
    M::decode(bytes).ok()
}

/// Which of the gateway's requests the first byte of [`gateway_request`]
/// picks, in this order.
pub const GATEWAY_REQUESTS: [&str; 10] =
    ["Put", "Get", "Delete", "Mutate", "Scan", "WriteSync", "WriteBuffered", "Read", "Search", "Tail"];

/// A KeyValue or TimeSeries request, protobuf-decoded as the gRPC codec
/// does, through the gateway's validate layer: a refusal is always
/// INVALID_ARGUMENT naming a field.
pub fn gateway_request(data: &[u8]) -> bool {
    let Some((&kind, bytes)) = data.split_first() else { return false };
    let request = match kind as usize % GATEWAY_REQUESTS.len() {
        0 => decode::<kv::PutItemsRequest>(bytes).map(Request::Put),
        1 => decode::<kv::GetItemsRequest>(bytes).map(Request::Get),
        2 => decode::<kv::DeleteItemsRequest>(bytes).map(Request::Delete),
        3 => decode::<kv::MutateItemsRequest>(bytes).map(Request::Mutate),
        4 => decode::<kv::ScanItemsRequest>(bytes).map(Request::Scan),
        5 => decode::<ts::WriteEventRecordsRequest>(bytes).map(Request::WriteSync),
        6 => decode::<ts::WriteEventRecordsRequest>(bytes).map(Request::WriteBuffered),
        7 => decode::<ts::ReadEventRecordsRequest>(bytes).map(Request::Read),
        8 => decode::<ts::SearchEventRecordsRequest>(bytes).map(Request::Search),
        _ => decode::<ts::TailEventRecordsRequest>(bytes).map(Request::Tail),
    };
    let Some(request) = request else { return false };
    match prism_gateway::layers::validate_request(&request) {
        Ok(()) => true,
        Err(GatewayError::InvalidArgument { .. }) => false,
        Err(other) => panic!("validation refused with {other:?}, not INVALID_ARGUMENT"),
    }
}

/// Which of the control plane's inputs the first byte of
/// [`control_request`] picks, in this order.
pub const CONTROL_REQUESTS: [&str; 7] = [
    "NamespaceSpec",
    "CreateNamespace",
    "UpdateNamespace",
    "CreateTenant",
    "UpdateTenant",
    "GrantAccess",
    "ListNamespaces",
];

/// A control-plane request, protobuf-decoded, through the shape checks
/// `ControlPlane` runs before it reads the store (plane.rs), in the same
/// order: a refusal is always INVALID_ARGUMENT naming a field.
pub fn control_request(data: &[u8]) -> bool {
    use prism_control_plane::page_token::{self, Listing};
    use prism_control_plane::validate as v;
    let Some((&kind, bytes)) = data.split_first() else { return false };
    let shards = ["shard-1".to_owned(), "shard-2".to_owned()];
    let spec = |spec: Option<&control::NamespaceSpec>| {
        let spec = spec.ok_or_else(|| prism_control_plane::ControlPlaneError::invalid("spec", "is required"))?;
        v::namespace_spec(spec, &shards)
    };
    let result = match kind as usize % CONTROL_REQUESTS.len() {
        0 => decode::<control::NamespaceSpec>(bytes).map(|s| v::namespace_spec(&s, &shards)),
        1 => decode::<control::CreateNamespaceRequest>(bytes)
            .map(|r| v::namespace_name("name", &r.name).and_then(|()| spec(r.spec.as_ref()))),
        2 => decode::<control::UpdateNamespaceRequest>(bytes)
            .map(|r| v::namespace_name("name", &r.name).and_then(|()| spec(r.spec.as_ref()))),
        3 => decode::<control::CreateTenantRequest>(bytes).map(|r| {
            v::tenant_id("tenant_id", &r.tenant_id)?;
            v::text("display_name", &r.display_name)?;
            v::principals("admins", r.admins.iter().map(String::as_str))?;
            r.quotas.as_ref().map_or(Ok(()), |q| v::quotas("quotas", q))
        }),
        4 => decode::<control::UpdateTenantRequest>(bytes).map(|r| {
            v::text("display_name", &r.display_name)?;
            v::principals("admins", r.admins.iter().map(String::as_str))?;
            r.quotas.as_ref().map_or(Ok(()), |q| v::quotas("quotas", q))
        }),
        5 => decode::<control::GrantAccessRequest>(bytes).map(|r| {
            v::principal("principal", &r.principal).and_then(|()| v::access_level("level", r.level).map(drop))
        }),
        _ => decode::<control::ListNamespacesRequest>(bytes)
            .map(|r| page_token::decode(Listing::Namespaces, &r.page_token).map(drop)),
    };
    match result {
        Some(Ok(())) => true,
        None | Some(Err(prism_control_plane::ControlPlaneError::InvalidArgument { .. })) => false,
        Some(Err(other)) => panic!("validation refused with {other:?}, not INVALID_ARGUMENT"),
    }
}

/// Both page-token formats: the gateway's sealed tokens (with the scan
/// position inside) and the control plane's listing tokens. Whatever a
/// decoder accepts re-encodes to a token that decodes to the same value;
/// whatever is encoded (within the size a real position has) decodes.
pub fn page_token(data: &[u8]) -> bool {
    use prism_control_plane::page_token::{self as cp, Listing};
    use prism_gateway::page_token as gw;

    let binding = gw::binding(&[b"acme/fuzz", b"record"]);
    // A real position is a record id (<= 1 KiB) and a key (<= 4 KiB).
    if data.len() <= 5 * 1024 {
        let token = gw::encode(binding, data);
        assert_eq!(gw::decode(binding, &token).ok().flatten().as_deref(), Some(data), "gateway token round trip");
        assert!(gw::decode(gw::binding(&[b"acme/fuzz", b"other"]), &token).is_err(), "a foreign binding decodes");
    }
    let mut accepted = false;
    if let Ok((id, key)) = gw::parse_scan_position(data) {
        let again = gw::scan_position(&id, &key);
        assert_eq!(gw::parse_scan_position(&again).ok(), Some((id, key)), "scan position round trip");
        accepted = true;
    }
    let Ok(text) = std::str::from_utf8(data) else { return accepted };
    if let Ok(Some(position)) = gw::decode(binding, text) {
        let again = gw::encode(binding, &position);
        assert_eq!(gw::decode(binding, &again).ok().flatten(), Some(position), "gateway token re-encoding");
        accepted = true;
    }
    for listing in [Listing::Tenants, Listing::Namespaces, Listing::Audit] {
        if let Ok(last) = cp::decode(listing, text)
            && !last.is_empty()
        {
            let again = cp::encode(listing, &last);
            assert_eq!(cp::decode(listing, &again).ok(), Some(last), "control-plane token re-encoding");
            accepted = true;
        }
    }
    // A last key (never empty: ids and names are not) survives a token.
    if !text.is_empty() && text.len() <= 1024 {
        let token = cp::encode(Listing::Audit, text);
        assert_eq!(cp::decode(Listing::Audit, &token).ok().as_deref(), Some(text), "control-plane round trip");
        assert!(cp::decode(Listing::Tenants, &token).is_err(), "a token of another listing decodes");
    }
    accepted
}

/// The HS256 secret of [`jwt`]'s authenticator.
pub const JWT_SECRET: &str = "fuzz-secret-of-at-least-thirty-two-bytes";

fn authenticator() -> &'static Authenticator {
    static AUTH: std::sync::OnceLock<Authenticator> = std::sync::OnceLock::new();
    AUTH.get_or_init(|| {
        Authenticator::new(&AuthConfig {
            hs256_secret: Some(JWT_SECRET.into()),
            issuer: Some("prism-fuzz".into()),
            audience: Some("prism".into()),
            ..AuthConfig::default()
        })
    })
}

/// Bearer tokens through the gateway's and control plane's
/// [`Authenticator`] (HS256 secret, issuer and audience required). First
/// byte even: the rest is the `authorization` header as sent. Odd: the rest
/// is a JSON claims document, signed with the right secret, so the claim
/// checks behind the signature are reached too.
pub fn jwt(data: &[u8]) -> bool {
    let Some((&mode, rest)) = data.split_first() else { return false };
    let auth = authenticator();
    if mode % 2 == 0 {
        let header = String::from_utf8_lossy(rest);
        let as_sent = auth.authenticate(Some(&header)).is_ok();
        return auth.authenticate(Some(&format!("Bearer {header}"))).is_ok() || as_sent;
    }
    let Ok(claims) = serde_json::from_slice::<serde_json::Value>(rest) else { return false };
    let key = jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes());
    let Ok(token) = jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256), &claims, &key)
    else {
        return false;
    };
    let Ok(principal) = auth.authenticate(Some(&format!("Bearer {token}"))) else { return false };
    assert_eq!(claims.get("sub").and_then(|s| s.as_str()), Some(principal.sub.as_str()), "sub is the principal");
    true
}

/// A JWKS document (as a file or an HTTP body holds it): parsed, and its
/// keys looked up as a token's header would name them.
pub fn jwks(data: &[u8]) -> bool {
    use jsonwebtoken::Algorithm;
    let Ok(keys) = KeySet::parse(data) else { return false };
    assert!(!keys.is_empty(), "a parsed key set is never empty");
    let store = KeyStore::default();
    store.replace(keys);
    for alg in [Algorithm::RS256, Algorithm::ES256, Algorithm::HS256] {
        for kid in [None, Some("k1"), Some("")] {
            let _ = store.lookup(kid, alg);
        }
    }
    true
}

/// A namespace spec file, YAML (first byte even) or JSON (odd), as
/// `prism namespace create --file` reads it: parsed, converted to a
/// `NamespaceSpec`, and validated as the control plane would.
pub fn spec_file(data: &[u8]) -> bool {
    use prism_cli::spec_file::{self, Format};
    let Some((&mode, rest)) = data.split_first() else { return false };
    let Ok(text) = std::str::from_utf8(rest) else { return false };
    let format = if mode % 2 == 0 { Format::Yaml } else { Format::Json };
    let Ok(file) = spec_file::parse(text, format) else { return false };
    let _ = spec_file::namespace_name(None, Some(&file));
    let _ = spec_file::namespace_name(Some("acme/fuzz"), Some(&file));
    file.to_spec()
        .is_ok_and(|spec| prism_control_plane::validate::namespace_spec(&spec, &["shard-1".to_owned()]).is_ok())
}

/// Which of the embedded store's layouts the first byte of
/// [`embedded_codec`] picks, in this order.
pub const EMBEDDED_CODECS: [&str; 7] =
    ["item header", "range tombstones", "tags", "item key", "index key", "event row key", "time"];

/// The embedded store's key and value layouts, read from arbitrary bytes
/// as from a damaged file: an error, never a panic, and what decodes
/// encodes back to the same value.
pub fn embedded_codec(data: &[u8]) -> bool {
    use prism_plugin_embedded::kv::codec::{self as kv, Header, RangeTombstone};
    use prism_plugin_embedded::ts::codec as ts;
    let Some((&kind, rest)) = data.split_first() else { return false };
    match kind as usize % EMBEDDED_CODECS.len() {
        0 => Header::decode(rest).is_ok_and(|(header, inline)| {
            let again = header.encode(inline);
            let (h, i) = Header::decode(&again).expect("a re-encoded header decodes");
            assert_eq!((h, i), (header, inline), "item header round trip");
            true
        }),
        1 => RangeTombstone::decode_all(rest).is_ok_and(|list| {
            let again = RangeTombstone::encode_all(&list);
            assert_eq!(RangeTombstone::decode_all(&again).ok(), Some(list), "range tombstones round trip");
            true
        }),
        2 => ts::decode_tags(rest).is_ok_and(|tags| {
            let again = ts::encode_tags(&tags).expect("decoded tags encode");
            assert_eq!(ts::decode_tags(&again).ok(), Some(tags), "tags round trip");
            true
        }),
        3 => kv::split_item(rest).is_ok_and(|(id, key)| {
            let again = kv::join(&kv::record_key(&[], id).expect("a decoded record id has no NUL"), key);
            assert_eq!(kv::split_item(&again).ok(), Some((id, key)), "item key round trip");
            true
        }),
        4 => ts::split_index(rest).is_ok_and(|(time, series, event)| {
            let again = ts::index_key(&[], time, &series, &event);
            assert_eq!(ts::split_index(&again).ok(), Some((time, series, event)), "index key round trip");
            true
        }),
        5 => ts::split_row(rest).is_ok_and(|(time, event, row)| {
            let mut event_key = ts::newest_first(time).to_vec();
            event_key.extend_from_slice(event);
            event_key.push(kv::SEPARATOR);
            let again = match row {
                ts::Row::Head => ts::head_key(&event_key),
                ts::Row::Item(key) => ts::item_key(&event_key, key),
            };
            assert_eq!(ts::split_row(&again).ok(), Some((time, event, row)), "event row key round trip");
            true
        }),
        _ => {
            let Some(bytes) = rest.first_chunk::<8>() else { return false };
            let time = ts::from_newest_first(*bytes);
            assert_eq!(ts::newest_first(time), *bytes, "newest-first time round trip");
            let sortable = kv::sortable(time);
            assert_eq!(i64::from_be_bytes(sortable).wrapping_add(i64::MIN), time, "sortable time");
            let _ = ts::partition(time);
            let _ = kv::prefix_end(rest);
            let _ = kv::due_rest(usize::from(bytes[0]), rest);
            true
        }
    }
}

/// A Kafka message of a TimeSeries topic: the first byte is the key's
/// length (0xff: no key), then the key, then the value. What decodes
/// re-encodes to the same event.
pub fn kafka_codec(data: &[u8]) -> bool {
    use prism_plugin_kafka::codec;
    let Some((&len, rest)) = data.split_first() else { return false };
    let (key, value) = if len == u8::MAX {
        (None, rest)
    } else {
        let (key, value) = rest.split_at(usize::from(len).min(rest.len()));
        (Some(key), value)
    };
    let Ok(event) = codec::decode(key, Some(value)) else { return false };
    let again = codec::encode(&event);
    assert_eq!(codec::decode(key, Some(&again)).ok(), Some(event.clone()), "kafka record round trip");
    for partitions in [0, 1, 3, 64] {
        let p = codec::partition(&event.time_series_id, partitions);
        assert!((0..partitions.max(1)).contains(&p), "partition {p} of {partitions}");
    }
    assert!(codec::timestamp_ms(event.event_time) >= 0, "negative message timestamp");
    true
}

/// A Pulsar message payload (data or lifecycle topic): what decodes
/// re-encodes to the same record.
pub fn pulsar_codec(data: &[u8]) -> bool {
    use prism_plugin_pulsar::codec;
    let Ok(body) = codec::decode(data) else { return false };
    let again = codec::encode(body.clone());
    assert!(codec::decode(&again).ok() == Some(body), "pulsar record round trip");
    true
}
