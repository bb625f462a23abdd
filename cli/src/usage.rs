//! `prism usage [TENANT|NAMESPACE]`: current rates, concurrency, open
//! tails and utilization of every quota, from the gateways' latest reports
//! (and, for partitions and retention, from the namespaces' specs).
//! Without a target, one line per tenant.

use clap::Args;
use prism_proto::control::{GetUsageRequest, GetUsageResponse, ListTenantsRequest, QuotaUtilization, TenantState};
use serde_json::{Value, json};

use crate::Global;
use crate::flags::pages;
use crate::output::{self, Format, Table};

#[derive(Debug, Args)]
pub struct UsageArgs {
    /// A tenant id (`acme`) or a namespace (`acme/orders`); default: every tenant
    pub target: Option<String>,
}

pub async fn run(global: &Global, args: UsageArgs) -> anyhow::Result<()> {
    let mut client = global.connect().await?;
    if let Some(target) = args.target {
        let usage = client.get_usage(GetUsageRequest { target }).await?.into_inner();
        return match global.output {
            Format::Json => output::print_json(&usage_json(&usage)),
            Format::Table => Ok(output::print(&usage_tables(&usage))?),
        };
    }
    let (tenants, _) = pages(true, |page_token| {
        let mut client = client.clone();
        let req = ListTenantsRequest { page_size: 1000, page_token, ..Default::default() };
        async move {
            let r = client.list_tenants(req).await?.into_inner();
            Ok((r.tenants, r.next_page_token))
        }
    })
    .await?;
    let mut all = Vec::new();
    for t in tenants.iter().filter(|t| t.state != TenantState::Deleted as i32) {
        all.push(client.get_usage(GetUsageRequest { target: t.id.clone() }).await?.into_inner());
    }
    match global.output {
        Format::Json => output::print_json(&json!({ "tenants": all.iter().map(usage_json).collect::<Vec<_>>() })),
        Format::Table => Ok(output::print(&summary_table(&all).render())?),
    }
}

fn limit(l: i64) -> String {
    if l < 0 { "unlimited".into() } else { l.to_string() }
}

fn percent(q: &QuotaUtilization) -> String {
    match (q.limit < 0, q.utilization_percent.is_finite()) {
        (true, _) => "-".into(),
        (false, true) => format!("{:.1}%", q.utilization_percent),
        // A namespace keeping events forever, under a retention limit.
        (false, false) => "over".into(),
    }
}

fn number(v: f64) -> String {
    if v.is_infinite() {
        "forever".into()
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// Every quota of the target, then its namespaces' usage.
pub fn usage_tables(u: &GetUsageResponse) -> String {
    let mut quotas = Table::new(&["QUOTA", "USED", "LIMIT", "UTILIZATION"]);
    for q in &u.quotas {
        quotas.push(vec![q.quota.clone(), number(q.used), limit(q.limit), percent(q)]);
    }
    let mut namespaces = Table::new(&[
        "NAMESPACE",
        "REQUESTS/S",
        "READ B/S",
        "WRITE B/S",
        "CONCURRENT",
        "EVENTS/S",
        "EVENT B/S",
        "TAILS",
    ]);
    for n in &u.namespaces {
        namespaces.push(vec![
            n.namespace.clone(),
            number(n.requests_per_second),
            number(n.read_bytes_per_second),
            number(n.write_bytes_per_second),
            n.concurrent_requests.to_string(),
            number(n.events_per_second),
            number(n.event_bytes_per_second),
            n.open_tails.to_string(),
        ]);
    }
    let mut out = quotas.render();
    if !u.namespaces.is_empty() {
        out.push('\n');
        out.push_str(&namespaces.render());
    }
    out
}

/// One line per tenant: its request rate and the quota closest to its
/// limit.
pub fn summary_table(all: &[GetUsageResponse]) -> Table {
    let mut t = Table::new(&["TENANT", "REQUESTS/S", "NAMESPACES", "FULLEST QUOTA", "UTILIZATION"]);
    for u in all {
        let get = |name: &str| u.quotas.iter().find(|q| q.quota == name);
        let fullest = u.quotas.iter().filter(|q| q.limit >= 0).max_by(|a, b| {
            a.utilization_percent.partial_cmp(&b.utilization_percent).unwrap_or(std::cmp::Ordering::Equal)
        });
        t.push(vec![
            u.target.clone(),
            get("requests_per_second").map_or_else(String::new, |q| number(q.used)),
            get("max_namespaces").map_or_else(String::new, |q| number(q.used)),
            fullest.map_or_else(String::new, |q| q.quota.clone()),
            fullest.map_or_else(String::new, percent),
        ]);
    }
    t
}

pub fn usage_json(u: &GetUsageResponse) -> Value {
    json!({
        "target": u.target,
        "quotas": u.quotas.iter().map(|q| json!({
            "quota": q.quota,
            "used": q.used,
            "limit": q.limit,
            "utilization_percent": q.utilization_percent,
        })).collect::<Vec<_>>(),
        "namespaces": u.namespaces.iter().map(|n| json!({
            "namespace": n.namespace,
            "requests_per_second": n.requests_per_second,
            "read_bytes_per_second": n.read_bytes_per_second,
            "write_bytes_per_second": n.write_bytes_per_second,
            "storage_bytes": n.storage_bytes,
            "concurrent_requests": n.concurrent_requests,
            "events_per_second": n.events_per_second,
            "event_bytes_per_second": n.event_bytes_per_second,
            "open_tails": n.open_tails,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use prism_proto::control::NamespaceUsage;

    fn sample() -> GetUsageResponse {
        GetUsageResponse {
            target: "acme".into(),
            quotas: vec![
                QuotaUtilization {
                    quota: "requests_per_second".into(),
                    used: 50.0,
                    limit: 200,
                    utilization_percent: 25.0,
                },
                QuotaUtilization { quota: "storage_bytes".into(), used: 0.0, limit: -1, utilization_percent: 0.0 },
                QuotaUtilization { quota: "max_namespaces".into(), used: 3.0, limit: 4, utilization_percent: 75.0 },
            ],
            namespaces: vec![NamespaceUsage {
                namespace: "acme/orders".into(),
                requests_per_second: 50.0,
                read_bytes_per_second: 1024.5,
                events_per_second: 900.0,
                open_tails: 2,
                ..Default::default()
            }],
        }
    }

    #[test]
    fn tables_show_limits_and_utilization() {
        let text = usage_tables(&sample());
        assert!(text.contains("requests_per_second  50    200        25.0%"), "{text}");
        assert!(text.contains("storage_bytes        0     unlimited  -"), "{text}");
        assert!(text.contains("acme/orders  50          1024.5"), "{text}");
        assert!(text.contains("900       0          2"), "events and tails: {text}");
        let summary = summary_table(&[sample()]).render();
        assert!(summary.contains("acme    50          3           max_namespaces  75.0%"), "{summary}");
    }

    #[test]
    fn a_namespace_kept_forever_is_over_a_retention_limit() {
        let forever = GetUsageResponse {
            target: "acme/old".into(),
            quotas: vec![QuotaUtilization {
                quota: "max_retention_seconds".into(),
                used: f64::INFINITY,
                limit: 86_400,
                utilization_percent: f64::INFINITY,
            }],
            namespaces: vec![],
        };
        let text = usage_tables(&forever);
        assert!(text.contains("max_retention_seconds  forever  86400  over"), "{text}");
        assert!(usage_json(&forever)["quotas"][0]["used"].is_null(), "JSON has no infinity");
    }
}
