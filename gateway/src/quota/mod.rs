//! The quota engine: rate and concurrency trackers per tenant and per
//! namespace, and the one place where a gateway's *share* of a limit is
//! set.
//!
//! # Model
//!
//! - Rates (requests, read bytes, write bytes per second) are counted in a
//!   sliding one-second [`Window`] of ten 100 ms buckets. A request is
//!   admitted while the last second's count plus its cost fits the limit; a
//!   write's bytes are known up front and charged with the admission, a
//!   read's bytes only after the backend answered ([`Admission::charge_read`]), so
//!   reads are refused while the window is already over and one response
//!   may overshoot.
//! - Concurrency is a counter per tracker, held by the [`Admission`] until
//!   the response is ready.
//! - TimeSeries writes also count their events and event bytes (seeds/004's
//!   messages and bytes per second: a write of 10 000 events counts 10 000
//!   against `events_per_second`), in a second window of the same kind that
//!   a tracker makes on its first TimeSeries write, so trackers of
//!   KeyValue namespaces do not pay for it. The same rules apply: admitted
//!   while the last second's events plus the write's fit, a write larger
//!   than the whole limit passes an empty window.
//! - Open tails (seeds/004's consumers) are a counter per tracker like
//!   concurrency, always counted (for usage) and checked against
//!   `open_tails`; the slot is held by the tail's stream ([`TailSlots`])
//!   and freed when it ends, however it ends.
//! - Partitions and retention are not the gateway's: the control plane
//!   checks them when a namespace is created or updated.
//! - Both the namespace's and its tenant's quotas apply (a namespace's
//!   tracker holds its tenant's, so one lookup finds both); nothing is
//!   charged to either when one of them refuses.
//! - A refusal names the subject (`namespace:acme/orders`, `tenant:acme`),
//!   the quota and its limit; its `RetryInfo` is when enough of the oldest
//!   buckets leave the window to make room ([`CONCURRENCY_RETRY`] for
//!   concurrency). A write larger than the whole limit passes once the
//!   window is empty, or it never could.
//! - Storage: every `storage_measure_interval_ms` the usage task
//!   ([`crate::background::usage`]) measures the namespaces this shard owns
//!   that have a `storage_bytes` quota, their own or their tenant's
//!   (`KeyValue::storage_bytes`: embedded keeps a running count, Postgres
//!   sums its rows — a read of the namespace, hence only where a quota asks
//!   for it), and hands the figure to the namespace's tracker; a tenant's
//!   comes back from the control plane as `storage_full`. While either is
//!   at its quota, writes that add bytes are refused (`storage_bytes`,
//!   `RetryInfo` [`STORAGE_RETRY`]); deletes still pass, so space can be
//!   freed. Namespaces on Kafka and Pulsar (no `KeyValue`) are not
//!   measured: their brokers' retention bounds them.
//!
//! A tracker is the window plus the concurrency and tail counters and the
//! last storage measurement: 224 bytes, 240 with its `Arc`, no heap but
//! the event window of a TimeSeries writer (160 bytes, boxed)
//! (`docs/benchmarks.md`). Trackers are created on a subject's first
//! request (namespaces keyed by name and incarnation) and dropped by
//! [`QuotaRegistry::sweep`] (every [`SWEEP_INTERVAL`]) once their subject
//! has left the snapshot or they have been idle for [`IDLE_MS`] with
//! nothing in flight. Lookups are lock-free (`ArcSwap` over persistent
//! maps); a mutex is taken only to create or drop trackers and to set
//! shares.
//!
//! # Distribution
//!
//! Each gateway enforces `ceil(limit × share)` of every rate and
//! concurrency quota, `share` in `[0, 1]` (default 1), set only through
//! [`QuotaRegistry::set_share`] (or `set_default_share`):
//!
//! - a namespace's share is 1/(replicas of its shard): the watcher sets it
//!   whenever the shard map changes the number of this shard's registered
//!   instances (clients spread calls over replicas in turn, so the split
//!   is even);
//! - a tenant's share is what the control plane answers each usage report
//!   with (`prism_control_plane::usage`: a tenth of the limit spread evenly
//!   over the instances reporting the tenant, the rest in proportion to
//!   their requests per second), so a tenant's shares sum to 1 over the
//!   instances that serve it, up to one report interval of lag. An
//!   instance where the tenant's traffic just began enforces the whole
//!   limit until its first report.
//!
//! # Error bound
//!
//! Over any whole number *N* of seconds of sustained over-demand on one
//! gateway, admitted requests are within `[N·L, N·L + b]`, where `b` is
//! what arrives in one 100 ms bucket (each run of ten buckets holds at most
//! `L`; the measurement can span one extra bucket) plus the requests racing
//! between the window check and the charge (at most the number of threads
//! serving the namespace at that instant). Read bytes may overshoot by the
//! responses already admitted when the window fills (one response per
//! concurrent reader). Byte counts added at the instant a bucket rolls over
//! may be lost (undercount, [`window`]). Across gateways the error adds up:
//! shares that do not match the real split of traffic admit less (a
//! gateway idle with its share) or more (shares summing above 1). Storage
//! can overshoot by what is written between two measurements (plus one
//! report interval for tenants); a tracker created after a measurement
//! knows nothing until the next one. The end-to-end test measures 1.03 × L
//! accepted at 3 × L offered.

