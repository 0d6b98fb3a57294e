//! Checkpoints complete at their interval while the input flows, whatever the shape of the job: a
//! chain that holds the whole job in one task, the same job unchained, parallelism 2, a chain of a
//! source and a sink only, and a job with a window, each fed by a source that never runs dry
//! during the measurement (an unbounded generator without a rate, and files large enough to last
//! several intervals). And a job killed in the middle of a large file resumes from a checkpoint
//! taken after its start, with exact output.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use raftstream_api::client::ClusterClient;
use raftstream_api::spec::GeneratorConfig;
use raftstream_executor::runtime::generator::GeneratedRecords;
use raftstream_proto::v1 as pb;

use crate::common::{
    ensure_exact_output, eventually, fast_executors, job, start_executors, test_settings, TestCluster,
};

const PATIENCE: Duration = Duration::from_secs(60);
/// The checkpoint interval of the measured jobs.
const INTERVAL_MS: u64 = 100;
/// Intervals measured after the first completed checkpoint: at least half of them must see a
/// checkpoint complete. The defect this guards against completed none while input flowed; on a
/// loaded 2-core machine a checkpoint may take longer than one interval, so not every one counts.
const INTERVALS: u64 = 6;

/// Where a measured job's records come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Input {
    /// An unbounded generator without a rate: input never ends.
    Generator,
    /// Files of JSON lines `{"t": <line>, "w": "w<k>"}`, one per source subtask.
    Files,
}

/// The shapes of job every task kind must checkpoint in.
#[derive(Debug, Clone, Copy)]
enum Shape {
    /// Parallelism 1: source, filter, key_by, count and sink in one task.
    FullyChained,
    /// The same job with `chaining: false`: every operator its own task.
    Unchained,
    /// The same job at parallelism 2: a real keyed exchange.
    Parallel,
    /// Parallelism 2, no exchange: each subtask's source, filter and sink in one task.
    SourceToSink,
    /// A tumbling window behind the keyed exchange, chained to its sink.
    Window,
}

const SHAPES: [Shape; 5] = [
    Shape::FullyChained,
    Shape::Unchained,
    Shape::Parallel,
    Shape::SourceToSink,
    Shape::Window,
];

fn parallelism(shape: Shape) -> u32 {
    match shape {
        Shape::Parallel | Shape::SourceToSink => 2,
        _ => 1,
    }
}

/// The operators before the keyed exchange, ending with `rare`: few records pass it (the word
/// `w7`), so the output stays small while the source and its chain run at full speed.
fn selection(input: Input, files: &Path) -> String {
    match input {
        Input::Generator => r#"
            {"id": "lines", "kind": "generator", "params": {"seed": 5, "vocabulary_size": 1000, "words_per_record": 8}},
            {"id": "words", "kind": "flat_map", "inputs": ["lines"], "params": {"function": "split_words"}},
            {"id": "rare", "kind": "filter", "inputs": ["words"], "params": {"op": "eq", "value": "w7"}},"#
            .to_owned(),
        Input::Files => format!(
            r#"
            {{"id": "lines", "kind": "file_source", "params": {{"path": {path}}}}},
            {{"id": "rare", "kind": "filter", "inputs": ["lines"], "params": {{"field": "w", "op": "eq", "value": "w7"}}}},"#,
            path = serde_json::Value::String(files.display().to_string())
        ),
    }
}

fn spec(shape: Shape, input: Input, files: &Path, output: &Path) -> String {
    let key = match input {
        Input::Generator => "",
        Input::Files => r#", "params": {"field": "w"}"#,
    };
    let timestamp = match input {
        Input::Generator => "",
        Input::Files => r#", "timestamp_field": "t""#,
    };
    let keyed = match shape {
        Shape::SourceToSink => String::new(),
        Shape::Window => format!(
            r#"
            {{"id": "by_word", "kind": "key_by", "inputs": ["rare"]{key}}},
            {{"id": "keyed", "kind": "tumbling_window", "inputs": ["by_word"], "params": {{"size_ms": 1000, "aggregate": "count"{timestamp}}}}},"#
        ),
        _ => format!(
            r#"
            {{"id": "by_word", "kind": "key_by", "inputs": ["rare"]{key}}},
            {{"id": "keyed", "kind": "count", "inputs": ["by_word"]}},"#
        ),
    };
    let last = if matches!(shape, Shape::SourceToSink) {
        "rare"
    } else {
        "keyed"
    };
    format!(
        r#"{{"name": "{shape:?}-{input:?}", "parallelism": {parallelism}, "chaining": {chaining},
          "checkpoint": {{"interval_ms": {INTERVAL_MS}, "timeout_ms": 10000, "retained": 100}},
          "restart": {{"strategy": "none"}},
          "operators": [{selection}{keyed}
            {{"id": "out", "kind": "file_sink", "inputs": ["{last}"], "params": {{"path": {output}}}}}]}}"#,
        parallelism = parallelism(shape),
        chaining = !matches!(shape, Shape::Unchained),
        selection = selection(input, files),
        output = serde_json::Value::String(output.display().to_string()),
    )
}

