//! Complete validation of tenant and namespace specs, by shape only (no
//! backend code, no backend connection). Every refusal names its field with
//! the path a client wrote, e.g. `spec.backend_config.postgres.dsn`.
//! A backend's settings are checked as its description says
//! ([`prism_proto::backends`]): this module names no backend. A
//! PostgreSQL DSN holding a password is refused there (the message names
//! the field, never the password): credentials are named by
//! `password_ref` only, so no secret becomes metadata.

use prism_proto::control::{Abstraction, AccessLevel, Backend, Consistency, NamespaceSpec, QuotaProfile, QuotaSet};
use prism_proto::quotas::UNLIMITED;
use prism_proto::{backends, capabilities, names};

use crate::error::{ControlPlaneError, Result};

/// Longest principal (a token's `sub`).
pub const MAX_PRINCIPAL_LEN: usize = 256;
/// Longest display name or reason.
pub const MAX_TEXT_LEN: usize = 256;
/// Most owners or consumers of one namespace, admins of one tenant.
pub const MAX_PRINCIPALS: usize = 256;
/// Largest `max_item_size_bytes` a namespace may declare.
pub const MAX_ITEM_SIZE: i64 = 64 * 1024 * 1024;
/// Longest cache TTL.
pub const MAX_CACHE_TTL_SECONDS: i64 = 86_400;

fn invalid(field: impl Into<String>, description: impl Into<String>) -> ControlPlaneError {
    ControlPlaneError::invalid(field, description)
}

pub fn tenant_id(field: &str, id: &str) -> Result<()> {
    names::validate_part(id).map_err(|e| invalid(field, format!("tenant id {e}")))
}

pub fn namespace_name(field: &str, name: &str) -> Result<()> {
    names::NamespaceName::parse(name).map(|_| ()).map_err(|e| invalid(field, format!("namespace name {e}")))
}

pub fn text(field: &str, value: &str) -> Result<()> {
    if value.chars().count() > MAX_TEXT_LEN {
        return Err(invalid(field, format!("is longer than {MAX_TEXT_LEN} characters")));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(field, "must not hold control characters"));
    }
    Ok(())
}

/// A principal as grants and tenant admins write it: `sub`,
/// `tenant:sub` or `:sub` (see [`prism_proto::access`]).
pub fn principal(field: &str, p: &str) -> Result<()> {
    prism_proto::access::check_written(p).map_err(|e| invalid(field, e))?;
    if p.len() > MAX_PRINCIPAL_LEN {
        return Err(invalid(field, format!("principal is longer than {MAX_PRINCIPAL_LEN} bytes")));
    }
    if p.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(invalid(field, "principal must not hold spaces or control characters"));
    }
    Ok(())
}

pub fn principals<'a>(field: &str, list: impl ExactSizeIterator<Item = &'a str>) -> Result<()> {
    if list.len() > MAX_PRINCIPALS {
        return Err(invalid(field, format!("lists more than {MAX_PRINCIPALS} principals")));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, p) in list.enumerate() {
        principal(&format!("{field}[{i}]"), p)?;
        if !seen.insert(p) {
            return Err(invalid(format!("{field}[{i}]"), format!("{p:?} is listed twice")));
        }
    }
    Ok(())
}

pub fn quotas(field: &str, q: &QuotaSet) -> Result<()> {
    if QuotaProfile::try_from(q.profile).is_err() {
        return Err(invalid(format!("{field}.profile"), format!("{} is not a known profile", q.profile)));
    }
    for (name, value) in prism_proto::quotas::fields(q) {
        if let Some(v) = value.filter(|v| *v < UNLIMITED) {
            return Err(invalid(format!("{field}.{name}"), format!("{v} is negative; use -1 for unlimited")));
        }
    }
    // No retention at all is not a retention: a namespace without one
    // would keep its events forever.
    if q.max_retention_seconds == Some(0) {
        return Err(invalid(format!("{field}.max_retention_seconds"), "must be at least 1 s, or -1 for unlimited"));
    }
    Ok(())
}

