//! `raftstream demo`: a local cluster of three coordinators and two executors runs a word-count job
//! (generator -> flat_map -> key_by -> count -> exactly-once file sink) with checkpoints every
//! 500 ms. While it runs, the coordinator leader and then one executor are killed with kill -9. At
//! the end the demo checks the committed output against the expected counts (every update exactly
//! once), and prints the failover and recovery times it saw and where the output is.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use raftstream_api::client::ClusterClient;
use raftstream_coordinator::leader::ExecutorSettings;
use raftstream_coordinator::node::RaftSettings;
use raftstream_proto::v1 as pb;

use crate::local_cluster::{poll_until as wait_for, LocalCluster};
use crate::wordcount::{check_output, WordCountJob};

/// Options of `demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where the cluster's files go (a fresh temporary directory when absent).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// `operator[index]` -> (executor, epoch) of every subtask of a job; executor empty while waiting.
pub type Placement = BTreeMap<String, (String, u64)>;

/// Where each subtask of `job` runs.
pub fn placement_of(job: &pb::Job) -> Placement {
    job.subtasks
        .iter()
        .map(|s| {
            (
                format!("{}[{}]", s.operator_id, s.subtask_index),
                (s.executor_id.clone(), s.epoch),
            )
        })
        .collect()
}

fn print_placement(placement: &Placement) {
    for (subtask, (executor, epoch)) in placement {
        let executor = if executor.is_empty() {
            "(waiting)"
        } else {
            executor.as_str()
        };
        println!("     {subtask:<12} on {executor:<8} epoch {epoch}");
    }
}

