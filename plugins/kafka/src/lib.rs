//! The Kafka backend for TimeSeries: one topic per namespace incarnation,
//! on the brokers its typed `backend_config` names, with its partitions,
//! replication factor and retention. Events are keyed by series and
//! stamped with their event time; reads seek by time and filter. The
//! layout is in [`codec`], reads and writes in [`ts`], tails follow the
//! topic from its end (`follow`).
//!
//! Nothing connects until a namespace needs it, so a gateway registers
//! this plugin whether or not a broker exists. Clients (one idempotent
//! producer and one admin client) are made per broker
//! list on first use and shared by its namespaces.
//!
//! librdkafka is built from its bundled source with `make` (no cmake),
//! without OpenSSL, SASL or compression libraries (zlib, zstd): the
//! gateway's one TLS stack is rustls, and a namespace that needs TLS to
//! its brokers is not served yet.
//!
//! Provisioning creates the incarnation's topic with the namespace's
//! partitions, replication factor and `retention.ms` (−1 without
//! retention; an existing topic is fine); deprovisioning deletes it (a
//! missing one is fine).
//!
//! **Policies in the broker.** [`Plugin::apply_policies`] makes the
//! topic's `retention.ms` the namespace's retention now, so the broker
//! itself deletes events past it (whole segments, `segment.ms` = 1 h),
//! and the bytes of events Prism already hides on read do not stay: it
//! reads the topic's configs back (DescribeConfigs), sets `retention.ms`
//! alone when it differs (IncrementalAlterConfigs, [`admin`] says why by
//! hand), and reads them back again, so what the namespace shows is what
//! the broker holds. A broker that refuses, or keeps another value, is
//! [`KafkaError::Refused`] naming `spec.policies.retention`. Partitions
//! and replication factor are fixed once created (the control plane
//! refuses a change, `prism_proto::backends::kafka::PARTITIONS` says
//! why); they are reported as the broker's metadata has them. The accept
//! window is not pushed: Kafka's `message.timestamp.before.max.ms` would
//! hold direct producers to it too, but only brokers from 3.6 know it
//! (older ones refuse the unknown config, tansu ignores it), and a broker
//! whose clock is behind the gateway's would refuse events the gateway
//! accepted; the gateway refuses late events itself. A topic the plugin had that vanishes (a broker
//! that lost its data) is created again, empty, on next use; one it never
//! had is `NotProvisioned`.

pub mod admin;
pub mod codec;
pub mod config;
pub mod error;
mod follow;
pub mod ts;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use prism_plugin_api::ts::TimeSeries;
use prism_plugin_api::{BackendSetting, Capabilities, Micros, Namespace, Plugin, PluginError, PluginSettings};
use prism_proto::control::Backend;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::BaseConsumer;
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::types::RDKafkaErrorCode;

pub use config::{KafkaPluginConfig, NamespaceSettings};
pub use error::{KafkaError, Result};

/// Opens the plugin for a gateway (its line in the gateway's `REGISTERED`)
/// with this crate's defaults: none of the gateway's settings applies to
/// Kafka yet (its timeouts are its own and shorter than a request's; it
/// stores no values and speaks no TLS). Opens no connection.
pub fn open(_settings: &PluginSettings) -> prism_plugin_api::Result<Arc<dyn Plugin>> {
    let plugin = KafkaPlugin::new(KafkaPluginConfig::default())
        .map_err(|e| PluginError::internal("cannot set up the kafka backend", e))?;
    Ok(Arc::new(plugin))
}

/// The kafka backend plugin. Cheap to share behind an `Arc`.
pub struct KafkaPlugin {
    /// Shared with every namespace opened on the plugin.
    kafka: Arc<Kafka>,
}

/// The plugin's clients and what it knows of its topics.
pub(crate) struct Kafka {
    config: KafkaPluginConfig,
    /// Clients per broker list (`bootstrap.servers`).
    clients: Mutex<HashMap<String, Arc<Clients>>>,
    /// Topics this plugin has provisioned or found, by name.
    topics: Mutex<HashMap<String, TopicState>>,
    /// Per topic, the retention cutoff of the last [`TimeSeriesHandle::reclaim`](prism_plugin_api::ts::TimeSeriesHandle::reclaim):
    /// events older are hidden from reads at once, whatever clock a read
    /// passes, while the broker removes them by `retention.ms` (see
    /// [`ts`]).
    floors: Mutex<HashMap<String, Micros>>,
    /// Messages whose send failed (metrics: [`Plugin::client_stats`]).
    send_errors: std::sync::atomic::AtomicU64,
    /// The readers following each topic for tails (`follow`), stopped and
    /// awaited before the topic is deleted.
    followers: follow::Followers,
}

