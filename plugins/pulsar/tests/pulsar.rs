//! The pulsar plugin against brokers of its own (one per test, so they can
//! be stopped and restarted): durability of acknowledged writes across a
//! broker restart, a broker outage that fails calls as UNAVAILABLE in
//! bounded time and heals on its own, and many concurrent reads that all
//! answer.

mod support;

use std::time::{Duration, Instant};

use anyhow::ensure;
use prism_plugin_api::conformance::Subject;
use prism_plugin_api::conformance::support::{event, ts_namespace};
use prism_plugin_api::kv::PageLimits;
use prism_plugin_api::ts::{Event, Query, TimeSeriesHandle};
use prism_plugin_api::{Micros, Namespace, now_micros};
use prism_plugin_pulsar::PulsarPluginConfig;
use prism_proto::error::ErrorKind;
use prism_testkit::eventually;
use prism_testkit::pulsar::PulsarBroker;
use std::sync::Arc;
use support::{settings, subject};

const LIMITS: PageLimits = PageLimits::new(u64::MAX, None);

fn config() -> PulsarPluginConfig {
    PulsarPluginConfig { request_timeout: Duration::from_secs(3), connect_timeout: Duration::from_millis(500) }
}

async fn read_all(ts: &dyn TimeSeriesHandle, series: &str, now: Micros) -> anyhow::Result<Vec<Event>> {
    let query = Query::series(series, (now - 3_600_000_000, now + 3_600_000_000), LIMITS);
    let page = ts.query(&query, now).await?;
    Ok(page.events)
}

/// `ns` opened on `subject`'s plugin.
fn open(subject: &Subject, ns: &Namespace) -> Arc<dyn TimeSeriesHandle> {
    subject.plugin.time_series().expect("time_series").open(ns).expect("open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_a_broker_restart() {
    let mut broker = PulsarBroker::start().expect("start pulsar-lite");
    let subject = subject(settings(&broker.service_url()), config());
    let ns = ts_namespace(&subject, "durable", None);
    subject.plugin.provision(&ns).await.expect("provision");
    let plugin = open(&subject, &ns);
    let now = now_micros();
    let written: Vec<Event> =
        (0..5).map(|i| event("s", now - i * 1_000, &format!("e{i}"), &[("k", &format!("v{i}"))], &[])).collect();
    plugin.write(&written).await.expect("write is acknowledged");

    broker.restart().expect("restart on the same data");

    // A fresh plugin (a gateway started after the restart) reads them all.
    let fresh = support::subject(settings(&broker.service_url()), config());
    let fresh = open(&fresh, &ns);
    let events = eventually(Duration::from_secs(20), || read_all(fresh.as_ref(), "s", now)).await.expect("read");
    assert_eq!(events, written, "every acknowledged event, newest first");
    // And the plugin that wrote them reconnects and reads them too.
    let events = eventually(Duration::from_secs(20), || read_all(plugin.as_ref(), "s", now)).await.expect("read");
    assert_eq!(events, written);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_fails_calls_as_unavailable_in_bounded_time_and_heals() {
    let mut broker = PulsarBroker::start().expect("start pulsar-lite");
    let subject = subject(settings(&broker.service_url()), config());
    let ns = ts_namespace(&subject, "outage", None);
    subject.plugin.provision(&ns).await.expect("provision");
    let plugin = open(&subject, &ns);
    let now = now_micros();
    let before = event("s", now, "before", &[("k", "v")], &[]);
    plugin.write(std::slice::from_ref(&before)).await.expect("write");

    broker.stop();
    let during = event("s", now - 1, "during", &[("k", "v")], &[]);
    let started = Instant::now();
    let e = plugin.write(std::slice::from_ref(&during)).await.expect_err("the broker is down");
    let took = started.elapsed();
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    assert!(took <= config().request_timeout + Duration::from_secs(1), "failed only after {took:?}");
    let query = Query::series("s", (now - 1_000, now + 1), LIMITS);
    let e = plugin.query(&query, now).await.expect_err("the broker is down");
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");

    broker.restart().expect("restart");
    eventually(Duration::from_secs(20), || async {
        plugin.write(std::slice::from_ref(&during)).await?;
        let ids: Vec<String> = read_all(plugin.as_ref(), "s", now).await?.into_iter().map(|e| e.event_id).collect();
        ensure!(ids == ["before", "during"], "read {ids:?}");
        Ok(())
    })
    .await
    .expect("the same plugin works again once the broker is back");
}

/// The data topic's last message id, asked by a reader of its own (through
/// a relay, as the plugin reads pulsar-lite).
async fn last_message_id(service_url: &str, topic: &str) -> anyhow::Result<(u64, u64)> {
    use prism_plugin_pulsar::pulsar::consumer::{ConsumerOptions, InitialPosition};
    use prism_plugin_pulsar::pulsar::reader::Reader;
    use prism_plugin_pulsar::pulsar::{Pulsar, TokioExecutor};
    let relays = prism_plugin_pulsar::relay::Relays::new(Duration::from_secs(2));
    let client: Pulsar<TokioExecutor> = Pulsar::builder(relays.url(service_url)?, TokioExecutor).build().await?;
    let mut reader: Reader<Vec<u8>, TokioExecutor> = client
        .reader()
        .with_topic(topic)
        .with_options(ConsumerOptions::default().durable(false).with_initial_position(InitialPosition::Earliest))
        .into_reader()
        .await?;
    let last = reader.get_last_message_id().await?;
    Ok((last.ledger_id, last.entry_id))
}

/// Many reads at once, each through its own scan of the whole topic: every
/// one answers, with its series' events. pulsar-lite stops delivering to
/// readers that share one connection beyond 8 192 messages asked for
/// (the plugin's `ReaderPool` says how), which left reads of a 16-client
/// benchmark unanswered until the request timeout; and reads add no
/// message to the topic (they used to publish a fence each).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_reads_all_answer_with_their_events_and_add_nothing() {
    const READS: usize = 24;
    const SERIES: usize = 8;
    const EVENTS: usize = 600;
    let broker = PulsarBroker::start().expect("start pulsar-lite");
    // Room for a loaded 2-core machine: a read that stalls fails after it.
    let config = PulsarPluginConfig { request_timeout: Duration::from_secs(30), ..PulsarPluginConfig::default() };
    let subject = subject(settings(&broker.service_url()), config);
    let ns = ts_namespace(&subject, "concurrent-reads", None);
    subject.plugin.provision(&ns).await.expect("provision");
    let plugin = open(&subject, &ns);
    let now = now_micros();
    let written: Vec<Event> = (0..EVENTS)
        .map(|i| {
            let series = format!("s{}", i % SERIES);
            event(&series, now - (EVENTS - i) as i64 * 1_000, &format!("e{i}"), &[("k", &format!("v{i}"))], &[])
        })
        .collect();
    for chunk in written.chunks(100) {
        plugin.write(chunk).await.expect("write");
    }
    let topic = prism_plugin_pulsar::Topics::of(&ns).expect("topics").data;
    let before = last_message_id(&broker.service_url(), &topic).await.expect("last message id");

    let mut reads = tokio::task::JoinSet::new();
    for read in 0..READS {
        let (plugin, series) = (plugin.clone(), format!("s{}", read % SERIES));
        reads.spawn(async move {
            let events = read_all(plugin.as_ref(), &series, now).await;
            (read, series, events)
        });
    }
    let mut answered = 0;
    while let Some(done) = reads.join_next().await {
        let (read, series, events) = done.expect("the read task");
        let events = events.unwrap_or_else(|e| panic!("read {read} of {series} failed: {e:#}"));
        let mut expected: Vec<Event> = written.iter().filter(|e| e.time_series_id == series).cloned().collect();
        expected.reverse();
        assert_eq!(events.len(), EVENTS / SERIES, "read {read}: every event of {series}");
        assert_eq!(events, expected, "read {read}: {series}'s events, newest first, each once");
        answered += 1;
    }
    assert_eq!(answered, READS);

    let after = last_message_id(&broker.service_url(), &topic).await.expect("last message id");
    assert_eq!(after, before, "reads published nothing to the data topic");
}

/// One write of more events than the client queues per connection (100):
/// each send waits for room, the write is acknowledged whole (it used to
/// fail as UNAVAILABLE, "SlowDown").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_of_many_events_is_acknowledged_whole() {
    let broker = PulsarBroker::start().expect("start pulsar-lite");
    let subject = subject(settings(&broker.service_url()), config());
    let ns = ts_namespace(&subject, "many-events", None);
    subject.plugin.provision(&ns).await.expect("provision");
    let plugin = open(&subject, &ns);
    let now = now_micros();
    let written: Vec<Event> =
        (0..500).map(|i| event("s", now - i * 1_000, &format!("e{i}"), &[("k", "v")], &[])).collect();
    plugin.write(&written).await.expect("one write of 500 events");
    let events = read_all(plugin.as_ref(), "s", now).await.expect("read");
    assert_eq!(events.len(), written.len());
}

