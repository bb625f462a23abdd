//! Forwarding: a call for a namespace that another shard owns goes to one
//! of the owner's instances, and its answer comes back as the owner gave
//! it — so any gateway is an entry point for every namespace, and a client
//! behind one load-balanced address (or written in any language) needs no
//! routing of its own. On by default (`[gateway.forwarding] enabled`);
//! `--forwarding false` restores the WRONG_SHARD refusal.
//!
//! - **Where the owner comes from.** Authorization finds the namespace in
//!   this gateway's snapshot; when its shard is another, it records the
//!   owner's registered endpoints ([`Destination`]) instead of refusing
//!   with WRONG_SHARD. No extra lookup.
//! - **What travels.** The request as the caller sent it, its
//!   `authorization` header, its trace context (this gateway's request span
//!   as the parent when spans are exported, else the caller's own
//!   `traceparent`), and what is left of its deadline (capped by
//!   `limits.request_timeout_ms`; a tail keeps only the caller's). The
//!   owner authenticates, authorizes, charges quotas and audits as for any
//!   call: forwarding grants nothing. A caller known only by its TLS
//!   client certificate cannot be vouched for and is redirected instead.
//! - **One hop.** A forwarded call carries [`FORWARDED_BY`]; a gateway
//!   that receives one for a namespace it does not own answers UNAVAILABLE
//!   (retryable: the two snapshots disagree while a move propagates)
//!   rather than forwarding again, so nothing loops.
//! - **Replicas.** One lazily connected channel per endpoint, replicas in
//!   turn, an endpoint that could not be reached skipped for a while: the
//!   same rule and pause as `prism-client` ([`Cooldowns`]). A read whose
//!   owner instance could not be reached tries the next instance; a write
//!   is not sent twice (the caller's retry, with its idempotency token,
//!   decides).
//! - **One instance's namespaces.** An embedded namespace is held by one
//!   instance of its shard (its owner store): authorization gives that
//!   instance's endpoint alone, so the shard's other replicas forward to
//!   it too — one hop, as between shards.
//! - **Bounded.** An owner that cannot be reached answers UNAVAILABLE
//!   before the caller's deadline: the attempt gets nine tenths of what
//!   is left, the rest is for the answer to travel back.
//! - **Counted.** `prism_gateway_forwarded_requests_total{rpc,tenant,namespace}`
//!   on the entry gateway says which callers should route directly;
//!   `prism_gateway_forward_failures_total{reason}` what got no answer. The
//!   entry's own request series count the call too, with the owner's code.
//! - **Cost.** One extra loopback round trip through a second gateway
//!   (`docs/benchmarks.md`, "Forwarding"). `prism-client` routes directly
//!   (zero hops); forwarding is its safety net during moves.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prism_client::Tls;
use prism_client::routing::Cooldowns;
use prism_proto::kv::key_value_service_client::KeyValueServiceClient;
use prism_proto::timeseries::time_series_service_client::TimeSeriesServiceClient;
use tonic::transport::Channel;

use crate::call::{Access, Call, Destination, Request, Response};
use crate::error::{GatewayError, Result};
use crate::limits::MAX_MESSAGE_BYTES;
use crate::metrics::GatewayMetrics;

/// The metadata key that marks a forwarded call; its value is the shard of
/// the gateway that forwarded it.
pub const FORWARDED_BY: &str = "prism-forwarded-by";

/// Channels kept at most; past it they are all dropped and reconnected on
/// use (endpoints come and go with instances).
const MAX_CHANNELS: usize = 1024;

#[derive(Debug, Default)]
struct Peers {
    channels: HashMap<String, Channel>,
    /// Round-robin position per shard.
    next: HashMap<String, usize>,
    down: Cooldowns,
}

/// Sends calls to the gateways that own their namespaces.
#[derive(Debug)]
pub struct Forwarder {
    shard_id: String,
    tls: Tls,
    request_timeout: Duration,
    cooldown: Duration,
    metrics: Arc<GatewayMetrics>,
    peers: Mutex<Peers>,
}

impl Forwarder {
    /// `tls` reaches `https://` peers (their CAs, this gateway's client
    /// certificate).
    pub fn new(shard_id: &str, tls: Tls, request_timeout: Duration, metrics: Arc<GatewayMetrics>) -> Self {
        Self {
            shard_id: shard_id.to_owned(),
            tls,
            request_timeout,
            cooldown: prism_client::Options::default().endpoint_cooldown,
            metrics,
            peers: Mutex::default(),
        }
    }