impl std::fmt::Debug for KafkaPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Clients hold broker addresses: not for logs.
        f.debug_struct("KafkaPlugin").field("config", &self.kafka.config).finish_non_exhaustive()
    }
}

/// What the plugin knows of one topic.
#[derive(Debug, Clone, Copy)]
struct TopicState {
    partitions: i32,
    /// Seen in the broker's metadata since the last failure. A topic not
    /// verified is looked up before use; if it is gone (a broker that lost
    /// its data, an operator), it is created again empty, because this
    /// plugin provisioned or served it and the namespace is still alive.
    verified: bool,
}

/// The clients of one broker list.
pub(crate) struct Clients {
    pub(crate) bootstrap: String,
    /// Replaced when librdkafka reports a fatal error (an idempotent
    /// producer whose broker lost its producer state, say).
    producer: Mutex<Arc<FutureProducer>>,
    pub(crate) admin: AdminClient<DefaultClientContext>,
}

/// Locks a map that no panic can leave half-updated (every critical
/// section is one insert, remove or swap), so a poisoned lock is usable.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn ms(d: Duration) -> String {
    d.as_millis().max(1).to_string()
}

impl Clients {
    fn new(bootstrap: &str, config: &KafkaPluginConfig) -> Result<Self> {
        let admin = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("socket.timeout.ms", ms(config.request_timeout.max(Duration::from_millis(10))))
            .create()
            .map_err(KafkaError::client("create an admin client"))?;
        Ok(Self {
            bootstrap: bootstrap.to_owned(),
            producer: Mutex::new(Arc::new(Self::producer(bootstrap, config)?)),
            admin,
        })
    }

    fn producer(bootstrap: &str, config: &KafkaPluginConfig) -> Result<FutureProducer> {
        ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            // Every message is on every in-sync replica before a write
            // returns, and a retried batch is never stored twice.
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", ms(config.message_timeout))
            .set("linger.ms", ms(config.linger))
            .set("message.max.bytes", config::MAX_MESSAGE_BYTES.to_string())
            // A topic appears only by provisioning, never by a write.
            .set("allow.auto.create.topics", "false")
            .create()
            .map_err(KafkaError::client("create a producer"))
    }

    pub(crate) fn producer_now(&self) -> Arc<FutureProducer> {
        lock(&self.producer).clone()
    }

    /// Replaces `used` after a failed write, unless another write has
    /// already replaced it. Not only after a fatal error: an idempotent
    /// producer whose broker came back without its state (a restart that
    /// lost the log, a topic created again) can keep timing out on its old
    /// producer id and sequence numbers instead of failing fatally; a
    /// fresh producer starts clean. Writes still holding the old one
    /// finish (or time out) on it.
    pub(crate) fn after_failure(&self, used: &Arc<FutureProducer>, config: &KafkaPluginConfig) {
        if let Some((code, reason)) = used.client().fatal_error() {
            tracing::warn!(?code, %reason, "kafka producer failed fatally");
        }
        let mut current = lock(&self.producer);
        if !Arc::ptr_eq(&current, used) {
            return;
        }
        match Self::producer(&self.bootstrap, config) {
            Ok(fresh) => *current = Arc::new(fresh),
            Err(error) => tracing::error!(%error, "cannot make a new kafka producer"),
        }
    }

    /// A new reader. Readers are not reused: a reused one can still hold
    /// fetched messages and end-of-partition events of its previous
    /// assignment, and closing one after each read makes sure no fetch of
    /// it is in flight when its topic is deleted (tansu answers such a
    /// fetch with leader hints that librdkafka 2.12 crashes on).
    pub(crate) fn reader(&self, config: &KafkaPluginConfig) -> Result<BaseConsumer> {
        ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            // Readers are assigned partitions and offsets; they never join
            // a group or commit, but librdkafka wants a group id.
            .set("group.id", "prism-reader")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // A read ends at each partition's end as the fetches see it:
            // some brokers' (tansu's) ListOffsets "latest" lags behind.
            .set("enable.partition.eof", "true")
            .set("allow.auto.create.topics", "false")
            .set("isolation.level", "read_uncommitted")
            .set("fetch.wait.max.ms", "10")
            .set("max.partition.fetch.bytes", config::MAX_MESSAGE_BYTES.to_string())
            .set("fetch.max.bytes", (2 * config::MAX_MESSAGE_BYTES).to_string())
            .set("receive.message.max.bytes", (2 * config::MAX_MESSAGE_BYTES + 4096).to_string())
            .set("socket.timeout.ms", ms(config.request_timeout.max(Duration::from_millis(10))))
            .create()
            .map_err(KafkaError::client("create a reader"))
    }
}

