//! One chaos run: a real cluster of processes on loopback, the workloads recording their histories,
//! the seeded faults, then healing, settling and checking.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use raftstream::local_cluster::{poll_until, LocalCluster};
use raftstream::wordcount::{check_output, generated_records, WordCountJob};
use raftstream_api::client::{ClientError, ClusterClient};
use raftstream_coordinator::leader::ExecutorSettings;
use raftstream_coordinator::node::RaftSettings;
use raftstream_proto::v1 as pb;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;
use tonic::Code;

use crate::checkpoints::{check_checkpoints, CheckpointObservation, RestoreObservation};
use crate::history::{Operation, Outcome};
use crate::job_table::{check_job_table, JobInput, JobOutput, JobState};
use crate::network::{node_endpoint, NetMode, Network};
use crate::report::{
    by_kind, checkpoint_recovery_ms, election_figures, metadata_recovery_ms, operation_counts, slowest_recoveries,
    throughput, throughput_dips, FaultRecord, LeaderObservation, Report, StreamResult,
};
use crate::schedule::{schedule, FaultKind, ScheduledFault, Target};

/// What to run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub seed: u64,
    pub time_limit: Duration,
    pub faults: Vec<FaultKind>,
    pub metadata: bool,
    pub stream: bool,
    pub checkpoints: bool,
    pub nodes: u64,
    pub executors: u32,
    pub clients: u32,
    pub out: PathBuf,
    /// The `raftstream` binary the cluster runs.
    pub binary: PathBuf,
    /// A bug switched on in the executors (see `raftstream_executor::defects`).
    pub inject_defect: Option<String>,
    /// Where the faults act: the harness's proxies or the kernel's namespaces.
    pub net: NetMode,
}

/// Microseconds on the run's one clock, a monotonic one started with the run.
#[derive(Clone, Copy)]
struct Clock {
    started: Instant,
}

impl Clock {
    fn start() -> Clock {
        Clock {
            started: Instant::now(),
        }
    }

    fn now_us(self) -> u64 {
        self.started.elapsed().as_micros() as u64
    }

    /// A recent wall-clock time (what the coordinators record, on this same machine) on this
    /// clock: now, less how long ago it was by the wall clock. Not counted from the run's start:
    /// the wall clock may step against the monotonic one during a run (a suspended virtual machine
    /// resumes with its wall clock set forward, here once by 25 s), and every later completion
    /// time would then read as that much later than the faults it followed.
    fn from_wall_ms(self, wall_ms: u64) -> u64 {
        let ago_us = wall_clock_ms().saturating_sub(wall_ms).saturating_mul(1_000);
        self.now_us().saturating_sub(ago_us)
    }
}

fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

type History = Arc<Mutex<Vec<Operation<JobInput, JobOutput>>>>;

/// What the poller saw of the stream job and the cluster.
#[derive(Debug, Clone, Default)]
struct Observations {
    checkpoints: Vec<CheckpointObservation>,
    restores: Vec<RestoreObservation>,
    leaders: Vec<LeaderObservation>,
    /// The stream job as last seen once it ended: 1,000 jobs ending after it (the metadata
    /// clients cancel many), the coordinators forget it.
    stream_ended: Option<pb::Job>,
}

const STREAM_RATE: u64 = 2_000;
/// Enough for one executor to hold the stream job (10 subtasks) and every metadata job at once:
/// a cluster provisioned for the loss of one executor (N+1), as operators run one. With less, the
/// stream job would wait for the failed executor to return, and its recovery would measure the
/// fault's duration rather than the system.
const SLOTS_PER_EXECUTOR: u32 = 24;

/// Metadata jobs kept running at once (two subtasks each). Clients submit more than they cancel;
/// beyond this they cancel instead, so the jobs never crowd out the stream job's slots.
const MAX_ACTIVE_METADATA_JOBS: usize = 6;

/// The metadata jobs the clients know of: every one submitted, and those believed running (from
/// answers and the latest list; a job whose submit went unanswered appears with the next list).
#[derive(Debug, Default)]
struct MetadataJobs {
    known: Vec<String>,
    active: std::collections::BTreeSet<String>,
}