/// Checks what a namespace spec asks for against the quotas that cap it,
/// its own (`spec.quotas`, resolved) and then its tenant's: the partitions
/// its backend settings ask for (`max_partitions`) and, for a TIME_SERIES
/// namespace, its retention (`max_retention_seconds`). A refusal is
/// RESOURCE_EXHAUSTED with a `QuotaFailure` naming whose quota, its
/// description naming the spec's field. A TIME_SERIES namespace that sets
/// no retention (forever) gets the smallest maximum instead, so a capped
/// tenant never keeps events forever by default.
pub fn within_quotas(name: &str, spec: &mut NamespaceSpec, tenant_quotas: Option<&QuotaSet>) -> Result<()> {
    let tenant = name.split_once('/').map_or(name, |(t, _)| t);
    let own = spec.quotas;
    let caps = [(format!("namespace:{name}"), own.as_ref()), (format!("tenant:{tenant}"), tenant_quotas)];
    let limit = |v: Option<i64>| v.filter(|v| *v != UNLIMITED && *v >= 0);
    let refuse = |subject: &str, description: String| ControlPlaneError::QuotaExceeded {
        subject: subject.to_owned(),
        description,
    };
    let backend = Backend::try_from(spec.backend).ok().and_then(backends::describe);
    if let Some(backend) = backend {
        let (partitions, setting) = backend.partitions(spec.backend_config.as_deref());
        for (subject, quotas) in &caps {
            if let Some(max) = limit(quotas.and_then(|q| q.max_partitions))
                && i64::from(partitions) > max
            {
                let field = setting
                    .map_or_else(|| "spec.backend".to_owned(), |s| format!("spec.backend_config.{}.{s}", backend.name));
                return Err(refuse(
                    subject,
                    format!("{field} asks for {partitions} partitions; the max_partitions quota is {max}"),
                ));
            }
        }
    }
    if spec.abstraction != Abstraction::TimeSeries as i32 {
        return Ok(());
    }
    let field = "spec.policies.retention";
    let asked = spec.policies.as_deref().and_then(|p| p.retention.as_ref()).filter(|d| d.seconds > 0 || d.nanos > 0);
    match asked {
        Some(d) => {
            for (subject, quotas) in &caps {
                if let Some(max) = limit(quotas.and_then(|q| q.max_retention_seconds))
                    && (d.seconds > max || (d.seconds == max && d.nanos > 0))
                {
                    return Err(refuse(
                        subject,
                        format!("{field} asks for {} s; the max_retention_seconds quota is {max}", d.seconds),
                    ));
                }
            }
        }
        None => {
            let smallest =
                caps.iter().filter_map(|(_, quotas)| limit(quotas.and_then(|q| q.max_retention_seconds))).min();
            if let Some(max) = smallest {
                let policies = spec.policies.get_or_insert_with(Default::default);
                policies.retention = Some(prost_types::Duration { seconds: max, nanos: 0 });
            }
        }
    }
    Ok(())
}

/// Checks a namespace spec completely.
pub fn namespace_spec(spec: &NamespaceSpec, known_shards: &[String]) -> Result<()> {
    let abstraction = match Abstraction::try_from(spec.abstraction) {
        Ok(a @ (Abstraction::KeyValue | Abstraction::TimeSeries)) => a,
        _ => return Err(invalid("spec.abstraction", "must be KEY_VALUE or TIME_SERIES")),
    };
    let Some(backend) = Backend::try_from(spec.backend).ok().and_then(backends::describe) else {
        return Err(invalid("spec.backend", format!("must be one of {}", backends::names())));
    };
    if !backend.abstractions.contains(&abstraction) {
        let serves: Vec<_> = backend.abstractions.iter().map(|a| capabilities::abstraction_name(*a)).collect();
        return Err(invalid(
            "spec.backend",
            format!(
                "backend {} cannot serve {}; it serves {}",
                backend.name,
                capabilities::abstraction_name(abstraction),
                serves.join(", ")
            ),
        ));
    }
    // Each backend's settings, by shape, as its description says.
    backend
        .check_config(spec.backend_config.as_deref(), "spec.backend_config")
        .map_err(|e| invalid(e.field, e.description))?;
    if let Some(p) = &spec.policies {
        policies(abstraction, p)?;
    }
    if let Some(a) = &spec.access {
        principals("spec.access.owners", a.owners.iter().map(String::as_str))?;
        principals("spec.access.consumers", a.consumers.iter().map(|g| g.principal.as_str()))?;
        for (i, g) in a.consumers.iter().enumerate() {
            access_level(&format!("spec.access.consumers[{i}].level"), g.level)?;
        }
    }
    if let Some(q) = &spec.quotas {
        quotas("spec.quotas", q)?;
    }
    if spec.placement.as_deref().is_some_and(|p| p.dedicated && p.pinned_shard.is_empty()) {
        return Err(invalid("spec.placement.dedicated", "requires spec.placement.pinned_shard: the shard to dedicate"));
    }
    if let Some(p) = spec.placement.as_deref().filter(|p| !p.pinned_shard.is_empty()) {
        let field = "spec.placement.pinned_shard";
        names::validate_part(&p.pinned_shard).map_err(|e| invalid(field, format!("shard id {e}")))?;
        if !known_shards.contains(&p.pinned_shard) {
            return Err(invalid(field, format!("shard {:?} does not exist", p.pinned_shard)));
        }
    }
    Ok(())
}

