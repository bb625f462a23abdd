//! A migration's target held by one instance (an embedded target on
//! another shard, `Migration.target_owner_store_id`), reached by the
//! source's holders through that instance (ARCHITECTURE.md, "The life of
//! a migration"):
//!
//! - [`RemoteTarget`] is the target as a [`KeyValueHandle`] on the source's
//!   side: each call is the `prism.peer.v1.MigrationPeer` call of the same
//!   name on the instance whose store is the target's, found in this
//!   gateway's snapshot by its store id (so a restart at another address is
//!   followed), over the forwarder's channels, as this gateway (its
//!   control-plane token, role `shard`). The dual write, the backfill, the
//!   comparison, the shadow reads and the cutover's reads run unchanged
//!   over it.
//! - [`PeerService`] answers those calls on the target's side: on the
//!   target as this instance opened it, only for a migration whose target
//!   it holds — or for the namespace itself once that migration made it
//!   this instance's (`data_revision`), so a source holder whose snapshot
//!   lags behind the cleanup commit still writes where the namespace is.
//!
//! Errors: a peer that cannot be reached, or that does not (yet) hold the
//! target, is UNAVAILABLE to the caller (retryable: the snapshots
//! disagree while a step propagates); the target's own answers keep their
//! kind.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prism_plugin_api::kv::{
    Item, ItemsPage, KeyRange, KeyValueHandle, Mutation, NewItem, PageLimits, Record, RecordVersions, RecordsPage,
    ScanCursor, Selector, Version, VersionCursor, VersionsPage, WriteStamp,
};
use prism_plugin_api::{Micros, PluginError};
use prism_proto::control::Migration;
use prism_proto::peer as pb;
use prism_proto::peer::migration_peer_client::MigrationPeerClient;
use tonic::{Request, Response, Status};

use crate::auth::{ADMIN_ROLE, Authenticator, SHARD_ROLE};
use crate::error::GatewayError;
use crate::forward::Forwarder;
use crate::limits::MAX_MESSAGE_BYTES;
use crate::plugins::{Plugins, RemoteTargets};
use crate::snapshot::Metadata;

/// What the source's side needs to reach targets on other instances.
#[derive(Debug)]
pub struct Peers {
    link: Link,
    /// This instance's store id, once the store is open: a target in it is
    /// opened here, not called.
    store_id: OnceLock<Arc<str>>,
}

/// How a [`RemoteTarget`] calls: what every one of them shares.
#[derive(Debug, Clone)]
struct Link {
    forwarder: Arc<Forwarder>,
    metadata: Arc<Metadata>,
    /// `authorization` of every call: this gateway's control-plane token.
    authorization: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    request_timeout: Duration,
}

impl Peers {
    pub fn new(
        forwarder: Arc<Forwarder>,
        metadata: Arc<Metadata>,
        token: Option<&str>,
        request_timeout: Duration,
    ) -> Self {
        let authorization = token.and_then(|t| format!("Bearer {t}").parse().ok());
        Self { link: Link { forwarder, metadata, authorization, request_timeout }, store_id: OnceLock::new() }
    }
}

impl RemoteTargets for Peers {
    fn set_store_id(&self, store_id: Arc<str>) {
        let _ = self.store_id.set(store_id);
    }

    fn is_local(&self, store_id: &str) -> bool {
        self.store_id.get().is_some_and(|s| **s == *store_id)
    }

    fn target(&self, name: &str, migration: &Migration) -> Arc<dyn KeyValueHandle> {
        Arc::new(RemoteTarget {
            link: self.link.clone(),
            target: pb::TargetRef { namespace: name.to_owned(), migration_id: migration.id },
            shard: migration.target_shard_id.clone(),
            store_id: migration.target_owner_store_id.clone(),
        })
    }
}

/// A migration's target on another instance (module docs).
#[derive(Debug)]
pub struct RemoteTarget {
    link: Link,
    target: pb::TargetRef,
    shard: String,
    store_id: String,
}

impl RemoteTarget {
    fn unavailable(&self, why: impl std::fmt::Display) -> PluginError {
        PluginError::unavailable(
            format!("the migration's target on shard {} (store {}) cannot be reached", self.shard, self.store_id),
            why.to_string(),
        )
    }

