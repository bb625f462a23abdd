//! What the postgres backend promises beyond the shared suite: SQL never
//! mixes with data (parameters, quoted identifiers, validated names), the
//! tables are named deterministically and within PostgreSQL's limits and
//! go with their namespace, large values live in chunks, settings are
//! checked without leaking the DSN, writers through different gateways
//! keep the last writer, an outage fails requests fast and heals by
//! itself, and a restart under a write load loses and duplicates nothing.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use prism_plugin_api::conformance::Subject;
use prism_plugin_api::conformance::support::{Case, MIB, namespace, pairs, pattern, put};
use prism_plugin_api::kv::{KeyRange, Mutation, PageLimits, Selector, WriteStamp};
use prism_plugin_api::ts::{Event, Query};
use prism_plugin_api::{Namespace, Plugin, PluginError, now_micros};
use prism_plugin_postgres::kv::MAX_ID_AND_KEY_BYTES;
use prism_plugin_postgres::{PostgresPlugin, PostgresPluginConfig, TableNames};
use prism_proto::control::PostgresConfig;
use prism_testkit::postgres::{PostgresServer, skip_reason};
use support::{settings, sql, subject, with_settings};

/// The shared server, or return from the test saying why it is skipped.
macro_rules! server_or_skip {
    () => {
        match support::server_or_skip() {
            Some(server) => server,
            None => {
                println!("{}", skip_reason());
                return;
            }
        }
    };
}

const UNLIMITED: PageLimits = PageLimits::new(u64::MAX, None);

/// Table names in `schema`, sorted.
async fn tables_in(client: &tokio_postgres::Client, schema: &str) -> Vec<String> {
    let rows = client
        .query("SELECT tablename::text FROM pg_tables WHERE schemaname = $1 ORDER BY 1", &[&schema])
        .await
        .expect("list tables");
    rows.iter().map(|r| r.get::<_, String>(0)).collect()
}

/// Ids, keys and values full of SQL are data like any other: stored and
/// read back byte for byte, by every kind of read, in a schema whose name
/// is SQL too, and nothing else in the database changes.
#[tokio::test]
async fn sql_metacharacters_are_stored_literally() {
    let server = server_or_skip!();
    let schema = "odd'schema\"; DROP TABLE pg_class; --";
    let plugin = subject(settings(&server.dsn(), schema), PostgresPluginConfig::default());
    let c = Case::provision(&plugin, "sql-metacharacters").await;
    let nasty: Vec<&[u8]> = vec![
        b"'",
        b"\"",
        b"'; DROP TABLE t; --",
        b"$1",
        b"\\x00",
        b"%_*",
        b"\0",
        b"); DELETE FROM prism_kv_namespaces; --",
        "ünï\u{feff}".as_bytes(),
    ];
    let ids = ["'", "\"; DROP SCHEMA public CASCADE; --", "$2", "plain"];
    for id in ids {
        let mutations: Vec<Mutation> = nasty.iter().map(|k| put(k, [*k, b"=value".as_slice()].concat())).collect();
        c.mutate(id, &mutations, &c.at(1)).await;
    }
    let mut want: Vec<(Vec<u8>, Vec<u8>)> = nasty.iter().map(|k| (k.to_vec(), [*k, b"=value"].concat())).collect();
    want.sort();
    for id in ids {
        assert_eq!(c.entries(id).await, want, "record {id:?}");
        let selector = Selector::Keys(vec![b"'".to_vec(), b"$1".to_vec()]);
        assert_eq!(c.entries_of(id, &selector).await.len(), 2, "record {id:?} by keys");
        let range = Selector::Range(KeyRange { start: b"'".to_vec(), end: Some(b"(".to_vec()) });
        assert_eq!(
            c.entries_of(id, &range).await,
            pairs(&[("'", "'=value"), ("'; DROP TABLE t; --", "'; DROP TABLE t; --=value")])
        );
    }
    let mut scanned: Vec<String> = c.scan(UNLIMITED, c.base).await.into_iter().map(|(id, _)| id).collect();
    scanned.dedup();
    let mut want_ids: Vec<&str> = ids.to_vec();
    want_ids.sort();
    assert_eq!(scanned, want_ids);
    // A token full of SQL still makes a retry a no-op.
    let token = WriteStamp { generation_time: c.base + 5, token: Some("'); DROP TABLE x; --".into()) };
    c.mutate("plain", &[put("t", "first")], &token).await;
    c.mutate("plain", &[put("t", "second")], &token).await;
    assert_eq!(c.entries_of("plain", &Selector::Keys(vec![b"t".to_vec()])).await, pairs(&[("t", "first")]));
    c.mutate("plain", &[Mutation::Delete(b"'; DROP TABLE t; --".to_vec())], &c.at(6)).await;
    assert_eq!(c.entries("plain").await.len(), nasty.len());

    let client = sql(server).await;
    let names = TableNames::of(&c.ns, schema).expect("names");
    let mut want_tables: Vec<String> = names.tables().to_vec();
    want_tables.push("prism_kv_namespaces".into());
    want_tables.sort();
    assert_eq!(tables_in(&client, schema).await, want_tables, "exactly the namespace's tables and the registry");
    let public: i64 = client
        .query_one("SELECT count(*) FROM pg_namespace WHERE nspname = 'public'", &[])
        .await
        .expect("query")
        .get(0);
    assert_eq!(public, 1, "the public schema is still there");
    c.finish().await;
}

