//! The console's page-load target (pages in under 200 ms with 10 000
//! namespaces), measured: time to serve a whole page over HTTP, from the
//! request's first byte to the response's last, for the overview and the
//! namespace list as a superuser and as one tenant's admin, beside two
//! baselines in the same run: `/metrics` on the same listener, and a
//! gRPC `ListNamespaces` of the same page of data (what the namespace list
//! reads), so the cost of the page itself reads as the difference.
//!
//! The metadata (100 tenants of 100 namespaces, one in a hundred
//! DEGRADED) is written straight into the store in batches of a thousand:
//! the create path has its own bench (`control_plane.rs`); this one
//! measures reads.
//!
//! Run: `cargo bench -p prism-control-plane --bench console`.
//! `PRISM_BENCH_REQUESTS` sets the requests per row (default 200; 3 as a
//! smoke test under `cargo test`). Prints p50, p99 and max per row.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use prism_control_plane::ControlPlaneConfig;
use prism_control_plane::store::{Put, Txn};
use prism_proto::control::{
    Abstraction, Backend, ListNamespacesRequest, Namespace, NamespaceSpec, NamespaceStatus, Tenant, TenantState,
};
use prism_testkit::{ControlPlaneHandle, TEST_SECRET, admin_token, token};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TENANTS: usize = 100;
const PER_TENANT: usize = 100;
const BATCH: usize = 1000;

fn requests() -> usize {
    let default = if std::env::args().any(|a| a == "--bench") { 200 } else { 3 };
    std::env::var("PRISM_BENCH_REQUESTS").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

async fn seed(cp: &ControlPlaneHandle) -> anyhow::Result<()> {
    let store = cp.plane.store();
    let mut puts = Vec::new();
    for t in 0..TENANTS {
        let id = format!("tenant-{t:03}");
        puts.push(Put::Tenant(Tenant {
            id: id.clone(),
            display_name: format!("Tenant {t}"),
            state: TenantState::Active as i32,
            quotas: Some(prism_proto::quotas::resolve(None)),
            ..Default::default()
        }));
        for n in 0..PER_TENANT {
            let degraded = n % 100 == 7;
            puts.push(Put::Namespace(Namespace {
                name: format!("{id}/namespace-{n:03}"),
                spec: Some(NamespaceSpec {
                    abstraction: Abstraction::KeyValue as i32,
                    backend: Backend::Embedded as i32,
                    quotas: Some(prism_proto::quotas::resolve(None)),
                    ..Default::default()
                }),
                shard_id: format!("shard-{}", n % 2),
                status: if degraded { NamespaceStatus::Degraded } else { NamespaceStatus::Active } as i32,
                status_reason: if degraded { "the backend is unreachable".into() } else { String::new() },
                ..Default::default()
            }));
        }
    }
    for chunk in puts.chunks(BATCH) {
        store.commit(Txn { puts: chunk.to_vec(), ..Default::default() }).await?;
    }
    Ok(())
}

/// One GET with the session cookie; the time to the response's last byte.
async fn get(addr: SocketAddr, path: &str, token: &str) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!(
                "GET {path} HTTP/1.1\r\nhost: x\r\ncookie: prism_console_token={token}\r\nconnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let took = start.elapsed();
    anyhow::ensure!(response.starts_with(b"HTTP/1.1 200"), "{path}: {}", String::from_utf8_lossy(&response));
    Ok(took)
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

fn row(name: &str, h: &Histogram<u64>) {
    let ms = |v: u64| v as f64 / 1000.0;
    println!(
        "{name:<44} {:>9.2} {:>9.2} {:>9.2}",
        ms(h.value_at_quantile(0.5)),
        ms(h.value_at_quantile(0.99)),
        ms(h.max())
    );
}

async fn run() -> anyhow::Result<()> {
    let mut config = ControlPlaneConfig::default();
    config.auth.hs256_secret = Some(TEST_SECRET.into());
    let cp = ControlPlaneHandle::start_with(config).await?;
    let seeding = Instant::now();
    seed(&cp).await?;
    println!("seeded {} namespaces of {TENANTS} tenants in {:?}", TENANTS * PER_TENANT, seeding.elapsed());
    let at = cp.metrics_addr;
    let (admin, tenant_admin) = (admin_token(), token("bench", Some("tenant-042"), &["tenant-admin"]));
    let n = requests();
    let pages: [(&str, &str, &str); 6] = [
        ("overview (superuser, 10 000 namespaces)", "/console/", &admin),
        ("namespace list, first 50 (superuser)", "/console/namespaces", &admin),
        ("namespace list, 500 (superuser)", "/console/namespaces?page_size=500", &admin),
        ("overview (tenant admin, 100 namespaces)", "/console/", &tenant_admin),
        ("namespace list (tenant admin)", "/console/namespaces", &tenant_admin),
        ("baseline: /metrics", "/metrics", &admin),
    ];
    println!("{n} sequential requests per row, milliseconds");
    println!("{:<44} {:>9} {:>9} {:>9}", "page", "p50", "p99", "max");
    for (name, path, token) in pages {
        let mut h = histogram();
        get(at, path, token).await?; // warm
        for _ in 0..n {
            h.record(get(at, path, token).await?.as_micros() as u64)?;
        }
        row(name, &h);
    }
    // The same page of data as the namespace list, over gRPC.
    let mut client = cp.client().await?;
    for (name, size) in [("baseline: gRPC ListNamespaces, 50", 50), ("baseline: gRPC ListNamespaces, 500", 500)] {
        let mut h = histogram();
        for _ in 0..n {
            let start = Instant::now();
            client.list_namespaces(ListNamespacesRequest { page_size: size, ..Default::default() }).await?;
            h.record(start.elapsed().as_micros() as u64)?;
        }
        row(name, &h);
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?.block_on(run())
}
