//! Deadline-aware pages end to end (SPEC §3, "a short page early"): a read
//! whose deadline is too short for the whole page returns the items it has
//! and a continuation token instead of failing, and following the tokens
//! yields every item exactly once — GetItems, ScanItems, ReadEventRecords
//! and SearchEventRecords through a real gateway, on every backend that
//! runs here (Pulsar's is in `pulsar.rs`, behind the gateway's feature).
//!
//! Reads are made slow deterministically, not by sleeping: the gateways
//! charge [`CHARGE`] for every item a read puts on its page
//! (`limits.read_charge_per_item`, a test-only setting). A caller's
//! deadline of [`DEADLINE`] leaves a soft instant 0.5 s earlier, so a page
//! ends after at most four items (three when the machine is so loaded
//! that half a second really passed); without a caller deadline, the
//! gateway's own 30 s bound ends a page after ten.

use std::time::{Duration, SystemTime};

use prism_proto::control::backend_config::Config;
use prism_proto::control::{Abstraction, Backend, BackendConfig, KafkaConfig, NamespaceSpec, PostgresConfig};
use prism_proto::kv;
use prism_proto::timeseries as ts;
use prism_testkit::{Cluster, GatewayHandle, admin_token};

/// What every item a read puts on its page is charged.
const CHARGE: Duration = Duration::from_secs(3);
/// The caller's deadline: soft 9.5 s, so four items fit.
const DEADLINE: Duration = Duration::from_secs(10);
/// The most items a page under [`DEADLINE`] holds.
const MOST: usize = 4;
/// Items (events) each test writes.
const ITEMS: usize = 25;

async fn cluster() -> anyhow::Result<Cluster> {
    Cluster::start_with(|c| c.limits.read_charge_per_item = CHARGE).await
}

fn spec(abstraction: Abstraction, backend: Backend, config: Option<Config>) -> NamespaceSpec {
    NamespaceSpec {
        abstraction: abstraction as i32,
        backend: backend as i32,
        backend_config: config.map(|c| Box::new(BackendConfig { config: Some(c) })),
        ..Default::default()
    }
}

/// `message` with the caller's deadline ([`DEADLINE`]).
fn pressed<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(DEADLINE);
    request
}

/// Checks the page sizes of a read under [`DEADLINE`]: every page but the
/// last ended early (1 to [`MOST`] items) with a token, and there were
/// several.
fn check_pages(what: &str, sizes: &[usize]) {
    assert!(sizes.len() >= ITEMS.div_ceil(MOST), "{what}: {ITEMS} items in pages of {sizes:?}");
    let (_, early) = sizes.split_last().unwrap_or((&0, &[]));
    assert!(early.iter().all(|n| (1..=MOST).contains(n)), "{what}: pages of {sizes:?}, want 1..={MOST} each");
}

