//! A restore racing the completion of a newer checkpoint: the leader holds a checkpoint between its
//! last acknowledgement and its commit (a failpoint, as a slow disk would), an executor of the job
//! is killed meanwhile, and the job restarts from the checkpoint before, whose sinks delete the
//! held checkpoint's pending files. The held checkpoint must then never complete; if it did, it
//! would be the latest one while naming sink files that no longer exist (a chaos run found a job
//! restoring forever from such a checkpoint).

use std::path::Path;
use std::time::Duration;

use raftstream::local_cluster::ClusterWiring;
use raftstream::wordcount::WordCountJob;
use raftstream_coordinator::failpoints;
use raftstream_proto::v1 as pb;

use crate::common::{
    coordinator_log_lines, ensure_exact_output, eventually, fast_executors, finished, job, start_executors,
    test_settings, word_count, TestCluster,
};

const PATIENCE: Duration = Duration::from_secs(60);
/// Longer than an executor's lease (1 s) plus the restart delay (200 ms) and the redeployment.
const HOLD_MS: u64 = 3_000;
/// Far longer than declaring a killed executor dead from its broken session (about 300 ms).
const HOLD_START_MS: u64 = 2_500;

/// The sink's checkpointed state, as the file sink writes it (inline in the Raft metadata).
#[derive(serde::Deserialize)]
struct SinkState {
    epoch: u64,
    pending: Vec<u64>,
}

/// Every pre-committed file a completed checkpoint of the job names must still be pending or
/// published: that is what a restore of it will publish. The problems found, if any.
fn missing_sink_files(checkpoints: &[pb::Checkpoint], output: &Path) -> Vec<String> {
    let mut missing = Vec::new();
    for checkpoint in checkpoints {
        for handle in checkpoint
            .task_states
            .iter()
            .filter(|handle| handle.operator_id == "out")
        {
            let Ok(state) = serde_json::from_slice::<SinkState>(&handle.inline_state) else {
                continue;
            };
            for id in state.pending {
                let subtask = handle.subtask_index;
                let pending = output
                    .join(".pending")
                    .join(format!("part-{subtask}-{id:012}-e{}", state.epoch));
                // Pending first: a publish renames it, so the published file exists by the time
                // it is looked for when the pending one was just renamed.
                let published = output.join(format!("part-{subtask}-{id:012}.txt"));
                if !pending.exists() && !published.exists() {
                    missing.push(format!(
                        "checkpoint {} names {} (neither pending nor published)",
                        checkpoint.checkpoint_id,
                        pending.display()
                    ));
                }
            }
        }
    }
    missing
}