impl KafkaPlugin {
    /// Validates `config`. Opens no connection.
    pub fn new(config: KafkaPluginConfig) -> Result<Self> {
        config.validate()?;
        let kafka = Kafka {
            config,
            clients: Mutex::default(),
            topics: Mutex::default(),
            floors: Mutex::default(),
            send_errors: Default::default(),
            followers: follow::Followers::default(),
        };
        Ok(Self { kafka: Arc::new(kafka) })
    }

    pub fn config(&self) -> &KafkaPluginConfig {
        &self.kafka.config
    }
}

impl Kafka {
    /// The clients of `settings`' brokers, made (without connecting) if
    /// needed.
    pub(crate) fn clients(&self, settings: &NamespaceSettings) -> Result<Arc<Clients>> {
        if let Some(clients) = lock(&self.clients).get(&settings.bootstrap) {
            return Ok(clients.clone());
        }
        let made = Arc::new(Clients::new(&settings.bootstrap, &self.config)?);
        Ok(lock(&self.clients).entry(settings.bootstrap.clone()).or_insert(made).clone())
    }

    fn admin_options(&self) -> AdminOptions {
        AdminOptions::new()
            .request_timeout(Some(self.config.request_timeout))
            .operation_timeout(Some(self.config.request_timeout))
    }

