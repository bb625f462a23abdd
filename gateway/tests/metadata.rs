//! The gateway without its control plane: it keeps serving from its last
//! metadata snapshot and says how stale that snapshot may be.

use std::time::Duration;

use prism_proto::control::{Abstraction, Backend, NamespaceSpec};
use prism_proto::kv;
use prism_testkit::{Cluster, admin_token, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_from_the_last_snapshot_while_the_control_plane_is_down() -> anyhow::Result<()> {
    let mut cluster = Cluster::start().await?;
    let spec = NamespaceSpec {
        abstraction: Abstraction::KeyValue as i32,
        backend: Backend::Embedded as i32,
        ..Default::default()
    };
    let gw_addr = cluster.active_namespace("acme/steady", spec).await?.endpoint();
    assert_eq!(cluster.gateways[0].gateway.metadata.staleness(), Duration::ZERO, "connected: not stale");

    cluster.control_plane.stop().await?;
    let gw = cluster.gateways.iter().find(|g| g.endpoint() == gw_addr).ok_or_else(|| anyhow::anyhow!("gateway"))?;
    let metadata = &gw.gateway.metadata;
    eventually(Duration::from_secs(10), || async {
        anyhow::ensure!(metadata.staleness() > Duration::ZERO, "still reports a live watch");
        Ok(())
    })
    .await?;

    let mut client = gw.kv(Some(&admin_token())).await?;
    let item = kv::Item { key: b"k".to_vec(), value: b"v".to_vec(), ttl: None };
    let put = kv::PutItemsRequest {
        namespace: "acme/steady".into(),
        id: "r".into(),
        items: vec![item],
        idempotency_token: None,
    };
    client.put_items(put).await?;
    let got = client
        .get_items(kv::GetItemsRequest { namespace: "acme/steady".into(), id: "r".into(), ..Default::default() })
        .await?
        .into_inner();
    assert_eq!(got.items.len(), 1);
    let before = metadata.staleness();
    eventually(Duration::from_secs(5), || async {
        anyhow::ensure!(metadata.staleness() > before, "staleness does not grow");
        Ok(())
    })
    .await?;
    Ok(())
}
