//! [`Prism`]: one handle to a Prism deployment. It finds the shard that
//! owns each namespace (Watch and/or `ResolveNamespace`), keeps one channel
//! per gateway endpoint, spreads calls over a shard's replicas, follows
//! WRONG_SHARD redirects and retries what is safe to retry.
//!
//! One call, in [`Prism::call`]:
//!
//! 1. route: the routing table's endpoint for the namespace, or ask the
//!    control plane (`ResolveNamespace`) and remember the answer;
//! 2. send on that endpoint's channel;
//! 3. on WRONG_SHARD, the first time: route to the owner the gateway named
//!    and send again at once; after that: forget the route, back off, and
//!    resolve again;
//! 4. on UNAVAILABLE (retryable calls only), or a call the transport
//!    cancelled when its connection closed: if the endpoint could not be
//!    reached, skip it for `endpoint_cooldown`; back off and send again —
//!    the next replica in turn gets it;
//! 5. anything else is the answer.
//!
//! Attempts are bounded by [`RetryPolicy::max_attempts`] and the whole call
//! by [`RetryPolicy::deadline`].
//!
//! # What a caller of a moving namespace sees
//!
//! - **Stale route.** The namespace moved (a shard joined or left): the
//!   call reaches a gateway of the old shard, which forwards it to the new
//!   owner (one hop; a slightly slower call). With forwarding off it
//!   refuses it before doing anything — `FAILED_PRECONDITION` with
//!   `ErrorInfo{reason: WRONG_SHARD, shard_id, endpoints, revision}` — and
//!   the client routes the namespace to the named shard and sends again at
//!   once. A second misroute in the same call means the metadata is still
//!   settling: forget the route, back off, resolve again, within the
//!   call's attempt budget. The caller sees one slower call.
//! - **Killed replica.** The connection fails (`UNAVAILABLE` from the
//!   transport): the endpoint is skipped for `endpoint_cooldown` and the
//!   call goes, after a short jittered pause, to the next replica in turn.
//!   If every replica fails in turn the client resolves again (the shard
//!   may have moved while the watch was away). The caller sees an error
//!   only when the attempts or the deadline run out, and then it is the
//!   last `UNAVAILABLE`.
//! - **Server says UNAVAILABLE** (overloaded, backend down): retried with
//!   backoff like a dead replica, without skipping the endpoint.
//! - **Anything else** (`INVALID_ARGUMENT`, `NOT_FOUND`,
//!   `PERMISSION_DENIED`, `RESOURCE_EXHAUSTED`, …) is the answer, at once.
//!
//! Only UNAVAILABLE (and transport failures) are retried, and only for
//! idempotent calls — every KeyValue and TimeSeries call is, because a
//! KeyValue write without an idempotency token gets one (time + unique
//! token) once per call, before the first attempt, and a TimeSeries event
//! is identified by its contents. A WRONG_SHARD refusal is followed
//! whatever the call (nothing was applied). Tails are routed, never
//! retried once open.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prism_proto::control::ResolveNamespaceRequest;
use prism_proto::control::control_plane_service_client::ControlPlaneServiceClient;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::Status;
use tonic::transport::Channel;

use crate::error::{ClientError, Result};
use crate::kv::Kv;
use crate::retry::{Failure, Misroute, RetryPolicy};
use crate::routing::{Route, RoutingTable, expiry};
use crate::ts::Ts;
use crate::{BearerToken, ControlPlaneClient, MAX_MESSAGE_BYTES, Tls};

/// How a [`Prism`] client behaves; [`Builder`] sets it.
#[derive(Debug, Clone)]
pub struct Options {
    /// Follow the control plane's Watch stream to keep routes current.
    /// Without it (or when the caller may not watch) namespaces are
    /// resolved on demand. Default: on.
    pub watch: bool,
    /// How long a `ResolveNamespace` answer or a redirect is trusted.
    /// Default 30 s.
    pub resolve_ttl: Duration,
    /// How long an endpoint that could not be reached is skipped (while
    /// its shard has others). Default 2 s.
    pub endpoint_cooldown: Duration,
    /// Send calls for namespaces the client has no route for to this
    /// gateway instead of asking the control plane (`prism --gateway`).
    /// Redirects are still followed. Default: none.
    pub gateway: Option<String>,
    pub retry: RetryPolicy,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            watch: true,
            resolve_ttl: Duration::from_secs(30),
            endpoint_cooldown: Duration::from_secs(2),
            gateway: None,
            retry: RetryPolicy::default(),
        }
    }
}

