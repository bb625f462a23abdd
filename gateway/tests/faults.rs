//! Network faults between a gateway and what it depends on: PostgreSQL,
//! a Kafka broker (tansu), a Pulsar broker (pulsar-lite, with the `pulsar`
//! feature) and the control plane, each reached through the testkit's
//! fault proxy (`prism_testkit::proxy`), everything else real.
//!
//! For each backend path, one test walks through every [`Fault`] in turn:
//! a write is acknowledged before the fault; under it, a write and a read
//! with a deadline fail with `UNAVAILABLE` or `DEADLINE_EXCEEDED` and do
//! return (a generous bound past the deadline detects a hang; it is not a
//! timing assertion); once the fault ends, requests succeed again with
//! nothing restarted, and every write acknowledged so far is read back.
//! For the control plane: a gateway keeps serving from its snapshot while
//! its link to the control plane is broken, and its watch catches up by
//! itself afterwards.
//!
//! The Pulsar case needs the gateway's `pulsar` feature: `cargo test -p
//! prism-gateway --features pulsar --test faults pulsar` (`scripts/test.sh`
//! runs it).

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use prism_proto::control::backend_config::Config;
use prism_proto::control::{
    Abstraction, Backend, BackendConfig, CreateNamespaceRequest, CreateTenantRequest, GetNamespaceRequest, KafkaConfig,
    NamespaceSpec, NamespaceStatus, PostgresConfig,
};
use prism_proto::{kv, timeseries as ts};
use prism_testkit::proxy::{Fault, TcpProxy};
use prism_testkit::{Cluster, admin_token, eventually};
use tonic::{Code, Status};

/// The deadline of every request made under a fault.
const DEADLINE: Duration = Duration::from_millis(500);

/// How long past its deadline a request may take to return before it
/// counts as hung: generous, so a loaded machine never trips it, yet far
/// below what a client without timeouts (minutes, or never) would take.
const HANG: Duration = Duration::from_secs(10);

/// The deadline of requests that must succeed.
const HEALTHY: Duration = Duration::from_secs(5);

/// The deadline of each attempt while waiting for recovery: a connection
/// still dead after the fault costs an attempt this long.
const ATTEMPT: Duration = Duration::from_secs(2);

/// How long service may take to come back after a fault ends.
const RECOVERY: Duration = Duration::from_secs(30);

/// How long each fault of the control plane's link lasts: longer than a
/// gateway's heartbeat period (a quarter of the 10 s lease).
const FAULT_SPAN: Duration = Duration::from_secs(3);

/// The bytes of a large write: at the slow link's rate it needs far more
/// than [`DEADLINE`].
const LARGE: usize = 64 * 1024;

/// Every fault, each severe enough that a request cannot finish within
/// [`DEADLINE`] (the slow link only for [`LARGE`] requests).
const FAULTS: [Fault; 5] = [
    Fault::Latency(Duration::from_secs(2)),
    Fault::Bandwidth(4 * 1024),
    Fault::Blackhole,
    Fault::HalfOpen,
    Fault::Reset,
];

/// What a backend path is driven with: writes of numbered items, and a
/// read of every small one.
///
/// Its clients send a request's deadline without enforcing it
/// (`prism_testkit::grpc`): what they return is what the gateway
/// answered, when it answered.
#[derive(Clone)]
enum Subject {
    Kv { client: KvClient, ns: String },
    Ts { client: TsClient, ns: String, seconds: i64 },
}

type KvClient = kv::key_value_service_client::KeyValueServiceClient<Raw>;
type TsClient = ts::time_series_service_client::TimeSeriesServiceClient<Raw>;
type Raw = tonic::service::interceptor::InterceptedService<prism_testkit::grpc::Channel, prism_client::BearerToken>;

/// Where small writes go; large ones go to [`LARGE_RECORD`].
const RECORD: &str = "acked";
const LARGE_RECORD: &str = "large";

fn with_deadline<T>(message: T, deadline: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(deadline);
    request
}

impl Subject {
    /// Writes item `n` (`size` bytes of value), answered within `deadline`.
    async fn write(&mut self, n: u32, size: usize, deadline: Duration) -> Result<(), Status> {
        let record = if size > 64 { LARGE_RECORD } else { RECORD };
        let value = vec![b'v'; size];
        match self {
            Self::Kv { client, ns } => {
                let item = kv::Item { key: format!("k{n}").into_bytes(), value, ttl: None };
                let put = kv::PutItemsRequest {
                    namespace: ns.clone(),
                    id: record.into(),
                    items: vec![item],
                    idempotency_token: None,
                };
                client.put_items(with_deadline(put, deadline)).await.map(drop)
            }
            Self::Ts { client, ns, seconds } => {
                // Identity fixed by `n`, so a write sent again is the same event.
                let event = ts::Event {
                    schema_version: 0,
                    time_series_id: record.into(),
                    event_time: Some(prost_types::Timestamp { seconds: *seconds, nanos: n as i32 * 1_000_000 }),
                    event_id: format!("e{n}"),
                    items: vec![ts::EventItem { key: b"v".to_vec(), value }],
                    tags: Default::default(),
                };
                let write = ts::WriteEventRecordsRequest { namespace: ns.clone(), events: vec![event] };
                client.write_event_records_sync(with_deadline(write, deadline)).await.map(drop)
            }
        }
    }

