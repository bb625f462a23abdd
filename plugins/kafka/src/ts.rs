//! TimeSeries on Kafka: writes produce one message per event; reads seek
//! by time and filter.
//!
//! **Writes** go through one idempotent producer per broker list with
//! `acks=all`: `write` returns when every message of the call is
//! acknowledged by all in-sync replicas, and fails (UNAVAILABLE) when one
//! is not within `message_timeout`. Messages of one series go to one
//! partition in call order, so the log order of an event's writes is the
//! order they were made in.
//!
//! **Reads** (`read` of one series reads the one partition it hashes to;
//! `search` reads them all) start, per partition, at the offset of the
//! first message whose timestamp (the event time, in ms, rounded down) is
//! at or after the oldest time the read may return (`offsets_for_times`),
//! and end at the end of the partition as the fetch sees it (librdkafka's
//! end-of-partition event). Kafka answers the seek exactly even though
//! event times arrive out of order within the accept window: its time
//! index finds the first message at or after a time, so no event at or
//! after it lies before. A broker that answers with something earlier
//! (tansu answers with the log start) only costs reading more, since every
//! message is filtered by time, series and tags anyway. Each read has a
//! reader (consumer) of its own, assigned its partitions and closed
//! afterwards: nothing is committed, no group is joined.
//!
//! The end of a read is the end of the log and not the first message
//! written more than `accept_limit` after the newest time wanted: that
//! bound would hold only if every writer kept to the gateway's accept
//! window, and the plugin contract does not promise it (the conformance
//! suite writes events days old). Reading the last hour — the common
//! read — costs the messages written since about an hour ago either way.
//!
//! Then the events are merged in log order (the **first** write of an item
//! key wins, as the identity `(series, time, event id, key)` demands; an
//! event's tags are its first write's), sorted newest first, cut at the
//! cursor and paged as [`prism_plugin_api::ts`] says. Each page reads its
//! window again: pages are not cached.
//!
//! **Deadlines** ([`prism_plugin_api::pace`]): the log is read in write
//! order, and an event read last may be the newest, so no page can be cut
//! before the scan ends. The scan is one unsplittable step; it polls its
//! caller's hard deadline and cancellation (it runs on a blocking thread,
//! which a dropped future would not stop) and gives up past it. Once it
//! has ended, the page ends early, between events, past the soft deadline.
//! Reading a log backwards in time slices (a seek by time per slice, each
//! slice's events complete before the next) would let a long scan end a
//! page early too, on brokers whose time index answers a seek exactly;
//! tansu answers every seek with the log start, so there it would read
//! everything in its first slice anyway.
//!
//! **Retention** is enforced on read (`now - retention`), by the topic's
//! `retention.ms` (the broker drops whole segments, Kafka's time
//! partitions), and by [`TimeSeriesHandle::reclaim`], which raises this
//! gateway's floor so reclaimed events stay hidden whatever clock a read
//! passes. Kafka cannot delete single messages, and `DeleteRecords` (a
//! prefix) is not offered by every broker, so nothing is deleted earlier
//! than the broker's segment retention; `reclaim` returns 0 for that
//! reason.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::future::join_all;
use prism_plugin_api::kv::PageLimits;
use prism_plugin_api::pace::{CancelOnDrop, Pace};
use prism_plugin_api::ts::{
    Event, EventCursor, EventsPage, ExportPage, Feed, Query, TagFilter, TimeSeriesHandle, WriteContext,
};
use prism_plugin_api::{Micros, Namespace};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError as ClientError;
use rdkafka::message::Message;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::util::Timeout;

use crate::config::{KafkaPluginConfig, MAX_MESSAGE_BYTES, NamespaceSettings};
use crate::error::{KafkaError, Result};
use crate::{Clients, Kafka, codec};

/// One message as read: its key and value.
type Raw = (Option<Vec<u8>>, Option<Vec<u8>>);

/// A namespace opened ([`TimeSeries::open`](prism_plugin_api::ts::TimeSeries::open)):
/// its settings, its brokers' clients and its topic, worked out once.
pub(crate) struct Opened {
    pub(crate) kafka: Arc<Kafka>,
    /// What the topic is made from if it has to be made again.
    pub(crate) ns: Namespace,
    pub(crate) settings: NamespaceSettings,
    pub(crate) clients: Arc<Clients>,
    pub(crate) topic: String,
}

