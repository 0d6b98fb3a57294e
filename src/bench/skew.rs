//! `raftstream bench skew`: a skewed word count (one word is `--hot-percent` of all words) on a
//! local cluster of real processes, one-phase against two-phase aggregation, interleaved, at each
//! parallelism: lines/s from Running to Finished, the share of the count's input that its hottest
//! subtask took and how many records reached the count (as the executors last reported them),
//! the hottest keys as `job status` shows them, and whether the output was exact.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;
use raftstream_api::client::ClusterClient;
use raftstream_api::spec::GeneratorConfig;
use raftstream_executor::runtime::generator::GeneratedRecords;
use raftstream_proto::v1 as pb;

use super::RunToEnd;
use crate::local_cluster::poll_until;
use crate::wordcount::highest_counts;

/// Options of `bench skew`.
#[derive(Debug, Args)]
pub struct SkewBenchArgs {
    /// Generator lines (of 8 words) per run.
    #[arg(long, default_value_t = 2_000_000)]
    pub records: u64,
    /// Parallelism levels.
    #[arg(long, value_delimiter = ',', default_value = "2,4")]
    pub parallelism: Vec<u32>,
    /// The share of all words that is the hot word `w0`, in percent.
    #[arg(long, default_value_t = 90)]
    pub hot_percent: u64,
    /// Runs per setting, interleaved; the median is reported.
    #[arg(long, default_value_t = 3)]
    pub repeat: u32,
    /// Where the cluster's files go (a fresh temporary directory when absent).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

const VOCABULARY: u64 = 10_000;
const WORDS_PER_LINE: u64 = 8;

fn spec(name: &str, args: &SkewBenchArgs, parallelism: u32, two_phase: bool, output: &Path) -> String {
    let counts_params = if two_phase {
        serde_json::json!({"two_phase": true})
    } else {
        serde_json::json!({})
    };
    serde_json::json!({
        "name": name,
        "parallelism": parallelism,
        "checkpoint": {"interval_ms": 1_000},
        "operators": [
            {"id": "lines", "kind": "generator", "params": {"seed": 1, "count": args.records, "vocabulary_size": VOCABULARY, "words_per_record": WORDS_PER_LINE, "hot_word_percent": args.hot_percent}},
            {"id": "words", "kind": "flat_map", "inputs": ["lines"], "params": {"function": "split_words"}},
            {"id": "by_word", "kind": "key_by", "inputs": ["words"]},
            {"id": "counts", "kind": "count", "inputs": ["by_word"], "params": counts_params},
            {"id": "out", "kind": "file_sink", "inputs": ["counts"], "params": {"path": output.display().to_string()}}
        ]
    })
    .to_string()
}

/// What one run measured.
struct SkewRun {
    lines_per_second: f64,
    /// Of the count's input at the last report: the hottest subtask's share, and the total.
    hot_share: f64,
    counts_input: u64,
    /// The hottest keys with their share, as `job status` lists them.
    hot_keys: Vec<(String, f64)>,
    exact: bool,
}

/// The count's subtasks in `metrics`: (hottest subtask's share of their input, their input,
/// hottest keys over all of them).
fn counts_view(metrics: &[pb::SubtaskMetrics]) -> (f64, u64, Vec<(String, f64)>) {
    let counts: Vec<&pb::SubtaskMetrics> = metrics
        .iter()
        .filter(|m| m.task.as_ref().is_some_and(|task| task.operator_id == "counts"))
        .collect();
    let total: u64 = counts.iter().map(|m| m.records_in).sum();
    let hottest = counts.iter().map(|m| m.records_in).max().unwrap_or(0);
    let counted: u64 = counts.iter().map(|m| m.keys_counted).sum();
    let mut keys: BTreeMap<String, u64> = BTreeMap::new();
    for hot in counts.iter().flat_map(|m| &m.hot_keys) {
        *keys.entry(hot.key.clone()).or_default() += hot.count;
    }
    let mut keys: Vec<(String, f64)> = keys
        .into_iter()
        .map(|(key, count)| (key, count as f64 / counted.max(1) as f64))
        .collect();
    keys.sort_by(|a, b| b.1.total_cmp(&a.1));
    keys.truncate(3);
    (hottest as f64 / total.max(1) as f64, total, keys)
}

async fn skew_run(
    client: &ClusterClient,
    spec_text: &str,
    name: &str,
    args: &SkewBenchArgs,
    output: &Path,
    expected: &BTreeMap<String, u64>,
) -> anyhow::Result<SkewRun> {
    let submitted = client.submit_job(spec_text, name).await?;
    let mut run = RunToEnd::new(&submitted.job_id);
    let mut last_metrics: Vec<pb::SubtaskMetrics> = Vec::new();
    let mut metrics_read = Instant::now();
    let seconds = loop {
        if let Some(seconds) = run.poll(client).await? {
            break seconds;
        }
        // Finished tasks report nothing: keep the last report that had the count in it.
        if metrics_read.elapsed() >= Duration::from_millis(300) {
            metrics_read = Instant::now();
            if let Ok(metrics) = client
                .get_job_metrics(&submitted.job_id)
                .await
                .map(|reply| reply.subtasks)
            {
                if counts_view(&metrics).1 > 0 {
                    last_metrics = metrics;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let (hot_share, counts_input, hot_keys) = counts_view(&last_metrics);
    let exact = highest_counts(output)? == *expected;
    Ok(SkewRun {
        lines_per_second: args.records as f64 / seconds,
        hot_share,
        counts_input,
        hot_keys,
        exact,
    })
}

/// Runs the benchmark and prints its figures.
pub async fn run_skew_bench(args: SkewBenchArgs) -> anyhow::Result<()> {
    let (mut cluster, client, directory) = crate::bench::start_bench_cluster(args.dir.as_deref(), "skew").await?;
    // One slot per slice: room for the job at the highest parallelism measured.
    cluster.start_executor("bench-1", args.parallelism.iter().copied().max().unwrap_or(1))?;
    poll_until("the executor to connect", Duration::from_secs(20), || async {
        let listed = client.list_executors().await.ok()?;
        listed.executors.iter().any(|e| e.connected).then_some(())
    })
    .await?;

    let generator = GeneratorConfig {
        seed: 1,
        count: Some(args.records),
        vocabulary_size: VOCABULARY,
        words_per_record: WORDS_PER_LINE,
        hot_word_percent: args.hot_percent,
        ..GeneratorConfig::default()
    };
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    let mut line = String::new();
    for offset in 0..args.records {
        generator.write_record(offset, &mut line);
        for word in line.split(' ') {
            *expected.entry(word.to_owned()).or_default() += 1;
        }
    }
    println!(
        "bench skew: word count of {} lines of {WORDS_PER_LINE} words, w0 {} % of the words (vocabulary {VOCABULARY}), \
         checkpoints every second, one executor, 3 coordinators, all on this machine; median of {} runs, \
         one- and two-phase interleaved",
        args.records,
        args.hot_percent,
        args.repeat.max(1)
    );
    println!(
        "{:>12} {:>10} {:>12} {:>12} {:>14} {:>16} {:>6}   hottest keys (last run)",
        "parallelism", "count", "lines/s", "words/s", "count input", "hot subtask", "exact"
    );
    let mut run = 0;
    for parallelism in &args.parallelism {
        let mut results: BTreeMap<bool, Vec<SkewRun>> = BTreeMap::new();
        for _ in 0..args.repeat.max(1) {
            for two_phase in [false, true] {
                run += 1;
                let output = directory.join(format!("out-{run}"));
                let name = format!("skew-{run}");
                let text = spec(&name, &args, *parallelism, two_phase, &output);
                let measured = skew_run(&client, &text, &name, &args, &output, &expected).await?;
                results.entry(two_phase).or_default().push(measured);
                let _ = std::fs::remove_dir_all(&output);
            }
        }
        for (two_phase, mut runs) in results {
            let exact = runs.iter().all(|run| run.exact);
            let last_keys = runs
                .last()
                .map(|run| {
                    run.hot_keys
                        .iter()
                        .map(|(key, share)| format!("{key} {:.1}%", share * 100.0))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default();
            runs.sort_by(|a, b| a.lines_per_second.total_cmp(&b.lines_per_second));
            let Some(median) = runs.get(runs.len() / 2) else {
                continue;
            };
            println!(
                "{:>12} {:>10} {:>12.0} {:>12.0} {:>14} {:>15.1}% {:>6}   {last_keys}",
                parallelism,
                if two_phase { "two-phase" } else { "one-phase" },
                median.lines_per_second,
                median.lines_per_second * WORDS_PER_LINE as f64,
                median.counts_input,
                median.hot_share * 100.0,
                if exact { "yes" } else { "NO" },
            );
        }
    }
    println!(
        "(count input: records into the count's subtasks and the hottest one's share, as last reported before the \
         end; two-phase sends partials, so far fewer)"
    );
    drop(cluster);
    if args.dir.is_none() {
        let _ = std::fs::remove_dir_all(&directory);
    }
    Ok(())
}