/// Builds a [`Prism`] client.
#[derive(Debug, Clone)]
pub struct Builder {
    control_plane: String,
    token: Option<String>,
    tls: Tls,
    options: Options,
}

impl Builder {
    /// How `https://` endpoints (the control plane's, gateways') are
    /// reached: trusted CAs and a client certificate. Default: the system
    /// CA bundle, no certificate.
    pub fn tls(mut self, tls: Tls) -> Self {
        self.tls = tls;
        self
    }

    /// The bearer token sent to the control plane and every gateway.
    pub fn token(mut self, token: Option<&str>) -> Self {
        self.token = token.map(str::to_owned);
        self
    }

    pub fn watch(mut self, on: bool) -> Self {
        self.options.watch = on;
        self
    }

    pub fn resolve_ttl(mut self, ttl: Duration) -> Self {
        self.options.resolve_ttl = ttl;
        self
    }

    pub fn endpoint_cooldown(mut self, cooldown: Duration) -> Self {
        self.options.endpoint_cooldown = cooldown;
        self
    }

    pub fn gateway(mut self, address: Option<&str>) -> Self {
        self.options.gateway = address.map(str::to_owned);
        self
    }

    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.options.retry = policy;
        self
    }

    pub fn options(mut self, options: Options) -> Self {
        self.options = options;
        self
    }

    /// The client. Connections are made when first used, so this fails
    /// only on a malformed address or token (or outside a tokio runtime).
    pub fn build(self) -> Result<Prism> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| ClientError::NoRuntime)?;
        let auth = BearerToken::new(self.token.as_deref())?;
        let channels = Channels { tls: self.tls, open: Mutex::default() };
        let control_plane =
            ControlPlaneServiceClient::with_interceptor(channels.get(&self.control_plane)?, auth.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let table = Arc::new(Mutex::new(RoutingTable::default()));
        // A fixed gateway is for when the control plane is not to be
        // asked; watching it would contradict that.
        let watch = (self.options.watch && self.options.gateway.is_none()).then(|| {
            let backoff = RetryPolicy { max_backoff: Duration::from_secs(5), ..self.options.retry.clone() };
            WatchTask(runtime.spawn(crate::watch::run(control_plane.clone(), table.clone(), backoff)))
        });
        Ok(Prism {
            inner: Arc::new(Inner { options: self.options, auth, control_plane, table, channels, _watch: watch }),
        })
    }
}

/// Aborts the watch task when the last clone of the client goes.
struct WatchTask(JoinHandle<()>);

impl Drop for WatchTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One lazily connected channel per endpoint: a tonic `Channel` is a
/// cheap handle to one HTTP/2 connection that reconnects by itself.
struct Channels {
    /// For `https://` endpoints.
    tls: Tls,
    open: Mutex<HashMap<String, Channel>>,
}

impl Channels {
    fn get(&self, address: &str) -> Result<Channel> {
        if let Some(c) = self.open.lock().ok().and_then(|m| m.get(address).cloned()) {
            return Ok(c);
        }
        let channel = crate::tls::lazy_channel(address, &self.tls)?;
        if let Ok(mut m) = self.open.lock() {
            return Ok(m.entry(address.to_owned()).or_insert(channel).clone());
        }
        Ok(channel)
    }
}

struct Inner {
    options: Options,
    auth: BearerToken,
    control_plane: ControlPlaneClient,
    table: Arc<Mutex<RoutingTable>>,
    channels: Channels,
    _watch: Option<WatchTask>,
}

/// A client of a Prism deployment. Cheap to clone; clones share routes,
/// connections and the watch.
#[derive(Clone)]
pub struct Prism {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Prism {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prism").field("options", &self.inner.options).finish_non_exhaustive()
    }
}

