//! Following a namespace's data topic for its tails
//! ([`TimeSeriesHandle::follow`](prism_plugin_api::ts::TimeSeriesHandle::follow)):
//! a reader from the latest message, on a connection of its own (through
//! the relay, as every reader: see [`crate::relay`] and `ReaderPool`), so
//! a tail sees every event published after it started — through this
//! gateway, another replica, or a producer publishing to the topic
//! directly, encoded as [`crate::codec`] says, in the current epoch.
//!
//! - **Its place.** `follow` returns once the reader is subscribed, at
//!   the latest position: a write acknowledged after that is delivered.
//! - **Order.** Topic order, each message once ([`crate::Delivered`]
//!   skips what pulsar-lite delivers again). Each message is one event as
//!   written, its items in key order (first write of a key wins within
//!   the message), not merged with other writes of the same identity.
//!   Fences, lifecycle markers and events of another epoch are skipped; a
//!   message that is not ours is logged and skipped.
//! - **Ends.** When the reader fails or the broker ends it, the feed ends
//!   with that error; dropping the feed closes the reader and its
//!   connection.

use std::sync::atomic::Ordering;

use futures_util::{StreamExt, TryStreamExt};
use prism_plugin_api::ts::{Event, Feed};
use pulsar::TokioExecutor;
use pulsar::consumer::{ConsumerOptions, InitialPosition};
use pulsar::reader::Reader;

use crate::codec::{self, record};
use crate::config::Topics;
use crate::error::{PulsarError, Result};
use crate::ts::EPOCH_PROPERTY;
use crate::{Delivered, PulsarState};

/// Starts reading `topics`' data topic from its latest message, keeping
/// the events of `epoch`.
pub(crate) async fn follow(pulsar: &PulsarState, topics: &Topics, epoch: u64) -> Result<Feed> {
    let client = pulsar.connect(&topics.service_url, true).await?;
    let n = pulsar.readers.fetch_add(1, Ordering::Relaxed);
    let name = format!("prism-tail-{:016x}-{n}", pulsar.instance);
    let reader: Reader<Vec<u8>, TokioExecutor> = client
        .reader()
        .with_topic(&topics.data)
        .with_subscription(name.clone())
        .with_consumer_name(name)
        .with_options(ConsumerOptions::default().durable(false).with_initial_position(InitialPosition::Latest))
        .into_reader()
        .await?;
    let topic = topics.data.clone();
    let state = Some((client, reader, Delivered::default()));
    Ok(futures_util::stream::unfold(state, move |state| {
        let topic = topic.clone();
        async move {
            let (client, mut reader, mut delivered) = state?;
            loop {
                let message = match reader.try_next().await {
                    Ok(Some(message)) => message,
                    Ok(None) => {
                        let ended =
                            PulsarError::Client(pulsar::Error::Custom("the broker ended the tail's reader".into()));
                        return Some((Err(ended.into()), None));
                    }
                    Err(e) => return Some((Err(PulsarError::from(e).into()), None)),
                };
                if !delivered.is_new(&message) {
                    continue;
                }
                let epoch_text = epoch.to_string();
                if message.metadata().properties.iter().any(|p| p.key == EPOCH_PROPERTY && p.value != epoch_text) {
                    continue;
                }
                match codec::decode(&message.payload.data) {
                    Ok(record::Body::Event(stored)) if stored.epoch == epoch => {
                        let mut items: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(stored.items.len());
                        for item in stored.items {
                            if !items.iter().any(|(k, _)| *k == item.key) {
                                items.push((item.key, item.value));
                            }
                        }
                        items.sort();
                        let event = Event {
                            time_series_id: stored.time_series_id,
                            event_time: stored.event_time,
                            event_id: stored.event_id,
                            items,
                            tags: stored.tags,
                        };
                        return Some((Ok(vec![event]), Some((client, reader, delivered))));
                    }
                    Ok(_) => {}
                    Err(error) => tracing::warn!(%topic, %error, "tail skipped a message"),
                }
            }
        }
    })
    .boxed())
}