    /// A client to the instance holding the target, as registered now.
    fn client(&self) -> Result<MigrationPeerClient<tonic::transport::Channel>, PluginError> {
        let snapshot = self.link.metadata.load();
        let endpoint = snapshot
            .shards
            .get(&self.shard)
            .and_then(|s| s.instances.iter().find(|i| i.store_id == self.store_id))
            .map(|i| i.endpoint.clone())
            .ok_or_else(|| self.unavailable("no registered instance holds the store"))?;
        let channel = self.link.forwarder.channel(&endpoint).map_err(|e| self.unavailable(e))?;
        Ok(MigrationPeerClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.set_timeout(self.link.request_timeout);
        if let Some(authorization) = &self.link.authorization {
            request.metadata_mut().insert("authorization", authorization.clone());
        }
        request
    }

    /// The target instance's refusal or failure as the plugin API says it.
    fn failed(&self, status: Status) -> PluginError {
        use tonic::Code;
        match status.code() {
            Code::InvalidArgument => PluginError::invalid("target", status.message()),
            Code::Internal | Code::DataLoss | Code::Unimplemented => PluginError::Internal {
                public: format!("the migration's target on shard {} failed", self.shard),
                source: Box::new(status),
            },
            // Unreachable, overloaded, or not holding the target yet in
            // its snapshot: all pass.
            _ => self.unavailable(format!("{:?}: {}", status.code(), status.message())),
        }
    }
}

#[tonic::async_trait]
impl KeyValueHandle for RemoteTarget {
    async fn mutate(&self, id: &str, mutations: &[Mutation], stamp: &WriteStamp) -> prism_plugin_api::Result<()> {
        let request = pb::MutateRequest {
            target: Some(self.target.clone()),
            id: id.to_owned(),
            mutations: mutations.iter().map(mutation_to).collect(),
            generation_time: stamp.generation_time,
            token: stamp.token.clone(),
        };
        self.client()?.mutate(self.request(request)).await.map_err(|s| self.failed(s))?;
        Ok(())
    }

    async fn get(
        &self,
        id: &str,
        selector: &Selector,
        after: Option<&[u8]>,
        limits: PageLimits,
        now: Micros,
    ) -> prism_plugin_api::Result<ItemsPage> {
        let request = pb::GetRequest {
            target: Some(self.target.clone()),
            id: id.to_owned(),
            selector: Some(selector_to(selector)),
            after: after.map(<[u8]>::to_vec),
            limits: Some(limits_to(limits)),
            now,
        };
        let page = self.client()?.get(self.request(request)).await.map_err(|s| self.failed(s))?.into_inner();
        Ok(ItemsPage { items: page.items.into_iter().map(item_from).collect(), next: page.next })
    }

    async fn scan(
        &self,
        after: Option<&ScanCursor>,
        limits: PageLimits,
        now: Micros,
    ) -> prism_plugin_api::Result<RecordsPage> {
        let request = pb::ScanRequest {
            target: Some(self.target.clone()),
            after: after.map(|c| pb::ScanCursor { id: c.id.clone(), key: c.key.clone() }),
            limits: Some(limits_to(limits)),
            now,
        };
        let page = self.client()?.scan(self.request(request)).await.map_err(|s| self.failed(s))?.into_inner();
        Ok(RecordsPage {
            records: page
                .records
                .into_iter()
                .map(|r| Record { id: r.id, items: r.items.into_iter().map(item_from).collect() })
                .collect(),
            next: page.next.map(|c| ScanCursor { id: c.id, key: c.key }),
        })
    }

    /// Not needed of a target: its holder reports its usage once it is
    /// the namespace.
    async fn storage_bytes(&self) -> prism_plugin_api::Result<u64> {
        Err(not_remote("storage_bytes"))
    }

    /// Not needed of a target: a migration scans its source.
    async fn scan_versions(
        &self,
        _after: Option<&VersionCursor>,
        _limits: PageLimits,
    ) -> prism_plugin_api::Result<VersionsPage> {
        Err(not_remote("scan_versions"))
    }

    async fn restore(&self, id: &str, versions: &[Version]) -> prism_plugin_api::Result<()> {
        self.restore_records(&[RecordVersions { id: id.to_owned(), versions: versions.to_vec() }]).await
    }