impl Opened {
    /// The topic's partition count, checking that it exists.
    async fn partitions(&self) -> Result<i32> {
        self.kafka.partitions(&self.ns, &self.topic, &self.settings, &self.clients).await
    }

    /// The page `q` selects: a read of one series reads its one partition.
    async fn query_topic(&self, q: &Query, now: Micros) -> Result<EventsPage> {
        let pace = q.limits.pace();
        pace.check().map_err(KafkaError::GaveUp)?;
        let partitions = self.partitions().await?;
        let topic = &self.topic;
        let Some((mut oldest, newest)) = q.window(now, self.settings.retention) else {
            return Ok(EventsPage::default());
        };
        if let Some(floor) = self.kafka.floor(topic) {
            oldest = oldest.max(floor);
        }
        if oldest > newest {
            return Ok(EventsPage::default());
        }
        let wanted: Vec<i32> = match q.series.as_deref() {
            Some(series) => vec![codec::partition(series, partitions)],
            None => (0..partitions).collect(),
        };
        let scan = Scan { topic: topic.clone(), partitions: wanted, oldest_ms: codec::timestamp_ms(oldest) };
        let config = self.kafka.config.clone();
        let reader_clients = self.clients.clone();
        // The scan runs on a blocking thread: dropping this future (the
        // request was cancelled or cut off) raises the flag it polls.
        let (_guard, cancelled) = CancelOnDrop::new();
        let scan_pace = pace.cancelled_by(cancelled);
        let raw = tokio::task::spawn_blocking(move || scan.run(&reader_clients, &config, &scan_pace))
            .await
            .map_err(|_| KafkaError::Timeout("read"))?;
        let raw = match raw {
            Ok(raw) => raw,
            Err(e @ KafkaError::GaveUp(_)) => return Err(e),
            Err(e) => {
                self.kafka.suspect(topic);
                return Err(e);
            }
        };
        let events = merge(raw, q.series.as_deref(), (oldest, newest))?;
        Ok(page(events, q.filter.as_ref(), q.after.as_ref(), q.limits))
    }
}

impl Opened {
    async fn export_topic(&self, after: Option<&[u8]>, limits: PageLimits, now: Micros) -> Result<ExportPage> {
        let pace = limits.pace();
        pace.check().map_err(KafkaError::GaveUp)?;
        let partitions = usize::try_from(self.partitions().await?).unwrap_or_default();
        let next = match after {
            None => vec![Some(FROM_THE_START); partitions],
            Some(bytes) => ExportCursor::decode(bytes, partitions)
                .ok_or_else(|| KafkaError::invalid("cursor", "is not an export cursor of this namespace's topic"))?,
        };
        let export =
            Export { topic: self.topic.clone(), next, max: limits.max_items.map_or(usize::MAX, |m| m as usize) };
        let (config, clients) = (self.kafka.config.clone(), self.clients.clone());
        let (_guard, cancelled) = CancelOnDrop::new();
        let export_pace = pace.cancelled_by(cancelled);
        let read = tokio::task::spawn_blocking(move || {
            let reader = clients.reader(&config)?;
            export.read(&reader, config.request_timeout, &export_pace)
        })
        .await
        .map_err(|_| KafkaError::Timeout("export"))?;
        let (raw, next) = match read {
            Ok(read) => read,
            Err(e @ KafkaError::GaveUp(_)) => return Err(e),
            Err(e) => {
                self.kafka.suspect(&self.topic);
                return Err(e);
            }
        };
        // Retention as a read applies it: at `now`, and this gateway's
        // floor (what `reclaim` hid).
        let mut oldest = self.settings.retention.map_or(Micros::MIN, |r| now.saturating_sub(r));
        if let Some(floor) = self.kafka.floor(&self.topic) {
            oldest = oldest.max(floor);
        }
        let mut events = Vec::with_capacity(raw.len());
        for (key, value) in raw {
            let event = codec::decode(key.as_deref(), value.as_deref())?;
            if event.event_time >= oldest {
                events.push(event);
            }
        }
        let next = next.iter().any(Option::is_some).then(|| ExportCursor::encode(&next));
        Ok(ExportPage { events, next })
    }
}

