//! Savepoints through the CLI on a real cluster: one taken while a word count runs, the job
//! stopped with another, refused requests, the job resubmitted from the stop's savepoint at
//! another parallelism (its output exact across both jobs: no gap, no duplicate), and a deleted
//! savepoint's files gone from the checkpoint store.

use std::path::Path;
use std::time::Duration;

use raftstream::wordcount::WordCountJob;

use crate::common::{
    ensure_exact_output, ensure_exact_prefix, eventually, fast_executors, job, run_cli, start_executors, stderr_of,
    stdout_of, test_settings, word_count, TestCluster,
};

const PATIENCE: Duration = Duration::from_secs(60);

/// The savepoint id in the CLI's `savepoint job-1:7 taken (...)` or `... with savepoint job-1:7`.
pub(crate) fn savepoint_id_in(text: &str, job_id: &str) -> Option<u64> {
    let (_, rest) = text.split_once(&format!("savepoint {job_id}:"))?;
    rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

fn files_under(directory: &Path) -> usize {
    std::fs::read_dir(directory).map_or(0, |entries| entries.flatten().count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_stopped_with_a_savepoint_resumes_from_it_at_another_parallelism_exactly_once() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start_with(test_settings(), fast_executors()).await?;
    let client = start_executors(&mut cluster, &[("exec-a", 2), ("exec-b", 2)]).await?;
    let coordinators = cluster.cluster.addresses().join(",");
    let cli = |arguments: &[&str]| {
        let mut all = arguments.to_vec();
        all.extend(["--coordinators", coordinators.as_str()]);
        run_cli(&all)
    };
    // 500 words: the counts' state is large enough to be stored as files, not inline.
    let spec = WordCountJob {
        records: 60_000,
        vocabulary_size: 500,
        ..word_count(&cluster)
    };
    let spec_path = cluster.path().join("wordcount.json");
    std::fs::write(&spec_path, spec.spec("wc-savepoint"))?;
    let spec_file = spec_path.to_string_lossy().into_owned();
    let submitted = client.submit_job(&spec.spec("wc-savepoint"), "wc-sp-1").await?;
    let job_id = submitted.job_id.clone();
    eventually("two completed checkpoints", PATIENCE, || async {
        job(&client, &job_id)
            .await
            .filter(|job| job.status == "Running" && job.last_checkpoint_id.unwrap_or(0) >= 2)
    })
    .await?;

    tracing::info!("--- a savepoint while it runs");
    let taken = cli(&["job", "savepoint", &job_id])?;
    assert!(taken.status.success(), "{}", stderr_of(&taken));
    let first = savepoint_id_in(&stdout_of(&taken), &job_id)
        .ok_or_else(|| anyhow::anyhow!("no savepoint id in {:?}", stdout_of(&taken)))?;
    let store = cluster.cluster.checkpoint_dir();
    let first_files = store.join(format!("savepoints/{job_id}/sp-{first}"));
    assert!(
        files_under(&first_files) > 0,
        "{} holds the savepoint's state",
        first_files.display()
    );

    tracing::info!("--- requests that cannot be done");
    let no_flag = cli(&["job", "stop", &job_id])?;
    assert!(!no_flag.status.success());
    assert!(
        stderr_of(&no_flag).contains("pass --savepoint"),
        "{}",
        stderr_of(&no_flag)
    );
    let unknown = cli(&["job", "savepoint", "job-99"])?;
    assert!(!unknown.status.success());
    assert!(
        stderr_of(&unknown).contains("job-99 not found"),
        "{}",
        stderr_of(&unknown)
    );

    tracing::info!("--- stop with a savepoint");
    let stopped = cli(&["job", "stop", &job_id, "--savepoint"])?;
    assert!(stopped.status.success(), "{}", stderr_of(&stopped));
    let stop_text = stdout_of(&stopped);
    assert!(stop_text.contains("Stopped"), "{stop_text}");
    let last =
        savepoint_id_in(&stop_text, &job_id).ok_or_else(|| anyhow::anyhow!("no savepoint id in {stop_text:?}"))?;
    assert!(last > first);
    let at_stop = ensure_exact_prefix(&spec.output_dir)?;
    let all_updates: u64 = spec.expected_counts().values().sum();
    assert!(
        at_stop > 0 && at_stop < all_updates,
        "stopped part way: {at_stop} of {all_updates} updates"
    );
    let listed = cli(&["job", "checkpoints", &job_id, "--output", "json"])?;
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout)?;
    let savepoints: Vec<u64> = listed
        .as_array()
        .into_iter()
        .flatten()
        .filter(|checkpoint| checkpoint["savepoint"] == true)
        .filter_map(|checkpoint| checkpoint["checkpoint_id"].as_u64())
        .collect();
    assert_eq!(savepoints, vec![first, last], "{listed}");
    // The stopped job's own checkpoints are deleted; its savepoints stay.
    eventually("the stopped job's checkpoints deleted", PATIENCE, || async {
        (files_under(&store.join(&job_id)) == 0).then_some(())
    })
    .await?;
    assert!(files_under(&first_files) > 0);

    tracing::info!("--- resubmits that cannot start");
    let missing = cli(&[
        "job",
        "submit",
        &spec_file,
        "--from-savepoint",
        &format!("{job_id}:999"),
    ])?;
    assert!(!missing.status.success());
    assert!(stderr_of(&missing).contains("not found"), "{}", stderr_of(&missing));
    let renamed_path = cluster.path().join("renamed.json");
    std::fs::write(
        &renamed_path,
        spec.spec("wc-renamed")
            .replace(r#""id": "counts""#, r#""id": "tallies""#)
            .replace(r#"["counts"]"#, r#"["tallies"]"#),
    )?;
    let unmatched = cli(&[
        "job",
        "submit",
        &renamed_path.to_string_lossy(),
        "--from-savepoint",
        &format!("{job_id}:{last}"),
    ])?;
    assert!(!unmatched.status.success());
    assert!(
        stderr_of(&unmatched).contains("operator(s) counts")
            && stderr_of(&unmatched).contains("--allow-unmatched-state"),
        "{}",
        stderr_of(&unmatched)
    );

    tracing::info!("--- resume from the stop's savepoint at parallelism 3");
    let resumed_path = cluster.path().join("resumed.json");
    let resumed_spec = WordCountJob {
        parallelism: 3,
        ..spec.clone()
    };
    std::fs::write(&resumed_path, resumed_spec.spec("wc-resumed"))?;
    let resumed = cli(&[
        "job",
        "submit",
        &resumed_path.to_string_lossy(),
        "--from-savepoint",
        &format!("{job_id}:{last}"),
        "--output",
        "json",
    ])?;
    assert!(resumed.status.success(), "{}", stderr_of(&resumed));
    let resumed: serde_json::Value = serde_json::from_slice(&resumed.stdout)?;
    let resumed_id = resumed["job_id"].as_str().unwrap_or_default().to_owned();
    let done = eventually("the resumed job to end", Duration::from_secs(120), || async {
        job(&client, &resumed_id)
            .await
            .filter(|job| matches!(job.status.as_str(), "Finished" | "Failed" | "Cancelled"))
    })
    .await?;
    assert_eq!(done.status, "Finished", "{}", done.status_reason);
    assert_eq!(done.restart_count, 0, "{}", done.status_reason);
    assert_eq!(done.from_savepoint, format!("{job_id}:{last}"));
    assert!(
        done.subtasks
            .iter()
            .filter(|subtask| subtask.operator_id == "counts")
            .count()
            == 3
    );
    // Across the two jobs: every update once, none missing.
    ensure_exact_output(&spec.output_dir, &spec.expected_counts())?;

    tracing::info!("--- delete both savepoints; their files go");
    for savepoint in [first, last] {
        let deleted = cli(&["job", "savepoint", "delete", &job_id, &savepoint.to_string()])?;
        assert!(deleted.status.success(), "{}", stderr_of(&deleted));
        let files = store.join(format!("savepoints/{job_id}/sp-{savepoint}"));
        eventually("the savepoint's files deleted", PATIENCE, || async {
            (files_under(&files) == 0).then_some(())
        })
        .await?;
    }
    let again = cli(&["job", "savepoint", "delete", &job_id, &first.to_string()])?;
    assert!(!again.status.success());
    assert!(stderr_of(&again).contains("not found"), "{}", stderr_of(&again));
    let listed = client.list_checkpoints(&job_id).await?;
    assert!(listed.iter().all(|checkpoint| !checkpoint.savepoint));
    Ok(())
}
