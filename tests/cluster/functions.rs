//! User functions on a real cluster: JavaScript built by `job submit` with componentize-qjs,
//! uploaded through a coordinator into the checkpoint store, run by the executors in the sandbox,
//! exactly once through a kill -9; and the bad inputs, refused before anything is committed.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use raftstream::wordcount::{highest_counts, WordCountJob};
use raftstream_api::client::ClusterClient;
use raftstream_proto::v1 as pb;

use crate::common::{
    eventually, fast_executors, finished, job, run_cli, start_executors, stderr_of, stdout_of, test_settings,
    word_count, TestCluster,
};
use crate::observability::{scrape, total};

/// The word count's split and count as JavaScript, for the bad-input cases.
const WORD_COUNT_JS: &str = r#"
export function flatMap(line) {
  return line.split(/[^A-Za-z0-9]+/).filter((word) => word.length > 0);
}
export function reduce(count, word) {
  return String(Number(count ?? 0) + 1);
}
"#;

/// The example job `examples/functions/<language>/<name>.yaml` as JSON, its function's source
/// copied into `dir` (where the spec is written), sink and source paths made absolute in `dir`.
fn example(language: &str, name: &str, dir: &Path) -> anyhow::Result<serde_json::Value> {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/functions")
        .join(language);
    let mut spec: serde_json::Value =
        serde_yaml::from_str(&std::fs::read_to_string(examples.join(format!("{name}.yaml")))?)?;
    let functions = spec["functions"].as_object().cloned().unwrap_or_default();
    for function in functions.values() {
        let source = function["source"].as_str().unwrap_or_default();
        std::fs::copy(examples.join(source), dir.join(source))?;
    }
    for operator in spec["operators"].as_array_mut().into_iter().flatten() {
        if let Some(path) = operator["params"]["path"].as_str() {
            operator["params"]["path"] = serde_json::json!(dir.join(path).display().to_string());
        }
    }
    Ok(spec)
}

/// The word count example of `language` over the input of `job`.
fn word_count_example(language: &str, job: &WordCountJob, dir: &Path) -> anyhow::Result<serde_json::Value> {
    let mut spec = example(language, "wordcount", dir)?;
    spec["checkpoint"]["interval_ms"] = serde_json::json!(job.checkpoint_interval_ms);
    spec["restart"] = serde_json::json!({"strategy": "fixed_delay", "max_attempts": 10, "delay_ms": 200});
    spec["operators"][0]["params"] = serde_json::json!({
        "seed": job.seed, "count": job.records, "rate_per_second": job.rate_per_second,
        "vocabulary_size": job.vocabulary_size, "words_per_record": job.words_per_record});
    spec["operators"][4]["params"]["path"] = serde_json::json!(job.output_dir.display().to_string());
    Ok(spec)
}

/// A spec whose word count calls the function `wc` from `source` (in the test's directory).
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

/// The reduce emits each key's count once per batch: the highest count published per word is
/// its final count, above the truth after a duplicate and below it after a loss.
fn ensure_final_counts(job: &WordCountJob) -> anyhow::Result<()> {
    let published = highest_counts(&job.output_dir)?;
    let expected = job.expected_counts();
    let wrong: Vec<String> = expected
        .iter()
        .filter(|(word, count)| published.get(*word) != Some(*count))
        .take(5)
        .map(|(word, count)| format!("{word}: {:?} published, {count} expected", published.get(word)))
        .collect();
    anyhow::ensure!(
        wrong.is_empty() && published.len() == expected.len(),
        "the published counts differ from the input's ({} words published, {} expected): {}",
        published.len(),
        expected.len(),
        wrong.join("; ")
    );
    Ok(())
}

/// Writes `lines` transactions of 40 accounts (whole amounts, seeded) to `dir/transactions.jsonl`
/// and returns each account's final sum.
fn write_transactions(dir: &Path, lines: u64) -> anyhow::Result<BTreeMap<String, f64>> {
    let mut text = String::new();
    let mut totals = BTreeMap::new();
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    for _ in 0..lines {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let account = format!("a{}", state % 40);
        let amount = (state >> 8) % 500;
        text.push_str(&format!("{{\"account\": \"{account}\", \"amount\": {amount}}}\n"));
        *totals.entry(account).or_insert(0.0) += amount as f64;
    }
    std::fs::write(dir.join("transactions.jsonl"), text)?;
    Ok(totals)
}

