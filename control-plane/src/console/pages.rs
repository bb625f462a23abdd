//! The console's pages. Each one checks its session and parameters first,
//! then reads only through the gRPC [`Service`](crate::service::Service)
//! (in process, presenting the session's token), so it shows exactly what
//! the API would answer that principal.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use maud::{Markup, html};
use prism_proto::control::control_plane_service_server::ControlPlaneService;
use prism_proto::control::{
    Abstraction, AuditEvent, Backend, GetNamespaceRequest, GetTenantRequest, GetUsageRequest, GetUsageResponse,
    ListAuditEventsRequest, ListNamespacesRequest, ListShardsRequest, ListTenantsRequest, Namespace, NamespaceStatus,
    QuotaSet, Tenant, TenantState,
};

use super::params::Params;
use super::view::{self, amount, meter, status, status_name, tenant_state_name, time};
use super::{Console, Failure, NamespacePath, RawParams, Session, html as respond};
use crate::authz::Need;
use crate::page_token::{self, Listing};

/// Objects asked of the API per call when a page reads a whole listing.
const BATCH: u32 = 1000;
/// DEGRADED namespaces the overview lists by name (the rest are counted).
const OVERVIEW_DEGRADED: usize = 200;
/// Audit events one page reads at most while filtering by result.
const AUDIT_SCAN: usize = 10_000;
/// Utilization from which the overview calls a tenant near its quota.
const NEAR_QUOTA_PERCENT: f64 = 80.0;
/// Status changes a namespace page shows.
const HISTORY_EVENTS: u32 = 50;

/// A page to render in the frame.
struct Page {
    who: String,
    title: String,
    body: Markup,
}

fn finish(page: Result<Page, Failure>) -> Response {
    match page {
        Ok(p) => respond(StatusCode::OK, view::page(&p.title, &p.who, p.body), false),
        Err(failure) => axum::response::IntoResponse::into_response(failure),
    }
}

type Console_ = State<Arc<Console>>;

pub async fn overview(State(c): Console_, headers: HeaderMap, raw: RawParams) -> Response {
    finish(overview_page(&c, &headers, raw).await)
}

pub async fn tenants(State(c): Console_, headers: HeaderMap, raw: RawParams) -> Response {
    finish(tenants_page(&c, &headers, raw).await)
}

pub async fn tenant(
    State(c): Console_,
    axum::extract::Path(id): axum::extract::Path<String>,
    headers: HeaderMap,
    raw: RawParams,
) -> Response {
    finish(tenant_page(&c, &headers, &id, raw).await)
}

pub async fn namespaces(State(c): Console_, headers: HeaderMap, raw: RawParams) -> Response {
    finish(namespaces_page(&c, &headers, raw).await)
}

pub async fn namespace(
    State(c): Console_,
    axum::extract::Path((tenant, name)): NamespacePath,
    headers: HeaderMap,
    raw: RawParams,
) -> Response {
    finish(namespace_page(&c, &headers, &format!("{tenant}/{name}"), raw).await)
}

pub async fn usage(State(c): Console_, headers: HeaderMap, raw: RawParams) -> Response {
    finish(usage_page(&c, &headers, raw).await)
}

pub async fn audit(State(c): Console_, headers: HeaderMap, raw: RawParams) -> Response {
    finish(audit_page(&c, &headers, raw).await)
}

// ---------------------------------------------------------------------
// Reads through the API
// ---------------------------------------------------------------------

/// Every namespace of `tenant` (all tenants when empty) the session may
/// see, in name order, after `after`, until `enough` says stop.
async fn namespaces_after(
    c: &Console,
    s: &Session,
    tenant: &str,
    after: &str,
    mut keep: impl FnMut(Namespace) -> bool,
) -> Result<(), Failure> {
    let mut token = if after.is_empty() { String::new() } else { page_token::encode(Listing::Namespaces, after) };
    loop {
        let req = ListNamespacesRequest {
            tenant_id: tenant.to_owned(),
            page_size: BATCH,
            page_token: token,
            include_deleted: false,
        };
        let page = c.service.list_namespaces(s.request(req)).await?.into_inner();
        for ns in page.namespaces {
            if !keep(ns) {
                return Ok(());
            }
        }
        if page.next_page_token.is_empty() {
            return Ok(());
        }
        token = page.next_page_token;
    }
}

