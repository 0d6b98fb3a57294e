//! Every process serves `/metrics`, `/healthz` and `/readyz` over HTTP: scraped from real
//! coordinator and executor processes during and after a word count and across a leader kill.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::common::{eventually, fast_executors, finished, start_executors, test_settings, word_count, TestCluster};

const PATIENCE: Duration = Duration::from_secs(60);

/// One sample of a text-format scrape.
#[derive(Debug)]
pub(crate) struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// The samples of a Prometheus text exposition (our label values hold no `,` `"` or `}`).
pub(crate) fn parse_samples(text: &str) -> anyhow::Result<Vec<Sample>> {
    let mut samples = Vec::new();
    for line in text.lines().filter(|line| !line.is_empty() && !line.starts_with('#')) {
        let (series, value) = line
            .rsplit_once(' ')
            .ok_or_else(|| anyhow::anyhow!("no value in {line:?}"))?;
        let value: f64 = value.parse().map_err(|_| anyhow::anyhow!("bad value in {line:?}"))?;
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let inner = rest
                    .strip_suffix('}')
                    .ok_or_else(|| anyhow::anyhow!("unclosed labels in {line:?}"))?;
                let mut labels = BTreeMap::new();
                for pair in inner.split(',').filter(|pair| !pair.is_empty()) {
                    let (key, quoted) = pair
                        .split_once('=')
                        .ok_or_else(|| anyhow::anyhow!("bad label {pair:?} in {line:?}"))?;
                    labels.insert(key.to_owned(), quoted.trim_matches('"').to_owned());
                }
                (name.to_owned(), labels)
            }
            None => (series.to_owned(), BTreeMap::new()),
        };
        samples.push(Sample { name, labels, value });
    }
    Ok(samples)
}

/// The sum of `name`'s samples whose labels include every pair of `with`.
pub(crate) fn total(samples: &[Sample], name: &str, with: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|sample| sample.name == name)
        .filter(|sample| {
            with.iter()
                .all(|(key, value)| sample.labels.get(*key).map(String::as_str) == Some(*value))
        })
        .map(|sample| sample.value)
        .sum()
}

pub(crate) async fn get(http: &reqwest::Client, address: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let response = http.get(format!("http://{address}{path}")).send().await?;
    let status = response.status().as_u16();
    Ok((status, response.text().await?))
}

