//! `prism namespace …`: create (from flags or a spec file, optionally
//! waiting for ACTIVE), read, list, update, delete, grant, revoke,
//! migrate (`crate::migrate`) and watch namespaces.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use prism_client::ControlPlaneClient;
use prism_proto::control::{
    AccessLevel, CreateNamespaceRequest, DeleteNamespaceRequest, GetNamespaceRequest, GrantAccessRequest,
    ListNamespacesRequest, ListNamespacesResponse, Namespace, NamespaceStatus, RevokeAccessRequest,
    UpdateNamespaceRequest, WatchRequest, WatchResponse, watch_response,
};
use tonic::Code;

use crate::error::usage;
use crate::flags::{PageArgs, pages, parse_access, parse_duration};
use crate::json::{self, names};
use crate::output::{self, Format};
use crate::spec_file::{self, SpecFile};
use crate::spec_flags::SpecArgs;
use crate::{Global, shutdown_signal};

/// How often `--wait` asks for the namespace's status.
pub const WAIT_POLL_INTERVAL: Duration = Duration::from_millis(200);
/// Reconnects of `watch` after falling behind without receiving anything
/// new in between, before it gives up.
pub const MAX_STALLED_RESUMES: u32 = 3;

#[derive(Debug, Subcommand)]
pub enum NamespaceCommand {
    /// Create a namespace from flags or a spec file
    Create(CreateArgs),
    /// Show a namespace
    Get { name: String },
    /// List namespaces
    List {
        /// Only the namespaces of this tenant
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        page: PageArgs,
        /// Include DELETED tombstones
        #[arg(long)]
        include_deleted: bool,
    },
    /// Change a namespace's spec: flags change only what they name, a file replaces the spec
    Update(UpdateArgs),
    /// Delete a namespace (its owning shard removes the backend resources)
    Delete {
        name: String,
        /// Apply only if the namespace is at this revision
        #[arg(long, value_name = "N")]
        expected_revision: Option<u64>,
    },
    /// Grant a principal read or read-write access
    Grant {
        name: String,
        principal: String,
        /// read or read-write
        #[arg(long, value_parser = parse_access)]
        access: AccessLevel,
    },
    /// Revoke a principal's grant
    Revoke { name: String, principal: String },
    /// Move a namespace to another backend or shard while it serves; `migrate status|abort NAME`
    Migrate(crate::migrate::MigrateArgs),
    /// Print metadata changes as they happen (until Ctrl-C)
    Watch {
        /// Start after this revision (0 = a snapshot first)
        #[arg(long, value_name = "N", default_value_t = 0)]
        from_revision: u64,
    },
}

#[derive(Debug, Clone, Args)]
pub struct WaitArgs {
    /// Wait until the namespace is ACTIVE; fail if it becomes DEGRADED
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "60s", requires = "wait")]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct CreateArgs {
    /// tenant/name (may be omitted when the spec file names it)
    pub name: Option<String>,
    /// Spec file: .yaml, .yml or .json; `-` reads YAML (or JSON) from stdin
    #[arg(long, short = 'f', value_name = "FILE")]
    pub file: Option<PathBuf>,
    #[command(flatten)]
    pub spec: SpecArgs,
    #[command(flatten)]
    pub wait: WaitArgs,
}

#[derive(Debug, Clone, Args)]
pub struct UpdateArgs {
    /// tenant/name (may be omitted when the spec file names it)
    pub name: Option<String>,
    /// Spec file replacing the whole spec (see `create --file`)
    #[arg(long, short = 'f', value_name = "FILE")]
    pub file: Option<PathBuf>,
    #[command(flatten)]
    pub spec: SpecArgs,
    /// Apply only if the namespace is at this revision (default with flags: the revision read)
    #[arg(long, value_name = "N")]
    pub expected_revision: Option<u64>,
    #[command(flatten)]
    pub wait: WaitArgs,
}

/// Prints one namespace.
pub fn show(format: Format, ns: &Namespace) -> anyhow::Result<()> {
    match format {
        Format::Json => output::print_json(&json::namespace(ns)),
        Format::Table => {
            output::print(&output::namespaces_table(std::slice::from_ref(ns)).render())?;
            // What the backend holds of the spec, when the owner reported it.
            if !ns.backend_settings.is_empty() {
                output::print(&output::backend_settings_table(&ns.backend_settings).render())?;
            }
            Ok(())
        }
    }
}

