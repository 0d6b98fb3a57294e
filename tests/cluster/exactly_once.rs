//! Word count over a known bounded input, checkpoints every 200 ms, while processes die under it:
//! the committed output must equal the expected counts exactly (no loss, no duplicate).

use std::time::Duration;

use raftstream::wordcount::{check_output, WordCountJob};
use raftstream_api::client::{running_entry, ClusterClient};
use raftstream_proto::v1 as pb;

use crate::common::{
    ensure_exact_output, ensure_exact_prefix, eventually, fast_executors, finished, job, run_cli, start_executors,
    stderr_of, stdout_of, subtask_epochs, test_settings, without_ansi_colors, word_count, TestCluster,
};
use crate::s3_peer::S3Peer;

const PATIENCE: Duration = Duration::from_secs(60);

/// Waits until the job runs with at least `checkpoints` completed checkpoints.
async fn running_with_checkpoints(client: &ClusterClient, job_id: &str, checkpoints: u64) -> anyhow::Result<pb::Job> {
    eventually("the job to run with completed checkpoints", PATIENCE, || async {
        job(client, job_id)
            .await
            .filter(|job| job.status == "Running" && job.last_checkpoint_id.unwrap_or(0) >= checkpoints)
    })
    .await
}

fn assert_exact(spec: &WordCountJob) -> anyhow::Result<()> {
    ensure_exact_output(&spec.output_dir, &spec.expected_counts())
}

fn executor_of(job: &pb::Job, operator_id: &str) -> Option<String> {
    job.subtasks
        .iter()
        .find(|subtask| subtask.operator_id == operator_id && !subtask.executor_id.is_empty())
        .map(|subtask| subtask.executor_id.clone())
}

