//! `raftstream bench stream`: the word-count pipeline on a local cluster of real processes (three
//! coordinators, executors on this machine):
//!
//! - throughput on one executor at each parallelism, with checkpoints off and on, from the job
//!   turning Running to Finished, output checked for exactness; the overhead of checkpoints in %
//!   is the median over rounds of each round's on-against-off run, by time and per CPU-second;
//! - executor recovery: kill -9 of an executor running the job -> the job running again on the
//!   other executor from its last completed checkpoint, over several kills;
//! - coordinator leader kills: how many subtasks were restarted (new epochs) by each (must be 0).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use raftstream_api::client::ClusterClient;
use raftstream_coordinator::leader::ExecutorSettings;
use raftstream_coordinator::node::RaftSettings;
use raftstream_proto::v1 as pb;
use tokio_util::sync::CancellationToken;

use super::RunToEnd;
use crate::bench::{millis, percentile};
use crate::local_cluster::{poll_until, LocalCluster};
use crate::wordcount::{check_output, generated_records, WordCountJob};

/// Options of `bench stream`.
#[derive(Debug, Args)]
pub struct StreamBenchArgs {
    /// Generator records (lines of 8 words) per throughput run.
    #[arg(long, default_value_t = 1_000_000)]
    pub records: u64,
    /// Parallelism levels of the throughput runs.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub parallelism: Vec<u32>,
    /// Checkpoint intervals of the throughput runs, in ms (0: checkpoints off).
    #[arg(long, value_delimiter = ',', default_value = "0,1000")]
    pub checkpoint_intervals: Vec<u64>,
    /// Runs per setting, interleaved across settings; the median is reported.
    #[arg(long, default_value_t = 3)]
    pub repeat: u32,
    /// Executor kills for the recovery measurement (0 skips it).
    #[arg(long, default_value_t = 10)]
    pub kills: u32,
    /// Coordinator leader kills, counting restarted subtasks (0 skips it).
    #[arg(long, default_value_t = 3)]
    pub leader_kills: u32,
    /// Where the cluster's files go (a fresh temporary directory when absent).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Rounds of the metrics-cost comparison (0 skips it): in each, the word count runs on an
    /// executor without an HTTP listener and on one with it, scraped (with the leader) every
    /// second; both with 1 s checkpoints, at the first parallelism given.
    #[arg(long, default_value_t = 0)]
    pub metrics_rounds: u32,
}

pub(crate) async fn job(client: &ClusterClient, job_id: &str) -> Option<pb::Job> {
    client.get_job(job_id, pb::ReadConsistency::Linearizable).await.ok()
}

fn epochs(job: &pb::Job) -> BTreeMap<String, u64> {
    job.subtasks
        .iter()
        .map(|s| (format!("{}[{}]", s.operator_id, s.subtask_index), s.epoch))
        .collect()
}

