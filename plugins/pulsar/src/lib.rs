//! The Pulsar backend for TimeSeries, over Pulsar's native protocol (the
//! [`pulsar`](https://docs.rs/pulsar) crate on tokio; TLS for
//! `pulsar+ssl://` through rustls on ring, the build's one TLS stack).
//!
//! **Layout.** A namespace `tenant/name` is Pulsar's `tenant/namespace` of
//! the same name (`seeds/000_*`); each incarnation has two persistent
//! topics there ([`config::Topics`]): `{topic}-i{create_revision}` with one
//! message per event (key = time_series_id, `event_time` metadata = the
//! event time, payload = the whole event as protobuf, [`codec`]) and
//! `{topic}-i{create_revision}-lifecycle` with its provisioned /
//! deprovisioned / reclaimed markers. A recreated namespace has a new
//! `create_revision`, hence new topics: it never sees the old data.
//!
//! **Semantics** ([`ts`]): writes publish one message per event and return
//! once the broker has acknowledged every one. Events are immutable and
//! writes idempotent by *first write wins on read*: a read folds the
//! topic in publish order and keeps, per (series, event time, event id,
//! item key), the first value published. Reads and searches scan the
//! topic up to the broker's last message id (`PulsarState::scan`), filter
//! by window, retention, series and tags, and page newest first.
//!
//! **Deletion.** pulsar-lite (the broker the tests run) has no admin HTTP
//! API, and the binary protocol has no command that deletes a topic, so
//! deprovisioning cannot remove bytes from the broker. It publishes a
//! `Deprovisioned` marker instead: from then on the incarnation's events
//! are unreachable through Prism (a namespace provisioned again starts a
//! new epoch, and reads take only the current epoch's events), but they
//! stay on the broker's disk until its own retention removes them. The
//! same holds for reclamation: a `Reclaimed` marker hides events past
//! retention; Pulsar's namespace retention policy is what frees the space.
//!
//! **Policies.** What a namespace's spec could ask of the broker —
//! retention (Pulsar's namespace retention policy or message TTL), and
//! deleting a deleted namespace's topics — is set only through Pulsar's
//! admin REST API (`/admin/v2/namespaces/{tenant}/{ns}/retention`,
//! `DELETE /admin/v2/persistent/…`), not through the binary protocol this
//! plugin speaks: its commands (`PulsarApi.proto`) connect, look topics
//! up, produce, subscribe, flow, acknowledge, seek and close, and none
//! sets a policy or deletes a topic. pulsar-lite, the broker the tests
//! run, has no admin API at all and serves only Connect, Lookup,
//! PartitionedMetadata, Producer, Send, CloseProducer, Subscribe, Flow,
//! Ack, Redeliver, CloseConsumer and Ping. So nothing is pushed
//! (`apply_policies` reports it, and the namespace shows it), and
//! retention is Prism's: reads never return events past it, and
//! `reclaim` publishes a `Reclaimed` marker. The one lever the protocol
//! has is acknowledgement: on a real Pulsar whose namespace retention
//! policy is 0, messages acknowledged by every durable subscription are
//! deleted at the next ledger roll-over, so a durable subscription
//! acknowledged up to the retention cutoff would let the broker free
//! them. It is not built (nor checked whether pulsar-lite frees
//! anything on acknowledgement); and since Prism's reads use non-durable
//! readers, a real deployment must already keep a retention policy of at least
//! the namespace's retention (or infinite) for Prism's data to survive at
//! all — an operator's setting, checked nowhere by Prism.
//!
//! **Relay.** Readers reach a `pulsar://` broker through an in-process
//! loopback relay (`src/relay.rs`) that adds the payload checksum the
//! `pulsar` crate requires and the protocol does not (pulsar-lite delivers
//! stored messages without it). Producers connect straight to the broker:
//! they receive no messages, and a write through the relay paid a second
//! loopback hop and a decode of every receipt (about a fifth of a bare
//! producer's throughput; `docs/benchmarks.md`, "Gateway → Pulsar").
//!
//! **Feature gating.** The `pulsar` crate's build needs a system `protoc`,
//! so this crate is not in the workspace's `default-members` and the
//! gateway takes it only with its feature `pulsar` (`cargo build -p
//! prism-cli --features pulsar`); without it a Pulsar namespace is
//! DEGRADED, "built without the pulsar plugin". The TimeSeries conformance
//! suite and the restart and outage tests (`plugins/pulsar/tests/`) run
//! against pulsar-lite; what drives a gateway — the end-to-end test
//! (`gateway/tests/pulsar.rs`) and the bench (`gateway/benches/pulsar.rs`)
//! — is the gateway's, behind its `pulsar` feature (`scripts/test.sh` runs
//! it with the feature).
//!
//! Nothing connects until a namespace needs it: a gateway registers this
//! plugin whether or not any broker exists. Per service URL one client
//! publishes, and each running scan reads through a client of its own
//! (kept idle for the next scans: `ReaderPool` says why); one producer per
//! data topic; all made on first need and dropped after a failure, or
//! after a call that was abandoned before it finished (its connection may
//! be dead without being closed: `Abandoned`), so the next call
//! reconnects.

