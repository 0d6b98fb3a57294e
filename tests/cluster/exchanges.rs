//! The exchanges besides key_by (`rebalance`, `rescale`, `broadcast`, a salted `key_by`), end to
//! end on executors: every record crosses each of them exactly once (a broadcast: once per
//! consumer subtask), across a kill -9 and a restart from a checkpoint.

use std::collections::BTreeMap;
use std::path::Path;

use raftstream_api::spec::GeneratorConfig;
use raftstream_executor::runtime::generator::GeneratedRecords;

use crate::common::{fast_executors, finished_across_an_executor_kill, test_settings, TestCluster};

/// Every published line of the file sink in `dir`, with how often it was published.
fn published_lines(dir: &Path) -> anyhow::Result<BTreeMap<String, u64>> {
    let mut lines = BTreeMap::new();
    for entry in std::fs::read_dir(dir)?.flatten() {
        if entry.path().extension().is_none_or(|ext| ext != "txt") {
            continue;
        }
        for line in std::fs::read_to_string(entry.path())?.lines() {
            *lines.entry(line.to_owned()).or_default() += 1;
        }
    }
    Ok(lines)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_exchange_delivers_each_record_once_across_a_kill_and_restart() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start_with(test_settings(), fast_executors()).await?;
    cluster.cluster.start_executor("exec-a", 4)?;
    cluster.cluster.start_executor("exec-b", 4)?;
    let client = cluster.client()?;
    let (records, rate) = (12_000u64, 3_000u64);
    let out = |name: &str| cluster.path().join(name).display().to_string();
    let generator = serde_json::json!({"seed": 9, "count": records, "rate_per_second": rate, "vocabulary_size": 500, "words_per_record": 3});
    let spec = serde_json::json!({
        "name": "exchanges",
        "parallelism": 2,
        "checkpoint": {"interval_ms": 200},
        "restart": {"strategy": "fixed_delay", "max_attempts": 10, "delay_ms": 100},
        "operators": [
            {"id": "lines", "kind": "generator", "params": generator},
            // Round robin from 2 to 3 subtasks.
            {"id": "spread", "kind": "rebalance", "inputs": ["lines"]},
            {"id": "upper", "kind": "map", "inputs": ["spread"], "parallelism": 3, "params": {"function": "uppercase"}},
            {"id": "out_rebalance", "kind": "file_sink", "parallelism": 1, "inputs": ["upper"], "params": {"path": out("rebalance")}},
            // Each of 2 subtasks feeds its own 2 of 4.
            {"id": "local", "kind": "rescale", "inputs": ["lines"]},
            {"id": "trimmed", "kind": "map", "inputs": ["local"], "parallelism": 4, "params": {"function": "trim"}},
            {"id": "out_rescale", "kind": "file_sink", "parallelism": 4, "inputs": ["trimmed"], "params": {"path": out("rescale")}},
            // Every record to each of 3 subtasks.
            {"id": "everyone", "kind": "broadcast", "inputs": ["lines"]},
            {"id": "lower", "kind": "map", "inputs": ["everyone"], "parallelism": 3, "params": {"function": "lowercase"}},
            {"id": "out_broadcast", "kind": "file_sink", "parallelism": 1, "inputs": ["lower"], "params": {"path": out("broadcast")}},
            // Each line's records over 3 key groups in turn.
            {"id": "salted", "kind": "key_by", "inputs": ["lines"], "params": {"hash": "salted"}},
            {"id": "out_salted", "kind": "file_sink", "parallelism": 3, "inputs": ["salted"], "params": {"path": out("salted")}}
        ]
    });
    let settings = GeneratorConfig {
        seed: 9,
        count: Some(records),
        vocabulary_size: 500,
        words_per_record: 3,
        ..GeneratorConfig::default()
    };
    let mut input: BTreeMap<String, u64> = BTreeMap::new();
    let mut line = String::new();
    for offset in 0..records {
        settings.write_record(offset, &mut line);
        *input.entry(line.clone()).or_default() += 1;
    }

    finished_across_an_executor_kill(&mut cluster, &client, &spec.to_string(), "exchanges", "lines").await?;

    let transformed = |change: fn(&str) -> String, copies: u64| -> BTreeMap<String, u64> {
        input
            .iter()
            .map(|(line, count)| (change(line), count * copies))
            .collect()
    };
    let checks = [
        ("rebalance", transformed(|line| line.to_uppercase(), 1)),
        ("rescale", transformed(|line| line.trim().to_owned(), 1)),
        ("broadcast", transformed(|line| line.to_lowercase(), 3)),
        // A key_by without a field keys by the value: the sink writes key, tab, value.
        ("salted", transformed(|line| format!("{line}\t{line}"), 1)),
    ];
    for (exchange, expected) in checks {
        let published = published_lines(&cluster.path().join(exchange))?;
        let total: u64 = published.values().sum();
        let wanted: u64 = expected.values().sum();
        assert!(
            published == expected,
            "{exchange}: {total} lines published, {wanted} expected; first difference: {:?}",
            expected
                .iter()
                .find(|(line, count)| published.get(*line) != Some(count))
                .map(|(line, count)| (line, count, published.get(line)))
        );
    }
    Ok(())
}
