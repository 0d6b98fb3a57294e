//! `raftstream bench raft`: committed writes (job submits and cancels) per second and latency at
//! several client counts, and leader failover time (kill -9 of the leader -> first successful
//! write), on a local three-node cluster of real coordinator processes. `bench stream` lives in
//! [`crate::bench::stream`].

pub mod elastic;
pub mod function_calls;
pub mod functions;
pub mod replay;
pub mod skew;
pub mod stream;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use raftstream_api::client::ClusterClient;
use raftstream_coordinator::node::RaftSettings;

use crate::local_cluster::LocalCluster;

const BENCH_SPEC: &str = r#"{"name": "bench", "operators": [
  {"id": "source", "kind": "generator", "params": {"count": 10}},
  {"id": "sink", "kind": "print", "inputs": ["source"]}]}"#;

/// Options of `bench raft`.
#[derive(Debug, Args)]
pub struct RaftBenchArgs {
    /// Concurrent clients per throughput run.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    pub clients: Vec<usize>,
    /// Length of each throughput run.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Leader kills for the failover measurement.
    #[arg(long, default_value_t = 10)]
    pub kills: u32,
    /// Where the cluster's files go (a fresh temporary directory when absent).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// The p-th percentile (0-100) of sorted durations.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64)).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1_000.0
}

/// A benchmark's cluster: three coordinators with default settings, in `dir` or else a fresh
/// temporary directory named after `name` (cleared first), with a leader elected, and a client.
pub async fn start_bench_cluster(
    dir: Option<&std::path::Path>,
    name: &str,
) -> anyhow::Result<(LocalCluster, ClusterClient, PathBuf)> {
    let binary = std::env::current_exe().context("locating the raftstream binary")?;
    let directory = match dir {
        Some(dir) => std::path::absolute(dir)?,
        None => std::env::temp_dir().join(format!("raftstream-bench-{name}-{}", std::process::id())),
    };
    if directory.exists() {
        std::fs::remove_dir_all(&directory).with_context(|| format!("clearing {}", directory.display()))?;
    }
    let mut cluster = LocalCluster::start_with(
        &binary,
        &directory,
        3,
        Vec::new(),
        RaftSettings::default(),
        raftstream_coordinator::leader::ExecutorSettings::default(),
    )?;
    cluster.wait_for_leader(Duration::from_secs(20)).await?;
    let client = ClusterClient::new(&cluster.addresses(), Duration::from_secs(10))?;
    Ok((cluster, client, directory))
}

/// Waits until executor `executor_id` is alive and has a session with the leader.
pub async fn wait_for_executor(client: &ClusterClient, executor_id: &str, timeout: Duration) -> anyhow::Result<()> {
    crate::local_cluster::poll_until(&format!("executor {executor_id} to connect"), timeout, || async {
        let listed = client.list_executors().await.ok()?;
        listed
            .executors
            .iter()
            .any(|e| e.executor_id == executor_id && e.alive && e.connected)
            .then_some(())
    })
    .await
}

