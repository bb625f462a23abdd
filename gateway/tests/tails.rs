//! Tails see every acknowledged write of their namespace, whoever wrote
//! it: through real servers in process (a control plane, two gateway
//! replicas of one shard, each with its own data directory) and real
//! backends (tansu, PostgreSQL).

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use anyhow::{Context, ensure};
use prism_control_plane::ControlPlaneConfig;
use prism_proto::control::backend_config::Config;
use prism_proto::control::{
    Abstraction, Backend, BackendConfig, DeleteNamespaceRequest, GetNamespaceRequest, KafkaConfig, NamespaceSpec,
    NamespaceStatus, Placement, PostgresConfig,
};
use prism_proto::timeseries::{self as ts, tag_filter};
use prism_testkit::{Cluster, ControlPlaneHandle, GatewayHandle, TEST_SECRET, admin_token, eventually};
use tokio_stream::StreamExt;
use tonic::Code;

const SHARD: &str = "shard-0";
const WAIT: Duration = Duration::from_secs(30);

type Client = ts::time_series_service_client::TimeSeriesServiceClient<tonic::transport::Channel>;
type Tail = tonic::Streaming<ts::TailEventRecordsResponse>;

fn spec(backend: Backend, config: Option<Config>) -> NamespaceSpec {
    NamespaceSpec {
        abstraction: Abstraction::TimeSeries as i32,
        backend: backend as i32,
        backend_config: config.map(|config| Box::new(BackendConfig { config: Some(config) })),
        placement: Some(Box::new(Placement { pinned_shard: SHARD.into(), ..Default::default() })),
        ..Default::default()
    }
}

fn now_secs() -> i64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs() as i64
}

fn event(series: &str, id: &str, site: &str) -> ts::Event {
    ts::Event {
        time_series_id: series.into(),
        event_time: Some(prost_types::Timestamp { seconds: now_secs(), nanos: 123_456_000 }),
        event_id: id.into(),
        items: vec![ts::EventItem { key: b"v".to_vec(), value: id.as_bytes().to_vec() }],
        tags: HashMap::from([("site".to_owned(), site.to_owned())]),
        schema_version: 0,
    }
}

fn authed<T>(message: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    if let Ok(v) = format!("Bearer {}", admin_token()).parse() {
        req.metadata_mut().insert("authorization", v);
    }
    req
}

async fn client(gw: &GatewayHandle) -> anyhow::Result<Client> {
    let channel = prism_client::endpoint(&gw.endpoint())?.connect().await?;
    Ok(Client::new(channel))
}

async fn write(c: &mut Client, ns: &str, events: Vec<ts::Event>) -> anyhow::Result<()> {
    c.write_event_records_sync(authed(ts::WriteEventRecordsRequest { namespace: ns.into(), events })).await?;
    Ok(())
}

/// A tail of `series` whose events are tagged `site=a`.
async fn tail(c: &mut Client, ns: &str, series: &str) -> anyhow::Result<Tail> {
    let filter = ts::TagFilter {
        filter: Some(tag_filter::Filter::Equals(ts::TagEquals { key: "site".into(), value: "a".into() })),
    };
    let req = ts::TailEventRecordsRequest { namespace: ns.into(), time_series_id: series.into(), filter: Some(filter) };
    Ok(c.tail_event_records(authed(req)).await?.into_inner())
}

/// The next `n` events of `tail`.
async fn next_events(tail: &mut Tail, n: usize) -> anyhow::Result<Vec<ts::Event>> {
    let mut got = Vec::new();
    while got.len() < n {
        let message = tokio::time::timeout(WAIT, tail.next()).await.context("no event within 30 s")?;
        got.extend(message.context("the tail ended")??.events);
    }
    Ok(got)
}

fn ids(events: &[ts::Event]) -> Vec<&str> {
    events.iter().map(|e| e.event_id.as_str()).collect()
}

struct Replicas {
    cp: ControlPlaneHandle,
    gateways: [GatewayHandle; 2],
}