/// Whether a call may be sent again after it may have reached a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Reads, and writes that apply once however often they are sent.
    Idempotent,
    /// Only misroutes are followed (the gateway refused before doing
    /// anything); any other failure is the answer.
    RedirectsOnly,
}

impl Prism {
    /// A builder for a client of the control plane at `control_plane`
    /// (`host:port` or a URL).
    pub fn builder(control_plane: &str) -> Builder {
        Builder {
            control_plane: control_plane.to_owned(),
            token: None,
            tls: Tls::default(),
            options: Options::default(),
        }
    }

    /// A client with default options.
    pub fn new(control_plane: &str, token: Option<&str>) -> Result<Self> {
        Self::builder(control_plane).token(token).build()
    }

    /// The KeyValue API.
    pub fn kv(&self) -> Kv {
        Kv::new(self.clone())
    }

    /// The TimeSeries API.
    pub fn ts(&self) -> Ts {
        Ts::new(self.clone())
    }

    /// The control plane's admin API, on the client's connection and token.
    pub fn control_plane(&self) -> ControlPlaneClient {
        self.inner.control_plane.clone()
    }

    pub fn options(&self) -> &Options {
        &self.inner.options
    }

    /// The shard the client currently routes `namespace` to, if it has a
    /// route (for diagnostics and tests).
    pub fn cached_shard(&self, namespace: &str) -> Option<String> {
        let t = self.inner.table.lock().ok()?;
        t.shard_of(namespace, Instant::now().into_std()).map(str::to_owned)
    }

    /// Routes `namespace` to `shard_id` at `endpoints` for `resolve_ttl`,
    /// as a redirect would. Meant for tests and tools that know better
    /// than the cache; a wrong route costs one redirect.
    pub fn set_route(&self, namespace: &str, shard_id: &str, endpoints: Vec<String>) {
        let now = Instant::now().into_std();
        let until = expiry(now, self.inner.options.resolve_ttl);
        if let Ok(mut t) = self.inner.table.lock() {
            t.learn_namespace(namespace, shard_id, 0, until);
            t.learn_shard(shard_id, endpoints, until);
        }
    }

    /// The gateway `(shard, endpoint)` that serves `namespace`, asking the
    /// control plane when the table has no current route.
    pub async fn route(&self, namespace: &str) -> Result<Route, Status> {
        let now = Instant::now().into_std();
        if let Some(route) = self.inner.table.lock().ok().and_then(|mut t| t.pick(namespace, now)) {
            return Ok(route);
        }
        let known_shard = self.inner.table.lock().ok().and_then(|t| t.shard_of(namespace, now).map(str::to_owned));
        // The fixed gateway serves what the client knows nothing about; a
        // redirect that named a shard but no endpoints is resolved.
        if let Some(gateway) = &self.inner.options.gateway
            && known_shard.is_none()
        {
            return Ok(Route { shard_id: String::new(), endpoint: gateway.clone() });
        }
        let mut cp = self.inner.control_plane.clone();
        let resolved =
            cp.resolve_namespace(ResolveNamespaceRequest { namespace: namespace.to_owned() }).await?.into_inner();
        if resolved.endpoints.is_empty() {
            return Err(Status::unavailable(format!("no endpoint of shard {} is known", resolved.shard_id)));
        }
        if known_shard.as_deref().is_some_and(|s| s != resolved.shard_id) {
            tracing::debug!(namespace, from = ?known_shard, to = resolved.shard_id, "namespace moved");
        }
        let now = Instant::now().into_std();
        let until = expiry(now, self.inner.options.resolve_ttl);
        let mut t = self.inner.table.lock().map_err(|_| Status::internal("routing table poisoned"))?;
        t.learn_namespace(namespace, &resolved.shard_id, resolved.revision, until);
        // The watch's endpoints (current) win; an older answer or
        // redirect is replaced.
        if !t.watched_shard(&resolved.shard_id) {
            t.learn_shard(&resolved.shard_id, resolved.endpoints.clone(), until);
        }
        Ok(t.pick(namespace, now).unwrap_or(Route {
            shard_id: resolved.shard_id,
            endpoint: resolved.endpoints.first().cloned().unwrap_or_default(),
        }))
    }