/// The first layer: a namespace name that is not `tenant/name` of
/// `[a-z0-9-]` is refused before any SQL runs, so nothing is created.
#[tokio::test]
async fn namespace_names_with_sql_are_refused_before_any_sql() {
    let server = server_or_skip!();
    let schema = "prism-refused-names";
    let plugin = Arc::new(PostgresPlugin::new(PostgresPluginConfig::default()).expect("plugin"));
    let settings = settings(&server.dsn(), schema);
    for name in ["conf/x\"; DROP TABLE t; --", "conf/x'; --", "conf/UPPER", "conf/a b", "conf", "conf/x/y", "conf/\0"] {
        let template = namespace(&Subject::new(plugin.clone()), "refused");
        let ns = with_settings(&Namespace { name: name.into(), ..template }, &settings);
        match plugin.provision(&ns).await {
            Err(PluginError::InvalidArgument { field, .. }) => assert_eq!(field, "namespace", "{name:?}"),
            other => panic!("provision {name:?}: want InvalidArgument, got {other:?}"),
        }
        // Nor is it served: opening it, before any get or mutate, fails.
        let got = plugin.key_value().expect("key_value").open(&ns).err();
        assert!(matches!(got, Some(PluginError::InvalidArgument { .. })), "open {name:?}: {got:?}");
    }
    let client = sql(server).await;
    let schemas: i64 = client
        .query_one("SELECT count(*) FROM pg_namespace WHERE nspname = $1", &[&schema])
        .await
        .expect("query")
        .get(0);
    assert_eq!(schemas, 0, "no SQL ran: not even the schema was created");
}

/// Tables are named from tenant/name and the incarnation, within 63
/// bytes, distinct for names that read alike and for each incarnation;
/// provisioning a newer incarnation drops the older one's tables, and
/// deprovisioning drops its own.
#[tokio::test]
async fn tables_are_named_deterministically_and_go_with_their_namespace() {
    let server = server_or_skip!();
    let schema = "prism-table-names";
    let subject = subject(settings(&server.dsn(), schema), PostgresPluginConfig::default());
    let plugin = &subject.plugin;
    let client = sql(server).await;
    let stamp = now_micros().unsigned_abs();
    let long = Namespace { name: format!("{}/{}", "t".repeat(63), "n".repeat(63)), ..namespace(&subject, "long") };
    let alike = [
        Namespace { name: format!("a-b/c-{stamp:x}"), ..namespace(&subject, "alike") },
        Namespace { name: format!("a/b-c-{stamp:x}"), ..namespace(&subject, "alike") },
    ];
    let mut want: Vec<String> = vec!["prism_kv_namespaces".into()];
    for ns in std::iter::once(&long).chain(&alike) {
        plugin.provision(ns).await.expect("provision");
        let names = TableNames::of(ns, schema).expect("names");
        assert_eq!(names, TableNames::of(ns, schema).expect("names"), "deterministic");
        assert!(names.base.starts_with("kv_"), "{}", names.base);
        for table in names.tables() {
            assert!(table.len() <= 63, "{table} is {} bytes", table.len());
        }
        want.extend(names.tables());
    }
    want.sort();
    // PostgreSQL would have cut a longer name silently: equal names prove
    // none was.
    assert_eq!(tables_in(&client, schema).await, want, "every table, named as computed");

    // A new incarnation of the long name replaces the old one's tables.
    let next = Namespace { create_revision: long.create_revision + 1, ..long.clone() };
    plugin.provision(&next).await.expect("provision the next incarnation");
    let (old, new) = (TableNames::of(&long, schema).expect("names"), TableNames::of(&next, schema).expect("names"));
    let tables = tables_in(&client, schema).await;
    assert!(new.tables().iter().all(|t| tables.contains(t)), "the new incarnation's tables exist");
    assert!(old.tables().iter().all(|t| !tables.contains(t)), "the old incarnation's tables are gone");
    let registered: i64 = client
        .query_one(&format!("SELECT count(*) FROM \"{schema}\".prism_kv_namespaces WHERE name = $1"), &[&long.name])
        .await
        .expect("query")
        .get(0);
    assert_eq!(registered, 1, "only the new incarnation is registered");

    for ns in std::iter::once(&next).chain(&alike) {
        plugin.deprovision(ns).await.expect("deprovision");
        plugin.deprovision(ns).await.expect("deprovision is idempotent");
    }
    assert_eq!(tables_in(&client, schema).await, ["prism_kv_namespaces"], "every namespace table was dropped");
}

/// Values above the chunk threshold are stored as chunks; overwriting and
/// deleting them frees every chunk.
#[tokio::test]
async fn large_values_live_in_chunks() {
    let server = server_or_skip!();
    let schema = "prism-chunks";
    let plugin = subject(settings(&server.dsn(), schema), PostgresPluginConfig::default());
    let c = Case::provision(&plugin, "chunks").await;
    let names = TableNames::of(&c.ns, schema).expect("names");
    let client = sql(server).await;
    let chunks_sql = format!("SELECT count(*) FROM {}", names.qualified(&names.chunks()));
    let chunks = || async { client.query_one(&chunks_sql, &[]).await.expect("count chunks").get::<_, i64>(0) };
    let big = pattern(3 * MIB + 10, 4);
    c.mutate("r", &[put("big", &big), put("small", "x")], &c.at(1)).await;
    assert_eq!(chunks().await, 4, "3 MiB + 10 bytes is four 1 MiB chunks");
    assert_eq!(c.entries("r").await, vec![(b"big".to_vec(), big.clone()), (b"small".to_vec(), b"x".to_vec())]);
    c.mutate("r", &[put("big", pattern(MIB + 1, 5))], &c.at(2)).await;
    assert_eq!(chunks().await, 2, "a shorter value leaves no stale chunk");
    c.mutate("r", &[put("big", "inline now")], &c.at(3)).await;
    assert_eq!(chunks().await, 0);
    c.mutate("r", &[put("big", &big)], &c.at(4)).await;
    c.mutate("r", &[Mutation::DeleteRange(KeyRange::all())], &c.at(5)).await;
    assert_eq!(chunks().await, 0, "a record delete frees the chunks");
    c.finish().await;
}

/// Bytes no compressor can shrink, so that a limit test meets the real
/// size.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[0]
        })
        .collect()
}

