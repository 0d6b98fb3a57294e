//! `raftstream demo`: a local cluster of three coordinators and two executors. A word-count job is
//! submitted through a follower and placed on the executors; then the coordinator leader and one
//! executor are killed with kill -9, and the demo shows that nothing acknowledged was lost, that the
//! leader failover moved no subtask, and that the dead executor's subtasks moved with new epochs.
//! (The streaming runtime that executes the subtasks comes next; the demo then checks the counts.)

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use raftstream_coordinator::client::ClusterClient;
use raftstream_coordinator::leader::ExecutorSettings;
use raftstream_coordinator::node::RaftSettings;
use raftstream_proto::v1 as pb;

use crate::local_cluster::{poll_until as wait_for, LocalCluster};

const WORD_COUNT: &str = include_str!("../examples/wordcount.yaml");

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
    println!(
        "1. starting three coordinators and two executors with 4 and 8 slots (files in {})",
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
    cluster.start_executor("exec-1", 4)?;
    cluster.start_executor("exec-2", 8)?;

    let follower = cluster
        .nodes()
        .map(|node| node.node_id)
        .find(|id| *id != leader)
        .context("no follower")?;
    let follower_address = cluster
        .node(follower)
        .map(|node| node.address.clone())
        .context("no follower")?;
    println!("2. submitting the word-count job through follower {follower} (it forwards to the leader)");
    let through_follower = ClusterClient::new(&[follower_address], Duration::from_secs(10))?;
    let job = through_follower.submit_job(WORD_COUNT, "demo-word-count").await?;
    println!(
        "   {} ({}) accepted with {} subtasks",
        job.job_id,
        job.name,
        job.subtasks.len()
    );
    let everyone = ClusterClient::new(&cluster.addresses(), Duration::from_secs(10))?;
    let placed = wait_for("the job to be placed", Duration::from_secs(20), || async {
        let job = everyone
            .get_job(&job.job_id, pb::ReadConsistency::Linearizable)
            .await
            .ok()?;
        job.subtasks
            .iter()
            .all(|s| !s.executor_id.is_empty())
            .then(|| placement_of(&job))
    })
    .await?;
    println!("   placed by the leader's scheduler, most free slots first:");
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
            .get_job(&job.job_id, pb::ReadConsistency::Linearizable)
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
    wait_for(
        "both executors to follow the new leader",
        Duration::from_secs(20),
        || async {
            let listed = survivors_only.list_executors().await.ok()?;
            listed
                .executors
                .iter()
                .all(|e| e.connected && e.last_heartbeat_age_ms.is_some_and(|age| age < 1_000))
                .then_some(())
        },
    )
    .await?;
    let after_failover = placement_of(
        &survivors_only
            .get_job(&job.job_id, pb::ReadConsistency::Linearizable)
            .await?,
    );
    let unchanged = after_failover == placed && placement_of(&read_back) == placed;
    println!(
        "   both executors reconnected to node {new_leader}; subtasks moved or re-epoched by the failover: {}",
        if unchanged { "none" } else { "SOME (unexpected)" }
    );

    println!("4. kill -9 of executor exec-1");
    let killed_at = Instant::now();
    cluster.kill_executor("exec-1")?;
    let moved = wait_for("exec-1's subtasks to move", Duration::from_secs(30), || async {
        let job = survivors_only
            .get_job(&job.job_id, pb::ReadConsistency::Linearizable)
            .await
            .ok()?;
        let placement = placement_of(&job);
        placement
            .values()
            .all(|(executor, _)| !executor.is_empty() && executor != "exec-1")
            .then_some(placement)
    })
    .await?;
    let recovery = killed_at.elapsed();
    println!(
        "   declared dead after its {} ms lease; its subtasks were placed on exec-2 with new epochs {:.0} ms after the kill:",
        executor_settings.lease_timeout_ms,
        recovery.as_secs_f64() * 1000.0
    );
    print_placement(&moved);
    let epochs_grew = moved.iter().all(|(subtask, (executor, epoch))| {
        let (old_executor, old_epoch) = &placed[subtask];
        if old_executor == "exec-1" {
            executor == "exec-2" && epoch > old_epoch
        } else {
            executor == old_executor && epoch == old_epoch
        }
    });

    println!("5. restarting coordinator {leader}; it rejoins as a follower");
    cluster.restart(leader)?;
    let ok = unchanged && epochs_grew;
    println!(
        "demo result: {} (coordinator failover {:.0} ms with no subtask moved; executor loss handled in {:.0} ms)",
        if ok { "OK" } else { "FAILED" },
        failover.as_secs_f64() * 1000.0,
        recovery.as_secs_f64() * 1000.0
    );
    drop(cluster);
    if args.dir.is_none() {
        let _ = std::fs::remove_dir_all(&directory);
    }
    if !ok {
        bail!("the demo saw an unexpected placement change");
    }
    Ok(())
}
