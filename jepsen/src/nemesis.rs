//! The nemesis: injects the scheduled faults (kills, pauses, partitions, delays, rescales, drains)
//! and heals them.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use raftstream::local_cluster::LocalCluster;
use raftstream_api::client::ClusterClient;
use raftstream_proto::v1 as pb;

use crate::config::RunConfig;
use crate::endpoint::node_endpoint;
use crate::network::Network;
use crate::recording::Clock;
use crate::report::FaultRecord;
use crate::schedule::{schedule, FaultKind, ScheduledFault, Target};

/// Injects the seeded faults one after another until the schedule (sized to the time limit) ends.
pub(crate) async fn nemesis(
    cluster: &mut LocalCluster,
    network: &Network,
    config: &RunConfig,
    clock: Clock,
    stream_job: Option<&str>,
) -> anyhow::Result<Vec<FaultRecord>> {
    let planned = schedule(config.seed, &config.faults, config.time_limit.as_millis() as u64);
    let mut records = Vec::new();
    let started = Instant::now();
    for fault in planned {
        tokio::time::sleep(Duration::from_millis(fault.quiet_ms)).await;
        let started_us = clock.now_us();
        let (target, heal_action) = match apply_fault(cluster, network, &fault, stream_job).await {
            Ok(injected) => injected,
            Err(error) => {
                tracing::warn!(error = %format!("{error:#}"), ?fault, "fault skipped");
                continue;
            }
        };
        println!(
            "[{:>6.1} s] {} {target} for {} ms",
            started.elapsed().as_secs_f64(),
            fault.kind.name(),
            fault.duration_ms
        );
        tokio::time::sleep(Duration::from_millis(fault.duration_ms)).await;
        heal_action.apply(cluster, network)?;
        records.push(FaultRecord {
            kind: fault.kind,
            target,
            started_us,
            healed_us: clock.now_us(),
        });
    }
    // The rest of the time limit without faults.
    if let Some(rest) = config.time_limit.checked_sub(started.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    Ok(records)
}

/// How to undo an injected fault.
pub enum Heal {
    RestartNode(u64),
    ContinueNode(u64),
    RestartExecutor(String),
    ContinueExecutor(String),
    RestartEverything {
        nodes: Vec<u64>,
        executors: Vec<String>,
    },
    /// Restore every link.
    Network,
    /// Nothing to undo (a rescale).
    Nothing,
}

impl Heal {
    pub fn apply(self, cluster: &mut LocalCluster, network: &Network) -> anyhow::Result<()> {
        match self {
            Heal::Network => network.heal(),
            Heal::Nothing => Ok(()),
            Heal::RestartNode(node_id) => cluster.restart(node_id),
            Heal::ContinueNode(node_id) => cluster.signal_node(node_id, false),
            Heal::RestartExecutor(executor_id) => cluster.restart_executor(&executor_id),
            Heal::ContinueExecutor(executor_id) => cluster.signal_executor(&executor_id, false),
            Heal::RestartEverything { nodes, executors } => {
                for node_id in nodes {
                    cluster.restart(node_id)?;
                }
                for executor_id in executors {
                    cluster.restart_executor(&executor_id)?;
                }
                Ok(())
            }
        }
    }
}

/// Injects one fault now; returns who it hit and how to undo it.
pub async fn apply_fault(
    cluster: &mut LocalCluster,
    network: &Network,
    fault: &ScheduledFault,
    stream_job: Option<&str>,
) -> anyhow::Result<(String, Heal)> {
    let node_ids: Vec<u64> = cluster.nodes().map(|node| node.node_id).collect();
    let executors = cluster.executor_ids();
    let pause = fault.kind == FaultKind::Pause;
    let everyone = network.endpoints();
    let isolate = |side: BTreeSet<String>| {
        let rest: BTreeSet<String> = everyone.difference(&side).cloned().collect();
        network.cut_between(&side, &rest)
    };
    match fault.target {
        Target::IsolatedLeader => {
            let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
            isolate([node_endpoint(leader)].into())?;
            Ok((format!("leader node {leader} cut off"), Heal::Network))
        }
        Target::Minority(draw) => {
            let size = (node_ids.len() - 1) / 2;
            let mut order = node_ids.clone();
            let first = draw as usize % order.len().max(1);
            order.rotate_left(first);
            let minority: Vec<u64> = order.into_iter().take(size.max(1)).collect();
            isolate(minority.iter().map(|node_id| node_endpoint(*node_id)).collect())?;
            Ok((format!("minority {minority:?} cut off"), Heal::Network))
        }
        Target::Bridge(choice) => {
            let bridge = node_ids[choice as usize % node_ids.len().max(1)];
            let rest: Vec<u64> = node_ids.iter().copied().filter(|node_id| *node_id != bridge).collect();
            let (left, right) = rest.split_at(rest.len() / 2);
            let side = |nodes: &[u64]| nodes.iter().map(|node_id| node_endpoint(*node_id)).collect();
            network.cut_between(&side(left), &side(right))?;
            Ok((format!("{left:?} | {right:?}, bridged by node {bridge}"), Heal::Network))
        }
        Target::IsolatedExecutor(choice) => {
            let Some(executor_id) = executors.get(choice as usize % executors.len().max(1)).cloned() else {
                bail!("no executor to cut off");
            };
            isolate([executor_id.clone()].into())?;
            Ok((format!("executor {executor_id} cut off"), Heal::Network))
        }
        Target::StreamJob { parallelism } => {
            let Some(job_id) = stream_job else {
                bail!("no stream job to rescale");
            };
            let client = ClusterClient::new(&cluster.addresses(), Duration::from_secs(5))?;
            let parallelism = rescale_stream_job(&client, job_id, parallelism).await?;
            Ok((
                format!("stream job {job_id} to parallelism {parallelism}"),
                Heal::Nothing,
            ))
        }
        Target::DrainedExecutor(choice) => {
            let Some(executor_id) = executors.get(choice as usize % executors.len().max(1)).cloned() else {
                bail!("no executor to drain");
            };
            // It exits once drained; one that does not within the patience is killed, which
            // the report shows (a drain that never finishes is a bug, not a pass).
            let outcome = match cluster.terminate_executor(&executor_id, DRAIN_PATIENCE).await {
                Ok(status) if status.success() => "drained, exited 0".to_owned(),
                Ok(status) => format!("exited with {status} after SIGTERM"),
                Err(_) => format!("NOT drained within {DRAIN_PATIENCE:?}: killed"),
            };
            Ok((
                format!("executor {executor_id} SIGTERM: {outcome}"),
                Heal::RestartExecutor(executor_id),
            ))
        }
        Target::AllLinks { delay_ms } => {
            network.delay_all(Duration::from_millis(delay_ms))?;
            Ok((format!("every link +{delay_ms} ms"), Heal::Network))
        }
        Target::Everything => {
            for executor_id in &executors {
                cluster.kill_executor(executor_id)?;
            }
            cluster.kill_all();
            Ok((
                "every process".to_owned(),
                Heal::RestartEverything {
                    nodes: node_ids,
                    executors,
                },
            ))
        }
        Target::Leader | Target::Follower(_) => {
            let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
            let (node_id, role) = match fault.target {
                Target::Follower(choice) => {
                    let followers: Vec<u64> = node_ids.iter().copied().filter(|id| *id != leader).collect();
                    let Some(node_id) = followers.get(choice as usize % followers.len().max(1)) else {
                        bail!("no follower to fault");
                    };
                    (*node_id, "follower")
                }
                _ => (leader, "leader"),
            };
            if pause {
                cluster.signal_node(node_id, true)?;
                Ok((format!("{role} node {node_id}"), Heal::ContinueNode(node_id)))
            } else {
                cluster.kill(node_id)?;
                Ok((format!("{role} node {node_id}"), Heal::RestartNode(node_id)))
            }
        }
        Target::Executor(choice) => {
            let Some(executor_id) = executors.get(choice as usize % executors.len().max(1)).cloned() else {
                bail!("no executor to fault");
            };
            if pause {
                cluster.signal_executor(&executor_id, true)?;
                Ok((format!("executor {executor_id}"), Heal::ContinueExecutor(executor_id)))
            } else {
                cluster.kill_executor(&executor_id)?;
                Ok((format!("executor {executor_id}"), Heal::RestartExecutor(executor_id)))
            }
        }
    }
}

/// How long a drained executor may take to exit.
pub(crate) const DRAIN_PATIENCE: Duration = Duration::from_secs(30);

/// Rescales every operator of the stream job to `parallelism` (or the next one up when it runs at
/// that already), waiting up to 10 s for it to be running (a restart may be in progress);
/// returns the parallelism asked for.
pub(crate) async fn rescale_stream_job(client: &ClusterClient, job_id: &str, parallelism: u32) -> anyhow::Result<u32> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let job = client.get_job(job_id, pb::ReadConsistency::Linearizable).await?;
        let current = job
            .subtasks
            .iter()
            .filter(|subtask| subtask.operator_id == "counts")
            .count() as u32;
        let target = if current == parallelism {
            parallelism % 4 + 1
        } else {
            parallelism
        };
        if job.status == "Running" {
            match client.rescale_job(job_id, None, target, "").await {
                Ok(_) => return Ok(target),
                Err(error) if Instant::now() >= deadline => {
                    return Err(error).with_context(|| format!("rescaling {job_id} to {target}"))
                }
                // Not running any more, a rescale still in progress, or slots taken by the
                // metadata clients' jobs for now: try again shortly.
                Err(_) => {}
            }
        } else if Instant::now() >= deadline {
            bail!("{job_id} stayed {} for 10 s: not rescaled", job.status);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Restores every link, resumes and restarts every process, and waits for a leader.
pub async fn heal_everything(cluster: &mut LocalCluster, network: &Network) -> anyhow::Result<()> {
    network.heal()?;
    heal(cluster).await
}

/// Makes sure nothing is left paused or down, then waits for a leader.
pub(crate) async fn heal(cluster: &mut LocalCluster) -> anyhow::Result<()> {
    let node_ids: Vec<u64> = cluster.nodes().map(|node| node.node_id).collect();
    for node_id in node_ids {
        if cluster.node(node_id).is_some_and(|node| node.pid().is_none()) {
            cluster.restart(node_id)?;
        } else {
            let _ = cluster.signal_node(node_id, false);
        }
    }
    for executor_id in cluster.executor_ids() {
        if cluster
            .executor(&executor_id)
            .is_some_and(|executor| executor.pid().is_none())
        {
            cluster.restart_executor(&executor_id)?;
        } else {
            let _ = cluster.signal_executor(&executor_id, false);
        }
    }
    cluster.wait_for_leader(Duration::from_secs(30)).await?;
    Ok(())
}
