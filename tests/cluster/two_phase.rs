//! Two-phase aggregation on a skewed stream (one word is 90 % of all words), end to end on
//! executors: a two-phase count and a two-phase tumbling window publish exactly what the
//! one-phase operators would, across a kill -9 of an executor and a restart from a checkpoint,
//! while the hot key reaches its keyed subtask as a few partials instead of every record.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use raftstream_api::spec::GeneratorConfig;
use raftstream_executor::runtime::generator::GeneratedRecords;
use raftstream_proto::v1 as pb;

use crate::common::{eventually, fast_executors, finished_across_an_executor_kill, test_settings, TestCluster};

/// The published lines of the file sink in `dir`, split at tabs, in commit order (the files
/// sort by subtask and checkpoint; these sinks have one subtask).
fn published_rows(dir: &Path) -> anyhow::Result<Vec<Vec<String>>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)?
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "txt"))
        .collect();
    files.sort();
    let mut rows = Vec::new();
    for file in files {
        for line in std::fs::read_to_string(file)?.lines() {
            rows.push(line.split('\t').map(str::to_owned).collect());
        }
    }
    Ok(rows)
}

/// The final count of every word from a running count's updates, checking that each word's
/// updates only grow (a replayed partial would repeat or jump back); and how many updates the
/// hot word got.
fn final_counts(dir: &Path, name: &str) -> anyhow::Result<(BTreeMap<String, u64>, usize)> {
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    let mut hot_updates = 0;
    for row in published_rows(dir)? {
        let [word, count] = row.as_slice() else {
            anyhow::bail!("{name}: bad line {row:?}");
        };
        let count: u64 = count.parse()?;
        let previous = counts.insert(word.clone(), count).unwrap_or(0);
        anyhow::ensure!(
            count > previous,
            "{name}: {word} went from {previous} to {count}: an update was published twice"
        );
        if word == "w0" {
            hot_updates += 1;
        }
    }
    Ok((counts, hot_updates))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_phase_count_and_window_equal_one_phase_on_a_hot_key_across_a_kill() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start_with(test_settings(), fast_executors()).await?;
    cluster.cluster.start_executor("exec-a", 2)?;
    cluster.cluster.start_executor("exec-b", 2)?;
    let client = cluster.client()?;
    let (records, rate, vocabulary, words) = (20_000u64, 4_000u64, 50u64, 4u64);
    let out = |name: &str| cluster.path().join(name).display().to_string();
    let spec = serde_json::json!({
        "name": "skewed",
        "parallelism": 2,
        "checkpoint": {"interval_ms": 200},
        "restart": {"strategy": "fixed_delay", "max_attempts": 10, "delay_ms": 100},
        "operators": [
            {"id": "lines", "kind": "generator", "params": {"seed": 3, "count": records, "rate_per_second": rate, "vocabulary_size": vocabulary, "words_per_record": words, "hot_word_percent": 90}},
            {"id": "words", "kind": "flat_map", "inputs": ["lines"], "params": {"function": "split_words"}},
            {"id": "by_word", "kind": "key_by", "inputs": ["words"]},
            {"id": "one_phase", "kind": "count", "inputs": ["by_word"]},
            {"id": "out_one_phase", "kind": "file_sink", "parallelism": 1, "inputs": ["one_phase"], "params": {"path": out("one_phase")}},
            {"id": "two_phase", "kind": "count", "inputs": ["by_word"], "params": {"two_phase": true, "flush_ms": 50}},
            {"id": "out_two_phase", "kind": "file_sink", "parallelism": 1, "inputs": ["two_phase"], "params": {"path": out("two_phase")}},
            {"id": "per_second", "kind": "tumbling_window", "inputs": ["by_word"], "params": {"size_ms": 1000, "aggregate": "count", "max_out_of_orderness_ms": 50, "two_phase": true}},
            {"id": "out_windows", "kind": "file_sink", "parallelism": 1, "inputs": ["per_second"], "params": {"path": out("windows")}}
        ]
    });
    let settings = GeneratorConfig {
        seed: 3,
        count: Some(records),
        vocabulary_size: vocabulary,
        words_per_record: words,
        hot_word_percent: 90,
        ..GeneratorConfig::default()
    };
    // Event time of record n is n * 1000 / rate ms.
    let mut expected_counts: BTreeMap<String, u64> = BTreeMap::new();
    let mut expected_windows: BTreeMap<(String, i64), u64> = BTreeMap::new();
    let mut line = String::new();
    for offset in 0..records {
        settings.write_record(offset, &mut line);
        let time = (offset as f64 * (1_000.0 / rate as f64)) as i64;
        for word in line.split(' ') {
            *expected_counts.entry(word.to_owned()).or_default() += 1;
            *expected_windows
                .entry((word.to_owned(), time - time % 1_000))
                .or_default() += 1;
        }
    }
    let hot_share = expected_counts.get("w0").copied().unwrap_or(0) as f64 / (records * words) as f64;
    assert!(
        hot_share > 0.85,
        "the generator's hot word is {:.0} % of the words",
        hot_share * 100.0
    );

    finished_across_an_executor_kill(&mut cluster, &client, &spec.to_string(), "skewed", "two_phase").await?;

    let (one_phase, one_phase_hot_updates) = final_counts(&cluster.path().join("one_phase"), "one-phase")?;
    let (two_phase, two_phase_hot_updates) = final_counts(&cluster.path().join("two_phase"), "two-phase")?;
    assert_eq!(one_phase, expected_counts, "one-phase counts");
    assert_eq!(two_phase, one_phase, "two-phase counts equal the one-phase ones");
    // The one-phase count publishes one update per hot word; the two-phase one one per partial.
    assert!(
        two_phase_hot_updates * 20 < one_phase_hot_updates,
        "the hot word reached the two-phase count as {two_phase_hot_updates} partials against {one_phase_hot_updates} records"
    );

    let mut windows: BTreeMap<(String, i64), u64> = BTreeMap::new();
    for row in published_rows(&cluster.path().join("windows"))? {
        let [word, start, end, count] = row.as_slice() else {
            anyhow::bail!("bad window line {row:?}");
        };
        let start: i64 = start.parse()?;
        assert_eq!(end.parse::<i64>()?, start + 1_000);
        let previous = windows.insert((word.clone(), start), count.parse()?);
        assert!(previous.is_none(), "window ({word}, {start}) published twice");
    }
    assert_eq!(windows, expected_windows, "two-phase windows");
    Ok(())
}