    /// The numbers of every small item, each request answered within
    /// `deadline`.
    async fn read(&mut self, deadline: Duration) -> Result<BTreeSet<u32>, Status> {
        let mut numbers = BTreeSet::new();
        let mut page_token = String::new();
        loop {
            let (names, next): (Vec<Vec<u8>>, String) = match self {
                Self::Kv { client, ns } => {
                    let get = kv::GetItemsRequest {
                        namespace: ns.clone(),
                        id: RECORD.into(),
                        page_token,
                        ..Default::default()
                    };
                    let page = client.get_items(with_deadline(get, deadline)).await?.into_inner();
                    (page.items.into_iter().map(|i| i.key).collect(), page.next_page_token)
                }
                Self::Ts { client, ns, seconds } => {
                    let at = |s| Some(prost_types::Timestamp { seconds: s, nanos: 0 });
                    let read = ts::ReadEventRecordsRequest {
                        namespace: ns.clone(),
                        time_series_id: RECORD.into(),
                        start: at(*seconds - 60),
                        end: at(*seconds + 60),
                        page_token,
                        ..Default::default()
                    };
                    let page = client.read_event_records(with_deadline(read, deadline)).await?.into_inner();
                    (page.events.into_iter().map(|e| e.event_id.into_bytes()).collect(), page.next_page_token)
                }
            };
            for name in names {
                let number = name.get(1..).map(String::from_utf8_lossy).unwrap_or_default();
                let n = number.parse().map_err(|_| Status::internal("a foreign item"))?;
                numbers.insert(n);
            }
            if next.is_empty() {
                return Ok(numbers);
            }
            page_token = next;
        }
    }
}

/// Runs `call` (a request with `deadline`), failing when it has not
/// returned [`HANG`] after its deadline.
async fn returns<T>(what: &str, deadline: Duration, call: impl Future<Output = T>) -> anyhow::Result<T> {
    tokio::time::timeout(deadline + HANG, call)
        .await
        .map_err(|_| anyhow::anyhow!("{what} hung: no answer {HANG:?} after its {deadline:?} deadline"))
}

/// [`returns`], saying what the request got and when (the test's output,
/// for the record: not asserted).
async fn reported<T>(
    what: &str,
    deadline: Duration,
    call: impl Future<Output = Result<T, Status>>,
) -> anyhow::Result<Result<T, Status>> {
    let started = tokio::time::Instant::now();
    let out = returns(what, deadline, call).await?;
    let got = match &out {
        Ok(_) => "OK".to_owned(),
        Err(status) => format!("{:?} ({})", status.code(), status.message()),
    };
    println!("  {what}: {got} after {:?} (deadline {deadline:?})", started.elapsed());
    Ok(out)
}

/// That a request under `fault` failed as a client must be able to rely
/// on (or succeeded, where the fault allows it).
fn failed_in_time<T: std::fmt::Debug>(
    what: &str,
    fault: Fault,
    result: &Result<T, Status>,
    may_succeed: bool,
) -> anyhow::Result<()> {
    match result {
        Ok(_) if may_succeed => Ok(()),
        Ok(got) => anyhow::bail!("{what} under {fault:?} succeeded: {got:?}"),
        Err(status) if matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded) => Ok(()),
        Err(status) => anyhow::bail!("{what} under {fault:?}: want UNAVAILABLE or DEADLINE_EXCEEDED, got {status:?}"),
    }
}

