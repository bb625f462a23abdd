//! Bad input against a real gateway (a testkit cluster with small limits,
//! so every timeout runs out in well under a second): each attack is
//! refused as `[gateway.limits]` documents — the right status, the stream
//! refused, the connection closed — while another tenant's checked
//! requests keep succeeding on the same gateway; then `prism-loadtest
//! abuse` runs every attack briefly in phases.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use clap::Parser;
use prism_loadtest::abuse::{self, Tally, raw};
use prism_loadtest::{Cli, Outcome, run};
use prism_proto::control::{Abstraction, Backend, NamespaceSpec};
use prism_proto::kv;
use prism_testkit::{Cluster, admin_token, eventually};

fn spec() -> NamespaceSpec {
    NamespaceSpec { abstraction: Abstraction::KeyValue as i32, backend: Backend::Embedded as i32, ..Default::default() }
}

/// The timeouts of the test gateways: short, so each runs out quickly.
const TIMEOUT: Duration = Duration::from_millis(300);

async fn cluster() -> anyhow::Result<Cluster> {
    Cluster::start_with(|c| {
        c.limits.max_message_bytes = 1 << 20;
        c.limits.max_concurrent_streams = 8;
        c.limits.max_connections = 24;
        c.limits.handshake_timeout_ms = TIMEOUT.as_millis() as u64;
        c.limits.request_read_timeout_ms = TIMEOUT.as_millis() as u64;
        c.limits.keepalive_interval_ms = TIMEOUT.as_millis() as u64;
        c.limits.keepalive_timeout_ms = TIMEOUT.as_millis() as u64;
    })
    .await
}