    /// Runs one admin request (`call` given [`Self::admin_options`]),
    /// bounded by twice the request timeout (librdkafka's own bound is
    /// the request and then the operation), errors named `what`.
    async fn admin<T, F>(&self, what: &'static str, call: impl FnOnce(AdminOptions) -> F) -> Result<T>
    where
        F: std::future::Future<Output = rdkafka::error::KafkaResult<T>>,
    {
        tokio::time::timeout(self.config.request_timeout * 2, call(self.admin_options()))
            .await
            .map_err(|_| KafkaError::Timeout(what))?
            .map_err(KafkaError::client(what))
    }

    /// The partitions of `topic` as the brokers say; `None` when it does
    /// not exist.
    async fn lookup(&self, clients: &Arc<Clients>, topic: &str) -> Result<Option<i32>> {
        let clients = clients.clone();
        let topic = topic.to_owned();
        let timeout = self.config.request_timeout;
        let metadata = tokio::task::spawn_blocking(move || {
            clients.admin.inner().fetch_metadata(Some(&topic), timeout).map(|m| {
                m.topics()
                    .iter()
                    .find(|t| t.name() == topic)
                    .filter(|t| t.error().is_none() && !t.partitions().is_empty())
                    .map(|t| t.partitions().len() as i32)
            })
        })
        .await
        .map_err(|_| KafkaError::Timeout("metadata lookup"))?;
        metadata.map_err(KafkaError::client("fetch metadata"))
    }

    /// Creates the topic of `ns` (an existing one is fine) and waits until
    /// the brokers list it; returns its partitions.
    async fn create_topic(&self, ns: &Namespace, settings: &NamespaceSettings, clients: &Arc<Clients>) -> Result<i32> {
        let topic = codec::topic(ns);
        let retention = settings.retention_ms();
        let max_bytes = (config::MAX_MESSAGE_BYTES + 1024).to_string();
        let new = NewTopic::new(&topic, settings.partitions, TopicReplication::Fixed(settings.replication))
            .set("retention.ms", &retention)
            .set("max.message.bytes", &max_bytes)
            // Whole segments are what retention drops: an hour each keeps
            // the events past retention that linger small.
            .set("segment.ms", "3600000")
            .set("message.timestamp.type", "CreateTime");
        let created = self
            .admin("create topic", |options| async move { clients.admin.create_topics([&new], &options).await })
            .await?;
        for result in created {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, code)) => return Err(KafkaError::admin_op("create topic", code)),
            }
        }
        // Creation is asynchronous on some brokers: wait (bounded) until
        // the metadata lists the topic, so the first write finds it.
        let deadline = tokio::time::Instant::now() + self.config.request_timeout;
        let mut pause = Duration::from_millis(5);
        loop {
            if let Some(partitions) = self.lookup(clients, &topic).await? {
                self.remember(&topic, partitions);
                return Ok(partitions);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(KafkaError::Timeout("topic creation"));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    /// The configs of `topic` as the brokers hold them (DescribeConfigs).
    async fn describe(&self, clients: &Arc<Clients>, topic: &str) -> Result<HashMap<String, String>> {
        let resource = ResourceSpecifier::Topic(topic);
        let what = "describe topic configs";
        let described = self
            .admin(what, |options| async move { clients.admin.describe_configs([&resource], &options).await })
            .await?;
        let mut configs = HashMap::new();
        for result in described {
            let resource = result.map_err(|code| KafkaError::admin_op(what, code))?;
            for entry in resource.entries {
                if let Some(value) = entry.value {
                    configs.insert(entry.name, value);
                }
            }
        }
        Ok(configs)
    }

    /// Makes the topic's `retention.ms` the namespace's and returns what
    /// the broker holds ([`Plugin::apply_policies`]).
    async fn apply(
        &self,
        ns: &Namespace,
        topic: &str,
        settings: &NamespaceSettings,
        clients: &Arc<Clients>,
    ) -> Result<Vec<BackendSetting>> {
        const FIELD: &str = "spec.policies.retention";
        // The topic is there (made again if it vanished from a broker
        // that lost it): a config change to a missing topic would be
        // reported as the broker's refusal.
        let partitions = self.partitions(ns, topic, settings, clients).await?;
        let wanted = settings.retention_ms();
        let mut held = self.describe(clients, topic).await?;
        if held.get("retention.ms") != Some(&wanted) {
            let set = [("retention.ms", wanted.as_str())];
            match admin::set_topic_configs(&settings.bootstrap, topic, &set, self.config.request_timeout).await {
                Ok(()) => {}
                Err(admin::Outcome::Refused(code, message)) => {
                    let message = if message.is_empty() { String::new() } else { format!(" ({message})") };
                    return Err(KafkaError::Refused {
                        field: FIELD.into(),
                        description: format!("the kafka broker refused retention.ms={wanted}: {code}{message}"),
                    });
                }
                Err(admin::Outcome::Failed(e)) => return Err(e),
            }
            held = self.describe(clients, topic).await?;
            tracing::info!(namespace = %ns.name, retention_ms = %wanted, "set the kafka topic's retention.ms");
        }
        let retention = held.get("retention.ms").cloned().unwrap_or_default();
        if retention != wanted {
            return Err(KafkaError::Refused {
                field: FIELD.into(),
                description: format!("the kafka broker holds retention.ms={retention:?} after being sent {wanted}"),
            });
        }
        let deletes = if wanted == "-1" {
            "the broker keeps every event".to_owned()
        } else {
            "the broker deletes events past it, a whole segment (segment.ms) at a time".to_owned()
        };
        let mut shown = vec![
            BackendSetting { name: "partitions".into(), value: partitions.to_string(), detail: String::new() },
            BackendSetting { name: "retention.ms".into(), value: retention, detail: deletes },
        ];
        if let Some(segment) = held.get("segment.ms") {
            shown.push(BackendSetting { name: "segment.ms".into(), value: segment.clone(), detail: String::new() });
        }
        Ok(shown)
    }

    fn remember(&self, topic: &str, partitions: i32) {
        lock(&self.topics).insert(topic.to_owned(), TopicState { partitions, verified: true });
    }

    /// After a failure, the topic is looked up again before its next use.
    pub(crate) fn suspect(&self, topic: &str) {
        if let Some(state) = lock(&self.topics).get_mut(topic) {
            state.verified = false;
        }
    }

    /// The partitions of `ns`' topic, checking that it exists (once, and
    /// again after a failure): `NotProvisioned` when it does not and this
    /// plugin never had it; created again when it had it (see
    /// [`TopicState::verified`]).
    pub(crate) async fn partitions(
        &self,
        ns: &Namespace,
        topic: &str,
        settings: &NamespaceSettings,
        clients: &Arc<Clients>,
    ) -> Result<i32> {
        let known = lock(&self.topics).get(topic).copied();
        if let Some(TopicState { partitions, verified: true }) = known {
            return Ok(partitions);
        }
        match (self.lookup(clients, topic).await?, known) {
            (Some(partitions), _) => {
                self.remember(topic, partitions);
                Ok(partitions)
            }
            (None, Some(_)) => {
                tracing::warn!(namespace = %ns.name, "the namespace's kafka topic is gone; creating it again");
                self.create_topic(ns, settings, clients).await
            }
            (None, None) => Err(KafkaError::NotProvisioned(ns.name.clone())),
        }
    }

    pub(crate) fn floor(&self, topic: &str) -> Option<Micros> {
        lock(&self.floors).get(topic).copied()
    }

    pub(crate) fn count_send_errors(&self, n: usize) {
        self.send_errors.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn raise_floor(&self, topic: &str, cutoff: Micros) {
        let mut floors = lock(&self.floors);
        let floor = floors.entry(topic.to_owned()).or_insert(cutoff);
        *floor = (*floor).max(cutoff);
    }
}

#[async_trait]
impl Plugin for KafkaPlugin {
    fn capabilities(&self) -> Capabilities {
        Capabilities { backend: Backend::Kafka, abstractions: prism_proto::capabilities::abstractions(Backend::Kafka) }
    }

    fn client_stats(&self) -> prism_plugin_api::ClientStats {
        // librdkafka's own count: messages and requests queued or in flight
        // to the brokers, not yet acknowledged.
        let queued: i64 =
            lock(&self.kafka.clients).values().map(|c| i64::from(c.producer_now().in_flight_count())).sum();
        prism_plugin_api::ClientStats {
            pools: None,
            producers: Some(prism_plugin_api::ProducerStats {
                queued_messages: u64::try_from(queued).unwrap_or(0),
                send_errors: self.kafka.send_errors.load(std::sync::atomic::Ordering::Relaxed),
            }),
        }
    }

    /// Each incarnation has a topic of its own, and provisioning one
    /// touches no other: `live` changes nothing.
    async fn provision_beside(&self, ns: &Namespace, _live: &[u64]) -> prism_plugin_api::Result<()> {
        let settings = NamespaceSettings::of(ns)?;
        let clients = self.kafka.clients(&settings)?;
        self.kafka.create_topic(ns, &settings, &clients).await?;
        Ok(())
    }

    async fn apply_policies(&self, ns: &Namespace) -> prism_plugin_api::Result<Vec<BackendSetting>> {
        let settings = NamespaceSettings::of(ns)?;
        let clients = self.kafka.clients(&settings)?;
        Ok(self.kafka.apply(ns, &codec::topic(ns), &settings, &clients).await?)
    }

    async fn deprovision(&self, ns: &Namespace) -> prism_plugin_api::Result<()> {
        let settings = NamespaceSettings::of(ns)?;
        let clients = self.kafka.clients(&settings)?;
        let topic = codec::topic(ns);
        // Forget first: a write racing the deletion must not create the
        // topic again.
        lock(&self.kafka.topics).remove(&topic);
        // No reader of ours may have a fetch in flight when the topic
        // goes (librdkafka crashes on tansu's answer to it, see
        // `Clients::reader`).
        self.kafka.followers.stop(&topic, self.kafka.config.request_timeout).await;
        let name = topic.as_str();
        let deleted = self
            .kafka
            .admin("delete topic", |options| async move { clients.admin.delete_topics(&[name], &options).await })
            .await?;
        for result in deleted {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
                Err((_, code)) => return Err(KafkaError::admin_op("delete topic", code).into()),
            }
        }
        lock(&self.kafka.floors).remove(&topic);
        Ok(())
    }

    fn time_series(&self) -> Option<&dyn TimeSeries> {
        Some(self)
    }
}

impl TimeSeries for KafkaPlugin {
    fn open(&self, ns: &Namespace) -> prism_plugin_api::Result<Arc<dyn prism_plugin_api::ts::TimeSeriesHandle>> {
        let settings = NamespaceSettings::of(ns)?;
        let clients = self.kafka.clients(&settings)?;
        let topic = codec::topic(ns);
        Ok(Arc::new(ts::Opened { kafka: self.kafka.clone(), ns: ns.clone(), settings, clients, topic }))
    }
}
