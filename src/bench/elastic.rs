//! `raftstream bench elastic`: how fast a running job changes shape, on a local cluster of real
//! processes (three coordinators, three executors, all on this machine):
//!
//! - rescale time: `job rescale` -> the job running at the new parallelism (every subtask placed,
//!   restored from the checkpoint taken for the rescale), alternating between two parallelisms,
//!   for each size of keyed state asked for;
//! - drain time: `executor drain` -> the job running on the other executors, and the records its
//!   sources replayed (produced after the barrier of the checkpoint the job moved from);
//! - automatic parallelism: an executor joins -> the job running on it (grown through a
//!   rescale), for a job whose every operator has `parallelism: auto`;
//! - the committed output is checked at the end of each run (stopped with a savepoint: an exact
//!   prefix).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;
use raftstream_api::client::{running_entry, ClusterClient};
use raftstream_proto::v1 as pb;

use crate::bench::stream::job;
use crate::bench::{millis, percentile};
use crate::local_cluster::poll_until;
use crate::wordcount::{check_prefix, WordCountJob};

/// Options of `bench elastic`.
#[derive(Debug, Args)]
pub struct ElasticBenchArgs {
    /// Distinct keys of the keyed state, one run per value: about 12 bytes of checkpointed state
    /// each (90,000 is about 1 MiB, 90,000,000 about 1 GiB).
    #[arg(long, value_delimiter = ',', default_value = "90000")]
    pub keys: Vec<u64>,
    /// Rescales per run, alternating between the two parallelisms of --parallelism.
    #[arg(long, default_value_t = 10)]
    pub rescales: u32,
    /// The two parallelisms the job alternates between.
    #[arg(long, value_delimiter = ',', default_value = "2,4")]
    pub parallelism: Vec<u32>,
    /// Executor drains per run (each replaced by a fresh executor).
    #[arg(long, default_value_t = 3)]
    pub drains: u32,
    /// Executors joining one after another under a job with automatic parallelism (0 skips it).
    #[arg(long, default_value_t = 3)]
    pub joins: u32,
    /// The automatic job's stabilization delay, in ms.
    #[arg(long, default_value_t = 500)]
    pub stabilization_ms: u64,
    /// Input rate, lines (of 8 words) per second over all sources.
    #[arg(long, default_value_t = 20_000)]
    pub rate: u64,
    /// Where the cluster's files go (a fresh temporary directory when absent).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

fn executor_of(job: &pb::Job, operator_id: &str) -> Option<String> {
    job.subtasks
        .iter()
        .find(|subtask| subtask.operator_id == operator_id && !subtask.executor_id.is_empty())
        .map(|subtask| subtask.executor_id.clone())
}

/// Runs the benchmark and prints its figures.
pub async fn run_elastic_bench(args: ElasticBenchArgs) -> anyhow::Result<()> {
    let [low, high] = args.parallelism.as_slice() else {
        bail!("--parallelism takes two values, e.g. 2,4");
    };
    let (low, high) = (*low, *high);
    if low == 0 || high == 0 || low == high {
        bail!("--parallelism takes two different values of at least 1");
    }
    let (mut cluster, client, directory) = crate::bench::start_bench_cluster(args.dir.as_deref(), "elastic").await?;
    // One executor can hold the whole job at either parallelism (a slot per slice).
    let slots = high.max(low);
    let mut next_executor = 0;
    for _ in 0..3 {
        next_executor += 1;
        cluster.start_executor(&format!("elastic-{next_executor}"), slots)?;
    }
    poll_until("the executors to connect", Duration::from_secs(30), || async {
        let listed = client.list_executors().await.ok()?;
        (listed.executors.iter().filter(|e| e.connected).count() >= 3).then_some(())
    })
    .await?;
    println!(
        "bench elastic: word count (generator {} lines/s of 8 sequential words -> split -> key_by -> count -> file_sink), \
         checkpoints every 1000 ms, 3 coordinators and 3 executors on this machine",
        args.rate
    );
    for (run, keys) in args.keys.iter().enumerate() {
        let spec = WordCountJob {
            seed: run as u64 + 1,
            records: WordCountJob::UNBOUNDED,
            rate_per_second: Some(args.rate),
            parallelism: low,
            vocabulary_size: *keys,
            words_per_record: 8,
            checkpoint_interval_ms: 1000,
            output_dir: directory.join(format!("out-{run}")),
        };
        let name = format!("elastic-{run}");
        // Sequential words: every key appears once per `keys` words, so the state reaches its
        // size in one pass over the vocabulary (random words would take many). Checkpoints of
        // about 1 GiB take seconds: they time out after 2 minutes rather than 10 s.
        let submitted = client
            .submit_job(
                &spec.spec_with(&name, r#", "word_order": "sequential""#, 120_000),
                &name,
            )
            .await?;
        let job_id = submitted.job_id;
        // Every key has been seen once the sources emitted `keys` words (sequential words, 8
        // per record): measured at the first checkpoint whose every source offset is past that.
        let records_needed = keys.div_ceil(8) + u64::from(high);
        let filled = poll_until("the keyed state to fill", Duration::from_secs(3600), || async {
            let checkpoints = client.list_checkpoints(&job_id).await.ok()?;
            let last = checkpoints.last()?;
            let lowest = last.source_offsets.iter().map(|offset| offset.offset).min()?;
            (lowest >= records_needed).then_some(last.size_bytes)
        })
        .await?;
        println!(
            "\n{keys} keys: checkpointed state {:.1} MiB",
            filled as f64 / (1 << 20) as f64
        );

        let mut rescale_times = Vec::new();
        let mut restored_times = Vec::new();
        let mut running_times = Vec::new();
        let mut slowest_restores = Vec::new();
        let mut parallelism = low;
        for attempt in 0..args.rescales {
            parallelism = if parallelism == low { high } else { low };
            // The rescale's entry in the job's history tells it happened: the job may restart
            // from the checkpoint it restored before (when no checkpoint for the rescale could
            // complete), so the restored checkpoint does not.
            let before = job(&client, &job_id).await.and_then(|job| job.history.last().cloned());
            let started = Instant::now();
            client
                .rescale_job(&job_id, None, parallelism, &format!("{name}-rescale-{attempt}"))
                .await?;
            let placed = poll_until(
                "the job to run at the new parallelism",
                Duration::from_secs(300),
                || async {
                    let job = job(&client, &job_id).await?;
                    let counts = job.subtasks.iter().filter(|s| s.operator_id == "counts").count();
                    (job.status == "Running"
                        && counts == parallelism as usize
                        && job.subtasks.iter().all(|s| !s.executor_id.is_empty())
                        && job.history.last() != before.as_ref())
                    .then_some(job)
                },
            )
            .await?;
            rescale_times.push(started.elapsed());
            // Running: every subtask of the placement the job has now restored its state and
            // processes (its executor said so to the leader).
            let slowest_restore = poll_until(
                "every subtask to run at the new parallelism",
                Duration::from_secs(300),
                || async {
                    let job = job(&client, &job_id).await?;
                    let reply = client.get_job_metrics(&job_id).await.ok()?;
                    let mut slowest = 0;
                    for subtask in &job.subtasks {
                        let running = running_entry(&reply.running, subtask)?;
                        slowest = slowest.max(running.restore_ms);
                    }
                    Some(slowest)
                },
            )
            .await?;
            running_times.push(started.elapsed());
            slowest_restores.push(Duration::from_millis(slowest_restore));
            // A checkpoint completes only once every
            // subtask restored its state and passed the barrier on: an upper bound of the time
            // to process again (it includes up to one checkpoint interval of waiting).
            let restored = placed.restored_checkpoint_id;
            poll_until("a checkpoint after the rescale", Duration::from_secs(300), || async {
                let job = job(&client, &job_id).await?;
                (job.last_checkpoint_id > restored).then_some(())
            })
            .await?;
            restored_times.push(started.elapsed());
        }
        for (what, times) in [
            ("deployed (every subtask placed and sent)", &mut rescale_times),
            ("running (every subtask restored and processing)", &mut running_times),
            ("first checkpoint after it", &mut restored_times),
            ("slowest subtask restore within it", &mut slowest_restores),
        ] {
            times.sort();
            if !times.is_empty() {
                println!(
                    "  rescale {low} <-> {high} -> {what}, {} times: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
                    times.len(),
                    millis(percentile(times, 50.0)),
                    millis(percentile(times, 99.0)),
                    millis(*times.last().unwrap_or(&Duration::ZERO)),
                );
            }
        }

        let mut drain_times = Vec::new();
        let mut replayed = Vec::new();
        for _ in 0..args.drains {
            let Some(running) = job(&client, &job_id).await else {
                bail!("{job_id} cannot be read");
            };
            let Some(victim) = executor_of(&running, "counts") else {
                bail!("{job_id} has no placed counts subtask");
            };
            next_executor += 1;
            let replacement = format!("elastic-{next_executor}");
            cluster.start_executor(&replacement, slots)?;
            let before = running.history.last().cloned();
            let started = Instant::now();
            client
                .drain_executor(&victim, &format!("{name}-drain-{victim}"))
                .await?;
            let moved = poll_until(
                "the job to run off the drained executor",
                Duration::from_secs(300),
                || async {
                    let job = job(&client, &job_id).await?;
                    (job.status == "Running"
                        && job.history.last() != before.as_ref()
                        && job
                            .subtasks
                            .iter()
                            .all(|s| !s.executor_id.is_empty() && s.executor_id != victim))
                    .then_some(job)
                },
            )
            .await?;
            drain_times.push(started.elapsed());
            let status = cluster.wait_executor_exit(&victim, Duration::from_secs(60)).await?;
            if !status.success() {
                println!("  drained executor {victim} exited with {status}");
            }
            let restored = moved.restored_checkpoint_id.unwrap_or(0);
            replayed.push(cluster.records_replayed_from(restored).iter().sum::<u64>());
        }
        drain_times.sort();
        if !drain_times.is_empty() {
            println!(
                "  drain, {} times: p50 {:.0} ms, max {:.0} ms; records replayed per drain: {:?}",
                drain_times.len(),
                millis(percentile(&drain_times, 50.0)),
                millis(*drain_times.last().unwrap_or(&Duration::ZERO)),
                replayed,
            );
        }

        stop_and_check(&client, &job_id, &spec, &name).await?;
    }

    if args.joins > 0 {
        // A cluster of its own size: every executor so far is drained (nothing runs on them
        // now) and one with room for the job at parallelism 1 (one slice) starts; each joining
        // executor then has room for one more slice.
        const AUTO_SLOTS: u32 = 1;
        let listed = client.list_executors().await?;
        for executor in listed
            .executors
            .iter()
            .filter(|executor| executor.alive && !executor.draining)
        {
            client
                .drain_executor(&executor.executor_id, &format!("auto-drain-{}", executor.executor_id))
                .await?;
            cluster
                .wait_executor_exit(&executor.executor_id, Duration::from_secs(60))
                .await?;
        }
        next_executor += 1;
        let first = format!("elastic-{next_executor}");
        cluster.start_executor(&first, AUTO_SLOTS)?;
        poll_until("the executor to connect", Duration::from_secs(30), || async {
            let listed = client.list_executors().await.ok()?;
            listed
                .executors
                .iter()
                .any(|executor| executor.executor_id == first && executor.connected)
                .then_some(())
        })
        .await?;
        let spec = WordCountJob {
            seed: 99,
            records: WordCountJob::UNBOUNDED,
            rate_per_second: Some(args.rate),
            parallelism: 1,
            vocabulary_size: 10_000,
            words_per_record: 8,
            checkpoint_interval_ms: 1000,
            output_dir: directory.join("out-auto"),
        };
        let automatic = spec.spec("elastic-auto").replace(
            r#""parallelism": 1,"#,
            &format!(
                r#""parallelism": "auto", "autoscale": {{"stabilization_ms": {}}},"#,
                args.stabilization_ms
            ),
        );
        let submitted = client.submit_job(&automatic, "elastic-auto").await?;
        let job_id = submitted.job_id;
        let started = poll_until("the automatic job to run", Duration::from_secs(60), || async {
            job(&client, &job_id).await.filter(|job| job.status == "Running")
        })
        .await?;
        println!(
            "\nautomatic parallelism (every operator auto, stabilization {} ms): starts with {} subtasks",
            args.stabilization_ms,
            started.subtasks.len()
        );
        let mut reactions = Vec::new();
        let mut subtasks = started.subtasks.len();
        for _ in 0..args.joins {
            next_executor += 1;
            let joining = format!("elastic-{next_executor}");
            let started = Instant::now();
            cluster.start_executor(&joining, AUTO_SLOTS)?;
            let grown = poll_until(
                "the job to grow onto the new executor",
                Duration::from_secs(120),
                || async {
                    job(&client, &job_id).await.filter(|job| {
                        job.status == "Running"
                            && job.subtasks.len() > subtasks
                            && job.subtasks.iter().all(|s| !s.executor_id.is_empty())
                            && job.subtasks.iter().any(|s| s.executor_id == joining)
                    })
                },
            )
            .await?;
            reactions.push(started.elapsed());
            subtasks = grown.subtasks.len();
            println!(
                "  {joining} joined ({AUTO_SLOTS} slots): the job runs on it, {subtasks} subtasks, after {:.0} ms",
                millis(started.elapsed())
            );
        }
        reactions.sort();
        println!(
            "  executor start -> job running on it: p50 {:.0} ms, max {:.0} ms (includes the process start, its registration and the stabilization delay)",
            millis(percentile(&reactions, 50.0)),
            millis(*reactions.last().unwrap_or(&Duration::ZERO)),
        );
        stop_and_check(&client, &job_id, &spec, "elastic-auto").await?;
    }
    drop(cluster);
    if args.dir.is_none() {
        let _ = std::fs::remove_dir_all(&directory);
    }
    Ok(())
}

/// Stops the job with a savepoint and says whether its committed output is an exact prefix.
async fn stop_and_check(client: &ClusterClient, job_id: &str, spec: &WordCountJob, name: &str) -> anyhow::Result<()> {
    // A rescale may still be under way (the autoscaler's): the stop waits for it.
    poll_until(
        "the job to take its stop savepoint",
        Duration::from_secs(60),
        || async { client.take_savepoint(job_id, true, &format!("{name}-stop")).await.ok() },
    )
    .await?;
    poll_until("the job to stop", Duration::from_secs(120), || async {
        job(client, job_id).await.filter(|job| job.status == "Stopped")
    })
    .await?;
    let check = check_prefix(&spec.output_dir)?;
    println!(
        "  stopped with a savepoint: {} count updates committed, exactly once: {}",
        check.lines,
        if check.is_exact() { "yes" } else { "NO" }
    );
    let _ = std::fs::remove_dir_all(&spec.output_dir);
    Ok(())
}
