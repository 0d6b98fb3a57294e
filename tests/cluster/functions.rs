//! User functions on a real cluster: JavaScript built by `job submit` with componentize-qjs,
//! uploaded through a coordinator into the checkpoint store, run by the executors in the sandbox,
//! exactly once through a kill -9; and the bad inputs, refused before anything is committed.

use std::path::Path;
use std::time::Duration;

use raftstream::wordcount::{highest_counts, WordCountJob};
use raftstream_api::client::ClusterClient;
use raftstream_proto::v1 as pb;

use crate::common::{
    eventually, fast_executors, finished, job, run_cli, start_executors, stderr_of, stdout_of, test_settings,
    word_count, TestCluster,
};

/// The word count's split and count as JavaScript: a flat_map and a reduce.
const WORD_COUNT_JS: &str = r#"
export function flatMap(line) {
  return line.split(/[^A-Za-z0-9]+/).filter((word) => word.length > 0);
}
export function reduce(count, word) {
  return String(Number(count ?? 0) + 1);
}
"#;

/// The word count of `job` with its split and count done by the function `wc` from `source`.
fn udf_word_count_spec(job: &WordCountJob, name: &str, source: &str) -> serde_json::Value {
    serde_json::json!({
        "name": name,
        "parallelism": job.parallelism,
        "checkpoint": {"interval_ms": job.checkpoint_interval_ms},
        "restart": {"strategy": "fixed_delay", "max_attempts": 10, "delay_ms": 200},
        "functions": {"wc": {"source": source}},
        "operators": [
            {"id": "lines", "kind": "generator", "params": {
                "seed": job.seed, "count": job.records, "rate_per_second": job.rate_per_second,
                "vocabulary_size": job.vocabulary_size, "words_per_record": job.words_per_record}},
            {"id": "words", "kind": "flat_map", "inputs": ["lines"], "params": {"udf": "wc"}},
            {"id": "by_word", "kind": "key_by", "inputs": ["words"]},
            {"id": "counts", "kind": "reduce", "inputs": ["by_word"], "params": {"udf": "wc"}},
            {"id": "out", "kind": "file_sink", "inputs": ["counts"],
             "params": {"path": job.output_dir.display().to_string()}}]
    })
}

/// Writes `spec` and submits it with the CLI; returns the CLI's output.
fn submit(
    dir: &Path,
    coordinators: &str,
    name: &str,
    spec: &serde_json::Value,
) -> anyhow::Result<std::process::Output> {
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(spec)?)?;
    run_cli(&[
        "job",
        "submit",
        &path.to_string_lossy(),
        "--coordinators",
        coordinators,
        "--output",
        "json",
    ])
}

fn job_id_of(output: &std::process::Output) -> anyhow::Result<String> {
    anyhow::ensure!(output.status.success(), "submit failed: {}", stderr_of(output));
    let job: serde_json::Value = serde_json::from_str(&stdout_of(output))?;
    Ok(job["job_id"].as_str().unwrap_or_default().to_owned())
}

