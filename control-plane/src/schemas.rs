//! TimeSeries event schemas, versioned per namespace (`docs/schemas.md`):
//! `SetSchema` checks a new version with [`prism_schema`] (it compiles,
//! and it keeps the namespace's compatibility mode against the latest
//! version) and appends it to the namespace's `schema` history;
//! `GetSchema` and `ListSchemaHistory` read it.
//!
//! The history is part of the namespace object, so both stores keep it
//! with no schema of their own, it is committed with optimistic
//! concurrency like every namespace change, and it reaches the gateways
//! with the namespace on the watch stream (where the owner validates
//! writes against the latest version). That is also why it is bounded
//! ([`MAX_HISTORY_BYTES`]): every gateway holds it, and a namespace must
//! fit in one watch message.

use std::time::SystemTime;

use prism_proto::control::{
    Abstraction, Compatibility, GetSchemaRequest, ListSchemaHistoryRequest, ListSchemaHistoryResponse, SchemaHistory,
    SchemaResponse, SchemaVersion, SetSchemaRequest,
};
use prost::Message;

use crate::error::{ControlPlaneError, Result};
use crate::plane::{ControlPlane, Plan, Target, check_expected, tenant_of, written_namespace};
use crate::store::{Condition, Put, Txn};
use crate::validate;

/// The most one schema version may take, encoded.
pub const MAX_VERSION_BYTES: usize = 512 * 1024;
/// The most a namespace's whole history may take, encoded: the oldest
/// versions are dropped past it (or past [`prism_schema::MAX_VERSIONS`]),
/// the latest is always kept.
pub const MAX_HISTORY_BYTES: usize = 1024 * 1024;

fn mode_name(mode: Compatibility) -> &'static str {
    match mode {
        Compatibility::Unspecified => "UNSPECIFIED",
        Compatibility::None => "NONE",
        Compatibility::Backward => "BACKWARD",
        Compatibility::Forward => "FORWARD",
        Compatibility::Full => "FULL",
    }
}

/// Drops the oldest versions past the bounds, keeping the latest.
fn bound(history: &mut SchemaHistory) {
    while history.versions.len() > 1
        && (history.versions.len() > prism_schema::MAX_VERSIONS || history.encoded_len() > MAX_HISTORY_BYTES)
    {
        history.versions.remove(0);
    }
}

impl ControlPlane {
    /// Appends a schema version to a TIME_SERIES namespace (see the module
    /// docs), refusing one that breaks the compatibility mode with
    /// FAILED_PRECONDITION naming every break.
    pub async fn set_schema(&self, principal: &str, req: &SetSchemaRequest) -> Result<SchemaResponse> {
        let name = req.name.as_str();
        let target = Target { action: "SetSchema", tenant: tenant_of(name), target: name };
        let delta = self
            .mutate(principal, target, || async {
                validate::namespace_name("name", name)?;
                let schema = req.schema.as_ref().ok_or_else(|| ControlPlaneError::invalid("schema", "is required"))?;
                let requested = Compatibility::try_from(req.compatibility)
                    .map_err(|_| ControlPlaneError::invalid("compatibility", "is not a known mode"))?;
                if schema.encoded_len() > MAX_VERSION_BYTES {
                    return Err(ControlPlaneError::invalid(
                        "schema",
                        format!("is larger than {MAX_VERSION_BYTES} bytes encoded"),
                    ));
                }
                let mut ns = self.live_namespace(name).await?;
                check_expected("namespace", name, req.expected_revision, ns.revision)?;
                if ns.spec.as_ref().map(|s| s.abstraction) != Some(Abstraction::TimeSeries as i32) {
                    return Err(ControlPlaneError::FailedPrecondition(format!(
                        "namespace {name} is not a TIME_SERIES namespace: only events have schemas"
                    )));
                }
                let condition = Condition::Namespace { name: name.to_owned(), revision: ns.revision };
                let history = ns.schema.get_or_insert_with(Default::default);
                let next_version = history.versions.last().map_or(1, |v| v.version + 1);
                prism_schema::Compiled::compile(next_version, schema, "schema")
                    .map_err(|v| ControlPlaneError::invalid(v.field, v.description))?;
                let mode = match (requested, Compatibility::try_from(history.compatibility)) {
                    (Compatibility::Unspecified, Ok(Compatibility::Unspecified) | Err(_)) => Compatibility::Backward,
                    (Compatibility::Unspecified, Ok(current)) => current,
                    (requested, _) => requested,
                };
                if let Some(latest) = history.versions.last() {
                    let breaks = prism_schema::breaks(mode, &latest.schema.clone().unwrap_or_default(), schema);
                    if !breaks.is_empty() {
                        return Err(ControlPlaneError::FailedPrecondition(format!(
                            "schema version {next_version} of {name} breaks {} compatibility with version {}: {}",
                            mode_name(mode),
                            latest.version,
                            breaks.join("; ")
                        )));
                    }
                }
                history.compatibility = mode as i32;
                history.versions.push(SchemaVersion {
                    version: next_version,
                    schema: Some(schema.clone()),
                    create_time: Some(SystemTime::now().into()),
                    principal: principal.to_owned(),
                });
                bound(history);
                ns.update_time = Some(SystemTime::now().into());
                Ok(Plan {
                    txn: Txn { conditions: vec![condition], puts: vec![Put::Namespace(ns)], ..Txn::default() },
                    detail: format!("schema version {next_version} under {}", mode_name(mode)),
                })
            })
            .await?;
        let ns = written_namespace(&delta, name)?;
        let history = ns.schema.map(|s| *s).unwrap_or_default();
        let version = history.versions.last().cloned();
        Ok(SchemaResponse { name: ns.name, compatibility: history.compatibility, version, revision: ns.revision })
    }

    /// One version of a namespace's schema (0 = the latest); NOT_FOUND
    /// when it has none or not that one.
    pub async fn get_schema(&self, req: &GetSchemaRequest) -> Result<SchemaResponse> {
        let name = req.name.as_str();
        let ns = self.live_namespace(name).await?;
        let history = ns.schema.map(|s| *s).unwrap_or_default();
        let found = match req.version {
            0 => history.versions.last(),
            v => history.versions.iter().find(|s| s.version == v),
        };
        let version = found.cloned().ok_or_else(|| {
            ControlPlaneError::NotFound(match req.version {
                0 => format!("namespace {name} has no schema"),
                v => format!("namespace {name} has no schema version {v} (or it was dropped from the history)"),
            })
        })?;
        Ok(SchemaResponse {
            name: ns.name,
            compatibility: history.compatibility,
            version: Some(version),
            revision: ns.revision,
        })
    }

    /// Every kept version of a namespace's schema, oldest first (none when
    /// it has no schema).
    pub async fn list_schema_history(&self, req: &ListSchemaHistoryRequest) -> Result<ListSchemaHistoryResponse> {
        let ns = self.live_namespace(&req.name).await?;
        let history = ns.schema.map(|s| *s).unwrap_or_default();
        Ok(ListSchemaHistoryResponse {
            name: ns.name,
            compatibility: history.compatibility,
            versions: history.versions,
        })
    }
}