/// An export cursor's offset of a partition not read yet: its start.
const FROM_THE_START: i64 = -1;

/// How long an export waits with nothing from the broker before it seeks
/// the partitions it has not heard from further back ([`Export::read`]).
const QUIET: Duration = Duration::from_millis(500);

/// Where an export goes on, per partition in order: the next offset to
/// read ([`FROM_THE_START`] before the first), or `None` once read to its
/// end. As bytes: `K`, then per partition a LEB128 number, the offset + 2
/// (0: at its end; 1: from the start), so a topic of the most partitions
/// (1024) at offsets below 2^42 takes 6 KiB and a byte.
struct ExportCursor;

impl ExportCursor {
    fn encode(next: &[Option<i64>]) -> Vec<u8> {
        let mut out = vec![b'K'];
        for n in next {
            let mut v = n.map_or(0, |o| (o.max(FROM_THE_START) + 2) as u64);
            loop {
                let byte = (v & 0x7f) as u8;
                v >>= 7;
                if v == 0 {
                    out.push(byte);
                    break;
                }
                out.push(byte | 0x80);
            }
        }
        out
    }

    /// The cursor of a topic of `partitions` partitions; a topic that
    /// gained partitions since reads the new ones from their start.
    /// `None` when `bytes` are not a cursor of it.
    fn decode(bytes: &[u8], partitions: usize) -> Option<Vec<Option<i64>>> {
        let mut rest = bytes.strip_prefix(b"K")?;
        let mut next = Vec::new();
        while !rest.is_empty() {
            let (mut v, mut shift) = (0u64, 0u32);
            loop {
                let (&byte, tail) = rest.split_first()?;
                rest = tail;
                if shift > 56 {
                    return None;
                }
                v |= u64::from(byte & 0x7f) << shift;
                shift += 7;
                if byte & 0x80 == 0 {
                    break;
                }
            }
            next.push(match v {
                0 => None,
                v => Some(i64::try_from(v).ok()? - 2),
            });
        }
        if next.len() > partitions {
            return None;
        }
        next.resize(partitions, Some(FROM_THE_START));
        Some(next)
    }
}

/// One page of an export: from each partition's cursor, messages in the
/// order the fetches bring them, until `max` or every partition's end.
struct Export {
    topic: String,
    next: Vec<Option<i64>>,
    max: usize,
}