/// Most settings one report may say a backend holds.
pub const MAX_BACKEND_SETTINGS: usize = 32;

/// What a shard reports its backend holds: bounded, so a report cannot
/// grow the metadata every watcher receives.
pub fn backend_settings(field: &str, settings: &[prism_proto::control::BackendSetting]) -> Result<()> {
    if settings.len() > MAX_BACKEND_SETTINGS {
        return Err(invalid(field, format!("holds more than {MAX_BACKEND_SETTINGS} settings")));
    }
    for (i, s) in settings.iter().enumerate() {
        let checks =
            [("name", s.name.as_str(), 128), ("value", s.value.as_str(), 1024), ("detail", s.detail.as_str(), 1024)];
        for (part, value, max) in checks {
            if value.len() > max {
                return Err(invalid(format!("{field}[{i}].{part}"), format!("is longer than {max} bytes")));
            }
        }
        if s.name.is_empty() {
            return Err(invalid(format!("{field}[{i}].name"), "is required"));
        }
    }
    Ok(())
}

/// A gateway's endpoint: `host:port`, or `https://host:port` for one that
/// serves TLS (clients dial what they are told).
pub fn endpoint(field: &str, endpoint: &str) -> Result<()> {
    names::validate_endpoint(endpoint).map_err(|e| invalid(field, e))
}

/// A gateway's store id: empty (a gateway that sends none) or a name part,
/// `[a-z0-9][a-z0-9-]{0,62}`.
pub fn store_id(field: &str, id: &str) -> Result<()> {
    if id.is_empty() {
        return Ok(());
    }
    names::validate_part(id).map_err(|e| invalid(field, format!("store id {e}")))
}

/// Most features one instance may advertise.
pub const MAX_FEATURES: usize = 32;

/// What an instance advertises it can do (`RegisterShardRequest.features`):
/// at most [`MAX_FEATURES`] name parts, `[a-z0-9][a-z0-9-]{0,62}`; bounded,
/// because every watcher receives them.
pub fn features(field: &str, features: &[String]) -> Result<()> {
    if features.len() > MAX_FEATURES {
        return Err(invalid(field, format!("holds more than {MAX_FEATURES} features")));
    }
    for (i, f) in features.iter().enumerate() {
        names::validate_part(f).map_err(|e| invalid(format!("{field}[{i}]"), format!("feature {e}")))?;
    }
    Ok(())
}

