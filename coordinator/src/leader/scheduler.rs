//! The scheduler: places waiting subtasks on live executors (each placement a new epoch),
//! deploys a job once all its subtasks have a place, restarts jobs per their restart strategy,
//! ends cancellations, marks finished jobs and tells drained executors to exit.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::context::LeaderContext;
use super::failure_detector::alive_executors;
use super::placement::{plan_placements, Placement};
use super::sessions::ExecutorSessions;
use super::{deploy, ExecutorSettings};
use crate::error::CoordinatorError;
use crate::state_machine::{Command, JobStatus, Rejection, Response, State};
use raftstream_api::checkpoint::SavepointRef;
use raftstream_api::ids::{Epoch, ExecutorId, JobId};
use raftstream_api::messages::{ExecutorCommand, TaskDeployment, TaskRef};

pub(super) async fn scheduler<C: LeaderContext>(context: C, settings: ExecutorSettings, shutdown: CancellationToken) {
    let sessions = context.sessions();
    let lease_timeout = Duration::from_millis(settings.lease_timeout_ms);
    let interval = Duration::from_millis(settings.scheduling_interval_ms.max(1));
    // When each drained executor was last told to exit (it may miss one message; no need to
    // repeat it every round).
    let mut told_drained: std::collections::HashMap<ExecutorId, Instant> = std::collections::HashMap::new();
    let placements_wanted = sessions.placements_wanted();
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            _ = placements_wanted.notified() => {}
            _ = tokio::time::sleep(interval) => {}
        }
        let round = context.read_state(|state| plan_round(state, sessions, lease_timeout, context.now_ms()));
        told_drained.retain(|executor_id, _| round.drained.contains(executor_id));
        for executor_id in &round.drained {
            let due = told_drained
                .get(executor_id)
                .is_none_or(|told| told.elapsed() >= DRAINED_REPEAT);
            if due && sessions.send(executor_id, ExecutorCommand::Drained) {
                tracing::info!(%executor_id, "executor drained: every subtask moved elsewhere; told to exit");
                told_drained.insert(executor_id.clone(), Instant::now());
            }
        }
        for (job_id, reason) in round.give_up {
            let command = Command::TransitionJob {
                job_id,
                to: JobStatus::Failed,
                reason: reason.clone(),
                at_ms: context.now_ms(),
                deployed_through_epoch: None,
            };
            match context.propose(command).await {
                Ok(_) => tracing::warn!(job_id = %job_id, reason, "job failed"),
                Err(error) => {
                    tracing::debug!(job_id = %job_id, error = %raftstream_observability::chain(&error), "could not fail the job")
                }
            }
        }
        // Placements are proposed together, in order: openraft appends and replicates them as
        // one batch, so a restarting job's subtasks are placed in about one round trip instead of
        // one per subtask (ten times the replication latency under a slow network).
        let placing = futures::stream::iter(round.placements)
            .map(|placement| place(&context, placement))
            .buffered(MAX_PLACEMENTS_IN_FLIGHT)
            .collect::<Vec<()>>();
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            _ = placing => {}
        }
        deploy_ready_jobs(&context).await;
        for (job_id, placed) in round.cancelling {
            for (executor_id, task) in placed {
                sessions.send(&executor_id, ExecutorCommand::Cancel(task));
            }
            // Executors that miss the message are told again by heartbeat reconciliation.
            let command = Command::TransitionJob {
                job_id,
                to: JobStatus::Cancelled,
                reason: "cancelled by request".to_owned(),
                at_ms: context.now_ms(),
                deployed_through_epoch: None,
            };
            match context.propose(command).await {
                Ok(_) => {
                    let told = sessions.send_to_all(&ExecutorCommand::DiscardJobState(job_id));
                    tracing::info!(job_id = %job_id, executors_told_to_discard_state = told, "job cancelled; its subtasks were told to stop");
                }
                Err(error) => {
                    tracing::debug!(job_id = %job_id, error = %raftstream_observability::chain(&error), "could not finish cancelling")
                }
            }
        }
        for (job_id, stopped_at) in round.finished {
            let (to, reason) = match stopped_at {
                Some(savepoint) => (
                    JobStatus::Stopped,
                    format!("stopped with savepoint {savepoint}: every subtask published its output"),
                ),
                None => (
                    JobStatus::Finished,
                    "every subtask reached the end of its input and published its output".to_owned(),
                ),
            };
            let command = Command::TransitionJob {
                job_id,
                to,
                reason,
                at_ms: context.now_ms(),
                deployed_through_epoch: None,
            };
            match context.propose(command).await {
                Ok(_) => {
                    // A savepoint's state lives apart from the job's, so it stays.
                    let told = sessions.send_to_all(&ExecutorCommand::DiscardJobState(job_id));
                    tracing::info!(job_id = %job_id, status = %to, executors_told_to_discard_state = told, "job ended");
                }
                Err(error) => {
                    tracing::debug!(job_id = %job_id, error = %raftstream_observability::chain(&error), "could not mark the job finished")
                }
            }
        }
    }
}

/// How often a drained executor that is still connected is told again to exit.
const DRAINED_REPEAT: Duration = Duration::from_secs(1);

/// Placement proposals in flight at once in one scheduling round.
const MAX_PLACEMENTS_IN_FLIGHT: usize = 64;

/// What one scheduling round does, decided from one read of the state.
struct Round {
    give_up: Vec<(JobId, String)>,
    placements: Vec<Placement>,
    cancelling: Vec<(JobId, Vec<(ExecutorId, TaskRef)>)>,
    /// Jobs whose every task finished, with the savepoint they stop with, if they stop.
    finished: Vec<(JobId, Option<SavepointRef>)>,
    /// Draining executors that hold no subtask any more: they may exit.
    drained: Vec<ExecutorId>,
}