/// Another tenant's puts and gets, each get checked against the put
/// before it, until stopped; counts successes and failures.
struct Victim {
    ok: Arc<AtomicU64>,
    failed: Arc<std::sync::Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Victim {
    async fn start(endpoint: &str, namespace: &'static str) -> anyhow::Result<Self> {
        let mut client = prism_client::key_value(endpoint, Some(&admin_token())).await?;
        let (ok, failed, stop) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(std::sync::Mutex::new(Vec::new())),
            Arc::new(AtomicBool::new(false)),
        );
        let (ok2, failed2, stop2) = (ok.clone(), failed.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut i = 0u64;
            while !stop2.load(Ordering::Relaxed) {
                i += 1;
                let id = format!("r-{}", i % 20);
                let value = format!("v-{i}").into_bytes();
                let put = kv::PutItemsRequest {
                    namespace: namespace.into(),
                    id: id.clone(),
                    items: vec![kv::Item { key: vec![], value: value.clone(), ttl: None }],
                    idempotency_token: None,
                };
                let outcome = match client.put_items(put).await {
                    Err(s) => Err(format!("put: {s}")),
                    Ok(_) => {
                        let get = kv::GetItemsRequest { namespace: namespace.into(), id, ..Default::default() };
                        match client.get_items(get).await {
                            Err(s) => Err(format!("get: {s}")),
                            Ok(r) if r.get_ref().items.len() == 1 && r.get_ref().items[0].value == value => Ok(()),
                            Ok(r) => Err(format!("get: wrong answer {:?}", r.get_ref().items)),
                        }
                    }
                };
                match outcome {
                    Ok(()) => {
                        ok2.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        if let Ok(mut f) = failed2.lock() {
                            f.push(e);
                        }
                    }
                }
            }
        });
        Ok(Self { ok, failed, stop, task })
    }

    /// Waits until `n` more requests succeeded: the other tenant is served
    /// while whatever runs meanwhile does.
    async fn served(&self, n: u64) -> anyhow::Result<()> {
        let from = self.ok.load(Ordering::Relaxed);
        eventually(Duration::from_secs(20), || async move {
            let now = self.ok.load(Ordering::Relaxed);
            anyhow::ensure!(now >= from + n, "{} of {n} requests so far", now - from);
            Ok(())
        })
        .await
    }

    async fn stop(self) -> anyhow::Result<(u64, Vec<String>)> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await?;
        let failed = self.failed.lock().map(|f| f.clone()).unwrap_or_default();
        Ok((self.ok.load(Ordering::Relaxed), failed))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_bad_input_is_refused_and_other_tenants_keep_being_served() -> anyhow::Result<()> {
    let cluster = cluster().await?;
    let gw = cluster.active_namespace("other/kv", spec()).await?;
    let endpoint = gw.endpoint();
    let addr = gw.addr.to_string();
    let victim = Victim::start(&endpoint, "other/kv").await?;
    victim.served(5).await?;
    let channel = abuse::channel(&endpoint).await?;

    // An oversized message: refused when its header arrives, naming the
    // limit; one just under the limit gets past it (to authentication).
    let status = abuse::unary(channel.clone(), abuse::PUT_ITEMS, abuse::oversized_put("attacker/kv", 2 << 20)).await;
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("limits.max_message_bytes"), "{status:?}");
    let status = abuse::unary(channel.clone(), abuse::PUT_ITEMS, abuse::oversized_put("attacker/kv", 900 << 10)).await;
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    victim.served(5).await?;

    // Nesting past what decoding allows, nesting past the filter's depth
    // limit, and bytes that are no message: INVALID_ARGUMENT naming the field.
    let status = abuse::unary(channel.clone(), abuse::SEARCH_EVENTS, abuse::nested_search("attacker/ts", 10_000)).await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().starts_with("filter: nested too deep"), "{status:?}");
    let status = abuse::unary(channel.clone(), abuse::SEARCH_EVENTS, abuse::nested_search("attacker/ts", 20)).await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("filter"), "{status:?}");
    let garbage = prost::bytes::Bytes::from_static(&[0x0a, 0xff, 0xff]);
    let status = abuse::unary(channel.clone(), abuse::GET_ITEMS, garbage).await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    // Field 1's length is a varint cut short: the field is named.
    assert!(status.message().starts_with("namespace: the message does not decode"), "{status:?}");
    victim.served(5).await?;

    // A request whose body never ends, through tonic and as half a message
    // by hand: answered once limits.request_read_timeout_ms ran out.
    let (status, took) = abuse::unfinished_body(channel.clone(), abuse::get_request("other/kv", "r-1")).await;
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("limits.request_read_timeout_ms"), "{status:?}");
    assert!(took >= TIMEOUT, "answered after {took:?}");
    let never = AtomicBool::new(false);
    let (outcome, held) = abuse::hold_unfinished(&addr, &never).await?;
    assert!(matches!(outcome, "answered" | "reset"), "{outcome}");
    assert!(held.is_some_and(|h| h >= TIMEOUT), "{held:?}");

    // A flood of streams on one connection: what is over
    // limits.max_concurrent_streams (8) is refused, the rest answered.
    // (32 are refused when the 40 are read before the first 8 time out, as
    // they are unless the machine stalls the gateway for 300 ms; then a
    // few more are accepted, never more than 8 at once.)
    let tally = Tally::default();
    abuse::flood_once(&addr, 40, &tally, &never).await;
    let stats = tally.stats();
    let count = |k: &str| stats.outcomes.get(k).copied().unwrap_or(0);
    assert!(count("refused_stream") >= 24, "{stats:?}");
    assert_eq!(count("refused_stream") + count("answered") + count("reset"), 40, "{stats:?}");
    victim.served(5).await?;

    // Slowloris: a connection that says nothing is closed after
    // limits.handshake_timeout_ms; one that sends only the preface and
    // never answers a PING after the keepalive interval and timeout.
    let (silent, preface) = tokio::join!(abuse::hold_silent(&addr, false), abuse::hold_silent(&addr, true));
    let (outcome, held) = silent?;
    assert_eq!(outcome, "closed_by_server");
    assert!(held.is_some_and(|h| h >= TIMEOUT), "{held:?}");
    let (outcome, held) = preface?;
    assert_eq!(outcome, "closed_by_server");
    assert!(held.is_some_and(|h| h >= TIMEOUT), "{held:?}");
    victim.served(5).await?;

    // limits.max_connections (24, the victim's among them): live
    // connections are accepted up to it, the next one is closed at once,
    // and once they go new ones are accepted again.
    let mut holders = Vec::new();
    let mut refused = false;
    for _ in 0..64 {
        match raw::Conn::handshake(&addr).await {
            Ok(mut conn) => holders.push(tokio::spawn(async move {
                // Answers PINGs, so keepalive keeps it.
                while let Ok(Some(_)) = conn.next().await {}
            })),
            Err(_) => {
                refused = true;
                break;
            }
        }
    }
    assert!(refused, "{} connections were all accepted", holders.len());
    assert!(holders.len() < 24, "{} accepted", holders.len());
    victim.served(5).await?;
    for holder in &holders {
        holder.abort();
    }
    eventually(Duration::from_secs(10), || {
        let addr = addr.clone();
        async move { Ok(raw::Conn::handshake(&addr).await?) }
    })
    .await?;

    // The refusals are counted where operators look.
    let metrics = gw.metrics().await?;
    for line in [
        "prism_gateway_connections_closed_total{reason=\"max_connections\"}",
        "prism_gateway_connections_closed_total{reason=\"handshake_timeout\"}",
        "prism_gateway_request_bodies_refused_total{reason=\"max_message_bytes\"}",
        "prism_gateway_request_bodies_refused_total{reason=\"request_read_timeout\"}",
    ] {
        let value = metrics
            .lines()
            .find_map(|l| l.strip_prefix(line))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        assert!(value >= 1.0, "{line} is {value}");
    }

    let (ok, failed) = victim.stop().await?;
    assert!(failed.is_empty(), "the other tenant's requests failed: {failed:?}");
    assert!(ok > 0);
    // And the gateway serves new clients as before.
    let mut fresh = gw.kv(Some(&admin_token())).await?;
    fresh
        .get_items(kv::GetItemsRequest { namespace: "other/kv".into(), id: "r-1".into(), ..Default::default() })
        .await?;
    Ok(())
}

