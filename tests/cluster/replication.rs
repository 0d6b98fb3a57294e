//! Submitting through any node, reading from every node, idempotent retries, and bad input.

use std::time::Duration;

use crate::common::{eventually, job_spec, local_job_names, test_settings, TestCluster};
use raftstream_proto::v1 as pb;
use raftstream_proto::v1::job_service_client::JobServiceClient;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_followers_replicate_and_retries_apply_once() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start(test_settings()).await?;
    let follower = cluster.follower().await?;

    tracing::info!("--- submit three jobs through follower {follower}");
    let through_follower = cluster.client_of(follower)?;
    let mut ids = Vec::new();
    for n in 0..3 {
        let job = through_follower
            .submit_job(&job_spec(&format!("via-follower-{n}")), &format!("req-{n}"))
            .await?;
        assert_eq!(job.status, "Submitted");
        assert_eq!(job.subtasks.len(), 1 + 2 + 2 + 2 + 1);
        assert!(
            job.subtasks.iter().all(|subtask| subtask.executor_id.is_empty()),
            "no executor exists yet"
        );
        ids.push(job.job_id);
    }

    tracing::info!("--- every node applies them (local reads converge)");
    let expected: Vec<String> = (0..3).map(|n| format!("via-follower-{n}")).collect();
    for node_id in 1..=3 {
        eventually("node to apply the jobs", Duration::from_secs(10), || async {
            local_job_names(&cluster, node_id)
                .await
                .filter(|names| *names == expected)
        })
        .await?;
    }

    tracing::info!("--- a linearizable read through a follower sees the latest write at once");
    let job = through_follower
        .submit_job(&job_spec("read-your-write"), "req-ryw")
        .await?;
    let seen = through_follower
        .get_job(&job.job_id, pb::ReadConsistency::Linearizable)
        .await?;
    assert_eq!(seen.name, "read-your-write");

    tracing::info!("--- a retried submit with the same request id creates one job, answered the same");
    let again = cluster
        .client()?
        .submit_job(&job_spec("via-follower-0"), "req-0")
        .await?;
    assert_eq!(again.job_id, ids[0]);
    let jobs = cluster.client()?.list_jobs(pb::ReadConsistency::Linearizable).await?;
    assert_eq!(
        jobs.len(),
        4,
        "a retry must not create a job: {:?}",
        jobs.iter().map(|j| &j.name).collect::<Vec<_>>()
    );

    tracing::info!("--- every node answers gRPC health checks");
    for address in cluster.cluster.addresses() {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))?
            .connect()
            .await?;
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
        let reply = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: "raftstream.v1.JobService".to_owned(),
            })
            .await?
            .into_inner();
        assert_eq!(
            reply.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{address}"
        );
    }

    tracing::info!("--- cluster status shows three voters, one leader, matching indexes");
    let status = cluster.client()?.cluster_status().await?;
    assert_eq!(status.members.len(), 3);
    assert!(status.members.iter().all(|member| member.role == "voter"));
    assert!(status.leader_id.is_some());
    assert_eq!(status.nodes.iter().filter(|node| node.state == "Leader").count(), 1);
    Ok(())
}