pub mod codec;
pub mod config;
pub mod error;
mod follow;
pub mod relay;
pub mod ts;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::TryStreamExt;
use prism_plugin_api::ts::TimeSeries;
use prism_plugin_api::{Capabilities, Micros, Namespace, Plugin, PluginSettings};
use prism_proto::control::Backend;
use pulsar::consumer::{ConsumerOptions, InitialPosition, Message};
use pulsar::producer::ProducerOptions;
use pulsar::proto::MessageIdData;
use pulsar::reader::Reader;
use pulsar::{ConnectionRetryOptions, OperationRetryOptions, Producer, Pulsar, TokioExecutor, producer};

pub use config::{PulsarPluginConfig, Topics};
pub use error::{PulsarError, Result};
/// The client crate, at the version this plugin uses: the gateway's bench
/// (`gateway/benches/pulsar.rs`) measures a bare producer of it beside the
/// plugin.
pub use pulsar;

use crate::codec::{Lifecycle, LifecycleKind, record};

/// Opens the plugin for a gateway (its line in the gateway's `REGISTERED`):
/// every call bounded by the gateway's request timeout, this crate's
/// defaults for the rest. Opens no connection, and cannot fail.
pub fn open(settings: &PluginSettings) -> prism_plugin_api::Result<Arc<dyn Plugin>> {
    Ok(Arc::new(PulsarPlugin::new(PulsarPluginConfig {
        request_timeout: settings.request_timeout,
        ..PulsarPluginConfig::default()
    })))
}

type Client = Pulsar<TokioExecutor>;
type SharedProducer = Arc<tokio::sync::Mutex<Producer<TokioExecutor>>>;

/// The pulsar backend plugin. Cheap to share behind an `Arc`.
///
/// Connections run on the tokio runtime that opened them: use one plugin
/// per runtime.
pub struct PulsarPlugin {
    /// Shared with every namespace opened on the plugin.
    pulsar: Arc<PulsarState>,
}

/// The plugin's clients, producers and what it knows of each incarnation.
pub(crate) struct PulsarState {
    config: PulsarPluginConfig,
    /// Per service URL, reader clients not in use: each scan has one to
    /// itself, through the [`relay`] ([`ReaderPool`] says why).
    readers_idle: ReaderPool,
    /// Per service URL, the client that publishes: straight to the broker.
    /// Only delivered messages need the relay, and a publish that crosses
    /// it pays a second loopback hop and a decode of every receipt.
    writers: Mutex<HashMap<String, Client>>,
    producers: Mutex<HashMap<String, SharedProducer>>,
    /// Each incarnation's lifecycle as last folded, by lifecycle topic.
    states: Mutex<HashMap<String, State>>,
    /// Random, drawn once: makes reader subscription names unique across
    /// plugins and processes (a process id is not: every gateway in a
    /// container is process 1, and one process may hold several plugins).
    instance: u64,
    /// Makes reader subscription names unique within the plugin.
    readers: AtomicU64,
    /// Between the client and plain-TCP brokers ([`relay`]).
    relays: relay::Relays,
    /// Messages handed to a producer and not yet acknowledged, and sends
    /// that failed (metrics: [`Plugin::client_stats`]).
    queued: AtomicU64,
    send_errors: AtomicU64,
}