/// Runs the benchmark and prints its figures.
pub async fn run_stream_bench(args: StreamBenchArgs) -> anyhow::Result<()> {
    let binary = std::env::current_exe().context("locating the raftstream binary")?;
    let directory = match &args.dir {
        Some(dir) => std::path::absolute(dir)?,
        None => std::env::temp_dir().join(format!("raftstream-bench-stream-{}", std::process::id())),
    };
    if directory.exists() {
        std::fs::remove_dir_all(&directory).with_context(|| format!("clearing {}", directory.display()))?;
    }
    let settings = ExecutorSettings::default();
    let mut cluster = LocalCluster::start_with(
        &binary,
        &directory,
        3,
        Vec::new(),
        RaftSettings::default(),
        settings.clone(),
    )?;
    cluster.wait_for_leader(Duration::from_secs(20)).await?;
    let client = ClusterClient::new(&cluster.addresses(), Duration::from_secs(10))?;
    cluster.start_executor("bench-1", bench_slots(&args))?;
    poll_until("the executor to connect", Duration::from_secs(20), || async {
        let listed = client.list_executors().await.ok()?;
        listed.executors.iter().any(|e| e.connected).then_some(())
    })
    .await?;

    println!(
        "bench stream: word count (generator -> flat_map split_words -> key_by -> count -> file_sink), {} lines of \
         8 words (vocabulary 10,000), one executor, 3 coordinators, all on this machine; median of {} runs",
        args.records,
        args.repeat.max(1)
    );
    println!(
        "{:>12} {:>12} {:>14} {:>14} {:>9} {:>12} {:>8} {:>17}",
        "parallelism", "checkpoints", "records/s", "words/s", "seconds", "chk flowing", "exact", "records/exec-cpu-s"
    );
    // A short unmeasured run first: process start-up, allocator and page cache warm-up.
    let warm_up = WordCountJob {
        seed: 0,
        records: (args.records / 10).max(1),
        rate_per_second: None,
        parallelism: 1,
        vocabulary_size: 10_000,
        words_per_record: 8,
        checkpoint_interval_ms: 0,
        output_dir: directory.join("out-warm-up"),
    };
    throughput_run(&client, &warm_up, "warm-up").await?;
    let _ = std::fs::remove_dir_all(&warm_up.output_dir);
    let mut run = 0;
    for parallelism in &args.parallelism {
        let mut results: BTreeMap<u64, Vec<BenchRun>> = BTreeMap::new();
        // Interleaved (off, on, off, on, ...) so drift on the machine hits every setting alike.
        for _ in 0..args.repeat.max(1) {
            for interval in &args.checkpoint_intervals {
                run += 1;
                let spec = WordCountJob {
                    seed: run,
                    records: args.records,
                    rate_per_second: None,
                    parallelism: *parallelism,
                    vocabulary_size: 10_000,
                    words_per_record: 8,
                    checkpoint_interval_ms: *interval,
                    output_dir: directory.join(format!("out-{run}")),
                };
                let executor_pid = cluster.executor("bench-1").and_then(|executor| executor.pid());
                let cpu_before = executor_pid.and_then(cpu_seconds);
                let measured = throughput_run(&client, &spec, &format!("bench-{run}")).await?;
                let seconds = measured.seconds;
                let checkpoints = measured.checkpoints_while_flowing.len() as u64;
                if *interval > 0 {
                    println!(
                        "   run {run}: parallelism {parallelism}, {}",
                        measured.describe(*interval)
                    );
                }
                let executor_cpu = executor_pid
                    .and_then(cpu_seconds)
                    .zip(cpu_before)
                    .map(|(after, before)| after - before)
                    .filter(|cpu| *cpu > 0.0);
                let check = check_output(&spec.output_dir, &spec.expected_counts())?;
                let exact = check.is_exact() && check.lines == args.records * 8;
                if !exact {
                    println!("   run {run}: output problems: {}", check.problems.join("; "));
                }
                results.entry(*interval).or_default().push((
                    args.records as f64 / seconds,
                    checkpoints,
                    exact,
                    executor_cpu.map(|cpu| args.records as f64 / cpu),
                ));
                let _ = std::fs::remove_dir_all(&spec.output_dir);
            }
        }
        // Rounds run off and on back to back, so the overhead is taken per round and its median
        // reported: the host's speed drifts more between rounds than checkpoints cost.
        let baseline = results.get(&0).cloned();
        for interval in &args.checkpoint_intervals {
            let runs = results.remove(interval).unwrap_or_default();
            let mut by_rate = runs.clone();
            by_rate.sort_by(|a, b| a.0.total_cmp(&b.0));
            let Some(&(median, checkpoints, _, _)) = by_rate.get(by_rate.len() / 2) else {
                continue;
            };
            let exact = runs.iter().all(|(_, _, exact, _)| *exact);
            let per_cpu = median_of(runs.iter().filter_map(|run| run.3).collect())
                .map_or_else(|| "n/a".to_owned(), |rate| format!("{rate:.0}"));
            let label = if *interval == 0 {
                "off".to_owned()
            } else {
                format!("{interval} ms")
            };
            let overhead = match &baseline {
                Some(off_runs) if *interval > 0 => {
                    let paired = |rate: fn(&BenchRun) -> Option<f64>| {
                        median_of(
                            runs.iter()
                                .zip(off_runs)
                                .filter_map(|(on, off)| Some((1.0 - rate(on)? / rate(off)?) * 100.0))
                                .collect(),
                        )
                    };
                    let by_time = paired(|run| Some(run.0)).unwrap_or(0.0);
                    let by_cpu =
                        paired(|run| run.3).map_or_else(|| "n/a".to_owned(), |overhead| format!("{overhead:.1} %"));
                    format!(
                        "  (overhead {by_time:.1} %, per CPU-second {by_cpu}; medians of {} rounds)",
                        runs.len()
                    )
                }
                _ => String::new(),
            };
            println!(
                "{:>12} {:>12} {:>14.0} {:>14.0} {:>9.2} {:>12} {:>8} {:>17}{overhead}",
                parallelism,
                label,
                median,
                median * 8.0,
                args.records as f64 / median,
                checkpoints,
                if exact { "yes" } else { "NO" },
                per_cpu,
            );
        }
    }

    if args.metrics_rounds > 0 {
        metrics_cost(&mut cluster, &client, &directory, &args).await?;
    }
    if args.kills > 0 || args.leader_kills > 0 {
        recovery(&mut cluster, &client, &directory, &args, &settings).await?;
    }
    drop(cluster);
    if args.dir.is_none() {
        let _ = std::fs::remove_dir_all(&directory);
    }
    Ok(())
}