/// The spec file named by `--file`, if any; it cannot be combined with
/// spec flags.
fn read_file(file: Option<&PathBuf>, flags: &SpecArgs) -> anyhow::Result<Option<SpecFile>> {
    if file.is_some() && *flags != SpecArgs::default() {
        return Err(usage("--file holds the whole spec; give either --file or spec flags, not both"));
    }
    file.map(|path| spec_file::read(path)).transpose()
}

pub async fn run(global: &Global, cmd: NamespaceCommand) -> anyhow::Result<()> {
    match cmd {
        NamespaceCommand::Create(args) => create(global, args).await,
        NamespaceCommand::Update(args) => update(global, args).await,
        NamespaceCommand::Watch { from_revision } => watch(global, from_revision).await,
        NamespaceCommand::Migrate(args) => crate::migrate::run(global, args).await,
        NamespaceCommand::List { tenant, page, include_deleted } => {
            let client = global.connect().await?;
            let (namespaces, next_page_token) = pages(page.all_pages, |page_token| {
                let mut client = client.clone();
                let req = ListNamespacesRequest {
                    tenant_id: tenant.clone().unwrap_or_default(),
                    page_size: page.page_size.unwrap_or(0),
                    page_token,
                    include_deleted,
                };
                async move {
                    let r = client.list_namespaces(req).await?.into_inner();
                    Ok((r.namespaces, r.next_page_token))
                }
            })
            .await?;
            match global.output {
                Format::Json => {
                    output::print_json(&json::namespaces(&ListNamespacesResponse { namespaces, next_page_token }))
                }
                Format::Table => Ok(output::print(&output::namespaces_table(&namespaces).render())?),
            }
        }
        NamespaceCommand::Get { name } => {
            let ns = global.connect().await?.get_namespace(GetNamespaceRequest { name }).await?.into_inner();
            show(global.output, &ns)
        }
        NamespaceCommand::Delete { name, expected_revision } => {
            let req = DeleteNamespaceRequest { name, expected_revision: expected_revision.unwrap_or(0) };
            let ns = global.connect().await?.delete_namespace(req).await?.into_inner();
            show(global.output, &ns)
        }
        NamespaceCommand::Grant { name, principal, access } => {
            let req = GrantAccessRequest { name, principal, level: access as i32, expected_revision: 0 };
            let ns = global.connect().await?.grant_access(req).await?.into_inner();
            show(global.output, &ns)
        }
        NamespaceCommand::Revoke { name, principal } => {
            let req = RevokeAccessRequest { name, principal, expected_revision: 0 };
            let ns = global.connect().await?.revoke_access(req).await?.into_inner();
            show(global.output, &ns)
        }
    }
}

async fn create(global: &Global, args: CreateArgs) -> anyhow::Result<()> {
    let file = read_file(args.file.as_ref(), &args.spec)?;
    let name = spec_file::namespace_name(args.name.as_deref(), file.as_ref())?;
    let spec = match &file {
        Some(f) => f.to_spec()?,
        None => args.spec.to_new_spec()?,
    };
    let mut client = global.connect().await?;
    let ns = client.create_namespace(CreateNamespaceRequest { name, spec: Some(spec) }).await?.into_inner();
    let ns = if args.wait.wait { wait_active(&mut client, ns, args.wait.timeout).await? } else { ns };
    show(global.output, &ns)
}

async fn update(global: &Global, args: UpdateArgs) -> anyhow::Result<()> {
    let file = read_file(args.file.as_ref(), &args.spec)?;
    let name = spec_file::namespace_name(args.name.as_deref(), file.as_ref())?;
    if file.is_none() && args.spec == SpecArgs::default() {
        return Err(usage("nothing to change: give spec flags or --file"));
    }
    let file_spec = file.as_ref().map(SpecFile::to_spec).transpose()?;
    let mut client = global.connect().await?;
    let (spec, expected_revision) = match file_spec {
        Some(spec) => (spec, args.expected_revision.unwrap_or(0)),
        None => {
            // UpdateNamespace replaces the spec: start from the stored one
            // so only what the user gave changes, and send the revision
            // read so a concurrent change is not silently overwritten.
            let current = client.get_namespace(GetNamespaceRequest { name: name.clone() }).await?.into_inner();
            let mut spec = current.spec.unwrap_or_default();
            args.spec.apply(&mut spec)?;
            (spec, args.expected_revision.unwrap_or(current.revision))
        }
    };
    let req = UpdateNamespaceRequest { name, spec: Some(spec), expected_revision };
    let ns = client.update_namespace(req).await?.into_inner();
    let ns = if args.wait.wait { wait_active(&mut client, ns, args.wait.timeout).await? } else { ns };
    show(global.output, &ns)
}

