//! The `raftstream` CLI against a real cluster: job commands, both output formats, cluster status,
//! and the plain error when no leader can be reached.

use crate::common::{run_cli, stderr_of, stdout_of, test_settings, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_submits_lists_inspects_and_cancels_jobs() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start(test_settings()).await?;
    let coordinators = cluster.cluster.addresses().join(",");
    let spec_path = cluster.path().join("wordcount.yaml");
    std::fs::write(&spec_path, include_str!("../../examples/wordcount.yaml"))?;
    let spec = spec_path.to_string_lossy().into_owned();

    tracing::info!("--- job submit (json), then the same request id again");
    let submitted = run_cli(&[
        "job",
        "submit",
        &spec,
        "--request-id",
        "cli-1",
        "--coordinators",
        &coordinators,
        "--output",
        "json",
    ])?;
    assert!(submitted.status.success(), "{}", stderr_of(&submitted));
    let job: serde_json::Value = serde_json::from_str(&stdout_of(&submitted))?;
    assert_eq!(job["name"], "word-count");
    assert_eq!(job["status"], "Submitted");
    let job_id = job["job_id"].as_str().unwrap_or_default().to_owned();
    let again = run_cli(&[
        "job",
        "submit",
        &spec,
        "--request-id",
        "cli-1",
        "--coordinators",
        &coordinators,
        "--output",
        "json",
    ])?;
    let again: serde_json::Value = serde_json::from_str(&stdout_of(&again))?;
    assert_eq!(again["job_id"].as_str(), Some(job_id.as_str()));

    tracing::info!("--- job list and job status, table and json");
    let listed = run_cli(&["job", "list", "--coordinators", &coordinators, "--output", "json"])?;
    let jobs: serde_json::Value = serde_json::from_str(&stdout_of(&listed))?;
    assert_eq!(jobs.as_array().map(Vec::len), Some(1));
    let table = run_cli(&["job", "list", "--coordinators", &coordinators])?;
    let table = stdout_of(&table);
    assert!(
        table.starts_with("JOB") && table.contains(&job_id) && table.contains("word-count"),
        "{table}"
    );
    let status = run_cli(&["job", "status", &job_id, "--coordinators", &coordinators])?;
    let status = stdout_of(&status);
    assert!(
        status.contains("counts[1]") && status.contains("(waiting for a slot)") && status.contains("WAITING"),
        "{status}"
    );
    // Eight subtasks in two parallel slices: two slots, none free anywhere.
    assert!(
        status.contains("slots:       0 held of 2 needed") && status.contains("waiting for 2 free slots"),
        "{status}"
    );
    assert_eq!(job["slots_needed"], 2, "{job}");

    tracing::info!("--- cluster status");
    let cluster_status = run_cli(&["cluster", "status", "--coordinators", &coordinators, "--output", "json"])?;
    let cluster_status: serde_json::Value = serde_json::from_str(&stdout_of(&cluster_status))?;
    assert_eq!(cluster_status["nodes"].as_array().map(Vec::len), Some(3));
    assert!(cluster_status["leader_id"].is_u64());

    tracing::info!("--- job cancel, and errors: unknown job, ended job, bad spec file");
    let cancelled = run_cli(&["job", "cancel", &job_id, "--coordinators", &coordinators])?;
    assert!(stdout_of(&cancelled).contains("Cancelled"), "{}", stderr_of(&cancelled));
    let ended = run_cli(&["job", "cancel", &job_id, "--coordinators", &coordinators])?;
    assert!(!ended.status.success());
    assert!(
        stderr_of(&ended).contains("FAILED_PRECONDITION"),
        "{}",
        stderr_of(&ended)
    );
    let unknown = run_cli(&["job", "status", "job-77", "--coordinators", &coordinators])?;
    assert!(!unknown.status.success());
    assert!(
        stderr_of(&unknown).contains("NOT_FOUND") && stderr_of(&unknown).contains("job-77"),
        "{}",
        stderr_of(&unknown)
    );
    let bad_path = cluster.path().join("bad.yaml");
    std::fs::write(&bad_path, "name: bad\noperators:\n  - id: src\n    kind: teleport\n")?;
    let bad = run_cli(&[
        "job",
        "submit",
        &bad_path.to_string_lossy(),
        "--coordinators",
        &coordinators,
    ])?;
    assert!(!bad.status.success());
    assert!(
        stderr_of(&bad).contains("INVALID_ARGUMENT") && stderr_of(&bad).contains("teleport"),
        "{}",
        stderr_of(&bad)
    );

    tracing::info!("--- with a majority down, the CLI retries for a bounded time, then says so plainly");
    let leader = cluster.leader().await?;
    let follower = cluster.follower().await?;
    cluster.cluster.kill(leader)?;
    cluster.cluster.kill(follower)?;
    let started = std::time::Instant::now();
    let unavailable = run_cli(&[
        "job",
        "submit",
        &spec,
        "--coordinators",
        &coordinators,
        "--retry-secs",
        "2",
    ])?;
    assert!(!unavailable.status.success());
    let message = stderr_of(&unavailable);
    assert!(message.contains("no coordinator leader reachable"), "{message}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "retries must be bounded"
    );
    Ok(())
}

#[test]
fn coordinator_refuses_bad_config_with_a_named_error() -> anyhow::Result<()> {
    let directory = tempfile::tempdir()?;
    let cases = [
        ("unknown field", "node_id: 1\nlisten_address: 127.0.0.1:0\ndata_dir: d\ncolour: blue\n", "colour"),
        ("bad address", "node_id: 1\nlisten_address: nowhere\ndata_dir: d\n", "listen_address"),
        (
            "timeouts",
            "node_id: 1\nlisten_address: 127.0.0.1:0\ndata_dir: d\nraft:\n  heartbeat_interval_ms: 500\n  election_timeout_min_ms: 300\n",
            "election_timeout_min_ms",
        ),
        (
            "bootstrap without self",
            "node_id: 4\nlisten_address: 127.0.0.1:0\ndata_dir: d\nbootstrap: true\ninitial_members: {1: '127.0.0.1:1'}\n",
            "not among initial_members",
        ),
    ];
    for (name, text, expected) in cases {
        let path = directory.path().join("config.yaml");
        std::fs::write(&path, text)?;
        let output = run_cli(&["coordinator", "--config", &path.to_string_lossy()])?;
        assert!(!output.status.success(), "{name}: accepted");
        let message = stderr_of(&output);
        assert!(message.contains(expected), "{name}: {message}");
    }
    let missing = run_cli(&[
        "coordinator",
        "--config",
        &directory.path().join("absent.yaml").to_string_lossy(),
    ])?;
    assert!(stderr_of(&missing).contains("absent.yaml"), "{}", stderr_of(&missing));
    Ok(())
}