/// Runs the cluster, the workloads and the faults; returns what the checkers found.
pub async fn run(config: RunConfig) -> anyhow::Result<Report> {
    if config.nodes < 3 {
        bail!("--nodes must be at least 3: faults on a smaller cluster lose its majority by design");
    }
    if config.executors < 2 {
        bail!("--executors must be at least 2, so a job can move when one fails");
    }
    let (mut cluster, network, admin) = start_cluster(&config).await?;
    let clock = Clock::start();
    let stop = CancellationToken::new();

    // The stream job goes first, so the scheduler serves it before the metadata clients' jobs.
    let stream_spec = WordCountJob {
        seed: config.seed,
        // About as long as the faults last: restarts make it lag, so it ends soon after healing.
        records: STREAM_RATE * config.time_limit.as_secs().max(10),
        rate_per_second: Some(STREAM_RATE),
        parallelism: 2,
        vocabulary_size: 200,
        words_per_record: 4,
        checkpoint_interval_ms: 300,
        output_dir: config.out.join("stream-output"),
    };
    let _ = std::fs::remove_dir_all(&stream_spec.output_dir);
    let stream_job = if config.stream || config.checkpoints {
        // The word count's own spec gives up after 10 restarts; a long run restarts it far more
        // often, on purpose.
        let mut spec: serde_json::Value = serde_json::from_str(&stream_spec.spec("jepsen-stream"))?;
        spec["restart"] = serde_json::json!({"strategy": "fixed_delay", "max_attempts": 1_000_000, "delay_ms": 200});
        // Six seconds of completed checkpoints stay listed, so a poll slowed by a fault still
        // sees the first one completed after it (recovery is read from completion times).
        spec["checkpoint"]["retained"] = serde_json::json!(20);
        let job = admin.submit_job(&spec.to_string(), "jepsen-stream").await?;
        Some(job.job_id)
    } else {
        None
    };

    let history: History = Arc::new(Mutex::new(Vec::new()));
    let known_jobs: Arc<Mutex<MetadataJobs>> = Arc::new(Mutex::new(MetadataJobs::default()));
    let mut workers = Vec::new();
    if config.metadata {
        for client_number in 0..config.clients {
            // Each client starts at a different coordinator.
            let mut addresses = cluster.addresses();
            let first = client_number as usize % addresses.len().max(1);
            addresses.rotate_left(first);
            let client =
                ClusterClient::new(&addresses, Duration::from_secs(4))?.with_attempt_timeout(Duration::from_secs(1));
            workers.push(tokio::spawn(metadata_client(
                client_number,
                client,
                config.seed,
                clock,
                history.clone(),
                known_jobs.clone(),
                stream_job.clone(),
                stop.clone(),
            )));
        }
    }
    let polls: Arc<Mutex<Observations>> = Arc::default();
    if let (true, Some(job_id)) = (config.checkpoints || config.stream, &stream_job) {
        let client = ClusterClient::new(&cluster.addresses(), Duration::from_secs(2))?
            .with_attempt_timeout(Duration::from_secs(1));
        let parallelism = u64::from(stream_spec.parallelism);
        workers.push(tokio::spawn(poll_checkpoints(
            client,
            job_id.clone(),
            parallelism,
            clock,
            polls.clone(),
            stop.clone(),
        )));
    }

    let faults = nemesis(&mut cluster, &network, &config, clock, stream_job.as_deref()).await?;
    stop.cancel();
    for worker in workers {
        let _ = worker.await;
    }
    heal_everything(&mut cluster, &network).await?;

    // After healing: one more read of everything through the linearizable path.
    let final_reader = ClusterClient::new(&cluster.addresses(), Duration::from_secs(30))?;
    let known: Vec<String> = known_jobs.lock().map(|jobs| jobs.known.clone()).unwrap_or_default();
    if config.metadata {
        let mut operations = Vec::new();
        operations.push(list_operation(&final_reader, clock, u32::MAX, stream_job.as_deref()).await);
        for job_id in known {
            operations.push(get_operation(&final_reader, clock, u32::MAX, &job_id).await);
        }
        if let Ok(mut recorded) = history.lock() {
            for mut operation in operations {
                operation.index = recorded.len();
                recorded.push(operation);
            }
        }
    }

    let seen_ended = polls.lock().ok().and_then(|polls| polls.stream_ended.clone());
    let stream = match (&stream_job, config.stream) {
        (Some(job_id), true) => Some(finish_stream(&final_reader, job_id, &stream_spec, seen_ended).await?),
        _ => None,
    };
    let history = history.lock().map(|recorded| recorded.clone()).unwrap_or_default();
    let Observations {
        checkpoints: observations,
        restores,
        leaders,
        ..
    } = polls.lock().map(|polls| polls.clone()).unwrap_or_default();
    let throughput_samples = throughput(&observations);
    let metadata_anomalies = if config.metadata {
        check_job_table(&history)
    } else {
        Vec::new()
    };
    let checkpoint_anomalies = if config.checkpoints {
        check_checkpoints(&observations, &restores)
    } else {
        Vec::new()
    };
    let mut faults_by_kind = BTreeMap::new();
    for fault in &faults {
        *faults_by_kind.entry(fault.kind.name().to_owned()).or_insert(0) += 1;
    }
    let elections = election_figures(&leaders, faults.len());
    let report = Report {
        seed: config.seed,
        time_limit_s: config.time_limit.as_secs(),
        network: match config.net {
            NetMode::Proxy => "proxy",
            NetMode::Netns => "netns",
        }
        .to_owned(),
        faults_by_kind,
        operations: operation_counts(&history),
        checkpoint_polls: observations.len(),
        metadata_anomalies,
        checkpoint_anomalies,
        stream,
        stream_recovery_ms: by_kind(&checkpoint_recovery_ms(&faults, &observations)),
        slowest_stream_recoveries: slowest_recoveries(&faults, &observations, 8),
        metadata_recovery_ms: by_kind(&metadata_recovery_ms(&faults, &history)),
        throughput_dip_percent: by_kind(&throughput_dips(&faults, &throughput_samples, 2.0)),
        faults,
        throughput: throughput_samples,
        elections,
        leaders,
    };
    let timeline_path = config.out.join("timeline.svg");
    let timeline = crate::timeline::render(
        &report.faults,
        &report.leaders,
        &observations,
        &report.throughput,
        clock.now_us() as f64 / 1e6,
    );
    std::fs::write(&timeline_path, timeline).with_context(|| format!("writing {}", timeline_path.display()))?;
    let history_path = config.out.join("history.json");
    std::fs::write(&history_path, serde_json::to_vec_pretty(&history)?)
        .with_context(|| format!("writing {}", history_path.display()))?;
    let report_path = config.out.join("report.json");
    std::fs::write(&report_path, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("writing {}", report_path.display()))?;
    Ok(report)
}