/// Before choosing `two_phase`, a user sees the skew: `job status` shows each subtask's records
/// and busy time, and the hottest keys of the keyed operator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_status_shows_the_hot_key_and_the_subtask_it_overloads() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start_with(test_settings(), fast_executors()).await?;
    cluster.cluster.start_executor("exec-a", 2)?;
    cluster.cluster.start_executor("exec-b", 2)?;
    let client = cluster.client()?;
    let coordinators = cluster.cluster.addresses().join(",");
    let spec = serde_json::json!({
        "name": "skew-shown",
        "parallelism": 2,
        "checkpoint": {"interval_ms": 500},
        "operators": [
            {"id": "lines", "kind": "generator", "params": {"seed": 4, "rate_per_second": 2_000, "vocabulary_size": 1_000, "words_per_record": 4, "hot_word_percent": 90}},
            {"id": "words", "kind": "flat_map", "inputs": ["lines"], "params": {"function": "split_words"}},
            {"id": "by_word", "kind": "key_by", "inputs": ["words"]},
            {"id": "counts", "kind": "count", "inputs": ["by_word"]},
            {"id": "out", "kind": "print", "inputs": ["counts"]}
        ]
    });
    let submitted = client.submit_job(&spec.to_string(), "skew-shown").await?;
    let job_id = submitted.job_id.clone();
    // Metrics reach the leader about once a second; wait until the counts have seen enough
    // words for the sampled sketch (one in 64) to tell the hot word's share.
    let status = eventually(
        "job status to show the counts' input",
        Duration::from_secs(60),
        || async {
            let output = crate::common::run_cli(&[
                "job",
                "status",
                &job_id,
                "--coordinators",
                &coordinators,
                "--output",
                "json",
            ])
            .ok()?;
            let status: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
            let counted: u64 = status["metrics"]
                .as_array()?
                .iter()
                .filter(|subtask| {
                    subtask["subtask"]
                        .as_str()
                        .is_some_and(|name| name.starts_with("counts["))
                })
                .filter_map(|subtask| subtask["records_in"].as_u64())
                .sum();
            (counted >= 16_000).then_some(status)
        },
    )
    .await?;
    let hottest = &status["hot_keys"]["counts"][0];
    assert_eq!(hottest["key"], "w0", "{status}");
    let share = hottest["share"].as_f64().unwrap_or(0.0);
    assert!((0.8..=1.0).contains(&share), "w0's share of the counts' input: {share}");
    let inputs: Vec<u64> = status["metrics"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|subtask| {
            subtask["subtask"]
                .as_str()
                .is_some_and(|name| name.starts_with("counts["))
        })
        .filter_map(|subtask| subtask["records_in"].as_u64())
        .collect();
    assert_eq!(inputs.len(), 2, "{status}");
    let (hot, cold) = (
        inputs.iter().max().copied().unwrap_or(0),
        inputs.iter().min().copied().unwrap_or(0),
    );
    assert!(
        hot > 4 * cold,
        "the subtask owning w0 gets most of the input: {inputs:?}"
    );
    // The source's task reports what it read and that the flat_map and key_by run in it.
    let source = status["metrics"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|subtask| subtask["subtask"] == "lines[0]")
        .cloned()
        .unwrap_or_default();
    assert!(source["records_in"].as_u64().unwrap_or(0) > 0, "{source}");
    assert_eq!(source["chained"], serde_json::json!(["words", "by_word"]));

    let table = crate::common::run_cli(&["job", "status", &job_id, "--coordinators", &coordinators])?;
    let text = crate::common::stdout_of(&table);
    assert!(text.contains("hot keys:") && text.contains("counts: w0"), "{text}");
    assert!(text.contains("BUSY") && text.contains("(in lines)"), "{text}");
    Ok(())
}

