//! The scenarios: what one operation sends, and how its response is checked.
//! A response that is an error, or that does not hold what was written for
//! that key, is an error labelled by its gRPC status code name (or
//! `WrongResponse` / `ClientTimeout`), never just a timing.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use clap::ValueEnum;
use prism_client::{KeyValueClient, TimeSeriesClient};
use prism_proto::kv;
use prism_proto::timeseries as ts;
use rand::Rng;
use rand::rngs::StdRng;

use crate::args::{Distribution, RunArgs};
use crate::pg::PgKv;
use crate::target::Target;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
pub enum Scenario {
    /// GetItems of preloaded records, checking the value.
    KvGet,
    /// PutItems of plain key-value pairs.
    KvPut,
    /// Gets and puts (`--read-fraction` gets) over preloaded records.
    KvMixed,
    /// WriteEventRecordsSync of one event, checking it was accepted.
    TsWrite,
    /// ReadEventRecords of preloaded series, checking the seed event.
    TsRead,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Self::KvGet => "kv-get",
            Self::KvPut => "kv-put",
            Self::KvMixed => "kv-mixed",
            Self::TsWrite => "ts-write",
            Self::TsRead => "ts-read",
        }
    }

    pub fn is_kv(self) -> bool {
        matches!(self, Self::KvGet | Self::KvPut | Self::KvMixed)
    }
}

/// The record id (or series id) of key `index`.
pub fn record_id(index: u64) -> String {
    format!("lt-{index}")
}

/// The value written for `id`: the id, then filler, `size` bytes in all, so
/// a get of one key that returns another key's value is caught.
pub fn value_for(id: &str, size: usize) -> Vec<u8> {
    let mut value = Vec::with_capacity(size);
    value.extend(id.as_bytes().iter().take(size));
    value.resize(size, b'.');
    value
}

/// Draws key indexes in `0..keys`.
#[derive(Debug, Clone)]
pub enum KeySampler {
    Uniform(u64),
    /// The cumulative distribution of Zipf(s) over the ranks, precomputed
    /// (8 bytes a key); a draw is a binary search.
    Zipf(Arc<Vec<f64>>),
}

impl KeySampler {
    pub fn new(distribution: Distribution, keys: u64, exponent: f64) -> Self {
        match distribution {
            Distribution::Uniform => Self::Uniform(keys),
            Distribution::Zipf => {
                let mut cdf = Vec::with_capacity(usize::try_from(keys).unwrap_or(0));
                let mut total = 0.0;
                for rank in 1..=keys {
                    total += 1.0 / (rank as f64).powf(exponent);
                    cdf.push(total);
                }
                for c in &mut cdf {
                    *c /= total;
                }
                Self::Zipf(Arc::new(cdf))
            }
        }
    }

    pub fn sample(&self, rng: &mut StdRng) -> u64 {
        match self {
            Self::Uniform(keys) => rng.random_range(0..*keys),
            Self::Zipf(cdf) => {
                let u: f64 = rng.random();
                let rank = cdf.partition_point(|&c| c < u);
                rank.min(cdf.len().saturating_sub(1)) as u64
            }
        }
    }
}

/// One operation to send: which key, and for kv-mixed whether it is a get.
#[derive(Debug, Clone, Copy)]
pub struct Op {
    pub key: u64,
    pub get: bool,
}

/// The clients of one connection (or, for PostgreSQL, the shared pool).
#[derive(Clone)]
pub enum Clients {
    Kv(KeyValueClient),
    Ts(TimeSeriesClient),
    /// Through `prism_client::Prism` (`--target control-plane:ADDR`).
    RoutedKv(prism_client::Kv),
    RoutedTs(prism_client::Ts),
    /// The plugin's SQL sent directly (`--target pg:DSN`).
    Pg(Arc<PgKv>),
}

impl Clients {
    /// Connects `count` clients to `target` with the client the scenario
    /// needs. A PostgreSQL target has one pool (`pool_size` connections)
    /// that every worker shares, like a namespace's pool in the gateway.
    pub async fn connect_all(
        scenario: Scenario,
        target: &Target,
        token: Option<&str>,
        namespace: &str,
        count: usize,
        pool_size: usize,
    ) -> anyhow::Result<Vec<Self>> {
        let unreachable = || format!("target {target} is unreachable");
        let mut clients = Vec::with_capacity(count);
        match target {
            Target::Gateway(address) => {
                for _ in 0..count {
                    clients.push(if scenario.is_kv() {
                        Self::Kv(prism_client::key_value(address, token).await.with_context(unreachable)?)
                    } else {
                        Self::Ts(prism_client::time_series(address, token).await.with_context(unreachable)?)
                    });
                }
            }
            Target::ControlPlane(address) => {
                for _ in 0..count {
                    // One client per connection: each keeps its own channel
                    // per gateway, so `--connections` means the same thing
                    // as against one gateway.
                    let prism = prism_client::Prism::builder(address).token(token).build()?;
                    // Resolve before the clock starts: an unreachable control
                    // plane or an unknown namespace fails here, once.
                    prism.route(namespace).await.map_err(|s| {
                        anyhow::anyhow!("{}: cannot resolve namespace {namespace}: {}", unreachable(), s.message())
                    })?;
                    clients.push(if scenario.is_kv() {
                        Self::RoutedKv(prism.kv())
                    } else {
                        Self::RoutedTs(prism.ts())
                    });
                }
            }
            Target::Postgres(dsn) => {
                anyhow::ensure!(scenario.is_kv(), "a pg: target serves KeyValue scenarios only");
                let pg = Arc::new(PgKv::connect(dsn, pool_size).await.with_context(unreachable)?);
                clients.extend(std::iter::repeat_n(Self::Pg(pg), count));
            }
        }
        Ok(clients)
    }
}

