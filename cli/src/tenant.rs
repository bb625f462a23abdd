//! `prism tenant …`: create, read, list, update, suspend, activate and
//! delete tenants.

use clap::Subcommand;
use prism_proto::control::{
    CreateTenantRequest, DeleteTenantRequest, GetTenantRequest, ListTenantsRequest, ListTenantsResponse,
    SetTenantStateRequest, Tenant, TenantState, UpdateTenantRequest,
};

use crate::error::usage;
use crate::flags::{PageArgs, TenantQuotaArgs, pages};
use crate::output::{self, Format};
use crate::{Global, json};

#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Create a tenant (state ACTIVE)
    Create {
        /// Tenant id, [a-z0-9][a-z0-9-]{0,62}
        id: String,
        /// Free-form display name
        #[arg(long)]
        display_name: Option<String>,
        /// A principal that administers the tenant (repeat for more)
        #[arg(long = "admin", value_name = "PRINCIPAL")]
        admins: Vec<String>,
        #[command(flatten)]
        quotas: TenantQuotaArgs,
    },
    /// Show a tenant
    Get { id: String },
    /// List tenants
    List {
        #[command(flatten)]
        page: PageArgs,
        /// Include DELETED tombstones
        #[arg(long)]
        include_deleted: bool,
    },
    /// Change a tenant's display name, admins or quotas; what is not given is kept
    Update {
        id: String,
        /// New display name
        #[arg(long)]
        display_name: Option<String>,
        /// The admins (repeat for more; replaces the list)
        #[arg(long = "admin", value_name = "PRINCIPAL")]
        admins: Vec<String>,
        /// Remove every admin
        #[arg(long, conflicts_with = "admins")]
        clear_admins: bool,
        #[command(flatten)]
        quotas: TenantQuotaArgs,
        /// Apply only if the tenant is at this revision (default: the revision read)
        #[arg(long, value_name = "N")]
        expected_revision: Option<u64>,
    },
    /// Suspend a tenant: its requests are refused
    Suspend {
        id: String,
        /// Why (recorded in the tenant and the audit log)
        #[arg(long)]
        reason: Option<String>,
    },
    /// Re-activate a suspended tenant
    Activate { id: String },
    /// Delete a tenant and erase all its namespaces' data
    Delete {
        id: String,
        /// Apply only if the tenant is at this revision
        #[arg(long, value_name = "N")]
        expected_revision: Option<u64>,
    },
}

/// Prints one tenant.
pub fn show(format: Format, tenant: &Tenant) -> anyhow::Result<()> {
    match format {
        Format::Json => output::print_json(&json::tenant(tenant)),
        Format::Table => Ok(output::print(&output::tenants_table(std::slice::from_ref(tenant)).render())?),
    }
}

pub async fn run(global: &Global, cmd: TenantCommand) -> anyhow::Result<()> {
    let mut client = global.connect().await?;
    let tenant = match cmd {
        TenantCommand::Create { id, display_name, admins, quotas } => {
            let req = CreateTenantRequest {
                tenant_id: id,
                display_name: display_name.unwrap_or_default(),
                quotas: quotas.to_quotas(None),
                admins,
            };
            client.create_tenant(req).await?.into_inner()
        }
        TenantCommand::Get { id } => client.get_tenant(GetTenantRequest { tenant_id: id }).await?.into_inner(),
        TenantCommand::List { page, include_deleted } => {
            let (tenants, next_page_token) = pages(page.all_pages, |page_token| {
                let mut client = client.clone();
                let req = ListTenantsRequest { page_size: page.page_size.unwrap_or(0), page_token, include_deleted };
                async move {
                    let r = client.list_tenants(req).await?.into_inner();
                    Ok((r.tenants, r.next_page_token))
                }
            })
            .await?;
            return match global.output {
                Format::Json => output::print_json(&json::tenants(&ListTenantsResponse { tenants, next_page_token })),
                Format::Table => Ok(output::print(&output::tenants_table(&tenants).render())?),
            };
        }
        TenantCommand::Update { id, display_name, admins, clear_admins, quotas, expected_revision } => {
            let nothing = display_name.is_none() && admins.is_empty() && !clear_admins;
            if nothing && quotas.to_quotas(None).is_none() {
                return Err(usage("nothing to change: give --display-name, --admin, --clear-admins or a quota flag"));
            }
            // UpdateTenant replaces the display name and admins: start from
            // the stored tenant so what the user did not give is kept, and
            // send the revision read so a concurrent change is not lost.
            let current = client.get_tenant(GetTenantRequest { tenant_id: id.clone() }).await?.into_inner();
            let req = UpdateTenantRequest {
                tenant_id: id,
                display_name: display_name.unwrap_or(current.display_name),
                quotas: quotas.to_quotas(current.quotas.as_ref()),
                admins: if clear_admins || !admins.is_empty() { admins } else { current.admins },
                expected_revision: expected_revision.unwrap_or(current.revision),
            };
            client.update_tenant(req).await?.into_inner()
        }
        TenantCommand::Suspend { id, reason } => {
            let req = SetTenantStateRequest {
                tenant_id: id,
                state: TenantState::Suspended as i32,
                reason: reason.unwrap_or_default(),
                expected_revision: 0,
            };
            client.set_tenant_state(req).await?.into_inner()
        }
        TenantCommand::Activate { id } => {
            let req = SetTenantStateRequest {
                tenant_id: id,
                state: TenantState::Active as i32,
                reason: String::new(),
                expected_revision: 0,
            };
            client.set_tenant_state(req).await?.into_inner()
        }
        TenantCommand::Delete { id, expected_revision } => {
            let req = DeleteTenantRequest { tenant_id: id, expected_revision: expected_revision.unwrap_or(0) };
            client.delete_tenant(req).await?.into_inner()
        }
    };
    show(global.output, &tenant)
}
