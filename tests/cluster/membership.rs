//! Membership changes: a fourth node joins as learner, is promoted, and an old node is removed;
//! coordinators are replaced under a running job, and a removed node stops serving.

use std::process::Output;
use std::time::Duration;

use raftstream::wordcount::WordCountJob;
use raftstream_api::client::ClusterClient;

use crate::common::{
    binary, ensure_exact_output, eventually, fast_executors, job, job_spec, local_job_names, start_executors,
    subtask_epochs, test_settings, word_count, TestCluster,
};
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

fn replace_node_cli(coordinators: &str, dead: u64, new_id: u64, address: &str) -> anyhow::Result<Output> {
    Ok(std::process::Command::new(binary())
        .args([
            "cluster",
            "replace-node",
            "--dead",
            &dead.to_string(),
            "--new-id",
            &new_id.to_string(),
            "--address",
            address,
            "--coordinators",
            coordinators,
        ])
        .env("RUST_LOG", "warn")
        .output()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinators_replaced_under_a_running_job_restart_nothing_and_a_removed_node_stops() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start_with(test_settings(), fast_executors()).await?;
    let client = start_executors(&mut cluster, &[("exec-a", 2), ("exec-b", 2)]).await?;
    let spec = WordCountJob {
        seed: 23,
        records: 60_000,
        ..word_count(&cluster)
    };
    let submitted = client.submit_job(&spec.spec("wc-replace"), "wc-replace").await?;
    let before = eventually("the job to run with a checkpoint", Duration::from_secs(60), || async {
        job(&client, &submitted.job_id)
            .await
            .filter(|job| job.status == "Running" && job.last_checkpoint_id.is_some())
    })
    .await?;
    let coordinators = cluster.cluster.addresses().join(",");

    tracing::info!("--- bad requests change nothing");
    let address = cluster.cluster.start_joining_node(4)?;
    let leader = cluster.leader().await?;
    for (dead, new_id, expected) in [
        (9, 4, "node 9 is not a voter"),
        (leader, leader, "an id of its own"),
        (
            leader,
            (1..=3).find(|id| *id != leader).unwrap_or(1),
            "is already a voter",
        ),
    ] {
        let refused = replace_node_cli(&coordinators, dead, new_id, &address)?;
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success(), "replacing {dead} by {new_id} was accepted");
        assert!(stderr.contains(expected), "{stderr}");
    }
    let members = client.cluster_status().await?.members.len();
    assert_eq!(members, 3, "a refused replacement adds no member");

    tracing::info!("--- kill -9 a follower, replace it by node 4 with the CLI");
    let dead = cluster.follower().await?;
    cluster.cluster.kill(dead)?;
    let replaced = replace_node_cli(&coordinators, dead, 4, &address)?;
    let stdout = String::from_utf8_lossy(&replaced.stdout);
    anyhow::ensure!(
        replaced.status.success(),
        "replace-node failed: {}",
        String::from_utf8_lossy(&replaced.stderr)
    );
    assert!(stdout.contains(&format!("replaced node {dead}")), "{stdout}");
    let voters = |status: &pb::ClusterStatusResponse| {
        let mut ids: Vec<u64> = status.members.iter().map(|member| member.node_id).collect();
        ids.sort_unstable();
        ids
    };
    let expected: Vec<u64> = (1..=4).filter(|id| *id != dead).collect();
    assert_eq!(voters(&client.cluster_status().await?), expected);

    tracing::info!("--- replace a live follower by node 5: the removed node notices and stops serving");
    let leader = cluster.leader().await?;
    let live = expected
        .iter()
        .copied()
        .find(|id| *id != leader && *id != 4)
        .ok_or_else(|| anyhow::anyhow!("no live follower to replace"))?;
    let address = cluster.cluster.start_joining_node(5)?;
    let remaining: Vec<String> = cluster
        .cluster
        .nodes()
        .filter(|node| node.node_id != dead)
        .map(|node| node.address.clone())
        .collect();
    let client = ClusterClient::new(&remaining, Duration::from_secs(20))?;
    client.replace_node(live, 5, &address).await?;
    let exit = eventually("the removed node to stop", Duration::from_secs(30), || {
        let exited = cluster.cluster.check_running().err().map(|error| error.to_string());
        async move { exited }
    })
    .await?;
    assert!(exit.contains(&format!("coordinator {live} exited")), "{exit}");
    assert!(exit.contains("was removed from the cluster"), "{exit}");

    tracing::info!("--- the job never restarted and its output is exact");
    let done = eventually("the job to end", Duration::from_secs(120), || async {
        job(&client, &submitted.job_id)
            .await
            .filter(|job| matches!(job.status.as_str(), "Finished" | "Failed" | "Cancelled"))
    })
    .await?;
    assert_eq!(done.status, "Finished", "{}", done.status_reason);
    assert_eq!(done.restart_count, 0, "replacing coordinators must restart nothing");
    assert_eq!(
        subtask_epochs(&done),
        subtask_epochs(&before),
        "no subtask may be re-deployed"
    );
    ensure_exact_output(&spec.output_dir, &spec.expected_counts())
}
