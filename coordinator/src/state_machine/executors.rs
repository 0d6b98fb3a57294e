//! Executors and placement: registration, draining, death, and the assignment of subtasks to
//! slots with a new epoch each time.

use raftstream_api::checkpoint::SubtaskKey;
use raftstream_api::ids::{Epoch, ExecutorId, JobId};

use super::jobs::{release_slots, restart};
use super::model::{job_mut, Assignment, ExecutorRecord, RelocationRequest, State};
use super::{ApplyResult, JobStatus, Rejection, Response};

pub(super) fn register_executor(
    state: &mut State,
    executor_id: ExecutorId,
    address: String,
    slots: u32,
    at_ms: u64,
) -> ApplyResult {
    if slots == 0 {
        return Err(Rejection::NoSlots { executor_id });
    }
    let registered_at_ms = state
        .executors
        .get(&executor_id)
        .map_or(at_ms, |existing| existing.registered_at_ms);
    // A re-registration after a restart starts from nothing: whatever it ran before was lost with
    // the process, so its jobs restart (their placements get new epochs when placed again).
    lose_executor(state, &executor_id, "re-registered (restarted)", at_ms);
    let record = ExecutorRecord {
        executor_id: executor_id.clone(),
        address,
        slots,
        alive: true,
        registered_at_ms,
        updated_at_ms: at_ms,
        draining: false,
    };
    state.executors.insert(executor_id.clone(), record);
    Ok(Response::ExecutorRegistered { executor_id })
}

pub(super) fn drain_executor(state: &mut State, executor_id: &ExecutorId, at_ms: u64) -> ApplyResult {
    let executor = state
        .executors
        .get_mut(executor_id)
        .ok_or_else(|| Rejection::UnknownExecutor {
            executor_id: executor_id.clone(),
        })?;
    if !executor.alive {
        return Err(Rejection::ExecutorDead {
            executor_id: executor_id.clone(),
        });
    }
    executor.draining = true;
    executor.updated_at_ms = at_ms;
    let mut jobs_to_move = 0;
    for job in state.jobs.values_mut() {
        let on_it = job
            .assignments
            .values()
            .any(|assignment| assignment.executor_id.as_ref() == Some(executor_id));
        if !on_it {
            continue;
        }
        match job.status {
            // A pending rescale restarts it anyway, and places nothing on a draining executor.
            JobStatus::Running if job.pending_rescale.is_some() => jobs_to_move += 1,
            JobStatus::Running => {
                jobs_to_move += 1;
                if job.pending_relocation.is_none() {
                    job.pending_relocation = Some(RelocationRequest {
                        away_from: executor_id.clone(),
                        requested_at_ms: at_ms,
                    });
                }
            }
            // Not running yet: nothing processed since its checkpoint to lose, so its placements
            // are released and the scheduler places them again elsewhere, with new epochs.
            JobStatus::Submitted | JobStatus::Restarting => {
                release_slots(job);
                job.updated_at_ms = job.updated_at_ms.max(at_ms);
            }
            // Cancelling tasks only stop; ended jobs hold nothing.
            _ => {}
        }
    }
    Ok(Response::ExecutorDraining {
        executor_id: executor_id.clone(),
        jobs_to_move,
    })
}

pub(super) fn mark_executor_dead(state: &mut State, executor_id: &ExecutorId, at_ms: u64) -> ApplyResult {
    let executor = state
        .executors
        .get_mut(executor_id)
        .ok_or_else(|| Rejection::UnknownExecutor {
            executor_id: executor_id.clone(),
        })?;
    executor.alive = false;
    executor.updated_at_ms = at_ms;
    let orphaned_subtasks = lose_executor(state, executor_id, "declared dead", at_ms);
    Ok(Response::ExecutorMarkedDead {
        executor_id: executor_id.clone(),
        orphaned_subtasks,
    })
}

/// Releases what `executor_id` ran. Jobs that were running on it restart as a whole; a cancelling
/// job only loses those placements. Returns how many subtasks it held.
pub(super) fn lose_executor(state: &mut State, executor_id: &ExecutorId, what: &str, at_ms: u64) -> u32 {
    let mut orphaned = 0;
    for job in state.jobs.values_mut() {
        let held = job
            .assignments
            .values()
            .filter(|assignment| assignment.executor_id.as_ref() == Some(executor_id))
            .count();
        if held == 0 {
            continue;
        }
        orphaned += u32::try_from(held).unwrap_or(u32::MAX);
        if job.status == JobStatus::Cancelling {
            for assignment in job.assignments.values_mut() {
                if assignment.executor_id.as_ref() == Some(executor_id) {
                    assignment.executor_id = None;
                    assignment.previous_executor = Some(executor_id.clone());
                }
            }
        } else {
            restart(job, format!("executor {executor_id} {what}"), at_ms);
        }
    }
    orphaned
}

pub(super) fn assign_subtask(
    state: &mut State,
    job_id: &JobId,
    subtask: SubtaskKey,
    executor_id: ExecutorId,
    at_ms: u64,
) -> ApplyResult {
    let executor = state
        .executors
        .get(&executor_id)
        .ok_or_else(|| Rejection::UnknownExecutor {
            executor_id: executor_id.clone(),
        })?;
    if !executor.alive {
        return Err(Rejection::ExecutorDead { executor_id });
    }
    if executor.draining {
        return Err(Rejection::ExecutorDraining { executor_id });
    }
    let slots = executor.slots;
    let job = state
        .jobs
        .get(job_id)
        .ok_or_else(|| Rejection::UnknownJob { job_id: *job_id })?;
    if job.status.is_terminal() || job.status == JobStatus::Cancelling {
        return Err(Rejection::JobNotActive {
            job_id: *job_id,
            status: job.status,
            what: "assignments".to_owned(),
        });
    }
    let current = job.assignments.get(&subtask).ok_or_else(|| Rejection::UnknownSubtask {
        job_id: *job_id,
        operator_id: subtask.operator_id.clone(),
        subtask_index: subtask.subtask_index,
    })?;
    // A slot holds its whole slice: a member joins the executor its slice runs on, taking no
    // further slot there, and never another.
    let already_there = current.executor_id.as_ref() == Some(&executor_id);
    match job.slice_home(&subtask) {
        Some(home) if *home != executor_id => {
            return Err(Rejection::SliceElsewhere {
                job_id: *job_id,
                operator_id: subtask.operator_id.clone(),
                subtask_index: subtask.subtask_index,
                executor_id: home.clone(),
            })
        }
        Some(_) => {}
        None if !already_there && state.used_slots(&executor_id) >= slots => {
            return Err(Rejection::NoFreeSlot { executor_id, slots });
        }
        None => {}
    }
    let job = job_mut(state, job_id)?;
    let epoch = Epoch(job.last_epoch.0 + 1);
    job.last_epoch = epoch;
    job.updated_at_ms = at_ms;
    job.assignments.insert(
        subtask,
        Assignment {
            executor_id: Some(executor_id),
            epoch,
            previous_executor: None,
        },
    );
    Ok(Response::SubtaskAssigned { job_id: *job_id, epoch })
}