impl std::fmt::Debug for PulsarPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Clients hold broker addresses: not for logs.
        f.debug_struct("PulsarPlugin").field("config", &self.pulsar.config).finish_non_exhaustive()
    }
}

/// Resets the clients of a call dropped before it finished (its caller's
/// deadline, the request timeout): the broker may have stopped answering
/// on their connections without closing them, and a producer or reader
/// kept on such a connection would hang every later call until the
/// `pulsar` crate's keepalive gives up on it (a minute and more). The
/// next call connects afresh; a connection that was only slow costs one
/// reconnect.
struct Abandoned<'a> {
    state: Option<(&'a PulsarState, &'a str, &'a str)>,
}

impl<'a> Abandoned<'a> {
    fn arm(state: &'a PulsarState, service_url: &'a str, topic: &'a str) -> Self {
        Self { state: Some((state, service_url, topic)) }
    }

    /// The call finished, one way or the other.
    fn disarm(mut self) {
        self.state = None;
    }
}

impl Drop for Abandoned<'_> {
    fn drop(&mut self) {
        if let Some((state, service_url, topic)) = self.state.take() {
            tracing::debug!("a pulsar call was abandoned; its clients will connect afresh");
            state.reset(service_url, topic);
        }
    }
}

/// Messages counted in a queue gauge while this lives.
struct Queued<'a>(&'a AtomicU64, u64);

impl<'a> Queued<'a> {
    fn enter(gauge: &'a AtomicU64, n: u64) -> Self {
        gauge.fetch_add(n, Ordering::Relaxed);
        Self(gauge, n)
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(self.1, Ordering::Relaxed);
    }
}

/// An incarnation's lifecycle: the fold of its lifecycle topic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct State {
    /// `Provisioned` markers that started an epoch so far.
    provisions: u64,
    /// The current epoch while provisioned.
    epoch: Option<u64>,
    /// Events of the current epoch older than this are reclaimed.
    cutoff: Option<Micros>,
}

impl State {
    fn apply(&mut self, marker: &Lifecycle) {
        match LifecycleKind::try_from(marker.kind) {
            Ok(LifecycleKind::Provisioned) if self.epoch.is_none() => {
                self.provisions += 1;
                self.epoch = Some(self.provisions);
                self.cutoff = None;
            }
            Ok(LifecycleKind::Deprovisioned) => {
                self.epoch = None;
                self.cutoff = None;
            }
            Ok(LifecycleKind::Reclaimed) if self.epoch.is_some() => {
                self.cutoff = Some(self.cutoff.map_or(marker.before, |c| c.max(marker.before)));
            }
            _ => {}
        }
    }
}

/// Locks a map that no panic can leave half-updated (every critical
/// section is one insert, get or remove), so a poisoned lock is still
/// usable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `(ledger, entry)`: the order of messages of a non-partitioned topic.
fn position(id: &MessageIdData) -> (u64, u64) {
    (id.ledger_id, id.entry_id)
}

/// Where a scan stops.
#[derive(Debug, Clone, Copy)]
enum End {
    /// After the message at this position: the broker's last message id.
    Through((u64, u64)),
    /// Before this position: the fence the scan published.
    Before((u64, u64)),
}

/// Whether `message` is the last of its entry: a message published alone
/// is; of a batch, the last index is.
fn last_of_entry(message: &Message<Vec<u8>>) -> bool {
    let batch = message.metadata().num_messages_in_batch.unwrap_or(1);
    message.message_id().batch_index.is_none_or(|i| i.saturating_add(1) >= batch)
}