/// `two_phase: auto` starts one-phase, switches when one subtask takes more than its skew factor
/// times the mean input, says so in the job's history, and the counts stay exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_phase_auto_switches_on_a_hot_key_and_stays_exact() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start_with(test_settings(), fast_executors()).await?;
    cluster.cluster.start_executor("exec-a", 2)?;
    cluster.cluster.start_executor("exec-b", 2)?;
    let client = cluster.client()?;
    let (records, rate, vocabulary, words) = (48_000u64, 4_000u64, 50u64, 4u64);
    let output = cluster.path().join("counts");
    let spec = serde_json::json!({
        "name": "auto-two-phase",
        "parallelism": 2,
        "checkpoint": {"interval_ms": 200},
        "operators": [
            {"id": "lines", "kind": "generator", "params": {"seed": 8, "count": records, "rate_per_second": rate, "vocabulary_size": vocabulary, "words_per_record": words, "hot_word_percent": 90}},
            {"id": "words", "kind": "flat_map", "inputs": ["lines"], "params": {"function": "split_words"}},
            {"id": "by_word", "kind": "key_by", "inputs": ["words"]},
            // At parallelism 2 the hot subtask takes at most twice the mean: a lower factor.
            {"id": "counts", "kind": "count", "inputs": ["by_word"], "params": {"two_phase": "auto", "skew_factor": 1.5}},
            {"id": "out", "kind": "file_sink", "parallelism": 1, "inputs": ["counts"], "params": {"path": output.display().to_string()}}
        ]
    });
    let settings = GeneratorConfig {
        seed: 8,
        count: Some(records),
        vocabulary_size: vocabulary,
        words_per_record: words,
        hot_word_percent: 90,
        ..GeneratorConfig::default()
    };
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    let mut line = String::new();
    for offset in 0..records {
        settings.write_record(offset, &mut line);
        for word in line.split(' ') {
            *expected.entry(word.to_owned()).or_default() += 1;
        }
    }
    let submitted = client.submit_job(&spec.to_string(), "auto-two-phase").await?;
    let switched = eventually("the count to switch to two phases", Duration::from_secs(60), || async {
        client
            .get_job(&submitted.job_id, pb::ReadConsistency::Linearizable)
            .await
            .ok()
            .filter(|job| job.history.iter().any(|event| event.what.contains("two-phase")))
    })
    .await?;
    let event = switched
        .history
        .iter()
        .find(|event| event.what.contains("two-phase"))
        .map(|event| event.what.clone())
        .unwrap_or_default();
    assert!(event.contains("counts") && event.contains("mean input"), "{event}");
    let done = eventually("the job to end", Duration::from_secs(90), || async {
        client
            .get_job(&submitted.job_id, pb::ReadConsistency::Linearizable)
            .await
            .ok()
            .filter(|job| matches!(job.status.as_str(), "Finished" | "Failed" | "Cancelled"))
    })
    .await?;
    assert_eq!(done.status, "Finished", "{}", done.status_reason);
    assert_eq!(done.restart_count, 0, "a switch is not a failure");
    let graph: serde_json::Value = serde_json::from_str(&done.graph_json)?;
    let counts = graph["operators"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|operator| operator["id"] == "counts")
        .cloned()
        .unwrap_or_default();
    assert_eq!(counts["params"]["two_phase"], true, "{counts}");
    let (published, _) = final_counts(&output, "auto")?;
    assert_eq!(published, expected);
    Ok(())
}
