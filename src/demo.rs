//! `raftstream demo`: a local three-coordinator cluster, a word-count job submitted through a
//! follower, a kill -9 of the leader, and proof that the job survived. (Executors and the stream
//! itself join the demo with the streaming runtime.)

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use raftstream_coordinator::client::ClusterClient;
use raftstream_coordinator::node::RaftSettings;
use raftstream_proto::v1 as pb;

use crate::local_cluster::LocalCluster;

const WORD_COUNT: &str = include_str!("../examples/wordcount.yaml");

/// Options of `demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where the cluster's files go (a fresh temporary directory when absent).
    #[arg(long)]
    pub dir: Option<PathBuf>,
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
    println!("1. starting three coordinator processes (RocksDB in {})", directory.display());
    let mut cluster = LocalCluster::start(&binary, &directory, 3, Vec::new(), RaftSettings::default())?;
    let leader = cluster.wait_for_leader(Duration::from_secs(20)).await?;
    for node in cluster.nodes() {
        println!("   node {} at {} (pid {}){}", node.node_id, node.address, node.pid().unwrap_or(0), if node.node_id == leader { "  <- leader" } else { "" });
    }

    let follower = cluster.nodes().map(|node| node.node_id).find(|id| *id != leader).context("no follower")?;
    let follower_address = cluster.node(follower).map(|node| node.address.clone()).context("no follower")?;
    println!("2. submitting the word-count job through follower node {follower} (it forwards to the leader)");
    let through_follower = ClusterClient::new(&[follower_address], Duration::from_secs(10))?;
    let job = through_follower.submit_job(WORD_COUNT, "demo-word-count").await?;
    println!("   {} ({}) is {} with {} subtasks waiting for executors", job.job_id, job.name, job.status, job.subtasks.len());

    println!("3. kill -9 of the leader, node {leader}");
    let survivors: Vec<String> = cluster.nodes().filter(|node| node.node_id != leader).map(|node| node.address.clone()).collect();
    let client = ClusterClient::new(&survivors, Duration::ZERO)?.with_attempt_timeout(Duration::from_millis(400));
    let killed_at = Instant::now();
    cluster.kill(leader)?;
    let mut attempt = 0;
    let read_back = loop {
        attempt += 1;
        match client.get_job(&job.job_id, pb::ReadConsistency::Linearizable).await {
            Ok(job) => break job,
            Err(_) if killed_at.elapsed() < Duration::from_secs(20) => tokio::time::sleep(Duration::from_millis(2)).await,
            Err(error) => bail!("no new leader answered within 20 s: {error}"),
        }
    };
    let failover = killed_at.elapsed();
    let new_leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    println!(
        "   node {new_leader} took over; first linearizable read answered {:.0} ms after the kill ({attempt} attempts)",
        failover.as_secs_f64() * 1000.0
    );
    println!("   {} is still {}: nothing acknowledged was lost", read_back.job_id, read_back.status);

    println!("4. restarting node {leader}; it rejoins as a follower and catches up");
    cluster.restart(leader)?;
    let everyone = ClusterClient::new(&cluster.addresses(), Duration::from_secs(10))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = everyone.cluster_status().await?;
        let applied: Vec<Option<u64>> = status.nodes.iter().map(|node| node.applied_index).collect();
        if applied.iter().all(Option::is_some) && applied.windows(2).all(|pair| pair[0] == pair[1]) {
            println!("   all three nodes applied up to log index {}", applied[0].unwrap_or(0));
            break;
        }
        if Instant::now() > deadline {
            bail!("node {leader} did not catch up within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let jobs = everyone.list_jobs(pb::ReadConsistency::Linearizable).await?;
    println!("5. cluster state: {} job(s); try `raftstream cluster up` to keep a cluster running", jobs.len());
    println!("demo result: OK (failover {:.0} ms)", failover.as_secs_f64() * 1000.0);
    cluster.kill_all();
    if args.dir.is_none() {
        let _ = std::fs::remove_dir_all(&directory);
    }
    Ok(())
}
