//! Slot sharing on real processes: a slot runs one parallel slice of a job (subtask `i` of every
//! operator), so a parallelism-4 word count of five operators needs four slots, not seventeen.

use std::time::Duration;

use raftstream::wordcount::WordCountJob;

use crate::common::{
    ensure_exact_output, eventually, fast_executors, finished, job, start_executors, test_settings, wait_for_executors,
    word_count, TestCluster,
};

const PATIENCE: Duration = Duration::from_secs(60);

/// The executors job `job_id`'s subtasks run on, each once, when every subtask is placed.
async fn placed_on(client: &raftstream_api::client::ClusterClient, job_id: &str) -> Option<Vec<String>> {
    let job = job(client, job_id).await?;
    if job.status != "Running" || job.subtasks.iter().any(|subtask| subtask.executor_id.is_empty()) {
        return None;
    }
    let mut executors: Vec<String> = job.subtasks.iter().map(|subtask| subtask.executor_id.clone()).collect();
    executors.sort();
    executors.dedup();
    Some(executors)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parallelism_four_word_count_runs_in_four_slots_moves_whole_slices_and_waits_for_missing_ones(
) -> anyhow::Result<()> {
    let mut cluster = TestCluster::start_with(test_settings(), fast_executors()).await?;
    let client = start_executors(&mut cluster, &[("exec-a", 2), ("exec-b", 2)]).await?;
    let spec = WordCountJob {
        parallelism: 4,
        records: 72_000,
        ..word_count(&cluster)
    };
    let submitted = client.submit_job(&spec.spec("wc-slots"), "wc-slots").await?;
    let job_id = submitted.job_id;
    let on = eventually("all 17 subtasks to run on the two executors", PATIENCE, || async {
        placed_on(&client, &job_id).await
    })
    .await?;
    assert_eq!(on, ["exec-a", "exec-b"]);
    let executors = client.list_executors().await?.executors;
    let used: Vec<(String, u32, u32)> = executors
        .iter()
        .map(|executor| (executor.executor_id.clone(), executor.used_slots, executor.slots))
        .collect();
    assert_eq!(
        used,
        [("exec-a".to_owned(), 2, 2), ("exec-b".to_owned(), 2, 2)],
        "two slices on each"
    );

    // A spare with two free slots: exec-a's two slices move to it whole, exactly once.
    cluster.cluster.start_executor("exec-c", 2)?;
    wait_for_executors(&mut cluster, 3).await?;
    cluster.cluster.kill_executor("exec-a")?;
    let on = eventually("the job to run again without exec-a", PATIENCE, || async {
        let restarted = job(&client, &job_id).await?.restart_count >= 1;
        placed_on(&client, &job_id).await.filter(|_| restarted)
    })
    .await?;
    assert_eq!(on, ["exec-b", "exec-c"], "the slices on exec-b stayed");

    // No spare: exec-b's two slices cannot be placed, and the job says what it lacks.
    cluster.cluster.kill_executor("exec-b")?;
    let waiting = eventually("the job to wait for two slots", PATIENCE, || async {
        let waiting = job(&client, &job_id).await?;
        waiting
            .status_reason
            .contains("waiting for 2 free slots")
            .then_some(waiting)
    })
    .await?;
    assert_eq!(waiting.status, "Restarting", "{}", waiting.status_reason);
    cluster.cluster.start_executor("exec-d", 2)?;
    let done = finished(&client, &job_id).await?;
    assert!(done.restart_count >= 2, "{done:?}");
    ensure_exact_output(&spec.output_dir, &spec.expected_counts())
}