/// What one reader has been delivered so far, to skip what comes again.
///
/// pulsar-lite (0.2) delivers messages again, and goes back: when two
/// dispatches of one subscription overlap (two Flow commands close
/// together, in its debug log), both read from the same position, both
/// send, and the later one to finish moves the position back. Its own
/// client sees it too: 2 % to 24 % of deliveries in the runs of
/// `scripts/pulsar-lite-stall.py`, a reader alone on its connection
/// included. Each copy goes on in topic order from where it started, so a
/// message at or before the newest one seen has been visited already:
/// skipping those keeps every message once and in publish order, which
/// the first-write-wins fold needs. Nothing is skipped forward (no run
/// missed a message), so nothing is lost. Apache Pulsar delivers a
/// reader each message once, and this changes nothing there.
#[derive(Debug, Default)]
struct Delivered {
    /// `(ledger, entry, batch index or −1)` of the newest message seen.
    newest: Option<(u64, u64, i32)>,
}

impl Delivered {
    /// Whether `message` comes after every message seen so far (and
    /// remembers it if so).
    fn is_new(&mut self, message: &Message<Vec<u8>>) -> bool {
        let id = message.message_id();
        let at = (id.ledger_id, id.entry_id, id.batch_index.unwrap_or(-1));
        if self.newest.is_some_and(|newest| at <= newest) {
            return false;
        }
        self.newest = Some(at);
        true
    }
}

/// Idle reader clients, by service URL: a scan takes one (or connects a
/// new one) and puts it back when it read to the end.
///
/// *Why a connection per scan.* pulsar-lite (0.2) stops delivering to a
/// consumer for good when the outbound queue of its connection is full:
/// one queue of 8 192 messages per connection, shared by every consumer
/// on it. A dispatch that finds it full gives its permits back and is not
/// tried again until that consumer's next Flow, which the client sends
/// only once it received half of what it asked for: both wait. A `pulsar`
/// reader asks for 1 000 messages at a time, so 16 scans on one
/// connection (16 000) stalled and 4 (4 000) did not, as the read
/// benchmark saw at C = 16 and C = 4. In the broker's debug log the
/// stalled consumer's last dispatch is rolled back ("Acked tracked
/// message" without an Ack) and nothing follows; the broker's own client
/// stalls the same way without this plugin or its relay
/// (`scripts/pulsar-lite-stall.py`: 32 readers × 250 permits on one
/// connection never, × 500 and 16 × 1 000 do, a connection each never).
/// One reader per connection keeps a queue under 1 000 whatever the
/// concurrency, at the cost of a connection (and its relay) per running
/// scan; at most [`ReaderPool::IDLE`] per broker wait for the next scans.
#[derive(Default)]
struct ReaderPool {
    idle: Mutex<HashMap<String, Vec<Client>>>,
}

impl ReaderPool {
    /// Idle reader clients kept per service URL; more are closed.
    const IDLE: usize = 64;

    fn take(&self, service_url: &str) -> Option<Client> {
        lock(&self.idle).get_mut(service_url).and_then(Vec::pop)
    }

    fn put(&self, service_url: &str, client: Client) {
        let mut idle = lock(&self.idle);
        let clients = idle.entry(service_url.to_owned()).or_default();
        if clients.len() < Self::IDLE {
            clients.push(client);
        }
    }

    /// Forgets the idle clients of `service_url`, after a failure: their
    /// connections may be broken too.
    fn clear(&self, service_url: &str) {
        lock(&self.idle).remove(service_url);
    }
}

impl PulsarPlugin {
    /// Opens no connection.
    pub fn new(config: PulsarPluginConfig) -> Self {
        let pulsar = PulsarState {
            relays: relay::Relays::new(config.connect_timeout),
            config,
            readers_idle: ReaderPool::default(),
            writers: Mutex::default(),
            producers: Mutex::default(),
            states: Mutex::default(),
            instance: rand::random(),
            readers: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            send_errors: AtomicU64::new(0),
        };
        Self { pulsar: Arc::new(pulsar) }
    }

