//! Policies pushed into the backend (issue 15, item 3), against real
//! servers: a Kafka namespace's retention reaches its topic's
//! `retention.ms`, read back through the broker's admin API
//! (DescribeConfigs), on create and on update, leaving the topic's other
//! configs alone; a PostgreSQL TimeSeries namespace whose retention
//! shrinks has its day partitions past the new retention dropped at once
//! (not at the next reclamation, which these gateways run hourly). Both
//! namespaces show what their backend holds (`backend_settings`) and stay
//! ACTIVE throughout. A change of a Kafka topic's partitions is refused
//! before it reaches the broker, naming the field.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use prism_proto::control::backend_config::Config;
use prism_proto::control::{
    Abstraction, Backend, BackendConfig, GetNamespaceRequest, KafkaConfig, Namespace, NamespaceSpec, NamespaceStatus,
    Policies, PostgresConfig, UpdateNamespaceRequest,
};
use prism_proto::timeseries as ts;
use prism_testkit::{Cluster, admin_token, eventually};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;

const WAIT: Duration = Duration::from_secs(30);
const HOUR: i64 = 3600;
const DAY: i64 = 86_400;

fn spec(backend: Backend, config: Config, policies: Policies) -> NamespaceSpec {
    NamespaceSpec {
        abstraction: Abstraction::TimeSeries as i32,
        backend: backend as i32,
        backend_config: Some(Box::new(BackendConfig { config: Some(config) })),
        policies: Some(Box::new(policies)),
        ..Default::default()
    }
}

fn seconds(s: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration { seconds: s, nanos: 0 })
}

fn now_secs() -> i64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs() as i64
}

/// Gateways that reclaim only hourly: what the tests see dropped, the
/// policy's application dropped.
async fn cluster() -> anyhow::Result<Cluster> {
    Cluster::start_with(|c| c.limits.reclaim_interval_seconds = HOUR as u64).await
}

async fn get(cluster: &Cluster, name: &str) -> anyhow::Result<Namespace> {
    let mut cp = cluster.control_plane.client().await?;
    Ok(cp.get_namespace(GetNamespaceRequest { name: name.into() }).await?.into_inner())
}

/// Updates `name`'s spec with `change`.
async fn update(
    cluster: &Cluster,
    name: &str,
    change: impl FnOnce(&mut NamespaceSpec),
) -> Result<Namespace, tonic::Status> {
    let mut cp = cluster.control_plane.client().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let ns = cp.get_namespace(GetNamespaceRequest { name: name.into() }).await?.into_inner();
    let mut spec = ns.spec.clone().unwrap_or_default();
    change(&mut spec);
    let req = UpdateNamespaceRequest { name: name.into(), spec: Some(spec), expected_revision: ns.revision };
    Ok(cp.update_namespace(req).await?.into_inner())
}

/// The value `ns` shows its backend holds for `setting`.
fn shown<'a>(ns: &'a Namespace, setting: &str) -> Option<&'a str> {
    ns.backend_settings.iter().find(|s| s.name == setting).map(|s| s.value.as_str())
}

