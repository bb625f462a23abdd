//! The one rule of a migration's target that the control plane and the
//! gateways must agree on: what spec it makes of the source's.

use crate::control::{Backend, MigrationTarget, NamespaceSpec};

/// The spec `target` makes of `source`: its backend and settings (an
/// UNSPECIFIED backend keeps the source's, and then unset settings keep
/// the source's settings), its pin (empty keeps the source's placement);
/// everything else is the source's.
pub fn target_spec(source: &NamespaceSpec, target: &MigrationTarget) -> NamespaceSpec {
    let mut spec = source.clone();
    if target.backend != Backend::Unspecified as i32 {
        spec.backend = target.backend;
        spec.backend_config = target.backend_config.clone().map(Box::new);
    } else if target.backend_config.is_some() {
        spec.backend_config = target.backend_config.clone().map(Box::new);
    }
    if !target.pinned_shard.is_empty() {
        spec.placement.get_or_insert_with(Default::default).pinned_shard.clone_from(&target.pinned_shard);
    }
    spec
}