    fn peers(&self) -> std::sync::MutexGuard<'_, Peers> {
        self.peers.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The next instance of `shard` to call, and a channel to it.
    fn pick(&self, shard: &str, endpoints: &[String]) -> Result<(String, Channel)> {
        let mut peers = self.peers();
        let start = peers.next.get(shard).copied().unwrap_or(0);
        let chosen = peers.down.choose(endpoints, start, std::time::Instant::now()).ok_or_else(|| {
            GatewayError::Unavailable(format!("shard {shard} has no live instance to forward to; retry"))
        })?;
        match peers.next.get_mut(shard) {
            Some(next) => *next = chosen + 1,
            None => {
                peers.next.insert(shard.to_owned(), chosen + 1);
            }
        }
        let endpoint = endpoints[chosen].clone();
        drop(peers);
        let channel = self.channel(&endpoint).map_err(|e| match e {
            GatewayError::Unavailable(why) => GatewayError::Unavailable(format!("shard {shard}'s instance {why}")),
            other => other,
        })?;
        Ok((endpoint, channel))
    }

    /// A channel to `endpoint` (a peer's registered endpoint), shared with
    /// the forwarded calls.
    pub fn channel(&self, endpoint: &str) -> Result<Channel> {
        let mut peers = self.peers();
        if let Some(channel) = peers.channels.get(endpoint) {
            return Ok(channel.clone());
        }
        let channel = prism_client::tls::lazy_channel(endpoint, &self.tls)
            .map_err(|e| GatewayError::Unavailable(format!("{endpoint} cannot be reached: {e}")))?;
        if peers.channels.len() >= MAX_CHANNELS {
            peers.channels.clear();
        }
        peers.channels.insert(endpoint.to_owned(), channel.clone());
        Ok(channel)
    }

    fn mark_down(&self, endpoint: &str) {
        let now = std::time::Instant::now();
        let mut peers = self.peers();
        peers.down.purge(now);
        peers.down.mark_down(endpoint, now + self.cooldown);
    }

    fn mark_up(&self, endpoint: &str) {
        self.peers().down.mark_up(endpoint);
    }

    /// Sends `call` to the owner `to` names and relays its answer.
    pub async fn forward(self: Arc<Self>, call: Call, to: Destination) -> Result<Response> {
        let owner = to.entry.shard_id.as_str();
        to.entry.request_series(&self.metrics.namespaces).forwarded(call.request.index());
        if to.endpoints.is_empty() {
            self.metrics.forward_failed(crate::metrics::ForwardFailure::NoInstance);
            return Err(GatewayError::Unavailable(format!(
                "namespace {} is on shard {owner}, which has no live instance (metadata revision {}); retry",
                to.entry.ns.name, to.revision
            )));
        }
        let now = tokio::time::Instant::now();
        let tail = matches!(call.request, Request::Tail(_));
        // What is left of the caller's deadline, and of this gateway's
        // bound on a request (a tail is bounded by its caller only).
        let left = call.deadline.map(|d| d.saturating_duration_since(now));
        let budget = if tail { left } else { Some(left.map_or(self.request_timeout, |l| l.min(self.request_timeout))) };
        let give_up = budget.map(|b| now + b.mul_f64(0.9));
        let metadata = Metadata::of(&call, &self.shard_id)?;
        // Reads may try each instance once; a write goes to one.
        let tries = if call.request.access() == Access::Read { to.endpoints.len() } else { 1 };
        let mut request = Some(call.request);
        for attempt in 1..=tries {
            let Some(this) = (if attempt < tries { request.clone() } else { request.take() }) else { break };
            // Turns are kept per shard, or per owner store for a namespace
            // held by one instance (its one endpoint must not move the
            // shard's turn).
            let (endpoint, channel) = self.pick(to.entry.owner().unwrap_or(owner), &to.endpoints)?;
            let timeout = give_up.map(|at| at.saturating_duration_since(tokio::time::Instant::now()));
            let sent = send(channel, this, &metadata, timeout);
            let answer = match give_up {
                Some(at) => match tokio::time::timeout_at(at, sent).await {
                    Ok(answer) => answer,
                    Err(_) => {
                        self.metrics.forward_failed(crate::metrics::ForwardFailure::Timeout);
                        return Err(GatewayError::Unavailable(format!(
                            "shard {owner} did not answer within the call's deadline ({endpoint}); retry"
                        )));
                    }
                },
                None => sent.await,
            };
            match answer {
                Ok(response) => {
                    self.mark_up(&endpoint);
                    return Ok(response);
                }
                Err(status) => match prism_client::retry::Failure::of(&status) {
                    prism_client::retry::Failure::Unreachable => {
                        tracing::debug!(%endpoint, shard = owner, error = %status, "forwarding: owner unreachable");
                        self.mark_down(&endpoint);
                        if attempt == tries {
                            self.metrics.forward_failed(crate::metrics::ForwardFailure::Unreachable);
                            return Err(GatewayError::Unavailable(format!(
                                "shard {owner} could not be reached ({endpoint}); retry"
                            )));
                        }
                    }
                    // Made here by the transport, not answered by the
                    // owner: the attempt ran out of time.
                    _ if std::error::Error::source(&status).is_some() => {
                        self.metrics.forward_failed(crate::metrics::ForwardFailure::Timeout);
                        return Err(GatewayError::Unavailable(format!(
                            "shard {owner} did not answer within the call's deadline ({endpoint}): {}; retry",
                            status.message()
                        )));
                    }
                    // The owner's answer, whatever it is.
                    _ => return Err(GatewayError::Relayed(status)),
                },
            }
        }
        Err(GatewayError::Internal("forwarding made no attempt".into()))
    }
}

