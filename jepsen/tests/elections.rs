//! Elections on a real three-coordinator cluster whose links run through the harness's fault
//! proxies: a follower cut off for 5 s, paused for 3 s, or killed and restarted must not depose a
//! leader that kept its quorum, and terms grow by at most a handful through all of it (pre-vote);
//! a leader cut off from everyone is replaced and its executors follow the new one, restarting
//! nothing.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use raftstream::local_cluster::{poll_until, LocalCluster};
use raftstream_api::client::ClusterClient;
use raftstream_coordinator::leader::ExecutorSettings;
use raftstream_coordinator::node::RaftSettings;
use raftstream_jepsen::endpoint::node_endpoint;
use raftstream_jepsen::network::{NetMode, Network};
use raftstream_proto::v1 as pb;

/// The `raftstream` binary Cargo built next to this package's harness.
fn raftstream_binary() -> PathBuf {
    let harness = PathBuf::from(env!("CARGO_BIN_EXE_raftstream-jepsen"));
    harness.with_file_name("raftstream")
}

/// What the cluster reports: (leader, the highest term any node is at).
async fn leader_and_term(client: &ClusterClient) -> Option<(u64, u64)> {
    let status = client.cluster_status().await.ok()?;
    let term = status.nodes.iter().map(|node| node.term).max()?;
    Some((status.leader_id?, term))
}