/// Throughput of the word count on an executor without metrics against one serving them and
/// scraped every second, in interleaved rounds; every run gets a fresh executor (the one before
/// is killed), so neither setting inherits the other's warm caches.
async fn metrics_cost(
    cluster: &mut LocalCluster,
    client: &ClusterClient,
    directory: &std::path::Path,
    args: &StreamBenchArgs,
) -> anyhow::Result<()> {
    let parallelism = args.parallelism.first().copied().unwrap_or(1);
    println!(
        "metrics cost: {} lines, parallelism {parallelism}, 1 s checkpoints; without the HTTP listener vs with it \
         scraped every second (executor and leader); {} interleaved rounds",
        args.records, args.metrics_rounds
    );
    let leader_http = match client.cluster_status().await?.leader_id {
        Some(leader) => cluster.node(leader).map(|node| node.http_address.clone()),
        None => None,
    };
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;
    let mut rates: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    // Lines per executor CPU-second: what the metrics cost the executor itself, steadier than
    // lines/s on a machine whose other processes come and go.
    let mut cpu_rates: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut scrapes = 0u64;
    for round in 0..args.metrics_rounds {
        // Which setting goes first alternates, so whatever a round's second run inherits (the
        // first one's files being deleted, a dead executor still on record) hits both alike.
        let order = if round % 2 == 0 { [false, true] } else { [true, false] };
        for with_metrics in order {
            let setting = usize::from(with_metrics);
            for executor_id in cluster.executor_ids() {
                cluster.kill_executor(&executor_id)?;
            }
            let executor_id = format!("bench-m{round}-{setting}");
            cluster.set_executor_http(with_metrics);
            cluster.start_executor(&executor_id, bench_slots(args))?;
            crate::bench::wait_for_executor(client, &executor_id, Duration::from_secs(20)).await?;
            let spec = WordCountJob {
                seed: u64::from(round),
                records: args.records,
                rate_per_second: None,
                parallelism,
                vocabulary_size: 10_000,
                words_per_record: 8,
                checkpoint_interval_ms: 1_000,
                output_dir: directory.join(format!("out-metrics-{round}-{setting}")),
            };
            let targets: Vec<String> = if with_metrics {
                cluster
                    .executor(&executor_id)
                    .map(|executor| executor.http_address.clone())
                    .into_iter()
                    .chain(leader_http.clone())
                    .collect()
            } else {
                Vec::new()
            };
            let executor_pid = cluster.executor(&executor_id).and_then(|executor| executor.pid());
            let cpu_before = executor_pid.and_then(cpu_seconds);
            let scraping = CancellationToken::new();
            let scraper = tokio::spawn(scrape_every_second(http.clone(), targets, scraping.clone()));
            let measured = throughput_run(client, &spec, &format!("bench-metrics-{round}-{setting}")).await;
            scraping.cancel();
            let executor_cpu = executor_pid
                .and_then(cpu_seconds)
                .zip(cpu_before)
                .map(|(after, before)| after - before)
                .filter(|cpu| *cpu > 0.0);
            scrapes += scraper.await.unwrap_or(0);
            let measured = measured?;
            let check = check_output(&spec.output_dir, &spec.expected_counts())?;
            anyhow::ensure!(
                check.is_exact() && check.lines == args.records * 8,
                "round {round}: output not exact: {}",
                check.problems.join("; ")
            );
            let _ = std::fs::remove_dir_all(&spec.output_dir);
            let rate = args.records as f64 / measured.seconds;
            let per_cpu = executor_cpu.map(|cpu| args.records as f64 / cpu);
            println!(
                "   round {round}: {} {rate:.0} lines/s, {} lines per executor CPU-second",
                if with_metrics {
                    "with metrics   "
                } else {
                    "without metrics"
                },
                per_cpu.map_or_else(|| "n/a".to_owned(), |rate| format!("{rate:.0}"))
            );
            rates[setting].push(rate);
            if let Some(per_cpu) = per_cpu {
                cpu_rates[setting].push(per_cpu);
            }
        }
    }
    cluster.set_executor_http(true);
    for (measure, [without, with]) in [("lines/s", &rates), ("lines per executor CPU-second", &cpu_rates)] {
        let costs: Vec<f64> = without
            .iter()
            .zip(with.iter())
            .map(|(without, with)| (1.0 - with / without) * 100.0)
            .collect();
        println!(
            "metrics cost by {measure}: median without {:.0}, with {:.0}; paired cost per round {} -> median {:.1} %",
            median_of(without.clone()).unwrap_or(0.0),
            median_of(with.clone()).unwrap_or(0.0),
            costs
                .iter()
                .map(|cost| format!("{cost:.1} %"))
                .collect::<Vec<_>>()
                .join(", "),
            median_of(costs.clone()).unwrap_or(0.0),
        );
    }
    println!("metrics cost: {scrapes} scrapes answered, every output exact");
    // Later parts of the bench run on an executor like the first one.
    for executor_id in cluster.executor_ids() {
        cluster.kill_executor(&executor_id)?;
    }
    cluster.start_executor("bench-1", bench_slots(args))?;
    crate::bench::wait_for_executor(client, "bench-1", Duration::from_secs(20)).await
}

