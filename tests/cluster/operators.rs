//! Operators beyond the word count, end to end on executors: a file source read in parallel,
//! CSV parsing, a filter and a key on a field, and a keyed running sum into the file sink.

use std::collections::BTreeMap;
use std::time::Duration;

use raftstream_coordinator::leader::ExecutorSettings;
use raftstream_proto::v1 as pb;

use crate::common::{eventually, test_settings, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_files_are_filtered_keyed_and_summed_exactly() -> anyhow::Result<()> {
    let executors = ExecutorSettings {
        heartbeat_interval_ms: 100,
        lease_timeout_ms: 1_000,
        scheduling_interval_ms: 50,
    };
    let mut cluster = TestCluster::start_with(test_settings(), executors).await?;
    cluster.cluster.start_executor("exec-a", 8)?;
    cluster.cluster.start_executor("exec-b", 8)?;
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
    let done = eventually("the job to end", Duration::from_secs(60), || async {
        client
            .get_job(&submitted.job_id, pb::ReadConsistency::Linearizable)
            .await
            .ok()
            .filter(|job| matches!(job.status.as_str(), "Finished" | "Failed" | "Cancelled"))
    })
    .await?;
    assert_eq!(done.status, "Finished", "{}", done.status_reason);

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
