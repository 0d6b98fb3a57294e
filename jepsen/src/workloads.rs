//! The workloads' clients: metadata operations recorded as a history, and the poll of the
//! stream job's checkpoints.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use raftstream::wordcount::generated_records;
use raftstream_api::client::{ClientError, ClusterClient};
use raftstream_proto::v1 as pb;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;
use tonic::Code;

use crate::checkpoints::{CheckpointObservation, RestoreObservation};
use crate::history::{Operation, Outcome};
use crate::job_table::{JobInput, JobOutput, JobState};
use crate::recording::{Clock, History, MetadataJobs, Observations, MAX_ACTIVE_METADATA_JOBS};
use crate::report::LeaderObservation;

/// A metadata job: never ends on its own (unbounded, slow, restarts forever), so only a cancel
/// changes its state, as the model assumes.
pub(crate) fn metadata_job_spec(name: &str) -> String {
    format!(
        r#"{{"name": "{name}", "parallelism": 1, "checkpoint": {{"interval_ms": 0}},
  "restart": {{"strategy": "fixed_delay", "max_attempts": 1000000, "delay_ms": 200}},
  "operators": [
    {{"id": "ticks", "kind": "generator", "params": {{"rate_per_second": 1}}}},
    {{"id": "out", "kind": "print", "inputs": ["ticks"]}}]}}"#
    )
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn metadata_client(
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

pub(crate) fn operation(
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
pub(crate) fn classify(error: &ClientError, definite: impl Fn(Code) -> Option<JobOutput>) -> Outcome<JobOutput> {
    match definite(error.code()) {
        Some(output) => Outcome::Ok(output),
        None if error.code() == Code::InvalidArgument => Outcome::Fail(error.to_string()),
        None => Outcome::Unknown(error.to_string()),
    }
}

pub(crate) async fn get_operation(
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

pub(crate) async fn list_operation(
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
pub(crate) async fn poll_checkpoints(
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
pub(crate) fn has_ended(job: &pb::Job) -> bool {
    matches!(job.status.as_str(), "Finished" | "Failed" | "Cancelled")
}

/// Lines the newest of `checkpoints` covers; `None` before the first checkpoint.
pub(crate) fn newest_generated_records(checkpoints: &[pb::Checkpoint], parallelism: u64) -> Option<u64> {
    checkpoints
        .iter()
        .max_by_key(|checkpoint| checkpoint.checkpoint_id)
        .map(|newest| generated_records(newest, parallelism))
}