/// Attempts at starting the cluster when a port it was given got taken first.
const START_ATTEMPTS: u32 = 3;

/// The cluster of `config` on its faultable network, with every executor connected. Ports are
/// ones the OS reported free, closed again before the processes bind them: another process on
/// the machine (a parallel test) may take one in between, and the whole start is then tried
/// again on fresh ports rather than failing the run.
pub async fn start_cluster(config: &RunConfig) -> anyhow::Result<(LocalCluster, Network, ClusterClient)> {
    let mut attempt = 1;
    loop {
        match start_cluster_once(config).await {
            Err(error) if attempt < START_ATTEMPTS && format!("{error:#}").contains("Address already in use") => {
                tracing::warn!(attempt, error = %format!("{error:#}"), "a port was taken before the cluster bound it; starting again on fresh ports");
                attempt += 1;
            }
            started => return started,
        }
    }
}

async fn start_cluster_once(config: &RunConfig) -> anyhow::Result<(LocalCluster, Network, ClusterClient)> {
    std::fs::create_dir_all(&config.out).with_context(|| format!("creating {}", config.out.display()))?;
    let cluster_dir = config.out.join("cluster");
    if cluster_dir.exists() {
        std::fs::remove_dir_all(&cluster_dir).with_context(|| format!("clearing {}", cluster_dir.display()))?;
    }
    // Every link between processes goes where faults can cut or slow it.
    let executor_ids: Vec<String> = (1..=config.executors).map(|number| format!("exec-{number}")).collect();
    let network = Network::start(config.net, config.nodes, &executor_ids).await?;
    if config.faults.contains(&FaultKind::Delay) && !network.supports_delay() {
        bail!(
            "the delay fault needs the kernel's netem (sch_netem) under --net netns, and this kernel has none: \
             leave delay out of --faults or use --net proxy"
        );
    }
    let mut cluster = LocalCluster::start_routed(
        &config.binary,
        &cluster_dir,
        config.nodes,
        network.node_addresses.values().cloned().collect(),
        RaftSettings::default(),
        ExecutorSettings::default(),
        network.wiring()?,
    )?;
    cluster.wait_for_leader(Duration::from_secs(30)).await?;
    if let Some(defect) = &config.inject_defect {
        cluster.set_executor_environment(vec![(
            raftstream_executor::defects::VARIABLE.to_owned(),
            defect.clone(),
        )]);
    }
    for executor_id in &executor_ids {
        cluster.start_executor_routed(
            executor_id,
            SLOTS_PER_EXECUTOR,
            Some(network.executor_routes(executor_id)?),
        )?;
    }
    let admin =
        ClusterClient::new(&cluster.addresses(), Duration::from_secs(30))?.with_attempt_timeout(Duration::from_secs(2));
    poll_until("the executors to connect", Duration::from_secs(30), || async {
        let listed = admin.list_executors().await.ok()?;
        (listed.executors.iter().filter(|executor| executor.connected).count() == config.executors as usize)
            .then_some(())
    })
    .await?;
    Ok((cluster, network, admin))
}