/// The metadata a forwarded call carries.
struct Metadata {
    authorization: Option<tonic::metadata::AsciiMetadataValue>,
    traceparent: Option<(String, Option<String>)>,
    by: tonic::metadata::AsciiMetadataValue,
}

impl Metadata {
    fn of(call: &Call, shard_id: &str) -> Result<Self> {
        let authorization = call
            .authorization
            .as_deref()
            .map(|a| a.parse())
            .transpose()
            .map_err(|_| GatewayError::Unauthenticated("the authorization header is not ASCII".into()))?;
        // This gateway's request span when spans are exported (so the
        // owner's span is its child), else the caller's context unchanged.
        let traceparent = prism_telemetry::trace::traceparent_of(&tracing::Span::current())
            .or_else(|| call.trace.as_ref().map(|t| (t.header(), t.tracestate.clone())));
        let by = shard_id.parse().map_err(|_| GatewayError::Internal("shard id is not ASCII".into()))?;
        Ok(Self { authorization, traceparent, by })
    }

    fn request<T>(&self, message: T, timeout: Option<Duration>) -> tonic::Request<T> {
        use prism_telemetry::trace::{TRACEPARENT, TRACESTATE};
        let mut request = tonic::Request::new(message);
        let m = request.metadata_mut();
        if let Some(a) = &self.authorization {
            m.insert("authorization", a.clone());
        }
        if let Some((parent, state)) = &self.traceparent {
            if let Ok(v) = parent.parse() {
                m.insert(TRACEPARENT, v);
            }
            if let Some(Ok(v)) = state.as_deref().map(str::parse) {
                m.insert(TRACESTATE, v);
            }
        }
        m.insert(FORWARDED_BY, self.by.clone());
        if let Some(t) = timeout {
            request.set_timeout(t);
        }
        request
    }
}

fn kv(channel: Channel) -> KeyValueServiceClient<Channel> {
    KeyValueServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

fn ts(channel: Channel) -> TimeSeriesServiceClient<Channel> {
    TimeSeriesServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// One attempt: the call on `channel`, the owner's answer.
async fn send(
    channel: Channel,
    request: Request,
    metadata: &Metadata,
    timeout: Option<Duration>,
) -> std::result::Result<Response, tonic::Status> {
    Ok(match request {
        Request::Put(r) => Response::Put(kv(channel).put_items(metadata.request(r, timeout)).await?.into_inner()),
        Request::Get(r) => Response::Get(kv(channel).get_items(metadata.request(r, timeout)).await?.into_inner()),
        Request::Delete(r) => {
            Response::Delete(kv(channel).delete_items(metadata.request(r, timeout)).await?.into_inner())
        }
        Request::Mutate(r) => {
            Response::Mutate(kv(channel).mutate_items(metadata.request(r, timeout)).await?.into_inner())
        }
        Request::Scan(r) => Response::Scan(kv(channel).scan_items(metadata.request(r, timeout)).await?.into_inner()),
        Request::WriteSync(r) => {
            Response::Write(ts(channel).write_event_records_sync(metadata.request(r, timeout)).await?.into_inner())
        }
        Request::WriteBuffered(r) => {
            Response::Write(ts(channel).write_event_records(metadata.request(r, timeout)).await?.into_inner())
        }
        Request::Read(r) => {
            Response::Read(ts(channel).read_event_records(metadata.request(r, timeout)).await?.into_inner())
        }
        Request::Search(r) => {
            Response::Search(ts(channel).search_event_records(metadata.request(r, timeout)).await?.into_inner())
        }
        Request::Tail(r) => {
            Response::Tail(Box::pin(ts(channel).tail_event_records(metadata.request(r, timeout)).await?.into_inner()))
        }
    })
}