/// Two replicas of one shard serving `name` (pinned to it), ACTIVE and
/// seen by both.
async fn replicas(name: &str, spec: NamespaceSpec) -> anyhow::Result<Replicas> {
    let mut config = ControlPlaneConfig::default();
    config.auth.hs256_secret = Some(TEST_SECRET.into());
    let cp = ControlPlaneHandle::start_with(config).await?;
    let gateways = GatewayHandle::start_replicas(&cp, SHARD).await?;
    cp.create_active(name, spec, &[&gateways[0], &gateways[1]]).await?;
    Ok(Replicas { cp, gateways })
}

/// A tail opened on replica A gets, exactly once and in order, the
/// events of its series and filter written through replica B, then one
/// written through A itself (which proves nothing came twice in between).
async fn a_tail_sees_the_other_replica(r: &Replicas, ns: &str) -> anyhow::Result<Tail> {
    let (mut a, mut b) = (client(&r.gateways[0]).await?, client(&r.gateways[1]).await?);
    let mut tail = tail(&mut a, ns, "wanted").await?;
    let through_b = vec![
        event("wanted", "b1", "a"),
        event("other", "x1", "a"),
        event("wanted", "x2", "b"),
        event("wanted", "b2", "a"),
    ];
    write(&mut b, ns, through_b.clone()).await?;
    let got = next_events(&mut tail, 2).await?;
    ensure!(ids(&got) == ["b1", "b2"], "through B: {:?}", ids(&got));
    ensure!(got[0] == through_b[0], "the event as written: {:?}", got[0]);
    write(&mut a, ns, vec![event("wanted", "a1", "a")]).await?;
    let got = next_events(&mut tail, 1).await?;
    ensure!(ids(&got) == ["a1"], "through A: {:?}", ids(&got));
    Ok(tail)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_tails_see_other_replicas_and_direct_producers() -> anyhow::Result<()> {
    let Some(broker) = prism_testkit::kafka::KafkaBroker::start_or_skip()? else {
        println!("{}", prism_testkit::kafka::skip_reason());
        return Ok(());
    };
    let ns = "acme/clicks";
    let config = Config::Kafka(KafkaConfig { bootstrap_servers: vec![broker.bootstrap()], ..Default::default() });
    let r = replicas(ns, spec(Backend::Kafka, Some(config))).await?;
    let mut on_a = a_tail_sees_the_other_replica(&r, ns).await?;

    // A producer writing to the topic itself, encoding as the plugin does.
    let got = r.cp.client().await?.get_namespace(GetNamespaceRequest { name: ns.into() }).await?.into_inner();
    let plugin_ns = prism_plugin_api::Namespace {
        name: ns.into(),
        create_revision: got.create_revision,
        spec: got.spec.unwrap_or_default(),
    };
    let topic = prism_plugin_kafka::codec::topic(&plugin_ns);
    let partitions = prism_plugin_kafka::NamespaceSettings::of(&plugin_ns)?.partitions;
    let producer: rdkafka::producer::FutureProducer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", broker.bootstrap()).create()?;
    for (series, id, site) in [("other", "x3", "a"), ("wanted", "d1", "a"), ("wanted", "x4", "b")] {
        let e = prism_plugin_api::ts::Event {
            time_series_id: series.into(),
            event_time: now_secs() * 1_000_000 + 7,
            event_id: id.into(),
            items: vec![(b"v".to_vec(), id.as_bytes().to_vec())],
            tags: [("site".to_owned(), site.to_owned())].into(),
        };
        let payload = prism_plugin_kafka::codec::encode(&e);
        let record = rdkafka::producer::FutureRecord::to(&topic)
            .key(series)
            .payload(&payload)
            .partition(prism_plugin_kafka::codec::partition(series, partitions));
        producer.send(record, Duration::from_secs(10)).await.map_err(|(e, _)| e)?;
    }
    let got = next_events(&mut on_a, 1).await?;
    ensure!(ids(&got) == ["d1"], "produced directly: {:?}", ids(&got));
    let time = got[0].event_time.context("a time")?;
    ensure!(time.nanos == 7_000, "the exact microsecond, as a read returns it: {time:?}");

    // Deleting the namespace ends its tails on every replica, and their
    // readers stop before the topic goes (a fetch in flight on a deleted
    // topic crashes librdkafka: this process, which runs both gateways).
    let mut on_b = tail(&mut client(&r.gateways[1]).await?, ns, "").await?;
    r.cp.client().await?.delete_namespace(DeleteNamespaceRequest { name: ns.into(), expected_revision: 0 }).await?;
    for (replica, t) in [("A", &mut on_a), ("B", &mut on_b)] {
        let end = tokio::time::timeout(WAIT, t.next()).await.with_context(|| format!("replica {replica}'s tail"))?;
        ensure!(end.is_none(), "replica {replica}'s tail ends: {end:?}");
    }
    eventually(WAIT, || async {
        let got = r.cp.client().await?.get_namespace(GetNamespaceRequest { name: ns.into() }).await;
        let gone = match &got {
            Err(s) => s.code() == Code::NotFound,
            Ok(n) => n.get_ref().status == NamespaceStatus::Deleted as i32,
        };
        ensure!(gone, "the topic is not deleted yet: {got:?}");
        Ok(())
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_tails_see_other_replicas() -> anyhow::Result<()> {
    let Some(server) = prism_testkit::postgres::PostgresServer::start_or_skip()? else {
        println!("{}", prism_testkit::postgres::skip_reason());
        return Ok(());
    };
    let ns = "acme/orders";
    let config = Config::Postgres(PostgresConfig { dsn: server.dsn(), ..Default::default() });
    let r = replicas(ns, spec(Backend::Postgres, Some(config))).await?;
    let mut tail = a_tail_sees_the_other_replica(&r, ns).await?;

    // A row another writer inserts straight into the database (no
    // gateway involved) reaches the tail too: the tables notify.
    let (admin, connection) = tokio_postgres::connect(&server.dsn(), tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    let query = "SELECT quote_ident(schemaname) || '.' || quote_ident(tablename) FROM pg_tables
                 WHERE tablename LIKE '%\\_' || $1";
    let mut tables = Vec::new();
    for suffix in ["tsev", "tsit"] {
        let rows = admin.query(query, &[&suffix]).await?;
        ensure!(rows.len() == 1, "one {suffix} table, not {}", rows.len());
        tables.push(rows[0].get::<_, String>(0));
    }
    let (heads, items) = (&tables[0], &tables[1]);
    let micros = now_secs() * 1_000_000;
    admin
        .batch_execute(&format!(
            "BEGIN;
             INSERT INTO {heads} VALUES ('wanted', {micros}, 'by-hand', '{{\"site\": \"a\"}}');
             INSERT INTO {items} VALUES ('wanted', {micros}, 'by-hand', 'v', 'typed');
             COMMIT;"
        ))
        .await?;
    let got = next_events(&mut tail, 1).await?;
    ensure!(ids(&got) == ["by-hand"], "inserted by hand: {:?}", ids(&got));
    ensure!(got[0].items == [ts::EventItem { key: b"v".to_vec(), value: b"typed".to_vec() }], "{:?}", got[0]);

    // The listening connection dies: the tail ends with UNAVAILABLE
    // naming the cause, instead of going quiet.
    let killed =
        admin.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'LISTEN %'", &[]).await?;
    ensure!(killed.len() == 1, "{} listeners", killed.len());
    let end = tokio::time::timeout(WAIT, tail.next()).await.context("the tail ends")?;
    let status = end.context("ends with a status")?.expect_err("a status, not events");
    ensure!(status.code() == Code::Unavailable, "{status:?}");
    ensure!(status.message().contains("listener lost its connection"), "{}", status.message());
    ensure!(!status.message().contains(&server.port().to_string()), "names no address: {}", status.message());
    Ok(())
}

/// Pulsar (with the gateway's `pulsar` feature): a tail on replica A sees
/// replica B's writes, and events a bare producer publishes to the topic
/// (encoded as the plugin does).
#[cfg(feature = "pulsar")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulsar_tails_see_other_replicas_and_direct_producers() -> anyhow::Result<()> {
    use prism_proto::control::PulsarConfig;
    let broker = prism_testkit::pulsar::PulsarBroker::start()?;
    let ns = "acme/rides";
    let config = Config::Pulsar(PulsarConfig { service_url: broker.service_url(), topic: String::new() });
    let r = replicas(ns, spec(Backend::Pulsar, Some(config))).await?;
    let mut tail = a_tail_sees_the_other_replica(&r, ns).await?;

    let got = r.cp.client().await?.get_namespace(GetNamespaceRequest { name: ns.into() }).await?.into_inner();
    let plugin_ns = prism_plugin_api::Namespace {
        name: ns.into(),
        create_revision: got.create_revision,
        spec: got.spec.unwrap_or_default(),
    };
    // A bare producer, encoding as the plugin does (first epoch: 1).
    use prism_plugin_pulsar::codec::{self, StoredEvent, record};
    use prism_plugin_pulsar::pulsar;
    let topic = prism_plugin_pulsar::Topics::of(&plugin_ns)?.data;
    let client = pulsar::Pulsar::builder(broker.service_url(), pulsar::TokioExecutor).build().await?;
    let mut producer = client.producer().with_topic(topic).build().await?;
    for (series, id, site) in [("other", "x3", "a"), ("wanted", "d1", "a"), ("wanted", "x4", "b")] {
        let e = prism_plugin_api::ts::Event {
            time_series_id: series.into(),
            event_time: now_secs() * 1_000_000 + 7,
            event_id: id.into(),
            items: vec![(b"v".to_vec(), id.as_bytes().to_vec())],
            tags: [("site".to_owned(), site.to_owned())].into(),
        };
        let message = pulsar::producer::Message {
            payload: codec::encode(record::Body::Event(StoredEvent::of(&e, 1))),
            partition_key: Some(series.into()),
            properties: [("prism-epoch".to_owned(), "1".to_owned())].into(),
            ..Default::default()
        };
        producer.send_non_blocking(message).await?.await?;
    }
    let got = next_events(&mut tail, 1).await?;
    ensure!(ids(&got) == ["d1"], "published directly: {:?}", ids(&got));
    Ok(())
}

/// Embedded keeps one writer: a tail on the replica that does not own
/// the namespace is forwarded to the owner like every other call, so it
/// sees what either replica writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_tails_are_served_by_the_owner() -> anyhow::Result<()> {
    let ns = "acme/local";
    let r = replicas(ns, spec(Backend::Embedded, None)).await?;
    a_tail_sees_the_other_replica(&r, ns).await?;
    Ok(())
}

/// A reader that does not read falls more than the tail's buffer behind
/// and is cut off with RESOURCE_EXHAUSTED, after the events it was sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_is_cut_off() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let ns = "acme/firehose";
    let spec = NamespaceSpec { placement: None, ..spec(Backend::Embedded, None) };
    let gw = cluster.active_namespace(ns, spec).await?;
    let mut c = client(gw).await?;
    let mut slow = tail(&mut c, ns, "wanted").await?;
    // Each write is one batch for the tail; big events fill the stream's
    // HTTP/2 window and send buffer early, so the rest wait in the
    // tail's channel, which holds TAIL_BUFFER batches.
    let big = vec![0_u8; 16 * 1024];
    for i in 0..prism_gateway::tail::TAIL_BUFFER + 200 {
        let mut e = event("wanted", &format!("e{i}"), "a");
        e.items[0].value = big.clone();
        write(&mut c, ns, vec![e]).await?;
    }
    let mut received = 0;
    let status = loop {
        match tokio::time::timeout(WAIT, slow.next()).await.context("the tail went quiet")? {
            Some(Ok(m)) => received += m.events.len(),
            Some(Err(status)) => break status,
            None => anyhow::bail!("the tail ended without a status after {received} events"),
        }
    };
    ensure!(status.code() == Code::ResourceExhausted, "{status:?}");
    ensure!(status.message().contains("tail again"), "{}", status.message());
    ensure!(received < prism_gateway::tail::TAIL_BUFFER + 200, "{received} events before the cut");
    Ok(())
}