pub mod window;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use prism_plugin_api::Namespace;
use prism_proto::control::QuotaSet;

pub use window::{BUCKET_MS, BUCKETS, Metric, Usage, WINDOW_MS, Window};

use crate::error::GatewayError;
use crate::request::Access;

/// A tracker unused for this long, with nothing in flight, is dropped.
pub const IDLE_MS: u64 = 60_000;
/// How often [`sweeper`] looks for trackers to drop.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(10);
/// What a refusal for concurrency suggests: requests usually finish within
/// milliseconds, and the gateway cannot know when one will.
pub const CONCURRENCY_RETRY: Duration = Duration::from_millis(10);
/// What a storage refusal suggests: space comes back only when data is
/// deleted or expires, and it is measured again about this often.
pub const STORAGE_RETRY: Duration = Duration::from_secs(30);
/// What a refusal for open tails suggests: a tail ends when its reader
/// leaves, which the gateway cannot foresee.
pub const TAIL_RETRY: Duration = Duration::from_secs(1);

/// What a request costs the quotas, known before it runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cost {
    /// Bytes it writes: keys and values put, events written.
    pub write_bytes: u64,
    /// Events a TimeSeries write writes: each counts against
    /// `events_per_second`, and the write's bytes against
    /// `event_bytes_per_second`.
    pub events: u64,
    /// It opens a tail, which holds an `open_tails` slot while it streams.
    pub tail: bool,
}

/// Where a namespace's snapshot entry keeps its tracker (empty until a
/// request is admitted), so the next request finds it without a map
/// lookup. The slot is the entry's; the tracker in it is the registry's.
pub type TrackerSlot = ArcSwapOption<Tracker>;

/// The namespace a request is admitted to, as its snapshot entry gives it
/// (`NamespaceEntry::admitting`).
#[derive(Debug, Clone, Copy)]
pub struct Admitting<'a> {
    pub ns: &'a Namespace,
    /// Its tenant's id.
    pub tenant: &'a str,
    /// Where the entry keeps the namespace's tracker.
    pub tracker_slot: &'a TrackerSlot,
    /// This instance serves the namespace alone (an embedded namespace on
    /// its owner store), so its tracker keeps the whole limit.
    pub alone: bool,
}

/// What the sweep asks of the metadata: whether a tracker's subject is
/// still served. The snapshot answers (`crate::snapshot`): the quota engine
/// reads no snapshot type, so a snapshot entry can hold its tracker
/// without the two modules importing each other.
pub trait Live {
    /// Whether namespace `name`, in its incarnation `incarnation` (its
    /// create revision), is in the metadata and not deleted.
    fn namespace_live(&self, name: &str, incarnation: u64) -> bool;
    /// Whether tenant `id` is in the metadata and not deleted.
    fn tenant_live(&self, id: &str) -> bool;
}

/// Milliseconds on a process-wide coarse monotonic clock. One thread
/// advances it every millisecond, so a read is one atomic load: reading the
/// OS clock costs ~35 ns on these VMs, a fifth of a quota check, and the
/// window's 100 ms buckets need no finer time. If the thread cannot be
/// started, every read asks the OS instead.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// The coarse clock's reading when this clock started.
    base_ms: u64,
}

static COARSE_BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
static COARSE_MS: AtomicU64 = AtomicU64::new(0);
static COARSE_TICKING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn precise_ms() -> u64 {
    let base = COARSE_BASE.get_or_init(Instant::now);
    u64::try_from(base.elapsed().as_millis()).unwrap_or(u64::MAX)
}

