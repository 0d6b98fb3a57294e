//! Shared helpers for the cluster tests: real coordinator processes of the built binary, on ports
//! the OS picks, each test in its own temporary directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use raftstream::local_cluster::{ClusterWiring, LocalCluster};
use raftstream::wordcount::{check_output, WordCountJob};
use raftstream_api::client::ClusterClient;
use raftstream_coordinator::leader::ExecutorSettings;
use raftstream_coordinator::node::RaftSettings;
use raftstream_proto::v1 as pb;
use tempfile::TempDir;

/// The `raftstream` binary Cargo built for these tests.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_raftstream"))
}

/// Logs to the test's output, once per process.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_test_writer()
        .try_init();
}

/// Timings a little looser than the defaults, because several clusters may share two cores.
pub fn test_settings() -> RaftSettings {
    RaftSettings {
        election_timeout_min_ms: 300,
        election_timeout_max_ms: 600,
        ..RaftSettings::default()
    }
}

/// A three-node cluster in a fresh temporary directory, with a leader elected.
pub struct TestCluster {
    pub cluster: LocalCluster,
    pub directory: TempDir,
}

impl Drop for TestCluster {
    /// A failing test keeps its processes' logs under `target/tmp/failed-<dir>/`.
    fn drop(&mut self) {
        if std::thread::panicking() {
            let name = self
                .directory
                .path()
                .file_name()
                .map_or_else(|| "cluster".to_owned(), |name| name.to_string_lossy().into_owned());
            let destination = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("failed-{name}"));
            let kept = raftstream::local_cluster::keep_logs(self.directory.path(), &destination);
            eprintln!(
                "kept {kept} log files of the failed test's cluster in {}",
                destination.display()
            );
        }
    }
}

impl TestCluster {
    pub async fn start(settings: RaftSettings) -> anyhow::Result<Self> {
        Self::start_with(settings, ExecutorSettings::default()).await
    }

    pub async fn start_with(settings: RaftSettings, executors: ExecutorSettings) -> anyhow::Result<Self> {
        Self::start_wired(settings, executors, ClusterWiring::default()).await
    }

    /// A cluster whose coordinators start as `wiring` says (environment, dial addresses).
    pub async fn start_wired(
        settings: RaftSettings,
        executors: ExecutorSettings,
        wiring: ClusterWiring,
    ) -> anyhow::Result<Self> {
        init_tracing();
        // The OS picks each coordinator's port, but the harness must close it before the child
        // binds it, and another test's outgoing connection can take it in between (the
        // ephemeral range is shared). A child that finds its port taken exits at once; the
        // cluster then starts afresh on new ports.
        let mut attempt = 1;
        loop {
            let directory = tempfile::Builder::new().prefix("raftstream-test-").tempdir()?;
            let mut cluster = LocalCluster::start_routed(
                &binary(),
                directory.path(),
                3,
                Vec::new(),
                settings.clone(),
                executors.clone(),
                wiring.clone(),
            )?;
            match cluster.wait_for_leader(Duration::from_secs(30)).await {
                Ok(_) => return Ok(TestCluster { cluster, directory }),
                Err(error) if attempt < 3 && format!("{error:#}").contains("Address already in use") => {
                    tracing::warn!(
                        attempt,
                        "a coordinator's port was taken before it bound it; starting again"
                    );
                    attempt += 1;
                }
                Err(error) => return Err(error),
            }
        }
    }

    pub fn path(&self) -> &Path {
        self.directory.path()
    }

    /// A client that tries every node, retrying for up to 20 s.
    pub fn client(&self) -> anyhow::Result<ClusterClient> {
        Ok(ClusterClient::new(&self.cluster.addresses(), Duration::from_secs(20))?)
    }

    /// A client bound to one node only.
    pub fn client_of(&self, node_id: u64) -> anyhow::Result<ClusterClient> {
        let node = self
            .cluster
            .node(node_id)
            .ok_or_else(|| anyhow::anyhow!("no node {node_id}"))?;
        Ok(ClusterClient::new(&[node.address.clone()], Duration::from_secs(20))?)
    }

