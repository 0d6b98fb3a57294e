//! kill -9 of the leader, then of the whole cluster: nothing acknowledged is lost.

use std::time::Duration;

use crate::common::{eventually, job_spec, local_job_names, test_settings, TestCluster};
use raftstream_proto::v1 as pb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_jobs_survive_leader_kill_and_full_restart() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start(test_settings()).await?;
    let client = cluster.client()?;

    tracing::info!("--- submit jobs and remember every acknowledged one");
    let mut acknowledged = Vec::new();
    for n in 0..10 {
        let job = client
            .submit_job(&job_spec(&format!("before-kill-{n}")), &format!("before-{n}"))
            .await?;
        acknowledged.push((job.job_id, job.name));
    }

    tracing::info!("--- kill -9 the leader");
    let old_leader = cluster.leader().await?;
    let status_before = client.cluster_status().await?;
    cluster.cluster.kill(old_leader)?;

    tracing::info!("--- a new leader is elected among the survivors");
    let new_leader = cluster.leader().await?;
    assert_ne!(new_leader, old_leader);
    let status_after = client.cluster_status().await?;
    assert!(
        status_after.term > status_before.term,
        "the term must grow: {} -> {}",
        status_before.term,
        status_after.term
    );

    tracing::info!("--- every acknowledged job is still there, and new submits succeed");
    let jobs = client.list_jobs(pb::ReadConsistency::Linearizable).await?;
    for (job_id, name) in &acknowledged {
        assert!(
            jobs.iter().any(|job| &job.job_id == job_id && &job.name == name),
            "lost {job_id} ({name})"
        );
    }
    for n in 0..5 {
        let job = client
            .submit_job(&job_spec(&format!("after-kill-{n}")), &format!("after-{n}"))
            .await?;
        acknowledged.push((job.job_id, job.name));
    }

    tracing::info!("--- the old leader rejoins as a follower and catches up");
    cluster.cluster.restart(old_leader)?;
    let expected: Vec<String> = acknowledged.iter().map(|(_, name)| name.clone()).collect();
    eventually("the restarted node to catch up", Duration::from_secs(20), || async {
        local_job_names(&cluster, old_leader)
            .await
            .filter(|names| *names == expected)
    })
    .await?;

    tracing::info!("--- kill -9 all three and restart them");
    cluster.cluster.kill_all();
    for node_id in 1..=3 {
        cluster.cluster.restart(node_id)?;
    }
    cluster.leader().await?;
    let jobs = cluster.client()?.list_jobs(pb::ReadConsistency::Linearizable).await?;
    let names: Vec<String> = jobs.iter().map(|job| job.name.clone()).collect();
    assert_eq!(names, expected, "committed jobs after a full restart");
    for (job_id, _) in &acknowledged {
        assert!(jobs.iter().any(|job| &job.job_id == job_id));
    }

    tracing::info!("--- ids keep increasing after the restart, and request ids are still remembered");
    let next = cluster
        .client()?
        .submit_job(&job_spec("after-restart"), "after-restart")
        .await?;
    assert_eq!(next.job_id, format!("job-{}", acknowledged.len() + 1));
    let retried = cluster
        .client()?
        .submit_job(&job_spec("before-kill-0"), "before-0")
        .await?;
    assert_eq!(retried.job_id, acknowledged[0].0);
    Ok(())
}
