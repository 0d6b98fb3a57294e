//! Checkpoints: ids allocated at trigger, completion refused unless the placement that
//! acknowledged it still runs, retention, and savepoints committed through the same path.

use raftstream_api::checkpoint::CompletedCheckpoint;
use raftstream_api::ids::{CheckpointId, JobId};

use super::model::{job_mut, JobRecord, State};
use super::{savepoints, ApplyResult, JobStatus, Rejection, Response};

pub(super) fn trigger_checkpoint(state: &mut State, job_id: &JobId, at_ms: u64) -> ApplyResult {
    let job = job_mut(state, job_id)?;
    if job.status != JobStatus::Running {
        return Err(Rejection::JobNotActive {
            job_id: *job_id,
            status: job.status,
            what: "checkpoint triggers".to_owned(),
        });
    }
    let last = job
        .last_triggered_checkpoint_id
        .max(job.last_checkpoint_id)
        .map_or(0, |id| id.0);
    let checkpoint_id = CheckpointId(last + 1);
    job.last_triggered_checkpoint_id = Some(checkpoint_id);
    job.updated_at_ms = job.updated_at_ms.max(at_ms);
    Ok(Response::CheckpointTriggered {
        job_id: *job_id,
        checkpoint_id,
    })
}

/// Whether `job` still runs, at the same epochs, exactly the placement that acknowledged
/// `checkpoint`; the problem otherwise.
///
/// The invariant this keeps: a checkpoint completes only while the placement whose sinks
/// pre-committed it can still publish it. Once a restart released that placement (a failure, an
/// executor lost), the next deployment restores the latest checkpoint completed *before* the
/// release, and its sinks delete every pending file that checkpoint does not list, including the
/// ones of checkpoints acknowledged by the released placement. Were such a checkpoint committed
/// after the release, it would become the latest one while its files are gone: every later
/// restore would fail on them (seen in a chaos run as a job restoring forever). Raft orders this
/// entry against the release, so checking here, at apply, closes the race that checking on the
/// leader before proposing leaves open.
pub(super) fn placement_unchanged(job: &JobRecord, checkpoint: &CompletedCheckpoint) -> Result<(), String> {
    if job.status != JobStatus::Running {
        return Err(format!("the job is {}", job.status.name()));
    }
    if job.assignments.len() != checkpoint.acknowledged_epochs.len() {
        return Err(format!(
            "{} subtasks acknowledged, the job has {}",
            checkpoint.acknowledged_epochs.len(),
            job.assignments.len()
        ));
    }
    for (subtask, assignment) in &job.assignments {
        let acknowledged = checkpoint.acknowledged_epochs.get(subtask);
        if assignment.executor_id.is_none() || acknowledged != Some(&assignment.epoch) {
            return Err(format!(
                "{}[{}] acknowledged at epoch {}, now at epoch {}{}",
                subtask.operator_id,
                subtask.subtask_index,
                acknowledged.map_or_else(|| "none".to_owned(), |epoch| epoch.0.to_string()),
                assignment.epoch.0,
                if assignment.executor_id.is_none() {
                    " (released)"
                } else {
                    ""
                }
            ));
        }
    }
    Ok(())
}

pub(super) fn complete_checkpoint(
    state: &mut State,
    job_id: &JobId,
    checkpoint: CompletedCheckpoint,
    savepoint: bool,
) -> ApplyResult {
    let job = job_mut(state, job_id)?;
    if savepoint && job.pending_savepoint.is_none() {
        return Err(Rejection::InvalidSavepoint {
            problem: format!(
                "checkpoint {} of job {job_id} was taken for a savepoint the job no longer waits for",
                checkpoint.checkpoint_id
            ),
        });
    }
    if job.status.is_terminal() {
        return Err(Rejection::JobNotActive {
            job_id: *job_id,
            status: job.status,
            what: "checkpoints".to_owned(),
        });
    }
    if job
        .last_triggered_checkpoint_id
        .is_none_or(|triggered| checkpoint.checkpoint_id > triggered)
    {
        return Err(Rejection::CheckpointNotTriggered {
            job_id: *job_id,
            checkpoint_id: checkpoint.checkpoint_id,
            last_triggered: job.last_triggered_checkpoint_id,
        });
    }
    if let Some(last) = job.last_checkpoint_id {
        if checkpoint.checkpoint_id <= last {
            return Err(Rejection::CheckpointIdNotIncreasing {
                job_id: *job_id,
                checkpoint_id: checkpoint.checkpoint_id,
                last,
            });
        }
    }
    if checkpoint.epoch > job.last_epoch {
        return Err(Rejection::CheckpointEpochTooNew {
            job_id: *job_id,
            checkpoint_id: checkpoint.checkpoint_id,
            epoch: checkpoint.epoch,
            current: job.last_epoch,
        });
    }
    if !checkpoint.acknowledged_epochs.is_empty() {
        placement_unchanged(job, &checkpoint).map_err(|problem| Rejection::CheckpointPlacementChanged {
            job_id: *job_id,
            checkpoint_id: checkpoint.checkpoint_id,
            problem,
        })?;
    }
    let checkpoint_id = checkpoint.checkpoint_id;
    job.last_checkpoint_id = Some(checkpoint_id);
    job.updated_at_ms = job.updated_at_ms.max(checkpoint.completed_at_ms);
    if savepoint {
        savepoints::record_savepoint(state, job_id, &checkpoint);
    }
    let job = job_mut(state, job_id)?;
    job.checkpoints.push_back(checkpoint);
    // A checkpoint completed since the last restart is progress: the run of failures is over (a
    // job that keeps failing before it gets one is what backs off).
    job.restart_streak = 0;
    let retained = usize::try_from(job.graph.checkpoint.retained.max(1)).unwrap_or(usize::MAX);
    while job.checkpoints.len() > retained {
        job.checkpoints.pop_front();
    }
    Ok(Response::CheckpointCompleted {
        job_id: *job_id,
        checkpoint_id,
    })
}
