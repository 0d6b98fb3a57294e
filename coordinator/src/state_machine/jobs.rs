//! Jobs and their transitions: submit, cancel, start, the legal status changes, restarts from the
//! last completed checkpoint, and subtask failures.

use std::collections::VecDeque;

use raftstream_api::checkpoint::{SavepointRef, SubtaskKey};
use raftstream_api::ids::{Epoch, JobId};
use raftstream_api::spec::JobGraph;

use super::model::{job_mut, Assignment, JobEvent, JobRecord, RestoreRecord, State, RETAINED_ENDED_JOBS};
use super::{savepoints, ApplyResult, JobStatus, Rejection, Response};

pub(super) fn submit_job(
    state: &mut State,
    graph: JobGraph,
    at_ms: u64,
    from_savepoint: Option<SavepointRef>,
    allow_unmatched_state: bool,
) -> ApplyResult {
    let starting_checkpoint = match &from_savepoint {
        Some(savepoint) => Some(savepoints::starting_checkpoint(
            state,
            savepoint,
            &graph,
            allow_unmatched_state,
        )?),
        None => None,
    };
    // Automatic operators start at the parallelism the free slots allow now.
    let mut history = VecDeque::new();
    let graph = match graph.auto_parallelism_for(state.free_slots()) {
        Some(parallelism) => {
            history.push_back(JobEvent {
                at_ms,
                what: format!(
                    "automatic operators start at parallelism {parallelism} ({} free slots)",
                    state.free_slots()
                ),
            });
            graph.with_auto_parallelism(parallelism)
        }
        None => graph,
    };
    let job_number = state.last_job_number + 1;
    let job_id = JobId::from_number(job_number);
    // Every subtask exists from the start, waiting for a slot, so the status shows what is unplaced.
    let assignments = graph
        .operators
        .iter()
        .flat_map(|operator| {
            (0..operator.parallelism).map(|subtask_index| {
                let key = SubtaskKey {
                    operator_id: operator.id.clone(),
                    subtask_index,
                };
                (
                    key,
                    Assignment {
                        executor_id: None,
                        epoch: Epoch(0),
                        previous_executor: None,
                    },
                )
            })
        })
        .collect();
    let record = JobRecord {
        job_id,
        graph,
        status: JobStatus::Submitted,
        status_reason: String::new(),
        restart_count: 0,
        restart_streak: 0,
        last_failure_at_ms: 0,
        submitted_at_ms: at_ms,
        updated_at_ms: at_ms,
        assignments,
        // Started from a savepoint: its checkpoint is the one the first deployment restores, and
        // ids and epochs go on above it, so no file name of the new job repeats one it lists.
        last_checkpoint_id: starting_checkpoint.as_ref().map(|checkpoint| checkpoint.checkpoint_id),
        last_triggered_checkpoint_id: starting_checkpoint.as_ref().map(|checkpoint| checkpoint.checkpoint_id),
        last_epoch: starting_checkpoint
            .as_ref()
            .map_or(Epoch(0), |checkpoint| checkpoint.epoch),
        checkpoints: starting_checkpoint.into_iter().collect(),
        last_restore: None,
        rescaling: false,
        pending_rescale: None,
        pending_savepoint: None,
        savepoint_tickets: 0,
        last_savepoint: None,
        stopping_at: None,
        from_savepoint,
        pending_relocation: None,
        history,
    };
    state.last_job_number = job_number;
    state.jobs.insert(job_id, record);
    Ok(Response::JobSubmitted { job_id })
}

/// Records that a job ended and forgets the oldest ended jobs beyond the retention bound.
pub(super) fn retire(state: &mut State, job_id: &JobId) {
    state.ended_jobs.push_back(*job_id);
    while state.ended_jobs.len() > RETAINED_ENDED_JOBS {
        if let Some(oldest) = state.ended_jobs.pop_front() {
            state.jobs.remove(&oldest);
        }
    }
}