impl Export {
    /// Blocking, as [`Scan::read`]: the messages read, and the cursor
    /// after them.
    fn read(mut self, reader: &BaseConsumer, timeout: Duration, pace: &Pace) -> Result<(Vec<Raw>, Vec<Option<i64>>)> {
        let mut assignment = TopicPartitionList::new();
        for (p, next) in self.next.iter().enumerate() {
            let Some(next) = *next else { continue };
            // From the last message read, which exists (skipped below): a
            // fetch at the log's very end gets no answer from some brokers
            // (tansu), neither a message nor its end.
            let offset = if next <= 0 { Offset::Beginning } else { Offset::Offset(next - 1) };
            let p = i32::try_from(p).map_err(|_| KafkaError::invalid("cursor", "has too many partitions"))?;
            assignment.add_partition_offset(&self.topic, p, offset).map_err(KafkaError::client("assign"))?;
        }
        let mut out = Vec::new();
        if assignment.count() == 0 {
            return Ok((out, self.next));
        }
        reader.assign(&assignment).map_err(KafkaError::client("assign"))?;
        // Per partition: whether its first message showed the fetch
        // started at or before the cursor, and how far back it was last
        // sent. A broker may answer a fetch from inside a batch with the
        // next batch (tansu does), which would skip the rest of that
        // batch, or with nothing at all inside the last one: then the
        // partition is sought further back, eight times as far each
        // time, until a fetch starts at or before the cursor (or at the
        // log's start), and what comes before the cursor is skipped.
        let mut checked = vec![false; self.next.len()];
        let mut back = vec![0i64; self.next.len()];
        let seek_back = |p: usize, want: i64, back: &mut i64| -> Result<()> {
            *back = if *back == 0 { 64 } else { back.saturating_mul(8) };
            let at = Offset::Offset(want.saturating_sub(*back).max(0));
            let partition = i32::try_from(p).map_err(|_| KafkaError::invalid("cursor", "has too many partitions"))?;
            reader.seek(&self.topic, partition, at, timeout).map_err(KafkaError::client("seek"))
        };
        // A partition ends at its end as the fetch sees it (see `Scan`).
        let mut active = assignment.count();
        let (mut idle_since, mut quiet_since) = (Instant::now(), Instant::now());
        while active > 0 && out.len() < self.max {
            pace.check().map_err(KafkaError::GaveUp)?;
            if idle_since.elapsed() > timeout {
                return Err(KafkaError::Timeout("export"));
            }
            // Nothing for a while: a partition still unchecked may be
            // fetching from inside its last batch.
            if quiet_since.elapsed() > QUIET {
                quiet_since = Instant::now();
                for p in 0..self.next.len() {
                    if let Some(want) = self.next[p].filter(|w| *w > 0 && !checked[p] && *w > back[p]) {
                        seek_back(p, want, &mut back[p])?;
                    }
                }
            }
            match reader.poll(Duration::from_millis(100)) {
                None => {}
                Some(Ok(message)) => {
                    let Some(p) = usize::try_from(message.partition()).ok().filter(|p| *p < self.next.len()) else {
                        continue;
                    };
                    let Some(want) = self.next[p] else { continue };
                    if message.topic() != self.topic {
                        continue;
                    }
                    (idle_since, quiet_since) = (Instant::now(), Instant::now());
                    let offset = message.offset();
                    if !checked[p] {
                        let from_the_start = want == FROM_THE_START || (back[p] > 0 && want <= back[p]);
                        if offset > want && !from_the_start {
                            seek_back(p, want, &mut back[p])?;
                            continue;
                        }
                        checked[p] = true;
                    }
                    if want != FROM_THE_START && offset < want {
                        continue;
                    }
                    out.push((message.key().map(<[u8]>::to_vec), message.payload().map(<[u8]>::to_vec)));
                    self.next[p] = Some(offset + 1);
                }
                Some(Err(ClientError::PartitionEOF(p))) => {
                    (idle_since, quiet_since) = (Instant::now(), Instant::now());
                    if let Some(slot) = usize::try_from(p).ok().and_then(|p| self.next.get_mut(p))
                        && slot.take().is_some()
                    {
                        active -= 1;
                    }
                }
                Some(Err(error)) => tracing::debug!(%error, "kafka export"),
            }
        }
        // A full page may have ended a partition: its end is the next
        // thing the fetch brings, so a page that read to the end says so
        // and the walk needs no page more (a message seen here is not
        // taken: the next page reads it).
        let peek_until = Instant::now() + Duration::from_millis(100);
        while active > 0 && Instant::now() < peek_until {
            match reader.poll(Duration::from_millis(10)) {
                Some(Err(ClientError::PartitionEOF(p))) => {
                    if let Some(slot) = usize::try_from(p).ok().and_then(|p| self.next.get_mut(p))
                        && slot.take().is_some()
                    {
                        active -= 1;
                    }
                }
                Some(Ok(_)) => break,
                _ => {}
            }
        }
        Ok((out, self.next))
    }
}

#[async_trait]
impl TimeSeriesHandle for Opened {
    async fn write(&self, events: &[Event]) -> prism_plugin_api::Result<()> {
        self.write_with(events, &WriteContext::default()).await
    }