/// The longest id and key together that the backend promises are stored
/// and read back; one byte more is refused as invalid, never a failure
/// inside PostgreSQL.
#[tokio::test]
async fn the_longest_ids_and_keys_fit_and_longer_are_invalid() {
    let server = server_or_skip!();
    let plugin = subject(settings(&server.dsn(), "prism-limits"), PostgresPluginConfig::default());
    let c = Case::provision(&plugin, "limits").await;
    let id: String = noise(1024, 6).iter().map(|b| char::from(b'a' + b % 26)).collect();
    let key = noise(MAX_ID_AND_KEY_BYTES - id.len(), 7);
    let value = noise(3 * MIB / 2, 8); // chunked: the chunks' key holds id and key too
    c.mutate(&id, &[put(&key, &value)], &c.at(1)).await;
    c.mutate(&id, &[Mutation::Delete(noise(key.len(), 9))], &c.at(1)).await;
    let token = WriteStamp { generation_time: c.base + 2, token: Some("t".repeat(128)) };
    c.mutate(&id, &[put(&key, "small")], &token).await;
    assert_eq!(c.entries(&id).await, vec![(key.clone(), b"small".to_vec())]);

    let kv = c.kv();
    let longer = [key.clone(), vec![0]].concat();
    for mutation in [put(&longer, "v"), Mutation::Delete(longer.clone())] {
        match kv.mutate(&id, &[mutation], &c.at(3)).await {
            Err(PluginError::InvalidArgument { field, description }) => {
                assert_eq!(field, "key");
                assert!(description.contains(&MAX_ID_AND_KEY_BYTES.to_string()), "{description}");
            }
            other => panic!("want InvalidArgument, got {other:?}"),
        }
    }
    assert_eq!(c.entries(&id).await, vec![(key, b"small".to_vec())], "a refused mutate changed nothing");
    c.finish().await;
}

/// Settings are checked without connecting where that suffices, and no
/// error a client sees quotes the DSN, its password or the server address.
#[tokio::test]
async fn bad_settings_are_refused_without_leaking_the_dsn() {
    // A port nothing listens on: bound, read and released.
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let secret_dsn = format!("postgres://secret-user@127.0.0.1:{port}/secret-db");
    let config = PostgresPluginConfig { connect_timeout: Duration::from_secs(2), ..PostgresPluginConfig::default() };
    let plugin = Arc::new(PostgresPlugin::new(config).expect("plugin"));
    let ns =
        |settings: PostgresConfig| with_settings(&namespace(&Subject::new(plugin.clone()), "bad-settings"), &settings);
    let leaks = |message: &str| ["secret", &port.to_string(), "127.0.0.1", "@"].iter().any(|s| message.contains(s));

    let unreachable = ns(settings(&secret_dsn, ""));
    let error = tokio::time::timeout(Duration::from_secs(30), plugin.provision(&unreachable))
        .await
        .expect("provisioning an unreachable server returns")
        .expect_err("an unreachable server fails provisioning");
    assert!(matches!(error, PluginError::Unavailable { .. }), "{error:?}");
    let message = error.report().message;
    assert!(message.contains("unreachable"), "{message}");
    assert!(!leaks(&message), "the public message leaks the DSN: {message}");

    let cases = [
        (
            PostgresConfig { require_tls: true, ..settings(&format!("{secret_dsn}?sslmode=disable"), "") },
            "dsn",
            "contradicts require_tls",
        ),
        (settings("postgres://secret-user:secret@[::1", ""), "dsn", "not a valid"),
        (settings("host=127.0.0.1 port=secret", ""), "dsn", "not a valid"),
        (PostgresConfig { pool_size: 5000, ..settings(&secret_dsn, "") }, "pool_size", "above"),
        (settings(&secret_dsn, &"s".repeat(64)), "schema", "at most 63 bytes"),
    ];
    for (settings, field, says) in cases {
        match plugin.provision(&ns(settings.clone())).await {
            Err(PluginError::InvalidArgument { field: got, description }) => {
                assert_eq!(got, format!("spec.backend_config.postgres.{field}"), "{description}");
                assert!(description.contains(says), "{field}: {description}");
                assert!(!leaks(&description), "the description leaks the DSN: {description}");
            }
            other => panic!("{field}: want InvalidArgument, got {other:?}"),
        }
    }
    let missing = namespace(&Subject::new(plugin.clone()), "no-settings");
    assert!(matches!(plugin.provision(&missing).await, Err(PluginError::InvalidArgument { .. })));
    // What could never be provisioned is deleted at once, so its deletion
    // cannot hang; what might exist on an unreachable server is not, nor
    // what requires TLS (a gateway with a CA may have created it).
    plugin.deprovision(&missing).await.expect("no settings left nothing to remove");
    let error = plugin.deprovision(&unreachable).await.expect_err("an unreachable server may still hold the tables");
    assert!(error.could_retry(), "{error:?}");
    let tls = ns(PostgresConfig { require_tls: true, ..settings(&secret_dsn, "") });
    let error = plugin.deprovision(&tls).await.expect_err("another gateway may have created the tables");
    assert!(error.could_retry() && error.report().message.contains("tls_ca_file"), "{error:?}");
}

/// Two gateways (two plugins, two pools) writing one record at once,
/// stamped out of order: the advisory lock and the conditional upsert keep
/// the newest write of each item, and every write lands whole.
#[tokio::test]
async fn writers_through_different_gateways_keep_the_last_writer() {
    const WRITERS: i64 = 25;
    let server = server_or_skip!();
    let settings = settings(&server.dsn(), "prism-two-gateways");
    let gateways = [
        subject(settings.clone(), PostgresPluginConfig::default()),
        subject(settings, PostgresPluginConfig::default()),
    ];
    let c = Case::provision(&gateways[0], "two-gateways").await;
    let opened = gateways.each_ref().map(|g| Case::resume(g.plugin.clone(), c.ns.clone(), c.base));
    let mut tasks = Vec::new();
    for i in 0..WRITERS {
        let offset = 1 + (i * 7) % WRITERS; // a permutation of 1..=WRITERS
        let contested = match offset % 6 {
            0 => Mutation::Delete(b"k".to_vec()),
            3 => Mutation::DeleteRange(KeyRange { start: b"j".to_vec(), end: Some(b"l".to_vec()) }),
            _ => put("k", offset.to_string()),
        };
        let mutations = vec![contested, put(format!("own-{offset:02}"), "x")];
        let (gateway, stamp) = (opened[(i % 2) as usize].kv().clone(), c.at(offset));
        tasks.push(tokio::spawn(async move { gateway.mutate("r", &mutations, &stamp).await }));
    }
    for task in tasks {
        task.await.expect("writer task").expect("mutate");
    }
    // WRITERS (25) is a put: the newest write of "k" wins.
    let mut want: Vec<(Vec<u8>, Vec<u8>)> =
        (1..=WRITERS).map(|o| (format!("own-{o:02}").into_bytes(), b"x".to_vec())).collect();
    want.push((b"k".to_vec(), WRITERS.to_string().into_bytes()));
    want.sort();
    for reader in &opened {
        assert_eq!(reader.entries("r").await, want);
    }
    c.finish().await;
}