/// Scrapes each of `targets`' `/metrics` once a second until `stop`; how many scrapes succeeded.
async fn scrape_every_second(http: reqwest::Client, targets: Vec<String>, stop: CancellationToken) -> u64 {
    let mut scraped = 0;
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return scraped,
            _ = ticker.tick() => {}
        }
        for target in &targets {
            let body = match http.get(format!("http://{target}/metrics")).send().await {
                Ok(response) => response.text().await,
                Err(error) => Err(error),
            };
            if body.is_ok_and(|body| !body.is_empty()) {
                scraped += 1;
            }
        }
    }
}

/// One measured run: lines/s, the checkpoints completed while its input flowed, whether the
/// output was exact, and lines per executor CPU-second.
type BenchRun = (f64, u64, bool, Option<f64>);

/// What one throughput run measured.
struct ThroughputRun {
    /// From the job turning Running to Finished.
    seconds: f64,
    /// Trigger-to-completion times of the checkpoints taken while the sources still had input
    /// (not the final one that covers the end of the input).
    checkpoints_while_flowing: Vec<Duration>,
}

impl ThroughputRun {
    /// The run's checkpoint figures, flagged when fewer than half the expected checkpoints
    /// completed while the input flowed (a task that starves its own checkpoints).
    fn describe(&self, interval_ms: u64) -> String {
        let expected = (self.seconds * 1_000.0 / interval_ms as f64).floor() as usize;
        let mut durations = self.checkpoints_while_flowing.clone();
        durations.sort();
        let completed = durations.len();
        let timing = if durations.is_empty() {
            String::new()
        } else {
            format!(
                ", duration p50 {:.0} ms, p99 {:.0} ms",
                millis(percentile(&durations, 50.0)),
                millis(percentile(&durations, 99.0))
            )
        };
        let flag = if completed * 2 < expected {
            "  <-- FEWER THAN HALF THE EXPECTED CHECKPOINTS"
        } else {
            ""
        };
        format!(
            "{:.2} s, {completed} checkpoints completed while input flowed (about {expected} expected){timing}{flag}",
            self.seconds
        )
    }
}

