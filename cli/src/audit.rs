//! `prism audit list`: the audit log, newest first, with filters.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Args, Subcommand};
use prism_proto::control::{ListAuditEventsRequest, ListAuditEventsResponse};

use crate::flags::{PageArgs, pages};
use crate::output::{self, Format};
use crate::{Global, json};

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// List audit events, newest first
    List(ListArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// Only events of this tenant
    #[arg(long)]
    pub tenant: Option<String>,
    /// Only events about this target (tenant id, namespace or shard)
    #[arg(long)]
    pub target: Option<String>,
    /// Only events by this principal
    #[arg(long)]
    pub principal: Option<String>,
    /// Only this action, e.g. CreateNamespace
    #[arg(long)]
    pub action: Option<String>,
    /// Only events since this long ago (1h, 7d) or since an RFC 3339 time
    #[arg(long, value_name = "WHEN", value_parser = parse_since)]
    pub since: Option<prost_types::Timestamp>,
    #[command(flatten)]
    pub page: PageArgs,
}

/// `1h` (that long ago) or `2024-05-01T12:00:00Z`.
pub fn parse_since(s: &str) -> Result<prost_types::Timestamp, String> {
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Ok(t.into());
    }
    let ago: Duration = humantime::parse_duration(s)
        .map_err(|_| format!("{s:?} is neither a duration (1h, 7d) nor an RFC 3339 time"))?;
    Ok(SystemTime::now().checked_sub(ago).unwrap_or(UNIX_EPOCH).into())
}

pub async fn run(global: &Global, cmd: AuditCommand) -> anyhow::Result<()> {
    let AuditCommand::List(args) = cmd;
    let client = global.connect().await?;
    let (events, next_page_token) = pages(args.page.all_pages, |page_token| {
        let mut client = client.clone();
        let req = ListAuditEventsRequest {
            tenant_id: args.tenant.clone().unwrap_or_default(),
            target: args.target.clone().unwrap_or_default(),
            principal: args.principal.clone().unwrap_or_default(),
            action: args.action.clone().unwrap_or_default(),
            since: args.since,
            page_size: args.page.page_size.unwrap_or(0),
            page_token,
        };
        async move {
            let r = client.list_audit_events(req).await?.into_inner();
            Ok((r.events, r.next_page_token))
        }
    })
    .await?;
    match global.output {
        Format::Json => output::print_json(&json::audit_events(&ListAuditEventsResponse { events, next_page_token })),
        Format::Table => Ok(output::print(&output::audit_table(&events).render())?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_durations_and_times() {
        let t = parse_since("2024-05-01T12:00:00Z").expect("rfc 3339");
        assert_eq!(t.seconds, 1_714_564_800);
        let hour_ago = parse_since("1h").expect("duration");
        let now = prost_types::Timestamp::from(SystemTime::now());
        assert!((now.seconds - hour_ago.seconds - 3600).abs() <= 1);
        assert!(parse_since("yesterday-ish").is_err());
    }
}