/// A range delete and an older put of a key in its range, racing through
/// two gateways: whichever commits first, the put loses (without the
/// per-record lock, each could miss the other's uncommitted row).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_racing_older_put_never_outlives_a_range_delete() {
    const ROUNDS: usize = 60;
    let server = server_or_skip!();
    let settings = settings(&server.dsn(), "prism-racing-ranges");
    let gateways = [
        subject(settings.clone(), PostgresPluginConfig::default()),
        subject(settings, PostgresPluginConfig::default()),
    ];
    let c = Case::provision(&gateways[0], "racing-ranges").await;
    let opened = gateways.each_ref().map(|g| Case::resume(g.plugin.clone(), c.ns.clone(), c.base));
    let mut tasks = Vec::new();
    for round in 0..ROUNDS {
        let id = format!("r{round:03}");
        let (deleter, putter) = (opened[round % 2].kv().clone(), opened[(round + 1) % 2].kv().clone());
        let delete_all = vec![Mutation::DeleteRange(KeyRange { start: b"a".to_vec(), end: Some(b"z".to_vec()) })];
        let (newer, older) = (c.at(10), c.at(5));
        let id2 = id.clone();
        tasks.push(tokio::spawn(async move { deleter.mutate(&id, &delete_all, &newer).await }));
        tasks.push(tokio::spawn(async move { putter.mutate(&id2, &[put("k", "older")], &older).await }));
    }
    for task in tasks {
        task.await.expect("writer task").expect("mutate");
    }
    let survivors: Vec<String> = c.scan(UNLIMITED, c.base).await.into_iter().map(|(id, _)| id).collect();
    assert_eq!(survivors, Vec::<String>::new(), "older puts survived a newer range delete");
    c.finish().await;
}

/// Version `v` of every item of records `small` (600 items: a page of
/// them spans three read batches) and `large` (24 items of 9 to 12 KiB,
/// whose values are read after the metadata; the length depends on `v`).
fn versioned(v: usize) -> [(&'static str, Vec<Mutation>); 2] {
    let small = (0..600).map(|i| put(format!("k{i:04}"), format!("v{v:06}"))).collect();
    let large = (0..24)
        .map(|i| {
            let mut value = format!("v{v:06}").into_bytes();
            value.resize(9 * 1024 + (v % 7) * 512, b'.');
            put(format!("k{i:02}"), value)
        })
        .collect();
    [("small", small), ("large", large)]
}

/// The version every item of `items` carries, and how many items; panics
/// if two items carry different versions (two snapshots in one page) or a
/// value's length does not match its version.
fn one_version(what: &str, items: &[prism_plugin_api::kv::Item]) -> (String, usize) {
    let version = |value: &[u8]| String::from_utf8_lossy(&value[..7.min(value.len())]).into_owned();
    let first = items.first().map(|i| version(&i.value)).unwrap_or_default();
    for item in items {
        assert_eq!(version(&item.value), first, "{what}: one page mixes two versions of the record");
        if item.value.len() > 7 {
            let v: usize = first[1..].parse().expect("a version number");
            assert_eq!(item.value.len(), 9 * 1024 + (v % 7) * 512, "{what}: a value of another version");
        }
    }
    (first, items.len())
}

/// A page read in several statements (metadata in three batches, or the
/// values after the metadata) is one snapshot: a writer rewriting every
/// item of a record in one mutate, racing the reads, is seen wholly or not
/// at all — by gets and by scans, through both kinds of statements.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_across_batches_sees_one_snapshot_while_a_writer_races_it() {
    const VERSIONS: usize = 30;
    let server = server_or_skip!();
    for dsn in [server.dsn(), format!("{}?prepared_statements=false", server.dsn())] {
        let plugin = subject(settings(&dsn, "prism-snapshots"), PostgresPluginConfig::default());
        let c = Arc::new(Case::provision(&plugin, "snapshots").await);
        for (id, mutations) in versioned(0) {
            c.mutate(id, &mutations, &c.at(0)).await;
        }
        let writer = {
            let c = c.clone();
            tokio::spawn(async move {
                for v in 1..=VERSIONS {
                    for (id, mutations) in versioned(v) {
                        c.mutate(id, &mutations, &c.at(v as i64)).await;
                    }
                }
            })
        };
        let mut reads = 0;
        while !writer.is_finished() || reads < 3 {
            for (id, count) in [("small", 600), ("large", 24)] {
                let page = c.kv().get(id, &Selector::All, None, UNLIMITED, c.base).await.expect("get");
                assert!(page.next.is_none(), "one page holds the record");
                let (_, items) = one_version(id, &page.items);
                assert_eq!(items, count, "{id}: every item, once");
            }
            let page = c.kv().scan(None, UNLIMITED, c.base).await.expect("scan");
            assert!(page.next.is_none(), "one page holds the namespace");
            for record in &page.records {
                one_version(&format!("scan of {}", record.id), &record.items);
            }
            reads += 1;
        }
        writer.await.expect("writer task");
        for id in ["small", "large"] {
            let page = c.kv().get(id, &Selector::All, None, UNLIMITED, c.base).await.expect("get");
            assert_eq!(one_version(id, &page.items).0, format!("v{VERSIONS:06}"), "{id}: the last version");
        }
        // Small pages of the same records: one statement each.
        let limits = PageLimits::new(u64::MAX, Some(10));
        assert_eq!(c.read("small", &Selector::All, limits, c.base).await.len(), 600);
        let keys = Selector::Keys(vec![b"k0001".to_vec(), b"k0599".to_vec(), b"nope".to_vec()]);
        let got = c.entries_of("small", &keys).await;
        assert_eq!(got, pairs(&[("k0001", format!("v{VERSIONS:06}")), ("k0599", format!("v{VERSIONS:06}"))]));
        Arc::into_inner(c).expect("the writer is done").finish().await;
    }
}