    pub fn config(&self) -> &PulsarPluginConfig {
        &self.pulsar.config
    }
}

impl PulsarState {
    /// Runs `call`, failing it as timed out after the request timeout: a
    /// broker that is down or stops answering must not hang a request.
    pub(crate) async fn bounded<T>(&self, what: &'static str, call: impl Future<Output = Result<T>>) -> Result<T> {
        tokio::time::timeout(self.config.request_timeout, call).await.map_err(|_| PulsarError::Timeout(what))?
    }

    /// A reader client of `service_url` for one scan, through its relay:
    /// an idle one, or a new one (a connection of its own).
    async fn reader_client(&self, service_url: &str) -> Result<Client> {
        match self.readers_idle.take(service_url) {
            Some(client) => Ok(client),
            None => self.connect(service_url, true).await,
        }
    }

    /// The client that publishes to `service_url`, straight to the broker,
    /// connected on first need.
    async fn writer(&self, service_url: &str) -> Result<Client> {
        if let Some(client) = lock(&self.writers).get(service_url) {
            return Ok(client.clone());
        }
        let client = self.connect(service_url, false).await?;
        lock(&self.writers).insert(service_url.to_owned(), client.clone());
        Ok(client)
    }

    /// A new client of `service_url`, through its relay when `relayed`.
    async fn connect(&self, service_url: &str, relayed: bool) -> Result<Client> {
        // Few, quick connection retries: the request timeout bounds the
        // call anyway, and the caller (or the write buffer) retries later.
        let connection = ConnectionRetryOptions {
            min_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(500),
            max_retries: 3,
            connection_timeout: self.config.connect_timeout,
            ..ConnectionRetryOptions::default()
        };
        let operation = OperationRetryOptions {
            operation_timeout: self.config.request_timeout,
            retry_delay: Duration::from_millis(100),
            max_retries: Some(3),
        };
        let url = if relayed {
            self.relays.url(service_url).map_err(|e| pulsar::Error::Custom(format!("relay: {e}")))?
        } else {
            service_url.to_owned()
        };
        Ok(Pulsar::builder(url, TokioExecutor)
            .with_connection_retry_options(connection)
            .with_operation_retry_options(operation)
            .build()
            .await?)
    }

    /// Forgets the client of `service_url` and the producers made with it,
    /// after a failure: the next call connects afresh.
    fn reset(&self, service_url: &str, topic: &str) {
        lock(&self.producers).remove(topic);
        self.readers_idle.clear(service_url);
        lock(&self.writers).remove(service_url);
    }

    async fn producer(&self, service_url: &str, topic: &str) -> Result<SharedProducer> {
        if let Some(producer) = lock(&self.producers).get(topic) {
            return Ok(producer.clone());
        }
        let client = self.writer(service_url).await?;
        // A send waits for room in the connection's outbound queue (100
        // messages in the client) rather than failing: a write of more
        // events than that failed whole, as UNAVAILABLE ("SlowDown").
        let options = ProducerOptions { block_queue_if_full: true, ..ProducerOptions::default() };
        let producer = client.producer().with_topic(topic).with_options(options).build().await?;
        let producer = Arc::new(tokio::sync::Mutex::new(producer));
        lock(&self.producers).insert(topic.to_owned(), producer.clone());
        Ok(producer)
    }

    /// Publishes `messages` to `topic` in order and waits until the broker
    /// has acknowledged every one; returns their ids.
    pub(crate) async fn publish(
        &self,
        service_url: &str,
        topic: &str,
        messages: Vec<producer::Message>,
    ) -> Result<Vec<MessageIdData>> {
        let abandoned = Abandoned::arm(self, service_url, topic);
        let result = self.publish_once(service_url, topic, messages).await;
        abandoned.disarm();
        if result.is_err() {
            self.reset(service_url, topic);
        }
        result
    }

