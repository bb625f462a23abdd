//! Following a namespace's topic for its tails
//! ([`TimeSeriesHandle::follow`](prism_plugin_api::ts::TimeSeriesHandle::follow)):
//! a reader of its own, on a blocking thread, assigned every partition at
//! its end and polling from there. So a tail sees every message appended
//! to the topic after it started, whoever produced it: this gateway,
//! another replica, or a producer writing to the topic directly (encoded
//! as [`codec`] says).
//!
//! - **Its place.** `follow` returns once each partition's end (its high
//!   watermark) is known and assigned: a write acknowledged after that is
//!   appended past it. A broker whose "latest" lags behind its log (tansu)
//!   can only make the tail start earlier, with a few older events.
//! - **Order.** Per partition, log order: per series, the order of its
//!   writes. Each message is one event as written, decoded as a read
//!   decodes it, but not merged with other writes of the same identity (a
//!   tail delivers writes; a read merges them, first write wins), its
//!   items in the order written, a key repeated kept once. A message
//!   that is not an event (someone else's producer) is skipped and logged;
//!   a read of it would fail instead.
//! - **Ends.** When the feed is dropped (its last tail left, the
//!   namespace was deleted) the thread sees it at its next poll (≤ 100
//!   ms) and closes its reader. Deprovisioning stops the topic's readers
//!   and waits until they are closed before deleting it: librdkafka
//!   crashes on tansu's answer to a fetch of a deleted topic
//!   ([`Clients::reader`]). That holds for the readers of this gateway;
//!   another replica's closes when its watcher sees the namespace
//!   deleting, and the owner waits a grace second after that delta
//!   before deleting (`gateway/src/background/provision.rs`), so only a
//!   replica whose watch lags by more still races the deletion. When the broker keeps failing for longer
//!   than `request_timeout` with no message in between, the feed ends with
//!   that error rather than waiting silently.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use prism_plugin_api::ts::{Event, Feed};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError as ClientError;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio::sync::{mpsc, oneshot};

use crate::config::KafkaPluginConfig;
use crate::error::{KafkaError, Result};
use crate::{Clients, codec};

/// Batches in flight between the reader's thread and the gateway.
const IN_FLIGHT: usize = 16;
/// Events one batch holds at most.
const BATCH: usize = 256;
/// How long one poll waits: also how soon a dropped feed is noticed.
const POLL: Duration = Duration::from_millis(100);

/// One reader's thread: told to stop by `stop`, gone when `done` says
/// its sender was dropped (after the reader was closed).
struct Follower {
    stop: Arc<AtomicBool>,
    done: oneshot::Receiver<()>,
}

/// The readers following each topic.
#[derive(Default)]
pub(crate) struct Followers(Mutex<HashMap<String, Vec<Follower>>>);

impl Followers {
    /// Registers a reader of `topic`; the thread keeps the sender of
    /// `done` until its reader is closed. Forgets the finished ones.
    fn add(&self, topic: &str, stop: Arc<AtomicBool>) -> oneshot::Sender<()> {
        let (done_tx, done) = oneshot::channel();
        let mut all = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        for followers in all.values_mut() {
            followers.retain_mut(|f| matches!(f.done.try_recv(), Err(oneshot::error::TryRecvError::Empty)));
        }
        all.retain(|_, f| !f.is_empty());
        all.entry(topic.to_owned()).or_default().push(Follower { stop, done });
        done_tx
    }

    /// Stops the readers of `topic` and waits (at most `timeout` each)
    /// until they are closed.
    pub(crate) async fn stop(&self, topic: &str, timeout: Duration) {
        let followers = self.0.lock().unwrap_or_else(PoisonError::into_inner).remove(topic).unwrap_or_default();
        for f in &followers {
            f.stop.store(true, Ordering::Release);
        }
        for f in followers {
            if tokio::time::timeout(timeout + POLL, f.done).await.is_err() {
                tracing::warn!(%topic, "a tail's reader did not close in time");
            }
        }
    }
}