/// Runs the benchmark and prints its figures.
pub async fn run_raft_bench(args: RaftBenchArgs) -> anyhow::Result<()> {
    let binary = std::env::current_exe().context("locating the raftstream binary")?;
    let directory = match &args.dir {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir().join(format!("raftstream-bench-{}", std::process::id())),
    };
    if directory.exists() {
        std::fs::remove_dir_all(&directory).with_context(|| format!("clearing {}", directory.display()))?;
    }
    let settings = RaftSettings::default();
    println!(
        "bench raft: 3 coordinators on loopback, heartbeat {} ms, election timeout {}-{} ms, RocksDB with synced log appends",
        settings.heartbeat_interval_ms, settings.election_timeout_min_ms, settings.election_timeout_max_ms
    );
    let mut cluster = LocalCluster::start(&binary, &directory, 3, Vec::new(), settings)?;
    let leader = cluster.wait_for_leader(Duration::from_secs(20)).await?;
    println!("leader: node {leader}; files in {}", directory.display());

    println!(
        "\n{:>8} {:>12} {:>10} {:>10} {:>10}",
        "clients", "writes/s", "p50 ms", "p99 ms", "writes"
    );
    for clients in &args.clients {
        let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
        let leader_address = cluster
            .node(leader)
            .map(|node| node.address.clone())
            .context("leader vanished")?;
        let (writes, elapsed, mut latencies) =
            throughput_run(&leader_address, *clients, Duration::from_secs(args.seconds)).await?;
        latencies.sort();
        println!(
            "{:>8} {:>12.0} {:>10.2} {:>10.2} {:>10}",
            clients,
            writes as f64 / elapsed.as_secs_f64(),
            millis(percentile(&latencies, 50.0)),
            millis(percentile(&latencies, 99.0)),
            writes
        );
    }

    println!("\nleader failover: kill -9 of the leader -> first successful write on the new leader");
    let mut failovers = Vec::new();
    for round in 1..=args.kills {
        let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
        wait_until_all_caught_up(&mut cluster, Duration::from_secs(20)).await?;
        let survivors: Vec<String> = cluster
            .nodes()
            .filter(|node| node.node_id != leader)
            .map(|node| node.address.clone())
            .collect();
        let client = ClusterClient::new(&survivors, Duration::ZERO)?.with_attempt_timeout(Duration::from_millis(400));
        let killed_at = Instant::now();
        cluster.kill(leader)?;
        let mut attempt = 0u64;
        loop {
            attempt += 1;
            if client
                .submit_job(BENCH_SPEC, &format!("failover-{round}-{attempt}"))
                .await
                .is_ok()
            {
                break;
            }
            if killed_at.elapsed() > Duration::from_secs(30) {
                bail!("no write succeeded within 30 s after killing node {leader}");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let failover = killed_at.elapsed();
        println!(
            "  kill {round:>2}: node {leader} killed, first write after {:.1} ms",
            millis(failover)
        );
        failovers.push(failover);
        cluster.restart(leader)?;
    }
    failovers.sort();
    if !failovers.is_empty() {
        println!(
            "failover over {} kills: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            failovers.len(),
            millis(percentile(&failovers, 50.0)),
            millis(percentile(&failovers, 99.0)),
            millis(failovers[failovers.len() - 1])
        );
    }
    cluster.kill_all();
    if args.dir.is_none() {
        let _ = std::fs::remove_dir_all(&directory);
    }
    Ok(())
}

async fn throughput_run(
    address: &str,
    clients: usize,
    length: Duration,
) -> anyhow::Result<(u64, Duration, Vec<Duration>)> {
    let client = Arc::new(ClusterClient::new(&[address.to_owned()], Duration::from_secs(5))?);
    let started = Instant::now();
    let deadline = started + length;
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..clients {
        let client = client.clone();
        workers.spawn(async move {
            let mut latencies = Vec::new();
            let mut sequence = 0u64;
            // Jobs come and go, as on a real cluster: every submit is followed by a cancel, and
            // both are committed writes.
            while Instant::now() < deadline {
                sequence += 1;
                let begun = Instant::now();
                let job = client
                    .submit_job(BENCH_SPEC, &format!("bench-{clients}-{worker}-{sequence}"))
                    .await?;
                latencies.push(begun.elapsed());
                let begun = Instant::now();
                client
                    .cancel_job(&job.job_id, &format!("bench-cancel-{clients}-{worker}-{sequence}"))
                    .await?;
                latencies.push(begun.elapsed());
            }
            anyhow::Ok(latencies)
        });
    }
    let mut all = Vec::new();
    while let Some(joined) = workers.join_next().await {
        all.extend(joined??);
    }
    Ok((all.len() as u64, started.elapsed(), all))
}

async fn wait_until_all_caught_up(cluster: &mut LocalCluster, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let client = ClusterClient::new(&cluster.addresses(), Duration::from_millis(500))?;
    loop {
        cluster.check_running()?;
        if let Ok(status) = client.cluster_status().await {
            let leader_log = status
                .nodes
                .iter()
                .filter(|n| n.state == "Leader")
                .filter_map(|n| n.last_log_index)
                .max();
            let caught_up = status.nodes.len() == 3
                && status
                    .nodes
                    .iter()
                    .all(|n| n.state == "Leader" || n.state == "Follower")
                && leader_log
                    .is_some_and(|last| status.nodes.iter().all(|n| n.applied_index.unwrap_or(0) + 100 >= last));
            if caught_up {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("the cluster did not settle within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_picks_nearest_rank() {
        let values: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&values, 50.0), Duration::from_millis(50));
        assert_eq!(percentile(&values, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&values, 100.0), Duration::from_millis(100));
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
    }
}

/// How long a benchmark waits for a bounded job to end.
const RUN_PATIENCE: Duration = Duration::from_secs(600);

/// Follows a bounded job to its end, from the first read that saw it `Running`.
pub struct RunToEnd {
    job_id: String,
    started: Option<Instant>,
    deadline: Instant,
}

impl RunToEnd {
    /// Starts following `job_id`, just submitted.
    pub fn new(job_id: &str) -> RunToEnd {
        RunToEnd {
            job_id: job_id.to_owned(),
            started: None,
            deadline: Instant::now() + RUN_PATIENCE,
        }
    }

    /// Reads the job once: the seconds it ran once it `Finished`, `None` while it has not ended;
    /// fails when it ended otherwise, or has not ended within 600 s.
    pub async fn poll(&mut self, client: &ClusterClient) -> anyhow::Result<Option<f64>> {
        if let Ok(job) = client
            .get_job(&self.job_id, raftstream_proto::v1::ReadConsistency::Linearizable)
            .await
        {
            if job.status == "Running" && self.started.is_none() {
                self.started = Some(Instant::now());
            }
            match job.status.as_str() {
                "Finished" => {
                    let ran = self.started.map_or(0.0, |at| at.elapsed().as_secs_f64());
                    return Ok(Some(ran.max(1e-3)));
                }
                "Failed" | "Cancelled" => bail!("{} ended {}: {}", self.job_id, job.status, job.status_reason),
                _ => {}
            }
        }
        if Instant::now() > self.deadline {
            bail!("{} did not finish within {} s", self.job_id, RUN_PATIENCE.as_secs());
        }
        Ok(None)
    }
}