    async fn publish_once(
        &self,
        service_url: &str,
        topic: &str,
        messages: Vec<producer::Message>,
    ) -> Result<Vec<MessageIdData>> {
        let producer = self.producer(service_url, topic).await?;
        let n = messages.len() as u64;
        // Counted as queued until this call is done with them, acknowledged
        // or failed (a guard, so a cancelled call uncounts them too).
        let queued = Queued::enter(&self.queued, n);
        let sent = async {
            let mut receipts = Vec::with_capacity(messages.len());
            {
                // Queued under the lock, in order; acknowledged without it.
                let mut producer = producer.lock().await;
                for message in messages {
                    receipts.push(producer.send_non_blocking(message).await?);
                }
            }
            let mut ids = Vec::with_capacity(receipts.len());
            for receipt in receipts {
                let receipt = receipt.await?;
                let id = receipt.message_id.ok_or_else(|| {
                    PulsarError::Client(pulsar::Error::Custom("a send receipt without a message id".into()))
                })?;
                ids.push(id);
            }
            Ok(ids)
        }
        .await;
        drop(queued);
        if sent.is_err() {
            self.send_errors.fetch_add(n, Ordering::Relaxed);
        }
        sent
    }

    /// Visits every message of `topic` from the earliest up to now, once
    /// each, in publish order, skipping fences.
    ///
    /// Where "now" ends: the broker's last message id, asked through the
    /// reader (GetLastMessageId) once it is subscribed. Every message
    /// acknowledged before the call is at or before it, so the read sees
    /// every acknowledged write, and it never waits for a message that will
    /// not come. Two answers give no position to stop at: an empty topic
    /// (pulsar-lite answers with an error, Apache Pulsar with entry −1) and
    /// an empty last ledger (entry −1, after a rollover: the last message
    /// is in an earlier ledger, which one is not said). Then the scan
    /// publishes a fence, as every scan did before, and reads until it: at
    /// most once per topic in pulsar-lite, rarely with Apache Pulsar.
    ///
    /// Each scan has a reader connection to itself ([`ReaderPool`]), and
    /// skips what the broker delivers again (see [`Delivered`]).
    pub(crate) async fn scan(
        &self,
        service_url: &str,
        topic: &str,
        mut visit: impl FnMut(&Message<Vec<u8>>, record::Body) -> Result<()>,
    ) -> Result<()> {
        let abandoned = Abandoned::arm(self, service_url, topic);
        let client = self.reader_client(service_url).await?;
        let result = self.read_all(&client, service_url, topic, &mut visit).await;
        abandoned.disarm();
        match &result {
            // A visitor that gave up (a read past its deadline) says nothing
            // about the connection: the reader closed when it was dropped.
            Ok(()) | Err(PulsarError::GaveUp(_)) => self.readers_idle.put(service_url, client),
            Err(_) => self.reset(service_url, topic),
        }
        result
    }