/// Polls the cluster for `duration`, recording every leader it reports; returns the distinct
/// leaders seen and the highest term.
async fn watch(client: &ClusterClient, duration: Duration, leaders: &mut BTreeSet<u64>, term: &mut u64) {
    let until = Instant::now() + duration;
    while Instant::now() < until {
        if let Some((leader, seen_term)) = leader_and_term(client).await {
            leaders.insert(leader);
            *term = (*term).max(seen_term);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `node_id` follows the leader again at the leader's term.
async fn caught_up(client: &ClusterClient, node_id: u64) -> anyhow::Result<pb::NodeStatus> {
    poll_until(
        "the node to follow the leader again",
        Duration::from_secs(30),
        || async {
            let status = client.cluster_status().await.ok()?;
            let leader = status.nodes.iter().find(|node| node.state == "Leader")?.clone();
            let node = status.nodes.iter().find(|node| node.node_id == node_id)?.clone();
            (node.state == "Follower" && node.term == leader.term && node.leader_id == Some(leader.node_id))
                .then_some(node)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_isolated_paused_or_restarted_does_not_depose_a_leader_with_a_quorum() -> anyhow::Result<()> {
    let directory = tempfile::tempdir()?;
    let network = Network::start(NetMode::Proxy, 3, &[]).await?;
    let mut cluster = LocalCluster::start_routed(
        &raftstream_binary(),
        directory.path(),
        3,
        network.node_addresses.values().cloned().collect(),
        RaftSettings::default(),
        ExecutorSettings::default(),
        network.wiring()?,
    )?;
    cluster.wait_for_leader(Duration::from_secs(30)).await?;
    let client = ClusterClient::new(&cluster.addresses(), Duration::from_secs(5))?;
    // Nodes that start together may stand together; the test is about what comes after.
    let leader = poll_until("one leader for a whole second", Duration::from_secs(30), || async {
        let mut seen = BTreeSet::new();
        let mut term = 0;
        watch(&client, Duration::from_secs(1), &mut seen, &mut term).await;
        match seen.into_iter().collect::<Vec<_>>()[..] {
            [leader] => Some(leader),
            _ => None,
        }
    })
    .await?;
    let (_, start_term) = poll_until("the cluster status", Duration::from_secs(10), || {
        leader_and_term(&client)
    })
    .await?;
    let follower = cluster
        .nodes()
        .map(|node| node.node_id)
        .find(|node_id| *node_id != leader)
        .ok_or_else(|| anyhow::anyhow!("no follower"))?;
    let mut leaders = BTreeSet::from([leader]);
    let mut term = start_term;

    // --- isolate the follower from both other coordinators for 5 s, then heal
    let isolated = BTreeSet::from([node_endpoint(follower)]);
    let rest: BTreeSet<String> = network.endpoints().difference(&isolated).cloned().collect();
    network.cut_between(&isolated, &rest)?;
    watch(&client, Duration::from_secs(5), &mut leaders, &mut term).await;
    network.heal()?;
    caught_up(&client, follower).await?;
    watch(&client, Duration::from_secs(1), &mut leaders, &mut term).await;
    anyhow::ensure!(
        leaders == BTreeSet::from([leader]),
        "an isolated follower's return changed the leader: saw {leaders:?}"
    );
    let after_isolation = term;

    // --- pause the follower for 3 s (longer than the election timeout), then resume it
    cluster.signal_node(follower, true)?;
    watch(&client, Duration::from_secs(3), &mut leaders, &mut term).await;
    cluster.signal_node(follower, false)?;
    caught_up(&client, follower).await?;
    watch(&client, Duration::from_secs(1), &mut leaders, &mut term).await;
    anyhow::ensure!(
        leaders == BTreeSet::from([leader]),
        "a paused follower's return changed the leader: saw {leaders:?}"
    );

    // --- kill -9 the follower and restart it
    cluster.kill(follower)?;
    watch(&client, Duration::from_secs(1), &mut leaders, &mut term).await;
    cluster.restart(follower)?;
    caught_up(&client, follower).await?;
    watch(&client, Duration::from_secs(1), &mut leaders, &mut term).await;
    anyhow::ensure!(
        leaders == BTreeSet::from([leader]),
        "a restarted follower changed the leader: saw {leaders:?}"
    );
    anyhow::ensure!(
        term <= start_term + 2,
        "terms grew from {start_term} to {term} ({after_isolation} after the isolation) while the leader kept its quorum"
    );

    // --- and a real leader failure still elects a new leader, with one or two new terms
    cluster.kill(leader)?;
    let failover_started = Instant::now();
    let new_leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;
    let failover = failover_started.elapsed();
    let (_, failover_term) = poll_until("the cluster status", Duration::from_secs(10), || {
        leader_and_term(&client)
    })
    .await?;
    anyhow::ensure!(new_leader != leader, "the killed leader is still reported");
    // Two survivors may stand at once and split their votes; a handful of terms at most.
    anyhow::ensure!(
        failover_term <= term + 4,
        "electing a new leader took terms {term} -> {failover_term}"
    );
    tracing::info!(?failover, "new leader elected");
    Ok(())
}

async fn job_of(client: &ClusterClient, job_id: &str) -> Option<pb::Job> {
    client.get_job(job_id, pb::ReadConsistency::Linearizable).await.ok()
}

/// The epoch of every subtask of a job: any change means a subtask was restarted.
fn epochs(job: &pb::Job) -> Vec<(String, u32, u64)> {
    let mut epochs: Vec<(String, u32, u64)> = job
        .subtasks
        .iter()
        .map(|subtask| (subtask.operator_id.clone(), subtask.subtask_index, subtask.epoch))
        .collect();
    epochs.sort();
    epochs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_everyone_is_replaced_without_restarting_any_subtask() -> anyhow::Result<()> {
    use raftstream::wordcount::WordCountJob;
    use raftstream_jepsen::config::RunConfig;
    use raftstream_jepsen::run::start_cluster;

    let directory = tempfile::tempdir()?;
    let config = RunConfig {
        seed: 5,
        time_limit: Duration::from_secs(30),
        faults: Vec::new(),
        metadata: false,
        stream: true,
        checkpoints: true,
        nodes: 3,
        executors: 2,
        clients: 0,
        out: directory.path().to_owned(),
        binary: raftstream_binary(),
        inject_defect: None,
        net: NetMode::Proxy,
    };
    let (mut cluster, network, client) = start_cluster(&config).await?;
    let spec = WordCountJob {
        seed: 5,
        records: 1_000_000,
        rate_per_second: Some(2_000),
        parallelism: 2,
        vocabulary_size: 50,
        words_per_record: 2,
        checkpoint_interval_ms: 200,
        output_dir: directory.path().join("output"),
    };
    let job_id = client
        .submit_job(&spec.spec("leader-partition"), "leader-partition")
        .await?
        .job_id;
    let before = poll_until("the job to run and checkpoint", Duration::from_secs(30), || async {
        job_of(&client, &job_id)
            .await
            .filter(|job| job.status == "Running" && job.last_checkpoint_id.is_some())
    })
    .await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await?;

    // --- cut the leader off from the other coordinators and from both executors
    let isolated = BTreeSet::from([node_endpoint(leader)]);
    let rest: BTreeSet<String> = network.endpoints().difference(&isolated).cloned().collect();
    network.cut_between(&isolated, &rest)?;
    let checkpoint = before.last_checkpoint_id.unwrap_or(0);
    // Clients reach coordinators directly: ask the two that still form a majority.
    let majority: Vec<String> = cluster
        .nodes()
        .filter(|node| node.node_id != leader)
        .map(|node| node.address.clone())
        .collect();
    let majority =
        ClusterClient::new(&majority, Duration::from_secs(5))?.with_attempt_timeout(Duration::from_millis(500));
    // A new leader takes over and the executors find it before the lease it granted them runs
    // out: checkpoints go on during the partition, at the same epochs.
    // (The cut-off leader cannot commit anything: checkpoints completing means a new leader.)
    let during = poll_until("checkpoints under a new leader", Duration::from_secs(6), || async {
        let job = job_of(&majority, &job_id).await?;
        (job.last_checkpoint_id.unwrap_or(0) > checkpoint + 2).then_some(job)
    })
    .await?;
    network.heal()?;
    anyhow::ensure!(
        during.restart_count == before.restart_count && epochs(&during) == epochs(&before),
        "the leader's partition restarted subtasks: {:?} -> {:?} ({})",
        epochs(&before),
        epochs(&during),
        during.status_reason
    );
    let after = poll_until("checkpoints after healing", Duration::from_secs(10), || async {
        let job = job_of(&client, &job_id).await?;
        (job.last_checkpoint_id > during.last_checkpoint_id).then_some(job)
    })
    .await?;
    anyhow::ensure!(
        after.restart_count == before.restart_count && epochs(&after) == epochs(&before),
        "healing the partition restarted subtasks: {:?} -> {:?}",
        epochs(&before),
        epochs(&after)
    );
    cluster.kill_all();
    Ok(())
}
