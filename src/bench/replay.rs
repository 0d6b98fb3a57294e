//! `raftstream bench replay`: how many records a kill -9 makes the job process a second time, with
//! checkpoints triggered by time only and with `max_records` besides, at a source emitting far more
//! per interval than the bound (`--rate`).
//!
//! The job counts words and prints every count update (`word<TAB>n`) into its executor's log; a
//! record processed again after a restore prints its line a second time, so the replays are the
//! printed lines beyond their first, over every executor's log (the killed one's included: logs
//! are appended across restarts and printing is line-buffered).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use raftstream_api::client::ClusterClient;

use crate::bench::stream::job;
use crate::local_cluster::{poll_until, LocalCluster};

/// Options of `bench replay`.
#[derive(Debug, Args)]
pub struct ReplayBenchArgs {
    /// The checkpoint interval of both jobs.
    #[arg(long, default_value_t = 5_000)]
    pub interval_ms: u64,
    /// The record bound of the second job.
    #[arg(long, default_value_t = 10_000)]
    pub max_records: u64,
    /// Kills per job.
    #[arg(long, default_value_t = 3)]
    pub kills: u32,
    /// Generator lines per second: far above what the record bound lets through per interval.
    #[arg(long, default_value_t = 200_000)]
    pub rate: u64,
    /// How long after a completed checkpoint each kill comes, as a share of the interval.
    #[arg(long, default_value_t = 0.8)]
    pub kill_at: f64,
    /// Where the cluster's files go (a fresh temporary directory when absent).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

const PATIENCE: Duration = Duration::from_secs(60);
const EXECUTORS: [&str; 2] = ["replay-a", "replay-b"];

fn spec(name: &str, prefix: &str, args: &ReplayBenchArgs, max_records: Option<u64>) -> String {
    let interval_ms = args.interval_ms;
    let mut checkpoint = serde_json::json!({"interval_ms": interval_ms, "timeout_ms": 30_000});
    if let Some(max_records) = max_records {
        checkpoint["max_records"] = serde_json::json!(max_records);
    }
    serde_json::json!({
        "name": name,
        "parallelism": 1,
        "checkpoint": checkpoint,
        "restart": {"strategy": "fixed_delay", "max_attempts": 100, "delay_ms": 0},
        "operators": [
            {"id": "lines", "kind": "generator", "params": {"seed": 5, "vocabulary_size": 500, "words_per_record": 1, "rate_per_second": args.rate}},
            {"id": "by_word", "kind": "key_by", "inputs": ["lines"]},
            {"id": "counts", "kind": "count", "inputs": ["by_word"]},
            {"id": "out", "kind": "print", "inputs": ["counts"], "params": {"prefix": prefix}}
        ]
    })
    .to_string()
}

/// Lines printed with `prefix` over every executor's log, and how many of them were printed
/// before (replays). Each word's updates count 1, 2, .. N exactly once in the committed order, so
/// the lines beyond the highest count of each word are the replays (no line kept in memory: the
/// logs reach gigabytes).
fn printed(cluster: &LocalCluster, prefix: &str) -> anyhow::Result<(u64, u64)> {
    use std::io::BufRead;
    let mut highest: HashMap<String, u64> = HashMap::new();
    let mut total = 0u64;
    for executor_id in cluster.executor_ids() {
        let Some(executor) = cluster.executor(&executor_id) else {
            continue;
        };
        let log = std::fs::File::open(executor.log_path())
            .with_context(|| format!("reading {}", executor.log_path().display()))?;
        for line in std::io::BufReader::new(log).lines() {
            let line = line?;
            let Some((word, count)) = line.strip_prefix(prefix).and_then(|update| update.split_once('\t')) else {
                continue;
            };
            let count: u64 = count
                .trim()
                .parse()
                .with_context(|| format!("a count update that is not a count: {line:?}"))?;
            total += 1;
            let seen = highest.entry(word.to_owned()).or_default();
            *seen = (*seen).max(count);
        }
    }
    let distinct: u64 = highest.values().sum();
    Ok((total, total.saturating_sub(distinct)))
}

/// What one job's kills replayed.
struct KillOutcome {
    replayed: u64,
    restored_from: u64,
    trigger: String,
}

async fn kill_rounds(
    cluster: &mut LocalCluster,
    client: &ClusterClient,
    args: &ReplayBenchArgs,
    name: &str,
    max_records: Option<u64>,
) -> anyhow::Result<(Vec<KillOutcome>, u64)> {
    let prefix = format!("{name}\t");
    let submitted = client.submit_job(&spec(name, &prefix, args, max_records), name).await?;
    let job_id = submitted.job_id.as_str();
    let mut outcomes = Vec::new();
    let mut replayed_before = 0;
    for _ in 0..args.kills {
        let checkpointed = poll_until("a checkpoint to complete", PATIENCE, || async {
            let running = job(client, job_id).await?;
            let last = running.last_checkpoint_id?;
            (running.status == "Running" && running.restored_checkpoint_id.is_none_or(|restored| last > restored))
                .then_some(last)
        })
        .await?;
        poll_until("the next checkpoint to complete", PATIENCE, || async {
            job(client, job_id)
                .await
                .filter(|running| running.last_checkpoint_id.is_some_and(|last| last > checkpointed))
        })
        .await?;
        tokio::time::sleep(Duration::from_millis((args.interval_ms as f64 * args.kill_at) as u64)).await;
        let before = job(client, job_id).await.context("reading the job")?;
        let victim = before
            .subtasks
            .iter()
            .find(|subtask| subtask.operator_id == "lines")
            .map(|subtask| subtask.executor_id.clone())
            .filter(|executor| !executor.is_empty())
            .context("the source is not placed")?;
        cluster.kill_executor(&victim)?;
        let restored = poll_until("the job to run again from a checkpoint", PATIENCE, || async {
            job(client, job_id).await.filter(|running| {
                running.status == "Running"
                    && running.restart_count > before.restart_count
                    && running
                        .subtasks
                        .iter()
                        .all(|s| !s.executor_id.is_empty() && s.executor_id != victim)
            })
        })
        .await?;
        let restored_from = restored.restored_checkpoint_id.unwrap_or(0);
        // Two checkpoints later, whatever was replayed has been printed again.
        poll_until("two checkpoints after the restore", PATIENCE, || async {
            job(client, job_id)
                .await
                .filter(|running| running.last_checkpoint_id.unwrap_or(0) >= restored_from + 2)
        })
        .await?;
        let trigger = client
            .list_checkpoints(job_id)
            .await?
            .into_iter()
            .find(|checkpoint| checkpoint.checkpoint_id == restored_from)
            .map(|checkpoint| checkpoint.trigger)
            .unwrap_or_default();
        let (_, replayed) = printed(cluster, &prefix)?;
        outcomes.push(KillOutcome {
            replayed: replayed - replayed_before,
            restored_from,
            trigger,
        });
        replayed_before = replayed;
        cluster.restart_executor(&victim)?;
        crate::bench::wait_for_executor(client, &victim, PATIENCE).await?;
    }
    client.cancel_job(job_id, &format!("{name}-cancel")).await?;
    let (total, _) = printed(cluster, &prefix)?;
    Ok((outcomes, total))
}

/// Runs the benchmark and prints its figures.
pub async fn run_replay_bench(args: ReplayBenchArgs) -> anyhow::Result<()> {
    if args.max_records == 0 || args.interval_ms == 0 || args.rate == 0 || !(0.0..=1.0).contains(&args.kill_at) {
        bail!("--max-records, --interval-ms and --rate must be above 0 and --kill-at within 0..1");
    }
    let (mut cluster, client, directory) = crate::bench::start_bench_cluster(args.dir.as_deref(), "replay").await?;
    for executor_id in EXECUTORS {
        // The parallelism-1 job is one slice: either executor can take it when the other dies.
        cluster.start_executor(executor_id, 1)?;
    }
    poll_until("the executors to connect", Duration::from_secs(20), || async {
        let listed = client.list_executors().await.ok()?;
        (listed.executors.iter().filter(|e| e.connected).count() == EXECUTORS.len()).then_some(())
    })
    .await?;
    println!(
        "bench replay: generator ({} lines/s, one word each) -> key_by -> count -> print, parallelism 1, checkpoints every {} ms; \
         kill -9 of the source's executor {:.0} % of an interval after a checkpoint completed, {} times per job; \
         replayed = count updates printed again after the restore",
        args.rate,
        args.interval_ms,
        args.kill_at * 100.0,
        args.kills
    );
    println!(
        "{:>28} {:>12} {:>12} {:>22}",
        "checkpoint triggers", "kill", "replayed", "restored from"
    );
    for (label, max_records) in [
        (format!("interval {} ms", args.interval_ms), None),
        (format!("+ max_records {}", args.max_records), Some(args.max_records)),
    ] {
        let name = if max_records.is_some() { "bounded" } else { "interval" };
        let (outcomes, total) = kill_rounds(&mut cluster, &client, &args, name, max_records).await?;
        for (round, outcome) in outcomes.iter().enumerate() {
            println!(
                "{:>28} {:>12} {:>12} {:>22}",
                label,
                round + 1,
                outcome.replayed,
                format!("{} ({})", outcome.restored_from, outcome.trigger)
            );
        }
        let max = outcomes.iter().map(|outcome| outcome.replayed).max().unwrap_or(0);
        println!("{label:>28} {:>12} {max:>12}   of {total} printed updates", "max");
    }
    drop(cluster);
    if args.dir.is_none() {
        let _ = std::fs::remove_dir_all(&directory);
    }
    Ok(())
}
