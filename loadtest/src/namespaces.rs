//! `prism-loadtest namespaces`: creates many namespaces through the
//! control plane's admin API, for measuring what each costs a gateway
//! (`scripts/bench-namespace-memory.sh`) and the control plane.
//!
//! Namespaces are `<tenant-prefix>-<t>/<prefix>-<i>`, spread evenly over
//! `--tenants` tenants (each created with a `max_namespaces` quota large
//! enough for its share), with `--concurrency` creations in flight. One
//! that already exists counts as created, so a run can be resumed; any
//! lost race (`ABORTED`, a concurrent creation in the same tenant) is
//! tried again; any other refusal stops the run with its status.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use prism_proto::control::control_plane_service_client::ControlPlaneServiceClient;
use prism_proto::control::{
    Abstraction, Backend, CreateNamespaceRequest, CreateTenantRequest, NamespaceSpec, QuotaSet,
};
use tonic::transport::Channel;

/// The abstraction of the namespaces created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    KeyValue,
    TimeSeries,
}

#[derive(Debug, Clone, Args)]
pub struct NamespacesArgs {
    /// Control plane address (`host:port` or `http://host:port`).
    #[arg(long)]
    pub control_plane: String,
    /// Bearer token of a superuser (or none, against `--insecure-no-auth`).
    #[arg(long, env = "PRISM_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Namespaces to create.
    #[arg(long)]
    pub count: u64,
    /// Tenants they are spread over.
    #[arg(long, default_value_t = 100)]
    pub tenants: u64,
    /// Creations in flight.
    #[arg(long, default_value_t = 32)]
    pub concurrency: u64,
    /// First part of each tenant id.
    #[arg(long, default_value = "scale")]
    pub tenant_prefix: String,
    /// First part of each namespace's local name.
    #[arg(long, default_value = "ns")]
    pub prefix: String,
    /// Abstraction of every namespace (embedded backend).
    #[arg(long, value_enum, default_value_t = Kind::KeyValue)]
    pub abstraction: Kind,
}

fn endpoint(addr: &str) -> String {
    if addr.contains("://") { addr.to_owned() } else { format!("http://{addr}") }
}

fn request<T>(message: T, token: Option<&str>) -> anyhow::Result<tonic::Request<T>> {
    let mut req = tonic::Request::new(message);
    if let Some(token) = token {
        let value = format!("Bearer {token}").parse().context("--token is not valid in a header")?;
        req.metadata_mut().insert("authorization", value);
    }
    req.set_timeout(Duration::from_secs(30));
    Ok(req)
}

/// Creates the tenants, then the namespaces; prints how many and how fast.
pub async fn run(args: &NamespacesArgs) -> anyhow::Result<()> {
    if args.tenants == 0 || args.concurrency == 0 {
        bail!("--tenants and --concurrency must be at least 1");
    }
    let channel = Channel::from_shared(endpoint(&args.control_plane))
        .context("--control-plane is not an address")?
        .connect()
        .await
        .with_context(|| format!("cannot connect to {}", args.control_plane))?;
    let client = ControlPlaneServiceClient::new(channel);
    let token = args.token.as_deref();
    let per_tenant = args.count.div_ceil(args.tenants);
    for t in 0..args.tenants {
        let quotas =
            QuotaSet { max_namespaces: Some(i64::try_from(per_tenant).unwrap_or(i64::MAX)), ..Default::default() };
        let message = CreateTenantRequest {
            tenant_id: format!("{}-{t}", args.tenant_prefix),
            quotas: Some(quotas),
            ..Default::default()
        };
        match client.clone().create_tenant(request(message, token)?).await {
            Ok(_) => {}
            Err(s) if s.code() == tonic::Code::AlreadyExists => {}
            Err(s) => bail!("creating tenant {}-{t}: {} {}", args.tenant_prefix, s.code(), s.message()),
        }
    }
    let abstraction = match args.abstraction {
        Kind::KeyValue => Abstraction::KeyValue,
        Kind::TimeSeries => Abstraction::TimeSeries,
    };
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency.min(args.count.max(1)) {
        let (next, mut client, args) = (next.clone(), client.clone(), args.clone());
        workers.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= args.count {
                    return anyhow::Ok(());
                }
                let name = format!("{}-{}/{}-{i}", args.tenant_prefix, i % args.tenants, args.prefix);
                let spec = NamespaceSpec {
                    abstraction: abstraction as i32,
                    backend: Backend::Embedded as i32,
                    ..Default::default()
                };
                // ABORTED is a lost race with a concurrent creation in the
                // same tenant (its namespace count): tried again.
                let mut attempt = 0u32;
                loop {
                    let message = CreateNamespaceRequest { name: name.clone(), spec: Some(spec.clone()) };
                    match client.create_namespace(request(message, args.token.as_deref())?).await {
                        Ok(_) => break,
                        Err(s) if s.code() == tonic::Code::AlreadyExists => break,
                        Err(s) if s.code() == tonic::Code::Aborted && attempt < 20 => {
                            attempt += 1;
                            tokio::time::sleep(Duration::from_millis(u64::from(attempt) * 5)).await;
                        }
                        Err(s) => bail!("creating {name}: {} {}", s.code(), s.message()),
                    }
                }
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        done.context("a worker panicked")??;
    }
    let elapsed = start.elapsed();
    println!(
        "{} namespaces over {} tenants in {:.1} s ({:.0}/s)",
        args.count,
        args.tenants,
        elapsed.as_secs_f64(),
        args.count as f64 / elapsed.as_secs_f64().max(1e-9)
    );
    Ok(())
}