fn checkpoint_id_of(line: &str) -> Option<u64> {
    let (_, rest) = line.split_once("checkpoint_id=")?;
    rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_held_past_a_restart_never_completes_and_output_stays_exact() -> anyhow::Result<()> {
    let wiring = ClusterWiring {
        coordinator_environment: vec![(
            failpoints::VARIABLE.to_owned(),
            format!("{}={HOLD_MS}", failpoints::HOLD_CHECKPOINT_COMPLETION_MS),
        )],
        ..ClusterWiring::default()
    };
    let mut cluster = TestCluster::start_wired(test_settings(), fast_executors(), wiring).await?;
    let client = start_executors(&mut cluster, &[("exec-a", 2), ("exec-b", 2)]).await?;
    let spec = WordCountJob {
        seed: 23,
        records: 36_000,
        rate_per_second: Some(3_000),
        vocabulary_size: 80,
        ..word_count(&cluster)
    };
    let submitted = client.submit_job(&spec.spec("held-completion"), "held-1").await?;
    let job_id = submitted.job_id;
    let running = eventually("a first completed checkpoint", PATIENCE, || async {
        job(&client, &job_id)
            .await
            .filter(|job| job.status == "Running" && job.last_checkpoint_id.is_some())
    })
    .await?;
    let completed_before = running.last_checkpoint_id.unwrap_or(0);

    tracing::info!("--- wait until the leader holds the next checkpoint, every acknowledgement in");
    let held = eventually("the leader to hold a checkpoint's completion", PATIENCE, || async {
        coordinator_log_lines(&cluster, &["holding the checkpoint's completion"])
            .iter()
            .filter_map(|line| checkpoint_id_of(line))
            .find(|id| *id > completed_before)
    })
    .await?;
    let victim = running
        .subtasks
        .iter()
        .find(|subtask| subtask.operator_id == "out" && !subtask.executor_id.is_empty())
        .map(|subtask| subtask.executor_id.clone())
        .ok_or_else(|| anyhow::anyhow!("the sink is not placed"))?;
    tracing::info!(held, %victim, "--- kill -9 an executor of the job while checkpoint {held} is held");
    cluster.cluster.kill_executor(&victim)?;

    // The restart releases the placement that acknowledged `held`; the redeployed sinks restore
    // the checkpoint before it and delete its pending files. Its completion must be refused.
    let refused = eventually("the held checkpoint's completion to be decided", PATIENCE, || async {
        let lines = coordinator_log_lines(&cluster, &["checkpoint not committed", "no longer runs"]);
        if let Some(line) = lines.into_iter().find(|line| checkpoint_id_of(line) == Some(held)) {
            return Some(Ok(line));
        }
        let checkpoints = client.list_checkpoints(&job_id).await.ok()?;
        checkpoints.iter().any(|checkpoint| checkpoint.checkpoint_id == held).then(|| {
            Err(anyhow::anyhow!(
                "checkpoint {held} completed after a restart released the placement that acknowledged it; sink files it names: {:?}",
                missing_sink_files(&checkpoints, &spec.output_dir)
            ))
        })
    })
    .await??;
    tracing::info!(%refused, "--- refused");
    let missing = missing_sink_files(&client.list_checkpoints(&job_id).await?, &spec.output_dir);
    anyhow::ensure!(missing.is_empty(), "{}", missing.join("; "));

    // Through the end of the job, every completed checkpoint's sink files stay restorable.
    let done = eventually("the job to end", Duration::from_secs(120), || async {
        let job = job(&client, &job_id).await?;
        if matches!(job.status.as_str(), "Finished" | "Failed" | "Cancelled") {
            return Some(Ok(job));
        }
        let checkpoints = client.list_checkpoints(&job_id).await.ok()?;
        if checkpoints.iter().any(|checkpoint| checkpoint.checkpoint_id == held) {
            return Some(Err(anyhow::anyhow!(
                "the held checkpoint {held} completed after its placement was released"
            )));
        }
        let missing = missing_sink_files(&checkpoints, &spec.output_dir);
        (!missing.is_empty()).then(|| Err(anyhow::anyhow!("{}", missing.join("; "))))
    })
    .await??;
    anyhow::ensure!(
        done.status == "Finished",
        "job ended {}: {}",
        done.status,
        done.status_reason
    );
    anyhow::ensure!(done.restart_count >= 1, "the job must have restarted: {done:?}");
    ensure_exact_output(&spec.output_dir, &spec.expected_counts())
}

/// The leader's start of a job races the death of an executor it deployed to: the leader holds the
/// start between reading the placement and proposing it (a failpoint, as a slow scheduler round
/// would), and an executor of the job is killed meanwhile. The start must be refused, so the job
/// is never "running" with subtasks placed nowhere (a chaos run found one, whose cancel was then
/// refused as an illegal transition); the job is placed again and runs exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_deployed_before_its_executor_died_is_refused_and_the_job_runs_exactly_once() -> anyhow::Result<()> {
    let wiring = ClusterWiring {
        coordinator_environment: vec![(
            failpoints::VARIABLE.to_owned(),
            format!("{}={HOLD_START_MS}", failpoints::HOLD_JOB_START_MS),
        )],
        ..ClusterWiring::default()
    };
    let mut cluster = TestCluster::start_wired(test_settings(), fast_executors(), wiring).await?;
    let client = start_executors(&mut cluster, &[("exec-a", 2), ("exec-b", 2)]).await?;
    let spec = WordCountJob {
        seed: 29,
        records: 12_000,
        rate_per_second: Some(4_000),
        ..word_count(&cluster)
    };
    let job_id = client
        .submit_job(&spec.spec("held-start"), "held-start-1")
        .await?
        .job_id;
    let job_field = format!("job_id={job_id}");

    eventually("the leader to hold the job's first start", PATIENCE, || async {
        (!coordinator_log_lines(&cluster, &["holding the job's start", &job_field]).is_empty()).then_some(())
    })
    .await?;
    let placed = job(&client, &job_id)
        .await
        .ok_or_else(|| anyhow::anyhow!("job {job_id} not readable"))?;
    anyhow::ensure!(
        placed.status != "Running",
        "the start is held, yet the job runs: {placed:?}"
    );
    let victim = placed
        .subtasks
        .iter()
        .map(|subtask| subtask.executor_id.clone())
        .find(|executor_id| !executor_id.is_empty())
        .ok_or_else(|| anyhow::anyhow!("nothing of the job is placed while its start is held"))?;
    tracing::info!(%victim, "--- kill -9 an executor the held start deployed to");
    cluster.cluster.kill_executor(&victim)?;

    // Until the job runs again, every view of it that says "Running" has each subtask placed, and
    // none on the dead executor.
    let running = eventually("the job running on the survivor", PATIENCE, || async {
        let job = job(&client, &job_id).await?;
        if job.status != "Running" {
            return None;
        }
        let misplaced: Vec<String> = job
            .subtasks
            .iter()
            .filter(|subtask| subtask.executor_id.is_empty() || subtask.executor_id == victim)
            .map(|subtask| {
                format!(
                    "{}[{}] on {:?}",
                    subtask.operator_id, subtask.subtask_index, subtask.executor_id
                )
            })
            .collect();
        Some(if misplaced.is_empty() {
            Ok(job)
        } else {
            Err(anyhow::anyhow!("job {job_id} is Running with {}", misplaced.join(", ")))
        })
    })
    .await??;
    let refused = coordinator_log_lines(&cluster, &["job start refused", &job_field]);
    anyhow::ensure!(
        !refused.is_empty(),
        "the held start was not refused; the job's history: {:?}",
        running.history
    );
    tracing::info!(refused = %refused[0], "--- the held start was refused");

    finished(&client, &job_id).await?;
    ensure_exact_output(&spec.output_dir, &spec.expected_counts())
}