/// Behind PgBouncer in transaction mode, which keeps no prepared
/// statements: with `prepared_statements=false` in the DSN every call
/// works from the first; without it, a call that meets a lost statement
/// switches the namespace to unnamed statements and runs again. Either way
/// every write of two gateways lands once and reads see it, tokens
/// included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_transaction_pooler_statements_go_unnamed() {
    let server = server_or_skip!();
    let Some(bouncer) = support::Bouncer::start(server, 2) else { return };
    for (dsn, schema) in [
        (format!("{}?prepared_statements=false", bouncer.dsn), "prism-bouncer-unnamed"),
        (bouncer.dsn.clone(), "prism-bouncer-detected"),
    ] {
        let settings = PostgresConfig { pool_size: 4, ..settings(&dsn, schema) };
        let gateways = [
            subject(settings.clone(), PostgresPluginConfig::default()),
            subject(settings, PostgresPluginConfig::default()),
        ];
        let c = Case::provision(&gateways[0], "bouncer").await;
        let opened = gateways.each_ref().map(|g| Case::resume(g.plugin.clone(), c.ns.clone(), c.base));
        let mut tasks = Vec::new();
        for w in 0..8 {
            let (kv, base) = (opened[w % 2].kv().clone(), c.base);
            tasks.push(tokio::spawn(async move {
                for n in 0..20i64 {
                    let id = format!("r{w}");
                    let stamp = WriteStamp { generation_time: base + n, token: Some(format!("t{w}-{n}")) };
                    let mutations = [put(format!("k{n:02}"), n.to_string())];
                    kv.mutate(&id, &mutations, &stamp).await?;
                    // The same token again: applied once.
                    kv.mutate(&id, &[put(format!("k{n:02}"), "retried")], &stamp).await?;
                    let page = kv.get(&id, &Selector::All, None, UNLIMITED, base).await?;
                    assert_eq!(page.items.len(), n as usize + 1, "{id}: every write so far, once");
                }
                Ok::<(), PluginError>(())
            }));
        }
        for task in tasks {
            task.await.expect("writer task").expect("every call works behind the pooler");
        }
        for w in 0..8 {
            let want: Vec<(String, String)> = (0..20).map(|n| (format!("k{n:02}"), n.to_string())).collect();
            assert_eq!(c.entries(&format!("r{w}")).await, pairs(&want));
        }
        c.finish().await;
    }
}

/// Through a gateway: the owning shard provisions a postgres namespace,
/// which then serves KeyValue over gRPC; a namespace whose server is
/// unreachable ends up DEGRADED with a reason that names neither the DSN
/// nor the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_serves_postgres_namespaces_and_degrades_unreachable_ones() {
    use prism_proto::control::backend_config::Config;
    use prism_proto::control::{
        Abstraction, Backend, BackendConfig, CreateNamespaceRequest, GetNamespaceRequest, NamespaceSpec,
        NamespaceStatus,
    };
    use prism_proto::kv::{GetItemsRequest, Item, PutItemsRequest};
    let server = server_or_skip!();
    // The control plane allows schemas of [a-z_][a-z0-9_]*.
    let spec = |dsn: &str| NamespaceSpec {
        abstraction: Abstraction::KeyValue as i32,
        backend: Backend::Postgres as i32,
        backend_config: Some(Box::new(BackendConfig {
            config: Some(Config::Postgres(settings(dsn, "prism_gateway"))),
        })),
        ..NamespaceSpec::default()
    };
    let cluster = prism_testkit::Cluster::start().await.expect("start a control plane and two gateways");
    let name = "acme/pg-profiles";
    let gateway = cluster.active_namespace(name, spec(&server.dsn())).await.expect("the namespace becomes ACTIVE");
    let mut kv = gateway.kv(Some(&prism_testkit::admin_token())).await.expect("client");
    let item = Item { key: b"name".to_vec(), value: b"ada".to_vec(), ttl: None };
    let put =
        PutItemsRequest { namespace: name.into(), id: "user-1".into(), items: vec![item], idempotency_token: None };
    kv.put_items(put).await.expect("put through the gateway");
    let get = GetItemsRequest { namespace: name.into(), id: "user-1".into(), ..Default::default() };
    let got = kv.get_items(get).await.expect("get through the gateway").into_inner();
    let items: Vec<(Vec<u8>, Vec<u8>)> = got.items.into_iter().map(|i| (i.key, i.value)).collect();
    assert_eq!(items, pairs(&[("name", "ada")]));

    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let secret_dsn = format!("postgres://secret-user@127.0.0.1:{port}/prism");
    let mut cp = cluster.control_plane.client().await.expect("control plane client");
    let unreachable = "acme/pg-unreachable";
    let request = CreateNamespaceRequest { name: unreachable.into(), spec: Some(spec(&secret_dsn)) };
    cp.create_namespace(request).await.expect("create");
    let reason = prism_testkit::eventually(Duration::from_secs(30), || {
        let mut cp = cp.clone();
        async move {
            let ns = cp.get_namespace(GetNamespaceRequest { name: unreachable.into() }).await?.into_inner();
            anyhow::ensure!(ns.status == NamespaceStatus::Degraded as i32, "status {}", ns.status);
            Ok(ns.status_reason)
        }
    })
    .await
    .expect("the namespace becomes DEGRADED");
    assert!(reason.contains("unreachable"), "{reason}");
    assert!(!reason.contains("secret") && !reason.contains(&port.to_string()), "the reason leaks the DSN: {reason}");
}