/// Walks `subject` through every fault of `proxy`, the link between its
/// gateway and its backend.
async fn every_fault(subject: &mut Subject, proxy: &TcpProxy) -> anyhow::Result<()> {
    let mut acked = BTreeSet::new();
    let mut next = 0;
    for fault in FAULTS {
        println!("{fault:?}:");
        next += 1;
        subject.write(next, 8, HEALTHY).await.with_context(|| format!("a write before {fault:?}"))?;
        acked.insert(next);

        proxy.set_fault(fault);
        // A slow link may still carry small requests in time; nothing else
        // may.
        let small_may_succeed = matches!(fault, Fault::Bandwidth(_));
        next += 1;
        let written = reported("a write", DEADLINE, subject.write(next, 8, DEADLINE)).await?;
        failed_in_time("a write", fault, &written, small_may_succeed)?;
        if written.is_ok() {
            acked.insert(next);
        }
        let read = reported("a read", DEADLINE, subject.read(DEADLINE)).await?;
        failed_in_time("a read", fault, &read, small_may_succeed)?;
        if small_may_succeed {
            next += 1;
            let large = reported("a large write", DEADLINE, subject.write(next, LARGE, DEADLINE)).await?;
            failed_in_time("a large write", fault, &large, false)?;
        }
        proxy.heal();
        let healed = tokio::time::Instant::now();

        // Back by itself: a write is acknowledged, and every acknowledged
        // write is there.
        next += 1;
        let n = next;
        let seen = eventually(RECOVERY, || {
            let mut subject = subject.clone();
            async move {
                subject.write(n, 8, ATTEMPT).await.context("write")?;
                subject.read(ATTEMPT).await.context("read")
            }
        })
        .await
        .with_context(|| format!("service did not come back after {fault:?}"))?;
        println!("  back {:?} after the fault ended", healed.elapsed());
        acked.insert(n);
        let lost: Vec<_> = acked.difference(&seen).collect();
        anyhow::ensure!(lost.is_empty(), "acknowledged writes lost after {fault:?}: {lost:?}");
    }
    Ok(())
}

/// The address of the owning gateway of `name`, made ACTIVE with `spec`
/// on a fresh two-shard cluster.
async fn serve(name: &str, spec: NamespaceSpec) -> anyhow::Result<(Cluster, std::net::SocketAddr)> {
    let cluster = Cluster::start().await?;
    let addr = cluster.active_namespace(name, spec).await?.addr;
    Ok((cluster, addr))
}

fn spec(abstraction: Abstraction, backend: Backend, config: Config) -> NamespaceSpec {
    NamespaceSpec {
        abstraction: abstraction as i32,
        backend: backend as i32,
        backend_config: Some(Box::new(BackendConfig { config: Some(config) })),
        ..NamespaceSpec::default()
    }
}