fn coarse_ms() -> u64 {
    static START: std::sync::Once = std::sync::Once::new();
    START.call_once(|| {
        COARSE_MS.store(precise_ms(), Ordering::Relaxed);
        let spawned = std::thread::Builder::new().name("prism-coarse-clock".into()).spawn(|| {
            loop {
                std::thread::sleep(Duration::from_millis(1));
                COARSE_MS.fetch_max(precise_ms(), Ordering::Relaxed);
            }
        });
        match spawned {
            Ok(_) => COARSE_TICKING.store(true, Ordering::Release),
            Err(e) => tracing::warn!(error = %e, "no coarse clock thread: quota checks read the OS clock"),
        }
    });
    if COARSE_TICKING.load(Ordering::Relaxed) { COARSE_MS.load(Ordering::Relaxed) } else { precise_ms() }
}

impl Default for Clock {
    fn default() -> Self {
        Self { base_ms: coarse_ms() }
    }
}

impl Clock {
    pub fn now_ms(&self) -> u64 {
        coarse_ms().saturating_sub(self.base_ms)
    }
}

/// Whose quota: the subject of a `QuotaFailure` violation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Subject<'a> {
    Tenant(&'a str),
    Namespace(&'a str),
}

impl std::fmt::Display for Subject<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tenant(t) => write!(f, "tenant:{t}"),
            Self::Namespace(n) => write!(f, "namespace:{n}"),
        }
    }
}

/// Which kind of subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Tenant,
    Namespace,
}

/// A quota set's rate and concurrency limits; `u64::MAX` is unlimited
/// (`-1` or unset).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub requests_per_second: u64,
    pub read_bytes_per_second: u64,
    pub write_bytes_per_second: u64,
    pub concurrent_requests: u64,
    pub storage_bytes: u64,
    pub events_per_second: u64,
    pub event_bytes_per_second: u64,
    pub open_tails: u64,
}

pub const UNLIMITED: u64 = u64::MAX;

fn limit(v: Option<i64>) -> u64 {
    v.and_then(|v| u64::try_from(v).ok()).unwrap_or(UNLIMITED)
}

impl Limits {
    pub fn of(quotas: Option<&QuotaSet>) -> Self {
        let Some(q) = quotas else {
            return Self {
                requests_per_second: UNLIMITED,
                read_bytes_per_second: UNLIMITED,
                write_bytes_per_second: UNLIMITED,
                concurrent_requests: UNLIMITED,
                storage_bytes: UNLIMITED,
                events_per_second: UNLIMITED,
                event_bytes_per_second: UNLIMITED,
                open_tails: UNLIMITED,
            };
        };
        Self {
            requests_per_second: limit(q.requests_per_second),
            read_bytes_per_second: limit(q.read_bytes_per_second),
            write_bytes_per_second: limit(q.write_bytes_per_second),
            concurrent_requests: limit(q.concurrent_requests),
            storage_bytes: limit(q.storage_bytes),
            events_per_second: limit(q.events_per_second),
            event_bytes_per_second: limit(q.event_bytes_per_second),
            open_tails: limit(q.open_tails),
        }
    }

    /// The limit of `metric` of the event window: events (counted as its
    /// requests) and event bytes (counted as its write bytes).
    pub fn events(&self, metric: Metric) -> u64 {
        match metric {
            Metric::Requests => self.events_per_second,
            Metric::WriteBytes => self.event_bytes_per_second,
            Metric::ReadBytes => UNLIMITED,
        }
    }

    pub fn get(&self, metric: Metric) -> u64 {
        match metric {
            Metric::Requests => self.requests_per_second,
            Metric::ReadBytes => self.read_bytes_per_second,
            Metric::WriteBytes => self.write_bytes_per_second,
        }
    }
}

fn quota_name(metric: Metric) -> &'static str {
    match metric {
        Metric::Requests => "requests_per_second",
        Metric::ReadBytes => "read_bytes_per_second",
        Metric::WriteBytes => "write_bytes_per_second",
    }
}

/// The quota of `metric` of the event window.
fn event_quota_name(metric: Metric) -> &'static str {
    match metric {
        Metric::WriteBytes => "event_bytes_per_second",
        _ => "events_per_second",
    }
}

