//! `prism shard list`: the shards the control plane knows, each with its
//! live gateway instances (endpoint, registration age, time left on the
//! lease) and the number of namespaces assigned to it.

use std::collections::BTreeMap;
use std::time::SystemTime;

use clap::Subcommand;
use prism_proto::control::{ListNamespacesRequest, ListShardsRequest, Namespace, NamespaceStatus, Shard};
use serde_json::{Value, json};

use crate::Global;
use crate::flags::pages;
use crate::output::{self, Format, Table};

#[derive(Debug, Subcommand)]
pub enum ShardCommand {
    /// List shards with their instances and namespace counts
    List,
}

pub async fn run(global: &Global, cmd: ShardCommand) -> anyhow::Result<()> {
    match cmd {
        ShardCommand::List => list(global).await,
    }
}

async fn list(global: &Global) -> anyhow::Result<()> {
    let mut client = global.connect().await?;
    let shards = client.list_shards(ListShardsRequest {}).await?.into_inner().shards;
    let (namespaces, _) = pages(true, |page_token| {
        let mut client = client.clone();
        let req = ListNamespacesRequest { page_size: 1000, page_token, ..Default::default() };
        async move {
            let r = client.list_namespaces(req).await?.into_inner();
            Ok((r.namespaces, r.next_page_token))
        }
    })
    .await?;
    let rows = shard_rows(&shards, &namespaces);
    match global.output {
        Format::Json => output::print_json(&shards_json(&rows)),
        Format::Table => Ok(output::print(&shards_table(&rows, SystemTime::now()).render())?),
    }
}

/// A shard with its namespace count. Shards that own namespaces but have
/// no live instance are listed too: that is what an operator must see.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardRow {
    pub shard: Shard,
    pub namespaces: u64,
}

/// Joins shards and namespaces (DELETED tombstones do not count), ordered
/// by shard id.
pub fn shard_rows(shards: &[Shard], namespaces: &[Namespace]) -> Vec<ShardRow> {
    let mut rows: BTreeMap<String, ShardRow> =
        shards.iter().map(|s| (s.shard_id.clone(), ShardRow { shard: s.clone(), namespaces: 0 })).collect();
    for ns in namespaces {
        if ns.shard_id.is_empty() || ns.status == NamespaceStatus::Deleted as i32 {
            continue;
        }
        rows.entry(ns.shard_id.clone())
            .or_insert_with(|| ShardRow {
                shard: Shard { shard_id: ns.shard_id.clone(), ..Default::default() },
                namespaces: 0,
            })
            .namespaces += 1;
    }
    rows.into_values().collect()
}

/// Whole seconds from `from` to `to` as `1m 5s` (negative spans: `-`).
fn span(from: SystemTime, to: SystemTime) -> String {
    to.duration_since(from)
        .map(|d| humantime::format_duration(std::time::Duration::from_secs(d.as_secs())).to_string())
        .unwrap_or_else(|_| "-".to_owned())
}

fn system_time(ts: Option<&prost_types::Timestamp>) -> Option<SystemTime> {
    ts.and_then(|t| SystemTime::try_from(*t).ok())
}

/// One line per instance (one per shard without instances); `now` makes
/// the ages testable.
pub fn shards_table(rows: &[ShardRow], now: SystemTime) -> Table {
    let mut t = Table::new(&["SHARD", "NAMESPACES", "INSTANCE", "ENDPOINT", "REGISTERED", "LEASE-LEFT"]);
    for row in rows {
        let id = row.shard.shard_id.clone();
        let count = row.namespaces.to_string();
        if row.shard.instances.is_empty() {
            t.push(vec![id, count, String::new(), String::new(), String::new(), String::new()]);
            continue;
        }
        for i in &row.shard.instances {
            let registered = system_time(i.register_time.as_ref()).map(|at| format!("{} ago", span(at, now)));
            let lease = system_time(i.lease_expire_time.as_ref()).map(|until| span(now, until));
            t.push(vec![
                id.clone(),
                count.clone(),
                i.instance_id.clone(),
                i.endpoint.clone(),
                registered.unwrap_or_default(),
                lease.unwrap_or_default(),
            ]);
        }
    }
    t
}

pub fn shards_json(rows: &[ShardRow]) -> Value {
    let shards: Vec<Value> = rows
        .iter()
        .map(|r| {
            let mut v = crate::json::shard(&r.shard);
            if let Value::Object(m) = &mut v {
                m.insert("namespaces".into(), json!(r.namespaces));
            }
            v
        })
        .collect();
    json!({ "shards": shards })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use prism_proto::control::ShardInstance;

    use super::*;

    fn at(t: SystemTime) -> Option<prost_types::Timestamp> {
        Some(prost_types::Timestamp::from(t))
    }

    fn namespace(name: &str, shard: &str, status: NamespaceStatus) -> Namespace {
        Namespace { name: name.into(), shard_id: shard.into(), status: status as i32, ..Default::default() }
    }

    #[test]
    fn shards_show_instances_lease_and_namespace_counts() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let instance = |id: &str, endpoint: &str, registered_secs: u64, lease_secs: u64| ShardInstance {
            instance_id: id.into(),
            endpoint: endpoint.into(),
            register_time: at(now - Duration::from_secs(registered_secs)),
            lease_expire_time: at(now + Duration::from_secs(lease_secs)),
            store_id: String::new(),
            features: Vec::new(),
        };
        let shards = vec![
            Shard { shard_id: "shard-1".into(), instances: vec![instance("i-3", "10.0.0.3:7401", 30, 9)], revision: 0 },
            Shard {
                shard_id: "shard-0".into(),
                instances: vec![instance("i-1", "10.0.0.1:7401", 3_725, 4), instance("i-2", "10.0.0.2:7401", 65, 10)],
                revision: 0,
            },
        ];
        let namespaces = vec![
            namespace("a/x", "shard-0", NamespaceStatus::Active),
            namespace("a/y", "shard-0", NamespaceStatus::Provisioning),
            namespace("a/z", "shard-1", NamespaceStatus::Active),
            namespace("a/gone", "shard-1", NamespaceStatus::Deleted),
            namespace("a/orphan", "shard-2", NamespaceStatus::Active),
            namespace("a/none", "", NamespaceStatus::Provisioning),
        ];
        let rows = shard_rows(&shards, &namespaces);
        assert_eq!(
            shards_table(&rows, now).render(),
            "SHARD    NAMESPACES  INSTANCE  ENDPOINT       REGISTERED    LEASE-LEFT\n\
             shard-0  2           i-1       10.0.0.1:7401  1h 2m 5s ago  4s\n\
             shard-0  2           i-2       10.0.0.2:7401  1m 5s ago     10s\n\
             shard-1  1           i-3       10.0.0.3:7401  30s ago       9s\n\
             shard-2  1           -         -              -             -\n"
        );

        let json = shards_json(&rows);
        assert_eq!(json["shards"][0]["shard_id"], "shard-0");
        assert_eq!(json["shards"][0]["namespaces"], 2);
        assert_eq!(json["shards"][0]["instances"][1]["endpoint"], "10.0.0.2:7401");
        assert_eq!(json["shards"][0]["instances"][0]["instance_id"], "i-1");
        assert!(json["shards"][0]["instances"][0]["lease_expire_time"].is_string());
        assert_eq!(json["shards"][2]["instances"], json!([]));
        assert_eq!(json["shards"].as_array().map(Vec::len), Some(3));
    }
}
