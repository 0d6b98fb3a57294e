//! Sub-second death detection: an executor whose process dies breaks its session stream, and the
//! leader declares it dead once it has not reconnected within the grace, without waiting out its
//! lease (here at once: its address refuses connections, so no process is left to reconnect). A
//! paused executor breaks nothing (its socket stays open), so only the lease could
//! declare it dead. The lease here is a minute, far beyond the test's patience: only the broken
//! session can explain a death seen in time.

use std::time::{Duration, Instant};

use crate::common::{eventually, job_spec, placement, test_settings, TestCluster};
use raftstream_api::client::ClusterClient;
use raftstream_coordinator::leader::ExecutorSettings;

const LEASE_MS: u64 = 60_000;

async fn alive_and_connected(client: &ClusterClient, executor_id: &str) -> Option<(bool, bool)> {
    let listed = client.list_executors().await.ok()?;
    listed
        .executors
        .iter()
        .find(|info| info.executor_id == executor_id)
        .map(|info| (info.alive, info.connected))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_executor_is_declared_dead_within_the_grace_and_a_paused_one_keeps_its_lease() -> anyhow::Result<()> {
    let executor_settings = ExecutorSettings {
        heartbeat_interval_ms: 100,
        lease_timeout_ms: LEASE_MS,
        session_break_grace_ms: 300,
        scheduling_interval_ms: 50,
    };
    let mut cluster = TestCluster::start_with(test_settings(), executor_settings).await?;
    let client = cluster.client()?;
    let patience = Duration::from_secs(20);

    // Two slots each: the job's two slices take one on each, and steady can hold both.
    cluster.cluster.start_executor("doomed", 2)?;
    cluster.cluster.start_executor("steady", 2)?;
    eventually("both executors to connect", patience, || async {
        let doomed = alive_and_connected(&client, "doomed").await?;
        let steady = alive_and_connected(&client, "steady").await?;
        (doomed == (true, true) && steady == (true, true)).then_some(())
    })
    .await?;
    let job = client
        .submit_job(&job_spec("death-detection"), "death-detection")
        .await?;
    let before = eventually("the job to be placed on both executors", patience, || async {
        placement(&client, &job.job_id).await.filter(|placed| {
            ["doomed", "steady"]
                .iter()
                .all(|executor| placed.values().any(|(on, _)| on == executor))
        })
    })
    .await?;

    tracing::info!("--- SIGSTOP steady for 2 s: its session goes silent but does not break");
    cluster.cluster.signal_executor("steady", true)?;
    let paused_at = Instant::now();
    while paused_at.elapsed() < Duration::from_secs(2) {
        let steady = alive_and_connected(&client, "steady").await;
        assert_ne!(
            steady.map(|(alive, _)| alive),
            Some(false),
            "a paused executor must keep its lease"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.cluster.signal_executor("steady", false)?;
    eventually("steady to be heard from again", patience, || async {
        (alive_and_connected(&client, "steady").await? == (true, true)).then_some(())
    })
    .await?;
    let after_pause = placement(&client, &job.job_id).await.unwrap_or_default();
    assert!(
        after_pause.values().all(|(on, _)| on == "doomed" || on == "steady"),
        "nothing was declared dead, so nothing moved: {after_pause:?}"
    );

    tracing::info!("--- kill -9 doomed: declared dead long before its one-minute lease");
    let killed_at = Instant::now();
    cluster.cluster.kill_executor("doomed")?;
    eventually("doomed to be declared dead", patience, || async {
        (alive_and_connected(&client, "doomed").await?.0 == false).then_some(())
    })
    .await?;
    let detected_after = killed_at.elapsed();
    assert!(
        detected_after < Duration::from_millis(LEASE_MS),
        "declared dead after {detected_after:?}"
    );
    let moved = eventually("doomed's subtasks to move to steady", patience, || async {
        placement(&client, &job.job_id)
            .await
            .filter(|placed| placed.values().all(|(on, _)| on == "steady"))
    })
    .await?;
    for (subtask, (_, epoch)) in &moved {
        assert!(*epoch > before[subtask].1, "{subtask} restarted without a new epoch");
    }
    let leader = cluster.leader().await?;
    let log_path = cluster
        .cluster
        .node(leader)
        .map(|node| node.log_path())
        .ok_or_else(|| anyhow::anyhow!("no node {leader}"))?;
    let log = std::fs::read_to_string(&log_path)?;
    assert!(
        log.contains("its session broke and its address refused a connection"),
        "the leader's log names the broken session and the refused probe as the cause: {}",
        log_path.display()
    );
    Ok(())
}