    async fn read_all(
        &self,
        client: &Client,
        service_url: &str,
        topic: &str,
        visit: &mut impl FnMut(&Message<Vec<u8>>, record::Body) -> Result<()>,
    ) -> Result<()> {
        let n = self.readers.fetch_add(1, Ordering::Relaxed);
        // Two readers of one name on one topic would share a subscription
        // (or be refused as busy): each must be the only one of its name.
        let name = format!("prism-scan-{:016x}-{n}", self.instance);
        // A reader: an exclusive, non-durable subscription of its own.
        let mut reader: Reader<Vec<u8>, TokioExecutor> = client
            .reader()
            .with_topic(topic)
            .with_subscription(name.clone())
            .with_consumer_name(name)
            .with_options(ConsumerOptions::default().durable(false).with_initial_position(InitialPosition::Earliest))
            .into_reader()
            .await?;
        let end = match reader.get_last_message_id().await {
            Ok(last) if last.ledger_id != u64::MAX && last.entry_id != u64::MAX => End::Through(position(&last)),
            // The broker answered, without a position to stop at (above).
            Ok(_) | Err(pulsar::Error::Connection(pulsar::error::ConnectionError::PulsarError(..))) => {
                let fence = codec::encode(record::Body::Fence(codec::Fence {}));
                let fence = producer::Message { payload: fence, ..Default::default() };
                let ids = self.publish(service_url, topic, vec![fence]).await?;
                let fence =
                    ids.first().map(position).ok_or_else(|| PulsarError::Corrupt("no receipt for the fence".into()))?;
                End::Before(fence)
            }
            Err(e) => return Err(e.into()),
        };
        let mut delivered = Delivered::default();
        loop {
            let Some(message) = reader.try_next().await? else {
                return Err(PulsarError::Client(pulsar::Error::Custom(
                    "the reader ended before the end of the topic".into(),
                )));
            };
            if !delivered.is_new(&message) {
                continue;
            }
            let at = position(message.message_id());
            if match end {
                End::Through(last) => at > last,
                End::Before(fence) => at >= fence,
            } {
                return Ok(());
            }
            let body = codec::decode(&message.payload.data).map_err(PulsarError::Corrupt)?;
            if !matches!(body, record::Body::Fence(_)) {
                visit(&message, body)?;
            }
            if matches!(end, End::Through(last) if at == last && last_of_entry(&message)) {
                return Ok(());
            }
        }
    }

    /// The incarnation's lifecycle: remembered, or folded from its topic.
    pub(crate) async fn state(&self, topics: &Topics) -> Result<State> {
        if let Some(state) = lock(&self.states).get(&topics.lifecycle) {
            return Ok(*state);
        }
        self.reload(topics).await
    }

    /// Folds the lifecycle topic afresh and remembers the result.
    async fn reload(&self, topics: &Topics) -> Result<State> {
        let mut state = State::default();
        self.scan(&topics.service_url, &topics.lifecycle, |_, body| {
            if let record::Body::Lifecycle(marker) = body {
                state.apply(&marker);
            }
            Ok(())
        })
        .await?;
        lock(&self.states).insert(topics.lifecycle.clone(), state);
        Ok(state)
    }

    /// Publishes a lifecycle marker and folds the topic again: what other
    /// gateways published in between counts too.
    pub(crate) async fn mark(&self, topics: &Topics, kind: LifecycleKind, before: Micros) -> Result<State> {
        let payload = codec::encode(record::Body::Lifecycle(Lifecycle { kind: kind as i32, before }));
        self.publish(&topics.service_url, &topics.lifecycle, vec![producer::Message { payload, ..Default::default() }])
            .await?;
        self.reload(topics).await
    }

    /// The current epoch of namespace `name`, or NotProvisioned.
    pub(crate) async fn epoch(&self, name: &str, topics: &Topics) -> Result<(u64, State)> {
        let state = self.state(topics).await?;
        state.epoch.map(|e| (e, state)).ok_or_else(|| PulsarError::NotProvisioned(name.to_owned()))
    }
}

