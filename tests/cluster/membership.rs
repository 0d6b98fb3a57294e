//! Membership changes: a fourth node joins as learner, is promoted, and an old node is removed.

use std::time::Duration;

use crate::common::{eventually, job_spec, local_job_names, test_settings, TestCluster};
use raftstream_proto::v1 as pb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learner_joins_is_promoted_and_an_old_voter_is_removed() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start(test_settings()).await?;
    let client = cluster.client()?;
    let mut expected = Vec::new();
    for n in 0..5 {
        expected.push(
            client
                .submit_job(&job_spec(&format!("before-join-{n}")), &format!("b-{n}"))
                .await?
                .name,
        );
    }

    tracing::info!("--- start node 4 empty and add it as a learner");
    let address = cluster.cluster.start_joining_node(4)?;
    client.add_learner(4, &address).await?;
    let status = client.cluster_status().await?;
    let member = status
        .members
        .iter()
        .find(|member| member.node_id == 4)
        .cloned()
        .unwrap_or_default();
    assert_eq!(member.role, "learner");
    eventually("the learner to replicate the jobs", Duration::from_secs(20), || async {
        local_job_names(&cluster, 4).await.filter(|names| *names == expected)
    })
    .await?;

    tracing::info!("--- adding it again, or promoting an unknown node, is refused");
    let unknown = client
        .change_membership(&[1, 2, 3, 9])
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("accepted node 9"))?;
    assert_eq!(unknown.code(), tonic::Code::InvalidArgument, "{unknown}");
    assert!(unknown.to_string().contains("node 9"), "{unknown}");

    tracing::info!("--- promote node 4 and remove a node that is not the leader");
    let leader = cluster.leader().await?;
    let removed = (1..=3)
        .find(|id| *id != leader)
        .ok_or_else(|| anyhow::anyhow!("no follower"))?;
    let voters: Vec<u64> = (1..=4).filter(|id| *id != removed).collect();
    client.change_membership(&voters).await?;
    let status = client.cluster_status().await?;
    let mut member_ids: Vec<u64> = status.members.iter().map(|member| member.node_id).collect();
    member_ids.sort();
    assert_eq!(member_ids, voters, "members after the change");
    assert!(status.members.iter().all(|member| member.role == "voter"));

    tracing::info!("--- the removed node can stop; the new majority commits writes");
    cluster.cluster.kill(removed)?;
    let client = crate::common::TestCluster::client(&cluster)?;
    let job = client.submit_job(&job_spec("after-change"), "after-change").await?;
    expected.push(job.name.clone());
    eventually("node 4 to apply the new job", Duration::from_secs(20), || async {
        local_job_names(&cluster, 4).await.filter(|names| *names == expected)
    })
    .await?;
    let seen = cluster
        .client_of(4)?
        .get_job(&job.job_id, pb::ReadConsistency::Linearizable)
        .await?;
    assert_eq!(seen.name, "after-change");
    Ok(())
}
