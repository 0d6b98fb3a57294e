//! Operators beyond the word count, end to end on executors: a file source read in parallel,
//! CSV parsing, a filter and a key on a field, and a keyed running sum into the file sink.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::common::{
    ensure_exact_output, eventually, fast_executors, finished, finished_across_an_executor_kill, job, start_executors,
    test_settings, TestCluster,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_files_are_filtered_keyed_and_summed_exactly() -> anyhow::Result<()> {
    let executors = fast_executors();
    let mut cluster = TestCluster::start_with(test_settings(), executors).await?;
    cluster.cluster.start_executor("exec-a", 2)?;
    cluster.cluster.start_executor("exec-b", 2)?;
    let client = cluster.client()?;

    let input = cluster.path().join("input");
    std::fs::create_dir_all(&input)?;
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    let mut kept = 0u64;
    for file in 0..3 {
        let mut text = String::from("malformed line without a comma\n");
        for line in 0..1_000u64 {
            let user = format!("user{}", (line * 7 + file) % 13);
            let amount = (line * 31 + file * 17) % 50;
            text.push_str(&format!("{user},{amount}\n"));
            if amount >= 10 {
                *expected.entry(user).or_default() += amount as i64;
                kept += 1;
            }
        }
        std::fs::write(input.join(format!("part-{file}.csv")), text)?;
    }
    let output = cluster.path().join("sums");
    let spec = serde_json::json!({
        "name": "csv-sums",
        "parallelism": 2,
        "checkpoint": {"interval_ms": 100},
        "operators": [
            {"id": "files", "kind": "file_source", "params": {"path": input.display().to_string()}},
            {"id": "rows", "kind": "map", "inputs": ["files"], "params": {"function": "parse_csv", "fields": ["user", "amount"]}},
            {"id": "big", "kind": "filter", "inputs": ["rows"], "params": {"field": "amount", "op": "ge", "value": 10}},
            {"id": "by_user", "kind": "key_by", "inputs": ["big"], "params": {"field": "user"}},
            {"id": "totals", "kind": "sum", "inputs": ["by_user"], "params": {"field": "amount"}},
            {"id": "out", "kind": "file_sink", "parallelism": 1, "inputs": ["totals"], "params": {"path": output.display().to_string()}}
        ]
    });
    let submitted = client.submit_job(&spec.to_string(), "csv-sums").await?;
    finished(&client, &submitted.job_id).await?;

    // Files in commit order; per key, updates arrive in order, so the last one is the total.
    let mut files: Vec<_> = std::fs::read_dir(&output)?
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "txt"))
        .collect();
    files.sort();
    let mut totals: BTreeMap<String, i64> = BTreeMap::new();
    let mut lines = 0u64;
    for file in files {
        for line in std::fs::read_to_string(file)?.lines() {
            lines += 1;
            let (user, total) = line
                .split_once('\t')
                .ok_or_else(|| anyhow::anyhow!("bad line {line:?}"))?;
            totals.insert(user.to_owned(), total.parse()?);
        }
    }
    assert_eq!(lines, kept, "one update per kept row, exactly once");
    assert_eq!(totals, expected);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_time_windows_are_exact_across_an_executor_kill() -> anyhow::Result<()> {
    use raftstream_api::spec::GeneratorConfig;
    use raftstream_executor::runtime::generator::GeneratedRecords;
    let executors = fast_executors();
    let mut cluster = TestCluster::start_with(test_settings(), executors).await?;
    cluster.cluster.start_executor("exec-a", 2)?;
    cluster.cluster.start_executor("exec-b", 2)?;
    let client = cluster.client()?;
    let (records, rate, vocabulary) = (16_000u64, 4_000u64, 20u64);
    let output = cluster.path().join("windows");
    let spec = serde_json::json!({
        "name": "windowed-counts",
        "parallelism": 2,
        // Every operator in a task of its own: the word count tests cover chains.
        "chaining": false,
        "checkpoint": {"interval_ms": 200},
        "restart": {"strategy": "fixed_delay", "max_attempts": 10, "delay_ms": 100},
        "operators": [
            {"id": "lines", "kind": "generator", "params": {"seed": 5, "count": records, "rate_per_second": rate, "vocabulary_size": vocabulary, "words_per_record": 3}},
            {"id": "words", "kind": "flat_map", "inputs": ["lines"], "params": {"function": "split_words"}},
            {"id": "by_word", "kind": "key_by", "inputs": ["words"]},
            {"id": "per_second", "kind": "tumbling_window", "inputs": ["by_word"], "params": {"size_ms": 1000, "aggregate": "count", "max_out_of_orderness_ms": 50}},
            {"id": "out", "kind": "file_sink", "parallelism": 1, "inputs": ["per_second"], "params": {"path": output.display().to_string()}}
        ]
    });
    // Event time of record n is n * 1000 / rate ms: the expected count of every (word, window).
    let settings = GeneratorConfig {
        seed: 5,
        count: Some(records),
        vocabulary_size: vocabulary,
        words_per_record: 3,
        ..GeneratorConfig::default()
    };
    let mut expected: BTreeMap<(String, i64), u64> = BTreeMap::new();
    let mut line = String::new();
    for offset in 0..records {
        settings.write_record(offset, &mut line);
        let time = (offset as f64 * (1_000.0 / rate as f64)) as i64;
        for word in line.split(' ') {
            *expected.entry((word.to_owned(), time - time % 1_000)).or_default() += 1;
        }
    }

    finished_across_an_executor_kill(
        &mut cluster,
        &client,
        &spec.to_string(),
        "windowed-counts",
        "per_second",
    )
    .await?;

    let mut seen: BTreeMap<(String, i64), u64> = BTreeMap::new();
    let mut lines = 0;
    for entry in std::fs::read_dir(&output)?.flatten() {
        if entry.path().extension().is_none_or(|ext| ext != "txt") {
            continue;
        }
        for text in std::fs::read_to_string(entry.path())?.lines() {
            lines += 1;
            let fields: Vec<&str> = text.split('\t').collect();
            let [word, start, end, count] = fields.as_slice() else {
                anyhow::bail!("bad line {text:?}");
            };
            let start: i64 = start.parse()?;
            assert_eq!(end.parse::<i64>()?, start + 1_000);
            let previous = seen.insert(((*word).to_owned(), start), count.parse()?);
            assert!(previous.is_none(), "window ({word}, {start}) emitted twice");
        }
    }
    assert_eq!(lines, expected.len());
    assert_eq!(seen, expected);
    Ok(())
}