/// Injects the seeded faults one after another until the schedule (sized to the time limit) ends.
async fn nemesis(
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
const DRAIN_PATIENCE: Duration = Duration::from_secs(30);

/// Rescales every operator of the stream job to `parallelism` (or the next one up when it runs at
/// that already), waiting up to 10 s for it to be running (a restart may be in progress);
/// returns the parallelism asked for.
async fn rescale_stream_job(client: &ClusterClient, job_id: &str, parallelism: u32) -> anyhow::Result<u32> {
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
async fn heal(cluster: &mut LocalCluster) -> anyhow::Result<()> {
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

/// A metadata job: never ends on its own (unbounded, slow, restarts forever), so only a cancel
/// changes its state, as the model assumes.
fn metadata_job_spec(name: &str) -> String {
    format!(
        r#"{{"name": "{name}", "parallelism": 1, "checkpoint": {{"interval_ms": 0}},
  "restart": {{"strategy": "fixed_delay", "max_attempts": 1000000, "delay_ms": 200}},
  "operators": [
    {{"id": "ticks", "kind": "generator", "params": {{"rate_per_second": 1}}}},
    {{"id": "out", "kind": "print", "inputs": ["ticks"]}}]}}"#
    )
}

#[allow(clippy::too_many_arguments)]
async fn metadata_client(
    number: u32,
    client: ClusterClient,
    seed: u64,
    clock: Clock,
    history: History,
    known_jobs: Arc<Mutex<MetadataJobs>>,
    stream_job: Option<String>,
    stop: CancellationToken,
) {
    let mut random = StdRng::seed_from_u64(seed ^ (u64::from(number) + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut submitted = 0u64;
    while !stop.is_cancelled() {
        let (known, active): (Vec<String>, Vec<String>) = known_jobs
            .lock()
            .map(|jobs| (jobs.known.clone(), jobs.active.iter().cloned().collect()))
            .unwrap_or_default();
        let pick = |random: &mut StdRng, from: &[String]| -> String {
            match from.len() {
                0 => "job-999999".to_owned(),
                count => from[random.gen_range(0..count)].clone(),
            }
        };
        let choice = random.gen_range(0..100);
        let crowded = active.len() >= MAX_ACTIVE_METADATA_JOBS;
        let operation = if (choice < 25 && !crowded) || known.is_empty() {
            submitted += 1;
            let request_id = format!("client-{number}-submit-{submitted}");
            let invoked_us = clock.now_us();
            let answer = client.submit_job(&metadata_job_spec(&request_id), &request_id).await;
            let outcome = match answer {
                Ok(job) => {
                    if let Ok(mut jobs) = known_jobs.lock() {
                        jobs.known.push(job.job_id.clone());
                        jobs.active.insert(job.job_id.clone());
                    }
                    Outcome::Ok(JobOutput::Submitted { job_id: job.job_id })
                }
                Err(error) => classify(&error, |_| None),
            };
            operation(number, JobInput::Submit { request_id }, outcome, invoked_us, clock)
        } else if choice < 40 || crowded && choice < 25 {
            // Crowded: a submit becomes a cancel of a running job.
            let job_id = pick(&mut random, if choice < 25 { &active } else { &known });
            let request_id = format!("client-{number}-cancel-{}", random.gen::<u32>());
            let invoked_us = clock.now_us();
            let outcome = match client.cancel_job(&job_id, &request_id).await {
                Ok(_) => Outcome::Ok(JobOutput::Cancelled),
                Err(error) => classify(&error, |code| match code {
                    Code::NotFound => Some(JobOutput::NotFound),
                    Code::FailedPrecondition => Some(JobOutput::AlreadyEnded),
                    _ => None,
                }),
            };
            if matches!(outcome, Outcome::Ok(_)) {
                if let Ok(mut jobs) = known_jobs.lock() {
                    jobs.active.remove(&job_id);
                }
            }
            operation(number, JobInput::Cancel { job_id }, outcome, invoked_us, clock)
        } else if choice < 85 {
            get_operation(&client, clock, number, &pick(&mut random, &known)).await
        } else {
            let listed = list_operation(&client, clock, number, stream_job.as_deref()).await;
            if let (Outcome::Ok(JobOutput::Listed { jobs }), Ok(mut known_jobs)) = (&listed.outcome, known_jobs.lock())
            {
                known_jobs.active = jobs
                    .iter()
                    .filter(|(_, state)| **state == JobState::Active)
                    .map(|(job_id, _)| job_id.clone())
                    .collect();
            }
            listed
        };
        if let Ok(mut recorded) = history.lock() {
            let mut operation = operation;
            operation.index = recorded.len();
            recorded.push(operation);
        }
        let pause = random.gen_range(20..120);
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_millis(pause)) => {}
        }
    }
}

fn operation(
    client: u32,
    input: JobInput,
    outcome: Outcome<JobOutput>,
    invoked_us: u64,
    clock: Clock,
) -> Operation<JobInput, JobOutput> {
    let completed_us = (!matches!(outcome, Outcome::Unknown(_))).then(|| clock.now_us());
    Operation {
        index: 0,
        client,
        input,
        outcome,
        invoked_us,
        completed_us,
    }
}

/// A definite answer (`definite` maps a gRPC code to one), a certain failure (the request was
/// invalid), or unknown (nothing answered in time: it may still take effect).
fn classify(error: &ClientError, definite: impl Fn(Code) -> Option<JobOutput>) -> Outcome<JobOutput> {
    match definite(error.code()) {
        Some(output) => Outcome::Ok(output),
        None if error.code() == Code::InvalidArgument => Outcome::Fail(error.to_string()),
        None => Outcome::Unknown(error.to_string()),
    }
}

async fn get_operation(
    client: &ClusterClient,
    clock: Clock,
    number: u32,
    job_id: &str,
) -> Operation<JobInput, JobOutput> {
    let invoked_us = clock.now_us();
    let outcome = match client.get_job(job_id, pb::ReadConsistency::Linearizable).await {
        Ok(job) => Outcome::Ok(JobOutput::Found {
            state: JobState::of_status(&job.status),
        }),
        Err(error) => classify(&error, |code| (code == Code::NotFound).then_some(JobOutput::NotFound)),
    };
    operation(
        number,
        JobInput::Get {
            job_id: job_id.to_owned(),
        },
        outcome,
        invoked_us,
        clock,
    )
}

async fn list_operation(
    client: &ClusterClient,
    clock: Clock,
    number: u32,
    stream_job: Option<&str>,
) -> Operation<JobInput, JobOutput> {
    let invoked_us = clock.now_us();
    let outcome = match client.list_jobs(pb::ReadConsistency::Linearizable).await {
        Ok(jobs) => Outcome::Ok(JobOutput::Listed {
            jobs: jobs
                .into_iter()
                .filter(|job| Some(job.job_id.as_str()) != stream_job)
                .map(|job| (job.job_id.clone(), JobState::of_status(&job.status)))
                .collect(),
        }),
        Err(error) => classify(&error, |_| None),
    };
    operation(number, JobInput::List, outcome, invoked_us, clock)
}

/// Polls the stream job's completed checkpoints and the checkpoint each restart restored.
async fn poll_checkpoints(
    client: ClusterClient,
    job_id: String,
    parallelism: u64,
    clock: Clock,
    polls: Arc<Mutex<Observations>>,
    stop: CancellationToken,
) {
    let mut restarts_seen = 0;
    while !stop.is_cancelled() {
        if let Ok(checkpoints) = client.list_checkpoints(&job_id).await {
            let observation = CheckpointObservation {
                at_us: clock.now_us(),
                job_id: job_id.clone(),
                completed: checkpoints.iter().map(|checkpoint| checkpoint.checkpoint_id).collect(),
                records_committed: newest_generated_records(&checkpoints, parallelism),
                completed_at_us: checkpoints
                    .iter()
                    .map(|checkpoint| (checkpoint.checkpoint_id, clock.from_wall_ms(checkpoint.completed_at_ms)))
                    .collect(),
            };
            if let Ok(mut polls) = polls.lock() {
                polls.checkpoints.push(observation);
            }
        }
        let status = client.cluster_status().await.ok();
        let leader = status.as_ref().and_then(|status| status.leader_id);
        let term = status.and_then(|status| status.nodes.iter().map(|node| node.term).max());
        if let Ok(mut polls) = polls.lock() {
            polls.leaders.push(LeaderObservation {
                at_us: clock.now_us(),
                leader,
                term,
            });
        }
        if let Ok(job) = client.get_job(&job_id, pb::ReadConsistency::Linearizable).await {
            if has_ended(&job) {
                if let Ok(mut polls) = polls.lock() {
                    polls.stream_ended = Some(job.clone());
                }
            }
            let restored = job
                .status_reason
                .strip_prefix("restored from checkpoint ")
                .and_then(|id| id.trim().parse::<u64>().ok());
            if let (true, Some(checkpoint_id)) = (job.restart_count > restarts_seen, restored) {
                restarts_seen = job.restart_count;
                if let Ok(mut polls) = polls.lock() {
                    polls.restores.push(RestoreObservation {
                        at_us: clock.now_us(),
                        job_id: job_id.clone(),
                        checkpoint_id,
                    });
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
}

/// Whether a job is in a final state.
fn has_ended(job: &pb::Job) -> bool {
    matches!(job.status.as_str(), "Finished" | "Failed" | "Cancelled")
}

/// Lines the newest of `checkpoints` covers; `None` before the first checkpoint.
fn newest_generated_records(checkpoints: &[pb::Checkpoint], parallelism: u64) -> Option<u64> {
    checkpoints
        .iter()
        .max_by_key(|checkpoint| checkpoint.checkpoint_id)
        .map(|newest| generated_records(newest, parallelism))
}

/// How long the settle phase waits for the stream job to end. A job still catching up after the
/// faults (its source lags behind the rate and a restart replays from the last checkpoint) is
/// not a defect, so the wait lasts as long as committed progress keeps coming; only a job whose
/// checkpoints stop advancing for `stall_limit` is reported, and `cap` bounds the whole wait.
#[derive(Debug, Clone, Copy)]
struct SettleWait {
    stall_limit: Duration,
    cap: Duration,
}

const SETTLE_WAIT: SettleWait = SettleWait {
    // Several times the slowest recovery seen in 20-minute runs (restart-all p99 ~18 s).
    stall_limit: Duration::from_secs(120),
    cap: Duration::from_secs(30 * 60),
};

/// Why the settle phase stopped waiting for a job that did not end.
#[derive(Debug, Clone, PartialEq, Eq)]
enum SettleTimeout {
    Stalled {
        stall: Duration,
        committed_lines: Option<u64>,
    },
    Capped {
        waited: Duration,
    },
}

impl std::fmt::Display for SettleTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Stalled { stall, committed_lines } => {
                let at = committed_lines.map_or_else(|| "no checkpoint".to_owned(), |lines| format!("{lines} lines"));
                write!(
                    f,
                    "the job did not end and made no committed progress for {stall:?} (stuck at {at})"
                )
            }
            Self::Capped { waited } => write!(
                f,
                "the job did not end within {waited:?} after the faults, though still progressing"
            ),
        }
    }
}

/// Tracks the job's committed progress during the settle phase (pure, so the rule is testable).
#[derive(Debug)]
struct SettleWatch {
    wait: SettleWait,
    started: Instant,
    best_lines: Option<u64>,
    last_progress: Instant,
}

impl SettleWatch {
    fn new(wait: SettleWait, now: Instant) -> Self {
        Self {
            wait,
            started: now,
            best_lines: None,
            last_progress: now,
        }
    }

    /// Records the lines the newest completed checkpoint covers (if one could be read) and says
    /// whether to give up waiting.
    fn observe(&mut self, now: Instant, committed_lines: Option<u64>) -> Option<SettleTimeout> {
        if committed_lines > self.best_lines {
            self.best_lines = committed_lines;
            self.last_progress = now;
        }
        let waited = now.duration_since(self.started);
        let stall = now.duration_since(self.last_progress);
        if stall >= self.wait.stall_limit {
            Some(SettleTimeout::Stalled {
                stall,
                committed_lines: self.best_lines,
            })
        } else if waited >= self.wait.cap {
            Some(SettleTimeout::Capped { waited })
        } else {
            None
        }
    }
}

/// Waits for the stream job to end (see [`SettleWait`]) and checks its committed output against
/// the expected counts. A job that is no longer in the table ended earlier (`seen_ended`).
async fn finish_stream(
    client: &ClusterClient,
    job_id: &str,
    spec: &WordCountJob,
    seen_ended: Option<pb::Job>,
) -> anyhow::Result<StreamResult> {
    let parallelism = u64::from(spec.parallelism);
    let settle_started = Instant::now();
    let mut watch = SettleWatch::new(SETTLE_WAIT, settle_started);
    let mut next_progress_line = settle_started + Duration::from_secs(30);
    let ended = loop {
        match client.get_job(job_id, pb::ReadConsistency::Linearizable).await {
            Ok(job) if has_ended(&job) => break Ok(job),
            Err(error) if error.code() == Code::NotFound => {
                if let Some(job) = &seen_ended {
                    break Ok(job.clone());
                }
            }
            _ => {}
        }
        let committed_lines = client
            .list_checkpoints(job_id)
            .await
            .ok()
            .and_then(|checkpoints| newest_generated_records(&checkpoints, parallelism));
        let now = Instant::now();
        if let Some(timeout) = watch.observe(now, committed_lines) {
            break Err(timeout);
        }
        if now >= next_progress_line {
            next_progress_line = now + Duration::from_secs(30);
            println!(
                "[settle {:>5.0} s] {job_id} not ended yet: {} of {} lines committed",
                settle_started.elapsed().as_secs_f64(),
                committed_lines.map_or_else(|| "?".to_owned(), |lines| lines.to_string()),
                spec.records
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let check = check_output(&spec.output_dir, &spec.expected_counts())?;
    let expected_lines = spec.records * spec.words_per_record;
    let mut problems = check.problems.clone();
    let max_epoch = |job: &pb::Job| job.subtasks.iter().map(|subtask| subtask.epoch).max().unwrap_or(0);
    let (final_status, restarts, epochs) = match &ended {
        Ok(job) => {
            if job.status != "Finished" {
                problems.insert(0, format!("job ended {}: {}", job.status, job.status_reason));
            }
            (job.status.clone(), job.restart_count, max_epoch(job))
        }
        Err(timeout) => {
            // Name the job, how often it restarted and where its placements stand: a job that
            // keeps restarting without progress is a different defect than one that is stuck.
            let last = client.get_job(job_id, pb::ReadConsistency::Linearizable).await.ok();
            let (status, restarts, epochs) = last.as_ref().map_or(("unknown".to_owned(), 0, 0), |job| {
                (
                    format!("{}: {}", job.status, job.status_reason),
                    job.restart_count,
                    max_epoch(job),
                )
            });
            problems.insert(
                0,
                format!(
                    "{job_id} {timeout}; it restarted {restarts} times, epochs up to {epochs}, last status {status}"
                ),
            );
            ("not ended".to_owned(), restarts, epochs)
        }
    };
    Ok(StreamResult {
        job_id: job_id.to_owned(),
        final_status,
        restarts,
        max_epoch: epochs,
        expected_lines,
        lines: check.lines,
        exact: problems.is_empty() && check.lines == expected_lines,
        problems,
        settle_ms: u64::try_from(settle_started.elapsed().as_millis()).unwrap_or(u64::MAX),
    })
}

/// The faults a comma-separated `--faults` list names.
pub fn parse_faults(list: &str) -> Result<Vec<FaultKind>, String> {
    let kinds: BTreeSet<FaultKind> = list
        .split(',')
        .filter(|name| !name.trim().is_empty())
        .map(FaultKind::parse)
        .collect::<Result<_, _>>()?;
    Ok(kinds.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: SettleWait = SettleWait {
        stall_limit: Duration::from_secs(10),
        cap: Duration::from_secs(60),
    };

    #[test]
    fn settle_wait_lasts_while_committed_progress_comes() {
        let start = Instant::now();
        let mut watch = SettleWatch::new(WAIT, start);
        // Progress every 9 s keeps the watch going well past one stall limit.
        for step in 0..6u64 {
            let now = start + Duration::from_secs(9 * step);
            assert_eq!(watch.observe(now, Some(100 * step + 1)), None, "step {step}");
        }
    }

    #[test]
    fn settle_wait_gives_up_on_a_stall_and_names_where_it_stuck() {
        let start = Instant::now();
        let mut watch = SettleWatch::new(WAIT, start);
        assert_eq!(watch.observe(start + Duration::from_secs(2), Some(500)), None);
        // Unreadable checkpoints and a lower figure (an older leader's answer) are no progress.
        assert_eq!(watch.observe(start + Duration::from_secs(5), None), None);
        assert_eq!(watch.observe(start + Duration::from_secs(8), Some(400)), None);
        let timeout = watch.observe(start + Duration::from_secs(12), Some(500));
        assert_eq!(
            timeout,
            Some(SettleTimeout::Stalled {
                stall: Duration::from_secs(10),
                committed_lines: Some(500)
            })
        );
        let message = timeout.map(|timeout| timeout.to_string()).unwrap_or_default();
        assert!(
            message.contains("no committed progress") && message.contains("500 lines"),
            "{message}"
        );
    }

    #[test]
    fn settle_wait_is_capped_even_when_progress_continues() {
        let start = Instant::now();
        let mut watch = SettleWatch::new(WAIT, start);
        let mut verdict = None;
        for step in 1..=20u64 {
            verdict = watch.observe(start + Duration::from_secs(5 * step), Some(step));
            if verdict.is_some() {
                break;
            }
        }
        assert_eq!(
            verdict,
            Some(SettleTimeout::Capped {
                waited: Duration::from_secs(60)
            })
        );
    }
}