/// Polls the namespace until it is ACTIVE (returned), DEGRADED or being
/// deleted (an error with its reason), or `timeout` passes (an error with
/// the last status and reason).
pub async fn wait_active(
    client: &mut ControlPlaneClient,
    mut ns: Namespace,
    timeout: Duration,
) -> anyhow::Result<Namespace> {
    let deadline = tokio::time::Instant::now() + timeout;
    let name = ns.name.clone();
    loop {
        let status = NamespaceStatus::try_from(ns.status).unwrap_or(NamespaceStatus::Unspecified);
        let described = if ns.status_reason.is_empty() {
            names::namespace_status(ns.status)
        } else {
            format!("{}: {}", names::namespace_status(ns.status), ns.status_reason)
        };
        match status {
            NamespaceStatus::Active => return Ok(ns),
            NamespaceStatus::Degraded | NamespaceStatus::Deleting | NamespaceStatus::Deleted => {
                anyhow::bail!("namespace {name} is {described}");
            }
            NamespaceStatus::Provisioning | NamespaceStatus::Unspecified => {}
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            anyhow::bail!(
                "namespace {name} is not ACTIVE after {}; it is {described}",
                humantime::format_duration(timeout)
            );
        }
        tokio::time::sleep(WAIT_POLL_INTERVAL.min(deadline - now)).await;
        match client.get_namespace(GetNamespaceRequest { name: name.clone() }).await {
            Ok(r) => ns = r.into_inner(),
            // A control plane restarting is not the namespace failing.
            Err(status) if status.code() == Code::Unavailable => {
                tracing::warn!(error = %status.message(), "control plane unavailable while waiting, retrying");
            }
            Err(status) => return Err(status.into()),
        }
    }
}

/// Prints one Watch message and returns the revision the watcher has
/// fully applied after it, if it moved.
fn print_watch(format: Format, w: &WatchResponse) -> anyhow::Result<Option<u64>> {
    match format {
        Format::Json => output::print_json_line(&json::watch_response(w))?,
        Format::Table => output::print(&output::watch_text(w))?,
    }
    Ok(match &w.event {
        Some(watch_response::Event::Snapshot(s)) if s.last => Some(s.revision),
        Some(watch_response::Event::Delta(d)) => Some(d.revision),
        _ => None,
    })
}

/// Streams Watch until Ctrl-C or the end of the stream. When the control
/// plane cuts the watcher off for falling behind (ABORTED), resumes from
/// the last revision printed, so nothing is missed or repeated.
async fn watch(global: &Global, from_revision: u64) -> anyhow::Result<()> {
    let mut client = global.connect().await?;
    let stop = shutdown_signal();
    tokio::pin!(stop);
    let mut last = from_revision;
    let mut stalled = 0;
    loop {
        let resumed_from = last;
        let mut stream = tokio::select! {
            () = &mut stop => return Ok(()),
            r = client.watch(WatchRequest { from_revision: last }) => r?.into_inner(),
        };
        let status = loop {
            let message = tokio::select! {
                () = &mut stop => return Ok(()),
                m = stream.message() => m,
            };
            match message {
                Ok(Some(w)) => {
                    if let Some(revision) = print_watch(global.output, &w)? {
                        last = revision;
                    }
                }
                Ok(None) => return Ok(()),
                Err(status) => break status,
            }
        };
        if status.code() != Code::Aborted {
            return Err(status.into());
        }
        stalled = if last > resumed_from { 0 } else { stalled + 1 };
        if stalled > MAX_STALLED_RESUMES {
            return Err(anyhow::Error::new(status).context(format!("watch keeps falling behind at revision {last}")));
        }
        tracing::warn!(resume_from = last, "watch fell behind the control plane, resuming");
    }
}