async fn jobs(client: &ClusterClient) -> anyhow::Result<usize> {
    Ok(client.list_jobs(pb::ReadConsistency::Linearizable).await?.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_javascript_word_count_is_exact_through_an_executor_kill() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start_with(test_settings(), fast_executors()).await?;
    let client = start_executors(&mut cluster, &[("exec-a", 2), ("exec-b", 2)]).await?;
    let coordinators = cluster.cluster.addresses().join(",");
    std::fs::write(cluster.path().join("wc.js"), WORD_COUNT_JS)?;
    let wc = WordCountJob {
        records: 16_000,
        ..word_count(&cluster)
    };

    tracing::info!("--- job submit builds wc.js, uploads it and submits the job naming its hash");
    let submitted = submit(
        cluster.path(),
        &coordinators,
        "udf-wc",
        &udf_word_count_spec(&wc, "udf-wc", "wc.js"),
    )?;
    let job_id = job_id_of(&submitted)?;
    let running = eventually("the job to run with checkpoints", Duration::from_secs(60), || async {
        job(&client, &job_id)
            .await
            .filter(|job| job.status == "Running" && job.last_checkpoint_id.unwrap_or(0) >= 3)
    })
    .await?;
    let victim = running
        .subtasks
        .iter()
        .find(|subtask| subtask.operator_id == "counts" && !subtask.executor_id.is_empty())
        .map(|subtask| subtask.executor_id.clone())
        .ok_or_else(|| anyhow::anyhow!("counts is not placed"))?;

    tracing::info!(%victim, "--- kill -9 the executor running the user reduce");
    cluster.cluster.kill_executor(&victim)?;
    let done = finished(&client, &job_id).await?;
    anyhow::ensure!(done.restart_count >= 1, "the kill of {victim} restarted nothing");
    // The reduce emits each key's count once per batch: the highest count published per word is
    // its final count, which is above the truth after a duplicate and below it after a loss.
    let published = highest_counts(&wc.output_dir)?;
    anyhow::ensure!(
        published == wc.expected_counts(),
        "the published counts differ from the input's ({} words published, {} expected)",
        published.len(),
        wc.expected_counts().len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_functions_are_refused_at_submit_and_a_failing_one_fails_its_job() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start_with(test_settings(), fast_executors()).await?;
    let client = start_executors(&mut cluster, &[("exec-a", 2)]).await?;
    let coordinators = cluster.cluster.addresses().join(",");
    let dir = cluster.path();
    let wc = word_count(&cluster);

    tracing::info!("--- not WebAssembly");
    std::fs::write(dir.join("text.wasm"), "def map(value): return value")?;
    let refused = submit(
        dir,
        &coordinators,
        "not-wasm",
        &udf_word_count_spec(&wc, "not-wasm", "text.wasm"),
    )?;
    let message = stderr_of(&refused);
    assert!(
        !refused.status.success() && message.contains("not WebAssembly"),
        "{message}"
    );

    tracing::info!("--- a module without the reduce the job calls");
    std::fs::write(
        dir.join("split_only.js"),
        "export function flatMap(line) { return line.split(' '); }",
    )?;
    let refused = submit(
        dir,
        &coordinators,
        "no-reduce",
        &udf_word_count_spec(&wc, "no-reduce", "split_only.js"),
    )?;
    let message = stderr_of(&refused);
    assert!(
        !refused.status.success()
            && message.contains("does not export `reduce`")
            && message.contains("no function reduce"),
        "{message}"
    );

    tracing::info!("--- a source that does not exist, and a language we cannot tell");
    let refused = submit(
        dir,
        &coordinators,
        "missing",
        &udf_word_count_spec(&wc, "missing", "nowhere.js"),
    )?;
    assert!(stderr_of(&refused).contains("nowhere.js"), "{}", stderr_of(&refused));
    std::fs::write(dir.join("wc.txt"), WORD_COUNT_JS)?;
    let refused = submit(
        dir,
        &coordinators,
        "unknown",
        &udf_word_count_spec(&wc, "unknown", "wc.txt"),
    )?;
    assert!(
        stderr_of(&refused).contains("cannot tell the language"),
        "{}",
        stderr_of(&refused)
    );

    tracing::info!("--- an operator naming a function the spec does not have");
    std::fs::write(dir.join("wc.js"), WORD_COUNT_JS)?;
    let mut spec = udf_word_count_spec(&wc, "unknown-name", "wc.js");
    spec["operators"][1]["params"]["udf"] = serde_json::json!("nope");
    let refused = submit(dir, &coordinators, "unknown-name", &spec)?;
    assert!(
        stderr_of(&refused).contains("unknown function \"nope\""),
        "{}",
        stderr_of(&refused)
    );
    assert_eq!(jobs(&client).await?, 0, "nothing was committed");

    tracing::info!("--- a function that throws on one record every time ends its job Failed");
    std::fs::write(
        dir.join("picky.js"),
        "export function map(line) { if (line.includes('w3')) { throw new Error(`cannot take ${line}`); } return line; }",
    )?;
    let spec = serde_json::json!({
        "name": "picky",
        "checkpoint": {"interval_ms": 200},
        "restart": {"strategy": "fixed_delay", "max_attempts": 2, "delay_ms": 100},
        "functions": {"picky": {"source": "picky.js"}},
        "operators": [
            {"id": "lines", "kind": "generator", "params": {"seed": 3, "count": 2000, "vocabulary_size": 50}},
            {"id": "checked", "kind": "map", "inputs": ["lines"], "params": {"udf": "picky"}},
            {"id": "out", "kind": "print", "inputs": ["checked"]}]
    });
    let job_id = job_id_of(&submit(dir, &coordinators, "picky", &spec)?)?;
    let failed = eventually("the job to fail", Duration::from_secs(60), || async {
        job(&client, &job_id).await.filter(|job| job.status == "Failed")
    })
    .await?;
    assert!(
        failed.status_reason.contains("picky.map") && failed.status_reason.contains("cannot take"),
        "the reason names the function, the export and the guest's message: {}",
        failed.status_reason
    );
    Ok(())
}