fn now_seconds() -> i64 {
    prism_plugin_api::now_micros() / 1_000_000
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_key_value_survives_network_faults() -> anyhow::Result<()> {
    let Some(server) = prism_testkit::postgres::PostgresServer::start_or_skip()? else {
        println!("{}", prism_testkit::postgres::skip_reason());
        return Ok(());
    };
    let proxy = TcpProxy::to(server.addr()).await?;
    let dsn = format!("postgres://{}@{}/postgres", prism_testkit::postgres::SUPERUSER, proxy.endpoint());
    let config = Config::Postgres(PostgresConfig { dsn, ..Default::default() });
    let name = "acme/pg-faults";
    let (_cluster, addr) = serve(name, spec(Abstraction::KeyValue, Backend::Postgres, config)).await?;
    let client = prism_testkit::grpc::key_value(addr, Some(&admin_token())).await?;
    every_fault(&mut Subject::Kv { client, ns: name.into() }, &proxy).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_time_series_survives_network_faults() -> anyhow::Result<()> {
    // The broker tells clients to reach it through the proxy, so none goes
    // around it after the first metadata answer.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let Some(broker) = prism_testkit::kafka::KafkaBroker::start_or_skip_advertising(Some(listener.local_addr()?))?
    else {
        println!("{}", prism_testkit::kafka::skip_reason());
        return Ok(());
    };
    let proxy = TcpProxy::on(listener, vec![broker.addr()])?;
    let config =
        Config::Kafka(KafkaConfig { bootstrap_servers: vec![proxy.endpoint()], partitions: 1, replication_factor: 1 });
    let name = "acme/kafka-faults";
    let (_cluster, addr) = serve(name, spec(Abstraction::TimeSeries, Backend::Kafka, config)).await?;
    let client = prism_testkit::grpc::time_series(addr, Some(&admin_token())).await?;
    every_fault(&mut Subject::Ts { client, ns: name.into(), seconds: now_seconds() }, &proxy).await
}

#[cfg(feature = "pulsar")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulsar_time_series_survives_network_faults() -> anyhow::Result<()> {
    use prism_proto::control::PulsarConfig;
    let Some(broker) = prism_testkit::pulsar::PulsarBroker::start_or_skip()? else {
        println!("{}", prism_testkit::pulsar::skip_reason());
        return Ok(());
    };
    // A lookup names the broker's own address: the proxy rewrites it to
    // its own, which must be as long (ports of as many digits).
    let proxy = eventually(Duration::from_secs(5), || async {
        let proxy = TcpProxy::to(broker.addr()).await?;
        proxy.rewrite_replies(&broker.service_url(), &format!("pulsar://{}", proxy.endpoint()))?;
        Ok(proxy)
    })
    .await?;
    let config =
        Config::Pulsar(PulsarConfig { service_url: format!("pulsar://{}", proxy.endpoint()), topic: "".into() });
    let name = "acme/pulsar-faults";
    let (_cluster, addr) = serve(name, spec(Abstraction::TimeSeries, Backend::Pulsar, config)).await?;
    let client = prism_testkit::grpc::time_series(addr, Some(&admin_token())).await?;
    every_fault(&mut Subject::Ts { client, ns: name.into(), seconds: now_seconds() }, &proxy).await
}

/// A gateway whose link to the control plane breaks keeps serving the
/// namespaces of its snapshot, and once the link is back its watch
/// catches up (a namespace created meanwhile becomes ACTIVE and is
/// served) without anything restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_serves_from_its_snapshot_while_the_control_plane_is_unreachable() -> anyhow::Result<()> {
    let config = prism_control_plane::ControlPlaneConfig { shards: vec!["shard-0".into()], ..Default::default() };
    let cp = prism_testkit::ControlPlaneHandle::start_with(config).await?;
    let link = TcpProxy::to(cp.addr).await?;
    let gateway = prism_testkit::GatewayHandle::start(&link.endpoint(), "shard-0").await?;
    let mut admin = cp.client().await?;
    admin.create_tenant(CreateTenantRequest { tenant_id: "acme".into(), ..Default::default() }).await?;
    let embedded = || NamespaceSpec {
        abstraction: Abstraction::KeyValue as i32,
        backend: Backend::Embedded as i32,
        ..Default::default()
    };

    let served = "acme/served";
    let revision = active(&mut admin, served, embedded()).await?;
    gateway.caught_up(revision).await?;
    let kv = prism_testkit::grpc::key_value(gateway.addr, Some(&admin_token())).await?;
    let mut subject = Subject::Kv { client: kv.clone(), ns: served.into() };
    let mut acked = BTreeSet::new();
    let mut next = 0;
    for (i, fault) in (1..).zip(FAULTS) {
        link.set_fault(fault);
        // Metadata changes meanwhile (the control plane itself is fine).
        let created = format!("acme/during-{i}");
        admin.create_namespace(CreateNamespaceRequest { name: created.clone(), spec: Some(embedded()) }).await?;
        // The data path needs nothing from the control plane: it serves
        // throughout a fault long enough for heartbeats to fail.
        // (A steady load, not a wait: a write and a read every tick.)
        let started = tokio::time::Instant::now();
        let mut ticks = tokio::time::interval(Duration::from_millis(100));
        while started.elapsed() < FAULT_SPAN {
            ticks.tick().await;
            next += 1;
            returns("a write", HEALTHY, subject.write(next, 8, HEALTHY))
                .await?
                .with_context(|| format!("a write while the control plane link has {fault:?}"))?;
            acked.insert(next);
            let seen = returns("a read", HEALTHY, subject.read(HEALTHY))
                .await?
                .with_context(|| format!("a read while the control plane link has {fault:?}"))?;
            anyhow::ensure!(seen == acked, "under {fault:?}: read {seen:?}, acknowledged {acked:?}");
        }
        link.heal();
        let healed = tokio::time::Instant::now();

        // The gateway hears of it, provisions it and serves it.
        let revision = eventually(RECOVERY, || {
            let mut admin = admin.clone();
            let created = created.clone();
            async move {
                let ns = admin.get_namespace(GetNamespaceRequest { name: created }).await?.into_inner();
                anyhow::ensure!(ns.status == NamespaceStatus::Active as i32, "{} is {:?}", ns.name, ns.status);
                Ok(ns.revision)
            }
        })
        .await
        .with_context(|| format!("the watch did not recover after {fault:?}"))?;
        eventually(RECOVERY, || async {
            let have = gateway.gateway.metadata.load().revision;
            anyhow::ensure!(have >= revision, "gateway at revision {have}, want {revision}");
            Ok(())
        })
        .await?;
        let mut fresh = Subject::Kv { client: kv.clone(), ns: created };
        fresh.write(1, 8, HEALTHY).await.with_context(|| format!("the namespace created during {fault:?}"))?;
        println!("{fault:?}: served throughout; caught up and serving the new namespace {:?} after", healed.elapsed());
    }
    Ok(())
}

/// Creates `name` and waits until it is ACTIVE; its revision.
async fn active(admin: &mut prism_client::ControlPlaneClient, name: &str, spec: NamespaceSpec) -> anyhow::Result<u64> {
    admin.create_namespace(CreateNamespaceRequest { name: name.into(), spec: Some(spec) }).await?;
    eventually(RECOVERY, || {
        let mut admin = admin.clone();
        async move {
            let ns = admin.get_namespace(GetNamespaceRequest { name: name.into() }).await?.into_inner();
            anyhow::ensure!(ns.status == NamespaceStatus::Active as i32, "{name} is {:?}", ns.status);
            Ok(ns.revision)
        }
    })
    .await
}