/// The usage of one tenant or namespace on this gateway.
///
/// 224 bytes (240 with its `Arc`), no heap but a TimeSeries writer's event
/// window: the window is 160 of them. See `docs/benchmarks.md` for the
/// measured figure including the registry.
#[derive(Debug)]
pub struct Tracker {
    window: Window,
    concurrent: AtomicU32,
    /// Tails open now.
    tails: AtomicU32,
    /// Events (as its requests) and event bytes (as its write bytes) of
    /// TimeSeries writes, made by the first one.
    events: std::sync::OnceLock<Box<Window>>,
    /// The share of the limits this gateway enforces, as `f64` bits.
    share: AtomicU64,
    /// The namespace's `create_revision`; 0 for tenants.
    incarnation: u64,
    /// A namespace's tenant's tracker, fixed when the namespace's tracker is
    /// created: a request finds both with one lookup and holds both with
    /// one reference.
    tenant: Option<Arc<Tracker>>,
    /// Set when the sweeper drops the tracker from the registry: a snapshot
    /// entry still caching it must look it up again.
    dropped: std::sync::atomic::AtomicBool,
    /// A namespace that one instance of its shard serves alone (an embedded
    /// namespace, on its owner store): every call reaches that instance,
    /// so it enforces the whole limit however many replicas the shard has
    /// (`set_default_share` leaves it be).
    alone: bool,
    /// A namespace's stored bytes as last measured ([`UNKNOWN_STORAGE`]
    /// until then); for a tenant, 1 when its storage quota is reached
    /// (the control plane sums its namespaces over every shard), else 0.
    storage: AtomicU64,
}

/// A namespace whose storage has not been measured yet.
pub const UNKNOWN_STORAGE: u64 = u64::MAX;

impl Tracker {
    pub fn new(incarnation: u64, share: f64) -> Self {
        Self::with_tenant(incarnation, share, None, false)
    }

    fn with_tenant(incarnation: u64, share: f64, tenant: Option<Arc<Tracker>>, alone: bool) -> Self {
        let t = Self {
            window: Window::default(),
            concurrent: AtomicU32::new(0),
            tails: AtomicU32::new(0),
            events: std::sync::OnceLock::new(),
            share: AtomicU64::new(1f64.to_bits()),
            incarnation,
            tenant,
            dropped: std::sync::atomic::AtomicBool::new(false),
            alone,
            storage: AtomicU64::new(if incarnation == 0 { 0 } else { UNKNOWN_STORAGE }),
        };
        t.set_share(share);
        t
    }

    pub fn window(&self) -> &Window {
        &self.window
    }

    /// The window of TimeSeries writes (events as its requests, event
    /// bytes as its write bytes), if any was made.
    pub fn events(&self) -> Option<&Window> {
        self.events.get().map(|w| &**w)
    }

    fn events_window(&self) -> &Window {
        self.events.get_or_init(Box::default)
    }

    /// Tails open now.
    pub fn tails(&self) -> u32 {
        self.tails.load(Ordering::Acquire)
    }

    /// The namespace's `create_revision` (0 for a tenant's tracker).
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// Records a namespace's measured storage, or a tenant's "storage
    /// quota reached" (`1`) / "not reached" (`0`).
    pub fn set_storage(&self, value: u64) {
        self.storage.store(value, Ordering::Relaxed);
    }

    pub fn storage(&self) -> u64 {
        self.storage.load(Ordering::Relaxed)
    }

    /// Requests admitted and not yet answered.
    pub fn concurrent(&self) -> u32 {
        self.concurrent.load(Ordering::Acquire)
    }

    pub fn share(&self) -> f64 {
        f64::from_bits(self.share.load(Ordering::Relaxed))
    }

    /// Sets the share, clamped to `[0, 1]` (NaN counts as 1).
    pub fn set_share(&self, share: f64) {
        let share = if share.is_nan() { 1.0 } else { share.clamp(0.0, 1.0) };
        self.share.store(share.to_bits(), Ordering::Relaxed);
    }

    /// The part of `limit` this gateway enforces.
    pub fn effective(&self, limit: u64) -> u64 {
        let share = self.share();
        if limit == UNLIMITED || share >= 1.0 {
            return limit;
        }
        (limit as f64 * share).ceil() as u64
    }

    fn try_enter(&self, limit: u64) -> bool {
        let before = self.concurrent.fetch_add(1, Ordering::AcqRel);
        if u64::from(before) >= limit {
            self.leave();
            return false;
        }
        true
    }

    fn leave(&self) {
        self.concurrent.fetch_sub(1, Ordering::AcqRel);
    }

    /// Takes a tail slot, counted always; refused past `limit`.
    fn try_open_tail(&self, limit: u64) -> bool {
        let before = self.tails.fetch_add(1, Ordering::AcqRel);
        if u64::from(before) >= limit {
            self.close_tail();
            return false;
        }
        true
    }

    fn close_tail(&self) {
        self.tails.fetch_sub(1, Ordering::AcqRel);
    }