/// Writes `files` files of `lines_per_file` JSON lines each under `directory`; returns its size.
fn write_input(directory: &Path, files: u32, lines_per_file: u64) -> anyhow::Result<u64> {
    std::fs::create_dir_all(directory)?;
    let settings = GeneratorConfig {
        seed: 3,
        count: None,
        vocabulary_size: 100,
        words_per_record: 1,
        ..GeneratorConfig::default()
    };
    let mut bytes = 0;
    let mut word = String::new();
    for file in 0..files {
        let path = directory.join(format!("input-{file}.jsonl"));
        let mut writer = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&path)?);
        for line in 0..lines_per_file {
            settings.write_record(u64::from(file) * lines_per_file + line, &mut word);
            writeln!(writer, r#"{{"t":{line},"w":"{word}"}}"#)?;
        }
        writer.flush()?;
        bytes += std::fs::metadata(&path)?.len();
    }
    Ok(bytes)
}

/// Executors of two slots: every job here has parallelism 1 or 2, one at a time.
async fn start_cluster(executors: &[&str]) -> anyhow::Result<(TestCluster, ClusterClient)> {
    let mut cluster = TestCluster::start_with(test_settings(), fast_executors()).await?;
    let with_slots: Vec<(&str, u32)> = executors.iter().map(|executor_id| (*executor_id, 2)).collect();
    let client = start_executors(&mut cluster, &with_slots).await?;
    Ok((cluster, client))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

/// The bytes of the committed (published) output of checkpoint `checkpoint_id`, once every sink
/// subtask published it.
fn published_bytes(output: &Path, checkpoint_id: u64, sinks: u32) -> Option<u64> {
    let mut total = 0;
    for subtask in 0..sinks {
        let file = output.join(format!("part-{subtask}-{checkpoint_id:012}.txt"));
        total += std::fs::metadata(file).ok()?.len();
    }
    Some(total)
}

/// Runs one job of `shape` on `input` and checks that checkpoints complete at the interval while
/// records flow, and that each of them commits output.
async fn checkpoints_while_input_flows(
    client: &ClusterClient,
    shape: Shape,
    input: Input,
    files: &Path,
    input_bytes: u64,
    output: &Path,
) -> anyhow::Result<()> {
    let what = format!("{shape:?} job on {input:?}");
    tracing::info!("--- {what}: submit, checkpoints every {INTERVAL_MS} ms");
    let submitted = client
        .submit_job(
            &spec(shape, input, files, output),
            &format!("progress-{shape:?}-{input:?}"),
        )
        .await?;
    let job_id = submitted.job_id;
    let first = eventually(
        &format!("{what}: a first checkpoint while input flows"),
        Duration::from_secs(20),
        || async {
            let checkpoints = client.list_checkpoints(&job_id).await.ok()?;
            checkpoints.first().cloned()
        },
    )
    .await?;
    let window_end_ms = first.completed_at_ms + INTERVALS * INTERVAL_MS;
    // Measuring a span of time, not waiting for an outcome: read until the span has passed.
    let checkpoints = eventually(&format!("{what}: {INTERVALS} intervals to pass"), PATIENCE, || async {
        let checkpoints = client.list_checkpoints(&job_id).await.ok()?;
        (now_ms() > window_end_ms + 50).then_some(checkpoints)
    })
    .await?;
    let in_window: Vec<&pb::Checkpoint> = checkpoints
        .iter()
        .filter(|checkpoint| {
            checkpoint.checkpoint_id > first.checkpoint_id && checkpoint.completed_at_ms <= window_end_ms
        })
        .collect();
    let summary: Vec<String> = in_window
        .iter()
        .map(|checkpoint| {
            format!(
                "{} ({} ms)",
                checkpoint.checkpoint_id,
                checkpoint.completed_at_ms.saturating_sub(checkpoint.triggered_at_ms)
            )
        })
        .collect();
    tracing::info!(checkpoints = ?summary, "{what}: completed in {INTERVALS} intervals");
    anyhow::ensure!(
        in_window.len() as u64 >= INTERVALS / 2,
        "{what}: {} checkpoints completed in {INTERVALS} intervals of {INTERVAL_MS} ms, expected at least {}: {summary:?}",
        in_window.len(),
        INTERVALS / 2
    );
    if input == Input::Files {
        for checkpoint in &in_window {
            let consumed: u64 = checkpoint.source_offsets.iter().map(|offset| offset.offset).sum();
            tracing::info!(
                checkpoint = checkpoint.checkpoint_id,
                consumed_percent = consumed * 100 / input_bytes.max(1),
                "{what}: input read at the checkpoint"
            );
            anyhow::ensure!(
                consumed > 0 && consumed < input_bytes,
                "{what}: checkpoint {} was taken at {consumed} of {input_bytes} input bytes, not while the input flowed",
                checkpoint.checkpoint_id
            );
        }
    }
    // Every checkpoint of the span commits the sink output of its interval (the first one may
    // have come before any record reached the sink).
    let sinks = parallelism(shape);
    for checkpoint in &in_window {
        let bytes = eventually(
            &format!(
                "{what}: checkpoint {}'s output to be published",
                checkpoint.checkpoint_id
            ),
            Duration::from_secs(10),
            || async { published_bytes(output, checkpoint.checkpoint_id, sinks) },
        )
        .await?;
        anyhow::ensure!(
            bytes > 0,
            "{what}: checkpoint {} committed no output although records flowed",
            checkpoint.checkpoint_id
        );
    }
    anyhow::ensure!(
        job(client, &job_id).await.is_some_and(|job| job.status == "Running"),
        "{what}: the job stopped running"
    );
    client
        .cancel_job(&job_id, &format!("progress-cancel-{shape:?}-{input:?}"))
        .await?;
    eventually(&format!("{what}: the job to be cancelled"), PATIENCE, || async {
        job(client, &job_id).await.filter(|job| job.status == "Cancelled")
    })
    .await?;
    let _ = std::fs::remove_dir_all(output);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_job_shape_checkpoints_while_an_unbounded_generator_runs_at_full_speed() -> anyhow::Result<()> {
    let (cluster, client) = start_cluster(&["exec-a"]).await?;
    for shape in SHAPES {
        let output = cluster.path().join(format!("out-{shape:?}"));
        checkpoints_while_input_flows(&client, shape, Input::Generator, Path::new(""), 0, &output).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_job_shape_checkpoints_while_it_reads_large_files() -> anyhow::Result<()> {
    let (cluster, client) = start_cluster(&["exec-a"]).await?;
    let files = cluster.path().join("input");
    // Two files, so each subtask of a parallelism-2 source has one. A subtask reads about 100 MB
    // of them a second here: 90 MB each last the first checkpoint and the measured intervals.
    let input_bytes = write_input(&files, 2, 4_000_000)?;
    for shape in SHAPES {
        let output = cluster.path().join(format!("out-{shape:?}"));
        checkpoints_while_input_flows(&client, shape, Input::Files, &files, input_bytes, &output).await?;
    }
    Ok(())
}

/// The word count of `files` at parallelism 1, every word `w7...` counted.
fn file_word_count_spec(files: &Path, output: &Path) -> String {
    format!(
        r#"{{"name": "file-word-count", "parallelism": 1,
          "checkpoint": {{"interval_ms": 100, "timeout_ms": 10000, "retained": 100}},
          "restart": {{"strategy": "fixed_delay", "max_attempts": 5, "delay_ms": 100}},
          "operators": [
            {{"id": "lines", "kind": "file_source", "params": {{"path": {path}}}}},
            {{"id": "words", "kind": "flat_map", "inputs": ["lines"], "params": {{"function": "split_words"}}}},
            {{"id": "sevens", "kind": "filter", "inputs": ["words"], "params": {{"op": "starts_with", "value": "w7"}}}},
            {{"id": "by_word", "kind": "key_by", "inputs": ["sevens"]}},
            {{"id": "counts", "kind": "count", "inputs": ["by_word"]}},
            {{"id": "out", "kind": "file_sink", "inputs": ["counts"], "params": {{"path": {output}}}}}]}}"#,
        path = serde_json::Value::String(files.display().to_string()),
        output = serde_json::Value::String(output.display().to_string()),
    )
}

/// Writes `lines` generator lines of 8 words into `file`; returns the expected count of every
/// word starting with `w7`.
fn write_word_file(file: &Path, lines: u64) -> anyhow::Result<BTreeMap<String, u64>> {
    let settings = GeneratorConfig {
        seed: 17,
        count: Some(lines),
        vocabulary_size: 1_000,
        words_per_record: 8,
        ..GeneratorConfig::default()
    };
    let mut writer = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(file)?);
    let mut expected = BTreeMap::new();
    let mut line = String::new();
    for offset in 0..lines {
        settings.write_record(offset, &mut line);
        writeln!(writer, "{line}")?;
        for word in line.split(' ').filter(|word| word.starts_with("w7")) {
            *expected.entry(word.to_owned()).or_insert(0u64) += 1;
        }
    }
    writer.flush()?;
    Ok(expected)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chained_file_job_killed_mid_input_resumes_from_a_checkpoint_after_its_start() -> anyhow::Result<()> {
    let (mut cluster, client) = start_cluster(&["exec-a", "exec-b"]).await?;
    let input = cluster.path().join("words");
    std::fs::create_dir_all(&input)?;
    let expected = write_word_file(&input.join("input.txt"), 3_000_000)?;
    let input_bytes = std::fs::metadata(input.join("input.txt"))?.len();
    let output: PathBuf = cluster.path().join("output");
    let submitted = client
        .submit_job(&file_word_count_spec(&input, &output), "file-word-count")
        .await?;
    let job_id = submitted.job_id;
    // The whole job is one task: source, split, filter, key_by, count and sink.
    let (checkpoint, running) = eventually("a checkpoint in the middle of the input", PATIENCE, || async {
        let checkpoint = client.list_checkpoints(&job_id).await.ok()?.last().cloned()?;
        let offset = checkpoint.source_offsets.first()?.offset;
        let running = job(&client, &job_id).await?;
        (offset > input_bytes / 10 && offset < input_bytes / 2).then_some((checkpoint, running))
    })
    .await?;
    let victim = running
        .subtasks
        .first()
        .map(|subtask| subtask.executor_id.clone())
        .ok_or_else(|| anyhow::anyhow!("the job is not placed"))?;
    let offset = checkpoint.source_offsets.first().map_or(0, |offset| offset.offset);
    tracing::info!(%victim, checkpoint = checkpoint.checkpoint_id, offset, input_bytes, "--- kill -9 the executor in the middle of the file");
    cluster.cluster.kill_executor(&victim)?;
    let restarted = eventually("the job to run again elsewhere", PATIENCE, || async {
        let job = job(&client, &job_id).await?;
        (job.restart_count >= 1 && job.restored_checkpoint_id.is_some()).then_some(job)
    })
    .await?;
    let restored = restarted.restored_checkpoint_id.unwrap_or(0);
    anyhow::ensure!(
        restored >= checkpoint.checkpoint_id,
        "the job restored checkpoint {restored}, older than {} which completed before the kill",
        checkpoint.checkpoint_id
    );
    let restored_offset = client
        .list_checkpoints(&job_id)
        .await?
        .into_iter()
        .find(|checkpoint| checkpoint.checkpoint_id == restored)
        .and_then(|checkpoint| checkpoint.source_offsets.first().map(|offset| offset.offset))
        .ok_or_else(|| anyhow::anyhow!("restored checkpoint {restored} is not retained"))?;
    tracing::info!(
        restored,
        restored_offset,
        "--- the job runs again, restored from a checkpoint after its start"
    );
    anyhow::ensure!(
        restored_offset >= offset && restored_offset > 0,
        "the restore rewound the source to {restored_offset} (the checkpoint before the kill was at {offset})"
    );
    let done = crate::common::finished(&client, &job_id).await?;
    anyhow::ensure!(
        done.subtasks.iter().all(|subtask| subtask.executor_id != victim),
        "everything moved off the killed executor: {:?}",
        done.subtasks
    );
    ensure_exact_output(&output, &expected)
}