    async fn write_with(&self, events: &[Event], context: &WriteContext) -> prism_plugin_api::Result<()> {
        let partitions = self.partitions().await?;
        let (topic, config) = (&self.topic, &self.kafka.config);
        let payloads: Vec<Vec<u8>> = events.iter().map(codec::encode).collect();
        if let Some(i) =
            payloads.iter().zip(events).position(|(p, e)| p.len() + e.time_series_id.len() > MAX_MESSAGE_BYTES)
        {
            return Err(KafkaError::invalid(
                format!("events[{i}]"),
                format!("is larger than the kafka backend's {MAX_MESSAGE_BYTES} bytes"),
            )
            .into());
        }
        let producer = self.clients.producer_now();
        // The trace context as record headers (`traceparent`,
        // `tracestate`), the names OpenTelemetry's Kafka instrumentations
        // read.
        let headers = context.headers().fold(None::<OwnedHeaders>, |headers, (key, value)| {
            Some(headers.unwrap_or_default().insert(Header { key, value: Some(value) }))
        });
        let sends = events.iter().zip(&payloads).map(|(event, payload)| {
            let mut record = FutureRecord::to(topic)
                .key(event.time_series_id.as_bytes())
                .payload(payload.as_slice())
                .partition(codec::partition(&event.time_series_id, partitions))
                .timestamp(codec::timestamp_ms(event.event_time));
            if let Some(headers) = &headers {
                record = record.headers(headers.clone());
            }
            producer.send(record, Timeout::After(config.message_timeout))
        });
        let results = join_all(sends).await;
        let failed = results.iter().filter(|r| r.is_err()).count();
        if failed > 0 {
            self.kafka.count_send_errors(failed);
        }
        if let Some(Err((error, _))) = results.into_iter().find(Result::is_err) {
            self.kafka.suspect(topic);
            self.clients.after_failure(&producer, config);
            tracing::debug!(namespace = %self.ns.name, %error, "kafka write failed");
            return Err(KafkaError::client("produce")(error).into());
        }
        Ok(())
    }

    async fn query(&self, query: &Query, now: Micros) -> prism_plugin_api::Result<EventsPage> {
        Ok(self.query_topic(query, now).await?)
    }

    /// The log itself, partition by partition from its start, a page of
    /// messages at a time ([`Export`]): each page reads only what it
    /// returns, where a query would read the log from the window's start
    /// again.
    async fn export(
        &self,
        after: Option<&[u8]>,
        limits: PageLimits,
        now: Micros,
    ) -> prism_plugin_api::Result<ExportPage> {
        Ok(self.export_topic(after, limits, now).await?)
    }

    fn follows(&self) -> bool {
        true
    }

    /// Every message appended from now on ([`crate::follow`]).
    async fn follow(&self) -> prism_plugin_api::Result<Feed> {
        let partitions = self.partitions().await?;
        Ok(crate::follow::follow(&self.kafka, self.clients.clone(), self.topic.clone(), partitions).await?)
    }

    async fn reclaim(&self, now: Micros) -> prism_plugin_api::Result<u64> {
        self.partitions().await?;
        if let Some(r) = self.settings.retention {
            self.kafka.raise_floor(&self.topic, now.saturating_sub(r));
        }
        Ok(0)
    }
}

/// The messages of some partitions of a topic from a time on.
struct Scan {
    topic: String,
    partitions: Vec<i32>,
    oldest_ms: i64,
}

impl Scan {
    /// Blocking: runs on the blocking pool, with a reader of its own,
    /// closed at the end.
    fn run(&self, clients: &Clients, config: &KafkaPluginConfig, pace: &Pace) -> Result<Vec<Raw>> {
        let reader = clients.reader(config)?;
        self.read(&reader, config.request_timeout, pace)
    }