async fn raw_submit(address: &str, spec: String) -> Result<pb::SubmitJobResponse, tonic::Status> {
    let mut client = JobServiceClient::connect(format!("http://{address}"))
        .await
        .map_err(|error| tonic::Status::unavailable(error.to_string()))?
        .max_encoding_message_size(16 << 20);
    client
        .submit_job(pb::SubmitJobRequest {
            spec,
            ..pb::SubmitJobRequest::default()
        })
        .await
        .map(|reply| reply.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_rejected_with_named_errors_and_stores_nothing() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start(test_settings()).await?;
    let follower = cluster.follower().await?;
    let address = cluster
        .cluster
        .node(follower)
        .map(|node| node.address.clone())
        .ok_or_else(|| anyhow::anyhow!("node"))?;
    let good = job_spec("good");
    cluster.client()?.submit_job(&good, "first").await?;

    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "unknown operator kind",
            good.replace("\"kind\": \"count\"", "\"kind\": \"tally\""),
            vec!["\"counts\"", "kind", "tally"],
        ),
        (
            "missing input",
            good.replace(", \"inputs\": [\"words\"]", ""),
            vec!["\"by_word\"", "inputs", "missing"],
        ),
        (
            "dangling input",
            good.replace("[\"words\"]", "[\"wordz\"]"),
            vec!["\"by_word\"", "unknown operator \"wordz\""],
        ),
        (
            "cycle",
            good.replace("\"inputs\": [\"source\"]", "\"inputs\": [\"source\", \"counts\"]"),
            vec!["cycle", "\"counts\"", "\"words\""],
        ),
        (
            "duplicate operator id",
            good.replace("\"id\": \"by_word\"", "\"id\": \"words\"")
                .replace("[\"by_word\"]", "[\"words\"]"),
            vec!["\"words\"", "duplicate operator id"],
        ),
        (
            "parallelism 0",
            good.replace("\"parallelism\": 2", "\"parallelism\": 0"),
            vec!["parallelism", "is 0"],
        ),
        (
            "parallelism above maximum",
            good.replace("\"parallelism\": 1, \"params\"", "\"parallelism\": 500, \"params\""),
            vec!["\"source\"", "parallelism", "between 1 and 128"],
        ),
        (
            "unknown parameter",
            good.replace("\"seed\": 7", "\"seed\": 7, \"colour\": 1"),
            vec!["\"source\"", "params.colour", "unknown parameter"],
        ),
        (
            "spec above the size limit",
            format!("{good}{}", " ".repeat(1024 * 1024 + 1)),
            vec!["above the limit"],
        ),
        (
            "not YAML or JSON",
            "{{{ definitely: not [json".to_owned(),
            vec!["neither valid YAML nor JSON"],
        ),
        (
            "not a mapping",
            "- just\n- a list\n".to_owned(),
            vec!["must be a mapping"],
        ),
    ];
    for (name, spec, expected) in cases {
        tracing::info!("--- bad input: {name}");
        let status = match raw_submit(&address, spec).await {
            Ok(reply) => anyhow::bail!("{name}: accepted as {:?}", reply.job.map(|job| job.job_id)),
            Err(status) => status,
        };
        assert_eq!(status.code(), Code::InvalidArgument, "{name}: {status:?}");
        for fragment in expected {
            assert!(
                status.message().contains(fragment),
                "{name}: {:?} lacks {fragment:?}",
                status.message()
            );
        }
    }
    let jobs = cluster.client()?.list_jobs(pb::ReadConsistency::Linearizable).await?;
    assert_eq!(
        jobs.iter().map(|job| job.name.as_str()).collect::<Vec<_>>(),
        vec!["good"],
        "a rejected spec was stored"
    );

    tracing::info!("--- cancel: unknown job is NOT_FOUND, an ended job is FAILED_PRECONDITION");
    let client = cluster.client()?;
    let unknown = client
        .cancel_job("job-999", "c-1")
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("cancel of unknown job succeeded"))?;
    assert_eq!(unknown.code(), Code::NotFound, "{unknown}");
    assert!(unknown.to_string().contains("job-999"), "{unknown}");
    let cancelled = client.cancel_job("job-1", "c-2").await?;
    assert_eq!(cancelled.status, "Cancelled");
    let ended = client
        .cancel_job("job-1", "c-3")
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("second cancel succeeded"))?;
    assert_eq!(ended.code(), Code::FailedPrecondition, "{ended}");
    assert!(ended.to_string().contains("Cancelled"), "{ended}");
    let missing = client
        .get_job("job-424242", pb::ReadConsistency::Linearizable)
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("found"))?;
    assert_eq!(missing.code(), Code::NotFound);
    let empty = client
        .get_job(" ", pb::ReadConsistency::Linearizable)
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("found"))?;
    assert_eq!(empty.code(), Code::InvalidArgument);
    Ok(())
}