    async fn restore_records(&self, records: &[RecordVersions]) -> prism_plugin_api::Result<()> {
        let request = pb::RestoreRecordsRequest {
            target: Some(self.target.clone()),
            records: records
                .iter()
                .map(|r| pb::RecordVersions { id: r.id.clone(), versions: r.versions.iter().map(version_to).collect() })
                .collect(),
        };
        self.client()?.restore_records(self.request(request)).await.map_err(|s| self.failed(s))?;
        Ok(())
    }
}

fn not_remote(call: &str) -> PluginError {
    PluginError::Internal {
        public: format!("{call} is not served for a migration's target on another instance"),
        source: call.to_owned().into(),
    }
}

/// The target's side of `prism.peer.v1.MigrationPeer` (module docs).
#[derive(Debug, Clone)]
pub struct PeerService {
    metadata: Arc<Metadata>,
    plugins: Plugins,
    shard_id: String,
    store_id: Arc<str>,
    authenticator: Authenticator,
    /// No key to verify a token with: every caller is admitted.
    open: bool,
}

impl PeerService {
    pub fn new(
        metadata: Arc<Metadata>,
        plugins: Plugins,
        shard_id: String,
        store_id: Arc<str>,
        auth: &crate::config::AuthConfig,
    ) -> Self {
        let (authenticator, open) = (Authenticator::new(auth), !auth.verifies_tokens());
        Self { metadata, plugins, shard_id, store_id, authenticator, open }
    }

    /// Only gateways (role `shard`) and admins call, where tokens are
    /// verified; anyone where nothing is (as the control plane).
    fn admit<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let authorization = request.metadata().get("authorization").and_then(|v| v.to_str().ok());
        let (principal, _) = self
            .authenticator
            .authenticate_until(authorization)
            .map_err(|e| GatewayError::Unauthenticated(e.to_string()).into_status())?;
        if !self.open && !principal.has_role(SHARD_ROLE) && !principal.has_role(ADMIN_ROLE) {
            return Err(GatewayError::PermissionDenied(format!(
                "{} may not call MigrationPeer: it is for gateways (role {SHARD_ROLE})",
                principal.sub
            ))
            .into_status());
        }
        Ok(())
    }

    /// The target `target` names, opened on this instance.
    fn target(&self, target: Option<&pb::TargetRef>) -> Result<Arc<dyn KeyValueHandle>, Status> {
        let target = target.ok_or_else(|| GatewayError::invalid("target", "is required").into_status())?;
        let snapshot = self.metadata.load();
        let entry = snapshot.namespaces.get(target.namespace.as_str()).ok_or_else(|| {
            GatewayError::NotFound(format!("namespace {} is not in this gateway's snapshot", target.namespace))
                .into_status()
        })?;
        let holds_target = entry.migration.as_deref().is_some_and(|m| {
            m.id == target.migration_id
                && m.target_shard_id == self.shard_id
                && *m.target_owner_store_id == *self.store_id
        });
        // The target opens here, never through a peer (which would call
        // this service again): refused while this instance does not know
        // its store as its own.
        if !self.plugins.is_local_store(&self.store_id) {
            return Err(GatewayError::Unavailable(format!(
                "this instance's store ({}) is not open for migration targets yet",
                self.store_id
            ))
            .into_status());
        }
        let opened = if holds_target {
            entry.migration_target(&self.plugins).map_err(GatewayError::into_status)?
        } else if entry.ns.create_revision == target.migration_id && entry.held_by(&self.shard_id, &self.store_id) {
            // The migration made it the namespace here.
            Some(entry.key_value_arc(&self.plugins).map_err(GatewayError::into_status)?)
        } else {
            None
        };
        opened.ok_or_else(|| {
            GatewayError::FailedPrecondition(format!(
                "this instance (shard {}, store {}) does not hold the target of migration {} of {}",
                self.shard_id, self.store_id, target.migration_id, target.namespace
            ))
            .into_status()
        })
    }
}

fn plugin_status(e: PluginError) -> Status {
    GatewayError::Plugin(e).into_status()
}