pub(super) fn release_slots(job: &mut JobRecord) {
    for assignment in job.assignments.values_mut() {
        if let Some(executor_id) = assignment.executor_id.take() {
            assignment.previous_executor = Some(executor_id);
        }
    }
}

pub(super) fn cancel_job(state: &mut State, job_id: &JobId, at_ms: u64) -> ApplyResult {
    let job = job_mut(state, job_id)?;
    let target = match job.status {
        JobStatus::Cancelling => {
            return Ok(Response::JobCancelRequested {
                job_id: *job_id,
                status: job.status,
            })
        }
        status if status.is_terminal() => {
            return Err(Rejection::JobAlreadyEnded {
                job_id: *job_id,
                status,
            })
        }
        // Tasks that may be running must confirm they stopped; with none placed the job ends at once.
        _ if job
            .assignments
            .values()
            .any(|assignment| assignment.executor_id.is_some()) =>
        {
            JobStatus::Cancelling
        }
        _ => JobStatus::Cancelled,
    };
    let from = job.status;
    if !from.can_become(target) {
        return Err(Rejection::IllegalTransition {
            job_id: *job_id,
            from,
            to: target,
        });
    }
    savepoints::interrupt_savepoint(job, "the job was cancelled");
    job.status = target;
    job.status_reason = "cancelled by request".to_owned();
    job.updated_at_ms = at_ms;
    if target.is_terminal() {
        release_slots(job);
        retire(state, job_id);
    }
    Ok(Response::JobCancelRequested {
        job_id: *job_id,
        status: target,
    })
}

/// A transition that starts what the leader deployed: refused when the placement changed since.
pub(super) fn start_deployed_job(
    state: &mut State,
    job_id: &JobId,
    to: JobStatus,
    deployed_through: Epoch,
    reason: String,
    at_ms: u64,
) -> ApplyResult {
    let job = job_mut(state, job_id)?;
    let unplaced = job
        .assignments
        .values()
        .filter(|assignment| assignment.executor_id.is_none())
        .count();
    if unplaced > 0 || job.last_epoch != deployed_through {
        return Err(Rejection::DeploymentOutdated {
            job_id: *job_id,
            deployed_through,
            last_epoch: job.last_epoch,
            unplaced: u32::try_from(unplaced).unwrap_or(u32::MAX),
        });
    }
    transition_job(state, job_id, to, reason, at_ms)
}

pub(super) fn transition_job(
    state: &mut State,
    job_id: &JobId,
    to: JobStatus,
    reason: String,
    at_ms: u64,
) -> ApplyResult {
    let job = job_mut(state, job_id)?;
    let from = job.status;
    if !from.can_become(to) {
        return Err(Rejection::IllegalTransition {
            job_id: *job_id,
            from,
            to,
        });
    }
    if to == JobStatus::Stopped && job.stopping_at.is_none() {
        return Err(Rejection::InvalidSavepoint {
            problem: format!("job {job_id} has taken no savepoint to stop with"),
        });
    }
    if to == JobStatus::Restarting {
        count_restart(job, at_ms);
    }
    if to == JobStatus::Restarting || (to.is_terminal() && to != JobStatus::Stopped) {
        savepoints::interrupt_savepoint(job, &format!("the job became {to}: {reason}"));
    }
    job.rescaling = false;
    if to.is_terminal() || to == JobStatus::Restarting {
        job.pending_rescale = None;
        job.pending_relocation = None;
    }
    // A deployment restores the latest completed checkpoint as it was when the leader sent it, and
    // no checkpoint completes between that and this entry: completions need a running job.
    if to == JobStatus::Running {
        job.last_restore = job.checkpoints.back().map(|checkpoint| RestoreRecord {
            checkpoint_id: checkpoint.checkpoint_id,
            at_ms,
        });
    }
    job.status = to;
    job.status_reason = reason;
    job.updated_at_ms = at_ms;
    if to.is_terminal() {
        release_slots(job);
        retire(state, job_id);
    }
    Ok(Response::JobTransitioned {
        job_id: *job_id,
        status: to,
    })
}