/// While PostgreSQL is down every call fails with Unavailable — within
/// bounded time, no hang — and once it is back the plugin serves again by
/// itself, on new connections.
#[tokio::test]
async fn an_outage_fails_requests_and_heals_by_itself() {
    let mut server = match PostgresServer::start_or_skip().expect("start a server of this test's own") {
        Some(server) => server,
        None => {
            println!("{}", skip_reason());
            return;
        }
    };
    let config = PostgresPluginConfig {
        connect_timeout: Duration::from_secs(1),
        statement_timeout: Duration::from_secs(2),
        pool_wait_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(5),
        ..PostgresPluginConfig::default()
    };
    let plugin = subject(settings(&server.dsn(), ""), config);
    let c = Case::provision(&plugin, "outage").await;
    c.put("r", &[("k", "before")], 1).await;
    assert_eq!(c.entries("r").await, pairs(&[("k", "before")]));

    server.stop().expect("stop the server");
    let kv = c.kv();
    // Bounded: the plugin's own timeouts end every call well before this.
    let bound = Duration::from_secs(30);
    let got = tokio::time::timeout(bound, kv.get("r", &Selector::All, None, UNLIMITED, c.base))
        .await
        .expect("a get returns while the server is down");
    assert!(matches!(got, Err(PluginError::Unavailable { .. })), "get: {got:?}");
    let got = tokio::time::timeout(bound, kv.mutate("r", &[put("k", "during")], &c.at(2)))
        .await
        .expect("a mutate returns while the server is down");
    let error = got.expect_err("a mutate fails while the server is down");
    assert!(error.could_retry(), "{error:?}");
    assert!(!error.report().message.contains(&server.port().to_string()), "{}", error.report().message);
    let got = tokio::time::timeout(bound, kv.storage_bytes()).await.expect("storage_bytes returns");
    assert!(matches!(got, Err(PluginError::Unavailable { .. })), "storage_bytes: {got:?}");

    server.restart().expect("restart the server");
    let base = c.base;
    let entries = prism_testkit::eventually(Duration::from_secs(30), || async move {
        let page = kv.get("r", &Selector::All, None, UNLIMITED, base).await?;
        Ok(page.items.into_iter().map(|i| (i.key, i.value)).collect::<Vec<_>>())
    })
    .await
    .expect("the plugin serves again once the server is back");
    assert_eq!(entries, pairs(&[("k", "before")]), "no write landed during the outage");
    c.put("r", &[("k", "after")], 3).await;
    assert_eq!(c.entries("r").await, pairs(&[("k", "after")]));
    c.finish().await;
}