/// Writes [`ITEMS`] items to record `r` (and one to `s`), then reads them
/// with GetItems and ScanItems under the deadline, following the tokens.
async fn key_value(gw: &GatewayHandle, ns: &str) -> anyhow::Result<()> {
    let mut c = gw.kv(Some(&admin_token())).await?;
    let items: Vec<kv::Item> = (0..ITEMS)
        .map(|i| kv::Item { key: format!("k{i:02}").into_bytes(), value: vec![b'v'; 10], ttl: None })
        .collect();
    c.put_items(kv::PutItemsRequest {
        namespace: ns.into(),
        id: "r".into(),
        items: items.clone(),
        ..Default::default()
    })
    .await?;
    c.put_items(kv::PutItemsRequest {
        namespace: ns.into(),
        id: "s".into(),
        items: vec![kv::Item { key: b"only".to_vec(), value: b"1".to_vec(), ttl: None }],
        ..Default::default()
    })
    .await?;

    let (mut got, mut sizes, mut token) = (Vec::new(), Vec::new(), String::new());
    loop {
        let get = kv::GetItemsRequest { namespace: ns.into(), id: "r".into(), page_token: token, ..Default::default() };
        let page = c.get_items(pressed(get)).await?.into_inner();
        sizes.push(page.items.len());
        got.extend(page.items.into_iter().map(|i| i.key));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    check_pages("GetItems", &sizes);
    assert_eq!(got, items.iter().map(|i| i.key.clone()).collect::<Vec<_>>(), "GetItems: every item once, in order");

    // Without a deadline of its own the caller gets the gateway's 30 s:
    // longer pages.
    let get = kv::GetItemsRequest { namespace: ns.into(), id: "r".into(), ..Default::default() };
    let unpressed = c.get_items(get).await?.into_inner();
    assert!(unpressed.items.len() > MOST, "{} items without a caller deadline", unpressed.items.len());

    let (mut got, mut sizes, mut token) = (Vec::new(), Vec::new(), String::new());
    loop {
        let scan = kv::ScanItemsRequest { namespace: ns.into(), page_token: token, ..Default::default() };
        let page = c.scan_items(pressed(scan)).await?.into_inner();
        sizes.push(page.records.iter().map(|r| r.items.len()).sum());
        for record in page.records {
            got.extend(record.items.into_iter().map(|i| (record.id.clone(), i.key)));
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    check_pages("ScanItems", &sizes);
    let mut want: Vec<(String, Vec<u8>)> = items.iter().map(|i| ("r".to_owned(), i.key.clone())).collect();
    want.push(("s".to_owned(), b"only".to_vec()));
    assert_eq!(got, want, "ScanItems: every item once, in order");
    Ok(())
}

fn now_secs() -> i64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs() as i64
}

/// Writes [`ITEMS`] events of series `s` (and one of `t`), then reads them
/// with ReadEventRecords and SearchEventRecords under the deadline,
/// following the tokens.
async fn time_series(gw: &GatewayHandle, ns: &str) -> anyhow::Result<()> {
    let mut c = prism_client::time_series(&gw.endpoint(), Some(&admin_token())).await?;
    let now = now_secs();
    let at = |ago: i64| Some(prost_types::Timestamp { seconds: now - ago, nanos: 0 });
    let event = |series: &str, i: usize| ts::Event {
        schema_version: 0,
        time_series_id: series.into(),
        event_time: at(i as i64),
        event_id: format!("e{i:02}"),
        items: vec![ts::EventItem { key: b"v".to_vec(), value: vec![b'x'; 10] }],
        tags: Default::default(),
    };
    let mut events: Vec<ts::Event> = (0..ITEMS).map(|i| event("s", i)).collect();
    events.push(event("t", ITEMS));
    c.write_event_records_sync(ts::WriteEventRecordsRequest { namespace: ns.into(), events: events.clone() }).await?;
    // Newest first: `e00` of `s` is the newest event.
    let series: Vec<String> = (0..ITEMS).map(|i| format!("s/e{i:02}")).collect();
    let (start, end) = (at(3600), at(-60));

    let (mut got, mut sizes, mut token) = (Vec::new(), Vec::new(), String::new());
    loop {
        let read = ts::ReadEventRecordsRequest {
            namespace: ns.into(),
            time_series_id: "s".into(),
            start,
            end,
            page_token: token,
            ..Default::default()
        };
        let page = c.read_event_records(pressed(read)).await?.into_inner();
        sizes.push(page.events.len());
        got.extend(page.events.into_iter().map(|e| format!("{}/{}", e.time_series_id, e.event_id)));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    check_pages("ReadEventRecords", &sizes);
    assert_eq!(got, series, "ReadEventRecords: every event once, newest first");

    let (mut got, mut sizes, mut token) = (Vec::new(), Vec::new(), String::new());
    loop {
        let search =
            ts::SearchEventRecordsRequest { namespace: ns.into(), start, end, page_token: token, ..Default::default() };
        let page = c.search_event_records(pressed(search)).await?.into_inner();
        sizes.push(page.events.len());
        got.extend(page.events.into_iter().map(|e| format!("{}/{}", e.time_series_id, e.event_id)));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    check_pages("SearchEventRecords", &sizes);
    let mut want = series;
    want.push(format!("t/e{ITEMS:02}"));
    assert_eq!(got, want, "SearchEventRecords: every event once, newest first");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_pages_end_at_the_callers_deadline() -> anyhow::Result<()> {
    let cluster = cluster().await?;
    let gw = cluster.active_namespace("acme/kv", spec(Abstraction::KeyValue, Backend::Embedded, None)).await?;
    key_value(gw, "acme/kv").await?;
    let gw = cluster.active_namespace("acme/ts", spec(Abstraction::TimeSeries, Backend::Embedded, None)).await?;
    time_series(gw, "acme/ts").await?;
    // Through the other gateway, which forwards the call with what is
    // left of its deadline: the owner ends the page before it.
    let other = cluster.gateways.iter().find(|g| g.addr != gw.addr).ok_or_else(|| anyhow::anyhow!("one gateway"))?;
    let mut c = prism_client::time_series(&other.endpoint(), Some(&admin_token())).await?;
    let read = ts::ReadEventRecordsRequest {
        namespace: "acme/ts".into(),
        time_series_id: "s".into(),
        start: Some(prost_types::Timestamp { seconds: now_secs() - 3600, nanos: 0 }),
        end: Some(prost_types::Timestamp { seconds: now_secs() + 60, nanos: 0 }),
        ..Default::default()
    };
    let page = c.read_event_records(pressed(read)).await?.into_inner();
    assert!((1..=MOST).contains(&page.events.len()), "{} events on a forwarded page", page.events.len());
    assert!(!page.next_page_token.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_pages_end_at_the_callers_deadline() -> anyhow::Result<()> {
    let Some(server) = prism_testkit::postgres::PostgresServer::start_or_skip()? else {
        println!("{}", prism_testkit::postgres::skip_reason());
        return Ok(());
    };
    let config = || Some(Config::Postgres(PostgresConfig { dsn: server.dsn(), ..Default::default() }));
    let cluster = cluster().await?;
    let gw = cluster.active_namespace("acme/pg-kv", spec(Abstraction::KeyValue, Backend::Postgres, config())).await?;
    key_value(gw, "acme/pg-kv").await?;
    let gw = cluster.active_namespace("acme/pg-ts", spec(Abstraction::TimeSeries, Backend::Postgres, config())).await?;
    time_series(gw, "acme/pg-ts").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_pages_end_at_the_callers_deadline() -> anyhow::Result<()> {
    let Some(broker) = prism_testkit::kafka::KafkaBroker::start_or_skip()? else {
        println!("{}", prism_testkit::kafka::skip_reason());
        return Ok(());
    };
    let config = Config::Kafka(KafkaConfig { bootstrap_servers: vec![broker.bootstrap()], ..Default::default() });
    let cluster = cluster().await?;
    let gw =
        cluster.active_namespace("acme/events", spec(Abstraction::TimeSeries, Backend::Kafka, Some(config))).await?;
    time_series(gw, "acme/events").await
}
