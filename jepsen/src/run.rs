//! One chaos run: a real cluster of processes on loopback, the workloads recording their histories,
//! the seeded faults, then healing, settling and checking.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use raftstream::local_cluster::LocalCluster;
use raftstream::wordcount::WordCountJob;
use raftstream_api::client::ClusterClient;
use raftstream_coordinator::leader::ExecutorSettings;
use raftstream_coordinator::node::RaftSettings;
use tokio_util::sync::CancellationToken;

use crate::checkpoints::check_checkpoints;
use crate::config::RunConfig;
use crate::job_table::check_job_table;
use crate::nemesis::{heal_everything, nemesis};
use crate::network::{NetMode, Network};
use crate::recording::{Clock, History, MetadataJobs, Observations};
use crate::report::{
    by_kind, checkpoint_recovery_ms, election_figures, metadata_recovery_ms, operation_counts, slowest_recoveries,
    throughput, throughput_dips, Report,
};
use crate::schedule::FaultKind;
use crate::settle::finish_stream;
use crate::workloads::{get_operation, list_operation, metadata_client, poll_checkpoints};

const STREAM_RATE: u64 = 2_000;
/// Enough for one executor to hold the stream job (2 slices) and every metadata job (1 each) at once:
/// a cluster provisioned for the loss of one executor (N+1), as operators run one. With less, the
/// stream job would wait for the failed executor to return, and its recovery would measure the
/// fault's duration rather than the system.
const SLOTS_PER_EXECUTOR: u32 = 8;

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
pub(crate) const START_ATTEMPTS: u32 = 3;

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

pub(crate) async fn start_cluster_once(config: &RunConfig) -> anyhow::Result<(LocalCluster, Network, ClusterClient)> {
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
            Some(SLOTS_PER_EXECUTOR),
            Some(network.executor_routes(executor_id)?),
        )?;
    }
    let admin =
        ClusterClient::new(&cluster.addresses(), Duration::from_secs(30))?.with_attempt_timeout(Duration::from_secs(2));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        // An executor that found its HTTP port taken (the harness closes the port the OS picked
        // before the child binds it) starts again on a new one; one that crashed fails the start
        // with its log.
        cluster.check_executors_running()?;
        if let Ok(listed) = admin.list_executors().await {
            if listed.executors.iter().filter(|executor| executor.connected).count() == config.executors as usize {
                break;
            }
        }
        if std::time::Instant::now() >= deadline {
            bail!("timed out after 30s waiting for the executors to connect");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok((cluster, network, admin))
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