/// Restarting the server under a write load loses and duplicates nothing:
/// writers of KeyValue items (each with its idempotency token) and of
/// TimeSeries events retry what fails, with the same token or event, until
/// it is acknowledged; afterwards every acknowledged write is there,
/// exactly once, with its value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_under_write_load_loses_and_duplicates_nothing() {
    const WRITERS: usize = 4;
    const WRITES: usize = 300;
    let mut server = match PostgresServer::start_or_skip().expect("start a server of this test's own") {
        Some(server) => server,
        None => {
            println!("{}", skip_reason());
            return;
        }
    };
    let config = PostgresPluginConfig {
        connect_timeout: Duration::from_secs(1),
        statement_timeout: Duration::from_secs(5),
        pool_wait_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(10),
        ..PostgresPluginConfig::default()
    };
    let plugin = subject(settings(&server.dsn(), ""), config);
    let kv_case = Case::provision(&plugin, "restart-kv").await;
    let ts_case = Case::provision_ts(&plugin, "restart-ts").await;
    let acknowledged = Arc::new(AtomicUsize::new(0));
    let retried = Arc::new(AtomicUsize::new(0));

    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (kv, ts) = (kv_case.kv().clone(), ts_case.ts().clone());
        let (base, ts_base) = (kv_case.base, ts_case.base);
        let (acknowledged, retried) = (acknowledged.clone(), retried.clone());
        writers.push(tokio::spawn(async move {
            let (kv, ts) = (&kv, &ts);
            for i in 0..WRITES {
                let record = format!("r{w}");
                let mutation = [put(format!("k{i:04}"), format!("v{w}-{i}"))];
                let stamp = WriteStamp { generation_time: base + i as i64, token: Some(format!("t{w}-{i}")) };
                let event = restart_event(w, i, ts_base);
                let (record, mutation, stamp, event) = (&record, &mutation, &stamp, &event);
                let retried = &retried;
                // Each write is retried as it was until acknowledged: a
                // write that committed but whose acknowledgement was lost
                // must not apply twice.
                prism_testkit::eventually(Duration::from_secs(60), || async move {
                    let result = kv.mutate(record, mutation, stamp).await;
                    if result.is_err() {
                        retried.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(result?)
                })
                .await
                .unwrap_or_else(|e| panic!("writer {w}: put {i} never acknowledged: {e:#}"));
                prism_testkit::eventually(Duration::from_secs(60), || async move {
                    let result = ts.write(std::slice::from_ref(event)).await;
                    if result.is_err() {
                        retried.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(result?)
                })
                .await
                .unwrap_or_else(|e| panic!("writer {w}: event {i} never acknowledged: {e:#}"));
                acknowledged.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }

    // Restart once the load is well under way, while the writers run.
    let started = acknowledged.clone();
    prism_testkit::eventually(Duration::from_secs(60), || {
        let started = started.clone();
        async move {
            let done = started.load(Ordering::Relaxed);
            anyhow::ensure!(done >= WRITERS * WRITES / 4, "{done} writes acknowledged so far");
            Ok(())
        }
    })
    .await
    .expect("the writers make progress");
    let server = tokio::task::spawn_blocking(move || {
        server.restart().expect("restart the server");
        server
    })
    .await
    .expect("restart task");
    let during = acknowledged.load(Ordering::Relaxed);
    for writer in writers {
        writer.await.expect("writer task");
    }
    assert_eq!(acknowledged.load(Ordering::Relaxed), WRITERS * WRITES);
    assert!(during < WRITERS * WRITES, "the restart came after every write: it tested nothing");
    println!("restart after {during} writes; {} attempts failed and were retried", retried.load(Ordering::Relaxed));

    let (kv, ts) = (kv_case.kv(), ts_case.ts());
    let roomy = PageLimits::new(u64::MAX, None);
    for w in 0..WRITERS {
        let page = kv.get(&format!("r{w}"), &Selector::All, None, roomy, kv_case.base).await.expect("get");
        let got: Vec<(Vec<u8>, Vec<u8>)> = page.items.into_iter().map(|i| (i.key, i.value)).collect();
        let want: Vec<(Vec<u8>, Vec<u8>)> =
            (0..WRITES).map(|i| (format!("k{i:04}").into_bytes(), format!("v{w}-{i}").into_bytes())).collect();
        assert!(got == want, "record r{w}: {} items, want each of {} puts once, with its value", got.len(), want.len());

        let base = ts_case.base;
        let series = format!("s{w}");
        let query = Query::series(&series, (base - DAY, base + DAY), roomy);
        let page = ts.query(&query, base).await.expect("read");
        assert_eq!(page.next, None);
        let mut want: Vec<_> = (0..WRITES).map(|i| restart_event(w, i, base)).collect();
        want.reverse(); // newest first
        assert_eq!(page.events.len(), WRITES, "series {series}: each acknowledged event once");
        assert!(page.events == want, "series {series}: the events differ from those acknowledged");
    }
    kv_case.finish().await;
    ts_case.finish().await;
    drop(server);
}

const DAY: i64 = 86_400_000_000;

/// The `i`th event writer `w` writes in the restart test: one a
/// millisecond, the newest last.
fn restart_event(w: usize, i: usize, base: i64) -> Event {
    Event {
        time_series_id: format!("s{w}"),
        event_time: base - 60_000_000 + i as i64 * 1000,
        event_id: format!("e{i:04}"),
        items: vec![(b"v".to_vec(), format!("{w}-{i}").into_bytes())],
        tags: [("writer".to_owned(), w.to_string())].into(),
    }
}

/// A plugin trusting the CAs in `ca_file`, with a short connect timeout.
fn tls_plugin(ca_file: Option<std::path::PathBuf>) -> Arc<PostgresPlugin> {
    let config = PostgresPluginConfig {
        connect_timeout: Duration::from_secs(5),
        tls_ca_file: ca_file,
        ..PostgresPluginConfig::default()
    };
    Arc::new(PostgresPlugin::new(config).expect("plugin"))
}

/// Whether `message` quotes anything of `dsn`'s connection details.
fn leaks_dsn(message: &str, port: u16) -> bool {
    ["secret", &port.to_string(), "127.0.0.1", "localhost", "@"].iter().any(|s| message.contains(s))
}

/// A namespace that requires TLS — by `require_tls` or by its DSN's
/// `sslmode` — is served over TLS verified against the gateway's CA and
/// the host name (the server says its connections are TLS), and a server
/// without TLS is refused rather than used in plaintext.
#[tokio::test]
async fn a_namespace_that_requires_tls_is_served_over_verified_tls() {
    let Some(server) = support::tls_server_or_skip() else {
        println!("{}", skip_reason());
        return;
    };
    let ca = server.ca_pem_path().expect("a TLS server has a CA");
    // The application name marks the plugin's connections for pg_stat_ssl.
    let app = "prism-tls-test";
    let dsns = [
        (format!("{}?application_name={app}", server.dsn()), true),
        (format!("{}?application_name={app}&sslmode=verify-full", server.dsn()), false),
        (
            format!("postgres://postgres@localhost:{}/postgres?application_name={app}&sslmode=require", server.port()),
            false,
        ),
    ];
    for (i, (dsn, require_tls)) in dsns.into_iter().enumerate() {
        let settings = PostgresConfig { require_tls, ..settings(&dsn, "prism_tls") };
        let plugin = subject(settings, PostgresPluginConfig { tls_ca_file: Some(ca.clone()), ..Default::default() });
        let c = Case::provision(&plugin, &format!("tls-{i}")).await;
        c.mutate("r", &[put("k", "over tls")], &c.at(1)).await;
        assert_eq!(c.entries("r").await, pairs(&[("k", "over tls")]), "DSN {i}");
        // The pool keeps its connections open: the server lists them.
        let client = sql(server).await;
        let rows = client
            .query(
                "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.application_name = $1",
                &[&app],
            )
            .await
            .expect("query pg_stat_ssl");
        let ssl: Vec<bool> = rows.iter().map(|r| r.get(0)).collect();
        assert!(!ssl.is_empty() && ssl.iter().all(|s| *s), "DSN {i}: the plugin's connections are TLS: {ssl:?}");
        c.finish().await;
    }

    // A server that offers no TLS is refused, whatever the CA.
    let plain = support::server_or_skip().expect("PostgreSQL is there");
    let plugin = tls_plugin(Some(ca));
    let ns = with_settings(
        &namespace(&Subject::new(plugin.clone()), "tls-plaintext"),
        &PostgresConfig { require_tls: true, ..settings(&plain.dsn(), "prism_tls") },
    );
    let error = plugin.provision(&ns).await.expect_err("a server without TLS is refused");
    assert!(matches!(error, PluginError::Unavailable { .. }), "{error:?}");
    let message = error.report().message;
    assert!(message.contains("does not offer TLS"), "{message}");
    assert!(!leaks_dsn(&message, plain.port()), "the message leaks the DSN: {message}");
}

/// A namespace that requires TLS on a gateway without `tls_ca_file` is not
/// served — never in plaintext — and the reason names the setting.
#[tokio::test]
async fn requiring_tls_without_a_ca_names_tls_ca_file() {
    let Some(server) = support::tls_server_or_skip() else {
        println!("{}", skip_reason());
        return;
    };
    let plugin = tls_plugin(None);
    let secret_dsn = format!("postgres://postgres@127.0.0.1:{}/postgres?application_name=secret", server.port());
    for (dsn, require_tls) in [(secret_dsn.clone(), true), (format!("{secret_dsn}&sslmode=require"), false)] {
        let ns = with_settings(
            &namespace(&Subject::new(plugin.clone()), "tls-no-ca"),
            &PostgresConfig { require_tls, ..settings(&dsn, "prism_tls_no_ca") },
        );
        let error = plugin.provision(&ns).await.expect_err("no CA, no TLS namespace");
        assert!(matches!(error, PluginError::Unavailable { .. }), "{error:?}");
        let message = error.report().message;
        assert_eq!(message, "no CA configured for postgres TLS (tls_ca_file)");
        assert!(!leaks_dsn(&message, server.port()), "the message leaks the DSN: {message}");
    }
    // Nothing was created: the plugin never connected.
    let client = sql(server).await;
    let schemas: i64 = client
        .query_one("SELECT count(*) FROM pg_namespace WHERE nspname = 'prism_tls_no_ca'", &[])
        .await
        .expect("query")
        .get(0);
    assert_eq!(schemas, 0);
}

/// A server whose certificate does not chain to the gateway's CA is
/// refused as untrusted, and so is one whose certificate does not name
/// the host the DSN gives; neither reason names the server.
#[tokio::test]
async fn an_untrusted_server_certificate_is_refused() {
    let Some(server) = support::tls_server_or_skip() else {
        println!("{}", skip_reason());
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let other_ca = dir.path().join("other-ca.pem");
    std::fs::write(&other_ca, prism_testkit::postgres::generate_ca_pem().expect("a CA")).expect("write the CA");
    let secret_dsn = format!("postgres://postgres@127.0.0.1:{}/postgres?application_name=secret", server.port());
    let ca = server.ca_pem_path().expect("a TLS server has a CA");
    // The same server (hostaddr) under a host name its certificate does
    // not carry: TLS checks the name, not the address connected to.
    let wrong_host = format!(
        "postgres://postgres@secret-host.invalid:{}/postgres?hostaddr=127.0.0.1&sslmode=require",
        server.port()
    );
    for (ca_file, dsn, what) in [(other_ca, secret_dsn, "another CA"), (ca, wrong_host, "another host name")] {
        let plugin = tls_plugin(Some(ca_file));
        let ns = with_settings(
            &namespace(&Subject::new(plugin.clone()), "tls-wrong-ca"),
            &PostgresConfig { require_tls: true, ..settings(&dsn, "prism_tls_wrong_ca") },
        );
        let error = plugin.provision(&ns).await.expect_err(what);
        assert!(matches!(error, PluginError::Unavailable { .. }), "{what}: {error:?}");
        let message = error.report().message;
        assert!(message.contains("TLS verification failed") && message.contains("not trusted"), "{what}: {message}");
        assert!(!leaks_dsn(&message, server.port()), "{what}: the message leaks the DSN: {message}");
    }
}

/// A feed listens from when it started: it gets, in commit order and as
/// a read returns them, the events this plugin and another one (another
/// gateway) write after that, and rows inserted by hand; a write of
/// nothing new is not delivered;
/// and a listener whose connection is killed ends the feed with
/// Unavailable rather than going quiet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_sees_every_gateways_writes_and_ends_when_its_listener_dies() {
    use prism_plugin_api::conformance::support::event;
    let server = server_or_skip!();
    let plugin = subject(settings(&server.dsn(), "public"), PostgresPluginConfig::default());
    let c = Case::provision_ts(&plugin, "follow").await;
    let t = c.base - 60_000_000;
    c.write(&[event("s", t, "before", &[("k", "v")], &[])]).await;
    assert!(c.ts().follows());
    let mut feed = c.ts().follow().await.expect("follow");

    let here = event("s", t + 1, "here", &[("b", "2"), ("a", "1")], &[("site", "a")]);
    c.write(std::slice::from_ref(&here)).await;
    let other_gateway = subject(settings(&server.dsn(), "public"), PostgresPluginConfig::default());
    let other = other_gateway.plugin.time_series().expect("time series").open(&c.ns).expect("open");
    let there = event("s", t + 2, "there", &[("k", "2")], &[]);
    other.write(std::slice::from_ref(&there)).await.expect("write through another plugin");
    // Nothing new: not delivered.
    c.write(std::slice::from_ref(&here)).await;
    let got = prism_plugin_api::conformance::support::from_feed(&mut feed, 2).await;
    let read_here = event("s", t + 1, "here", &[("a", "1"), ("b", "2")], &[("site", "a")]);
    assert_eq!(got, vec![read_here, there]);
    // A new item of a stored event: the event as a read has it.
    c.write(&[event("s", t + 1, "here", &[("c", "3")], &[("site", "ignored")])]).await;
    let merged = event("s", t + 1, "here", &[("a", "1"), ("b", "2"), ("c", "3")], &[("site", "a")]);
    assert_eq!(prism_plugin_api::conformance::support::from_feed(&mut feed, 1).await, vec![merged]);

    // Rows another writer inserts by hand, head and items in one
    // transaction: the tables' triggers notify, once per event.
    let admin = sql(server).await;
    let names = TableNames::of(&c.ns, "public").expect("names");
    admin
        .batch_execute(&format!(
            "BEGIN;
             INSERT INTO {events} VALUES ('s', {t3}, 'by-hand', '{{\"site\": \"b\"}}'), ('s', {t4}, 'bare', '{{}}');
             INSERT INTO {items} VALUES ('s', {t3}, 'by-hand', 'k', 'v'), ('s', {t3}, 'by-hand', 'l', 'w');
             COMMIT;",
            events = names.qualified(&names.ts_events()),
            items = names.qualified(&names.ts_items()),
            t3 = t + 3,
            t4 = t + 4,
        ))
        .await
        .expect("insert by hand");
    let by_hand = event("s", t + 3, "by-hand", &[("k", "v"), ("l", "w")], &[("site", "b")]);
    assert_eq!(
        prism_plugin_api::conformance::support::from_feed(&mut feed, 2).await,
        vec![by_hand, event("s", t + 4, "bare", &[], &[])]
    );

    // Kill the listening connection: the feed says so.
    let killed = admin
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'LISTEN %' AND pid <> pg_backend_pid()",
            &[],
        )
        .await
        .expect("terminate the listener");
    assert_eq!(killed.len(), 1, "one listener");
    let end = tokio::time::timeout(Duration::from_secs(30), futures_util::StreamExt::next(&mut feed))
        .await
        .expect("the feed ends within 30 s");
    assert!(matches!(end, Some(Err(PluginError::Unavailable { .. }))), "{end:?}");
    drop(feed);
    c.finish().await;
    // Deprovisioning drops the triggers' function with the tables.
    let left: i64 = admin
        .query_one("SELECT count(*) FROM pg_proc WHERE proname = $1", &[&names.tail_function()])
        .await
        .expect("pg_proc")
        .get(0);
    assert_eq!(left, 0, "the tail trigger function is dropped");
}