/// Slots for a bench executor: one slice per slot, so the highest parallelism measured (at least
/// the recovery job's 2), since one executor runs a whole job.
fn bench_slots(args: &StreamBenchArgs) -> u32 {
    args.parallelism.iter().copied().max().unwrap_or(1).max(2)
}

pub(crate) fn median_of(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied()
}

/// CPU time (user + system, all threads) a process has used, from `/proc/PID/stat`: the honest
/// "per core" denominator when coordinators share the machine's cores with the executor.
pub(crate) fn cpu_seconds(pid: u32) -> Option<f64> {
    // utime and stime are fields 14 and 15, counted in USER_HZ ticks (100 per second on Linux);
    // the fields after the command name (which may contain spaces) start at field 3.
    const TICKS_PER_SECOND: f64 = 100.0;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let user: f64 = fields.get(11)?.parse().ok()?;
    let system: f64 = fields.get(12)?.parse().ok()?;
    Some((user + system) / TICKS_PER_SECOND)
}

/// Runs one job to the end: the seconds from Running to Finished, and the checkpoints it
/// completed while its input flowed (read every 100 ms, so none is missed between reads).
async fn throughput_run(client: &ClusterClient, spec: &WordCountJob, name: &str) -> anyhow::Result<ThroughputRun> {
    let submitted = client.submit_job(&spec.spec(name), name).await?;
    let mut run = RunToEnd::new(&submitted.job_id);
    let mut checkpoints: BTreeMap<u64, pb::Checkpoint> = BTreeMap::new();
    let mut last_read = Instant::now();
    let seconds = loop {
        if let Some(seconds) = run.poll(client).await? {
            break seconds;
        }
        if spec.checkpoint_interval_ms > 0 && last_read.elapsed() >= Duration::from_millis(100) {
            last_read = Instant::now();
            if let Ok(listed) = client.list_checkpoints(&submitted.job_id).await {
                checkpoints.extend(
                    listed
                        .into_iter()
                        .map(|checkpoint| (checkpoint.checkpoint_id, checkpoint)),
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let checkpoints_while_flowing = checkpoints
        .values()
        .filter(|checkpoint| generated_records(checkpoint, u64::from(spec.parallelism)) < spec.records)
        .map(|checkpoint| Duration::from_millis(checkpoint.completed_at_ms.saturating_sub(checkpoint.triggered_at_ms)))
        .collect();
    Ok(ThroughputRun {
        seconds,
        checkpoints_while_flowing,
    })
}

async fn recovery(
    cluster: &mut LocalCluster,
    client: &ClusterClient,
    directory: &std::path::Path,
    args: &StreamBenchArgs,
    settings: &ExecutorSettings,
) -> anyhow::Result<()> {
    let spec = WordCountJob {
        seed: 99,
        records: u64::MAX / 2,
        rate_per_second: Some(50_000),
        parallelism: 2,
        vocabulary_size: 10_000,
        words_per_record: 8,
        checkpoint_interval_ms: 1_000,
        output_dir: directory.join("out-recovery"),
    };
    // The default restart strategy, as a job without a `restart:` section gets: at once after a
    // completed checkpoint, backing off only when failures repeat before one.
    let mut job_spec: serde_json::Value = serde_json::from_str(&spec.spec("bench-recovery"))?;
    if let Some(fields) = job_spec.as_object_mut() {
        fields.remove("restart");
    }
    // The job starts while only one executor runs, so that executor holds the whole job and no
    // peer sees a data stream break when it dies: only the leader's own detection counts.
    let submitted = client
        .submit_job(&job_spec.to_string(), "bench-stream-recovery")
        .await?;
    let job_id = submitted.job_id.clone();
    poll_until("the job to run and checkpoint", Duration::from_secs(30), || async {
        job(client, &job_id)
            .await
            .filter(|job| job.status == "Running" && job.last_checkpoint_id.is_some())
    })
    .await?;
    cluster.start_executor("bench-2", bench_slots(args))?;
    poll_until("two executors to connect", Duration::from_secs(20), || async {
        let listed = client.list_executors().await.ok()?;
        (listed.executors.iter().filter(|e| e.connected && e.alive).count() == 2).then_some(())
    })
    .await?;
    println!(
        "executor recovery (defaults: heartbeat {} ms, lease {} ms, session-break grace {} ms; job at 50,000 lines/s, parallelism 2, checkpoints every 1 s, the default restart strategy; the killed executor runs every subtask):",
        settings.heartbeat_interval_ms, settings.lease_timeout_ms, settings.session_break_grace_ms
    );
    let mut recoveries = Vec::new();
    let mut first_checkpoints = Vec::new();
    for round in 0..args.kills {
        let before = job(client, &job_id).await.context("reading the job")?;
        let victim = before
            .subtasks
            .iter()
            .find(|s| s.operator_id == "counts" && !s.executor_id.is_empty())
            .map(|s| s.executor_id.clone())
            .context("counts is not placed")?;
        if before.subtasks.iter().any(|s| s.executor_id != victim) {
            bail!("{victim} does not run every subtask of {job_id}: a peer would see its death");
        }
        let killed_at = Instant::now();
        cluster.kill_executor(&victim)?;
        let after = poll_until("the job to recover", Duration::from_secs(60), || async {
            let job = job(client, &job_id).await?;
            let moved = job
                .subtasks
                .iter()
                .all(|s| !s.executor_id.is_empty() && s.executor_id != victim);
            (job.status == "Running" && job.restart_count > before.restart_count && moved).then_some(job)
        })
        .await?;
        let took = killed_at.elapsed();
        recoveries.push(took);
        // The first checkpoint after the restore completes once every subtask restored its state
        // and passed a barrier on (the coordinator triggers it as soon as the job runs again).
        let restored_from = after.restored_checkpoint_id.unwrap_or(0);
        poll_until("a checkpoint after the restore", Duration::from_secs(30), || async {
            job(client, &job_id)
                .await
                .filter(|job| job.last_checkpoint_id.unwrap_or(0) > restored_from)
        })
        .await?;
        let checkpointed = killed_at.elapsed();
        first_checkpoints.push(checkpointed);
        println!(
            "   kill {:>2}: {victim} -> running again {:>6.0} ms later ({}), first checkpoint after it {:>6.0} ms",
            round + 1,
            millis(took),
            after.status_reason,
            millis(checkpointed)
        );
        cluster.restart_executor(&victim)?;
        crate::bench::wait_for_executor(client, &victim, Duration::from_secs(30)).await?;
    }
    if !recoveries.is_empty() {
        recoveries.sort();
        println!(
            "   executor recovery over {} kills: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            recoveries.len(),
            millis(percentile(&recoveries, 50.0)),
            millis(percentile(&recoveries, 99.0)),
            millis(recoveries[recoveries.len() - 1])
        );
        first_checkpoints.sort();
        println!(
            "   kill -> first checkpoint after the restore (every subtask restored and passed a barrier; includes waiting for the checkpoint interval): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            millis(percentile(&first_checkpoints, 50.0)),
            millis(percentile(&first_checkpoints, 99.0)),
            millis(first_checkpoints[first_checkpoints.len() - 1])
        );
    }
    let mut restarted_total = 0;
    for round in 0..args.leader_kills {
        let before = job(client, &job_id).await.context("reading the job")?;
        let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
        cluster.kill(leader)?;
        let last = before.last_checkpoint_id.unwrap_or(0);
        let after = poll_until(
            "checkpoints to continue under a new leader",
            Duration::from_secs(30),
            || async {
                job(client, &job_id)
                    .await
                    .filter(|job| job.last_checkpoint_id.unwrap_or(0) > last + 1)
            },
        )
        .await?;
        let old = epochs(&before);
        let restarted = epochs(&after)
            .iter()
            .filter(|(subtask, epoch)| old.get(*subtask) != Some(epoch))
            .count();
        restarted_total += restarted;
        println!(
            "   leader kill {}: node {leader}; checkpoints went on ({} -> {}), subtasks restarted: {restarted}",
            round + 1,
            last,
            after.last_checkpoint_id.unwrap_or(0)
        );
        cluster.restart(leader)?;
        cluster.wait_for_leader(Duration::from_secs(10)).await?;
    }
    if args.leader_kills > 0 {
        println!(
            "   subtasks restarted by {} coordinator leader kills: {restarted_total}",
            args.leader_kills
        );
    }
    let _ = client.cancel_job(&job_id, "bench-stream-recovery-cancel").await;
    Ok(())
}