    pub async fn leader(&mut self) -> anyhow::Result<u64> {
        self.cluster.wait_for_leader(Duration::from_secs(30)).await
    }

    pub async fn follower(&mut self) -> anyhow::Result<u64> {
        let leader = self.leader().await?;
        self.cluster
            .nodes()
            .map(|node| node.node_id)
            .find(|id| *id != leader)
            .ok_or_else(|| anyhow::anyhow!("no follower"))
    }
}

/// Executor leases short enough that deaths are detected within a test's patience.
pub fn fast_executors() -> ExecutorSettings {
    ExecutorSettings {
        heartbeat_interval_ms: 100,
        lease_timeout_ms: 1_000,
        session_break_grace_ms: 300,
        scheduling_interval_ms: 50,
    }
}

/// A small valid job spec with a distinct name.
pub fn job_spec(name: &str) -> String {
    format!(
        r#"{{"name": "{name}", "parallelism": 2, "operators": [
            {{"id": "source", "kind": "generator", "parallelism": 1, "params": {{"seed": 7, "rate_per_second": 100}}}},
            {{"id": "words", "kind": "flat_map", "inputs": ["source"], "params": {{"function": "split_words"}}}},
            {{"id": "by_word", "kind": "key_by", "inputs": ["words"]}},
            {{"id": "counts", "kind": "count", "inputs": ["by_word"]}},
            {{"id": "sink", "kind": "print", "inputs": ["counts"], "parallelism": 1}}]}}"#
    )
}

#[allow(unused_imports)]
pub use raftstream::local_cluster::poll_until as eventually;

/// The job names a node has applied, read locally from that node.
pub async fn local_job_names(cluster: &TestCluster, node_id: u64) -> Option<Vec<String>> {
    let client = cluster.client_of(node_id).ok()?;
    let jobs = client.list_jobs(pb::ReadConsistency::Local).await.ok()?;
    Some(jobs.into_iter().map(|job| job.name).collect())
}

/// Where each subtask of a job runs (`operator[index]` -> (executor, epoch)), read linearizably.
pub async fn placement(client: &ClusterClient, job_id: &str) -> Option<raftstream::demo::Placement> {
    let job = client.get_job(job_id, pb::ReadConsistency::Linearizable).await.ok()?;
    Some(raftstream::demo::placement_of(&job))
}

pub use raftstream::local_cluster::without_ansi_colors;