    /// A channel to `address` (cached).
    pub fn channel(&self, address: &str) -> Result<Channel> {
        self.inner.channels.get(address)
    }

    pub(crate) fn auth(&self) -> BearerToken {
        self.inner.auth.clone()
    }

    /// Runs one call on `namespace`'s owner with the redirect and retry
    /// rules of the module docs. `send` makes one attempt on a channel; it
    /// is called again for each attempt, so it must send the same request
    /// each time (writes keep their idempotency token).
    pub async fn call<T, F, Fut>(&self, namespace: &str, retry: Retry, mut send: F) -> Result<T>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let policy = &self.inner.options.retry;
        let deadline = Instant::now() + policy.deadline;
        let mut attempts = 0u32;
        let mut retries = 0u32;
        let mut redirected = false;
        loop {
            attempts += 1;
            let attempt = async {
                let route = self.route(namespace).await.map_err(|s| (s, None))?;
                let channel = self.channel(&route.endpoint).map_err(|e| (e.into_status(), None))?;
                match send(channel).await {
                    Ok(r) => Ok((r, route)),
                    Err(s) => Err((s, Some(route))),
                }
            };
            let (status, route) = match tokio::time::timeout_at(deadline, attempt).await {
                Ok(Ok((response, route))) => {
                    if let Ok(mut t) = self.inner.table.lock() {
                        t.mark_up(&route.endpoint);
                    }
                    return Ok(response.into_inner());
                }
                Ok(Err(failed)) => failed,
                Err(_) => {
                    return Err(Status::deadline_exceeded(format!(
                        "no answer for {namespace} within {:?} ({attempts} attempts)",
                        policy.deadline
                    ))
                    .into());
                }
            };
            let failure = Failure::of(&status);
            tracing::debug!(namespace, endpoint = route.as_ref().map(|r| r.endpoint.as_str()), code = ?status.code(), ?failure, attempts, "call failed");
            match failure {
                Failure::Misrouted(m) if !redirected => {
                    redirected = true;
                    self.follow(namespace, &m);
                    if attempts < policy.max_attempts {
                        continue;
                    }
                    return Err(status.into());
                }
                Failure::Misrouted(_) => self.forget(namespace),
                Failure::Unreachable if retry == Retry::Idempotent => {
                    if let Some(route) = &route {
                        let until = Instant::now().into_std() + self.inner.options.endpoint_cooldown;
                        if let Ok(mut t) = self.inner.table.lock() {
                            t.mark_down(&route.endpoint, until);
                        }
                    }
                    // Every replica failing in turn may mean the shard
                    // moved while the watch was away: ask again.
                    if retries >= 1 {
                        self.forget(namespace);
                    }
                }
                Failure::Unavailable if retry == Retry::Idempotent => {}
                Failure::Unreachable | Failure::Unavailable | Failure::Final => return Err(status.into()),
            }
            retries += 1;
            let pause = policy.backoff(retries);
            if attempts >= policy.max_attempts || Instant::now() + pause >= deadline {
                return Err(status.into());
            }
            tokio::time::sleep(pause).await;
        }
    }

    /// Routes `namespace` where a WRONG_SHARD answer said it lives.
    fn follow(&self, namespace: &str, m: &Misroute) {
        let now = Instant::now().into_std();
        let until = expiry(now, self.inner.options.resolve_ttl);
        let Ok(mut t) = self.inner.table.lock() else { return };
        if m.shard_id.is_empty() {
            t.forget_namespace(namespace);
            return;
        }
        tracing::debug!(namespace, shard = m.shard_id, endpoints = ?m.endpoints, "following redirect");
        t.learn_namespace(namespace, &m.shard_id, m.revision, until);
        if !m.endpoints.is_empty() {
            t.learn_shard(&m.shard_id, m.endpoints.clone(), until);
        }
    }

    fn forget(&self, namespace: &str) {
        if let Ok(mut t) = self.inner.table.lock() {
            t.forget_namespace(namespace);
            t.purge(Instant::now().into_std());
        }
    }
}