    /// Every message from the seek to the end. `pace` is asked before
    /// every poll: the scan stops when its caller dropped it or its hard
    /// deadline passed (its soft one cannot end it: see the module docs).
    fn read(&self, reader: &BaseConsumer, timeout: Duration, pace: &Pace) -> Result<Vec<Raw>> {
        let gave_up = || pace.check().map_err(KafkaError::GaveUp);
        // Where each partition ends now, and where it starts.
        let mut ends: HashMap<i32, (i64, i64)> = HashMap::new();
        for &p in &self.partitions {
            let (low, high) =
                reader.fetch_watermarks(&self.topic, p, timeout).map_err(KafkaError::client("fetch watermarks"))?;
            if high > low {
                ends.insert(p, (low, high));
            }
        }
        if ends.is_empty() {
            return Ok(Vec::new());
        }
        let mut starts: HashMap<i32, i64> = ends.iter().map(|(&p, &(low, _))| (p, low)).collect();
        if self.oldest_ms > 0 {
            let mut seek = TopicPartitionList::new();
            for &p in ends.keys() {
                seek.add_partition_offset(&self.topic, p, Offset::Offset(self.oldest_ms))
                    .map_err(KafkaError::client("offsets for times"))?;
            }
            let found = reader.offsets_for_times(seek, timeout).map_err(KafkaError::client("offsets for times"))?;
            for element in found.elements() {
                let Some(start) = starts.get_mut(&element.partition()) else { continue };
                match element.offset() {
                    // Nothing at or after the time: nothing to read.
                    Offset::End => *start = i64::MAX,
                    Offset::Offset(o) => *start = (*start).max(o),
                    _ => {}
                }
            }
        }
        // `next` is the next offset wanted per partition still being read.
        let mut next: HashMap<i32, i64> = HashMap::new();
        let mut assignment = TopicPartitionList::new();
        for (&p, &(_, high)) in &ends {
            let start = starts.get(&p).copied().unwrap_or(0);
            if start < high {
                next.insert(p, start);
                assignment
                    .add_partition_offset(&self.topic, p, Offset::Offset(start))
                    .map_err(KafkaError::client("assign"))?;
            }
        }
        let mut out = Vec::new();
        if next.is_empty() {
            return Ok(out);
        }
        reader.assign(&assignment).map_err(KafkaError::client("assign"))?;
        // A partition is done at its end as the fetch sees it (the
        // end-of-partition event), not at the watermark read above: a
        // message appended since is only newer, and tansu's "latest"
        // offset lags behind its log. The timeout bounds the wait for the
        // next message or event, not the read: a long read that makes
        // progress goes on.
        let mut idle_since = Instant::now();
        while !next.is_empty() {
            gave_up()?;
            if idle_since.elapsed() > timeout {
                return Err(KafkaError::Timeout("read"));
            }
            match reader.poll(Duration::from_millis(100)) {
                None => {}
                Some(Ok(message)) => {
                    let p = message.partition();
                    let Some(&want) = next.get(&p) else { continue };
                    if message.topic() != self.topic || message.offset() < want {
                        continue;
                    }
                    idle_since = Instant::now();
                    out.push((message.key().map(<[u8]>::to_vec), message.payload().map(<[u8]>::to_vec)));
                    next.insert(p, message.offset() + 1);
                }
                Some(Err(ClientError::PartitionEOF(p))) => {
                    idle_since = Instant::now();
                    next.remove(&p);
                }
                // Fetch errors while a broker is away: librdkafka retries;
                // the idle timeout decides when to give up.
                Some(Err(error)) => tracing::debug!(%error, "kafka read"),
            }
        }
        Ok(out)
    }
}

/// The events of `raw` (in log order) within `[oldest, newest]` (and of
/// `series`, for a read), merged by identity: the first write of an item
/// key wins.
fn merge(raw: Vec<Raw>, series: Option<&str>, (oldest, newest): (Micros, Micros)) -> Result<Vec<Event>> {
    let mut events: Vec<Event> = Vec::new();
    let mut index: HashMap<(String, Micros, String), usize> = HashMap::new();
    for (key, value) in raw {
        if let (Some(series), Some(key)) = (series, &key)
            && key.as_slice() != series.as_bytes()
        {
            continue;
        }
        let event = codec::decode(key.as_deref(), value.as_deref())?;
        if event.event_time < oldest || event.event_time > newest {
            continue;
        }
        let identity = (event.time_series_id.clone(), event.event_time, event.event_id.clone());
        match index.get(&identity) {
            Some(&i) => {
                let merged = &mut events[i];
                for (k, v) in event.items {
                    if !merged.items.iter().any(|(have, _)| *have == k) {
                        merged.items.push((k, v));
                    }
                }
            }
            None => {
                let mut first = Event { items: Vec::with_capacity(event.items.len()), ..event.clone() };
                for (k, v) in event.items {
                    if !first.items.iter().any(|(have, _)| *have == k) {
                        first.items.push((k, v));
                    }
                }
                index.insert(identity, events.len());
                events.push(first);
            }
        }
    }
    Ok(events)
}

/// The contract's order: newest first, then series, then event id.
fn order(e: &Event) -> (std::cmp::Reverse<Micros>, &str, &str) {
    (std::cmp::Reverse(e.event_time), e.time_series_id.as_str(), e.event_id.as_str())
}

fn event_bytes(e: &Event) -> u64 {
    let items: usize = e.items.iter().map(|(k, v)| k.len() + v.len()).sum();
    let tags: usize = e.tags.iter().map(|(k, v)| k.len() + v.len()).sum();
    (items + tags) as u64
}