/// A feed reads the data topic from its latest message: it sees, in
/// topic order, what this plugin, another plugin (another gateway) and a
/// bare producer (encoding as the plugin does, in the current epoch)
/// publish after it started; nothing published before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_sees_every_producer_of_the_topic() {
    use prism_plugin_pulsar::codec::{self, StoredEvent, record};

    let broker = PulsarBroker::start().expect("start pulsar-lite");
    let subject = subject(settings(&broker.service_url()), config());
    let ns = ts_namespace(&subject, "follow", None);
    subject.plugin.provision(&ns).await.expect("provision");
    let plugin = open(&subject, &ns);
    let now = now_micros();
    plugin.write(&[event("s", now, "before", &[("k", "v")], &[])]).await.expect("write");
    assert!(plugin.follows());
    let mut feed = plugin.follow().await.expect("follow");

    let here = event("s", now + 1, "here", &[("b", "2"), ("a", "1")], &[("site", "a")]);
    plugin.write(std::slice::from_ref(&here)).await.expect("write");
    let other = support::subject(settings(&broker.service_url()), config());
    let there = event("s", now + 2, "there", &[("k", "2")], &[]);
    open(&other, &ns).write(std::slice::from_ref(&there)).await.expect("write through another plugin");
    let direct = event("s", now + 3, "direct", &[("k", "3")], &[("site", "b")]);
    let client = pulsar::Pulsar::builder(broker.service_url(), pulsar::TokioExecutor).build().await.expect("client");
    let topic = prism_plugin_pulsar::config::Topics::of(&ns).expect("topics").data;
    let mut producer = client.producer().with_topic(topic).build().await.expect("a producer");
    let payload = codec::encode(record::Body::Event(StoredEvent::of(&direct, 1)));
    let message = pulsar::producer::Message {
        payload,
        partition_key: Some("s".into()),
        properties: [("prism-epoch".to_owned(), "1".to_owned())].into(),
        ..Default::default()
    };
    producer.send_non_blocking(message).await.expect("send").await.expect("a direct publish");

    let got = prism_plugin_api::conformance::support::from_feed(&mut feed, 3).await;
    let mut here_sorted = here;
    here_sorted.items.sort();
    assert_eq!(got, vec![here_sorted, there, direct]);
}
