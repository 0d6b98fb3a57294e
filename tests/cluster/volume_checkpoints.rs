//! Checkpoints triggered by data volume: with `checkpoint.max_records`, a failure replays at most
//! that many records (plus one source batch), however fast the input comes and however long the
//! interval, because the sources ask for a checkpoint at half their share and wait at their
//! whole share until one completes.

use std::collections::HashMap;
use std::time::Duration;

use raftstream::local_cluster::{without_ansi_colors, ClusterWiring};
use raftstream_coordinator::failpoints;
use raftstream_executor::runtime::task::SOURCE_BATCH_LINES;

use crate::common::{eventually, fast_executors, job, start_executors, test_settings, TestCluster};

const PATIENCE: Duration = Duration::from_secs(60);
const MAX_RECORDS: u64 = 10_000;
/// The print sink's prefix, to find its lines among the executors' logs.
const PROBE: &str = "probe\t";

/// Every update the print sink printed, by line, over every executor's log: a record processed
/// again after a restore prints its (word, count) line a second time.
fn printed_updates(cluster: &TestCluster) -> anyhow::Result<HashMap<String, u64>> {
    let mut printed = HashMap::new();
    for executor_id in cluster.cluster.executor_ids() {
        let Some(executor) = cluster.cluster.executor(&executor_id) else {
            continue;
        };
        let log = without_ansi_colors(&std::fs::read_to_string(executor.log_path())?);
        for line in log.lines().filter(|line| line.starts_with(PROBE)) {
            *printed.entry(line.to_owned()).or_default() += 1;
        }
    }
    Ok(printed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_records_bounds_what_a_kill_replays_at_a_source_far_faster_than_the_interval() -> anyhow::Result<()> {
    // Each completion is held 400 ms in the leader, as a slow checkpoint store would: meanwhile
    // the source could emit far more than the bound if it did not wait.
    let wiring = ClusterWiring {
        coordinator_environment: vec![(
            failpoints::VARIABLE.to_owned(),
            format!("{}=400", failpoints::HOLD_CHECKPOINT_COMPLETION_MS),
        )],
        ..ClusterWiring::default()
    };
    let mut cluster = TestCluster::start_wired(test_settings(), fast_executors(), wiring).await?;
    let client = start_executors(&mut cluster, &[("exec-a", 1), ("exec-b", 1)]).await?;
    // A generator without a rate and a 60 s interval: only the record bound checkpoints.
    let spec = serde_json::json!({
        "name": "bounded-replay",
        "parallelism": 1,
        "checkpoint": {"interval_ms": 60000, "timeout_ms": 10000, "max_records": MAX_RECORDS},
        "restart": {"strategy": "fixed_delay", "max_attempts": 5, "delay_ms": 100},
        "operators": [
            {"id": "lines", "kind": "generator", "params": {"seed": 5, "vocabulary_size": 500, "words_per_record": 1}},
            {"id": "by_word", "kind": "key_by", "inputs": ["lines"]},
            {"id": "counts", "kind": "count", "inputs": ["by_word"]},
            {"id": "out", "kind": "print", "inputs": ["counts"], "params": {"prefix": PROBE}}
        ]
    });
    let submitted = client.submit_job(&spec.to_string(), "bounded-replay").await?;
    let job_id = submitted.job_id.as_str();
    let before_kill = eventually("checkpoints triggered by the record bound", PATIENCE, || async {
        let checkpoints = client.list_checkpoints(job_id).await.ok()?;
        (checkpoints
            .iter()
            .filter(|checkpoint| checkpoint.trigger == "records")
            .count()
            >= 3)
            .then_some(checkpoints)
    })
    .await?;
    assert!(
        before_kill.iter().all(|checkpoint| checkpoint.trigger == "records"),
        "the interval never passed: {:?}",
        before_kill
            .iter()
            .map(|checkpoint| &checkpoint.trigger)
            .collect::<Vec<_>>()
    );

    let running = job(&client, job_id)
        .await
        .ok_or_else(|| anyhow::anyhow!("{job_id} cannot be read"))?;
    let victim = running
        .subtasks
        .iter()
        .find(|subtask| subtask.operator_id == "lines")
        .map(|subtask| subtask.executor_id.clone())
        .ok_or_else(|| anyhow::anyhow!("the source is not placed"))?;
    tracing::info!(victim, "--- kill -9 the executor running the source");
    cluster.cluster.kill_executor(&victim)?;
    let restored = eventually("the job to run again from a checkpoint", PATIENCE, || async {
        job(&client, job_id).await.filter(|job| {
            job.status == "Running"
                && job.restart_count >= 1
                && job
                    .subtasks
                    .iter()
                    .all(|subtask| !subtask.executor_id.is_empty() && subtask.executor_id != victim)
        })
    })
    .await?;
    let restored_from = restored.restored_checkpoint_id.unwrap_or(0);
    // Two more checkpoints: whatever is replayed has been printed by then.
    eventually("two checkpoints after the restore", PATIENCE, || async {
        job(&client, job_id)
            .await
            .filter(|job| job.last_checkpoint_id.unwrap_or(0) >= restored_from + 2)
    })
    .await?;

    let printed = printed_updates(&cluster)?;
    let replayed: u64 = printed.values().map(|times| times - 1).sum();
    let total: u64 = printed.values().sum();
    tracing::info!(
        replayed,
        total,
        restored_from,
        "records printed again after the restore"
    );
    eprintln!("bounded replay: {replayed} of {total} printed updates were replays (max_records {MAX_RECORDS})");
    assert!(
        total > 3 * MAX_RECORDS,
        "the job ran through several bounds before the kill ({total})"
    );
    assert!(
        replayed <= MAX_RECORDS + SOURCE_BATCH_LINES as u64,
        "{replayed} records replayed, above max_records {MAX_RECORDS} plus one batch"
    );
    Ok(())
}