fn plan_round(state: &State, sessions: &ExecutorSessions, lease_timeout: Duration, now: u64) -> Round {
    let live = sessions.live(&alive_executors(state), lease_timeout);
    let mut give_up = Vec::new();
    let mut waiting = HashSet::new();
    for job in state.jobs.values() {
        match deploy::restart_decision(job, now) {
            deploy::RestartDecision::Place => {}
            deploy::RestartDecision::Wait => {
                waiting.insert(job.job_id);
            }
            deploy::RestartDecision::GiveUp(reason) => {
                waiting.insert(job.job_id);
                give_up.push((job.job_id, reason));
            }
        }
    }
    let placements = plan_placements(state, &live)
        .into_iter()
        .filter(|placement| !waiting.contains(&placement.job_id))
        .collect();
    let cancelling = state
        .jobs
        .values()
        .filter(|job| job.status == JobStatus::Cancelling)
        .map(|job| (job.job_id, deploy::placed_tasks(job)))
        .collect();
    let finished_tasks = sessions.finished();
    let finished = state
        .jobs
        .values()
        .filter(|job| job.status == JobStatus::Running && deploy::is_fully_placed(job))
        .filter(|job| {
            deploy::placed_tasks(job)
                .iter()
                .all(|(_, task)| finished_tasks.contains(task))
        })
        .map(|job| {
            let stopped_at = job.stopping_at.map(|savepoint_id| SavepointRef {
                job_id: job.job_id,
                savepoint_id,
            });
            (job.job_id, stopped_at)
        })
        .collect();
    let drained = state
        .executors
        .values()
        .filter(|executor| executor.alive && executor.draining)
        .filter(|executor| state.used_slots(&executor.executor_id) == 0)
        .map(|executor| executor.executor_id.clone())
        .collect();
    Round {
        give_up,
        placements,
        cancelling,
        finished,
        drained,
    }
}

async fn place<C: LeaderContext>(context: &C, placement: Placement) {
    let Placement {
        job_id,
        subtask,
        executor_id,
    } = placement;
    let command = Command::AssignSubtask {
        job_id,
        subtask: subtask.clone(),
        executor_id: executor_id.clone(),
        at_ms: context.now_ms(),
    };
    match context.propose(command).await {
        Ok(Response::SubtaskAssigned { epoch, .. }) => {
            tracing::info!(job_id = %job_id, operator_id = %subtask.operator_id, subtask_index = subtask.subtask_index, executor_id = %executor_id, epoch = epoch.0, "subtask placed");
        }
        Ok(other) => tracing::warn!(response = ?other, "unexpected answer to AssignSubtask"),
        // A race with a cancel or an executor death: the next round decides again.
        Err(error) => {
            tracing::debug!(job_id = %job_id, error = %raftstream_observability::chain(&error), "placement refused")
        }
    }
}

/// Sends every subtask of each newly fully placed job to its executor and marks the job running.
async fn deploy_ready_jobs<C: LeaderContext>(context: &C) {
    let ready: Vec<(JobId, Epoch, Vec<(ExecutorId, TaskDeployment)>)> = context.read_state(|state| {
        state
            .jobs
            .values()
            .filter(|job| matches!(job.status, JobStatus::Submitted | JobStatus::Restarting))
            .filter(|job| deploy::is_fully_placed(job))
            .map(|job| {
                let deployments = deploy::placed_tasks(job)
                    .into_iter()
                    .filter_map(|(executor_id, task)| Some((executor_id, deploy::deployment(state, &task)?)))
                    .collect();
                (job.job_id, job.last_epoch, deployments)
            })
            .collect()
    });
    for (job_id, deployed_through_epoch, deployments) in ready {
        let restore_from = deployments.first().and_then(|(_, deployment)| {
            deployment
                .restore_from
                .as_ref()
                .map(|checkpoint| checkpoint.checkpoint_id.0)
        });
        let command = Command::TransitionJob {
            job_id,
            to: JobStatus::Running,
            reason: match restore_from {
                Some(id) => format!("restored from checkpoint {id}"),
                None => String::new(),
            },
            at_ms: context.now_ms(),
            // The state read above may be outdated by the time this entry applies (an executor
            // declared dead in between releases its subtasks): then the start is refused and the
            // next round places and deploys again.
            deployed_through_epoch: Some(deployed_through_epoch),
        };
        if let Some(hold_ms) = crate::failpoints::value(crate::failpoints::HOLD_JOB_START_MS) {
            tracing::warn!(job_id = %job_id, deployed_through_epoch = deployed_through_epoch.0, hold_ms, "failpoint: holding the job's start");
            tokio::time::sleep(Duration::from_millis(hold_ms)).await;
        }
        match context.propose(command).await {
            Ok(_) => {}
            Err(CoordinatorError::Rejected(rejection @ Rejection::DeploymentOutdated { .. })) => {
                tracing::info!(job_id = %job_id, %rejection, "job start refused; it is placed and deployed again");
                continue;
            }
            Err(error) => {
                tracing::debug!(job_id = %job_id, error = %raftstream_observability::chain(&error), "could not start the job");
                continue;
            }
        }
        tracing::info!(job_id = %job_id, subtasks = deployments.len(), restore_from, "job deployed");
        for (executor_id, deployment) in deployments {
            context
                .sessions()
                .send(&executor_id, ExecutorCommand::Assign(Box::new(deployment)));
        }
    }
}