/// Filters, orders, cuts after the cursor and pages `events`.
fn page(
    mut events: Vec<Event>,
    filter: Option<&TagFilter>,
    after: Option<&EventCursor>,
    limits: PageLimits,
) -> EventsPage {
    if let Some(filter) = filter {
        events.retain(|e| filter.matches(&e.tags));
    }
    if let Some(c) = after {
        let cut = (std::cmp::Reverse(c.event_time), c.time_series_id.as_str(), c.event_id.as_str());
        events.retain(|e| order(e) > cut);
    }
    events.sort_by(|a, b| order(a).cmp(&order(b)));
    let mut pace = limits.pace();
    let mut bytes = 0_u64;
    let mut taken = 0_usize;
    for e in &events {
        // Past the soft deadline, the page ends before taking another.
        if pace.should_end(taken) {
            break;
        }
        taken += 1;
        pace.added();
        bytes = bytes.saturating_add(event_bytes(e));
        let full = bytes >= limits.max_bytes || limits.max_items.is_some_and(|m| taken >= m as usize);
        if full {
            break;
        }
    }
    let more = taken < events.len();
    events.truncate(taken);
    let next = if more {
        events.last().map(|e| EventCursor {
            event_time: e.event_time,
            time_series_id: e.time_series_id.clone(),
            event_id: e.event_id.clone(),
        })
    } else {
        None
    };
    EventsPage { events, next }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(series: &str, time: Micros, id: &str, items: &[(&str, &str)]) -> Event {
        Event {
            time_series_id: series.into(),
            event_time: time,
            event_id: id.into(),
            items: items.iter().map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec())).collect(),
            tags: Default::default(),
        }
    }

    fn raw(e: &Event) -> Raw {
        (Some(e.time_series_id.as_bytes().to_vec()), Some(codec::encode(e)))
    }

    #[test]
    fn first_write_of_an_item_wins() {
        let writes = [
            ev("s", 5, "e", &[("a", "1"), ("a", "2")]),
            ev("s", 5, "e", &[("a", "3"), ("b", "4")]),
            ev("t", 5, "e", &[("a", "x")]),
            ev("s", 50, "late", &[]),
        ];
        let merged = merge(writes.iter().map(raw).collect(), Some("s"), (0, 10)).expect("merge");
        assert_eq!(merged, vec![ev("s", 5, "e", &[("a", "1"), ("b", "4")])]);
    }

    #[test]
    fn export_cursors_round_trip_and_refuse_what_they_are_not() {
        let next = vec![Some(FROM_THE_START), None, Some(0), Some(127), Some(1 << 40)];
        let bytes = ExportCursor::encode(&next);
        assert_eq!(ExportCursor::decode(&bytes, 5), Some(next.clone()));
        // A topic that gained a partition reads it from its start.
        let mut grown = next.clone();
        grown.push(Some(FROM_THE_START));
        assert_eq!(ExportCursor::decode(&bytes, 6), Some(grown));
        assert_eq!(ExportCursor::decode(&bytes, 4), None, "more partitions than the topic has");
        assert_eq!(ExportCursor::decode(b"X\x01", 1), None);
        assert_eq!(ExportCursor::decode(b"K\x80", 1), None, "a number cut short");
        assert_eq!(ExportCursor::decode(&[b'K', 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f], 1), None);
        assert!(ExportCursor::encode(&vec![Some(1 << 41); 1024]).len() <= (6 << 10) + 1);
    }

    #[test]
    fn pages_stop_at_a_bound() {
        let events: Vec<Event> = (0..5).map(|i| ev("s", i, &i.to_string(), &[("k", "vv")])).collect();
        let p = page(events.clone(), None, None, PageLimits::new(6, None));
        assert_eq!(p.events.iter().map(|e| e.event_time).collect::<Vec<_>>(), [4, 3]);
        assert_eq!(p.next.as_ref().map(|c| c.event_time), Some(3));
        let p = page(events, None, p.next.as_ref(), PageLimits::new(u64::MAX, Some(3)));
        assert_eq!(p.events.iter().map(|e| e.event_time).collect::<Vec<_>>(), [2, 1, 0]);
        assert_eq!(p.next, None);
    }
}