/// Everything an operation needs besides its client, shared by all workers.
#[derive(Debug)]
pub struct Workload {
    pub scenario: Scenario,
    pub namespace: String,
    pub value_size: usize,
    pub read_fraction: f64,
    pub timeout: Duration,
    pub sampler: KeySampler,
    /// Makes every ts-write event id unique.
    next_event: AtomicU64,
}

/// The label an operation failed with.
pub type ErrorLabel = String;

pub(crate) const WRONG: &str = "WrongResponse";

pub(crate) fn status_label(status: &tonic::Status) -> ErrorLabel {
    format!("{:?}", status.code())
}

/// A routed call's final status, after its redirects and retries.
pub(crate) fn client_label(error: &prism_client::ClientError) -> ErrorLabel {
    format!("{:?}", error.code())
}

/// A PostgreSQL failure: its SQLSTATE when the server sent one.
fn pg_label(error: &anyhow::Error) -> ErrorLabel {
    let state = error.chain().find_map(|e| e.downcast_ref::<tokio_postgres::Error>()).and_then(|e| e.code());
    match state {
        Some(code) => format!("Postgres{}", code.code()),
        None => "PostgresError".to_owned(),
    }
}

fn now_timestamp() -> prost_types::Timestamp {
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp { seconds: now.as_secs() as i64, nanos: now.subsec_nanos() as i32 }
}

impl Workload {
    pub fn new(args: &RunArgs) -> Self {
        Self {
            scenario: args.scenario,
            namespace: args.namespace.clone(),
            value_size: args.value_size,
            read_fraction: args.read_fraction,
            timeout: args.request_timeout,
            sampler: KeySampler::new(args.distribution, args.keys, args.zipf_exponent),
            next_event: AtomicU64::new(0),
        }
    }

    /// Draws the next operation.
    pub fn next_op(&self, rng: &mut StdRng) -> Op {
        let key = self.sampler.sample(rng);
        let get = match self.scenario {
            Scenario::KvGet | Scenario::TsRead => true,
            Scenario::KvPut | Scenario::TsWrite => false,
            Scenario::KvMixed => rng.random::<f64>() < self.read_fraction,
        };
        Op { key, get }
    }

    /// Whether the scenario reads what [`preload`](Self::preload) wrote.
    pub fn needs_preload(&self) -> bool {
        matches!(self.scenario, Scenario::KvGet | Scenario::KvMixed | Scenario::TsRead)
    }

    /// Writes what the reads will check: key `index` for every index in
    /// `keys`. Any failure stops the run: a read of an unwritten key would be
    /// counted as a wrong response.
    pub async fn preload(&self, clients: &mut Clients, keys: std::ops::Range<u64>) -> anyhow::Result<()> {
        for key in keys {
            let result = match self.scenario {
                Scenario::TsRead => self.ts_write(clients, key, Some("seed")).await,
                _ => self.kv_put(clients, key).await,
            };
            result.map_err(|label| anyhow::anyhow!("preloading key {} failed: {label}", record_id(key)))?;
        }
        Ok(())
    }

    /// Sends `op` and checks its response.
    pub async fn execute(&self, clients: &mut Clients, op: Op) -> Result<(), ErrorLabel> {
        let call = async {
            match self.scenario {
                Scenario::KvGet => self.kv_get(clients, op.key).await,
                Scenario::KvPut => self.kv_put(clients, op.key).await,
                Scenario::KvMixed if op.get => self.kv_get(clients, op.key).await,
                Scenario::KvMixed => self.kv_put(clients, op.key).await,
                Scenario::TsWrite => self.ts_write(clients, op.key, None).await,
                Scenario::TsRead => self.ts_read(clients, op.key).await,
            }
        };
        tokio::time::timeout(self.timeout, call).await.unwrap_or_else(|_| Err("ClientTimeout".to_owned()))
    }