#[async_trait]
impl Plugin for PulsarPlugin {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            backend: Backend::Pulsar,
            abstractions: prism_proto::capabilities::abstractions(Backend::Pulsar),
        }
    }

    fn client_stats(&self) -> prism_plugin_api::ClientStats {
        prism_plugin_api::ClientStats {
            pools: None,
            producers: Some(prism_plugin_api::ProducerStats {
                queued_messages: self.pulsar.queued.load(Ordering::Relaxed),
                send_errors: self.pulsar.send_errors.load(Ordering::Relaxed),
            }),
        }
    }

    /// Checks the broker is reachable and marks the incarnation
    /// provisioned (once: provisioning again changes nothing). Pulsar
    /// creates topics on first use; with pulsar-lite, tenants and
    /// namespaces need no creation either.
    /// Each incarnation has topics of its own, and provisioning one touches
    /// no other: `live` changes nothing.
    async fn provision_beside(&self, ns: &Namespace, _live: &[u64]) -> prism_plugin_api::Result<()> {
        let topics = Topics::of(ns)?;
        let provision = async {
            let state = self.pulsar.reload(&topics).await?;
            if state.epoch.is_none() {
                self.pulsar.mark(&topics, LifecycleKind::Provisioned, 0).await?;
            }
            Ok(())
        };
        self.pulsar.bounded("provisioning", provision).await.map_err(|e: PulsarError| {
            tracing::warn!(namespace = %ns.name, error = %e, "provisioning pulsar topics failed");
            e.into()
        })
    }

    /// Nothing of the spec can be pushed into a Pulsar broker from here
    /// (the crate docs, "Policies", say why): the namespace shows that
    /// the broker holds no retention of Prism's, so it is plain that
    /// Prism enforces it.
    async fn apply_policies(&self, ns: &Namespace) -> prism_plugin_api::Result<Vec<prism_plugin_api::BackendSetting>> {
        let held = match prism_plugin_api::ts::retention(ns) {
            Some(_) => {
                "events past retention are hidden on read by prism; their bytes stay until the broker's own \
                        retention policy, set by its operator, removes them"
            }
            None => "every event is kept by prism; the broker's own retention policy must keep them too",
        };
        Ok(vec![prism_plugin_api::BackendSetting {
            name: "retention".into(),
            value: "not pushed: the pulsar binary protocol has no command for it".into(),
            detail: held.into(),
        }])
    }

    /// Marks the incarnation deprovisioned: its events are never read
    /// again. The bytes stay on the broker (see the crate docs).
    async fn deprovision(&self, ns: &Namespace) -> prism_plugin_api::Result<()> {
        let topics = match Topics::of(ns) {
            Ok(topics) => topics,
            // Settings that never allowed provisioning created nothing.
            Err(PulsarError::Invalid { field, .. }) => {
                tracing::info!(namespace = %ns.name, %field, "nothing to deprovision: the settings never allowed provisioning");
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        let deprovision = async {
            let state = self.pulsar.reload(&topics).await?;
            if state.epoch.is_some() {
                self.pulsar.mark(&topics, LifecycleKind::Deprovisioned, 0).await?;
            }
            lock(&self.pulsar.producers).remove(&topics.data);
            Ok(())
        };
        Ok(self.pulsar.bounded("deprovisioning", deprovision).await?)
    }

    fn time_series(&self) -> Option<&dyn TimeSeries> {
        Some(self)
    }
}

impl TimeSeries for PulsarPlugin {
    fn open(&self, ns: &Namespace) -> prism_plugin_api::Result<Arc<dyn prism_plugin_api::ts::TimeSeriesHandle>> {
        let opened = ts::Opened {
            pulsar: self.pulsar.clone(),
            name: ns.name.clone(),
            topics: Topics::of(ns)?,
            retention: prism_plugin_api::ts::retention(ns),
        };
        Ok(Arc::new(opened))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marker(kind: LifecycleKind, before: Micros) -> Lifecycle {
        Lifecycle { kind: kind as i32, before }
    }

    #[test]
    fn lifecycle_folds_into_epochs() {
        let mut s = State::default();
        assert_eq!(s.epoch, None);
        s.apply(&marker(LifecycleKind::Reclaimed, 5));
        assert_eq!(s.cutoff, None, "nothing to reclaim while not provisioned");
        s.apply(&marker(LifecycleKind::Provisioned, 0));
        s.apply(&marker(LifecycleKind::Provisioned, 0));
        assert_eq!(s.epoch, Some(1), "provisioning twice is one epoch");
        s.apply(&marker(LifecycleKind::Reclaimed, 5));
        s.apply(&marker(LifecycleKind::Reclaimed, 3));
        assert_eq!(s.cutoff, Some(5), "the cutoff only moves forward");
        s.apply(&marker(LifecycleKind::Deprovisioned, 0));
        assert_eq!((s.epoch, s.cutoff), (None, None));
        s.apply(&marker(LifecycleKind::Provisioned, 0));
        assert_eq!((s.epoch, s.cutoff), (Some(2), None), "a new epoch starts empty");
    }
}