/// Runs the demo and prints what it saw.
pub async fn run_demo(args: DemoArgs) -> anyhow::Result<()> {
    let binary = std::env::current_exe().context("locating the raftstream binary")?;
    let directory = match &args.dir {
        Some(dir) => std::path::absolute(dir)?,
        None => std::env::temp_dir().join(format!("raftstream-demo-{}", std::process::id())),
    };
    if directory.exists() {
        std::fs::remove_dir_all(&directory).with_context(|| format!("clearing {}", directory.display()))?;
    }
    let executor_settings = ExecutorSettings::default();
    // One slot per core, as an executor offers by default; the job's two slices must fit on
    // one executor when the other is killed, so never fewer than two.
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let slots = (cores < 2).then_some(2);
    println!(
        "1. starting three coordinators and two executors with {} slots each (files in {})",
        slots.map_or(cores, |slots: u32| slots as usize),
        directory.display()
    );
    let mut cluster = LocalCluster::start_with(
        &binary,
        &directory,
        3,
        Vec::new(),
        RaftSettings::default(),
        executor_settings.clone(),
    )?;
    let leader = cluster.wait_for_leader(Duration::from_secs(20)).await?;
    for node in cluster.nodes() {
        println!(
            "   coordinator {} at {} (pid {}){}",
            node.node_id,
            node.address,
            node.pid().unwrap_or(0),
            if node.node_id == leader { "  <- leader" } else { "" }
        );
    }
    cluster.start_executor("exec-1", slots)?;
    cluster.start_executor("exec-2", slots)?;

    let follower = cluster
        .nodes()
        .map(|node| node.node_id)
        .find(|id| *id != leader)
        .context("no follower")?;
    let follower_address = cluster
        .node(follower)
        .map(|node| node.address.clone())
        .context("no follower")?;
    let word_count = WordCountJob {
        seed: 42,
        records: 150_000,
        rate_per_second: Some(15_000),
        parallelism: 2,
        vocabulary_size: 1_000,
        words_per_record: 8,
        checkpoint_interval_ms: 500,
        output_dir: directory.join("output"),
    };
    println!(
        "2. submitting a word count of {} generated lines ({} words, {}/s) through follower {follower}",
        word_count.records,
        word_count.records * word_count.words_per_record,
        word_count.rate_per_second.unwrap_or(0)
    );
    let through_follower = ClusterClient::new(&[follower_address], Duration::from_secs(10))?;
    let job = through_follower
        .submit_job(&word_count.spec("demo-word-count"), "demo-word-count")
        .await?;
    let job_id = job.job_id.clone();
    println!("   {job_id} accepted with {} subtasks", job.subtasks.len());
    let everyone = ClusterClient::new(&cluster.addresses(), Duration::from_secs(10))?;
    let running = wait_for("the job to run and checkpoint", Duration::from_secs(30), || async {
        let job = everyone
            .get_job(&job_id, pb::ReadConsistency::Linearizable)
            .await
            .ok()?;
        (job.status == "Running" && job.last_checkpoint_id.unwrap_or(0) >= 2).then_some(job)
    })
    .await?;
    let placed = placement_of(&running);
    println!(
        "   running, checkpoint {} completed; placed by the leader's scheduler:",
        running.last_checkpoint_id.unwrap_or(0)
    );
    print_placement(&placed);

    println!("3. kill -9 of the coordinator leader, node {leader}");
    let survivors: Vec<String> = cluster
        .nodes()
        .filter(|node| node.node_id != leader)
        .map(|node| node.address.clone())
        .collect();
    let survivor_client =
        ClusterClient::new(&survivors, Duration::ZERO)?.with_attempt_timeout(Duration::from_millis(400));
    let killed_at = Instant::now();
    cluster.kill(leader)?;
    let read_back = wait_for("a new leader", Duration::from_secs(20), || async {
        survivor_client
            .get_job(&job_id, pb::ReadConsistency::Linearizable)
            .await
            .ok()
    })
    .await?;
    let failover = killed_at.elapsed();
    let new_leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    println!(
        "   node {new_leader} took over; first linearizable read {:.0} ms after the kill",
        failover.as_secs_f64() * 1000.0
    );
    let survivors_only = ClusterClient::new(&survivors, Duration::from_secs(10))?;
    let last_before = read_back.last_checkpoint_id.unwrap_or(0);
    let continued = wait_for(
        "checkpoints to continue under the new leader",
        Duration::from_secs(20),
        || async {
            let job = survivors_only
                .get_job(&job_id, pb::ReadConsistency::Linearizable)
                .await
                .ok()?;
            (job.last_checkpoint_id.unwrap_or(0) > last_before || job.status == "Finished").then_some(job)
        },
    )
    .await?;
    let epochs = |placement: &Placement| -> Vec<u64> { placement.values().map(|(_, epoch)| *epoch).collect() };
    let unchanged = continued.restart_count == 0 && epochs(&placement_of(&continued)) == epochs(&placed);
    println!(
        "   checkpoints continue under the new leader (now {}); subtasks restarted by the failover: {}",
        continued.last_checkpoint_id.unwrap_or(0),
        if unchanged { "none" } else { "SOME (unexpected)" }
    );

    let victim = placed
        .iter()
        .find(|(subtask, _)| subtask.starts_with("counts"))
        .map(|(_, (executor, _))| executor.clone())
        .filter(|executor| !executor.is_empty())
        .unwrap_or_else(|| "exec-1".to_owned());
    println!("4. kill -9 of executor {victim} (it runs keyed count state)");
    let killed_at = Instant::now();
    cluster.kill_executor(&victim)?;
    let recovered = wait_for(
        "the job to recover on the other executor",
        Duration::from_secs(30),
        || async {
            let job = survivors_only
                .get_job(&job_id, pb::ReadConsistency::Linearizable)
                .await
                .ok()?;
            let placement = placement_of(&job);
            let moved = placement
                .values()
                .all(|(executor, _)| !executor.is_empty() && *executor != victim);
            ((job.status == "Running" && job.restart_count > 0 && moved) || job.status == "Finished").then_some(job)
        },
    )
    .await?;
    let recovery = killed_at.elapsed();
    // The lease is the backstop; a dead process breaks its session (and its peers' data
    // streams) at once, and its address then refuses connections, so say which of the two it was.
    let lease = Duration::from_millis(executor_settings.lease_timeout_ms);
    let detection = if recovery < lease {
        format!(
            "declared dead from its broken connections before its {} ms lease ran out",
            lease.as_millis()
        )
    } else {
        format!("declared dead when its {} ms lease ran out", lease.as_millis())
    };
    println!(
        "   {detection}; running again on the survivor {:.0} ms after the kill ({})",
        recovery.as_secs_f64() * 1000.0,
        recovered.status_reason
    );
    print_placement(&placement_of(&recovered));

    println!("5. waiting for the job to finish");
    let done = wait_for("the job to end", Duration::from_secs(120), || async {
        let job = survivors_only
            .get_job(&job_id, pb::ReadConsistency::Linearizable)
            .await
            .ok()?;
        matches!(job.status.as_str(), "Finished" | "Failed" | "Cancelled").then_some(job)
    })
    .await?;
    println!(
        "   {}: {} (restarts: {}, last checkpoint {})",
        done.status,
        done.status_reason,
        done.restart_count,
        done.last_checkpoint_id.unwrap_or(0)
    );
    let check = check_output(&word_count.output_dir, &word_count.expected_counts())?;
    let expected_lines = word_count.records * word_count.words_per_record;
    println!(
        "6. committed output: {} lines in {} files, {} words; expected {} lines: {}",
        check.lines,
        check.files,
        check.keys,
        expected_lines,
        if check.is_exact() {
            "every count exactly once".to_owned()
        } else {
            check.problems.join("; ")
        }
    );
    println!("   output: {}", word_count.output_dir.display());
    let ok = unchanged && done.status == "Finished" && check.is_exact() && check.lines == expected_lines;
    println!(
        "demo result: {} (coordinator failover {:.0} ms with no subtask restarted; executor recovery {:.0} ms; output exact: {})",
        if ok { "OK" } else { "FAILED" },
        failover.as_secs_f64() * 1000.0,
        recovery.as_secs_f64() * 1000.0,
        check.is_exact()
    );
    drop(cluster);
    if !ok {
        bail!(
            "the demo saw lost, duplicated or unexpected results (files kept in {})",
            directory.display()
        );
    }
    Ok(())
}