/// `prism-loadtest abuse`: every attack in a short phase of its own; the
/// other tenant's load has no error in any phase, and each attack saw
/// the answers the limits promise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_abuse_command_measures_another_tenant_through_every_attack() -> anyhow::Result<()> {
    let cluster = cluster().await?;
    let gw = cluster.active_namespace("victim/kv", spec()).await?;
    let token = admin_token();
    let addr = gw.addr.to_string();
    let words = [
        "prism-loadtest",
        "abuse",
        "--target",
        &addr,
        "--namespace",
        "victim/kv",
        "--token",
        &token,
        "--rate",
        "200",
        "--concurrency",
        "8",
        "--keys",
        "20",
        "--phase",
        "500ms",
        "--warmup",
        "200ms",
        "--attackers",
        "1",
        "--oversized-bytes",
        "2097152",
        "--slowloris-connections",
        "3",
    ];
    let Outcome::Abuse(result) = run(Cli::try_parse_from(words)?).await? else { anyhow::bail!("not an abuse run") };
    let names: Vec<&str> = result.phases.iter().map(|p| p.attack.as_str()).collect();
    assert_eq!(names, ["none", "oversized", "nested", "stream-flood", "slowloris", "none"]);
    for phase in &result.phases {
        assert_eq!(phase.victim.errors, 0, "{}: {:?}", phase.attack, phase.victim.errors_by_code);
        assert!(phase.victim.ok > 0 && phase.p99_ratio > 0.0, "{}", phase.attack);
    }
    let outcomes = |attack: &str| {
        result
            .phases
            .iter()
            .find(|p| p.attack == attack)
            .and_then(|p| p.attack_stats.clone())
            .unwrap_or_default()
            .outcomes
    };
    assert!(outcomes("oversized").contains_key("ResourceExhausted"), "{:?}", outcomes("oversized"));
    assert!(outcomes("nested").contains_key("InvalidArgument"), "{:?}", outcomes("nested"));
    assert!(outcomes("stream-flood").contains_key("refused_stream"), "{:?}", outcomes("stream-flood"));
    assert!(result.table().contains("p99"));
    Ok(())
}