/// The alerts published in `dir`: every account whose sum passed the threshold, with the highest
/// sum published, which must be its final sum.
fn ensure_alerts(alerts_dir: &Path, totals: &BTreeMap<String, f64>, threshold: f64) -> anyhow::Result<()> {
    let mut highest: BTreeMap<String, f64> = BTreeMap::new();
    for path in raftstream::wordcount::published_files(alerts_dir)? {
        for line in std::fs::read_to_string(&path)?.lines() {
            let (account, total) = line
                .split_once('\t')
                .ok_or_else(|| anyhow::anyhow!("an alert without a tab: {line:?}"))?;
            let total: f64 = total.parse()?;
            let slot = highest.entry(account.to_owned()).or_insert(0.0);
            *slot = slot.max(total);
        }
    }
    let expected: BTreeMap<String, f64> = totals
        .iter()
        .filter(|(_, total)| **total > threshold)
        .map(|(account, total)| (account.clone(), *total))
        .collect();
    anyhow::ensure!(!expected.is_empty(), "the input alerts nobody: the test proves nothing");
    anyhow::ensure!(highest == expected, "alerts {highest:?}, expected {expected:?}");
    Ok(())
}

/// Where the component `sha256` is stored under the cluster's checkpoint store.
fn stored_function_path(root: &Path, sha256: &str) -> anyhow::Result<std::path::PathBuf> {
    let mut pending = vec![root.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.ends_with(format!("functions/{sha256}.wasm")) {
                return Ok(path);
            }
        }
    }
    anyhow::bail!("no component {sha256} under {}", root.display())
}

/// The (sha256, size) of the one function component in the cluster's checkpoint store.
fn find_stored_function(root: &Path) -> anyhow::Result<(String, u64)> {
    let mut pending = vec![root.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else if path
                .parent()
                .and_then(Path::file_name)
                .is_some_and(|name| name == "functions")
                && path.extension().is_some_and(|extension| extension == "wasm")
            {
                let sha256 = path
                    .file_stem()
                    .and_then(|stem| stem.to_str())
                    .unwrap_or_default()
                    .to_owned();
                return Ok((sha256, std::fs::metadata(&path)?.len()));
            }
        }
    }
    anyhow::bail!("no function component under {}", root.display())
}

/// `job status` lists each of the job's functions with its language, hash and size, the time
/// to compile it, and calls of the exports its operators use.
async fn ensure_status_shows_functions(
    coordinators: &str,
    job_id: &str,
    spec: &serde_json::Value,
) -> anyhow::Result<()> {
    let functions = spec["functions"].as_object().cloned().unwrap_or_default();
    let language = |name: &str| {
        let source = functions[name]["source"].as_str().unwrap_or_default();
        raftstream_functions::build::Language::of(Path::new(source)).map_or("?", |language| language.name())
    };
    let shown = eventually(
        "job status to show the functions' calls",
        Duration::from_secs(30),
        || async {
            let output = run_cli(&[
                "job",
                "status",
                job_id,
                "--coordinators",
                coordinators,
                "--output",
                "json",
            ])
            .ok()?;
            let status: serde_json::Value = serde_json::from_str(&stdout_of(&output)).ok()?;
            let listed = status["functions"].as_array()?.clone();
            let complete = listed.len() == functions.len()
                && listed.iter().all(|function| {
                    let name = function["name"].as_str().unwrap_or_default();
                    function["language"] == language(name)
                        && function["sha256"].as_str().is_some_and(|sha| sha.len() == 64)
                        && function["size_bytes"].as_u64().is_some_and(|size| size > 0)
                        && function["compile_ms"].is_u64()
                        && function["exports"].as_array().is_some_and(|exports| {
                            !exports.is_empty()
                                && exports.iter().all(|export| {
                                    export["calls"].as_u64().is_some_and(|calls| calls > 0)
                                        && export["micros_per_call"].as_f64().is_some_and(|micros| micros > 0.0)
                                })
                        })
                });
            complete.then_some(listed)
        },
    )
    .await?;
    let table = run_cli(&["job", "status", job_id, "--coordinators", coordinators])?;
    let printed = stdout_of(&table);
    for function in &shown {
        let name = function["name"].as_str().unwrap_or_default();
        anyhow::ensure!(
            printed.contains("functions:")
                && printed.contains(&format!("{name} ({}", language(name)))
                && printed.contains("us per call"),
            "job status lists function {name}:\n{printed}"
        );
    }
    Ok(())
}