#[tonic::async_trait]
impl pb::migration_peer_server::MigrationPeer for PeerService {
    async fn mutate(&self, request: Request<pb::MutateRequest>) -> Result<Response<pb::MutateResponse>, Status> {
        self.admit(&request)?;
        let r = request.into_inner();
        let target = self.target(r.target.as_ref())?;
        let mutations = r.mutations.into_iter().map(mutation_from).collect::<Result<Vec<_>, _>>()?;
        let stamp = WriteStamp { generation_time: r.generation_time, token: r.token };
        target.mutate(&r.id, &mutations, &stamp).await.map_err(plugin_status)?;
        Ok(Response::new(pb::MutateResponse {}))
    }

    async fn get(&self, request: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        self.admit(&request)?;
        let r = request.into_inner();
        let target = self.target(r.target.as_ref())?;
        let selector = selector_from(r.selector)?;
        let page = target.get(&r.id, &selector, r.after.as_deref(), limits_from(r.limits), r.now).await;
        let page = page.map_err(plugin_status)?;
        Ok(Response::new(pb::GetResponse { items: page.items.iter().map(item_to).collect(), next: page.next }))
    }

    async fn scan(&self, request: Request<pb::ScanRequest>) -> Result<Response<pb::ScanResponse>, Status> {
        self.admit(&request)?;
        let r = request.into_inner();
        let target = self.target(r.target.as_ref())?;
        let after = r.after.map(|c| ScanCursor { id: c.id, key: c.key });
        let page = target.scan(after.as_ref(), limits_from(r.limits), r.now).await.map_err(plugin_status)?;
        Ok(Response::new(pb::ScanResponse {
            records: page
                .records
                .iter()
                .map(|r| pb::Record { id: r.id.clone(), items: r.items.iter().map(item_to).collect() })
                .collect(),
            next: page.next.map(|c| pb::ScanCursor { id: c.id, key: c.key }),
        }))
    }

    async fn restore_records(
        &self,
        request: Request<pb::RestoreRecordsRequest>,
    ) -> Result<Response<pb::RestoreRecordsResponse>, Status> {
        self.admit(&request)?;
        let r = request.into_inner();
        let target = self.target(r.target.as_ref())?;
        let records = r
            .records
            .into_iter()
            .map(|r| {
                let versions = r.versions.into_iter().map(version_from).collect::<Result<Vec<_>, _>>()?;
                Ok(RecordVersions { id: r.id, versions })
            })
            .collect::<Result<Vec<_>, Status>>()?;
        target.restore_records(&records).await.map_err(plugin_status)?;
        Ok(Response::new(pb::RestoreRecordsResponse {}))
    }
}

// The plugin API's types on the wire and back. A message missing a part
// it needs is INVALID_ARGUMENT naming the part.

fn missing(field: &str) -> Status {
    GatewayError::invalid(field, "is required").into_status()
}

fn item_to(item: &Item) -> pb::Item {
    pb::Item { key: item.key.clone(), value: item.value.clone(), expires_at: item.expires_at }
}

fn item_from(item: pb::Item) -> Item {
    Item { key: item.key, value: item.value, expires_at: item.expires_at }
}

fn range_to(range: &KeyRange) -> pb::KeyRange {
    pb::KeyRange { start: range.start.clone(), end: range.end.clone() }
}

fn range_from(range: pb::KeyRange) -> KeyRange {
    KeyRange { start: range.start, end: range.end }
}

fn mutation_to(mutation: &Mutation) -> pb::Mutation {
    use pb::mutation::Operation;
    let operation = match mutation {
        Mutation::Put(item) => {
            Operation::Put(pb::Item { key: item.key.clone(), value: item.value.clone(), expires_at: item.expires_at })
        }
        Mutation::Delete(key) => Operation::Delete(key.clone()),
        Mutation::DeleteRange(range) => Operation::DeleteRange(range_to(range)),
    };
    pb::Mutation { operation: Some(operation) }
}

fn mutation_from(mutation: pb::Mutation) -> Result<Mutation, Status> {
    use pb::mutation::Operation;
    Ok(match mutation.operation.ok_or_else(|| missing("mutations.operation"))? {
        Operation::Put(item) => {
            Mutation::Put(NewItem { key: item.key, value: item.value, expires_at: item.expires_at })
        }
        Operation::Delete(key) => Mutation::Delete(key),
        Operation::DeleteRange(range) => Mutation::DeleteRange(range_from(range)),
    })
}