/// The topic's configs, through the broker's admin API (DescribeConfigs).
async fn topic_configs(bootstrap: &str, topic: &str) -> anyhow::Result<HashMap<String, String>> {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", bootstrap).create().context("admin client")?;
    let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    let described = admin.describe_configs([&ResourceSpecifier::Topic(topic)], &options).await?;
    let mut configs = HashMap::new();
    for resource in described {
        let resource = resource.map_err(|code| anyhow::anyhow!("describe configs: {code:?}"))?;
        configs.extend(resource.entries.into_iter().filter_map(|e| Some((e.name, e.value?))));
    }
    Ok(configs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_retention_changes_the_topics_retention_ms() -> anyhow::Result<()> {
    let Some(broker) = prism_testkit::kafka::KafkaBroker::start_or_skip()? else {
        println!("{}", prism_testkit::kafka::skip_reason());
        return Ok(());
    };
    let config = Config::Kafka(KafkaConfig { bootstrap_servers: vec![broker.bootstrap()], ..Default::default() });
    let cluster = cluster().await?;
    let name = "acme/events";
    let policies = Policies { retention: seconds(HOUR), ..Default::default() };
    let gw = cluster.active_namespace(name, spec(Backend::Kafka, config, policies)).await?;

    let ns = get(&cluster, name).await?;
    let topic = prism_plugin_kafka::codec::topic(&prism_plugin_api::Namespace {
        name: ns.name.clone(),
        create_revision: ns.create_revision,
        spec: ns.spec.clone().unwrap_or_default(),
    });
    let created = topic_configs(&broker.bootstrap(), &topic).await?;
    assert_eq!(created.get("retention.ms").map(String::as_str), Some("3600000"), "{created:?}");
    assert_eq!(shown(&ns, "retention.ms"), Some("3600000"), "{:?}", ns.backend_settings);
    assert_eq!(shown(&ns, "partitions"), Some("1"), "{:?}", ns.backend_settings);

    // Two hours: the owner pushes it into the topic, and nothing else of
    // the topic's configs changes.
    update(&cluster, name, |s| s.policies.get_or_insert_default().retention = seconds(2 * HOUR)).await?;
    let updated = eventually(WAIT, || async {
        let configs = topic_configs(&broker.bootstrap(), &topic).await?;
        anyhow::ensure!(configs.get("retention.ms").map(String::as_str) == Some("7200000"), "{configs:?}");
        Ok(configs)
    })
    .await?;
    for (config, value) in &created {
        if config != "retention.ms" {
            assert_eq!(updated.get(config), Some(value), "{config} changed: {updated:?}");
        }
    }
    let ns = eventually(WAIT, || async {
        let ns = get(&cluster, name).await?;
        anyhow::ensure!(shown(&ns, "retention.ms") == Some("7200000"), "{:?}", ns.backend_settings);
        Ok(ns)
    })
    .await?;
    assert_eq!(ns.status, NamespaceStatus::Active as i32, "{}", ns.status_reason);

    // No retention asked: what the control plane stores (the tenant's
    // cap, or forever as -1, never the broker's default) is what the
    // topic gets.
    let stored = update(&cluster, name, |s| s.policies.get_or_insert_default().retention = None).await?;
    let want = match stored.spec.and_then(|s| s.policies).and_then(|p| p.retention) {
        Some(d) if d.seconds > 0 => (d.seconds * 1000).to_string(),
        _ => "-1".to_owned(),
    };
    eventually(WAIT, || async {
        let configs = topic_configs(&broker.bootstrap(), &topic).await?;
        anyhow::ensure!(configs.get("retention.ms") == Some(&want), "want {want}: {configs:?}");
        Ok(())
    })
    .await?;
    eventually(WAIT, || async {
        let ns = get(&cluster, name).await?;
        anyhow::ensure!(shown(&ns, "retention.ms") == Some(want.as_str()), "{:?}", ns.backend_settings);
        Ok(())
    })
    .await?;

    // Another partition count is refused before the broker sees it.
    let refused = update(&cluster, name, |s| {
        if let Some(Config::Kafka(k)) = s.backend_config.as_mut().and_then(|b| b.config.as_mut()) {
            k.partitions = 2;
        }
    })
    .await
    .expect_err("a partition change is refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("spec.backend_config.kafka.partitions"), "{refused:?}");

    // And the namespace served throughout.
    let mut c = prism_client::time_series(&gw.endpoint(), Some(&admin_token())).await?;
    let event = ts::Event {
        schema_version: 0,
        time_series_id: "s".into(),
        event_time: Some(prost_types::Timestamp { seconds: now_secs(), nanos: 0 }),
        event_id: "e".into(),
        items: vec![ts::EventItem { key: b"k".to_vec(), value: b"v".to_vec() }],
        tags: Default::default(),
    };
    c.write_event_records_sync(ts::WriteEventRecordsRequest { namespace: name.into(), events: vec![event] }).await?;
    Ok(())
}

/// The day partitions (days since the epoch) of the namespace's event
/// table, as PostgreSQL's catalog has them.
async fn day_partitions(dsn: &str) -> anyhow::Result<Vec<i64>> {
    let (client, connection) = tokio_postgres::connect(dsn, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    let rows = client
        .query(
            "SELECT c.relname::text FROM pg_inherits h
             JOIN pg_class c ON c.oid = h.inhrelid JOIN pg_class p ON p.oid = h.inhparent
             WHERE p.relname LIKE 'kv\\_acme\\_readings\\_%' AND p.relname LIKE '%\\_tsev'",
            &[],
        )
        .await?;
    let mut days: Vec<i64> = rows
        .iter()
        .filter_map(|r| {
            let name: String = r.get(0);
            let digits = name.rsplit_once("_e")?.1;
            (digits.len() == 5).then(|| digits.parse().ok()).flatten()
        })
        .collect();
    days.sort_unstable();
    Ok(days)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_retention_drops_the_partitions_past_it() -> anyhow::Result<()> {
    let Some(server) = prism_testkit::postgres::PostgresServer::start_or_skip()? else {
        println!("{}", prism_testkit::postgres::skip_reason());
        return Ok(());
    };
    let config = Config::Postgres(PostgresConfig { dsn: server.dsn(), ..Default::default() });
    let cluster = cluster().await?;
    let name = "acme/readings";
    // Within the default (free) profile's seven days.
    let policies = Policies { retention: seconds(6 * DAY), accept_limit: seconds(5 * DAY), ..Default::default() };
    let gw = cluster.active_namespace(name, spec(Backend::Postgres, config, policies)).await?;

    let now = now_secs();
    let mut c = prism_client::time_series(&gw.endpoint(), Some(&admin_token())).await?;
    let event = |ago: i64, id: &str| ts::Event {
        schema_version: 0,
        time_series_id: "s".into(),
        event_time: Some(prost_types::Timestamp { seconds: now - ago, nanos: 0 }),
        event_id: id.into(),
        items: vec![ts::EventItem { key: b"k".to_vec(), value: b"v".to_vec() }],
        tags: Default::default(),
    };
    let events = vec![event(4 * DAY, "old"), event(0, "new")];
    c.write_event_records_sync(ts::WriteEventRecordsRequest { namespace: name.into(), events }).await?;
    let (old_day, today) = ((now - 4 * DAY).div_euclid(DAY), now.div_euclid(DAY));
    assert_eq!(day_partitions(&server.dsn()).await?, vec![old_day, today]);

    // Two days: the old day's partition goes now, not at the next
    // (hourly) reclamation.
    update(&cluster, name, |s| {
        let p = s.policies.get_or_insert_default();
        p.retention = seconds(2 * DAY);
        p.accept_limit = seconds(DAY);
    })
    .await?;
    eventually(WAIT, || async {
        let days = day_partitions(&server.dsn()).await?;
        anyhow::ensure!(days == vec![today], "day partitions {days:?}");
        Ok(())
    })
    .await?;
    let ns = eventually(WAIT, || async {
        let ns = get(&cluster, name).await?;
        anyhow::ensure!(shown(&ns, "day_partitions") == Some("1"), "{:?}", ns.backend_settings);
        Ok(ns)
    })
    .await?;
    assert_eq!(ns.status, NamespaceStatus::Active as i32, "{}", ns.status_reason);

    let read = ts::ReadEventRecordsRequest {
        namespace: name.into(),
        time_series_id: "s".into(),
        start: Some(prost_types::Timestamp { seconds: now - 7 * DAY, nanos: 0 }),
        end: Some(prost_types::Timestamp { seconds: now + 60, nanos: 0 }),
        ..Default::default()
    };
    let page = c.read_event_records(read).await?.into_inner();
    let ids: Vec<&str> = page.events.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(ids, ["new"]);
    Ok(())
}