/// Waits until the job runs with at least `checkpoints` completed checkpoints.
async fn running_with_checkpoints(client: &ClusterClient, job_id: &str, checkpoints: u64) -> anyhow::Result<pb::Job> {
    let running = eventually("the job to run with checkpoints", Duration::from_secs(90), || async {
        job(client, job_id)
            .await
            .filter(|job| job.status == "Running" && job.last_checkpoint_id.unwrap_or(0) >= checkpoints)
    })
    .await;
    match running {
        Ok(job) => Ok(job),
        Err(error) => {
            let now = job(client, job_id).await;
            let listed = client.list_checkpoints(job_id).await.ok();
            Err(error.context(format!("the job now: {now:?}; its checkpoints: {listed:?}")))
        }
    }
}

fn executor_of(job: &pb::Job, operator_id: &str) -> anyhow::Result<String> {
    job.subtasks
        .iter()
        .find(|subtask| subtask.operator_id == operator_id && !subtask.executor_id.is_empty())
        .map(|subtask| subtask.executor_id.clone())
        .ok_or_else(|| anyhow::anyhow!("{operator_id} is not placed"))
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

/// A fault injected into a running example job.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// kill -9 of the executor running this operator: the job restarts from its checkpoint.
    KillExecutorOf(&'static str),
    /// kill -9 of the coordinator leader: no job restarts.
    KillLeader,
    /// The operator rescaled while the job runs (its keyed state moves by key group).
    Rescale { operator: &'static str, parallelism: u32 },
}

/// How a job ran through its faults.
struct FaultyRun {
    /// The executors killed, in order.
    killed_executors: Vec<String>,
}

/// Submits `spec` with the CLI (which builds its functions), injects `faults` one after the
/// other, each once the job has a checkpoint more, and waits for the job to finish.
async fn run_through_faults(
    cluster: &mut TestCluster,
    client: &ClusterClient,
    name: &str,
    spec: &serde_json::Value,
    faults: &[Fault],
) -> anyhow::Result<FaultyRun> {
    let coordinators = cluster.cluster.addresses().join(",");
    let job_id = job_id_of(&submit(cluster.path(), &coordinators, name, spec)?)?;
    let mut running = running_with_checkpoints(client, &job_id, 3).await?;
    ensure_status_shows_functions(&coordinators, &job_id, spec).await?;
    let mut expected_restarts = running.restart_count;
    let mut killed_executors = Vec::new();
    for fault in faults {
        let checkpoint = running.last_checkpoint_id.unwrap_or(0);
        match *fault {
            Fault::KillExecutorOf(operator) => {
                let victim = executor_of(&running, operator)?;
                tracing::info!(%victim, operator, "--- kill -9 the executor running the operator");
                cluster.cluster.kill_executor(&victim)?;
                killed_executors.push(victim);
                expected_restarts += 1;
            }
            Fault::KillLeader => {
                let leader = cluster.leader().await?;
                tracing::info!(leader, "--- kill -9 the coordinator leader");
                cluster.cluster.kill(leader)?;
            }
            Fault::Rescale { operator, parallelism } => {
                tracing::info!(operator, parallelism, "--- rescale while the job runs");
                client
                    .rescale_job(&job_id, Some(operator), parallelism, &format!("{name}-rescale"))
                    .await?;
                eventually("the job to run rescaled", Duration::from_secs(60), || async {
                    job(client, &job_id).await.filter(|job| {
                        let placed = job
                            .subtasks
                            .iter()
                            .filter(|subtask| subtask.operator_id == operator && !subtask.executor_id.is_empty())
                            .count();
                        job.status == "Running" && placed == parallelism as usize
                    })
                })
                .await?;
            }
        }
        running = running_with_checkpoints(client, &job_id, checkpoint + 1).await?;
    }
    let done = finished(client, &job_id).await?;
    anyhow::ensure!(
        done.restart_count >= expected_restarts,
        "after {faults:?} the job restarted {} times, {expected_restarts} expected at least",
        done.restart_count
    );
    if !faults.iter().any(|fault| matches!(fault, Fault::KillExecutorOf(_))) {
        anyhow::ensure!(
            done.restart_count == running.restart_count,
            "{faults:?} restart no job: {done:?}"
        );
    }
    Ok(FaultyRun { killed_executors })
}

/// The word count example of `language` over `records` lines (at 4,000 lines/s, so the faults
/// come while it runs), exact through `faults`.
async fn word_count_example_through(
    language: &str,
    records: u64,
    faults: &[Fault],
) -> anyhow::Result<(TestCluster, ClusterClient, WordCountJob, FaultyRun)> {
    let mut cluster = TestCluster::start_with(test_settings(), fast_executors()).await?;
    let client = start_executors(&mut cluster, &[("exec-a", 2), ("exec-b", 2)]).await?;
    let wc = WordCountJob {
        records,
        ..word_count(&cluster)
    };
    let spec = word_count_example(language, &wc, cluster.path())?;
    let run = run_through_faults(&mut cluster, &client, &format!("{language}-wc"), &spec, faults).await?;
    ensure_final_counts(&wc)?;
    Ok((cluster, client, wc, run))
}

/// The fraud example of `language` over `lines` transactions (at 2,000 lines/s), its alerts
/// exact through `faults`.
async fn fraud_example_through(language: &str, lines: u64, faults: &[Fault]) -> anyhow::Result<()> {
    let mut cluster = TestCluster::start_with(test_settings(), fast_executors()).await?;
    let client = start_executors(&mut cluster, &[("exec-a", 2), ("exec-b", 2)]).await?;
    let totals = write_transactions(cluster.path(), lines)?;
    let mut spec = example(language, "fraud", cluster.path())?;
    spec["checkpoint"]["interval_ms"] = serde_json::json!(200);
    spec["restart"] = serde_json::json!({"strategy": "fixed_delay", "max_attempts": 10, "delay_ms": 200});
    spec["operators"][0]["params"]["rate_per_second"] = serde_json::json!(2_000);
    let alerts = spec["operators"][4]["params"]["path"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    run_through_faults(&mut cluster, &client, &format!("{language}-fraud"), &spec, faults).await?;
    ensure_alerts(Path::new(&alerts), &totals, 10_000.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_javascript_word_count_is_exact_through_an_executor_kill() -> anyhow::Result<()> {
    let (cluster, client, wc, run) =
        word_count_example_through("javascript", 48_000, &[Fault::KillExecutorOf("counts")]).await?;
    let survivor = ["exec-a", "exec-b"]
        .into_iter()
        .find(|id| !run.killed_executors.iter().any(|killed| killed == id))
        .and_then(|id| cluster.cluster.executor(id))
        .map(|executor| executor.http_address.clone())
        .ok_or_else(|| anyhow::anyhow!("the surviving executor is not known"))?;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;
    let metric = |samples: &[crate::observability::Sample], name: &str| total(samples, name, &[("function", "wc")]);
    let before = scrape(&http, &survivor).await?;
    assert_eq!(
        total(&before, "raftstream_function_compiles_total", &[]),
        1.0,
        "the survivor compiled the function once, restart included"
    );

    tracing::info!("--- the same function again, named by its hash: a second deployment compiles nothing");
    // Builds are not byte-for-byte reproducible (QuickJS snapshots differ), so the second job
    // names the stored component by its hash, as a job resubmitted from its spec would.
    let stored = find_stored_function(cluster.path())?;
    let again = WordCountJob {
        output_dir: cluster.path().join("output-again"),
        ..wc
    };
    let mut spec = word_count_example("javascript", &again, cluster.path())?;
    spec["name"] = serde_json::json!("js-wc-again");
    spec["functions"]["wc"] = serde_json::json!({"sha256": stored.0, "size_bytes": stored.1, "language": "javascript"});
    let second = client.submit_job(&spec.to_string(), "js-wc-again").await?;
    finished(&client, &second.job_id).await?;
    ensure_final_counts(&again)?;
    let after = scrape(&http, &survivor).await?;
    assert_eq!(
        total(&after, "raftstream_function_compiles_total", &[]),
        1.0,
        "a second deployment compiled nothing"
    );
    assert!(
        metric(&after, "raftstream_function_calls_total") > metric(&before, "raftstream_function_calls_total"),
        "the survivor called the function for the second job"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_word_count_is_exact_through_a_leader_kill() -> anyhow::Result<()> {
    word_count_example_through("python", 48_000, &[Fault::KillLeader])
        .await
        .map(drop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_word_count_is_exact_through_an_executor_kill_and_a_leader_kill() -> anyhow::Result<()> {
    word_count_example_through("rust", 60_000, &[Fault::KillExecutorOf("counts"), Fault::KillLeader])
        .await
        .map(drop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_javascript_fraud_rule_is_exact_through_a_rescale_from_two_to_three() -> anyhow::Result<()> {
    let rescale = Fault::Rescale {
        operator: "totals",
        parallelism: 3,
    };
    fraud_example_through("javascript", 40_000, &[rescale]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_fraud_rule_is_exact_through_an_executor_kill() -> anyhow::Result<()> {
    fraud_example_through("python", 30_000, &[Fault::KillExecutorOf("totals")]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_fraud_rule_is_exact_through_a_rescale_from_two_to_three() -> anyhow::Result<()> {
    let rescale = Fault::Rescale {
        operator: "totals",
        parallelism: 3,
    };
    fraud_example_through("rust", 40_000, &[rescale]).await
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

/// A one-function job over generated lines: `map` calls the function from `source` (already in
/// the test's directory) with the limits given.
fn map_job(name: &str, function: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "name": name,
        "checkpoint": {"interval_ms": 200},
        "restart": {"strategy": "fixed_delay", "max_attempts": 1, "delay_ms": 100},
        "functions": {"f": function},
        "operators": [
            {"id": "lines", "kind": "generator", "params": {"seed": 3, "count": 2000, "vocabulary_size": 50}},
            {"id": "mapped", "kind": "map", "inputs": ["lines"], "params": {"udf": "f"}},
            {"id": "out", "kind": "print", "inputs": ["mapped"]}]
    })
}

/// Waits for the job to fail and returns the reason it gives.
async fn failure_reason(client: &ClusterClient, job_id: &str) -> anyhow::Result<String> {
    let failed = eventually("the job to fail", Duration::from_secs(60), || async {
        job(client, job_id).await.filter(|job| job.status == "Failed")
    })
    .await?;
    Ok(failed.status_reason)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_loop_a_memory_bomb_and_damaged_bytes_fail_their_jobs_by_name() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start_with(test_settings(), fast_executors()).await?;
    let client = start_executors(&mut cluster, &[("exec-a", 2)]).await?;
    let coordinators = cluster.cluster.addresses().join(",");
    let dir = cluster.path();

    tracing::info!("--- an endless loop on one record: stopped at the deadline, every attempt");
    std::fs::write(
        dir.join("spin.js"),
        "export function map(line) { if (line.includes('w3')) { for (;;) {} } return line; }",
    )?;
    let spec = map_job("spin", serde_json::json!({"source": "spin.js", "call_timeout_ms": 300}));
    let job_id = job_id_of(&submit(dir, &coordinators, "spin", &spec)?)?;
    let reason = failure_reason(&client, &job_id).await?;
    assert!(
        reason.contains("f.map") && reason.contains("call deadline of 300 ms"),
        "the reason names the function, the export and the deadline: {reason}"
    );

    tracing::info!("--- a memory bomb: stopped at the function's memory limit");
    std::fs::write(
        dir.join("hoard.js"),
        "const hoard = []; export function map(line) { for (;;) { hoard.push(new Array(65536).fill(line)); } }",
    )?;
    let spec = map_job(
        "hoard",
        serde_json::json!({"source": "hoard.js", "memory_limit_mib": 16}),
    );
    let job_id = job_id_of(&submit(dir, &coordinators, "hoard", &spec)?)?;
    let reason = failure_reason(&client, &job_id).await?;
    assert!(
        reason.contains("f.map") && reason.contains(&format!("memory limit of {} bytes", 16 << 20)),
        "the reason names the function and the limit: {reason}"
    );

    tracing::info!("--- bytes in the store that do not match the job's hash: refused by the executor");
    let source = dir.join("upper.js");
    std::fs::write(&source, "export function map(line) { return line.toUpperCase(); }")?;
    let work = tempfile::tempdir_in(dir)?;
    let built =
        raftstream_functions::build::build_component(&source, work.path(), &[raftstream_functions::Export::Map])?;
    let sha256 = raftstream_functions::sha256_hex(&built.bytes);
    client.upload_function(&sha256, &built.bytes).await?;
    let path = stored_function_path(dir, &sha256)?;
    let mut damaged = std::fs::read(&path)?;
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0xff;
    std::fs::write(&path, damaged)?;
    let spec = map_job(
        "damaged",
        serde_json::json!({"sha256": sha256, "size_bytes": built.bytes.len(), "language": "javascript"}),
    );
    let submitted = client.submit_job(&spec.to_string(), "damaged").await?;
    let reason = failure_reason(&client, &submitted.job_id).await?;
    assert!(
        reason.contains("do not match the job's hash") && reason.contains(&sha256),
        "the reason names the mismatch and the hash: {reason}"
    );

    tracing::info!("--- over the size limit: at the CLI, at the upload and in a spec");
    let limit = raftstream_api::spec::MAX_FUNCTION_BYTES;
    let mut big = b"\0asm\x0d\x00\x01\x00".to_vec();
    big.resize(usize::try_from(limit + 1)?, 0);
    std::fs::write(dir.join("big.wasm"), &big)?;
    let refused = submit(
        dir,
        &coordinators,
        "big",
        &map_job("big", serde_json::json!({"source": "big.wasm"})),
    )?;
    let message = stderr_of(&refused);
    assert!(
        !refused.status.success() && message.contains("above the limit"),
        "{message}"
    );
    let upload = client
        .upload_function(&raftstream_functions::sha256_hex(&big), &big)
        .await
        .expect_err("an upload over the limit is refused");
    assert!(
        upload.to_string().contains(&format!("between 1 and {limit} bytes")),
        "{upload}"
    );
    let spec = map_job(
        "big-by-hash",
        serde_json::json!({"sha256": sha256, "size_bytes": limit + 1, "language": "wasm"}),
    );
    let refused = client
        .submit_job(&spec.to_string(), "big-by-hash")
        .await
        .expect_err("a spec naming a function over the limit is refused");
    assert!(refused.to_string().contains("size_bytes"), "{refused}");
    assert_eq!(jobs(&client).await?, 3, "only the three failed jobs were committed");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_resumed_from_a_savepoint_may_run_a_new_version_of_its_function() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start_with(test_settings(), fast_executors()).await?;
    let client = start_executors(&mut cluster, &[("exec-a", 2), ("exec-b", 2)]).await?;
    let coordinators = cluster.cluster.addresses().join(",");
    let dir = cluster.path();
    // 12 s of input at 4,000 lines/s: the stop comes part way.
    let wc = WordCountJob {
        records: 48_000,
        ..word_count(&cluster)
    };
    std::fs::write(dir.join("wc.js"), WORD_COUNT_JS)?;
    let first_spec = udf_word_count_spec(&wc, "wc-v1", "wc.js");
    let job_id = job_id_of(&submit(dir, &coordinators, "wc-v1", &first_spec)?)?;
    let first = running_with_checkpoints(&client, &job_id, 2).await?;

    tracing::info!("--- stop with a savepoint part way");
    let stopped = run_cli(&["job", "stop", &job_id, "--savepoint", "--coordinators", &coordinators])?;
    anyhow::ensure!(stopped.status.success(), "{}", stderr_of(&stopped));
    let savepoint = crate::savepoints::savepoint_id_in(&stdout_of(&stopped), &job_id)
        .ok_or_else(|| anyhow::anyhow!("no savepoint id in {:?}", stdout_of(&stopped)))?;

    tracing::info!("--- resume with a new version of the function (the same counting, built anew)");
    std::fs::write(
        dir.join("wc-v2.js"),
        format!("// version 2: counts from the savepoint's state on\n{WORD_COUNT_JS}"),
    )?;
    let second_spec = udf_word_count_spec(&wc, "wc-v2", "wc-v2.js");
    let path = dir.join("wc-v2.json");
    std::fs::write(&path, serde_json::to_string_pretty(&second_spec)?)?;
    let resumed = run_cli(&[
        "job",
        "submit",
        &path.to_string_lossy(),
        "--from-savepoint",
        &format!("{job_id}:{savepoint}"),
        "--coordinators",
        &coordinators,
        "--output",
        "json",
    ])?;
    let resumed_id = job_id_of(&resumed)?;
    let done = finished(&client, &resumed_id).await?;
    assert_eq!(done.from_savepoint, format!("{job_id}:{savepoint}"));
    let sha_of = |job: &pb::Job| -> anyhow::Result<String> {
        let graph: serde_json::Value = serde_json::from_str(&job.graph_json)?;
        Ok(graph["functions"]["wc"]["sha256"]
            .as_str()
            .unwrap_or_default()
            .to_owned())
    };
    let (old, new) = (sha_of(&first)?, sha_of(&done)?);
    anyhow::ensure!(
        !old.is_empty() && !new.is_empty() && old != new,
        "the resumed job runs the new version: {old} then {new}"
    );
    // The counts continue from the savepoint's state: the highest count published per word over
    // both jobs is the input's.
    ensure_final_counts(&wc)
}