/// Log lines of every coordinator that contain all of `needles`.
pub fn coordinator_log_lines(cluster: &TestCluster, needles: &[&str]) -> Vec<String> {
    cluster
        .cluster
        .nodes()
        .flat_map(|node| {
            let log = without_ansi_colors(&std::fs::read_to_string(node.log_path()).unwrap_or_default());
            log.lines()
                .filter(|line| needles.iter().all(|needle| line.contains(needle)))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Starts `executors` (id, slots) and waits until every one holds a session with the leader.
pub async fn start_executors(cluster: &mut TestCluster, executors: &[(&str, u32)]) -> anyhow::Result<ClusterClient> {
    for (executor_id, slots) in executors {
        cluster.cluster.start_executor(executor_id, *slots)?;
    }
    wait_for_executors(cluster, executors.len()).await
}

/// Waits until `count` executors hold a session with the leader.
pub async fn wait_for_executors(cluster: &mut TestCluster, count: usize) -> anyhow::Result<ClusterClient> {
    let client = cluster.client()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        // An executor that crashed fails the wait at once with its log; one whose port was
        // taken starts again.
        cluster.cluster.check_executors_running()?;
        if let Ok(listed) = client.list_executors().await {
            if listed.executors.iter().filter(|executor| executor.connected).count() == count {
                return Ok(client);
            }
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "timed out after 60 s waiting for the executors to connect"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The word counts published in `output_dir` are exactly `expected`: nothing lost, nothing twice.
pub fn ensure_exact_output(output_dir: &Path, expected: &BTreeMap<String, u64>) -> anyhow::Result<()> {
    let check = check_output(output_dir, expected)?;
    let expected_lines: u64 = expected.values().sum();
    anyhow::ensure!(
        check.is_exact() && check.lines == expected_lines,
        "output is not exact ({} lines in {} files, expected {expected_lines}): {}",
        check.lines,
        check.files,
        check.problems.join("; ")
    );
    Ok(())
}

/// The word count most cluster tests run: 24,000 records at 4,000/s, parallelism 2, 60 words,
/// checkpoints every 200 ms, output in the cluster's directory. Tests change fields with
/// struct-update syntax.
pub fn word_count(cluster: &TestCluster) -> WordCountJob {
    WordCountJob {
        seed: 11,
        records: 24_000,
        rate_per_second: Some(4_000),
        parallelism: 2,
        vocabulary_size: 60,
        words_per_record: 4,
        checkpoint_interval_ms: 200,
        output_dir: cluster.path().join("output"),
    }
}

/// The job as the leader sees it now, or None while it cannot be read.
pub async fn job(client: &ClusterClient, job_id: &str) -> Option<pb::Job> {
    client.get_job(job_id, pb::ReadConsistency::Linearizable).await.ok()
}

/// Waits (up to 120 s) for the job to end and returns it; an end other than `Finished` is an
/// error naming the status and its reason.
pub async fn finished(client: &ClusterClient, job_id: &str) -> anyhow::Result<pb::Job> {
    let job = eventually("the job to end", Duration::from_secs(120), || async {
        job(client, job_id)
            .await
            .filter(|job| matches!(job.status.as_str(), "Finished" | "Failed" | "Cancelled"))
    })
    .await?;
    anyhow::ensure!(
        job.status == "Finished",
        "job ended {}: {}",
        job.status,
        job.status_reason
    );
    Ok(job)
}

/// Each subtask's epoch, by `operator[index]`: a subtask that restarted has a new one.
pub fn subtask_epochs(job: &pb::Job) -> BTreeMap<String, u64> {
    job.subtasks
        .iter()
        .map(|subtask| {
            (
                format!("{}[{}]", subtask.operator_id, subtask.subtask_index),
                subtask.epoch,
            )
        })
        .collect()
}

/// Runs the `raftstream` CLI with `arguments` (quiet logs) and returns what it did.
pub fn run_cli(arguments: &[&str]) -> anyhow::Result<std::process::Output> {
    Ok(std::process::Command::new(binary())
        .args(arguments)
        .env("RUST_LOG", "warn")
        .output()?)
}

pub fn stdout_of(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr_of(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The word counts published in `output_dir` are an exact prefix of the input: for every word
/// seen, its updates 1..n each once (nothing lost, nothing twice), whatever n is. Returns the
/// number of updates, so a test can tell the output is not empty.
pub fn ensure_exact_prefix(output_dir: &Path) -> anyhow::Result<u64> {
    let highest = raftstream::wordcount::highest_counts(output_dir)?;
    ensure_exact_output(output_dir, &highest)?;
    Ok(highest.values().sum())
}

/// Submits `spec`, waits until it runs with 3 checkpoints completed, kills with kill -9 the
/// executor running a subtask of `operator`, and waits (up to 120 s) for the job to end: it must
/// have `Finished` after at least one restart. Returns the job as it ended.
pub async fn finished_across_an_executor_kill(
    cluster: &mut TestCluster,
    client: &ClusterClient,
    spec: &str,
    name: &str,
    operator: &str,
) -> anyhow::Result<pb::Job> {
    let submitted = client.submit_job(spec, name).await?;
    let running = eventually("the job to run with checkpoints", Duration::from_secs(60), || async {
        job(client, &submitted.job_id)
            .await
            .filter(|job| job.status == "Running" && job.last_checkpoint_id.unwrap_or(0) >= 3)
    })
    .await?;
    let victim = running
        .subtasks
        .iter()
        .find(|subtask| subtask.operator_id == operator && !subtask.executor_id.is_empty())
        .map(|subtask| subtask.executor_id.clone())
        .ok_or_else(|| anyhow::anyhow!("{operator} is not placed"))?;
    cluster.cluster.kill_executor(&victim)?;
    let done = finished(client, &submitted.job_id).await?;
    anyhow::ensure!(done.restart_count >= 1, "the kill of {victim} restarted nothing");
    Ok(done)
}