    async fn kv_get(&self, clients: &mut Clients, key: u64) -> Result<(), ErrorLabel> {
        let id = record_id(key);
        let expected = value_for(&id, self.value_size);
        let request =
            || kv::GetItemsRequest { namespace: self.namespace.clone(), id: id.clone(), ..Default::default() };
        let is_expected = |items: &[kv::Item]| matches!(items, [item] if item.key.is_empty() && item.value == expected);
        let right = match clients {
            Clients::Kv(kv) => {
                is_expected(&kv.get_items(request()).await.map_err(|s| status_label(&s))?.into_inner().items)
            }
            Clients::RoutedKv(kv) => is_expected(&kv.get_items(request()).await.map_err(|e| client_label(&e))?.items),
            Clients::Pg(pg) => {
                let items = pg.get(&id).await.map_err(|e| pg_label(&e))?;
                matches!(items.as_slice(), [(k, v)] if k.is_empty() && *v == expected)
            }
            Clients::Ts(_) | Clients::RoutedTs(_) => false,
        };
        if right { Ok(()) } else { Err(WRONG.into()) }
    }

    async fn kv_put(&self, clients: &mut Clients, key: u64) -> Result<(), ErrorLabel> {
        let id = record_id(key);
        let value = value_for(&id, self.value_size);
        let request = |value: Vec<u8>| kv::PutItemsRequest {
            namespace: self.namespace.clone(),
            id: id.clone(),
            items: vec![kv::Item { key: Vec::new(), value, ttl: None }],
            idempotency_token: None,
        };
        match clients {
            Clients::Kv(kv) => drop(kv.put_items(request(value)).await.map_err(|s| status_label(&s))?),
            Clients::RoutedKv(kv) => drop(kv.put_items(request(value)).await.map_err(|e| client_label(&e))?),
            Clients::Pg(pg) => pg.put(&id, &[], &value).await.map_err(|e| pg_label(&e))?,
            Clients::Ts(_) | Clients::RoutedTs(_) => return Err(WRONG.into()),
        }
        Ok(())
    }

    async fn ts_write(&self, clients: &mut Clients, key: u64, event_id: Option<&str>) -> Result<(), ErrorLabel> {
        let series = record_id(key);
        let event_id = match event_id {
            Some(id) => id.to_owned(),
            None => format!("e-{}", self.next_event.fetch_add(1, Ordering::Relaxed)),
        };
        let event = ts::Event {
            items: vec![ts::EventItem { key: b"v".to_vec(), value: value_for(&series, self.value_size) }],
            time_series_id: series,
            event_time: Some(now_timestamp()),
            event_id,
            tags: Default::default(),
            schema_version: 0,
        };
        let request = ts::WriteEventRecordsRequest { namespace: self.namespace.clone(), events: vec![event] };
        let response = match clients {
            Clients::Ts(c) => c.write_event_records_sync(request).await.map_err(|s| status_label(&s))?.into_inner(),
            Clients::RoutedTs(c) => c.write_event_records_sync(request).await.map_err(|e| client_label(&e))?,
            _ => return Err(WRONG.into()),
        };
        if response.accepted == 1 { Ok(()) } else { Err(WRONG.into()) }
    }

    async fn ts_read(&self, clients: &mut Clients, key: u64) -> Result<(), ErrorLabel> {
        let series = record_id(key);
        let request = ts::ReadEventRecordsRequest {
            namespace: self.namespace.clone(),
            time_series_id: series.clone(),
            ..Default::default()
        };
        let response = match clients {
            Clients::Ts(c) => c.read_event_records(request).await.map_err(|s| status_label(&s))?.into_inner(),
            Clients::RoutedTs(c) => c.read_event_records(request).await.map_err(|e| client_label(&e))?,
            _ => return Err(WRONG.into()),
        };
        let expected = value_for(&series, self.value_size);
        let all_of_series = response.events.iter().all(|e| e.time_series_id == series);
        let seed = response.events.iter().any(|e| {
            e.event_id == "seed" && matches!(e.items.as_slice(), [item] if item.key == b"v" && item.value == expected)
        });
        if all_of_series && seed { Ok(()) } else { Err(WRONG.into()) }
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn values_name_their_key_and_have_the_asked_size() {
        assert_eq!(value_for("lt-7", 8), b"lt-7....".to_vec());
        assert_eq!(value_for("lt-7", 2), b"lt".to_vec());
        assert!(value_for("lt-7", 0).is_empty());
    }

    #[test]
    fn zipf_prefers_low_ranks_and_stays_in_range() {
        let sampler = KeySampler::new(Distribution::Zipf, 1000, 1.0);
        let mut rng = StdRng::seed_from_u64(7);
        let mut counts = vec![0u32; 1000];
        for _ in 0..100_000 {
            let k = sampler.sample(&mut rng);
            assert!(k < 1000);
            counts[k as usize] += 1;
        }
        // P(rank 1) = 1 / H(1000) ≈ 0.134.
        assert!((12_000..15_000).contains(&counts[0]), "{}", counts[0]);
        assert!(counts[0] > counts[1] && counts[1] > counts[9] && counts[9] > counts[999]);
    }

    #[test]
    fn uniform_covers_the_key_space() {
        let sampler = KeySampler::new(Distribution::Uniform, 10, 1.0);
        let mut rng = StdRng::seed_from_u64(1);
        let mut seen = [false; 10];
        for _ in 0..1000 {
            seen[sampler.sample(&mut rng) as usize] = true;
        }
        assert!(seen.iter().all(|s| *s));
    }
}