/// Starts following `topic`'s `partitions` partitions from their ends.
pub(crate) async fn follow(
    kafka: &crate::Kafka,
    clients: Arc<Clients>,
    topic: String,
    partitions: i32,
) -> Result<Feed> {
    let config = kafka.config.clone();
    let (ready_tx, ready_rx) = oneshot::channel();
    let (tx, rx) = mpsc::channel(IN_FLIGHT);
    let stop = Arc::new(AtomicBool::new(false));
    let done = kafka.followers.add(&topic, stop.clone());
    tokio::task::spawn_blocking(move || {
        // Dropped last, once the reader is closed.
        let _done = done;
        let reader = match place(&clients, &config, &topic, partitions) {
            Ok(reader) => reader,
            Err(e) => {
                let _ = ready_tx.send(Err(e));
                return;
            }
        };
        if ready_tx.send(Ok(())).is_err() {
            return;
        }
        if let Err(e) = run(&reader, &topic, config.request_timeout, &tx, &stop) {
            let _ = tx.blocking_send(Err(e.into()));
        }
    });
    ready_rx.await.map_err(|_| KafkaError::Timeout("follow"))??;
    Ok(tokio_stream_of(rx))
}

fn tokio_stream_of(mut rx: mpsc::Receiver<prism_plugin_api::Result<Vec<Event>>>) -> Feed {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
}

/// A reader assigned every partition at its current end.
fn place(clients: &Clients, config: &KafkaPluginConfig, topic: &str, partitions: i32) -> Result<BaseConsumer> {
    let reader = clients.reader(config)?;
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions {
        let (_, high) = reader
            .fetch_watermarks(topic, p, config.request_timeout)
            .map_err(KafkaError::client("fetch watermarks"))?;
        assignment.add_partition_offset(topic, p, Offset::Offset(high)).map_err(KafkaError::client("assign"))?;
    }
    reader.assign(&assignment).map_err(KafkaError::client("assign"))?;
    Ok(reader)
}

/// Polls until the feed is dropped or the broker keeps failing.
fn run(
    reader: &BaseConsumer,
    topic: &str,
    timeout: Duration,
    tx: &mpsc::Sender<prism_plugin_api::Result<Vec<Event>>>,
    stop: &AtomicBool,
) -> Result<()> {
    // The next offset wanted per partition: a fetch retried after an
    // error never delivers a message twice.
    let mut next: HashMap<i32, i64> = HashMap::new();
    let mut failing: Option<Instant> = None;
    while !tx.is_closed() && !stop.load(Ordering::Acquire) {
        let mut batch = Vec::new();
        let mut wait = POLL;
        while batch.len() < BATCH {
            match reader.poll(wait) {
                None => break,
                Some(Ok(message)) => {
                    failing = None;
                    wait = Duration::ZERO;
                    let p = message.partition();
                    if message.topic() != topic || next.get(&p).is_some_and(|&n| message.offset() < n) {
                        continue;
                    }
                    next.insert(p, message.offset() + 1);
                    match codec::decode(message.key(), message.payload()) {
                        Ok(mut event) => {
                            // Within one message, too, the first write of
                            // an item key wins, as on read.
                            let mut keys = std::collections::HashSet::new();
                            event.items.retain(|(k, _)| keys.insert(k.clone()));
                            batch.push(event);
                        }
                        Err(error) => {
                            tracing::warn!(%topic, partition = p, offset = message.offset(), %error, "tail skipped a message")
                        }
                    }
                }
                Some(Err(ClientError::PartitionEOF(_))) => {}
                // librdkafka retries; a broker that stays away ends the feed.
                Some(Err(error)) => match failing {
                    Some(since) if since.elapsed() > timeout => return Err(KafkaError::client("follow")(error)),
                    Some(_) => {}
                    None => failing = Some(Instant::now()),
                },
            }
        }
        if !batch.is_empty() && tx.blocking_send(Ok(batch)).is_err() {
            break;
        }
    }
    Ok(())
}