async fn start(cluster_executors: &[(&str, u32)]) -> anyhow::Result<(TestCluster, ClusterClient)> {
    let mut cluster = TestCluster::start_with(test_settings(), fast_executors()).await?;
    let client = start_executors(&mut cluster, cluster_executors).await?;
    Ok((cluster, client))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executor_killed_mid_stream_recovers_with_exact_output() -> anyhow::Result<()> {
    let (mut cluster, client) = start(&[("exec-a", 2), ("exec-b", 2)]).await?;
    // Enough words that keyed state goes to files, which the restarted subtasks must clean up,
    // and enough records (10 s) that they do so while the job still runs.
    let spec = WordCountJob {
        vocabulary_size: 500,
        records: 40_000,
        ..word_count(&cluster)
    };
    let submitted = client.submit_job(&spec.spec("wc-executor-kill"), "wc-1").await?;
    let running = running_with_checkpoints(&client, &submitted.job_id, 2).await?;
    let victim = executor_of(&running, "counts").ok_or_else(|| anyhow::anyhow!("counts is not placed"))?;
    tracing::info!(%victim, checkpoint = ?running.last_checkpoint_id, "--- kill -9 the executor running counts[0]");
    let last_before_kill = running.last_checkpoint_id.unwrap_or(0);
    cluster.cluster.kill_executor(&victim)?;
    // What the killed subtasks wrote is not known to their successors: they find it by listing
    // and delete it once the job no longer retains its checkpoint. Seen while the job runs on.
    let checkpoint_dir = cluster.cluster.checkpoint_dir();
    eventually(
        "state of checkpoints no longer retained to be deleted while the job runs",
        PATIENCE,
        || async {
            let restarted = job(&client, &submitted.job_id).await?;
            if restarted.status != "Running" || restarted.restart_count == 0 {
                return None;
            }
            let oldest_retained = client
                .list_checkpoints(&submitted.job_id)
                .await
                .ok()?
                .first()
                .map(|checkpoint| checkpoint.checkpoint_id)?;
            let stale = state_files(&checkpoint_dir)
                .iter()
                .filter(|file| checkpoint_of(file).is_some_and(|id| id < oldest_retained))
                .count();
            let still_running = job(&client, &submitted.job_id).await?.status == "Running";
            // Past the checkpoints the killed subtasks wrote for: their files must be gone.
            (stale == 0 && still_running && oldest_retained > last_before_kill + 1).then_some(())
        },
    )
    .await?;
    let done = finished(&client, &submitted.job_id).await?;
    assert!(done.restart_count >= 1, "the job must have restarted: {done:?}");
    assert_exact(&spec)?;
    assert_state_discarded(&checkpoint_dir, &submitted.job_id).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_word_count_in_one_task_recovers_its_counts_and_sink_after_a_kill() -> anyhow::Result<()> {
    let (mut cluster, client) = start(&[("exec-a", 2), ("exec-b", 2)]).await?;
    // At parallelism 1 the key_by's exchange is a forward one: source, split, key_by, count and
    // sink run as one task, whose source loop snapshots the counts and commits the sink.
    let spec = WordCountJob {
        parallelism: 1,
        vocabulary_size: 500,
        ..word_count(&cluster)
    };
    let submitted = client.submit_job(&spec.spec("wc-one-task"), "wc-6").await?;
    let running = running_with_checkpoints(&client, &submitted.job_id, 2).await?;
    let victim = executor_of(&running, "lines").ok_or_else(|| anyhow::anyhow!("the source is not placed"))?;
    assert!(
        running.subtasks.iter().all(|subtask| subtask.executor_id == victim),
        "a chain's subtasks share an executor: {:?}",
        running.subtasks
    );
    tracing::info!(%victim, checkpoint = ?running.last_checkpoint_id, "--- kill -9 the executor running the whole job");
    cluster.cluster.kill_executor(&victim)?;
    let done = finished(&client, &submitted.job_id).await?;
    assert!(done.restart_count >= 1, "the job must have restarted: {done:?}");
    assert!(
        done.subtasks.iter().all(|subtask| subtask.executor_id != victim),
        "everything moved off the killed executor: {:?}",
        done.subtasks
    );
    assert_exact(&spec)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_jobs_checkpoint_state_is_deleted() -> anyhow::Result<()> {
    let (cluster, client) = start(&[("exec-a", 2)]).await?;
    let spec = WordCountJob {
        vocabulary_size: 500,
        records: 10_000_000,
        ..word_count(&cluster)
    };
    let submitted = client.submit_job(&spec.spec("wc-cancel"), "wc-cancel").await?;
    running_with_checkpoints(&client, &submitted.job_id, 3).await?;
    let job_dir = cluster.cluster.checkpoint_dir().join(&submitted.job_id);
    eventually("keyed state in files", PATIENCE, || async {
        (!state_files(&job_dir).is_empty()).then_some(())
    })
    .await?;
    client.cancel_job(&submitted.job_id, "cancel-wc").await?;
    eventually("the job to be cancelled", PATIENCE, || async {
        job(&client, &submitted.job_id)
            .await
            .filter(|job| job.status == "Cancelled")
    })
    .await?;
    assert_state_discarded(&cluster.cluster.checkpoint_dir(), &submitted.job_id).await
}

/// An ended (finished or cancelled) job's checkpoint state is deleted, down to its directory.
async fn assert_state_discarded(checkpoint_dir: &std::path::Path, job_id: &str) -> anyhow::Result<()> {
    eventually("the ended job's checkpoint state to be deleted", PATIENCE, || async {
        (!checkpoint_dir.join(job_id).exists()).then_some(())
    })
    .await
}

/// The checkpoint id of a state file at `.../chk-<id>/<file>`.
fn checkpoint_of(file: &std::path::Path) -> Option<u64> {
    file.parent()?.file_name()?.to_str()?.strip_prefix("chk-")?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_mid_stream_restarts_nothing_and_output_is_exact() -> anyhow::Result<()> {
    let (mut cluster, client) = start(&[("exec-a", 2), ("exec-b", 2)]).await?;
    // Enough words that keyed state goes to files, to see them cleaned up behind the checkpoints.
    let spec = WordCountJob {
        vocabulary_size: 500,
        ..word_count(&cluster)
    };
    let submitted = client.submit_job(&spec.spec("wc-leader-kill"), "wc-2").await?;
    let before = running_with_checkpoints(&client, &submitted.job_id, 2).await?;
    let leader = cluster.leader().await?;
    tracing::info!(leader, checkpoint = ?before.last_checkpoint_id, "--- kill -9 the coordinator leader");
    cluster.cluster.kill(leader)?;
    let new_leader = cluster.leader().await?;
    assert_ne!(new_leader, leader);
    let last_before = before.last_checkpoint_id.unwrap_or(0);
    let later = eventually("checkpoints to continue under the new leader", PATIENCE, || async {
        job(&client, &submitted.job_id)
            .await
            .filter(|job| job.last_checkpoint_id.unwrap_or(0) > last_before || job.status == "Finished")
    })
    .await?;
    tracing::info!(checkpoint = ?later.last_checkpoint_id, "checkpoints continued");
    let done = finished(&client, &submitted.job_id).await?;
    assert_eq!(done.restart_count, 0, "a coordinator failover must restart nothing");
    assert_eq!(
        subtask_epochs(&done),
        subtask_epochs(&before),
        "no subtask may be re-deployed"
    );
    assert_exact(&spec)?;
    let checkpoints = client.list_checkpoints(&submitted.job_id).await?;
    let ids: Vec<u64> = checkpoints.iter().map(|checkpoint| checkpoint.checkpoint_id).collect();
    assert!(
        ids.windows(2).all(|pair| pair[0] < pair[1]),
        "ids must increase: {ids:?}"
    );
    assert!(ids.last().copied().unwrap_or(0) > last_before, "{ids:?}");
    assert_state_discarded(&cluster.cluster.checkpoint_dir(), &submitted.job_id).await
}

/// Every checkpoint state file under `directory`.
fn state_files(directory: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![directory.to_path_buf()];
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(&next).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|ext| ext == "state") {
                files.push(path);
            }
        }
    }
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_process_killed_and_restarted_resumes_from_the_last_checkpoint() -> anyhow::Result<()> {
    let (mut cluster, client) = start(&[("exec-a", 2), ("exec-b", 2)]).await?;
    let spec = word_count(&cluster);
    let submitted = client.submit_job(&spec.spec("wc-kill-all"), "wc-3").await?;
    let before = running_with_checkpoints(&client, &submitted.job_id, 3).await?;
    tracing::info!(checkpoint = ?before.last_checkpoint_id, "--- kill -9 every process");
    cluster.cluster.kill_executor("exec-a")?;
    cluster.cluster.kill_executor("exec-b")?;
    let nodes: Vec<u64> = cluster.cluster.nodes().map(|node| node.node_id).collect();
    for node_id in &nodes {
        cluster.cluster.kill(*node_id)?;
    }
    for node_id in &nodes {
        cluster.cluster.restart(*node_id)?;
    }
    cluster.cluster.restart_executor("exec-a")?;
    cluster.cluster.restart_executor("exec-b")?;
    let done = finished(&client, &submitted.job_id).await?;
    assert!(done.restart_count >= 1, "{done:?}");
    let first_after = client
        .list_checkpoints(&submitted.job_id)
        .await?
        .first()
        .map(|checkpoint| checkpoint.checkpoint_id);
    assert!(first_after.is_some(), "checkpoints are listed after the restart");
    assert_exact(&spec)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_sink_executor_is_fenced_and_publishes_nothing() -> anyhow::Result<()> {
    let (mut cluster, client) = start(&[("exec-a", 2), ("exec-b", 2)]).await?;
    let spec = word_count(&cluster);
    let submitted = client.submit_job(&spec.spec("wc-zombie"), "wc-4").await?;
    let before = running_with_checkpoints(&client, &submitted.job_id, 2).await?;
    let zombie = executor_of(&before, "out").ok_or_else(|| anyhow::anyhow!("the sink is not placed"))?;
    tracing::info!(%zombie, "--- SIGSTOP the executor running the sink for longer than its lease");
    cluster.cluster.signal_executor(&zombie, true)?;
    let moved = eventually("the job to run again without the zombie", PATIENCE, || async {
        job(&client, &submitted.job_id).await.filter(|job| {
            job.status == "Running"
                && job.restart_count >= 1
                && job
                    .subtasks
                    .iter()
                    .all(|s| !s.executor_id.is_empty() && s.executor_id != zombie)
        })
    })
    .await?;
    let old_epochs = subtask_epochs(&before);
    assert!(
        subtask_epochs(&moved)
            .iter()
            .all(|(subtask, epoch)| *epoch > old_epochs[subtask]),
        "every placement must be fenced by a new epoch"
    );
    tracing::info!("--- SIGCONT: the zombie wakes up with its old sink still running");
    cluster.cluster.signal_executor(&zombie, false)?;
    finished(&client, &submitted.job_id).await?;
    assert_exact(&spec)?;

    // The checkpoint in flight when the job restarted was aborted: it must never be listed.
    let aborted = aborted_checkpoints(&cluster)?;
    let listed: Vec<u64> = client
        .list_checkpoints(&submitted.job_id)
        .await?
        .iter()
        .map(|checkpoint| checkpoint.checkpoint_id)
        .collect();
    assert!(listed.windows(2).all(|pair| pair[0] < pair[1]), "{listed:?}");
    assert!(
        listed.iter().all(|id| !aborted.contains(id)),
        "aborted {aborted:?} but listed {listed:?}"
    );
    Ok(())
}

/// The checkpoint ids the coordinators' logs say were aborted.
fn aborted_checkpoints(cluster: &TestCluster) -> anyhow::Result<Vec<u64>> {
    let mut aborted = Vec::new();
    for node in cluster.cluster.nodes() {
        let log = without_ansi_colors(&std::fs::read_to_string(node.log_path()).unwrap_or_default());
        for line in log.lines().filter(|line| line.contains("checkpoint aborted")) {
            let id = line
                .split("checkpoint_id=")
                .nth(1)
                .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|digits| digits.parse::<u64>().ok());
            aborted.extend(id);
        }
    }
    Ok(aborted)
}

/// Flips a byte in every state file under `directory`; returns how many it damaged.
fn corrupt_state_files(directory: &std::path::Path) -> anyhow::Result<usize> {
    let mut damaged = 0;
    for path in state_files(directory) {
        let mut bytes = std::fs::read(&path)?;
        let middle = bytes.len() / 2;
        if let Some(byte) = bytes.get_mut(middle) {
            *byte ^= 0x5a;
            std::fs::write(&path, &bytes)?;
            damaged += 1;
        }
    }
    Ok(damaged)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_checkpoint_fails_the_job_with_a_clear_reason_and_no_wrong_output() -> anyhow::Result<()> {
    let (mut cluster, client) = start(&[("exec-a", 2), ("exec-b", 2)]).await?;
    // Enough distinct words that the keyed state goes to files, not inline into the Raft log.
    let spec = WordCountJob {
        vocabulary_size: 500,
        records: 200_000,
        ..word_count(&cluster)
    };
    let submitted = client.submit_job(&spec.spec("wc-corrupt"), "wc-5").await?;
    let before = running_with_checkpoints(&client, &submitted.job_id, 2).await?;
    let victim = executor_of(&before, "counts").ok_or_else(|| anyhow::anyhow!("counts is not placed"))?;
    tracing::info!(%victim, "--- pause the executor (no checkpoint completes), damage the stored state, kill it");
    cluster.cluster.signal_executor(&victim, true)?;
    let damaged = corrupt_state_files(&cluster.cluster.checkpoint_dir())?;
    assert!(damaged > 0, "the keyed state must be in files");
    cluster.cluster.kill_executor(&victim)?;
    let ended = eventually("the job to end", PATIENCE, || async {
        job(&client, &submitted.job_id)
            .await
            .filter(|job| matches!(job.status.as_str(), "Finished" | "Failed" | "Cancelled"))
    })
    .await?;
    tracing::info!(reason = %ended.status_reason, "job failed");
    assert_eq!(ended.status, "Failed", "{ended:?}");
    assert!(
        ended.status_reason.contains("corrupted") && ended.status_reason.contains("checkpoint"),
        "the reason must name the problem: {}",
        ended.status_reason
    );
    // What was published before is a correct prefix: nothing duplicated, nothing made up.
    let check = check_output(&spec.output_dir, &spec.expected_counts())?;
    let wrong: Vec<&String> = check
        .problems
        .iter()
        .filter(|problem| !problem.starts_with("lost updates"))
        .collect();
    assert!(wrong.is_empty(), "{wrong:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_in_s3_restore_a_killed_executors_subtasks_exactly() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start_with(test_settings(), fast_executors()).await?;
    let s3 = S3Peer::start(cluster.path(), "raftstream").await?;
    cluster
        .cluster
        .use_checkpoint_store("s3://raftstream/checkpoints", s3.environment());
    for id in ["exec-a", "exec-b"] {
        cluster.cluster.start_executor(id, 2)?;
    }
    let client = cluster.client()?;
    eventually("the executors to connect", PATIENCE, || async {
        let listed = client.list_executors().await.ok()?;
        (listed.executors.iter().filter(|e| e.connected).count() == 2).then_some(())
    })
    .await?;
    // Enough words that keyed state is too big to inline in the Raft metadata.
    let spec = WordCountJob {
        vocabulary_size: 500,
        ..word_count(&cluster)
    };
    let submitted = client.submit_job(&spec.spec("wc-s3"), "wc-s3").await?;
    let running = running_with_checkpoints(&client, &submitted.job_id, 2).await?;
    let state_prefix = format!("checkpoints/{}/", submitted.job_id);
    let stored = eventually("keyed state objects in the bucket", PATIENCE, || async {
        let keys = s3.keys("raftstream", &state_prefix).ok()?;
        keys.iter().any(|key| key.ends_with(".state")).then_some(keys)
    })
    .await?;
    tracing::info!(?stored, "state in S3");
    let victim = executor_of(&running, "counts").ok_or_else(|| anyhow::anyhow!("counts is not placed"))?;
    cluster.cluster.kill_executor(&victim)?;
    let done = finished(&client, &submitted.job_id).await?;
    assert!(done.restart_count >= 1, "the job must have restarted: {done:?}");
    assert_exact(&spec)?;
    assert!(
        state_files(&cluster.cluster.checkpoint_dir()).is_empty(),
        "no state may go to the local directory when the store is S3"
    );
    // Listed and deleted through S3's API once the job finished.
    eventually("the finished job's objects to be deleted", PATIENCE, || async {
        s3.keys("raftstream", &state_prefix)
            .ok()
            .filter(|keys| keys.is_empty())
            .map(|_| ())
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_checkpoint_store_stops_the_executor_with_the_reason() -> anyhow::Result<()> {
    let directory = tempfile::tempdir()?;
    let s3 = S3Peer::start(directory.path(), "raftstream").await?;
    let attempts = [
        ("s3://no-such-bucket/checkpoints", "NoSuchBucket"),
        ("gs://bucket/checkpoints", "unsupported scheme \"gs\""),
        ("s3:///checkpoints", "names no bucket"),
    ];
    for (url, expected) in attempts {
        let output = std::process::Command::new(crate::common::binary())
            .args(["executor", "--coordinators", "127.0.0.1:1", "--checkpoint-store", url])
            .arg("--data-dir")
            .arg(directory.path().join("executor"))
            .envs(s3.environment())
            .output()?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{url}: the executor must not start");
        assert!(stderr.contains(expected), "{url}: expected {expected:?} in: {stderr}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_word_count_rescaled_up_and_down_then_stopped_with_a_savepoint_keeps_its_output_exact(
) -> anyhow::Result<()> {
    let (cluster, client) = start(&[("exec-a", 2), ("exec-b", 2)]).await?;
    // An input without end: the job runs until it is stopped.
    let spec = WordCountJob {
        records: WordCountJob::UNBOUNDED,
        ..word_count(&cluster)
    };
    let submitted = client.submit_job(&spec.spec("wc-rescale"), "wc-rescale").await?;
    let mut running = running_with_checkpoints(&client, &submitted.job_id, 2).await?;

    tracing::info!("--- requests that cannot be done change nothing");
    for (operator, parallelism, code, expected) in [
        (None, 0, tonic::Code::InvalidArgument, "at least 1"),
        (Some("nope"), 2, tonic::Code::InvalidArgument, "no operator \"nope\""),
        (None, 129, tonic::Code::InvalidArgument, "max_parallelism of 128"),
        (None, 100, tonic::Code::ResourceExhausted, "more needed"),
    ] {
        let refused = client
            .rescale_job(&submitted.job_id, operator, parallelism, "")
            .await
            .err()
            .ok_or_else(|| anyhow::anyhow!("rescaling {operator:?} to {parallelism} was accepted"))?;
        assert_eq!(refused.code(), code, "{refused}");
        assert!(refused.to_string().contains(expected), "{refused}");
    }
    let unknown = client.rescale_job("job-99", None, 2, "").await.err();
    assert_eq!(unknown.map(|error| error.code()), Some(tonic::Code::NotFound));
    let unchanged = job(&client, &submitted.job_id).await;
    assert_eq!(unchanged.map(|job| job.status), Some("Running".to_owned()));

    for parallelism in [4u32, 1] {
        let last = running.last_checkpoint_id.unwrap_or(0);
        tracing::info!(parallelism, last, "--- rescale every operator");
        let rescaling = client
            .rescale_job(&submitted.job_id, None, parallelism, &format!("rescale-{parallelism}"))
            .await?;
        assert!(
            rescaling.status == "Restarting" || rescaling.status == "Running",
            "{rescaling:?}"
        );
        let before_rescale = running.restored_checkpoint_id;
        running = eventually("the job to run at the new parallelism", PATIENCE, || async {
            job(&client, &submitted.job_id).await.filter(|job| {
                let counts = job
                    .subtasks
                    .iter()
                    .filter(|subtask| subtask.operator_id == "counts" && !subtask.executor_id.is_empty())
                    .count();
                job.status == "Running" && counts == parallelism as usize && job.last_checkpoint_id.unwrap_or(0) > last
            })
        })
        .await?;
        assert_eq!(running.subtasks.len(), 5 * parallelism as usize);
        // Every subtask of the new placement told the leader it restored and runs.
        let placed = running.subtasks.clone();
        eventually("every subtask to report running", PATIENCE, || async {
            let reply = client.get_job_metrics(&submitted.job_id).await.ok()?;
            placed
                .iter()
                .all(|subtask| running_entry(&reply.running, subtask).is_some())
                .then_some(())
        })
        .await?;
        // It restarted from a checkpoint taken for the rescale (sources paused after its
        // barrier), not from one taken before the request.
        let restored = running.restored_checkpoint_id.unwrap_or(0);
        assert!(
            restored > last && Some(restored) != before_rescale,
            "restored checkpoint {restored}, the last before the request was {last}"
        );
        let paused_for_it = cluster.cluster.nodes().any(|node| {
            std::fs::read_to_string(node.log_path()).is_ok_and(|log| {
                without_ansi_colors(&log).lines().any(|line| {
                    line.contains("rescaling: the job restarts") && line.contains(&format!("checkpoint_id={restored}"))
                })
            })
        });
        assert!(
            paused_for_it,
            "checkpoint {restored} was not the one taken for the rescale"
        );
    }

    tracing::info!("--- stop with a savepoint");
    let (savepoint, _) = client.take_savepoint(&submitted.job_id, true, "stop-1").await?;
    assert!(savepoint.savepoint && savepoint.checkpoint_id > running.last_checkpoint_id.unwrap_or(0));
    let stopped = eventually("the job to stop", PATIENCE, || async {
        job(&client, &submitted.job_id)
            .await
            .filter(|job| job.status != "Running")
    })
    .await?;
    assert_eq!(stopped.status, "Stopped", "{}", stopped.status_reason);
    assert_eq!(
        stopped.restart_count, 0,
        "a rescale is not a failure: {}",
        stopped.status_reason
    );
    // Every sink published the savepoint before the job ended, and nothing after it exists.
    let updates = ensure_exact_prefix(&spec.output_dir)?;
    assert!(updates > 0);
    let pending = std::fs::read_dir(spec.output_dir.join(".pending"))?.count();
    assert_eq!(pending, 0, "nothing pending or in progress after the stop");
    Ok(())
}

/// Waits until the job runs again, restored from a checkpoint after `last_before`, with no
/// subtask on `executor_id`; returns it.
async fn moved_off(
    client: &ClusterClient,
    job_id: &str,
    executor_id: &str,
    last_before: u64,
) -> anyhow::Result<pb::Job> {
    eventually("the job to run again elsewhere", PATIENCE, || async {
        job(client, job_id).await.filter(|job| {
            job.status == "Running"
                && job.restored_checkpoint_id.unwrap_or(0) > last_before
                && job.subtasks.iter().all(|subtask| subtask.executor_id != executor_id)
                && job.subtasks.iter().all(|subtask| !subtask.executor_id.is_empty())
        })
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_executors_under_load_moves_their_subtasks_without_replaying_a_record() -> anyhow::Result<()> {
    let (mut cluster, client) = start(&[("exec-a", 2), ("exec-b", 2), ("exec-c", 2)]).await?;
    let coordinators = cluster.cluster.addresses().join(",");
    let spec = WordCountJob {
        records: 60_000,
        vocabulary_size: 500,
        ..word_count(&cluster)
    };
    let submitted = client.submit_job(&spec.spec("wc-drain"), "wc-drain").await?;
    let job_id = submitted.job_id.clone();
    let running = running_with_checkpoints(&client, &job_id, 2).await?;

    tracing::info!("--- executor drain, through the CLI, of the executor running counts");
    let drained = executor_of(&running, "counts").ok_or_else(|| anyhow::anyhow!("counts is not placed"))?;
    let last_before = running.last_checkpoint_id.unwrap_or(0);
    let output = run_cli(&["executor", "drain", &drained, "--coordinators", &coordinators])?;
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert!(stdout_of(&output).contains("draining"), "{}", stdout_of(&output));
    let moved = moved_off(&client, &job_id, &drained, last_before).await?;
    let status = cluster.cluster.wait_executor_exit(&drained, PATIENCE).await?;
    assert!(status.success(), "a drained executor exits cleanly: {status}");
    let listed = client.list_executors().await?;
    let record = listed.executors.iter().find(|executor| executor.executor_id == drained);
    assert!(record.is_some_and(|executor| executor.draining), "{listed:?}");
    let restored = moved.restored_checkpoint_id.unwrap_or(0);
    let replayed = cluster.cluster.records_replayed_from(restored);
    tracing::info!(
        restored,
        ?replayed,
        "records the sources produced after the barrier of the checkpoint moved from"
    );
    assert_eq!(
        replayed,
        vec![0; 2],
        "both sources stopped at the barrier of checkpoint {restored}, the one the job moved from"
    );

    tracing::info!("--- SIGTERM to the executor now running counts: it drains itself, then exits 0");
    let terminated = executor_of(&moved, "counts").ok_or_else(|| anyhow::anyhow!("counts is not placed"))?;
    let last_before = moved.last_checkpoint_id.unwrap_or(0);
    let status = cluster.cluster.terminate_executor(&terminated, PATIENCE).await?;
    assert!(status.success(), "the executor exited with {status}");
    let moved = moved_off(&client, &job_id, &terminated, last_before).await?;
    let restored = moved.restored_checkpoint_id.unwrap_or(0);
    assert_eq!(cluster.cluster.records_replayed_from(restored), vec![0; 2]);

    let done = finished(&client, &job_id).await?;
    assert_eq!(done.restart_count, 0, "a move is not a failure: {}", done.status_reason);
    assert_exact(&spec)
}

/// Waits until the job runs with `parallelism` subtasks of `counts`, all placed.
async fn running_at(client: &ClusterClient, job_id: &str, parallelism: usize) -> anyhow::Result<pb::Job> {
    eventually("the job to run at the new parallelism", PATIENCE, || async {
        job(client, job_id).await.filter(|job| {
            let counts = job
                .subtasks
                .iter()
                .filter(|subtask| subtask.operator_id == "counts")
                .count();
            job.status == "Running"
                && counts == parallelism
                && job.subtasks.iter().all(|subtask| !subtask.executor_id.is_empty())
        })
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rescales_survive_an_executor_killed_and_the_leader_killed_in_their_middle() -> anyhow::Result<()> {
    let (mut cluster, client) = start(&[("exec-a", 2), ("exec-b", 2), ("exec-c", 2)]).await?;
    // 25 s of input: both rescales and their recoveries happen while it runs.
    let spec = WordCountJob {
        records: 100_000,
        ..word_count(&cluster)
    };
    let submitted = client
        .submit_job(&spec.spec("wc-rescale-faults"), "wc-rescale-faults")
        .await?;
    let job_id = submitted.job_id.clone();
    let running = running_with_checkpoints(&client, &job_id, 2).await?;

    tracing::info!("--- rescale to 3, and kill -9 an executor of the job while its checkpoint is taken");
    let victim = executor_of(&running, "counts").ok_or_else(|| anyhow::anyhow!("counts is not placed"))?;
    client.rescale_job(&job_id, None, 3, "faulty-rescale-3").await?;
    cluster.cluster.kill_executor(&victim)?;
    let rescaled = running_at(&client, &job_id, 3).await?;
    assert!(
        rescaled.subtasks.iter().all(|subtask| subtask.executor_id != victim),
        "nothing runs on the dead executor"
    );

    tracing::info!("--- rescale to 1, and kill -9 the coordinator leader at once");
    let leader = cluster.leader().await?;
    client.rescale_job(&job_id, None, 1, "faulty-rescale-1").await?;
    cluster.cluster.kill(leader)?;
    let new_leader = cluster.leader().await?;
    assert_ne!(new_leader, leader);
    let client = cluster.client()?;
    running_at(&client, &job_id, 1).await?;

    let done = finished(&client, &job_id).await?;
    assert_eq!(done.subtasks.len(), 5, "it ended at parallelism 1");
    assert_exact(&spec)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_automatic_parallelism_grows_when_an_executor_joins_and_shrinks_when_one_dies() -> anyhow::Result<()> {
    let (mut cluster, client) = start(&[("first", 1)]).await?;
    let spec = WordCountJob {
        records: 80_000,
        ..word_count(&cluster)
    };
    // Every operator automatic, rescaled 300 ms after the slots settle.
    let automatic = spec.spec("wc-auto").replace(
        r#""parallelism": 2,"#,
        r#""parallelism": "auto", "autoscale": {"stabilization_ms": 300},"#,
    );
    let submitted = client.submit_job(&automatic, "wc-auto").await?;
    let job_id = submitted.job_id.clone();
    // 1 slot: one slice of the job, so parallelism 1.
    let started = running_with_checkpoints(&client, &job_id, 2).await?;
    assert_eq!(started.subtasks.len(), 5, "{:?}", started.subtasks);
    assert!(
        started
            .history
            .iter()
            .any(|event| event.what.contains("start at parallelism 1 (1 free slots)")),
        "{:?}",
        started.history
    );

    tracing::info!("--- a second executor joins: the job grows onto it through a checkpoint");
    let last_before = started.last_checkpoint_id.unwrap_or(0);
    cluster.cluster.start_executor("second", 2)?;
    let grown = running_at(&client, &job_id, 3).await?;
    assert!(grown.subtasks.iter().any(|subtask| subtask.executor_id == "second"));
    assert!(grown.restored_checkpoint_id.unwrap_or(0) > last_before);

    tracing::info!("--- kill -9 of the second executor: the job shrinks back and keeps running");
    cluster.cluster.kill_executor("second")?;
    let shrunk = running_at(&client, &job_id, 1).await?;
    assert!(shrunk.subtasks.iter().all(|subtask| subtask.executor_id == "first"));

    let done = finished(&client, &job_id).await?;
    let history: Vec<&str> = done.history.iter().map(|event| event.what.as_str()).collect();
    assert!(
        history
            .iter()
            .any(|what| what.contains("rescaled automatic operators to parallelism 3"))
            && history
                .iter()
                .any(|what| what.contains("rescaled automatic operators to parallelism 1")),
        "{history:?}"
    );
    assert_exact(&spec)
}