/// Every tenant the session may see, after `after`, until `keep` says
/// stop.
async fn tenants_after(
    c: &Console,
    s: &Session,
    after: &str,
    mut keep: impl FnMut(Tenant) -> bool,
) -> Result<(), Failure> {
    let mut token = if after.is_empty() { String::new() } else { page_token::encode(Listing::Tenants, after) };
    loop {
        let req = ListTenantsRequest { page_size: BATCH, page_token: token, include_deleted: false };
        let page = c.service.list_tenants(s.request(req)).await?.into_inner();
        for t in page.tenants {
            if !keep(t) {
                return Ok(());
            }
        }
        if page.next_page_token.is_empty() {
            return Ok(());
        }
        token = page.next_page_token;
    }
}

async fn usage_of(c: &Console, s: &Session, target: &str) -> Result<GetUsageResponse, Failure> {
    Ok(c.service.get_usage(s.request(GetUsageRequest { target: target.to_owned() })).await?.into_inner())
}

/// A filter naming a tenant that matched nothing: says so when the
/// tenant does not exist (or may not be seen), rather than showing an
/// empty list as if it did.
async fn check_tenant(c: &Console, s: &Session, tenant: &str) -> Result<(), Failure> {
    c.service.get_tenant(s.request(GetTenantRequest { tenant_id: tenant.to_owned() })).await?;
    Ok(())
}

