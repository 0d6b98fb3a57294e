//! `bench functions`: the word count with the built-in operators against the same logic as user
//! functions (split in a flat_map, count in a reduce) in each language whose build tool is
//! installed, interleaved on one executor; lines/s and lines per executor CPU-second, each as a
//! ratio to the built-in.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use raftstream_api::client::ClusterClient;

use super::stream::{cpu_seconds, median_of};
use super::RunToEnd;
use crate::local_cluster::LocalCluster;
use crate::wordcount::{check_output, highest_counts, WordCountJob};

#[derive(Debug, Args)]
pub struct FunctionsBenchArgs {
    /// Generator lines (8 words each) per run of the built-in word count.
    #[arg(long, default_value_t = 1_000_000)]
    pub records: u64,
    /// Lines per run of the word count as JavaScript and Python functions (interpreters are
    /// slower; the rates are per second, so the sizes need not match). Rust runs `--records`.
    #[arg(long, default_value_t = 200_000)]
    pub function_records: u64,
    /// Runs per variant, interleaved across variants; the median is reported.
    #[arg(long, default_value_t = 3)]
    pub repeat: u32,
    /// Languages to measure besides the built-in operators.
    #[arg(long, value_delimiter = ',', default_value = "rust,javascript,python")]
    pub languages: Vec<String>,
    /// Where the cluster's files go (a fresh temporary directory when absent).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// One way of running the word count.
struct Variant {
    label: String,
    /// The function's source; `None` for the built-in operators.
    source: Option<PathBuf>,
    records: u64,
}

struct Measured {
    lines_per_second: f64,
    lines_per_cpu_second: Option<f64>,
    exact: bool,
}

pub async fn run_functions_bench(args: FunctionsBenchArgs) -> anyhow::Result<()> {
    let (mut cluster, client, directory) = super::start_bench_cluster(args.dir.as_deref(), "functions").await?;
    cluster.start_executor("bench-1", 1)?;
    super::wait_for_executor(&client, "bench-1", Duration::from_secs(20)).await?;

    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/functions");
    let mut variants = vec![Variant {
        label: "built-in".to_owned(),
        source: None,
        records: args.records,
    }];
    for language in &args.languages {
        let source = match language.as_str() {
            "javascript" => examples.join("javascript/wordcount.js"),
            "python" => examples.join("python/wordcount.py"),
            "rust" => examples.join("rust/wordcount.rs"),
            other => anyhow::bail!("--languages: {other:?} is not one of javascript, python, rust"),
        };
        // A compiled function runs near the built-in's rate: it gets the built-in's input size.
        let records = if language == "rust" {
            args.records
        } else {
            args.function_records
        };
        variants.push(Variant {
            label: language.clone(),
            source: Some(source),
            records,
        });
    }
    println!(
        "bench functions: word count (generator -> flat_map -> key_by -> count or reduce -> file_sink), lines of 8 words \
         (vocabulary 10,000), parallelism 1, checkpoints every 1 s, one executor, 3 coordinators, all on this machine; \
         built-in {} lines, functions {} lines per run; median of {} interleaved runs",
        args.records,
        args.function_records,
        args.repeat.max(1)
    );
    // Warm-up: process start-up, and each function built, uploaded and compiled once (the
    // executor keeps the compiled code, as it does for a job's restarts).
    let mut built = Vec::new();
    for (index, variant) in variants.iter().enumerate() {
        let warm_up = word_count(&directory, 0, (variant.records / 20).max(1), &format!("warm-{index}"));
        let functions = match &variant.source {
            Some(source) => {
                // The whole job, so the build knows which exports it calls.
                let with_source = serde_json::json!({"wc": {"source": source.display().to_string()}});
                let spec = spec_text(&warm_up, &variant.label, Some(&with_source))?;
                let prepared =
                    crate::cli::functions::prepare_functions(&spec, &directory.join("spec.json"), &client).await?;
                Some(serde_json::from_str::<serde_json::Value>(&prepared)?["functions"].clone())
            }
            None => None,
        };
        let spec = spec_text(&warm_up, &variant.label, functions.as_ref())?;
        run_once(&client, &cluster, variant, &warm_up, &spec, &format!("warm-up-{index}")).await?;
        built.push(functions);
    }
    let mut results: BTreeMap<usize, Vec<Measured>> = BTreeMap::new();
    let mut run = 0u64;
    for _ in 0..args.repeat.max(1) {
        for (index, variant) in variants.iter().enumerate() {
            run += 1;
            let job = word_count(&directory, run, variant.records, &format!("out-{run}"));
            let spec = spec_text(&job, &variant.label, built[index].as_ref())?;
            let measured = run_once(&client, &cluster, variant, &job, &spec, &format!("bench-{run}")).await?;
            println!(
                "   run {run}: {:<10} {:>10.0} lines/s{}",
                variant.label,
                measured.lines_per_second,
                if measured.exact { "" } else { "  OUTPUT NOT EXACT" }
            );
            results.entry(index).or_default().push(measured);
        }
    }
    println!(
        "{:<10} {:>12} {:>12} {:>16} {:>10} {:>14} {:>6}",
        "variant", "lines/s", "words/s", "lines/exec-cpu-s", "ratio", "ratio per cpu", "exact"
    );
    let medians: Vec<(Option<f64>, Option<f64>, bool)> = variants
        .iter()
        .enumerate()
        .map(|(index, _)| {
            let runs = results.remove(&index).unwrap_or_default();
            (
                median_of(runs.iter().map(|run| run.lines_per_second).collect()),
                median_of(runs.iter().filter_map(|run| run.lines_per_cpu_second).collect()),
                runs.iter().all(|run| run.exact),
            )
        })
        .collect();
    let (base_rate, base_cpu, _) = medians.first().copied().unwrap_or((None, None, false));
    for (variant, (rate, per_cpu, exact)) in variants.iter().zip(&medians) {
        let ratio = |value: Option<f64>, base: Option<f64>| match (value, base) {
            (Some(value), Some(base)) if base > 0.0 => format!("{:.4}", value / base),
            _ => "n/a".to_owned(),
        };
        println!(
            "{:<10} {:>12.0} {:>12.0} {:>16} {:>10} {:>14} {:>6}",
            variant.label,
            rate.unwrap_or(0.0),
            rate.unwrap_or(0.0) * 8.0,
            per_cpu.map_or_else(|| "n/a".to_owned(), |rate| format!("{rate:.0}")),
            ratio(*rate, base_rate),
            ratio(*per_cpu, base_cpu),
            if *exact { "yes" } else { "NO" },
        );
    }
    drop(cluster);
    if args.dir.is_none() {
        let _ = std::fs::remove_dir_all(&directory);
    }
    Ok(())
}

fn word_count(directory: &Path, seed: u64, records: u64, output: &str) -> WordCountJob {
    WordCountJob {
        seed,
        records,
        rate_per_second: None,
        parallelism: 1,
        vocabulary_size: 10_000,
        words_per_record: 8,
        checkpoint_interval_ms: 1_000,
        output_dir: directory.join(output),
    }
}

/// The spec of `job`: the built-in word count, or with its split and count replaced by the
/// function `wc` of `functions` (the spec's section, built and uploaded once).
fn spec_text(job: &WordCountJob, name: &str, functions: Option<&serde_json::Value>) -> anyhow::Result<String> {
    let Some(functions) = functions else {
        return Ok(job.spec(name));
    };
    let mut spec: serde_json::Value = serde_json::from_str(&job.spec(name))?;
    spec["functions"] = functions.clone();
    spec["operators"][1]["params"] = serde_json::json!({"udf": "wc"});
    spec["operators"][3]["kind"] = serde_json::json!("reduce");
    spec["operators"][3]["params"] = serde_json::json!({"udf": "wc"});
    Ok(spec.to_string())
}

async fn run_once(
    client: &ClusterClient,
    cluster: &LocalCluster,
    variant: &Variant,
    job: &WordCountJob,
    spec: &str,
    name: &str,
) -> anyhow::Result<Measured> {
    let executor_pid = cluster.executor("bench-1").and_then(|executor| executor.pid());
    let cpu_before = executor_pid.and_then(cpu_seconds);
    let submitted = client.submit_job(spec, name).await?;
    let mut run = RunToEnd::new(&submitted.job_id);
    let seconds = loop {
        if let Some(seconds) = run.poll(client).await? {
            break seconds;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let executor_cpu = executor_pid
        .and_then(cpu_seconds)
        .zip(cpu_before)
        .map(|(after, before)| after - before)
        .filter(|cpu| *cpu > 0.0);
    let exact = match variant.source {
        None => {
            let check = check_output(&job.output_dir, &job.expected_counts())?;
            check.is_exact() && check.lines == job.records * 8
        }
        // A user reduce publishes each key's count once per batch: the final counts must match.
        Some(_) => highest_counts(&job.output_dir)? == job.expected_counts(),
    };
    let _ = std::fs::remove_dir_all(&job.output_dir);
    Ok(Measured {
        lines_per_second: job.records as f64 / seconds,
        lines_per_cpu_second: executor_cpu.map(|cpu| job.records as f64 / cpu),
        exact,
    })
}