/// The spec a namespace whose spec is `source` would have on a migration's
/// `target`, checked by shape as a namespace spec is, every refusal naming
/// the request's field (`target.backend`, `target.backend_config.…`,
/// `target.pinned_shard`). Refuses a target that is the source itself.
pub fn migration_target(
    source: &NamespaceSpec,
    target: Option<&prism_proto::control::MigrationTarget>,
    known_shards: &[String],
) -> Result<NamespaceSpec> {
    let target = target.ok_or_else(|| invalid("target", "is required"))?;
    let abstraction = Abstraction::try_from(source.abstraction).unwrap_or(Abstraction::Unspecified);
    if target.backend != Backend::Unspecified as i32 {
        let Some(backend) = Backend::try_from(target.backend).ok().and_then(backends::describe) else {
            return Err(invalid("target.backend", format!("must be one of {}", backends::names())));
        };
        if !backend.abstractions.contains(&abstraction) {
            return Err(invalid(
                "target.backend",
                format!(
                    "backend {} cannot serve {}, which the namespace uses",
                    backend.name,
                    capabilities::abstraction_name(abstraction)
                ),
            ));
        }
    }
    let spec = prism_proto::migration::target_spec(source, target);
    let backend = Backend::try_from(spec.backend).ok().and_then(backends::describe);
    let backend = backend.ok_or_else(|| invalid("target.backend", "the source's backend is not known here"))?;
    backend
        .check_config(spec.backend_config.as_deref(), "target.backend_config")
        .map_err(|e| invalid(e.field, e.description))?;
    if !target.pinned_shard.is_empty() {
        let field = "target.pinned_shard";
        names::validate_part(&target.pinned_shard).map_err(|e| invalid(field, format!("shard id {e}")))?;
        if !known_shards.contains(&target.pinned_shard) {
            return Err(invalid(field, format!("shard {:?} does not exist", target.pinned_shard)));
        }
    }
    if spec == *source {
        return Err(invalid("target", "is the namespace's current backend, settings and placement"));
    }
    Ok(spec)
}

/// An instance id the registry handed out: 1 to 64 printable ASCII bytes.
pub fn instance_id(field: &str, id: &str) -> Result<()> {
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(field, "is not an instance id this control plane issued"));
    }
    Ok(())
}

pub fn access_level(field: &str, level: i32) -> Result<AccessLevel> {
    match AccessLevel::try_from(level) {
        Ok(l @ (AccessLevel::Read | AccessLevel::ReadWrite)) => Ok(l),
        _ => Err(invalid(field, "must be READ or READ_WRITE")),
    }
}

fn duration(field: &str, d: Option<&prost_types::Duration>, max_seconds: Option<i64>) -> Result<()> {
    let Some(d) = d else { return Ok(()) };
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        return Err(invalid(field, "must be a non-negative duration"));
    }
    if let Some(max) = max_seconds.filter(|max| d.seconds > *max || (d.seconds == *max && d.nanos > 0)) {
        return Err(invalid(field, format!("must be at most {max} s")));
    }
    Ok(())
}

fn policies(abstraction: Abstraction, p: &prism_proto::control::Policies) -> Result<()> {
    duration("spec.policies.retention", p.retention.as_ref(), None)?;
    duration("spec.policies.cache_ttl", p.cache_ttl.as_ref(), Some(MAX_CACHE_TTL_SECONDS))?;
    duration("spec.policies.default_item_ttl", p.default_item_ttl.as_ref(), None)?;
    duration("spec.policies.accept_limit", p.accept_limit.as_ref(), None)?;
    if Consistency::try_from(p.consistency).is_err() {
        return Err(invalid("spec.policies.consistency", "must be EVENTUAL or STRONG"));
    }
    if !(0.0..=1.0).contains(&p.data_access_audit_rate) {
        return Err(invalid(
            "spec.policies.data_access_audit_rate",
            format!("{} is outside [0, 1]", p.data_access_audit_rate),
        ));
    }
    if !(0..=MAX_ITEM_SIZE).contains(&p.max_item_size_bytes) {
        return Err(invalid(
            "spec.policies.max_item_size_bytes",
            format!("{} is outside 0..={MAX_ITEM_SIZE}", p.max_item_size_bytes),
        ));
    }
    if abstraction != Abstraction::TimeSeries && (p.accept_loss || p.accept_limit.is_some()) {
        let field = if p.accept_loss { "spec.policies.accept_loss" } else { "spec.policies.accept_limit" };
        return Err(invalid(field, "applies to TIME_SERIES namespaces only"));
    }
    if abstraction != Abstraction::KeyValue && p.cache_enabled {
        return Err(invalid("spec.policies.cache_enabled", "applies to KEY_VALUE namespaces only"));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