/// A URL query string of `pairs` with values (`""` ones left out).
fn query(pairs: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (k, v) in pairs.iter().filter(|(_, v)| !v.is_empty()) {
        out.push(if out.is_empty() { '?' } else { '&' });
        out.push_str(k);
        out.push('=');
        for b in v.bytes() {
            if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
                out.push(char::from(b));
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    out
}

fn namespace_link(name: &str) -> Markup {
    html! { a href=(format!("/console/namespaces/{name}")) { (name) } }
}

fn tenant_link(id: &str) -> Markup {
    html! { a href=(format!("/console/tenants/{id}")) { (id) } }
}

// ---------------------------------------------------------------------
// Overview
// ---------------------------------------------------------------------

async fn overview_page(c: &Console, headers: &HeaderMap, raw: RawParams) -> Result<Page, Failure> {
    let s = c.session(headers)?;
    Params::parse(raw, &[])?;
    let revision = c.service.plane().store().revision().await?;
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut degraded = Vec::new();
    let mut degraded_count = 0;
    namespaces_after(c, &s, "", "", |ns| {
        *counts.entry(status_name(ns.status)).or_default() += 1;
        if ns.status == NamespaceStatus::Degraded as i32 {
            degraded_count += 1;
            if degraded.len() < OVERVIEW_DEGRADED {
                degraded.push(ns);
            }
        }
        true
    })
    .await?;
    let mut tenants = Vec::new();
    tenants_after(c, &s, "", |t| {
        tenants.push(t);
        true
    })
    .await?;
    // Tenant by tenant, the API's GetUsage: what `prism usage` shows.
    let mut near = Vec::new();
    for t in tenants.iter().filter(|t| t.state != TenantState::Deleted as i32) {
        let usage = usage_of(c, &s, &t.id).await?;
        for q in usage.quotas.into_iter().filter(|q| q.limit >= 0 && q.utilization_percent >= NEAR_QUOTA_PERCENT) {
            near.push((t.id.clone(), q));
        }
    }
    let shards = c.service.list_shards(s.request(ListShardsRequest {})).await?.into_inner().shards;
    let lease = Duration::from_millis(c.service.plane().config().shard_lease_ttl_ms);
    let now = SystemTime::now();
    let total: usize = counts.values().sum();
    let body = html! {
        div.cards {
            div.card { b id="count-namespaces" { (total) } "namespaces" }
            @for (name, n) in &counts {
                div.card { b id=(format!("count-{name}")) class=(name) { (n) } (name) }
            }
            div.card { b { (tenants.len()) } "tenants" }
            div.card { b id="revision" { (revision) } "metadata revision" }
        }
        h2 { "DEGRADED namespaces" }
        @if degraded.is_empty() {
            p.muted { "None." }
        } @else {
            table id="degraded" {
                tr { th { "namespace" } th { "reason" } th { "shard" } th { "since" } }
                @for ns in &degraded {
                    tr {
                        td { (namespace_link(&ns.name)) }
                        td.reason { (ns.status_reason) }
                        td { (ns.shard_id) }
                        td { (time(ns.update_time.as_ref())) }
                    }
                }
            }
            @if degraded_count > degraded.len() {
                p { a href="/console/namespaces?status=DEGRADED" { "All " (degraded_count) " DEGRADED namespaces" } }
            }
        }
        h2 { "Tenants at " (NEAR_QUOTA_PERCENT) " % or more of a quota" }
        @if near.is_empty() {
            p.muted { "None." }
        } @else {
            table id="near-quota" {
                tr { th { "tenant" } th { "quota" } th { "used" } th { "limit" } th { "utilization" } }
                @for (tenant, q) in &near {
                    tr {
                        td { (tenant_link(tenant)) }
                        td { (q.quota) }
                        td { (amount(&q.quota, q.used)) }
                        td { (amount(&q.quota, q.limit as f64)) }
                        td { (meter(q.utilization_percent)) }
                    }
                }
            }
        }
        h2 { "Shards" }
        @if shards.is_empty() {
            p.muted { "No gateway has registered." }
        } @else {
            table id="shards" {
                tr { th { "shard" } th { "instance" } th { "endpoint" } th { "registered" } th { "last heartbeat" } th { "lease ends in" } }
                @for shard in &shards {
                    @for (i, inst) in shard.instances.iter().enumerate() {
                        @let expires = view::system_time(inst.lease_expire_time.as_ref());
                        @let left = expires.and_then(|e| e.duration_since(now).ok()).unwrap_or_default();
                        tr {
                            td { @if i == 0 { (shard.shard_id) } }
                            td { (inst.instance_id) }
                            td { (inst.endpoint) }
                            td { (time(inst.register_time.as_ref())) }
                            // A lease is renewed to a full lease at every heartbeat.
                            td { (view::duration(lease.saturating_sub(left))) " ago" }
                            td { (view::duration(left)) }
                        }
                    }
                }
            }
        }
        p.muted {
            "Metadata is at revision " (revision) ". How far each gateway's snapshot lags it is on that gateway's "
            code { "/metrics" } " (" code { "prism_gateway_metadata_staleness_seconds" } "); here, a gateway whose last heartbeat is older than its lease ("
            (view::duration(lease)) ") is about to be removed."
        }
    };
    Ok(Page { who: s.name(), title: "Overview".into(), body })
}

// ---------------------------------------------------------------------
// Tenants
// ---------------------------------------------------------------------

async fn tenants_page(c: &Console, headers: &HeaderMap, raw: RawParams) -> Result<Page, Failure> {
    let s = c.session(headers)?;
    let p = Params::parse(raw, &["q", "page_size", "after"])?;
    let (q, want, after) = (p.text("q")?, p.page_size()?, p.tenant("after")?);
    let mut rows = Vec::new();
    tenants_after(c, &s, after, |t| {
        if q.is_empty() || t.id.contains(q) || t.display_name.contains(q) {
            rows.push(t);
        }
        rows.len() <= want
    })
    .await?;
    let next = (rows.len() > want).then(|| {
        rows.truncate(want);
        rows.last().map(|t| t.id.clone()).unwrap_or_default()
    });
    let body = html! {
        form.filters method="get" action="/console/tenants" {
            label { "search" input type="search" name="q" value=(q); }
            label { "page size" input type="number" name="page_size" min="1" max="500" value=(want); }
            button type="submit" { "Filter" }
        }
        table id="tenants" {
            tr { th { "tenant" } th { "display name" } th { "state" } th { "admins" } th { "quota profile" } th {} }
            @for t in &rows {
                tr {
                    td { (tenant_link(&t.id)) }
                    td { (t.display_name) }
                    td { (status(&tenant_state_name(t.state))) }
                    td { (t.admins.join(", ")) }
                    td { (t.quotas.as_ref().map(profile).unwrap_or_default()) }
                    td { a href=(format!("/console/namespaces?tenant={}", t.id)) { "namespaces" } " · " a href=(format!("/console/usage?tenant={}", t.id)) { "usage" } }
                }
            }
        }
        @if rows.is_empty() { p.muted { "No tenant matches." } }
        @if let Some(last) = &next {
            nav.pages { a rel="next" href=(format!("/console/tenants{}", query(&[("q", q), ("page_size", &want.to_string()), ("after", last)]))) { "Next page →" } }
        }
    };
    Ok(Page { who: s.name(), title: "Tenants".into(), body })
}

fn profile(q: &QuotaSet) -> String {
    prism_proto::control::QuotaProfile::try_from(q.profile)
        .map(|p| p.as_str_name().trim_start_matches("QUOTA_PROFILE_").to_owned())
        .unwrap_or_else(|_| q.profile.to_string())
}

async fn tenant_page(c: &Console, headers: &HeaderMap, id: &str, raw: RawParams) -> Result<Page, Failure> {
    let s = c.session(headers)?;
    Params::parse(raw, &[])?;
    let t = c.service.get_tenant(s.request(GetTenantRequest { tenant_id: id.to_owned() })).await?.into_inner();
    let usage = usage_of(c, &s, id).await?;
    let body = html! {
        table {
            tr { th { "display name" } td { (t.display_name) } }
            tr { th { "state" } td { (status(&tenant_state_name(t.state))) @if !t.state_reason.is_empty() { " — " (t.state_reason) } } }
            tr { th { "admins" } td { (t.admins.join(", ")) } }
            tr { th { "quota profile" } td { (t.quotas.as_ref().map(profile).unwrap_or_default()) } }
            tr { th { "revision" } td { (t.revision) } }
            tr { th { "created" } td { (time(t.create_time.as_ref())) } }
            tr { th { "updated" } td { (time(t.update_time.as_ref())) } }
        }
        p { a href=(format!("/console/namespaces?tenant={id}")) { "Namespaces" } " · " a href=(format!("/console/usage?tenant={id}")) { "Usage" } " · " a href=(format!("/console/audit?tenant={id}")) { "Audit" } }
        h2 { "Quotas and utilization" }
        (quota_table(&usage))
    };
    Ok(Page { who: s.name(), title: format!("Tenant {id}"), body })
}

fn quota_table(usage: &GetUsageResponse) -> Markup {
    html! {
        table.quotas {
            tr { th { "quota" } th { "used" } th { "limit" } th { "utilization" } }
            @for q in &usage.quotas {
                tr {
                    td { (q.quota) }
                    td { (amount(&q.quota, q.used)) }
                    td { @if q.limit < 0 { span.muted { "unlimited" } } @else { (amount(&q.quota, q.limit as f64)) } }
                    td { @if q.limit >= 0 { (meter(q.utilization_percent)) } }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------
// Namespaces
// ---------------------------------------------------------------------

const STATUSES: [&str; 5] = ["PROVISIONING", "ACTIVE", "DEGRADED", "DELETING", "DELETED"];

async fn namespaces_page(c: &Console, headers: &HeaderMap, raw: RawParams) -> Result<Page, Failure> {
    let s = c.session(headers)?;
    let p = Params::parse(raw, &["tenant", "q", "status", "page_size", "after"])?;
    let (tenant, q, wanted_status, want) =
        (p.tenant("tenant")?, p.text("q")?, p.choice("status", &STATUSES)?, p.page_size()?);
    let after = p.namespace("after")?;
    let mut rows = Vec::new();
    namespaces_after(c, &s, tenant, after, |ns| {
        if (q.is_empty() || ns.name.contains(q))
            && (wanted_status.is_empty() || status_name(ns.status) == wanted_status)
        {
            rows.push(ns);
        }
        rows.len() <= want
    })
    .await?;
    if rows.is_empty() && !tenant.is_empty() && after.is_empty() {
        check_tenant(c, &s, tenant).await?;
    }
    let next = (rows.len() > want).then(|| {
        rows.truncate(want);
        rows.last().map(|n| n.name.clone()).unwrap_or_default()
    });
    let body = html! {
        form.filters method="get" action="/console/namespaces" {
            label { "tenant" input type="text" name="tenant" value=(tenant); }
            label { "name contains" input type="search" name="q" value=(q); }
            label { "status" select name="status" {
                option value="" { "any" }
                @for st in STATUSES { option value=(st) selected[st == wanted_status] { (st) } }
            } }
            label { "page size" input type="number" name="page_size" min="1" max="500" value=(want); }
            button type="submit" { "Filter" }
        }
        table id="namespaces" {
            tr { th { "namespace" } th { "status" } th { "reason" } th { "abstraction" } th { "backend" } th { "shard" } th { "updated" } }
            @for ns in &rows {
                @let spec = ns.spec.as_ref();
                tr {
                    td { (namespace_link(&ns.name)) }
                    td { (status(&status_name(ns.status))) }
                    td.reason { (ns.status_reason) }
                    td { (spec.map(|s| abstraction(s.abstraction)).unwrap_or_default()) }
                    td { (spec.map(|s| backend(s.backend)).unwrap_or_default()) }
                    td { (ns.shard_id) }
                    td { (time(ns.update_time.as_ref())) }
                }
            }
        }
        @if rows.is_empty() { p.muted id="empty" { "No namespace matches." } }
        @if let Some(last) = &next {
            nav.pages { a rel="next" href=(format!("/console/namespaces{}", query(&[("tenant", tenant), ("q", q), ("status", wanted_status), ("page_size", &want.to_string()), ("after", last)]))) { "Next page →" } }
        }
    };
    Ok(Page { who: s.name(), title: "Namespaces".into(), body })
}

fn abstraction(a: i32) -> String {
    Abstraction::try_from(a)
        .map_or_else(|_| a.to_string(), |a| a.as_str_name().trim_start_matches("ABSTRACTION_").to_owned())
}

fn backend(b: i32) -> String {
    Backend::try_from(b)
        .map_or_else(|_| b.to_string(), |b| b.as_str_name().trim_start_matches("BACKEND_").to_lowercase())
}

async fn namespace_page(c: &Console, headers: &HeaderMap, name: &str, raw: RawParams) -> Result<Page, Failure> {
    let s = c.session(headers)?;
    Params::parse(raw, &[])?;
    let mut ns = c.service.get_namespace(s.request(GetNamespaceRequest { name: name.to_owned() })).await?.into_inner();
    // Stored namespaces hold no password; this is the same belt as Watch's.
    prism_proto::secrets::redact_namespace(&mut ns);
    let tenant = name.split_once('/').map_or(name, |(t, _)| t);
    let plane = c.service.plane();
    let usage = if plane.permits(&s.caller, Need::NamespaceAdmin(name)).await? {
        Some((usage_of(c, &s, name).await?, plane.usage_history(name)))
    } else {
        None
    };
    let history = if plane.permits(&s.caller, Need::TenantAdmin(tenant)).await? {
        let req = ListAuditEventsRequest {
            tenant_id: tenant.to_owned(),
            target: name.to_owned(),
            page_size: HISTORY_EVENTS,
            ..Default::default()
        };
        Some(c.service.list_audit_events(s.request(req)).await?.into_inner().events)
    } else {
        None
    };
    let spec = ns.spec.clone().unwrap_or_default();
    let access = spec.access.as_deref().cloned().unwrap_or_default();
    let st = status_name(ns.status);
    let body = html! {
        table id="summary" {
            tr { th { "status" } td { (status(&st)) } }
            tr { th { "reason" } td.reason id="status-reason" { (ns.status_reason) } }
            tr { th { "owning shard" } td { (ns.shard_id) @if !ns.owner_store_id.is_empty() { " (store " (ns.owner_store_id) ")" } } }
            tr { th { "placement" } td id="placement" { (placement(&spec)) } }
            tr { th { "abstraction" } td { (abstraction(spec.abstraction)) } }
            tr { th { "backend" } td { (backend(spec.backend)) } }
            tr { th { "revision" } td { (ns.revision) " (created at " (ns.create_revision) ")" } }
            tr { th { "created" } td { (time(ns.create_time.as_ref())) } }
            tr { th { "updated" } td { (time(ns.update_time.as_ref())) } }
            tr { th { "owners" } td { (access.owners.join(", ")) } }
            tr { th { "consumers" } td { @for g in &access.consumers { (g.principal) " (" (prism_proto::control::AccessLevel::try_from(g.level).map_or("?", |l| l.as_str_name())) ") " } } }
        }
        @if let Some(m) = ns.migration.as_deref() {
            (migration(m, &spec))
        }
        h2 { "Quotas and utilization" }
        @match &usage {
            Some((usage, points)) => {
                (quota_table(usage))
                h2 { "Recent requests" }
                (view::chart(points))
            }
            None => {
                p.muted { "Utilization is shown to the namespace's admins (its owners and its tenant's admins). Its quotas:" }
                pre { (format!("{:#?}", spec.quotas.unwrap_or_default())) }
            }
        }
        h2 { "Status history" }
        @match &history {
            Some(events) => { (audit_table(events)) }
            None => { p.muted { "The history comes from the audit log, which its tenant's admins read." } }
        }
        @if !ns.backend_settings.is_empty() {
            h2 { "What the backend holds" }
            table { @for b in &ns.backend_settings { tr { th { (b.name) } td { (b.value) } } } }
        }
        h2 { "Spec" }
        p.muted { "As stored (secrets are references; no password is ever stored or shown)." }
        pre id="spec" { (format!("{spec:#?}")) }
    };
    Ok(Page { who: s.name(), title: format!("Namespace {name}"), body })
}

/// A running migration's step and progress (`prism namespace migrate
/// status` says the same, with a rate and an ETA).
fn migration(m: &prism_proto::control::Migration, spec: &prism_proto::control::NamespaceSpec) -> Markup {
    let step = prism_proto::control::MigrationStep::try_from(m.step)
        .map_or_else(|_| m.step.to_string(), |s| s.as_str_name().trim_start_matches("MIGRATION_STEP_").to_owned());
    let target = m.target.clone().unwrap_or_default();
    let to = if target.backend == 0 { spec.backend } else { target.backend };
    let p = m.progress.clone().unwrap_or_default();
    html! {
        h2 { "Migration" }
        table id="migration" {
            tr { th { "step" } td id="migration-step" { (step) } }
            tr { th { "reason" } td.reason id="migration-reason" { (m.reason) } }
            tr { th { "to" } td { (backend(to)) " on " (m.target_shard_id) } }
            tr { th { "started" } td { (time(m.start_time.as_ref())) " by " (m.principal) } }
            tr { th { "step since" } td { (time(m.step_time.as_ref())) } }
            tr { th { "copied" } td { (p.records_copied) " records, " (amount("bytes", p.bytes_copied as f64)) } }
            tr { th { "shadow reads" } td { (p.shadow_reads) " (" (p.shadow_mismatches) " mismatched)" } }
            tr { th { "verified" } td { (p.records_verified) " records (" (p.records_differing) " differ)" } }
            @if m.cleanup_after.is_some() {
                tr { th { "source removed after" } td { (time(m.cleanup_after.as_ref())) } }
            }
        }
    }
}

// ---------------------------------------------------------------------
// Usage
// ---------------------------------------------------------------------

async fn usage_page(c: &Console, headers: &HeaderMap, raw: RawParams) -> Result<Page, Failure> {
    let s = c.session(headers)?;
    let p = Params::parse(raw, &["tenant", "namespace"])?;
    let (tenant, namespace) = (p.tenant("tenant")?, p.namespace("namespace")?);
    let plane = c.service.plane();
    let body = if !namespace.is_empty() {
        let usage = usage_of(c, &s, namespace).await?;
        let points = plane.usage_history(namespace);
        html! {
            p { "Namespace " (namespace_link(namespace)) ", summed over every gateway's last report." }
            (quota_table(&usage))
            h2 { "Recent requests" }
            (view::chart(&points))
        }
    } else if !tenant.is_empty() {
        let usage = usage_of(c, &s, tenant).await?;
        let points = plane.usage_history(tenant);
        html! {
            p { "Tenant " (tenant_link(tenant)) ", summed over every gateway's last report." }
            (quota_table(&usage))
            h2 { "Recent requests" }
            (view::chart(&points))
            h2 { "Namespaces with traffic" }
            @if usage.namespaces.is_empty() { p.muted { "No namespace of this tenant was used lately." } }
            @else {
                table id="namespace-usage" {
                    tr { th { "namespace" } th { "requests/s" } th { "read/s" } th { "written/s" } th { "stored" } th { "in flight" } }
                    @for u in &usage.namespaces {
                        tr {
                            td { a href=(format!("/console/usage?namespace={}", u.namespace)) { (u.namespace) } }
                            td { (amount("requests", u.requests_per_second)) }
                            td { (amount("bytes", u.read_bytes_per_second)) }
                            td { (amount("bytes", u.write_bytes_per_second)) }
                            td { (amount("bytes", u.storage_bytes as f64)) }
                            td { (u.concurrent_requests) }
                        }
                    }
                }
            }
        }
    } else {
        let mut tenants = Vec::new();
        tenants_after(c, &s, "", |t| {
            if t.state != TenantState::Deleted as i32 {
                tenants.push(t);
            }
            true
        })
        .await?;
        let mut rows = Vec::new();
        for t in &tenants {
            let usage = usage_of(c, &s, &t.id).await?;
            let top = usage
                .quotas
                .iter()
                .filter(|q| q.limit >= 0)
                .max_by(|a, b| a.utilization_percent.total_cmp(&b.utilization_percent))
                .cloned();
            let rps = usage.quotas.iter().find(|q| q.quota == "requests_per_second").map_or(0.0, |q| q.used);
            rows.push((t.id.clone(), rps, top));
        }
        html! {
            p.muted { "Per tenant: requests per second now and its most used quota. Pick a tenant for its quotas, namespaces and history." }
            table id="tenant-usage" {
                tr { th { "tenant" } th { "requests/s" } th { "most used quota" } th { "utilization" } }
                @for (id, rps, top) in &rows {
                    tr {
                        td { a href=(format!("/console/usage?tenant={id}")) { (id) } }
                        td { (amount("requests", *rps)) }
                        @match top {
                            Some(q) => { td { (q.quota) } td { (meter(q.utilization_percent)) } }
                            None => { td.muted { "no limit set" } td {} }
                        }
                    }
                }
            }
            @if rows.is_empty() { p.muted { "No tenant to show." } }
        }
    };
    Ok(Page { who: s.name(), title: "Usage".into(), body })
}

// ---------------------------------------------------------------------
// Audit
// ---------------------------------------------------------------------

const SINCE: [(&str, &str, u64); 4] = [
    ("15m", "last 15 minutes", 900),
    ("1h", "last hour", 3600),
    ("24h", "last day", 86_400),
    ("7d", "last week", 604_800),
];

async fn audit_page(c: &Console, headers: &HeaderMap, raw: RawParams) -> Result<Page, Failure> {
    let s = c.session(headers)?;
    let p =
        Params::parse(raw, &["principal", "tenant", "namespace", "action", "result", "since", "page_size", "before"])?;
    let (principal, action, result) = (p.text("principal")?, p.text("action")?, p.text("result")?);
    let (mut tenant, namespace) = (p.tenant("tenant")?, p.namespace("namespace")?);
    let since_choices: Vec<&str> = SINCE.iter().map(|(k, _, _)| *k).collect();
    let since = p.choice("since", &since_choices)?;
    let want = p.page_size()?;
    let before = p.number("before", 1..=u64::MAX, 0)?;
    if let Some((ns_tenant, _)) = namespace.split_once('/') {
        if !tenant.is_empty() && tenant != ns_tenant {
            return Err(Failure::BadParam("namespace".into(), format!("is not in tenant {tenant}")));
        }
        // What a tenant admin reads is its tenant's trail: a namespace
        // names one.
        tenant = ns_tenant;
    }
    let since_time = SINCE.iter().find(|(k, _, _)| *k == since).map(|(_, _, secs)| {
        let at = SystemTime::now().checked_sub(Duration::from_secs(*secs)).unwrap_or(SystemTime::UNIX_EPOCH);
        prost_types::Timestamp::from(at)
    });
    let mut events: Vec<AuditEvent> = Vec::new();
    let mut token = if before == 0 { String::new() } else { page_token::encode(Listing::Audit, &before.to_string()) };
    let mut scanned = 0;
    let mut exhausted = false;
    while events.len() <= want && scanned < AUDIT_SCAN {
        let req = ListAuditEventsRequest {
            tenant_id: tenant.to_owned(),
            target: namespace.to_owned(),
            principal: principal.to_owned(),
            action: action.to_owned(),
            since: since_time,
            page_size: if result.is_empty() { u32::try_from(want + 1).unwrap_or(BATCH) } else { BATCH },
            page_token: token,
        };
        let page = c.service.list_audit_events(s.request(req)).await?.into_inner();
        scanned += page.events.len();
        events.extend(page.events.into_iter().filter(|e| result.is_empty() || e.result == result));
        if page.next_page_token.is_empty() {
            exhausted = true;
            break;
        }
        token = page.next_page_token;
    }
    if events.is_empty() && !tenant.is_empty() && before == 0 {
        check_tenant(c, &s, tenant).await?;
    }
    let next = if events.len() > want {
        events.truncate(want);
        events.last().map(|e| e.sequence)
    } else if !exhausted {
        // Scanned as far as one page may without filling it.
        events.last().map(|e| e.sequence)
    } else {
        None
    };
    let body = html! {
        form.filters method="get" action="/console/audit" id="audit-filters" {
            label { "principal" input type="text" name="principal" value=(principal); }
            label { "tenant" input type="text" name="tenant" value=(p.get("tenant").unwrap_or_default()); }
            label { "namespace" input type="text" name="namespace" id="filter-namespace" value=(namespace) placeholder="tenant/name"; }
            label { "action" input type="text" name="action" value=(action) placeholder="CreateNamespace"; }
            label { "result" input type="text" name="result" value=(result) placeholder="ok, permission_denied"; }
            label { "time" select name="since" {
                option value="" { "any time" }
                @for (k, label, _) in SINCE { option value=(k) selected[k == since] { (label) } }
            } }
            label { "page size" input type="number" name="page_size" min="1" max="500" value=(want); }
            button type="submit" id="filter" { "Filter" }
        }
        (audit_table(&events))
        @if let Some(seq) = next {
            nav.pages { a rel="next" href=(format!("/console/audit{}", query(&[("principal", principal), ("tenant", p.get("tenant").unwrap_or_default()), ("namespace", namespace), ("action", action), ("result", result), ("since", since), ("page_size", &want.to_string()), ("before", &seq.to_string())]))) { "Older →" } }
        }
    };
    Ok(Page { who: s.name(), title: "Audit log".into(), body })
}

fn audit_table(events: &[AuditEvent]) -> Markup {
    html! {
        @if events.is_empty() {
            p.muted id="no-events" { "No audit event matches." }
        } @else {
            table id="audit" {
                tr { th { "time" } th { "principal" } th { "action" } th { "tenant" } th { "target" } th { "result" } th { "detail" } }
                @for e in events {
                    tr {
                        td { (time(e.time.as_ref())) }
                        td { (e.principal) }
                        td { (e.action) }
                        td { (e.tenant_id) }
                        td.target { (e.target) }
                        td { (e.result) }
                        td.detail { (e.detail) }
                    }
                }
            }
        }
    }
}

/// How the namespace is placed: hashed, pinned, or pinned to a shard it
/// holds alone.
fn placement(spec: &prism_proto::control::NamespaceSpec) -> String {
    match spec.placement.as_deref().filter(|p| !p.pinned_shard.is_empty()) {
        Some(p) if p.dedicated => format!("pinned to {}, dedicated (no other namespace on it)", p.pinned_shard),
        Some(p) => format!("pinned to {}", p.pinned_shard),
        None => "hashed over the shared shards".to_owned(),
    }
}
