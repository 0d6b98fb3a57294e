//! Restart strategies on real processes: a job that cannot start backs off between its restarts
//! and ends `Failed` with the reason once its run of attempts is spent.

use std::time::{Duration, Instant};

use crate::common::{eventually, fast_executors, job, start_executors, test_settings, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_failing_at_every_start_backs_off_and_fails_after_its_attempts() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start_with(test_settings(), fast_executors()).await?;
    let client = start_executors(&mut cluster, &[("exec-a", 1)]).await?;
    // The sink's directory cannot be made: a file stands where its parent should be.
    let blocker = cluster.path().join("blocker");
    std::fs::write(&blocker, "not a directory")?;
    let output = blocker.join("out");
    // The default strategy's shape with shorter delays: at once, then 200 ms, then 400 ms.
    let spec = serde_json::json!({
        "name": "never-starts",
        "restart": {"strategy": "exponential_backoff", "first_delay_ms": 0, "initial_delay_ms": 200,
                    "max_delay_ms": 400, "max_attempts": 3, "reset_after_ms": 600_000},
        "operators": [
            {"id": "lines", "kind": "generator", "params": {"rate_per_second": 10}},
            {"id": "out", "kind": "file_sink", "inputs": ["lines"], "params": {"path": output.display().to_string()}}]
    });
    let submitted_at = Instant::now();
    let submitted = client.submit_job(&spec.to_string(), "never-starts").await?;
    let failed = eventually("the job to give up", Duration::from_secs(60), || async {
        job(&client, &submitted.job_id)
            .await
            .filter(|job| job.status == "Failed")
    })
    .await?;
    let took = submitted_at.elapsed();
    assert_eq!(
        failed.restart_count, 4,
        "three restarts, the fourth refused: {failed:?}"
    );
    assert!(
        failed.status_reason.contains("gave up after 3 restart attempts") && failed.status_reason.contains("out"),
        "the reason names the attempts and the failure: {}",
        failed.status_reason
    );
    assert!(
        took >= Duration::from_millis(600),
        "the restarts waited 0 + 200 + 400 ms: {took:?}"
    );
    Ok(())
}