fn selector_to(selector: &Selector) -> pb::Selector {
    use pb::selector::Selector as S;
    let selector = match selector {
        Selector::All => S::All(true),
        Selector::Keys(keys) => S::Keys(pb::Keys { keys: keys.clone() }),
        Selector::Range(range) => S::Range(range_to(range)),
    };
    pb::Selector { selector: Some(selector) }
}

fn selector_from(selector: Option<pb::Selector>) -> Result<Selector, Status> {
    use pb::selector::Selector as S;
    Ok(match selector.and_then(|s| s.selector).ok_or_else(|| missing("selector"))? {
        S::All(_) => Selector::All,
        S::Keys(keys) => Selector::Keys(keys.keys),
        S::Range(range) => Selector::Range(range_from(range)),
    })
}

fn limits_to(limits: PageLimits) -> pb::PageLimits {
    pb::PageLimits { max_bytes: limits.max_bytes, max_items: limits.max_items }
}

/// The caller's deadline bounds the call; a page's own stop is not sent.
fn limits_from(limits: Option<pb::PageLimits>) -> PageLimits {
    let limits = limits.unwrap_or_default();
    PageLimits::new(limits.max_bytes, limits.max_items)
}

fn version_to(version: &Version) -> pb::Version {
    use pb::version::Kind;
    let kind = match version {
        Version::Item { key, value, expires_at, .. } => {
            Kind::Item(pb::Item { key: key.clone(), value: value.clone(), expires_at: *expires_at })
        }
        Version::Tombstone { key, .. } => Kind::Tombstone(key.clone()),
        Version::Range { range, .. } => Kind::Range(range_to(range)),
    };
    pb::Version { generation: version.generation(), kind: Some(kind) }
}

fn version_from(version: pb::Version) -> Result<Version, Status> {
    use pb::version::Kind;
    let generation = version.generation;
    Ok(match version.kind.ok_or_else(|| missing("records.versions.kind"))? {
        Kind::Item(item) => Version::Item { key: item.key, value: item.value, expires_at: item.expires_at, generation },
        Kind::Tombstone(key) => Version::Tombstone { key, generation },
        Kind::Range(range) => Version::Range { range: range_from(range), generation },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plugin_types_survive_the_wire() {
        let range = KeyRange { start: b"a".to_vec(), end: Some(b"m".to_vec()) };
        let mutations = [
            Mutation::Put(NewItem { key: b"k".to_vec(), value: vec![0, 255], expires_at: Some(-5) }),
            Mutation::Put(NewItem { key: vec![], value: vec![], expires_at: None }),
            Mutation::Delete(b"d".to_vec()),
            Mutation::DeleteRange(range.clone()),
            Mutation::DeleteRange(KeyRange::all()),
        ];
        for m in mutations {
            assert_eq!(mutation_from(mutation_to(&m)).expect("decodes"), m);
        }
        for s in [Selector::All, Selector::Keys(vec![b"x".to_vec(), vec![]]), Selector::Range(range.clone())] {
            assert_eq!(selector_from(Some(selector_to(&s))).expect("decodes"), s);
        }
        let versions = [
            Version::Item { key: b"k".to_vec(), value: b"v".to_vec(), expires_at: Some(9), generation: 7 },
            Version::Tombstone { key: b"t".to_vec(), generation: i64::MIN },
            Version::Range { range, generation: 3 },
        ];
        for v in versions {
            assert_eq!(version_from(version_to(&v)).expect("decodes"), v);
        }
        let limits = PageLimits::new(1 << 20, Some(64));
        assert_eq!(limits_from(Some(limits_to(limits))), limits);
    }

    #[test]
    fn a_message_missing_a_part_is_refused_naming_it() {
        let status = mutation_from(pb::Mutation { operation: None }).expect_err("refused");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains("mutations.operation"), "{status:?}");
        let status = selector_from(None).expect_err("refused");
        assert!(status.message().contains("selector"), "{status:?}");
        let status = version_from(pb::Version { generation: 1, kind: None }).expect_err("refused");
        assert!(status.message().contains("records.versions.kind"), "{status:?}");
    }
}
