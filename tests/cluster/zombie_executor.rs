//! A paused executor (SIGSTOP for longer than its lease) is declared dead and its subtasks move
//! with new epochs; when it wakes up (SIGCONT) its old session is gone, the leader refuses it until
//! it registers again, and it drops every subtask it held: the old epochs are fenced off.

use std::time::Duration;

use crate::common::{eventually, fast_executors, job_spec, placement, test_settings, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_executor_is_fenced_and_rejoins_empty() -> anyhow::Result<()> {
    let executor_settings = fast_executors();
    let mut cluster = TestCluster::start_with(test_settings(), executor_settings).await?;
    let client = cluster.client()?;
    let patience = Duration::from_secs(30);

    tracing::info!("--- zombie and steady (2 slots each) share the two slices of an 8-subtask job");
    cluster.cluster.start_executor("zombie", 2)?;
    cluster.cluster.start_executor("steady", 2)?;
    eventually("both executors to connect", patience, || async {
        let listed = client.list_executors().await.ok()?;
        (listed.executors.len() == 2 && listed.executors.iter().all(|e| e.connected)).then_some(())
    })
    .await?;
    let job = client.submit_job(&job_spec("zombie-test"), "zombie-test").await?;
    let before = eventually("the job to be placed", patience, || async {
        placement(&client, &job.job_id)
            .await
            .filter(|p| p.values().all(|(executor, _)| !executor.is_empty()))
    })
    .await?;
    let on_zombie: Vec<String> = before
        .iter()
        .filter(|(_, (executor, _))| executor == "zombie")
        .map(|(subtask, _)| subtask.clone())
        .collect();
    assert!(!on_zombie.is_empty(), "the zombie must hold something: {before:?}");

    // The placement is committed before the deployments reach the zombie; pausing it in between
    // would leave it nothing to release.
    let log_path = cluster
        .cluster
        .executor("zombie")
        .map(|e| e.log_path())
        .ok_or_else(|| anyhow::anyhow!("no zombie"))?;
    eventually("the zombie to take its assignments", patience, || async {
        let log = std::fs::read_to_string(&log_path).ok()?;
        (log.matches("subtask assigned").count() >= on_zombie.len()).then_some(())
    })
    .await?;

    tracing::info!("--- SIGSTOP the zombie for longer than its lease");
    cluster.cluster.signal_executor("zombie", true)?;
    let moved = eventually("the zombie's subtasks to move to steady", patience, || async {
        placement(&client, &job.job_id)
            .await
            .filter(|p| p.values().all(|(executor, _)| executor == "steady"))
    })
    .await?;
    for subtask in &on_zombie {
        assert!(
            moved[subtask].1 > before[subtask].1,
            "{subtask} moved without a new epoch"
        );
    }
    let listed = client.list_executors().await?;
    assert!(
        listed.executors.iter().any(|e| e.executor_id == "zombie" && !e.alive),
        "the zombie must be declared dead"
    );

    tracing::info!("--- SIGCONT: the zombie is refused, registers again and drops its old subtasks");
    cluster.cluster.signal_executor("zombie", false)?;
    eventually("the zombie to rejoin as a live, empty executor", patience, || async {
        let listed = client.list_executors().await.ok()?;
        listed
            .executors
            .iter()
            .any(|e| e.executor_id == "zombie" && e.alive && e.connected && e.used_slots == 0)
            .then_some(())
    })
    .await?;
    let after = placement(&client, &job.job_id)
        .await
        .ok_or_else(|| anyhow::anyhow!("job vanished"))?;
    assert_eq!(after, moved, "the zombie's return must not move anything back");
    let log = eventually(
        "the zombie to log the release of its old subtasks",
        patience,
        || async {
            let log = std::fs::read_to_string(&log_path).ok()?;
            (log.matches("subtask stopped").count() >= on_zombie.len()).then_some(log)
        },
    )
    .await?;
    assert!(
        log.contains("registering again") || log.contains("register"),
        "the zombie must re-register"
    );
    Ok(())
}
