//! A node that lost its data dir catches up through snapshot install, the log being purged.

use std::time::Duration;

use crate::common::{eventually, job_spec, local_job_names, test_settings, TestCluster};
use raftstream_coordinator::node::RaftSettings;
use raftstream_proto::v1 as pb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wiped_node_catches_up_through_snapshot_install() -> anyhow::Result<()> {
    // Snapshot often and keep little log so the leader must send a snapshot.
    let settings = RaftSettings {
        snapshot_after_entries: 20,
        entries_kept_behind_snapshot: 2,
        snapshot_chunk_bytes: 4096,
        ..test_settings()
    };
    let mut cluster = TestCluster::start(settings).await?;
    let victim = cluster.follower().await?;

    tracing::info!("--- stop follower {victim} and wipe its data dir");
    cluster.cluster.kill(victim)?;
    cluster.cluster.wipe(victim)?;

    tracing::info!("--- write enough that the leader snapshots and purges the log");
    let client = cluster.client()?;
    let mut expected = Vec::new();
    for n in 0..60 {
        let job = client
            .submit_job(&job_spec(&format!("job-{n}")), &format!("r-{n}"))
            .await?;
        expected.push(job.name);
    }
    let leader = cluster.leader().await?;
    let status = eventually("the leader to purge its log", Duration::from_secs(20), || async {
        let status = cluster.client().ok()?.cluster_status().await.ok()?;
        let leader_status = status.nodes.iter().find(|node| node.node_id == leader)?.clone();
        leader_status
            .purged_index
            .filter(|purged| *purged > 10)
            .map(|_| leader_status)
    })
    .await?;
    tracing::info!(purged = ?status.purged_index, snapshot = ?status.snapshot_index, "leader compacted");

    tracing::info!("--- restart the wiped node: it gets the snapshot, then the rest of the log");
    cluster.cluster.restart(victim)?;
    eventually("the wiped node to catch up", Duration::from_secs(30), || async {
        local_job_names(&cluster, victim)
            .await
            .filter(|names| *names == expected)
    })
    .await?;
    let victim_status = cluster.client_of(victim)?.cluster_status().await?;
    let own = victim_status
        .nodes
        .iter()
        .find(|node| node.node_id == victim)
        .cloned()
        .unwrap_or_default();
    assert!(
        own.snapshot_index.is_some_and(|index| index > 0),
        "the wiped node must hold an installed snapshot: {own:?}"
    );
    let log = std::fs::read_to_string(
        cluster
            .cluster
            .node(victim)
            .map(|node| node.log_path())
            .unwrap_or_default(),
    )?;
    assert!(
        log.contains("installed snapshot"),
        "no snapshot install in the wiped node's log"
    );

    tracing::info!("--- it serves consistent reads and the cluster keeps accepting writes");
    let job = client.submit_job(&job_spec("after-catch-up"), "after").await?;
    let seen = cluster
        .client_of(victim)?
        .get_job(&job.job_id, pb::ReadConsistency::Linearizable)
        .await?;
    assert_eq!(seen.name, "after-catch-up");
    Ok(())
}