/// Starts a restart of `job` from its last completed checkpoint: every placement is released (the
/// scheduler places them again with new epochs, which fences the old ones).
pub(super) fn restart(job: &mut JobRecord, reason: String, at_ms: u64) {
    let had_placements = job
        .assignments
        .values()
        .any(|assignment| assignment.executor_id.is_some());
    release_slots(job);
    savepoints::interrupt_savepoint(job, &format!("the job restarts: {reason}"));
    // Placed again anyway, never on a draining executor.
    job.pending_relocation = None;
    match job.status {
        JobStatus::Running => {
            job.status = JobStatus::Restarting;
            count_restart(job, at_ms);
        }
        // The next placement was lost before it ran: that is another attempt, counted against the
        // restart strategy, or a job whose placements keep failing would restart forever.
        JobStatus::Restarting if had_placements => {
            count_restart(job, at_ms);
        }
        _ => {}
    }
    job.status_reason = reason;
    job.updated_at_ms = at_ms;
}

/// Counts one more restart of `job`, begun at `at_ms`: over its life, and in its current run of
/// failures when its strategy forgets failures after a stable period. A run also ends when a
/// checkpoint completes (`complete_checkpoint`).
fn count_restart(job: &mut JobRecord, at_ms: u64) {
    job.restart_count = job.restart_count.saturating_add(1);
    if let Some(reset_after_ms) = job.graph.restart.reset_after_ms() {
        let stable = job.restart_streak == 0 || at_ms.saturating_sub(job.last_failure_at_ms) >= reset_after_ms;
        job.restart_streak = if stable {
            1
        } else {
            job.restart_streak.saturating_add(1)
        };
        job.last_failure_at_ms = at_ms;
    }
}

pub(super) fn fail_subtask(
    state: &mut State,
    job_id: &JobId,
    subtask: &SubtaskKey,
    epoch: Epoch,
    reason: String,
    fatal: bool,
    at_ms: u64,
) -> ApplyResult {
    let job = job_mut(state, job_id)?;
    let assignment = job.assignments.get(subtask).ok_or_else(|| Rejection::UnknownSubtask {
        job_id: *job_id,
        operator_id: subtask.operator_id.clone(),
        subtask_index: subtask.subtask_index,
    })?;
    let current = assignment.epoch;
    // A released placement is already fenced: its failure says nothing about the next deployment,
    // which the restart that released it is already preparing.
    if current == epoch && assignment.executor_id.is_none() {
        return Err(Rejection::PlacementReleased {
            job_id: *job_id,
            operator_id: subtask.operator_id.clone(),
            subtask_index: subtask.subtask_index,
            epoch,
        });
    }
    if current != epoch {
        return Err(Rejection::StaleEpoch {
            job_id: *job_id,
            operator_id: subtask.operator_id.clone(),
            subtask_index: subtask.subtask_index,
            epoch,
            current,
        });
    }
    if !matches!(
        job.status,
        JobStatus::Running | JobStatus::Submitted | JobStatus::Restarting
    ) {
        return Err(Rejection::JobNotActive {
            job_id: *job_id,
            status: job.status,
            what: "task failures".to_owned(),
        });
    }
    let reason = format!(
        "subtask {}[{}] failed: {reason}",
        subtask.operator_id, subtask.subtask_index
    );
    if fatal {
        savepoints::interrupt_savepoint(job, &format!("the job failed: {reason}"));
        job.status = JobStatus::Failed;
        job.status_reason = reason;
        job.updated_at_ms = at_ms;
        release_slots(job);
        retire(state, job_id);
        return Ok(Response::JobTransitioned {
            job_id: *job_id,
            status: JobStatus::Failed,
        });
    }
    restart(job, reason, at_ms);
    Ok(Response::JobRestarting {
        job_id: *job_id,
        restart_count: job.restart_count,
    })
}