    fn idle_since(&self, slot: u32) -> bool {
        let idle_slots = (IDLE_MS / BUCKET_MS) as u32;
        self.concurrent() == 0
            && self.tails() == 0
            && self.window.last_slot().is_none_or(|last| slot.wrapping_sub(last) >= idle_slots)
    }
}

/// A tracker and the limits that apply to it, for one request.
struct Checked<'a> {
    subject: Subject<'a>,
    tracker: &'a Tracker,
    limits: Limits,
}

impl Checked<'_> {
    fn refuse(&self, quota: &str, configured: u64, effective: u64, retry: Duration) -> GatewayError {
        let mut description = format!("{quota} quota of {configured} exceeded");
        if effective != configured {
            description.push_str(&format!(" ({effective} enforced on this gateway)"));
        }
        GatewayError::QuotaExceeded {
            subject: self.subject.to_string(),
            description,
            retry_after: Some(retry),
            quota: crate::metrics::QUOTAS.iter().find(|q| **q == quota).copied().unwrap_or("resource_exhausted"),
        }
    }

    /// The rate checks, which change nothing.
    fn rates(&self, now_ms: u64, access: Access, cost: Cost) -> Result<(), GatewayError> {
        let slot = Window::slot(now_ms);
        let usage = self.tracker.window.usage(slot);
        let over = |window: &Window, used: u64, configured: u64, metric: Metric, cost: u64, quota: &'static str| {
            let effective = self.tracker.effective(configured);
            // A cost larger than the whole limit passes once the window is
            // empty (or it never could): the overshoot of one request.
            let refused = effective != UNLIMITED && (effective == 0 || (used > 0 && used + cost > effective));
            refused.then(|| {
                let retry = window.retry_after(now_ms, metric, effective, cost);
                self.refuse(quota, configured, effective, retry)
            })
        };
        let main = |metric: Metric, cost: u64| {
            over(&self.tracker.window, usage.get(metric), self.limits.get(metric), metric, cost, quota_name(metric))
        };
        if let Some(e) = main(Metric::Requests, 1) {
            return Err(e);
        }
        let refusal = match access {
            // Read bytes are charged after the response: refuse while the
            // window is already full.
            Access::Read => main(Metric::ReadBytes, 1),
            Access::Write if cost.write_bytes > 0 => {
                main(Metric::WriteBytes, cost.write_bytes).or_else(|| self.storage_full())
            }
            Access::Write => None,
        };
        if let Some(e) = refusal {
            return Err(e);
        }
        if cost.events > 0 {
            // A tracker that never counted an event has an empty window.
            let window = self.tracker.events();
            let events = window.map(|w| w.usage(slot)).unwrap_or_default();
            for (metric, cost) in [(Metric::Requests, cost.events), (Metric::WriteBytes, cost.write_bytes)] {
                let configured = self.limits.events(metric);
                let window = window.unwrap_or(&self.tracker.window);
                if let Some(e) = over(window, events.get(metric), configured, metric, cost, event_quota_name(metric)) {
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// A write that adds bytes while the storage quota is reached (deletes,
    /// which add none, still pass so space can be freed). Storage is
    /// measured periodically, so the quota can be overshot by what is
    /// written between two measurements.
    fn storage_full(&self) -> Option<GatewayError> {
        let limit = self.limits.storage_bytes;
        if limit == UNLIMITED {
            return None;
        }
        let stored = self.tracker.storage();
        let full = match self.subject {
            Subject::Namespace(_) => stored != UNKNOWN_STORAGE && stored >= limit,
            Subject::Tenant(_) => stored == 1,
        };
        full.then(|| {
            let mut e = self.refuse("storage_bytes", limit, limit, STORAGE_RETRY);
            if let (GatewayError::QuotaExceeded { description, .. }, Subject::Namespace(_)) = (&mut e, self.subject) {
                description.push_str(&format!(" ({stored} bytes stored)"));
            }
            e
        })
    }

    /// Takes a tail slot (always: open tails are reported), refused past
    /// the `open_tails` limit.
    fn open_tail(&self) -> Result<(), GatewayError> {
        let configured = self.limits.open_tails;
        let effective = self.tracker.effective(configured);
        if self.tracker.try_open_tail(effective) {
            Ok(())
        } else {
            Err(self.refuse("open_tails", configured, effective, TAIL_RETRY))
        }
    }

    /// Takes a concurrency slot when a limit is set; returns whether it
    /// did (with no limit nothing is counted: two atomic operations per
    /// request saved, and nothing to enforce).
    fn enter(&self) -> Result<bool, GatewayError> {
        let configured = self.limits.concurrent_requests;
        if configured == UNLIMITED {
            return Ok(false);
        }
        let effective = self.tracker.effective(configured);
        if self.tracker.try_enter(effective) {
            Ok(true)
        } else {
            Err(self.refuse("concurrent_requests", configured, effective, CONCURRENCY_RETRY))
        }
    }
}

/// Charges read bytes to a namespace and its tenant.
#[derive(Debug, Clone)]
pub struct ReadCharge {
    /// The namespace's tracker, which holds its tenant's.
    namespace: Arc<Tracker>,
    clock: Clock,
}

impl ReadCharge {
    /// Charges the bytes a response returned.
    pub fn charge_read(&self, bytes: u64) {
        if bytes == 0 {
            return;
        }
        let slot = Window::slot(self.clock.now_ms());
        self.namespace.window.add(slot, 0, bytes, 0);
        if let Some(tenant) = &self.namespace.tenant {
            tenant.window.add(slot, 0, bytes, 0);
        }
    }
}

/// A tail's slots of the namespace's and the tenant's `open_tails`: held by
/// the tail's stream, freed when it is dropped (the reader left, the tail
/// was cut off, the namespace went away).
#[derive(Debug)]
pub struct TailSlots {
    /// The namespace's tracker, which holds its tenant's.
    namespace: Arc<Tracker>,
}

impl Drop for TailSlots {
    fn drop(&mut self) {
        self.namespace.close_tail();
        if let Some(tenant) = &self.namespace.tenant {
            tenant.close_tail();
        }
    }
}

/// An admitted request: holds its concurrency slots until dropped, and
/// charges its read bytes once they are known.
#[derive(Debug)]
pub struct Admission {
    charge: ReadCharge,
    /// Which concurrency slots were taken: (namespace, tenant).
    slots: (bool, bool),
    /// A tail's slots, for its stream to hold.
    tail: Option<TailSlots>,
}

impl Admission {
    /// A tail's `open_tails` slots, to be held as long as it streams.
    pub fn take_tail(&mut self) -> Option<TailSlots> {
        self.tail.take()
    }

    /// Charges the bytes a response returned to the namespace and tenant.
    pub fn charge_read(&self, bytes: u64) {
        self.charge.charge_read(bytes);
    }

    /// What charges reads after the admission is released (a stream).
    pub fn reader(&self) -> ReadCharge {
        self.charge.clone()
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if self.slots.0 {
            self.charge.namespace.leave();
        }
        if let (true, Some(tenant)) = (self.slots.1, &self.charge.namespace.tenant) {
            tenant.leave();
        }
    }
}

type Map = imbl::GenericHashMap<Arc<str>, Arc<Tracker>, twox_hash::xxhash64::State, imbl::shared_ptr::DefaultSharedPtr>;

fn empty_map() -> Map {
    Map::with_hasher(twox_hash::xxhash64::State::with_seed(0x9e37_79b9_7f4a_7c15))
}

/// Shares set through the hook. Consulted when a tracker is created.
#[derive(Debug)]
struct Shares {
    default_tenant: f64,
    default_namespace: f64,
    by_subject: HashMap<(Kind, String), f64>,
}

impl Shares {
    fn of(&self, kind: Kind, name: &str) -> f64 {
        // Looked up only when a tracker is created, so the key may allocate.
        self.by_subject.get(&(kind, name.to_owned())).copied().unwrap_or(match kind {
            Kind::Tenant => self.default_tenant,
            Kind::Namespace => self.default_namespace,
        })
    }
}

/// The trackers of one gateway.
#[derive(Debug)]
pub struct QuotaRegistry {
    clock: Clock,
    namespaces: ArcSwap<Map>,
    tenants: ArcSwap<Map>,
    /// Serialises creating and dropping trackers and setting shares;
    /// never taken by a request whose trackers exist.
    writer: Mutex<Shares>,
}

impl Default for QuotaRegistry {
    fn default() -> Self {
        Self::new(Clock::default())
    }
}

impl QuotaRegistry {
    pub fn new(clock: Clock) -> Self {
        Self {
            clock,
            namespaces: ArcSwap::from_pointee(empty_map()),
            tenants: ArcSwap::from_pointee(empty_map()),
            writer: Mutex::new(Shares { default_tenant: 1.0, default_namespace: 1.0, by_subject: HashMap::new() }),
        }
    }

    pub fn clock(&self) -> Clock {
        self.clock
    }

    fn writer(&self) -> std::sync::MutexGuard<'_, Shares> {
        // A panic while holding it cannot leave the maps half-updated
        // (they are swapped whole), so a poisoned lock is still good.
        self.writer.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn map(&self, kind: Kind) -> &ArcSwap<Map> {
        match kind {
            Kind::Tenant => &self.tenants,
            Kind::Namespace => &self.namespaces,
        }
    }

    /// Every namespace tracker now, by namespace name.
    pub fn namespaces(&self) -> Vec<(String, Arc<Tracker>)> {
        self.namespaces.load().iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
    }

    /// The tracker of a subject, if it has one now.
    pub fn tracker(&self, subject: Subject<'_>) -> Option<Arc<Tracker>> {
        match subject {
            Subject::Tenant(t) => self.tenants.load().get(t).cloned(),
            Subject::Namespace(n) => self.namespaces.load().get(n).cloned(),
        }
    }

    /// The tracker of namespace `name` (of `incarnation`, of `tenant`),
    /// created with its tenant's if missing or of an older incarnation;
    /// `alone`: served by this instance only (whole share unless set).
    fn namespace_tracker(&self, name: &str, incarnation: u64, tenant: &str, alone: bool) -> Arc<Tracker> {
        if let Some(t) = self.namespaces.load().get(name).filter(|t| t.incarnation == incarnation) {
            return t.clone();
        }
        let shares = self.writer();
        let current = self.namespaces.load_full();
        if let Some(t) = current.get(name).filter(|t| t.incarnation == incarnation) {
            return t.clone();
        }
        let tenants = self.tenants.load_full();
        let tenant_tracker = match tenants.get(tenant) {
            Some(t) => t.clone(),
            None => {
                let t = Arc::new(Tracker::new(0, shares.of(Kind::Tenant, tenant)));
                let mut next = (*tenants).clone();
                next.insert(tenant.into(), t.clone());
                self.tenants.store(Arc::new(next));
                t
            }
        };
        let share = match shares.by_subject.get(&(Kind::Namespace, name.to_owned())) {
            None if alone => 1.0,
            _ => shares.of(Kind::Namespace, name),
        };
        let tracker = Arc::new(Tracker::with_tenant(incarnation, share, Some(tenant_tracker), alone));
        let mut next = (*current).clone();
        next.insert(name.into(), tracker.clone());
        self.namespaces.store(Arc::new(next));
        tracker
    }

    /// **The hook**: the fraction of `subject`'s limits this gateway
    /// enforces, in `[0, 1]`. The shard registry sets a namespace's share
    /// to 1/replicas serving it, usage reports set a tenant's share to its
    /// part of the tenant's recent usage. Kept across idle periods.
    pub fn set_share(&self, subject: Subject<'_>, share: f64) {
        let mut shares = self.writer();
        let (kind, name) = match subject {
            Subject::Tenant(t) => (Kind::Tenant, t),
            Subject::Namespace(n) => (Kind::Namespace, n),
        };
        shares.by_subject.insert((kind, name.to_owned()), share);
        if let Some(t) = self.map(kind).load().get(name) {
            t.set_share(share);
        }
    }

    /// The share of subjects of `kind` that have none of their own
    /// (default 1).
    pub fn set_default_share(&self, kind: Kind, share: f64) {
        let mut shares = self.writer();
        match kind {
            Kind::Tenant => shares.default_tenant = share,
            Kind::Namespace => shares.default_namespace = share,
        }
        for (name, t) in self.map(kind).load().iter() {
            if !t.alone && !shares.by_subject.contains_key(&(kind, name.to_string())) {
                t.set_share(share);
            }
        }
    }

    /// Admits a request to `namespace` (whose tenant has `tenant_quotas`)
    /// or refuses it with `QuotaExceeded`; `cost` is what it writes, the
    /// events it writes, whether it opens a tail.
    pub fn admit(
        &self,
        namespace: Admitting<'_>,
        tenant_quotas: Option<&QuotaSet>,
        access: Access,
        cost: Cost,
    ) -> Result<Admission, GatewayError> {
        let Admitting { ns, tenant, tracker_slot, alone } = namespace;
        let now_ms = self.clock.now_ms();
        // The snapshot entry caches its tracker: no map lookup per request.
        let cached = tracker_slot.load();
        let namespace = match cached.as_ref().filter(|t| !t.dropped.load(Ordering::Relaxed)) {
            Some(t) => t.clone(),
            None => {
                let t = self.namespace_tracker(&ns.name, ns.create_revision, tenant, alone);
                tracker_slot.store(Some(t.clone()));
                t
            }
        };
        let Some(tenant_tracker) = namespace.tenant.as_deref() else {
            return Err(GatewayError::Internal("a namespace tracker without its tenant's".into()));
        };
        let ns_check = Checked {
            subject: Subject::Namespace(&ns.name),
            tracker: &namespace,
            limits: Limits::of(ns.spec.quotas.as_ref()),
        };
        let tn_check =
            Checked { subject: Subject::Tenant(tenant), tracker: tenant_tracker, limits: Limits::of(tenant_quotas) };
        ns_check.rates(now_ms, access, cost)?;
        tn_check.rates(now_ms, access, cost)?;
        let ns_slot = ns_check.enter()?;
        let leave = |ns_slot: bool| {
            if ns_slot {
                namespace.leave();
            }
        };
        let tenant_slot = match tn_check.enter() {
            Ok(taken) => taken,
            Err(e) => {
                leave(ns_slot);
                return Err(e);
            }
        };
        let tail = if cost.tail {
            let opened =
                ns_check.open_tail().and_then(|()| tn_check.open_tail().inspect_err(|_| namespace.close_tail()));
            if let Err(e) = opened {
                leave(ns_slot);
                if tenant_slot {
                    tenant_tracker.leave();
                }
                return Err(e);
            }
            Some(TailSlots { namespace: namespace.clone() })
        } else {
            None
        };
        let slot = Window::slot(now_ms);
        namespace.window.add(slot, 1, 0, cost.write_bytes);
        tenant_tracker.window.add(slot, 1, 0, cost.write_bytes);
        if cost.events > 0 {
            let events = u32::try_from(cost.events).unwrap_or(u32::MAX);
            namespace.events_window().add(slot, events, 0, cost.write_bytes);
            tenant_tracker.events_window().add(slot, events, 0, cost.write_bytes);
        }
        Ok(Admission { charge: ReadCharge { namespace, clock: self.clock }, slots: (ns_slot, tenant_slot), tail })
    }

    /// Drops the trackers whose subject is no longer `live` (it left the
    /// metadata, is deleted, or is a new incarnation) and those idle for
    /// [`IDLE_MS`] with nothing in flight. A request that fetched a tracker
    /// just before it is dropped counts on the dropped one: its counts are
    /// lost, which an idle tracker can afford. Returns how many were
    /// dropped.
    pub fn sweep(&self, live: &impl Live) -> usize {
        let slot = Window::slot(self.clock.now_ms());
        let _writer = self.writer();
        let mut dropped = 0;
        let namespaces = self.namespaces.load_full();
        let mut next = (*namespaces).clone();
        next.retain(|name, t| {
            let keep = live.namespace_live(name, t.incarnation) && !t.idle_since(slot);
            if !keep {
                t.dropped.store(true, Ordering::Relaxed);
            }
            dropped += usize::from(!keep);
            keep
        });
        // Tenant trackers the remaining namespace trackers hold.
        let held: std::collections::HashSet<*const Tracker> =
            next.values().filter_map(|t| t.tenant.as_ref().map(Arc::as_ptr)).collect();
        self.namespaces.store(Arc::new(next));
        let tenants = self.tenants.load_full();
        let mut next = (*tenants).clone();
        next.retain(|id, t| {
            // A tenant's tracker stays while a namespace tracker holds it,
            // so all of a tenant's namespaces count on the same tracker.
            let keep = (live.tenant_live(id) && !t.idle_since(slot)) || held.contains(&Arc::as_ptr(t));
            dropped += usize::from(!keep);
            keep
        });
        self.tenants.store(Arc::new(next));
        dropped
    }

    /// How many trackers exist: (tenants, namespaces).
    pub fn len(&self) -> (usize, usize) {
        (self.tenants.load().len(), self.namespaces.load().len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == (0, 0)
    }
}

/// Sweeps `registry` against the `current` metadata (the snapshot of
/// the moment) every [`SWEEP_INTERVAL`] until `stopped`.
pub async fn sweeper<L: Live>(
    registry: Arc<QuotaRegistry>,
    current: impl Fn() -> Arc<L>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let mut every = tokio::time::interval(SWEEP_INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stopped.changed() => return,
        }
        let dropped = registry.sweep(&*current());
        if dropped > 0 {
            tracing::debug!(dropped, "quota trackers dropped");
        }
    }
}

#[cfg(test)]
mod tests;