/// A file source is rescaled like any operator: its files' progress moves by file name, so a
/// placement at another parallelism continues each file where the subtask that read it stood.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_source_rescaled_while_it_reads_counts_every_word_once() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start_with(test_settings(), fast_executors()).await?;
    let client = start_executors(&mut cluster, &[("exec-a", 2), ("exec-b", 2)]).await?;
    let input = cluster.path().join("input");
    std::fs::create_dir_all(&input)?;
    // Seven files of different lengths, read at 1,200 lines/s in all: about 9 s, long enough
    // for two rescales, each of which lands in the middle of files.
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for file in 0..7u64 {
        let mut text = String::new();
        for line in 0..(1_200 + 150 * file) {
            let words: Vec<String> = (0..3)
                .map(|word| format!("w{}", (file * 7_919 + line * 31 + word * 13) % 97))
                .collect();
            for word in &words {
                *expected.entry(word.clone()).or_default() += 1;
            }
            text.push_str(&words.join(" "));
            text.push('\n');
        }
        std::fs::write(input.join(format!("part-{file}.txt")), text)?;
    }
    let output = cluster.path().join("counts");
    let spec = serde_json::json!({
        "name": "file-rescale",
        "parallelism": 2,
        "checkpoint": {"interval_ms": 200, "timeout_ms": 10000},
        "operators": [
            {"id": "lines", "kind": "file_source", "params": {"path": input.display().to_string(), "rate_per_second": 1200}},
            {"id": "words", "kind": "flat_map", "inputs": ["lines"], "params": {"function": "split_words"}},
            {"id": "by_word", "kind": "key_by", "inputs": ["words"]},
            {"id": "counts", "kind": "count", "inputs": ["by_word"]},
            {"id": "out", "kind": "file_sink", "inputs": ["counts"], "params": {"path": output.display().to_string()}}
        ]
    });
    let submitted = client.submit_job(&spec.to_string(), "file-rescale").await?;
    let job_id = submitted.job_id.as_str();
    for parallelism in [3u32, 1] {
        // Rescale once the current placement checkpointed some progress.
        let running = eventually("the job to run and checkpoint", Duration::from_secs(60), || async {
            job(&client, job_id)
                .await
                .filter(|job| job.status == "Running" && job.last_checkpoint_id.is_some())
        })
        .await?;
        let last = running.last_checkpoint_id.unwrap_or(0);
        client
            .rescale_job(job_id, None, parallelism, &format!("files-{parallelism}"))
            .await?;
        eventually(
            "the job to run at the new parallelism",
            Duration::from_secs(60),
            || async {
                job(&client, job_id).await.filter(|job| {
                    let sources = job
                        .subtasks
                        .iter()
                        .filter(|subtask| subtask.operator_id == "lines" && !subtask.executor_id.is_empty())
                        .count();
                    matches!(job.status.as_str(), "Running" | "Finished")
                        && sources == parallelism as usize
                        && job.restored_checkpoint_id.unwrap_or(0) > last
                })
            },
        )
        .await?;
    }
    let done = eventually("the job to end", Duration::from_secs(60), || async {
        job(&client, job_id)
            .await
            .filter(|job| matches!(job.status.as_str(), "Finished" | "Failed" | "Cancelled"))
    })
    .await?;
    assert_eq!(done.status, "Finished", "{}", done.status_reason);
    assert_eq!(
        done.restart_count, 0,
        "rescales are not failures: {}",
        done.status_reason
    );
    let rescales = done
        .history
        .iter()
        .filter(|event| event.what.starts_with("rescaled"))
        .count();
    assert_eq!(rescales, 2, "{:?}", done.history);
    ensure_exact_output(&output, &expected)
}