/// Scrapes `address`, and has promtool lint it when promtool is installed.
pub(crate) async fn scrape(http: &reqwest::Client, address: &str) -> anyhow::Result<Vec<Sample>> {
    let (status, text) = get(http, address, "/metrics").await?;
    anyhow::ensure!(status == 200, "/metrics on {address} answered {status}: {text}");
    if let Some(verdict) = raftstream_observability::promtool::check(&text) {
        anyhow::ensure!(
            verdict.is_ok(),
            "promtool rejected {address}'s metrics: {verdict:?}\n{text}"
        );
    }
    parse_samples(&text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_process_serves_metrics_health_and_readiness_that_follow_a_word_count_and_a_leader_kill(
) -> anyhow::Result<()> {
    let mut cluster = TestCluster::start_with(test_settings(), fast_executors()).await?;
    let client = start_executors(&mut cluster, &[("exec-a", 2), ("exec-b", 2)]).await?;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;
    let coordinators: BTreeMap<u64, String> = cluster
        .cluster
        .nodes()
        .map(|node| (node.node_id, node.http_address.clone()))
        .collect();
    let executors: Vec<String> = ["exec-a", "exec-b"]
        .iter()
        .filter_map(|id| {
            cluster
                .cluster
                .executor(id)
                .map(|executor| executor.http_address.clone())
        })
        .collect();
    anyhow::ensure!(executors.len() == 2, "both executors must be known");

    tracing::info!("--- every process is healthy and, once in the cluster, ready");
    for address in coordinators.values().chain(&executors) {
        let (status, _) = get(&http, address, "/healthz").await?;
        anyhow::ensure!(status == 200, "/healthz on {address} answered {status}");
        eventually("the process to be ready", PATIENCE, || async {
            get(&http, address, "/readyz")
                .await
                .ok()
                .filter(|(status, _)| *status == 200)
        })
        .await?;
    }

    tracing::info!("--- a word count runs to its end");
    let spec = word_count(&cluster);
    let submitted = client.submit_job(&spec.spec("wc-metrics"), "wc-metrics").await?;
    let job_id = submitted.job_id.clone();
    let leader = cluster.leader().await?;
    let leader_address = coordinators[&leader].clone();
    let running = eventually("a checkpoint while the job runs", PATIENCE, || async {
        let samples = scrape(&http, &leader_address).await.ok()?;
        let running = total(
            &samples,
            "raftstream_job_status",
            &[("job", &job_id), ("status", "Running")],
        );
        let completed = total(
            &samples,
            "raftstream_job_checkpoints_completed_total",
            &[("job", &job_id)],
        );
        (running == 1.0 && completed >= 1.0).then_some(samples)
    })
    .await?;
    anyhow::ensure!(
        total(
            &running,
            "raftstream_job_last_checkpoint_size_bytes",
            &[("job", &job_id)]
        ) > 0.0,
        "a completed checkpoint has a size"
    );
    anyhow::ensure!(total(&running, "raftstream_raft_is_leader", &[]) == 1.0);
    anyhow::ensure!(total(&running, "raftstream_executors", &[("state", "alive")]) == 2.0);
    anyhow::ensure!(total(&running, "raftstream_raft_proposals_total", &[("outcome", "committed")]) > 0.0);

    tracing::info!("--- the executors show the running subtasks' checkpointed state and barrier alignment");
    eventually(
        "checkpointed state and alignment on the executors",
        PATIENCE,
        || async {
            let (mut state, mut alignment) = (0.0, 0.0);
            for address in &executors {
                let samples = scrape(&http, address).await.ok()?;
                state += total(
                    &samples,
                    "raftstream_subtask_checkpointed_state_bytes",
                    &[("job", &job_id)],
                );
                // The counts subtasks read two channels each (one per source subtask): they align.
                alignment += total(
                    &samples,
                    "raftstream_subtask_checkpoint_alignment_seconds_total",
                    &[("job", &job_id), ("operator", "counts")],
                );
            }
            (state > 0.0 && alignment > 0.0).then_some(())
        },
    )
    .await?;

    finished(&client, &job_id).await?;

    tracing::info!("--- the executors counted every record the sink wrote and the source read");
    let expected_lines: u64 = spec.expected_counts().values().sum();
    let (mut written, mut read) = (0.0, 0.0);
    let (mut source_batches, mut source_bytes_out, mut backpressure_samples) = (0.0, 0.0, 0);
    for address in &executors {
        let samples = scrape(&http, address).await?;
        source_batches += total(
            &samples,
            "raftstream_subtask_batches_in_total",
            &[("job", &job_id), ("operator", "lines")],
        );
        source_bytes_out += total(
            &samples,
            "raftstream_subtask_sent_bytes_total",
            &[("job", &job_id), ("operator", "lines")],
        );
        backpressure_samples += samples
            .iter()
            .filter(|sample| sample.name == "raftstream_subtask_backpressured_seconds_total" && sample.value >= 0.0)
            .count();
        written += total(
            &samples,
            "raftstream_sink_records_written_total",
            &[("job", &job_id), ("operator", "out")],
        );
        read += total(
            &samples,
            "raftstream_subtask_records_in_total",
            &[("job", &job_id), ("operator", "lines")],
        );
    }
    anyhow::ensure!(
        written == expected_lines as f64,
        "the sinks wrote {written} records, the word count has {expected_lines} updates"
    );
    anyhow::ensure!(
        read == spec.records as f64,
        "the sources read {read} of {} records",
        spec.records
    );
    anyhow::ensure!(
        source_batches > 0.0 && source_batches <= spec.records as f64,
        "the sources read {read} records in {source_batches} batches"
    );
    // Every line sent on carries at least its 8-byte event time and a word.
    anyhow::ensure!(
        source_bytes_out > 9.0 * spec.records as f64,
        "the sources sent {source_bytes_out} bytes for {} lines",
        spec.records
    );
    anyhow::ensure!(backpressure_samples > 0, "every subtask shows its backpressure time");

    let after = scrape(&http, &leader_address).await?;
    anyhow::ensure!(
        total(
            &after,
            "raftstream_job_status",
            &[("job", &job_id), ("status", "Finished")]
        ) == 1.0
    );
    anyhow::ensure!(total(&after, "raftstream_job_restarts_total", &[("job", &job_id)]) == 0.0);

    tracing::info!("--- kill -9 the leader: the survivors count a leader change");
    let mut changes_before = BTreeMap::new();
    for (node_id, address) in &coordinators {
        if *node_id != leader {
            let samples = scrape(&http, address).await?;
            anyhow::ensure!(total(&samples, "raftstream_raft_is_leader", &[]) == 0.0);
            anyhow::ensure!(
                total(&samples, "raftstream_job_status", &[]) == 0.0,
                "followers leave the jobs to the leader"
            );
            changes_before.insert(*node_id, total(&samples, "raftstream_raft_leader_changes_total", &[]));
        }
    }
    cluster.cluster.kill(leader)?;
    let new_leader = eventually("a new leader", PATIENCE, || async {
        for (node_id, address) in &coordinators {
            if *node_id == leader {
                continue;
            }
            let samples = scrape(&http, address).await.ok()?;
            if total(&samples, "raftstream_raft_is_leader", &[]) == 1.0 {
                return Some(*node_id);
            }
        }
        None
    })
    .await?;
    for (node_id, before) in &changes_before {
        let address = &coordinators[node_id];
        eventually("the survivor to count the leader change", PATIENCE, || async {
            let samples = scrape(&http, address).await.ok()?;
            let changes = total(&samples, "raftstream_raft_leader_changes_total", &[]);
            let knows = total(&samples, "raftstream_raft_leader_id", &[]) == new_leader as f64;
            (changes > *before && knows).then_some(())
        })
        .await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_started_with_log_format_json_writes_one_json_object_per_line() -> anyhow::Result<()> {
    let directory = tempfile::tempdir()?;
    let address = raftstream::local_cluster::free_local_address()?;
    let http_address = raftstream::local_cluster::free_local_address()?;
    let log_path = directory.path().join("coordinator.log");
    let log = std::fs::File::create(&log_path)?;
    let mut child = std::process::Command::new(crate::common::binary())
        .args(["coordinator", "--log-format", "json", "--id", "1", "--listen", &address])
        .args([
            "--peers",
            &format!("1={address}"),
            "--bootstrap",
            "--http-listen",
            &http_address,
        ])
        .arg("--data-dir")
        .arg(directory.path().join("data"))
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;
    let ready = eventually(
        "the single-node cluster to be ready and serving gRPC",
        PATIENCE,
        || async {
            let logged = std::fs::read_to_string(&log_path).ok()?;
            get(&http, &http_address, "/readyz")
                .await
                .ok()
                .filter(|(status, _)| *status == 200 && logged.contains("coordinator serving"))
        },
    )
    .await;
    child.kill()?;
    child.wait()?;
    ready?;
    let text = std::fs::read_to_string(&log_path)?;
    anyhow::ensure!(text.lines().count() > 3, "too little logged: {text}");
    let mut serving_spans = None;
    for line in text.lines() {
        let event: serde_json::Value =
            serde_json::from_str(line).map_err(|error| anyhow::anyhow!("not JSON ({error}): {line}"))?;
        anyhow::ensure!(
            event.get("timestamp").is_some() && event.get("level").is_some() && event.get("fields").is_some(),
            "an event without timestamp, level or fields: {line}"
        );
        if event["fields"]["message"] == "coordinator serving" {
            serving_spans = Some(event["spans"].clone());
        }
    }
    let spans = serving_spans.ok_or_else(|| anyhow::anyhow!("no 'coordinator serving' event in {text}"))?;
    anyhow::ensure!(
        spans
            .as_array()
            .is_some_and(|spans| spans.iter().any(|span| span["node_id"] == 1)),
        "the event's spans carry the node id: {spans}"
    );
    Ok(())
}

/// The harness picks a coordinator's HTTP port and closes it before the child binds it; another
/// process can take it in between. The coordinator then exits before it touches its Raft state,
/// and the harness starts it again on a new port instead of failing the test that needed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_whose_http_port_was_taken_starts_again_on_a_new_one() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start_with(test_settings(), fast_executors()).await?;
    let follower = cluster.follower().await?;
    cluster.cluster.kill(follower)?;
    let taken = cluster
        .cluster
        .node(follower)
        .map(|node| node.http_address.clone())
        .ok_or_else(|| anyhow::anyhow!("node {follower} is gone"))?;
    let squatter = std::net::TcpListener::bind(&taken)?;
    cluster.cluster.restart(follower)?;

    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;
    let deadline = std::time::Instant::now() + PATIENCE;
    let served_on = loop {
        cluster.cluster.check_running()?;
        let address = cluster
            .cluster
            .node(follower)
            .map(|node| node.http_address.clone())
            .ok_or_else(|| anyhow::anyhow!("node {follower} is gone"))?;
        if address != taken && matches!(get(&http, &address, "/healthz").await, Ok((200, _))) {
            break address;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "node {follower} never served HTTP on a new port"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let log = cluster
        .cluster
        .node(follower)
        .map(|node| std::fs::read_to_string(node.log_path()))
        .transpose()?
        .unwrap_or_default();
    assert!(
        log.contains(&format!("binding the HTTP listener on {taken}")) && log.contains("Address already in use"),
        "{log}"
    );
    // It is a member again: the cluster reports it with the leader's term.
    let client = cluster.client()?;
    eventually("the restarted node to follow the leader", PATIENCE, || async {
        let status = client.cluster_status().await.ok()?;
        status
            .nodes
            .iter()
            .any(|node| node.node_id == follower && node.state == "Follower")
            .then_some(())
    })
    .await?;
    tracing::info!(%served_on, "the coordinator serves HTTP on a new port");
    drop(squatter);
    Ok(())
}
